"""Per-stage cost of building DCE pairs (issue: dce-build speed).

On scans of the built-in synthetic world (480x640 FRGC-format grids), one
process: reading, each preprocessing stage of the ground truth, the coarse
side, and the pose renders (coarse + target, all channels, 256^2). Reference
column: the authors' approach, scipy LinearNDInterpolator of one channel of
the projected vertices onto the image grid.

    python benchmarks/build_throughput.py [--world DIR] [--scans 4] [--quick]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_and_median  # noqa: E402

from dce.geom import crop, dataset, filters, io, morphable, synthetic  # noqa: E402
from dce.geom.dce import surface_geometry  # noqa: E402
from dce.geom.landmarks import landmarks_to_3d  # noqa: E402
from dce.geom.projection import fit_orthographic  # noqa: E402


def stages(scan_path, landmark_path, coarse_path, landmark_vertices, config):
    """Seconds of each stage for one scan, in pipeline order."""
    t = {}
    clock = time.perf_counter()

    def lap(name):
        nonlocal clock
        now = time.perf_counter()
        t[name] = now - clock
        clock = now

    scan = io.read_abs(scan_path)
    landmarks_2d = io.read_landmarks(landmark_path).points
    lap("read .abs.gz + .pts")
    xyz, valid = filters.median_filter_grid(scan.xyz, scan.valid, size=config.median_size)
    clean = io.RangeScan(xyz, valid, None, None, scan.source)
    lap("median filter (grid)")
    mesh = clean.to_mesh()
    lap("triangulate")
    landmarks_3d = landmarks_to_3d(landmarks_2d, clean)
    lap("landmarks to 3D")
    mesh = crop.crop_mesh(mesh, landmarks_3d, radius=config.crop_radius)
    lap("crop (sphere + contour)")
    geometry = surface_geometry(mesh, config.curvature)
    lap("curvature + normals")
    camera = fit_orthographic(landmarks_2d, landmarks_3d)
    target = dataset.PreparedMesh(mesh, geometry, landmarks_3d, camera)
    lap("camera fit")
    coarse = dataset.prepare_coarse(io.load_mesh(coarse_path), landmark_vertices, landmarks_2d,
                                    config.curvature, radius=config.crop_radius)
    lap("coarse side (read, crop, geometry, camera)")
    samples = dataset.pair_samples("bench", "bench", coarse, target, landmarks_2d, config)
    lap(f"{len(samples)} poses x 2 sides rendered")
    return t, mesh, camera, samples


def scipy_reference(mesh, camera, size=256):
    """The authors' demo: one channel via LinearNDInterpolator over the
    projected vertices (no occlusion handling)."""
    from scipy.interpolate import LinearNDInterpolator

    P = camera.project(mesh.vertices)
    lo, hi = P[:, :2].min(0), P[:, :2].max(0)
    P[:, :2] = (P[:, :2] - lo) / (hi - lo).max() * (size - 1)
    grid = np.mgrid[0:size, 0:size][::-1].reshape(2, -1).T
    return LinearNDInterpolator(P[:, :2], P[:, 2])(grid)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", type=Path, default=None, help="an existing synthetic world")
    p.add_argument("--scans", type=int, default=4, help="scans measured (default: 4)")
    p.add_argument("--quick", action="store_true", help="2 scans, fewer repeats")
    args = p.parse_args()
    n_scans = 2 if args.quick else args.scans
    tmp = None
    world = args.world
    if world is None:
        tmp = tempfile.TemporaryDirectory()
        world = Path(tmp.name)
        synthetic.generate_world(world, identities=max(1, (n_scans + 1) // 2), workers=1)
    manifest = json.loads((world / "world.json").read_text())
    model = morphable.load_model(world / "world_model.npz")
    config = dataset.BuildConfig()
    records = manifest["scans"][:n_scans]
    f0 = {k: world / v for k, v in records[0]["files"].items()}
    stages(f0["range"], f0["landmarks"], f0["coarse_mesh"], model.landmarks_68, config)  # warm-up

    totals = defaultdict(list)
    for record in records:
        f = {k: world / v for k, v in record["files"].items()}
        t, mesh, camera, samples = stages(f["range"], f["landmarks"], f["coarse_mesh"],
                                          model.landmarks_68, config)
        for k, v in t.items():
            totals[k].append(v)
    print(f"{len(records)} synthetic scans (480x640 grid, ~{mesh.n_vertices} cropped vertices), "
          f"{config.size}^2, channels {config.channels}, 1 + {config.poses} poses, one process\n")
    print(f"{'stage':45s} {'median ms':>10s}")
    for k, v in totals.items():
        print(f"{k:45s} {1e3 * np.median(v):10.1f}")
    per_scan = sum(np.median(v) for v in totals.values())
    read = np.median(totals["read .abs.gz + .pts"])
    render = np.median(totals[next(k for k in totals if k.endswith("rendered"))])
    n_pose = config.poses + 1
    print(f"\nwhole scan: {per_scan:.2f} s per core ({per_scan - read:.2f} s without reading "
          f"the text file; target 0.5 s)")
    print(f"pose renders (coarse + target, all channels): {n_pose / render:.0f} per second per "
          f"core (target 20)")
    best, med = best_and_median(lambda: scipy_reference(mesh, camera), 1 if args.quick else 3)
    print(f"reference, authors' approach (LinearNDInterpolator, ONE channel, {mesh.n_vertices} "
          f"vertices): {best:.2f} s per channel per image")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
