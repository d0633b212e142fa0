"""Plain helpers shared by several test files (fixtures live in conftest.py): a tiny diffusion
U-Net on the 8x8 digits, in memory or as an IDX data set (`--data idx:DIR`, where a training grid
of 64 images x 50 DDIM steps is cheap), and the header of a WAV file."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import torch

from genlab.data.idx import write_idx
from genlab.models.diffusion import Diffusion, DiffusionConfig

# `--set` overrides for a tiny U-Net in a `genlab train diffusion` run
TINY = ("model.width=8", "model.channel_mults=1,2", "model.res_blocks=1", "model.heads=2",
        "model.timesteps=50")


def tiny_model(**overrides) -> Diffusion:
    """The same tiny 8x8 U-Net for every test (seeded weights); `overrides` are config fields."""
    values = {"channels": 1, "image_size": 8, "width": 8, "channel_mults": "1,2",
              "res_blocks": 1, "heads": 2, "timesteps": 100, "dropout": 0.0, **overrides}
    torch.manual_seed(0)
    return Diffusion(DiffusionConfig(**values))


def digits() -> torch.Tensor:
    """scikit-learn's 1,797 8x8 digits as uint8 `(N, 1, 8, 8)`."""
    from sklearn.datasets import load_digits

    images = load_digits().images  # (1797, 8, 8) in 0..16
    return torch.from_numpy(np.round(images * (255 / 16)).astype(np.uint8))[:, None]


def digit_labels() -> np.ndarray:
    from sklearn.datasets import load_digits

    return load_digits().target.astype(np.uint8)


def write_digits(folder: Path, *, labels: bool = True) -> str:
    """256 training and 64 test digits as IDX files in `folder`; their `--data` spec. Without
    `labels` every label is 0."""
    images = digits()[:, 0].numpy()
    targets = digit_labels() if labels else np.zeros(images.shape[0], dtype=np.uint8)
    for split, part in (("train", slice(0, 256)), ("t10k", slice(256, 320))):
        write_idx(folder / f"{split}-images-idx3-ubyte", images[part])
        write_idx(folder / f"{split}-labels-idx1-ubyte", targets[part])
    return f"idx:{folder}"


def wav_header(data: bytes) -> tuple[int, int, int, int]:
    """(channels, bytes per sample, rate, frames) of WAV bytes."""
    with wave.open(io.BytesIO(data)) as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
