"""Shared helpers of the benchmark scripts (run them from the repository root
or anywhere: each puts this folder on sys.path)."""
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("DCE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def timed(fn, repeats: int) -> np.ndarray:
    """Seconds of each of ``repeats`` calls of ``fn()``, after one warm-up call
    (Numba compilation and caches are not measured)."""
    fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times


def best_and_median(fn, repeats: int, unit: float = 1.0) -> tuple:
    """(best, median) of :func:`timed`, multiplied by ``unit`` (1e3 for ms)."""
    t = timed(fn, repeats) * unit
    return float(t.min()), float(np.median(t))
