"""Through the commands a user runs: genlab never deletes what it did not write, one process per run
folder, resume is exact or says why not, and a failure leaves no trap behind (docs/reliability.md).
The primitives underneath are tested in test_checkpoint_safety.py, test_runlock.py and
test_config_bounds.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from genlab.checkpoint import read_state
from genlab.errors import UserError
from genlab.modalities import MODALITIES
from genlab.runlock import LOCK_FILE, RunLock
from genlab.runs import TrainRequest, train

TINY = ("--set", "model.ngf=4", "--set", "model.ndf=4", "--set", "model.nz=8",
        "--set", "train.log_every=1", "--set", "train.checkpoint_every=0")


def _train_cli(run_cli, data: str, out: Path, *extra: str, steps: int = 2):
    return run_cli("train", "dcgan", "--data", data, "--steps", str(steps), "--batch-size", "8",
                   "--out", out, "--device", "cpu", *TINY, *extra)


def _weights(run: Path) -> dict:
    return load_file(run / "checkpoint" / "model.safetensors")


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


# --- 1, 2: nothing genlab did not write is removed or replaced ---------------------------------------

def test_demo_never_deletes_a_run_or_the_users_files(run_cli, tiny_run: Path,
                                                     tmp_path: Path) -> None:
    run = tmp_path / "vae-run"
    shutil.copytree(tiny_run, run)
    (run / "notes.md").write_text("my notes")
    (run / "export.onnx").write_bytes(b"exported")
    before = _weights(run)
    code, _, err = run_cli("demo", "--out", run, "--steps", "1", "--device", "cpu")
    assert code == 2 and "already holds a run" in err and "notes.md" in err
    assert (run / "notes.md").read_text() == "my notes" and _weights(run).keys() == before.keys()
    # --overwrite: genlab's own files go, the user's stay
    code, _, err = run_cli("demo", "--out", run, "--steps", "1", "--device", "cpu", "--overwrite")
    assert code == 0, err
    assert (run / "notes.md").read_text() == "my notes"
    assert (run / "export.onnx").read_bytes() == b"exported"
    assert read_state(run / "checkpoint")["model_config"]["ngf"] == 32  # the demo's own model


def test_demo_in_a_working_directory_holding_a_run_touches_nothing(run_cli, tiny_run: Path,
                                                                   tmp_path: Path,
                                                                   monkeypatch) -> None:
    work = tmp_path / "thesis"
    shutil.copytree(tiny_run, work)
    (work / "thesis.tex").write_text("chapter 1")
    (work / "src").mkdir()
    (work / "src" / "main.py").write_text("print(1)")
    monkeypatch.chdir(work)
    code, _, err = run_cli("demo", "--out", ".", "--steps", "1", "--device", "cpu")
    assert code == 2 and "thesis.tex" in err
    assert (work / "thesis.tex").read_text() == "chapter 1"
    assert (work / "src" / "main.py").read_text() == "print(1)"


def test_demo_replaces_a_previous_demo_without_asking(run_cli, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    for _ in range(2):
        code, _, err = run_cli("demo", "--out", out, "--steps", "1", "--device", "cpu")
        assert code == 0, err
    assert read_state(out / "checkpoint")["step"] == 1


def test_train_refuses_a_folder_that_is_not_an_empty_one_or_a_run(run_cli, idx_spec: str,
                                                                  tiny_run: Path,
                                                                  tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "samples.png").write_bytes(b"my picture")
    code, _, err = _train_cli(run_cli, idx_spec, mine)
    assert code == 2 and "samples.png" in err and "did not write" in err
    code, _, err = _train_cli(run_cli, idx_spec, mine, "--overwrite")
    assert code == 2 and "samples.png" in err and "did not write" in err
    assert (mine / "samples.png").read_bytes() == b"my picture"
    # a run whose run.json is missing: its checkpoint is never replaced by another model's
    orphan = tmp_path / "orphan"
    shutil.copytree(tiny_run, orphan)
    (orphan / "run.json").unlink()
    before = (orphan / "checkpoint" / "model.safetensors").read_bytes()
    code, _, err = _train_cli(run_cli, idx_spec, orphan, "--overwrite")
    assert code == 2 and "checkpoint" in err
    assert (orphan / "checkpoint" / "model.safetensors").read_bytes() == before
    # other files, none of genlab's names: --overwrite trains beside them
    beside = tmp_path / "beside"
    beside.mkdir()
    (beside / "README.txt").write_text("keep me")
    code, _, err = _train_cli(run_cli, idx_spec, beside)
    assert code == 2 and "is not empty" in err and "README.txt" in err
    code, _, err = _train_cli(run_cli, idx_spec, beside, "--overwrite")
    assert code == 0, err
    assert (beside / "README.txt").read_text() == "keep me"


# --- 3: one process per run folder -----------------------------------------------------------------

def test_a_second_trainer_on_the_same_folder_is_refused(run_cli, idx_spec: str,
                                                       tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from genlab.runlock import RunLock; "
         "RunLock(sys.argv[1], command='genlab train (other)').acquire(); print('ok', flush=True);"
         " time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ok"
        code, _, err = _train_cli(run_cli, idx_spec, out)
        assert code == 2 and str(holder.pid) in err and LOCK_FILE in err
        code, _, err = _train_cli(run_cli, idx_spec, out, "--overwrite")
        assert code == 2 and "in use" in err  # --overwrite never overrides a live lock
    finally:
        holder.kill()
        holder.wait()
    code, _, err = _train_cli(run_cli, idx_spec, out)  # its lock died with it
    assert code == 0, err
    assert not (out / LOCK_FILE).exists()


# --- 4: no writes through links ---------------------------------------------------------------------

def test_a_symlinked_metrics_file_is_refused_and_its_target_untouched(run_cli, idx_spec: str,
                                                                       tiny_run: Path,
                                                                       tmp_path: Path) -> None:
    run = tmp_path / "linked"
    shutil.copytree(tiny_run, run)
    outside = tmp_path / "outside.jsonl"
    outside.write_text("mine\n")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(outside)
    code, _, err = run_cli("train", "--resume", run, "--steps", "6", "--device", "cpu")
    assert code == 2 and "link" in err and "metrics.jsonl" in err
    assert outside.read_text() == "mine\n"


# --- 5: signals, and what is said after them -------------------------------------------------------

def test_sigterm_stops_at_a_step_with_a_checkpoint_and_exit_143(idx_spec: str,
                                                                tmp_path: Path) -> None:
    out = tmp_path / "term"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "genlab", "train", "dcgan", "--data", idx_spec,
                             "--steps", "100000", "--batch-size", "8", "--out", str(out),
                             "--device", "cpu", *TINY], env=env, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    step = read_state(out / "checkpoint")["step"]
    assert f"stopped at step {step}; checkpoint saved" in err


def test_a_second_ctrl_c_during_the_final_save_says_no_checkpoint_was_written(
        train_tiny, tmp_path: Path, monkeypatch, caplog) -> None:
    import logging

    from genlab import runs

    caplog.set_level(logging.INFO, logger="genlab")
    image = MODALITIES["image"]
    write = image.write_training_samples

    def interrupt_at_step_1(model, run_dir, step, seed):
        path = write(model, run_dir, step, seed)
        if step == 1:
            signal.raise_signal(signal.SIGINT)
        return path

    real_save = runs.save_checkpoint

    def save_then_interrupt_again(path, *args, **kwargs):
        if Path(path).name == "checkpoint" and kwargs["meta"]["step"] == 1:
            raise KeyboardInterrupt  # the second Ctrl-C, in the middle of the final save
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(image, "write_training_samples", interrupt_at_step_1)
    monkeypatch.setattr(runs, "save_checkpoint", save_then_interrupt_again)
    with pytest.raises(KeyboardInterrupt):
        train_tiny(tmp_path / "twice", steps=4, overrides=("train.sample_every=1",))
    assert "checkpoint saved" not in caplog.text
    assert "before any checkpoint was saved" in caplog.text
    assert not (tmp_path / "twice").exists()  # nothing of it could be resumed


# --- 6: kept checkpoints, orphans, fallback --------------------------------------------------------

def test_resume_sweeps_orphans_and_falls_back_to_a_checkpoint_that_verifies(
        train_tiny, tmp_path: Path, caplog) -> None:
    import logging

    caplog.set_level(logging.INFO, logger="genlab")
    run = train_tiny(tmp_path / "run", steps=4, overrides=("train.checkpoint_every=2",))
    assert read_state(run / "checkpoint.prev-1")["step"] == 2
    orphan = run / ".checkpoint.tmp-deadbeef"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    (run / "checkpoint" / "model.safetensors").write_bytes(b"damaged")
    train(TrainRequest(resume=str(run), steps=6, device="cpu"))
    assert not orphan.exists()
    assert "using checkpoint.prev-1 (step 2)" in caplog.text
    assert read_state(run / "checkpoint")["step"] == 6
    assert json.loads((run / "run.json").read_text())["resumed"][-1]["checkpoint"] == \
        "checkpoint.prev-1"


# --- 7, 9, 11: what resume means --------------------------------------------------------------------

def test_resuming_past_a_cosine_schedule_is_refused_and_can_be_stretched(train_tiny,
                                                                          tmp_path: Path) -> None:
    run = train_tiny(tmp_path / "cos", steps=3, overrides=("train.lr_schedule=cosine",))
    with pytest.raises(UserError, match=r"lr_decay_steps=3"):
        train(TrainRequest(resume=str(run), steps=5, device="cpu"))
    train(TrainRequest(resume=str(run), steps=5, device="cpu",
                       overrides=("train.lr_decay_steps=5",)))
    record = json.loads((run / "run.json").read_text())
    assert record["resumed"][-1]["changed"] == {"train.lr_decay_steps": [3, 5]}
    assert record["train_config"]["lr_decay_steps"] == 5
    with pytest.raises(UserError, match=r"cannot change model.nz"):
        train(TrainRequest(resume=str(run), steps=7, device="cpu", overrides=("model.nz=4",)))


def test_a_stopped_cosine_run_resumed_to_its_total_is_bit_identical(train_tiny,
                                                                    tmp_path: Path) -> None:
    straight = train_tiny(tmp_path / "straight", steps=6, overrides=("train.lr_schedule=cosine",))
    part = tmp_path / "part"
    train_tiny(part, steps=6, overrides=("train.lr_schedule=cosine", "train.checkpoint_every=3"))
    # as if stopped at step 3: keep the step-3 checkpoint only
    shutil.rmtree(part / "checkpoint")
    (part / "checkpoint.prev-1").rename(part / "checkpoint")
    train(TrainRequest(resume=str(part), device="cpu"))  # to the total it was started with
    assert _same_weights(straight, part)


def test_resume_trains_with_the_checkpoints_config_not_an_edited_run_json(tiny_run: Path,
                                                                          tmp_path: Path) -> None:
    run = tmp_path / "edited"
    shutil.copytree(tiny_run, run)
    record = json.loads((run / "run.json").read_text())
    record["train_config"]["beta1"] = 0.9
    (run / "run.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match=r"train.beta1"):
        train(TrainRequest(resume=str(run), steps=6, device="cpu"))


def test_the_nan_advice_can_be_followed(train_tiny, tmp_path: Path, monkeypatch) -> None:
    from genlab.models import gan_losses

    run = train_tiny(tmp_path / "nan", steps=2, overrides=("train.checkpoint_every=2",))
    real = gan_losses.LOSSES["ns"]
    monkeypatch.setitem(gan_losses.LOSSES, "ns", (lambda r, f: r.sum() * float("nan"), real[1]))
    with pytest.raises(UserError, match=r"last good checkpoint \(step 2\).*--set train.lr=") as e:
        train(TrainRequest(resume=str(run), steps=4, device="cpu"))
    advice = str(e.value).split("genlab train ")[1].split(",")[0]
    monkeypatch.setitem(gan_losses.LOSSES, "ns", real)
    lr = advice.split("train.lr=")[1]
    train(TrainRequest(resume=str(run), steps=4, device="cpu", overrides=(f"train.lr={lr}",)))
    assert read_state(run / "checkpoint")["train_config"]["lr"] == float(lr)


# --- 8: the evaluator does not move the random streams ----------------------------------------------

def test_resume_with_eval_every_is_bit_identical(train_tiny, tmp_path: Path) -> None:
    kw = {"data": "digits", "overrides": ("train.eval_every=2", "train.eval_n=20")}
    straight = train_tiny(tmp_path / "straight", steps=4, **kw)
    part = train_tiny(tmp_path / "part", steps=2, **kw)
    train(TrainRequest(resume=str(part), steps=4, device="cpu"))
    assert _same_weights(straight, part)


# --- 10: a failure before the first checkpoint leaves no trap ---------------------------------------

def test_a_failure_before_the_first_checkpoint_removes_what_it_wrote(train_tiny, run_cli,
                                                                     idx_spec: str, tmp_path: Path,
                                                                     monkeypatch) -> None:
    from genlab import runs

    def full_disk(*args, **kwargs):
        raise UserError("no space left on the device")

    monkeypatch.setattr(runs, "save_checkpoint", full_disk)
    out = tmp_path / "new"
    with pytest.raises(UserError, match=r"no space.*genlab removed the run folder"):
        train_tiny(out, steps=2)
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"removed what it wrote"):
        train_tiny(kept, steps=2, overwrite=True)
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]
    monkeypatch.undo()
    code, _, err = _train_cli(run_cli, idx_spec, out)  # the same command works the second time
    assert code == 0, err


# --- 13: bounded inputs on the command line --------------------------------------------------------

def test_out_of_range_numbers_are_one_line(run_cli, tiny_run: Path, idx_spec: str,
                                           tmp_path: Path) -> None:
    for args, said in [
        (("train", "dcgan", "--data", idx_spec, "--steps", "1", "--seed",
          "18446744073709551615", "--out", tmp_path / "a"), "--seed"),
        (("train", "dcgan", "--data", idx_spec, "--steps", "1", "--set", "train.lr=nan",
          "--out", tmp_path / "b"), "train.lr"),
        (("sample", tiny_run, "--n", "2000000000", "--out", tmp_path / "x.png"), "--n"),
        (("sample", tiny_run, "--seed", "-1", "--out", tmp_path / "x.png"), "--seed"),
    ]:
        code, _, err = run_cli(*args)
        assert code == 2 and said in err and "Traceback" not in err, (args, err)
        assert err.count("\n") == 1
    assert not (tmp_path / "a").exists() and not (tmp_path / "x.png").exists()


def test_a_nul_byte_in_the_run_folder_through_the_api(idx_spec: str) -> None:
    import genlab

    with pytest.raises(UserError, match="NUL"):
        genlab.train("dcgan", idx_spec, steps=1, out="runs/a\x00b")


def test_locks_are_released_after_a_run(tiny_run: Path) -> None:
    assert not (tiny_run / LOCK_FILE).exists()
    with RunLock(tiny_run):
        assert (tiny_run / LOCK_FILE).exists()
