"""Differentially private training (`genlab train ... --dp`), with Opacus's per-sample gradients
and accountants.

DP-SGD (Abadi et al. 2016, https://arxiv.org/abs/1607.00133): each step takes a Poisson sample of
the training set (every example in independently with probability q = batch_size / n), computes
each sampled example's gradient, clips it to L2 norm `dp_clip_norm` = C, sums, adds N(0, s^2 C^2)
noise (s = the noise multiplier) and divides by the expected batch size q n. The accountant (RDP,
Mironov et al. 2019, https://arxiv.org/abs/1908.10530, or PRV, Gopi et al. 2021,
https://arxiv.org/abs/2106.02848) turns (s, q, steps) into the epsilon spent at `dp_delta`.

Which parameters are private, per family (`private_network`):

- VAE: the whole model reads the data, so every parameter gets the clipped, noised gradient. The
  optimizer is wrapped (`_PrivateOptimizer`): the family's own `train_step` runs unchanged and
  the gradients are made private just before `optimizer.step()`.
- GAN: only the discriminator reads real data. `GAN.train_step` calls
  `discriminator_backward` for its D step: the real examples' loss terms get per-sample
  gradients, clipped and noised; the fake examples' terms get per-sample gradients clipped to
  the same bound (so the two halves of the loss keep their balance) with no noise, added after
  the noise. The fakes are not charged, and need not be: they are a function of the generator,
  the noise z and random labels, none of which has seen a real example except through earlier
  private D updates, so their term is post-processing of private outputs. (Clipping the fakes
  in one batch with the reals, as Opacus's DCGAN example does, charges the budget for them and
  shrinks the real examples' share of each clip.) The generator learns only from the private
  discriminator's outputs on fakes, so it is private by post-processing. Under DP a
  conditional generator's labels are drawn uniformly at random, never taken from the real batch,
  and the fake batch has the fixed expected size, never the sampled batch's size.

- Release (merf, any `models.base.FitsData` family): the model reads the data once, as one
  statistic that is a sum of per-example terms of L2 norm at most its `data_sensitivity` (merf:
  random Fourier features times a one-hot label, norm exactly 1). `PrivateRelease.release` adds
  N(0, s^2 sensitivity^2) to every entry once, before training, and the generator then trains on
  that release alone: post-processing. For the accountant that is one full-batch DP-SGD step
  with clip norm = the sensitivity: history [(s, 1.0, 1)], s chosen for `dp_epsilon` at sample
  rate 1 and 1 step. No Poisson sampling, no per-sample gradients; the epsilon is constant from
  the first step on. `train.dp_clip_norm` does not apply (the bound is the family's own).

Each discriminator step is one Poisson-sampled Gaussian mechanism, so `model.d_steps` must be 1
(each D step a fresh sample) and one accountant step is taken per training step. WGAN-GP is
refused: its gradient penalty reads real examples (interpolates) outside the per-sample clip.
Batch norm mixes examples in a batch, so per-sample gradients would not bound one example's
influence: a GAN's discriminator batch norm becomes group norm (`model.d_norm=layer`) and the run
log says so.

Not covered by the guarantee: the loss values logged in metrics.jsonl and the progress line (the
discriminator's scores on real data, a VAE's ELBO), and in-training evaluations
(`train.eval_every`): diagnostics computed on the private data. Share the weights, not the log.
The noise comes from a seeded PRNG (torch's Philox/MT streams), so runs are reproducible; that is
not a cryptographically secure source (Opacus's `secure_mode` is).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from genlab.errors import UserError
from genlab.limits import derive_seed
from genlab.log import get_logger

log = get_logger(__name__)

ACCOUNTANTS = ("rdp", "prv")
_NOISE_STREAM = 0x5EED_D1FF  # salts, so Poisson and noise draws are streams of their own
_SAMPLE_STREAM = 0x5A3D_1E5


# --- checks before any data is read ----------------------------------------------------------------

def check_train_config(train: Any) -> None:
    """Cross-field rules of the `train.dp*` settings (ranges are in config.TRAIN_RANGES;
    `check_model` calls this: config.py stays free of imports from here)."""
    if not train.dp:
        return
    if train.dp_accountant not in ACCOUNTANTS:
        raise UserError(f"train.dp_accountant must be one of {', '.join(ACCOUNTANTS)}, got "
                        f"{train.dp_accountant!r}")
    if (train.dp_epsilon > 0) == (train.dp_noise_multiplier > 0):
        raise UserError("--dp needs a target train.dp_epsilon=E (the noise is chosen to spend E "
                        "by the last step) or train.dp_noise_multiplier=S, one of them, not both")
    if train.grad_accum != 1:
        raise UserError("--dp clips each example's gradient itself: train.grad_accum must be 1")
    if train.compile:
        raise UserError("--dp computes per-sample gradients with hooks that torch.compile does "
                        "not keep; drop --compile")
    if train.precision == "bf16":
        raise UserError("--dp runs in fp32 (per-sample gradients and their norms in bf16 would "
                        "blur the clip bound); use --precision fp32")


def check_model(model_cls: type, model_config: Any, train: Any) -> None:
    """The family and config can be trained privately (called before any data is read)."""
    if not train.dp:
        return
    import importlib.util

    if importlib.util.find_spec("opacus") is None:
        raise UserError("--dp needs Opacus: pip install 'genlab[dp]' (or pip install opacus)")
    family = private_family(model_cls)
    if family is None:
        raise UserError(f"--dp supports the gan, dcgan, vae and convvae models (per-example "
                        f"gradients) and merf (one release), not {model_cls.name}")
    check_train_config(train)
    if family == "release" and train.dp_clip_norm != 1.0:
        raise UserError(f"{model_cls.name} bounds each example's contribution itself (L2 norm "
                        f"{model_cls.data_sensitivity:g}, no clipping): train.dp_clip_norm does "
                        "not apply; leave it at 1")
    if family == "gan":
        if model_config.loss == "wgan-gp":
            raise UserError("--dp cannot train model.loss=wgan-gp: its gradient penalty reads "
                            "real examples (interpolates) outside the per-example clip, so the "
                            "guarantee would not hold; use model.loss=ns or hinge")
        if model_config.d_steps != 1:
            raise UserError("--dp needs model.d_steps=1: each discriminator step takes its own "
                            "Poisson sample and is accounted once")


# what a (epsilon, delta) guarantee covers, by `private_family` (the report card says it)
WHAT_IS_PRIVATE = {
    "gan": "the discriminator trained privately, the generator by post-processing",
    "vae": "the whole model trained privately",
    "release": "one noised release of a statistic of the data, the generator trained on it "
               "alone by post-processing",
}


def private_family(model_cls: type) -> str | None:
    """'gan' (only the discriminator is private), 'vae' (the whole model), 'release' (one
    noised statistic of the data, `FitsData`), or None."""
    from genlab.models.base import FitsData
    from genlab.models.gan import GAN
    from genlab.models.vae import VAE

    if issubclass(model_cls, FitsData):
        return "release"
    if issubclass(model_cls, GAN):
        return "gan"
    if issubclass(model_cls, VAE):
        return "vae"
    return None


def private_config(model_cls: type, model_config: Any, train: Any) -> Any:
    """The model config a private run builds: a GAN discriminator's batch norm -> group norm."""
    if not train.dp or private_family(model_cls) != "gan":
        return model_config
    with torch.random.fork_rng(devices=[]):  # a probe: the run's random streams stay as they are
        # build_networks uses only its config (the families' networks are built from it alone)
        _, probe = model_cls.build_networks(None, model_config)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in probe.modules()):
        log.info("--dp: the discriminator's batch norm is replaced by group norm "
                 "(model.d_norm=layer, GroupNorm with one group): batch norm mixes the examples "
                 "of a batch, so a per-example gradient would not bound one example's influence")
        return type(model_config)(**{**model_config.__dict__, "d_norm": "layer"})
    return model_config


def check_delta(delta: float, n: int) -> None:
    if delta > 1.0 / (10 * n):
        raise UserError(f"train.dp_delta={delta:g} is larger than 1/(10 n) = {1 / (10 * n):.3g} "
                        f"for the {n} training examples: delta is the chance the guarantee "
                        "fails, and near 1/n it allows leaking one whole example; lower it, "
                        f"e.g. --set train.dp_delta={10 ** math.floor(math.log10(0.1 / n)):g}")


# --- the accountant --------------------------------------------------------------------------------

def make_accountant(name: str, history: Iterable[Iterable[float]] = ()) -> Any:
    """An Opacus accountant ('rdp' or 'prv') holding `history`: [(noise, sample_rate, steps)]."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    accountant = {"rdp": RDPAccountant, "prv": PRVAccountant}[name]()
    accountant.history = [(float(s), float(q), int(k)) for s, q, k in history]
    return accountant


def epsilon_of(accountant: Any, delta: float) -> float:
    """Epsilon spent at `delta`, with Opacus's own defaults (its RDP orders up to 63: at low
    noise the best order is the largest and the bound stays valid, only less tight)."""
    if not accountant.history:
        return 0.0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(accountant.get_epsilon(delta=delta))


@contextlib.contextmanager
def _quiet_hooks() -> Iterator[None]:
    """The first layer's input (the images) needs no gradient; torch warns about that for the
    hooks' backward each step, and nothing is wrong."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def noise_for_epsilon(epsilon: float, delta: float, sample_rate: float, steps: int,
                      accountant: str) -> float:
    """The noise multiplier that spends `epsilon` at `delta` in `steps` steps (Opacus's search)."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():  # the search tries tiny noise, whose best order is the last
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps,
                                              accountant=accountant, epsilon_tolerance=0.01))
    except ValueError as e:  # the search gives up above its largest noise
        raise UserError(f"train.dp_epsilon={epsilon:g} cannot be reached in {steps} steps at "
                        f"sample rate {sample_rate:.3g} ({e}); raise epsilon or train for fewer "
                        "steps") from None


# --- Poisson sampling ------------------------------------------------------------------------------

class PoissonBatcher:
    """Poisson samples from an in-memory image batcher's tensors: at step s every example is in
    the batch independently with probability `sample_rate`, drawn from a generator seeded by
    (seed, s), so a resumed run sees the same batches. Batch sizes vary (possibly 0)."""

    def __init__(self, images: Tensor, labels: Tensor | None, sample_rate: float,
                 seed: int) -> None:
        self.images, self.labels = images, labels
        self.sample_rate, self.seed = sample_rate, seed
        self.steps_per_epoch = max(1, round(1.0 / sample_rate))

    def batch(self, step: int) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(derive_seed(self.seed ^ _SAMPLE_STREAM, step))
        chosen = torch.rand(self.images.shape[0], generator=g) < self.sample_rate
        idx = chosen.nonzero().flatten().to(self.images.device)
        out = {"images": self.images[idx]}
        if self.labels is not None:
            out["labels"] = self.labels[idx]
        return out


# --- clipping and noise ----------------------------------------------------------------------------

def per_sample_grads(params: list[nn.Parameter], batch: int) -> list[Tensor]:
    """Each parameter's `(B, *shape)` per-sample gradient from Opacus's hooks (zeros for a
    parameter the batch did not reach); the hooks' attributes are cleared."""
    out = []
    for p in params:
        g = getattr(p, "grad_sample", None)
        if isinstance(g, list):  # several forward passes of one module: their sum
            g = torch.stack(g).sum(0)
        out.append(torch.zeros(batch, *p.shape, device=p.device) if g is None else g[:batch])
        p.grad_sample = None
    return out


def clip_factors(grads: list[Tensor], clip_norm: float) -> tuple[Tensor, Tensor]:
    """Per example `(B,)`: the factor that scales its gradient (all parameters together) to L2
    norm at most `clip_norm`, and the norm before clipping. As Opacus: min(1, C / (norm + 1e-6))."""
    norms = torch.stack([g.flatten(1).norm(2, dim=1) for g in grads], 1).norm(2, dim=1)
    return (clip_norm / (norms + 1e-6)).clamp(max=1.0), norms


def clip_and_sum(grads: list[Tensor], clip_norm: float) -> tuple[list[Tensor], Tensor]:
    """The sum over the batch of the clipped per-example gradients, and the norms before."""
    factor, norms = clip_factors(grads, clip_norm)
    return [torch.einsum("b,b...->...", factor, g) for g in grads], norms


def private_network(model: nn.Module) -> nn.Module:
    """The network that reads the training data: a GAN's discriminator, else the whole model."""
    return model.discriminator if private_family(type(model)) == "gan" else model


def prepare_network(network: nn.Module) -> None:
    """Make `network` safe for Opacus's hooks, in place, with the same values. Call it before
    optimizers are made (`runs` does; `PrivateTraining` again, a no-op then).

    - NCHW weights: Opacus 1.6's conv per-sample gradient is wrong for channels_last weights
      with more than one input channel (tests/test_dp.py compares it with one backward per
      example; the DCGAN's second conv was off by 100%).
    - No in-place activations: they would overwrite the output the hooks hand to autograd."""
    network.to(memory_format=torch.contiguous_format)
    for m in network.modules():
        if getattr(m, "inplace", False):
            m.inplace = False


class PrivateTraining:
    """The privacy state of a run: which parameters are private, the noise, the accountant.

    `attach` builds it for a run; tests build it directly. `history` is the accountant's state
    [(noise_multiplier, sample_rate, steps)], saved in checkpoint/state.json."""

    def __init__(self, model: nn.Module, *, noise_multiplier: float, clip_norm: float,
                 sample_rate: float, expected_batch: int, delta: float, seed: int,
                 accountant: str = "rdp", history: Iterable[Iterable[float]] = (),
                 steps_done: int = 0) -> None:
        from opacus.grad_sample import GradSampleHooks

        self.model = model
        self.family = private_family(type(model))
        self.network = private_network(model)
        prepare_network(self.network)
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        mixing = [name for name, m in self.network.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if mixing:  # its batch statistics mix examples: no per-example gradient exists
            raise UserError(f"--dp cannot train a network with batch norm ({mixing[0]}); use "
                            "group or layer norm")
        # GAN: the real terms are summed per example; VAE: the family's mean loss (Opacus
        # rescales its per-sample gradients by the batch size)
        self.hooks = GradSampleHooks(self.network, batch_first=True,
                                     loss_reduction="sum" if self.family == "gan" else "mean")
        self.hooks.disable_hooks()  # on only for the forward and backward of real examples
        self.noise_multiplier, self.clip_norm = noise_multiplier, clip_norm
        self.sample_rate, self.expected_batch = sample_rate, expected_batch
        self.delta, self.seed, self.accountant_name = delta, seed, accountant
        self.accountant = make_accountant(accountant, history)
        self.steps_done = steps_done
        self.last_norms: Tensor | None = None  # per-example norms before clipping, for tests
        self._last_out: dict[str, Tensor] = {}

    # --- the mechanism ---------------------------------------------------------------------------

    def _noised(self, summed: list[Tensor]) -> list[Tensor]:
        """(sum of clipped gradients + N(0, (s C)^2)) / expected batch; one accountant step."""
        device = summed[0].device
        g = torch.Generator(device=device).manual_seed(
            derive_seed(self.seed ^ _NOISE_STREAM, self.steps_done))
        std = self.noise_multiplier * self.clip_norm
        out = [(s + torch.randn(s.shape, device=device, generator=g) * std) / self.expected_batch
               for s in summed]
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.steps_done += 1
        return out

    def private_grads(self, batch: int) -> list[Tensor]:
        """The private gradient of `self.params` from the hooks' per-sample gradients of the
        `batch` real examples just back-propagated (batch 0: noise alone)."""
        if batch:
            summed, self.last_norms = clip_and_sum(per_sample_grads(self.params, batch),
                                                   self.clip_norm)
        else:
            summed = [torch.zeros_like(p) for p in self.params]
        return self._noised(summed)

    def clipped_sum(self, loss_fn: Callable[[], Tensor], batch: int) -> list[Tensor]:
        """Forward and backward `loss_fn()` (a sum of per-example losses) with the per-sample
        hooks on -> the sum of the examples' gradients, each clipped to `clip_norm`. `.grad` of
        the private parameters is left None."""
        for p in self.params:
            p.grad, p.grad_sample = None, None
        if not batch:
            return [torch.zeros_like(p) for p in self.params]
        self.hooks.enable_hooks()
        try:
            with _quiet_hooks():
                loss_fn().backward()
        finally:
            self.hooks.disable_hooks()
            _drop_activations(self.network)
        summed, self.last_norms = clip_and_sum(per_sample_grads(self.params, batch),
                                               self.clip_norm)
        for p in self.params:
            p.grad = None
        return summed

    def real_backward(self, loss_fn: Callable[[], Tensor], batch: int) -> list[Tensor]:
        """The private gradient of `loss_fn()`, the real examples' summed loss: clipped per
        example, noised, over the expected batch size; one accountant step."""
        return self._noised(self.clipped_sum(loss_fn, batch))

    # --- the GAN's discriminator step --------------------------------------------------------------

    def fake_labels(self, n: int, num_classes: int, device: torch.device) -> Tensor | None:
        """A conditional generator's labels under DP: uniform, independent of the real batch."""
        if not num_classes:
            return None
        return torch.randint(0, num_classes, (n,), device=device)

    def discriminator_backward(self, discriminator: nn.Module, real: Tensor,
                               labels: Tensor | None, fake: Tensor, fake_labels: Tensor | None,
                               loss: str) -> tuple[Tensor, Tensor, Tensor]:
        """Leave the discriminator's private gradient in its `.grad`: clipped, noised real terms
        plus the (uncharged) fake term. -> (d_loss, real_logits, fake_logits) for the log."""
        from genlab.models.gan_losses import DISCRIMINATOR_TERMS

        real_term, fake_term = DISCRIMINATOR_TERMS[loss]
        b = real.shape[0]
        logits: list[Tensor] = []

        def real_loss() -> Tensor:
            logits.append(discriminator(real, labels))
            # summed per example: the hooks' per-sample gradient of example i is grad l(x_i)
            return real_term(logits[0]).sum()

        grads = self.real_backward(real_loss, b)
        fakes: list[Tensor] = []

        def fake_loss_sum() -> Tensor:
            fakes.append(discriminator(fake, fake_labels))
            return fake_term(fakes[0]).sum()

        # the fakes: clipped per example to the same bound, so that the two halves of the loss
        # keep their balance (unclipped, the fakes' gradient outweighed the clipped reals' many
        # times and the discriminator learnt to score everything low); no noise, no charge
        fake_sum = self.clipped_sum(fake_loss_sum, fake.shape[0])
        for p, g, f in zip(self.params, grads, fake_sum):
            p.grad = g + f / self.expected_batch
        fake_logits = fakes[0].detach()
        fake_loss = fake_term(fake_logits).mean()
        if b:
            real_logits = logits[0].detach()
            d_loss = real_term(real_logits).mean() + fake_loss.detach()
        else:  # an empty Poisson sample: nothing real to score
            real_logits = fake_logits.new_zeros(1)
            d_loss = fake_loss
        return d_loss, real_logits, fake_logits

    # --- the trainer's step function ---------------------------------------------------------------

    def wrap(self, step_fn: Callable[..., dict[str, Tensor]]) -> Callable[..., dict[str, Tensor]]:
        """The trainer's step function under DP."""
        if self.family == "gan":
            return step_fn  # GAN.train_step calls `discriminator_backward` itself

        def step(batch: dict[str, Tensor], optimizers: dict[str, torch.optim.Optimizer],
                 **kw: Any) -> dict[str, Tensor]:
            b = batch["images"].shape[0]
            if b == 0:  # an empty Poisson sample: a noise-only update
                (opt,) = optimizers.values()
                for p, g in zip(self.params, self.private_grads(0)):
                    p.grad = g
                opt.step()
                opt.zero_grad(set_to_none=True)
                return dict(self._last_out) or {"loss": torch.zeros((), device=_device(batch))}
            for p in self.params:
                p.grad_sample = None
            self.hooks.enable_hooks()
            try:
                with _quiet_hooks():
                    out = step_fn(batch, {k: _PrivateOptimizer(o, self, b)
                                          for k, o in optimizers.items()}, **kw)
            finally:
                self.hooks.disable_hooks()
                _drop_activations(self.network)
            self._last_out = out
            return out

        return step

    # --- what is logged and saved ------------------------------------------------------------------

    def epsilon(self) -> float:
        return epsilon_of(self.accountant, self.delta)

    def state(self) -> dict[str, Any]:
        """`dp` in checkpoint/state.json: what was spent and what a resume needs."""
        return {"epsilon_spent": self.epsilon(), "delta": self.delta,
                "noise_multiplier": self.noise_multiplier, "accountant": self.accountant_name,
                "clip_norm": self.clip_norm, "sample_rate": self.sample_rate,
                "expected_batch": self.expected_batch, "steps": self.steps_done,
                "history": [list(h) for h in self.accountant.history]}


class PrivateRelease:
    """The privacy state of a `FitsData` run: one Gaussian release of its data statistic.

    `release(statistic)` adds N(0, (s * sensitivity)^2) to every entry, from a generator seeded
    by the run's seed, and takes the accountant's one step (sample rate 1). It refuses a second
    call: a resume restores `history` and never releases again."""

    family = "release"

    def __init__(self, *, noise_multiplier: float, sensitivity: float, delta: float, seed: int,
                 accountant: str = "rdp", history: Iterable[Iterable[float]] = ()) -> None:
        self.noise_multiplier, self.sensitivity = noise_multiplier, sensitivity
        self.delta, self.seed, self.accountant_name = delta, seed, accountant
        self.accountant = make_accountant(accountant, history)

    @property
    def released(self) -> bool:
        return bool(self.accountant.history)

    def release(self, statistic: Tensor) -> Tensor:
        """statistic + N(0, (s sensitivity)^2 I): the only place the data's statistic leaves."""
        if self.released:
            raise RuntimeError("the data statistic was released already; a second release "
                               "would spend the budget again")
        g = torch.Generator().manual_seed(derive_seed(self.seed ^ _NOISE_STREAM, 0))
        noise = torch.randn(statistic.shape, generator=g, dtype=torch.float64)
        std = self.noise_multiplier * self.sensitivity
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=1.0)
        return statistic + (noise * std).to(statistic.device, statistic.dtype)

    def wrap(self, step_fn: Callable[..., dict[str, Tensor]]) -> Callable[..., dict[str, Tensor]]:
        return step_fn  # training reads the release only: post-processing, nothing to change

    def epsilon(self) -> float:
        return epsilon_of(self.accountant, self.delta)

    def state(self) -> dict[str, Any]:
        """`dp` in checkpoint/state.json, with the keys of `PrivateTraining.state`: the clip
        norm is the family's sensitivity, one step at sample rate 1."""
        return {"epsilon_spent": self.epsilon(), "delta": self.delta,
                "noise_multiplier": self.noise_multiplier, "accountant": self.accountant_name,
                "clip_norm": self.sensitivity, "sample_rate": 1.0, "expected_batch": None,
                "steps": len(self.accountant.history), "mechanism": "gaussian release",
                "history": [list(h) for h in self.accountant.history]}


class _PrivateOptimizer:
    """An optimizer whose `step` first replaces the gradients by their private version (the
    whole-model families: the family's own train_step runs unchanged)."""

    def __init__(self, optimizer: torch.optim.Optimizer, private: PrivateTraining,
                 batch: int) -> None:
        self.optimizer, self.private, self.batch = optimizer, private, batch

    def step(self) -> None:
        self.private.hooks.disable_hooks()
        for p, g in zip(self.private.params, self.private.private_grads(self.batch)):
            p.grad = g
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)


def _device(batch: dict[str, Tensor]) -> torch.device:
    return batch["images"].device


def _drop_activations(module: nn.Module) -> None:
    """Activations a forward pass stored without a backward (an error mid-step) would pile up."""
    for m in module.modules():
        if hasattr(m, "activations"):
            m.activations = []


# --- wiring into a run -----------------------------------------------------------------------------

def attach(model: nn.Module, train: Any, batcher: Any, *, total_steps: int,
           state: dict[str, Any] | None, world_size: int = 1
           ) -> tuple[PrivateTraining | PrivateRelease, Any]:
    """For a run with `train.dp`: the `PrivateTraining` (continued from a checkpoint's `dp`
    state) and the Poisson batcher that replaces the run's in-memory batcher; for a `FitsData`
    family the `PrivateRelease` and the batcher unchanged (`runs` releases, then trains on no
    data)."""
    if world_size > 1:
        raise UserError("--dp trains on one process; run it without torchrun")
    if not hasattr(batcher, "images"):
        raise UserError("--dp needs an in-memory image dataset")
    n = int(batcher.images.shape[0])
    check_delta(train.dp_delta, n)
    if private_family(type(model)) == "release":
        return _attach_release(model, train, n, state), batcher
    q = train.batch_size / n
    if state:  # a resume: the noise and accounting of the run so far, exactly
        sigma = float(state["noise_multiplier"])
        history, steps_done = state.get("history", []), int(state.get("steps", 0))
    elif train.dp_noise_multiplier > 0:
        sigma, history, steps_done = train.dp_noise_multiplier, [], 0
    else:
        sigma = noise_for_epsilon(train.dp_epsilon, train.dp_delta, q, total_steps,
                                  train.dp_accountant)
        history, steps_done = [], 0
    private = PrivateTraining(model, noise_multiplier=sigma, clip_norm=train.dp_clip_norm,
                              sample_rate=q, expected_batch=train.batch_size,
                              delta=train.dp_delta, seed=train.seed,
                              accountant=train.dp_accountant, history=history,
                              steps_done=steps_done)
    planned = epsilon_of(make_accountant(train.dp_accountant, [(sigma, q, total_steps)]),
                         train.dp_delta)
    log.info(f"--dp: noise multiplier {sigma:.4g}, clip norm {train.dp_clip_norm:g}, Poisson "
             f"sample rate {q:.4g} ({train.batch_size} of {n} expected per step), "
             f"{train.dp_accountant} accountant: epsilon {planned:.3g} at delta "
             f"{train.dp_delta:g} after {total_steps} steps")
    if train.dp_epsilon > 0 and planned > train.dp_epsilon * 1.02 and state:
        log.warning(f"--dp: training to step {total_steps} spends epsilon {planned:.3g}, more "
                    f"than the target train.dp_epsilon={train.dp_epsilon:g} the noise was "
                    "chosen for")
    if train.grad_clip > 0:
        log.info(f"--dp: train.grad_clip={train.grad_clip:g} does not apply to the private "
                 f"{'discriminator' if private.family == 'gan' else 'model'}, whose examples' "
                 f"gradients are clipped to train.dp_clip_norm={train.dp_clip_norm:g} instead")
    model.privacy = private
    return private, PoissonBatcher(batcher.images, batcher.labels, q, train.seed)


def _attach_release(model: nn.Module, train: Any, n: int,
                    state: dict[str, Any] | None) -> PrivateRelease:
    """A `FitsData` run's privacy: the noise for one Gaussian release at sample rate 1 (one
    full-batch step for the accountant), or, on resume, the release that was made."""
    if state:
        sigma, history = float(state["noise_multiplier"]), state.get("history", [])
    elif train.dp_noise_multiplier > 0:
        sigma, history = train.dp_noise_multiplier, []
    else:
        sigma, history = noise_for_epsilon(train.dp_epsilon, train.dp_delta, 1.0, 1,
                                           train.dp_accountant), []
    private = PrivateRelease(noise_multiplier=sigma, sensitivity=float(model.data_sensitivity),
                             delta=train.dp_delta, seed=train.seed,
                             accountant=train.dp_accountant, history=history)
    planned = epsilon_of(make_accountant(train.dp_accountant, [(sigma, 1.0, 1)]), train.dp_delta)
    if train.dp_epsilon > 0 and not state:
        log.info(f"--dp: the whole budget goes to the one release; train.steps changes nothing "
                 f"in it (epsilon {planned:.3g} after any number of generator steps)")
    log.info(f"--dp: one Gaussian release of the data's statistic (L2 sensitivity "
             f"{private.sensitivity:g}, no clipping), noise multiplier {sigma:.4g}, "
             f"{train.dp_accountant} accountant: epsilon {planned:.3g} at delta "
             f"{train.dp_delta:g} for the {n} examples; training then reads the release only")
    return private
