"""Data-parallel training through torchrun, on CPU with gloo (docs/distributed.md).

Each torchrun launch starts three Python processes that import torch (about 10 s on a busy 2-core
machine), so the launches are few and each checks several things.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from genlab import distributed
from genlab.checkpoint import load_rng, save_checkpoint
from genlab.config import TrainConfig
from genlab.distributed import DistContext, all_gather_tensor, local_share, trainable_networks
from genlab.errors import UserError

TINY_GPT = ("--precision", "fp32", "--device", "cpu", "--batch-size", "8",
            "--set", "model.dropout=0", "--set", "model.n_layer=1", "--set", "model.n_head=2",
            "--set", "model.n_embd=16", "--set", "model.block_size=16",
            "--set", "train.lr=1e-2", "--set", "train.warmup_steps=0",
            "--set", "train.lr_schedule=constant",  # a run of 2 steps resumed to 4 keeps the lr
            "--set", "train.grad_accum=2", "--set", "train.log_every=1",
            "--set", "train.sample_every=0", "--set", "train.checkpoint_every=0",
            "--set", "train.eval_every=2")
TINY_GAN = ("--device", "cpu", "--batch-size", "8", "--set", "model.hidden=8", "--set", "model.nz=8",
            "--set", "train.log_every=1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(*args: str | Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            f"--master_port={free_port()}", *extra, "-m", "genlab", *map(str, args)]


def torchrun(*args: str | Path, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(torchrun_command(*args, extra=extra), capture_output=True, text=True,
                          env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# --- through torchrun ------------------------------------------------------------------------------

def test_two_processes_match_one_and_checkpoints_move_between_world_sizes(tmp_path, text_file,
                                                                           run_cli):
    """A GPT without dropout is deterministic given its batch, so sharding the global batch over
    2 ranks (and 2 micro-batches each, with no_sync) may change only the floating-point order."""
    gpt = ("train", "gpt", "--data", f"text:{text_file}", *TINY_GPT)
    one, two_one, one_two = tmp_path / "one", tmp_path / "two-one", tmp_path / "one-two"
    assert run_cli(*gpt, "--steps", "4", "--out", one)[0] == 0

    # 2 processes to step 2, then 1 process to step 4
    torchrun(*gpt, "--steps", "2", "--out", two_one)
    rng = load_file(str(two_one / "checkpoint" / "rng.safetensors"))
    assert set(rng) == {"cpu.rank0", "cpu.rank1"}
    assert not torch.equal(rng["cpu.rank0"], rng["cpu.rank1"])  # each rank its own stream
    # logged losses average the ranks; the validation loss at step 2 is evaluated on every rank
    for single, shared in zip(metrics(one)[:3], metrics(two_one), strict=True):
        key = "loss" if "loss" in single else "eval/val_loss"
        assert shared[key] == pytest.approx(single[key], rel=1e-5)
    assert (two_one / "best" / "model.safetensors").is_file()
    code, _, err = run_cli("train", "--resume", two_one, "--steps", "4", "--device", "cpu")
    assert code == 0 and "reseeded" in err

    # 1 process to step 2, then 2 processes to step 4
    assert run_cli(*gpt, "--steps", "2", "--out", one_two)[0] == 0
    at_two = weights(one_two)
    torchrun("train", "--resume", one_two, "--steps", "4", "--device", "cpu")

    reference = weights(one)
    assert max_difference(at_two, reference) > 1e-3  # the last two steps moved the weights...
    for run in (two_one, one_two):  # ...and did so identically with 1 and 2 processes
        assert max_difference(weights(run), reference) < 1e-5
        assert json.loads((run / "checkpoint" / "state.json").read_text())["step"] == 4


def test_wgan_gp_trains_under_ddp_and_only_rank0_writes(tmp_path, idx_spec, run_cli):
    """The critic runs three times per D step (real, fake, the penalty's interpolates) and the
    penalty backpropagates through a gradient (create_graph=True), all inside DDP."""
    run, logs = tmp_path / "gan", tmp_path / "logs"
    torchrun("train", "gan", "--data", idx_spec, *TINY_GAN, "--steps", "3", "--out", run,
             "--set", "model.loss=wgan-gp", "--set", "model.d_steps=2",
             "--set", "train.sample_every=2", "--set", "train.checkpoint_every=2",
             extra=("--log-dir", str(logs), "--redirects", "3"))

    rows = metrics(run)
    assert [row["step"] for row in rows] == [1, 2, 3]  # one writer, not two
    for row in rows:
        assert all(math.isfinite(row[k]) for k in ("loss", "d_loss", "g_loss", "gp"))
        assert row["gp"] > 0
    assert {p.name for p in run.iterdir()} == {"run.json", "metrics.jsonl", "samples", "samples.png",
                                              "loss.png", "checkpoint", "checkpoint.prev-1"}
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000002.png",
                                                                   "step_0000003.png"]
    assert set(load_file(str(run / "checkpoint" / "rng.safetensors"))) == {"cpu.rank0",
                                                                           "cpu.rank1"}
    assert all(torch.isfinite(t).all() for t in weights(run).values())
    (rank0,) = logs.glob("*/attempt_0/0")
    (rank1,) = logs.glob("*/attempt_0/1")
    assert "run folder" in (rank0 / "stderr.log").read_text()
    assert (rank0 / "stdout.log").read_text().strip() == str(run)
    assert (rank1 / "stdout.log").read_text() == "" and (rank1 / "stderr.log").read_text() == ""

    # the 2-process checkpoint (EMA generator and its step counter included) resumes alone
    code, _, err = run_cli("train", "--resume", run, "--steps", "4", "--device", "cpu")
    assert code == 0, err
    assert [row["step"] for row in metrics(run)][-1] == 4


def test_a_stalled_rank_stops_the_others_with_one_line(tmp_path, idx_spec):
    """Rank 1 freezes (SIGSTOP): rank 0 must not wait forever but leave after the timeout, with a
    message saying what happened and how to continue."""
    run, marker = tmp_path / "gan", uuid.uuid4().hex
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GENLAB_DIST_TIMEOUT": "3",
           "GENLAB_TEST_MARKER": marker}
    command = torchrun_command("train", "gan", "--data", idx_spec, *TINY_GAN, "--steps", "100000",
                               "--out", run)
    launcher = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=env)
    try:
        wait_for(lambda: (run / "metrics.jsonl").is_file()
                 and len(metrics(run)) >= 2, launcher, seconds=120)
        rank0, rank1 = (worker_pid(marker, rank) for rank in (0, 1))
        os.kill(rank1, signal.SIGSTOP)
        stalled_at = time.monotonic()
        wait_for(lambda: not pid_alive(rank0), launcher, seconds=60)
        waited = time.monotonic() - stalled_at
        os.kill(rank1, signal.SIGKILL)  # else torchrun waits 30 s for the frozen one
        _, err = launcher.communicate(timeout=60)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    assert 3 <= waited < 45
    (line,) = [ln for ln in err.splitlines() if ln.startswith("genlab: error: rank 0:")]
    assert "died or stopped answering" in line and "--resume" in line
    assert "Traceback" not in err.split("genlab: error: rank 0:")[0]


def wait_for(condition, launcher: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if launcher.poll() is not None and not condition():
            raise AssertionError(f"torchrun ended early: {launcher.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {seconds} s")
        time.sleep(0.1)


def worker_pid(marker: str, rank: int) -> int:
    """The pid of the worker with this RANK among the processes started with our marker."""
    wanted = {f"GENLAB_TEST_MARKER={marker}".encode(), f"RANK={rank}".encode()}
    for proc in Path("/proc").iterdir():
        try:
            env = set((proc / "environ").read_bytes().split(b"\0")) if proc.name.isdigit() else set()
        except OSError:
            continue
        if wanted <= env:
            return int(proc.name)
    raise AssertionError(f"no worker with RANK={rank}")


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited, its parent has not reaped it yet


# --- in one process --------------------------------------------------------------------------------

def test_a_single_process_is_rank_zero_of_one_and_wraps_nothing(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    ctx = DistContext.from_env()
    assert (ctx.rank, ctx.world_size, ctx.active, ctx.is_main) == (0, 1, False, True)
    assert ctx.wrap(nn.Linear(2, 2), {"main": None}) is None
    assert ctx.any_rank(True) and not ctx.any_rank(False)
    values = {"loss": torch.tensor(2.0)}
    assert ctx.mean_over_ranks(values) is values
    t = torch.arange(6).view(3, 2)
    assert all_gather_tensor(t) is t
    assert local_share(10) == (0, 10)


def test_local_share_splits_items_over_ranks_exactly_once(monkeypatch):
    covered = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "_rank_world", lambda rank=rank: (rank, 3))
        start, count = local_share(10)
        covered += range(start, start + count)
    assert covered == list(range(10))


def test_the_global_batch_must_split_over_ranks_and_micro_batches():
    DistContext(world_size=2).validate(TrainConfig(batch_size=8, grad_accum=2))
    with pytest.raises(UserError, match=r"divisible by the number of processes \(3\)"):
        DistContext(world_size=3).validate(TrainConfig(batch_size=8))


def test_a_bad_timeout_is_a_user_error(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "ten")
    with pytest.raises(UserError, match="GENLAB_DIST_TIMEOUT"):
        distributed.timeout_seconds()


def test_rng_states_resume_per_rank_or_are_reseeded_for_another_world_size(tmp_path):
    model = nn.Linear(2, 2)
    states = {f"cpu.rank{r}": torch.manual_seed(r).get_state() for r in range(2)}
    save_checkpoint(tmp_path / "ckpt", model, meta={}, rng=states)
    assert load_rng(tmp_path / "ckpt", rank=1, world_size=2)
    assert torch.equal(torch.get_rng_state(), states["cpu.rank1"])

    single = DistContext()
    draws = []
    for _ in range(2):
        single.restore_rng(tmp_path / "ckpt", seed=3, step=10)
        draws.append(torch.rand(3))
    assert torch.equal(draws[0], draws[1])  # reseeded the same way on every resume
    for state in states.values():
        torch.set_rng_state(state)
        assert not torch.equal(torch.rand(3), draws[0])


def test_weights_outside_the_child_networks_cannot_be_wrapped():
    class Stray(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Linear(2, 2)
            self.scale = nn.Parameter(torch.ones(1))

    with pytest.raises(TypeError, match="scale"):
        trainable_networks(Stray())
    frozen = Stray().requires_grad_(False)
    frozen.net.requires_grad_(True)
    assert list(trainable_networks(frozen)) == ["net"]


def test_peer_failures_are_recognised_and_other_errors_pass_through():
    ctx = DistContext(rank=2)
    gloo = RuntimeError("[/x/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed "
                        "by peer [127.0.0.1]:930. This is typically caused by a crash.")
    with pytest.raises(UserError, match=r"^rank 2: .*\(Connection closed by peer"), \
            ctx.failures_reported():
        raise gloo
    with pytest.raises(RuntimeError, match="shape mismatch"), ctx.failures_reported():
        raise RuntimeError("shape mismatch")
    assert re.match(r"^Connection", distributed._first_line(gloo))
