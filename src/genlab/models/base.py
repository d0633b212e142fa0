"""The one small contract every genlab model follows (see docs/architecture.md).

- `Model(config)` builds layers and nothing else.
- `model.loss(batch) -> dict[str, Tensor]` always holds `"loss"`; other keys are logged.
- `model.configure_optimizers(train_config) -> dict[str, Optimizer]`.
- `model.train_step(batch, optimizers) -> dict[str, Tensor]`: one optimisation step. Values are
  detached scalars left on the device, so the trainer syncs only when it logs.
- `model.sample(n, *, generator=None, **kw)`: images `(N, C, H, W)` in `[0, 1]`, or token ids.
- `model.sample_many(calls)`: several `sample` calls at once (the server's micro-batches); the
  default makes them one by one, image families share their forward passes.

A batch is a dict: image models get `{"images": uint8 (B, C, H, W), "labels": int64 (B,)}` (labels
only when the data has them) and convert to their own value range; text models get `{"tokens": ...}`.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from genlab.config import TrainConfig
from genlab.errors import UserError


@dataclass
class SampleCall:
    """One caller's share of `sample_many`: the arguments of `sample(n, generator=..., **options)`."""

    n: int
    generator: torch.Generator | None = None
    options: dict[str, Any] = field(default_factory=dict)


class GenerativeModel(nn.Module):
    name: ClassVar[str]
    description: ClassVar[str]
    config_class: ClassVar[type]
    modality: ClassVar[str] = "image"  # a key of genlab.modalities.MODALITIES
    default_preset: ClassVar[str | None] = None  # preset applied when the user names none
    # the family has a class-conditional variant (`--conditional`): its config has `num_classes`
    supports_conditional: ClassVar[bool] = False
    # config overrides that make the model tiny: the contract battery (tests/test_contract.py)
    # builds every registered model with them, so a new model edits no test table
    tiny_config: ClassVar[dict[str, Any]] = {}
    # keyword options of `sample` beyond n / generator / labels / the text options, with their
    # defaults (a diffusion model's sampler and step count); the generation API passes them on
    sample_options: ClassVar[dict[str, Any]] = {}
    # logged values shown on the progress line (all of them go to metrics.jsonl)
    progress_keys: ClassVar[tuple[str, ...]] = ("loss",)
    # rows in every forward pass of a family's own `sample_many` (the last pass is padded): a
    # kernel may round differently at another batch size, so a fixed pass size is what keeps an
    # image independent of the calls it shares a pass with (benchmarks/serve_batch_invariance.py)
    sample_pass_rows: ClassVar[int] = 32

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config
        self._amp_device: str | None = None  # set by `set_precision`
        self.checkpoint_step: int | None = None  # the step of the checkpoint it was loaded from

    @property
    def num_classes(self) -> int:
        """Classes the model is conditioned on; 0 for an unconditional model."""
        return int(getattr(self.config, "num_classes", 0) or 0) if self.supports_conditional else 0

    # --- configuration -----------------------------------------------------------------------

    @classmethod
    def config_for_data(cls, config: Any, data: Any, *, conditional: bool) -> Any:
        """Fill the config fields that come from the data (shape, classes). Called before building."""
        return config

    @classmethod
    def validate_train_config(cls, config: Any, train: TrainConfig) -> None:
        """Cross-checks between a config of this model and the training config, before any data
        is read; raise `UserError`."""

    # --- precision -----------------------------------------------------------------------------

    def set_precision(self, precision: str, device_type: str) -> None:
        self._amp_device = device_type if precision == "bf16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast for forward passes when the run asked for it; backward runs outside."""
        if self._amp_device is None:
            return contextlib.nullcontext()
        return torch.autocast(self._amp_device, dtype=torch.bfloat16)

    def compile_networks(self, mode: str = "default") -> None:
        """`torch.compile` each network in place (state-dict keys stay the same)."""
        for module in self.children():
            module.compile(mode=mode)

    # --- training ------------------------------------------------------------------------------

    def loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError  # every model defines its loss

    def configure_optimizers(self, train: TrainConfig) -> dict[str, torch.optim.Optimizer]:
        return {"main": make_optimizer(self.parameters(), train)}

    def train_step(
        self, batch: dict[str, torch.Tensor], optimizers: dict[str, torch.optim.Optimizer],
        *, grad_accum: int = 1, grad_clip: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Backward over `grad_accum` micro-batches, optional clipping, one optimizer step."""
        (optimizer,) = optimizers.values()
        totals: dict[str, torch.Tensor] = {}
        chunks = [dict(zip(batch, vals)) for vals in zip(*(v.chunk(grad_accum) for v in
                                                          batch.values()))]
        for chunk in chunks:
            with self.autocast():
                out = self.loss(chunk)
            (out["loss"] / len(chunks)).backward()
            for key, value in out.items():
                value = value.detach().float() / len(chunks)
                totals[key] = totals[key] + value if key in totals else value
        if grad_clip > 0:
            totals["grad_norm"] = nn.utils.clip_grad_norm_(self.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return totals

    # --- generation ----------------------------------------------------------------------------

    def sample(self, n: int, *, generator: torch.Generator | None = None, **kw: Any) -> torch.Tensor:
        raise NotImplementedError  # every model defines how it samples

    def sample_many(self, calls: Sequence[SampleCall]) -> list[torch.Tensor]:
        """The samples of several calls, one tensor per call: what `sample(c.n, generator=c.generator,
        **c.options)` gives for each. This default makes the calls one after the other. A family
        that can share forward passes overrides it (the GAN and VAE families): each call's
        randomness still comes from its own generator, drawn as `sample` draws it, and every
        pass has `sample_pass_rows` rows, so a call's output depends on nothing but the call.
        The generation API (`genlab sample`, the training grids, the server) samples through
        this method, so all of them give the same bytes."""
        return [self.sample(c.n, generator=c.generator, **c.options) for c in calls]

    def checkpoint_extras(self) -> dict[str, Any]:
        """JSON-serialisable state beside the weights (a tokenizer, say)."""
        return {}

    def load_checkpoint_extras(self, extras: dict[str, Any]) -> None:
        pass

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


# --- capabilities a model may declare ------------------------------------------------------------
#
# A family that can do more than train and sample says so by inheriting one of these; callers test
# `isinstance(model, Likelihood)`, never `hasattr`. Each lists the methods it promises, as abstract
# methods: a class that declares a capability and lacks one of them cannot be instantiated.


class Likelihood(abc.ABC):
    """The model gives a (bound on the) log-likelihood of real images.

    - `likelihood_report(images, *, labels=None, iwae_k=100, generator=None, batch_size=500)`
      on uint8 `(N, C, H, W)` images -> a dict with `neg_elbo_nats`, `neg_elbo_bpd`,
      `iwae_nll_nats`, `iwae_nll_bpd` (bpd keys None when the likelihood is not over 8-bit
      pixels), `iwae_k`, `n_test`, `likelihood` (its name). Averages over the images.
    - `example_nll(images, *, labels=None, generator=None) -> Tensor (N,)`: the negative ELBO (or
      bound) of each image in nats, for membership-inference attacks.
    """

    @abc.abstractmethod
    def likelihood_report(self, images: torch.Tensor, *, labels: torch.Tensor | None = None,
                          iwae_k: int = 100, generator: torch.Generator | None = None,
                          batch_size: int = 500) -> dict[str, Any]:
        ...

    @abc.abstractmethod
    def example_nll(self, images: torch.Tensor, *, labels: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        ...

    def _check_images(self, images: torch.Tensor) -> None:
        """uint8 images at the model's `config.channels` and `config.image_size`, or one line."""
        c, s = self.config.channels, self.config.image_size  # type: ignore[attr-defined]
        if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (c, s, s):
            raise UserError(f"expected uint8 images of shape (N, {c}, {s}, {s}), got "
                            f"{images.dtype} {tuple(images.shape)}; resize them to the model's "
                            "size with genlab.data.resize_images")


class Encoder(abc.ABC):
    """The model maps images to latents and back (`genlab reconstruct`, `genlab interpolate`).

    - `inputs(images uint8, generator=None) -> Tensor`: the data the model explains, in [0, 1].
    - `encode(x, labels=None) -> (mu, log_var)`, each `(B, nz)`.
    - `decode(z, labels=None) -> images (B, C, H, W)` in [0, 1].
    - `reconstruct(images uint8, labels=None, generator=None) -> images` in [0, 1].
    """

    @abc.abstractmethod
    def inputs(self, images: torch.Tensor,
               generator: torch.Generator | None = None) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def encode(self, x: torch.Tensor,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        ...

    @abc.abstractmethod
    def decode(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def reconstruct(self, images: torch.Tensor, labels: torch.Tensor | None = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        ...


class Discriminator(abc.ABC):
    """The model has a trained critic of real vs generated images (a GAN).

    - `discriminator_score(images uint8 (N, C, H, W), labels=None) -> Tensor (N,)`: the critic's
      logit per image, higher = judged more real; for membership-inference attacks.
    """

    @abc.abstractmethod
    def discriminator_score(self, images: torch.Tensor,
                            labels: torch.Tensor | None = None) -> torch.Tensor:
        ...


class FitsData(abc.ABC):
    """The model reads its whole training set once, before the first step, as one statistic,
    and then trains on that statistic alone, never on batches (a mean-embedding generator).

    - `data_statistic(images uint8 (N, C, H, W), labels (N,) or None) -> Tensor`: a SUM over
      the examples of a per-example term whose L2 norm is at most `data_sensitivity`, so adding
      or removing one example moves it by at most that much (what `--dp`'s one Gaussian release
      needs, `genlab.privacy_dp.PrivateRelease`).
    - `fit_data(statistic, n)`: keep the (possibly noised) statistic of the `n` examples; it is
      saved with the weights, so a resumed run neither reads the data for it nor redraws noise.

    `genlab.runs` calls both for a new run and then trains with a batcher that holds no data."""

    data_sensitivity: ClassVar[float] = 1.0

    @abc.abstractmethod
    def data_statistic(self, images: torch.Tensor,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
        ...

    @abc.abstractmethod
    def fit_data(self, statistic: torch.Tensor, n: int) -> None:
        ...


def make_optimizer(params: Any, train: TrainConfig, **overrides: Any) -> torch.optim.Optimizer:
    """Adam or AdamW from the train config. AdamW decays only matrices (not biases, norms)."""
    params = [p for p in params if p.requires_grad]
    lr = overrides.get("lr", train.lr)
    betas = overrides.get("betas", (train.beta1, train.beta2))
    # fused: one pass over each tensor instead of foreach's ~10. A large win on CUDA, and on CPU
    # too: an Adam step over dcgan64's 6.3M parameters took 5.3 ms against 13.9 ms (2 threads)
    fused = bool(params) and params[0].device.type in ("cuda", "cpu")
    if train.optimizer == "adamw":
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": train.weight_decay},
                  {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused or None)
    raise UserError(f"unknown optimizer {train.optimizer!r}; allowed: adam, adamw")


def images_to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]."""
    return images.float().div_(255.0)


def unit_to_signed(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1], the range of a tanh generator."""
    return x.mul(2.0).sub_(1.0)


# --- shared by the image models ---------------------------------------------------------------------

def image_config_for_data(model_name: str, config: Any, data: Any, *, conditional: bool) -> Any:
    """Copy of an image model's config with `channels`, `image_size` (the data's side unless the
    config names one; the data is then resized once at load) and, for `--conditional`,
    `num_classes` filled from the data."""
    c, h, w = data.images.shape[1:]
    if h != w:
        raise UserError(f"{model_name} needs square images, the data has {h}x{w}")
    changes = {"channels": c, "image_size": config.image_size or h}
    if conditional:
        if not data.num_classes:
            raise UserError(f"--conditional needs labels, and {data.name} has none")
        changes["num_classes"] = data.num_classes
    elif config.num_classes:  # a count that disagrees with the labels would index out of range
        raise UserError(f"model.num_classes comes from the data's labels; pass --conditional "
                        f"instead of --set model.num_classes={config.num_classes}")
    return type(config)(**{**config.__dict__, **changes})


def forward_in_passes(forward: Callable[..., torch.Tensor], rows: int,
                      *inputs: torch.Tensor | None) -> torch.Tensor:
    """`forward(*inputs)` over the rows of `inputs` (tensors of equal length, or None) in passes
    of exactly `rows` rows: the last pass is padded with zero rows, whose outputs are dropped.
    With every pass the same size, the result of a row does not depend on how many rows there
    are or what the other rows hold (tested for the GAN and VAE families; a pass of another
    size may round differently)."""
    total = next(x for x in inputs if x is not None).shape[0]
    out = []
    for start in range(0, total, rows):
        m = min(rows, total - start)
        chunk = [None if x is None else
                 torch.cat([x[start:start + m], x.new_zeros(rows - m, *x.shape[1:])])
                 for x in inputs]
        out.append(forward(*chunk)[:m])
    return torch.cat(out)


def generator_calls(calls: Sequence[SampleCall],
                    draw: Callable[[SampleCall], tuple[nn.Module, torch.Tensor,
                                                       torch.Tensor | None]],
                    rows: int) -> list[torch.Tensor]:
    """A GAN generator's outputs for several calls at once: `draw(call)` gives the network (the
    EMA or the raw generator), the noise and the labels of one call, drawn from the call's own
    generator; each network then runs over all its calls' rows together, in eval mode and in
    passes of `rows` (`forward_in_passes`), so a call's samples do not depend on its neighbours."""
    nets, latents, labels = [], [], []
    for call in calls:
        net, z, y = draw(call)
        nets.append(net)
        latents.append(z)
        labels.append(y)
    out: list[torch.Tensor | None] = [None] * len(calls)
    for net in dict.fromkeys(nets):  # the EMA and the raw generator, each over its calls
        mine = [i for i, other in enumerate(nets) if other is net]
        z = torch.cat([latents[i] for i in mine])
        y = None if labels[mine[0]] is None else torch.cat([labels[i] for i in mine])
        was_training = net.training
        net.eval()
        rows_out = forward_in_passes(lambda z, y, net=net: net(z, y).float(), rows, z, y)
        net.train(was_training)
        for i, part in zip(mine, rows_out.split([calls[i].n for i in mine])):
            out[i] = part
    return out  # type: ignore[return-value]


def class_labels(n: int, labels: torch.Tensor | int | None, num_classes: int,
                 generator: torch.Generator | None, device: torch.device) -> torch.Tensor | None:
    """The `n` class indices a conditional model samples: `labels` (one index or `n` of them),
    checked, or random classes when None. None for an unconditional model."""
    if not num_classes:
        if labels is not None:
            raise UserError("--label needs a conditional model (train with --conditional)")
        return None
    if labels is None:
        return torch.randint(0, num_classes, (n,), device=device, generator=generator)
    labels = torch.as_tensor(labels, device=device, dtype=torch.long)
    if labels.dim() == 0:
        labels = labels.expand(n)
    if labels.numel() != n or labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"labels must be {n} class indices in [0, {num_classes - 1}]")
    return labels
