"""Data-parallel training over the processes that `torchrun` starts (see docs/distributed.md).

Without torchrun this is rank 0 of 1: nothing is wrapped and every method is a no-op. Under torchrun
(RANK, WORLD_SIZE and LOCAL_RANK set) `DistContext.from_env` joins the process group (NCCL for CUDA
tensors, gloo for CPU ones, with a timeout) and `wrap` puts the model's trainable networks in
`DistributedDataParallel` (DDP) without the model knowing about it:

- a model with one optimizer (GPT, VAE: the default `train_step`) is wrapped whole, and its `loss` is
  routed through that one DDP module during the step. The model may reach into its submodules (a GPT
  loops over `self.blocks`), weights shared between submodules (tied embeddings) are reduced once,
  and micro-batches before the last skip the all-reduce, as DDP's `no_sync()` does;
- a model with several optimizers (a GAN) has each trainable child network (`generator`,
  `discriminator`) swapped for its DDP wrapper during `train_step` and swapped back after it.

Either way the model is plain outside the step: checkpoints keep single-process keys, sampling and
the EMA see the plain networks, and no collective runs where only rank 0 works (sample grids).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from genlab.checkpoint import load_rng, rng_states
from genlab.config import TrainConfig
from genlab.errors import UserError
from genlab.log import get_logger

log = get_logger(__name__)

TIMEOUT_ENV = "GENLAB_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 900  # long enough for rank 0 to prepare a dataset while the others wait

StepFn = Callable[..., dict[str, torch.Tensor]]


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    active: bool = False  # joined a process group (launched by torchrun)
    owns_group: bool = False  # this context created the group, so `close` destroys it

    @classmethod
    def from_env(cls) -> DistContext:
        """Join torchrun's process group when RANK and WORLD_SIZE are set, else a single process."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        ctx = cls(rank=_env_int("RANK"), world_size=_env_int("WORLD_SIZE"),
                  local_rank=_env_int("LOCAL_RANK", 0), active=True)
        if not dist.is_initialized():
            # CPU tensors (stop flag, RNG states, CPU training) always go through gloo
            cuda = torch.cuda.is_available() and dist.is_nccl_available()
            dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout_seconds()))
            ctx.owns_group = True
        return ctx

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device of this rank: its own GPU (cuda:LOCAL_RANK) under torchrun."""
        if not self.active or device.type == "cpu":
            return device
        if device.type != "cuda":
            raise UserError(f"--device {device.type} cannot train with several processes; "
                            "use --device cuda or cpu")
        count = torch.cuda.device_count()
        # one GPU visible: the launcher gave each process its own (srun --gpus-per-task=1)
        index = 0 if count == 1 else self.local_rank
        if index >= count:
            raise UserError(f"LOCAL_RANK {self.local_rank} has no GPU: {count} are visible; "
                            f"start at most {count} processes per node (--nproc_per_node)")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)

    def validate(self, train: TrainConfig) -> None:
        """`--batch-size` is the global batch: it must split evenly over ranks and micro-batches."""
        parts = self.world_size * train.grad_accum
        if train.batch_size % parts:
            raise UserError(f"train.batch_size ({train.batch_size}) must be divisible by the number "
                            f"of processes ({self.world_size}) x train.grad_accum "
                            f"({train.grad_accum}); use a multiple of {parts}")

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Local rank 0 of each node runs the block first (downloads, tokenizer caches), the other
        ranks after it, so they find the cache instead of all writing it at once."""
        if self.active and self.local_rank != 0:
            self._barrier()
        yield
        if self.active and self.local_rank == 0:
            self._barrier()

    def _barrier(self) -> None:
        with self.failures_reported():
            dist.all_reduce(torch.zeros(1))  # a CPU tensor: gloo, whatever the GPU backend

    # --- the training step --------------------------------------------------------------------

    def wrap(self, model: nn.Module, optimizers: dict[str, torch.optim.Optimizer]) -> StepFn | None:
        """Wrap the trainable networks in DDP; return the step function the Trainer calls (None in
        a single process: the model's own `train_step`)."""
        if not self.active:
            return None
        # every rank starts from rank 0's state: weights, EMA copies and buffers alike
        with self.failures_reported():
            for tensor in model.state_dict().values():
                dist.broadcast(tensor, src=0)
        if len(optimizers) == 1:
            ddp = _ddp(_LossModule(model))
            return functools.partial(_whole_model_step, model, ddp)
        networks = {name: _ddp(net) for name, net in trainable_networks(model).items()}
        return functools.partial(_per_network_step, model, networks)

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any, so all stop at the same step."""
        if not self.active:
            return flag
        t = torch.tensor([float(flag)])  # CPU: gloo, no device sync
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def mean_over_ranks(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Average logged scalars over ranks: the log shows the global batch, not rank 0's share."""
        if not self.active or not values:
            return values
        keys = list(values)  # the same order on every rank: the same code made them
        stacked = torch.stack([values[k].float() for k in keys])
        dist.all_reduce(stacked)
        return dict(zip(keys, stacked / self.world_size))

    # --- evaluation and checkpoints --------------------------------------------------------------

    def evaluate_together(self, evaluate: Callable[[int], dict[str, float]],
                          model: nn.Module) -> Callable[[int], dict[str, float]]:
        """Run `evaluate` on every rank (it may split its samples with `local_share` and
        `all_gather_tensor`) and hand every rank rank 0's result, so all take the same `best`
        decision."""
        if not self.active:
            return evaluate

        def run(step: int) -> dict[str, float]:
            sync_buffers(model)  # BN statistics drift apart per rank between evaluations
            box = [evaluate(step)]
            dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
            return box[0]

        return run

    def gather_rng(self) -> dict[str, torch.Tensor]:
        """Every rank's RNG states keyed `cpu.rank{r}` / `cuda.rank{r}`. Collective: all call it."""
        local = rng_states()
        if not self.active:
            return {f"{key}.rank0": state for key, state in local.items()}
        out = {}
        for key in sorted(local):
            rows = all_gather_tensor(local[key][None])  # (world_size, n_bytes)
            out.update({f"{key}.rank{r}": row for r, row in enumerate(rows)})
        return out

    def restore_rng(self, path: str | os.PathLike, *, seed: int, step: int) -> None:
        """This rank's RNG states from the checkpoint. Saved by another number of processes, the
        streams cannot continue (the noise of rank r no longer covers the same examples): each rank
        is then seeded from (seed, step, rank), the same way on every resume."""
        if load_rng(path, self.rank, self.world_size):
            return
        torch.manual_seed(int(np.random.SeedSequence([seed, step, self.rank]).generate_state(1)[0]))
        if self.is_main:
            log.info(f"resuming with {self.world_size} process(es) from a checkpoint saved by "
                     "another number: random streams are reseeded from (seed, step, rank)")

    @contextlib.contextmanager
    def failures_reported(self) -> Iterator[None]:
        """A dead or stalled peer ends this rank with one line instead of a traceback."""
        try:
            yield
        except RuntimeError as e:
            if not _peer_failure(e):
                raise
            raise UserError(
                f"rank {self.rank}: another training process died or stopped answering "
                f"({_first_line(e)}); its own log says why; the last checkpoint is kept, continue "
                f"with --resume (timeout {timeout_seconds()} s, set {TIMEOUT_ENV})") from None

    def close(self, synchronize: bool = False) -> None:
        """Leave the process group. After a run that finished everywhere, wait for every rank
        first: a rank tearing gloo down while a peer still uses it aborts that peer
        ("terminate called without an active exception"). Never after a failure, where a peer may
        be dead and the barrier would only wait for the timeout."""
        if self.owns_group and dist.is_initialized():
            if synchronize:
                dist.barrier()
            dist.destroy_process_group()


# --- helpers for evaluators --------------------------------------------------------------------

def is_main_process() -> bool:
    """Rank 0, or no torchrun at all: the process that prints and writes. Read from the environment,
    so it holds before the process group exists and after it is closed."""
    return os.environ.get("RANK", "0") == "0"


def local_share(n: int) -> tuple[int, int]:
    """`(start, count)` of this rank's part of `n` items split over ranks in rank order."""
    rank, world = _rank_world()
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, base + (1 if rank < extra else 0)


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate `t` from every rank along dim 0, in rank order (sizes along dim 0 may differ).
    Every rank gets the whole result; a single process gets `t` back."""
    world = _rank_world()[1]
    if world == 1:
        return t
    t = t.contiguous()
    size = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s) for s in sizes]
    padded = t.new_zeros((max(counts), *t.shape[1:]))  # all_gather needs equal shapes
    padded[: t.shape[0]] = t
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BN running statistics, EMA counters) to every rank."""
    if _rank_world()[1] > 1:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


def trainable_networks(model: nn.Module) -> dict[str, nn.Module]:
    """The child modules holding trainable weights (a GAN's `generator` and `discriminator`)."""
    networks = {name: child for name, child in model.named_children()
                if any(p.requires_grad for p in child.parameters())}
    covered = {id(p) for net in networks.values() for p in net.parameters()}
    stray = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
    if stray:
        raise TypeError(f"{type(model).__name__} has trainable weights outside its child networks "
                        f"({stray[:3]}); DDP wraps whole networks: move them into one")
    return networks


def timeout_seconds() -> int:
    value = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
    if not value.isdigit() or int(value) <= 0:
        raise UserError(f"{TIMEOUT_ENV} must be a whole number of seconds > 0, got {value!r}")
    return int(value)


# --- internals ---------------------------------------------------------------------------------

class _LossModule(nn.Module):
    """DDP calls `forward`; this one computes the model's loss, so a model needs no `forward` of its
    own for DDP (a GPT's `forward` returns logits and stays untouched)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return type(self.model).loss(self.model, batch)


def _ddp(module: nn.Module) -> DDP:
    device = next(module.parameters()).device
    ddp = DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
              gradient_as_bucket_view=True)
    # No buffer broadcast before every forward: buffers (BN running statistics) are read only in
    # eval mode, and `sync_buffers` runs before evaluation; a broadcast per forward would cost a
    # collective per discriminator call. Set after construction: the keyword was renamed in
    # torch 2.13 (forward_sync_buffers), the attribute works in every version.
    ddp.broadcast_buffers = False
    return ddp


def _whole_model_step(model: nn.Module, ddp: DDP, batch: dict[str, torch.Tensor],
                      optimizers: dict[str, torch.optim.Optimizer], *, grad_accum: int = 1,
                      **kw: Any) -> dict[str, torch.Tensor]:
    """The model's own `train_step`, with `self.loss` going through DDP. The first `grad_accum - 1`
    losses skip the gradient all-reduce (their backward only accumulates), the last one reduces the
    sum: one all-reduce per step, as with `no_sync()`."""
    calls = 0

    def loss(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        nonlocal calls
        ddp.require_backward_grad_sync = calls >= grad_accum - 1
        calls += 1
        return ddp(batch)

    model.loss = loss  # an instance attribute shadows the method for this step only
    try:
        out = model.train_step(batch, optimizers, grad_accum=grad_accum, **kw)
    finally:
        del model.loss
        ddp.require_backward_grad_sync = True
    if calls < grad_accum:
        raise TypeError(f"{type(model).__name__}.train_step called self.loss {calls} time(s) for "
                        f"{grad_accum} micro-batch(es); DDP reduces gradients only through it")
    return out


def _per_network_step(model: nn.Module, networks: dict[str, DDP], batch: dict[str, torch.Tensor],
                      optimizers: dict[str, torch.optim.Optimizer],
                      **kw: Any) -> dict[str, torch.Tensor]:
    """The model's own `train_step` with `model.<name>` replaced by its DDP wrapper meanwhile."""
    plain = {name: getattr(model, name) for name in networks}
    try:
        for name, wrapped in networks.items():
            setattr(model, name, wrapped)
        return model.train_step(batch, optimizers, **kw)
    finally:
        for name, net in plain.items():
            setattr(model, name, net)


def _peer_failure(e: RuntimeError) -> bool:
    """A collective failed: NCCL raises DistError, gloo a RuntimeError naming its source."""
    return isinstance(e, dist.DistError) or "gloo" in str(e)


def _first_line(e: Exception) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return re.sub(r"^\[[^\]]*\]\s*", "", line)[:160]  # drop gloo's "[path/pair.cc:553] "


def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None and default is not None:
        return default
    if value is None or not value.isdigit():
        raise UserError(f"environment variable {name}={value!r} is not a whole number; "
                        "start the processes with torchrun")
    return int(value)

