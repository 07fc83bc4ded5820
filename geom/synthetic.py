"""The built-in synthetic face world: a population of faces written as raw
FRGC-style scans, with the world's own linear 3DMM and coarse fits, so the
whole pipeline runs and is tested with no licensed data. Everything is a
continuous function of the face parameters and is drawn from one seed.

Face surface
------------
Model frame: mm, +Y up, the face looks toward +Z, +X = the subject's left;
the head's vertical axis is the Y axis and the nose tip lies near
(0, 0, 100). A face is a radial height field over a cylinder: the parameter
point (u, v) (mm) has the angle theta = u / HEAD_RADIUS about the Y axis and
the height y = v, and its surface point is::

    P(u, v) = r(u, v) * (sin theta, 0, cos theta) + (0, v, 0)  (+ tangential shifts)

so near the front u is about x and v is y, and the sides of the face (u in
[-125, 125], theta within +-89.5 deg) are sampled as well as the front (a
plane height field would make them walls). v runs from -110 (under the chin)
to 115 (the hairline); the nose tip is at (u, v) = (0, 0).

- **Mean face** (:func:`mean_surface`): a superellipse head section whose
  half-width and front depth are smooth profiles over v, blended into a neck
  below the jaw line, plus smooth radial features: nose (dorsum, tip, alae),
  eye sockets, globes and lid margins, brow ridge, glabella, cheekbones,
  temples, dental arch, lips and mouth line, mentolabial sulcus, chin.
- **Identity** (:data:`IDENTITY_FACTORS`): 17 smooth 3D displacement fields,
  each one standard deviation of a factor of the population (face width,
  height, depth, lower-face length, jaw width, nose projection, width and
  length, eye depth and spacing, brow ridge, cheekbones, cheek fullness, lip
  fullness, chin, forehead slope, mouth width). Sampled on the coarse grid
  they are orthonormalized by PCA and scaled to one sigma
  (:func:`build_world`): the exported model has unit-variance coefficients
  c ~ N(0, I), and the raw weights ``mixing @ c`` of the continuous fields
  give the same identity at any resolution.
- **Expressions** (:data:`EXPRESSIONS`): blendshapes, weights in [0, 1]:
  smile, brow_raise, squint, lips_pressed, frown. The mouth stays closed (an
  open mouth is no height field).
- **Detail** (:func:`detail_field`, ground truth only, radial): nostrils and
  alar creases, the mouth slit and vertical lip creases, upper-eyelid
  creases, nasolabial folds, forehead wrinkles, glabellar frown lines and
  crow's feet. Their count and depth vary by identity (with a random age),
  and some with the expression (forehead lines with brow_raise, crow's feet
  with smile and squint, nasolabial folds with smile, frown lines with
  frown); their places follow the landmarks and the anatomy, so they are
  predictable from the coarse shape. Pores are band-limited noise (std
  0.05-0.1 mm, wavelengths 1.2-4 mm), random per identity, so they are not.

The world model samples the smooth functions on a 2.5 mm (u, v) grid (9191
vertices, 18000 triangles); the ground truth samples smooth shape + detail on
a 0.5 mm grid that contains the coarse nodes. The 68 iBUG landmarks
(:data:`LANDMARK_UV`) are snapped to coarse nodes, so the model's landmark
vertex and the ground truth's landmark are the same material point.

Scans (:func:`render_scan`)
---------------------------
Scanner frame (the ``.abs`` xyz and the manifest's 3D landmarks), FRGC-like:
mm, +Y up, +Z toward the scanner, which sits at the origin; +X is then the
subject's left. The head is turned by a random yaw (+-10 deg), pitch (+-5)
and roll (+-2) about its model origin and put about 1.1 m away:
``X_scan = R_pose @ X_model + T``. The scanner is orthographic: the camera
``scanner_camera`` (rotation ``FRONTAL``, 1.5 px/mm, X = Y = 0 at the image
centre); pixel (row i, column j) holds ``X = (j - (W-1)/2) / scale``,
``Y = -(i - (H-1)/2) / scale`` and the Z of the nearest ground-truth surface
(z-buffer of the 0.5 mm mesh). Then invalid pixels where nothing is hit, at
grazing angles (normal more than 83 deg from the view ray), inside the eye
openings, in part of the brows (hair) and above the hairline; Gaussian
sensor noise along the view ray (Z, 0.07 mm); outlier spikes (0.2% of the
valid pixels, singly, and three small clusters, +-6..30 mm in Z). The photo
(``.ppm``, the same 480 x 640 grid, pixel-aligned as in FRGC): skin albedo
per identity, darker brows, red lips, eyes, hair, Lambert shading, noise.
The ``.pts`` landmarks are the scanner-camera projections of the exact 3D
landmarks (x = column, y = row, 0-based pixel centres; 300-W files count
from 1). The coarse counterpart is :func:`dce.geom.morphable.fit_to_landmarks`
of the world model (all identity and expression modes, regularization
sigma^2) to those landmarks plus 2 px Gaussian noise: never a smoothing of
the ground truth.

Files (:func:`generate_world`)
------------------------------
``world_model.npz`` (:meth:`MorphableModel.save`); per scan, with the FRGC
stem ``<5-digit subject>d<shot>``: ``scans/<stem>.abs.gz`` (``.abs`` with
``compress=False``), ``.ppm``, ``.pts``, ``coarse/<stem>.ply`` (the fitted
mesh, model frame) and ``coarse/<stem>.camera.json``
(:meth:`OrthographicCamera.to_dict`: model frame -> photo pixels), and last
``scans/<stem>.json``, the scan's record: a scan whose record and files exist
(for the same seed and settings) is complete and kept on a rerun. Last of
all ``world.json``, the manifest (:func:`load_world`). Every file is written
to a temporary name and renamed. The same seed and settings give
byte-identical files, whatever the number of worker processes.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np

from .face_anatomy import (EXPRESSION_NAMES, EXPRESSIONS, IDENTITY_FACTORS, LANDMARK_UV,
                           U_MAX, V_MAX, V_MIN, _brow_line, _g, _lid_curves, _lip_line, _pair,
                           _radial, _step, expression_fields, eye_opening, identity_fields,
                           mean_surface)
from .face_detail import Detail, detail_field, draw_detail
from .io import (Landmarks, Mesh, RangeScan, load_mesh, read_abs, save_mesh, write_abs,
                 write_landmarks)
from .morphable import MorphableModel, fit_to_landmarks
from .projection import FRONTAL, OrthographicCamera, rotation_from_euler
from .raster import rasterize

PathLike = Union[str, os.PathLike]

FORMAT = "dce-synthetic-world/1"


# ------------------------------------------------------------------ the world model

@dataclass(frozen=True)
class WorldSettings:
    """Sizes and sensor parameters of a world (lengths mm).

    ``coarse_spacing``: (u, v) step of the world model's grid;
    ``fine_spacing``: step of the ground-truth grid (must divide the coarse
    one); ``image_size``: (rows, columns) of scans and photos (FRGC: 480 x
    640); ``scanner_scale``: px per mm; ``distance``: scanner to head centre;
    ``max_yaw``/``max_pitch``/``max_roll``: pose ranges, degrees;
    ``sensor_noise``: sigma along the view ray; ``spike_fraction``: share of
    valid pixels made outliers; ``landmark_noise_px``: sigma of the 2D
    landmarks given to the coarse fit; ``compress``: ``.abs.gz`` instead of
    ``.abs``.
    """

    coarse_spacing: float = 2.5
    fine_spacing: float = 0.5
    image_size: tuple = (480, 640)
    scanner_scale: float = 1.5
    distance: float = 1100.0
    max_yaw: float = 10.0
    max_pitch: float = 5.0
    max_roll: float = 2.0
    sensor_noise: float = 0.07
    spike_fraction: float = 0.002
    landmark_noise_px: float = 2.0
    compress: bool = True

    def __post_init__(self):
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        for name in ("coarse_spacing", "fine_spacing", "scanner_scale", "distance"):
            if not getattr(self, name) > 0:
                raise ValueError(f"WorldSettings.{name} must be > 0, got {getattr(self, name)}")
        for name, extent in (("coarse_spacing", 2 * U_MAX), ("coarse_spacing", V_MAX - V_MIN)):
            n = extent / self.coarse_spacing
            if abs(n - round(n)) > 1e-9:
                raise ValueError(f"WorldSettings.coarse_spacing={self.coarse_spacing} must divide "
                                 f"the domain's {extent} mm")
        ratio = self.coarse_spacing / self.fine_spacing
        if abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(f"WorldSettings.fine_spacing={self.fine_spacing} must divide "
                             f"coarse_spacing={self.coarse_spacing}")
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            raise ValueError(f"WorldSettings.image_size must be (rows, columns) >= 16, "
                             f"got {self.image_size}")

    @property
    def ratio(self) -> int:
        """Fine grid steps per coarse grid step."""
        return int(round(self.coarse_spacing / self.fine_spacing))


def param_axes(spacing: float):
    """The (u (nu,), v (nv,)) axes of the parameter grid with step ``spacing``."""
    nu = int(round(2 * U_MAX / spacing)) + 1
    nv = int(round((V_MAX - V_MIN) / spacing)) + 1
    return -U_MAX + spacing * np.arange(nu), V_MIN + spacing * np.arange(nv)


def grid_faces(nv: int, nu: int) -> np.ndarray:
    """Triangles (2 (nv-1) (nu-1), 3) int32 of a parameter grid whose vertex
    (row j of v, column i of u) is j * nu + i; counter-clockwise in (u, v),
    so their normals point out of the face."""
    idx = np.arange(nv * nu, dtype=np.int32).reshape(nv, nu)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    return np.concatenate([np.column_stack([a, b, c]), np.column_stack([a, c, d])])


@dataclass
class FaceWorld:
    """The world's fixed parts (no randomness): its morphable ``model``
    (coarse grid, row-major over (v, u)), ``mixing`` (J, K) taking unit
    identity coefficients c to the raw factor weights ``mixing @ c`` of
    :data:`IDENTITY_FACTORS`, the snapped ``landmark_uv`` (68, 2) and the
    landmarks' (row, column) nodes of the fine grid, ``landmark_fine_rc``
    (68, 2). With ``fine``: the fine axes, faces
    and the mean (nv, nu, 3), raw identity fields (J, nv, nu, 3) and
    expression fields (E, nv, nu, 3) sampled there (float32 fields)."""

    settings: WorldSettings
    model: MorphableModel
    mixing: np.ndarray
    landmark_uv: np.ndarray
    landmark_fine_rc: np.ndarray
    fine_u: Optional[np.ndarray] = None
    fine_v: Optional[np.ndarray] = None
    fine_faces: Optional[np.ndarray] = None
    fine_mean: Optional[np.ndarray] = None
    fine_identity: Optional[np.ndarray] = None
    fine_expression: Optional[np.ndarray] = None


def build_world(settings: Optional[WorldSettings] = None, fine: bool = True) -> FaceWorld:
    """The world model and, with ``fine``, the fields on the ground-truth grid.

    The raw identity fields sampled on the coarse grid, G (J, 3n), are
    orthonormalized by PCA: G = U S V^T, identity mode k = S_k V_k (one
    sigma: raw weights a ~ N(0, I) give the displacement G^T a = V S (U^T a)
    with U^T a ~ N(0, I)), and ``mixing`` = U. U and S^2 come from the
    eigen-decomposition of the small Gram matrix G G^T and the modes are
    U^T G, products taken without BLAS so that the model is the same to the
    last bit whatever the number of BLAS threads. Each mode's sign is fixed
    so that its largest component is positive.
    """
    settings = settings or WorldSettings()
    u, v = param_axes(settings.coarse_spacing)
    U, V = u[None, :], v[:, None]
    P0 = mean_surface(U, V)
    G = identity_fields(U, V, P0).reshape(len(IDENTITY_FACTORS), -1)
    variance, Um = np.linalg.eigh(np.einsum("ik,jk->ij", G, G))
    Um = Um[:, ::-1]  # by decreasing variance
    modes = np.einsum("ji,jk->ik", Um, G)
    flip = np.sign(modes[np.arange(len(modes)), np.abs(modes).argmax(axis=1)])
    Um, modes = Um * flip, modes * flip[:, None]
    n = P0.shape[0] * P0.shape[1]
    # landmarks on the nearest coarse node
    ci = np.rint((LANDMARK_UV[:, 0] - u[0]) / settings.coarse_spacing).astype(int)
    cj = np.rint((LANDMARK_UV[:, 1] - v[0]) / settings.coarse_spacing).astype(int)
    model = MorphableModel(
        mean=P0.reshape(n, 3), identity_basis=modes.reshape(-1, n, 3),
        faces=grid_faces(len(v), len(u)), landmarks_68=cj * len(u) + ci,
        expression_basis=expression_fields(U, V, P0).reshape(len(EXPRESSIONS), n, 3),
        expression_names=list(EXPRESSION_NAMES), expression_range=(0.0, 1.0),
        name="dce synthetic world")
    world = FaceWorld(settings, model, Um, np.column_stack([u[ci], v[cj]]),
                      np.column_stack([cj, ci]) * settings.ratio)
    if fine:
        fu, fv = param_axes(settings.fine_spacing)
        FU, FV = fu[None, :], fv[:, None]
        world.fine_u, world.fine_v = fu, fv
        world.fine_faces = grid_faces(len(fv), len(fu))
        world.fine_mean = mean_surface(FU, FV)
        world.fine_identity = identity_fields(FU, FV, world.fine_mean).astype(np.float32)
        world.fine_expression = expression_fields(FU, FV, world.fine_mean).astype(np.float32)
    return world


# ------------------------------------------------------------------ identities and scans

SUBJECT_BASE = 1000  # subject ids 01000, 01001, ...


@dataclass
class Appearance:
    """Colours (RGB in [0, 1]) and hair of one identity: ``hairline`` v (mm)
    of the hairline at the midline, ``brow_density`` in [0, 1]."""

    skin: np.ndarray
    lips: np.ndarray
    brows: np.ndarray
    hair: np.ndarray
    iris: np.ndarray
    hairline: float
    brow_density: float


@dataclass
class Identity:
    """One person: ``index`` in the world, ``subject`` (5-digit FRGC-style id),
    unit-variance ``coefficients`` (K,) of the world model, ``detail`` and
    ``appearance``."""

    index: int
    subject: str
    coefficients: np.ndarray
    detail: Detail
    appearance: Appearance


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=tuple(key)))


def draw_identity(world: FaceWorld, seed: int, index: int) -> Identity:
    """Identity ``index`` of the world drawn from ``seed`` (independent of the
    other identities and of the order of drawing)."""
    rng = _rng(seed, 0, index)
    c = rng.standard_normal(world.model.n_identity)
    detail = draw_detail(rng)
    tone = rng.uniform()
    skin = (1 - tone) * np.array([0.88, 0.70, 0.60]) + tone * np.array([0.45, 0.30, 0.22])
    skin = np.clip(skin * rng.uniform(0.95, 1.05, 3), 0, 1)
    hair = np.array([[0.08, 0.06, 0.05], [0.25, 0.16, 0.09], [0.45, 0.32, 0.18],
                     [0.70, 0.58, 0.38]])[rng.integers(4)]
    appearance = Appearance(
        skin=skin, lips=np.clip(skin * np.array([0.95, 0.62, 0.62]) + [0.05, 0, 0], 0, 1),
        brows=hair * 0.8, hair=hair,
        iris=np.array([[0.30, 0.18, 0.08], [0.25, 0.35, 0.50],
                       [0.35, 0.38, 0.20]])[rng.integers(3)],
        hairline=float(rng.uniform(92, 108)), brow_density=float(rng.uniform(0.3, 0.9)))
    return Identity(index, f"{SUBJECT_BASE + index:05d}", c, detail, appearance)


@dataclass
class ScanPlan:
    """What one scan shows: ``shot`` number (1 = neutral), ``expression``
    weights (E,) and its name, head pose (degrees, and the translation
    (3,) mm into the scanner frame), light direction (3,) (scanner frame,
    toward the light) and the seed of the sensor noise."""

    shot: int
    expression: np.ndarray
    expression_name: str
    yaw: float
    pitch: float
    roll: float
    translation: np.ndarray
    light: np.ndarray
    noise_seed: int

    @property
    def rotation(self) -> np.ndarray:
        """R_pose (3, 3): X_scan = R_pose @ X_model + translation."""
        return rotation_from_euler(self.yaw, self.pitch, self.roll)


def draw_scan(world: FaceWorld, identity: Identity, seed: int, shot: int) -> ScanPlan:
    """Shot ``shot`` (1, 2, ...) of ``identity``: shot 1 is neutral, later
    shots show one expression at weight 0.6-1, cycling through
    :data:`EXPRESSION_NAMES` from a per-identity start."""
    s = world.settings
    rng = _rng(seed, 1, identity.index, shot)
    w = np.zeros(len(EXPRESSIONS))
    name = "neutral"
    if shot > 1:
        start = int(_rng(seed, 2, identity.index).integers(len(EXPRESSIONS)))
        e = (start + shot - 2) % len(EXPRESSIONS)
        w[e] = rng.uniform(0.6, 1.0)
        name = EXPRESSION_NAMES[e]
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(0.1, 0.6), 1.0])
    return ScanPlan(
        shot=shot, expression=w, expression_name=name,
        yaw=float(rng.uniform(-s.max_yaw, s.max_yaw)),
        pitch=float(rng.uniform(-s.max_pitch, s.max_pitch)),
        roll=float(rng.uniform(-s.max_roll, s.max_roll)),
        translation=np.array([rng.uniform(-10, 10), rng.uniform(-10, 10),
                              -s.distance + rng.uniform(-40, 40)]),
        light=light / np.linalg.norm(light), noise_seed=int(rng.integers(2 ** 31)))


def scanner_camera(settings: WorldSettings) -> OrthographicCamera:
    """The scanner's orthographic camera: scanner frame (+Y up, +Z toward the
    scanner) -> photo/grid pixels, X = Y = 0 at the image centre."""
    H, W = settings.image_size
    return OrthographicCamera(settings.scanner_scale, FRONTAL,
                              np.array([(W - 1) / 2.0, (H - 1) / 2.0]))


def _combine(base: np.ndarray, weights, fields: np.ndarray) -> np.ndarray:
    """base + sum_k weights[k] * fields[k] (float64), one field at a time:
    BLAS (tensordot) would round differently with another number of threads,
    and the files must not depend on it."""
    out = np.array(base, dtype=np.float64)
    for wk, fk in zip(np.asarray(weights, dtype=np.float64), fields):
        if wk != 0.0:
            out += fk * wk
    return out


def model_shape(model: MorphableModel, identity, expression=None) -> np.ndarray:
    """:meth:`MorphableModel.shape` (n, 3) computed without BLAS (the same
    bits whatever the number of BLAS threads)."""
    P = _combine(model.mean, identity, model.identity_basis)
    if expression is not None and model.expression_basis is not None:
        P = _combine(P, expression, model.expression_basis)
    return P


def _transform(P: np.ndarray, R: np.ndarray, t) -> np.ndarray:
    """P (..., 3) @ R.T + t, elementwise (no BLAS, see :func:`_combine`)."""
    return P[..., 0, None] * R[:, 0] + P[..., 1, None] * R[:, 1] + P[..., 2, None] * R[:, 2] + t


def ground_truth_surface(world: FaceWorld, identity: Identity, expression=None,
                         detail: bool = True) -> np.ndarray:
    """The ground-truth face (nv, nu, 3) mm in the model frame on the fine
    grid: world mean + identity + expression (+ ``detail``). Its coarse nodes
    ``[::ratio, ::ratio]`` without detail are the world model's shape for
    the same coefficients."""
    if world.fine_mean is None:
        raise ValueError("ground_truth_surface: the world was built with fine=False")
    w = np.zeros(len(EXPRESSIONS)) if expression is None else np.asarray(expression, float)
    P = _combine(world.fine_mean, world.mixing @ identity.coefficients, world.fine_identity)
    P = _combine(P, w, world.fine_expression)
    if detail:
        D = detail_field(identity.detail, w, world.fine_u, world.fine_v,
                         world.settings.fine_spacing)
        P = P + _radial(D, world.fine_u[None, :])
    return P


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


# ------------------------------------------------------------------ files

def _write_bytes(path: Path, data: bytes) -> None:
    """Write through a temporary file renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_range(path: Path, scan: RangeScan) -> None:
    """:func:`dce.geom.io.write_abs` through a temporary name renamed over
    ``path``. A gzip header holds the time of writing (bytes 4-7, MTIME, not
    covered by any checksum); it is set to 0, "no time", so that the same
    scan gives the same bytes."""
    tmp = path.with_name(f".{os.getpid()}.{os.urandom(4).hex()}.{path.name}")
    try:
        write_abs(tmp, scan)
        if path.name.lower().endswith(".gz"):
            with open(tmp, "r+b") as fh:
                if fh.read(2) == b"\x1f\x8b":
                    fh.seek(4)
                    fh.write(b"\0\0\0\0")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode("utf-8")


def _ppm_bytes(rgb: np.ndarray) -> bytes:
    """Binary PPM (P6) of an (H, W, 3) uint8 image."""
    H, W = rgb.shape[:2]
    return f"P6\n{W} {H}\n255\n".encode("ascii") + np.ascontiguousarray(rgb, np.uint8).tobytes()


def scan_stem(identity: Identity, shot: int) -> str:
    """FRGC-style file stem ``<5-digit subject>d<shot>``."""
    return f"{identity.subject}d{shot}"


def _scan_files(stem: str, settings: WorldSettings) -> dict:
    """Paths of one scan's files, relative to the world's folder."""
    return {"range": f"scans/{stem}.abs" + (".gz" if settings.compress else ""),
            "photo": f"scans/{stem}.ppm", "landmarks": f"scans/{stem}.pts",
            "coarse_mesh": f"coarse/{stem}.ply", "coarse_camera": f"coarse/{stem}.camera.json",
            "record": f"scans/{stem}.json"}


def _floats(a) -> list:
    return np.asarray(a, dtype=np.float64).tolist()


def world_key(seed: int, settings: WorldSettings) -> str:
    """What a scan's files depend on besides its stem: format, seed and
    settings (a rerun keeps a finished scan only when its key matches)."""
    return json.dumps([FORMAT, int(seed), asdict(settings)], sort_keys=True)


def make_scan(world: FaceWorld, out_dir: PathLike, seed: int, identity: Identity,
              shot: int) -> dict:
    """Render, fit and write one scan; returns its manifest record (also
    written, last, to ``scans/<stem>.json``)."""
    out = Path(out_dir)
    s = world.settings
    plan = draw_scan(world, identity, seed, shot)
    scan = render_scan(world, identity, plan)
    stem = scan_stem(identity, shot)
    files = _scan_files(stem, s)
    noisy = scan.landmarks_2d + _rng(seed, 3, identity.index, shot).normal(
        0.0, s.landmark_noise_px, (68, 2))
    fit = fit_to_landmarks(world.model, noisy, n_expression=None,
                           regularization=max(s.landmark_noise_px, 0.5) ** 2)
    _write_range(out / files["range"], RangeScan(scan.xyz, scan.valid))
    _write_bytes(out / files["photo"], _ppm_bytes(scan.photo))
    write_landmarks(out / files["landmarks"], Landmarks(scan.landmarks_2d))
    save_mesh(out / files["coarse_mesh"],
              Mesh(model_shape(world.model, fit.identity, fit.expression), world.model.faces))
    _write_bytes(out / files["coarse_camera"], _json_bytes(fit.camera.to_dict()))
    record = {
        "stem": stem, "subject": identity.subject, "shot": shot, "key": world_key(seed, s),
        "identity_index": identity.index, "identity": _floats(identity.coefficients),
        "expression": {"name": plan.expression_name, "weights": _floats(plan.expression)},
        "pose": {"yaw_deg": plan.yaw, "pitch_deg": plan.pitch, "roll_deg": plan.roll,
                 "rotation": _floats(plan.rotation), "translation_mm": _floats(plan.translation)},
        "files": files,
        "landmarks_3d": _floats(scan.landmarks_3d),
        "landmarks_2d": _floats(scan.landmarks_2d),
        "landmarks_2d_noisy": _floats(noisy),
        "fit": {"residual_px": fit.residual_px, "identity": _floats(fit.identity),
                "expression": _floats(fit.expression), "iterations": fit.iterations},
        "detail": identity.detail.summary(),
        "valid_pixels": int(scan.valid.sum()), "spike_pixels": int(scan.spikes.sum()),
    }
    _write_bytes(out / files["record"], _json_bytes(record))
    return record


def _finished(out: Path, stem: str, seed: int, settings: WorldSettings) -> Optional[dict]:
    """The record of a scan whose files are all written for this seed and
    these settings, else None."""
    files = _scan_files(stem, settings)
    if not all((out / f).is_file() for f in files.values()):
        return None
    try:
        record = json.loads((out / files["record"]).read_text())
    except (OSError, ValueError):
        return None
    ok = record.get("files") == files and record.get("key") == world_key(seed, settings)
    return record if ok else None


def make_identity(world: FaceWorld, out_dir: PathLike, seed: int, index: int,
                  shots: Sequence[int]) -> list:
    """Make the given shots of identity ``index``; records in shot order."""
    identity = draw_identity(world, seed, index)
    return [make_scan(world, out_dir, seed, identity, shot) for shot in shots]


_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                        "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}


@contextmanager
def _environment(values: dict):
    """Set environment variables for the duration of the block."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# One world per pool process, built by the pool's initializer.
_POOL_WORLD: Optional[FaceWorld] = None


def _pool_init(settings: WorldSettings) -> None:
    global _POOL_WORLD
    _POOL_WORLD = build_world(settings)


def _pool_task(args) -> list:
    return make_identity(_POOL_WORLD, *args)


def generate_world(out_dir: PathLike, identities: int = 60, seed: int = 0,
                   expressions_per_identity: int = 1, workers: Optional[int] = None,
                   settings: Optional[WorldSettings] = None, resume: bool = True) -> dict:
    """Write a synthetic world to ``out_dir`` and return its manifest.

    ``identities`` people, each scanned neutral (shot 1) and with
    ``expressions_per_identity`` expressions (shots 2, 3, ...; each shows
    one expression, cycling through :data:`EXPRESSION_NAMES`). ``workers``
    processes (None: all cores; 1: in this process) render identities in
    parallel. They are 'spawn' processes (fork is unsafe once Numba or BLAS
    threads exist), which import the caller's main module again: a script
    must call this under ``if __name__ == "__main__":``. Each builds the
    world once (about 1.5 s). ``resume``: scans whose record and files exist
    for this seed and these settings are kept, so a run that was cut off goes
    on where it stopped. Files: see the module docstring. Deterministic: the
    same seed, counts and settings give byte-identical files, whatever
    ``workers``. Defaults: 60 identities x 2 scans in about 40 s on 2 cores,
    about 1.8 MB per scan (a 0.9 MB photo).
    """
    settings = settings or WorldSettings()
    identities, seed = int(identities), int(seed)
    if identities < 1:
        raise ValueError(f"identities must be >= 1, got {identities}")
    if expressions_per_identity < 0:
        raise ValueError(f"expressions_per_identity must be >= 0, got {expressions_per_identity}")
    out = Path(out_dir)
    for sub in ("scans", "coarse"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    world = build_world(settings, fine=False)
    world.model.save(out / "world_model.npz")

    shots = list(range(1, 2 + int(expressions_per_identity)))
    records: dict = {}
    todo = []
    for index in range(identities):
        missing = []
        for shot in shots:
            stem = f"{SUBJECT_BASE + index:05d}d{shot}"
            done = _finished(out, stem, seed, settings) if resume else None
            if done is None:
                missing.append(shot)
            else:
                records[index, shot] = done
        if missing:
            todo.append((out, seed, index, missing))
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if todo:
        if workers <= 1 or len(todo) == 1:
            fine_world = build_world(settings)
            results = [make_identity(fine_world, *task) for task in todo]
        else:
            # One BLAS thread per worker: with one per core each, the workers'
            # BLAS threads spin against each other (a third more CPU time).
            # Spawned processes read the variables when they import numpy.
            with _environment(_ONE_THREAD):
                pool = multiprocessing.get_context("spawn").Pool(
                    min(workers, len(todo)), _pool_init, (settings,))
            with pool:
                results = pool.map(_pool_task, todo, chunksize=1)
        for (_, _, index, missing), recs in zip(todo, results):
            for shot, rec in zip(missing, recs):
                records[index, shot] = rec

    manifest = {
        "format": FORMAT, "version": 1, "seed": seed, "identities": identities,
        "expressions_per_identity": int(expressions_per_identity),
        "settings": asdict(settings), "model": "world_model.npz",
        "expression_names": list(EXPRESSION_NAMES),
        "identity_factors": [name for name, _ in IDENTITY_FACTORS],
        "scanner_camera": scanner_camera(settings).to_dict(),
        "frames": {
            "scan": "mm, +Y up, +Z toward the scanner (scanner at the origin); .abs xyz and "
                    "landmarks_3d",
            "model": "mm, +Y up, face toward +Z, +X = subject's left; world_model.npz and "
                     "coarse meshes; X_scan = pose.rotation @ X_model + pose.translation_mm",
            "pixels": "x = column, y = row, 0-based pixel centres; .pts, landmarks_2d, cameras"},
        "scans": [records[index, shot] for index in range(identities) for shot in shots],
    }
    data = _json_bytes(manifest)
    _write_bytes(out / "world.json", data)
    return json.loads(data)  # as load_world reads it (lists, not tuples)


def load_world(out_dir: PathLike) -> dict:
    """The manifest ``world.json`` of a world written by :func:`generate_world`."""
    path = Path(out_dir) / "world.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no world manifest (run generate_world first)") from None
    except ValueError as e:
        raise ValueError(f"{path}: not a valid manifest ({e})") from None
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    return manifest


def settings_of(manifest: dict) -> WorldSettings:
    """The :class:`WorldSettings` a manifest was written with."""
    return WorldSettings(**manifest["settings"])


# ------------------------------------------------------------------ previews

def _shaded_views(P: np.ndarray, faces: np.ndarray, camera: OrthographicCamera, size: int,
                  depth_range=None):
    """Depth-shaded and headlight-shaded (H, W) images in [0, 1] of a grid
    surface P (nv, nu, 3) (0 = background), and the depth range used."""
    Q = camera.project(P.reshape(-1, 3))
    image, hit, depth = rasterize(Q, faces, _grid_normals(P).reshape(-1, 3), size, size,
                                  return_depth=True)
    # cos^3: the headlight's contrast, raised so that sub-mm creases show
    head = np.clip(image @ camera.view_direction, 0.0, 1.0) ** 3
    if depth_range is None:
        depth_range = (depth[hit].min(), np.percentile(depth[hit], 75))
    lo, hi = depth_range
    shade = np.where(hit, 0.1 + 0.9 * np.clip((hi - depth) / (hi - lo), 0.0, 1.0) ** 1.5, 0.0)
    return shade, np.where(hit, head, 0.0), depth_range


def _scan_shading(scan: RangeScan) -> np.ndarray:
    """Headlight shading (H, W) in [0, 1] of a raw range grid (0 = invalid):
    the normal from the grid's finite differences against +Z."""
    X = np.where(scan.valid[..., None], scan.xyz, np.nan)
    N = np.cross(np.gradient(X, axis=1), -np.gradient(X, axis=0))
    N /= np.linalg.norm(N, axis=-1, keepdims=True)
    return np.nan_to_num(np.clip(N[..., 2], 0.0, 1.0))


def preview_world(out_dir: PathLike, n: int = 4, size: int = 512) -> list:
    """PNG renders of the first ``n`` identities of a world, every shot:
    ground truth (depth-shaded, headlight-shaded), the coarse fit (the same
    two, same camera and depth range) in the model frame, the raw scan
    (headlight shading of the .abs grid: holes, noise and spikes show) and the
    photo with its landmarks, cropped to the face. Written to
    ``out_dir/previews/<stem>.png`` and all rows to ``previews/world.png``;
    returns the paths."""
    from PIL import Image

    out = Path(out_dir)
    manifest = load_world(out)
    settings = settings_of(manifest)
    world = build_world(settings)
    # frontal, 200 mm across, centred between the brows and the chin
    camera = OrthographicCamera(size / 200.0, FRONTAL, np.array([(size - 1) / 2.0] * 2)
                                - size / 200.0 * np.array([0.0, 5.0]))
    (out / "previews").mkdir(exist_ok=True)
    rows, paths = [], []
    H, W = settings.image_size
    for record in manifest["scans"]:
        if record["identity_index"] >= n:
            continue
        identity = draw_identity(world, manifest["seed"], record["identity_index"])
        w = np.asarray(record["expression"]["weights"])
        gt_depth, gt_head, rng = _shaded_views(ground_truth_surface(world, identity, w),
                                               world.fine_faces, camera, size)
        coarse = load_mesh(out / record["files"]["coarse_mesh"]).vertices
        nvc, nuc = (len(a) for a in param_axes(settings.coarse_spacing)[::-1])
        c_depth, c_head, _ = _shaded_views(coarse.reshape(nvc, nuc, 3), world.model.faces,
                                           camera, size, rng)
        scan = read_abs(out / record["files"]["range"])
        photo = np.asarray(Image.open(out / record["files"]["photo"]).convert("RGB")).copy()
        for x, y in np.rint(record["landmarks_2d"]).astype(int):
            photo[max(y - 1, 0):y + 2, max(x - 1, 0):x + 2] = (0, 255, 0)
        # crop scan and photo to a square around the face
        c = np.asarray(record["landmarks_2d"]).mean(axis=0).round().astype(int)
        half = int(round(100 * settings.scanner_scale))
        box = np.s_[max(c[1] - half, 0):min(c[1] + half, H),
                    max(c[0] - half, 0):min(c[0] + half, W)]
        crops = [np.repeat(_scan_shading(scan)[box][..., None], 3, axis=2), photo[box] / 255.0]
        crops = [np.asarray(Image.fromarray((p * 255).astype(np.uint8)).resize((size, size)),
                            dtype=np.float64) / 255.0 for p in crops]
        grey = [np.repeat(g[..., None], 3, axis=2) for g in (gt_depth, gt_head, c_depth, c_head)]
        row = (np.concatenate(grey + crops, axis=1) * 255 + 0.5).astype(np.uint8)
        path = out / "previews" / f"{record['stem']}.png"
        tmp = path.with_name(f".{path.name}.tmp.png")
        Image.fromarray(row).save(tmp)
        os.replace(tmp, path)
        paths.append(path)
        rows.append(row)
    if rows:
        path = out / "previews" / "world.png"
        tmp = path.with_name(".world.png.tmp.png")
        Image.fromarray(np.concatenate(rows, axis=0)).save(tmp)
        os.replace(tmp, path)
        paths.append(path)
    return paths
