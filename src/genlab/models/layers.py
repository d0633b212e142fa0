"""Blocks used identically by two or more model families (STYLE.md: only those live here).

- `ema_update`: the exponential moving average of a network's weights with TF's warm-up, shared
  by the GAN (its generator) and diffusion (its denoiser) families.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, steps: torch.Tensor, max_decay: float) -> None:
    """One EMA step of `ema` towards `net`: `steps` (a long scalar buffer, saved with the model)
    counts updates; the decay grows as (1 + t) / (10 + t) up to `max_decay` (the warm-up of TF's
    ExponentialMovingAverage), so short runs are not dominated by the initial weights. Buffers
    (batch-norm statistics) are copied, not averaged."""
    steps += 1
    t = steps.float()
    decay = torch.clamp((1.0 + t) / (10.0 + t), max=max_decay)
    torch._foreach_lerp_(list(ema.parameters()), list(net.parameters()), 1.0 - decay)
    for ema_buf, buf in zip(ema.buffers(), net.buffers()):
        ema_buf.copy_(buf)
