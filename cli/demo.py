"""dce-demo: the geometry pipeline on the built-in synthetic world and on
the real sample scans, with PNG previews.

1. Generates a small synthetic world: FRGC-format raw scans with photos and
   landmarks, and coarse 3DMM fits from noisy landmarks.
2. Runs the paper's per-pair pipeline on it: median filter, triangulation,
   nose-sphere and landmark-contour crop, Cohen-Steiner-Morvan curvature,
   normals, cameras fitted from the photo landmarks, and pixel-aligned
   z-buffered DCE renders of coarse and ground truth in random poses.
3. When ``../shared/data`` is present, renders the real scans too (the Lee
   Perry-Smith smooth/detailed pair is the kind of coarse/fine pair the GAN
   learns from).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

SAMPLES = (
    # name, mesh, landmarks (iBUG-68, 3D, mm)
    ("lps-smooth", "lee-perry-smith/lps_smooth_face.ply", "lee-perry-smith/lps_landmarks_68.txt"),
    ("lps-detailed", "lee-perry-smith/lps_detailed_face.ply",
     "lee-perry-smith/lps_landmarks_68.txt"),
    ("james", "menpo-james/james.ply", "menpo-james/james_landmarks_68.txt"),
)


def default_data_dir() -> Path:
    if "DCE_SHARED_DATA" in os.environ:
        return Path(os.environ["DCE_SHARED_DATA"])
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="dce-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="folder holding lee-perry-smith/ and menpo-james/ "
                        "(default: $DCE_SHARED_DATA or ../shared/data)")
    p.add_argument("--out", type=Path, default=Path("demo"),
                   help="output folder for the PNGs and the .npz images (default: demo)")
    p.add_argument("--size", type=int, default=256, help="image size in pixels (default: 256)")
    p.add_argument("--yaw", type=float, nargs="+", default=[0.0, 30.0, -45.0],
                   help="yaw angles in degrees to render (default: 0 30 -45)")
    p.add_argument("--radius", type=float, default=None,
                   help="nose-sphere crop radius in mm (default: the crop module's)")
    p.add_argument("--identities", type=int, default=6,
                   help="identities in the synthetic world (default: 6)")
    p.add_argument("--pairs", type=int, default=4,
                   help="synthetic scans rendered as aligned DCE pairs (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes for the world generation (default: all cores)")
    return p.parse_args(argv)


def synthetic_pairs(args) -> None:
    """Build the world and render coarse/ground-truth pairs from it, through
    the same source loader and pair pipeline as dce-build."""
    import json

    from dce.geom import dataset, dce, sources, synthetic

    world_dir = args.out / "world"
    t0 = time.perf_counter()
    manifest = synthetic.generate_world(world_dir, identities=args.identities, seed=args.seed,
                                        workers=args.workers)
    t1 = time.perf_counter()
    previews = synthetic.preview_world(world_dir, n=min(3, args.identities))
    print(f"synthetic world: {len(manifest['scans'])} scans of {args.identities} identities "
          f"in {t1 - t0:.1f} s -> {world_dir} (previews: {previews[-1]})")
    config = dataset.BuildConfig(size=args.size, poses=1, seed=args.seed)
    rows, labels = [], []
    for spec in sources.synthetic_world(world_dir)[:args.pairs]:
        t0 = time.perf_counter()
        pair = sources.load(spec)
        coarse, target = dataset.prepare_pair(pair, config)
        t1 = time.perf_counter()
        for p in dataset.random_poses(pair.pair_id, config):  # the photo's view + one random
            rows += dataset.render_pair(coarse, target, pair.landmarks_2d, args.size, pose=p)
            labels += [f"{pair.pair_id} coarse {p[0]:+.0f}/{p[1]:+.0f}/{p[2]:+.0f}",
                       f"{pair.pair_id} ground truth"]
        t2 = time.perf_counter()
        print(f"  {pair.pair_id}: load + geometry {t1 - t0:.2f} s, 2 poses x 2 sides "
              f"{1e3 * (t2 - t1) / 4:.1f} ms per render")
    png = dce.save_preview(args.out / "synthetic_pairs.png", rows, labels)
    (args.out / "synthetic_pairs.json").write_text(json.dumps(labels, indent=1))
    print(f"aligned DCE pairs: {png}")


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.geom import crop, dce, io, projection

    args.out.mkdir(parents=True, exist_ok=True)
    synthetic_pairs(args)
    data = args.data or default_data_dir()
    if not data.is_dir():
        print(f"real sample scans not found at {data} (pass --data DIR); skipped them")
        return 0
    crop_options = {} if args.radius is None else {"radius": args.radius}
    rendered = {}
    for name, mesh_file, landmark_file in SAMPLES:
        t0 = time.perf_counter()
        mesh = io.load_mesh(data / mesh_file)
        landmarks = io.read_landmarks(data / landmark_file).points
        t1 = time.perf_counter()
        face = crop.crop_mesh(mesh, landmarks, **crop_options)
        t2 = time.perf_counter()
        geometry = dce.surface_geometry(face)
        t3 = time.perf_counter()
        nose = io.nose_tip(landmarks)
        reach = np.linalg.norm(face.vertices[:, :2] - nose[:2], axis=1).max()
        scale = 0.47 * args.size / reach
        views = []
        for yaw in args.yaw:
            camera = projection.posed_camera(nose, scale, args.size, yaw=yaw)
            views.append(dce.render_dce(face, camera, args.size, "DCE+RGB"
                                        if face.colors is not None else "DCE", geometry))
        t4 = time.perf_counter()
        rendered[name] = views
        png = dce.save_preview(args.out / f"{name}_dce.png", views,
                               labels=[f"{name} yaw {y:+.0f}" for y in args.yaw])
        np.savez_compressed(args.out / f"{name}_dce.npz",
                            **{f"yaw{y:+.0f}": v.image for y, v in zip(args.yaw, views)},
                            **{f"mask_yaw{y:+.0f}": v.mask for y, v in zip(args.yaw, views)})
        print(f"{name:13s} {mesh.n_vertices:7d} v -> crop {face.n_vertices:7d} v | "
              f"load {t1 - t0:5.2f}s crop {t2 - t1:5.2f}s curvature+normals {t3 - t2:5.2f}s "
              f"{len(views)} renders {1e3 * (t4 - t3) / len(views):6.1f} ms each | {png}")
    pair = [v for name in ("lps-smooth", "lps-detailed") for v in rendered[name][:1]]
    png = dce.save_preview(args.out / "lps_smooth_vs_detailed.png", pair,
                           labels=["coarse (smooth)", "target (detailed)"])
    print(f"coarse/target pair: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
