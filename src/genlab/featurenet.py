"""Feature networks: one small CNN classifier per image domain, whose penultimate layer embeds
images for FD, KID, precision/recall and density/coverage.

FID's Inception-v3 cannot be downloaded here, and it is a poor judge of 28x28 grey images (they
would be upscaled ten times and copied into three channels). Each domain gets instead a small
classifier trained by `genlab featurenet train` and shipped in `genlab/weights/`. Images are fed
at their native size as uint8, exactly like real data. A distance on these features is an "FD",
reported with the net's name and SHA-256, never an "FID": it is not comparable with published FIDs.

A net is one safetensors file: the weights, plus in its header the architecture, exactly which
images it was trained on and its test accuracy, so the pinned SHA-256 covers all of it. The
network and its training loop are `genlab.classifier` (they fit any labelled images); this
module is about the shipped nets: which data each sees, its recipe, its file and its pin.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from genlab.audio import DEFAULT as SPECTROGRAM
from genlab.audio import clips_to_images
from genlab.checkpoint import atomic_write_bytes, sha256_file
from genlab.classifier import (
    DEFAULT_PLAN,
    FeatureNet,
    FeatureNetConfig,
    Plan,
    accuracy,
    augment,
    fit_classifier,
)
from genlab.data import AudioData, load_audio, load_images
from genlab.data.base import content_sha256
from genlab.data.catalog import container_of
from genlab.errors import UserError
from genlab.log import get_logger
from genlab.version import __version__

__all__ = ["DEFAULT_PLAN", "PINNED_SHA256", "PLANS", "FeatureNet", "FeatureNetConfig", "Plan",
           "Subset", "augment", "feature_net_for", "load_feature_net", "overlaps",
           "save_feature_net", "shipped_names", "subset", "train_feature_net", "training_data"]

WEIGHTS_DIR = Path(__file__).parent / "weights"
META_KEY = "genlab_feature_net"

# SHA-256 of each shipped net, pinned so a corrupted or swapped file is refused. Retraining with
# `genlab featurenet train NAME --out src/genlab/weights/NAME.safetensors` prints the new value.
PINNED_SHA256: dict[str, str] = {
    "digits": "2778287938edbee0cb14511dabd3b8a69d5340d6a8ba6744988c860bb781692f",
    # genlab featurenet train fsdd --data-dir DIR, 1 thread (OMP_NUM_THREADS=1), torch 2.13 CPU
    "fsdd": "67323377e319e3e1ab67a04ab244b73dfecc029f21a5c10d3c519311da5a1f1f",
    "fashion-mnist": "484f79eb1f28d2552cbbe3f85de2128b03640993d31e3ca06151ccd3ba7a927c",
    "mnist": "ece62b02122a3110899d25359f35bcaebefff8486430eff611a7ad4ad37ae05c",
}


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
        return content_sha256(self.images, self.labels)

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "split": self.split, "start": self.start,
                "stop": self.stop, "sha256": self.sha256, "split_sha256": self.split_sha256}

    def label(self) -> str:
        return f"{self.dataset}:{self.split}[{self.start}:{self.stop}]"


def subset(dataset: str, split: str, start: int = 0, stop: int | None = None, *,
           data_dir: str | os.PathLike | None = None, download: bool = True) -> Subset:
    """Images `[start, stop)` of a split. Audio datasets come as the spectrogram images of
    `genlab.audio.DEFAULT`; their `split_sha256` is that of the clips."""
    if container_of(dataset) is AudioData:
        clips = load_audio(dataset, split, data_dir, download=download,
                           sample_rate=SPECTROGRAM.sample_rate)
        data, split_sha256 = clips_to_images(clips, SPECTROGRAM), clips.sha256
    else:
        data = load_images(dataset, split, data_dir, download=download)
        split_sha256 = data.sha256
    n = data.images.shape[0]
    stop = n if stop is None else min(stop, n)
    labels = data.labels[start:stop] if data.labels is not None else None
    return Subset(data.name, split, start, stop, data.images[start:stop], labels, split_sha256)


def overlaps(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two `Subset.describe()` ranges share images (same data, intersecting ranges)."""
    same = a["dataset"] == b["dataset"] and a["split"] == b["split"]
    return same and a["start"] < b["stop"] and b["start"] < a["stop"]


# --- training -------------------------------------------------------------------------------------

PLANS: dict[str, Plan] = {
    "fashion-mnist": Plan(epochs=15, flips=True, shift=1),
    "mnist": Plan(epochs=30, flips=False),
    "digits": Plan(epochs=60, flips=False, batch_size=64),
    # spectrogram images (genlab.audio): shifts move a word in time and pitch a little
    "fsdd": Plan(epochs=20, flips=False, batch_size=64),
}
# Other labelled data (idx:DIR) is trained with classifier.DEFAULT_PLAN.
# mnist with only its 10k test split at hand: train on the first 8k, measure on the last 2k.
MNIST_TEST_ONLY_SPLIT = 8000


def training_data(dataset: str, data_dir: str | os.PathLike | None,
                  log: Callable[[str], None]) -> tuple[Subset, Subset]:
    """(images to train on, images to measure on): the train and test splits, or for mnist
    without its train split, the first 8k and the last 2k of the test split."""
    if dataset.startswith(("folder:", "wav:")):
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


def train_feature_net(dataset: str, *, data_dir: str | os.PathLike | None = None, seed: int = 0,
                      epochs: int | None = None, log: Callable[[str], None] | None = None
                      ) -> tuple[FeatureNet, dict[str, Any]]:
    """Train the feature net of `dataset`; deterministic for a seed (same machine and threads).

    Returns the net (eval mode) and the metadata to save with it.
    """
    log = log or get_logger(__name__).info
    train, test = training_data(dataset, data_dir, log)
    if train.labels is None or test.labels is None:
        raise UserError(f"{dataset} has no labels; a feature net is trained as a classifier")
    plan = PLANS.get(train.dataset, DEFAULT_PLAN)
    epochs = plan.epochs if epochs is None else epochs
    net = fit_classifier(train.images, train.labels, seed=seed, plan=plan, epochs=epochs, log=log)
    config = net.config
    test_accuracy = accuracy(net, test.images, test.labels)
    log(f"{dataset}: test accuracy {test_accuracy:.4f} on {test.label()}")
    meta = {"format": 1, "name": dataset, "config": asdict(config),
            "train_data": train.describe(), "test_data": test.describe(),
            "test_accuracy": test_accuracy,
            "recipe": {**asdict(plan), "seed": seed, "epochs": epochs, "optimizer": "adamw",
                       "schedule": "cosine", "genlab": __version__, "torch": torch.__version__,
                       "threads": torch.get_num_threads()}}
    if container_of(dataset) is AudioData:  # what turned its clips into images
        meta["spectrogram"] = asdict(SPECTROGRAM)
    net.meta = meta
    return net, meta
