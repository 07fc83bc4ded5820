"""Every dce-* command's --help shows each option's default once, as argparse
prints it from the parser (whose defaults come from the settings
dataclasses), and never a default that says nothing ("None", "False")."""
from __future__ import annotations

import dataclasses
import re

import pytest

from dce.cli import (
    build,
    demo,
    eval_mesh,
    evaluate,
    landmarks,
    refine,
    refit,
    train,
    train_detail,
)
from dce.gan.detail import DetailSettings
from dce.gan.h5format import DEFAULT_TEST_FRACTION
from dce.gan.train import TrainSettings
from dce.geom.dataset import BuildConfig
from dce.geom.morphable import FitGate

# (name, parser factory, argv prefix that satisfies the required arguments)
COMMANDS = [
    ("dce-train", train.build_parser, ["pairs.h5"]),
    ("dce-train-detail", train_detail.build_parser, ["pairs.h5", "run/last.pt"]),
    ("dce-refine", refine.build_parser, ["run/last.pt", "--pairs", "pairs.h5"]),
    ("dce-eval", evaluate.build_parser, ["pairs.h5", "run/last.pt"]),
    ("dce-eval-mesh", eval_mesh.build_parser, ["--pred", "p", "--gt", "g"]),
    ("dce-landmarks", landmarks.build_parser, ["photo.png"]),
    ("dce-demo", demo.build_parser, []),
    ("dce-refit", refit.build_parser, ["pairs.h5"]),
]
BUILD_SUBCOMMANDS = {
    "synthetic": [], "frgc": ["root"], "bosphorus": ["root"], "manifest": ["pairs.csv"],
    "merge": ["merged.h5", "shard1.h5"], "inspect": ["pairs.h5"], "preview": ["pairs.h5"],
}
HEADER = re.compile(r"^(positional arguments|options|optional arguments):$")
DEFAULT = re.compile(r"\(default: (.*)\)$")


def _help_texts(monkeypatch, capsys):
    """(name, parser factory, argv prefix, --help text) for every command and
    every dce-build sub-command."""
    monkeypatch.setenv("COLUMNS", "80")
    out = [(name, factory, prefix, factory().format_help())
           for name, factory, prefix in COMMANDS]
    out.append(("dce-build", build.build_parser, None, build.build_parser().format_help()))
    for sub, prefix in BUILD_SUBCOMMANDS.items():
        with pytest.raises(SystemExit):
            build.build_parser().parse_args([sub, "--help"])
        out.append((f"dce-build {sub}", build.build_parser, [sub, *prefix],
                    capsys.readouterr().out))
    return out


def _entries(text: str) -> dict:
    """The argument entries of a --help text: first option string (the
    longest, e.g. --out of "-o OUT, --out OUT") -> its help, lines joined."""
    entries, current, started = {}, None, False
    for line in text.splitlines():
        if HEADER.match(line):
            started = True
            continue
        if not started or not line.strip() or not line.startswith(" "):
            current = None
            continue
        if line.startswith("  ") and not line.startswith("   "):
            head, _, rest = line.strip().partition("  ")
            flags = [w.rstrip(",") for w in head.split() if w.startswith("-")]
            current = max(flags, key=len) if flags else head.split()[0]
            entries[current] = rest.strip()
        elif current is not None:
            entries[current] = (entries[current] + " " + line.strip()).strip()
    return entries


def test_every_command_has_option_entries(monkeypatch, capsys):
    for name, _, _, text in _help_texts(monkeypatch, capsys):
        assert _entries(text), f"{name}: no argument entries found in --help"


def test_no_option_says_default_twice_or_an_empty_default(monkeypatch, capsys):
    for name, _, _, text in _help_texts(monkeypatch, capsys):
        for bad in ("(default: None)", "(default: False)", "(default: True)"):
            assert bad not in " ".join(text.split()), f"{name} prints {bad}"
        for option, help_text in _entries(text).items():
            count = len(re.findall(r"\bdefault\b", help_text))
            assert count <= 1, f"{name} {option}: 'default' {count} times: {help_text!r}"


def test_printed_defaults_parse_back_to_the_defaults(monkeypatch, capsys):
    """Typing the printed default gives exactly what omitting the option gives."""
    checked = 0
    for name, factory, prefix, text in _help_texts(monkeypatch, capsys):
        if prefix is None:
            continue
        omitted = vars(factory().parse_args(prefix))
        for option, help_text in _entries(text).items():
            match = DEFAULT.search(help_text)
            dest = option.lstrip("-").replace("-", "_")
            # An option whose default is None (resolved later) and an on/off
            # flag explain their default in their own words; argparse prints
            # none for them.
            if (match is None or not option.startswith("-") or option in prefix
                    or omitted.get(dest) is None or isinstance(omitted.get(dest), bool)):
                continue
            typed = vars(factory().parse_args([*prefix, option, *match.group(1).split()]))
            assert typed == omitted, f"{name} {option}: printed default {match.group(1)!r}"
            checked += 1
    assert checked >= 60  # every command prints most of its defaults


def _printed(monkeypatch, capsys, command: str) -> dict:
    """option -> the default text its --help prints."""
    text = {name: text for name, _, _, text in _help_texts(monkeypatch, capsys)}[command]
    return {option: m.group(1) for option, h in _entries(text).items()
            if (m := DEFAULT.search(h))}


def _field_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def test_train_defaults_are_train_settings(monkeypatch, capsys):
    shown, fields = _printed(monkeypatch, capsys, "dce-train"), _field_defaults(TrainSettings)
    assert int(shown["--batch-size"]) == fields["batch_size"]
    assert float(shown["--gp-lambda"]) == fields["gp_lambda"]
    assert float(shown["--drift"]) == fields["drift"]
    assert int(shown["--crop-pad"]) == fields["crop_pad"]
    assert int(shown["--checkpoint-every"]) == fields["checkpoint_every"]
    assert shown["--config"] == fields["config"]
    assert shown["--preset"] == fields["preset"]
    assert shown["--out"] == "dce_run"
    # Resolved later from --preset: no printed default, the help explains it.
    assert "--lr" not in shown and "--residual" not in shown


def test_train_detail_defaults_are_detail_settings(monkeypatch, capsys):
    shown = _printed(monkeypatch, capsys, "dce-train-detail")
    fields = _field_defaults(DetailSettings)
    assert float(shown["--lr"]) == fields["lr"]
    assert float(shown["--highpass-mm"]) == fields["highpass_mm"]
    assert float(shown["--denoise-mm"]) == fields["denoise_mm"]
    assert int(shown["--crop"]) == fields["crop"]
    assert shown["--pixel-loss"] == fields["pixel_loss"]


def test_build_defaults_are_build_config(monkeypatch, capsys):
    shown = _printed(monkeypatch, capsys, "dce-build synthetic")
    fields, gate = _field_defaults(BuildConfig), _field_defaults(FitGate)
    assert int(shown["--size"]) == fields["size"]
    assert shown["--channels"] == fields["channels"]
    assert int(shown["--poses"]) == fields["poses"]
    assert float(shown["--max-gap"]) == fields["max_gap"]
    assert shown["--curvature"] == fields["curvature"]
    assert float(shown["--test-fraction"]) == DEFAULT_TEST_FRACTION
    assert [float(x) for x in shown["--gate-eye-mm"].split()] == list(gate["eye_distance_mm"])
    assert float(shown["--gate-residual"]) == gate["max_residual"]
