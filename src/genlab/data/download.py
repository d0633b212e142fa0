"""Checksum verification and mirrored, atomic downloads into the data cache."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from genlab.checkpoint import default_mode
from genlab.data.idx import read_bytes
from genlab.errors import UserError
from genlab.log import get_logger

log = get_logger(__name__)

# Base URLs tried in order, per dataset. Each source declares its own (`Source.urls`, in
# genlab/data/sources/) and the registry copies them here on import; this module-level dict is
# what `fetch` reads, so tests (and users behind a proxy cache) can point it elsewhere, including
# at file:// directories.
URLS: dict[str, list[str]] = {}
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Checksum:
    """Published md5s of one file; it is accepted when either one matches.

    Both are kept because repackagers (e.g. Debian) re-compress the .gz files, which changes
    `gz_md5` but not `raw_md5`.
    """

    gz_md5: str | None = None  # md5 of the official compressed file
    raw_md5: str | None = None  # md5 of the decompressed content


# Files already verified in this process, keyed by (path, size, mtime) so an edited file is
# checked again.
_verified: set[tuple[str, int, int, Checksum]] = set()


def mismatch(path: Path, checksum: Checksum) -> str | None:
    """None when `path` matches `checksum`, else a short description of the mismatch."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, checksum)
    if key in _verified:
        return None
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        got = {"gz": hashlib.md5(raw).hexdigest()}
        if got["gz"] != checksum.gz_md5 and checksum.raw_md5:
            got["content"] = hashlib.md5(read_bytes(path)).hexdigest()
    else:
        got = {"content": hashlib.md5(raw).hexdigest()}
    want = {"gz": checksum.gz_md5, "content": checksum.raw_md5}
    if any(want[kind] == md5 for kind, md5 in got.items()):
        _verified.add(key)
        return None
    return (
        f"checksum mismatch: {', '.join(f'{k} md5 {v}' for k, v in got.items())}; expected "
        + " or ".join(f"{k} md5 {v}" for k, v in want.items() if v)
    )


def fetch(name: str, filename: str, dest_dir: Path,
          checksum: Checksum | Callable[[Path], str | None], *,
          remote_name: str | None = None) -> Path:
    """Fetch `filename` from the mirrors of dataset `name` into `dest_dir`, verified.

    Each mirror's URL is its base + "/" + `remote_name` (default `filename`). `checksum` is a
    `Checksum` or a function returning None for a good file, else what is wrong with it (for
    archives whose compressed bytes are not stable, checked on their content). The file appears
    under its final name only once complete and verified (temp file in the same directory,
    fsync, os.replace), so an interrupted or bad download leaves nothing.
    Raises UserError saying why each mirror failed.
    """
    verify = checksum if callable(checksum) else lambda path: mismatch(path, checksum)
    dest = dest_dir / filename
    failures = []
    for base in URLS.get(name, ()):
        url = base.rstrip("/") + "/" + (remote_name or filename)
        try:
            dest_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=dest_dir, prefix=f".{filename}.", suffix=".part")
        except OSError as e:
            raise UserError(
                f"cannot write to data directory {dest_dir} ({e.strerror or e}); "
                "set GENLAB_DATA to a writable directory"
            ) from None
        tmp = Path(tmp_name)
        try:
            log.info(f"downloading {url}")
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
                shutil.copyfileobj(r, out)
                out.flush()
                os.fsync(out.fileno())
            problem = verify(tmp)
            if problem is None:
                tmp.chmod(default_mode())  # mkstemp makes it 0600; a shared cache is read by others
                os.replace(tmp, dest)
                return dest
            failures.append(f"{url}: {problem}")
        except (UserError, OSError, http.client.HTTPException, ValueError) as e:
            failures.append(f"{url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise UserError(f"download failed ({'; '.join(failures) or 'no mirrors configured'})")
