"""Samples per second that dce.gan.data.make_loader delivers (issue 5: the
loader must deliver at least 5x what training consumes).

A pair file in the contract's layout (gan/h5format.py: uint16 images, one
sample per chunk, gzip 4 + shuffle as dce-build writes by default) is written
to a temporary folder: smooth random DCE images (ramps and waves inside an
elliptic face mask, so that they compress like rendered ones). Each row
iterates whole epochs at batch 4 after a warm-up epoch (worker start-up is
reported apart).

    python benchmarks/loader_throughput.py [--samples 200] [--size 256] [--quick]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed  # noqa: E402
from dce.gan import h5format as fmt  # noqa: E402
from dce.gan.data import DCE, PairDataset, make_loader  # noqa: E402


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per row")
    ap.add_argument("--quick", action="store_true", help="60 samples, 1 timed epoch")
    args = ap.parse_args()
    if args.quick:
        args.samples, args.repeats = 60, 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.h5"
        t0 = time.perf_counter()
        write_pairs(path, args.samples, args.size)
        print(f"pair file: {args.samples} samples, 3 x {args.size}^2 DCE, "
              f"{path.stat().st_size / 2**20:.1f} MiB, written in {time.perf_counter() - t0:.1f} s")
        print(f"\n{'workers':>7} {'augment':>7} {'res':>4} {'start-up s':>10} "
              f"{'samples/s best':>14} {'median':>8}")
        for workers in (0, 2):
            for augment, resolution in ((False, args.size), (True, args.size),
                                        (True, args.size // 4)):
                ds = PairDataset(path, "all", generator_channels=DCE, target_channels=DCE,
                                 augment=augment, resolution=resolution)
                loader = make_loader(ds, batch_size=args.batch, workers=workers)
                n = len(loader) * args.batch
                t0 = time.perf_counter()
                next(iter(loader))
                startup = time.perf_counter() - t0

                def epoch():
                    for _ in loader:
                        pass

                t = timed(epoch, args.repeats)
                print(f"{workers:>7} {str(augment):>7} {resolution:>4} {startup:>10.2f} "
                      f"{n / t.min():>14.1f} {n / np.median(t):>8.1f}")
        print("\nrows: one sample = coarse (3 ch) + target (3 ch) + 2 masks, float32; "
              f"batch {args.batch}; res < {args.size} = average-pooled per item")


if __name__ == "__main__":
    main()
