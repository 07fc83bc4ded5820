"""Training data: a torch ``Dataset`` over a DCE pair file (``h5format``),
the DataLoader around it, and the average pooling that makes the images of
the lower progressive stages. Tensors are float32 in [-1, 1], background -1.

See docs/progressive-gan.md (processes, low resolutions and the cache).
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import h5format
from .h5format import BACKGROUND, PairFileError

DCE = ("depth", "curvature", "elevation")
SPLITS = {"train": h5format.TRAIN, "test": h5format.TEST, "all": None}


def _block(H: int, W: int, resolution: int) -> int:
    """Pooling factor from H x W pixels to ``resolution``; H and W must be
    ``resolution`` times the same integer."""
    if resolution < 1 or H % resolution or W % resolution or H // resolution != W // resolution:
        raise ValueError(f"cannot average-pool images of {H}x{W} px to {resolution}x{resolution}: "
                         "the sizes must be the same integer multiple of the resolution")
    return H // resolution


def downsample(x: torch.Tensor, resolution: int) -> torch.Tensor:
    """Images (..., H, W), e.g. (N, C, H, W) -> (..., r, r), r = ``resolution``: mean of each
    (H/r) x (W/r) block. Equal to 2x2 average pooling applied log2(H/r) times
    (a mean of block means) when H/r is a power of two, as in the progressive
    stages 256 -> 128 -> ... -> 4. Background pixels (-1) enter the mean, so
    a block on the silhouette holds a blend of surface and background, in the
    real images as in the generated ones."""
    H, W = x.shape[-2:]
    k = _block(H, W, resolution)
    if k == 1:
        return x
    pooled = F.avg_pool2d(x.reshape(-1, 1, H, W), k)
    return pooled.reshape(*x.shape[:-2], resolution, resolution)


def downsample_mask(mask: torch.Tensor, resolution: int) -> torch.Tensor:
    """Masks (..., 1, H, W) of 0/1 -> (..., 1, r, r): a pooled pixel is valid
    (1) only when every pixel of its block is valid, so that the pooled image
    values inside the mask hold no background (a blend with -1 would bias the
    error there). Pooling in steps gives the same mask: a pixel is valid when
    all of its sub-blocks are, i.e. all of its pixels. Same float dtype as
    ``mask``."""
    return (downsample(mask, resolution) >= 1.0).to(mask.dtype)


def translate(x: np.ndarray, dy: int, dx: int, fill) -> np.ndarray:
    """``x`` (..., H, W) moved by ``dy`` rows down and ``dx`` columns right
    (out[i, j] = x[i - dy, j - dx]); pixels coming from outside are ``fill``
    (a scalar, or an array broadcasting against ``x[..., :1, :1]``, e.g. one
    value per channel). The same as padding by max(|dy|, |dx|) with ``fill``
    and cropping an H x W window."""
    H, W = x.shape[-2:]
    out = np.empty_like(x)
    out[...] = fill
    if abs(dy) < H and abs(dx) < W:
        out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
            x[..., max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
    return out


def whole_pixel_shift(drawn: int, block: int, crop_pad: int) -> int:
    """A shift of ``drawn`` file pixels made whole in pixels of ``block`` file
    pixels: the nearest multiple of ``block`` (ties toward zero), limited to
    the largest multiple whose size is at most ``crop_pad``."""
    n = min((2 * abs(drawn) + block - 1) // (2 * block), crop_pad // block)
    return n * block if drawn >= 0 else -n * block


def _pool(stack: torch.Tensor, resolution: int, n_images: int) -> torch.Tensor:
    """(N, n_images + 2, s, s) images then masks -> (N, n_images + 2, r, r):
    :func:`downsample` on the images, :func:`downsample_mask` on the masks.
    Returns ``stack`` itself when s = r."""
    if stack.shape[-1] == resolution:
        return stack
    pooled = downsample(stack, resolution)
    pooled[:, n_images:] = pooled[:, n_images:] >= 1.0
    return pooled


def _divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


@dataclass(frozen=True)
class CacheInfo:
    """This process's cache of a :class:`PairDataset`: ``resolution`` s of the
    cached images, ``capacity`` (samples that fit in the budget: items 0 ..
    capacity - 1 are cached once read), ``filled`` (samples held now) and
    ``nbytes`` (the memory it can take: capacity x bytes per sample; pages
    are only touched as samples are stored)."""

    resolution: int
    capacity: int
    filled: int
    nbytes: int


class PairDataset(Dataset):
    """The samples of one split of a DCE pair file, as dicts of tensors.

    Parameters
    ----------
    path : the pair file (validated once here with ``h5format.validate``).
    split : ``"train"``, ``"test"`` or ``"all"`` (the file's ``split`` dataset).
    generator_channels : channels of the coarse image given to the generator
        (e.g. ``DCE`` or ``DCE + ("r", "g", "b")``).
    target_channels : channels of the ground-truth image (what the generator
        produces: the union of the discriminator's and the pixel loss's sets).
    condition_channels : when given, the coarse channels the discriminator is
        conditioned on, returned as ``condition``; None: no ``condition`` key.
    resolution : side r of the returned images; the file's size (256 in the
        paper; the default, None) divided by an integer (average pooling,
        :func:`downsample`).
    augment : online random translation (paper 5.4, "randomly crop and pad").
    crop_pad : the largest shift, in pixels of the file's images, per axis.
    seed : with the epoch and the sample, determines the shift.
    cache_resolution : the intermediate pooling size s is the largest divisor
        of the file's size that is at most this (None: the file's size); the
        items at resolutions dividing s are pooled from s-pixel images, kept
        in memory (module docstring).
    cache_mb : memory budget of the cache in MiB (2**20 bytes), per process:
        the first ``floor(cache_mb / sample size)`` items are cached once read
        (a 64 px sample of 3 + 3 channels and 2 masks takes 128 KiB, so the
        default 512 MiB holds 4096 of them); later items are read from the
        file each time; 0 caches nothing. With W DataLoader workers each
        worker has its own cache, filled with the items it is handed, so up
        to (W + 1) x cache_mb in all; call :meth:`preload` before the workers
        start to give them the whole cache at once (forked workers share the
        parent's pages copy-on-write).

    Items
    -----
    ``coarse`` (Cg, r, r), ``target`` (Ct, r, r), ``coarse_mask`` and
    ``target_mask`` (1, r, r) float32; ``condition`` (Cc, r, r) when asked;
    ``index`` the sample's row in the file; ``coarse_offset``/``coarse_scale``
    (Cg,) and ``target_offset``/``target_scale`` (Ct,) float64 with physical =
    offset + scale * x (depth in mm); ``shift`` (2,) int64, the (rows, columns)
    translation that was applied, in pixels of the file's images.

    Augmentation: a shift (dy, dx) is drawn, each uniform in [-crop_pad,
    crop_pad] file pixels, from ``numpy.random.default_rng([seed, epoch,
    row])``, and made whole in pixels of the resolution r (each component by
    :func:`whole_pixel_shift` with block H / r: the nearest multiple of the
    block, limited to the largest multiple within crop_pad). It moves coarse,
    target, condition and masks alike; uncovered pixels become background (-1
    in images, 0 in masks). An item at r is thus an r-pixel image moved by
    whole pixels, whether its pixels came from the cache or the file. With a
    256 px file and crop_pad 16, the shift is up to 16 file pixels at 256,
    128, 64 and 32 px, one of -16, 0, 16 at 16 px, and 0 at 8 and 4 px (16
    file pixels are half a pixel at 8 px). The shift is a function of (seed,
    epoch, row, resolution) only, so a run is reproducible whatever the
    number of workers or the order of the items.
    """

    def __init__(self, path, split: str = "train", generator_channels=DCE,
                 target_channels=("depth",), condition_channels=None, resolution: int | None = None,
                 augment: bool = True, crop_pad: int = 16, seed: int = 0,
                 cache_resolution: int | None = 64, cache_mb: float = 512):
        self.path = os.fspath(path)
        self.summary = summary = h5format.validate(self.path)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if crop_pad < 0:
            raise ValueError(f"crop_pad must be >= 0, got {crop_pad}")
        if cache_resolution is not None and cache_resolution < 1:
            raise ValueError(f"cache_resolution must be >= 1 or None, got {cache_resolution}")
        if not cache_mb >= 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.file_channels = tuple(summary["channels"])
        self.height, self.width = summary["height"], summary["width"]
        self.generator_channels = self._channels(generator_channels, "generator_channels")
        self.target_channels = self._channels(target_channels, "target_channels")
        self.condition_channels = (None if condition_channels is None else
                                   self._channels(condition_channels, "condition_channels"))
        self._g = [self.file_channels.index(c) for c in self.generator_channels]
        self._t = [self.file_channels.index(c) for c in self.target_channels]
        self._c = (None if self.condition_channels is None else
                   [self.generator_channels.index(c) for c in self.condition_channels])
        with h5py.File(self.path, "r") as f:
            split_of = f[h5format.SPLIT][()]
            wanted = SPLITS[split]
            self.indices = (np.arange(len(split_of)) if wanted is None
                            else np.flatnonzero(split_of == wanted))
            # Small per-sample metadata, (len, C) float64, read once rather than per item
            # (validate has checked that it is finite).
            self._physical = {f"{side}_{kind}": f[f"{side}_{kind}"][()][self.indices][:, cols]
                              for side, cols in (("coarse", self._g), ("target", self._t))
                              for kind in ("offset", "scale")}
            self._ids = list(f["sample_id"].asstr()[()])  # to name samples in errors
            if len(self.indices):
                # An all-background ground truth would be trained on and scored as
                # perfect (face MAE 0): refuse it before training, naming the sample.
                h5format.check_masks(self.path, f, self.indices, ids=self._ids)
        if len(self.indices) == 0:
            raise PairFileError(f"{self.path}: no samples in split {split!r} "
                                f"(train {summary['n_train']}, test {summary['n_test']})")
        self.split = split
        self.augment = bool(augment)
        self.crop_pad = int(crop_pad)
        self.seed = int(seed)
        # [epoch, resolution], shared with DataLoader workers (see module docstring).
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()
        self.set_resolution(self.height if resolution is None else resolution)
        # Every item is stacked as (images, then masks) channels: coarse, target, 2 masks.
        self._images = len(self._g) + len(self._t)
        self._fill = np.array([BACKGROUND] * self._images + [0.0, 0.0],
                              np.float32)[:, None, None]
        self.cache_resolution = _divisor_at_most(
            self.height, self.height if cache_resolution is None else int(cache_resolution))
        self._sample_bytes = (self._images + 2) * self.cache_resolution ** 2 * 4
        self.cache_capacity = min(len(self.indices), int(cache_mb * 2**20) // self._sample_bytes)
        self._cache = self._cached = None  # allocated by the first process that stores
        self._file = self._pid = self._datasets = None

    def _channels(self, names, argument: str) -> tuple:
        names = tuple(names)
        if not names:
            raise ValueError(f"{argument} is empty")
        missing = [c for c in names if c not in self.file_channels]
        if missing:
            raise PairFileError(
                f"{self.path}: {argument} asks for channel(s) {missing}, but the file holds "
                f"{list(self.file_channels)}" + (" (rebuild it with the photo's colour rendered "
                                                 "to use r, g, b)" if set(missing) & set("rgb")
                                                 else ""))
        if argument == "condition_channels":
            extra = [c for c in names if c not in self.generator_channels]
            if extra:
                raise ValueError(f"condition_channels {extra} are not among the "
                                 f"generator_channels {list(self.generator_channels)}")
        return names

    @property
    def epoch(self) -> int:
        return int(self._state[0])

    @property
    def resolution(self) -> int:
        return int(self._state[1])

    def set_epoch(self, epoch: int) -> None:
        """Epoch that seeds the augmentation; call before ``iter(loader)``."""
        self._state[0] = int(epoch)

    def set_resolution(self, resolution: int) -> None:
        """Side of the returned images (a divisor of the file's size);
        call before ``iter(loader)``."""
        _block(self.height, self.width, int(resolution))
        self._state[1] = int(resolution)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def sample_ids(self) -> list:
        """The ids of this split's samples, in item order."""
        return [self._ids[i] for i in self.indices]

    def _handle(self) -> dict:
        """{name: (dataset, skippable filters)} of the images and masks in
        this process's handle of the file (looking a dataset up by name
        costs more than checking its chunk)."""
        # A handle inherited through fork belongs to the parent: open our own.
        if self._file is None or self._pid != os.getpid():
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as error:
                raise PairFileError(f"{self.path}: cannot open the pair file again "
                                    f"({error})") from None
            self._pid = os.getpid()
            self._datasets = {}
            for name in h5format.IMAGE_DATASETS + h5format.MASK_DATASETS:
                d = self._file[name]
                self._datasets[name] = (d, h5format.skippable_filters(d) if d.chunks else 0)
        return self._datasets

    def close(self) -> None:
        """Close this process's file handle (reopened on the next item)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._pid = self._datasets = None

    def __getstate__(self):
        # Pickled copies (spawned workers) start with no handle and an empty cache.
        state = self.__dict__.copy()
        state["_file"] = state["_pid"] = state["_cache"] = state["_cached"] = None
        state["_datasets"] = None
        return state

    def cache_info(self) -> CacheInfo:
        """The state of this process's cache."""
        filled = 0 if self._cached is None else int(self._cached.sum())
        return CacheInfo(self.cache_resolution, self.cache_capacity, filled,
                         self.cache_capacity * self._sample_bytes)

    def preload(self, batch: int = 32) -> None:
        """Read every item that fits in the cache into this process's cache.
        Call it before the DataLoader starts its workers (the first
        ``iter(loader)``), so that forked workers begin with the whole cache
        rather than each filling its own over the first epochs."""
        for start in range(0, self.cache_capacity, batch):
            self._at_cache_resolution(range(start, min(start + batch, self.cache_capacity)))

    def shift(self, item: int, resolution: int | None = None) -> tuple:
        """The (rows, columns) translation, in file pixels, applied to item
        ``item`` in the current epoch at ``resolution`` (default: the
        current one); (0, 0) without augmentation."""
        r = self.resolution if resolution is None else resolution
        return self._shift(int(self.indices[item]), self.epoch, _block(self.height, self.width, r))

    def _shift(self, row: int, epoch: int, block: int) -> tuple:
        if not self.augment or self.crop_pad < block:
            return 0, 0  # no whole-pixel shift fits in crop_pad
        rng = np.random.default_rng([self.seed, epoch, row])
        drawn = rng.integers(-self.crop_pad, self.crop_pad, size=2, endpoint=True)
        return tuple(whole_pixel_shift(int(d), block, self.crop_pad) for d in drawn)

    def _read(self, items) -> np.ndarray:
        """(n, images + 2, H, W) float32 of the file's pixels of ``items``.
        A damaged chunk, a mask with values other than 0/1 or an empty target
        mask is a PairFileError naming the file, the dataset and the sample."""
        datasets = self._handle()
        g = len(self._g)
        stack = np.empty((len(items), self._images + 2, self.height, self.width), np.float32)
        for j, k in enumerate(items):
            row = int(self.indices[k])

            def read(name):
                d, skippable = datasets[name]
                return h5format.read_sample(self.path, d, row, self._ids, skippable)

            stack[j, :g] = h5format.dequantize(read("coarse")[self._g])
            stack[j, g:self._images] = h5format.dequantize(read("target")[self._t])
            for m, name in enumerate(h5format.MASK_DATASETS):
                mask = read(name)
                h5format.check_mask_values(self.path, name, mask[None], [row], self._ids)
                stack[j, self._images + m] = mask
        return stack

    def _at_cache_resolution(self, items) -> np.ndarray:
        """(n, images + 2, s, s) float32 of ``items`` pooled to the cache
        resolution s, from the cache where held, else read, pooled and stored
        (items below the capacity)."""
        s, capacity = self.cache_resolution, self.cache_capacity
        if self._cache is None and capacity:
            # np.empty reserves address space; pages are committed as samples are stored.
            self._cache = np.empty((capacity, self._images + 2, s, s), np.float32)
            self._cached = np.zeros(capacity, bool)
        held = [k < capacity and bool(self._cached[k]) for k in items]
        stack = np.empty((len(items), self._images + 2, s, s), np.float32)
        hits = [j for j, h in enumerate(held) if h]
        misses = [j for j, h in enumerate(held) if not h]
        if hits:
            stack[hits] = self._cache[[items[j] for j in hits]]
        if misses:
            read = _pool(torch.from_numpy(self._read([items[j] for j in misses])), s,
                         self._images)
            stack[misses] = read.numpy()
            for j in misses:
                if items[j] < capacity:
                    self._cache[items[j]] = stack[j]
                    self._cached[items[j]] = True
        return stack

    def fetch(self, items, resolution: int | None = None) -> list:
        """The items ``items`` (positions in this split) as a list of dicts at
        ``resolution`` (default: the current one; the shared state is not
        changed), for the current epoch: read, pooled and moved as one batch.
        The image tensors of an item are views of one array."""
        positions = range(len(self))
        items = [positions[int(k)] for k in items]  # IndexError past the end, negatives count back
        epoch, r = (int(v) for v in self._state.tolist())
        r = r if resolution is None else int(resolution)
        block = _block(self.height, self.width, r)
        stack = (self._at_cache_resolution(items) if self.cache_resolution % r == 0
                 else self._read(items))
        pooled = _pool(torch.from_numpy(stack), r, self._images).numpy()
        rows = [int(self.indices[k]) for k in items]
        shifts = [self._shift(row, epoch, block) for row in rows]
        for j, (dy, dx) in enumerate(shifts):
            if dy or dx:  # whole pixels of r: the same as moving before pooling
                pooled[j] = translate(pooled[j], dy // block, dx // block, self._fill)
        pooled = torch.from_numpy(pooled)
        g, t = len(self._g), len(self._t)
        out = []
        for j, (k, row) in enumerate(zip(items, rows)):
            x = pooled[j]
            item = {"coarse": x[:g], "target": x[g:g + t],
                    "coarse_mask": x[g + t:g + t + 1], "target_mask": x[g + t + 1:],
                    "index": row,
                    **{name: torch.from_numpy(v[k]) for name, v in self._physical.items()},
                    "shift": torch.tensor(shifts[j], dtype=torch.int64)}
            if self._c is not None:
                item["condition"] = item["coarse"][self._c]
            out.append(item)
        return out

    def __getitem__(self, item: int) -> dict:
        return self.fetch([item])[0]

    def __getitems__(self, items) -> list:
        return self.fetch(items)


def worker_error(error: Exception) -> Exception:
    """The error as a DataLoader worker raised it. torch re-raises a worker's
    exception in the main process as the same type whose message is the
    worker's whole traceback ("Caught PairFileError in DataLoader worker
    process 0. Original Traceback ..."); this returns the same type with the
    original one-line message (the traceback's last line), or ``error``
    itself when it did not come from a worker."""
    text = str(error)
    if not (text.startswith("Caught ") and "Original Traceback" in text):
        return error
    _, _, message = text.rstrip().splitlines()[-1].partition(": ")
    try:
        return type(error)(message)
    except TypeError:
        return error


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seeds numpy's and Python's global
    generators from the worker's torch seed (itself derived from the loader's
    generator), so any library randomness in a worker is reproducible too."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _distributed_ready() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def make_loader(dataset: Dataset, batch_size: int = 4, workers: int = 2, shuffle: bool = True,
                distributed: bool = False, seed: int = 0, drop_last: bool = True) -> DataLoader:
    """A DataLoader over ``dataset``: ``workers`` processes (persistent when
    > 0, each seeded by :func:`seed_worker`), pinned memory when CUDA is
    available, and the order drawn from a generator seeded with ``seed``.

    Under torch.distributed (initialized, e.g. by torchrun), or with
    ``distributed=True`` which then requires it, a ``DistributedSampler``
    gives each rank its own 1/world_size of the samples; call
    :func:`start_epoch` each epoch so both the sampler's order and the
    augmentation change."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size}, {workers}")
    sampler = None
    if distributed or _distributed_ready():
        if not _distributed_ready():
            raise RuntimeError("make_loader(distributed=True) needs torch.distributed to be "
                               "initialized first (run under torchrun and call "
                               "init_process_group)")
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
        sampler=sampler, num_workers=workers, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed), persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(), drop_last=drop_last)


def start_epoch(loader: DataLoader, epoch: int) -> None:
    """Set ``epoch`` on the loader's sampler (distributed order) and dataset
    (augmentation); call before ``iter(loader)``."""
    if hasattr(loader.sampler, "set_epoch"):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
