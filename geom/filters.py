"""Switching median filters (paper section 5.2): a sample is replaced by the
median of its neighbours only where it deviates from it by more than a
threshold, so spikes go and sub-millimetre detail stays bit-for-bit.
:func:`median_filter_grid` for range grids, :func:`median_filter_mesh` for
meshes, :func:`median_filter` dispatches on a record.

See docs/geometry.md (the outlier rule and its MAD bar).
"""
from __future__ import annotations

import dataclasses

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import correlate
from scipy.sparse import coo_matrix

from .normals import vertex_normals

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution x this = its standard deviation


def _sorted_median(values: np.ndarray, count: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Row medians of ``values`` (n, k) ignoring NaNs, and the number of
    non-NaN entries per row (``count``, computed if not given). Rows without
    any value get NaN."""
    s = np.sort(values, axis=1)  # NaNs sort last
    if count is None:
        count = np.count_nonzero(~np.isnan(values), axis=1)
    rows = np.arange(len(s))
    lo = np.maximum((count - 1) // 2, 0)
    with np.errstate(invalid="ignore"):
        med = 0.5 * (s[rows, lo] + s[rows, count // 2])
    med[count == 0] = np.nan
    return med, count


def _neighbour_windows(a: np.ndarray, pixels: tuple, size: int) -> np.ndarray:
    """The ``size`` x ``size`` neighbourhoods (n, size*size) of the grid ``a``
    (H, W) at ``pixels`` (rows, cols), NaN outside the grid and at the centre."""
    r = size // 2
    padded = np.pad(a, r, constant_values=np.nan)
    win = sliding_window_view(padded, (size, size))[pixels].reshape(-1, size * size)
    win[:, size * size // 2] = np.nan
    return win


def _neighbour_count(valid: np.ndarray, size: int) -> np.ndarray:
    """Number of valid pixels (H, W) in each ``size`` x ``size`` window, centre
    excluded."""
    box = correlate(valid.astype(np.int32), np.ones((size, size), np.int32), mode="constant")
    return box - valid


def median_filter_grid(xyz: np.ndarray, valid: np.ndarray, size: int = 5,
                       threshold_mm: float = 1.0, mad_k: float = 3.0,
                       min_neighbors: int = 3, replace: str = "z",
                       iterations: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Switching median filter of a range grid.

    ``xyz`` (H, W, 3) float mm, ``valid`` (H, W) bool (non-finite points are
    treated as invalid too). For each valid pixel the median ``m`` of ``z``
    over its valid neighbours in the ``size`` x ``size`` window (the pixel
    itself excluded) is computed; the pixel is an outlier when
    ``|z - m| > max(threshold_mm, mad_k * 1.4826 * MAD)``, MAD being the median
    of ``|z_j - m|`` over the same neighbours (``mad_k=0`` disables it).

    Outliers get the median over their valid non-outlier neighbours: of ``z``
    only (``replace="z"``, x and y kept) or of each coordinate
    (``replace="xyz"``, for grids whose x, y also carry the spike). An outlier
    without such neighbours becomes invalid, as does any valid pixel with fewer
    than ``min_neighbors`` valid neighbours (isolated specks); pixels made
    invalid get NaN, as the scan readers write. Everything else, pixels that
    were invalid on input included, is returned unchanged. ``iterations``
    repeats the whole filter.

    Returns ``(xyz, valid)``, new arrays.
    """
    xyz = np.asarray(xyz, dtype=np.float64)
    valid = np.asarray(valid)
    if xyz.ndim != 3 or xyz.shape[2] != 3:
        raise ValueError(f"xyz: expected an (H, W, 3) grid, got shape {xyz.shape}")
    if valid.shape != xyz.shape[:2]:
        raise ValueError(f"valid: expected shape {xyz.shape[:2]} like xyz, got {valid.shape}")
    if size < 3 or size % 2 == 0:
        raise ValueError(f"size must be an odd window width >= 3, got {size}")
    if threshold_mm < 0 or mad_k < 0:
        raise ValueError(f"threshold_mm and mad_k must be >= 0, got {threshold_mm}, {mad_k}")
    if replace not in ("z", "xyz"):
        raise ValueError(f"replace must be 'z' or 'xyz', got {replace!r}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    out = xyz.copy()
    ok = valid.astype(bool) & np.isfinite(xyz).all(axis=2)
    for _ in range(iterations):
        out, ok = _median_filter_grid_once(out, ok, size, threshold_mm, mad_k,
                                           min_neighbors, replace)
    return out, ok


def _median_filter_grid_once(xyz, valid, size, threshold_mm, mad_k, min_neighbors, replace):
    z = np.where(valid, xyz[..., 2], np.nan)
    pix = np.nonzero(valid)
    win = _neighbour_windows(z, pix, size)
    med, count = _sorted_median(win, _neighbour_count(valid, size)[pix])
    dev = np.abs(z[pix] - med)

    isolated = count < min_neighbors
    cand = np.flatnonzero((dev > threshold_mm) & ~isolated)
    if mad_k > 0 and len(cand):
        mad, _ = _sorted_median(np.abs(win[cand] - med[cand, None]))
        cand = cand[dev[cand] > mad_k * MAD_TO_SIGMA * mad]

    xyz = xyz.copy()
    valid = valid.copy()
    valid[pix[0][isolated], pix[1][isolated]] = False
    xyz[pix[0][isolated], pix[1][isolated]] = np.nan
    if len(cand):
        rows, cols = pix[0][cand], pix[1][cand]
        z[rows, cols] = np.nan  # outliers do not vote for their replacements
        z[~valid] = np.nan
        axes = (2,) if replace == "z" else (0, 1, 2)
        voters = ~np.isnan(_neighbour_windows(z, (rows, cols), size))
        fixed = voters.any(axis=1)
        for axis in axes:
            coord = _neighbour_windows(xyz[..., axis], (rows, cols), size)
            repl, _ = _sorted_median(np.where(voters, coord, np.nan))
            xyz[rows[fixed], cols[fixed], axis] = repl[fixed]
        valid[rows[~fixed], cols[~fixed]] = False
        xyz[rows[~fixed], cols[~fixed]] = np.nan
    return xyz, valid


def _one_ring(F: np.ndarray, n: int) -> np.ndarray:
    """Padded 1-ring neighbour indices (n, max degree), -1 where a vertex has
    fewer neighbours."""
    F = np.asarray(F, dtype=np.int64)
    i = np.concatenate([F[:, 0], F[:, 1], F[:, 2], F[:, 1], F[:, 2], F[:, 0]])
    j = np.concatenate([F[:, 1], F[:, 2], F[:, 0], F[:, 0], F[:, 1], F[:, 2]])
    A = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n)).tocsr()
    A.sum_duplicates()
    degree = np.diff(A.indptr)
    ring = np.full((n, max(int(degree.max(initial=0)), 1)), -1, dtype=np.int64)
    slot = np.arange(A.nnz) - np.repeat(A.indptr[:-1], degree)
    ring[np.repeat(np.arange(n), degree), slot] = A.indices
    return ring


def median_filter_mesh(V: np.ndarray, F: np.ndarray, threshold_mm: float = 1.0,
                       iterations: int = 1) -> np.ndarray:
    """Switching median filter of a triangle mesh along the vertex normals.

    ``V`` (n, 3) float mm, ``F`` (m, 3) int. For each vertex ``i`` with unit
    normal ``n_i`` and 1-ring ``N(i)``, its height above the ring is
    ``d_i = median_{j in N(i)} (v_i - v_j) . n_i``. Vertices with
    ``|d_i| > threshold_mm`` are outliers. An outlier moves onto the surface
    of its non-outlier neighbours (its voters): to their centroid ``c`` plus the
    median of their heights ``(v_j - c) . n'_i`` along ``n'_i``, the
    area-weighted normal of the faces around the voters that touch no outlier.
    The tangential position comes from the voters, not from the outlier itself,
    because a scanner spike runs along the viewing ray, not along the normal.
    All other vertices are returned unchanged.

    The detection normals are robust to the spikes they must measure: they are
    the area-weighted vertex normals of the mesh whose vertices are replaced by
    the component-wise median of their 1-ring, where an isolated spike or a
    small cluster does not show. ``iterations`` repeats the filter (larger
    clusters).

    Returns the new vertex array (n, 3).
    """
    V = np.asarray(V, dtype=np.float64)
    F = np.asarray(F)
    if V.ndim != 2 or V.shape[1] != 3:
        raise ValueError(f"V: expected (n, 3) vertices, got shape {V.shape}")
    if F.ndim != 2 or F.shape[1] != 3:
        raise ValueError(f"F: expected (m, 3) triangles, got shape {F.shape}")
    if len(F) and (F.min() < 0 or F.max() >= len(V)):
        raise ValueError(f"F: indices span [{F.min()}, {F.max()}] but V has {len(V)} vertices")
    if threshold_mm < 0:
        raise ValueError(f"threshold_mm must be >= 0, got {threshold_mm}")
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    out = V.copy()
    if len(F) == 0:
        return out
    ring = _one_ring(F, len(V))
    has = ring >= 0
    for _ in range(iterations):
        out = _median_filter_mesh_once(out, F, ring, has, threshold_mm)
    return out


def _median_filter_mesh_once(V, F, ring, has, threshold_mm):
    nb = np.where(has[..., None], V[ring], np.nan)  # (n, D, 3)
    centre = np.stack([_sorted_median(nb[..., a])[0] for a in range(3)], axis=1)
    lonely = np.isnan(centre[:, 0])
    centre[lonely] = V[lonely]
    N = vertex_normals(centre, F)

    heights = ((V[:, None, :] - nb) * N[:, None, :]).sum(axis=2)  # NaN where no neighbour
    d, _ = _sorted_median(heights)
    outlier = np.abs(np.nan_to_num(d)) > threshold_mm
    out = V.copy()
    if not outlier.any():
        return out
    idx = np.flatnonzero(outlier)
    voters = has[idx] & ~outlier[np.where(has[idx], ring[idx], 0)]
    normal = _clean_ring_normals(V, F, ring[idx], voters, outlier, N[idx])
    pts = np.where(voters[..., None], nb[idx], np.nan)
    fixed = voters.any(axis=1)
    centroid = np.nanmean(pts[fixed], axis=1)
    h = ((pts[fixed] - centroid[:, None, :]) * normal[fixed, None, :]).sum(axis=2)
    m, _ = _sorted_median(h)
    out[idx[fixed]] = centroid + m[:, None] * normal[fixed]
    return out


def _clean_ring_normals(V, F, ring, voters, outlier, fallback):
    """Normals (k, 3) of the surface around k outlier vertices without the
    outliers: the area-weighted normal of the faces that touch one of the
    vertex's non-outlier neighbours (``ring`` (k, D), ``voters`` (k, D) bool)
    and no outlier. ``fallback`` (k, 3) where there are no such faces."""
    F = np.asarray(F, dtype=np.int64)
    area_normal = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    area_normal[outlier[F].any(axis=1)] = 0.0
    per_vertex = np.stack([
        sum(np.bincount(F[:, c], weights=area_normal[:, a], minlength=len(V)) for c in range(3))
        for a in range(3)], axis=1)
    total = (per_vertex[np.where(voters, ring, 0)] * voters[..., None]).sum(axis=1)
    length = np.linalg.norm(total, axis=1, keepdims=True)
    return np.where(length > 0, total / np.where(length > 0, length, 1.0), fallback)


def median_filter(data, **kwargs):
    """Median-filter a record or a ``(V, F)`` pair.

    - a range scan (a dataclass with ``xyz`` and ``valid``, e.g.
      ``dce.geom.io.RangeScan``): a copy with the filtered ``xyz``, ``valid``
      (:func:`median_filter_grid`);
    - a mesh (a dataclass with ``vertices`` and ``faces``, e.g.
      ``dce.geom.io.Mesh``): a copy with the filtered vertices
      (:func:`median_filter_mesh`);
    - a tuple ``(V, F)``: the filtered ``V``.

    ``kwargs`` go to the explicit function.
    """
    if isinstance(data, tuple) and len(data) == 2:
        return median_filter_mesh(data[0], data[1], **kwargs)
    record = dataclasses.is_dataclass(data) and not isinstance(data, type)
    if record and hasattr(data, "xyz") and hasattr(data, "valid"):
        xyz, valid = median_filter_grid(data.xyz, data.valid, **kwargs)
        return dataclasses.replace(data, xyz=xyz, valid=valid)
    if record and hasattr(data, "vertices") and hasattr(data, "faces"):
        return dataclasses.replace(
            data, vertices=median_filter_mesh(data.vertices, data.faces, **kwargs))
    raise TypeError(
        "median_filter: expected a range scan record (xyz, valid), a mesh record "
        f"(vertices, faces) or a (V, F) tuple, got {type(data).__name__}")
