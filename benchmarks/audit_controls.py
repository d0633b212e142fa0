"""The controls of `genlab audit` on Fashion-MNIST (the table in docs/audit.md).

    python benchmarks/audit_controls.py --out /tmp/audit-controls          # all of it
    python benchmarks/audit_controls.py --out /tmp/ac --steps 1500 --skip-train

1. Stand-ins for a generator, audited with `genlab.apps.audit.audit_images` in pixel and feature
   space: the "training set" is 5000 Fashion-MNIST training images (seeded choice), held-out are
   5000 test images. A memorizer emits the 5000 training images; held-out images posing as the
   generator are the other 5000 test images; uniform noise is 5000 random images.
2. Two DCGANs with the same small config and budget (`--steps`, batch 64): one trained on 500
   training images only (over-trained: `--steps` * 64 / 500 epochs), one on all 60000. Both are
   audited with `genlab.apps.audit.audit_run` (`--n` samples): the first must be flagged (an
   attack's AUC interval above 0.5), the second not.

Prints one JSON line per audit with the headline figures; the full reports stay in --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from genlab.apps.audit import audit_images, audit_run
from genlab.data import load_images, write_idx
from genlab.featurenet import feature_net_for

SMALL = ("model.ngf=32", "model.ndf=32", "train.log_every=50", "train.sample_every=100000",
         "train.checkpoint_every=0")


def headline(name: str, report: dict, seconds: float) -> dict:
    attacks = {k: {"auc": round(a["auc"], 3), "auc_ci95": [round(v, 3) for v in a["auc_ci95"]],
                   "tpr_at_1pct_fpr": a["tpr_at_1pct_fpr"],
                   "tpr_at_0.1pct_fpr": a["tpr_at_0.1pct_fpr"]}
               for k, a in report["attacks"].items()}
    feats = (report.get("spaces") or {}).get("features") or {}
    return {"control": name, "closer_to_train": report["closer_to_train"]["fraction"],
            "closer_ci95": report["closer_to_train"]["ci95"],
            "near_copies": report["near_copies"]["fraction"] if report["near_copies"] else None,
            "near_copies_features": (feats.get("near_copies") or {}).get("fraction"),
            "zu": report["data_copying"]["zu"], "zu_space": report["data_copying"]["space"],
            "attacks": attacks, "n_train": report["n_train"],
            "n_generated": report["n_generated"], "seconds": round(seconds, 1)}


def controls(train: torch.Tensor, test: torch.Tensor, seed: int) -> None:
    net = feature_net_for("fashion-mnist")
    embed = (lambda x: net.embed(x)[0]) if net is not None else None
    rng = np.random.default_rng(seed)
    subset = train[torch.from_numpy(np.sort(rng.choice(len(train), 5000, replace=False)))]
    held, fresh = test[:5000], test[5000:]
    noise = torch.randint(0, 256, (5000, 1, 28, 28), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(seed))
    for name, generated in (("memorizer", subset), ("held-out as generator", fresh),
                            ("uniform noise", noise)):
        t0 = time.perf_counter()
        report, _ = audit_images(subset, held, generated, seed=seed, embed=embed,
                                 log=lambda _: None)
        print(json.dumps(headline(name, report, time.perf_counter() - t0)), flush=True)


def small_subset_folder(train, test, folder: Path, n: int, seed: int) -> str:
    index = np.sort(np.random.default_rng(seed).choice(len(train.images), n, replace=False))
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", train.images[index, 0].numpy())
    write_idx(folder / "train-labels-idx1-ubyte", train.labels[index].numpy().astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", test.images[:, 0].numpy())
    write_idx(folder / "t10k-labels-idx1-ubyte", test.labels.numpy().astype(np.uint8))
    return f"idx:{folder}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--subset", type=int, default=500)
    p.add_argument("--n", type=int, default=2000, help="Samples per audited run.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-controls", action="store_true")
    p.add_argument("--skip-train", action="store_true", help="Audit runs already in --out.")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    train, test = load_images("fashion-mnist", "train"), load_images("fashion-mnist", "test")
    if not args.skip_controls:
        controls(train.images, test.images, args.seed)
    from genlab.runs import TrainRequest
    from genlab.runs import train as train_run

    runs = {"over-trained (500 images)": (out / "dcgan-500",
                                          small_subset_folder(train, test, out / "fmnist-500",
                                                              args.subset, args.seed)),
            "normal (60000 images)": (out / "dcgan-full", "fashion-mnist")}
    for name, (run, data) in runs.items():
        t0 = time.perf_counter()
        if not args.skip_train:
            train_run(TrainRequest(model="dcgan", data=data, steps=args.steps, batch_size=64,
                                   out=str(run), device="cpu", seed=args.seed,
                                   overrides=SMALL, overwrite=True))
        trained = time.perf_counter() - t0
        t0 = time.perf_counter()
        # the idx: copy of the subset has no net of its own: use Fashion-MNIST's for both runs
        report = audit_run(run, n=args.n, seed=args.seed, feature_net="fashion-mnist",
                           log=lambda _: None)
        row = headline(name, report, time.perf_counter() - t0)
        row.update({"train_seconds": round(trained, 1), "steps": args.steps,
                    "epochs": round(args.steps * 64 / (args.subset if "500" in name else 60000),
                                    1)})
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
