"""Anatomy of the synthetic world's face: the mean face, its 68 landmarks,
and the smooth identity and expression displacement fields, all continuous
functions of the face parameters (u, v).

See docs/synthetic-world.md (model frame, parameterization, fields).
"""
from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline, PchipInterpolator

HEAD_RADIUS = 80.0            # mm: u = HEAD_RADIUS * theta
U_MAX = 125.0                 # mm: theta within +-89.5 deg
V_MIN, V_MAX = -110.0, 115.0  # mm: under the chin .. above the hairline

# ------------------------------------------------------------------ landmarks

# iBUG-68 landmark parameters (u, v) in mm of the mean face, the subject's
# right side (u < 0); the left side mirrors it. Proportions of an adult face:
# eyes 30 mm above the nose tip, mouth 37 mm below, chin 82 mm below.
_RIGHT_UV = {
    0: (-106, 32), 1: (-104, 12), 2: (-100, -8), 3: (-93, -27), 4: (-80, -46),
    5: (-62, -63), 6: (-42, -73), 7: (-21, -79), 8: (0, -81),
    17: (-62, 48), 18: (-52, 55), 19: (-40, 58), 20: (-27, 57.5), 21: (-14, 54),
    27: (0, 33), 28: (0, 22), 29: (0, 11), 30: (0, 0),
    31: (-13, -15), 32: (-6.5, -16.5), 33: (0, -17.5),
    36: (-47, 30), 37: (-40, 34.5), 38: (-29, 35), 39: (-20, 29.5), 40: (-29, 26.5),
    41: (-40, 26.5),
    48: (-25, -38.5), 49: (-16, -32), 50: (-7, -29), 51: (0, -30), 60: (-22, -38),
    61: (-10, -37), 62: (0, -37), 67: (-10, -37.5), 66: (0, -37.5),
    59: (-17, -44.5), 58: (-9, -47.5), 57: (0, -48),
}
# right -> left partner (iBUG numbering mirrors around these)
_MIRROR = {0: 16, 1: 15, 2: 14, 3: 13, 4: 12, 5: 11, 6: 10, 7: 9, 17: 26, 18: 25, 19: 24,
           20: 23, 21: 22, 31: 35, 32: 34, 36: 45, 37: 44, 38: 43, 39: 42, 40: 47, 41: 46,
           48: 54, 49: 53, 50: 52, 60: 64, 61: 63, 67: 65, 59: 55, 58: 56}


def _landmark_table() -> np.ndarray:
    L = np.full((68, 2), np.nan)
    for i, (u, v) in _RIGHT_UV.items():
        L[i] = (u, v)
        if i in _MIRROR:
            L[_MIRROR[i]] = (-u, v)
    return L


#: (68, 2) landmark parameters (u, v), mm, before snapping to the coarse grid.
LANDMARK_UV = _landmark_table()

# ------------------------------------------------------------------ helpers


def _pchip(x, y):
    """Monotone cubic interpolant through the knots (x, y), constant beyond
    the end knots (x in any order)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    order = np.argsort(x)
    x, y = x[order], y[order]
    f = PchipInterpolator(x, y)
    return lambda t: f(np.clip(t, x[0], x[-1]))


def _spline(x, y):
    """Natural cubic spline through the knots (C2: no shading bands), constant
    beyond the end knots."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    f = CubicSpline(x, y, bc_type="natural")
    return lambda t: f(np.clip(t, x[0], x[-1]))


def _g(t):
    """Gaussian exp(-t^2 / 2)."""
    return np.exp(-0.5 * np.square(t))


def _bump(u, v, cu, cv, su, sv):
    """Axis-aligned Gaussian bump; separable, so a grid (u (1, nu), v (nv, 1))
    costs one outer product."""
    return _g((u - cu) / su) * _g((v - cv) / sv)


def _pair(u, v, cu, cv, su, sv):
    """The same bump at (+-cu, cv): a symmetric pair."""
    return _bump(u, v, cu, cv, su, sv) + _bump(u, v, -cu, cv, su, sv)


def _signed_pair(u, v, cu, cv, su, sv):
    """+bump at (+cu, cv), -bump at (-cu, cv): for fields that point outward."""
    return _bump(u, v, cu, cv, su, sv) - _bump(u, v, -cu, cv, su, sv)


def _step(t):
    """Smooth step from 0 (t << 0) to 1 (t >> 0), 0.5 at t = 0."""
    return 0.5 * (1.0 + np.tanh(t))


def _theta(u):
    return np.asarray(u, dtype=np.float64) / HEAD_RADIUS


def _radial(dr, u):
    """Radial displacement dr (...) -> 3D vectors (..., 3)."""
    th = _theta(u)
    dr = np.asarray(dr, dtype=np.float64)
    shape = np.broadcast_shapes(dr.shape, th.shape)
    out = np.zeros(shape + (3,))
    out[..., 0] = dr * np.sin(th)
    out[..., 2] = dr * np.cos(th)
    return out


def _vector(u, v, dx=0.0, dy=0.0, dr=0.0):
    """3D displacement (..., 3) from x and y shifts and a radial one."""
    out = _radial(np.broadcast_to(dr, np.broadcast_shapes(np.shape(u), np.shape(v))), u)
    out[..., 0] += dx
    out[..., 1] += dy
    return out


# ------------------------------------------------------------------ mean face

def _superellipse(th, A, B, p=2.6):
    """Radius (mm) at angle th of the section with half-width A (at 90 deg)
    and front depth B (at 0 deg)."""
    return (np.abs(np.sin(th) / A) ** p + np.abs(np.cos(th) / B) ** p) ** (-1.0 / p)


# v (mm) -> half-width A and front depth B of the head section (no features)
_PROFILE_A = ([-110, -80, -60, -35, 0, 30, 60, 90, 115], [44, 50, 60, 66, 72, 74, 72, 68, 60])
_PROFILE_B = ([-110, -90, -75, -55, -30, 0, 30, 55, 80, 100, 115],
              [58, 70, 79, 80, 80, 79, 77, 78, 75, 68, 60])
# the neck section below the jaw line
_NECK_A, _NECK_B = 52.0, 56.0


def _jaw_line(u):
    """v (mm) of the jaw line at u: through the jaw landmarks 4..12, rising
    toward the ears behind the mandible's angle."""
    L = LANDMARK_UV
    us = np.r_[-U_MAX, -108, L[4:13, 0], 108, U_MAX]
    vs = np.r_[5, -20, L[4:13, 1] - 5.0, -20, 5]
    return _pchip(us, vs)(u)


def mean_radius(u, v) -> np.ndarray:
    """Radius r(u, v) (mm) of the mean face before its radial features:
    the head section blended into the neck below the jaw line."""
    th = _theta(u)
    A = _spline(*_PROFILE_A)(v)
    B = _spline(*_PROFILE_B)(v)
    face = _superellipse(th, A, B)
    neck = _superellipse(th, _NECK_A, _NECK_B)
    J = _step((v - _jaw_line(u)) / 5.0)
    return neck + (face - neck) * J


def _nose(u, v):
    """Radial height (mm) of the nose above the face: dorsum, tip, columella."""
    H = _pchip([42, 33, 22, 11, 4, 0, -5, -10, -14, -18, -22],
               [0, 3.0, 8, 14.5, 19.5, 21, 19, 13.5, 7, 2, 0])(v)
    W = _pchip([42, 33, 15, 3, -2, -8, -14, -22], [8, 8, 9, 11, 11.5, 10, 8, 7])(v)
    return H * np.exp(-np.square(u / W) ** 1.6)


def _lip_line(u):
    """v (mm) of the mouth line (the lips' contact) at u."""
    return -37.0 - 1.5 * np.square(u / 23.0)


def _lips(u, v):
    """Radial height (mm) of the upper and lower lips and the mouth line."""
    mouth = np.exp(-np.square(u / 24.0) ** 2)
    bow = 1.2 * np.exp(-np.square(u / 5.0)) - 0.8 * _pair(u, 0, 6.0, 0, 3.0, 1)  # Cupid's bow
    upper = 4.0 * _g((v + 33.0 + 0.8 * bow) / 3.5) * np.exp(-np.square(u / 23.0) ** 2)
    lower = 4.5 * _g((v + 42.5) / 4.0) * np.exp(-np.square(u / 19.0) ** 2)
    groove = -1.2 * _g((v - _lip_line(u)) / 2.0) * mouth  # smooth at 2.5 mm; the slit is detail
    return upper + lower + groove


def _brow_line(u):
    """v (mm) of the brow arc at u (through landmarks 17..26)."""
    L = LANDMARK_UV
    return _pchip(np.r_[-80, L[17:27, 0], 80], np.r_[38, L[17:27, 1], 38])(u)


def _lid_curves(eye):
    """Upper and lower lid curves v(u) and the corner u's of one eye (0 = the
    subject's right, 1 = left), through its six landmarks."""
    idx = (36, 37, 38, 39, 40, 41) if eye == 0 else (42, 43, 44, 45, 46, 47)
    P = LANDMARK_UV[list(idx)]
    upper = _pchip(P[:4, 0], P[:4, 1])
    lower = _pchip(P[[0, 5, 4, 3], 0], P[[0, 5, 4, 3], 1])
    return upper, lower, min(P[0, 0], P[3, 0]), max(P[0, 0], P[3, 0])


def eye_opening(u, v, shrink: float = 0.0, softness: float = 0.6) -> np.ndarray:
    """Soft indicator (...) in [0, 1] of the two eye openings (between the
    lid curves of landmarks 36-41 and 42-47), shrunk by ``shrink`` mm; the
    edge is a smooth step ``softness`` mm wide."""
    out = 0.0
    for eye in (0, 1):
        upper, lower, lo, hi = _lid_curves(eye)
        inside = np.minimum(np.minimum(upper(u) - v, v - lower(u)),
                            np.minimum(u - lo, hi - u) * 0.3) - shrink
        out = out + _step(inside / softness)
    return out


def mean_features(u, v) -> np.ndarray:
    """Radial features (mm) of the mean face at (u, v), added to
    :func:`mean_radius`."""
    eye = _eye_uv()
    d = _nose(u, v)
    d = d + 7.0 * _pair(u, v, 14.0, -10.0, 5.5, 4.5)            # alae
    d = d - 12.0 * _pair(u, v, eye[0], eye[1] + 4, 11.0, 8.0)   # eye sockets
    d = d + 7.0 * _pair(u, v, eye[0], eye[1] + 0.5, 9.0, 6.0)   # globes under the lids
    d = d - 1.8 * eye_opening(u, v, softness=1.0)                # the lids' margins
    ridge = _g((v - _brow_line(u) + 4.0) / 5.0) * np.exp(-np.square(u / 58.0) ** 3)
    d = d + 5.0 * ridge                                          # brow ridge
    d = d + 1.5 * _bump(u, v, 0, 47, 9, 7)                       # glabella
    d = d + 5.0 * _pair(u, v, 48, 8, 12, 10)                     # cheekbones
    d = d - 1.5 * _pair(u, v, 30, 16, 10, 4)                     # infraorbital hollows
    d = d - 4.0 * _pair(u, v, 68, 45, 9, 16)                     # temples
    d = d + 2.0 * _pair(u, v, 26, 75, 18, 14)                    # frontal eminences
    d = d + 2.0 * _pair(u, v, 31, -24, 10, 11)                   # nasolabial cheeks
    d = d + 4.5 * _bump(u, v, 0, -30, 24, 16)                    # dental arch
    d = d + _lips(u, v)
    d = d - 2.5 * _bump(u, v, 0, -55, 16, 3.5)                   # mentolabial sulcus
    d = d + 4.0 * _bump(u, v, 0, -68, 13, 8)                     # chin
    return d


def mean_surface(u, v) -> np.ndarray:
    """Points (..., 3) mm of the mean face at parameters (u, v) (broadcast)."""
    r = mean_radius(u, v) + mean_features(u, v)
    th = _theta(u)
    shape = np.broadcast_shapes(np.shape(u), np.shape(v))
    P = np.empty(shape + (3,))
    P[..., 0] = r * np.sin(th)
    P[..., 1] = v
    P[..., 2] = r * np.cos(th)
    return P


# ------------------------------------------------------------------ identity

def _lower_face(v):
    """1 below the mouth, 0 above the nose, smooth between."""
    return _step(-(v + 15.0) / 12.0)


def _eye_uv():
    """(|u|, v) of the eye centres."""
    return np.abs(LANDMARK_UV[36:42].mean(axis=0))


# Each raw identity factor: a smooth 3D displacement field (..., 3) of one
# standard deviation, from the parameters (u, v) and the mean points P0.
def _f_width(u, v, P0):
    return _vector(u, v, dx=0.045 * P0[..., 0])


def _f_height(u, v, P0):
    return _vector(u, v, dy=0.045 * P0[..., 1])


def _f_depth(u, v, P0):
    return _vector(u, v, dr=3.0 * np.cos(_theta(u)) ** 2 * _g(v / 70.0))


def _f_lower_length(u, v, P0):
    return _vector(u, v, dy=-4.0 * _lower_face(v))


def _f_jaw_width(u, v, P0):
    return _vector(u, v, dx=0.06 * P0[..., 0] * _lower_face(v))


def _f_nose_projection(u, v, P0):
    return _vector(u, v, dr=0.22 * _nose(u, v))


def _f_nose_width(u, v, P0):
    return _vector(u, v, dx=0.15 * P0[..., 0] * _bump(u, v, 0, -6, 18, 12))


def _f_nose_length(u, v, P0):
    return _vector(u, v, dy=-2.5 * _bump(u, v, 0, -4, 16, 10))


def _f_eye_depth(u, v, P0):
    e = _eye_uv()
    return _vector(u, v, dr=-2.5 * _pair(u, v, e[0], e[1] + 2, 12, 9))


def _f_eye_spacing(u, v, P0):
    e = _eye_uv()
    return _vector(u, v, dx=2.0 * _signed_pair(u, v, e[0], e[1], 14, 10))


def _f_brow_ridge(u, v, P0):
    ridge = _g((v - _brow_line(u) + 4.0) / 6.0) * np.exp(-np.square(u / 58.0) ** 3)
    return _vector(u, v, dr=2.0 * ridge)


def _f_cheekbones(u, v, P0):
    return _vector(u, v, dr=2.5 * _pair(u, v, 48, 8, 13, 10))


def _f_cheek_fullness(u, v, P0):
    return _vector(u, v, dr=3.0 * _pair(u, v, 45, -35, 16, 15))


def _f_lip_fullness(u, v, P0):
    return _vector(u, v, dr=0.35 * np.clip(_lips(u, v), 0, None))


def _f_chin(u, v, P0):
    return _vector(u, v, dr=3.0 * _bump(u, v, 0, -70, 15, 10))


def _f_forehead_slope(u, v, P0):
    return _vector(u, v, dr=-3.5 * _step((v - 60.0) / 20.0) * (v - 40.0) / 60.0)


def _f_mouth_width(u, v, P0):
    return _vector(u, v, dx=0.1 * P0[..., 0] * _bump(u, v, 0, -38, 30, 9))


IDENTITY_FACTORS = (
    ("face_width", _f_width), ("face_height", _f_height), ("face_depth", _f_depth),
    ("lower_face_length", _f_lower_length), ("jaw_width", _f_jaw_width),
    ("nose_projection", _f_nose_projection), ("nose_width", _f_nose_width),
    ("nose_length", _f_nose_length), ("eye_depth", _f_eye_depth),
    ("eye_spacing", _f_eye_spacing), ("brow_ridge", _f_brow_ridge),
    ("cheekbones", _f_cheekbones), ("cheek_fullness", _f_cheek_fullness),
    ("lip_fullness", _f_lip_fullness), ("chin", _f_chin),
    ("forehead_slope", _f_forehead_slope), ("mouth_width", _f_mouth_width),
)


def identity_fields(u, v, P0=None) -> np.ndarray:
    """(J, ..., 3) one-sigma displacement fields (mm) of the raw identity
    factors :data:`IDENTITY_FACTORS` at (u, v); ``P0`` the mean points there."""
    P0 = mean_surface(u, v) if P0 is None else P0
    return np.stack([f(u, v, P0) for _, f in IDENTITY_FACTORS])


# ------------------------------------------------------------------ expressions

# Each expression: a displacement field (..., 3) mm at weight 1, with the
# signature of the identity factors.
def _e_smile(u, v, P0):
    corners = _pair(u, v, 25, -38, 8, 7)
    out = _vector(u, v, dx=4.0 * _signed_pair(u, v, 25, -38, 8, 7), dy=4.0 * corners,
                  dr=-2.0 * corners)                                  # mouth corners up and out
    out += _vector(u, v, dy=2.0 * _pair(u, v, 38, -14, 13, 12),
                   dr=3.0 * _pair(u, v, 36, -14, 12, 12))             # cheeks up
    out += _vector(u, v, dy=1.5 * _pair(u, v, 34, 24, 10, 4))        # lower lids
    out += _vector(u, v, dr=-1.0 * _bump(u, v, 0, -38, 16, 5))       # lips thinned
    return out


def _e_brow_raise(u, v, P0):
    brows = _g((v - 55.0) / 12.0) * np.exp(-np.square(u / 60.0) ** 3)
    forehead = _step((v - 55.0) / 10.0) * _g((v - 55.0) / 40.0)
    lids = _pair(u, v, 33, 38, 10, 4)
    return _vector(u, v, dy=6.0 * brows + 3.0 * forehead + 1.5 * lids)


def _e_squint(u, v, P0):
    e = _eye_uv()
    return _vector(u, v, dy=(-2.0 * _pair(u, v, e[0], 35, 10, 3.5)
                             + 2.0 * _pair(u, v, e[0], 26, 10, 3.0)
                             + 1.5 * _pair(u, v, 42, 12, 12, 8)
                             - 2.0 * _pair(u, v, 35, 52, 15, 6)),
                   dr=1.0 * _pair(u, v, 50, 28, 6, 8))


def _e_lips_pressed(u, v, P0):
    lips = _bump(u, v, 0, -38, 20, 6)
    return _vector(u, v, dy=-1.0 * _bump(u, v, 0, -32, 18, 4) + 1.5 * _bump(u, v, 0, -44, 16, 4),
                   dr=-2.0 * lips + 1.5 * _bump(u, v, 0, -64, 12, 8))


def _e_frown(u, v, P0):
    inner = _pair(u, v, 18, 53, 12, 7)
    return _vector(u, v, dy=-4.0 * inner, dx=-2.0 * _signed_pair(u, v, 18, 53, 12, 7),
                   dr=1.0 * _bump(u, v, 0, 48, 8, 6))


EXPRESSIONS = (("smile", _e_smile), ("brow_raise", _e_brow_raise), ("squint", _e_squint),
               ("lips_pressed", _e_lips_pressed), ("frown", _e_frown))
EXPRESSION_NAMES = tuple(name for name, _ in EXPRESSIONS)


def expression_fields(u, v, P0=None) -> np.ndarray:
    """(E, ..., 3) displacement fields (mm at weight 1) of :data:`EXPRESSIONS`."""
    P0 = mean_surface(u, v) if P0 is None else P0
    return np.stack([f(u, v, P0) for _, f in EXPRESSIONS])


