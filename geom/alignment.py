"""Aligning a predicted face mesh to a ground-truth scan, as the NoW
evaluation does: crop the scan to a sphere around the face, a similarity
Procrustes on seven landmarks, then ICP that minimizes the scan-to-mesh
distance.

See docs/evaluation.md (landmarks, crop, transforms, ICP).
"""
from __future__ import annotations

from dataclasses import dataclass

import igl
import numpy as np

#: iBUG-68 indices of NoW's seven landmarks, in NoW's order.
NOW_FROM_IBUG68 = (36, 39, 42, 45, 33, 48, 54)
NOW_LANDMARKS = ("right eye outer corner", "right eye inner corner", "left eye inner corner",
                 "left eye outer corner", "nose bottom", "right mouth corner",
                 "left mouth corner")
#: Crop radius factor of the NoW evaluation (scan2mesh_computations.compute_mask).
NOW_RADIUS_FACTOR = 1.4


class AlignmentError(ValueError):
    """Inputs that cannot be aligned (bad landmark arrays, degenerate point sets)."""


@dataclass(frozen=True)
class Similarity:
    """``x -> scale * rotation @ x + translation``; ``apply`` maps (n, 3) rows."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    @classmethod
    def identity(cls) -> Similarity:
        return cls(1.0, np.eye(3), np.zeros(3))

    def apply(self, P: np.ndarray) -> np.ndarray:
        """(n, 3) points -> (n, 3) transformed points."""
        return self.scale * (np.asarray(P, dtype=np.float64) @ self.rotation.T) + self.translation

    def inverse_apply(self, P: np.ndarray) -> np.ndarray:
        """(n, 3) points -> the points this transform maps onto them."""
        return (np.asarray(P, dtype=np.float64) - self.translation) @ self.rotation / self.scale

    def then(self, other: Similarity) -> Similarity:
        """The transform ``other(self(x))``."""
        return Similarity(other.scale * self.scale, other.rotation @ self.rotation,
                          other.scale * other.rotation @ self.translation + other.translation)

    def to_dict(self) -> dict:
        return {"scale": self.scale, "rotation": self.rotation.tolist(),
                "translation": self.translation.tolist()}


def _finite_points(P, what: str, dims: int = 3) -> np.ndarray:
    P = np.asarray(P, dtype=np.float64)
    if P.ndim != 2 or P.shape[1] != dims:
        raise AlignmentError(f"{what}: need (k, {dims}) points, got shape {P.shape}")
    bad = np.flatnonzero(~np.isfinite(P).all(axis=1))
    if bad.size:
        raise AlignmentError(f"{what}: point {bad[0]} is NaN or infinite")
    return P


def now_landmarks(landmarks, what: str = "landmarks") -> np.ndarray:
    """NoW's seven points (7, 3) from 7 points in NoW's order or 68 iBUG
    points (k, 3); :class:`AlignmentError` naming ``what`` otherwise."""
    L = _finite_points(landmarks, what)
    if len(L) == 68:
        return L[list(NOW_FROM_IBUG68)].copy()
    if len(L) == 7:
        return L.copy()
    raise AlignmentError(f"{what}: {len(L)} landmarks; need NoW's 7 (eye corners, nose bottom, "
                         "mouth corners) or the 68 iBUG points")


def crop_sphere(landmarks7: np.ndarray,
                radius_factor: float = NOW_RADIUS_FACTOR) -> tuple:
    """(centre (3,), radius) of NoW's face sphere from the seven landmarks
    (7, 3) of the ground truth (see the module docstring)."""
    L = _finite_points(landmarks7, "crop_sphere landmarks")
    if len(L) != 7:
        raise AlignmentError(f"crop_sphere: need NoW's 7 landmarks, got {len(L)}")
    nose_bottom, bridge = L[4], (L[1] + L[2]) / 2.0
    centre = nose_bottom + 0.3 * (bridge - nose_bottom)
    radius = radius_factor * (np.linalg.norm(L[0] - L[3]) + np.linalg.norm(bridge - nose_bottom))
    return centre, float(radius / 2.0)


def inside_sphere(P: np.ndarray, centre: np.ndarray, radius: float) -> np.ndarray:
    """(n,) bool: the points (n, 3) at most ``radius`` from ``centre``."""
    return np.linalg.norm(np.asarray(P, dtype=np.float64) - centre, axis=1) <= radius


def _rotation_from_svd(U: np.ndarray, Vt: np.ndarray) -> tuple:
    """(R = U D Vt, D's diagonal) with D = diag(1, 1, +-1) making R proper."""
    d = np.ones(3)
    d[2] = np.sign(np.linalg.det(U) * np.linalg.det(Vt)) or 1.0
    return (U * d) @ Vt, d


def procrustes(source: np.ndarray, target: np.ndarray, scale: bool = True,
               weights: np.ndarray | None = None) -> Similarity:
    """The similarity (``scale=False``: rotation and translation) T that
    minimizes ``sum_i w_i |T(source_i) - target_i|^2`` over proper
    rotations; ``source``, ``target`` (k, 3), k >= 3 not all collinear;
    ``weights`` (k,) >= 0, default 1."""
    X = _finite_points(source, "procrustes source")
    Y = _finite_points(target, "procrustes target")
    if X.shape != Y.shape:
        raise AlignmentError(f"procrustes: source {X.shape} and target {Y.shape} differ")
    w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (len(X),) or (w < 0).any() or not w.sum() > 0:
        raise AlignmentError("procrustes: weights must be (k,) >= 0 with a positive sum")
    w = w / w.sum()
    mx, my = w @ X, w @ Y
    Xc, Yc = X - mx, Y - my
    var_x = float(w @ (Xc * Xc).sum(axis=1))
    cov = (Yc * w[:, None]).T @ Xc
    U, S, Vt = np.linalg.svd(cov)
    if len(X) < 3 or var_x <= 0 or S[1] <= 1e-12 * max(S[0], 1e-300):
        raise AlignmentError(f"procrustes: the {len(X)} source points are collinear or "
                             "coincident; the rotation is undetermined")
    R, d = _rotation_from_svd(U, Vt)
    s = float((S * d).sum() / var_x) if scale else 1.0
    return Similarity(s, R, my - s * R @ mx)


def _rotation_vector(omega: np.ndarray) -> np.ndarray:
    """Rotation matrix of the axis-angle vector ``omega`` (Rodrigues)."""
    theta = float(np.linalg.norm(omega))
    if theta < 1e-300:
        return np.eye(3)
    k = omega / theta
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + np.sin(theta) * K + (1.0 - np.cos(theta)) * K @ K


class _ClosestPoints:
    """Closest points of one fixed mesh, its AABB tree built once."""

    def __init__(self, V: np.ndarray, F: np.ndarray):
        self.V = np.ascontiguousarray(V, dtype=np.float64)
        self.F = np.ascontiguousarray(F, dtype=np.int64)
        self.tree = igl.AABB()
        self.tree.init(self.V, self.F)
        self.normals = igl.per_face_normals(self.V, self.F, np.zeros(3))

    def __call__(self, Q: np.ndarray) -> tuple:
        """(squared distances (n,), face (n,), closest points (n, 3))."""
        return self.tree.squared_distance(self.V, self.F, np.ascontiguousarray(Q))


@dataclass
class IcpResult:
    """The fitted transform (mesh -> scan frame), the root-mean-square
    scan-to-mesh distance before (over the points fitted first: the subset
    when there is one) and after (over all points), each point's final
    distance ``distances`` (k,) mm to the moved mesh, and the iterations
    run on the subset and on all points."""

    transform: Similarity
    rms_before: float
    rms_after: float
    distances: np.ndarray
    iterations: int
    polish_iterations: int


def _fit(P: np.ndarray, closest: _ClosestPoints, T: Similarity, scale: bool,
         max_iterations: int, tolerance: float) -> tuple:
    """Levenberg-Marquardt iterations of the module docstring on the points
    P from T: (T, mean squared distance before, after, distances, iterations)."""
    m = P.mean(axis=0)  # linearize about the points' centroid: better conditioned

    def evaluate(T):
        d2, face, C = closest(T.inverse_apply(P))
        return T.scale ** 2 * float(d2.mean()), np.sqrt(d2) * T.scale, face, T.apply(C)

    cost, d, face, C = evaluate(T)
    before, iterations, damping = cost, 0, 1e-6
    # Below a picometre the distances are rounding noise: nothing to fit.
    while iterations < max_iterations and cost > (1e-9 * T.scale) ** 2:
        iterations += 1
        D = P - C
        U = np.divide(D, d[:, None], out=np.zeros_like(D), where=d[:, None] > 0)
        flat = d <= 1e-9 * T.scale
        U[flat] = closest.normals[face[flat]] @ T.rotation.T
        X = C - m
        J = np.column_stack(([(U * X).sum(axis=1)] if scale else []) + [np.cross(X, U), U])
        # Levenberg-Marquardt on the column-normalized normal equations (7x7):
        # the damping holds back directions the points barely determine
        # (rotations of a sphere, slides along a cylinder) instead of
        # stepping far along them.
        norm = np.maximum(np.linalg.norm(J, axis=0), 1e-300)
        Jn = J / norm
        A, g = Jn.T @ Jn, Jn.T @ d
        for _ in range(10):
            step = np.linalg.solve(A + damping * np.eye(len(A)), g) / norm
            sigma, omega, tau = ((step[0], step[1:4], step[4:]) if scale
                                 else (0.0, step[:3], step[3:]))
            s = float(np.exp(sigma))
            R = _rotation_vector(omega)
            new = T.then(Similarity(s, R, m + tau - s * R @ m))  # about the centroid m
            new_cost, new_d, new_face, new_C = evaluate(new)
            if new_cost <= cost:
                damping = max(damping / 10.0, 1e-9)
                break
            damping *= 10.0
        else:
            break  # no step lowers the distances: converged to precision
        gain = (cost - new_cost) / max(cost, 1e-300)
        T, cost, d, face, C = new, new_cost, new_d, new_face, new_C
        if gain < tolerance:
            break
    return T, before, cost, d, iterations


def icp(points: np.ndarray, V: np.ndarray, F: np.ndarray,
        init: Similarity | None = None, scale: bool = True, max_iterations: int = 60,
        max_points: int = 6000, tolerance: float = 1e-7, polish_tolerance: float = 1e-5,
        seed: int = 0) -> IcpResult:
    """Fit T so that the mesh (V (n, 3), F (m, 3)) moved by T lies on the
    scan ``points`` (k, 3): minimize ``sum_i d(p_i, T(mesh))^2`` (see the
    module docstring). ``init``: the starting transform (e.g. the landmark
    :func:`procrustes`), default the identity; ``scale=False`` keeps the
    scale of ``init`` (rigid ICP, for metric meshes). Iterates on a random
    subset of ``max_points`` points (drawn with ``seed``) until an iteration
    lowers the mean squared distance by less than ``tolerance`` relative (or
    ``max_iterations``), then polishes on all points until an iteration
    gains less than ``polish_tolerance``: the subset finds the basin
    cheaply, all points set the optimum (on a symmetric surface a subset's
    own asymmetry would shift it). A relative gain of 1e-5 in the mean
    squared distance moves the error statistics by about 1e-5 of
    themselves."""
    P = _finite_points(points, "icp points")
    if len(P) < 7:
        raise AlignmentError(f"icp: {len(P)} scan points; need at least 7")
    closest = _ClosestPoints(V, F)
    T = init or Similarity.identity()
    iterations, before = 0, None
    if len(P) > max_points:
        subset = P[np.sort(np.random.default_rng(seed).choice(len(P), max_points,
                                                              replace=False))]
        T, before, _, _, iterations = _fit(subset, closest, T, scale, max_iterations, tolerance)
    T, polish_before, after, d, polish = _fit(P, closest, T, scale, max_iterations,
                                              polish_tolerance)
    before = polish_before if before is None else before
    return IcpResult(T, float(np.sqrt(before)), float(np.sqrt(after)), d, iterations, polish)
