"""What the checks of issue 11 cost when saving and loading a checkpoint.

Compares, in one process on the same model, `checkpoint.save_checkpoint` (serialise, finite check,
write, fsync, read back and verify, rotate two kept checkpoints) with the bare writes it cannot
avoid (safetensors files of the weights and the optimizer state, written and fsynced), and
`read_state` + `load_weights` (hashes, headers, key and shape checks, finite check) with a bare
`load_file` + `load_state_dict`. With `--old-ref REF` it also times the checkpoint.py of that git
commit (e.g. 77c8e45, before issue 11) in the same process. Prints medians and ratios.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/checkpoint_io.py [--model dcgan] [--rounds 5]
        [--old-ref 77c8e45]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file, save_model

from genlab.checkpoint import (
    _flatten_optimizer,
    load_weights,
    read_state,
    save_checkpoint,
)
from genlab.config import TrainConfig, config_from_dict
from genlab.models import get_model_class


def _model(name: str) -> tuple[torch.nn.Module, dict]:
    cls = get_model_class(name)
    data = {"gpt": {"vocab_size": 65}}.get(name, {"channels": 3, "image_size": 64})
    model = cls(config_from_dict(cls.config_class, data, "model"))
    optimizers = model.configure_optimizers(TrainConfig())
    if name == "gpt":
        batch = {"tokens": torch.randint(0, 65, (2, 65))}
    else:
        batch = {"images": torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)}
    model.train_step(batch, optimizers)
    return model, optimizers


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def bare_save(folder: Path, model: torch.nn.Module, optimizers: dict) -> None:
    folder.mkdir(exist_ok=True)
    save_model(model, str(folder / "model.safetensors"))
    tensors = {}
    for name, opt in optimizers.items():
        tensors.update(_flatten_optimizer(name, opt.state_dict())[0])
    save_file(tensors, str(folder / "optimizers.safetensors"))
    for f in folder.iterdir():
        _fsync(f)


def _median(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def old_checkpoint_module(ref: str, folder: Path):
    """genlab/checkpoint.py as it was at git commit `ref`, imported under another name."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(["git", "-C", str(root), "show", f"{ref}:src/genlab/checkpoint.py"],
                            capture_output=True, text=True, check=True).stdout
    path = folder / "old_checkpoint.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dcgan")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--old-ref", help="also time checkpoint.py of this git commit")
    args = parser.parse_args()
    torch.manual_seed(0)
    model, optimizers = _model(args.model)
    params = sum(p.numel() for p in model.parameters())
    meta = {"model": args.model, "model_config": model.config.__dict__, "step": 1}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bare_save(root / "warm", model, optimizers)
        save_checkpoint(root / "run" / "checkpoint", model, meta=meta, optimizers=optimizers)
        bare = _median(lambda: bare_save(root / "bare", model, optimizers), args.rounds)
        full = _median(lambda: save_checkpoint(root / "run" / "checkpoint", model, meta=meta,
                                               optimizers=optimizers), args.rounds)
        size = sum(f.stat().st_size for f in (root / "run" / "checkpoint").iterdir())
        fresh, _ = _model(args.model)
        bare_load = _median(lambda: fresh.load_state_dict(
            load_file(str(root / "bare" / "model.safetensors")), strict=False), args.rounds)
        full_load = _median(lambda: (read_state(root / "run" / "checkpoint"),
                                     load_weights(root / "run" / "checkpoint", fresh)), args.rounds)
        old = None
        if args.old_ref:
            mod = old_checkpoint_module(args.old_ref, root)
            target = root / "old" / "checkpoint"
            mod.save_checkpoint(target, model, meta=meta, optimizers=optimizers)
            old = (_median(lambda: mod.save_checkpoint(target, model, meta=meta,
                                                       optimizers=optimizers), args.rounds),
                   _median(lambda: (mod.read_state(target), mod.load_weights(target, fresh)),
                           args.rounds))
    print(f"model {args.model}: {params / 1e6:.2f}M parameters, checkpoint {size / 1e6:.1f} MB, "
          f"median of {args.rounds}, torch threads {torch.get_num_threads()}")
    print(f"save: bare writes {bare * 1e3:.1f} ms, save_checkpoint {full * 1e3:.1f} ms "
          f"({full / bare:.2f}x)")
    print(f"load: bare load_file {bare_load * 1e3:.1f} ms, read_state + load_weights "
          f"{full_load * 1e3:.1f} ms ({full_load / bare_load:.2f}x)")
    if old is not None:
        print(f"checkpoint.py of {args.old_ref}: save {old[0] * 1e3:.1f} ms (new / old "
              f"{full / old[0]:.2f}x), load {old[1] * 1e3:.1f} ms (new / old "
              f"{full_load / old[1]:.2f}x)")


if __name__ == "__main__":
    main()
