"""A small CNN classifier fitted on any uint8 images and labels, and its accuracy.

The feature nets (`genlab.featurenet`) are such classifiers trained on a named dataset; the same
`fit_classifier` serves anything that needs a classifier on images of its own (spectrograms of
clips, synthetic images for a train-on-synthetic test). Training is deterministic for a seed on
one machine and thread count, so a shipped net can be reproduced byte for byte.

    net = fit_classifier(images, labels, seed=0, plan=Plan(epochs=20, flips=False),
                         validation=(val_images, val_labels))
    print(accuracy(net, test_images, test_labels))
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.errors import UserError
from genlab.log import get_logger

Log = Callable[[str], None]


# --- the network ----------------------------------------------------------------------------------

@dataclass
class FeatureNetConfig:
    channels: int = 1  # image channels
    image_size: int = 28  # native square side; other sizes are refused, never resized
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 64)  # channels of the conv blocks, each max-pooled by 2
    feature_dim: int = 128  # width of the penultimate layer: the features
    dropout: float = 0.3  # before the classifier only


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True), nn.MaxPool2d(2)]


class FeatureNet(nn.Module):
    """Conv-BN-ReLU-pool blocks, then a dense layer (the penultimate layer, whose activations
    are the features) and a linear classifier. Small enough to train in minutes on a CPU and to
    embed 20k images in seconds. `meta` and `sha256` are filled when loaded from a file."""

    def __init__(self, config: FeatureNetConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in, side = config.channels, config.image_size
        for width in config.widths:
            layers += _block(c_in, width)
            c_in, side = width, side // 2
        self.body = nn.Sequential(
            *layers, nn.Flatten(),  # (N, C * side * side)
            nn.Linear(c_in * side * side, config.feature_dim, bias=False),
            nn.BatchNorm1d(config.feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.feature_dim, config.num_classes)
        self.meta: dict[str, Any] = {}
        self.sha256 = ""

    @property
    def name(self) -> str:
        return self.meta.get("name", "untrained")

    def features(self, images: Tensor) -> Tensor:
        """uint8 `(N, C, H, W)` -> penultimate features `(N, D)`."""
        return self.body(images.float().div_(255.0).contiguous(memory_format=torch.channels_last))

    def forward(self, images: Tensor) -> Tensor:
        return self.classifier(self.dropout(self.features(images)))

    @torch.inference_mode()
    def embed(self, images: Tensor, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """Features `(N, D)` and logits `(N, K)` as float32 CPU tensors, in eval mode."""
        self.check_images(images)
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        feats, logits = [], []
        for start in range(0, images.shape[0], batch_size):
            f = self.features(images[start:start + batch_size].to(device)).float()
            feats.append(f.cpu())
            logits.append(self.classifier(f).cpu())
        self.train(was_training)
        return torch.cat(feats), torch.cat(logits)

    def check_images(self, images: Tensor) -> None:
        c, s = self.config.channels, self.config.image_size
        shape = tuple(images.shape)
        if images.dtype != torch.uint8 or len(shape) != 4 or shape[1:] != (c, s, s):
            raise UserError(f"feature net {self.name} takes uint8 images of shape "
                            f"(N, {c}, {s}, {s}), got {images.dtype} {shape}; quantize with "
                            "genlab.images.to_uint8 and give images of the dataset's native size")


# --- the recipe -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """How a classifier is trained. Flips suit clothes, not digits (a 2 is no mirror 5)."""

    epochs: int
    flips: bool
    shift: int = 2  # random translation in pixels (zero padding)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4


DEFAULT_PLAN = Plan(epochs=20, flips=False)


def augment(images: Tensor, generator: torch.Generator, *, shift: int, flips: bool) -> Tensor:
    """Random translations by up to `shift` pixels (and horizontal flips), one per image."""
    n, _, h, w = images.shape
    if flips:
        flip = torch.rand(n, generator=generator) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    if shift:
        padded = F.pad(images, (shift, shift, shift, shift))
        dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
        rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
        cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n)[:, None, None, None]
        chan = torch.arange(images.shape[1])[None, :, None, None]
        images = padded[batch, chan, rows, cols]
    return images


def cosine_lr(step: int, total: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total`.

    The trainer's `get_lr` with lr_schedule="cosine", min_lr_ratio=0, written out here (same
    arithmetic, same floats) so that a change to the trainer cannot change a pinned net.
    """
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = lr * 0.0
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * progress))


def _optimizer(net: FeatureNet, plan: Plan) -> torch.optim.AdamW:
    """AdamW decaying weights only (not biases, norms), on torch's single-tensor code path.

    Built here rather than by `make_optimizer` on purpose: the trainer picks its fastest kernels
    (fused, foreach), which round differently, and a change there must not change the bytes that
    `genlab featurenet train` reproduces for a pinned net.
    """
    decay = [p for p in net.parameters() if p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": plan.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=plan.lr, betas=(0.9, 0.999), foreach=False, fused=False)


# --- fitting and measuring ------------------------------------------------------------------------

def check_labelled(images: Tensor, labels: Tensor, what: str) -> None:
    """uint8 (N, C, S, S) images with one int64 label each, else a UserError about `what`."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != images.shape[-2]:
        raise UserError(f"{what}: images must be uint8 (N, C, S, S), got {images.dtype} "
                        f"{tuple(images.shape)}")
    if labels.dim() != 1 or len(labels) != len(images):
        raise UserError(f"{what}: {len(images)} images need {len(images)} labels, got shape "
                        f"{tuple(labels.shape)}")
    if labels.dtype != torch.int64:
        raise UserError(f"{what}: labels must be int64 class ids, got {labels.dtype}")
    if len(images) == 0:
        raise UserError(f"{what}: no images")
    if int(labels.min()) < 0:
        raise UserError(f"{what}: labels must be class ids >= 0, got {int(labels.min())}")


def fit_classifier(images: Tensor, labels: Tensor, *, seed: int = 0,
                   plan: Plan = DEFAULT_PLAN, num_classes: int | None = None,
                   epochs: int | None = None,
                   validation: tuple[Tensor, Tensor] | None = None,
                   log: Log | None = None) -> FeatureNet:
    """Fit a `FeatureNet` on uint8 `(N, C, S, S)` images and int64 labels `(N,)`.

    `num_classes` defaults to the largest label + 1; `epochs` overrides the plan's. With
    `validation` (images, labels), the net is scored on it after every epoch and the weights of
    the best epoch (the first of equals) are returned: model selection on validation data only,
    never on a test set. Without it, the last epoch's weights. The net comes back in eval mode,
    with `net.meta["fit"]` saying how it was fitted (epochs run, chosen epoch, validation
    accuracies). Deterministic for a seed; the global RNG is left as it was.
    """
    log = log or get_logger(__name__).info
    check_labelled(images, labels, "fit_classifier")
    k = int(labels.max()) + 1 if num_classes is None else num_classes
    if k < 2 or int(labels.max()) >= k:
        raise UserError(f"fit_classifier: need num_classes >= 2 covering every label, got "
                        f"{k} classes for labels up to {int(labels.max())}")
    if validation is not None:
        check_labelled(*validation, "fit_classifier validation")
        if validation[0].shape[1:] != images.shape[1:]:
            raise UserError(f"fit_classifier: validation images are {tuple(validation[0].shape)}"
                            f", training images {tuple(images.shape)}; give the same size")
    epochs = plan.epochs if epochs is None else epochs
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / plan.batch_size)
    total = epochs * steps_per_epoch
    warmup = min(200, total // 10)  # a short warm-up, then cosine decay
    _, c, side, _ = images.shape
    config = FeatureNetConfig(channels=c, image_size=side, num_classes=k)
    best: tuple[float, int, dict[str, Tensor]] | None = None
    history: list[float] = []
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global generator
        torch.manual_seed(seed)
        net = FeatureNet(config).to(memory_format=torch.channels_last)
        optimizer = _optimizer(net, plan)
        generator = torch.Generator().manual_seed(seed)
        net.train()
        step = 0
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            total_loss = 0.0
            for start in range(0, n, plan.batch_size):
                idx = order[start:start + plan.batch_size]
                x = augment(images[idx], generator, shift=plan.shift, flips=plan.flips)
                loss = F.cross_entropy(net(x), labels[idx])
                for group in optimizer.param_groups:
                    group["lr"] = cosine_lr(step, total, plan.lr, warmup)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach())
                step += 1
            message = (f"epoch {epoch + 1}/{epochs}: loss {total_loss / steps_per_epoch:.4f} "
                       f"({time.perf_counter() - t0:.0f}s)")
            if validation is not None:
                score = accuracy(net, *validation)
                history.append(score)
                message += f", validation accuracy {score:.4f}"
                if best is None or score > best[0]:
                    best = (score, epoch + 1, copy.deepcopy(net.state_dict()))
            log(message)
    if best is not None:
        net.load_state_dict(best[2])
        log(f"kept epoch {best[1]} (best validation accuracy {best[0]:.4f})")
    net.eval()
    net.meta = {"fit": {"epochs": epochs, "chosen_epoch": epochs if best is None else best[1],
                        "validation_accuracy": history or None}}
    return net


def predict(net: FeatureNet, images: Tensor) -> Tensor:
    """Predicted class ids `(N,)` int64, in eval mode."""
    return net.embed(images)[1].argmax(1)


def accuracy(net: FeatureNet, images: Tensor, labels: Tensor) -> float:
    """The fraction of `images` whose predicted class is their label."""
    if len(labels) != len(images):
        raise UserError(f"accuracy: {len(images)} images but {len(labels)} labels")
    return float((predict(net, images) == labels).double().mean())
