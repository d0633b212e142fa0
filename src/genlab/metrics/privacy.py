"""Memorization and membership-inference statistics: plain functions on distances and scores.

- `binomial_ci`: Wilson score interval of a proportion.
- `closer_to_train`: the fraction of generated samples nearer to a training image than to a
  held-out one (0.5 when the model does not copy), with its interval.
- `calibrated_ratio`, `near_copies`: nearest distance over the mean of the next five, so a
  generated image that sits among many similar training images (a plain T-shirt) is not called a
  copy; the threshold is the 0.1th percentile of the same ratio for held-out images.
- `roc_auc`, `tpr_at_fpr`, `attack_report`: an attack's scores (higher = "member") as ROC AUC with
  a seeded stratified bootstrap interval and the true-positive rate at a low false-positive rate
  (Carlini et al. 2022, "Membership inference attacks from first principles",
  https://arxiv.org/abs/2112.03570, argue that this is the figure that matters).
- `zu_test`: the three-sample data-copying test of Meehan, Chaudhuri and Dasgupta 2020
  (https://arxiv.org/abs/2004.05675): Z_U well below 0 means generated samples sit closer to the
  training set than held-out samples do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

Z95 = 1.959963984540054  # two-sided 95% normal quantile
COPY_PERCENTILE = 0.1  # percent of held-out images below the near-copy threshold
NEXT = 5  # neighbours after the nearest in the calibrated ratio
BOOTSTRAP = 200
FPRS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0.1pct_fpr": 0.001}


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def binomial_ci(successes: int, n: int) -> list[float]:
    """Wilson score 95% interval of `successes / n` (good at small n and near 0 or 1)."""
    if n <= 0:
        raise ValueError("a proportion needs n >= 1")
    p = successes / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return [low, high]


def closer_to_train(d_train: Any, d_heldout: Any) -> dict[str, Any]:
    """Fraction of generated samples whose nearest training image (`d_train`, (N,)) is strictly
    nearer than their nearest held-out image (`d_heldout`); ties count one half, so a generator
    emitting held-out images (distance 0 to held-out) is not mistaken for a copier."""
    a, b = _np(d_train), _np(d_heldout)
    wins = float((a < b).sum() + 0.5 * (a == b).sum())
    n = a.shape[0]
    return {"fraction": wins / n, "ci95": binomial_ci(round(wins), n), "n": n}


def calibrated_ratio(dists: Any) -> np.ndarray:
    """`(N, 1 + NEXT)` sorted neighbour distances -> nearest / mean of the next five. An exact
    copy among exact duplicates (0 / 0) is a ratio of 0."""
    d = _np(dists)
    if d.shape[1] < 1 + NEXT:
        raise ValueError(f"the calibrated ratio needs {1 + NEXT} neighbours, got {d.shape[1]}")
    rest = d[:, 1:1 + NEXT].mean(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(rest > 0, d[:, 0] / np.where(rest > 0, rest, 1.0), 0.0)
    return ratio


def near_copies(generated_ratio: Any, heldout_ratio: Any,
                percentile: float = COPY_PERCENTILE) -> dict[str, Any]:
    """Generated samples whose calibrated ratio is below the `percentile`-th percentile of the
    held-out images' ratios (both measured against the same training set)."""
    g, h = _np(generated_ratio), _np(heldout_ratio)
    threshold = float(np.percentile(h, percentile))
    copies = g < threshold
    count = int(copies.sum())
    # exact copies (ratio 0) always count, also when a held-out image has a duplicate in train
    count += int(((g == 0) & ~copies).sum())
    return {"count": count, "fraction": count / len(g), "threshold": threshold,
            "ci95": binomial_ci(count, len(g)), "baseline_fraction": percentile / 100}


# --- membership inference ------------------------------------------------------------------------

def roc_auc(member_scores: Any, nonmember_scores: Any) -> float:
    """P(score of a member > score of a non-member), ties one half (the Mann-Whitney U / mn)."""
    m, n = _np(member_scores), _np(nonmember_scores)
    return float(_auc_batch(m[None], n[None])[0])


def _auc_batch(m: np.ndarray, n: np.ndarray) -> np.ndarray:
    """AUC of each row pair: `m` (B, M), `n` (B, N); average ranks handle ties."""
    from scipy.stats import rankdata

    both = np.concatenate([m, n], 1)
    ranks = rankdata(both, axis=1)
    mm, nn = m.shape[1], n.shape[1]
    u = ranks[:, :mm].sum(1) - mm * (mm + 1) / 2
    return u / (mm * nn)


def tpr_at_fpr(member_scores: Any, nonmember_scores: Any, fpr: float) -> float | None:
    """Fraction of members scored above the threshold that at most `fpr` of the non-members
    exceed (a strict threshold, so ties never add false positives). None when there are fewer
    than 1 / fpr non-members: the rate cannot be measured."""
    m, n = _np(member_scores), _np(nonmember_scores)
    if len(n) < round(1 / fpr):
        return None
    allowed = math.floor(fpr * len(n) + 1e-9)  # false positives allowed
    ordered = np.sort(n)[::-1]
    # the threshold: the (allowed+1)-th highest non-member score; members strictly above it
    threshold = ordered[allowed] if allowed < len(n) else -np.inf
    return float((m > threshold).mean())


def attack_report(member_scores: Any, nonmember_scores: Any, *, seed: int,
                  bootstrap: int = BOOTSTRAP) -> dict[str, Any]:
    """AUC with a stratified percentile-bootstrap 95% interval (members and non-members
    resampled separately, seeded) and the TPR at 1% and 0.1% FPR."""
    m, n = _np(member_scores), _np(nonmember_scores)
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("attack scores must be finite")
    rng = np.random.default_rng(seed)
    aucs = []
    for start in range(0, bootstrap, 50):  # batches keep the (B, M + N) rank matrix small
        b = min(50, bootstrap - start)
        mi = rng.integers(0, len(m), (b, len(m)))
        ni = rng.integers(0, len(n), (b, len(n)))
        aucs.append(_auc_batch(m[mi], n[ni]))
    auc_boot = np.concatenate(aucs)
    out: dict[str, Any] = {"auc": roc_auc(m, n),
                           "auc_ci95": [float(np.percentile(auc_boot, 2.5)),
                                        float(np.percentile(auc_boot, 97.5))]}
    for key, fpr in FPRS.items():
        out[key] = tpr_at_fpr(m, n, fpr)
    out.update({"n_members": len(m), "n_nonmembers": len(n), "bootstrap": bootstrap})
    return out


# --- Meehan et al. 2020 three-sample test ------------------------------------------------------

def kmeans(x: torch.Tensor, k: int, *, seed: int, iterations: int = 25) -> torch.Tensor:
    """Lloyd's k-means with seeded random initial centres; returns the centres `(k, D)`."""
    from genlab.metrics.neighbours import nearest

    g = torch.Generator().manual_seed(seed)
    x = x.reshape(x.shape[0], -1).float()
    centres = x[torch.randperm(x.shape[0], generator=g)[:k]].clone()
    for _ in range(iterations):
        _, idx = nearest(x, centres, 1)
        idx = idx[:, 0]
        sums = torch.zeros_like(centres).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).float()
        moved = sums / counts.clamp(min=1)[:, None]
        centres = torch.where(counts[:, None] > 0, moved, centres)
    return centres


def _mann_whitney_z(generated: np.ndarray, heldout: np.ndarray) -> float:
    """Z of U = #pairs with generated distance > held-out distance (ties one half)."""
    m, n = len(generated), len(heldout)
    u = _auc_batch(generated[None], heldout[None])[0] * m * n
    return float((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12))


def zu_test(train: torch.Tensor, heldout: torch.Tensor, generated: torch.Tensor, *, seed: int,
            cells: int = 20, min_per_cell: int = 5) -> dict[str, Any]:
    """Meehan et al.'s C_T: cells from k-means on `train`; in each cell the Mann-Whitney Z of
    generated vs held-out distances to their nearest training point; averaged with the held-out
    share of each cell as weight, over cells holding `min_per_cell` of both. Negative: copying;
    positive: under-fitting; near 0: neither."""
    from genlab.metrics.neighbours import nearest

    k = max(1, min(cells, train.shape[0] // 10))
    centres = kmeans(train, k, seed=seed)
    d_h = nearest(heldout, train, 1)[0][:, 0].double().numpy()
    d_g = nearest(generated, train, 1)[0][:, 0].double().numpy()
    cell_h = nearest(heldout, centres, 1)[1][:, 0].numpy()
    cell_g = nearest(generated, centres, 1)[1][:, 0].numpy()
    total, weight, used = 0.0, 0.0, 0
    for c in range(k):
        h, g = d_h[cell_h == c], d_g[cell_g == c]
        if len(h) < min_per_cell or len(g) < min_per_cell:
            continue
        share = len(h) / len(d_h)
        total += share * _mann_whitney_z(g, h)
        weight += share
        used += 1
    return {"zu": total / weight if weight else None, "cells": k, "cells_used": used}
