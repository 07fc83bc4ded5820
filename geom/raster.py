"""Orthographic z-buffer rasterization of triangle meshes into multi-channel
images (Numba, exact top-left fill rule).

See docs/geometry.md (conventions, fill rule, depth test, implementation).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange, typed

# Coordinates and image sides within 2^29 grid units: an edge function, the
# cross product of two vectors shorter than 2^30, stays below 2^61 and the sum
# of three below 2^63.
_GRID_BITS = 29
_MAX_COORD_PX = 2.0 ** 24
_CHUNK = 1024
_u = np.uint64


@njit(cache=True, nogil=True, error_model="numpy")
def _all_finite(V):
    """No NaN or infinity in V: no float64 with an all-ones exponent."""
    bits = V.reshape(-1).view(np.uint64)
    top = np.uint64(0)
    for i in range(bits.shape[0]):
        top = max(top, bits[_u(i)] & np.uint64(0x7FF0000000000000))
    return top != np.uint64(0x7FF0000000000000)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=True)
def _extent(V):
    """(largest |x| or |y|, smallest z, largest z) of finite vertices."""
    # Four independent reductions, so that they run side by side.
    mx = 0.0
    my = 0.0
    zlo = np.inf
    zhi = -np.inf
    for v in range(V.shape[0]):
        mx = max(mx, abs(V[_u(v), 0]))
        my = max(my, abs(V[_u(v), 1]))
        zlo = min(zlo, V[_u(v), 2])
        zhi = max(zhi, V[_u(v), 2])
    return max(mx, my), zlo, zhi


@njit(cache=True, nogil=True, error_model="numpy")
def _check(V, F, height, width):
    """0 if the mesh can be drawn, else 1 (a non-finite vertex), 2 (a face
    index outside [0, n): read as unsigned, negatives are huge) or 3 (|x| or
    |y| beyond 2^24 px); then the snap bits k and the depth-key offset and
    scale (z mapped onto [0, 2^30])."""
    if not _all_finite(V):
        return 1, 0, 0.0, 0.0
    F1 = F.reshape(-1)
    top = np.zeros(1, F1.dtype)[0]
    for i in range(F1.shape[0]):
        top = max(top, F1[_u(i)])
    if F1.shape[0] > 0 and top >= V.shape[0]:
        return 2, 0, 0.0, 0.0
    max_abs, zlo, zhi = _extent(V)
    if max_abs > _MAX_COORD_PX:
        return 3, 0, 0.0, 0.0
    k = _GRID_BITS - int(np.ceil(np.log2(max(max_abs, height, width, 1.0))))
    zscale = 2.0 ** 30 / (zhi - zlo) if zhi > zlo else 0.0
    return 0, k, zlo if zhi >= zlo else 0.0, zscale


@njit(cache=True, nogil=True, error_model="numpy")
def _snap(V, k, XY):
    """x, y on the 2^-k pixel grid, in grid units."""
    scale = 2.0 ** k
    for v in range(V.shape[0]):
        XY[_u(v), 0] = np.int32(np.floor(V[_u(v), 0] * scale + 0.5))
        XY[_u(v), 1] = np.int32(np.floor(V[_u(v), 1] * scale + 0.5))


_EMPTY = np.iinfo(np.int64).max
# Index of the lowest set bit of a 4-bit code.
_LOWEST_BIT = np.array([0, 0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 2, 0, 1, 0], np.int64)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _keep_nearer(t, p, lb, lc, inside, za, dzb, dzc, z0, zscale, vis, bary, bs, df):
    """Fragment of triangle t at flat pixel p with weights lb, lc of its
    corners b, c (z = za + lb dzb + lc dzc): keep it if inside and nearer.
    vis packs (depth key << 32 | triangle), so one integer comparison is the
    depth test, and ties go to the lower triangle index whatever the drawing
    order. The winner's weights go to bary[bs*p], bary[bs*p+1]. Selects, not
    branches: whether a fragment wins is unpredictable."""
    z = za + lb * dzb + lc * dzc
    key = (np.int64((z - z0) * zscale) << 32) | np.int64(t)
    old = vis[_u(p)]
    win = inside & (key < old)
    vis[_u(p)] = key if win else old
    q = _u(bs * p)
    bary[q] = lb if win else bary[q]
    bary[q + 1] = lc if win else bary[q + 1]
    if df.shape[0] > 0:
        df[_u(p)] = z if win else df[_u(p)]


@njit(cache=True, nogil=True, error_model="numpy")
def _resolve(F1, A, C, vis, bary, bs, image, mask, face_id):
    """Per pixel: mask, face id (if face_id has pixels) and the channels of
    the winning triangle from its stored weights, 0 where empty. C == 3 (D,
    C, E) gets its own loop, written out: a channel loop of unknown length
    costs Numba/LLVM about twice as much per pixel."""
    HW = vis.shape[0]
    Af = A.reshape(-1)
    imf = image.reshape(-1)
    mf = mask.reshape(-1)
    idf = face_id.reshape(-1)
    want_ids = idf.shape[0] == HW
    if C == 3:
        for p in range(HW):
            v = vis[_u(p)]
            mf[_u(p)] = v != _EMPTY
            if want_ids:
                idf[_u(p)] = np.int32(v & 0xFFFFFFFF) if v != _EMPTY else -1
            if v == _EMPTY:
                imf[_u(3 * p)] = 0.0
                imf[_u(3 * p + 1)] = 0.0
                imf[_u(3 * p + 2)] = 0.0
                continue
            t = v & 0xFFFFFFFF
            a = F1[_u(3 * t)]
            b = F1[_u(3 * t + 1)]
            c = F1[_u(3 * t + 2)]
            lb = np.float64(bary[_u(bs * p)])
            lc = np.float64(bary[_u(bs * p + 1)])
            va = Af[_u(3 * a)]
            imf[_u(3 * p)] = va + lb * (Af[_u(3 * b)] - va) + lc * (Af[_u(3 * c)] - va)
            va = Af[_u(3 * a + 1)]
            imf[_u(3 * p + 1)] = va + lb * (Af[_u(3 * b + 1)] - va) + lc * (Af[_u(3 * c + 1)] - va)
            va = Af[_u(3 * a + 2)]
            imf[_u(3 * p + 2)] = va + lb * (Af[_u(3 * b + 2)] - va) + lc * (Af[_u(3 * c + 2)] - va)
        return
    for p in range(HW):
        v = vis[_u(p)]
        mf[_u(p)] = v != _EMPTY
        if want_ids:
            idf[_u(p)] = np.int32(v & 0xFFFFFFFF) if v != _EMPTY else -1
        if v == _EMPTY:
            for ch in range(C):
                imf[_u(C * p + ch)] = 0.0
            continue
        t = v & 0xFFFFFFFF
        a = F1[_u(3 * t)]
        b = F1[_u(3 * t + 1)]
        c = F1[_u(3 * t + 2)]
        lb = np.float64(bary[_u(bs * p)])
        lc = np.float64(bary[_u(bs * p + 1)])
        for ch in range(C):
            va = Af[_u(C * a + ch)]
            vb = Af[_u(C * b + ch)]
            vc = Af[_u(C * c + ch)]
            imf[_u(C * p + ch)] = va + lb * (vb - va) + lc * (vc - va)


@njit(cache=True, nogil=True, error_model="numpy")
def _setup(n, k, H, W, xa_, xb_, xc_, ya_, yb_, yc_, ij_, code_, e0_, e2_, area_,
           sx0_, sx2_, sy0_, sy2_):
    """Per triangle of a chunk, from its snapped corners (grid units): the
    first pixel centre (i0, j0) of its clipped bounding box, packed in ij_;
    the edge functions there (e0 of edge a->b, e2 of edge c->a, 2*area = their
    sum with e1) and their steps one pixel right (sx) and down (sy); in code_,
    bits 0-3 say whether the centres (i0, j0), (i0, j0+1), (i0+1, j0),
    (i0+1, j0+1) are covered (when the box holds no more than those), bit 4
    that the box holds more. No branches and no gathers, so LLVM vectorizes
    it (8 triangles per instruction with AVX-512)."""
    S = (np.int64(1) << k) - 1
    for q in range(n):
        xa = xa_[q]; xb = xb_[q]; xc = xc_[q]
        ya = ya_[q]; yb = yb_[q]; yc = yc_[q]
        j0 = max((min(xa, xb, xc) + S) >> k, 0)
        j1 = min(max(xa, xb, xc) >> k, W - 1)
        i0 = max((min(ya, yb, yc) + S) >> k, 0)
        i1 = min(max(ya, yb, yc) >> k, H - 1)
        nx = j1 - j0
        ny = i1 - i0
        # Corners relative to the first centre: an edge function is then a
        # cross product, exact in int64.
        px = j0 << k
        py = i0 << k
        ax = xa - px; bx = xb - px; cx = xc - px
        ay = ya - py; by = yb - py; cy = yc - py
        e0 = ax * by - ay * bx
        e1 = bx * cy - by * cx
        e2 = cx * ay - cy * ax
        area = e0 + e1 + e2
        sx0 = (ay - by) << k; sy0 = (bx - ax) << k
        sx1 = (by - cy) << k; sy1 = (cx - bx) << k
        sx2 = (cy - ay) << k; sy2 = (ax - cx) << k
        # Orient so that inside is positive (sg = -1 flips), then take one
        # unit off each edge that is not a top or left edge, i.e. whose
        # oriented step (ux, uy) is lexicographically <= (0, 0); ux is a
        # multiple of 2^k, so ux + [uy > 0] <= 0 tells. Inside iff all >= 0.
        sg = area >> 63
        g0 = (e0 ^ sg) - sg; g1 = (e1 ^ sg) - sg; g2 = (e2 ^ sg) - sg
        ux0 = (sx0 ^ sg) - sg; ux1 = (sx1 ^ sg) - sg; ux2 = (sx2 ^ sg) - sg
        uy0 = (sy0 ^ sg) - sg; uy1 = (sy1 ^ sg) - sg; uy2 = (sy2 ^ sg) - sg
        g0 -= ((ux0 + (((-uy0) >> 63) & 1) - 1) >> 63) & 1
        g1 -= ((ux1 + (((-uy1) >> 63) & 1) - 1) >> 63) & 1
        g2 -= ((ux2 + (((-uy2) >> 63) & 1) - 1) >> 63) & 1
        small = (nx >= 0) & (ny >= 0) & (nx <= 1) & (ny <= 1) & (area != 0)
        m0 = small & ((g0 | g1 | g2) >= 0)
        m1 = small & (nx == 1) & (((g0 + ux0) | (g1 + ux1) | (g2 + ux2)) >= 0)
        m2 = small & (ny == 1) & (((g0 + uy0) | (g1 + uy1) | (g2 + uy2)) >= 0)
        m3 = small & (nx == 1) & (ny == 1) & (
            ((g0 + ux0 + uy0) | (g1 + ux1 + uy1) | (g2 + ux2 + uy2)) >= 0)
        big = (nx >= 0) & (ny >= 0) & ((nx > 1) | (ny > 1)) & (area != 0)
        code_[q] = (np.int64(m0) | (np.int64(m1) << 1) | (np.int64(m2) << 2)
                    | (np.int64(m3) << 3) | (np.int64(big) << 4))
        ij_[q] = (i0 << 32) | j0
        e0_[q] = e0
        e2_[q] = e2
        area_[q] = area
        sx0_[q] = sx0
        sx2_[q] = sx2
        sy0_[q] = sy0
        sy2_[q] = sy2


@njit(cache=True, nogil=True, error_model="numpy")
def _raster_into(V, F, A, C, k, z0, zscale, cull_backfaces, XY, vis, bary, bs, image, mask,
                 depth, face_id):
    """Draw (V, F) with the C channels A. Scratch: XY (n, 2) int32, vis (H*W,)
    int64 and bary, float32 weights of two corners per pixel at stride bs
    (image's own memory, bs = C, when C >= 2). image (H, W, C) float32 and
    mask (H, W) bool are written everywhere (image 0 where empty); depth
    (H, W) float64 (+inf where empty) and face_id (H, W) int32 (-1) only if
    they have that shape."""
    H, W = image.shape[0], image.shape[1]
    _snap(V, k, XY)
    Vf = V.reshape(-1)
    F1 = F.reshape(-1)
    XYf = XY.reshape(-1)
    vis[:] = _EMPTY
    df = depth.reshape(-1)
    df[:] = np.inf
    m = F.shape[0]
    # Per-chunk structure of arrays for the vectorized setup; separate
    # allocations, so that LLVM knows they do not overlap.
    xa_ = np.empty(_CHUNK, np.int64)
    xb_ = np.empty(_CHUNK, np.int64)
    xc_ = np.empty(_CHUNK, np.int64)
    ya_ = np.empty(_CHUNK, np.int64)
    yb_ = np.empty(_CHUNK, np.int64)
    yc_ = np.empty(_CHUNK, np.int64)
    ij_ = np.empty(_CHUNK, np.int64)
    code_ = np.empty(_CHUNK, np.int64)
    e0_ = np.empty(_CHUNK, np.int64)
    e2_ = np.empty(_CHUNK, np.int64)
    area_ = np.empty(_CHUNK, np.int64)
    sx0_ = np.empty(_CHUNK, np.int64)
    sx2_ = np.empty(_CHUNK, np.int64)
    sy0_ = np.empty(_CHUNK, np.int64)
    sy2_ = np.empty(_CHUNK, np.int64)
    frag = np.empty(_CHUNK, np.int32)
    big_q = np.empty(_CHUNK, np.int32)
    for c0 in range(0, m, _CHUNK):
        n = min(_CHUNK, m - c0)
        # Gather the snapped corners (the only scattered reads of the setup).
        for q in range(n):
            t = c0 + q
            a = F1[_u(3 * t)]
            b = F1[_u(3 * t + 1)]
            c = F1[_u(3 * t + 2)]
            xa_[q] = XYf[_u(2 * a)]; xb_[q] = XYf[_u(2 * b)]; xc_[q] = XYf[_u(2 * c)]
            ya_[q] = XYf[_u(2 * a + 1)]; yb_[q] = XYf[_u(2 * b + 1)]; yc_[q] = XYf[_u(2 * c + 1)]
        _setup(n, k, H, W, xa_, xb_, xc_, ya_, yb_, yc_, ij_, code_, e0_, e2_, area_,
               sx0_, sx2_, sy0_, sy2_)
        # List the triangles that cover some centre of a small box, and
        # the big boxes, without branches (most triangles cover nothing).
        nf = 0
        nb = 0
        for q in range(n):
            code = code_[q]
            frag[_u(nf)] = (q << 4) | (code & 15)
            nf += (code & 15) != 0
            big_q[_u(nb)] = q
            nb += code >> 4
        for f in range(nf):
            r = np.int64(frag[_u(f)])
            q = r >> 4
            bits = r & 15
            area = area_[_u(q)]
            if cull_backfaces and area > 0:
                continue
            t = c0 + q
            ij = ij_[_u(q)]
            inv = 1.0 / area
            za = Vf[_u(3 * F1[_u(3 * t)] + 2)]
            dzb = Vf[_u(3 * F1[_u(3 * t + 1)] + 2)] - za
            dzc = Vf[_u(3 * F1[_u(3 * t + 2)] + 2)] - za
            while bits:
                s = _LOWEST_BIT[bits]
                bits &= bits - 1
                dx = s & 1
                dy = s >> 1
                p = ((ij >> 32) + dy) * W + (ij & 0xFFFFFFFF) + dx
                e0 = e0_[_u(q)] + dx * sx0_[_u(q)] + dy * sy0_[_u(q)]
                e2 = e2_[_u(q)] + dx * sx2_[_u(q)] + dy * sy2_[_u(q)]
                _keep_nearer(t, p, e2 * inv, e0 * inv, True, za, dzb, dzc, z0, zscale, vis, bary,
                             bs, df)
        # Bigger boxes: walk them with incremental edge functions.
        for r in range(nb):
            q = np.int64(big_q[_u(r)])
            area = area_[_u(q)]
            if cull_backfaces and area > 0:
                continue
            t = c0 + q
            j0 = ij_[_u(q)] & 0xFFFFFFFF
            i0 = ij_[_u(q)] >> 32
            j1 = min(max(xa_[_u(q)], xb_[_u(q)], xc_[_u(q)]) >> k, W - 1)
            i1 = min(max(ya_[_u(q)], yb_[_u(q)], yc_[_u(q)]) >> k, H - 1)
            e0 = e0_[_u(q)]
            e2 = e2_[_u(q)]
            sx0 = sx0_[_u(q)]; sx2 = sx2_[_u(q)]; sx1 = -sx0 - sx2
            sy0 = sy0_[_u(q)]; sy2 = sy2_[_u(q)]; sy1 = -sy0 - sy2
            sg = area >> 63
            g0 = (e0 ^ sg) - sg; g1 = ((area - e0 - e2) ^ sg) - sg; g2 = (e2 ^ sg) - sg
            ux0 = (sx0 ^ sg) - sg; ux1 = (sx1 ^ sg) - sg; ux2 = (sx2 ^ sg) - sg
            uy0 = (sy0 ^ sg) - sg; uy1 = (sy1 ^ sg) - sg; uy2 = (sy2 ^ sg) - sg
            g0 -= ((ux0 + (((-uy0) >> 63) & 1) - 1) >> 63) & 1
            g1 -= ((ux1 + (((-uy1) >> 63) & 1) - 1) >> 63) & 1
            g2 -= ((ux2 + (((-uy2) >> 63) & 1) - 1) >> 63) & 1
            inv = 1.0 / area
            za = Vf[_u(3 * F1[_u(3 * t)] + 2)]
            dzb = Vf[_u(3 * F1[_u(3 * t + 1)] + 2)] - za
            dzc = Vf[_u(3 * F1[_u(3 * t + 2)] + 2)] - za
            for i in range(i0, i1 + 1):
                h0 = g0; h1 = g1; h2 = g2
                f0 = e0; f2 = e2
                for j in range(j0, j1 + 1):
                    _keep_nearer(t, i * W + j, f2 * inv, f0 * inv, (h0 | h1 | h2) >= 0,
                                 za, dzb, dzc, z0, zscale, vis, bary, bs, df)
                    h0 += ux0; h1 += ux1; h2 += ux2
                    f0 += sx0; f2 += sx2
                g0 += uy0; g1 += uy1; g2 += uy2
                e0 += sy0; e2 += sy2
    _resolve(F1, A, C, vis, bary, bs, image, mask, face_id)


@njit(cache=True, nogil=True, error_model="numpy")
def _scratch(height, width, C, n):
    """XY, vis and, when C == 1, a weight buffer (else the image holds them)."""
    return (np.empty((n, 2), np.int32), np.empty(height * width, np.int64),
            np.empty(2 * height * width if C == 1 else 0, np.float32))


@njit(cache=True, nogil=True, error_model="numpy")
def _raster_one(V, F, A, cull_backfaces, image, mask, depth, face_id, XY, vis, bary):
    """Check, then draw one mesh; returns the status of :func:`_check`."""
    H, W, C = image.shape
    status, k, z0, zscale = _check(V, F, H, W)
    if status == 0:
        if C >= 2:
            bary, bs = image.reshape(-1), C
        else:
            bs = 2
        _raster_into(V, F, A, C, k, z0, zscale, cull_backfaces, XY[:V.shape[0]], vis, bary, bs,
                     image, mask, depth, face_id)
    return status


@njit(cache=True, nogil=True, error_model="numpy")
def _raster_mesh(V, F, A, height, width, cull_backfaces, want_depth, want_ids):
    C = A.shape[1]
    image = np.empty((height, width, C), np.float32)
    mask = np.empty((height, width), np.bool_)
    depth = np.empty((height, width) if want_depth else (0, 0))
    face_id = np.empty((height, width) if want_ids else (0, 0), np.int32)
    XY, vis, bary = _scratch(height, width, C, V.shape[0])
    status = _raster_one(V, F, A, cull_backfaces, image, mask, depth, face_id, XY, vis, bary)
    return status, image, mask, depth, face_id


@njit(cache=True, parallel=True, error_model="numpy")
def _raster_batch(Vs, Fs, As, groups, cull_backfaces, images, masks, status):
    """Meshes groups[g] <= m < groups[g+1] go to one thread in turn and share
    one scratch allocation."""
    H, W, C = images.shape[1], images.shape[2], images.shape[3]
    no_depth = np.empty((0, 0))
    no_ids = np.empty((0, 0), np.int32)
    for g in prange(groups.shape[0] - 1):
        n = 0
        for m in range(groups[g], groups[g + 1]):
            n = max(n, Vs[m].shape[0])
        XY, vis, bary = _scratch(H, W, C, n)
        for m in range(groups[g], groups[g + 1]):
            status[m] = _raster_one(Vs[m], Fs[m], As[m], cull_backfaces, images[m], masks[m],
                                    no_depth, no_ids, XY, vis, bary)


def _as_arrays(verts_px, faces, attrs, where):
    """C-contiguous (V float64 (n, 3), F uint32 or uint64 (m, 3), A float32 or
    float64 (n, C)); ValueError naming the argument for a wrong shape or type.
    Faces are viewed as unsigned so that a negative index reads as a huge one
    and fails the kernel's range check."""
    V = np.asarray(verts_px)
    if V.ndim != 2 or V.shape[1] != 3:
        raise ValueError(f"{where}: verts_px must have shape (n, 3), got {V.shape}")
    if V.dtype.kind not in "iuf":
        raise ValueError(f"{where}: verts_px must be real numbers, got dtype {V.dtype}")
    V = np.ascontiguousarray(V, dtype=np.float64)
    F = np.asarray(faces)
    if F.ndim != 2 or F.shape[1] != 3:
        raise ValueError(f"{where}: faces must have shape (m, 3), got {F.shape}")
    if F.size and F.dtype.kind not in "iu":
        raise ValueError(f"{where}: faces must be integer vertex indices, got dtype {F.dtype}")
    if F.dtype.itemsize < 4 or F.dtype.kind not in "iu":
        F = F.astype(np.int64)
    F = np.ascontiguousarray(F)
    F = F.view(np.uint32) if F.dtype.itemsize == 4 else F.view(np.uint64)
    A = np.asarray(attrs)
    if A.ndim == 1:
        A = A[:, None]
    if A.ndim != 2 or A.shape[0] != V.shape[0] or A.shape[1] < 1:
        raise ValueError(f"{where}: attrs must have shape (n, C) = ({V.shape[0]}, C >= 1) "
                         f"to match verts_px, got {np.shape(attrs)}")
    if A.dtype.kind not in "iuf":
        raise ValueError(f"{where}: attrs must be real numbers, got dtype {A.dtype}")
    if A.dtype not in (np.float32, np.float64):
        A = A.astype(np.float64)
    return V, F, np.ascontiguousarray(A)


def _raise_for(status, V, F, where):
    """The ValueError for a mesh the kernel refused (status of _check)."""
    if status == 1:
        row = int(np.nonzero(~np.isfinite(V).all(axis=1))[0][0])
        raise ValueError(f"{where}: verts_px[{row}] = {V[row].tolist()} is not finite")
    if status == 2:
        row = int(np.nonzero((F >= V.shape[0]).any(axis=1))[0][0])
        bad = F[row].astype(np.int32 if F.dtype == np.uint32 else np.int64).tolist()
        raise ValueError(f"{where}: faces[{row}] = {bad} indexes outside the "
                         f"{V.shape[0]} vertices")
    if status == 3:
        raise ValueError(f"{where}: verts_px x/y reach {np.abs(V[:, :2]).max():g} px; the "
                         f"rasterizer supports |x|, |y| <= 2^24 px")


def _checked_size(height, width):
    try:
        ok = all(int(n) == n and 1 <= n <= _MAX_COORD_PX for n in (height, width))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"height and width must be integers in [1, 2^24], got {height!r}, "
                         f"{width!r}")
    return int(height), int(width)


def rasterize(verts_px, faces, attrs, height, width, *, cull_backfaces=False,
              return_depth=False, return_face_ids=False):
    """Z-buffer one mesh into an image of its per-vertex channels.

    verts_px (n, 3): x_px (column), y_px (row, down), z (depth; nearest =
    smallest), |x|, |y| <= 2^24. faces (m, 3): integer vertex indices. attrs
    (n, C): per-vertex channels, float32 or float64 as given (an (n,) array is
    one channel). height, width: image size in pixels.

    Returns ``(image, mask)``: image (H, W, C) float32, the channels of the
    nearest surface at each pixel centre (0 where nothing is drawn); mask
    (H, W) bool, True where a triangle covers the centre. ``return_depth``
    appends depth (H, W) float64, the z of that surface (+inf where the mask
    is False); ``return_face_ids`` then appends face_id (H, W) int32, the row
    of ``faces`` drawn there (-1 where empty). ``cull_backfaces`` skips faces
    whose normal (right-handed in the face order) points away from the viewer.
    """
    height, width = _checked_size(height, width)
    V, F, A = _as_arrays(verts_px, faces, attrs, "rasterize")
    status, image, mask, depth, face_id = _raster_mesh(
        V, F, A, height, width, bool(cull_backfaces), bool(return_depth), bool(return_face_ids))
    _raise_for(status, V, F, "rasterize")
    out = (image, mask)
    if return_depth:
        out += (depth,)
    if return_face_ids:
        out += (face_id,)
    return out


def rasterize_batch(meshes, height, width, *, cull_backfaces=False):
    """Z-buffer many meshes in parallel, one Numba thread per mesh.

    meshes: a sequence of ``(verts_px, faces, attrs)`` as for :func:`rasterize`,
    all with the same channel count C; vertex and face counts may differ (for
    posed copies of one mesh, pass the same faces array each time). The arrays
    reach the parallel loop without copies, as Numba typed lists.

    Returns images (B, H, W, C) float32 and masks (B, H, W) bool, each equal to
    what :func:`rasterize` gives for that mesh. Threads: Numba's
    (``numba.set_num_threads``). A bad mesh raises ValueError naming its index,
    after the others are drawn.
    """
    height, width = _checked_size(height, width)
    arrays = [_as_arrays(*mesh, where=f"rasterize_batch: meshes[{b}]")
              for b, mesh in enumerate(meshes)]
    if not arrays:
        raise ValueError("rasterize_batch: meshes is empty")
    channels = {A.shape[1] for _, _, A in arrays}
    if len(channels) != 1:
        raise ValueError(f"rasterize_batch: meshes must all have the same channel count C, "
                         f"got {sorted(channels)}")
    # One Numba type per list: promote if the meshes' dtypes differ.
    f_type = np.result_type(*[F for _, F, _ in arrays])
    a_type = np.result_type(*[A for _, _, A in arrays])
    Vs, Fs, As = typed.List(), typed.List(), typed.List()
    for V, F, A in arrays:
        Vs.append(V)
        Fs.append(F.astype(f_type, copy=False))
        As.append(A.astype(a_type, copy=False))
    B = len(arrays)
    # Runs of up to 4 meshes share their scratch; the threads take runs one
    # at a time (chunk size 1), so a thread slowed by other work does not
    # hold back the rest.
    groups = np.unique(np.r_[np.arange(0, B, 4), B]).astype(np.int64)
    images = np.empty((B, height, width, channels.pop()), np.float32)
    masks = np.empty((B, height, width), np.bool_)
    status = np.zeros(B, np.int64)
    with numba.parallel_chunksize(1):
        _raster_batch(Vs, Fs, As, groups, bool(cull_backfaces), images, masks, status)
    for b in np.nonzero(status)[0]:
        _raise_for(status[b], *arrays[b][:2], f"rasterize_batch: meshes[{b}]")
    return images, masks
