"""Mesh files: :func:`load_mesh` and :func:`save_mesh`, the format chosen by
extension (.ply, .obj, .off, .stl, .wrl). The format modules return raw
arrays; this module checks them the same way for every format,
fan-triangulates polygons and resolves per-corner uv, and reports bad input
as :class:`~dce.geom.records.FormatError`.

See docs/dataset-inputs.md (what each format reads, writes and keeps).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .obj_off import _read_obj, _read_off, _write_obj, _write_off
from .ply import _read_ply, _write_ply
from .records import FormatError, Mesh, PathLike, _check_plausible, _existing_file, atomic_write
from .stl import _read_stl, _write_stl
from .vrml import _read_wrl, _write_wrl

_MESH_READERS = {".ply": _read_ply, ".obj": _read_obj, ".off": _read_off,
                 ".stl": _read_stl, ".wrl": _read_wrl}
_MESH_WRITERS = {".ply": _write_ply, ".obj": _write_obj, ".off": _write_off,
                 ".stl": _write_stl, ".wrl": _write_wrl}


def _fan(counts: np.ndarray) -> np.ndarray:
    """Corner indices (t, 3) of the fan triangulation ``(c0, ck, ck+1)``,
    k = 1 .. n-2, of polygons with ``counts`` (all >= 3) corners stored back to
    back in one corner array."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    ntri = counts - 2
    first = np.repeat(starts, ntri)
    k = np.arange(int(ntri.sum())) - np.repeat(np.cumsum(ntri) - ntri, ntri) + 1
    return np.column_stack([first, first + k, first + k + 1])


def _vertex_uv(n: int, corner_v: np.ndarray, corner_uv: np.ndarray) -> np.ndarray | None:
    """Per-vertex uv (n, 2) if every corner of each vertex has the same uv
    (NaN for vertices no face uses), else None (a texture seam)."""
    uv = np.full((n, 2), np.nan)
    uv[corner_v] = corner_uv
    return uv if np.array_equal(uv[corner_v], corner_uv) else None


def _split_uv_seams(corner_v: np.ndarray, corner_uv: np.ndarray):
    """One new vertex per distinct (vertex, uv) pair of the corners.
    Returns (vertex_index (k,) old vertex of each new one, uv (k, 2),
    corner_new (c,) new vertex of each corner); new vertices are sorted by old
    index, so vertices without a seam keep their relative order."""
    key = np.column_stack([corner_v.astype(np.float64), corner_uv])
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    return uniq[:, 0].astype(np.int64), uniq[:, 1:].copy(), inv.reshape(-1)


def load_mesh(path: PathLike, split_uv_seams: bool = False) -> Mesh:
    """Read a triangle mesh from .ply, .obj, .off, .stl or .wrl (see the module
    docstring for what each format keeps).

    Vertices and faces come back in file order; polygons are fan-triangulated.
    ``colors`` are float32 in [0, 1]. ``uv`` is per vertex: taken from
    per-vertex texture coordinates, or from per-corner ones (OBJ ``vt``, PLY
    ``texcoord`` lists) when every corner of a vertex carries the same uv. A
    file whose texture has seams (a vertex with two different uvs, e.g.
    menpo's james.obj) gives ``uv=None`` unless ``split_uv_seams=True``: then
    every distinct (vertex, uv) pair becomes its own vertex (vertices no face
    uses are dropped) and ``mesh.vertex_index`` (k,) gives the file vertex of
    each mesh vertex (with ``split_uv_seams=True`` it is always set, the
    identity when nothing was split). Per-vertex uv derived from corners is
    NaN at vertices that no face uses.

    Raises :class:`FormatError` naming the file for a missing file, an
    unknown extension, unreadable, truncated or trailing data, counts the
    file cannot hold, NaN/infinite vertices or ones beyond
    :data:`MAX_COORDINATE` mm, bad (non-integer, out-of-range) face indices,
    colours outside [0, 1], NaN texture coordinates and meshes without faces.
    """
    path = Path(path)
    reader = _MESH_READERS.get(path.suffix.lower())
    if reader is None:
        raise FormatError(f"{path}: unknown mesh extension {path.suffix!r} "
                          f"(known: {', '.join(sorted(_MESH_READERS))})")
    path = _existing_file(path)
    src = str(path)
    V, counts, corners, colors, uv, corner_uv = reader(path)
    V = np.asarray(V, dtype=np.float64).reshape(-1, 3)
    if len(V) == 0:
        raise FormatError(f"{src}: mesh has no vertices")
    _check_plausible(V, src, "vertex")
    if colors is not None:
        colors = np.asarray(colors, dtype=np.float64)
        bad = ~((colors >= 0.0) & (colors <= 1.0)).all(axis=1)  # NaN fails too
        if bad.any():
            i = int(np.argmax(bad))
            raise FormatError(f"{src}: vertex {i} has colour {colors[i].tolist()}, outside "
                              f"[0, 1] (or 0..255 for 8-bit colours)")
    for name, arr in (("texture coordinate", uv), ("per-corner texture coordinate", corner_uv)):
        if arr is not None and not np.isfinite(arr).all():
            i = int(np.argmax(~np.isfinite(arr).all(axis=1)))
            raise FormatError(f"{src}: {name} {i} is NaN or infinite")
    counts = np.asarray(counts, dtype=np.int64)
    if len(counts) and counts.min() < 3:
        i = int(np.argmax(counts < 3))
        raise FormatError(f"{src}: face {i} has {counts[i]} vertices (need at least 3)")
    if len(corners) and (corners.min() < 0 or corners.max() >= len(V)):
        raise FormatError(f"{src}: face vertex indices span [{corners.min()}, {corners.max()}] "
                          f"but the file has {len(V)} vertices")
    tri = _fan(counts)
    faces = corners[tri]
    vertex_index = np.arange(len(V)) if split_uv_seams else None
    if uv is None and corner_uv is not None:
        uv = _vertex_uv(len(V), corners, corner_uv)
        if uv is None and split_uv_seams:
            vertex_index, uv, corner_new = _split_uv_seams(corners, corner_uv)
            faces = corner_new[tri]
            V = V[vertex_index]
            colors = None if colors is None else colors[vertex_index]
    mesh = Mesh(V, faces, colors, uv).validate(src)
    if vertex_index is not None:
        mesh.vertex_index = vertex_index
    return mesh


def save_mesh(path: PathLike, mesh: Mesh) -> None:
    """Write ``mesh`` as .ply (binary, float64 xyz, uchar colours, float64
    ``texture_u/v``), .obj (full float64 precision, ``vt`` = per-vertex uv,
    colours as ``v x y z r g b``), .off (COFF with uchar colours), .stl (binary,
    float32, no colours or uv) or .wrl (VRML 2.0 IndexedFaceSet with Color
    and TextureCoordinate). Attributes a format cannot hold are not written.
    The file is written to a temporary name and renamed into place."""
    path = Path(path)
    writer = _MESH_WRITERS.get(path.suffix.lower())
    if writer is None:
        raise FormatError(f"{path}: unknown mesh extension {path.suffix!r} "
                          f"(known: {', '.join(sorted(_MESH_WRITERS))})")
    mesh.validate(f"{path} (mesh to save)")
    atomic_write(path, writer(mesh))
