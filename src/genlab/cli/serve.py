"""`genlab serve`: trained runs behind a REST API and a web page (the `serve` extra)."""

from __future__ import annotations

import click

from genlab.cli.app import cli
from genlab.errors import UserError

SERVE_EXAMPLE = """\b
Examples:
  genlab serve runs/fmnist-cdcgan runs/shakespeare      # http://127.0.0.1:8000, page at /
  curl -s localhost:8000/v1/images/generations -d '{"model":"fmnist-cdcgan","n":16,"seed":7}'
  GENLAB_SERVE_TOKEN=$(cat token) genlab serve --runs-dir runs --host 0.0.0.0
"""


@cli.command(epilog=SERVE_EXAMPLE)
@click.argument("runs", nargs=-1, type=click.Path(file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; one other than loopback needs --token (or --insecure).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0: any free one, printed at start).")
@click.option("--token", envvar="GENLAB_SERVE_TOKEN", show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' on every route but /livez (16+ "
              "characters; the environment variable keeps it out of the process list).")
@click.option("--runs-dir", type=click.Path(file_okay=False),
              help="Also serve every run folder in DIR.")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="Let web pages at this origin (e.g. https://app.example.com) call the API; "
              "repeatable. Default: no cross-origin access.")
@click.option("--insecure", is_flag=True,
              help="Allow a non-loopback --host without a token.")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--which", default="checkpoint", show_default=True,
              type=click.Choice(["checkpoint", "best"]))
@click.option("--timeout", "timeout_s", default=60.0, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help="Seconds a request may wait before it gets 504.")
@click.option("--max-queue", default=64, show_default=True, type=click.IntRange(min=1),
              help="Requests that may wait per model; beyond, 429 with Retry-After.")
@click.option("--no-batching", "batching", flag_value=False, default=True,
              help="Run each image request alone instead of micro-batching.")
def serve(runs: tuple[str, ...], host: str, port: int, token: str | None, runs_dir: str | None,
          cors_origins: tuple[str, ...], insecure: bool, device: str, which: str,
          timeout_s: float, max_queue: int, batching: bool) -> None:
    """Serve trained runs over HTTP: the API at /v1, its docs at /docs, a page at /."""
    try:
        from genlab.apps.serve_run import serve as run_server
    except ModuleNotFoundError as e:
        if e.name in ("fastapi", "uvicorn", "starlette", "pydantic", "httptools", "uvloop"):
            raise UserError("genlab serve needs FastAPI and uvicorn: pip install genlab[serve]"
                            ) from None
        raise
    run_server(list(runs), runs_dir=runs_dir, host=host, port=port, token=token,
               insecure=insecure, cors_origins=cors_origins, device=device, which=which,
               timeout_s=timeout_s, max_queue=max_queue, batching=batching)
