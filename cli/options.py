"""What every dce-* command checks before it starts: numeric options
(argparse types, so a bad value exits 2 naming the option) and output paths
(never one of the command's own inputs, never something it did not make,
never under a file or in a read-only folder)."""
from __future__ import annotations

import argparse
import math
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Callable


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an int in [low, high] (no upper bound when None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(
                f"{value} is out of range: must be >= {low}" if high is None
                else f"{value} is out of range: must be in [{low}, {high}]")
        return value
    return parse


def number(low: float = 0.0, low_open: bool = False,
           high: float | None = None, high_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite float >= ``low`` (> with ``low_open``) and,
    when given, <= ``high`` (< with ``high_open``). NaN and infinity never
    pass: they would train NaN weights or draw blank pictures."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        ok = math.isfinite(value) and (value > low if low_open else value >= low)
        if high is not None:
            ok = ok and (value < high if high_open else value <= high)
        if not ok:
            bound = f"{'>' if low_open else '>='} {low:g}"
            if high is not None:
                bound += f" and {'<' if high_open else '<='} {high:g}"
            raise argparse.ArgumentTypeError(
                f"{text} is out of range: must be a finite number {bound}")
        return value
    return parse


SEED_MAX = 2 ** 32 - 1  # numpy and torch both take seeds this large


def _shown(value) -> str:
    """A default as a user would type it: list items space-separated, floats
    without a bare trailing ".0" (10, 0.001, 1e-05)."""
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(item) for item in value)
    if isinstance(value, float):
        text = repr(value)
        return text[:-2] if text.endswith(".0") else text
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter,
                    argparse.ArgumentDefaultsHelpFormatter):
    """Every dce-* command's formatter: the description and epilog as
    written, and "(default: X)" after each option's help, taken from the
    parser (so from the settings dataclasses), except where it would say
    nothing: a default of None (resolved later; the help says how) and plain
    on/off flags (store_true, store_false, --help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = action.nargs == 0 and not isinstance(action, argparse.BooleanOptionalAction)
        if (action.default is None or action.default is argparse.SUPPRESS or flag
                or "%(default)" in text
                or not (action.option_strings
                        or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE))):
            return text
        # argparse %-expands help strings afterwards: a % in the value is doubled.
        shown = _shown(action.default).replace("%", "%%")
        return f"{text} (default: {shown})"


class OutputError(ValueError):
    """An output path a command must not or cannot write."""


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path, inputs: Iterable = (), is_dir: bool = False,
                 replaceable: Callable[[Path], bool] | None = None,
                 what: str = "output") -> Path:
    """``path`` as a Path after checking that the command may write it:

    - it is not one of ``inputs`` (files or folders);
    - no part of its folder is a file, and the nearest existing folder is
      writable;
    - a file output is not an existing folder, a folder output not an
      existing file;
    - an existing file output passes ``replaceable`` (e.g. "is a DCE pair
      file"), so that a command replaces only what it makes.

    :class:`OutputError` names the path and the problem."""
    path = Path(path)
    resolved = path.resolve()
    for item in inputs:
        if item is None:
            continue
        item = Path(item)
        if _same(path, item) or resolved == item.resolve():
            raise OutputError(f"{what} {path} is one of the command's inputs; refusing to "
                              f"write over it")
    if path.exists():
        if is_dir and not path.is_dir():
            raise OutputError(f"{what} {path} is an existing file, not a folder")
        if not is_dir and path.is_dir():
            raise OutputError(f"{what} {path} is an existing folder, not a file")
        if not is_dir and replaceable is not None and not replaceable(path):
            raise OutputError(f"{what} {path} exists and is not a file this command makes; "
                              f"refusing to replace it (choose another path)")
    parent = path if is_dir else path.parent
    probe = parent.resolve()
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{what} {path}: {probe} is a file, so nothing can be written "
                          f"under it")
    target = path if is_dir and path.exists() else probe
    if not os.access(target, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path}: the folder {target} is not writable")
    return path


def check_disk(folder: Path, need: int, what: str) -> None:
    """Refuse up front a job whose files cannot fit on the disk."""
    probe = folder.resolve()
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if need > free:
        raise OutputError(f"{what} needs about {need / 1e9:.1f} GB in {folder}; "
                          f"{free / 1e9:.1f} GB are free")


def is_pair_file(path: Path) -> bool:
    """A file dce-build made (so it may replace it): an HDF5 "dce-pairs" file."""
    import h5py

    from dce.gan.h5format import FORMAT_NAME
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == FORMAT_NAME
    except (OSError, ValueError):
        return False
