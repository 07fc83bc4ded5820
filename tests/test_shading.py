"""The photo's shading left unexplained by the coarse surface
(dce.gan.shading), on a Lambert-shaded dome with a groove the coarse
surface lacks: the residual is the groove's own shading, computed here
by rendering both surfaces with numpy's gradients."""
import numpy as np
import pytest
import torch

from dce.gan.shading import SHADING_GAIN, shading_residual

N = 128
LIGHT = np.array([0.4, 0.3, 1.0]) / np.linalg.norm([0.4, 0.3, 1.0])
MM_PER_UNIT = 50.0  # depth of 1 unit in mm; pixels are 1 mm


def lambert(depth_units, albedo):
    """Luminance of a surface given as depth (units) over 1 mm pixels."""
    gy, gx = np.gradient(depth_units * MM_PER_UNIT)
    n = np.stack([-gx, -gy, np.ones_like(gx)])
    n /= np.linalg.norm(n, axis=0)
    return albedo * (0.3 + 0.7 * np.clip(np.tensordot(LIGHT, n, 1), 0, None))


def scene(groove_mm=0.2, dark_patch=False):
    """(coarse image (1, 6, N, N) float32, expected residual shading (N, N), disc (N, N))."""
    y, x = np.mgrid[0:N, 0:N] - N / 2 + 0.5
    r2 = (x ** 2 + y ** 2) / 50.0 ** 2
    disc = r2 < 1
    dome = 0.5 - 0.1 * r2  # slopes up to 0.2: the fit is second order in them
    groove = -groove_mm / MM_PER_UNIT * np.exp(-0.5 * ((x - 0.3 * y - 10) / 1.5) ** 2)
    albedo = np.full((N, N), 0.8)
    if dark_patch:
        albedo[30:40, 50:60] = 0.15  # an eye: albedo, not shape
    seen = lambert(dome + groove, albedo)
    expected = seen - lambert(dome, albedo)
    depth = np.where(disc, dome, -1.0)
    grey = np.where(disc, 2 * seen - 1, -1.0)
    image = np.stack([depth, np.zeros_like(depth), np.zeros_like(depth), grey, grey, grey])
    return torch.from_numpy(image[None].astype(np.float32)), expected, disc


def residual(image):
    return shading_residual(image, 0, (3, 4, 5))[0, 0].double().numpy() / SHADING_GAIN


def test_residual_is_the_shading_of_the_missing_groove():
    image, expected, disc = scene()
    res = residual(image)
    inner = disc & (np.hypot(*np.mgrid[0:N, 0:N] - N / 2 + 0.5) < 45)
    corr = np.corrcoef(res[inner], expected[inner])[0, 1]
    assert corr > 0.95
    # Same size: a least-squares slope of the residual on the truth near 1.
    slope = (res[inner] * expected[inner]).sum() / (expected[inner] ** 2).sum()
    assert slope == pytest.approx(1.0, abs=0.1)
    assert np.all(res[~disc] == 0)


def test_the_dome_alone_is_explained():
    """No groove: the fit explains the dome's shading to well under the
    groove's size."""
    image, expected, disc = scene(groove_mm=0.0)
    _, with_groove, _ = scene()
    assert np.abs(residual(image)[disc]).max() < 0.1 * np.abs(with_groove).max()


def steep_dome(model):
    """The residual over a dome as steep as a face's sides (slopes up to
    1.5, 56 degrees), Lambert-shaded, and its disc (inner pixels only)."""
    y, x = np.mgrid[0:N, 0:N] - N / 2 + 0.5
    r2 = (x ** 2 + y ** 2) / 50.0 ** 2
    dome = 0.75 * (0.5 - r2)  # slope 1.5 at the rim
    seen = lambert(dome, np.full((N, N), 0.8))
    disc = r2 < 1
    grey = np.where(disc, 2 * seen - 1, -1.0)
    depth = np.where(disc, dome, -1.0)
    image = torch.from_numpy(np.stack([depth, 0 * depth, 0 * depth, grey, grey, grey])[None]
                             .astype(np.float32))
    res = shading_residual(image, 0, (3, 4, 5), model)[0, 0].double().numpy() / SHADING_GAIN
    return res, r2 < 0.95 ** 2


def test_a_steep_surface_is_explained_by_lambert_not_by_a_quadratic():
    """Lambert's law is linear in the unit normal, so the Lambert fit
    explains a steep dome's shading to float precision; the quadratic in
    the slopes (the fit of checkpoints from before) misses it by far more
    than a 0.2 mm groove's shading (~0.01 here)."""
    res, inner = steep_dome("lambert")
    assert np.abs(res[inner]).max() < 1e-4
    res, inner = steep_dome("quadratic")
    assert np.abs(res[inner]).max() > 0.02


def test_a_dark_patch_is_dropped_from_the_fit_and_clipped():
    """An eye-like patch of low albedo: its pixels are outliers, so the
    groove's residual elsewhere stays as without it, and the patch's own
    residual is clipped to a few robust sigmas (far below its true size)."""
    image, expected, disc = scene(dark_patch=True)
    plain, _, _ = scene()
    res, res_plain = residual(image), residual(plain)
    patch = np.zeros((N, N), bool)
    patch[28:42, 48:62] = True
    rest = disc & ~patch
    np.testing.assert_allclose(res[rest], res_plain[rest], atol=0.05 * np.abs(expected).max())
    true_drop = 0.8 * 0.75 - 0.15 * 0.75  # albedo step x typical shading
    assert np.abs(res[30:40, 50:60]).max() < 0.2 * true_drop


def test_offset_and_gain_of_the_photo():
    """A constant added to the luminance changes nothing (the fit's
    intercept); a contrast gain scales the residual by the same gain."""
    image, _, disc = scene()
    brighter, contrast = image.clone(), image.clone()
    grey = (image[:, 3:] + 1) / 2
    brighter[:, 3:] = torch.where(image[:, 3:] > -1, 2 * (grey + 0.05) - 1, -1.0)
    contrast[:, 3:] = torch.where(image[:, 3:] > -1, 2 * (grey * 0.8) - 1, -1.0)
    res = residual(image)
    np.testing.assert_allclose(residual(brighter), res, atol=1e-5)
    np.testing.assert_allclose(residual(contrast), 0.8 * res, atol=1e-5)


def test_too_small_a_surface_gives_zeros():
    image = torch.full((2, 6, 16, 16), -1.0)
    image[1, :, 7:9, 7:9] = 0.5  # 4 surface pixels, none with 4 surface neighbours
    out = shading_residual(image, 0, (3, 4, 5))
    assert out.shape == (2, 1, 16, 16) and torch.all(out == 0)
