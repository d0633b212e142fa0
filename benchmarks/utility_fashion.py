"""Does a briefly trained conditional DCGAN help a Fashion-MNIST classifier at 100 real per class?

    OMP_NUM_THREADS=1 python benchmarks/utility_fashion.py                    # --fast, 600 steps
    python benchmarks/utility_fashion.py --steps 3000 --utility-args --seeds 5   # the full grid

Runs, as a user would, in child processes:

    genlab train dcgan --data fashion-mnist --conditional --set train.per_class=100 --steps N ...
    genlab utility RUN --fast --json            (or the --utility-args given)

so the generator sees only the 1000 real images that arm R gets (the leakage check verifies it),
then prints the training and utility wall times and the utility table as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _genlab import genlab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--steps", type=int, default=600, help="generator training steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=32, help="DCGAN ngf = ndf")
    parser.add_argument("--keep", type=Path, help="write the run here instead of a temp folder")
    parser.add_argument("--utility-args", nargs=argparse.REMAINDER, default=["--fast"],
                        help="arguments of genlab utility (default --fast)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.keep or Path(tmp) / "cdcgan"
        train = ["train", "dcgan", "--data", args.data, "--conditional", "--steps",
                 str(args.steps), "--seed", str(args.seed), "--out", str(run), "--set",
                 f"train.per_class={args.per_class}", "--set", f"model.ngf={args.width}",
                 "--set", f"model.ndf={args.width}", "--set", "train.sample_every=0"]
        start = time.perf_counter()
        genlab(train)
        train_s = time.perf_counter() - start
        utility = ["utility", str(run), "--json", *args.utility_args]
        start = time.perf_counter()
        report = json.loads(genlab(utility).stdout)
        utility_s = time.perf_counter() - start
    print(json.dumps({"train_command": "genlab " + " ".join(train), "train_s": round(train_s, 1),
                      "utility_command": "genlab " + " ".join(utility),
                      "utility_s": round(utility_s, 1), "leakage": report["leakage"]["status"],
                      "test_error": report["test_error"]["ci95_halfwidth"]}))
    for name, arm in report["arms"].items():
        paired = report["paired_vs_R"].get(name, {})
        print(json.dumps({"arm": name, "n_train": arm["n_train"], "accuracy": arm["accuracy"],
                          "ci95": arm["ci95"], "delta_vs_R": paired.get("delta"),
                          "delta_ci95": paired.get("ci95"), "helps": paired.get("helps")}))
    for note in report["notes"]:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
