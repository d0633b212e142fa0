"""`genlab report`: one self-contained HTML report card of runs side by side."""

from __future__ import annotations

import click

from genlab.cli.app import cli


@cli.command("report", epilog="""\b
Examples:
  genlab report runs/fmnist-dcgan runs/fmnist-vae --out report.html
  genlab report runs/shakespeare --out shakespeare.html
""")
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", default="report.html", show_default=True, type=click.Path(dir_okay=False),
              help="The HTML file to write (images embedded; nothing is fetched).")
def report_command(runs: tuple[str, ...], out: str) -> None:
    """Sample grid, loss curves, eval figures against the real-vs-real floor, likelihood,
    utility and audit results of each run, side by side, with intervals and provenance."""
    from genlab.apps.report import write_report

    click.echo(str(write_report(runs, out)))
