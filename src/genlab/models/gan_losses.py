"""GAN losses as small pure functions on logits, chosen by name (`model.loss=ns|hinge|wgan-gp`).

Each pair is `(discriminator_loss(real_logits, fake_logits), generator_loss(fake_logits))`, means
over the batch. The value function is `min_G max_D E[log D(x)] + E[log(1 - D(G(z)))]`; the
discriminator minimises its negative and the generator uses the non-saturating `-E[log D(G(z))]`.
Written with `softplus` on logits, which is `binary_cross_entropy_with_logits` without the sigmoid
round trip: `-log sigmoid(a) = softplus(-a)`, `-log(1 - sigmoid(a)) = softplus(a)`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def ns_real(real: Tensor) -> Tensor:
    """The real examples' terms of the ns discriminator loss, per example: -log D(x)."""
    return F.softplus(-real)


def ns_fake(fake: Tensor) -> Tensor:
    """The fake examples' terms, per example: -log(1 - D(G(z)))."""
    return F.softplus(fake)


def ns_discriminator(real: Tensor, fake: Tensor) -> Tensor:
    """Goodfellow et al. 2014 (https://arxiv.org/abs/1406.2661): BCE, real = 1, fake = 0."""
    return ns_real(real).mean() + ns_fake(fake).mean()


def ns_generator(fake: Tensor) -> Tensor:
    """Non-saturating generator loss: fakes labelled as real."""
    return F.softplus(-fake).mean()


def hinge_real(real: Tensor) -> Tensor:
    return F.relu(1.0 - real)


def hinge_fake(fake: Tensor) -> Tensor:
    return F.relu(1.0 + fake)


def hinge_discriminator(real: Tensor, fake: Tensor) -> Tensor:
    """Lim & Ye 2017 (https://arxiv.org/abs/1705.02894), as used by SNGAN and BigGAN."""
    return hinge_real(real).mean() + hinge_fake(fake).mean()


def hinge_generator(fake: Tensor) -> Tensor:
    return -fake.mean()


def wasserstein_critic(real: Tensor, fake: Tensor) -> Tensor:
    """Gulrajani et al. 2017 (https://arxiv.org/abs/1704.00028) without the penalty term."""
    return fake.mean() - real.mean()


def wasserstein_generator(fake: Tensor) -> Tensor:
    return -fake.mean()


def gradient_penalty(
    critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`E[(||grad_x D(x_hat)||_2 - 1)^2]`, `x_hat = eps x + (1 - eps) G(z)`, eps ~ U[0, 1] per
    example, the norm taken per example over all of its pixels."""
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device,
                     dtype=real.dtype, generator=generator)
    x_hat = (eps * real.detach() + (1.0 - eps) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()


LOSSES: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "ns": (ns_discriminator, ns_generator),
    "hinge": (hinge_discriminator, hinge_generator),
    "wgan-gp": (wasserstein_critic, wasserstein_generator),
}

# The discriminator losses that are a mean over real examples plus a mean over fakes, as their
# per-example terms `(real_term, fake_term)`: differentially private training clips each real
# example's gradient on its own (genlab.privacy_dp). WGAN-GP is not here: its penalty mixes a
# real and a fake example in each interpolate.
DISCRIMINATOR_TERMS: dict[str, tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]] = {
    "ns": (ns_real, ns_fake),
    "hinge": (hinge_real, hinge_fake),
}
