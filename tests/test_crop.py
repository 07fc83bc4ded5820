"""Face cropping: an analytic head checked against an independently computed
mask, and the two real scans checked against facts about their anatomy."""
import numpy as np
import pytest
from PIL import Image

from dce.geom.crop import crop_face, crop_mesh, face_contour, face_frame
from dce.geom.io import Mesh, load_mesh, read_landmarks

# --- an analytic head --------------------------------------------------------

A, B, C = 75.0, 110.0, 90.0   # half-axes of the head ellipsoid (x, y, z), mm
LANDMARK_Z = 40.0              # all landmarks but the nose tip lie on this plane


def synthetic_landmarks() -> np.ndarray:
    """(68, 3) iBUG-ordered points, symmetric in x, on the plane z = 40 except
    the nose tip, which sits on the ellipsoid at the landmarks' mean height so
    that the face frame is exactly the model frame."""
    s = np.linspace(-np.pi / 2, np.pi / 2, 17)
    jaw = np.column_stack([62 * np.sin(s), 5 - 90 * np.cos(s)])
    brow_r = np.array([[-52, 30], [-42, 34], [-32, 36], [-22, 35], [-12, 33]], float)
    brow_l = brow_r[::-1] * [-1, 1]
    bridge = np.array([[0, 25], [0, 15], [0, 5]], float)
    nostrils = np.column_stack([np.linspace(-10, 10, 5), np.full(5, -12.0)])
    t = np.linspace(np.pi, -np.pi, 6, endpoint=False)
    eye_r = np.column_stack([-32 + 10 * np.cos(t), 18 + 4 * np.sin(t)])
    eye_l = eye_r[::-1] * [-1, 1]
    t12 = np.linspace(np.pi, -np.pi, 12, endpoint=False)
    t8 = np.linspace(np.pi, -np.pi, 8, endpoint=False)
    mouth = np.vstack([np.column_stack([25 * np.cos(t12), -45 + 10 * np.sin(t12)]),
                       np.column_stack([18 * np.cos(t8), -45 + 4 * np.sin(t8)])])
    xy = np.vstack([jaw, brow_r, brow_l, bridge, [[0, 0]], nostrils, eye_r, eye_l, mouth])
    assert len(xy) == 68
    xy[30, 1] = np.delete(xy[:, 1], 30).mean()
    L = np.column_stack([xy, np.full(68, LANDMARK_Z)])
    L[30, 2] = C * np.sqrt(1 - (xy[30, 1] / B) ** 2)
    return L


def grid_sheet(x0, x1, y0, y1, step, height, rng):
    """A jittered grid triangulated into a sheet; ``height(x, y)`` gives z."""
    xs, ys = np.arange(x0, x1, step), np.arange(y0, y1, step)
    gx, gy = np.meshgrid(xs, ys)
    xy = np.column_stack([gx.ravel(), gy.ravel()]) + rng.uniform(-0.3, 0.3, (gx.size, 2)) * step
    idx = np.arange(gx.size).reshape(gx.shape)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, :-1].ravel(), idx[1:, 1:].ravel()
    F = np.concatenate([np.column_stack([a, b, d]), np.column_stack([a, d, c])])
    return np.column_stack([xy, height(xy[:, 0], xy[:, 1])]), F


def ellipsoid_z(x, y, sign=1.0):
    return sign * C * np.sqrt(np.clip(1 - (x / A) ** 2 - (y / B) ** 2, 0.0, None))


def synthetic_head():
    """Front and back of an ellipsoidal head, two ear flaps, a neck cylinder and
    a small floating fragment in front of the forehead. Returns V, F and a
    dict of vertex masks per part."""
    rng = np.random.default_rng(3)
    parts = []
    inside = lambda V: (V[:, 0] / A) ** 2 + (V[:, 1] / B) ** 2 < 0.97
    front, Ff = grid_sheet(-A, A, -B, B, 2.0, ellipsoid_z, rng)
    parts.append(("face", front, Ff, inside(front)))
    back, Fb = grid_sheet(-A, A, -B, B, 3.0, lambda x, y: ellipsoid_z(x, y, -1.0), rng)
    parts.append(("back", back, Fb[:, ::-1], inside(back)))
    for side in (-1, 1):
        ear, Fe = grid_sheet(A - 8, A + 18, -25, 25, 2.0, lambda x, y: -5.0 + 0 * x, rng)
        ear[:, 0] *= side
        parts.append(("ear", ear, Fe, np.ones(len(ear), bool)))
    t, h = np.meshgrid(np.linspace(0, 2 * np.pi, 60, endpoint=False),
                       np.arange(-200.0, -96.0, 3.0))
    neck = np.column_stack([45 * np.cos(t.ravel()), h.ravel(), 45 * np.sin(t.ravel())])
    idx = np.arange(t.size).reshape(t.shape)
    nxt = np.roll(idx, -1, axis=1)
    Fn = np.concatenate([np.column_stack([idx[:-1].ravel(), nxt[:-1].ravel(), nxt[1:].ravel()]),
                         np.column_stack([idx[:-1].ravel(), nxt[1:].ravel(), idx[1:].ravel()])])
    parts.append(("neck", neck, Fn, np.ones(len(neck), bool)))
    frag, Fr = grid_sheet(-6, 6, 55, 65, 2.0, lambda x, y: 80.0 + 0 * x, rng)
    parts.append(("fragment", frag, Fr, np.ones(len(frag), bool)))

    Vs, Fs, labels, offset = [], [], [], 0
    for name, V, F, use in parts:
        # drop the steep rim of the ellipsoid sheets (and the faces touching it)
        remap = np.cumsum(use) - 1
        F = F[use[F].all(axis=1)]
        Vs.append(V[use])
        Fs.append(remap[F] + offset)
        labels += [name] * int(use.sum())
        offset += int(use.sum())
    labels = np.array(labels)
    return np.vstack(Vs), np.vstack(Fs), {n: labels == n for n in set(labels)}


def winding_number(P: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Winding number of the closed polygon around each 2D point, by summing
    the signed angles subtended by its edges (a different method from the
    module's crossing count)."""
    a = poly[None, :, :] - P[:, None, :]
    b = np.roll(poly, -1, axis=0)[None, :, :] - P[:, None, :]
    angle = np.arctan2(a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0], (a * b).sum(axis=2))
    return np.rint(angle.sum(axis=1) / (2 * np.pi)).astype(int)


def segment_distance(P: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Distance of 2D points to the polygon boundary, edge by edge in complex
    arithmetic."""
    z = (P[:, 0] + 1j * P[:, 1])[:, None]
    a = (poly[:, 0] + 1j * poly[:, 1])[None, :]
    b = np.roll(a, -1, axis=1)
    t = np.clip(((z - a) / (b - a)).real, 0, 1)
    return np.abs(z - (a + t * (b - a))).min(axis=1)


def expected_mask(V, L, radius, margin, forehead, depth_margin, centre=None):
    """The crop's definition, evaluated independently. The synthetic face frame
    is the model frame with its origin at the nose tip (see synthetic_landmarks).
    ``centre``: the sphere's centre when it is not the nose tip."""
    nose = L[30]
    P = V - nose
    Lp = L - nose
    poly = np.vstack([Lp[0:17, :2], Lp[26, :2], Lp[26:16:-1, :2] + [0, forehead], Lp[17, :2]])
    centre = nose if centre is None else centre
    in_sphere = np.linalg.norm(V - centre, axis=1) <= radius
    in_contour = ((winding_number(P[:, :2], poly) != 0)
                  | (segment_distance(P[:, :2], poly) <= margin))
    in_front = np.ones(len(V), bool) if depth_margin is None else \
        P[:, 2] >= Lp[:17, 2].min() - depth_margin
    return in_sphere & in_contour & in_front


@pytest.fixture(scope="module")
def head():
    V, F, parts = synthetic_head()
    return V, F, parts, synthetic_landmarks()


def test_face_frame_of_the_synthetic_landmarks_is_the_model_frame(head):
    *_, L = head
    origin, R = face_frame(L)
    assert np.array_equal(origin, L[30])
    assert np.allclose(R, np.eye(3), atol=1e-12)


def test_face_frame_follows_a_rigid_motion(head):
    *_, L = head
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    Q *= np.sign(np.linalg.det(Q))
    t = np.array([10.0, -250.0, 1000.0])
    origin, R = face_frame(L @ Q.T + t)
    assert np.allclose(origin, Q @ L[30] + t)
    assert np.allclose(R, Q.T, atol=1e-9)  # rows: the model axes, rotated


@pytest.mark.parametrize("kw", [
    dict(),
    dict(radius=80.0, margin_mm=0.0),
    dict(radius=200.0, forehead_mm=20.0, depth_margin_mm=None),
    dict(margin_mm=15.0, depth_margin_mm=30.0),
])
def test_synthetic_head_matches_the_independent_mask(head, kw):
    V, F, parts, L = head
    defaults = dict(radius=125.0, margin_mm=5.0, forehead_mm=50.0, depth_margin_mm=10.0)
    p = {**defaults, **kw}
    expected = expected_mask(V, L, p["radius"], p["margin_mm"], p["forehead_mm"],
                             p["depth_margin_mm"])
    keep = crop_face(V, F, L, largest=False, **kw)
    assert keep.sum() == expected.sum() > 500
    assert np.array_equal(keep, expected)


def test_synthetic_head_keeps_the_face_and_removes_the_rest(head):
    V, F, parts, L = head
    keep = crop_face(V, F, L)
    assert not keep[parts["ear"]].any()
    assert not keep[parts["neck"]].any()
    assert not keep[parts["back"]].any()
    assert not keep[parts["fragment"]].any()  # inside the region, but an island
    assert crop_face(V, F, L, largest=False)[parts["fragment"]].all()
    # the face well inside the contour and the sphere is kept whole
    P = V - L[30]
    core = parts["face"] & (np.abs(P[:, 0]) < 30) & (P[:, 1] > -45) & (P[:, 1] < 80)
    assert core.sum() > 800 and keep[core].all()


def test_crop_is_rotation_invariant(head):
    V, F, _, L = head
    Q, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))
    Q *= np.sign(np.linalg.det(Q))
    assert np.array_equal(crop_face(V @ Q.T, F, L @ Q.T), crop_face(V, F, L))


def test_nose_snap_moves_the_sphere_to_the_most_prominent_vertex(head):
    V, F, parts, L = head
    # landmark 30 sits 18 mm below the ellipsoid's apex (0, 0, C), the most
    # prominent point along the face normal (+z here)
    apex = np.argmax(np.where(parts["face"], V[:, 2], -np.inf))
    assert np.linalg.norm(V[apex] - [0, 0, C]) < 2.0
    keep = crop_face(V, F, L, radius=60.0, nose_snap_mm=25.0, largest=False)
    expected = expected_mask(V, L, 60.0, 5.0, 50.0, 10.0, centre=V[apex])
    assert np.array_equal(keep, expected)
    assert not np.array_equal(keep, crop_face(V, F, L, radius=60.0, largest=False))


def test_crop_mesh_builds_the_submesh(head):
    V, F, parts, L = head
    colors = np.tile(np.linspace(0, 1, len(V))[:, None], (1, 3)).astype(np.float32)
    mesh = Mesh(V, F, colors)
    sub = crop_mesh(mesh, L)
    keep = crop_face(V, F, L)
    assert np.array_equal(sub.vertex_index, np.flatnonzero(keep))
    assert np.array_equal(sub.vertices, V[keep])
    assert np.array_equal(sub.colors, colors[keep])
    assert np.array_equal(sub.vertex_index[sub.faces], F[keep[F].all(axis=1)])


def test_face_contour_is_closed_over_the_forehead(head):
    *_, L = head
    poly = face_contour(L, forehead_mm=30.0)
    assert poly.shape == (29, 2)
    local = L - L[30]
    assert np.allclose(poly[:17], local[:17, :2])
    assert np.allclose(poly[18:28], local[26:16:-1, :2] + [0, 30.0])


def test_bad_landmarks_are_named(head):
    V, F, _, L = head
    with pytest.raises(ValueError, match=r"landmarks.*\(68, 3\)"):
        crop_face(V, F, L[:, :2])
    with pytest.raises(ValueError, match=r"landmarks.*\(68, 3\)"):
        crop_face(V, F, L[:60])
    bad = L.copy()
    bad[12, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        crop_face(V, F, bad)
    with pytest.raises(ValueError, match=r"nose tip.*\d+\.\d mm"):
        crop_face(V, F, L + [0, 0, 500.0])
    with pytest.raises(ValueError, match="V"):
        crop_face(V[:, :2], F, L)


# --- real scans --------------------------------------------------------------

def splat(V, F, keep, landmarks, mm_per_px=0.5, view_radius=170.0, seed=0):
    """Frontal (from +Z) and side (from +X, the subject's left) orthographic
    views of the surface within ``view_radius`` of the nose tip: random points
    on the triangles, a z-buffer per pixel, Lambert-shaded; kept faces green,
    removed red, landmarks blue."""
    rng = np.random.default_rng(seed)
    F = F[(np.linalg.norm(V - landmarks[30], axis=1) < view_radius)[F].all(axis=1)]
    a, b, c = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    n = np.cross(b - a, c - a)
    area = 0.5 * np.linalg.norm(n, axis=1)
    n /= np.maximum(2 * area, 1e-12)[:, None]
    fi = np.repeat(np.arange(len(F)), rng.poisson(area * 3 / mm_per_px ** 2) + 1)
    r1, r2 = np.sqrt(rng.random(len(fi))), rng.random(len(fi))
    P = (1 - r1)[:, None] * a[fi] + (r1 * (1 - r2))[:, None] * b[fi] + (r1 * r2)[:, None] * c[fi]
    kept = keep[F].all(axis=1)[fi]
    panels = []
    for right, toward in ((np.array([1.0, 0, 0]), np.array([0, 0, 1.0])),
                          (np.array([0, 0, -1.0]), np.array([1.0, 0, 0]))):
        u, v, depth = P @ right, -P[:, 1], -(P @ toward)   # nearest = smallest depth
        lu, lv = landmarks @ right, -landmarks[:, 1]
        u0, v0 = u.min(), v.min()
        Wd, Hd = int((u.max() - u0) / mm_per_px) + 1, int((v.max() - v0) / mm_per_px) + 1
        pix = ((v - v0) / mm_per_px).astype(int) * Wd + ((u - u0) / mm_per_px).astype(int)
        order = np.lexsort((depth, pix))
        first = order[np.r_[True, pix[order][1:] != pix[order][:-1]]]
        shade = 0.25 + 0.75 * np.abs(n[fi[first]] @ toward)
        colour = np.where(kept[first, None], [0.35, 0.8, 0.35], [0.85, 0.3, 0.25])
        img = np.ones((Hd * Wd, 3))
        img[pix[first]] = colour * shade[:, None]
        img = img.reshape(Hd, Wd, 3)
        for x, y in zip(((lu - u0) / mm_per_px).astype(int), ((lv - v0) / mm_per_px).astype(int)):
            img[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = [0.1, 0.1, 0.9]
        panels.append(img)
    h = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, h - p.shape[0]), (0, 6), (0, 0)), constant_values=1.0)
              for p in panels]
    return Image.fromarray((np.hstack(panels) * 255).astype(np.uint8))


def nearest_vertex(V, points):
    return np.array([np.argmin(((V - p) ** 2).sum(axis=1)) for p in points])


@pytest.mark.realdata
def test_crop_james(shared_data, artifacts_dir):
    folder = shared_data / "menpo-james"
    mesh = load_mesh(folder / "james.ply")
    L = read_landmarks(folder / "james_landmarks_68.txt", expected=68).points
    keep = crop_face(mesh.vertices, mesh.faces, L)
    splat(mesh.vertices, mesh.faces, keep, L).save(artifacts_dir / "crop_james.png")
    V, K = mesh.vertices, mesh.vertices[keep]
    assert 1200 < keep.sum() < 2600   # of 6393: face only, no hair, collar or neck

    # model frame +Y up, +Z forward; the head is turned by ~6 degrees only
    jaw = L[:17]
    assert K[:, 0].min() > jaw[:, 0].min() - 5 and K[:, 0].max() < jaw[:, 0].max() + 5
    assert K[:, 1].min() > L[8, 1] - 10            # nothing below the chin: neck, collar
    assert K[:, 2].min() > jaw[:, 2].min() - 10    # nothing behind the ears
    # hair: dark vertices above the brows are removed (the skin there is lighter)
    lum = mesh.colors @ np.array([0.299, 0.587, 0.114])
    hair = (lum < 0.2) & (V[:, 1] > L[17:27, 1].max() + 10)
    assert hair.sum() > 1000 and keep[hair].sum() <= 0.01 * hair.sum()
    # the jaw line and the chin are kept
    assert keep[nearest_vertex(V, jaw[3:14])].all()
    below_chin = np.linalg.norm(V - (L[8] + [0, -3, 0]), axis=1) < 4
    assert below_chin.any() and keep[below_chin].all()
    # one piece: the scan's hair and collar fragments are gone
    sub = crop_mesh(mesh, L)
    assert sub.n_vertices == keep.sum()


@pytest.mark.realdata
def test_crop_lee_perry_smith(shared_data, artifacts_dir):
    folder = shared_data / "lee-perry-smith"
    mesh = load_mesh(folder / "lps_base.ply")
    L = read_landmarks(folder / "lps_landmarks_68.txt", expected=68).points
    keep = crop_face(mesh.vertices, mesh.faces, L)
    splat(mesh.vertices, mesh.faces, keep, L).save(artifacts_dir / "crop_lps.png")
    V, K = mesh.vertices, mesh.vertices[keep]
    assert 3000 < keep.sum() < 5000   # of 8844 in the closed bust

    jaw = L[:17]
    assert K[:, 0].min() > jaw[:, 0].min() - 5 and K[:, 0].max() < jaw[:, 0].max() + 5
    assert K[:, 1].min() > L[8, 1] - 10            # no neck
    # the README places the ears' front edge at z = -50 mm: nothing of them is kept
    assert K[:, 2].min() > -50
    ears = (np.abs(V[:, 0]) > 70) & (V[:, 2] < -45) & (V[:, 1] > -80) & (V[:, 1] < 20)
    assert ears.sum() > 100 and not keep[ears].any()
    # the back of the head and the top of the skull are gone
    assert not keep[V[:, 2] < -60].any()
    assert K[:, 1].max() < L[17:27, 1].max() + 60
    # the jaw line and the chin are kept
    assert keep[nearest_vertex(V, jaw[3:14])].all()
    assert keep[nearest_vertex(V, L[[8, 30, 33, 51, 57]])].all()
