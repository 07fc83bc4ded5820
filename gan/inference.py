"""Refinement with a trained checkpoint: coarse DCE images in, refined DCE
images of the same size out.

A checkpoint refines at the resolution it was trained to (32 px for the cpu
preset, 256 px for the paper's). For larger images the network's correction
(refined - coarse, at its resolution) is brought up to the image size and
added to the full-size coarse image, so the coarse image's own detail and
silhouette are kept and the network's low-frequency correction is added on
top. Where a low-resolution network outputs background inside the coarse
surface (it learns where the training scans have holes: eyes, brows, hair)
the coarse surface is kept: a scan's missing data is not missing face.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .configs import get_config
from .data import BACKGROUND, FOREGROUND_ABOVE, downsample, downsample_mask
from .evaluate import load_generator
from .train import generate


class Refiner:
    """A trained generator ready to refine images.

    ``refiner(coarse)``: (C_in, H, W) or (N, C_in, H, W) float array in
    [-1, 1] with the channels ``refiner.input_channels`` -> the same leading
    shape with ``refiner.output_channels``, H and W unchanged (multiples of
    ``refiner.resolution``).
    """

    def __init__(self, checkpoint, device: str = "cpu"):
        self.generator, self.settings, self.resolution, self.alpha = load_generator(
            checkpoint, device)
        self.config = get_config(self.settings.config)
        self.input_channels = tuple(self.config.generator_in)
        self.output_channels = tuple(self.config.generator_out)
        self.device = torch.device(device)

    def __call__(self, coarse: np.ndarray) -> np.ndarray:
        coarse = np.asarray(coarse, dtype=np.float32)
        single = coarse.ndim == 3
        if single:
            coarse = coarse[None]
        if coarse.ndim != 4 or coarse.shape[1] != len(self.input_channels):
            raise ValueError(f"coarse images must be (N, {len(self.input_channels)}, H, W) with "
                             f"channels {list(self.input_channels)}, got {coarse.shape}")
        H, W = coarse.shape[-2:]
        r = self.resolution
        if H != W or H % r:
            raise ValueError(f"image size {H}x{W} is not a square multiple of the "
                             f"checkpoint's resolution {r}")
        x = torch.from_numpy(coarse)
        with torch.no_grad():
            x_r = downsample(x, r)
            y_r = generate(self.generator, self.settings.model, x_r.to(self.device), r,
                           self.alpha).float().cpu()
        refined = y_r if H == r else self._upsample_correction(x, x_r, y_r)
        refined = refined.numpy()
        return refined[0] if single else refined

    def _upsample_correction(self, x, x_r, y_r) -> torch.Tensor:
        """Full-size refined images: coarse + the correction of the blocks
        wholly inside the coarse surface where the network gives surface,
        spread bilinearly (normalized by the blocks' weights, so other blocks
        contribute nothing); background outside the coarse surface."""
        H = x.shape[-1]
        depth = self.input_channels.index("depth")
        out_depth = self.output_channels.index("depth")
        surface = (x[:, depth:depth + 1] >= FOREGROUND_ABOVE).float()
        used = downsample_mask(surface, y_r.shape[-1]) \
            * (y_r[:, out_depth:out_depth + 1] >= FOREGROUND_ABOVE)
        source = [self.input_channels.index(c) for c in self.output_channels]
        correction = (y_r - x_r[:, source]) * used

        def up(t):
            return F.interpolate(t, size=(H, H), mode="bilinear", align_corners=False)

        weight = up(used)
        spread = up(correction) / weight.clamp(min=1e-6) * (weight > 1e-6)
        refined = x[:, source] + spread
        inside = (surface > 0).expand_as(refined)
        return torch.where(inside, refined, torch.full_like(refined, BACKGROUND))
