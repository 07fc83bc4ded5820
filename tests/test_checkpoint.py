import random

import numpy as np
import pytest
import torch

from dce.gan.checkpoint import (CheckpointError, load_checkpoint, rng_state, save_checkpoint,
                                set_rng_state)


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
