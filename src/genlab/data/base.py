"""The loaded-data containers (images, audio clips), the data cache location, load-time resizing."""

from __future__ import annotations

import hashlib
import os
import pathlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from genlab.errors import UserError

SPLITS = ("train", "test")


@dataclass
class ImageData:
    """A whole split held in memory as uint8 pixels.

    `sha256` covers the image bytes (C-order N,C,H,W) followed by the labels as little-endian
    int64, so two runs with equal hashes trained on exactly the same data.
    """

    images: torch.Tensor
    labels: torch.Tensor | None
    num_classes: int
    name: str
    split: str
    sha256: str
    class_names: list[str] | None = None


@dataclass
class AudioData:
    """A whole split of audio clips held in memory: mono int16 samples at one rate.

    Clips keep their own lengths (fixing a length is the audio modality's choice, see
    `genlab.audio`). `sha256` covers the clip lengths (little-endian int64), then every clip's
    samples (little-endian int16, in order), then the labels as for `ImageData`.
    """

    clips: list[torch.Tensor]  # each (L_i,) int16
    sample_rate: int  # Hz
    labels: torch.Tensor | None  # (N,) int64
    num_classes: int
    name: str
    split: str
    sha256: str
    class_names: list[str] | None = None
    speakers: torch.Tensor | None = None  # (N,) int64 indices into speaker_names
    speaker_names: list[str] | None = None
    clip_names: list[str] | None = None  # file names without the folder, for messages


def data_root() -> pathlib.Path:
    """Where datasets are cached and downloaded: `$GENLAB_DATA`, else `~/.cache/genlab`."""
    env = os.environ.get("GENLAB_DATA")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "genlab"


def content_sha256(images: torch.Tensor, labels: torch.Tensor | None) -> str:
    digest = hashlib.sha256(images.contiguous().numpy().tobytes())
    if labels is not None:
        digest.update(labels.numpy().astype("<i8").tobytes())
    return digest.hexdigest()


def audio_sha256(clips: list[torch.Tensor], labels: torch.Tensor | None) -> str:
    digest = hashlib.sha256(np.array([len(c) for c in clips], dtype="<i8").tobytes())
    for clip in clips:
        digest.update(clip.numpy().astype("<i2").tobytes())
    if labels is not None:
        digest.update(labels.numpy().astype("<i8").tobytes())
    return digest.hexdigest()


# Float copies of a whole 60k-image split at 64x64 would need ~1 GB, so resize in chunks.
_RESIZE_CHUNK = 1024


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) images to (N, C, size, size) with antialiased bilinear filtering.

    Deterministic on CPU; the result is rounded and clamped back to uint8.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            f"resize_images expects uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if size < 1:
        raise UserError(f"image size must be a positive integer, got {size}")
    if images.shape[-2:] == (size, size):
        return images
    out = torch.empty((*images.shape[:2], size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], _RESIZE_CHUNK):
        chunk = images[start : start + _RESIZE_CHUNK].float()
        resized = F.interpolate(
            chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out[start : start + _RESIZE_CHUNK] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def to_tensors(
    images: np.ndarray, labels: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """numpy uint8 images / integer labels -> contiguous CPU tensors (uint8, int64)."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if not images.flags.writeable:  # np.frombuffer views are read-only; torch wants to own them
        images = images.copy()
    image_t = torch.from_numpy(images)
    label_t = None if labels is None else torch.from_numpy(labels.astype(np.int64))
    return image_t, label_t
