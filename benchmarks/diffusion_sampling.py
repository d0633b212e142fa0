"""Seconds per sample of the diffusion samplers, for each sampler and step count, on this machine.

Without `--run`, trains two small models on the 8x8 digits (sklearn) for `--train-steps`: one
v-prediction model (samplers ddim, ddim eta=1, ddpm) and one flow-matching model (euler, heun);
the cost of a sampler does not depend on how well the network is trained, only on its size, so
`--size` picks the network: `tiny` (the tests' U-Net on 8x8) or `preset` (the shipped CPU
preset's U-Net on 28x28, what a Fashion-MNIST run samples with). With `--run RUN_DIR` it times
the samplers of that trained run instead. The cost is linear in the number of network calls
(Heun makes 2 per step but the last); seconds for 10k samples are 10,000 x the per-sample figure.

    OMP_NUM_THREADS=1 python benchmarks/diffusion_sampling.py --size tiny
    OMP_NUM_THREADS=1 python benchmarks/diffusion_sampling.py --size preset --n 50 --steps 10,25
    OMP_NUM_THREADS=1 python benchmarks/diffusion_sampling.py --run runs/diffusion --n 100
    OMP_NUM_THREADS=1 python benchmarks/diffusion_sampling.py --size preset --n 100 --precision auto
    OMP_NUM_THREADS=1 python benchmarks/diffusion_sampling.py --run RUN --chunks 32,250 --n 250 --steps 5

Prints one JSON object per line (sampler, steps, n, seconds, seconds per sample, network calls)
and a table at the end. Timings are of whatever else runs on the machine too: compare rows of
one run, and repeat with `--repeat` to see the spread.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import tomllib
from importlib import resources

import numpy as np
import torch

from genlab.devices import sampling_precision
from genlab.models.diffusion import Diffusion, DiffusionConfig


def _digits(side: int) -> torch.Tensor:
    from sklearn.datasets import load_digits

    images = torch.from_numpy(np.round(load_digits().images * (255 / 16)).astype(np.uint8))
    images = images[:, None]
    if side != 8:
        images = torch.nn.functional.interpolate(images.float(), size=(side, side),
                                                 mode="bilinear").round().clamp(0, 255)
        images = images.to(torch.uint8)
    return images


def _config(size: str, objective: str) -> DiffusionConfig:
    if size == "tiny":
        return DiffusionConfig(channels=1, image_size=8, width=8, channel_mults="1,2",
                               res_blocks=1, heads=2, objective=objective)
    preset = tomllib.loads((resources.files("genlab") / "presets" / "diffusion.toml").read_text())
    return DiffusionConfig(**{**preset["model"], "channels": 1, "image_size": 28,
                              "objective": objective})


def _train(config: DiffusionConfig, steps: int, seed: int) -> Diffusion:
    torch.manual_seed(seed)
    model = Diffusion(config)
    images = _digits(config.image_size)
    optimizers = {"main": torch.optim.Adam(model.parameters(), lr=2e-3)}
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        model.train_step({"images": images[torch.randint(0, len(images), (64,), generator=g)]},
                         optimizers)
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="time this trained run's samplers instead")
    parser.add_argument("--size", choices=["tiny", "preset"], default="tiny")
    parser.add_argument("--train-steps", type=int, default=200)
    parser.add_argument("--n", type=int, default=64, help="samples per timing (one batch)")
    parser.add_argument("--steps", default="10,25,50,100,250")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help="forward passes as `genlab sample --precision` runs them")
    parser.add_argument("--chunks", help="instead: time the default sampler at these images per "
                        "network call (e.g. 32,250), user and system CPU seconds, --n images")
    args = parser.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]

    if args.run:
        from genlab.rundir import load_model

        model = load_model(args.run, device="cpu")
        models = {model.config.objective: model}
    else:
        models = {objective: _train(_config(args.size, objective), args.train_steps, args.seed)
                  for objective in ("v", "flow")}
    precision = ""
    for model in models.values():
        precision = sampling_precision(model, args.precision, print)
    if args.chunks:
        return time_chunks(next(iter(models.values())), args, steps_list[0])
    plans = []
    for objective, model in models.items():
        if objective == "flow":
            plans += [(model, "euler", {}), (model, "heun", {})]
        else:
            plans += [(model, "ddim", {}), (model, "ddim", {"eta": 1.0}), (model, "ddpm", {})]
    rows = []
    for model, sampler, extra in plans:
        for steps in steps_list:
            calls = 2 * steps - 1 if sampler == "heun" else steps
            times = []
            for r in range(args.repeat):
                g = torch.Generator().manual_seed(args.seed + r)
                start = time.perf_counter()
                model.sample(args.n, generator=g, sampler=sampler, sample_steps=steps, **extra)
                times.append(time.perf_counter() - start)
            seconds = min(times)
            row = {"sampler": sampler + ("-eta1" if extra else ""),
                   "objective": model.config.objective, "steps": steps, "network_calls": calls,
                   "n": args.n, "seconds": round(seconds, 4),
                   "seconds_per_sample": seconds / args.n,
                   "seconds_per_10k": round(seconds / args.n * 10_000, 1),
                   "threads": torch.get_num_threads(), "precision": precision,
                   "size": args.run or args.size}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\n{'sampler':<10} {'steps':>5} {'calls':>5} {'s/sample':>10} {'s/10k':>10}")
    for row in rows:
        print(f"{row['sampler']:<10} {row['steps']:>5} {row['network_calls']:>5} "
              f"{row['seconds_per_sample']:>10.5f} {row['seconds_per_10k']:>10.1f}")


def time_chunks(model: Diffusion, args: argparse.Namespace, steps: int) -> None:
    """The same --n images in chunks of each size: user and system CPU seconds (page faults of
    large fresh activations show as system time) and the ratio to the first size."""
    rows = []
    for chunk in [int(c) for c in args.chunks.split(",")]:
        for r in range(args.repeat + 1):  # round 0 warms the allocator up, not counted
            before = resource.getrusage(resource.RUSAGE_SELF)
            start = time.perf_counter()
            model.sample(args.n, generator=torch.Generator().manual_seed(args.seed),
                         sample_steps=steps, batch_size=chunk)
            after = resource.getrusage(resource.RUSAGE_SELF)
            if r:
                user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
                rows.append({"chunk": chunk, "n": args.n, "steps": steps, "round": r,
                             "wall_s": round(time.perf_counter() - start, 2),
                             "user_s": round(user, 2), "system_s": round(system, 2),
                             "cpu_ms_per_call_per_sample": round(
                                 1000 * (user + system) / args.n / steps, 2),
                             "minor_faults": after.ru_minflt - before.ru_minflt})
                print(json.dumps(rows[-1]), flush=True)
    best = {c: min(r["cpu_ms_per_call_per_sample"] for r in rows if r["chunk"] == c)
            for c in dict.fromkeys(r["chunk"] for r in rows)}
    base, base_ms = next(iter(best.items()))
    for chunk, ms in best.items():
        print(f"chunk {chunk:>5}: {ms:.2f} CPU ms per network call per image "
              f"({ms / base_ms:.2f}x chunk {base})")


if __name__ == "__main__":
    main()
