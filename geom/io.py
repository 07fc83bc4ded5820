"""Records and readers/writers for meshes, range scans and landmarks.

Records:

- :class:`Mesh`: ``vertices`` (n, 3) float64 mm, ``faces`` (m, 3) int32,
  optional ``colors`` (n, 3) float32 in [0, 1], optional ``uv`` (n, 2) float64.
- :class:`RangeScan`: a structured range grid, ``xyz`` (H, W, 3) float64 mm,
  ``valid`` (H, W) bool, ``texture_path`` and optional ``uv`` (H, W, 2).
- :class:`Landmarks`: ``points`` (k, 2) or (k, 3) float64 and ``labels``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


class FormatError(ValueError):
    """An input file is malformed; the message names the file and the problem."""


@dataclass
class Mesh:
    """A triangle mesh. ``vertices`` (n, 3) float64, ``faces`` (m, 3) int32."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: Optional[np.ndarray] = None
    uv: Optional[np.ndarray] = None

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

    def validate(self, source: str = "mesh") -> "Mesh":
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

    def submesh(self, keep: np.ndarray) -> "Mesh":
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
