"""Wall-clock time of one `genlab train` command under thread settings, quiet and next to a busy
process (issue 12 item 9).

    python benchmarks/threads.py                                  # the default matrix, 2 rounds
    python benchmarks/threads.py --rounds 3 --steps 300
    python benchmarks/threads.py --variants default omp1 passive --busy 0 1

Each variant is an environment for the child process (`default` = nothing set, so torch picks its
threads and OpenMP its wait policy; the others set one variable), run without genlab's thread
defaults (`_genlab.BARE`), except `genlab`: the entry point `python -m genlab`, whose `main` sets
them (`genlab._threads.configure_threads`). `--busy 1` starts
`python -c "while True: pass"` beside the command, as a user's other program would. Variants
alternate within a round and the order flips every round, so slow drift from other processes hits
all alike. One JSON line per run, then a summary line per (busy, variant) with the median seconds
and the 1-minute load average seen before each run (the machine is shared: read figures with it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _genlab import BARE, GENLAB, child_env

VARIANTS: dict[str, dict[str, str]] = {
    "default": {},
    "genlab": {},  # genlab's own choice, made by configure_threads in the child
    "omp1": {"OMP_NUM_THREADS": "1"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},
    "spin100k": {"GOMP_SPINCOUNT": "100000"},
}


def run_once(args: argparse.Namespace, variant: str, busy: bool) -> dict[str, object]:
    hog = None
    if busy:
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(1.0)  # let it take its core
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        # every variant but `genlab` runs without genlab's thread defaults
        entry = GENLAB if variant == "genlab" else BARE
        cmd = [sys.executable, *entry, "train", args.model, "--preset", args.preset,
               "--data", args.data, "--steps", str(args.steps), "--out", str(Path(tmp) / "run"),
               *args.extra]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=child_env(VARIANTS[variant], clear_threads=True),
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if hog is not None:
        hog.kill()
        hog.wait()
    if proc.returncode != 0:
        raise SystemExit(f"{variant}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    return {"variant": variant, "busy": busy, "seconds": round(seconds, 2),
            "load_1min_before": round(load, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="dcgan")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["default", "omp1", "passive", "genlab"],
                        choices=sorted(VARIANTS))
    parser.add_argument("--busy", nargs="+", type=int, default=[0, 1], choices=[0, 1])
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="more arguments for genlab train (last)")
    args = parser.parse_args()
    rows = []
    for r in range(args.rounds):
        for busy in args.busy:
            order = args.variants if r % 2 == 0 else args.variants[::-1]
            for variant in order:
                row = run_once(args, variant, bool(busy))
                row["round"] = r
                rows.append(row)
                print(json.dumps(row), flush=True)
    for busy in args.busy:
        for variant in args.variants:
            mine = [row for row in rows if row["variant"] == variant and row["busy"] == bool(busy)]
            print(json.dumps({"summary": variant, "busy": bool(busy), "steps": args.steps,
                              "median_s": round(statistics.median(r["seconds"] for r in mine), 2),
                              "runs_s": [r["seconds"] for r in mine],
                              "load_1min": [r["load_1min_before"] for r in mine]}), flush=True)


if __name__ == "__main__":
    main()
