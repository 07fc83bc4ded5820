"""dce-eval: the paper's MAE (Eq. 4) of a trained model on a pair file's
test split, for the coarse input and the refined output, in normalized
units and in millimetres (mean +- std over images), written as markdown and
CSV, with optional error heat maps (paper Fig. 4)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="dce-eval", description=__doc__)
    p.add_argument("data", type=Path, help="DCE pair file from dce-build")
    p.add_argument("checkpoint", type=Path, help="dce-train checkpoint (e.g. run/last.pt)")
    p.add_argument("-o", "--out", type=Path, default=Path("dce_eval"),
                   help="folder for mae.md, mae.csv and heat maps (default: dce_eval)")
    p.add_argument("--split", default="test", choices=["test", "train", "all"],
                   help="which samples (default: test, the held-out identities)")
    p.add_argument("--heatmaps", type=int, default=0, metavar="K",
                   help="write K error heat-map PNGs (default: 0)")
    p.add_argument("--vmax-mm", type=float, default=5.0,
                   help="error shown as full red in the heat maps, mm (default: 5)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default: 8)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.evaluate import evaluate, write_heatmaps, write_table
    from dce.gan.h5format import PairFileError

    try:
        scores, kept, info = evaluate(args.checkpoint, args.data, args.split, args.batch_size,
                                      args.device, keep_images=args.heatmaps)
    except (PairFileError, CheckpointError, ValueError) as error:
        print(f"dce-eval: {error}", file=sys.stderr)
        return 2
    md, csv_path = write_table(scores, args.out, info)
    print(md.read_text(encoding="utf-8"))
    print(f"table: {md}, {csv_path}")
    if args.heatmaps:
        paths = write_heatmaps(kept, args.out / "heatmaps", args.vmax_mm)
        print(f"{len(paths)} heat maps in {args.out / 'heatmaps'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
