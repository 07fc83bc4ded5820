"""Evaluation (paper section 5.3): the MAE of Eq. 4 between ground-truth and
refined depth images, next to the same figure for the coarse input.

Eq. 4 averages |y - G(x)| over the pixels where either image is foreground
(the paper's "G(x) != 0 or y != 0" on 8-bit images whose background is 0:
here, at least one 8-bit step above the background value -1),
then over the test images; it is reported as mean +- standard deviation over
images. Units: "normalized" = the depth channel mapped to [0, 1] (half of our
[-1, 1] range, as the paper's 0-255 images divided by 255), and millimetres
via each sample's stored depth scale. A checkpoint is evaluated at the
resolution it was trained to; the ground truth is average-pooled to it.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint
from .configs import get_config
from .data import FOREGROUND_ABOVE, PairDataset
from .networks import stage_at
from .train import TrainSettings, build_networks, generate

# "G(x) != 0" of Eq. 4, on 8-bit images with background 0, is "at least one
# 8-bit step above the background": FOREGROUND_ABOVE.


@dataclass
class Scores:
    """Per-image MAE (n,) of the coarse input and the refined output."""

    coarse_norm: np.ndarray
    refined_norm: np.ndarray
    coarse_mm: np.ndarray
    refined_mm: np.ndarray
    coarse_face_mm: np.ndarray   # over the ground truth's own pixels only
    refined_face_mm: np.ndarray
    coarse_roughness_mm: np.ndarray    # mean |Laplacian| of the depth (depth_roughness)
    refined_roughness_mm: np.ndarray
    target_roughness_mm: np.ndarray

    def table(self) -> list:
        rows = []
        for name, norm, mm, face, rough in (
                ("coarse input", self.coarse_norm, self.coarse_mm, self.coarse_face_mm,
                 self.coarse_roughness_mm),
                ("refined", self.refined_norm, self.refined_mm, self.refined_face_mm,
                 self.refined_roughness_mm)):
            rows.append({"model": name, "images": len(norm),
                         "mae_norm_mean": float(norm.mean()), "mae_norm_std": float(norm.std()),
                         "mae_mm_mean": float(mm.mean()), "mae_mm_std": float(mm.std()),
                         "face_mae_mm_mean": float(face.mean()),
                         "face_mae_mm_std": float(face.std()),
                         "roughness_mm": float(rough.mean()),
                         "target_roughness_mm": float(self.target_roughness_mm.mean())})
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


def load_generator(checkpoint, device="cpu"):
    """(generator in eval mode, its TrainSettings, resolution, alpha) of a
    dce-train checkpoint; CheckpointError naming the file when it is not one."""
    state = load_checkpoint(checkpoint, map_location=device)
    try:
        settings = TrainSettings(**{k: v for k, v in state["settings"].items()
                                    if k in TrainSettings.__dataclass_fields__})
        cfg = get_config(settings.config)
        schedule = settings.schedule()
        G, _ = build_networks(settings, cfg, schedule[-1].resolution)
        G.load_state_dict(state["G"])
        stage, alpha = stage_at(schedule, max(int(state["iteration"]) - 1, 0))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"{checkpoint}: not a usable dce-train checkpoint "
                              f"({type(error).__name__}: {error})") from None
    return G.to(device).eval(), settings, schedule[stage].resolution, alpha


def evaluate(checkpoint, data, split: str = "test", batch_size: int = 8, device: str = "cpu",
             keep_images: int = 0):
    """Scores of a checkpoint on a pair file's split, and the first
    ``keep_images`` (coarse, refined, target) depth images in mm for heat maps."""
    G, settings, r, alpha = load_generator(checkpoint, device)
    cfg = get_config(settings.config)
    # Items come pooled to the checkpoint's resolution (through the dataset's cache).
    dataset = PairDataset(data, split, cfg.generator_in, cfg.generator_out, resolution=r,
                          augment=False)
    depth_in, depth_out = cfg.generator_in.index("depth"), cfg.generator_out.index("depth")
    parts, kept = {k: [] for k in Scores.__dataclass_fields__}, []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.no_grad():
        for batch in loader:
            x = batch["coarse"].to(device)
            y = batch["target"][:, depth_out]
            refined = generate(G, settings.model, x, r, alpha).float().cpu()[:, depth_out]
            coarse = x.cpu()[:, depth_in]
            mm = batch["target_scale"][:, depth_out].abs().float()
            # Roughness is measured where the ground truth is surface over the
            # whole pooled block, away from its holes and silhouette.
            whole = batch["target_mask"][:, 0] > 0
            for name, prediction in (("coarse", coarse), ("refined", refined)):
                mae = image_mae(prediction, y)
                parts[f"{name}_norm"].append(mae / 2)
                parts[f"{name}_mm"].append(mae * mm)
                parts[f"{name}_face_mm"].append(image_mae(prediction, y, face_only=True) * mm)
                parts[f"{name}_roughness_mm"].append(depth_roughness(prediction, whole) * mm)
            parts["target_roughness_mm"].append(depth_roughness(y, whole) * mm)
            for n in range(len(y)):
                if len(kept) < keep_images:
                    kept.append((coarse[n].numpy(), refined[n].numpy(), y[n].numpy(),
                                 float(mm[n])))
    scores = Scores(**{k: torch.cat(v).numpy() for k, v in parts.items()})
    return scores, kept, {"resolution": r, "alpha": alpha, "config": settings.config,
                          "images": len(dataset)}


def write_table(scores: Scores, out_dir, info: dict) -> tuple:
    """``mae.md`` and ``mae.csv`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = scores.table()
    with open(out / "mae.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"MAE (Eq. 4) on {info['images']} images, configuration {info['config']}, "
             f"{info['resolution']} px", "",
             "| | MAE (normalized) | MAE (mm) | MAE on the ground-truth face (mm) "
             "| roughness (mm/px², ground truth "
             f"{rows[0]['target_roughness_mm']:.3f}) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['mae_norm_mean']:.4f} ± {r['mae_norm_std']:.4f} | "
              f"{r['mae_mm_mean']:.3f} ± {r['mae_mm_std']:.3f} | "
              f"{r['face_mae_mm_mean']:.3f} ± {r['face_mae_mm_std']:.3f} | "
              f"{r['roughness_mm']:.3f} |" for r in rows]
    (out / "mae.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out / "mae.md", out / "mae.csv"


def heat_color(values: np.ndarray, vmax: float) -> np.ndarray:
    """(H, W) >= 0 -> (H, W, 3) uint8, blue (0) through green and yellow to
    red (>= vmax)."""
    t = np.clip(values / max(vmax, 1e-12), 0.0, 1.0)
    r = np.clip(2.0 * t - 0.5, 0, 1) * 1.0
    g = np.clip(1.5 - np.abs(4.0 * t - 2.0), 0, 1)
    b = np.clip(1.0 - 2.0 * t, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).astype(np.uint8)


def write_heatmaps(kept: list, out_dir, vmax_mm: float = 5.0) -> list:
    """One PNG per kept image (as the paper's Fig. 4): |coarse - target| and
    |refined - target| in mm, from 0 (blue) to ``vmax_mm`` (red), over the
    pixels of Eq. 4; black elsewhere. ``kept`` holds (coarse, refined,
    target, mm per unit) as :func:`evaluate` returns them."""
    from PIL import Image

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (coarse, refined, target, mm) in enumerate(kept):
        scale = max(1, 256 // target.shape[0])
        tiles = []
        for prediction in (coarse, refined):
            foreground = (prediction >= FOREGROUND_ABOVE) | (target >= FOREGROUND_ABOVE)
            tile = heat_color(np.abs(prediction - target) * mm, vmax_mm) * foreground[..., None]
            tiles.append(np.pad(tile, ((2, 2), (2, 2), (0, 0))))
        picture = Image.fromarray(np.concatenate(tiles, axis=1))
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        path = out / f"heatmap_{k:03d}.png"
        picture.save(path)
        paths.append(path)
    return paths
