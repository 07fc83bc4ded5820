"""dce-train: train the progressive conditional GAN on a DCE pair file.

Reads the HDF5 file written by dce-build (only torch, h5py and numpy are
needed). The growing schedule comes from --preset: "paper" (10,000
iterations per resolution, 4 -> 256, as in the paper), "cpu" (a useful model
of the built-in world in minutes on 2 CPU cores, up to 32x32) or "tiny".
Checkpoints (weights, optimizers, scaler, RNGs, iteration and alpha) are
written atomically to OUT/last.pt every --checkpoint-every iterations, at
every stage change and on Ctrl-C; --resume continues exactly.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dce.cli.options import HelpFormatter, integer, number


def build_parser() -> argparse.ArgumentParser:
    from dce.gan.configs import CONFIGS
    from dce.gan.networks import RESOLUTIONS
    from dce.gan.train import MAX_SEED, MAX_WORKERS, PRESETS, TrainSettings

    # Every default is TrainSettings' own (the one home of the settings).
    d = {f.name: f.default for f in dataclasses.fields(TrainSettings)}
    p = argparse.ArgumentParser(prog="dce-train", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("data", type=Path, help="DCE pair file from dce-build")
    p.add_argument("-o", "--out", type=Path, default=Path("dce_run"),
                   help="run folder for checkpoints and logs")
    p.add_argument("--config", default=d["config"], choices=sorted(CONFIGS),
                   help="Generator|Discriminator|Pixel-loss channels; the "
                        "paper's choice")
    p.add_argument("--model", default=d["model"], choices=["progressive", "pix2pix"],
                   help="the paper's progressive encoder-decoder, or the pix2pix baseline "
                        "(U-Net + 70x70 PatchGAN, L1 weight 100, no growing: one stage at the "
                        "last resolution with the same iteration budget)")
    p.add_argument("--preset", default=d["preset"], choices=sorted(PRESETS),
                   help="growing schedule")
    p.add_argument("--iters-per-resolution", type=integer(1), default=None,
                   help="override the preset's iterations per resolution")
    p.add_argument("--max-resolution", type=int, default=None, choices=RESOLUTIONS,
                   help="override the preset's last resolution (4 ... 256)")
    p.add_argument("--batch-size", type=integer(1), default=d["batch_size"],
                   help="batch size, as in the paper")
    p.add_argument("--lr", type=number(0.0, low_open=True, high=1.0), default=None,
                   help="Adam learning rate; unless given, 1e-5 (the paper's), 5e-4 with "
                        "--preset cpu, 2e-4 for pix2pix")
    p.add_argument("--gp-lambda", type=number(0.0), default=d["gp_lambda"],
                   help="gradient-penalty weight")
    p.add_argument("--drift", type=number(0.0), default=d["drift"],
                   help="drift penalty on D(real)^2, Progressive GAN uses 0.001")
    p.add_argument("--crop-pad", type=integer(0), default=d["crop_pad"],
                   help="online random crop-and-pad shift in pixels; 0 = off")
    p.add_argument("--equalized-lr", action="store_true",
                   help="equalized learning rate (Progressive GAN) instead of plain init")
    p.add_argument("--residual", action=argparse.BooleanOptionalAction, default=None,
                   help="the generator learns a correction added to the coarse input "
                        "(our addition; default: on for --preset cpu, off for the paper preset)")
    p.add_argument("--masked-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="L1 pixel loss over the ground truth's surface only, so the scans' holes "
                        "(eyes, brows, hair) are not learned (our option; default: on for "
                        "--preset cpu, off for the paper preset, whose L1 covers the whole image)")
    p.add_argument("--device", default=d["device"],
                   help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--amp", default=d["amp"], choices=["auto", "bf16", "fp16", "off"],
                   help="mixed precision on CUDA; auto = bf16 where supported")
    p.add_argument("--workers", type=integer(0, MAX_WORKERS), default=d["workers"],
                   help=f"data-loader processes, 0 .. {MAX_WORKERS}")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=d["seed"],
                   help="random seed, 0 .. 2^63 - 1")
    p.add_argument("--checkpoint-every", type=integer(1), default=d["checkpoint_every"],
                   help="iterations between checkpoints")
    p.add_argument("--log-every", type=integer(1), default=d["log_every"],
                   help="iterations between log lines")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (refused if the settings differ); "
                        "OUT/log.jsonl is cut back to its iteration")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.h5format import PairFileError
    from dce.gan.train import Trainer, TrainSettings

    settings = TrainSettings(
        data=str(args.data), out=str(args.out), config=args.config, model=args.model,
        preset=args.preset,
        iters_per_resolution=args.iters_per_resolution, max_resolution=args.max_resolution,
        batch_size=args.batch_size, lr=args.lr, gp_lambda=args.gp_lambda, drift=args.drift,
        crop_pad=args.crop_pad, equalized_lr=args.equalized_lr, residual=args.residual,
        masked_loss=args.masked_loss,
        seed=args.seed,
        device=args.device, amp=args.amp, workers=args.workers,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every)
    try:
        trainer = Trainer(settings)
        if args.resume:
            trainer.resume(args.out / "last.pt")
            print(f"resumed at iteration {trainer.iteration}")
        elif (args.out / "last.pt").exists():
            print(f"dce-train: {args.out / 'last.pt'} exists; pass --resume to continue it or "
                  "choose another --out", file=sys.stderr)
            return 2
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            print(f"distributed: {trainer.world} process(es), backend {dist.get_backend()}, "
                  f"rank {trainer.rank}")
        print(f"training {settings.config} on {trainer.device} ({len(trainer.data)} samples, "
              f"{trainer.total} iterations: " + ", ".join(
                  f"{s.resolution}px" for s in trainer.schedule) + ")")
        trainer.train()
    except (PairFileError, CheckpointError, ValueError, RuntimeError, OSError) as error:
        # RuntimeError includes TrainingDiverged (the last good checkpoint is kept).
        print(f"dce-train: error: {error}", file=sys.stderr)
        return 2
    return 130 if trainer.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
