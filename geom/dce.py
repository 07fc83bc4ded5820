"""Depth-Curvature-Elevation images (paper section 3.2), optionally with RGB:
per-vertex channels from a mesh and a camera, rasterized by the orthographic
z-buffer, each stored normalized to about [-1, 1] with the affine map back to
physical units (``physical = offset + scale * normalized``); background -1.

See docs/geometry.md (the channels and their normalizations).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import curvature as curvature_mod
from . import normals as normals_mod
from .projection import OrthographicCamera, crop_camera
from .raster import rasterize
from .records import Mesh, atomic_path
from .sampling import sample_image_bilinear

CHANNEL_SETS = {
    "D": ("depth",),
    "DCE": ("depth", "curvature", "elevation"),
    "DCE+RGB": ("depth", "curvature", "elevation", "r", "g", "b"),
}
KNOWN_CHANNELS = ("depth", "curvature", "elevation", "r", "g", "b")
COLOR_OFFSET, COLOR_SCALE = 0.5, 0.5  # a colour c in [0, 1] is stored as 2 c - 1


@dataclass
class SurfaceGeometry:
    """Pose-independent per-vertex quantities, computed once per mesh."""

    normals: np.ndarray    # (n, 3) unit, model frame
    curvature: np.ndarray  # (n,) 1/mm


@dataclass
class DCEImage:
    """``image`` (H, W, C) float32 normalized, ``mask`` (H, W) bool,
    ``channels`` names, ``offset``/``scale`` (C,) float64 so that
    physical = offset + scale * image, and the ``camera`` used."""

    image: np.ndarray
    mask: np.ndarray
    channels: tuple
    offset: np.ndarray
    scale: np.ndarray
    camera: OrthographicCamera

    def physical(self, channel: str) -> np.ndarray:
        """The channel in physical units (mm, 1/mm, radians, [0, 1]); NaN
        outside the mask."""
        c = self.channels.index(channel)
        out = self.offset[c] + self.scale[c] * self.image[..., c].astype(np.float64)
        out[~self.mask] = np.nan
        return out

    def points(self) -> np.ndarray:
        """(k, 3) model-frame points (mm) of the masked depth pixels, by
        inverting the projection: row-major order of the mask."""
        rows, cols = np.nonzero(self.mask)
        depth = self.physical("depth")[rows, cols]
        return self.camera.unproject(np.column_stack([cols, rows, depth]))

    def select(self, channels: Sequence[str]) -> DCEImage:
        """The image restricted to ``channels``, in that order (ValueError
        when some are missing)."""
        missing = [c for c in channels if c not in self.channels]
        if missing:
            raise ValueError(f"the image has channels {list(self.channels)}, lacks {missing}")
        pick = [self.channels.index(c) for c in channels]
        return DCEImage(np.ascontiguousarray(self.image[..., pick]), self.mask, tuple(channels),
                        self.offset[pick], self.scale[pick], self.camera)

    def rgb(self) -> np.ndarray | None:
        """(H, W, 3) float32 colours in [0, 1] of the r, g, b channels
        (background 0), or None when the image has no colour."""
        if not {"r", "g", "b"} <= set(self.channels):
            return None
        return (self.image[..., [self.channels.index(c) for c in "rgb"]] + 1.0) / 2.0


def surface_geometry(mesh: Mesh, curvature: str = "mean", **curvature_options) -> SurfaceGeometry:
    """Normals and the curvature channel of ``mesh``. ``curvature`` is
    ``"mean"`` (the paper) or ``"absolute"`` (the authors' demo code)."""
    V, F = mesh.vertices, mesh.faces
    if curvature == "mean":
        H = curvature_mod.mean_curvature(V, F, **curvature_options)
    elif curvature == "absolute":
        H = curvature_mod.absolute_curvature(V, F, **curvature_options)
    else:
        raise ValueError(f"curvature must be 'mean' or 'absolute', got {curvature!r}")
    return SurfaceGeometry(normals_mod.vertex_normals(V, F), H)


def resolve_channels(channels) -> tuple:
    """A channel-set name ('D', 'DCE', 'DCE+RGB') or a sequence of names."""
    if isinstance(channels, str):
        if channels not in CHANNEL_SETS:
            raise ValueError(f"unknown channel set {channels!r}; "
                             f"choose from {sorted(CHANNEL_SETS)} or list channel names")
        return CHANNEL_SETS[channels]
    channels = tuple(channels)
    unknown = [c for c in channels if c not in KNOWN_CHANNELS]
    if unknown or not channels:
        raise ValueError(f"unknown channels {unknown}; known: {KNOWN_CHANNELS}")
    return channels


def vertex_channels(mesh: Mesh, camera: OrthographicCamera, geometry: SurfaceGeometry,
                    channels="DCE", depth_reference: float | None = None,
                    depth_scale: float = 50.0, curvature_scale: float = 0.1):
    """Normalized per-vertex channels for one view.

    Returns ``(projected (n, 3) x_px, y_px, depth_mm; values (n, C) float64;
    offset (C,); scale (C,))``. ``depth_reference`` (mm of view depth mapped to
    +1) defaults to the nearest vertex; pass the same value for a coarse mesh
    and its ground truth so that their depth images share one scale. An
    empty ``channels`` gives (n, 0) values.
    """
    channels = resolve_channels(channels) if len(channels) else ()
    P = camera.project(mesh.vertices)
    if depth_reference is None:
        depth_reference = float(P[:, 2].min())
    columns, offset, scale = [], [], []
    for name in channels:
        if name == "depth":
            columns.append((depth_reference - P[:, 2]) / depth_scale + 1.0)
            offset.append(depth_reference + depth_scale)
            scale.append(-depth_scale)
        elif name == "curvature":
            columns.append(np.clip(geometry.curvature / curvature_scale, -1.0, 1.0))
            offset.append(0.0)
            scale.append(curvature_scale)
        elif name == "elevation":
            theta = normals_mod.elevation(geometry.normals, camera.view_direction)
            columns.append(1.0 - 2.0 * theta / np.pi)
            offset.append(np.pi / 2)
            scale.append(-np.pi / 2)
        else:
            if mesh.colors is None:
                raise ValueError(f"channel {name!r} needs vertex colours; the mesh has none")
            columns.append(2.0 * mesh.colors[:, "rgb".index(name)] - 1.0)
            offset.append(COLOR_OFFSET)
            scale.append(COLOR_SCALE)
    values = np.column_stack(columns) if columns else np.empty((len(P), 0))
    return P, values, np.array(offset), np.array(scale)


def render_dce(mesh: Mesh, camera: OrthographicCamera, size: int = 256, channels="DCE",
               geometry: SurfaceGeometry | None = None, background: float = -1.0,
               photo: tuple | None = None, **normalization) -> DCEImage:
    """Render ``mesh`` seen by ``camera`` as a ``size`` x ``size`` DCE image.

    ``geometry`` (from :func:`surface_geometry`) is computed when not given;
    pass it to render many poses of one mesh at the cost of one. Keyword
    arguments ``depth_reference``, ``depth_scale`` and ``curvature_scale`` set
    the normalization (see :func:`vertex_channels`).

    ``photo`` = (image (H, W, 3) uint8 or float in [0, 1], the camera that
    maps the mesh onto its pixels) gives the r, g, b channels per pixel: the
    photo sampled bilinearly where the pixel's surface point projects in it,
    so they keep the photo's detail whatever the vertex spacing. Without it
    they interpolate ``mesh.colors``.
    """
    if geometry is None:
        geometry = surface_geometry(mesh)
    names = resolve_channels(channels)
    from_photo = [k for k, name in enumerate(names) if photo is not None and name in "rgb"]
    from_vertices = [k for k in range(len(names)) if k not in from_photo]
    P, values, vertex_offset, vertex_scale = vertex_channels(
        mesh, camera, geometry, [names[k] for k in from_vertices], **normalization)
    if from_photo:
        # Both projections are affine in the model frame, so a pixel's photo
        # coordinates are exactly the linear interpolation of its triangle's.
        values = np.column_stack([values, photo[1].project(mesh.vertices)[:, :2]])
    raster, mask = rasterize(P, mesh.faces, values, size, size)
    image = np.empty((size, size, len(names)), np.float32)
    image[..., from_vertices] = raster[..., :len(from_vertices)]
    offset, scale = np.full(len(names), COLOR_OFFSET), np.full(len(names), COLOR_SCALE)
    offset[from_vertices], scale[from_vertices] = vertex_offset, vertex_scale
    if from_photo:
        rgb = sample_image_bilinear(photo[0], raster[mask][:, -2:])
        inside = image[mask]
        inside[:, from_photo] = 2.0 * rgb[:, ["rgb".index(names[k]) for k in from_photo]] - 1.0
        image[mask] = inside
    image[~mask] = background
    return DCEImage(image, mask, names, offset, scale, camera)


def preview_image(dce: DCEImage) -> np.ndarray:
    """An (H, W * k, 3) uint8 strip: each channel in grey (RGB channels together
    in colour) and a headlight-shaded view (cos of the elevation) when the
    elevation channel is present. Background is black."""
    names = list(dce.channels)
    panels = []
    for i, name in enumerate(names):
        if name in "gb":
            continue
        if name == "r" and {"g", "b"} <= set(names):
            rgb = np.stack([dce.image[..., names.index(c)] for c in "rgb"], axis=-1)
            panels.append((rgb + 1.0) / 2.0)
            continue
        v = dce.image[..., i]
        if dce.mask.any():  # stretch the depth to the face's own range for contrast
            lo, hi = (v[dce.mask].min(), v[dce.mask].max()) if name == "depth" else (-1.0, 1.0)
            v = (v - lo) / max(hi - lo, 1e-12)
        panels.append(np.repeat(v[..., None], 3, axis=-1))
    if "elevation" in names:
        theta = (1.0 - dce.image[..., names.index("elevation")]) * np.pi / 2
        panels.append(np.repeat(np.clip(np.cos(theta), 0, 1)[..., None], 3, axis=-1))
    strip = np.concatenate([np.where(dce.mask[..., None], np.clip(p, 0, 1), 0.0)
                            for p in panels], axis=1)
    return (strip * 255 + 0.5).astype(np.uint8)


def save_png(path, picture) -> Path:
    """Write ``picture`` (a PIL image, or an (H, W) / (H, W, 3) uint8 array)
    to ``path`` as PNG, whole (:func:`dce.geom.records.atomic_path`),
    creating the folder: geom's one PNG writer."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    with atomic_path(path, ".png") as tmp:
        picture.save(tmp, format="PNG")
    return path


def save_preview(path, images: Sequence[DCEImage], labels: Sequence[str] | None = None) -> Path:
    """Write a PNG grid: one row per DCE image (see :func:`preview_image`),
    with an optional text label per row."""
    from PIL import Image, ImageDraw

    rows = [preview_image(d) for d in images]
    width = max(r.shape[1] for r in rows)
    grid = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])
    picture = Image.fromarray(grid)
    if labels:
        draw = ImageDraw.Draw(picture)
        y = 0
        for r, label in zip(rows, labels):
            draw.text((4, y + 4), str(label), fill=(255, 80, 80))
            y += r.shape[0]
    return save_png(path, picture)


def shaded_image(mesh: Mesh, camera: OrthographicCamera, size: int) -> np.ndarray:
    """(size, size) uint8 headlight shading of ``mesh`` seen by ``camera``:
    the cosine of the angle between the vertex normal and the direction
    toward the viewer; background 0."""
    geometry = SurfaceGeometry(normals_mod.vertex_normals(mesh.vertices, mesh.faces),
                               np.zeros(mesh.n_vertices))
    img = render_dce(mesh, camera, size, ("elevation",), geometry)
    theta = (1.0 - img.image[..., 0]) * np.pi / 2
    light = np.where(img.mask, np.clip(np.cos(theta), 0.0, 1.0), 0.0)
    return (light * 255 + 0.5).astype(np.uint8)


def save_shaded(path, meshes: Sequence[Mesh], cameras: Sequence[OrthographicCamera],
                labels: Sequence[str], image_size: int, size: int = 256) -> Path:
    """Write a PNG of ``meshes`` shaded side by side (see
    :func:`shaded_image`), each seen by its camera, the camera of an
    ``image_size`` px image, resampled to max(size, image_size) px; panels
    are 4 px apart, each with its label."""
    from PIL import Image, ImageDraw

    preview = max(image_size, size)
    centre = (image_size - 1) / 2.0
    panels = [shaded_image(m, crop_camera(c, (centre, centre), image_size, preview), preview)
              for m, c in zip(meshes, cameras)]
    grey = np.concatenate([np.pad(p, ((0, 0), (0, 4))) for p in panels], axis=1)
    picture = Image.fromarray(grey).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for k, label in enumerate(labels):
        draw.text((4 + k * (preview + 4), 4), label, fill=(255, 80, 80))
    return save_png(path, picture)
