"""Range-scan files: FRGC ``.abs``/``.abs.gz`` and Bosphorus ``.bnt``.

Both are returned as a :class:`~dce.geom.records.RangeScan` in image
orientation (row 0 = top of the face as the scanner sees it). The text of an
FRGC file (about a million decimals) is parsed and written by two Numba
number codecs, plain decimals in and ``%.6f`` out; a gzip stream is
decompressed only up to what its header's grid can plausibly hold. The
checks of each reader are listed in its docstring and under "Input checks"
in the README; writers replace the target atomically.
"""
from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from numba import njit

from .records import (
    MAX_COORDINATE,
    MIN_SCAN_POINTS,
    FormatError,
    PathLike,
    RangeScan,
    _check_terminated,
    _existing_file,
    atomic_write,
)

# The largest .abs grid read (FRGC: 480 x 640). It also bounds what an
# .abs.gz may decompress to, together with MAX_ABS_BYTES_PER_PIXEL.
MAX_GRID_PIXELS = 1 << 22
# Generous upper bound on the text of one .abs pixel (flag + 3 numbers of up
# to 24 characters, separators): an .abs.gz stream longer than header +
# pixels x this is refused as a decompression bomb.
MAX_ABS_BYTES_PER_PIXEL = 4 * 26
# Longest .bnt texture file name accepted (a plain name in the scan's folder).
MAX_NAME_BYTES = 255

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
    atomic_write(path, data)


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
    atomic_write(path, struct.pack("<HHdH", H, W, zmin, len(name)) + name
                  + struct.pack("<I", data.size) + data.tobytes())
