"""Samples per second that the training data pipeline (dce.gan.data.PairDataset
in a DataLoader) delivers per resolution, next to the images per second that a
training step consumes there (issue 5: the loader must deliver at least 5x
what training consumes).

For each resolution r in 4, 8, 16, 32, 64, 256 of a 256 px pair file, with
augmentation (crop_pad 16), coarse DCE + target DCE, batch 4, shuffled:

- epoch 1: a fresh dataset, so every sample is read from the file (HDF5
  read + gzip decompression + pooling; the file itself sits in the OS page
  cache after the first row, so this is not a cold-disk figure), worker
  start-up included;
- later epochs: epochs 2.. of the same loader (best and median of
  ``--repeats``): at r <= 64 (the cache resolution) from the in-memory
  cache of 64 px images, at 256 px from the file again;
- with 0 workers (in-process), with 2 workers each filling its own cache
  (``lazy``: a worker caches the samples it is handed, so with shuffling a
  worker's cache fills over the first epochs), and with 2 workers forked
  after ``PairDataset.preload()`` in the parent (``preload``; its epoch-1
  figure counts the preload and then an epoch from the cache).

Training rates are measured here with benchmarks/train_throughput.py's step
(D step with gradient penalty + G step, DCE|D|DCE, batch 4) up to
``--train-max`` px; above it the rate at ``--train-max`` is an upper bound
(larger images train slower), so the ratio printed there is a lower bound.
The ratio column is later-epoch rate / training rate; ``>=5x`` marks where
the loader meets the issue's bar. With 0 workers loading runs in the
training process: at a ratio q it adds 1/q of the step time.

    python benchmarks/loader_throughput.py [--data PAIRS.h5] [--samples 200]
        [--repeats 3] [--train-max 64] [--quick]

Without --data a pair file of --samples smooth random 256 px samples (gzip 4
+ shuffle, one sample per chunk, as dce-build writes) is written to a
temporary folder; with --data, its first --samples samples are used.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed  # noqa: E402
from train_throughput import make_step  # noqa: E402

from dce.gan import h5format as fmt  # noqa: E402
from dce.gan.configs import get_config  # noqa: E402
from dce.gan.data import DCE, PairDataset, make_loader  # noqa: E402
from dce.gan.networks import Discriminator, Generator  # noqa: E402

RESOLUTIONS = (4, 8, 16, 32, 64, 256)


def smooth_images(rng, n: int, C: int, size: int) -> tuple:
    """(n, C, size, size) values in [-1, 1] with background -1, and the masks."""
    y, x = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    images = np.full((n, C, size, size), -1.0, np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for k in range(n):
        a, b = rng.uniform(0.6, 0.9, 2)
        mask = (x / a) ** 2 + (y / b) ** 2 < 1
        masks[k] = mask
        for c in range(C):
            f = rng.uniform(1, 6, 2)
            v = 0.5 * np.sin(f[0] * x + rng.uniform(0, 6)) * np.cos(f[1] * y) + 0.3 * x * y
            images[k, c][mask] = np.clip(v + 0.002 * rng.standard_normal(v.shape), -1, 1)[mask]
    return images, masks


def write_pairs(path, n: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    C = len(DCE)
    subjects = [f"s{k // 5:04d}" for k in range(n)]
    split_of = fmt.split_subjects(subjects, seed)
    gzip = dict(compression="gzip", compression_opts=4, shuffle=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(format=fmt.FORMAT_NAME, format_version=fmt.FORMAT_VERSION, complete=True,
                       n_samples=n, channels=json.dumps(list(DCE)), height=size, width=size,
                       created_by="loader_throughput", config="{}", seed=seed,
                       test_fraction=fmt.DEFAULT_TEST_FRACTION)
        for name in fmt.IMAGE_DATASETS:
            f.create_dataset(name, (n, C, size, size), np.uint16, chunks=(1, C, size, size),
                             **gzip).attrs["quantization"] = fmt.QUANTIZATION
        for name in fmt.MASK_DATASETS:
            f.create_dataset(name, (n, size, size), np.uint8, chunks=(1, size, size), **gzip)
        for start in range(0, n, 50):  # in blocks, to keep memory small
            m = min(50, n - start)
            images, masks = smooth_images(rng, m, C, size)
            for name in fmt.IMAGE_DATASETS:
                f[name][start:start + m] = fmt.quantize(images)
            for name in fmt.MASK_DATASETS:
                f[name][start:start + m] = masks
        for side in ("coarse", "target"):
            f[side + "_offset"] = np.zeros((n, C))
            f[side + "_scale"] = np.ones((n, C))
            f[side + "_camera"] = np.zeros((n, 4, 3))
        f["pose"] = np.zeros((n, 3), np.float32)
        strings = h5py.string_dtype()
        for name, values in (("sample_id", [f"{s}/pose{k % 5}" for k, s in enumerate(subjects)]),
                             ("pair_id", subjects), ("subject", subjects),
                             ("provenance", ["{}"] * n)):
            f.create_dataset(name, data=values, dtype=strings)
        f["split"] = np.array([split_of[s] for s in subjects], np.uint8)


def training_rates(resolutions, batch: int, repeats: int, config: str = "DCE|D|DCE") -> dict:
    """{r: images/s of one training iteration at r} on this machine's CPU (the
    best of ``repeats``)."""
    cfg = get_config(config)
    top = max(resolutions)
    rates = {}
    for r in resolutions:
        G = Generator(len(cfg.generator_in), len(cfg.generator_out), top)
        D = Discriminator(cfg.discriminator_channels, top)
        step = make_step(G, D, cfg, r, batch, torch.device("cpu"), None)
        rates[r] = batch / float(timed(step, repeats).min())  # the best: a conservative ratio
    return rates


def loader_rates(dataset, workers: int, preload: bool, batch: int, repeats: int) -> tuple:
    """(samples/s of epoch 1, array of samples/s of the later epochs) of a
    shuffled, augmented loader over ``dataset`` (a PairDataset or a Subset of one)."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    loader = make_loader(dataset, batch_size=batch, workers=workers, seed=0)
    n = len(loader) * batch
    epoch = [0]

    def one_epoch():
        base.set_epoch(epoch[0])
        epoch[0] += 1
        for _ in loader:
            pass

    t0 = time.perf_counter()
    if preload:
        base.preload()  # in this process, before the first iter() forks the workers
    one_epoch()
    first = n / (time.perf_counter() - t0)
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        one_epoch()
        seconds.append(time.perf_counter() - t0)
    return first, n / np.array(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="a 256 px pair file (default: write one)")
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timed later epochs per row")
    ap.add_argument("--train-max", type=int, default=64,
                    help="largest resolution whose training rate is measured")
    ap.add_argument("--quick", action="store_true", help="60 samples, 2 later epochs, "
                    "training rates up to 16 px")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.repeats, args.train_max = 60, 2, 16
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.data
        if path is None:
            path = Path(tmp) / "pairs.h5"
            t0 = time.perf_counter()
            write_pairs(path, args.samples, 256)
            print(f"pair file: {args.samples} samples written in "
                  f"{time.perf_counter() - t0:.1f} s")
        with h5py.File(path, "r") as f:
            size, total = int(f.attrs["height"]), int(f.attrs["n_samples"])
        if size != 256:
            raise SystemExit(f"{path}: images are {size} px; this benchmark needs 256 px")
        n = min(args.samples, total)
        print(f"{path}: {n} of {total} samples, 3 x {size}^2 DCE, "
              f"{Path(path).stat().st_size / 2**20:.0f} MiB")
        # Only the first n samples are used: a budget of n samples keeps preload() to them.
        probe = PairDataset(path, "all", generator_channels=DCE, target_channels=DCE).cache_info()
        cache_mb = (n + 0.5) * probe.nbytes / probe.capacity / 2**20
        trained = [r for r in RESOLUTIONS if r <= args.train_max]
        t0 = time.perf_counter()
        train = training_rates(trained, args.batch, 3 if args.quick else 5)
        print(f"training rates measured in {time.perf_counter() - t0:.0f} s "
              f"({torch.get_num_threads()} threads)\n")
        print(f"{'res':>4} {'train img/s':>11} {'workers':>7} {'cache':>7} {'epoch 1':>8} "
              f"{'later best':>10} {'median':>8} {'ratio':>7}")
        for r in RESOLUTIONS:
            rate = train.get(r, train[max(trained)])
            bound = "" if r in train else "<"
            modes = [(0, False), (2, False)] + ([(2, True)] if probe.resolution % r == 0 else [])
            for workers, preload in modes:
                ds = PairDataset(path, "all", generator_channels=DCE, target_channels=DCE,
                                 resolution=r, crop_pad=16, cache_mb=cache_mb)
                dataset = ds if n == total else Subset(ds, range(n))
                first, later = loader_rates(dataset, workers, preload, args.batch,
                                            args.repeats)
                ratio = np.median(later) / rate
                cache = "-" if ds.cache_resolution % r else ("preload" if preload else "lazy")
                print(f"{r:>4} {bound + format(rate, '.1f'):>11} {workers:>7} {cache:>7} "
                      f"{first:>8.0f} {later.max():>10.0f} {np.median(later):>8.0f} "
                      f"{(bound and '>') + format(ratio, '.1f'):>6}x"
                      f"{'  >=5x' if ratio >= 5 else ''}")
        print(f"\nsamples/s; one sample = coarse (3 ch) + target (3 ch) + 2 masks at r px, "
              f"float32; batch {args.batch}; ratio = later-epoch median / training rate; "
              f"cache resolution {ds.cache_resolution} px, {cache_mb:.0f} MiB for {n} samples")


if __name__ == "__main__":
    main()
