"""The records every geom module shares (:class:`Mesh`, :class:`RangeScan`,
:class:`Landmarks` with the iBUG-68 index groups), the project's
file-content error :class:`FormatError`, the plausibility limits the file
readers apply and the atomic write. It imports none of the format modules.

See docs/dataset-inputs.md (the records' fields and shapes).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np

from .sampling import sample_image_bilinear

PathLike = Union[str, os.PathLike]


class FormatError(ValueError):
    """An input file is malformed; the message names the file and the problem."""


# Plausibility limits for what a face scanner produces (see "Input checks" in
# the README). Coordinates are millimetres; nothing a face scanner sees lies
# 10 m from its origin, so a larger value is a damaged number or a background
# marker read as data.
MAX_COORDINATE = 1e4
# 2D landmarks are photo pixels; no photo is 100,000 pixels wide.
MAX_PIXEL = 1e5
# A range scan with fewer valid points than this cannot hold one triangle.
MIN_SCAN_POINTS = 3


@dataclass
class Mesh:
    """A triangle mesh. ``vertices`` (n, 3) float64, ``faces`` (m, 3) int32."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray | None = None
    uv: np.ndarray | None = None

    def __post_init__(self):
        self.vertices = np.ascontiguousarray(self.vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int32)
        if self.colors is not None:
            self.colors = np.ascontiguousarray(self.colors, dtype=np.float32)
        if self.uv is not None:
            self.uv = np.ascontiguousarray(self.uv, dtype=np.float64)

    @property
    def n_vertices(self) -> int:
        return len(self.vertices)

    @property
    def n_faces(self) -> int:
        return len(self.faces)

    def validate(self, source: str = "mesh") -> Mesh:
        """Raise :class:`FormatError` naming ``source`` if the mesh is unusable."""
        V, F = self.vertices, self.faces
        if V.ndim != 2 or V.shape[1] != 3:
            raise FormatError(f"{source}: vertices must be (n, 3), got {V.shape}")
        if F.ndim != 2 or F.shape[1] != 3:
            raise FormatError(f"{source}: faces must be (m, 3) triangles, got {F.shape}")
        if len(V) == 0:
            raise FormatError(f"{source}: mesh has no vertices")
        if len(F) == 0:
            raise FormatError(f"{source}: mesh has no faces")
        bad = ~np.isfinite(V).all(axis=1)
        if bad.any():
            raise FormatError(
                f"{source}: {bad.sum()} vertices are NaN or infinite "
                f"(first at index {np.flatnonzero(bad)[0]})")
        if F.min() < 0 or F.max() >= len(V):
            raise FormatError(
                f"{source}: face indices span [{F.min()}, {F.max()}] but there are "
                f"{len(V)} vertices")
        for name, arr, width in (("colors", self.colors, 3), ("uv", self.uv, 2)):
            if arr is not None and arr.shape != (len(V), width):
                raise FormatError(
                    f"{source}: {name} must be ({len(V)}, {width}), got {arr.shape}")
        return self

    def submesh(self, keep: np.ndarray) -> Mesh:
        """The faces whose three vertices are all kept; unreferenced vertices are
        dropped. ``keep`` is an (n,) bool mask. Returns the new mesh; its
        ``vertex_index`` maps new vertices to old ones."""
        keep = np.asarray(keep, dtype=bool)
        faces = self.faces[keep[self.faces].all(axis=1)]
        used = np.zeros(len(self.vertices), dtype=bool)
        used[faces.ravel()] = True
        old = np.flatnonzero(used)
        remap = np.full(len(self.vertices), -1, dtype=np.int64)
        remap[old] = np.arange(len(old))
        sub = Mesh(self.vertices[old], remap[faces],
                   None if self.colors is None else self.colors[old],
                   None if self.uv is None else self.uv[old])
        sub.vertex_index = old
        return sub


# ------------------------------------------------------------------ helpers

def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    if not path.is_file():
        raise FormatError(f"{path}: not a regular file")
    return path


def _check_plausible(values: np.ndarray, src: str, what: str,
                     limit: float = MAX_COORDINATE, unit: str = "mm") -> None:
    """FormatError unless every row of ``values`` (k, d) is finite and within
    +-``limit``; ``what`` names a row ("vertex", "landmark", ...)."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), -1)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise FormatError(f"{src}: {bad.sum()} {what} row(s) are NaN or infinite "
                          f"(first at index {np.flatnonzero(bad)[0]})")
    far = (np.abs(values) > limit).any(axis=1)
    if far.any():
        i = int(np.flatnonzero(far)[0])
        raise FormatError(f"{src}: {what} {i} has coordinate {np.abs(values[i]).max():.6g} {unit}, "
                          f"beyond the {limit:g} {unit} a face scanner can produce "
                          f"(damaged number?)")


def _check_terminated(data: bytes, src: str) -> None:
    """Truncation inside the last value: formats whose records are lines and
    whose last record ends in a number (.abs, .lm2, .lm3, ascii PLY, OFF) need
    whitespace (normally the final line break) after that number; a file that
    stops right after a digit may have lost the rest of it."""
    if data and not data[-1:].isspace():
        tail = data[-24:].split()[-1].decode("ascii", "replace")
        raise FormatError(f"{src}: the file ends inside the value {tail!r} with no line break "
                          f"after it (truncated file? a complete file ends with a newline)")


@contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """The one way geom writes a file whole: yields a temporary path beside
    ``path`` to write, renamed over ``path`` when the block ends and removed
    when it raises, so that no reader (in this or another process) ever sees
    a partial file. ``suffix`` ends the temporary name, for writers that
    choose the format by extension (".png", ".gz"); the name always holds
    ".tmp" before it, so that no folder walk mistakes it for an input."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` whole (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)


# ------------------------------------------------------------- range scans

@dataclass
class RangeScan:
    """A range image: one 3D point per pixel of an H x W grid, in image
    orientation (row 0 = top, column 0 = left, as the scanner sees the face).

    ``xyz`` (H, W, 3) float64 mm (the readers put NaN at invalid pixels),
    ``valid`` (H, W) bool, ``texture_path`` the colour photo or None,
    ``uv`` (H, W, 2) float64 or None: normalised texture coordinates of each
    pixel, origin top-left, texture column = u * Wt, row = v * Ht (pixel
    centres at integer coordinates), ``source`` the file read or None.
    """

    xyz: np.ndarray
    valid: np.ndarray
    texture_path: Path | None = None
    uv: np.ndarray | None = None
    source: Path | None = None

    def __post_init__(self):
        self.xyz = np.ascontiguousarray(self.xyz, dtype=np.float64)
        self.valid = np.ascontiguousarray(self.valid, dtype=bool)
        if self.uv is not None:
            self.uv = np.ascontiguousarray(self.uv, dtype=np.float64)
        if self.texture_path is not None:
            self.texture_path = Path(self.texture_path)
        if self.source is not None:
            self.source = Path(self.source)
        H, W = self.valid.shape if self.valid.ndim == 2 else (-1, -1)
        if self.valid.ndim != 2 or self.xyz.shape != (H, W, 3) or (
                self.uv is not None and self.uv.shape != (H, W, 2)):
            raise FormatError(
                f"{self.source or 'range scan'}: need xyz (H, W, 3), valid (H, W), uv (H, W, 2); "
                f"got {self.xyz.shape}, {self.valid.shape}, "
                f"{None if self.uv is None else self.uv.shape}")

    @property
    def shape(self) -> tuple:
        """(H, W) of the grid."""
        return self.valid.shape

    def _usable(self) -> np.ndarray:
        return self.valid & np.isfinite(self.xyz).all(axis=2)

    def grid_spacing(self) -> float:
        """Median 3D distance (mm) between horizontally or vertically adjacent
        valid pixels; NaN if no two valid pixels are adjacent."""
        ok, X = self._usable(), self.xyz
        d = np.concatenate([
            np.linalg.norm(X[:, 1:] - X[:, :-1], axis=2)[ok[:, 1:] & ok[:, :-1]],
            np.linalg.norm(X[1:] - X[:-1], axis=2)[ok[1:] & ok[:-1]]])
        return float(np.median(d)) if d.size else float("nan")

    def to_mesh(self, max_edge: float | None = None, max_edge_factor: float = 5.0,
                keep_uv: bool = True, colors: bool = False) -> Mesh:
        """Triangulate the grid into a :class:`Mesh`.

        Each 2x2 cell of pixels gives two triangles when its four pixels are
        valid (split along the shorter 3D diagonal) and one when exactly three
        are. A triangle is dropped when one of its 3D edges is longer than
        ``max_edge`` mm; by default ``max_edge_factor`` x :meth:`grid_spacing`
        (5x keeps surfaces up to ~78 degrees from facing the scanner and cuts
        the depth jumps at occluding contours). Triangles are counter-clockwise
        as seen in the image, so their normals point toward the scanner (+z
        for a scan whose +z axis points at the viewer). Only pixels used by a
        triangle become vertices, in row-major order.

        ``keep_uv``: copy the scan's uv per vertex (when it has them).
        ``colors``: sample the texture bilinearly at each vertex's uv, or, for
        scans without uv (FRGC), at the pixel itself scaled to the texture size
        (texture registered with the grid).

        The mesh gets ``image_rc`` (n, 2) int64: the (row, col) pixel of each
        vertex, e.g. to lift 2D landmarks to 3D.
        """
        src = str(self.source or "range scan")
        H, W = self.shape
        ok = self._usable().reshape(-1)
        X = self.xyz.reshape(-1, 3)
        idx = np.arange(H * W).reshape(H, W)
        p00, p01 = idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1)
        p10, p11 = idx[1:, :-1].reshape(-1), idx[1:, 1:].reshape(-1)
        v00, v01, v10, v11 = ok[p00], ok[p01], ok[p10], ok[p11]
        full = v00 & v01 & v10 & v11
        main = (np.linalg.norm(X[p00] - X[p11], axis=1)
                <= np.linalg.norm(X[p01] - X[p10], axis=1))  # split along 00-11
        # (row, col) y-down: each triangle below is counter-clockwise on screen.
        cand = np.stack([np.column_stack([p00, p10, p11]), np.column_stack([p00, p11, p01]),
                         np.column_stack([p00, p10, p01]), np.column_stack([p01, p10, p11])], 1)
        keep = np.stack([v00 & v10 & v11 & ~(full & ~main), v00 & v11 & v01 & ~(full & ~main),
                         v00 & v10 & v01 & ~(full & main), v01 & v10 & v11 & ~(full & main)], 1)
        F = cand[keep]
        if max_edge is None:
            max_edge = max_edge_factor * self.grid_spacing()
        T = X[F]
        longest = np.linalg.norm(T - T[:, [1, 2, 0]], axis=2).max(axis=1, initial=0.0)
        F = F[longest <= max_edge]
        if len(F) == 0:
            raise FormatError(f"{src}: no triangle survives ({int(ok.sum())} valid pixels, "
                              f"max_edge {max_edge:.3g} mm)")
        used = np.unique(F)
        remap = np.full(H * W, -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        uv = self.uv.reshape(-1, 2)[used] if keep_uv and self.uv is not None else None
        rgb = self._vertex_colors(used, src) if colors else None
        mesh = Mesh(X[used], remap[F], rgb, uv)
        mesh.image_rc = np.column_stack(np.divmod(used, W))
        return mesh

    def _vertex_colors(self, pixels: np.ndarray, src: str) -> np.ndarray:
        """Texture colour (k, 3) float32 at the given row-major pixel ids."""
        from PIL import Image

        if self.texture_path is None or not self.texture_path.is_file():
            raise FormatError(f"{src}: colours requested but the texture "
                              f"{self.texture_path} is missing")
        with Image.open(self.texture_path) as im:
            img = np.asarray(im.convert("RGB"))
        Ht, Wt = img.shape[:2]
        if self.uv is not None:
            u, v = self.uv.reshape(-1, 2)[pixels].T
        else:
            r, c = np.divmod(pixels, self.shape[1])
            u, v = c / self.shape[1], r / self.shape[0]
        return sample_image_bilinear(img, np.column_stack([u * Wt, v * Ht]))


# --------------------------------------------------------------- landmarks

# iBUG-68 (Multi-PIE) 0-based indices. "Right"/"left" are the subject's:
# the subject's right brow/eye appear on the image left.
IBUG68_JAW = tuple(range(0, 17))
IBUG68_CHIN = 8
IBUG68_RIGHT_BROW = tuple(range(17, 22))
IBUG68_LEFT_BROW = tuple(range(22, 27))
IBUG68_BROWS = IBUG68_RIGHT_BROW + IBUG68_LEFT_BROW
IBUG68_NOSE_BRIDGE = tuple(range(27, 31))
IBUG68_NOSTRILS = tuple(range(31, 36))
IBUG68_NOSE = IBUG68_NOSE_BRIDGE + IBUG68_NOSTRILS
IBUG68_NOSE_TIP = 30
IBUG68_RIGHT_EYE = tuple(range(36, 42))
IBUG68_LEFT_EYE = tuple(range(42, 48))
IBUG68_EYES = IBUG68_RIGHT_EYE + IBUG68_LEFT_EYE
IBUG68_OUTER_LIPS = tuple(range(48, 60))
IBUG68_INNER_LIPS = tuple(range(60, 68))
IBUG68_MOUTH = IBUG68_OUTER_LIPS + IBUG68_INNER_LIPS
IBUG68_GROUPS = {"jaw": IBUG68_JAW, "right_brow": IBUG68_RIGHT_BROW,
                 "left_brow": IBUG68_LEFT_BROW, "nose_bridge": IBUG68_NOSE_BRIDGE,
                 "nostrils": IBUG68_NOSTRILS, "right_eye": IBUG68_RIGHT_EYE,
                 "left_eye": IBUG68_LEFT_EYE, "outer_lips": IBUG68_OUTER_LIPS,
                 "inner_lips": IBUG68_INNER_LIPS}
BOSPHORUS_NOSE_TIP = "Nose tip"


def _label_key(label: str) -> str:
    """Labels compare case-, space- and underscore-insensitively
    ("Nose tip" == "nose_tip")."""
    return " ".join(label.replace("_", " ").lower().split())


@dataclass
class Landmarks:
    """Named points: ``points`` (k, 2) pixel (x = column, y = row) or (k, 3) mm,
    ``labels`` k strings (``"0" .. "k-1"`` for formats without names),
    ``source`` the file read or None.

    ``lm["Nose tip"]`` or ``lm[30]`` gives one point; ``lm.as_array(order)``
    the points of a sequence of labels or indices.
    """

    points: np.ndarray
    labels: list = field(default_factory=list)
    source: Path | None = None

    def __post_init__(self):
        self.points = np.array(self.points, dtype=np.float64)
        if self.points.ndim != 2 or self.points.shape[1] not in (2, 3):
            raise FormatError(f"{self.source or 'landmarks'}: points must be (k, 2) or (k, 3), "
                              f"got {self.points.shape}")
        self.labels = [str(s) for s in self.labels] or [str(i) for i in range(len(self.points))]
        if len(self.labels) != len(self.points):
            raise FormatError(f"{self.source or 'landmarks'}: {len(self.labels)} labels for "
                              f"{len(self.points)} points")
        if self.source is not None:
            self.source = Path(self.source)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def dim(self) -> int:
        return self.points.shape[1]

    def index(self, label: str) -> int:
        """Position of ``label``; KeyError naming the available labels."""
        key = _label_key(label)
        for i, s in enumerate(self.labels):
            if _label_key(s) == key:
                return i
        raise KeyError(f"{self.source or 'landmarks'}: no landmark {label!r} "
                       f"(have: {', '.join(self.labels)})")

    def __contains__(self, label: str) -> bool:
        key = _label_key(label)
        return any(_label_key(s) == key for s in self.labels)

    def __getitem__(self, key):
        """A label -> its point (d,); an int, slice or index array -> points."""
        if isinstance(key, str):
            return self.points[self.index(key)]
        return self.points[key]

    def as_array(self, order: Sequence) -> np.ndarray:
        """(len(order), d) points for a sequence of labels and/or indices."""
        return np.stack([self[k] for k in order]) if len(order) else np.zeros((0, self.dim))


def _ibug68(landmarks, what: str) -> np.ndarray:
    pts = landmarks.points if isinstance(landmarks, Landmarks) else np.asarray(landmarks, float)
    if pts.ndim != 2 or pts.shape[0] != 68 or pts.shape[1] not in (2, 3):
        src = getattr(landmarks, "source", None) or "landmarks"
        raise ValueError(f"{src}: {what} needs 68 iBUG points (68, 2|3), got shape {pts.shape}")
    return pts


def nose_tip(landmarks) -> np.ndarray:
    """The nose tip (d,): the Bosphorus ``"Nose tip"`` label when present,
    else iBUG-68 point 30 of a 68-point :class:`Landmarks` or (68, d) array."""
    if isinstance(landmarks, Landmarks) and BOSPHORUS_NOSE_TIP in landmarks:
        return landmarks[BOSPHORUS_NOSE_TIP].copy()
    return _ibug68(landmarks, "nose_tip")[IBUG68_NOSE_TIP].copy()


def jaw_contour(landmarks) -> np.ndarray:
    """The 17 iBUG-68 jaw points (17, d), from the subject's right ear to the
    left, chin at index 8."""
    return _ibug68(landmarks, "jaw_contour")[list(IBUG68_JAW)].copy()
