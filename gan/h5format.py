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
import json
import os

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
UNITS = {"depth": "mm", "curvature": "1/mm", "elevation": "rad", "r": "", "g": "", "b": ""}


class PairFileError(ValueError):
    """A file that is not a usable DCE pair file; the message names the file
    and the problem."""


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


def _json_attr(path, attrs, name: str):
    try:
        return json.loads(attrs[name])
    except KeyError:
        _fail(path, f"missing root attribute {name!r}")
    except (TypeError, ValueError):
        _fail(path, f"root attribute {name!r} is not valid JSON")


def _strings(dset) -> list:
    return list(dset.asstr()[()])


def _check(path, f: h5py.File, require_complete: bool) -> dict:
    attrs = f.attrs
    if "format" not in attrs:
        _fail(path, "not a DCE pair file (no 'format' attribute)")
    fmt = attrs["format"]
    fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
    if fmt != FORMAT_NAME:
        _fail(path, f"not a DCE pair file (format={fmt!r}, expected {FORMAT_NAME!r})")
    version = int(attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        _fail(path, f"format version {version}; this reader reads version {FORMAT_VERSION} "
                    "(rebuild the file with this dce version)")
    complete = bool(attrs.get("complete", False))
    if require_complete and not complete:
        _fail(path, "incomplete build (complete=False) — rerun dce-build to resume")
    channels = _json_attr(path, attrs, "channels")
    config = _json_attr(path, attrs, "config")
    if not (isinstance(channels, list) and channels and all(isinstance(c, str) for c in channels)):
        _fail(path, "root attribute 'channels' must be a non-empty list of names, "
                    f"got {channels!r}")
    try:
        n, height, width = (int(attrs[k]) for k in ("n_samples", "height", "width"))
    except KeyError as e:
        _fail(path, f"missing root attribute {e.args[0]!r}")
    C = len(channels)
    names = list(SAMPLE_DATASETS) + ([SPLIT] if complete else [])
    for name in names:
        if name not in f:
            _fail(path, f"missing dataset {name!r}")
        d = f[name]
        if not isinstance(d, h5py.Dataset):
            _fail(path, f"{name!r} is not a dataset")
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
    for name in IMAGE_DATASETS:
        q = f[name].attrs.get("quantization")
        q = q.decode() if isinstance(q, bytes) else q
        if q != QUANTIZATION:
            _fail(path, f"dataset {name!r} has quantization {q!r}, expected {QUANTIZATION!r}")
    sample_ids = _strings(f["sample_id"])[:n]
    if len(set(sample_ids)) != n:
        _fail(path, "duplicate sample_id values")
    subjects = np.array(_strings(f["subject"])[:n], dtype=object)
    summary = {
        "path": os.fspath(path), "format_version": version, "complete": complete,
        "n_samples": n, "channels": channels, "height": height, "width": width,
        "n_pairs": len(set(_strings(f["pair_id"])[:n])), "n_subjects": len(set(subjects)),
        "created_by": str(attrs.get("created_by", "")), "config": config,
        "shard": str(attrs["shard"]) if "shard" in attrs else None,
        "size_bytes": os.path.getsize(path),
    }
    if complete:
        split = f[SPLIT][()]
        if split.size and split.max() > TEST:
            _fail(path, f"dataset 'split' holds values other than {TRAIN} (train) / {TEST} (test)")
        train, test = set(subjects[split == TRAIN]), set(subjects[split == TEST])
        if train & test:
            _fail(path, f"split is not identity-disjoint: subjects {sorted(train & test)[:5]} "
                        "are in both train and test")
        summary.update(seed=int(attrs["seed"]) if "seed" in attrs else None,
                       test_fraction=float(attrs["test_fraction"]) if "test_fraction" in attrs
                       else None,
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


def validate(path, require_complete: bool = True) -> dict:
    """Check that ``path`` is a DCE pair file of this version: format name,
    version, complete flag (unless ``require_complete`` is False), every
    dataset's shape and dtype, quantization, unique sample ids and an
    identity-disjoint split. Returns a summary dict (``n_samples``,
    ``channels``, ``height``, ``width``, ``n_pairs``, ``n_subjects``,
    ``config``, ``complete``, ``shard``, ``size_bytes``, and for complete files
    ``n_train``/``n_test`` samples, ``n_train_subjects``/``n_test_subjects``,
    ``seed``, ``test_fraction``). Raises ``PairFileError`` naming the file
    and the problem."""
    with _open(path) as f:
        try:
            return _check(path, f, require_complete)
        except (OSError, RuntimeError) as e:
            _fail(path, f"corrupt HDF5 (unreadable data): {e}")


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
    except (OSError, ValueError) as e:
        _fail(path, f"partial build without readable settings.json ({e})")
    return "\n".join([
        f"{os.fspath(path)}: INCOMPLETE DCE build (rerun dce-build to resume)",
        f"  samples   {sum(counts)} committed in {len(segments)} segments",
        f"  images    {len(settings['channels'])} x {settings['height']} x {settings['width']}"
        "  channels " + ", ".join(settings["channels"]),
        "  config    " + json.dumps(settings["config"], sort_keys=True)])


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
                     f"  (seed {s['seed']}, test fraction {s['test_fraction']:.3g})")
    lines.append("  config    " + json.dumps(s["config"], sort_keys=True))
    n = s["n_samples"]
    if n:
        picks = np.unique(np.linspace(0, n - 1, min(n_examples, n)).round().astype(int))
        lines.append("  value ranges inside the masks (physical units):")
        with _open(path) as f:
            ids = f["sample_id"].asstr()
            for i in picks:
                lines.append(f"    {ids[i]}")
                for side in ("coarse", "target"):
                    x = dequantize(f[side][i]).astype(np.float64)
                    mask = f[side + "_mask"][i].astype(bool)
                    phys = f[side + "_offset"][i][:, None] + f[side + "_scale"][i][:, None] \
                        * x.reshape(len(x), -1)
                    cells = []
                    for c, name in enumerate(s["channels"]):
                        v = phys[c][mask.ravel()]
                        unit = UNITS.get(name, "")
                        span = f"[{v.min():.4g}, {v.max():.4g}]{' ' + unit if unit else ''}"
                        cells.append(f"{name} {span}" if v.size else f"{name} (empty)")
                    lines.append(f"      {side:<6} {mask.sum():>7d} px  " + "; ".join(cells))
    return "\n".join(lines)
