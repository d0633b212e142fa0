"""DP-MERF (`genlab train merf`) on Fashion-MNIST, conditional: train at epsilon 10, at epsilon 1
and without --dp, then `genlab eval` (FD against the real-vs-real floor) and `genlab utility`
(train on synthetic, test on real: arm S against R, the whole real training split).

    OMP_NUM_THREADS=1 python benchmarks/dp_merf.py --data-dir /usr/share/datasets/fashion-mnist
    python benchmarks/dp_merf.py --data-dir DIR --settings eps10 --utility-seeds 5
    python benchmarks/dp_merf.py --data-dir DIR --settings eps10 --set model.perceptual=mnist

Delta is 1e-6: genlab refuses delta > 1/(10 n) = 1.67e-6 for the n = 60000 training images, so
the issue's 1e-5 is not allowed here. The model settings are the preset's (src/genlab/presets/
merf.toml: the DP-MERF code's published Fashion-MNIST defaults), not tuned on this data.
Prints a Markdown table and writes OUT/dp_merf.json. Wall times are this machine's; say which.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from _genlab import child_env, genlab

SETTINGS = {"eps10": 10.0, "eps1": 1.0, "nonprivate": None}


def run_setting(name: str, epsilon: float | None, args: argparse.Namespace,
                env: dict[str, str]) -> dict:
    run = Path(args.out) / f"merf-{name}"
    train = ["train", "merf", "--data", "fashion-mnist", "--data-dir", args.data_dir,
             "--conditional", "--steps", str(args.steps), "--out", str(run), "--overwrite",
             "--device", "cpu", "--seed", str(args.seed), "--set", "train.sample_every=0",
             "--set", "train.log_every=50", "--set", f"model.features={args.features}"]
    train += [a for kv in args.set for a in ("--set", kv)]
    if epsilon is not None:
        train += ["--dp", "--set", f"train.dp_epsilon={epsilon}",
                  "--set", f"train.dp_delta={args.delta}",
                  "--set", f"train.dp_accountant={args.accountant}"]
    t0 = time.perf_counter()
    genlab(train, env)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = json.loads(genlab(["eval", str(run), "--n", str(args.n_eval), "--json",
                                "--data-dir", args.data_dir, "--device", "cpu"], env).stdout)
    eval_s = time.perf_counter() - t0
    seeds = args.utility_seeds if name == "eps10" else args.other_seeds
    utility = ["utility", str(run), "--data", "fashion-mnist", "--data-dir", args.data_dir,
               "--real-per-class", "all", "--arms", "S", "--seeds", str(seeds),
               "--steps", str(args.utility_steps), "--json"]
    t0 = time.perf_counter()
    tos = json.loads(genlab(utility, env).stdout)
    utility_s = time.perf_counter() - t0
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    dp = state.get("dp") or {}
    s_arm, r_arm = tos["arms"]["S"], tos["arms"]["R"]
    return {"setting": name, "epsilon_target": epsilon, "epsilon_spent": dp.get("epsilon_spent"),
            "delta": dp.get("delta"), "noise_multiplier": dp.get("noise_multiplier"),
            "accountant": dp.get("accountant"), "steps": args.steps, "features": args.features,
            "train_seconds": round(train_s, 1), "fd": report["fd"],
            "fd_floor": report["floor"]["fd"], "class_accuracy": report["class_accuracy"],
            "mode_entropy": report["mode_entropy"], "n_eval": args.n_eval,
            "eval_seconds": round(eval_s, 1), "tos_accuracy": s_arm["accuracy"],
            "tos_ci95": s_arm["ci95"], "tos_per_seed": s_arm["per_seed"],
            "real_accuracy": r_arm["accuracy"], "utility_seeds": seeds,
            "utility_steps": args.utility_steps, "utility_seconds": round(utility_s, 1),
            "train_command": "genlab " + " ".join(train),
            "utility_command": "genlab " + " ".join(utility)}


def table(rows: list[dict]) -> str:
    def f(x: float | None, digits: int = 3) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    def ci(c: list) -> str:
        return "-" if not c or c[0] is None else f"[{c[0]:.3f}, {c[1]:.3f}]"

    out = ["| setting | noise multiplier | epsilon spent | train time | FD (n=2000) | floor | "
           "class acc. | mode entropy | train-on-synthetic acc. | 95% CI | seeds | R (real) |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['setting']} | {f(r['noise_multiplier'])} | {f(r['epsilon_spent'], 2)} "
                   f"| {r['train_seconds'] / 60:.1f} min | {r['fd']:.1f} | {r['fd_floor']:.2f} "
                   f"| {r['class_accuracy']:.3f} | {r['mode_entropy']:.2f} "
                   f"| {r['tos_accuracy']:.3f} | {ci(r['tos_ci95'])} | {r['utility_seeds']} "
                   f"| {r['real_accuracy']:.3f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--settings", default="eps10,eps1,nonprivate",
                   help=f"comma-separated, of {', '.join(SETTINGS)}")
    p.add_argument("--delta", type=float, default=1e-6)
    p.add_argument("--accountant", default="rdp")
    p.add_argument("--steps", type=int, default=600, help="generator steps (batch 500)")
    p.add_argument("--features", type=int, default=10000, help="random features D")
    p.add_argument("--n-eval", type=int, default=2000)
    p.add_argument("--utility-seeds", type=int, default=5, help="classifier seeds, epsilon 10")
    p.add_argument("--other-seeds", type=int, default=1, help="classifier seeds, the others")
    p.add_argument("--utility-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/dp-merf")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to genlab train, e.g. model.perceptual=mnist (repeatable)")
    args = p.parse_args()
    env = child_env({"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    rows = [run_setting(name, SETTINGS[name], args, env) for name in args.settings.split(",")]
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
               f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"dp_merf-{args.settings.replace(',', '-')}.json"
    path.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    print(table(rows))
    print(f"\nmachine: {machine}; {path}")


if __name__ == "__main__":
    main()
