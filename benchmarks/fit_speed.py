"""Speed of the landmark fit (dce.geom.morphable.fit_to_landmarks).

    python benchmarks/fit_speed.py [--quick] [--scipy]

Target: a fit of a 100-mode model in <= 50 ms. The model is the ICT Face
Model Light (11,248 vertices, 100 identity modes, 53 expressions) when the
shared data is present, else a random model of the same size. The landmarks
are the model's own, of a random identity seen at yaw 25, pitch -10, plus
2 px RMS noise, at 1 px/mm in a 256^2 image. Times are the minimum and median
over repeats after a warm-up and include building the full fitted mesh; the
first call of the process, which loads or compiles the Numba kernels, is
reported separately.

``--scipy`` times every case a second time, in the same process, with each
step's bounded least squares solved by scipy instead of the hand-written
solver (``scipy.optimize.lsq_linear(method="bvls")`` within bounds,
``numpy.linalg.lstsq`` without): the measurement behind keeping ours.

Small matrices (136 x ~110) make BLAS threading pure overhead, and on a
loaded machine a harmful one: run with ``OPENBLAS_NUM_THREADS=1`` (or
``OMP_NUM_THREADS=1``) to measure the fit alone; the setting is printed.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA, best_and_median  # noqa: E402

from dce.geom import landmark_fit
from dce.geom.morphable import MorphableModel, fit_to_landmarks, load_model
from dce.geom.projection import posed_camera

ICT = DATA / "ict-face-model-light" / "ict_face_model.npz"
TARGET_MS = 50.0


def random_model(n=11248, k=100, e=53, seed=0) -> MorphableModel:
    """A stand-in of the ICT model's size: an ellipsoidal cap with random
    modes decaying like a PCA spectrum and 68 landmarks on the front."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    u, v = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side))
    u, v = u.ravel()[:n], v.ravel()[:n]
    mean = np.column_stack([80 * u, 100 * v, 80 * np.sqrt(np.clip(1.5 - u ** 2 - v ** 2, 0, None))])
    r = np.arange(side * side).reshape(side, side)
    quads = np.stack([r[:-1, :-1], r[:-1, 1:], r[1:, 1:], r[1:, :-1]], -1).reshape(-1, 4)
    quads = quads[(quads < n).all(axis=1)]
    faces = np.concatenate([quads[:, [0, 2, 1]], quads[:, [0, 3, 2]]])
    sigma = 4.7 * np.exp(-np.arange(k) / 25.0)
    identity = rng.normal(size=(k, n, 3)) * sigma[:, None, None]
    expression = rng.normal(size=(e, n, 3))
    landmarks = rng.choice(np.flatnonzero((np.abs(u) < 0.8) & (np.abs(v) < 0.8)), 68, False)
    return MorphableModel(mean, identity, faces, landmarks, expression_basis=expression,
                          expression_range=(0.0, 1.0), name="random")


def scipy_lstsq(A, b, reg, bounds=None, start=None):
    """:func:`dce.geom.bounded_lsq.regularized_lstsq` by scipy: the ridge
    as extra rows, the same column scaling; ``start`` is not used (BVLS
    takes no warm start)."""
    from scipy.optimize import lsq_linear

    norms = np.sqrt((A * A).sum(axis=0) + reg)
    norms[norms == 0] = 1.0
    As = np.vstack([A / norms, np.diag(np.sqrt(reg) / norms)])
    bs = np.concatenate([b, np.zeros(len(reg))])
    if bounds is None:
        return np.linalg.lstsq(As, bs, rcond=None)[0] / norms
    lo, hi = bounds
    return lsq_linear(As, bs, bounds=(lo * norms, hi * norms), method="bvls").x / norms


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--scipy", action="store_true",
                        help="time each case again with scipy's least squares in each step")
    args = parser.parse_args()
    repeats = 5 if args.quick else 30

    if ICT.is_file():
        t0 = time.perf_counter()
        model = load_model(ICT)
        print(f"model: ICT Face Model Light ({model.n_vertices} vertices, "
              f"{model.n_identity} identity, {model.n_expression} expression modes), "
              f"loaded in {time.perf_counter() - t0:.2f} s")
    else:
        model = random_model()
        print(f"model: random stand-in ({model.n_vertices} vertices, {model.n_identity} "
              f"identity, {model.n_expression} expression modes); {ICT} not found")
    threads = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                          "MKL_NUM_THREADS") if k in os.environ}
    print(f"BLAS threads: {threads or 'library default'}; {os.cpu_count()} CPUs")

    rng = np.random.default_rng(1)
    X = model.landmarks(rng.normal(size=model.n_identity))
    camera = posed_camera(X[30], 1.0, 256, yaw=25, pitch=-10)
    x = camera.project(X)[:, :2] + rng.normal(scale=np.sqrt(2.0), size=(68, 2))

    t0 = time.perf_counter()
    fit_to_landmarks(model, x, n_expression=None)
    print(f"first call (loads or compiles the Numba kernels): "
          f"{1e3 * (time.perf_counter() - t0):.0f} ms")

    cases = [("100 identity, fixed contour", dict()),
             ("100 identity, no regularization", dict(regularization=0.0)),
             ("100 identity + 53 expressions in [0,1]", dict(n_expression=None)),
             ("40 identity", dict(n_identity=40))]
    if model.name != "random":  # the stand-in's landmarks are random: it has no jaw line
        cases.insert(2, ("100 identity, sliding contour", dict(contour="sliding")))
    solvers = [("ours", landmark_fit.regularized_lstsq)]
    if args.scipy:
        solvers.append(("scipy", scipy_lstsq))
    print(f"\n{'case':42s} {'solver':>6s} {'iters':>5s} {'RMS px':>7s} {'min ms':>8s} "
          f"{'median ms':>10s}")
    worst, medians = 0.0, {}
    for name, options in cases:
        for solver, solve in solvers:
            landmark_fit.regularized_lstsq = solve
            try:
                fit = fit_to_landmarks(model, x, **options)
                best, median = best_and_median(lambda: fit_to_landmarks(model, x, **options),
                                               repeats, 1e3)
            finally:
                landmark_fit.regularized_lstsq = solvers[0][1]
            medians[name, solver] = median
            ratio = f" ({median / medians[name, 'ours']:.1f}x ours)" if solver != "ours" else ""
            print(f"{name:42s} {solver:>6s} {fit.iterations:5d} {fit.residual_px:7.2f} "
                  f"{best:8.1f} {median:10.1f}{ratio}")
            if name.startswith("100 identity, fixed") and solver == "ours":
                worst = median
    verdict = "meets" if worst <= TARGET_MS else "MISSES"
    print(f"\n100-mode fit: median {worst:.1f} ms, {verdict} the target of {TARGET_MS:.0f} ms")


if __name__ == "__main__":
    main()
