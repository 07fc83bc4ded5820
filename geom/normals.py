"""Vertex normals and the elevation (polar angle) of a normal field."""
from __future__ import annotations

import igl
import numpy as np


def face_normals(V: np.ndarray, F: np.ndarray) -> np.ndarray:
    """Unit normals (m, 3) of the triangles, right-handed in the face order
    (counter-clockwise seen from the side the normal points to). Degenerate
    triangles get a zero normal."""
    V = np.asarray(V, dtype=np.float64)
    F = np.asarray(F, dtype=np.int64)
    n = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    length = np.linalg.norm(n, axis=1, keepdims=True)
    return np.divide(n, length, out=np.zeros_like(n), where=length > 0)


def vertex_normals(V: np.ndarray, F: np.ndarray, weighting: str = "area") -> np.ndarray:
    """Unit vertex normals (n, 3): the average of the incident face normals.

    ``weighting`` is ``"area"`` (libigl's default for smooth scans), ``"angle"``
    (insensitive to how a fan is triangulated) or ``"uniform"``. Vertices that
    no face references get a zero normal rather than NaN.
    """
    kinds = {
        "area": igl.PER_VERTEX_NORMALS_WEIGHTING_TYPE_AREA,
        "angle": igl.PER_VERTEX_NORMALS_WEIGHTING_TYPE_ANGLE,
        "uniform": igl.PER_VERTEX_NORMALS_WEIGHTING_TYPE_UNIFORM,
    }
    if weighting not in kinds:
        raise ValueError(f"weighting must be one of {sorted(kinds)}, got {weighting!r}")
    V = np.ascontiguousarray(V, dtype=np.float64)
    F = np.ascontiguousarray(F, dtype=np.int64)
    N = igl.per_vertex_normals(V, F, kinds[weighting])
    N[~np.isfinite(N).all(axis=1)] = 0.0
    return N


def elevation(normals: np.ndarray, axis=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Polar angle (n,) in radians, in [0, pi], of unit ``normals`` (n, 3)
    measured from the reference ``axis``: 0 where the normal points along the
    axis, pi/2 where it is perpendicular, pi where it points against it.

    For DCE images the axis is the direction toward the viewer, so a surface
    facing the camera has elevation 0 and the silhouette pi/2.
    """
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    cos = np.asarray(normals, dtype=np.float64) @ axis
    return np.arccos(np.clip(cos, -1.0, 1.0))
