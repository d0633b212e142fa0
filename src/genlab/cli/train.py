"""`genlab train`, `genlab demo`, `genlab sample`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from genlab.cli import cli
from genlab.errors import UserError

TRAIN_EXAMPLE = """\b
Examples:
  genlab train dcgan --data digits --steps 2000
  genlab train dcgan --data fashion-mnist --preset dcgan64 --steps 5000 --precision bf16
  genlab train gan --data mnist --conditional --set model.loss=hinge --set train.lr=1e-4
  genlab train --resume runs/dcgan-digits-20260101-120000 --steps 4000
"""


def _command_line() -> str:
    return shlex.join(["genlab", *sys.argv[1:]])


@cli.command(epilog=TRAIN_EXAMPLE)
@click.argument("model", required=False)
@click.option("--data", help="Dataset: digits, mnist, fashion-mnist, cifar10, idx:DIR, folder:PATH.")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Folder holding the dataset's official files (gzipped or raw).")
@click.option("--steps", type=click.IntRange(min=1), help="Total optimizer steps.")
@click.option("--epochs", type=click.FloatRange(min=0, min_open=True),
              help="Train for this many passes over the data (instead of --steps).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Global batch size.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run folder (default runs/<model>-<data>-<timestamp>/).")
@click.option("--seed", type=int, help="Seed for every random choice (default 0).")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--precision", type=click.Choice(["fp32", "bf16"]),
              help="bf16 autocast (CUDA and CPU) or fp32.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the networks.")
@click.option("--eval-every", type=click.IntRange(min=0), help="Evaluate every N steps.")
@click.option("--preset", help="A preset of the model (see genlab models).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config field, e.g. --set model.loss=hinge --set train.lr=1e-4.")
@click.option("--conditional", is_flag=True, help="Class-conditional model (labels from the data).")
@click.option("--resume", type=click.Path(file_okay=False),
              help="Continue the run in this folder to --steps total steps.")
@click.option("--init-from", type=click.Path(file_okay=False),
              help="Start from this run's weights with a fresh optimizer (fine-tuning).")
def train(model: str | None, data: str | None, data_dir: str | None, steps: int | None,
          epochs: float | None, batch_size: int | None, out: str | None, seed: int | None,
          device: str, precision: str | None, compile_: bool | None, eval_every: int | None,
          preset: str | None, overrides: tuple[str, ...], conditional: bool, resume: str | None,
          init_from: str | None) -> None:
    """Train MODEL on a dataset; writes checkpoints, samples, metrics.jsonl and loss.png."""
    from genlab.runs import TrainRequest
    from genlab.runs import train as run_training

    if resume and init_from:
        raise UserError("--resume and --init-from cannot be combined")
    req = TrainRequest(model=model, data=data, data_dir=data_dir, steps=steps, epochs=epochs,
                       batch_size=batch_size, out=out, seed=seed, device=device,
                       precision=precision, compile=compile_, eval_every=eval_every, preset=preset,
                       overrides=overrides, conditional=conditional, resume=resume,
                       init_from=init_from, command=_command_line())
    run_dir = run_training(req)
    _print_outputs(run_dir)


def _print_outputs(run_dir: Path) -> None:
    click.echo(f"done: {run_dir}", err=True)
    for name in ("samples.png", "samples.txt", "loss.png", "checkpoint"):
        if (run_dir / name).exists():
            click.echo(f"  {name:12s} {run_dir / name}", err=True)
    click.echo(str(run_dir))


@cli.command(epilog="""\b
Example:
  genlab demo                 # writes runs/demo/samples.png and runs/demo/loss.png
  genlab demo --out /tmp/d --seed 3
""")
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--steps", type=click.IntRange(min=1), help="Override the demo's step count.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]))
def demo(out: str, steps: int | None, seed: int, device: str) -> None:
    """Train the offline demo: a DCGAN on the bundled 8x8 digits, with a sample grid and loss curve.

    Needs no download. A few minutes on a laptop CPU. Running it again overwrites the folder.
    """
    import shutil

    from genlab.runs import RUN_FILE, TrainRequest
    from genlab.runs import train as run_training

    out_dir = Path(out)
    if (out_dir / RUN_FILE).exists():
        shutil.rmtree(out_dir)  # the demo is disposable; a user's own runs are never overwritten
    req = TrainRequest(model="dcgan", data="digits", preset="demo", steps=steps, seed=seed,
                       out=out, device=device, command=_command_line())
    run_dir = run_training(req)
    _print_outputs(run_dir)


@cli.command(epilog="""\b
Examples:
  genlab sample runs/demo --n 64 --out grid.png
  genlab sample runs/cgan --n 100 --label 3 --out threes.npz --seed 1
""")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", "n", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--out", type=click.Path(dir_okay=False),
              help="grid.png (a grid) or samples.npz (uint8 `images`, and `labels`).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--label", type=click.IntRange(min=0), help="Class to draw (conditional models).")
@click.option("--which", default="checkpoint", show_default=True,
              type=click.Choice(["checkpoint", "best"]))
@click.option("--device", default="cpu", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]))
def sample(run_dir: str, n: int, out: str | None, seed: int, label: int | None, which: str,
           device: str) -> None:
    """Draw N samples from a trained run (EMA weights for GANs)."""
    import torch

    from genlab.images import save_grid, save_npz
    from genlab.runs import load_model

    if out is None:
        raise UserError("--out is required: a .png grid or a .npz array, e.g. --out grid.png")
    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".npz"):
        raise UserError(f"--out must end in .png or .npz, got {out!r}")
    model = load_model(run_dir, which=which, device=device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    kwargs = {}
    k = getattr(model.config, "num_classes", 0)
    if label is not None:
        if not k:
            raise UserError("--label needs a conditional model (train it with --conditional)")
        if label >= k:
            raise UserError(f"--label {label} is out of range: the model has classes 0..{k - 1}")
        kwargs["labels"] = torch.full((n,), label, dtype=torch.long, device=model.device)
    elif k:
        kwargs["labels"] = torch.arange(n, device=model.device) % k
    images = model.sample(n, generator=generator, **kwargs)
    if suffix == ".png":
        path = save_grid(images, out, nrow=k if (k and label is None and k <= 16) else None)
    else:
        path = save_npz(images, out, labels=kwargs.get("labels"))
    click.echo(str(path))
