"""Speed of the synthetic world (dce.geom.synthetic).

    python benchmarks/world_speed.py [--quick] [--identities N] [--workers W]

Target (issue 3): at least 60 identities in under a minute on this 2-core
machine. The full run writes a world of N identities (neutral + one
expression each, the defaults) into a temporary folder with W worker
processes and reports the wall time, then a rerun over the finished folder
(resume: nothing to redo). The step table times one scan's parts in this
process (minimum and median over repeats after a warm-up; the first call,
which loads the Numba rasterizer, is reported separately) so the per-scan
cost can be attributed. --quick: 8 identities, 3 repeats.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import best_and_median  # noqa: E402

from dce.geom import synthetic as S
from dce.geom.io import Landmarks, RangeScan, save_mesh, write_abs, write_landmarks
from dce.geom.morphable import fit_to_landmarks
from dce.geom.records import atomic_write

TARGET_S = 60.0


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def step_table(repeats: int) -> None:
    t0 = time.perf_counter()
    world = S.build_world()
    t_world = time.perf_counter() - t0
    identity = S.draw_identity(world, 0, 0)
    plan = S.draw_scan(world, identity, 0, 2)
    t0 = time.perf_counter()
    scan = S.render_scan(world, identity, plan)
    t_first = time.perf_counter() - t0
    noisy = scan.landmarks_2d + np.random.default_rng(0).normal(0, 2.0, (68, 2))
    fit = fit_to_landmarks(world.model, noisy, n_expression=None, regularization=4.0)
    tmp = Path(tempfile.mkdtemp(prefix="world_speed_steps_"))
    ext = ".abs.gz" if world.settings.compress else ".abs"
    steps = [
        ("ground-truth surface (0.5 mm)", lambda: S.ground_truth_surface(world, identity,
                                                                         plan.expression)),
        ("  of which detail_field", lambda: S.detail_field(identity.detail, plan.expression,
                                                          world.fine_u, world.fine_v, 0.5)),
        ("render_scan (all of the above + raster, photo)", lambda: S.render_scan(world, identity,
                                                                                  plan)),
        ("fit_to_landmarks (17 id + 5 expr)", lambda: fit_to_landmarks(
            world.model, noisy, n_expression=None, regularization=4.0)),
        (f"write_abs ({ext})", lambda: write_abs(tmp / f"x{ext}", RangeScan(scan.xyz, scan.valid))),
        ("write .ppm", lambda: atomic_write(tmp / "x.ppm", S._ppm_bytes(scan.photo))),
        ("write .pts", lambda: write_landmarks(tmp / "x.pts", Landmarks(scan.landmarks_2d))),
        ("save_mesh coarse .ply", lambda: save_mesh(tmp / "x.ply", fit.mesh)),
        ("make_scan (one whole scan)", lambda: S.make_scan(world, tmp, 0, identity, 2)),
    ]
    (tmp / "scans").mkdir()
    (tmp / "coarse").mkdir()
    print(f"build_world (model + 0.5 mm fields, once per process): {t_world:.2f} s")
    print(f"first render_scan of the process (loads the Numba rasterizer): {t_first:.2f} s\n")
    print(f"{'step (one scan)':52s} {'min s':>8s} {'median s':>9s}")
    for name, fn in steps:
        lo, med = best_and_median(fn, repeats)
        print(f"{name:52s} {lo:8.3f} {med:9.3f}")
    shutil.rmtree(tmp)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 identities, 3 repeats")
    ap.add_argument("--identities", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="default: all cores")
    ap.add_argument("--no-steps", action="store_true", help="skip the per-step table")
    args = ap.parse_args()
    n = args.identities or (8 if args.quick else 60)
    repeats = 3 if args.quick else 7
    workers = args.workers or os.cpu_count()

    out = Path(tempfile.mkdtemp(prefix="world_speed_"))
    try:
        t0 = time.perf_counter()
        manifest = S.generate_world(out, identities=n, seed=0, workers=workers)
        wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        S.generate_world(out, identities=n, seed=0, workers=workers)
        rerun = time.perf_counter() - t0
        scans = len(manifest["scans"])
        residual = np.array([r["fit"]["residual_px"] for r in manifest["scans"]])
        print(f"generate_world: {n} identities, {scans} scans, {workers} workers, "
              f"{os.cpu_count()} cores")
        print(f"  wall time         {wall:7.1f} s   ({wall / scans:.3f} s per scan; "
              f"target {n} identities < {TARGET_S:.0f} s: "
              f"{'met' if n < 60 or wall < TARGET_S else 'MISSED'}"
              f"{' (scaled to 60: %.1f s)' % (wall * 60 / n) if n != 60 else ''})")
        print(f"  rerun (resume)    {rerun:7.2f} s")
        print(f"  on disk           {folder_size(out) / 1e6:7.1f} MB")
        print(f"  fit residual      median {np.median(residual):.2f} px, "
              f"max {residual.max():.2f} px (2 px landmark noise)\n")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if not args.no_steps:
        step_table(repeats)


if __name__ == "__main__":
    main()
