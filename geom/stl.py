"""STL meshes: binary and ASCII in, binary out (float32, no colours or uv).

A file whose size is exactly 84 + 50 x its triangle count is binary;
otherwise it must be a complete ASCII STL (``solid`` ... ``endsolid``). STL
stores each triangle's corners, so identical corner positions are welded
into shared vertices on load, numbered in order of first appearance.
"""
from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from .ply import _ply_numbers
from .records import FormatError, Mesh

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
