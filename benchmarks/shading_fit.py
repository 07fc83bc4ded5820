"""How well does each fit of the photo's luminance (dce.gan.shading.FITS)
leave the shading of the shape the coarse surface lacks?

The colour detail stage reads the luminance minus its per-image fit on the
coarse surface. What it should see there is the shading of the missing
shape: the fit's own model evaluated on the target's surface minus the same
model on the coarse one (the fit's coefficients, the target's normals
smoothed over 0.5 mm against scanner noise). Per held-out image and fit:

- misfit: the robust sigma of the luminance residual (lower: less of the
  residual is the fit's own error);
- agreement: the correlation, over the face pixels the fit keeps, of the
  1-5 mm band (the detail band of ``dce-eval``) of the residual with that
  of the target's predicted shading (higher: the residual shows the
  missing shape, not the fit's misfit).

    python benchmarks/shading_fit.py PAIRS [--split test] [--out benchmarks/results/shading_fit.md]

``PAIRS`` is a colour pair file (``dce-build synthetic --channels DCE+RGB``,
or the comparison's ``out/compare/pairs.h5``). About a minute for 240
images on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

from dce.gan.configs import COLOUR, GEOMETRY  # noqa: E402
from dce.gan.data import PairDataset  # noqa: E402
from dce.gan.detail import pixel_sizes  # noqa: E402
from dce.gan.h5format import FOREGROUND_ABOVE  # noqa: E402
from dce.gan.metrics import band_pass, detail_band_px, gaussian_blur_masked  # noqa: E402
from dce.gan.shading import FITS, OUTLIER_SIGMAS, fit_basis, fit_luminance  # noqa: E402

DENOISE_MM = 0.5


def scores(coarse, target_depth, face, pixel_mm, fit):
    """(misfit (N,), agreement (N,)) of ``fit`` on coarse images (N, 6, H, W)
    with depth first and r, g, b last, target depth (N, H, W), face (N, H, W)
    bool, pixel sizes (N,) in mm."""
    N, _, H, W = coarse.shape
    coefficients, residual, sigma, ok = fit_luminance(coarse, 0, (3, 4, 5), fit)
    smooth = gaussian_blur_masked(target_depth, face, torch.as_tensor(DENOISE_MM / pixel_mm))
    smooth = torch.where(face, smooth, target_depth)
    X_target, ok_target = fit_basis(smooth, fit)
    X_coarse, _ = fit_basis(coarse[:, 0], fit)
    predicted = ((X_target - X_coarse) @ coefficients[..., None])[..., 0]
    kept = (ok & ok_target & face.flatten(1) & (residual.abs() < OUTLIER_SIGMAS * sigma))
    kept = kept.reshape(N, H, W)
    fine, coarse_sigma = detail_band_px(pixel_mm)
    bands = [band_pass(field.reshape(N, H, W).float(), kept, fine, coarse_sigma).double()
             for field in (residual, predicted)]
    agreement = []
    for n in range(N):
        a, b = (band[n][kept[n]] for band in bands)
        agreement.append(float(np.corrcoef(a.numpy(), b.numpy())[0, 1]))
    return sigma[:, 0].numpy(), np.array(agreement)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pairs", type=Path, help="a colour pair file (channels DCE+RGB)")
    p.add_argument("--split", default="test", choices=["train", "test", "all"])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shading_fit.md")
    args = p.parse_args()
    data = PairDataset(args.pairs, args.split, GEOMETRY + COLOUR, ("depth",), augment=False)
    pixels = pixel_sizes(args.pairs, data.indices)
    results = {fit: ([], []) for fit in FITS}
    for start in range(0, len(data), 16):
        rows = range(start, min(start + 16, len(data)))
        items = data.fetch(rows)
        coarse = torch.stack([it["coarse"] for it in items])
        target = torch.stack([it["target"] for it in items])[:, 0]
        face = ((torch.stack([it["target_mask"] for it in items])[:, 0] > 0)
                & (coarse[:, 0] >= FOREGROUND_ABOVE) & (target >= FOREGROUND_ABOVE))
        pixel = torch.from_numpy(pixels[list(rows)]).double()
        for fit in FITS:
            misfit, agreement = scores(coarse, target, face, pixel, fit)
            results[fit][0].extend(misfit)
            results[fit][1].extend(agreement)
        print(f"{start + len(items)}/{len(data)} images", flush=True)
    lines = ["# The shading residual's fits", "",
             f"`python benchmarks/shading_fit.py {args.pairs.name}`: {len(data)} {args.split} "
             "images at the file's resolution; misfit: the luminance residual's robust sigma "
             "(median over images); agreement: correlation of the residual's 1-5 mm band with "
             "that of the shading the target's own surface predicts under the same fit "
             "(mean ± std over images).", "",
             "| fit | misfit | agreement |", "|---|---|---|"]
    for fit in FITS:
        misfit, agreement = (np.asarray(v) for v in results[fit])
        lines.append(f"| {fit} | {np.median(misfit):.4f} | {np.nanmean(agreement):.3f} ± "
                     f"{np.nanstd(agreement):.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
