"""Scaled-orthographic cameras: fitting from 2D-3D landmarks, projection,
back-projection and posed views. The view frame is OpenCV's (x right, y down,
z away from the viewer): ``[x_px, y_px] = scale * (R @ X)[:2] + translation``
and depth ``(R @ X)[2]`` in mm.

See docs/geometry.md (conventions, the frontal camera).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .records import FormatError

FRONTAL = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class OrthographicCamera:
    """``scale`` px/mm, ``rotation`` (3, 3) model->view, ``translation`` (2,) px."""

    scale: float
    rotation: np.ndarray
    translation: np.ndarray

    def __post_init__(self):
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "rotation", np.asarray(self.rotation, dtype=np.float64))
        object.__setattr__(self, "translation", np.asarray(self.translation, dtype=np.float64))

    @property
    def matrix(self) -> np.ndarray:
        """The 2x3 projection P = scale * R[:2] of the paper."""
        return self.scale * self.rotation[:2]

    @property
    def view_direction(self) -> np.ndarray:
        """Unit vector (3,), in model coordinates, pointing from the surface
        toward the viewer (minus the third row of R)."""
        return -self.rotation[2]

    def project(self, V: np.ndarray) -> np.ndarray:
        """(n, 3) model points in mm -> (n, 3) columns x_px, y_px, depth_mm."""
        P = np.asarray(V, dtype=np.float64) @ self.rotation.T
        P[:, :2] = self.scale * P[:, :2] + self.translation
        return P

    def unproject(self, points: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`project`: (n, 3) x_px, y_px, depth_mm -> model mm."""
        Q = np.array(points, dtype=np.float64, copy=True)
        Q[:, :2] = (Q[:, :2] - self.translation) / self.scale
        return Q @ self.rotation

    def to_dict(self) -> dict:
        return {"scale": self.scale, "rotation": self.rotation.tolist(),
                "translation": self.translation.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> OrthographicCamera:
        return cls(d["scale"], np.array(d["rotation"]), np.array(d["translation"]))


def camera_array(camera: OrthographicCamera) -> np.ndarray:
    """(4, 3): the rotation's rows, then (scale, tx, ty)."""
    return np.vstack([camera.rotation, [camera.scale, *camera.translation]])


def camera_from_array(a: np.ndarray) -> OrthographicCamera:
    """Inverse of :func:`camera_array`: (4, 3) -> camera."""
    return OrthographicCamera(a[3, 0], a[:3], a[3, 1:])


def read_camera(path) -> OrthographicCamera:
    """A camera from a JSON file ``{scale, rotation, translation}`` (as
    :func:`write_camera` writes it); :class:`FormatError` naming the file
    unless it holds scale > 0, a proper 3x3 rotation and a 2-vector."""
    path = Path(path)
    try:
        camera = OrthographicCamera.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise FormatError(f"{path}: no such camera file") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FormatError(f"{path}: not a camera JSON {{scale, rotation (3x3), translation "
                          f"(2)}} ({type(error).__name__}: {error})") from None
    R = camera.rotation
    if (R.shape != (3, 3) or camera.translation.shape != (2,) or not camera.scale > 0
            or not np.allclose(R @ R.T, np.eye(3), atol=1e-6) or np.linalg.det(R) < 0):
        raise FormatError(f"{path}: the camera needs scale > 0, a proper 3x3 rotation and a "
                          "2-vector translation")
    return camera


def write_camera(path, camera: OrthographicCamera) -> Path:
    """Write ``camera`` as JSON ``{scale, rotation, translation}``."""
    path = Path(path)
    path.write_text(json.dumps(camera.to_dict(), indent=1) + "\n", encoding="utf-8")
    return path


def rotation_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation (3, 3) of the head in its model frame (+Y up, face toward +Z),
    angles in degrees: ``yaw`` about +Y (positive turns the face toward +X, the
    subject's left), ``pitch`` about +X (positive tilts the face down), ``roll``
    about +Z. Applied as roll @ yaw @ pitch."""
    a, b, c = np.radians([yaw, pitch, roll])
    Ry = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    Rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    Rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def posed_camera(center, scale: float, image_size: int, yaw: float = 0.0,
                 pitch: float = 0.0, roll: float = 0.0,
                 base: np.ndarray = FRONTAL) -> OrthographicCamera:
    """A camera that views the head turned by (yaw, pitch, roll) degrees and puts
    the model point ``center`` (3,) at the image centre; ``scale`` px/mm.
    ``base`` is the rotation of the unposed view (frontal by default)."""
    R = np.asarray(base, dtype=np.float64) @ rotation_from_euler(yaw, pitch, roll)
    c = (image_size - 1) / 2.0
    t = np.array([c, c]) - scale * (R[:2] @ np.asarray(center, dtype=np.float64))
    return OrthographicCamera(scale, R, t)


def crop_camera(camera: OrthographicCamera, center_px, crop_size_px: float,
                image_size: int) -> OrthographicCamera:
    """The camera of a square crop of ``camera``'s image: the crop of side
    ``crop_size_px`` centred at ``center_px`` (x, y) is resampled to
    ``image_size`` x ``image_size`` pixels. Depth is unchanged."""
    f = image_size / float(crop_size_px)
    c = (image_size - 1) / 2.0
    t = (camera.translation - np.asarray(center_px, dtype=np.float64)) * f + c
    return OrthographicCamera(camera.scale * f, camera.rotation, t)


def fit_orthographic(points_2d: np.ndarray, points_3d: np.ndarray,
                     weights: np.ndarray | None = None,
                     iterations: int = 10) -> OrthographicCamera:
    """Least-squares scaled-orthographic camera from k >= 4 correspondences.

    ``points_2d`` (k, 2) pixels (x = column, y = row), ``points_3d`` (k, 3) mm.
    The affine 2x3 solution is projected onto the nearest scaled rotation (SVD)
    and refined by Gauss-Newton on (rotation, scale); the translation follows
    in closed form from the weighted centroids. Exact correspondences give the
    camera back exactly.
    """
    x = np.asarray(points_2d, dtype=np.float64)
    X = np.asarray(points_3d, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2 or X.ndim != 2 or X.shape[1] != 3 or len(x) != len(X):
        raise ValueError(f"fit_orthographic: need (k,2) and (k,3) arrays of equal k, "
                         f"got {x.shape} and {X.shape}")
    if len(x) < 4:
        raise ValueError(f"fit_orthographic: need at least 4 correspondences, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(X).all()):
        raise ValueError("fit_orthographic: correspondences contain NaN or infinity")
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    xc, Xc = x - w @ x, X - w @ X
    sw = np.sqrt(w)[:, None]
    if np.linalg.matrix_rank(Xc * sw, tol=1e-9 * np.abs(Xc).max()) < 3:
        raise ValueError("fit_orthographic: the 3D points are coplanar or collinear; "
                         "a scaled-orthographic camera is not determined")

    A = np.linalg.lstsq(Xc * sw, xc * sw, rcond=None)[0].T  # (2, 3)
    U, S, Vt = np.linalg.svd(A, full_matrices=False)
    r12 = U @ Vt
    R = np.vstack([r12, np.cross(r12[0], r12[1])])
    s = S.mean()
    for _ in range(iterations):
        P = Xc @ R.T
        r = (s * P[:, :2] - xc) * sw
        # Left perturbation R <- exp([w]x) R moves P by w x P = -[P]x w.
        J = np.empty((len(x), 2, 4))
        J[:, 0, :3] = s * np.stack([np.zeros(len(P)), P[:, 2], -P[:, 1]], axis=1)
        J[:, 1, :3] = s * np.stack([-P[:, 2], np.zeros(len(P)), P[:, 0]], axis=1)
        J[:, :, 3] = P[:, :2]
        J *= sw[:, :, None]
        step = np.linalg.lstsq(J.reshape(-1, 4), -r.reshape(-1), rcond=None)[0]
        R = _rodrigues(step[:3]) @ R
        s += step[3]
        if np.abs(step).max() < 1e-14:
            break
    t = w @ x - s * (w @ X) @ R[:2].T
    return OrthographicCamera(s, R, t)


def _rodrigues(w: np.ndarray) -> np.ndarray:
    theta = np.linalg.norm(w)
    if theta < 1e-300:
        return np.eye(3)
    k = w / theta
    K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(theta) * K + (1 - np.cos(theta)) * K @ K
