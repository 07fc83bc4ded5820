"""The detail stage (our addition): a fully convolutional network at the pair
file's full resolution that adds the fine detail on top of the progressive
(global) network's upsampled output, after pix2pixHD's local enhancer
(Wang et al. 2018, in the paper's references).

Why a second stage. The progressive network trained for minutes on a CPU
stops at 32 px (one pixel = 8 file pixels, about 7 mm); the creases, folds
and lid lines of the target are 1-5 mm wide. Between coarse and target the
depth differs by ~3 mm of low-frequency shape and only ~0.2 mm of detail, so
a full-resolution network trained on the whole residual spends its capacity
on shape it cannot see in a crop and learns no detail. The stage therefore
learns only the detail band: its target is the band of (ground truth -
global output) between Gaussians of ``denoise_mm`` and ``highpass_mm``,
computed by normalized convolution over the ground truth's surface (so holes
and the silhouette do not leak in); the global network keeps the shape, and
the pores and sensor noise below ``denoise_mm``, which nothing in the input
predicts, do not drown the gradient of the loss (measured on 24 held-out
images after 600 iterations: detail correlation 0.17 without, 0.22 with a
0.5 mm denoising blur). Random ``crop`` x ``crop`` windows of the
full-resolution images, centred on the face, make it cheap to train.

Losses: ``pixel_loss`` (L2 by default) of the detail (mm) plus
``gradient_weight`` x the same of its finite-difference gradient (mm per
pixel: the surface normals), over the pixels where the ground truth, the
coarse input and the global output are all surface, ``edge_px`` away from
their edges, the target clipped to +-``clip_mm``. With ``adversarial_weight`` > 0 the paper's depth-only conditional
critic (WGAN-GP) judges crops of (coarse depth, refined depth): it keeps the
amplitude that L1 shrinks where a crease's position is uncertain.

Inference: ``refined depth = global depth + detail``, inside the global
output's surface; curvature and elevation stay the global network's.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import h5format
from .configs import get_config
from .data import FOREGROUND_ABOVE, PairDataset
from .h5format import PairFileError
from .losses import gradient_penalty
from .metrics import gaussian_blur_masked
from .networks import LRELU_SLOPE

# Inputs are the coarse channels in [-1, 1] and the global correction of the
# depth, which is a few mm (a few hundredths in [-1, 1] units at a 50 mm
# scale): scaled up so that it reaches the network at the inputs' size.
CORRECTION_GAIN = 10.0
FORMAT = "dce-detail-stage"


class ResidualBlock(nn.Module):
    """x + conv3x3(lrelu(conv3x3(x))), dilated: (N, C, H, W) -> same."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=dilation, dilation=dilation)

    def forward(self, x):
        return x + self.conv2(F.leaky_relu(self.conv1(x), LRELU_SLOPE))


class LocalEnhancer(nn.Module):
    """The detail network, fully convolutional.

    forward(x (N, in_channels, H, W)) -> detail (N, 1, H, W) in mm; H and W even.

    A full-resolution front (3x3 conv), a stride-2 conv to half resolution,
    ``blocks`` dilated residual blocks there (dilations 1, 2, 4, 8, ...: a
    receptive field of ~120 file pixels, enough to see the nose when placing a
    nasolabial fold), nearest upsampling, and a full-resolution tail that also
    reads the front's features (sharp lines need full-resolution evidence,
    e.g. the photo's shading). The last 1x1 conv starts at zero: an untrained
    stage adds nothing.
    """

    def __init__(self, in_channels: int, width: int = 32, blocks: int = 4):
        super().__init__()
        self.front = nn.Conv2d(in_channels, width, 3, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*[ResidualBlock(2 * width, 2 ** (k % 4))
                                      for k in range(blocks)])
        self.up = nn.Conv2d(2 * width, width, 3, padding=1)
        self.tail = nn.Conv2d(2 * width, width, 3, padding=1)
        self.out = nn.Conv2d(width, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        if x.ndim != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(f"LocalEnhancer: input must be (N, C, H, W) with even H, W, "
                             f"got {tuple(x.shape)}")
        act = lambda t: F.leaky_relu(t, LRELU_SLOPE)  # noqa: E731
        front = act(self.front(x))
        h = self.blocks(act(self.down(front)))
        h = act(self.up(F.interpolate(h, scale_factor=2, mode="nearest")))
        return self.out(act(self.tail(torch.cat([h, front], dim=1))))


class PatchCritic(nn.Module):
    """The paper's conditional depth-only critic, on patches: (N, 2, H, W)
    (coarse depth, refined or real depth) -> (N,) mean of a map of scores,
    each seeing ~46 px. No normalization (WGAN-GP)."""

    def __init__(self, width: int = 32):
        super().__init__()
        layers, c = [], 2
        for k in range(4):
            layers += [nn.Conv2d(c, width * 2 ** min(k, 2), 4, stride=2 if k < 3 else 1,
                                 padding=1), nn.LeakyReLU(LRELU_SLOPE)]
            c = width * 2 ** min(k, 2)
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x).mean(dim=(1, 2, 3))


@dataclass
class DetailSettings:
    """One detail-stage run. ``global_checkpoint``: the progressive network's
    checkpoint (from dce-train) whose upsampled output the stage refines."""

    data: str
    out: str
    global_checkpoint: str
    iterations: int = 600
    batch_size: int = 8
    crop: int = 96
    width: int = 32
    blocks: int = 4
    lr: float = 1e-3
    highpass_mm: float = 4.0
    denoise_mm: float = 0.5
    pixel_loss: str = "l2"
    gradient_weight: float = 1.0
    edge_px: int = 3
    clip_mm: float = 2.0
    adversarial_weight: float = 0.0
    gp_lambda: float = 10.0
    flip: bool = True
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 250
    log_every: int = 25


def detail_target(target, base, valid, mm_per_unit, pixel_mm, highpass_mm: float,
                  denoise_mm: float = 0.0):
    """What the stage learns, in mm: the band of (target - base) depth between
    Gaussian blurs of sigma ``denoise_mm`` (0: none) and ``highpass_mm``,
    both taken over ``valid`` pixels only (normalized convolution); 0
    outside ``valid``. target, base: (N, H, W) depth in [-1, 1]; valid (N, H,
    W) bool; mm_per_unit, pixel_mm: (N,)."""
    difference = (target - base) * mm_per_unit[:, None, None]
    low = gaussian_blur_masked(difference, valid, highpass_mm / pixel_mm)
    if denoise_mm > 0:
        difference = gaussian_blur_masked(difference, valid, denoise_mm / pixel_mm)
    return (difference - low) * valid


def global_refiner(checkpoint, device="cpu"):
    """The Refiner of a dce-train checkpoint (imported here: inference imports us)."""
    from .inference import Refiner

    return Refiner(checkpoint, device, detail=False)


def enhancer_input(coarse, base_depth, depth_index: int):
    """(N, C + 1, H, W): the coarse channels and the global correction of
    the depth (base - coarse, scaled by CORRECTION_GAIN, 0 off the surface)."""
    coarse_depth = coarse[:, depth_index:depth_index + 1]
    surface = coarse_depth >= FOREGROUND_ABOVE
    correction = torch.where(surface, (base_depth - coarse_depth) * CORRECTION_GAIN,
                             torch.zeros_like(coarse_depth))
    return torch.cat([coarse, correction], dim=1)


def pixel_sizes(path, rows) -> np.ndarray:
    """Pixel size in mm (1 / the camera scale) of the ground truth of the
    file's samples ``rows``."""
    with h5py.File(path, "r") as f:
        return 1.0 / f["target_camera"][:, 3, 0][np.asarray(rows)]


def depth_scale(path) -> float:
    """The pair file's depth scale, mm per [-1, 1] unit (the build's
    ``depth_scale``; one value for every sample), which the detail stage
    keeps: it adds mm to images in [-1, 1] units."""
    with h5py.File(path, "r") as f:
        channels = json.loads(f.attrs["channels"])
        scales = np.abs(f["target_scale"][:, channels.index("depth")])
    if not np.all(np.isfinite(scales)) or scales.min() <= 0 or scales.max() > scales.min() * 1.001:
        raise ValueError(f"{path}: the samples' depth scales differ or are not positive "
                         f"({scales.min()} .. {scales.max()} mm); the detail stage needs one")
    return float(np.median(scales))


@dataclass
class _Arrays:
    """The training split in memory at full resolution (float32 tensors)."""
    inputs: torch.Tensor     # (N, C + 1, H, W) enhancer inputs
    base: torch.Tensor       # (N, 1, H, W) global output depth, [-1, 1]
    detail: torch.Tensor     # (N, 1, H, W) the detail target, mm
    valid: torch.Tensor      # (N, 1, H, W) bool
    coarse_depth: torch.Tensor
    target_depth: torch.Tensor
    mm_per_unit: torch.Tensor   # (N,)
    centres: list = field(default_factory=list)  # per sample: (k, 2) valid pixel rows, cols


def prepare_arrays(settings: DetailSettings, refiner, device, log=print) -> _Arrays:
    """Run the global network once over the training split and compute the
    detail targets (the global network is frozen during this stage)."""
    cfg = refiner.config
    data = PairDataset(settings.data, "train", cfg.generator_in, ("depth",), augment=False)
    pixel_mm = torch.from_numpy(pixel_sizes(settings.data, data.indices)).float()
    depth = cfg.generator_in.index("depth")
    out_depth = cfg.generator_out.index("depth")
    parts = {k: [] for k in ("inputs", "base", "detail", "valid", "coarse_depth",
                             "target_depth", "mm_per_unit")}
    t0 = time.perf_counter()
    for start in range(0, len(data), 16):
        items = data.fetch(range(start, min(start + 16, len(data))))
        coarse = torch.stack([it["coarse"] for it in items])
        target = torch.stack([it["target"] for it in items])[:, 0]
        mm = torch.stack([it["target_scale"][0] for it in items]).abs().float()
        base = torch.from_numpy(refiner(coarse.numpy()))[:, out_depth]
        valid = ((torch.stack([it["target_mask"] for it in items])[:, 0] > 0)
                 & (coarse[:, depth] >= FOREGROUND_ABOVE) & (base >= FOREGROUND_ABOVE))
        detail = detail_target(target, base, valid, mm, pixel_mm[start:start + len(items)],
                               settings.highpass_mm, settings.denoise_mm)[:, None]
        parts["inputs"].append(enhancer_input(coarse, base[:, None], depth))
        parts["base"].append(base[:, None])
        parts["detail"].append(detail.clamp(-settings.clip_mm, settings.clip_mm))
        parts["valid"].append(erode(valid[:, None], settings.edge_px))
        parts["coarse_depth"].append(coarse[:, depth:depth + 1])
        parts["target_depth"].append(target[:, None])
        parts["mm_per_unit"].append(mm)
        log(f"  global network and detail targets: {start + len(items)}/{len(data)} "
            f"({time.perf_counter() - t0:.0f} s)")
    arrays = _Arrays(**{k: torch.cat(v) for k, v in parts.items()})
    half = settings.crop // 2
    H = arrays.valid.shape[-1]
    for n in range(len(arrays.valid)):
        rows, cols = torch.nonzero(arrays.valid[n, 0], as_tuple=True)
        keep = (rows >= half) & (rows <= H - half) & (cols >= half) & (cols <= H - half)
        if not keep.any():
            raise ValueError(f"{settings.data}: training sample {int(data.indices[n])} has no "
                             f"face pixel {half} px inside the image border")
        arrays.centres.append(torch.stack([rows[keep], cols[keep]], 1))
    return arrays


def crop_batch(arrays: _Arrays, settings: DetailSettings, iteration: int) -> dict:
    """The crops of ``iteration``: a pure function of (seed, iteration), so a
    resumed run sees the same batches. Each crop is centred on a random face
    pixel of a random training sample, mirrored left-right with probability
    1/2 when ``flip`` (the faces' detail is roughly symmetric)."""
    rng = np.random.default_rng([settings.seed, iteration])
    n = len(arrays.valid)
    samples = rng.integers(0, n, settings.batch_size)
    half = settings.crop // 2
    out = {k: [] for k in ("inputs", "base", "detail", "valid", "coarse_depth",
                           "target_depth")}
    for k in samples:
        centres = arrays.centres[k]
        r, c = (int(v) for v in centres[rng.integers(0, len(centres))])
        flip = settings.flip and rng.random() < 0.5
        for name in out:
            window = getattr(arrays, name)[k, :, r - half:r + half, c - half:c + half]
            out[name].append(window.flip(-1) if flip else window)
    batch = {k: torch.stack(v) for k, v in out.items()}
    batch["mm_per_unit"] = arrays.mm_per_unit[torch.from_numpy(samples)]
    return batch


def penalty(error, kind: str):
    """|error| ("l1") or error^2 ("l2"), elementwise."""
    if kind == "l1":
        return error.abs()
    if kind == "l2":
        return error.square()
    raise ValueError(f"pixel_loss must be 'l1' or 'l2', got {kind!r}")


def pixel_term(a, b, valid, kind: str):
    """Mean penalty of (a - b) over ``valid``; (N, 1, H, W) tensors."""
    return (penalty(a - b, kind) * valid).sum() / valid.sum().clamp(min=1)


def gradient_term(a, b, valid, kind: str):
    """Mean penalty of the forward differences of (a - b) along x and y over
    the ``valid`` pixel pairs (the error of the surface's slope, hence of its
    normals); (N, 1, H, W) tensors."""
    d = a - b
    gx = penalty(d[..., :, 1:] - d[..., :, :-1], kind) * (valid[..., :, 1:] & valid[..., :, :-1])
    gy = penalty(d[..., 1:, :] - d[..., :-1, :], kind) * (valid[..., 1:, :] & valid[..., :-1, :])
    return (gx.sum() + gy.sum()) / valid.sum().clamp(min=1)


def erode(mask, pixels: int):
    """(N, 1, H, W) bool mask less the pixels within ``pixels`` of its edge."""
    if pixels <= 0:
        return mask
    outside = F.max_pool2d((~mask).float(), 2 * pixels + 1, stride=1, padding=pixels)
    return mask & (outside < 0.5)


class DetailTrainer:
    """Trains a :class:`LocalEnhancer` on top of a frozen global network."""

    def __init__(self, settings: DetailSettings, log=print):
        from .train import pick_device

        self.s, self.log = settings, log
        self.device = pick_device(settings.device)
        self.out = Path(settings.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if settings.crop < 16 or settings.crop % 2:
            raise ValueError(f"crop must be an even number >= 16, got {settings.crop}")
        self.refiner = global_refiner(settings.global_checkpoint, self.device)
        summary = h5format.validate(settings.data)
        channels, self.image_size = summary["channels"], int(summary["height"])
        missing = [c for c in self.refiner.input_channels if c not in channels]
        if missing:
            raise PairFileError(f"{settings.data}: has channels {list(channels)}, but the global "
                                f"network {settings.global_checkpoint} reads "
                                f"{list(self.refiner.input_channels)} (missing {missing})")
        self.depth_mm_per_unit = depth_scale(settings.data)
        if settings.crop > self.image_size:
            raise ValueError(f"{settings.data}: crops of {settings.crop} px do not fit its "
                             f"{self.image_size} px images (pass a smaller --crop)")
        torch.manual_seed(settings.seed)
        channels = len(self.refiner.input_channels) + 1
        self.G = LocalEnhancer(channels, settings.width, settings.blocks).to(self.device)
        self.D = PatchCritic().to(self.device) if settings.adversarial_weight > 0 else None
        self.opt_g = torch.optim.Adam(self.G.parameters(), settings.lr, betas=(0.5, 0.99))
        self.opt_d = (torch.optim.Adam(self.D.parameters(), settings.lr, betas=(0.0, 0.99))
                      if self.D is not None else None)
        self.iteration = 0
        self.interrupted = False
        self.arrays: Optional[_Arrays] = None

    def state(self) -> dict:
        return {"format": FORMAT, "iteration": self.iteration, "settings": asdict(self.s),
                "G": self.G.state_dict(), "opt_g": self.opt_g.state_dict(),
                "D": None if self.D is None else self.D.state_dict(),
                "opt_d": None if self.opt_d is None else self.opt_d.state_dict(),
                "global": self.refiner.checkpoint_state, "image_size": self.image_size,
                "depth_mm_per_unit": self.depth_mm_per_unit,
                "rng": ckpt.rng_state()}

    def save(self) -> Path:
        return ckpt.save_checkpoint(self.out / "last.pt", self.state())

    def resume(self, path) -> None:
        state = ckpt.load_checkpoint(path, map_location=self.device)
        if state.get("format") != FORMAT:
            raise ckpt.CheckpointError(f"{path}: not a detail-stage checkpoint")
        theirs = state["settings"]
        for key in ("global_checkpoint", "batch_size", "crop", "width", "blocks", "highpass_mm",
                    "denoise_mm", "pixel_loss", "edge_px", "clip_mm",
                    "adversarial_weight", "seed", "flip"):
            if theirs.get(key) != getattr(self.s, key):
                raise ValueError(f"{path}: trained with {key}={theirs.get(key)!r}, now "
                                 f"{getattr(self.s, key)!r}; start a new run folder to change it")
        self.G.load_state_dict(state["G"])
        self.opt_g.load_state_dict(state["opt_g"])
        if self.D is not None:
            self.D.load_state_dict(state["D"])
            self.opt_d.load_state_dict(state["opt_d"])
        ckpt.set_rng_state(state["rng"])
        self.iteration = int(state["iteration"])

    def step(self, batch) -> dict:
        dev = self.device
        b = {k: v.to(dev) for k, v in batch.items()}
        detail = self.G(b["inputs"])
        valid = b["valid"]
        pixel = pixel_term(detail, b["detail"], valid, self.s.pixel_loss)
        grad = gradient_term(detail, b["detail"], valid, self.s.pixel_loss)
        loss = pixel + self.s.gradient_weight * grad
        record = {"pixel": pixel.item(), "gradient": grad.item()}
        if self.D is not None:
            refined = b["base"] + detail / b["mm_per_unit"][:, None, None, None]
            real = b["target_depth"]
            # The critic sees the face only: both sides are the coarse depth outside it.
            refined = torch.where(valid, refined, b["coarse_depth"])
            real = torch.where(valid, real, b["coarse_depth"])

            def critic(c, image):
                return self.D(torch.cat([c, image], dim=1))

            cond = b["coarse_depth"]
            d_real, d_fake = critic(cond, real), critic(cond, refined.detach())
            gp = gradient_penalty(critic, real, refined.detach(), cond, self.s.gp_lambda)
            d_loss = d_fake.mean() - d_real.mean() + gp
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
            self.D.requires_grad_(False)
            adversarial = -critic(cond, refined).mean()
            self.D.requires_grad_(True)
            loss = loss + self.s.adversarial_weight * adversarial
            record.update(d_loss=d_loss.item(), adversarial=adversarial.item())
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.iteration += 1
        record.update(iteration=self.iteration, loss=loss.item())
        return record

    def train(self) -> dict:
        """Train to ``iterations``, checkpointing every ``checkpoint_every``,
        on Ctrl-C / SIGTERM and at the end."""
        if self.arrays is None:
            self.arrays = prepare_arrays(self.s, self.refiner, self.device, self.log)
        record, t0, start = {}, time.perf_counter(), self.iteration
        try:
            with ckpt.interrupts_call(lambda: setattr(self, "interrupted", True)), \
                    open(self.out / "log.jsonl", "a", encoding="utf-8") as log_file:
                while self.iteration < self.s.iterations and not self.interrupted:
                    record = self.step(crop_batch(self.arrays, self.s, self.iteration))
                    rate = ((self.iteration - start) * self.s.batch_size
                            / max(time.perf_counter() - t0, 1e-9))
                    record["crops_per_s"] = rate
                    if self.iteration % self.s.log_every == 0 \
                            or self.iteration == self.s.iterations:
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                        eta = (self.s.iterations - self.iteration) * self.s.batch_size / rate
                        self.log(f"detail it {self.iteration}/{self.s.iterations}  "
                                 f"{self.s.pixel_loss} {record['pixel']:.4f}  gradient "
                                 f"{record['gradient']:.4f}  {rate:.1f} crops/s  "
                                 f"ETA {eta / 60:.1f} min")
                    if self.iteration % self.s.checkpoint_every == 0:
                        self.save()
        finally:
            self.save()
        if self.interrupted:
            self.log(f"interrupted at iteration {self.iteration}; checkpoint "
                     f"{self.out / 'last.pt'}: rerun with --resume to continue")
        return record


def load_enhancer(state: dict, path, device="cpu") -> tuple:
    """(LocalEnhancer in eval mode, DetailSettings, image size, depth mm per
    unit) of a loaded detail-stage checkpoint ``state``; CheckpointError
    naming ``path``."""
    try:
        settings = DetailSettings(**{k: v for k, v in state["settings"].items()
                                     if k in DetailSettings.__dataclass_fields__})
        if not state.get("global"):
            raise ckpt.CheckpointError(f"{path}: a detail stage without its global network "
                                       "(the 'global' entry is missing)")
        cfg = get_config(state["global"]["settings"]["config"])
        G = LocalEnhancer(len(cfg.generator_in) + 1, settings.width, settings.blocks)
        G.load_state_dict(state["G"])
        size = int(state["image_size"])
        mm_per_unit = float(state["depth_mm_per_unit"])
        if not (np.isfinite(mm_per_unit) and mm_per_unit > 0 and size > 0):
            raise ValueError(f"depth scale {mm_per_unit}, image size {size}")
    except ckpt.CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise ckpt.CheckpointError(f"{path}: not a usable detail-stage checkpoint "
                                   f"({type(error).__name__}: {error})") from None
    return G.to(device).eval(), settings, size, mm_per_unit
