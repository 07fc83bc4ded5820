"""From a (refined) depth image back to a triangle mesh in the model's frame:
``camera.unproject`` turns each valid pixel into a vertex on the rendered
surface; :func:`depth_image_mesh` connects them as a grid,
:func:`merge_with_coarse` puts the grid into a coarse mesh, and
:func:`displace_along_view` instead moves the coarse mesh's own vertices
along their view rays.

See docs/geometry.md (triangulation, merging, kept topology, orientation).
"""
from __future__ import annotations

import numpy as np

from .normals import face_normals, vertex_normals
from .projection import OrthographicCamera
from .raster import rasterize
from .records import Mesh

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
                     max_jump_mm: float | None = None,
                     colors: np.ndarray | None = None) -> tuple:
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
                      max_jump_mm: float | None = None) -> tuple:
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
    covered = over & _visible(P, coarse.faces, (H, W), jump)
    facing = face_normals(coarse.vertices, coarse.faces) @ camera.view_direction > 0
    kept = ~(facing & covered[coarse.faces].all(axis=1))

    V_c, F_c, old = _compact(coarse.vertices, coarse.faces[kept])
    V = np.concatenate([V_c, refined.vertices])
    F = np.concatenate([F_c, refined.faces.astype(np.int64) + len(V_c)])
    colors = None
    if coarse.colors is not None and refined.colors is not None:
        colors = np.concatenate([coarse.colors[old], refined.colors])
    return Mesh(V, F, colors), kept


# ------------------------------------------------------------ keep the topology

# Default width of the band over which a moved vertex's displacement fades to
# zero toward the vertices that stay (hidden ones, those outside the image),
# in pixel pitches: about the footprint of the image's bilinear sampling,
# so the mesh never folds at the border of what the image saw.
DEFAULT_BLEND_PITCHES = 3.0


def _bilinear_valid(image: np.ndarray, valid: np.ndarray, xy: np.ndarray) -> tuple:
    """(values (n,), ok (n,) bool): ``image`` (H, W) sampled bilinearly at
    ``xy`` (n, 2) = (x column, y row), pixel centres at integers; ok where the
    point lies in the image and the four pixels around it are all valid."""
    H, W = valid.shape
    x, y = xy[:, 0], xy[:, 1]
    inside = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
    # The last row/column starts no cell: a point on it is the far edge of the cell before.
    x0 = np.clip(np.floor(np.where(inside, x, 0)), 0, max(W - 2, 0)).astype(np.int64)
    y0 = np.clip(np.floor(np.where(inside, y, 0)), 0, max(H - 2, 0)).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    ok = inside & valid[y0, x0] & valid[y0, x1] & valid[y1, x0] & valid[y1, x1]
    z = np.where(valid, image, 0.0)
    fx, fy = np.where(ok, x - x0, 0.0), np.where(ok, y - y0, 0.0)
    top = z[y0, x0] * (1 - fx) + z[y0, x1] * fx
    bottom = z[y1, x0] * (1 - fx) + z[y1, x1] * fx
    return np.where(ok, top * (1 - fy) + bottom * fy, 0.0), ok


def _visible(P: np.ndarray, F: np.ndarray, shape: tuple, jump: float) -> np.ndarray:
    """(n,) bool: projected vertices P (n, 3) (x, y px, depth mm) that are
    not more than ``jump`` mm behind the z-buffer of the faces F at their
    nearest pixel (points outside the image are not visible)."""
    H, W = shape
    zeros = np.zeros((len(P), 1), dtype=np.float32)
    _, _, zbuffer = rasterize(P, F, zeros, H, W, return_depth=True)
    i, j = np.rint(P[:, 1]), np.rint(P[:, 0])
    inside = (i >= 0) & (i < H) & (j >= 0) & (j < W)
    i = np.where(inside, i, 0).astype(np.int64)
    j = np.where(inside, j, 0).astype(np.int64)
    return inside & (P[:, 2] <= zbuffer[i, j] + jump)


def _blend_weights(mesh: Mesh, moving: np.ndarray, band: float) -> np.ndarray:
    """(n,) weights in [0, 1]: 0 at vertices that do not move, rising as a
    smoothstep of the shortest path along the mesh's edges (mm) to the
    nearest of them, 1 from ``band`` mm on."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import dijkstra

    fixed = np.flatnonzero(~moving)
    if len(fixed) == 0:
        return np.ones(len(moving))
    E = np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]], mesh.faces[:, [2, 0]]])
    length = np.linalg.norm(mesh.vertices[E[:, 0]] - mesh.vertices[E[:, 1]], axis=1)
    n = mesh.n_vertices
    # dijkstra drops explicit zeros: a zero-length edge (duplicate vertex) still joins.
    graph = coo_matrix((np.maximum(length, 1e-12), (E[:, 0], E[:, 1])), shape=(n, n)).tocsr()
    distance = dijkstra(graph, directed=False, indices=fixed, min_only=True, limit=band)
    t = np.clip(np.nan_to_num(distance / band, posinf=1.0), 0.0, 1.0)
    return np.where(moving, t * t * (3.0 - 2.0 * t), 0.0)


def displace_along_view(mesh: Mesh, correction: np.ndarray, valid: np.ndarray,
                        camera: OrthographicCamera, movable: np.ndarray | None = None,
                        max_jump_mm: float | None = None,
                        blend_mm: float | None = None) -> tuple:
    """Refine ``mesh`` in place of its own vertices: the topology, colours
    and uv stay; only vertex positions change.

    ``correction`` (H, W) mm: the refined minus the coarse depth image
    (``camera``'s depth, growing away from the viewer), defined where
    ``valid`` (H, W) bool. Each vertex that the image sees moves along its
    **view ray** (not its normal: the correction is measured along the ray,
    and moving along it keeps the vertex on its pixel) by the correction
    sampled bilinearly at its projection, so it lands on the refined depth
    surface (up to the coarse image's own sampling of the coarse surface).
    A vertex is seen when it is ``movable`` ((n,) bool, default all: e.g.
    the vertices of the crop that was rendered), its vertex normal faces the
    viewer, it is not more than ``max_jump_mm`` (default
    :func:`default_max_jump`) behind the z-buffer of the movable faces, and
    the four pixels around its projection are valid. Every other vertex
    keeps its place, and the displacement of the moving ones fades to zero
    toward them: weight smoothstep(d / ``blend_mm``), d the shortest path
    along the mesh's edges to a vertex that stays (default ``blend_mm``:
    :data:`DEFAULT_BLEND_PITCHES` pixel pitches). A correction of zero gives
    the input vertices exactly.

    Returns ``(mesh, displacement)``: the moved :class:`~dce.geom.io.Mesh`
    (same faces, colours, uv) and ``displacement`` (n,) mm, the signed move
    of each vertex along ``camera.view_direction`` (positive toward the
    viewer, out of the face).
    """
    correction = np.asarray(correction, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool) & np.isfinite(correction)
    if correction.ndim != 2 or valid.shape != correction.shape:
        raise ValueError(f"displace_along_view: need correction (H, W) and valid of the same "
                         f"shape, got {correction.shape} and {np.shape(valid)}")
    n = mesh.n_vertices
    movable = np.ones(n, dtype=bool) if movable is None else np.asarray(movable, dtype=bool)
    if movable.shape != (n,):
        raise ValueError(f"displace_along_view: movable must be ({n},), got {movable.shape}")
    jump = default_max_jump(camera) if max_jump_mm is None else float(max_jump_mm)
    band = DEFAULT_BLEND_PITCHES / camera.scale if blend_mm is None else float(blend_mm)
    if not (jump > 0 and band > 0):
        raise ValueError(f"displace_along_view: max_jump_mm and blend_mm must be > 0, got "
                         f"{max_jump_mm} and {blend_mm}")
    P = camera.project(mesh.vertices)
    F = mesh.faces[movable[mesh.faces].all(axis=1)]
    delta, sampled = _bilinear_valid(correction, valid, P[:, :2])
    facing = vertex_normals(mesh.vertices, mesh.faces) @ camera.view_direction > 0
    moving = movable & sampled & facing & _visible(P, F, valid.shape, jump)
    step = _blend_weights(mesh, moving, band) * delta  # mm of depth (away from the viewer)
    V = mesh.vertices + step[:, None] * camera.rotation[2]
    moved = Mesh(V, mesh.faces, mesh.colors, mesh.uv)
    return moved, -step


def move_with_surface(points: np.ndarray, before: Mesh, after: np.ndarray) -> np.ndarray:
    """Points (k, 3) on or near the mesh ``before`` carried along when its
    vertices move to ``after`` (n, 3) (same faces): each point keeps its
    barycentric place in its nearest triangle and its offset from it. A
    point at a vertex moves exactly as that vertex."""
    import igl

    P = np.ascontiguousarray(points, dtype=np.float64)
    F = np.ascontiguousarray(before.faces, dtype=np.int64)
    _, face, closest = igl.point_mesh_squared_distance(P, before.vertices, F)
    corners = before.vertices[F[face]]
    bary = igl.barycentric_coordinates(closest, *(np.ascontiguousarray(corners[:, k])
                                                  for k in range(3)))
    shift = np.einsum("kc,kcd->kd", bary, after[F[face]] - corners)
    return P + shift
