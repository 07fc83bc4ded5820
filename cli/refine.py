"""dce-refine: refine a coarse face with a trained checkpoint and write the
refined 3D mesh.

Inputs (one of):

  dce-refine CKPT --pairs FILE.h5 [--sample ID_OR_INDEX]
      the coarse DCE image, its camera and normalization from a dce-build
      pair file (default: the first sample of the test split); the depth MAE
      against the file's target is printed.
  dce-refine CKPT --mesh COARSE.ply --camera CAMERA.json
      render the mesh with a given camera (the JSON written as camera.json by
      an earlier run: scale, rotation, translation); --landmarks-3d, when
      given, crops the face and anchors the depth on the nose tip.
  dce-refine CKPT --mesh COARSE.ply --landmarks PHOTO.pts --landmarks-3d L3D
  dce-refine CKPT --mesh COARSE.ply --photo PHOTO.jpg --landmarks-3d L3D
      fit the camera from 68 photo landmarks (read, or detected on the photo
      with face-alignment) and the mesh's 68 landmarks (68 vertex indices,
      .txt/.npy/.npz, or 68 x y z points), crop and frame the face as
      dce-build does, and render it.

The network refines the coarse DCE image; the refined depth pixels are
unprojected with the image's camera and triangulated (dce.geom.reconstruct),
and the coarse surface is kept where the network produced no pixels. Written
to --out: refined.ply (or .obj), coarse.ply (or .obj), refined_dce.png
(coarse and refined DCE images), side_by_side.png (the meshes shaded) and
camera.json (the DCE image's camera, for --camera).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

from dce.geom.dataset import BuildConfig

_BUILD = BuildConfig()


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="dce-refine", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="dce-train checkpoint (e.g. run/last.pt)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", type=Path, default=None, metavar="FILE.h5",
                        help="dce-build pair file to take the coarse image from (default: none)")
    source.add_argument("--mesh", type=Path, default=None, metavar="COARSE",
                        help="coarse mesh (.ply, .obj, .off, .stl, .wrl) in mm (default: none)")
    p.add_argument("--sample", default=None, metavar="ID_OR_INDEX",
                   help="with --pairs: sample id (e.g. 0003/pose0) or row index (default: the "
                        "first sample of the test split)")
    p.add_argument("--camera", type=Path, default=None, metavar="CAMERA.json",
                   help="with --mesh: the DCE image's camera as JSON {scale, rotation, "
                        "translation} (default: none; fit from landmarks instead)")
    p.add_argument("--landmarks", type=Path, default=None, metavar="PTS",
                   help="with --mesh: 68 photo landmarks x y in pixels (.pts, .txt) "
                        "(default: none)")
    p.add_argument("--photo", type=Path, default=None, metavar="IMG",
                   help="with --mesh: photo to detect the 68 landmarks on, and to colour the "
                        "mesh for RGB checkpoints (default: none)")
    p.add_argument("--landmark-weights", type=Path, default=None, metavar="DIR",
                   help="with --photo: folder with the face-alignment weights (default: "
                        "$DCE_FACE_ALIGNMENT_WEIGHTS, then torch's hub cache)")
    p.add_argument("--landmarks-3d", type=Path, default=None, metavar="FILE",
                   help="the mesh's 68 landmarks: vertex indices (.txt one a line, .npy, .npz) "
                        "or x y z points in mm (.txt); required with --landmarks/--photo "
                        "(default: none)")
    p.add_argument("--size", type=int, default=256,
                   help="with --mesh: DCE image size in px, a multiple of the checkpoint's "
                        "resolution (default: 256)")
    p.add_argument("--margin", type=float, default=_BUILD.margin,
                   help="with --landmarks/--photo: face box margin around the landmarks, as in "
                        f"dce-build (default: {_BUILD.margin})")
    p.add_argument("--depth-scale", type=float, default=_BUILD.depth_scale,
                   help="with --mesh: mm of depth per unit of the normalized depth channel; "
                        f"use the pair file's value (default: {_BUILD.depth_scale})")
    p.add_argument("--curvature-scale", type=float, default=_BUILD.curvature_scale,
                   help="with --mesh: 1/mm of mean curvature per unit of the curvature channel "
                        f"(default: {_BUILD.curvature_scale})")
    p.add_argument("--curvature", default=_BUILD.curvature, choices=["mean", "absolute"],
                   help=f"with --mesh: curvature channel kind (default: {_BUILD.curvature})")
    p.add_argument("--max-jump-mm", type=float, default=None,
                   help="depth spread in mm above which a triangle of the refined grid spans a "
                        "discontinuity and is dropped (default: 5 pixel pitches of the image)")
    p.add_argument("-o", "--out", type=Path, default=Path("dce_refined"),
                   help="output folder (default: dce_refined)")
    p.add_argument("--format", default="ply", choices=["ply", "obj"],
                   help="mesh file format (default: ply)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = p.parse_args(argv)
    if args.mesh is not None:
        given = [o for o, v in (("--camera", args.camera), ("--landmarks", args.landmarks),
                                ("--photo", args.photo)) if v is not None]
        if len(given) != 1:
            p.error("--mesh needs exactly one of --camera, --landmarks, --photo"
                    + (f" (got {', '.join(given)})" if given else ""))
        if args.camera is None and args.landmarks_3d is None:
            p.error(f"{given[0]} needs --landmarks-3d (the mesh's 68 landmarks)")
    elif any(v is not None for v in (args.camera, args.landmarks, args.photo,
                                     args.landmarks_3d)):
        p.error("--camera, --landmarks, --photo and --landmarks-3d go with --mesh")
    if args.pairs is None and args.sample is not None:
        p.error("--sample goes with --pairs")
    if args.size < 1:
        p.error(f"--size must be a positive number of pixels, got {args.size}")
    if args.max_jump_mm is not None and not args.max_jump_mm > 0:
        p.error(f"--max-jump-mm must be > 0, got {args.max_jump_mm}")
    return args


# ----------------------------------------------------------------- inputs


def load_refiner(checkpoint: Path, device: str):
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.inference import Refiner

    try:
        return Refiner(checkpoint, device)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"{checkpoint}: not a usable dce-train checkpoint "
                              f"({type(error).__name__}: {error})") from None


def camera_from_array(a: np.ndarray):
    """Inverse of ``dce.geom.dataset.camera_array``: (4, 3) -> camera."""
    from dce.geom.projection import OrthographicCamera

    return OrthographicCamera(a[3, 0], a[:3], a[3, 1:])


def _pick_sample(path: Path, f, sample) -> int:
    from dce.gan.h5format import TEST, PairFileError

    ids = list(f["sample_id"].asstr()[()])
    if sample is None:
        test = np.flatnonzero(f["split"][()] == TEST)
        return int(test[0]) if len(test) else 0
    if sample in ids:
        return ids.index(sample)
    if re.fullmatch(r"-?\d+", sample) and -len(ids) <= int(sample) < len(ids):
        return int(sample) % len(ids)
    raise PairFileError(f"{path}: no sample {sample!r} (the file has {len(ids)} samples, ids "
                        f"such as {', '.join(ids[:3])}; give an id or an index 0..{len(ids) - 1})")


def read_pair_sample(path: Path, sample) -> dict:
    """The coarse and target DCE images (all the file's channels) of one
    sample, the coarse colour image (H, W, 3) in [0, 1] when the file has
    r, g, b (else None), and the sample's id, subject and split."""
    from dce.gan.h5format import dequantize, open_pairs
    from dce.geom.dce import DCEImage

    with open_pairs(path) as f:
        channels = tuple(json.loads(f.attrs["channels"]))
        i = _pick_sample(path, f, sample)
        images = {side: DCEImage(np.ascontiguousarray(dequantize(f[side][i]).transpose(1, 2, 0)),
                                 f[side + "_mask"][i].astype(bool), channels,
                                 f[side + "_offset"][i], f[side + "_scale"][i],
                                 camera_from_array(f[side + "_camera"][i]))
                  for side in ("coarse", "target")}
        rgb = None
        if {"r", "g", "b"} <= set(channels):
            rgb = (images["coarse"].image[..., [channels.index(c) for c in "rgb"]] + 1.0) / 2.0
        return {**images, "rgb": rgb, "sample_id": f["sample_id"].asstr()[i],
                "subject": f["subject"].asstr()[i],
                "split": "test" if f["split"][i] else "train"}


def select_channels(image, channels: tuple, source: str):
    """``image`` (a DCEImage) restricted to ``channels``, in that order;
    ValueError naming ``source`` when it lacks some."""
    from dce.gan.configs import channel_indices
    from dce.geom.dce import DCEImage

    pick = channel_indices(channels, image.channels, source)
    return DCEImage(np.ascontiguousarray(image.image[..., pick]), image.mask, tuple(channels),
                    image.offset[pick], image.scale[pick], image.camera)


def read_camera(path: Path):
    from dce.geom.io import FormatError
    from dce.geom.projection import OrthographicCamera

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


def read_landmarks_3d(path: Path, mesh) -> tuple:
    """(68, 3) points in mm and, when the file holds vertex indices, those
    (68,) indices (else None)."""
    from dce.geom.io import FormatError, read_landmarks
    from dce.geom.sources import read_vertex_indices

    if path.suffix.lower() in (".npy", ".npz"):
        indices = read_vertex_indices(path, mesh.n_vertices)
        return mesh.vertices[indices], indices
    try:
        points = read_landmarks(path, expected=68)
    except FormatError:
        indices = read_vertex_indices(path, mesh.n_vertices)
        return mesh.vertices[indices], indices
    if points.dim != 3:
        raise FormatError(f"{path}: holds 68 2D points; --landmarks-3d needs 68 x y z points "
                          "(mm) or 68 vertex indices")
    return points.points, None


def photo_landmarks(path: Path, weights, device: str) -> tuple:
    """(photo (H, W, 3) uint8, its 68 detected landmarks (68, 2) px)."""
    from dce.geom.io import FormatError
    from dce.geom.landmarks import NoFaceError, detect_landmarks, load_image

    photo, _ = load_image(path)
    try:
        return photo, detect_landmarks(photo, weights, device)
    except NoFaceError as error:
        raise FormatError(f"{path}: {error}") from None


def prepare_mesh(args) -> tuple:
    """The --mesh inputs read and checked before the network loads: (the
    coarse side as a ``dataset.PreparedMesh``, cropped when its landmarks
    are known, the DCE image's camera, and the depth reference in mm, or
    None to take it from the landmarks' nose tip as dce-build does)."""
    from dce.geom import dataset, dce
    from dce.geom.crop import crop_mesh
    from dce.geom.io import IBUG68_NOSE_TIP, FormatError, load_mesh, read_landmarks
    from dce.geom.projection import fit_orthographic

    mesh = load_mesh(args.mesh)
    landmarks_3d = indices = None
    if args.landmarks_3d is not None:
        landmarks_3d, indices = read_landmarks_3d(args.landmarks_3d, mesh)
    if args.camera is not None:
        camera = read_camera(args.camera)
    elif args.photo is not None:
        photo, landmarks_2d = photo_landmarks(args.photo, args.landmark_weights, args.device)
    else:
        lm = read_landmarks(args.landmarks, expected=68)
        if lm.dim != 2:
            raise FormatError(f"{args.landmarks}: holds 3D points; --landmarks needs 68 photo "
                              "landmarks x y in pixels")
        landmarks_2d = lm.points
    try:
        if args.camera is not None:
            if landmarks_3d is not None:
                mesh = crop_mesh(mesh, landmarks_3d, radius=_BUILD.crop_radius)
                nose = camera.project(landmarks_3d[IBUG68_NOSE_TIP][None])[0, 2]
            else:  # no landmarks: the nearest vertex stands in for the nose tip
                nose = camera.project(mesh.vertices)[:, 2].min()
            side = dataset.PreparedMesh(mesh, dce.surface_geometry(mesh, args.curvature),
                                        landmarks_3d, camera)
            return side, camera, nose - 10.0  # dataset.render_side's nose margin
        if indices is not None:
            side = dataset.prepare_coarse(mesh, indices, landmarks_2d, args.curvature,
                                          radius=_BUILD.crop_radius)
        else:  # what prepare_coarse does, from 3D points instead of vertex indices
            cropped = crop_mesh(mesh, landmarks_3d, radius=_BUILD.crop_radius)
            side = dataset.PreparedMesh(cropped, dce.surface_geometry(cropped, args.curvature),
                                        landmarks_3d, fit_orthographic(landmarks_2d, landmarks_3d))
    except ValueError as error:
        raise FormatError(f"{args.mesh}: {error}") from None
    if args.photo is not None:
        side.mesh.colors = dataset.sample_photo_colors(side.mesh.vertices, side.camera, photo)
    center, box = dataset.face_box(landmarks_2d, args.margin)
    camera = dataset.posed_view(side, landmarks_2d[IBUG68_NOSE_TIP], center, box, args.size)
    return side, camera, None


def render_mesh(args, side, camera, reference, channels: tuple) -> tuple:
    """(the coarse DCE image with ``channels``, the colour image (H, W, 3)
    in [0, 1] when the mesh has colours, else None)."""
    from dce.geom import dataset, dce
    from dce.geom.io import FormatError

    normalization = {"depth_scale": args.depth_scale, "curvature_scale": args.curvature_scale}
    try:
        if reference is None:
            image = dataset.render_side(side, camera, args.size, channels, **normalization)
        else:
            image = dce.render_dce(side.mesh, camera, args.size, channels, side.geometry,
                                   depth_reference=reference, **normalization)
    except ValueError as error:  # e.g. RGB channels of a mesh without colours
        raise FormatError(f"{args.mesh}: {error}") from None
    if not image.mask.any():
        raise FormatError(f"{args.mesh}: the mesh is not in view of the camera (empty "
                          f"{args.size}x{args.size} image)")
    rgb = None
    if side.mesh.colors is not None:
        rgb_image = dce.render_dce(side.mesh, camera, args.size, ("r", "g", "b"), side.geometry)
        rgb = (rgb_image.image + 1.0) / 2.0
    return image, rgb


def read_inputs(args):
    """The input files, read and checked before the network loads."""
    if args.pairs is not None:
        return read_pair_sample(args.pairs, args.sample)
    return prepare_mesh(args)


def coarse_inputs(args, inputs, refiner) -> tuple:
    """(coarse mesh, coarse DCEImage with the checkpoint's input channels,
    target DCEImage or None, colour image or None)."""
    from dce.gan.h5format import PairFileError
    from dce.geom.reconstruct import depth_image_mesh

    channels = refiner.input_channels
    if args.mesh is not None:
        if args.size % refiner.resolution:
            raise ValueError(f"--size {args.size} is not a multiple of the resolution of "
                             f"{args.checkpoint} ({refiner.resolution} px)")
        side, camera, reference = inputs
        image, rgb = render_mesh(args, side, camera, reference, channels)
        print(f"{args.mesh}: {side.mesh.n_vertices} vertices"
              + (" after cropping" if side.landmarks_3d is not None else "")
              + f", rendered at {args.size} px")
        return side.mesh, image, None, rgb
    source = f"{args.pairs} (for {args.checkpoint}, {refiner.settings.config})"
    image, target = (select_channels(inputs[k], channels, source) for k in ("coarse", "target"))
    mesh, _ = depth_image_mesh(image.physical("depth"), image.mask, image.camera,
                               args.max_jump_mm, inputs["rgb"])
    if mesh.n_faces == 0:
        raise PairFileError(f"{args.pairs}: sample {inputs['sample_id']} has no coarse surface "
                            "to refine (empty depth image)")
    print(f"{args.pairs}: sample {inputs['sample_id']} (subject {inputs['subject']}, "
          f"{inputs['split']} split), {image.mask.shape[0]} px")
    return mesh, image, target, inputs["rgb"]


# ----------------------------------------------------------------- outputs


def refine_image(refiner, coarse):
    """The refined DCEImage: the network's output channels, in the coarse
    image's normalization and camera; background where the output is."""
    from dce.gan.data import FOREGROUND_ABOVE
    from dce.geom.dce import DCEImage

    out = refiner(coarse.image.transpose(2, 0, 1)).transpose(1, 2, 0)
    pick = [coarse.channels.index(c) for c in refiner.output_channels]
    mask = out[..., refiner.output_channels.index("depth")] >= FOREGROUND_ABOVE
    return DCEImage(np.ascontiguousarray(out), mask, tuple(refiner.output_channels),
                    coarse.offset[pick], coarse.scale[pick], coarse.camera)


def shaded(mesh, camera, size: int, preview: int) -> np.ndarray:
    """(preview, preview) uint8 headlight shading (cosine of the angle
    between the vertex normal and the view direction) of ``mesh`` seen by
    ``camera`` (the camera of a ``size`` px image, rescaled)."""
    from dce.geom.dce import SurfaceGeometry, render_dce
    from dce.geom.normals import vertex_normals
    from dce.geom.projection import crop_camera

    centre = (size - 1) / 2.0
    view = crop_camera(camera, (centre, centre), size, preview)
    geometry = SurfaceGeometry(vertex_normals(mesh.vertices, mesh.faces),
                               np.zeros(mesh.n_vertices))
    img = render_dce(mesh, view, preview, ("elevation",), geometry)
    theta = (1.0 - img.image[..., 0]) * np.pi / 2
    light = np.where(img.mask, np.clip(np.cos(theta), 0.0, 1.0), 0.0)
    return (light * 255 + 0.5).astype(np.uint8)


def write_side_by_side(path: Path, panels: list, labels: list) -> Path:
    from PIL import Image, ImageDraw

    grey = np.concatenate([np.pad(p, ((0, 0), (0, 4))) for p in panels], axis=1)
    picture = Image.fromarray(grey).convert("RGB")
    draw = ImageDraw.Draw(picture)
    for k, label in enumerate(labels):
        draw.text((4 + k * (panels[0].shape[1] + 4), 4), label, fill=(255, 80, 80))
    picture.save(path)
    return path


def depth_mae(coarse, refined, target) -> tuple:
    """Depth MAE in mm over the target's face pixels (as dce-eval's face
    MAE, at the image's full size) of the coarse and the refined image,
    and the number of those pixels."""
    import torch

    from dce.gan.data import FOREGROUND_ABOVE
    from dce.gan.evaluate import image_mae

    d_in, d_out = coarse.channels.index("depth"), refined.channels.index("depth")
    y = torch.from_numpy(target.image[None, ..., target.channels.index("depth")])
    mm = abs(float(target.scale[target.channels.index("depth")]))
    maes = [float(image_mae(torch.from_numpy(x[None]), y, face_only=True)[0]) * mm
            for x in (coarse.image[..., d_in], refined.image[..., d_out])]
    return maes[0], maes[1], int((y >= FOREGROUND_ABOVE).sum())


def write_outputs(args, coarse_mesh, coarse_image, refined_image, target, rgb) -> None:
    """Reconstruct the refined mesh and write the meshes, camera and PNGs."""
    from dce.geom.dce import save_preview
    from dce.geom.io import save_mesh
    from dce.geom.reconstruct import depth_image_mesh, merge_with_coarse

    camera = coarse_image.camera
    grid, pixels = depth_image_mesh(refined_image.physical("depth"), refined_image.mask, camera,
                                    args.max_jump_mm, rgb)
    region = np.zeros(refined_image.mask.shape, dtype=bool)
    region[pixels[:, 0], pixels[:, 1]] = True
    refined_mesh, kept = merge_with_coarse(grid, region, coarse_mesh, camera, args.max_jump_mm)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    refined_path, coarse_path = out / f"refined.{args.format}", out / f"coarse.{args.format}"
    save_mesh(refined_path, refined_mesh)
    save_mesh(coarse_path, coarse_mesh)
    camera_path = out / "camera.json"
    camera_path.write_text(json.dumps(camera.to_dict(), indent=1) + "\n", encoding="utf-8")
    rows, labels = [coarse_image, refined_image], ["coarse", "refined"]
    size = coarse_image.mask.shape[0]
    preview = max(size, 256)
    panels = [shaded(coarse_mesh, camera, size, preview),
              shaded(refined_mesh, camera, size, preview)]
    if target is not None:
        rows.append(target)
        labels.append("target")
        target_mesh, _ = depth_image_mesh(target.physical("depth"), target.mask, target.camera,
                                          args.max_jump_mm)
        panels.append(shaded(target_mesh, target.camera, size, preview))
    dce_png = save_preview(out / "refined_dce.png", rows, labels)
    side_png = write_side_by_side(out / "side_by_side.png", panels, labels)

    if target is not None:
        coarse_mae, refined_mae, n = depth_mae(coarse_image, refined_image, target)
        print(f"depth MAE over the target's {n} face pixels: coarse {coarse_mae:.3f} mm, "
              f"refined {refined_mae:.3f} mm")
    print(f"wrote {refined_path}: {refined_mesh.n_vertices} vertices, {refined_mesh.n_faces} "
          f"faces ({grid.n_faces} from the refined depth, {int(kept.sum())} kept from the "
          "coarse mesh)")
    print(f"wrote {coarse_path}: {coarse_mesh.n_vertices} vertices, {coarse_mesh.n_faces} faces")
    print(f"wrote {dce_png}, {side_png}, {camera_path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.h5format import PairFileError
    from dce.geom.io import FormatError
    from dce.geom.landmarks import MissingWeightsError

    try:
        inputs = read_inputs(args)
        refiner = load_refiner(args.checkpoint, args.device)
        coarse_mesh, coarse_image, target, rgb = coarse_inputs(args, inputs, refiner)
        try:
            refined_image = refine_image(refiner, coarse_image)
        except ValueError as error:
            raise ValueError(f"{args.checkpoint}: {error}") from None
    except (CheckpointError, PairFileError, FormatError, MissingWeightsError, ValueError,
            OSError) as error:
        print(f"dce-refine: {error}", file=sys.stderr)
        return 2
    print(f"refined with {args.checkpoint} ({refiner.settings.config}, network at "
          f"{refiner.resolution} px)")
    try:
        write_outputs(args, coarse_mesh, coarse_image, refined_image, target, rgb)
    except OSError as error:
        print(f"dce-refine: cannot write the results to {args.out}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
