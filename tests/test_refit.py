"""The learned re-fit (dce.geom.refit, dce.geom.refit_pairs, dce-refit,
dce-eval --refit): a face's coefficients read back from its mesh, a dense
fit that finds a planted face and pose again, the pixel Jacobian against
re-rendered differences, a map that recovers a planted linear relation,
and the pair file pass end to end on a tiny world."""
import json
import re

import h5py
import numpy as np
import pytest

from dce.gan.h5format import TRAIN, dequantize, validate
from dce.geom import synthetic as S
from dce.geom.projection import FRONTAL, OrthographicCamera
from dce.geom.raster import rasterize
from dce.geom.records import FormatError
from dce.geom.refit import (
    FaceFit,
    _depth_jacobian,
    _projected_jacobian,
    face_vertices,
    fit_depth,
    learn_refit_map,
    load_refit_map,
    model_coefficients,
    refit_features,
    save_refit_map,
)
from dce.geom.refit_pairs import RefitSettings, map_path_of, photo_view_rows, refit_pairs

SIZE = 128


@pytest.fixture(scope="module")
def model():
    return S.build_world(fine=False).model


def frontal_camera(model, yaw=0.0, scale=0.6):
    """A camera that frames the mean face in a SIZE px image."""
    c, s = np.cos(np.radians(yaw)), np.sin(np.radians(yaw))
    R = FRONTAL @ np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    centre = model.mean.mean(axis=0) @ R.T
    return OrthographicCamera(scale, R, SIZE / 2 - scale * centre[:2])


def depth_image(model, fit, camera):
    """The face's depth (mm) seen by ``camera``, by plain rasterization."""
    Q = camera.project(face_vertices(model, fit))
    image, drawn = rasterize(Q, model.faces, Q[:, 2], SIZE, SIZE)
    return image[..., 0].astype(np.float64), drawn


def test_model_coefficients_read_a_face_back(model):
    rng = np.random.default_rng(1)
    c, e = rng.normal(size=model.n_identity), rng.uniform(0, 1, model.n_expression)
    got_c, got_e = model_coefficients(model, model.shape(c, e), "face.ply")
    assert np.allclose(got_c, c, atol=1e-9) and np.allclose(got_e, e, atol=1e-9)
    bumped = model.shape(c, e) + np.where(np.arange(model.n_vertices) == 100, 1.0, 0.0)[:, None]
    with pytest.raises(FormatError, match=r"bumped\.ply: lies .* off the span"):
        model_coefficients(model, bumped, "bumped.ply")
    with pytest.raises(FormatError, match=r"small\.ply: 10 vertices"):
        model_coefficients(model, np.zeros((10, 3)), "small.ply")
    broken = model.shape(c, e)
    broken[3, 1] = np.nan
    with pytest.raises(FormatError, match="NaN"):
        model_coefficients(model, broken, "nan.ply")


def test_pixel_jacobian_matches_rerendered_differences(model):
    """d depth / d theta at fixed pixels (the triangle plane moved and slid)
    against central differences of two plain renders, away from edges."""
    camera = frontal_camera(model, yaw=12.0)
    rng = np.random.default_rng(2)
    fit = FaceFit(rng.normal(size=model.n_identity) * 0.5, np.zeros(model.n_expression),
                  np.array([0.02, -0.03, 0.01]), 0.01, np.array([1.0, -2.0, 0.5]))
    Q, dQ = _projected_jacobian(model, fit, camera)
    depth, drawn, J = _depth_jacobian(Q, dQ, model.faces, SIZE)
    base, plain_drawn = depth_image(model, fit, camera)
    assert np.array_equal(drawn, plain_drawn)
    assert np.allclose(depth[drawn], base[drawn], atol=1e-4)
    theta = fit.vector()
    for j, h in ((0, 0.01), (model.n_identity, 1e-4), (model.n_identity + 3, 1e-4),
                 (model.n_identity + 4, 0.01)):
        images = []
        for sign in (1, -1):
            moved = theta.copy()
            moved[j] += sign * h
            images.append(depth_image(model, FaceFit.from_vector(moved, fit.expression), camera))
        (up, up_drawn), (down, down_drawn) = images
        inside = drawn & up_drawn & down_drawn
        inside[1:-1, 1:-1] &= (inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2]
                               & inside[1:-1, 2:])
        column = np.zeros((SIZE, SIZE))
        column[drawn] = J[:, j]
        difference = (up - down) / (2 * h)
        err = np.abs(column[inside] - difference[inside])
        # central differences cross a few triangle edges: the median is exact
        assert np.median(err) < 1e-3 * np.abs(difference[inside]).max() + 1e-6, j


def test_dense_fit_finds_a_planted_face_and_pose(model):
    """A face with other coefficients, turned 2 degrees, scaled, moved and
    seen with an unknown depth offset: the fit from the mean recovers them
    (translation up to its component along the view, which it drops)."""
    camera = frontal_camera(model, yaw=8.0)
    rng = np.random.default_rng(3)
    expression = np.r_[0.3, np.zeros(model.n_expression - 1)]
    truth = FaceFit(rng.normal(size=model.n_identity), expression,
                    np.radians([1.5, -2.0, 1.0]), 0.02, np.array([2.0, -1.5, 3.0]))
    depth, drawn = depth_image(model, truth, camera)
    fit, rms = fit_depth(model, FaceFit(np.zeros(model.n_identity), expression), camera,
                         depth + 700.0, drawn, iterations=10, prior=1e-6)
    assert rms < 0.05
    view = camera.rotation[2]
    in_plane = truth.translation - (truth.translation @ view) * view
    assert abs(fit.translation @ view) < 1e-9
    assert np.allclose(fit.identity, truth.identity, atol=0.02)
    assert np.allclose(fit.rotation, truth.rotation, atol=2e-4)
    assert fit.log_scale == pytest.approx(truth.log_scale, abs=1e-3)
    # in-plane translation: the rotation about a different centre trades a little
    assert np.allclose(fit.translation, in_plane, atol=0.1)


def test_map_recovers_a_planted_linear_relation(model, tmp_path):
    rng = np.random.default_rng(4)
    K, E = model.n_identity, model.n_expression

    def draw():
        c, e = rng.normal(size=K), rng.uniform(0, 1, E)
        camera = frontal_camera(model, yaw=rng.uniform(-20, 20), scale=rng.uniform(0.5, 0.7))
        moved = OrthographicCamera(camera.scale, camera.rotation,
                                   camera.translation + rng.normal(size=2) * 3)
        return c, e, moved

    A = rng.normal(size=(K + E + 6, K + 7)) * 0.1
    b = rng.normal(size=K + 7)
    train = [draw() for _ in range(200)]
    X = np.array([refit_features(*t) for t in train])
    refit_map = learn_refit_map(X, X @ A + b, K, E, ridge=0.0, model="planted", pairs=200)
    for c, e, camera in (draw() for _ in range(5)):
        predicted = refit_map.predict(c, e, camera)
        assert np.allclose(predicted.vector(), refit_features(c, e, camera) @ A + b, atol=1e-8)
        assert np.array_equal(predicted.expression, e)
    path = save_refit_map(tmp_path / "map.npz", refit_map.with_digest("abc"))
    back = load_refit_map(path)
    assert back.pairs_digest == "abc" and back.model == "planted"
    assert np.array_equal(back.weights, refit_map.weights)
    assert back.digest() == refit_map.digest()
    with pytest.raises(ValueError, match="17 identity and 5 expression"):
        refit_map.predict(np.zeros(3), np.zeros(E), train[0][2])
    (tmp_path / "bad.npz").write_bytes(b"not a map")
    with pytest.raises(FormatError, match=r"bad\.npz: not a re-fit map"):
        load_refit_map(tmp_path / "bad.npz")


def test_photo_view_rows_pick_pose_zero():
    ids = ["a/pose0", "a/pose1", "b/pose1", "b/pose0"]
    poses = np.array([[0, 0, 0], [10, 0, 0], [5, 1, 0], [0, 0, 0]], float)
    assert photo_view_rows(ids, poses) == {"a": 0, "b": 3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A world of 4 identities and its DCE+RGB pair file (64 px, 1 pose)."""
    from dce.geom import build, sources
    from dce.geom.dataset import BuildConfig

    root = tmp_path_factory.mktemp("refit")
    S.generate_world(root / "world", identities=4, seed=0, workers=1)
    report = build.build(sources.synthetic_world(root / "world"), root / "pairs.h5",
                         BuildConfig(size=64, poses=1, channels="DCE+RGB"),
                         command="synthetic", workers=1, progress=False, log=lambda *a: None)
    assert report.failures == []
    return root


@pytest.fixture(scope="module")
def tiny_refit(tiny):
    """The tiny world's pair file re-fitted (3 Gauss-Newton steps)."""
    out = tiny / "shared" / "refit.h5"
    out.parent.mkdir(exist_ok=True)
    refit_pairs(tiny / "pairs.h5", tiny / "world" / "world_model.npz", out,
                settings=RefitSettings(iterations=3), log=lambda *a: None)
    return out


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny):
    """A tiny progressive network trained a few iterations on the tiny pairs."""
    from dce.gan.train import Trainer, TrainSettings

    settings = TrainSettings(data=str(tiny / "pairs.h5"), out=str(tiny / "run"), preset="tiny",
                             batch_size=2, workers=0, iters_per_resolution=2, log_every=1000,
                             checkpoint_every=1000)
    Trainer(settings, log=lambda *a: None).train()
    return tiny / "run" / "last.pt"


def test_refit_pairs_end_to_end(tiny):
    pairs, out = tiny / "pairs.h5", tiny / "refit.h5"
    lines = []
    report = refit_pairs(pairs, tiny / "world" / "world_model.npz", out,
                         settings=RefitSettings(iterations=3),
                         log=lines.append)
    summary = validate(out)
    assert summary["channels"] == validate(pairs)["channels"]
    with h5py.File(pairs, "r") as f, h5py.File(out, "r") as g:
        for name in ("sample_id", "split", "pose", "target_camera", "target_offset",
                     "target_scale", "target_mask"):
            assert np.array_equal(f[name][()], g[name][()]), name
        # the coarse views' cameras, moved in the image plane onto the re-fit's pivot
        assert np.array_equal(f["coarse_camera"][:, :3], g["coarse_camera"][:, :3])
        assert np.abs(f["coarse_camera"][:, 3, 1:] - g["coarse_camera"][:, 3, 1:]).max() < 5
        assert np.array_equal(f["target"][()], g["target"][()])  # requantized exactly
        n_train = int(sum(1 for i in photo_view_rows(f["sample_id"].asstr()[()], f["pose"][()])
                          .values() if f["split"][i] == TRAIN))
        assert report.refit_map.pairs == n_train and report.images == len(f["split"])
        # a re-fit face where the coarse one was, not the coarse image itself
        a, b = f["coarse_mask"][()] > 0, g["coarse_mask"][()] > 0
        assert (a & b).sum() > 0.9 * a.sum()
        depth_f, depth_g = dequantize(f["coarse"][:, 0]), dequantize(g["coarse"][:, 0])
        assert not np.array_equal(depth_f, depth_g)
        assert np.median(np.abs(depth_f - depth_g)[a & b]) * 50 < 10.0  # mm
        # photo channels are the coarse image's where both have surface
        r = list(json.loads(g.attrs["channels"])).index("r")
        assert np.array_equal(f["coarse"][:, r][a & b], g["coarse"][:, r][a & b])
        assert "refit" in json.loads(g["provenance"][0])
        assert json.loads(g.attrs["config"])["refit"]["map_digest"] == report.refit_map.digest()
    assert map_path_of(out).is_file()
    assert any("map learned from" in line for line in lines)
    lines.clear()
    again = refit_pairs(pairs, tiny / "world" / "world_model.npz", tiny / "again.h5",
                        map_path=map_path_of(out), log=lines.append)
    assert again.map_reused and any("reused" in line for line in lines)
    with h5py.File(out, "r") as g, h5py.File(tiny / "again.h5", "r") as h:
        assert np.array_equal(g["coarse"][()], h["coarse"][()])


def test_refit_refuses_a_model_the_meshes_are_not_faces_of(tiny, tmp_path):
    from dce.geom.morphable import load_model

    model = load_model(tiny / "world" / "world_model.npz")
    other = tmp_path / "other.npz"
    np.savez(other, mean=model.mean[:-1], identity_basis=model.identity_basis[:, :-1],
             faces=model.faces[(model.faces < model.n_vertices - 1).all(axis=1)],
             landmarks_68=model.landmarks_68)
    with pytest.raises(FormatError, match=r"pairs\.h5: .*vertices, but the model"):
        refit_pairs(tiny / "pairs.h5", other, tmp_path / "out.h5")


def test_surface_point_lies_on_a_tilted_plane_and_the_pivot_lands_on_the_anchor():
    from dce.geom.morphable import MorphableModel
    from dce.geom.refit import pivoted_camera, surface_point
    from dce.geom.synthetic_world import grid_faces

    u = np.linspace(-40, 40, 41)
    X, Y = np.meshgrid(u, u)
    Z = 0.3 * X - 0.2 * Y + 5.0  # the plane z = 0.3 x - 0.2 y + 5 mm
    mean = np.column_stack([X.ravel(), Y.ravel(), Z.ravel()])
    plane = MorphableModel(mean, np.zeros((1, len(mean), 3)), grid_faces(41, 41),
                           landmarks_68=np.arange(68))
    camera = OrthographicCamera(1.2, np.eye(3), np.array([64.0, 64.0]))
    point = surface_point(plane, FaceFit(np.zeros(1), np.zeros(0)), camera, (70.3, 58.6), SIZE)
    assert camera.project(point[None])[0, :2] == pytest.approx([70.3, 58.6], abs=1e-9)
    assert point[2] == pytest.approx(0.3 * point[0] - 0.2 * point[1] + 5.0, abs=1e-6)
    with pytest.raises(ValueError, match="not drawn"):
        surface_point(plane, FaceFit(np.zeros(1), np.zeros(0)), camera, (2.0, 3.0), SIZE)
    turned = OrthographicCamera(1.2, FRONTAL @ np.array([[0.8, 0, 0.6], [0, 1, 0], [-0.6, 0, 0.8]]),
                                np.array([10.0, 20.0]))
    pivot, anchor = np.array([1.0, 2.0, 30.0]), np.array([-3.0, 4.0, 10.0])
    moved = pivoted_camera(turned, pivot, anchor)
    assert moved.project(pivot[None])[0, :2] == pytest.approx(turned.project(anchor[None])[0, :2])
    assert np.array_equal(moved.rotation, turned.rotation) and moved.scale == turned.scale


def test_eval_reads_the_refit_images_and_scores_them_against_the_coarse(tiny, tiny_refit,
                                                                      tiny_checkpoint, tmp_path):
    """dce-eval --refit: the coarse row is the plain run's, the refit row
    scores the re-fit file's coarse images as the plain run on that file
    scores its coarse row (same target), and a file of other samples is
    refused naming both."""
    from dce.cli import evaluate as eval_cli
    from dce.gan.evaluate import evaluate
    from dce.gan.h5format import PairFileError

    pairs, refit, checkpoint = tiny / "pairs.h5", tiny_refit, tiny_checkpoint
    plain, _, _ = evaluate(checkpoint, pairs)
    with_refit, _, info = evaluate(checkpoint, pairs, refit=refit)
    alone, _, _ = evaluate(checkpoint, refit)
    assert list(with_refit.per_image) == ["coarse", "refit", "refined"]
    for metric in ("face_mae_mm", "normal_error_deg", "detail_corr"):
        assert np.array_equal(with_refit.per_image["coarse"][metric],
                              plain.per_image["coarse"][metric])
    for metric in ("face_mae_mm", "normal_error_deg", "eq4_mae"):
        assert np.allclose(with_refit.per_image["refit"][metric],
                           alone.per_image["coarse"][metric], equal_nan=True)
    assert np.allclose(with_refit.per_image["refined"]["face_mae_mm"],
                       alone.per_image["refined"]["face_mae_mm"], equal_nan=True)
    assert info["refit"] == str(refit)
    assert eval_cli.main([str(pairs), str(checkpoint), "--refit", str(refit),
                          "-o", str(tmp_path / "eval")]) == 0
    rows = (tmp_path / "eval" / "mae.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["coarse", "refit", "refined"]
    assert "re-fit coarse images of refit.h5" in (tmp_path / "eval" / "mae.md").read_text()
    from dce.geom import build, sources
    from dce.geom.dataset import BuildConfig

    other = tmp_path / "photo_views.h5"  # the same pairs' photo views alone
    build.build(sources.synthetic_world(tiny / "world"), other,
                BuildConfig(size=64, poses=0, channels="DCE+RGB"), command="synthetic",
                workers=1, progress=False, log=lambda *a: None)
    with pytest.raises(PairFileError, match=r"photo_views\.h5: not a re-fit of .*pairs\.h5"):
        evaluate(checkpoint, pairs, refit=other)


def test_coarse_mesh_paths_relative_to_the_build_folder(tmp_path, monkeypatch):
    from dce.geom.refit_pairs import coarse_mesh_of

    mesh = tmp_path / "demo" / "world" / "coarse" / "a.ply"
    mesh.parent.mkdir(parents=True)
    mesh.write_text("ply")
    provenance = json.dumps({"coarse": "demo/world/coarse/a.ply"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert coarse_mesh_of(provenance, "p", tmp_path / "demo" / "pairs.h5") == mesh
    fitted = json.dumps({"coarse": "fit of ict.npz to the 2D landmarks (residual 1.2 px)"})
    with pytest.raises(FormatError, match=r"p: its coarse side 'fit of ict\.npz.*not a mesh"):
        coarse_mesh_of(fitted, "p", tmp_path / "demo" / "pairs.h5")


def test_dce_refit_command(tiny, tmp_path, capsys):
    from dce.cli import refit as refit_cli

    assert refit_cli.main([str(tmp_path / "missing.h5"), "--model",
                           str(tiny / "world" / "world_model.npz"),
                           "-o", str(tmp_path / "out.h5")]) == 2
    assert "missing.h5" in capsys.readouterr().err
    pairs = tiny / "pairs.h5"
    assert refit_cli.main([str(pairs), "--model", str(tiny / "world" / "world_model.npz"),
                           "-o", str(pairs)]) == 2
    assert "one of the command's inputs" in capsys.readouterr().err
    from dce.geom.refit_pairs import model_of

    assert model_of(pairs).resolve() == (tiny / "world" / "world_model.npz").resolve()
    out = tmp_path / "refit.h5"  # the model: the one the pair file's provenance names
    assert refit_cli.main([str(pairs), "-o", str(out), "--iterations", "2",
                           "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\d+ images of \d+ pairs re-fitted ->", printed)
    assert validate(out)["n_samples"] == validate(pairs)["n_samples"]


def test_dce_refine_refits_a_mesh_as_the_pair_file_does(tiny, tiny_refit, tiny_checkpoint,
                                                        tmp_path):
    """dce-refine --mesh M --landmarks P --refit MAP renders the same re-fit
    image as dce-refit drew for that pair's photo view (two routes, one
    face), and refines it; a map framed at another size is refused."""
    from dce.cli import refine as refine_cli
    from dce.gan.inference import Refiner
    from dce.geom.mesh_formats import load_mesh
    from dce.geom.morphable import load_model
    from dce.geom.refine import coarse_from_mesh, refit_mesh, view_settings
    from dce.geom.refit import load_refit_map

    refit, checkpoint = tiny_refit, tiny_checkpoint
    model = load_model(tiny / "world" / "world_model.npz")
    refit_map = load_refit_map(map_path_of(refit))
    assert refit_map.image_size == 64 and refit_map.margin == 0.25
    with h5py.File(refit, "r") as g:
        sid = g["sample_id"].asstr()[0]
        assert sid.endswith("/pose0")
        stem = sid.split("/")[0]
        drawn = dequantize(g["coarse"][0, 0]), g["coarse_mask"][0] > 0
    mesh = load_mesh(tiny / "world" / "coarse" / f"{stem}.ply")
    landmarks_2d = read_points(tiny / "world" / "scans" / f"{stem}.pts")
    refiner = Refiner(checkpoint)
    view = view_settings(refiner.normalization)
    lm3d = mesh.vertices[model.landmarks_68]
    refitted, landmarks, camera = refit_mesh(mesh, refit_map, model, view,
                                             landmarks_2d=landmarks_2d, landmarks_3d=lm3d)
    face = coarse_from_mesh(refitted, refiner, view, camera=camera, landmarks_3d=landmarks)
    depth = face.image.image[..., 0]
    assert np.array_equal(face.image.mask, drawn[1])
    err = np.abs(depth - drawn[0])[drawn[1]]
    # the cameras agree to rounding, which flips a few pixels at depth edges
    assert np.median(err) < 1e-4 and (err > 1e-3).mean() < 0.005, (np.median(err),
                                                                   (err > 1e-3).sum())
    (tmp_path / "lm.txt").write_text("\n".join(map(str, model.landmarks_68)))
    argv = [str(checkpoint), "--mesh", str(tiny / "world" / "coarse" / f"{stem}.ply"),
            "--landmarks", str(tiny / "world" / "scans" / f"{stem}.pts"),
            "--landmarks-3d", str(tmp_path / "lm.txt"), "--refit", str(map_path_of(refit)),
            "-o", str(tmp_path / "refined")]
    assert refine_cli.main(argv) == 0
    assert load_mesh(tmp_path / "refined" / "coarse.ply").n_faces > 0
    assert refine_cli.main(argv[:-1] + [str(tmp_path / "big"), "--size", "128"]) == 2


def read_points(path):
    from dce.geom.io import read_landmarks

    return read_landmarks(path, expected=68).points
