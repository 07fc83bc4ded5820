"""OBJ and OFF meshes: the two text formats of newline-separated records.

Both are parsed by one vectorised record scanner (``np.fromstring`` over all
records of a kind at once); a record that does not parse is named by its
line. OBJ: ``v x y z [w]`` or ``v x y z r g b`` (colour extension), ``vt``,
``vn`` and ``f`` with any corner form (``v``, ``v/t``, ``v/t/n``, ``v//n``;
one form per face), 1-based or negative indices. OFF: the Geomview variants
``[ST][C][N]OFF`` with colours as floats in [0, 1] or 8-bit integers, an
optional face colour, exact element counts and no trailing records.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .records import FormatError, Mesh, _check_terminated

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
