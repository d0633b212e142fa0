"""How long `genlab demo` takes on this machine, and how good its samples are (issue 20).

    python benchmarks/demo.py                         # 1 thread and the default, one round each
    python benchmarks/demo.py --threads 1 --rounds 2
    python benchmarks/demo.py --threads default --no-eval
    python benchmarks/demo.py --threads genlab --isa native avx2   # this CPU, then as AVX2 only

Runs the demo as a user would (`python -m genlab demo --out RUN`) in a child process per
setting and prints one JSON line each: the command's wall-clock seconds (start-up, data, training,
sample grids, loss plot), the training seconds between the first and the last logged step as
metrics.jsonl records them, the 1-minute load average before the run (the machine may be shared:
read the figures with it), and with eval the scores of `genlab eval RUN --json` (FD and its
real-vs-real floor, precision, recall, mode entropy, class accuracy for a conditional demo).
The `genlab` thread setting runs the entry point (`python -m genlab`, whose `main` sets genlab's
thread defaults); `default` runs the same commands without them (torch's own); a number sets
OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from _genlab import BARE, GENLAB, child_env, genlab

SCORES = ("fd", "precision", "recall", "mode_entropy", "class_accuracy")


# A CPU without AVX-512 (most laptops), approximated on this one: ATen and oneDNN limited to their
# AVX2 kernels, and fp32 (what `--precision auto` picks on such a CPU). Same cores and caches, so
# it is an estimate, not a measurement of such a laptop.
AVX2_ONLY = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def child(args: list[str], threads: str, isa: str = "native") -> subprocess.CompletedProcess:
    extra = dict(AVX2_ONLY) if isa == "avx2" else {}
    if threads not in ("default", "genlab"):
        extra["OMP_NUM_THREADS"] = threads
    env = child_env(extra, clear_threads=True)
    return genlab(args, env, entry=BARE if threads == "default" else GENLAB)


def training_seconds(run_dir: Path) -> float | None:
    """From the first to the last logged step (the first interval's steps are not counted)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if line.strip()]
    times = [(r["step"], r["time"]) for r in rows if "time" in r and "loss" in r]
    if len(times) < 2:
        return None
    (s0, t0), (s1, t1) = times[0], times[-1]
    return round((t1 - t0) * s1 / (s1 - s0), 1)  # scaled to all s1 steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", nargs="+", default=["1", "default"],
                        help="settings to compare: a number (OMP_NUM_THREADS), default, genlab")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--steps", type=int, help="override the demo's step count")
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--isa", nargs="+", default=["native"], choices=["native", "avx2"],
                        help="native: this CPU; avx2: as a CPU without AVX-512 (fp32)")
    parser.add_argument("--keep", type=Path, help="keep the run folders here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        for r in range(args.rounds):
            order = args.threads if r % 2 == 0 else args.threads[::-1]
            for threads, isa in ((t, i) for t in order for i in args.isa):
                run_dir = root / f"demo-{threads}-{isa}-{r}"
                demo = ["demo", "--out", str(run_dir)]
                if isa == "avx2":
                    demo += ["--precision", "fp32"]
                if args.steps:
                    demo += ["--steps", str(args.steps)]
                load = os.getloadavg()[0]
                start = time.perf_counter()
                child(demo, threads, isa)
                row: dict[str, object] = {
                    "threads": threads, "isa": isa, "round": r, "command_s": round(time.perf_counter() - start, 1),
                    "training_s": training_seconds(run_dir), "load_1min_before": round(load, 2)}
                if not args.no_eval:
                    report = json.loads(child(["eval", str(run_dir), "--json"], "1", isa).stdout)
                    row.update({k: report.get(k) for k in SCORES})
                    row["fd_floor"] = (report.get("floor") or {}).get("fd")
                    row["n"] = report.get("n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
