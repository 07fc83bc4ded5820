"""Pictures of a training run for people: loss curves from ``log.jsonl``.

Drawn with Pillow alone (no plotting library), one panel per quantity, the
iteration on the x axis and a dashed line where the resolution changes.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def save_png(path, picture) -> Path:
    """Write ``picture`` (a PIL image, or a uint8 (H, W) / (H, W, 3) array)
    to ``path`` as PNG, whole, creating the folder: gan's one PNG writer."""
    from PIL import Image

    from .checkpoint import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    with atomic_path(path, ".png") as tmp:
        picture.save(tmp, format="PNG")
    return path


CURVES = (
    ("g_pixel", "generator L1 pixel loss"),
    ("d_wasserstein", "critic Wasserstein estimate"),
    ("d_gp", "gradient penalty"),
    ("g_adversarial", "generator adversarial term"),
)
# The detail stage's log (dce-train-detail): its loss terms, in mm^2 with the L2 loss.
DETAIL_CURVES = (
    ("pixel", "detail stage: pixel loss of the detail"),
    ("gradient", "detail stage: loss of its gradient (the normals)"),
)
PANEL = (560, 180)
MARGIN = (64, 18, 14, 30)  # left, top, right, bottom
COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189))


def read_log(path) -> dict:
    """The records of a dce-train ``log.jsonl`` as arrays by key, in
    iteration order (a resumed run appends; a repeated iteration keeps its
    last record)."""
    path = Path(path)
    records = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path}:{number}: not a JSON line") from None
        records[int(record["iteration"])] = record
    if not records:
        raise ValueError(f"{path}: no log records")
    rows = [records[i] for i in sorted(records)]
    keys = {k for r in rows for k in r}
    return {k: np.array([r.get(k, np.nan) for r in rows], dtype=np.float64) for k in keys}


def plot_losses(log_path, png_path, curves=CURVES) -> Path:
    """A PNG with one panel per (key, title) of ``curves`` found in the log."""
    from PIL import Image, ImageDraw

    log = read_log(log_path)
    curves = [(k, t) for k, t in curves if k in log]
    width, height = PANEL
    left, top, right, bottom = MARGIN
    picture = Image.new("RGB", (width, height * len(curves)), "white")
    draw = ImageDraw.Draw(picture)
    x = log["iteration"]
    changes = np.flatnonzero(np.diff(log["resolution"])) + 1 if "resolution" in log else []
    for n, (key, title) in enumerate(curves):
        y0 = n * height
        box = (left, y0 + top, width - right, y0 + height - bottom)
        draw.rectangle(box, outline=(120, 120, 120))
        y = log[key]
        finite = np.isfinite(y)
        lo, hi = (np.percentile(y[finite], [1, 99]) if finite.any() else (0.0, 1.0))
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5

        def to_px(xv, yv):
            span = max(x[-1] - x[0], 1)
            px = box[0] + (xv - x[0]) / span * (box[2] - box[0])
            py = box[3] - (np.clip(yv, lo, hi) - lo) / (hi - lo) * (box[3] - box[1])
            return px, py

        for c in changes:
            px, _ = to_px(x[c], lo)
            for start in range(int(box[1]), int(box[3]), 8):
                draw.line([(px, start), (px, min(start + 4, box[3]))], fill=(170, 170, 170))
            draw.text((px + 2, box[1] + 2), f"{int(log['resolution'][c])}px", fill=(90, 90, 90))
        points = [to_px(a, b) for a, b in zip(x[finite], y[finite])]
        if len(points) > 1:
            draw.line(points, fill=COLORS[n % len(COLORS)], width=2)
        draw.text((left, y0 + 3), title, fill=(0, 0, 0))
        for value, py in ((hi, box[1]), (lo, box[3])):
            draw.text((4, py - 6), f"{value:.3g}", fill=(60, 60, 60))
        draw.text((left, box[3] + 4), f"iteration {int(x[0])}", fill=(60, 60, 60))
        draw.text((box[2] - 90, box[3] + 4), f"{int(x[-1])}", fill=(60, 60, 60))
    return save_png(png_path, picture)
