"""Face cropping of ground-truth scans (paper section 5.2): a vertex is kept
when it lies inside both the sphere around the nose tip and the facial
contour through the jaw landmarks.

See docs/geometry.md (face frame, contour, margins, radius).
"""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

JAW = np.arange(0, 17)
BROWS = np.arange(17, 27)
CHIN = 8
NOSE_TIP = 30


def _check_landmarks(landmarks) -> np.ndarray:
    L = getattr(landmarks, "points", landmarks)
    try:
        L = np.asarray(L, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"landmarks: not a numeric array ({exc})") from None
    if L.shape != (68, 3):
        raise ValueError(
            f"landmarks: expected (68, 3) 3D points in iBUG-68 order, got shape {L.shape}")
    bad = ~np.isfinite(L).all(axis=1)
    if bad.any():
        raise ValueError(
            f"landmarks: {bad.sum()} points are NaN or infinite (indices "
            f"{np.flatnonzero(bad)[:10].tolist()})")
    return L


def face_frame(landmarks) -> tuple[np.ndarray, np.ndarray]:
    """The frontal frame of a face from its (68, 3) iBUG landmarks (mm).

    Returns ``(origin, R)``: ``origin`` (3,) is the nose tip (landmark 30) and
    ``R`` (3, 3) a rotation whose rows are the frame axes ``x`` (toward the
    subject's left), ``y`` (up, chin to brows) and ``z`` (normal of the
    landmarks' plane, toward the nose tip side). Face coordinates of points
    ``P`` (n, 3) are ``(P - origin) @ R.T``.
    """
    L = _check_landmarks(landmarks)
    centred = L - L.mean(axis=0)
    z = np.linalg.svd(centred, full_matrices=False)[2][2]
    if np.dot(L[NOSE_TIP] - L.mean(axis=0), z) < 0:
        z = -z
    up = L[BROWS].mean(axis=0) - L[CHIN]
    y = up - np.dot(up, z) * z
    norm = np.linalg.norm(y)
    if norm < 1e-6 * max(np.linalg.norm(up), 1e-12):
        raise ValueError("landmarks: the chin-to-brow direction is parallel to the "
                         "landmarks' plane normal; the landmarks are degenerate")
    y /= norm
    x = np.cross(y, z)
    return L[NOSE_TIP].copy(), np.stack([x, y, z])


def face_contour(landmarks, forehead_mm: float = 50.0) -> np.ndarray:
    """The closed facial contour (29, 2) in the face frame's ``(x, y)`` plane
    (mm, see :func:`face_frame`): jaw landmarks 0..16, brow tail 26, the brow
    landmarks 26..17 raised by ``forehead_mm`` along ``y``, brow tail 17. The
    last vertex connects back to the first."""
    origin, R = face_frame(landmarks)
    L = (_check_landmarks(landmarks) - origin) @ R.T
    top = L[BROWS[::-1], :2] + np.array([0.0, forehead_mm])
    return np.concatenate([L[JAW, :2], L[[26], :2], top, L[[17], :2]])


def points_in_polygon(P: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(n,) bool: which 2D points ``P`` (n, 2) lie inside the closed
    ``polygon`` (k, 2) by the even-odd (crossing number) rule."""
    P = np.asarray(P, dtype=np.float64)
    a = np.asarray(polygon, dtype=np.float64)
    b = np.roll(a, -1, axis=0)
    px, py = P[:, :1], P[:, 1:2]
    # An edge crosses the horizontal ray to +x when it straddles py (half-open
    # in y so a vertex on the ray counts once) and the crossing lies right of px.
    straddle = (a[:, 1] > py) != (b[:, 1] > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (py - a[:, 1]) / (b[:, 1] - a[:, 1])
    x_cross = a[:, 0] + t * (b[:, 0] - a[:, 0])
    return (straddle & (px < x_cross)).sum(axis=1) % 2 == 1


def distance_to_polygon(P: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(n,) Euclidean distance of 2D points ``P`` (n, 2) to the boundary of
    the closed ``polygon`` (k, 2)."""
    P = np.asarray(P, dtype=np.float64)[:, None, :]
    a = np.asarray(polygon, dtype=np.float64)
    e = np.roll(a, -1, axis=0) - a
    length2 = np.maximum((e * e).sum(axis=1), 1e-300)
    t = np.clip(((P - a) * e).sum(axis=2) / length2, 0.0, 1.0)
    closest = a + t[..., None] * e
    return np.sqrt(((P - closest) ** 2).sum(axis=2)).min(axis=1)


def largest_component(F: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Restrict the vertex mask ``keep`` (n,) to the largest connected
    component (most vertices) of the faces ``F`` (m, 3) whose three vertices are
    all kept. Vertices in no kept face are dropped."""
    keep = np.asarray(keep, dtype=bool)
    F = np.asarray(F, dtype=np.int64)
    faces = F[keep[F].all(axis=1)]
    n = len(keep)
    if len(faces) == 0:
        return np.zeros(n, dtype=bool)
    rows = faces.ravel()
    cols = np.roll(faces, -1, axis=1).ravel()
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    used = np.zeros(n, dtype=bool)
    used[faces.ravel()] = True
    biggest = np.argmax(np.bincount(label[used]))
    return used & (label == biggest)


def crop_face(V: np.ndarray, F: np.ndarray, landmarks, radius: float = 125.0,
              margin_mm: float = 5.0, forehead_mm: float = 50.0,
              depth_margin_mm: float | None = 10.0,
              nose_snap_mm: float | None = None, max_gap_mm: float = 10.0,
              largest: bool = True) -> np.ndarray:
    """Mask (n,) bool of the vertices of the face region (paper section 5.2).

    ``V`` (n, 3) vertices in mm, ``F`` (m, 3) triangles, ``landmarks`` (68, 3)
    iBUG-68 points on the scan in the same frame (an object with ``.points``
    is accepted). A vertex is kept when it is within ``radius`` of the nose
    tip, its projection onto the face's frontal plane is inside the jaw contour
    closed over the forehead (:func:`face_contour`) grown by ``margin_mm``, and
    it is at most ``depth_margin_mm`` behind the deepest jaw landmark along the
    face normal (``None``: no depth limit). See the module docstring for the
    design and the defaults.

    ``nose_snap_mm``: if given, the sphere is centred on the most prominent
    vertex (largest coordinate along the face normal) within that distance of
    landmark 30, instead of on landmark 30 itself. ``largest``: keep only the
    largest connected component of the kept faces (drops hair fragments and
    islands). ``max_gap_mm``: a ValueError is raised when the nose tip is
    farther than this from every vertex (landmarks in another frame or unit).
    """
    V = np.asarray(V, dtype=np.float64)
    if V.ndim != 2 or V.shape[1] != 3 or len(V) == 0:
        raise ValueError(f"V: expected (n, 3) vertices with n > 0, got shape {V.shape}")
    F = np.asarray(F)
    if F.ndim != 2 or F.shape[1] != 3:
        raise ValueError(f"F: expected (m, 3) triangles, got shape {F.shape}")
    if len(F) and (F.min() < 0 or F.max() >= len(V)):
        raise ValueError(f"F: indices span [{F.min()}, {F.max()}] but V has {len(V)} vertices")
    if radius <= 0 or margin_mm < 0:
        raise ValueError(f"radius must be > 0 and margin_mm >= 0, got {radius}, {margin_mm}")
    L = _check_landmarks(landmarks)
    origin, R = face_frame(L)
    dist2 = ((V - origin) ** 2).sum(axis=1)
    gap = np.sqrt(dist2.min())
    if gap > max_gap_mm:
        raise ValueError(
            f"landmarks: the nose tip (landmark 30) is {gap:.1f} mm from the nearest "
            f"vertex (limit max_gap_mm={max_gap_mm}); the landmarks do not lie on this "
            "scan (another frame or unit?)")
    centre = origin
    if nose_snap_mm is not None:
        near = np.flatnonzero(dist2 <= nose_snap_mm ** 2)
        if len(near):
            centre = V[near[np.argmax(V[near] @ R[2])]]

    keep = ((V - centre) ** 2).sum(axis=1) <= radius * radius
    local = (V[keep] - origin) @ R.T
    candidate = np.ones(len(local), dtype=bool)
    if depth_margin_mm is not None:
        deepest = ((L[JAW] - origin) @ R[2]).min()
        candidate = local[:, 2] >= deepest - depth_margin_mm
    polygon = face_contour(L, forehead_mm)
    # only points in the polygon's bounding box grown by the margin can be in
    candidate &= np.all((local[:, :2] >= polygon.min(axis=0) - margin_mm)
                        & (local[:, :2] <= polygon.max(axis=0) + margin_mm), axis=1)
    inside = np.zeros(len(local), dtype=bool)
    inside[candidate] = points_in_polygon(local[candidate, :2], polygon)
    near = candidate & ~inside
    if margin_mm > 0 and near.any():
        inside[near] = distance_to_polygon(local[near, :2], polygon) <= margin_mm
    keep[keep] = inside
    return largest_component(F, keep) if largest else keep


def crop_mesh(mesh, landmarks, **kwargs):
    """The face region of ``mesh`` (:class:`dce.geom.io.Mesh`) as a new Mesh,
    via :func:`crop_face` (same keyword arguments) and ``Mesh.submesh``; its
    ``vertex_index`` maps the kept vertices to the input's."""
    return mesh.submesh(crop_face(mesh.vertices, mesh.faces, landmarks, **kwargs))
