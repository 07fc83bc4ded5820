import igl
import numpy as np
import pytest
from PIL import Image

from dce.geom.dce import SurfaceGeometry, render_dce, save_preview, surface_geometry
from dce.geom.io import Mesh
from dce.geom.normals import vertex_normals
from dce.geom.projection import FRONTAL, OrthographicCamera, posed_camera


def grid_mesh(n=60, half=40.0):
    """A square grid in x, y (mm), counter-clockwise seen from +z."""
    xs = np.linspace(-half, half, n)
    X, Y = np.meshgrid(xs, xs)
    V = np.column_stack([X.ravel(), Y.ravel(), np.zeros(X.size)])
    i = np.arange(n - 1)
    a = (i[:, None] * n + i[None, :]).ravel()
    F = np.concatenate([np.column_stack([a, a + 1, a + n + 1]),
                        np.column_stack([a, a + n + 1, a + n])])
    return V, F


def sphere(radius=50.0, levels=5):
    V, F = igl.icosahedron()
    for _ in range(levels):
        V, F = igl.upsample(V, F)
        V /= np.linalg.norm(V, axis=1, keepdims=True)
    return V * radius, F


def test_tilted_plane_depth_and_elevation_are_exact():
    V, F = grid_mesh()
    slope = np.tan(np.radians(20))
    V[:, 2] = 10.0 + slope * V[:, 0]  # rises toward +x, i.e. toward the viewer
    mesh = Mesh(V, F)
    cam = OrthographicCamera(2.5, FRONTAL, [127.5, 127.5])
    geometry = SurfaceGeometry(vertex_normals(V, F), np.zeros(len(V)))
    dce = render_dce(mesh, cam, size=256, geometry=geometry)
    rows, cols = np.nonzero(dce.mask)
    x_mm = (cols - 127.5) / 2.5
    expected_depth = -(10.0 + slope * x_mm)  # view depth grows away from the viewer
    np.testing.assert_allclose(dce.physical("depth")[rows, cols], expected_depth, atol=1e-4)
    np.testing.assert_allclose(dce.physical("elevation")[rows, cols], np.radians(20), atol=1e-5)
    # Coverage: the 80 mm square at 2.5 px/mm spans pixel centres 27.5..227.5 -> 28..227.
    assert dce.mask.sum() == 200 * 200
    assert (dce.image[~dce.mask] == -1).all()


def test_sphere_depth_curvature_and_back_projection():
    V, F = sphere(50.0)
    mesh = Mesh(V, F)
    cam = posed_camera([0, 0, 0], scale=2.0, image_size=256, yaw=30, pitch=10)
    dce = render_dce(mesh, cam, size=256)
    # The visible silhouette is a disk of radius 100 px around the centre.
    rows, cols = np.nonzero(dce.mask)
    r = np.hypot(rows - 127.5, cols - 127.5)
    assert r.max() < 100.0 and abs(dce.mask.sum() - np.pi * 100 ** 2) < 0.01 * np.pi * 100 ** 2
    # Back-projected depth pixels lie on the sphere (chordal error of the mesh only).
    radius = np.linalg.norm(dce.points(), axis=1)
    assert np.abs(radius - 50.0).max() < 0.1
    # Mean curvature 1/50 per mm, normalized by 0.1/mm.
    inner = dce.mask & (np.hypot(*np.mgrid[:256, :256] - 127.5) < 80)
    assert np.median(dce.physical("curvature")[inner]) == pytest.approx(0.02, rel=0.02)
    # Elevation: the angle between the normal and the view ray equals
    # arcsin(distance from the centre / radius) on a sphere.
    theta = dce.physical("elevation")[inner]
    expected = np.arcsin(np.hypot(*np.nonzero(inner) - np.array([[127.5], [127.5]])) / 100.0)
    assert np.abs(theta - expected).max() < np.radians(1.5)


def test_shared_depth_reference_puts_pairs_on_one_scale():
    V, F = sphere(50.0, levels=4)
    cam = posed_camera([0, 0, 0], scale=2.0, image_size=128)
    geometry = SurfaceGeometry(vertex_normals(V, F), np.zeros(len(V)))
    a = render_dce(Mesh(V, F), cam, 128, "D", geometry, depth_reference=-60.0)
    b = render_dce(Mesh(V * 0.9, F), cam, 128, "D", geometry, depth_reference=-60.0)
    assert a.offset[0] == b.offset[0] and a.scale[0] == b.scale[0]
    centre = (64, 64)
    assert a.physical("depth")[centre] == pytest.approx(-50.0, abs=0.1)
    assert b.physical("depth")[centre] == pytest.approx(-45.0, abs=0.1)


def test_rgb_channels_and_preview(tmp_path):
    V, F = grid_mesh(20)
    colors = np.tile([[1.0, 0.5, 0.0]], (len(V), 1))
    mesh = Mesh(V, F, colors=colors)
    cam = OrthographicCamera(1.0, FRONTAL, [31.5, 31.5])
    dce = render_dce(mesh, cam, 64, "DCE+RGB")
    assert dce.channels == ("depth", "curvature", "elevation", "r", "g", "b")
    for name, value in zip("rgb", (1.0, 0.5, 0.0)):
        np.testing.assert_allclose(dce.physical(name)[dce.mask], value, atol=1e-6)
    path = save_preview(tmp_path / "p.png", [dce, dce], labels=["a", "b"])
    picture = np.asarray(Image.open(path))
    assert picture.shape == (128, 64 * 5, 3)  # D, C, E, RGB, shading


def test_missing_colours_is_explained():
    V, F = grid_mesh(5)
    with pytest.raises(ValueError, match="colours"):
        render_dce(Mesh(V, F), OrthographicCamera(1.0, FRONTAL, [8, 8]), 16, "DCE+RGB")


def test_unknown_channel_set():
    V, F = grid_mesh(5)
    with pytest.raises(ValueError, match="unknown channel set"):
        render_dce(Mesh(V, F), OrthographicCamera(1.0, FRONTAL, [8, 8]), 16, "XYZ")


def test_surface_geometry_sign_on_sphere():
    V, F = sphere(50.0, levels=4)
    g = surface_geometry(Mesh(V, F))
    assert np.median(g.curvature) == pytest.approx(0.02, rel=0.02)
    assert np.median((g.normals * V).sum(1) / 50.0) > 0.99
