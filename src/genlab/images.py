"""Writing images: sample grids (PNG), sample arrays (npz) and the loss curve. All writes atomic."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from genlab.checkpoint import atomic_write_bytes
from genlab.train import read_metrics


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
    arr = x.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: str | Path, nrow: int | None = None,
              min_side: int = 256) -> Path:
    """A PNG grid of images, upscaled (nearest) so small images stay visible."""
    grid = make_grid(images, nrow)
    img = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    scale = max(1, math.ceil(min_side / max(img.size)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return write_png(img, path)


def write_png(img: Image.Image, path: str | Path) -> Path:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def save_npz(images: torch.Tensor, path: str | Path, labels: torch.Tensor | None = None) -> Path:
    """`images` as uint8 `(N, H, W)` for grey or `(N, H, W, C)` for colour, plus `labels`."""
    x = images if images.dtype == torch.uint8 else to_uint8(images)
    arr = x.permute(0, 2, 3, 1).numpy()
    if arr.shape[3] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    arrays = {"images": arr}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy().astype(np.int64)
    np.savez_compressed(buf, **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_losses(metrics_path: str | Path, out: str | Path) -> Path | None:
    """`loss.png`: every logged loss against the step. None when nothing was logged."""
    rows = [r for r in read_metrics(metrics_path) if "loss" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in rows[0] if k.endswith("loss") or k in ("nll", "kl", "val_loss")]
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
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out
