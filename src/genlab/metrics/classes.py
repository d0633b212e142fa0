"""Metrics on a classifier's predictions for generated samples (class-conditional models)."""

from __future__ import annotations

import math

import numpy as np
import torch

from genlab.errors import UserError
from genlab.metrics._inputs import ArrayLike, check_positive_int


def _labels(x: ArrayLike, name: str) -> np.ndarray:
    """Integer labels (N,); a 2-D (N, C) array of logits or probabilities is reduced by argmax."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim == 2:
        if not np.isfinite(arr).all():
            raise UserError(f"{name} scores contain NaN or inf")
        arr = arr.argmax(axis=1)
    if arr.ndim != 1:
        raise UserError(f"{name} must be labels (N,) or scores (N, C), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise UserError(f"{name} is empty")
    # Float label arrays are fine only if they hold whole numbers.
    if not np.issubdtype(arr.dtype, np.integer) and not (
        np.issubdtype(arr.dtype, np.number) and np.all(np.mod(arr, 1) == 0)
    ):
        raise UserError(f"{name} labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def class_accuracy(predicted: ArrayLike, target: ArrayLike) -> float:
    """Fraction of generated samples whose predicted class equals the requested class.

    `predicted` is labels (N,) or classifier scores (N, C) (argmax is taken); `target` is (N,).
    """
    p = _labels(predicted, "predicted")
    t = _labels(target, "target")
    if p.shape != t.shape:
        raise UserError(f"predicted has {p.shape[0]} samples but target has {t.shape[0]}")
    return float((p == t).mean())


def mode_entropy(predicted: ArrayLike, num_classes: int) -> float:
    """Entropy in nats of the histogram of predicted classes: a mode-collapse check.

    0 when every sample lands in one class; the maximum ln(num_classes) when classes are uniform.
    `predicted` is labels (N,) or scores (N, C).
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    p = _labels(predicted, "predicted")
    if p.min() < 0 or p.max() >= num_classes:
        raise UserError(
            f"predicted labels must lie in [0, {num_classes}), got range [{p.min()}, {p.max()}]"
        )
    freq = np.bincount(p, minlength=num_classes) / p.shape[0]
    freq = freq[freq > 0]  # 0·ln 0 = 0
    return float(-(freq * np.log(freq)).sum())


def mode_coverage(predicted: ArrayLike, num_classes: int) -> float:
    """`mode_entropy` normalized by its maximum ln(num_classes): 1 = uniform over classes."""
    num_classes = check_positive_int(num_classes, "num_classes", minimum=2)
    return mode_entropy(predicted, num_classes) / math.log(num_classes)
