"""Progressive training on a tiny pair file built by the real builder."""
import h5py
import numpy as np
import pytest
import torch

from dce.gan.checkpoint import load_checkpoint
from dce.gan.configs import CONFIGS
from dce.gan.h5format import TEST
from dce.gan.train import Trainer, TrainSettings


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """The pair file of `dce-build synthetic --identities 3 --size 32 --poses 1
    --workers 1 --channels DCE+RGB`, built through the library."""
    from dce.geom import build, sources
    from dce.geom.dataset import BuildConfig
    from dce.geom.synthetic import generate_world

    root = tmp_path_factory.mktemp("train")
    generate_world(root / "world", identities=3, seed=0, workers=1)
    report = build.build(sources.synthetic_world(root / "world"), root / "rgb.h5",
                         BuildConfig(size=32, poses=1, channels="DCE+RGB"),
                         command="synthetic", workers=1, progress=False, log=lambda *a: None)
    assert report.failures == []
    return root / "rgb.h5"


def settings(pairs, out, **kw):
    base = dict(data=str(pairs), out=str(out), preset="tiny", batch_size=2, workers=0,
                lr=1e-3, crop_pad=2, log_every=1000, checkpoint_every=1000)
    base.update(kw)
    return TrainSettings(**base)


@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_every_configuration_runs_a_step(pairs, tmp_path, config):
    trainer = Trainer(settings(pairs, tmp_path, config=config, max_resolution=4),
                      log=lambda *a: None)
    record = trainer.step(next(trainer.batches()))
    assert record["resolution"] == 4 and np.isfinite(record["g_loss"])
    assert np.isfinite(record["d_loss"])


def test_stopped_and_resumed_run_equals_an_uninterrupted_one(pairs, tmp_path):
    quiet = dict(log=lambda *a: None)
    whole = Trainer(settings(pairs, tmp_path / "a", iters_per_resolution=6), **quiet)
    whole.train()
    first = Trainer(settings(pairs, tmp_path / "b", iters_per_resolution=6), **quiet)
    first.train(until=9)  # stops inside the fade of the second stage
    second = Trainer(settings(pairs, tmp_path / "b", iters_per_resolution=6), **quiet)
    second.resume(tmp_path / "b" / "last.pt")
    assert second.iteration == 9
    second.train()
    assert whole.iteration == second.iteration == 18
    for name in ("G", "D"):
        a, b = getattr(whole, name).state_dict(), getattr(second, name).state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_pixel_loss_falls_tenfold_when_overfitting(pairs, tmp_path):
    trainer = Trainer(settings(pairs, tmp_path, iters_per_resolution=500, max_resolution=4,
                               crop_pad=0, lr=3e-3), log=lambda *a: None)
    losses = []
    for batch in trainer.batches():
        if trainer.iteration >= trainer.total:
            break
        losses.append(trainer.step(batch)["g_pixel"])
    early, late = np.mean(losses[:10]), np.mean(losses[-10:])
    assert late < early / 10, (early, late)


def test_sample_grids_are_written_per_stage(pairs, tmp_path):
    from PIL import Image

    trainer = Trainer(settings(pairs, tmp_path, iters_per_resolution=2, max_resolution=8),
                      log=lambda *a: None)
    trainer.train()
    grids = sorted((tmp_path / "samples").glob("*.png"))
    assert [g.name for g in grids] == ["it0000002_4px.png", "it0000004_8px.png"]
    # Up to 4 samples x (8 px + 2 border) rows, 3 channels x (coarse, refined, target)
    # tiles, scaled by 256 / 8.
    rows = min(4, len(trainer.data))
    picture = np.asarray(Image.open(grids[1]))
    assert picture.shape == (rows * 10 * 32, 9 * 10 * 32)


def test_eq4_mae_hand_computed():
    from dce.gan.evaluate import image_mae

    target = torch.full((1, 2, 3), -1.0)
    target[0, 0, :2] = torch.tensor([0.0, 0.5])
    prediction = torch.full((1, 2, 3), -1.0)
    prediction[0, 0, 1:] = torch.tensor([0.25, 0.0])
    # Foreground of either: (0,0), (0,1), (0,2); errors 1.0, 0.25, 1.0.
    torch.testing.assert_close(image_mae(prediction, target), torch.tensor([0.75]))
    torch.testing.assert_close(image_mae(target, target), torch.tensor([0.0]))
    # Over the ground truth's own pixels (0,0), (0,1): errors 1.0 and 0.25.
    torch.testing.assert_close(image_mae(prediction, target, face_only=True),
                               torch.tensor([0.625]))
    # A stray output one 8-bit step above the background counts as foreground.
    prediction[0, 1, 2] = -1.0 + 2.0 / 255.0
    torch.testing.assert_close(image_mae(prediction, target),
                               torch.tensor([(1.0 + 0.25 + 1.0 + 2.0 / 255.0) / 4]))


def test_roughness_is_zero_on_a_plane_and_the_laplacian_of_a_paraboloid():
    """Mean |4-neighbour Laplacian| over pixels whose 3x3 block is valid and
    surface: 0 for a tilted plane, exactly 4a for z = a (x^2 + y^2)."""
    from dce.gan.evaluate import depth_roughness

    i, j = torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij")
    plane = 0.01 * i - 0.02 * j
    bowl = 0.003 * ((i - 6) ** 2 + (j - 6) ** 2) - 0.5
    valid = torch.ones(1, 12, 12, dtype=torch.bool)
    valid[0, :, 9:] = False  # e.g. a hole: excluded with its neighbours
    torch.testing.assert_close(depth_roughness(plane[None], valid), torch.tensor([0.0]))
    torch.testing.assert_close(depth_roughness(bowl[None], valid), torch.tensor([4 * 0.003]))
    stepped = bowl.clone()
    stepped[:, 9:] = 5.0  # a cliff inside the invalid columns changes nothing
    torch.testing.assert_close(depth_roughness(stepped[None], valid), torch.tensor([4 * 0.003]))
    noisy = bowl.clone()
    noisy[5, 5] += 0.1  # one spike, seen by itself and its 4 neighbours
    assert depth_roughness(noisy[None], valid) > depth_roughness(bowl[None], valid)


def test_dce_eval_writes_table_and_heatmaps(pairs, tmp_path):
    from PIL import Image

    from dce.cli.evaluate import main

    trainer = Trainer(settings(pairs, tmp_path / "run", iters_per_resolution=2, max_resolution=8),
                      log=lambda *a: None)
    trainer.train()
    code = main([str(pairs), str(tmp_path / "run" / "last.pt"), "-o", str(tmp_path / "eval"),
                 "--heatmaps", "2"])
    assert code == 0
    table = (tmp_path / "eval" / "mae.md").read_text()
    assert "| coarse |" in table and "| refined |" in table and "mm" in table
    rows = (tmp_path / "eval" / "mae.csv").read_text().splitlines()
    assert rows[0].startswith("model,resolution,images,eq4_mae,") and len(rows) == 3
    assert rows[1].startswith("coarse,32,")  # the file's resolution, not the model's 8 px
    heat = sorted((tmp_path / "eval" / "heatmaps").glob("heatmap_*.png"))
    assert len(heat) == 2
    with h5py.File(pairs, "r") as f:
        held_out = int((f["split"][:] == TEST).sum())
    assert table.startswith(f"{held_out} held-out images at 32 px")
    assert main([str(pairs), str(tmp_path / "run" / "last.pt"), "-o", str(tmp_path / "train"),
                 "--split", "train"]) == 0
    assert " training images at 32 px" in (tmp_path / "train" / "mae.md").read_text()
    # Depth error above, normal error below, coarse | refined, 32 px tiles shown 8x.
    assert np.asarray(Image.open(heat[0])).shape == (2 * 36 * 8, 2 * 36 * 8, 3)


def test_pix2pix_baseline_trains_and_evaluates(pairs, tmp_path):
    from dce.gan.evaluate import evaluate

    s = settings(pairs, tmp_path, model="pix2pix", config="DCE|D|D", iters_per_resolution=1,
                 max_resolution=32, lr=None)
    trainer = Trainer(s, log=lambda *a: None)
    assert [(st.resolution, st.stable_iters) for st in trainer.schedule] == [(32, 4)]
    trainer.train()
    assert trainer.iteration == 4
    lines = []
    scores, _, info = evaluate(tmp_path / "last.pt", pairs, batch_size=3, log=lines.append)
    assert info["resolution"] == 32
    assert np.isfinite(scores.per_image["refined"]["eq4_mae_mm"]).all()
    n = info["images"]
    assert lines and lines[-1].startswith(f"  scored {n}/{n} images (")
    # A ready Refiner (benchmarks swap its detail stage) scores as its checkpoint does.
    from dce.gan.inference import Refiner

    again, _, _ = evaluate(Refiner(tmp_path / "last.pt"), pairs, batch_size=3)
    for model, figures in scores.per_image.items():
        for name, values in figures.items():
            np.testing.assert_array_equal(again.per_image[model][name], values)


def _ddp_rank(rank, world, port, pairs, out):
    import os

    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    trainer = Trainer(settings(pairs, out, iters_per_resolution=2, max_resolution=8),
                      log=lambda *a: None)
    trainer.train()
    torch.save({k: v.clone() for k, v in trainer.G.state_dict().items()},
               f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_on_cpu_keeps_ranks_in_step(pairs, tmp_path):
    """Two gloo processes, as torchrun would start them: the ranks end with
    identical weights and only rank 0 writes the checkpoint."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_rank, args=(2, port, str(pairs), str(tmp_path)), nprocs=2, join=True)
    a, b = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert (tmp_path / "last.pt").is_file()
    assert load_checkpoint(tmp_path / "last.pt")["iteration"] == 4


def test_tensorboard_scalars_and_images(pairs, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = Trainer(settings(pairs, tmp_path, iters_per_resolution=2, max_resolution=8,
                               log_every=1), log=lambda *a: None)
    trainer.train()
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert "g_pixel" in events.Tags()["scalars"] and "d_gp" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("g_pixel")] == [1, 2, 3, 4]
    assert len(events.Images("coarse|refined|target")) == 2  # one grid per stage


def test_learning_rate_precedence():
    """An explicit lr wins; else the cpu preset's larger step for the
    progressive network; else the model's published default (the paper's
    1e-5 for the progressive GAN, pix2pix's 2e-4)."""
    assert TrainSettings(data="p.h5", out="run", preset="cpu", lr=3e-3).uses_lr() == 3e-3
    assert TrainSettings(data="p.h5", out="run", preset="cpu").uses_lr() == 5e-4
    assert TrainSettings(data="p.h5", out="run", preset="paper").uses_lr() == 1e-5
    assert TrainSettings(data="p.h5", out="run", preset="cpu", model="pix2pix").uses_lr() == 2e-4
