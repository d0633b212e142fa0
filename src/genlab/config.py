"""Config dataclasses, presets and `--set key=value` overrides.

Every model has one `@dataclass` config; training has `TrainConfig`. A preset is a small TOML file in
`genlab/presets/` holding only what differs from the defaults. Overrides are checked against the
dataclass fields: an unknown key or a value of the wrong type is a `UserError` naming the key and what
is allowed, raised before any tensor is allocated.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from genlab.errors import UserError
from genlab.limits import MAX_BATCH, MAX_EPOCHS, MAX_LR, MAX_SAMPLES, MAX_STEPS, SEEDS, Range

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
    # images: train on this many per class, chosen by `seed` (labelled data only); 0 = all.
    # run.json records the subset's hash (genlab.data.subset), which `genlab utility` checks
    per_class: int = 0
    # differentially private training (`--dp`, genlab.privacy_dp; needs the `dp` extra, Opacus)
    dp: bool = False
    dp_epsilon: float = 0.0  # target epsilon spent by the last step; 0 = give dp_noise_multiplier
    dp_noise_multiplier: float = 0.0  # noise std / clip norm; 0 = chosen from dp_epsilon
    dp_clip_norm: float = 1.0  # L2 bound of each example's gradient
    dp_delta: float = 1e-5  # refused when above 1 / (10 n)
    dp_accountant: Literal["rdp", "prv"] = "rdp"

    def validate(self) -> None:
        for name, allowed in TRAIN_RANGES.items():
            allowed.check(f"train.{name}", getattr(self, name))
        if self.batch_size % self.grad_accum:
            raise UserError(
                f"train.batch_size ({self.batch_size}) must be divisible by "
                f"train.grad_accum ({self.grad_accum})"
            )


_STEPS = Range(0, MAX_STEPS, integer=True)
# The allowed values of every numeric field of TrainConfig (docs/reliability.md lists them).
TRAIN_RANGES: dict[str, Range] = {
    "steps": _STEPS,
    "epochs": Range(0, MAX_EPOCHS),
    "batch_size": Range(1, MAX_BATCH, integer=True),
    "grad_accum": Range(1, MAX_BATCH, integer=True),
    "lr": Range(0, MAX_LR, low_open=True),
    "beta1": Range(0, 1, high_open=True),
    "beta2": Range(0, 1, high_open=True),
    "weight_decay": Range(0, 10),
    "warmup_steps": _STEPS,
    "lr_decay_steps": _STEPS,
    "min_lr_ratio": Range(0, 1),
    "grad_clip": Range(0, 1e6),
    "seed": SEEDS,
    "log_every": Range(1, MAX_STEPS, integer=True),
    "sample_every": _STEPS,
    "checkpoint_every": _STEPS,
    "eval_every": _STEPS,
    "eval_n": Range(0, MAX_SAMPLES, integer=True),
    "per_class": Range(0, MAX_SAMPLES, integer=True),
    "dp_epsilon": Range(0, 1e6),
    "dp_noise_multiplier": Range(0, 1e6),
    "dp_clip_norm": Range(0, 1e6, low_open=True),
    "dp_delta": Range(0, 1, low_open=True),
}

# The train settings `--resume` may change: how fast and how long to go on, and how often to log,
# sample, evaluate and save. Each leaves the batches, the model and the optimizer state as they
# are; anything else (batch size, seed, optimizer, betas, precision, model.*) would not continue
# the same run. The changes are recorded in run.json.
SAFE_ON_RESUME = frozenset({
    "lr", "lr_schedule", "warmup_steps", "lr_decay_steps", "min_lr_ratio", "steps",
    "eval_every", "eval_n", "log_every", "sample_every", "checkpoint_every",
})


def check_finite_fields(config: Any, prefix: str) -> None:
    """Every float field of dataclass `config` is finite (a `UserError` names the first that
    is not). For the model configs' `validate()`; `--set` and presets are checked on entry."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{prefix}.{f.name} must be a finite number, got {value!r}")


def check_image_fields(config: Any, prefix: str, *, partial: bool) -> None:
    """`channels` and `image_size` of an image model's config: 0 means "fill in from the data", so
    they must be >= 0 before the data is read (`partial`) and > 0 after."""
    if not partial and (config.channels <= 0 or config.image_size <= 0):
        raise UserError(f"{prefix}.channels and {prefix}.image_size must be > 0 (set from the data)")
    if config.channels < 0 or config.image_size < 0:
        raise UserError(f"{prefix}.channels and {prefix}.image_size must be >= 0 (0 = from the data)")


def check_at_least(config: Any, prefix: str, names: Iterable[str], bound: float = 1) -> None:
    """Lower bounds of a model config's fields (layer widths and counts): a `UserError` names the
    first one below `bound`."""
    for name in names:
        value = getattr(config, name)
        if value < bound:
            raise UserError(f"{prefix}.{name} must be >= {bound:g}, got {value!r}")


def check_at_most(config: Any, prefix: str, bounds: dict[str, float]) -> None:
    """Upper bounds of a model config's fields: a `UserError` names the first one above."""
    for name, bound in bounds.items():
        value = getattr(config, name)
        if value > bound:
            raise UserError(f"{prefix}.{name} must be <= {bound:g}, got {value!r}")


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
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise UserError(f"{key}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # "nan", "inf", "1e999", TOML's nan and inf
            raise UserError(f"{key}: expected a finite number, got {value!r}")
        return number
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


PRESET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
MAX_PRESET_BYTES = 1 << 20


def load_preset(name: str) -> dict[str, Any]:
    """A built-in preset by name: `{"model": {...}, "train": {...}}` plus optional top-level
    `model_name`, `data`, `description`. Names only: a path is refused (`load_preset_file`)."""
    if not isinstance(name, str) or not PRESET_NAME.match(name):
        raise UserError(f"--preset takes a preset name ({', '.join(preset_names())}), got "
                        f"{name!r}; to use a TOML file of your own, pass --preset-file PATH")
    path = resources.files("genlab") / "presets" / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    return _check_preset(_parse_toml(path.read_text(), f"preset {name}"), f"preset {name}")


def load_preset_file(path: str | os.PathLike) -> dict[str, Any]:
    """A preset from a TOML file the user names explicitly (`--preset-file PATH`), checked like
    the built-in ones."""
    path = Path(path)
    if not path.is_file():
        why = "is not a file" if path.exists() else "does not exist"
        raise UserError(f"--preset-file {path} {why}; give a TOML file")
    if path.stat().st_size > MAX_PRESET_BYTES:
        raise UserError(f"--preset-file {path} is over {MAX_PRESET_BYTES} bytes; a preset is a "
                        "small TOML file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"--preset-file {path} is not UTF-8 text (invalid byte at offset "
                        f"{e.start})") from None
    return _check_preset(_parse_toml(text, f"--preset-file {path}"), f"--preset-file {path}")


def _parse_toml(text: str, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{label} is not valid TOML ({' '.join(str(e).split())})") from None


def _check_preset(data: dict[str, Any], label: str) -> dict[str, Any]:
    # `device = "cuda"` marks a preset sized for a GPU (genlab train warns when it runs elsewhere)
    unknown = set(data) - {"model", "train", "model_name", "data", "description", "device"}
    if unknown:
        raise UserError(f"{label}: unknown sections {sorted(unknown)}; allowed: [model], [train], "
                        "model_name, data, description")
    for key in ("model", "train"):
        if key in data and not isinstance(data[key], dict):
            raise UserError(f"{label}: {key} must be a [{key}] table")
    for key in ("model_name", "data", "description"):
        if key in data and not isinstance(data[key], str):
            raise UserError(f"{label}: {key} must be a string, got {data[key]!r}")
    return data


# --- resume ----------------------------------------------------------------------------------------

def check_resume_overrides(overrides: dict[str, dict[str, Any]]) -> None:
    """Refuse, by name, every override a `--resume` may not make: all of model.*, and train.*
    keys outside `SAFE_ON_RESUME`. `overrides` is `parse_overrides`' result."""
    allowed = ", ".join(f"train.{k}" for k in sorted(SAFE_ON_RESUME))
    for key in overrides.get("model", {}):
        raise UserError(f"--resume cannot change model.{key}: the checkpoint's weights belong to "
                        f"the model as it was built; allowed with --resume: {allowed}")
    for key in overrides.get("train", {}):
        if key not in SAFE_ON_RESUME:
            raise UserError(f"--resume cannot change train.{key}: the resumed run would not "
                            f"continue the same run; allowed with --resume: {allowed}")


def apply_resume_overrides(train: TrainConfig, overrides: dict[str, dict[str, Any]]
                           ) -> tuple[TrainConfig, dict[str, list[Any]]]:
    """The checkpoint's train config with a resume's safe overrides applied, checked, and the
    changes as `{"train.lr": [old, new]}` to record in run.json."""
    check_resume_overrides(overrides)
    updated = update_config(train, overrides.get("train", {}), "train")
    updated.validate()
    changes = {f"train.{k}": [getattr(train, k), getattr(updated, k)]
               for k in overrides.get("train", {}) if getattr(train, k) != getattr(updated, k)}
    return updated, changes


def check_resume_schedule(train: TrainConfig, total_steps: int) -> None:
    """A cosine schedule ends at `train.lr_decay_steps`; resuming to a larger total would train
    the extra steps at the floor learning rate (0 for the gpt preset). Refuse, naming the key."""
    if train.lr_schedule == "cosine" and train.lr_decay_steps and \
            total_steps > train.lr_decay_steps:
        raise UserError(
            f"--steps {total_steps} runs past the end of the cosine schedule "
            f"(train.lr_decay_steps={train.lr_decay_steps}): the extra steps would train at the "
            f"floor learning rate ({train.lr * train.min_lr_ratio:g}); pass --set "
            f"train.lr_decay_steps={total_steps} to stretch the schedule from here on (the "
            "learning rate jumps up to the new curve), or resume to at most "
            f"{train.lr_decay_steps} steps")
