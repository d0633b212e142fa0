"""A conditional audio family on fsdd for a CPU-time budget, scored like every audio run
(issue 15: "measure and say which sounds/scores better", waveform vs spectrogram route).

    python benchmarks/audio_families.py --minutes 25 --out /tmp/audio-wavegan
    python benchmarks/audio_families.py --family dcgan --set model.ngf=32 --set model.ndf=32 \\
        --minutes 25 --out /tmp/audio-dcgan
    python benchmarks/audio_families.py --minutes 2 --set train.lr=1e-4 --out /tmp/pilot

`genlab train FAMILY --data fsdd --conditional --seed SEED` runs with one thread
(`OMP_NUM_THREADS=1`) until the training process has used the budget of CPU time (read from
/proc/PID/stat, `race.train_until`), then gets SIGTERM, which saves a checkpoint and stops: on a
shared machine each family gets the same compute. Then `genlab eval RUN --data-dir DIR --json`
(300 generated clips against fsdd's 300 test clips in the fsdd feature net's space; the sound is
scored, so a spectrogram run pays for Griffin-Lim) and `genlab sample RUN --n 40` (a grid of
spectrograms, one column per digit). Scoring does not count against the budget. One JSON
object on stdout and in OUT/result.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _genlab import GENLAB, child_env, genlab
from race import STEPS, last_step, train_until

KEYS = ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
        "class_accuracy", "mode_entropy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="wavegan")
    parser.add_argument("--minutes", type=float, default=25.0, help="CPU minutes of training")
    parser.add_argument("--data-dir", default="../shared/data/fsdd")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="passed to genlab train (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n", type=int, default=300, help="clips scored (fsdd's test split)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    run, log = args.out / "run", args.out / "train.log"
    env = child_env({"OMP_NUM_THREADS": "1"}, clear_threads=True)
    cmd = [sys.executable, *GENLAB, "train", args.family, "--data", "fsdd", "--data-dir",
           args.data_dir, "--conditional", "--steps", STEPS, "--seed", str(args.seed),
           "--out", str(run), "--set", "train.sample_every=500",
           *[a for kv in args.overrides for a in ("--set", kv)]]
    cpu, wall = train_until(cmd, env, args.minutes * 60, log)
    t0 = time.perf_counter()
    report = json.loads(genlab(["eval", str(run), "--data-dir", args.data_dir, "--n",
                                str(args.n), "--json"], env).stdout)
    eval_s = time.perf_counter() - t0
    grid = args.out / f"fsdd_{args.family}_samples.png"
    genlab(["sample", str(run), "--n", "40", "--seed", "0", "--out", str(grid)], env)
    genlab(["sample", str(run), "--n", "10", "--seed", "0", "--out",
            str(args.out / "digits.wav")], env)  # one clip per digit, 0..9, to listen to
    result = {"family": args.family, "overrides": args.overrides, "seed": args.seed,
              "cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "step": last_step(log),
              "eval_s": round(eval_s, 1), **{k: report.get(k) for k in KEYS},
              "floor_fd": (report.get("floor") or {}).get("fd"),
              "sanity": {name: {k: row.get(k) for k in KEYS if k in row}
                         for name, row in (report.get("sanity") or {}).items()},
              "command": " ".join(cmd[1:]), "grid": str(grid)}
    (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
