"""Analytic test surfaces with exact differential geometry.

Every generator returns an :class:`AnalyticMesh`: a triangle mesh whose
vertices lie exactly on the surface, with the exact per-vertex outward unit
normals, principal curvatures ``k1 >= k2``, mean curvature ``H = (k1+k2)/2``
and the direction ``d1`` of ``k1``.

Sign convention (the one of :mod:`dce.geom.curvature`): curvature is positive
where the surface bends AWAY from the normal, so a sphere of radius r with
outward normals has k1 = k2 = H = +1/r. Graph surfaces z = f(x, y) use the
upward normal as "outward", so the top of a bump is positive.

``triangulation`` picks the vertex sampling and connectivity:

- ``"regular"``: a structured grid (quads split along one diagonal), or the
  subdivided icosahedron for the sphere;
- ``"jittered"``: the grid points (a Fibonacci lattice on the sphere) moved
  by up to 0.35 of a grid step in each parameter direction, then Delaunay in
  the parameter domain (the convex hull on the sphere);
- ``"random"``: uniformly random points (by surface area where the
  parametrization is not area-preserving), then Delaunay.

Delaunay runs in a parameter domain scaled to be close to isometric (periodic
directions are tiled so the closed surfaces have no seam). Faces are oriented
so that their right-hand normals point outward.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy.spatial import ConvexHull, Delaunay, cKDTree

TRIANGULATIONS = ("regular", "jittered", "random")


@dataclass
class AnalyticMesh:
    """A sampled analytic surface. ``V`` (n, 3), ``F`` (m, 3) int64 outward
    oriented, ``N`` (n, 3) exact outward unit normals, ``k1``/``k2``/``H``
    (n,) exact curvatures (1/length), ``d1`` (n, 3) unit direction of ``k1``
    (NaN at umbilics), ``size`` a characteristic length (the radius that
    sets the curvature scale)."""

    name: str
    V: np.ndarray
    F: np.ndarray
    N: np.ndarray
    k1: np.ndarray
    k2: np.ndarray
    H: np.ndarray
    d1: np.ndarray
    size: float

    @property
    def mean_edge_length(self) -> float:
        E = _edges(self.F)
        return float(np.linalg.norm(self.V[E[:, 0]] - self.V[E[:, 1]], axis=1).mean())

    def interior(self, width: float = 3.0) -> np.ndarray:
        """(n,) bool: vertices farther than ``width`` mean edge lengths from
        the boundary (all True on a closed surface)."""
        return ~boundary_ring_mask(self.V, self.F, width)

    def with_normal_noise(self, std: float, seed: int = 0) -> AnalyticMesh:
        """A copy whose vertices are moved along the exact normal by Gaussian
        noise of standard deviation ``std`` (length units). The exact
        curvatures are those of the underlying smooth surface."""
        rng = np.random.default_rng(seed)
        V = self.V + rng.normal(0.0, std, len(self.V))[:, None] * self.N
        return AnalyticMesh(self.name + "+noise", V, self.F, self.N, self.k1, self.k2,
                            self.H, self.d1, self.size)


def boundary_ring_mask(V: np.ndarray, F: np.ndarray, width: float = 3.0) -> np.ndarray:
    """(n,) bool: vertices within ``width`` mean edge lengths of the boundary
    (Euclidean distance to points sampled along the boundary edges, hence a
    superset of the geodesic band)."""
    edges, count = _edges(F, counts=True)
    h = np.linalg.norm(V[edges[:, 0]] - V[edges[:, 1]], axis=1).mean()
    boundary = edges[count == 1]
    if len(boundary) == 0:
        return np.zeros(len(V), dtype=bool)
    # samples every <= h/4 along each boundary edge (long hull edges included)
    a, b = V[boundary[:, 0]], V[boundary[:, 1]]
    steps = np.ceil(np.linalg.norm(b - a, axis=1) / (h / 4)).astype(int)
    t = np.concatenate([np.arange(s + 1) / s for s in steps])
    which = np.repeat(np.arange(len(boundary)), steps + 1)
    samples = a[which] + t[:, None] * (b - a)[which]
    dist, _ = cKDTree(samples).query(V, distance_upper_bound=width * h)
    return np.isfinite(dist)


def _edges(F, counts=False):
    """Unique undirected edges (E, 2), optionally with how many faces use each."""
    F = np.asarray(F, dtype=np.int64)
    E = np.sort(np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]]), axis=1)
    n = int(F.max()) + 1
    keys, count = np.unique(E[:, 0] * n + E[:, 1], return_counts=True)
    edges = np.column_stack([keys // n, keys % n])
    return (edges, count) if counts else edges


# --- parameter-domain triangulation ----------------------------------------

def _grid(shape, extent, periodic):
    """Grid points (k, 2) of ``shape`` (nu, nv) over ``extent`` ((u0, u1),
    (v0, v1)); periodic axes omit the repeated last sample."""
    axes = [np.linspace(lo, hi, n, endpoint=not per)
            for (lo, hi), n, per in zip(extent, shape, periodic)]
    U, W = np.meshgrid(*axes, indexing="ij")
    return np.column_stack([U.ravel(), W.ravel()])


def _grid_faces(shape, periodic):
    """Triangles of a structured (nu, nv) grid, each quad split along the
    (i, j)-(i+1, j+1) diagonal, counter-clockwise in (u, v)."""
    nu, nv = shape
    iu = np.arange(nu if periodic[0] else nu - 1)
    iv = np.arange(nv if periodic[1] else nv - 1)
    Iu, Jv = np.meshgrid(iu, iv, indexing="ij")
    Iu, Jv = Iu.ravel(), Jv.ravel()
    I1, J1 = (Iu + 1) % nu, (Jv + 1) % nv
    a, b, c, d = Iu * nv + Jv, I1 * nv + Jv, I1 * nv + J1, Iu * nv + J1
    return np.concatenate([np.column_stack([a, b, c]), np.column_stack([a, c, d])])


def _delaunay(P, extent, periodic):
    """Delaunay triangles of points ``P`` (k, 2) in ``extent``, counter-clockwise.
    Periodic axes get copies of the points near the opposite edge so the
    triangulation wraps around seamlessly."""
    n = len(P)
    lo = np.array([e[0] for e in extent])
    period = np.array([e[1] - e[0] for e in extent])
    margin = 10 * np.sqrt(np.prod(period) / n)  # far wider than any triangle
    index, tiled = [np.arange(n)], [P]
    for shift in product(*[(-1, 0, 1) if per else (0,) for per in periodic]):
        shift = np.array(shift)
        if not shift.any():
            continue
        Q = P + shift * period
        near = np.all((Q >= lo - margin) & (Q < lo + period + margin), axis=1)
        index.append(np.flatnonzero(near))
        tiled.append(Q[near])
    index, tiled = np.concatenate(index), np.concatenate(tiled)
    T = Delaunay(tiled).simplices
    centroid = tiled[T].mean(axis=1)
    # exactly one periodic copy of each triangle has its centroid in the cell
    keep = np.all((centroid >= lo) & (centroid < lo + period), axis=1)
    T = T[keep]
    a, b, c = (tiled[T[:, i]] for i in range(3))
    cross = (b - a)[:, 0] * (c - a)[:, 1] - (b - a)[:, 1] * (c - a)[:, 0]
    T = np.where((cross < 0)[:, None], T[:, [0, 2, 1]], T)
    return index[T]


def _sample(triangulation, shape, extent, periodic, rng, density=None):
    """Parameter points and triangles for a (nu, nv) budget. ``density(u, v)``
    (relative area element) makes random points uniform on the surface."""
    if triangulation not in TRIANGULATIONS:
        raise ValueError(f"triangulation must be one of {TRIANGULATIONS}, got {triangulation!r}")
    if triangulation == "regular":
        return _grid(shape, extent, periodic), _grid_faces(shape, periodic)
    if triangulation == "jittered":
        P = _grid(shape, extent, periodic)
        step = np.array([(hi - lo) / (n if per else n - 1)
                         for (lo, hi), n, per in zip(extent, shape, periodic)])
        J = rng.uniform(-0.35, 0.35, P.shape) * step
        for axis, ((lo, hi), per) in enumerate(zip(extent, periodic)):
            if not per:  # points on an open edge only slide along it: no slivers on the hull
                J[(P[:, axis] == lo) | (P[:, axis] == hi), axis] = 0.0
        P = P + J
        for axis, ((lo, hi), per) in enumerate(zip(extent, periodic)):
            if per:
                P[:, axis] = lo + np.mod(P[:, axis] - lo, hi - lo)
        return P, _delaunay(P, extent, periodic)
    lo = np.array([e[0] for e in extent])
    hi = np.array([e[1] for e in extent])
    # evenly spaced points on the open edges keep the Delaunay hull the box
    # (random points alone leave long slivers along it)
    spacing = np.sqrt(np.prod(hi - lo) / (shape[0] * shape[1]))
    edge = []
    for axis, per in enumerate(periodic):
        if per:
            continue
        other = 1 - axis
        k = max(int(round((hi[other] - lo[other]) / spacing)), 2)
        t = np.linspace(lo[other], hi[other], k, endpoint=not periodic[other])
        for end in (lo[axis], hi[axis]):
            Q = np.empty((k, 2))
            Q[:, axis], Q[:, other] = end, t
            edge.append(Q)
    edge = np.unique(np.concatenate(edge), axis=0) if edge else np.empty((0, 2))
    count = shape[0] * shape[1] - len(edge)
    if density is None:
        P = rng.uniform(lo, hi, (count, 2))
    else:  # rejection sampling against the area element
        P = np.empty((0, 2))
        while len(P) < count:
            cand = rng.uniform(lo, hi, (2 * count, 2))
            cand = cand[rng.uniform(0, 1, len(cand)) < density(cand[:, 0], cand[:, 1])]
            P = np.concatenate([P, cand])
        P = P[:count]
    P = np.concatenate([edge, P])
    return P, _delaunay(P, extent, periodic)


def _orient_outward(V, F, N):
    """Flip faces whose right-hand normal disagrees with the mean exact normal
    of their corners (all faces, consistently, for these parametrizations)."""
    fn = np.cross(V[F[:, 1]] - V[F[:, 0]], V[F[:, 2]] - V[F[:, 0]])
    flip = np.einsum("ij,ij->i", fn, N[F].sum(axis=1)) < 0
    return np.where(flip[:, None], F[:, [0, 2, 1]], F).astype(np.int64)


def _grid_shape(n, aspect):
    """(nu, nv) with nu * nv ~= n and nu / nv ~= aspect."""
    nv = max(int(round(np.sqrt(n / aspect))), 3)
    return max(int(round(n / nv)), 3), nv


# --- surfaces ---------------------------------------------------------------

def sphere(radius: float = 1.0, n: int = 10_000, triangulation: str = "regular",
           seed: int = 0) -> AnalyticMesh:
    """Closed sphere centred at the origin. ``regular`` is the subdivided
    icosahedron with the level closest to ``n`` vertices (10,242 for 10k);
    ``jittered`` a Fibonacci lattice moved by up to 0.35 of its spacing;
    ``random`` uniform points; the last two are triangulated by their convex
    hull (the Delaunay triangulation on the sphere)."""
    rng = np.random.default_rng(seed)
    if triangulation == "regular":
        P, F = _icosphere(max(int(round(np.log(max(n - 2, 10) / 10) / np.log(4))), 0))
    elif triangulation in ("jittered", "random"):
        if triangulation == "jittered":
            i = np.arange(n) + 0.5
            z = 1 - 2 * i / n
            phi = np.pi * (1 + 5 ** 0.5) * i
            P = np.column_stack([np.sqrt(1 - z * z) * np.cos(phi),
                                 np.sqrt(1 - z * z) * np.sin(phi), z])
            spacing = np.sqrt(4 * np.pi / n)
            P = P + rng.uniform(-0.35, 0.35, P.shape) * spacing
        else:
            P = rng.normal(size=(n, 3))
        P /= np.linalg.norm(P, axis=1, keepdims=True)
        F = ConvexHull(P).simplices
    else:
        raise ValueError(f"triangulation must be one of {TRIANGULATIONS}, got {triangulation!r}")
    N = P.copy()
    F = _orient_outward(P, F, N)
    k = np.full(len(P), 1.0 / radius)
    return AnalyticMesh("sphere", radius * P, F, N, k, k.copy(), k.copy(),
                        np.full((len(P), 3), np.nan), radius)


def _icosphere(level):
    t = (1 + 5 ** 0.5) / 2
    V = np.array([[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t],
                  [0, -1, -t], [0, 1, -t], [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]],
                 dtype=np.float64)
    F = np.array([[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9],
                  [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2],
                  [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10],
                  [8, 6, 7], [9, 8, 1]])
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    for _ in range(level):
        # one new vertex per unique edge, projected back onto the sphere
        E = np.sort(np.concatenate([F[:, [0, 1]], F[:, [1, 2]], F[:, [2, 0]]]), axis=1)
        uE, inverse = np.unique(E, axis=0, return_inverse=True)
        mid = V[uE].sum(axis=1)
        V = np.concatenate([V, mid / np.linalg.norm(mid, axis=1, keepdims=True)])
        m = len(F)
        ab, bc, ca = (len(V) - len(uE) + inverse.reshape(3, m)[i] for i in range(3))
        a, b, c = F.T
        F = np.concatenate([np.column_stack(t) for t in
                            ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    return V, F


def cylinder(radius: float = 1.0, height: float = 4.0, n: int = 10_000,
             triangulation: str = "regular", seed: int = 0) -> AnalyticMesh:
    """Open tube of ``radius`` around the z axis, z in [-height/2, height/2],
    closed around the circumference. k1 = 1/radius along the circle (``d1``),
    k2 = 0 along the axis."""
    rng = np.random.default_rng(seed)
    extent = ((0.0, 2 * np.pi * radius), (-height / 2, height / 2))  # (arc length, z): isometric
    shape = _grid_shape(n, 2 * np.pi * radius / height)
    P, F = _sample(triangulation, shape, extent, (True, False), rng)
    theta, z = P[:, 0] / radius, P[:, 1]
    N = np.column_stack([np.cos(theta), np.sin(theta), np.zeros_like(theta)])
    V = np.column_stack([radius * N[:, :2], z])
    d1 = np.column_stack([-np.sin(theta), np.cos(theta), np.zeros_like(theta)])
    k1 = np.full(len(V), 1.0 / radius)
    k2 = np.zeros(len(V))
    return AnalyticMesh("cylinder", V, _orient_outward(V, F, N), N, k1, k2, (k1 + k2) / 2,
                        d1, radius)


def torus(R: float = 3.0, r: float = 1.0, n: int = 10_000, triangulation: str = "regular",
          seed: int = 0) -> AnalyticMesh:
    """Closed torus around the z axis: tube radius ``r`` at distance ``R``.
    k1 = 1/r around the tube (``d1``), k2 = cos v / (R + r cos v) along the
    big circle: positive outside, negative on the inner (saddle) side."""
    rng = np.random.default_rng(seed)
    extent = ((0.0, 2 * np.pi * R), (0.0, 2 * np.pi * r))  # (R u, r v): isometric at cos v = 0
    shape = _grid_shape(n, R / r)
    P, F = _sample(triangulation, shape, extent, (True, True), rng,
                   density=lambda a, b: (R + r * np.cos(b / r)) / (R + r))
    u, v = P[:, 0] / R, P[:, 1] / r
    N = np.column_stack([np.cos(v) * np.cos(u), np.cos(v) * np.sin(u), np.sin(v)])
    V = np.column_stack([(R + r * np.cos(v)) * np.cos(u), (R + r * np.cos(v)) * np.sin(u),
                         r * np.sin(v)])
    d1 = np.column_stack([-np.sin(v) * np.cos(u), -np.sin(v) * np.sin(u), np.cos(v)])
    k1 = np.full(len(V), 1.0 / r)
    k2 = np.cos(v) / (R + r * np.cos(v))
    return AnalyticMesh("torus", V, _orient_outward(V, F, N), N, k1, k2, (k1 + k2) / 2, d1, r)


def _graph(name, f, half_width, n, triangulation, seed, size):
    """Monge patch z = f(x, y) over [-half_width, half_width]^2 with its exact
    curvatures. ``f(x, y)`` returns (f, fx, fy, fxx, fxy, fyy)."""
    rng = np.random.default_rng(seed)
    extent = ((-half_width, half_width), (-half_width, half_width))
    P, F = _sample(triangulation, _grid_shape(n, 1.0), extent, (False, False), rng)
    x, y = P[:, 0], P[:, 1]
    z, fx, fy, fxx, fxy, fyy = f(x, y)
    V = np.column_stack([x, y, z])
    W = 1 + fx ** 2 + fy ** 2
    N = np.column_stack([-fx, -fy, np.ones_like(x)]) / np.sqrt(W)[:, None]
    # first (E, Fm, G) and second (L, M, Nn) fundamental forms; the second with
    # our sign (positive bending away from the upward normal)
    E, Fm, G = 1 + fx ** 2, fx * fy, 1 + fy ** 2
    L, M, Nn = -fxx / np.sqrt(W), -fxy / np.sqrt(W), -fyy / np.sqrt(W)
    det = E * G - Fm ** 2
    H = (E * Nn - 2 * Fm * M + G * L) / (2 * det)
    K = (L * Nn - M ** 2) / det
    disc = np.sqrt(np.maximum(H ** 2 - K, 0.0))
    k1, k2 = H + disc, H - disc
    # d1 solves (II - k1 I) [a, b] = 0; use the better-conditioned row
    r1 = np.column_stack([-(M - k1 * Fm), L - k1 * E])
    r2 = np.column_stack([Nn - k1 * G, -(M - k1 * Fm)])
    ab = np.where((np.linalg.norm(r1, axis=1) >= np.linalg.norm(r2, axis=1))[:, None], r1, r2)
    d1 = ab[:, :1] * np.column_stack([np.ones_like(x), np.zeros_like(x), fx]) \
        + ab[:, 1:] * np.column_stack([np.zeros_like(x), np.ones_like(x), fy])
    length = np.linalg.norm(d1, axis=1, keepdims=True)
    umbilic = disc <= 1e-9 * (np.abs(H) + 1e-300)
    d1 = np.where(umbilic[:, None] | (length == 0), np.nan, d1 / np.where(length > 0, length, 1))
    return AnalyticMesh(name, V, _orient_outward(V, F, N), N, k1, k2, H, d1, size)


def saddle(a: float = 1.0, half_width: float = 0.75, n: int = 10_000,
           triangulation: str = "regular", seed: int = 0) -> AnalyticMesh:
    """Hyperbolic paraboloid z = (x^2 - y^2) / (2a): k1 = 1/a, k2 = -1/a and
    H = 0 at the origin."""
    def f(x, y):
        one = np.ones_like(x)
        return (x * x - y * y) / (2 * a), x / a, -y / a, one / a, 0 * one, -one / a
    return _graph("saddle", f, half_width, n, triangulation, seed, a)


def gaussian_bump(amplitude: float = 1.0, sigma: float = 1.0, half_width: float = 3.0,
                  n: int = 10_000, triangulation: str = "regular", seed: int = 0) -> AnalyticMesh:
    """z = amplitude * exp(-(x^2 + y^2) / (2 sigma^2)): convex cap (H > 0
    with the upward normal), a saddle-shaped ring and a flat skirt."""
    def f(x, y):
        g = amplitude * np.exp(-(x * x + y * y) / (2 * sigma ** 2))
        s2, s4 = sigma ** 2, sigma ** 4
        return (g, -x / s2 * g, -y / s2 * g, (x * x / s4 - 1 / s2) * g, x * y / s4 * g,
                (y * y / s4 - 1 / s2) * g)
    return _graph("gaussian_bump", f, half_width, n, triangulation, seed, sigma)


def plane(half_width: float = 1.0, n: int = 10_000, triangulation: str = "regular",
          seed: int = 0) -> AnalyticMesh:
    """The square z = 0 with upward normals: every curvature is 0."""
    def f(x, y):
        zero = np.zeros_like(x)
        return zero, zero, zero, zero, zero, zero
    return _graph("plane", f, half_width, n, triangulation, seed, half_width)


SURFACES = {"sphere": sphere, "cylinder": cylinder, "torus": torus, "saddle": saddle,
            "gaussian_bump": gaussian_bump, "plane": plane}
