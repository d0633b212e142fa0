"""The run-folder lock (issue 11, item 3): one trainer per folder, a clear error naming the lock and
the holder's PID for the second, a dead holder's lock detected and taken over. The holders here are
real other processes (subprocess), killed with SIGKILL where the test needs a dead one."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from genlab.errors import UserError
from genlab.runlock import LOCK_FILE, RunLock, RunLockedError, lock_holder, read_lock

_HOLDER = """
import sys
from genlab.runlock import RunLock
lock = RunLock(sys.argv[1], command="genlab train holder").acquire()
print("locked", flush=True)
sys.stdin.read()  # hold until the test closes our stdin (or kills us)
lock.release()
print("released", flush=True)
"""


def _holder(run_dir: Path) -> subprocess.Popen:
    """Another process that takes the lock and holds it; returns once it holds it."""
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get(
        "PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(run_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    assert line == "locked\n", proc.stderr.read()
    return proc


def test_a_second_process_is_refused_with_the_lock_and_pid(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(RunLockedError) as e:
            RunLock(tmp_path).acquire()
        message = str(e.value)
        assert f"process {holder.pid} on {socket.gethostname()}" in message
        assert str(tmp_path / LOCK_FILE) in message and "genlab train holder" in message
        assert f"kill {holder.pid}" in message and "\n" not in message
        assert e.value.exit_code == 2
        assert lock_holder(tmp_path).pid == holder.pid
        assert read_lock(tmp_path).command == "genlab train holder"
    finally:
        holder.stdin.close()
        assert holder.stdout.readline() == "released\n"
        holder.wait(timeout=30)
    assert not (tmp_path / LOCK_FILE).exists()  # released on exit: the file is gone
    assert lock_holder(tmp_path) is None
    with RunLock(tmp_path) as lock:
        assert lock.held and lock.stale is None and lock.note is None


def test_a_lock_left_by_kill_9_is_detected_and_taken_over(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    holder.kill()  # SIGKILL: no cleanup runs, the lock file stays with its PID
    holder.wait(timeout=30)
    assert holder.returncode == -signal.SIGKILL
    assert read_lock(tmp_path).pid == holder.pid  # the file is still there...
    assert lock_holder(tmp_path) is None  # ...but nobody holds it
    with RunLock(tmp_path, command="genlab train --resume") as lock:
        assert lock.stale.pid == holder.pid
        assert f"left by process {holder.pid}" in lock.note
        assert "no longer running" in lock.note
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["command"] == "genlab train --resume"
        assert lock_holder(tmp_path).pid == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_two_locks_in_one_process_conflict_and_release_is_idempotent(tmp_path: Path) -> None:
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunLockedError, match=f"process {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    first.release()
    second = RunLock(tmp_path).acquire()
    assert second.held
    second.release()


def test_disabled_lock_does_nothing(tmp_path: Path) -> None:
    """Ranks other than 0 of a torchrun job: never refused, never write a lock file."""
    with RunLock(tmp_path, enabled=False) as alone:
        assert not alone.held and not (tmp_path / LOCK_FILE).exists()
    with RunLock(tmp_path), RunLock(tmp_path, enabled=False) as other:  # rank 0 holds it
        assert not other.held


def test_a_symlinked_lock_file_and_a_missing_folder_are_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("not genlab's")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).symlink_to(target)
    with pytest.raises(UserError, match="is a symbolic link"):
        RunLock(run).acquire()
    assert target.read_text() == "not genlab's"
    with pytest.raises(UserError, match="is not a folder"):
        RunLock(tmp_path / "missing").acquire()


def test_a_garbled_stale_lock_file_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / LOCK_FILE).write_text("\x00garbage")
    with RunLock(tmp_path) as lock:
        assert lock.stale is not None and lock.stale.pid is None
        assert "left by another process" in lock.note
