"""Does the DCE-only detail stage gain from knowing the whole face?

``benchmarks/detail_ceiling.py --redraw landmarks`` shows that what a coarse
image can tell of the missing band is mostly mid-scale shape that depends on
the whole face (cheeks, nose, folds), while the stage sees 96 px crops. Here
the stage's half-resolution features are modulated (FiLM: x (1 + gamma) +
beta, starting at the identity) by a code of the whole face, in three forms:

- ``image``: an encoder of the whole coarse depth and global correction,
  pooled to 64 px (four stride-2 convolutions, 64 numbers);
- ``coefficients``: the coarse fit's own identity and expression
  coefficients (from the world's scan records, which the pair file's
  provenance names), the coarse camera's rotation and a flag for a mirrored
  crop, through two layers (64 numbers);
- ``view``: the coarse camera's rotation alone (mirrored with a mirrored
  crop), which says from where the face is seen: the missing band in
  template coordinates regressed on it scores 0.30, the plain mean band
  0.25 (``detail_registration.py``), through the same two layers.

Each is trained as ``dce-train-detail`` trains the stage (the same crops,
losses, step schedule and seed) over the same global network, beside the
plain stage trained the same way, and scored on the held-out split at the
file's resolution with dce-eval's metrics (the plain row equals
``dce-eval`` of a ``dce-train-detail`` run with the same settings).

    python benchmarks/detail_conditioning.py --demo DEMO [--iterations 600] [--seeds 0 1]

``DEMO`` is a finished ``dce-demo --out DEMO`` (its ``pairs.h5``, ``run/last.pt``
and ``world``). About 6 minutes per variant on 2 cores. Writes
``benchmarks/results/detail_conditioning.md``.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, demo_global_run, demo_stage_parser  # noqa: E402

from dce.gan.checkpoint import seed_everything  # noqa: E402
from dce.gan.data import PairDataset  # noqa: E402
from dce.gan.detail import (  # noqa: E402
    DetailSettings,
    DetailTrainer,
    LocalEnhancer,
    crop_batch,
    enhancer_input,
    gradient_term,
    learning_rate,
    pixel_sizes,
    pixel_term,
    prepare_arrays,
)
from dce.gan.evaluate import image_mae  # noqa: E402
from dce.gan.h5format import FOREGROUND_ABOVE  # noqa: E402
from dce.gan.metrics import detail_corr, normal_error_deg  # noqa: E402
from dce.gan.networks import LRELU_SLOPE  # noqa: E402

CODE = 64
CONTEXT_PX = 64


def act(t):
    return F.leaky_relu(t, LRELU_SLOPE)


class ConditionedEnhancer(LocalEnhancer):
    """LocalEnhancer whose half-resolution features are scaled and shifted
    by a code of the whole face: forward(x (N, C, H, W), context) -> (N, 1,
    H, W); ``encoder`` maps the context to (N, CODE)."""

    def __init__(self, in_channels: int, encoder: nn.Module, width: int, blocks: int):
        super().__init__(in_channels, width, blocks)
        self.encoder = encoder
        self.film = nn.Linear(CODE, 4 * width)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x, context):
        front = act(self.front(x))
        gamma, beta = self.film(self.encoder(context))[..., None, None].chunk(2, dim=1)
        h = self.blocks(act(self.down(front)) * (1 + gamma) + beta)
        h = act(self.up(F.interpolate(h, scale_factor=2, mode="nearest")))
        return self.out(act(self.tail(torch.cat([h, front], dim=1))))


def image_encoder() -> nn.Module:
    """(N, 2, 64, 64) -> (N, CODE)."""
    layers, c = [], 2
    for _ in range(4):
        layers += [nn.Conv2d(c, 32, 3, stride=2, padding=1), nn.LeakyReLU(LRELU_SLOPE)]
        c = 32
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(32 * 4 * 4, CODE),
                         nn.LeakyReLU(LRELU_SLOPE))


def vector_encoder(n: int) -> nn.Module:
    """(N, n) -> (N, CODE)."""
    return nn.Sequential(nn.Linear(n, CODE), nn.LeakyReLU(LRELU_SLOPE),
                         nn.Linear(CODE, CODE), nn.LeakyReLU(LRELU_SLOPE))


def whole_image(inputs: torch.Tensor, depth: int) -> torch.Tensor:
    """(N, 2, 64, 64): the coarse depth and the global correction (the
    enhancer input after the coarse channels), average-pooled."""
    correction = inputs.shape[1] - 1
    return F.adaptive_avg_pool2d(inputs[:, [depth, correction]], CONTEXT_PX)


def fit_vectors(path: Path, split: str) -> torch.Tensor:
    """(N, K + E + 9 + 1) per sample of ``split`` in file order: the coarse
    fit's identity and expression coefficients (the world's scan record
    beside the sample's target scan), its camera's rotation, and 0 (the
    mirrored-crop flag)."""
    data = PairDataset(path, split, ("depth",), ("depth",), augment=False)
    with h5py.File(path, "r") as f:
        provenance = [json.loads(f["provenance"].asstr()[i]) for i in data.indices]
        cameras = f["coarse_camera"][()][data.indices]
    rows = []
    for p, camera in zip(provenance, cameras):
        record = Path(p["target"]).parent / (Path(p["coarse"]).stem + ".json")
        fit = json.loads(record.read_text())["fit"]
        rows.append(np.concatenate([fit["identity"], fit["expression"], camera[:3].ravel(),
                                    [0.0]]))
    return torch.tensor(np.array(rows), dtype=torch.float32)


def view_vectors(path: Path, split: str) -> torch.Tensor:
    """(N, 9) per sample of ``split`` in file order: the coarse camera's
    rotation, row by row."""
    data = PairDataset(path, split, ("depth",), ("depth",), augment=False)
    with h5py.File(path, "r") as f:
        cameras = f["coarse_camera"][()][data.indices]
    return torch.tensor(cameras[:, :3].reshape(len(cameras), 9), dtype=torch.float32)


# A mirrored image's camera is M R M with M = diag(-1, 1, 1): the entries
# with one x index change sign.
MIRRORED_ROTATION = torch.tensor([1.0, -1, -1, -1, 1, 1, -1, 1, 1])


def context_of(variant: str, inputs, vectors, flipped):
    """The code's input for a batch: None (plain), the whole images
    (mirrored like their crops), the fit vectors with the mirror flag, or
    the camera rotations mirrored like their crops."""
    if variant == "image":
        return torch.stack([t.flip(-1) if f else t for t, f in zip(inputs, flipped)])
    if variant == "coefficients":
        v = vectors.clone()
        v[:, -1] = flipped.float()
        return v
    if variant == "view":
        return torch.where(flipped[:, None], vectors * MIRRORED_ROTATION, vectors)
    return None


def context_vectors(variant: str, path: Path, split: str):
    """The per-sample vectors a variant's code reads (None: none)."""
    return {"coefficients": fit_vectors, "view": view_vectors}.get(
        variant, lambda *a: None)(path, split)


def prepare(settings: DetailSettings) -> tuple:
    """(DetailTrainer, its training arrays): the global network run once over
    the training split, for every run with the same data, global network and
    target settings (the seed and the step do not enter)."""
    trainer = DetailTrainer(settings, log=lambda *a: None)
    return trainer, prepare_arrays(settings, trainer.refiner, trainer.device,
                                   log=lambda *a: None)


def train(variant: str, settings: DetailSettings, prepared: tuple, log) -> tuple:
    """(network, trainer) after ``settings.iterations`` steps as DetailTrainer
    takes them, over ``prepared`` (from :func:`prepare`)."""
    trainer, arrays = prepared
    depth = trainer.refiner.config.generator_in.index("depth")
    images = whole_image(arrays.inputs, depth)
    vectors = context_vectors(variant, Path(settings.data), "train")
    seed_everything(settings.seed)
    channels = arrays.inputs.shape[1]
    if variant == "plain":
        net = LocalEnhancer(channels, settings.width, settings.blocks)
    else:
        encoder = image_encoder() if variant == "image" else vector_encoder(vectors.shape[1])
        net = ConditionedEnhancer(channels, encoder, settings.width, settings.blocks)
    opt = torch.optim.Adam(net.parameters(), settings.lr, betas=(settings.beta1, 0.99))
    t0 = time.perf_counter()
    for it in range(settings.iterations):
        for group in opt.param_groups:
            group["lr"] = learning_rate(settings, it)
        b = crop_batch(arrays, settings, it)
        k = b["sample"]
        context = context_of(variant, images[k], None if vectors is None else vectors[k],
                             b["flipped"])
        detail = net(b["inputs"]) if context is None else net(b["inputs"], context)
        loss = (pixel_term(detail, b["detail"], b["valid"], settings.pixel_loss)
                + settings.gradient_weight
                * gradient_term(detail, b["detail"], b["valid"], settings.pixel_loss))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (it + 1) % 100 == 0:
            log(f"  {variant}: iteration {it + 1}/{settings.iterations}, loss {loss.item():.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    return net.eval(), trainer


def score(variant: str, net, trainer, path: Path) -> dict:
    """dce-eval's figures of the refined depth on the held-out split."""
    cfg = trainer.refiner.config
    depth = cfg.generator_in.index("depth")
    data = PairDataset(path, "test", cfg.generator_in, ("depth",), augment=False)
    vectors = context_vectors(variant, path, "test")
    pixels = torch.from_numpy(pixel_sizes(path, data.indices))
    parts = {"detail_corr": [], "normal_error_deg": [], "face_mae_mm": []}
    for start in range(0, len(data), 8):
        items = data.fetch(range(start, min(start + 8, len(data))))
        coarse = torch.stack([it["coarse"] for it in items])
        target = torch.stack([it["target"] for it in items])[:, 0]
        face = torch.stack([it["target_mask"] for it in items])[:, 0] > 0
        mm = torch.stack([it["target_scale"][0] for it in items]).abs()
        base = torch.from_numpy(trainer.refiner(coarse.numpy()))[:, :1]
        inputs = enhancer_input(coarse, base, depth)
        context = context_of(variant, whole_image(inputs, depth),
                             None if vectors is None else vectors[start:start + len(items)],
                             torch.zeros(len(items), dtype=torch.bool))
        with torch.no_grad():
            added = net(inputs) if context is None else net(inputs, context)
        refined = torch.where(base >= FOREGROUND_ABOVE, base + added / trainer.depth_mm_per_unit,
                              base)[:, 0]
        px = pixels[start:start + len(items)]
        parts["detail_corr"].append(detail_corr(refined, coarse[:, depth], target, face, px))
        parts["normal_error_deg"].append(normal_error_deg(refined, target, mm, px, face))
        parts["face_mae_mm"].append(image_mae(refined, target, face_only=True) * mm)
    out = {}
    for name, values in parts.items():
        v = torch.cat(values).double()
        v = v[torch.isfinite(v)]
        out[name] = (float(v.mean()), float(v.std()))
    return out


VARIANTS = ("plain", "image", "coefficients", "view")
LABELS = {"plain": "the stage as dce-train-detail trains it",
          "image": "+ a code of the whole coarse image",
          "coefficients": "+ a code of the coarse fit's coefficients and camera",
          "view": "+ a code of the coarse camera's rotation (the view)"}


def main():
    p = demo_stage_parser(__doc__)  # the demo's world too, for the coefficients
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                   help="which variants to train (default: all four)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="training seeds (crops and initial weights) of each variant; a "
                        "row each (default: 0)")
    p.add_argument("--results", type=Path,
                   default=ROOT / "benchmarks" / "results" / "detail_conditioning.md",
                   help="the results file (default: benchmarks/results/detail_conditioning.md)")
    args = p.parse_args()
    data, model = demo_global_run(args.demo, "detail_conditioning")
    rows = []
    base = DetailSettings(data=str(data), out=str(ROOT / "out" / "conditioning"),
                          global_checkpoint=str(model), iterations=args.iterations, device="cpu")
    prepared = prepare(base)
    for variant in args.variants:
        for seed in args.seeds:
            net, trainer = train(variant, replace(base, seed=seed), prepared, print)
            figures = score(variant, net, trainer, data)
            print(f"{variant}, seed {seed}: {figures}")
            rows.append(f"| {LABELS[variant]} | {seed} | "
                        + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in figures.values()) + " |")
    table = ("| detail stage, DCE only | seed | detail_corr | normal error (°) | face MAE (mm) |\n"
             "|---|---|---|---|---|\n" + "\n".join(rows))
    out = args.results
    named = "" if set(args.variants) == set(VARIANTS) else f" --variants {' '.join(args.variants)}"
    if out != p.get_default("results"):
        named += f" --results {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}"
    out.write_text("# The detail stage with a code of the whole face\n\n"
                   f"`python benchmarks/detail_conditioning.py --demo DEMO --iterations "
                   f"{args.iterations} --seeds {' '.join(map(str, args.seeds))}{named}`: the demo's "
                   f"global network, 240 held-out images at "
                   f"256 px, mean ± std over images (see the script's docstring).\n\n"
                   f"{table}\n")
    print(table)
    print(f"-> {out}")


if __name__ == "__main__":
    main()
