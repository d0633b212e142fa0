"""End to end on a tiny IDX dataset: runs, resume, determinism, divergence, schedules, outputs."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import genlab
from genlab import checkpoint
from genlab.checkpoint import read_state, verify_checkpoint
from genlab.config import TrainConfig
from genlab.data import load_images
from genlab.errors import NonFiniteLossError, UserError
from genlab.modalities import MODALITIES
from genlab.models import gan_losses
from genlab.runs import TrainRequest, train
from genlab.trainer import get_lr


def _bytes(run: Path, name: str) -> bytes:
    return (run / "checkpoint" / name).read_bytes()


def _resume(run: Path, steps: int) -> Path:
    return train(TrainRequest(resume=str(run), steps=steps, device="cpu"))


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- resume and determinism -----------------------------------------------------------------------

@pytest.mark.parametrize(("model", "overrides"), [
    ("dcgan", ()),  # batch norm in both networks, Adam, constant lr
    # per-example gradient penalty (draws eps from the global RNG), two critic steps, AdamW with a
    # warm-up and a cosine schedule whose length is fixed up front
    ("gan", ("model.loss=wgan-gp", "model.d_steps=2", "train.optimizer=adamw",
             "train.weight_decay=0.01", "train.lr_schedule=cosine", "train.warmup_steps=2",
             "train.lr_decay_steps=6")),
    # one optimizer: the default `train_step` of models/base.py, with gradient accumulation; the
    # preset's cosine must be fixed up front (the 3-step launch would otherwise end it at step 3)
    ("vae", ("model.nz=4", "model.hidden=16", "model.pixel_features=2", "train.grad_accum=2",
             "train.lr_decay_steps=6")),
])
def test_resume_equals_uninterrupted(model: str, overrides: tuple, train_tiny,
                                     tmp_path: Path) -> None:
    full = train_tiny(tmp_path / "full", model, steps=6, overrides=overrides)
    part = train_tiny(tmp_path / "part", model, steps=3, overrides=overrides)
    assert read_state(part / "checkpoint")["step"] == 3
    _resume(part, 6)
    assert read_state(part / "checkpoint")["step"] == 6
    for name in ("model.safetensors", "optimizers.safetensors"):
        assert _bytes(part, name) == _bytes(full, name), name
    assert [r["loss"] for r in _rows(part)] == [r["loss"] for r in _rows(full)]
    record = json.loads((part / "run.json").read_text())
    assert record["resumed"][0]["from_step"] == 3 and record["train_config"]["steps"] == 6


def test_resume_after_a_crash_drops_rows_past_the_checkpoint(train_tiny, run_cli,
                                                             tmp_path: Path) -> None:
    run = train_tiny(tmp_path / "crashed", steps=3)
    with open(run / "metrics.jsonl", "a") as f:  # logged after the checkpoint, then killed
        f.write(json.dumps({"step": 4, "loss": 9.0}) + '\n{"step": 5, "lo')
    code, listing, _ = run_cli("runs", tmp_path)
    assert code == 0 and " 4 " in listing  # the half-written line is skipped
    _resume(run, 5)
    assert [r["step"] for r in _rows(run)] == [1, 2, 3, 4, 5]
    assert _rows(run)[3]["loss"] != 9.0


def test_ctrl_c_stops_at_a_step_boundary_and_resume_is_exact(train_tiny, tmp_path: Path,
                                                             monkeypatch) -> None:
    image = MODALITIES["image"]
    write_samples = image.write_training_samples

    def write_then_interrupt(model, run_dir: Path, step: int, seed: int) -> Path:
        path = write_samples(model, run_dir, step, seed)
        if run_dir.name == "stopped" and step == 2:
            signal.raise_signal(signal.SIGINT)  # as if the user pressed Ctrl-C during step 2
        return path

    monkeypatch.setattr(image, "write_training_samples", write_then_interrupt)
    full = train_tiny(tmp_path / "full", steps=6)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(tmp_path / "stopped", steps=6)
    stopped = tmp_path / "stopped"
    assert read_state(stopped / "checkpoint")["step"] == 2
    _resume(stopped, 6)
    assert _bytes(stopped, "model.safetensors") == _bytes(full, "model.safetensors")


def test_crash_while_swapping_checkpoints_keeps_one(tiny_run: Path, tmp_path: Path,
                                                   monkeypatch) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    # killed between moving the old checkpoint aside and moving the new one in
    (run / "checkpoint").rename(run / ".checkpoint.old")
    model = genlab.load(run)
    assert model.checkpoint_step == 4
    real_replace = os.replace

    def replace_fails_on_the_last_rename(src, dst) -> None:
        if Path(dst).name == "checkpoint":
            raise OSError("disk full")
        real_replace(src, dst)

    # a second crash in the next save must not lose the only copy either
    monkeypatch.setattr(checkpoint.os, "replace", replace_fails_on_the_last_rename)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(run / "checkpoint", model, meta=read_state(run / "checkpoint"))
    monkeypatch.undo()
    assert genlab.load(run).checkpoint_step == 4
    _resume(run, 5)
    assert read_state(run / "checkpoint")["step"] == 5 and not (run / ".checkpoint.old").exists()


def test_outputs_follow_the_umask(train_tiny, tmp_path: Path) -> None:
    """Atomic writes go through 0600 temporary files; the results must not stay private."""
    old = os.umask(0o022)
    try:
        run = train_tiny(tmp_path / "perm", steps=1)
        for path in (run / "run.json", run / "samples.png", run / "checkpoint",
                     run / "checkpoint" / "manifest.json"):
            assert path.stat().st_mode & 0o777 == (0o755 if path.is_dir() else 0o644), path
        (run / "run.json").chmod(0o600)  # a file the user restricted keeps its mode when replaced
        checkpoint.atomic_write_text(run / "run.json", "{}")
        assert (run / "run.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_plain_progress_lines_off_a_terminal(train_tiny, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO, logger="genlab")
    train_tiny(tmp_path / "log", steps=2, overrides=("train.log_every=1",))
    lines = [line for line in caplog.messages if line.startswith("step ")]
    assert len(lines) == 2
    assert all(re.fullmatch(r"step \d/2 loss=\S+ d_loss=\S+ g_loss=\S+ [\d,]+ img/s eta \d+s", line)
               for line in lines), lines


def test_same_seed_same_bytes_other_seed_other_bytes(train_tiny, tmp_path: Path) -> None:
    a = train_tiny(tmp_path / "a", steps=3, seed=5)
    b = train_tiny(tmp_path / "b", steps=3, seed=5)
    c = train_tiny(tmp_path / "c", steps=3, seed=6)
    assert _bytes(a, "model.safetensors") == _bytes(b, "model.safetensors")
    assert (a / "samples.png").read_bytes() == (b / "samples.png").read_bytes()
    assert _bytes(a, "model.safetensors") != _bytes(c, "model.safetensors")
    assert (a / "samples.png").read_bytes() != (c / "samples.png").read_bytes()


def test_resume_needs_more_steps_and_no_new_settings(tiny_run: Path) -> None:
    with pytest.raises(UserError, match="already at step 4"):
        _resume(tiny_run, 4)
    with pytest.raises(UserError, match=r"cannot change train\.batch_size"):
        train(TrainRequest(resume=str(tiny_run), steps=8, overrides=("train.batch_size=4",)))
    with pytest.raises(UserError, match="--resume continues a run as it was configured"):
        train(TrainRequest(resume=str(tiny_run), steps=8, seed=3))


# --- divergence -----------------------------------------------------------------------------------

def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(train_tiny, tmp_path: Path,
                                                              monkeypatch) -> None:
    """The generator loss turns NaN at step 3; a checkpoint is due every step but the log only
    every 4 steps, so the NaN must be caught before the step-3 checkpoint is written."""
    d_loss, g_loss = gan_losses.LOSSES["ns"]
    calls = []

    def failing_g_loss(fake: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return g_loss(fake) * (math.nan if len(calls) >= 3 else 1.0)

    monkeypatch.setitem(gan_losses.LOSSES, "ns", (d_loss, failing_g_loss))
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="non-finite loss at step 3"):
        train_tiny(run, steps=6, overrides=("train.log_every=4", "train.checkpoint_every=1"))
    assert read_state(run / "checkpoint")["step"] == 2
    weights = load_file(run / "checkpoint" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    assert genlab.load(run).checkpoint_step == 2


def test_huge_learning_rate_is_a_clear_cli_error(run_cli, idx_spec: str, tmp_path: Path) -> None:
    code, _, err = run_cli("train", "dcgan", "--data", idx_spec, "--steps", "4", "--batch-size",
                           "8", "--out", tmp_path / "run", "--device", "cpu", "--set",
                           "train.lr=1e30", "--set", "model.ngf=4", "--set", "model.ndf=4")
    assert code == 2 and "Traceback" not in err
    # refused before any work since issue 11 (it used to train into a NaN loss)
    assert err.strip().splitlines()[-1] == ("genlab: error: train.lr must be in (0, 10], got "
                                            "1e+30")
    assert not (tmp_path / "run").exists()


# --- fine-tuning ----------------------------------------------------------------------------------

def test_init_from_loads_weights_with_a_fresh_optimizer(tiny_run: Path, train_tiny,
                                                        tmp_path: Path) -> None:
    lr = 2e-4
    tuned = train_tiny(tmp_path / "tuned", steps=1, init_from=str(tiny_run),
                       overrides=(f"train.lr={lr}",))
    source = load_file(tiny_run / "checkpoint" / "model.safetensors")
    result = load_file(tuned / "checkpoint" / "model.safetensors")
    fresh = load_file(train_tiny(tmp_path / "fresh", steps=1) / "checkpoint" / "model.safetensors")
    for key in (k for k in source if k.startswith(("generator.", "discriminator."))
                and "running" not in k and "num_batches" not in k):
        # one Adam step moves a weight by at most about lr
        assert (result[key] - source[key]).abs().max() <= 1.5 * lr, key
    assert any(not torch.equal(result[k], fresh[k]) for k in result)
    steps = load_file(tuned / "checkpoint" / "optimizers.safetensors")
    assert {t.item() for k, t in steps.items() if k.endswith(".step")} == {1.0}
    assert json.loads((tuned / "run.json").read_text())["init_from"] == str(tiny_run)


def test_init_from_checks_the_model(tiny_run: Path, train_tiny, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="holds a dcgan model, not a gan"):
        train_tiny(tmp_path / "x", model="gan", init_from=str(tiny_run))
    with pytest.raises(UserError, match="do not fit"):
        train_tiny(tmp_path / "y", init_from=str(tiny_run), overrides=("model.ngf=8",))


# --- learning-rate schedule -----------------------------------------------------------------------

def test_get_lr_warm_up_and_cosine_endpoints() -> None:
    cfg = TrainConfig(lr=1.0, lr_schedule="cosine", warmup_steps=4, lr_decay_steps=14,
                      min_lr_ratio=0.1)
    assert [get_lr(s, cfg, 100) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert get_lr(4, cfg, 100) == pytest.approx(1.0)  # the cosine starts at the peak
    assert get_lr(9, cfg, 100) == pytest.approx(0.55)  # half way: the mean of peak and floor
    assert get_lr(14, cfg, 100) == pytest.approx(0.1)  # lr_decay_steps wins over total_steps
    assert get_lr(50, cfg, 100) == pytest.approx(0.1)  # and stays at the floor
    cfg.lr_decay_steps = 0
    assert get_lr(100, cfg, 100) == pytest.approx(0.1)  # 0: decay over total_steps
    constant = TrainConfig(lr=0.3, warmup_steps=2)
    assert [get_lr(s, constant, 10) for s in (0, 1, 2, 9)] == pytest.approx([0.15, 0.3, 0.3, 0.3])


def test_lr_decay_steps_recorded_and_kept_on_resume(train_tiny, tmp_path: Path) -> None:
    run = train_tiny(tmp_path / "cos", steps=3, overrides=("train.lr_schedule=cosine",
                                                           "train.lr=1e-3"))
    assert json.loads((run / "run.json").read_text())["train_config"]["lr_decay_steps"] == 3
    with pytest.raises(UserError, match="floor learning rate"):  # never silently at the floor
        _resume(run, 5)
    train(TrainRequest(resume=str(run), steps=5, device="cpu",
                       overrides=("train.lr_decay_steps=5",)))
    record = json.loads((run / "run.json").read_text())
    assert record["train_config"]["lr_decay_steps"] == 5  # stretched, and recorded
    lrs = [r["lr"] for r in _rows(run)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[1] < lrs[0]
    # from step 3 on, the curve of a 5-step schedule: above its floor until the end
    assert lrs[3] == pytest.approx(get_lr(3, TrainConfig(lr=1e-3, lr_schedule="cosine",
                                                         lr_decay_steps=5), 5))
    assert lrs[3] > lrs[4] > 1e-4


@pytest.mark.parametrize("hardware_bf16", [True, False])
def test_precision_auto_is_resolved_and_recorded(train_tiny, tmp_path: Path, monkeypatch,
                                                 hardware_bf16: bool) -> None:
    import genlab.devices

    monkeypatch.setattr(genlab.devices, "bf16_supported", lambda device: hardware_bf16)
    run = train_tiny(tmp_path / "auto", steps=1, precision="auto")
    expected = "bf16" if hardware_bf16 else "fp32"
    record = json.loads((run / "run.json").read_text())
    assert record["train_config"]["precision"] == expected  # resolved once, so resume keeps it
    assert genlab.load(run).config is not None
    _resume(run, 2)
    assert json.loads((run / "run.json").read_text())["train_config"]["precision"] == expected


# --- the run folder and its uses ------------------------------------------------------------------

def test_run_folder_contents(run_cli, idx_spec: str, idx_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-run"
    args = ["train", "dcgan", "--data", idx_spec, "--steps", "2", "--batch-size", "8", "--out",
            str(out), "--device", "cpu", "--set", "model.ngf=4", "--set", "model.ndf=4",
            "--set", "train.log_every=1"]
    code, stdout, _ = run_cli(*args)
    assert code == 0 and stdout.strip() == str(out)
    record = json.loads((out / "run.json").read_text())
    assert record["command"].split() == ["genlab", *args]
    assert record["environment"]["genlab"] == genlab.__version__
    assert record["environment"]["torch"] == torch.__version__
    assert record["data_info"]["sha256"] == load_images(idx_spec).sha256
    assert record["model_config"]["channels"] == 1 and record["model_config"]["image_size"] == 28
    rows = _rows(out)
    assert [r["step"] for r in rows] == [1, 2] and all(math.isfinite(r["loss"]) for r in rows)
    for name in ("samples.png", "loss.png", "samples/step_0000002.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    manifest = json.loads((out / "checkpoint" / "manifest.json").read_text())
    assert {"model.safetensors", "optimizers.safetensors", "rng.safetensors",
            "state.json"} <= set(manifest)
    verify_checkpoint(out / "checkpoint")

    code, listing, _ = run_cli("runs", tmp_path)
    assert code == 0
    (row,) = [line for line in listing.splitlines() if line.startswith(str(out))]
    assert row.split()[1:4] == ["dcgan", idx_spec, "2"]


def test_sample_npz_unconditional(run_cli, tiny_run: Path, tmp_path: Path) -> None:
    code, _, _ = run_cli("sample", tiny_run, "--n", "5", "--out", tmp_path / "x.npz")
    assert code == 0
    with np.load(tmp_path / "x.npz") as npz:
        assert npz["images"].dtype == np.uint8 and npz["images"].shape == (5, 28, 28)
        assert "labels" not in npz


def test_sample_npz_conditional(run_cli, tiny_conditional_run: Path, tmp_path: Path) -> None:
    code, _, _ = run_cli("sample", tiny_conditional_run, "--n", "6", "--label", "3", "--out",
                         tmp_path / "threes.npz")
    assert code == 0
    with np.load(tmp_path / "threes.npz") as npz:
        assert npz["images"].shape == (6, 28, 28) and npz["images"].dtype == np.uint8
        assert npz["labels"].tolist() == [3] * 6
    run_cli("sample", tiny_conditional_run, "--n", "6", "--out", tmp_path / "all.npz")
    with np.load(tmp_path / "all.npz") as npz:
        assert npz["labels"].tolist() == [0, 1, 2, 3, 0, 1]  # every class in turn
    code, _, err = run_cli("sample", tiny_conditional_run, "--label", "4", "--out",
                           tmp_path / "bad.npz")
    assert code == 2 and "classes 0..3" in err


def test_sample_png_is_deterministic(run_cli, tiny_run: Path, tmp_path: Path) -> None:
    for name, seed in (("a.png", "1"), ("b.png", "1"), ("c.png", "2")):
        assert run_cli("sample", tiny_run, "--n", "4", "--seed", seed, "--out",
                       tmp_path / name)[0] == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()


def test_python_load_and_sample(tiny_run: Path) -> None:
    model = genlab.load(tiny_run)
    assert not model.training and model.checkpoint_step == 4
    images = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert images.shape == (4, 1, 28, 28) and images.min() >= 0 and images.max() <= 1
    # the checkpoint folder itself loads too
    assert torch.equal(images, genlab.load(tiny_run / "checkpoint").sample(
        4, generator=torch.Generator().manual_seed(0)))
