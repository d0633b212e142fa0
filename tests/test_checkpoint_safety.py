"""Checkpoints lose nothing (issue 11): the last K kept, verified before the swap, the newest valid
one found, orphans swept, links refused, NaN refused, full disks and damaged files reported in one
line. Models are built tiny and saved directly; no training except the end-to-end disk-full case."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genlab import checkpoint, files
from genlab.checkpoint import (
    check_against_record,
    check_finite,
    check_model_kind,
    load_optimizers,
    load_rng,
    load_weights,
    newest_valid_checkpoint,
    read_state,
    save_checkpoint,
    sha256_file,
    sweep_orphans,
    verify_checkpoint,
    version_warnings,
)
from genlab.config import TrainConfig, config_from_dict
from genlab.errors import NonFiniteLossError, UserError
from genlab.files import DiskFullError
from genlab.models import get_model_class

FILES = {"manifest.json", "model.safetensors", "optimizers.safetensors", "rng.safetensors",
         "state.json"}


def _model(name: str = "dcgan", **changes):
    cls = get_model_class(name)
    data = {"gpt": {"vocab_size": 11}}.get(name, {"channels": 1, "image_size": 28})
    config = config_from_dict(cls.config_class, {**cls.tiny_config, **data, **changes}, "model")
    torch.manual_seed(0)
    return cls(config)


def _trained(name: str = "dcgan", **changes):
    """A tiny model after one optimizer step, so the optimizers hold state tensors."""
    model = _model(name, **changes)
    optimizers = model.configure_optimizers(TrainConfig())
    g = torch.Generator().manual_seed(0)
    if name == "gpt":
        batch = {"tokens": torch.randint(0, 11, (2, 9), generator=g)}
    else:
        batch = {"images": torch.randint(0, 256, (4, 1, 28, 28), generator=g, dtype=torch.uint8)}
    model.train_step(batch, optimizers)
    return model, optimizers


def _meta(model, step: int) -> dict:
    return {"model": model.name, "model_config": model.config.__dict__, "step": step}


def _save(path: Path, model, optimizers, step: int, **kw) -> Path:
    return save_checkpoint(path, model, meta=_meta(model, step), optimizers=optimizers, **kw)


def _rehash(folder: Path) -> None:
    """Rewrite the manifest after a file was changed: damage the manifest cannot see."""
    manifest = {f.name: sha256_file(f) for f in sorted(folder.iterdir()) if f.name != "manifest.json"}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if files.is_temporary(p.name))


@pytest.fixture(scope="module")
def trained():
    return _trained()


# --- keeping the last K -------------------------------------------------------------------------

def test_keeps_the_last_k_newest_in_place_with_todays_files(trained, tmp_path: Path) -> None:
    model, optimizers = trained
    run = tmp_path / "run"
    for step in (1, 2, 3):
        _save(run / "checkpoint", model, optimizers, step)
    assert read_state(run / "checkpoint")["step"] == 3
    assert read_state(run / "checkpoint.prev-1")["step"] == 2
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "checkpoint.prev-1"]
    assert {p.name for p in (run / "checkpoint").iterdir()} == FILES
    for step in (4, 5):
        _save(run / "checkpoint", model, optimizers, step, keep=3)
    assert [read_state(run / n)["step"] for n in
            ("checkpoint", "checkpoint.prev-1", "checkpoint.prev-2")] == [5, 4, 3]
    _save(run / "checkpoint", model, optimizers, 6, keep=1)  # genlab 0.1.0's single checkpoint
    assert read_state(run / "checkpoint")["step"] == 6 and not (run / ".checkpoint.old").exists()


def test_previous_checkpoint_stays_until_the_new_one_verifies(trained, tmp_path: Path,
                                                              monkeypatch) -> None:
    model, optimizers = trained
    run = tmp_path / "run"
    _save(run / "checkpoint", model, optimizers, 1)
    _save(run / "checkpoint", model, optimizers, 2)
    real_write = checkpoint.write_new_file

    def short_write(path, data) -> None:  # the file system lost the end of the weights
        real_write(path, data[:-10] if Path(path).name == "model.safetensors" else data)

    monkeypatch.setattr(checkpoint, "write_new_file", short_write)
    with pytest.raises(UserError, match=r"corrupt"):
        _save(run / "checkpoint", model, optimizers, 3)
    monkeypatch.undo()
    assert read_state(run / "checkpoint")["step"] == 2
    assert read_state(run / "checkpoint.prev-1")["step"] == 1
    assert _temporaries(run) == []


def test_a_crash_inside_the_rotation_leaves_the_newest_complete_one_first(
        trained, tmp_path: Path, monkeypatch) -> None:
    model, optimizers = trained
    run = tmp_path / "run"
    _save(run / "checkpoint", model, optimizers, 1)
    _save(run / "checkpoint", model, optimizers, 2)
    real_replace = os.replace

    def killed_before_the_last_rename(src, dst) -> None:
        if Path(dst).name == "checkpoint":
            raise KeyboardInterrupt  # a second Ctrl-C between the renames
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", killed_before_the_last_rename)
    with pytest.raises(KeyboardInterrupt):
        _save(run / "checkpoint", model, optimizers, 3)
    monkeypatch.undo()
    assert not (run / "checkpoint").exists()  # step 1 fell off, step 2 moved down
    assert read_state(run / "checkpoint")["step"] == 2  # readers resolve to the newest left
    found = newest_valid_checkpoint(run)
    assert found.path.name == "checkpoint.prev-1" and found.note is None
    _save(run / "checkpoint", model, optimizers, 3)
    assert [read_state(run / n)["step"] for n in ("checkpoint", "checkpoint.prev-1")] == [3, 2]


# --- the newest checkpoint that verifies ----------------------------------------------------------

def test_newest_valid_checkpoint_falls_back_and_says_so(trained, tmp_path: Path) -> None:
    model, optimizers = trained
    run = tmp_path / "run"
    _save(run / "checkpoint", model, optimizers, 1)
    _save(run / "checkpoint", model, optimizers, 2)
    assert newest_valid_checkpoint(run).state["step"] == 2
    assert newest_valid_checkpoint(run).note is None
    weights = run / "checkpoint" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    found = newest_valid_checkpoint(run)
    assert found.path == run / "checkpoint.prev-1" and found.state["step"] == 1
    assert "checkpoint failed verification" in found.note and "step 1" in found.note
    assert (run / "checkpoint").exists()  # read-only by default
    found = newest_valid_checkpoint(run, set_aside=True)
    assert "checkpoint.corrupt-1" in found.note and not (run / "checkpoint").exists()
    # the next save keeps the good one instead of pushing it off the chain
    _save(run / "checkpoint", model, optimizers, 2)
    assert [read_state(run / n)["step"] for n in ("checkpoint", "checkpoint.prev-1")] == [2, 1]
    assert (run / "checkpoint.corrupt-1" / "model.safetensors").read_bytes() == bytes(data)


def test_newest_valid_checkpoint_when_none_verifies(trained, tmp_path: Path) -> None:
    model, optimizers = trained
    with pytest.raises(UserError, match=r"has no checkpoint"):
        newest_valid_checkpoint(tmp_path)
    assert sweep_orphans(tmp_path / "missing") == []
    _save(tmp_path / "checkpoint", model, optimizers, 1)
    (tmp_path / "checkpoint" / "state.json").write_text("{")
    with pytest.raises(UserError, match=r"no checkpoint of .* verifies .*state.json.*corrupt"):
        newest_valid_checkpoint(tmp_path)


# --- orphans ----------------------------------------------------------------------------------------

_KILLED_SAVE = """
import os, signal, sys, torch
from genlab import checkpoint
sys.path.insert(0, {tests!r})
from test_checkpoint_safety import _trained, _meta
model, optimizers = _trained()
real = checkpoint.write_new_file
def write_then_die(path, data):
    real(path, data)
    if path.name == "optimizers.safetensors":
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint.write_new_file = write_then_die
checkpoint.save_checkpoint({out!r}, model, meta=_meta(model, 7), optimizers=optimizers)
"""


def test_sweep_removes_what_kill_9_left_and_nothing_else(trained, tmp_path: Path) -> None:
    model, optimizers = trained
    run = tmp_path / "run"
    _save(run / "checkpoint", model, optimizers, 1)
    code = _KILLED_SAVE.format(tests=str(Path(__file__).parent), out=str(run / "checkpoint"))
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(checkpoint.__file__).parents[1]),
                                                       os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    (orphan,) = _temporaries(run)
    assert orphan.startswith(".checkpoint.tmp-") and (run / orphan / "model.safetensors").is_file()
    # the other temporaries genlab makes, and look-alikes that are not genlab's
    (run / "samples").mkdir()
    for name in ("samples/.step_0000002.png.tmp-abcd_123", ".run.json.tmp-0123abcd",
                 ".metrics.jsonl.k2j4h5g6.tmp"):
        (run / name).write_text("partial")
    keep = ["notes.tmp-abcd1234", ".notes.tmp", ".x.tmp-short", "samples/step_0000002.png"]
    for name in keep:
        (run / name).write_text("the user's")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "data").write_text("precious")
    (run / ".link.tmp-abcdefgh").symlink_to(outside)
    removed = sweep_orphans(run)
    assert sorted(p.relative_to(run).as_posix() for p in removed) == sorted(
        [orphan, "samples/.step_0000002.png.tmp-abcd_123", ".run.json.tmp-0123abcd",
         ".metrics.jsonl.k2j4h5g6.tmp"])
    assert all((run / name).read_text() == "the user's" for name in keep)
    assert (run / ".link.tmp-abcdefgh").is_symlink() and (outside / "data").read_text() == "precious"
    assert read_state(run / "checkpoint")["step"] == 1  # the save that was killed changed nothing


def test_sweep_drops_a_legacy_old_copy_only_when_the_newest_verifies(trained,
                                                                      tmp_path: Path) -> None:
    model, optimizers = trained
    _save(tmp_path / "checkpoint", model, optimizers, 2)
    shutil.copytree(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")
    (tmp_path / "checkpoint" / "state.json").write_text("{}")
    assert sweep_orphans(tmp_path) == []  # the newest is damaged: the old copy stays
    _save(tmp_path / "checkpoint", model, optimizers, 3, keep=1)
    shutil.copytree(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")
    assert sweep_orphans(tmp_path) == [tmp_path / ".checkpoint.old"]


# --- links ------------------------------------------------------------------------------------------

def test_a_symlinked_checkpoint_is_refused_and_its_target_untouched(trained,
                                                                   tmp_path: Path) -> None:
    model, optimizers = trained
    outside = tmp_path / "elsewhere"
    _save(outside, model, optimizers, 1)
    before = {p.name: p.read_bytes() for p in outside.iterdir()}
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint").symlink_to(outside)
    for _ in range(2):  # and again: no stale link left behind that breaks every later save
        with pytest.raises(UserError, match=r"checkpoint is a symbolic link"):
            _save(run / "checkpoint", model, optimizers, 2)
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == before
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint"]
    (run / "checkpoint").unlink()
    (run / "checkpoint.prev-1").symlink_to(outside)  # a kept slot the rotation would move
    with pytest.raises(UserError, match=r"checkpoint.prev-1 is a symbolic link"):
        _save(run / "checkpoint", model, optimizers, 2)


def test_append_line_and_atomic_write_refuse_links(tmp_path: Path) -> None:
    target = tmp_path / "target.txt"
    target.write_text("someone else's\n")
    run = tmp_path / "run"
    run.mkdir()
    for name in ("metrics.jsonl", "run.json"):
        (run / name).symlink_to(target)
    (run / "loss.png").symlink_to(tmp_path / "missing")  # dangling
    with pytest.raises(UserError, match=r"metrics.jsonl is a symbolic link"):
        files.append_line(run / "metrics.jsonl", '{"step": 1}')
    with pytest.raises(UserError, match=r"run.json is a symbolic link"):
        files.atomic_write_text(run / "run.json", "{}")
    with pytest.raises(UserError, match=r"loss.png is a symbolic link"):
        files.atomic_write_bytes(run / "loss.png", b"png")
    (run / "samples").symlink_to(tmp_path)
    with pytest.raises(UserError, match=r"samples is a symbolic link"):
        files.real_dir(run / "samples")
    with pytest.raises(UserError, match=r"run.json is a symbolic link"):
        files.refuse_symlinks(run, ("checkpoint", "run.json"))
    assert target.read_text() == "someone else's\n" and not (tmp_path / "missing").exists()
    assert _temporaries(run) == []
    os.mkfifo(run / "fifo")
    with pytest.raises(UserError, match=r"not a regular file"):
        files.append_line(run / "fifo", "x")  # fails at once instead of waiting for a reader


def test_append_line_appends_whole_lines_with_the_umask(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "metrics.jsonl"
    old = os.umask(0o027)
    try:
        files.append_line(path, '{"step": 1}')
    finally:
        os.umask(old)
    files.append_line(path, '{"step": 2}\n')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'
    assert path.stat().st_mode & 0o777 == 0o640

    def half_then_full(fd, data) -> None:
        os.write(fd, data[:4])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_write_all", half_then_full)
    with pytest.raises(DiskFullError, match=r"metrics.jsonl keeps its earlier lines"):
        files.append_line(path, '{"step": 3}')
    assert path.read_text() == '{"step": 1}\n{"step": 2}\n'


# --- non-finite values ------------------------------------------------------------------------------

def test_non_finite_weights_or_optimizer_state_are_never_saved(tmp_path: Path) -> None:
    model, optimizers = _trained()
    _save(tmp_path / "checkpoint", model, optimizers, 1)
    before = sha256_file(tmp_path / "checkpoint" / "model.safetensors")
    with torch.no_grad():
        model.generator.net[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"generator.net.0.weight holds NaN or inf \(1 of \d+ values\)"):
        _save(tmp_path / "checkpoint", model, optimizers, 2)
    with torch.no_grad():
        model.generator.net[0].weight[0, 0, 0, 0] = 0.0
    slot = next(iter(optimizers["generator"].state.values()))
    first = (0,) * slot["exp_avg_sq"].dim()
    slot["exp_avg_sq"][first] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"optimizer 'generator' state 0.exp_avg_sq holds "
                                                 "NaN or inf"):
        _save(tmp_path / "checkpoint", model, optimizers, 2)
    slot["exp_avg_sq"][first] = 0.0
    with pytest.raises(UserError, match=r"metadata holds NaN or inf at best_value"):
        save_checkpoint(tmp_path / "checkpoint", model, meta={**_meta(model, 2),
                                                              "best_value": float("nan")})
    assert read_state(tmp_path / "checkpoint")["step"] == 1
    assert sha256_file(tmp_path / "checkpoint" / "model.safetensors") == before
    assert _temporaries(tmp_path) == []


def test_non_finite_weights_are_refused_on_load(trained, tmp_path: Path) -> None:
    model, optimizers = trained
    ckpt = _save(tmp_path / "checkpoint", model, optimizers, 1)
    tensors = load_file(ckpt / "model.safetensors")
    tensors["generator.net.0.weight"][0, 0, 0, 0] = float("inf")
    save_file(tensors, ckpt / "model.safetensors")
    _rehash(ckpt)
    verify_checkpoint(ckpt)  # the manifest matches: only the values tell
    with pytest.raises(UserError, match=r"generator.net.0.weight holds NaN or inf"):
        load_weights(ckpt, _model())
    fresh = _model()
    check_finite(fresh, where="fresh")  # a finite model passes
    check_finite({"huge": torch.full((10,), 3e38)}, where="huge")  # its sum overflows; it is finite
    fresh.generator.net[0].weight.data.fill_(float("nan"))
    with pytest.raises(UserError, match=r"fresh: generator.net.0.weight holds NaN or inf"):
        check_finite(fresh, where="fresh")


# --- clear errors for damaged or mismatched checkpoints --------------------------------------------

def _damaged(tmp_path: Path, trained, name: str, data: bytes) -> Path:
    model, optimizers = trained
    ckpt = _save(tmp_path / "checkpoint", model, optimizers, 1)
    (ckpt / name).write_bytes(data)
    _rehash(ckpt)
    return ckpt


@pytest.mark.parametrize("name", ["model.safetensors", "optimizers.safetensors",
                                  "rng.safetensors"])
def test_a_file_that_is_not_safetensors_is_named(trained, tmp_path: Path, name: str) -> None:
    ckpt = _damaged(tmp_path, trained, name, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(UserError, match=rf"{name} is not a safetensors file") as e:
        verify_checkpoint(ckpt)
    assert "do not fit" not in str(e.value) and "\n" not in str(e.value)
    model, optimizers = _trained()
    with pytest.raises(UserError, match=rf"{name} is not a safetensors file"):
        {"model.safetensors": lambda: load_weights(ckpt, model),
         "optimizers.safetensors": lambda: load_optimizers(ckpt, optimizers,
                                                           json.loads((ckpt / "state.json")
                                                                      .read_text())),
         "rng.safetensors": lambda: load_rng(ckpt)}[name]()


def test_optimizer_and_rng_files_that_do_not_fit_are_user_errors(trained, tmp_path: Path) -> None:
    model, optimizers = trained
    ckpt = _save(tmp_path / "checkpoint", model, optimizers, 1)
    rng_bytes = (ckpt / "rng.safetensors").read_bytes()
    state = read_state(ckpt)
    (ckpt / "rng.safetensors").write_bytes((ckpt / "optimizers.safetensors").read_bytes())
    (ckpt / "optimizers.safetensors").write_bytes(rng_bytes)  # swapped: valid files, wrong content
    _rehash(ckpt)
    _, fresh_opts = _trained()
    with pytest.raises(UserError, match=r"the state of optimizer 'generator' does not fit"):
        load_optimizers(ckpt, fresh_opts, state)
    before = torch.get_rng_state()
    with pytest.raises(UserError, match=r"holds no valid RNG state for rank 0"):
        load_rng(ckpt)
    assert torch.equal(torch.get_rng_state(), before)
    # a layout that names tensors of the wrong shape
    ckpt = _save(tmp_path / "other", model, optimizers, 1)
    tensors = load_file(ckpt / "optimizers.safetensors")
    key = next(k for k in tensors if k.endswith("exp_avg"))
    tensors[key] = torch.zeros(3)
    save_file(tensors, ckpt / "optimizers.safetensors")
    _rehash(ckpt)
    with pytest.raises(UserError, match=r"state exp_avg has shape \[3\], its parameter"):
        load_optimizers(ckpt, _trained()[1], read_state(ckpt))


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "state.json is not valid JSON"),
    ("[1, 2]", "state.json holds no checkpoint state"),
    ('{"model": "dcgan", "model_config": {}}', "state.json has no valid 'step'"),
])
def test_a_damaged_state_file_is_named(trained, tmp_path: Path, text: str, message: str) -> None:
    ckpt = _damaged(tmp_path, trained, "state.json", text.encode())
    with pytest.raises(UserError, match=message):
        read_state(ckpt)


def test_a_shape_mismatch_names_the_parameter_and_both_shapes(trained, tmp_path: Path) -> None:
    model, optimizers = trained
    ckpt = _save(tmp_path / "checkpoint", model, optimizers, 1)
    wider = _model(ngf=12)
    name = "generator.net.0.weight"
    with pytest.raises(UserError) as e:
        load_weights(ckpt, wider)
    message = str(e.value)
    assert (f"{name} has shape {list(model.state_dict()[name].shape)} in the checkpoint, "
            f"{list(wider.state_dict()[name].shape)} in the model") in message
    assert "\n" not in message


def test_a_deleted_batch_norm_buffer_is_refused(trained, tmp_path: Path) -> None:
    """BatchNorm fills in a missing num_batches_tracked without a word; the loader must not."""
    model, optimizers = trained
    ckpt = _save(tmp_path / "checkpoint", model, optimizers, 1)
    tensors = load_file(ckpt / "model.safetensors")
    del tensors["generator.net.1.num_batches_tracked"]
    save_file(tensors, ckpt / "model.safetensors")
    _rehash(ckpt)
    with pytest.raises(UserError, match=r"lacks 1 of its tensors "
                                        r"\(generator.net.1.num_batches_tracked\)"):
        load_weights(ckpt, _model())
    tensors["extra.weight"] = torch.zeros(2)
    tensors["generator.net.1.num_batches_tracked"] = torch.tensor(1)
    save_file(tensors, ckpt / "model.safetensors")
    with pytest.raises(UserError, match=r"holds 1 tensor\(s\) it lacks \(extra.weight\)"):
        load_weights(ckpt, _model())


def test_tied_weights_round_trip(tmp_path: Path) -> None:
    model, optimizers = _trained("gpt")
    ckpt = _save(tmp_path / "checkpoint", model, optimizers, 1)
    stored = load_file(ckpt / "model.safetensors")
    assert ("lm_head.weight" in stored) != ("wte.weight" in stored)  # stored once
    fresh = _model("gpt")
    load_weights(ckpt, fresh)
    assert fresh.lm_head.weight is fresh.wte.weight
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    fresh_opts = fresh.configure_optimizers(TrainConfig())
    load_optimizers(ckpt, fresh_opts, read_state(ckpt))
    assert load_rng(ckpt) is True


def test_wrong_model_kind_and_an_edited_run_json(trained, tmp_path: Path) -> None:
    model, optimizers = trained
    ckpt = save_checkpoint(tmp_path / "checkpoint", model, optimizers=optimizers, meta={
        **_meta(model, 1), "train_config": {"lr": 2e-4, "steps": 10}})
    state = read_state(ckpt)
    with pytest.raises(UserError, match=r"holds a dcgan model, not a vae"):
        check_model_kind(state, "vae", ckpt)
    record = {"model": "dcgan", "model_config": json.loads(json.dumps(model.config.__dict__)),
              "train_config": {"lr": 2e-4, "steps": 10}}
    assert check_against_record(record, state, ckpt) == []  # agrees
    # a key a resume may change: the checkpoint's value is used, and the user is told
    (note,) = check_against_record({**record, "train_config": {"lr": 0.1, "steps": 10}}, state,
                                   ckpt)
    assert re.search(r"run.json has train.lr=0.1 but the checkpoint .* 0.0002; using the "
                     r"checkpoint's \(to change it on resume: --set train.lr=VALUE\)", note)
    with pytest.raises(UserError, match=r"run.json has train.batch_size=4 .*None; run.json was "
                                        r"edited .*cannot change train.batch_size"):
        check_against_record({**record, "train_config": {**record["train_config"],
                                                         "batch_size": 4}}, state, ckpt)
    with pytest.raises(UserError, match=r"run.json has model.nz=3 "):
        check_against_record({**record, "model_config": {**record["model_config"], "nz": 3}},
                             state, ckpt)
    with pytest.raises(UserError, match=r"holds a dcgan model, not a vae"):
        check_against_record({**record, "model": "vae"}, state, ckpt)
    assert version_warnings(state) == []
    (warning,) = version_warnings({**state, "genlab_version": "0.0.1"})
    assert "genlab 0.0.1" in warning and "bit-identical" in warning


# --- full disks and permissions --------------------------------------------------------------------

def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(trained, tmp_path: Path,
                                                                   monkeypatch) -> None:
    model, optimizers = trained
    _save(tmp_path / "checkpoint", model, optimizers, 1)
    real_write = checkpoint.write_new_file

    def full_after_the_weights(path, data) -> None:
        if Path(path).name != "model.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "write_new_file", full_after_the_weights)
    with pytest.raises(DiskFullError) as e:
        _save(tmp_path / "checkpoint", model, optimizers, 2)
    message = str(e.value)
    assert e.value.exit_code == 2 and "\n" not in message
    assert f"no space left on the device of {tmp_path / 'checkpoint'}" in message
    assert "needs about" in message and "the previous checkpoint is intact" in message
    monkeypatch.undo()
    assert read_state(tmp_path / "checkpoint")["step"] == 1 and _temporaries(tmp_path) == []
    monkeypatch.setattr(files, "_write_all", lambda fd, data: (_ for _ in ()).throw(
        OSError(errno.EDQUOT, "Disk quota exceeded")))
    (tmp_path / "run.json").write_text("old")
    with pytest.raises(DiskFullError, match=r"run.json was left as it was"):
        files.atomic_write_text(tmp_path / "run.json", "new")
    assert (tmp_path / "run.json").read_text() == "old" and _temporaries(tmp_path) == []


def test_a_full_disk_while_training_is_one_cli_line_exit_2(run_cli, idx_spec: str,
                                                           tmp_path: Path, monkeypatch) -> None:
    def full(path, data) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint, "write_new_file", full)
    code, _, err = run_cli("train", "dcgan", "--data", idx_spec, "--steps", "1", "--batch-size",
                           "8", "--device", "cpu", "--out", tmp_path / "run", "--set",
                           "model.ngf=4", "--set", "model.ndf=4", "--set", "model.nz=8")
    assert code == 2
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("genlab: error: no space left on the device of") and "needs about" in line
    assert "Traceback" not in err


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_checkpoint_file_follows_the_umask(trained, tmp_path: Path, umask: int) -> None:
    model, optimizers = trained
    old = os.umask(umask)
    try:
        ckpt = _save(tmp_path / "checkpoint", model, optimizers, 1)
    finally:
        os.umask(old)
    assert ckpt.stat().st_mode & 0o777 == 0o777 & ~umask
    for f in ckpt.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name
