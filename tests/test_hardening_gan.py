"""Issue 12 on the training side: pair-file readers, checkpoints, training
and evaluation refuse bad input with the project's errors (naming the file,
the sample or the option), never save NaN weights, and keep log.jsonl
consistent across a resume. The seeded mutation campaign is
test_fuzz_pairs.py; these are its findings as single reproducers."""
import json
import math
import shutil
import warnings

import h5py
import numpy as np
import pytest
import torch
from test_fuzz_pairs import write_pairs_file

from dce.gan import h5format as fmt
from dce.gan.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, truncate_log
from dce.gan.data import PairDataset, make_loader, worker_error
from dce.gan.train import Trainer, TrainingDiverged, TrainSettings


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """4 subjects x 2 poses at 16 px in dce-build's layout: 6 train, 2 test."""
    return write_pairs_file(tmp_path_factory.mktemp("pairs") / "pairs.h5", subjects=4,
                            poses=2, size=16)


def copy(pairs, tmp_path, name="p.h5"):
    return shutil.copyfile(pairs, tmp_path / name)


def damage_chunk(path, dataset: str, row: int) -> None:
    """Overwrite the middle of the compressed chunk of ``dataset`` holding
    ``row``, in place: the deflate stream no longer decodes."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info_by_coord((row,) + (0,) * (f[dataset].ndim - 1))
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(b"\x00\xff" * 8)


def settings(pairs, out, **kw):
    base = dict(data=str(pairs), out=str(out), preset="tiny", batch_size=2, workers=0,
                lr=1e-3, crop_pad=0, iters_per_resolution=2, max_resolution=8,
                log_every=1, checkpoint_every=1000)
    base.update(kw)
    return TrainSettings(**base)


def quiet(s):
    return Trainer(s, log=lambda *a: None)


# ------------------------------------------------------------------ pair files
def test_damaged_chunk_passes_validate_and_is_named_by_verify_and_the_loader(pairs, tmp_path):
    path = copy(pairs, tmp_path)
    damage_chunk(path, "target", 3)
    fmt.validate(path)  # the images are not read here ...
    with h5py.File(path) as f:
        name = f["sample_id"].asstr()[3]
    with pytest.raises(fmt.PairFileError, match=rf"p.h5: 1 damaged chunk.*sample 3 "
                                                rf"\('{name}'\).*'target'"):
        fmt.verify(path)  # ... here every chunk is
    data = PairDataset(path, "all", augment=False, cache_mb=0)
    data.fetch([2])  # the other samples read
    with pytest.raises(fmt.PairFileError, match=rf"p.h5: sample 3 \('{name}'\): dataset "
                                                "'target': unreadable chunk"):
        data.fetch([3])


def test_verify_reads_every_chunk(pairs):
    """4 per-sample datasets of 8 one-sample chunks, 11 small per-sample
    datasets and the split of one chunk each."""
    assert fmt.verify(pairs)["chunks_read"] == 4 * 8 + 11 + 1


def test_worker_error_gives_back_the_workers_one_line_message(pairs, tmp_path):
    path = copy(pairs, tmp_path)
    damage_chunk(path, "coarse", 0)
    loader = make_loader(PairDataset(path, "all", augment=False, cache_mb=0), batch_size=8,
                         workers=1, shuffle=False)
    with pytest.raises(fmt.PairFileError) as caught:
        next(iter(loader))
    assert "Traceback" in str(caught.value)  # torch's wrapping
    message = str(worker_error(caught.value))
    assert message.startswith(f"{path}: sample 0 (") and "\n" not in message
    assert "'coarse'" in message
    assert worker_error(ValueError("plain")).args == ("plain",)


def test_empty_target_mask_is_refused_before_training_naming_the_sample(pairs, tmp_path):
    path = copy(pairs, tmp_path)
    with h5py.File(path, "r+") as f:
        split = f["split"][()]
        row = int(np.flatnonzero(split == fmt.TRAIN)[1])
        f["target_mask"][row] = 0
        name = f["sample_id"].asstr()[row]
    with pytest.raises(fmt.PairFileError, match=rf"sample {row} \('{name}'\): empty target "
                                                "mask"):
        PairDataset(path, "train")
    assert len(PairDataset(path, "test")) == int((split == fmt.TEST).sum())  # untouched


@pytest.mark.parametrize("name", ["coarse_scale", "target_offset", "coarse_camera",
                                  "target_camera"])
@pytest.mark.parametrize("value", [np.nan, -np.inf])
def test_nonfinite_metadata_is_refused_naming_the_sample(pairs, tmp_path, name, value):
    path = copy(pairs, tmp_path)
    with h5py.File(path, "r+") as f:
        x = f[name][5]
        x.flat[1] = value
        f[name][5] = x
        sample = f["sample_id"].asstr()[5]
    with pytest.raises(fmt.PairFileError, match=rf"p.h5: sample 5 \('{sample}'\): non-finite "
                                                rf".*{name}"):
        fmt.validate(path)


@pytest.mark.parametrize("value, message", [
    ("one", "'format_version' must be an integer, got 'one'"),
    (np.float64(1.0), "'format_version' must be an integer"),
    (7, "format version 7; this reader reads version 1")])
def test_format_version_that_is_not_ours(pairs, tmp_path, value, message):
    path = copy(pairs, tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = value
    with pytest.raises(fmt.PairFileError, match=message):
        fmt.validate(path)


def test_undecodable_metadata_is_a_pair_file_error(pairs, tmp_path):
    path = copy(pairs, tmp_path)
    with h5py.File(path, "r+") as f:
        f.attrs["created_by"] = np.bytes_(b"dce \xff\xfe")
    with pytest.raises(fmt.PairFileError, match="'created_by' is not UTF-8 text"):
        fmt.validate(path)
    path = copy(pairs, tmp_path, "q.h5")
    with h5py.File(path, "r+") as f:
        ids = [bytes(v) for v in f["subject"][()]]
        ids[0] = b"\xc3("  # an invalid 2-byte sequence
        del f["subject"]
        f.create_dataset("subject", data=np.array(ids, dtype=object),
                         dtype=h5py.string_dtype("utf-8"))
    with pytest.raises(fmt.PairFileError, match="q.h5: dataset 'subject' holds text that is "
                                                "not UTF-8"):
        fmt.describe(path)


def test_a_chunk_missing_from_the_index_is_not_read_as_background(pairs, tmp_path):
    """HDF5 returns the fill value (0, i.e. -1 after dequantizing: all
    background) for a chunk its index does not find, without an error."""
    path = copy(pairs, tmp_path)
    with h5py.File(path, "r+") as f:
        old = f["coarse"][()]
        attrs = dict(f["coarse"].attrs)
        del f["coarse"]
        d = f.create_dataset("coarse", shape=old.shape, dtype=old.dtype,
                             chunks=(1,) + old.shape[1:], compression="gzip", shuffle=True)
        for row in range(len(old)):
            if row != 4:
                d[row] = old[row]
        d.attrs.update(attrs)
        assert not f["coarse"][4].any()  # what a plain read gives
    with pytest.raises(fmt.PairFileError, match="sample 4 .*'coarse': chunk missing from the "
                                                "file's index"):
        PairDataset(path, "all", augment=False, cache_mb=0).fetch([4])


def test_a_zeroed_text_heap_object_is_refused_not_looped_on(pairs, tmp_path):
    """The text (root attributes, sample ids) lives in HDF5 global heap
    collections. With one object header zeroed (index 0, size 0) HDF5
    2.0.0 loops forever decoding the collection; validate must refuse the
    file first. Run in a child process with a time limit, so a regression
    fails instead of hanging the suite."""
    import subprocess
    import sys

    path = copy(pairs, tmp_path)
    data = bytearray(path.read_bytes())
    heap = data.find(b"GCOL")
    first = heap + 16  # after "GCOL", version, reserved and the 8-byte collection size
    length = int.from_bytes(data[first + 8:first + 16], "little")
    second = first + 16 + (length + 7) // 8 * 8
    data[second:second + 16] = bytes(16)
    path.write_bytes(bytes(data))
    child = subprocess.run([sys.executable, "-c", "import sys; from dce.gan import h5format; "
                            "h5format.validate(sys.argv[1])", str(path)],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 1
    assert f"{path}: damaged text storage: global heap at byte {heap}" in child.stderr


def test_a_damaged_filter_parameter_is_refused(pairs, tmp_path):
    """The long campaign's finding: one byte of the shuffle filter's element
    size (8 -> 16777224) in a float64 dataset's header made HDF5 decode its
    values as zeros without an error."""
    path = copy(pairs, tmp_path)
    data = bytearray(path.read_bytes())
    at = data.find(b"shuffle\x00" + (8).to_bytes(4, "little"))  # a float64 dataset's
    assert at > 0
    data[at + 11] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(fmt.PairFileError, match=r"p.h5: dataset '\w+': shuffle filter for "
                                                r"\(16777224,\) byte elements, the data has 8"):
        fmt.validate(path)


def test_a_float_stored_in_a_non_standard_layout_is_refused(pairs, tmp_path):
    """A float64 whose stored layout differs (here: no implied leading
    mantissa bit) is still reported as float64 by h5py, and HDF5 converts
    it on reading: a header damaged this way reads other values without an
    error."""
    path = copy(pairs, tmp_path)
    with h5py.File(path, "r+") as f:
        values = f["target_scale"][()]
        del f["target_scale"]
        odd = h5py.h5t.IEEE_F64LE.copy()
        odd.set_norm(h5py.h5t.NORM_NONE)
        d = h5py.Dataset(h5py.h5d.create(f.id, b"target_scale", odd,
                                         h5py.h5s.create_simple(values.shape)))
        d[...] = values
        assert d.dtype == np.float64
    with pytest.raises(fmt.PairFileError, match="'target_scale' is stored as a non-standard "
                                                "float64 type"):
        fmt.validate(path)


def test_lzf_chunks_stored_unfiltered_are_legitimate(tmp_path):
    """lzf stores a chunk it cannot shrink without the filter (filter mask
    set): such files read normally."""
    path = write_pairs_file(tmp_path / "lzf.h5", size=16, compression="lzf")
    with h5py.File(path, "r+") as f:
        noise = np.random.default_rng(0).integers(0, 65535, f["coarse"].shape[1:],
                                                  dtype=np.uint16)
        f["coarse"][0] = noise
        assert f["coarse"].id.read_direct_chunk((0, 0, 0, 0))[0] != 0
    fmt.verify(path)
    item = PairDataset(path, "all", augment=False, cache_mb=0)[0]
    torch.testing.assert_close(item["coarse"], torch.from_numpy(fmt.dequantize(noise)))


# ------------------------------------------------------------------ settings
@pytest.mark.parametrize("field, value", [
    ("lr", math.inf), ("lr", 0.0), ("lr", 2.0), ("gp_lambda", math.nan), ("drift", math.nan),
    ("drift", -1.0), ("batch_size", 0), ("checkpoint_every", 0), ("log_every", 0),
    ("seed", -1), ("seed", 2 ** 70), ("workers", -1), ("crop_pad", -2),
    ("iters_per_resolution", 0), ("max_resolution", 12), ("betas", (0.5, math.nan)),
    ("amp", "fp8"), ("preset", "huge")])
def test_train_settings_refuse_bad_values(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"TrainSettings: {field} must"):
        TrainSettings(data="d.h5", out=str(tmp_path), **{field: value})


@pytest.mark.parametrize("field, value", [
    ("lr", math.inf), ("gradient_weight", math.nan), ("adversarial_weight", -1.0),
    ("gp_lambda", math.nan), ("iterations", -1), ("batch_size", 0), ("crop", 17),
    ("crop", 8), ("denoise_mm", 4.0), ("clip_mm", 0.0), ("seed", -1), ("log_every", 0),
    ("checkpoint_every", 0), ("pixel_loss", "l3")])
def test_detail_settings_refuse_bad_values(field, value):
    from dce.gan.detail import DetailSettings

    with pytest.raises(ValueError, match=f"DetailSettings: {field} must"):
        DetailSettings("d.h5", "out", "g.pt", **{field: value})


@pytest.mark.parametrize("argv, option", [
    (["--batch-size", "0"], "--batch-size"), (["--checkpoint-every", "0"], "--checkpoint-every"),
    (["--log-every", "0"], "--log-every"), (["--seed", "-1"], "--seed"),
    (["--lr", "inf"], "--lr"), (["--lr", "3"], "--lr"), (["--gp-lambda", "nan"], "--gp-lambda"),
    (["--drift", "nan"], "--drift"), (["--workers", "100000"], "--workers"),
    (["--iters-per-resolution", "0"], "--iters-per-resolution"),
    (["--max-resolution", "12"], "--max-resolution"), (["--crop-pad", "-1"], "--crop-pad")])
def test_dce_train_options_exit_2(argv, option, capsys):
    from dce.cli.train import main

    with pytest.raises(SystemExit) as caught:
        main(["pairs.h5"] + argv)
    assert caught.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["--iterations", "-1"], "--iterations"), (["--lr", "nan"], "--lr"),
    (["--crop", "17"], "--crop"), (["--denoise-mm", "5", "--highpass-mm", "4"], "--denoise-mm"),
    (["--batch-size", "0"], "--batch-size"), (["--log-every", "0"], "--log-every"),
    (["--gradient-weight", "inf"], "--gradient-weight")])
def test_dce_train_detail_options_exit_2(argv, option, capsys):
    from dce.cli.train_detail import main

    with pytest.raises(SystemExit) as caught:
        main(["pairs.h5", "global.pt"] + argv)
    assert caught.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


@pytest.mark.parametrize("argv, option", [
    (["--vmax-mm", "0"], "--vmax-mm"), (["--vmax-mm", "-1"], "--vmax-mm"),
    (["--vmax-mm", "nan"], "--vmax-mm"), (["--vmax-deg", "inf"], "--vmax-deg"),
    (["--batch-size", "0"], "--batch-size"), (["--heatmaps", "-1"], "--heatmaps"),
    (["--resolution", "0"], "--resolution"), (["--vmax-band-mm", "0"], "--vmax-band-mm")])
def test_dce_eval_options_exit_2(argv, option, capsys):
    from dce.cli.evaluate import main

    with pytest.raises(SystemExit) as caught:
        main(["pairs.h5", "last.pt"] + argv)
    assert caught.value.code == 2
    assert f"argument {option}" in capsys.readouterr().err


def test_heat_maps_refuse_a_vmax_that_would_blank_them():
    from dce.gan.evaluate import heat_color, write_heatmaps

    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="vmax"):
            heat_color(np.ones((2, 2)), bad)
        with pytest.raises(ValueError, match="vmax_mm must be a finite number > 0"):
            write_heatmaps([], "unused", vmax_mm=bad)
        with pytest.raises(ValueError, match="vmax_band_mm must be a finite number > 0"):
            write_heatmaps([], "unused", vmax_band_mm=bad)
    # 0 -> blue (0, 0, 255); vmax -> red (255, 0, 0): the two ends of the scale.
    np.testing.assert_array_equal(heat_color(np.array([[0.0, 2.0]]), 2.0)[0],
                                  [[0, 0, 255], [255, 0, 0]])


# ------------------------------------------------------------------ training
def test_divergence_stops_and_keeps_the_last_good_checkpoint(pairs, tmp_path):
    """Two sane iterations are saved; resumed with a gradient-penalty weight
    of 1e39 (finite, but beyond float32: the penalty, hence D's loss, is
    infinite) the run stops with TrainingDiverged at iteration 3 and last.pt
    is still the iteration-2 file, byte for byte."""
    quiet(settings(pairs, tmp_path)).train(until=2)
    good = (tmp_path / "last.pt").read_bytes()
    trainer = quiet(settings(pairs, tmp_path, gp_lambda=1e39))
    trainer.resume(tmp_path / "last.pt")
    with pytest.raises(TrainingDiverged, match=r"non-finite loss at iteration 3 \(.*d_loss=.*"
                                               r"last.pt \(iteration 2\) is kept"):
        trainer.train()
    assert (tmp_path / "last.pt").read_bytes() == good
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in state["G"].values())
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]  # no NaN record logged
    assert all(math.isfinite(r["g_loss"]) for r in log)


def test_dce_train_reports_divergence_and_exits_2(pairs, tmp_path, capsys):
    from dce.cli.train import main

    code = main([str(pairs), "-o", str(tmp_path / "run"), "--preset", "tiny", "--gp-lambda", "1e39",
                 "--batch-size", "2", "--workers", "0", "--iters-per-resolution", "2",
                 "--max-resolution", "4"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("dce-train: error: training diverged") and "Traceback" not in err
    assert "no checkpoint was written" in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_dce_train_and_eval_report_a_damaged_chunk_and_exit_2(pairs, tmp_path, capsys):
    from dce.cli.evaluate import main as evaluate
    from dce.cli.train import main as train

    quiet(settings(pairs, tmp_path / "run", max_resolution=4)).train()
    path = copy(pairs, tmp_path)
    with h5py.File(path) as f:
        split = f["split"][()]
        train_row = int(np.flatnonzero(split == fmt.TRAIN)[0])
        test_row = int(np.flatnonzero(split == fmt.TEST)[0])
    damage_chunk(path, "coarse", train_row)
    damage_chunk(path, "target", test_row)
    code = train([str(path), "-o", str(tmp_path / "again"), "--preset", "tiny", "--batch-size",
                  "2", "--workers", "1", "--iters-per-resolution", "2", "--max-resolution", "4",
                  "--crop-pad", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{path}: sample {train_row} (" in err and "'coarse'" in err
    assert "Traceback" not in err
    code = evaluate([str(path), str(tmp_path / "run" / "last.pt"), "-o", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{path}: sample {test_row} (" in err and "'target'" in err


def test_resume_refusals_leave_the_trainer_as_it_was(pairs, tmp_path):
    """Every entry is checked before anything is loaded: a refused resume
    changes no weight, and the trainer then trains as a fresh one would."""
    quiet(settings(pairs, tmp_path / "a", max_resolution=4)).train()
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    state["rng"] = {"python": 1}
    save_checkpoint(tmp_path / "bad.pt", state)
    trainer = quiet(settings(pairs, tmp_path / "b", max_resolution=4))
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    with pytest.raises(CheckpointError, match="bad.pt: the random-number state 'rng'"):
        trainer.resume(tmp_path / "bad.pt")
    for key, value in trainer.G.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert trainer.iteration == 0


def test_legacy_checkpoint_resumes_with_a_warning(pairs, tmp_path):
    """A checkpoint from before checksums (a bare torch.save) is accepted,
    with a warning naming it; the next save adds the checksum."""
    from dce.gan.checkpoint import MAGIC, LegacyCheckpointWarning

    quiet(settings(pairs, tmp_path, max_resolution=4)).train(until=1)
    torch.save(load_checkpoint(tmp_path / "last.pt"), tmp_path / "last.pt")
    trainer = quiet(settings(pairs, tmp_path, max_resolution=4))
    with pytest.warns(LegacyCheckpointWarning, match="last.pt"):
        trainer.resume(tmp_path / "last.pt")
    assert trainer.iteration == 1
    trainer.train()
    assert (tmp_path / "last.pt").read_bytes().startswith(MAGIC)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 2


def test_eval_refuses_a_checkpoint_with_nan_weights(pairs, tmp_path, capsys):
    """Such files exist from before training refused to save them (the
    legacy format carries no checksum): dce-eval names the file."""
    from dce.cli.evaluate import main

    quiet(settings(pairs, tmp_path, max_resolution=4)).train()
    state = load_checkpoint(tmp_path / "last.pt")
    key = next(iter(state["G"]))
    state["G"][key] = torch.full_like(state["G"][key], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    with pytest.warns(Warning):
        code = main([str(pairs), str(tmp_path / "nan.pt"), "-o", str(tmp_path / "ev")])
    assert code == 2
    assert "nan.pt: non-finite (NaN or infinite) weights in G" in capsys.readouterr().err


def test_log_is_cut_back_to_the_resumed_iteration(pairs, tmp_path):
    """A kill after the checkpoint at iteration 2 but with iterations 3 and 4
    logged: the resumed run logs 3 and 4 again, once, and the whole log
    equals an uninterrupted run's (but for the speed)."""
    whole = quiet(settings(pairs, tmp_path / "whole"))
    whole.train()
    run = tmp_path / "run"
    quiet(settings(pairs, run)).train(until=2)
    kept = (run / "last.pt").read_bytes()
    resumed = quiet(settings(pairs, run))
    resumed.resume(run / "last.pt")
    resumed.train(until=4)
    (run / "last.pt").write_bytes(kept)  # as if killed before the iteration-4 checkpoint
    with open(run / "log.jsonl", "a") as fh:
        fh.write('{"iteration": 5, "g_lo')  # and mid-write
    again = quiet(settings(pairs, run))
    again.resume(run / "last.pt")
    again.train()

    def records(folder):
        lines = (folder / "log.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"}
                for line in lines]

    assert [r["iteration"] for r in records(run)] == list(range(1, whole.total + 1))
    assert records(run) == records(tmp_path / "whole")


def test_truncate_log_keeps_whole_records_up_to_the_iteration(tmp_path):
    log = tmp_path / "log.jsonl"
    assert truncate_log(log, 3) == 0  # no log yet
    log.write_text('{"iteration": 1}\n{"iteration": 2}\nnot json\n{"iteration": 3}\n'
                   '{"iteration": 4}\n{"iteration": 2}\n{"iteration": 3')
    assert truncate_log(log, 3) == 3  # "not json", iteration 4, the torn last line
    assert log.read_text() == '{"iteration": 1}\n{"iteration": 2}\n{"iteration": 3}\n' \
        '{"iteration": 2}\n'
    assert truncate_log(log, 3) == 0


# ------------------------------------------------------------------ detail stage
@pytest.fixture(scope="module")
def detail_run(tmp_path_factory):
    """(pairs at 32 px, a global checkpoint, a detail run saved at iteration 2)."""
    from dataclasses import replace

    from dce.gan.detail import DetailSettings, DetailTrainer

    root = tmp_path_factory.mktemp("detail")
    pairs = write_pairs_file(root / "pairs.h5", subjects=4, poses=2, size=32)
    quiet(settings(pairs, root / "global", max_resolution=8, log_every=1000)).train()
    s = DetailSettings(data=str(pairs), out=str(root / "detail"),
                       global_checkpoint=str(root / "global" / "last.pt"), iterations=4,
                       batch_size=2, crop=16, width=4, blocks=1, edge_px=1, log_every=1)
    DetailTrainer(replace(s, iterations=2), log=lambda *a: None).train()
    return s, root / "detail" / "last.pt"


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("G"), "the entry 'G' is missing"),
    (lambda s: s.pop("rng"), "the entry 'rng' is missing"),
    (lambda s: s.__setitem__("iteration", -1), "iteration -1 is outside 0 .. 4"),
    (lambda s: s.__setitem__("iteration", 99), "iteration 99 is outside 0 .. 4"),
    (lambda s: s["settings"].__setitem__("lr", float("nan")), "settings are not usable"),
    (lambda s: s["G"].__setitem__("out.bias", torch.tensor([float("nan")])), "non-finite"),
    (lambda s: s.__setitem__("format", "other"), "not a detail-stage checkpoint")])
def test_detail_resume_refuses_broken_checkpoints(detail_run, tmp_path, edit, message):
    from dce.gan.detail import DetailTrainer

    s, good = detail_run
    state = load_checkpoint(good)
    edit(state)
    save_checkpoint(tmp_path / "bad.pt", state)
    trainer = DetailTrainer(s, log=lambda *a: None)
    with pytest.raises(CheckpointError, match=f"bad.pt: .*{message}"):
        trainer.resume(tmp_path / "bad.pt")


def test_detail_divergence_keeps_the_last_good_checkpoint(detail_run, tmp_path):
    """Resumed at iteration 2 with a gradient weight of 1e39 (an infinite
    loss in float32): stopped at iteration 3, last.pt still the iteration-2
    file, the log cut back and free of the NaN record."""
    from dataclasses import replace

    from dce.gan.detail import DetailTrainer

    s, good = detail_run
    out = tmp_path / "detail"
    out.mkdir()
    shutil.copyfile(good, out / "last.pt")
    shutil.copyfile(good.with_name("log.jsonl"), out / "log.jsonl")
    with open(out / "log.jsonl", "a") as fh:
        fh.write('{"iteration": 3, "loss": 1.0}\n')  # logged, then killed before a checkpoint
    trainer = DetailTrainer(replace(s, out=str(out), gradient_weight=1e39), log=lambda *a: None)
    trainer.resume(out / "last.pt")
    with pytest.raises(TrainingDiverged, match=r"detail stage diverged: non-finite loss at "
                                               r"iteration 3 .*\(iteration 2\) is kept"):
        trainer.train()
    assert (out / "last.pt").read_bytes() == good.read_bytes()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in log] == [1, 2]
