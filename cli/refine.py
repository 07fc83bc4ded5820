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

from dce.cli.build import MAX_SIZE
from dce.cli.options import HelpFormatter, check_output, integer, number
from dce.geom.dataset import BuildConfig

_BUILD = BuildConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dce-refine", description=__doc__,
                                formatter_class=HelpFormatter)
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
    p.add_argument("--refit", type=Path, default=None, metavar="MAP.npz",
                   help="with --mesh (a face of the map's morphable model): refine the mesh's "
                        "learned re-fit (a dce-refit map, OUT.map.npz; docs/refit.md) instead "
                        "of the mesh (default: none)")
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
                   help="output folder")
    p.add_argument("--format", default="ply", choices=["ply", "obj"],
                   help="mesh file format")
    p.add_argument("--mirror-average", action="store_true",
                   help="average a detail stage's output with its output on the mirrored "
                        "image, mirrored back (a self-ensemble; twice the stage's time; "
                        "docs/detail-stage.md)")
    p.add_argument("--device", default="cpu", help="torch device")
    return p


def parse_args(argv=None):
    p = build_parser()
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
                                     args.landmarks_3d, args.refit)):
        p.error("--camera, --landmarks, --photo, --landmarks-3d and --refit go with --mesh "
                "(a re-fit pair file goes to --pairs as it is)")
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


def resolve_settings(args, normalization):
    """The rendering settings (``dce.geom.refine.ViewSettings``): the options
    given, the rest from the checkpoint's ``normalization`` (None: a
    checkpoint from before dce stored it, which gets the build's defaults,
    said on stdout with --mesh). A given option whose value differs from
    the checkpoint's is refused (NormalizationMismatch naming both): the
    network would read the image in the wrong units."""
    from dce.geom.refine import view_settings

    given = {key: getattr(args, key) for key in RENDER_OPTIONS if getattr(args, key) is not None}
    settings = view_settings(normalization, args.size, model_name=args.checkpoint,
                             given_name="the command line (" + ", ".join(
                                 f"{RENDER_OPTIONS[k]} {v}" for k, v in given.items()) + ")",
                             **given)
    if settings.defaulted and args.mesh is not None:
        print(f"{args.checkpoint} does not record how its training images were made (trained "
              "before dce stored it); using the build defaults: "
              + ", ".join(f"{key} {getattr(settings, key)}" for key in settings.defaulted))
    return settings


def mesh_coarse(args, refiner, settings):
    """The --mesh inputs read and checked, and the coarse side rendered from
    them (``dce.geom.refine.CoarseFace``; cropped when its landmarks are
    known)."""
    from dce.geom import dataset
    from dce.geom.io import FormatError, load_mesh, read_landmarks
    from dce.geom.landmarks import NoFaceError, detect_landmarks, load_image
    from dce.geom.projection import read_camera
    from dce.geom.refine import coarse_from_mesh, refit_mesh

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
    if settings.size % refiner.resolution:
        raise ValueError(f"--size {settings.size} is not a multiple of the resolution of "
                         f"{args.checkpoint} ({refiner.resolution} px)")
    try:  # e.g. landmarks that do not fit, or RGB channels of a mesh without colours
        if args.refit is not None:
            mesh, landmarks_3d, camera = refit_mesh(
                mesh, *_refit_map_and_model(args.refit), settings, camera=camera,
                landmarks_2d=landmarks_2d, landmarks_3d=landmarks_3d, name=args.mesh)
            landmarks_2d = None
            print(f"refining the learned re-fit of {args.mesh} ({args.refit})")
        return coarse_from_mesh(mesh, refiner, settings, camera=camera,
                                landmarks_2d=landmarks_2d, photo=photo,
                                landmarks_3d=landmarks_3d, model_name=args.checkpoint)
    except ValueError as error:
        raise FormatError(f"{args.mesh}: {error}") from None


def _refit_map_and_model(path):
    """A dce-refit map and the morphable model it draws (its recorded path)."""
    from dce.geom.io import FormatError
    from dce.geom.morphable import load_model
    from dce.geom.refit import load_refit_map

    refit_map = load_refit_map(path)
    if not Path(refit_map.model).is_file():
        raise FormatError(f"{path}: the map draws the model {refit_map.model}, which is missing")
    return refit_map, load_model(refit_map.model)


def report(result, files) -> None:
    """The lines dce-refine prints on a refinement written to ``files``:
    the depth MAE against the target (when known) and the files."""
    refined, coarse = result.meshes.refined, result.meshes.coarse
    if result.target is not None:
        print(f"depth MAE over the target's {result.face_pixels} face pixels: coarse "
              f"{result.coarse_mae_mm:.3f} mm, refined {result.refined_mae_mm:.3f} mm")
    print(f"wrote {files.refined}: {refined.n_vertices} vertices, {refined.n_faces} "
          f"faces ({result.meshes.how})")
    print(f"wrote {files.coarse}: {coarse.n_vertices} vertices, {coarse.n_faces} faces")
    print(f"wrote {', '.join(map(str, files.others))}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.h5format import PairFileError
    from dce.gan.inference import Refiner
    from dce.geom.io import FormatError
    from dce.geom.landmarks import MissingWeightsError
    from dce.geom.refine import coarse_from_pairs, refine, save_refinement

    try:
        check_output(args.out, [args.checkpoint, args.pairs, args.mesh, args.camera,
                                args.landmarks, args.photo, args.landmarks_3d, args.refit],
                     is_dir=True)
        if args.landmarks_out is not None:
            check_output(args.landmarks_out, [args.landmarks, args.landmarks_3d, args.mesh],
                         replaceable=lambda p: p.suffix.lower() == ".txt")
        refiner = Refiner(args.checkpoint, args.device, mirror_average=args.mirror_average)
        settings = resolve_settings(args, refiner.normalization)
        if args.pairs is not None:
            coarse = coarse_from_pairs(args.pairs, refiner, args.sample,
                                       max_jump_mm=args.max_jump_mm, model_name=args.checkpoint)
            sample = coarse.sample
            print(f"{args.pairs}: sample {sample.sample_id} (subject {sample.subject}, "
                  f"{sample.split} split), {coarse.image.mask.shape[0]} px")
        else:
            coarse = mesh_coarse(args, refiner, settings)
            print(f"{args.mesh}: {coarse.mesh.n_vertices} vertices"
                  + (" after cropping" if coarse.landmarks is not None else "")
                  + f", rendered at {settings.size} px")
        result = refine(refiner, coarse, keep_topology=args.keep_topology,
                        max_jump_mm=args.max_jump_mm, blend_mm=args.blend_mm,
                        model_name=args.checkpoint)
    except (CheckpointError, PairFileError, FormatError, MissingWeightsError, ValueError,
            OSError) as error:
        print(f"dce-refine: {error}", file=sys.stderr)
        return 2
    stage = (f" + detail stage{', mirror-averaged' if refiner.mirror_average else ''}"
             if refiner.enhancer is not None else "")
    print(f"refined with {args.checkpoint} ({refiner.settings.config}, network at "
          f"{refiner.resolution} px{stage})")
    try:
        files = save_refinement(args.out, result, args.format, landmarks_out=args.landmarks_out,
                                displacement_ply=args.displacement_ply,
                                max_jump_mm=args.max_jump_mm)
    except OSError as error:
        print(f"dce-refine: cannot write the results to {args.out}: {error}", file=sys.stderr)
        return 2
    report(result, files)
    return 0


if __name__ == "__main__":
    sys.exit(main())
