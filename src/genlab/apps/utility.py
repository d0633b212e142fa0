"""`genlab utility`: does synthetic data help a classifier, by how much, and how sure are we?

Arms, each a training set for the same fixed small-CNN recipe (`genlab.classifier`) trained for the
same number of optimisation steps, scored once each on the real test split:

    R              n real images per class, chosen by a seed (the generator's own subset)
    S, S:large     synthetic only, as many as R and `large_n` (train on synthetic, test on real)
    R+S:k=K        R plus K x |R| synthetic images
    R+classical    R plus |R| shifted and slightly rotated copies of R
    R+noise        R plus |R| uniform-noise images with random labels
    R-duplicated   R repeated to the size of the largest R+S arm

Every classifier seed trains every arm (same initialisation, same sample stream seed), so arms are
compared by the paired difference against R, with a t-interval over seeds; "helps" only when that
interval excludes 0. There is no model selection (fixed steps, last weights), so no validation
split is needed and the test split is used once per trained classifier. See docs/utility.md.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genlab.classifier import FeatureNetConfig, Plan, accuracy, fit_classifier
from genlab.data import ImageData, load_images, resize_images
from genlab.data.subset import per_class_indices, subset_sha256
from genlab.errors import UserError
from genlab.files import atomic_write_text
from genlab.images import read_npz
from genlab.limits import MAX_SAMPLES, derive_seed
from genlab.log import get_logger
from genlab.version import __version__

log = get_logger(__name__)

ARMS = ("R", "S", "S:large", "R+S:k=0.5", "R+S:k=1", "R+S:k=2", "R+S:k=4", "R+classical",
        "R+noise", "R-duplicated")
FAST_ARMS = ("R", "S", "R+S:k=1")
DEFAULT_SEEDS, DEFAULT_STEPS, FAST_STEPS = 5, 1000, 300
LARGE_FACTOR = 10  # S:large = 10 x |R| synthetic images (at most MAX_SAMPLES)
PLAN = Plan(epochs=1, flips=False)  # one pass over a stream of exactly steps x batch images
COPY_RMS = 2.0  # an S image within this RMS pixel distance (of 255) of an R image is a copy
COPY_CHECKED = 1000  # S images compared with R for copies
COPY_ALERT = 0.05  # fraction of copies above which the report says S is copies
GENERATE_CHUNK = 2000
ARM_NAME = re.compile(r"^(R|S|S:large|R\+S:k=(\d+(\.\d+)?)|R\+classical|R\+noise|R-duplicated)$")
OUTPUT_JSON, OUTPUT_MD = "utility.json", "utility.md"


@dataclass
class UtilityRequest:
    """What `genlab utility` was asked; `None` means "not given"."""

    run_dir: str | None = None  # a conditional image generator's run folder, or
    # more runs of the generator's recipe trained with other seeds: classifier seed s uses run
    # s mod G (and the subset that run trained on), so the intervals include generator variance
    generator_seeds: tuple[str, ...] = ()
    fake: str | None = None  # an .npz of labelled samples (`images`, `labels`)
    data: str | None = None  # the real dataset (default: the run's)
    data_dir: str | None = None
    real_per_class: int | None = None  # 0 = the whole split; default: the run's, else 100
    seeds: int | None = None  # classifier seeds (default 5; 1 with fast)
    fast: bool = False  # one seed, arms R, S, R+S:k=1, fewer steps
    arms: tuple[str, ...] | None = None
    steps: int | None = None  # optimisation steps of every arm
    large_n: int | None = None  # size of S:large
    seed: int = 0  # base seed of the classifier seeds and the synthetic samples
    subset_seed: int | None = None  # seed of R's subset (default: the generator's)
    allow_leak: bool = False
    which: str = "checkpoint"
    device: str = "cpu"
    out: str | None = None  # folder of utility.json / utility.md (default: the run folder)
    # how the generator samples: the family's `sample_options` (a diffusion model's sampler,
    # sample_steps, guidance), and fp32 or bf16 autocast ("auto": bf16 where native)
    sample_options: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"
    plan: Plan = field(default_factory=lambda: PLAN)
    command: str | None = None


# --- statistics -----------------------------------------------------------------------------------

# two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30
_T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010,
         2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739,
         2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (table, then the
    Cornish-Fisher expansion, which is within 1e-4 of the exact value above df = 30)."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def t_interval(values: list[float]) -> list[float | None]:
    """The 95% t-interval of the mean of `values`; `[None, None]` for fewer than 2."""
    n = len(values)
    if n < 2:
        return [None, None]
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return [mean - half, mean + half]


def _clip(ci: list[float | None]) -> list[float | None]:
    return [None if x is None else min(1.0, max(0.0, x)) for x in ci]


def summarize(per_seed: dict[str, list[float]], n_test: int) -> dict[str, Any]:
    """`arms`, `paired_vs_R` and `test_error` of the report from per-seed accuracies."""
    # an accuracy lies in [0, 1], so its interval is clipped there (a delta's is not)
    arms = {name: {"accuracy": sum(v) / len(v), "ci95": _clip(t_interval(v)), "per_seed": v}
            for name, v in per_seed.items()}
    paired = {}
    for name, values in per_seed.items():
        if name == "R" or "R" not in per_seed:
            continue
        deltas = [a - r for a, r in zip(values, per_seed["R"], strict=True)]
        lo, hi = t_interval(deltas)
        paired[name] = {"delta": sum(deltas) / len(deltas), "ci95": [lo, hi],
                        "per_seed": deltas, "helps": lo is not None and lo > 0}
    p = arms["R"]["accuracy"] if "R" in arms else next(iter(arms.values()))["accuracy"]
    se = math.sqrt(p * (1 - p) / n_test)
    test_error = {"n_test": n_test, "std_error": se, "ci95_halfwidth": 1.96 * se,
                  "note": "binomial sampling error of one accuracy on this test set (at R's "
                          "accuracy); the seed intervals do not include it"}
    return {"arms": arms, "paired_vs_R": paired, "test_error": test_error}


# --- training sets --------------------------------------------------------------------------------

def parse_arms(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Arm names checked (`R` first, always present); an unknown name is a `UserError`."""
    out = ["R"]
    for name in names:
        name = name.strip()
        if not ARM_NAME.match(name):
            raise UserError(f"unknown arm {name!r}; arms are {', '.join(ARMS)} "
                            "(R+S:k=K takes any K > 0)")
        if name.startswith("R+S:k=") and float(name[6:]) <= 0:
            raise UserError(f"arm {name}: k must be > 0")
        if name not in out:
            out.append(name)
    return tuple(out)


def _k(name: str) -> float:
    return float(name[len("R+S:k="):])


def classical_augment(images: Tensor, generator: torch.Generator, *, max_shift: int = 3,
                      max_degrees: float = 10.0) -> Tensor:
    """One random shift (up to `max_shift` pixels) and rotation (up to `max_degrees`) per uint8
    image, bilinear, zero fill."""
    out = torch.empty_like(images)
    side = images.shape[-1]
    for start in range(0, len(images), 4096):
        chunk = images[start:start + 4096]
        n = len(chunk)
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(max_degrees)
        shift = torch.randint(-max_shift, max_shift + 1, (2, n), generator=generator).float()
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([cos, -sin, shift[0] * 2 / side], 1),
                             torch.stack([sin, cos, shift[1] * 2 / side], 1)], 1)  # (N, 2, 3)
        grid = F.affine_grid(theta, list(chunk.shape), align_corners=False)
        moved = F.grid_sample(chunk.float(), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)
        out[start:start + n] = moved.round_().clamp_(0, 255).to(torch.uint8)
    return out


def copy_fraction(synthetic: Tensor, real: Tensor) -> float:
    """The fraction of (the first `COPY_CHECKED`) synthetic images whose nearest real image is
    within `COPY_RMS` RMS pixel distance: copies, not new images."""
    s = synthetic[:COPY_CHECKED].flatten(1).float()
    r = real.flatten(1).float()
    nearest = torch.full((len(s),), math.inf)
    for start in range(0, len(r), 4096):
        d = torch.cdist(s, r[start:start + 4096]).min(1).values
        nearest = torch.minimum(nearest, d)
    rms = nearest / math.sqrt(s.shape[1])
    return float((rms < COPY_RMS).double().mean())


def _balanced_order(labels: Tensor, generator: torch.Generator) -> Tensor:
    """Indices of a labelled pool, shuffled within each class, then interleaved class by class,
    so that every prefix of a multiple of K items is as balanced as the pool allows."""
    order = torch.randperm(len(labels), generator=generator)
    ranks = torch.empty(len(labels), dtype=torch.long)
    for c in torch.unique(labels).tolist():
        members = order[labels[order] == c]
        ranks[members] = torch.arange(len(members))
    key = ranks * (int(labels.max()) + 1) + labels
    return torch.argsort(key, stable=True)


def _stream(n: int, total: int, generator: torch.Generator) -> Tensor:
    """`total` indices of 0..n-1: whole permutations one after another, cut at `total`."""
    reps = -(-total // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:total]


# --- synthetic sources ----------------------------------------------------------------------------

Source = Callable[[int, int], tuple[Tensor, Tensor]]  # (n, seed) -> balanced images, labels


def load_fake(path: str, real: ImageData) -> tuple[Tensor, Tensor, str]:
    """`images` (uint8 N x H x W, N x C x H x W, or N x H x W x C as `genlab sample` writes
    colour) and integer `labels` of an .npz, checked against the real data, and its SHA-256."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"--fake {path} is not a file; give an .npz with images and labels")
    arrays = read_npz(path)
    if "images" not in arrays:
        raise UserError(f"--fake {path} has no `images` array (it has: "
                        f"{', '.join(arrays) or 'nothing'})")
    if "labels" not in arrays:
        raise UserError(f"--fake {path} has no `labels` array: genlab utility needs labelled "
                        "samples (save them with np.savez(path, images=..., labels=...))")
    images, labels = arrays["images"], arrays["labels"]
    if images.dtype != np.uint8 or images.ndim not in (3, 4):
        raise UserError(f"--fake {path}: images must be uint8 N x H x W, N x C x H x W or "
                        f"N x H x W x C, got {images.dtype} {images.shape}")
    images = images[:, None] if images.ndim == 3 else images
    c, h, w = real.images.shape[1:]
    if images.shape[1:] != (c, h, w) and images.shape[1:] == (h, w, c):
        images = images.transpose(0, 3, 1, 2)  # channels last, as `genlab sample` saves colour
    if images.shape[1:] != tuple(real.images.shape[1:]):
        raise UserError(f"--fake {path}: images are {images.shape[1:]}, the real data "
                        f"{tuple(real.images.shape[1:])}; give images of the same size")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype,
                                                                           np.integer):
        raise UserError(f"--fake {path}: labels must be {len(images)} integers, got "
                        f"{labels.dtype} {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() >= real.num_classes):
        raise UserError(f"--fake {path}: labels must be classes 0..{real.num_classes - 1}, got "
                        f"{labels.min()}..{labels.max()}")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return (torch.from_numpy(np.ascontiguousarray(images)),
            torch.from_numpy(labels.astype(np.int64)), digest)


def fake_source(images: Tensor, labels: Tensor) -> Source:
    def draw(n: int, seed: int) -> tuple[Tensor, Tensor]:
        order = _balanced_order(labels, torch.Generator().manual_seed(seed))[:n]
        return images[order], labels[order]
    return draw


def generator_source(model: Any, real: ImageData, options: dict[str, Any] | None = None) -> Source:
    """Labelled samples of a conditional image model through the generation API, classes
    0..K-1 in turn, resized to the real images' size; `options` are the request's sampling
    options, checked here by drawing one image, so a wrong one fails before any training."""
    from genlab.generation import GenerationRequest
    from genlab.modalities import generate, get_modality
    from genlab.modalities.image import ImageSamples

    k, (c, side, _) = real.num_classes, real.images.shape[1:]
    if get_modality(model.modality).samples_class is not ImageSamples:
        raise UserError(f"genlab utility needs an image generator; this run made {model.modality}")
    if model.num_classes != k:
        raise UserError(f"genlab utility needs a conditional generator with {k} classes (train "
                        f"it with --conditional); this one has {model.num_classes or 'none'}")
    if model.config.channels != c:
        raise UserError(f"the generator makes {model.config.channels}-channel images, the real "
                        f"data has {c}; use the dataset it was trained on")

    def draw(n: int, seed: int) -> tuple[Tensor, Tensor]:
        images, labels = [], []
        for i, start in enumerate(range(0, n, GENERATE_CHUNK)):
            m = min(GENERATE_CHUNK, n - start)
            wanted = [(start + j) % k for j in range(m)]
            samples = generate(model, GenerationRequest(n=m, seed=derive_seed(seed, i),
                                                        label=wanted, options=options or {}))
            images.append(resize_images(samples.images, side))
            labels.append(samples.labels.long())
        return torch.cat(images), torch.cat(labels)

    draw(1, 0)
    return draw


# --- the leakage check ----------------------------------------------------------------------------

def check_leakage(record: dict[str, Any] | None, real: ImageData, real_hash: str,
                  allow: bool) -> dict[str, Any]:
    """Whether the generator was trained on exactly R's images: `ok`, or a `UserError` (exit 2)
    unless `allow`, when the report says `mismatch (allowed by --allow-leak)`."""
    if record is None:
        return {"status": "not checked", "why": "--fake samples carry no generator provenance"}
    info = record.get("data_info", {})
    if "subset" in info:
        gen_hash, trained_on = info["subset"]["sha256"], (
            f"{info['subset']['per_class']} per class (seed {info['subset']['seed']})")
    elif info.get("sha256") == real.sha256 and info.get("split", "train") == "train":
        gen_hash = subset_sha256(torch.arange(len(real.images)), real.sha256, "train")
        trained_on = f"all {len(real.images)} training images"
    else:
        gen_hash, trained_on = None, f"other data ({info.get('name', record.get('data'))})"
    out = {"generator_subset_sha256": gen_hash, "real_subset_sha256": real_hash,
           "generator_trained_on": trained_on}
    if gen_hash == real_hash:
        return {"status": "ok", **out}
    if not allow:
        raise UserError(f"leakage check: the generator was trained on {trained_on}, not on the "
                        f"real subset R (subset hash {real_hash[:12]} vs "
                        f"{(gen_hash or 'none')[:12]}); train it with --set "
                        "train.per_class=N on the same data, pick the same --real-per-class and "
                        "--subset-seed, or pass --allow-leak to report it anyway")
    return {"status": "mismatch (allowed by --allow-leak)", **out}


# --- the protocol ---------------------------------------------------------------------------------

def recipe(plan: Plan, steps: int) -> dict[str, Any]:
    return {"classifier": asdict(FeatureNetConfig()) | {"widths": list(FeatureNetConfig().widths)},
            "plan": asdict(plan), "steps": steps, "selection": "none (fixed steps, last weights)",
            "stream": "whole permutations of the arm's set, cut at steps x batch_size"}


def run_utility(req: UtilityRequest) -> dict[str, Any]:
    """Train every arm for every classifier seed; return the report (written to `req.out`, or
    the run folder, as utility.json and utility.md)."""
    from genlab.devices import sampling_precision
    from genlab.rundir import checkpoint_path, load_model, read_run

    t0 = time.perf_counter()
    if (req.run_dir is None) == (req.fake is None):
        raise UserError("give either a RUN_DIR (a conditional image generator) or --fake FILE.npz")
    if req.generator_seeds and req.fake:
        raise UserError("--generator-seeds takes generator runs; it does not apply to --fake")
    if req.fake and (req.sample_options or req.precision != "fp32"):
        raise UserError(f"--{next(iter(req.sample_options), 'precision').replace('_', '-')} "
                        "sets how a generator run samples; --fake images are already drawn")
    out = req.out or req.run_dir  # a missing run folder is read_run's error, below
    if req.out is not None and not Path(req.out).is_dir():  # now, not after the training
        raise UserError(f"--out {req.out} is not a folder; utility.json goes there")
    arms = parse_arms(req.arms or (FAST_ARMS if req.fast else ARMS))
    seeds = req.seeds or (1 if req.fast else DEFAULT_SEEDS)
    steps = req.steps or (FAST_STEPS if req.fast else DEFAULT_STEPS)
    runs = [req.run_dir, *req.generator_seeds] if req.run_dir else []
    if len(runs) > seeds:
        raise UserError(f"{len(runs)} generator runs need --seeds {len(runs)} or more (each "
                        "classifier seed uses one run in turn)")
    records = [read_run(run) for run in runs]
    record = records[0] if records else None
    subsets = [r.get("data_info", {}).get("subset") for r in records]
    subset_info = subsets[0] if subsets else None
    data = req.data or (record or {}).get("data_info", {}).get("name") or (record or {}).get("data")
    if not data:
        raise UserError("--fake needs --data DATASET, the real data to train and test on")
    real = load_images(data, "train", req.data_dir)
    test = load_images(data, "test", req.data_dir)
    if real.labels is None or test.labels is None:
        raise UserError(f"{data} has no labels; genlab utility needs a labelled dataset")
    if test.sha256 == real.sha256:
        raise UserError(f"{data} has no separate test split (its test images are its training "
                        "images); use a dataset with a test split")
    fake = load_fake(req.fake, real) if req.fake else None  # its errors before any other
    per_class = req.real_per_class
    if per_class is None:
        per_class = subset_info["per_class"] if subset_info else (0 if record else 100)
    # one setup per generator run (one for --fake): R is the subset that generator trained on
    setups = []
    for i, run_record in enumerate(records or [None]):
        sub = subsets[i] if records else None
        subset_seed = req.subset_seed if req.subset_seed is not None else (
            sub["seed"] if sub else 0)
        r_idx = (per_class_indices(real.labels, per_class, subset_seed, "--real-per-class")
                 if per_class else torch.arange(len(real.images)))
        r_hash = subset_sha256(r_idx, real.sha256, "train")
        leak = check_leakage(run_record, real, r_hash, req.allow_leak)  # before any training
        setups.append({"r": (real.images[r_idx], real.labels[r_idx]), "hash": r_hash,
                       "leakage": leak, "subset_seed": subset_seed})
    n_r = len(setups[0]["r"][0])
    large_n = min(req.large_n or LARGE_FACTOR * n_r, MAX_SAMPLES)
    leakage = setups[0]["leakage"]
    if len(setups) > 1:
        worst = next((x["leakage"] for x in setups if x["leakage"]["status"] != "ok"), leakage)
        leakage = {**worst, "per_generator": [x["leakage"] for x in setups]}
    provenance: dict[str, Any] = {"genlab": __version__, "command": req.command,
                                  "data": real.name, "data_sha256": real.sha256,
                                  "test_sha256": test.sha256, "subset_sha256": setups[0]["hash"],
                                  "leakage": leakage}
    for run, run_record, setup in zip(runs, records, setups, strict=False):
        model = load_model(run, which=req.which, device=req.device)
        precision = sampling_precision(model, req.precision, log.warning)
        manifest = checkpoint_path(run, req.which) / "manifest.json"
        setup["generator"] = {
            "run": str(run), "model": run_record.get("model"), "which": req.which,
            "step": model.checkpoint_step, "subset_sha256": setup["hash"],
            # the manifest lists the SHA-256 of every file of the checkpoint
            "checkpoint_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
            "sampling": {**req.sample_options, "precision": precision}}
        setup["source"] = generator_source(model, real, req.sample_options)
    if fake is not None:
        fake_images, fake_labels, digest = fake
        setups[0]["generator"] = {"fake": str(req.fake), "fake_sha256": digest,
                                  "checkpoint_sha256": None}
        setups[0]["source"] = fake_source(fake_images, fake_labels)
    provenance["generator"] = setups[0]["generator"]
    if len(setups) > 1:
        provenance["generators"] = [x["generator"] for x in setups]
    rec = recipe(req.plan, steps)
    provenance["recipe"] = rec
    provenance["recipe_sha256"] = hashlib.sha256(
        json.dumps(rec, sort_keys=True).encode()).hexdigest()
    sizes = {"R": n_r, "S": n_r, "S:large": large_n}
    sizes |= {a: n_r + _balanced_size(_k(a), per_class, n_r, real.num_classes)
              for a in arms if a.startswith("R+S:k=")}
    largest_mix = max([s for a, s in sizes.items() if a.startswith("R+S")] or [2 * n_r])
    sizes |= {"R+classical": 2 * n_r, "R+noise": 2 * n_r, "R-duplicated": largest_mix}
    need = max([sizes[a] - (n_r if a.startswith("R+S") else 0) for a in arms
                if a.startswith("S") or a.startswith("R+S")] or [0])
    per_seed: dict[str, list[float]] = {a: [] for a in arms}
    used: dict[str, int] = {}
    seeds_used, sample_seeds = [], []
    copies = None
    for s in range(seeds):
        setup = setups[s % len(setups)]  # classifier seed s pairs with generator s mod G
        r_images, r_labels = setup["r"]
        fit_seed, sample_seed = derive_seed(req.seed, s), derive_seed(req.seed, 1000 + s)
        seeds_used.append(fit_seed)
        sample_seeds.append(sample_seed)
        s_images, s_labels = (setup["source"](need, sample_seed) if need
                              else (r_images[:0], r_labels[:0]))
        if need and s < len(setups):
            copies = max(copies or 0.0, copy_fraction(s_images[:n_r], r_images))
        for arm in arms:
            x, y = _arm_set(arm, r_images, r_labels, s_images, s_labels, sizes,
                            torch.Generator().manual_seed(derive_seed(fit_seed, 17)))
            used[arm] = len(x)
            per_seed[arm].append(_fit_and_score(x, y, test, fit_seed, req.plan, steps,
                                                real.num_classes))
            log.info(f"seed {s + 1}/{seeds} {arm}: accuracy {per_seed[arm][-1]:.4f} "
                     f"({time.perf_counter() - t0:.0f}s)")
    report = summarize(per_seed, len(test.labels))
    for arm, entry in report["arms"].items():
        entry["n_train"] = used[arm]
    notes = []
    if leakage["status"].startswith("mismatch"):
        notes.append(f"LEAK: {leakage['status']}: the generator was trained on "
                     f"{leakage['generator_trained_on']}, not on R alone; gains may come from "
                     "labelled data R did not have")
    if copies is not None and copies > COPY_ALERT:
        notes.append(f"{copies:.0%} of the synthetic images are copies of R's training images: "
                     "a high S accuracy here is memorisation, not generation; run `genlab audit` "
                     "on the generator")
    elif "S" in per_seed and report["arms"]["S"]["accuracy"] >= report["arms"]["R"]["accuracy"]:
        notes.append("S scores as high as R: check the generator for memorised training images "
                     "with `genlab audit`")
    if seeds < 2:
        notes.append("one classifier seed: no intervals, so no arm can be said to help; use "
                     f"--seeds {DEFAULT_SEEDS} or more")
    for arm, n in used.items():
        if n < sizes[arm]:
            notes.append(f"{arm}: the synthetic pool held only {n} of the {sizes[arm]} images "
                         "asked for")
    provenance["seeds"] = {"base": req.seed, "classifier": seeds_used, "samples": sample_seeds,
                           "subset": [x["subset_seed"] for x in setups] if len(setups) > 1
                           else setups[0]["subset_seed"]}
    provenance["seconds"] = round(time.perf_counter() - t0, 1)
    report = {**report, "real_per_class": per_class or "all", "seeds": seeds, "steps": steps,
              "copies_of_R": copies, "leakage": leakage, "notes": notes,
              "provenance": provenance}
    if out is not None:
        write_report(report, Path(out))
    return report


def _balanced_size(k: float, per_class: int, n_r: int, num_classes: int) -> int:
    """k x |R| synthetic images, rounded to whole rows of classes so the mix stays balanced."""
    per = per_class or n_r / num_classes
    return max(1, round(k * per)) * num_classes


def _arm_set(arm: str, r_images: Tensor, r_labels: Tensor, s_images: Tensor, s_labels: Tensor,
             sizes: dict[str, int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    n_r = len(r_images)
    if arm == "R":
        return r_images, r_labels
    if arm in ("S", "S:large"):
        return s_images[:sizes[arm]], s_labels[:sizes[arm]]
    if arm.startswith("R+S:k="):
        m = sizes[arm] - n_r
        return torch.cat([r_images, s_images[:m]]), torch.cat([r_labels, s_labels[:m]])
    if arm == "R+classical":
        moved = classical_augment(r_images, generator)
        return torch.cat([r_images, moved]), torch.cat([r_labels, r_labels])
    if arm == "R+noise":
        noise = torch.randint(0, 256, r_images.shape, generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, int(r_labels.max()) + 1, (n_r,), generator=generator)
        return torch.cat([r_images, noise]), torch.cat([r_labels, labels])
    if arm == "R-duplicated":
        idx = torch.arange(sizes[arm]) % n_r
        return r_images[idx], r_labels[idx]
    raise AssertionError(arm)


def _fit_and_score(images: Tensor, labels: Tensor, test: ImageData, seed: int, plan: Plan,
                   steps: int, num_classes: int) -> float:
    """The recipe on `steps` batches drawn from the arm's set; the test split scored once."""
    stream = _stream(len(images), steps * plan.batch_size,
                     torch.Generator().manual_seed(derive_seed(seed, 3)))
    net = fit_classifier(images[stream], labels[stream], seed=seed, plan=replace(plan, epochs=1),
                         num_classes=num_classes, log=log.debug)
    return accuracy(net, test.images, test.labels)


# --- output ---------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "    -  " if x is None else f"{100 * x:6.2f}"


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table (accuracies in %), then the test error, leakage, notes."""
    lines = [f"real per class: {report['real_per_class']}, classifier seeds: {report['seeds']}, "
             f"steps per arm: {report['steps']}",
             f"{'arm':<14}{'n_train':>8}  {'acc %':>6}  {'95% CI':>17}  {'vs R':>7}  "
             f"{'95% CI':>17}  helps"]
    for name, arm in report["arms"].items():
        lo, hi = arm["ci95"]
        row = (f"{name:<14}{arm['n_train']:>8}  {_pct(arm['accuracy'])}  "
               f"[{_pct(lo)}, {_pct(hi)}]")
        if name in report["paired_vs_R"]:
            d = report["paired_vs_R"][name]
            row += (f"  {100 * d['delta']:+7.2f}  [{_pct(d['ci95'][0])}, {_pct(d['ci95'][1])}]"
                    f"  {'yes' if d['helps'] else 'no'}")
        lines.append(row)
    te = report["test_error"]
    lines.append(f"test error: +/- {100 * te['ci95_halfwidth']:.2f} points (95%, binomial, "
                 f"{te['n_test']} test images)")
    lines.append(f"leakage check: {report['leakage']['status']}")
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    p = report["provenance"]
    rows = ["| arm | n_train | accuracy % | 95% CI | vs R | 95% CI | helps |",
            "| --- | ---: | ---: | --- | ---: | --- | --- |"]
    for name, arm in report["arms"].items():
        lo, hi = arm["ci95"]
        d = report["paired_vs_R"].get(name)
        extra = (f"{100 * d['delta']:+.2f} | [{_pct(d['ci95'][0]).strip()}, "
                 f"{_pct(d['ci95'][1]).strip()}] | {'yes' if d['helps'] else 'no'}"
                 if d else " | | ")
        rows.append(f"| {name} | {arm['n_train']} | {100 * arm['accuracy']:.2f} | "
                    f"[{_pct(lo).strip()}, {_pct(hi).strip()}] | {extra} |")
    te = report["test_error"]
    notes = "".join(f"- {n}\n" for n in report["notes"]) or "- none\n"
    gen = p["generator"]
    return (f"# genlab utility\n\nData {p['data']}, {report['real_per_class']} real per class, "
            f"{report['seeds']} classifier seeds, {report['steps']} steps per arm.\n\n"
            + "\n".join(rows) + f"\n\nTest error: +/- {100 * te['ci95_halfwidth']:.2f} points "
            f"(95%, binomial, {te['n_test']} test images). Leakage check: "
            f"{report['leakage']['status']}.\n\n## Notes\n\n{notes}\n## Provenance\n\n"
            f"- generator: {gen.get('run') or gen.get('fake')} (checkpoint sha256 "
            f"{gen.get('checkpoint_sha256') or gen.get('fake_sha256')})\n"
            f"- subset sha256: {p['subset_sha256']}\n- recipe sha256: {p['recipe_sha256']}\n"
            f"- genlab {p['genlab']}, {p['seconds']} s\n")


def write_report(report: dict[str, Any], folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(f"--out {folder} is not a folder")
    atomic_write_text(folder / OUTPUT_JSON, json.dumps(report, indent=1))
    atomic_write_text(folder / OUTPUT_MD, format_markdown(report))
