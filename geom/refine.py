"""Refining a coarse face with a trained checkpoint: the library side of
``dce-refine`` (and of ``dce-demo``'s refined meshes). The coarse side
(:class:`CoarseFace`) comes from a pair file's sample or a rendered mesh;
:func:`refine` runs the network and builds the refined mesh, and
:func:`save_refinement` writes ``dce-refine``'s files.

See docs/geometry.md (the steps, a usage example).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dce.gan.configs import channel_indices
from dce.gan.h5format import (
    FOREGROUND_ABOVE,
    PairFileError,
    check_normalization,
    normalization,
    validate,
)

from . import dataset
from .dataset import BuildConfig
from .dce import DCEImage, save_preview, save_shaded
from .landmark_formats import write_landmarks
from .mesh_eval import signed_colors, write_scalar_ply
from .mesh_formats import save_mesh
from .projection import OrthographicCamera, write_camera
from .reconstruct import depth_image_mesh
from .records import IBUG68_NOSE_TIP, Landmarks, Mesh, PathLike
from .refined_mesh import RefinedMeshes, refine_dce_image, refine_meshes
from .refit import FaceFit, face_vertices, model_coefficients, pivoted_camera, place_refit
from .store import SampleImages, read_sample

_BUILD = BuildConfig()
# The build settings a caller may give for a mesh's view, which must agree
# with the checkpoint's (the network reads the image in those units).
VIEW_KEYS = ("depth_scale", "curvature_scale", "curvature", "margin")


@dataclass(frozen=True)
class ViewSettings:
    """How a mesh is rendered for a checkpoint: the image ``size`` in px,
    the face box ``margin``, the depth and curvature channels' scales and
    kind, and the crop sphere's ``crop_radius`` (mm), as the pair file it
    was trained on was built. ``defaulted``: the settings the checkpoint
    does not record (trained before dce stored them), taken from the
    build's defaults."""

    size: int
    margin: float
    depth_scale: float
    curvature_scale: float
    curvature: str
    crop_radius: float
    defaulted: tuple = ()


def view_settings(model_normalization: Mapping | None, size: int | None = None, *,
                  model_name: PathLike = "the checkpoint", given_name: str | None = None,
                  **given) -> ViewSettings:
    """The :class:`ViewSettings` of a checkpoint whose normalization is
    ``model_normalization`` (``Refiner.normalization``: a pair file's
    :func:`dce.gan.h5format.normalization`; None for a checkpoint from
    before dce stored it). ``size`` and the :data:`VIEW_KEYS` ``given``
    (None: unset) override; the rest come from the checkpoint, else from
    the build's defaults. A given value other than the checkpoint's is
    refused (:class:`dce.gan.h5format.NormalizationMismatch` naming
    ``model_name``, ``given_name`` and both values)."""
    unknown = set(given) - set(VIEW_KEYS)
    if unknown:
        raise TypeError(f"view_settings: unknown settings {sorted(unknown)}")
    given = {key: value for key, value in given.items() if value is not None}
    check_normalization(model_normalization, given, model_name,
                        given_name or f"the settings given ({given})")
    known = dict(model_normalization or {})
    if "size" in known:
        known["size"] = known["size"][0]
    values = {**given, "size": size} if size is not None else dict(given)
    unset = [key for key in (*VIEW_KEYS, "size") if key not in values]
    for key in unset:
        values[key] = known.get(key, getattr(_BUILD, key))
    return ViewSettings(crop_radius=known.get("crop_radius", _BUILD.crop_radius),
                        defaulted=tuple(key for key in unset if key not in known), **values)


@dataclass
class CoarseFace:
    """The coarse side of one refinement: the coarse surface ``mesh`` (mm,
    in the frame ``image.camera`` maps to pixels), its DCE ``image`` with
    the refiner's input channels, the refined grid's vertex ``colors``
    (H, W, 3) in [0, 1] or None, and the ``target`` DCEImage when known (a
    pair file's ground truth). Keeping the topology moves ``base`` (default
    ``mesh``; e.g. the whole input mesh of which ``movable`` (n,) bool
    vertices were rendered); ``landmarks`` (k, 3) mm on that surface, or
    None, move with it. ``sample``: the pair file's sample it came from."""

    mesh: Mesh
    image: DCEImage
    colors: np.ndarray | None = None
    target: DCEImage | None = None
    base: Mesh | None = None
    movable: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    sample: SampleImages | None = None


def coarse_from_pairs(pairs: PathLike, refiner, sample: None | str | int = None, *,
                      max_jump_mm: float | None = None,
                      model_name: PathLike = "the checkpoint") -> CoarseFace:
    """The coarse side of sample ``sample`` of the pair file ``pairs`` (its
    id, its row, or None: the first of the test split; see
    :func:`dce.geom.store.read_sample`) for ``refiner``
    (``dce.gan.inference.Refiner``, ``model_name`` its checkpoint in
    messages): the coarse image and the target with the refiner's input
    channels, the coarse mesh its depth pixels triangulated (``max_jump_mm``:
    see :func:`dce.geom.reconstruct.depth_image_mesh`), coloured by the
    file's r, g, b channels when it has them. PairFileError naming the file
    for a missing sample or an empty coarse image; NormalizationMismatch
    when the file was built with another normalization than the
    checkpoint's; ValueError naming both when the file lacks the channels
    the checkpoint reads."""
    images = read_sample(pairs, sample)
    check_normalization(refiner.normalization, normalization(validate(pairs)), model_name,
                        pairs)
    source = f"{pairs} (for {model_name}, {refiner.settings.config})"
    channels = refiner.input_channels
    for side in (images.coarse, images.target):  # the missing channels, named with the file
        channel_indices(channels, side.channels, source)
    image, target = images.coarse.select(channels), images.target.select(channels)
    rgb = images.coarse.rgb()  # from all the file's channels
    mesh, _ = depth_image_mesh(image.physical("depth"), image.mask, image.camera, max_jump_mm,
                               rgb)
    if mesh.n_faces == 0:
        raise PairFileError(f"{pairs}: sample {images.sample_id} has no coarse surface to "
                            "refine (empty depth image)")
    return CoarseFace(mesh, image, rgb, target, sample=images)


def coarse_from_mesh(mesh: Mesh, refiner, settings: ViewSettings, *,
                     camera: OrthographicCamera | None = None,
                     landmarks_2d: np.ndarray | None = None,
                     photo: np.ndarray | None = None,
                     landmarks_3d: np.ndarray | None = None,
                     model_name: PathLike = "the checkpoint") -> CoarseFace:
    """The coarse side of ``mesh`` (mm) for ``refiner``, rendered with
    ``settings`` as ``dce-build`` renders a pair's side: seen by ``camera``
    (the DCE image's), or framed on 68 photo landmarks ``landmarks_2d``
    (68, 2) px with the camera fitted from them and the mesh's landmarks
    ``landmarks_3d`` (68, 3) mm, coloured by ``photo`` (H, W, 3) uint8 when
    given (see :func:`dce.geom.dataset.prepare_view`). The mesh is cropped
    when its landmarks are known; keeping the topology then moves the whole
    ``mesh``, its cropped vertices ``movable``. ValueError when the size is
    not a multiple of the refiner's resolution, the landmarks do not fit,
    the mesh is out of view, or the refiner reads colour the mesh lacks."""
    if settings.size % refiner.resolution:
        raise ValueError(f"image size {settings.size} px is not a multiple of the resolution "
                         f"of {model_name} ({refiner.resolution} px)")
    side, view = dataset.prepare_view(mesh, landmarks_3d, camera, landmarks_2d, photo,
                                      settings.size, settings.curvature, settings.margin,
                                      radius=settings.crop_radius)
    image, rgb = dataset.render_view(side, view, settings.size, refiner.input_channels,
                                     depth_scale=settings.depth_scale,
                                     curvature_scale=settings.curvature_scale)
    index = getattr(side.mesh, "vertex_index", None)  # set when the view was cropped
    movable = None
    if index is not None:
        movable = np.zeros(mesh.n_vertices, dtype=bool)
        movable[index] = True
    return CoarseFace(side.mesh, image, rgb, base=mesh, movable=movable,
                      landmarks=side.landmarks_3d)


def refit_mesh(mesh: Mesh, refit_map, model, settings: ViewSettings, *,
               camera: OrthographicCamera | None = None,
               landmarks_2d: np.ndarray | None = None,
               landmarks_3d: np.ndarray | None = None, name: PathLike = "the mesh") -> tuple:
    """The learned re-fit (:mod:`dce.geom.refit`, ``dce-refit``'s map
    ``refit_map``) of ``mesh``, a face of ``model``, for
    :func:`coarse_from_mesh`: (the re-fit mesh, its 68 landmarks with the
    nose tip at its pivot, the camera to render it with). The photo view is
    the one :func:`coarse_from_mesh` would render the mesh with (``camera``,
    or framed on ``landmarks_2d`` and ``landmarks_3d``). ValueError when
    the map was learned on images framed otherwise than ``settings``."""
    if refit_map.image_size and (refit_map.image_size != settings.size
                                 or (landmarks_2d is not None
                                     and not np.isclose(refit_map.margin, settings.margin))):
        raise ValueError(f"the re-fit map was learned on {refit_map.image_size} px images framed "
                         f"with margin {refit_map.margin}, and this view is {settings.size} px "
                         f"with margin {settings.margin}: its camera features would not apply")
    _, view = dataset.prepare_view(mesh, landmarks_3d, camera, landmarks_2d, None,
                                   settings.size, settings.curvature, settings.margin,
                                   radius=settings.crop_radius)
    identity, expression = model_coefficients(model, mesh.vertices, name)
    coarse = FaceFit(identity, expression)
    anchor = None if landmarks_3d is None else np.asarray(landmarks_3d)[IBUG68_NOSE_TIP]
    placed = place_refit(model, refit_map.predict(identity, expression, view), coarse, view,
                         settings.size, anchor=anchor)
    V = face_vertices(model, placed.fit)
    landmarks = V[model.landmarks_68] if model.landmarks_68 is not None else None
    if landmarks is not None:
        landmarks[IBUG68_NOSE_TIP] = placed.pivot
    return (Mesh(V, model.faces), landmarks,
            pivoted_camera(view, placed.pivot, placed.anchor))


@dataclass
class Refinement:
    """What :func:`refine` made: the ``coarse_image`` and the network's
    ``refined_image`` (the same camera and normalization), the ``target``
    when known, the refined ``meshes`` (:class:`dce.geom.refined_mesh.RefinedMeshes`)
    and, with a target, the depth MAE in mm of the coarse and the refined
    image over the target's ``face_pixels`` (:func:`depth_mae`)."""

    coarse_image: DCEImage
    refined_image: DCEImage
    meshes: RefinedMeshes
    target: DCEImage | None = None
    coarse_mae_mm: float | None = None
    refined_mae_mm: float | None = None
    face_pixels: int = 0

    @property
    def camera(self) -> OrthographicCamera:
        """The DCE images' camera; the meshes are in the frame it maps to pixels."""
        return self.coarse_image.camera


def depth_mae(coarse: DCEImage, refined: DCEImage, target: DCEImage) -> tuple:
    """(coarse MAE, refined MAE, pixels): the depth MAE in mm over the
    target's face pixels (``dce-eval``'s face MAE at the image's full size)
    of the coarse and the refined image, and the number of those pixels."""
    import torch

    from dce.gan.evaluate import image_mae

    depth = [torch.from_numpy(d.image[None, ..., d.channels.index("depth")])
             for d in (coarse, refined, target)]
    mm = abs(float(target.scale[target.channels.index("depth")]))
    maes = [float(image_mae(x, depth[2], face_only=True)[0]) * mm for x in depth[:2]]
    return maes[0], maes[1], int((depth[2] >= FOREGROUND_ABOVE).sum())


def refine(refiner, coarse: CoarseFace, *, keep_topology: bool = False,
           max_jump_mm: float | None = None, blend_mm: float | None = None,
           model_name: PathLike = "the checkpoint") -> Refinement:
    """Refine ``coarse`` with ``refiner`` (``dce.gan.inference.Refiner``, or
    any callable mapping (C_in, H, W) to (C_out, H, W) with
    ``output_channels``): the refined image, in the coarse image's
    normalization and camera, and the refined mesh
    (:func:`dce.geom.refined_mesh.refine_meshes`: a new mesh from the
    refined depth pixels joined to the coarse mesh, or with
    ``keep_topology`` the coarse ``base`` with its seen vertices moved onto
    the refined depth; landmarks moved with the surface). ``max_jump_mm``,
    ``blend_mm``: see :mod:`dce.geom.reconstruct` (None: 5 and 3 pixel
    pitches). ValueError naming ``model_name`` when the network cannot read
    the image (e.g. a size its detail stage was not trained at)."""
    try:
        refined_image = refine_dce_image(refiner, coarse.image, FOREGROUND_ABOVE)
    except ValueError as error:
        raise ValueError(f"{model_name}: {error}") from None
    meshes = refine_meshes(coarse.mesh, coarse.image, refined_image, coarse.colors,
                           coarse.landmarks, keep_topology, coarse.base, coarse.movable,
                           max_jump_mm, blend_mm)
    result = Refinement(coarse.image, refined_image, meshes, coarse.target)
    if coarse.target is not None:
        result.coarse_mae_mm, result.refined_mae_mm, result.face_pixels = depth_mae(
            coarse.image, refined_image, coarse.target)
    return result


@dataclass
class RefinementFiles:
    """The files :func:`save_refinement` wrote: the ``refined`` and
    ``coarse`` meshes, then the ``others`` (landmarks, displacement PLY,
    DCE preview, shaded side by side, camera JSON; those written)."""

    refined: Path
    coarse: Path
    others: list = field(default_factory=list)


def save_refinement(out: PathLike, result: Refinement, mesh_format: str = "ply", *,
                    landmarks_out: PathLike | None = None, displacement_ply: bool = False,
                    max_jump_mm: float | None = None) -> RefinementFiles:
    """Write ``result`` to the folder ``out`` (made if missing):
    ``refined.<mesh_format>`` and ``coarse.<mesh_format>`` (ply or obj);
    with landmarks, ``coarse.landmarks.txt`` and ``refined.landmarks.txt``
    (or ``landmarks_out``), 68 x y z; with ``displacement_ply`` (a
    keep-topology result), ``displacement.ply``, the refined mesh with each
    vertex's move (mm, + toward the viewer) as ``displacement_mm`` and as
    colours; ``refined_dce.png`` (coarse, refined and target DCE images),
    ``side_by_side.png`` (the meshes shaded; the target's depth pixels
    triangulated with ``max_jump_mm``) and ``camera.json``."""
    built = result.meshes
    if displacement_ply and built.displacement is None:
        raise ValueError("save_refinement: displacement_ply needs a keep-topology refinement")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = RefinementFiles(out / f"refined.{mesh_format}", out / f"coarse.{mesh_format}")
    save_mesh(files.refined, built.refined)
    save_mesh(files.coarse, built.coarse)
    if built.coarse_landmarks is not None:
        landmark_paths = (out / "coarse.landmarks.txt",
                          Path(landmarks_out or out / "refined.landmarks.txt"))
        landmark_paths[1].parent.mkdir(parents=True, exist_ok=True)
        for path, points in zip(landmark_paths, (built.coarse_landmarks,
                                                 built.refined_landmarks)):
            write_landmarks(path, Landmarks(points))
        files.others += landmark_paths
    if displacement_ply:
        d = built.displacement
        files.others.append(write_scalar_ply(out / "displacement.ply", built.refined.vertices,
                                             built.refined.faces, {"displacement_mm": d},
                                             signed_colors(d)))
    camera_path = write_camera(out / "camera.json", result.camera)
    rows, labels = [result.coarse_image, result.refined_image], ["coarse", "refined"]
    meshes, cameras = [built.coarse, built.refined], [result.camera, result.camera]
    target = result.target
    if target is not None:
        rows.append(target)
        labels.append("target")
        meshes.append(depth_image_mesh(target.physical("depth"), target.mask, target.camera,
                                       max_jump_mm)[0])
        cameras.append(target.camera)
    files.others.append(save_preview(out / "refined_dce.png", rows, labels))
    files.others.append(save_shaded(out / "side_by_side.png", meshes, cameras, labels,
                                    result.coarse_image.mask.shape[0]))
    files.others.append(camera_path)
    return files
