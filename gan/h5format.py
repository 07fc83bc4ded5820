"""Reading DCE pair files, the HDF5 contract between ``dce-build`` (writer,
``dce.geom.store``) and ``dce.gan`` (reader): :func:`validate` and
:func:`verify` check a file, :func:`open_pairs` opens one, :func:`describe`
summarizes one. The layout is specified in ``docs/pair-file.md``.

This module re-exports the format's names from :mod:`.pair_layout`,
:mod:`.pair_integrity` and :mod:`.normalization`, so ``dce.gan.h5format`` is
the one import for writers and readers. All of them import numpy and h5py
only, so the training side can read pair files without the geometry stack.
"""
from __future__ import annotations

import glob
import json
import os
import warnings

import h5py
import numpy as np

from .normalization import (
    NORMALIZATION_KEYS,
    NormalizationMismatch,
    check_normalization,
    normalization,
)
from .pair_integrity import (
    check_chunk,
    check_chunk_index,
    check_chunks,
    check_mask_values,
    check_masks,
    check_text_heaps,
    read_rows,
    read_sample,
    skippable_filters,
)
from .pair_layout import (
    BACKGROUND,
    DEFAULT_TEST_FRACTION,
    FOREGROUND_ABOVE,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_DATASETS,
    MASK_DATASETS,
    QUANT_MAX,
    QUANTIZATION,
    SAMPLE_DATASETS,
    SPLIT,
    STRING_DATASETS,
    TEST,
    TEXT_ATTRIBUTES,
    TEXT_DIGEST,
    TRAIN,
    UNITS,
    LegacyPairFileWarning,
    PairFileError,
    _fail,
    _strings,
    dequantize,
    quantize,
    sample_name,
    sample_shape,
    split_subjects,
    text_digest,
    write_text_digest,
)

__all__ = [
    # layout (pair_layout)
    "BACKGROUND", "DEFAULT_TEST_FRACTION", "FOREGROUND_ABOVE", "FORMAT_NAME", "FORMAT_VERSION",
    "IMAGE_DATASETS", "MASK_DATASETS", "QUANTIZATION", "QUANT_MAX", "SAMPLE_DATASETS", "SPLIT",
    "STRING_DATASETS", "TEST", "TEXT_ATTRIBUTES", "TEXT_DIGEST", "TRAIN", "UNITS",
    "LegacyPairFileWarning", "PairFileError", "dequantize", "quantize", "sample_name",
    "sample_shape", "split_subjects", "text_digest", "write_text_digest",
    # HDF5 integrity (pair_integrity)
    "check_chunk", "check_chunk_index", "check_chunks", "check_mask_values", "check_masks",
    "check_text_heaps",
    "read_rows", "read_sample", "skippable_filters",
    # normalization
    "NORMALIZATION_KEYS", "NormalizationMismatch", "check_normalization", "normalization",
    # this module
    "FINITE_DATASETS", "describe", "open_pairs", "validate", "verify",
]


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


def _check_text_digest(path, f: h5py.File, text: dict) -> None:
    """``text``: the string datasets' first n values, as :func:`_strings` read them."""
    if TEXT_DIGEST not in f.attrs:
        warnings.warn(f"{os.fspath(path)}: pair file written before dce stored a text checksum;"
                      " its sample ids, subjects, provenance and config cannot be verified "
                      "(rebuild it to add one)", LegacyPairFileWarning, stacklevel=5)
        return
    stored = f.attrs[TEXT_DIGEST]
    stored = stored.decode("ascii", "replace") if isinstance(stored, bytes) else str(stored)
    actual = text_digest(f.attrs, text)
    if stored != actual:
        _fail(path, "damaged text: the SHA-256 of its sample ids, subjects, provenance and "
                    "text attributes differs from the one stored when it was written")


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
    file_size = os.path.getsize(path)
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
        check_chunk_index(path, d, file_size)
    for name in IMAGE_DATASETS:
        q = ds[name].attrs.get("quantization")
        q = q.decode("utf-8", "replace") if isinstance(q, bytes) else q
        if q != QUANTIZATION:
            _fail(path, f"dataset {name!r} has quantization {q!r}, expected {QUANTIZATION!r}")
    small = [name for name in names if name not in IMAGE_DATASETS + MASK_DATASETS]
    for name in small:
        check_chunks(path, ds[name], n)
    text = {name: _strings(path, ds, name, n) for name in STRING_DATASETS}  # read once
    sample_ids = text["sample_id"]
    if len(set(sample_ids)) != n:
        _fail(path, "duplicate sample_id values")
    _check_metadata(path, ds, n, sample_ids)
    subjects = np.array(text["subject"], dtype=object)
    summary = {
        "path": os.fspath(path), "format_version": version, "complete": complete,
        "n_samples": n, "channels": channels, "height": height, "width": width,
        "n_pairs": len(set(text["pair_id"])), "n_subjects": len(set(subjects)),
        "created_by": _text(path, attrs, "created_by", ""), "config": config,
        "shard": _text(path, attrs, "shard") if "shard" in attrs else None,
        "size_bytes": file_size,
    }
    _check_text_digest(path, f, text)
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
