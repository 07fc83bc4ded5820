"""The fit of a linear 3D morphable model to 68 2D landmarks (DL-3DMM style:
scaled-orthographic camera, identity coefficients, bounded expression
weights).

See docs/morphable-model.md (the iteration, the prior, the jaw contour).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .bounded_lsq import regularized_lstsq
from .projection import OrthographicCamera, _rodrigues, fit_orthographic
from .records import IBUG68_CHIN as CHIN
from .records import IBUG68_JAW, Mesh

if TYPE_CHECKING:  # the fit reads the model's arrays; it needs no import at run time
    from .morphable import MorphableModel

CONTOURS = ("fixed", "sliding")
# alternations during which sliding jaw correspondences are re-picked; then they
# are held, since a vertex choice can flip between two neighbours forever
SLIDING_ITERATIONS = 10
# The prior's defaults: the landmarks' error sigma as a fraction of the
# outer-eye distance (a detector's typical 1.5 %, plus the model's own misfit
# of another face), and the expression weights' lambda over the identity's.
# benchmarks/fit_accuracy.py: at 1.5 % noise, 0.015 leaves the eye distance
# up to 11 % off, 0.02 within 8.4 % (scale within 5 %); a stiffer expression
# prior (4x) fits no better there and worse on a real scan (median 4.3 mm
# instead of 3.1 from Lee Perry-Smith's exact landmarks).
LANDMARK_NOISE = 0.02
EXPRESSION_STIFFNESS = 1.0


@dataclass
class Fit:
    """Result of :func:`fit_to_landmarks`.

    ``mesh``: the fitted shape in the MODEL frame (mm); ``camera`` maps it to
    the image (``camera.project(mesh.vertices)``). ``identity`` (k,) and
    ``expression`` (e,) (empty when not fitted) coefficients; ``residual_px``
    the RMS over the 68 landmarks of the 2D distance between the given and the
    reprojected landmarks; ``landmarks_3d`` (68, 3) the fitted landmark
    positions (model frame, mm); ``landmark_vertices`` (68,) the vertex used
    for each landmark (the jaw ones change with ``contour="sliding"``);
    ``iterations`` the alternations run; ``face_px`` the unit of
    ``landmark_noise``: the mean face's outer-eye distance in the image (px).
    """

    mesh: Mesh
    camera: OrthographicCamera
    identity: np.ndarray
    expression: np.ndarray
    residual_px: float
    landmarks_3d: np.ndarray
    landmark_vertices: np.ndarray
    iterations: int
    face_px: float = float("nan")

    @property
    def eye_distance_mm(self) -> float:
        """Outer-eye distance (iBUG 36-45) of the fitted face, mm."""
        return float(np.linalg.norm(self.landmarks_3d[36] - self.landmarks_3d[45]))

    @property
    def relative_residual(self) -> float:
        """``residual_px`` over the fitted outer-eye distance in the image."""
        return self.residual_px / (self.camera.scale * self.eye_distance_mm)


class FitRejected(ValueError):
    """A landmark fit that fails its :class:`FitGate`; the message names the
    pair and the reasons."""


@dataclass(frozen=True)
class FitGate:
    """The limits a landmark fit must meet to stand as a pair's coarse side.

    ``max_residual``: the RMS landmark residual over the fitted outer-eye
    distance in the image (:attr:`Fit.relative_residual`; 2 % detector noise
    leaves about 3 %). ``max_coefficient``: the largest |identity coefficient|
    in sigma; beyond 4 sigma the fit traded the face's size or shape for the
    camera. ``eye_distance_mm``: the plausible range of the fitted outer-eye
    (exocanthion) distance, adults being about 80-100 mm (Farkas' norms),
    widened for the model's own landmark placement.
    """

    max_residual: float = 0.08
    max_coefficient: float = 4.0
    eye_distance_mm: tuple = (75.0, 115.0)

    def __post_init__(self):
        lo, hi = (float(v) for v in self.eye_distance_mm)
        object.__setattr__(self, "eye_distance_mm", (lo, hi))
        if not (self.max_residual > 0 and self.max_coefficient > 0 and 0 <= lo < hi
                and np.isfinite([self.max_residual, self.max_coefficient, lo, hi]).all()):
            raise ValueError(f"FitGate: limits must be finite, > 0 and eye_distance_mm low < "
                             f"high, got {self}")

    def check(self, fit: Fit) -> list:
        """The reasons (str) ``fit`` fails the gate; empty when it passes."""
        reasons = []
        if not fit.relative_residual <= self.max_residual:
            reasons.append(f"landmark residual {100 * fit.relative_residual:.1f} % of the "
                           f"outer-eye distance > {100 * self.max_residual:g} %")
        largest = float(np.abs(fit.identity).max()) if len(fit.identity) else 0.0
        if not largest <= self.max_coefficient:
            reasons.append(f"identity coefficient of {largest:.1f} sigma > "
                           f"{self.max_coefficient:g} sigma")
        eye = fit.eye_distance_mm
        lo, hi = self.eye_distance_mm
        if not lo <= eye <= hi:
            reasons.append(f"outer-eye distance {eye:.0f} mm outside {lo:g}-{hi:g} mm")
        return reasons


def _contour_bands(mean: np.ndarray, faces: np.ndarray, landmarks: np.ndarray):
    """Silhouette search bands for the sliding jaw contour.

    Returns ``[(bands, jaw, sign)]`` for the subject's right (jaw landmarks
    0-7) and left (9-16) sides. ``bands``: vertex-index arrays, one per
    horizontal band of the mean shape (model frame: +Y up, face toward +Z) at
    the height of a jaw landmark of that side or halfway between two; a band
    holds the vertices between that jaw point and the midline (the chin's x)
    and at most 5 mm behind it. ``sign``: +1 when the side lies toward +x.
    Bands are one mesh edge thick (median edge length) so none is empty.
    """
    J = mean[landmarks[list(IBUG68_JAW)]]
    mid_x = J[CHIN, 0]
    edge = np.median(np.linalg.norm(mean[faces[:, 0]] - mean[faces[:, 1]], axis=1))
    sides = []
    for jaw in (np.arange(0, CHIN), np.arange(CHIN + 1, 17)):
        sign = 1.0 if J[jaw, 0].mean() > mid_x else -1.0
        ends = J[np.r_[jaw, CHIN]] if jaw[0] == 0 else J[np.r_[CHIN, jaw]]
        heights = np.concatenate([ends, (ends[:-1] + ends[1:]) / 2])
        bands = []
        for p in heights:
            if sign * (p[0] - mid_x) < edge:  # the chin region: no side silhouette
                continue
            inband = ((np.abs(mean[:, 1] - p[1]) <= edge / 2)
                      & (sign * (mean[:, 0] - mid_x) >= 0)
                      & (sign * (mean[:, 0] - p[0]) <= 0)
                      & (mean[:, 2] >= p[2] - 5.0))
            idx = np.flatnonzero(inband)
            if len(idx):
                bands.append(idx)
        sides.append((bands, jaw, sign))
    return sides


def fit_to_landmarks(model: MorphableModel, landmarks_2d, n_identity: int | None = None,
                     n_expression: int | None = 0,
                     landmark_noise: float = LANDMARK_NOISE,
                     expression_stiffness: float = EXPRESSION_STIFFNESS,
                     regularization: float | None = None,
                     expression_regularization: float | None = None,
                     iterations: int = 50, tolerance: float = 1e-8,
                     contour: str = "fixed", weights=None) -> Fit:
    """Fit camera and coefficients of ``model`` to 68 iBUG 2D landmarks.

    ``landmarks_2d`` (68, 2) pixels (x = column, y = row, down).
    ``n_identity``: identity modes fitted (None = all); ``n_expression``:
    expression modes fitted (0 = none, None = all). ``landmark_noise``: the
    landmarks' error sigma per coordinate as a fraction of the outer-eye
    distance, which sets the prior (module docstring); 0 = unregularized.
    ``expression_stiffness``: the expression weights' lambda over the
    identity's. ``regularization``: an absolute lambda in px^2 instead, for
    callers whose noise is known in pixels (not resolution-invariant);
    ``expression_regularization`` then the expression weights' (None = the
    same). ``iterations``: at most this many camera /
    coefficient iterations; they stop when no coefficient, nor the scale,
    nor an entry of the rotation changes by more than ``tolerance``
    (relative). ``contour``: ``"fixed"`` or ``"sliding"`` jaw
    correspondences (module docstring). ``weights``: (68,) non-negative
    per-landmark weights on the squared residuals (None = all 1).

    Algorithm, conventions and the result: see the module docstring and
    :class:`Fit`.
    """
    L = model._require_landmarks()
    x = np.asarray(landmarks_2d, dtype=np.float64)
    if x.shape != (68, 2):
        raise ValueError(f"landmarks_2d: expected (68, 2) pixel coordinates, got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("landmarks_2d: contains NaN or infinite coordinates")
    k = model.n_identity if n_identity is None else int(n_identity)
    e = model.n_expression if n_expression is None else int(n_expression)
    if not (0 <= k <= model.n_identity):
        raise ValueError(f"n_identity={k}: the model has {model.n_identity} identity modes")
    if not (0 <= e <= model.n_expression):
        raise ValueError(f"n_expression={e}: the model has {model.n_expression} "
                         f"expression modes")
    if not (np.isfinite(landmark_noise) and landmark_noise >= 0
            and np.isfinite(expression_stiffness) and expression_stiffness >= 0):
        raise ValueError(f"landmark_noise and expression_stiffness must be finite and >= 0, "
                         f"got {landmark_noise} and {expression_stiffness}")
    w_pt = np.ones(68) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w_pt.shape != (68,) or not np.isfinite(w_pt).all() or (w_pt < 0).any() \
            or (w_pt > 0).sum() < 4:
        raise ValueError("weights: expected 68 finite non-negative values, at least 4 > 0")
    M68 = model.mean[L]
    face_px = fit_orthographic(x, M68, weights=w_pt).scale * float(
        np.linalg.norm(M68[36] - M68[45]))
    if regularization is None:
        lam = (float(landmark_noise) * face_px) ** 2
        lam_e = float(expression_stiffness) * lam
    else:
        lam = float(regularization)
        lam_e = lam if expression_regularization is None else float(expression_regularization)
    if not (lam >= 0 and lam_e >= 0):
        raise ValueError(f"regularization must be >= 0 px^2, got {lam} and {lam_e}")
    if contour not in CONTOURS:
        raise ValueError(f"contour must be one of {CONTOURS}, got {contour!r}")
    if int(iterations) < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")

    # The basis stacked over (identity, expression) modes: (k + e, n, 3) is
    # only ever read at landmark (and, sliding, contour-band) vertices.
    def modes_at(vertices):
        # take() keeps the result C-contiguous (fancy indexing after a slice
        # does not, and every tensordot would then copy it)
        parts = [model.identity_basis[:k].take(vertices, axis=1)]
        if e:
            parts.append(model.expression_basis[:e].take(vertices, axis=1))
        return np.concatenate(parts) if e else parts[0]

    vertices = L.copy()
    M_L, B_L = model.mean[vertices], modes_at(vertices)
    if contour == "sliding":
        sides = _contour_bands(model.mean, model.faces, L)
        band_vertices = np.unique(np.concatenate([b for bands, _, _ in sides for b in bands]))
        M_C, B_C = model.mean[band_vertices], modes_at(band_vertices)
        band_pos = [[np.searchsorted(band_vertices, b) for b in bands] for bands, _, _ in sides]

    p = k + e
    # unknowns: coefficients z (p), rotation increment (3), scale increment, t (2)
    reg = np.concatenate([np.full(k, lam), np.full(e, lam_e), np.zeros(6)])
    bounded = e > 0 and model.expression_range is not None
    if bounded:
        lo = np.full(p + 6, -np.inf)
        hi = np.full(p + 6, np.inf)
        lo[k:p], hi[k:p] = model.expression_range
    n_used = int((w_pt > 0).sum())
    unregularized = (k if lam == 0 else 0) + (e if lam_e == 0 else 0)
    if unregularized + 6 > 2 * n_used:
        raise ValueError(f"an unregularized fit of {unregularized} modes plus the camera needs "
                         f"more than {2 * n_used} landmark coordinates; use regularization "
                         f"> 0 or fewer modes")

    def cost(z, s, R, t):
        r = x - (s * (M_L + np.tensordot(z, B_L, 1)) @ R[:2].T + t)
        return w_pt @ (r * r).sum(axis=1) + reg[:p] @ (z * z)

    z = np.zeros(p)
    if bounded:  # start inside the box
        z[k:] = np.clip(0.0, *model.expression_range)
    previous = None
    for it in range(1, int(iterations) + 1):
        # (1) camera for the current shape
        X = M_L + np.tensordot(z, B_L, 1)
        cam = fit_orthographic(x, X, weights=w_pt)
        s, R = cam.scale, cam.rotation
        if contour == "sliding" and it <= SLIDING_ITERATIONS:
            vertices = _slide_jaw(x, cam, vertices, sides, band_vertices, band_pos,
                                  M_C + np.tensordot(z, B_C, 1))
            M_L, B_L = model.mean[vertices], modes_at(vertices)
            X = M_L + np.tensordot(z, B_L, 1)
        # (2) coefficients and translation by regularized linear least squares,
        # with the first-order correction of the camera's rotation and scale
        # (a Gauss-Newton step on the joint problem): alone, the alternation
        # creeps along the near-ambiguity of scale and face size for hundreds
        # of iterations.
        P = X @ R.T
        A = np.empty((68, 2, p + 6))
        A[:, :, :p] = np.einsum("jic,dc->idj", B_L, s * R[:2])
        # left perturbation R <- exp([w]x) R moves P by w x P
        A[:, 0, p:p + 3] = s * np.column_stack([np.zeros(68), P[:, 2], -P[:, 1]])
        A[:, 1, p:p + 3] = s * np.column_stack([-P[:, 2], np.zeros(68), P[:, 0]])
        A[:, :, p + 3] = P[:, :2]
        A[:, :, p + 4:] = np.eye(2)
        b = x - M_L @ (s * R[:2]).T
        A = (A * np.sqrt(w_pt)[:, None, None]).reshape(136, p + 6)
        b = (b * np.sqrt(w_pt)[:, None]).reshape(136)
        start = np.concatenate([z, np.zeros(4), cam.translation])
        sol = regularized_lstsq(A, b, reg, (lo, hi) if bounded else None, start)
        # Backtrack along the Gauss-Newton step until the cost drops (a large
        # change of scale is poorly linearized); the box is convex, so every
        # point of the step stays within the expression bounds.
        cost0, t0 = cost(z, s, R, cam.translation), cam.translation
        for alpha in (1.0, 0.5, 0.25, 0.125):
            z1, t1 = z + alpha * (sol[:p] - z), t0 + alpha * (sol[p + 4:] - t0)
            R1, s1 = _rodrigues(alpha * sol[p:p + 3]) @ R, s + alpha * sol[p + 3]
            if cost(z1, s1, R1, t1) <= cost0:
                z, R, s, t = z1, R1, s1, t1
                break
        else:  # the plain alternation step (camera fixed) cannot raise the cost
            keep = np.r_[np.arange(p), p + 4, p + 5]
            sol = regularized_lstsq(A[:, keep], b, reg[keep],
                                     (lo[keep], hi[keep]) if bounded else None, start[keep])
            z, t = sol[:p], sol[p:]
        state = np.concatenate([z, R[:2].ravel(), [s]])
        if previous is not None:
            change = np.abs(state - previous).max() / max(np.abs(state).max(), 1.0)
            if change < tolerance:
                break
        previous = state
    camera = OrthographicCamera(s, R, t)
    X = M_L + np.tensordot(z, B_L, 1)
    residual = np.sqrt(np.mean(np.sum((camera.project(X)[:, :2] - x) ** 2, axis=1)))
    identity, expression = z[:k], z[k:]
    return Fit(mesh=model.mesh(identity, expression), camera=camera,
               identity=identity, expression=expression, residual_px=float(residual),
               landmarks_3d=X, landmark_vertices=vertices, iterations=it, face_px=face_px)


def _slide_jaw(x, cam, vertices, sides, band_vertices, band_pos, C):
    """Re-pick the jaw vertices (all but the chin) on the current silhouette;
    ``C`` (c, 3) the current shape at ``band_vertices``."""
    vertices = vertices.copy()
    Q = cam.project(C)[:, :2]
    right = cam.rotation[:2, 0]  # image direction of the model's +x
    for (bands, jaw, sign), pos in zip(sides, band_pos):
        if not pos:
            continue
        sil = np.array([q[np.argmax(Q[q] @ (sign * right))] for q in pos])
        d2 = ((Q[sil][None, :, :] - x[jaw][:, None, :]) ** 2).sum(axis=2)
        vertices[jaw] = band_vertices[sil[np.argmin(d2, axis=1)]]
    return vertices


def fit_in_frame(fit: Fit, camera: OrthographicCamera, landmarks_3d=None) -> Mesh:
    """The fitted mesh moved into the frame of another camera of the same image.

    ``camera`` maps some frame (e.g. a scan's) to the pixels the landmarks were
    given in. The fitted mesh is carried by the similarity that makes the two
    cameras agree on the image: view frame of the fit, scaled by
    ``fit.camera.scale / camera.scale`` and shifted by the difference of
    translations, then back through ``camera``. Orthographic projection does
    not observe depth, so the depth offset is chosen to put the mean depth of
    the fitted landmarks on that of ``landmarks_3d`` (68, 3) in the camera's
    frame, or left at 0 (the fit's landmark centroid at depth 0) without them.
    Returns a :class:`Mesh` (mm of ``camera``'s frame).
    """
    k = fit.camera.scale / camera.scale
    Rf, R = fit.camera.rotation, camera.rotation
    V = fit.mesh.vertices @ Rf.T * k
    L = fit.landmarks_3d @ Rf.T * k
    shift = np.zeros(3)
    shift[:2] = (fit.camera.translation - camera.translation) / camera.scale
    if landmarks_3d is not None:
        ref = np.asarray(landmarks_3d, dtype=np.float64)
        if ref.shape != (68, 3) or not np.isfinite(ref).all():
            raise ValueError(f"landmarks_3d: expected finite (68, 3) points, got {ref.shape}")
        shift[2] = (ref @ R[2]).mean() - L[:, 2].mean()
    else:
        shift[2] = -L[:, 2].mean()
    return Mesh((V + shift) @ R, fit.mesh.faces)
