"""A learned re-fit of a coarse morphable-model face: the face a coarse
fit's own parameters imply, placed where the scan would be.

A fit to 68 noisy landmarks gets a face's broad shape and pose a little
wrong, and that error, not the missing wrinkles, is most of what the coarse
image lacks in the 1-5 mm band that ``detail_corr`` scores
(docs/detail-findings.md). On training pairs the truth is at hand: the
model fitted densely to the target's depth (:func:`fit_depth`). Across a
training set the dense fit follows from the coarse fit's parameters and
camera by one linear map (:class:`RefitMap`), which a held-out face then
takes without any target.

A face here is a :class:`FaceFit`: identity coefficients, expression
weights, and a similarity in the model's frame about the mean face's
centroid (rotation vector, log scale, translation), drawn with the coarse
image's own camera. Its parameter vector (:meth:`FaceFit.vector`) is the
identity, then the rotation (rad), the log scale and the translation (mm);
the expression stays the coarse fit's.

See docs/refit.md.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from .morphable import MorphableModel
from .projection import FRONTAL, OrthographicCamera, _rodrigues
from .raster import rasterize
from .records import FormatError, PathLike

RIGID = 7  # rotation (3), log scale (1), translation (3)
MAX_INSTANCE_RMS_MM = 0.01  # a mesh further than this from the model's span is no instance
# Steps of the Jacobian's differences: the vertices move linearly in the
# identity and translation, so only the rotation's and scale's are approximate.
_STEP = {"identity": 1.0, "rotation": 1e-4, "log_scale": 1e-4, "translation": 1.0}


@dataclass(frozen=True)
class FaceFit:
    """A model face in its model frame: ``identity`` (K,) coefficients,
    ``expression`` (E,) weights, then the similarity about the mean face's
    centroid: ``rotation`` (3,) rotation vector in rad, ``log_scale`` and
    ``translation`` (3,) mm."""

    identity: np.ndarray
    expression: np.ndarray
    rotation: np.ndarray = field(default_factory=lambda: np.zeros(3))
    log_scale: float = 0.0
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def vector(self) -> np.ndarray:
        """(K + 7,) identity, rotation, log scale, translation."""
        return np.r_[self.identity, self.rotation, self.log_scale, self.translation]

    @classmethod
    def from_vector(cls, theta: np.ndarray, expression: np.ndarray) -> FaceFit:
        theta = np.asarray(theta, dtype=np.float64)
        K = len(theta) - RIGID
        return cls(theta[:K].copy(), np.asarray(expression, dtype=np.float64),
                   theta[K:K + 3].copy(), float(theta[K + 3]), theta[K + 4:].copy())


def face_vertices(model: MorphableModel, fit: FaceFit) -> np.ndarray:
    """(n, 3) mm: the model's face ``fit.identity``, ``fit.expression``
    under the fit's similarity."""
    shape = model.shape(fit.identity, fit.expression)
    centroid = model.mean.mean(axis=0)
    rotated = (shape - centroid) @ _rodrigues(np.asarray(fit.rotation)).T
    return centroid + np.exp(fit.log_scale) * rotated + fit.translation


def model_coefficients(model: MorphableModel, vertices: np.ndarray,
                       name: PathLike = "the mesh") -> tuple:
    """(identity (K,), expression (E,)) of a mesh that is an instance of
    ``model`` (a coarse fit written as a mesh: same vertices, same order),
    by least squares. Refused (:class:`FormatError` naming ``name``) when
    the vertex count differs or the mesh lies off the model's span."""
    V = np.asarray(vertices, dtype=np.float64)
    if V.shape != model.mean.shape:
        raise FormatError(f"{name}: {V.shape[0]} vertices, but the model "
                          f"{model.name or model.source} has {model.n_vertices}: a re-fit needs "
                          "coarse meshes that are instances of the model")
    if not np.isfinite(V).all():
        raise FormatError(f"{name}: vertices contain NaN or infinite values")
    bases = [model.identity_basis] + ([model.expression_basis] if model.n_expression else [])
    A = np.concatenate(bases).reshape(-1, V.size).T
    coefficients = np.linalg.lstsq(A, (V - model.mean).ravel(), rcond=None)[0]
    rms = float(np.sqrt(np.mean(np.square(A @ coefficients - (V - model.mean).ravel())) * 3))
    if rms > MAX_INSTANCE_RMS_MM:
        raise FormatError(f"{name}: lies {rms:.3f} mm RMS off the span of the model "
                          f"{model.name or model.source}: not one of its faces (a re-fit needs "
                          "coarse meshes drawn from the model it is given)")
    K = model.n_identity
    return coefficients[:K], coefficients[K:]


def _projected_jacobian(model: MorphableModel, fit: FaceFit,
                        camera: OrthographicCamera) -> tuple:
    """(projected vertices Q (n, 3), dQ/dtheta (n, 3, P)): x, y px and depth
    mm of each vertex, and their derivatives by the fit's parameters."""
    theta = fit.vector()
    K = len(fit.identity)
    Q = camera.project(face_vertices(model, fit))
    steps = np.r_[np.full(K, _STEP["identity"]), np.full(3, _STEP["rotation"]),
                  _STEP["log_scale"], np.full(3, _STEP["translation"])]
    dQ = np.empty(Q.shape + (len(theta),))
    for j, h in enumerate(steps):
        moved = theta.copy()
        moved[j] += h
        dQ[..., j] = (camera.project(face_vertices(
            model, FaceFit.from_vector(moved, fit.expression))) - Q) / h
    return Q, dQ


def _depth_jacobian(Q: np.ndarray, dQ: np.ndarray, faces: np.ndarray, size: int) -> tuple:
    """The depth image (H, W) mm of the projected mesh, where drawn, and
    d depth / d theta (pixels drawn, P) there: at a fixed pixel the
    triangle's plane moves with its vertices' depths and slides with their
    image positions, dz = sum_i b_i (dz_i - grad z . dxy_i)."""
    depth, drawn, _, face_id = rasterize(Q, faces, Q[:, 2:3], size, size, return_depth=True,
                                         return_face_ids=True)
    rows, cols = np.nonzero(drawn)
    tri = faces[face_id[rows, cols]]
    a, b, c = Q[tri[:, 0]], Q[tri[:, 1]], Q[tri[:, 2]]
    e1, e2 = b - a, c - a
    det = e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0]
    det = np.where(np.abs(det) > 1e-12, det, 1e-12)
    px, py = cols - a[:, 0], rows - a[:, 1]
    b1 = (px * e2[:, 1] - py * e2[:, 0]) / det
    b2 = (e1[:, 0] * py - e1[:, 1] * px) / det
    weights = np.column_stack([1.0 - b1 - b2, b1, b2])
    # the plane z = z_a + g . (p - a_xy): g from the two edges
    gx = (e1[:, 2] * e2[:, 1] - e2[:, 2] * e1[:, 1]) / det
    gy = (e2[:, 2] * e1[:, 0] - e1[:, 2] * e2[:, 0]) / det
    d = dQ[tri]  # (pixels, 3 corners, 3 coordinates, P)
    slide = d[:, :, 2] - gx[:, None, None] * d[:, :, 0] - gy[:, None, None] * d[:, :, 1]
    J = np.einsum("pc,pcj->pj", weights, slide)
    return depth[..., 0] if depth.ndim == 3 else depth, drawn, J


def fit_depth(model: MorphableModel, start: FaceFit, camera: OrthographicCamera,
              depth_mm: np.ndarray, valid: np.ndarray, iterations: int = 6,
              robust_mm: float = 3.0, prior: float = 1.0) -> tuple:
    """The model's face fitted densely to a depth image: (:class:`FaceFit`,
    RMS mm of the fit's depth error over the pixels it covers).

    ``depth_mm`` (H, W) is the target's depth along ``camera``'s view (mm,
    any constant offset: the translation takes it up) where ``valid``.
    Gauss-Newton from ``start`` on the identity and the similarity (the
    expression stays), residuals over the valid pixels the face covers,
    Huber-weighted beyond ``robust_mm``, the identity coefficients held to
    their unit prior with weight ``prior`` (mm^2 per unit^2). The fit's
    translation comes back without its component along the view."""
    size = depth_mm.shape[0]
    if depth_mm.shape != (size, size) or valid.shape != depth_mm.shape:
        raise ValueError(f"fit_depth: square depth and valid images needed, got "
                         f"{depth_mm.shape} and {valid.shape}")
    fit, K = start, len(start.identity)
    penalty = np.r_[np.full(K, prior), np.zeros(RIGID)]
    rms = np.inf
    for _ in range(iterations):
        Q, dQ = _projected_jacobian(model, fit, camera)
        depth, drawn, J = _depth_jacobian(Q, dQ, model.faces, size)
        used = valid[drawn]
        if used.sum() < 3 * (K + RIGID):
            raise ValueError(f"fit_depth: the face covers {int(used.sum())} valid pixels, too "
                             "few to fit")
        rows, cols = np.nonzero(drawn)
        r = depth_mm[rows, cols][used] - depth[rows, cols][used]
        J = J[used]
        if not np.isfinite(rms):  # the first pass: take the constant depth offset out
            theta = fit.vector()
            view = camera.rotation[2]
            theta[K + 4:] += np.median(r) * view
            fit = FaceFit.from_vector(theta, fit.expression)
            r = r - np.median(r)
        w = np.minimum(1.0, robust_mm / np.maximum(np.abs(r), 1e-12))
        theta = fit.vector()
        normal = (J * w[:, None]).T @ J + np.diag(penalty)
        gradient = (J * w[:, None]).T @ r - penalty * theta
        step = np.linalg.solve(normal + 1e-9 * np.trace(normal) * np.eye(len(theta)), gradient)
        fit = FaceFit.from_vector(theta + step, fit.expression)
        rms = float(np.sqrt(np.mean(r * r)))
        if np.abs(step).max() < 1e-4:
            break
    # The offset along the view is the depth reference's, which each image
    # sets anew at its nose tip: kept, it would shift a face seen from elsewhere.
    view = camera.rotation[2]
    theta = fit.vector()
    theta[K + 4:] -= (theta[K + 4:] @ view) * view
    return FaceFit.from_vector(theta, fit.expression), rms


def surface_point(model: MorphableModel, fit: FaceFit, camera: OrthographicCamera,
                  pixel, size: int) -> np.ndarray:
    """(3,) mm: the point of the face ``fit`` that ``camera`` (a ``size`` px
    image) shows at ``pixel`` (x, y), depth interpolated bilinearly between
    the pixel centres around it. Refused when the face is not drawn there."""
    Q = camera.project(face_vertices(model, fit))
    depth, drawn = rasterize(Q, model.faces, Q[:, 2], size, size)
    x, y = (float(v) for v in pixel)
    i, j = int(np.floor(x)), int(np.floor(y))
    if not (0 <= i < size - 1 and 0 <= j < size - 1 and drawn[j:j + 2, i:i + 2].all()):
        raise ValueError(f"surface_point: the face is not drawn around pixel ({x:.1f}, {y:.1f})")
    a, b = x - i, y - j
    z = ((1 - a) * (1 - b) * depth[j, i, 0] + a * (1 - b) * depth[j, i + 1, 0]
         + (1 - a) * b * depth[j + 1, i, 0] + a * b * depth[j + 1, i + 1, 0])
    return camera.unproject(np.array([[x, y, z]]))[0]


def pivoted_camera(camera: OrthographicCamera, pivot: np.ndarray,
                   anchor: np.ndarray) -> OrthographicCamera:
    """``camera`` moved in its image plane so that the model point ``pivot``
    falls on the pixel where ``anchor`` falls. A view that turns the head
    about ``anchor`` (dce-build turns each side about its nose tip) then
    turns the face about ``pivot``."""
    shift = camera.project(anchor[None])[0, :2] - camera.project(pivot[None])[0, :2]
    return OrthographicCamera(camera.scale, camera.rotation, camera.translation + shift)


@dataclass(frozen=True)
class PlacedRefit:
    """A re-fit face and the point its views turn about: ``pivot`` (3,) mm,
    its surface at the photo view's nose-tip pixel (where the target's nose
    tip is), and ``anchor`` (3,) mm, the coarse face's nose tip, about which
    dce-build turns the coarse views. Drawn with a coarse view's camera
    moved by :func:`pivoted_camera`, the re-fit turns as the target does."""

    fit: FaceFit
    pivot: np.ndarray
    anchor: np.ndarray


def place_refit(model: MorphableModel, fit: FaceFit, coarse: FaceFit,
                photo_camera: OrthographicCamera, size: int, nose: int = 30,
                anchor: np.ndarray | None = None) -> PlacedRefit:
    """:class:`PlacedRefit` of ``fit``, re-fitted from the coarse face
    ``coarse`` seen by ``photo_camera`` (the ``size`` px photo view, which
    puts the coarse nose tip on the nose-tip pixel): ``anchor`` (3,) mm,
    default the model's landmark ``nose`` on the coarse face."""
    if anchor is None:
        anchor = face_vertices(model, coarse)[model.landmarks_68[nose]]
    pixel = photo_camera.project(anchor[None])[0, :2]
    return PlacedRefit(fit, surface_point(model, fit, photo_camera, pixel, size), anchor)


def view_rotation(camera: OrthographicCamera) -> np.ndarray:
    """(3,) the rotation vector (rad) that turns the face from the frontal
    view into ``camera``'s: R = FRONTAL @ rot(v)."""
    return Rotation.from_matrix(FRONTAL.T @ camera.rotation).as_rotvec()


def refit_features(identity: np.ndarray, expression: np.ndarray,
                   camera: OrthographicCamera) -> np.ndarray:
    """(K + E + 6,) what a re-fit is predicted from: the coarse fit's
    identity and expression, the view's rotation vector, the log of its
    scale (px/mm: the face's size in the image) and its translation (px:
    where the model's origin falls in the image, which tells most of the
    fit's in-plane offset: docs/refit.md)."""
    return np.r_[identity, expression, view_rotation(camera), np.log(camera.scale),
                 camera.translation]


@dataclass(frozen=True)
class RefitMap:
    """A linear map from :func:`refit_features` (standardized by
    ``feature_mean``, ``feature_scale``) to a :class:`FaceFit` vector:
    ``weights`` (1 + D, K + 7), the first row the constant; the identity
    comes out blended with the coarse fit's by ``identity_blend`` (K,)
    (:func:`learn_refit_map`; None: not blended). ``model`` names
    the morphable model it draws; ``pairs`` the training pairs it was
    learned on; ``fit_rms_mm`` their dense fits' mean RMS depth error;
    ``pairs_digest`` the pair file's text digest; ``image_size`` (px) and
    ``margin`` how its images were framed (the camera features depend on
    it; 0 and NaN: unknown)."""

    weights: np.ndarray
    feature_mean: np.ndarray
    feature_scale: np.ndarray
    n_identity: int
    n_expression: int
    identity_blend: np.ndarray | None = None
    model: str = ""
    pairs: int = 0
    fit_rms_mm: float = float("nan")
    ridge: float = 0.0
    pairs_digest: str = ""
    image_size: int = 0
    margin: float = float("nan")

    def with_digest(self, pairs_digest: str) -> RefitMap:
        """The map, recording the text digest of the pair file it came from."""
        return dataclasses.replace(self, pairs_digest=str(pairs_digest))

    def digest(self) -> str:
        """A short hash of the map's arrays: which map drew a re-fit file."""
        h = hashlib.sha256()
        for a in (self.weights, self.feature_mean, self.feature_scale, self.identity_blend):
            if a is None:
                continue
            h.update(np.ascontiguousarray(a, np.float64).tobytes())
        return h.hexdigest()[:16]

    def predict(self, identity, expression, camera: OrthographicCamera) -> FaceFit:
        """The re-fit of a coarse fit (``identity``, ``expression``) seen by
        ``camera`` (the photo's view); its expression is the coarse fit's."""
        identity, expression = np.asarray(identity, float), np.asarray(expression, float)
        if len(identity) != self.n_identity or len(expression) != self.n_expression:
            raise ValueError(f"re-fit map of {self.model}: {self.n_identity} identity and "
                             f"{self.n_expression} expression coefficients expected, got "
                             f"{len(identity)} and {len(expression)}")
        z = (refit_features(identity, expression, camera) - self.feature_mean) / self.feature_scale
        theta = np.r_[1.0, z] @ self.weights
        if self.identity_blend is not None:
            K = self.n_identity
            theta[:K] = identity + self.identity_blend * (theta[:K] - identity)
        return FaceFit.from_vector(theta, expression)


def _least_squares(X: np.ndarray, Y: np.ndarray, ridge: float) -> tuple:
    """(weights (1 + D, P), feature mean, feature scale) of Y ~ [1, standardized X];
    the minimum-norm solution where features are collinear (a constant
    expression weight, say)."""
    mean, scale = X.mean(axis=0), X.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    Z = np.c_[np.ones(len(X)), (X - mean) / scale]
    root = np.diag(np.r_[0.0, np.full(Z.shape[1] - 1, np.sqrt(ridge * len(X)))])
    weights = np.linalg.lstsq(np.r_[Z, root], np.r_[Y, np.zeros((len(root), Y.shape[1]))],
                              rcond=None)[0]
    return weights, mean, scale


def learn_refit_map(features: np.ndarray, targets: np.ndarray, n_identity: int,
                    n_expression: int, ridge: float = 1e-3, folds: int = 5,
                    **info) -> RefitMap:
    """Least squares of the targets (n, K + 7) on the constant and the
    standardized features (n, D), ridge-penalized by ``ridge`` times the
    number of pairs (not the constant). Constant features get scale 1.

    The coarse fit's own identity coefficients (the features' first K) are
    already a fair guess of the dense fit's, and the map beats them on some
    components only: each predicted coefficient is blended with the fit's,
    c + a_k (map_k - c), a_k in [0, 1] the least-squares weight of the
    map's ``folds``-fold cross-validated predictions (1 with too few pairs
    to cross-validate)."""
    X, Y = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    if len(X) != len(Y) or len(X) < 2:
        raise ValueError(f"learn_refit_map: {len(X)} feature rows and {len(Y)} targets; "
                         "at least 2 pairs are needed")
    K = int(n_identity)
    weights, mean, scale = _least_squares(X, Y, ridge)
    blend = np.ones(K)
    if len(X) >= 4 * folds:
        fold = np.arange(len(X)) % folds
        predicted = np.empty_like(Y)
        for k in range(folds):
            w, m, s = _least_squares(X[fold != k], Y[fold != k], ridge)
            predicted[fold == k] = np.c_[np.ones((fold == k).sum()), (X[fold == k] - m) / s] @ w
        gain = predicted[:, :K] - X[:, :K]
        blend = np.clip((gain * (Y[:, :K] - X[:, :K])).sum(0)
                        / np.maximum((gain * gain).sum(0), 1e-300), 0.0, 1.0)
    return RefitMap(weights, mean, scale, K, int(n_expression), identity_blend=blend,
                    ridge=ridge, **info)


def save_refit_map(path: PathLike, refit_map: RefitMap) -> Path:
    """Write the map as ``.npz`` (its arrays, the rest as JSON)."""
    path = Path(path)
    meta = {k: getattr(refit_map, k) for k in ("n_identity", "n_expression", "model", "pairs",
                                                "fit_rms_mm", "ridge", "pairs_digest",
                                                "image_size", "margin")}
    with open(path, "wb") as fh:
        blend = {} if refit_map.identity_blend is None else {
            "identity_blend": refit_map.identity_blend}
        np.savez(fh, weights=refit_map.weights, feature_mean=refit_map.feature_mean,
                 feature_scale=refit_map.feature_scale, meta=json.dumps(meta), **blend)
    return path


def load_refit_map(path: PathLike) -> RefitMap:
    """Read :func:`save_refit_map`'s file; a broken one is refused naming it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            refit_map = RefitMap(z["weights"], z["feature_mean"], z["feature_scale"],
                                 identity_blend=z["identity_blend"] if "identity_blend" in z
                                 else None, **meta)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise FormatError(f"{path}: not a re-fit map ({error})") from None
    P = refit_map.n_identity + RIGID
    D = refit_map.n_identity + refit_map.n_expression + 6
    if refit_map.weights.shape != (D + 1, P) or refit_map.feature_mean.shape != (D,):
        raise FormatError(f"{path}: re-fit map arrays of shapes {refit_map.weights.shape} and "
                          f"{refit_map.feature_mean.shape}, expected {(D + 1, P)} and {(D,)}")
    blend = refit_map.identity_blend
    if blend is not None and blend.shape != (refit_map.n_identity,):
        raise FormatError(f"{path}: identity_blend of shape {blend.shape}, expected "
                          f"{(refit_map.n_identity,)}")
    return refit_map
