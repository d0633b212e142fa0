"""CIFAR-10, binary version: 1 label byte + 3072 pixel bytes (C, H, W) per record.

Only the binary batches are read, never the pickled Python version (unpickling runs code).
"""

from __future__ import annotations

import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np

from genlab.data.download import Checksum
from genlab.errors import UserError

CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
TARBALL = "cifar-10-binary.tar.gz"
TARBALL_CHECKSUM = Checksum(gz_md5="c32a1d4ab5d03f1284b67883e8d87530")
BATCH_DIR = "cifar-10-batches-bin"
BATCHES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
_RECORD = 1 + 3 * 32 * 32


def find_local(dirs: list[Path], split: str) -> Path | None:
    """The first place in `dirs` holding the split: a folder of .bin batches or the tarball."""
    for d in dirs:
        for folder in (d, d / BATCH_DIR):
            if all((folder / name).is_file() for name in BATCHES[split]):
                return folder
        if (d / TARBALL).is_file():
            return d / TARBALL
    return None


def read_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) from a batch folder or the tarball."""
    if source.is_dir():
        blobs = []
        for name in BATCHES[split]:
            try:
                blobs.append((source / name, (source / name).read_bytes()))
            except OSError as e:
                raise UserError(f"cannot read {source / name}: {e.strerror or e}") from None
    else:
        blobs = _read_from_tarball(source, split)
    images, labels = zip(*(_parse_batch(data, path) for path, data in blobs))
    return np.concatenate(images), np.concatenate(labels)


def _read_from_tarball(tarball: Path, split: str) -> list[tuple[str, bytes]]:
    # Members are read into memory instead of being extracted, so the archive can never write
    # anywhere; suspicious member names still reject the whole archive.
    wanted = [f"{BATCH_DIR}/{name}" for name in BATCHES[split]]
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts:
                    raise UserError(
                        f"{tarball} has unsafe member path {member.name!r}; "
                        "refusing it, use the official archive"
                    )
                if member.name in wanted and member.isfile():
                    found[member.name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise UserError(f"{tarball} is not a readable tar.gz ({e}); delete or replace it") from None
    missing = [name for name in wanted if name not in found]
    if missing:
        raise UserError(f"{tarball} lacks {', '.join(missing)}; use the official {TARBALL}")
    return [(f"{tarball}:{name}", found[name]) for name in wanted]


def _parse_batch(data: bytes, source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    # No per-batch checksums are published, so batches are checked for structure only.
    if not data or len(data) % _RECORD:
        raise UserError(
            f"{source} is not a CIFAR-10 binary batch: {len(data)} bytes is not a multiple of "
            f"{_RECORD}; replace it"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    labels = records[:, 0]
    if labels.max() >= len(CLASS_NAMES):
        raise UserError(f"{source} has label {labels.max()} (CIFAR-10 has 0..9); replace it")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels
