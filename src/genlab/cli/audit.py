"""`genlab audit`: memorization and membership inference of a run (or of any tool's samples)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from genlab.cli.app import cli, command_line
from genlab.errors import UserError
from genlab.limits import MAX_SAMPLES, SEED

AUDIT_EXAMPLES = """\b
Examples:
  genlab audit runs/fmnist-dcgan                 # images: train vs held-out vs generated
  genlab audit runs/shakespeare                  # text: 50-character overlap with the training text
  genlab audit runs/fmnist-vae --n 2000 --json > audit.json
  genlab audit --fake samples.npz --data fashion-mnist   # samples from any tool
"""


@cli.command("audit", epilog=AUDIT_EXAMPLES)
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--n", "n", type=click.IntRange(1, MAX_SAMPLES),
              help="Generated samples (default 10000 images, 16 texts).")
@click.option("--members", type=click.IntRange(10, MAX_SAMPLES),
              help="Training images used as members (default: as many as held-out images).")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of the samples, of every subset and of the bootstrap.")
@click.option("--bootstrap", default=200, show_default=True, type=click.IntRange(10, 10000),
              help="Bootstrap resamples of each AUC interval.")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON object on stdout (messages go to stderr).")
@click.option("--fake", type=click.Path(exists=True),
              help="Samples to audit instead of a run: an .npz (uint8 `images`) or PNG folder.")
@click.option("--data", help="The dataset --fake samples are audited against (its train split).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Folder holding the dataset's files.")
@click.option("--which", default="checkpoint", show_default=True,
              type=click.Choice(["checkpoint", "best"]), help="Which checkpoint of the run.")
@click.option("--device", default="cpu", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--feature-net", help="A feature net file of your own (genlab featurenet train).")
def audit_command(run_dir: str | None, n: int | None, members: int | None, seed: int,
                  bootstrap: int, as_json: bool, fake: str | None, data: str | None,
                  data_dir: str | None, which: str, device: str,
                  feature_net: str | None) -> None:
    """Does the model copy its training data? Near-copies, closer-to-train and membership
    inference (AUC with intervals, TPR at 1% and 0.1% FPR) against held-out images; for a text
    run, verbatim 50-character overlap. Saved as audit.json in the run. See docs/audit.md."""
    from genlab.apps.audit import DEFAULT_N, audit_fake, audit_run, format_report

    if (run_dir is None) == (fake is None):
        raise UserError("give either a RUN_DIR or --fake FILE --data DATASET")
    if fake is not None:
        if data is None:
            raise UserError("--fake needs --data DATASET, e.g. --data fashion-mnist")
        report = audit_fake(fake, data, n=n or DEFAULT_N, seed=seed, data_dir=data_dir,
                            feature_net=feature_net, bootstrap=bootstrap, members=members,
                            command=command_line())
    else:
        if data is not None:
            raise UserError("--data goes with --fake; a run is audited against its own data")
        report = audit_run(run_dir, n=n, seed=seed, data_dir=data_dir, which=which,
                           device=device, feature_net=feature_net, bootstrap=bootstrap,
                           members=members, command=command_line())
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(format_report(report))
    if run_dir is not None:
        click.echo(f"wrote {Path(run_dir) / 'audit.json'}", err=True)
