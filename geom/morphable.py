"""Linear 3D morphable models (3DMMs) and their fit to 68 2D landmarks.

Model
-----
:class:`MorphableModel` is a linear shape model in millimetres::

    shape = mean + sum_k identity[k] * identity_basis[k]
                 + sum_j expression[j] * expression_basis[j]          (n, 3)

``identity_basis[k]`` is ONE STANDARD DEVIATION along mode k, so identity
coefficients are unit-variance (c ~ N(0, I) under the model's prior). The
expression basis is either a PCA (unit-variance coefficients, unbounded:
``expression_range`` None) or a set of blendshapes whose weights live in a
range (``expression_range`` = (0, 1) for ICT/ARKit-style shapes). The model
frame is the sample data's: +Y up, the face looks toward +Z, +X = the
subject's left. ``landmarks_68`` are the vertex indices of the iBUG-68
landmarks (0-based, jaw 0-16, chin 8, nose tip 30).

Files (:func:`load_model`, chosen by extension)
-----------------------------------------------
``.npz``, the project's format, a superset of the ICT Face Model Light file
(``../shared/data/ict-face-model-light/ict_face_model.npz``) so that one reader
serves both. :meth:`MorphableModel.save` writes (``np.savez_compressed``):

=================== ================ ===========================================
key                 shape / dtype    meaning
=================== ================ ===========================================
``format``          () str           ``"dce-morphable/1"``; absent in ICT files
``mean``            (n, 3) float     mean shape, mm
``identity_basis``  (k, n, 3) float  mm per unit (one-sigma) coefficient
``faces``           (m, 3) int       triangles, 0-based
``landmarks_68``    (68,) int        optional; iBUG-68 vertex indices
``expression_basis`` (e, n, 3) float optional; mm per unit weight
``expression_names`` (e,) str        optional
``expression_range`` (2,) float      optional; bounds of the expression
                                     weights, absent = unbounded
``vertex_region``   (n,) uint8       optional; the model's region label
``name``            () str           optional
=================== ================ ===========================================

Files without a ``format`` key are read as the ICT Face Model Light layout
(float32 arrays are promoted to float64; its expression blendshapes get the
range [0, 1]; its other keys, ``rigid_vertices`` etc., are ignored).

``.h5``/``.hdf5``: Basel Face Model 2017 (statismo layout): ``shape/model/
mean`` (3N,) interleaved xyz in mm, ``shape/model/pcaBasis`` (3N, K) with
orthonormal columns and ``shape/model/pcaVariance`` (K,), so the one-sigma
mode k is ``pcaBasis[:, k] * sqrt(pcaVariance[k])``; ``shape/representer/
cells`` (3, T) triangles. An ``expression/model/{mean, pcaBasis,
pcaVariance}`` group, when present, becomes a unit-variance, unbounded
expression basis, and its mean (the mean expression offset) is added to the
mean shape. BFM ships no iBUG-68 vertex list: pass ``landmarks_68=`` (68
indices or a text file of them), or put the file ``<name>.landmarks_68.txt``
beside the ``.h5``; otherwise ``landmarks_68`` is None and fitting refuses the
model with a message saying so.

Fitting (:func:`fit_to_landmarks`)
----------------------------------
DL-3DMM style (Ferrari et al. 2017): from 68 2D landmarks x_i (pixels) the fit
minimizes::

    sum_i weight_i ||x_i - (s R[:2] X_i(c, w) + t)||^2 + lambda ||c||^2 + lambda_e ||w||^2

over the scaled-orthographic camera (s, R, t) and the identity coefficients c
and expression weights w, X_i(c, w) being model landmark i. Each iteration

1. estimates the camera from the 2D landmarks and the current 3D model
   landmarks (:func:`dce.geom.projection.fit_orthographic`), then
2. solves the regularized linear least-squares problem for c, w and t given
   that camera, with a first-order correction of s and R included as four
   more unknowns (a Gauss-Newton step on the joint problem). Plain
   alternation creeps along the near-ambiguity between the camera scale and
   the face size for hundreds of iterations; with the correction a fit
   converges in 5-15. The step is halved while it raises the cost, and if
   that fails the plain alternation step (camera held) is taken, which never
   does, so the cost decreases monotonically.

It stops when no coefficient, scale or rotation entry changes by more than
``tolerance`` (relative).

The prior is resolution-invariant. The coefficients are unit-variance, so
for Gaussian landmark noise of sigma px per coordinate lambda = sigma^2
makes the fit the MAP estimate under the model's prior. A detector's error
grows with the face in pixels, so sigma is given relative to the face's
size (``landmark_noise``, a fraction of the outer-eye distance, default
0.02 = 2 %): lambda = (landmark_noise * D)^2, where D is the model mean's
outer-eye distance (iBUG 36-45) in the image, through the
scaled-orthographic camera fitted to the mean before the first iteration.
Scaling the landmarks by any factor then scales D, lambda and the whole
cost alike: the same coefficients come out, with the camera scaled. An
absolute lambda in px^2 (``regularization``) fixed the prior at 4 px^2
before; at 8 px/mm (Bosphorus photos) that prior is too weak for a
detector's real error, and the camera scale trades against the identity
modes that change the face's size (faces shrunk by 40 %, coefficients of
8 sigma). Expression weights take ``expression_stiffness`` (default 1) times
the identity's lambda.
Expression weights stay
within the model's ``expression_range`` ([0, 1] for ICT-style blendshapes,
solved by an active-set bounded least squares) or are unconstrained when it
is None (PCA expressions). The result's camera is the one of the last step,
so the fitted mesh projects through it onto the landmarks with the reported
residual.

Jaw contour (``contour``): ``"fixed"`` (default) pairs the jaw landmarks 0-16
with the model's fixed vertices. That is right for landmarks that are
projections of 3D anatomical points (the 3D landmark files of the sample
scans, the synthetic world) and for near-frontal photos, and it keeps the
problem smooth. ``"sliding"`` re-picks the vertex of each jaw landmark but the
chin (8) after each of the first 10 camera updates, then holds them (a
discrete choice can flip between two neighbours forever). The model's
silhouette is found band by band (horizontal bands of the mean at the jaw
landmarks' heights and halfway between them, from the jaw vertex to the
midline, in front of it) as the vertex of each band that projects farthest
outward, and each 2D jaw landmark takes the silhouette vertex of its side
nearest to it in the image. This follows the image contour that a 2D detector
(FAN) marks on a turned face: use it for detected landmarks beyond ~20
degrees of yaw. Sliding only moves a correspondence from the fixed vertex
toward the midline, so on frontal views the two agree.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from numba import njit

from .projection import OrthographicCamera, _rodrigues, fit_orthographic
from .records import IBUG68_CHIN as CHIN
from .records import IBUG68_JAW, FormatError, Mesh, PathLike, _existing_file

FORMAT = "dce-morphable/1"
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


# ------------------------------------------------------------------ model

@dataclass
class MorphableModel:
    """A linear 3DMM; see the module docstring. Shapes: ``mean`` (n, 3) mm,
    ``identity_basis`` (k, n, 3) mm per one-sigma coefficient, ``faces``
    (m, 3) int32, ``landmarks_68`` (68,) vertex indices or None,
    ``expression_basis`` (e, n, 3) mm per unit weight or None,
    ``expression_names`` e strings, ``expression_range`` (lo, hi) or None
    (unbounded), ``vertex_region`` (n,) or None."""

    mean: np.ndarray
    identity_basis: np.ndarray
    faces: np.ndarray
    landmarks_68: Optional[np.ndarray] = None
    expression_basis: Optional[np.ndarray] = None
    expression_names: Optional[Sequence[str]] = None
    expression_range: Optional[tuple] = None
    vertex_region: Optional[np.ndarray] = None
    name: str = ""
    source: Optional[Path] = field(default=None, compare=False)

    def __post_init__(self):
        src = str(self.source or self.name or "MorphableModel")
        try:
            self.mean = np.ascontiguousarray(self.mean, dtype=np.float64)
            self.identity_basis = np.ascontiguousarray(self.identity_basis, dtype=np.float64)
            self.faces = np.ascontiguousarray(self.faces, dtype=np.int32)
            if self.landmarks_68 is not None:
                L = np.asarray(self.landmarks_68)
                if L.dtype.kind not in "iu" and not np.array_equal(L, np.round(L)):
                    raise FormatError(f"{src}: landmarks_68 must be integer vertex indices")
                self.landmarks_68 = np.ascontiguousarray(L, dtype=np.int64)
            if self.expression_basis is not None:
                self.expression_basis = np.ascontiguousarray(self.expression_basis,
                                                             dtype=np.float64)
            if self.vertex_region is not None:
                self.vertex_region = np.asarray(self.vertex_region)
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{src}: model arrays are not numeric ({exc})") from None
        if self.expression_basis is not None and self.expression_names is None:
            self.expression_names = [f"expression{j}" for j in range(len(self.expression_basis))]
        if self.expression_names is not None:
            self.expression_names = [str(s) for s in self.expression_names]
        if self.expression_range is not None:
            lo, hi = (float(v) for v in self.expression_range)
            self.expression_range = (lo, hi)
        self.validate(src)

    def validate(self, source: str) -> "MorphableModel":
        """Raise :class:`FormatError` naming ``source`` if the model is unusable."""
        M, B, F = self.mean, self.identity_basis, self.faces
        if M.ndim != 2 or M.shape[1] != 3 or len(M) == 0:
            raise FormatError(f"{source}: mean must be (n, 3) with n > 0, got {M.shape}")
        n = len(M)
        if B.ndim != 3 or B.shape[1:] != (n, 3):
            raise FormatError(f"{source}: identity_basis must be (k, {n}, 3) for a mean of "
                              f"{n} vertices, got {B.shape}")
        if F.ndim != 2 or F.shape[1] != 3 or len(F) == 0:
            raise FormatError(f"{source}: faces must be (m, 3) triangles with m > 0, "
                              f"got {F.shape}")
        if F.min() < 0 or F.max() >= n:
            raise FormatError(f"{source}: face indices span [{F.min()}, {F.max()}] but the "
                              f"mean has {n} vertices")
        for key, arr in (("mean", M), ("identity_basis", B),
                         ("expression_basis", self.expression_basis)):
            if arr is not None and not np.isfinite(arr).all():
                raise FormatError(f"{source}: {key} contains NaN or infinite values")
        if self.landmarks_68 is not None:
            L = self.landmarks_68
            if L.shape != (68,):
                raise FormatError(f"{source}: landmarks_68 must be (68,) vertex indices, "
                                  f"got {L.shape}")
            if L.min() < 0 or L.max() >= n:
                raise FormatError(f"{source}: landmarks_68 span [{L.min()}, {L.max()}] but "
                                  f"the mean has {n} vertices")
        E = self.expression_basis
        if E is not None:
            if E.ndim != 3 or E.shape[1:] != (n, 3):
                raise FormatError(f"{source}: expression_basis must be (e, {n}, 3), "
                                  f"got {E.shape}")
            if len(self.expression_names) != len(E):
                raise FormatError(f"{source}: {len(self.expression_names)} expression_names "
                                  f"for {len(E)} expression modes")
        elif self.expression_names:
            raise FormatError(f"{source}: expression_names given without expression_basis")
        if self.expression_range is not None:
            lo, hi = self.expression_range
            if not lo < hi:
                raise FormatError(f"{source}: expression_range must be (lo, hi) with lo < hi, "
                                  f"got {self.expression_range}")
        if self.vertex_region is not None and self.vertex_region.shape != (n,):
            raise FormatError(f"{source}: vertex_region must be ({n},), "
                              f"got {self.vertex_region.shape}")
        return self

    @property
    def n_vertices(self) -> int:
        return len(self.mean)

    @property
    def n_identity(self) -> int:
        return len(self.identity_basis)

    @property
    def n_expression(self) -> int:
        return 0 if self.expression_basis is None else len(self.expression_basis)

    def _coefficients(self, values, available: int, what: str) -> np.ndarray:
        c = np.zeros(0) if values is None else np.asarray(values, dtype=np.float64).ravel()
        if len(c) > available:
            raise ValueError(f"{what}: {len(c)} coefficients but the model has {available} "
                             f"{what} modes")
        if not np.isfinite(c).all():
            raise ValueError(f"{what}: coefficients contain NaN or infinite values")
        return c

    def shape(self, identity=None, expression=None) -> np.ndarray:
        """Vertices (n, 3) mm for identity coefficients (k' <= k,) and expression
        weights (e' <= e,); missing trailing coefficients are 0."""
        c = self._coefficients(identity, self.n_identity, "identity")
        w = self._coefficients(expression, self.n_expression, "expression")
        V = self.mean.copy()
        if len(c):
            V += np.tensordot(c, self.identity_basis[:len(c)], 1)
        if len(w):
            V += np.tensordot(w, self.expression_basis[:len(w)], 1)
        return V

    def mesh(self, identity=None, expression=None) -> Mesh:
        """The shape as a :class:`dce.geom.io.Mesh` with the model's faces."""
        return Mesh(self.shape(identity, expression), self.faces)

    def landmarks(self, identity=None, expression=None) -> np.ndarray:
        """The (68, 3) iBUG-68 landmark positions (mm) of a shape."""
        L = self._require_landmarks()
        c = self._coefficients(identity, self.n_identity, "identity")
        w = self._coefficients(expression, self.n_expression, "expression")
        X = self.mean[L].copy()
        if len(c):
            X += np.tensordot(c, self.identity_basis[:len(c), L], 1)
        if len(w):
            X += np.tensordot(w, self.expression_basis[:len(w), L], 1)
        return X

    def _require_landmarks(self) -> np.ndarray:
        if self.landmarks_68 is None:
            raise ValueError(
                f"{self.source or self.name or 'model'}: the model has no iBUG-68 landmark "
                "vertex indices; give them to load_model(path, landmarks_68=...) or put "
                "'<model name>.landmarks_68.txt' (68 vertex indices) beside the model file")
        return self.landmarks_68

    def truncated(self, n_identity: Optional[int] = None,
                  n_expression: Optional[int] = None) -> "MorphableModel":
        """A model with the first ``n_identity`` identity and ``n_expression``
        expression modes (None keeps all; 0 expressions drops the basis)."""
        k = self.n_identity if n_identity is None else int(n_identity)
        e = self.n_expression if n_expression is None else int(n_expression)
        if not (0 <= k <= self.n_identity and 0 <= e <= self.n_expression):
            raise ValueError(f"truncated: asked for {k} identity / {e} expression modes, the "
                             f"model has {self.n_identity} / {self.n_expression}")
        keep_expr = e > 0
        return replace(self, identity_basis=self.identity_basis[:k],
                       expression_basis=self.expression_basis[:e] if keep_expr else None,
                       expression_names=self.expression_names[:e] if keep_expr else None,
                       expression_range=self.expression_range if keep_expr else None)

    def save(self, path: PathLike) -> Path:
        """Write the project's ``.npz`` (keys in the module docstring) through a
        temporary file renamed over ``path``."""
        path = Path(path)
        if path.suffix.lower() != ".npz":
            raise FormatError(f"{path}: a morphable model is saved as .npz, "
                              f"got {path.suffix!r}")
        arrays = {"format": np.array(FORMAT), "mean": self.mean,
                  "identity_basis": self.identity_basis, "faces": self.faces,
                  "name": np.array(self.name)}
        if self.landmarks_68 is not None:
            arrays["landmarks_68"] = self.landmarks_68
        if self.expression_basis is not None:
            arrays["expression_basis"] = self.expression_basis
            arrays["expression_names"] = np.array(self.expression_names, dtype=str)
        if self.expression_range is not None:
            arrays["expression_range"] = np.array(self.expression_range, dtype=np.float64)
        if self.vertex_region is not None:
            arrays["vertex_region"] = self.vertex_region
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.{os.urandom(4).hex()}.tmp.npz")
        try:
            np.savez_compressed(tmp, **arrays)
            tmp.replace(path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path


# ------------------------------------------------------------------ readers

def _read_npz(path: Path) -> dict:
    import zipfile

    try:
        z = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise FormatError(f"{path}: not a readable .npz archive ({exc})") from None
    with z:
        keys = set(z.files)
        missing = [k for k in ("mean", "identity_basis", "faces") if k not in keys]
        if missing:
            raise FormatError(f"{path}: missing key(s) {', '.join(missing)} "
                              f"(has: {', '.join(sorted(keys)) or 'none'})")
        if "format" in keys:
            fmt = str(z["format"])
            if fmt != FORMAT:
                raise FormatError(f"{path}: unsupported morphable-model format {fmt!r} "
                                  f"(this reader knows {FORMAT!r})")
        try:
            out = {k: z[k] for k in ("mean", "identity_basis", "faces", "landmarks_68",
                                     "expression_basis", "expression_names",
                                     "expression_range", "vertex_region", "name")
                   if k in keys}
        except (ValueError, OSError, EOFError) as exc:
            raise FormatError(f"{path}: cannot read the arrays ({exc})") from None
    if "expression_range" in out:
        out["expression_range"] = tuple(np.asarray(out["expression_range"], float).ravel())
        if len(out["expression_range"]) != 2:
            raise FormatError(f"{path}: expression_range must hold 2 numbers")
    elif "format" not in keys and "expression_basis" in out:
        out["expression_range"] = (0.0, 1.0)  # ICT Face Model Light blendshape weights
    out["name"] = str(out["name"]) if "name" in out else path.stem
    return out


_BFM_REQUIRED = ("shape/model/mean", "shape/model/pcaBasis", "shape/model/pcaVariance",
                 "shape/representer/cells")


def _bfm_pca(f, group: str, path: Path, n3: Optional[int]):
    """(mean (3N,), one-sigma basis (K, N, 3)) of a statismo PCA group."""
    mean = np.asarray(f[f"{group}/model/mean"], dtype=np.float64).ravel()
    U = np.asarray(f[f"{group}/model/pcaBasis"], dtype=np.float64)
    var = np.asarray(f[f"{group}/model/pcaVariance"], dtype=np.float64).ravel()
    if n3 is not None and len(mean) != n3:
        raise FormatError(f"{path}: {group}/model/mean has {len(mean)} values, the shape "
                          f"model has {n3}")
    if len(mean) % 3:
        raise FormatError(f"{path}: {group}/model/mean has {len(mean)} values, not a "
                          f"multiple of 3")
    if U.ndim != 2 or U.shape[0] != len(mean):
        raise FormatError(f"{path}: {group}/model/pcaBasis must be ({len(mean)}, K), "
                          f"got {U.shape}")
    if var.shape != (U.shape[1],):
        raise FormatError(f"{path}: {group}/model/pcaVariance must be ({U.shape[1]},), "
                          f"got {var.shape}")
    for key, arr in (("mean", mean), ("pcaBasis", U), ("pcaVariance", var)):
        if not np.isfinite(arr).all():
            raise FormatError(f"{path}: {group}/model/{key} contains NaN or infinite values")
    if (var < 0).any():
        raise FormatError(f"{path}: {group}/model/pcaVariance has negative entries")
    basis = (U * np.sqrt(var)).T.reshape(len(var), -1, 3)
    return mean, basis


def _read_bfm(path: Path) -> dict:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise FormatError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        missing = [k for k in _BFM_REQUIRED if k not in f]
        if missing:
            raise FormatError(f"{path}: not a Basel Face Model (statismo) file: missing "
                              f"{', '.join(missing)}")
        mean, basis = _bfm_pca(f, "shape", path, None)
        cells = np.asarray(f["shape/representer/cells"])
        if cells.ndim != 2 or cells.shape[0] != 3:
            raise FormatError(f"{path}: shape/representer/cells must be (3, T), "
                              f"got {cells.shape}")
        out = {"mean": mean.reshape(-1, 3), "identity_basis": basis, "faces": cells.T,
               "name": path.stem}
        expr = [f"expression/model/{k}" for k in ("mean", "pcaBasis", "pcaVariance")]
        present = [k in f for k in expr]
        if any(present) and not all(present):
            raise FormatError(f"{path}: incomplete expression model: missing "
                              f"{', '.join(k for k, p in zip(expr, present) if not p)}")
        if all(present):
            emean, ebasis = _bfm_pca(f, "expression", path, len(mean))
            out["mean"] = out["mean"] + emean.reshape(-1, 3)
            out["expression_basis"] = ebasis
    return out


def _read_indices(path: Path) -> np.ndarray:
    _existing_file(path)
    try:
        values = np.loadtxt(path, comments="#", ndmin=1)
    except ValueError as exc:
        raise FormatError(f"{path}: cannot parse vertex indices ({exc})") from None
    values = values.ravel()
    if values.shape != (68,) or not np.all(values == np.round(values)):
        raise FormatError(f"{path}: expected 68 integer vertex indices, got {values.size} "
                          f"values")
    return values.astype(np.int64)


_READERS = {".npz": _read_npz, ".h5": _read_bfm, ".hdf5": _read_bfm}


def load_model(path: PathLike, landmarks_68=None) -> MorphableModel:
    """Read a morphable model: the project's ``.npz`` (also the ICT Face Model
    Light file) or a Basel Face Model 2017 ``.h5``; see the module docstring.

    ``landmarks_68``: (68,) iBUG-68 vertex indices, or the path of a text file
    holding them, overriding the file's own; for an ``.h5`` without it the
    sidecar ``<name>.landmarks_68.txt`` is read when present. Raises
    :class:`FormatError` naming the file for a missing file, an unknown
    extension, missing keys, wrong shapes or NaN values.
    """
    path = Path(path)
    ext = path.suffix.lower()
    reader = _READERS.get(ext)
    if reader is None:
        raise FormatError(f"{path}: unknown morphable-model extension {path.suffix!r} "
                          f"(known: {', '.join(sorted(_READERS))})")
    fields = reader(_existing_file(path))
    sidecar = path.with_suffix(".landmarks_68.txt")
    if landmarks_68 is None and ext != ".npz" and sidecar.is_file():
        landmarks_68 = sidecar
    if isinstance(landmarks_68, (str, os.PathLike)):
        landmarks_68 = _read_indices(Path(landmarks_68))
    if landmarks_68 is not None:
        fields["landmarks_68"] = landmarks_68
    return MorphableModel(**fields, source=path)


# ------------------------------------------------------------------ fitting

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


def fit_to_landmarks(model: MorphableModel, landmarks_2d, n_identity: Optional[int] = None,
                     n_expression: Optional[int] = 0,
                     landmark_noise: float = LANDMARK_NOISE,
                     expression_stiffness: float = EXPRESSION_STIFFNESS,
                     regularization: Optional[float] = None,
                     expression_regularization: Optional[float] = None,
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
        sol = _regularized_lstsq(A, b, reg, (lo, hi) if bounded else None, start)
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
            sol = _regularized_lstsq(A[:, keep], b, reg[keep],
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


def _regularized_lstsq(A, b, reg, bounds=None, start=None):
    """argmin ||A u - b||^2 + sum_j reg_j u_j^2, within ``bounds`` (lo, hi)
    when given, from the feasible warm ``start`` (the previous solution).

    Columns are scaled to unit norm first (camera and mode columns differ by
    orders of magnitude). The systems are ~110 x 110: BLAS threads would only
    add overhead (and stall on a loaded machine), so the normal equations,
    their Cholesky solve and the bounded active-set loop run in Numba."""
    norms = np.sqrt((A * A).sum(axis=0) + reg)
    norms[norms == 0] = 1.0
    H, g = _normal_equations(np.ascontiguousarray(A / norms), b, reg / norms ** 2)
    n = len(g)
    lo, hi = (np.full(n, -np.inf), np.full(n, np.inf)) if bounds is None else bounds
    u0 = np.zeros(n) if start is None else np.clip(start, lo, hi) * norms
    u, ok = _box_qp(H, g, lo * norms, hi * norms, u0)
    if not ok:
        raise ValueError("fit_to_landmarks: the least-squares system is singular; use "
                         "regularization > 0 or fewer modes")
    return u / norms


@njit(cache=True)
def _normal_equations(A, b, d):
    """H = A^T A + diag(d) (symmetric), g = A^T b."""
    m, n = A.shape
    H = np.zeros((n, n))
    g = np.zeros(n)
    for r in range(m):
        for i in range(n):
            a = A[r, i]
            if a != 0.0:
                g[i] += a * b[r]
                for j in range(i, n):
                    H[i, j] += a * A[r, j]
    for i in range(n):
        H[i, i] += d[i]
        for j in range(i):
            H[i, j] = H[j, i]
    return H, g


@njit(cache=True)
def _solve_free(H, g, u, free):
    """Solve H[f, f] x = g[f] - H[f, ~f] u[~f] over the free set f by
    Cholesky; returns (x, ok) with ok False when H[f, f] is not positive
    definite."""
    idx = np.flatnonzero(free)
    m = len(idx)
    r = np.empty(m)
    for a in range(m):
        i = idx[a]
        s = g[i]
        for j in range(len(u)):
            if not free[j]:
                s -= H[i, j] * u[j]
        r[a] = s
    L = np.zeros((m, m))
    for a in range(m):
        for c in range(a + 1):
            s = H[idx[a], idx[c]]
            for q in range(c):
                s -= L[a, q] * L[c, q]
            if a == c:
                if s <= 1e-13 * max(H[idx[a], idx[a]], 1e-300):
                    return r, False
                L[a, a] = np.sqrt(s)
            else:
                L[a, c] = s / L[c, c]
    for a in range(m):  # L y = r
        s = r[a]
        for q in range(a):
            s -= L[a, q] * r[q]
        r[a] = s / L[a, a]
    for a in range(m - 1, -1, -1):  # L^T x = y
        s = r[a]
        for q in range(a + 1, m):
            s -= L[q, a] * r[q]
        r[a] = s / L[a, a]
    return r, True


@njit(cache=True)
def _box_qp(H, g, lo, hi, u):
    """Minimize 0.5 u^T H u - g^T u subject to lo <= u <= hi by the primal
    active-set method (as Lawson-Hanson's NNLS), from the feasible ``u``.
    Returns (u, ok)."""
    n = len(g)
    u = u.copy()
    at_lo = u <= lo
    at_hi = (u >= hi) & ~at_lo
    tol = 1e-12 * (1.0 + np.abs(g).max())
    for _ in range(10 * n + 10):
        free = ~(at_lo | at_hi)
        x, ok = _solve_free(H, g, u, free)
        if not ok:
            return u, False
        # step from u toward the subspace minimizer, stopping at the first bound
        alpha, block, block_lo = 1.0, -1, False
        a = 0
        for j in range(n):
            if free[j]:
                if x[a] < lo[j] and (lo[j] - u[j]) / (x[a] - u[j]) < alpha:
                    alpha, block, block_lo = (lo[j] - u[j]) / (x[a] - u[j]), j, True
                elif x[a] > hi[j] and (hi[j] - u[j]) / (x[a] - u[j]) < alpha:
                    alpha, block, block_lo = (hi[j] - u[j]) / (x[a] - u[j]), j, False
                a += 1
        a = 0
        for j in range(n):
            if free[j]:
                u[j] += alpha * (x[a] - u[j])
                a += 1
        if block >= 0:
            if block_lo:
                u[block], at_lo[block] = lo[block], True
            else:
                u[block], at_hi[block] = hi[block], True
            for j in range(n):  # others that reached a bound in the same step
                if free[j] and j != block:
                    if u[j] <= lo[j]:
                        u[j], at_lo[j] = lo[j], True
                    elif u[j] >= hi[j]:
                        u[j], at_hi[j] = hi[j], True
            continue
        # optimal on this face: release the bound whose multiplier has the
        # wrong sign the most, or stop
        grad = H @ u - g
        worst, release = tol, -1
        for j in range(n):
            if at_lo[j] and -grad[j] > worst:
                worst, release = -grad[j], j
            elif at_hi[j] and grad[j] > worst:
                worst, release = grad[j], j
        if release < 0:
            return u, True
        at_lo[release] = False
        at_hi[release] = False
    return u, True


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
