"""How the detail stage's figures grow with its training time: one run,
trained on to each of ``--iterations`` in turn (resumed, so the batches are
those of one long run; each step ends with its own decay of the Adam step,
``lr_decay``, and the next climbs back: warm restarts) and scored with dce-eval's figures on the held-out
split at the pair file's resolution after each, beside the coarse input.

    python benchmarks/detail_training_time.py DATA GLOBAL_CHECKPOINT
        [--iterations 600 2000 6000] [--out out/detail_training_time] [--name NAME]

DATA: a pair file (e.g. a ``--channels DCE+RGB`` build of the default
world); GLOBAL_CHECKPOINT: the progressive network from dce-train. The
stage's other settings are DetailSettings' defaults (dce-train-detail's).
Finished steps are kept: a rerun continues. Writes
``benchmarks/results/detail_training_time_<NAME>.md``. A run to 6,000
iterations takes about 40 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

from dce.gan.detail import DetailSettings, DetailTrainer  # noqa: E402
from dce.gan.evaluate import evaluate  # noqa: E402


def row(label: str, figures: dict) -> str:
    def cell(metric, digits):
        values = figures[metric]
        return f"{np.nanmean(values):.{digits}f} ± {np.nanstd(values):.{digits}f}"
    return (f"| {label} | {cell('face_mae_mm', 3)} | {cell('normal_error_deg', 2)} | "
            f"{cell('detail_corr', 3)} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="pair file")
    p.add_argument("global_checkpoint", type=Path, help="dce-train checkpoint")
    p.add_argument("--iterations", type=int, nargs="+", default=[600, 2000, 6000],
                   help="the iteration counts to score, increasing (default: 600 2000 6000)")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "detail_training_time",
                   help="run folder (default: out/detail_training_time)")
    p.add_argument("--name", default=None, help="results file suffix (default: the data's stem)")
    args = p.parse_args()
    if sorted(set(args.iterations)) != args.iterations or args.iterations[0] < 1:
        p.error("--iterations must be increasing positive counts")
    name = args.name or args.data.stem
    lines, coarse = [], None
    for iterations in args.iterations:
        settings = DetailSettings(data=str(args.data), out=str(args.out),
                                  global_checkpoint=str(args.global_checkpoint),
                                  iterations=iterations, log_every=500)
        trainer = DetailTrainer(settings)
        last = args.out / "last.pt"
        if last.exists():
            trainer.resume(last)
        started = time.perf_counter()
        if trainer.iteration < iterations:
            trainer.train()
            if trainer.interrupted:
                return 130
        minutes = (time.perf_counter() - started) / 60
        scores, _, info = evaluate(last, args.data)
        coarse = coarse or row("coarse input", scores.per_image["coarse"])
        lines.append(row(f"detail stage, {iterations} iterations ({minutes:.0f} min here)",
                         scores.per_image["refined"]))
        print(lines[-1], flush=True)
    table = "\n".join(["| model | face MAE (mm) | normal error (°) | detail_corr |",
                       "|---|---|---|---|", coarse, *lines])
    out = ROOT / "benchmarks" / "results" / f"detail_training_time_{name}.md"
    out.write_text(
        f"# The detail stage against its training time ({info['config']})\n\n"
        f"`python benchmarks/detail_training_time.py {args.data.name} ... --iterations "
        f"{' '.join(map(str, args.iterations))}`: {info['images']} held-out images at "
        f"{info['resolution']} px, mean ± std over images; the minutes are those each step "
        f"took in this call (0 for a step already trained).\n\n{table}\n", encoding="utf-8")
    print(table)
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
