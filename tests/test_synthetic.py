"""The built-in synthetic world (dce.geom.synthetic), on a tiny world: 3
identities, neutral + one expression each, at a quarter of the FRGC image
(240 x 320 px at 0.75 px/mm) and a 1.25 mm ground-truth grid. The files are
read back with the project's real readers."""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from dce.geom import face_anatomy, scanner
from dce.geom import synthetic as S
from dce.geom.io import load_mesh, read_abs, read_landmarks
from dce.geom.morphable import load_model
from dce.geom.projection import FRONTAL, OrthographicCamera

SETTINGS = S.WorldSettings(fine_spacing=1.25, image_size=(240, 320), scanner_scale=0.75)
IDENTITIES = 3


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    manifest = S.generate_world(out, identities=IDENTITIES, seed=7, workers=1, settings=SETTINGS)
    return out, manifest


@pytest.fixture(scope="module")
def world():
    return S.build_world(SETTINGS)


@pytest.fixture(scope="module")
def scans(world):
    """(identity, plan, SyntheticScan) of every scan of the tiny world, seed 7."""
    out = []
    for index in range(IDENTITIES):
        identity = S.draw_identity(world, 7, index)
        for shot in (1, 2):
            plan = S.draw_scan(world, identity, 7, shot)
            out.append((identity, plan, S.render_scan(world, identity, plan)))
    return out


def test_files_read_back(world_dir):
    out, manifest = world_dir
    assert manifest == S.load_world(out)
    assert len(manifest["scans"]) == 2 * IDENTITIES
    model = load_model(out / manifest["model"])
    assert model.n_identity == len(S.IDENTITY_FACTORS)
    assert list(model.expression_names) == list(S.EXPRESSION_NAMES)
    assert model.expression_range == (0.0, 1.0)
    stems = set()
    for rec in manifest["scans"]:
        stems.add(rec["stem"])
        assert rec["stem"] == f"{rec['subject']}d{rec['shot']}" and len(rec["subject"]) == 5
        scan = read_abs(out / rec["files"]["range"])
        assert scan.shape == SETTINGS.image_size
        assert scan.texture_path == out / rec["files"]["photo"]  # the FRGC sibling .ppm
        assert scan.valid.sum() == rec["valid_pixels"]
        from PIL import Image
        with Image.open(scan.texture_path) as im:
            assert im.size == SETTINGS.image_size[::-1] and im.mode == "RGB"
        pts = read_landmarks(out / rec["files"]["landmarks"], expected=68)
        np.testing.assert_array_equal(pts.points, rec["landmarks_2d"])
        mesh = load_mesh(out / rec["files"]["coarse_mesh"])
        assert mesh.vertices.shape == model.mean.shape
        np.testing.assert_array_equal(mesh.faces, model.faces)
        camera = OrthographicCamera.from_dict(
            json.loads((out / rec["files"]["coarse_camera"]).read_text()))
        # the saved mesh and camera reproduce the fit's reprojection residual
        x = camera.project(mesh.vertices[model.landmarks_68])[:, :2]
        rms = np.sqrt(np.mean(np.sum((x - rec["landmarks_2d_noisy"]) ** 2, axis=1)))
        assert rms == pytest.approx(rec["fit"]["residual_px"], rel=1e-9)
    assert len(stems) == 2 * IDENTITIES
    assert [r["expression"]["name"] for r in manifest["scans"]][0::2] == ["neutral"] * IDENTITIES


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic_and_resumable(world_dir, tmp_path):
    out, manifest = world_dir
    # the same seed in worker processes gives byte-identical files
    again = tmp_path / "again"
    S.generate_world(again, identities=IDENTITIES, seed=7, workers=2, settings=SETTINGS)
    first, second = _tree(out), _tree(again)
    assert sorted(first) == sorted(second)
    assert [k for k in first if first[k] != second[k]] == []
    # another seed gives other faces, also over a finished world (not resumed)
    other = tmp_path / "other"
    S.generate_world(other, identities=1, seed=8, expressions_per_identity=0, workers=1,
                     settings=SETTINGS)
    assert (other / "scans/01000d1.pts").read_bytes() != first["scans/01000d1.pts"]
    S.generate_world(other, identities=1, seed=7, expressions_per_identity=0, workers=1,
                     settings=SETTINGS)
    assert (other / "scans/01000d1.pts").read_bytes() == first["scans/01000d1.pts"]
    # resume: a scan cut off before its record is redone, finished scans are kept
    stem = manifest["scans"][3]["stem"]
    (again / f"scans/{stem}.json").unlink()
    (again / f"scans/{stem}.abs.gz").unlink()
    kept = again / "scans" / f"{manifest['scans'][0]['stem']}.abs.gz"
    before = kept.stat().st_mtime_ns
    S.generate_world(again, identities=IDENTITIES, seed=7, workers=1, settings=SETTINGS)
    assert kept.stat().st_mtime_ns == before
    assert _tree(again) == first
    assert not list(again.rglob(".*.tmp"))


def test_scan_holes_noise_and_spikes(world_dir, world, scans):
    out, manifest = world_dir
    for (identity, plan, scan), rec in zip(scans, manifest["scans"]):
        # the written .abs is this scan (6 decimals)
        disk = read_abs(out / rec["files"]["range"])
        np.testing.assert_array_equal(disk.valid, scan.valid)
        np.testing.assert_allclose(disk.xyz[disk.valid], scan.xyz[scan.valid], atol=6e-7)
        hit = np.isfinite(scan.clean_z)
        # outside the face: nothing hit, nothing valid (the image corners too)
        assert not scan.valid[~hit].any() and not scan.valid[[0, 0, -1, -1], [0, -1, 0, -1]].any()
        assert (~hit).sum() > 0.3 * hit.size
        # inside the eye openings (1 mm in from the lid curves): all invalid
        u, v = scan.uv[hit, 0], scan.uv[hit, 1]
        eyes = np.zeros_like(hit)
        eyes[hit] = S.eye_opening(u, v, shrink=1.0, softness=1e-3) > 0.5
        assert eyes.sum() >= 20 and not scan.valid[eyes].any()
        # part of the brows is missing (hair), the cheeks are whole
        brow = np.zeros_like(hit)
        brow[hit] = scanner._brow_weight(u, v) > 0.9
        assert 0.05 < 1 - scan.valid[brow].mean() < 0.9
        cheek = np.zeros_like(hit)
        cheek[hit] = np.hypot(np.abs(u) - 45, v + 5) < 8
        assert scan.valid[cheek].mean() == 1.0
        # noise along the view ray at the sensor's sigma; spikes 5-30 mm off
        dz = scan.xyz[..., 2] - scan.clean_z
        quiet = scan.valid & ~scan.spikes
        assert np.std(dz[quiet]) == pytest.approx(SETTINGS.sensor_noise, rel=0.1)
        assert np.abs(dz[quiet]).max() < 10 * SETTINGS.sensor_noise
        spikes = np.abs(dz[scan.valid]) > 5.0
        assert spikes.sum() == scan.spikes.sum() == rec["spike_pixels"]
        assert spikes.sum() >= SETTINGS.spike_fraction * scan.valid.sum()
        assert np.abs(dz[scan.spikes]).max() <= 32.0
        # x, y are the pixel grid of the scanner camera
        cam = S.scanner_camera(SETTINGS)
        i, j = np.nonzero(scan.valid)
        np.testing.assert_allclose(cam.project(scan.xyz[i, j])[:, :2], np.column_stack([j, i]),
                                   atol=1e-9)


def test_landmarks_project_to_pts_and_lie_on_the_scan(world_dir):
    out, manifest = world_dir
    cam = OrthographicCamera.from_dict(manifest["scanner_camera"])
    assert np.allclose(cam.rotation, FRONTAL)
    for rec in manifest["scans"]:
        L = np.array(rec["landmarks_3d"])
        pts = read_landmarks(out / rec["files"]["landmarks"]).points
        np.testing.assert_allclose(cam.project(L)[:, :2], pts, atol=1e-9)
        scan = read_abs(out / rec["files"]["range"])
        # in the photo every landmark has a valid scan pixel within 2.5 px (so
        # 2D landmarks lift onto the scan), although the jaw points lie near
        # the grazing sides and the eye points on the rims of the eye holes
        valid_px = np.argwhere(scan.valid)[:, ::-1]
        gap = np.sqrt(((pts[:, None, :] - valid_px[None]) ** 2).sum(axis=2)).min(axis=1)
        assert gap.max() < 2.5, gap.max()
        # in 3D: within a pixel of a valid point at the nose and mouth, within
        # 2 pixels at the brows (hair holes) and eyes (lid rims); typically
        # half a pixel away (the grid does not sample the landmark itself)
        px = 1.0 / SETTINGS.scanner_scale  # mm
        P = scan.xyz[scan.valid]
        d = np.sqrt(((L[:, None, :] - P[None, :, :]) ** 2).sum(axis=2)).min(axis=1)
        assert np.all(d[np.r_[27:36, 48:68]] < 1.05 * px), d[np.r_[27:36, 48:68]].max()
        assert np.all(d[17:48] < 2.1 * px), d[17:48].max()
        assert np.median(d) < 0.75 * px
        # +X = the subject's left: the left eye is to the image right
        assert pts[45, 0] > pts[36, 0] and pts[8, 1] > pts[30, 1] > pts[27, 1]


def test_coarse_fit_at_the_noise_level(world_dir, world):
    out, manifest = world_dir
    for rec in manifest["scans"]:
        # 2 px Gaussian noise per coordinate: the RMS 2D distance of the noise
        # itself is 2 * sqrt(2) = 2.83 px, the fit absorbs some of it
        assert 1.8 < rec["fit"]["residual_px"] < 3.6
        noise = np.array(rec["landmarks_2d_noisy"]) - rec["landmarks_2d"]
        assert 1.2 < noise.std() < 2.8
        # the fitted camera sees the head from the scanner's direction
        camera = OrthographicCamera.from_dict(
            json.loads((out / rec["files"]["coarse_camera"]).read_text()))
        truth = FRONTAL @ np.array(rec["pose"]["rotation"])
        angle = np.degrees(np.arccos(np.clip((np.trace(camera.rotation.T @ truth) - 1) / 2, -1, 1)))
        assert angle < 6.0
        assert camera.scale == pytest.approx(SETTINGS.scanner_scale, rel=0.1)
        # the coarse mesh is a smooth model shape, never the ground truth
        coarse = load_mesh(out / rec["files"]["coarse_mesh"]).vertices
        shape = world.model.shape(rec["fit"]["identity"], rec["fit"]["expression"])
        np.testing.assert_allclose(coarse, shape, atol=1e-9)


def _coarse_nodes(world, P):
    r = world.settings.ratio
    return P[::r, ::r].reshape(-1, 3)


def _project_out(model, X):
    """Residual (n, 3) of X - mean after least squares on all model modes."""
    B = np.concatenate([model.identity_basis, model.expression_basis]).reshape(-1, X.size).T
    c = np.linalg.lstsq(B, (X - model.mean).ravel(), rcond=None)[0]
    return ((X - model.mean).ravel() - B @ c).reshape(-1, 3)


def test_model_shapes_are_exact_and_detail_is_not_representable(world):
    model = world.model
    rng = np.random.default_rng(0)
    identity = S.draw_identity(world, 7, 1)
    w = np.zeros(model.n_expression)
    w[0] = 0.8
    # the smooth ground truth sampled at the coarse nodes IS the model shape
    smooth = _coarse_nodes(world, S.ground_truth_surface(world, identity, w, detail=False))
    np.testing.assert_allclose(smooth, model.shape(identity.coefficients, w), atol=1e-4)
    np.testing.assert_allclose(smooth[model.landmarks_68],
                               model.landmarks(identity.coefficients, w), atol=1e-4)
    # any model shape projects onto the basis with no residual
    X = model.shape(rng.standard_normal(model.n_identity), rng.uniform(0, 1, model.n_expression))
    assert np.abs(_project_out(model, X)).max() < 1e-9
    # the ground truth does not: its detail (nostrils mm deep, creases and
    # pores sub-mm) survives the projection
    gt = S.ground_truth_surface(world, identity, w)
    res = _project_out(model, _coarse_nodes(world, gt))
    size = np.linalg.norm(res, axis=1)
    assert 0.05 < np.sqrt(np.mean(size ** 2)) < 0.5 and 0.1 < np.percentile(size, 99) < 1.0
    assert size.max() > 2.0
    # and what is left is high-frequency: a 5 mm Gaussian blur over the grid
    # keeps less than 40% of it (a smooth field would keep nearly all)
    u, v = S.param_axes(SETTINGS.coarse_spacing)
    grid = res.reshape(len(v), len(u), 3)
    blurred = np.stack([gaussian_filter(grid[..., k], 5.0 / SETTINGS.coarse_spacing)
                        for k in range(3)], axis=-1)
    assert np.linalg.norm(blurred) < 0.4 * np.linalg.norm(grid)
    smooth = (model.shape(rng.standard_normal(model.n_identity)) - model.mean).reshape(grid.shape)
    kept = np.stack([gaussian_filter(smooth[..., k], 5.0 / SETTINGS.coarse_spacing)
                     for k in range(3)], axis=-1)
    assert np.linalg.norm(kept) > 0.9 * np.linalg.norm(smooth)
    # most of the detail is orthogonal to the model's modes
    D = S.detail_field(identity.detail, w, world.fine_u, world.fine_v, SETTINGS.fine_spacing)
    detail = _coarse_nodes(world, face_anatomy._radial(D, world.fine_u[None, :]))
    explained = detail - _project_out(model, model.mean + detail)
    assert np.linalg.norm(explained) < 0.3 * np.linalg.norm(detail)


def test_world_model_is_a_face(world):
    model = world.model
    L = model.mean[model.landmarks_68]
    assert L[30, 2] == L[:, 2].max()                     # nose tip in front
    assert np.all(L[42:48, 0] > 0) and np.all(L[36:42, 0] < 0)  # left eye at +X
    y = {k: L[idx, 1].mean() for k, idx in
         dict(brows=range(17, 27), eyes=range(36, 48), tip=[30], mouth=range(48, 68),
              chin=[8]).items()}
    assert y["brows"] > y["eyes"] > y["tip"] > y["mouth"] > y["chin"]
    width = L[16, 0] - L[0, 0]
    height = L[19, 1] - L[8, 1]
    assert 130 < width < 170 and 120 < height < 160      # mm, an adult face
    assert 5000 <= model.n_vertices <= 10000
    # PCA modes: orthogonal, one sigma each, sorted by variance
    B = model.identity_basis.reshape(model.n_identity, -1)
    G = B @ B.T
    assert np.abs(G - np.diag(np.diag(G))).max() < 1e-9 * G.max()
    assert np.all(np.diff(np.diag(G)) <= 0)
    # unit coefficients mix the raw one-sigma factor fields
    u, v = S.param_axes(SETTINGS.coarse_spacing)
    F = S.identity_fields(u[None, :], v[:, None]).reshape(len(S.IDENTITY_FACTORS), -1)
    c = np.random.default_rng(1).standard_normal(model.n_identity)
    np.testing.assert_allclose((world.mixing @ c) @ F, c @ B, atol=1e-9)
    np.testing.assert_allclose(world.mixing.T @ world.mixing, np.eye(model.n_identity), atol=1e-12)
    # faces point out of the face (toward +Z at the nose tip)
    V, Fc = model.mean, model.faces
    n = np.cross(V[Fc[:, 1]] - V[Fc[:, 0]], V[Fc[:, 2]] - V[Fc[:, 0]])
    at_tip = np.any(Fc == model.landmarks_68[30], axis=1)
    assert np.all(n[at_tip, 2] > 0)


def test_preview_world(world_dir, artifacts_dir):
    out, _ = world_dir
    paths = S.preview_world(out, n=1, size=160)
    assert [p.name for p in paths] == ["01000d1.png", "01000d2.png", "world.png"]
    from PIL import Image
    with Image.open(paths[-1]) as im:
        assert im.size == (6 * 160, 2 * 160)
        im.save(artifacts_dir / "synthetic_world_preview.png")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="fine_spacing"):
        S.WorldSettings(fine_spacing=0.7)
    with pytest.raises(ValueError, match="coarse_spacing"):
        S.WorldSettings(coarse_spacing=4.0)
    with pytest.raises(ValueError, match="identities"):
        S.generate_world(tmp_path, identities=0)
    with pytest.raises(FileNotFoundError, match="world.json"):
        S.load_world(tmp_path)
