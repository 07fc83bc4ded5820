"""The pix2pix baseline (Isola et al. 2017; ``junyanz/pytorch-CycleGAN-and-pix2pix``
defaults): U-Net generator ``unet_256``, 70x70 PatchGAN discriminator,
vanilla GAN loss (BCE on logits), L1 weight 100, discriminator loss halved,
weights initialized N(0, 0.02).

Both networks take (N, C, H, W) images in [-1, 1]. The discriminator is
conditional: its input is ``torch.cat([condition, image], 1)``; which
channels form the condition and the image is the caller's choice (the
channel configuration's discriminator set).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

L1_WEIGHT = 100.0
INIT_STD = 0.02


class UnetBlock(nn.Module):
    """One level of the U-Net: down (LeakyReLU 0.2, Conv 4x4 stride 2, BN),
    the ``inner`` block, up (ReLU, ConvTranspose 4x4 stride 2, BN, optional
    Dropout 0.5), then skip concatenation with the level's input. The
    innermost level has no BN on the way down and no inner block; the
    outermost has no activation/BN on the way down, ends with Tanh and no
    skip."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None,
                 inner: nn.Module | None = None, outermost: bool = False,
                 innermost: bool = False, dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        # BatchNorm follows every conv with a norm, so those convs carry no bias.
        down = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=False)
        if outermost:
            up = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            layers = [down, inner, nn.ReLU(True), up, nn.Tanh()]
        elif innermost:
            up = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=False)
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True), up, nn.BatchNorm2d(outer_nc)]
        else:
            up = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=False)
            layers = [nn.LeakyReLU(0.2, True), down, nn.BatchNorm2d(inner_nc), inner,
                      nn.ReLU(True), up, nn.BatchNorm2d(outer_nc)]
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        y = self.model(x)
        return y if self.outermost else torch.cat([x, y], 1)


class UnetGenerator(nn.Module):
    """U-Net with ``num_downs`` stride-2 levels (8 for 256x256: a 1x1
    bottleneck; inputs must be divisible by ``2**num_downs``). Widths ngf,
    2ngf, 4ngf, then 8ngf; the ``num_downs - 5`` levels just outside the
    innermost use Dropout 0.5 (3 for ``unet_256``). Output in (-1, 1) (Tanh).
    """

    def __init__(self, in_channels: int, out_channels: int, num_downs: int = 8,
                 ngf: int = 64, dropout: bool = True):
        super().__init__()
        if num_downs < 5:
            raise ValueError(f"num_downs must be >= 5 (the U-Net's widths ngf..8ngf span 5 "
                             f"levels), got {num_downs}")
        self.num_downs = num_downs
        block = UnetBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(num_downs - 5):
            block = UnetBlock(ngf * 8, ngf * 8, inner=block, dropout=dropout)
        for mult in (4, 2, 1):
            block = UnetBlock(ngf * mult, ngf * mult * 2, inner=block)
        self.model = UnetBlock(out_channels, ngf, input_nc=in_channels, inner=block,
                               outermost=True)
        init_weights(self)

    def forward(self, x):
        step = 2 ** self.num_downs
        if x.shape[-2] % step or x.shape[-1] % step:
            raise ValueError(f"UnetGenerator with num_downs={self.num_downs} needs H and W "
                             f"divisible by {step}, got {tuple(x.shape[-2:])}")
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN (``n_layers=3``: 70x70 receptive field): C64 (no norm) -
    C128 - C256 (4x4 stride 2) - C512 (stride 1) - Conv 4x4 stride 1 to one
    logit per patch; LeakyReLU 0.2, BatchNorm, no sigmoid (the loss applies
    it). A 256x256 input gives a 30x30 logit map, 64x64 gives 6x6."""

    def __init__(self, in_channels: int, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2 ** n, 8)
            stride = 2 if n < n_layers else 1
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                       nn.BatchNorm2d(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, condition, image):
        return self.model(torch.cat([condition, image], 1))


def init_weights(module: nn.Module, std: float = INIT_STD) -> None:
    """pix2pix 'normal' init: conv weights N(0, std), BatchNorm scales
    N(1, std), all biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, std)
            nn.init.zeros_(m.bias)


def pix2pix_discriminator_loss(d_real, d_fake):
    """``0.5 * (BCE(d_real, 1) + BCE(d_fake, 0))`` on logit maps (mean over
    patches). Returns ``(loss, parts)`` with detached floats ``real``,
    ``fake``, ``loss``."""
    real = F.binary_cross_entropy_with_logits(d_real.float(), torch.ones_like(d_real.float()))
    fake = F.binary_cross_entropy_with_logits(d_fake.float(), torch.zeros_like(d_fake.float()))
    loss = 0.5 * (real + fake)
    return loss, {"loss": loss.item(), "real": real.item(), "fake": fake.item()}


def pix2pix_generator_loss(d_fake, fake, target, pixel_idx=None, l1_weight: float = L1_WEIGHT):
    """``BCE(d_fake, 1) + l1_weight * mean|fake - target|`` over the channels
    ``pixel_idx`` (all when None). Returns ``(loss, parts)`` with detached
    floats ``adversarial``, ``pixel`` (unweighted L1), ``loss``."""
    idx = slice(None) if pixel_idx is None else list(pixel_idx)
    adversarial = F.binary_cross_entropy_with_logits(d_fake.float(),
                                                     torch.ones_like(d_fake.float()))
    pixel = (fake[:, idx].float() - target[:, idx].float()).abs().mean()
    loss = adversarial + l1_weight * pixel
    return loss, {"loss": loss.item(), "adversarial": adversarial.item(), "pixel": pixel.item()}
