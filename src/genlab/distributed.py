"""Process-group context. Single process: rank 0 of 1, nothing wrapped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistContext:
        return cls()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        return device

    def wrap(self, model: torch.nn.Module) -> Callable | None:
        return None

    def close(self) -> None:
        pass
