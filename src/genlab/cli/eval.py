"""`genlab eval` and `genlab featurenet`: scoring generated images, and the nets that embed them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from genlab.cli.app import cli, command_line, sampling_options, sampling_request
from genlab.errors import UserError
from genlab.limits import SEED

EVAL_EXAMPLES = """\b
Examples:
  genlab eval runs/demo                                  # writes runs/demo/eval.json
  genlab eval runs/dcgan-fashion --n 10000 --json > scores.json
  genlab eval --fake samples.npz --real fashion-mnist    # any tool's images (npz or PNG folder)
  genlab eval --fake pngs/ --real mnist:test --n 2000
  genlab eval runs/mine --real fashion-mnist             # a run trained on idx: copies of it
  genlab eval runs/diffusion --sample-steps 25 --precision auto
"""


@cli.command("eval", epilog=EVAL_EXAMPLES)
@click.argument("run_dir", required=False, type=click.Path(file_okay=False))
@click.option("--n", "n", default=10000, show_default=True, type=click.IntRange(min=1),
              help="Images per side (capped at the size of the real reference).")
@click.option("--seed", default=0, show_default=True, type=SEED,
              help="Seed of the samples and of every subset drawn.")
@click.option("--json", "as_json", is_flag=True,
              help="Print exactly one JSON object on stdout (messages go to stderr).")
@click.option("--data-dir", type=click.Path(file_okay=False),
              help="Folder holding the dataset's files.")
@click.option("--fake", type=click.Path(exists=True),
              help="Generated images to score: an .npz (uint8 `images`) or a folder of PNGs.")
@click.option("--real", help="DATASET[:split] to compare with: for --fake images, or for a run "
              "trained on idx:/folder: data (default: the run's own dataset, held-out images).")
@click.option("--iwae-k", default=100, show_default=True, type=click.IntRange(min=1),
              help="Importance samples per image for a VAE's IWAE likelihood.")
@click.option("--which", default="checkpoint", show_default=True,
              type=click.Choice(["checkpoint", "best"]), help="Which checkpoint of the run.")
@click.option("--device", default="auto", show_default=True,
              type=click.Choice(["auto", "cpu", "cuda", "mps"]))
@click.option("--feature-net", help="A feature net file of your own (genlab featurenet train).")
@sampling_options
def eval_command(run_dir: str | None, n: int, seed: int, as_json: bool, data_dir: str | None,
                 fake: str | None, real: str | None, iwae_k: int, which: str, device: str,
                 feature_net: str | None, sampler: str | None, sample_steps: int | None,
                 guidance: float | None, precision: str) -> None:
    """Score a run's samples (or --fake images) against held-out real images.

    Reports FD, KID, precision/recall, density/coverage (and class accuracy for conditional
    models) in a small classifier's feature space, next to the real-vs-real floor. FD here is not
    FID: the feature net's name and SHA-256 are recorded with it. A text run reports its
    validation loss and perplexity. See docs/evaluation.md.
    """
    from genlab.api import evaluate
    from genlab.evaluation import evaluate_fake, format_report
    from genlab.modalities import get_modality

    if (run_dir is None) == (fake is None):
        raise UserError("give either a RUN_DIR or --fake FILE --real DATASET")
    options = sampling_request(sampler, sample_steps, guidance)
    if fake is not None and (options or precision != "fp32"):
        flag = next(iter(options), "precision").replace("_", "-")
        raise UserError(f"--{flag} sets how a run samples; --fake images are already drawn")
    if fake is not None:
        if real is None:
            raise UserError("--fake needs --real DATASET[:split], e.g. --real fashion-mnist")
        report = evaluate_fake(fake, real, n=n, seed=seed, data_dir=data_dir,
                               feature_net=feature_net, command=command_line())
    else:
        report = evaluate(run_dir, n=n, seed=seed, data_dir=data_dir, iwae_k=iwae_k,
                          which=which, device=device, feature_net=feature_net, real=real,
                          sample_options=options, precision=precision, command=command_line())
    if as_json:
        click.echo(json.dumps(report))
    elif fake is not None:
        click.echo(format_report(report))
    else:
        click.echo(get_modality(report["provenance"]["modality"]).format_report(report))
        if run_dir is not None:
            name = "eval.json" if which == "checkpoint" else f"eval_{which}.json"
            click.echo(f"wrote {Path(run_dir) / name}", err=True)


@cli.group(epilog="""\b
Example:
  genlab featurenet train digits --out digits.safetensors
""")
def featurenet() -> None:
    """The small classifiers whose features the metrics use (one per image dataset)."""


@featurenet.command("train", epilog="""\b
Examples:
  genlab featurenet train fashion-mnist --out fashion-mnist.safetensors
  genlab featurenet train mnist --data-dir ~/data/mnist --seed 1
""")
@click.argument("dataset")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, type=SEED)
@click.option("--epochs", type=click.IntRange(min=1), help="Override the dataset's recipe.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write the net (default DATASET.safetensors).")
def featurenet_train(dataset: str, data_dir: str | None, seed: int, epochs: int | None,
                     out: str | None) -> None:
    """Train the feature net of DATASET (deterministic for a seed) and print its SHA-256."""
    from genlab.featurenet import save_feature_net, train_feature_net

    net, meta = train_feature_net(dataset, data_dir=data_dir, seed=seed, epochs=epochs)
    path = Path(out or f"{dataset}.safetensors")
    digest = save_feature_net(net, path, meta)
    click.echo(f"test accuracy {meta['test_accuracy']:.4f}; sha256 {digest}", err=True)
    click.echo(str(path))


@featurenet.command("list", epilog="Example:\n\n  genlab featurenet list")
def featurenet_list() -> None:
    """The shipped feature nets: what each was trained on and its test accuracy."""
    from genlab.featurenet import load_feature_net, shipped_names

    for name in shipped_names():
        net = load_feature_net(name)
        seen, test = net.meta["train_data"], net.meta["test_data"]
        click.echo(f"{name}: {net.config.channels}x{net.config.image_size}x"
                   f"{net.config.image_size}, {net.config.feature_dim}-d features, test accuracy "
                   f"{net.meta['test_accuracy']:.4f} on {test['split']}[{test['start']}:"
                   f"{test['stop']}], trained on {seen['split']}[{seen['start']}:{seen['stop']}], "
                   f"sha256 {net.sha256}")
