"""`genlab train`, `genlab demo`, `genlab sample`."""

from __future__ import annotations

from pathlib import Path

import click

from genlab.cli.app import cli, command_line, sampling_options, sampling_request
from genlab.errors import UserError
from genlab.limits import SEED, FiniteFloat

DEVICES = click.Choice(["auto", "cpu", "cuda", "mps"])

TRAIN_EXAMPLE = """\b
Examples:
  genlab train dcgan --data digits --steps 2000
  genlab train dcgan --data fashion-mnist --preset dcgan64 --steps 5000 --precision auto
  genlab train gan --data mnist --conditional --set model.loss=hinge --set train.lr=1e-4
  genlab train --resume runs/dcgan-digits-20260101-120000 --steps 4000
  torchrun --nproc_per_node=8 -m genlab train dcgan --data fashion-mnist --steps 20000
"""


# written out rather than read from genlab.data's registry, which would import torch for --help;
# tests/test_cli.py checks that it names every registered dataset
DATA_HELP = ("Dataset: digits, mnist, fashion-mnist, cifar10, fsdd (spoken digits), idx:DIR, "
             "folder:PATH, wav:DIR; text:PATH for gpt. See genlab datasets.")


@cli.command(epilog=TRAIN_EXAMPLE)
@click.argument("model", required=False)
@click.option("--data", help=DATA_HELP)
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Folder holding the dataset's official files (gzipped or raw).")
@click.option("--steps", type=click.IntRange(min=1), help="Total optimizer steps [default: the "
              "preset's, e.g. 5000 for shakespeare-char; the gan, dcgan and vae presets set none, "
              "so give --steps or --epochs].")
@click.option("--epochs", type=FiniteFloat(min=0, min_open=True),
              help="Train for this many passes over the data (instead of --steps).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Global batch size.")
@click.option("--out", type=click.Path(file_okay=False),
              help="Run folder (default runs/<model>-<data>-<timestamp>/).")
@click.option("--seed", type=SEED, help="Seed for every random choice, 0..2^63-1 [default: 0].")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]),
              help="bf16 autocast (CUDA and CPU), fp32, or auto: bf16 where the hardware has it "
                   "(AVX-512 BF16 or AMX on CPU, Ampere or later on CUDA), else fp32. bf16 "
                   "without hardware support is emulated and slow [default: the preset's, else "
                   "fp32; the GPT presets and the demo use auto].")
@click.option("--compile", "compile_", is_flag=True, default=None, help="torch.compile the networks.")
@click.option("--eval-every", type=click.IntRange(min=0), help="Evaluate every N steps and keep "
              "the best checkpoint in best/ [default: the preset's, else 0 = off].")
@click.option("--preset", help="A preset of the model, by name (see genlab models).")
@click.option("--preset-file", type=click.Path(dir_okay=False),
              help="A preset of your own: a TOML file with [model] and [train] tables.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config field, e.g. --set model.loss=hinge --set train.lr=1e-4.")
@click.option("--conditional", is_flag=True, help="Class-conditional model (labels from the data).")
@click.option("--resume", type=click.Path(file_okay=False),
              help="Continue the run in this folder to --steps total steps.")
@click.option("--init-from", type=click.Path(file_okay=False),
              help="Start from this run's weights with a fresh optimizer (fine-tuning); a text "
                   "model keeps that run's tokenizer.")
@click.option("--overwrite", is_flag=True,
              help="Start again in an --out folder that holds a run: genlab removes the files it "
                   "wrote there and nothing else; or train in a folder of other files beside "
                   "them.")
@click.option("--dp", is_flag=True, default=None,
              help="Differentially private training (needs the dp extra, Opacus): give "
                   "--set train.dp_epsilon=E, or train.dp_noise_multiplier and "
                   "train.dp_clip_norm. See docs/dp.md.")
def train(model: str | None, data: str | None, data_dir: str | None, steps: int | None,
          epochs: float | None, batch_size: int | None, out: str | None, seed: int | None,
          device: str, precision: str | None, compile_: bool | None, eval_every: int | None,
          preset: str | None, overrides: tuple[str, ...], conditional: bool, resume: str | None,
          init_from: str | None, overwrite: bool, preset_file: str | None,
          dp: bool | None) -> None:
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
                       init_from=init_from, overwrite=overwrite, preset_file=preset_file,
                       command=command_line(), dp=bool(dp))
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
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--precision", default="auto", show_default=True,
              type=click.Choice(["auto", "fp32", "bf16"]),
              help="auto: bf16 where the CPU/GPU runs it natively (AVX-512 BF16, AMX), else fp32.")
@click.option("--overwrite", is_flag=True, help="Use an --out folder that holds other files or "
              "another run: genlab removes only the files it wrote there.")
def demo(out: str, steps: int | None, seed: int, device: str, precision: str,
         overwrite: bool) -> None:
    """Train the offline demo: a class-conditional DCGAN on the bundled 8x8 digits, with a sample
    grid (one column per digit) and loss curve.

    Needs no download. About a minute or two on a laptop CPU. Running it again replaces the
    previous demo in the same folder, when that folder holds only what the demo wrote; a folder
    with anything else in it (another run, your files) needs --overwrite, and even then genlab
    removes only the files it wrote.
    """
    from genlab.config import load_preset
    from genlab.rundir import RUN_FILE, foreign_entries, read_run
    from genlab.runs import TrainRequest
    from genlab.runs import train as run_training

    out_dir = Path(out)
    if (out_dir / RUN_FILE).is_file() and not foreign_entries(out_dir):
        record = read_run(out_dir)
        # a previous demo, and nothing but what it wrote: replaced without asking
        overwrite = overwrite or (record.get("preset") == "demo" and
                                  str(record.get("command") or "").startswith("genlab demo"))
    preset = load_preset("demo")
    total = steps or preset["train"]["steps"]
    click.echo(f"genlab demo: a small class-conditional DCGAN learns scikit-learn's 8x8 digits "
               f"for {total} steps in {out_dir}, then writes samples.png (generated digits) and "
               "loss.png; after the first steps it says how long the rest will take", err=True)
    req = TrainRequest(model="dcgan", data="digits", preset="demo", conditional=True, steps=steps,
                       seed=seed, out=out, device=device, precision=precision, overwrite=overwrite,
                       command=command_line())
    run_dir = run_training(req)
    _print_outputs(run_dir)


@cli.command(epilog="""\b
Examples:
  genlab sample runs/demo --n 64 --out grid.png
  genlab sample runs/cgan --n 100 --label 3 --out threes.npz --seed 1
  genlab sample runs/shakespeare --prompt "ROMEO:" --max-new-tokens 500 --temperature 0.8 \\
      --top-k 50 --top-p 0.95 --seed 1
  genlab sample runs/diffusion --sampler heun --sample-steps 25 --out grid.png
""")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", "n", type=int, help="Samples to draw [default: 64 images, 1 text].")
@click.option("--out", type=click.Path(dir_okay=False),
              help="grid.png (a grid) or samples.npz (uint8 `images`, and `labels`); for text, a "
              ".txt file (default: stream to stdout); for audio, x.wav (the clips in a row, and "
              "x.png of their spectrograms) or x.zip (a WAV per clip), see docs/audio.md.")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="The same seed gives the same samples (and the same bytes).")
@click.option("--label", type=int, help="Class to draw (conditional models) [default: every "
              "class in turn].")
@click.option("--which", default="checkpoint", show_default=True,
              type=click.Choice(["checkpoint", "best"]))
@click.option("--device", default="auto", show_default=True, type=DEVICES)
@click.option("--prompt", help="Text the samples start with (text models).")
@click.option("--max-new-tokens", type=int,
              help="Tokens to generate after the prompt (text models) [default: 500].")
@click.option("--temperature", type=FiniteFloat(),
              help="Softmax temperature, 0 = greedy (text models) [default: 1].")
@click.option("--top-k", type=int, help="Sample among the k likeliest tokens.")
@click.option("--top-p", type=FiniteFloat(),
              help="Sample among the likeliest tokens holding probability p (nucleus).")
@click.option("--no-cache", is_flag=True, help="Recompute the whole context for every token "
              "instead of using the KV cache (slower; for checking).")
@sampling_options
def sample(run_dir: str, n: int | None, out: str | None, seed: int, label: int | None,
           which: str, device: str, prompt: str | None, max_new_tokens: int | None,
           temperature: float | None, top_k: int | None, top_p: float | None, no_cache: bool,
           sampler: str | None, sample_steps: int | None, guidance: float | None,
           precision: str) -> None:
    """Draw N samples from a trained run (EMA weights for GANs; text streams to stdout)."""
    from genlab.devices import sampling_precision
    from genlab.generation import GenerationRequest
    from genlab.modalities import get_modality
    from genlab.rundir import load_model

    model = load_model(run_dir, which=which, device=device)
    sampling_precision(model, precision, lambda note: click.echo(f"genlab: {note}", err=True))
    request = GenerationRequest(n=n, seed=seed, label=label, prompt=prompt,
                                max_new_tokens=max_new_tokens, temperature=temperature,
                                top_k=top_k, top_p=top_p, use_cache=not no_cache,
                                options=sampling_request(sampler, sample_steps, guidance))
    modality = get_modality(model.modality)
    if out is None:
        if modality.stdout_format is None:
            suffixes = list(dict.fromkeys(modality.samples_class.formats.values()))
            raise UserError(f"--out is required: a file ending in {' or '.join(suffixes)}, "
                            f"e.g. --out samples{suffixes[0]}")
    else:
        modality.samples_class.format_for(out)  # a wrong suffix is refused before any work
    if out is None and modality.streams and (n or 1) == 1:
        for piece in modality.stream(model, request):
            click.echo(piece, nl=False)  # click flushes, so text appears as it is made
        click.echo()
        return
    samples = modality.generate(model, request)
    if out is None:
        click.echo(samples.encode(modality.stdout_format).decode(), nl=False)
        return
    click.echo(str(samples.save(out)))
