"""The detail stage: its target, its crops, exact resume, refinement through
the Refiner, the evaluation at the file's resolution, and bad checkpoints."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from dce.gan.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from dce.gan.detail import DetailSettings, DetailTrainer, LocalEnhancer, crop_batch, detail_target
from dce.gan.train import Trainer, TrainSettings


def build_synthetic(world, out, **config):
    """The pair file `dce-build synthetic --workers 1` writes with these
    build options (BuildConfig fields), through the library; the world (3
    identities, seed 0) is generated first when missing, as the command does."""
    from dce.geom import build, sources
    from dce.geom.dataset import BuildConfig
    from dce.geom.synthetic import generate_world

    if not (world / "world.json").is_file():
        generate_world(world, identities=3, seed=0, workers=1)
    report = build.build(sources.synthetic_world(world), out, BuildConfig(**config),
                         command="synthetic", workers=1, progress=False, log=lambda *a: None)
    assert report.failures == []
    return out


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("detail")
    return build_synthetic(root / "world", root / "rgb.h5", size=32, poses=1,
                           channels="DCE+RGB")


@pytest.fixture(scope="module")
def global_run(pairs, tmp_path_factory):
    """A residual progressive network trained a few iterations to 16 px."""
    out = tmp_path_factory.mktemp("global")
    settings = TrainSettings(data=str(pairs), out=str(out), preset="tiny", batch_size=2,
                             workers=0, lr=1e-3, crop_pad=2, iters_per_resolution=2,
                             residual=True, log_every=1000, checkpoint_every=1000)
    Trainer(settings, log=lambda *a: None).train()
    return out / "last.pt"


def detail_settings(pairs, global_run, out, **kw):
    base = dict(data=str(pairs), out=str(out), global_checkpoint=str(global_run),
                iterations=4, batch_size=2, crop=16, width=8, blocks=2, lr=1e-3,
                log_every=1000, checkpoint_every=1000)
    base.update(kw)
    return DetailSettings(**base)


def test_detail_target_removes_planes_and_keeps_a_fine_bump():
    """High-pass of (target - base): a plane difference (what the global
    network leaves at large scale) gives 0 inside; a 1-px-wide groove far
    finer than the 4 mm sigma keeps most of its depth."""
    H = 64
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64),
                            torch.arange(H, dtype=torch.float64), indexing="ij")
    base = torch.zeros(1, H, H, dtype=torch.float64)
    plane = (0.01 * xx - 0.004 * yy)[None]
    valid = torch.ones(1, H, H, dtype=torch.bool)
    mm = torch.tensor([50.0], dtype=torch.float64)
    px = torch.tensor([1.0], dtype=torch.float64)
    out = detail_target(plane, base, valid, mm, px, 4.0)
    assert out[0, 16:-16, 16:-16].abs().max() < 1e-9
    groove = -0.002 * torch.exp(-0.5 * ((xx - 32) / 1.0) ** 2)[None]  # 0.1 mm deep
    out = detail_target(groove, base, valid, mm, px, 4.0)
    assert out[0, 32, 32] == pytest.approx(-0.1 * (1 - 1 / np.sqrt(1 + 16)), rel=5e-3)


def test_untrained_stage_adds_nothing(pairs, global_run, tmp_path):
    from dce.gan.inference import Refiner

    trainer = DetailTrainer(detail_settings(pairs, global_run, tmp_path, iterations=0),
                            log=lambda *a: None)
    trainer.train()
    coarse = np.random.default_rng(0).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    with_stage = Refiner(tmp_path / "last.pt")(coarse)
    alone = Refiner(global_run)(coarse)
    assert np.array_equal(with_stage, alone)
    # The detail stage's global network is the same network.
    assert np.array_equal(Refiner(tmp_path / "last.pt", detail=False)(coarse), alone)


def test_crops_are_a_function_of_seed_and_iteration(pairs, global_run, tmp_path):
    trainer = DetailTrainer(detail_settings(pairs, global_run, tmp_path), log=lambda *a: None)
    from dce.gan.detail import prepare_arrays

    arrays = prepare_arrays(trainer.s, trainer.refiner, trainer.device, log=lambda *a: None)
    a, b = crop_batch(arrays, trainer.s, 3), crop_batch(arrays, trainer.s, 3)
    c = crop_batch(arrays, trainer.s, 4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["inputs"], c["inputs"])
    assert a["inputs"].shape == (2, 4, 16, 16) and a["valid"].any()


def test_crops_name_their_sample_and_mirroring(pairs, global_run, tmp_path):
    """Each crop is a window of the sample it names, mirrored when flagged."""
    trainer = DetailTrainer(detail_settings(pairs, global_run, tmp_path), log=lambda *a: None)
    from dce.gan.detail import prepare_arrays

    arrays = prepare_arrays(trainer.s, trainer.refiner, trainer.device, log=lambda *a: None)
    flags = []
    for iteration in range(6):
        batch = crop_batch(arrays, trainer.s, iteration)
        for crop, k, flipped in zip(batch["inputs"], batch["sample"], batch["flipped"]):
            seen = crop.flip(-1) if flipped else crop
            windows = arrays.inputs[int(k)].unfold(1, 16, 1).unfold(2, 16, 1)  # (C, r, c, 16, 16)
            assert (windows == seen[:, None, None]).flatten(3).all(-1).all(0).any()
            flags.append(bool(flipped))
    assert any(flags) and not all(flags)


def test_stopped_and_resumed_detail_run_equals_an_uninterrupted_one(pairs, global_run,
                                                                    tmp_path):
    """Stopped (as by Ctrl-C) after 3 of 6 iterations, in the learning
    rate's decay (the last half), and resumed."""
    quiet = dict(log=lambda *a: None)
    whole = DetailTrainer(detail_settings(pairs, global_run, tmp_path / "a", iterations=6,
                                          lr_decay=0.5), **quiet)
    whole.train()
    first = DetailTrainer(detail_settings(pairs, global_run, tmp_path / "b", iterations=6,
                                          lr_decay=0.5), **quiet)
    step = first.step

    def step_then_stop_at_3(batch):
        record = step(batch)
        first.interrupted = first.iteration == 3
        return record

    first.step = step_then_stop_at_3
    first.train()
    assert first.iteration == 3
    second = DetailTrainer(detail_settings(pairs, global_run, tmp_path / "b", iterations=6,
                                           lr_decay=0.5), **quiet)
    second.resume(tmp_path / "b" / "last.pt")
    second.train()
    for key, value in whole.G.state_dict().items():
        torch.testing.assert_close(value, second.G.state_dict()[key], rtol=0, atol=0, msg=key)


def test_learning_rate_is_constant_then_falls_linearly(pairs, global_run, tmp_path):
    """8 iterations, the last quarter decaying: 1e-3 for iterations 0-6
    (iteration 6 starts the decay at full step), then 1e-3 x 1/2; the
    trainer's log records the step each iteration took."""
    import json

    from dce.gan.detail import learning_rate

    s = detail_settings(pairs, global_run, tmp_path, iterations=8, lr_decay=0.25, log_every=1)
    assert [learning_rate(s, i) for i in range(8)] == [1e-3] * 7 + [5e-4]
    s10 = detail_settings(pairs, global_run, tmp_path, iterations=10, lr=2e-3, lr_decay=0.5)
    assert [learning_rate(s10, i) for i in range(5, 10)] == pytest.approx(
        [2e-3, 1.6e-3, 1.2e-3, 0.8e-3, 0.4e-3])
    constant = detail_settings(pairs, global_run, tmp_path, iterations=8, lr_decay=0.0)
    assert {learning_rate(constant, i) for i in range(8)} == {1e-3}
    DetailTrainer(s, log=lambda *a: None).train()
    logged = [json.loads(line)["lr"] for line in open(tmp_path / "log.jsonl")]
    assert logged == [1e-3] * 7 + [5e-4]


def test_beta1_reaches_adam_and_an_older_checkpoint_resumes_with_its_own(pairs, global_run,
                                                                         tmp_path):
    """The generator's Adam takes ``beta1`` (0.9 by default); a checkpoint
    from before beta1 was a setting (none in its settings) was trained with
    0.5, so a default run refuses to resume it and a 0.5 run resumes it;
    beta1 outside [0, 1) or NaN is refused."""
    quiet = dict(log=lambda *a: None)
    first = DetailTrainer(detail_settings(pairs, global_run, tmp_path, iterations=2), **quiet)
    assert first.opt_g.param_groups[0]["betas"] == (0.9, 0.99)
    first.train()
    state = load_checkpoint(tmp_path / "last.pt")
    del state["settings"]["beta1"]
    state["opt_g"]["param_groups"][0]["betas"] = (0.5, 0.99)  # as such a run saved it
    save_checkpoint(tmp_path / "last.pt", state)
    again = DetailTrainer(detail_settings(pairs, global_run, tmp_path, iterations=4), **quiet)
    with pytest.raises(ValueError, match="beta1=0.5, now 0.9"):
        again.resume(tmp_path / "last.pt")
    older = DetailTrainer(detail_settings(pairs, global_run, tmp_path, iterations=4, beta1=0.5),
                          **quiet)
    older.resume(tmp_path / "last.pt")
    assert older.iteration == 2 and older.opt_g.param_groups[0]["betas"] == (0.5, 0.99)
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="beta1"):
            detail_settings(pairs, global_run, tmp_path, beta1=bad)


def test_resume_knows_the_global_network_by_its_weights_not_its_path(pairs, global_run,
                                                                     tmp_path):
    """A run resumes over a moved copy of its global checkpoint; a global
    network with one weight changed is refused."""
    quiet = dict(log=lambda *a: None)
    run = tmp_path / "run"
    DetailTrainer(detail_settings(pairs, global_run, run, iterations=2), **quiet).train()
    moved = tmp_path / "elsewhere" / "global.pt"
    moved.parent.mkdir()
    moved.write_bytes(Path(global_run).read_bytes())
    again = DetailTrainer(detail_settings(pairs, moved, run), **quiet)
    again.resume(run / "last.pt")
    assert again.iteration == 2
    state = load_checkpoint(moved)
    name = next(iter(state["G"]))
    state["G"][name] = state["G"][name] + 1e-3
    save_checkpoint(moved, state)
    other = DetailTrainer(detail_settings(pairs, moved, run), **quiet)
    with pytest.raises(ValueError, match="another global network than .*global.pt"):
        other.resume(run / "last.pt")


def test_adversarial_stage_trains(pairs, global_run, tmp_path):
    trainer = DetailTrainer(detail_settings(pairs, global_run, tmp_path,
                                            adversarial_weight=0.01), log=lambda *a: None)
    record = trainer.train()
    assert trainer.iteration == 4 and np.isfinite(record["d_loss"])


def test_loss_falls_when_overfitting_one_crop(pairs, global_run, tmp_path):
    """With the batch fixed, the detail L1 falls well below its start."""
    trainer = DetailTrainer(detail_settings(pairs, global_run, tmp_path, lr=3e-3),
                            log=lambda *a: None)
    from dce.gan.detail import prepare_arrays

    arrays = prepare_arrays(trainer.s, trainer.refiner, trainer.device, log=lambda *a: None)
    batch = crop_batch(arrays, trainer.s, 0)
    first = trainer.step(batch)["pixel"]
    for _ in range(150):
        last = trainer.step(batch)["pixel"]
    assert first > 0 and last < 0.3 * first


def test_enhancer_is_fully_convolutional():
    net = LocalEnhancer(4, width=8, blocks=2)
    torch.nn.init.normal_(net.out.weight)
    x = torch.randn(1, 4, 40, 40)
    assert net(x).shape == (1, 1, 40, 40)
    with pytest.raises(ValueError, match="even"):
        net(torch.randn(1, 4, 33, 33))


def test_dce_eval_scores_a_detail_stage_at_the_file_resolution(pairs, global_run, tmp_path):
    from dce.cli.evaluate import main

    trainer = DetailTrainer(detail_settings(pairs, global_run, tmp_path / "d"),
                            log=lambda *a: None)
    trainer.train()
    assert main([str(pairs), str(tmp_path / "d" / "last.pt"), "-o", str(tmp_path / "eval"),
                 "--heatmaps", "1"]) == 0
    with open(tmp_path / "eval" / "mae.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[:9] == ["model", "resolution", "images", "eq4_mae", "eq4_mae_mm",
                                 "face_mae_mm", "normal_error_deg", "detail_corr", "roughness"]
    assert [r["model"] for r in rows] == ["coarse", "refined"]
    assert rows[0]["resolution"] == "32" and float(rows[0]["detail_corr"]) == 0.0
    assert (tmp_path / "eval" / "heatmaps" / "shaded_000.png").is_file()
    # Pooled evaluation is refused for a detail stage trained at 32 px...
    assert main([str(pairs), str(tmp_path / "d" / "last.pt"), "-o", str(tmp_path / "e2"),
                 "--resolution", "16"]) == 2
    # ... and allowed for its global network alone.
    assert main([str(pairs), str(tmp_path / "d" / "last.pt"), "-o", str(tmp_path / "e3"),
                 "--resolution", "16", "--no-detail"]) == 0


def test_a_mirror_averaged_stage_adds_the_mirrored_detail_to_a_mirrored_face():
    """The stage alone is not mirror-equivariant; averaged with its mirror it
    is exactly."""
    from dce.gan.detail import MirrorAveraged

    torch.manual_seed(0)
    net = LocalEnhancer(4, width=8, blocks=2)
    torch.nn.init.normal_(net.out.weight)
    x = torch.randn(2, 4, 24, 24)
    with torch.no_grad():
        assert not torch.allclose(net(x.flip(-1)), net(x).flip(-1), atol=1e-3)
        averaged = MirrorAveraged(net)
        assert torch.allclose(averaged(x.flip(-1)), averaged(x).flip(-1), atol=1e-6)


class _Mirrored(torch.nn.Module):
    """A network run on the mirrored image, its output mirrored back."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.flip(-1)).flip(-1)


def test_refiner_mirror_averages_a_stage_trained_on_mirrored_crops(pairs, global_run,
                                                                   tmp_path, capsys):
    """The detail the Refiner adds with mirror_average is the mean of the
    stage's detail and its detail on the mirrored image, mirrored back;
    dce-eval and dce-refine say so. Refused, naming the file: a global
    network alone, a stage left out, a stage trained without mirrored crops."""
    from dce.cli import refine
    from dce.cli.evaluate import main
    from dce.gan.inference import Refiner

    quiet = dict(log=lambda *a: None)
    stage = tmp_path / "d" / "last.pt"
    DetailTrainer(detail_settings(pairs, global_run, stage.parent, iterations=12), **quiet).train()
    coarse = np.stack([s["coarse"] for s in _samples(pairs, 2)])[:, :3]  # DCE
    alone = Refiner(stage, detail=False)(coarse)
    plain = Refiner(stage)(coarse)
    flipped_refiner = Refiner(stage)
    flipped_refiner.enhancer = _Mirrored(flipped_refiner.enhancer)
    flipped = flipped_refiner(coarse)
    averaged = Refiner(stage, mirror_average=True)(coarse)
    assert not np.allclose(plain, alone) and not np.allclose(flipped, plain)
    np.testing.assert_allclose(averaged - alone, 0.5 * ((plain - alone) + (flipped - alone)),
                               atol=1e-6)

    assert main([str(pairs), str(stage), "-o", str(tmp_path / "eval"), "--mirror-average"]) == 0
    assert "detail stage, mirror-averaged" in (tmp_path / "eval" / "mae.md").read_text()
    capsys.readouterr()
    assert refine.main([str(stage), "--pairs", str(pairs), "--mirror-average",
                        "-o", str(tmp_path / "refined")]) == 0
    assert "+ detail stage, mirror-averaged)" in capsys.readouterr().out
    with pytest.raises(ValueError, match=r"global.*last\.pt.*not a dce-train-detail"):
        Refiner(global_run, mirror_average=True)
    with pytest.raises(ValueError, match=r"d/last\.pt.*left out"):
        Refiner(stage, detail=False, mirror_average=True)
    assert main([str(pairs), str(global_run), "-o", str(tmp_path / "e2"),
                 "--mirror-average"]) == 2
    unmirrored = tmp_path / "no_flip"
    DetailTrainer(detail_settings(pairs, global_run, unmirrored, flip=False), **quiet).train()
    with pytest.raises(ValueError, match=r"no_flip/last\.pt.*--no-flip"):
        Refiner(unmirrored / "last.pt", mirror_average=True)


def test_a_detail_stage_without_its_global_network_is_refused(pairs, global_run, tmp_path):
    from dce.gan.inference import Refiner

    trainer = DetailTrainer(detail_settings(pairs, global_run, tmp_path, iterations=0),
                            log=lambda *a: None)
    trainer.train()
    state = load_checkpoint(tmp_path / "last.pt")
    del state["global"]
    save_checkpoint(tmp_path / "broken.pt", state)
    with pytest.raises(CheckpointError, match="broken.pt.*without its global network"):
        Refiner(tmp_path / "broken.pt")
    state = load_checkpoint(tmp_path / "last.pt")
    state["depth_mm_per_unit"] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", state)
    with pytest.raises(CheckpointError, match="nan.pt.*depth scale nan"):
        Refiner(tmp_path / "nan.pt")
    save_checkpoint(tmp_path / "list.pt", [1, 2])
    with pytest.raises(CheckpointError, match="list.pt"):
        Refiner(tmp_path / "list.pt")


def test_checkpoint_channels_that_the_file_lacks_are_refused(pairs, global_run, tmp_path):
    """A colour model on a file without colour: the message names both."""
    from dce.cli.evaluate import main

    rgb_run = tmp_path / "rgb"
    Trainer(TrainSettings(data=str(pairs), out=str(rgb_run), config="DCE+RGB|D|DCE",
                          preset="tiny", batch_size=2, workers=0, iters_per_resolution=1,
                          max_resolution=4, log_every=1000), log=lambda *a: None).train()
    plain = tmp_path / "plain.h5"
    world = pairs.parent / "world"
    build_synthetic(world, plain, size=32, poses=0)
    from dce.gan.evaluate import evaluate

    with pytest.raises(ValueError, match=r"plain\.h5.*r', 'g', 'b.*rgb/last\.pt|plain\.h5.*"
                                         r"rgb/last\.pt"):
        evaluate(rgb_run / "last.pt", plain)
    assert main([str(plain), str(rgb_run / "last.pt"), "-o", str(tmp_path / "e")]) == 2
    from dce.gan.h5format import PairFileError

    with pytest.raises(PairFileError, match=r"plain\.h5.*rgb/last\.pt"):
        DetailTrainer(detail_settings(plain, rgb_run / "last.pt", tmp_path / "d"))


@pytest.fixture(scope="module")
def colour_run(pairs, tmp_path_factory):
    """A residual DCE+RGB progressive network trained a few iterations to 8 px."""
    out = tmp_path_factory.mktemp("colour")
    Trainer(TrainSettings(data=str(pairs), out=str(out), config="DCE+RGB|D|DCE", preset="tiny",
                          batch_size=2, workers=0, iters_per_resolution=1, max_resolution=8,
                          residual=True, log_every=1000), log=lambda *a: None).train()
    return out / "last.pt"


def test_a_colour_stage_reads_the_photos_shading(pairs, colour_run, tmp_path):
    """Over a colour network the stage has one input more (the shading
    residual) unless --no-shading; both refine through the Refiner; a
    checkpoint from before the shading input (no 'shading' in its settings)
    loads as one without it, refines as before, and is not resumed by a run
    with it."""
    from dce.gan.inference import Refiner

    quiet = dict(log=lambda *a: None)
    coarse = np.stack([s["coarse"] for s in _samples(pairs, 2)])
    for shading, channels in ((True, 6 + 1 + 1), (False, 6 + 1)):
        out = tmp_path / str(shading)
        trainer = DetailTrainer(detail_settings(pairs, colour_run, out, shading=shading), **quiet)
        assert trainer.G.front.in_channels == channels
        trainer.train()
        refined = Refiner(out / "last.pt")(coarse)
        assert refined.shape == (2, 3, 32, 32) and np.isfinite(refined).all()
    state = load_checkpoint(tmp_path / "False" / "last.pt")
    del state["settings"]["shading"]
    save_checkpoint(tmp_path / "False" / "last.pt", state)
    assert np.array_equal(Refiner(tmp_path / "False" / "last.pt")(coarse), refined)
    again = DetailTrainer(detail_settings(pairs, colour_run, tmp_path / "False", iterations=8),
                          **quiet)
    with pytest.raises(ValueError, match="shading=False, now True"):
        again.resume(tmp_path / "False" / "last.pt")


def test_a_stage_refines_with_the_shading_fit_it_was_trained_on(pairs, colour_run, tmp_path):
    """A stage trained on the quadratic fit's residual refines with it; a
    checkpoint from before the fit was a setting (no 'shading_fit') is one
    of those; read through the Lambert fit the same weights give other
    images; a Lambert run does not resume it."""
    from dce.gan.inference import Refiner

    quiet = dict(log=lambda *a: None)
    coarse = np.stack([s["coarse"] for s in _samples(pairs, 2)])
    out = tmp_path / "quadratic"
    DetailTrainer(detail_settings(pairs, colour_run, out, shading_fit="quadratic"),
                  **quiet).train()
    refined = Refiner(out / "last.pt")(coarse)
    state = load_checkpoint(out / "last.pt")
    del state["settings"]["shading_fit"]
    save_checkpoint(out / "last.pt", state)
    assert np.array_equal(Refiner(out / "last.pt")(coarse), refined)
    state["settings"]["shading_fit"] = "lambert"
    save_checkpoint(tmp_path / "as_lambert.pt", state)
    assert not np.allclose(Refiner(tmp_path / "as_lambert.pt")(coarse), refined)
    again = DetailTrainer(detail_settings(pairs, colour_run, out, iterations=8), **quiet)
    with pytest.raises(ValueError, match="shading_fit='quadratic', now 'lambert'"):
        again.resume(out / "last.pt")


def _samples(path, n):
    from dce.gan.data import PairDataset

    data = PairDataset(path, "train", ("depth", "curvature", "elevation", "r", "g", "b"),
                       ("depth",), augment=False)
    return [{"coarse": item["coarse"].numpy()} for item in data.fetch(range(n))]


def test_denoised_target_drops_pixel_noise_and_keeps_creases():
    """With ``denoise_mm`` the target loses the independent pixel noise (a
    0.5 mm blur averages ~3 pixels of 0.4 mm: std down > 2x) while a 2 mm wide
    groove keeps most of its depth."""
    H = 96
    g = torch.Generator().manual_seed(0)
    xx = torch.arange(H, dtype=torch.float64).expand(H, H)
    groove = -0.1 * torch.exp(-0.5 * ((xx - 48) / 5.0) ** 2)  # mm, 2 mm wide at 0.4 mm/px
    noise = 0.05 * torch.randn(H, H, generator=g, dtype=torch.float64)
    target = ((groove + noise) / 50.0)[None]
    base = torch.zeros_like(target)
    valid = torch.ones(1, H, H, dtype=torch.bool)
    mm, px = torch.tensor([50.0], dtype=torch.float64), torch.tensor([0.4], dtype=torch.float64)
    plain = detail_target(target, base, valid, mm, px, 4.0)
    clean = detail_target(target, base, valid, mm, px, 4.0, denoise_mm=0.5)
    inner = (0, slice(30, 66), slice(0, 30))  # away from the groove: noise only
    assert clean[inner].std() < 0.5 * plain[inner].std()
    # The groove alone: a 1.25 px blur of a Gaussian of 5 px keeps 5 / sqrt(25 + 1.5625) of
    # its depth, less the 10 px high-pass's share 5 / sqrt(125), as without the blur.
    only = detail_target((groove / 50.0)[None], base, valid, mm, px, 4.0, denoise_mm=0.5)
    expected = -0.1 * (5 / np.sqrt(25 + 1.5625) - 5 / np.sqrt(125))
    assert float(only[0, 48, 48]) == pytest.approx(expected, rel=1e-2)
