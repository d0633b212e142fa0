"""All feature-based sample-quality metrics in one call."""

from __future__ import annotations

from genlab.metrics._inputs import ArrayLike, as_features, check_same_dim
from genlab.metrics.distances import frechet_distance_from_stats, gaussian_stats, kid
from genlab.metrics.manifold import manifold_metrics


def compute_all(
    real_feats: ArrayLike,
    fake_feats: ArrayLike,
    *,
    seed: int = 0,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    real_cache: dict | None = None,
) -> dict[str, float]:
    """FD, KID, precision/recall (k=3) and density/coverage (k=5) of fake vs real features.

    Returns keys `fd`, `kid_mean`, `kid_std`, `precision`, `recall`, `density`, `coverage`.
    `real_cache`: an empty dict on the first of several calls with the same `real_feats` (fakes,
    then a real-vs-real floor, say), passed again to the others: what depends on the real
    features alone (their Gaussian fit, their k-NN radii) is then computed once.
    """
    # Convert and check once; the metrics below accept the float64 arrays without copying.
    real = as_features(real_feats, "real", min_samples=2)
    fake = as_features(fake_feats, "fake", min_samples=2)
    check_same_dim(real, fake)
    kid_mean, kid_std = kid(
        real, fake, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    # One pass over real-fake distances serves all four manifold metrics.
    cache = {} if real_cache is None else real_cache
    manifold = manifold_metrics(real, fake, pr_k=3, dc_k=5,
                                real_radii=cache.setdefault("knn_sq_radii", {}))
    if "gaussian" not in cache:
        cache["gaussian"] = gaussian_stats(real)
    return {
        "fd": frechet_distance_from_stats(*cache["gaussian"], *gaussian_stats(fake)),
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "precision": manifold["precision"],
        "recall": manifold["recall"],
        "density": manifold["density"],
        "coverage": manifold["coverage"],
    }
