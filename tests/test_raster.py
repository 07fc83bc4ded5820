"""dce.geom.raster against an independent brute-force reference.

The reference casts a ray along +z through every pixel centre and every
triangle (a 2x2 barycentric solve in plain numpy, nothing shared with the
rasterizer) and keeps the smallest z. Meshes are built with non-integer
coordinates so that no centre lies on an outer edge, except in the tests made
to put centres exactly on shared edges and vertices.
"""
import numpy as np
import pytest
from scipy.spatial import ConvexHull, Delaunay

from dce.geom.raster import rasterize, rasterize_batch


def reference(V, F, A, height, width):
    """Brute force: (image, mask, depth, face_id, margin). margin is, per
    pixel, the smallest |barycentric coordinate| over all triangles, a measure
    of how close the centre is to some edge (0 means on one)."""
    V = np.asarray(V, float)
    A = np.asarray(A, float).reshape(len(V), -1)
    jj, ii = np.meshgrid(np.arange(width, dtype=float), np.arange(height, dtype=float))
    px, py = jj.ravel(), ii.ravel()
    depth = np.full(px.shape, np.inf)
    face_id = np.full(px.shape, -1)
    image = np.zeros((px.size, A.shape[1]))
    margin = np.full(px.shape, np.inf)
    for t, (a, b, c) in enumerate(F):
        (xa, ya, za), (xb, yb, zb), (xc, yc, zc) = V[a], V[b], V[c]
        # P = A + u (B - A) + v (C - A), solved by Cramer's rule.
        det = (xb - xa) * (yc - ya) - (xc - xa) * (yb - ya)
        if det == 0:
            continue
        u = ((px - xa) * (yc - ya) - (xc - xa) * (py - ya)) / det
        v = ((xb - xa) * (py - ya) - (px - xa) * (yb - ya)) / det
        w = 1 - u - v
        margin = np.minimum(margin, np.min(np.abs([u, v, w]), axis=0))
        hit = (u >= 0) & (v >= 0) & (w >= 0)
        z = za + u * (zb - za) + v * (zc - za)
        nearer = hit & (z < depth)
        depth[nearer] = z[nearer]
        face_id[nearer] = t
        image[nearer] = (w[nearer, None] * A[a] + u[nearer, None] * A[b]
                         + v[nearer, None] * A[c])
    shape = (height, width)
    return (image.reshape(height, width, -1), np.isfinite(depth).reshape(shape),
            depth.reshape(shape), face_id.reshape(shape), margin.reshape(shape))


def icosphere(level):
    """Unit sphere: an icosahedron subdivided `level` times, outward faces."""
    p = (1 + 5 ** 0.5) / 2
    V = [(-1, p, 0), (1, p, 0), (-1, -p, 0), (1, -p, 0), (0, -1, p), (0, 1, p),
         (0, -1, -p), (0, 1, -p), (p, 0, -1), (p, 0, 1), (-p, 0, -1), (-p, 0, 1)]
    F = [(0, 11, 5), (0, 5, 1), (0, 1, 7), (0, 7, 10), (0, 10, 11), (1, 5, 9), (5, 11, 4),
         (11, 10, 2), (10, 7, 6), (7, 1, 8), (3, 9, 4), (3, 4, 2), (3, 2, 6), (3, 6, 8),
         (3, 8, 9), (4, 9, 5), (2, 4, 11), (6, 2, 10), (8, 6, 7), (9, 8, 1)]
    V = [np.array(v, float) / np.linalg.norm(v) for v in V]
    for _ in range(level):
        mid = {}

        def midpoint(i, j):
            key = (min(i, j), max(i, j))
            if key not in mid:
                m = V[i] + V[j]
                V.append(m / np.linalg.norm(m))
                mid[key] = len(V) - 1
            return mid[key]

        F = [f for a, b, c in F for f in (
            (a, midpoint(a, b), midpoint(c, a)), (b, midpoint(b, c), midpoint(a, b)),
            (c, midpoint(c, a), midpoint(b, c)),
            (midpoint(a, b), midpoint(b, c), midpoint(c, a)))]
    return np.array(V), np.array(F)


def random_rotation(rng):
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def linear_attrs(V, coeffs):
    """Channels a*x + b*y + c*z + d, one per row of coeffs (C, 4)."""
    return V @ coeffs[:, :3].T + coeffs[:, 3]


def test_one_triangle_covers_the_hand_counted_centres():
    # x >= 0.5, y >= 0.5, x + y <= 7.2: centres (j, i) with j, i >= 1 and
    # j + i <= 7, that is 6 + 5 + 4 + 3 + 2 + 1 = 21 of them.
    V = np.array([[0.5, 0.5, 2.0], [6.7, 0.5, 2.0], [0.5, 6.7, 2.0]])
    image, mask, depth = rasterize(V, [[0, 1, 2]], np.ones(3), 10, 10, return_depth=True)
    jj, ii = np.meshgrid(np.arange(10), np.arange(10))
    expected = (jj >= 1) & (ii >= 1) & (jj + ii <= 7)
    assert expected.sum() == 21
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(image[..., 0], expected.astype(np.float32))
    np.testing.assert_array_equal(depth[mask], 2.0)
    assert np.all(np.isinf(depth[~mask]))


@pytest.mark.parametrize("seed", range(4))
def test_random_sphere_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    S, F = icosphere(3)  # 642 vertices, 1280 faces, a few pixels each
    S = S @ random_rotation(rng).T
    H, W = 41, 53
    # Scale into the image with non-integer offsets; z away from the viewer.
    V = np.column_stack([S[:, 0] * 18 + 26.37 + rng.uniform(-1, 1),
                         S[:, 1] * 17 + 20.29 + rng.uniform(-1, 1), S[:, 2] * 18 + 50])
    coeffs = rng.uniform(-0.1, 0.1, (3, 4))
    A = linear_attrs(V, coeffs)
    image, mask, depth = rasterize(V, F, A, H, W, return_depth=True)
    ref_image, ref_mask, ref_depth, _, margin = reference(V, F, A, H, W)
    clear = margin > 1e-9  # centres not on any edge
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(mask[clear], ref_mask[clear])
    both = mask & ref_mask
    np.testing.assert_allclose(depth[both], ref_depth[both], atol=1e-5, rtol=0)
    # Linear channels are exact at the drawn surface point, whichever face.
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    exact = linear_attrs(np.stack([jj, ii, depth], -1)[mask], coeffs)
    np.testing.assert_allclose(image[mask], exact, atol=1e-5, rtol=0)
    np.testing.assert_allclose(image[both], ref_image[both], atol=1e-5, rtol=0)
    assert np.all(image[~mask] == 0)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_nearest_of_two_overlapping_layers_wins_in_either_order(order):
    # Two squares at z = 5 (near, channel 1) and z = 9 (far, channel 2).
    quad = np.array([[2.3, 2.4], [17.6, 2.4], [17.6, 13.7], [2.3, 13.7]])
    layers = []
    for z, value, shift in ((5.0, 1.0, 0.0), (9.0, 2.0, 4.1)):
        xy = quad + shift
        layers.append((np.column_stack([xy, np.full(4, z)]), np.full(4, value)))
    V = np.concatenate([layers[i][0] for i in order])
    A = np.concatenate([layers[i][1] for i in order])
    F = np.array([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    image, mask, depth = rasterize(V, F, A, 24, 26, return_depth=True)
    ref_image, ref_mask, ref_depth, _, _ = reference(V, F, A, 24, 26)
    np.testing.assert_array_equal(mask, ref_mask)
    np.testing.assert_allclose(image[..., 0], ref_image[..., 0], atol=1e-6)
    np.testing.assert_allclose(depth[mask], ref_depth[mask], atol=1e-6)
    assert set(np.unique(image[mask])) == {1.0, 2.0}


@pytest.mark.parametrize("reverse", [False, True])
def test_folded_strip_keeps_the_near_layer(reverse):
    # A strip of quads along +x at z = 8 that folds back over itself and
    # returns toward -x nearer to the viewer (z from 7.5 down to 2); the
    # channel is the column's index along the strip (0-8 out, 9-17 back).
    s = np.linspace(0, 1, 9)
    xs = np.concatenate([3.3 + 17 * s, 19.7 - 17 * s])
    zs = np.concatenate([np.full(9, 8.0), np.linspace(7.5, 2.0, 9)])
    top = np.column_stack([xs, np.full(18, 3.2), zs])
    bottom = np.column_stack([xs, np.full(18, 14.6), zs])
    V = np.concatenate([top, bottom])
    F = np.array([f for i in range(17) for f in ((i, i + 1, 19 + i), (i, 19 + i, 18 + i))])
    if reverse:
        F = F[::-1]
    column = np.arange(18, dtype=float)
    A = np.concatenate([column, column])
    image, mask, depth = rasterize(V, F, A, 18, 24, return_depth=True)
    ref_image, ref_mask, ref_depth, _, margin = reference(V, F, A, 18, 24)
    clear = margin > 1e-9
    np.testing.assert_array_equal(mask[clear], ref_mask[clear])
    both = mask & ref_mask
    np.testing.assert_allclose(depth[both], ref_depth[both], atol=1e-5)
    np.testing.assert_allclose(image[both, 0], ref_image[both, 0], atol=1e-5)
    # Where the two layers overlap, the returning (nearer) one is drawn.
    overlap = image[4:15, 4:20, 0]
    assert np.all(overlap >= 9 - 1e-5)
    assert np.all(depth[4:15, 4:20] < 7.5 + 1e-9)


def coverage_count(V, F, height, width):
    """How many triangles cover each centre, drawing them one at a time."""
    return sum(rasterize(V, [f], np.zeros(len(V)), height, width)[1].astype(int) for f in F)


def test_grid_on_integer_coordinates_covers_each_centre_once():
    # Squares with corners ON pixel centres, split along alternating
    # diagonals: many centres lie exactly on shared edges and vertices.
    n = 7
    g = np.arange(n + 1, dtype=float) * 2 + 3
    xx, yy = np.meshgrid(g, g)
    V = np.column_stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)])
    idx = np.arange(xx.size).reshape(n + 1, n + 1)
    F = []
    for i in range(n):
        for j in range(n):
            a, b, c, d = idx[i, j], idx[i, j + 1], idx[i + 1, j + 1], idx[i + 1, j]
            F += [(a, b, c), (a, c, d)] if (i + j) % 2 else [(a, b, d), (b, c, d)]
    F = np.array(F)
    H = W = 20
    count = coverage_count(V, F, H, W)
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    lo, hi = g[0], g[-1]
    inside = (jj > lo) & (jj < hi) & (ii > lo) & (ii < hi)
    assert np.all(count[inside] == 1)
    assert count.max() == 1
    # Top-left rule on the outer border: top and left edges drawn, the
    # bottom and right ones not.
    assert np.all(count[ii == lo][(jj[ii == lo] >= lo) & (jj[ii == lo] < hi)] == 1)
    assert np.all(count[jj == lo][(ii[jj == lo] >= lo) & (ii[jj == lo] < hi)] == 1)
    assert count[ii == hi].sum() == 0 and count[jj == hi].sum() == 0
    # One call draws the same set.
    np.testing.assert_array_equal(rasterize(V, F, np.zeros(len(V)), H, W)[1], count == 1)


@pytest.mark.parametrize("seed", range(3))
def test_delaunay_of_integer_points_covers_inner_centres_once(seed):
    # Vertices on pixel centres, edges in many directions through centres,
    # and the corners of each face shuffled (either winding).
    rng = np.random.default_rng(seed)
    pts = np.unique(rng.integers(0, 24, (120, 2)), axis=0).astype(float)
    tri = Delaunay(pts)
    F = np.array([rng.permutation(f) for f in tri.simplices])
    V = np.column_stack([pts, rng.uniform(0, 1, len(pts))])
    count = coverage_count(V, F, 24, 24).ravel()
    jj, ii = np.meshgrid(np.arange(24.0), np.arange(24.0))
    centres = np.column_stack([jj.ravel(), ii.ravel()])
    facets = ConvexHull(pts).equations  # inside: n . x + d < 0 for all
    strictly_inside = np.all(centres @ facets[:, :2].T + facets[:, 2] < -1e-9, axis=1)
    outside = tri.find_simplex(centres) < 0
    assert strictly_inside.sum() > 200
    assert np.all(count[strictly_inside] == 1)
    assert np.all(count[outside] == 0)
    assert count.max() == 1


def test_linear_channels_interpolated_exactly_on_random_triangles():
    rng = np.random.default_rng(7)
    H, W = 30, 40
    coeffs = rng.uniform(-0.2, 0.2, (4, 4))
    for _ in range(20):
        V = np.column_stack([rng.uniform(-8, W + 8, 3), rng.uniform(-8, H + 8, 3),
                             rng.uniform(-5, 5, 3)])
        A = linear_attrs(V, coeffs)
        image, mask, depth = rasterize(V, [[0, 1, 2]], A, H, W, return_depth=True)
        ref_image, ref_mask, ref_depth, _, margin = reference(V, [[0, 1, 2]], A, H, W)
        clear = margin > 1e-9
        np.testing.assert_array_equal(mask[clear], ref_mask[clear])
        jj, ii = np.meshgrid(np.arange(W), np.arange(H))
        exact = linear_attrs(np.stack([jj, ii, depth], -1)[mask], coeffs)
        np.testing.assert_allclose(image[mask], exact, atol=1e-5, rtol=0)
        np.testing.assert_allclose(depth[mask & ref_mask], ref_depth[mask & ref_mask], atol=1e-5)


def test_triangles_partly_outside_the_image_are_clipped():
    rng = np.random.default_rng(3)
    H, W = 16, 21
    V = np.column_stack([rng.uniform(-30, 50, 60), rng.uniform(-30, 45, 60),
                         rng.uniform(0, 10, 60)])
    F = rng.integers(0, 60, (25, 3))
    A = np.column_stack([V[:, 2], np.arange(60.0)])
    image, mask, depth, face_id = rasterize(V, F, A, H, W, return_depth=True,
                                            return_face_ids=True)
    ref_image, ref_mask, ref_depth, ref_face, margin = reference(V, F, A, H, W)
    clear = margin > 1e-9
    np.testing.assert_array_equal(mask[clear], ref_mask[clear])
    both = mask & ref_mask & clear
    np.testing.assert_allclose(depth[both], ref_depth[both], atol=1e-5)
    np.testing.assert_array_equal(face_id[both], ref_face[both])
    np.testing.assert_allclose(image[both], ref_image[both], atol=1e-4)
    assert np.all(face_id[~mask] == -1)


def test_degenerate_triangles_draw_nothing_and_winding_does_not_matter():
    V = np.array([[1.5, 1.5, 0], [9.5, 9.5, 0], [5.5, 5.5, 0], [1.5, 1.5, 0],
                  [2.2, 1.1, 1], [9.7, 3.3, 1], [4.4, 8.8, 1]])
    A = np.ones(7)
    assert not rasterize(V, [[0, 1, 2]], A, 12, 12)[1].any()  # collinear
    assert not rasterize(V, [[0, 3, 1]], A, 12, 12)[1].any()  # repeated vertex
    cw = rasterize(V, [[4, 5, 6]], A, 12, 12)[1]
    ccw = rasterize(V, [[4, 6, 5]], A, 12, 12)[1]
    assert cw.sum() > 10
    np.testing.assert_array_equal(cw, ccw)


def test_cull_backfaces_skips_faces_turned_away():
    # In the view frame (y down, z away), a face whose right-handed normal
    # points toward the viewer has a negative z normal.
    V = np.array([[2.2, 1.1, 1.0], [9.7, 3.3, 1.0], [4.4, 8.8, 1.0]])
    n_z = np.cross(V[1] - V[0], V[2] - V[0])[2]
    front, back = ([[0, 1, 2]], [[0, 2, 1]]) if n_z < 0 else ([[0, 2, 1]], [[0, 1, 2]])
    assert rasterize(V, front, np.ones(3), 12, 12, cull_backfaces=True)[1].sum() > 10
    assert not rasterize(V, back, np.ones(3), 12, 12, cull_backfaces=True)[1].any()


def test_batch_equals_one_mesh_at_a_time():
    rng = np.random.default_rng(11)
    meshes = []
    for level, n in ((2, 0), (3, 1), (1, 2), (3, 3), (2, 4)):
        S, F = icosphere(level)
        S = S @ random_rotation(rng).T
        V = np.column_stack([S[:, :2] * rng.uniform(8, 20) + rng.uniform(18, 30, 2),
                             S[:, 2] * 10 + 40])
        meshes.append((V, F, np.column_stack([V[:, 2], S[:, 0], np.full(len(V), n)])))
    images, masks = rasterize_batch(meshes, 48, 56)
    assert images.shape == (5, 48, 56, 3) and masks.shape == (5, 48, 56)
    for b, mesh in enumerate(meshes):
        image, mask = rasterize(*mesh, 48, 56)
        np.testing.assert_array_equal(images[b], image)
        np.testing.assert_array_equal(masks[b], mask)


def test_int32_faces_and_float32_channels_give_the_same_image():
    rng = np.random.default_rng(5)
    S, F = icosphere(2)
    V = np.column_stack([S[:, :2] * 12 + [15.3, 14.6], S[:, 2] * 12 + 30])
    A = rng.integers(-50, 50, (len(V), 3)).astype(np.float32)  # exact in both
    image, mask = rasterize(V, F, A.astype(np.float64), 30, 31)
    image32, mask32 = rasterize(V, F.astype(np.int32), A, 30, 31)
    np.testing.assert_array_equal(mask32, mask)
    np.testing.assert_allclose(image32, image, atol=1e-5)


def test_bad_input_raises_clear_errors():
    V = np.array([[1.5, 1.5, 0], [9.5, 2.5, 0], [4.5, 8.5, 0]])
    F = np.array([[0, 1, 2]])
    with pytest.raises(ValueError, match="verts_px must have shape"):
        rasterize(V[:, :2], F, np.ones(3), 8, 8)
    with pytest.raises(ValueError, match="attrs must have shape"):
        rasterize(V, F, np.ones(4), 8, 8)
    with pytest.raises(ValueError, match="faces must have shape"):
        rasterize(V, F[:, :2], np.ones(3), 8, 8)
    with pytest.raises(ValueError, match="faces must be integer"):
        rasterize(V, F.astype(float), np.ones(3), 8, 8)
    bad = V.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"verts_px\[1\].*not finite"):
        rasterize(bad, F, np.ones(3), 8, 8)
    with pytest.raises(ValueError, match=r"faces\[0\] = \[0, 1, 3\] indexes outside"):
        rasterize(V, [[0, 1, 3]], np.ones(3), 8, 8)
    with pytest.raises(ValueError, match=r"faces\[1\] = \[0, -1, 2\] indexes outside"):
        rasterize(V, [[0, 1, 2], [0, -1, 2]], np.ones(3), 8, 8)
    with pytest.raises(ValueError, match="height and width"):
        rasterize(V, F, np.ones(3), 0, 8)
    with pytest.raises(ValueError, match="same channel count"):
        rasterize_batch([(V, F, np.ones(3)), (V, F, np.ones((3, 2)))], 8, 8)
    with pytest.raises(ValueError, match=r"meshes\[1\]: faces\[0\]"):
        rasterize_batch([(V, F, np.ones(3)), (V, [[0, 1, 5]], np.ones(3))], 8, 8)
