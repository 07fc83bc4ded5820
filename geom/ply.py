"""PLY meshes: ascii, binary little- and big-endian in; binary little-endian out.

Read: vertices, faces (polygons as ``vertex_indices``/``vertex_index``
lists), 8-bit or float colours, per-vertex uv (``texture_u/v``, ``u/v``,
``s/t``, ``texture_s/t``) or per-corner ``texcoord`` lists. The binary reader
is a structured ``np.frombuffer`` view when every record has the same size
(262k vertices in ~0.03 s) and a Numba walk otherwise. Counts are checked
against the file size before anything is allocated, integer types hold
integers within their range, and nothing may follow the last element.
:func:`dce.geom.mesh_formats.load_mesh` turns the raw arrays into a
:class:`~dce.geom.records.Mesh`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from numba import njit

from .records import FormatError, Mesh, _check_terminated

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
