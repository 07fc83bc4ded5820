"""Shared helpers of the benchmark scripts (run them from the repository root
or anywhere: each puts this folder on sys.path)."""
import argparse
import os
import sys
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


def mean_se(values) -> str:
    """"mean ± standard error" (3 decimals) of the finite values."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    return f"{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(len(v)):.3f}"


def write_report(lines: list, out: Path) -> int:
    """Write a results file's ``lines``, print them and where they went; 0
    (a script's exit status)."""
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"-> {out}")
    return 0


def demo_stage_parser(doc: str) -> argparse.ArgumentParser:
    """The parser of a benchmark that trains detail stages over a finished
    demo's global network: ``--demo`` and ``--iterations`` (600, the demo's)."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", type=Path, required=True,
                   help="a finished dce-demo --out folder (pairs.h5, run/last.pt)")
    p.add_argument("--iterations", type=int, default=600,
                   help="training iterations of each stage (default: 600, the demo's)")
    return p


def demo_global_run(demo: Path, who: str) -> tuple:
    """(pairs.h5, run/last.pt) of the finished demo ``demo``; exits naming
    the missing file."""
    data, model = demo / "pairs.h5", demo / "run" / "last.pt"
    for path in (data, model):
        if not path.exists():
            sys.exit(f"{who}: {path} is missing (run dce-demo --out {demo})")
    return data, model
