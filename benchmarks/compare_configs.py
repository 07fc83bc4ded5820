"""The comparison table (paper Table 3, on the built-in world): the same
data, the same schedule and iteration budget for each model, evaluated on the
held-out identities at the pair file's resolution (256 px).

Rows (``ROWS``): the paper's DCE|D|DCE with the paper's network unchanged
(whole-image L1, no residual); our residual progressive network (L1 over the
face); the same plus the detail stage (dce-train-detail) on full-resolution
crops; the colour configuration DCE+RGB|D|DCE with and without the detail
stage; pix2pix in DCE|D|D. Columns: Eq. 4 MAE (normalized and mm), the face
MAE (mm), the normal error (degrees), the detail correlation and the surface
roughness (mean |Laplacian| of the depth, mm/px^2) beside the ground truth's.

    python benchmarks/compare_configs.py                 # builds the world with RGB, cpu preset
    python benchmarks/compare_configs.py --data pairs.h5 --out out/compare --device cuda
    python benchmarks/compare_configs.py --only "DCE|D|DCE + detail stage"

Without --data it builds the default synthetic world with the RGB channels
(about a minute and a half here). Every run lives in OUT/<name>/ and is
skipped when finished, so an interrupted comparison continues where it
stopped. On 2 CPU cores each cpu-preset run takes about 4-5 minutes, each
detail stage about 4, each evaluation about 1.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

# name, model, config, residual generator, masked L1, detail stage on top
ROWS = [
    ("DCE|D|DCE, paper network", "progressive", "DCE|D|DCE", False, False, False),
    ("DCE|D|DCE, residual", "progressive", "DCE|D|DCE", True, True, False),
    ("DCE|D|DCE + detail stage", "progressive", "DCE|D|DCE", True, True, True),
    ("DCE+RGB|D|DCE, residual", "progressive", "DCE+RGB|D|DCE", True, True, False),
    ("DCE+RGB|D|DCE + detail stage", "progressive", "DCE+RGB|D|DCE", True, True, True),
    ("pix2pix DCE|D|D", "pix2pix", "DCE|D|D", False, False, False),
]


def build_world(out: Path) -> Path:
    from dce.cli.build import main as build

    data = out / "pairs.h5"
    if not data.exists():
        code = build(["synthetic", "--world", str(out / "world"), "-o", str(data),
                      "--channels", "DCE+RGB"])
        if code != 0:
            sys.exit(f"dce-build failed ({code})")
    return data


def folder_name(name: str) -> str:
    return (name.replace("|", "-").replace(", ", "_").replace(" + ", "+")
            .replace(" ", "_"))


def train_global(name, model, config, residual, masked, args, data) -> tuple:
    """(checkpoint, seconds) of the progressive or pix2pix run of a row,
    trained unless finished; rows that differ only by the detail stage share it."""
    from dce.gan.train import Trainer, TrainSettings

    folder = args.out / folder_name(f"{model} {config} residual={residual} masked={masked}")
    settings = TrainSettings(data=str(data), out=str(folder), config=config, model=model,
                             preset=args.preset, iters_per_resolution=args.iters_per_resolution,
                             residual=residual if model == "progressive" else None,
                             masked_loss=masked, crop_pad=args.crop_pad, device=args.device,
                             workers=args.workers, log_every=10**9, checkpoint_every=500)
    t0 = time.perf_counter()
    trainer = Trainer(settings, log=lambda *a: None)
    checkpoint = folder / "last.pt"
    if checkpoint.exists():
        trainer.resume(checkpoint)
    if trainer.iteration < trainer.total:
        print(f"{name}: training {trainer.total - trainer.iteration} iterations on "
              f"{trainer.device}", flush=True)
        trainer.train()
        if trainer.interrupted:
            sys.exit(130)
    return checkpoint, time.perf_counter() - t0


def train_detail(name, checkpoint, args, data) -> tuple:
    """(checkpoint, seconds) of the detail stage on top of ``checkpoint``."""
    from dce.gan.detail import DetailSettings, DetailTrainer

    folder = args.out / folder_name(name)
    settings = DetailSettings(data=str(data), out=str(folder), global_checkpoint=str(checkpoint),
                              iterations=args.detail_iterations, device=args.device,
                              log_every=10**9)
    t0 = time.perf_counter()
    trainer = DetailTrainer(settings, log=lambda *a: None)
    if (folder / "last.pt").exists():
        trainer.resume(folder / "last.pt")
    if trainer.iteration < settings.iterations:
        print(f"{name}: training the detail stage, {settings.iterations - trainer.iteration} "
              "iterations", flush=True)
        trainer.train()
        if trainer.interrupted:
            sys.exit(130)
    return folder / "last.pt", time.perf_counter() - t0


def run(name, model, config, residual, masked, detail, args, data) -> dict:
    from dce.gan.evaluate import evaluate

    done = args.out / folder_name(name) / "result.json"
    if done.exists():  # trained and evaluated by an earlier invocation
        return json.loads(done.read_text(encoding="utf-8"))
    checkpoint, seconds = train_global(name, model, config, residual, masked, args, data)
    if detail:
        checkpoint, more = train_detail(name, checkpoint, args, data)
        seconds += more
    device = "cuda" if args.device == "cuda" else "cpu"
    scores, _, info = evaluate(checkpoint, data, device=device)
    coarse, refined = scores.table()
    print(f"{name}: face MAE {refined['face_mae_mm']:.3f} mm (coarse "
          f"{coarse['face_mae_mm']:.3f}), normal error {refined['normal_error_deg']:.2f} deg "
          f"(coarse {coarse['normal_error_deg']:.2f}), detail corr. "
          f"{refined['detail_corr']:.3f}", flush=True)
    result = {"name": name, "resolution": info["resolution"], "train_s": round(seconds, 1),
              "coarse": coarse, "refined": refined}
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1), encoding="utf-8")
    return result


def write(results: list, out: Path) -> Path:
    from dce.gan.evaluate import markdown_table

    first = results[0]
    lines = [f"Held-out identities: {first['refined']['images']} images at "
             f"{first['resolution']} px, mean ± std over images.", "",
             # A "|" inside a markdown cell must be escaped.
             markdown_table([first["coarse"]] + [r["refined"] for r in results],
                            ["coarse input"] + [r["name"].replace("|", chr(92) + "|")
                                                for r in results])]
    table = out / "comparison.md"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with open(out / "comparison.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        keys = list(first["refined"])
        writer.writerow(["name", "train_s"] + keys)
        writer.writerow(["coarse input", ""] + [first["coarse"][k] for k in keys])
        for r in results:
            writer.writerow([r["name"], r["train_s"]] + [r["refined"][k] for k in keys])
    (out / "comparison.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    return table


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=None,
                   help="pair file with DCE+RGB channels (default: build the built-in world)")
    p.add_argument("--out", type=Path, default=Path("out/compare"), help="default: out/compare")
    p.add_argument("--preset", default="cpu", help="training preset for every row (default: cpu)")
    p.add_argument("--iters-per-resolution", type=int, default=None,
                   help="override the preset's iterations per resolution")
    p.add_argument("--crop-pad", type=int, default=None,
                   help="crop-and-pad shift in file pixels (default: 16 scaled to the file size)")
    p.add_argument("--detail-iterations", type=int, default=600,
                   help="iterations of each detail stage (default: 600, as dce-demo)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    p.add_argument("--workers", type=int, default=2, help="data-loader processes (default: 2)")
    p.add_argument("--only", default=None, help="row names to run, separated by ';'")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = args.data or build_world(args.out)
    if args.crop_pad is None:
        from dce.gan.h5format import validate

        args.crop_pad = max(1, round(16 * validate(data)["height"] / 256))
    wanted = None if args.only is None else set(args.only.split(";"))
    results = []
    for row in ROWS:
        if wanted is None or row[0] in wanted:
            results.append(run(*row, args, data))
            table = write(results, args.out)
    print(table.read_text(encoding="utf-8"))
    print(f"written: {table}, {table.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
