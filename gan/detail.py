"""The detail stage (our addition): a fully convolutional network at the pair
file's full resolution that adds the fine detail on top of the progressive
(global) network's upsampled output, after pix2pixHD's local enhancer.

See docs/detail-stage.md (why, target band, losses, inference, failure).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint as ckpt
from . import h5format
from .configs import COLOUR, get_config
from .data import PairDataset
from .h5format import FOREGROUND_ABOVE, PairFileError
from .losses import gradient_penalty
from .metrics import gaussian_blur_masked
from .networks import LRELU_SLOPE
from .shading import FITS, shading_residual

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


class MirrorAveraged(nn.Module):
    """A detail network averaged with itself on the mirrored image:
    (N, C, H, W) -> (N, 1, H, W), (net(x) + mirror(net(mirror(x)))) / 2 with
    mirror a left-right flip. The self-ensemble of Lim et al. 2017 (EDSR+),
    with the one transform the stage trains on (``crop_batch`` mirrors half
    the crops): what it adds to a mirrored face is the mirror of what it adds
    to the face. Twice the network's time."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return 0.5 * (self.net(x) + self.net(x.flip(-1)).flip(-1))


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
    lr_decay: float = 0.25
    # Adam's first-moment decay. 0.9, not the GAN habit of 0.5: with 0.5 one
    # DCE-only run in four learned half as fast and ended at detail_corr 0.13
    # instead of 0.22-0.23 (benchmarks/detail_seeds.py).
    beta1: float = 0.9
    shading: bool = True
    # How the shading residual is fitted (dce.gan.shading.FITS): Lambert's
    # law on the coarse normals; stages trained before it read "quadratic".
    shading_fit: str = "lambert"
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

    def __post_init__(self):
        """Every numeric field checked (ValueError naming it): NaN or
        infinite weights and step sizes would train NaN weights."""
        from .train import MAX_SEED, check_choice, check_flag, check_float, check_int

        who = "DetailSettings"
        check_int(who, "iterations", self.iterations, 0)  # 0: an untrained stage (adds nothing)
        check_int(who, "batch_size", self.batch_size, 1)
        check_int(who, "crop", self.crop, 16)
        if self.crop % 2:
            raise ValueError(f"{who}: crop must be an even number >= 16, got {self.crop}")
        check_int(who, "width", self.width, 1)
        check_int(who, "blocks", self.blocks, 0)
        check_float(who, "lr", self.lr, 0.0, low_open=True, high=1.0)
        check_float(who, "lr_decay", self.lr_decay, 0.0, high=1.0)
        check_float(who, "beta1", self.beta1, 0.0, high=1.0, high_open=True)
        check_float(who, "highpass_mm", self.highpass_mm, 0.0, low_open=True)
        check_float(who, "denoise_mm", self.denoise_mm, 0.0, high=self.highpass_mm,
                    high_open=True)
        check_choice(who, "pixel_loss", self.pixel_loss, ("l1", "l2"))
        check_float(who, "gradient_weight", self.gradient_weight, 0.0)
        check_int(who, "edge_px", self.edge_px, 0)
        check_float(who, "clip_mm", self.clip_mm, 0.0, low_open=True)
        check_float(who, "adversarial_weight", self.adversarial_weight, 0.0)
        check_float(who, "gp_lambda", self.gp_lambda, 0.0)
        check_flag(who, "flip", self.flip)
        check_flag(who, "shading", self.shading)
        check_choice(who, "shading_fit", self.shading_fit, FITS)
        check_int(who, "seed", self.seed, 0, MAX_SEED)
        check_int(who, "checkpoint_every", self.checkpoint_every, 1)
        check_int(who, "log_every", self.log_every, 1)


def learning_rate(settings: DetailSettings, iteration: int) -> float:
    """Adam step of iteration ``iteration`` (0-based): ``lr``, then over the
    last ``lr_decay`` share of ``iterations`` falling linearly to lr / k at
    the last of those k iterations. Annealing pays: 2,000 more iterations
    decaying from 1e-3 took the colour stage from detail_corr 0.438 to 0.469
    (docs/detail-findings.md, "Training time"). A run resumed with more
    ``iterations`` climbs back to ``lr`` and decays again at its new end; a
    second such restart at 1e-3 blew the colour stage up, so resume a long
    run with a lower ``lr``."""
    start = settings.iterations * (1.0 - settings.lr_decay)
    if iteration < start:
        return settings.lr
    # Past the end (only a caller stepping on by hand): the last step's size.
    remaining = max(settings.iterations - iteration, 1)
    return settings.lr * remaining / (settings.iterations - start)


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


def same_global_network(stored, current) -> bool:
    """Whether a detail checkpoint's embedded global network (``stored``) is
    the one loaded now: by its weights and iteration, not its file's path, so
    a run resumes after the global checkpoint is moved or named another way."""
    if not isinstance(stored, dict) or stored.get("iteration") != current["iteration"]:
        return False
    theirs, ours = stored.get("G"), current["G"]
    return (isinstance(theirs, dict) and theirs.keys() == ours.keys()
            and all(torch.is_tensor(theirs[k]) and theirs[k].shape == ours[k].shape
                    and torch.equal(theirs[k].to(ours[k].device), ours[k]) for k in ours))


def enhancer_input(coarse, base_depth, depth_index: int, colour=(), fit: str = "lambert"):
    """(N, C + 1 (+ 1), H, W): the coarse channels, the global correction of
    the depth (base - coarse, scaled by CORRECTION_GAIN, 0 off the surface)
    and, when ``colour`` names the r, g, b channels' indices, the photo's
    shading residual by ``fit`` (:func:`dce.gan.shading.shading_residual`)."""
    coarse_depth = coarse[:, depth_index:depth_index + 1]
    surface = coarse_depth >= FOREGROUND_ABOVE
    correction = torch.where(surface, (base_depth - coarse_depth) * CORRECTION_GAIN,
                             torch.zeros_like(coarse_depth))
    parts = [coarse, correction]
    if colour:
        parts.append(shading_residual(coarse, depth_index, colour, fit))
    return torch.cat(parts, dim=1)


def shading_colour(settings: DetailSettings, config) -> tuple:
    """Indices of r, g, b among the global network's inputs when the stage
    reads the photo's shading (``settings.shading`` and a colour
    configuration), else ()."""
    names = tuple(config.generator_in)
    if not settings.shading or not all(c in names for c in COLOUR):
        return ()
    return tuple(names.index(c) for c in COLOUR)


def enhancer_channels(settings: DetailSettings, config) -> int:
    """Input channels of the stage's LocalEnhancer (see :func:`enhancer_input`)."""
    return len(config.generator_in) + 1 + (1 if shading_colour(settings, config) else 0)


def pixel_sizes(path, rows) -> np.ndarray:
    """Pixel size in mm (1 / the camera scale) of the ground truth of the
    file's samples ``rows``; PairFileError naming the file and the sample
    when a camera scale is not a finite positive number."""
    rows = np.asarray(rows, dtype=np.int64)
    try:
        with h5py.File(path, "r") as f:
            scales = f["target_camera"][:, 3, 0][rows]
            bad = ~(np.isfinite(scales) & (scales > 0))
            if bad.any():
                row = int(rows[np.flatnonzero(bad)[0]])
                ids = list(f["sample_id"].asstr()[()])
                raise PairFileError(f"{path}: {h5format.sample_name(ids, row)}: target camera "
                                    f"scale {scales[bad][0]} px/mm (must be finite and > 0)")
    except (OSError, KeyError) as error:
        raise PairFileError(f"{path}: cannot read the target cameras ({error})") from None
    return 1.0 / scales


def depth_scale(path) -> float:
    """The pair file's depth scale, mm per [-1, 1] unit (the build's
    ``depth_scale``; one value for every sample), which the detail stage
    keeps: it adds mm to images in [-1, 1] units. Call it on a validated
    file (:func:`dce.gan.h5format.validate`)."""
    try:
        with h5py.File(path, "r") as f:
            channels = json.loads(f.attrs["channels"])
            scales = np.abs(f["target_scale"][:, channels.index("depth")])
    except (OSError, KeyError, ValueError) as error:
        raise PairFileError(f"{path}: cannot read the depth scales ({error})") from None
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
    colour = shading_colour(settings, cfg)
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
        parts["inputs"].append(enhancer_input(coarse, base[:, None], depth, colour,
                                              settings.shading_fit))
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
    1/2 when ``flip`` (the faces' detail is roughly symmetric). ``sample``
    and ``flipped`` (B,) say which training sample each crop is from and
    whether it was mirrored."""
    rng = np.random.default_rng([settings.seed, iteration])
    n = len(arrays.valid)
    samples = rng.integers(0, n, settings.batch_size)
    half = settings.crop // 2
    out = {k: [] for k in ("inputs", "base", "detail", "valid", "coarse_depth",
                           "target_depth")}
    flips = []
    for k in samples:
        centres = arrays.centres[k]
        r, c = (int(v) for v in centres[rng.integers(0, len(centres))])
        flip = settings.flip and rng.random() < 0.5
        flips.append(flip)
        for name in out:
            window = getattr(arrays, name)[k, :, r - half:r + half, c - half:c + half]
            out[name].append(window.flip(-1) if flip else window)
    batch = {k: torch.stack(v) for k, v in out.items()}
    batch["mm_per_unit"] = arrays.mm_per_unit[torch.from_numpy(samples)]
    batch["sample"], batch["flipped"] = torch.from_numpy(samples), torch.tensor(flips)
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
        self.refiner = global_refiner(settings.global_checkpoint, self.device)
        require_finite_networks(self.refiner, settings.global_checkpoint)
        summary = h5format.validate(settings.data)
        self.normalization = h5format.normalization(summary)
        h5format.check_normalization(self.refiner.normalization, self.normalization,
                                     settings.global_checkpoint, settings.data)
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
        ckpt.seed_everything(settings.seed)
        channels = enhancer_channels(settings, self.refiner.config)
        # Channels-last: 1.25x the training crops/s on a 2-core CPU (47 against
        # 38, benchmarks/detail_speed.py --channels 6), as for the Refiner.
        self.G = LocalEnhancer(channels, settings.width, settings.blocks).to(
            self.device, memory_format=torch.channels_last)
        self.D = PatchCritic().to(self.device) if settings.adversarial_weight > 0 else None
        self.opt_g = torch.optim.Adam(self.G.parameters(), settings.lr,
                                      betas=(settings.beta1, 0.99))
        self.opt_d = (torch.optim.Adam(self.D.parameters(), settings.lr, betas=(0.0, 0.99))
                      if self.D is not None else None)
        self.iteration = 0
        self.interrupted = self.diverged = False
        self.saved_iteration = None  # iteration of the checkpoint on disk from this run
        self.arrays: _Arrays | None = None

    def state(self) -> dict:
        return {"format": FORMAT, "iteration": self.iteration, "settings": asdict(self.s),
                "G": self.G.state_dict(), "opt_g": self.opt_g.state_dict(),
                "D": None if self.D is None else self.D.state_dict(),
                "opt_d": None if self.opt_d is None else self.opt_d.state_dict(),
                "global": self.refiner.checkpoint_state, "image_size": self.image_size,
                "depth_mm_per_unit": self.depth_mm_per_unit,
                "normalization": self.normalization, "rng": ckpt.rng_state()}

    def save(self) -> Path:
        """Write OUT/last.pt; non-finite weights or optimizer states are never
        written (TrainingDiverged, the checkpoint on disk stays)."""
        state = self.state()
        bad = ckpt.nonfinite({k: state[k] for k in ("G", "opt_g", "D", "opt_d")
                              if state[k] is not None})
        if bad:
            self._diverged(f"non-finite weights ({', '.join(bad[:3])}) after iteration "
                           f"{self.iteration}")
        path = ckpt.save_checkpoint(self.out / "last.pt", state)
        self.saved_iteration = self.iteration
        return path

    def _diverged(self, what: str):
        from .train import TrainingDiverged

        self.diverged = True
        kept = (f"{self.out / 'last.pt'} (iteration {self.saved_iteration}) is kept"
                if self.saved_iteration is not None else "no checkpoint was written")
        raise TrainingDiverged(f"detail stage diverged: {what}; stopped, {kept}. Lower --lr")

    def resume(self, path) -> None:
        """Continue from ``path``; every entry is checked before anything is
        loaded (CheckpointError naming the file; ValueError when the run's
        settings differ from the checkpoint's)."""
        state = ckpt.load_checkpoint(path, map_location=self.device)
        if state.get("format") != FORMAT:
            raise ckpt.CheckpointError(f"{path}: not a detail-stage checkpoint")
        needs = {"settings": dict, "iteration": int, "G": dict, "opt_g": dict, "rng": dict}
        if self.D is not None:
            needs.update(D=dict, opt_d=dict)
        ckpt.require(state, path, needs)
        try:
            theirs = asdict(stored_settings(state["settings"]))
        except (TypeError, ValueError) as error:
            raise ckpt.CheckpointError(f"{path}: its settings are not usable ({error})") from None
        if not same_global_network(state.get("global"), self.refiner.checkpoint_state):
            raise ValueError(f"{path}: was trained over another global network than "
                             f"{self.s.global_checkpoint}; start a new run folder to change it")
        for key in ("batch_size", "crop", "width", "blocks", "beta1",
                    "highpass_mm", "denoise_mm", "pixel_loss", "edge_px", "clip_mm",
                    "adversarial_weight", "seed", "flip", "shading", "shading_fit"):
            if theirs.get(key) != getattr(self.s, key):
                raise ValueError(f"{path}: trained with {key}={theirs.get(key)!r}, now "
                                 f"{getattr(self.s, key)!r}; start a new run folder to change it")
        h5format.check_normalization(state.get("normalization"), self.normalization, path,
                                     self.s.data)
        iteration = state["iteration"]
        if not 0 <= iteration <= self.s.iterations:
            raise ckpt.CheckpointError(f"{path}: iteration {iteration} is outside 0 .. "
                                       f"{self.s.iterations} (--iterations)")
        pairs = [("G", self.G, "opt_g", self.opt_g)]
        if self.D is not None:
            pairs.append(("D", self.D, "opt_d", self.opt_d))
        for name, net, opt_name, opt in pairs:
            ckpt.check_state_dict(state[name], net, path, name)
            ckpt.check_optimizer_state(state[opt_name], net, path, opt_name)
        ckpt.set_rng_state(state["rng"], path)
        for name, net, opt_name, opt in pairs:
            net.load_state_dict(state[name])
            opt.load_state_dict(state[opt_name])
        self.iteration = self.saved_iteration = iteration

    def step(self, batch) -> dict:
        dev = self.device
        lr = learning_rate(self.s, self.iteration)
        for opt in (self.opt_g, self.opt_d):
            for group in (opt.param_groups if opt is not None else ()):
                group["lr"] = lr
        b = {k: v.to(dev) for k, v in batch.items()}
        detail = self.G(b["inputs"].contiguous(memory_format=torch.channels_last))
        valid = b["valid"]
        pixel = pixel_term(detail, b["detail"], valid, self.s.pixel_loss)
        grad = gradient_term(detail, b["detail"], valid, self.s.pixel_loss)
        loss = pixel + self.s.gradient_weight * grad
        record = {"pixel": pixel.item(), "gradient": grad.item(), "lr": lr}
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
        on Ctrl-C / SIGTERM and at the end (``log.jsonl`` first cut back to
        the current iteration). TrainingDiverged on a non-finite loss or
        weights; the last good checkpoint stays."""
        if self.arrays is None:
            self.arrays = prepare_arrays(self.s, self.refiner, self.device, self.log)
        # After a kill the log may hold iterations past the checkpoint, done again now.
        ckpt.truncate_log(self.out / "log.jsonl", self.iteration)
        record, t0, start = {}, time.perf_counter(), self.iteration
        try:
            with ckpt.interrupts_call(lambda: setattr(self, "interrupted", True)), \
                    open(self.out / "log.jsonl", "a", encoding="utf-8") as log_file:
                while self.iteration < self.s.iterations and not self.interrupted:
                    record = self.step(crop_batch(self.arrays, self.s, self.iteration))
                    bad = [k for k, v in record.items() if not np.isfinite(v)]
                    if bad:
                        self._diverged(f"non-finite loss at iteration {self.iteration} ("
                                       + ", ".join(f"{k}={record[k]}" for k in bad) + ")")
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
            if not self.diverged:
                self.save()
        if self.interrupted:
            self.log(f"interrupted at iteration {self.iteration}; checkpoint "
                     f"{self.out / 'last.pt'}: rerun with --resume to continue")
        return record


def require_finite_networks(refiner, path) -> None:
    """CheckpointError naming ``path`` when the weights of a Refiner's
    global network or detail stage are not finite (a checkpoint saved by a
    diverged run before dce refused to save one): its output would be NaN."""
    nets = {"G": refiner.generator}
    if refiner.enhancer is not None:
        nets["detail G"] = refiner.enhancer
    for name, net in nets.items():
        bad = ckpt.nonfinite(net.state_dict())
        if bad:
            raise ckpt.CheckpointError(f"{path}: non-finite (NaN or infinite) weights in "
                                       f"{name}: {bad[:3]}")


def stored_settings(saved: dict) -> DetailSettings:
    """The DetailSettings a checkpoint saved (unknown keys dropped); one
    from before the shading input had none (``shading`` False), one from
    before ``beta1`` was a setting trained with 0.5, one from before the
    Lambert fit read the quadratic one."""
    fields = {k: v for k, v in saved.items() if k in DetailSettings.__dataclass_fields__}
    return DetailSettings(**{"shading": False, "beta1": 0.5, "shading_fit": "quadratic",
                             **fields})


def load_enhancer(state: dict, path, device="cpu") -> tuple:
    """(LocalEnhancer in eval mode, DetailSettings, image size, depth mm per
    unit) of a loaded detail-stage checkpoint ``state``; CheckpointError
    naming ``path``."""
    try:
        settings = stored_settings(state["settings"])
        if not state.get("global"):
            raise ckpt.CheckpointError(f"{path}: a detail stage without its global network "
                                       "(the 'global' entry is missing)")
        cfg = get_config(state["global"]["settings"]["config"])
        G = LocalEnhancer(enhancer_channels(settings, cfg), settings.width, settings.blocks)
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
