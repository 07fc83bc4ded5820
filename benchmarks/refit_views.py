"""The learned re-fit scored as dce-eval scores it, and split by view.

    python benchmarks/refit_views.py --data pairs.h5 --refit refit.h5 \
        --checkpoint detail/last.pt [--results benchmarks/results/refit_eval_220.md]

``--refit`` is ``dce-refit``'s re-fit of ``--data``; ``--checkpoint`` a
dce-train or dce-train-detail checkpoint. One ``dce.gan.evaluate.evaluate``
run with ``refit=`` gives the coarse, refit and refined rows of ``dce-eval
--refit`` on the held-out split at the file's resolution; the same
per-image figures are then averaged over the photo views (pose 0) and the
turned views by their yaw, beside the coarse input's on the same images.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, mean_se, write_report  # noqa: E402

from dce.gan.evaluate import evaluate, markdown_table  # noqa: E402
from dce.gan.h5format import TEST  # noqa: E402

YAW_BINS = ((0.0, 15.0), (15.0, 30.0), (30.0, 90.0))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the pair file")
    p.add_argument("--refit", type=Path, required=True, help="its re-fit (dce-refit)")
    p.add_argument("--checkpoint", type=Path, required=True, help="the network to score")
    p.add_argument("--results", type=Path,
                   default=ROOT / "benchmarks" / "results" / "refit_eval.md")
    args = p.parse_args()
    started = time.perf_counter()
    scores, _, info = evaluate(args.checkpoint, args.data, refit=args.refit)
    with h5py.File(args.data, "r") as f:
        held_out = f["split"][()] == TEST
        poses = f["pose"][()][held_out]
    photo = ~poses.any(axis=1)
    yaw = np.abs(poses[:, 0])
    groups = {"photo views (pose 0)": photo}
    groups.update({f"turned, yaw {lo:.0f}-{hi:.0f} deg": ~photo & (yaw >= lo) & (yaw < hi)
                   for lo, hi in YAW_BINS})
    lines = ["# The learned re-fit, scored by dce-eval --refit", "",
             f"`python benchmarks/refit_views.py --data {args.data.name} --refit "
             f"{args.refit.name} --checkpoint {args.checkpoint}`: {info['images']} held-out "
             f"images at {info['resolution']} px, configuration {info['config']} "
             f"(trained to {info['trained_resolution']} px"
             f"{' + detail stage' if info['detail'] else ''}).", "",
             markdown_table(scores.table()), "",
             "## By view (detail_corr mean ± s.e.; face MAE and normal error minus the "
             "coarse input's on the same images)", "",
             "| images | n | refit detail_corr | refined detail_corr | refit Δ face MAE (mm) | "
             "refined Δ face MAE (mm) | refit Δ normal (°) | refined Δ normal (°) |",
             "|---|---|---|---|---|---|---|---|"]
    per = scores.per_image
    for name, where in groups.items():
        if not where.any():
            continue
        delta = {(m, k): np.nanmean(per[m][k][where] - per["coarse"][k][where])
                 for m in ("refit", "refined") for k in ("face_mae_mm", "normal_error_deg")}
        lines.append(f"| {name} | {int(where.sum())} | {mean_se(per['refit']['detail_corr'][where])}"
                     f" | {mean_se(per['refined']['detail_corr'][where])} | "
                     f"{delta['refit', 'face_mae_mm']:+.3f} | {delta['refined', 'face_mae_mm']:+.3f}"
                     f" | {delta['refit', 'normal_error_deg']:+.2f} | "
                     f"{delta['refined', 'normal_error_deg']:+.2f} |")
    lines += ["", f"{time.perf_counter() - started:.0f} s on the machine that ran it."]
    return write_report(lines, args.results)


if __name__ == "__main__":
    sys.exit(main())
