"""k-NN manifold metrics: improved precision/recall and density/coverage.

All four compare squared Euclidean distances with squared k-NN radii (same order, no sqrt). The
(N, M) distance matrix is never held at once: rows are processed in chunks of ~64 MB of float64.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from genlab.errors import UserError
from genlab.metrics._inputs import (
    ArrayLike,
    as_features,
    check_positive_int,
    check_same_dim,
)

_CHUNK_ELEMENTS = 1 << 23  # float64 entries per distance block (64 MB)


def _sq_dist_blocks(
    a: torch.Tensor, b: torch.Tensor, *, same: bool = False
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Yield (start, stop, ||a[start:stop] - b||²) blocks.

    |a|² + |b|² - 2 a·b turns the work into a matmul (fast); in float64 its round-off is ~1e-16
    of the squared norms, far below any k-NN radius. With `same`, self-distances are set to exactly
    0 so the nearest "neighbour" dropped by the radius is the point itself.
    """
    a_sq = (a * a).sum(dim=1)
    b_sq = (b * b).sum(dim=1)
    rows = max(1, _CHUNK_ELEMENTS // max(1, b.shape[0]))
    for start in range(0, a.shape[0], rows):
        stop = min(start + rows, a.shape[0])
        d2 = a[start:stop] @ b.T
        d2.mul_(-2.0).add_(a_sq[start:stop, None]).add_(b_sq[None, :]).clamp_(min=0.0)
        if same:
            idx = torch.arange(stop - start)
            d2[idx, idx + start] = 0.0
        yield start, stop, d2


def _knn_sq_radii(x: torch.Tensor, ks: list[int]) -> dict[int, torch.Tensor]:
    """Squared distance from each row of x to its k-th nearest other row, for each k in ks."""
    kmax = max(ks)
    out = torch.empty(x.shape[0], kmax + 1, dtype=x.dtype)
    for start, stop, d2 in _sq_dist_blocks(x, x, same=True):
        # Column 0 is the point itself (distance 0), so column k is the k-th real neighbour.
        out[start:stop] = torch.topk(d2, kmax + 1, dim=1, largest=False, sorted=True).values
    return {k: out[:, k].contiguous() for k in ks}


def _check_k(k: int, n: int, name: str) -> int:
    k = check_positive_int(k, "k")
    if n < k + 1:
        raise UserError(f"{name} features have {n} samples; k={k} needs at least {k + 1}")
    return k


def manifold_metrics(
    real: ArrayLike,
    fake: ArrayLike,
    *,
    pr_k: int | None = 3,
    dc_k: int | None = 5,
    real_radii: dict[int, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Precision/recall (if `pr_k`) and density/coverage (if `dc_k`) in one pass over distances.

    Returns a dict with keys among `precision`, `recall`, `density`, `coverage`. `real_radii`:
    a dict kept between calls with the same `real` features; the real k-NN radii, the costliest
    part after the real-fake distances, are computed on the first call and read on the next.
    """
    r = as_features(real, "real")
    f = as_features(fake, "fake")
    check_same_dim(r, f)
    if pr_k is None and dc_k is None:
        raise UserError("manifold_metrics needs pr_k or dc_k")
    real_ks = []
    if pr_k is not None:
        pr_k = _check_k(pr_k, r.shape[0], "real")
        _check_k(pr_k, f.shape[0], "fake")
        real_ks.append(pr_k)
    if dc_k is not None:
        dc_k = _check_k(dc_k, r.shape[0], "real")
        real_ks.append(dc_k)

    rt, ft = torch.from_numpy(r), torch.from_numpy(f)
    if real_radii is not None and all(k in real_radii for k in real_ks):
        real_r2 = real_radii
    else:
        real_r2 = _knn_sq_radii(rt, real_ks)
        if real_radii is not None:
            real_radii.update(real_r2)
    n, m = r.shape[0], f.shape[0]
    fake_in_real = torch.zeros(m, dtype=torch.bool)
    real_in_fake = torch.zeros(n, dtype=torch.bool)
    covered = torch.zeros(n, dtype=torch.bool)
    density_count = 0
    if pr_k is not None:
        fake_r2 = _knn_sq_radii(ft, [pr_k])[pr_k]
        pr_r2 = real_r2[pr_k]
    if dc_k is not None:
        dc_r2 = real_r2[dc_k]

    for start, stop, d2 in _sq_dist_blocks(rt, ft):
        if pr_k is not None:
            # Closed balls (<=), as the reference code of Kynkäänniemi et al.
            fake_in_real |= (d2 <= pr_r2[start:stop, None]).any(dim=0)
            real_in_fake[start:stop] = (d2 <= fake_r2[None, :]).any(dim=1)
        if dc_k is not None:
            # Open balls (<), as the reference code of Naeem et al.: then fake == real gives
            # density exactly 1 (each ball holds its centre and k-1 neighbours).
            inside = d2 < dc_r2[start:stop, None]
            density_count += int(inside.sum())
            covered[start:stop] = inside.any(dim=1)

    out: dict[str, float] = {}
    if pr_k is not None:
        out["precision"] = float(fake_in_real.double().mean())
        out["recall"] = float(real_in_fake.double().mean())
    if dc_k is not None:
        out["density"] = density_count / (dc_k * m)
        out["coverage"] = float(covered.double().mean())
    return out


def precision_recall(real: ArrayLike, fake: ArrayLike, *, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019, https://arxiv.org/abs/1904.06991).

    Each set's manifold is the union of balls around its samples with radius = distance to the
    sample's k-th nearest neighbour in the same set (self excluded). precision = fraction of fake
    samples inside the real manifold; recall = fraction of real samples inside the fake manifold.
    Both sets need at least k+1 samples.
    """
    out = manifold_metrics(real, fake, pr_k=k, dc_k=None)
    return out["precision"], out["recall"]


def density_coverage(real: ArrayLike, fake: ArrayLike, *, k: int = 5) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020, https://arxiv.org/abs/2002.09797).

    With r_i the k-NN radius of real_i among reals (self excluded) and B(x, r) the open ball,
    density = 1/(kM) Σ_j Σ_i 1[fake_j ∈ B(real_i, r_i)] (≈1 when fake matches real, unbounded
    above) and coverage = 1/N Σ_i 1[∃ j: fake_j ∈ B(real_i, r_i)]. Real needs at least k+1 samples.
    """
    out = manifold_metrics(real, fake, pr_k=None, dc_k=k)
    return out["density"], out["coverage"]


__all__ = ["density_coverage", "manifold_metrics", "precision_recall"]
