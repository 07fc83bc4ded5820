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
rest) and faces with a repeated vertex, which would hide broken input, its
OFF writer emits files that its own reader misreads, and its OBJ/VRML readers
truncate colours. The numpy readers keep the file's vertices and faces as
they are and report bad input as :class:`FormatError`; for .wrl a numpy
pre-parse of the file checks what pymeshlab returns. The binary PLY reader is
a structured ``np.frombuffer`` view (262k vertices in ~0.03 s).

Every reader checks counts against the file size before allocating, the
structure exactly (no trailing data), truncation inside the last value, and
physical plausibility for a face scanner (:data:`MAX_COORDINATE`,
:data:`MIN_SCAN_POINTS`, background markers); the rules are listed under
"Input checks" in the README and held by ``tests/test_fuzz_readers.py``.

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
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
from numba import njit

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
# The largest .abs grid read (FRGC: 480 x 640). It also bounds what an
# .abs.gz may decompress to, together with MAX_ABS_BYTES_PER_PIXEL.
MAX_GRID_PIXELS = 1 << 22
# Generous upper bound on the text of one .abs pixel (flag + 3 numbers of up
# to 24 characters, separators): an .abs.gz stream longer than header +
# pixels x this is refused as a decompression bomb.
MAX_ABS_BYTES_PER_PIXEL = 4 * 26
# Longest .bnt texture file name accepted (a plain name in the scan's folder).
MAX_NAME_BYTES = 255
# Longest whitespace-separated token of a VRML file (numbers are < 30 bytes;
# a megabyte "number" made pymeshlab invent vertices).
MAX_VRML_TOKEN = 1024


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
    _atomic_write(path, writer(mesh))


# --- PLY

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
              "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
              "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _ply_header(raw: bytes, src: str):
    """(format, elements, data offset); elements are (name, count, props) with
    props (name, numpy type code, count type code or None for scalars).
    Counts are non-negative decimal integers, list lengths have an integer
    type, and names are unique within their element."""
    end = re.search(rb"\nend_header[ \t\r]*(?:\n|$)", raw)
    if not re.match(rb"ply[ \t\r]*\n", raw) or end is None:
        raise FormatError(f"{src}: not a PLY file (no 'ply' magic line or no 'end_header' line)")
    fmt, elements = None, []
    for no, line in enumerate(raw[:end.start()].split(b"\n")[1:], 2):
        t = line.split()
        if not t or t[0] in (b"comment", b"obj_info"):
            continue
        problem = None
        try:
            t = [x.decode("ascii") for x in t]
            if t[0] == "format" and len(t) == 3 and fmt is None:
                fmt = t[1]
                if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
                    raise KeyError(fmt)
            elif t[0] == "element" and len(t) == 3:
                if not re.fullmatch(r"[0-9]+", t[2]):
                    problem = "the count must be a non-negative integer in"
                elif any(e[0] == t[1] for e in elements):
                    problem = f"a second element '{t[1]}'"
                else:
                    elements.append((t[1], int(t[2]), []))
            elif t[0] == "property" and elements and len(t) in (3, 5):
                if len(t) == 5:
                    if t[1] != "list" or _PLY_TYPES[t[2]][0] == "f":
                        raise KeyError(t[2])  # a list length must be an integer type
                    prop = (t[4], _PLY_TYPES[t[3]], _PLY_TYPES[t[2]])
                else:
                    prop = (t[2], _PLY_TYPES[t[1]], None)
                if any(q[0] == prop[0] for q in elements[-1][2]):
                    problem = f"a second property '{prop[0]}' in element '{elements[-1][0]}'"
                elements[-1][2].append(prop)
            else:
                raise KeyError(t[0])
        except (IndexError, KeyError, UnicodeDecodeError):
            problem = "cannot parse"
        if problem:
            raise FormatError(f"{src}: header line {no}: {problem} "
                              f"{line.strip().decode('ascii', 'replace')[:80]!r}")
    if fmt is None:
        raise FormatError(f"{src}: PLY header has no 'format' line")
    for name, count, props in elements:
        if count and not props:
            raise FormatError(f"{src}: element '{name}' has {count} records but no properties")
    return fmt, elements, end.end()


@njit(cache=True)
def _ply_walk(buf, pos, n, sizes, csizes, csigned, big):
    """Byte offset of every property of each of ``n`` records starting at
    ``pos`` (a PLY element whose list lengths vary; ``csizes[p]`` is the size
    of list p's count, 0 for scalars; ``csigned[p]`` whether that count type
    is signed). Returns (offsets, list counts, end offset), end = -1 when the
    data stops early and -2 at a negative list length."""
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
                if csigned[p] and c >= np.int64(1) << (8 * cs - 1):
                    return off, cnt, -2
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
    def size(t):
        return np.dtype(t).itemsize

    # Every record holds at least its scalars and list lengths: a count the
    # rest of the file cannot hold is refused before anything is allocated.
    least = sum(size(t) if ct is None else size(ct) for _, t, ct in props)
    if count * least > len(raw) - pos:
        raise FormatError(f"{src}: element '{name}' declares {count} records of at least "
                          f"{least} bytes but only {len(raw) - pos} bytes remain "
                          f"(wrong count or truncated file)")
    if count == 0:
        return {p: (np.zeros(0, np.int64), np.zeros(0, order + t)) if ct else np.zeros(0, order + t)
                for p, t, ct in props}, pos
    # Fast path: every list as long as in the first record -> one structured view.
    fields, q, fast = [], pos, True
    for i, (pname, t, ct) in enumerate(props):
        if not fast:
            break
        if ct is None:
            fields.append((pname, order + t))
            q += size(t)
        else:
            c = int(np.frombuffer(raw, order + ct, 1, q)[0]) if q + size(ct) <= len(raw) else -1
            if c < 0 or q + size(ct) + c * size(t) > len(raw):
                fast = False  # the general path reports it
            fields += [(f"__count{i}", order + ct), (pname, order + t, (max(c, 0),))]
            q += size(ct) + max(c, 0) * size(t)
    if fast:
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
    sizes = np.array([size(t) for _, t, _ in props], np.int64)
    csizes = np.array([0 if ct is None else size(ct) for _, _, ct in props], np.int64)
    csigned = np.array([ct is not None and ct[0] == "i" for _, _, ct in props])
    off, cnt, end = _ply_walk(u8, pos, count, sizes, csizes, csigned, order == ">")
    if end == -2:
        raise FormatError(f"{src}: element '{name}' has a negative list length")
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


def _ply_numbers(chunk: list, what: str, src: str) -> np.ndarray:
    """ASCII tokens (bytes) -> float64 with numpy's strict number parser; a
    token that is not a number is named (``what``: where it was, for the
    message)."""
    if not chunk:
        return np.zeros(0)
    try:
        out = np.fromstring(b" ".join(chunk), sep=" ")
    except ValueError:
        out = None
    if out is None or out.size != len(chunk):
        for x in chunk:
            try:
                ok = np.fromstring(x, sep=" ").size == 1
            except ValueError:
                ok = False
            if not ok:
                raise FormatError(f"{src}: {what}: non-numeric value "
                                  f"{x.decode('ascii', 'replace')[:40]!r}")
        raise FormatError(f"{src}: {what}: cannot parse the values")
    return out


def _ply_check_int(values: np.ndarray, t: str, name: str, what: str, src: str) -> None:
    """Ascii values of an integer PLY type must be integers within its range."""
    info = np.iinfo(np.dtype(t))
    bad = ~((values == np.round(values)) & (values >= info.min) & (values <= info.max))
    if bad.any():
        raise FormatError(f"{src}: element '{name}': {what} {float(values[np.argmax(bad)])!r} "
                          f"is not an integer in [{info.min}, {info.max}]")


def _ply_ascii_element(tokens, pos, name, count, props, src):
    """Parse one ascii element from the token list (values as float64);
    values of integer types must be integers within the type's range."""
    left = len(tokens) - pos
    if count * len(props) > left:
        raise FormatError(f"{src}: element '{name}' declares {count} records of at least "
                          f"{len(props)} values but only {left} values remain "
                          f"(wrong count or truncated file)")

    def list_length(q, pname, ct):
        if q >= len(tokens):
            raise FormatError(f"{src}: data ends inside element '{name}' "
                              f"({count} records declared; truncated file?)")
        c = _ply_numbers(tokens[q:q + 1], f"element '{name}'", src)
        _ply_check_int(c, ct, name, f"length of list '{pname}'", src)
        if c[0] < 0:
            raise FormatError(f"{src}: element '{name}': negative length of list '{pname}'")
        return int(c[0])

    # Record length from the first record's list counts (fast path: uniform).
    width, q, cols = 0, pos, []
    for pname, t, ct in props:
        cols.append(width)
        step = 1 if ct is None else 1 + (list_length(q, pname, ct) if count else 0)
        width, q = width + step, q + step
    uniform = count == 0
    if count and pos + count * width <= len(tokens):
        table = _ply_numbers(tokens[pos:pos + count * width], f"element '{name}'", src)
        table = table.reshape(count, width)
        uniform = all(ct is None or (table[:, c] == table[0, c]).all()
                      for (pname, t, ct), c in zip(props, cols))
    if uniform:
        out = {}
        for (pname, t, ct), c in zip(props, cols):
            if ct is None:
                out[pname] = table[:, c] if count else np.zeros(0)
            else:
                k = int(table[0, c]) if count else 0
                out[pname] = (np.full(count, k, np.int64),
                              table[:, c + 1:c + 1 + k].reshape(-1) if count else np.zeros(0))
        end = pos + count * width
    else:  # varying list lengths: walk the records
        scal = {p[0]: [] for p in props if p[2] is None}
        lists = {p[0]: ([], []) for p in props if p[2] is not None}
        q = pos
        for _ in range(count):
            for pname, t, ct in props:
                if ct is None:
                    scal[pname].append(tokens[q] if q < len(tokens) else b"")
                    q += 1
                else:
                    c = list_length(q, pname, ct)
                    lists[pname][0].append(c)
                    lists[pname][1].extend(tokens[q + 1:q + 1 + c])
                    q += 1 + c
                if q > len(tokens):
                    raise FormatError(f"{src}: data ends inside element '{name}' "
                                      f"({count} records declared; truncated file?)")
        out = {k: _ply_numbers(v, f"element '{name}'", src) for k, v in scal.items()}
        out.update({k: (np.array(c, np.int64), _ply_numbers(v, f"element '{name}'", src))
                    for k, (c, v) in lists.items()})
        end = q
    for pname, t, ct in props:
        if ct is not None:
            _ply_check_int(out[pname][0].astype(np.float64), ct, name,
                           f"length of list '{pname}'", src)
        if np.dtype(t).kind in "iu":
            _ply_check_int(out[pname] if ct is None else out[pname][1], t, name,
                           f"'{pname}' value", src)
    return out, end


_PLY_COLOR_NAMES = (("red", "green", "blue"), ("diffuse_red", "diffuse_green", "diffuse_blue"),
                    ("r", "g", "b"))
_PLY_UV_NAMES = (("texture_u", "texture_v"), ("u", "v"), ("s", "t"), ("texture_s", "texture_t"))


def _read_ply(path: Path):
    src = str(path)
    raw = path.read_bytes()
    fmt, elements, pos = _ply_header(raw, src)
    types = {name: {p[0]: p for p in props} for name, _, props in elements}
    for key in ("vertex_indices", "vertex_index"):
        prop = types.get("face", {}).get(key)
        if prop is not None and prop[2] is not None and np.dtype(prop[1]).kind not in "iu":
            raise FormatError(f"{src}: face property '{key}' holds '{prop[1]}' values; "
                              f"vertex indices must have an integer type")
    data = {}
    if fmt == "ascii":
        tokens, tpos = raw[pos:].split(), 0
        if tokens:
            _check_terminated(raw, src)
    for name, count, props in elements:
        if fmt == "ascii":
            data[name], tpos = _ply_ascii_element(tokens, tpos, name, count, props, src)
        else:
            order = "<" if fmt == "binary_little_endian" else ">"
            data[name], pos = _ply_binary_element(raw, pos, name, count, props, order, src)
    if fmt == "ascii" and tpos != len(tokens):
        raise FormatError(f"{src}: {len(tokens) - tpos} values after the last element "
                          f"(an element count too small?)")
    if fmt != "ascii" and pos != len(raw):
        raise FormatError(f"{src}: {len(raw) - pos} bytes after the last element "
                          f"(an element count too small, or trailing data)")
    vert, vtypes = data.get("vertex"), types.get("vertex", {})

    def scalars(names):
        """The columns ``names`` of the vertex element if all are scalar properties."""
        if not all(k in vtypes for k in names):
            return None
        if any(vtypes[k][2] is not None for k in names):
            raise FormatError(f"{src}: vertex property '{names[0]}' is a list, expected a scalar")
        with np.errstate(invalid="ignore"):  # a signalling NaN: refused by load_mesh
            return np.column_stack([vert[k] for k in names]).astype(np.float64)

    V = scalars("xyz") if vert is not None else None
    if V is None:
        raise FormatError(f"{src}: no 'vertex' element with x, y, z properties")
    colors = None
    for names in _PLY_COLOR_NAMES:
        colors = scalars(names)
        if colors is not None:
            t = np.dtype(vtypes[names[0]][1])
            if t.kind in "iu":
                colors = colors / float(np.iinfo(t).max)
            break
    uv = None
    for names in _PLY_UV_NAMES:
        uv = scalars(names)
        if uv is not None:
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
    if isinstance(face.get("texcoord"), tuple):
        if not np.array_equal(face["texcoord"][0], 2 * counts):
            raise FormatError(f"{src}: face 'texcoord' lists must hold 2 values per corner")
        with np.errstate(invalid="ignore"):
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
    has a texture index, token has a normal index) or None if some token
    does not parse."""
    b = np.frombuffer(payload, np.uint8)
    ws = b <= 32  # space, tab, CR, LF (other control bytes fail numpy's parse)
    starts = np.flatnonzero(~ws & np.r_[True, ws[:-1]])
    ends = np.r_[np.flatnonzero(b == 10), len(b)]
    ntok = np.diff(np.r_[0, np.searchsorted(starts, ends)])
    nval = np.ones(len(starts), np.int64)
    has_t = has_n = np.zeros(len(starts), bool)
    if corners:
        slash = np.flatnonzero(b == ord("/"))
        tok = np.searchsorted(starts, slash, side="right") - 1
        nslash = np.bincount(tok, minlength=len(starts))
        if len(nslash) and nslash.max() > 2:
            return None
        empty = np.zeros(len(starts), bool)
        empty[tok[:-1][np.diff(slash) == 1]] = True  # "v//n": no texture index
        nval, has_t, has_n = nslash + 1 - empty, (nslash >= 1) & ~empty, nslash == 2
        payload = payload.replace(b"/", b" ")
    try:
        values = np.fromstring(payload, sep=" ")
    except ValueError:
        return None
    return (values, ntok, nval, has_t, has_n) if values.size == nval.sum() else None


def _records(lines: list, linenos: list, src: str, what: str, corners: bool = False):
    """:func:`_scan_records` over ``lines`` (bytes, keyword removed); a parse
    error names the first bad line."""
    if not lines:
        return (np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool),
                np.zeros(0, bool))
    parsed = _scan_records(b"\n".join(lines), corners)
    if parsed is not None:
        return parsed
    for line, no in zip(lines, linenos):
        if _scan_records(line, corners) is None:
            raise FormatError(f"{src}: line {no}: cannot parse {what} "
                              f"{line.decode('ascii', 'replace').strip()[:80]!r}")
    raise FormatError(f"{src}: cannot parse the {what} lines")


def _check_width(ntok, allowed, linenos, src, what):
    """Every record has the same number of values, one of ``allowed``."""
    if len(ntok) == 0:
        return
    bad = (ntok != ntok[0]) | ~np.isin(ntok, allowed)
    if bad.any():
        i = int(np.argmax(bad))
        raise FormatError(f"{src}: line {linenos[i]}: {what} has {ntok[i]} numbers; every "
                          f"{what} line needs the same count, one of "
                          f"{', '.join(map(str, allowed))}")


def _indices(values, line_of, src, what):
    """Float-parsed indices -> int64; non-integers name their line."""
    bad = ~(np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2.0**31))
    if bad.any():
        i = int(np.argmax(bad))
        raise FormatError(f"{src}: line {line_of[i]}: {what} {float(values[i])!r} is not an "
                          f"integer index")
    return values.astype(np.int64)


def _text_colours(c: np.ndarray, line_of, src: str) -> np.ndarray:
    """Colours of a text format: all in [0, 1], or 8-bit integers 0..255
    (divided by 255) as soon as one exceeds 1."""
    if c.size and c.max() > 1.0:
        bad = ~((c == np.round(c)) & (c >= 0) & (c <= 255)).all(axis=1)
        if bad.any():
            i = int(np.argmax(bad))
            raise FormatError(f"{src}: line {line_of[i]}: colour {c[i].tolist()} is not 8-bit "
                              f"(integers 0..255, as the other colours of the file)")
        return c / 255.0
    return c  # in [0, 1]: load_mesh checks it


# --- OBJ

def _read_obj(path: Path):
    src = str(path)
    lines = [line.strip() for line in path.read_bytes().split(b"\n")]

    def take(keyword):
        keys = (keyword + b" ", keyword + b"\t")
        sel = [i for i, line in enumerate(lines) if line.startswith(keys)]
        return [lines[i][len(keyword) + 1:] for i in sel], [i + 1 for i in sel]

    (v, v_no), (vt, vt_no), (vn, vn_no), (f, f_no) = map(take, (b"v", b"vt", b"vn", b"f"))
    vals, ntok, _, _, _ = _records(v, v_no, src, "vertex")
    _check_width(ntok, (3, 4, 6), v_no, src, "vertex")  # x y z [w] or x y z r g b
    first = np.cumsum(ntok) - ntok
    V = vals[first[:, None] + np.arange(3)]
    colors = None
    if len(ntok) and ntok[0] == 6:  # "v x y z r g b" extension
        colors = _text_colours(vals[first[:, None] + np.arange(3, 6)], v_no, src)
    vals, ntok, _, _, _ = _records(vt, vt_no, src, "texture coordinate")
    _check_width(ntok, (2, 3), vt_no, src, "texture coordinate")
    T = vals[(np.cumsum(ntok) - ntok)[:, None] + np.arange(2)]
    vals, ntok, _, _, _ = _records(vn, vn_no, src, "normal")
    _check_width(ntok, (3,), vn_no, src, "normal")
    vals, counts, nval, has_t, has_n = _records(f, f_no, src, "face", corners=True)
    line_of = np.repeat(np.array(f_no, dtype=np.int64), counts)
    first = np.cumsum(nval) - nval
    # One corner form per face: "f 1/1 2/2 3" is broken, not a face without uv.
    form = has_t + 2 * has_n
    head = np.cumsum(counts) - counts
    mixed = form != np.repeat(form[head], counts)
    if mixed.any():
        raise FormatError(f"{src}: line {line_of[np.argmax(mixed)]}: the face mixes corner forms "
                          f"(v, v/vt, v/vt/vn, v//vn)")

    def resolve(idx, where, def_lines, count, what):
        # OBJ indices are 1-based; negative ones count back from the last
        # element defined before the face's line.
        at = line_of[where]
        idx = _indices(idx, at, src, f"{what} index")
        if (idx == 0).any():
            raise FormatError(f"{src}: line {at[np.argmax(idx == 0)]}: "
                              f"{what} index 0 (OBJ indices start at 1)")
        before = np.searchsorted(np.array(def_lines, dtype=np.int64), at)
        out = np.where(idx > 0, idx - 1, before + idx)
        bad = (out < 0) | (out >= count)
        if what != "vertex" and bad.any():  # vertex indices: load_mesh reports them
            raise FormatError(f"{src}: line {at[np.argmax(bad)]}: {what} index "
                              f"{idx[np.argmax(bad)]} out of range (the file has {count} "
                              f"{'vt' if what == 'texture' else 'vn'} lines)")
        return out

    corners = resolve(vals[first], np.ones(len(first), bool), v_no, len(V), "vertex")
    ti = resolve(vals[(first + 1)[has_t]], has_t, vt_no, len(T), "texture")
    resolve(vals[(first + nval - 1)[has_n]], has_n, vn_no, len(vn), "normal")
    # Faces without texture indices beside faces with them: no per-vertex uv.
    corner_uv = T[ti] if len(has_t) and has_t.all() else None
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
    raw = path.read_bytes()
    lines = [(no, t) for no, line in enumerate(raw.split(b"\n"), 1)
             if (t := line.split(b"#", 1)[0].strip())]
    if not lines:
        raise FormatError(f"{src}: empty file")
    tail = raw.rsplit(b"\n", 1)[-1]  # text after the last line break
    if b"#" not in tail:  # a comment after the last value shows it is complete
        _check_terminated(raw, src)
    no, head = lines[0][0], lines[0][1].split()
    m = re.fullmatch(rb"(ST)?(C)?(N)?OFF", head[0])
    if m is None:
        raise FormatError(f"{src}: line {no}: expected an OFF header (OFF, COFF, NOFF, STOFF, "
                          f"...), found {head[0].decode('ascii', 'replace')[:40]!r}")
    has_st, has_c, has_n = (g is not None for g in m.groups())
    body = lines[1:]
    if len(head) == 1:  # counts on their own line
        if not body:
            raise FormatError(f"{src}: no element counts after the header")
        (no, counts_line), body = body[0], body[1:]
        head = [head[0]] + counts_line.split()
    if len(head) not in (3, 4) or not all(re.fullmatch(rb"[0-9]+", c) for c in head[1:]):
        raise FormatError(f"{src}: line {no}: expected 'vertices faces edges' counts "
                          f"(non-negative integers)")
    nv, nf = int(head[1]), int(head[2])
    if len(body) < nv + nf:
        raise FormatError(f"{src}: {nv} vertices and {nf} faces declared but only "
                          f"{len(body)} data lines (truncated file?)")
    if len(body) > nv + nf:
        raise FormatError(f"{src}: line {body[nv + nf][0]}: {len(body) - nv - nf} data lines "
                          f"after the {nv} vertices and {nf} faces declared (wrong count or a "
                          f"repeated line?)")
    v_no, v = [n for n, _ in body[:nv]], [t for _, t in body[:nv]]
    vals, ntok, _, _, _ = _records(v, v_no, src, "vertex")
    base = 3 + 3 * has_n + 2 * has_st
    _check_width(ntok, (base + 3, base + 4) if has_c else (base,), v_no, src,
                 f"{m.group(0).decode()} vertex")
    first = np.cumsum(ntok) - ntok
    V = vals[first[:, None] + np.arange(3)]
    colors = uv = None
    if has_c:  # x y z [nx ny nz] r g b [a] [s t] (Geomview order)
        k = int(ntok[0]) - base if nv else 3
        colors = _text_colours(vals[first[:, None] + 3 + 3 * has_n + np.arange(k)],
                               v_no, src)[:, :3]
    if has_st:
        uv = vals[(first + ntok - 2)[:, None] + np.arange(2)]
    f_no, f = [n for n, _ in body[nv:]], [t for _, t in body[nv:]]
    vals, ntok, _, _, _ = _records(f, f_no, src, "face")
    first = np.cumsum(ntok) - ntok
    f_no = np.array(f_no, dtype=np.int64)
    counts = _indices(vals[first], f_no, src, "face size")
    if (counts < 3).any():
        raise FormatError(f"{src}: line {f_no[np.argmax(counts < 3)]}: face with "
                          f"{counts[np.argmax(counts < 3)]} vertices (need at least 3)")
    extra = ntok - 1 - counts  # an optional face colour: 1, 3 or 4 numbers
    bad = ~np.isin(extra, (0, 1, 3, 4))
    if bad.any():
        i = int(np.argmax(bad))
        raise FormatError(f"{src}: line {f_no[i]}: a face of {counts[i]} vertices needs "
                          f"{counts[i] + 1} numbers (+ 1, 3 or 4 for a colour), found {ntok[i]}")
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

_STL_FACET = re.compile(rb"\s*facet\s+normal" + rb"\s+(\S+)" * 3 + rb"\s+outer\s+loop"
                        + (rb"\s+vertex" + rb"\s+(\S+)" * 3) * 3 + rb"\s+endloop\s+endfacet",
                        re.IGNORECASE)


def _stl_ascii(raw: bytes, src: str, binary_hint: str) -> np.ndarray:
    """Corner positions (3t, 3) of an ASCII STL: 'solid name', facets of
    'facet normal n n n / outer loop / 3 x vertex x y z / endloop / endfacet',
    and the closing 'endsolid' (the evidence that nothing was cut off)."""
    head = re.match(rb"[ \t\r\n]*solid[^\n]*\n", raw, re.IGNORECASE)
    pos, numbers = (head.end() if head else len(raw)), []
    for m in _STL_FACET.finditer(raw, pos):
        if m.start() != pos:
            break
        numbers.extend(m.groups())
        pos = m.end()
    if head is None or not re.fullmatch(rb"\s*endsolid[^\n]*\s*", raw[pos:], re.IGNORECASE):
        line = raw.count(b"\n", 0, pos) + 1 + (raw[pos:pos + 1] == b"\n")
        raise FormatError(f"{src}: ASCII STL: line {line}: expected 'facet normal ...' or the "
                          f"closing 'endsolid' (truncated or damaged file?); as a binary STL "
                          f"it {binary_hint}")
    values = _ply_numbers(numbers, "ASCII STL facet", src).reshape(-1, 12)
    return values[:, 3:].reshape(-1, 3)


def _read_stl(path: Path):
    src = str(path)
    raw = path.read_bytes()
    n = struct.unpack_from("<I", raw, 80)[0] if len(raw) >= 84 else -1
    if n >= 0 and len(raw) == 84 + 50 * n:
        rec = np.frombuffer(raw, np.dtype([("n", "<f4", (3,)), ("v", "<f4", (3, 3)),
                                           ("a", "<u2")]), n, 84)
        with np.errstate(invalid="ignore"):  # a signalling NaN: refused below
            P = rec["v"].reshape(-1, 3).astype(np.float64)
    else:
        want = (f"would need 84 + 50 x {n} = {84 + 50 * n} bytes, not {len(raw)}" if n >= 0
                else f"would need at least 84 bytes, not {len(raw)}")
        if raw.lstrip()[:5].lower() != b"solid":
            raise FormatError(f"{src}: neither ASCII STL (no 'solid' line) nor binary STL: it "
                              f"{want} (truncated file?)")
        P = _stl_ascii(raw, src, want)
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

_VRML_NODE = re.compile(rb"\b(Coordinate|Color|TextureCoordinate)\s*\{")
_VRML_FIELD = {b"Coordinate": b"point", b"Color": b"color", b"TextureCoordinate": b"point"}
_VRML_BODY = {k: re.compile(rb"\s*" + f + rb"\s*\[([^\]]*)\]\s*\}") for k, f in _VRML_FIELD.items()}
_VRML_COORD_INDEX = re.compile(rb"\bcoordIndex\s*\[([^\]]*)\]")


def _vrml_preparse(raw: bytes, src: str):
    """Light numpy pre-parse of a VRML file, to check what pymeshlab returns:
    tokens of at most :data:`MAX_VRML_TOKEN` bytes, balanced brackets (a cut
    file leaves them open), ``Coordinate``/``Color``/``TextureCoordinate``
    nodes holding just their ``point``/``color`` array, points finite and
    plausible, colours in [0, 1] and at least one per point when per vertex,
    texture coordinates finite, every ``coordIndex`` made of integer literals
    where -1 ends a polygon of >= 3 distinct indices within its
    IndexedFaceSet's points (pymeshlab drops a polygon with a repeated vertex).

    Returns (number of points, polygon sizes, corner indices, points (n, 3),
    whether the file is one IndexedFaceSet without transforms, inlines or
    instances, so that these arrays are its mesh)."""
    text = re.sub(rb"#[^\n\r]*", b"", raw)  # comments, the '#VRML' line included
    longest = max((len(t) for t in text.split()), default=0)
    if longest > MAX_VRML_TOKEN:
        raise FormatError(f"{src}: a VRML token of {longest} bytes (at most {MAX_VRML_TOKEN}): "
                          f"damaged file")
    for a, b in ((b"{", b"}"), (b"[", b"]")):
        if text.count(a) != text.count(b):
            raise FormatError(f"{src}: VRML brackets do not balance ({text.count(a)} "
                              f"'{a.decode()}', {text.count(b)} '{b.decode()}'): truncated or "
                              f"damaged file")

    def numbers(body, what):
        return _ply_numbers(body.replace(b",", b" ").split(), f"VRML {what}", src)

    # A misspelt node type is skipped by pymeshlab, losing e.g. the colours.
    for m in re.finditer(rb"\b(coord|color|texCoord)\s+(?:DEF\s+\S+\s+)?(\w+)\s*\{", text):
        want = {b"coord": b"Coordinate", b"color": b"Color", b"texCoord": b"TextureCoordinate"}
        if m.group(2) != want[m.group(1)]:
            raise FormatError(f"{src}: VRML field '{m.group(1).decode()}' holds a "
                              f"'{m.group(2)[:40].decode('ascii', 'replace')}' node, expected "
                              f"'{want[m.group(1)].decode()}'")
    coords, colours = [], []
    for m in _VRML_NODE.finditer(text):
        kind, name = m.group(1), m.group(1).decode()
        body = _VRML_BODY[kind].match(text, m.end())
        if body is None:
            raise FormatError(f"{src}: a VRML {name} node does not hold just its "
                              f"'{_VRML_FIELD[kind].decode()} [ ... ]' array")
        width = 2 if name == "TextureCoordinate" else 3
        v = numbers(body.group(1), name)
        if v.size % width:
            raise FormatError(f"{src}: VRML {name} holds {v.size} numbers, not a multiple of "
                              f"{width}")
        v = v.reshape(-1, width)
        if name == "Coordinate":
            _check_plausible(v, src, "VRML point")
            coords.append(v)
        elif name == "Color":
            if not ((v >= 0) & (v <= 1)).all():
                raise FormatError(f"{src}: a VRML Color value is outside [0, 1] or not a number")
            colours.append(v)
        elif not np.isfinite(v).all():
            raise FormatError(f"{src}: a VRML TextureCoordinate value is NaN or infinite")
    # Per-vertex colours (the default, without colorIndex): pymeshlab paints
    # vertices beyond the Color list white, silently.
    if (len(colours) == len(coords) and b"colorIndex" not in text
            and re.search(rb"colorPerVertex\s+FALSE", text) is None):
        for c, v in zip(colours, coords):
            if len(c) < len(v):
                raise FormatError(f"{src}: a VRML Color node lists {len(c)} colours for "
                                  f"{len(v)} points")
    sizes, corners, offset = [], [], 0
    indexes = list(_VRML_COORD_INDEX.finditer(text))
    for k, m in enumerate(indexes):
        toks = m.group(1).replace(b",", b" ").split()
        bad = [t for t in toks if re.fullmatch(rb"-1|[0-9]{1,10}", t) is None]
        if bad:
            raise FormatError(f"{src}: VRML coordIndex value "
                              f"{bad[0][:40].decode('ascii', 'replace')!r} is not a vertex index")
        idx = np.array([int(t) for t in toks], dtype=np.int64)
        n = len(coords[k]) if len(coords) == len(indexes) else sum(map(len, coords))
        if idx.max(initial=-1) >= n:
            raise FormatError(f"{src}: VRML coordIndex {idx.max()} is out of range ({n} points)")
        stops = np.flatnonzero(idx == -1)
        if len(idx) and idx[-1] != -1:  # the last polygon may omit its -1
            stops = np.r_[stops, len(idx)]
        size = np.diff(np.r_[-1, stops]) - 1
        if (size < 3).any():
            raise FormatError(f"{src}: a VRML polygon has {size[np.argmax(size < 3)]} "
                              f"vertices (need at least 3)")
        poly = idx[idx >= 0]
        key = np.repeat(np.arange(len(size)), size) * (n + 1) + poly
        if len(np.unique(key)) != len(key):
            raise FormatError(f"{src}: a VRML polygon repeats a vertex (pymeshlab would drop it)")
        sizes.append(size)
        corners.append(poly + (offset if len(coords) == len(indexes) else 0))
        offset += n if len(coords) == len(indexes) else 0
    cat = lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape)
    one_set = len(indexes) == 1 and re.search(rb"\b(Transform|Inline|USE)\b", text) is None
    return (sum(map(len, coords)), cat(sizes, 0).astype(np.int64),
            cat(corners, 0).astype(np.int64), cat(coords, (0, 3)), one_set)


def _read_wrl(path: Path):
    import pymeshlab  # only VRML needs it; importing it costs ~0.2 s

    src = str(path)
    raw = path.read_bytes()
    n_points, sizes, corners, points, one_set = _vrml_preparse(raw, src)
    ms = pymeshlab.MeshSet()
    try:
        ms.load_new_mesh(src)
    except Exception as e:  # pymeshlab also raises bare "unknown exception"s
        detail = " ".join(str(e).split())[-200:]
        raise FormatError(f"{src}: cannot parse VRML ({detail})") from None
    m = ms.current_mesh()
    V, F = m.vertex_matrix(), m.face_matrix().astype(np.int64)
    colors = m.vertex_color_matrix()[:, :3] if m.has_vertex_color() else None
    # pymeshlab silently drops NaN vertices and faces with a repeated vertex.
    if len(V) != n_points:
        raise FormatError(f"{src}: pymeshlab read {len(V)} vertices but the VRML Coordinate "
                          f"nodes list {n_points} points (damaged file?)")
    if not one_set:  # several shapes, transforms: pymeshlab's result, counted
        if len(F) != int((sizes - 2).sum()):
            raise FormatError(f"{src}: pymeshlab read {len(F)} triangles but the VRML "
                              f"coordIndex lists {int((sizes - 2).sum())} (damaged file?)")
        return V, np.full(len(F), 3, np.int64), F.reshape(-1), colors, None, None
    # One face set: pymeshlab's vertices must be the file's values; the
    # polygons are fan-triangulated like every other format (pymeshlab's own
    # triangulation gives up on non-convex polygons).
    if not np.allclose(V, points, rtol=1e-6, atol=1e-6) or (
            (sizes == 3).all() and not np.array_equal(F.reshape(-1), corners)):
        raise FormatError(f"{src}: pymeshlab's vertices or faces differ from the file's "
                          f"Coordinate/coordIndex values (damaged file)")
    return V, sizes, corners, colors, None, None


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


def _abs_header(head: bytes, src: str):
    """(H, W, offset of the pixel data) from the start of an .abs file."""
    lines = head.split(b"\n", 3)
    if len(lines) < 4:
        raise FormatError(f"{src}: header needs 3 lines ('<H> rows', '<W> columns', "
                          f"'pixels (flag X Y Z):'), file has {len(lines)} lines")
    expect = ("<H> rows", "<W> columns", "pixels (flag X Y Z):")
    t = [ln.split() for ln in lines[:3]]
    good = (len(t[0]) >= 2 and re.fullmatch(rb"[0-9]+", t[0][0]) and t[0][1].lower() == b"rows",
            len(t[1]) >= 2 and re.fullmatch(rb"[0-9]+", t[1][0]) and t[1][1].lower() == b"columns",
            len(t[2]) >= 1 and t[2][0].lower() == b"pixels")
    for no in range(3):
        if not good[no]:
            found = lines[no].strip()[:60].decode("ascii", "replace")
            raise FormatError(f"{src}: header line {no + 1} should read {expect[no]!r}, "
                              f"found {found!r}")
    H, W = int(t[0][0]), int(t[1][0])
    if not 0 < H * W <= MAX_GRID_PIXELS:
        raise FormatError(f"{src}: a {H} x {W} grid: need 1 .. {MAX_GRID_PIXELS} pixels")
    return H, W, sum(len(ln) + 1 for ln in lines[:3])


def _read_abs_bytes(path: Path, src: str) -> bytes:
    """The text of an .abs or .abs.gz. A gzip stream is decompressed only up
    to what its header's grid can plausibly hold, so a decompression bomb is
    refused after at most that much memory."""
    try:
        if not path.name.lower().endswith(".gz"):
            return path.read_bytes()
        with gzip.open(path, "rb") as fh:
            head = fh.read(4096)
            H, W, _ = _abs_header(head, src)
            cap = 4096 + H * W * MAX_ABS_BYTES_PER_PIXEL
            raw = head + fh.read(cap + 1 - len(head))
            if len(raw) > cap:
                raise FormatError(f"{src}: decompresses to more than {cap} bytes, beyond any "
                                  f"text of a {H} x {W} grid (corrupt file or decompression "
                                  f"bomb)")
            return raw
    except (OSError, EOFError, zlib.error) as e:
        raise FormatError(f"{src}: cannot read ({' '.join(str(e).split())})") from None


def read_abs(path: PathLike) -> RangeScan:
    """Read an FRGC ``.abs`` (or gzip-compressed ``.abs.gz``) range file.

    Layout: ``<H> rows``, ``<W> columns``, ``pixels (flag X Y Z):``, then H*W
    flags (1 valid, 0 invalid), H*W X, H*W Y and H*W Z values in mm, row-major
    with the top scan line first (normally one line each). Invalid pixels are
    masked by their flag (not by the -999999 sentinel) and set to NaN. The
    texture is the sibling ``<stem>.ppm`` when it exists (FRGC pairs are
    sometimes off by one shot number: pair through the sigsets if needed).

    Refused with :class:`FormatError` (see "Input checks" in the README): a
    grid beyond :data:`MAX_GRID_PIXELS` or larger than the file can hold, a
    gzip stream that is corrupt or decompresses beyond the grid's plausible
    text, a file ending inside its last number (no final line break), flags
    other than 0/1, a valid pixel holding the -999999 sentinel, a NaN or a
    coordinate beyond :data:`MAX_COORDINATE`, and fewer than
    :data:`MIN_SCAN_POINTS` valid pixels.
    """
    path = _existing_file(path)
    src = str(path)
    raw = _read_abs_bytes(path, src)
    H, W, start = _abs_header(raw, src)
    N = H * W
    # Each of the 4N values takes a character and a separator at least.
    if len(raw) - start < 8 * N - 1:
        raise FormatError(f"{src}: {len(raw) - start} bytes of pixel data cannot hold the "
                          f"4 x {H} x {W} values of the header's grid (truncated file?)")
    _check_terminated(raw, src)
    body = raw[start:]

    def numbers(s, what):
        fast = _parse_decimals(np.frombuffer(s, np.uint8))
        if fast is not None:
            return fast
        try:  # exponents, odd tokens: numpy's parser, which also reports errors
            return np.fromstring(s, sep=" ")
        except ValueError:
            raise FormatError(f"{src}: non-numeric value in {what}") from None

    data = [ln for ln in body.split(b"\n") if ln.strip()]
    if len(data) == 4:
        arrays = []
        for k, (ln, name) in enumerate(zip(data, ("flags", "X", "Y", "Z"))):
            a = numbers(ln, f"data line {k + 4} ({name})")
            if a.size != N:
                raise FormatError(f"{src}: data line {k + 4} ({name}) has {a.size} values, "
                                  f"expected {H} x {W} = {N} (truncated file?)")
            arrays.append(a)
    else:  # values wrapped over other line breaks
        a = numbers(body, "the pixel data")
        if a.size != 4 * N:
            raise FormatError(f"{src}: {a.size} values after the header, expected "
                              f"4 x {H} x {W} = {4 * N} (truncated file?)")
        arrays = np.split(a, 4)
    flags, x, y, z = arrays
    if not np.isin(flags, (0.0, 1.0)).all():
        raise FormatError(f"{src}: flags must be 0 or 1, found {flags[~np.isin(flags, (0, 1))][0]}")
    valid = (flags == 1).reshape(H, W)
    xyz = np.stack([x, y, z], axis=-1).reshape(H, W, 3)
    sentinel = valid & (xyz == _ABS_INVALID).any(axis=2)
    if sentinel.any():
        r, c = np.argwhere(sentinel)[0]
        raise FormatError(f"{src}: pixel (row {r}, col {c}) is flagged valid but holds the "
                          f"invalid-pixel marker {_ABS_INVALID:g} (damaged flag?)")
    _check_valid_points(xyz, valid, src)
    xyz[~valid] = np.nan
    stem = path.name[: -len(".abs.gz")] if path.name.lower().endswith(".abs.gz") else path.stem
    texture = path.with_name(stem + ".ppm")
    return RangeScan(xyz, valid, texture if texture.is_file() else None, None, path)


def _check_valid_points(xyz: np.ndarray, valid: np.ndarray, src: str) -> None:
    """The valid pixels of a range grid: finite, within :data:`MAX_COORDINATE`,
    and at least :data:`MIN_SCAN_POINTS` of them."""
    bad = valid & ~(np.isfinite(xyz) & (np.abs(xyz) <= MAX_COORDINATE)).all(axis=2)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise FormatError(f"{src}: valid pixel (row {r}, col {c}) has coordinates "
                          f"{xyz[r, c].tolist()}: NaN, infinite or beyond the "
                          f"{MAX_COORDINATE:g} mm a face scanner can produce")
    pts = xyz[valid]
    if len(pts) < MIN_SCAN_POINTS:
        raise FormatError(f"{src}: only {len(pts)} valid points in the {valid.shape[0]} x "
                          f"{valid.shape[1]} grid (need at least {MIN_SCAN_POINTS}): an empty "
                          f"or damaged scan")


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

    Refused with :class:`FormatError` (see "Input checks" in the README): an
    empty grid, a size other than the header's, a texture name that is not a
    plain printable file name of at most :data:`MAX_NAME_BYTES` bytes (no
    path separators, no '..': the texture stays in the scan's folder), a
    background marker ``zmin`` that is not a finite value outside the
    +-:data:`MAX_COORDINATE` mm real coordinates lie in, background pixels
    whose x or y is not the marker, valid pixels with a NaN or implausible
    coordinate, u, v outside [0, 1] (+-0.001), and fewer than
    :data:`MIN_SCAN_POINTS` valid pixels.
    """
    path = _existing_file(path)
    src = str(path)
    raw = path.read_bytes()
    if len(raw) < 14:
        raise FormatError(f"{src}: truncated header ({len(raw)} bytes, need at least 14)")
    nrows, ncols, zmin, L = struct.unpack_from("<HHdH", raw, 0)
    if nrows == 0 or ncols == 0:
        raise FormatError(f"{src}: the header's grid is {nrows} x {ncols}: an empty scan")
    if L > MAX_NAME_BYTES:
        raise FormatError(f"{src}: texture file name of {L} bytes in the header (at most "
                          f"{MAX_NAME_BYTES}): damaged header")
    if len(raw) < 18 + L:
        raise FormatError(f"{src}: truncated header ({len(raw)} bytes, the texture name of "
                          f"{L} bytes and the value count need {18 + L})")
    name = raw[14:14 + L]
    if (re.fullmatch(rb"[\x20-\x7e]*", name) is None or b"/" in name or b"\\" in name
            or name.strip() in (b".", b"..")):
        raise FormatError(f"{src}: the header's texture name {name[:60]!r} is not a plain file "
                          f"name in the scan's folder (printable ASCII, no path separators)")
    imfile = name.decode("ascii")
    (n,) = struct.unpack_from("<I", raw, 14 + L)
    N = nrows * ncols
    if n != 5 * N:
        raise FormatError(f"{src}: header says {n} values but a {nrows} x {ncols} grid with "
                          f"5 columns needs {5 * N}")
    if len(raw) != 18 + L + 8 * n:
        raise FormatError(f"{src}: file size {len(raw)} bytes, expected 18 + {L} + 8 x {n} = "
                          f"{18 + L + 8 * n} for a {nrows} x {ncols} grid"
                          f"{' (truncated file)' if len(raw) < 18 + L + 8 * n else ''}")
    # The background marker must be a value no real coordinate can take, or
    # background and face cannot be told apart.
    if not (np.isfinite(zmin) and abs(zmin) > MAX_COORDINATE):
        raise FormatError(f"{src}: background marker zmin = {zmin!r} in the header is not a "
                          f"finite value beyond the +-{MAX_COORDINATE:g} mm of real "
                          f"coordinates (damaged header?)")
    x, y, z, u, v = np.flip(np.frombuffer(raw, "<f8", n, 18 + L).reshape(5, nrows, ncols), axis=1)
    valid = z != zmin
    odd = ~valid & ((x != zmin) | (y != zmin))
    if odd.any():
        r, c = np.argwhere(odd)[0]
        raise FormatError(f"{src}: background pixel (row {r}, col {c}) has z = zmin but x, y = "
                          f"{x[r, c]!r}, {y[r, c]!r} (background x, y, z all equal zmin)")
    xyz = np.stack([x, y, z], axis=-1)
    _check_valid_points(xyz, valid, src)
    uv = np.stack([u, v], axis=-1)
    bad = ~((uv >= -1e-3) & (uv <= 1 + 1e-3)).all(axis=2)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise FormatError(f"{src}: pixel (row {r}, col {c}) has texture coordinates "
                          f"{uv[r, c].tolist()}, outside [0, 1]")
    xyz[~valid] = np.nan
    texture = path.with_name(imfile) if imfile.strip() else None
    return RangeScan(xyz, valid, texture if texture is not None and texture.is_file() else None,
                     uv, path)


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
    """[(line number, stripped line)] of a text file (lines end at '\n' only)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    return [(no, line.strip()) for no, line in enumerate(text.split("\n"), 1)]


def _point(tokens, path, no, dims=(2, 3)) -> list:
    """Parse one coordinate line (numpy's strict number syntax): finite and
    plausible (3D: within :data:`MAX_COORDINATE` mm, 2D: within
    :data:`MAX_PIXEL` pixels). FormatError naming file and line."""
    try:
        p = np.fromstring(" ".join(tokens), sep=" ") if tokens else np.zeros(0)
    except ValueError:
        p = None
    if p is None or p.size != len(tokens):
        raise FormatError(f"{path}: line {no}: cannot parse numbers from "
                          f"{' '.join(tokens)[:80]!r}")
    if len(p) not in dims:
        raise FormatError(f"{path}: line {no}: expected {' or '.join(map(str, dims))} numbers, "
                          f"found {len(p)}")
    if not np.isfinite(p).all():
        raise FormatError(f"{path}: line {no}: NaN or infinite coordinate")
    limit, unit = (MAX_COORDINATE, "mm") if len(p) == 3 else (MAX_PIXEL, "pixels")
    if np.abs(p).max() > limit:
        raise FormatError(f"{path}: line {no}: coordinate {np.abs(p).max():.6g} beyond the "
                          f"{limit:g} {unit} a landmark can plausibly have (damaged number?)")
    return p.tolist()


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
            if not re.fullmatch(r"[0-9]+", val.strip()):
                raise FormatError(f"{path}: line {no}: cannot parse n_points "
                                  f"{val.strip()[:40]!r}")
            n = int(val)
        i += 1
    if n is None:
        raise FormatError(f"{path}: no 'n_points:' line before '{{'")
    if i == len(lines):
        raise FormatError(f"{path}: no '{{' opening the point list")
    rows, width = [], None
    for k, (no, s) in enumerate(lines[i + 1:], i + 1):
        if s == "}":
            if k + 1 < len(lines):
                raise FormatError(f"{path}: line {lines[k + 1][0]}: text after the closing '}}'")
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
    _check_terminated(path.read_bytes(), str(path))
    lines = _text_lines(path)
    i = 0
    while i < len(lines) and (not lines[i][1] or lines[i][1].startswith("#")):
        i += 1
    if i < len(lines) and lines[i][1] == "*":  # info text up to a blank line
        while i < len(lines) and lines[i][1]:
            i += 1
    body = [(no, s) for no, s in lines[i:] if s]
    m = re.fullmatch(r"([0-9]+)\s+landmarks:?", body[0][1], re.I) if body else None
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
    unknown extension, unparsable numbers, NaN, coordinates beyond
    :data:`MAX_COORDINATE` mm (3D) or :data:`MAX_PIXEL` (2D), a wrong point
    count, a .lm2/.lm3 ending inside its last number (no final newline) or
    text after a .pts file's closing brace."""
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
