"""`genlab utility`: does adding a generator's images to real ones help a classifier?"""

from __future__ import annotations

import json
from pathlib import Path

import click

from genlab.cli.app import cli, command_line, sampling_options, sampling_request
from genlab.errors import UserError
from genlab.limits import SEED

UTILITY_EXAMPLES = """\b
Examples:
  genlab utility runs/fmnist-cdcgan --data fashion-mnist --real-per-class 100 --seeds 5
  genlab utility runs/fmnist-cdcgan --data fashion-mnist --fast   # one seed, three arms
  genlab utility --fake samples.npz --data fashion-mnist --out reports/
  genlab utility runs/cdiffusion --sample-steps 10 --guidance 1 --precision auto
"""


def _per_class(value: str | None) -> int | None:
    if value is None:
        return None
    if value == "all":
        return 0
    try:
        n = int(value)
    except ValueError:
        raise UserError(f"--real-per-class takes a count or 'all', got {value!r}") from None
    if n < 1:
        raise UserError(f"--real-per-class must be >= 1 (or 'all'), got {n}")
    return n


@cli.command("utility", epilog=UTILITY_EXAMPLES)
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--data", help="The real labelled dataset (default: the run's).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Folder holding the dataset's files.")
@click.option("--fake", type=click.Path(dir_okay=False),
              help="Labelled samples from any tool: an .npz with uint8 `images` and `labels`.")
@click.option("--real-per-class", help="Real images per class for R: a count or 'all' "
              "(default: the generator's train.per_class; 100 with --fake).")
@click.option("--generator-seeds", help="Comma-separated run folders of the same generator "
              "recipe trained with other seeds; classifier seed s uses run s mod G, so the "
              "intervals include generator variance.")
@click.option("--seeds", type=click.IntRange(1, 1000),
              help="Classifier seeds per arm (default 5; 1 with --fast).")
@click.option("--fast", is_flag=True, help="One seed, arms R, S, R+S:k=1, 300 steps.")
@click.option("--arms", help="Comma-separated arms (default: all of R, S, S:large, "
              "R+S:k=0.5/1/2/4, R+classical, R+noise, R-duplicated).")
@click.option("--steps", type=click.IntRange(1, 1_000_000),
              help="Optimisation steps of every arm (default 1000; 300 with --fast).")
@click.option("--large-n", type=click.IntRange(1, 100_000),
              help="Synthetic images of the S:large arm (default 10 x |R|).")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Base seed of the classifier seeds and the synthetic samples.")
@click.option("--subset-seed", type=SEED,
              help="Seed of R's real subset (default: the generator's train.seed).")
@click.option("--allow-leak", is_flag=True,
              help="Go on when the generator was not trained on R's subset (reported).")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON object on stdout (messages go to stderr).")
@click.option("--out", type=click.Path(file_okay=False),
              help="Folder for utility.json and utility.md (default: the run folder).")
@click.option("--which", default="checkpoint", show_default=True,
              type=click.Choice(["checkpoint", "best"]), help="Which checkpoint of the run.")
@click.option("--device", default="cpu", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]),
              help="Where the generator samples (the classifiers train on the CPU).")
@sampling_options
def utility_command(run_dir: str | None, data: str | None, data_dir: str | None,
                    fake: str | None, real_per_class: str | None, generator_seeds: str | None,
                    seeds: int | None, fast: bool,
                    arms: str | None, steps: int | None, large_n: int | None, seed: int,
                    subset_seed: int | None, allow_leak: bool, as_json: bool, out: str | None,
                    which: str, device: str, sampler: str | None, sample_steps: int | None,
                    guidance: float | None, precision: str) -> None:
    """Does synthetic data help? Train a fixed small CNN on real (R), synthetic (S), mixed and
    control arms, and report mean test accuracy, 95% intervals over seeds and the paired
    difference against R ("helps" only when its interval excludes 0). See docs/utility.md.
    """
    from genlab.apps.utility import UtilityRequest, format_table, run_utility

    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
    extra = tuple(p for p in (generator_seeds or "").split(",") if p)
    if extra and run_dir is None:
        raise UserError("--generator-seeds adds runs to a RUN_DIR; give the first run too")
    req = UtilityRequest(run_dir=run_dir, generator_seeds=extra, fake=fake, data=data, data_dir=data_dir,
                         real_per_class=_per_class(real_per_class), seeds=seeds, fast=fast,
                         arms=tuple(arms.split(",")) if arms else None, steps=steps,
                         large_n=large_n, seed=seed, subset_seed=subset_seed,
                         allow_leak=allow_leak, which=which, device=device, out=out,
                         sample_options=sampling_request(sampler, sample_steps, guidance),
                         precision=precision, command=command_line())
    report = run_utility(req)
    if as_json:
        click.echo(json.dumps(report))
        return
    click.echo(format_table(report))
    where = out or run_dir
    if where:
        click.echo(f"wrote {Path(where) / 'utility.json'} and utility.md", err=True)
