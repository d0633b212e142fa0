"""Tests for the VAE family (`vae`, `convvae`): the maths, the likelihoods, training, the CLIs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.distributions import Normal

from genlab.checkpoint import save_checkpoint
from genlab.config import TrainConfig, config_to_dict
from genlab.data.idx import write_idx
from genlab.errors import UserError
from genlab.images import make_grid
from genlab.models.gan import MLPGAN, MLPGANConfig
from genlab.models.likelihoods import LIKELIHOODS, binarize
from genlab.models.vae import (
    MLPVAE,
    ConvVAE,
    ConvVAEConfig,
    MLPVAEConfig,
    gaussian_kl,
    interpolate_latents,
)
from genlab.rundir import load_model
from genlab.runs import TrainRequest, train

TINY_MLP = ("model.hidden=16", "model.nz=4", "model.pixel_features=2")


def _mlp(channels: int = 1, size: int = 8, **kw) -> MLPVAE:
    torch.manual_seed(0)
    return MLPVAE(MLPVAEConfig(channels=channels, image_size=size, hidden=16, nz=4,
                               pixel_features=2, **kw))


def _images(n: int = 4, channels: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)


def _zero_head(model: MLPVAE) -> None:
    """Make the decoder output constant (all parameters 0): a known p(x|z) for every pixel."""
    conv = model.head[1]
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.zeros_(conv.bias)


def _train(out: Path, data: str, model: str = "vae", steps: int = 4, overrides=(), **req) -> Path:
    tiny = TINY_MLP if model == "vae" else ("model.width=4", "model.hidden=8", "model.nz=4",
                                           "model.pixel_features=4")
    request = TrainRequest(model=model, data=data, steps=steps, batch_size=8, out=str(out),
                           device="cpu", overrides=(*tiny, "train.log_every=1",
                                                    "train.sample_every=0", *overrides), **req)
    return train(request)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, idx_spec) -> Path:
    """An unconditional MLP VAE trained 4 steps on the tiny 28x28 data. Read-only."""
    return _train(tmp_path_factory.mktemp("vae") / "run", idx_spec)


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory, idx_spec) -> Path:
    """A conditional conv VAE trained 2 steps on the tiny 4-class data. Read-only."""
    return _train(tmp_path_factory.mktemp("cvae") / "run", idx_spec, model="convvae", steps=2,
                  conditional=True)


# --- the likelihoods -------------------------------------------------------------------------------

ALL_LEVELS = torch.arange(256).float().div(255).view(256, 1, 1, 1)  # (256, C=1, H=1, W=1)


@pytest.mark.parametrize(("mu", "log_scale"), [(0.3, -3.0), (0.0, 0.0), (1.0, -5.0), (-0.4, 2.0),
                                               (1.6, -7.0), (0.5, -9.0), (0.71, 4.0)])
def test_discretized_logistic_sums_to_one(mu: float, log_scale: float) -> None:
    params = torch.tensor([mu - 0.5, log_scale]).view(1, 2, 1, 1, 1).expand(256, 2, 1, 1, 1)
    log_p = LIKELIHOODS["logistic"].log_prob(params, ALL_LEVELS)
    assert torch.isfinite(log_p).all()
    assert log_p.double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_discretized_logistic_matches_cdf_differences() -> None:
    """An interior level's mass is the logistic CDF difference over its bin; the edges take the
    tails; even a bin far in the tail (where the plain difference underflows) stays finite."""
    mu, s = 0.4, 0.05
    params = torch.tensor([mu - 0.5, math.log(s)]).view(1, 2, 1, 1, 1).expand(3, 2, 1, 1, 1)
    x = torch.tensor([0.0, 100 / 255, 1.0]).view(3, 1, 1, 1)
    got = LIKELIHOODS["logistic"].log_prob(params, x).flatten().double().exp()

    def cdf(v: float) -> float:
        return 1 / (1 + math.exp(-(v - mu) / s))

    half = 0.5 / 255
    want = [cdf(half), cdf(100 / 255 + half) - cdf(100 / 255 - half), 1 - cdf(1 - half)]
    assert got.tolist() == pytest.approx(want, rel=1e-4)
    far = torch.tensor([-0.5, -7.0]).view(1, 2, 1, 1, 1)  # location 0, scale e^-7
    log_far = LIKELIHOODS["logistic"].log_prob(far, torch.full((1, 1, 1, 1), 254 / 255))
    assert torch.isfinite(log_far).all() and log_far.item() < -1000


def test_categorical_sums_to_one() -> None:
    logits = torch.randn(1, 256, 1, 1, 1, generator=torch.Generator().manual_seed(0)) * 3
    log_p = LIKELIHOODS["categorical"].log_prob(logits.expand(256, -1, -1, -1, -1), ALL_LEVELS)
    assert log_p.double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    mean = LIKELIHOODS["categorical"].mean(logits)
    want = (logits.softmax(1).flatten() * torch.arange(256) / 255).sum()
    assert mean.item() == pytest.approx(want.item(), rel=1e-5)


def test_bernoulli_sums_to_one_and_binarizes() -> None:
    logit = torch.full((2, 1, 1, 1, 1), 0.7)
    log_p = LIKELIHOODS["bernoulli"].log_prob(logit, torch.tensor([0.0, 1.0]).view(2, 1, 1, 1))
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    grey = torch.tensor([[[[0, 127, 128, 255]]]], dtype=torch.uint8)
    assert binarize(grey, "threshold").flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
    many = grey.expand(2000, 1, 1, 4)
    draws = binarize(many, "stochastic", torch.Generator().manual_seed(1))
    assert torch.equal(draws, binarize(many, "stochastic", torch.Generator().manual_seed(1)))
    freq = draws.mean(0).flatten()
    assert freq[0] == 0 and freq[3] == 1 and abs(freq[1].item() - 127 / 255) < 0.05


# --- the ELBO and IWAE maths -----------------------------------------------------------------------

def test_analytic_kl_matches_monte_carlo() -> None:
    model = _mlp()
    with torch.no_grad():
        mu, log_var = model.encode(model.inputs(_images(3)))
        mu, log_var = mu * 3, log_var + torch.linspace(-2, 1, 4)  # away from the prior
        q = Normal(mu, torch.exp(0.5 * log_var))
        z = q.sample((200_000,))  # global RNG seeded in _mlp
        mc = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1).mean(0)
    analytic = gaussian_kl(mu, log_var)
    assert torch.allclose(analytic, mc, rtol=0.02, atol=0.02), (analytic, mc)


def test_log_weights_are_log_joint_minus_log_posterior() -> None:
    model = _mlp()
    x = model.inputs(_images(3))
    with torch.no_grad():
        log_w = model.log_weights(x, None, 5, torch.Generator().manual_seed(3))
        mu, log_var = model.encode(x)
        eps = torch.randn((5, *mu.shape), generator=torch.Generator().manual_seed(3))
        z = mu + torch.exp(0.5 * log_var) * eps
        log_q = Normal(mu, torch.exp(0.5 * log_var)).log_prob(z).sum(-1)
        log_prior = Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_px = torch.stack([model.log_px(x, z[k]) for k in range(5)])
    assert log_w.shape == (5, 3)
    assert torch.allclose(log_w, log_px + log_prior - log_q, atol=1e-3)


@pytest.mark.parametrize("likelihood", ["logistic", "categorical", "bernoulli"])
def test_iwae_never_looser_than_elbo(likelihood: str) -> None:
    model = _mlp(likelihood=likelihood)
    x = model.inputs(_images(6), torch.Generator().manual_seed(0))
    with torch.no_grad():
        log_w = model.log_weights(x, None, 50, torch.Generator().manual_seed(0))
    iwae = torch.logsumexp(log_w, 0) - math.log(50)
    elbo = log_w.mean(0)
    assert (iwae >= elbo - 1e-4).all()
    assert (iwae > elbo).any()  # K > 1 draws of a random model: strictly tighter somewhere

    images = _images(5)
    report = model.likelihood_report(images, iwae_k=7, generator=torch.Generator().manual_seed(0),
                                     batch_size=10)  # 1 image per pass, K split into 2 passes
    assert set(report) == {"neg_elbo_nats", "neg_elbo_bpd", "iwae_nll_nats", "iwae_nll_bpd",
                           "iwae_k", "n_test", "likelihood"}
    assert report["iwae_k"] == 7 and report["n_test"] == 5 and report["likelihood"] == likelihood
    assert report["iwae_nll_nats"] <= report["neg_elbo_nats"]
    if likelihood == "bernoulli":
        assert report["neg_elbo_bpd"] is None and report["iwae_nll_bpd"] is None
    else:
        dims_ln2 = 64 * math.log(2)
        assert report["neg_elbo_bpd"] == pytest.approx(report["neg_elbo_nats"] / dims_ln2)
        assert report["iwae_nll_bpd"] == pytest.approx(report["iwae_nll_nats"] / dims_ln2)


def test_likelihood_report_exact_case_any_chunking() -> None:
    """Posterior = prior and a uniform categorical decoder: every log-weight is exactly
    -D ln 256, so both bounds are exactly 8 bits/dim however the work is chunked."""
    model = _mlp(likelihood="categorical")
    _zero_head(model)
    last = model.encoder.net[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)  # mu = 0, log_var = 0
    images = _images(5)
    for batch_size in (1, 3, 8, 1000):
        report = model.likelihood_report(images, iwae_k=4, batch_size=batch_size)
        assert report["neg_elbo_nats"] == pytest.approx(64 * math.log(256), rel=1e-6)
        assert report["iwae_nll_nats"] == pytest.approx(64 * math.log(256), rel=1e-6)
        assert report["iwae_nll_bpd"] == pytest.approx(8.0, rel=1e-6)


def test_likelihood_report_seeded_and_checked() -> None:
    model = _mlp()
    images = _images(6)
    first = model.likelihood_report(images, iwae_k=4, generator=torch.Generator().manual_seed(5))
    again = model.likelihood_report(images, iwae_k=4, generator=torch.Generator().manual_seed(5))
    assert first == again
    k1 = model.likelihood_report(images, iwae_k=1, generator=torch.Generator().manual_seed(5))
    assert k1["iwae_nll_nats"] == pytest.approx(k1["neg_elbo_nats"], rel=1e-9)
    with pytest.raises(UserError, match="uint8 images of shape"):
        model.likelihood_report(images.float())
    with pytest.raises(UserError, match="uint8 images of shape"):
        model.likelihood_report(_images(2, size=10))
    with pytest.raises(UserError, match="iwae_k"):
        model.likelihood_report(images, iwae_k=0)


def test_loss_is_summed_over_pixels() -> None:
    """A constant decoder gives every pixel the same likelihood: twice the pixels, twice the NLL.
    A uniform categorical is exactly 8 bits per dimension."""
    one, two = _mlp(channels=1), _mlp(channels=2)
    for model in (one, two):
        _zero_head(model)
    x1 = _images(4)
    nll1 = one.loss({"images": x1})["nll"]
    nll2 = two.loss({"images": torch.cat([x1, x1], dim=1)})["nll"]
    assert nll2.item() == pytest.approx(2 * nll1.item(), rel=1e-5)

    uniform = _mlp(likelihood="categorical")
    _zero_head(uniform)
    out = uniform.loss({"images": x1})
    assert out["nll"].item() == pytest.approx(64 * math.log(256), rel=1e-6)
    want_bpd = (64 * math.log(256) + out["kl"].item()) / (64 * math.log(2))
    assert out["bpd"].item() == pytest.approx(want_bpd, rel=1e-6)


def test_beta_and_kl_warmup() -> None:
    images = {"images": _images(8)}
    beta4 = _mlp(beta=4.0)
    out = beta4.loss(images)
    assert out["kl_weight"].item() == 4.0
    assert out["loss"].item() == pytest.approx((out["nll"] + 4 * out["kl"]).item(), rel=1e-5)
    assert out["neg_elbo"].item() == pytest.approx((out["nll"] + out["kl"]).item(), rel=1e-5)

    warm = _mlp(beta=2.0, kl_warmup_steps=4)
    optimizers = warm.configure_optimizers(TrainConfig(lr=1e-3))
    weights = []
    for _ in range(6):
        weights.append(warm.loss(images)["kl_weight"].item())
        warm.train_step(images, optimizers)
    assert weights == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    assert int(warm.kl_step) == 6
    assert "kl_step" in warm.state_dict()  # saved with the weights


# --- the models ------------------------------------------------------------------------------------

def test_encode_decode_sample_api() -> None:
    model = _mlp(channels=3, size=6)
    x = torch.rand(5, 3, 6, 6)
    mu, log_var = model.encode(x)
    assert mu.shape == log_var.shape == (5, 4)
    images = model.decode(mu)
    assert images.shape == (5, 3, 6, 6) and images.min() >= 0 and images.max() <= 1
    g = torch.Generator().manual_seed(0)
    assert model.sample(3, generator=g).shape == (3, 3, 6, 6)


def test_conditional_sampling() -> None:
    model = _mlp(num_classes=3, likelihood="bernoulli")
    a = model.sample(4, generator=torch.Generator().manual_seed(0), labels=1)
    b = model.sample(4, generator=torch.Generator().manual_seed(0), labels=2)
    assert a.shape == (4, 1, 8, 8) and not torch.equal(a, b)
    assert torch.equal(a, model.sample(4, generator=torch.Generator().manual_seed(0),
                                       labels=torch.ones(4, dtype=torch.long)))
    with pytest.raises(UserError, match="class indices"):
        model.sample(2, labels=3)
    with pytest.raises(UserError, match="conditional"):
        model.loss({"images": _images(2)})  # no labels for a conditional model
    with pytest.raises(UserError, match="labels"):
        model.likelihood_report(_images(2))


@pytest.mark.parametrize(("size", "channels", "message"), [
    (16, 1, "28x28 or 32x32"), (64, 3, "28x28 or 32x32"), (28, 2, "grayscale or RGB")])
def test_convvae_rejects_other_shapes(size: int, channels: int, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ConvVAE(ConvVAEConfig(channels=channels, image_size=size))


@pytest.mark.parametrize(("size", "channels"), [(28, 1), (32, 3)])
def test_convvae_shapes(size: int, channels: int) -> None:
    torch.manual_seed(0)
    model = ConvVAE(ConvVAEConfig(channels=channels, image_size=size, width=4, hidden=8, nz=3,
                                  pixel_features=4))
    out = model.loss({"images": _images(2, channels, size)})
    assert math.isfinite(out["loss"].item())
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (
        2, channels, size, size)


def test_convvae_bad_data_size_is_a_user_error(tmp_path: Path) -> None:
    folder = tmp_path / "small"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", _images(16, size=16)[:, 0].numpy())
    with pytest.raises(UserError, match=r"model.image_size=32"):
        _train(tmp_path / "run", f"idx:{folder}", model="convvae", steps=1)


def test_interpolate_latents() -> None:
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    z1 = z1 / z1.norm(dim=1, keepdim=True) * z0.norm(dim=1, keepdim=True)  # equal norms
    for mode in ("slerp", "lerp"):
        path = interpolate_latents(z0, z1, 7, mode)
        assert path.shape == (3, 7, 5)
        assert torch.allclose(path[:, 0], z0, atol=1e-5)
        assert torch.allclose(path[:, -1], z1, atol=1e-5)
    norms = interpolate_latents(z0, z1, 7, "slerp").norm(dim=-1)
    assert torch.allclose(norms, z0.norm(dim=1, keepdim=True).expand(3, 7), rtol=1e-4)
    assert (interpolate_latents(z0, z1, 7, "lerp").norm(dim=-1)[:, 3] < norms[:, 3]).all()
    same = interpolate_latents(z0, z0, 4, "slerp")  # parallel endpoints fall back to the line
    assert torch.allclose(same, z0[:, None].expand(3, 4, 5))
    with pytest.raises(UserError, match="slerp, lerp"):
        interpolate_latents(z0, z1, 3, "cubic")


# --- runs and CLIs ---------------------------------------------------------------------------------

def test_training_logs_elbo(vae_run: Path) -> None:
    rows = [json.loads(line) for line in (vae_run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert {"loss", "nll", "kl", "neg_elbo", "bpd", "kl_weight"} <= set(row)
        assert row["bpd"] == pytest.approx(row["neg_elbo"] / (28 * 28 * math.log(2)), rel=1e-5)


def test_resume_is_exact(tmp_path: Path, idx_spec: str) -> None:
    sets = ("model.kl_warmup_steps=3", "train.lr_decay_steps=4")
    straight = _train(tmp_path / "straight", idx_spec, steps=4, overrides=sets)
    halves = _train(tmp_path / "halves", idx_spec, steps=2, overrides=sets)
    train(TrainRequest(resume=str(halves), steps=4, device="cpu"))
    a = load_file(str(straight / "checkpoint" / "model.safetensors"))
    b = load_file(str(halves / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and int(a["kl_step"]) == 4
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _png_size(rows: int, cols: int, side: int = 28) -> tuple[int, int]:
    """The size `save_grid` gives a `rows x cols` grid (2 px padding, upscaled to >= 256 px)."""
    w, h = make_grid(torch.zeros(rows * cols, 1, side, side), nrow=cols).shape[1::-1]
    scale = max(1, math.ceil(256 / max(w, h)))
    return w * scale, h * scale


def test_reconstruct_cli(vae_run: Path, run_cli, tmp_path: Path) -> None:
    out = tmp_path / "recon.png"
    code, _, err = run_cli("reconstruct", vae_run, "--n", "5", "--out", out)
    assert code == 0, err
    assert Image.open(out).size == _png_size(rows=2, cols=5)
    code, _, err = run_cli("reconstruct", vae_run, "--n", "20", "--out", out, "--split", "train")
    assert code == 0, err
    assert Image.open(out).size == _png_size(rows=6, cols=8)
    code, _, err = run_cli("reconstruct", vae_run, "--n", "17", "--out", out)  # test has 16
    assert code == 2 and "split has 16" in err
    code, _, err = run_cli("reconstruct", vae_run, "--out", tmp_path / "r.jpg")
    assert code == 2 and ".png" in err


def test_reconstruct_is_the_posterior_mean_decoding(vae_run: Path) -> None:
    model = load_model(vae_run)
    images = _images(3, size=28)
    mu, _ = model.encode(model.inputs(images))
    assert torch.equal(model.reconstruct(images), model.decode(mu))


def test_interpolate_cli(vae_run: Path, run_cli, tmp_path: Path) -> None:
    out = tmp_path / "interp.png"
    code, _, err = run_cli("interpolate", vae_run, "--steps", "6", "--pairs", "3", "--out", out)
    assert code == 0, err
    assert Image.open(out).size == _png_size(rows=3, cols=8)
    code, _, err = run_cli("interpolate", vae_run, "--mode", "lerp", "--out", out)
    assert code == 0, err
    assert Image.open(out).size == _png_size(rows=8, cols=12)


def test_cli_on_conditional_convvae(cvae_run: Path, run_cli, tmp_path: Path) -> None:
    for args in (("sample", cvae_run, "--n", "8", "--label", "2", "--out", tmp_path / "s.png"),
                 ("reconstruct", cvae_run, "--n", "4", "--out", tmp_path / "r.png"),
                 ("interpolate", cvae_run, "--pairs", "2", "--steps", "3",
                  "--out", tmp_path / "i.png")):
        code, _, err = run_cli(*args)
        assert code == 0, err
        assert (tmp_path / Path(args[-1]).name).is_file()
    code, _, err = run_cli("sample", cvae_run, "--label", "4", "--out", tmp_path / "x.png")
    assert code == 2 and "out of range" in err


def test_cli_rejects_a_gan(run_cli, tmp_path: Path) -> None:
    gan = MLPGAN(MLPGANConfig(channels=1, image_size=8, nz=2, hidden=4))
    save_checkpoint(tmp_path / "checkpoint", gan, meta={
        "model": "gan", "model_config": config_to_dict(gan.config), "step": 0})
    code, _, err = run_cli("reconstruct", tmp_path, "--out", tmp_path / "r.png")
    assert code == 2 and "no encoder" in err
