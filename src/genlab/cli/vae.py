"""`genlab reconstruct` and `genlab interpolate`: what a VAE's latent space does with real images."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from genlab.cli.app import cli
from genlab.errors import UserError
from genlab.limits import SEED

if TYPE_CHECKING:
    import torch

DEVICES = click.Choice(["auto", "cpu", "cuda", "mps"])


def _load_vae(run_dir: str, which: str, device: str) -> Any:
    from genlab.models.base import Encoder
    from genlab.rundir import load_model

    model = load_model(run_dir, which=which, device=device)
    if not isinstance(model, Encoder):
        raise UserError(f"{run_dir} holds a {model.name} model, which has no encoder; reconstruct "
                        "and interpolate need a VAE (vae, convvae)")
    return model


def _images(model: Any, run_dir: str, data: str | None, data_dir: str | None,
            split: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The split's uint8 images at the model's size, and labels when the model is conditional."""
    from genlab.data import load_images, resize_images
    from genlab.rundir import read_run

    if data is None:
        record = read_run(run_dir)
        data, data_dir = record["data"], data_dir or record.get("data_dir")
    loaded = load_images(data, split, data_dir)
    c, s = model.config.channels, model.config.image_size
    if loaded.images.shape[1] != c:
        raise UserError(f"{loaded.name} has {loaded.images.shape[1]} channels, the model was "
                        f"trained on {c}; pass --data with images like the training data")
    labels = None
    if model.config.num_classes:
        if loaded.labels is None:
            raise UserError(f"the model is conditional and {loaded.name} has no labels; pass "
                            "--data with labelled images")
        labels = loaded.labels
    return resize_images(loaded.images, s), labels


def _pick(n: int, available: int, seed: int) -> torch.Tensor:
    import torch

    if n > available:
        raise UserError(f"asked for {n} images but the split has {available}; lower --n/--pairs")
    return torch.randperm(available, generator=torch.Generator().manual_seed(seed))[:n]


def _on(labels: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return labels.to(device) if labels is not None else None


def _vae_options(fn: Any) -> Any:
    options = [
        click.option("--data", help="Dataset to take images from (default: the run's dataset)."),
        click.option("--data-dir", type=click.Path(file_okay=False),
                     help="Folder holding the dataset's files."),
        click.option("--split", default="test", show_default=True,
                     type=click.Choice(["test", "train"])),
        click.option("--seed", default=0, show_default=True, type=SEED,
                     help="Picks the images (and binarizes them for a stochastic Bernoulli VAE)."),
        click.option("--which", default="checkpoint", show_default=True,
                     type=click.Choice(["checkpoint", "best"])),
        click.option("--device", default="cpu", show_default=True, type=DEVICES),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.command(epilog="""\b
Example:
  genlab reconstruct runs/convvae --data fashion-mnist --n 16 --out recon.png
""")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--n", "n", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="A .png grid.")
@_vae_options
def reconstruct(run_dir: str, n: int, out: str, data: str | None, data_dir: str | None,
                split: str, seed: int, which: str, device: str) -> None:
    """Encode N images and decode them at the posterior mean: originals above, reconstructions
    below (in blocks of up to 8 columns)."""
    import torch

    from genlab.images import save_grid

    _check_png(out)
    model = _load_vae(run_dir, which, device)
    images, labels = _images(model, run_dir, data, data_dir, split)
    idx = _pick(n, images.shape[0], seed)
    originals, labels = images[idx], (labels[idx] if labels is not None else None)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    recon = model.reconstruct(originals, _on(labels, model.device), generator).cpu()
    cols = min(n, 8)
    rows = []
    for start in range(0, n, cols):  # a row of originals, then the row of their reconstructions
        rows += [_pad(originals[start:start + cols].float() / 255, cols),
                 _pad(recon[start:start + cols], cols)]
    click.echo(str(save_grid(torch.cat(rows), out, nrow=cols)))


@cli.command(epilog="""\b
Examples:
  genlab interpolate runs/convvae --steps 10 --out interp.png
  genlab interpolate runs/convvae --pairs 4 --mode lerp --out lerp.png
""")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=2),
              help="Decoded points per pair, from the first image's latent to the second's.")
@click.option("--pairs", default=8, show_default=True, type=click.IntRange(min=1),
              help="Pairs of images, one row each.")
@click.option("--mode", default="slerp", show_default=True, type=click.Choice(["slerp", "lerp"]))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="A .png grid.")
@_vae_options
def interpolate(run_dir: str, steps: int, pairs: int, mode: str, out: str, data: str | None,
                data_dir: str | None, split: str, seed: int, which: str, device: str) -> None:
    """Walk the latent space between pairs of images: each row is image A, the decoded path from
    A's posterior mean to B's, then image B. A conditional model pairs images of one class."""
    import torch

    from genlab.images import save_grid
    from genlab.models.vae import interpolate_latents

    _check_png(out)
    model = _load_vae(run_dir, which, device)
    images, labels = _images(model, run_dir, data, data_dir, split)
    first, second = _pairs(pairs, images.shape[0], labels, seed)
    y = _on(labels[first], model.device) if labels is not None else None
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with torch.no_grad():
        mu_a, _ = model.encode(model.inputs(images[first].to(model.device), generator), y)
        mu_b, _ = model.encode(model.inputs(images[second].to(model.device), generator), y)
        path = interpolate_latents(mu_a, mu_b, steps, mode)  # (pairs, steps, nz)
        y_path = y.repeat_interleave(steps) if y is not None else None
        decoded = model.decode(path.flatten(0, 1), y_path).cpu()
    decoded = decoded.view(pairs, steps, *decoded.shape[1:])
    grid = torch.cat([images[first, None].float() / 255, decoded,
                      images[second, None].float() / 255], dim=1)  # (pairs, steps + 2, C, H, W)
    click.echo(str(save_grid(grid.flatten(0, 1), out, nrow=steps + 2)))


def _pairs(pairs: int, available: int, labels: torch.Tensor | None,
           seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the first and second image of each pair; with labels, both of one class."""
    import torch

    if labels is None:
        chosen = _pick(2 * pairs, available, seed)
        return chosen[0::2], chosen[1::2]
    idx = _pick(available, available, seed)  # a seeded shuffle
    first, second = [], []
    for i in idx.tolist():
        if len(first) == pairs:
            break
        same = idx[(labels[idx] == labels[i]) & (idx != i)]
        if len(same):
            first.append(i)
            second.append(int(same[0]))
    if len(first) < pairs:
        raise UserError(f"found only {len(first)} pairs of same-class images; lower --pairs")
    return torch.tensor(first), torch.tensor(second)


def _pad(images: torch.Tensor, cols: int) -> torch.Tensor:
    """Fill a short last row with white, so originals and reconstructions stay aligned."""
    import torch

    missing = cols - images.shape[0]
    return torch.cat([images, images.new_ones(missing, *images.shape[1:])]) if missing else images


def _check_png(out: str) -> None:
    if not out.lower().endswith(".png"):
        raise UserError(f"--out must be a .png file, got {out!r}")
