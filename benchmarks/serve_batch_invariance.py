"""Is a batched forward pass bit-identical to a single one on this machine? The measurement behind
`GenerativeModel.sample_pass_rows` (the server's micro-batches; docs/serving.md).

For each image family (random weights: bits, not quality, are compared) and torch thread count:

- `rows_differing_from_alone`: of the first B rows of a batch of B latents, how many differ in any
  float bit from the same latent run alone (batch 1), and `images_differing_from_alone` how many
  differ after the uint8 conversion the server sends (`of_1024_images_bytes_differing_at_batch_64`
  the same over 1024 images);
- at the fixed pass size P that `sample_many` uses: rows whose bits change when the rows of the
  pass are shuffled (`moved_rows_differing`) or when the other rows are replaced
  (`rows_differing_with_other_mates`), over `--trials` random passes;
- `threads_change_bits`: whether the same pass of P rows gives other bits with another thread
  count (so the same bytes need the same thread count too).

    .venv/bin/python benchmarks/serve_batch_invariance.py [--trials 20] [--threads 1 2] [--run RUN ...]

Prints one JSON line per model and thread count.
"""

from __future__ import annotations

import argparse
import json

import torch

from genlab.images import to_uint8
from genlab.models import get_model_class
from genlab.models.base import GenerativeModel
from genlab.models.gan import GAN
from genlab.rundir import load_model

FAMILIES = {  # name: (family, config) at the sizes genlab trains them
    "dcgan-28": ("dcgan", {"channels": 1, "image_size": 28}),
    "dcgan-64": ("dcgan", {"channels": 3, "image_size": 64}),
    "gan-28": ("gan", {"channels": 1, "image_size": 28}),
    "vae-28": ("vae", {"channels": 1, "image_size": 28}),
    "convvae-28": ("convvae", {"channels": 1, "image_size": 28}),
}


def forward(model: GenerativeModel, z: torch.Tensor) -> torch.Tensor:
    """The network that turns latents into images, as `sample_many` runs it."""
    y = torch.zeros(z.shape[0], dtype=torch.long) if model.num_classes else None
    with torch.no_grad():
        if isinstance(model, GAN):
            net = model.generator_ema if model.generator_ema is not None else model.generator
            return net.eval()(z, y).float().add(1).mul(0.5).clamp(0, 1)
        return model.decode(z, y)


def differing_rows(a: torch.Tensor, b: torch.Tensor) -> int:
    return int((a != b).flatten(1).any(1).sum())


def measure(name: str, model: GenerativeModel, threads: int, trials: int) -> dict:
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    nz, rows = model.config.nz, model.sample_pass_rows
    z = torch.randn(64, nz, generator=g)
    alone = torch.cat([forward(model, z[i:i + 1]) for i in range(64)])
    out: dict = {"model": name, "threads": threads, "pass_rows": rows,
                 "rows_differing_from_alone": {}, "images_differing_from_alone": {}}
    for b in (2, 8, 16, 32, 64):
        batch = forward(model, z[:b])
        out["rows_differing_from_alone"][b] = differing_rows(batch, alone[:b])
        out["images_differing_from_alone"][b] = differing_rows(to_uint8(batch),
                                                               to_uint8(alone[:b]))
    out["max_abs_difference_from_alone"] = float((forward(model, z) - alone).abs().max())
    # bytes: a float difference of ~1e-7 flips a uint8 only near a rounding edge, so count over
    # more images: 1024 latents in batches of 64 against each alone
    many = torch.randn(1024, nz, generator=g)
    batched = torch.cat([forward(model, part) for part in many.split(64)])
    single = torch.cat([forward(model, many[i:i + 1]) for i in range(many.shape[0])])
    out["of_1024_images_bytes_differing_at_batch_64"] = differing_rows(to_uint8(batched),
                                                                       to_uint8(single))
    moved = mates = 0
    for _ in range(trials):
        zp = torch.randn(rows, nz, generator=g)
        full = forward(model, zp)
        perm = torch.randperm(rows, generator=g)
        moved += differing_rows(forward(model, zp[perm]), full[perm])
        other = zp.clone()
        other[rows // 2:] = torch.randn(rows - rows // 2, nz, generator=g)
        mates += differing_rows(forward(model, other)[:rows // 2], full[:rows // 2])
    out.update(trials=trials, moved_rows_differing=moved, rows_differing_with_other_mates=mates)
    zp = torch.randn(rows, nz, generator=g)
    results = []
    for t in sorted({1, 2, threads}):
        torch.set_num_threads(t)
        results.append(forward(model, zp))
    torch.set_num_threads(threads)
    out["threads_change_bits"] = any(not torch.equal(results[0], r) for r in results[1:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--run", nargs="*", default=[], help="trained runs to measure too")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES),
                        help="the random-weight families to measure")
    args = parser.parse_args()
    models = {}
    for name in args.families:
        family, config = FAMILIES[name]
        cls = get_model_class(family)
        torch.manual_seed(0)
        models[name] = cls(cls.config_class(**config)).eval()
    for run in args.run:
        models[run] = load_model(run, device="cpu")
    for name, model in models.items():
        for threads in args.threads:
            print(json.dumps(measure(name, model, threads, args.trials)), flush=True)


if __name__ == "__main__":
    main()
