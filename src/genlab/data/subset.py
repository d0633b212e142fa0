"""Seeded per-class subsets of a labelled split, and the hash that names one.

`genlab train --set train.per_class=100` trains on 100 images per class chosen by the run's seed and
records the subset's hash in run.json; `genlab utility` chooses its real images with the same
function and compares the hashes, so a generator that saw more labelled images than the classifier
it augments is caught (docs/utility.md).

The hash is SHA-256 over the dataset's content hash (`ImageData.sha256`, so the same images under
another path give the same hash), the split and the sorted selected indices (little-endian int64).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from genlab.errors import UserError
from genlab.limits import derive_seed

SUBSET_STREAM = 7  # the derive_seed index of the subset's permutation (apart from the batches')


def per_class_indices(labels: torch.Tensor | None, per_class: int, seed: int,
                      what: str = "train.per_class") -> torch.Tensor:
    """Sorted int64 indices of `per_class` examples of every class, chosen by `seed`.

    One seeded permutation of all indices; each class keeps its first `per_class` members in
    that order. A class with fewer members is an error (a subset that is not balanced would not
    be the regime the user asked for)."""
    if labels is None:
        raise UserError(f"{what} needs a labelled dataset; this one has no labels")
    if per_class < 1:
        raise UserError(f"{what} must be >= 1, got {per_class}")
    g = torch.Generator().manual_seed(derive_seed(seed, SUBSET_STREAM))
    order = torch.randperm(len(labels), generator=g)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = order[labels[order] == c]
        if len(members) < per_class:
            raise UserError(f"{what}={per_class}: class {c} has only {len(members)} examples; "
                            f"use at most {len(members)}")
        chosen.append(members[:per_class])
    return torch.cat(chosen).sort().values


def subset_sha256(indices: torch.Tensor, dataset_sha256: str, split: str) -> str:
    """The name of a subset: SHA-256 of the dataset hash, the split and the sorted indices."""
    digest = hashlib.sha256(f"{dataset_sha256}\n{split}\n".encode())
    digest.update(np.sort(indices.numpy()).astype("<i8").tobytes())
    return digest.hexdigest()
