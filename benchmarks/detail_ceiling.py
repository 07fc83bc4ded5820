"""The ceiling of ``detail_corr`` for any method that sees geometry only.

In the built-in world each identity's creases (forehead lines, crow's feet,
lip lines, glabellar lines), their depths and its pores are random draws
(``geom.synthetic.draw_detail``). Part of the missing detail is fixed by the
face (lid creases, nasolabial folds, the mouth slit, nostrils, the 3DMM
fit's own mid-scale error); the rest cannot be known from a coarse depth,
curvature or elevation image. This script measures how much of the band
that ``detail_corr`` scores is of each kind.

It builds the default world ``K + 1`` times with the same seed: copy 0 is
the world itself, copies 1..K keep every identity, expression, pose,
photo and sensor noise and draw only the person-specific detail again
(``draw_detail`` from another stream). Each copy goes through the same
``dce-build``. For every held-out image, with d_k = BP(target_k - coarse)
over the face (the 1-5 mm difference of Gaussians of ``detail_corr``):

- the shared part m = E[d | shape, expression, pose] is estimated by the mean
  over the K + 1 copies, the random part's variance s^2 by their spread
  (unbiased, divided by K);
- ceiling = sqrt(var(m) / (var(m) + s^2)): the correlation with d_0 of the
  best predictor that knows the true shape, expression and pose exactly but
  not the person's random creases. A method that sees only the coarse
  images knows less, so its mean ``detail_corr`` cannot exceed the mean
  ceiling (up to the sampling error printed beside it).

It also scores the predictor "coarse + mean over copies 1..K of
(target_k - coarse)" with the evaluation's own ``detail_corr`` and
``normal_error_deg`` against copy 0: an oracle that knows everything but the
person's random draw (with K copies it still holds 1/K of their variance, so
its figures are a little worse than the ideal's).

    python benchmarks/detail_ceiling.py [--copies 3] [--out out/ceiling]

About 3 minutes per copy on 2 cores (world, build). Writes
``benchmarks/results/detail_ceiling.md``.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402


def build_copy(out: Path, copy: int) -> Path:
    """World and pair file of one copy (0: the world itself); skipped when built."""
    from dce.cli.build import main as build
    from dce.geom import synthetic

    world, data = out / f"world_{copy}", out / f"pairs_{copy}.h5"
    if data.exists():
        return data
    original = synthetic.draw_identity

    def redrawn(world_, seed, index):
        identity = original(world_, seed, index)
        rng = np.random.default_rng(np.random.SeedSequence(10_000 + copy, spawn_key=(index,)))
        return dataclasses.replace(identity, detail=synthetic.draw_detail(rng))

    if copy:
        synthetic.draw_identity = redrawn
    try:
        # In this process (workers=1): spawned workers would not see the redraw.
        synthetic.generate_world(world, workers=1)
    finally:
        synthetic.draw_identity = original
    if build(["synthetic", "--world", str(world), "-o", str(data)]) != 0:
        sys.exit(f"dce-build failed for copy {copy}")
    return data


def held_out(path: Path):
    """(coarse, target, face, pixel mm, depth mm per unit, sample ids) of the
    held-out split, depth channel, in file order."""
    from dce.gan.data import PairDataset
    from dce.gan.detail import pixel_sizes

    data = PairDataset(path, "test", ("depth",), ("depth",), augment=False)
    items = data.fetch(list(range(len(data))))
    coarse = torch.stack([it["coarse"] for it in items])[:, 0].double()
    target = torch.stack([it["target"] for it in items])[:, 0].double()
    face = torch.stack([it["target_mask"] for it in items])[:, 0] > 0
    mm = torch.stack([it["target_scale"][0] for it in items]).abs()
    px = torch.from_numpy(pixel_sizes(path, data.indices))
    import h5py
    with h5py.File(path, "r") as f:
        ids = [str(f["sample_id"][i]) for i in data.indices]
    return coarse, target, face, px, mm, ids


def main():
    from dce.gan.data import FOREGROUND_ABOVE
    from dce.gan.metrics import DETAIL_BAND_MM, band_pass, detail_corr, normal_error_deg

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--copies", type=int, default=3,
                   help="K, the redrawn copies besides the world itself (default: 3)")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "ceiling",
                   help="working folder (default: out/ceiling)")
    args = p.parse_args()
    if args.copies < 1:
        p.error("--copies must be >= 1")
    args.out.mkdir(parents=True, exist_ok=True)
    paths = [build_copy(args.out, k) for k in range(args.copies + 1)]

    copies = [held_out(path) for path in paths]
    coarse, target0, face0, px, mm, ids = copies[0]
    for k, (c, _, _, _, _, other_ids) in enumerate(copies[1:], 1):
        if other_ids != ids:
            sys.exit(f"copy {k} holds other held-out samples than copy 0")
        # The coarse side must be the same picture in every copy.
        print(f"copy {k}: largest coarse difference {float((c - coarse).abs().max()):.2e}")
    valid = face0 & (coarse >= FOREGROUND_ABOVE)
    for _, t, f, _, _, _ in copies[1:]:
        valid &= f
    lo, hi = DETAIL_BAND_MM[0] / px, DETAIL_BAND_MM[1] / px
    d = torch.stack([band_pass(t - coarse, valid, lo, hi) for _, t, _, _, _, _ in copies])
    w = valid.double()
    n_px = w.sum(dim=(1, 2))
    K = args.copies
    m = d.mean(dim=0)
    within = (((d - m) ** 2) * w).sum(dim=(0, 2, 3)) / (K * n_px)
    m_centred = (m - (m * w).sum(dim=(1, 2), keepdim=True) / n_px[:, None, None]) * w
    shared = (m_centred ** 2).sum(dim=(1, 2)) / n_px - within / (K + 1)
    ceiling = torch.sqrt(shared.clamp(min=0) / (shared.clamp(min=0) + within))

    predictor = coarse + torch.stack([t - coarse for _, t, _, _, _, _ in copies[1:]]).mean(0)
    oracle_corr = detail_corr(predictor, coarse, target0, face0, px)
    oracle_normal = normal_error_deg(predictor, target0, mm, px, face0)
    coarse_normal = normal_error_deg(coarse, target0, mm, px, face0)

    def mean_se(x):
        x = x[torch.isfinite(x)].numpy()
        return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))

    rows = [
        ("held-out images", f"{len(ids)}"),
        ("copies (world + redrawn)", f"1 + {K}"),
        ("missing band BP(target - coarse), RMS (mm)",
         f"{float(torch.sqrt((d[0] ** 2 * w).sum((1, 2)) / n_px).mul(mm).mean()):.3f}"),
        ("its shared part (face, expression, fit), RMS (mm)",
         f"{float(torch.sqrt(shared.clamp(min=0)).mul(mm).mean()):.3f}"),
        ("its person-specific random part, RMS (mm)",
         f"{float(torch.sqrt(within).mul(mm).mean()):.3f}"),
        ("ceiling of detail_corr (geometry only), mean ± s.e.",
         "{:.3f} ± {:.3f}".format(*mean_se(ceiling))),
        (f"oracle: coarse + mean of {K} redrawn copies, detail_corr",
         "{:.3f} ± {:.3f}".format(*mean_se(oracle_corr))),
        ("coarse normal error (°)", "{:.2f}".format(mean_se(coarse_normal)[0])),
        (f"oracle: coarse + mean of {K} redrawn copies, normal error (°)",
         "{:.2f} ({:.2f}x coarse)".format(mean_se(oracle_normal)[0],
                                          mean_se(oracle_normal)[0] / mean_se(coarse_normal)[0])),
    ]
    table = "| quantity | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    out = ROOT / "benchmarks" / "results" / "detail_ceiling.md"
    out.write_text("# Ceiling of detail_corr for geometry-only input\n\n"
                   "`python benchmarks/detail_ceiling.py --copies "
                   f"{K}` (default world, 256 px, held-out identities).\n\n{table}\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
