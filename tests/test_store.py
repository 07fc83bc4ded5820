"""The DCE pair file: writer (dce.geom.store) and reader (dce.gan.h5format).

Samples are synthetic records with analytic depth maps; every check compares
against the written arrays or hand-derived bounds, never against the code
under test."""
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from PIL import Image

from dce.gan import h5format as fmt
from dce.geom import store
from dce.geom.dataset import Sample

H, W = 24, 32  # deliberately not square: catches transposed images
DCE = ("depth", "curvature", "elevation")
CONFIG = {"source": "test", "poses": 2, "size": [H, W], "seed": 7}


DEPTH_OFFSET, DEPTH_SCALE = 40.0, 50.0  # mm: physical = 40 + 50 * x


def sphere_depth(radius: float, cx: float, cy: float):
    """View depth (mm, nearer = smaller) of a sphere of ``radius`` mm seen
    orthographically at 1 px = 1 mm, centre at pixel (cx, cy), its front at
    depth 20 mm; and its silhouette mask."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    r2 = (x - cx) ** 2 + (y - cy) ** 2
    mask = r2 < radius ** 2
    depth = 20.0 + radius - np.sqrt(np.where(mask, radius ** 2 - r2, 0.0))
    return depth, mask


def make_sample(pair: int, pose: int, channels=DCE) -> Sample:
    """Pair ``pair`` (subject pair // 2), pose ``pose``: a sphere whose radius
    and centre depend on both, depth normalized by (40 mm, 50 mm); the other
    channels are smooth patterns in [-1, 1]."""
    C = len(channels)
    sides = []
    for side in range(2):
        depth, mask = sphere_depth(8.0 + 0.5 * pair + side, 15.0 + pose, 11.0 + 0.25 * side)
        img = np.empty((C, H, W), np.float32)
        img[0] = (depth - DEPTH_OFFSET) / DEPTH_SCALE
        y, x = np.mgrid[0:H, 0:W]
        for c in range(1, C):
            img[c] = np.sin(0.3 * c * x + 0.2 * y + pair + pose)
        img[:, ~mask] = -1.0
        sides.append((img, mask))
    rng = np.random.default_rng(1000 * pair + pose)
    offset = np.r_[DEPTH_OFFSET, np.zeros(C - 1)]
    scale = np.r_[DEPTH_SCALE, 0.1 * np.arange(1, C)]
    return Sample(
        sample_id=f"p{pair:03d}/pose{pose}", pair_id=f"p{pair:03d}", subject=f"s{pair // 2:02d}",
        coarse=sides[0][0], target=sides[1][0], coarse_mask=sides[0][1], target_mask=sides[1][1],
        channels=tuple(channels), coarse_offset=offset, coarse_scale=scale,
        target_offset=offset + 1.0, target_scale=scale * 2.0,
        pose=np.array([10.0 * pose, -5.0 * pose, 2.5 * pose]),
        coarse_camera=rng.normal(size=(4, 3)), target_camera=rng.normal(size=(4, 3)),
        source={"scan": f"/data/p{pair:03d}.abs.gz", "photo": f"/data/p{pair:03d}.ppm"})


def all_samples(n_pairs=6, n_poses=2, channels=DCE):
    return [make_sample(p, q, channels) for p in range(n_pairs) for q in range(n_poses)]


def build(path, samples, seed=3, channels=DCE, **kw):
    with store.PairWriter(path, channels, H, W, CONFIG, **kw) as w:
        for s in samples:
            w.append(s)
        return w.finalize(seed)


def assert_same_file(a, b):
    """Dataset by dataset and root attribute by attribute equality."""
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert sorted(fa) == sorted(fb)
        for name in fa:
            x, y = fa[name][()], fb[name][()]
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert np.array_equal(x, y), name
        assert dict(fa.attrs) == dict(fb.attrs)


def test_quantization_bound():
    x = np.concatenate([np.linspace(-1, 1, 200001), [-1.0, 1.0, 0.5, -0.25]])
    q = fmt.quantize(x)
    assert q.dtype == np.uint16 and q[-4] == 0 and q[-3] == 65535 and fmt.quantize(1.0) == 65535
    err = np.abs(fmt.dequantize(q).astype(np.float64) - x)
    # Half a step of 2/65535, plus float32 rounding of a value in [-1, 1].
    assert err.max() <= 1 / 65535 + 2 ** -24
    assert err.max() > 0.9 / 65535  # the bound is tight: the grid is really 16-bit
    assert fmt.quantize([-3.0, 2.0, np.nan]).tolist() == [0, 65535, 0]


def test_round_trip_depth_map(tmp_path):
    samples = all_samples(n_pairs=2, n_poses=2)
    path = tmp_path / "pairs.h5"
    info = build(path, samples)
    assert info["n_samples"] == 4 and info["complete"] and not os.path.exists(f"{path}.partial")
    with fmt.open_pairs(path) as f:
        assert f["coarse"].shape == (4, 3, H, W) and f["coarse"].dtype == np.uint16
        assert f["coarse"].chunks == (1, 3, H, W) and f["coarse"].compression == "gzip"
        assert json.loads(f.attrs["channels"]) == list(DCE)
        assert json.loads(f.attrs["config"]) == CONFIG
        for i, s in enumerate(samples):  # written in sorted id order = this order
            assert f["sample_id"].asstr()[i] == s.sample_id
            for side in ("coarse", "target"):
                mask = f[side + "_mask"][i].astype(bool)
                assert np.array_equal(mask, getattr(s, side + "_mask"))
                offset, scale = f[side + "_offset"][i], f[side + "_scale"][i]
                x = fmt.dequantize(f[side][i])
                depth_mm = offset[0] + scale[0] * x[0].astype(np.float64)
                radius = 8.0 + 0.5 * (i // 2) + (side == "target")
                truth, truth_mask = sphere_depth(radius, 15.0 + i % 2,
                                                 11.0 + 0.25 * (side == "target"))
                if side == "target":  # the target was written with offset+1, scale*2
                    truth = offset[0] + scale[0] * (truth - DEPTH_OFFSET) / DEPTH_SCALE
                assert np.array_equal(mask, truth_mask)
                # Quantization bound in mm, plus float32 rounding of the normalized value.
                bound = scale[0] * (1 / 65535 + 2 ** -23)
                assert np.abs(depth_mm - truth)[mask].max() <= bound
                assert np.all(f[side][i][:, ~mask] == 0)  # background -1 -> code 0
                np.testing.assert_array_equal(f[side + "_camera"][i], getattr(s, side + "_camera"))
            np.testing.assert_array_equal(f["pose"][i], s.pose.astype(np.float32))
            assert f["subject"].asstr()[i] == s.subject and f["pair_id"].asstr()[i] == s.pair_id
            assert json.loads(f["provenance"].asstr()[i]) == s.source


def test_split_identity_disjoint_and_seeded(tmp_path):
    samples = all_samples(n_pairs=24, n_poses=1)  # 12 subjects, 2 pairs each
    splits = {}
    for seed in (0, 0, 1):
        path = tmp_path / f"s{seed}.h5"
        info = build(path, samples, seed=seed)
        with fmt.open_pairs(path) as f:
            subjects, split = f["subject"].asstr()[()], f["split"][()]
        by_subject = {}
        for s, v in zip(subjects, split):
            by_subject.setdefault(s, set()).add(int(v))
        assert all(len(v) == 1 for v in by_subject.values())  # identity-disjoint
        train = sorted(s for s, v in by_subject.items() if v == {fmt.TRAIN})
        assert len(by_subject) == 12 and len(train) == 8  # round(2/3 * 12)
        assert info["n_train_subjects"] == 8 and info["n_test_subjects"] == 4
        assert info["n_train"] == 16 and info["n_test"] == 8
        splits.setdefault(seed, []).append(train)
    assert splits[0][0] == splits[0][1]
    assert splits[0][0] != splits[1][0]


CHILD = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_store import all_samples, CONFIG, DCE, H, W
    from dce.geom import store
    mode = sys.argv[1]
    samples = all_samples()[::-1]  # arrival order differs from the sorted file order
    w = store.PairWriter({path!r}, DCE, H, W, CONFIG, commit_every=1)
    for i, s in enumerate(samples):
        if mode == "commit" and i == 5:
            # die after the 6th sample's segment is written, before its rename
            os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        w.append(s)
        print(len(w), flush=True)
""")


@pytest.mark.parametrize("mode", ["commit", "external"])
def test_resume_after_kill_equals_uninterrupted(tmp_path, mode):
    samples = all_samples()
    reference = tmp_path / "reference.h5"
    build(reference, samples)
    path = tmp_path / "pairs.h5"
    script = CHILD.format(tests=os.path.dirname(__file__), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", script, mode], stdout=subprocess.PIPE, text=True)
    if mode == "external":  # kill -9 from outside at whatever point it has reached
        while int(proc.stdout.readline()) < 4:
            pass
        proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not path.exists() and os.path.isdir(f"{path}.partial")
    with pytest.raises(fmt.PairFileError, match="incomplete build"):
        fmt.open_pairs(f"{path}.partial")
    if mode == "commit":  # the killed sample's segment never got its name
        assert len(glob.glob(f"{path}.partial/segment-*.h5.tmp")) == 1
    with store.PairWriter(path, DCE, H, W, CONFIG) as w:
        done = w.done_ids()
        if mode == "commit":
            assert len(done) == 5  # the killed sample was not counted
        assert 4 <= len(done) < len(samples)
        assert done == {s.sample_id for s in samples[::-1][:len(done)]}
        for s in samples:
            if not w.has(s.sample_id):
                w.append(s)
        w.finalize(3)
    assert_same_file(reference, path)


def test_shards_plus_merge_equal_single_build(tmp_path):
    samples = all_samples(n_pairs=12, n_poses=2)
    single = tmp_path / "single.h5"
    build(single, samples)
    shards = []
    for k in (1, 2, 3):
        part = [s for s in samples if store.shard_of(s.pair_id, k, 3)]
        assert part  # 12 pairs spread over 3 shards
        shards.append(tmp_path / f"shard{k}.h5")
        info = build(shards[-1], part, shard=(k, 3))
        assert info["shard"] == f"{k}/3" and info["n_samples"] == len(part)
    assert sum(fmt.validate(p)["n_samples"] for p in shards) == len(samples)
    merged = tmp_path / "merged.h5"
    info = store.merge_shards(shards[::-1], merged, seed=3)
    assert info["shard"] is None and info["n_samples"] == len(samples)
    assert_same_file(single, merged)
    with pytest.raises(fmt.PairFileError, match=r"missing \[2\]"):
        store.merge_shards([shards[0], shards[2]], tmp_path / "bad.h5", seed=3)


def test_shard_assignment():
    pairs = [f"{i:05d}d{i % 7}" for i in range(300)]
    counts = [sum(store.shard_of(p, k, 3) for p in pairs) for k in (1, 2, 3)]
    assert sum(counts) == 300 and min(counts) > 60  # a partition, roughly balanced
    for p in pairs[:20]:
        k = next(k for k in (1, 2, 3) if store.shard_of(p, k, 3))
        assert store.shard_of(f"{p}/pose4", k, 3) and store.shard_of(make_sample(1, 0), 1, 1)
    assert store.parse_shard("2/5") == (2, 5)
    with pytest.raises(ValueError, match="K/N"):
        store.parse_shard("0/3")


def test_finished_file_replaced_only_when_complete(tmp_path):
    path = tmp_path / "pairs.h5"
    build(path, all_samples(n_pairs=2, n_poses=1))
    with store.PairWriter(path, DCE, H, W, CONFIG) as w:  # a rebuild in progress
        for s in all_samples(n_pairs=4, n_poses=1):
            w.append(s)
        assert fmt.validate(path)["n_samples"] == 2  # the old file is untouched
    for p in [f"{path}.partial"] + glob.glob(f"{path}.partial/segment-*.h5"):
        with pytest.raises(fmt.PairFileError, match="incomplete build"):
            fmt.open_pairs(p)
    assert "samples   4 committed" in fmt.describe(f"{path}.partial")
    with store.PairWriter(path, DCE, H, W, CONFIG) as w:
        assert len(w) == 4
        w.finalize(0)
    assert fmt.validate(path)["n_samples"] == 4 and not os.path.exists(f"{path}.partial")


def test_resume_refuses_other_settings(tmp_path):
    path = tmp_path / "pairs.h5"
    with store.PairWriter(path, DCE, H, W, CONFIG) as w:
        w.append(make_sample(0, 0))
    with pytest.raises(fmt.PairFileError, match=r"config\['poses'\]: partial build 2, now 5"):
        store.PairWriter(path, DCE, H, W, {**CONFIG, "poses": 5})
    with pytest.raises(fmt.PairFileError, match="height: partial build 24, now 16"):
        store.PairWriter(path, DCE, 16, W, CONFIG)
    with pytest.raises(fmt.PairFileError, match="shard"):
        store.PairWriter(path, DCE, H, W, CONFIG, shard=(1, 2))
    with store.PairWriter(path, DCE, H, W, CONFIG, resume=False) as w:
        assert len(w) == 0


def test_one_writer_at_a_time_and_damaged_segments_dropped(tmp_path):
    path = tmp_path / "pairs.h5"
    samples = all_samples(n_pairs=3, n_poses=2)
    with store.PairWriter(path, DCE, H, W, CONFIG, commit_every=2) as w:
        with pytest.raises(fmt.PairFileError, match="in use by another process"):
            store.PairWriter(path, DCE, H, W, CONFIG)
        for s in samples:
            w.append(s)
    segments = sorted(glob.glob(f"{path}.partial/segment-*.h5"))
    assert len(segments) == 3
    # A power loss can leave a renamed segment without its data: resuming
    # drops it and its two samples are built again.
    with open(segments[1], "r+b") as fh:
        fh.truncate(100)
    with store.PairWriter(path, DCE, H, W, CONFIG) as w:
        assert len(w) == 4 and len(w.dropped) == 1 and segments[1] in w.dropped[0]
        for s in samples:
            if not w.has(s.sample_id):
                w.append(s)
        w.finalize(3)
    reference = tmp_path / "reference.h5"
    build(reference, samples)
    assert_same_file(reference, path)


def test_bad_samples_rejected(tmp_path):
    with store.PairWriter(tmp_path / "x.h5", DCE, H, W, CONFIG) as w:
        w.append(make_sample(0, 0))
        with pytest.raises(ValueError, match="already stored"):
            w.append(make_sample(0, 0))
        s = make_sample(0, 1)
        s.target = s.target[:, :, :-1]
        with pytest.raises(ValueError, match=r"p000/pose1: target has shape \(3, 24, 31\)"):
            w.append(s)
        with pytest.raises(ValueError, match="channels"):
            w.append(make_sample(1, 0, channels=DCE + ("r", "g", "b")))
        assert len(w) == 1


def test_reader_rejects_bad_files(tmp_path):
    good = tmp_path / "good.h5"
    build(good, all_samples(n_pairs=4, n_poses=2))
    size = good.stat().st_size

    def broken(name, edit):
        p = tmp_path / name
        p.write_bytes(good.read_bytes())
        edit(p)
        return p

    cases = {
        "no such file": tmp_path / "absent.h5",
        "not an HDF5 file": broken("garbage.h5", lambda p: p.write_bytes(b"garbage " * 500)),
        "corrupt HDF5": broken("truncated.h5", lambda p: os.truncate(p, size // 2)),
    }
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    cases["not a DCE pair file (no 'format'"] = tmp_path / "other.h5"

    def attr(key, value):
        def edit(p):
            with h5py.File(p, "r+") as f:
                f.attrs[key] = value
        return edit

    def reshape(p):
        with h5py.File(p, "r+") as f:
            del f["coarse_mask"]
            f["coarse_mask"] = np.zeros((8, H, W - 1), np.uint8)

    cases["format version 2"] = broken("v2.h5", attr("format_version", 2))
    cases["incomplete build (complete=False)"] = broken("partial.h5", attr("complete", False))
    cases["inconsistent shapes: dataset 'coarse_mask'"] = broken("shape.h5", reshape)
    for message, p in cases.items():
        with pytest.raises(fmt.PairFileError) as e:
            fmt.open_pairs(p)
        assert str(e.value).startswith(str(p)) and message in str(e.value), str(e.value)
    assert isinstance(e.value, ValueError)


def test_describe_reports_counts(tmp_path):
    path = tmp_path / "pairs.h5"
    build(path, all_samples(n_pairs=6, n_poses=2))
    text = fmt.describe(path)
    assert "samples   12  (pairs 6, subjects 3)" in text
    assert "train 8 samples / 2 subjects, test 4 samples / 1 subjects" in text
    assert "depth, curvature, elevation" in text and "3 x 24 x 32" in text
    # The first sample's coarse depth spans the sphere of radius 8 mm: 20 mm at
    # its front, up to 28 mm minus the rim's pixel offset.
    assert "depth [20, 2" in text and "mm" in text
    with store.PairWriter(tmp_path / "p.h5", DCE, H, W, CONFIG) as w:
        w.append(make_sample(0, 0))
    assert "INCOMPLETE" in fmt.describe(f"{tmp_path / 'p.h5'}.partial")
    segment = glob.glob(f"{tmp_path / 'p.h5'}.partial/segment-*.h5")[0]
    assert "INCOMPLETE" in fmt.describe(segment) and "samples   1 " in fmt.describe(segment)


@pytest.mark.parametrize("channels,tiles", [(DCE, 3), (DCE + ("r", "g", "b"), 4)])
def test_preview_size(tmp_path, artifacts_dir, channels, tiles):
    path = tmp_path / "pairs.h5"
    build(path, all_samples(n_pairs=4, n_poses=2, channels=channels), channels=channels)
    out = artifacts_dir / f"store-preview-{len(channels)}ch.png"
    store.preview_pairs(path, 3, out, seed=1)
    img = Image.open(out)
    # 4 px padding, 12 px labels, 2 * tiles tiles of W x H per row, 3 rows.
    assert img.size == (4 + 2 * tiles * (W + 4), 12 + 3 * (4 + 12 + H) + 4)
    a = np.asarray(img.convert("RGB"))
    assert a[12 + 4 + 12, 4].tolist() == [0, 0, 0]  # background corner of the first tile
    assert a.max() > 200


def test_gan_reader_imports_no_geometry():
    code = ("import sys, dce.gan.h5format; "
            "bad = sorted(m for m in sys.modules if m.startswith('dce.geom') or "
            "m.split('.')[0] in "
            "{'igl', 'pymeshlab', 'numba', 'face_alignment', 'torch', 'scipy'}); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_read_sample_takes_an_int_index(tmp_path):
    path = tmp_path / "pairs.h5"
    build(path, all_samples(n_pairs=3, n_poses=2))
    first = store.read_sample(path, "p000/pose0")
    for key in (0, "0", np.int64(0), -6):
        s = store.read_sample(path, key)
        assert s.sample_id == "p000/pose0"
        np.testing.assert_array_equal(s.target.image, first.target.image)
    assert store.read_sample(path, -1).sample_id == "p002/pose1"
    with pytest.raises(fmt.PairFileError, match="no sample '6'"):
        store.read_sample(path, 6)
    with pytest.raises(TypeError, match="row index"):
        store.read_sample(path, 1.5)


def test_preview_shows_nearer_brighter(tmp_path):
    """The pipeline stores depth as ``depth_reference - view depth`` over 50
    mm plus 1 (scale -50: the nearest point is +1). A sphere's nearest pixel,
    its centre, must be the brightest of the depth tile."""
    sample = make_sample(0, 0)
    view_depth, mask = sphere_depth(10.0, 15.0, 11.0)
    x = (20.0 - view_depth) / 50.0 + 1.0  # the centre (view depth 20 mm) is +1
    for image in (sample.coarse, sample.target):
        image[0] = np.where(mask, x, -1.0)
    sample.coarse_scale[0] = sample.target_scale[0] = -50.0
    path = tmp_path / "pairs.h5"
    build(path, [sample])
    png = store.preview_pairs(path, 1, tmp_path / "p.png")
    a = np.asarray(Image.open(png).convert("L")).astype(int)
    tile = a[12 + 4 + 12: 12 + 4 + 12 + H, 4: 4 + W]  # coarse depth, first row
    centre, rim = tile[11, 15], tile[11, 15 + 9]
    assert tile[mask].max() == centre and centre > rim + 100


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_a_damaged_chunk_is_an_error_even_uncompressed(tmp_path, compression):
    """Every chunk carries a Fletcher-32 checksum: without compression a
    flipped byte would otherwise read back as a different number."""
    path = tmp_path / "pairs.h5"
    build(path, all_samples(n_pairs=2, n_poses=1), compression=compression)
    with h5py.File(path, "r") as f:
        info = f["target"].id.get_chunk_info_by_coord((1, 0, 0, 0))
    data = bytearray(path.read_bytes())
    data[info.byte_offset + info.size // 2] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(fmt.PairFileError, match="target"):
        fmt.verify(path)
