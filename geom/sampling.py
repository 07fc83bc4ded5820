"""Image sampling at fractional pixel positions: one bilinear sampler for
photos and textures (DCE colour channels, vertex colours of range scans)."""
from __future__ import annotations

import numpy as np


def sample_image_bilinear(image: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """(..., 3) float32 colours in [0, 1]: ``image`` (H, W, 3), uint8 in
    [0, 255] or float in [0, 1], sampled bilinearly at ``xy`` (..., 2) =
    (x column, y row) px, pixel centres at integers; points outside take the
    border's colour."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    elif image.dtype.kind == "f":
        image = image.astype(np.float32, copy=False)
    else:
        raise ValueError(f"sample_image_bilinear: image must be uint8 or float, got {image.dtype}")
    H, W = image.shape[:2]
    xy = np.asarray(xy, dtype=np.float64)
    x = np.clip(xy[..., 0], 0, W - 1)
    y = np.clip(xy[..., 1], 0, H - 1)
    # The last row/column starts no cell of its own: a point on it is the
    # far edge (weight 1) of the cell before.
    x0 = np.minimum(np.floor(x).astype(np.int64), max(W - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(H - 2, 0))
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)
