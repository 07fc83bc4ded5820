"""The settings of a training run of the global network: :class:`TrainSettings`
(every field checked when it is made), the presets and the model defaults
they resolve to, and the field validators (``check_int``, ...) that the
detail trainer's settings (:mod:`dce.gan.detail`) share. :mod:`dce.gan.train`
re-exports every name here."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .configs import get_config
from .networks import RESOLUTIONS, Stage, paper_schedule

MODELS = ("progressive", "pix2pix")
# Optimizer defaults: the paper's for the progressive GAN, pix2pix's own.
DEFAULT_LR = {"progressive": 1e-5, "pix2pix": 2e-4}
# The paper's 1e-5 suits 10,000 iterations per resolution; the short CPU
# preset needs a larger step (measured: 5e-4 beats the coarse input on the
# built-in world's held-out identities, 1e-5 does not yet).
PRESET_LR = {"cpu": 5e-4}
# Presets whose generator learns a correction to the coarse input (see
# networks.Generator's ``skip``); the paper preset keeps the paper's network.
PRESET_RESIDUAL = {"cpu": True, "tiny": False, "paper": False}
# Presets whose L1 covers the ground truth's surface only. Measured at 256 px on
# the built-in world's held-out identities (cpu preset, DCE|D|DCE): with the
# whole-image L1 the network learns the scans' holes (brows, eyes) and its
# upsampled correction worsens the coarse face (face MAE 4.51 -> 4.78 mm,
# normal error 7.6 -> 11.2 deg); over the surface only it improves it (4.40 mm,
# 7.6 deg).
PRESET_MASKED_LOSS = {"cpu": True, "tiny": False, "paper": False}
DEFAULT_BETAS = {"progressive": (0.0, 0.99), "pix2pix": (0.5, 0.999)}

PRESETS = {
    # The paper: 10,000 iterations per resolution, 4 -> 256.
    "paper": dict(iters_per_resolution=10000, end=256),
    # A useful model on the built-in world in minutes on 2 CPU cores.
    "cpu": dict(iters_per_resolution=400, end=32),
    # Smoke runs and tests.
    "tiny": dict(iters_per_resolution=20, end=16),
}
AMP_MODES = ("auto", "bf16", "fp16", "off")
MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64-bit seeds
MAX_WORKERS = 256


def is_int(value) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    return is_int(value) or isinstance(value, (float, np.floating))


def check_int(owner: str, name: str, value, low: int, high: int | None = None,
              optional: bool = False) -> None:
    """ValueError naming ``owner.name`` unless ``value`` is an int in
    [low, high] (None allowed when ``optional``)."""
    if optional and value is None:
        return
    if not is_int(value) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{owner}: {name} must be an integer {span}, got {value!r}")


def check_float(owner: str, name: str, value, low: float = 0.0, low_open: bool = False,
                high: float | None = None, high_open: bool = False,
                optional: bool = False) -> None:
    """ValueError naming ``owner.name`` unless ``value`` is a finite number
    above ``low`` (or equal, unless ``low_open``) and below ``high``."""
    if optional and value is None:
        return
    ok = is_number(value) and math.isfinite(value) and (value > low if low_open else value >= low)
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        span = ("> " if low_open else ">= ") + f"{low:g}" + (
            "" if high is None else (" and < " if high_open else " and <= ") + f"{high:g}")
        raise ValueError(f"{owner}: {name} must be a finite number {span}, got {value!r}")


def check_choice(owner: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {list(choices)}, got {value!r}")


def check_flag(owner: str, name: str, value, optional: bool = False) -> None:
    if not (isinstance(value, (bool, np.bool_)) or (optional and value is None)):
        raise ValueError(f"{owner}: {name} must be True or False"
                         + (" or None" if optional else "") + f", got {value!r}")


@dataclass
class TrainSettings:
    data: str
    out: str
    config: str = "DCE|D|DCE"
    model: str = "progressive"   # or "pix2pix", the paper's baseline
    preset: str = "paper"
    iters_per_resolution: int | None = None  # overrides the preset
    max_resolution: int | None = None        # overrides the preset
    batch_size: int = 4
    lr: float | None = None      # None: see uses_lr()
    betas: tuple | None = None
    gp_lambda: float = 10.0
    drift: float = 0.0
    crop_pad: int = 16
    equalized_lr: bool = False
    residual: bool | None = None  # None: the preset's choice (PRESET_RESIDUAL)
    masked_loss: bool | None = None  # L1 over the ground truth's surface only; None: preset
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"            # "auto" (bf16 on CUDA if supported, else fp16), "bf16", "fp16", "off"
    workers: int = 2
    checkpoint_every: int = 500
    log_every: int = 25

    def __post_init__(self):
        """Every field checked: a NaN learning rate or penalty weight would
        train NaN weights; a zero batch size or interval would divide by
        zero. ValueError naming the field."""
        who = "TrainSettings"
        get_config(self.config)
        check_choice(who, "model", self.model, MODELS)
        check_choice(who, "preset", self.preset, sorted(PRESETS))
        check_int(who, "iters_per_resolution", self.iters_per_resolution, 1, optional=True)
        check_choice(who, "max_resolution", self.max_resolution, (None,) + RESOLUTIONS)
        check_int(who, "batch_size", self.batch_size, 1)
        # Adam moves each weight by about lr per step: above 1 it can only diverge.
        check_float(who, "lr", self.lr, 0.0, low_open=True, high=1.0, optional=True)
        if self.betas is not None:
            if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2):
                raise ValueError(f"{who}: betas must be two numbers, got {self.betas!r}")
            for beta in self.betas:
                check_float(who, "betas", beta, 0.0, high=1.0, high_open=True)
        check_float(who, "gp_lambda", self.gp_lambda, 0.0)
        check_float(who, "drift", self.drift, 0.0)
        check_int(who, "crop_pad", self.crop_pad, 0)
        check_flag(who, "equalized_lr", self.equalized_lr)
        check_flag(who, "residual", self.residual, optional=True)
        check_flag(who, "masked_loss", self.masked_loss, optional=True)
        check_int(who, "seed", self.seed, 0, MAX_SEED)
        if not isinstance(self.device, str):
            raise ValueError(f"{who}: device must be a name such as 'cpu', got {self.device!r}")
        check_choice(who, "amp", self.amp, AMP_MODES)
        check_int(who, "workers", self.workers, 0, MAX_WORKERS)
        check_int(who, "checkpoint_every", self.checkpoint_every, 1)
        check_int(who, "log_every", self.log_every, 1)

    def schedule(self) -> list:
        """The stage table. pix2pix does not grow: one stage at the last
        resolution with the progressive run's whole iteration budget, so both
        see the same number of iterations."""
        options = dict(PRESETS[self.preset])
        if self.iters_per_resolution is not None:
            options["iters_per_resolution"] = self.iters_per_resolution
        if self.max_resolution is not None:
            options["end"] = self.max_resolution
        stages = paper_schedule(**options)
        if self.model == "pix2pix":
            total = sum(s.stable_iters + s.fade_iters for s in stages)
            return [Stage(stages[-1].resolution, total, 0)]
        return stages

    def uses_residual(self) -> bool:
        """Whether the progressive generator adds its output to the coarse
        input's matching channels (pix2pix's U-Net has its own skips)."""
        if self.model == "pix2pix":
            return False
        return PRESET_RESIDUAL[self.preset] if self.residual is None else bool(self.residual)

    def uses_masked_loss(self) -> bool:
        """Whether the pixel loss covers the ground truth's surface only."""
        return (PRESET_MASKED_LOSS[self.preset] if self.masked_loss is None
                else bool(self.masked_loss))

    def uses_lr(self) -> float:
        """The Adam step: ``lr`` when given, else the preset's (progressive
        model), else the model's default."""
        if self.lr is not None:
            return self.lr
        if self.model == "progressive" and self.preset in PRESET_LR:
            return PRESET_LR[self.preset]
        return DEFAULT_LR[self.model]
