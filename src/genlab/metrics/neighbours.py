"""Exact nearest neighbours by chunked matrix products.

`||q - r||^2 = ||q||^2 + ||r||^2 - 2 q.r`: one matrix product per block of queries and references,
so 10k generated images against 60k training images at 784-d is a few GEMMs instead of a
(10k, 60k, 784) difference tensor (`torch.cdist` on CPU is several times slower here; see
benchmarks/audit_speed.py). The k smallest squared distances of each query block are kept as it
goes, so memory stays at one (query block, reference block) matrix. The chosen neighbours' distances
are then computed again directly, which removes the cancellation error of the expansion for
near-identical pairs (exact copies come out at exactly 0).
"""

from __future__ import annotations

import torch

QUERY_BLOCK = 2048
REFERENCE_BLOCK = 16384


def _flat(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).float()


@torch.no_grad()
def nearest(queries: torch.Tensor, references: torch.Tensor, k: int = 1, *,
            query_block: int = QUERY_BLOCK, reference_block: int = REFERENCE_BLOCK
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` nearest references of each query, Euclidean, in float32.

    `queries` (Q, ...) and `references` (R, ...) are flattened to vectors. Returns distances
    `(Q, k)` in increasing order and the indices `(Q, k)` into `references`.
    """
    q, r = _flat(queries), _flat(references)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} dimensions, references {r.shape[1]}")
    if not 1 <= k <= r.shape[0]:
        raise ValueError(f"k must be in [1, {r.shape[0]}], got {k}")
    r_sq = (r * r).sum(1)  # (R,)
    dists, index = [], []
    for qs in range(0, q.shape[0], query_block):
        qb = q[qs:qs + query_block]  # (B, D)
        qb_sq = (qb * qb).sum(1, keepdim=True)  # (B, 1)
        best_d = qb.new_full((qb.shape[0], 0), float("inf"))
        best_i = torch.empty((qb.shape[0], 0), dtype=torch.long)
        for rs in range(0, r.shape[0], reference_block):
            rb = r[rs:rs + reference_block]
            d2 = torch.addmm(qb_sq + r_sq[rs:rs + reference_block], qb, rb.T, alpha=-2.0)
            kk = min(k, rb.shape[0])
            d_blk, i_blk = torch.topk(d2, kk, dim=1, largest=False)  # (B, kk)
            cat_d = torch.cat([best_d, d_blk], 1)
            cat_i = torch.cat([best_i, i_blk + rs], 1)
            keep = min(k, cat_d.shape[1])
            best_d, order = torch.topk(cat_d, keep, dim=1, largest=False)
            best_i = cat_i.gather(1, order)
        # exact distances of the chosen neighbours: (B, k, D) differences, small
        exact = (qb[:, None, :] - r[best_i]).pow(2).sum(-1).sqrt()
        exact, order = exact.sort(1)
        dists.append(exact)
        index.append(best_i.gather(1, order))
    return torch.cat(dists), torch.cat(index)
