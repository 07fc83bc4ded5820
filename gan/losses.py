"""Losses of the conditional WGAN-GP (paper Eq. 2-3; Gulrajani et al. 2017,
as used by Progressive GAN).

Sign convention: the critic ``D`` scores *real* images high (as in the
Progressive-GAN code). The paper writes Eq. 2 with the opposite sign
(``D(x, y) - D(x, G(x))`` minimized, i.e. a critic that scores fakes high,
and the generator minimizing ``D(x, G(x))``); the two are the same
objective with ``D`` negated.

All images are (N, C, H, W) tensors in [-1, 1].
"""
from __future__ import annotations

import torch

GP_LAMBDA = 10.0
PROGAN_DRIFT = 0.001
_GRAD_EPS = 1e-12


def gradient_penalty(discriminator_fn, real, fake, condition, lam: float = GP_LAMBDA,
                     u=None, generator: torch.Generator | None = None):
    """WGAN-GP penalty ``lam * mean_n((||grad_x D(condition, x_hat_n)||_2 - 1)^2)``.

    ``x_hat = u * real + (1 - u) * fake`` with one ``u ~ U(0, 1)`` per sample,
    drawn with ``generator`` unless ``u`` (shape (N,)) is given. ``u`` is not
    the fade-in alpha of progressive growing: a progressive discriminator is
    passed as ``lambda c, x: D(c, x, alpha)`` with the current alpha.

    ``discriminator_fn(condition, x)`` returns (N,) or (N, 1) scores.
    ``fake`` is detached (the penalty trains D only). The gradient is taken
    with ``create_graph=True`` so the penalty back-propagates into D's
    parameters, and computed in at least float32 with autocast off (half
    precision gradients of gradients overflow). The norm is
    ``sqrt(sum g^2 + 1e-12)``: a zero gradient would otherwise give NaN in
    the double backward.
    """
    dtype = torch.promote_types(real.dtype, torch.float32)
    real, fake, condition = (t.detach().to(dtype) for t in (real, fake, condition))
    n = real.shape[0]
    if u is None:
        u = torch.rand(n, generator=generator, dtype=dtype, device=real.device)
    u = torch.as_tensor(u, dtype=dtype, device=real.device).reshape(n, *[1] * (real.ndim - 1))
    x_hat = (u * real + (1 - u) * fake).requires_grad_(True)
    with torch.autocast(device_type=real.device.type, enabled=False):
        scores = discriminator_fn(condition, x_hat)
        (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
        norm = torch.sqrt(grad.reshape(n, -1).pow(2).sum(dim=1) + _GRAD_EPS)
        return lam * (norm - 1).pow(2).mean()


def discriminator_loss(d_real, d_fake, gp, drift: float = 0.0):
    """Critic loss ``mean(d_fake) - mean(d_real) + gp + drift * mean(d_real^2)``.

    ``drift`` keeps the scores near 0 (Progressive GAN uses 0.001, the paper
    does not mention it: default off). Returns ``(loss, parts)`` with parts
    (detached floats): ``wasserstein`` = mean(d_real) - mean(d_fake) (the
    critic's distance estimate), ``gp``, ``drift``.
    """
    d_real, d_fake = d_real.float(), d_fake.float()
    wasserstein = d_real.mean() - d_fake.mean()
    drift_term = drift * d_real.pow(2).mean()
    loss = -wasserstein + gp + drift_term
    return loss, {"loss": loss.item(), "wasserstein": wasserstein.item(),
                  "gp": float(gp.detach()), "drift": drift_term.item()}


def generator_loss(d_fake, fake, target, pixel_idx, kappa: float, mask=None):
    """Generator loss ``L1 + kappa * (-mean(d_fake))`` (paper section 4.3).

    The pixel term is the mean absolute error over the channels ``pixel_idx``
    of ``fake`` and ``target`` (both in the generator's output layout) and
    over the whole image, background included as in the paper: background is
    -1 in both, so the generator also learns the silhouette. With ``mask``
    (N, 1, H, W) of 0/1, over the mask's pixels only (our option: the
    ground truth's surface, so the scans' holes are not learned). Returns
    ``(loss, parts)``, parts (detached floats) ``pixel``, ``adversarial``
    (= -mean(d_fake), before the kappa weight), ``loss``.
    """
    idx = list(pixel_idx)
    error = (fake[:, idx].float() - target[:, idx].float()).abs()
    if mask is None:
        pixel = error.mean()
    else:
        pixel = (error * mask).sum() / (mask.sum() * len(idx)).clamp(min=1)
    adversarial = -d_fake.float().mean()
    loss = pixel + kappa * adversarial
    return loss, {"loss": loss.item(), "pixel": pixel.item(),
                  "adversarial": adversarial.item()}
