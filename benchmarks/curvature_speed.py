"""Speed of the normal-cycle curvature (dce.geom.curvature), step by step.

    python benchmarks/curvature_speed.py [--quick] [--radius R]

Target: mean_curvature on a ~50k-vertex mesh in <= 0.3 s. Meshes: a sphere
(Delaunay of 50k random points: vertex order spatially random, the worst
case for memory locality), a regular torus, a ~50k-vertex crop of the
Lee Perry-Smith smooth face and the full 262k-vertex face (when the shared
data is present). Times are the minimum and median over repeats after a
warm-up; the first call of the process, which loads or compiles the Numba
kernels, is reported separately. A reference table compares libigl's
quadric-fitting ``igl.principal_curvature`` on spheres, for time and accuracy.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import igl
import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1] / "tests")]

import analytic  # noqa: E402  (the analytic test surfaces)
from common import DATA, best_and_median  # noqa: E402

from dce.geom import curvature as C  # noqa: E402
from dce.geom.io import load_mesh  # noqa: E402

TARGET_S = 0.3


def steps(V, F, radius, repeats):
    """Minimum time (s) of each step of principal_curvatures, run in order."""
    out = {}

    def step(name, fn):
        out[name] = best_and_median(fn, repeats)[0]
        return fn()

    V, F = step("validate", lambda: C._check_mesh(V, F))
    EV, EF = step("topology", lambda: C.edge_topology(F, len(V)))
    def normals():
        FN = igl.per_face_normals(V, F, np.zeros(3))
        return FN, igl.per_vertex_normals(V, F, igl.PER_VERTEX_NORMALS_WEIGHTING_TYPE_AREA, FN)

    FN, N = step("normals", normals)
    T = step("tensors", lambda: C.curvature_tensors(V, EV, EF, FN))
    A = step("areas", lambda: C.voronoi_areas(V, F))
    X = np.column_stack([T, A, A])
    P = step("pooling", lambda: C.ball_pool(V, EV, X, radius))
    step("eigen", lambda: C.principal_from_tensors(P[:, :6] / P[:, 6:7], N))
    return out


def lps_meshes():
    path = DATA / "lee-perry-smith" / "lps_smooth_face.ply"
    if not path.is_file():
        print(f"(no Lee Perry-Smith data at {path}: face rows skipped)")
        return []
    mesh = load_mesh(path)
    # ~50k vertices: the ball around the nose tip holding 50k vertices
    tip = np.array([0.3, -34.7, 53.1])
    d = np.linalg.norm(mesh.vertices - tip, axis=1)
    crop = mesh.submesh(d <= np.sort(d)[50_000])
    return [("LPS face crop", crop.vertices, crop.faces),
            ("LPS face full", mesh.vertices, mesh.faces)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no 262k mesh")
    parser.add_argument("--radius", type=float, default=2.0, help="pooling radius (edge lengths)")
    args = parser.parse_args()
    repeats = 3 if args.quick else 7

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {os.cpu_count()} cores, 1-min load average {load:.2f} "
          "(other processes slow every row)")
    t0 = time.perf_counter()
    tiny = analytic.sphere(n=200, triangulation="random")
    C.mean_curvature(tiny.V, tiny.F)
    print(f"first call (Numba load/compile + tiny mesh): {time.perf_counter() - t0:.2f} s\n")

    meshes = []
    s = analytic.sphere(radius=50.0, n=50_000, triangulation="random")
    meshes.append(("sphere random 50k", s.V, s.F))
    t = analytic.torus(R=60.0, r=20.0, n=50_000, triangulation="regular")
    meshes.append(("torus regular 50k", t.V, t.F))
    meshes += lps_meshes()
    if args.quick:
        meshes = [m for m in meshes if len(m[1]) < 100_000]

    names = ["validate", "topology", "normals", "tensors", "areas", "pooling", "eigen"]
    header = f"{'mesh':20s} {'verts':>7s} " + " ".join(f"{n:>8s}" for n in names) \
        + f" {'total min':>9s} {'median':>7s}  target"
    print(f"mean_curvature, radius {args.radius:g}; step times in ms (minimum over {repeats})")
    print(header)
    print("-" * len(header))
    for name, V, F in meshes:
        st = steps(V, F, args.radius, repeats)
        tmin, tmed = best_and_median(lambda: C.mean_curvature(V, F, radius=args.radius), repeats)
        verdict = "" if len(V) > 100_000 else ("ok" if tmin <= TARGET_S else "SLOW")
        print(f"{name:20s} {len(V):7d} " + " ".join(f"{st[n] * 1e3:8.1f}" for n in names)
              + f" {tmin * 1e3:9.1f} {tmed * 1e3:7.1f}  {verdict}")

    print("\nreference: libigl quadric fitting igl.principal_curvature (default radius 5)"
          " vs normal cycle, sphere r = 50 mm")
    print(f"{'mesh':20s} {'verts':>7s} {'method':>14s} {'time ms':>8s} {'H rms rel':>10s}"
          f" {'H p95 rel':>10s} {'k1,k2 rms rel':>14s}")
    for kind, n in (("regular", 10_000), ("random", 10_000), ("random", 50_000)):
        s = analytic.sphere(radius=50.0, n=n, triangulation=kind)
        if args.quick and n > 10_000:
            continue

        def normal_cycle():
            return C.principal_curvatures(s.V, s.F, radius=args.radius)[:2]

        def quadric():
            _, _, pv1, pv2, _ = igl.principal_curvature(s.V, s.F)
            return pv1, pv2  # libigl: positive on a sphere with outward faces, like ours

        for label, fn in (("normal cycle", normal_cycle), ("igl quadric", quadric)):
            tmin, _ = best_and_median(fn, repeats)
            k1, k2 = fn()
            rel = (0.5 * (k1 + k2) - s.H) / s.H
            krel = np.sqrt(np.mean(np.concatenate([(k1 - s.k1) / s.k1, (k2 - s.k2) / s.k2]) ** 2))
            print(f"sphere {kind:8s} {len(s.V):7d} {label:>14s} {tmin * 1e3:8.1f}"
                  f" {np.sqrt(np.mean(rel ** 2)):10.4f} {np.percentile(np.abs(rel), 95):10.4f}"
                  f" {krel:14.4f}")


if __name__ == "__main__":
    main()
