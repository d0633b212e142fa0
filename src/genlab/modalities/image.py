"""The image modality: named image datasets, `idx:DIR` and `folder:PATH`, PNG grids and npz arrays,
FD/KID/precision/recall in a feature net's space."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from genlab import evaluation
from genlab.config import TrainConfig
from genlab.data import load_images, resize_images
from genlab.data.base import ImageData
from genlab.data.catalog import DATASETS, container_of
from genlab.data.idx import write_idx
from genlab.data.subset import per_class_indices, subset_sha256
from genlab.errors import UserError
from genlab.generation import GenerationRequest, balanced_labels, check_request
from genlab.images import grid_png, image_pngs, npz_bytes, to_uint8, write_bytes
from genlab.limits import derive_seed
from genlab.modalities.base import Modality, Prepared, Samples, TrainingEvaluator
from genlab.models.base import GenerativeModel, SampleCall

GRID_SAMPLES = 64  # images in each training-time grid
SPEC_PREFIXES = ("idx:", "folder:")


class ImageBatcher:
    """Batches from a uint8 image tensor kept whole on the training device.

    Each epoch is a permutation seeded by (seed, epoch); step s takes slice s % steps_per_epoch of it
    (the last partial batch is dropped). No per-sample Python work, no worker processes. With several
    ranks, each takes its contiguous share of the global batch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int,
                 seed: int, device: torch.device | str, rank: int = 0, world_size: int = 1) -> None:
        n = images.shape[0]
        if n < batch_size:
            raise UserError(f"the training set has {n} examples, fewer than one batch of "
                            f"{batch_size}; lower the batch size")
        self.images = images.to(device)
        self.labels = labels.to(device) if labels is not None else None
        self.batch_size, self.seed, self.device = batch_size, seed, torch.device(device)
        self.steps_per_epoch = n // batch_size
        self.local = batch_size // world_size
        self.offset = rank * self.local
        self._epoch, self._perm = -1, torch.empty(0)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            self._perm = torch.randperm(self.images.shape[0], generator=g).to(self.device)
            self._epoch = epoch
        return self._perm

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        start = pos * self.batch_size + self.offset
        idx = self._permutation(epoch)[start:start + self.local]
        out = {"images": self.images[idx]}
        if self.labels is not None:
            out["labels"] = self.labels[idx]
        return out


@dataclass
class ImageSamples(Samples):
    """uint8 images `(N, C, H, W)` on the CPU, their labels (conditional models) and the grid's
    column count."""

    images: torch.Tensor
    labels: torch.Tensor | None = None
    nrow: int | None = None

    formats: ClassVar[dict[str, str]] = {"png_grid": ".png", "npz": ".npz"}

    @property
    def count(self) -> int:
        return self.images.shape[0]

    def encode(self, fmt: str) -> bytes:
        if fmt == "png_grid":
            return grid_png(self.images, self.nrow)
        if fmt == "npz":
            return npz_bytes(self.images, self.labels)
        raise UserError(f"unknown image format {fmt!r}; allowed: {', '.join(self.formats)}")

    def pngs(self) -> list[bytes]:
        """One PNG per image, at the model's size."""
        return image_pngs(self.images)


def prepare_image_data(data: Any, model_cls: type[GenerativeModel], model_config: Any,
                       train: TrainConfig, *, conditional: bool, device: torch.device,
                       rank: int, world_size: int, info: dict[str, Any] | None = None
                       ) -> Prepared:
    """Images in memory (an `ImageData`) -> the config's data fields, a batcher, the run's record
    of the data. Shared with the modalities whose data becomes images (audio spectrograms).
    With `train.per_class`, only that many images per class (chosen by the seed) are kept, and
    the record's `subset` names them; its `sha256` stays the whole split's."""
    subset = None
    if train.per_class:
        idx = per_class_indices(data.labels, train.per_class, train.seed)
        subset = {"per_class": train.per_class, "seed": train.seed, "split": data.split,
                  "n": len(idx), "sha256": subset_sha256(idx, data.sha256, data.split)}
        data = replace(data, images=data.images[idx], labels=data.labels[idx])
    model_config = model_cls.config_for_data(model_config, data, conditional=conditional)
    images = data.images
    size = getattr(model_config, "image_size", 0)
    if size and size != images.shape[-1]:
        images = resize_images(images, size)  # once, at load (e.g. 28 -> 64 for dcgan64)
    labels = data.labels if getattr(model_config, "num_classes", 0) else None
    batcher = ImageBatcher(images, labels, train.batch_size, train.seed, device, rank, world_size)
    record = {"name": data.name, "split": data.split, "sha256": data.sha256,
              "n": int(images.shape[0]), "shape": list(images.shape[1:]),
              "num_classes": data.num_classes, **({"subset": subset} if subset else {}),
              **(info or {})}
    return Prepared(batcher, model_config, record)


def image_call(model: GenerativeModel, request: GenerationRequest
               ) -> tuple[GenerationRequest, SampleCall, int | None]:
    """A request as one call of `model.sample_many`: the checked request, the call (its own
    generator; labels as asked, or classes 0..K-1 in turn, one grid column each) and the grid's
    column count. The server batches these calls; `generate_images` makes one."""
    r = check_request(model, request, text=False)
    k = model.num_classes
    generator = torch.Generator(device=model.device).manual_seed(r.seed)
    options: dict[str, Any] = dict(r.options)
    if k:
        chosen = r.label if r.label is not None else balanced_labels(r.n, k)
        chosen = chosen if isinstance(chosen, list) else [chosen]
        options["labels"] = torch.tensor(chosen * r.n if len(chosen) == 1 else chosen,
                                         dtype=torch.long, device=model.device)
    nrow = k if k and r.label is None and k <= 16 else None
    return r, SampleCall(r.n, generator, options), nrow


def image_samples(call: SampleCall, images: torch.Tensor, nrow: int | None) -> ImageSamples:
    """What `sample_many` made for `call` (floats in [0, 1]) as `ImageSamples`."""
    labels = call.options.get("labels")
    return ImageSamples(to_uint8(images), labels.cpu() if labels is not None else None, nrow)


def generate_images(model: GenerativeModel, request: GenerationRequest) -> ImageSamples:
    """Images for a request, through `sample_many` like the server's batches (the same bytes)."""
    _, call, nrow = image_call(model, request)
    (images,) = model.sample_many([call])
    return image_samples(call, images, nrow)


class ImageModality(Modality):
    name = "image"
    feeds = "image"
    description = "images: named datasets, idx:DIR, folder:PATH"
    unit = "img"
    samples_class = ImageSamples

    def claims(self, spec: str) -> bool:
        name = spec.lower().replace("_", "-")  # a named dataset of images, not of clips (fsdd)
        return spec.startswith(SPEC_PREFIXES) or (name in DATASETS
                                                  and container_of(name) is ImageData)

    def prepare(self, spec: str, data_dir: str | None, model_cls: type[GenerativeModel],
                model_config: Any, train: TrainConfig, *, conditional: bool,
                device: torch.device, rank: int = 0, world_size: int = 1,
                init_extras: dict[str, Any] | None = None) -> Prepared:
        data = load_images(spec, "train", data_dir)
        return prepare_image_data(data, model_cls, model_config, train, conditional=conditional,
                                  device=device, rank=rank, world_size=world_size)

    def generate(self, model: GenerativeModel, request: GenerationRequest) -> ImageSamples:
        return generate_images(model, request)

    def write_training_samples(self, model: GenerativeModel, run_dir: Path, step: int,
                               seed: int) -> Path:
        """A grid from a fixed seed, so grids over a run show the same latent points improving;
        the same bytes as `genlab sample RUN --n 64 --seed SEED --out x.png`."""
        png = self.generate(model, GenerationRequest(n=GRID_SAMPLES, seed=seed)).encode("png_grid")
        path = write_bytes(png, run_dir / "samples" / f"step_{step:07d}.png")
        write_bytes(png, run_dir / "samples.png")
        return path

    def training_evaluator(self, model: GenerativeModel, prepared: Prepared,
                           record: dict[str, Any], data_dir: str | None,
                           device: torch.device) -> TrainingEvaluator | None:
        return evaluation.training_evaluator(model, prepared.data_info["name"], record, data_dir,
                                             device)

    def evaluate_run(self, run_dir: Path, model: GenerativeModel, record: dict[str, Any], *,
                     n: int, seed: int, data_dir: str | None, which: str,
                     feature_net: str | None, iwae_k: int, real: str | None,
                     command: str | None, sample_options: dict[str, Any]) -> dict[str, Any]:
        dataset = record.get("data_info", {}).get("name") or record["data"]
        return evaluation.evaluate_images(model, dataset, run_dir=run_dir, n=n, seed=seed,
                                          data_dir=data_dir, which=which, iwae_k=iwae_k,
                                          feature_net=feature_net, real=real, command=command,
                                          sample_options=sample_options)

    def format_report(self, report: dict[str, Any]) -> str:
        return evaluation.format_report(report)

    def tiny_data(self, folder: Path) -> str:
        write_tiny_idx(folder)
        return f"idx:{folder}"

    def check_samples(self, model: GenerativeModel, samples: torch.Tensor, n: int) -> None:
        config = model.config
        assert samples.shape == (n, config.channels, config.image_size, config.image_size)
        assert samples.is_floating_point()
        assert samples.min() >= 0.0 and samples.max() <= 1.0


TINY_TRAIN, TINY_TEST, TINY_SIDE, TINY_CLASSES = 64, 16, 28, 4


def tiny_class_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 28x28 images whose class (of 4) decides which quadrant holds a bright square."""
    labels = np.arange(n) % TINY_CLASSES
    images = rng.integers(0, 60, (n, TINY_SIDE, TINY_SIDE))
    half = TINY_SIDE // 2
    for i, label in enumerate(labels):
        top, left = divmod(int(label), 2)
        images[i, top * half + 3:top * half + 11, left * half + 3:left * half + 11] += 180
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_tiny_idx(folder: Path, seed: int = 0) -> Path:
    """Both splits of a 4-class 28x28 IDX dataset with the standard MNIST file names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for n, (images_name, labels_name) in ((TINY_TRAIN, ("train-images-idx3-ubyte",
                                                         "train-labels-idx1-ubyte")),
                                          (TINY_TEST, ("t10k-images-idx3-ubyte",
                                                       "t10k-labels-idx1-ubyte"))):
        images, labels = tiny_class_images(n, rng)
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels)
    return folder
