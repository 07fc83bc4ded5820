"""Progressive generator/discriminator: shapes, fade-in semantics, schedule,
parameter counts against the paper's Tables 1-2, initialization, lean import."""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from dce.gan.networks import (
    RESOLUTIONS,
    Discriminator,
    EqualConv2d,
    EqualLinear,
    Generator,
    PixelNorm,
    Stage,
    count_parameters,
    fade_reals,
    paper_schedule,
    parameter_counts,
    resample,
    stage_at,
)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    return Generator(1, 1, max_resolution=256), Discriminator(2, max_resolution=256)


def test_shapes_every_stage(nets):
    g, d = nets
    torch.manual_seed(1)
    with torch.no_grad():
        for r in RESOLUTIONS:
            for alpha in ((1.0,) if r == 256 else (0.5,)):
                x = torch.randn(1, 1, r, r)
                assert g(x, r, alpha).shape == (1, 1, r, r)
                assert d(torch.randn(1, 2, r, r), r, alpha).shape == (1,)
    small = Generator(3, 1, max_resolution=16)
    assert small(torch.randn(2, 3, 16, 16), 16, 0.3).shape == (2, 1, 16, 16)


def test_bad_input_is_reported(nets):
    g, d = nets
    with pytest.raises(ValueError, match="resolution 12 must be one of"):
        g(torch.randn(1, 1, 12, 12), 12, 1.0)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        g(torch.randn(1, 1, 16, 16), 8, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        d(torch.randn(1, 2, 8, 8), 8, 1.5)
    with pytest.raises(ValueError, match="resolution 64 must be one of"):
        Generator(1, 1, max_resolution=32)(torch.randn(1, 1, 64, 64), 64, 1.0)


@pytest.mark.parametrize("r", [8, 16, 32, 64])
def test_alpha0_is_previous_stage_resampled(nets, r):
    g, d = nets
    torch.manual_seed(r)
    x = torch.randn(2, 1, r, r)
    c = torch.randn(2, 2, r, r)
    # Independent second route: average pool by reshape, nearest up by repeat.
    x_half = x.reshape(2, 1, r // 2, 2, r // 2, 2).mean(dim=(3, 5))
    c_half = c.reshape(2, 2, r // 2, 2, r // 2, 2).mean(dim=(3, 5))
    with torch.no_grad():
        grown = g(x, r, 0.0)
        previous = g(x_half, r // 2, 1.0)
        # Tolerance: the two poolings round differently and ~20 layers amplify it.
        torch.testing.assert_close(grown, previous.repeat_interleave(2, 2).repeat_interleave(2, 3),
                                   rtol=1e-4, atol=2e-5)
        torch.testing.assert_close(d(c, r, 0.0), d(c_half, r // 2, 1.0), rtol=1e-4, atol=2e-5)
        # ... and the new layers do take part for alpha > 0.
        assert not torch.allclose(g(x, r, 0.5), grown, atol=1e-4)


def test_alpha1_uses_only_new_layers():
    torch.manual_seed(3)
    g, d = Generator(2, 1, max_resolution=16), Discriminator(3, max_resolution=16)
    x, c = torch.randn(2, 2, 16, 16), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        before_g, before_d = g(x, 16, 1.0), d(c, 16, 1.0)
        mid_g = g(x, 16, 0.5)
        for module in (g.decoder.to_rgb["8"], g.encoder.from_rgb["8"], d.encoder.from_rgb["8"]):
            for p in module.parameters():
                p.add_(1.0)
        assert torch.equal(g(x, 16, 1.0), before_g)
        assert torch.equal(d(c, 16, 1.0), before_d)
        assert not torch.allclose(g(x, 16, 0.5), mid_g)


def test_fade_is_linear_in_alpha():
    # Decoder output and encoder input are lerps; with the encoder fixed (alpha=1
    # on its side) the output is affine in the decoder's alpha.
    torch.manual_seed(4)
    g = Generator(1, 1, max_resolution=16)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        z = g.encoder(x, 16, 1.0)
        y0, y1, yq = (g.decoder(z, 16, a) for a in (0.0, 1.0, 0.25))
    torch.testing.assert_close(yq, 0.75 * y0 + 0.25 * y1, rtol=1e-5, atol=1e-6)


def test_paper_schedule_and_stage_at():
    s = paper_schedule()
    assert [st.resolution for st in s] == [4, 8, 16, 32, 64, 128, 256]
    assert s[0] == Stage(4, 10000, 0)
    assert all(st == Stage(st.resolution, 5000, 5000) for st in s[1:])
    assert sum(st.stable_iters + st.fade_iters for st in s) == 70000
    # Hand-computed: stage 4 is iterations 0..9999, stage 8 fades over 10000..14999.
    assert stage_at(s, 0) == (0, 1.0)
    assert stage_at(s, 9999) == (0, 1.0)
    assert stage_at(s, 10000) == (1, 0.0)
    assert stage_at(s, 12500) == (1, 0.5)
    assert stage_at(s, 14999) == (1, 4999 / 5000)
    assert stage_at(s, 15000) == (1, 1.0)
    assert stage_at(s, 20000) == (2, 0.0)
    assert stage_at(s, 21000) == (2, 0.2)
    assert stage_at(s, 69999) == (6, 1.0)
    assert stage_at(s, 70000) == (6, 1.0)
    # The paper's example: iteration 5 of a 10-iteration fade gives alpha 0.5.
    tiny = [Stage(4, 3, 0), Stage(8, 2, 10)]
    assert stage_at(tiny, 3 + 5) == (1, 0.5)
    assert paper_schedule(100, 8, 32) == [Stage(8, 100, 0), Stage(16, 50, 50), Stage(32, 50, 50)]
    with pytest.raises(ValueError, match="start"):
        paper_schedule(start=3)
    with pytest.raises(ValueError, match="iteration"):
        stage_at(s, -1)


def test_parameter_counts_match_tables():
    torch.manual_seed(0)
    g, d = Generator(3, 3), Discriminator(3)
    counts = parameter_counts(g, d)
    print("\nparameters (blocks only, without fromRGB/toRGB):", counts,
          {k: f"{v / 2**20:.3f} Mi" for k, v in counts.items()})
    # Table 1, weights, column by column: 3x3 convs 3->32, 32->32, 32->64 at 256,
    # 64->64, 64->128 at 128, nine 128->128 (64..4), one 4x4 128->128.
    enc_w = 9 * (3 * 32 + 32 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 9 * 128 * 128) + 16 * 128 * 128
    enc_b = 32 + 32 + 64 + 64 + 128 + 10 * 128
    assert enc_w == 1728352
    assert counts["encoder"] == enc_w + enc_b
    # Table 2 mirrors it (biases: 128 x 10, 64, 64, 32, 32, 3).
    assert counts["decoder"] == enc_w + 10 * 128 + 64 + 64 + 32 + 32 + 3
    assert counts["discriminator"] == enc_w + enc_b + 128 + 1
    # The paper's "1.65M" (1.728e6 / 2**20 = 1.648); within 5 % as a decimal count too.
    for v in counts.values():
        assert abs(v / 2**20 - 1.65) < 0.01
        assert abs(v / 1.65e6 - 1) < 0.10
    # The stage layers add little: 7 fromRGB + 7 toRGB 1x1 convs.
    assert count_parameters(g) - counts["encoder"] - counts["decoder"] < 5000


def test_truncated_normal_init():
    torch.manual_seed(5)
    for equalized in (False, True):
        g = Generator(3, 3, max_resolution=32, equalized_lr=equalized)
        d = Discriminator(4, max_resolution=32, equalized_lr=equalized)
        layers = [m for m in list(g.modules()) + list(d.modules())
                  if isinstance(m, (EqualConv2d, EqualLinear))]
        linear_outputs = {id(m) for m in g.decoder.to_rgb.values()} | {id(d.fc)}
        assert len(layers) > 20
        for m in layers:
            w = m.weight.detach()
            fan_in = w[0].numel()
            gain = 1.0 if id(m) in linear_outputs else 2 ** 0.5
            std = 1.0 if equalized else gain / fan_in ** 0.5
            assert w.abs().max() <= 2 * std + 1e-7
            assert torch.count_nonzero(m.bias) == 0
        big = g.encoder.blocks["32"][0][0].weight.detach()  # 147k weights 128->128 3x3
        std = 1.0 if equalized else (2 / (9 * 128)) ** 0.5
        # Normal truncated at 2 sd has sd 0.880 sd; most mass is not at the bounds.
        assert abs(big.std().item() / std - 0.880) < 0.01
        assert big.abs().max() > 1.9 * std


def test_equalized_lr_runs_and_matches_plain_scale():
    torch.manual_seed(6)
    g = Generator(1, 1, max_resolution=32, equalized_lr=True)
    d = Discriminator(2, max_resolution=32, equalized_lr=True)
    x = torch.randn(2, 1, 32, 32)
    y = g(x, 32, 0.7)
    score = d(torch.cat([x, y], 1), 32, 0.7)
    score.sum().backward()
    assert y.shape == (2, 1, 32, 32) and score.shape == (2,)
    assert all(p.grad is not None for p in g.encoder.blocks.parameters())
    # Runtime He scaling: the conv equals a plain conv with weight * gain / sqrt(fan_in).
    conv = g.encoder.blocks["16"][0][0]
    h = torch.randn(1, 128, 5, 5)
    expected = F.conv2d(h, conv.weight * (2 / (9 * 128)) ** 0.5, conv.bias, padding=1)
    torch.testing.assert_close(conv(h), expected)


def test_pixel_norm():
    x = torch.tensor([[[[3.0]], [[4.0]]]])  # one pixel, channels (3, 4): rms = sqrt(12.5)
    torch.testing.assert_close(PixelNorm()(x), x / 12.5 ** 0.5)


def test_resample_and_fade_reals():
    img = torch.arange(16.0).reshape(1, 1, 4, 4)
    # Hand-computed 2x2 box means of the 0..15 raster.
    torch.testing.assert_close(resample(img, 2), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    torch.testing.assert_close(resample(img, 1), torch.tensor([[[[7.5]]]]))
    assert resample(img, 4) is img
    with pytest.raises(ValueError, match="3x3"):
        resample(img, 3)
    faded = fade_reals(img, 0.25)
    coarse = torch.tensor([[2.5, 2.5, 4.5, 4.5], [2.5, 2.5, 4.5, 4.5],
                           [10.5, 10.5, 12.5, 12.5], [10.5, 10.5, 12.5, 12.5]])
    torch.testing.assert_close(faded[0, 0], 0.75 * coarse + 0.25 * img[0, 0])
    assert fade_reals(img, 1.0) is img


def test_import_is_lean():
    code = ("import sys, dce.gan.networks\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('igl', 'pymeshlab', 'numba', 'face_alignment', 'scipy') or m.startswith('dce.geom')]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_residual_generator_starts_at_the_coarse_image_inside_its_support():
    """Untrained, the residual generator returns the routed input channels
    where the support (depth) channel is surface and background elsewhere;
    once its toRGB layers are non-zero it adds a correction there only."""
    torch.manual_seed(0)
    G = Generator(3, 2, 32, skip=[(0, 0), (1, 2)], support=0)
    x = torch.rand(2, 3, 16, 16) * 1.5 - 0.5  # surface values, well above background
    x[:, 0, :4] = -1.0  # background rows of the depth channel
    inside = (x[:, :1] > -1.0).expand(-1, 2, -1, -1)
    expected = torch.where(inside, x[:, [0, 2]], torch.full_like(x[:, :2], -1.0))
    torch.testing.assert_close(G(x, 16, 0.5), expected, rtol=0, atol=0)
    with torch.no_grad():
        for layer in G.decoder.to_rgb.values():
            layer.bias.fill_(0.25)
    out = G(x, 16, 0.5)
    torch.testing.assert_close(out[inside], expected[inside] + 0.25)
    assert (out[~inside] == -1.0).all()
