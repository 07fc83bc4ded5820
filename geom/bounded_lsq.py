"""Regularized linear least squares within box bounds: the solver of each
step of :func:`dce.geom.landmark_fit.fit_to_landmarks`.

Hand-written in Numba (normal equations, Cholesky, a primal active set for
the expression weights' bounds). scipy's BVLS gives the same answer to
about 1e-6 (tests/test_morphable.py) but not the same last bits, which
every coarse mesh, hence every figure, depends on, and it makes the fit with
bounded expressions about 7x slower (``benchmarks/fit_speed.py --scipy``).
"""
from __future__ import annotations

import numpy as np
from numba import njit


def regularized_lstsq(A, b, reg, bounds=None, start=None):
    """argmin ||A u - b||^2 + sum_j reg_j u_j^2, within ``bounds`` (lo, hi)
    when given, from the feasible warm ``start`` (the previous solution).

    Columns are scaled to unit norm first (camera and mode columns differ by
    orders of magnitude). The systems are ~110 x 110: BLAS threads would only
    add overhead (and stall on a loaded machine), so the normal equations,
    their Cholesky solve and the bounded active-set loop run in Numba."""
    norms = np.sqrt((A * A).sum(axis=0) + reg)
    norms[norms == 0] = 1.0
    H, g = _normal_equations(np.ascontiguousarray(A / norms), b, reg / norms ** 2)
    n = len(g)
    lo, hi = (np.full(n, -np.inf), np.full(n, np.inf)) if bounds is None else bounds
    u0 = np.zeros(n) if start is None else np.clip(start, lo, hi) * norms
    u, ok = _box_qp(H, g, lo * norms, hi * norms, u0)
    if not ok:
        raise ValueError("fit_to_landmarks: the least-squares system is singular; use "
                         "regularization > 0 or fewer modes")
    return u / norms


@njit(cache=True)
def _normal_equations(A, b, d):
    """H = A^T A + diag(d) (symmetric), g = A^T b."""
    m, n = A.shape
    H = np.zeros((n, n))
    g = np.zeros(n)
    for r in range(m):
        for i in range(n):
            a = A[r, i]
            if a != 0.0:
                g[i] += a * b[r]
                for j in range(i, n):
                    H[i, j] += a * A[r, j]
    for i in range(n):
        H[i, i] += d[i]
        for j in range(i):
            H[i, j] = H[j, i]
    return H, g


@njit(cache=True)
def _solve_free(H, g, u, free):
    """Solve H[f, f] x = g[f] - H[f, ~f] u[~f] over the free set f by
    Cholesky; returns (x, ok) with ok False when H[f, f] is not positive
    definite."""
    idx = np.flatnonzero(free)
    m = len(idx)
    r = np.empty(m)
    for a in range(m):
        i = idx[a]
        s = g[i]
        for j in range(len(u)):
            if not free[j]:
                s -= H[i, j] * u[j]
        r[a] = s
    L = np.zeros((m, m))
    for a in range(m):
        for c in range(a + 1):
            s = H[idx[a], idx[c]]
            for q in range(c):
                s -= L[a, q] * L[c, q]
            if a == c:
                if s <= 1e-13 * max(H[idx[a], idx[a]], 1e-300):
                    return r, False
                L[a, a] = np.sqrt(s)
            else:
                L[a, c] = s / L[c, c]
    for a in range(m):  # L y = r
        s = r[a]
        for q in range(a):
            s -= L[a, q] * r[q]
        r[a] = s / L[a, a]
    for a in range(m - 1, -1, -1):  # L^T x = y
        s = r[a]
        for q in range(a + 1, m):
            s -= L[q, a] * r[q]
        r[a] = s / L[a, a]
    return r, True


@njit(cache=True)
def _box_qp(H, g, lo, hi, u):
    """Minimize 0.5 u^T H u - g^T u subject to lo <= u <= hi by the primal
    active-set method (as Lawson-Hanson's NNLS), from the feasible ``u``.
    Returns (u, ok)."""
    n = len(g)
    u = u.copy()
    at_lo = u <= lo
    at_hi = (u >= hi) & ~at_lo
    tol = 1e-12 * (1.0 + np.abs(g).max())
    for _ in range(10 * n + 10):
        free = ~(at_lo | at_hi)
        x, ok = _solve_free(H, g, u, free)
        if not ok:
            return u, False
        # step from u toward the subspace minimizer, stopping at the first bound
        alpha, block, block_lo = 1.0, -1, False
        a = 0
        for j in range(n):
            if free[j]:
                if x[a] < lo[j] and (lo[j] - u[j]) / (x[a] - u[j]) < alpha:
                    alpha, block, block_lo = (lo[j] - u[j]) / (x[a] - u[j]), j, True
                elif x[a] > hi[j] and (hi[j] - u[j]) / (x[a] - u[j]) < alpha:
                    alpha, block, block_lo = (hi[j] - u[j]) / (x[a] - u[j]), j, False
                a += 1
        a = 0
        for j in range(n):
            if free[j]:
                u[j] += alpha * (x[a] - u[j])
                a += 1
        if block >= 0:
            if block_lo:
                u[block], at_lo[block] = lo[block], True
            else:
                u[block], at_hi[block] = hi[block], True
            for j in range(n):  # others that reached a bound in the same step
                if free[j] and j != block:
                    if u[j] <= lo[j]:
                        u[j], at_lo[j] = lo[j], True
                    elif u[j] >= hi[j]:
                        u[j], at_hi[j] = hi[j], True
            continue
        # optimal on this face: release the bound whose multiplier has the
        # wrong sign the most, or stop
        grad = H @ u - g
        worst, release = tol, -1
        for j in range(n):
            if at_lo[j] and -grad[j] > worst:
                worst, release = -grad[j], j
            elif at_hi[j] and grad[j] > worst:
                worst, release = grad[j], j
        if release < 0:
            return u, True
        at_lo[release] = False
        at_hi[release] = False
    return u, True

