"""Does the detail stage learn more from more people? Its held-out
``detail_corr`` against the number of training identities.

The demo's detail stage (40 training identities) scores 0.24 on the 20
held-out identities, and 17 times its training on a GPU only 0.256: more
passes over the same people do not help. This script asks whether more
people would, from the depth alone (``--demo``) or with the photo
(``--pairs`` of a colour build and ``--global-checkpoint``, its global
network). Every row trains the detail stage with its default settings
(``--iterations`` each) over that global network and is scored by
``dce-eval`` on the reference pair file's held-out split, the same 240
images at 256 px for every row:

- n up to the reference's 40: a copy of the reference pair file whose
  training split keeps n of its training identities (nested random
  subsets, seed 0; the others are moved to the test split, which training
  never reads);
- n above 40: a world of the same seed with ``n + 20`` identities. Identity
  k of a world is drawn from (seed, k) alone, so its first 60 are the
  reference's, scan for scan; it is built the reference's way (its
  channels) and its split set so that the reference's 20 held-out
  identities are held out and every other one trains. The script checks
  that those 240 coarse and target images equal the reference file's,
  byte for byte.

    python benchmarks/detail_identities.py --demo DEMO [--identities 10 20 40 100]
        [--iterations 600] [--out out/identities]
    python benchmarks/detail_identities.py --pairs out/compare/pairs.h5
        --global-checkpoint GLOBAL --identities 40 100 --iterations 6000

``DEMO`` is a finished ``dce-demo --out DEMO`` (its ``pairs.h5`` and
``run/last.pt``). Finished trainings are kept (rerun to continue). About 7
minutes per 600 iterations on 2 cores (twice that with colour) plus the
bigger world's build. Writes
``benchmarks/results/detail_identities_<iterations>.md`` (DCE only) or
``detail_identities_rgb_<iterations>.md`` (a colour build), or ``--results``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT  # noqa: E402

from dce.gan.h5format import SPLIT, TEST, TRAIN, validate  # noqa: E402

SEED = 0  # the demo's world and build


def build_channels(path) -> str:
    """The channels a pair file was built with ("DCE", "DCE+RGB", ...)."""
    return validate(path)["config"]["channels"]


def subjects_and_split(path) -> tuple:
    """(subject (N,) str, split (N,) int) of a pair file."""
    with h5py.File(path, "r") as f:
        return np.asarray(f["subject"].asstr()[:]), f[SPLIT][()]


def restrict_training(path, keep: set) -> None:
    """Move every training sample whose subject is not in ``keep`` to the
    test split (whole identities, so the split stays identity-disjoint)."""
    subjects, split = subjects_and_split(path)
    moved = (split == TRAIN) & ~np.isin(subjects, sorted(keep))
    with h5py.File(path, "r+") as f:
        f[SPLIT][...] = np.where(moved, TEST, split).astype(split.dtype)


def subset_file(reference: Path, out: Path, keep: set) -> Path:
    """A copy of the reference pair file training on ``keep`` only."""
    path = out / f"pairs_{len(keep)}.h5"
    if not path.exists():
        partial = path.with_suffix(".partial")
        shutil.copyfile(reference, partial)
        restrict_training(partial, keep)
        os.replace(partial, path)
    return path


def bigger_world_file(reference: Path, channels: str, out: Path, identities: int,
                      test: set) -> Path:
    """The pair file of a world of ``identities`` people built the
    reference's way (with its ``channels``), its held-out identities
    ``test`` held out, all others training; its held-out images checked
    against the reference's."""
    from dce.cli.demo import build_pairs

    tag = "" if channels == "DCE" else "_" + channels.replace("+", "_").lower()
    path = out / f"pairs_world{identities}{tag}.h5"
    if not path.exists():
        partial = out / f"pairs_world{identities}{tag}.partial.h5"
        build_pairs(out / f"world{identities}", partial, identities, 256, 5, SEED,
                    os.cpu_count(), channels)
        subjects, split = subjects_and_split(partial)
        with h5py.File(partial, "r+") as f:
            f[SPLIT][...] = np.where(np.isin(subjects, sorted(test)), TEST,
                                     TRAIN).astype(split.dtype)
        check_same_held_out(reference, partial)
        os.replace(partial, path)
    return path


def check_same_held_out(reference: Path, other: Path) -> None:
    """The held-out samples of ``reference`` are in ``other``, identical."""
    with h5py.File(reference, "r") as a, h5py.File(other, "r") as b:
        ids_a = a["sample_id"].asstr()[:]
        rows_b = {s: k for k, s in enumerate(b["sample_id"].asstr()[:])}
        held, split_b = np.flatnonzero(a[SPLIT][()] == TEST), b[SPLIT][()]
        for k in held:
            j = rows_b.get(ids_a[k])
            if j is None or split_b[j] != TEST:
                raise SystemExit(f"{other}: held-out sample {ids_a[k]} is missing or trains")
            for name in ("coarse", "target", "target_mask"):
                if not np.array_equal(a[name][k], b[name][j]):
                    raise SystemExit(f"{other}: {name} of {ids_a[k]} differs from "
                                     f"{reference}'s")
    print(f"  {len(held)} held-out samples identical to the reference's", flush=True)


def train_and_score(pairs: Path, reference: Path, global_checkpoint: Path, run: Path,
                    iterations: int) -> tuple:
    """(scores, seconds): the detail stage on ``pairs`` over the global
    network, scored on the reference pair file's held-out split."""
    from dce.gan.detail import DetailSettings, DetailTrainer
    from dce.gan.evaluate import evaluate

    settings = DetailSettings(data=str(pairs), out=str(run),
                              global_checkpoint=str(global_checkpoint),
                              iterations=iterations, seed=SEED, device="cpu")
    trainer = DetailTrainer(settings)
    if (run / "last.pt").exists():
        trainer.resume(run / "last.pt")
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    scores, _, _ = evaluate(run / "last.pt", reference)
    return scores, seconds


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--demo", type=Path,
                        help="a finished dce-demo --out folder (its pairs.h5 and run/last.pt)")
    source.add_argument("--pairs", type=Path,
                        help="the reference pair file (with --global-checkpoint)")
    p.add_argument("--global-checkpoint", type=Path,
                   help="with --pairs: the global network the stage refines")
    p.add_argument("--identities", type=int, nargs="+", default=[10, 20, 40, 100],
                   help="training identities per row (default: 10 20 40 100)")
    p.add_argument("--iterations", type=int, default=600,
                   help="detail-stage iterations per row (default: 600, the demo's)")
    p.add_argument("--out", type=Path, default=Path("out/identities"), help="work folder")
    p.add_argument("--results", type=Path,
                   help="the results file (default: benchmarks/results/"
                        "detail_identities[_rgb]_<iterations>.md)")
    args = p.parse_args()
    if args.demo:
        reference, global_checkpoint = args.demo / "pairs.h5", args.demo / "run" / "last.pt"
    elif args.global_checkpoint:
        reference, global_checkpoint = args.pairs, args.global_checkpoint
    else:
        p.error("--pairs needs --global-checkpoint")
    args.out.mkdir(parents=True, exist_ok=True)
    channels = build_channels(reference)
    subjects, split = subjects_and_split(reference)
    train = sorted(set(subjects[split == TRAIN]))
    test = set(subjects[split == TEST])
    order = [train[k] for k in np.random.default_rng(SEED).permutation(len(train))]
    rows = []
    for n in args.identities:
        print(f"== {n} training identities", flush=True)
        if n <= len(train):
            pairs = subset_file(reference, args.out, set(order[:n]))
        else:
            pairs = bigger_world_file(reference, channels, args.out, n + len(test), test)
        scores, seconds = train_and_score(pairs, reference, global_checkpoint,
                                          args.out / f"detail_{n}", args.iterations)
        refined = scores.per_image["refined"]
        corr = refined["detail_corr"]
        images = int((subjects_and_split(pairs)[1] == TRAIN).sum())
        rows.append((n, images, scores.per_image["coarse"], refined, corr, seconds))
        print(f"  detail_corr {np.nanmean(corr):.3f} ± {np.nanstd(corr):.3f}, normal error "
              f"{np.nanmean(refined['normal_error_deg']):.2f}°, face MAE "
              f"{np.nanmean(refined['face_mae_mm']):.3f} mm ({seconds:.0f} s)", flush=True)
    command = ("--demo DEMO" if args.demo else
               f"--pairs {args.pairs} --global-checkpoint GLOBAL")
    kind = "DCE-only" if channels == "DCE" else channels
    lines = [f"# {kind} detail against the number of training identities", "",
             f"`python benchmarks/detail_identities.py {command} --identities "
             f"{' '.join(map(str, args.identities))} --iterations {args.iterations}"
             f"{f' --out OUT --results {args.results}' if args.results else ''}`: the "
             f"detail stage (default settings) over the global network {global_checkpoint}, "
             f"scored on {reference}'s 240 held-out images at 256 px (see the script's "
             "docstring). Where a finished training was kept, a row's time is only its "
             "preparation (the global network over the training split).", "",
             "| training identities | training images | detail_corr (mean ± std) | normal error (°) | "
             "face MAE (mm) | training time (s) |", "|---|---|---|---|---|---|"]
    coarse = rows[0][2]
    lines.append(f"| coarse | | 0 | {np.nanmean(coarse['normal_error_deg']):.2f} | "
                 f"{np.nanmean(coarse['face_mae_mm']):.3f} | |")
    for n, images, _, refined, corr, seconds in rows:
        lines.append(f"| {n} | {images} | {np.nanmean(corr):.3f} ± {np.nanstd(corr):.3f} | "
                     f"{np.nanmean(refined['normal_error_deg']):.2f} | "
                     f"{np.nanmean(refined['face_mae_mm']):.3f} | {seconds:.0f} |")
    tag = "" if channels == "DCE" else "rgb_"
    result = args.results or (ROOT / "benchmarks" / "results" /
                              f"detail_identities_{tag}{args.iterations}.md")
    result.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {result}")


if __name__ == "__main__":
    main()
