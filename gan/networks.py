"""Progressive encoder-decoder generator and discriminator (paper Sec. 4,
Tables 1-2). Images are (N, C, H, W) float32 tensors in [-1, 1]; a network
at stage resolution ``r`` takes and returns ``r x r`` images.

See docs/progressive-gan.md (architecture, growing, layers, initialization).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .h5format import BACKGROUND, FOREGROUND_ABOVE
from .pix2pix import PatchDiscriminator, UnetGenerator, init_weights

RESOLUTIONS = (4, 8, 16, 32, 64, 128, 256)
LRELU_SLOPE = 0.2
TRUNCATION = 2.0  # truncated normal: |w| <= 2 standard deviations

# Table 1: (in, out) widths of the encoder's 3x3 convs per resolution; None is
# the image's channel count. The block at 4 ends with the 4x4 valid conv.
_ENCODER_CONVS = {256: [(None, 32), (32, 32), (32, 64)], 128: [(64, 64), (64, 128)]}
# Table 2: the decoder's 3x3 convs per resolution (after the upsampling).
_DECODER_CONVS = {256: [(64, 32), (32, 32), (32, None)], 128: [(128, 64), (64, 64)]}
_WIDTH = 128


# ---------------------------------------------------------------------------
# Schedule

@dataclass(frozen=True)
class Stage:
    """One row of the progressive schedule: train at ``resolution`` for
    ``fade_iters`` iterations of fade-in (alpha 0 -> 1) followed by
    ``stable_iters`` iterations at alpha = 1."""
    resolution: int
    stable_iters: int
    fade_iters: int


def paper_schedule(iters_per_resolution: int = 10000, start: int = 4,
                   end: int = 256) -> list[Stage]:
    """The paper's schedule: ``iters_per_resolution`` iterations per resolution
    (10,000 in Sec. 5.4), ``start``..``end`` doubling.

    The paper does not say how an iteration budget splits into fade and
    stable phases; as in Progressive GAN (equal transition and stabilization
    phases) each grown resolution fades in over the first half and trains
    stable for the second half. The first resolution has nothing to fade from
    and trains stable for all of its iterations.
    """
    if start not in RESOLUTIONS or end not in RESOLUTIONS or start > end:
        raise ValueError(f"paper_schedule: start={start}, end={end} must be in {RESOLUTIONS}"
                         " with start <= end")
    if iters_per_resolution < 1:
        raise ValueError(f"paper_schedule: iters_per_resolution={iters_per_resolution} must be >= 1")
    fade = iters_per_resolution // 2
    stages = [Stage(start, iters_per_resolution, 0)]
    r = start * 2
    while r <= end:
        stages.append(Stage(r, iters_per_resolution - fade, fade))
        r *= 2
    return stages


def stage_at(schedule: list[Stage], iteration: int) -> tuple[int, float]:
    """(stage index, alpha) at 0-based ``iteration`` of ``schedule``.

    Within a stage the fade comes first: at its k-th iteration (k = 0..fade-1)
    alpha = k / fade_iters, then 1 for the stable iterations (and always 1 for
    a stage without fade). Iterations past the end of the schedule stay at the
    last stage with alpha = 1.
    """
    if not schedule:
        raise ValueError("stage_at: the schedule is empty")
    if iteration < 0:
        raise ValueError(f"stage_at: iteration={iteration} must be >= 0")
    begin = 0
    for index, stage in enumerate(schedule):
        k = iteration - begin
        if k < stage.fade_iters:
            return index, k / stage.fade_iters
        if k < stage.fade_iters + stage.stable_iters:
            return index, 1.0
        begin += stage.fade_iters + stage.stable_iters
    return len(schedule) - 1, 1.0


# ---------------------------------------------------------------------------
# Image resampling

def resample(img: torch.Tensor, resolution: int) -> torch.Tensor:
    """Average-pool (N, C, H, H) images to (N, C, resolution, resolution);
    H / resolution must be a power of two (repeated 2x2 box = one box)."""
    size = img.shape[-1]
    if img.ndim != 4 or img.shape[-2] != size:
        raise ValueError(f"resample: img must be (N, C, H, H), got {tuple(img.shape)}")
    factor = size // resolution if resolution > 0 else 0
    if factor < 1 or factor * resolution != size or factor & (factor - 1):
        raise ValueError(f"resample: cannot average-pool {size}x{size} to "
                         f"{resolution}x{resolution} (needs a power-of-two factor)")
    return img if factor == 1 else F.avg_pool2d(img, factor)


def fade_reals(img: torch.Tensor, alpha: float) -> torch.Tensor:
    """Real images as seen during a fade: lerp(up(avgpool2(img)), img, alpha),
    the same blend of previous and current resolution the networks make."""
    if alpha >= 1.0:
        return img
    coarse = F.interpolate(F.avg_pool2d(img, 2), scale_factor=2, mode="nearest")
    return torch.lerp(coarse, img, float(alpha))


# ---------------------------------------------------------------------------
# Layers

class PixelNorm(nn.Module):
    """x / sqrt(mean over channels of x^2 + eps): (N, C, H, W) -> same."""

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + self.eps)


class EqualConv2d(nn.Module):
    """Conv2d whose weights are truncated-normal with He's std
    ``gain / sqrt(fan_in)``; with ``equalized_lr`` the weights are stored with
    unit std and scaled by the He factor at run time instead."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int,
                 padding: int = 0, gain: float = math.sqrt(2.0), equalized_lr: bool = False):
        super().__init__()
        self.padding = padding
        self.equalized_lr = equalized_lr
        he_std = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        std = 1.0 if equalized_lr else he_std
        self.scale = he_std if equalized_lr else 1.0
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.trunc_normal_(self.weight, std=std, a=-TRUNCATION * std, b=TRUNCATION * std)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x):
        weight = self.weight * self.scale if self.equalized_lr else self.weight
        return F.conv2d(x, weight, self.bias, padding=self.padding)

    def extra_repr(self):
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, padding={self.padding}, equalized_lr={self.equalized_lr}"


class EqualLinear(nn.Module):
    """Fully connected layer with the same initialization as EqualConv2d."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2.0),
                 equalized_lr: bool = False):
        super().__init__()
        self.equalized_lr = equalized_lr
        he_std = gain / math.sqrt(in_features)
        std = 1.0 if equalized_lr else he_std
        self.scale = he_std if equalized_lr else 1.0
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.trunc_normal_(self.weight, std=std, a=-TRUNCATION * std, b=TRUNCATION * std)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x):
        weight = self.weight * self.scale if self.equalized_lr else self.weight
        return F.linear(x, weight, self.bias)


def conv_layer(in_channels: int, out_channels: int, kernel_size: int = 3, padding: int = 1,
               pixel_norm: bool = False, equalized_lr: bool = False) -> nn.Sequential:
    """conv -> LeakyReLU(0.2) [-> PixelNorm]."""
    layers = [EqualConv2d(in_channels, out_channels, kernel_size, padding,
                          equalized_lr=equalized_lr), nn.LeakyReLU(LRELU_SLOPE)]
    if pixel_norm:
        layers.append(PixelNorm())
    return nn.Sequential(*layers)


def _check_resolution(name: str, resolution: int, max_resolution: int):
    if resolution not in RESOLUTIONS or resolution > max_resolution:
        raise ValueError(f"{name}: resolution {resolution} must be one of "
                         f"{[r for r in RESOLUTIONS if r <= max_resolution]}")


def _check_input(name: str, x: torch.Tensor, channels: int, resolution: int, alpha: float):
    if x.ndim != 4 or x.shape[1] != channels or x.shape[2:] != (resolution, resolution):
        raise ValueError(f"{name}: input must be (N, {channels}, {resolution}, {resolution}) "
                         f"at stage {resolution}, got {tuple(x.shape)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"{name}: alpha={alpha} must be in [0, 1]")


def _lerp(old: torch.Tensor, new: torch.Tensor, alpha: float) -> torch.Tensor:
    # alpha = 1 returns `new` bit for bit (lerp would round old + (new - old)).
    # Under autocast the two paths can differ in dtype (a bf16 conv beside a
    # float32 resampling); lerp wants one.
    if alpha >= 1.0:
        return new
    dtype = torch.promote_types(old.dtype, new.dtype)
    return torch.lerp(old.to(dtype), new.to(dtype), float(alpha))


# ---------------------------------------------------------------------------
# Encoder, decoder

class Encoder(nn.Module):
    """Table 1 encoder with per-stage fromRGB layers.

    forward(x (N, in_channels, r, r), r, alpha) -> (N, 128, 1, 1) bottleneck.
    ``pixel_norm`` is on in the generator and off in the discriminator.
    """

    def __init__(self, in_channels: int, max_resolution: int = 256, pixel_norm: bool = True,
                 equalized_lr: bool = False):
        super().__init__()
        _check_resolution("Encoder max_resolution", max_resolution, 256)
        self.in_channels = in_channels
        self.max_resolution = max_resolution
        self.resolutions = [r for r in RESOLUTIONS if r <= max_resolution]
        self.from_rgb = nn.ModuleDict()
        self.blocks = nn.ModuleDict()
        for r in self.resolutions:
            table = _ENCODER_CONVS.get(r, [(_WIDTH, _WIDTH)] * (1 if r == 4 else 2))
            convs = [(in_channels if i is None else i, o) for i, o in table]
            image_wide = table[0][0] is None
            # No pixel norm on an image-wide layer: over 1 channel it is the sign.
            self.from_rgb[str(r)] = conv_layer(in_channels, convs[0][0], 1, 0,
                                               pixel_norm and not image_wide, equalized_lr)
            layers = [conv_layer(i, o, 3, 1, pixel_norm, equalized_lr) for i, o in convs]
            if r == 4:
                layers.append(conv_layer(_WIDTH, _WIDTH, 4, 0, pixel_norm, equalized_lr))
            else:
                layers.append(nn.AvgPool2d(2))
            self.blocks[str(r)] = nn.Sequential(*layers)

    def forward(self, x, resolution: int, alpha: float = 1.0):
        _check_resolution("Encoder", resolution, self.max_resolution)
        _check_input("Encoder", x, self.in_channels, resolution, alpha)
        h = self.blocks[str(resolution)](self.from_rgb[str(resolution)](x))
        if resolution > 4 and alpha < 1.0:
            half = resolution // 2
            h = _lerp(self.from_rgb[str(half)](F.avg_pool2d(x, 2)), h, alpha)
        r = resolution // 2
        while r >= 4:
            h = self.blocks[str(r)](h)
            r //= 2
        return h


class Decoder(nn.Module):
    """Table 2 decoder with per-stage linear toRGB layers.

    forward(z (N, 128, 1, 1), r, alpha) -> (N, out_channels, r, r).
    """

    def __init__(self, out_channels: int, max_resolution: int = 256, equalized_lr: bool = False):
        super().__init__()
        _check_resolution("Decoder max_resolution", max_resolution, 256)
        self.out_channels = out_channels
        self.max_resolution = max_resolution
        self.resolutions = [r for r in RESOLUTIONS if r <= max_resolution]
        self.blocks = nn.ModuleDict()
        self.to_rgb = nn.ModuleDict()
        for r in self.resolutions:
            table = _DECODER_CONVS.get(r, [(_WIDTH, _WIDTH)] * 2)
            convs = [(i, out_channels if o is None else o) for i, o in table]
            norms = [o is not None for _, o in table]
            if r == 4:
                # 4x4 conv with padding 3 maps the 1x1 bottleneck to 4x4 (a dense layer).
                layers = [conv_layer(_WIDTH, _WIDTH, 4, 3, True, equalized_lr),
                          conv_layer(_WIDTH, _WIDTH, 3, 1, True, equalized_lr)]
            else:
                layers = [nn.Upsample(scale_factor=2, mode="nearest")]
                layers += [conv_layer(i, o, 3, 1, n, equalized_lr)
                           for (i, o), n in zip(convs, norms)]
            self.blocks[str(r)] = nn.Sequential(*layers)
            self.to_rgb[str(r)] = EqualConv2d(convs[-1][1], out_channels, 1, 0, gain=1.0,
                                              equalized_lr=equalized_lr)

    def forward(self, z, resolution: int, alpha: float = 1.0):
        _check_resolution("Decoder", resolution, self.max_resolution)
        y = z
        for r in self.resolutions:
            if r == resolution:
                break
            y = self.blocks[str(r)](y)
        out = self.to_rgb[str(resolution)](self.blocks[str(resolution)](y))
        if resolution > 4 and alpha < 1.0:
            old = F.interpolate(self.to_rgb[str(resolution // 2)](y), scale_factor=2, mode="nearest")
            out = _lerp(old, out, alpha)
        return out


# ---------------------------------------------------------------------------
# Networks

class Generator(nn.Module):
    """Progressive encoder-decoder generator (Tables 1-2, pixel norm).

    forward(x (N, in_channels, r, r), r, alpha) -> (N, out_channels, r, r);
    alpha in [0, 1] blends the stage-r layers in at both ends (no effect at r = 4).

    Residual mode (our addition, not in the paper), when ``skip`` lists
    (output channel, input channel) pairs: each listed output channel is the
    input channel plus the network's correction, the toRGB layers start at
    zero (an untrained network returns the coarse image), and with
    ``support`` (an input channel, the depth) the output is background
    wherever that input is background, so the network corrects the coarse
    surface and never paints surface outside it. Through the 4x4 -> 1x1
    bottleneck the paper's network must otherwise re-synthesize the whole face
    from 128 numbers. During a fade the blended correction is added to the
    stage-r input.
    """

    def __init__(self, in_channels: int, out_channels: int, max_resolution: int = 256,
                 equalized_lr: bool = False, skip=(), support: int | None = None):
        super().__init__()
        self.encoder = Encoder(in_channels, max_resolution, pixel_norm=True,
                               equalized_lr=equalized_lr)
        self.decoder = Decoder(out_channels, max_resolution, equalized_lr=equalized_lr)
        routing = torch.zeros(out_channels, in_channels)
        for out_c, in_c in skip:
            routing[out_c, in_c] = 1.0
        self.skip, self.support = tuple(skip), support
        self.register_buffer("routing", routing, persistent=False)
        if self.skip:
            for layer in self.decoder.to_rgb.values():
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, x, stage_resolution: int, alpha: float = 1.0):
        y = self.decoder(self.encoder(x, stage_resolution, alpha), stage_resolution, alpha)
        if self.skip:
            y = y + torch.einsum("oc,nchw->nohw", self.routing.to(y.dtype), x.to(y.dtype))
        if self.support is not None:
            inside = x[:, self.support:self.support + 1] >= FOREGROUND_ABOVE
            y = torch.where(inside, y, torch.full_like(y, BACKGROUND))
        return y


class Discriminator(nn.Module):
    """Table 1 encoder (no pixel norm) plus a fully connected score.

    Conditional use: ``x`` is the channel concatenation of condition and
    (real or generated) image, ``in_channels`` their total.
    forward(x (N, in_channels, r, r), r, alpha) -> scores (N,).
    """

    def __init__(self, in_channels: int, max_resolution: int = 256, equalized_lr: bool = False):
        super().__init__()
        self.encoder = Encoder(in_channels, max_resolution, pixel_norm=False,
                               equalized_lr=equalized_lr)
        self.fc = EqualLinear(_WIDTH, 1, gain=1.0, equalized_lr=equalized_lr)

    def forward(self, x, stage_resolution: int, alpha: float = 1.0):
        return self.fc(self.encoder(x, stage_resolution, alpha).flatten(1)).squeeze(1)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameter values (weights and biases)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def parameter_counts(generator: Generator, discriminator: Discriminator) -> dict[str, int]:
    """Parameters of the full-resolution networks as Tables 1-2 count them:
    the conv blocks of every resolution (and D's fully connected layer),
    weights and biases, EXCLUDING the per-stage 1x1 fromRGB/toRGB layers.
    Keys: "encoder", "decoder", "discriminator"."""
    return {"encoder": count_parameters(generator.encoder.blocks),
            "decoder": count_parameters(generator.decoder.blocks),
            "discriminator": count_parameters(discriminator.encoder.blocks)
            + count_parameters(discriminator.fc)}


def build_networks(settings, cfg, resolution: int) -> tuple:
    """(generator, discriminator) of ``settings.model`` (a
    ``dce.gan.train.TrainSettings``) for the channels of ``cfg`` and images up
    to ``resolution``."""
    if settings.model == "pix2pix":
        downs = int(round(math.log2(resolution)))
        if 2 ** downs != resolution or downs < 5:
            raise ValueError(f"pix2pix needs a power-of-two resolution >= 32, got {resolution}")
        G = UnetGenerator(len(cfg.generator_in), len(cfg.generator_out), num_downs=downs)
        D = PatchDiscriminator(cfg.discriminator_channels)
        init_weights(G)
        init_weights(D)
        return G, D
    residual = settings.uses_residual()
    skip = [(o, cfg.generator_in.index(name)) for o, name in enumerate(cfg.generator_out)
            if name in cfg.generator_in] if residual else []
    return (Generator(len(cfg.generator_in), len(cfg.generator_out), resolution,
                      settings.equalized_lr, skip,
                      cfg.generator_in.index("depth") if residual else None),
            Discriminator(cfg.discriminator_channels, resolution, settings.equalized_lr))


def generate(G, model: str, x, resolution: int, alpha: float):
    """The generator's output for (N, C, r, r) inputs, either model."""
    return G(x) if model == "pix2pix" else G(x, resolution, alpha)
