"""dce-eval-mesh: scan-to-mesh error of predicted face meshes against
ground-truth scans, by the NoW challenge's protocol.

  dce-eval-mesh --pred PRED_DIR --gt GT_DIR -o OUT [--metric] [--regions] [--workers N]

Predictions PRED_DIR/<stem>.ply|.obj with their 3D landmarks
PRED_DIR/<stem>.landmarks.txt (NoW's 7: outer/inner corner of the right
eye, inner/outer corner of the left eye, nose bottom, the two mouth corners;
or the 68 iBUG points; x y z a line). Ground truth GT_DIR/<stem> as a mesh
(.ply, .obj, .wrl, ...) with GT_DIR/<stem>.landmarks.txt, or a range scan
(.abs, .abs.gz, .bnt) with that file or its photo's 68 landmarks
GT_DIR/<stem>.pts, lifted onto the scan.

Each ground truth is cropped to NoW's sphere about the face, the prediction
aligned to it by a similarity Procrustes on the 7 landmarks and ICP over the
scan-to-mesh distance (with --metric: rotation and translation only, for
predictions in mm), and every cropped ground-truth point scored by its
distance to the predicted surface. Written to OUT: summary.json, summary.md,
cumulative_error.png and <stem>_error.ply (the cropped ground truth coloured
by its error: blue 0, red 4 mm and more).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from dce.cli.build import MAX_WORKERS
    from dce.cli.options import HelpFormatter, integer

    p = argparse.ArgumentParser(prog="dce-eval-mesh", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--pred", type=Path, required=True, metavar="PRED_DIR",
                   help="folder of predicted meshes <stem>.ply|.obj and <stem>.landmarks.txt")
    p.add_argument("--gt", type=Path, required=True, metavar="GT_DIR",
                   help="folder of ground-truth meshes or range scans and their landmarks")
    p.add_argument("-o", "--out", type=Path, default=Path("dce_eval_mesh"),
                   help="output folder")
    p.add_argument("--metric", action="store_true",
                   help="predictions are in mm: align by rotation and translation only, "
                        "never rescale (default: the scale is fitted, as in NoW)")
    p.add_argument("--regions", action="store_true",
                   help="also report forehead, nose, eyes, cheeks, mouth and chin (needs 68 "
                        "ground-truth landmarks; default: off)")
    p.add_argument("--workers", type=integer(1, MAX_WORKERS), default=os.cpu_count(),
                   help=f"processes scoring the pairs, 1 .. {MAX_WORKERS}, one per core; "
                        "the figures do not depend on it")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.cli.options import check_output
    from dce.geom.mesh_eval import evaluate_folders, summary_markdown

    try:
        check_output(args.out, [args.pred, args.gt], is_dir=True)
        result = evaluate_folders(args.pred, args.gt, args.out, metric=args.metric,
                                  regions=args.regions, log=print, workers=args.workers)
    except (ValueError, OSError) as error:  # FormatError, AlignmentError, unwritable OUT
        print(f"dce-eval-mesh: {error}", file=sys.stderr)
        return 2
    print(summary_markdown(result.summary))
    print(f"wrote {args.out / 'summary.json'}, {args.out / 'summary.md'}, "
          f"{args.out / 'cumulative_error.png'} and {result.summary['n_meshes']} error PLYs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
