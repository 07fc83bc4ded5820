"""The photo's shading that the coarse surface does not explain: an input
of the colour detail stage (our addition).

A photo is albedo x shading, and the shading follows the true surface,
creases included. Per image, the luminance is fitted by least squares with
Lambert's law on the coarse surface, linear in its unit normal (a constant
plus any light direction: 4 unknowns), reweighted twice to drop the pixels
the fit misses by more than 2.5 robust sigmas (eyes, brows, lips, hair:
albedo, not shape). What is left, clipped to 3 robust sigmas (at least
0.05), is shading from the shape the coarse surface lacks: the network reads
it directly instead of learning to separate light, albedo and coarse shape.

Why linear in the normal: a quadratic in the depth's slopes, this module's
fit before (``fit="quadratic"``), misses the shading of the face's steep
sides. On the default world's held-out images its misfit is 0.045 (robust
sigma of the luminance, median over images) against Lambert's 0.021, and
the 1-5 mm band of its residual agrees less with the shading the target's
own surface predicts (correlation 0.24 against 0.31;
benchmarks/shading_fit.py). See docs/detail-stage.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .h5format import FOREGROUND_ABOVE

# The depth's central differences in the [-1, 1] units of a pair file times
# this (halved: they span 2 pixels) approximate its slopes in mm per mm: a
# file's depth scale (50 mm by default) over its pixel (~1 mm). In the
# default world's files that ratio is 52-65, so the Lambert fit sees slopes
# 0.77-0.96 of the true ones; the quadratic fit does not depend on the scale.
SLOPE_GAIN = 50.0
OUTLIER_SIGMAS = 2.5
CLIP_SIGMAS = 3.0
# Never clip below this luminance: a crease's own shading (up to ~0.05 on the
# default world) stays whole on a noiseless photo too, whose sigma is the
# fit's tiny misfit.
CLIP_FLOOR = 0.05
REWEIGHTS = 2
# The residual is a few hundredths of the luminance; scaled to the inputs' size.
SHADING_GAIN = 10.0


# The fits: "lambert" (today's), "quadratic" (a quadratic in the slopes,
# which colour stages trained before it read; kept so that they refine as
# they were trained).
FITS = ("lambert", "quadratic")
# The quadratic fit clips steeper slopes (the silhouette): a handful of such
# pixels would otherwise steer its quadratic terms.
MAX_SLOPE = 5.0


def fit_basis(depth: torch.Tensor, fit: str = "lambert"):
    """The per-pixel basis (N, P, k) of ``fit`` on ``depth`` (N, H, W), P = H
    * W, from central-difference slopes times SLOPE_GAIN, and where both
    differences stay on the surface (N, P) bool. "lambert": 1 and the unit
    normal, proportional to (-gx, -gy, 1); "quadratic": 1, gx, gy, gx^2,
    gy^2, gx gy with the slopes clipped to MAX_SLOPE."""
    if fit not in FITS:
        raise ValueError(f"shading fit must be one of {FITS}, got {fit!r}")
    surface = depth >= FOREGROUND_ABOVE
    p = F.pad(depth[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    gx = ((p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) * SLOPE_GAIN).double().flatten(1)
    gy = ((p[:, 2:, 1:-1] - p[:, :-2, 1:-1]) * SLOPE_GAIN).double().flatten(1)
    s = F.pad(surface[:, None], (1, 1, 1, 1))[:, 0]
    ok = surface & s[:, 1:-1, 2:] & s[:, 1:-1, :-2] & s[:, 2:, 1:-1] & s[:, :-2, 1:-1]
    one = torch.ones_like(gx)
    if fit == "quadratic":
        gx, gy = gx.clamp(-MAX_SLOPE, MAX_SLOPE), gy.clamp(-MAX_SLOPE, MAX_SLOPE)
        return torch.stack([one, gx, gy, gx * gx, gy * gy, gx * gy], -1), ok.flatten(1)
    # albedo x (ambient + light . n): a constant and a light vector per image;
    # the central differences span 2 pixels.
    gx, gy = gx / 2, gy / 2
    length = (gx * gx + gy * gy + 1).sqrt()
    return torch.stack([one, -gx / length, -gy / length, 1 / length], -1), ok.flatten(1)


def fit_luminance(coarse: torch.Tensor, depth_index: int, colour, fit: str = "lambert"):
    """The per-image robust least-squares fit of the luminance of the colour
    channels on :func:`fit_basis` of the depth: (coefficients (N, k),
    residual (N, P), sigma (N, 1), ok (N, P)), the residual's robust sigma and
    where the basis is defined; float64. Arguments as :func:`shading_residual`."""
    X, ok = fit_basis(coarse[:, depth_index], fit)
    luminance = ((coarse[:, list(colour)].mean(dim=1) + 1) / 2).double().flatten(1)
    weight = ok.double()
    ridge = 1e-6 * torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    for k in range(REWEIGHTS + 1):
        weighted = X * weight[..., None]
        A = weighted.transpose(1, 2) @ X + ridge
        coefficients = torch.linalg.solve(A, weighted.transpose(1, 2) @ luminance[..., None])
        residual = luminance - (X @ coefficients)[..., 0]
        # 1.4826 x the median absolute residual: the sigma of a Gaussian, robustly.
        spread = torch.where(ok, residual.abs(), torch.nan).nanmedian(dim=1).values
        sigma = (spread.nan_to_num(1.0) * 1.4826 + 1e-6)[:, None]
        weight = (ok & (residual.abs() < OUTLIER_SIGMAS * sigma)).double()
    return coefficients[..., 0], residual, sigma, ok


def shading_residual(coarse: torch.Tensor, depth_index: int, colour,
                     fit: str = "lambert") -> torch.Tensor:
    """(N, 1, H, W): the luminance of the colour channels minus its
    per-image ``fit`` on the depth (:data:`FITS`, :func:`fit_luminance`),
    clipped, times SHADING_GAIN; 0 off the surface.

    ``coarse`` (N, C, H, W) in [-1, 1]; ``depth_index`` its depth channel,
    ``colour`` the indices of its r, g, b channels. An image whose surface
    has fewer usable pixels than the fit has unknowns gets 0 everywhere.
    """
    coefficients, residual, sigma, ok = fit_luminance(coarse, depth_index, colour, fit)
    limit = (CLIP_SIGMAS * sigma).clamp(min=CLIP_FLOOR)
    clipped = torch.maximum(torch.minimum(residual, limit), -limit)
    usable = ok & (ok.sum(dim=1) >= coefficients.shape[-1])[:, None]
    out = torch.where(usable, clipped * SHADING_GAIN, 0.0).to(coarse.dtype)
    return out.reshape(coarse.shape[:1] + coarse.shape[2:])[:, None]
