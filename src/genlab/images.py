"""Images as bytes: sample grids and single images (PNG), sample arrays (npz), the loss curve.

The encoders return bytes and touch no file; the `save_*` helpers write them atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from genlab.errors import UserError
from genlab.files import atomic_write_bytes, real_dir

GRID_MIN_SIDE = 256  # grids are upscaled (nearest) to at least this many pixels


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8, rounding to the nearest grey level (the quantisation real data has)."""
    return images.detach().float().mul(255.0).round_().clamp_(0, 255).to(torch.uint8).cpu()


def make_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """`(N, C, H, W)` in [0, 1] (or uint8) -> one `(rows*H, cols*W, C)` uint8 array."""
    x = images if images.dtype == torch.uint8 else to_uint8(images)
    n, c, h, w = x.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), 255,
                   dtype=np.uint8)
    arr = x.cpu().permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = arr[i]
    return grid


def png_bytes(array: np.ndarray, min_side: int = 0) -> bytes:
    """An `(H, W, C)` uint8 array (C = 1 or 3) as PNG bytes, upscaled (nearest) to `min_side`."""
    img = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    scale = max(1, math.ceil(min_side / max(img.size))) if min_side else 1
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def grid_png(images: torch.Tensor, nrow: int | None = None,
             min_side: int = GRID_MIN_SIDE) -> bytes:
    """A PNG grid of images `(N, C, H, W)` (uint8, or float in [0, 1])."""
    return png_bytes(make_grid(images, nrow), min_side)


def image_pngs(images: torch.Tensor) -> list[bytes]:
    """One PNG per image, at its own size."""
    x = images if images.dtype == torch.uint8 else to_uint8(images)
    return [png_bytes(img.cpu().permute(1, 2, 0).numpy()) for img in x]


def npz_bytes(images: torch.Tensor, labels: torch.Tensor | None = None,
              **extra: np.ndarray) -> bytes:
    """`images` as uint8 `(N, H, W)` for grey or `(N, H, W, C)` for colour, plus `labels`."""
    x = images if images.dtype == torch.uint8 else to_uint8(images)
    arr = x.cpu().permute(0, 2, 3, 1).numpy()
    if arr.shape[3] == 1:
        arr = arr[..., 0]
    arrays: dict[str, Any] = {"images": arr, **extra}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy().astype(np.int64)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def read_npz(path: str | Path, flag: str = "--fake") -> dict[str, np.ndarray]:
    """Every array of an .npz (never unpickling: `allow_pickle=False`); an unreadable file is one
    line naming `flag` and the path."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as e:
        raise UserError(f"{flag} {path} is not a readable .npz ({e})") from None


def write_bytes(data: bytes, path: str | Path) -> Path:
    """Write `data` to `path` atomically, making its folder; never through a link."""
    path = Path(path)
    real_dir(path.parent)
    atomic_write_bytes(path, data)
    return path


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None,
              min_side: int = GRID_MIN_SIDE) -> Path:
    """Write a PNG grid of images (see `grid_png`)."""
    return write_bytes(grid_png(images, nrow, min_side), path)


def save_npz(images: torch.Tensor, path: str | Path, labels: torch.Tensor | None = None) -> Path:
    """Write images (and labels) as an npz (see `npz_bytes`)."""
    return write_bytes(npz_bytes(images, labels), path)


def plot_losses(rows: Sequence[dict[str, Any]], out: str | Path,
                keys: Sequence[str] | None = None) -> Path | None:
    """`loss.png`: each of `keys` (default: every logged key ending in "loss") against the step,
    from metrics rows. None when nothing was logged."""
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in (keys or [k for k in rows[0] if k.endswith("loss")]) if k in rows[0]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    steps = [r["step"] for r in rows]
    for key in keys:
        ax.plot(steps, [r.get(key, float("nan")) for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    return write_bytes(buf.getvalue(), out)
