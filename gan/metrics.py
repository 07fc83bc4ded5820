"""Surface-quality metrics of refined depth images beyond the MAE of Eq. 4:
the normal error (:func:`normal_error_deg`), the correlation of added and
wanted detail (:func:`detail_corr`) and face regions by landmarks
(:func:`face_regions`). Depth images are (N, H, W) in [-1, 1], background -1.

See docs/evaluation.md (units, the detail band, the masked filters).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .h5format import FOREGROUND_ABOVE

# A difference of Gaussians of sigma 1 mm and 5 mm keeps creases and folds
# 1-5 mm wide (forehead lines, lids, lips, nasolabial folds) and drops both
# the face's shape (nose, cheeks: > 5 mm) and sensor noise and pores (< 1 mm).
DETAIL_BAND_MM = (1.0, 5.0)

# Fewer surface pixels than this make a correlation meaningless.
MIN_CORR_PIXELS = 16


def _per_image(value, like: torch.Tensor) -> torch.Tensor:
    """A scalar or (N,) value as an (N or 1, 1, 1) tensor on ``like``'s device
    and dtype, to broadcast against (N, H, W) images."""
    return torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)


def _length(vectors: torch.Tensor) -> torch.Tensor:
    """Euclidean length (N, H, W) of (N, 3, H, W) vector fields. Summed by
    hand: torch's ``norm(dim=1)`` takes a slow strided path on the CPU, 50x
    slower here (67 ms against 1.3 ms for 8 images of 256 px)."""
    return (vectors * vectors).sum(dim=1).sqrt()


def depth_normals(depth_mm: torch.Tensor, pixel_mm, valid: torch.Tensor):
    """Unit surface normals of depth fields by central differences.

    ``depth_mm`` (N, H, W) is depth in mm, ``pixel_mm`` the pixel size in mm
    (scalar or (N,)), ``valid`` (N, H, W) bool the pixels that belong to the
    surface. Returns ``(normals, ok)``: normals (N, 3, H, W) proportional to
    (-dz/dx, -dz/dy, 1), x along columns and y along rows, both in mm; ok
    (N, H, W) bool, true only where the pixel and its 4 neighbours are valid,
    so no difference straddles the silhouette or a hole (the image border is
    never ok). The normals elsewhere are finite but meaningless.
    """
    z = F.pad(depth_mm[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    step = 2 * _per_image(pixel_mm, depth_mm)
    dzdx = (z[:, 1:-1, 2:] - z[:, 1:-1, :-2]) / step
    dzdy = (z[:, 2:, 1:-1] - z[:, :-2, 1:-1]) / step
    normals = torch.stack([-dzdx, -dzdy, torch.ones_like(dzdx)], dim=1)
    normals = normals / _length(normals)[:, None]
    v = F.pad(valid, (1, 1, 1, 1), value=False)
    ok = (valid & v[:, 1:-1, 2:] & v[:, 1:-1, :-2] & v[:, 2:, 1:-1] & v[:, :-2, 1:-1])
    return normals, ok


def normal_error_deg(prediction: torch.Tensor, target: torch.Tensor, mm_per_unit,
                     pixel_mm, face: torch.Tensor) -> torch.Tensor:
    """Mean angle in degrees (N,) between the normals of ``prediction`` and
    ``target`` (N, H, W) depth images in [-1, 1] units.

    ``mm_per_unit`` (N,) is each image's depth scale (its magnitude is used:
    the angle between two surfaces does not change when both are flipped),
    ``pixel_mm`` (N,) the pixel size in mm, ``face`` (N, H, W) bool the
    target's face pixels. The mean runs over the face pixels where both
    normals are ok (:func:`depth_normals`), the prediction's surface being
    its own foreground within the face. An image with no such pixel gives
    NaN; average over images with ``nanmean``.
    """
    scale = _per_image(mm_per_unit, target).abs()
    n_pred, ok_pred = depth_normals(prediction * scale, pixel_mm,
                                    face & (prediction >= FOREGROUND_ABOVE))
    n_target, ok_target = depth_normals(target * scale, pixel_mm, face)
    # For unit vectors, 2 atan2(|a - b|, |a + b|) is as accurate at small angles
    # as atan2(|a x b|, a . b) (acos(a . b) is not) and exactly 0 for a == b.
    angle = torch.rad2deg(2 * torch.atan2(_length(n_pred - n_target), _length(n_pred + n_target)))
    inside = ok_pred & ok_target
    # 0 / 0 = NaN for images without a usable pixel, on purpose.
    return (angle * inside).sum(dim=(1, 2)) / inside.sum(dim=(1, 2))


def _blur_matrices(sigma_px: torch.Tensor, size: int, like: torch.Tensor) -> torch.Tensor:
    """(N, size, size) banded matrices M with (M @ v) = v convolved with a
    1-D Gaussian of sigma ``sigma_px[n]`` (N,), radius ceil(3 sigma) (scipy's
    truncate=3), zero padding: a separable blur as two batched matrix
    products, so each image can have its own sigma at the cost of one call."""
    if not bool((sigma_px > 0).all()):
        raise ValueError(f"sigma_px must be positive, got {sigma_px.tolist()}")
    sigma = sigma_px.to(torch.float64).reshape(-1, 1, 1)
    radius = torch.ceil(3 * sigma)
    t = torch.arange(size, dtype=torch.float64)
    d = t[:, None] - t[None, :]
    kernel = torch.exp(-0.5 * (d / sigma) ** 2) * (d.abs() <= radius)
    taps = torch.arange(-int(radius.max()), int(radius.max()) + 1, dtype=torch.float64)
    total = (torch.exp(-0.5 * (taps / sigma) ** 2) * (taps.abs() <= radius)).sum(-1, keepdim=True)
    return (kernel / total).to(dtype=like.dtype, device=like.device)


def gaussian_blur_masked(x: torch.Tensor, valid: torch.Tensor, sigma_px) -> torch.Tensor:
    """Gaussian blur (N, H, W) of ``x`` (N, H, W) over the ``valid`` (N, H, W)
    bool pixels only: the normalized convolution blur(x * valid) /
    blur(valid), separable, with radius ceil(3 sigma) and zero padding. So the
    background, holes and the image border do not pull the values; a
    constant stays constant. 0 where blur(valid) < 1e-6 (no valid pixel
    within reach). ``sigma_px``: one sigma in pixels, or (N,) one per image."""
    n, H, W = x.shape
    sigma = torch.as_tensor(sigma_px, dtype=torch.float64).reshape(-1).expand(n)
    rows, cols = _blur_matrices(sigma, H, x), _blur_matrices(sigma, W, x)
    w = valid.to(x.dtype)
    stack = torch.stack([x * w, w], dim=1)  # (N, 2, H, W)
    stack = rows[:, None] @ stack @ cols[:, None].transpose(-1, -2)
    num, den = stack.unbind(1)
    reached = den >= 1e-6
    return torch.where(reached, num / torch.where(reached, den, 1.0), 0.0)


def band_pass(x: torch.Tensor, valid: torch.Tensor, sigma_fine_px,
              sigma_coarse_px) -> torch.Tensor:
    """Difference of masked Gaussians (N, H, W) of ``x`` (N, H, W):
    blur(sigma_fine) - blur(sigma_coarse) over the ``valid`` (N, H, W) bool
    pixels, 0 outside them; each sigma one value or (N,) per image. It removes constants (up to rounding) and affine
    functions away from the edges of ``valid``."""
    out = (gaussian_blur_masked(x, valid, sigma_fine_px)
           - gaussian_blur_masked(x, valid, sigma_coarse_px))
    return torch.where(valid, out, 0.0)


def detail_band_px(pixel_mm, fine_mm: float = DETAIL_BAND_MM[0],
                   coarse_mm: float = DETAIL_BAND_MM[1]):
    """(sigma_fine_px, sigma_coarse_px) floats of the detail band for a pixel
    size in mm (a scalar, or a tensor whose mean is used)."""
    pixel = float(torch.as_tensor(pixel_mm, dtype=torch.float64).mean())
    return fine_mm / pixel, coarse_mm / pixel


def detail_fields(refined: torch.Tensor, coarse: torch.Tensor, target: torch.Tensor,
                  face: torch.Tensor, pixel_mm, band_mm=DETAIL_BAND_MM) -> tuple:
    """(bands (2, N, H, W), valid (N, H, W)): the added detail BP(refined -
    coarse) and the missing detail BP(target - coarse), in the images' units,
    over ``valid``, the ``face`` pixels that are also foreground in coarse and
    refined; the fields :func:`detail_corr` correlates (arguments as there)."""
    valid = face & (coarse >= FOREGROUND_ABOVE) & (refined >= FOREGROUND_ABOVE)
    n = len(refined)
    pixels = torch.as_tensor(pixel_mm, dtype=torch.float64).reshape(-1).expand(n).repeat(2)
    fields = torch.cat([refined - coarse, target - coarse])  # (2N, H, W): added, missing
    bands = band_pass(fields, valid.repeat(2, 1, 1), band_mm[0] / pixels,
                      band_mm[1] / pixels).unflatten(0, (2, n))
    return bands, valid


def detail_corr(refined: torch.Tensor, coarse: torch.Tensor, target: torch.Tensor,
                face: torch.Tensor, pixel_mm, band_mm=DETAIL_BAND_MM) -> torch.Tensor:
    """Per-image Pearson correlation (N,) of the added detail
    BP(refined - coarse) with the missing detail BP(target - coarse).

    ``refined``, ``coarse``, ``target`` (N, H, W) are depth images in [-1, 1]
    units (a correlation has none), ``face`` (N, H, W) bool the target's face
    pixels, ``pixel_mm`` (N,) or a scalar the pixel size in mm. BP is
    :func:`band_pass` with sigmas ``band_mm`` / pixel_mm of each image, over
    the face pixels that are also foreground in coarse and refined, and the
    correlation runs over the same pixels. 1: the generator added exactly the
    missing detail (up to scale), 0: unrelated detail, -1: inverted.

    Defined values: an image whose added band is flat (zero variance up to
    rounding, e.g. refined == coarse) scores 0, so the coarse row is 0 by definition; an
    image whose target band is flat or that has fewer than 16 such pixels
    scores NaN (average over images with ``nanmean``).
    """
    bands, valid = detail_fields(refined, coarse, target, face, pixel_mm, band_mm)
    # float64 for the sums over ~1e5 pixels.
    bands, w = bands.double(), valid.double()
    count = w.sum(dim=(1, 2))
    mean = (bands * w).sum(dim=(2, 3)) / count.clamp(min=1)
    centred = (bands - mean[..., None, None]) * w
    var = (centred ** 2).sum(dim=(2, 3))  # (2, N)
    cov = (centred[0] * centred[1]).sum(dim=(1, 2))
    corr = (cov / (var[0] * var[1]).sqrt()).clamp(-1.0, 1.0)
    # A band is flat when it is rounding noise of the [-1, 1] images: a
    # constant field filters to a few float eps rather than exactly 0.
    flat = (var / count.clamp(min=1)).sqrt() <= 32 * torch.finfo(refined.dtype).eps
    corr = torch.where(flat[0], 0.0, corr)
    corr = torch.where(flat[1] | (count < MIN_CORR_PIXELS), float("nan"), corr)
    return corr.to(refined.dtype)


# ------------------------------------------------------------------ face regions

FACE_REGIONS = ("forehead", "eyes", "nose", "cheeks", "mouth", "chin")

# Polygons over iBUG-68 landmarks (0-based: jaw 0-16, brows 17-26, nose
# 27-35, eyes 36-47, lips 48-67), each in drawing order.
_EYES = ((17, 18, 19, 20, 21, 27, 39, 40, 41, 36),  # brow to lower lid, inner
         (22, 23, 24, 25, 26, 45, 46, 47, 42, 27))  # canthus to nasal root
_NOSE = (27, 42, 35, 34, 33, 32, 31, 39)
_MOUTH = tuple(range(48, 60))
_CHIN = (48, 59, 58, 57, 56, 55, 54, 11, 10, 9, 8, 7, 6, 5)
_FACE = tuple(range(17)) + tuple(range(26, 16, -1))  # jaw, then brows back
_BROWS = (17, 18, 19, 20, 21, 27, 22, 23, 24, 25, 26)  # with the glabella


def _inside(polygon: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """(N, H, W) bool: pixel centres (x = column, y = row) inside the
    polygons (N, K, 2), by the even-odd rule."""
    y = torch.arange(H, dtype=polygon.dtype, device=polygon.device)[:, None]
    x = torch.arange(W, dtype=polygon.dtype, device=polygon.device)[None, :]
    inside = torch.zeros((len(polygon), H, W), dtype=torch.bool, device=polygon.device)
    for a, b in zip(polygon.unbind(1), polygon.roll(-1, dims=1).unbind(1)):
        ax, ay, bx, by = (v[:, None, None] for v in (a[:, 0], a[:, 1], b[:, 0], b[:, 1]))
        # A rightward ray from the pixel crosses edge ab (horizontal edges never do).
        straddles = (ay > y) != (by > y)
        inside ^= straddles & (x < ax + (y - ay) * (bx - ax) / (by - ay))
    return inside


def face_regions(landmarks_px: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Masks (N, 6, H, W) bool of the regions ``FACE_REGIONS`` (forehead,
    eyes, nose, cheeks, mouth, chin) from iBUG-68 landmarks (N, 68, 2) or
    (68, 2) (then N = 1) in pixels, x = column, y = row.

    Polygons through the landmarks: eyes = each brow down to its lower lid
    and in to the nasal root (27), so lids and crow's feet start inside;
    nose = nasal root, inner eye corners and the nostrils' base (27, 39, 42,
    31-35); mouth = the outer lip contour (48-59); chin = lower lip to the
    jaw between 5 and 11; forehead = the brows with the glabella (down to 27)
    extended up, away from the chin (8 -> 27), by the nose's length (27 ->
    33); cheeks = the rest of the face polygon (jaw 0-16 closed by the
    brows), which includes the nasolabial folds and the temples below the
    brows. Overlaps go to the first of eyes, nose, mouth, chin, forehead, so
    the regions are disjoint. They ignore the silhouette: intersect them
    with the face mask.
    """
    L = torch.as_tensor(landmarks_px, dtype=torch.float64).reshape(-1, 68, 2)

    def region(*polygons):
        return torch.stack([_inside(L[:, list(p)], H, W) for p in polygons]).any(0)

    up = L[:, 27] - L[:, 8]
    rise = up / up.norm(dim=1, keepdim=True) * (L[:, 33] - L[:, 27]).norm(dim=1, keepdim=True)
    top = L[:, 17:27].flip(1) + rise[:, None]
    forehead = _inside(torch.cat([L[:, list(_BROWS)], top], dim=1), H, W)
    taken = torch.zeros_like(forehead)
    masks = {}
    for name, mask in (("eyes", region(*_EYES)), ("nose", region(_NOSE)),
                       ("mouth", region(_MOUTH)), ("chin", region(_CHIN)),
                       ("forehead", forehead), ("cheeks", region(_FACE))):
        masks[name] = mask & ~taken
        taken |= mask
    return torch.stack([masks[name] for name in FACE_REGIONS], dim=1)
