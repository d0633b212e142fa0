"""Diffusion family: the forward process, samplers against an oracle, guidance, learning on a toy
set, determinism, exact resume and the errors a user can meet."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.checkpoint import read_state
from genlab.errors import UserError
from genlab.models.diffusion import Diffusion
from genlab.models.diffusion_schedules import (
    NoiseSchedule,
    ddim_sample,
    ddpm_sample,
    flow_euler_sample,
    flow_heun_sample,
    flow_sample,
    flow_times,
    guide,
    q_sample,
    q_step,
    sampling_timesteps,
    to_x0_eps,
    training_target,
)
from genlab.runs import TrainRequest, train
from helpers import TINY, digits, tiny_model, write_digits


@pytest.fixture(scope="module")
def digits_spec(tmp_path_factory) -> str:
    """The 8x8 digits as an IDX dataset (`--data idx:DIR`): a training grid of 64 images x 50
    DDIM steps costs 1/12 of the 28x28 fixture's."""
    return write_digits(tmp_path_factory.mktemp("digits8"))


# --- the forward process ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_closed_form_marginal_matches_repeated_single_steps(name: str) -> None:
    schedule = NoiseSchedule.named(name, 200)
    x0 = torch.full((200_000,), 0.6, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = x0
    for t in range(schedule.timesteps):
        x = q_step(schedule, x, t, torch.randn(x.shape, generator=g, dtype=torch.float64))
        if t in (0, 20, 99, 199):
            a = float(schedule.alpha_bar[t])
            # the closed form: mean sqrt(a) x0, std sqrt(1 - a); Monte Carlo error ~ 1/sqrt(N)
            assert abs(x.mean().item() - math.sqrt(a) * 0.6) < 0.01
            assert abs(x.std().item() - math.sqrt(1 - a)) < 0.01
            closed = q_sample(schedule, x0, torch.full((x0.shape[0],), t),
                              torch.randn(x.shape, generator=g, dtype=torch.float64))
            assert abs(closed.mean().item() - x.mean().item()) < 0.01
            assert abs(closed.std().item() - x.std().item()) < 0.01


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_steps_compose_exactly_into_the_closed_form_coefficients(name: str) -> None:
    """Without noise the steps scale x0 by prod sqrt(1 - beta) = sqrt(alpha_bar); with x0 = 0 the
    variances add up to 1 - alpha_bar (the recursion v_t = (1 - b_t) v_{t-1} + b_t)."""
    schedule = NoiseSchedule.named(name, 300)
    x, var = torch.ones(1, dtype=torch.float64), 0.0
    for t in range(schedule.timesteps):
        x = q_step(schedule, x, t, torch.zeros(1, dtype=torch.float64))
        b = float(schedule.betas[t])
        var = (1 - b) * var + b
        a = float(schedule.alpha_bar[t])
        assert x.item() == pytest.approx(math.sqrt(a), rel=1e-9)
        assert var == pytest.approx(1 - a, rel=1e-9, abs=1e-12)


def test_schedules_end_near_pure_noise() -> None:
    for name in ("linear", "cosine"):
        a = NoiseSchedule.named(name, 1000).alpha_bar
        assert a[0] > 0.99 and a[-1] < 1e-4 and torch.all(a[1:] < a[:-1])


def test_targets_and_their_inverse() -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 1, 3, 3, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 1, 3, 3, generator=g, dtype=torch.float64)
    schedule = NoiseSchedule.named("cosine", 100)
    t = torch.tensor([0, 10, 50, 99])
    a = schedule.alpha_bar_at(t, x0)
    x_t = q_sample(schedule, x0, t, eps)
    for objective in ("eps", "v"):
        x0_hat, eps_hat = to_x0_eps(objective, training_target(objective, x0, eps, a), x_t, a)
        torch.testing.assert_close(x0_hat, x0)
        torch.testing.assert_close(eps_hat, eps)
    tf = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    x = flow_sample(x0, tf, eps)
    torch.testing.assert_close(x[0], x0[0])
    torch.testing.assert_close(x[3], eps[3])
    torch.testing.assert_close(training_target("flow", x0, eps), eps - x0)


def test_flow_time_sampling() -> None:
    g = torch.Generator().manual_seed(0)
    uniform = flow_times(50_000, "uniform", g)
    logit = flow_times(50_000, "logit-normal", g)
    assert uniform.min() >= 0 and uniform.max() <= 1 and abs(uniform.mean() - 0.5) < 0.01
    assert abs(uniform.std() - math.sqrt(1 / 12)) < 0.01
    # logit-normal(0, 1): symmetric around 0.5, more mass in the middle than uniform
    assert abs(logit.mean() - 0.5) < 0.01 and logit.std() < uniform.std() - 0.05
    with pytest.raises(UserError):
        flow_times(3, "gamma", g)


def test_sampling_timesteps_start_at_noise_and_end_at_zero() -> None:
    times = sampling_timesteps(1000, 50)
    assert times[0] == 999 and times[-1] == 0 and len(times.unique()) == 50
    assert torch.all(times[1:] < times[:-1])
    assert sampling_timesteps(1000, 1).tolist() == [999]
    with pytest.raises(UserError, match="sample_steps"):
        sampling_timesteps(100, 101)


# --- samplers with an oracle network --------------------------------------------------------------

def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(6, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    return x0, torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("objective", ["eps", "v"])
@pytest.mark.parametrize("schedule_name", ["linear", "cosine"])
@pytest.mark.parametrize("steps", [1, 10, 50])
def test_ddim_eta0_and_ddpm_with_an_oracle_recover_x0(objective: str, schedule_name: str,
                                                      steps: int) -> None:
    schedule = NoiseSchedule.named(schedule_name, 1000)
    x0, x_T = _data()

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The exact eps (or v) of x_t given that the data point is x0."""
        step = torch.round(t.double() * schedule.timesteps).long()
        a = schedule.alpha_bar_at(step, x)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return training_target(objective, x0, eps, a)

    out = ddim_sample(oracle, objective, schedule, x_T, steps, eta=0.0)
    torch.testing.assert_close(out, x0, atol=1e-9, rtol=0)
    # eta > 0 and the ancestral sampler add noise on the way, but the oracle's last x0 is exact
    g = torch.Generator().manual_seed(3)
    torch.testing.assert_close(ddim_sample(oracle, objective, schedule, x_T, steps, eta=1.0,
                                           generator=g), x0, atol=1e-9, rtol=0)
    torch.testing.assert_close(ddpm_sample(oracle, objective, schedule, x_T, steps, generator=g),
                               x0, atol=1e-9, rtol=0)


@pytest.mark.parametrize("sampler", [flow_euler_sample, flow_heun_sample])
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_flow_samplers_with_an_oracle_recover_x0(sampler, steps: int) -> None:
    x0, x1 = _data(1)
    calls = []

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(float(t[0]))
        return (x - x0) / t.double().view(-1, 1, 1, 1)  # eps - x0 for the x0 on this path

    torch.testing.assert_close(sampler(oracle, x1, steps), x0, atol=1e-9, rtol=0)
    assert calls[0] == 1.0 and 0.0 not in calls  # never asked for the velocity at t = 0
    assert len(calls) == (2 * steps - 1 if sampler is flow_heun_sample else steps)


def test_ddim_with_a_wrong_network_does_not_recover_x0() -> None:
    """The oracle tests can fail: a network off by a little gives another image."""
    schedule = NoiseSchedule.named("cosine", 1000)
    x0, x_T = _data()

    def wrong(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # believes in another x0
        a = schedule.alpha_bar_at(torch.round(t.double() * 1000).long(), x)
        return (x - a.sqrt() * (0.9 * x0)) / (1 - a).sqrt()

    assert (ddim_sample(wrong, "eps", schedule, x_T, 20) - x0).abs().max() > 1e-2


# --- classifier-free guidance ------------------------------------------------------------------------

def test_guide_at_zero_is_the_conditional_prediction_bit_for_bit() -> None:
    g = torch.Generator().manual_seed(0)
    cond, uncond = torch.randn(100, generator=g), torch.randn(100, generator=g) * 1e3
    assert torch.equal(guide(cond, uncond, 0.0), cond)
    torch.testing.assert_close(guide(cond, uncond, -1.0), uncond)
    torch.testing.assert_close(guide(cond, uncond, 2.0), 3 * cond - 2 * uncond)


@pytest.mark.parametrize("objective", ["v", "flow"])
def test_guidance_off_equals_the_conditional_model(objective: str) -> None:
    model = tiny_model(num_classes=3, objective=objective).eval()
    labels = torch.tensor([0, 1, 2, 0])

    def draw(**kw) -> torch.Tensor:
        return model.sample(4, generator=torch.Generator().manual_seed(5), labels=labels,
                            sample_steps=8, **kw)

    plain = draw()
    assert torch.equal(plain, draw(guidance=0.0))
    assert torch.equal(plain, draw(guidance=0))
    guided = draw(guidance=3.0)
    assert not torch.equal(plain, guided)
    assert (plain - guided).abs().max() > 1e-3


def test_label_dropout_uses_the_no_label_class() -> None:
    model = tiny_model(num_classes=3, label_dropout=0.5)
    seen = []
    model.net.class_embed.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    images = torch.zeros(400, 1, 8, 8, dtype=torch.uint8)
    torch.manual_seed(0)
    model.loss({"images": images, "labels": torch.ones(400, dtype=torch.long)})
    (used,) = seen
    assert set(used.tolist()) == {1, 3}  # the real label, or "no label" (index num_classes)
    assert 0.4 < (used == 3).float().mean() < 0.6


# --- learning on a toy set -------------------------------------------------------------------------

@torch.no_grad()
def _mean_loss(model: Diffusion, images: torch.Tensor) -> float:
    torch.manual_seed(123)  # the same times and noise for the untrained and the trained model
    return float(np.mean([model.loss({"images": images[i:i + 256]})["loss"].item()
                          for i in range(0, 1024, 256)]))


@pytest.mark.parametrize("objective", ["eps", "v", "flow"])
def test_a_tiny_model_learns_8x8_digits(objective: str) -> None:
    images = digits()
    model = tiny_model(objective=objective, timesteps=200, ema_decay=0.0)
    before = _mean_loss(model, images)
    optimizers = {"main": torch.optim.Adam(model.parameters(), lr=3e-3)}
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model.train()
    for _ in range(150):
        idx = torch.randint(0, images.shape[0], (64,), generator=g)
        model.train_step({"images": images[idx]}, optimizers)
    model.eval()
    after = _mean_loss(model, images)
    print(f"{objective}: untrained {before:.3f} trained {after:.3f}")
    assert after < 0.6 * before, (before, after)


# --- determinism, errors ------------------------------------------------------------------------------

@pytest.mark.parametrize(("objective", "sampler", "extra"), [
    ("v", "ddim", {}), ("v", "ddim", {"eta": 0.5}), ("eps", "ddpm", {}),
    ("flow", "euler", {}), ("flow", "heun", {})])
def test_same_seed_same_samples(objective: str, sampler: str, extra: dict) -> None:
    model = tiny_model(objective=objective).eval()

    def draw(seed: int) -> torch.Tensor:
        return model.sample(3, generator=torch.Generator().manual_seed(seed), sampler=sampler,
                            sample_steps=5, **extra)

    first = draw(1)
    assert first.shape == (3, 1, 8, 8) and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, draw(1)) and not torch.equal(first, draw(2))


@pytest.mark.parametrize(("objective", "sampler"), [("v", "ddim"), ("flow", "euler")])
def test_chunks_do_not_change_deterministic_samples(objective: str, sampler: str) -> None:
    """The CPU samples in chunks of 32 images (SAMPLE_CHUNK): a deterministic sampler draws all its
    noise up front, chunk after chunk, so the chunk size changes no image beyond float rounding,
    and each chunk keeps its own rows' labels."""
    model = tiny_model(objective=objective, num_classes=3).eval()

    def draw(batch_size: int | None) -> torch.Tensor:
        return model.sample(40, generator=torch.Generator().manual_seed(0), sampler=sampler,
                            sample_steps=4, batch_size=batch_size)

    whole, default = draw(40), draw(None)
    assert torch.allclose(whole, draw(7), atol=1e-5)
    assert torch.allclose(whole, default, atol=1e-5)
    assert not torch.allclose(whole[:20], whole[20:], atol=1e-3)  # not one image repeated


def test_sampling_errors_are_user_errors() -> None:
    model = tiny_model(objective="v").eval()
    with pytest.raises(UserError, match="does not fit a model trained with objective 'v'"):
        model.sample(1, sampler="euler")
    with pytest.raises(UserError, match="allowed: euler, heun"):
        tiny_model(objective="flow").sample(1, sampler="ddim")
    with pytest.raises(UserError, match="guidance needs a conditional model"):
        model.sample(1, guidance=1.0)
    with pytest.raises(UserError, match="sample_steps"):
        model.sample(1, sample_steps=101)
    with pytest.raises(UserError, match="eta"):
        model.sample(1, eta=2.0)
    with pytest.raises(UserError, match="guidance must be"):
        tiny_model(num_classes=2).sample(1, guidance=-1.0)


@pytest.mark.parametrize("bad", [{"channel_mults": "1,x"}, {"channel_mults": "1,2,2,2,2"},
                                 {"heads": 3}, {"dropout": 1.0}, {"label_dropout": -0.1},
                                 {"ema_decay": 1.0}, {"timesteps": 0}])
def test_bad_configs_are_refused(bad: dict) -> None:
    with pytest.raises(UserError):
        tiny_model(**bad)


def test_cli_sample_with_a_wrong_sampler_is_one_line(train_tiny, run_cli, digits_spec: str,
                                                     tmp_path: Path) -> None:
    run = train_tiny(tmp_path / "run", "diffusion", steps=2, overrides=(*TINY, "model.objective=v"),
                     data=digits_spec)
    code, _, err = run_cli("sample", run, "--sampler", "heun", "--out", tmp_path / "x.png")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()
    code, _, err = run_cli("sample", run, "--sampler", "ddpm", "--sample-steps", "3", "--n", "4",
                             "--out", tmp_path / "x.png")
    assert code == 0 and (tmp_path / "x.png").stat().st_size > 0, err


def test_cli_sample_precision(train_tiny, run_cli, digits_spec: str, tmp_path: Path) -> None:
    """fp32 is the default (the same bytes as before); bf16 autocast draws other bits from the
    same seed, close to fp32's; each precision is reproducible."""
    run = train_tiny(tmp_path / "run", "diffusion", steps=2, overrides=TINY, data=digits_spec)

    def draw(name: str, *precision: str) -> np.ndarray:
        out = tmp_path / f"{name}.npz"
        code, _, err = run_cli("sample", run, "--n", "8", "--sample-steps", "5", *precision,
                               "--out", out)
        assert code == 0, err
        return np.load(out)["images"].astype(np.int16)

    default, fp32 = draw("default"), draw("fp32", "--precision", "fp32")
    bf16, bf16_again = draw("bf16", "--precision", "bf16"), draw("bf16b", "--precision", "bf16")
    assert np.array_equal(default, fp32) and np.array_equal(bf16, bf16_again)
    assert not np.array_equal(fp32, bf16)
    assert np.abs(fp32 - bf16).mean() < 8  # grey levels out of 255: the same images
    code, _, err = run_cli("sample", run, "--precision", "fp16", "--out", tmp_path / "x.png")
    assert code == 2 and "Traceback" not in err


def test_cli_eval_sampling_flags(train_tiny, run_cli, digits_spec: str, tmp_path: Path,
                                 tiny_run: Path) -> None:
    """`genlab eval` samples with the flags `genlab sample` takes, and records them; a sampler
    that does not fit, or a flag the family lacks, exits 2 before any sampling."""
    run = train_tiny(tmp_path / "run", "diffusion", steps=2, overrides=TINY, data=digits_spec)

    def fd(*flags: str) -> tuple[float, dict]:
        code, out, err = run_cli("eval", run, "--n", "16", "--real", "digits", "--json", *flags)
        assert code == 0, err
        report = json.loads(out)
        return report["fd"], report["provenance"]["sampling"]

    two, sampling = fd("--sample-steps", "2", "--sampler", "heun", "--precision", "bf16")
    assert sampling == {"sample_steps": 2, "sampler": "heun", "precision": "bf16"}
    assert fd("--sample-steps", "2", "--sampler", "heun", "--precision", "bf16")[0] == two
    assert fd("--sample-steps", "3", "--sampler", "heun", "--precision", "bf16")[0] != two
    assert fd()[1] == {"precision": "fp32"}
    code, _, err = run_cli("eval", run, "--n", "16", "--real", "digits", "--sampler", "ddim")
    assert code == 2 and "does not fit" in err and "Traceback" not in err
    code, _, err = run_cli("eval", tiny_run, "--n", "16", "--real", "digits", "--guidance", "1")
    assert code == 2 and "--guidance is not a sampling option of dcgan" in err
    np.savez(tmp_path / "x.npz", images=np.zeros((4, 8, 8), np.uint8))
    code, _, err = run_cli("eval", "--fake", tmp_path / "x.npz", "--real", "digits",
                           "--sample-steps", "3")
    assert code == 2 and "--sample-steps sets how a run samples" in err


# --- exact resume through the real training path (the preset's warm-up and EMA) ----------------

@pytest.mark.parametrize("objective", ["v", "flow"])
def test_resume_equals_uninterrupted(objective: str, train_tiny, digits_spec: str,
                                     tmp_path: Path) -> None:
    # sample grids only at the end: the resume, not the sampler, is under test here
    overrides = (*TINY, f"model.objective={objective}", "model.dropout=0.1",
                 "train.sample_every=0")
    full = train_tiny(tmp_path / "full", "diffusion", steps=10, overrides=overrides,
                      conditional=True, data=digits_spec)
    part = train_tiny(tmp_path / "part", "diffusion", steps=5, overrides=overrides,
                      conditional=True, data=digits_spec)
    train(TrainRequest(resume=str(part), steps=10, device="cpu"))
    assert read_state(part / "checkpoint")["step"] == 10
    for name in ("model.safetensors", "optimizers.safetensors"):
        assert (part / "checkpoint" / name).read_bytes() == (full / "checkpoint" / name).read_bytes()


def test_generation_requests_carry_the_sampling_options() -> None:
    """The Python API's (and the server's) request: options reach `sample`; unknown ones are
    refused by name; guidance 0 through the API is the plain conditional model too."""
    from genlab.generation import GenerationRequest, RequestError
    from genlab.modalities import generate

    model = tiny_model(num_classes=3).eval()
    model.modality = "image"

    def images(**options) -> torch.Tensor:
        return generate(model, GenerationRequest(n=3, seed=4, label=1, options=options)).images

    plain = images(sampler="ddpm", sample_steps=4)
    assert torch.equal(plain, images(sampler="ddpm", sample_steps=4, guidance=0.0))
    assert not torch.equal(plain, images(sampler="ddpm", sample_steps=4, guidance=2.0))
    assert not torch.equal(plain, images(sampler="ddim", sample_steps=4))
    with pytest.raises(RequestError, match="temperature_ish is not a sampling option"):
        images(temperature_ish=1)


def test_trains_under_ddp_with_its_frozen_ema_copy(digits_spec: str, tmp_path: Path) -> None:
    """Two gloo processes: the whole model goes into DDP (one optimizer), EMA weights included
    but frozen; the run ends with a checkpoint whose EMA moved towards the trained weights."""
    from safetensors.torch import load_file

    from test_distributed import torchrun

    run = tmp_path / "ddp"
    torchrun("train", "diffusion", "--data", digits_spec, "--device", "cpu", "--batch-size", "8",
             "--steps", "3", "--out", run, *[a for pair in TINY for a in ("--set", pair)],
             "--set", "train.sample_every=0", "--set", "train.warmup_steps=0")
    assert read_state(run / "checkpoint")["step"] == 3
    weights = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert int(weights["ema_steps"]) == 3
    moved = [k for k in weights if k.startswith("net_ema.")
             and not torch.equal(weights[k], weights[k.replace("net_ema.", "net.", 1)])]
    assert moved  # the EMA lags the trained weights: it was updated, not copied
