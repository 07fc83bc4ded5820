"""Is the detail stage's figure held back by its variance? Detail stages
averaged at inference, and each stage averaged with its mirrored input.

A stage's prediction is the detail its input implies plus an error of its
own (its seed, its crops, its band). If that error were large, averaging
stages trained over the same global network, or averaging a stage's output
with that of the mirrored image mirrored back (the stage trains on mirrored
crops too), would raise ``detail_corr``. If the stages agree, what limits
them is what the input holds, not how the network learned it.

Rows, each scored like ``dce-eval`` on the held-out split at the file's
resolution: every stage alone, the first stage mirror-averaged, all stages
averaged, and all stages with their mirrors. The stages must share their
global network and their inputs (as several ``dce-train-detail`` runs over
one ``run/last.pt`` do, e.g. with other seeds or ``--highpass-mm``):

    python benchmarks/detail_averaging.py --data PAIRS STAGE [STAGE ...]
        [--results benchmarks/results/detail_averaging.md]

About 40 s per stage and pass on 2 cores.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

from dce.gan.detail import MirrorAveraged  # noqa: E402
from dce.gan.evaluate import evaluate  # noqa: E402
from dce.gan.inference import Refiner  # noqa: E402


class AveragedEnhancer(nn.Module):
    """The mean detail of ``stages`` (LocalEnhancers over the same inputs),
    each mirror-averaged (``MirrorAveraged``) when ``mirror``:
    (N, C, H, W) -> (N, 1, H, W)."""

    def __init__(self, stages: list, mirror: bool):
        super().__init__()
        self.stages = nn.ModuleList([MirrorAveraged(s) if mirror else s for s in stages])

    def forward(self, x):
        return torch.stack([stage(x) for stage in self.stages]).mean(0)


def averaged_refiner(refiners: list, mirror: bool) -> Refiner:
    """The first Refiner with its detail stage replaced by the average of all
    of theirs; SystemExit when they do not share the global network, the
    inputs and the image size."""
    first = refiners[0]
    for other in refiners[1:]:
        same_global = all(torch.equal(a, b) for a, b in zip(
            first.generator.state_dict().values(), other.generator.state_dict().values()))
        same_inputs = (other.detail_settings.shading == first.detail_settings.shading
                       and other.detail_size == first.detail_size)
        if not (same_global and same_inputs):
            sys.exit(f"detail_averaging: {other.path} does not share {first.path}'s global "
                     f"network, shading input and image size")
    averaged = copy.copy(first)  # the same global network, not loaded again
    averaged.enhancer = AveragedEnhancer([r.enhancer for r in refiners], mirror)
    return averaged


def described(refiner: Refiner) -> str:
    """What tells a stage from the others: its band, seed and training."""
    s = refiner.detail_settings
    return (f"stage, band {s.denoise_mm:g}-{s.highpass_mm:g} mm, seed {s.seed}, "
            f"{s.iterations} iterations")


def row_of(label: str, refiner: Refiner, data: Path) -> dict:
    t0 = time.perf_counter()
    scores, _, _ = evaluate(refiner, data)
    coarse, refined = scores.table()
    print(f"{label}: detail_corr {refined['detail_corr']:.3f} "
          f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return {"label": label, "coarse": coarse, "refined": refined}


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the stages' pair file")
    p.add_argument("stages", type=Path, nargs="+", help="detail-stage checkpoints")
    p.add_argument("--results", type=Path,
                   default=ROOT / "benchmarks" / "results" / "detail_averaging.md",
                   help="markdown file to write")
    args = p.parse_args()
    refiners = [Refiner(s) for s in args.stages]
    if any(r.enhancer is None for r in refiners):
        sys.exit("detail_averaging: every checkpoint must be a detail stage (dce-train-detail)")
    rows = [row_of(described(r), r, args.data) for r in refiners]
    rows.append(row_of(f"{described(refiners[0])}, mirror-averaged",
                       Refiner(args.stages[0], mirror_average=True), args.data))
    if len(refiners) > 1:
        rows.append(row_of(f"all {len(refiners)} averaged", averaged_refiner(refiners, False),
                           args.data))
        rows.append(row_of(f"all {len(refiners)} averaged, each mirror-averaged",
                           averaged_refiner(refiners, True), args.data))
    coarse = rows[0]["coarse"]
    lines = ["# Detail stages averaged at inference", "",
             f"`python benchmarks/detail_averaging.py --data {args.data.name} STAGES`: "
             f"configuration {refiners[0].settings.config}, {int(coarse['images'])} held-out "
             f"images at {int(coarse['resolution'])} px, mean ± std over images (see the "
             "script's docstring).", "",
             "| detail | face MAE (mm) | normal error (°) | detail_corr |", "|---|---|---|---|",
             f"| coarse | {coarse['face_mae_mm']:.3f} | {coarse['normal_error_deg']:.2f} | 0 |"]
    for r in rows:
        f = r["refined"]
        lines.append(f"| {r['label']} | {f['face_mae_mm']:.3f} | {f['normal_error_deg']:.2f} "
                     f"| {f['detail_corr']:.3f} ± {f['detail_corr_std']:.3f} |")
    args.results.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
