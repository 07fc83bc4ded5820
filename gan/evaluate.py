"""Evaluation (paper section 5.3 and beyond): the MAE of Eq. 4 between
ground-truth and refined depth images, next to the same figures for the
coarse input, and two measures of fine detail that the MAE cannot see.

See docs/evaluation.md (the table's columns).
"""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import h5format
from .data import PairDataset
from .h5format import FOREGROUND_ABOVE, PairFileError
from .metrics import depth_normals, detail_corr, detail_fields, normal_error_deg
from .report import save_png

COLUMNS = ("model", "resolution", "images", "eq4_mae", "eq4_mae_mm", "face_mae_mm",
           "normal_error_deg", "detail_corr", "roughness")
# Per-image figures, the names of their table columns.
METRICS = ("eq4_mae", "eq4_mae_mm", "face_mae_mm", "normal_error_deg", "detail_corr",
           "roughness")
SPLIT_WORDS = {"test": "held-out images", "train": "training images",
               "all": "images (training and held-out)"}  # mae.md's first line


@dataclass
class Scores:
    """Per-image figures (n,) of each model, ``scores.per_image[model][metric]``
    with model ``"coarse"`` or ``"refined"`` and metric one of METRICS, and
    the ground truth's roughness."""

    resolution: int
    per_image: dict = field(default_factory=dict)
    target_roughness: np.ndarray = None

    def table(self) -> list:
        """One row (dict) per model: COLUMNS, then ``<metric>_std`` and
        ``target_roughness``. NaN images (no face pixel) are left out of
        the means."""
        rows = []
        for model, figures in self.per_image.items():
            row = {"model": model, "resolution": self.resolution,
                   "images": len(figures["eq4_mae"])}
            row.update({m: float(np.nanmean(figures[m])) for m in METRICS})
            row.update({f"{m}_std": float(np.nanstd(figures[m])) for m in METRICS})
            row["target_roughness"] = float(np.nanmean(self.target_roughness))
            rows.append(row)
        return rows


def image_mae(prediction: torch.Tensor, target: torch.Tensor,
              face_only: bool = False) -> torch.Tensor:
    """Eq. 4 per image: (N, H, W) depth in [-1, 1] -> (N,) mean |difference|
    (in [-1, 1] units) over the pixels where either is foreground, or with
    ``face_only`` over the ground truth's foreground alone (a figure that a
    network's stray background values cannot dilute or inflate)."""
    foreground = target >= FOREGROUND_ABOVE
    if not face_only:
        foreground = foreground | (prediction >= FOREGROUND_ABOVE)
    error = (prediction - target).abs() * foreground
    return error.sum(dim=(1, 2)) / foreground.sum(dim=(1, 2)).clamp(min=1)


def depth_roughness(depth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Surface roughness per image: the mean absolute 4-neighbour Laplacian
    of ``depth`` (N, H, W), in the depth's units per pixel^2, over the pixels
    whose 3x3 neighbourhood is ``valid`` (N, H, W) bool and foreground in
    ``depth``. A noisy surface has a large value, a smooth one a small."""
    lap = (depth[:, 1:-1, :-2] + depth[:, 1:-1, 2:] + depth[:, :-2, 1:-1]
           + depth[:, 2:, 1:-1] - 4 * depth[:, 1:-1, 1:-1]).abs()
    both = (valid & (depth >= FOREGROUND_ABOVE)).float()
    # A 3x3 min-pool of the foreground (as -maxpool(-x)) is 1 where all nine are.
    inside = torch.nn.functional.max_pool2d(-both[:, None], 3, stride=1)[:, 0] < -0.5
    return (lap * inside).sum(dim=(1, 2)) / inside.sum(dim=(1, 2)).clamp(min=1)


def evaluate(checkpoint, data, split: str = "test", batch_size: int = 8, device: str = "cpu",
             keep_images: int = 0, resolution: int | None = None, detail: bool = True,
             mirror_average: bool = False, refit=None, log=None):
    """Scores of a checkpoint (dce-train's or a detail stage's) on a pair
    file's split at the file's resolution (or pooled to ``resolution``), and
    the first ``keep_images`` (coarse, refined, target depth in [-1, 1], mm
    per unit, pixel mm) for heat maps. ``detail=False`` scores a detail
    stage's global network alone; ``mirror_average`` averages the detail
    stage with its mirror (``Refiner``). ``checkpoint`` may be a ready
    Refiner (its own ``device``, ``detail`` and ``mirror_average`` then
    stand). ``refit``: a re-fit pair file of ``data`` (``dce-refit``): the
    network then reads its coarse images, and a ``refit`` row scores them
    as they are; every figure is still taken against ``data``'s coarse
    input. ``log`` (a callable taking a line, or None) hears the progress
    about every 10 seconds and at the end."""
    from .detail import pixel_sizes, require_finite_networks
    from .inference import Refiner

    if isinstance(checkpoint, Refiner):
        refiner, checkpoint = checkpoint, checkpoint.path
    else:
        refiner = Refiner(checkpoint, device, detail=detail, mirror_average=mirror_average)
    require_finite_networks(refiner, checkpoint)
    try:
        dataset = PairDataset(data, split, refiner.input_channels, ("depth",),
                              resolution=resolution, augment=False)
    except PairFileError as error:
        raise PairFileError(f"{error} (checkpoint {checkpoint} reads "
                            f"{list(refiner.input_channels)})") from None
    h5format.check_normalization(refiner.normalization, h5format.normalization(dataset.summary),
                                 checkpoint, data)
    inputs = dataset if refit is None else refit_inputs(refit, data, dataset, refiner, split,
                                                        resolution, checkpoint)
    r = dataset.resolution
    pixel_mm = torch.from_numpy(pixel_sizes(data, dataset.indices) * (dataset.height / r))
    depth_in = refiner.input_channels.index("depth")
    depth_out = refiner.output_channels.index("depth")
    models = ("coarse", "refined") if refit is None else ("coarse", "refit", "refined")
    parts = {m: {k: [] for k in METRICS} for m in models}
    target_roughness, kept = [], []
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    t0 = last_report = time.perf_counter()
    for start in range(0, len(dataset), batch_size):
        batch = range(start, min(start + batch_size, len(dataset)))
        items = dataset.fetch(batch)
        x = torch.stack([it["coarse"] for it in items])
        x_in = x if inputs is dataset else torch.stack([it["coarse"] for it in inputs.fetch(batch)])
        y = torch.stack([it["target"] for it in items])[:, 0]
        face = torch.stack([it["target_mask"] for it in items])[:, 0] > 0
        mm = torch.stack([it["target_scale"][0] for it in items]).abs().float()
        px = pixel_mm[start:start + len(items)].float()
        coarse = x[:, depth_in]
        refined = torch.from_numpy(refiner(x_in.numpy()))[:, depth_out]
        predictions = {"coarse": coarse, "refit": x_in[:, depth_in], "refined": refined}
        for name in models:
            prediction = predictions[name]
            figures = parts[name]
            mae = image_mae(prediction, y)
            figures["eq4_mae"].append(mae / 2)
            figures["eq4_mae_mm"].append(mae * mm)
            figures["face_mae_mm"].append(image_mae(prediction, y, face_only=True) * mm)
            figures["normal_error_deg"].append(normal_error_deg(prediction, y, mm, px, face))
            figures["detail_corr"].append(detail_corr(prediction, coarse, y, face, px))
            figures["roughness"].append(depth_roughness(prediction, face) * mm)
        target_roughness.append(depth_roughness(y, face) * mm)
        for n in range(len(y)):
            if len(kept) < keep_images:
                kept.append((coarse[n].numpy(), refined[n].numpy(), y[n].numpy(),
                             float(mm[n]), float(px[n])))
        done, now = start + len(items), time.perf_counter()
        if log is not None and (now - last_report >= 10.0 or done == len(dataset)):
            log(f"  scored {done}/{len(dataset)} images ({now - t0:.0f} s)")
            last_report = now
    scores = Scores(r, {m: {k: torch.cat(v).double().numpy() for k, v in figures.items()}
                        for m, figures in parts.items()},
                    torch.cat(target_roughness).double().numpy())
    return scores, kept, {"resolution": r, "config": refiner.settings.config, "split": split,
                          "images": len(dataset), "detail": refiner.enhancer is not None,
                          "mirror_average": refiner.mirror_average,
                          "trained_resolution": refiner.resolution,
                          "refit": None if refit is None else str(refit)}


def refit_inputs(refit, data, dataset, refiner, split: str, resolution, checkpoint):
    """The :class:`PairDataset` of a re-fit pair file of ``data``, refused
    (PairFileError naming both) unless it holds the same samples in the same
    split and normalization."""
    from .data import PairDataset

    inputs = PairDataset(refit, split, refiner.input_channels, ("depth",),
                         resolution=resolution, augment=False)
    ours, theirs = dataset.sample_ids, inputs.sample_ids
    if ours != theirs:
        raise PairFileError(f"{refit}: not a re-fit of {data}: its {split} samples differ "
                            f"({len(theirs)} vs {len(ours)}; run dce-refit on {data})")
    h5format.check_normalization(refiner.normalization, h5format.normalization(inputs.summary),
                                 checkpoint, refit)
    return inputs


def write_table(scores: Scores, out_dir, info: dict) -> tuple:
    """``mae.md`` and ``mae.csv`` in ``out_dir``: one row per model, the
    columns COLUMNS then the standard deviations."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = scores.table()
    with open(out / "mae.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    model = f"configuration {info['config']}, trained to {info['trained_resolution']} px" + (
        " + detail stage" if info.get("detail") else "") + (
        ", mirror-averaged" if info.get("mirror_average") else "") + (
        f", reading the re-fit coarse images of {Path(info['refit']).name}"
        if info.get("refit") else "")
    which = SPLIT_WORDS[info["split"]]
    lines = [f"{info['images']} {which} at {info['resolution']} px; {model}", "",
             markdown_table(rows)]
    (out / "mae.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / "mae.md", out / "mae.csv"


def markdown_table(rows: list, names=None) -> str:
    """The rows of :meth:`Scores.table` as a markdown table (mean ± std),
    the first column ``names`` (default: the rows' models), ground-truth
    roughness in the last line."""
    names = names or [r["model"] for r in rows]
    lines = ["| model | MAE (normalized) | MAE (mm) | face MAE (mm) | normal error (°) "
             "| detail corr. | roughness (mm/px²) |", "|---|---|---|---|---|---|---|"]
    for name, r in zip(names, rows):
        lines.append(
            f"| {name} | {r['eq4_mae']:.4f} ± {r['eq4_mae_std']:.4f} | "
            f"{r['eq4_mae_mm']:.3f} ± {r['eq4_mae_mm_std']:.3f} | "
            f"{r['face_mae_mm']:.3f} ± {r['face_mae_mm_std']:.3f} | "
            f"{r['normal_error_deg']:.2f} ± {r['normal_error_deg_std']:.2f} | "
            f"{r['detail_corr']:.3f} ± {r['detail_corr_std']:.3f} | {r['roughness']:.3f} |")
    lines.append(f"| ground truth | | | | | | {rows[0]['target_roughness']:.3f} |")
    return "\n".join(lines)


def heat_color(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) >= 0 -> (H, W, 3) uint8, blue (0) through green and yellow to
    red (>= vmax); ``vmax`` a finite number > 0."""
    if not (np.isfinite(vmax) and vmax > 0):
        raise ValueError(f"heat_color: vmax must be a finite number > 0, got {vmax!r}")
    t = np.clip(values / vmax, 0.0, 1.0)
    r = np.clip(2.0 * t - 0.5, 0, 1) * 1.0
    g = np.clip(1.5 - np.abs(4.0 * t - 2.0), 0, 1)
    b = np.clip(1.0 - 2.0 * t, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def signed_color(values: np.ndarray, vmax: float, shown: np.ndarray) -> np.ndarray:
    """(H, W) signed values -> (H, W, 3) uint8: grey at 0, red toward +vmax
    (farther from the viewer: a crease), blue toward -vmax (nearer: a ridge),
    black where not ``shown``."""
    t = np.clip(np.nan_to_num(values) / vmax, -1.0, 1.0)
    grey = 90.0
    rgb = np.stack([grey + (255 - grey) * np.clip(t, 0, 1) - grey * np.clip(-t, 0, 1),
                    grey * (1 - np.abs(t)),
                    grey + (255 - grey) * np.clip(-t, 0, 1) - grey * np.clip(t, 0, 1)], axis=-1)
    return (rgb * shown[..., None]).astype(np.uint8)


def detail_bands(coarse: np.ndarray, refined: np.ndarray, target: np.ndarray, mm: float,
                 pixel_mm: float) -> tuple:
    """(added, missing, valid): the two fields that ``detail_corr`` correlates,
    BP(refined - coarse) and BP(target - coarse) in mm, over its pixels
    ``valid`` (the target's face where coarse and refined have surface)."""
    images = [torch.from_numpy(np.asarray(d, dtype=np.float64))[None]
              for d in (refined, coarse, target)]
    bands, valid = detail_fields(*images, images[2] >= FOREGROUND_ABOVE, pixel_mm)
    added, missing = (bands[:, 0] * mm).numpy()
    return added, missing, valid[0].numpy()


def normal_angles(prediction: np.ndarray, target: np.ndarray, mm: float, pixel_mm: float,
                  face: np.ndarray) -> np.ndarray:
    """(H, W) angle in degrees between the normals of two depth images ([-1,
    1] units), NaN where either normal is undefined (off the face)."""
    p, t = (torch.from_numpy(np.ascontiguousarray(a))[None].double() * mm
            for a in (prediction, target))
    valid = torch.from_numpy(face)[None]
    n_p, ok_p = depth_normals(p, pixel_mm, valid & (p / mm >= FOREGROUND_ABOVE))
    n_t, ok_t = depth_normals(t, pixel_mm, valid)
    angle = torch.rad2deg(torch.atan2(torch.linalg.cross(n_p, n_t, dim=1).norm(dim=1),
                                      (n_p * n_t).sum(dim=1)))[0].numpy()
    return np.where((ok_p & ok_t)[0].numpy(), angle, np.nan)


def shade(depth: np.ndarray, mm: float, pixel_mm: float) -> np.ndarray:
    """(H, W) uint8 grey picture of a depth image ([-1, 1] units) lit from
    the viewer's upper left (Lambert), black off the surface: how a mesh
    viewer shows the surface, where creases are seen rather than measured."""
    z = torch.from_numpy(np.ascontiguousarray(depth))[None].double() * mm
    surface = torch.from_numpy(depth >= FOREGROUND_ABOVE)[None]
    normals, ok = depth_normals(z, pixel_mm, surface)
    light = torch.tensor([-0.4, -0.4, 1.0], dtype=torch.float64)
    # View depth grows away from the viewer: the normal facing the viewer is (dz/dx, dz/dy, 1).
    facing = normals * torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)[:, None, None]
    lit = (facing[0] * (light / light.norm())[:, None, None]).sum(0).clamp(min=0)
    grey = np.where(ok[0].numpy(), 40 + 215 * lit.numpy(), 0)
    return grey.astype(np.uint8)


def write_heatmaps(kept: list, out_dir, vmax_mm: float = 5.0, vmax_deg: float = 20.0,
                   vmax_band_mm: float = 0.5) -> list:
    """One PNG per kept image (as the paper's Fig. 4): above, |coarse -
    target| and |refined - target| depth error in mm from 0 (blue) to
    ``vmax_mm`` (red) over the pixels of Eq. 4; below, the angle between
    their normals and the target's from 0 to ``vmax_deg`` over the target's
    face; black elsewhere. Beside each, ``shaded_K.png``: coarse | refined |
    target shaded, and ``detail_K.png``: the detail the refinement added |
    the detail the coarse input lacks (:func:`detail_bands`, what
    ``detail_corr`` correlates), -``vmax_band_mm`` (blue) to +``vmax_band_mm``
    (red) on one scale, so a faint prediction looks faint. ``kept`` as
    :func:`evaluate` returns it. ValueError when a vmax is not a finite
    positive number (the maps would be blank)."""
    from PIL import Image

    for name, value in (("vmax_mm", vmax_mm), ("vmax_deg", vmax_deg),
                        ("vmax_band_mm", vmax_band_mm)):
        if not (isinstance(value, (int, float, np.integer, np.floating))
                and np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (coarse, refined, target, mm, pixel_mm) in enumerate(kept):
        scale = max(1, 256 // target.shape[0])
        face = target >= FOREGROUND_ABOVE
        rows = []
        for error, vmax in ((lambda p: np.abs(p - target) * mm, vmax_mm),
                            (lambda p: normal_angles(p, target, mm, pixel_mm, face), vmax_deg)):
            tiles = []
            for prediction in (coarse, refined):
                value = error(prediction)
                shown = ((prediction >= FOREGROUND_ABOVE) | face) & np.isfinite(value)
                tile = heat_color(np.nan_to_num(value), vmax) * shown[..., None]
                tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0))))
            rows.append(np.concatenate(tiles, axis=1))
        picture = Image.fromarray(np.concatenate(rows, axis=0))
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        path = save_png(out / f"heatmap_{k:03d}.png", picture)
        shaded = np.concatenate([np.pad(shade(d, mm, pixel_mm), 2)
                                 for d in (coarse, refined, target)], axis=1)
        save_png(out / f"shaded_{k:03d}.png", Image.fromarray(shaded).resize(
            (shaded.shape[1] * scale, shaded.shape[0] * scale), Image.NEAREST))
        added, missing, valid = detail_bands(coarse, refined, target, mm, pixel_mm)
        bands = np.concatenate([np.pad(signed_color(band, vmax_band_mm, valid),
                                       ((2, 2), (2, 2), (0, 0))) for band in (added, missing)],
                               axis=1)
        save_png(out / f"detail_{k:03d}.png", Image.fromarray(bands).resize(
            (bands.shape[1] * scale, bands.shape[0] * scale), Image.NEAREST))
        paths.append(path)
    return paths
