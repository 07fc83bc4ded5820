"""Person-specific detail of a synthetic face (creases, folds, pores): what
the coarse model cannot hold and the refinement is to learn.

See docs/synthetic-world.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .face_anatomy import EXPRESSION_NAMES, LANDMARK_UV, _g, _lid_curves, _lip_line, _step


@dataclass
class Detail:
    """Person-specific detail of one identity (lengths mm, angles deg).

    Rows of line parameters, one row per crease:
    ``forehead`` (k, 8): v0, bend, wave amplitude, wavelength, phase, centre u,
    half length, depth; ``glabella`` (k, 3): u, v top, depth; ``crows_feet``
    (k, 5): side (+-1), angle, start distance, length, depth; ``lip_lines``
    (k, 3): lip (+1 upper, -1 lower), u, depth. Scalars: ``eyelid``
    (height above the lid, depth), ``nasolabial`` (depth, width, bow),
    ``mouth_slit`` depth, ``nostril`` (depth, semi-axis u, semi-axis v,
    centre |u|, centre v, tilt), ``pore_std`` mm, ``pore_seed``, and ``age``
    in [0, 1], which scaled the wrinkles' count and depth.
    """

    forehead: np.ndarray
    glabella: np.ndarray
    crows_feet: np.ndarray
    lip_lines: np.ndarray
    eyelid: tuple
    nasolabial: tuple
    mouth_slit: float
    nostril: tuple
    pore_std: float
    pore_seed: int
    age: float

    def summary(self) -> dict:
        """Counts and depths for the manifest."""
        forehead = float(self.forehead[:, 7].max()) if len(self.forehead) else 0.0
        return {"age": self.age, "forehead_lines": len(self.forehead),
                "forehead_depth_mm": forehead,
                "glabellar_lines": len(self.glabella), "crows_feet": len(self.crows_feet),
                "crows_feet_depth_mm": float(self.crows_feet[:, 4].max()),
                "nasolabial_depth_mm": self.nasolabial[0], "eyelid_crease_depth_mm": self.eyelid[1],
                "lip_lines": len(self.lip_lines), "mouth_slit_depth_mm": self.mouth_slit,
                "nostril_depth_mm": self.nostril[0], "pore_std_mm": self.pore_std}


def draw_detail(rng: np.random.Generator) -> Detail:
    """Draw the detail of one identity; wrinkles grow with a random age in
    [0, 1]."""
    age = float(rng.uniform())
    n = int(rng.integers(0, 2 + round(4 * age)))
    v0 = 67.0 + 7.0 * np.arange(n) + rng.normal(0, 1.2, n)
    forehead = np.column_stack([
        v0, rng.uniform(-2, 4, n), rng.uniform(0, 1.2, n), rng.uniform(25, 50, n),
        rng.uniform(0, 2 * np.pi, n), rng.uniform(-8, 8, n), rng.uniform(22, 48, n),
        (0.1 + 0.4 * age) * rng.uniform(0.6, 1.2, n)])
    k = int(rng.integers(0, 3))
    glabella = np.column_stack([rng.choice([-1, 1], k) * rng.uniform(3, 7, k),
                                rng.uniform(54, 60, k), (0.1 + 0.3 * age) * rng.uniform(0.5, 1, k)])
    rows = []
    for side in (-1.0, 1.0):
        m = int(rng.integers(1, 3 + round(2 * age)))
        angles = np.sort(rng.uniform(-40, 35, m))
        rows.append(np.column_stack([np.full(m, side), angles, rng.uniform(4, 7, m),
                                     rng.uniform(6, 14, m),
                                     (0.08 + 0.3 * age) * rng.uniform(0.6, 1.2, m)]))
    crows_feet = np.concatenate(rows)
    nu, nl = int(rng.integers(10, 21)), int(rng.integers(12, 25))
    lip_lines = np.column_stack([np.r_[np.ones(nu), -np.ones(nl)],
                                 np.r_[rng.uniform(-19, 19, nu), rng.uniform(-16, 16, nl)],
                                 rng.uniform(0.06, 0.18, nu + nl)])
    return Detail(
        forehead=forehead, glabella=glabella, crows_feet=crows_feet, lip_lines=lip_lines,
        eyelid=(float(rng.uniform(4, 7.5)), float(rng.uniform(0.25, 0.6))),
        nasolabial=(float((0.3 + 0.9 * age) * rng.uniform(0.7, 1.2)), float(rng.uniform(2.0, 3.2)),
                    float(rng.uniform(-2, 2))),
        mouth_slit=float(rng.uniform(0.8, 1.6)),
        nostril=(float(rng.uniform(3, 5)), float(rng.uniform(3, 4)), float(rng.uniform(2, 2.8)),
                 float(rng.uniform(5.5, 7.5)), float(rng.uniform(-13, -11)),
                 float(rng.uniform(10, 30))),
        pore_std=float(rng.uniform(0.05, 0.1)), pore_seed=int(rng.integers(2 ** 31)), age=age)


def _window(u, v, box):
    """Index slices of the grid axes u (nu,), v (nv,) (increasing) covering
    box = (u0, u1, v0, v1), and the sub-axes shaped (1, k) and (m, 1)."""
    i0, i1 = np.searchsorted(u, [box[0], box[1]])
    j0, j1 = np.searchsorted(v, [box[2], box[3]])
    su, sv = slice(i0, max(i0, i1)), slice(j0, max(j0, j1))
    return sv, su, u[su][None, :], v[sv][:, None]


def _segment(U, V, a, b):
    """Distance from (U, V) to the segment a-b and the position t in [0, 1]
    of the nearest point."""
    d = np.subtract(b, a)
    t = np.clip(((U - a[0]) * d[0] + (V - a[1]) * d[1]) / (d @ d), 0.0, 1.0)
    return np.hypot(U - a[0] - t * d[0], V - a[1] - t * d[1]), t


def _crease(dist, width, depth):
    """Groove profile: -depth at the crease line, Gaussian of ``width``."""
    return -depth * np.exp(-np.square(dist / width))


def _pores(shape, spacing, std, seed) -> np.ndarray:
    """Band-limited noise (wavelengths 1.2-4 mm, or from 2.5 grid steps when
    the grid is coarser) of standard deviation ``std`` on a grid."""
    noise = np.random.default_rng(seed).standard_normal(shape)
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(shape[0], spacing),
                              np.fft.rfftfreq(shape[1], spacing), indexing="ij"))
    hi = min(1.0 / 1.2, 1.0 / (2.5 * spacing))
    band = _step((f - 0.25) * 12.0) * _step((hi - f) * 12.0)
    field_ = np.fft.irfft2(np.fft.rfft2(noise) * band, s=shape)
    return field_ * (std / max(field_.std(), 1e-12))


def _forehead_line(U, V, v0, bend, amp, lam, phase, uc, half, depth):
    """A horizontal crease: bent up toward the temples, wavy, tapered ends."""
    curve = v0 + bend * np.square(U / 45.0) + amp * np.sin(2 * np.pi * U / lam + phase)
    return _crease(V - curve, 0.7, depth) * _step((half - np.abs(U - uc)) / 4.0)


def _straight_line(U, V, a, b, width, depth, taper_power):
    """A crease along the segment a-b, fading toward both ends."""
    dist, t = _segment(U, V, a, b)
    return _crease(dist, width, depth) * np.sin(np.pi * t) ** taper_power


def _lid_crease(U, V, upper, lo, hi, height, depth):
    """The upper-eyelid crease: the lid curve ``upper`` raised by ``height``,
    between the eye corners lo < u < hi, deepest in the middle."""
    along = np.sin(np.pi * np.clip((U - lo) / (hi - lo), 0.0, 1.0))
    return _crease(V - upper(U) - height, 0.8, depth) * along


def _fold(U, V, curve, side, depth, width):
    """A nasolabial fold along the polyline ``curve`` (k, 2): a groove with
    a bulge of skin on its cheek side (``side`` +1: toward +u), fading at
    both ends."""
    dist = np.full(np.broadcast_shapes(U.shape, V.shape), np.inf)
    pos = np.zeros_like(dist)
    for k in range(len(curve) - 1):
        dk, tk = _segment(U, V, curve[k], curve[k + 1])
        closer = dk < dist
        dist = np.where(closer, dk, dist)
        pos = np.where(closer, (k + tk) / (len(curve) - 1), pos)
    along = np.sin(np.pi * np.clip(pos, 0.0, 1.0)) ** 0.7
    cheek = side * (U - np.interp(V, curve[::-1, 1], curve[::-1, 0])) > 0
    bulge = 0.35 * depth * _g((dist - 1.6 * width) / width) * cheek
    return (_crease(dist, width, depth) + bulge) * along


def _nostril(U, V, cu, cv, ax, ay, tilt, depth):
    """An elliptic hole (semi-axes ax, ay, turned by ``tilt`` rad) with a
    rounded rim."""
    x, y = U - cu, V - cv
    c, s = np.cos(tilt), np.sin(tilt)
    rho = np.hypot((c * x + s * y) / ax, (c * y - s * x) / ay)
    return -depth * _step((1.0 - rho) * 4.0)


def detail_field(detail: Detail, expression, u, v, spacing: float | None = None) -> np.ndarray:
    """Radial detail displacement (nv, nu) mm on the grid of axes u (nu,),
    v (nv,) (increasing), for expression weights (E,) in the order of
    :data:`EXPRESSION_NAMES`. ``spacing``: the grid step for the pores (None:
    from the axes); pores are left out on grids coarser than 1.25 mm. Each
    crease is evaluated on the window of the grid it touches."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    weights = np.zeros(len(EXPRESSION_NAMES))
    given = np.asarray(expression, dtype=np.float64).ravel()
    weights[:len(given)] = given
    w = dict(zip(EXPRESSION_NAMES, weights))
    out = np.zeros((len(v), len(u)))
    L = LANDMARK_UV

    def add(box, fn, *args):
        """out += fn(U, V, *args) over the window box = (u0, u1, v0, v1)."""
        sv, su, U, V = _window(u, v, box)
        if U.size and V.size:
            out[sv, su] += fn(U, V, *args)

    gain = 1.0 + 1.5 * w["brow_raise"] - 0.5 * w["frown"]
    for v0, bend, amp, lam, phase, uc, half, depth in detail.forehead:
        add((uc - half - 10, uc + half + 10, v0 - 8, v0 + 12), _forehead_line,
            v0, bend, amp, lam, phase, uc, half, depth * gain)

    gain = 1.0 + 2.5 * w["frown"]
    for uc, top, depth in detail.glabella:
        add((uc - 4, uc + 4, 40, top + 4), _straight_line,
            (uc, top), (0.8 * uc, 44.0), 0.6, depth * gain, 0.5)

    gain = 1.0 + 1.5 * (w["smile"] + w["squint"])
    for side, angle, start, length, depth in detail.crows_feet:
        corner = L[45] if side > 0 else L[36]
        a = np.radians(angle)
        direction = np.array([side * np.cos(a), np.sin(a)])
        p0, p1 = corner + start * direction, corner + (start + length) * direction
        lo, hi = np.minimum(p0, p1) - 3, np.maximum(p0, p1) + 3
        add((lo[0], hi[0], lo[1], hi[1]), _straight_line, p0, p1, 0.55, depth * gain, 1.0)

    # upper-eyelid creases: the upper lid curve raised by the crease height
    height, depth = detail.eyelid
    depth *= 1.0 + 0.8 * w["squint"] - 0.5 * w["brow_raise"]
    for eye in (0, 1):
        upper, _, lo, hi = _lid_curves(eye)
        top = upper(np.linspace(lo, hi, 9)).max()
        add((lo - 2, hi + 2, top - 8, top + height + 4), _lid_crease, upper, lo, hi, height, depth)

    # nasolabial folds: from above the ala, bowing out, past the mouth corner
    depth, width, bow = detail.nasolabial
    depth *= 1.0 + 1.2 * w["smile"]
    t = np.linspace(0.0, 1.0, 9)[:, None]
    for side in (-1.0, 1.0):
        a = np.array([side * 19.0, -5.0])
        c = np.array([side * (33.0 + bow), -20.0])
        b = np.array([side * (31.0 + 2.0 * w["smile"]), -44.0])
        curve = (1 - t) ** 2 * a + 2 * t * (1 - t) * c + t ** 2 * b  # quadratic Bezier
        lo, hi = curve.min(axis=0) - 8, curve.max(axis=0) + 8
        add((lo[0], hi[0], lo[1], hi[1]), _fold, curve, side, depth, width)

    # the mouth slit and the vertical creases of the lips
    add((-28, 28, -42, -33), lambda U, V: _crease(V - _lip_line(U), 0.6, detail.mouth_slit)
        * _step((26.0 - np.abs(U)) / 1.5))
    gain = 1.0 + w["lips_pressed"]
    for lip, uc, depth in detail.lip_lines:
        centre, spread = (-33.5, 1.3) if lip > 0 else (-42.5, 2.0)
        add((uc - 2, uc + 2, centre - 2.5 * spread, centre + 2.5 * spread), lambda U, V:
            _crease(U - uc, 0.45, depth * gain) * _g((V - centre) / spread))

    # nostrils, and the alar creases around the upper half of the alae
    depth, ax, ay, cu, cv, tilt = detail.nostril
    for side in (-1.0, 1.0):
        add((side * cu - 8, side * cu + 8, cv - 8, cv + 8), _nostril,
            side * cu, cv, ax, ay, np.radians(side * tilt), depth)
        add((side * 14 - 12, side * 14 + 12, -22, 2), lambda U, V: _crease(
            np.hypot(U - side * 14.0, V + 10.0) - 6.5, 0.8, 0.5) * _step((V + 14.0) / 2.0))

    step = spacing if spacing is not None else (u[1] - u[0] if len(u) > 1 else np.inf)
    if step <= 1.25:
        out += _pores(out.shape, step, detail.pore_std, detail.pore_seed)
    return out


