"""The seven channel configurations of the paper's ablation (section 5,
Table 3), written ``"Generator | Discriminator | Pixel loss"``: the coarse
channels the generator reads, those it writes, those the conditional
discriminator sees and those the pixel loss compares.

See docs/progressive-gan.md (channel names, the rules, kappa).
"""
from __future__ import annotations

from dataclasses import dataclass

GEOMETRY = ("depth", "curvature", "elevation")
COLOUR = ("r", "g", "b")
KAPPA_PER_CHANNEL = 1e-5
DEFAULT_CONFIG = "DCE|D|DCE"
_GROUPS = {"D": ("depth",), "DCE": GEOMETRY, "DCE+RGB": GEOMETRY + COLOUR}


@dataclass(frozen=True)
class ChannelConfig:
    """One (Generator | Discriminator | Pixel loss) configuration; every
    field is a tuple of channel names."""
    name: str
    generator_in: tuple
    discriminator: tuple
    pixel_loss: tuple
    generator_out: tuple

    @property
    def condition_idx(self) -> list:
        """Indices into ``generator_in`` of the discriminator's condition
        channels (the coarse image restricted to the discriminator set)."""
        return [self.generator_in.index(c) for c in self.discriminator]

    @property
    def discriminator_idx(self) -> list:
        """Indices into ``generator_out`` of the channels the discriminator
        judges."""
        return [self.generator_out.index(c) for c in self.discriminator]

    @property
    def pixel_idx(self) -> list:
        """Indices into ``generator_out`` of the pixel-loss channels."""
        return [self.generator_out.index(c) for c in self.pixel_loss]

    @property
    def discriminator_channels(self) -> int:
        """Input channels of the conditional discriminator: condition + image."""
        return 2 * len(self.discriminator)


def _make(name: str) -> ChannelConfig:
    g, d, p = name.split("|")
    needed = set(_GROUPS[d]) | set(_GROUPS[p])
    return ChannelConfig(name=name, generator_in=_GROUPS[g], discriminator=_GROUPS[d],
                         pixel_loss=_GROUPS[p],
                         generator_out=tuple(c for c in GEOMETRY if c in needed))


CONFIGS = {name: _make(name) for name in (
    "D|D|D", "DCE|D|D", "DCE|DCE|DCE", "DCE|D|DCE",
    "DCE+RGB|D|D", "DCE+RGB|DCE|DCE", "DCE+RGB|D|DCE")}


def get_config(name: str) -> ChannelConfig:
    """The configuration called ``name`` (spaces around ``|`` are ignored,
    so ``"DCE | D | DCE"`` works); ValueError listing the valid names."""
    key = "|".join(part.strip() for part in str(name).split("|"))
    if key not in CONFIGS:
        raise ValueError(f"unknown channel configuration {name!r}; valid names: "
                         + ", ".join(repr(n) for n in CONFIGS))
    return CONFIGS[key]


def channel_indices(names, available, source: str = "the pair file") -> list:
    """Indices into ``available`` (a pair file's ``channels`` list) of the
    channels ``names``, in the order of ``names``. ValueError naming
    ``source`` and the missing channels, e.g. an RGB configuration on a file
    rendered without colour."""
    available = list(available)
    missing = [c for c in names if c not in available]
    if missing:
        hint = (" (RGB configurations need a file built with the photo's colour)"
                if set(missing) & set(COLOUR) else "")
        raise ValueError(f"{source}: has channels {available}, lacks {missing} needed by the "
                         f"configuration{hint}")
    return [available.index(c) for c in names]


def kappa(config: ChannelConfig) -> float:
    """Adversarial weight of the generator loss, ``C * 1e-5`` with C the
    number of pixel-loss channels (paper section 4.3)."""
    return len(config.pixel_loss) * KAPPA_PER_CHANNEL
