"""The `genlab` click group and what every command module shares; the commands register on it
from their own modules (`genlab.cli.train`, ...), and `genlab.cli.main` runs it."""

from __future__ import annotations

import shlex
import sys

import click

from genlab.version import __version__


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


