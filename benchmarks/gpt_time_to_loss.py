"""Seconds from process start until the char GPT reaches a validation loss on Tiny Shakespeare.

    python benchmarks/gpt_time_to_loss.py                  # CPU: preset shakespeare-char-cpu, 1.88
    python benchmarks/gpt_time_to_loss.py --device cuda    # GPU: preset shakespeare-char, 1.47

It trains through genlab's own pipeline (`genlab.runs.train`, what `genlab train gpt` runs) into a
temporary run folder, timing each validation (the full validation split, see genlab.modalities.text),
and prints one JSON line:

- seconds_to_target: process start to the end of the first validation at or below --target (null if
  never), so imports, tokenizing (or reading the token cache), building, training and every
  validation until then all count;
- best_val_loss: the lowest validation loss of the run, in nats per character;
- cpu_seconds_to_target: the process's CPU time (all threads) until then, a figure that depends
  less on what else the machine runs;
- tokens_per_s: training tokens per second, the median over the run's log intervals;
- device, plus the settings and each validation's step, loss and time.

Reference on the 2-core CPU this was tuned on: nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide,
block 64, batch 12, 2000 iterations, no dropout) reached val loss 1.886 after 84-116 s.

Threads: with torch's default (2 threads here) OpenMP threads spin while they wait for each other,
the fastest choice on an idle machine and a very slow one when another process holds a core.
`--threads 1` is the robust choice on a shared machine (see docs/text.md for measured figures).
"""

from __future__ import annotations

import os
import time

_LOADED = time.perf_counter()


def _process_age() -> float:
    """Seconds this process has existed when this module loads (Linux /proc), else 0."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


_AGE_AT_LOAD = _process_age()


def since_start() -> float:
    return _AGE_AT_LOAD + time.perf_counter() - _LOADED


import argparse  # noqa: E402  (after the clock starts)
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from genlab import runs  # noqa: E402
from genlab.modalities import MODALITIES  # noqa: E402
from genlab.rundir import read_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / ".." / "shared" / "data" / "tinyshakespeare" / "input.txt"
DEFAULTS = {"cpu": ("shakespeare-char-cpu", 1.88), "cuda": ("shakespeare-char", 1.47)}


def timed_evaluators(evals: list[dict]) -> None:
    """Wrap the text evaluator so each validation records its step, loss and finishing time."""
    text = MODALITIES["text"]
    factory = text.training_evaluator

    def timed_factory(*args, **kwargs):
        evaluate, key = factory(*args, **kwargs)

        def timed(step: int) -> dict[str, float]:
            t0 = time.perf_counter()
            metrics = evaluate(step)
            evals.append({"step": step, "val_loss": metrics["val_loss"],
                          "seconds": round(since_start(), 2),
                          "cpu_seconds": round(time.process_time(), 2),
                          "eval_seconds": round(time.perf_counter() - t0, 2)})
            return metrics

        return timed, key

    text.training_evaluator = timed_factory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--target", type=float, help="validation loss to reach (nats/char)")
    parser.add_argument("--preset", help="genlab preset (default: by device)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="UTF-8 text file")
    parser.add_argument("--steps", type=int, help="override the preset's step count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="extra genlab config overrides")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    preset, target = DEFAULTS[args.device]
    preset, target = args.preset or preset, args.target if args.target is not None else target

    evals: list[dict] = []
    timed_evaluators(evals)
    with tempfile.TemporaryDirectory(prefix="gpt-bench-") as tmp:
        req = runs.TrainRequest(model="gpt", data=f"text:{args.data}", preset=preset,
                                steps=args.steps, seed=args.seed, device=args.device,
                                compile=args.compile or None, out=str(Path(tmp) / "run"),
                                overrides=("model.tokenizer=char", *args.overrides))
        run_dir = runs.train(req)
        record = read_run(run_dir)
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    block = record["model_config"]["block_size"]
    rates = [r["items_per_s"] * block for r in rows if "items_per_s" in r]
    reached = [e for e in evals if e["val_loss"] <= target]
    print(json.dumps({
        "seconds_to_target": reached[0]["seconds"] if reached else None,
        # CPU time of all threads until then: what the run cost, however busy the machine was
        "cpu_seconds_to_target": reached[0]["cpu_seconds"] if reached else None,
        "best_val_loss": round(min(e["val_loss"] for e in evals), 4) if evals else None,
        "tokens_per_s": round(statistics.median(rates)) if rates else None,
        "device": args.device,
        "target": target, "preset": preset, "steps": record["train_config"]["steps"],
        "total_seconds": round(since_start(), 2), "evals": evals,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
