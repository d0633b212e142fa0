"""All feature-based sample-quality metrics in one call."""

from __future__ import annotations

from genlab.metrics._inputs import ArrayLike, as_features, check_same_dim
from genlab.metrics.distances import frechet_distance, kid
from genlab.metrics.manifold import manifold_metrics


def compute_all(
    real_feats: ArrayLike,
    fake_feats: ArrayLike,
    *,
    seed: int = 0,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
) -> dict[str, float]:
    """FD, KID, precision/recall (k=3) and density/coverage (k=5) of fake vs real features.

    Returns keys `fd`, `kid_mean`, `kid_std`, `precision`, `recall`, `density`, `coverage`.
    """
    # Convert and check once; the metrics below accept the float64 arrays without copying.
    real = as_features(real_feats, "real", min_samples=2)
    fake = as_features(fake_feats, "fake", min_samples=2)
    check_same_dim(real, fake)
    kid_mean, kid_std = kid(
        real, fake, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    # One pass over real-fake distances serves all four manifold metrics.
    manifold = manifold_metrics(real, fake, pr_k=3, dc_k=5)
    return {
        "fd": frechet_distance(real, fake),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "precision": manifold["precision"],
        "recall": manifold["recall"],
        "density": manifold["density"],
        "coverage": manifold["coverage"],
    }
