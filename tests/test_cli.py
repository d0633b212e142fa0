"""The command line: every bad input is exit status 2 and one line on stderr, never a traceback."""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

import genlab
from genlab.errors import UserError

TRAIN = ("train", "dcgan", "--steps", "2", "--batch-size", "8", "--device", "cpu")


def _one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _copy_idx(idx_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(idx_dir, tmp_path / "idx"))


# --- bad input, one line each -----------------------------------------------------------------------

def test_corrupt_idx_magic(run_cli, idx_dir: Path, tmp_path: Path) -> None:
    folder = _copy_idx(idx_dir, tmp_path)
    images = folder / "train-images-idx3-ubyte"
    images.write_bytes(b"\x00\x00\x09\x03" + images.read_bytes()[4:])
    line = _one_error_line(*run_cli(*TRAIN, "--data", f"idx:{folder}", "--out", tmp_path / "r")[::2])
    assert "bad IDX magic" in line and str(images) in line
    assert not (tmp_path / "r").exists()  # nothing written for a run that never started


def test_truncated_gzip(run_cli, idx_dir: Path, tmp_path: Path) -> None:
    folder = _copy_idx(idx_dir, tmp_path)
    raw = folder / "train-images-idx3-ubyte"
    packed = gzip.compress(raw.read_bytes())
    raw.unlink()
    (folder / "train-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])
    line = _one_error_line(*run_cli(*TRAIN, "--data", f"idx:{folder}", "--out", tmp_path / "r")[::2])
    assert "truncated or corrupt gzip" in line


def test_flipped_byte_in_checkpoint(run_cli, tiny_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    weights = run / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    line = _one_error_line(*run_cli("sample", run, "--out", tmp_path / "x.png")[::2])
    assert "model.safetensors is corrupt" in line
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (("--set", "model.foo=1"), "unknown config key model.foo"),
    (("--set", "train.lr=abc"), "train.lr: expected a number, got 'abc'"),
    (("--set", "train.steps=1.5"), "train.steps: expected an integer"),
    (("--set", "model.loss=foo"), "model.loss: invalid value 'foo'; allowed: ns, hinge, wgan-gp"),
    (("--set", "model.ngf=0"), "model.ngf must be >= 1"),
    (("--set", "lr=1"), "--set expects section.key=value"),
    (("--set", "train.beta1=1.5"), "train.beta1 must be in [0, 1)"),
    (("--set", "train.min_lr_ratio=2"), "train.min_lr_ratio must be in [0, 1]"),
    (("--set", "model.num_classes=2"), "pass --conditional instead"),
    (("--batch-size", "1"), "use --batch-size 2 or more"),
    (("--batch-size", "65"), "fewer than one batch of 65"),
    (("--precision", "fp16"), "'fp16' is not one of 'auto', 'fp32', 'bf16'"),
    (("--bogus",), "No such option '--bogus'"),
    (("--preset", "gan"), "preset gan is for model gan, not dcgan"),
])
def test_bad_training_options(run_cli, idx_spec: str, tmp_path: Path, args: tuple,
                              message: str) -> None:
    code, _, err = run_cli(*TRAIN, "--data", idx_spec, "--out", tmp_path / "r", *args)
    assert message in _one_error_line(code, err)
    assert not (tmp_path / "r").exists()


def test_unknown_model(run_cli, idx_spec: str, tmp_path: Path) -> None:
    code, _, err = run_cli("train", "nosuch", "--data", idx_spec, "--out", tmp_path / "r")
    line = _one_error_line(code, err)
    assert "unknown model 'nosuch'" in line and "dcgan" in line


def test_missing_data(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli("train", "dcgan", "--steps", "2", "--out", tmp_path / "r")
    assert "--data is required" in _one_error_line(code, err)


def test_resume_of_a_folder_that_is_not_a_run(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli("train", "--resume", tmp_path, "--steps", "4")
    assert "is not a genlab run folder" in _one_error_line(code, err)


def test_label_on_an_unconditional_model(run_cli, tiny_run: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("sample", tiny_run, "--label", "1", "--out", tmp_path / "x.npz")
    assert "--label needs a conditional model" in _one_error_line(code, err)
    assert not (tmp_path / "x.npz").exists()


def test_out_of_an_existing_run_is_never_overwritten(run_cli, tiny_run: Path,
                                                     idx_spec: str) -> None:
    before = (tiny_run / "checkpoint" / "model.safetensors").read_bytes()
    code, _, err = run_cli(*TRAIN, "--data", idx_spec, "--out", tiny_run)
    assert "already holds a run" in _one_error_line(code, err)
    assert (tiny_run / "checkpoint" / "model.safetensors").read_bytes() == before


def test_sample_needs_a_known_output_kind(run_cli, tiny_run: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("sample", tiny_run, "--out", tmp_path / "x.jpg")
    assert "--out must end in .png or .npz" in _one_error_line(code, err)


def test_a_run_folder_that_cannot_be_made(run_cli, idx_spec: str, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, _, err = run_cli(*TRAIN, "--data", idx_spec, "--out", blocker / "run")
    line = _one_error_line(code, err)
    assert str(blocker) in line and "check the path" in line


def test_debug_shows_the_traceback_of_that_command_only(run_cli, monkeypatch) -> None:
    from genlab.cli import main

    monkeypatch.delenv("GENLAB_DEBUG", raising=False)
    with pytest.raises(UserError, match="--data is required"):
        main(["--debug", "train", "dcgan"])
    code, _, err = run_cli("train", "dcgan")
    assert "--data is required" in _one_error_line(code, err)


# --- what works -------------------------------------------------------------------------------------

def test_version(run_cli) -> None:
    code, out, _ = run_cli("--version")
    assert code == 0 and out.strip() == f"genlab, version {genlab.__version__}"


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, command in group.commands.items():
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*prefix, name))
    return paths


def test_every_command_has_help_with_an_example(run_cli) -> None:
    from genlab.cli import cli

    code, out, _ = run_cli("--help")  # also registers every command module
    assert code == 0 and "Example" in out
    paths = _command_paths(cli)
    assert {("train",), ("sample",), ("demo",), ("models",), ("datasets",), ("runs",)} <= set(paths)
    for path in paths:
        code, out, _ = run_cli(*path, "--help")
        assert code == 0 and "Example" in out, " ".join(path)


def test_models_lists_the_registry(run_cli) -> None:
    from genlab.models import MODELS

    code, out, _ = run_cli("models")
    names = {line.split()[0] for line in out.splitlines()[2:]}
    assert code == 0 and {"gan", "dcgan"} <= names and names == set(MODELS)


def test_datasets_lists_without_downloading(run_cli, tmp_path: Path, monkeypatch) -> None:
    from genlab.data import catalog

    monkeypatch.setattr(catalog, "SYSTEM_DATA_DIRS", [])  # the OS may ship some datasets
    code, out, _ = run_cli("datasets", "--data-dir", tmp_path)
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    assert {"digits", "mnist", "fashion-mnist", "cifar10"} <= set(rows)
    assert " no" in rows["mnist"]  # nothing there, and nothing fetched
    assert not any(tmp_path.iterdir())


def test_runs_on_an_empty_folder(run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli("runs", tmp_path)
    assert code == 0 and out == "" and "no runs under" in err


def test_runs_lists_a_damaged_run_instead_of_hiding_it(run_cli, tiny_run: Path,
                                                       tmp_path: Path) -> None:
    shutil.copytree(tiny_run, tmp_path / "good")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    code, out, _ = run_cli("runs", tmp_path)
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert code == 0 and set(rows) == {str(tmp_path / "good"), str(tmp_path / "bad")}
    assert "run.json unreadable" in rows[str(tmp_path / "bad")]
    assert "d_loss=" in rows[str(tmp_path / "good")]


def test_console_script(tmp_path: Path) -> None:
    """The installed `genlab` script: its version, and a user error without a traceback."""
    script = Path(sys.executable).with_name("genlab")
    version = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and genlab.__version__ in version.stdout
    bad = subprocess.run([script, "train", "dcgan", "--out", tmp_path / "r"], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2, bad.stderr
    assert bad.stderr.strip().splitlines() == [
        "genlab: error: --data is required (see genlab datasets), e.g. --data digits"]


# --- what a new user runs into (issue: the README's tour) -------------------------------------------

def test_a_missing_run_folder_says_no_run_at(run_cli, tiny_run: Path, tmp_path: Path) -> None:
    code, _, err = run_cli("sample", tmp_path / "nope", "--out", tmp_path / "x.png")
    assert code == 2 and f"no run at {tmp_path / 'nope'}" in err
    close = tiny_run.parent / (tiny_run.name + "x")  # a typo of an existing run
    code, _, err = run_cli("eval", close)
    assert code == 2 and "did you mean" in err and str(tiny_run) in err


def test_debug_works_after_the_command(tmp_path: Path) -> None:
    from genlab.cli import main

    with pytest.raises(UserError, match="no run at"):  # --debug re-raises instead of one line
        main(["sample", str(tmp_path / "nope"), "--debug"])


def test_bf16_without_native_support_is_warned_about(train_tiny, tmp_path: Path, monkeypatch,
                                                     caplog) -> None:
    import logging

    import genlab.devices

    monkeypatch.setattr(genlab.devices, "bf16_supported", lambda device: False)
    caplog.set_level(logging.INFO, logger="genlab")
    train_tiny(tmp_path / "bf16", steps=1, precision="bf16")
    assert "emulated" in caplog.text and "--precision auto" in caplog.text
    caplog.clear()
    train_tiny(tmp_path / "auto", steps=1, precision="auto")
    assert "precision auto: fp32, because this CPU has no native bf16" in caplog.text


def test_a_gpu_preset_on_a_cpu_is_warned_about_and_the_first_steps_give_an_estimate(
        tmp_path: Path, text_file: Path, caplog) -> None:
    import logging

    from genlab.runs import TrainRequest, train

    caplog.set_level(logging.INFO, logger="genlab")
    train(TrainRequest(model="gpt", data=f"text:{text_file}", preset="shakespeare-char",
                       steps=7, batch_size=2, out=str(tmp_path / "gpt"), device="cpu",
                       overrides=("model.n_layer=1", "model.n_embd=12", "model.n_head=2",
                                  "model.block_size=8", "train.eval_every=0",
                                  "train.sample_every=0", "train.log_every=50")))
    assert "preset shakespeare-char is sized for a GPU" in caplog.text
    assert "--preset shakespeare-char-cpu" in caplog.text
    assert re.search(r"5 steps in [\d.]+ s .*: about \d+ s for the remaining 2 at this pace",
                     caplog.text)


def test_eval_of_a_run_on_data_without_a_feature_net(run_cli, tiny_run: Path,
                                                     tmp_path: Path) -> None:
    tiny_run = shutil.copytree(tiny_run, tmp_path / "run")  # eval writes eval.json into it
    code, _, err = run_cli("eval", tiny_run, "--n", "16")
    assert code == 2 and "no feature net for idx:" in err
    assert f"genlab eval {tiny_run} --real fashion-mnist" in err
    assert "genlab featurenet train idx:DIR" in err
    # against a named dataset that has a net: the 28x28 samples go to the digits' 32x32
    code, out, err = run_cli("eval", tiny_run, "--n", "16", "--real", "digits", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["real"]["dataset"] == "digits" and report["fd"] is not None
    assert any("scored against digits" in note for note in report["notes"])


def test_eval_of_a_text_run_and_runs_shows_its_validation_loss(tmp_path: Path, text_file: Path,
                                                              run_cli) -> None:
    out = tmp_path / "runs" / "gpt"
    code, _, err = run_cli("train", "gpt", "--data", f"text:{text_file}", "--steps", "3",
                           "--batch-size", "2", "--out", out, "--device", "cpu",
                           "--set", "model.n_layer=1", "--set", "model.n_embd=12",
                           "--set", "model.n_head=2", "--set", "model.block_size=8",
                           "--set", "train.eval_every=0", "--set", "train.sample_every=0")
    assert code == 0, err
    code, stdout, err = run_cli("eval", out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["perplexity"] == pytest.approx(math.exp(report["val_loss"]))
    assert report["val_tokens"] > 0 and report["provenance"]["step"] == 3
    code, stdout, _ = run_cli("eval", out)
    assert "perplexity" in stdout
    code, stdout, _ = run_cli("runs", tmp_path / "runs")
    assert code == 0 and f"val_loss={report['val_loss']:.3f}" in stdout


def test_the_data_help_names_every_registered_dataset() -> None:
    from genlab.cli.train import DATA_HELP
    from genlab.data.catalog import spec_names

    missing = [name for name in spec_names() if name.split(":")[0] not in DATA_HELP]
    assert not missing
