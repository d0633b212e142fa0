"""Reading and writing IDX files (the MNIST file format), raw or gzipped.

Only unsigned-byte IDX (type 0x08) exists in the datasets genlab reads, so only that is supported.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from genlab.errors import UserError

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08


def read_bytes(path: str | os.PathLike) -> bytes:
    """The file's content, gunzipped when it is gzip data (detected by its magic bytes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if data[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise UserError(
                f"{path} is a truncated or corrupt gzip file ({e}); delete it and fetch it again"
            ) from None
    if path.suffix == ".gz":
        raise UserError(f"{path} is named .gz but is not gzip data; fix or replace the file")
    return data


def parse_idx(data: bytes, source: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Decode IDX bytes into a read-only uint8 array; `source` names the file in errors."""
    expected = "" if ndim is None else f" (expected 0x{_UBYTE << 8 | ndim:08x})"
    if len(data) < 4:
        raise UserError(f"{source} is not an IDX file: only {len(data)} bytes; replace the file")
    magic = int.from_bytes(data[:4], "big")
    if data[:2] != b"\0\0" or data[2] != _UBYTE or data[3] == 0 or ndim not in (None, data[3]):
        raise UserError(
            f"{source} has bad IDX magic 0x{magic:08x}{expected}; "
            "it is not the right unsigned-byte IDX file, replace it"
        )
    header = 4 + 4 * data[3]
    if len(data) < header:
        raise UserError(f"{source} is truncated inside its IDX header; replace the file")
    dims = struct.unpack(f">{data[3]}I", data[4:header])
    want = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != want:
        what = "truncated" if len(data) < want else "longer than its header says"
        raise UserError(
            f"{source} is {what}: {len(data)} bytes for shape {dims}, expected {want}; "
            "replace the file"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | os.PathLike, ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or .gz); with `ndim`, require that many dimensions."""
    return parse_idx(read_bytes(path), path, ndim)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array (integer values 0..255 are accepted) as IDX; gzipped if `path` ends
    in .gz. Meant for building small test datasets."""
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in "iu" or (arr.size and (arr.min() < 0 or arr.max() > 255)):
            raise ValueError(f"IDX data must be integers in 0..255, got {arr.dtype}")
        arr = arr.astype(np.uint8)
    if not 1 <= arr.ndim <= 255:
        raise ValueError(f"IDX supports 1 to 255 dimensions, got {arr.ndim}")
    data = bytes([0, 0, _UBYTE, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data += np.ascontiguousarray(arr).tobytes()
    if Path(path).suffix == ".gz":
        data = gzip.compress(data, mtime=0)  # mtime=0 so equal arrays give equal files
    Path(path).write_bytes(data)
