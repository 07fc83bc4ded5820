"""WGAN-GP losses, the seven channel configurations and the pix2pix baseline."""
import math

import numpy as np
import pytest
import torch

from dce.gan import configs, losses, pix2pix


class TinyCritic(torch.nn.Module):
    """Conditional critic on 1x4x4 images: conv -> tanh -> linear (smooth, so
    central differences are accurate)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)
        self.fc = torch.nn.Linear(3 * 16, 1)

    def forward(self, condition, x):
        h = torch.tanh(self.conv(torch.cat([condition, x], 1)))
        return self.fc(h.flatten(1)).squeeze(1)


def _tiny_batch(dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    real, fake, cond = (torch.rand(3, 1, 4, 4, generator=g, dtype=dtype) * 2 - 1
                        for _ in range(3))
    return real, fake, cond


def test_gradient_penalty_matches_central_differences():
    torch.manual_seed(0)
    critic = TinyCritic().double()
    real, fake, cond = _tiny_batch()
    u = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    gp = losses.gradient_penalty(critic, real, fake, cond, lam=10.0, u=u).item()

    # Independent: d critic / d x by central differences at x_hat, one pixel at a time.
    x_hat = u.view(3, 1, 1, 1) * real + (1 - u.view(3, 1, 1, 1)) * fake
    h = 1e-5
    grads = np.zeros((3, 16))
    with torch.no_grad():
        for k in range(16):
            e = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
            e.view(-1)[k] = h
            grads[:, k] = ((critic(cond, x_hat + e) - critic(cond, x_hat - e)) / (2 * h)).numpy()
    expected = 10.0 * np.mean((np.linalg.norm(grads, axis=1) - 1.0) ** 2)
    assert expected > 1e-3  # a non-trivial penalty
    assert gp == pytest.approx(expected, rel=1e-6)


def test_gradient_penalty_linear_critic_is_exact():
    # D(c, x) = <w, x>: grad = w everywhere, penalty = lam * (||w|| - 1)^2.
    w = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    w.view(-1)[:2] = torch.tensor([3.0, 4.0], dtype=torch.float64)
    real, fake, cond = _tiny_batch()
    gp = losses.gradient_penalty(lambda c, x: (x * w).sum((1, 2, 3)), real, fake, cond, lam=2.0)
    assert gp.item() == pytest.approx(2.0 * (5.0 - 1.0) ** 2, rel=1e-12)


def test_gradient_penalty_seeded_u_and_zero_gradient():
    torch.manual_seed(0)
    critic = TinyCritic().double()
    real, fake, cond = _tiny_batch()
    a = losses.gradient_penalty(critic, real, fake, cond, generator=torch.Generator().manual_seed(5))
    b = losses.gradient_penalty(critic, real, fake, cond, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item()
    # D = w * sum(x^2) has zero gradient at x_hat = 0: penalty lam * 1, and the
    # double backward through the norm stays finite (no NaN from sqrt(0)).
    w = torch.nn.Parameter(torch.tensor(0.5))
    zeros = torch.zeros(2, 1, 4, 4)
    gp = losses.gradient_penalty(lambda c, x: w * x.pow(2).sum((1, 2, 3)), zeros, zeros, zeros)
    gp.backward()
    assert gp.item() == pytest.approx(10.0, rel=1e-5)
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_gradient_penalty_backpropagates_into_critic():
    torch.manual_seed(0)
    critic = TinyCritic()
    real, fake, cond = (t.float() for t in _tiny_batch())
    gp = losses.gradient_penalty(critic, real, fake, cond)
    assert gp.dtype == torch.float32
    gp.backward()
    # Every parameter that shapes dD/dx gets a finite, non-zero gradient (the
    # last bias does not shape it and gets none).
    for p in (critic.conv.weight, critic.conv.bias, critic.fc.weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_discriminator_loss_by_hand():
    d_real = torch.tensor([1.0, 3.0])
    d_fake = torch.tensor([-1.0, 0.0, 2.0])
    gp = torch.tensor(0.25)
    loss, parts = losses.discriminator_loss(d_real, d_fake, gp)
    # mean fake 1/3, mean real 2
    assert loss.item() == pytest.approx(1 / 3 - 2 + 0.25)
    assert parts["wasserstein"] == pytest.approx(2 - 1 / 3)
    loss, parts = losses.discriminator_loss(d_real, d_fake, gp, drift=0.001)
    assert loss.item() == pytest.approx(1 / 3 - 2 + 0.25 + 0.001 * (1 + 9) / 2)
    assert parts["drift"] == pytest.approx(0.005)


def test_generator_loss_by_hand():
    target = torch.zeros(1, 3, 2, 2)
    fake = torch.zeros(1, 3, 2, 2)
    fake[0, 0] = 0.4          # depth off by 0.4 everywhere
    fake[0, 2, 0, 0] = 1.2    # elevation off by 1.2 at one pixel
    d_fake = torch.tensor([2.0, 4.0])
    loss, parts = losses.generator_loss(d_fake, fake, target, [0], kappa=1e-5)
    assert parts["pixel"] == pytest.approx(0.4)
    assert parts["adversarial"] == pytest.approx(-3.0)
    assert loss.item() == pytest.approx(0.4 - 3e-5)
    loss, parts = losses.generator_loss(d_fake, fake, target, [0, 1, 2], kappa=3e-5)
    assert parts["pixel"] == pytest.approx((4 * 0.4 + 1.2) / 12)
    assert loss.item() == pytest.approx((4 * 0.4 + 1.2) / 12 - 9e-5)
    # Masked: only the two pixels of the left column count, over 3 channels.
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, :, 0] = 1.0
    loss, parts = losses.generator_loss(d_fake, fake, target, [0, 1, 2], kappa=0.0, mask=mask)
    assert parts["pixel"] == pytest.approx((2 * 0.4 + 1.2) / 6)


def test_kappa():
    assert configs.kappa(configs.get_config("D|D|D")) == pytest.approx(1e-5)
    assert configs.kappa(configs.get_config("DCE|D|DCE")) == pytest.approx(3e-5)
    assert configs.kappa(configs.get_config("DCE+RGB|D|D")) == pytest.approx(1e-5)


# name: (generator in, generator out, discriminator input = condition + image, pixel loss)
EXPECTED = {
    "D|D|D": (1, 1, 2, 1),
    "DCE|D|D": (3, 1, 2, 1),
    "DCE|DCE|DCE": (3, 3, 6, 3),
    "DCE|D|DCE": (3, 3, 2, 3),
    "DCE+RGB|D|D": (6, 1, 2, 1),
    "DCE+RGB|DCE|DCE": (6, 3, 6, 3),
    "DCE+RGB|D|DCE": (6, 3, 2, 3),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_configs_channel_counts(name):
    cfg = configs.get_config(name)
    g_in, g_out, d_in, pix = EXPECTED[name]
    assert (len(cfg.generator_in), len(cfg.generator_out), cfg.discriminator_channels,
            len(cfg.pixel_loss)) == (g_in, g_out, d_in, pix)
    assert cfg.generator_out[0] == "depth"
    assert not set(cfg.generator_out) & {"r", "g", "b"}
    # The index helpers pick the named channels.
    assert [cfg.generator_in[i] for i in cfg.condition_idx] == list(cfg.discriminator)
    assert [cfg.generator_out[i] for i in cfg.discriminator_idx] == list(cfg.discriminator)
    assert [cfg.generator_out[i] for i in cfg.pixel_idx] == list(cfg.pixel_loss)


def test_config_names_and_paper_choice():
    assert set(configs.CONFIGS) == set(EXPECTED)
    cfg = configs.get_config(" DCE | D | DCE ")
    assert cfg is configs.CONFIGS[configs.DEFAULT_CONFIG]
    assert cfg.discriminator == ("depth",)
    assert cfg.generator_out == ("depth", "curvature", "elevation")
    with pytest.raises(ValueError, match=r"unknown channel configuration 'DCE\|D'.*'D\|D\|D'"):
        configs.get_config("DCE|D")


def test_channel_indices():
    file_channels = ["depth", "curvature", "elevation", "r", "g", "b"]
    assert configs.channel_indices(("elevation", "depth"), file_channels) == [2, 0]
    cfg = configs.get_config("DCE+RGB|D|DCE")
    assert configs.channel_indices(cfg.generator_in, file_channels) == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"pairs\.h5: .*lacks \['r', 'g', 'b'\].*colour"):
        configs.channel_indices(cfg.generator_in, ["depth", "curvature", "elevation"],
                                source="pairs.h5")


def test_unet_shapes_and_dropout():
    torch.manual_seed(0)
    net = pix2pix.UnetGenerator(6, 3, num_downs=6, ngf=8).eval()
    y = net(torch.rand(2, 6, 64, 64) * 2 - 1)
    assert y.shape == (2, 3, 64, 64)
    assert y.abs().max() < 1
    full = pix2pix.UnetGenerator(3, 3)  # unet_256: 8 levels, 3 dropout levels
    assert sum(isinstance(m, torch.nn.Dropout) for m in full.modules()) == 3
    with pytest.raises(ValueError, match="divisible by 64"):
        net(torch.zeros(1, 6, 48, 48))


def test_patchgan_output_maps():
    torch.manual_seed(0)
    d = pix2pix.PatchDiscriminator(2)
    with torch.no_grad():
        assert d(torch.zeros(1, 1, 256, 256), torch.zeros(1, 1, 256, 256)).shape == (1, 1, 30, 30)
        assert d(torch.zeros(2, 1, 64, 64), torch.zeros(2, 1, 64, 64)).shape == (2, 1, 6, 6)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    # C64-C128-C256-C512-1, all 4x4; init N(0, 0.02).
    assert [m.out_channels for m in convs] == [64, 128, 256, 512, 1]
    assert all(m.kernel_size == (4, 4) for m in convs)
    assert convs[3].weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_pix2pix_losses_by_hand():
    logits = torch.tensor([[0.0, 2.0]])
    loss, parts = pix2pix.pix2pix_discriminator_loss(logits, -logits)
    # BCE(z, 1) = log(1 + e^-z); BCE(-z, 0) = log(1 + e^-z) too.
    per = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert loss.item() == pytest.approx(0.5 * (per + per))
    fake = torch.full((1, 2, 2, 2), 0.1)
    target = torch.zeros(1, 2, 2, 2)
    loss, parts = pix2pix.pix2pix_generator_loss(torch.zeros(1, 1, 3, 3), fake, target)
    assert parts["adversarial"] == pytest.approx(math.log(2))
    assert loss.item() == pytest.approx(math.log(2) + 100 * 0.1)


def test_pix2pix_one_step():
    torch.manual_seed(0)
    cfg = configs.get_config("DCE|D|DCE")
    G = pix2pix.UnetGenerator(len(cfg.generator_in), len(cfg.generator_out), num_downs=6, ngf=8)
    D = pix2pix.PatchDiscriminator(cfg.discriminator_channels, ndf=8)
    opt_g = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    coarse = torch.rand(2, 3, 64, 64) * 2 - 1
    target = (coarse + 0.1 * torch.randn_like(coarse)).clamp(-1, 1)
    cond = coarse[:, cfg.condition_idx]
    d_idx = cfg.discriminator_idx
    before = [p.detach().clone() for p in G.parameters()]

    fake = G(coarse)
    d_loss, _ = pix2pix.pix2pix_discriminator_loss(D(cond, target[:, d_idx]),
                                                   D(cond, fake.detach()[:, d_idx]))
    opt_d.zero_grad()
    d_loss.backward()
    opt_d.step()
    g_loss, parts = pix2pix.pix2pix_generator_loss(D(cond, fake[:, d_idx]), fake, target,
                                                   cfg.pixel_idx)
    opt_g.zero_grad()
    g_loss.backward()
    opt_g.step()

    assert math.isfinite(d_loss.item()) and math.isfinite(g_loss.item())
    assert all(torch.isfinite(p).all() for p in list(G.parameters()) + list(D.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before, G.parameters()))
    with torch.no_grad():
        _, after = pix2pix.pix2pix_generator_loss(D(cond, G(coarse)[:, d_idx]), G(coarse),
                                                  target, cfg.pixel_idx)
    assert math.isfinite(after["pixel"])
