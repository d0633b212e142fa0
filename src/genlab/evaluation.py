"""Evaluation of images: generated images against held-out real images, in a feature net's space.

- `evaluate_images`: `genlab eval RUN_DIR` of an image run, samples from its model (EMA weights).
- `evaluate_fake`: `genlab eval --fake FILE --real DATASET[:split]`, any tool's images.
- `training_evaluator`: `--eval-every` of an image run.

Every report holds the real-vs-real floor (as many real training images as fakes, scored against
the same reference): a model is judged by its distance to the floor, not to zero. The keys are
documented in docs/evaluation.md and stay stable; a metric that cannot be computed is null.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from genlab.checkpoint import atomic_write_bytes
from genlab.errors import UserError
from genlab.featurenet import (
    FeatureNet,
    Subset,
    feature_net_for,
    load_feature_net,
    overlaps,
    shipped_names,
    subset,
)
from genlab.images import read_npz, to_uint8
from genlab.log import get_logger
from genlab.metrics import (
    class_accuracy,
    compute_all,
    frechet_distance_from_stats,
    gaussian_stats,
    kid,
    mode_entropy,
)
from genlab.models.base import GenerativeModel, Likelihood
from genlab.version import __version__

IMAGE_KEYS = ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
              "class_accuracy", "mode_entropy")
MIN_N = 6  # density/coverage use each real image's 5th nearest neighbour
SAMPLE_BATCH = 1000
TRAIN_IWAE_K = 5  # in-training likelihood: the ELBO needs no K, so keep the IWAE part cheap

Log = Callable[[str], None]
_log = get_logger(__name__).info


# --- real images and their features ---------------------------------------------------------------

@dataclass
class Features:
    """Features and logits of some images, and their labels."""

    features: torch.Tensor  # (N, D) float32
    logits: torch.Tensor  # (N, K)
    labels: torch.Tensor | None
    source: str  # e.g. "fashion-mnist:test[0:10000]"

    def __len__(self) -> int:
        return self.features.shape[0]


def cache_path(net: FeatureNet, data: Subset) -> Path:
    """Under $GENLAB_DATA/features, keyed by the net, the split's content and the index range."""
    from genlab.data import data_root

    key = hashlib.sha256(f"{net.sha256}|{data.split_sha256}|{data.split}|{data.start}|"
                         f"{data.stop}".encode()).hexdigest()[:20]
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in data.dataset)[-40:]
    return data_root() / "features" / f"{safe}-{data.split}-{data.start}-{data.stop}-{key}.safetensors"


def subset_features(net: FeatureNet, data: Subset, index: np.ndarray, log: Log = _log
                    ) -> Features:
    """Features of images `index` of a real subset. The cache holds a row per image of the
    subset and a `done` mask: only rows never used before are computed (a 10k floor drawn
    from the 60k train split embeds 10k images, not 60k)."""
    path, n = cache_path(net, data), data.images.shape[0]
    cached = _read_cache(path, n, log)
    if cached is None:
        cached = {"features": torch.zeros(n, net.config.feature_dim),
                  "logits": torch.zeros(n, net.config.num_classes),
                  "done": torch.zeros(n, dtype=torch.bool)}
    idx = torch.from_numpy(index)
    missing = idx[~cached["done"][idx]]
    if len(missing):
        cached["features"][missing], cached["logits"][missing] = net.embed(data.images[missing])
        cached["done"][missing] = True
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, save_safetensors(cached))
        except OSError as e:
            log(f"note: cannot cache features in {path.parent} ({e.strerror or e}); "
                "set GENLAB_DATA to a writable folder to reuse them")
    labels = data.labels[idx] if data.labels is not None else None
    return Features(cached["features"][idx], cached["logits"][idx], labels, data.label())


def _read_cache(path: Path, n: int, log: Log) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        cached = load_safetensors(path.read_bytes())
    except (SafetensorError, OSError):
        cached = {}
    if {"features", "logits", "done"} <= set(cached) and cached["done"].shape == (n,):
        return cached
    log(f"note: feature cache {path} is unreadable; recomputing it")
    return None


def parse_real(spec: str) -> tuple[str, str | None]:
    """'fashion-mnist' -> ('fashion-mnist', None); 'mnist:test' -> ('mnist', 'test')."""
    from genlab.data.catalog import DATASETS

    name, _, split = spec.rpartition(":")
    if name and split in ("train", "test"):
        return name, split
    if name.lower() in DATASETS:  # idx:DIR and folder:PATH hold colons of their own
        raise UserError(f"unknown split {split!r} in {spec!r}; use {name}:train or {name}:test")
    return spec, None


def reference_subset(net: FeatureNet, dataset: str, split: str | None,
                     data_dir: str | os.PathLike | None, notes: list[str], log: Log) -> Subset:
    """The real images to compare with: by default the images the net was measured on (never
    trained on); a named split as asked. Warns when they overlap the net's training images."""
    held_out = net.meta["test_data"]
    if dataset != held_out["dataset"]:
        raise UserError(f"feature net {net.name} is for {held_out['dataset']}, not {dataset}; "
                        f"use --real {held_out['dataset']} or another --feature-net")
    if split is None:
        data = subset(dataset, held_out["split"], held_out["start"], held_out["stop"],
                      data_dir=data_dir)
    else:
        data = subset(dataset, split, data_dir=data_dir)
    if data.split_sha256 != held_out["split_sha256"] and data.split == held_out["split"]:
        _note(notes, log, f"warning: the {dataset} {data.split} files differ from those the feature "
                          "net was measured on (checksum); numbers are not comparable")
    seen = net.meta["train_data"]
    if overlaps(data.describe(), seen):
        _note(notes, log, f"warning: the reference {data.label()} overlaps the images the feature "
                          f"net {net.name} was trained on ({seen['dataset']}:{seen['split']}"
                          f"[{seen['start']}:{seen['stop']}]); features of a net's own training "
                          "images are biased")
    return data


def floor_subset(reference: Subset, data_dir: str | os.PathLike | None) -> Subset | None:
    """Real images disjoint from the reference, for the real-vs-real floor: the other split
    (train for a test reference), or when it is absent (mnist offline) the rest of the
    reference's own split."""
    other = "train" if reference.split == "test" else "test"
    try:
        return subset(reference.dataset, other, data_dir=data_dir, download=False)
    except UserError:
        pass
    if reference.start > 0:
        return subset(reference.dataset, reference.split, 0, reference.start, data_dir=data_dir)
    rest = subset(reference.dataset, reference.split, reference.stop, data_dir=data_dir)
    return rest if len(rest.images) else None


def choose(count: int, n: int, seed: int) -> np.ndarray:
    """`n` of `count` indices, seeded, in increasing order; all of them when n >= count."""
    if n >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size=n, replace=False))


# --- metrics --------------------------------------------------------------------------------------

def image_metrics(real: Features, fake: Features, num_classes: int, seed: int,
                  real_cache: dict | None = None) -> dict[str, Any]:
    """FD, KID, P/R, D/C of fake vs real features; class accuracy when fakes have labels.
    `real_cache`: shared by calls with the same `real` (see `compute_all`)."""
    out: dict[str, Any] = compute_all(real.features, fake.features, seed=seed,
                                      real_cache=real_cache)
    out["class_accuracy"] = (class_accuracy(fake.logits, fake.labels)
                             if fake.labels is not None else None)
    out["mode_entropy"] = mode_entropy(fake.logits, num_classes) + 0.0  # one class: -0.0 -> 0.0
    return out


def empty_report(n: int, seed: int, command: str | None) -> dict[str, Any]:
    return {**dict.fromkeys(IMAGE_KEYS), "floor": None, "n": n, "seed": seed,
            "feature_net": None, "real": None, "small_sample": False,
            "provenance": {"genlab": __version__, "step": None, "command": command},
            "notes": []}


def compare(net: FeatureNet, fake_images: torch.Tensor, fake_labels: torch.Tensor | None,
            reference: Subset, *, n: int, seed: int, data_dir: str | os.PathLike | None,
            report: dict[str, Any], log: Log) -> None:
    """Fill `report` with fake-vs-reference metrics and the floor; `n` is already capped."""
    notes = report["notes"]
    k = net.config.num_classes
    if fake_labels is not None and int(fake_labels.max()) >= k:
        _note(notes, log, f"note: labels go up to {int(fake_labels.max())} but the feature net "
                          f"has {k} classes; class_accuracy skipped")
        fake_labels = None
    dim = net.config.feature_dim
    if n < dim:
        # the covariances of FD are then singular and KID's estimate wide: at n=6 the real-vs-real
        # floor scored worse than a model did. Reported, but marked and said loudly
        report["small_sample"] = True
        _note(notes, log, f"warning: only {n} images per side, fewer than the {dim} feature "
                          "dimensions: FD, KID and the floor are unreliable at this size; use "
                          f"--n {dim} or more (the default is 10000)")
    t0 = time.perf_counter()
    log(f"features of {n} real ({reference.label()}) and {len(fake_images)} generated images "
        f"({net.name} net), then FD, KID, precision/recall, density/coverage")
    real = subset_features(net, reference, choose(len(reference.images), n, seed), log)
    feats, logits = net.embed(fake_images)
    real_cache: dict = {}  # the floor compares with the same real features
    report.update(image_metrics(real, Features(feats, logits, fake_labels, "fake"), k, seed,
                                real_cache))
    floor_data = floor_subset(reference, data_dir)
    if floor_data is None:
        _note(notes, log, f"note: no real images apart from {reference.label()}; no floor")
    else:
        log(f"the real-vs-real floor: {n} images of {floor_data.label()} against the same "
            "reference")
        floor = subset_features(net, floor_data, choose(len(floor_data.images), n, seed + 1),
                                log)
        report["floor"] = {**image_metrics(real, floor, k, seed, real_cache), "n": len(floor),
                           "source": floor.source}
    report["feature_net"] = {"name": net.name, "sha256": net.sha256,
                             "test_accuracy": net.meta["test_accuracy"],
                             "trained_on": _range(net.meta["train_data"])}
    report["real"] = {**reference.describe(), "n": len(real)}
    report["provenance"]["eval_seconds"] = round(time.perf_counter() - t0, 3)


def native_size(net: FeatureNet, images: torch.Tensor, notes: list[str], log: Log
                ) -> torch.Tensor:
    """A run trained on resized data (a 64x64 DCGAN of 28x28 images) makes images of another
    size: they go back to the data's size with the antialiased filter that resized the training
    images. Only for runs, whose data is known; images given with --fake must match."""
    from genlab.data import resize_images

    s = net.config.image_size
    if images.shape[-2:] != (s, s) and images.shape[-1] == images.shape[-2]:
        _note(notes, log, f"note: samples resized {images.shape[-1]} -> {s} (the data's native "
                          "size) before feature extraction")
        images = resize_images(images, s)
    return images


# --- genlab eval RUN_DIR --------------------------------------------------------------------------

def sample_images(model: Any, n: int, seed: int,
                  convert: Callable[[torch.Tensor], torch.Tensor] = to_uint8,
                  options: dict[str, Any] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`n` samples as uint8 CPU images (or as `convert` makes each chunk of `model.sample`'s
    output); a conditional model gets balanced labels 0..K-1; `options` go to `model.sample`
    (a diffusion model's sampler, sample_steps, guidance; names checked by the caller)."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    k = model.num_classes
    labels = torch.arange(n, device=model.device) % k if k else None
    chunks = []
    for start in range(0, n, SAMPLE_BATCH):
        kw = {"labels": labels[start:start + SAMPLE_BATCH]} if labels is not None else {}
        kw |= options or {}
        chunks.append(convert(model.sample(min(SAMPLE_BATCH, n - start), generator=generator,
                                           **kw)))
    return torch.cat(chunks), labels.cpu() if labels is not None else None


def evaluate_images(model: GenerativeModel, dataset: str, *, run_dir: str | os.PathLike,
                    n: int = 10000, seed: int = 0, data_dir: str | os.PathLike | None = None,
                    iwae_k: int = 100, which: str = "checkpoint", feature_net: str | None = None,
                    real: str | None = None, command: str | None = None,
                    sample_options: dict[str, Any] | None = None,
                    log: Log = _log) -> dict[str, Any]:
    """Sample `n` images from a run's model and compare them with its dataset's held-out images,
    or with `real` (DATASET[:split]) for a run whose own data has no feature net (idx:, folder:);
    and the likelihood of test images, for a model that declares one."""
    report = empty_report(n, seed, command)
    report["provenance"].update({"step": model.checkpoint_step, "run": str(run_dir),
                                 "which": which, "model": model.name,
                                 "device": str(model.device)})
    split = None
    if real is not None:
        reference_name, split = parse_real(real)
        report["notes"].append(f"note: scored against {real}, not the run's own data {dataset}")
    else:
        reference_name = dataset
    net = load_feature_net(feature_net) if feature_net else feature_net_for(reference_name)
    if net is None and not isinstance(model, Likelihood):
        raise UserError(
            f"no feature net for {dataset} (genlab ships nets for {', '.join(shipped_names())}); "
            f"score the samples against one of those datasets if they are alike (genlab eval "
            f"{run_dir} --real fashion-mnist), or train a net on your labelled data (genlab "
            "featurenet train idx:DIR --out net.safetensors) and pass --feature-net "
            "net.safetensors")
    if net is None:
        _note(report["notes"], log, f"note: no feature net for {dataset} (there are nets for "
                                    f"{', '.join(shipped_names())}); image metrics skipped")
    else:
        reference = reference_subset(net, reference_name, split, data_dir, report["notes"], log)
        report["n"] = n = _cap(n, len(reference.images), reference.label(), report, log)
        t0 = time.perf_counter()
        log(f"sampling {n} images from {run_dir} (seed {seed})")
        images, labels = sample_images(model, n, seed, options=sample_options)
        report["provenance"]["sample_seconds"] = round(time.perf_counter() - t0, 3)
        images = native_size(net, images, report["notes"], log)
        compare(net, images, labels, reference, n=n, seed=seed, data_dir=data_dir,
                report=report, log=log)
    if isinstance(model, Likelihood):
        test = likelihood_images(model, dataset, data_dir, n, seed)
        log(f"likelihood on {test[0].shape[0]} {dataset} test images (IWAE K={iwae_k})")
        report.update(_likelihood(model, test, seed, iwae_k))
    return report


def likelihood_images(model: Any, dataset: str, data_dir: str | os.PathLike | None, n: int,
                      seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Up to `n` test-split images (seeded choice) at the model's size, with their labels when
    the model is conditional (its likelihood is then p(x | label))."""
    from genlab.data import load_images, resize_images

    test = load_images(dataset, "test", data_dir)
    index = torch.from_numpy(choose(test.images.shape[0], n, seed))
    images = test.images[index]
    size = getattr(model.config, "image_size", 0)
    if size and size != images.shape[-1]:
        images = resize_images(images, size)  # as the training images were
    conditional = model.num_classes and test.labels is not None
    return images, test.labels[index] if conditional else None


def _likelihood(model: Any, data: tuple[torch.Tensor, torch.Tensor | None], seed: int,
                iwae_k: int) -> dict[str, Any]:
    images, labels = data
    generator = torch.Generator(device=model.device).manual_seed(seed)
    kw = {"labels": labels} if labels is not None else {}
    return dict(model.likelihood_report(images, iwae_k=iwae_k, generator=generator, **kw))


# --- genlab eval --fake FILE --real DATASET -------------------------------------------------------

def load_fake(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 `(N, C, H, W)` images (and labels, from an npz) from an .npz or a folder of images."""
    from genlab.data import load_images

    path = Path(path)
    if path.is_dir():
        return load_images(f"folder:{path}").images, None
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise UserError(f"--fake {path}: give an .npz file (uint8 `images`) or a folder of PNGs")
    arrays = read_npz(path)
    images = arrays.get("images")
    if images is None:
        raise UserError(f"--fake {path} has no `images` array (it has {', '.join(arrays)}); "
                        "save uint8 images under the name images")
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise UserError(f"--fake {path}: `images` must be uint8 (N, H, W) or (N, H, W, C), got "
                        f"{images.dtype} {images.shape}; quantize with round(x * 255) first")
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x[:, None] if x.dim() == 3 else x.permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    labels = arrays.get("labels")
    if labels is not None and (labels.shape != (x.shape[0],) or labels.dtype.kind not in "iu"):
        raise UserError(f"--fake {path}: `labels` must be {x.shape[0]} integers, got "
                        f"{labels.dtype} {labels.shape}")
    return x, torch.from_numpy(labels.astype(np.int64)) if labels is not None else None


def evaluate_fake(fake: str | os.PathLike, real: str, *, n: int = 10000, seed: int = 0,
                  data_dir: str | os.PathLike | None = None, feature_net: str | None = None,
                  command: str | None = None, log: Log = _log) -> dict[str, Any]:
    """Compare any generated images with a dataset split (default: the net's held-out images)."""
    dataset, split = parse_real(real)
    dataset = dataset.lower().replace("_", "-")
    net = load_feature_net(feature_net) if feature_net else feature_net_for(dataset)
    if net is None:
        raise UserError(f"no feature net for {dataset!r}; --fake needs one of "
                        f"{', '.join(shipped_names())} (or --feature-net FILE)")
    images, labels = load_fake(fake)
    net.check_images(images)
    report = empty_report(n, seed, command)
    report["provenance"]["fake"] = str(fake)
    reference = reference_subset(net, dataset, split, data_dir, report["notes"], log)
    cap = min(len(reference.images), images.shape[0])
    report["n"] = n = _cap(n, cap, f"{reference.label()} and {images.shape[0]} fakes", report, log)
    index = torch.from_numpy(choose(images.shape[0], n, seed))
    compare(net, images[index], labels[index] if labels is not None else None, reference, n=n,
            seed=seed, data_dir=data_dir, report=report, log=log)
    return report


# --- during training ------------------------------------------------------------------------------

def training_evaluator(model: Any, dataset: str, record: dict[str, Any],
                       data_dir: str | os.PathLike | None, device: torch.device
                       ) -> tuple[Callable[[int], dict[str, float]], str] | None:
    """FD and KID of `train.eval_n` samples (same latent points each time) against as many
    held-out images, whose features and statistics are computed once; for models with a
    likelihood, also the validation negative ELBO. None when there is nothing to measure."""
    n, seed = record["train_config"]["eval_n"], record["train_config"]["seed"]
    net = feature_net_for(dataset)
    has_likelihood = isinstance(model, Likelihood)
    if net is None and not has_likelihood:
        return None
    notes: list[str] = []
    real = stats = None
    if has_likelihood:
        held_out = likelihood_images(model, dataset, data_dir, min(n, 1000), seed)
    if net is not None:
        net = net.to(device)
        reference = reference_subset(net, dataset, None, data_dir, notes, _log)
        real = subset_features(net, reference, choose(len(reference.images), n, seed))
        stats = gaussian_stats(real.features)

    def evaluate(step: int) -> dict[str, float]:
        model.eval()
        out: dict[str, float] = {}
        if net is not None:
            images, _ = sample_images(model, len(real), seed)
            feats, _ = net.embed(native_size(net, images, notes, lambda _: None))
            out["fd"] = frechet_distance_from_stats(*stats, *gaussian_stats(feats))
            out["kid_mean"], out["kid_std"] = kid(real.features, feats, seed=seed)
        if has_likelihood:
            report = _likelihood(model, held_out, seed, TRAIN_IWAE_K)
            out["val_neg_elbo"] = report["neg_elbo_nats"]
        return out

    return evaluate, "fd" if net is not None else "val_neg_elbo"


# --- helpers --------------------------------------------------------------------------------------

def _note(notes: list[str], log: Log, message: str) -> None:
    if message not in notes:
        notes.append(message)
        log(message)


def _cap(n: int, available: int, what: str, report: dict[str, Any], log: Log) -> int:
    if available < MIN_N:
        raise UserError(f"only {available} images in {what}; the metrics need at least {MIN_N}")
    if n > available:
        _note(report["notes"], log, f"note: --n {n} capped at {available} ({what})")
        report["n_requested"] = n
    elif n < MIN_N:
        raise UserError(f"--n {n} is too small; the metrics need at least {MIN_N} images")
    return min(n, available)


def _range(d: dict[str, Any]) -> str:
    return f"{d['dataset']}:{d['split']}[{d['start']}:{d['stop']}]"


def format_report(report: dict[str, Any]) -> str:
    """A small text table: each metric for the model and for the real-vs-real floor."""
    rows = [("metric", "model", "floor (real vs real)")]
    floor = report.get("floor") or {}
    for key in IMAGE_KEYS:
        if report.get(key) is not None or floor.get(key) is not None:
            rows.append((key, _fmt(report.get(key)), _fmt(floor.get(key))))
    lines = []
    if len(rows) > 1:
        w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
        lines += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    for key, value in report.items():
        if key not in IMAGE_KEYS and isinstance(value, int | float) and key not in ("n", "seed"):
            lines.append(f"{key}: {_fmt(value)}")
    net = report.get("feature_net")
    if net:
        lines.append(f"features: {net['name']} net (sha256 {net['sha256'][:16]}..., test "
                     f"accuracy {net['test_accuracy']:.4f}); FD is not FID")
    if report.get("real"):
        lines.append(f"real: {report['real']['n']} images of {_range(report['real'])}; "
                     f"floor: {floor.get('source', 'none')}")
    prov = report["provenance"]
    lines.append(f"n={report['n']} seed={report['seed']} step={prov.get('step')} "
                 f"genlab {prov['genlab']}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


__all__ = ["evaluate_fake", "evaluate_images", "format_report", "load_fake", "training_evaluator"]
