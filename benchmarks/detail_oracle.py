"""How far fine detail can move the figures: oracles on a pair file's
held-out split at its full resolution.

Each oracle adds to the coarse depth a part of what it lacks, taken from the
ground truth itself: the high-pass of (target - coarse) finer than a
Gaussian sigma (normalized convolution over the face), at full or half
amplitude, and the exact 1-5 mm band that ``detail_corr`` scores. No network
can do better than the oracle that knows the same band exactly, so these
rows bound what a detail stage can reach on this data: e.g. if even the
exact detail finer than 2 mm leaves 0.77x the coarse normal error, a
network that places the creases but not the pores and sensor noise cannot
reach 0.8x.

    python benchmarks/detail_oracle.py demo/pairs.h5 [--every 1]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dce.gan.data import PairDataset  # noqa: E402
from dce.gan.detail import pixel_sizes  # noqa: E402
from dce.gan.h5format import FOREGROUND_ABOVE  # noqa: E402
from dce.gan.metrics import band_pass, detail_corr, gaussian_blur_masked, normal_error_deg  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="DCE pair file (e.g. demo/pairs.h5)")
    p.add_argument("--every", type=int, default=1,
                   help="use every k-th held-out sample (default: 1, all)")
    p.add_argument("--batch", type=int, default=24, help="images per batch (default: 24)")
    args = p.parse_args()
    data = PairDataset(args.data, "test", ("depth",), ("depth",), augment=False)
    rows = list(range(0, len(data), args.every))
    sigmas, amplitudes = (0.6, 1.0, 2.0, 4.0, 8.0), (1.0, 0.5)
    names = ["coarse"] + [f"+ HP {s:g} mm x {a:g}" for s in sigmas for a in amplitudes] + [
        "+ exact 1-5 mm band"]
    normal = {n: [] for n in names}
    corr = {n: [] for n in names}
    for start in range(0, len(rows), args.batch):
        chunk = rows[start:start + args.batch]
        items = data.fetch(chunk)
        x = torch.stack([it["coarse"] for it in items])[:, 0].double()
        y = torch.stack([it["target"] for it in items])[:, 0].double()
        face = torch.stack([it["target_mask"] for it in items])[:, 0] > 0
        mm = torch.stack([it["target_scale"][0] for it in items]).abs()
        px = torch.from_numpy(pixel_sizes(args.data, data.indices[chunk]))
        valid = face & (x >= FOREGROUND_ABOVE)
        missing = (y - x) * valid
        candidates = {"coarse": x}
        for s in sigmas:
            high = (missing - gaussian_blur_masked(missing, valid, s / px)) * valid
            for a in amplitudes:
                candidates[f"+ HP {s:g} mm x {a:g}"] = x + a * high
        candidates["+ exact 1-5 mm band"] = x + band_pass(missing, valid, 1.0 / px, 5.0 / px)
        for name, prediction in candidates.items():
            normal[name].append(normal_error_deg(prediction, y, mm, px, face))
            corr[name].append(detail_corr(prediction, x, y, face, px))
    base = float(np.nanmean(torch.cat(normal["coarse"]).numpy()))
    print(f"{len(rows)} held-out images of {args.data} at {data.height} px\n")
    print("| coarse depth + | normal error (°) | × coarse | detail corr. |\n|---|---|---|---|")
    for name in names:
        n = float(np.nanmean(torch.cat(normal[name]).numpy()))
        c = float(np.nanmean(torch.cat(corr[name]).numpy()))
        print(f"| {name} | {n:.2f} | {n / base:.2f} | {c:.2f} |")


if __name__ == "__main__":
    main()
