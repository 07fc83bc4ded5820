import numpy as np
import pytest
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from dce.geom.projection import (
    FRONTAL,
    OrthographicCamera,
    fit_orthographic,
    posed_camera,
    rotation_from_euler,
)


def random_camera(rng):
    R = Rotation.random(random_state=rng.integers(1 << 30)).as_matrix()
    return OrthographicCamera(rng.uniform(0.5, 4.0), R, rng.uniform(-50, 300, 2))


def landmark_cloud(rng, k=68):
    return rng.normal(size=(k, 3)) * [40, 50, 25]


def test_exact_correspondences_recover_camera():
    rng = np.random.default_rng(1)
    for _ in range(20):
        cam = random_camera(rng)
        X = landmark_cloud(rng)
        fit = fit_orthographic(cam.project(X)[:, :2], X)
        assert abs(fit.scale - cam.scale) < 1e-9 * cam.scale
        assert np.abs(fit.rotation - cam.rotation).max() < 1e-9
        assert np.abs(fit.translation - cam.translation).max() < 1e-9 * 300
        assert np.linalg.det(fit.rotation) == pytest.approx(1.0, abs=1e-12)


def test_noisy_fit_matches_independent_optimizer_and_degrades_gracefully():
    rng = np.random.default_rng(2)
    cam = OrthographicCamera(2.0, FRONTAL @ rotation_from_euler(25, -10, 5), [128, 128])
    X = landmark_cloud(rng)
    errors = []
    for sigma in (0.5, 2.0, 8.0):
        x = cam.project(X)[:, :2] + rng.normal(scale=sigma, size=(len(X), 2))
        fit = fit_orthographic(x, X)
        cost = np.sum((fit.project(X)[:, :2] - x) ** 2)

        def residual(p):  # rotation vector, scale, translation
            R = Rotation.from_rotvec(p[:3]).as_matrix()
            return ((p[3] * X @ R[:2].T + p[4:]) - x).ravel()

        p0 = np.r_[Rotation.from_matrix(cam.rotation).as_rotvec(), cam.scale, cam.translation]
        ref = least_squares(residual, p0, xtol=1e-15, ftol=1e-15, gtol=1e-15)
        assert cost <= 2 * ref.cost * (1 + 1e-8)  # least_squares reports 0.5*sum
        angle = np.degrees(Rotation.from_matrix(fit.rotation @ cam.rotation.T).magnitude())
        errors.append(angle)
        # Reprojection error at the noise level, not beyond.
        rms = np.sqrt(cost / len(X))
        assert rms < 1.6 * sigma
    assert errors[0] < errors[2] and errors[2] < 5.0


def test_project_unproject_round_trip():
    rng = np.random.default_rng(3)
    cam = random_camera(rng)
    X = landmark_cloud(rng, 500)
    np.testing.assert_allclose(cam.unproject(cam.project(X)), X, atol=1e-10)


def test_frontal_conventions():
    cam = OrthographicCamera(1.0, FRONTAL, [100.0, 100.0])
    P = cam.project(np.array([[0, 0, 0], [0, 10, 0], [10, 0, 0], [0, 0, 10]], float))
    assert P[1, 1] == 90.0  # +Y (up) is toward smaller rows
    assert P[2, 0] == 110.0  # +X is to the right
    assert P[3, 2] == -10.0  # toward the viewer: smaller depth
    np.testing.assert_allclose(cam.view_direction, [0, 0, 1])


def test_euler_angles_hand_computed():
    nose = np.array([0.0, 0.0, 1.0])
    np.testing.assert_allclose(rotation_from_euler(90, 0, 0) @ nose, [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(rotation_from_euler(0, 90, 0) @ nose, [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(rotation_from_euler(0, 0, 90) @ [1.0, 0, 0], [0, 1, 0], atol=1e-12)


def test_posed_camera_centres_the_point():
    cam = posed_camera(center=[5.0, -3.0, 20.0], scale=2.0, image_size=256, yaw=30, pitch=-10)
    np.testing.assert_allclose(cam.project(np.array([[5.0, -3.0, 20.0]]))[0, :2], [127.5, 127.5])
    assert np.linalg.det(cam.rotation) == pytest.approx(1.0)


def test_serialization_round_trip():
    cam = random_camera(np.random.default_rng(4))
    back = OrthographicCamera.from_dict(cam.to_dict())
    np.testing.assert_array_equal(back.rotation, cam.rotation)
    assert back.scale == cam.scale


@pytest.mark.parametrize("x,X,message", [
    (np.zeros((3, 2)), np.zeros((3, 3)), "at least 4"),
    (np.zeros((5, 2)), np.c_[np.random.rand(5, 2), np.zeros(5)], "coplanar"),
    (np.full((5, 2), np.nan), np.random.rand(5, 3), "NaN"),
    (np.zeros((5, 3)), np.random.rand(5, 3), "(k,2)"),
])
def test_bad_input_is_explained(x, X, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        fit_orthographic(x, X)


def test_crop_camera_maps_the_crop_box_onto_the_image():
    from dce.geom.projection import crop_camera
    cam = OrthographicCamera(1.5, FRONTAL @ rotation_from_euler(10, 5, 0), [320.0, 240.0])
    X = np.random.default_rng(5).normal(size=(50, 3)) * 30
    crop = crop_camera(cam, center_px=[300.0, 250.0], crop_size_px=200.0, image_size=256)
    p, q = cam.project(X), crop.project(X)
    # Pixel centres: x' = (x - 300) * 256/200 + 127.5, depth unchanged.
    np.testing.assert_allclose(q[:, 0], (p[:, 0] - 300.0) * 1.28 + 127.5)
    np.testing.assert_allclose(q[:, 1], (p[:, 1] - 250.0) * 1.28 + 127.5)
    np.testing.assert_allclose(q[:, 2], p[:, 2])
