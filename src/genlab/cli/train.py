"""`genlab train`, `genlab demo`, `genlab sample`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from genlab.cli import cli, command_line
from genlab.errors import UserError

if TYPE_CHECKING:
    import torch

    from genlab.models.gpt import GPT

TRAIN_EXAMPLE = """\b
Examples:
  genlab train dcgan --data digits --steps 2000
  genlab train dcgan --data fashion-mnist --preset dcgan64 --steps 5000 --precision bf16
  genlab train gan --data mnist --conditional --set model.loss=hinge --set train.lr=1e-4
  genlab train --resume runs/dcgan-digits-20260101-120000 --steps 4000
  torchrun --nproc_per_node=8 -m genlab train dcgan --data fashion-mnist --steps 20000
"""


@cli.command(epilog=TRAIN_EXAMPLE)
@click.argument("model", required=False)
@click.option("--data", help="Dataset: digits, mnist, fashion-mnist, cifar10, idx:DIR, folder:PATH; "
                             "text:PATH for gpt.")
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
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]),
              help="bf16 autocast (CUDA and CPU), fp32, or auto: bf16 where the hardware has it "
                   "(AVX-512 BF16 or AMX on CPU, Ampere or later on CUDA), else fp32.")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the networks.")
@click.option("--eval-every", type=click.IntRange(min=0), help="Evaluate every N steps.")
@click.option("--preset", help="A preset of the model (see genlab models).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config field, e.g. --set model.loss=hinge --set train.lr=1e-4.")
@click.option("--conditional", is_flag=True, help="Class-conditional model (labels from the data).")
@click.option("--resume", type=click.Path(file_okay=False),
              help="Continue the run in this folder to --steps total steps.")
@click.option("--init-from", type=click.Path(file_okay=False),
              help="Start from this run's weights with a fresh optimizer (fine-tuning); a text "
                   "model keeps that run's tokenizer.")
def train(model: str | None, data: str | None, data_dir: str | None, steps: int | None,
          epochs: float | None, batch_size: int | None, out: str | None, seed: int | None,
          device: str, precision: str | None, compile_: bool | None, eval_every: int | None,
          preset: str | None, overrides: tuple[str, ...], conditional: bool, resume: str | None,
          init_from: str | None) -> None:
    """Train MODEL on a dataset; writes checkpoints, samples, metrics.jsonl and loss.png."""
    from genlab.distributed import is_main_process
    from genlab.runs import TrainRequest
    from genlab.runs import train as run_training

    if resume and init_from:
        raise UserError("--resume and --init-from cannot be combined")
    req = TrainRequest(model=model, data=data, data_dir=data_dir, steps=steps, epochs=epochs,
                       batch_size=batch_size, out=out, seed=seed, device=device,
                       precision=precision, compile=compile_, eval_every=eval_every, preset=preset,
                       overrides=overrides, conditional=conditional, resume=resume,
                       init_from=init_from, command=command_line())
    run_dir = run_training(req)
    if is_main_process():  # under torchrun, rank 0 reports for all
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
    """Train the offline demo: a class-conditional DCGAN on the bundled 8x8 digits, with a sample
    grid (one column per digit) and loss curve.

    Needs no download. About a minute or two on a laptop CPU. Running it again overwrites the folder.
    """
    import shutil

    from genlab.runs import RUN_FILE, TrainRequest
    from genlab.runs import train as run_training

    out_dir = Path(out)
    if (out_dir / RUN_FILE).exists():
        shutil.rmtree(out_dir)  # the demo is disposable; a user's own runs are never overwritten
    req = TrainRequest(model="dcgan", data="digits", preset="demo", conditional=True, steps=steps,
                       seed=seed, out=out, device=device, precision="auto", command=command_line())
    run_dir = run_training(req)
    _print_outputs(run_dir)


@cli.command(epilog="""\b
Examples:
  genlab sample runs/demo --n 64 --out grid.png
  genlab sample runs/cgan --n 100 --label 3 --out threes.npz --seed 1
  genlab sample runs/shakespeare --prompt "ROMEO:" --max-new-tokens 500 --temperature 0.8 \\
      --top-k 50 --top-p 0.95 --seed 1
""")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), help="Samples to draw [default: 64 images, "
              "1 text].")
@click.option("--out", type=click.Path(dir_okay=False),
              help="grid.png (a grid) or samples.npz (uint8 `images`, and `labels`); for text, a "
              ".txt file (default: stream to stdout).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--label", type=click.IntRange(min=0), help="Class to draw (conditional models).")
@click.option("--which", default="checkpoint", show_default=True,
              type=click.Choice(["checkpoint", "best"]))
@click.option("--device", default="cpu", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--prompt", help="Text the samples start with (text models).")
@click.option("--max-new-tokens", type=click.IntRange(min=0),
              help="Tokens to generate after the prompt (text models) [default: 500].")
@click.option("--temperature", type=click.FloatRange(min=0),
              help="Softmax temperature, 0 = greedy (text models) [default: 1].")
@click.option("--top-k", type=click.IntRange(min=1), help="Sample among the k likeliest tokens.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True),
              help="Sample among the likeliest tokens holding probability p (nucleus).")
@click.option("--no-cache", is_flag=True, help="Recompute the whole context for every token "
              "instead of using the KV cache (slower; for checking).")
def sample(run_dir: str, n: int | None, out: str | None, seed: int, label: int | None, which: str,
           device: str, prompt: str | None, max_new_tokens: int | None,
           temperature: float | None, top_k: int | None, top_p: float | None,
           no_cache: bool) -> None:
    """Draw N samples from a trained run (EMA weights for GANs; text streams to stdout)."""
    import torch

    from genlab.images import save_grid, save_npz
    from genlab.runs import load_model

    model = load_model(run_dir, which=which, device=device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    text_options = {"prompt": prompt, "max_new_tokens": max_new_tokens,
                    "temperature": temperature, "top_k": top_k, "top_p": top_p}
    if model.modality == "text":
        if label is not None:
            raise UserError("--label applies to conditional image models, not text models")
        _sample_text(model, generator, n or 1, out, use_cache=not no_cache, **text_options)
        return
    given = [f"--{k.replace('_', '-')}" for k, v in text_options.items() if v is not None]
    if given or no_cache:
        raise UserError(f"{', '.join(given or ['--no-cache'])}: text options, and this is an "
                        f"image model ({model.name})")
    n = n or 64
    if out is None:
        raise UserError("--out is required: a .png grid or a .npz array, e.g. --out grid.png")
    suffix = Path(out).suffix.lower()
    if suffix not in (".png", ".npz"):
        raise UserError(f"--out must end in .png or .npz, got {out!r}")
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


def _sample_text(model: GPT, generator: torch.Generator, n: int, out: str | None, *, prompt: str | None,
                 max_new_tokens: int | None, temperature: float | None, top_k: int | None,
                 top_p: float | None, use_cache: bool) -> None:
    """Stream one sample to stdout as it is generated, or write N samples to stdout or `out`."""
    from genlab.checkpoint import atomic_write_text
    from genlab.text.sampling import stream_text

    tokenizer = model.tokenizer
    if tokenizer is None:
        raise UserError("this checkpoint holds no tokenizer, so its text cannot be decoded; "
                        "retrain it with this genlab version")
    try:
        prompt_ids = tokenizer.encode(prompt).tolist() if prompt else None
    except UserError as e:
        raise UserError(f"--prompt: {e}") from None
    ids = model.prompt_batch(n, prompt_ids)
    kw = {"max_new_tokens": 500 if max_new_tokens is None else max_new_tokens,
          "temperature": 1.0 if temperature is None else temperature, "top_k": top_k,
          "top_p": top_p, "use_cache": use_cache, "generator": generator}
    if n == 1 and out is None:
        for piece in stream_text(tokenizer.decode, ids[0].tolist(), model.generate(ids, **kw)):
            click.echo(piece, nl=False)  # click flushes, so text appears as it is made
        click.echo()
        return
    rows = model.sample(n, prompt_ids=ids, **kw).cpu()
    texts = [tokenizer.decode(row) for row in rows]
    text = texts[0] if n == 1 else "\n".join(f"--- sample {i + 1} ---\n{t}\n"
                                             for i, t in enumerate(texts))
    if out is None:
        click.echo(text)
        return
    atomic_write_text(Path(out), text if text.endswith("\n") else text + "\n")
    click.echo(out)
