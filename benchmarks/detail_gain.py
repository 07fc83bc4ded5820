"""Can the detail stage's faint detail be made visible by scaling it up, and
at what cost?

A stage trained with an L2 loss predicts the expected detail given its
input: where a crease may or may not be, it draws a fraction of one. Its
output is therefore fainter than the target's and hard to see in a shaded
picture. Multiplying it by a gain g draws the same creases g times deeper;
the normal error, the face MAE and the roughness tell whether the stronger
drawing is closer to the target or only rougher. ``detail_corr`` moves a
little with the gain: it correlates refined - coarse, where the global
network's correction, not scaled, sits beside the stage's detail.

Each gain scales the last layer of the stage (weights and bias: the detail
is linear in them) in a copy of the checkpoint, scored by ``dce-eval`` on
the held-out split, with shaded coarse | refined | target pictures (the
first of each gain stacked in ``benchmarks/results/detail_gain_shaded.png``):

    python benchmarks/detail_gain.py --demo DEMO [--gains 1 2 3 4] [--out out/gain]

``DEMO`` is a finished ``dce-demo --out DEMO`` (its ``detail/last.pt`` and
``pairs.h5``); ``--checkpoint`` takes another detail stage. About 1 minute
per gain on 2 cores. Writes ``benchmarks/results/detail_gain.md``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

from dce.gan.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from dce.gan.evaluate import evaluate, write_heatmaps  # noqa: E402


def scaled_stage(checkpoint: Path, gain: float, out: Path) -> Path:
    """A copy of the detail-stage ``checkpoint`` whose output is ``gain``
    times the original's."""
    state = load_checkpoint(checkpoint)
    for name in ("out.weight", "out.bias"):
        state["G"][name] = state["G"][name] * gain
    path = out / f"gain_{gain:g}.pt"
    save_checkpoint(path, state)
    return path


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", type=Path, required=True, help="a finished dce-demo --out folder")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="detail-stage checkpoint (default: DEMO/detail/last.pt)")
    p.add_argument("--gains", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0],
                   help="output gains (default: 1 2 3 4)")
    p.add_argument("--heatmaps", type=int, default=4,
                   help="pictures per gain (default: 4)")
    p.add_argument("--out", type=Path, default=Path("out/gain"), help="work folder")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or args.demo / "detail" / "last.pt"
    label = args.checkpoint or "DEMO/detail/last.pt"
    rows, coarse, truth = [], None, None
    for gain in args.gains:
        stage = scaled_stage(checkpoint, gain, args.out)
        scores, kept, _ = evaluate(stage, args.demo / "pairs.h5", keep_images=args.heatmaps)
        write_heatmaps(kept, args.out / f"gain_{gain:g}")
        coarse, truth = scores.per_image["coarse"], np.nanmean(scores.target_roughness)
        refined = scores.per_image["refined"]
        rows.append((gain, {k: np.nanmean(v) for k, v in refined.items()}))
        print(f"gain {gain:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in rows[-1][1].items()),
              flush=True)
    shaded = [Image.open(args.out / f"gain_{gain:g}" / "shaded_000.png") for gain in args.gains]
    stack = Image.new("RGB", (shaded[0].width, sum(im.height for im in shaded)))
    for k, im in enumerate(shaded):
        stack.paste(im, (0, k * shaded[0].height))
    picture = ROOT / "benchmarks" / "results" / "detail_gain_shaded.png"
    stack.save(picture)
    lines = ["# The detail stage's output scaled by a gain", "",
             f"`python benchmarks/detail_gain.py --demo DEMO --gains "
             f"{' '.join(f'{g:g}' for g in args.gains)}` on `{label}`: the 240 held-out "
             "images at 256 px (see the script's docstring). Pictures, one row per gain "
             f"(coarse | refined | target): `{picture.relative_to(ROOT)}`.", "",
             "| output | face MAE (mm) | normal error (°) | detail_corr | roughness (mm/px²) |",
             "|---|---|---|---|---|",
             f"| coarse | {np.nanmean(coarse['face_mae_mm']):.3f} | "
             f"{np.nanmean(coarse['normal_error_deg']):.2f} | 0 | "
             f"{np.nanmean(coarse['roughness']):.3f} |"]
    for gain, means in rows:
        lines.append(f"| refined, gain {gain:g} | {means['face_mae_mm']:.3f} | "
                     f"{means['normal_error_deg']:.2f} | {means['detail_corr']:.3f} | "
                     f"{means['roughness']:.3f} |")
    lines.append(f"| ground truth | | | | {truth:.3f} |")
    result = ROOT / "benchmarks" / "results" / "detail_gain.md"
    result.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {result}")


if __name__ == "__main__":
    main()
