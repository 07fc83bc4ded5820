"""What the coarse input's face MAE is made of, on a pair file's held-out
images at its own resolution: how low any refinement that keeps the coarse
surface's outline could bring dce-eval's ``face_mae_mm``.

dce-eval's face MAE runs over the ground truth's foreground. It splits into

* the target pixels the coarse image has no surface at (a refinement keeps
  the coarse outline: it adds to the coarse surface, never beyond it);
* inside the coarse surface, each image's depth offset (the median of
  target - coarse over those pixels: the coarse fit's error along the view
  axis, which an orthographic image does not show) and the shape error
  left around it.

Oracles, all on the held-out images: a refinement that gets the shape
exactly right but keeps each image's offset; the same shifted by the
training split's median offset (a constant a network can learn); shifted by
the held-out images' own median (which no model can know). And a probe:
ridge regression of the offset on simple features of the coarse image
(pose, depth statistics, surface area, mean curvature and elevation),
fitted on the training split, scored on the held-out one (R^2).

    python benchmarks/face_mae_parts.py PAIRS.h5

Writes ``benchmarks/results/face_mae_parts.md``. Seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

from dce.gan import h5format as fmt  # noqa: E402
from dce.gan.h5format import FOREGROUND_ABOVE  # noqa: E402


def image_parts(f: h5py.File, i: int, depth: int, extra: list) -> dict:
    """Offset, pixel shares and error sums (mm, per target pixel) of sample ``i``."""
    coarse = fmt.dequantize(f["coarse"][i])
    c, t = coarse[depth], fmt.dequantize(f["target"][i, depth])
    mm = abs(f["target_scale"][i, depth])
    target, surface = t >= FOREGROUND_ABOVE, c >= FOREGROUND_ABOVE
    n = target.sum()
    inside = target & surface
    difference = (t - c)[inside] * mm
    offset = float(np.median(difference))
    on = c[surface] * mm
    features = [on.mean(), on.std(), on.max(), surface.mean()]
    features += [coarse[k][surface].mean() for k in extra]
    return {"offset": offset, "inside_share": inside.sum() / n,
            "inside": np.abs(difference).sum() / n,
            "inside_offset_free": np.abs(difference - offset).sum() / n,
            "missing": (np.abs(c - t) * mm)[target & ~surface].sum() / n,
            "features": features}


def ridge_r2(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
             lam: float) -> tuple:
    """(held-out R^2, mean |residual| mm) of ridge on standardized features."""
    mu, sd = X[train].mean(0), X[train].std(0) + 1e-12
    Z = np.c_[np.ones(len(X)), (X - mu) / sd]
    penalty = lam * np.eye(Z.shape[1])
    penalty[0, 0] = 0.0
    w = np.linalg.solve(Z[train].T @ Z[train] + penalty, Z[train].T @ y[train])
    residual = y[test] - Z[test] @ w
    r2 = 1 - (residual ** 2).sum() / ((y[test] - y[test].mean()) ** 2).sum()
    return float(r2), float(np.abs(residual).mean())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="pair file from dce-build (with a held-out split)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "face_mae_parts.md",
                   help="the markdown table written")
    args = p.parse_args()
    fmt.validate(args.data)
    with h5py.File(args.data, "r") as f:
        channels = json.loads(f.attrs["channels"])
        depth = channels.index("depth")
        extra = [channels.index(c) for c in ("curvature", "elevation") if c in channels]
        split, pose = f["split"][()], f["pose"][()]
        parts = [image_parts(f, i, depth, extra) for i in range(len(split))]
    train, test = split == 0, split == 1
    if not test.any() or not train.any():
        sys.exit(f"{args.data}: needs both a training and a held-out split")
    get = {k: np.array([q[k] for q in parts]) for k in parts[0] if k != "features"}
    offset, share, missing = get["offset"], get["inside_share"], get["missing"]
    face_mae = (get["inside"] + missing)[test].mean()

    def perfect_shape(shift: float) -> float:
        return float((np.abs(offset - shift) * share + missing)[test].mean())

    rows = [("coarse input (dce-eval's face MAE)", face_mae),
            ("  of which: target pixels without coarse surface", missing[test].mean()),
            ("  of which: inside the coarse surface", get["inside"][test].mean()),
            ("coarse with each image's offset removed (oracle)",
             (get["inside_offset_free"] + missing)[test].mean()),
            ("exact shape, each image's offset kept", perfect_shape(0.0)),
            (f"exact shape, shifted by the training median offset "
             f"({np.median(offset[train]):+.2f} mm)", perfect_shape(np.median(offset[train]))),
            (f"exact shape, shifted by the held-out median offset "
             f"({np.median(offset[test]):+.2f} mm, oracle)", perfect_shape(np.median(offset[test])))]
    X = np.c_[pose, np.array([q["features"] for q in parts])]
    probes = [(lam, *ridge_r2(X, offset, train, test, lam)) for lam in (0.1, 1.0, 10.0)]
    lines = [f"# What the face MAE is made of: {args.data.name}, {int(test.sum())} held-out "
             "images at the file's resolution", "",
             f"`python benchmarks/face_mae_parts.py {args.data.name}`", "",
             "| face MAE of | mm | × coarse |", "|---|---|---|"]
    lines += [f"| {name} | {value:.3f} | {value / face_mae:.2f} |" for name, value in rows]
    lines += ["", f"Depth offsets (median target − coarse inside the coarse surface): held-out "
              f"mean {offset[test].mean():+.2f} mm, std {offset[test].std():.2f}, mean |offset| "
              f"{np.abs(offset[test]).mean():.2f}; training mean {offset[train].mean():+.2f}.", "",
              "| ridge on the coarse image's features (pose, depth statistics, area, mean "
              "curvature and elevation) | held-out R² | mean \\|offset − prediction\\| (mm) |",
              "|---|---|---|"]
    lines += [f"| λ = {lam:g} | {r2:.3f} | {err:.2f} |" for lam, r2, err in probes]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
