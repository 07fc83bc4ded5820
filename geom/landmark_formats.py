"""Landmark files: Bosphorus ``.lm2``/``.lm3``, iBUG ``.pts``, plain
``.txt``/``.csv`` (:func:`read_landmarks`, :func:`write_landmarks`), and the
files of 68 landmark vertex indices of a mesh (:func:`read_vertex_indices`).

Points come back as a :class:`~dce.geom.records.Landmarks`; what the 68
iBUG points mean (index groups, :func:`~dce.geom.records.nose_tip`) lives
with that record. Coordinates must be finite and plausible
(:data:`~dce.geom.records.MAX_COORDINATE` mm in 3D,
:data:`~dce.geom.records.MAX_PIXEL` in 2D); writers replace the target
atomically with full float64 precision.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .records import (
    MAX_COORDINATE,
    MAX_PIXEL,
    FormatError,
    Landmarks,
    PathLike,
    _check_terminated,
    _existing_file,
    atomic_write,
)


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


def read_landmarks(path: PathLike, expected: int | None = None) -> Landmarks:
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
    atomic_write(path, ("\n".join(out) + "\n").encode("utf-8"))


def read_vertex_indices(path: PathLike, n_vertices: int | None = None) -> np.ndarray:
    """68 landmark vertex indices (68,) int64 from ``.txt`` (whitespace or
    comma separated integers, '#' comments), ``.npy`` or ``.npz`` (key
    ``landmarks_68``). ``n_vertices``: the mesh size they must fit. Raises
    :class:`FormatError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file (68 landmark vertex indices)")
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            values = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "landmarks_68" not in z.files:
                    raise FormatError(f"{path}: no 'landmarks_68' array (has: "
                                      f"{', '.join(z.files)})")
                values = z["landmarks_68"]
        else:
            text = re.sub(r"#[^\n]*", "", path.read_text(errors="replace"))
            values = np.array(text.replace(",", " ").split(), dtype=np.float64)
    except FormatError:
        raise
    except (OSError, ValueError) as e:
        raise FormatError(f"{path}: cannot read landmark vertex indices ({e})") from None
    return _checked_indices(values, str(path), n_vertices)


def _checked_indices(values, src: str, n_vertices: int | None) -> np.ndarray:
    values = np.asarray(values).ravel()
    if values.shape != (68,) or not np.issubdtype(values.dtype, np.number) \
            or not np.all(values == np.round(values)):
        raise FormatError(f"{src}: expected 68 integer landmark vertex indices, got "
                          f"{values.size} values of type {values.dtype}")
    values = values.astype(np.int64)
    if n_vertices is not None and (values.min() < 0 or values.max() >= n_vertices):
        raise FormatError(f"{src}: landmark vertex indices span [{values.min()}, "
                          f"{values.max()}] but the coarse mesh has {n_vertices} vertices")
    return values
