"""An advisory lock on a run folder while a process trains in it.

    with RunLock(run_dir, command="genlab train ...") as lock:
        if lock.note:               # a dead process's lock was taken over: say so
            log(lock.note)
        ...                         # train; nothing else can train in run_dir meanwhile

The lock is `fcntl.flock` on `RUN/.genlab.lock`, a file holding the holder's PID, host, start time
and command. The kernel drops a flock when its process dies, however it dies (kill -9 included), so
a lock file left behind by a dead process is *stale*: the next process takes it over and reports
whose it was. A second process while the holder lives gets a `RunLockedError` naming the lock file
and the holder's PID. The file is removed on release. Advisory: only genlab processes honour it.
Under torchrun rank 0 alone takes it (`enabled=is_main`); the other ranks are not refused.
POSIX only (Linux, macOS); on network file systems flock is as good as the server's lock support.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.errors import UserError
from genlab.files import refuse_symlink

LOCK_FILE = ".genlab.lock"
_ATTEMPTS = 20  # retries when a holder released (and removed) the file between open and flock


class RunLockedError(UserError):
    """Another live process holds the run folder's lock."""


@dataclass
class LockInfo:
    """What a lock file says about its holder."""

    pid: int | None
    host: str | None
    started: str | None
    command: str | None

    def describe(self) -> str:
        who = f"process {self.pid}" if self.pid is not None else "another process"
        if self.host:
            who += f" on {self.host}"
        return who + (f" (since {self.started})" if self.started else "")

    def running(self) -> bool | None:
        """Whether the process still runs; None when it is on another host (cannot tell)."""
        if self.pid is None or self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # it exists, as another user
        return True


def _parse(text: str) -> LockInfo | None:
    if not text.strip():
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    return LockInfo(pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                    host=str(data["host"]) if "host" in data else None,
                    started=str(data["started"]) if "started" in data else None,
                    command=str(data["command"]) if data.get("command") else None)


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def _open(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):
            refuse_symlink(path)
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"{path} is not a regular file; genlab keeps its run lock there; move it "
                        "away")
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        at_path = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (at_path.st_dev, at_path.st_ino) == (mine.st_dev, mine.st_ino)


class RunLock:
    """Hold `run_dir`'s lock from `acquire` (or `with`) to `release`. `run_dir` must exist.

    `stale` is the record of a dead holder that was taken over (None otherwise) and `note` the
    sentence to show the user about it. `enabled=False` makes a lock that does nothing (the
    ranks of a multi-process job other than rank 0)."""

    def __init__(self, run_dir: str | os.PathLike, *, command: str | None = None,
                 enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.command = command
        self.enabled = enabled
        self.stale: LockInfo | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    @property
    def note(self) -> str | None:
        if self.stale is None:
            return None
        gone = {False: "which is no longer running", None: "which no longer holds it",
                True: "which is running but no longer holds it"}[self.stale.running()]
        return (f"took over the lock {self.path} left by {self.stale.describe()}, {gone} (it "
                "ended without releasing it, e.g. killed)")

    def acquire(self) -> RunLock:
        if not self.enabled or self._fd is not None:
            return self
        if not self.run_dir.is_dir():
            raise UserError(f"{self.run_dir} is not a folder; cannot lock it")
        for _ in range(_ATTEMPTS):
            fd = _open(self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _parse(_read_fd(fd)) or LockInfo(None, None, None, None)
                os.close(fd)
                doing = f" running {holder.command!r}" if holder.command else ""
                raise RunLockedError(
                    f"{self.run_dir} is in use: {holder.describe()}{doing} holds its lock "
                    f"{self.path}; wait for it to finish or stop it"
                    + (f" (kill {holder.pid})" if holder.pid is not None else "")
                    + "; a live process's lock is never taken over") from None
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                break
            os.close(fd)  # we locked a file its holder had just removed: open the new one
        else:
            raise UserError(f"could not take the lock {self.path}: it keeps being replaced; is "
                            "another genlab starting in the same folder?")
        try:
            self.stale = _parse(_read_fd(fd))
            record = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": self.command}
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(record) + "\n").encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then drop the lock. Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # while still holding it: no one can be inside it
        finally:
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def read_lock(run_dir: str | os.PathLike) -> LockInfo | None:
    """What `run_dir`'s lock file says, held or stale; None when there is none."""
    path = Path(run_dir) / LOCK_FILE
    if path.is_symlink() or not path.is_file():
        return None
    try:
        return _parse(path.read_text(errors="replace"))
    except OSError:
        return None


def lock_holder(run_dir: str | os.PathLike) -> LockInfo | None:
    """The live holder of `run_dir`'s lock, or None when no process holds it (a stale file
    included). For checks such as `--overwrite`, which must never touch a folder in use."""
    path = Path(run_dir) / LOCK_FILE
    if path.is_symlink() or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse(_read_fd(fd)) or LockInfo(None, None, None, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
