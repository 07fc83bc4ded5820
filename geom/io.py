"""Records and readers/writers for meshes, range scans and landmarks.

Records:

- :class:`Mesh`: ``vertices`` (n, 3) float64 mm, ``faces`` (m, 3) int32,
  optional ``colors`` (n, 3) float32 in [0, 1], optional ``uv`` (n, 2) float64.
- :class:`RangeScan`: a structured range grid, ``xyz`` (H, W, 3) float64 mm,
  ``valid`` (H, W) bool, ``texture_path`` and optional ``uv`` (H, W, 2).
- :class:`Landmarks`: ``points`` (k, 2) or (k, 3) float64 and ``labels``.

Mesh files (:func:`load_mesh`, :func:`save_mesh`), chosen by extension:

====== ================================ ===================================
format read / write                      attributes kept
====== ================================ ===================================
.ply   numpy; binary (LE/BE) and ascii   colours (8-bit), per-vertex uv
       in, binary little-endian out      (``texture_u/v``, ``u/v``, ``s/t``)
                                         or per-corner ``texcoord`` lists
.obj   numpy                             per-vertex uv from ``vt``, colours
                                         (``v x y z r g b`` extension)
.off   numpy                             colours (``COFF``, 8-bit)
.stl   numpy; binary and ascii in,       geometry only; identical corner
       binary out                        positions are welded on load
.wrl   pymeshlab in, numpy out           colours (8-bit); geometry parsed as
                                         float32; uv written, not read
====== ================================ ===================================

Polygons are fan-triangulated ``(c0, ck, ck+1)``. pymeshlab is used only to
parse VRML: on every format it silently deletes NaN vertices (re-indexing the
rest) and faces with a repeated vertex, which would hide broken input (for
.wrl it still does), its OFF writer emits files that its own reader misreads,
and its OBJ/VRML readers truncate colours. The numpy readers keep the file's
vertices and faces as they are and report bad input as :class:`FormatError`;
the binary PLY reader is a structured ``np.frombuffer`` view (262k vertices in
~0.03 s).

Range scans: FRGC ``.abs``/``.abs.gz`` (:func:`read_abs`, :func:`write_abs`)
and Bosphorus ``.bnt`` (:func:`read_bnt`, :func:`write_bnt`), both returned in
image orientation (row 0 = top of the face as the scanner sees it).
Landmarks: Bosphorus ``.lm2``/``.lm3``, iBUG ``.pts``, plain ``.txt``/``.csv``
(:func:`read_landmarks`, :func:`write_landmarks`) and the iBUG-68 index groups.
All writers write a temporary file next to the target and rename it, so a
reader never sees a half-written file.
"""
from __future__ import annotations

import gzip
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from numba import njit

PathLike = Union[str, os.PathLike]


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


# ------------------------------------------------------------------ helpers

def _existing_file(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise FormatError(f"{path}: no such file")
    if not path.is_file():
        raise FormatError(f"{path}: not a regular file")
    return path


def _atomic_write(path: PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it over
    ``path`` (readers in other processes never see a partial file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def _vertex_uv(n: int, corner_v: np.ndarray, corner_uv: np.ndarray) -> Optional[np.ndarray]:
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


# ---------------------------------------------------------------- mesh I/O

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
    unknown extension, unreadable or truncated data, NaN/infinite vertices,
    bad face indices and meshes without faces.
    """
    path = Path(path)
    reader = _MESH_READERS.get(path.suffix.lower())
    if reader is None:
        raise FormatError(f"{path}: unknown mesh extension {path.suffix!r} "
                          f"(known: {', '.join(sorted(_MESH_READERS))})")
    path = _existing_file(path)
    src = str(path)
    V, counts, corners, colors, uv, corner_uv = reader(path)
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
    _atomic_write(path, writer(mesh))


# --- PLY

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
              "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
              "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _ply_header(raw: bytes, src: str):
    """(format, elements, data offset); elements are (name, count, props) with
    props (name, numpy type code, count type code or None for scalars)."""
    end = raw.find(b"end_header")
    if not raw.startswith(b"ply") or end < 0:
        raise FormatError(f"{src}: not a PLY file (no 'ply' magic or no 'end_header')")
    nl = raw.find(b"\n", end)
    start = len(raw) if nl < 0 else nl + 1
    fmt, elements = None, []
    for no, line in enumerate(raw[:end].decode("ascii", "replace").splitlines()[1:], 2):
        t = line.split()
        if not t or t[0] in ("comment", "obj_info"):
            continue
        try:
            if t[0] == "format":
                fmt = t[1]
                if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
                    raise KeyError(fmt)
            elif t[0] == "element":
                elements.append((t[1], int(t[2]), []))
            elif t[0] == "property" and t[1] == "list":
                elements[-1][2].append((t[4], _PLY_TYPES[t[3]], _PLY_TYPES[t[2]]))
            elif t[0] == "property":
                elements[-1][2].append((t[2], _PLY_TYPES[t[1]], None))
            else:
                raise KeyError(t[0])
        except (IndexError, KeyError, ValueError):
            raise FormatError(f"{src}: header line {no}: cannot parse {line.strip()!r}") from None
    if fmt is None:
        raise FormatError(f"{src}: PLY header has no 'format' line")
    return fmt, elements, start


@njit(cache=True)
def _ply_walk(buf, pos, n, sizes, csizes, big):
    """Byte offset of every property of each of ``n`` records starting at
    ``pos`` (a PLY element whose list lengths vary; ``csizes[p]`` is the size
    of list p's count, 0 for scalars). Returns (offsets, list counts, end
    offset), end = -1 when the data stops early."""
    P = sizes.shape[0]
    off = np.zeros((n, P), np.int64)
    cnt = np.zeros((n, P), np.int64)
    L = buf.shape[0]
    for i in range(n):
        for p in range(P):
            off[i, p] = pos
            cs = csizes[p]
            if cs == 0:
                pos += sizes[p]
            else:
                if pos + cs > L:
                    return off, cnt, -1
                c = 0
                for b in range(cs):
                    c = c * 256 + np.int64(buf[pos + b] if big else buf[pos + cs - 1 - b])
                cnt[i, p] = c
                pos += cs + c * sizes[p]
            if pos > L:
                return off, cnt, -1
    return off, cnt, pos


def _gather(u8: np.ndarray, starts: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Values of ``dtype`` stored at byte offsets ``starts`` of ``u8``."""
    idx = starts[:, None] + np.arange(dtype.itemsize)
    return np.ascontiguousarray(u8[idx]).view(dtype).reshape(-1)


def _ply_binary_element(raw, pos, name, count, props, order, src):
    """Parse one binary element; scalars -> array, lists -> (counts, flat)."""
    def truncated():
        return FormatError(f"{src}: binary data ends inside element '{name}' "
                           f"({count} records declared; truncated file?)")
    # Fast path: every list as long as in the first record -> one structured view.
    fields, q = [], pos
    for i, (pname, t, ct) in enumerate(props):
        if ct is None:
            fields.append((pname, order + t))
            q += np.dtype(t).itemsize
        else:
            if q + np.dtype(ct).itemsize > len(raw):
                raise truncated()
            c = int(np.frombuffer(raw, order + ct, 1, q)[0]) if count else 0
            fields += [(f"__count{i}", order + ct), (pname, order + t, (c,))]
            q += np.dtype(ct).itemsize + c * np.dtype(t).itemsize
    dt = np.dtype(fields)
    end = pos + count * dt.itemsize
    if end <= len(raw):
        rec = np.frombuffer(raw, dt, count, pos)
        lists = [(i, p) for i, p in enumerate(props) if p[2] is not None]
        if all((rec[f"__count{i}"] == rec.dtype[p[0]].shape[0]).all() for i, p in lists):
            out = {}
            for i, (pname, t, ct) in enumerate(props):
                col = rec[pname]
                out[pname] = col.copy() if ct is None else (
                    np.full(count, col.shape[1], np.int64), col.reshape(-1).copy())
            return out, end
    # General path: list lengths vary -> walk the records (numba).
    u8 = np.frombuffer(raw, np.uint8)
    sizes = np.array([np.dtype(t).itemsize for _, t, _ in props], np.int64)
    csizes = np.array([0 if ct is None else np.dtype(ct).itemsize for _, _, ct in props], np.int64)
    off, cnt, end = _ply_walk(u8, pos, count, sizes, csizes, order == ">")
    if end < 0:
        raise truncated()
    out = {}
    for p, (pname, t, ct) in enumerate(props):
        dtype = np.dtype(order + t)
        if ct is None:
            out[pname] = _gather(u8, off[:, p], dtype)
        else:
            c = cnt[:, p]
            first = np.repeat(off[:, p] + csizes[p], c)
            within = np.arange(int(c.sum())) - np.repeat(np.cumsum(c) - c, c)
            out[pname] = (c, _gather(u8, first + within * dtype.itemsize, dtype))
    return out, end


def _ply_ascii_element(tokens, pos, name, count, props, src):
    """Parse one ascii element from the token list (values as float64)."""
    def number(chunk):
        try:
            return np.array(chunk, dtype=np.float64)
        except ValueError:
            for x in chunk:
                try:
                    float(x)
                except ValueError:
                    raise FormatError(f"{src}: element '{name}': non-numeric value {x!r}") from None
            raise
    # Record length from the first record's list counts (fast path: uniform).
    width, q = 0, pos
    for pname, t, ct in props:
        if ct is None:
            width, q = width + 1, q + 1
        else:
            c = int(number(tokens[q:q + 1])[0]) if q < len(tokens) else 0
            width, q = width + 1 + c, q + 1 + c
    if pos + count * width > len(tokens):
        uniform = False
    else:
        table = number(tokens[pos:pos + count * width]).reshape(count, width)
        cols, j = [], 0
        for pname, t, ct in props:
            if ct is None:
                cols.append(j)
                j += 1
            else:
                cols.append(j)
                j += 1 + (int(table[0, j]) if count else 0)
        uniform = count == 0 or all(ct is None or (table[:, c] == table[0, c]).all()
                                    for (pname, t, ct), c in zip(props, cols))
    if uniform:
        out = {}
        for (pname, t, ct), c in zip(props, cols):
            if ct is None:
                out[pname] = table[:, c]
            else:
                k = int(table[0, c]) if count else 0
                out[pname] = (np.full(count, k, np.int64), table[:, c + 1:c + 1 + k].reshape(-1))
        return out, pos + count * width
    # Varying list lengths: walk the records.
    scal = {p[0]: [] for p in props if p[2] is None}
    lists = {p[0]: ([], []) for p in props if p[2] is not None}
    q = pos
    for _ in range(count):
        for pname, t, ct in props:
            if q >= len(tokens):
                raise FormatError(f"{src}: data ends inside element '{name}' "
                                  f"({count} records declared; truncated file?)")
            if ct is None:
                scal[pname].append(tokens[q])
                q += 1
            else:
                c = int(number(tokens[q:q + 1])[0])
                lists[pname][0].append(c)
                lists[pname][1].extend(tokens[q + 1:q + 1 + c])
                q += 1 + c
    if q > len(tokens):
        raise FormatError(f"{src}: data ends inside element '{name}' (truncated file?)")
    out = {k: number(v) for k, v in scal.items()}
    out.update({k: (np.array(c, np.int64), number(v)) for k, (c, v) in lists.items()})
    return out, q


_PLY_COLOR_NAMES = (("red", "green", "blue"), ("diffuse_red", "diffuse_green", "diffuse_blue"),
                    ("r", "g", "b"))
_PLY_UV_NAMES = (("texture_u", "texture_v"), ("u", "v"), ("s", "t"), ("texture_s", "texture_t"))


def _read_ply(path: Path):
    src = str(path)
    raw = path.read_bytes()
    fmt, elements, pos = _ply_header(raw, src)
    data, types = {}, {}
    if fmt == "ascii":
        tokens, tpos = raw[pos:].decode("ascii", "replace").split(), 0
    for name, count, props in elements:
        if fmt == "ascii":
            data[name], tpos = _ply_ascii_element(tokens, tpos, name, count, props, src)
        else:
            order = "<" if fmt == "binary_little_endian" else ">"
            data[name], pos = _ply_binary_element(raw, pos, name, count, props, order, src)
        types[name] = {p[0]: p[1] for p in props}
    if fmt == "ascii" and tpos != len(tokens):
        raise FormatError(f"{src}: {len(tokens) - tpos} values after the last element")
    vert = data.get("vertex")
    if vert is None or not all(k in vert for k in "xyz"):
        raise FormatError(f"{src}: no 'vertex' element with x, y, z properties")
    V = np.column_stack([vert["x"], vert["y"], vert["z"]]).astype(np.float64)
    colors = None
    for names in _PLY_COLOR_NAMES:
        if all(k in vert for k in names):
            t = np.dtype(types["vertex"][names[0]])
            scale = 1.0 if t.kind == "f" else float(np.iinfo(t).max)
            colors = np.column_stack([vert[k] for k in names]).astype(np.float64) / scale
            break
    uv = None
    for names in _PLY_UV_NAMES:
        if all(k in vert for k in names):
            uv = np.column_stack([vert[k] for k in names]).astype(np.float64)
            break
    face = data.get("face", {})
    key = next((k for k in ("vertex_indices", "vertex_index")
                if isinstance(face.get(k), tuple)), None)
    if key is None:
        counts, corners = np.zeros(0, np.int64), np.zeros(0, np.int64)
    else:
        counts, flat = face[key]
        corners = flat.astype(np.int64)
    corner_uv = None
    if isinstance(face.get("texcoord"), tuple) and np.array_equal(face["texcoord"][0], 2 * counts):
        corner_uv = face["texcoord"][1].astype(np.float64).reshape(-1, 2)
    return V, counts, corners, colors, uv, corner_uv


def _write_ply(mesh: Mesh) -> bytes:
    n, m = mesh.n_vertices, mesh.n_faces
    fields = [("x", "<f8"), ("y", "<f8"), ("z", "<f8")]
    props = ["property double x", "property double y", "property double z"]
    if mesh.colors is not None:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
        props += ["property uchar red", "property uchar green", "property uchar blue"]
    if mesh.uv is not None:
        fields += [("texture_u", "<f8"), ("texture_v", "<f8")]
        props += ["property double texture_u", "property double texture_v"]
    vert = np.empty(n, dtype=fields)
    vert["x"], vert["y"], vert["z"] = mesh.vertices.T
    if mesh.colors is not None:
        rgb = np.round(np.clip(mesh.colors, 0.0, 1.0) * 255.0).astype(np.uint8)
        vert["red"], vert["green"], vert["blue"] = rgb.T
    if mesh.uv is not None:
        vert["texture_u"], vert["texture_v"] = mesh.uv.T
    face = np.empty(m, dtype=[("n", "u1"), ("i", "<i4", (3,))])
    face["n"], face["i"] = 3, mesh.faces
    header = "\n".join(["ply", "format binary_little_endian 1.0",
                        "comment written by dce.geom.io", f"element vertex {n}", *props,
                        f"element face {m}", "property list uchar int vertex_indices",
                        "end_header"]) + "\n"
    return header.encode("ascii") + vert.tobytes() + face.tobytes()


# --- text records (OBJ, OFF)

def _scan_records(payload: bytes, corners: bool):
    """Vectorised parse of newline-separated records of whitespace-separated
    numbers (``corners``: OBJ face corners ``v``, ``v/t``, ``v/t/n``,
    ``v//n``). Returns (values, tokens per record, numbers per token, token
    has a texture field) or None if some token does not parse."""
    b = np.frombuffer(payload, np.uint8)
    ws = b <= 32  # space, tab, CR, LF
    starts = np.flatnonzero(~ws & np.r_[True, ws[:-1]])
    ends = np.r_[np.flatnonzero(b == 10), len(b)]
    ntok = np.diff(np.r_[0, np.searchsorted(starts, ends)])
    nval, has_t = np.ones(len(starts), np.int64), np.zeros(len(starts), bool)
    if corners:
        slash = np.flatnonzero(b == ord("/"))
        tok = np.searchsorted(starts, slash, side="right") - 1
        nslash = np.bincount(tok, minlength=len(starts))
        empty = np.zeros(len(starts), bool)
        empty[tok[:-1][np.diff(slash) == 1]] = True  # "v//n": no texture index
        nval, has_t = nslash + 1 - empty, (nslash >= 1) & ~empty
        payload = payload.replace(b"/", b" ")
    try:
        values = np.fromstring(payload, sep=" ")
    except ValueError:
        return None
    return (values, ntok, nval, has_t) if values.size == nval.sum() else None


def _records(lines: list, linenos: list, src: str, what: str, corners: bool = False):
    """:func:`_scan_records` over ``lines`` (bytes, keyword removed); a parse
    error names the first bad line."""
    if not lines:
        return np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    parsed = _scan_records(b"\n".join(lines), corners)
    if parsed is not None:
        return parsed
    for line, no in zip(lines, linenos):
        if _scan_records(line, corners) is None:
            raise FormatError(f"{src}: line {no}: cannot parse {what} "
                              f"{line.decode('ascii', 'replace').strip()!r}")
    raise FormatError(f"{src}: cannot parse the {what} lines")


def _check_width(ntok, need, linenos, src, what):
    if len(ntok) and ntok.min() < need:
        i = int(np.argmax(ntok < need))
        raise FormatError(f"{src}: line {linenos[i]}: {what} needs at least {need} numbers, "
                          f"found {ntok[i]}")


def _indices(values, line_of, src, what):
    """Float-parsed indices -> int64; non-integers name their line."""
    bad = ~(np.isfinite(values) & (values == np.round(values)))
    if bad.any():
        i = int(np.argmax(bad))
        raise FormatError(f"{src}: line {line_of[i]}: {what} {values[i]!r} is not an integer")
    return values.astype(np.int64)


# --- OBJ

def _read_obj(path: Path):
    src = str(path)
    lines = [line.strip() for line in path.read_bytes().split(b"\n")]

    def take(keyword):
        keys = (keyword + b" ", keyword + b"\t")
        sel = [i for i, line in enumerate(lines) if line.startswith(keys)]
        return [lines[i][len(keyword) + 1:] for i in sel], [i + 1 for i in sel]

    (v, v_no), (vt, vt_no), (f, f_no) = take(b"v"), take(b"vt"), take(b"f")
    vals, ntok, _, _ = _records(v, v_no, src, "vertex")
    _check_width(ntok, 3, v_no, src, "vertex")
    first = np.cumsum(ntok) - ntok
    V = vals[first[:, None] + np.arange(3)]
    colors = None
    if len(ntok) and (ntok == 6).all():  # "v x y z r g b" extension
        colors = vals[first[:, None] + np.arange(3, 6)]
        if colors.max(initial=0.0) > 1.0:  # some writers use 0..255
            colors = colors / 255.0
    vals, ntok, _, _ = _records(vt, vt_no, src, "texture coordinate")
    _check_width(ntok, 2, vt_no, src, "texture coordinate")
    T = vals[(np.cumsum(ntok) - ntok)[:, None] + np.arange(2)]
    vals, counts, nval, has_t = _records(f, f_no, src, "face", corners=True)
    line_of = np.repeat(np.array(f_no, dtype=np.int64), counts)
    first = np.cumsum(nval) - nval

    def resolve(idx, def_lines, what):
        # OBJ indices are 1-based; negative ones count back from the last
        # element defined before the face's line.
        idx = _indices(idx, line_of, src, f"{what} index")
        if (idx == 0).any():
            raise FormatError(f"{src}: line {line_of[np.argmax(idx == 0)]}: "
                              f"{what} index 0 (OBJ indices start at 1)")
        before = np.searchsorted(np.array(def_lines, dtype=np.int64), line_of)
        return np.where(idx > 0, idx - 1, before + idx)

    corners = resolve(vals[first], v_no, "vertex")
    corner_uv = None
    if len(has_t) and has_t.all() and len(T):
        ti = resolve(vals[first + 1], vt_no, "texture")
        if ti.min() < 0 or ti.max() >= len(T):
            bad = int(np.argmax((ti < 0) | (ti >= len(T))))
            raise FormatError(f"{src}: line {line_of[bad]}: texture index out of range "
                              f"({len(T)} vt entries)")
        corner_uv = T[ti]
    return V, counts, corners, colors, None, corner_uv


def _write_obj(mesh: Mesh) -> bytes:
    out = ["# written by dce.geom.io"]
    V = mesh.vertices.tolist()
    if mesh.colors is None:
        out += [f"v {x!r} {y!r} {z!r}" for x, y, z in V]
    else:
        out += [f"v {x!r} {y!r} {z!r} {r:.9g} {g:.9g} {b:.9g}"
                for (x, y, z), (r, g, b) in zip(V, mesh.colors.tolist())]
    F = (mesh.faces.astype(np.int64) + 1).tolist()
    if mesh.uv is None:
        out += [f"f {a} {b} {c}" for a, b, c in F]
    else:
        out += [f"vt {u!r} {v!r}" for u, v in mesh.uv.tolist()]
        out += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in F]
    return ("\n".join(out) + "\n").encode("ascii")


# --- OFF

def _read_off(path: Path):
    src = str(path)
    lines = [(no, t) for no, line in enumerate(path.read_bytes().split(b"\n"), 1)
             if (t := line.split(b"#", 1)[0].strip())]
    if not lines:
        raise FormatError(f"{src}: empty file")
    no, head = lines[0][0], lines[0][1].split()
    m = re.fullmatch(rb"(ST)?(C)?(N)?OFF", head[0])
    if m is None:
        raise FormatError(f"{src}: line {no}: expected an OFF header (OFF, COFF, NOFF, STOFF, "
                          f"...), found {head[0].decode('ascii', 'replace')!r}")
    has_st, has_c, has_n = (g is not None for g in m.groups())
    body = lines[1:]
    if len(head) == 1:  # counts on their own line
        if not body:
            raise FormatError(f"{src}: no element counts after the header")
        (no, counts_line), body = body[0], body[1:]
        head = [head[0]] + counts_line.split()
    try:
        nv, nf = int(head[1]), int(head[2])
    except (IndexError, ValueError):
        raise FormatError(f"{src}: line {no}: expected 'vertices faces edges' counts") from None
    if len(body) < nv + nf:
        raise FormatError(f"{src}: {nv} vertices and {nf} faces declared but only "
                          f"{len(body)} data lines (truncated file?)")
    v_no, v = [n for n, _ in body[:nv]], [t for _, t in body[:nv]]
    vals, ntok, _, _ = _records(v, v_no, src, "vertex")
    _check_width(ntok, 3 + 3 * has_n + 3 * has_c + 2 * has_st, v_no, src,
                 f"{m.group(0).decode()} vertex")
    first = np.cumsum(ntok) - ntok
    V = vals[first[:, None] + np.arange(3)]
    colors = uv = None
    if has_c:  # x y z [nx ny nz] r g b [a] [s t] (Geomview order)
        colors = vals[first[:, None] + 3 + 3 * has_n + np.arange(3)]
        if colors.max(initial=0.0) > 1.0:  # integer colours are 0..255
            colors = colors / 255.0
    if has_st:
        uv = vals[(first + ntok - 2)[:, None] + np.arange(2)]
    f_no, f = [n for n, _ in body[nv:nv + nf]], [t for _, t in body[nv:nv + nf]]
    vals, ntok, _, _ = _records(f, f_no, src, "face")
    first = np.cumsum(ntok) - ntok
    f_no = np.array(f_no, dtype=np.int64)
    counts = _indices(vals[first], f_no, src, "face size")
    if (counts < 3).any():
        raise FormatError(f"{src}: line {f_no[np.argmax(counts < 3)]}: face with "
                          f"{counts[np.argmax(counts < 3)]} vertices (need at least 3)")
    if (ntok < counts + 1).any():
        raise FormatError(f"{src}: line {f_no[np.argmax(ntok < counts + 1)]}: face lists fewer "
                          f"vertices than its count")
    within = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    corners = _indices(vals[np.repeat(first + 1, counts) + within],
                       np.repeat(f_no, counts), src, "vertex index")
    return V, counts, corners, colors, uv, None


def _write_off(mesh: Mesh) -> bytes:
    V = mesh.vertices.tolist()
    if mesh.colors is None:
        out = ["OFF", f"{mesh.n_vertices} {mesh.n_faces} 0"]
        out += [f"{x!r} {y!r} {z!r}" for x, y, z in V]
    else:
        rgb = np.round(np.clip(mesh.colors, 0.0, 1.0) * 255.0).astype(np.int64).tolist()
        out = ["COFF", f"{mesh.n_vertices} {mesh.n_faces} 0"]
        out += [f"{x!r} {y!r} {z!r} {r} {g} {b} 255" for (x, y, z), (r, g, b) in zip(V, rgb)]
    out += [f"3 {a} {b} {c}" for a, b, c in mesh.faces.tolist()]
    return ("\n".join(out) + "\n").encode("ascii")


# --- STL

def _read_stl(path: Path):
    src = str(path)
    raw = path.read_bytes()
    n = struct.unpack_from("<I", raw, 80)[0] if len(raw) >= 84 else -1
    if n >= 0 and len(raw) == 84 + 50 * n:
        rec = np.frombuffer(raw, np.dtype([("n", "<f4", (3,)), ("v", "<f4", (3, 3)),
                                           ("a", "<u2")]), n, 84)
        P = rec["v"].reshape(-1, 3).astype(np.float64)
    elif raw.lstrip()[:5].lower() == b"solid" and b"facet" in raw:
        vals = re.findall(rb"vertex\s+(\S+)\s+(\S+)\s+(\S+)", raw)
        try:
            P = np.array([[float(x) for x in v] for v in vals], dtype=np.float64).reshape(-1, 3)
        except ValueError:
            raise FormatError(f"{src}: non-numeric vertex coordinate in ASCII STL") from None
        if len(P) % 3:
            raise FormatError(f"{src}: ASCII STL has {len(P)} vertices, not a multiple of 3")
    else:
        want = f"84 + 50 x {n} = {84 + 50 * n}" if n >= 0 else "at least 84"
        raise FormatError(f"{src}: neither ASCII STL nor binary STL: {len(raw)} bytes, a binary "
                          f"STL needs {want} (truncated file?)")
    bad = ~np.isfinite(P).all(axis=1)
    if bad.any():
        raise FormatError(f"{src}: triangle {np.flatnonzero(bad)[0] // 3} has a NaN or "
                          f"infinite vertex")
    # STL stores each triangle's corners: weld equal positions, numbered in
    # order of first appearance. Sorting the bit patterns is exact; +0.0 turns
    # -0.0 into 0.0 first.
    if len(P) == 0:
        return P, np.zeros(0, np.int64), np.zeros(0, np.int64), None, None, None
    K = (P + 0.0).view(np.int64)
    order = np.lexsort(K.T[::-1])  # stable: each run starts with its first appearance
    Ks = K[order]
    new = np.r_[True, (Ks[1:] != Ks[:-1]).any(axis=1)]
    uid = np.empty(len(P), np.int64)
    uid[order] = np.cumsum(new) - 1
    first = order[new]
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return (P[np.sort(first)], np.full(len(P) // 3, 3, np.int64), rank[uid], None, None, None)


def _write_stl(mesh: Mesh) -> bytes:
    T = mesh.vertices[mesh.faces]
    N = np.cross(T[:, 1] - T[:, 0], T[:, 2] - T[:, 0])
    length = np.linalg.norm(N, axis=1, keepdims=True)
    N = np.divide(N, length, out=np.zeros_like(N), where=length > 0)
    rec = np.zeros(mesh.n_faces, np.dtype([("n", "<f4", (3,)), ("v", "<f4", (3, 3)),
                                           ("a", "<u2")]))
    rec["n"], rec["v"] = N, T
    header = b"binary STL written by dce.geom.io".ljust(80, b" ")
    return header + struct.pack("<I", mesh.n_faces) + rec.tobytes()


# --- VRML

def _read_wrl(path: Path):
    import pymeshlab  # only VRML needs it; importing it costs ~0.2 s

    ms = pymeshlab.MeshSet()
    try:
        ms.load_new_mesh(str(path))
    except pymeshlab.PyMeshLabException as e:
        detail = " ".join(str(e).split())
        raise FormatError(f"{path}: cannot parse VRML ({detail})") from None
    m = ms.current_mesh()
    F = m.face_matrix().astype(np.int64)
    colors = m.vertex_color_matrix()[:, :3] if m.has_vertex_color() else None
    return (m.vertex_matrix(), np.full(len(F), 3, np.int64), F.reshape(-1), colors, None, None)


def _write_wrl(mesh: Mesh) -> bytes:
    out = ["#VRML V2.0 utf8", "# written by dce.geom.io", "Shape {", "  geometry IndexedFaceSet {",
           "    solid FALSE", "    coord Coordinate { point ["]
    out += [f"      {x!r} {y!r} {z!r}," for x, y, z in mesh.vertices.tolist()]
    out.append("    ] }")
    if mesh.colors is not None:
        out += ["    colorPerVertex TRUE", "    color Color { color ["]
        out += [f"      {r:.9g} {g:.9g} {b:.9g}," for r, g, b in mesh.colors.tolist()]
        out.append("    ] }")
    if mesh.uv is not None:  # per vertex: texCoordIndex defaults to coordIndex
        out.append("    texCoord TextureCoordinate { point [")
        out += [f"      {u!r} {v!r}," for u, v in mesh.uv.tolist()]
        out.append("    ] }")
    out.append("    coordIndex [")
    out += [f"      {a} {b} {c} -1," for a, b, c in mesh.faces.tolist()]
    out += ["    ]", "  }", "}"]
    return ("\n".join(out) + "\n").encode("ascii")


_MESH_READERS = {".ply": _read_ply, ".obj": _read_obj, ".off": _read_off,
                 ".stl": _read_stl, ".wrl": _read_wrl}
_MESH_WRITERS = {".ply": _write_ply, ".obj": _write_obj, ".off": _write_off,
                 ".stl": _write_stl, ".wrl": _write_wrl}


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
    texture_path: Optional[Path] = None
    uv: Optional[np.ndarray] = None
    source: Optional[Path] = None

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

    def to_mesh(self, max_edge: Optional[float] = None, max_edge_factor: float = 5.0,
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
            img = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
        Ht, Wt = img.shape[:2]
        if self.uv is not None:
            u, v = self.uv.reshape(-1, 2)[pixels].T
        else:
            r, c = np.divmod(pixels, self.shape[1])
            u, v = c / self.shape[1], r / self.shape[0]
        x = np.clip(u * Wt, 0, Wt - 1)
        y = np.clip(v * Ht, 0, Ht - 1)
        x0 = np.minimum(x.astype(np.int64), Wt - 2 if Wt > 1 else 0)
        y0 = np.minimum(y.astype(np.int64), Ht - 2 if Ht > 1 else 0)
        x1, y1 = np.minimum(x0 + 1, Wt - 1), np.minimum(y0 + 1, Ht - 1)
        fx, fy = (x - x0)[:, None], (y - y0)[:, None]
        top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
        bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
        return (top * (1 - fy) + bottom * fy).astype(np.float32)


_ABS_INVALID = -999999.0


def read_abs(path: PathLike) -> RangeScan:
    """Read an FRGC ``.abs`` (or gzip-compressed ``.abs.gz``) range file.

    Layout: ``<H> rows``, ``<W> columns``, ``pixels (flag X Y Z):``, then H*W
    flags (1 valid, 0 invalid), H*W X, H*W Y and H*W Z values in mm, row-major
    with the top scan line first (normally one line each). Invalid pixels are
    masked by their flag (not by the -999999 sentinel) and set to NaN. The
    texture is the sibling ``<stem>.ppm`` when it exists (FRGC pairs are
    sometimes off by one shot number: pair through the sigsets if needed).
    """
    path = _existing_file(path)
    src = str(path)
    gz = path.name.lower().endswith(".gz")
    try:
        if gz:
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
        text = raw.decode("ascii")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise FormatError(f"{src}: cannot read ({e})") from None
    lines = text.split("\n", 3)
    if len(lines) < 4:
        raise FormatError(f"{src}: header needs 3 lines ('<H> rows', '<W> columns', "
                          f"'pixels (flag X Y Z):'), file has {len(lines)} lines")
    expect = ("<H> rows", "<W> columns", "pixels (flag X Y Z):")
    t = [ln.split() for ln in lines[:3]]
    good = (len(t[0]) >= 2 and t[0][0].isdigit() and t[0][1].lower() == "rows",
            len(t[1]) >= 2 and t[1][0].isdigit() and t[1][1].lower() == "columns",
            len(t[2]) >= 1 and t[2][0].lower() == "pixels")
    for no in range(3):
        if not good[no]:
            raise FormatError(f"{src}: header line {no + 1} should read {expect[no]!r}, "
                              f"found {lines[no].strip()[:60]!r}")
    H, W = int(t[0][0]), int(t[1][0])
    N = H * W

    def numbers(s, what):
        fast = _parse_decimals(np.frombuffer(s.encode("ascii"), np.uint8))
        if fast is not None:
            return fast
        try:  # exponents, odd tokens: numpy's parser, which also reports errors
            return np.fromstring(s, sep=" ")
        except ValueError:
            raise FormatError(f"{src}: non-numeric value in {what}") from None

    data = [ln for ln in lines[3].split("\n") if ln.strip()]
    if len(data) == 4:
        arrays = []
        for k, (ln, name) in enumerate(zip(data, ("flags", "X", "Y", "Z"))):
            a = numbers(ln, f"data line {k + 4} ({name})")
            if a.size != N:
                raise FormatError(f"{src}: data line {k + 4} ({name}) has {a.size} values, "
                                  f"expected {H} x {W} = {N} (truncated file?)")
            arrays.append(a)
    else:  # values wrapped over other line breaks
        a = numbers(lines[3], "the pixel data")
        if a.size != 4 * N:
            raise FormatError(f"{src}: {a.size} values after the header, expected "
                              f"4 x {H} x {W} = {4 * N} (truncated file?)")
        arrays = np.split(a, 4)
    flags, x, y, z = arrays
    if not np.isin(flags, (0.0, 1.0)).all():
        raise FormatError(f"{src}: flags must be 0 or 1, found {flags[~np.isin(flags, (0, 1))][0]}")
    valid = (flags == 1).reshape(H, W)
    xyz = np.stack([x, y, z], axis=-1).reshape(H, W, 3)
    bad = valid & ~np.isfinite(xyz).all(axis=2)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise FormatError(f"{src}: valid pixel (row {r}, col {c}) has a NaN or infinite coordinate")
    xyz[~valid] = np.nan
    stem = path.name[: -len(".abs.gz")] if path.name.lower().endswith(".abs.gz") else path.stem
    texture = path.with_name(stem + ".ppm")
    return RangeScan(xyz, valid, texture if texture.is_file() else None, None, path)


def _parse_decimals(buf: np.ndarray):
    """Whitespace-separated plain decimals (``-12.345678``) as float64, or
    None when a token is anything else. FRGC files hold ~1 M of them and
    numpy's generic parser spent most of a scan's read time on them."""
    values, ok = _parse_decimals_kernel(buf)
    return values if ok else None


@njit(cache=True)
def _parse_decimals_kernel(buf):
    out = np.empty(len(buf) // 2 + 1, np.float64)
    n = 0
    i = 0
    size = len(buf)
    while i < size:
        c = buf[i]
        if c == 32 or c == 10 or c == 13 or c == 9:
            i += 1
            continue
        negative = c == 45
        if c == 45 or c == 43:
            i += 1
        mantissa = np.int64(0)
        digits = 0
        decimals = 0
        seen_point = False
        while i < size:
            c = buf[i]
            if 48 <= c <= 57:
                if digits >= 15:  # beyond exact int64/float64 arithmetic
                    return out[:0], False
                mantissa = mantissa * 10 + (c - 48)
                digits += 1
                if seen_point:
                    decimals += 1
            elif c == 46 and not seen_point:
                seen_point = True
            else:
                break
            i += 1
        if digits == 0 or (i < size and not (c == 32 or c == 10 or c == 13 or c == 9)):
            return out[:0], False
        # Both operands are exact, so IEEE division rounds correctly.
        value = mantissa / 10.0 ** decimals
        out[n] = -value if negative else value
        n += 1
    return out[:n], True


def write_abs(path: PathLike, scan: RangeScan) -> None:
    """Write ``scan`` as an FRGC ``.abs`` file (gzip-compressed if the name ends
    in ``.gz``): flags, then X, Y, Z with 6 decimals (FRGC's precision), -999999
    at invalid pixels. Written to a temporary file, then renamed."""
    path = Path(path)
    H, W = scan.shape
    valid = scan.valid.reshape(-1)
    xyz = np.where(scan.valid[..., None], scan.xyz, _ABS_INVALID).reshape(-1, 3)
    if not np.isfinite(xyz).all():
        raise FormatError(f"{path}: the scan has NaN or infinite coordinates at valid pixels")
    header = f"{H} rows\n{W} columns\npixels (flag X Y Z):\n".encode("ascii")
    flags = np.where(valid, ord("1"), ord("0")).astype(np.uint8)
    flags = np.column_stack([flags, np.full_like(flags, ord(" "))]).tobytes() + b"\n"
    coords = b"".join(_fixed6_line(np.ascontiguousarray(xyz[:, k])).tobytes() for k in range(3))
    data = header + flags + coords
    if path.name.lower().endswith(".gz"):
        # mtime=0 keeps the bytes a pure function of the scan (reproducible builds).
        data = gzip.compress(data, compresslevel=6, mtime=0)
    _atomic_write(path, data)


@njit(cache=True)
def _fixed6_line(values):
    """ASCII of ``values`` as ``%.6f`` tokens, each followed by a space, then a
    newline: FRGC's number format, written digit by digit because Python's
    per-number formatting dominated the cost of a whole scan."""
    out = np.empty(len(values) * 28 + 1, np.uint8)
    pos = 0
    digits = np.empty(20, np.uint8)
    for v in values:
        q = np.int64(np.rint(v * 1e6))
        if q < 0:
            out[pos] = 45  # '-'
            pos += 1
            q = -q
        whole = q // 1000000
        frac = q % 1000000
        n = 0
        while True:
            digits[n] = 48 + whole % 10
            whole //= 10
            n += 1
            if whole == 0:
                break
        for i in range(n - 1, -1, -1):
            out[pos] = digits[i]
            pos += 1
        out[pos] = 46  # '.'
        pos += 1
        for i in range(5, -1, -1):
            out[pos + i] = 48 + frac % 10
            frac //= 10
        pos += 6
        out[pos] = 32  # ' '
        pos += 1
    out[pos] = 10  # '\n'
    return out[:pos + 1]


def read_bnt(path: PathLike) -> RangeScan:
    """Read a Bosphorus ``.bnt`` range file.

    Little-endian: uint16 nrows, uint16 ncols, float64 zmin, uint16 L, L bytes
    texture file name, uint32 n = 5*nrows*ncols, then n float64 stored
    column-major as N x 5 (all x, all y, all z, all u, all v). Background
    pixels have z == zmin (x, y too; u, v keep valid texture coordinates).
    The stored grid is upside down (first row = bottom of the face); it is
    flipped to image orientation. The texture is the header's file name
    resolved next to the .bnt, when it exists.
    """
    path = _existing_file(path)
    src = str(path)
    raw = path.read_bytes()
    if len(raw) < 14:
        raise FormatError(f"{src}: truncated header ({len(raw)} bytes, need at least 14)")
    nrows, ncols, zmin, L = struct.unpack_from("<HHdH", raw, 0)
    if len(raw) < 18 + L:
        raise FormatError(f"{src}: truncated header ({len(raw)} bytes, the texture name of "
                          f"{L} bytes and the value count need {18 + L})")
    try:
        imfile = raw[14:14 + L].decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"{src}: texture file name in the header is not ASCII") from None
    (n,) = struct.unpack_from("<I", raw, 14 + L)
    N = nrows * ncols
    if n != 5 * N:
        raise FormatError(f"{src}: header says {n} values but a {nrows} x {ncols} grid with "
                          f"5 columns needs {5 * N}")
    if len(raw) != 18 + L + 8 * n:
        raise FormatError(f"{src}: file size {len(raw)} bytes, expected 18 + {L} + 8 x {n} = "
                          f"{18 + L + 8 * n} for a {nrows} x {ncols} grid"
                          f"{' (truncated file)' if len(raw) < 18 + L + 8 * n else ''}")
    x, y, z, u, v = np.flip(np.frombuffer(raw, "<f8", n, 18 + L).reshape(5, nrows, ncols), axis=1)
    valid = z != zmin
    xyz = np.stack([x, y, z], axis=-1)
    bad = valid & ~np.isfinite(xyz).all(axis=2)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise FormatError(f"{src}: pixel (row {r}, col {c}) has a NaN or infinite coordinate")
    xyz[~valid] = np.nan
    texture = path.with_name(imfile) if imfile else None
    return RangeScan(xyz, valid, texture if texture is not None and texture.is_file() else None,
                     np.stack([u, v], axis=-1), path)


def write_bnt(path: PathLike, scan: RangeScan, zmin: float = -1e9) -> None:
    """Write ``scan`` as a Bosphorus ``.bnt`` (the inverse of :func:`read_bnt`):
    rows flipped back to bottom-first, x, y, z = ``zmin`` at invalid pixels,
    u, v from ``scan.uv`` (zeros if it has none), texture name =
    ``scan.texture_path.name`` or ``<stem>.png``. Written atomically."""
    path = Path(path)
    H, W = scan.shape
    if H > 65535 or W > 65535:
        raise FormatError(f"{path}: a .bnt grid is at most 65535 x 65535, got {H} x {W}")
    xyz = np.where(scan.valid[..., None], scan.xyz, zmin)
    if not np.isfinite(xyz).all():
        raise FormatError(f"{path}: the scan has NaN or infinite coordinates at valid pixels")
    uv = scan.uv if scan.uv is not None else np.zeros((H, W, 2))
    cols = np.concatenate([xyz, uv], axis=-1)[::-1]  # (H, W, 5), bottom row first
    name = (scan.texture_path.name if scan.texture_path is not None
            else path.stem + ".png").encode("ascii")
    data = np.ascontiguousarray(np.moveaxis(cols, -1, 0), dtype="<f8")
    _atomic_write(path, struct.pack("<HHdH", H, W, zmin, len(name)) + name
                  + struct.pack("<I", data.size) + data.tobytes())


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
    source: Optional[Path] = None

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


def _text_lines(path: Path):
    """[(line number, stripped line)] of a text file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(no, line.strip()) for no, line in enumerate(text.splitlines(), 1)]


def _point(tokens, path, no, dims=(2, 3)) -> list:
    """Parse one coordinate line; FormatError naming file and line."""
    try:
        p = [float(x) for x in tokens]
    except ValueError:
        raise FormatError(f"{path}: line {no}: cannot parse numbers from "
                          f"{' '.join(tokens)!r}") from None
    if len(p) not in dims:
        raise FormatError(f"{path}: line {no}: expected {' or '.join(map(str, dims))} numbers, "
                          f"found {len(p)}")
    if not np.isfinite(p).all():
        raise FormatError(f"{path}: line {no}: NaN or infinite coordinate")
    return p


def _read_table(path: Path) -> Landmarks:
    """Plain text/CSV: k lines of 2 or 3 numbers (space or comma separated),
    '#' comments; a CSV may start with a non-numeric column-name line."""
    rows, width = [], None
    lines = [(no, line.split("#", 1)[0].replace(",", " ").split())
             for no, line in _text_lines(path)]
    lines = [(no, t) for no, t in lines if t]
    if path.suffix.lower() == ".csv" and lines and not any(
            re.fullmatch(r"[-+.\deE]+|nan|inf", x, re.I) for x in lines[0][1]):
        lines = lines[1:]
    for no, t in lines:
        p = _point(t, path, no)
        if width is not None and len(p) != width:
            raise FormatError(f"{path}: line {no}: {len(p)} numbers, earlier lines have {width}")
        width = len(p)
        rows.append(p)
    if not rows:
        raise FormatError(f"{path}: no landmark lines")
    return Landmarks(np.array(rows), [], path)


def _read_pts(path: Path) -> Landmarks:
    """iBUG .pts: ``version: 1``, ``n_points: k``, ``{``, k lines ``x y``, ``}``.
    Coordinates are returned as stored (300-W files count pixels from 1)."""
    lines = [(no, s) for no, s in _text_lines(path) if s]
    n, i = None, 0
    while i < len(lines) and lines[i][1] != "{":
        no, s = lines[i]
        key, _, val = s.partition(":")
        if key.strip().lower() == "n_points":
            try:
                n = int(val)
            except ValueError:
                raise FormatError(f"{path}: line {no}: cannot parse n_points "
                                  f"{val.strip()!r}") from None
        i += 1
    if n is None:
        raise FormatError(f"{path}: no 'n_points:' line before '{{'")
    if i == len(lines):
        raise FormatError(f"{path}: no '{{' opening the point list")
    rows, width = [], None
    for no, s in lines[i + 1:]:
        if s == "}":
            break
        p = _point(s.split(), path, no)
        if width is not None and len(p) != width:
            raise FormatError(f"{path}: line {no}: {len(p)} numbers, earlier lines have {width}")
        width = len(p)
        rows.append(p)
    else:
        raise FormatError(f"{path}: no '}}' closing the point list (truncated file?)")
    if len(rows) != n:
        raise FormatError(f"{path}: n_points says {n} but {len(rows)} points are listed")
    return Landmarks(np.array(rows).reshape(-1, width or 2), [], path)


def _bosphorus_body(path: Path):
    """Lines after the '#' header and optional '*' info block of a Bosphorus
    .lm2/.lm3 file, blank lines dropped, plus the declared landmark count."""
    lines = _text_lines(path)
    i = 0
    while i < len(lines) and (not lines[i][1] or lines[i][1].startswith("#")):
        i += 1
    if i < len(lines) and lines[i][1] == "*":  # info text up to a blank line
        while i < len(lines) and lines[i][1]:
            i += 1
    body = [(no, s) for no, s in lines[i:] if s]
    m = re.fullmatch(r"(\d+)\s+landmarks:?", body[0][1], re.I) if body else None
    if m is None:
        where = f"line {body[0][0]}" if body else "end of file"
        raise FormatError(f"{path}: {where}: expected '<N> landmarks:'")
    return int(m.group(1)), body[1:]


def _read_lm3(path: Path) -> Landmarks:
    """Bosphorus .lm3: '<N> landmarks:' then N pairs of lines (label, x y z mm)."""
    n, body = _bosphorus_body(path)
    if len(body) != 2 * n:
        raise FormatError(f"{path}: header says {n} landmarks but the file has {len(body)} "
                          f"label/coordinate lines (need {2 * n})")
    labels = [s for _, s in body[0::2]]
    pts = [_point(s.split(), path, no, dims=(3,)) for no, s in body[1::2]]
    return Landmarks(np.array(pts).reshape(-1, 3), labels, path)


def _read_lm2(path: Path) -> Landmarks:
    """Bosphorus .lm2: '<N> landmarks', 'Labels:' + N labels,
    '2D Image coordinates:' + N lines 'x y' (texture pixels, x = column)."""
    n, body = _bosphorus_body(path)
    heads = [k for k, (_, s) in enumerate(body) if s.lower().rstrip(":") in
             ("labels", "2d image coordinates")]
    if len(heads) != 2 or body[heads[0]][1].lower() != "labels:":
        raise FormatError(f"{path}: expected a 'Labels:' section followed by a "
                          f"'2D Image coordinates:' section")
    labels = [s for _, s in body[heads[0] + 1:heads[1]]]
    coords = body[heads[1] + 1:]
    if len(labels) != n or len(coords) != n:
        raise FormatError(f"{path}: header says {n} landmarks but the file has {len(labels)} "
                          f"labels and {len(coords)} coordinate lines")
    pts = [_point(s.split(), path, no, dims=(2,)) for no, s in coords]
    return Landmarks(np.array(pts).reshape(-1, 2), labels, path)


_LANDMARK_READERS = {".txt": _read_table, ".csv": _read_table, ".pts": _read_pts,
                     ".lm3": _read_lm3, ".lm2": _read_lm2}


def read_landmarks(path: PathLike, expected: Optional[int] = None) -> Landmarks:
    """Read landmarks from Bosphorus ``.lm2`` (2D, labelled) / ``.lm3`` (3D mm,
    labelled; the count varies per file, so key them by label), iBUG ``.pts``
    or plain ``.txt``/``.csv`` (k lines of 2 or 3 numbers, '#' comments, e.g.
    iBUG-68 x y z). ``expected``: required number of points. Raises
    :class:`FormatError` naming the file (and line) for a missing file, an
    unknown extension, unparsable numbers, NaN, or a wrong point count."""
    path = Path(path)
    reader = _LANDMARK_READERS.get(path.suffix.lower())
    if reader is None:
        raise FormatError(f"{path}: unknown landmark extension {path.suffix!r} "
                          f"(known: {', '.join(sorted(_LANDMARK_READERS))})")
    lm = reader(_existing_file(path))
    if expected is not None and len(lm) != expected:
        raise FormatError(f"{path}: expected {expected} landmarks, found {len(lm)}")
    return lm


def write_landmarks(path: PathLike, landmarks: Landmarks) -> None:
    """Write ``.pts`` (iBUG layout, 2 or 3 numbers a line), ``.txt``/``.csv``
    (one point a line), ``.lm3`` (3D, with labels) or ``.lm2`` (2D, with
    labels). Numbers are written with full float64 precision."""
    path = Path(path)
    ext = path.suffix.lower()
    P = landmarks.points
    need = {".lm3": 3, ".lm2": 2}.get(ext)
    if ext not in _LANDMARK_READERS:
        raise FormatError(f"{path}: unknown landmark extension {path.suffix!r} "
                          f"(known: {', '.join(sorted(_LANDMARK_READERS))})")
    if need is not None and landmarks.dim != need:
        raise FormatError(f"{path}: {ext} holds {need}D points, got {landmarks.dim}D")
    sep = "," if ext == ".csv" else " "
    rows = [sep.join(map(repr, p)) for p in P.tolist()]
    if ext == ".pts":
        out = ["version: 1", f"n_points: {len(P)}", "{", *rows, "}"]
    elif ext == ".lm3":
        out = ["# 3D Landmark File", "", f"{len(P)} landmarks:"]
        for label, row in zip(landmarks.labels, rows):
            out += [label, row]
    elif ext == ".lm2":
        out = ["# 2D Landmark File", "", f"{len(P)} landmarks", "", "Labels:",
               *landmarks.labels, "", "2D Image coordinates:", *rows]
    else:
        out = rows
    _atomic_write(path, ("\n".join(out) + "\n").encode("utf-8"))


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
