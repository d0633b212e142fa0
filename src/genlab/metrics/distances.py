"""Distribution distances on feature arrays: Fréchet distance (FID-style) and KID.

Statistics are computed in float64 whatever the input dtype: covariance traces of Inception-sized
features lose several digits in float32, which is the size of the differences people compare.
"""

from __future__ import annotations

import numpy as np
import torch

from genlab.errors import UserError
from genlab.metrics._inputs import (
    ArrayLike,
    as_features,
    check_positive_int,
    check_same_dim,
)


def gaussian_stats(features: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, as float64 numpy arrays.

    Save these for a fixed reference set and pass them to `frechet_distance_from_stats`.
    """
    x = as_features(features, "input", min_samples=2)
    mu = x.mean(axis=0)
    centered = x - mu
    # ddof=1, as pytorch-fid, the TTUR reference code and torchmetrics do.
    sigma = centered.T @ centered / (x.shape[0] - 1)
    return mu, sigma


def _as_stats(mu: ArrayLike, sigma: ArrayLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(mu, torch.Tensor):
        mu = mu.detach().cpu().numpy()
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.detach().cpu().numpy()
    mu = np.asarray(mu, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(
            f"{name} stats must be a mean (D,) and a covariance (D, D), "
            f"got shapes {tuple(mu.shape)} and {tuple(sigma.shape)}"
        )
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{name} stats contain NaN or inf")
    return mu, sigma


def _sqrtm_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; tiny negative eigenvalues (round-off) count as 0."""
    w, v = np.linalg.eigh(sigma)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance_from_stats(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike
) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d² = ||mu1 - mu2||² + Tr(S1 + S2 - 2 (S1 S2)^½)   (Heusel et al. 2017,
    https://arxiv.org/abs/1706.08500). S1 S2 is not symmetric, so instead of a general sqrtm
    (slow, and complex round-off for near-singular covariances) we use
    Tr((S1 S2)^½) = Tr((S1^½ S2 S1^½)^½): the latter matrix is symmetric PSD, so `eigvalsh` is exact
    enough and stable. The result is clipped at 0 because round-off can make identical sets give
    -1e-12.
    """
    mu1, s1 = _as_stats(mu1, sigma1, "first")
    mu2, s2 = _as_stats(mu2, sigma2, "second")
    if mu1.shape != mu2.shape:
        raise UserError(
            f"feature dimensions differ: D={mu1.shape[0]} vs D={mu2.shape[0]}"
        )
    # Covariances from data are symmetric only up to round-off; eigh reads one triangle.
    s1 = (s1 + s1.T) / 2
    s2 = (s2 + s2.T) / 2
    root1 = _sqrtm_psd(s1)
    middle = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff) + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * tr_covmean
    return max(value, 0.0)


def frechet_distance(real: ArrayLike, fake: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature sets (FID on Inception
    features; https://arxiv.org/abs/1706.08500). Needs at least 2 samples per set."""
    r = as_features(real, "real", min_samples=2)
    f = as_features(fake, "fake", min_samples=2)
    check_same_dim(r, f)
    return frechet_distance_from_stats(*gaussian_stats(r), *gaussian_stats(f))


def _poly_mmd2_unbiased(x: torch.Tensor, y: torch.Tensor) -> float:
    """Unbiased MMD² with k(a, b) = (a·b + 1)³ for rows already scaled by 1/sqrt(D)."""
    m = x.shape[0]

    def kernel_sum(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
        g = a @ b.T
        g.add_(1.0).pow_(3)  # in place: these are the only m x m buffers
        return float(g.sum()), float(g.diagonal().sum())

    sum_xx, diag_xx = kernel_sum(x, x)
    sum_yy, diag_yy = kernel_sum(y, y)
    sum_xy, _ = kernel_sum(x, y)
    # Within-set terms drop the diagonal (k(x_i, x_i)) to stay unbiased; the cross term keeps all.
    within = (sum_xx - diag_xx + sum_yy - diag_yy) / (m * (m - 1))
    return within - 2.0 * sum_xy / (m * m)


def kid(
    real: ArrayLike,
    fake: ArrayLike,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018, https://arxiv.org/abs/1801.01401).

    Unbiased MMD² with the cubic kernel k(x, y) = (x·y/D + 1)³, averaged over `num_subsets` random
    subsets of `subset_size` samples from each set (capped at the smaller set; drawn without
    replacement within a subset by `numpy.random.default_rng(seed)`). Returns (mean, std) with the
    population std, as torchmetrics. Being unbiased, the estimate can be slightly negative.
    """
    num_subsets = check_positive_int(num_subsets, "num_subsets")
    subset_size = check_positive_int(subset_size, "subset_size", minimum=2)
    r = as_features(real, "real", min_samples=2)
    f = as_features(fake, "fake", min_samples=2)
    check_same_dim(r, f)
    m = min(subset_size, r.shape[0], f.shape[0])
    scale = 1.0 / np.sqrt(r.shape[1])
    # Scaling once by 1/sqrt(D) turns the kernel's x·y/D into a plain matmul per subset.
    rt = torch.from_numpy(r * scale)
    ft = torch.from_numpy(f * scale)
    rng = np.random.default_rng(seed)
    scores = np.empty(num_subsets, dtype=np.float64)
    for s in range(num_subsets):
        ir = torch.from_numpy(rng.choice(r.shape[0], size=m, replace=False))
        jf = torch.from_numpy(rng.choice(f.shape[0], size=m, replace=False))
        scores[s] = _poly_mmd2_unbiased(rt[ir], ft[jf])
    return float(scores.mean()), float(scores.std())
