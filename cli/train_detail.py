"""dce-train-detail: train the detail stage (our addition) on top of a
trained progressive network.

The progressive network (dce-train, e.g. the cpu preset's 32 px model) keeps
the face's shape; the detail stage, a fully convolutional network after
pix2pixHD's local enhancer, learns the creases, folds and lid lines finer
than --highpass-mm from random full-resolution crops. Its checkpoint
(OUT/last.pt) holds the global network too: dce-eval and dce-refine take it
in place of the global checkpoint. Checkpoints are written atomically every
--checkpoint-every iterations and on Ctrl-C; --resume continues exactly.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from dce.cli.options import HelpFormatter, integer, number
    from dce.gan.detail import DetailSettings
    from dce.gan.shading import FITS
    from dce.gan.train import MAX_SEED

    d = DetailSettings("", "", "")
    p = argparse.ArgumentParser(prog="dce-train-detail", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("data", type=Path, help="DCE pair file from dce-build (full resolution)")
    p.add_argument("global_checkpoint", type=Path,
                   help="the progressive network's checkpoint from dce-train (e.g. run/last.pt)")
    p.add_argument("-o", "--out", type=Path, default=Path("dce_detail"),
                   help="run folder")
    p.add_argument("--iterations", type=integer(0), default=d.iterations,
                   help="training iterations")
    p.add_argument("--batch-size", type=integer(1), default=d.batch_size,
                   help="crops per iteration")
    p.add_argument("--crop", type=integer(16), default=d.crop,
                   help="crop side in pixels of the file's images, even, >= 16")
    p.add_argument("--width", type=integer(1), default=d.width,
                   help="channels of the full-resolution layers")
    p.add_argument("--blocks", type=integer(0), default=d.blocks,
                   help="dilated residual blocks at half resolution")
    p.add_argument("--lr", type=number(0.0, low_open=True, high=1.0), default=d.lr,
                   help="Adam step")
    p.add_argument("--lr-decay", type=number(0.0, high=1.0), default=d.lr_decay,
                   help="share of the iterations, at the end, over which the Adam step falls "
                        "linearly to 0 (0 = constant)")
    p.add_argument("--beta1", type=number(0.0, high=1.0, high_open=True), default=d.beta1,
                   help="Adam's first-moment decay (0.5, the GAN habit, made one run in "
                        "four learn half as fast)")
    p.add_argument("--highpass-mm", type=number(0.0, low_open=True), default=d.highpass_mm,
                   help="the stage learns the ground truth's difference to the global output "
                        "finer than this Gaussian sigma, mm")
    p.add_argument("--denoise-mm", type=number(0.0), default=d.denoise_mm,
                   help="drop the ground truth's detail finer than this Gaussian sigma, mm "
                        "(pores, sensor noise: nothing predicts them); 0 = keep all")
    p.add_argument("--pixel-loss", choices=["l1", "l2"], default=d.pixel_loss,
                   help="penalty of the detail's error and of its gradient's: l2 learns the "
                        "mean of an uncertain crease (a softened crease where it belongs), l1 "
                        "its median (often none)")
    p.add_argument("--gradient-weight", type=number(0.0), default=d.gradient_weight,
                   help="weight of the penalty (--pixel-loss) on the detail's gradient, the "
                        "error of its normals")
    p.add_argument("--adversarial-weight", type=number(0.0), default=d.adversarial_weight,
                   help="weight of the depth-only patch critic (WGAN-GP); 0 = off")
    p.add_argument("--no-shading", action="store_true",
                   help="with a colour configuration, do not feed the stage the photo's shading "
                        "left unexplained by the coarse surface (dce.gan.shading)")
    p.add_argument("--shading-fit", choices=list(FITS), default=d.shading_fit,
                   help="how the photo's luminance is fitted on the coarse surface before the "
                        "residual is taken: lambert (linear in the unit normal), or quadratic "
                        "(in the depth's slopes; the fit of stages trained before lambert)")
    p.add_argument("--no-flip", action="store_true",
                   help="no random left-right mirroring of the crops")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda ...")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=d.seed,
                   help="random seed, 0 .. 2^63 - 1")
    p.add_argument("--checkpoint-every", type=integer(1), default=d.checkpoint_every,
                   help="iterations between checkpoints")
    p.add_argument("--log-every", type=integer(1), default=d.log_every,
                   help="iterations between log lines")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (refused if the settings differ)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    if args.crop % 2:
        p.error(f"argument --crop: {args.crop} must be even")
    if args.denoise_mm >= args.highpass_mm:
        p.error(f"argument --denoise-mm: {args.denoise_mm:g} must be below --highpass-mm "
                f"{args.highpass_mm:g} (the band between them is what the stage learns)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from dce.gan.checkpoint import CheckpointError
    from dce.gan.detail import DetailSettings, DetailTrainer
    from dce.gan.h5format import PairFileError

    settings = DetailSettings(
        data=str(args.data), out=str(args.out), global_checkpoint=str(args.global_checkpoint),
        iterations=args.iterations, batch_size=args.batch_size, crop=args.crop,
        width=args.width, blocks=args.blocks, lr=args.lr, lr_decay=args.lr_decay,
        beta1=args.beta1, highpass_mm=args.highpass_mm,
        denoise_mm=args.denoise_mm, pixel_loss=args.pixel_loss,
        gradient_weight=args.gradient_weight, adversarial_weight=args.adversarial_weight,
        flip=not args.no_flip, shading=not args.no_shading,
        shading_fit=args.shading_fit, seed=args.seed, device=args.device,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every)
    try:
        trainer = DetailTrainer(settings)
        if args.resume:
            trainer.resume(args.out / "last.pt")
            print(f"resumed at iteration {trainer.iteration}")
        elif (args.out / "last.pt").exists():
            print(f"dce-train-detail: {args.out / 'last.pt'} exists; pass --resume to continue "
                  "it or choose another --out", file=sys.stderr)
            return 2
        print(f"detail stage on {trainer.device}: {settings.iterations} iterations of "
              f"{settings.batch_size} crops of {settings.crop} px, over the global network "
              f"{args.global_checkpoint}")
        trainer.train()
    except (PairFileError, CheckpointError, ValueError, RuntimeError, OSError) as error:
        # RuntimeError includes TrainingDiverged (the last good checkpoint is kept).
        print(f"dce-train-detail: error: {error}", file=sys.stderr)
        return 2
    return 130 if trainer.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
