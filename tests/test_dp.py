"""Differentially private training (`--dp`, genlab.privacy_dp): clipping, accounting, what the
generator sees, resume, refusals, and tiny private runs through the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

pytest.importorskip("opacus")

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.grad_sample import GradSampleHooks

from genlab.config import TrainConfig
from genlab.models.gan import DCGAN, DCGANConfig
from genlab.models.gan_losses import DISCRIMINATOR_TERMS, LOSSES
from genlab.privacy_dp import (
    PoissonBatcher,
    PrivateTraining,
    clip_and_sum,
    clip_factors,
    epsilon_of,
    make_accountant,
    per_sample_grads,
)

VAE_TINY = ("model.nz=4", "model.hidden=8", "model.pixel_features=2")
DCGAN_TINY = ("model.ngf=4", "model.ndf=4", "model.nz=8")


def _explicit_per_sample(net: nn.Module, loss_of, x: torch.Tensor, *extra) -> list[torch.Tensor]:
    """Per-example gradients the slow way: one backward per example."""
    params = [p for p in net.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        loss = loss_of(net(x[i:i + 1], *(e[i:i + 1] for e in extra))).sum()
        rows.append(torch.autograd.grad(loss, params))
    return [torch.stack(gs) for gs in zip(*rows)]


def test_per_sample_grads_are_right_and_clipped_norms_at_most_the_clip_norm() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.GroupNorm(2, 6), nn.Tanh(), nn.Linear(6, 1))
    x = torch.randn(9, 5) * 3
    hooks = GradSampleHooks(net, loss_reduction="sum")
    net(x).pow(2).sum().backward()
    params = list(net.parameters())
    hooked = per_sample_grads(params, 9)
    explicit = _explicit_per_sample(net, lambda out: out.pow(2), x)
    for a, b in zip(hooked, explicit):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    clip = 0.5
    factor, norms = clip_factors(hooked, clip)
    assert (norms > clip).sum() >= 5  # the clip binds for most examples of this case
    clipped = [f[:, None] * g.flatten(1) for f, g in zip([factor] * len(hooked), hooked)]
    after = torch.cat(clipped, 1).norm(2, dim=1)
    assert (after <= clip * (1 + 1e-5)).all()
    small = norms <= clip  # those below the bound are left as they were
    torch.testing.assert_close(after[small], norms[small], rtol=1e-5, atol=1e-6)
    summed, _ = clip_and_sum(hooked, clip)
    for s, c, p in zip(summed, clipped, params):
        torch.testing.assert_close(s, c.sum(0).view(p.shape))
    hooks.remove_hooks()


def _tiny_dcgan(num_classes: int = 4) -> DCGAN:
    torch.manual_seed(0)
    config = DCGANConfig(channels=1, image_size=28, num_classes=num_classes, ngf=8, ndf=8, nz=16,
                         ema_decay=0.0, d_norm="layer")
    return DCGAN(config)


def _private(model: nn.Module, *, noise: float, clip: float, batch: int = 8) -> PrivateTraining:
    private = PrivateTraining(model, noise_multiplier=noise, clip_norm=clip, sample_rate=0.125,
                              expected_batch=batch, delta=1e-5, seed=0)
    model.privacy = private
    return private


def _real(seed: int, n: int = 8, label: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
            "labels": torch.full((n,), label, dtype=torch.long)}


def test_discriminator_per_sample_grads_match_explicit_ones() -> None:
    """The DCGAN discriminator's layers (a full-kernel head Opacus reaches through functorch,
    group norm, the class projection) give the right per-example gradients."""
    model = _tiny_dcgan()
    d = model.discriminator
    private = _private(model, noise=0.0, clip=1e9)
    batch = _real(1)
    x = batch["images"].float() / 127.5 - 1
    real_term, _ = DISCRIMINATOR_TERMS["ns"]
    private.hooks.enable_hooks()
    real_term(d(x, batch["labels"])).sum().backward()
    private.hooks.disable_hooks()
    hooked = per_sample_grads(private.params, 8)
    explicit = _explicit_per_sample(d, real_term, x, batch["labels"])
    for a, b in zip(hooked, explicit):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("loss", ["ns", "hinge"])
def test_private_discriminator_gradient_without_clip_or_noise_is_the_ordinary_one(loss) -> None:
    """With no noise and a bound that never binds, the private D gradient equals the ordinary
    gradient of the family's own loss: the real terms have the right sign and scale, and the
    fakes are counted once. With a bound that binds, every real and fake example is clipped;
    only the reals are charged."""
    d_fn, _ = LOSSES[loss]
    real_term, fake_term = DISCRIMINATOR_TERMS[loss]
    r, f = torch.randn(7), torch.randn(5)
    torch.testing.assert_close(real_term(r).mean() + fake_term(f).mean(), d_fn(r, f))
    model = _tiny_dcgan()
    model.config.loss = loss
    d = model.discriminator
    private = _private(model, noise=0.0, clip=1e9)
    batch = _real(2)
    real = batch["images"].float() / 127.5 - 1
    fake = torch.tanh(torch.randn(8, 1, 28, 28))
    fake_labels = torch.randint(0, 4, (8,))
    private.discriminator_backward(d, real, batch["labels"], fake, fake_labels, loss)
    dp_grads = [p.grad.clone() for p in d.parameters()]
    d.zero_grad(set_to_none=True)
    d_fn(d(real, batch["labels"]), d(fake, fake_labels)).backward()
    for a, p in zip(dp_grads, d.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-3, atol=1e-6)
    # a bound that binds: each real and each fake example clipped, noise on neither (sigma 0)
    private.clip_norm = 0.05
    d.zero_grad(set_to_none=True)
    private.discriminator_backward(d, real, batch["labels"], fake, fake_labels, loss)
    clipped = [p.grad.clone() for p in d.parameters()]
    reals = _explicit_per_sample(d, real_term, real, batch["labels"])
    fakes = _explicit_per_sample(d, fake_term, fake, fake_labels)
    real_sum, real_norms = clip_and_sum(reals, 0.05)
    fake_sum, fake_norms = clip_and_sum(fakes, 0.05)
    assert (real_norms > 0.05).all() and (fake_norms > 0.05).all()  # it binds for all
    for a, r, f in zip(clipped, real_sum, fake_sum):
        torch.testing.assert_close(a, (r + f) / 8, rtol=1e-3, atol=1e-7)
    assert private.accountant.history == [(0.0, 0.125, 2)]  # one step each call, not per pass


def _generator_grads(model: DCGAN, batch: dict[str, torch.Tensor],
                     clip: float | None = None) -> list[torch.Tensor]:
    """The gradients the generator's optimizer holds when it steps, on a copy of `model`
    (trained privately, without noise, when `clip` is given)."""
    model = copy.deepcopy(model)
    if clip is not None:
        _private(model, noise=0.0, clip=clip)
    opt_g = torch.optim.SGD(model.generator.parameters(), lr=1e-3)
    opt_d = torch.optim.SGD(model.discriminator.parameters(), lr=1e-3)
    seen: list[torch.Tensor] = []
    step = opt_g.step

    def record(*args, **kw):
        seen.extend(p.grad.clone() for p in model.generator.parameters())
        return step(*args, **kw)

    opt_g.step = record
    torch.manual_seed(5)  # the same z (and random fake labels) for every batch
    model.train_step(batch, {"generator": opt_g, "discriminator": opt_d})
    return seen


def test_generator_optimizer_never_sees_unclipped_real_data_gradients() -> None:
    """Two real batches as different as can be (other images, other classes). With per-example
    gradients clipped to 1e-9, no noise and SGD at lr 1e-3, real data can move the
    discriminator by at most 1e-12, so the generator's gradients must be the same for both.
    They differ when real data reaches the generator another way: without DP (the control
    below), through the real labels conditioning the fakes, or through a discriminator update
    that is not clipped."""
    model = _tiny_dcgan()
    a, b = _real(10, label=0), _real(11, label=3)
    b["images"] = 255 - b["images"]
    plain_a, plain_b = _generator_grads(model, a), _generator_grads(model, b)
    assert max((x - y).abs().max().item() for x, y in zip(plain_a, plain_b)) > 1e-3
    private_a, private_b = _generator_grads(model, a, 1e-9), _generator_grads(model, b, 1e-9)
    assert len(private_a) == len(list(model.generator.parameters()))
    for x, y in zip(private_a, private_b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6)


def test_accountant_epsilon_matches_opacus() -> None:
    sigma, q, steps, delta = 1.1, 0.01, 1000, 1e-5
    mine = epsilon_of(make_accountant("rdp", [(sigma, q, steps)]), delta)
    theirs = RDPAccountant()
    for _ in range(steps):
        theirs.step(noise_multiplier=sigma, sample_rate=q)
    assert mine == pytest.approx(theirs.get_epsilon(delta=delta), rel=1e-12)
    orders = RDPAccountant.DEFAULT_ALPHAS
    direct, _ = rdp_analysis.get_privacy_spent(
        orders=orders, rdp=rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps,
                                                    orders=orders), delta=delta)
    assert mine == pytest.approx(direct, rel=1e-12)
    assert 1.0 < mine < 3.0  # the order of magnitude the DP-SGD literature reports here
    prv = PRVAccountant()
    for _ in range(100):
        prv.step(noise_multiplier=sigma, sample_rate=q)
    assert epsilon_of(make_accountant("prv", [(sigma, q, 100)]), delta) == pytest.approx(
        prv.get_epsilon(delta=delta), rel=1e-9)


def test_each_private_step_is_accounted_once() -> None:
    model = _tiny_dcgan()
    private = _private(model, noise=0.8, clip=1.0)
    opts = model.configure_optimizers(TrainConfig())
    for step in range(3):
        model.train_step(_real(step), opts)
    assert private.accountant.history == [(0.8, 0.125, 3)]
    expected = RDPAccountant()
    for _ in range(3):
        expected.step(noise_multiplier=0.8, sample_rate=0.125)
    assert private.epsilon() == pytest.approx(expected.get_epsilon(delta=1e-5))


def test_poisson_batcher_is_seeded_and_samples_at_the_rate() -> None:
    images = torch.arange(1000, dtype=torch.uint8).view(1000, 1, 1, 1)
    labels = torch.arange(1000) % 10
    batcher = PoissonBatcher(images, labels, 0.05, seed=3)
    first = batcher.batch(7)
    again = PoissonBatcher(images, labels, 0.05, seed=3).batch(7)
    assert torch.equal(first["images"], again["images"])
    assert torch.equal(first["labels"], again["labels"])
    assert not torch.equal(batcher.batch(8)["images"][:5], first["images"][:5])
    sizes = torch.tensor([batcher.batch(s)["images"].shape[0] for s in range(200)]).float()
    assert abs(sizes.mean().item() - 50) < 3 and sizes.std() > 2  # sizes vary, as Poisson's do
    assert batcher.steps_per_epoch == 20


def _train(run_cli, out: Path, model: str, data: str, steps: int, *extra: str):
    tiny = DCGAN_TINY if model == "dcgan" else VAE_TINY
    args = ["train", model, "--data", data, "--steps", steps, "--batch-size", 8, "--out", out,
            "--device", "cpu", "--dp", "--set", "train.log_every=5",
            "--set", "train.sample_every=0", "--set", "train.checkpoint_every=0"]
    args += [a for t in tiny for a in ("--set", t)] + list(extra)
    return run_cli(*args)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_resume_10_plus_10_steps_is_20_steps(run_cli, idx_spec, tmp_path: Path, model) -> None:
    """The same epsilon, accountant history, weights and logged rows."""
    noise = ("--set", "train.dp_noise_multiplier=1.2", "--set", "train.lr_decay_steps=20")
    assert _train(run_cli, tmp_path / "whole", model, idx_spec, 20, *noise)[0] == 0
    code, _, err = _train(run_cli, tmp_path / "split", model, idx_spec, 10, *noise)
    assert code == 0, err
    half = json.loads((tmp_path / "split" / "checkpoint" / "state.json").read_text())["dp"]
    assert half["history"] == [[1.2, 0.125, 10]]
    code, _, err = run_cli("train", "--resume", tmp_path / "split", "--steps", 20)
    assert code == 0, err
    states = [json.loads((tmp_path / r / "checkpoint" / "state.json").read_text())["dp"]
              for r in ("whole", "split")]
    assert states[0] == states[1] and states[0]["history"] == [[1.2, 0.125, 20]]
    whole = load_file(tmp_path / "whole" / "checkpoint" / "model.safetensors")
    split = load_file(tmp_path / "split" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert states[0]["epsilon_spent"] == pytest.approx(epsilon_of(
        make_accountant("rdp", [(1.2, 0.125, 20)]), 1e-5), rel=1e-12)
    assert half["epsilon_spent"] < states[0]["epsilon_spent"]

    def rows(run: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("time", "items_per_s")}
                for r in _rows(tmp_path / run)]

    assert rows("whole") == rows("split") and len(rows("whole")) == 4


def test_delta_too_large_is_refused(run_cli, idx_spec, tmp_path: Path) -> None:
    code, _, err = _train(run_cli, tmp_path / "r", "vae", idx_spec, 2,
                          "--set", "train.dp_epsilon=5", "--set", "train.dp_delta=0.01")
    assert code == 2 and "train.dp_delta=0.01 is larger than 1/(10 n)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (("--set", "model.loss=wgan-gp", "--set", "train.dp_epsilon=5"),
     "gradient penalty reads real examples"),
    ((), "needs a target train.dp_epsilon"),
    (("--set", "train.dp_epsilon=5", "--set", "train.dp_noise_multiplier=1"), "not both"),
    (("--set", "train.dp_epsilon=5", "--set", "model.d_steps=2"), "model.d_steps=1"),
])
def test_refused_before_any_data_is_read(run_cli, tmp_path: Path, extra, message) -> None:
    code, _, err = _train(run_cli, tmp_path / "r", "dcgan", "idx:/nonexistent", 2, *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_gpt_is_refused(run_cli, text_file, tmp_path: Path) -> None:
    code, _, err = run_cli("train", "gpt", "--data", f"text:{text_file}", "--steps", 2, "--dp",
                           "--set", "train.dp_epsilon=5", "--out", tmp_path / "r")
    assert code == 2 and "--dp supports the gan, dcgan, vae and convvae" in err


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_tiny_private_runs_through_the_cli(run_cli, idx_spec, tmp_path: Path, model) -> None:
    out = tmp_path / model
    code, _, err = _train(run_cli, out, model, idx_spec, 10, "--conditional",
                          "--set", "train.dp_epsilon=10")
    assert code == 0, err
    rows = _rows(out)
    assert rows and all("epsilon" in r for r in rows)
    assert [r["epsilon"] for r in rows] == sorted(r["epsilon"] for r in rows)
    dp = json.loads((out / "checkpoint" / "state.json").read_text())["dp"]
    assert {"epsilon_spent", "delta", "noise_multiplier", "accountant", "history"} <= set(dp)
    assert dp["epsilon_spent"] == pytest.approx(10, rel=0.02)  # the target, at the last step
    assert dp["delta"] == 1e-5 and dp["accountant"] == "rdp"
    record = json.loads((out / "run.json").read_text())
    if model == "dcgan":
        assert "batch norm is replaced by group norm" in err
        assert record["model_config"]["d_norm"] == "layer"
    code, listing, _ = run_cli("runs", tmp_path)
    assert code == 0 and "epsilon" in listing.splitlines()[0]
    assert f"{dp['epsilon_spent']:.3g}" in listing.splitlines()[2]
    code, _, err = run_cli("sample", out, "--n", 4, "--out", tmp_path / f"{model}.png")
    assert code == 0, err


def test_an_empty_poisson_sample_is_a_noise_only_step() -> None:
    """Poisson sampling may draw no example: the step adds noise alone and is accounted."""
    from genlab.models.vae import MLPVAE, MLPVAEConfig

    torch.manual_seed(0)
    vae = MLPVAE(MLPVAEConfig(channels=1, image_size=28, nz=4, hidden=8, pixel_features=2))
    private = _private(vae, noise=1.0, clip=1.0)
    opts = vae.configure_optimizers(TrainConfig())
    step = private.wrap(vae.train_step)
    before = [p.detach().clone() for p in vae.parameters()]
    empty = {"images": torch.zeros(0, 1, 28, 28, dtype=torch.uint8)}
    out = step(empty, opts)
    assert torch.isfinite(out["loss"]) and private.accountant.history == [(1.0, 0.125, 1)]
    assert all(not torch.equal(a, p) for a, p in zip(before, vae.parameters()))
    out = step(_real(3), opts)  # a real batch after it
    assert torch.isfinite(out["loss"]) and private.accountant.history == [(1.0, 0.125, 2)]
    gan = _tiny_dcgan()
    private = _private(gan, noise=1.0, clip=1.0)
    out = gan.train_step({"images": torch.zeros(0, 1, 28, 28, dtype=torch.uint8),
                          "labels": torch.zeros(0, dtype=torch.long)},
                         gan.configure_optimizers(TrainConfig()))
    assert all(torch.isfinite(v) for v in out.values())
    assert private.accountant.history == [(1.0, 0.125, 1)]


def test_vae_per_sample_grads_match_explicit_ones(monkeypatch) -> None:
    """The whole-model case: Opacus's hooks on the family's own mean loss (rescaled by the batch
    size) give each example's gradient, through both uses of the label embedding."""
    from genlab.models.vae import ConvVAE, ConvVAEConfig

    torch.manual_seed(0)
    vae = ConvVAE(ConvVAEConfig(channels=1, image_size=28, num_classes=4, nz=4, width=4,
                                hidden=8, pixel_features=4))
    private = _private(vae, noise=0.0, clip=1e9)
    eps, rows = torch.randn(8, 4), [slice(None)]
    monkeypatch.setattr(torch, "randn_like", lambda t: eps[rows[0]])  # the same draw per example
    batch = _real(4)
    batch["labels"] = torch.arange(8) % 4
    private.hooks.enable_hooks()
    vae.loss(batch)["loss"].backward()
    private.hooks.disable_hooks()
    hooked = per_sample_grads(private.params, 8)
    params = private.params
    explicit = []
    for i in range(8):
        rows[0] = slice(i, i + 1)
        one = {k: v[i:i + 1] for k, v in batch.items()}
        explicit.append(torch.autograd.grad(vae.loss(one)["loss"], params, allow_unused=True))
    for j, (a, p) in enumerate(zip(hooked, params)):
        b = torch.stack([e[j] if e[j] is not None else torch.zeros_like(p) for e in explicit])
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_merf_is_the_release_kind_and_attach_keeps_its_batcher() -> None:
    """A FitsData family is private as one release: no Poisson batcher, no per-sample hooks,
    noise for one step at sample rate 1."""
    from genlab.models.merf import MERF, MERFConfig
    from genlab.privacy_dp import PrivateRelease, attach, noise_for_epsilon, private_family

    assert private_family(MERF) == "release" and private_family(DCGAN) == "gan"
    torch.manual_seed(0)
    model = MERF(MERFConfig(channels=1, image_size=28, num_classes=4, features=64))

    class Batcher:
        images, labels = _real(0, n=100)["images"], torch.arange(100) % 4
        steps_per_epoch = 12

    batcher = Batcher()
    train = TrainConfig(dp=True, dp_epsilon=10.0, dp_delta=1e-4, batch_size=8)
    private, out = attach(model, train, batcher, total_steps=1000, state=None)
    assert isinstance(private, PrivateRelease) and out is batcher
    assert private.noise_multiplier == noise_for_epsilon(10.0, 1e-4, 1.0, 1, "rdp")
    assert private.epsilon() == 0.0 and not private.released  # nothing spent before the release
