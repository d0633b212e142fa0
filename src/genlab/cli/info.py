"""`genlab models`, `genlab datasets`, `genlab runs`: tables of what is there."""

from __future__ import annotations

import click

from genlab.cli.app import cli


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


@cli.command(epilog="Example:\n\n  genlab models")
def models() -> None:
    """List the registered models, their presets and what each is."""
    from genlab.config import load_preset, preset_names
    from genlab.models import MODELS

    presets: dict[str, list[str]] = {}
    for name in preset_names():
        owner = load_preset(name).get("model_name")
        presets.setdefault(owner, []).append(name)
    rows = [[name, cls.modality, ",".join(presets.get(name, [])), cls.description]
            for name, cls in MODELS.items()]
    click.echo(_table(rows, ["model", "data", "presets", "description"]))


@cli.command(epilog="""\b
Examples:
  genlab datasets
  genlab datasets --data-dir ~/data/mnist
""")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Also look for the files in this folder.")
def datasets(data_dir: str | None) -> None:
    """List the datasets (images and audio): size, shape, classes, whether the files are here."""
    from genlab.data import dataset_info

    def cell(value: object) -> str:
        if value is None:
            return "-"
        return "x".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)

    def present(d: dict) -> str:
        if d.get("present_locally"):
            return f"yes ({d['where']})"
        if d.get("problem"):
            return d["problem"]  # e.g. "checksum failed: PATH": there, but not usable
        return "-" if d.get("train_size") is None else "no"

    rows = [[d["name"], cell(d.get("train_size")), cell(d.get("test_size")), cell(d.get("shape")),
             cell(d.get("num_classes")), present(d), d.get("description", "")]
            for d in dataset_info(data_dir, container=None)]
    click.echo(_table(rows, ["name", "train", "test", "shape", "classes", "present", "about"]))


@cli.command(epilog="Examples:\n\n  genlab runs\n\n  genlab runs /scratch/runs")
@click.argument("root", default="runs", type=click.Path(file_okay=False))
def runs(root: str) -> None:
    """A table of the runs under ROOT: model, data, steps, last losses, last evaluation."""
    from genlab.rundir import list_runs

    rows = [[r["run"], r["model"], r["data"], str(r["step"]),
             r.get("note") or " ".join(f"{k}={v:.3f}" for k, v in r["losses"].items()),
             " ".join(f"{k}={v:.3f}" for k, v in r["eval"].items()) or "-",
             f"{r['epsilon']:.3g}" if isinstance(r.get("epsilon"), int | float) else "-"]
            for r in list_runs(root)]
    if not rows:
        click.echo(f"no runs under {root}", err=True)
        return
    click.echo(_table(rows, ["run", "model", "data", "step", "last losses", "last eval",
                             "epsilon"]))
