"""The DCE pair file: the HDF5 contract between ``dce-build`` (writer,
``dce.geom.store``) and ``dce.gan`` (reader). Format ``"dce-pairs"``, version 1.

This module imports numpy and h5py only, so the training side can read pair
files without the geometry stack. Any change to the layout below bumps
``FORMAT_VERSION``.

Layout
------
One *sample* is one pose of one (coarse, ground truth) pair. ``N`` samples,
``C`` channels, images ``H`` x ``W`` pixels (row, column; row 0 at the top).

Root attributes

=================  =====================================================
``format``         ``"dce-pairs"``
``format_version`` ``1``
``complete``       bool; True only in a finished build whose datasets
                   are all consistent. Readers refuse ``complete=False``.
``n_samples``      int; N (in a partial build: the samples committed so
                   far, see *Partial builds*)
``channels``       JSON list of channel names, e.g.
                   ``["depth", "curvature", "elevation"]`` (+ ``"r", "g",
                   "b"`` when the photo's colour is rendered)
``height``,        image size in pixels
``width``
``created_by``     ``"dce <version>"`` of the writer
``config``         JSON object: the build configuration (inputs, poses,
                   size, normalization, seed, ...), for provenance
``seed``,          the split's seed and test fraction (complete files)
``test_fraction``
``shard``          ``"K/N"`` in a file built as shard K of N (absent in a
                   whole or merged build)
``text_sha256``    hex SHA-256 of the file's text (:func:`text_digest`):
                   the text root attributes and the string datasets,
                   which no chunk checksum covers
=================  =====================================================

Per-sample datasets, first axis N, in ascending ``sample_id`` order
(Python code-point order, so that a build's file does not depend on worker
timing, and shards merged equal a single build):

=================================  ===========  ==========  ===================
name                               shape        dtype       meaning
=================================  ===========  ==========  ===================
``coarse``, ``target``             (N, C, H, W) uint16      quantized images
``coarse_mask``, ``target_mask``   (N, H, W)    uint8 0/1   valid (surface) px
``coarse_offset``, ``coarse_scale`` (N, C)      float64     physical =
``target_offset``, ``target_scale``                         offset + scale * x
``coarse_camera``,                 (N, 4, 3)    float64     rows 0-2: rotation
``target_camera``                                           R; row 3: (scale,
                                                            tx, ty)
``pose``                           (N, 3)       float32     yaw, pitch, roll deg
``sample_id``                      (N,)         UTF-8 str   e.g. "0246/pose0"
``pair_id``                        (N,)         UTF-8 str   e.g. "0246"
``subject``                        (N,)         UTF-8 str   identity
``provenance``                     (N,)         UTF-8 str   JSON: input paths
``split``                          (N,)         uint8       0 train, 1 test
=================================  ===========  ==========  ===================

*Quantization.* The pipeline normalizes every channel to [-1, 1] (background
-1). ``coarse``/``target`` store ``q = round((clip(x, -1, 1) + 1) / 2 *
65535)``, so ``x = q / 65535 * 2 - 1`` (``dequantize``) is within half a step,
``1 / 65535`` (1.5e-5), of the written value: 0.8 um of depth at a 50 mm
depth scale. Both datasets carry the attribute ``quantization = "uint16
[-1,1]"``. Physical units: ``offset + scale * x`` with depth in mm of view
depth (smaller = nearer the viewer), curvature in 1/mm, elevation in radians,
r, g, b in [0, 1]. The cameras are scaled orthographic: pixel ``[x, y] =
scale * (R X)[:2] + (tx, ty)`` and view depth ``(R X)[2]`` for a model point
``X`` in mm.

*Split.* Identity-disjoint: the file's distinct subjects, sorted, are
shuffled by ``numpy.random.default_rng(seed).permutation``; the first
``round((1 - test_fraction) * n_subjects)`` are train (0), the rest test (1).
Every sample of a subject has the subject's split. The default test fraction
is 1/3.

*Storage.* Images and masks are chunked one sample per chunk, the other
per-sample datasets up to 256 samples per chunk; all numeric datasets are
compressed (gzip level 4 with the shuffle filter by default, lzf, or none;
strings are not), so plain ``h5py`` reads a sample's image with one chunk
read: ``dequantize(f["coarse"][i])``.

Partial builds
--------------
A build collects samples in the directory ``<file>.partial/``: a
``settings.json`` (channels, size, config, shard, compression) and
*segments* ``segment-NNNNNN.h5``, each a file of this layout with
``complete=False``, a few whole samples in arrival order and no ``split``.
A segment is written under ``*.tmp`` and renamed, so it exists whole or not
at all; a killed build resumes from its segments. Finishing sorts all
samples, assigns the split and writes ``<file>.tmp``, then renames it onto
``<file>``; so the final name only ever holds complete files.

Shards
------
``dce-build --shard K/N`` assigns each pair to one shard by a stable hash of
its ``pair_id``. A shard file is complete on its own (``shard="K/N"``, split
over its own subjects). Merging the N shards (``dce.geom.store.merge_shards``)
copies every sample into one file and recomputes the split over all
subjects, which makes the merged file equal to a single build.
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import warnings

import h5py
import numpy as np

FORMAT_NAME = "dce-pairs"
FORMAT_VERSION = 1
QUANTIZATION = "uint16 [-1,1]"
QUANT_MAX = 65535
TRAIN, TEST = 0, 1
DEFAULT_TEST_FRACTION = 1.0 / 3.0
SPLIT = "split"

# name -> (dtype, per-sample shape with "C", "H", "W" standing for the sizes)
SAMPLE_DATASETS = {
    "coarse": ("uint16", ("C", "H", "W")),
    "target": ("uint16", ("C", "H", "W")),
    "coarse_mask": ("uint8", ("H", "W")),
    "target_mask": ("uint8", ("H", "W")),
    "coarse_offset": ("float64", ("C",)),
    "coarse_scale": ("float64", ("C",)),
    "target_offset": ("float64", ("C",)),
    "target_scale": ("float64", ("C",)),
    "coarse_camera": ("float64", (4, 3)),
    "target_camera": ("float64", (4, 3)),
    "pose": ("float32", (3,)),
    "sample_id": ("str", ()),
    "pair_id": ("str", ()),
    "subject": ("str", ()),
    "provenance": ("str", ()),
}
IMAGE_DATASETS = ("coarse", "target")
MASK_DATASETS = ("coarse_mask", "target_mask")
STRING_DATASETS = ("sample_id", "pair_id", "subject", "provenance")
BACKGROUND = -1.0  # value of images outside the surface; masks use 0
# The paper's images are 8-bit with background 0, so a pixel is surface when it
# is at least one 8-bit step above the background value.
FOREGROUND_ABOVE = BACKGROUND + 2.0 / 255.0
UNITS = {"depth": "mm", "curvature": "1/mm", "elevation": "rad", "r": "", "g": "", "b": ""}


class PairFileError(ValueError):
    """A file that is not a usable DCE pair file; the message names the file
    and the problem."""


class LegacyPairFileWarning(UserWarning):
    """A pair file from before text checksums: read, but its text (sample
    ids, subjects, provenance, config) is unverified."""


# The root attributes that hold text, in the order they are hashed.
TEXT_ATTRIBUTES = ("format", "channels", "created_by", "config", "shard")
TEXT_DIGEST = "text_sha256"


def _utf8(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def text_digest(attrs, strings: dict) -> str:
    """Hex SHA-256 of a pair file's text: the :data:`TEXT_ATTRIBUTES` present
    in ``attrs`` (a mapping) and the values of each of
    :data:`STRING_DATASETS` in ``strings`` (name -> sequence of str or
    bytes, in row order). The variable-length strings live in HDF5's global
    heap, which no chunk checksum covers: this digest is what detects a
    changed sample id or provenance. Every field is length-prefixed, so no
    two different texts hash alike by shifting a boundary."""
    h = hashlib.sha256()

    def put(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)

    for name in TEXT_ATTRIBUTES:
        if name in attrs:
            put(name.encode())
            put(_utf8(attrs[name]))
    for name in STRING_DATASETS:
        values = strings[name]
        put(name.encode())
        h.update(len(values).to_bytes(8, "little"))
        for value in values:
            put(_utf8(value))
    return h.hexdigest()


def write_text_digest(f: h5py.File, n: int) -> None:
    """Store :func:`text_digest` of the first ``n`` rows of ``f``'s string
    datasets and its text attributes, as a fixed-length attribute (kept out of
    the global heap it guards). Call after the last text is written."""
    strings = {name: f[name][:n] for name in STRING_DATASETS}
    f.attrs[TEXT_DIGEST] = np.bytes_(text_digest(f.attrs, strings))


def _check_text_digest(path, f: h5py.File, ds: dict, n: int) -> None:
    if TEXT_DIGEST not in f.attrs:
        warnings.warn(f"{os.fspath(path)}: pair file written before dce stored a text checksum;"
                      " its sample ids, subjects, provenance and config cannot be verified "
                      "(rebuild it to add one)", LegacyPairFileWarning, stacklevel=5)
        return
    stored = f.attrs[TEXT_DIGEST]
    stored = stored.decode("ascii", "replace") if isinstance(stored, bytes) else str(stored)
    actual = text_digest(f.attrs, {name: ds[name][:n] for name in STRING_DATASETS})
    if stored != actual:
        _fail(path, "damaged text: the SHA-256 of its sample ids, subjects, provenance and "
                    "text attributes differs from the one stored when it was written")


def sample_shape(name: str, channels: int, height: int, width: int) -> tuple:
    """Per-sample shape of dataset ``name`` for C, H, W = channels, height, width."""
    sizes = {"C": channels, "H": height, "W": width}
    return tuple(sizes.get(d, d) for d in SAMPLE_DATASETS[name][1])


def quantize(x) -> np.ndarray:
    """Normalized values (any shape, nominally [-1, 1]) -> uint16 codes:
    ``round((clip(x, -1, 1) + 1) / 2 * 65535)``; NaN maps to background (0)."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=-1.0)
    return np.rint((np.clip(x, -1.0, 1.0) + 1.0) * (QUANT_MAX / 2.0)).astype(np.uint16)


def dequantize(q) -> np.ndarray:
    """uint16 codes -> float32 values ``q / 65535 * 2 - 1`` in [-1, 1]; within
    ``1/65535`` (+ float32 rounding) of the value that was quantized."""
    return (np.asarray(q, dtype=np.float64) * (2.0 / QUANT_MAX) - 1.0).astype(np.float32)


def split_subjects(subjects, seed: int, test_fraction: float = DEFAULT_TEST_FRACTION) -> dict:
    """{subject: TRAIN or TEST} for the distinct ``subjects``: sorted, shuffled
    with ``default_rng(seed)``, the first ``round((1 - test_fraction) * n)``
    train."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    unique = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = int(round((1.0 - test_fraction) * len(unique)))
    return {unique[j]: (TRAIN if rank < n_train else TEST) for rank, j in enumerate(order)}


def _fail(path, problem: str):
    raise PairFileError(f"{os.fspath(path)}: {problem}")


def _text(path, attrs, name: str, default=None) -> str:
    """Root attribute ``name`` as text (``default`` when absent)."""
    if name not in attrs:
        if default is None:
            _fail(path, f"missing root attribute {name!r}")
        return default
    value = attrs[name]
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            _fail(path, f"root attribute {name!r} is not UTF-8 text")
    if not isinstance(value, str):
        _fail(path, f"root attribute {name!r} must be text, got {value!r}")
    return value


def _integer(path, attrs, name: str, minimum=None) -> int:
    """Root attribute ``name`` as an int (>= ``minimum`` unless None)."""
    if name not in attrs:
        _fail(path, f"missing root attribute {name!r}")
    value = attrs[name]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        _fail(path, f"root attribute {name!r} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        _fail(path, f"root attribute {name!r} must be >= {minimum}, got {int(value)}")
    return int(value)


def _json_attr(path, attrs, name: str):
    text = _text(path, attrs, name)
    try:
        return json.loads(text)
    except ValueError:
        _fail(path, f"root attribute {name!r} is not valid JSON")


def _strings(path, f, name: str, n: int) -> list:
    """The first ``n`` values of string dataset ``name`` of ``f`` (a file,
    or a dict of its datasets)."""
    try:
        return list(f[name].asstr()[:n])
    except UnicodeDecodeError as error:
        _fail(path, f"dataset {name!r} holds text that is not UTF-8 ({error.reason} at byte "
                    f"{error.start})")


def sample_name(ids, row: int) -> str:
    """``sample 7 ('0246/pose1')``: how messages name a sample."""
    return f"sample {row} ({ids[row]!r})" if ids is not None and row < len(ids) \
        else f"sample {row}"


# Per-sample float metadata; a NaN or infinity here would go unnoticed into
# physical units (mm), pixel sizes and losses. Scales must also be non-zero.
FINITE_DATASETS = ("coarse_offset", "coarse_scale", "target_offset", "target_scale",
                   "coarse_camera", "target_camera", "pose")


def _check_metadata(path, f, n: int, ids: list) -> None:
    if n == 0:
        return
    for name in FINITE_DATASETS:
        values = f[name][:n].reshape(n, -1).astype(np.float64)
        bad = ~np.isfinite(values).all(axis=1)
        problem = "non-finite (NaN or infinite)"
        if name.endswith("_scale") and not bad.any():
            bad = (values == 0).any(axis=1)
            problem = "zero"
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            _fail(path, f"{sample_name(ids, row)}: {problem} {name} "
                        f"{np.round(values[row], 6).tolist()}"
                        + (f" (and {int(bad.sum()) - 1} more samples)" if bad.sum() > 1 else ""))


# The exact on-disk types of the numeric datasets. The dtype alone is not
# enough: HDF5 converts a float whose stored layout (exponent, mantissa,
# bias) was altered to float64 without an error.
_DISK_TYPES = {"uint16": h5py.h5t.STD_U16LE, "uint8": h5py.h5t.STD_U8LE,
               "float64": h5py.h5t.IEEE_F64LE, "float32": h5py.h5t.IEEE_F32LE}
# Lossless filters a pair file may use (fletcher32 is a checksum).
_FILTERS = {h5py.h5z.FILTER_SHUFFLE, h5py.h5z.FILTER_DEFLATE, h5py.h5z.FILTER_LZF,
            h5py.h5z.FILTER_FLETCHER32}


def _check_storage(path, name: str, d: h5py.Dataset, per_sample: bool) -> None:
    """The dataset's filters and chunks are what the format allows: an
    altered filter parameter (e.g. shuffle's element size) decodes the data
    differently without an error."""
    plist = d.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code, _, values, label = plist.get_filter(i)
        if code not in _FILTERS:
            _fail(path, f"dataset {name!r} uses filter {code} ({label.decode(errors='replace')!r}),"
                        " not one of the format's lossless filters")
        if code == h5py.h5z.FILTER_SHUFFLE and tuple(values[:1]) != (d.dtype.itemsize,):
            _fail(path, f"dataset {name!r}: shuffle filter for {tuple(values)} byte elements, "
                        f"the data has {d.dtype.itemsize} (damaged header)")
        if code == h5py.h5z.FILTER_DEFLATE and not (len(values) == 1 and 0 <= values[0] <= 9):
            _fail(path, f"dataset {name!r}: gzip filter with parameters {tuple(values)} "
                        "(damaged header)")
    if per_sample and d.chunks is not None and d.chunks != (1,) + d.shape[1:]:
        _fail(path, f"dataset {name!r} is stored in chunks of {d.chunks}; the format stores "
                    "one sample per chunk")


def _check(path, f: h5py.File, require_complete: bool) -> dict:
    attrs = f.attrs
    rows = attrs.get("n_samples", 0)  # a number: reading it touches no text heap
    check_text_heaps(path, f, int(rows) if isinstance(rows, (int, np.integer)) else 0)
    if "format" not in attrs:
        _fail(path, "not a DCE pair file (no 'format' attribute)")
    fmt = _text(path, attrs, "format")
    if fmt != FORMAT_NAME:
        _fail(path, f"not a DCE pair file (format={fmt!r}, expected {FORMAT_NAME!r})")
    version = _integer(path, attrs, "format_version")
    if version != FORMAT_VERSION:
        _fail(path, f"format version {version}; this reader reads version {FORMAT_VERSION} "
                    "(rebuild the file with this dce version)")
    complete = attrs.get("complete", False)
    if not isinstance(complete, (bool, np.bool_, int, np.integer)):
        _fail(path, f"root attribute 'complete' must be a bool, got {complete!r}")
    complete = bool(complete)
    if require_complete and not complete:
        _fail(path, "incomplete build (complete=False) — rerun dce-build to resume")
    channels = _json_attr(path, attrs, "channels")
    config = _json_attr(path, attrs, "config")
    if not (isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels)
            and len(set(channels)) == len(channels)):
        _fail(path, "root attribute 'channels' must be a non-empty list of distinct names, "
                    f"got {channels!r}")
    n = _integer(path, attrs, "n_samples", 0)
    height, width = (_integer(path, attrs, k, 1) for k in ("height", "width"))
    C = len(channels)
    names = list(SAMPLE_DATASETS) + ([SPLIT] if complete else [])
    ds = {}  # each dataset looked up once: a lookup by name costs more than a check
    for name in names:
        d = f.get(name)
        if d is None:
            _fail(path, f"missing dataset {name!r}")
        if not isinstance(d, h5py.Dataset):
            _fail(path, f"{name!r} is not a dataset")
        ds[name] = d
        kind = SAMPLE_DATASETS.get(name, ("uint8",))[0]
        expected = sample_shape(name, C, height, width) if name != SPLIT else ()
        # A partial file may hold one uncommitted row past n_samples.
        rows_ok = d.shape[:1] == (n,) if complete else (d.ndim >= 1 and d.shape[0] >= n)
        if not rows_ok or d.shape[1:] != expected:
            _fail(path, f"inconsistent shapes: dataset {name!r} has shape {d.shape}, expected "
                        f"({n}, {', '.join(map(str, expected))}) for n_samples={n}, "
                        f"channels={C}, height={height}, width={width}")
        if kind == "str":
            if h5py.check_string_dtype(d.dtype) is None:
                _fail(path, f"dataset {name!r} must hold strings, has dtype {d.dtype}")
        elif d.dtype != np.dtype(kind):
            _fail(path, f"dataset {name!r} has dtype {d.dtype}, expected {kind}")
        elif not d.id.get_type().equal(_DISK_TYPES[kind]):
            _fail(path, f"dataset {name!r} is stored as a non-standard {kind} type (damaged "
                        "header: its values would be converted)")
        _check_storage(path, name, d, name in IMAGE_DATASETS + MASK_DATASETS)
    for name in IMAGE_DATASETS:
        q = ds[name].attrs.get("quantization")
        q = q.decode("utf-8", "replace") if isinstance(q, bytes) else q
        if q != QUANTIZATION:
            _fail(path, f"dataset {name!r} has quantization {q!r}, expected {QUANTIZATION!r}")
    small = [name for name in names if name not in IMAGE_DATASETS + MASK_DATASETS]
    for name in small:
        check_chunks(path, ds[name], n)
    sample_ids = _strings(path, ds, "sample_id", n)
    if len(set(sample_ids)) != n:
        _fail(path, "duplicate sample_id values")
    _check_metadata(path, ds, n, sample_ids)
    subjects = np.array(_strings(path, ds, "subject", n), dtype=object)
    summary = {
        "path": os.fspath(path), "format_version": version, "complete": complete,
        "n_samples": n, "channels": channels, "height": height, "width": width,
        "n_pairs": len(set(_strings(path, ds, "pair_id", n))), "n_subjects": len(set(subjects)),
        "created_by": _text(path, attrs, "created_by", ""), "config": config,
        "shard": _text(path, attrs, "shard") if "shard" in attrs else None,
        "size_bytes": os.path.getsize(path),
    }
    _strings(path, ds, "provenance", n)  # readable text, as the others
    _check_text_digest(path, f, ds, n)
    if complete:
        split = ds[SPLIT][()]
        if split.size and split.max() > TEST:
            row = int(np.flatnonzero(split > TEST)[0])
            _fail(path, f"dataset 'split' holds values other than {TRAIN} (train) / {TEST} "
                        f"(test): {int(split[row])} at {sample_name(sample_ids, row)}")
        train, test = set(subjects[split == TRAIN]), set(subjects[split == TEST])
        if train & test:
            _fail(path, f"split is not identity-disjoint: subjects {sorted(train & test)[:5]} "
                        "are in both train and test")
        seed = _integer(path, attrs, "seed", 0) if "seed" in attrs else None
        test_fraction = None
        if "test_fraction" in attrs:
            test_fraction = attrs["test_fraction"]
            if not (isinstance(test_fraction, (float, int, np.floating, np.integer))
                    and 0.0 <= test_fraction <= 1.0):
                _fail(path, f"root attribute 'test_fraction' must be a number in [0, 1], got "
                            f"{test_fraction!r}")
            test_fraction = float(test_fraction)
        summary.update(seed=seed, test_fraction=test_fraction,
                       n_train=int((split == TRAIN).sum()), n_test=int((split == TEST).sum()),
                       n_train_subjects=len(train), n_test_subjects=len(test))
    return summary


def _open(path) -> h5py.File:
    if os.path.isdir(path):
        _fail(path, "incomplete build (a partial build directory, complete=False) — rerun "
                    "dce-build to resume" if os.fspath(path).endswith(".partial")
              else "is a directory, not a DCE pair file")
    if not os.path.isfile(path):
        _fail(path, "no such file")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        if not h5py.is_hdf5(path):
            _fail(path, "not an HDF5 file (no HDF5 signature)")
        _fail(path, f"corrupt HDF5 (truncated or damaged): {e}")
    except Exception as e:  # h5py raises other types on some damaged superblocks
        _fail(path, f"corrupt HDF5 (truncated or damaged): {type(e).__name__}: {e}")


_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HEAP = b"GCOL"
_HEAD_BYTES = 1 << 20  # where the root attributes' text heap lies (written first)


def _superblock(fh, file_size: int) -> tuple:
    """(base address, size of offsets, size of lengths) from the HDF5
    superblock, found at 0, 512, 1024, ... bytes."""
    at = 0
    while at < file_size:
        fh.seek(at)
        head = fh.read(16)
        if head[:8] == _SIGNATURE:
            if head[8] in (0, 1):  # versions 0/1 (libver "earliest", what dce writes)
                return at, head[13], head[14]
            return at, head[9], head[10]
        at = 512 if at == 0 else 2 * at
    raise ValueError("no HDF5 superblock")


def _heap_addresses(f: h5py.File, names, n: int, offsets: int) -> set:
    """File addresses of the global heap collections holding the first ``n``
    values of the string datasets ``names``, read from their raw storage
    (each value is stored as a length, a collection address and an index)
    without decoding any text."""
    width = 4 + offsets + 4
    found = set()
    for name in names:
        d = f.get(name)
        if not isinstance(d, h5py.Dataset) or h5py.check_string_dtype(d.dtype) is None \
                or d.ndim != 1:
            continue
        raws = []
        if d.chunks:
            for start in range(0, min(n, d.shape[0]), d.chunks[0]):
                raws.append(d.id.read_direct_chunk((start,))[1])
        elif d.id.get_offset() is not None:
            with open(f.filename, "rb") as fh:
                fh.seek(d.id.get_offset())
                raws.append(fh.read(width * min(n, d.shape[0])))
        for raw in raws:
            for at in range(0, len(raw) - width + 1, width):
                found.add(int.from_bytes(raw[at + 4:at + 4 + offsets], "little"))
    return found


def _check_heap(path, fh, address: int, file_size: int, lengths: int) -> None:
    """Walk the objects of the global heap collection at ``address`` as
    HDF5's loader does, and refuse the collection when the walk would not
    advance: HDF5 (2.0.0 at least) then loops forever (an object header
    zeroed in place: index 0, size 0)."""
    fh.seek(address)
    header = fh.read(8 + lengths)
    if header[:4] != _HEAP:
        return  # not a collection; HDF5 refuses such an address itself
    size = int.from_bytes(header[8:8 + lengths], "little")
    if size < len(header) or address + size > file_size:
        _fail(path, f"damaged text storage: global heap at byte {address} claims {size} bytes "
                    f"(file size {file_size})")
    fh.seek(address)
    heap = fh.read(size)
    object_header = 8 + lengths
    p, mask = len(header), (1 << 64) - 1
    while p < size:
        if p + object_header > size:
            break  # too small for an object: free space, as HDF5 reads it
        index = int.from_bytes(heap[p:p + 2], "little")
        length = int.from_bytes(heap[p + 8:p + 8 + lengths], "little")
        step = (object_header + ((length + 7) & ~7)) & mask if index else length
        if step == 0:
            _fail(path, f"damaged text storage: global heap at byte {address} has an object "
                        f"header of size 0 at byte {address + p} (HDF5 would loop forever "
                        "reading it)")
        p += step


def check_text_heaps(path, f: h5py.File, n: int) -> int:
    """Check, before HDF5 decodes any text, the global heap collections
    that hold the file's variable-length strings: those in its first MiB
    (the root attributes' are written first) and those the string datasets
    point to (:func:`_check_heap`). Returns the number checked."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        base, offsets, lengths = _superblock(fh, size)
        fh.seek(base)
        head = fh.read(_HEAD_BYTES)
        addresses, at = set(), head.find(_HEAP)
        while at >= 0:
            addresses.add(base + at)
            at = head.find(_HEAP, at + 1)
        addresses |= {base + a for a in _heap_addresses(f, STRING_DATASETS, n, offsets)}
        for address in sorted(addresses):
            if address + 8 + lengths <= size:
                _check_heap(path, fh, address, size, lengths)
    return len(addresses)


def _guarded(path, function, *args):
    """``function(*args)``, with the errors that h5py and numpy raise on a
    damaged file turned into PairFileError naming ``path``."""
    try:
        return function(*args)
    except PairFileError:
        raise
    except (OSError, RuntimeError) as e:
        _fail(path, f"corrupt HDF5 (unreadable data): {e}")
    except UnicodeDecodeError as e:
        _fail(path, f"metadata that is not UTF-8 text ({e.reason} at byte {e.start})")
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as e:
        # h5py's own reports of damaged object headers, and attributes of the
        # wrong kind (e.g. an array where a number belongs).
        _fail(path, f"malformed or damaged metadata ({type(e).__name__}: {e})")


# The build settings that decide what a pixel value means and how a face is
# framed (dce.geom.dataset.BuildConfig): a model trained on a file needs the
# same ones at inference, so checkpoints carry them (:func:`normalization`).
NORMALIZATION_KEYS = ("depth_scale", "curvature_scale", "curvature", "margin", "crop_radius",
                      "median_size")


class NormalizationMismatch(ValueError):
    """A model and a pair file (or an option) whose normalizations differ."""


def normalization(summary: dict) -> dict:
    """The normalization of a pair file from its :func:`validate` summary:
    ``channels``, ``size`` [H, W] and the :data:`NORMALIZATION_KEYS` its
    build configuration holds. Trainers store it in their checkpoints."""
    config = summary.get("config")
    config = config if isinstance(config, dict) else {}
    out = {"channels": list(summary["channels"]),
           "size": [int(summary["height"]), int(summary["width"])]}
    out.update({key: config[key] for key in NORMALIZATION_KEYS if key in config})
    return out


def check_normalization(model: dict | None, data: dict, model_name, data_name) -> None:
    """NormalizationMismatch naming both sources and both values when a
    :data:`NORMALIZATION_KEYS` value of ``model`` (a checkpoint's
    normalization; None for one from before dce stored it) differs from
    ``data``'s (a pair file's, or options given). Channels and size are not
    compared: a model reads any file that holds its channels, at any
    multiple of its resolution."""
    for key in NORMALIZATION_KEYS:
        if model and key in model and key in data and model[key] != data[key]:
            raise NormalizationMismatch(
                f"{os.fspath(data_name)} has {key}={data[key]!r}, but {os.fspath(model_name)} was "
                f"trained on images with {key}={model[key]!r}: its outputs would be in the wrong "
                "units; use a pair file built with the checkpoint's value, or a checkpoint "
                "trained on this one")


def validate(path, require_complete: bool = True) -> dict:
    """Check that ``path`` is a DCE pair file of this version: format name,
    version, complete flag (unless ``require_complete`` is False), every
    dataset's shape and dtype, quantization, unique sample ids, finite
    offsets, scales, cameras and poses with non-zero scales (the first bad
    sample is named), readable UTF-8 text that matches its SHA-256
    (:func:`text_digest`; a file without one is read with a
    :class:`LegacyPairFileWarning`) and an identity-disjoint split.
    Reads the root attributes and the small per-sample datasets, not the
    images or masks (:func:`verify` reads everything). Returns a summary dict
    (``n_samples``, ``channels``, ``height``, ``width``, ``n_pairs``,
    ``n_subjects``, ``config``, ``complete``, ``shard``, ``size_bytes``, and
    for complete files ``n_train``/``n_test`` samples,
    ``n_train_subjects``/``n_test_subjects``, ``seed``, ``test_fraction``).
    Raises ``PairFileError`` naming the file and the problem."""
    with _open(path) as f:
        return _guarded(path, _check, path, f, require_complete)


def check_masks(path, f: h5py.File, rows=None, which=("target_mask",), ids=None,
                block: int = 64) -> int:
    """Read the masks ``which`` of ``rows`` (default: all samples of the open
    file ``f``) and raise PairFileError naming ``path`` and the sample when
    one holds values other than 0/1, a target mask is empty (an
    all-background ground truth: nothing to learn or score), or a chunk is
    unreadable. Reads ``block`` samples at a time; returns the number of
    masks read."""
    n_rows = f["sample_id"].shape[0]
    rows = np.arange(n_rows) if rows is None else np.asarray(rows, dtype=np.int64)
    if ids is None:
        ids = _strings(path, f, "sample_id", n_rows)
    count = 0
    for name in which:
        d = f[name]
        for start in range(0, len(rows), block):
            part = rows[start:start + block]
            check_mask_values(path, name, read_rows(path, d, part, ids), part, ids)
            count += len(part)
    return count


def check_mask_values(path, name: str, masks: np.ndarray, rows, ids=None) -> None:
    """PairFileError naming ``path`` and the sample when one of ``masks``
    (n, H, W), the rows ``rows`` of mask dataset ``name``, holds values
    other than 0/1, or is an empty target mask."""
    flat = masks.reshape(len(masks), -1)
    wrong = flat.max(axis=1, initial=0) > 1
    if wrong.any():
        row = int(rows[int(np.flatnonzero(wrong)[0])])
        _fail(path, f"{sample_name(ids, row)}: dataset {name!r} holds values other than 0/1")
    if name == "target_mask":
        empty = ~flat.any(axis=1)
        if empty.any():
            row = int(rows[int(np.flatnonzero(empty)[0])])
            _fail(path, f"{sample_name(ids, row)}: empty target mask (the ground truth is all "
                        "background: nothing to train on or score)"
                  + (f"; {int(empty.sum()) - 1} more in this block" if empty.sum() > 1 else ""))


def _dataset_name(dataset: h5py.Dataset) -> str:
    return dataset.name.lstrip("/")


def skippable_filters(dataset: h5py.Dataset) -> int:
    """Bit mask of the dataset's filters that HDF5 may legitimately skip
    for a chunk: lzf, an optional filter that stores a chunk it cannot
    shrink unfiltered. gzip stores every chunk compressed (even when larger)
    and shuffle cannot fail, so a chunk of a gzip file read with either
    skipped would be decoded wrongly."""
    plist = dataset.id.get_create_plist()
    return sum(1 << i for i in range(plist.get_nfilters())
               if plist.get_filter(i)[0] == h5py.h5z.FILTER_LZF)


def check_chunk(path, dataset: h5py.Dataset, coord, ids=None, skippable=None) -> None:
    """PairFileError naming ``path``, the dataset and the sample unless the
    chunk of a chunked ``dataset`` starting at ``coord`` is in the file's
    chunk index with no filter marked as skipped that cannot be skipped. A
    damaged chunk index (a B-tree key) can make HDF5 miss a chunk and return
    its fill value (0: background) for some or all of it, or skip a filter,
    without an error; a direct lookup of the chunk shows both.
    ``skippable``: :func:`skippable_filters` of the dataset, if known."""
    where = f"{sample_name(ids, int(coord[0]))}: dataset {_dataset_name(dataset)!r}"
    try:
        filter_mask, _ = dataset.id.read_direct_chunk(tuple(int(c) for c in coord))
    except (OSError, RuntimeError, ValueError, KeyError) as error:
        _fail(path, f"{where}: chunk missing from the file's index (damaged file: {error})")
    if skippable is None:
        skippable = skippable_filters(dataset)
    if filter_mask & ~skippable:
        _fail(path, f"{where}: chunk marked as stored without its filters (mask "
                    f"{filter_mask}; damaged file)")


def check_chunks(path, dataset: h5py.Dataset, n: int, ids=None) -> int:
    """:func:`check_chunk` for every chunk of ``dataset`` holding rows
    below ``n``; returns how many were checked (0 for a contiguous one)."""
    if dataset.chunks is None:
        return 0
    skippable = skippable_filters(dataset)
    starts = [range(0, n, dataset.chunks[0])] + [range(0, size, c) for size, c in
                                                 zip(dataset.shape[1:], dataset.chunks[1:])]
    count = 0
    for coord in itertools.product(*starts):
        check_chunk(path, dataset, coord, ids, skippable)
        count += 1
    return count


def read_sample(path, dataset: h5py.Dataset, row: int, ids=None, skippable=None) -> np.ndarray:
    """``dataset[row]`` of a per-sample dataset chunked one sample per chunk
    (images, masks), its chunk checked (:func:`check_chunk`); a damaged chunk
    is a PairFileError naming ``path``, the dataset and the sample.
    ``skippable``: :func:`skippable_filters` of the dataset, if known."""
    row = int(row)
    if dataset.chunks is not None:
        check_chunk(path, dataset, (row,) + (0,) * (dataset.ndim - 1), ids, skippable)
    try:
        return dataset[row]
    except (OSError, RuntimeError, ValueError) as error:
        _fail(path, f"{sample_name(ids, row)}: dataset {_dataset_name(dataset)!r}: unreadable "
                    f"chunk (damaged file: {error})")


def read_rows(path, dataset: h5py.Dataset, rows, ids=None) -> np.ndarray:
    """``dataset[rows]`` (rows an int array) of a dataset chunked one sample
    per chunk, each chunk checked as by :func:`read_sample`."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows),) + dataset.shape[1:], dataset.dtype)
    skippable = skippable_filters(dataset) if dataset.chunks is not None else 0
    for j, row in enumerate(rows):
        out[j] = read_sample(path, dataset, row, ids, skippable)
    return out


def verify(path, require_complete: bool = True) -> dict:
    """:func:`validate`, then every chunk of every dataset looked up in the
    file's index (:func:`check_chunk`) and read (a damaged compressed chunk
    shows only when read), and every mask checked (:func:`check_masks`:
    values 0/1, no empty target mask). Raises PairFileError naming the file,
    and for data errors the dataset and the sample (up to 5 listed when
    several chunks are damaged). Returns validate's summary with
    ``chunks_read``, the number of chunks read. ``dce-build inspect`` runs
    this (unless ``--no-verify``)."""
    summary = validate(path, require_complete)
    n = summary["n_samples"]
    prefix = f"{os.fspath(path)}: "
    with _open(path) as f:
        ids = _guarded(path, _strings, path, f, "sample_id", n)
        damaged, chunks = [], 0
        for name in list(SAMPLE_DATASETS) + ([SPLIT] if summary["complete"] else []):
            d = f[name]
            pieces = list(d.iter_chunks()) if d.chunks else [tuple(slice(0, s) for s in d.shape)]
            for piece in pieces:
                if piece[0].start >= n:
                    continue  # a partial file's uncommitted row
                chunks += 1
                try:
                    if d.chunks:
                        check_chunk(path, d, [p.start for p in piece], ids)
                    d[piece]
                except PairFileError as error:
                    damaged.append(str(error).removeprefix(prefix))
                except (OSError, RuntimeError, ValueError) as error:
                    where = (sample_name(ids, piece[0].start) if d.chunks and d.chunks[0] == 1
                             else f"samples {piece[0].start}..{piece[0].stop - 1}")
                    damaged.append(f"{where}: dataset {name!r}: unreadable chunk ({error})")
        if damaged:
            _fail(path, f"{len(damaged)} damaged chunk(s): " + "; ".join(damaged[:5])
                  + (" ..." if len(damaged) > 5 else ""))
        _guarded(path, check_masks, path, f, np.arange(n), MASK_DATASETS, ids)
    summary["chunks_read"] = chunks
    return summary


def open_pairs(path, require_complete: bool = True) -> h5py.File:
    """``validate(path)`` then the file opened read-only with h5py (the
    caller closes it). Images come back with ``dequantize(f["coarse"][i])``."""
    validate(path, require_complete)
    return _open(path)


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024 or unit == "GiB":
            return f"{n_bytes:.0f} {unit}" if unit == "B" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1024.0


def _describe_partial(path) -> str:
    segments = sorted(glob.glob(os.path.join(path, "segment-*.h5")))
    counts = [validate(p, require_complete=False)["n_samples"] for p in segments]
    try:
        with open(os.path.join(path, "settings.json"), encoding="utf-8") as fh:
            settings = json.load(fh)
        images = (f"  images    {len(settings['channels'])} x {settings['height']} x "
                  f"{settings['width']}  channels " + ", ".join(settings["channels"]))
        config = "  config    " + json.dumps(settings["config"], sort_keys=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        _fail(path, f"partial build without a readable settings.json ({type(e).__name__}: {e})")
    return "\n".join([
        f"{os.fspath(path)}: INCOMPLETE DCE build (rerun dce-build to resume)",
        f"  samples   {sum(counts)} committed in {len(segments)} segments", images, config])


def describe(path, n_examples: int = 3) -> str:
    """A human-readable summary of a pair file (complete or partial) or of a
    partial build directory ``<file>.partial``: counts
    of samples, pairs and subjects, channels, size, split, configuration and
    the physical value range of each channel in a few samples."""
    if os.path.isdir(path) and os.fspath(path).endswith(".partial"):
        return _describe_partial(path)
    s = validate(path, require_complete=False)
    lines = [f"{s['path']}: DCE pair file, format {FORMAT_NAME} v{s['format_version']}"
             + ("" if s["complete"] else "  [INCOMPLETE build: rerun dce-build to resume]"),
             f"  samples   {s['n_samples']}  (pairs {s['n_pairs']}, subjects {s['n_subjects']})",
             f"  images    {len(s['channels'])} x {s['height']} x {s['width']}  channels "
             + ", ".join(s["channels"]),
             f"  file      {_size(s['size_bytes'])}, created by {s['created_by'] or '?'}"]
    if s["shard"]:
        lines.append(f"  shard     {s['shard']}")
    if s["complete"]:
        lines.append(f"  split     train {s['n_train']} samples / {s['n_train_subjects']} subjects,"
                     f" test {s['n_test']} samples / {s['n_test_subjects']} subjects"
                     f"  (seed {s['seed']}, test fraction "
                     f"{'?' if s['test_fraction'] is None else format(s['test_fraction'], '.3g')})")
    lines.append("  config    " + json.dumps(s["config"], sort_keys=True))
    n = s["n_samples"]
    if n:
        picks = np.unique(np.linspace(0, n - 1, min(n_examples, n)).round().astype(int))
        lines.append("  value ranges inside the masks (physical units):")
        with _open(path) as f:
            lines += _guarded(path, _value_ranges, path, f, s, picks)
    return "\n".join(lines)


def _value_ranges(path, f: h5py.File, s: dict, picks) -> list:
    """describe's lines of the physical value ranges of samples ``picks``."""
    lines = []
    ids = _strings(path, f, "sample_id", s["n_samples"])
    for i in picks:
        lines.append(f"    {ids[i]}")
        for side in ("coarse", "target"):
            x = dequantize(read_rows(path, f[side], [i], ids)[0]).astype(np.float64)
            mask = read_rows(path, f[side + "_mask"], [i], ids)[0].astype(bool)
            phys = f[side + "_offset"][i][:, None] + f[side + "_scale"][i][:, None] \
                * x.reshape(len(x), -1)
            cells = []
            for c, name in enumerate(s["channels"]):
                v = phys[c][mask.ravel()]
                unit = UNITS.get(name, "")
                span = f"[{v.min():.4g}, {v.max():.4g}]{' ' + unit if unit else ''}"
                cells.append(f"{name} {span}" if v.size else f"{name} (empty)")
            lines.append(f"      {side:<6} {mask.sum():>7d} px  " + "; ".join(cells))
    return lines
