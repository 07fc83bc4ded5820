"""Progressive training of the encoder-decoder conditional GAN (paper
section 4 and 5.4), resumable exactly. One iteration is one WGAN-GP
discriminator step and one generator step (L1 + kappa x adversarial); a
non-finite loss or non-finite weights stop it with :class:`TrainingDiverged`.

See docs/progressive-gan.md (the stage table, exact resume, failure).
"""
from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from . import checkpoint as ckpt
from . import h5format
from .configs import get_config, kappa
from .data import PairDataset, downsample, downsample_mask, seed_worker, worker_error
from .h5format import PairFileError
from .losses import discriminator_loss, generator_loss, gradient_penalty
from .networks import Stage, build_networks, fade_reals, generate, stage_at
from .pix2pix import pix2pix_discriminator_loss, pix2pix_generator_loss
from .report import save_png
from .settings import (
    AMP_MODES,
    DEFAULT_BETAS,
    DEFAULT_LR,
    MAX_SEED,
    MAX_WORKERS,
    MODELS,
    PRESET_LR,
    PRESET_MASKED_LOSS,
    PRESET_RESIDUAL,
    PRESETS,
    TrainSettings,
    check_choice,
    check_flag,
    check_float,
    check_int,
    is_int,
    is_number,
)

__all__ = [
    # the settings (dce.gan.settings), re-exported
    "AMP_MODES", "DEFAULT_BETAS", "DEFAULT_LR", "MAX_SEED", "MAX_WORKERS", "MODELS",
    "PRESET_LR", "PRESET_MASKED_LOSS", "PRESET_RESIDUAL", "PRESETS", "TrainSettings",
    "check_choice", "check_flag", "check_float", "check_int", "is_int", "is_number",
    # training
    "EpochSampler", "Trainer", "TrainingDiverged", "amp_dtype", "init_distributed",
    "pick_device",
]


class TrainingDiverged(RuntimeError):
    """Training stopped on a non-finite loss or non-finite weights; the
    message names the iteration and the checkpoint that was kept."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA GPU "
                           f"(torch {torch.__version__}, CUDA build: {torch.version.cuda})")
    return device


def amp_dtype(mode: str, device: torch.device):
    """The autocast dtype, or None for full precision. Mixed precision is a
    CUDA feature here; on CPU training runs in float32."""
    if mode == "off" or device.type != "cuda":
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


class EpochSampler(Sampler):
    """The sample order from a given (epoch, position): a permutation seeded
    by (seed, epoch), so the batches of any iteration can be regenerated.
    Under DDP each of ``world`` ranks takes every world-th sample of it."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1):
        self.n, self.seed, self.rank, self.world = n, seed, rank, world
        self.epoch = self.start = 0

    @property
    def per_rank(self) -> int:
        return self.n // self.world

    def set_position(self, epoch: int, start: int) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        mine = order[self.rank::self.world][:self.per_rank]
        return iter(mine[self.start:].tolist())

    def __len__(self):
        return self.per_rank - self.start


def init_distributed(device: torch.device) -> tuple:
    """(rank, world size, device) of this process. Under torchrun (LOCAL_RANK
    and WORLD_SIZE set, even with one process) it joins the process group
    (NCCL on CUDA, gloo on CPU) and gives each rank its own GPU."""
    if "LOCAL_RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, device
    import torch.distributed as dist

    if device.type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


class Trainer:
    """Holds the networks, optimizers and data of one run."""

    def __init__(self, settings: TrainSettings, log=print):
        # Resolved, so a checkpoint says what it was trained with whatever the
        # preset defaults become later.
        self.s = replace(settings, residual=settings.uses_residual(),
                         masked_loss=settings.uses_masked_loss())
        self.rank, self.world, self.device = init_distributed(pick_device(settings.device))
        self.log = log if self.rank == 0 else (lambda *a, **k: None)
        self.out = Path(settings.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.amp = amp_dtype(settings.amp, self.device)
        self.cfg = get_config(settings.config)
        self.kappa = kappa(self.cfg)
        self.schedule: list[Stage] = settings.schedule()
        self.total = sum(s.stable_iters + s.fade_iters for s in self.schedule)
        # Every global generator, so that a checkpoint's RNG state, hence a
        # resumed run's last.pt, is a function of the seed alone.
        ckpt.seed_everything(settings.seed)
        self.data = PairDataset(settings.data, "train", self.cfg.generator_in,
                                self.cfg.generator_out, augment=settings.crop_pad > 0,
                                crop_pad=settings.crop_pad, seed=settings.seed)
        # Travels with every checkpoint, so that inference needs no retyped scale.
        self.normalization = h5format.normalization(self.data.summary)
        self.sampler = EpochSampler(len(self.data), settings.seed, self.rank, self.world)
        if self.sampler.per_rank < settings.batch_size:
            raise ValueError(f"{settings.data}: {len(self.data)} training samples, fewer than "
                             f"one batch of {settings.batch_size} per process ({self.world})")
        self.batches_per_epoch = self.sampler.per_rank // settings.batch_size
        self.loader = DataLoader(self.data, settings.batch_size, sampler=self.sampler,
                                 num_workers=settings.workers, worker_init_fn=seed_worker,
                                 drop_last=True, persistent_workers=settings.workers > 0,
                                 pin_memory=self.device.type == "cuda",
                                 # Its own generator: creating an iterator must not draw
                                 # from the global RNG that the training step uses.
                                 generator=torch.Generator().manual_seed(settings.seed))
        # Stages whose images come from the dataset's in-memory cache load
        # in this process: there a batch costs less than its IPC from a worker.
        self.cache_loader = DataLoader(self.data, settings.batch_size, sampler=self.sampler,
                                       drop_last=True, pin_memory=self.device.type == "cuda",
                                       generator=torch.Generator().manual_seed(settings.seed))
        if settings.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {settings.model!r}")
        self.G, self.D = build_networks(settings, self.cfg, self.schedule[-1].resolution)
        self.G, self.D = self.G.to(self.device), self.D.to(self.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.G = self.G.to(memory_format=torch.channels_last)
            self.D = self.D.to(memory_format=torch.channels_last)
        lr = settings.uses_lr()
        betas = tuple(settings.betas or DEFAULT_BETAS[settings.model])
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr, betas=betas)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        # Training goes through these; under DDP they synchronize gradients.
        # The stages not being trained leave parameters unused, hence
        # find_unused_parameters. self.G / self.D stay the bare modules.
        self.G_train, self.D_train = self.G, self.D
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.G_train = DDP(self.G, device_ids=ids, find_unused_parameters=True)
            self.D_train = DDP(self.D, device_ids=ids, find_unused_parameters=True)
        self.iteration = 0
        self.interrupted = self.diverged = False
        self.saved_iteration = None  # iteration of the checkpoint on disk from this run

    # ------------------------------------------------------------ state
    def state(self) -> dict:
        stage, alpha = stage_at(self.schedule, self.iteration)
        return {"iteration": self.iteration, "stage": stage, "alpha": alpha,
                "resolution": self.schedule[stage].resolution,
                "settings": asdict(self.s), "G": self.G.state_dict(), "D": self.D.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": ckpt.rng_state(),
                "normalization": self.normalization}

    def save(self, name: str = "last.pt") -> Path:
        """Rank 0 writes; every rank holds the same weights under DDP.
        Weights or optimizer states that are not finite are never written:
        TrainingDiverged, and the checkpoint on disk stays as it was."""
        state = self.state()
        bad = ckpt.nonfinite({k: state[k] for k in ("G", "D", "opt_g", "opt_d")})
        if bad:
            self._diverged(f"non-finite weights ({', '.join(bad[:3])}"
                           f"{' ...' if len(bad) > 3 else ''}) after iteration {self.iteration}")
        if self.rank == 0:
            ckpt.save_checkpoint(self.out / name, state)
        self.saved_iteration = self.iteration
        return self.out / name

    def _diverged(self, what: str):
        self.diverged = True
        kept = (f"{self.out / 'last.pt'} (iteration {self.saved_iteration}) is kept"
                if self.saved_iteration is not None else "no checkpoint was written")
        raise TrainingDiverged(f"training diverged: {what}; stopped, {kept}. Lower --lr, or "
                               "check the data and the loss weights")

    # Every entry resume needs, and its type.
    RESUME_KEYS = {"settings": dict, "iteration": int, "G": dict, "D": dict, "opt_g": dict,
                   "opt_d": dict, "scaler": dict, "rng": dict}

    def resume(self, path) -> None:
        """Continue from checkpoint ``path``. Every entry is checked before
        anything is loaded: CheckpointError naming the file when one is
        missing, of the wrong type or unusable (settings out of range, an
        iteration outside the schedule, weights of other shapes or not
        finite, optimizer or RNG states that do not fit); ValueError when
        the run's settings differ from the checkpoint's."""
        state = ckpt.load_checkpoint(path, map_location=self.device)
        ckpt.require(state, path, self.RESUME_KEYS)
        try:
            theirs = asdict(TrainSettings(**{k: v for k, v in state["settings"].items()
                                             if k in TrainSettings.__dataclass_fields__}))
        except (TypeError, ValueError) as error:
            raise ckpt.CheckpointError(f"{path}: its settings are not usable ({error})") from None
        mine = asdict(self.s)
        for key in ("config", "model", "preset", "iters_per_resolution", "max_resolution",
                    "batch_size", "seed", "equalized_lr", "residual"):
            if mine[key] != theirs.get(key):
                raise ValueError(f"{path}: trained with {key}={theirs.get(key)!r}, now "
                                 f"{mine[key]!r}; start a new run folder to change it")
        h5format.check_normalization(state.get("normalization"), self.normalization, path,
                                     self.s.data)
        iteration = int(state["iteration"])
        if not 0 <= iteration <= self.total:
            raise ckpt.CheckpointError(f"{path}: iteration {iteration} is outside this run's "
                                       f"schedule (0 .. {self.total})")
        ckpt.check_state_dict(state["G"], self.G, path, "G")
        ckpt.check_state_dict(state["D"], self.D, path, "D")
        for name, net in (("opt_g", self.G), ("opt_d", self.D)):
            ckpt.check_optimizer_state(state[name], net, path, name)
        ckpt.set_rng_state(state["rng"], path)
        try:
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise ckpt.CheckpointError(f"{path}: 'scaler' is not usable "
                                       f"({type(error).__name__}: {error})") from None
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.iteration = self.saved_iteration = iteration

    # ------------------------------------------------------------ steps
    def resolution(self) -> int:
        """Image side of the current iteration's stage."""
        return self.schedule[stage_at(self.schedule, self.iteration)[0]].resolution

    def batches(self):
        """Batches from the current iteration on, forever, at the current
        stage's resolution (the items' shift is whole pixels of it); the
        loader restarts at each epoch and each new resolution."""
        while True:
            epoch, k = divmod(self.iteration, self.batches_per_epoch)
            r = self.resolution()
            self.sampler.set_position(epoch, k * self.s.batch_size)
            self.data.set_epoch(epoch)
            self.data.set_resolution(r)
            cached = (self.data.cache_resolution % r == 0
                      and self.data.cache_info().capacity == len(self.data))
            try:
                for batch in (self.cache_loader if cached else self.loader):
                    yield batch
                    if self.iteration % self.batches_per_epoch == 0 or self.resolution() != r:
                        break  # a new epoch (order, augmentation) or a new resolution
            except PairFileError as error:  # e.g. a damaged chunk, read in a worker
                raise worker_error(error) from None

    def step(self, batch) -> dict:
        stage, alpha = stage_at(self.schedule, self.iteration)
        r = self.schedule[stage].resolution
        cfg, dev = self.cfg, self.device
        x = downsample(batch["coarse"], r).to(dev, non_blocking=True)
        y = downsample(batch["target"], r).to(dev, non_blocking=True)
        condition = x[:, list(cfg.condition_idx)]
        real = fade_reals(y[:, list(cfg.discriminator_idx)], alpha)

        if self.s.model == "pix2pix":
            return self._pix2pix_step(x, y, condition, r)

        def critic(c, image):  # the bare module: no DDP hooks in the penalty's double backward
            return self.D(torch.cat([c, image], dim=1), r, alpha)

        autocast = torch.autocast(dev.type, dtype=self.amp, enabled=self.amp is not None)
        d_idx = list(cfg.discriminator_idx)
        # Discriminator: real and fake in one forward, so DDP sees one call.
        with autocast:
            fake = self.G_train(x, r, alpha)
            both = torch.cat([torch.cat([condition, real], 1),
                              torch.cat([condition, fake.detach()[:, d_idx]], 1)])
            d_real, d_fake = self.D_train(both, r, alpha).chunk(2)
        gp = gradient_penalty(critic, real.float(), fake.detach()[:, d_idx].float(),
                              condition.float(), self.s.gp_lambda)
        d_loss, d_parts = discriminator_loss(d_real.float(), d_fake.float(), gp, self.s.drift)
        self._descend(d_loss, self.opt_d)
        with self._frozen_discriminator():
            with autocast:
                d_fake = critic(condition, fake[:, d_idx])
            mask = (downsample_mask(batch["target_mask"], r).to(dev)
                    if self.s.masked_loss else None)
            g_loss, g_parts = generator_loss(d_fake.float(), fake.float(), y.float(),
                                             list(cfg.pixel_idx), self.kappa, mask)
            self._descend(g_loss, self.opt_g)
        return self._finish(r, alpha, d_parts, g_parts)

    def _descend(self, loss, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)

    @contextmanager
    def _frozen_discriminator(self):
        """D is frozen during the generator step: no wasted gradients, and under
        DDP no gradient hooks of D firing outside D's own backward."""
        self.D.requires_grad_(False)
        try:
            yield
        finally:
            self.D.requires_grad_(True)

    def _check_finite(self, record: dict) -> None:
        """TrainingDiverged when a loss of ``record`` is not finite (on any
        rank under DDP, so that every rank stops together)."""
        bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
        if self.world > 1:
            flag = torch.tensor([float(bool(bad))], device=self.device)
            torch.distributed.all_reduce(flag)
            if flag.item() and not bad:
                bad = ["(on another rank)"]
        if bad:
            values = ", ".join(f"{k}={record[k]}" for k in bad if k in record)
            self._diverged(f"non-finite loss at iteration {record['iteration']} ({values or bad[0]})")

    def _finish(self, r, alpha, d_parts, g_parts) -> dict:
        self.scaler.update()
        self.iteration += 1
        return {"iteration": self.iteration, "resolution": r, "alpha": alpha,
                **{f"d_{k}": float(v) for k, v in d_parts.items()},
                **{f"g_{k}": float(v) for k, v in g_parts.items()}}

    def _pix2pix_step(self, x, y, condition, r) -> dict:
        cfg, d_idx = self.cfg, list(self.cfg.discriminator_idx)
        autocast = torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)
        # Real and fake share one PatchGAN forward (one DDP call); its batch norm
        # then normalizes over both halves together.
        with autocast:
            fake = self.G_train(x)
            d_real, d_fake = self.D_train(torch.cat([condition, condition]),
                                          torch.cat([y[:, d_idx], fake.detach()[:, d_idx]])
                                          ).chunk(2)
        d_loss, d_parts = pix2pix_discriminator_loss(d_real.float(), d_fake.float())
        self._descend(d_loss, self.opt_d)
        with self._frozen_discriminator():
            with autocast:
                d_fake = self.D(condition, fake[:, d_idx])
            g_loss, g_parts = pix2pix_generator_loss(d_fake.float(), fake.float(), y.float(),
                                                     list(cfg.pixel_idx))
            self._descend(g_loss, self.opt_g)
        return self._finish(r, 1.0, d_parts, g_parts)

    def write_samples(self, count: int = 4) -> Path:
        """PNG grid of the first ``count`` training samples at the current
        stage: one row per sample; per generated channel, coarse | refined |
        target side by side. Uses no random numbers (resume stays exact)."""
        from PIL import Image

        stage, alpha = stage_at(self.schedule, max(self.iteration - 1, 0))
        r = self.schedule[stage].resolution
        items = self.data.fetch(range(min(count, len(self.data))), r)
        x = downsample(torch.stack([it["coarse"] for it in items]), r).to(self.device)
        y = downsample(torch.stack([it["target"] for it in items]), r)
        # Eval mode: pix2pix's batch norm must not update its statistics and its
        # dropout must not draw random numbers here.
        self.G.eval()
        with torch.no_grad():
            fake = generate(self.G, self.s.model, x, r, alpha).float().cpu()
        self.G.train()
        coarse = x.cpu()
        rows = []
        for n in range(len(items)):
            tiles = []
            for c, name in enumerate(self.cfg.generator_out):
                source = coarse[n, self.cfg.generator_in.index(name)]
                tiles += [source, fake[n, c], y[n, c]]
            rows.append(torch.cat([torch.nn.functional.pad(t, (1, 1, 1, 1), value=-1.0)
                                   for t in tiles], dim=1))
        grid = ((torch.cat(rows, dim=0).clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        scale = max(1, 256 // r)
        picture = Image.fromarray(grid.numpy()).resize(
            (grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
        return save_png(self.out / "samples" / f"it{self.iteration:07d}_{r}px.png", picture)

    def _tensorboard(self):
        """A SummaryWriter in OUT/tensorboard on rank 0, when the optional
        tensorboard package is installed (pip install tensorboard)."""
        if self.rank != 0:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log("tensorboard is not installed: logging to log.jsonl and PNGs only")
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    # ------------------------------------------------------------ loop
    def train(self, until: int | None = None) -> dict:
        """Train to iteration ``until`` (default: the end of the schedule),
        checkpointing every ``checkpoint_every`` iterations, at each stage's
        end, on Ctrl-C / SIGTERM and at the end. ``log.jsonl`` is first cut
        back to the current iteration. TrainingDiverged on a non-finite loss
        or weights (the last good checkpoint stays); PairFileError naming the
        file, dataset and sample on a damaged chunk."""
        until = self.total if until is None else min(until, self.total)
        log_path = self.out / "log.jsonl"
        if self.rank == 0:
            # After a kill the log may hold iterations past the checkpoint, done again now.
            ckpt.truncate_log(log_path, self.iteration)
        board = self._tensorboard()
        record, t0, start = {}, time.perf_counter(), self.iteration
        try:
            with ckpt.interrupts_call(lambda: setattr(self, "interrupted", True)), \
                    open(log_path, "a", encoding="utf-8") as log_file:
                for batch in self.batches():
                    if self.iteration >= until or self.interrupted:
                        break
                    stage_before = stage_at(self.schedule, self.iteration)[0]
                    record = self.step(batch)
                    self._check_finite(record)
                    done = self.iteration - start
                    rate = done * self.s.batch_size / max(time.perf_counter() - t0, 1e-9)
                    record["images_per_s"] = rate
                    if (self.iteration % self.s.log_every == 0 or self.iteration == until) \
                            and self.rank == 0:
                        log_file.write(json.dumps(record) + "\n")
                        log_file.flush()
                        if board is not None:
                            for key, value in record.items():
                                if key != "iteration":
                                    board.add_scalar(key, value, self.iteration)
                        eta = (until - self.iteration) * self.s.batch_size / max(rate, 1e-9)
                        self.log(f"it {self.iteration}/{until}  {record['resolution']}px "
                                 f"alpha {record['alpha']:.2f}  D {record['d_loss']:+.3f}  "
                                 f"G pixel {record['g_pixel']:.4f} adv {record['g_adversarial']:+.3f}"
                                 f"  {rate:.1f} img/s  ETA {eta / 60:.1f} min")
                    stage_after = stage_at(self.schedule, self.iteration)[0]
                    if (stage_after != stage_before or self.iteration == self.total) \
                            and self.rank == 0:
                        grid = self.write_samples()
                        self.log(f"samples: {grid}")
                        if board is not None:
                            from PIL import Image
                            board.add_image("coarse|refined|target", np.asarray(
                                Image.open(grid).convert("RGB")), self.iteration,
                                dataformats="HWC")
                    if (self.iteration % self.s.checkpoint_every == 0
                            or stage_after != stage_before):
                        self.save()
        finally:
            if board is not None:
                board.close()
            if not self.diverged:
                self.save()
        if self.interrupted:
            self.log(f"interrupted at iteration {self.iteration}; checkpoint "
                     f"{self.out / 'last.pt'} — rerun with --resume to continue")
        return record
