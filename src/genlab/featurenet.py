"""Feature networks: one small CNN classifier per image domain, whose penultimate layer embeds
images for FD, KID, precision/recall and density/coverage.

FID's Inception-v3 cannot be downloaded here, and it is a poor judge of 28x28 grey images (they
would be upscaled ten times and copied into three channels). Each domain gets instead a small
classifier trained by `genlab featurenet train` and shipped in `genlab/weights/`. Images are fed
at their native size as uint8, exactly like real data. A distance on these features is an "FD",
reported with the net's name and SHA-256, never an "FID": it is not comparable with published FIDs.

A net is one safetensors file: the weights, plus in its header the architecture, exactly which
images it was trained on and its test accuracy, so the pinned SHA-256 covers all of it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor, nn

from genlab.checkpoint import atomic_write_bytes, sha256_file
from genlab.errors import UserError
from genlab.log import get_logger
from genlab.version import __version__

WEIGHTS_DIR = Path(__file__).parent / "weights"
META_KEY = "genlab_feature_net"

# SHA-256 of each shipped net, pinned so a corrupted or swapped file is refused. Retraining with
# `genlab featurenet train NAME --out src/genlab/weights/NAME.safetensors` prints the new value.
PINNED_SHA256: dict[str, str] = {
    "digits": "2778287938edbee0cb14511dabd3b8a69d5340d6a8ba6744988c860bb781692f",
    "fashion-mnist": "484f79eb1f28d2552cbbe3f85de2128b03640993d31e3ca06151ccd3ba7a927c",
    "mnist": "ece62b02122a3110899d25359f35bcaebefff8486430eff611a7ad4ad37ae05c",
}


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


# --- files ----------------------------------------------------------------------------------------

def save_feature_net(net: FeatureNet, path: str | os.PathLike, meta: dict[str, Any]) -> str:
    """Write weights + metadata atomically; return the file's SHA-256. Same inputs, same bytes."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    data = save_safetensors(tensors, metadata={META_KEY: json.dumps(meta, sort_keys=True)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return sha256_file(path)


def shipped_names() -> list[str]:
    return sorted(PINNED_SHA256)


def load_feature_net(source: str | os.PathLike, *, device: str | torch.device = "cpu"
                     ) -> FeatureNet:
    """A shipped net by name (its SHA-256 checked against the pinned value) or a file path.

    A file of your own (from `genlab featurenet train`) is not pinned; its hash is recorded in
    every report that uses it.
    """
    name = str(source)
    if name in PINNED_SHA256:
        path, expected = WEIGHTS_DIR / f"{name}.safetensors", PINNED_SHA256[name]
    else:
        path, expected = Path(source), None
        if not path.is_file():
            raise UserError(f"no feature net {name!r}: shipped nets are "
                            f"{', '.join(shipped_names()) or 'none'}; or pass a .safetensors file "
                            "written by genlab featurenet train")
    if not path.is_file():
        raise UserError(f"the shipped feature net {path} is missing; reinstall genlab")
    raw = path.read_bytes()  # hash exactly the bytes that are loaded
    digest = hashlib.sha256(raw).hexdigest()
    if expected is not None and digest != expected:
        raise UserError(f"feature net {path} is corrupt or replaced (SHA-256 {digest[:12]}..., "
                        f"pinned {expected[:12]}...); reinstall genlab")
    try:
        tensors = load_safetensors(raw)
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(json.loads(raw[8:8 + header_len])["__metadata__"][META_KEY])
        config = FeatureNetConfig(**{**meta["config"], "widths": tuple(meta["config"]["widths"])})
        net = FeatureNet(config)
        net.load_state_dict(tensors)
    except (SafetensorError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{path} is not a genlab feature net ({str(e)[:120]}); "
                        "write one with genlab featurenet train") from None
    net.meta, net.sha256 = meta, digest
    return net.to(device).eval()


def feature_net_for(dataset: str) -> FeatureNet | None:
    """The shipped net for a named dataset, or None when there is none (cifar10, idx:, folder:)."""
    return load_feature_net(dataset) if dataset in PINNED_SHA256 else None


# --- which images a net sees ----------------------------------------------------------------------

@dataclass
class Subset:
    """Images `[start, stop)` of one split of a dataset, with the SHA-256 of exactly those images."""

    dataset: str
    split: str
    start: int
    stop: int
    images: Tensor
    labels: Tensor | None
    split_sha256: str  # of the whole split, as genlab.data computes it

    @property
    def sha256(self) -> str:
        from genlab.data.base import content_sha256

        return content_sha256(self.images, self.labels)

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "start": self.start,
                "stop": self.stop, "sha256": self.sha256, "split_sha256": self.split_sha256}

    def label(self) -> str:
        return f"{self.dataset}:{self.split}[{self.start}:{self.stop}]"


def subset(dataset: str, split: str, start: int = 0, stop: int | None = None, *,
           data_dir: str | os.PathLike | None = None, download: bool = True) -> Subset:
    from genlab.data import load_images

    data = load_images(dataset, split, data_dir, download=download)
    n = data.images.shape[0]
    stop = n if stop is None else min(stop, n)
    labels = data.labels[start:stop] if data.labels is not None else None
    return Subset(data.name, split, start, stop, data.images[start:stop], labels, data.sha256)


def overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two `Subset.describe()` ranges share images (same data, intersecting ranges)."""
    same = a["dataset"] == b["dataset"] and a["split"] == b["split"]
    return same and a["start"] < b["stop"] and b["start"] < a["stop"]


# --- training -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """How the net of one dataset is trained. Flips suit clothes, not digits (a 2 is no mirror 5)."""

    epochs: int
    flips: bool
    shift: int = 2  # random translation in pixels (zero padding)
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4


PLANS: dict[str, Plan] = {
    "fashion-mnist": Plan(epochs=15, flips=True, shift=1),
    "mnist": Plan(epochs=30, flips=False),
    "digits": Plan(epochs=60, flips=False, batch_size=64),
}
DEFAULT_PLAN = Plan(epochs=20, flips=False)  # your own labelled data (idx:DIR)
# mnist with only its 10k test split at hand: train on the first 8k, measure on the last 2k.
MNIST_TEST_ONLY_SPLIT = 8000


def training_data(dataset: str, data_dir: str | os.PathLike | None,
                  log: Callable[[str], None]) -> tuple[Subset, Subset]:
    """(images to train on, images to measure on): the train and test splits, or for mnist
    without its train split, the first 8k and the last 2k of the test split."""
    if dataset.startswith("folder:"):
        raise UserError("a folder has no test split to measure a feature net on; use idx:DIR "
                        "holding train and test IDX files, or a named dataset")
    if dataset == "mnist":
        try:
            train = subset(dataset, "train", data_dir=data_dir, download=False)
        except UserError:
            log(f"mnist train split not found; training on test[0:{MNIST_TEST_ONLY_SPLIT}] and "
                f"measuring on test[{MNIST_TEST_ONLY_SPLIT}:]")
            return (subset(dataset, "test", 0, MNIST_TEST_ONLY_SPLIT, data_dir=data_dir),
                    subset(dataset, "test", MNIST_TEST_ONLY_SPLIT, data_dir=data_dir))
        return train, subset(dataset, "test", data_dir=data_dir)
    return subset(dataset, "train", data_dir=data_dir), subset(dataset, "test", data_dir=data_dir)


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


def accuracy(net: FeatureNet, data: Subset) -> float:
    _, logits = net.embed(data.images)
    return float((logits.argmax(1) == data.labels).double().mean())


def train_feature_net(dataset: str, *, data_dir: str | os.PathLike | None = None, seed: int = 0,
                      epochs: int | None = None, log: Callable[[str], None] | None = None
                      ) -> tuple[FeatureNet, dict[str, Any]]:
    """Train the feature net of `dataset`; deterministic for a seed (same machine and threads).

    Returns the net (eval mode) and the metadata to save with it.
    """
    from genlab.config import TrainConfig
    from genlab.trainer import get_lr

    log = log or get_logger(__name__).info
    train, test = training_data(dataset, data_dir, log)
    if train.labels is None or test.labels is None:
        raise UserError(f"{dataset} has no labels; a feature net is trained as a classifier")
    plan = PLANS.get(train.dataset, DEFAULT_PLAN)
    epochs = plan.epochs if epochs is None else epochs
    n = train.images.shape[0]
    steps_per_epoch = math.ceil(n / plan.batch_size)
    total = epochs * steps_per_epoch
    # cosine decay with a short warm-up, via the trainer's own schedule
    schedule = TrainConfig(lr=plan.lr, lr_schedule="cosine", warmup_steps=min(200, total // 10),
                           min_lr_ratio=0.0)
    _, c, h, _ = train.images.shape
    config = FeatureNetConfig(channels=c, image_size=h, num_classes=int(train.labels.max()) + 1)
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
                x = augment(train.images[idx], generator, shift=plan.shift, flips=plan.flips)
                loss = F.cross_entropy(net(x), train.labels[idx])
                for group in optimizer.param_groups:
                    group["lr"] = get_lr(step, schedule, total)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach())
                step += 1
            log(f"epoch {epoch + 1}/{epochs}: loss {total_loss / steps_per_epoch:.4f} "
                f"({time.perf_counter() - t0:.0f}s)")
    net.eval()
    test_accuracy = accuracy(net, test)
    log(f"{dataset}: test accuracy {test_accuracy:.4f} on {test.label()}")
    meta = {"format": 1, "name": dataset, "config": asdict(config),
            "train_data": train.describe(), "test_data": test.describe(),
            "test_accuracy": test_accuracy,
            "recipe": {**asdict(plan), "seed": seed, "epochs": epochs, "optimizer": "adamw",
                       "schedule": "cosine", "genlab": __version__, "torch": torch.__version__,
                       "threads": torch.get_num_threads()}}
    net.meta = meta
    return net, meta
