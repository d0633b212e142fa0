"""The mean-embedding generator (`merf`, DP-MERF) and its one private release: the feature norm
that is the sensitivity bound, the noise and its accounting, exact resume without a second
release, training on the release alone, conditioning, and the --dp refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from genlab.modalities.image import tiny_class_images
from genlab.models.merf import MERF, MERFConfig, random_features

pytest.importorskip("opacus")

from genlab.privacy_dp import (
    PrivateRelease,
    epsilon_of,
    make_accountant,
    noise_for_epsilon,
)

TINY = ("model.nz=4", "model.hidden=32", "model.ngf=4", "model.features=512")


def _model(num_classes: int = 4, features: int = 2000, seed: int = 0, **kw) -> MERF:
    torch.manual_seed(seed)
    return MERF(MERFConfig(channels=1, image_size=28, num_classes=num_classes, nz=4, hidden=64,
                           ngf=4, features=features, **kw))


def _tiny_data(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = tiny_class_images(n, np.random.default_rng(0))
    return torch.from_numpy(images)[:, None], torch.from_numpy(labels).long()


def test_features_have_norm_one_and_approximate_the_gaussian_kernel() -> None:
    """||phi(x)|| = 1 for any x (the sensitivity bound needs no clipping), and phi(x).phi(x')
    estimates exp(-||x - x'||^2 / (2 bandwidth^2)): the bandwidth means what the config says."""
    torch.manual_seed(0)
    bandwidth, d = 3.0, 20
    omega = torch.randn(d, 20000, dtype=torch.float64) / bandwidth
    x = torch.cat([torch.rand(50, d, dtype=torch.float64),
                   torch.randn(50, d, dtype=torch.float64) * 100])  # in and far outside [0, 1]
    phi = random_features(x, omega)
    assert phi.shape == (100, 40000)
    torch.testing.assert_close(phi.norm(dim=1), torch.ones(100, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    a, b = torch.rand(2, d, dtype=torch.float64) * 2
    exact = math.exp(-float((a - b).pow(2).sum()) / (2 * bandwidth**2))
    approx = float(random_features(a[None], omega) @ random_features(b[None], omega).t())
    assert abs(approx - exact) < 0.02 and 0.05 < exact < 0.95  # ~1/sqrt(20000) error


def test_one_examples_contribution_has_frobenius_norm_one() -> None:
    """M = sum_i phi(x_i) e_{y_i}^T: removing any one example moves M by exactly norm 1, the L2
    sensitivity the release's noise is scaled to (conditional and unconditional)."""
    images, labels = _tiny_data(16)
    for classes in (4, 0):
        model = _model(num_classes=classes, features=1000)
        y = labels if classes else None
        full = model.data_statistic(images, y)
        assert full.shape == (1000, classes or 1)
        for i in (0, 5, 15):
            keep = torch.arange(16) != i
            without = model.data_statistic(images[keep], y[keep] if classes else None)
            assert float((full - without).norm()) == pytest.approx(1.0, abs=1e-6)
        # chunked sums are the same sums
        torch.testing.assert_close(model.data_statistic(images, y, chunk=3), full, rtol=1e-5,
                                   atol=1e-6)


def test_release_noise_has_the_std_the_accountant_chose() -> None:
    """The noise added is N(0, s^2) per entry, s = noise_for_epsilon(eps, delta, 1.0, 1): checked
    on 200,000 entries (relative standard error of the std 0.16%); seeded; released once."""
    s = noise_for_epsilon(10.0, 1e-6, 1.0, 1, "rdp")
    assert 0.3 < s < 1.0
    statistic = torch.full((20000, 10), 3.0, dtype=torch.float64)
    private = PrivateRelease(noise_multiplier=s, sensitivity=1.0, delta=1e-6, seed=7)
    noise = private.release(statistic) - statistic
    assert abs(float(noise.std()) / s - 1) < 0.01
    assert abs(float(noise.mean())) < 4 * s / math.sqrt(noise.numel())
    assert private.accountant.history == [(s, 1.0, 1)]
    with pytest.raises(RuntimeError, match="released already"):
        private.release(statistic)
    again = PrivateRelease(noise_multiplier=s, sensitivity=1.0, delta=1e-6, seed=7)
    assert torch.equal(again.release(statistic) - statistic, noise)  # seeded by the run's seed
    other = PrivateRelease(noise_multiplier=s, sensitivity=1.0, delta=1e-6, seed=8)
    assert not torch.equal(other.release(statistic) - statistic, noise)


def _exact_gaussian_epsilon(s: float, delta: float) -> float:
    """The exact epsilon of one Gaussian mechanism of sensitivity 1 and std s at delta (Balle &
    Wang 2018): the epsilon where Phi(1/(2s) - eps s) - e^eps Phi(-1/(2s) - eps s) = delta."""
    phi = lambda t: 0.5 * math.erfc(-t / math.sqrt(2))  # noqa: E731
    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        d = phi(1 / (2 * s) - mid * s) - math.exp(mid) * phi(-1 / (2 * s) - mid * s)
        lo, hi = (mid, hi) if d > delta else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("target", [10.0, 1.0])
def test_epsilon_of_one_release_is_opacus_own(target: float) -> None:
    """genlab's epsilon for history [(s, 1.0, 1)] is exactly what Opacus's accountants give for
    one step at sample rate 1, reaches the target, and bounds the exact Gaussian epsilon."""
    from opacus.accountants import PRVAccountant, RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    delta = 1e-6
    s = noise_for_epsilon(target, delta, 1.0, 1, "rdp")
    ours = epsilon_of(make_accountant("rdp", [(s, 1.0, 1)]), delta)
    opacus = RDPAccountant()
    opacus.step(noise_multiplier=s, sample_rate=1.0)
    assert ours == opacus.get_epsilon(delta=delta)
    orders = RDPAccountant.DEFAULT_ALPHAS
    direct, _ = rdp_analysis.get_privacy_spent(
        orders=orders, rdp=rdp_analysis.compute_rdp(q=1.0, noise_multiplier=s, steps=1,
                                                    orders=orders), delta=delta)
    assert ours == pytest.approx(direct, rel=1e-12)
    assert target * 0.98 <= ours <= target * 1.0 + 0.011
    exact = _exact_gaussian_epsilon(s, delta)
    assert exact < ours  # RDP is an upper bound on the true epsilon
    prv = PRVAccountant()
    prv.step(noise_multiplier=s, sample_rate=1.0)
    prv_eps = epsilon_of(make_accountant("prv", [(s, 1.0, 1)]), delta)
    assert prv_eps == pytest.approx(prv.get_epsilon(delta=delta), rel=1e-9)
    assert prv_eps == pytest.approx(exact, abs=0.05 * target)  # PRV is near exact here


@pytest.fixture(scope="module")
def trained() -> tuple[MERF, float, float]:
    """A conditional merf fitted to the tiny data (class = which quadrant holds a bright
    square) and trained 300 steps; the MMD loss before and after, on the same draws."""
    images, labels = _tiny_data(64)
    model = _model(features=2000)
    model.fit_data(model.data_statistic(images, labels), 64)
    model.gen_batch = 128

    def loss() -> float:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(123)
            model.eval()
            with torch.no_grad():
                out = float(model.mmd_loss(1000))
            model.train()
        return out

    before = loss()
    opt = torch.optim.Adam(model.generator.parameters(), lr=1e-2)
    for _ in range(300):
        model.train_step({}, {"generator": opt})
    return model, before, loss()


def test_training_lowers_the_mmd_loss(trained) -> None:
    _, before, after = trained
    assert after < 0.3 * before, (before, after)


def test_conditional_samples_differ_by_class(trained) -> None:
    """The generator learnt each class's quadrant from the release: for class c, the mean of
    its samples is brightest in quadrant c."""
    model = trained[0]
    half = 14
    for c in range(4):
        x = model.sample(200, generator=torch.Generator().manual_seed(c), labels=c)[:, 0]
        means = [float(x[:, r * half:(r + 1) * half, q * half:(q + 1) * half].mean())
                 for r in range(2) for q in range(2)]
        assert int(np.argmax(means)) == c, (c, means)
    same = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert not torch.equal(model.sample(8, generator=same[0], labels=0),
                           model.sample(8, generator=same[1], labels=1))


def _train(run_cli, out: Path, data: str, steps: int, *extra: str):
    args = ["train", "merf", "--data", data, "--steps", steps, "--batch-size", 16, "--out", out,
            "--device", "cpu", "--conditional", "--set", "train.log_every=5",
            "--set", "train.sample_every=0", "--set", "train.checkpoint_every=0",
            "--set", "train.lr_decay_steps=20"]
    args += [a for t in TINY for a in ("--set", t)] + list(extra)
    return run_cli(*args)


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_dp_resume_is_bit_identical_and_never_releases_again(run_cli, idx_spec, tmp_path: Path,
                                                            monkeypatch) -> None:
    """10 + 10 steps give the weights, released embedding, dp state and rows of 20; the resume
    neither computes the data statistic nor draws the release's noise again."""
    calls = {"statistic": 0, "release": 0}
    statistic, release = MERF.data_statistic, PrivateRelease.release

    def counted_statistic(self, *a, **kw):
        calls["statistic"] += 1
        return statistic(self, *a, **kw)

    def counted_release(self, *a, **kw):
        calls["release"] += 1
        return release(self, *a, **kw)

    monkeypatch.setattr(MERF, "data_statistic", counted_statistic)
    monkeypatch.setattr(PrivateRelease, "release", counted_release)
    dp = ("--dp", "--set", "train.dp_epsilon=10", "--set", "train.dp_delta=1e-4")
    code, _, err = _train(run_cli, tmp_path / "whole", idx_spec, 20, *dp)
    assert code == 0, err
    code, _, err = _train(run_cli, tmp_path / "split", idx_spec, 10, *dp)
    assert code == 0, err
    assert calls == {"statistic": 2, "release": 2}
    code, _, err = run_cli("train", "--resume", tmp_path / "split", "--steps", 20)
    assert code == 0, err
    assert calls == {"statistic": 2, "release": 2}  # the resume: no data statistic, no noise
    whole = load_file(tmp_path / "whole" / "checkpoint" / "model.safetensors")
    split = load_file(tmp_path / "split" / "checkpoint" / "model.safetensors")
    assert set(whole) == set(split) and {"omega", "embedding"} <= set(whole)
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert int(whole["fitted_n"]) == 64 and whole["embedding"].abs().sum() > 0
    states = [json.loads((tmp_path / r / "checkpoint" / "state.json").read_text())["dp"]
              for r in ("whole", "split")]
    assert states[0] == states[1]
    s = states[0]["noise_multiplier"]
    assert states[0]["history"] == [[s, 1.0, 1]] and states[0]["sample_rate"] == 1.0
    assert states[0]["epsilon_spent"] == pytest.approx(10, rel=0.02)

    def rows(run: str) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("time", "items_per_s")}
                for r in _rows(tmp_path / run)]

    assert rows("whole") == rows("split") and len(rows("whole")) == 4
    assert {r["epsilon"] for r in rows("whole")} == {states[0]["epsilon_spent"]}  # constant
    code, listing, _ = run_cli("runs", tmp_path)
    assert code == 0 and "epsilon" in listing.splitlines()[0]
    assert f"{states[0]['epsilon_spent']:.3g}" in listing
    code, _, err = run_cli("sample", tmp_path / "whole", "--n", 4, "--label", 1,
                           "--out", tmp_path / "s.png")
    assert code == 0, err
    code, _, err = run_cli("report", tmp_path / "whole", "--out", tmp_path / "card.html")
    assert code == 0, err  # the card says what the guarantee covers for this family
    assert "one noised release of a statistic of the data" in (tmp_path / "card.html").read_text()


def test_generator_training_never_touches_the_data_after_the_release(
        run_cli, idx_spec, tmp_path: Path, monkeypatch) -> None:
    """Right after the statistic is computed, the run's own data tensors are overwritten in
    place (images zeroed, labels all 0): the trained weights stay bit-identical to a run whose
    data was left alone, and every batch the training step got was empty."""
    code, _, err = _train(run_cli, tmp_path / "plain", idx_spec, 12)
    assert code == 0, err
    statistic, step = MERF.data_statistic, MERF.train_step
    seen: list[set] = []

    def then_wipe(self, images, labels=None, **kw):
        out = statistic(self, images, labels, **kw)
        images.zero_()
        if labels is not None:
            labels.zero_()
        return out

    def recording(self, batch, *a, **kw):
        seen.append(set(batch))
        return step(self, batch, *a, **kw)

    monkeypatch.setattr(MERF, "data_statistic", then_wipe)
    monkeypatch.setattr(MERF, "train_step", recording)
    code, _, err = _train(run_cli, tmp_path / "wiped", idx_spec, 12)
    assert code == 0, err
    assert len(seen) == 12 and all(keys == set() for keys in seen)
    plain = load_file(tmp_path / "plain" / "checkpoint" / "model.safetensors")
    wiped = load_file(tmp_path / "wiped" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(plain[k], wiped[k]) for k in plain)
    # the check can fail: a wipe BEFORE the statistic changes the result
    monkeypatch.setattr(MERF, "data_statistic", lambda self, images, labels=None, **kw:
                        statistic(self, images.zero_(), labels, **kw))
    code, _, err = _train(run_cli, tmp_path / "early", idx_spec, 12)
    assert code == 0, err
    early = load_file(tmp_path / "early" / "checkpoint" / "model.safetensors")
    assert not torch.equal(plain["embedding"], early["embedding"])


def test_delta_too_large_is_refused_with_one_line(run_cli, idx_spec, tmp_path: Path) -> None:
    code, _, err = _train(run_cli, tmp_path / "r", idx_spec, 2, "--dp",
                          "--set", "train.dp_epsilon=10", "--set", "train.dp_delta=0.01")
    assert code == 2 and "train.dp_delta=0.01 is larger than 1/(10 n)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3
    assert sum(line.startswith("genlab: error") for line in err.splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_clip_norm_does_not_apply_and_is_refused(run_cli, tmp_path: Path) -> None:
    code, _, err = _train(run_cli, tmp_path / "r", "idx:/nonexistent", 2, "--dp",
                          "--set", "train.dp_epsilon=10", "--set", "train.dp_clip_norm=0.5")
    assert code == 2 and "train.dp_clip_norm does not apply" in err
    assert not (tmp_path / "r").exists()


def test_without_dp_the_embedding_is_the_exact_mean() -> None:
    """s = 0: fit_data keeps M / n itself (a moment-matching network, the non-private baseline)."""
    images, labels = _tiny_data(32)
    model = _model(features=500)
    m = model.data_statistic(images, labels)
    model.fit_data(m, 32)
    torch.testing.assert_close(model.embedding, (m / 32).float())
    per_class = model.embedding.norm(dim=0)
    assert (per_class > 0).all() and (per_class <= 0.25 + 1e-6).all()  # 8 of 32 per class


# --- features of a fixed network (model.perceptual) ---------------------------------------------

@pytest.mark.parametrize("net", ["random", "mnist"])
def test_network_features_keep_each_examples_norm_at_most_one(net: str) -> None:
    """phi(x) = [sqrt(1 - w) phi_rff, sqrt(w) psi]: norm 1 for any image, so one example still
    moves M by exactly 1 and the release's noise and accounting stay right."""
    images, labels = _tiny_data(12)
    model = _model(num_classes=4, features=500, perceptual=net, perceptual_weight=0.7)
    x = torch.cat([torch.rand(6, 1, 28, 28), torch.zeros(1, 1, 28, 28), torch.ones(1, 1, 28, 28)])
    phi = model.features(x)
    assert phi.shape == (8, model.feature_dim) and model.feature_dim > 500
    assert float(phi.norm(dim=1).max()) <= 1.0 + 1e-6
    # the network's share of the squared norm is w
    share = phi[:, 500:].pow(2).sum(1) / phi.pow(2).sum(1)
    torch.testing.assert_close(share[:6], torch.full((6,), 0.7), rtol=0, atol=1e-5)
    full = model.data_statistic(images, labels)
    assert full.shape == (model.feature_dim, 4)
    keep = torch.arange(12) != 3
    without = model.data_statistic(images[keep], labels[keep])
    assert float((full - without).norm()) == pytest.approx(1.0, abs=1e-5)


def test_the_network_is_fixed_and_sees_no_batch() -> None:
    """The net stays in eval mode when the model trains (one example's features never depend on
    the others in its batch), is not in the optimizer, and a generator step leaves it unchanged."""
    model = _model(num_classes=4, features=200, perceptual="random")
    model.train()
    assert not model.perceptual.training
    before = {k: v.clone() for k, v in model.perceptual.state_dict().items()}
    x = torch.rand(6, 1, 28, 28)
    alone = model.features(x[:1])
    torch.testing.assert_close(model.features(x)[:1], alone, rtol=1e-5, atol=1e-6)
    opt = torch.optim.Adam(model.generator.parameters(), lr=1e-2)
    model.train_step({}, {"generator": opt})
    after = model.perceptual.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in model.perceptual.parameters())
    # the generator did get a gradient through the network's part of the loss
    w = model.generator.convs[-1].weight
    g = torch.autograd.grad(model.mmd_loss(8), w)[0]
    assert float(g.abs().sum()) > 0


def test_a_net_trained_on_the_private_data_is_refused() -> None:
    """The shipped fashion-mnist net was trained on Fashion-MNIST's training split: matching its
    features would carry those images past the guarantee, so a run on that data refuses it; the
    mnist net (trained on MNIST's test split) is public there. Unknown names and wrong shapes
    get one line each."""
    from types import SimpleNamespace

    from genlab.errors import UserError

    data = SimpleNamespace(name="fashion-mnist", split="train", images=torch.zeros(2, 1, 28, 28),
                           num_classes=10)
    with pytest.raises(UserError, match="training split"):
        MERF.config_for_data(MERFConfig(perceptual="fashion-mnist"), data, conditional=True)
    ok = MERF.config_for_data(MERFConfig(perceptual="mnist"), data, conditional=True)
    assert ok.perceptual == "mnist" and ok.num_classes == 10
    with pytest.raises(UserError, match=r"model\.perceptual must be one of"):
        MERFConfig(perceptual="vgg").validate(partial=True)
    with pytest.raises(UserError, match="perceptual_weight"):
        MERFConfig(perceptual_weight=1.0).validate(partial=True)
    with pytest.raises(UserError, match=r"model\.perceptual=random"):
        MERF(MERFConfig(channels=3, image_size=28, perceptual="mnist", features=20))


def test_network_features_train_and_resume_exactly(run_cli, idx_spec, tmp_path: Path) -> None:
    """With a random network: 5 + 5 steps give the weights and release of 10 (the network's
    weights come back from the checkpoint), and the run samples."""
    net = ("--set", "model.perceptual=random", "--dp", "--set", "train.dp_epsilon=10",
           "--set", "train.dp_delta=1e-4")
    code, _, err = _train(run_cli, tmp_path / "whole", idx_spec, 10, *net)
    assert code == 0, err
    code, _, err = _train(run_cli, tmp_path / "split", idx_spec, 5, *net)
    assert code == 0, err
    code, _, err = run_cli("train", "--resume", tmp_path / "split", "--steps", 10)
    assert code == 0, err
    whole = load_file(tmp_path / "whole" / "checkpoint" / "model.safetensors")
    split = load_file(tmp_path / "split" / "checkpoint" / "model.safetensors")
    assert any(k.startswith("perceptual.") for k in whole)
    assert set(whole) == set(split) and all(torch.equal(whole[k], split[k]) for k in whole)
    code, _, err = run_cli("sample", tmp_path / "whole", "--n", 4, "--out",
                           tmp_path / "s.png")
    assert code == 0, err


def test_the_features_preset_trains_with_the_public_mnist_net(run_cli, idx_spec,
                                                             tmp_path: Path) -> None:
    """`--preset merf-features` names the shipped mnist net; it loads (SHA-256 pinned) and a
    private run trains and records it in the run's config."""
    code, _, err = _train(run_cli, tmp_path / "r", idx_spec, 2, "--preset", "merf-features",
                          "--dp", "--set", "train.dp_epsilon=10", "--set", "train.dp_delta=1e-4")
    assert code == 0, err
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["preset"] == "merf-features"
    assert record["model_config"]["perceptual"] == "mnist", record["model_config"]
