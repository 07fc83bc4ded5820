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

from . import detail as detail_stage
from .checkpoint import CheckpointError, load_checkpoint
from .configs import get_config
from .data import downsample, downsample_mask
from .h5format import BACKGROUND, FOREGROUND_ABOVE
from .networks import build_networks, generate, stage_at
from .train import TrainSettings


def generator_from_state(state: dict, source, device="cpu") -> tuple:
    """(generator in eval mode, its TrainSettings, resolution, alpha) of a
    loaded dce-train checkpoint ``state``; CheckpointError naming ``source``
    when it is not one."""
    try:
        settings = TrainSettings(**{k: v for k, v in state["settings"].items()
                                    if k in TrainSettings.__dataclass_fields__})
        cfg = get_config(settings.config)
        schedule = settings.schedule()
        G, _ = build_networks(settings, cfg, schedule[-1].resolution)
        G.load_state_dict(state["G"])
        stage, alpha = stage_at(schedule, max(int(state["iteration"]) - 1, 0))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"{source}: not a usable dce-train checkpoint "
                              f"({type(error).__name__}: {error})") from None
    return G.to(device).eval(), settings, schedule[stage].resolution, alpha


def load_generator(checkpoint, device="cpu"):
    """(generator in eval mode, its TrainSettings, resolution, alpha) of a
    dce-train checkpoint; CheckpointError naming the file when it is not one."""
    return generator_from_state(load_checkpoint(checkpoint, map_location=device), checkpoint,
                                device)


class Refiner:
    """A trained generator ready to refine images.

    ``refiner(coarse)``: (C_in, H, W) or (N, C_in, H, W) float array in
    [-1, 1] with the channels ``refiner.input_channels`` -> the same leading
    shape with ``refiner.output_channels``, H and W unchanged (multiples of
    ``refiner.resolution``).

    ``checkpoint`` is a dce-train checkpoint, or a detail-stage checkpoint
    (``dce-train-detail``), which holds its global network: the global
    network refines, then the detail stage adds its depth detail to images of
    the size it was trained at (``refiner.detail_size``); ``detail=False``
    uses the global network alone. ``mirror_average`` averages the detail
    stage's output with its output on the mirrored image, mirrored back
    (``detail.MirrorAveraged``; twice the stage's time), for a stage trained
    on mirrored crops (ValueError naming the checkpoint otherwise).
    """

    def __init__(self, checkpoint, device: str = "cpu", detail: bool = True,
                 mirror_average: bool = False):
        state = load_checkpoint(checkpoint, map_location=device)
        self.path = checkpoint
        self.enhancer = None
        self.mirror_average = mirror_average
        # How the images it was trained on were made (h5format.normalization);
        # None in a checkpoint from before dce stored it.
        self.normalization = state.get("normalization") if isinstance(state, dict) else None
        if isinstance(state, dict) and state.get("format") == detail_stage.FORMAT:
            (enhancer, self.detail_settings, self.detail_size,
             self.depth_mm_per_unit) = detail_stage.load_enhancer(state, checkpoint, device)
            if detail and mirror_average and not self.detail_settings.flip:
                raise ValueError(f"{checkpoint}: its detail stage was trained without "
                                 "mirrored crops (--no-flip); it cannot be mirror-averaged")
            if detail:
                self.enhancer = (detail_stage.MirrorAveraged(enhancer) if mirror_average
                                 else enhancer)
            state = state["global"]
        if mirror_average and self.enhancer is None:
            raise ValueError(f"{checkpoint}: mirror averaging applies to a detail stage, and "
                             + ("this is not a dce-train-detail checkpoint" if detail else
                                "it is left out (detail=False)"))
        self.generator, self.settings, self.resolution, self.alpha = generator_from_state(
            state, checkpoint, device)
        # What a detail stage embeds of its global network (checked by generator_from_state).
        self.checkpoint_state = {k: state[k] for k in ("settings", "G", "iteration")}
        self.normalization = self.normalization or state.get("normalization")
        self.config = get_config(self.settings.config)
        self.input_channels = tuple(self.config.generator_in)
        self.output_channels = tuple(self.config.generator_out)
        self.device = torch.device(device)
        if self.enhancer is not None and self.device.type == "cpu":
            # oneDNN's native layout: 12 % faster on a CPU (benchmarks/detail_speed.py).
            self.enhancer.to(memory_format=torch.channels_last)

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
        if self.enhancer is not None:
            refined = self._add_detail(x, refined)
        refined = refined.numpy()
        return refined[0] if single else refined

    def _add_detail(self, x, refined) -> torch.Tensor:
        """The global output plus the detail stage's depth detail, inside
        the global output's surface."""
        H = x.shape[-1]
        if H != self.detail_size:
            raise ValueError(f"the detail stage was trained on {self.detail_size} px images; "
                             f"got {H} px (refine at {self.detail_size}, or pass detail=False)")
        depth = self.input_channels.index("depth")
        out_depth = self.output_channels.index("depth")
        base = refined[:, out_depth:out_depth + 1]
        colour = detail_stage.shading_colour(self.detail_settings, self.config)
        inputs = detail_stage.enhancer_input(x, base, depth, colour,
                                             self.detail_settings.shading_fit)
        # On a CPU one image at a time is faster (benchmarks/detail_speed.py: 84 ms per
        # 256 px image alone, 201 ms in a batch of 8, whose activations leave the cache),
        # in the enhancer's channels-last layout.
        step, layout = len(inputs), torch.contiguous_format
        if self.device.type == "cpu":
            step, layout = 1, torch.channels_last
        with torch.no_grad():
            added = torch.cat([
                self.enhancer(inputs[k:k + step].to(self.device, memory_format=layout)).float().cpu()
                for k in range(0, len(inputs), step)]) / self.depth_mm_per_unit
        refined = refined.clone()
        refined[:, out_depth:out_depth + 1] = torch.where(base >= FOREGROUND_ABOVE, base + added,
                                                          base)
        return refined

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
