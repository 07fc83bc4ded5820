"""Speed of the NoW-protocol scan-to-mesh evaluation (dce.geom.mesh_eval) on
one core.

    python benchmarks/eval_mesh_speed.py [--repeats N] [--cpu K]

Target: a 60k-point scan against a 50k-vertex predicted mesh, ICP included,
in <= 2 s on one core. The scan is the synthetic world's mean face sampled
so that about 60 000 points fall inside NoW's crop sphere; the prediction
is the mean face on a coarser grid (49,729 vertices) with a +-0.5 mm
sinusoidal difference, moved by a random similarity, its 68 landmarks with
2 mm noise. The process is pinned to one CPU (``os.sched_setaffinity``) and
libigl, BLAS and Numba are told to use one thread. Rows: the whole
evaluation (crop, Procrustes, ICP, distances) with the scale fitted, with
--metric (the prediction then in mm, only the rotation and translation
fitted), its steps, and the whole command on one pair of PLY files
(reading, evaluating and writing the error PLY, JSON, Markdown and PNG).
Times are the minimum and median over repeats after a warm-up. Results go
to benchmarks/results/eval_mesh_speed.md.
"""
from __future__ import annotations

import os

for _name in ("IGL_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "NUMBA_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from common import ROOT, best_and_median  # noqa: E402

from dce.geom.alignment import (  # noqa: E402
    Similarity,
    crop_sphere,
    icp,
    inside_sphere,
    now_landmarks,
    procrustes,
)
from dce.geom.io import Landmarks, Mesh, save_mesh, write_landmarks  # noqa: E402
from dce.geom.mesh_eval import evaluate_folders, evaluate_mesh  # noqa: E402
from dce.geom.synthetic import LANDMARK_UV, grid_faces, mean_surface  # noqa: E402

TARGET_S = 2.0
RESULTS = ROOT / "benchmarks" / "results" / "eval_mesh_speed.md"


def face_grid(spacing: float, ripple: float = 0.0) -> tuple:
    """The mean face over u, v in [-100, 100] mm on a grid of ``spacing``
    mm, plus ``ripple`` mm of sinusoidal depth: (V, F)."""
    u = np.arange(-100.0, 100.0 + 1e-9, spacing)
    v = np.arange(-100.0, 100.0 + 1e-9, spacing)
    P = mean_surface(u[None, :], v[:, None])
    P[..., 2] += ripple * np.sin(u[None, :] / 9.0) * np.cos(v[:, None] / 11.0)
    return P.reshape(-1, 3), grid_faces(len(v), len(u))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row (default: 5)")
    parser.add_argument("--cpu", type=int, default=None,
                        help="CPU to pin to (default: the first one this process may use)")
    args = parser.parse_args()
    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})

    L = mean_surface(*LANDMARK_UV.T)
    scan_V, scan_F = face_grid(0.71)
    centre, radius = crop_sphere(now_landmarks(L))
    n_crop = int(inside_sphere(scan_V, centre, radius).sum())
    pred_V, pred_F = face_grid(0.9, ripple=0.5)
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    rotation *= np.sign(np.linalg.det(rotation))
    noise = rng.normal(size=L.shape) * 2.0
    rows = []

    for metric in (False, True):
        T = Similarity(1.0 if metric else 1.37, rotation, np.array([40.0, -25.0, 300.0]))
        V, lm = T.apply(pred_V), T.apply(L) + noise
        result = evaluate_mesh(scan_V, scan_F, L, V, pred_F, lm, metric=metric)
        best, median = best_and_median(
            lambda: evaluate_mesh(scan_V, scan_F, L, V, pred_F, lm, metric=metric),
            args.repeats)
        rows.append((f"evaluate_mesh, {'--metric (R, t)' if metric else 'scale fitted (s, R, t)'}",
                     best, median, f"median error {np.median(result.distances):.3f} mm; ICP "
                     f"{result.fit.iterations} + {result.fit.polish_iterations} iterations"))

    # The steps of the scale-fitted evaluation.
    T = Similarity(1.37, rotation, np.array([40.0, -25.0, 300.0]))
    V, lm = T.apply(pred_V), T.apply(L) + noise
    keep = inside_sphere(scan_V, centre, radius)
    points = scan_V[keep]
    init = procrustes(now_landmarks(lm), now_landmarks(L))
    steps = [
        ("  crop to NoW's sphere", lambda: scan_V[inside_sphere(scan_V, centre, radius)]),
        ("  landmark Procrustes", lambda: procrustes(now_landmarks(lm), now_landmarks(L))),
        ("  ICP: subset of 6000, then all points (incl. the AABB tree)",
         lambda: icp(points, V, pred_F, init)),
    ]
    for name, fn in steps:
        best, median = best_and_median(fn, args.repeats)
        rows.append((name, best, median, ""))

    with tempfile.TemporaryDirectory() as tmp:
        pred_dir, gt_dir, out = Path(tmp, "pred"), Path(tmp, "gt"), Path(tmp, "out")
        pred_dir.mkdir()
        gt_dir.mkdir()
        save_mesh(gt_dir / "face.ply", Mesh(scan_V, scan_F))
        write_landmarks(gt_dir / "face.landmarks.txt", Landmarks(L))
        save_mesh(pred_dir / "face.ply", Mesh(V, pred_F))
        write_landmarks(pred_dir / "face.landmarks.txt", Landmarks(lm))
        best, median = best_and_median(lambda: evaluate_folders(pred_dir, gt_dir, out),
                                       args.repeats)
        rows.append(("whole command on one pair of PLYs (read, evaluate, write outputs)",
                     best, median, ""))

    lines = [
        "`python benchmarks/eval_mesh_speed.py` — NoW-protocol evaluation on one core "
        f"(CPU {cpu}, {platform.processor() or platform.machine()}; a shared, busy machine: "
        "other jobs ran at the same time).",
        "",
        f"Scan: {len(scan_V)} points, {n_crop} inside the crop sphere (radius {radius:.1f} mm). "
        f"Prediction: {len(pred_V)} vertices, {len(pred_F)} triangles. "
        f"Target: <= {TARGET_S:.0f} s for the evaluation with ICP. {args.repeats} repeats after "
        "a warm-up.",
        "",
        "| step | best (s) | median (s) | note |",
        "|---|---|---|---|",
        *[f"| {name} | {best:.3f} | {median:.3f} | {note} |" for name, best, median, note in rows],
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_name(f".{RESULTS.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, RESULTS)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
