"""Atomic checkpoints and the random-number state needed to resume exactly."""
from __future__ import annotations

import os
import random
import signal
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read; the message names the file."""


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` with torch.save to a temporary file beside ``path``,
    flush it to disk, then rename it over ``path``: a crash leaves either the
    old checkpoint or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        # Our own files: optimizer and RNG states are not plain tensors.
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable checkpoint ({error})") from None


def rng_state() -> dict:
    """Python, numpy, torch CPU and (when present) every CUDA device's RNG."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`. The states are byte tensors that torch
    wants on the CPU, whatever map_location the checkpoint was loaded with."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextmanager
def interrupts_call(on_interrupt):
    """Within the block, SIGINT (Ctrl-C) and SIGTERM call ``on_interrupt()``
    instead of stopping the process, so a training loop can finish its
    step, checkpoint and return; the previous handlers come back after."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: on_interrupt())
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
