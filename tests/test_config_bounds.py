"""Every numeric input has a checked range (issue 11, items 11, 13, 18): NaN and infinity refused
with the key named, seeds in [0, 2^63 - 1], counts bounded, presets by name only, the overrides a
resume may make. Each refusal is a one-line `UserError`, before any work."""

from __future__ import annotations

import math
from pathlib import Path

import click
import pytest
import torch

from genlab.config import (
    SAFE_ON_RESUME,
    TRAIN_RANGES,
    TrainConfig,
    apply_resume_overrides,
    check_resume_overrides,
    check_resume_schedule,
    config_from_dict,
    load_preset,
    load_preset_file,
    parse_overrides,
    preset_names,
)
from genlab.errors import UserError
from genlab.limits import (
    MAX_SAMPLES,
    MAX_SEED,
    SEED,
    FiniteFloat,
    Range,
    check_count,
    check_path,
    check_seed,
    derive_seed,
)
from genlab.models import get_model_class
from genlab.text.sampling import check_sampling_args

TINY = ("--steps", "1", "--batch-size", "8", "--device", "cpu", "--set", "model.ngf=4", "--set",
        "model.ndf=4", "--set", "model.nz=8")


def _one_line(code: int, err: str) -> str:
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- NaN, infinity and huge values from --set, flags and presets ---------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (("--set", "train.lr=nan"), "train.lr: expected a finite number, got 'nan'"),
    (("--set", "train.lr=inf"), "train.lr: expected a finite number, got 'inf'"),
    (("--set", "train.lr=-1e999"), "train.lr: expected a finite number, got '-1e999'"),
    (("--set", "train.weight_decay=nan"), "train.weight_decay: expected a finite number"),
    (("--set", "train.grad_clip=nan"), "train.grad_clip: expected a finite number"),
    (("--set", "train.epochs=nan"), "train.epochs: expected a finite number"),
    (("--epochs", "nan"), "Invalid value for '--epochs': 'nan' is not a finite number"),
    (("--set", "model.gp_weight=inf"), "model.gp_weight: expected a finite number"),
    (("--set", "train.lr=11"), "train.lr must be in (0, 10], got 11.0"),
    (("--seed", "18446744073709551615"),
     "Invalid value for '--seed': 18446744073709551615 is out of range; seeds are integers in "
     "[0, 9223372036854775807]"),
    (("--set", "train.seed=-1"), "train.seed must be an integer in [0, 9223372036854775807]"),
    (("--set", "train.seed=1e20"), "train.seed: expected an integer, got '1e20'"),
    (("--set", "train.steps=1000000000000"), "train.steps must be an integer in [0, 100000000]"),
    (("--set", "model.nz=1000000000"), "model.nz must be <= 65536, got 1000000000"),
])
def test_bad_numbers_are_one_line_before_any_work(run_cli, idx_spec: str, tmp_path: Path,
                                                 args: tuple, message: str) -> None:
    code, _, err = run_cli("train", "dcgan", "--data", idx_spec, "--out", tmp_path / "r", *TINY,
                           *args)
    assert message in _one_line(code, err)
    assert not (tmp_path / "r").exists()


def test_vae_beta_nan_is_refused_from_set_and_from_python(run_cli, idx_spec: str,
                                                         tmp_path: Path) -> None:
    code, _, err = run_cli("train", "vae", "--data", idx_spec, "--out", tmp_path / "r", "--steps",
                           "1", "--set", "model.beta=nan")
    assert "model.beta: expected a finite number" in _one_line(code, err)
    cls = get_model_class("vae")
    config = config_from_dict(cls.config_class, {**cls.tiny_config, "channels": 1,
                                                 "image_size": 28}, "model")
    config.beta = math.nan  # built in Python, past the --set check: validate() still refuses
    with pytest.raises(UserError, match=r"model\.beta must be a finite number, got nan"):
        cls(config)


def test_presets_and_toml_values_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('model_name = "dcgan"\n[train]\nlr = nan\n')
    data = load_preset_file(path)
    with pytest.raises(UserError, match=r"train\.lr: expected a finite number, got nan"):
        config_from_dict(TrainConfig, data["train"], "train")
    path.write_text("[train]\nseed = 18446744073709551615\n")
    data = load_preset_file(path)  # tomllib reads integers of any size
    with pytest.raises(UserError, match=r"train\.seed must be an integer in \[0, 9223372036854775807\]"):
        config_from_dict(TrainConfig, data["train"], "train").validate()
    path.write_text("[train]\nseed = 9223372036854775807\nsteps = inf\n")
    data = load_preset_file(path)
    with pytest.raises(UserError, match=r"train\.steps: expected an integer, got inf"):
        config_from_dict(TrainConfig, data["train"], "train")
    for name in preset_names():  # every shipped preset is inside the ranges
        data = load_preset(name)
        config_from_dict(TrainConfig, data.get("train", {}), "train").validate()


@pytest.mark.parametrize("name", sorted(TRAIN_RANGES))
def test_every_train_field_has_a_checked_range(name: str) -> None:
    TrainConfig().validate()
    allowed = TRAIN_RANGES[name]
    integer = isinstance(getattr(TrainConfig(), name), int)
    assert allowed.integer == integer
    outside = [allowed.high + 1, allowed.low - 1, math.nan, math.inf]
    for value in outside:
        config = TrainConfig(**{name: value})
        with pytest.raises(UserError, match=rf"^train\.{name} must be"):
            config.validate()
    edge = allowed.high if not allowed.high_open else allowed.low
    if allowed.low_open and allowed.high_open:
        pytest.fail("no range is open at both ends")
    fits = {"grad_accum": {"batch_size": int(edge)}}.get(name, {})
    TrainConfig(**{name: int(edge) if integer else float(edge), **fits}).validate()


def test_seed_bounds_everywhere() -> None:
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    for bad in (-1, MAX_SEED + 1, 2**64 - 1, 1.5, True, "3"):
        with pytest.raises(UserError, match="--seed must be an integer in"):
            check_seed(bad)
    assert SEED.convert("9223372036854775807", None, None) == MAX_SEED
    for bad in ("18446744073709551615", "-1", "1e20", "nan"):
        with pytest.raises(click.BadParameter, match="seeds are integers in"):
            SEED.convert(bad, None, None)
    TrainConfig(seed=MAX_SEED).validate()
    # the seeds of derived streams stay inside what torch accepts, and equal genlab 0.1.0's
    assert derive_seed(5, 3) == 5 * 1_000_003 + 3
    for seed in (0, MAX_SEED):
        streams = {torch.randperm(10, generator=torch.Generator().manual_seed(
            derive_seed(seed, k))).tolist().__repr__() for k in range(4)}
        assert len(streams) > 1


def test_counts_paths_and_finite_flags() -> None:
    assert check_count(MAX_SAMPLES, "--n", MAX_SAMPLES) == MAX_SAMPLES
    with pytest.raises(UserError, match=r"--n must be an integer in \[1, 100000\], got 2000000000"):
        check_count(2_000_000_000, "--n", MAX_SAMPLES)
    with pytest.raises(UserError, match="contains a NUL byte"):
        check_path("runs/a\x00b", "--out")
    assert check_path("runs/a", "--out") == Path("runs/a")
    flag = FiniteFloat(min=0, max=100)
    assert flag.convert("0.5", None, None) == 0.5
    for bad in ("nan", "inf", "-1"):
        with pytest.raises(click.BadParameter):
            flag.convert(bad, None, None)
    assert math.nan not in Range(-math.inf, math.inf, low_open=True, high_open=True)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": math.nan}, "--temperature (0 = greedy) must be in [0, 100], got nan"),
    ({"temperature": math.inf}, "--temperature (0 = greedy) must be in [0, 100], got inf"),
    ({"top_p": math.nan}, "--top-p must be in (0, 1], got nan"),
    ({"top_k": 0}, "--top-k must be an integer in [1, 1048576], got 0"),
    ({"max_new_tokens": 10**12}, "--max-new-tokens must be an integer in [0, 100000]"),
])
def test_sampling_options_are_bounded(kwargs: dict, message: str) -> None:
    args = {"temperature": 1.0, "top_k": None, "top_p": None, "max_new_tokens": 4, **kwargs}
    with pytest.raises(UserError) as e:
        check_sampling_args(**args)
    assert message in str(e.value)
    cls = get_model_class("gpt")
    model = cls(config_from_dict(cls.config_class, {**cls.tiny_config, "vocab_size": 5}, "model"))
    with pytest.raises(UserError):  # the model's own sample checks them (a traceback before)
        model.sample(1, **{"max_new_tokens": 4, **kwargs})


# --- presets are names ------------------------------------------------------------------------------

def test_presets_are_names_not_paths(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "x.toml").write_text("[train]\nlr = 0.5\n")
    monkeypatch.chdir(tmp_path / "..")
    for name in (f"../{tmp_path.name}/x", str(tmp_path / "x"), "dcgan/../dcgan", "",
                 "DCGAN\x00"):
        with pytest.raises(UserError, match=r"--preset takes a preset name .*--preset-file PATH"):
            load_preset(name)
    assert load_preset("dcgan")["model_name"] == "dcgan"
    assert load_preset_file(tmp_path / "x.toml") == {"train": {"lr": 0.5}}


@pytest.mark.parametrize(("text", "message"), [
    ("[train\n", "is not valid TOML"),
    ("[optimizer]\nlr = 1\n", "unknown sections ['optimizer']"),
    ("train = 5\n", "train must be a [train] table"),
    ("model_name = 3\n", "model_name must be a string"),
])
def test_a_bad_preset_file_is_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        load_preset_file(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="does not exist"):
        load_preset_file(tmp_path / "missing.toml")
    path.write_bytes(b"\xff\xfe[train]")
    with pytest.raises(UserError, match="is not UTF-8"):
        load_preset_file(path)


# --- what a resume may change -----------------------------------------------------------------------

def test_resume_overrides_safe_ones_pass_the_rest_are_named() -> None:
    assert {"lr", "steps", "lr_decay_steps", "eval_every", "log_every"} <= SAFE_ON_RESUME
    assert not {"batch_size", "seed", "optimizer", "beta1", "precision"} & SAFE_ON_RESUME
    with pytest.raises(UserError, match=r"--resume cannot change model\.nz"):
        check_resume_overrides(parse_overrides(["model.nz=4"]))
    with pytest.raises(UserError, match=r"--resume cannot change train\.batch_size: .*train\.lr,"):
        check_resume_overrides(parse_overrides(["train.lr=1e-4", "train.batch_size=4"]))
    before = TrainConfig(lr=2e-4, steps=100)
    after, changes = apply_resume_overrides(before, parse_overrides(
        ["train.lr=1e-4", "train.steps=200", "train.log_every=50"]))
    assert (after.lr, after.steps, after.batch_size) == (1e-4, 200, before.batch_size)
    assert changes == {"train.lr": [2e-4, 1e-4], "train.steps": [100, 200]}  # log_every: no change
    with pytest.raises(UserError, match=r"train\.lr: expected a finite number"):
        apply_resume_overrides(before, parse_overrides(["train.lr=nan"]))
    with pytest.raises(UserError, match=r"train\.lr must be in \(0, 10\]"):
        apply_resume_overrides(before, parse_overrides(["train.lr=0"]))


def test_resume_past_a_cosine_schedule_is_refused_naming_its_length() -> None:
    cosine = TrainConfig(lr=1e-3, lr_schedule="cosine", lr_decay_steps=100, min_lr_ratio=0.0)
    check_resume_schedule(cosine, 100)  # the total it was planned for
    with pytest.raises(UserError, match=r"train\.lr_decay_steps=100\).*floor learning rate \(0\)"
                                        r".*--set train\.lr_decay_steps=200"):
        check_resume_schedule(cosine, 200)
    check_resume_schedule(TrainConfig(lr_decay_steps=100), 200)  # constant: nothing decays
    stretched, _ = apply_resume_overrides(cosine, parse_overrides(["train.lr_decay_steps=200"]))
    check_resume_schedule(stretched, 200)
