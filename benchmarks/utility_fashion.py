"""Does synthetic data help a Fashion-MNIST classifier? Conditional generators of each family,
trained on the real images arm R gets, then `genlab utility` (issue 16's grid).

    OMP_NUM_THREADS=1 python benchmarks/utility_fashion.py                    # cDCGAN, 600 steps, --fast
    python benchmarks/utility_fashion.py --families dcgan diffusion gan vae convvae \\
        --per-class 100 all --minutes 10 --out /tmp/grid \\
        --utility-args --arms S,R+S:k=0.5,R+S:k=1,R+S:k=2,R+classical,R+noise,R-duplicated --seeds 5 --steps 300

Runs, as a user would, in child processes, for every family and every `--per-class`:

    genlab train FAMILY --data fashion-mnist --conditional --set train.per_class=N ...
    genlab utility RUN --json --fast            (or the --utility-args given)

(diffusion with `--diffusion-sampling`, default 25 steps of its default sampler, bf16 where native)

so the generator sees only the real images that arm R gets (`--per-class all`: the whole train
split; the leakage check verifies it either way). With `--minutes M` every generator trains for M
minutes of its own CPU time (one thread: the same compute for every family, as in race.py),
otherwise for `--steps`. Prints one JSON line per generator and per arm, and with `--out` writes
OUT/grid.jsonl and OUT/grid.md, a table of every generator's arms.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import tempfile
import time
from pathlib import Path

from _genlab import GENLAB, child_env, genlab, train_until

STEPS = "100000000"  # with --minutes the CPU budget ends training


def train(family: str, per_class: str, run: Path, args: argparse.Namespace) -> dict:
    cmd = ["train", family, "--data", args.data, "--conditional", "--seed", str(args.seed),
           "--out", str(run), "--set", "train.sample_every=0"]
    if per_class != "all":
        cmd += ["--set", f"train.per_class={per_class}"]
    if family == "dcgan":
        cmd += ["--set", f"model.ngf={args.width}", "--set", f"model.ndf={args.width}"]
    start = time.perf_counter()
    if args.minutes:
        log = run.parent / f"{run.name}.log"
        env = child_env({"OMP_NUM_THREADS": "1"}, clear_threads=True)
        cpu, _ = train_until([sys.executable, *GENLAB, *cmd, "--steps", STEPS], env,
                             args.minutes * 60, log)
        found = re.findall(r"stopped at step (\d+)", log.read_text(encoding="utf-8"))
        if not found:
            raise SystemExit(f"{family}: no checkpoint within {args.minutes} CPU minutes "
                             f"(give more --minutes); see {log}")
        steps = int(found[-1])
    else:
        genlab([*cmd, "--steps", str(args.steps)])
        cpu, steps = None, args.steps
    return {"train_command": "genlab " + " ".join(cmd), "train_s": round(time.perf_counter() -
            start, 1), "train_cpu_s": None if cpu is None else round(cpu, 1), "steps": steps}


def markdown(rows: list[dict]) -> str:
    """One table: a row per generator and arm, the paired difference against R."""
    lines = ["| generator | real per class | train CPU min | steps | arm | n_train | accuracy % "
             "| 95% CI | vs R | 95% CI | helps |", "| --- | --- | ---: | ---: | --- | ---: | ---: "
             "| --- | ---: | --- | --- |"]
    pct = lambda v: "" if v is None else f"{100 * v:.2f}"  # noqa: E731
    ci = lambda c: "" if not c or None in c else f"[{100 * c[0]:.2f}, {100 * c[1]:.2f}]"  # noqa: E731
    for row in rows:
        minutes = "" if row["train_cpu_s"] is None else f"{row['train_cpu_s'] / 60:.1f}"
        for arm in row["arms"]:
            lines.append(f"| {row['family']} | {row['per_class']} | {minutes} | {row['steps']} "
                         f"| {arm['arm']} | {arm['n_train']} | {pct(arm['accuracy'])} "
                         f"| {ci(arm['ci95'])} | {pct(arm['delta_vs_R'])} "
                         f"| {ci(arm['delta_ci95'])} | {arm['helps'] if arm['helps'] is not None else ''} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--families", nargs="+", default=["dcgan"])
    parser.add_argument("--per-class", nargs="+", default=["100"],
                        help="real images per class, or all (one generator each)")
    parser.add_argument("--steps", type=int, default=600, help="generator training steps")
    parser.add_argument("--minutes", type=float, help="instead of --steps: CPU minutes per generator")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--width", type=int, default=32, help="DCGAN ngf = ndf")
    parser.add_argument("--out", type=Path, help="keep the runs, grid.jsonl and grid.md here")
    parser.add_argument("--diffusion-sampling", default="--sample-steps 25 --precision auto",
                        help="genlab utility's sampling flags for diffusion generators only "
                        "(other families have none)")
    parser.add_argument("--utility-args", nargs=argparse.REMAINDER, default=["--fast"],
                        help="arguments of genlab utility (default --fast); last on the line")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for per_class in args.per_class:
            for family in args.families:
                run = out / f"c{family}-{per_class}"
                row = {"family": family, "per_class": per_class, **train(family, per_class, run, args)}
                sampling = shlex.split(args.diffusion_sampling) if family == "diffusion" else []
                utility = ["utility", str(run), "--json", *sampling, *args.utility_args]
                start = time.perf_counter()
                report = json.loads(genlab(utility).stdout)
                row.update(utility_command="genlab " + " ".join(utility),
                           utility_s=round(time.perf_counter() - start, 1),
                           leakage=report["leakage"]["status"],
                           test_error=report["test_error"]["ci95_halfwidth"], arms=[])
                for name, arm in report["arms"].items():
                    paired = report["paired_vs_R"].get(name, {})
                    row["arms"].append({"arm": name, "n_train": arm["n_train"],
                                        "accuracy": arm["accuracy"], "ci95": arm["ci95"],
                                        "delta_vs_R": paired.get("delta"),
                                        "delta_ci95": paired.get("ci95"),
                                        "helps": paired.get("helps")})
                row["notes"] = report["notes"]
                print(json.dumps(row), flush=True)
                rows.append(row)
                if args.out:
                    with open(out / "grid.jsonl", "a", encoding="utf-8") as f:
                        f.write(json.dumps(row) + "\n")
                    (out / "grid.md").write_text(markdown(rows), encoding="utf-8")
    if not args.out:
        print(markdown(rows))


if __name__ == "__main__":
    main()
