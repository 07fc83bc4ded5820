"""The pair file's layout (``docs/pair-file.md``): dataset names, dtypes and
shapes, the uint16 quantization, the identity-disjoint split, the text
checksum, the error types, and the small helpers every reader's message uses
(:func:`sample_name`). numpy and h5py only; :mod:`dce.gan.h5format`
re-exports every public name here."""
from __future__ import annotations

import hashlib
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
