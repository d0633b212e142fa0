"""The diffusion family's variational bound in bits/dim (Ho et al. 2020, eq. 5): exact with an
oracle network, seeded, lower after training, and declared only by the discrete-time objectives."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from genlab.models.base import Likelihood
from genlab.models.diffusion import Diffusion, DiscreteDiffusion
from genlab.models.diffusion_schedules import (
    decoder_nll,
    discretized_gaussian_log_likelihood,
    prior_kl,
    training_target,
)
from helpers import TINY, digits, tiny_model, write_digits


@pytest.fixture(scope="module")
def digits_spec(tmp_path_factory) -> str:
    return write_digits(tmp_path_factory.mktemp("digits8_bpd"), labels=False)


class Oracle(nn.Module):
    """The exact eps or v for the noisy rows of `x0` (repeated as `bound_terms` repeats it)."""

    def __init__(self, model: Diffusion, x0: Tensor) -> None:
        super().__init__()
        self.schedule, self.objective, self.x0 = model.schedule, model.config.objective, x0

    def forward(self, x: Tensor, t: Tensor, labels: Tensor | None = None) -> Tensor:
        schedule = self.schedule
        x0 = self.x0.repeat(x.shape[0] // self.x0.shape[0], 1, 1, 1).double()
        steps = (t.double() * schedule.timesteps).round().long()
        a = schedule.alpha_bar_at(steps, x0)
        eps = (x.double() - a.sqrt() * x0) / (1 - a).sqrt()
        return training_target(self.objective, x0, eps, a).float()


def _signed(images: Tensor) -> Tensor:
    return images.double() / 255 * 2 - 1


@pytest.mark.parametrize(("objective", "schedule"), [("eps", "linear"), ("v", "cosine"),
                                                     ("eps", "cosine")])
def test_with_an_oracle_every_kl_vanishes_and_the_bound_is_prior_plus_decoder(
        objective: str, schedule: str, monkeypatch) -> None:
    model = tiny_model(objective=objective, schedule=schedule)
    images = digits()[:16]
    monkeypatch.setattr(model, "sampling_net", lambda use_ema=None: Oracle(model, _signed(images)))
    terms = model.bound_terms(images, t_draws=8, generator=torch.Generator().manual_seed(0))
    assert terms["steps"].min() >= 1 and terms["steps"].max() <= 99
    assert terms["kl"].abs().max() < 1e-6, terms["kl"].max()
    x0 = _signed(images)
    exact = prior_kl(model.schedule, x0) + decoder_nll(model.schedule, x0, x0)
    report = model.likelihood_report(images, generator=torch.Generator().manual_seed(0))
    bpd = exact.mean().item() / (64 * math.log(2))
    assert report["neg_elbo_bpd"] == pytest.approx(bpd, rel=1e-5)  # float32 x_t
    # an untrained network's KL terms are far from zero
    monkeypatch.undo()
    untrained = model.bound_terms(images, t_draws=8, generator=torch.Generator().manual_seed(0))
    assert untrained["kl"].mean() > 1e3 * max(terms["kl"].abs().mean().item(), 1e-9)


def test_discretized_gaussian_sums_to_one_and_keeps_far_tails() -> None:
    levels = torch.arange(256, dtype=torch.float64) / 255 * 2 - 1
    for mean, std in ((0.3, 0.05), (-0.99, 0.01), (1.0, 2.0)):
        logp = discretized_gaussian_log_likelihood(levels, torch.full_like(levels, mean), std)
        assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-9)
        assert bool((logp <= 0).all())
    # a bin 100 standard deviations away: tiny mass, still finite (no floor)
    far = discretized_gaussian_log_likelihood(levels[200:201], torch.tensor([-0.9]), 0.01)
    assert torch.isfinite(far).all() and far.item() < -1e4


def test_same_seed_same_bound_other_seed_another() -> None:
    model = tiny_model(objective="v")
    images = digits()[:24]

    def bound(seed: int) -> dict:
        return model.likelihood_report(images, generator=torch.Generator().manual_seed(seed))

    first = bound(1)
    assert first == bound(1) and first["neg_elbo_bpd"] != bound(2)["neg_elbo_bpd"]
    assert first["neg_elbo_bpd_stderr"] > 0 and first["n_test"] == 24 and first["t_draws"] == 4
    assert first["neg_elbo_bpd"] == pytest.approx(first["neg_elbo_nats"] / (64 * math.log(2)))
    per_image = model.example_nll(images, generator=torch.Generator().manual_seed(1))
    assert per_image.shape == (24,)
    assert per_image.mean().item() == pytest.approx(first["neg_elbo_nats"])


def test_the_ema_network_is_the_one_scored(monkeypatch) -> None:
    model = tiny_model(objective="eps", ema_decay=0.9)
    assert model.sampling_net() is model.net_ema
    images = digits()[:8]
    monkeypatch.setattr(model, "net_ema", Oracle(model, _signed(images)))
    terms = model.bound_terms(images, generator=torch.Generator().manual_seed(0))
    assert terms["kl"].abs().max() < 1e-6


def test_training_lowers_the_bound() -> None:
    images = digits()
    train, test = images[:1500], images[1500:1600]
    model = tiny_model(objective="v", ema_decay=0.0)

    def bpd() -> float:
        report = model.likelihood_report(test, generator=torch.Generator().manual_seed(0))
        return report["neg_elbo_bpd"]

    before = bpd()
    optimizers = {"main": torch.optim.Adam(model.parameters(), lr=3e-3)}
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model.train()
    for _ in range(200):
        model.train_step({"images": train[torch.randint(0, train.shape[0], (64,), generator=g)]},
                         optimizers)
    model.eval()
    after = bpd()
    print(f"bits/dim: untrained {before:.3f}, 200 steps {after:.3f}")
    assert after < 0.8 * before, (before, after)


def test_only_discrete_objectives_declare_the_likelihood() -> None:
    for objective in ("eps", "v"):
        model = tiny_model(objective=objective)
        assert isinstance(model, Likelihood) and isinstance(model, DiscreteDiffusion)
    flow = tiny_model(objective="flow")
    assert isinstance(flow, Diffusion) and not isinstance(flow, Likelihood)
    assert not hasattr(flow, "likelihood_report")


def test_eval_of_a_flow_run_has_no_bound_and_of_a_v_run_has_one(train_tiny, run_cli,
                                                               digits_spec: str,
                                                               tmp_path: Path) -> None:
    overrides = (*TINY, "train.sample_every=0")
    flow = train_tiny(tmp_path / "flow", "diffusion", steps=2, data=digits_spec,
                      overrides=(*overrides, "model.objective=flow"))
    code, out, err = run_cli("eval", flow, "--n", "16", "--real", "digits", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["fd"] is not None and "neg_elbo_bpd" not in report
    # the idx data has no feature net: a flow model has nothing to report there
    code, _, err = run_cli("eval", flow, "--n", "16")
    assert code == 2 and "no feature net" in err and "Traceback" not in err
    v = train_tiny(tmp_path / "v", "diffusion", steps=2, data=digits_spec,
                   overrides=(*overrides, "model.objective=v"))
    code, out, err = run_cli("eval", v, "--n", "16", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["fd"] is None and report["n_test"] == 16
    assert report["neg_elbo_bpd"] > 0 and report["neg_elbo_bpd_stderr"] > 0
    assert report["likelihood"] == "ddpm-vlb" and report["iwae_nll_bpd"] is None
    code, again, _ = run_cli("eval", v, "--n", "16", "--json")
    assert json.loads(again)["neg_elbo_bpd"] == report["neg_elbo_bpd"]
    shutil.rmtree(tmp_path / "v")
