"""Writing files without losing any: whole replacement, appends that never follow a link, one-line
disk-full errors. The rules every writer in genlab follows (docs/reliability.md):

- A file is replaced whole: written to a temporary file beside it, fsynced, renamed over it. A crash
  leaves the old file or the new one, never half of one, plus at worst a temporary file whose name
  `is_temporary` recognises (`checkpoint.sweep_orphans` removes those when a run is opened).
- genlab never writes through a symbolic link: a link where it is about to write is refused with a
  `UserError` naming it; the link and its target are left as they are.
- A full disk (ENOSPC) or an exhausted quota (EDQUOT) is a `DiskFullError`: one line naming the
  path, the bytes it needed and the bytes free. What was there before is left intact.
- New files get the permissions of the process umask, like a plain `open` would give them.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from genlab.errors import UserError

# mkstemp / mkdtemp end a name in 8 characters of this alphabet (tempfile._RandomNameSequence)
_RANDOM = r"[a-z0-9_]{8}"
# `.NAME.tmp-XXXXXXXX`: a file of atomic_write_bytes or a checkpoint folder being written;
# `.NAME.XXXXXXXX.tmp`: atomic_write_bytes of genlab 0.1.0
TEMPORARY = re.compile(rf"^\..+\.tmp-{_RANDOM}$|^\..+\.{_RANDOM}\.tmp$")
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


class DiskFullError(UserError):
    """The disk (or the user's quota) filled up while genlab wrote; nothing older was lost."""


def is_temporary(name: str) -> bool:
    """Whether `name` is one of the temporary names genlab writes under (and may sweep)."""
    return TEMPORARY.match(name) is not None


def temp_prefix(path: Path) -> str:
    """The prefix of the temporary file or folder that becomes `path` when renamed."""
    return f".{path.name}.tmp-"


def default_mode(directory: bool = False) -> int:
    """The permissions a plain `open` / `mkdir` would give under the process umask. Temporary
    files and folders are created 0600 / 0700, which would otherwise stay after the rename."""
    umask = os.umask(0o022)  # the only way to read it is to set it; put it back at once
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


# --- refusing links --------------------------------------------------------------------------------

def refuse_symlink(path: str | os.PathLike) -> None:
    """Raise a `UserError` when `path` itself is a symbolic link (dangling or not)."""
    path = Path(path)
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; genlab does not write through links (its "
                        "target could be outside the run); remove the link (its target stays) or "
                        "use another folder")


def refuse_symlinks(folder: str | os.PathLike, names: tuple[str, ...] | list[str]) -> None:
    """`refuse_symlink` for each of `names` inside `folder` (a run folder's outputs)."""
    for name in names:
        refuse_symlink(Path(folder) / name)


def real_dir(path: str | os.PathLike) -> Path:
    """`mkdir -p path`, refusing a `path` that is a symbolic link (e.g. a run's `samples/`)."""
    path = Path(path)
    refuse_symlink(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- disk full ---------------------------------------------------------------------------------------

def is_disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in _DISK_FULL


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def disk_full(path: str | os.PathLike, needed: int, what: str = "") -> DiskFullError:
    """The error for a write of `needed` bytes at `path` that found the disk full."""
    path = Path(path)
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f", {_size(shutil.disk_usage(probe).free)} free"
    except OSError:
        free = ""
    kept = f"; {what}" if what else ""
    return DiskFullError(f"no space left on the device of {path}: writing it needs about "
                         f"{_size(needed)}{free}; free some space and run again{kept}")


# --- writing ---------------------------------------------------------------------------------------

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_new_file(path: str | os.PathLike, data: bytes) -> None:
    """Create `path` (it must not exist, not even as a link), write `data`, fsync. The file gets
    the umask's permissions. OSError as raised (the callers decide what a full disk means)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o666)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync, rename. A file
    that is replaced keeps its permissions; a new one gets the umask's. A symbolic link at `path`
    is refused (`UserError`); a full disk is a `DiskFullError` and leaves the old file intact."""
    path = Path(path)
    refuse_symlink(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = default_mode()
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path))
        try:
            os.fchmod(fd, mode)
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        # rename replaces a link that appeared since the check, never what it points to
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if is_disk_full(e):
            raise disk_full(path, len(data), f"{path.name} was left as it was") from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def append_line(path: str | os.PathLike, text: str) -> None:
    """Append `text` and a newline to `path` (created with the umask's permissions if missing), in
    one write. A symbolic link or anything but a regular file at `path` is refused; a line that
    does not fit on the disk is cut off again, so the file keeps whole lines only."""
    path = Path(path)
    data = (text if text.endswith("\n") else text + "\n").encode()
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o666)  # O_NONBLOCK: a FIFO without reader fails, not hangs
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.EMLINK):  # Linux / BSD for "that is a link"
            refuse_symlink(path)
        if e.errno == errno.ENXIO:  # a FIFO or socket
            raise _not_regular(path) from None
        if is_disk_full(e):
            raise disk_full(path, len(data)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular(path)
        try:
            _write_all(fd, data)
        except OSError as e:
            os.ftruncate(fd, info.st_size)  # the run holds the lock: no other writer appended
            if is_disk_full(e):
                raise disk_full(path, len(data), f"{path.name} keeps its earlier lines") from None
            raise
    finally:
        os.close(fd)


def _not_regular(path: Path) -> UserError:
    return UserError(f"{path} is not a regular file; genlab appends only to files it made; move "
                     "it away")
