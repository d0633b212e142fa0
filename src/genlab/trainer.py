"""The one training loop, for every model.

The loop counts steps. Each step takes the batch for that step (a pure function of seed and step, so a
resumed run sees the same batches), calls `model.train_step`, and keeps the returned scalars on the
device until a log step, so the hot path never waits for the device. Model-specific updates (a
GAN's two optimizers, say) live in the model, never here.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from genlab.config import TrainConfig
from genlab.distributed import DistContext
from genlab.errors import NonFiniteLossError, StopRequested
from genlab.files import append_line
from genlab.log import get_logger
from genlab.models.base import GenerativeModel

log = get_logger(__name__)


class Batcher(Protocol):
    """Gives the training batch of any step; the same (seed, step) always gives the same batch."""

    steps_per_epoch: int

    def batch(self, step: int) -> dict[str, torch.Tensor]: ...


def get_lr(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warm-up, then constant or cosine decay to `lr * min_lr_ratio` over lr_decay_steps."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    decay_steps = cfg.lr_decay_steps or total_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps))
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1.0 + math.cos(math.pi * progress))


@dataclass
class Hooks:
    """What the loop calls besides the model; all optional. Paths are inside the run folder."""

    save: Callable[[str, int], None] | None = None  # (checkpoint name, step)
    sample: Callable[[int], None] | None = None  # write samples at a step
    evaluate: Callable[[int], dict[str, float]] | None = None  # metrics at a step
    best_metric: str | None = None  # key of `evaluate`'s result; lower is better
    log_extras: Callable[[], dict[str, float]] | None = None  # values added to every row (epsilon)


class Trainer:
    def __init__(self, model: GenerativeModel, optimizers: dict[str, torch.optim.Optimizer],
                 batcher: Batcher, cfg: TrainConfig, run_dir: Path, *, total_steps: int,
                 start_step: int = 0, hooks: Hooks | None = None, is_main: bool = True,
                 best_value: float | None = None, step_fn: Callable | None = None,
                 dist: DistContext | None = None, unit: tuple[str, int] = ("img", 1)) -> None:
        self.model, self.optimizers, self.batcher, self.cfg = model, optimizers, batcher, cfg
        self.run_dir, self.total_steps, self.step = Path(run_dir), total_steps, start_step
        self.hooks = hooks or Hooks()
        self.is_main = is_main
        self.best_value = best_value
        # the DDP wrapper supplies its own step function; by default the model's own
        self.step_fn = step_fn or model.train_step
        # several processes: stop at the same step on every rank, log means over all of them
        self.dist = dist or DistContext()
        self.images_per_step = cfg.batch_size
        # the progress line counts the modality's unit (images, tokens: a sequence is block_size
        # tokens); metrics.jsonl keeps examples per second as `items_per_s`
        self.unit = unit
        self._tensorboard: Any = None  # None: not tried yet; False: TensorBoard not installed
        # the step of the last checkpoint this process saved completely (None: none yet), so a
        # caller says what is true after an interrupted save
        self.saved_step: int | None = None

    def _set_lr(self, step: int) -> float:
        lr = get_lr(step, self.cfg, self.cfg.lr_decay_steps or self.total_steps)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def fit(self) -> dict[str, float]:
        """Train to `total_steps`; checkpoint on schedule, at the end and on Ctrl-C."""
        cfg = self.cfg
        self.model.train()
        sums: dict[str, torch.Tensor] = {}
        count, last = 0, {}
        t_log = time.perf_counter()
        progress = _Progress(self.total_steps, self.step, enabled=self.is_main, unit=self.unit,
                             keys=self.model.progress_keys)
        stop, stopping = _StopFlag(), False
        estimated = not self.is_main  # rank 0 says early how long the run will take
        try:
            while self.step < self.total_steps and not (
                    stopping := self.dist.any_rank(stop.requested)):
                lr = self._set_lr(self.step)
                out = self.step_fn(self.batcher.batch(self.step), self.optimizers,
                                   grad_accum=cfg.grad_accum, grad_clip=cfg.grad_clip)
                for k, v in out.items():
                    sums[k] = sums[k] + v if k in sums else v.clone()
                count += 1
                self.step += 1
                at_end = self.step == self.total_steps
                if not estimated and self.step % cfg.log_every and not at_end:
                    estimated = progress.first_steps(self.step, out)
                if self.step % cfg.log_every == 0 or at_end:
                    means = _finite_means(self.dist.mean_over_ranks(sums), count, self.step)
                    elapsed = time.perf_counter() - t_log
                    rate = count * self.images_per_step / max(elapsed, 1e-9)
                    last = means
                    self._log({"step": self.step, **means, "lr": lr, "items_per_s": rate,
                               "time": time.time()})
                    progress.update(self.step, means, rate)
                    sums, count, t_log = {}, 0, time.perf_counter()
                elif any(self._due(every, at_end) for every in
                         (cfg.eval_every, cfg.sample_every, cfg.checkpoint_every)):
                    # never save or sample a diverged model
                    _finite_means(self.dist.mean_over_ranks(sums), count, self.step)
                if self._due(cfg.eval_every, at_end) and self.hooks.evaluate:
                    self._evaluate()
                if self._due(cfg.sample_every, at_end) and self.hooks.sample and self.is_main:
                    self.hooks.sample(self.step)
                    self.model.train()
                if self._due(cfg.checkpoint_every, at_end):
                    self._save("checkpoint")
        finally:
            progress.close()
            stop.restore()
            if self._tensorboard:
                self._tensorboard.close()
                self._tensorboard = None
        if stopping:
            _finite_means(self.dist.mean_over_ranks(sums), count, self.step)
            self._save("checkpoint")  # at a step boundary, so a resume continues exactly
            raise StopRequested(stop.signum)
        return last

    def _due(self, every: int, at_end: bool) -> bool:
        return at_end or (every > 0 and self.step % every == 0)

    def _save(self, name: str) -> None:
        if self.hooks.save:
            self.hooks.save(name, self.step)
            if name == "checkpoint":
                self.saved_step = self.step

    def _evaluate(self) -> None:
        metrics = self.hooks.evaluate(self.step)
        self.model.train()
        key = self.hooks.best_metric
        if key and key in metrics and (self.best_value is None or metrics[key] < self.best_value):
            self.best_value = metrics[key]
            self._save("best")
        self._log({"step": self.step, **{f"eval/{k}": v for k, v in metrics.items()},
                   "time": time.time()})
        if self.is_main:
            log.info(f"eval step {self.step}: {_fmt(metrics)}")

    def _log(self, row: dict[str, Any]) -> None:
        if not self.is_main:
            return
        if self.hooks.log_extras:
            row = {**row, **self.hooks.log_extras()}
        append_line(self.run_dir / "metrics.jsonl", json.dumps(row))
        if self._tensorboard is None:
            self._tensorboard = _tensorboard_writer(self.run_dir / "tensorboard")
        if self._tensorboard:
            for key, value in row.items():
                if key not in ("step", "time"):
                    self._tensorboard.add_scalar(key, value, row["step"])


def _tensorboard_writer(log_dir: Path) -> Any:
    """A SummaryWriter when the `tensorboard` package is installed (optional), else False."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return False
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


def _finite_means(sums: dict[str, torch.Tensor], count: int, step: int) -> dict[str, float]:
    """Means of the values summed since the last log; raise before a NaN or inf reaches a
    checkpoint, so the one on disk stays the last good one."""
    means = {k: v.item() / count for k, v in sums.items()}
    if not all(math.isfinite(v) for v in means.values()):
        raise NonFiniteLossError(
            f"non-finite loss at step {step} ({_fmt(means)}); training stopped and nothing "
            "non-finite was saved")
    return means


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _fmt(values: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in values.items())


class _StopFlag:
    """Ctrl-C or SIGTERM (a scheduler's stop) ends the loop at the next step boundary, so the
    checkpoint never holds a half-done step. A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = signal.SIGINT
        self.previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise StopRequested(signum)
        self.requested, self.signum = True, signum
        log.warning("stopping after this step and saving a checkpoint (Ctrl-C again to abort)")

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class _Progress:
    """A tqdm bar on a terminal; plain log lines otherwise, so CI logs stay readable."""

    def __init__(self, total: int, start: int, enabled: bool,
                 unit: tuple[str, int] = ("img", 1), keys: tuple[str, ...] = ("loss",)) -> None:
        self.enabled, self.keys = enabled, keys
        self.unit, self.scale = unit  # the rate is in examples/s; shown per image or per token
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)
        self.total, self.last = total, start
        self.t0 = time.perf_counter()
        self.start = start

    def first_steps(self, step: int, out: dict[str, torch.Tensor]) -> bool:
        """Before the first regular log line: once 5 steps are done, or sooner when a step is
        slow (over 2 s), say how long the run will take at this pace. True once said."""
        done = step - self.start
        next(iter(out.values())).item()  # wait for the device, so the time is the work's
        spent = time.perf_counter() - self.t0
        if done < 5 and spent < 2.0:
            return False
        remaining = spent / done * (self.total - step)
        log.info(f"{done} step{'s' * (done > 1)} in {spent:.1f} s (the first includes warm-up): "
                 f"about {_duration(remaining)} for the remaining {self.total - step} at this "
                 "pace")
        return True

    def update(self, step: int, means: dict[str, float], rate: float) -> None:
        if not self.enabled:
            return
        shown = {k: v for k, v in means.items() if k in self.keys}
        if self.bar is not None:
            self.bar.update(step - self.last)
            self.bar.set_postfix_str(f"{_fmt(shown)} {rate * self.scale:,.0f} {self.unit}/s",
                                     refresh=False)
        else:
            spent = time.perf_counter() - self.t0
            eta = spent / max(1, step - self.start) * (self.total - step)
            log.info(f"step {step}/{self.total} {_fmt(shown)} {rate * self.scale:,.0f} "
                     f"{self.unit}/s eta {eta:.0f}s")
        self.last = step

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
