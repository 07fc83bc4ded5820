"""dce-eval: a trained model (dce-train's, or a detail stage's from
dce-train-detail) on a pair file's held-out split, at the file's resolution
whatever resolution the model was trained to: the paper's MAE (Eq. 4) in
normalized units and mm, the face MAE, the normal error (degrees), the
detail correlation and the roughness, for the coarse input and the refined
output (mean +- std over images; with --refit also the re-fit coarse images), written as mae.md and mae.csv, with
optional error heat maps (paper Fig. 4; depth and normal error) and shaded
coarse | refined | target pictures."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from dce.cli.options import HelpFormatter, integer, number

    p = argparse.ArgumentParser(prog="dce-eval", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("data", type=Path, help="DCE pair file from dce-build")
    p.add_argument("checkpoint", type=Path, help="dce-train or dce-train-detail checkpoint (e.g. run/last.pt)")
    p.add_argument("-o", "--out", type=Path, default=Path("dce_eval"),
                   help="folder for mae.md, mae.csv and heat maps")
    p.add_argument("--split", default="test", choices=["test", "train", "all"],
                   help="which samples; test = the held-out identities")
    p.add_argument("--heatmaps", type=integer(0), default=0, metavar="K",
                   help="write K error heat-map PNGs, with shaded and detail-band pictures")
    p.add_argument("--vmax-mm", type=number(0.0, low_open=True), default=5.0,
                   help="depth error shown as full red in the heat maps, mm")
    p.add_argument("--vmax-deg", type=number(0.0, low_open=True), default=20.0,
                   help="normal error shown as full red in the heat maps, degrees")
    p.add_argument("--vmax-band-mm", type=number(0.0, low_open=True), default=0.5,
                   help="detail pictures (added | missing 1-5 mm band): the depth shown as full "
                        "red (a crease) or blue (a ridge), mm")
    p.add_argument("--resolution", type=integer(1), default=None,
                   help="average-pool the file's images to this size first (default: the "
                        "file's own size, e.g. 256)")
    p.add_argument("--no-detail", action="store_true",
                   help="score a detail-stage checkpoint's global network alone")
    p.add_argument("--mirror-average", action="store_true",
                   help="average the detail stage's output with its output on the mirrored "
                        "image, mirrored back (a self-ensemble; twice the stage's time; "
                        "docs/detail-stage.md)")
    p.add_argument("--refit", type=Path, default=None, metavar="REFIT.h5",
                   help="a re-fit of DATA written by dce-refit: the model reads its coarse "
                        "images, a 'refit' row scores them alone, and every row is still "
                        "measured against DATA's coarse input (default: none)")
    p.add_argument("--batch-size", type=integer(1), default=8,
                   help="images per batch")
    p.add_argument("--device", default="cpu", help="torch device")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.evaluate import evaluate, write_heatmaps, write_table
    from dce.gan.h5format import PairFileError

    try:
        scores, kept, info = evaluate(args.checkpoint, args.data, args.split, args.batch_size,
                                      args.device, keep_images=args.heatmaps,
                                      resolution=args.resolution, detail=not args.no_detail,
                                      mirror_average=args.mirror_average, refit=args.refit,
                                      log=lambda line: print(line, flush=True))
        md, csv_path = write_table(scores, args.out, info)
        print(md.read_text(encoding="utf-8"))
        print(f"table: {md}, {csv_path}")
        if args.heatmaps:
            paths = write_heatmaps(kept, args.out / "heatmaps", args.vmax_mm, args.vmax_deg,
                                   args.vmax_band_mm)
            print(f"{len(paths)} heat maps in {args.out / 'heatmaps'}")
    except (PairFileError, CheckpointError, ValueError, RuntimeError, OSError) as error:
        print(f"dce-eval: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
