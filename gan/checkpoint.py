"""Atomic, checksummed checkpoints and the random-number state needed to
resume exactly. A file whose payload does not match its SHA-256 is a
:class:`CheckpointError` naming the file; a legacy bare ``torch.save`` file
loads with a warning.

See docs/progressive-gan.md (the file layout, legacy checkpoints).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import signal
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

MAGIC = b"DCE-CKPT"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQ32s")  # magic, version, payload length, SHA-256
_TORCH_ZIP = b"PK\x03\x04"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or used; the message names the file."""


class LegacyCheckpointWarning(UserWarning):
    """A checkpoint from before checksums: loaded, but its integrity is unverified."""


@contextmanager
def atomic_path(path, suffix: str = "", durable: bool = False):
    """gan's one way to write a file whole (gan never imports geom, which has
    its own): yields a temporary path beside ``path`` to write, renamed over
    ``path`` when the block ends, removed when it raises; no reader ever
    sees a partial file. ``suffix`` ends the temporary name, for writers
    that choose the format by extension; ``durable`` flushes the data to
    disk before the rename, and the rename after it (checkpoints, logs)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp{suffix}")
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        if durable:
            _fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(path, state: dict) -> Path:
    """Write ``state`` (torch.save payload behind the checksummed header,
    module docstring) to a temporary file beside ``path``, flush it to disk,
    then rename it over ``path``: a crash leaves either the old checkpoint
    or the new one, never a torn file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, len(payload), hashlib.sha256(payload).digest())
    with atomic_path(path, durable=True) as tmp, open(tmp, "wb") as fh:
        fh.write(header)
        fh.write(payload)
    return path


def _fsync_directory(folder: Path) -> None:
    # The rename itself reaches the disk only with the directory's entry.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: directories cannot be opened
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _payload(path: Path, data: bytes) -> bytes:
    """The verified payload of a checksummed file, or of a legacy one (warning)."""
    if data.startswith(MAGIC):
        if len(data) < _HEADER.size:
            raise CheckpointError(f"{path}: truncated checkpoint ({len(data)} bytes, shorter "
                                  f"than its {_HEADER.size}-byte header)")
        _, version, length, digest = _HEADER.unpack_from(data)
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{path}: checkpoint format version {version}; this dce "
                                  f"reads version {FORMAT_VERSION}")
        payload = memoryview(data)[_HEADER.size:]
        if len(payload) != length:
            raise CheckpointError(f"{path}: damaged checkpoint: its header announces "
                                  f"{length} bytes of payload, the file holds {len(payload)} "
                                  "(truncated or extended)")
        if hashlib.sha256(payload).digest() != digest:
            raise CheckpointError(f"{path}: damaged checkpoint: the SHA-256 of its payload "
                                  "differs from the one stored when it was saved")
        return payload
    if data.startswith(_TORCH_ZIP):
        warnings.warn(f"{path}: checkpoint written before dce stored checksums; its integrity "
                      "cannot be verified (the next save of a resumed run adds one)",
                      LegacyCheckpointWarning, stacklevel=3)
        return memoryview(data)
    raise CheckpointError(f"{path}: not a DCE checkpoint (no {MAGIC.decode()} header)")


def load_checkpoint(path, map_location="cpu") -> dict:
    """The state dict saved by :func:`save_checkpoint` at ``path``, its
    checksum verified (a pre-checksum file loads with a
    :class:`LegacyCheckpointWarning`). CheckpointError naming the file when
    it is missing, unreadable, damaged or not a dict."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({error})") from None
    payload = _payload(path, data)
    try:
        # Our own files: optimizer and RNG states are not plain tensors.
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as error:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(error).__name__}: "
                              f"{error})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(state).__name__}, "
                              "expected a dict)")
    return state


def nonfinite(tensors: dict) -> list:
    """Names of the floating-point tensors of ``tensors`` (a state dict,
    nested dicts and lists allowed) holding NaN or infinity."""
    bad = []

    def walk(value, name):
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(name)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{name}.{key}" if name else str(key))
        elif isinstance(value, (list, tuple)):
            for k, item in enumerate(value):
                walk(item, f"{name}[{k}]")
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(name)

    walk(tensors, "")
    return bad


def require(state: dict, path, needs: dict) -> None:
    """Check that ``state`` holds every key of ``needs`` ({key: type or
    tuple of types}) with a value of that type; CheckpointError naming
    ``path`` and the first key that is missing or of another type."""
    for key, kind in needs.items():
        if key not in state:
            raise CheckpointError(f"{path}: not a usable checkpoint: the entry {key!r} is "
                                  "missing")
        value = state[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            raise CheckpointError(f"{path}: not a usable checkpoint: {key!r} is a "
                                  f"{type(value).__name__}, expected {names}")


def check_state_dict(saved, module: torch.nn.Module, path, name: str) -> None:
    """CheckpointError naming ``path`` unless ``saved`` has exactly the keys
    and shapes of ``module.state_dict()`` and finite floating-point values."""
    mine = module.state_dict()
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: {name!r} is a {type(saved).__name__}, expected the "
                              "network's state dict")
    missing = sorted(set(mine) - set(saved))
    extra = sorted(set(saved) - set(mine))
    if missing or extra:
        raise CheckpointError(f"{path}: {name!r} does not fit this network (missing "
                              f"{missing[:3]}, unexpected {extra[:3]}); was it trained with "
                              "other settings?")
    for key, value in saved.items():
        if not isinstance(value, torch.Tensor) or value.shape != mine[key].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{path}: {name!r}: {key} has shape {shape}, the network "
                                  f"expects {tuple(mine[key].shape)}")
    bad = nonfinite(saved)
    if bad:
        raise CheckpointError(f"{path}: {name!r} holds non-finite (NaN or infinite) weights "
                              f"in {bad[:3]}{' ...' if len(bad) > 3 else ''}")


def check_optimizer_state(saved, module: torch.nn.Module, path, name: str) -> None:
    """CheckpointError naming ``path`` unless ``saved`` holds finite values
    and loads into an Adam over ``module``'s parameters (a throwaway one:
    checking changes no weight and no optimizer of the run)."""
    bad = nonfinite(saved)
    if bad:
        raise CheckpointError(f"{path}: {name!r} holds non-finite values in {bad[:3]}")
    probe = torch.optim.Adam(module.parameters())
    try:
        probe.load_state_dict(saved)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
        raise CheckpointError(f"{path}: {name!r} does not fit this run's optimizer "
                              f"({type(error).__name__}: {error})") from None


def rng_state() -> dict:
    """Python, numpy, torch CPU and (when present) every CUDA device's RNG."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (every CUDA
    device's too) from ``seed`` (an int >= 0)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_rng_state(state: dict, path=None) -> None:
    """Inverse of :func:`rng_state`. The states are byte tensors that torch
    wants on the CPU, whatever map_location the checkpoint was loaded with.
    A malformed ``state`` is a CheckpointError naming ``path`` (the
    generators are left as they were)."""
    before = rng_state()
    try:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"].cpu())
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as error:
        random.setstate(before["python"])
        np.random.set_state(before["numpy"])
        torch.set_rng_state(before["torch"])
        if "cuda" in before:
            torch.cuda.set_rng_state_all(before["cuda"])
        raise CheckpointError(f"{path}: the random-number state 'rng' is not usable "
                              f"({type(error).__name__}: {error})") from None


def truncate_log(path, iteration: int) -> int:
    """Cut a run's ``log.jsonl`` (one JSON object with an ``iteration`` per
    line) back to the records of iterations <= ``iteration``, e.g. on
    resuming from a checkpoint older than the log after a kill, so the
    iterations done again are not logged twice. A torn or malformed line
    (a kill mid-write) is dropped too. Rewritten atomically, and only when
    something is dropped; returns the number of lines dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                record = json.loads(line)
                keep = line.endswith("\n") and int(record["iteration"]) <= iteration
            except (ValueError, TypeError, KeyError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
    if dropped:
        with atomic_path(path, durable=True) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(kept)
    return dropped


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
