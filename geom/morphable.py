"""Linear 3D morphable models (3DMMs): the model record and its file formats
(the project's ``.npz``, ICT Face Model Light, Basel Face Model 2017).
Re-exports the landmark fit of :mod:`dce.geom.landmark_fit`.

See docs/morphable-model.md (the model, the file layouts).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .landmark_fit import (
    CONTOURS,
    EXPRESSION_STIFFNESS,
    LANDMARK_NOISE,
    SLIDING_ITERATIONS,
    Fit,
    FitGate,
    FitRejected,
    fit_in_frame,
    fit_to_landmarks,
)
from .records import FormatError, Mesh, PathLike, _existing_file

__all__ = [
    "FORMAT", "MorphableModel", "load_model",
    # re-exported from dce.geom.landmark_fit
    "CONTOURS", "EXPRESSION_STIFFNESS", "LANDMARK_NOISE", "SLIDING_ITERATIONS",
    "Fit", "FitGate", "FitRejected", "fit_in_frame", "fit_to_landmarks",
]

FORMAT = "dce-morphable/1"


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
    landmarks_68: np.ndarray | None = None
    expression_basis: np.ndarray | None = None
    expression_names: Sequence[str] | None = None
    expression_range: tuple | None = None
    vertex_region: np.ndarray | None = None
    name: str = ""
    source: Path | None = field(default=None, compare=False)

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

    def validate(self, source: str) -> MorphableModel:
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

    def truncated(self, n_identity: int | None = None,
                  n_expression: int | None = None) -> MorphableModel:
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


def _bfm_pca(f, group: str, path: Path, n3: int | None):
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
