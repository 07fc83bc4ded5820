"""Seeded mutation test of every reader.

Small valid files of each format are written with the project's writers
(ascii PLY and ascii STL, which it does not write, by hand from the
documented layouts), then mutated with a seeded generator: bit flips, bytes
set to telling values, truncation at every kind of position, numbers replaced
by NaN / huge / negative / fractional ones, lines duplicated, deleted or
swapped, header counts edited, binary fields overwritten, slices deleted or
repeated, gzip streams corrupted or inflated into a bomb.

Each mutant is judged against a *reference decoder*: a plain-Python parser,
written here from the format's documentation and the rules of "Input checks"
in the README, independent of the vectorised readers. It returns the decoded
arrays when it can prove the mutant is a valid file, else None. A mutant is
handled correctly when

- the reference proves it valid and the reader returns exactly the reference's
  arrays (a semantically valid change, e.g. one coordinate changed), or
- the reference does not prove it valid and the reader raises a FormatError
  naming the file, or returns exactly the original's arrays (a change the
  format ignores: a comment, the OFF edge count, an STL normal).

Anything else is counted: an exception other than FormatError ("uncaught"), a
clean read that matches neither ("silently wrong"), a FormatError on a file
the reference proves valid ("refused valid"), a FormatError not naming the
file. All must be 0. ``benchmarks/fuzz_readers.py`` runs the same campaign
with thousands of mutants.
"""
from __future__ import annotations

import gzip
import random
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from dce.geom import io
from dce.geom.io import FormatError, Landmarks, Mesh, RangeScan

MAXC, MAXP, MINPTS = io.MAX_COORDINATE, io.MAX_PIXEL, io.MIN_SCAN_POINTS

# A number as the documentation of every text format allows it (C locale
# strtod without hex): the reference accepts nothing else.
_NUM = re.compile(rb"[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|nan|inf|infinity)",
                  re.IGNORECASE)


def num(tok: bytes):
    """float of a strict number token, else None."""
    return float(tok) if _NUM.fullmatch(tok) else None


def integer(tok: bytes, lo=-2**31, hi=2**31 - 1):
    """int of a number token whose value is an integer in [lo, hi], else None."""
    v = num(tok)
    return int(v) if v is not None and np.isfinite(v) and v == int(v) and lo <= v <= hi else None


def ends_with_space(raw: bytes) -> bool:
    return raw[-1:].isspace()


# ------------------------------------------------------- reference decoders

def mesh_result(V, polys, colors=None, vertex_uv=None, corner_uv=None):
    """Canonical per-corner arrays of a mesh after the documented checks, or
    None. ``polys``: vertex-index lists; ``corner_uv``: per-polygon uv lists."""
    V = np.array(V, dtype=np.float64).reshape(-1, 3)
    if len(V) == 0 or not polys:
        return None
    if not np.isfinite(V).all() or np.abs(V).max() > MAXC:
        return None
    if any(len(p) < 3 or min(p) < 0 or max(p) >= len(V) for p in polys):
        return None
    if colors is not None:
        colors = np.array(colors, dtype=np.float64).reshape(-1, 3)
        if not ((colors >= 0) & (colors <= 1)).all():
            return None
    for uv in (vertex_uv, corner_uv):
        if uv is not None and not all(np.isfinite(np.array(u, float)).all() for u in uv):
            return None
    fan = lambda seq: [(seq[0], seq[k], seq[k + 1]) for k in range(1, len(seq) - 1)]
    F = np.array([t for p in polys for t in fan(p)], dtype=np.int64)
    out = {"P": V[F], "C": None, "UV": None}
    if colors is not None:
        out["C"] = colors.astype(np.float32)[F]
    if vertex_uv is not None:
        out["UV"] = np.array(vertex_uv, dtype=np.float64).reshape(-1, 2)[F]
    elif corner_uv is not None:
        out["UV"] = np.array([t for p in corner_uv for t in fan([tuple(u) for u in p])],
                             dtype=np.float64)
    return out


PLY_TYPES = {"char": "b", "int8": "b", "uchar": "B", "uint8": "B", "short": "h", "int16": "h",
             "ushort": "H", "uint16": "H", "int": "i", "int32": "i", "uint": "I", "uint32": "I",
             "float": "f", "float32": "f", "double": "d", "float64": "d"}
INT_RANGE = {"b": (-128, 127), "B": (0, 255), "h": (-2**15, 2**15 - 1), "H": (0, 2**16 - 1),
             "i": (-2**31, 2**31 - 1), "I": (0, 2**32 - 1)}


def ref_ply(raw: bytes, folder: Path):
    """PLY 1.0 (ascii, binary little/big endian), record by record."""
    if re.match(rb"ply[ \t\r]*\n", raw) is None:
        return None
    end = raw.find(b"\nend_header")
    if end < 0:
        return None
    rest = raw.find(b"\n", end + 1)
    if raw[end + 11:(len(raw) if rest < 0 else rest)].strip(b" \t\r"):
        return None
    start = len(raw) if rest < 0 else rest + 1
    fmt, elements = None, []
    for line in raw[:end].split(b"\n")[1:]:
        t = line.split()
        if not t or t[0] in (b"comment", b"obj_info"):
            continue
        try:
            t = [x.decode("ascii") for x in t]
        except UnicodeDecodeError:
            return None
        names = [p[0] for p in elements[-1][2]] if elements else []
        if t[0] == "format" and len(t) == 3 and fmt is None and t[1] in (
                "ascii", "binary_little_endian", "binary_big_endian"):
            fmt = t[1]
        elif (t[0] == "element" and len(t) == 3 and re.fullmatch("[0-9]+", t[2])
              and t[1] not in [e[0] for e in elements]):
            elements.append((t[1], int(t[2]), []))
        elif t[0] == "property" and elements and len(t) == 3 and t[1] in PLY_TYPES \
                and t[2] not in names:
            elements[-1][2].append((t[2], PLY_TYPES[t[1]], None))
        elif (t[0] == "property" and elements and len(t) == 5 and t[1] == "list"
              and PLY_TYPES.get(t[2], "f") in INT_RANGE and t[3] in PLY_TYPES
              and t[4] not in names):
            elements[-1][2].append((t[4], PLY_TYPES[t[3]], PLY_TYPES[t[2]]))
        else:
            return None
    if fmt is None or any(count and not props for _, count, props in elements):
        return None
    data = {}
    if fmt == "ascii":
        toks, k = raw[start:].split(), 0
        if toks and not ends_with_space(raw):
            return None

        def value(code):
            nonlocal k
            if k >= len(toks):
                raise LookupError
            v = num(toks[k])
            k += 1
            if v is None or (code in INT_RANGE and integer(toks[k - 1], *INT_RANGE[code]) is None):
                raise LookupError
            return v
    else:
        order, k = ("<" if fmt == "binary_little_endian" else ">"), start

        def value(code):
            nonlocal k
            size = struct.calcsize(code)
            if k + size > len(raw):
                raise LookupError
            v = struct.unpack_from(order + code, raw, k)[0]
            k += size
            return float(v)
    try:
        for name, count, props in elements:
            recs = []
            for _ in range(count):
                rec = {}
                for pname, code, ccode in props:
                    if ccode is None:
                        rec[pname] = value(code)
                    else:
                        c = value(ccode)
                        if c < 0:
                            return None
                        rec[pname] = [value(code) for _ in range(int(c))]
                recs.append(rec)
            data[name] = (recs, {p[0]: p for p in props})
    except LookupError:
        return None
    if k != (len(toks) if fmt == "ascii" else len(raw)):
        return None
    if "vertex" not in data:
        return None
    verts, vprops = data["vertex"]

    def columns(names):
        if not all(n in vprops for n in names):
            return "absent"
        if any(vprops[n][2] is not None for n in names):
            return None
        return [[r[n] for n in names] for r in verts]

    V = columns("xyz")
    if V in ("absent", None):
        return None
    colors = None
    for names in (("red", "green", "blue"), ("diffuse_red", "diffuse_green", "diffuse_blue"),
                  ("r", "g", "b")):
        c = columns(names)
        if c is None:
            return None
        if c != "absent":
            code = vprops[names[0]][1]
            colors = np.array(c, float).reshape(-1, 3) / (INT_RANGE[code][1] if code in INT_RANGE
                                                          else 1.0)
            break
    uv = None
    for names in (("texture_u", "texture_v"), ("u", "v"), ("s", "t"), ("texture_s", "texture_t")):
        c = columns(names)
        if c is None:
            return None
        if c != "absent":
            uv = c
            break
    faces, fprops = data.get("face", ([], {}))
    for key in ("vertex_indices", "vertex_index"):
        if key in fprops and fprops[key][2] is not None and fprops[key][1] not in INT_RANGE:
            return None
    key = next((k for k in ("vertex_indices", "vertex_index")
                if k in fprops and fprops[k][2] is not None), None)
    if key is None:
        return None
    polys = [[int(i) for i in f[key]] for f in faces]
    corner_uv = None
    if "texcoord" in fprops and fprops["texcoord"][2] is not None:
        if any(len(f["texcoord"]) != 2 * len(f[key]) for f in faces):
            return None
        corner_uv = [np.reshape(f["texcoord"], (-1, 2)) for f in faces]
    if uv is not None:
        corner_uv = None  # per-vertex uv wins
    return mesh_result(V, polys, colors, uv, corner_uv)


def text_colours(c):
    """Colours of a text format: [0, 1], or 8-bit integers when one exceeds 1."""
    c = np.array(c, dtype=np.float64)
    if c.size and np.nanmax(c) > 1:
        if not ((c == np.round(c)) & (c >= 0) & (c <= 255)).all():
            return None
        return c / 255.0
    return c


def ref_obj(raw: bytes, folder: Path):
    """OBJ: v (3, 4 or 6 numbers, all lines alike), vt (2 or 3), vn (3), f
    with one corner form per face; 1-based or negative (relative) indices."""
    V, T, N, faces = [], [], [], []
    for line in raw.split(b"\n"):
        s = line.strip()
        key = next((k for k in (b"v", b"vt", b"vn", b"f") if s.startswith((k + b" ", k + b"\t"))),
                   None)
        if key is None:
            continue
        toks = s[len(key) + 1:].split()
        if key == b"f":
            corners = []
            for tok in toks:
                parts = tok.split(b"/")
                if len(parts) > 3 or parts[0] == b"" or (len(parts) == 2 and parts[1] == b"") \
                        or (len(parts) == 3 and parts[2] == b""):
                    return None
                ints = [integer(p) if p else "none" for p in parts]
                if None in ints or 0 in ints:
                    return None
                corners.append((ints + ["none", "none"])[:3])
            if not corners or len({(c[1] == "none", c[2] == "none") for c in corners}) != 1:
                return None
            faces.append((corners, len(V), len(T), len(N)))
        else:
            vals = [num(t) for t in toks]
            if None in vals:
                return None
            {b"v": V, b"vt": T, b"vn": N}[key].append(vals)
    for rows, widths in ((V, (3, 4, 6)), (T, (2, 3)), (N, (3,))):
        if rows and (len({len(r) for r in rows}) != 1 or len(rows[0]) not in widths):
            return None
    colors = None
    if V and len(V[0]) == 6:
        colors = text_colours([r[3:] for r in V])
        if colors is None:
            return None

    def resolve(i, before, total):
        j = i - 1 if i > 0 else before + i
        if not 0 <= j < total:
            raise LookupError
        return j

    polys, corner_uv = [], []
    try:
        for corners, nv, nt, nn in faces:
            polys.append([resolve(c[0], nv, len(V)) if c[0] > 0 else nv + c[0] for c in corners])
            if corners[0][1] != "none":
                corner_uv.append([T[resolve(c[1], nt, len(T))][:2] for c in corners])
            if corners[0][2] != "none":
                [resolve(c[2], nn, len(N)) for c in corners]
    except LookupError:
        return None
    uv = corner_uv if len(corner_uv) == len(faces) else None
    return mesh_result([r[:3] for r in V], polys, colors, None, uv)


def ref_off(raw: bytes, folder: Path):
    """[ST][C][N]OFF; counts; exactly the declared lines; '#' comments."""
    lines = [ln.split(b"#", 1)[0].strip() for ln in raw.split(b"\n")]
    lines = [ln for ln in lines if ln]
    tail = raw.rsplit(b"\n", 1)[-1]
    if not lines or (tail.strip() and b"#" not in tail and not ends_with_space(raw)):
        return None
    head = lines[0].split()
    m = re.fullmatch(rb"(ST)?(C)?(N)?OFF", head[0])
    if m is None:
        return None
    st, c, n = (g is not None for g in m.groups())
    body = lines[1:]
    if len(head) == 1:
        if not body:
            return None
        head, body = head + body[0].split(), body[1:]
    if len(head) not in (3, 4) or not all(re.fullmatch(rb"[0-9]+", x) for x in head[1:]):
        return None
    nv, nf = int(head[1]), int(head[2])
    if len(body) != nv + nf:
        return None
    rows = [[num(t) for t in ln.split()] for ln in body[:nv]]
    base = 3 + 3 * n + 2 * st
    widths = (base + 3, base + 4) if c else (base,)
    if any(None in r for r in rows) or len({len(r) for r in rows}) > 1 or (
            rows and len(rows[0]) not in widths):
        return None
    colors = None
    if c:
        colors = text_colours([r[3 + 3 * n:len(r) - 2 * st] for r in rows]) if rows else None
        if rows and colors is None:
            return None
        colors = None if colors is None else np.asarray(colors)[:, :3]
    polys = []
    for ln in body[nv:]:
        t = ln.split()
        k = integer(t[0], 3, 2**31 - 1)
        if k is None or len(t) - 1 - k not in (0, 1, 3, 4) or any(num(x) is None for x in t):
            return None
        idx = [integer(x) for x in t[1:1 + k]]
        if None in idx:
            return None
        polys.append(idx)
    uv = [r[-2:] for r in rows] if st else None
    return mesh_result([r[:3] for r in rows], polys, colors, uv)


def ref_stl(raw: bytes, folder: Path):
    """Binary STL (84 + 50 n bytes) or ASCII STL ending in 'endsolid'."""
    if len(raw) >= 84 and len(raw) == 84 + 50 * struct.unpack_from("<I", raw, 80)[0]:
        n = struct.unpack_from("<I", raw, 80)[0]
        P = [struct.unpack_from("<9f", raw, 84 + 50 * i + 12) for i in range(n)]
    else:
        body = raw.lstrip(b" \t\r\n")
        first, nl, rest = body.partition(b"\n")
        if body[:5].lower() != b"solid" or not nl:
            return None
        toks = [(m.group().lower(), m.end()) for m in re.finditer(rb"\S+", rest)]
        words = [t for t, _ in toks]
        k, P = 0, []
        while k < len(toks) and words[k] == b"facet":
            t = words[k:k + 21]
            if len(t) < 21 or t[1] != b"normal" or t[5:7] != [b"outer", b"loop"] \
                    or [t[7], t[11], t[15]] != [b"vertex"] * 3 \
                    or t[19:21] != [b"endloop", b"endfacet"]:
                return None
            vals = [num(x) for x in t[2:5] + t[8:11] + t[12:15] + t[16:19]]
            if None in vals:
                return None
            P.append(vals[3:])
            k += 21
        # 'endsolid' (the rest of its line is a free name), then nothing.
        if k >= len(toks) or not words[k].startswith(b"endsolid"):
            return None
        if rest[toks[k][1]:].partition(b"\n")[2].strip():
            return None
    P = np.array(P, dtype=np.float64).reshape(-1, 3)
    if len(P) == 0 or not np.isfinite(P).all() or np.abs(P).max() > MAXC:
        return None
    return {"P": P.reshape(-1, 3, 3), "C": None, "UV": None}


def ref_wrl(raw: bytes, folder: Path):
    """The VRML 2.0 subset save_mesh writes: one IndexedFaceSet (polygons,
    fan-triangulated) with Coordinate, optional per-vertex Color and
    TextureCoordinate. pymeshlab drops a polygon with a repeated vertex, so
    the reader refuses it: the reference does not prove it valid either."""
    if not raw.startswith(b"#VRML V2.0 utf8\n"):
        return None
    text = re.sub(rb"#[^\n\r]*", b"", raw)  # a comment ends at a line feed or a return
    if any(len(t) > io.MAX_VRML_TOKEN for t in text.split()):
        return None
    # Commas separate values; pymeshlab's grammar refuses a leading or a
    # doubled one, and any outside an array (so does the reader, through it).
    if re.search(rb"\[[ \t\r\n]*,|,[ \t\r\n]*,", text) \
            or b"," in re.sub(rb"\[[^\]]*\]", b"[]", text):
        return None
    toks = re.findall(rb"[{}\[\]]|[^ \t\r\n,{}\[\]]+", text)  # VRML separators
    k = 0

    def expect(*words):
        nonlocal k
        if toks[k:k + len(words)] != list(words):
            raise LookupError
        k += len(words)

    def array():
        nonlocal k
        expect(b"[")
        end = toks.index(b"]", k)
        items, k = toks[k:end], end + 1
        return items

    colours = None
    try:
        expect(b"Shape", b"{", b"geometry", b"IndexedFaceSet", b"{", b"solid", b"FALSE",
               b"coord", b"Coordinate", b"{", b"point")
        points = array()
        expect(b"}")
        if toks[k] == b"colorPerVertex":
            expect(b"colorPerVertex", b"TRUE", b"color", b"Color", b"{", b"color")
            colours = array()
            expect(b"}")
        if toks[k] == b"texCoord":
            expect(b"texCoord", b"TextureCoordinate", b"{", b"point")
            uv = array()
            expect(b"}")
            if len(uv) % 2 or any(num(t) is None or not np.isfinite(num(t)) for t in uv):
                return None
        expect(b"coordIndex")
        index = array()
        expect(b"}", b"}")
    except (LookupError, ValueError, IndexError):
        return None
    if k != len(toks):
        return None
    P = [num(t) for t in points]
    if None in P or len(P) % 3:
        return None
    P = np.reshape(P, (-1, 3))
    if colours is not None:
        colours = [num(t) for t in colours]
        if None in colours or len(colours) % 3 or len(colours) < P.size \
                or not all(0 <= c <= 1 for c in colours):
            return None
        colours = np.reshape(colours, (-1, 3))[:len(P)]
    if any(re.fullmatch(rb"-1|[0-9]+", t) is None for t in index):
        return None  # MFInt32 literals
    idx = [int(t) for t in index]
    if idx and idx[-1] != -1:
        idx.append(-1)
    polys, cur = [], []
    for i in idx:
        if i == -1:
            polys.append(cur)
            cur = []
        elif i < 0:
            return None
        else:
            cur.append(i)
    if any(len(set(p)) != len(p) for p in polys):
        return None
    return mesh_result(P, polys, colours)


def gunzip_capped(raw: bytes):
    """One gzip member (zero padding after it allowed), inflated to at most
    one byte beyond the plausible text of the grid its header declares; None
    when corrupt. The cap check itself is left to ref_abs."""
    d = zlib.decompressobj(31)
    try:
        head = d.decompress(raw, 4096)
        m = re.match(rb"\s*([0-9]+)[^\n]*\n\s*([0-9]+)", head)
        pixels = min(int(m.group(1)) * int(m.group(2)), io.MAX_GRID_PIXELS) if m else 0
        cap = 4096 + pixels * io.MAX_ABS_BYTES_PER_PIXEL
        text = head + d.decompress(d.unconsumed_tail, cap + 1 - len(head))
    except zlib.error:
        return None
    if len(text) > cap:
        return text  # refused by the size rule
    if not d.eof or d.unused_data.strip(b"\0"):
        return None
    return text


def ref_abs(raw: bytes, folder: Path, gz: bool = False):
    """FRGC .abs: 3 header lines, then flags, X, Y, Z (4 lines, or any
    wrapping of 4 x H x W values); a final line break; valid pixels finite
    and plausible."""
    if gz:
        raw = gunzip_capped(raw)
        if raw is None:
            return None
    lines = raw.split(b"\n", 3)
    if len(lines) < 4:
        return None
    t = [ln.split() for ln in lines[:3]]
    if not (len(t[0]) >= 2 and re.fullmatch(rb"[0-9]+", t[0][0]) and t[0][1].lower() == b"rows"
            and len(t[1]) >= 2 and re.fullmatch(rb"[0-9]+", t[1][0])
            and t[1][1].lower() == b"columns" and t[2] and t[2][0].lower() == b"pixels"):
        return None
    H, W = int(t[0][0]), int(t[1][0])
    N = H * W
    if not 0 < N <= io.MAX_GRID_PIXELS or not ends_with_space(raw):
        return None
    if gz and len(raw) > 4096 + N * io.MAX_ABS_BYTES_PER_PIXEL:
        return None
    data = [ln for ln in lines[3].split(b"\n") if ln.strip()]
    if len(data) == 4 and any(len(ln.split()) != N for ln in data):
        return None
    values = [num(x) for x in lines[3].split()]
    if None in values or len(values) != 4 * N:
        return None
    flags, x, y, z = np.reshape(values, (4, H, W))
    if not np.isin(flags, (0, 1)).all():
        return None
    valid = flags == 1
    xyz = np.stack([x, y, z], -1)[valid]
    if not np.isfinite(xyz).all() or np.abs(xyz).max(initial=0) > MAXC or len(xyz) < MINPTS:
        return None
    return {"valid": valid, "xyz": xyz, "uv": None, "texture": None}


def ref_abs_gz(raw: bytes, folder: Path):
    return ref_abs(raw, folder, gz=True)


def ref_bnt(raw: bytes, folder: Path):
    """Bosphorus .bnt: header, N x 5 float64 column-major, bottom row first."""
    if len(raw) < 18:
        return None
    nrows, ncols, zmin, L = struct.unpack_from("<HHdH", raw)
    if nrows == 0 or ncols == 0 or L > io.MAX_NAME_BYTES or len(raw) < 18 + L:
        return None
    name = raw[14:14 + L]
    if any(b < 0x20 or b > 0x7E for b in name) or b"/" in name or b"\\" in name \
            or name.strip() in (b".", b".."):
        return None
    (n,) = struct.unpack_from("<I", raw, 14 + L)
    if n != 5 * nrows * ncols or len(raw) != 18 + L + 8 * n:
        return None
    if not (np.isfinite(zmin) and abs(zmin) > MAXC):
        return None
    x, y, z, u, v = [np.array(struct.unpack_from(f"<{nrows * ncols}d", raw,
                                                 18 + L + 8 * nrows * ncols * c))
                     .reshape(nrows, ncols)[::-1] for c in range(5)]
    background = z == zmin
    if (x[background] != zmin).any() or (y[background] != zmin).any():
        return None
    valid = ~background
    xyz = np.stack([x, y, z], -1)[valid]
    if not np.isfinite(xyz).all() or np.abs(xyz).max(initial=0) > MAXC or len(xyz) < MINPTS:
        return None
    uv = np.stack([u, v], -1)
    if not ((uv >= -1e-3) & (uv <= 1 + 1e-3)).all():
        return None
    texture = name.decode() if name.strip() and (folder / name.decode()).is_file() else None
    return {"valid": valid, "xyz": xyz, "uv": uv, "texture": texture}


def text_lines(raw: bytes):
    return [ln.strip() for ln in raw.decode("utf-8", "replace").split("\n")]


def point(line: str, dims):
    """Numbers of a coordinate line, finite and plausible, else None."""
    p = [num(t.encode("utf-8")) for t in line.split()]
    if None in p or len(p) not in dims or not np.isfinite(p).all():
        return None
    return p if np.abs(p).max() <= (MAXC if len(p) == 3 else MAXP) else None


def bosphorus_body(raw: bytes):
    if not ends_with_space(raw):
        return None, None
    L, i = text_lines(raw), 0
    while i < len(L) and (not L[i] or L[i].startswith("#")):
        i += 1
    if i < len(L) and L[i] == "*":
        while i < len(L) and L[i]:
            i += 1
    body = [s for s in L[i:] if s]
    m = re.fullmatch(r"([0-9]+)\s+landmarks:?", body[0], re.IGNORECASE) if body else None
    return (int(m.group(1)), body[1:]) if m else (None, None)


def ref_lm3(raw: bytes, folder: Path):
    n, rest = bosphorus_body(raw)
    if n is None or len(rest) != 2 * n:
        return None
    pts = [point(s, (3,)) for s in rest[1::2]]
    if None in pts:
        return None
    return {"points": np.reshape(pts, (-1, 3)), "labels": rest[0::2]}


def ref_lm2(raw: bytes, folder: Path):
    n, rest = bosphorus_body(raw)
    if n is None:
        return None
    heads = [k for k, s in enumerate(rest) if s.lower().rstrip(":") in
             ("labels", "2d image coordinates")]
    if len(heads) != 2 or rest[heads[0]].lower() != "labels:":
        return None
    labels, coords = rest[heads[0] + 1:heads[1]], rest[heads[1] + 1:]
    if len(labels) != n or len(coords) != n:
        return None
    pts = [point(s, (2,)) for s in coords]
    if None in pts:
        return None
    return {"points": np.reshape(pts, (-1, 2)), "labels": labels}


def ref_pts(raw: bytes, folder: Path):
    L = [s for s in text_lines(raw) if s]
    n, i = None, 0
    while i < len(L) and L[i] != "{":
        key, _, val = L[i].partition(":")
        if key.strip().lower() == "n_points":
            if not re.fullmatch(r"[0-9]+", val.strip()):
                return None
            n = int(val)
        i += 1
    if n is None or i == len(L):
        return None
    rows = []
    for k in range(i + 1, len(L)):
        if L[k] == "}":
            if k + 1 < len(L):
                return None
            break
        p = point(L[k], (2, 3))
        if p is None or (rows and len(p) != len(rows[0])):
            return None
        rows.append(p)
    else:
        return None
    if len(rows) != n:
        return None
    pts = np.reshape(rows, (n, len(rows[0]) if rows else 2))
    return {"points": pts, "labels": [str(k) for k in range(n)]}


# ---------------------------------------------------------------- fixtures

def source_mesh():
    """A 4 x 4 grid face patch (mm), 18 triangles, 8-bit colours, uv."""
    rng = np.random.default_rng(7)
    r, c = np.mgrid[0:4, 0:4]
    V = np.column_stack([c.ravel() * 10.0 - 15, 15 - r.ravel() * 10.0,
                         rng.normal(0, 5, 16).round(3)])
    i = np.arange(16).reshape(4, 4)
    a, b, cc, d = i[:-1, :-1].ravel(), i[:-1, 1:].ravel(), i[1:, :-1].ravel(), i[1:, 1:].ravel()
    F = np.concatenate([np.column_stack([a, cc, d]), np.column_stack([a, d, b])])
    return Mesh(V, F, rng.integers(0, 256, (16, 3)) / 255.0, rng.random((16, 2)).round(4))


def ascii_ply(m: Mesh) -> bytes:
    """An ascii PLY from the PLY 1.0 layout (the project writes binary)."""
    head = ["ply", "format ascii 1.0", "comment hand-written fixture",
            f"element vertex {m.n_vertices}", "property double x", "property double y",
            "property double z", "property uchar red", "property uchar green",
            "property uchar blue", "property double texture_u", "property double texture_v",
            f"element face {m.n_faces}", "property list uchar int vertex_indices", "end_header"]
    rgb = np.round(m.colors * 255).astype(int)
    rows = [f"{x!r} {y!r} {z!r} {r} {g} {b} {u!r} {v!r}"
            for (x, y, z), (r, g, b), (u, v) in zip(m.vertices.tolist(), rgb.tolist(),
                                                      m.uv.tolist())]
    rows += [f"3 {a} {b} {c}" for a, b, c in m.faces.tolist()]
    return ("\n".join(head + rows) + "\n").encode()


def ascii_stl(m: Mesh) -> bytes:
    """An ASCII STL from its documented grammar (the project writes binary)."""
    out = ["solid fixture"]
    for f in m.faces.tolist():
        out += ["facet normal 0 0 1", "  outer loop"]
        out += ["    vertex {!r} {!r} {!r}".format(*m.vertices[k].tolist()) for k in f]
        out += ["  endloop", "endfacet"]
    return ("\n".join(out + ["endsolid fixture"]) + "\n").encode()


def source_scan(uv: bool):
    """A 5 x 6 range grid (mm, 6 decimals) with 5 invalid pixels."""
    rng = np.random.default_rng(11)
    r, c = np.mgrid[0:5, 0:6]
    xyz = np.stack([c * 0.8 - 2.0, 2.0 - r * 0.8, -900 + rng.normal(0, 3, (5, 6))], -1).round(6)
    valid = np.ones((5, 6), bool)
    valid[0, 0] = valid[0, 5] = valid[4, 0] = valid[2, 3] = valid[4, 5] = False
    xyz[~valid] = np.nan
    st = np.stack(np.meshgrid((np.arange(6) + 0.5) / 6, (np.arange(5) + 0.5) / 5), -1)
    return RangeScan(xyz, valid, None, st if uv else None)


LABELS = ["Outer left eyebrow", "Inner left eye corner", "Nose saddle left", "Nose tip",
          "Left mouth corner", "Chin middle"]


def canon_mesh(path):
    m = io.load_mesh(path, split_uv_seams=True)
    F = m.faces
    return {"P": m.vertices[F], "C": None if m.colors is None else m.colors[F],
            "UV": None if m.uv is None else m.uv[F]}


def canon_scan(reader):
    def read(path):
        s = reader(path)
        return {"valid": s.valid, "xyz": s.xyz[s.valid], "uv": s.uv,
                "texture": None if s.texture_path is None else s.texture_path.name}
    return read


def canon_landmarks(path):
    lm = io.read_landmarks(path)
    return {"points": lm.points, "labels": lm.labels}


def same(a, b, loose=False) -> bool:
    """Equal canonical records (``loose``: float32 geometry and 8-bit colours,
    as pymeshlab parses VRML)."""
    if a is None or b is None or a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if x is None or y is None or isinstance(x, (str, list)):
            if type(x) is not type(y) or x != y:
                return False
            continue
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return False
        if loose:
            tol = {"C": dict(rtol=0, atol=1 / 255 + 1e-6)}.get(k, dict(rtol=1e-6, atol=1e-6))
            if not np.allclose(x, y, **tol):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


class Fixture:
    """One format: how to write the original, read it (canonical arrays),
    decode it independently, and where its structure lies for the mutator."""

    def __init__(self, name, filename, write, read, ref, text=True, loose=False,
                 counts=None, fields=None, gz=False):
        self.name, self.filename, self.write, self.read, self.ref = name, filename, write, read, ref
        self.text, self.loose, self.gz = text, loose, gz
        self.counts = counts  # regex whose group 1 is a header count (text headers)
        self.fields = fields  # raw -> [(offset, struct code, is a header count)]

    def header_end(self, raw: bytes) -> int:
        k = raw.find(b"end_header\n")
        if k >= 0:
            return k + 11
        if self.name == "bnt":
            return 18 + struct.unpack_from("<H", raw, 12)[0]
        if self.name == "stl-binary":
            return 84
        if self.name == "gzip stream":
            return 10
        if self.name.startswith("abs"):
            return raw.find(b":\n") + 2
        return raw.find(b"\n") + 1


def ply_binary_fields(raw):
    h = raw.find(b"end_header\n") + 11
    nv = int(re.search(rb"element vertex ([0-9]+)", raw).group(1))
    nf = int(re.search(rb"element face ([0-9]+)", raw).group(1))
    out = [(h + 43 * k + o, c, False) for k in range(nv)
           for o, c in ((0, "d"), (8, "d"), (16, "d"), (24, "B"), (25, "B"), (26, "B"),
                        (27, "d"), (35, "d"))]
    f0 = h + 43 * nv
    out += [(f0 + 13 * k + o, c, False) for k in range(nf)
            for o, c in ((0, "B"), (1, "i"), (5, "i"), (9, "i"))]
    return out


def stl_fields(raw):
    n = struct.unpack_from("<I", raw, 80)[0]
    out = [(80, "I", True)]
    out += [(84 + 50 * k + 4 * j, "f", False) for k in range(n) for j in range(12)]
    return out + [(84 + 50 * k + 48, "H", False) for k in range(n)]


def bnt_fields(raw):
    L = struct.unpack_from("<H", raw, 12)[0]
    n = struct.unpack_from("<I", raw, 14 + L)[0]
    out = [(0, "H", True), (2, "H", True), (4, "d", True), (12, "H", True), (14 + L, "I", True)]
    return out + [(18 + L + 8 * k, "d", False) for k in range(n)]


def write_with(fn, name):
    def write(folder: Path) -> bytes:
        fn(folder / name)
        return (folder / name).read_bytes()
    return write


def write_bytes(data_fn, name):
    def write(folder: Path) -> bytes:
        (folder / name).write_bytes(data_fn())
        return (folder / name).read_bytes()
    return write


def write_bnt_fixture(folder: Path) -> bytes:
    (folder / "face.png").write_bytes(b"")  # the texture the header names
    scan = source_scan(uv=True)
    scan.texture_path = folder / "face.png"
    io.write_bnt(folder / "scan.bnt", scan)
    return (folder / "scan.bnt").read_bytes()


MESH_COUNTS = rb"element \w+ ([0-9]+)"


def fixtures():
    m = source_mesh()
    rng = np.random.default_rng(3)
    lm3 = Landmarks(rng.normal(0, 40, (6, 3)).round(3), LABELS)
    lm2 = Landmarks(rng.uniform(100, 900, (6, 2)).round(2), LABELS)
    pts = Landmarks(rng.uniform(10, 500, (8, 2)).round(3))
    mesh = lambda ext: write_with(lambda p: io.save_mesh(p, m), f"mesh.{ext}")
    scan_abs = lambda p: io.write_abs(p, source_scan(uv=False))
    return [
        Fixture("ply-binary", "mesh.ply", mesh("ply"), canon_mesh, ref_ply, text=False,
                counts=MESH_COUNTS, fields=ply_binary_fields),
        Fixture("ply-ascii", "mesh.ply", write_bytes(lambda: ascii_ply(m), "mesh.ply"),
                canon_mesh, ref_ply, counts=MESH_COUNTS),
        Fixture("obj", "mesh.obj", mesh("obj"), canon_mesh, ref_obj),
        Fixture("off", "mesh.off", mesh("off"), canon_mesh, ref_off,
                counts=rb"\n([0-9]+) [0-9]+ [0-9]+\n|\n[0-9]+ ([0-9]+) [0-9]+\n"),
        Fixture("stl-ascii", "mesh.stl", write_bytes(lambda: ascii_stl(m), "mesh.stl"),
                canon_mesh, ref_stl),
        Fixture("stl-binary", "mesh.stl", mesh("stl"), canon_mesh, ref_stl, text=False,
                fields=stl_fields),
        Fixture("wrl", "mesh.wrl", mesh("wrl"), canon_mesh, ref_wrl, loose=True),
        Fixture("abs", "scan.abs", write_with(scan_abs, "scan.abs"), canon_scan(io.read_abs),
                ref_abs, counts=rb"([0-9]+) rows|([0-9]+) columns"),
        Fixture("abs-gz", "scan.abs.gz", write_with(scan_abs, "scan.abs.gz"),
                canon_scan(io.read_abs), ref_abs_gz, counts=rb"([0-9]+) rows|([0-9]+) columns",
                gz=True),
        Fixture("bnt", "scan.bnt", write_bnt_fixture, canon_scan(io.read_bnt), ref_bnt,
                text=False, fields=bnt_fields),
        Fixture("lm3", "face.lm3", write_with(lambda p: io.write_landmarks(p, lm3), "face.lm3"),
                canon_landmarks, ref_lm3, counts=rb"([0-9]+) landmarks"),
        Fixture("lm2", "face.lm2", write_with(lambda p: io.write_landmarks(p, lm2), "face.lm2"),
                canon_landmarks, ref_lm2, counts=rb"([0-9]+) landmarks"),
        Fixture("pts", "face.pts", write_with(lambda p: io.write_landmarks(p, pts), "face.pts"),
                canon_landmarks, ref_pts, counts=rb"n_points: ([0-9]+)"),
    ]


# ----------------------------------------------------------------- mutator

SPECIAL_TOKENS = [b"nan", b"NaN", b"inf", b"-inf", b"1e999", b"-1e999", b"1e300", b"-1e12",
                  b"1e12", b"10000", b"10000.000001", b"-10000", b"0", b"-0", b"1.5", b"2.5",
                  b"-1", b"-2", b"3", b"255", b"256", b"300", b"0.5", b"1e5", b"99999",
                  b"12345678901234567890", b"0x10", b"1_0", b"", b"abc", b"2147483648",
                  b"-999999.000000", b"1e-320", b"1.0"]
SPECIAL_BYTES = [0x00, 0x09, 0x0A, 0x0B, 0x0D, 0x20, 0x23, 0x2C, 0x2D, 0x2E, 0x2F, 0x30, 0x39,
                 0x65, 0x7D, 0x5D, 0x7F, 0xFF]
NUMBER = re.compile(rb"[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?")


def special_values(code: str, old, zs=()):
    """Values worth writing into a binary field of struct type ``code``."""
    if code in "fd":
        huge = 1e300 if code == "d" else 3e38  # float32 tops out at 3.4e38
        return [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, huge, -1e5, 1e4,
                1e4 + 0.01, -1e9, 5e-324, -old, old + 0.5, old * 1.000001, *zs]
    lo, hi = INT_RANGE[code]
    return [v for v in (0, 1, 2, 3, 4, 7, -1, old - 1, old + 1, hi, lo, 255, 65535, 2**31 - 1)
            if lo <= v <= hi]


def flip(rng, raw, fx):
    b, i, bit = bytearray(raw), rng.randrange(len(raw)), rng.randrange(8)
    b[i] ^= 1 << bit
    return f"flip bit {bit} of byte {i}", bytes(b)


def set_byte(rng, raw, fx):
    b, i, v = bytearray(raw), rng.randrange(len(raw)), rng.choice(SPECIAL_BYTES)
    b[i] = v
    return f"byte {i} := {v:#04x}", bytes(b)


def truncate(rng, raw, fx):
    h = fx.header_end(raw)
    kind = rng.choice(["random", "header", "header end", "inside the last value",
                       "final byte", "record boundary"])
    if kind == "random":
        k = rng.randrange(len(raw))
    elif kind == "header":
        k = rng.randrange(1, max(2, h))
    elif kind == "header end":
        k = h + rng.choice([-1, 0, 1])
    elif kind == "inside the last value" and fx.text:
        last = list(re.finditer(rb"\S+", raw))[-1]
        k = rng.randrange(last.start() + 1, last.end()) if last.end() - last.start() > 1 \
            else last.start()
    elif kind == "inside the last value":
        k = len(raw) - rng.randrange(1, 8)
    elif kind == "final byte":
        k = len(raw) - 1
    elif fx.text:
        k = rng.choice([m.end() for m in re.finditer(rb"\n", raw)][:-1])
    elif fx.fields is not None:
        k = rng.choice([o for o, _, _ in fx.fields(raw)])
    else:
        k = rng.randrange(len(raw))
    return f"truncate at {k} ({kind})", raw[:k]


def replace_token(rng, raw, fx):
    h = fx.header_end(raw)
    t = rng.choice(list(NUMBER.finditer(raw, h)))
    old = t.group()
    try:
        mine = [b"-" + old.lstrip(b"-+"), repr(float(old) * 10).encode(), old + b"5",
                old[:-1] or b"0"]
    except ValueError:
        mine = []
    new = rng.choice(SPECIAL_TOKENS + mine)
    return f"number {old!r} at {t.start()} := {new!r}", raw[:t.start()] + new + raw[t.end():]


def edit_count(rng, raw, fx):
    if fx.counts is not None:
        m = rng.choice(list(re.finditer(fx.counts, raw)))
        g = next(k for k in range(1, len(m.groups()) + 1) if m.group(k) is not None)
        n = int(m.group(g))
        new = rng.choice([n + 1, n - 1, 0, -1, 2 * n, 2**31, 2**32 + n, 2**64, 10**30])
        return (f"count {n} at {m.start(g)} := {new}",
                raw[:m.start(g)] + str(new).encode() + raw[m.end(g):])
    return write_field(rng, raw, fx, header=True)


def write_field(rng, raw, fx, header=False):
    fields = [f for f in fx.fields(raw) if f[2] == header]
    off, code, _ = rng.choice(fields)
    old = struct.unpack_from("<" + code, raw, off)[0]
    zs = ()
    if fx.name == "bnt" and off == 4:  # zmin: also a real z of the scan
        L = struct.unpack_from("<H", raw, 12)[0]
        n = struct.unpack_from("<I", raw, 14 + L)[0]
        z = np.frombuffer(raw, "<f8", n, 18 + L)[2 * n // 5:3 * n // 5]
        zs = (float(z[z != old][0]), 1e9, -1e4 - 1)
    new = rng.choice(special_values(code, old, zs))
    b = bytearray(raw)
    struct.pack_into("<" + code, b, off, new)
    return f"field {code} at {off}: {old!r} := {new!r}", bytes(b)


def edit_lines(rng, raw, fx):
    lines = raw.splitlines(keepends=True)
    i = rng.randrange(len(lines))
    op = rng.choice(["repeat", "delete", "swap"])
    if op == "repeat":
        lines.insert(i, lines[i])
    elif op == "delete":
        del lines[i]
    elif i + 1 < len(lines):
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    return f"{op} line {i + 1}", b"".join(lines)


def edit_slice(rng, raw, fx):
    i, k = rng.randrange(len(raw)), rng.randrange(1, 17)
    if rng.random() < 0.5:
        return f"delete bytes {i}:{i + k}", raw[:i] + raw[i + k:]
    return f"repeat bytes {i}:{i + k}", raw[:i + k] + raw[i:]


def append(rng, raw, fx):
    tail = rng.choice([b"\n", b" ", b"\0", b"junk\n", raw[-13:], b"3 0 1 2\n"])
    return f"append {tail[:16]!r}", raw + tail


_BOMBS = {}


def gzip_bomb(rng, raw, fx, size=64 << 20):
    """The valid text followed by ``size`` bytes of padding, compressed
    (1 KB per MB): a decompression bomb (built once per padding)."""
    pad = rng.choice([b" ", b"0 ", b"\n"])
    key = (raw, pad, size)
    if key not in _BOMBS:
        c = zlib.compressobj(9, zlib.DEFLATED, 31)
        parts = [c.compress(gzip.decompress(raw))]
        chunk = pad * ((1 << 20) // len(pad))
        parts += [c.compress(chunk) for _ in range(size // len(chunk))]
        _BOMBS[key] = b"".join(parts) + c.flush()
    return f"gzip bomb (+{size >> 20} MiB of {pad!r})", _BOMBS[key]


TEXT_OPS = [flip, set_byte, truncate, replace_token, edit_count, edit_lines, edit_slice, append]
BINARY_OPS = [flip, set_byte, truncate, edit_count, write_field, edit_slice, append]
GZ_BYTE_OPS = [flip, set_byte, truncate, edit_slice, append]


def mutate(rng, raw, fx, bomb_size=64 << 20):
    """One seeded mutant: (description, bytes)."""
    if fx.gz:
        r = rng.random()
        if r < 0.05:
            return gzip_bomb(rng, raw, fx, bomb_size)
        if r < 0.5:  # the compressed bytes (a gzip header is 10 bytes)
            stream = Fixture("gzip stream", fx.filename, None, None, None, text=False)
            what, data = rng.choice(GZ_BYTE_OPS)(rng, raw, stream)
            return f"gzip stream: {what}", data
        text_fx = Fixture(fx.name, fx.filename, None, None, None, counts=fx.counts)
        what, text = rng.choice(TEXT_OPS)(rng, gzip.decompress(raw), text_fx)
        return f"text: {what}", gzip.compress(text, mtime=0)
    op = rng.choice(TEXT_OPS if fx.text else BINARY_OPS)
    if op is edit_count and fx.counts is None and fx.fields is None:
        op = replace_token
    return op(rng, raw, fx)


# ------------------------------------------------------------------ runner

OUTCOMES = ("FormatError", "clean, equal to the original", "clean, equal to the reference",
            "uncaught", "silently wrong", "refused valid", "error without file name")
BAD = ("uncaught", "silently wrong", "refused valid", "error without file name")


def judge(fx, path: Path, data: bytes, original) -> tuple:
    """(outcome, detail) of reading one mutant written at ``path``."""
    ref = fx.ref(data, path.parent)
    if ref is not None and not same(ref, original, fx.loose):
        want = ref  # a valid file with different content: the reader must see it
    else:
        want = original if ref is None else ref
    try:
        got = fx.read(path)
    except FormatError as e:
        if path.name not in str(e):
            return "error without file name", str(e)
        return ("refused valid", str(e)) if ref is not None else ("FormatError", "")
    except Exception as e:  # noqa: BLE001 - counting these is the point
        return "uncaught", f"{type(e).__name__}: {e}"
    if not same(got, want, fx.loose):
        return "silently wrong", "the reader's arrays match neither the original nor the reference"
    if ref is not None and not same(ref, original, fx.loose):
        return "clean, equal to the reference", ""
    return "clean, equal to the original", ""


def run_campaign(per_format: int, seed: int, folder: Path, names=None, bomb_size=64 << 20):
    """Run ``per_format`` mutants of every fixture (or those in ``names``).
    Returns {format: (Counter of outcomes, [(mutation, outcome, detail)] of
    the bad ones)}."""
    from collections import Counter

    results = {}
    for fx in fixtures():
        if names is not None and fx.name not in names:
            continue
        d = folder / fx.name
        d.mkdir(parents=True, exist_ok=True)
        raw = fx.write(d)
        path = d / fx.filename
        original = fx.read(path)
        assert same(original, fx.ref(raw, d), fx.loose), f"{fx.name}: reference disagrees"
        rng = random.Random(f"{seed}-{fx.name}")
        counts, bad = Counter(), []
        for _ in range(per_format):
            what, data = mutate(rng, raw, fx, bomb_size)
            path.write_bytes(data)
            outcome, detail = judge(fx, path, data, original)
            counts[outcome] += 1
            if outcome in BAD:
                bad.append((what, outcome, detail))
        path.write_bytes(raw)
        results[fx.name] = (counts, bad)
    return results


# ------------------------------------------------------------------- tests

PER_FORMAT = 30
NAMES = [fx.name for fx in fixtures()]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    return run_campaign(PER_FORMAT, seed=12, folder=tmp_path_factory.mktemp("fuzz"))


@pytest.mark.parametrize("name", NAMES)
def test_mutants_are_refused_or_read_right(campaign, name):
    counts, bad = campaign[name]
    assert sum(counts.values()) == PER_FORMAT
    assert not bad, "\n".join(f"{w}: {o}: {d}" for w, o, d in bad[:10])
    assert counts["FormatError"] > 0  # the campaign reaches the checks


def test_campaign_exercises_valid_changes(campaign):
    # Some mutants are valid files with other content (a changed coordinate,
    # a colour, a face index); the readers must read those, exactly.
    changed = sum(c["clean, equal to the reference"] for c, _ in campaign.values())
    assert changed >= 20


def test_originals_match_their_sources(tmp_path):
    # The fixtures themselves: the reader and the reference decode each
    # original to the arrays it was written from.
    m = source_mesh()
    for fx in fixtures():
        d = tmp_path / fx.name
        d.mkdir()
        raw = fx.write(d)
        got = fx.read(d / fx.filename)
        assert same(got, fx.ref(raw, d), fx.loose), fx.name
        if "P" in got:
            np.testing.assert_allclose(got["P"], m.vertices[m.faces], atol=1e-5)
        elif "valid" in got:
            np.testing.assert_array_equal(got["valid"], source_scan(False).valid)
            np.testing.assert_allclose(got["xyz"], source_scan(False).xyz[got["valid"]],
                                       atol=5e-7)
