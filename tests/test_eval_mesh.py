"""Scan-to-mesh evaluation (dce.geom.alignment, dce.geom.mesh_eval and
dce-eval-mesh) checked against analytic spheres, known transforms, a
brute-force point-to-triangle distance and hand-built folders."""
import json

import numpy as np
import pytest
from analytic import sphere
from PIL import Image
from scipy.spatial.transform import Rotation

from dce.cli import eval_mesh
from dce.geom.alignment import (
    NOW_FROM_IBUG68,
    AlignmentError,
    Similarity,
    crop_sphere,
    inside_sphere,
    now_landmarks,
    procrustes,
)
from dce.geom.io import Landmarks, Mesh, RangeScan, load_mesh, save_mesh, write_abs, write_landmarks
from dce.geom.mesh_eval import (
    REGIONS,
    cumulative_curve,
    error_stats,
    evaluate_folders,
    evaluate_mesh,
    face_regions,
    point_surface_distance,
    write_scalar_ply,
)
from dce.geom.synthetic import LANDMARK_UV, grid_faces, mean_surface


def face(spacing=1.5, bump=0.0):
    """A synthetic face (the world's mean surface) over u, v in [-100, 100]
    mm, optionally with a 6 mm bump on the left cheek, and its 68 landmarks
    (on the smooth surface). Returns (V, F, L)."""
    u = np.arange(-100.0, 100.0 + 1e-9, spacing)
    v = np.arange(-100.0, 100.0 + 1e-9, spacing)
    P = mean_surface(u[None, :], v[:, None])
    P[..., 2] += bump * np.exp(-((u[None, :] - 45) ** 2 + (v[:, None] + 10) ** 2) / 400)
    return P.reshape(-1, 3), grid_faces(len(v), len(u)), mean_surface(*LANDMARK_UV.T)


def random_similarity(seed, scale=None):
    rng = np.random.default_rng(seed)
    s = rng.uniform(0.5, 2.0) if scale is None else scale
    return Similarity(s, Rotation.random(random_state=seed).as_matrix(),
                      rng.uniform(-200, 200, 3))


# ----------------------------------------------------------------- distances


def brute_force_distance(P, V, F):
    """Distance of each point to the nearest triangle, every pair tried: the
    plane distance where the point projects inside the triangle, else the
    nearest of the three edges (segments)."""
    A, B, C = (V[F[:, k]][None] for k in range(3))
    X = P[:, None, :]
    n = np.cross(B - A, C - A)
    n = n / np.linalg.norm(n, axis=2, keepdims=True)
    h = ((X - A) * n).sum(axis=2)
    proj = X - h[..., None] * n
    inside = np.ones(h.shape, dtype=bool)
    for a, b in ((A, B), (B, C), (C, A)):
        inside &= (np.cross(b - a, proj - a) * n).sum(axis=2) >= 0

    def segment(a, b):
        t = np.clip(((X - a) * (b - a)).sum(axis=2) / ((b - a) ** 2).sum(axis=2), 0, 1)
        return np.linalg.norm(X - (a + t[..., None] * (b - a)), axis=2)

    edges = np.minimum(np.minimum(segment(A, B), segment(B, C)), segment(C, A))
    return np.where(inside, np.abs(h), edges).min(axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_distance_agrees_with_brute_force(seed):
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(40, 3)) * 10
    F = np.array([rng.choice(40, 3, replace=False) for _ in range(30)])
    P = rng.normal(size=(300, 3)) * 14
    d, face_id, closest = point_surface_distance(P, V, F)
    np.testing.assert_allclose(d, brute_force_distance(P, V, F), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(P - closest, axis=1), d, rtol=1e-9, atol=1e-9)
    # The reported face holds the closest point (its own distance is d).
    np.testing.assert_allclose(brute_force_distance(closest, V, F), 0, atol=1e-9)
    per_face = np.array([brute_force_distance(P[i:i + 1], V, F[face_id[i]:face_id[i] + 1])[0]
                         for i in range(len(P))])
    np.testing.assert_allclose(per_face, d, rtol=1e-9, atol=1e-9)


def test_error_stats_and_cumulative_curve_by_hand():
    s = error_stats([1.0, 2.0, 4.0, 5.0])
    assert (s.median_mm, s.mean_mm, s.n_points) == (3.0, 3.0, 4)
    assert s.std_mm == pytest.approx(np.sqrt((4 + 1 + 1 + 4) / 4))
    assert error_stats([]).to_dict() == {"median_mm": None, "mean_mm": None, "std_mm": None,
                                         "n_points": 0}
    x, f = cumulative_curve([0.5, 1.5, 1.5, 9.0], max_mm=8.0, n=9)
    np.testing.assert_array_equal(x, np.arange(9.0))
    np.testing.assert_array_equal(f, [0, 0.25, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75, 0.75])


# ----------------------------------------------------------------- alignment


def test_procrustes_recovers_a_similarity_exactly():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(7, 3)) * 30
    T = random_similarity(3)
    for scale in (True, False):
        T_ = T if scale else Similarity(1.0, T.rotation, T.translation)
        got = procrustes(X, T_.apply(X), scale=scale)
        assert got.scale == pytest.approx(T_.scale, rel=1e-12)
        np.testing.assert_allclose(got.rotation, T_.rotation, atol=1e-12)
        np.testing.assert_allclose(got.translation, T_.translation, atol=1e-9)
    mirrored = X * [1, 1, -1]  # the best fit would be a reflection: a proper rotation instead
    assert np.linalg.det(procrustes(X, mirrored).rotation) == pytest.approx(1.0)
    with pytest.raises(AlignmentError, match="collinear"):
        procrustes(np.outer(np.arange(7.0), [1, 2, 3]), X)


def test_now_landmarks_and_crop_sphere_by_hand():
    L68 = np.arange(68 * 3, dtype=float).reshape(68, 3)
    np.testing.assert_array_equal(now_landmarks(L68), L68[[36, 39, 42, 45, 33, 48, 54]])
    assert NOW_FROM_IBUG68 == (36, 39, 42, 45, 33, 48, 54)
    with pytest.raises(AlignmentError, match="5 landmarks"):
        now_landmarks(L68[:5], "x.txt")
    # Eye corners 80 mm apart, inner corners at y = 40, nose bottom at the origin.
    L7 = np.array([[-40, 40, 0], [-15, 40, 0], [15, 40, 0], [40, 40, 0], [0, 0, 0],
                   [-25, -30, 0], [25, -30, 0]], dtype=float)
    centre, radius = crop_sphere(L7)
    np.testing.assert_allclose(centre, [0, 12, 0])  # nb + 0.3 (br - nb)
    assert radius == pytest.approx(1.4 * (80 + 40) / 2)


def test_sphere_one_millimetre_larger_gives_one_millimetre():
    R = 50.0
    scan = sphere(R, 10_000)  # vertices exactly on the sphere
    bigger = sphere(R + 1.0, 40_000)
    # "Outer eye corners" at opposite ends of the sphere: NoW's crop sphere
    # (radius 1.4 x (2R + |br - nb|) / 2 about a point near the surface) then
    # holds the whole scan, and the concentric pose is the best one.
    directions = np.array([[-1, 0.0, 0], [-0.3, 0.2, 1], [0.3, 0.2, 1], [1, 0.0, 0],
                           [0, -1, 0.2], [-0.3, -0.6, 1], [0.3, -0.6, 1]])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    result = evaluate_mesh(scan.V, scan.F, R * directions, bigger.V, bigger.F,
                           (R + 1) * directions, metric=True)
    # The big sphere's flat triangles lie inside it by at most the sag
    # R' - sqrt(R'^2 - rho^2) (rho: the largest circumradius).
    A, B, C = (bigger.V[bigger.F[:, k]] for k in range(3))
    a, b, c = (np.linalg.norm(B - C, axis=1), np.linalg.norm(A - C, axis=1),
               np.linalg.norm(A - B, axis=1))
    rho = (a * b * c / (2 * np.linalg.norm(np.cross(B - A, C - A), axis=1))).max()
    sag = (R + 1) - np.sqrt((R + 1) ** 2 - rho ** 2)
    assert 0 < sag < 4e-3
    d = result.distances
    assert len(d) == len(scan.V) and result.transform.scale == 1.0
    # The triangulation's own asymmetry (within the sag) may move the best
    # centre by up to about the sag too.
    assert d.min() >= 1.0 - 2 * sag and d.max() <= 1.0 + sag, (d.min(), d.max(), sag)
    assert abs(np.median(d) - 1.0) <= sag
    np.testing.assert_allclose(d, point_surface_distance(
        scan.V, result.transform.apply(bigger.V), bigger.F)[0], atol=1e-12)
    # Scale fitted (NoW's default), the bigger sphere is shrunk onto the scan.
    free = evaluate_mesh(scan.V, scan.F, R * directions, bigger.V, bigger.F,
                         (R + 1) * directions)
    assert free.transform.scale == pytest.approx(R / (R + 1), abs=1e-3)
    assert np.median(free.distances) < sag


@pytest.mark.parametrize("seed", [0, 1])
def test_random_similarity_with_noisy_landmarks_is_recovered(seed):
    V, F, L = face()
    T = random_similarity(seed)
    noise = np.random.default_rng(seed + 10).normal(size=L.shape) * 2.0  # 2 mm
    result = evaluate_mesh(V, F, L, T.apply(V), F, T.apply(L) + noise)
    assert result.fit.rms_before > 0.1  # the landmarks alone leave it off
    assert np.median(result.distances) < 0.01 and result.distances.max() < 0.01
    # The fitted transform undoes T.
    back = T.then(result.transform)
    assert back.scale == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(back.rotation, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(back.translation, 0, atol=1e-3)


def test_metric_does_not_rescale():
    V, F, L = face()
    T = Similarity(1.1, np.eye(3), np.zeros(3))  # the prediction at 1.1 x scale
    scaled = evaluate_mesh(V, F, L, T.apply(V), F, T.apply(L))
    assert np.median(scaled.distances) < 0.01
    assert scaled.transform.scale == pytest.approx(1 / 1.1, rel=1e-6)
    metric = evaluate_mesh(V, F, L, T.apply(V), F, T.apply(L), metric=True)
    assert metric.transform.scale == 1.0
    assert np.median(metric.distances) > 1.0  # reported as wrong


def test_regions_follow_the_landmarks():
    V, F, L = face()
    labels = face_regions(L, L)
    name = np.array(REGIONS)[labels]
    assert set(name[27:36]) == {"nose"} and set(name[36:48]) == {"eyes"}
    assert set(name[17:27]) == {"eyes"} and set(name[48:60]) == {"mouth"}
    assert set(name[6:11]) == {"chin"} and set(name[list(range(0, 6)) + list(range(11, 17))]) \
        == {"cheeks"}
    above = mean_surface(0.0, 85.0)[None]  # 30 mm above the brows, mid forehead
    cheek = mean_surface(-55.0, -10.0)[None]  # under the right eye, beside the nose
    assert [REGIONS[k] for k in face_regions(np.vstack([above, cheek]), L)] \
        == ["forehead", "cheeks"]
    # The regions belong to the face, not to the frame: a similarity moves nothing.
    result = evaluate_mesh(V, F, L, V, F, L, regions=True)
    T = random_similarity(5)
    np.testing.assert_array_equal(face_regions(T.apply(result.points), T.apply(L)),
                                  result.regions)
    counts = np.bincount(result.regions, minlength=len(REGIONS))
    assert (counts > 100).all(), dict(zip(REGIONS, counts))
    assert sum(s.n_points for s in result.region_stats().values()) == len(result.points)
    with pytest.raises(AlignmentError, match="68 iBUG"):
        evaluate_mesh(V, F, L[list(NOW_FROM_IBUG68)], V, F, L, regions=True)


def test_error_ply_round_trip(tmp_path):
    V, F = sphere(10.0, 200).V, sphere(10.0, 200).F
    err = np.linspace(0, 5, len(V))
    from dce.geom.mesh_eval import error_colors
    colors = error_colors(err)
    assert tuple(colors[0]) == (0, 0, 255) and tuple(colors[-1]) == (230, 0, 0)
    path = write_scalar_ply(tmp_path / "e.ply", V, F, {"error_mm": err}, colors)
    mesh = load_mesh(path)
    np.testing.assert_array_equal(mesh.vertices, V)
    np.testing.assert_array_equal(mesh.faces, F)
    np.testing.assert_allclose(mesh.colors * 255, colors, atol=1e-4)
    raw = path.read_bytes()
    header, body = raw.split(b"end_header\n", 1)
    assert b"property float error_mm" in header
    rows = np.frombuffer(body[:len(V) * 31], dtype=[("xyz", "<f8", 3), ("rgb", "u1", 3),
                                                    ("e", "<f4")])
    np.testing.assert_allclose(rows["e"], err, rtol=1e-6)


# ----------------------------------------------------------------- dce-eval-mesh


def write_face(folder, stem, V, F, L, ext="ply"):
    save_mesh(folder / f"{stem}.{ext}", Mesh(V, F))
    write_landmarks(folder / f"{stem}.landmarks.txt", Landmarks(L))


def scan_of(V, shape):
    """The grid face as an FRGC-like range scan (rows top-down)."""
    xyz = V.reshape(shape + (3,))[::-1]
    return RangeScan(xyz, np.ones(shape, dtype=bool))


def test_eval_mesh_folders(tmp_path, capsys):
    gt, pred, out = tmp_path / "gt", tmp_path / "pred", tmp_path / "out"
    gt.mkdir()
    pred.mkdir()
    V, F, L = face(2.0)
    Vb, _, _ = face(2.0, bump=6.0)
    write_face(gt, "alice", V, F, L)
    write_face(gt, "bob", Vb, F, L, ext="obj")
    write_face(gt, "carol", V, F, L)  # no prediction: missing
    # A range scan with its photo's 68 landmarks (FRGC: grid = photo pixels).
    n = len(np.arange(-100.0, 100.0 + 1e-9, 2.0))
    write_abs(gt / "dave.abs.gz", scan_of(V, (n, n)))
    rows = (n - 1) - (LANDMARK_UV[:, 1] + 100) / 2.0
    cols = (LANDMARK_UV[:, 0] + 100) / 2.0
    write_landmarks(gt / "dave.pts", Landmarks(np.column_stack([cols, rows])))

    T = random_similarity(7)
    write_face(pred, "alice", T.apply(V), F, T.apply(L)[list(NOW_FROM_IBUG68)])  # NoW's 7
    write_face(pred, "bob", T.apply(V), F, T.apply(L))  # the bump-less face: wrong at the bump
    write_face(pred, "dave", T.apply(V), F, T.apply(L))
    write_face(pred, "erin", V, F, L)  # no ground truth: extra

    assert eval_mesh.main(["--pred", str(pred), "--gt", str(gt), "-o", str(out),
                           "--regions"]) == 0
    printed = capsys.readouterr().out
    assert "| all points |" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missing"] == ["carol"] and summary["extra"] == ["erin"]
    assert summary["n_meshes"] == 3 and set(summary["per_mesh"]) == {"alice", "bob", "dave"}
    per = summary["per_mesh"]
    assert per["alice"]["median_mm"] < 0.01 and per["dave"]["median_mm"] < 0.05
    assert per["bob"]["mean_mm"] > 0.1  # the 6 mm bump is missing from the prediction
    assert summary["n_points"] == sum(p["n_points"] for p in per.values())
    assert set(summary["regions"]) == set(REGIONS)
    # The bump is on the left cheek: the cheeks carry bob's largest errors.
    bob = per["bob"]["regions"]
    assert all(bob["cheeks"]["std_mm"] > 2 * s["std_mm"] for k, s in bob.items() if k != "cheeks")
    error_ply = load_mesh(out / "bob_error.ply")
    assert error_ply.n_vertices == per["bob"]["n_points"] and error_ply.colors is not None
    assert Image.open(out / "cumulative_error.png").size == (640, 440)
    assert "carol" in (out / "summary.md").read_text()


def test_eval_mesh_bad_inputs_exit_2_naming_the_file(tmp_path, capsys):
    V, F, L = face(4.0)

    def case(name, setup):
        gt, pred = tmp_path / name / "gt", tmp_path / name / "pred"
        gt.mkdir(parents=True)
        pred.mkdir()
        write_face(gt, "a", V, F, L)
        write_face(pred, "a", V, F, L)
        bad = setup(gt, pred)
        assert eval_mesh.main(["--pred", str(pred), "--gt", str(gt),
                               "-o", str(tmp_path / name / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("dce-eval-mesh: ") and bad in err and "Traceback" not in err, err
        return err

    def no_faces(gt, pred):
        (pred / "a.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"
                                    "property float y\nproperty float z\nend_header\n"
                                    "0 0 0\n1 0 0\n0 1 0\n")
        return "a.ply"

    def nan_landmark(gt, pred):
        lines = (pred / "a.landmarks.txt").read_text().splitlines()
        lines[5] = "nan 1 2"
        (pred / "a.landmarks.txt").write_text("\n".join(lines))
        return "a.landmarks.txt"

    def five_landmarks(gt, pred):
        write_landmarks(gt / "a.landmarks.txt", Landmarks(L[:5]))
        return str(gt / "a.landmarks.txt")

    def no_landmarks(gt, pred):
        (pred / "a.landmarks.txt").unlink()
        return "a.landmarks.txt"

    def two_files(gt, pred):
        save_mesh(pred / "a.obj", Mesh(V, F))
        return "a.obj"

    assert "no faces" in case("faces", no_faces)
    assert "NaN" in case("nan", nan_landmark)
    assert "5 landmarks" in case("five", five_landmarks)
    case("missing", no_landmarks)
    case("two", two_files)
    def no_match(gt, pred):
        (pred / "a.ply").rename(pred / "b.ply")
        return "no prediction has a ground truth"

    case("none", no_match)


def test_eval_mesh_workers_give_the_serial_figures_and_name_a_bad_file(tmp_path, capsys):
    """Two processes score the pairs as one does, in the same order, and a
    file that fails inside a worker is still named."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    V, F, L = face(3.0)
    Vb, _, _ = face(3.0, bump=6.0)
    for k, stem in enumerate(("a", "b", "c")):
        write_face(gt, stem, Vb if stem == "b" else V, F, L)
        T = random_similarity(k)
        write_face(pred, stem, T.apply(V), F, T.apply(L))
    serial = evaluate_folders(pred, gt, tmp_path / "one", workers=1)
    pooled = evaluate_folders(pred, gt, tmp_path / "two", workers=2)
    assert json.loads((tmp_path / "one" / "summary.json").read_text()) == \
        json.loads((tmp_path / "two" / "summary.json").read_text())
    np.testing.assert_array_equal(serial.distances, pooled.distances)
    assert list(pooled.summary["per_mesh"]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="workers"):
        evaluate_folders(pred, gt, tmp_path / "zero", workers=0)

    lines = (pred / "b.landmarks.txt").read_text().splitlines()
    lines[3] = "1 nan 2"
    (pred / "b.landmarks.txt").write_text("\n".join(lines))
    assert eval_mesh.main(["--pred", str(pred), "--gt", str(gt), "-o", str(tmp_path / "bad"),
                           "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "b.landmarks.txt" in err and "NaN" in err and "Traceback" not in err, err


# ----------------------------------------------------------------- real scan


def test_lee_perry_smith_against_itself_and_its_smooth_face(shared_data):
    folder = shared_data / "lee-perry-smith"
    detailed = load_mesh(folder / "lps_detailed_face.ply")
    smooth = load_mesh(folder / "lps_smooth_face.ply")
    L = np.loadtxt(folder / "lps_landmarks_68.txt")
    T = random_similarity(11)
    noise = np.random.default_rng(0).normal(size=L.shape) * 2.0
    itself = evaluate_mesh(smooth.vertices[::3], np.zeros((0, 3)), L, T.apply(smooth.vertices),
                           smooth.faces, T.apply(L) + noise)
    assert np.median(itself.distances) < 0.01
    # Detailed scan vs the smooth face (the same vertices without the
    # displacement): the identity pose (the landmarks are the same) already
    # has each point within its displacement of the smooth surface, and ICP
    # only lowers the mean squared distance from there.
    # (Every third vertex of the scan: the points are what is scored.)
    scan = detailed.vertices[::3]
    versus = evaluate_mesh(scan, np.zeros((0, 3)), L, smooth.vertices, smooth.faces, L,
                           metric=True)
    keep = inside_sphere(scan, *crop_sphere(now_landmarks(L)))
    np.testing.assert_array_equal(versus.points, scan[keep])
    displacement = np.linalg.norm(scan - smooth.vertices[::3], axis=1)[keep]
    rms = np.sqrt(np.mean(versus.distances ** 2))
    assert rms <= np.sqrt(np.mean(displacement ** 2)) + 1e-9
    assert np.median(versus.distances) > 0.5 * np.median(displacement)
