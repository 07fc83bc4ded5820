"""Input enumeration and loading (dce.geom.sources) on sample files written
here: a tiny synthetic world, converted into an FRGC tree (.abs / .abs.gz,
.ppm / .png, .pts) and a Bosphorus folder (upside-down .bnt with uv into a
larger photo, .png, .pts, .lm2/.lm3), plus CSV/JSON manifests. The world's
manifest records the exact 3D landmarks of every scan, an independent
reference for what the loaded pairs give."""
import dataclasses
import gzip
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dce.geom import sources as S
from dce.geom.dataset import prepare_coarse, prepare_ground_truth
from dce.geom.io import (
    FormatError,
    Landmarks,
    RangeScan,
    load_mesh,
    read_abs,
    write_abs,
    write_bnt,
    write_landmarks,
)
from dce.geom.landmarks import WEIGHTS_ENV
from dce.geom.morphable import load_model
from dce.geom.projection import fit_orthographic
from dce.geom.synthetic import generate_world

STEMS = ("01000d1", "01001d1")
BOSPHORUS = ("bs000_N_N_0", "bs001_E_HAPPY_0")
# Bosphorus grid: a window of the world's 480 x 640 scan, so uv maps it into
# a photo larger than the grid (rows r0.., columns c0..).
R0, R1, C0, C1 = 90, 410, 150, 490


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    manifest = generate_world(root, identities=2, expressions_per_identity=0, workers=1)
    records = {r["stem"]: r for r in manifest["scans"]}
    assert tuple(sorted(records)) == STEMS
    return root, records


@pytest.fixture(scope="module")
def frgc(world, tmp_path_factory):
    """FRGC tree: Fall2003/01000d1.abs + .ppm, landmarks in a mirrored
    landmarks folder; Spring2004/session2/01001d1.abs.gz + .png + .pts."""
    wroot, _ = world
    base = tmp_path_factory.mktemp("frgc")
    root, lms = base / "frgc", base / "landmarks"
    a, b = root / "Fall2003", root / "Spring2004" / "session2"
    for d in (a, b, lms / "Fall2003"):
        d.mkdir(parents=True)
    write_abs(a / "01000d1.abs", read_abs(wroot / "scans/01000d1.abs.gz"))
    shutil.copy(wroot / "scans/01000d1.ppm", a / "01000d1.ppm")
    shutil.copy(wroot / "scans/01000d1.pts", lms / "Fall2003/01000d1.pts")
    write_abs(b / "01001d1.abs.gz", read_abs(wroot / "scans/01001d1.abs.gz"))
    Image.open(wroot / "scans/01001d1.ppm").save(b / "01001d1.png")
    shutil.copy(wroot / "scans/01001d1.pts", b / "01001d1.pts")
    return root, lms


def bosphorus_scan(scan: RangeScan, texture: str) -> RangeScan:
    """A window of an FRGC-layout scan whose pixels carry uv into the full
    photo: texture column = u * W_photo, row = v * H_photo."""
    H, W = scan.shape
    i, j = np.mgrid[R0:R1, C0:C1]
    uv = np.stack([j / W, i / H], axis=-1)
    return RangeScan(scan.xyz[R0:R1, C0:C1], scan.valid[R0:R1, C0:C1], Path(texture), uv)


@pytest.fixture(scope="module")
def bosphorus(world, tmp_path_factory):
    wroot, records = world
    root = tmp_path_factory.mktemp("bosphorus")
    named = {"Nose tip": 30, "Outer right eye corner": 36, "Outer left eye corner": 45,
             "Right mouth corner": 48, "Left mouth corner": 54}
    for stem, name in zip(STEMS, BOSPHORUS):
        folder = root / name.split("_")[0]
        folder.mkdir()
        scan = read_abs(wroot / f"scans/{stem}.abs.gz")
        write_bnt(folder / f"{name}.bnt", bosphorus_scan(scan, f"{name}.png"))
        Image.open(wroot / f"scans/{stem}.ppm").save(folder / f"{name}.png")
        shutil.copy(wroot / f"scans/{stem}.pts", folder / f"{name}.pts")
        l2 = np.array(records[stem]["landmarks_2d"])[list(named.values())]
        l3 = np.array(records[stem]["landmarks_3d"])[list(named.values())]
        write_landmarks(folder / f"{name}.lm2", Landmarks(l2, list(named)))
        write_landmarks(folder / f"{name}.lm3", Landmarks(l3, list(named)))
    return root


def lifting_error(gt, record) -> float:
    """Median distance (mm) between the lifted landmarks and the world's
    exact 3D landmarks (some sit where the scan has holes, e.g. eye corners)."""
    return float(np.median(np.linalg.norm(gt.landmarks_3d - np.array(record["landmarks_3d"]),
                                          axis=1)))


# ------------------------------------------------------------------ sources

def test_synthetic_world_uses_its_own_coarse_fits(world):
    root, records = world
    specs = S.synthetic_world(root)
    assert [s.pair_id for s in specs] == list(STEMS)
    assert [s.subject for s in specs] == ["01000", "01001"]
    assert pickle.loads(pickle.dumps(specs)) == specs  # specs travel to worker processes
    pair = S.load(specs[0])
    model = load_model(root / "world_model.npz")
    assert pair.scan.shape == (480, 640) and pair.photo.shape == (480, 640, 3)
    np.testing.assert_allclose(pair.landmarks_2d, records["01000d1"]["landmarks_2d"], atol=1e-9)
    np.testing.assert_array_equal(pair.coarse_landmark_vertices, model.landmarks_68)
    np.testing.assert_array_equal(pair.coarse_mesh.faces, model.faces)
    assert pair.source["coarse"].endswith("coarse/01000d1.ply")


def test_frgc_directory(world, frgc):
    wroot, records = world
    root, lms = frgc
    specs = S.frgc_directory(root, landmarks_dir=lms)
    assert [(s.pair_id, s.subject) for s in specs] == [("01000d1", "01000"), ("01001d1", "01001")]
    assert specs[0].landmarks == str(lms / "Fall2003/01000d1.pts")  # mirrored landmarks tree
    assert specs[1].target.endswith("01001d1.abs.gz") and specs[1].photo.endswith(".png")
    coarse = S.CoarseSource(coarse_dir=wroot / "coarse",
                            landmark_vertices=wroot / "world_model.npz")
    pairs = [S.load(s, coarse) for s in specs]
    for pair, stem in zip(pairs, STEMS):
        original = read_abs(wroot / f"scans/{stem}.abs.gz")
        np.testing.assert_array_equal(pair.scan.valid, original.valid)
        np.testing.assert_allclose(pair.scan.xyz[original.valid], original.xyz[original.valid],
                                   atol=1e-6)  # 6 decimals in the file
        assert pair.scan.texture_path == Path(pair.source["photo"])
        assert pair.landmarks_2d.shape == (68, 2) and pair.photo.shape == (480, 640, 3)
        assert pair.coarse_landmark_vertices.shape == (68,)
    # the png photo holds the same pixels as the world's ppm
    np.testing.assert_array_equal(pairs[1].photo, np.asarray(Image.open(
        wroot / "scans/01001d1.ppm")))
    pair = pairs[1]
    gt = prepare_ground_truth(pair.scan, pair.landmarks_2d)
    assert lifting_error(gt, records["01001d1"]) < 0.5
    side = prepare_coarse(pair.coarse_mesh, pair.coarse_landmark_vertices, pair.landmarks_2d)
    rms = np.sqrt(np.mean(np.sum((side.camera.project(side.landmarks_3d)[:, :2]
                                  - pair.landmarks_2d) ** 2, axis=1)))
    assert rms < 2.0  # the world fitted this mesh to these landmarks + 2 px noise


def test_bosphorus_directory(world, frgc, bosphorus):
    wroot, records = world
    specs = S.bosphorus_directory(bosphorus)
    assert [(s.pair_id, s.subject) for s in specs] == [(BOSPHORUS[0], "bs000"),
                                                        (BOSPHORUS[1], "bs001")]
    coarse = S.CoarseSource(model_path=wroot / "world_model.npz")
    pair = S.load(specs[1], coarse)
    assert pair.subject == "bs001"
    assert pair.source["lm2"].endswith(f"{BOSPHORUS[1]}.lm2")
    assert pair.source["lm3"].endswith(f"{BOSPHORUS[1]}.lm3")
    assert pair.scan.shape == (R1 - R0, C1 - C0) and pair.scan.uv is not None
    assert pair.scan.texture_path.name == f"{BOSPHORUS[1]}.png"
    assert pair.photo.shape == (480, 640, 3) and pair.landmarks_2d.shape == (68, 2)
    # read_bnt undid the upside-down storage: row 0 is the top of the face
    original = read_abs(wroot / "scans/01001d1.abs.gz")
    ok = original.valid[R0:R1, C0:C1]
    np.testing.assert_array_equal(pair.scan.valid, ok)
    np.testing.assert_array_equal(pair.scan.xyz[ok], original.xyz[R0:R1, C0:C1][ok])
    # the same landmarks lifted through uv land where the world put them
    gt = prepare_ground_truth(pair.scan, pair.landmarks_2d)
    assert lifting_error(gt, records["01001d1"]) < 0.5
    side = prepare_coarse(pair.coarse_mesh, pair.coarse_landmark_vertices, pair.landmarks_2d)
    assert side.mesh.n_vertices > 1000


def test_fit_from_model_path(world):
    root, _ = world
    model = load_model(root / "world_model.npz")
    spec = S.synthetic_world(root)[0]
    pair = S.load(spec, S.CoarseSource(model_path=root / "world_model.npz"))
    assert pair.coarse_mesh.n_vertices == model.n_vertices
    np.testing.assert_array_equal(pair.coarse_landmark_vertices, model.landmarks_68)
    assert pair.source["coarse"].startswith(f"fit of {root / 'world_model.npz'}")
    # the refit to the exact landmarks is close to the world's own fit (made
    # with 2 px landmark noise): same model, same identity
    own = load_mesh(root / "coarse/01000d1.ply").vertices[model.landmarks_68]
    refit = pair.coarse_mesh.vertices[model.landmarks_68]
    assert np.sqrt(np.mean(np.sum((own - refit) ** 2, axis=1))) < 2.0
    side = prepare_coarse(pair.coarse_mesh, pair.coarse_landmark_vertices, pair.landmarks_2d)
    rms = np.sqrt(np.mean(np.sum((side.camera.project(side.landmarks_3d)[:, :2]
                                  - pair.landmarks_2d) ** 2, axis=1)))
    assert rms < 1.0


def test_coarse_dir_vertex_indices(world, tmp_path):
    root, _ = world
    spec = S.synthetic_world(root)[0]
    with pytest.raises(FormatError, match=r"01000d1\.landmarks\.txt.*landmark_vertices"):
        S.load(spec, S.CoarseSource(coarse_dir=root / "coarse"))
    model = load_model(root / "world_model.npz")
    # a sidecar beside the mesh, comma separated with a comment
    shutil.copy(root / "coarse/01000d1.ply", tmp_path / "01000d1.ply")
    (tmp_path / "01000d1.landmarks.txt").write_text(
        "# iBUG-68 vertices\n" + ",".join(map(str, model.landmarks_68)) + "\n")
    pair = S.load(spec, S.CoarseSource(coarse_dir=tmp_path))
    np.testing.assert_array_equal(pair.coarse_landmark_vertices, model.landmarks_68)
    # a global index list
    pair = S.load(spec, S.CoarseSource(coarse_dir=root / "coarse",
                                       landmark_vertices=model.landmarks_68.tolist()))
    np.testing.assert_array_equal(pair.coarse_landmark_vertices, model.landmarks_68)
    with pytest.raises(FormatError, match=r"no coarse mesh in .*01001d1\.ply"):
        S.load(S.synthetic_world(root)[1], S.CoarseSource(coarse_dir=tmp_path))
    with pytest.raises(FormatError, match="span .* 9191 vertices"):
        S.load(spec, S.CoarseSource(coarse_dir=root / "coarse",
                                    landmark_vertices=[9191] * 68))


def test_read_vertex_indices(tmp_path):
    idx = np.arange(68) * 3
    np.save(tmp_path / "a.npy", idx)
    np.savez(tmp_path / "b.npz", landmarks_68=idx)
    (tmp_path / "c.txt").write_text("\n".join(map(str, idx)))
    for name in ("a.npy", "b.npz", "c.txt"):
        np.testing.assert_array_equal(S.read_vertex_indices(tmp_path / name), idx)
    (tmp_path / "d.txt").write_text("1 2 3\n")
    with pytest.raises(FormatError, match=r"d\.txt: expected 68 integer .* got 3"):
        S.read_vertex_indices(tmp_path / "d.txt")
    (tmp_path / "e.txt").write_text("1 2 x\n")
    with pytest.raises(FormatError, match=r"e\.txt: cannot read"):
        S.read_vertex_indices(tmp_path / "e.txt")


# ----------------------------------------------------------------- manifest

@pytest.fixture(scope="module")
def manifests(world):
    """pairs.csv / pairs.json in <world>/lists with paths relative to it: a
    scan row, and a mesh-target row (a coarse mesh standing in for a ground
    truth, with its 68 3D landmarks, no photo)."""
    root, _ = world
    lists = root / "lists"
    lists.mkdir()
    model = load_model(root / "world_model.npz")
    mesh = load_mesh(root / "coarse/01001d1.ply")
    np.savetxt(lists / "mesh01001.txt", mesh.vertices[model.landmarks_68])
    rows = [{"target": "../scans/01000d1.abs.gz", "landmarks": "../scans/01000d1.pts",
             "photo": "../scans/01000d1.ppm", "subject": "01000",
             "coarse": "../coarse/01000d1.ply", "coarse_landmarks": "../world_model.npz"},
            {"id": "mesh01001", "target": "../coarse/01001d1.ply",
             "landmarks": "mesh01001.txt", "subject": "01001",
             "coarse": "../coarse/01001d1.ply", "coarse_landmarks": "../world_model.npz"}]
    columns = ["id", "target", "landmarks", "photo", "subject", "coarse", "coarse_landmarks"]
    lines = [",".join(columns)] + [",".join(r.get(c, "") for c in columns) for r in rows]
    (lists / "pairs.csv").write_text("\n".join(lines) + "\n")
    (lists / "pairs.json").write_text(json.dumps({"pairs": rows}))
    return lists


def test_manifest_csv_and_json(world, manifests):
    root, records = world
    csv_specs = S.manifest(manifests / "pairs.csv")
    json_specs = S.manifest(manifests / "pairs.json")
    assert [s.pair_id for s in csv_specs] == ["01000d1", "mesh01001"]
    strip = [(s.pair_id, s.subject, s.target, s.landmarks, s.photo, s.landmarks_3d,
              s.coarse_mesh, s.coarse_landmarks) for s in csv_specs]
    assert strip == [(s.pair_id, s.subject, s.target, s.landmarks, s.photo, s.landmarks_3d,
                      s.coarse_mesh, s.coarse_landmarks) for s in json_specs]
    scan_pair = S.load(csv_specs[0])
    assert Path(scan_pair.source["target"]).resolve() == (root / "scans/01000d1.abs.gz")
    gt = prepare_ground_truth(scan_pair.scan, scan_pair.landmarks_2d)
    assert lifting_error(gt, records["01000d1"]) < 0.5

    mesh_pair = S.load(json_specs[1])
    assert mesh_pair.scan is None and mesh_pair.photo is None
    assert mesh_pair.target_mesh.n_vertices == 9191 and mesh_pair.landmarks_3d.shape == (68, 3)
    assert mesh_pair.source["landmarks_2d"].startswith("projected frontally")
    # synthesized landmarks: the frontal view, nose tip at the centre of a
    # 512 px image, the landmark box's larger side 256 px
    L2, L3 = mesh_pair.landmarks_2d, mesh_pair.landmarks_3d
    cam = fit_orthographic(L2, L3)
    np.testing.assert_allclose(cam.rotation, np.diag([1.0, -1.0, -1.0]), atol=1e-9)
    np.testing.assert_allclose(L2[30], [255.5, 255.5], atol=1e-9)
    assert np.ptp(L2, axis=0).max() == pytest.approx(256.0)
    side = prepare_coarse(mesh_pair.coarse_mesh, mesh_pair.coarse_landmark_vertices, L2)
    assert side.camera.scale == pytest.approx(cam.scale)


def test_manifest_errors(world, tmp_path):
    root, _ = world
    (tmp_path / "a.csv").write_text("subject,landmarks\n01000,x.pts\n")
    with pytest.raises(ValueError, match=r"a\.csv row 1: missing 'target'"):
        S.manifest(tmp_path / "a.csv")
    (tmp_path / "b.json").write_text(json.dumps([{"target": "x.abs", "subject": "1",
                                                  "landmark": "x.pts"}]))
    with pytest.raises(ValueError, match=r"b\.json row 1: unknown column\(s\) 'landmark'"):
        S.manifest(tmp_path / "b.json")
    (tmp_path / "c.json").write_text(json.dumps([{"target": "m.ply", "subject": "1"}]))
    with pytest.raises(ValueError, match="mesh target needs 'landmarks'"):
        S.manifest(tmp_path / "c.json")
    # a missing file is reported when the pair loads, naming file and row
    (tmp_path / "d.csv").write_text(f"target,subject,landmarks\n"
                                    f"{root / 'scans/01000d1.abs.gz'},01000,nowhere.pts\n")
    spec, = S.manifest(tmp_path / "d.csv")
    with pytest.raises(FormatError, match=r"nowhere\.pts: no such file \('landmarks' of "
                                          r"pair 01000d1 \(.*d\.csv row 1\)\)"):
        S.load(spec)


# ------------------------------------------------------------------- errors

def test_missing_landmarks_without_weights(world, tmp_path):
    wroot, _ = world
    no_weights = tmp_path / "weights"
    no_weights.mkdir()
    frgc = tmp_path / "frgc"
    frgc.mkdir()
    shutil.copy(wroot / "scans/01000d1.abs.gz", frgc)
    shutil.copy(wroot / "scans/01000d1.ppm", frgc)
    spec, = S.frgc_directory(frgc, landmark_weights=no_weights)
    assert spec.landmarks is None
    with pytest.raises(S.MissingLandmarksError) as e:
        S.load(spec)
    msg = str(e.value)
    assert str(frgc / "01000d1.pts") in msg and "landmark_weights" in msg and WEIGHTS_ENV in msg
    assert str(no_weights) in msg  # where the weights were looked for
    (frgc / "01000d1.ppm").unlink()
    spec, = S.frgc_directory(frgc)
    with pytest.raises(S.MissingLandmarksError, match=r"01000d1\.pts.* no photo") as e:
        S.load(spec)
    assert str(frgc / "01000d1.ppm") in str(e.value)  # where the photo was looked for
    bos = tmp_path / "bos"
    bos.mkdir()
    write_bnt(bos / "bs000_N_N_0.bnt", bosphorus_scan(read_abs(wroot / "scans/01000d1.abs.gz"),
                                                       "bs000_N_N_0.png"))
    spec, = S.bosphorus_directory(bos)
    with pytest.raises(S.MissingLandmarksError,
                       match=r"header names .*bs000_N_N_0\.png, which is missing"):
        S.load(spec)


def test_bosphorus_without_68_landmarks(bosphorus, tmp_path):
    folder = tmp_path / "bs"
    folder.mkdir()
    for ext in (".bnt", ".png", ".lm2", ".lm3"):
        shutil.copy(bosphorus / "bs000" / f"{BOSPHORUS[0]}{ext}", folder)
    spec, = S.bosphorus_directory(folder, landmark_weights=tmp_path)
    with pytest.raises(S.MissingLandmarksError, match=rf"{BOSPHORUS[0]}\.pts.*landmark_weights"):
        S.load(spec)


def test_corrupt_scans_name_the_file(world, tmp_path):
    wroot, _ = world
    root = tmp_path / "frgc"
    root.mkdir()
    (root / "04000d1.abs.gz").write_bytes(b"not gzip at all")
    raw = gzip.decompress((wroot / "scans/01000d1.abs.gz").read_bytes())
    (root / "04001d1.abs").write_bytes(raw[:len(raw) // 2])  # truncated
    (root / "04002d1.bnt").write_bytes(b"\x01\x00")
    for stem in ("04000d1", "04001d1"):
        shutil.copy(wroot / "scans/01000d1.pts", root / f"{stem}.pts")
    bad_gz, truncated = S.frgc_directory(root)
    with pytest.raises(FormatError, match=r"04000d1\.abs\.gz: cannot read"):
        S.load(bad_gz)
    with pytest.raises(FormatError, match=r"04001d1\.abs: .*truncated file"):
        S.load(truncated)
    bnt, = S.bosphorus_directory(root)
    with pytest.raises(FormatError, match=r"04002d1\.bnt: truncated header"):
        S.load(bnt)


def test_duplicate_pair_ids_and_empty_folders(world, tmp_path):
    wroot, _ = world
    (tmp_path / "a").mkdir()
    shutil.copy(wroot / "scans/01000d1.abs.gz", tmp_path / "a")
    shutil.copy(wroot / "scans/01000d1.abs.gz", tmp_path)
    with pytest.raises(ValueError, match="pair id '01000d1' occurs twice"):
        S.frgc_directory(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no \*\.bnt files"):
        S.bosphorus_directory(tmp_path)


# ------------------------------------------------------------- dce-build

def _arrays(path):
    """Every dataset of an HDF5 file, read into memory, by name."""
    import h5py

    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}


def _assert_same_file(a, b):
    A, B = _arrays(a), _arrays(b)
    assert A.keys() == B.keys()
    for name in A:
        np.testing.assert_array_equal(A[name], B[name], err_msg=name)


def _build(*args):
    from dce.cli.build import main

    return main([*map(str, args), "--workers", "1", "--size", "64", "--poses", "1"])


def test_build_frgc_and_bosphorus_folders(world, frgc, bosphorus, tmp_path):
    from dce.gan.h5format import validate

    wroot, _ = world
    frgc_root, landmarks = frgc
    model = wroot / "world_model.npz"
    assert _build("frgc", frgc_root, "--landmarks-dir", landmarks, "--model", model,
                  "-o", tmp_path / "frgc.h5") == 0
    assert _build("bosphorus", bosphorus, "--model", model, "-o", tmp_path / "bos.h5") == 0
    for name in ("frgc.h5", "bos.h5"):
        summary = validate(tmp_path / name)
        assert summary["n_samples"] == 4 and summary["n_subjects"] == 2  # 2 pairs x 2 poses
        data = _arrays(tmp_path / name)
        train = set(data["subject"][data["split"] == 0])
        test = set(data["subject"][data["split"] == 1])
        assert train and test and not train & test


def test_build_resumes_after_an_interrupt_and_shards_merge_to_the_same_file(
        world, tmp_path, monkeypatch):
    from dce.cli import build
    from dce.geom import build as library

    wroot, _ = world
    assert _build("synthetic", "--world", wroot, "-o", tmp_path / "whole.h5") == 0

    real, calls = library.build_pair, []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(library, "build_pair", interrupted)
    assert _build("synthetic", "--world", wroot, "-o", tmp_path / "resumed.h5") == 130
    assert not (tmp_path / "resumed.h5").exists()  # nothing that looks complete
    monkeypatch.setattr(library, "build_pair", real)
    assert _build("synthetic", "--world", wroot, "-o", tmp_path / "resumed.h5") == 0
    _assert_same_file(tmp_path / "whole.h5", tmp_path / "resumed.h5")

    for k in (1, 2):
        assert _build("synthetic", "--world", wroot, "-o", tmp_path / "part.h5",
                      "--shard", f"{k}/2") == 0
    shards = sorted(tmp_path.glob("part.shard*.h5"))
    assert len(shards) == 2
    assert build.main(["merge", str(tmp_path / "merged.h5"), *map(str, shards)]) == 0
    _assert_same_file(tmp_path / "whole.h5", tmp_path / "merged.h5")


def test_library_build_equals_the_command_and_knows_when_it_is_done(world, tmp_path):
    """dce.geom.build.build, the library entry point, writes the file the
    command writes; a second call finds it up to date; a build whose every
    pair fails raises EmptyBuildError listing them."""
    from dce.geom import build, sources, store
    from dce.geom.dataset import BuildConfig

    wroot, _ = world
    assert _build("synthetic", "--world", wroot, "-o", tmp_path / "cli.h5") == 0
    specs = sources.synthetic_world(wroot)
    config = BuildConfig(size=64, poses=1)
    report = build.build(specs, tmp_path / "lib.h5", config, command="synthetic",
                         progress=False, log=lambda *a: None)
    assert (report.pairs, report.written, report.failures) == (2, 4, [])
    assert report.summary["n_samples"] == 4 and not report.up_to_date
    _assert_same_file(tmp_path / "cli.h5", tmp_path / "lib.h5")
    again = build.build(specs, tmp_path / "lib.h5", config, command="synthetic",
                        progress=False, log=lambda *a: None)
    assert again.up_to_date and again.written == 0

    missing = [dataclasses.replace(s, target=str(tmp_path / "gone.abs")) for s in specs]
    with pytest.raises(store.EmptyBuildError) as caught:
        build.build(missing, tmp_path / "none.h5", config, progress=False, log=lambda *a: None)
    assert sorted(p for p, _ in caught.value.failures) == sorted(s.pair_id for s in specs)
    assert not (tmp_path / "none.h5").exists()


def test_build_reports_and_skips_a_corrupt_scan(frgc, world, tmp_path, capsys):
    frgc_root, landmarks = frgc
    copy = tmp_path / "frgc"
    shutil.copytree(frgc_root, copy)
    bad = copy / "Fall2003" / "01000d1.abs"
    bad.write_bytes(bad.read_bytes()[:5000])
    code = _build("frgc", copy, "--landmarks-dir", landmarks, "--model",
                  world[0] / "world_model.npz", "-o", tmp_path / "f.h5")
    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED 01000d1" in err and "01000d1.abs" in err
    from dce.gan.h5format import validate
    assert validate(tmp_path / "f.h5")["n_samples"] == 2  # the good pair, 2 poses


# ------------------------------------------------------------------ real-data gaps (issue 11)

def test_bosphorus_without_its_photo_names_it_then_builds_with_photo_size(
        world, bosphorus, tmp_path, capsys):
    """A Bosphorus folder with .pts landmarks but no photos: each pair fails
    naming the photo its .bnt header points to and the way out; a build in
    which every pair fails writes no file; --photo-size gives the same
    samples as the photos themselves (in DCE they only size the lifting)."""
    model = world[0] / "world_model.npz"
    copy = tmp_path / "bos"
    shutil.copytree(bosphorus, copy)
    for png in copy.rglob("*.png"):
        png.unlink()
    assert _build("bosphorus", copy, "--model", model, "-o", tmp_path / "none.h5") == 1
    err = capsys.readouterr().err
    assert "bs000_N_N_0.png is missing" in err and "--photo-size H W" in err
    assert "no sample was built, so no file is written" in err
    assert not (tmp_path / "none.h5").exists()
    assert not list(tmp_path.glob("none.h5*"))  # nor a partial build
    assert _build("bosphorus", copy, "--model", model, "--photo-size", 480, 640,
                  "-o", tmp_path / "sized.h5") == 0
    assert _build("bosphorus", bosphorus, "--model", model, "-o", tmp_path / "photo.h5") == 0
    a, b = _arrays(tmp_path / "sized.h5"), _arrays(tmp_path / "photo.h5")
    for name in ("coarse", "target", "target_mask", "target_camera"):
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_fit_gate_skips_or_flags_a_failing_fit(world, tmp_path, capsys):
    """--gate-eye-mm 10 20 cannot hold for a face: with the default
    --fit-gate skip every pair fails naming the reason; with flag the pairs
    are kept, reported, and their provenance says why."""
    root = world[0]
    model = root / "world_model.npz"
    args = ("synthetic", "--world", root, "--model", model, "--gate-eye-mm", 10, 20)
    assert _build(*args, "-o", tmp_path / "skip.h5") == 1
    err = capsys.readouterr().err
    assert "FAILED 01000d1" in err and "fails the quality gate" in err
    assert "outside 10-20 mm" in err and not (tmp_path / "skip.h5").exists()
    assert _build(*args, "--fit-gate", "flag", "-o", tmp_path / "flag.h5") == 0
    captured = capsys.readouterr()
    assert "FLAGGED 01000d1 (kept)" in captured.err and "2 flagged" in captured.out
    provenance = [json.loads(p) for p in _arrays(tmp_path / "flag.h5")["provenance"]]
    assert all(p["fit_gate"].startswith("FAILED: outer-eye distance") for p in provenance)
    assert _build(*args[:-3], "-o", tmp_path / "pass.h5") == 0  # the default limits hold
    provenance = [json.loads(p) for p in _arrays(tmp_path / "pass.h5")["provenance"]]
    assert {p["fit_gate"] for p in provenance} == {"passed"}


def test_a_side_with_a_tiny_mask_is_refused(world):
    """A sample whose face covers less than min_face_fraction of the image
    (an empty or broken scan) is refused, naming the pair, pose and side."""
    from dce.geom.dataset import BuildConfig, pair_samples, prepare_pair

    spec = S.synthetic_world(world[0])[0]
    pair = S.load(spec)
    config = BuildConfig(size=64, poses=0)
    coarse, target = prepare_pair(pair, config)
    (sample,) = pair_samples(pair.pair_id, pair.subject, coarse, target, pair.landmarks_2d,
                             config)
    covered = min(sample.coarse_mask.mean(), sample.target_mask.mean())
    assert 0.2 < covered < 0.9
    strict = BuildConfig(size=64, poses=0, min_face_fraction=float(covered) + 0.01)
    with pytest.raises(ValueError, match=r"01000d1/pose0: the (coarse|target) side covers "
                                         r"[0-9.]+ % of the image .*refused"):
        pair_samples(pair.pair_id, pair.subject, coarse, target, pair.landmarks_2d, strict)
