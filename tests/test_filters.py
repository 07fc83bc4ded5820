"""Switching median filters on analytic surfaces: spikes and outlier clusters
go, sub-millimetre detail stays bit-for-bit, invalid samples never leak."""
import numpy as np
import pytest
from scipy import ndimage

from dce.geom.filters import median_filter, median_filter_grid, median_filter_mesh
from dce.geom.io import Mesh, RangeScan

SPACING = 0.5   # mm per pixel / grid step
DETAIL = 0.2    # mm amplitude of the fine detail
WAVE = 4.0      # mm wavelength of the fine detail
SPIKE = 20.0    # mm


def surface(x, y):
    """A face-sized sphere cap (R = 120 mm) with 0.2 mm sinusoidal detail."""
    base = np.sqrt(120.0 ** 2 - x ** 2 - y ** 2)
    return base + DETAIL * np.sin(2 * np.pi * x / WAVE) * np.sin(2 * np.pi * y / WAVE)


# --- range grids -----------------------------------------------------------

H, W = 120, 160
HOLE = (slice(50, 71), slice(100, 131))   # rows, cols of a hole of invalid samples
SPECK = (60, 115)                         # a lone valid sample inside the hole
CLUSTER = (slice(20, 23), slice(40, 43))  # a 3x3 outlier cluster


@pytest.fixture(scope="module")
def grid():
    jj, ii = np.meshgrid(np.arange(W), np.arange(H))
    x, y = (jj - W / 2) * SPACING, (H / 2 - ii) * SPACING
    clean = np.stack([x, y, surface(x, y)], axis=-1)
    valid = np.ones((H, W), dtype=bool)
    valid[HOLE] = False
    valid[SPECK] = True

    spikes = np.zeros((H, W), dtype=bool)
    spikes[5:H - 5:9, 5:W - 5:9] = True           # isolated spikes, borders included
    spikes[HOLE] = False
    spikes[50, 99] = spikes[70, 131] = True       # spikes touching the hole
    spikes[0, 0] = spikes[H - 1, 77] = True       # at the grid border
    sign = np.where(np.arange(spikes.sum()) % 2 == 0, 1.0, -1.0)
    noisy = clean.copy()
    noisy[spikes, 2] += sign * SPIKE
    spikes[CLUSTER] = True
    noisy[CLUSTER + (2,)] += 15.0
    noisy[~valid] = -999999.0                     # FRGC's marker for "no sample"
    noisy[SPECK] = clean[SPECK]
    return clean, noisy, valid, spikes


def test_grid_spikes_removed_detail_kept_exactly(grid):
    clean, noisy, valid, spikes = grid
    out, ok = median_filter_grid(noisy, valid)
    assert ok[spikes].all()
    err = np.abs(out[..., 2] - clean[..., 2])
    assert err[spikes].max() < 0.5
    # x, y untouched with replace="z"; every other sample unchanged (the lone
    # speck inside the hole is dropped, see the next test)
    kept = np.ones((H, W), bool)
    kept[SPECK] = False
    assert np.array_equal(out[kept][:, :2], noisy[kept][:, :2])
    untouched = kept & ~spikes
    assert np.array_equal(out[untouched], noisy[untouched])


def test_grid_invalid_samples_never_used(grid):
    clean, noisy, valid, spikes = grid
    out, ok = median_filter_grid(noisy, valid)
    hole = ~valid
    assert not ok[hole].any()
    assert np.array_equal(out[hole], noisy[hole])  # invalid samples are left as they were
    # nothing of the -999999 hole reached a valid sample, even the spikes beside it
    assert np.abs(out[ok, 2] - clean[ok, 2]).max() < 0.5
    assert not ok[SPECK]  # the lone sample inside the hole has no neighbours: dropped
    assert np.isnan(out[SPECK]).all()


def test_grid_plain_median_destroys_the_detail(grid):
    clean, noisy, valid, spikes = grid
    out, ok = median_filter_grid(noisy, valid)
    plain = ndimage.median_filter(noisy[..., 2], size=5)
    # compare away from the hole and the borders, where the plain filter is at its best
    region = ndimage.binary_erosion(valid, np.ones((7, 7)), border_value=0)
    detail = region & ~spikes
    detail_rms = DETAIL / 2  # RMS of a product of two unit sines is 1/2
    plain_err = np.sqrt(np.mean((plain[detail] - clean[..., 2][detail]) ** 2))
    ours_err = np.sqrt(np.mean((out[..., 2][detail] - clean[..., 2][detail]) ** 2))
    assert ours_err == 0.0
    assert plain_err > 0.5 * detail_rms
    # the plain filter also removes the spikes: it is the detail it cannot keep
    assert np.abs(plain[spikes & region] - clean[..., 2][spikes & region]).max() < 0.5


def test_grid_replace_xyz_restores_a_spike_along_the_viewing_ray():
    # A regular grid with x, y linear in the pixel: the median of the 24
    # neighbours' x (or y) in a symmetric 5x5 window is exactly the centre's.
    jj, ii = np.meshgrid(np.arange(40), np.arange(30))
    x, y = (jj - 20) * SPACING, (15 - ii) * SPACING
    clean = np.stack([x, y, 600.0 + 0.05 * x ** 2 / 10], axis=-1)
    noisy = clean.copy()
    for r, c in [(10, 10), (15, 25), (22, 31)]:
        p = clean[r, c]
        noisy[r, c] = p * (1 + 25.0 / np.linalg.norm(p))  # 25 mm along the ray from the sensor
    out, ok = median_filter_grid(noisy, np.ones((30, 40), bool), replace="xyz")
    assert np.allclose(out[..., :2], clean[..., :2], atol=1e-9)
    assert np.abs(out[..., 2] - clean[..., 2]).max() < 0.05
    out_z, _ = median_filter_grid(noisy, np.ones((30, 40), bool), replace="z")
    assert np.array_equal(out_z[10, 10, :2], noisy[10, 10, :2])


def test_grid_mad_keeps_steep_silhouettes():
    # A 3 mm-per-pixel ramp ending at a silhouette: the one-sided windows at
    # its edge have medians several mm from the edge samples. They are real.
    jj, ii = np.meshgrid(np.arange(30), np.arange(20))
    xyz = np.stack([jj * 1.0, ii * 1.0, 3.0 * jj], axis=-1)
    valid = jj < 25
    out, ok = median_filter_grid(xyz, valid)
    assert ok[valid].all() and np.array_equal(out, xyz)
    # with the absolute threshold alone the silhouette column would be "repaired"
    out_abs, _ = median_filter_grid(xyz, valid, mad_k=0.0)
    assert not np.array_equal(out_abs[:, 24], xyz[:, 24])


def test_grid_size_3_and_iterations():
    jj, ii = np.meshgrid(np.arange(30), np.arange(30))
    x, y = (jj - 15) * SPACING, (ii - 15) * SPACING
    clean = np.stack([x, y, surface(x, y)], axis=-1)
    noisy = clean.copy()
    noisy[10, 10, 2] += SPIKE
    noisy[12:15, 12:15, 2] += SPIKE  # 3x3 cluster: 8 of 8 neighbours of its centre are bad
    out1, _ = median_filter_grid(noisy, np.ones((30, 30), bool), size=3)
    assert abs(out1[10, 10, 2] - clean[10, 10, 2]) < 0.5
    assert abs(out1[13, 13, 2] - clean[13, 13, 2]) > 10   # too big for one 3x3 pass
    out3, _ = median_filter_grid(noisy, np.ones((30, 30), bool), size=3, iterations=3)
    assert np.abs(out3[12:15, 12:15, 2] - clean[12:15, 12:15, 2]).max() < 0.5


def test_grid_bad_arguments():
    xyz = np.zeros((4, 5, 3))
    with pytest.raises(ValueError, match="xyz"):
        median_filter_grid(np.zeros((4, 5)), np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="valid"):
        median_filter_grid(xyz, np.ones((5, 4), bool))
    with pytest.raises(ValueError, match="size"):
        median_filter_grid(xyz, np.ones((4, 5), bool), size=4)
    with pytest.raises(ValueError, match="replace"):
        median_filter_grid(xyz, np.ones((4, 5), bool), replace="y")


# --- meshes ----------------------------------------------------------------

N_SIDE = 80


def grid_faces(rows: int, cols: int) -> np.ndarray:
    """Two counter-clockwise triangles per cell of a rows x cols vertex grid
    (vertex index = row * cols + col)."""
    idx = np.arange(rows * cols).reshape(rows, cols)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    return np.concatenate([np.column_stack([a, b, d]), np.column_stack([a, d, c])])


@pytest.fixture(scope="module")
def heightfield():
    rng = np.random.default_rng(7)
    jj, ii = np.meshgrid(np.arange(N_SIDE), np.arange(N_SIDE))
    xy = np.stack([jj, ii], axis=-1).reshape(-1, 2) * SPACING - 20.0
    xy = xy + rng.uniform(-0.3, 0.3, xy.shape) * SPACING   # jittered grid
    V = np.column_stack([xy, surface(xy[:, 0], xy[:, 1])])
    idx = np.arange(N_SIDE * N_SIDE).reshape(N_SIDE, N_SIDE)
    F = grid_faces(N_SIDE, N_SIDE)

    # analytic normal of the heightfield z = f(x, y): (-f_x, -f_y, 1) normalised
    eps = 1e-6
    fx = (surface(xy[:, 0] + eps, xy[:, 1]) - surface(xy[:, 0] - eps, xy[:, 1])) / (2 * eps)
    fy = (surface(xy[:, 0], xy[:, 1] + eps) - surface(xy[:, 0], xy[:, 1] - eps)) / (2 * eps)
    normal = np.column_stack([-fx, -fy, np.ones(len(xy))])
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)

    spikes = list(idx[4:N_SIDE - 4:8, 4:N_SIDE - 4:8].ravel())   # interior, isolated
    spikes += list(idx[0, 5:75:12]) + list(idx[9:75:12, -1])    # on the boundary
    spikes += [idx[41, 45], idx[41, 46], idx[42, 46]]           # a triangle cluster
    spikes = np.unique(spikes)
    sign = np.where(np.arange(len(spikes)) % 2 == 0, 1.0, -1.0)
    noisy = V.copy()
    noisy[spikes] += (sign * SPIKE)[:, None] * normal[spikes]
    return V, F, noisy, spikes


def test_mesh_spikes_removed_detail_kept_exactly(heightfield):
    V, F, noisy, spikes = heightfield
    out = median_filter_mesh(noisy, F)
    off_surface = np.abs(out[:, 2] - surface(out[:, 0], out[:, 1]))
    assert off_surface[spikes].max() < 0.5
    assert np.linalg.norm(out[spikes] - V[spikes], axis=1).max() < SPACING  # back in place
    others = np.setdiff1d(np.arange(len(V)), spikes)
    assert np.array_equal(out[others], noisy[others])


def test_mesh_spike_along_the_viewing_ray():
    # spikes along +z rather than the normal, on a tilted part of the surface
    jj, ii = np.meshgrid(np.arange(30), np.arange(30))
    xy = np.stack([jj, ii], axis=-1).reshape(-1, 2) * SPACING + 60.0
    V = np.column_stack([xy, surface(xy[:, 0], xy[:, 1])])  # ~45 degree slope
    idx = np.arange(900).reshape(30, 30)
    F = grid_faces(30, 30)
    noisy = V.copy()
    spikes = idx[[8, 15, 22], [20, 9, 16]]
    noisy[spikes, 2] += SPIKE
    out = median_filter_mesh(noisy, F)
    assert np.abs(out[spikes, 2] - surface(out[spikes, 0], out[spikes, 1])).max() < 0.5
    assert np.linalg.norm(out[spikes] - V[spikes], axis=1).max() < SPACING


def test_mesh_no_outliers_is_identity(heightfield):
    V, F, _, _ = heightfield
    assert np.array_equal(median_filter_mesh(V, F), V)


def test_mesh_bad_arguments():
    V = np.zeros((3, 3))
    with pytest.raises(ValueError, match="V"):
        median_filter_mesh(np.zeros((3, 2)), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match="F"):
        median_filter_mesh(V, np.array([[0, 1, 5]]))
    with pytest.raises(ValueError, match="iterations"):
        median_filter_mesh(V, np.array([[0, 1, 2]]), iterations=0)


# --- dispatch --------------------------------------------------------------

def test_median_filter_dispatch(grid, heightfield):
    _, noisy, valid, _ = grid
    xyz, ok = median_filter_grid(noisy, valid, size=3)
    scan = median_filter(RangeScan(noisy, valid), size=3)
    assert isinstance(scan, RangeScan)
    assert np.array_equal(scan.xyz, xyz, equal_nan=True) and np.array_equal(scan.valid, ok)

    V, F, noisy_v, _ = heightfield
    expected = median_filter_mesh(noisy_v, F)
    assert np.array_equal(median_filter((noisy_v, F)), expected)
    mesh = median_filter(Mesh(noisy_v, F))
    assert isinstance(mesh, Mesh) and np.array_equal(mesh.vertices, expected)
    with pytest.raises(TypeError, match="median_filter"):
        median_filter(noisy_v)
