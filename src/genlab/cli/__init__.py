"""The `genlab` command: thin wrappers over the Python API, one module per group of commands.

Every user error ends as one line on stderr and exit status 2, without a traceback
(`genlab --debug ...` or GENLAB_DEBUG=1 shows it).
"""

from __future__ import annotations

import os
import sys

import click

from genlab.cli.app import _one_line, cli
from genlab.errors import StopRequested, UserError

__all__ = ["cli", "main"]


# each API request field named in an error -> the flag of `genlab sample` that sets it
FIELD_FLAGS = {"n": "--n", "seed": "--seed", "label": "--label", "prompt": "--prompt",
               "max_new_tokens": "--max-new-tokens", "temperature": "--temperature",
               "top_k": "--top-k", "top_p": "--top-p", "use_cache": "--no-cache", "out": "--out",
               "sampler": "--sampler", "sample_steps": "--sample-steps", "guidance": "--guidance"}


def _user_message(e: UserError) -> str:
    """A library error as the command line says it: request fields become flags."""
    from genlab.generation import RequestError

    if isinstance(e, RequestError) and e.field in FIELD_FLAGS:
        return f"{FIELD_FLAGS[e.field]} {e.problem}"
    return str(e)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of `python -m genlab`."""
    from genlab._threads import configure_threads

    # before anything imports torch: OpenMP reads it once, at load; --help needs no busy-core
    # reading (50 ms)
    words = sys.argv[1:] if argv is None else argv
    configure_threads(busy=(lambda: None) if {"-h", "--help", "--version"} & set(words) else None)
    from genlab.cli import audit, eval, info, report, serve, train, utility, vae  # noqa: F401  (registers the commands)
    from genlab.log import logger, to_stderr

    args = list(sys.argv[1:] if argv is None else argv)
    # --debug works anywhere on the line (before `--`), not only before the command
    cut = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:cut] or os.environ.get("GENLAB_DEBUG") == "1"
    args = [a for i, a in enumerate(args) if a != "--debug" or i >= cut]
    handler = to_stderr()
    try:
        code = cli.main(args=args, prog_name="genlab", standalone_mode=False,
                        obj={"argv": list(argv if argv is not None else sys.argv[1:])})
    except click.UsageError as e:
        path = e.ctx.command_path if e.ctx else "genlab"
        click.echo(f"{path}: error: {_one_line(e.format_message())} (see {path} --help)",
                   err=True)
        sys.exit(2)
    except click.ClickException as e:
        click.echo(f"genlab: error: {_one_line(e.format_message())}", err=True)
        sys.exit(e.exit_code)
    except (click.Abort, KeyboardInterrupt) as e:
        stop = e if isinstance(e, StopRequested) else e.__cause__  # click wraps it in Abort
        signum = stop.signum if isinstance(stop, StopRequested) else 2  # SIGINT
        click.echo("genlab: interrupted" if signum == 2 else f"genlab: stopped by signal {signum}",
                   err=True)
        sys.exit(128 + signum)
    except UserError as e:
        if debug:
            raise
        click.echo(f"genlab: error: {_one_line(_user_message(e))}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # the file system said no: a path that cannot be made, a full disk, ...
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        click.echo(f"genlab: error: {_one_line(e.strerror or str(e))}{where} (check the path, its "
                   "permissions and the free space; --debug shows where it happened)", err=True)
        sys.exit(2)
    finally:
        logger.removeHandler(handler)
    sys.exit(code if isinstance(code, int) else 0)
