"""The `genlab` click group and what every command module shares; the commands register on it
from their own modules (`genlab.cli.train`, ...), and `genlab.cli.main` runs it."""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from genlab.version import __version__

F = TypeVar("F", bound=Callable[..., Any])


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="genlab")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
def cli(debug: bool) -> None:
    """Train, sample, evaluate, audit and serve generative models (GANs, VAEs, diffusion, GPTs).

    \b
    Examples:
      genlab demo                                # a conditional DCGAN on the bundled digits, ~1 min on a CPU
      genlab train dcgan --data fashion-mnist --steps 5000
      genlab sample runs/demo --n 64 --out grid.png
    """
    # `main` reads --debug from the arguments: setting GENLAB_DEBUG here would outlive this
    # command when genlab is called from Python


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def command_line() -> str:
    """The command being run, as typed (for run.json): from the arguments `main` was given, which
    are not `sys.argv` when genlab is called from Python."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx else None
    args = obj["argv"] if isinstance(obj, dict) and "argv" in obj else sys.argv[1:]
    return shlex.join(["genlab", *args])


def sampling_options(f: F) -> F:
    """--sampler, --sample-steps, --guidance and --precision: how a diffusion model samples,
    shared by `genlab sample`, `genlab eval` and `genlab utility`; `sampling_request` turns them
    into the request's options."""
    from genlab.limits import FiniteFloat

    for option in reversed((
            click.option("--sampler", help="Sampler of a diffusion model (ddim, ddpm, euler, heun) "
                         "[default: ddim, euler for flow matching]."),
            click.option("--sample-steps", type=int, help="Sampling steps of a diffusion model "
                         "[default: 50]."),
            click.option("--guidance", type=FiniteFloat(), help="Classifier-free guidance weight "
                         "(conditional diffusion models) [default: none]."),
            click.option("--precision", default="fp32", show_default=True,
                         type=click.Choice(["fp32", "bf16", "auto"]),
                         help="Forward passes in fp32, or under bf16 autocast (diffusion sampling "
                         "in about 0.6x the CPU time on a CPU with AVX-512 BF16, other bits than "
                         "fp32); auto = bf16 where the device runs it natively."))):
        f = option(f)
    return f


def sampling_request(sampler: str | None, sample_steps: int | None,
                     guidance: float | None) -> dict[str, object]:
    """The sampling options given on the command line (those left out take the model's default)."""
    given = {"sampler": sampler, "sample_steps": sample_steps, "guidance": guidance}
    return {k: v for k, v in given.items() if v is not None}
