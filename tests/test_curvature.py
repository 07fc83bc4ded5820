"""Normal-cycle curvature (dce.geom.curvature) against exact curvatures of
analytic surfaces (tests/analytic.py), hand-computed cases, libigl as a
second method, and the real Lee Perry-Smith face (detailed vs smooth)."""
from functools import cache

import analytic
import igl
import numpy as np
import pytest
import scipy.sparse as sp

from dce.geom import curvature as C

RADIUS = 2.0  # the default
INTERIOR = RADIUS + 2.0  # boundary band excluded: the pooling ball reaches (radius + 1) h


@cache
def surface(name, triangulation, noise=0.0):
    mesh = analytic.SURFACES[name](triangulation=triangulation, seed=7)
    return mesh.with_normal_noise(noise * mesh.size, seed=3) if noise else mesh


@cache
def curvatures(name, triangulation, noise=0.0):
    m = surface(name, triangulation, noise)
    return C.principal_curvatures(m.V, m.F)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x))))


# --- mean curvature on analytic surfaces ---------------------------------------

@pytest.mark.parametrize("triangulation", analytic.TRIANGULATIONS)
@pytest.mark.parametrize("name, rms_bound, p95_bound", [
    ("sphere", 0.02, 0.04),   # measured <= 0.0027 / 0.0032
    ("cylinder", 0.02, 0.04),  # measured <= 0.012 / 0.023 (random Delaunay)
    ("torus", 0.06, 0.12),    # measured <= 0.026 / 0.058
])
def test_mean_curvature_relative_error(name, triangulation, rms_bound, p95_bound):
    m = surface(name, triangulation)
    H = C.mean_curvature(m.V, m.F)
    ok = m.interior(INTERIOR)
    rel = (H - m.H)[ok] / m.H[ok]
    assert rms(rel) <= rms_bound
    assert np.percentile(np.abs(rel), 95) <= p95_bound


@pytest.mark.parametrize("triangulation", analytic.TRIANGULATIONS)
@pytest.mark.parametrize("name, bound", [
    ("saddle", 0.03),         # measured <= 0.012
    ("gaussian_bump", 0.05),  # measured <= 0.015
])
def test_mean_curvature_error_relative_to_curvature_scale(name, triangulation, bound):
    m = surface(name, triangulation)
    k1, k2, _, _ = curvatures(name, triangulation)
    ok = m.interior(INTERIOR)
    scale = rms(np.sqrt((m.k1 ** 2 + m.k2 ** 2) / 2)[ok])
    assert rms((0.5 * (k1 + k2) - m.H)[ok]) / scale <= bound


@pytest.mark.parametrize("triangulation", analytic.TRIANGULATIONS)
@pytest.mark.parametrize("name", ["sphere", "cylinder", "torus"])
def test_mean_curvature_under_normal_noise(name, triangulation):
    # noise std 0.1 % of the radius, i.e. 0.8-2.6 % of an edge length; default
    # radius (measured <= 0.059)
    m = surface(name, triangulation, noise=0.001)
    H = C.mean_curvature(m.V, m.F)
    ok = m.interior(INTERIOR)
    assert rms((H - m.H)[ok] / m.H[ok]) <= 0.15


def test_larger_radius_smooths_noise():
    m = surface("sphere", "random", noise=0.001)
    err = [rms(C.mean_curvature(m.V, m.F, radius=r) - m.H) for r in (1.0, 2.0, 4.0)]
    assert err[0] > err[1] > err[2]


def test_plane_is_flat():
    k1, k2, _, _ = curvatures("plane", "random")
    assert np.abs(k1).max() < 1e-12 and np.abs(k2).max() < 1e-12


# --- sign and units -------------------------------------------------------------

def test_sphere_50mm_has_plus_0_02_per_mm():
    m = analytic.sphere(radius=50.0, triangulation="jittered", seed=1)
    H = C.mean_curvature(m.V, m.F)
    assert abs(H.mean() - 0.02) <= 0.01 * 0.02
    assert (H > 0).all()


def test_flipping_faces_flips_the_sign():
    m = surface("torus", "random")
    H = C.mean_curvature(m.V, m.F)
    flipped = C.mean_curvature(m.V, m.F[:, ::-1])
    np.testing.assert_allclose(flipped, -H, atol=1e-12 * np.abs(H).max())


def test_sign_follows_given_normals():
    m = surface("torus", "random")
    H = C.mean_curvature(m.V, m.F)
    # outward normals on inward faces restore the outward sign
    np.testing.assert_allclose(C.mean_curvature(m.V, m.F[:, ::-1], normals=m.N), H,
                               atol=1e-12 * np.abs(H).max())
    # inward normals on outward faces flip it; k1 >= k2 still holds
    k1, k2, d1, d2 = C.principal_curvatures(m.V, m.F, normals=-m.N)
    np.testing.assert_allclose(0.5 * (k1 + k2), -H, atol=1e-12 * np.abs(H).max())
    assert (k1 >= k2).all()
    assert (np.einsum("ij,ij->i", np.cross(d1, d2), -m.N) > 0).all()


def test_convex_edge_has_positive_dihedral_tensor():
    # hand-computed hinge: edge 0-1 along x, face A in the plane z = 0, face B
    # folded down by theta (convex for upward normals)
    theta = 0.3
    V = np.array([[0, 0, 0], [1, 0, 0], [0.5, 1, 0],
                  [0.5, -np.cos(theta), -np.sin(theta)]], dtype=float)
    F = np.array([[0, 1, 2], [1, 0, 3]])
    EV, EF = C.edge_topology(F, 4)
    T = C.curvature_tensors(V, EV, EF, igl.per_face_normals(V, F, np.zeros(3)))
    expected = np.zeros((4, 6))
    expected[[0, 1], 0] = 0.5 * theta * 1.0  # half of beta |e| e_x e_x^T per endpoint
    np.testing.assert_allclose(T, expected, atol=1e-12)
    # the same hinge folded up is concave
    V[3, 2] *= -1
    T = C.curvature_tensors(V, EV, EF, igl.per_face_normals(V, F, np.zeros(3)))
    np.testing.assert_allclose(T, -expected, atol=1e-12)


# --- principal curvatures and directions ---------------------------------------

@pytest.mark.parametrize("normal", [[1.0, 0, 0], [0.0, 0, 0]])
def test_principal_from_tensor_swaps_directions(normal):
    # hand-made tensor: normal x (eigenvalue 0), y carries 1, z carries 2. The
    # normal cycle puts each curvature on the orthogonal direction, so
    # k1 = 2 bends along y and k2 = 1 along z. A zero normal falls back to the
    # eigenvector of the smallest |eigenvalue|, here x as well.
    T = np.array([[0.0, 1.0, 2.0, 0, 0, 0]])
    k1, k2, d1, d2 = C.principal_from_tensors(T, np.array([normal]))
    assert k1[0] == pytest.approx(2.0) and k2[0] == pytest.approx(1.0)
    np.testing.assert_allclose(np.abs(d1[0]), [0, 1, 0], atol=1e-12)
    np.testing.assert_allclose(np.abs(d2[0]), [0, 0, 1], atol=1e-12)

@pytest.mark.parametrize("triangulation", analytic.TRIANGULATIONS)
def test_cylinder_principal_curvatures_and_directions(triangulation):
    m = surface("cylinder", triangulation)
    k1, k2, d1, d2 = curvatures("cylinder", triangulation)
    ok = m.interior(INTERIOR)
    r = m.size
    assert rms(k1[ok] * r - 1) <= 0.03        # measured <= 0.011
    assert rms(k2[ok] * r) <= 0.04            # measured <= 0.016
    # d1 runs around the circumference, d2 along the axis
    assert np.median(np.abs(np.einsum("ij,ij->i", d1, m.d1))[ok]) >= 0.99
    assert np.percentile(np.abs(d2[ok, 2]), 5) >= 0.95


@pytest.mark.parametrize("triangulation, bound", [
    ("regular", 0.01), ("jittered", 0.02), ("random", 0.04)])  # measured 0.003 / 0.006 / 0.020
def test_sphere_principal_curvatures(triangulation, bound):
    m = surface("sphere", triangulation)
    k1, k2, _, _ = curvatures("sphere", triangulation)
    assert rms(k1 * m.size - 1) <= bound
    assert rms(k2 * m.size - 1) <= bound


@pytest.mark.parametrize("triangulation", analytic.TRIANGULATIONS)
def test_torus_principal_directions(triangulation):
    m = surface("torus", triangulation)
    k1, k2, d1, _ = curvatures("torus", triangulation)
    scale = rms(np.sqrt((m.k1 ** 2 + m.k2 ** 2) / 2))
    assert rms(k1 - m.k1) / scale <= 0.04   # measured <= 0.017
    assert rms(k2 - m.k2) / scale <= 0.06   # measured <= 0.034
    assert np.percentile(np.abs(np.einsum("ij,ij->i", d1, m.d1)), 5) >= 0.98


@pytest.mark.parametrize("name", ["saddle", "gaussian_bump", "torus"])
def test_frame_is_orthonormal_and_ordered(name):
    m = surface(name, "random")
    k1, k2, d1, d2 = curvatures(name, "random")
    N = igl.per_vertex_normals(m.V, m.F, igl.PER_VERTEX_NORMALS_WEIGHTING_TYPE_AREA)
    assert (k1 >= k2).all()
    for d in (d1, d2):
        np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1, atol=1e-9)
    assert np.abs(np.einsum("ij,ij->i", d1, d2)).max() < 1e-9
    # tangent to the vertex normal and right-handed with it
    assert np.abs(np.einsum("ij,ij->i", d1, N)).max() < 1e-3
    assert (np.einsum("ij,ij->i", np.cross(d1, d2), N) > 0.999).all()


# --- absolute curvature channel ----------------------------------------------------

def test_absolute_curvature_on_cylinder_is_one_over_r():
    m = surface("cylinder", "jittered")
    c = C.absolute_curvature(m.V, m.F)
    ok = m.interior(INTERIOR)
    assert rms(c[ok] * m.size - 1) <= 0.03  # measured 0.0035


def test_absolute_curvature_saturates_a_spike():
    m = surface("sphere", "regular")
    h = m.mean_edge_length
    V = m.V.copy()
    spike = 0
    # raise a small patch (radius 1.5 edges) by half an edge: a sharp bump
    patch = np.linalg.norm(m.V - m.V[spike], axis=1) < 1.5 * h
    V[patch] += 0.5 * h * m.N[patch]
    k1, k2, _, _ = C.principal_curvatures(V, m.F)
    raw = np.abs(k1) + np.abs(k2)
    # the documented rule, computed here by hand: mean + tau * mean |c - mean|
    tau = 2.0
    ceiling = raw.mean() + tau * np.abs(raw - raw.mean()).mean()
    assert raw[spike] > 2.5 * ceiling  # measured 5.9 vs 2.01
    c = C.absolute_curvature(V, m.F, tau=tau)
    assert c[spike] == pytest.approx(ceiling)
    assert c.max() == pytest.approx(ceiling)
    below = raw < ceiling
    np.testing.assert_array_equal(c[below], raw[below])
    # far from the spike the channel is the sphere's 2 / r
    far = np.linalg.norm(m.V - m.V[spike], axis=1) > 0.5
    assert rms(c[far] * m.size - 2) <= 0.01


def test_curvature_channel_dispatch():
    m = surface("gaussian_bump", "regular")
    np.testing.assert_array_equal(C.curvature_channel(m.V, m.F), C.mean_curvature(m.V, m.F))
    np.testing.assert_array_equal(C.curvature_channel(m.V, m.F, kind="absolute", tau=3.0),
                                  C.absolute_curvature(m.V, m.F, tau=3.0))
    with pytest.raises(ValueError, match="kind"):
        C.curvature_channel(m.V, m.F, kind="gaussian")


# --- building blocks against libigl / sparse algebra ------------------------------

def test_edge_topology_matches_libigl():
    m = surface("gaussian_bump", "random")
    EV, EF = C.edge_topology(m.F, len(m.V))
    EVi, _, EFi = igl.edge_topology(m.V, m.F)
    order = np.lexsort(EVi.T[::-1])
    np.testing.assert_array_equal(EV, EVi[order])
    np.testing.assert_array_equal(EF, EFi[order])


def test_voronoi_areas_match_libigl_on_acute_mesh():
    # the subdivided icosahedron has no obtuse triangle: pure Voronoi = mixed
    m = surface("sphere", "regular")
    assert igl.internal_angles(m.V, m.F).max() < np.pi / 2
    mixed = igl.massmatrix(m.V, m.F, igl.MASSMATRIX_TYPE_VORONOI).diagonal()
    np.testing.assert_allclose(C.voronoi_areas(m.V, m.F), mixed, rtol=1e-10)


def test_voronoi_areas_sum_to_mesh_area():
    m = surface("torus", "random")
    assert C.voronoi_areas(m.V, m.F).sum() == pytest.approx(igl.doublearea(m.V, m.F).sum() / 2,
                                                             rel=1e-12)


def test_ball_pool_matches_dense_weights():
    m = analytic.gaussian_bump(n=400, triangulation="random", seed=2)
    V, F = m.V, m.F
    n = len(V)
    EV, _ = C.edge_topology(F, n)
    X = np.random.default_rng(0).normal(size=(n, 3))
    h = np.linalg.norm(V[EV[:, 0]] - V[EV[:, 1]], axis=1).mean()
    for radius in (0.5, 2.0, 3.5):
        D = np.linalg.norm(V[:, None] - V[None], axis=2)
        W = np.clip((radius + 1 - D / h) / 2, 0, 1)
        # keep only vertices connected to v inside the ball (graph search via scipy)
        A = sp.csr_matrix((np.ones(2 * len(EV)), (EV.ravel(), EV[:, ::-1].ravel())), shape=(n, n))
        for v in range(n):
            inside = D[v] < (radius + 1) * h
            sub = A[inside][:, inside]
            _, label = sp.csgraph.connected_components(sub, directed=False)
            idx = np.flatnonzero(inside)
            W[v, idx[label != label[np.searchsorted(idx, v)]]] = 0
            W[v, ~inside] = 0
        np.testing.assert_allclose(C.ball_pool(V, EV, X, radius), W @ X, atol=1e-12)


# --- input validation -------------------------------------------------------------

TRI = np.array([[0, 1, 2]])
PTS = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float)


@pytest.mark.parametrize("V, F, match", [
    (np.zeros((3, 2)), TRI, r"V must be an \(n, 3\)"),
    (np.zeros((0, 3)), np.zeros((0, 3), int), "no vertices"),
    (np.array([[0, 0, 0], [1, np.nan, 0], [0, 1, 0]]), TRI, "NaN"),
    (PTS, np.zeros((0, 3), int), "no faces"),
    (PTS, np.array([[0, 1]]), r"F must be an \(m, 3\)"),
    (PTS, np.array([[0, 1, 3]]), "indices span"),
    (PTS, np.array([[0.0, 1.0, 2.0]]), "integer"),
    (PTS, np.array([[0, 1, 1]]), "repeat a vertex"),
    ([["a", "b", "c"]], TRI, "numbers"),
])
def test_bad_mesh_raises(V, F, match):
    with pytest.raises(ValueError, match=match):
        C.mean_curvature(V, F)


def test_non_manifold_and_misoriented_meshes_raise():
    V = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1]], dtype=float)
    with pytest.raises(ValueError, match="edge-manifold"):
        C.mean_curvature(V, np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]]))
    with pytest.raises(ValueError, match="consistently oriented"):
        C.mean_curvature(V, np.array([[0, 1, 2], [0, 1, 3]]))


def test_bad_options_raise():
    m = surface("plane", "regular")
    for radius in (0, -1, np.nan, "big"):
        with pytest.raises(ValueError, match="radius"):
            C.mean_curvature(m.V, m.F, radius=radius)
    with pytest.raises(ValueError, match="normals"):
        C.mean_curvature(m.V, m.F, normals=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="tau"):
        C.absolute_curvature(m.V, m.F, tau=-1)


def test_unreferenced_vertex_gets_nan():
    V = np.vstack([PTS, [5, 5, 5]])
    k1, k2, d1, d2 = C.principal_curvatures(V, TRI)
    assert np.isnan(k1[3]) and np.isnan(d2[3]).all()
    assert np.isfinite(k1[:3]).all()


# --- real data ----------------------------------------------------------------------

@pytest.mark.realdata
def test_detailed_face_has_more_high_frequency_curvature(shared_data):
    from dce.geom.io import load_mesh
    folder = shared_data / "lee-perry-smith"
    detailed = load_mesh(folder / "lps_detailed_face.ply")
    smooth = load_mesh(folder / "lps_smooth_face.ply")
    np.testing.assert_array_equal(detailed.faces, smooth.faces)
    F = smooth.faces.astype(np.int64)
    H_detailed = C.mean_curvature(detailed.vertices, F)
    H_smooth = C.mean_curvature(smooth.vertices, F)
    n = len(smooth.vertices)
    # high-pass: H minus its one-ring average
    E = np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]])
    A = sp.csr_matrix((np.ones(len(E)), (E[:, 0], E[:, 1])), shape=(n, n))
    A = ((A + A.T) > 0).astype(float)
    degree = np.asarray(A.sum(axis=1)).ravel()
    ok = ~analytic.boundary_ring_mask(smooth.vertices, F, 5.0)

    def energy(H):
        return np.sum((H - A @ H / degree)[ok] ** 2)

    ratio = energy(H_detailed) / energy(H_smooth)
    assert ratio > 3.0  # measured 6.75
    # the nose tip is convex (outward faces): H > 0 around it
    tip = np.linalg.norm(smooth.vertices - [0.3, -34.7, 53.1], axis=1) < 3.0
    assert H_smooth[tip].mean() > 0.05  # measured 0.107 /mm
