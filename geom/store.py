"""Writing DCE pair files in resumable, atomically committed segments,
merging shards into one file, and reading a sample back as DCE images
(:func:`read_sample`).

See docs/pair-file.md (the layout; segments, finalize, shards).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from importlib import metadata

import h5py
import numpy as np

from dce.gan import h5format as fmt

from .dce import DCEImage, save_png
from .projection import camera_from_array
from .records import atomic_write

try:
    import fcntl
except ImportError:  # Windows: no advisory lock; one builder per output is the rule
    fcntl = None

COMPRESSIONS = ("gzip", "lzf", None)
GZIP_LEVEL = 4
_SMALL_ROWS = 256  # rows per chunk of the per-sample scalar/vector datasets
_POSE_ID = re.compile(r"^(.*)/pose\d+$")


def _created_by() -> str:
    try:
        return f"dce {metadata.version('dce')}"
    except metadata.PackageNotFoundError:
        return "dce (version unknown)"


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True)


def _filters(compression) -> dict:
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    # fletcher32: a checksum per chunk, so that a damaged uncompressed chunk
    # is an error on read rather than silently different numbers
    if compression is None:
        return {"fletcher32": True}
    opts = {"compression": compression, "shuffle": True, "fletcher32": True}
    if compression == "gzip":
        opts["compression_opts"] = GZIP_LEVEL
    return opts


def _create(g: h5py.Group, name: str, n: int, C: int, H: int, W: int,
            compression) -> h5py.Dataset:
    """Dataset ``name`` of the layout with ``n`` rows: images and masks one
    sample per chunk, the small per-sample arrays ``_SMALL_ROWS`` per chunk."""
    kind, _ = fmt.SAMPLE_DATASETS.get(name, ("uint8", ()))
    tail = fmt.sample_shape(name, C, H, W) if name != fmt.SPLIT else ()
    per_sample = name in fmt.IMAGE_DATASETS or name in fmt.MASK_DATASETS
    chunks = (1,) + tail if per_sample else (max(1, min(n, _SMALL_ROWS)),) + tail
    dtype = h5py.string_dtype("utf-8") if kind == "str" else np.dtype(kind)
    opts = {} if kind == "str" else _filters(compression)
    d = g.create_dataset(name, shape=(n,) + tail, maxshape=(None,) + tail, dtype=dtype,
                         chunks=chunks, **opts)
    if name in fmt.IMAGE_DATASETS:
        d.attrs["quantization"] = fmt.QUANTIZATION
    return d


def _root_attrs(g: h5py.File, channels, H: int, W: int, config: dict, shard, n: int):
    g.attrs.update({"format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION,
                    "complete": False, "n_samples": n, "channels": json.dumps(list(channels)),
                    "height": H, "width": W, "created_by": _created_by(),
                    "config": _canonical(config)})
    if shard is not None:
        g.attrs["shard"] = f"{shard[0]}/{shard[1]}"


def _sample_rows(sample, channels: tuple, H: int, W: int) -> dict:
    """One row per dataset from a sample record, checked against the file's
    channels and size."""
    sid = getattr(sample, "sample_id", "?")
    C = len(channels)
    if tuple(sample.channels) != channels:
        raise ValueError(f"sample {sid}: channels {tuple(sample.channels)} differ from the "
                         f"file's {channels}")
    rows = {
        "coarse": fmt.quantize(sample.coarse), "target": fmt.quantize(sample.target),
        "coarse_mask": np.asarray(sample.coarse_mask, dtype=bool).astype(np.uint8),
        "target_mask": np.asarray(sample.target_mask, dtype=bool).astype(np.uint8),
        "pose": np.asarray(sample.pose, dtype=np.float32),
        "sample_id": str(sample.sample_id), "pair_id": str(sample.pair_id),
        "subject": str(sample.subject),
        "provenance": json.dumps(dict(sample.source), sort_keys=True, default=str),
    }
    for side in ("coarse", "target"):
        for what in ("offset", "scale", "camera"):
            rows[f"{side}_{what}"] = np.asarray(getattr(sample, f"{side}_{what}"), dtype=np.float64)
    for name, value in rows.items():
        if fmt.SAMPLE_DATASETS[name][0] == "str":
            continue
        expected = fmt.sample_shape(name, C, H, W)
        if value.shape != expected:
            raise ValueError(f"sample {sid}: {name} has shape {value.shape}, expected {expected}")
    return rows


def parse_shard(text: str) -> tuple:
    """``"K/N"`` (1 <= K <= N) -> (K, N)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ValueError(f"shard must be K/N with 1 <= K <= N, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def shard_of(sample_or_pair_id, k: int, n: int) -> bool:
    """True when a pair belongs to shard ``k`` of ``n`` (1 <= k <= n). The
    argument is a pair id, a sample id ``"<pair_id>/pose<i>"``, or a record
    with a ``pair_id`` attribute; the shard is the pair id's BLAKE2b hash
    modulo n, so all poses of a pair share a shard and the assignment does not
    depend on enumeration order, process or platform."""
    if not 1 <= k <= n:
        raise ValueError(f"shard must be K/N with 1 <= K <= N, got {k}/{n}")
    pair_id = getattr(sample_or_pair_id, "pair_id", sample_or_pair_id)
    if not isinstance(pair_id, str):
        raise TypeError(f"shard_of needs a pair id string or a record with pair_id, "
                        f"got {type(sample_or_pair_id).__name__}")
    m = _POSE_ID.match(pair_id)
    if m:
        pair_id = m.group(1)
    digest = hashlib.blake2b(pair_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") % n == k - 1


SETTINGS = "settings.json"
SEGMENT_GLOB = "segment-*.h5"


def partial_path(path) -> str:
    """The directory where the build of ``path`` accumulates segments."""
    return os.fspath(path) + ".partial"


def _fsync(path: str) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _write_pairs(path: str, rows: list, channels, H: int, W: int, config: dict, compression,
                 shard) -> None:
    """A segment: ``rows`` (dicts from ``_sample_rows``) in the given order,
    complete=False, no split."""
    with h5py.File(path, "w", libver="earliest") as g:
        _root_attrs(g, channels, H, W, config, shard, len(rows))
        for name in fmt.SAMPLE_DATASETS:
            d = _create(g, name, len(rows), len(channels), H, W, compression)
            values = [r[name] for r in rows]
            d[...] = values if fmt.SAMPLE_DATASETS[name][0] == "str" else np.stack(values)
        fmt.write_text_digest(g, len(rows))


class EmptyBuildError(ValueError):
    """A build that ends without a single sample (every pair failed)."""


class PairWriter:
    """Collects samples in ``<path>.partial/`` and finalizes ``path``.

    ``channels`` names (C), images ``height`` x ``width``; ``config`` (a
    JSON-serializable dict) is the build configuration stored as provenance
    and compared on resume; ``shard`` = (K, N) for a shard build, kept out of
    ``config`` so that shards share one configuration. ``compression`` is
    "gzip", "lzf" or None. Samples (records with the attributes of
    ``dce.geom.dataset.Sample``) are committed to disk ``commit_every`` at a
    time, as one segment, and by ``commit()`` and ``close()``; a crash loses
    at most the uncommitted ones.

    With ``resume`` (default) an existing partial build of the same channels,
    size, config and shard is reopened and its committed samples kept
    (``done_ids``); a different one is refused with ``PairFileError``.
    ``resume=False`` discards it. Use as a context manager; leaving it
    without ``finalize`` (an exception, Ctrl-C) commits what it holds and
    keeps the partial build for a later resume."""

    def __init__(self, path, channels, height: int, width: int, config: dict,
                 compression="gzip", shard=None, resume: bool = True, commit_every: int = 8):
        self.path = os.fspath(path)
        self.partial = partial_path(path)
        self.channels = tuple(channels)
        self.height, self.width = int(height), int(width)
        self.config = json.loads(_canonical(config))
        self.compression = compression
        self.shard = None if shard is None else parse_shard(f"{shard[0]}/{shard[1]}")
        self.commit_every = int(commit_every)
        _filters(compression)
        if not self.channels:
            raise ValueError("channels must name at least one channel")
        if self.commit_every < 1:
            raise ValueError(f"commit_every must be >= 1, got {commit_every}")
        self.dropped = []  # unreadable segments deleted on resume (power loss)
        self._pending = []
        self._segments = {}  # segment path -> its sample ids
        self._lock = None
        self._closed = False
        settings = {"format_version": fmt.FORMAT_VERSION, "channels": list(self.channels),
                    "height": self.height, "width": self.width, "config": self.config,
                    "shard": None if self.shard is None else f"{self.shard[0]:d}/{self.shard[1]:d}",
                    "compression": compression}
        if os.path.exists(self.partial) and not os.path.isdir(self.partial):
            raise fmt.PairFileError(f"{self.partial}: exists and is not a partial build "
                                    "directory; move it away")
        if resume and os.path.isdir(self.partial):
            self._take_lock()
            self._resume(settings)
        else:
            if os.path.isdir(self.partial):
                self._take_lock()
                self._release_lock()
                shutil.rmtree(self.partial)
            os.makedirs(self.partial)
            self._take_lock()
            atomic_write(os.path.join(self.partial, SETTINGS),
                         json.dumps(settings, sort_keys=True, indent=1).encode("utf-8"))
        self._ids = set().union(*self._segments.values())

    def _take_lock(self) -> None:
        if fcntl is None:
            return
        fh = open(os.path.join(self.partial, "lock"), "a")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise fmt.PairFileError(f"{self.partial}: in use by another process (is another "
                                    "dce-build writing this file?)") from None
        self._lock = fh

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the descriptor drops the flock
            self._lock = None

    def _resume(self, settings: dict) -> None:
        try:
            with open(os.path.join(self.partial, SETTINGS), encoding="utf-8") as fh:
                stored = json.load(fh)
        except (OSError, ValueError) as e:
            self._release_lock()
            raise fmt.PairFileError(f"{self.partial}: unreadable {SETTINGS} ({e}); delete the "
                                    "directory or rebuild without resuming") from None
        diffs = [f"{k}: partial build {stored.get(k)!r}, now {v!r}"
                 for k, v in settings.items() if k != "config" and stored.get(k) != v]
        old = stored.get("config", {})
        diffs += [f"config[{k!r}]: partial build {old.get(k)!r}, now {self.config.get(k)!r}"
                  for k in sorted(set(old) | set(self.config)) if old.get(k) != self.config.get(k)]
        if diffs:
            self._release_lock()
            raise fmt.PairFileError(f"{self.partial}: partial build was started with different "
                                    "settings (" + "; ".join(diffs) + "); delete it or rebuild "
                                    "without resuming")
        for tmp in glob.glob(os.path.join(self.partial, "*.tmp")):
            os.remove(tmp)  # a segment cut short before its rename
        for seg in sorted(glob.glob(os.path.join(self.partial, SEGMENT_GLOB))):
            try:
                with fmt.open_pairs(seg, require_complete=False) as f:
                    n = int(f.attrs["n_samples"])
                    self._segments[seg] = set(f["sample_id"].asstr()[:n])
            except (fmt.PairFileError, OSError, RuntimeError) as e:
                # Only a power loss between write and rename's flush gets here.
                self.dropped.append(f"{seg}: {e}")
                os.remove(seg)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __len__(self) -> int:
        return len(self._ids)

    def has(self, sample_id: str) -> bool:
        """Whether ``sample_id`` is already stored (resume skips it)."""
        return sample_id in self._ids

    def done_ids(self) -> set:
        """The ids of the samples stored (committed or about to be)."""
        return set(self._ids)

    def append(self, sample) -> None:
        """Add one sample; committed with the next segment."""
        if self._closed:
            raise ValueError(f"{self.partial}: writer is closed")
        rows = _sample_rows(sample, self.channels, self.height, self.width)
        if rows["sample_id"] in self._ids:
            raise ValueError(f"{self.partial}: sample {rows['sample_id']!r} is already stored")
        self._pending.append(rows)
        self._ids.add(rows["sample_id"])
        if len(self._pending) >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """Write the pending samples as one segment: to a temporary name,
        then renamed into place, so it exists whole or not at all."""
        if not self._pending:
            return
        if self._closed:
            raise ValueError(f"{self.partial}: writer is closed")
        numbers = [int(re.search(r"(\d+)\.h5$", p).group(1)) for p in self._segments]
        seg = os.path.join(self.partial, f"segment-{max(numbers, default=0) + 1:06d}.h5")
        _write_pairs(seg + ".tmp", self._pending, self.channels, self.height, self.width,
                     self.config, self.compression, self.shard)
        os.replace(seg + ".tmp", seg)
        self._segments[seg] = {r["sample_id"] for r in self._pending}
        self._pending = []

    def finalize(self, seed: int, test_fraction: float = fmt.DEFAULT_TEST_FRACTION,
                 subject_split: dict | None = None) -> dict:
        """Sort the samples by id, assign the split (``seed``, ``test_fraction``
        of the subjects to test; or ``subject_split``, {subject: TRAIN or
        TEST}, e.g. another file's), write ``path`` atomically and delete the
        partial build; returns ``h5format.validate(path)``."""
        if self._closed:
            raise ValueError(f"{self.partial}: writer is closed")
        self.commit()
        if not self._segments:
            self._closed = True
            self._release_lock()
            shutil.rmtree(self.partial)
            raise EmptyBuildError(f"{os.fspath(self.path)}: no sample was built, so no file "
                                  f"is written")
        _assemble(sorted(self._segments), self.path, self.channels, self.height, self.width,
                  self.config, self.compression, self.shard, seed, test_fraction, subject_split)
        self._closed = True
        self._release_lock()
        shutil.rmtree(self.partial)
        return fmt.validate(self.path)

    def close(self) -> None:
        """Commit what is pending and release the partial build (kept for
        resuming)."""
        try:
            if not self._closed:
                self.commit()
        finally:
            self._closed = True
            self._release_lock()


def _same_storage(a: h5py.Dataset, b: h5py.Dataset) -> bool:
    return (a.dtype == b.dtype and a.chunks == b.chunks and a.compression == b.compression
            and a.compression_opts == b.compression_opts and a.shuffle == b.shuffle)


def _assemble(paths, out_path: str, channels, H: int, W: int, config: dict, compression,
              shard, seed: int, test_fraction: float, subject_split: dict | None = None) -> None:
    """Write the samples of the pair files ``paths`` (segments or shards) to
    ``out_path`` sorted by sample_id, with the split (``subject_split``
    {subject: TRAIN or TEST} when given, else drawn from ``seed`` and
    ``test_fraction``), via ``<out>.tmp`` and an atomic rename. Sources are
    opened one at a time (a build may have thousands of segments)."""
    ids = []
    for s, p in enumerate(paths):
        with h5py.File(p, "r") as f:
            n = int(f.attrs["n_samples"])
            ids += [(sid, s, r) for r, sid in enumerate(f["sample_id"].asstr()[:n])]
    ids.sort()
    dup = [a[0] for a, b in zip(ids, ids[1:]) if a[0] == b[0]]
    if dup:
        raise fmt.PairFileError(f"{out_path}: sample ids stored twice: {dup[:5]}")
    N, C = len(ids), len(channels)
    # dest[s][r]: output row of row r of source s
    dest = [dict() for _ in paths]
    for j, (_, s, r) in enumerate(ids):
        dest[s][r] = j
    tmp = out_path + ".tmp"
    with h5py.File(tmp, "w", libver="earliest") as g:
        _root_attrs(g, channels, H, W, config, shard, N)
        out = {name: _create(g, name, N, C, H, W, compression) for name in fmt.SAMPLE_DATASETS}
        small = {name: [None] * N for name in fmt.SAMPLE_DATASETS
                 if name not in fmt.IMAGE_DATASETS + fmt.MASK_DATASETS}
        for s, p in enumerate(paths):
            with h5py.File(p, "r") as f:
                for name, d in out.items():
                    a = f[name]
                    if name in small:
                        values = a.asstr()[()] if name in fmt.STRING_DATASETS else a[()]
                        for r, j in dest[s].items():
                            small[name][j] = values[r]
                    elif _same_storage(a, d):  # copy the compressed chunks as they are
                        zeros = (0,) * (d.ndim - 1)
                        for r, j in dest[s].items():
                            mask, data = a.id.read_direct_chunk((r,) + zeros)
                            d.id.write_direct_chunk((j,) + zeros, data, mask)
                    else:
                        for r, j in dest[s].items():
                            d[j] = a[r]
        if N:
            for name, values in small.items():
                out[name][...] = values if name in fmt.STRING_DATASETS else np.stack(values)
        subjects = small["subject"]
        which = (fmt.split_subjects(subjects, seed, test_fraction) if subject_split is None
                 else subject_split)
        unknown = sorted(set(subjects) - set(which))
        if unknown:
            raise fmt.PairFileError(f"{out_path}: no split given for subjects {unknown[:5]}")
        split = _create(g, fmt.SPLIT, N, C, H, W, compression)
        if N:
            split[...] = np.array([which[x] for x in subjects], dtype=np.uint8)
        g.attrs.update({"seed": int(seed), "test_fraction": float(test_fraction)})
        fmt.write_text_digest(g, N)
        g.attrs["complete"] = True
    _fsync(tmp)  # on disk before the rename makes it visible
    os.replace(tmp, out_path)


def merge_shards(paths, out_path, seed: int, test_fraction: float = fmt.DEFAULT_TEST_FRACTION,
                 require_all: bool = True) -> dict:
    """Join complete shard files (``dce-build --shard K/N``) into ``out_path``:
    every sample, sorted by id, with the split recomputed over all subjects
    (``seed``, ``test_fraction``), so the result equals a single build.
    Shards must share channels, size and config; with ``require_all`` every
    K of 1..N must be given exactly once. Returns ``validate(out_path)``."""
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("merge_shards needs at least one shard file")
    infos = [fmt.validate(p) for p in paths]
    first = infos[0]
    for p, s in zip(paths[1:], infos[1:]):
        for key in ("channels", "height", "width", "config"):
            if s[key] != first[key]:
                raise fmt.PairFileError(f"{p}: {key} differs from {paths[0]}'s "
                                        f"({s[key]!r} vs {first[key]!r}); not shards of one build")
    shards = [s["shard"] for s in infos]
    if require_all:
        if None in shards:
            raise fmt.PairFileError(f"{paths[shards.index(None)]}: not a shard file (no 'shard' "
                                    "attribute)")
        parsed = [parse_shard(t) for t in shards]
        counts = {n for _, n in parsed}
        if len(counts) != 1:
            raise fmt.PairFileError(f"shards of different counts: {sorted(set(shards))}")
        n_shards = counts.pop()
        ks = sorted(k for k, _ in parsed)
        if ks != list(range(1, n_shards + 1)):
            missing = sorted(set(range(1, n_shards + 1)) - set(ks))
            repeated = sorted({k for k in ks if ks.count(k) > 1})
            raise fmt.PairFileError(f"{out_path}: shards of {n_shards} do not cover the build "
                                    f"(missing {missing}, repeated {repeated})")
    with h5py.File(paths[0], "r") as f:
        compression = f["coarse"].compression
    _assemble(paths, os.fspath(out_path), first["channels"], first["height"], first["width"],
              first["config"], compression, None, seed, test_fraction)
    return fmt.validate(out_path)


@dataclass
class SampleImages:
    """One sample of a pair file: its coarse and target DCE images (all the
    file's channels, with their normalization and cameras), its id, subject
    and split ("train" or "test")."""

    coarse: DCEImage
    target: DCEImage
    sample_id: str
    subject: str
    split: str


def _sample_index(path, f: h5py.File, sample: None | str | int) -> int:
    """Row of ``sample`` (an id, or a row index as an int or as text,
    negative from the end) in the open pair file ``f``; None: the first test
    sample (the first sample when none is in the test split)."""
    ids = list(f["sample_id"].asstr()[()])
    if sample is None:
        test = np.flatnonzero(f[fmt.SPLIT][()] == fmt.TEST)
        return int(test[0]) if len(test) else 0
    if isinstance(sample, (int, np.integer)) and not isinstance(sample, bool):
        sample = str(int(sample))
    elif not isinstance(sample, str):
        raise TypeError(f"sample must be an id (str), a row index (int) or None, "
                        f"got {type(sample).__name__}")
    if sample in ids:
        return ids.index(sample)
    if re.fullmatch(r"-?\d+", sample) and -len(ids) <= int(sample) < len(ids):
        return int(sample) % len(ids)
    raise fmt.PairFileError(f"{path}: no sample {sample!r} (the file has {len(ids)} samples, "
                            f"ids such as {', '.join(ids[:3])}; give an id or an index "
                            f"0..{len(ids) - 1})")


def read_sample(path, sample: None | str | int = None) -> SampleImages:
    """One sample of the complete pair file ``path`` as DCE images:
    ``sample`` is its id (e.g. ``"0003/pose0"``) or its row index, an int or
    text (negative from the end); None picks the first sample of the test split.
    :class:`PairFileError` naming the file when there is no such sample."""
    with fmt.open_pairs(path) as f:
        channels = tuple(json.loads(f.attrs["channels"]))
        i = _sample_index(path, f, sample)
        images = [DCEImage(np.ascontiguousarray(fmt.dequantize(f[side][i]).transpose(1, 2, 0)),
                           f[side + "_mask"][i].astype(bool), channels, f[side + "_offset"][i],
                           f[side + "_scale"][i], camera_from_array(f[side + "_camera"][i]))
                  for side in ("coarse", "target")]
        return SampleImages(*images, f["sample_id"].asstr()[i], f["subject"].asstr()[i],
                            "test" if f[fmt.SPLIT][i] else "train")


def _tile(values: np.ndarray, mask: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(H, W) values -> uint8 grey, [lo, hi] to 48..255, background black."""
    t = np.clip((values - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.where(mask, 48 + 207 * t, 0).astype(np.uint8)


PREVIEW_PAD, PREVIEW_LABEL = 4, 12


def preview_pairs(path, k: int, out_png, seed: int = 0) -> str:
    """PNG grid of ``k`` random samples of a pair file (all when it holds
    fewer), one row per sample: the coarse tiles then the target tiles, one
    tile per channel (r, g, b together as one colour tile), each H x W.
    Each channel is contrast-stretched over both sides' masked pixels (the
    stored depth grows toward the camera, so nearer is brighter); background
    is black. Image size:
    width ``PAD + T * (W + PAD)`` with T = 2 * tiles per side, height
    ``LABEL + k * (PAD + LABEL + H) + PAD`` (PAD = 4, LABEL = 12 px): a
    header row of tile names and a sample-id label above each row."""
    from PIL import Image, ImageDraw

    s = fmt.validate(path, require_complete=False)
    channels, H, W, n = s["channels"], s["height"], s["width"], s["n_samples"]
    if n == 0:
        raise fmt.PairFileError(f"{os.fspath(path)}: no samples to preview")
    picks = np.sort(np.random.default_rng(seed).choice(n, size=min(int(k), n), replace=False))
    rgb = [channels.index(c) for c in ("r", "g", "b")] if {"r", "g", "b"} <= set(channels) else []
    groups = [[c] for c, name in enumerate(channels) if c not in rgb] + ([rgb] if rgb else [])
    names = ["rgb" if len(g) == 3 else channels[g[0]] for g in groups]
    T, P, L = 2 * len(groups), PREVIEW_PAD, PREVIEW_LABEL
    canvas = Image.new("RGB", (P + T * (W + P), L + len(picks) * (P + L + H) + P))
    draw = ImageDraw.Draw(canvas)
    for t in range(T):
        side, name = ("coarse", "target")[t // len(groups)], names[t % len(groups)]
        # The longest label that fits the tile: "coarse depth", "c depth", "c D".
        labels = [f"{side} {name}", f"{side[0]} {name}", f"{side[0]} {name[0].upper()}"]
        label = next((s for s in labels if draw.textlength(s) <= W), labels[-1])
        draw.text((P + t * (W + P), 0), label, fill=(255, 255, 0))
    with fmt.open_pairs(path, require_complete=False) as f:
        split = f[fmt.SPLIT] if fmt.SPLIT in f else None
        for r, i in enumerate(picks):
            y = L + r * (P + L + H) + P
            label = f["sample_id"].asstr()[i]
            if split is not None:
                label += "  (train)" if split[i] == fmt.TRAIN else "  (test)"
            draw.text((P, y), label, fill=(255, 255, 255))
            x = {side: fmt.dequantize(f[side][i]) for side in ("coarse", "target")}
            m = {side: f[side + "_mask"][i].astype(bool) for side in ("coarse", "target")}
            for gi, g in enumerate(groups):
                if len(g) == 1:
                    c = g[0]
                    inside = np.concatenate([x[sd][c][m[sd]] for sd in x])
                    lo, hi = np.percentile(inside, [1, 99]) if inside.size else (-1.0, 1.0)
                for si, side in enumerate(("coarse", "target")):
                    if len(g) == 1:
                        img = Image.fromarray(_tile(x[side][c], m[side], lo, hi), "L")
                    else:
                        col = np.clip((x[side][g] + 1.0) * 127.5, 0, 255).transpose(1, 2, 0)
                        img = Image.fromarray((col * m[side][..., None]).astype(np.uint8), "RGB")
                    canvas.paste(img, (P + (si * len(groups) + gi) * (W + P), y + L))
    return os.fspath(save_png(out_png, canvas))
