"""Config dataclasses, presets and `--set key=value` overrides.

Every model has one `@dataclass` config; training has `TrainConfig`. A preset is a small TOML file in
`genlab/presets/` holding only what differs from the defaults. Overrides are checked against the
dataclass fields: an unknown key or a value of the wrong type is a `UserError` naming the key and what
is allowed, raised before any tensor is allocated.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from genlab.errors import UserError

Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class TrainConfig:
    steps: int = 0  # total optimizer steps; 0 = take them from `epochs`
    epochs: float = 0.0  # used when steps == 0: steps = epochs * (train size // batch_size)
    batch_size: int = 64  # global batch (split over `grad_accum` micro-batches and over ranks)
    grad_accum: int = 1  # micro-batches per step (models with one optimizer only)
    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 0.0  # AdamW decay, applied to weight matrices only
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0  # linear warm-up from 0, then the schedule
    lr_decay_steps: int = 0  # length of the cosine schedule; 0 = the first launch's total steps
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    # bf16 autocast on CUDA and CPU; "auto": bf16 where the hardware runs it fast (runs.bf16_supported),
    # else fp32, decided when the run starts and saved resolved in run.json
    precision: Precision = "fp32"
    compile: bool = False  # torch.compile the networks
    # torch.compile mode; "reduce-overhead" adds CUDA graphs, for small networks that are
    # launch-bound on a GPU (a dcgan64 step is ~300 kernels)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune",
                          "max-autotune-no-cudagraphs"] = "default"
    seed: int = 0
    log_every: int = 50  # steps between log lines / metrics.jsonl rows
    sample_every: int = 500  # steps between sample grids (0 = only at the end)
    checkpoint_every: int = 1000  # steps between checkpoints (0 = only at the end)
    eval_every: int = 0  # steps between in-training evaluations (0 = off)
    eval_n: int = 2000  # samples per in-training evaluation

    def validate(self) -> None:
        positive = ("batch_size", "grad_accum", "log_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"train.{name} must be > 0, got {getattr(self, name)}")
        if self.steps < 0 or self.epochs < 0:
            raise UserError("train.steps and train.epochs must be >= 0")
        if self.lr <= 0:
            raise UserError(f"train.lr must be > 0, got {self.lr}")
        if self.batch_size % self.grad_accum:
            raise UserError(
                f"train.batch_size ({self.batch_size}) must be divisible by "
                f"train.grad_accum ({self.grad_accum})"
            )
        for name in ("sample_every", "checkpoint_every", "eval_every", "warmup_steps",
                     "lr_decay_steps", "eval_n", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise UserError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise UserError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


# --- converting values ---------------------------------------------------------------------------

def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Convert `value` (a string from the command line or a TOML value) to the field type `tp`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise UserError(f"{key}: invalid value {value!r}; allowed: {', '.join(map(str, choices))}")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _convert(key, value, args[0])
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        try:
            return int(str(value).replace("_", ""))
        except ValueError:
            raise UserError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise UserError(f"{key}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UserError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        return str(value)
    raise UserError(f"{key}: cannot set a field of type {_describe(tp)} from the command line")


def update_config(config: Any, values: dict[str, Any], prefix: str) -> Any:
    """Return a copy of dataclass `config` with `values` applied, each checked against its field."""
    types_ = _field_types(type(config))
    changes = {}
    for key, value in values.items():
        if key not in types_:
            allowed = ", ".join(f"{prefix}.{k}" for k in types_)
            raise UserError(f"unknown config key {prefix}.{key}; allowed: {allowed}")
        changes[key] = _convert(f"{prefix}.{key}", value, types_[key])
    return dataclasses.replace(config, **changes)


def config_from_dict(cls: type, values: dict[str, Any], prefix: str) -> Any:
    return update_config(cls(), values, prefix)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def parse_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, dict[str, str]]:
    """`["model.loss=hinge", "train.lr=1e-4"]` -> `{"model": {"loss": "hinge"}, "train": {...}}`."""
    out: dict[str, dict[str, str]] = {"model": {}, "train": {}}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise UserError(f"--set expects section.key=value (e.g. model.loss=hinge), got {pair!r}")
        if section not in out:
            raise UserError(f"--set {pair!r}: section must be 'model' or 'train', got {section!r}")
        out[section][name] = value.strip()
    return out


# --- presets -------------------------------------------------------------------------------------

def preset_names() -> list[str]:
    folder = resources.files("genlab") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    """A preset is `{"model": {...}, "train": {...}}` plus optional top-level `model_name`, `data`."""
    path = resources.files("genlab") / "presets" / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    data = tomllib.loads(path.read_text())
    # `device = "cuda"` marks a preset sized for a GPU (genlab train warns when it runs elsewhere)
    unknown = set(data) - {"model", "train", "model_name", "data", "description", "device"}
    if unknown:
        raise UserError(f"preset {name}: unknown sections {sorted(unknown)}")
    return data
