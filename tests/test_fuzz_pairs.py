"""Seeded mutation test of the pair file and of checkpoints (issue 12).

Pair files: a small file in dce-build's storage layout (gzip + shuffle +
Fletcher-32, one sample per image chunk, ``libver="earliest"``, the text
checksum) is written here with
plain h5py, then mutated: bytes flipped, replaced, zeroed, cut or appended,
and semantic edits made through h5py (NaN metadata, empty masks, bad
versions, undecodable text, a chunk missing from the index, ...). Each
mutant goes through the readers the trainer and dce-eval use
(``h5format.verify``, ``PairDataset``, ``detail.pixel_sizes``) and is
classed:

* ``refused``: a PairFileError naming the file;
* ``same``: accepted, and everything the readers deliver (images, masks,
  offsets, scales, pixel sizes, split) equals the original bit for bit;
* ``warned``: as ``text``, but read with the LegacyPairFileWarning that
  the file has no text checksum (the mutation hit that attribute's name);
* ``text``: as ``same``, but a text field no number depends on
  (``provenance``, ``config``, ``created_by``, a sample id) reads
  differently, unnoticed: a failure since the text checksum;
* ``wrong``: accepted with different data: a silently wrong read;
* ``uncaught``: any other exception.

Checkpoints: a tiny run's ``last.pt`` mutated at the byte level (the
checksum must refuse every changed byte) and semantically (entries missing,
of the wrong type, out of range, non-finite, misshapen), each re-saved with
a valid checksum so that ``Trainer.resume`` and the Refiner must find the
problem themselves; classed ``refused`` (CheckpointError or ValueError
naming the file), ``same`` (the bytes did not change), ``uncaught``.

The test asserts 0 ``text``, 0 ``wrong`` and 0 ``uncaught`` in a few hundred mutants;
``benchmarks/fuzz_pairs.py`` runs the same campaign at length.
"""
from __future__ import annotations

import collections
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from dce.gan import h5format as fmt
from dce.gan.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CHANNELS = ("depth", "curvature", "elevation")
STRING = h5py.string_dtype("utf-8")


# ------------------------------------------------------------------ pair file
def rotation(yaw: float, pitch: float) -> np.ndarray:
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    return np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ \
        np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])


def write_pairs_file(path, subjects: int = 3, poses: int = 2, size: int = 16,
                     channels=CHANNELS, seed: int = 0, compression: str = "gzip") -> Path:
    """A complete pair file in dce-build's layout with plausible content:
    per sample a disc-shaped face (mask), coarse channels smooth ramps, the
    target the coarse plus a bump, depth scale -50 mm, orthonormal cameras."""
    rng = np.random.default_rng(seed)
    names = [f"id{s:02d}" for s in range(subjects)]
    rows = sorted((f"{name}/pose{p}", name) for name in names for p in range(poses))
    N, C, H = len(rows), len(channels), size
    yy, xx = np.mgrid[0:H, 0:H] / (H - 1) * 2 - 1
    coarse = np.full((N, C, H, H), -1.0)
    target = np.full((N, C, H, H), -1.0)
    masks = np.zeros((2, N, H, H), np.uint8)
    for n in range(N):
        radius = rng.uniform(0.6, 0.9)
        masks[0, n] = xx ** 2 + yy ** 2 < radius ** 2
        masks[1, n] = xx ** 2 + yy ** 2 < (radius - 0.1) ** 2
        for c in range(C):
            ramp = rng.uniform(-0.3, 0.3) * xx + rng.uniform(-0.3, 0.3) * yy + 0.1 * c
            coarse[n, c] = np.where(masks[0, n], ramp, -1.0)
            target[n, c] = np.where(masks[1, n], ramp + 0.05 * np.exp(-4 * (xx ** 2 + yy ** 2)),
                                    -1.0)
    cameras = np.zeros((N, 4, 3))
    for n in range(N):
        cameras[n, :3] = rotation(rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3))
        cameras[n, 3] = (0.15, H / 2, H / 2)
    offset = np.tile(np.r_[1000.0, np.zeros(C - 1)], (N, 1))
    scale = np.tile(np.r_[-50.0, 0.1 * np.ones(C - 1)], (N, 1))
    split = fmt.split_subjects([s for _, s in rows], seed)
    # As dce-build writes them: a Fletcher-32 checksum on every numeric chunk.
    opts = {"fletcher32": True}
    if compression is not None:
        opts.update(compression=compression, shuffle=True)
    if compression == "gzip":
        opts["compression_opts"] = 4
    data = {"coarse": fmt.quantize(coarse), "target": fmt.quantize(target),
            "coarse_mask": masks[0], "target_mask": masks[1],
            "coarse_offset": offset, "coarse_scale": scale,
            "target_offset": offset + 1.0, "target_scale": scale,
            "coarse_camera": cameras, "target_camera": cameras,
            "pose": rng.uniform(-30, 30, (N, 3)).astype(np.float32),
            "sample_id": [i for i, _ in rows], "pair_id": [s for _, s in rows],
            "subject": [s for _, s in rows],
            "provenance": [json.dumps({"scan": f"/data/{i}.abs"}) for i, _ in rows],
            fmt.SPLIT: np.array([split[s] for _, s in rows], np.uint8)}
    with h5py.File(path, "w", libver="earliest") as f:
        f.attrs.update({"format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION,
                        "complete": False, "n_samples": N, "channels": json.dumps(list(channels)),
                        "height": H, "width": H, "created_by": "dce test",
                        "config": json.dumps({"size": H, "seed": seed}, sort_keys=True)})
        for name, values in data.items():
            text = name in fmt.STRING_DATASETS
            tail = np.asarray(values).shape[1:] if not text else ()
            per_sample = name in fmt.IMAGE_DATASETS + fmt.MASK_DATASETS
            d = f.create_dataset(name, shape=(N,) + tail, maxshape=(None,) + tail,
                                 dtype=STRING if text else np.asarray(values).dtype,
                                 chunks=(1,) + tail if per_sample else (min(N, 256),) + tail,
                                 **({} if text else opts))
            d[...] = values
            if name in fmt.IMAGE_DATASETS:
                d.attrs["quantization"] = fmt.QUANTIZATION
        f.attrs.update({"seed": seed, "test_fraction": fmt.DEFAULT_TEST_FRACTION})
        fmt.write_text_digest(f, N)
        f.attrs["complete"] = True
    return Path(path)


def read_all(path) -> dict:
    """What the trainer and dce-eval read of a pair file: verify, then every
    sample through PairDataset (all channels, no augmentation), the split
    (read as PairDataset reads it, once validate has checked it) and the
    pixel sizes. Raises what the readers raise."""
    from dce.gan.data import PairDataset
    from dce.gan.detail import pixel_sizes

    summary = fmt.verify(path)
    channels = summary["channels"]
    data = PairDataset(path, "all", channels, channels, augment=False, cache_mb=0)
    items = data.fetch(range(len(data)))
    out = {key: torch.stack([it[key] for it in items]).numpy()
           for key in ("coarse", "target", "coarse_mask", "target_mask", "coarse_offset",
                       "coarse_scale", "target_offset", "target_scale")}
    with h5py.File(path, "r") as f:  # what PairDataset selects its split rows from
        out["split"] = f[fmt.SPLIT][()]
    out["pixel_mm"] = pixel_sizes(path, data.indices)
    out["shape"] = np.array([summary["n_samples"], summary["height"], summary["width"]])
    return out


def read_text(path) -> dict:
    """The text fields (string datasets and root attributes) as h5py reads them."""
    with h5py.File(path, "r") as f:
        text = {name: [bytes(v) for v in f[name][()]] for name in fmt.STRING_DATASETS}
        text.update({f"@{k}": str(v) for k, v in f.attrs.items()})
    return text


def same_arrays(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes() for k in a)


def classify(path, reference: dict, reference_text: dict, run=read_all) -> tuple:
    """(class, detail) of the pair file at ``path`` against the original's
    ``reference`` (read_all) and ``reference_text`` (read_text)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = run(path)
    except fmt.PairFileError as error:
        if os.fspath(path) not in str(error):
            return "uncaught", f"PairFileError without the file name: {error}"
        return "refused", str(error)
    except Exception as error:  # noqa: BLE001 - the point is to catch everything else
        return "uncaught", f"{type(error).__name__}: {error}"
    if not same_arrays(got, reference):
        differ = [k for k in reference if k not in got or got[k].shape != reference[k].shape
                  or got[k].tobytes() != reference[k].tobytes()]
        return "wrong", f"accepted with different {differ}"
    try:
        text = read_text(path)
    except Exception:  # noqa: BLE001 - the readers accepted it; h5py may still not decode it
        return "text", "text unreadable by plain h5py"
    if text == reference_text:
        return "same", ""
    if any(issubclass(w.category, fmt.LegacyPairFileWarning) for w in caught):
        return "warned", "text changed, read with a warning that it is unverified"
    return "text", "text changed"


def byte_mutant(data: bytes, rng: random.Random) -> tuple:
    """(mutated bytes, description): one of a bit flip, a random byte, a
    zeroed run, a cut or appended garbage."""
    data = bytearray(data)
    kind = rng.choice(["flip", "flip", "byte", "byte", "zero", "cut", "append"])
    at = rng.randrange(len(data))
    if kind == "flip":
        data[at] ^= 1 << rng.randrange(8)
    elif kind == "byte":
        data[at] = rng.randrange(256)
    elif kind == "zero":
        data[at:at + 16] = bytes(len(data[at:at + 16]))
    elif kind == "cut":
        data = data[:at]
    else:
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    return bytes(data), f"{kind}@{at}"


def _set(name, value, row_pick=lambda n: n // 2):
    def edit(f, rng):
        d = f[name]
        row = row_pick(d.shape[0])
        x = d[row]
        x.flat[rng.randrange(x.size)] = value
        d[row] = x
    return edit


def _attr(name, value):
    def edit(f, rng):
        f.attrs[name] = value
    return edit


def _del_attr(name):
    def edit(f, rng):
        del f.attrs[name]
    return edit


def _del_dataset(name):
    def edit(f, rng):
        del f[name]
    return edit


def _empty_mask(f, rng):
    d = f["target_mask"]
    d[rng.randrange(d.shape[0])] = 0


def _mask_value(f, rng):
    d = f["coarse_mask"]
    x = d[1]
    x[x.shape[0] // 2, x.shape[1] // 2] = 2
    d[1] = x


def _edit_strings(name, row, value):
    """Rewrite string dataset ``name`` with row ``row`` replaced: valid
    UTF-8 text that only the text checksum can tell from the original."""
    def edit(f, rng):
        values = [bytes(v) for v in f[name][()]]
        values[row] = value
        del f[name]
        f.create_dataset(name, data=np.array(values, dtype=object), dtype=STRING)
    return edit


def _bad_utf8_id(f, rng):
    values = [bytes(v) for v in f["sample_id"][()]]
    values[2] = b"id\xff\xfe/pose0"
    del f["sample_id"]
    f.create_dataset("sample_id", data=np.array(values, dtype=object), dtype=STRING)


def _duplicate_id(f, rng):
    values = [bytes(v) for v in f["sample_id"][()]]
    values[1] = values[0]
    del f["sample_id"]
    f.create_dataset("sample_id", data=np.array(values, dtype=object), dtype=STRING)


def _unallocated_chunk(f, rng):
    """The image dataset rewritten without one sample's chunk: HDF5 reads
    the fill value (0 = background) there without an error, as it does when
    a damaged chunk index no longer finds a chunk."""
    name = rng.choice(fmt.IMAGE_DATASETS)
    old = f[name][()]
    attrs = dict(f[name].attrs)
    del f[name]
    d = f.create_dataset(name, shape=old.shape, dtype=old.dtype, chunks=(1,) + old.shape[1:],
                         compression="gzip", shuffle=True)
    skip = rng.randrange(len(old))
    for row in range(len(old)):
        if row != skip:
            d[row] = old[row]
    d.attrs.update(attrs)


def _split_both(f, rng):
    split = f[fmt.SPLIT][()]
    split[0] = 1 - split[0]
    f[fmt.SPLIT][...] = split


def _float_images(f, rng):
    old = f["target"][()]
    attrs = dict(f["target"].attrs)
    del f["target"]
    f.create_dataset("target", data=old.astype(np.float32))
    f["target"].attrs.update(attrs)


SEMANTIC = {
    **{f"{name} {value}": _set(name, value)
       for name in fmt.FINITE_DATASETS for value in (np.nan, np.inf)},
    "coarse_scale 0": _set("coarse_scale", 0.0),
    "target_scale 0": _set("target_scale", 0.0),
    "target camera scale 0": lambda f, rng: f["target_camera"].__setitem__(
        (1, 3, 0), 0.0),
    "target camera scale -0.15": lambda f, rng: f["target_camera"].__setitem__(
        (2, 3, 0), -0.15),
    "empty target mask": _empty_mask,
    "mask value 2": _mask_value,
    "format_version 'one'": _attr("format_version", "one"),
    "format_version 2": _attr("format_version", 2),
    "format_version 1.5": _attr("format_version", 1.5),
    "format 'dce-pair'": _attr("format", "dce-pair"),
    "format undecodable": _attr("format", np.void(b"\xff\xfe")),
    "channels not JSON": _attr("channels", "[depth"),
    "channels undecodable": _attr("channels", np.bytes_(b'["d\xffepth"]')),
    "channels duplicated": _attr("channels", json.dumps(["depth", "depth", "elevation"])),
    "channels empty": _attr("channels", "[]"),
    "config undecodable": _attr("config", np.bytes_(b'{"\xff": 1}')),
    "complete False": _attr("complete", False),
    "n_samples + 1": lambda f, rng: f.attrs.__setitem__("n_samples", f.attrs["n_samples"] + 1),
    "n_samples - 1": lambda f, rng: f.attrs.__setitem__("n_samples", f.attrs["n_samples"] - 1),
    "n_samples -1": _attr("n_samples", -1),
    "height + 1": lambda f, rng: f.attrs.__setitem__("height", f.attrs["height"] + 1),
    "height as array": _attr("height", np.array([16, 16])),
    "test_fraction nan": _attr("test_fraction", np.nan),
    "seed -3": _attr("seed", -3),
    "no format_version": _del_attr("format_version"),
    "no width": _del_attr("width"),
    "no coarse_camera": _del_dataset("coarse_camera"),
    "no split": _del_dataset(fmt.SPLIT),
    "sample_id not UTF-8": _bad_utf8_id,
    "duplicate sample_id": _duplicate_id,
    "unallocated image chunk": _unallocated_chunk,
    "split value 3": _set(fmt.SPLIT, 3, lambda n: slice(None)),
    "split not identity-disjoint": _split_both,
    "float target": _float_images,
    "no quantization": lambda f, rng: f["coarse"].attrs.__delitem__("quantization"),
    "sample_id renamed": _edit_strings("sample_id", 2, b"9999/pose0"),
    "provenance edited": _edit_strings("provenance", 1, b'{"scan": "/elsewhere.abs"}'),
    "config edited": _attr("config", json.dumps({"size": 16, "seed": 99}, sort_keys=True)),
    "created_by edited": _attr("created_by", "dce 0.0"),
    "text_sha256 edited": _attr(fmt.TEXT_DIGEST, np.bytes_(b"0" * 64)),
}


def semantic_mutant(source: Path, path: Path, name: str, rng: random.Random) -> None:
    shutil.copyfile(source, path)
    with h5py.File(path, "r+") as f:
        SEMANTIC[name](f, rng)


def pair_campaign(folder: Path, n_bytes: int, seed: int, size: int = 16,
                  prober=None, compression: str = "gzip") -> tuple:
    """({"bytes": Counter, "semantic": Counter} of ``n_bytes`` byte mutants
    and of every semantic mutant, [(class, mutant, detail)] of the
    failures): the campaign over a file written by :func:`write_pairs_file`.
    ``prober(reference, reference_text)`` makes the function that classes a
    mutant's path (default: :func:`classify` in this process)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = write_pairs_file(folder / "pairs.h5", size=size, seed=seed,
                              compression=compression)
    reference, reference_text = read_all(source), read_text(source)
    probe = (prober or (lambda ref, text: lambda p: classify(p, ref, text)))(
        reference, reference_text)
    data = source.read_bytes()
    rng = random.Random(seed)
    counts = {"bytes": collections.Counter(), "semantic": collections.Counter()}
    failures = []
    path = folder / "mutant.h5"
    for _ in range(n_bytes):
        mutated, what = byte_mutant(data, rng)
        path.write_bytes(mutated)
        kind, detail = probe(path)
        counts["bytes"][kind] += 1
        if kind not in ("refused", "same", "warned"):
            failures.append((kind, what, detail))
    if compression == "gzip":
        for name in SEMANTIC:
            semantic_mutant(source, path, name, rng)
            kind, detail = probe(path)
            counts["semantic"][kind] += 1
            if kind != "refused":  # every semantic edit is a defect the readers must see
                failures.append((kind, name, detail))
    return counts, failures


# ------------------------------------------------------------------ checkpoints
def tiny_run(pairs: Path, out: Path, **kw):
    """(settings, checkpoint) of a 2-iteration run at 4 px."""
    from dce.gan.train import Trainer, TrainSettings

    settings = TrainSettings(data=str(pairs), out=str(out), preset="tiny", batch_size=2,
                             workers=0, lr=1e-3, crop_pad=0, iters_per_resolution=2,
                             max_resolution=4, log_every=1000, checkpoint_every=1000, **kw)
    Trainer(settings, log=lambda *a: None).train()
    return settings, out / "last.pt"


def _nan_weight(state):
    key = next(iter(state["G"]))
    state["G"][key] = state["G"][key].clone().fill_(float("nan"))


def _shape(state):
    key = next(k for k, v in state["G"].items() if v.ndim > 1)
    state["G"][key] = torch.zeros(3, 3)


def _settings(key, value):
    def edit(state):
        state["settings"][key] = value
    return edit


CHECKPOINT_EDITS = {
    **{f"no {key}": (lambda key: lambda s: s.pop(key))(key)
       for key in ("settings", "G", "D", "opt_g", "opt_d", "scaler", "rng", "iteration")},
    "iteration -5": lambda s: s.__setitem__("iteration", -5),
    "iteration 10**9": lambda s: s.__setitem__("iteration", 10 ** 9),
    "iteration '3'": lambda s: s.__setitem__("iteration", "3"),
    "iteration 2.5": lambda s: s.__setitem__("iteration", 2.5),
    "settings a list": lambda s: s.__setitem__("settings", [1, 2]),
    "G a list": lambda s: s.__setitem__("G", [1, 2]),
    "batch_size 0": _settings("batch_size", 0),
    "lr nan": _settings("lr", float("nan")),
    "gp_lambda inf": _settings("gp_lambda", float("inf")),
    "config unknown": _settings("config", "X|Y|Z"),
    "settings key unknown only": lambda s: s.__setitem__("settings", {"foo": 1}),
    "seed other": _settings("seed", 7),
    "NaN weight": _nan_weight,
    "weight of another shape": _shape,
    "opt_g garbage": lambda s: s.__setitem__("opt_g", {"state": 5, "param_groups": "x"}),
    "opt_d NaN": lambda s: s["opt_d"]["state"][0].__setitem__(
        "exp_avg", s["opt_d"]["state"][0]["exp_avg"] * float("nan")),
    "rng garbage": lambda s: s.__setitem__("rng", {"python": 1, "numpy": 2, "torch": 3}),
}


def resume_probe(trainer, path):
    """Trainer.resume of ``path``, then the Refiner that dce-eval builds
    (evaluate's finite-weights check included). A refused resume leaves the
    trainer as it was (every entry is checked before anything is loaded),
    so one trainer serves every mutant."""
    from dce.gan.detail import require_finite_networks
    from dce.gan.inference import Refiner

    trainer.resume(path)
    require_finite_networks(Refiner(path), path)
    return trainer.iteration


def checkpoint_campaign(folder: Path, pairs: Path, n_bytes: int, seed: int) -> tuple:
    """({"bytes": Counter, "semantic": Counter}, failures) over a tiny run's
    checkpoint (see the module docstring)."""
    from dataclasses import replace

    from dce.gan.train import Trainer

    settings, original = tiny_run(pairs, folder / "run")
    data = original.read_bytes()
    rng = random.Random(seed)
    counts = {"bytes": collections.Counter(), "semantic": collections.Counter()}
    failures = []
    path = folder / "mutant.pt"
    for _ in range(n_bytes):
        mutated, what = byte_mutant(data, rng)
        if mutated == data:
            counts["bytes"]["same"] += 1
            continue
        path.write_bytes(mutated)
        kind, detail = _checkpoint_outcome(lambda: load_checkpoint(path), path)
        counts["bytes"][kind] += 1
        if kind != "refused":
            failures.append((kind, what, detail))
    probe = replace(settings, out=str(folder / "probe"))
    trainer = Trainer(probe, log=lambda *a: None)
    for name, edit in CHECKPOINT_EDITS.items():
        mutant = load_checkpoint(original)
        edit(mutant)
        save_checkpoint(path, mutant)
        kind, detail = _checkpoint_outcome(lambda: resume_probe(trainer, path), path)
        counts["semantic"][kind] += 1
        if kind != "refused":
            failures.append((kind, name, detail))
            trainer = Trainer(probe, log=lambda *a: None)  # it may hold the mutant now
    return counts, failures


def _checkpoint_outcome(load, path) -> tuple:
    try:
        load()
    except (CheckpointError, ValueError) as error:
        if os.fspath(path) not in str(error):
            return "uncaught", f"{type(error).__name__} without the file name: {error}"
        return "refused", str(error)
    except Exception as error:  # noqa: BLE001
        return "uncaught", f"{type(error).__name__}: {error}"
    return "accepted", ""


# ------------------------------------------------------------------ the tests
def test_writer_gives_a_valid_file_that_reads_back(tmp_path):
    """The fixture itself: validate and verify accept it, and the loader
    gives the written values back within half a quantization step."""
    path = write_pairs_file(tmp_path / "p.h5", subjects=3, poses=2, size=16)
    summary = fmt.verify(path)
    assert summary["n_samples"] == 6 and summary["chunks_read"] == 4 * 6 + 12
    got = read_all(path)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(got["coarse"], fmt.dequantize(f["coarse"][()]))
        np.testing.assert_allclose(got["pixel_mm"], 1 / 0.15)


@pytest.mark.parametrize("name", sorted(SEMANTIC))
def test_every_semantic_pair_defect_is_refused_naming_the_file(tmp_path, name):
    source = write_pairs_file(tmp_path / "p.h5")
    reference, text = read_all(source), read_text(source)
    mutant = tmp_path / "mutant.h5"
    semantic_mutant(source, mutant, name, random.Random(0))
    kind, detail = classify(mutant, reference, text)
    assert kind == "refused", (name, kind, detail)


def test_a_pair_file_without_text_checksum_reads_with_a_warning(tmp_path):
    """A file from before text checksums: the same numbers, and a warning
    that names the file and says its text is unverified."""
    source = write_pairs_file(tmp_path / "p.h5")
    reference = read_all(source)
    with h5py.File(source, "r+") as f:
        del f.attrs[fmt.TEXT_DIGEST]
    with pytest.warns(fmt.LegacyPairFileWarning, match=str(source)):
        got = read_all(source)
    assert same_arrays(got, reference)


def test_text_digest_separates_fields():
    """Length-prefixed fields: moving text across a boundary changes the digest."""
    strings = {name: ["a"] for name in fmt.STRING_DATASETS}
    moved = dict(strings, sample_id=["ab"], pair_id=["a"])  # "a" + "ba" == "ab" + "a"
    strings = dict(strings, pair_id=["ba"])
    assert fmt.text_digest({}, strings) != fmt.text_digest({}, moved)
    assert fmt.text_digest({"config": "x"}, strings) != fmt.text_digest({"config": "y"}, strings)
    assert fmt.text_digest({"config": "x"}, strings) == fmt.text_digest({"config": b"x"}, strings)


def test_an_empty_chunk_in_the_index_is_refused_not_a_crash(tmp_path):
    """One chunk size zeroed in a B-tree key (found by the long campaign):
    HDF5 then crashes the process on reading any chunk of that dataset. The
    readers must refuse the file first. Run in a child process, which a
    crash would kill."""
    import struct
    import subprocess
    import sys

    source = write_pairs_file(tmp_path / "p.h5", size=32)
    with h5py.File(source, "r") as f:
        d = f["target_mask"]
        info = d.id.get_chunk_info(4)
    # The v1 B-tree key of that chunk: size, filter mask, then its offsets
    # (one more than the dataset's rank), little-endian.
    key = struct.pack("<II", info.size, info.filter_mask) + struct.pack(
        f"<{len(info.chunk_offset) + 1}Q", *info.chunk_offset, 0)
    original, mutant = source.read_bytes(), tmp_path / "mutant.h5"
    at = original.find(key)
    while at >= 0:  # the same key bytes may index another dataset's chunk too
        mutant.write_bytes(original[:at] + bytes(4) + original[at + 4:])
        with h5py.File(mutant, "r") as f:
            if f["target_mask"].id.get_chunk_info(4).size == 0:
                break
        at = original.find(key, at + 1)
    assert at >= 0, "the chunk's key was not found"
    code = ("import sys; sys.path.insert(0, sys.argv[2]); "
            "from test_fuzz_pairs import read_all; read_all(sys.argv[1])")
    run = subprocess.run([sys.executable, "-c", code, str(mutant), str(Path(__file__).parent)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, (run.returncode, run.stderr[-2000:])
    assert "PairFileError" in run.stderr and str(mutant) in run.stderr
    assert "'target_mask': its chunk index lists a chunk of 0 bytes" in run.stderr


def test_seeded_byte_mutants_of_a_pair_file(tmp_path):
    """200 byte mutants: none reads silently wrong, none raises anything but
    PairFileError naming the file. (About two thirds of such a small file is
    space HDF5 reserves, for chunk index nodes mostly: mutants there read
    the same.)"""
    counts, failures = pair_campaign(tmp_path, n_bytes=200, seed=12)
    assert not failures, failures[:5]
    assert sum(counts["bytes"].values()) == 200
    assert counts["bytes"]["refused"] >= 50


def test_seeded_checkpoint_mutants(tmp_path):
    """150 byte mutants and every semantic edit of a checkpoint: each is
    refused with the file named."""
    pairs = write_pairs_file(tmp_path / "pairs.h5", subjects=4, poses=2, size=16)
    counts, failures = checkpoint_campaign(tmp_path, pairs, n_bytes=150, seed=12)
    assert not failures, failures[:5]
    assert counts["semantic"]["refused"] == len(CHECKPOINT_EDITS)
    assert counts["bytes"]["refused"] + counts["bytes"]["same"] == 150
