"""GAN family: losses against hand computations, the gradient penalty, architecture rules, EMA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genlab.config import TrainConfig
from genlab.data import ImageData, load_images, resize_images
from genlab.errors import UserError
from genlab.models import MODELS
from genlab.models.base import Discriminator, images_to_unit
from genlab.models.gan import (
    DCGAN,
    MLPGAN,
    DCDiscriminator,
    DCGANConfig,
    MLPDiscriminator,
    MLPGANConfig,
    dcgan_layout,
    unit_to_signed,
)
from genlab.models.gan_losses import (
    LOSSES,
    gradient_penalty,
    hinge_discriminator,
    hinge_generator,
    ns_discriminator,
    ns_generator,
    wasserstein_critic,
    wasserstein_generator,
)

REAL = [0.5, -1.0, 3.0]
FAKE = [2.0, 0.1, -0.7]


def _t(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _sigmoid(a: float) -> float:
    return 1.0 / (1.0 + math.exp(-a))


def _dcgan(**kw) -> DCGAN:
    torch.manual_seed(0)
    return DCGAN(DCGANConfig(**{"channels": 1, "image_size": 28, "ngf": 4, "ndf": 4, "nz": 8,
                                **kw}))


# --- losses ---------------------------------------------------------------------------------------

def test_ns_losses_match_log_sigmoid_by_hand() -> None:
    # D maximises E[log D(x)] + E[log(1 - D(G(z)))]; its loss is the negative
    expected_d = -_mean([math.log(_sigmoid(a)) for a in REAL]) \
        - _mean([math.log(1.0 - _sigmoid(a)) for a in FAKE])
    # non-saturating G: -E[log D(G(z))]
    expected_g = -_mean([math.log(_sigmoid(a)) for a in FAKE])
    assert ns_discriminator(_t(REAL), _t(FAKE)).item() == pytest.approx(expected_d, rel=1e-12)
    assert ns_generator(_t(FAKE)).item() == pytest.approx(expected_g, rel=1e-12)


def test_ns_loss_is_stable_for_large_logits() -> None:
    # sigmoid then log would give log(0) = -inf here; the logit form stays finite and exact
    assert ns_discriminator(torch.tensor([200.0]), torch.tensor([-200.0])).item() == 0.0
    assert ns_generator(torch.tensor([-200.0])).item() == pytest.approx(200.0)


def test_hinge_losses_by_hand() -> None:
    expected_d = _mean([max(0.0, 1.0 - a) for a in REAL]) + _mean([max(0.0, 1.0 + a) for a in FAKE])
    assert hinge_discriminator(_t(REAL), _t(FAKE)).item() == pytest.approx(expected_d, rel=1e-12)
    assert hinge_generator(_t(FAKE)).item() == pytest.approx(-_mean(FAKE), rel=1e-12)


def test_wasserstein_losses_by_hand() -> None:
    expected = _mean(FAKE) - _mean(REAL)
    assert wasserstein_critic(_t(REAL), _t(FAKE)).item() == pytest.approx(expected, rel=1e-12)
    assert wasserstein_generator(_t(FAKE)).item() == pytest.approx(-_mean(FAKE), rel=1e-12)


def test_losses_are_registered_by_name() -> None:
    assert LOSSES["ns"] == (ns_discriminator, ns_generator)
    assert LOSSES["hinge"] == (hinge_discriminator, hinge_generator)
    assert LOSSES["wgan-gp"] == (wasserstein_critic, wasserstein_generator)


# --- gradient penalty -----------------------------------------------------------------------------

def test_gradient_penalty_of_linear_critic_is_norm_of_w() -> None:
    # D(x) = w . x has gradient w at every point, so the penalty is (||w|| - 1)^2 whatever eps is
    w = torch.tensor([[3.0, 0.0], [0.0, 4.0]], requires_grad=True)  # ||w|| = 5

    def critic(x: torch.Tensor) -> torch.Tensor:
        return (x * w).flatten(1).sum(1)

    real, fake = torch.randn(5, 2, 2), torch.randn(5, 2, 2)
    gp = gradient_penalty(critic, real, fake)
    assert gp.item() == pytest.approx(16.0)
    # create_graph: the penalty trains the critic, d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    gp.backward()
    assert torch.allclose(w.grad, 2 * 4.0 * w.detach() / 5.0)


def test_gradient_penalty_draws_eps_and_takes_norms_per_example() -> None:
    # D(x) = ||x||^2 / 2 has gradient x_hat, so each example's norm depends on its own eps
    real, fake = torch.randn(6, 1, 3, 3), torch.randn(6, 1, 3, 3)
    gp = gradient_penalty(lambda x: 0.5 * (x ** 2).flatten(1).sum(1), real, fake,
                          generator=torch.Generator().manual_seed(7))
    eps = torch.rand(6, 1, 1, 1, generator=torch.Generator().manual_seed(7))
    x_hat = eps * real + (1 - eps) * fake
    expected = ((x_hat.flatten(1).norm(dim=1) - 1.0) ** 2).mean()
    assert gp.item() == pytest.approx(expected.item(), rel=1e-5)
    assert len(set(eps.flatten().tolist())) == 6  # one eps per example, not one per batch


# --- architecture rules ---------------------------------------------------------------------------

def _has_batch_norm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def test_wgan_gp_discriminators_have_no_batch_norm() -> None:
    assert _has_batch_norm(_dcgan().discriminator)  # the DCGAN default does use it
    assert not _has_batch_norm(_dcgan(loss="wgan-gp").discriminator)
    mlp = MLPGAN(MLPGANConfig(channels=1, image_size=28, hidden=8, nz=4, loss="wgan-gp"))
    assert not _has_batch_norm(mlp.discriminator)


def test_batch_norm_critic_with_gradient_penalty_is_refused() -> None:
    with pytest.raises(UserError, match="d_norm=batch"):
        _dcgan(loss="wgan-gp", d_norm="batch")


@pytest.mark.parametrize(("size", "layout"), [(28, (7, 2)), (32, (4, 3)), (64, (4, 4)),
                                              (8, (4, 1))])
def test_dcgan_layout_and_output_size(size: int, layout: tuple[int, int]) -> None:
    assert dcgan_layout(size) == layout
    model = _dcgan(image_size=size)
    images = model.sample(2, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 1, size, size)
    assert model.discriminator(unit_to_signed(images)).shape == (2,)


@pytest.mark.parametrize("size", [30, 6, 100, 1])
def test_dcgan_layout_rejects_bad_sizes(size: int) -> None:
    with pytest.raises(UserError, match=f"got {size}"):
        dcgan_layout(size)


@pytest.mark.parametrize("bad", [{"nz": 0}, {"ngf": 0}, {"ndf": -1}, {"gp_weight": -1.0},
                                 {"d_steps": 0}, {"ema_decay": 1.0}])
def test_bad_model_config_is_a_user_error(bad: dict) -> None:
    with pytest.raises(UserError, match=next(iter(bad))):
        _dcgan(**bad)


# --- conditional ----------------------------------------------------------------------------------

@pytest.mark.parametrize("discriminator", ["dcgan", "mlp"])
def test_projection_discriminator(discriminator: str) -> None:
    """logits = head(h) + <embed(y), pooled h> (Miyato & Koyama 2018)."""
    torch.manual_seed(0)
    if discriminator == "dcgan":
        d = DCDiscriminator(DCGANConfig(channels=1, image_size=28, ndf=4, num_classes=3))
        pool = lambda h: h.sum((2, 3))  # noqa: E731  (global sum pooling of the feature map)
    else:
        d = MLPDiscriminator(MLPGANConfig(channels=1, image_size=28, hidden=8, num_classes=3))
        pool = lambda h: h  # noqa: E731
    x, labels = torch.randn(5, 1, 28, 28), torch.tensor([0, 1, 2, 1, 0])
    logits = d(x, labels)
    assert logits.shape == (5,)
    h = d.body(x)
    unconditional = d.head(h).flatten()
    expected = unconditional + (d.embed(labels) * pool(h)).sum(1)
    assert torch.allclose(logits, expected, atol=1e-5)
    assert not torch.allclose(logits, d(x, (labels + 1) % 3))


CONDITIONAL_CRITICS = [name for name, cls in MODELS.items()
                       if issubclass(cls, Discriminator) and cls.supports_conditional]


def test_every_conditional_gan_is_checked_for_its_first_logits() -> None:
    assert {"gan", "dcgan"} <= set(CONDITIONAL_CRITICS)


def _first_logits(name: str, data: ImageData, size: int, conditional: bool, seed: int
                  ) -> torch.Tensor:
    """The logits of a freshly built discriminator (training mode) on real images."""
    cls = MODELS[name]
    config = cls.config_for_data(cls.config_class(image_size=size), data, conditional=conditional)
    torch.manual_seed(seed)
    model = cls(config).train()
    images = data.images if size == data.images.shape[-1] else resize_images(data.images, size)
    labels = torch.as_tensor(data.labels) if conditional else None
    with torch.no_grad():
        return model.discriminator(unit_to_signed(images_to_unit(images)), labels)


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("name", CONDITIONAL_CRITICS)
def test_projection_starts_at_the_scale_of_the_unconditional_logits(name: str, size: int) -> None:
    """Issue 21: with nn.Embedding's N(0, 1) class vectors (and, in the DCGAN, features summed
    over all positions) the first conditional logits were 45-150x the unconditional ones, and the
    conditional DCGAN learned nothing in 1500 steps. Default widths, real digits, three seeds."""
    digits = load_images("digits")
    data = ImageData(digits.images[:128], digits.labels[:128], digits.num_classes, "digits",
                     "train", digits.sha256)
    scale = {}
    for conditional in (False, True):
        logits = torch.stack([_first_logits(name, data, size, conditional, seed)
                              for seed in range(3)])
        assert logits.shape == (3, 128) and torch.isfinite(logits).all()
        scale[conditional] = logits.abs().mean().item()
    assert 0.25 < scale[True] / scale[False] < 4.0, scale


@pytest.mark.parametrize("size", [28, 32])
@pytest.mark.parametrize("name", CONDITIONAL_CRITICS)
def test_noise_not_the_class_drives_a_fresh_conditional_generator(name: str, size: int) -> None:
    """Issue 21: class vectors as large as z made the class term take over, and within 100
    steps every sample of a class was the same image. At init the samples must vary far more
    with z than with the class (0.02 here; about 1 with nn.Embedding's N(0, 1))."""
    cls = MODELS[name]
    torch.manual_seed(0)
    model = cls(cls.config_class(channels=1, image_size=size, num_classes=10))
    z = torch.randn(20, model.config.nz).repeat_interleave(10, 0)  # each of 20 z with 10 classes
    labels = torch.arange(10).repeat(20)
    with torch.no_grad():
        x = model.generator.train()(z, labels).view(20, 10, -1)  # (z, class, pixels)
    between_classes, within_class = x.var(1).mean().item(), x.var(0).mean().item()
    assert within_class > 0 and between_classes / within_class < 0.1


def test_conditional_generator_shapes_and_label_checks() -> None:
    model = _dcgan(num_classes=3)
    assert model.generator.embed.weight.shape == (3, 8)  # one nz-vector per class
    z = torch.randn(4, 8)
    assert model.generator(z, torch.tensor([0, 1, 2, 0])).shape == (4, 1, 28, 28)
    assert model.sample(4, labels=2).shape == (4, 1, 28, 28)
    with pytest.raises(UserError, match="class indices"):
        model.sample(4, labels=3)
    with pytest.raises(UserError, match="class indices"):
        model.sample(4, labels=torch.tensor([0, 1]))
    with pytest.raises(UserError, match="conditional"):
        _dcgan().sample(2, labels=1)


# --- the adversarial step and EMA -----------------------------------------------------------------

def _batch(n: int = 8) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"images": torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)}


def test_train_step_takes_d_steps_discriminator_steps_per_generator_step() -> None:
    model = _dcgan(loss="wgan-gp", d_steps=3)
    optimizers = model.configure_optimizers(TrainConfig())
    out = model.train_step(_batch(), optimizers)
    assert {"loss", "d_loss", "g_loss", "gp", "d_real", "d_fake"} <= set(out)

    def adam_steps(name: str) -> set[float]:
        return {s["step"].item() for s in optimizers[name].state.values()}

    assert adam_steps("discriminator") == {3.0}
    assert adam_steps("generator") == {1.0}
    # D is frozen only during the G step; afterwards it trains again
    assert all(p.requires_grad for p in model.discriminator.parameters())


def _set_params(module: nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.fill_(value)


def test_ema_warm_up_then_decay() -> None:
    model = _dcgan(ema_decay=0.9)
    _set_params(model.generator_ema, 0.0)
    _set_params(model.generator, 1.0)
    model.update_ema()  # t = 1: decay = (1 + 1) / (10 + 1) = 2/11, so the EMA moves 9/11 of the way
    for p in model.generator_ema.parameters():
        assert torch.allclose(p, torch.full_like(p, 9 / 11))
    model.ema_steps.fill_(10_000)  # warm-up over: decay is capped at ema_decay
    _set_params(model.generator_ema, 0.0)
    model.update_ema()
    for p in model.generator_ema.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.1))
    # buffers (batch-norm statistics) are copied, not averaged
    for ema_buf, buf in zip(model.generator_ema.buffers(), model.generator.buffers()):
        assert torch.equal(ema_buf, buf)


def test_sampling_uses_ema_weights_unless_told_otherwise() -> None:
    model = _dcgan()
    model.train_step(_batch(), model.configure_optimizers(TrainConfig(lr=1e-2)))
    ema = model.sample(3, generator=torch.Generator().manual_seed(0))
    raw = model.sample(3, generator=torch.Generator().manual_seed(0), use_ema=False)
    assert not torch.equal(ema, raw)
    model.generator.eval()
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(raw, (model.generator(z) + 1) / 2)
    assert _dcgan(ema_decay=0.0).generator_ema is None


def test_grad_accum_is_refused_for_gans() -> None:
    with pytest.raises(UserError, match="grad_accum"):
        model = _dcgan()
        model.validate_train_config(model.config, TrainConfig(grad_accum=2, batch_size=8))
