"""Every image model for the same training budget on Fashion-MNIST, scored at points along the way
(issue 14: "a fair race").

    python benchmarks/race.py --minutes 5 10 20 --out /tmp/race          # the default families
    python benchmarks/race.py --families dcgan diffusion --minutes 30 60 --n 2000

Each family trains at its default preset with one thread (`OMP_NUM_THREADS=1`). The budget is the
training process's own CPU time (read from /proc/PID/stat), so a model that shares the machine with
other programs gets the same compute as one on an idle core: with one thread, CPU time equals the
wall time it would take on a core of its own. When the budget of a point is spent the process gets
SIGTERM, which makes `genlab train` save a checkpoint and stop; the run is then sampled
(`genlab sample`; diffusion with its default sampler, `--sample-steps` and `--precision auto`:
bf16 where the CPU has it, which drew the same FD as fp32 in 0.6x the CPU time) and scored
(`genlab eval --fake`) with `--n` images, and training goes on with `genlab train --resume`
(exact resume: the segments train the same weights as one unbroken run). Sampling and scoring do
not count against the budget. The last point is scored again with `--final-n` images, under the
row's `final`. Families run `--jobs` at a time. One JSON line per point on stdout, the same in
OUT/race.jsonl, and OUT/race.png: FD against training minutes for each family.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _genlab import GENLAB, child_env, genlab, train_until

STEPS = "100000000"  # no step limit: the CPU budget ends each segment
LOCK = threading.Lock()


def last_step(log: Path) -> int:
    """The step the last segment stopped at (`genlab train` says so on stderr at a stop)."""
    found = re.findall(r"stopped at step (\d+)", log.read_text(encoding="utf-8"))
    return int(found[-1]) if found else 0


def score(run: Path, family: str, args: argparse.Namespace, n: int, tag: str) -> dict:
    fake = run.parent / f"{run.name}-{tag}.npz"
    # the family's default sampler: DDIM for eps / v, Euler for flow
    sampler = (["--sample-steps", str(args.sample_steps), "--precision", "auto"]
               if family == "diffusion" else [])
    env = child_env({"OMP_NUM_THREADS": "1"}, clear_threads=True)
    t0 = time.perf_counter()
    genlab(["sample", str(run), "--n", str(n), "--seed", "0", "--out", str(fake), *sampler], env)
    sample_s = time.perf_counter() - t0
    out = genlab(["eval", "--fake", str(fake), "--real", args.real, "--n", str(n),
                  "--json"], env)
    fake.unlink()
    report = json.loads(out.stdout)
    return {"sample_s": round(sample_s, 1), **report}


def race(family: str, args: argparse.Namespace) -> list[dict]:
    run = args.out / family
    env = child_env({"OMP_NUM_THREADS": "1"}, clear_threads=True)
    first = [sys.executable, *GENLAB, "train", family, "--data", "fashion-mnist", "--steps", STEPS,
             "--seed", "0", "--out", str(run), "--set", "train.sample_every=0",
             *[a for kv in args.set for a in ("--set", kv)]]
    again = [sys.executable, *GENLAB, "train", "--resume", str(run), "--steps", STEPS]
    rows, cpu, wall = [], 0.0, 0.0
    for k, minutes in enumerate(args.minutes):
        used, took = train_until(first if k == 0 else again, env, minutes * 60 - cpu,
                                 args.out / f"{family}.log")
        cpu, wall = cpu + used, wall + took
        row = {"family": family, "minutes": minutes, "cpu_s": round(cpu, 1),
               "wall_s": round(wall, 1), "step": last_step(args.out / f"{family}.log"),
               **score(run, family, args, args.n, f"{minutes}m")}
        if k == len(args.minutes) - 1 and args.final_n:
            row["final"] = score(run, family, args, args.final_n, "final")  # the table's row
        rows.append(row)
        with LOCK:
            print(json.dumps(row), flush=True)
            with open(args.out / "race.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = sorted((r for r in rows if r["family"] == family), key=lambda r: r["minutes"])
        ax.plot([r["minutes"] for r in mine], [r["fd"] for r in mine], marker="o", label=family)
    ax.set_xlabel("training minutes (one core)")
    ax.set_ylabel(f"FD, {rows[0]['n']} samples (fashion-mnist net)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Fashion-MNIST: FD against training time")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+",
                        default=["diffusion", "dcgan", "convvae", "gan", "vae"])
    parser.add_argument("--minutes", nargs="+", type=float, default=[5, 10, 20])
    parser.add_argument("--n", type=int, default=1000, help="samples per scored point")
    parser.add_argument("--final-n", type=int, default=10000,
                        help="samples at the last point (0: none)")
    parser.add_argument("--sample-steps", type=int, default=10, help="sampling steps for diffusion")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="passed to every family's `genlab train` (e.g. to try a setting)")
    parser.add_argument("--real", default="fashion-mnist",
                        help="images to score against; fashion-mnist:train when choosing a "
                             "setting, so the test split is not used to choose")
    parser.add_argument("--plot", nargs="+", type=Path, metavar="JSONL",
                        help="train nothing: draw OUT/race.png from these race.jsonl files "
                             "(races run in separate invocations, one figure)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.plot:
        rows = [json.loads(line) for path in args.plot
                for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        args.out.mkdir(parents=True, exist_ok=True)
        plot(rows, args.out / "race.png")
        return
    if sorted(args.minutes) != args.minutes:
        parser.error("--minutes must rise")
    args.out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [r for rs in pool.map(lambda f: race(f, args), args.families) for r in rs]
    plot(rows, args.out / "race.png")


if __name__ == "__main__":
    main()
