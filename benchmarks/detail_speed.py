"""Speed of the detail stage (dce-train-detail) on this machine.

* training: crops per second of one optimizer step of the LocalEnhancer
  (forward, the pixel and gradient losses, backward, Adam), with and
  without the adversarial patch critic (its WGAN-GP step included), in
  channels-last as dce-train-detail trains, and once in torch's default
  memory layout for comparison;
* inference: milliseconds per 256 x 256 image of the enhancer's forward
  pass, batch 1 and batch 8, in torch's default memory layout and in
  channels-last (what ``Refiner`` uses on a CPU), mirror-averaged
  (``Refiner(mirror_average=True)``, dce-eval --mirror-average), and with colour
  (``--channels 6``) of the photo's shading residual that the stage reads
  too (dce.gan.shading);
* scoring: milliseconds per 256 x 256 image of dce-eval's normal error and
  detail correlation (dce.gan.metrics), on a batch of 8.

    python benchmarks/detail_speed.py [--crop 96] [--batch 8] [--width 32] [--blocks 4]
        [--channels 3] [--repeats 5] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed  # noqa: E402

from dce.gan.detail import LocalEnhancer, MirrorAveraged, PatchCritic, gradient_term, pixel_term  # noqa: E402
from dce.gan.losses import gradient_penalty  # noqa: E402
from dce.gan.metrics import detail_corr, normal_error_deg  # noqa: E402
from dce.gan.shading import FITS, shading_residual  # noqa: E402


def input_channels(args) -> int:
    """The coarse channels, the global correction and, with colour, the shading."""
    return args.channels + 1 + (1 if args.channels == 6 else 0)


def training_step(args, device, adversarial: bool, layout=torch.channels_last):
    """One optimizer step as dce-train-detail takes it (the enhancer in
    channels-last, ``layout``)."""
    net = LocalEnhancer(input_channels(args), args.width, args.blocks).to(
        device, memory_format=layout)
    torch.nn.init.normal_(net.out.weight, std=0.01)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    critic = PatchCritic().to(device) if adversarial else None
    opt_d = torch.optim.Adam(critic.parameters(), 1e-3) if adversarial else None
    shape = (args.batch, 1, args.crop, args.crop)
    x = torch.randn(args.batch, input_channels(args), args.crop, args.crop,
                    device=device).contiguous(memory_format=layout)
    target = torch.randn(shape, device=device) * 0.2
    valid = torch.rand(shape, device=device) > 0.2
    cond = torch.rand(shape, device=device)

    def step():
        detail = net(x)
        loss = pixel_term(detail, target, valid, "l2") + gradient_term(detail, target, valid, "l2")
        if critic is not None:
            fake = cond + detail / 50.0
            real = cond + target / 50.0

            def d(c, image):
                return critic(torch.cat([c, image], dim=1))

            d_loss = (d(cond, fake.detach()).mean() - d(cond, real).mean()
                      + gradient_penalty(d, real, fake.detach(), cond))
            opt_d.zero_grad()
            d_loss.backward()
            opt_d.step()
            critic.requires_grad_(False)
            loss = loss - 0.01 * d(cond, fake).mean()
            critic.requires_grad_(True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--crop", type=int, default=96, help="crop side (default: 96)")
    p.add_argument("--batch", type=int, default=8, help="crops per step (default: 8)")
    p.add_argument("--width", type=int, default=32, help="enhancer width (default: 32)")
    p.add_argument("--blocks", type=int, default=4, help="residual blocks (default: 4)")
    p.add_argument("--channels", type=int, default=3,
                   help="coarse channels: 3 for DCE, 6 for DCE+RGB (default: 3)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats (default: 5)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"{device}, {torch.get_num_threads()} threads; enhancer width {args.width}, "
          f"{args.blocks} blocks, {input_channels(args)} input channels")
    print("| measure | value |\n|---|---|")
    for adversarial, layout in ((False, torch.channels_last), (True, torch.channels_last),
                                (False, torch.contiguous_format)):
        t = timed(training_step(args, device, adversarial, layout), args.repeats)
        label = "with the patch critic" if adversarial else "L2 + gradient losses"
        if layout == torch.contiguous_format:
            label += ", default memory layout (before)"
        print(f"| training, {args.batch} crops of {args.crop} px, {label} | "
              f"{args.batch / t.min():.1f} crops/s (median {args.batch / float(sorted(t)[len(t) // 2]):.1f}) |")
    net = LocalEnhancer(input_channels(args), args.width, args.blocks).to(device).eval()
    for layout, name in ((torch.contiguous_format, ""), (torch.channels_last, ", channels last")):
        net = net.to(memory_format=layout)
        for batch in (1, 8):
            x = torch.randn(batch, input_channels(args), 256, 256,
                            device=device).contiguous(memory_format=layout)

            def infer():
                with torch.no_grad():
                    net(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            t = timed(infer, args.repeats)
            print(f"| inference, 256 x 256, batch {batch}{name} | "
                  f"{t.min() / batch * 1e3:.2f} ms per image |")
    averaged = MirrorAveraged(net)  # as Refiner(mirror_average=True) runs it on a CPU

    def infer_averaged():
        with torch.no_grad():
            averaged(x[:1])
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    t = timed(infer_averaged, args.repeats)
    print(f"| inference, 256 x 256, batch 1, channels last, mirror-averaged | "
          f"{t.min() * 1e3:.2f} ms per image |")
    if args.channels == 6:
        coarse = torch.rand(1, 6, 256, 256, device=device) - 0.5  # all surface

        for fit in FITS:
            def shading():
                shading_residual(coarse, 0, (3, 4, 5), fit)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
            t = timed(shading, args.repeats)
            print(f"| shading residual (colour, {fit} fit), 256 x 256 | "
                  f"{t.min() * 1e3:.2f} ms per image |")
    scoring = scoring_step(device)
    t = timed(scoring, args.repeats)
    print(f"| scoring (normal error, detail correlation), 256 x 256 | "
          f"{t.min() / 8 * 1e3:.2f} ms per image |")


def scoring_step(device):
    """dce-eval's per-image figures on 8 smooth random faces of 256 px."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 256), torch.linspace(-1, 1, 256), indexing="ij")
    face = ((xx ** 2 + yy ** 2) < 0.8).expand(8, -1, -1).to(device)
    base = (0.5 - 0.3 * (xx ** 2 + yy ** 2)).to(device)
    coarse = base + 0.01 * torch.randn(8, 256, 256, device=device)
    target = base + 0.01 * torch.randn(8, 256, 256, device=device)
    refined = (coarse + target) / 2
    mm = torch.full((8,), 50.0, device=device)
    pixel_mm = torch.full((8,), 0.87, device=device)

    def score():
        normal_error_deg(refined, target, mm, pixel_mm, face)
        detail_corr(refined, coarse, target, face, pixel_mm)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return score


if __name__ == "__main__":
    main()
