"""Training speed per resolution on this machine (CPU unless a GPU is seen).
On CUDA the step runs as dce-train runs it: channels-last, autocast (--amp,
default bf16), cuDNN benchmark; every timing ends with a synchronize.

For each progressive resolution: images/s of one full training iteration
(D step with gradient penalty + G step), its FLOPs counted by
torch.utils.flop_counter, and the fraction of the machine's measured
convolution throughput (a large 3x3 conv, forward + backward) it reaches.

    python benchmarks/train_throughput.py [--quick] [--max-resolution 64] [--batch 4]
        [--amp bf16|fp16|off]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed  # noqa: E402

from dce.gan.configs import get_config, kappa  # noqa: E402
from dce.gan.losses import discriminator_loss, generator_loss, gradient_penalty  # noqa: E402
from dce.gan.networks import Discriminator, Generator  # noqa: E402


def synchronized(fn, device):
    """``fn`` that waits for the GPU's queued work before returning."""
    if device.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize(device)
    return run


def conv_peak(device, repeats, amp):
    """FLOP/s of a large 3x3 convolution, forward and backward."""
    x = torch.randn(8 if device.type == "cpu" else 64, 128, 64, 64, device=device,
                    requires_grad=True)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(device)
    if device.type == "cuda":
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        conv = conv.to(memory_format=torch.channels_last)

    def run():
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            out = conv(x)
        out.float().sum().backward()

    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops() / np.median(timed(synchronized(run, device), repeats))


def make_step(G, D, cfg, r, batch, device, amp):
    x = torch.randn(batch, len(cfg.generator_in), r, r, device=device).clamp(-1, 1)
    y = torch.randn(batch, len(cfg.generator_out), r, r, device=device).clamp(-1, 1)
    opt_g = torch.optim.Adam(G.parameters(), 1e-5, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), 1e-5, betas=(0.0, 0.99))
    cond, d_idx, k = list(cfg.condition_idx), list(cfg.discriminator_idx), kappa(cfg)
    autocast = torch.autocast(device.type, dtype=amp, enabled=amp is not None)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)

    def critic(c, image):
        with autocast:
            return D(torch.cat([c, image], 1), r, 1.0).float()

    def descend(loss, optimizer):
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)

    def step():
        with autocast:
            fake = G(x, r, 1.0)
        real = y[:, d_idx]
        gp = gradient_penalty(critic, real, fake.detach()[:, d_idx].float(), x[:, cond])
        d_loss, _ = discriminator_loss(critic(x[:, cond], real),
                                       critic(x[:, cond], fake.detach()[:, d_idx]), gp)
        descend(d_loss, opt_d)
        g_loss, _ = generator_loss(critic(x[:, cond], fake[:, d_idx]), fake.float(), y,
                                   list(cfg.pixel_idx), k)
        descend(g_loss, opt_g)
        scaler.update()
    return synchronized(step, device)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--max-resolution", type=int, default=64)
    p.add_argument("--config", default="DCE|D|DCE")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"],
                   help="autocast dtype on CUDA (CPU always runs float32)")
    args = p.parse_args()
    repeats = 3 if args.quick else 10
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = (None if device.type == "cpu" or args.amp == "off"
           else {"bf16": torch.bfloat16, "fp16": torch.float16}[args.amp])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    cfg = get_config(args.config)
    peak = conv_peak(device, repeats, amp)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"{torch.get_num_threads()} CPU threads"
    print(f"device {name}, torch {torch.__version__}, precision {amp or torch.float32}; "
          f"3x3 conv peak {peak / 1e9:.1f} GFLOP/s; config {args.config}, batch {args.batch}\n")
    print(f"{'res':>5s} {'img/s':>9s} {'GFLOP/iter':>11s} {'GFLOP/s':>9s} {'of peak':>8s}")
    r = 4
    while r <= args.max_resolution:
        G = Generator(len(cfg.generator_in), len(cfg.generator_out), args.max_resolution).to(device)
        D = Discriminator(cfg.discriminator_channels, args.max_resolution).to(device)
        if device.type == "cuda":
            G, D = (m.to(memory_format=torch.channels_last) for m in (G, D))
        step = make_step(G, D, cfg, r, args.batch, device, amp)
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        seconds = float(np.median(timed(step, repeats)))
        rate = flops / seconds
        print(f"{r:5d} {args.batch / seconds:9.1f} {flops / 1e9:11.3f} {rate / 1e9:9.1f} "
              f"{100 * rate / peak:7.0f}%")
        r *= 2
    print("\nthe data loader's rate: benchmarks/loader_throughput.py")


if __name__ == "__main__":
    main()
