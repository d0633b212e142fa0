"""Every numeric input has a checked range: the bounds, and the checks configs and flags use.

The bounds stop typos, overflow and runaway work before anything is allocated (`--n 2000000000`,
`--seed 18446744073709551615`, `train.lr=inf`); they are not a promise that anything inside them
fits in memory. A value outside is a `UserError` naming the input and its range. NaN and infinity
are outside every range. The CLI uses the click types at the bottom: `SEED`, `FiniteFloat`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from genlab.errors import UserError

MAX_SEED = 2**63 - 1  # seeds: integers in [0, 2^63 - 1], the non-negative range of int64
MAX_STEPS = 100_000_000  # optimizer steps of a run, and every step count or cadence
MAX_EPOCHS = 1_000_000
MAX_BATCH = 1 << 20  # examples per batch
MAX_SAMPLES = 100_000  # images or texts drawn by one request (--n) or one evaluation (eval_n)
MAX_NEW_TOKENS = 100_000  # tokens generated per text sample
MAX_TEMPERATURE = 100.0
MAX_LR = 10.0
MAX_WIDTH = 1 << 16  # a layer width, latent size, embedding or feature count
MAX_LAYERS = 1024
MAX_CONTEXT = 1 << 17  # a text model's block_size
MAX_VOCAB = 1 << 20
MAX_CHANNELS = 64
MAX_IMAGE_SIDE = 4096
MAX_CLASSES = 100_000
MAX_LOSS_WEIGHT = 1e6  # KL weight beta, gradient-penalty weight


@dataclass(frozen=True)
class Range:
    """A closed, half-open or open interval of allowed values; NaN and inf are never inside."""

    low: float
    high: float
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __contains__(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.integer and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def __str__(self) -> str:
        return (f"{'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}"
                f"{')' if self.high_open else ']'}")

    def check(self, name: str, value: Any) -> Any:
        """`value` when it is inside, else a `UserError` naming `name` and the range."""
        if value in self:
            return value
        kind = "an integer in" if self.integer else "in"
        raise UserError(f"{name} must be {kind} {self}, got {value!r}")


def _fmt(x: float) -> str:
    if isinstance(x, int) or (float(x).is_integer() and abs(x) < 1e16):
        return str(int(x))
    return f"{x:g}"


SEEDS = Range(0, MAX_SEED, integer=True)


def check_seed(value: Any, name: str = "--seed") -> int:
    """A seed: an integer in [0, 2^63 - 1]."""
    return SEEDS.check(name, value)


def check_count(value: Any, name: str, maximum: int, minimum: int = 1) -> int:
    """A count of things to make (samples, tokens, steps): an integer in [minimum, maximum]."""
    return Range(minimum, maximum, integer=True).check(name, value)


def check_finite(value: Any, name: str) -> float:
    """A finite number (int or float, not bool)."""
    return Range(-math.inf, math.inf, low_open=True, high_open=True).check(name, value)


def derive_seed(seed: int, index: int) -> int:
    """The seed of the `index`-th stream (an epoch's permutation, a step's windows) of a run
    seeded `seed`: `seed * 1_000_003 + index`, the formula of genlab 0.1.0, wrapped into the
    range `torch.Generator.manual_seed` accepts, so every seed up to 2^63 - 1 works and the
    seeds that worked before give the same batches."""
    return (seed * 1_000_003 + index) % 2**64


def check_path(value: Any, name: str) -> Path:
    """A path given by the user: a non-empty string (or path) without NUL bytes."""
    text = str(value) if isinstance(value, Path) else value
    if not isinstance(text, str) or not text:
        raise UserError(f"{name} must be a non-empty path, got {value!r}")
    if "\x00" in text:
        raise UserError(f"{name} contains a NUL byte ({text!r}); give a valid path")
    return Path(text)


# --- click parameter types -------------------------------------------------------------------------

class SeedType(click.ParamType):
    """`--seed`: an integer in [0, 2^63 - 1]."""

    name = "seed"

    def convert(self, value: Any, param: Any, ctx: Any) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = int(str(value).strip())
            except ValueError:
                self.fail(f"{value!r} is not an integer; seeds are integers in {SEEDS}", param, ctx)
        if number not in SEEDS:
            self.fail(f"{number} is out of range; seeds are integers in {SEEDS}", param, ctx)
        return number


SEED = SeedType()


class FiniteFloat(click.FloatRange):
    """`click.FloatRange` that refuses NaN and infinity (FloatRange lets NaN through any range
    and inf through an open end)."""

    name = "finite float"

    def _describe_range(self) -> str:
        # click writes "[x<=None]" into --help for an unbounded range
        return "" if self.min is None and self.max is None else super()._describe_range()

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number
