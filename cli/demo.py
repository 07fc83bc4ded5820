"""dce-demo: the main job on the built-in sample data, end to end, with a
report a person can read.

1. builds the synthetic world (FRGC-format raw scans with photos and
   landmarks, coarse 3DMM fits from noisy landmarks) and its DCE pair file
   at 256 px (dce-build synthetic);
2. trains the progressive network, cpu preset (dce-train --preset cpu:
   4 -> 32 px, residual, L1 over the face);
3. trains the detail stage on full-resolution crops on top of it
   (dce-train-detail);
4. evaluates both on the held-out identities at 256 px (dce-eval: MAE,
   face MAE, normal error, detail correlation, roughness; heat maps and
   shaded coarse | refined | target pictures) -> OUT/eval/mae.csv;
5. refines one held-out face back to a 3D mesh (dce-refine);
6. scores held-out faces in 3D: the photo view (pose 0) of up to
   --faces-3d held-out scans, refined to meshes as dce-refine does, coarse
   and refined against the world's raw range scans by dce-eval-mesh's
   protocol with --metric -> OUT/eval_3d/ (summary tables and the cumulative
   error plot);
7. renders the real sample scans when ../shared/data is present;
8. writes OUT/report.md with the tables, loss curves, pictures and the time
   per step.

Every step resumes: rerun the command after an interruption and finished
work is kept (the build and the trainings continue where they stopped).
About 12 to 13 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from dce.cli.build import MAX_IDENTITIES, MAX_POSES, MAX_SIZE, MAX_WORKERS
from dce.cli.options import SEED_MAX, HelpFormatter, OutputError, check_output, integer

DETAIL_ITERATIONS = 600
# One photo view per held-out identity of the default world (60 identities, 1/3
# held out): 1 to 2 minutes on 2 cores; all 40 held-out photo views would take twice that.
FACES_3D = 20
SAMPLES = (
    # name, mesh, landmarks (iBUG-68, 3D, mm)
    ("lps-smooth", "lee-perry-smith/lps_smooth_face.ply", "lee-perry-smith/lps_landmarks_68.txt"),
    ("lps-detailed", "lee-perry-smith/lps_detailed_face.ply",
     "lee-perry-smith/lps_landmarks_68.txt"),
    ("james", "menpo-james/james.ply", "menpo-james/james_landmarks_68.txt"),
)


def default_data_dir() -> Path:
    if "DCE_SHARED_DATA" in os.environ:
        return Path(os.environ["DCE_SHARED_DATA"])
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path.cwd().parent / "shared" / "data"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dce-demo", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo"),
                   help="output folder: world/, pairs.h5, run/, eval/, refined/, report.md")
    p.add_argument("--identities", type=integer(2, MAX_IDENTITIES), default=60,
                   help="identities in the synthetic world, 2/3 for training, at least 2")
    p.add_argument("--poses", type=integer(0, MAX_POSES), default=5,
                   help="extra random poses per scan pair, as in the paper")
    p.add_argument("--size", type=integer(32, MAX_SIZE), default=256,
                   help="image size in pixels, at least the cpu preset's 32")
    p.add_argument("--preset", default="cpu",
                   help="dce-train preset; cpu trains 4 -> 32 px in about 5 minutes")
    p.add_argument("--iters-per-resolution", type=integer(1), default=None,
                   help="override the preset's iterations per resolution")
    p.add_argument("--detail-iterations", type=integer(0), default=DETAIL_ITERATIONS,
                   help="iterations of the detail stage, 8 crops each; 0 = no detail stage; "
                        "about 4 minutes on 2 cores")
    p.add_argument("--faces-3d", type=integer(0, 100000), default=FACES_3D,
                   help="held-out photo views refined to meshes and scored in 3D against the "
                        "world's scans (dce-eval-mesh --metric), one per held-out identity "
                        "before a second of any; 0 = none; 1 to 2 minutes "
                        "on 2 cores")
    p.add_argument("--heatmaps", type=integer(0, 1000), default=8,
                   help="error heat maps written by the evaluation")
    p.add_argument("--workers", type=integer(1, MAX_WORKERS), default=None,
                   help="processes for the build, data loading and the 3D scoring "
                        "(default: all cores)")
    p.add_argument("--device", default="auto",
                   help="torch device for training; auto = a GPU when there is one")
    p.add_argument("--data", type=Path, default=None,
                   help="folder holding lee-perry-smith/ and menpo-james/ "
                        "(default: $DCE_SHARED_DATA or ../shared/data; skipped when absent)")
    p.add_argument("--seed", type=integer(0, SEED_MAX), default=0,
                   help="random seed, 0 .. 2^32 - 1")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def real_scans(data: Path, out: Path, size: int = 256, yaws=(0.0, 30.0, -45.0)) -> list:
    """DCE renders of the real sample scans (PNG per scan and the Lee
    Perry-Smith smooth/detailed pair, the kind of coarse/fine pair the GAN
    learns from); the PNG paths."""
    from dce.geom import crop, dce, io, projection

    out.mkdir(parents=True, exist_ok=True)
    rendered, pngs = {}, []
    for name, mesh_file, landmark_file in SAMPLES:
        mesh = io.load_mesh(data / mesh_file)
        landmarks = io.read_landmarks(data / landmark_file).points
        face = crop.crop_mesh(mesh, landmarks)
        geometry = dce.surface_geometry(face)
        nose = io.nose_tip(landmarks)
        reach = np.linalg.norm(face.vertices[:, :2] - nose[:2], axis=1).max()
        scale = 0.47 * size / reach
        channels = "DCE+RGB" if face.colors is not None else "DCE"
        views = [dce.render_dce(face, projection.posed_camera(nose, scale, size, yaw=yaw),
                                size, channels, geometry) for yaw in yaws]
        rendered[name] = views
        pngs.append(dce.save_preview(out / f"{name}_dce.png", views,
                                     labels=[f"{name} yaw {y:+.0f}" for y in yaws]))
        print(f"  {name}: {mesh.n_vertices} vertices, cropped to {face.n_vertices} -> {pngs[-1]}")
    pair = [rendered[name][0] for name in ("lps-smooth", "lps-detailed")]
    pngs.append(dce.save_preview(out / "lps_smooth_vs_detailed.png", pair,
                                 labels=["coarse (smooth)", "target (detailed)"]))
    return pngs


def photo_view_samples(pairs: Path, limit: int) -> list:
    """(sample id, pair id) of up to ``limit`` held-out samples of the pair
    file seen from the photo's own view (pose 0: yaw = pitch = roll = 0):
    the first of every held-out identity (in subject order), then the
    second of each, and so on."""
    from dce.gan import h5format as fmt

    with fmt.open_pairs(pairs) as f:
        rows = zip(f["sample_id"].asstr()[()], f["pair_id"].asstr()[()],
                   f["subject"].asstr()[()], f[fmt.SPLIT][()] == fmt.TEST,
                   ~f["pose"][()].any(axis=1))
        chosen = sorted((subject, sample, pair) for sample, pair, subject, test, photo in rows
                        if test and photo)
    seen = {}
    ranked = []
    for subject, sample, pair in chosen:
        seen[subject] = seen.get(subject, -1) + 1
        ranked.append((seen[subject], subject, sample, pair))
    return [(sample, pair) for _, _, sample, pair in sorted(ranked)[:limit]]


def evaluate_3d(out: Path, pairs: Path, model: Path, world: Path, limit: int,
                device: str, workers: int = 1) -> dict:
    """Score held-out faces in 3D (OUT/eval_3d/): each of the
    :func:`photo_view_samples` refined by ``model`` to a coarse and a refined
    mesh as dce-refine makes them from a pair file, both in the coarse fit's
    model frame (the frame the coarse image's camera unprojects to), with
    the fit's own 68 landmark vertices (the refined mesh's carried along
    with its surface); scored against the world's raw range scan with the
    exact scanner-frame landmarks of world.json, by dce-eval-mesh --metric's
    protocol, over ``workers`` processes. {"faces", "table", "png", "folders"}."""
    from dce.gan.inference import Refiner
    from dce.geom.io import load_mesh
    from dce.geom.landmark_formats import read_vertex_indices
    from dce.geom.mesh_eval import (
        comparison_markdown,
        evaluate_folders,
        plot_cumulative,
        write_ground_truth,
        write_prediction,
    )
    from dce.geom.refine import coarse_from_pairs, refine
    from dce.geom.synthetic import load_world

    folder = out / "eval_3d"
    if folder.exists():
        shutil.rmtree(folder)
    samples = photo_view_samples(pairs, limit)
    if not samples:
        print("  no held-out photo view in the pair file; skipped")
        return {}
    manifest = load_world(world)
    records = {r["stem"]: r for r in manifest["scans"]}
    landmark_vertices = read_vertex_indices(world / manifest.get("model", "world_model.npz"))
    refiner = Refiner(model, device)
    for k, (sample_id, stem) in enumerate(samples, 1):
        record = records.get(stem)
        if record is None:
            raise ValueError(f"{world / 'world.json'}: no scan {stem!r} (sample {sample_id} of "
                             f"{pairs}): the pair file was built from another world")
        coarse = coarse_from_pairs(pairs, refiner, sample_id, model_name=model)
        # The fit's own landmark vertices, carried onto the refined mesh.
        coarse.landmarks = load_mesh(world / record["files"]["coarse_mesh"]).vertices[
            landmark_vertices]
        meshes = refine(refiner, coarse, model_name=model).meshes
        write_prediction(folder / "coarse", stem, meshes.coarse, meshes.coarse_landmarks)
        write_prediction(folder / "refined", stem, meshes.refined, meshes.refined_landmarks)
        write_ground_truth(folder / "scans", stem, world / record["files"]["range"],
                           np.asarray(record["landmarks_3d"]))
        print(f"  [{k}/{len(samples)}] {sample_id}: coarse {meshes.coarse.n_vertices} and refined "
              f"{meshes.refined.n_vertices} vertices", flush=True)
    results = {}
    for name in ("coarse", "refined"):
        print(f"  scoring the {name} meshes (dce-eval-mesh --metric)", flush=True)
        results[name] = evaluate_folders(folder / name, folder / "scans", folder / f"{name}_eval",
                                         metric=True, error_plys=False, workers=workers,
                                         log=lambda line: print("    " + line, flush=True))
    png = plot_cumulative(folder / "cumulative_error.png",
                          {name: r.distances for name, r in results.items()})
    table = comparison_markdown({name: r.summary for name, r in results.items()})
    print(table)
    return {"faces": len(samples), "table": table, "png": png,
            "folders": [folder / f"{name}_eval" for name in results]}


class Steps:
    """Numbered progress lines with the time each step took."""

    def __init__(self, total: int):
        self.total, self.n, self.times = total, 0, []
        self.t0 = self.started = time.perf_counter()

    def next(self, title: str) -> None:
        self.close()
        self.n += 1
        self.title = title
        self.t0 = time.perf_counter()
        print(f"\n[{self.n}/{self.total}] {title}", flush=True)

    def close(self) -> None:
        if self.n and len(self.times) < self.n:
            self.times.append((self.title, time.perf_counter() - self.t0))

    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def _failed(what: str, error) -> SystemExit:
    return SystemExit(f"dce-demo: {what} failed: {error}; fix the cause and rerun dce-demo: "
                      "finished steps are kept")


def build_pairs(world: Path, pairs: Path, identities: int, size: int, poses: int, seed: int,
                workers: int, channels: str = "DCE") -> None:
    """Step 1, as ``dce-build synthetic`` with a preview of 8 pairs: the
    synthetic world of ``identities`` (generated when missing) and its pair
    file; a finished file of these settings is kept, a partial one resumed."""
    from dce.cli.build import ensure_world, print_report
    from dce.cli.options import is_pair_file
    from dce.geom import sources, store
    from dce.geom.build import BuildInterrupted, build
    from dce.geom.dataset import BuildConfig

    try:
        check_output(pairs, [world, world / "world.json", world / "world_model.npz"],
                     replaceable=is_pair_file)
        ensure_world(world, identities, seed, workers)
        report = build(sources.synthetic_world(world), pairs,
                       BuildConfig(size=size, channels=channels, poses=poses, seed=seed),
                       command="synthetic", workers=workers)
    except store.EmptyBuildError as error:
        for pair_id, reason in error.failures:
            print(f"FAILED {pair_id}: {reason}", file=sys.stderr)
        raise _failed("the build", error) from None
    except (BuildInterrupted, ValueError, OSError) as error:  # PairFileError is a ValueError
        raise _failed("the build", error) from None
    if report.up_to_date:
        print(f"  {pairs} is already built with this configuration; nothing to do")
        return
    print_report(report)
    print(f"preview: {store.preview_pairs(pairs, 8, pairs.with_suffix('.png'), seed=seed)}")
    if report.failures:
        raise _failed("the build", f"{len(report.failures)} pair(s) failed")


def _train(trainer, last: Path, line: str, what: str) -> None:
    """Resume ``trainer`` from ``last`` when it exists, say ``line``, then
    train it; an interruption stops the demo (the checkpoint is kept)."""
    if last.exists():
        trainer.resume(last)
        print(f"resumed at iteration {trainer.iteration}")
    print(line)
    trainer.train()
    if trainer.interrupted:
        raise _failed(what, "interrupted")


def train_global(pairs: Path, run: Path, preset: str, iters_per_resolution, seed: int,
                 device: str, workers: int) -> None:
    """Step 2, as ``dce-train`` with the preset's settings."""
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.h5format import PairFileError
    from dce.gan.train import Trainer, TrainSettings

    try:
        settings = TrainSettings(data=str(pairs), out=str(run), preset=preset,
                                 iters_per_resolution=iters_per_resolution, seed=seed,
                                 device=device, workers=workers)
        trainer = Trainer(settings)
        _train(trainer, run / "last.pt",
               f"training {settings.config} on {trainer.device} ({len(trainer.data)} samples, "
               f"{trainer.total} iterations: "
               + ", ".join(f"{s.resolution}px" for s in trainer.schedule) + ")", "the training")
    except (PairFileError, CheckpointError, ValueError, RuntimeError, OSError) as error:
        # RuntimeError includes TrainingDiverged (the last good checkpoint is kept).
        raise _failed("the training", error) from None


def train_detail(pairs: Path, model: Path, detail: Path, iterations: int, crop: int, seed: int,
                 device: str) -> None:
    """Step 3, as ``dce-train-detail`` with its default settings."""
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.detail import DetailSettings, DetailTrainer
    from dce.gan.h5format import PairFileError

    try:
        settings = DetailSettings(data=str(pairs), out=str(detail), global_checkpoint=str(model),
                                  iterations=iterations, crop=crop, seed=seed, device=device)
        trainer = DetailTrainer(settings)
        _train(trainer, detail / "last.pt",
               f"detail stage on {trainer.device}: {settings.iterations} iterations of "
               f"{settings.batch_size} crops of {settings.crop} px, over the global network "
               f"{model}", "the detail stage")
    except (PairFileError, CheckpointError, ValueError, RuntimeError, OSError) as error:
        raise _failed("the detail stage", error) from None


def evaluate_2d(pairs: Path, model: Path, folder: Path, heatmaps: int, device: str) -> None:
    """Step 4, as ``dce-eval``: ``model`` on the held-out split at the
    file's resolution -> ``folder``/mae.md, mae.csv and ``heatmaps`` heat
    maps."""
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.evaluate import evaluate, write_heatmaps, write_table
    from dce.gan.h5format import PairFileError

    try:
        scores, kept, info = evaluate(model, pairs, device=device, keep_images=heatmaps,
                                      log=lambda line: print(line, flush=True))
        md, csv_path = write_table(scores, folder, info)
        print(md.read_text(encoding="utf-8"))
        print(f"table: {md}, {csv_path}")
        if heatmaps:
            paths = write_heatmaps(kept, folder / "heatmaps")
            print(f"{len(paths)} heat maps in {folder / 'heatmaps'}")
    except (PairFileError, CheckpointError, ValueError, RuntimeError, OSError) as error:
        raise _failed("the evaluation", error) from None


def refine_one(pairs: Path, model: Path, out: Path) -> None:
    """Step 5, as ``dce-refine --pairs``: the first held-out sample refined
    by ``model`` to a mesh, the files in ``out``."""
    from dce.cli.refine import report
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.inference import Refiner
    from dce.geom.refine import coarse_from_pairs, refine, save_refinement

    try:
        refiner = Refiner(model)  # on the CPU, as dce-refine by default
        coarse = coarse_from_pairs(pairs, refiner, model_name=model)
        result = refine(refiner, coarse, model_name=model)
        files = save_refinement(out, result)
    except (CheckpointError, ValueError, OSError) as error:  # PairFileError, FormatError
        raise _failed("the refinement", error) from None
    sample = coarse.sample
    print(f"{pairs}: sample {sample.sample_id} (subject {sample.subject}, {sample.split} "
          f"split) refined with {model} ({refiner.settings.config}, network at "
          f"{refiner.resolution} px)")
    report(result, files)


def _rel(path: Path, root: Path) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


def _report_3d(result: dict, out: Path) -> list:
    """The report's lines on the 3D evaluation (none when it did not run)."""
    if not result:
        return []
    folders = ", ".join(f"`{_rel(f, out)}/summary.md`" for f in result["folders"])
    return ["", "### In 3D, against the world's scans", "",
            f"{result['faces']} held-out faces (the photo view, pose 0), the coarse and the "
            "refined mesh as `dce-refine` makes them from the pair file, scored against the "
            "world's raw range scans (`world/scans/<stem>.abs.gz`, with their holes, noise and "
            "spikes) by `dce-eval-mesh --metric`: the NoW crop sphere, a rigid Procrustes on the "
            "landmarks, then rigid ICP (no scale: a coarse fit of the wrong size counts as "
            "wrong), each scan point's distance to the predicted triangles, all points pooled.",
            "", result["table"], "",
            f"![cumulative error]({_rel(result['png'], out)})", "",
            "Frames and landmarks: both meshes come out in the coarse fit's model frame (the "
            "coarse image's camera unprojects the depth pixels there; the scans are in the "
            "scanner frame, which the sample's target camera maps to the same pixels). "
            "Predicted landmarks are the coarse fit's own 68 landmark vertices "
            "(`world_model.npz`, `landmarks_68`), on the refined mesh carried along with its "
            "surface (`move_with_surface`); the scans' are the exact `landmarks_3d` of "
            "`world.json`. The predicted surface covers only the image's crop of the face, so "
            "scan points of the NoW sphere beyond it (mostly under the jaw, where the crop "
            "follows the jaw line) score their distance to its border, alike for both rows. "
            f"Per face: {folders}; rerun with `dce-eval-mesh --pred eval_3d/refined --gt "
            "eval_3d/scans -o DIR --metric`.", ""]


def write_report(out: Path, steps: Steps, info: dict) -> Path:
    """OUT/report.md, linking the PNGs the steps wrote."""
    lines = ["# DCE main job report", "",
             f"Built-in synthetic world, {info['identities']} identities; preset "
             f"`{info['preset']}` on {info['device']}; total {steps.elapsed() / 60:.1f} min.", "",
             "## Data", "", "```", info["describe"].rstrip(), "```", ""]
    if info.get("pairs_png"):
        lines += [f"Random pairs (coarse above, ground truth below): "
                  f"![pairs]({_rel(info['pairs_png'], out)})", ""]
    lines += ["## Training", "", "The progressive network (4 -> 32 px):", "",
              f"![loss curves]({_rel(info['curves'], out)})", ""]
    if info.get("grid"):
        lines += [f"Its last sample grid (per channel: coarse | refined | target): "
                  f"![samples]({_rel(info['grid'], out)})", ""]
    if info.get("detail_curves"):
        lines += ["The detail stage (full-resolution crops):", "",
                  f"![detail loss curves]({_rel(info['detail_curves'], out)})", ""]
    lines += ["## Evaluation on the held-out identities", "", info["mae"].rstrip(), ""]
    if info.get("global_mae"):
        lines += ["The progressive network alone (without the detail stage):", "",
                  info["global_mae"].rstrip(), ""]
    lines += ["MAE: Eq. 4 of the paper (pixels where either image has surface). Face MAE: "
              "over the ground truth's own pixels. Normal error: mean angle between the "
              "refined and the ground-truth surface normals over the face. Detail corr.: "
              "correlation of the detail added (refined - coarse) with the detail missing "
              "(target - coarse), both band-passed to 1-5 mm (0 for the coarse input by "
              "definition). Roughness: mean |Laplacian| of the depth inside the face.", "",
              "Shaded at 256 px, coarse | refined | target:", ""]
    lines += [f"![shaded]({_rel(png, out)})" for png in info["shaded"][:4]]
    lines += ["", "Heat maps, coarse (left) and refined (right): depth error, 0 (blue) to 5 mm "
              "(red), above; normal error, 0 to 20 degrees, below.", ""]
    lines += [f"![heat map]({_rel(png, out)})" for png in info["heatmaps"][:4]]
    lines += ["", "Detail, what the refinement added (left) and what the coarse input lacks "
              "(right): the 1-5 mm band of refined - coarse and of target - coarse that the "
              "detail correlation compares, -0.5 (blue, a ridge) to +0.5 mm (red, a crease) "
              "on one scale.", ""]
    lines += [f"![detail]({_rel(png, out)})" for png in info["detail_bands"][:4]]
    lines += _report_3d(info.get("eval_3d"), out)
    lines += ["", "## A held-out face refined to a mesh", ""]
    lines += [f"- `{_rel(p, out)}`" for p in info["meshes"]]
    lines += [""] + [f"![refined]({_rel(p, out)})" for p in info["refine_pngs"]] + [""]
    if info.get("real"):
        lines += ["## Real sample scans", ""] + [f"![real]({_rel(p, out)})" for p in info["real"]]
        lines.append("")
    lines += ["## Time per step", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {title} | {seconds:.0f} |" for title, seconds in steps.times]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.gan.h5format import describe
    from dce.gan.report import DETAIL_CURVES, plot_losses

    out = args.out
    try:
        check_output(out, is_dir=True)
    except OutputError as error:
        print(f"dce-demo: {error}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or default_data_dir()
    steps = Steps(8)
    workers = args.workers or os.cpu_count()
    pairs, run, detail = out / "pairs.h5", out / "run", out / "detail"
    evaluation, global_eval = out / "eval", out / "eval_global"

    steps.next("dataset: synthetic world -> aligned DCE pairs (dce-build)")
    build_pairs(out / "world", pairs, args.identities, args.size, args.poses, args.seed, workers)

    steps.next(f"training the progressive network, preset {args.preset} (dce-train)")
    train_global(pairs, run, args.preset, args.iters_per_resolution, args.seed, args.device,
                 min(workers, 2))

    model = run / "last.pt"
    steps.next("training the detail stage at full resolution (dce-train-detail)")
    if args.detail_iterations > 0:
        # Crops of 96 px on the default 256 px images; smaller images, smaller crops.
        train_detail(pairs, model, detail, args.detail_iterations,
                     min(96, args.size // 2 // 2 * 2), args.seed, args.device)
        model = detail / "last.pt"
    else:
        print("  skipped (--detail-iterations 0)")

    steps.next("evaluation on the held-out identities at full resolution (dce-eval)")
    for folder in (evaluation, global_eval):
        if folder.exists():
            shutil.rmtree(folder)
    evaluate_2d(pairs, model, evaluation, args.heatmaps, _torch_device(args))
    if model != run / "last.pt":
        evaluate_2d(pairs, run / "last.pt", global_eval, 0, _torch_device(args))

    steps.next("one held-out face refined to a mesh (dce-refine)")
    refine_one(pairs, model, out / "refined")

    steps.next("held-out faces in 3D against the world's scans (dce-eval-mesh --metric)")
    eval_3d = {}
    if args.faces_3d > 0:
        try:
            eval_3d = evaluate_3d(out, pairs, model, out / "world", args.faces_3d,
                                  _torch_device(args), workers)
        except (ValueError, OSError) as error:  # FormatError, AlignmentError, PairFileError
            raise SystemExit(f"dce-demo: the 3D evaluation failed: {error}") from None
    else:
        print("  skipped (--faces-3d 0)")

    steps.next("real sample scans")
    real = []
    if data.is_dir():
        real = real_scans(data, out / "real", args.size)
    else:
        print(f"  not found at {data} (pass --data DIR); skipped")

    steps.next("report")
    grids = sorted((run / "samples").glob("*.png"))
    info = {"identities": args.identities, "preset": args.preset, "device": _device(args),
            "describe": describe(pairs), "pairs_png": pairs.with_suffix(".png"),
            "curves": plot_losses(run / "log.jsonl", out / "loss_curves.png"),
            "detail_curves": (plot_losses(detail / "log.jsonl", out / "detail_loss_curves.png",
                                          DETAIL_CURVES)
                              if (detail / "log.jsonl").exists() and model != run / "last.pt"
                              else None),
            "grid": grids[-1] if grids else None,
            "mae": (evaluation / "mae.md").read_text(encoding="utf-8"),
            "global_mae": ((global_eval / "mae.md").read_text(encoding="utf-8")
                           if global_eval.exists() else None),
            "heatmaps": sorted((evaluation / "heatmaps").glob("heatmap_*.png")),
            "shaded": sorted((evaluation / "heatmaps").glob("shaded_*.png")),
            "detail_bands": sorted((evaluation / "heatmaps").glob("detail_*.png")),
            "meshes": sorted(p for p in (out / "refined").iterdir()
                             if p.suffix in (".ply", ".obj")),
            "refine_pngs": sorted((out / "refined").glob("*.png")), "real": real,
            "eval_3d": eval_3d}
    steps.close()
    report = write_report(out, steps, info)
    print(f"\nreport: {report} ({steps.elapsed() / 60:.1f} min in all)")
    return 0


def _torch_device(args) -> str:
    """dce-eval's --device: 'auto' is a training option only."""
    import torch

    if args.device != "auto":
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _device(args) -> str:
    import torch

    if args.device == "auto":
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
            f"CPU ({torch.get_num_threads()} threads)"
    return args.device


if __name__ == "__main__":
    sys.exit(main())
