"""Aligned (coarse, ground truth) DCE pairs: the per-pair pipeline of paper
sections 3.2 and 5.2.

The ground truth is a raw scan: median-filtered, triangulated, cropped by the
nose sphere and the landmark contour. The coarse side is a mesh with its 68
landmark vertices (a 3DMM fit). Each side gets its own scaled-orthographic
camera fitted from the SAME 2D photo landmarks, so both project onto the
photo's pixel grid and their images are pixel-aligned. Per-mesh geometry
(normals, curvature) is computed once; each pose only re-renders.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from . import crop, filters
from .dce import DCEImage, SurfaceGeometry, render_dce, resolve_channels, surface_geometry
from .landmark_formats import read_landmarks, read_vertex_indices
from .landmarks import landmarks_to_3d
from .projection import (
    OrthographicCamera,
    camera_array,
    crop_camera,
    fit_orthographic,
    rotation_from_euler,
)
from .records import IBUG68_NOSE_TIP, FormatError, Mesh, RangeScan
from .sampling import sample_image_bilinear


@dataclass
class PreparedMesh:
    """One side of a pair: the mesh, its pose-independent geometry, its 68
    landmarks in 3D (mm; None for a mesh rendered on its own without them),
    the camera that maps it onto the photo (or the image's camera) and the
    photo (H, W, 3) uint8 that colours its r, g, b channels per pixel
    through that camera (None: they come from the mesh's vertex colours)."""

    mesh: Mesh
    geometry: SurfaceGeometry
    landmarks_3d: np.ndarray | None
    camera: OrthographicCamera
    photo: np.ndarray | None = None


def prepare_ground_truth(scan: RangeScan, landmarks_2d: np.ndarray, median_size: int = 5,
                         curvature: str = "mean", max_gap: float = 3.0,
                         photo_size: tuple | None = None, **crop_options) -> PreparedMesh:
    """Raw range scan and its photo's 68 landmarks (x, y px) -> median-filtered,
    triangulated, cropped mesh with curvature and normals, and the camera
    fitted from the landmark correspondences. ``max_gap`` and ``photo_size``
    (the photo's (H, W) when it is missing): see
    :func:`~dce.geom.landmarks.landmarks_to_3d`."""
    xyz, valid = filters.median_filter_grid(scan.xyz, scan.valid, size=median_size)
    clean = RangeScan(xyz, valid, scan.texture_path, scan.uv, scan.source)
    landmarks_3d = landmarks_to_3d(landmarks_2d, clean, image_size=photo_size, max_gap=max_gap)
    mesh = crop.crop_mesh(clean.to_mesh(), landmarks_3d, **crop_options)
    camera = fit_orthographic(landmarks_2d, landmarks_3d)
    return PreparedMesh(mesh, surface_geometry(mesh, curvature), landmarks_3d, camera)


def prepare_ground_truth_mesh(mesh: Mesh, landmarks_3d: np.ndarray, landmarks_2d: np.ndarray,
                              curvature: str = "mean", **crop_options) -> PreparedMesh:
    """A ground-truth mesh with its 68 landmarks in 3D (mm): median-filtered,
    cropped, and given the camera that maps its landmarks onto ``landmarks_2d``."""
    V = filters.median_filter_mesh(mesh.vertices, mesh.faces)
    mesh = crop.crop_mesh(Mesh(V, mesh.faces, mesh.colors, mesh.uv), landmarks_3d, **crop_options)
    camera = fit_orthographic(landmarks_2d, landmarks_3d)
    return PreparedMesh(mesh, surface_geometry(mesh, curvature), np.asarray(landmarks_3d), camera)


def prepare_mesh(mesh: Mesh, landmarks_3d: np.ndarray | None, camera: OrthographicCamera,
                 curvature: str = "mean", **crop_options) -> PreparedMesh:
    """``mesh`` with its geometry and ``camera``, cropped like the ground
    truth when its 68 landmarks ``landmarks_3d`` (68, 3) mm are known (None:
    the whole mesh)."""
    if landmarks_3d is not None:
        mesh = crop.crop_mesh(mesh, landmarks_3d, **crop_options)
    return PreparedMesh(mesh, surface_geometry(mesh, curvature), landmarks_3d, camera)


def prepare_coarse(mesh: Mesh, landmark_vertices: np.ndarray, landmarks_2d: np.ndarray,
                   curvature: str = "mean", **crop_options) -> PreparedMesh:
    """A coarse mesh whose 68 landmarks are the vertices ``landmark_vertices``,
    cropped like the ground truth; its camera is fitted from the same photo
    landmarks as the ground truth's."""
    landmarks_3d = mesh.vertices[np.asarray(landmark_vertices)]
    return prepare_mesh(mesh, landmarks_3d, fit_orthographic(landmarks_2d, landmarks_3d),
                        curvature, **crop_options)


def read_mesh_landmarks(path, mesh: Mesh) -> np.ndarray:
    """(68, 3) landmarks in mm of ``mesh`` from ``path``: 68 vertex indices
    (``.npy``, ``.npz``, or a ``.txt`` of integers; see
    ``landmark_formats.read_vertex_indices``) or 68 x y z points (any landmark file
    ``io.read_landmarks`` reads). :class:`FormatError` naming the file."""
    if str(path).lower().endswith((".npy", ".npz")):
        return mesh.vertices[read_vertex_indices(path, mesh.n_vertices)]
    try:
        points = read_landmarks(path, expected=68)
    except FormatError:
        return mesh.vertices[read_vertex_indices(path, mesh.n_vertices)]
    if points.dim != 3:
        raise FormatError(f"{path}: holds 68 2D points; the mesh's landmarks need 68 x y z "
                          "points (mm) or 68 vertex indices")
    return points.points


def face_box(landmarks_2d: np.ndarray, margin: float = 0.25) -> tuple:
    """Square crop (centre (x, y), side in px) around 68 photo landmarks,
    grown by ``margin`` of the landmarks' extent on each side."""
    lo, hi = landmarks_2d.min(axis=0), landmarks_2d.max(axis=0)
    return (lo + hi) / 2.0, float((hi - lo).max() * (1.0 + 2.0 * margin))


def posed_view(side: PreparedMesh, anchor_px, center_px, crop_size_px: float, size: int,
               yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> OrthographicCamera:
    """The side's photo camera rotated by (yaw, pitch, roll) degrees about its
    nose tip in the view frame, with the nose tip put on the photo pixel
    ``anchor_px`` (the nose-tip landmark), then cropped to ``size`` px. Both
    sides of a pair posed alike therefore share the nose pixel exactly."""
    cam = side.camera
    nose = side.landmarks_3d[IBUG68_NOSE_TIP]
    # The head turns in its own frame: conjugate the model-frame Euler rotation
    # by the frontal camera so that +yaw turns the face toward its left.
    frontal = np.diag([1.0, -1.0, -1.0])
    R = frontal @ rotation_from_euler(yaw, pitch, roll) @ frontal @ cam.rotation
    t = np.asarray(anchor_px, dtype=np.float64) - cam.scale * (R[:2] @ nose)
    return crop_camera(OrthographicCamera(cam.scale, R, t), center_px, crop_size_px, size)


def framed_view(side: PreparedMesh, landmarks_2d: np.ndarray, size: int,
                pose=(0.0, 0.0, 0.0), margin: float = 0.25) -> OrthographicCamera:
    """The side's ``size`` px view at ``pose`` = (yaw, pitch, roll) degrees,
    framed on its 68 photo landmarks (x, y px): the :func:`face_box` crop,
    the nose tip on the nose-tip landmark (see :func:`posed_view`)."""
    center, box = face_box(landmarks_2d, margin)
    return posed_view(side, landmarks_2d[IBUG68_NOSE_TIP], center, box, size, *pose)


def render_side(side: PreparedMesh, camera: OrthographicCamera, size: int, channels="DCE",
                nose_margin_mm: float = 10.0, **normalization) -> DCEImage:
    """Render one side; its depth reference sits ``nose_margin_mm`` in front of
    its own nose tip, so coarse and ground truth share the depth scale
    (without landmarks the nearest vertex stands in for the nose tip)."""
    if side.landmarks_3d is not None:
        nose_depth = camera.project(side.landmarks_3d[IBUG68_NOSE_TIP][None])[0, 2]
    else:
        nose_depth = camera.project(side.mesh.vertices)[:, 2].min()
    return render_dce(side.mesh, camera, size, channels, side.geometry, photo=side_photo(side),
                      depth_reference=nose_depth - nose_margin_mm, **normalization)


def side_photo(side: PreparedMesh) -> tuple | None:
    """The ``photo`` argument of :func:`render_dce` for ``side``: its photo
    and the camera mapping the mesh onto it, or None."""
    return None if side.photo is None else (side.photo, side.camera)


def render_pair(coarse: PreparedMesh, target: PreparedMesh, landmarks_2d: np.ndarray,
                size: int = 256, channels="DCE", pose=(0.0, 0.0, 0.0),
                margin: float = 0.25, **normalization) -> tuple:
    """Pixel-aligned (coarse, target) DCE images at ``pose`` = (yaw, pitch,
    roll) degrees, framed on the photo landmarks."""
    return tuple(render_side(s, framed_view(s, landmarks_2d, size, pose, margin), size,
                             channels, **normalization) for s in (coarse, target))


# ------------------------------------------------------------ single meshes


def sample_photo_colors(vertices: np.ndarray, camera: OrthographicCamera,
                        photo: np.ndarray) -> np.ndarray:
    """(n, 3) float32 colours in [0, 1]: the photo (H, W, 3) uint8 sampled
    bilinearly at each vertex's projection (clamped at the border)."""
    return sample_image_bilinear(photo, camera.project(vertices)[:, :2])


def prepare_view(mesh: Mesh, landmarks_3d: np.ndarray | None = None,
                 camera: OrthographicCamera | None = None,
                 landmarks_2d: np.ndarray | None = None, photo: np.ndarray | None = None,
                 size: int = 256, curvature: str = "mean", margin: float = 0.25,
                 **crop_options) -> tuple:
    """One mesh (e.g. a coarse fit to refine) prepared to render on its own:
    (:class:`PreparedMesh`, the camera of its ``size`` px image). Either
    ``camera`` is that camera, or the view is framed on 68 photo landmarks
    ``landmarks_2d`` (x, y px) as :func:`render_pair` frames a pair's
    photo view, the photo camera fitted from them and ``landmarks_3d``;
    ``photo`` (H, W, 3) uint8 then gives the r, g, b channels per pixel, and
    the vertices its colours (for the meshes written from them). The mesh is
    cropped when its landmarks ``landmarks_3d`` (68, 3) mm are known."""
    if camera is not None:
        return prepare_mesh(mesh, landmarks_3d, camera, curvature, **crop_options), camera
    side = prepare_mesh(mesh, landmarks_3d, fit_orthographic(landmarks_2d, landmarks_3d),
                        curvature, **crop_options)
    if photo is not None:
        side.photo = photo
        side.mesh.colors = sample_photo_colors(side.mesh.vertices, side.camera, photo)
    return side, framed_view(side, landmarks_2d, size, margin=margin)


def render_view(side: PreparedMesh, camera: OrthographicCamera, size: int, channels="DCE",
                **normalization) -> tuple:
    """(the side's DCE image seen by ``camera``, depth referenced as in
    :func:`render_side`; its colour image (size, size, 3) in [0, 1] when the
    side has a photo or the mesh has colours, else None). ValueError when
    the mesh is out of view."""
    image = render_side(side, camera, size, channels, **normalization)
    if not image.mask.any():
        raise ValueError(f"the mesh is not in view of the camera (empty {size}x{size} image)")
    if side.photo is None and side.mesh.colors is None:
        return image, None
    return image, render_dce(side.mesh, camera, size, ("r", "g", "b"), side.geometry,
                             photo=side_photo(side)).rgb()


# ----------------------------------------------------------------- samples


@dataclass
class BuildConfig:
    """Everything that decides a sample's pixels (stored in the file's
    provenance, and compared when a build resumes)."""

    size: int = 256
    channels: str = "DCE"
    poses: int = 5            # extra random poses per pair (pose 0 is the photo's view)
    max_yaw: float = 45.0     # degrees; poses are uniform in [-max, max]
    max_pitch: float = 20.0
    max_roll: float = 20.0
    seed: int = 0
    curvature: str = "mean"   # or "absolute" (the authors' demo code)
    depth_scale: float = 50.0
    curvature_scale: float = 0.1
    margin: float = 0.25      # face box margin around the landmarks
    median_size: int = 5
    crop_radius: float = 125.0
    max_gap: float = 3.0      # grid steps a photo landmark may lie from the scan's valid points
    photo_size: tuple | None = None  # (H, W) of missing photos the 2D landmarks refer to
    min_face_fraction: float = 0.01  # a side with a smaller mask (of the image) is refused

    def __post_init__(self):
        if self.photo_size is not None:
            self.photo_size = tuple(int(v) for v in self.photo_size)
            if len(self.photo_size) != 2 or min(self.photo_size) < 1:
                raise ValueError(f"BuildConfig.photo_size must be (H, W) > 0, "
                                 f"got {self.photo_size}")
        if not self.max_gap > 0:
            raise ValueError(f"BuildConfig.max_gap must be > 0 grid steps, got {self.max_gap}")
        if not 0 <= self.min_face_fraction < 1:
            raise ValueError(f"BuildConfig.min_face_fraction must be in [0, 1), "
                             f"got {self.min_face_fraction}")

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.photo_size is not None:
            d["photo_size"] = list(self.photo_size)
        return d


@dataclass
class Sample:
    """One pose of one pair; the record the HDF5 store writes (see
    ``dce.gan.h5format`` for the file layout). Images are (C, H, W)."""

    sample_id: str
    pair_id: str
    subject: str
    coarse: np.ndarray
    target: np.ndarray
    coarse_mask: np.ndarray
    target_mask: np.ndarray
    channels: tuple
    coarse_offset: np.ndarray
    coarse_scale: np.ndarray
    target_offset: np.ndarray
    target_scale: np.ndarray
    pose: np.ndarray
    coarse_camera: np.ndarray
    target_camera: np.ndarray
    source: dict = field(default_factory=dict)


def random_poses(pair_id: str, config: BuildConfig) -> np.ndarray:
    """(1 + poses, 3) yaw, pitch, roll in degrees: the photo's own view, then
    uniform random poses. Seeded by the pair id and the build seed, so a
    pair's poses do not depend on the order or the shard it is built in."""
    digest = hashlib.sha256(f"{config.seed}/{pair_id}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    limits = np.array([config.max_yaw, config.max_pitch, config.max_roll])
    return np.vstack([np.zeros(3), rng.uniform(-limits, limits, size=(config.poses, 3))])


def prepare_pair(pair, config: BuildConfig) -> tuple:
    """(coarse, target) :class:`PreparedMesh` of a loaded pair (a
    ``dce.geom.sources.PairInput``: a raw ``scan`` or a ``target_mesh`` with
    ``landmarks_3d``, ``landmarks_2d``, ``coarse_mesh`` with its
    ``coarse_landmark_vertices``, and a ``photo`` for the RGB channels, which
    both sides then sample per pixel)."""
    crop_options = {"radius": config.crop_radius}
    if getattr(pair, "scan", None) is not None:
        target = prepare_ground_truth(pair.scan, pair.landmarks_2d, config.median_size,
                                      config.curvature, config.max_gap, config.photo_size,
                                      **crop_options)
    else:
        target = prepare_ground_truth_mesh(pair.target_mesh, pair.landmarks_3d, pair.landmarks_2d,
                                           config.curvature, **crop_options)
    coarse = prepare_coarse(pair.coarse_mesh, pair.coarse_landmark_vertices, pair.landmarks_2d,
                            config.curvature, **crop_options)
    if "r" in resolve_channels(config.channels):
        if getattr(pair, "photo", None) is None:
            raise ValueError(f"{pair.pair_id}: the RGB channels need a photo, and this pair has none")
        coarse.photo = target.photo = pair.photo
    return coarse, target


def pair_samples(pair_id: str, subject: str, coarse: PreparedMesh, target: PreparedMesh,
                 landmarks_2d: np.ndarray, config: BuildConfig,
                 source: dict | None = None) -> list:
    """All poses of one prepared pair as :class:`Sample` records."""
    channels = resolve_channels(config.channels)
    samples = []
    for k, pose in enumerate(random_poses(pair_id, config)):
        c, t = render_pair(coarse, target, landmarks_2d, config.size, channels, pose,
                           config.margin, depth_scale=config.depth_scale,
                           curvature_scale=config.curvature_scale)
        for side, view in (("coarse", c), ("target", t)):
            fraction = float(np.count_nonzero(view.mask)) / view.mask.size
            if not fraction >= max(config.min_face_fraction, 1e-12):
                raise ValueError(
                    f"{pair_id}/pose{k}: the {side} side covers {100 * fraction:.2f} % of the "
                    f"image (< {100 * config.min_face_fraction:g} %): an empty or broken "
                    f"{'scan' if side == 'target' else 'coarse mesh'}, refused")
        samples.append(Sample(
            f"{pair_id}/pose{k}", pair_id, subject,
            np.ascontiguousarray(c.image.transpose(2, 0, 1)),
            np.ascontiguousarray(t.image.transpose(2, 0, 1)), c.mask, t.mask, channels,
            c.offset, c.scale, t.offset, t.scale, pose,
            camera_array(c.camera), camera_array(t.camera), dict(source or {})))
    return samples
