"""Sample-quality metrics on feature arrays (N, D), numpy or torch; results are Python floats.

Feature extraction (Inception etc.) lives elsewhere; everything here works on given features.
"""

from genlab.metrics.classes import class_accuracy, mode_coverage, mode_entropy
from genlab.metrics.distances import (
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    kid,
)
from genlab.metrics.manifold import density_coverage, manifold_metrics, precision_recall
from genlab.metrics.summary import compute_all

__all__ = [
    "class_accuracy",
    "compute_all",
    "density_coverage",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "kid",
    "manifold_metrics",
    "mode_coverage",
    "mode_entropy",
    "precision_recall",
]
