"""dce.gan.data against a small pair file written here with plain h5py in the
contract's layout (gan/h5format.py), with known values: coarse channel c of
sample n is a ramp in (row, column), the target is the coarse + 0.1 on the same
mask. Nothing of dce.geom is used."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from dce.gan import h5format as fmt
from dce.gan.data import (
    DCE,
    PairDataset,
    PairFileError,
    downsample,
    downsample_mask,
    make_loader,
    start_epoch,
    translate,
    whole_pixel_shift,
)

H = W = 32
SUBJECTS = ["s0", "s0", "s1", "s1", "s2", "s2"]  # s0, s1 train; s2 test
SPLIT = [0, 0, 0, 0, 1, 1]
ROWS, COLS = slice(6, 26), slice(5, 27)  # the valid (surface) rectangle
STEP = 1.0 / 65535 + 1e-6  # half a quantization step (1/65535) + float32 rounding


def ramp(n, c, i, j):
    """Known coarse value of channel c of sample n at pixel (row i, column j)."""
    return -0.6 + 0.02 * j + 0.015 * i + 0.1 * c + 0.03 * n


def write_pairs(path, channels=DCE, complete=True):
    N, C = len(SUBJECTS), len(channels)
    i, j = np.mgrid[0:H, 0:W]
    mask = np.zeros((H, W), np.uint8)
    mask[ROWS, COLS] = 1
    coarse = np.full((N, C, H, W), -1.0)
    for n in range(N):
        for c in range(C):
            coarse[n, c] = np.where(mask, ramp(n, c, i, j), -1.0)
    target = np.where(mask, coarse + 0.1, -1.0)
    strings = h5py.string_dtype()
    with h5py.File(path, "w") as f:
        f.attrs.update(format=fmt.FORMAT_NAME, format_version=fmt.FORMAT_VERSION,
                       complete=complete, n_samples=N, channels=json.dumps(list(channels)),
                       height=H, width=W, created_by="test", config=json.dumps({"test": 1}),
                       seed=0, test_fraction=1 / 3)
        for name, x in (("coarse", coarse), ("target", target)):
            f.create_dataset(name, data=fmt.quantize(x), chunks=(1, C, H, W), compression="gzip")
            f[name].attrs["quantization"] = fmt.QUANTIZATION
        for name in fmt.MASK_DATASETS:
            f.create_dataset(name, data=np.broadcast_to(mask, (N, H, W)))
        offset = 10.0 * np.arange(N)[:, None] + np.arange(C)[None]
        for side in ("coarse", "target"):
            f[side + "_offset"] = offset + (side == "target") * 0.5
            f[side + "_scale"] = 50.0 + np.arange(C)[None].repeat(N, 0)
            f[side + "_camera"] = np.zeros((N, 4, 3))
        f["pose"] = np.zeros((N, 3), np.float32)
        ids = [f"{s}/pose{n % 2}" for n, s in enumerate(SUBJECTS)]
        for name, values in (("sample_id", ids), ("pair_id", SUBJECTS), ("subject", SUBJECTS),
                             ("provenance", ["{}"] * N)):
            f.create_dataset(name, data=values, dtype=strings)
        fmt.write_text_digest(f, N)
        if complete:
            f["split"] = np.array(SPLIT, np.uint8)
    return path


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("data") / "pairs.h5")


def expected_coarse(n, channels, dy=0, dx=0):
    """(C, H, W) coarse of file row n moved by (dy, dx), background -1."""
    i, j = np.mgrid[0:H, 0:W]
    si, sj = i - dy, j - dx
    inside = (si >= ROWS.start) & (si < ROWS.stop) & (sj >= COLS.start) & (sj < COLS.stop)
    return np.stack([np.where(inside, ramp(n, DCE.index(c), si, sj), -1.0) for c in channels]), \
        inside


def test_split_selection(pairs):
    assert len(PairDataset(pairs, "train", augment=False)) == 4
    test = PairDataset(pairs, "test", augment=False)
    assert len(test) == 2 and [test[k]["index"] for k in range(2)] == [4, 5]
    assert len(PairDataset(pairs, "all", augment=False)) == 6
    with pytest.raises(ValueError, match="split"):
        PairDataset(pairs, "val")


def test_values_and_channels(pairs):
    ds = PairDataset(pairs, "all", generator_channels=("curvature",),
                     target_channels=("elevation", "depth"), condition_channels=("curvature",),
                     augment=False)
    for k in range(len(ds)):
        item = ds[k]
        n = item["index"]
        assert item["coarse"].shape == (1, H, W) and item["coarse"].dtype == torch.float32
        assert item["target"].shape == (2, H, W) and item["coarse_mask"].shape == (1, H, W)
        coarse, inside = expected_coarse(n, ("curvature",))
        np.testing.assert_allclose(item["coarse"].numpy(), coarse, atol=STEP, rtol=0)
        target, _ = expected_coarse(n, ("elevation", "depth"))
        np.testing.assert_allclose(item["target"].numpy(), np.where(inside, target + 0.1, -1),
                                   atol=STEP, rtol=0)
        assert item["coarse"].min() >= -1 and item["target"].max() <= 1
        np.testing.assert_array_equal(item["target_mask"][0].numpy(), inside)
        torch.testing.assert_close(item["condition"], item["coarse"])
        # offsets follow the selected channels: elevation (2), depth (0); target has +0.5
        np.testing.assert_array_equal(item["target_offset"].numpy(), [10 * n + 2.5, 10 * n + 0.5])
        np.testing.assert_array_equal(item["target_scale"].numpy(), [52.0, 50.0])
        np.testing.assert_array_equal(item["coarse_offset"].numpy(), [10 * n + 1])


def test_augmentation_moves_everything_alike(pairs):
    ds = PairDataset(pairs, "train", generator_channels=DCE, target_channels=("depth",),
                     crop_pad=5, seed=3)
    shifts = []
    for epoch in range(6):
        ds.set_epoch(epoch)
        for k in range(len(ds)):
            item = ds[k]
            dy, dx = item["shift"].tolist()
            assert (dy, dx) == ds.shift(k) and max(abs(dy), abs(dx)) <= 5
            shifts.append((dy, dx))
            coarse, inside = expected_coarse(item["index"], DCE, dy, dx)
            # ramp moved by (dy, dx); pixels moved in from outside are background
            np.testing.assert_allclose(item["coarse"].numpy(), coarse, atol=STEP, rtol=0)
            np.testing.assert_allclose(item["target"][0].numpy(),
                                       np.where(inside, coarse[0] + 0.1, -1), atol=STEP, rtol=0)
            for m in ("coarse_mask", "target_mask"):
                np.testing.assert_array_equal(item[m][0].numpy(), inside)
    shifts = np.array(shifts)
    assert shifts.min() < 0 < shifts.max() and len({tuple(s) for s in shifts}) > 10


def test_augmentation_is_deterministic(pairs):
    a, b = (PairDataset(pairs, "train", seed=7) for _ in range(2))
    other = PairDataset(pairs, "train", seed=8)
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        other.set_epoch(epoch)
        for k in range(len(a)):
            torch.testing.assert_close(a[k]["coarse"], b[k]["coarse"], rtol=0, atol=0)
    shifts = lambda ds: [ds.shift(k) for k in range(len(ds))]  # noqa: E731
    a.set_epoch(0)
    first = shifts(a)
    a.set_epoch(1)
    assert shifts(a) != first and shifts(other) != shifts(a)
    off = PairDataset(pairs, "train", augment=False)
    assert all(off[k]["shift"].tolist() == [0, 0] for k in range(len(off)))


def test_downsample_block_means():
    x = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    # blocks [[0,1],[4,5]] -> 2.5, [[2,3],[6,7]] -> 4.5, [[8,9],[12,13]] -> 10.5, ...
    torch.testing.assert_close(downsample(x, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    torch.testing.assert_close(downsample(x, 1), torch.tensor([[[[7.5]]]]))
    torch.testing.assert_close(downsample(x, 4), x)
    # (C, H, W) and (H, W) inputs; the same as repeated 2x2 pooling
    y = torch.rand(3, 16, 16)
    torch.testing.assert_close(downsample(y, 4), downsample(downsample(y, 8), 4))
    assert downsample(y[0], 2).shape == (2, 2)
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1.0]])[None]
    # a pooled pixel is valid only when its whole block is
    torch.testing.assert_close(downsample_mask(m, 2), torch.tensor([[[1, 0], [0, 1.0]]]))
    with pytest.raises(ValueError, match="32x32"):
        downsample(torch.zeros(32, 32), 3)


def block_mean(x, r):
    """(..., H, W) numpy -> (..., r, r) block means, by reshaping (a second
    method next to torch's pooling)."""
    b = x.shape[-1] // r
    return x.reshape(*x.shape[:-2], r, b, r, b).mean(axis=(-3, -1))


def nearest_whole_shift(drawn, block, crop_pad):
    """The documented rounding, by search: the multiple of ``block`` within
    ``crop_pad`` nearest to ``drawn``, ties toward zero."""
    candidates = [m * block for m in range(-crop_pad // block - 1, crop_pad // block + 2)
                  if abs(m * block) <= crop_pad]
    return min(candidates, key=lambda c: (abs(drawn - c), abs(c)))


def test_whole_pixel_shift_by_hand():
    assert whole_pixel_shift(16, 64, 16) == 0  # a quarter pixel at 4 px of 256
    assert whole_pixel_shift(16, 32, 16) == 0  # half a pixel at 8 px: tie, toward zero
    assert (whole_pixel_shift(8, 16, 16), whole_pixel_shift(9, 16, 16)) == (0, 16)
    assert (whole_pixel_shift(-9, 16, 16), whole_pixel_shift(-7, 16, 16)) == (-16, 0)
    assert whole_pixel_shift(5, 8, 5) == 0  # 8 would exceed crop_pad
    assert (whole_pixel_shift(15, 4, 16), whole_pixel_shift(-3, 1, 16)) == (16, -3)


def test_dataset_resolution(pairs):
    # Since the shift is made whole in pixels of the resolution, an 8 px item
    # (block 4) is the 32 px image moved by a multiple of 4 px and then
    # block-averaged, no longer the pooled full-resolution item moved by any
    # file-pixel shift. Expected values: the analytic ramp, moved and averaged
    # with numpy.
    low = PairDataset(pairs, "train", crop_pad=6, seed=1, resolution=8)
    for epoch in range(3):
        low.set_epoch(epoch)
        for k in range(len(low)):
            item = low[k]
            dy, dx = item["shift"].tolist()
            assert dy % 4 == 0 and dx % 4 == 0 and max(abs(dy), abs(dx)) <= 4
            coarse, inside = expected_coarse(item["index"], DCE, dy, dx)
            np.testing.assert_allclose(item["coarse"].numpy(), block_mean(coarse, 8),
                                       atol=STEP, rtol=0)
            np.testing.assert_array_equal(item["target_mask"][0].numpy(),
                                          block_mean(inside, 8) == 1)
    low.set_resolution(4)
    assert low[0]["target"].shape == (1, 4, 4)
    with pytest.raises(ValueError, match="resolution|3x3"):
        low.set_resolution(3)


def test_shift_is_whole_pixels_within_crop_pad(pairs):
    ds = PairDataset(pairs, "all", crop_pad=9, seed=5)
    for epoch in range(4):
        ds.set_epoch(epoch)
        for r in (32, 16, 8, 4, 2):
            block = 32 // r
            ds.set_resolution(r)
            for k in range(len(ds)):
                shift = ds.shift(k)
                drawn = np.random.default_rng([5, epoch, int(ds.indices[k])]).integers(
                    -9, 9, size=2, endpoint=True)
                assert shift == tuple(nearest_whole_shift(int(d), block, 9) for d in drawn)
                assert all(s % block == 0 and abs(s) <= 9 for s in shift)
                if r == 32:
                    assert shift == tuple(drawn)
            if r == 2:  # block 16 > crop_pad: no whole-pixel shift fits
                assert all(ds.shift(k) == (0, 0) for k in range(len(ds)))


def test_pooling_in_steps():
    """Masks pooled in two steps with the all-valid rule equal the masks pooled
    once, exactly; images agree to float rounding; a shift by whole blocks
    commutes with pooling."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = torch.from_numpy((rng.random((2, 1, 64, 64)) > rng.uniform(0, 0.05)).astype(np.float32))
        for s, r in ((16, 4), (32, 8), (8, 2), (16, 16)):
            twice = downsample_mask(downsample_mask(m, s), r)
            torch.testing.assert_close(twice, downsample_mask(m, r), rtol=0, atol=0)
            np.testing.assert_array_equal(twice.numpy(), block_mean(m.numpy(), r) == 1)
    x = torch.from_numpy(rng.uniform(-1, 1, (3, 64, 64)).astype(np.float32))
    torch.testing.assert_close(downsample(downsample(x, 16), 4), downsample(x, 4))
    moved = translate(x.numpy(), 8, -12, -1.0)  # 2 and -3 pixels at 16 px (block 4)
    torch.testing.assert_close(downsample(torch.from_numpy(moved), 16),
                               torch.from_numpy(translate(downsample(x, 16).numpy(), 2, -3, -1.0)))


def items_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if torch.is_tensor(a[key]):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_cache_equals_uncached(pairs):
    kwargs = dict(generator_channels=DCE, target_channels=("depth", "elevation"),
                  condition_channels=("depth",), crop_pad=7, seed=4, cache_resolution=16)
    cached = PairDataset(pairs, "all", **kwargs)
    uncached = PairDataset(pairs, "all", cache_mb=0, **kwargs)
    assert cached.cache_info().resolution == 16 and uncached.cache_info().capacity == 0
    for epoch in range(3):
        for ds in (cached, uncached):
            ds.set_epoch(epoch)
        for r in (32, 16, 8, 4, 2):  # 32: from the file's pixels; the others from 16 px
            for ds in (cached, uncached):
                ds.set_resolution(r)
            order = [3, 0, 5, 1, 4, 2]
            batch = cached.__getitems__(order)  # the DataLoader's batch-level fetch
            for j, k in enumerate(order):
                reference = uncached[k]
                items_equal(cached[k], reference)
                items_equal(batch[j], reference)
                assert reference["coarse"].shape == (3, r, r)
        assert cached.cache_info().filled == 6
    assert uncached.cache_info().filled == 0
    # another intermediate size pools differently by float rounding only
    other = PairDataset(pairs, "all", resolution=4, cache_resolution=8, **{
        k: v for k, v in kwargs.items() if k != "cache_resolution"})
    cached.set_resolution(4)
    for k in range(6):
        torch.testing.assert_close(other[k]["coarse"], cached[k]["coarse"], rtol=0, atol=1e-6)


def test_cache_budget(pairs):
    per_sample = (3 + 1 + 2) * 16 * 16 * 4  # DCE + depth + 2 masks, float32, 16 px
    budget_mb = 2.5 * per_sample / 2**20
    ds = PairDataset(pairs, "train", crop_pad=3, seed=2, resolution=8, cache_resolution=16,
                     cache_mb=budget_mb)
    uncached = PairDataset(pairs, "train", crop_pad=3, seed=2, resolution=8,
                           cache_resolution=16, cache_mb=0)
    for epoch in range(2):
        ds.set_epoch(epoch)
        uncached.set_epoch(epoch)
        for k in range(len(ds)):
            items_equal(ds[k], uncached[k])  # items 2, 3 are beyond the budget: read each time
    info = ds.cache_info()
    assert (info.capacity, info.filled, info.nbytes) == (2, 2, 2 * per_sample)
    assert ds._cache.nbytes <= budget_mb * 2**20
    fresh = PairDataset(pairs, "train", cache_resolution=16, cache_mb=budget_mb)
    fresh.preload()
    assert fresh.cache_info().filled == 2
    with pytest.raises(ValueError, match="cache_mb"):
        PairDataset(pairs, cache_mb=-1)
    with pytest.raises(ValueError, match="cache_resolution"):
        PairDataset(pairs, cache_resolution=0)
    # the largest divisor of the file's 32 px that is at most the option
    assert [PairDataset(pairs, cache_resolution=c).cache_resolution
            for c in (64, 12, None, 1)] == [32, 8, 32, 1]


def test_loader_with_workers_opens_lazily(pairs):
    ds = PairDataset(pairs, "train", crop_pad=4, seed=2)
    loader = make_loader(ds, batch_size=2, workers=2, seed=0, drop_last=False)
    assert loader.persistent_workers and not isinstance(loader.sampler,
                                                        torch.utils.data.DistributedSampler)
    for epoch in range(2):
        start_epoch(loader, epoch)
        seen = []
        for batch in loader:
            assert batch["coarse"].shape == (2, 3, H, W) and batch["target"].shape == (2, 1, H, W)
            for b in range(2):
                k = int(np.flatnonzero(ds.indices == int(batch["index"][b]))[0])
                # the workers used the epoch set in the parent (shared state)
                assert tuple(batch["shift"][b].tolist()) == ds.shift(k)
                torch.testing.assert_close(batch["coarse"][b], ds[k]["coarse"])
            seen += batch["index"].tolist()
        assert sorted(seen) == [0, 1, 2, 3]
        ds.close()
        assert ds._file is None  # the parent's reads above reopened it; workers never shared it
    # without parent reads, only the workers open the file
    fresh = PairDataset(pairs, "train")
    list(make_loader(fresh, batch_size=2, workers=2))
    assert fresh._file is None


def test_loader_distributed(pairs, tmp_path):
    ds = PairDataset(pairs, "all", augment=False)
    with pytest.raises(RuntimeError, match="torch.distributed"):
        make_loader(ds, distributed=True, workers=0)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'rdv'}",
                                         rank=0, world_size=1)
    try:
        loader = make_loader(ds, batch_size=3, workers=0)
        assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
        start_epoch(loader, 1)
        assert sorted(sum((b["index"].tolist() for b in loader), [])) == list(range(6))
    finally:
        torch.distributed.destroy_process_group()


def test_bad_files(pairs, tmp_path):
    incomplete = write_pairs(tmp_path / "partial.h5", complete=False)
    with pytest.raises(PairFileError, match="partial.h5.*incomplete"):
        PairDataset(incomplete)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(pairs.read_bytes()[:3000])
    with pytest.raises(PairFileError, match="truncated.h5"):
        PairDataset(truncated)
    with pytest.raises(PairFileError, match="missing.h5"):
        PairDataset(tmp_path / "missing.h5")


def test_rgb_on_dce_file(pairs):
    with pytest.raises(PairFileError, match=r"pairs.h5.*\['r', 'g', 'b'\].*colour"):
        PairDataset(pairs, generator_channels=DCE + ("r", "g", "b"))
    with pytest.raises(PairFileError, match="pairs.h5.*'normal'"):
        PairDataset(pairs, target_channels=("normal",))


def test_import_is_lean():
    code = ("import sys, dce.gan.data; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('igl', 'pymeshlab', 'numba', 'face_alignment', 'scipy') or m.startswith('dce.geom')];"
            " print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
