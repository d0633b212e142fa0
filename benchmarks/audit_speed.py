"""Exact nearest neighbours for `genlab audit`: 60k training x 10k generated images at 784-d.

    python benchmarks/audit_speed.py                     # the issue's shape, 2 threads
    python benchmarks/audit_speed.py --threads 1 --train 20000 --generated 5000

genlab's `nearest` (chunked matrix products, k smallest kept per block, the chosen neighbours'
distances recomputed exactly) against the naive baseline in the same process: `torch.cdist` of
all queries against all references, then `topk`. Both find the k = 6 nearest (the calibrated
ratio needs six). Data: uniform random vectors in [0, 1] of the given shape (the work does not
depend on the values), seeded. Prints one JSON line: seconds of each, their ratio, and whether
the two agree on the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from genlab.metrics.neighbours import nearest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=60000)
    p.add_argument("--generated", type=int, default=10000)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--k", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-baseline", action="store_true", help="Time genlab only.")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    train = torch.rand(args.train, args.dim, generator=g)
    generated = torch.rand(args.generated, args.dim, generator=g)

    t0 = time.perf_counter()
    d, i = nearest(generated, train, args.k)
    ours = time.perf_counter() - t0
    out = {"train": args.train, "generated": args.generated, "dim": args.dim, "k": args.k,
           "threads": args.threads, "load_1min": os.getloadavg()[0],
           "genlab_seconds": round(ours, 2)}
    if not args.no_baseline:
        t0 = time.perf_counter()
        full = torch.cdist(generated, train)  # (Q, R): 2.4 GB at the default shape
        bd, bi = full.topk(args.k, dim=1, largest=False)
        base = time.perf_counter() - t0
        del full
        out.update({"cdist_seconds": round(base, 2), "speedup": round(base / ours, 2),
                    "same_neighbours": float((bi == i).float().mean()),
                    "max_distance_difference": float((bd - d).abs().max())})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
