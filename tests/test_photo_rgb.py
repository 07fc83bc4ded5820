"""The r, g, b channels sampled from a photo per pixel (not per vertex).

Expected values are written from the cameras' definitions (x_px = s X + tx,
y_px = -s Y + ty for the frontal rotation) and from closed forms of the
bilinear interpolation of 0/1 patterns, not from the code under test.
"""

import numpy as np
import pytest

from dce.geom.dataset import PreparedMesh, render_view, sample_photo_colors
from dce.geom.dce import SurfaceGeometry, render_dce, sample_image_bilinear
from dce.geom.io import Mesh, load_mesh, save_mesh
from dce.geom.projection import FRONTAL, OrthographicCamera


def square(half):
    """Two triangles covering [-half, half]^2 mm at z = 0, facing +z."""
    V = np.array([[-half, -half, 0], [half, -half, 0], [half, half, 0], [-half, half, 0]], float)
    return Mesh(V, np.array([[0, 1, 2], [0, 2, 3]]))


def flat_geometry(mesh):
    return SurfaceGeometry(np.tile([0.0, 0.0, 1.0], (mesh.n_vertices, 1)),
                           np.zeros(mesh.n_vertices))


def fine_photo(size):
    """(size, size, 3) uint8: r a checkerboard of 2 px squares, g stripes
    of period 4 px along x (a sampled sine), b a checkerboard of 1 px."""
    y, x = np.mgrid[:size, :size]
    r = ((x // 2 + y // 2) % 2) * 255
    g = np.rint(127.5 + 127.5 * np.sin(2 * np.pi * x / 4 + 0.3))
    b = ((x + y) % 2) * 255
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def rgb_of(image):
    return np.stack([image.physical(c) for c in "rgb"], axis=-1)


# ---------------------------------------------------------- bilinear sampling


def test_bilinear_exact_at_centres_average_between_and_clamped_outside():
    image = np.zeros((3, 4, 3), np.uint8)
    image[..., 0] = [[0, 10, 20, 30], [40, 50, 60, 70], [80, 90, 100, 110]]
    image[..., 1] = 255
    image[1, 2, 2] = 255

    def at(*xy):
        return sample_image_bilinear(image, np.array(xy, float)).squeeze()

    # Pixel centres sit at integer (x column, y row).
    np.testing.assert_allclose(at([2, 1]), [60 / 255, 1, 1], atol=1e-6)
    np.testing.assert_allclose(at([3, 2]), [110 / 255, 1, 0], atol=1e-6)
    # Halfway between two pixels: their average; in the middle of four: theirs.
    np.testing.assert_allclose(at([1.5, 1]), [55 / 255, 1, 0.5], atol=1e-6)
    np.testing.assert_allclose(at([2, 0.5]), [40 / 255, 1, 0.5], atol=1e-6)
    np.testing.assert_allclose(at([1.5, 0.5]), [35 / 255, 1, 0.25], atol=1e-6)
    # A quarter of the way: 3/4 of the near pixel.
    np.testing.assert_allclose(at([2.25, 2]), [102.5 / 255, 1, 0], atol=1e-6)
    # Outside: the nearest border point.
    np.testing.assert_allclose(at([-7, -3], [9, 1], [3.5, 9], [1.5, -0.1]),
                               [[0, 1, 0], [70 / 255, 1, 0], [110 / 255, 1, 0],
                                [15 / 255, 1, 0]], atol=1e-6)
    # Any leading shape; float images in [0, 1] are taken as they are.
    xy = np.random.default_rng(0).uniform(-1, 4, (5, 7, 2))
    out = sample_image_bilinear(image, xy)
    assert out.shape == (5, 7, 3) and out.dtype == np.float32
    np.testing.assert_allclose(sample_image_bilinear(image / 255.0, xy), out, atol=1e-6)
    with pytest.raises(ValueError, match="uint8 or float"):
        sample_image_bilinear(image.astype(np.int32), xy)


# -------------------------------------------------------- per-pixel colours


def test_photo_pattern_survives_a_mesh_of_two_triangles():
    size = 64
    photo = fine_photo(size)
    mesh = square(40.0)  # 80 mm at 1 px/mm: covers the whole 64 px image
    camera = OrthographicCamera(1.0, FRONTAL, [31.5, 31.5])
    geometry = flat_geometry(mesh)
    image = render_dce(mesh, camera, size, "DCE+RGB", geometry, photo=(photo, camera))
    assert image.mask.all()
    # The render camera is the photo camera: every pixel is its photo pixel.
    np.testing.assert_allclose(rgb_of(image), photo / 255.0, atol=1e-4)
    for c in range(3, 6):
        assert (image.offset[c], image.scale[c]) == (0.5, 0.5)
    # The pattern's variance is all there, and its pixel-to-pixel contrast.
    per_pixel = rgb_of(image)
    np.testing.assert_allclose(per_pixel.var(axis=(0, 1)), (photo / 255.0).var(axis=(0, 1)),
                               rtol=1e-3)
    assert np.abs(np.diff(per_pixel[..., 2], axis=1)).mean() > 0.99
    # Colours sampled at the 4 vertices (the old way) cannot hold it.
    old = Mesh(mesh.vertices, mesh.faces, sample_photo_colors(mesh.vertices, camera, photo))
    per_vertex = rgb_of(render_dce(old, camera, size, "DCE+RGB", geometry))
    assert np.abs(per_vertex - photo / 255.0).mean() > 0.25
    assert np.abs(np.diff(per_vertex[..., 2], axis=1)).mean() < 0.05
    # The other channels do not depend on where the colours come from.
    plain = render_dce(mesh, camera, size, "DCE", geometry)
    assert image.image[..., :3].tobytes() == plain.image.tobytes()
    np.testing.assert_array_equal(image.offset[:3], plain.offset)
    np.testing.assert_array_equal(image.scale[:3], plain.scale)
    # A photo without colour channels asked for changes nothing.
    again = render_dce(mesh, camera, size, "DCE", geometry, photo=(photo, camera))
    assert again.image.tobytes() == plain.image.tobytes()


def tri(t):
    """Linear interpolation of t mod 2 sampled at the integers (0, 1, 0, 1
    ...): a triangle wave between 0 (even) and 1 (odd)."""
    return 1.0 - np.abs(np.mod(t, 2.0) - 1.0)


def test_photo_at_another_scale_and_offset_is_sampled_where_the_surface_projects():
    # The photo shows the face at 2 px/mm (128 px); the render at 0.8 px/mm.
    y, x = np.mgrid[:128, :128]
    photo = (np.stack([x % 2, y % 2, (x + y) % 2], axis=-1) * 255).astype(np.uint8)
    photo_camera = OrthographicCamera(2.0, FRONTAL, [60.25, 66.75])
    camera = OrthographicCamera(0.8, FRONTAL, [30.0, 33.5])
    mesh = square(30.0)
    image = render_dce(mesh, camera, 64, ("b", "depth", "r", "g"), flat_geometry(mesh),
                       photo=(photo, photo_camera))
    # Render pixel (row i, column j) is the point X = (j - 30) / 0.8,
    # Y = -(i - 33.5) / 0.8, which the photo shows at (2 X + 60.25, -2 Y + 66.75).
    i, j = np.nonzero(image.mask)
    xp, yp = 2.5 * (j - 30.0) + 60.25, 2.5 * (i - 33.5) + 66.75
    assert xp.min() >= 0 and xp.max() <= 127 and yp.min() >= 0 and yp.max() <= 127
    # Bilinear samples of x mod 2, y mod 2 and their exclusive or.
    r, g = tri(xp), tri(yp)
    np.testing.assert_allclose(image.physical("r")[i, j], r, atol=1e-4)
    np.testing.assert_allclose(image.physical("g")[i, j], g, atol=1e-4)
    np.testing.assert_allclose(image.physical("b")[i, j], r + g - 2 * r * g, atol=1e-4)
    # The square spans x_px 6..54 and y_px 9.5..57.5 (+-24 around the
    # centre); background is -1 in every channel.
    rows, cols = np.nonzero(image.mask.any(axis=1))[0], np.nonzero(image.mask.any(axis=0))[0]
    assert rows.min() >= 10 and rows.max() <= 57 and cols.min() >= 6 and cols.max() <= 54
    assert image.mask.sum() >= 48 * 48  # pixels on an edge go to one side only
    assert (image.image[~image.mask] == -1.0).all()
    np.testing.assert_allclose(image.physical("depth")[i, j], 0.0, atol=1e-6)


def test_prepared_side_with_a_photo_renders_and_returns_its_colours():
    photo = fine_photo(64)
    camera = OrthographicCamera(1.0, FRONTAL, [31.5, 31.5])
    mesh = square(40.0)
    side = PreparedMesh(mesh, flat_geometry(mesh), None, camera, photo)
    image, rgb = render_view(side, camera, 64, "DCE+RGB")
    np.testing.assert_allclose(rgb_of(image), photo / 255.0, atol=1e-4)
    np.testing.assert_allclose(rgb, photo / 255.0, atol=1e-4)
    assert mesh.colors is None  # the mesh itself is left uncoloured


# ---------------------------------------------------------- vertex colours


def test_mesh_with_its_own_colours_renders_them_without_a_photo(tmp_path):
    # A grid whose colours are linear in x, y: interpolation reproduces them.
    n, half = 9, 40.0
    xs = np.linspace(-half, half, n)
    X, Y = np.meshgrid(xs, xs)
    V = np.column_stack([X.ravel(), Y.ravel(), np.zeros(X.size)])
    a = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()
    F = np.concatenate([np.column_stack([a, a + 1, a + n + 1]),
                        np.column_stack([a, a + n + 1, a + n])])
    colors = np.column_stack([(V[:, 0] + half) / (2 * half), (V[:, 1] + half) / (2 * half),
                              np.full(len(V), 0.25)])
    save_mesh(tmp_path / "coloured.ply", Mesh(V, F, colors))
    mesh = load_mesh(tmp_path / "coloured.ply")  # 8-bit colours
    camera = OrthographicCamera(0.5, FRONTAL, [31.5, 31.5])
    image = render_dce(mesh, camera, 64, "DCE+RGB")
    i, j = np.nonzero(image.mask)
    x_mm, y_mm = (j - 31.5) / 0.5, -(i - 31.5) / 0.5
    np.testing.assert_allclose(image.physical("r")[i, j], (x_mm + half) / (2 * half), atol=1 / 255)
    np.testing.assert_allclose(image.physical("g")[i, j], (y_mm + half) / (2 * half), atol=1 / 255)
    np.testing.assert_allclose(image.physical("b")[i, j], 0.25, atol=1 / 255)
    assert image.mask.sum() >= 40 * 40 and (image.image[~image.mask] == -1.0).all()
