"""Tests for genlab.metrics: closed forms, hand-counted toy cases and reference implementations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from scipy.spatial.distance import cdist

from genlab.errors import UserError
from genlab.metrics import (
    class_accuracy,
    compute_all,
    density_coverage,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    kid,
    manifold_metrics,
    mode_coverage,
    mode_entropy,
    precision_recall,
)
from genlab.metrics import manifold as manifold_module


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _exact_moment_samples(
    rng: np.random.Generator, n: int, mu: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    """Samples whose sample mean and (ddof=1) covariance equal mu and sigma exactly."""
    z = rng.standard_normal((n, mu.shape[0]))
    z -= z.mean(axis=0)
    # Whiten so the sample covariance is exactly I, then colour with a Cholesky factor.
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(sigma).T + mu


def _fd_closed_form(mu1, s1, mu2, s2) -> float:
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


# ---------------------------------------------------------------- Fréchet distance


def test_fd_from_stats_diagonal_closed_form():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0.1, 3.0, 8), rng.uniform(0.1, 3.0, 8)
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    # For diagonal covariances Tr(S1 + S2 - 2 (S1 S2)^½) = Σ (sqrt(a) - sqrt(b))².
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance_from_stats(mu1, np.diag(a), mu2, np.diag(b))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("d", [2, 16, 64])
def test_fd_from_stats_full_covariance_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    expected = _fd_closed_form(mu1, s1, mu2, s2)
    assert frechet_distance_from_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_fd_on_exact_moment_samples_matches_closed_form():
    rng = np.random.default_rng(1)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d) + 1.0
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    x = _exact_moment_samples(rng, 200, mu1, s1)
    y = _exact_moment_samples(rng, 300, mu2, s2)
    mu_x, s_x = gaussian_stats(x)
    np.testing.assert_allclose(mu_x, mu1, atol=1e-12)
    np.testing.assert_allclose(s_x, s1, atol=1e-10)
    assert frechet_distance(x, y) == pytest.approx(_fd_closed_form(mu1, s1, mu2, s2), rel=1e-9)


def test_fd_symmetric_zero_on_identical_and_dtype_independent():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 10))
    y = 1.5 * rng.standard_normal((200, 10)) + 0.3
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-10)
    assert frechet_distance(x, y) > 1.0
    assert 0.0 <= frechet_distance(x, x) < 1e-9
    # Torch and float32 inputs go through the same float64 computation.
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    expected = frechet_distance(x32.astype(np.float64), y32.astype(np.float64))
    assert frechet_distance(torch.from_numpy(x32), torch.from_numpy(y32)) == expected
    assert frechet_distance(x32, y32) == expected


def test_fd_handles_rank_deficient_covariance():
    # Fewer samples than dimensions: singular covariances must not produce NaN or negative FD.
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((10, 32)), rng.standard_normal((12, 32))
    value = frechet_distance(x, y)
    assert math.isfinite(value) and value > 0.0
    assert 0.0 <= frechet_distance(x, x) < 1e-9


# ---------------------------------------------------------------- KID


def _kernel(a: np.ndarray, b: np.ndarray) -> float:
    return (float(a @ b) / a.shape[0] + 1.0) ** 3


def _mmd2_unbiased_loops(x: np.ndarray, y: np.ndarray) -> float:
    m = len(x)
    xx = sum(_kernel(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(_kernel(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(_kernel(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / (m * m)


def test_kid_single_subset_matches_hand_computation():
    x = np.array([[0.0, 1.0], [1.0, 2.0], [-1.0, 0.5], [2.0, -1.0]])
    y = np.array([[0.5, 0.5], [3.0, 1.0], [-2.0, -2.0], [1.0, 1.5]])
    mean, std = kid(x, y, num_subsets=1, subset_size=4)
    # One subset holding every sample, so the random draw only permutes (MMD² is invariant).
    assert mean == pytest.approx(_mmd2_unbiased_loops(x, y), rel=1e-12)
    assert std == 0.0


def test_kid_subsets_follow_seeded_default_rng():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((15, 3)) + 0.5
    draws = np.random.default_rng(7)
    scores = []
    for _ in range(3):
        ix = draws.choice(20, size=5, replace=False)
        iy = draws.choice(15, size=5, replace=False)
        scores.append(_mmd2_unbiased_loops(x[ix], y[iy]))
    mean, std = kid(x, y, num_subsets=3, subset_size=5, seed=7)
    assert mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert std == pytest.approx(np.std(scores), rel=1e-10)
    assert kid(x, y, num_subsets=3, subset_size=5, seed=7) == (mean, std)
    assert kid(x, y, num_subsets=3, subset_size=5, seed=8) != (mean, std)


def test_kid_on_identical_sets_is_small_and_non_positive():
    # Unbiased MMD²(X, X) = -2 (tr K - 1ᵀK1/m) / (m(m-1)) <= 0 for a PSD kernel matrix K:
    # not 0, because the within-set term drops the diagonal and the cross term keeps it.
    rng = np.random.default_rng(5)
    x = rng.standard_normal((50, 4))
    k = (x @ x.T / 4 + 1.0) ** 3
    m = len(x)
    expected = -2 * (np.trace(k) - k.sum() / m) / (m * (m - 1))
    mean, _ = kid(x, x, num_subsets=1, subset_size=m)
    assert mean == pytest.approx(expected, rel=1e-10)
    # ... and, as 1ᵀK1 >= 0, no larger in size than 2·mean(diag K)/(m-1): it vanishes as 1/m.
    assert -2 * np.trace(k) / (m * (m - 1)) <= mean <= 0.0


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((1500, 8)), rng.standard_normal((1500, 8))
    same_mean, same_std = kid(x, y, num_subsets=20, subset_size=500)
    shift_mean, shift_std = kid(x, y + 0.5, num_subsets=20, subset_size=500)
    assert abs(same_mean) < 0.01
    assert abs(same_mean) < 2 * same_std  # noise, not signal
    assert shift_mean > 0.1
    assert shift_mean > 10 * shift_std


def test_kid_caps_subset_size_at_smaller_set():
    rng = np.random.default_rng(8)
    x, y = rng.standard_normal((6, 2)), rng.standard_normal((9, 2))
    mean, _ = kid(x, y, num_subsets=1, subset_size=1000)
    draws = np.random.default_rng(0)
    ix, iy = draws.choice(6, size=6, replace=False), draws.choice(9, size=6, replace=False)
    assert mean == pytest.approx(_mmd2_unbiased_loops(x[ix], y[iy]), rel=1e-12)


# ---------------------------------------------------------------- torchmetrics agreement


def test_fd_and_kid_agree_with_torchmetrics():
    fid_mod = pytest.importorskip("torchmetrics.image.fid")
    kid_mod = pytest.importorskip("torchmetrics.image.kid")
    if not hasattr(fid_mod, "_compute_fid") or not hasattr(kid_mod, "poly_mmd"):
        pytest.skip("this torchmetrics version has no _compute_fid / poly_mmd")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((400, 16))
    y = 0.8 * rng.standard_normal((400, 16)) @ rng.standard_normal((16, 16)) / 4 + 0.2
    stats = [torch.from_numpy(s) for s in (*gaussian_stats(x), *gaussian_stats(y))]
    expected_fd = float(fid_mod._compute_fid(*stats))
    assert frechet_distance(x, y) == pytest.approx(expected_fd, rel=1e-6)

    expected_kid = float(kid_mod.poly_mmd(torch.from_numpy(x), torch.from_numpy(y)))
    mean, _ = kid(x, y, num_subsets=1, subset_size=len(x))
    assert mean == pytest.approx(expected_kid, rel=1e-6)


# ---------------------------------------------------------------- precision / recall / D&C


def _reference_manifold(real: np.ndarray, fake: np.ndarray, k_pr: int, k_dc: int) -> dict:
    """Brute force with direct distances, written straight from the papers' definitions."""
    rr, ff, rf = cdist(real, real), cdist(fake, fake), cdist(real, fake)
    r_pr = np.sort(rr, axis=1)[:, k_pr]  # column 0 is the point itself
    f_pr = np.sort(ff, axis=1)[:, k_pr]
    r_dc = np.sort(rr, axis=1)[:, k_dc]
    return {
        "precision": (rf <= r_pr[:, None]).any(axis=0).mean(),
        "recall": (rf <= f_pr[None, :]).any(axis=1).mean(),
        "density": (rf < r_dc[:, None]).sum() / (k_dc * len(fake)),
        "coverage": (rf < r_dc[:, None]).any(axis=1).mean(),
    }


def test_manifold_metrics_hand_counted_1d():
    real = np.array([[0.0], [1.0], [2.0], [3.0]])  # k=1 radii all 1: manifold [-1, 4]
    fake = np.array([[0.5], [3.5], [5.0], [20.0], [21.0]])
    # fake k=1 radii 3, 1.5, 1.5, 1, 1: [-2.5, 3.5] already holds every real point.
    assert precision_recall(real, fake, k=1) == (pytest.approx(2 / 5), pytest.approx(1.0))
    # Open balls (-1,1), (0,2), (1,3), (2,4): 0.5 lies in two, 3.5 in one -> 3 / (k·M) = 3/5.
    # Real 2 has no fake closer than 1.5, the others do -> coverage 3/4.
    density, coverage = density_coverage(real, fake, k=1)
    assert density == pytest.approx(3 / 5)
    assert coverage == pytest.approx(3 / 4)


def test_ball_boundary_conventions():
    # Fake 4 lies exactly on the radius-1 ball of real 3: inside for precision (closed ball,
    # Kynkäänniemi et al.), outside for density/coverage (open ball, Naeem et al.).
    real = np.array([[0.0], [1.0], [2.0], [3.0]])
    fake = np.array([[4.0], [100.0]])
    assert precision_recall(real, fake, k=1)[0] == pytest.approx(0.5)
    assert density_coverage(real, fake, k=1) == (0.0, 0.0)


def test_manifold_metrics_fake_equals_real():
    x = np.random.default_rng(10).standard_normal((200, 5))
    assert precision_recall(x, x.copy(), k=3) == (1.0, 1.0)
    density, coverage = density_coverage(x, x.copy(), k=5)
    # Each open ball holds its centre and k-1 neighbours, so density is exactly 1.
    assert density == pytest.approx(1.0)
    assert coverage == 1.0


def test_manifold_metrics_fake_far_away():
    rng = np.random.default_rng(11)
    real, fake = rng.standard_normal((100, 4)), rng.standard_normal((80, 4)) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)
    assert density_coverage(real, fake) == (0.0, 0.0)


def test_manifold_metrics_match_brute_force_across_chunks(monkeypatch):
    rng = np.random.default_rng(12)
    real = rng.standard_normal((120, 6))
    fake = 1.3 * rng.standard_normal((90, 6)) + 0.4
    expected = _reference_manifold(real, fake, 3, 5)
    for chunk in (1 << 23, 200, 7):  # one block, several, one row per block
        monkeypatch.setattr(manifold_module, "_CHUNK_ELEMENTS", chunk)
        got = manifold_metrics(torch.from_numpy(real).float().double(), fake, pr_k=3, dc_k=5)
        assert got == pytest.approx(expected, abs=1e-12)
    assert 0.0 < expected["precision"] < 1.0 and 0.0 < expected["coverage"] < 1.0


# ---------------------------------------------------------------- classes


def test_class_accuracy_labels_and_scores():
    target = np.array([0, 1, 2, 2])
    assert class_accuracy(np.array([0, 1, 1, 2]), target) == 0.75
    scores = torch.tensor([[3.0, 0, 0], [0, 2.0, 0], [0, 0, 1.0], [5.0, 0, 0]])
    assert class_accuracy(scores, torch.tensor([0, 1, 2, 2])) == 0.75
    with pytest.raises(UserError, match="samples"):
        class_accuracy(np.array([0, 1]), target)


def test_mode_entropy_and_coverage():
    assert mode_entropy(np.zeros(10, dtype=int), 4) == 0.0
    assert mode_entropy(np.arange(8) % 4, 4) == pytest.approx(math.log(4))
    # Histogram (1/2, 1/4, 1/4, 0).
    expected = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert mode_entropy([0, 0, 1, 2], 4) == pytest.approx(expected)
    assert mode_coverage([0, 0, 1, 2], 4) == pytest.approx(expected / math.log(4))
    assert mode_coverage(np.arange(6) % 3, 3) == pytest.approx(1.0)
    with pytest.raises(UserError, match=r"\[0, 4\)"):
        mode_entropy([0, 4], 4)


# ---------------------------------------------------------------- compute_all and validation


def test_compute_all_keys_and_consistency():
    rng = np.random.default_rng(13)
    real, fake = rng.standard_normal((300, 8)), rng.standard_normal((250, 8)) + 0.2
    out = compute_all(real, fake, seed=3, kid_subsets=5, kid_subset_size=100)
    assert list(out) == ["fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage"]
    assert all(isinstance(v, float) for v in out.values())
    assert out["fd"] == frechet_distance(real, fake)
    assert (out["kid_mean"], out["kid_std"]) == kid(
        real, fake, num_subsets=5, subset_size=100, seed=3
    )
    assert (out["precision"], out["recall"]) == precision_recall(real, fake, k=3)
    assert (out["density"], out["coverage"]) == density_coverage(real, fake, k=5)


def test_compute_all_real_cache_gives_the_same_figures_and_computes_real_once(monkeypatch):
    rng = np.random.default_rng(14)
    real = rng.standard_normal((200, 6))
    fakes = [rng.standard_normal((150, 6)) + shift for shift in (0.0, 0.5)]
    plain = [compute_all(real, f, seed=1, kid_subsets=3, kid_subset_size=50) for f in fakes]
    radii_calls = []
    knn = manifold_module._knn_sq_radii
    monkeypatch.setattr(manifold_module, "_knn_sq_radii",
                        lambda x, ks: radii_calls.append(x.shape[0]) or knn(x, ks))
    cache: dict = {}
    cached = [compute_all(real, f, seed=1, kid_subsets=3, kid_subset_size=50, real_cache=cache)
              for f in fakes]
    assert cached == plain
    # real radii once, fake radii (for recall) on every call
    assert radii_calls == [200, 150, 150]


BAD_INPUTS = {
    "dimensions differ": (np.zeros((10, 3)), np.zeros((10, 4))),
    "NaN or inf": (np.zeros((10, 3)), np.full((10, 3), np.nan)),
    "2-D": (np.zeros(10), np.zeros((10, 1))),
}


@pytest.mark.parametrize(
    ("fn", "case"),
    list(
        itertools.product(
            [frechet_distance, kid, precision_recall, density_coverage, compute_all], BAD_INPUTS
        )
    ),
)
def test_invalid_features_raise_user_error(fn, case):
    real, fake = BAD_INPUTS[case]
    with pytest.raises(UserError, match=case):
        fn(real, fake)


def test_too_few_samples_for_k():
    real, fake = np.random.default_rng(14).standard_normal((2, 4, 3))
    with pytest.raises(UserError, match="k=5 needs at least 6"):
        density_coverage(real, fake, k=5)
    with pytest.raises(UserError, match="k=3 needs at least 4"):
        precision_recall(real, fake[:3], k=3)
    with pytest.raises(UserError, match="at least 2"):
        frechet_distance(real[:1], fake)
    with pytest.raises(UserError, match="k must be"):
        precision_recall(real, fake, k=0)
