"""genlab._threads: the OpenMP wait policy is set before torch loads, and never over the user's."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genlab._threads import WAIT_VARIABLES, busy_cores, configure_threads

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.parametrize(("taken", "wait"), [(1.0, {"OMP_WAIT_POLICY": "PASSIVE"}),
                                             (0.0, {"GOMP_SPINCOUNT": "10000"}),
                                             (None, {"GOMP_SPINCOUNT": "10000"})])
def test_the_wait_policy_follows_the_load_at_start(monkeypatch: pytest.MonkeyPatch, taken,
                                                   wait: dict[str, str]) -> None:
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh CLI process
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    env: dict[str, str] = {"OMP_NUM_THREADS": "2"}  # the user's: only the wait policy is chosen
    assert configure_threads(env, busy=lambda: taken) == wait
    assert env == {"OMP_NUM_THREADS": "2", **wait}


@pytest.mark.parametrize("name", WAIT_VARIABLES)
def test_a_users_own_setting_wins(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.delitem(sys.modules, "torch")
    env = {name: "ACTIVE" if name == "OMP_WAIT_POLICY" else "1000"}
    before = dict(env)
    assert configure_threads(env, busy=lambda: 0.0) == {}
    assert env == before


@pytest.mark.parametrize(("taken", "threads"), [(0.0, None), (0.3, None), (1.0, 1), (1.6, 1),
                                                (None, None)])
def test_threads_leave_the_cores_other_programs_keep_busy(monkeypatch: pytest.MonkeyPatch,
                                                          taken, threads) -> None:
    monkeypatch.delitem(sys.modules, "torch")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})  # a 2-core machine
    env: dict[str, str] = {}
    chosen = configure_threads(env, busy=lambda: taken)
    assert chosen.get("OMP_NUM_THREADS") == (None if threads is None else str(threads))
    # fewer threads because a core is busy: passive; all cores because none is: a short spin
    assert (env.get("OMP_WAIT_POLICY"), env.get("GOMP_SPINCOUNT")) == (
        ("PASSIVE", None) if threads else (None, "10000"))
    user = {"OMP_NUM_THREADS": "2"}  # the user's own count is never changed
    configure_threads(user, busy=lambda: 2.0)
    assert user["OMP_NUM_THREADS"] == "2"


def test_busy_cores_reads_the_kernels_counters(tmp_path: Path, monkeypatch) -> None:
    stat = tmp_path / "stat"
    readings = iter(["cpu  100 0 100 800 0 0 0 0 0 0\n", "cpu  200 0 100 900 0 0 0 0 0 0\n",
                     "cpu  200 0 100 900 0 0 0 0 0 0\n"])
    monkeypatch.setattr("time.sleep", lambda s: stat.write_text(next(readings)))
    stat.write_text(next(readings))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _busy(stat) == pytest.approx(1.0)  # 100 of 200 ticks busy on 2 cores: one core
    assert busy_cores(stat=str(tmp_path / "none")) is None


def _busy(stat: Path) -> float | None:
    return busy_cores(interval=0.0, stat=str(stat))


def test_does_nothing_once_torch_is_loaded() -> None:
    assert "torch" in sys.modules  # the test suite imported it; libgomp has read its settings
    env: dict[str, str] = {}
    assert configure_threads(env) == {}
    assert env == {}


def _libgomp() -> str:
    """The OpenMP runtime torch's CPU wheels ship (GNU libgomp), without importing torch."""
    spec = importlib.util.find_spec("torch")
    assert spec is not None and spec.submodule_search_locations
    found = sorted(Path(spec.submodule_search_locations[0], "lib").glob("libgomp*.so*"))
    assert found, "torch ships no libgomp here"
    return str(found[0])


@pytest.mark.parametrize(("configure", "taken", "spin_count"),
                         [(True, 1.0, "0"), (True, 0.0, "10000"), (False, 0.0, "300000")])
def test_libgomp_reads_the_policy_when_set_before_it_loads(configure: bool, taken: float,
                                                           spin_count: str) -> None:
    # OMP_DISPLAY_ENV=verbose makes libgomp print, as it loads, the settings it read; PASSIVE
    # means a spin count of 0, its default (nothing set) 300,000 spins before a thread sleeps
    code = ("import ctypes, sys; from genlab._threads import configure_threads; "
            f"configure_threads(busy=lambda: {taken}) if {configure} else None; "
            "ctypes.CDLL(sys.argv[1])")
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(PYTHONPATH=SRC, OMP_DISPLAY_ENV="verbose")
    out = subprocess.run([sys.executable, "-c", code, _libgomp()], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"GOMP_SPINCOUNT = '{spin_count}'" in out.stderr, out.stderr


def test_resume_goes_on_with_the_runs_own_thread_count(train_tiny, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from genlab.rundir import read_run
    from genlab.runs import TrainRequest, train

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # not the user's: genlab's choice
    run = train_tiny(tmp_path / "run", steps=2)
    assert read_run(run)["environment"]["threads"] == torch.get_num_threads() == 1
    try:
        torch.set_num_threads(2)  # as a later, quieter start would choose
        train(TrainRequest(resume=str(run), steps=4, device="cpu"))
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's own count wins
        train(TrainRequest(resume=str(run), steps=6, device="cpu"))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
