"""The CUDA path of dce-train: autocast (bf16, fp16 with a grad scaler),
channels-last, exact-enough resume, and torchrun with NCCL. Skipped on
machines without a GPU (CI has none); on a GPU machine run
``pytest tests/test_cuda.py``. Uses only dce.gan and a pair file written
with plain h5py (tests/test_data.py), so it runs where dce.geom is not
installed."""
import os
import subprocess
import sys

import pytest
import torch
from test_data import write_pairs

from dce.gan.checkpoint import load_checkpoint
from dce.gan.networks import Generator
from dce.gan.train import Trainer, TrainSettings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def pairs(tmp_path):
    path = tmp_path / "pairs.h5"
    write_pairs(path)
    return path


def settings(pairs, out, **kw):
    base = dict(data=str(pairs), out=str(out), preset="tiny", batch_size=2, workers=0,
                lr=1e-3, crop_pad=2, iters_per_resolution=4, max_resolution=16, device="cuda",
                log_every=1000, checkpoint_every=1000)
    base.update(kw)
    return TrainSettings(**base)


@pytest.mark.parametrize("amp", ["bf16", "fp16", "off"])
def test_cuda_training_checkpoints_and_resumes(pairs, tmp_path, amp):
    quiet = dict(log=lambda *a: None)
    whole = Trainer(settings(pairs, tmp_path / "whole", amp=amp), **quiet)
    assert whole.device.type == "cuda"
    assert whole.amp == {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]
    conv = next(p for p in whole.G.parameters() if p.dim() == 4 and p.shape[-1] > 1)
    assert conv.is_cuda and conv.is_contiguous(memory_format=torch.channels_last)
    record = whole.train()
    assert torch.isfinite(torch.tensor([record["g_loss"], record["d_loss"]])).all()

    first = Trainer(settings(pairs, tmp_path / "split", amp=amp), **quiet)
    first.train(until=9)  # mid-fade of the 16 px stage
    state = load_checkpoint(tmp_path / "split" / "last.pt")
    assert state["iteration"] == 9 and 0 < state["alpha"] < 1
    if amp == "fp16":
        assert state["scaler"]["scale"] > 0  # the grad scaler's state travels
    second = Trainer(settings(pairs, tmp_path / "split", amp=amp), **quiet)
    second.resume(tmp_path / "split" / "last.pt")
    second.train()
    # cuDNN may pick different kernels in the two processes' runs; mixed
    # precision rounds differently along the way: close, not bit-identical.
    tol = 1e-4 if amp == "off" else 5e-2
    for key, value in whole.G.state_dict().items():
        torch.testing.assert_close(second.G.state_dict()[key], value, rtol=tol, atol=tol,
                                   msg=key)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_generator_stays_close_to_float32(dtype):
    torch.manual_seed(0)
    G = Generator(3, 3, 64).cuda().eval().to(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 64, 64, device="cuda") * 2 - 1
    with torch.no_grad():
        exact = G(x, 64, 0.5)
        with torch.autocast("cuda", dtype=dtype):
            mixed = G(x, 64, 0.5)
    spread = exact.abs().max()
    assert (mixed.float() - exact).abs().max() < 0.05 * spread


def test_torchrun_with_nccl_trains_and_writes_one_checkpoint(pairs, tmp_path):
    """One process under torchrun: the NCCL process group and the DDP
    wrappers are used as on a multi-GPU node."""
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
         "-m", "dce.cli.train", str(pairs), "-o", str(out), "--preset", "tiny",
         "--iters-per-resolution", "3", "--max-resolution", "8", "--batch-size", "2",
         "--workers", "0", "--crop-pad", "2", "--device", "cuda"],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backend nccl" in result.stdout and "cuda" in result.stdout
    assert load_checkpoint(out / "last.pt")["iteration"] == 6
