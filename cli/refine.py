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
and the coarse surface is kept where the network produced no pixels. With
--keep-topology the refined mesh is instead the coarse mesh itself (the
whole input mesh, uncropped: its vertices, faces, colours, uv and landmark
indices), each vertex the image sees moved along its view ray onto the
refined depth surface, hidden ones kept, the move faded out over a few
pixel pitches at the border between them. Written to --out: refined.ply
(or .obj), coarse.ply (or .obj), refined_dce.png (coarse and refined DCE
images), side_by_side.png (the meshes shaded) and camera.json (the DCE
image's camera, for --camera); when the mesh's landmarks are known
(--landmarks-3d), coarse.landmarks.txt and refined.landmarks.txt (68 x y z,
moved with the surface; the layout dce-eval-mesh reads); with
--displacement-ply, displacement.ply.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from dce.cli.build import MAX_SIZE
from dce.cli.options import check_output, integer, number
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
    # The rendering options default to the normalization the checkpoint
    # carries (that of the pair file it was trained on); a checkpoint from
    # before dce stored one gets the build's defaults.
    p.add_argument("--size", type=integer(16, MAX_SIZE), default=None,
                   help="with --mesh: DCE image size in px, a multiple of the checkpoint's "
                        f"resolution (default: the checkpoint's training images', else "
                        f"{_BUILD.size})")
    p.add_argument("--margin", type=number(0.0), default=None,
                   help="with --landmarks/--photo: face box margin around the landmarks, as in "
                        f"dce-build (default: the checkpoint's, else {_BUILD.margin})")
    p.add_argument("--depth-scale", type=number(0.0, low_open=True), default=None,
                   help="with --mesh: mm of depth per unit of the normalized depth channel; a "
                        "value other than the checkpoint's is refused (default: the "
                        f"checkpoint's, else {_BUILD.depth_scale})")
    p.add_argument("--curvature-scale", type=number(0.0, low_open=True), default=None,
                   help="with --mesh: 1/mm of mean curvature per unit of the curvature channel "
                        f"(default: the checkpoint's, else {_BUILD.curvature_scale})")
    p.add_argument("--curvature", default=None, choices=["mean", "absolute"],
                   help="with --mesh: curvature channel kind (default: the checkpoint's, else "
                        f"{_BUILD.curvature})")
    p.add_argument("--max-jump-mm", type=number(0.0, low_open=True), default=None,
                   help="depth spread in mm above which a triangle of the refined grid spans a "
                        "discontinuity and is dropped (default: 5 pixel pitches of the image)")
    p.add_argument("--keep-topology", action="store_true",
                   help="write the coarse mesh itself with its visible vertices moved onto the "
                        "refined depth (same vertices, faces and landmark indices as the input; "
                        "default: a new mesh from the refined depth pixels)")
    p.add_argument("--blend-mm", type=number(0.0, low_open=True), default=None,
                   help="with --keep-topology: width over which the move fades out toward "
                        "hidden vertices (default: 3 pixel pitches of the image)")
    p.add_argument("--displacement-ply", action="store_true",
                   help="with --keep-topology: also write displacement.ply, the refined mesh "
                        "with each vertex's move along the view ray (mm, + toward the viewer) as "
                        "the float property displacement_mm and as colours (default: off)")
    p.add_argument("--landmarks-out", type=Path, default=None, metavar="FILE",
                   help="with --landmarks-3d: where to write the refined mesh's 68 landmarks "
                        "(default: OUT/refined.landmarks.txt, written whenever --landmarks-3d "
                        "is given)")
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
    if not args.keep_topology and (args.blend_mm is not None or args.displacement_ply):
        p.error("--blend-mm and --displacement-ply go with --keep-topology")
    if args.landmarks_out is not None and args.landmarks_3d is None:
        p.error("--landmarks-out needs --landmarks-3d (the coarse mesh's landmarks to move)")
    return args


# ----------------------------------------------------------------- inputs

# The --mesh options that hold a build setting, by normalization key.
RENDER_OPTIONS = {"depth_scale": "--depth-scale", "curvature_scale": "--curvature-scale",
                  "curvature": "--curvature", "margin": "--margin"}


def resolve_normalization(args, normalization) -> None:
    """Fill the rendering options left unset (None) from the checkpoint's
    ``normalization`` (None: a checkpoint from before dce stored it, which
    gets the build's defaults, said on stdout). A given option whose value
    differs from the checkpoint's is refused (NormalizationMismatch naming
    both): the network would read the image in the wrong units."""
    from dce.gan.h5format import check_normalization

    given = {key: getattr(args, key) for key in RENDER_OPTIONS if getattr(args, key) is not None}
    check_normalization(normalization, given, args.checkpoint,
                        "the command line (" + ", ".join(f"{RENDER_OPTIONS[k]} {v}"
                                                         for k, v in given.items()) + ")")
    known = dict(normalization or {})
    if "size" in known:
        known["size"] = known["size"][0]
    unset = [key for key in (*RENDER_OPTIONS, "size") if getattr(args, key) is None]
    for key in unset:
        setattr(args, key, known.get(key, getattr(_BUILD, key)))
    defaulted = [key for key in unset if key not in known]
    if defaulted and args.mesh is not None:
        print(f"{args.checkpoint} does not record how its training images were made (trained "
              "before dce stored it); using the build defaults: "
              + ", ".join(f"{key} {getattr(args, key)}" for key in defaulted))
    args.crop_radius = known.get("crop_radius", _BUILD.crop_radius)



def read_mesh_inputs(args) -> tuple:
    """The --mesh inputs read and checked before the network loads: (the
    coarse side as a ``dataset.PreparedMesh`` (cropped when its landmarks
    are known), the DCE image's camera, the whole input mesh)."""
    from dce.geom import dataset
    from dce.geom.io import FormatError, load_mesh, read_landmarks
    from dce.geom.landmarks import NoFaceError, detect_landmarks, load_image
    from dce.geom.projection import read_camera

    mesh = load_mesh(args.mesh)
    landmarks_3d = camera = landmarks_2d = photo = None
    if args.landmarks_3d is not None:
        landmarks_3d = dataset.read_mesh_landmarks(args.landmarks_3d, mesh)
    if args.camera is not None:
        camera = read_camera(args.camera)
    elif args.photo is not None:
        photo, _ = load_image(args.photo)
        try:
            landmarks_2d = detect_landmarks(photo, args.landmark_weights, args.device)
        except NoFaceError as error:
            raise FormatError(f"{args.photo}: {error}") from None
    else:
        lm = read_landmarks(args.landmarks, expected=68)
        if lm.dim != 2:
            raise FormatError(f"{args.landmarks}: holds 3D points; --landmarks needs 68 photo "
                              "landmarks x y in pixels")
        landmarks_2d = lm.points
    try:
        return (*dataset.prepare_view(mesh, landmarks_3d, camera, landmarks_2d, photo, args.size,
                                      args.curvature, args.margin, radius=args.crop_radius),
                mesh)
    except ValueError as error:
        raise FormatError(f"{args.mesh}: {error}") from None


def coarse_inputs(args, inputs, refiner) -> tuple:
    """(coarse mesh, coarse DCEImage with the checkpoint's input channels,
    target DCEImage or None, colour image or None)."""
    from dce.gan.configs import channel_indices
    from dce.gan.h5format import PairFileError
    from dce.geom.dataset import render_view
    from dce.geom.io import FormatError
    from dce.geom.reconstruct import depth_image_mesh

    channels = refiner.input_channels
    if args.mesh is not None:
        if args.size % refiner.resolution:
            raise ValueError(f"--size {args.size} is not a multiple of the resolution of "
                             f"{args.checkpoint} ({refiner.resolution} px)")
        side, camera, _ = inputs
        try:
            image, rgb = render_view(side, camera, args.size, channels,
                                     depth_scale=args.depth_scale,
                                     curvature_scale=args.curvature_scale)
        except ValueError as error:  # e.g. RGB channels of a mesh without colours
            raise FormatError(f"{args.mesh}: {error}") from None
        print(f"{args.mesh}: {side.mesh.n_vertices} vertices"
              + (" after cropping" if side.landmarks_3d is not None else "")
              + f", rendered at {args.size} px")
        return side.mesh, image, None, rgb
    from dce.gan.h5format import check_normalization, normalization, validate

    check_normalization(refiner.normalization, normalization(validate(args.pairs)),
                        args.checkpoint, args.pairs)
    source = f"{args.pairs} (for {args.checkpoint}, {refiner.settings.config})"
    for side in (inputs.coarse, inputs.target):  # the missing channels, named with the file
        channel_indices(channels, side.channels, source)
    image, target = inputs.coarse.select(channels), inputs.target.select(channels)
    rgb = inputs.coarse.rgb()  # from all the file's channels
    mesh, _ = depth_image_mesh(image.physical("depth"), image.mask, image.camera,
                               args.max_jump_mm, rgb)
    if mesh.n_faces == 0:
        raise PairFileError(f"{args.pairs}: sample {inputs.sample_id} has no coarse surface "
                            "to refine (empty depth image)")
    print(f"{args.pairs}: sample {inputs.sample_id} (subject {inputs.subject}, "
          f"{inputs.split} split), {image.mask.shape[0]} px")
    return mesh, image, target, rgb


# ----------------------------------------------------------------- outputs


def refine_image(refiner, coarse):
    """The refined DCEImage: the network's output channels, in the coarse
    image's normalization and camera; background where the output is."""
    from dce.gan.h5format import FOREGROUND_ABOVE
    from dce.geom.refined_mesh import refine_dce_image

    return refine_dce_image(refiner, coarse, FOREGROUND_ABOVE)


def depth_mae(coarse, refined, target) -> tuple:
    """Depth MAE in mm over the target's face pixels (dce-eval's face MAE at
    the image's full size) of the coarse and the refined image, and the
    number of those pixels."""
    import torch

    from dce.gan.h5format import FOREGROUND_ABOVE
    from dce.gan.evaluate import image_mae

    depth = [torch.from_numpy(d.image[None, ..., d.channels.index("depth")])
             for d in (coarse, refined, target)]
    mm = abs(float(target.scale[target.channels.index("depth")]))
    maes = [float(image_mae(x, depth[2], face_only=True)[0]) * mm for x in depth[:2]]
    return maes[0], maes[1], int((depth[2] >= FOREGROUND_ABOVE).sum())


def topology_inputs(args, inputs, coarse_mesh) -> tuple:
    """(the mesh --keep-topology moves: the whole input mesh, or the coarse
    depth grid of a pair file; which of its vertices were rendered (None:
    all); the coarse mesh's 68 landmarks (68, 3) mm or None)."""
    if args.mesh is None:
        return coarse_mesh, None, None
    side, _, whole = inputs
    index = getattr(side.mesh, "vertex_index", None)  # set when the view was cropped
    movable = None
    if index is not None:
        movable = np.zeros(whole.n_vertices, dtype=bool)
        movable[index] = True
    return whole, movable, side.landmarks_3d


def refined_meshes(args, coarse_mesh, coarse_image, refined_image, rgb, topology):
    """The refined mesh (``dce.geom.refined_mesh.RefinedMeshes``): a new mesh
    from the refined depth pixels, or with --keep-topology the coarse
    topology moved; landmarks moved with the surface."""
    from dce.geom.refined_mesh import refine_meshes

    base, movable, landmarks = topology
    return refine_meshes(coarse_mesh, coarse_image, refined_image, rgb, landmarks,
                         args.keep_topology, base, movable, args.max_jump_mm, args.blend_mm)


def write_outputs(args, coarse_mesh, coarse_image, refined_image, target, rgb,
                  topology) -> None:
    """Reconstruct the refined mesh and write the meshes, landmarks, camera and PNGs."""
    from dce.geom.dce import save_preview, save_shaded
    from dce.geom.io import Landmarks, save_mesh, write_landmarks
    from dce.geom.mesh_eval import signed_colors, write_scalar_ply
    from dce.geom.projection import write_camera
    from dce.geom.reconstruct import depth_image_mesh

    camera = coarse_image.camera
    built = refined_meshes(args, coarse_mesh, coarse_image, refined_image, rgb, topology)
    refined_mesh, coarse_out = built.refined, built.coarse

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    refined_path, coarse_path = out / f"refined.{args.format}", out / f"coarse.{args.format}"
    save_mesh(refined_path, refined_mesh)
    save_mesh(coarse_path, coarse_out)
    written = []
    if built.coarse_landmarks is not None:
        landmark_paths = (out / "coarse.landmarks.txt",
                          args.landmarks_out or out / "refined.landmarks.txt")
        landmark_paths[1].parent.mkdir(parents=True, exist_ok=True)
        for path, points in zip(landmark_paths, (built.coarse_landmarks,
                                                 built.refined_landmarks)):
            write_landmarks(path, Landmarks(points))
        written += landmark_paths
    if args.displacement_ply:
        d = built.displacement
        written.append(write_scalar_ply(out / "displacement.ply", refined_mesh.vertices,
                                        refined_mesh.faces, {"displacement_mm": d},
                                        signed_colors(d)))
    camera_path = write_camera(out / "camera.json", camera)
    rows, labels = [coarse_image, refined_image], ["coarse", "refined"]
    meshes, cameras = [coarse_out, refined_mesh], [camera, camera]
    if target is not None:
        rows.append(target)
        labels.append("target")
        meshes.append(depth_image_mesh(target.physical("depth"), target.mask, target.camera,
                                       args.max_jump_mm)[0])
        cameras.append(target.camera)
    dce_png = save_preview(out / "refined_dce.png", rows, labels)
    side_png = save_shaded(out / "side_by_side.png", meshes, cameras, labels,
                           coarse_image.mask.shape[0])

    if target is not None:
        coarse_mae, refined_mae, n = depth_mae(coarse_image, refined_image, target)
        print(f"depth MAE over the target's {n} face pixels: coarse {coarse_mae:.3f} mm, "
              f"refined {refined_mae:.3f} mm")
    print(f"wrote {refined_path}: {refined_mesh.n_vertices} vertices, {refined_mesh.n_faces} "
          f"faces ({built.how})")
    print(f"wrote {coarse_path}: {coarse_out.n_vertices} vertices, {coarse_out.n_faces} faces")
    print(f"wrote {', '.join(map(str, written + [dce_png, side_png, camera_path]))}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.h5format import PairFileError
    from dce.gan.inference import Refiner
    from dce.geom.io import FormatError
    from dce.geom.landmarks import MissingWeightsError
    from dce.geom.store import read_sample

    try:
        check_output(args.out, [args.checkpoint, args.pairs, args.mesh, args.camera,
                                args.landmarks, args.photo, args.landmarks_3d], is_dir=True)
        if args.landmarks_out is not None:
            check_output(args.landmarks_out, [args.landmarks, args.landmarks_3d, args.mesh],
                         replaceable=lambda p: p.suffix.lower() == ".txt")
        refiner = Refiner(args.checkpoint, args.device)
        resolve_normalization(args, refiner.normalization)
        inputs = read_sample(args.pairs, args.sample) if args.pairs else read_mesh_inputs(args)
        coarse_mesh, coarse_image, target, rgb = coarse_inputs(args, inputs, refiner)
        topology = topology_inputs(args, inputs, coarse_mesh)
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
        write_outputs(args, coarse_mesh, coarse_image, refined_image, target, rgb, topology)
    except OSError as error:
        print(f"dce-refine: cannot write the results to {args.out}: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
