"""From a (refined) depth image back to a triangle mesh in the model's frame.

A depth image of :mod:`dce.geom.dce` holds, at pixel (row i, column j), the
view depth z in mm of the surface seen through the pixel centre (x = j,
y = i). With the image's scaled-orthographic camera
(:class:`~dce.geom.projection.OrthographicCamera`), ``camera.unproject``
turns ``(j, i, z)`` back into the model point, so every valid pixel gives
one vertex exactly on the rendered surface (up to the image's storage
precision), in millimetres, in the frame of the mesh that was rendered.

:func:`depth_image_mesh` connects the valid pixels as a grid: two triangles
per 2x2 block of valid pixels (one where three of the four are valid),
skipping triangles that span a depth discontinuity. :func:`merge_with_coarse`
then puts that grid in place of the part of a coarse mesh it covers and keeps
the rest of the coarse mesh (what the camera does not see: the back, parts
outside the image, occluded folds, regions where the image has no pixels).

Orientation: faces are right-handed, and a triangle of the grid has its
normal toward the viewer (``camera.view_direction``), as a face mesh whose
normals point out of the head has on its visible side.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .io import Mesh
from .normals import face_normals
from .projection import OrthographicCamera
from .raster import rasterize

# Default discontinuity threshold, in pixel pitches (1 / camera.scale mm): a
# triangle whose three depths spread over more than 5 pitches is steeper than
# atan(5) = 79 degrees from the image plane. Genuine face surfaces that steep
# only occur at the silhouette, while occlusion boundaries (nose over cheek,
# chin over neck) jump by far more. A threshold in pitches rather than in
# fixed mm keeps the same meaning at 32 px (about 6 mm per pixel on a face)
# and at 256 px (about 0.8 mm).
DEFAULT_JUMP_PITCHES = 5.0


def default_max_jump(camera: OrthographicCamera) -> float:
    """The default discontinuity threshold in mm: ``DEFAULT_JUMP_PITCHES``
    pixel pitches of ``camera`` (``5 / camera.scale``)."""
    return DEFAULT_JUMP_PITCHES / camera.scale


def _grid_triangles(valid: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """(t, 3) triangles over the pixel grid as flat pixel indices (row * W +
    col), facing the viewer, of every 2x2 block: both triangles of a block
    with four valid pixels, split along the diagonal whose depths differ
    less (so a single corner on another surface is cut off by itself), or
    the one triangle of a block with exactly three."""
    H, W = valid.shape
    i, j = np.meshgrid(np.arange(H - 1), np.arange(W - 1), indexing="ij")
    a = (i * W + j).ravel()          # (row i,     col j)
    b, c, d = a + 1, a + W, a + W + 1  # (i, j+1), (i+1, j), (i+1, j+1)
    v = valid.ravel()
    va, vb, vc, vd = v[a], v[b], v[c], v[d]
    z = np.where(valid, depth, 0.0).ravel()
    full = va & vb & vc & vd
    along_ad = np.abs(z[a] - z[d]) <= np.abs(z[b] - z[c])
    # x = column (right), y = row (down), z away from the viewer: the corner
    # orders below have view-frame normals toward -z, i.e. toward the viewer.
    candidates = (
        ((a, c, d), (full & along_ad) | (va & vc & vd & ~vb)),
        ((a, d, b), (full & along_ad) | (va & vb & vd & ~vc)),
        ((a, c, b), (full & ~along_ad) | (va & vb & vc & ~vd)),
        ((b, c, d), (full & ~along_ad) | (vb & vc & vd & ~va)),
    )
    return np.concatenate([np.column_stack(corners)[use] for corners, use in candidates])


def depth_image_mesh(depth: np.ndarray, mask: np.ndarray, camera: OrthographicCamera,
                     max_jump_mm: Optional[float] = None,
                     colors: Optional[np.ndarray] = None) -> tuple:
    """Triangulate a depth image in the model's metric frame.

    ``depth`` (H, W) view depth in mm (``camera``'s z, growing away from the
    viewer, as :meth:`dce.geom.dce.DCEImage.physical` gives it), ``mask``
    (H, W) bool valid pixels (non-finite depths count as invalid),
    ``camera`` the image's scaled-orthographic camera. Each valid pixel
    (row i, col j) becomes the vertex ``camera.unproject([(j, i, depth)])``.
    Two triangles join the four pixels of each valid 2x2 block (one triangle
    where exactly three are valid); a triangle whose three depths spread by
    more than ``max_jump_mm`` (default :func:`default_max_jump`: 5 pixel
    pitches) spans a depth discontinuity and is left out. Faces point toward
    the viewer. Valid pixels that end up in no triangle (isolated, or cut
    off by discontinuities) are left out too, so no vertex is unreferenced.

    ``colors`` (H, W, 3) in [0, 1], optional, become the vertex colours.

    Returns ``(mesh, pixels)``: a :class:`~dce.geom.io.Mesh` and ``pixels``
    (n, 2) int64, the (row, col) of each vertex.
    """
    depth = np.asarray(depth, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if depth.ndim != 2 or mask.shape != depth.shape:
        raise ValueError(f"depth_image_mesh: need depth (H, W) and mask of the same shape, got "
                         f"{depth.shape} and {mask.shape}")
    if colors is not None and np.shape(colors) != depth.shape + (3,):
        raise ValueError(f"depth_image_mesh: colors must be {depth.shape + (3,)}, got "
                         f"{np.shape(colors)}")
    jump = default_max_jump(camera) if max_jump_mm is None else float(max_jump_mm)
    if not jump > 0:
        raise ValueError(f"depth_image_mesh: max_jump_mm must be > 0, got {max_jump_mm}")
    valid = mask & np.isfinite(depth)
    T = _grid_triangles(valid, depth)
    flat = depth.ravel()
    T = T[np.ptp(flat[T], axis=1) <= jump]
    used = np.unique(T)
    remap = np.zeros(depth.size, dtype=np.int64)
    remap[used] = np.arange(len(used))
    rows, cols = np.divmod(used, depth.shape[1])
    V = camera.unproject(np.column_stack([cols, rows, flat[used]]))
    C = None if colors is None else np.asarray(colors, dtype=np.float64)[rows, cols]
    return Mesh(V, remap[T], C), np.column_stack([rows, cols])


def _compact(V: np.ndarray, F: np.ndarray) -> tuple:
    """(V', F', old): the vertices F references, F renumbered, and the old
    index of each kept vertex."""
    old, inverse = np.unique(F, return_inverse=True)
    return V[old], inverse.reshape(F.shape), old


def merge_with_coarse(refined: Mesh, region: np.ndarray, coarse: Mesh,
                      camera: OrthographicCamera,
                      max_jump_mm: Optional[float] = None) -> tuple:
    """Replace the part of ``coarse`` that the refined grid covers.

    ``refined``: the grid mesh of :func:`depth_image_mesh`; ``region`` (H, W)
    bool, the pixels that are its vertices (``pixels`` of that function);
    ``coarse``: the coarse mesh in the same model frame (mm); ``camera``: the
    depth image's camera. A coarse vertex is *covered* when its projection
    lies in a (closed) 2x2 block of pixel centres that are all in ``region``
    (so it lies over the grid) and it is visible: not more than
    ``max_jump_mm`` (default :func:`default_max_jump`) behind the coarse
    mesh's own z-buffer at its nearest pixel. A coarse face is replaced when
    it faces the viewer and its three vertices are covered; every other face
    (back faces, faces outside the image or the region, occluded ones, faces
    straddling the region's border) is kept. The kept coarse faces and the
    grid are not stitched: along the region's border they overlap by about a
    pixel and one ring of coarse faces, so that the union has no gap there
    (for coarse faces no bigger than a pixel block; a large coarse face over
    a notch of the region can leave a hole).

    Returns ``(mesh, kept)``: one :class:`~dce.geom.io.Mesh` (the kept coarse
    faces first, then the grid; no unreferenced vertices; colours only when
    both inputs have them, no uv) and ``kept`` (m,) bool over ``coarse``'s
    faces.
    """
    region = np.asarray(region, dtype=bool)
    if region.ndim != 2:
        raise ValueError(f"merge_with_coarse: region must be (H, W), got {region.shape}")
    H, W = region.shape
    jump = default_max_jump(camera) if max_jump_mm is None else float(max_jump_mm)
    P = camera.project(coarse.vertices)
    zeros = np.zeros((len(P), 1), dtype=np.float32)
    _, _, zbuffer = rasterize(P, coarse.faces, zeros, H, W, return_depth=True)
    # A vertex lies over the grid when it is in a closed 2x2 block of region
    # pixel centres (not in the half-pixel margin between the grid's border
    # and the region's pixel edges). A point on a block's edge or corner is
    # in each block that touches it: look a hair to each side.
    block = region[:-1, :-1] & region[:-1, 1:] & region[1:, :-1] & region[1:, 1:]
    over = np.zeros(len(P), dtype=bool)
    for dx, dy in ((-1e-6, -1e-6), (-1e-6, 1e-6), (1e-6, -1e-6), (1e-6, 1e-6)):
        j, i = np.floor(P[:, 0] + dx), np.floor(P[:, 1] + dy)
        ok = (j >= 0) & (j < W - 1) & (i >= 0) & (i < H - 1)
        i, j = np.where(ok, i, 0).astype(np.int64), np.where(ok, j, 0).astype(np.int64)
        over |= ok & block[i, j]
    i = np.clip(np.rint(P[:, 1]), 0, H - 1).astype(np.int64)
    j = np.clip(np.rint(P[:, 0]), 0, W - 1).astype(np.int64)
    covered = over & (P[:, 2] <= zbuffer[i, j] + jump)
    facing = face_normals(coarse.vertices, coarse.faces) @ camera.view_direction > 0
    kept = ~(facing & covered[coarse.faces].all(axis=1))

    V_c, F_c, old = _compact(coarse.vertices, coarse.faces[kept])
    V = np.concatenate([V_c, refined.vertices])
    F = np.concatenate([F_c, refined.faces.astype(np.int64) + len(V_c)])
    colors = None
    if coarse.colors is not None and refined.colors is not None:
        colors = np.concatenate([coarse.colors[old], refined.colors])
    return Mesh(V, F, colors), kept
