"""Rasterization throughput: dce.geom.raster on a face mesh of ~40k vertices
and ~77k triangles, posed at 40 degrees yaw, 3 float channels.

    python benchmarks/raster_throughput.py [--quick]

Reports the Numba compile time (cold cache, in a child process) and the
cache-load time, the time of one ``rasterize`` call on one thread (median and
best of many), the throughput of ``rasterize_batch`` on 1 and 2 threads at
256^2 and 512^2 (the two alternate; best and median; the load average shows
how much of the second core other processes took), and, as the reference,
the original authors' approach: scipy's LinearNDInterpolator over the
projected vertices (Delaunay triangulation included), which ignores occlusion.

The mesh is the mean face of the ICT-FaceKit light model (vertices with
z > -5 mm, subdivided once with igl.upsample) when
../shared/data/ict-face-model-light is present, else a procedural face-like
height field of the same size (the output says which).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, timed  # noqa: E402

ICT = DATA / "ict-face-model-light" / "ict_face_model.npz"


def face_mesh():
    """(V (n, 3) mm, F (m, 3), description); +Y up, the face looks toward +Z."""
    import igl

    if ICT.is_file():
        data = np.load(ICT)
        V = data["mean"].astype(np.float64)
        F = data["faces"].astype(np.int64)
        F = F[(V[F][:, :, 2] > -5.0).all(axis=1)]
        used, F = np.unique(F, return_inverse=True)
        V, F = V[used], F.reshape(-1, 3)
        V, F = igl.upsample(np.ascontiguousarray(V), np.ascontiguousarray(F), 1)
        return V, F, "ICT-FaceKit light mean face, z > -5 mm, igl.upsample x1"
    # Procedural stand-in: an ellipsoidal head with a nose bump, as a
    # 197 x 197 height field (38,809 vertices, 76,832 triangles).
    n = 197
    u, v = np.meshgrid(np.linspace(-1, 1, n), np.linspace(-1, 1, n))
    z = 60 * np.sqrt(np.clip(1 - u ** 2 - v ** 2 * 0.8, 0, None)) \
        + 25 * np.exp(-((u / 0.12) ** 2 + ((v + 0.05) / 0.3) ** 2))
    V = np.column_stack([u.ravel() * 80, -v.ravel() * 110, z.ravel()])
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, 1:], idx[1:, :-1]
    F = np.concatenate([np.stack([a, d, b], -1).reshape(-1, 3),
                        np.stack([b, d, c], -1).reshape(-1, 3)])
    return V, F, "procedural face-like height field (ICT model not found)"


def posed(V, F, yaw_deg, size):
    """Project orthographically after a yaw: view frame x right, y down,
    z away from the viewer; scaled to fill size x size with a 4 px margin.
    Channels: depth (mm), elevation of the vertex normal (rad), height (mm)."""
    from dce.geom.normals import elevation, vertex_normals

    t = np.radians(yaw_deg)
    yaw = np.array([[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]])
    R = np.diag([1.0, -1.0, -1.0]) @ yaw  # frontal camera after the yaw
    P = V @ R.T
    lo, hi = P[:, :2].min(0), P[:, :2].max(0)
    scale = (size - 8) / (hi - lo).max()
    P[:, :2] = (P[:, :2] - (lo + hi) / 2) * scale + (size - 1) / 2
    N = vertex_normals(V, F)
    A = np.column_stack([P[:, 2], elevation(N, -R[2]), V[:, 1]]).astype(np.float32)
    return P, A


def compile_seconds():
    """First call in a fresh process with an empty Numba cache."""
    code = ("import time, numpy as np\n"
            "t = time.perf_counter()\n"
            "from dce.geom.raster import rasterize, rasterize_batch\n"
            "V = np.array([[0.5, 0.5, 1.0], [5.5, 0.5, 1.0], [0.5, 5.5, 2.0]])\n"
            "F = np.array([[0, 1, 2]], np.int32)\n"
            "A = np.ones((3, 3), np.float32)\n"
            "rasterize(V, F, A, 8, 8)\n"
            "t1 = time.perf_counter()\n"
            "rasterize_batch([(V, F, A)], 8, 8)\n"
            "print(t1 - t, time.perf_counter() - t1)\n")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        cold = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True).stdout.split()
        warm = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True).stdout.split()
    return [float(x) for x in cold], [float(x) for x in warm]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller batches")
    args = parser.parse_args()

    import numba
    from scipy.interpolate import LinearNDInterpolator

    from dce.geom.raster import rasterize, rasterize_batch

    repeats = 30 if args.quick else 300
    batch = {256: 16 if args.quick else 64, 512: 8 if args.quick else 32}
    batch_repeats = 3 if args.quick else 15

    V, F, what = face_mesh()
    F32 = F.astype(np.int32)
    print(f"mesh: {what}: {len(V)} vertices, {len(F)} triangles; yaw 40 deg; "
          f"channels depth, normal elevation, height (float32)")
    (cold_single, cold_batch), (warm_single, warm_batch) = compile_seconds()
    print(f"numba compile, cold cache: rasterize {cold_single:.1f} s, rasterize_batch "
          f"{cold_batch:.1f} s (first call, incl. import); from cache: {warm_single:.2f} s, "
          f"{warm_batch:.2f} s")
    print(f"machine: {os.cpu_count()} cores, numba {numba.__version__}; times exclude "
          f"compilation; load average before: {os.getloadavg()[0]:.2f}")

    rows = {}
    for size in (256, 512):
        P, A = posed(V, F, 40.0, size)
        numba.set_num_threads(1)
        single = timed(lambda: rasterize(P, F32, A, size, size), repeats)
        covered = int(rasterize(P, F32, A, size, size)[1].sum())
        poses = [posed(V, F, yaw, size) for yaw in np.linspace(-45, 45, batch[size])]
        meshes = [(Pb, F32, Ab) for Pb, Ab in poses]
        # 1 and 2 threads alternate, so that both see the same neighbours on
        # this shared machine; best and median of the repeats.
        per_threads = {1: [], 2: []}
        for _ in range(batch_repeats):
            for threads in (1, 2):
                numba.set_num_threads(threads)
                t0 = time.perf_counter()
                rasterize_batch(meshes, size, size)
                per_threads[threads].append(len(meshes) / (time.perf_counter() - t0))
        rows[size] = (np.median(single) * 1e3, np.min(single) * 1e3, covered,
                      per_threads[1], per_threads[2], len(meshes), os.getloadavg()[0])

    P, A = posed(V, F, 40.0, 256)
    grid = np.stack(np.meshgrid(np.arange(256.0), np.arange(256.0)), -1).reshape(-1, 2)

    def scipy_reference():
        LinearNDInterpolator(P[:, :2], A)(grid)

    scipy_ms = np.median(timed(scipy_reference, 1 if args.quick else 3)) * 1e3

    def both(f):
        return "".join(f(rows[size]) for size in (256, 512))

    print()
    print(f"{'':46s}{'256 x 256':>14s}{'512 x 512':>14s}")
    print(f"{'one mesh, 1 thread: median (ms)':46s}" + both(lambda r: f"{r[0]:14.3f}"))
    print(f"{'one mesh, 1 thread: best (ms)':46s}" + both(lambda r: f"{r[1]:14.3f}"))
    print(f"{'pixels covered':46s}" + both(lambda r: f"{r[2]:14d}"))
    print(f"{'batch size (poses, yaw -45..45 deg)':46s}" + both(lambda r: f"{r[5]:14d}"))
    print(f"{'batch, 1 thread: best / median (meshes/s)':46s}"
          + both(lambda r: f"{max(r[3]):8.0f} /{np.median(r[3]):4.0f}"))
    print(f"{'batch, 2 threads: best / median (meshes/s)':46s}"
          + both(lambda r: f"{max(r[4]):8.0f} /{np.median(r[4]):4.0f}"))
    print(f"{'speed-up 1 -> 2 threads: best / median':46s}"
          + both(lambda r: f"{max(r[4]) / max(r[3]):8.2f} /{np.median(r[4]) / np.median(r[3]):5.2f}"))
    print(f"{'load average after the batch runs':46s}" + both(lambda r: f"{r[6]:14.2f}"))
    print(f"{'scipy LinearNDInterpolator (ms/mesh)':46s}{scipy_ms:14.1f}")
    print("(scipy: Delaunay of the projected vertices + linear interpolation onto the grid, "
          "no occlusion handling)")
    print(f"threading layer {numba.threading_layer()}; load average after: "
          f"{os.getloadavg()[0]:.2f} (other processes share these cores)")


if __name__ == "__main__":
    main()
