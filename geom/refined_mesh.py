"""The meshes of one refinement: a coarse DCE image and the network's refined
image of it in, the refined 3D mesh and its landmarks out (what
``dce-refine`` writes and ``dce-demo`` scores in 3D), in the coarse mesh's
frame, in mm. The network stays outside this module: any refiner object is
called on plain arrays.

See docs/geometry.md (new triangulation or kept topology, landmarks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dce import DCEImage
from .reconstruct import depth_image_mesh, displace_along_view, merge_with_coarse, move_with_surface
from .records import Mesh


def refine_dce_image(refiner, coarse: DCEImage, foreground_above: float) -> DCEImage:
    """The refined DCEImage of ``coarse`` (with the refiner's input
    channels): ``refiner`` maps a (C_in, H, W) float array to a (C_out, H, W)
    one and names its ``output_channels``; the output is read in the coarse
    image's normalization and camera, and a pixel is surface where its
    depth is at least ``foreground_above`` (the network's background
    threshold, ``dce.gan.h5format.FOREGROUND_ABOVE``)."""
    out = np.asarray(refiner(coarse.image.transpose(2, 0, 1))).transpose(1, 2, 0)
    channels = tuple(refiner.output_channels)
    like = coarse.select(channels)
    mask = out[..., channels.index("depth")] >= foreground_above
    return DCEImage(np.ascontiguousarray(out), mask, like.channels, like.offset, like.scale,
                    coarse.camera)


@dataclass
class RefinedMeshes:
    """The ``refined`` mesh and the ``coarse`` mesh it replaces (the one
    written beside it), their landmarks (k, 3) mm when known, the per-vertex
    move ``displacement`` (n,) mm (keeping the topology: + toward the
    viewer) and a line saying how the refined mesh was made."""

    refined: Mesh
    coarse: Mesh
    how: str
    coarse_landmarks: np.ndarray | None = None
    refined_landmarks: np.ndarray | None = None
    displacement: np.ndarray | None = None


def refine_meshes(coarse_mesh: Mesh, coarse_image: DCEImage, refined_image: DCEImage,
                  colors: np.ndarray | None = None, landmarks: np.ndarray | None = None,
                  keep_topology: bool = False, base: Mesh | None = None,
                  movable: np.ndarray | None = None, max_jump_mm: float | None = None,
                  blend_mm: float | None = None) -> RefinedMeshes:
    """The refined mesh of a refinement, in the frame of
    ``coarse_image.camera`` (mm).

    ``coarse_mesh``: the coarse surface the coarse image shows (e.g. the
    :func:`~dce.geom.reconstruct.depth_image_mesh` of its depth);
    ``coarse_image``, ``refined_image``: DCEImages with a ``depth`` channel
    and the same camera; ``colors`` (H, W, 3) in [0, 1] or None: the refined
    grid's vertex colours; ``landmarks`` (k, 3) mm on the coarse surface or
    None. Plain (``keep_topology=False``): the refined depth pixels
    triangulated, joined to ``coarse_mesh`` where they are missing.
    ``keep_topology``: ``base`` (default ``coarse_mesh``; e.g. a whole 3DMM
    mesh of which ``movable`` (n,) bool vertices were rendered) with its seen
    vertices moved along their view rays onto the refined depth, blended
    over ``blend_mm``. Either way the landmarks move with that view-ray
    move of the surface they lie on (``base``, or ``coarse_mesh``).
    ``max_jump_mm``, ``blend_mm``: see :mod:`dce.geom.reconstruct` (None:
    5 and 3 pixel pitches)."""
    camera = coarse_image.camera
    if not keep_topology:
        base, movable = coarse_mesh, None
    elif base is None:
        base = coarse_mesh
    moved = displacement = refined_landmarks = None
    if keep_topology or landmarks is not None:
        correction = refined_image.physical("depth") - coarse_image.physical("depth")
        moved, displacement = displace_along_view(
            base, correction, refined_image.mask & coarse_image.mask, camera, movable,
            max_jump_mm, blend_mm)
    if landmarks is not None:
        refined_landmarks = move_with_surface(landmarks, base, moved.vertices)
    if keep_topology:
        how = (f"the coarse mesh's topology, {int((displacement != 0).sum())} vertices moved "
               f"along their view rays, the largest by {np.abs(displacement).max():.3f} mm")
        return RefinedMeshes(moved, base, how, landmarks, refined_landmarks, displacement)
    grid, pixels = depth_image_mesh(refined_image.physical("depth"), refined_image.mask, camera,
                                    max_jump_mm, colors)
    region = np.zeros(refined_image.mask.shape, dtype=bool)
    region[pixels[:, 0], pixels[:, 1]] = True
    refined, kept = merge_with_coarse(grid, region, coarse_mesh, camera, max_jump_mm)
    how = f"{grid.n_faces} from the refined depth, {int(kept.sum())} kept from the coarse mesh"
    return RefinedMeshes(refined, coarse_mesh, how, landmarks, refined_landmarks)
