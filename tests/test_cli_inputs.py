"""Command lines that must end in a clear message and exit status 2, never
a traceback, a lost input or a runaway job (issue 12): numeric options out
of range, outputs that are inputs or cannot be written, broken pair files
given to dce-build's file commands."""
import os
import sys

import h5py
import pytest

from dce.cli import build, demo
from dce.geom import store

sys.path.insert(0, os.path.dirname(__file__))
from test_store import DCE, H, W, all_samples  # noqa: E402


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.h5"
    with store.PairWriter(path, DCE, H, W, {"source": "test"}) as w:
        for s in all_samples(n_pairs=4, n_poses=2):
            w.append(s)
        w.finalize(seed=1)
    return path


@pytest.mark.parametrize("argv,option", [
    (["synthetic", "--size", "0"], "--size"),
    (["synthetic", "--size", "-8"], "--size"),
    (["synthetic", "--size", "100000"], "--size"),
    (["synthetic", "--identities", "0"], "--identities"),
    (["synthetic", "--identities", "-3"], "--identities"),
    (["synthetic", "--identities", str(10 ** 9)], "--identities"),
    (["synthetic", "--poses", "-1"], "--poses"),
    (["synthetic", "--poses", str(10 ** 8)], "--poses"),
    (["synthetic", "--workers", str(10 ** 5)], "--workers"),
    (["synthetic", "--test-fraction", "-0.5"], "--test-fraction"),
    (["synthetic", "--test-fraction", "2"], "--test-fraction"),
    (["synthetic", "--test-fraction", "nan"], "--test-fraction"),
    (["synthetic", "--seed", "-1"], "--seed"),
    (["synthetic", "--seed", str(2 ** 70)], "--seed"),
    (["synthetic", "--preview", "-1"], "--preview"),
    (["synthetic", "--landmark-noise", "inf"], "--landmark-noise"),
    (["synthetic", "--max-gap", "0"], "--max-gap"),
    (["preview", "x.h5", "-k", "0"], "-k"),
])
def test_build_options_out_of_range_exit_2(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        build.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "Traceback" not in err


@pytest.mark.parametrize("argv,option", [
    (["--identities", "0"], "--identities"), (["--size", "0"], "--size"),
    (["--heatmaps", "-2"], "--heatmaps"), (["--seed", "-1"], "--seed"),
])
def test_demo_options_out_of_range_exit_2(argv, option, capsys):
    with pytest.raises(SystemExit) as e:
        demo.main(argv)
    assert e.value.code == 2 and f"argument {option}" in capsys.readouterr().err


def test_build_refuses_to_write_over_its_inputs(tmp_path, capsys):
    world = tmp_path / "W"
    assert build.main(["synthetic", "--world", str(world), "-o", str(world / "world.json")]) == 2
    assert "is one of the command's inputs" in capsys.readouterr().err
    assert not world.exists()  # refused before anything was generated
    (world / "scans").mkdir(parents=True)
    assert build.main(["synthetic", "--world", str(world), "-o",
                       str(world / "scans" / "p.h5")]) == 2
    assert "inside the world's scans folder" in capsys.readouterr().err
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert build.main(["synthetic", "--world", str(world), "-o", str(notes)]) == 2
    assert "is not a file this command makes" in capsys.readouterr().err
    assert notes.read_text() == "keep me"
    assert build.main(["synthetic", "--world", str(world), "-o", str(notes / "p.h5")]) == 2
    assert "is a file, so nothing can be written under it" in capsys.readouterr().err
    assert build.main(["synthetic", "--world", str(world), "-o", str(tmp_path)]) == 2
    assert "is an existing folder, not a file" in capsys.readouterr().err


def test_read_only_output_folder_is_reported(tmp_path, monkeypatch, capsys):
    from dce.cli import options

    real = os.access
    monkeypatch.setattr(options.os, "access",
                        lambda p, mode: False if os.fspath(p) == str(tmp_path) else real(p, mode))
    assert build.main(["synthetic", "--world", str(tmp_path / "W"),
                       "-o", str(tmp_path / "p.h5")]) == 2
    assert f"the folder {tmp_path} is not writable" in capsys.readouterr().err


def test_preview_and_merge_never_replace_their_inputs(pairs, capsys):
    before = pairs.read_bytes()
    assert build.main(["preview", str(pairs), "-o", str(pairs)]) == 2
    assert "is one of the command's inputs" in capsys.readouterr().err
    assert build.main(["merge", str(pairs), str(pairs)]) == 2
    assert "is one of the command's inputs" in capsys.readouterr().err
    assert pairs.read_bytes() == before
    assert build.main(["preview", str(pairs)]) == 0  # beside it, as pairs.png
    assert pairs.with_suffix(".png").is_file()


def test_file_commands_report_bad_files(pairs, tmp_path, capsys):
    missing = tmp_path / "missing.h5"
    for argv in (["inspect", str(missing)], ["preview", str(missing)],
                 ["merge", str(tmp_path / "m.h5"), str(missing)]):
        assert build.main(argv) == 2
        err = capsys.readouterr().err
        assert str(missing) in err and "Traceback" not in err
    text = tmp_path / "text.h5"
    text.write_text("not an HDF5 file")
    assert build.main(["inspect", str(text)]) == 2
    assert str(text) in capsys.readouterr().err


def _chunk_offset(path, name: str, row: int) -> tuple:
    with h5py.File(path, "r") as f:
        info = f[name].id.get_chunk_info_by_coord((row,) + (0,) * (f[name].ndim - 1))
        return info.byte_offset, info.size


def test_inspect_reads_every_chunk(pairs, capsys):
    """A damaged compressed chunk passes the summary; inspect reads it back
    and names the dataset and the sample (exit 2); --no-verify skips that."""
    assert build.main(["inspect", str(pairs)]) == 0
    assert "verified: all" in capsys.readouterr().out
    offset, size = _chunk_offset(pairs, "target", 3)
    data = bytearray(pairs.read_bytes())
    data[offset + size // 2: offset + size // 2 + 8] = bytes(8)
    pairs.write_bytes(bytes(data))
    assert build.main(["inspect", str(pairs), "--no-verify"]) == 0
    capsys.readouterr()
    assert build.main(["inspect", str(pairs)]) == 2
    err = capsys.readouterr().err
    with h5py.File(pairs, "r") as f:
        sample = f["sample_id"].asstr()[3]
    assert str(pairs) in err and "'target'" in err and sample in err


@pytest.mark.parametrize("option,value", [
    ("--depth-scale", "0"), ("--depth-scale", "nan"), ("--curvature-scale", "-1"),
    ("--max-jump-mm", "0"), ("--size", "0"), ("--margin", "inf")])
def test_refine_options_out_of_range_exit_2(tmp_path, option, value, capsys):
    """A zero or NaN depth scale once wrote a 'refined' mesh equal to the
    coarse one; now the option is refused before anything runs."""
    from dce.cli import refine

    with pytest.raises(SystemExit) as e:
        refine.main([str(tmp_path / "c.pt"), "--mesh", str(tmp_path / "m.ply"), option, value])
    assert e.value.code == 2 and f"argument {option}" in capsys.readouterr().err


def test_refine_never_writes_over_its_inputs(tmp_path, capsys):
    from dce.cli import refine

    mesh = tmp_path / "m.ply"
    mesh.write_bytes(b"ply\n")
    base = [str(tmp_path / "c.pt"), "--mesh", str(mesh), "--landmarks", str(tmp_path / "l.pts"),
            "--landmarks-3d", str(tmp_path / "l.txt")]
    assert refine.main(base + ["-o", str(mesh)]) == 2
    assert "is one of the command's inputs" in capsys.readouterr().err
    assert refine.main(base + ["-o", str(tmp_path / "l.pts")]) == 2
    assert "is one of the command's inputs" in capsys.readouterr().err
    assert refine.main(base + ["--landmarks-out", str(mesh), "-o", str(tmp_path / "out")]) == 2
    assert "is one of the command's inputs" in capsys.readouterr().err
    assert mesh.read_bytes() == b"ply\n"


def test_eval_mesh_and_landmarks_outputs_are_checked(tmp_path, capsys):
    from dce.cli import eval_mesh, landmarks

    pred = tmp_path / "pred"
    pred.mkdir()
    assert eval_mesh.main(["--pred", str(pred), "--gt", str(pred), "-o", str(pred)]) == 2
    assert "is one of the command's inputs" in capsys.readouterr().err
    photo, blocker = tmp_path / "face.png", tmp_path / "blocker"
    photo.write_bytes(b"")
    blocker.write_text("a file")
    assert landmarks.main([str(photo), "--out", str(blocker)]) == 2
    assert "is a file, so nothing can be written under it" in capsys.readouterr().err
