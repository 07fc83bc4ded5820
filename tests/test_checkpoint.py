import random

import numpy as np
import pytest
import torch

from dce.gan.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def test_round_trip_and_no_temporary_left(tmp_path):
    state = {"weights": torch.arange(5.0), "step": 7}
    path = save_checkpoint(tmp_path / "ckpt.pt", state)
    back = load_checkpoint(path)
    assert back["step"] == 7 and torch.equal(back["weights"], state["weights"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path / "c.pt", {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint(tmp_path / "c.pt", {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(tmp_path / "c.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_corrupt_or_missing_checkpoint_names_the_file(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "none.pt")


def test_rng_state_restores_every_generator():
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_every_single_byte_flip_is_refused_naming_the_file(tmp_path):
    """The SHA-256 covers the payload, the header its own fields: each of
    these flips (header, payload start, middle, end) is a CheckpointError."""
    path = save_checkpoint(tmp_path / "last.pt", {"w": torch.arange(100.0), "step": 3})
    data = path.read_bytes()
    for offset in (0, 9, 13, 25, 52, 60, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"flip{offset}.pt"
        mutated = bytearray(data)
        mutated[offset] ^= 0x01
        bad.write_bytes(bytes(mutated))
        with pytest.raises(CheckpointError, match=f"flip{offset}.pt"):
            load_checkpoint(bad)


def test_truncated_or_extended_checkpoint_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.ones(10)})
    data = path.read_bytes()
    for name, content in (("short.pt", data[:30]), ("cut.pt", data[:-1]),
                          ("long.pt", data + b"\0")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CheckpointError, match=name):
            load_checkpoint(tmp_path / name)


def test_checkpoint_holding_no_dict_is_refused(tmp_path):
    save_checkpoint(tmp_path / "list.pt", [1, 2, 3])
    with pytest.raises(CheckpointError, match="list.pt: not a checkpoint.*list"):
        load_checkpoint(tmp_path / "list.pt")


def test_pre_checksum_checkpoint_loads_with_a_warning(tmp_path):
    from dce.gan.checkpoint import LegacyCheckpointWarning

    old = tmp_path / "old.pt"
    torch.save({"step": 5, "w": torch.arange(3.0)}, old)  # how dce wrote checkpoints before
    with pytest.warns(LegacyCheckpointWarning, match="old.pt"):
        state = load_checkpoint(old)
    assert state["step"] == 5 and torch.equal(state["w"], torch.arange(3.0))


def test_nonfinite_names_the_bad_tensors():
    from dce.gan.checkpoint import nonfinite

    state = {"G": {"a": torch.ones(2), "b": torch.tensor([1.0, float("nan")]),
                   "n": torch.tensor([3])},
             "opt": {"state": [torch.tensor([float("inf")])]}, "lr": float("nan"), "k": 2}
    assert nonfinite(state) == ["G.b", "opt.state[0]", "lr"]
    assert nonfinite({"a": torch.zeros(3)}) == []


def test_require_and_check_state_dict_messages(tmp_path):
    from dce.gan.checkpoint import check_state_dict, require

    state = {"settings": {}, "iteration": True, "G": {}}
    with pytest.raises(CheckpointError, match="x.pt: .*'rng' is missing"):
        require(state, "x.pt", {"settings": dict, "rng": dict})
    with pytest.raises(CheckpointError, match="'iteration' is a bool, expected int"):
        require(state, "x.pt", {"iteration": int})
    net = torch.nn.Linear(2, 3)
    good = {k: v.clone() for k, v in net.state_dict().items()}
    check_state_dict(good, net, "x.pt", "G")
    with pytest.raises(CheckpointError, match="does not fit.*missing \\['bias'\\]"):
        check_state_dict({"weight": good["weight"]}, net, "x.pt", "G")
    with pytest.raises(CheckpointError, match="weight has shape \\(2, 2\\).*\\(3, 2\\)"):
        check_state_dict({**good, "weight": torch.zeros(2, 2)}, net, "x.pt", "G")
    with pytest.raises(CheckpointError, match="non-finite.*\\['bias'\\]"):
        check_state_dict({**good, "bias": torch.full((3,), float("inf"))}, net, "x.pt", "G")


def test_malformed_rng_state_is_refused_and_leaves_the_generators(tmp_path):
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    with pytest.raises(CheckpointError, match="x.pt: the random-number state"):
        set_rng_state({"python": state["python"], "numpy": "junk", "torch": state["torch"]},
                      "x.pt")
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
