"""What DistributedDataParallel costs: genlab training throughput without DDP, with DDP in one
process (world size 1), and on CPU with DDP over 2 processes.

    python benchmarks/ddp_overhead.py                  # CPU: plain, DDP x 1, DDP x 2 (gloo)
    python benchmarks/ddp_overhead.py --device cuda    # one GPU: plain vs DDP, world size 1

Every setup runs the real `genlab train` (through torchrun for DDP) on the same global batch, with
the same number of threads per process (OMP_NUM_THREADS); throughput is read from the run's
metrics.jsonl, leaving out the first log interval (start-up, first-step allocations). Prints one
JSON line per setup, then one per model with the ratios to the plain run:
`ddp_world1_vs_plain` (the cost of the DDP wrapper alone, 1.0 = none) and, on CPU,
`ddp_2proc_per_process_vs_plain` (throughput per process with 2 processes, each doing half of
the batch: 1.0 = no overhead from the gloo all-reduce and the stop/log agreement). That is
overhead, not scaling: on a 2-core machine 2 processes cannot show more.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODELS = {
    # a small GPT and a small DCGAN: step times of a few ms to tens of ms, where overhead shows
    "gpt": ["--set", "model.n_layer=2", "--set", "model.n_head=4", "--set", "model.n_embd=64",
            "--set", "model.block_size=64", "--set", "model.dropout=0", "--batch-size", "32"],
    "dcgan": ["--set", "model.ngf=32", "--set", "model.ndf=32", "--batch-size", "64"],
}
TEXT = Path(__file__).resolve().parents[1].parent / "shared/data/tinyshakespeare/input.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--models", default="gpt,dcgan", help="comma-separated: gpt, dcgan")
    parser.add_argument("--steps", type=int, default=40, help="steps per run (4 log intervals)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per setup; the median counts")
    parser.add_argument("--threads-per-process", type=int, default=1,
                        help="OMP_NUM_THREADS of every process (several spinning threads per "
                             "process are very slow on a busy 2-core machine)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            data = data_spec(model, Path(tmp))
            runs: dict[str, list[float]] = {setup: [] for setup, _ in setups(args.device)}
            for i in range(args.repeats):  # interleaved, so a change of machine load hits all
                for setup, nproc in setups(args.device):
                    runs[setup].append(throughput(model, data, args, nproc,
                                                  Path(tmp) / f"{model}-{setup}-{i}"))
            rates = {setup: statistics.median(r) for setup, r in runs.items()}
            for setup, nproc in setups(args.device):
                print(json.dumps({"model": model, "device": args.device, "setup": setup,
                                  "processes": nproc or 1,
                                  "threads_per_process": args.threads_per_process,
                                  "items_per_s": round(rates[setup], 1),
                                  "runs": [round(r, 1) for r in runs[setup]]}), flush=True)
            ratios = {"ddp_world1_vs_plain": rates["ddp_world1"] / rates["plain"]}
            if "ddp_2proc" in rates:
                ratios["ddp_2proc_per_process_vs_plain"] = rates["ddp_2proc"] / 2 / rates["plain"]
            print(json.dumps({"model": model, "device": args.device,
                              **{k: round(v, 3) for k, v in ratios.items()}}), flush=True)


def setups(device: str) -> list[tuple[str, int]]:
    """(name, processes); 0 processes = plain `genlab train`, no torchrun, no DDP."""
    if device == "cuda":
        return [("plain", 0), ("ddp_world1", 1)]
    return [("plain", 0), ("ddp_world1", 1), ("ddp_2proc", 2)]


def data_spec(model: str, tmp: Path) -> str:
    if model == "dcgan":
        return "digits"  # bundled, offline
    if TEXT.is_file():
        return f"text:{TEXT}"
    path = tmp / "corpus.txt"  # any text will do for a throughput measurement
    path.write_text("".join(f"line {i}: the quick brown fox jumps over the lazy dog\n"
                            for i in range(20000)))
    return f"text:{path}"


def throughput(model: str, data: str, args: argparse.Namespace, nproc: int, out: Path) -> float:
    """Median items/s over the log intervals after the first."""
    log_every = max(1, args.steps // 4)
    genlab = ["train", model, "--data", data, "--steps", str(args.steps), "--out", str(out),
              "--device", args.device, "--precision", "bf16" if args.device == "cuda" else "fp32",
              "--set", f"train.log_every={log_every}", "--set", "train.eval_every=0",
              "--set", "train.sample_every=0", "--set", "train.checkpoint_every=0",
              *MODELS[model]]
    if nproc:
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                   f"--master_port={free_port()}", "-m", "genlab", *genlab]
    else:
        command = [sys.executable, "-m", "genlab", *genlab]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads_per_process)}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [row["items_per_s"] for row in rows if "items_per_s" in row][1:]
    return statistics.median(rates)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
