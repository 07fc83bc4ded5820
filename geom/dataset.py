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

from dataclasses import dataclass

import numpy as np

from . import crop, filters
from .dce import DCEImage, SurfaceGeometry, render_dce, surface_geometry
from .io import IBUG68_NOSE_TIP, Mesh, RangeScan
from .landmarks import landmarks_to_3d
from .projection import OrthographicCamera, crop_camera, fit_orthographic, rotation_from_euler


@dataclass
class PreparedMesh:
    """One side of a pair: the mesh, its pose-independent geometry, its 68
    landmarks in 3D (mm) and the camera that maps it onto the photo."""

    mesh: Mesh
    geometry: SurfaceGeometry
    landmarks_3d: np.ndarray
    camera: OrthographicCamera


def prepare_ground_truth(scan: RangeScan, landmarks_2d: np.ndarray, median_size: int = 5,
                         curvature: str = "mean", **crop_options) -> PreparedMesh:
    """Raw range scan and its photo's 68 landmarks (x, y px) -> cropped,
    filtered mesh with curvature and normals, and the camera fitted from the
    landmark correspondences."""
    xyz, valid = filters.median_filter_grid(scan.xyz, scan.valid, size=median_size)
    clean = RangeScan(xyz, valid, scan.texture_path, scan.uv, scan.source)
    landmarks_3d = landmarks_to_3d(landmarks_2d, clean)
    mesh = crop.crop_mesh(clean.to_mesh(colors=scan.texture_path is not None), landmarks_3d,
                          **crop_options)
    camera = fit_orthographic(landmarks_2d, landmarks_3d)
    return PreparedMesh(mesh, surface_geometry(mesh, curvature), landmarks_3d, camera)


def prepare_coarse(mesh: Mesh, landmark_vertices: np.ndarray, landmarks_2d: np.ndarray,
                   curvature: str = "mean", **crop_options) -> PreparedMesh:
    """A coarse mesh whose 68 landmarks are the vertices ``landmark_vertices``,
    cropped like the ground truth; its camera is fitted from the same photo
    landmarks as the ground truth's."""
    landmarks_3d = mesh.vertices[np.asarray(landmark_vertices)]
    camera = fit_orthographic(landmarks_2d, landmarks_3d)
    mesh = crop.crop_mesh(mesh, landmarks_3d, **crop_options)
    return PreparedMesh(mesh, surface_geometry(mesh, curvature), landmarks_3d, camera)


def face_box(landmarks_2d: np.ndarray, margin: float = 0.25) -> tuple:
    """Square crop (centre (x, y), side in px) around 68 photo landmarks,
    grown by ``margin`` of the landmarks' extent on each side."""
    lo, hi = landmarks_2d.min(axis=0), landmarks_2d.max(axis=0)
    return (lo + hi) / 2.0, float((hi - lo).max() * (1.0 + 2.0 * margin))


def posed_view(side: PreparedMesh, center_px, crop_size_px: float, size: int,
               yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> OrthographicCamera:
    """The side's photo camera, rotated by (yaw, pitch, roll) degrees about its
    nose tip in the view frame, then cropped to ``size`` px. The nose tip keeps
    its pixel, so two sides posed alike stay aligned."""
    cam = side.camera
    nose = side.landmarks_3d[IBUG68_NOSE_TIP]
    # The head turns in its own frame: conjugate the model-frame Euler rotation
    # by the frontal camera so that +yaw turns the face toward its left.
    frontal = np.diag([1.0, -1.0, -1.0])
    R = frontal @ rotation_from_euler(yaw, pitch, roll) @ frontal @ cam.rotation
    nose_px = cam.scale * (cam.rotation[:2] @ nose) + cam.translation
    t = nose_px - cam.scale * (R[:2] @ nose)
    return crop_camera(OrthographicCamera(cam.scale, R, t), center_px, crop_size_px, size)


def render_side(side: PreparedMesh, camera: OrthographicCamera, size: int, channels="DCE",
                nose_margin_mm: float = 10.0, **normalization) -> DCEImage:
    """Render one side; its depth reference sits ``nose_margin_mm`` in front of
    its own nose tip, so coarse and ground truth share the depth scale."""
    nose_depth = camera.project(side.landmarks_3d[IBUG68_NOSE_TIP][None])[0, 2]
    return render_dce(side.mesh, camera, size, channels, side.geometry,
                      depth_reference=nose_depth - nose_margin_mm, **normalization)


def render_pair(coarse: PreparedMesh, target: PreparedMesh, landmarks_2d: np.ndarray,
                size: int = 256, channels="DCE", pose=(0.0, 0.0, 0.0),
                margin: float = 0.25, **normalization) -> tuple:
    """Pixel-aligned (coarse, target) DCE images at ``pose`` = (yaw, pitch,
    roll) degrees, framed on the photo landmarks."""
    center, side = face_box(landmarks_2d, margin)
    return tuple(render_side(s, posed_view(s, center, side, size, *pose), size, channels,
                             **normalization) for s in (coarse, target))
