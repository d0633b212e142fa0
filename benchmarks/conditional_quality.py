"""FD and class accuracy of every conditional model after a fixed number of steps (issue 21).

    python benchmarks/conditional_quality.py                          # gan dcgan vae convvae
    python benchmarks/conditional_quality.py --models dcgan --steps 1500 --data fashion-mnist
    python benchmarks/conditional_quality.py --keep runs/cq           # keep the run folders

For each model it runs, as a user would,

    genlab train MODEL --data DATA --conditional --steps N --seed S --out RUN
    genlab eval RUN --n 10000 --seed S --json

in child processes (the model's default preset, fp32 or what `--precision auto` picks) and prints
one JSON line per model (training seconds, FD and its real-vs-real floor, class accuracy, mode
entropy, precision, recall), then a Markdown table. Class accuracy is the share of samples drawn
for class c that the dataset's feature net classifies as c; a conditional model that ignores its
labels scores about 1 / classes. Targets (issue 21): class accuracy >= 0.8 for the conditional
DCGAN on fashion-mnist.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _genlab import genlab

KEYS = ("fd", "fd_floor", "class_accuracy", "mode_entropy", "precision", "recall")




def measure(model: str, run_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    train = ["train", model, "--data", args.data, "--conditional", "--steps", str(args.steps),
             "--seed", str(args.seed), "--out", str(run_dir), *args.set]
    start = time.perf_counter()
    genlab(train)
    train_s = time.perf_counter() - start
    report = json.loads(genlab(["eval", str(run_dir), "--n", str(args.n), "--seed",
                                str(args.seed), "--json"]).stdout)
    floor = report.get("floor") or {}
    row: dict[str, object] = {"model": model, "data": args.data, "steps": args.steps,
                              "seed": args.seed, "n": report.get("n"),
                              "train_s": round(train_s, 1), "command": "genlab " + " ".join(train)}
    for key in KEYS:
        value = floor.get("fd") if key == "fd_floor" else report.get(key)
        row[key] = round(value, 3) if isinstance(value, float) else value
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gan", "dcgan", "vae", "convvae"])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=10000, help="images per side in genlab eval")
    parser.add_argument("--set", nargs="*", default=[], metavar="ARG",
                        help="extra genlab train arguments, e.g. --set --set model.loss=hinge")
    parser.add_argument("--keep", type=Path, help="write the runs here instead of a temp folder")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for model in args.models:
            row = measure(model, root / f"{model}-{args.data}-cond-{args.steps}", args)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| model | steps | train s | FD | FD floor | class accuracy | mode entropy | "
          "precision | recall |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} --conditional | {r['steps']} | {r['train_s']} | {r['fd']} | "
              f"{r['fd_floor']} | {r['class_accuracy']} | {r['mode_entropy']} | "
              f"{r['precision']} | {r['recall']} |")


if __name__ == "__main__":
    main()
