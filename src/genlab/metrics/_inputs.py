"""Input checks shared by the metrics: everything becomes a finite float64 (N, D) array."""

from __future__ import annotations

import numpy as np
import torch

from genlab.errors import UserError

ArrayLike = np.ndarray | torch.Tensor


def as_features(x: ArrayLike, name: str, *, min_samples: int = 1) -> np.ndarray:
    """Return `x` as a C-contiguous float64 (N, D) array, or raise UserError saying why not."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise UserError(f"{name} features must be 2-D (N, D), got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise UserError(f"{name} features must be real numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.shape[0] < min_samples:
        raise UserError(
            f"{name} features have {arr.shape[0]} samples; this metric needs at least {min_samples}"
        )
    if arr.shape[1] == 0:
        raise UserError(f"{name} features have dimension 0")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=1).sum())
        raise UserError(f"{name} features contain NaN or inf in {bad} sample(s)")
    return arr


def check_same_dim(real: np.ndarray, fake: np.ndarray) -> None:
    if real.shape[1] != fake.shape[1]:
        raise UserError(
            f"feature dimensions differ: real has D={real.shape[1]}, fake has D={fake.shape[1]}"
        )


def check_positive_int(value: int, name: str, *, minimum: int = 1) -> int:
    # bool is an int subclass; `k=True` is almost certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)
