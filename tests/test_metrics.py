"""Surface-quality metrics (gan/metrics.py) against analytic values and scipy."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from dce.gan.h5format import BACKGROUND
from dce.gan.metrics import (
    DETAIL_BAND_MM,
    FACE_REGIONS,
    band_pass,
    depth_normals,
    detail_band_px,
    detail_corr,
    face_regions,
    gaussian_blur_masked,
    normal_error_deg,
)
from dce.geom.synthetic import LANDMARK_UV


def _grid(H, W, dtype=torch.float64):
    """(rows, cols) pixel index grids (H, W)."""
    return torch.meshgrid(torch.arange(H, dtype=dtype), torch.arange(W, dtype=dtype),
                          indexing="ij")


def _sphere_cap(H, W, pixel_mm, mm_per_unit, radius_mm):
    """Depth (H, W) in units of a sphere of ``radius_mm`` facing the camera
    (view depth: the centre is nearest), centred in the image; its 0.9-radius
    disk is the face, -1 elsewhere."""
    rows, cols = _grid(H, W)
    r_mm = torch.hypot(rows - (H - 1) / 2, cols - (W - 1) / 2) * pixel_mm
    face = r_mm <= 0.9 * radius_mm
    z_mm = -torch.sqrt((radius_mm ** 2 - r_mm ** 2).clamp(min=0))
    depth = 0.5 + z_mm / mm_per_unit
    return torch.where(face, depth, BACKGROUND), face


def _ring_free(valid):
    """Independent reference for ``ok``: valid pixels whose 4 neighbours exist
    and are valid (numpy loops over the neighbour offsets)."""
    v = np.asarray(valid)
    padded = np.pad(v, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    out = v.copy()
    H, W = v.shape[1:]
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        out &= padded[:, 1 + dr:1 + dr + H, 1 + dc:1 + dc + W]
    return out


# ---------------------------------------------------------------- normals

def test_depth_normals_of_planes_per_image_pixel_size():
    H, W = 12, 15
    rows, cols = _grid(H, W)
    pixel_mm = torch.tensor([0.5, 2.0], dtype=torch.float64)
    slopes = [(0.3, -0.7), (-1.2, 0.4)]  # (dz/dx, dz/dy), mm per mm
    depth_mm = torch.stack([a * cols * p + b * rows * p + 7.0
                            for (a, b), p in zip(slopes, pixel_mm)])
    valid = torch.ones(2, H, W, dtype=torch.bool)
    valid[0, 5, 6] = False  # a one-pixel hole
    valid[1, :, 11:] = False  # a silhouette
    normals, ok = depth_normals(depth_mm, pixel_mm, valid)
    assert normals.shape == (2, 3, H, W)
    assert torch.equal(ok, torch.from_numpy(_ring_free(valid.numpy())))
    assert not ok[0, 4, 6] and not ok[0, 5, 7] and ok[0, 3, 6]
    assert not ok[1, :, 10].any() and ok[1, 1:-1, 9].all()
    for i, (a, b) in enumerate(slopes):
        expected = torch.tensor([-a, -b, 1.0], dtype=torch.float64) / math.sqrt(1 + a * a + b * b)
        got = normals[i].permute(1, 2, 0)[ok[i]]
        assert torch.allclose(got, expected.expand_as(got), atol=1e-12)


# ---------------------------------------------------------------- normal error

def _tilted_pair(angle_deg, pixel_mm=0.4, mm_per_unit=-80.0, H=40, W=48):
    """A flat depth image and one tilted by ``angle_deg`` about the rows,
    both inside [-1, 1] (float32), with a face rectangle."""
    rows, cols = _grid(H, W)
    x_mm = cols * pixel_mm
    flat = torch.full((H, W), 0.2, dtype=torch.float64)
    tilted = 0.2 + math.tan(math.radians(angle_deg)) * x_mm / abs(mm_per_unit)
    face = torch.zeros(H, W, dtype=torch.bool)
    face[3:-3, 4:-4] = True
    return flat, tilted, face


def test_normal_error_of_a_tilted_plane_is_the_tilt():
    pixel_mm, mm_per_unit = 0.4, -80.0
    flat, tilted, face = _tilted_pair(10.0, pixel_mm, mm_per_unit)
    assert tilted.abs().max() < 1
    err = normal_error_deg(tilted[None].float(), flat[None].float(),
                           torch.tensor([mm_per_unit]), torch.tensor([pixel_mm]), face[None])
    assert err.shape == (1,)
    assert err.item() == pytest.approx(10.0, abs=1e-3)
    # Swapping the roles gives the same angle.
    err = normal_error_deg(flat[None].float(), tilted[None].float(),
                           torch.tensor([mm_per_unit]), torch.tensor([pixel_mm]), face[None])
    assert err.item() == pytest.approx(10.0, abs=1e-3)


def test_normal_error_zero_for_identical_images_and_nan_without_face():
    pixel_mm, mm_per_unit = 0.6, 120.0
    sphere, face = _sphere_cap(64, 64, pixel_mm, mm_per_unit, radius_mm=20.0)
    flat, tilted, face_t = _tilted_pair(25.0, H=64, W=64)
    pred = torch.stack([sphere, tilted]).float()
    face = torch.stack([face, face_t])
    scale, pixel = torch.tensor([mm_per_unit, -50.0]), torch.tensor([pixel_mm, 0.4])
    err = normal_error_deg(pred, pred, scale, pixel, face)
    assert torch.equal(err, torch.zeros(2))
    # The prediction's holes drop the normals next to them, not the image.
    holed = pred.clone()
    holed[0, 30:33, 30:33] = BACKGROUND
    holed[0, 40, 25] = 0.9  # foreground but wrong: 5 ok normals of the target differ
    err = normal_error_deg(holed, pred, scale, pixel, face)
    assert err[1] == 0 and 0 < err[0] < 90
    assert torch.isnan(normal_error_deg(pred, pred, scale, pixel, torch.zeros_like(face))).all()


def test_normal_error_on_a_sphere_against_its_analytic_normals():
    """A sphere predicted as its tangent plane at the centre: the angle at
    distance r from the centre is asin(r / R)."""
    pixel_mm, mm_per_unit, R = 0.5, 60.0, 25.0
    sphere, face = _sphere_cap(48, 48, pixel_mm, mm_per_unit, R)
    plane = torch.where(face, sphere.min(), BACKGROUND)
    rows, cols = _grid(48, 48)
    r_mm = torch.hypot(rows - 23.5, cols - 23.5) * pixel_mm
    small = face & (r_mm <= 6.0)  # well inside: central differences are accurate
    err = normal_error_deg(plane[None], sphere[None], torch.tensor([mm_per_unit]),
                           torch.tensor([pixel_mm]), small[None])
    inside = torch.from_numpy(_ring_free(small[None].numpy()))[0]  # the pixels ok in both
    expected = torch.rad2deg(torch.asin(r_mm[inside] / R)).mean()
    assert err.item() == pytest.approx(expected.item(), abs=0.02)


# ---------------------------------------------------------------- blurs

def test_masked_blur_keeps_a_constant_on_valid_pixels():
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(2, 40, 50, generator=g) > 0.3
    valid[1, :, 25:] = False
    x = torch.where(valid, torch.tensor(0.37), torch.tensor(-1.0))
    out = gaussian_blur_masked(x, valid, 2.3)
    assert (out[valid] - 0.37).abs().max() < 1e-6


@pytest.mark.parametrize("sigma", [1.5, 2.0, 4.0])
def test_masked_blur_matches_scipy_normalized_convolution(sigma):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 60, 70))
    valid = rng.random((2, 60, 70)) > 0.2
    valid[1, 10:40, 5:60] = False
    # scipy's radius is int(3 sigma + 0.5); these sigmas make it ceil(3 sigma).
    blur = lambda a: ndimage.gaussian_filter(a, sigma, mode="constant", truncate=3.0)
    num = np.stack([blur(xi * vi) for xi, vi in zip(x, valid)])
    den = np.stack([blur(vi.astype(float)) for vi in valid])
    reached = den >= 1e-6
    assert not reached.all()  # the hole has an unreachable middle
    got = gaussian_blur_masked(torch.from_numpy(x).float(), torch.from_numpy(valid), sigma).numpy()
    assert np.abs(got[reached] - num[reached] / den[reached]).max() < 1e-5
    assert (got[~reached] == 0).all()
    # Fully valid: a plain Gaussian filter away from the border.
    r = math.ceil(3 * sigma)
    full = gaussian_blur_masked(torch.from_numpy(x), torch.ones(2, 60, 70, dtype=torch.bool), sigma)
    plain = np.stack([ndimage.gaussian_filter(xi, sigma, truncate=3.0) for xi in x])
    assert np.abs(full.numpy() - plain)[:, r:-r, r:-r].max() < 1e-12


def test_masked_blur_is_zero_out_of_reach_and_rejects_bad_sigma():
    valid = torch.zeros(1, 30, 30, dtype=torch.bool)
    valid[0, :5, :5] = True
    out = gaussian_blur_masked(torch.ones(1, 30, 30), valid, 1.0)  # radius 3
    assert out[0, :8, :8].min() > 0.99 and torch.equal(out[0, 9:, :], torch.zeros(21, 30))
    with pytest.raises(ValueError):
        gaussian_blur_masked(torch.ones(1, 3, 3), valid[:, :3, :3], 0.0)


def test_band_pass_removes_an_affine_ramp_in_the_interior():
    rows, cols = _grid(80, 90, dtype=torch.float32)
    ramp = (0.004 * cols - 0.003 * rows - 0.1)[None]
    valid = torch.ones(1, 80, 90, dtype=torch.bool)
    valid[0, 0, 0] = False
    out = band_pass(ramp, valid, 1.5, 6.0)
    r = math.ceil(3 * 6.0)
    assert out[0, r:-r, r:-r].abs().max() < 1e-5
    assert out[0, 0, 0] == 0
    # Not a no-op: a bump 2 px wide survives.
    bump = torch.exp(-((rows - 40) ** 2 + (cols - 45) ** 2) / 8)[None]
    assert band_pass(bump, valid, 1.5, 6.0)[0, 40, 45] > 0.3


def test_detail_band_px():
    assert DETAIL_BAND_MM == (1.0, 5.0)
    assert detail_band_px(0.5) == (2.0, 10.0)
    assert detail_band_px(torch.tensor([0.2, 0.3])) == pytest.approx((4.0, 20.0))
    assert detail_band_px(2.0, fine_mm=3.0, coarse_mm=8.0) == (1.5, 4.0)


# ---------------------------------------------------------------- detail correlation

PIXEL_MM = 0.5  # band sigmas 2 and 10 px


@pytest.fixture(scope="module")
def scene():
    """(coarse, target, face) 256x256: a smooth sphere cap, and the same cap
    plus 300 Gaussian bumps of sigma 3 px (1.5 mm) with random signs."""
    coarse, face = _sphere_cap(256, 256, PIXEL_MM, 100.0, radius_mm=62.0)
    rng = np.random.default_rng(7)
    centres = torch.from_numpy(rng.uniform(20, 236, (2, 300)))
    heights = torch.from_numpy(rng.choice([-0.01, 0.01], 300))
    # A 2-D Gaussian is the product of a row and a column Gaussian, so the sum
    # of the bumps is (256, 300) @ diag(heights) @ (300, 256).
    axis = torch.arange(256, dtype=torch.float64)[:, None]
    along_rows, along_cols = torch.exp(-(axis - centres[:, None]) ** 2 / (2 * 3.0 ** 2))
    detail = along_rows @ (heights[:, None] * along_cols.T)
    target = torch.where(face, coarse + detail, BACKGROUND)
    assert target.max() < 1 and coarse[face].min() > -0.9
    return coarse[None].float(), target[None].float(), face[None]


def test_detail_corr_defined_rows(scene):
    coarse, target, face = scene
    refined = torch.cat([
        coarse,  # the coarse row
        target,
        2 * coarse - target,  # the detail inverted
        coarse + 0.3 * (target - coarse),  # a third of it
        torch.where(face, coarse + 0.05, BACKGROUND),  # a constant adds no detail
    ])
    corr = detail_corr(refined, *(x.expand(5, -1, -1) for x in scene), PIXEL_MM)
    assert corr[0] == 0 and corr[4] == 0
    assert corr[1:4].tolist() == pytest.approx([1.0, -1.0, 1.0], abs=1e-6)


def test_detail_corr_of_independent_noise_is_small(scene):
    """The correlation of band-passed noise with the bumps spreads by about
    0.025 over noise seeds here: each of 4 images within 0.1 (4 sigma), their
    mean within 0.05."""
    coarse, target, face = (x.expand(4, -1, -1) for x in scene)
    g = torch.Generator().manual_seed(0)
    noise = 0.01 * torch.randn(coarse.shape, generator=g)
    refined = torch.where(face, coarse + noise, BACKGROUND)
    corr = detail_corr(refined, coarse, target, face, torch.full((4,), PIXEL_MM))
    assert corr.abs().max() < 0.1 and abs(corr.mean()) < 0.05


def test_detail_corr_ignores_the_face_shape(scene):
    """A paraboloid over the whole face (56 mm radius, 10x the 5 mm band)
    added to the refined image, rising to twice the bumps' height at the
    rim, hardly moves the correlation. (Its residue is at the silhouette,
    where the masked blur sees one side only: 10x this offset gives 0.4.)"""
    coarse, target, face = scene
    rows, cols = _grid(256, 256, dtype=torch.float32)
    r2_mm = ((rows - 127.5) ** 2 + (cols - 127.5) ** 2) * PIXEL_MM ** 2
    paraboloid = 0.02 * r2_mm / 55.8 ** 2
    refined = torch.where(face, target + paraboloid, BACKGROUND)
    assert detail_corr(refined, coarse, target, face, PIXEL_MM).item() > 0.95
    # Unfiltered, the same offset would swamp the detail.
    added, missing = (refined - coarse)[face], (target - coarse)[face]
    assert np.corrcoef(added.numpy(), missing.numpy())[0, 1] < 0.7


def test_detail_corr_matches_numpy_with_per_image_pixel_sizes(scene):
    """Two images with different pixel sizes in one batch: each is band-passed
    with its own sigmas (checked with band_pass and numpy's corrcoef)."""
    coarse, target, face = scene
    g = torch.Generator().manual_seed(5)
    refined = torch.where(face, target + 0.01 * torch.randn(coarse.shape, generator=g), BACKGROUND)
    batch = [torch.cat([x, x]) for x in (refined, coarse, target, face)]
    pixel_mm = torch.tensor([0.5, 0.4])
    got = detail_corr(*batch, pixel_mm)
    for i, p in enumerate(pixel_mm.tolist()):
        fine, wide = 1.0 / p, 5.0 / p
        a = band_pass(refined - coarse, face, fine, wide)[face]
        b = band_pass(target - coarse, face, fine, wide)[face]
        assert got[i].item() == pytest.approx(np.corrcoef(a.numpy(), b.numpy())[0, 1], abs=1e-6)
    assert abs(got[0] - got[1]) > 0.01  # the sizes matter


def test_detail_corr_nan_cases(scene):
    coarse, target, face = scene
    # Fewer than 16 usable pixels: the refined image is background elsewhere.
    few = torch.full_like(target, BACKGROUND)
    few[0, 128:131, 128:133] = target[0, 128:131, 128:133]
    refined = torch.cat([target, coarse, few, target])
    # The target adds no detail in the first two: undefined, even for the
    # coarse row. The last one is fine next to the NaN ones.
    targets = torch.cat([coarse, coarse, target, target])
    corr = detail_corr(refined, coarse.expand(4, -1, -1), targets, face.expand(4, -1, -1),
                       torch.full((4,), PIXEL_MM))
    assert torch.isnan(corr[:3]).all()
    assert corr[3].item() == pytest.approx(1.0, abs=1e-6)


# ---------------------------------------------------------------- face regions

def _landmarks_px(mm_per_px=0.9, centre=(128.0, 140.0)):
    """The synthetic mean face's iBUG-68 landmarks in pixels (x = column,
    y = row, up in the face = up in the image)."""
    u, v = LANDMARK_UV[:, 0], LANDMARK_UV[:, 1]
    return np.stack([centre[0] + u / mm_per_px, centre[1] - v / mm_per_px], axis=1)


def test_face_regions_contain_their_anatomy():
    L = _landmarks_px()
    masks = face_regions(torch.from_numpy(L), 256, 256)
    assert masks.shape == (1, 6, 256, 256) and masks.dtype == torch.bool
    assert FACE_REGIONS == ("forehead", "eyes", "nose", "cheeks", "mouth", "chin")
    assert masks.sum(dim=1).max() == 1  # disjoint
    probes = {  # (u, v) mm on the mean face -> region
        (0, 75): "forehead", (0, 45): "forehead",  # mid-forehead, glabella
        (-38, 30): "eyes", (38, 45): "eyes",  # an eye, the other upper lid
        (0, 5): "nose", (-8, 20): "nose",
        (-60, 0): "cheeks", (-22, -22): "cheeks",  # cheek, nasolabial fold
        (0, -42): "mouth", (15, -38): "mouth",
        (0, -65): "chin", (-30, -62): "chin",
        (-120, -70): None, (0, 140): None,
    }
    for (u, v), name in probes.items():
        col, row = round(128 + u / 0.9), round(140 - v / 0.9)
        hit = [FACE_REGIONS[k] for k in range(6) if masks[0, k, row, col]]
        assert hit == ([name] if name else []), (u, v, hit)
    # Areas in proportion to the face: each region a visible share.
    share = masks[0].sum(dim=(1, 2)).double() / masks.sum()
    assert (share > 0.01).all() and share[FACE_REGIONS.index("cheeks")] > 0.3


def test_face_regions_follow_the_landmarks_per_image():
    L = _landmarks_px()
    batch = torch.from_numpy(np.stack([L, L + [9.0, -6.0]]))
    masks = face_regions(batch, 256, 256)
    assert masks.shape == (2, 6, 256, 256)
    assert torch.equal(masks[1], torch.roll(masks[0], shifts=(-6, 9), dims=(1, 2)))


def test_detail_pictures_show_what_detail_corr_compares(scene, tmp_path):
    """detail_bands gives the two fields detail_corr correlates: refined ==
    target adds exactly the missing band, refined == coarse adds none, and a
    bump deeper than the coarse surface (a crease) is positive at its centre,
    drawn red; write_heatmaps draws them side by side on one scale."""
    from PIL import Image

    from dce.gan.evaluate import detail_bands, write_heatmaps

    coarse, target, face = (x[0].numpy() for x in scene)
    mm = 100.0
    added, missing, valid = detail_bands(coarse, target, target, mm, PIXEL_MM)
    assert valid.sum() == face.sum()
    np.testing.assert_array_equal(added, missing)
    assert np.abs(missing[valid]).max() > 0.1  # 0.01 units x 100 mm, band-passed
    nothing, _, _ = detail_bands(coarse, coarse, target, mm, PIXEL_MM)
    assert np.abs(nothing).max() < 1e-9
    ys, xs = np.mgrid[:256, :256]
    crease = np.where(face, coarse + 0.004 * np.exp(-((xs - 128) ** 2 + (ys - 128) ** 2) / 18.0),
                      coarse).astype(np.float32)
    _, band, _ = detail_bands(coarse, coarse, crease, mm, PIXEL_MM)
    assert band[128, 128] > 0.1
    write_heatmaps([(coarse, coarse, crease, mm, PIXEL_MM)], tmp_path, vmax_band_mm=0.2)
    picture = np.asarray(Image.open(tmp_path / "detail_000.png"))
    left, right = picture[:, :260], picture[:, 260:]
    assert picture.shape == (260, 520, 3)
    assert (left[2:-2, 2:-2][face] == [90, 90, 90]).all()  # nothing added: grey
    red, green, blue = right[2 + 128, 2 + 128]
    assert red == 255 and green == 0 and blue == 0
