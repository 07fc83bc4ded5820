"""Training data: a torch ``Dataset`` over a DCE pair file (``h5format``), the
DataLoader around it, and the average pooling that makes the images of the
lower progressive stages.

Tensors are float32 in [-1, 1] with the background at -1 (the contract's
``dequantize``); masks are float 0/1. Shapes are (C, r, r) per item and
(N, C, r, r) per batch, r = ``resolution``.

Processes. The dataset holds only the file's path, the selected row
indices and their small offset/scale rows; each process opens the HDF5 file
itself, read-only, on its first ``__getitem__`` (h5py handles can neither be
pickled nor shared across a fork). Epoch and resolution live in a shared-memory tensor, so
``set_epoch``/``set_resolution`` reach DataLoader workers, persistent ones
included, as long as they are called before the next ``iter(loader)``
(batches already prefetched keep the old values). Inside an epoch, change the
resolution by pooling the batch with :func:`downsample` instead.
"""
from __future__ import annotations

import os
import random

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from . import h5format
from .h5format import PairFileError

DCE = ("depth", "curvature", "elevation")
SPLITS = {"train": h5format.TRAIN, "test": h5format.TEST, "all": None}
BACKGROUND = -1.0  # value of images outside the surface; masks use 0
# The paper's images are 8-bit with background 0, so a pixel is surface when it
# is at least one 8-bit step above the background value.
FOREGROUND_ABOVE = BACKGROUND + 2.0 / 255.0


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
    error there). Same float dtype as ``mask``."""
    return (downsample(mask, resolution) >= 1.0).to(mask.dtype)


def translate(x: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """``x`` (..., H, W) moved by ``dy`` rows down and ``dx`` columns right
    (out[i, j] = x[i - dy, j - dx]); pixels coming from outside are ``fill``.
    The same as padding by max(|dy|, |dx|) with ``fill`` and cropping an H x W
    window."""
    H, W = x.shape[-2:]
    out = np.full_like(x, fill)
    if abs(dy) < H and abs(dx) < W:
        out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
            x[..., max(-dy, 0):H - max(dy, 0), max(-dx, 0):W - max(dx, 0)]
    return out


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

    Items
    -----
    ``coarse`` (Cg, r, r), ``target`` (Ct, r, r), ``coarse_mask`` and
    ``target_mask`` (1, r, r) float32; ``condition`` (Cc, r, r) when asked;
    ``index`` the sample's row in the file; ``coarse_offset``/``coarse_scale``
    (Cg,) and ``target_offset``/``target_scale`` (Ct,) float64 with physical =
    offset + scale * x (depth in mm); ``shift`` (2,) int64, the (rows, columns)
    translation that was applied.

    Augmentation: one integer shift (dy, dx), each uniform in [-crop_pad,
    crop_pad], moves coarse, target, condition and masks alike; uncovered
    pixels become background (-1 in images, 0 in masks). The shift is drawn
    from ``numpy.random.default_rng([seed, epoch, index])``, so a run is
    reproducible whatever the number of workers or the order of the items.
    """

    def __init__(self, path, split: str = "train", generator_channels=DCE,
                 target_channels=("depth",), condition_channels=None, resolution: int | None = None,
                 augment: bool = True, crop_pad: int = 16, seed: int = 0):
        self.path = os.fspath(path)
        summary = h5format.validate(self.path)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if crop_pad < 0:
            raise ValueError(f"crop_pad must be >= 0, got {crop_pad}")
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
            # Small per-sample metadata, (len, C) float64, read once rather than per item.
            self._physical = {f"{side}_{kind}": f[f"{side}_{kind}"][()][self.indices][:, cols]
                              for side, cols in (("coarse", self._g), ("target", self._t))
                              for kind in ("offset", "scale")}
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
        self._file = None
        self._pid = None

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

    def _handle(self) -> h5py.File:
        # A handle inherited through fork belongs to the parent: open our own.
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        """Close this process's file handle (reopened on the next item)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._pid = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = state["_pid"] = None
        return state

    def shift(self, item: int) -> tuple:
        """The (rows, columns) translation applied to item ``item`` in the
        current epoch; (0, 0) without augmentation."""
        if not self.augment or self.crop_pad == 0:
            return 0, 0
        rng = np.random.default_rng([self.seed, self.epoch, int(self.indices[item])])
        dy, dx = rng.integers(-self.crop_pad, self.crop_pad, size=2, endpoint=True)
        return int(dy), int(dx)

    def __getitem__(self, item: int) -> dict:
        row = int(self.indices[item])
        f = self._handle()
        coarse = h5format.dequantize(f["coarse"][row][self._g])
        target = h5format.dequantize(f["target"][row][self._t])
        masks = np.stack([f["coarse_mask"][row], f["target_mask"][row]])[:, None]
        dy, dx = self.shift(item)
        if dy or dx:
            coarse = translate(coarse, dy, dx, BACKGROUND)
            target = translate(target, dy, dx, BACKGROUND)
            masks = translate(masks, dy, dx, 0)
        r = self.resolution
        coarse = downsample(torch.from_numpy(coarse), r)
        masks = downsample_mask(torch.from_numpy(masks.astype(np.float32)), r)
        out = {
            "coarse": coarse,
            "target": downsample(torch.from_numpy(target), r),
            "coarse_mask": masks[0], "target_mask": masks[1],
            "index": row,
            **{name: torch.from_numpy(values[item]) for name, values in self._physical.items()},
            "shift": torch.tensor([dy, dx], dtype=torch.int64),
        }
        if self._c is not None:
            out["condition"] = coarse[self._c]
        return out


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
