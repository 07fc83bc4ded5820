"""VRML 2.0 meshes: pymeshlab in (checked by a numpy pre-parse), numpy out.

pymeshlab is used only to parse VRML. On every format it silently deletes
NaN vertices (re-indexing the rest) and faces with a repeated vertex, and
its VRML reader truncates colours, so a numpy pre-parse of the file checks
what it returns: token lengths, balanced brackets, node types, plausible
points, colours in [0, 1], integer ``coordIndex`` values within range and
polygons without a repeated vertex. Geometry is parsed as float32; colours
are kept (8-bit), uv written but not read.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .ply import _ply_numbers
from .records import FormatError, Mesh, _check_plausible

# Longest whitespace-separated token of a VRML file (numbers are < 30 bytes;
# a megabyte "number" made pymeshlab invent vertices).
MAX_VRML_TOKEN = 1024


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
