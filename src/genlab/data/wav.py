"""WAV files: mono 16-bit PCM in and out, with Python's `wave` module.

Reading accepts what users' recordings commonly are and converts it, the way audio tools do:
several channels are averaged to mono, 8-, 24- and 32-bit PCM become 16-bit, and with
`sample_rate` another rate is resampled (polyphase filter). What cannot be a clip is refused
with the file's name: not a WAV file, not PCM (float or compressed), no samples, truncated.
Writing always gives 16-bit PCM mono, atomically.
"""

from __future__ import annotations

import io
import math
import os
import wave
from pathlib import Path

import numpy as np
import torch

from genlab.checkpoint import atomic_write_bytes
from genlab.errors import UserError

ArrayLike = np.ndarray | torch.Tensor


def decode_wav(data: bytes, source: str | os.PathLike, sample_rate: int | None = None
               ) -> tuple[np.ndarray, int]:
    """WAV bytes -> (mono int16 samples (L,), rate). `source` names the file in errors.

    With `sample_rate`, the samples are resampled to it when the file has another rate.
    """
    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, width, rate = w.getnchannels(), w.getsampwidth(), w.getframerate()
            frames = w.getnframes()
            raw = w.readframes(frames)
    except (wave.Error, EOFError) as e:
        raise UserError(f"{source} is not a readable PCM WAV file ({e or 'no data'}); "
                        "convert it to 16-bit PCM WAV") from None
    if frames == 0 or channels == 0:
        raise UserError(f"{source} holds no samples; remove it")
    if len(raw) < frames * channels * width:
        raise UserError(f"{source} is truncated: {len(raw) // (channels * width)} of {frames} "
                        "samples present; replace it")
    samples = _to_int16(raw, width, source).reshape(frames, channels)  # (L, C)
    if channels > 1:  # down-mix: the mean of the channels, rounded
        samples = np.rint(samples.astype(np.float64).mean(axis=1)).astype(np.int16)
    else:
        samples = samples[:, 0]
    if sample_rate is not None and rate != sample_rate:
        samples, rate = resample(samples, rate, sample_rate), sample_rate
    return samples, rate


def read_wav(path: str | os.PathLike, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A WAV file -> (mono int16 samples (L,), rate); see `decode_wav`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    return decode_wav(data, path, sample_rate)


def wav_bytes(samples: ArrayLike, sample_rate: int) -> bytes:
    """A 16-bit PCM mono WAV file in memory.

    `samples` (L,): int16 as they are, or floats in [-1, 1] (clipped, scaled by 32767 and
    rounded). Equal inputs give equal bytes.
    """
    pcm = to_pcm16(samples)
    if not 1 <= sample_rate <= 0xFFFFFFFF:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate}")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.astype("<i2").tobytes())
    return buf.getvalue()


def write_wav(path: str | os.PathLike, samples: ArrayLike, sample_rate: int) -> Path:
    """Write `wav_bytes(samples, sample_rate)` to `path` atomically; return the path."""
    path = Path(path)
    data = wav_bytes(samples, sample_rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def to_pcm16(samples: ArrayLike) -> np.ndarray:
    """(L,) int16 unchanged, or floats in [-1, 1] -> int16; anything else is refused."""
    if isinstance(samples, torch.Tensor):
        samples = samples.detach().cpu().numpy()
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"a mono clip is 1-D (L,), got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples
    if samples.dtype.kind != "f":
        raise ValueError(f"samples must be int16 or floats in [-1, 1], got {samples.dtype}")
    if not np.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf")
    return np.rint(np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def resample(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    """int16 (L,) at `rate` -> int16 at `target`, by polyphase filtering (scipy's
    `resample_poly`, Kaiser-windowed sinc): ceil(L * target / rate) samples."""
    from scipy.signal import resample_poly  # deferred; scipy comes with scikit-learn

    g = math.gcd(rate, target)
    out = resample_poly(samples.astype(np.float64), target // g, rate // g)
    return np.clip(np.rint(out), -32768, 32767).astype(np.int16)


def _to_int16(raw: bytes, width: int, source: str | os.PathLike) -> np.ndarray:
    """Little-endian PCM of `width` bytes per sample -> int16 (flat)."""
    if width == 2:
        return np.frombuffer(raw, dtype="<i2").astype(np.int16)
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        return ((np.frombuffer(raw, dtype=np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if width in (3, 4):  # keep the top 16 bits, rounded
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)
        wide = np.zeros((len(b), 4), dtype=np.uint8)
        wide[:, 4 - width:] = b  # left-align into int32
        full = wide.view("<i4")[:, 0].astype(np.int64)
        return np.clip((full + (1 << 15)) >> 16, -32768, 32767).astype(np.int16)
    raise UserError(f"{source} has {8 * width}-bit samples; convert it to 16-bit PCM WAV")
