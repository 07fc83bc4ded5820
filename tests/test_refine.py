"""Depth image -> mesh reconstruction (dce.geom.reconstruct) and the
dce-refine command, checked against analytic surfaces and hand counts."""
import json
from pathlib import Path

import igl
import numpy as np
import pytest
from analytic import sphere
from PIL import Image

from dce.cli import refine
from dce.geom.dataset import Sample
from dce.geom.dce import render_dce
from dce.geom.io import Mesh, load_mesh, save_mesh
from dce.geom.normals import face_normals
from dce.geom.projection import FRONTAL, OrthographicCamera, camera_array, posed_camera
from dce.geom.reconstruct import depth_image_mesh, merge_with_coarse

SIZE = 128


def sphere_mesh(radius, centre, n=10_000):
    s = sphere(radius, n)
    return Mesh(s.V + centre, s.F)


def circumradii(V, F):
    """(m,) circumradius of each triangle: abc / (4 area)."""
    A, B, C = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    a, b, c = (np.linalg.norm(B - C, axis=1), np.linalg.norm(A - C, axis=1),
               np.linalg.norm(A - B, axis=1))
    area = 0.5 * np.linalg.norm(np.cross(B - A, C - A), axis=1)
    return a * b * c / (4 * area)


def distance_to_mesh(P, mesh):
    d2, _, _ = igl.point_mesh_squared_distance(
        np.ascontiguousarray(P, dtype=np.float64), mesh.vertices,
        mesh.faces.astype(np.int64))
    return np.sqrt(d2)


def region_of(pixels, shape):
    region = np.zeros(shape, dtype=bool)
    region[pixels[:, 0], pixels[:, 1]] = True
    return region


# ------------------------------------------------------------- reconstruction


def test_reconstructed_sphere_lies_on_the_sphere():
    R, centre = 50.0, np.array([10.0, -20.0, 30.0])
    mesh = sphere_mesh(R, centre)
    camera = posed_camera(centre, 2.0, 256, yaw=30, pitch=10, roll=5)
    image = render_dce(mesh, camera, 256, "D")
    grid, pixels = depth_image_mesh(image.physical("depth"), image.mask, camera)

    # The image samples the triangulated sphere, whose triangles lie between
    # the sphere and the planes at sqrt(R^2 - rho^2) from the centre (rho: a
    # triangle's circumradius); 1e-5 mm allows for the image's float32
    # storage of the normalized depth (about 3e-6 mm at a 50 mm scale).
    rho = circumradii(mesh.vertices, mesh.faces).max()
    inner = np.sqrt(R * R - rho * rho)
    r = np.linalg.norm(grid.vertices - centre, axis=1)
    assert R - inner < 0.015  # the bound is tight: 0.0142 mm for this icosphere
    assert r.max() <= R + 1e-5 and r.min() >= inner - 1e-5, (r.min() - R, r.max() - R)
    # Each vertex projects back onto the centre of its own pixel.
    P = camera.project(grid.vertices)
    np.testing.assert_allclose(P[:, :2], pixels[:, ::-1], atol=1e-9)
    assert image.mask[pixels[:, 0], pixels[:, 1]].all()
    # All but the steep rim's pixels become vertices; every face faces the viewer.
    assert len(grid.vertices) > 0.97 * image.mask.sum()
    assert (face_normals(grid.vertices, grid.faces) @ camera.view_direction > 0).all()
    assert np.array_equal(np.unique(grid.faces), np.arange(grid.n_vertices))


def test_grid_counts_steps_and_three_pixel_blocks():
    camera = OrthographicCamera(1.0, FRONTAL, np.zeros(2))  # 1 px per mm: default jump 5 mm
    rows, cols = np.mgrid[0:6, 0:8]
    # Left half: a 2 mm-per-pixel slope (kept); right half 60 mm behind (a step).
    depth = np.where(cols < 4, 100.0 + 2.0 * cols, 160.0)
    mask = np.ones((6, 8), dtype=bool)
    grid, pixels = depth_image_mesh(depth, mask, camera)
    # 6 x 4 pixels on each side: 5 x 3 blocks x 2 triangles each; the 5 blocks
    # across the step are dropped.
    assert grid.n_faces == 2 * (2 * 5 * 3)
    assert np.ptp(depth.ravel()[pixels[:, 0] * 8 + pixels[:, 1]][grid.faces], axis=1).max() <= 4
    # With a threshold above the step, the 5 blocks come back.
    assert depth_image_mesh(depth, mask, camera, max_jump_mm=61.0)[0].n_faces == 70

    # A 2x2 block missing one corner gives the one triangle of the other three.
    for missing in range(4):
        m = np.ones((2, 2), dtype=bool)
        m.ravel()[missing] = False
        tri, px = depth_image_mesh(np.full((2, 2), 50.0), m, camera)
        assert tri.n_faces == 1 and len(px) == 3
        assert set(map(tuple, px)) == set(map(tuple, np.argwhere(m)))
        assert face_normals(tri.vertices, tri.faces)[0] @ camera.view_direction == pytest.approx(1)
    # An isolated pixel is in no triangle and becomes no vertex.
    lone = np.zeros((3, 3), dtype=bool)
    lone[1, 1] = True
    assert depth_image_mesh(np.zeros((3, 3)), lone, camera)[0].n_vertices == 0


def test_merge_keeps_what_the_refined_grid_does_not_cover():
    R, centre = 40.0, np.zeros(3)
    coarse = sphere_mesh(R, centre)
    camera = posed_camera(centre, 1.2, SIZE, yaw=20)
    image = render_dce(coarse, camera, SIZE, "D")
    depth = image.physical("depth")
    half = image.mask & (np.arange(SIZE) < SIZE // 2)[None, :]  # the grid covers the left half
    grid, pixels = depth_image_mesh(depth, half, camera)
    merged, kept = merge_with_coarse(grid, region_of(pixels, half.shape), coarse, camera)

    # No unreferenced vertices; every vertex is on the sphere's triangulation.
    assert np.array_equal(np.unique(merged.faces), np.arange(merged.n_vertices))
    assert distance_to_mesh(merged.vertices, coarse).max() < 1e-5
    # The back hemisphere and the right half of the front are kept whole;
    # front faces well inside the covered half are replaced.
    P = camera.project(coarse.vertices)
    centroid = P[coarse.faces].mean(axis=1)
    toward = (coarse.vertices[coarse.faces].mean(axis=1) - centre) @ camera.view_direction
    assert kept[toward < 0].all()
    assert kept[centroid[:, 0] > SIZE // 2 + 1].all()
    c = (SIZE - 1) / 2
    inside = (toward > 0) & (centroid[:, 0] < SIZE // 2 - 3) \
        & (np.hypot(centroid[:, 0] - c, centroid[:, 1] - c) < 1.2 * R - 3)
    assert inside.sum() > 1000 and not kept[inside].any()
    # The union shows the same silhouette and the same surface as the coarse mesh.
    again = render_dce(merged, camera, SIZE, "D")
    assert np.array_equal(again.mask, image.mask)
    assert np.nanmax(np.abs(again.physical("depth") - depth)) < 0.05


def test_merge_keeps_occluded_coarse_faces():
    # Sphere A (r 20) in front of sphere B (r 40): B's front faces hidden
    # behind A are in the covered region but not seen, so they stay.
    a = sphere_mesh(20.0, np.array([0.0, 0.0, 80.0]), n=2562)
    b = sphere_mesh(40.0, np.zeros(3))
    coarse = Mesh(np.vstack([a.vertices, b.vertices]),
                  np.vstack([a.faces, b.faces + a.n_vertices]))
    camera = posed_camera(np.zeros(3), 1.2, SIZE)
    image = render_dce(coarse, camera, SIZE, "D")
    grid, pixels = depth_image_mesh(image.physical("depth"), image.mask, camera)
    merged, kept = merge_with_coarse(grid, region_of(pixels, image.mask.shape), coarse, camera)
    kept_b = kept[len(a.faces):]
    V = b.vertices[b.faces].mean(axis=1)
    front = V[:, 2] > 0
    behind_a = front & (np.hypot(V[:, 0], V[:, 1]) < 20.0 - 3.0)
    # (Away from B's rim, steeper than 60 degrees, where the grid may drop
    # triangles as discontinuities and the coarse faces rightly stay.)
    visible = front & (np.hypot(V[:, 0], V[:, 1]) > 20.0 + 3.0) & (V[:, 2] > 20.0)
    assert behind_a.sum() > 50 and kept_b[behind_a].all()
    assert visible.sum() > 500 and not kept_b[visible].any()
    assert np.array_equal(np.unique(merged.faces), np.arange(merged.n_vertices))


# ------------------------------------------------------------------ dce-refine


def head(k):
    """An ellipsoidal 'head' (mm, facing +Z), slightly different per subject."""
    s = sphere(1.0, 2562)
    return Mesh(s.V * np.array([60.0 + 3 * k, 80.0, 55.0]), s.F)


def bumpy(mesh):
    """The head with bumps of up to 4 mm along the radial direction: a target."""
    V = mesh.vertices
    u = V / np.linalg.norm(V, axis=1, keepdims=True)
    return Mesh(V + 4.0 * u * (np.sin(V[:, :1] / 6.0) * np.cos(V[:, 1:2] / 7.0)), mesh.faces)


def write_pairs(path, channels, size=32, config=None):
    from dce.geom.store import PairWriter

    with PairWriter(path, channels, size, size, config or {"test": "analytic heads"},
                    compression=None) as writer:
        for k in range(3):
            coarse = head(k)
            target = bumpy(coarse)
            for pose, yaw in enumerate((0.0, 25.0)):
                camera = posed_camera(np.zeros(3), size / 200.0, size, yaw=yaw)
                reference = camera.project(coarse.vertices)[:, 2].min() - 10.0
                c, t = (render_dce(m, camera, size, channels, depth_reference=reference)
                        for m in (coarse, target))
                writer.append(Sample(
                    f"s{k}/pose{pose}", f"s{k}", f"s{k}", c.image.transpose(2, 0, 1),
                    t.image.transpose(2, 0, 1), c.mask, t.mask, tuple(channels), c.offset,
                    c.scale, t.offset, t.scale, np.array([yaw, 0.0, 0.0]), camera_array(camera),
                    camera_array(camera)))
        writer.finalize(seed=0)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny pair file of analytic heads and an iteration-0 residual
    checkpoint (its refiner returns the coarse image exactly)."""
    from dce.gan.train import Trainer, TrainSettings

    root = tmp_path_factory.mktemp("refine")
    pairs = write_pairs(root / "pairs.h5", ("depth", "curvature", "elevation"))
    trainer = Trainer(TrainSettings(data=str(pairs), out=str(root / "run"), preset="cpu",
                                    max_resolution=16, workers=0, batch_size=2),
                      log=lambda *a: None)
    return {"root": root, "pairs": pairs, "checkpoint": trainer.save()}


def test_refine_pair_sample_with_an_identity_checkpoint(setup, tmp_path, capsys):
    import h5py

    out = tmp_path / "out"
    assert refine.main([str(setup["checkpoint"]), "--pairs", str(setup["pairs"]),
                        "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    with h5py.File(setup["pairs"]) as f:  # the default sample: the first of the test split
        first_test = f["sample_id"].asstr()[int(np.flatnonzero(f["split"][()] == 1)[0])]
    assert f"sample {first_test} " in printed
    # The untrained residual generator returns the coarse image, so both MAEs
    # are equal (and non-zero: the target has 4 mm bumps).
    mae = printed.split("face pixels: coarse ")[1].split(" mm, refined ")
    assert float(mae[0]) == float(mae[1].split(" mm")[0]) > 0.1

    refined, coarse = load_mesh(out / "refined.ply"), load_mesh(out / "coarse.ply")
    # The refined mesh is the coarse depth grid again, lying on the analytic
    # head's triangulation (1e-3 mm: the pair file's 16-bit depth step is
    # 50 mm / 32767.5 = 1.5e-3 mm, half of it 7.6e-4 mm).
    np.testing.assert_array_equal(refined.faces, coarse.faces)
    np.testing.assert_allclose(refined.vertices, coarse.vertices, atol=1e-12)
    subject = int(first_test[1])
    assert distance_to_mesh(refined.vertices, head(subject)).max() < 1e-3
    assert np.array_equal(np.unique(refined.faces), np.arange(refined.n_vertices))
    side = np.asarray(Image.open(out / "side_by_side.png"))
    assert side.shape == (256, 3 * 260, 3) and side.max() > 0  # coarse | refined | target
    assert np.asarray(Image.open(out / "refined_dce.png")).shape[0] == 3 * 32
    assert json.loads((out / "camera.json").read_text())["scale"] == pytest.approx(32 / 200)


def test_the_normalization_travels_with_the_checkpoint(tmp_path, capsys):
    """A checkpoint knows how its training images were made: dce-refine
    --mesh renders with it unasked, and a different --depth-scale, or a pair
    file built with another, is refused with both values named."""
    import h5py

    from dce.gan import h5format
    from dce.gan.evaluate import evaluate
    from dce.gan.inference import Refiner
    from dce.gan.train import Trainer, TrainSettings

    built = {"depth_scale": 50.0, "curvature_scale": 0.1, "curvature": "mean", "margin": 0.25}
    pairs = write_pairs(tmp_path / "pairs.h5", ("depth", "curvature", "elevation"), 32, built)
    checkpoint = Trainer(TrainSettings(data=str(pairs), out=str(tmp_path / "run"), preset="cpu",
                                       max_resolution=16, workers=0, batch_size=2),
                         log=lambda *a: None).save()
    assert Refiner(checkpoint).normalization == {
        **built, "channels": ["depth", "curvature", "elevation"], "size": [32, 32]}

    save_mesh(tmp_path / "head.ply", head(1))
    camera = posed_camera(np.zeros(3), 32 / 200.0, 32, yaw=-20)
    (tmp_path / "cam.json").write_text(json.dumps(camera.to_dict()))
    mesh_args = [str(checkpoint), "--mesh", str(tmp_path / "head.ply"), "--camera",
                 str(tmp_path / "cam.json")]
    assert refine.main(mesh_args + ["-o", str(tmp_path / "out")]) == 0
    assert "does not record" not in capsys.readouterr().out
    # No --size: the checkpoint's 32 px training images (coarse and refined rows).
    assert np.asarray(Image.open(tmp_path / "out" / "refined_dce.png")).shape[0] == 2 * 32

    assert refine.main(mesh_args + ["--depth-scale", "30", "-o", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "depth_scale=30.0" in err and "depth_scale=50.0" in err and str(checkpoint) in err

    other = tmp_path / "other.h5"
    other.write_bytes(pairs.read_bytes())
    with h5py.File(other, "r+") as f:
        f.attrs["config"] = json.dumps({**built, "depth_scale": 30.0}, sort_keys=True)
        h5format.write_text_digest(f, int(f.attrs["n_samples"]))
    with pytest.raises(h5format.NormalizationMismatch, match=r"depth_scale=30\.0.*50\.0"):
        evaluate(checkpoint, other)
    assert refine.main([str(checkpoint), "--pairs", str(other), "-o", str(tmp_path / "o3")]) == 2
    assert str(other) in capsys.readouterr().err


def test_a_checkpoint_without_normalization_gets_the_build_defaults(setup, tmp_path, capsys):
    """The module's checkpoint was trained on a file whose config records no
    normalization: --mesh says so and uses the build's defaults."""
    save_mesh(tmp_path / "head.ply", head(0))
    camera = posed_camera(np.zeros(3), 64 / 200.0, 64)
    (tmp_path / "cam.json").write_text(json.dumps(camera.to_dict()))
    assert refine.main([str(setup["checkpoint"]), "--mesh", str(tmp_path / "head.ply"),
                        "--camera", str(tmp_path / "cam.json"), "--size", "64",
                        "-o", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "does not record" in printed and "depth_scale 50.0" in printed


def test_refine_mesh_with_a_camera_writes_obj(setup, tmp_path):
    coarse = head(1)
    mesh_path = tmp_path / "head.ply"
    save_mesh(mesh_path, coarse)
    camera = posed_camera(np.zeros(3), 64 / 200.0, 64, yaw=-20)
    (tmp_path / "cam.json").write_text(json.dumps(camera.to_dict()))
    out = tmp_path / "out"
    assert refine.main([str(setup["checkpoint"]), "--mesh", str(mesh_path), "--camera",
                        str(tmp_path / "cam.json"), "--size", "64", "--format", "obj",
                        "-o", str(out)]) == 0
    refined = load_mesh(out / "refined.obj")
    assert load_mesh(out / "coarse.obj").n_faces == coarse.n_faces  # no landmarks: no crop
    # Refined grid (rendered float32 depth, 3e-6 mm) and kept coarse faces
    # (exact) all lie on the coarse surface; the back of the head is kept.
    assert distance_to_mesh(refined.vertices, coarse).max() < 1e-4
    assert refined.vertices[:, 2].min() < -50.0
    assert np.array_equal(np.unique(refined.faces), np.arange(refined.n_vertices))
    assert np.asarray(Image.open(out / "side_by_side.png")).shape == (256, 2 * 260, 3)


def test_refine_real_face_from_landmarks(setup, tmp_path, shared_data):
    from dce.geom.io import Landmarks, read_landmarks, write_landmarks
    from dce.geom.sources import frontal_landmarks

    folder = shared_data / "menpo-james"
    points = read_landmarks(folder / "james_landmarks_68.txt").points
    write_landmarks(tmp_path / "photo.pts", Landmarks(frontal_landmarks(points)))
    out = tmp_path / "out"
    assert refine.main([str(setup["checkpoint"]), "--mesh", str(folder / "james.ply"),
                        "--landmarks", str(tmp_path / "photo.pts"), "--landmarks-3d",
                        str(folder / "james_landmarks_68.txt"), "--size", "32",
                        "-o", str(out)]) == 0
    coarse, refined = load_mesh(out / "coarse.ply"), load_mesh(out / "refined.ply")
    assert coarse.n_vertices < load_mesh(folder / "james.ply").n_vertices  # cropped
    assert distance_to_mesh(refined.vertices, coarse).max() < 1e-4
    assert refined.colors is not None  # the coarse mesh's colours carry over
    # The mesh's landmarks are written beside it (the identity moves none).
    for name in ("coarse.landmarks.txt", "refined.landmarks.txt"):
        np.testing.assert_array_equal(read_landmarks(out / name).points, points)


def test_bad_inputs_give_clean_messages(setup, tmp_path, capsys):
    ckpt, pairs = str(setup["checkpoint"]), str(setup["pairs"])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    bad_mesh = tmp_path / "bad.ply"
    bad_mesh.write_text("ply\nformat ascii 1.0\nelement vertex 3\nend_header\n1 2\n")
    bad_camera = tmp_path / "cam.json"
    bad_camera.write_text('{"scale": 1.0}')
    depth_only = write_pairs(tmp_path / "depth.h5", ("depth",), size=8)
    cases = [
        ([str(tmp_path / "missing.pt"), "--pairs", pairs], "missing.pt"),
        ([str(garbage), "--pairs", pairs], "garbage.pt"),
        ([ckpt, "--pairs", str(tmp_path / "none.h5")], "none.h5"),
        ([ckpt, "--pairs", pairs, "--sample", "nobody/pose0"], "pairs.h5"),
        ([ckpt, "--pairs", pairs, "--sample", "99"], "pairs.h5"),
        ([ckpt, "--pairs", pairs, "--mirror-average"], Path(ckpt).name),  # no detail stage
        ([ckpt, "--pairs", str(depth_only)], "depth.h5"),
        ([ckpt, "--mesh", str(bad_mesh), "--camera", str(bad_camera)], "bad.ply"),
        ([ckpt, "--mesh", str(tmp_path / "nothing.ply"), "--camera", str(bad_camera)],
         "nothing.ply"),
    ]
    save_mesh(tmp_path / "head.ply", head(0))
    cases.append(([ckpt, "--mesh", str(tmp_path / "head.ply"), "--camera", str(bad_camera)],
                  "cam.json"))
    errors = {}
    for argv, name in cases:
        assert refine.main(argv + ["-o", str(tmp_path / "out")]) == 2, argv
        err = errors[name] = capsys.readouterr().err
        assert err.startswith("dce-refine: ") and name in err and "Traceback" not in err, err
    assert "lacks ['curvature', 'elevation']" in errors["depth.h5"]
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as stop:
        refine.main([ckpt, "--mesh", str(tmp_path / "head.ply")])  # no camera source
    assert stop.value.code == 2
    assert "exactly one of --camera" in capsys.readouterr().err


# ------------------------------------------- library pieces dce-refine uses


def test_camera_array_round_trip():
    from dce.geom.projection import camera_from_array

    hand = camera_array(OrthographicCamera(2.0, FRONTAL, [3.0, 4.0]))
    np.testing.assert_array_equal(hand, [[1, 0, 0], [0, -1, 0], [0, 0, -1], [2, 3, 4]])
    camera = posed_camera(np.array([1.0, 2.0, 3.0]), 0.7, 64, yaw=30, pitch=-10, roll=5)
    back = camera_from_array(camera_array(camera))
    assert back.scale == camera.scale
    np.testing.assert_array_equal(back.rotation, camera.rotation)
    np.testing.assert_array_equal(back.translation, camera.translation)


def test_camera_json_round_trip_and_errors(tmp_path):
    from dce.geom.io import FormatError
    from dce.geom.projection import read_camera, write_camera

    camera = posed_camera(np.zeros(3), 0.32, 64, yaw=-20, pitch=7)
    back = read_camera(write_camera(tmp_path / "camera.json", camera))
    assert back.scale == camera.scale
    np.testing.assert_array_equal(back.rotation, camera.rotation)
    np.testing.assert_array_equal(back.translation, camera.translation)
    mirror = tmp_path / "mirror.json"  # det -1: not a rotation
    mirror.write_text(json.dumps(OrthographicCamera(1.0, np.eye(3) * [1, 1, -1],
                                                    [0.0, 0.0]).to_dict()))
    for path, problem in ((mirror, "proper 3x3 rotation"), (tmp_path / "none.json", "no such")):
        with pytest.raises(FormatError, match=problem) as error:
            read_camera(path)
        assert path.name in str(error.value)


def test_dce_image_select_and_rgb():
    from dce.geom.dce import DCEImage

    image = np.array([[[0.5, -1.0, 0.0, 1.0]]], dtype=np.float32)  # one pixel
    dce = DCEImage(image, np.ones((1, 1), bool), ("depth", "r", "g", "b"),
                   np.array([60.0, 0.5, 0.5, 0.5]), np.array([-50.0, 0.5, 0.5, 0.5]), None)
    picked = dce.select(("b", "depth"))
    assert picked.channels == ("b", "depth")
    np.testing.assert_array_equal(picked.image, [[[1.0, 0.5]]])
    np.testing.assert_array_equal(picked.offset, [0.5, 60.0])
    np.testing.assert_array_equal(picked.scale, [0.5, -50.0])
    assert picked.physical("depth")[0, 0] == 60.0 - 25.0
    np.testing.assert_array_equal(dce.rgb(), [[[0.0, 0.5, 1.0]]])
    assert picked.rgb() is None
    with pytest.raises(ValueError, match=r"lacks \['curvature'\]"):
        dce.select(("depth", "curvature"))


def test_read_sample_gives_the_written_images(tmp_path):
    import h5py

    from dce.gan.h5format import PairFileError
    from dce.geom.store import read_sample

    channels = ("depth", "curvature", "elevation")
    path = write_pairs(tmp_path / "pairs.h5", channels)
    got = read_sample(path, "s1/pose1")
    assert (got.sample_id, got.subject) == ("s1/pose1", "s1")
    camera = posed_camera(np.zeros(3), 32 / 200.0, 32, yaw=25.0)  # as write_pairs renders it
    reference = camera.project(head(1).vertices)[:, 2].min() - 10.0
    for side, mesh in ((got.coarse, head(1)), (got.target, bumpy(head(1)))):
        want = render_dce(mesh, camera, 32, channels, depth_reference=reference)
        assert side.channels == channels and np.array_equal(side.mask, want.mask)
        # uint16 over [-1, 1]: half a step is 1 / 65535
        assert np.abs(side.image - want.image).max() <= 1.0 / 65535 + 1e-7
        np.testing.assert_array_equal(side.offset, want.offset)
        np.testing.assert_array_equal(side.camera.rotation, camera.rotation)
        np.testing.assert_array_equal(side.camera.translation, camera.translation)
        assert side.camera.scale == camera.scale and side.rgb() is None
    with h5py.File(path) as f:
        ids, split = list(f["sample_id"].asstr()[()]), f["split"][()]
    first_test = ids[int(np.flatnonzero(split == 1)[0])]
    assert read_sample(path).sample_id == first_test and read_sample(path).split == "test"
    assert [read_sample(path, i).split for i in ids] == [("train", "test")[s] for s in split]
    assert read_sample(path, "-1").sample_id == ids[-1] == "s2/pose1"
    assert read_sample(path, "2").sample_id == ids[2]
    for bad in ("nobody/pose0", "6", "-7"):
        with pytest.raises(PairFileError, match="no sample"):
            read_sample(path, bad)


def test_read_mesh_landmarks_indices_or_points(tmp_path):
    from dce.geom.dataset import read_mesh_landmarks
    from dce.geom.io import FormatError, Landmarks, write_landmarks

    mesh = head(0)
    indices = np.arange(68) * 17
    points = mesh.vertices[indices]
    np.save(tmp_path / "lm.npy", indices)
    (tmp_path / "lm_idx.txt").write_text("\n".join(map(str, indices)))
    write_landmarks(tmp_path / "lm_xyz.txt", Landmarks(points))
    for name in ("lm.npy", "lm_idx.txt", "lm_xyz.txt"):
        np.testing.assert_array_equal(read_mesh_landmarks(tmp_path / name, mesh), points)
    write_landmarks(tmp_path / "photo.pts", Landmarks(points[:, :2]))
    with pytest.raises(FormatError, match="photo.pts: holds 68 2D points"):
        read_mesh_landmarks(tmp_path / "photo.pts", mesh)


def test_view_of_a_mesh_with_a_camera():
    from dce.geom.dataset import prepare_view, render_view

    mesh = sphere_mesh(40.0, np.zeros(3))
    mesh.colors = np.tile(np.float32([0.2, 0.4, 0.6]), (mesh.n_vertices, 1))
    camera = posed_camera(np.zeros(3), 1.0, 128)
    side, view = prepare_view(mesh, camera=camera)
    assert view is camera and side.mesh.n_faces == mesh.n_faces  # no landmarks: no crop
    image, rgb = render_view(side, view, 128, "D")
    # Without landmarks the nearest point (the sphere's apex, 40 mm in front
    # of the centre) stands in for the nose tip: reference 10 mm in front,
    # so the apex maps to 1 - 10 / 50 (up to the triangulation's sag).
    assert abs(image.image[image.mask].max() - 0.8) < 2e-3
    np.testing.assert_allclose(rgb[image.mask], np.tile([0.2, 0.4, 0.6], (image.mask.sum(), 1)),
                               atol=1e-6)
    assert not rgb[~image.mask].any()
    far = OrthographicCamera(camera.scale, camera.rotation, camera.translation + 1000.0)
    with pytest.raises(ValueError, match="not in view"):
        render_view(side, far, 128, "D")


def test_save_shaded_side_by_side(tmp_path):
    from dce.geom.dce import save_shaded

    mesh = sphere_mesh(40.0, np.zeros(3))
    camera = posed_camera(np.zeros(3), 0.5, 64)  # radius 20 px of 64, 80 px of the 256
    png = save_shaded(tmp_path / "side.png", [mesh, mesh], [camera, camera], ["a", "b"], 64)
    picture = np.asarray(Image.open(png))
    assert picture.shape == (256, 2 * 260, 3)
    left, right = picture[:, :256], picture[:, 260:516]
    # Facing the viewer at the centre (cos 0 = 255); black background in the
    # corners away from the labels.
    assert left[128, 128].min() >= 254 and right[128, 128].min() >= 254
    assert not left[-20:, -20:].any() and not picture[:, 256:260].any()
    assert (left[:20, :20, 0] > left[:20, :20, 1]).any()  # the red label


# ------------------------------------------------------------ --keep-topology


def test_identity_correction_gives_the_coarse_mesh_exactly():
    from dce.geom.reconstruct import displace_along_view

    coarse = head(0)
    camera = posed_camera(np.zeros(3), 0.7, SIZE, yaw=20)
    image = render_dce(coarse, camera, SIZE, "D")
    depth = image.physical("depth")
    moved, d = displace_along_view(coarse, depth - depth, image.mask, camera)
    assert np.array_equal(moved.vertices, coarse.vertices)
    assert np.array_equal(moved.faces, coarse.faces) and not d.any()


def test_a_depth_offset_moves_the_visible_vertices_by_that_offset():
    from dce.geom.normals import vertex_normals
    from dce.geom.reconstruct import displace_along_view

    coarse = head(1)
    camera = posed_camera(np.zeros(3), 0.7, SIZE, yaw=25, pitch=10)
    image = render_dce(coarse, camera, SIZE, "D")
    k = 2.5  # mm deeper everywhere the image sees the surface
    moved, d = displace_along_view(coarse, np.full(image.mask.shape, k), image.mask, camera)
    assert moved.n_vertices == coarse.n_vertices
    assert np.array_equal(moved.faces, coarse.faces)
    step = moved.vertices - coarse.vertices
    # Every move is along the view ray, d mm toward the viewer.
    np.testing.assert_allclose(step, d[:, None] * camera.view_direction, atol=1e-12)
    facing = vertex_normals(coarse.vertices, coarse.faces) @ camera.view_direction
    # Facing the camera (far from the silhouette and its blend band): exactly k away.
    clear = facing > 0.5
    assert clear.sum() > 500
    np.testing.assert_allclose(d[clear], -k, rtol=0, atol=1e-12)
    # Hidden vertices keep their place exactly; nothing moves by more than k.
    assert not step[facing <= 0].any()
    assert (d <= 0).all() and (d >= -k - 1e-12).all()


def test_keep_topology_lands_on_the_refined_surface():
    from dce.geom.normals import vertex_normals
    from dce.geom.reconstruct import displace_along_view

    coarse, size = head(0), 256
    target = bumpy(coarse)  # up to 4 mm of radial bumps
    camera = posed_camera(np.zeros(3), size / 200.0, size, yaw=15)
    c, t = (render_dce(m, camera, size, "D") for m in (coarse, target))
    correction = t.physical("depth") - c.physical("depth")
    moved, d = displace_along_view(coarse, correction, c.mask & t.mask, camera)
    facing = vertex_normals(coarse.vertices, coarse.faces) @ camera.view_direction > 0.5
    before = distance_to_mesh(coarse.vertices[facing], target)
    after = distance_to_mesh(moved.vertices[facing], target)
    # On the target up to both images' bilinear sampling of the triangulated
    # surfaces (about a pixel pitch of 0.78 mm times the kink at a vertex).
    assert np.median(before) > 1.0 and after.max() < 0.1, (np.median(before), after.max())


def test_landmarks_move_with_the_surface():
    from dce.geom.reconstruct import move_with_surface

    mesh = head(0)
    V = mesh.vertices
    after = V + np.column_stack([np.sin(V[:, 1] / 9), np.cos(V[:, 0] / 7), V[:, 2] / 50])
    at_vertices = move_with_surface(V[[0, 100, 2000]], mesh, after)
    np.testing.assert_allclose(at_vertices, after[[0, 100, 2000]], atol=1e-9)
    f = mesh.faces[[5, 500]]
    normal = face_normals(V, mesh.faces[[5, 500]])
    above = V[f].mean(axis=1) + 0.5 * normal  # half a mm off two face centres
    shift = (after[f] - V[f]).mean(axis=1)
    np.testing.assert_allclose(move_with_surface(above, mesh, after), above + shift, atol=1e-9)


def face_with_landmark_indices(tmp_path):
    """The synthetic mean face on a 2.5 mm grid (model frame: +Y up, facing
    +Z) as a PLY, and its 68 landmarks as vertex indices (.npy)."""
    from dce.geom.synthetic import LANDMARK_UV, grid_faces, mean_surface

    u = np.arange(-100.0, 100.0 + 1e-9, 2.5)
    v = np.arange(-110.0, 110.0 + 1e-9, 2.5)
    mesh = Mesh(mean_surface(u[None, :], v[:, None]).reshape(-1, 3), grid_faces(len(v), len(u)))
    col = np.rint((LANDMARK_UV[:, 0] - u[0]) / 2.5).astype(int)
    row = np.rint((LANDMARK_UV[:, 1] - v[0]) / 2.5).astype(int)
    index = row * len(u) + col
    save_mesh(tmp_path / "face.ply", mesh)
    np.save(tmp_path / "landmarks.npy", index)
    return mesh, index


def test_refine_keep_topology_with_an_identity_checkpoint(setup, tmp_path):
    mesh, index = face_with_landmark_indices(tmp_path)
    camera = posed_camera(mesh.vertices[index[30]], 64 / 220.0, 64, yaw=-15)
    (tmp_path / "cam.json").write_text(json.dumps(camera.to_dict()))
    out = tmp_path / "out"
    assert refine.main([str(setup["checkpoint"]), "--mesh", str(tmp_path / "face.ply"),
                        "--camera", str(tmp_path / "cam.json"), "--landmarks-3d",
                        str(tmp_path / "landmarks.npy"), "--size", "64", "--keep-topology",
                        "--displacement-ply", "--landmarks-out",
                        str(tmp_path / "lm" / "face.landmarks.txt"), "-o", str(out)]) == 0
    refined, coarse = load_mesh(out / "refined.ply"), load_mesh(out / "coarse.ply")
    # The identity refinement gives back the whole (uncropped) input mesh exactly.
    for m in (refined, coarse):
        np.testing.assert_array_equal(m.vertices, mesh.vertices)
        np.testing.assert_array_equal(m.faces, mesh.faces)
    from dce.geom.io import read_landmarks

    for path in (out / "coarse.landmarks.txt", tmp_path / "lm" / "face.landmarks.txt"):
        np.testing.assert_array_equal(read_landmarks(path).points, mesh.vertices[index])
    assert not (out / "refined.landmarks.txt").exists()  # written to --landmarks-out instead
    header, body = (out / "displacement.ply").read_bytes().split(b"end_header\n", 1)
    assert b"property float displacement_mm" in header
    rows = np.frombuffer(body[:mesh.n_vertices * 31],
                         dtype=[("xyz", "<f8", 3), ("rgb", "u1", 3), ("d", "<f4")])
    assert not rows["d"].any()
    np.testing.assert_array_equal(rows["xyz"], mesh.vertices)


def test_refine_keep_topology_options_need_each_other(setup, tmp_path, capsys):
    save_mesh(tmp_path / "head.ply", head(0))
    (tmp_path / "cam.json").write_text(json.dumps(posed_camera(np.zeros(3), 0.3, 64).to_dict()))
    base = [str(setup["checkpoint"]), "--mesh", str(tmp_path / "head.ply"), "--camera",
            str(tmp_path / "cam.json")]
    for extra, message in ((["--displacement-ply"], "go with --keep-topology"),
                           (["--blend-mm", "3"], "go with --keep-topology"),
                           (["--keep-topology", "--blend-mm", "0"], "argument --blend-mm: 0 is out of range"),
                           (["--landmarks-out", "x.txt"], "--landmarks-out needs --landmarks-3d")):
        with pytest.raises(SystemExit) as stop:
            refine.main(base + extra)
        assert stop.value.code == 2 and message in capsys.readouterr().err


# --------------------------------------------- the library side (dce.geom.refine)


def test_view_settings_come_from_the_checkpoint_the_caller_or_the_build():
    from dce.gan.h5format import NormalizationMismatch
    from dce.geom.refine import view_settings

    trained = {"channels": ["depth"], "size": [128, 128], "depth_scale": 40.0,
               "curvature": "absolute", "crop_radius": 100.0}
    s = view_settings(trained)
    assert (s.size, s.depth_scale, s.curvature, s.crop_radius) == (128, 40.0, "absolute", 100.0)
    # Not recorded: dce-build's defaults (0.1 1/mm per unit, a quarter of the box's side).
    assert (s.curvature_scale, s.margin) == (0.1, 0.25)
    assert s.defaulted == ("curvature_scale", "margin")
    s = view_settings(trained, 64, depth_scale=40.0, margin=0.5)
    assert (s.size, s.depth_scale, s.margin, s.defaulted) == (64, 40.0, 0.5, ("curvature_scale",))
    old = view_settings(None)  # a checkpoint from before dce stored its normalization
    assert (old.size, old.depth_scale, old.curvature, old.crop_radius) == (256, 50.0, "mean", 125.0)
    assert old.defaulted == ("depth_scale", "curvature_scale", "curvature", "margin", "size")
    with pytest.raises(NormalizationMismatch, match=r"opts has depth_scale=30\.0.*m\.pt.*40\.0"):
        view_settings(trained, depth_scale=30.0, model_name="m.pt", given_name="opts")
    with pytest.raises(TypeError, match="depth_scal"):
        view_settings(trained, depth_scal=40.0)


def test_refine_a_pair_sample_with_the_library(setup, tmp_path):
    """coarse_from_pairs + refine + save_refinement, as dce-refine --pairs:
    the identity checkpoint gives back the coarse image, so both MAEs equal
    the coarse image's mean depth error over the target's mask, computed
    here from the two images."""
    from dce.gan.inference import Refiner
    from dce.geom.projection import camera_array, read_camera
    from dce.geom.refine import coarse_from_pairs, refine, save_refinement

    refiner = Refiner(setup["checkpoint"])
    coarse = coarse_from_pairs(setup["pairs"], refiner, "s1/pose1")
    assert coarse.sample.sample_id == "s1/pose1" and coarse.sample.subject == "s1"
    assert coarse.image.channels == coarse.target.channels == refiner.input_channels
    assert distance_to_mesh(coarse.mesh.vertices, head(1)).max() < 1e-3
    result = refine(refiner, coarse)
    # Where the coarse image has no surface its depth is the background -1.
    d = coarse.target.channels.index("depth")
    face, mm = coarse.target.mask, abs(coarse.target.scale[d])
    error = np.abs(coarse.image.image[..., d] - coarse.target.image[..., d])[face] * mm
    assert result.face_pixels == face.sum()
    assert result.coarse_mae_mm == pytest.approx(error.mean(), rel=1e-5)
    assert result.refined_mae_mm == pytest.approx(result.coarse_mae_mm, abs=1e-12)
    np.testing.assert_allclose(result.meshes.refined.vertices, coarse.mesh.vertices, atol=1e-12)

    files = save_refinement(tmp_path / "out", result, "obj")
    assert files.refined == tmp_path / "out" / "refined.obj"
    assert [p.name for p in files.others] == ["refined_dce.png", "side_by_side.png",
                                              "camera.json"]
    written = load_mesh(files.refined)
    np.testing.assert_allclose(written.vertices, result.meshes.refined.vertices, atol=1e-6)
    np.testing.assert_array_equal(written.faces, result.meshes.refined.faces)
    np.testing.assert_allclose(camera_array(read_camera(files.others[2])),
                               camera_array(result.camera), rtol=1e-12)
    with pytest.raises(ValueError, match="keep-topology"):
        save_refinement(tmp_path / "o2", result, displacement_ply=True)


def test_refine_a_mesh_with_the_library_keeping_its_topology(setup, tmp_path):
    """coarse_from_mesh crops the mesh on its landmarks and marks the
    cropped vertices movable in the whole mesh; the identity refinement
    then gives back the whole mesh and its landmarks exactly."""
    from dce.gan.inference import Refiner
    from dce.geom.refine import coarse_from_mesh, refine, view_settings

    mesh, index = face_with_landmark_indices(tmp_path)
    refiner = Refiner(setup["checkpoint"])
    camera = posed_camera(mesh.vertices[index[30]], 64 / 220.0, 64, yaw=-15)
    landmarks = mesh.vertices[index]
    coarse = coarse_from_mesh(mesh, refiner, view_settings(refiner.normalization, 64),
                              camera=camera, landmarks_3d=landmarks)
    assert coarse.base is mesh and coarse.target is None
    assert coarse.mesh.n_vertices < mesh.n_vertices  # cropped
    assert coarse.movable.shape == (mesh.n_vertices,)
    assert coarse.movable.sum() == coarse.mesh.n_vertices
    assert coarse.image.mask.shape == (64, 64) and coarse.image.camera is camera
    result = refine(refiner, coarse, keep_topology=True)
    np.testing.assert_array_equal(result.meshes.refined.vertices, mesh.vertices)
    np.testing.assert_array_equal(result.meshes.refined_landmarks, landmarks)
    assert not result.meshes.displacement.any() and result.coarse_mae_mm is None
    odd = 3 * refiner.resolution + 1
    with pytest.raises(ValueError, match=rf"size {odd} px is not a multiple .* "
                                         rf"\({refiner.resolution} px\)"):
        coarse_from_mesh(mesh, refiner, view_settings(refiner.normalization, odd), camera=camera)
