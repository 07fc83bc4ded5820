"""Draw docs/keep_topology.png: one held-out face of a finished ``dce-demo``
run, refined by ``dce-refine`` three ways and shaded side by side with
``dce.geom.dce.save_shaded`` (the renderer of dce-refine's
side_by_side.png):

    coarse | refined (plain) | refined --keep-topology | target (the scan)

The coarse mesh is the world's 3DMM fit of the face (``world/coarse/<stem>.ply``
with the model's 68 landmark vertices), rendered with the camera of the pair
file's photo view of it; the plain refined mesh is the refined depth pixels
triangulated (about 0.9 mm apart at 256 px), the --keep-topology one the fit's
own vertices (2.5 mm apart) moved along their view rays. A second row zooms
2x on the nose and mouth.

    python docs/keep_topology.py [DEMO_DIR] [--sample ID] [-o docs/keep_topology.png]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("demo", type=Path, nargs="?", default=Path("demo"),
                   help="a finished dce-demo output folder (default: demo)")
    p.add_argument("--sample", default=None,
                   help="pair-file sample to show (default: dce-refine's, the first held-out "
                        "one)")
    p.add_argument("-o", "--out", type=Path, default=Path(__file__).with_suffix(".png"),
                   help="PNG to write (default: docs/keep_topology.png)")
    args = p.parse_args(argv)

    from dce.cli import refine
    from dce.geom.dce import save_shaded
    from dce.geom.io import load_mesh
    from dce.geom.projection import crop_camera, read_camera
    from dce.geom.reconstruct import depth_image_mesh
    from dce.geom.store import read_sample

    demo = args.demo
    model = demo / "detail" / "last.pt"
    if not model.is_file():
        model = demo / "run" / "last.pt"
    sample = read_sample(demo / "pairs.h5", args.sample)
    stem = sample.sample_id.split("/")[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # The pair file's view gives the camera; the fit is rendered with it.
        pair = [model, "--pairs", demo / "pairs.h5", "--sample", sample.sample_id, "-o",
                tmp / "pair"]
        if refine.main([str(a) for a in pair]) != 0:
            return 2
        common = [model, "--mesh", demo / "world" / "coarse" / f"{stem}.ply", "--camera",
                  tmp / "pair" / "camera.json", "--landmarks-3d",
                  demo / "world" / "world_model.npz"]
        for name, extra in (("plain", []), ("keep", ["--keep-topology"])):
            if refine.main([str(a) for a in common + ["-o", tmp / name] + extra]) != 0:
                return 2
        camera = read_camera(tmp / "pair" / "camera.json")
        meshes = [load_mesh(tmp / "plain" / "coarse.ply"), load_mesh(tmp / "plain" / "refined.ply"),
                  load_mesh(tmp / "keep" / "refined.ply")]
    target = sample.target
    meshes.append(depth_image_mesh(target.physical("depth"), target.mask, target.camera)[0])
    cameras = [camera] * 3 + [target.camera]
    labels = ["coarse (3DMM fit)", "refined", "refined --keep-topology", "target (scan)"]
    size = target.mask.shape[0]
    rows = [save_shaded(args.out, meshes, cameras, labels, size, size)]
    # Zoom 2x on the nose and mouth: the middle of the image, a little below it.
    centre = ((size - 1) / 2.0, 0.58 * (size - 1))
    zoomed = [crop_camera(c, centre, size / 2.0, size) for c in cameras]
    zoom_png = args.out.with_name(args.out.stem + ".zoom.png")
    rows.append(save_shaded(zoom_png, meshes, zoomed, ["2x"] * 4, size, size))
    pictures = [np.asarray(Image.open(r).convert("RGB")) for r in rows]
    zoom_png.unlink()
    gap = np.zeros((4,) + pictures[0].shape[1:], np.uint8)
    Image.fromarray(np.concatenate([pictures[0], gap, pictures[1]])).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB), sample {sample.sample_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
