"""The synthetic world and its 3DMM: the settings, the world model sampled
from the face anatomy, the identities and scan plans drawn from one seed,
and the ground-truth surface of a scan.

See docs/synthetic-world.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .face_anatomy import (
    EXPRESSION_NAMES,
    EXPRESSIONS,
    IDENTITY_FACTORS,
    LANDMARK_UV,
    U_MAX,
    V_MAX,
    V_MIN,
    _radial,
    expression_fields,
    identity_fields,
    mean_surface,
)
from .face_detail import Detail, detail_field, draw_detail
from .morphable import MorphableModel
from .projection import rotation_from_euler

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
    fine_u: np.ndarray | None = None
    fine_v: np.ndarray | None = None
    fine_faces: np.ndarray | None = None
    fine_mean: np.ndarray | None = None
    fine_identity: np.ndarray | None = None
    fine_expression: np.ndarray | None = None


def build_world(settings: WorldSettings | None = None, fine: bool = True) -> FaceWorld:
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


# ------------------------------------------------------------------ identities and scan plans

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

