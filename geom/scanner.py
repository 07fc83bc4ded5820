"""The synthetic world's scanner: one raw range scan and its photo rendered
from the ground truth (:func:`render_scan`).

See docs/synthetic-world.md (scanner frame, defects, photo, landmarks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .face_anatomy import (
    LANDMARK_UV,
    _brow_line,
    _g,
    _lid_curves,
    _lip_line,
    _pair,
    _step,
    eye_opening,
)
from .projection import FRONTAL, OrthographicCamera
from .raster import rasterize
from .synthetic_world import FaceWorld, Identity, ScanPlan, WorldSettings, ground_truth_surface


def scanner_camera(settings: WorldSettings) -> OrthographicCamera:
    """The scanner's orthographic camera: scanner frame (+Y up, +Z toward the
    scanner) -> photo/grid pixels, X = Y = 0 at the image centre."""
    H, W = settings.image_size
    return OrthographicCamera(settings.scanner_scale, FRONTAL,
                              np.array([(W - 1) / 2.0, (H - 1) / 2.0]))


def _transform(P: np.ndarray, R: np.ndarray, t) -> np.ndarray:
    """P (..., 3) @ R.T + t, elementwise (no BLAS, see
    :func:`dce.geom.synthetic_world._combine`)."""
    return P[..., 0, None] * R[:, 0] + P[..., 1, None] * R[:, 1] + P[..., 2, None] * R[:, 2] + t


# ------------------------------------------------------------------ scans and photos

@dataclass
class SyntheticScan:
    """One rendered scan (image grid H x W, scanner frame, mm).

    ``xyz`` (H, W, 3) with noise and spikes (NaN where invalid), ``valid``
    (H, W), ``clean_z`` (H, W) the noiseless depth Z of the ground truth
    wherever it is hit (NaN elsewhere), ``spikes`` (H, W) bool the outlier
    pixels, ``photo`` (H, W, 3) uint8, ``uv`` (H, W, 2) the face parameters
    seen at each pixel (NaN where nothing is hit), ``landmarks_3d`` (68, 3)
    the exact landmarks (scanner frame), ``landmarks_2d`` (68, 2) their pixel
    positions (x = column, y = row), ``camera`` the scanner camera."""

    xyz: np.ndarray
    valid: np.ndarray
    clean_z: np.ndarray
    spikes: np.ndarray
    photo: np.ndarray
    uv: np.ndarray
    landmarks_3d: np.ndarray
    landmarks_2d: np.ndarray
    camera: OrthographicCamera


def _grid_normals(P: np.ndarray) -> np.ndarray:
    """Unit normals (nv, nu, 3) of a grid surface, out of the face."""
    N = np.cross(np.gradient(P, axis=1), np.gradient(P, axis=0))
    return N / np.maximum(np.linalg.norm(N, axis=-1, keepdims=True), 1e-12)


def _hairline(u, hairline):
    """v (mm) of the hairline at u: receding a little at the sides, lower at
    the temples."""
    return hairline + 6.0 * np.square(u / 50.0) - 25.0 * _step((np.abs(u) - 80.0) / 5.0)


def _brow_weight(u, v):
    """Eyebrow hair coverage in [0, 1] around the brow arc."""
    return (_step((4.0 - np.abs(v - _brow_line(u) - 0.5)) / 1.0)
            * _step((64.0 - np.abs(u)) / 3.0) * _step((np.abs(u) - 9.0) / 1.5))


def _lip_weight(u, v):
    """Vermilion (red lip) coverage in [0, 1]."""
    upper = _step((v - _lip_line(u)) / 0.4) * _step((-30.0 - 1.2 * np.exp(-np.square(u / 5.0))
                                                      - v + 2.5 * np.square(u / 24.0)) / 0.6)
    lower = _step((_lip_line(u) - v) / 0.4) * _step((v + 47.5 - 6.0 * np.square(u / 24.0)) / 0.8)
    return (upper + lower) * _step((25.0 - np.abs(u)) / 1.0)


def _albedo(identity: Identity, u, v, rng: np.random.Generator) -> np.ndarray:
    """Reflectance (n, 3) in [0, 1] at face parameters u, v (n,)."""
    a = identity.appearance
    rgb = np.broadcast_to(a.skin, (len(u), 3)).copy()
    rgb += 0.07 * _pair(u, v, 45, -5, 14, 12)[:, None] * np.array([1.0, -0.4, -0.4])  # cheeks
    rgb += _lip_weight(u, v)[:, None] * (a.lips - rgb)
    brow = _brow_weight(u, v) * a.brow_density * rng.uniform(0.5, 1.0, len(u))
    rgb += brow[:, None] * (a.brows - rgb)
    hair = _step((v - _hairline(u, a.hairline)) / 0.8)
    rgb += hair[:, None] * (a.hair * rng.uniform(0.8, 1.2, (len(u), 1)) - rgb)
    # eyes: sclera, iris and pupil inside the openings, lashes along the upper lid
    open_ = eye_opening(u, v, softness=0.3)
    rgb += open_[:, None] * (np.array([0.85, 0.82, 0.78]) - rgb)
    for eye in (0, 1):
        c = LANDMARK_UV[36 + 6 * eye: 42 + 6 * eye].mean(axis=0)
        r = np.hypot(u - c[0], v - c[1])
        iris = open_ * _step((5.5 - r) / 0.3)
        rgb += iris[:, None] * (a.iris - rgb)
        rgb += (open_ * _step((2.2 - r) / 0.3))[:, None] * (0.03 - rgb)
        upper, _, lo, hi = _lid_curves(eye)
        lash = _g((v - upper(u)) / 0.6) * _step((u - lo) / 1.0) * _step((hi - u) / 1.0)
        rgb += (0.8 * lash)[:, None] * (0.05 - rgb)
    return np.clip(rgb, 0.0, 1.0)


def render_scan(world: FaceWorld, identity: Identity, plan: ScanPlan) -> SyntheticScan:
    """Render one raw scan and its photo (see the module docstring)."""
    s = world.settings
    H, W = s.image_size
    rng = np.random.default_rng(plan.noise_seed)
    R, T = plan.rotation, plan.translation
    P = _transform(ground_truth_surface(world, identity, plan.expression), R, T)  # scanner frame
    nv, nu = P.shape[:2]
    lm = P[world.landmark_fine_rc[:, 0], world.landmark_fine_rc[:, 1]]
    camera = scanner_camera(s)
    attrs = np.empty((nv, nu, 5), np.float32)
    attrs[..., 0] = world.fine_u[None, :]
    attrs[..., 1] = world.fine_v[:, None]
    attrs[..., 2:] = _grid_normals(P)
    Q = _transform(P.reshape(-1, 3), camera.rotation, 0.0)  # camera.project, without BLAS
    Q[:, :2] = camera.scale * Q[:, :2] + camera.translation
    image, hit, depth = rasterize(Q, world.fine_faces, attrs.reshape(-1, 5), H, W,
                                  return_depth=True)
    uv = np.where(hit[..., None], image[..., :2].astype(np.float64), np.nan)
    normal = image[..., 2:].astype(np.float64)
    normal /= np.maximum(np.linalg.norm(normal, axis=-1, keepdims=True), 1e-12)

    # the scanner: points on the pixel grid at the ground truth's depth
    rows, cols = np.mgrid[0:H, 0:W].astype(np.float64)
    clean_z = np.where(hit, -depth, np.nan)
    xyz = np.stack([(cols - camera.translation[0]) / s.scanner_scale,
                    -(rows - camera.translation[1]) / s.scanner_scale, clean_z], axis=-1)
    pu, pv = uv[hit, 0], uv[hit, 1]
    a = identity.appearance
    lost = ((normal[hit, 2] < 0.12)                                   # grazing angle
            | (eye_opening(pu, pv, shrink=0.5, softness=1e-3) > 0.5)  # eyes
            | (rng.uniform(size=len(pu)) < 0.7 * a.brow_density * _brow_weight(pu, pv))
            | (pv > _hairline(pu, a.hairline)))                        # hair
    valid = hit.copy()
    valid[hit] = ~lost
    n_valid = int(valid.sum())
    xyz[..., 2][valid] += rng.normal(0.0, s.sensor_noise, n_valid)
    # outliers: isolated spikes and a few small clusters, along the view ray
    spikes = np.zeros((H, W), bool)
    vi, vj = np.nonzero(valid)
    pick = rng.choice(n_valid, size=int(round(s.spike_fraction * n_valid)), replace=False)
    spikes[vi[pick], vj[pick]] = True
    offsets = np.zeros((H, W))
    offsets[vi[pick], vj[pick]] = (rng.choice([-1.0, 1.0], len(pick))
                                   * rng.uniform(6, 30, len(pick)))
    for k in rng.choice(n_valid, size=3, replace=False):
        size = int(rng.integers(2, 5))
        i0, j0 = vi[k], vj[k]
        block = (slice(i0, i0 + size), slice(j0, j0 + size))
        jump = np.clip(rng.uniform(6, 30) + rng.normal(0, 0.5, valid[block].shape), 6, 30)
        spikes[block] |= valid[block]
        offsets[block] = np.where(valid[block], rng.choice([-1.0, 1.0]) * jump, offsets[block])
    xyz[..., 2] += offsets
    xyz[~valid] = np.nan

    # the photo: albedo x Lambert shading, plus sensor noise
    photo = np.empty((H, W, 3))
    photo[:] = (0.35 + 0.15 * rows / H)[..., None] * np.array([0.85, 0.9, 1.0])
    shade = 0.3 + 0.7 * np.clip((normal[hit] * plan.light).sum(axis=1), 0.0, None)
    photo[hit] = _albedo(identity, pu, pv, rng) * shade[:, None]
    photo += rng.normal(0.0, 0.012, photo.shape)
    photo = (np.clip(photo, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    return SyntheticScan(xyz=xyz, valid=valid, clean_z=clean_z, spikes=spikes, photo=photo,
                         uv=uv, landmarks_3d=lm, landmarks_2d=camera.project(lm)[:, :2],
                         camera=camera)


