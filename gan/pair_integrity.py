"""HDF5-level integrity of a pair file, below what h5py reports: the global
heaps that hold its text (a damaged one can hang HDF5), the chunk index
(a damaged one returns fill values without an error), and reads of images
and masks with each chunk checked. Errors are PairFileError naming the file,
the dataset and the sample."""
from __future__ import annotations

import itertools
import os

import h5py
import numpy as np

from .pair_layout import STRING_DATASETS, _fail, _strings, sample_name

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


def check_chunk_index(path, dataset: h5py.Dataset, file_size: int) -> int:
    """PairFileError naming ``path`` and the dataset unless every chunk that
    the chunked ``dataset``'s index lists is non-empty and lies inside the
    file (``file_size`` bytes). Run before any chunk is read: HDF5 crashes
    the process (a segmentation fault, not an error) when it reads a chunk
    of a dataset whose index holds an empty one (found by
    ``benchmarks/fuzz_pairs.py``: one chunk size zeroed). Returns the number
    of chunks listed (0 for a contiguous dataset)."""
    if dataset.chunks is None:
        return 0
    chunks = []
    try:
        if hasattr(dataset.id, "chunk_iter"):  # one pass over the index (HDF5 >= 1.12.3)
            dataset.id.chunk_iter(chunks.append)
        else:
            chunks = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
    except (OSError, RuntimeError, ValueError) as error:
        _fail(path, f"dataset {_dataset_name(dataset)!r}: unreadable chunk index (damaged "
                    f"file: {error})")
    for info in chunks:
        if info.size == 0 or info.byte_offset < 0 or info.byte_offset + info.size > file_size:
            _fail(path, f"dataset {_dataset_name(dataset)!r}: its chunk index lists a chunk of "
                        f"{info.size} bytes at byte {info.byte_offset} of a {file_size}-byte "
                        "file (damaged index)")
    return len(chunks)


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
