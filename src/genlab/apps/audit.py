"""`genlab audit`: does a model copy its training data? (docs/audit.md)

An image run is audited with three sets of images: the training images the run saw, as many
held-out real images of the same distribution (the test split), and generated samples; each in
pixel space and, when genlab ships one for the dataset, in the feature net's space:

1. closer to train than to held-out (members vs held-out, balanced): 0.5 when nothing is copied;
2. near-copies by the calibrated ratio (nearest / mean of the next five, against the whole
   training set), thresholded at the 0.1th percentile of the held-out images' ratios;
3. membership inference, members vs non-members of equal number: the distance to the nearest
   generated samples, and whatever the model declares (`Likelihood`: ELBO, `Encoder`:
   reconstruction error, `Discriminator`: the critic's score);
4. Meehan et al.'s Z_U three-sample test.

A text run goes to `genlab.apps.audit_text`. The run's modality chooses (`AUDITS`, keyed by what
the modality feeds), so nothing here compares modality names.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genlab.errors import UserError
from genlab.files import atomic_write_text, refuse_symlinks
from genlab.images import grid_png, write_bytes
from genlab.log import get_logger
from genlab.metrics.neighbours import nearest
from genlab.metrics.privacy import (
    BOOTSTRAP,
    NEXT,
    attack_report,
    calibrated_ratio,
    closer_to_train,
    near_copies,
    zu_test,
)
from genlab.models.base import Discriminator, Encoder, GenerativeModel, Likelihood
from genlab.version import __version__

AUDIT_FILE, COPIES_FILE = "audit.json", "audit_copies.png"
WORST_SHOWN = 8  # near-copies (or closest samples) shown beside their nearest training image
DEFAULT_N = 10000
MODEL_BATCH = 500

Log = Callable[[str], None]
_log = get_logger(__name__).info
# scores of query images (uint8 (N, C, H, W), labels or None) -> (N,), higher = "was trained on"
Scorer = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


# --- the audit on arrays ---------------------------------------------------------------------------

def _unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> flat float32 vectors in [0, 1] (pixel space)."""
    return images.reshape(images.shape[0], -1).float().div_(255.0)


def space_audit(train: torch.Tensor, members: torch.Tensor, heldout: torch.Tensor,
                generated: torch.Tensor, *, seed: int, bootstrap: int) -> dict[str, Any]:
    """Everything that needs only distances, in one embedding space: vectors `(N, D)` of the
    whole training set, the member subset, the held-out set and the generated samples."""
    k = min(1 + NEXT, train.shape[0])
    d_gen_train, i_gen_train = nearest(generated, train, k)
    d_held_train = nearest(heldout, train, k)[0]
    closer = closer_to_train(nearest(generated, members, 1)[0][:, 0],
                             nearest(generated, heldout, 1)[0][:, 0])
    out: dict[str, Any] = {"closer_to_train": closer}
    if k == 1 + NEXT:
        g_ratio, h_ratio = calibrated_ratio(d_gen_train), calibrated_ratio(d_held_train)
        out["near_copies"] = near_copies(g_ratio, h_ratio)
    else:  # fewer than six training images: no ratio
        g_ratio = d_gen_train[:, 0].numpy()
        out["near_copies"] = None
    # attack: a member is close to some generated sample (the generator reproduced it)
    d_mem_gen = nearest(members, generated, 1)[0][:, 0]
    d_non_gen = nearest(heldout, generated, 1)[0][:, 0]
    out["attack"] = attack_report(-d_mem_gen, -d_non_gen, seed=seed, bootstrap=bootstrap)
    out["data_copying"] = zu_test(members, heldout, generated, seed=seed)
    out["_worst"] = (np.argsort(g_ratio, kind="stable")[:WORST_SHOWN],
                     i_gen_train[:, 0].numpy())
    return out


def audit_images(train: torch.Tensor, heldout: torch.Tensor, generated: torch.Tensor, *,
                 seed: int = 0, bootstrap: int = BOOTSTRAP, members: int | None = None,
                 embed: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 scorers: dict[str, Scorer] | None = None,
                 train_labels: torch.Tensor | None = None,
                 heldout_labels: torch.Tensor | None = None, log: Log = _log
                 ) -> tuple[dict[str, Any], bytes]:
    """The image audit of uint8 images `(N, C, H, W)` of one size: the report (without
    provenance) and the PNG of the worst near-copies beside their nearest training images.

    Members are `members` training images (seeded choice; default as many as there are held-out
    images) and the non-members as many held-out images, so every comparison is balanced.
    `embed` maps images to feature vectors (the feature net); `scorers` are the model's attacks.
    """
    if not (train.shape[1:] == heldout.shape[1:] == generated.shape[1:]):
        raise UserError(f"images differ in shape: train {tuple(train.shape[1:])}, held-out "
                        f"{tuple(heldout.shape[1:])}, generated {tuple(generated.shape[1:])}")
    m = min(members or heldout.shape[0], train.shape[0], heldout.shape[0])
    if m < 10 or generated.shape[0] < 10:
        raise UserError(f"an audit needs at least 10 images of each kind, got {m} members / "
                        f"held-out and {generated.shape[0]} generated")
    rng = np.random.default_rng(seed)
    mem_idx = torch.from_numpy(np.sort(rng.choice(train.shape[0], m, replace=False)))
    held_idx = torch.from_numpy(np.sort(rng.choice(heldout.shape[0], m, replace=False)))
    mem_images, held_images = train[mem_idx], heldout[held_idx]
    mem_labels = train_labels[mem_idx] if train_labels is not None else None
    held_labels = heldout_labels[held_idx] if heldout_labels is not None else None

    t0 = time.perf_counter()
    log(f"pixel space: nearest neighbours of {generated.shape[0]} generated and {m} held-out "
        f"images among {train.shape[0]} training images")
    train_px = _unit(train)
    pixels = space_audit(train_px, train_px[mem_idx], _unit(held_images), _unit(generated),
                         seed=seed, bootstrap=bootstrap)
    worst, nearest_train = pixels.pop("_worst")
    report: dict[str, Any] = {
        "closer_to_train": pixels["closer_to_train"], "near_copies": pixels["near_copies"],
        "attacks": {"nearest_generated": pixels["attack"]},
        "data_copying": {**pixels["data_copying"], "space": "pixels"},
        "spaces": {"pixels": {k: v for k, v in pixels.items() if k != "attack"},
                   "features": None},
        "n_train": m, "n_heldout": m, "n_generated": int(generated.shape[0]),
        "n_train_total": int(train.shape[0]), "notes": []}
    if embed is not None:
        log(f"feature space: embedding {train.shape[0] + m + generated.shape[0]} images")
        train_f = embed(train)
        features = space_audit(train_f, train_f[mem_idx], embed(held_images), embed(generated),
                               seed=seed, bootstrap=bootstrap)
        features.pop("_worst")
        report["attacks"]["nearest_generated_features"] = features.pop("attack")
        report["spaces"]["features"] = features
        report["data_copying"] = {**features["data_copying"], "space": "features"}
    for name, scorer in (scorers or {}).items():
        log(f"attack {name}: scoring {m} members and {m} held-out images")
        scores_m = scorer(mem_images, mem_labels).detach().double().cpu()
        scores_n = scorer(held_images, held_labels).detach().double().cpu()
        if not (scores_m.isfinite().all() and scores_n.isfinite().all()):
            # a diverged model: say so rather than lose the rest of the audit
            report["notes"].append(f"attack {name} skipped: the model gave non-finite scores")
            continue
        report["attacks"][name] = attack_report(scores_m, scores_n, seed=seed,
                                                bootstrap=bootstrap)
    # a collapsed generator (samples nearly alike) turns (1) into one coin flip repeated: say so
    spread_g = nearest(_unit(generated), _unit(generated), 2)[0][:, 1].median()
    spread_h = nearest(_unit(held_images), _unit(held_images), 2)[0][:, 1].median()
    report["sample_spread"] = {"generated": float(spread_g), "heldout": float(spread_h)}
    if spread_g < 0.25 * spread_h:
        report["notes"].append(
            f"warning: the generated samples are nearly alike (median distance to the nearest "
            f"other sample {float(spread_g):.3g}, held-out images {float(spread_h):.3g}): the "
            "closer-to-train interval assumes independent samples and is not meaningful here")
    report["audit_seconds"] = round(time.perf_counter() - t0, 3)
    # generated (left) beside its nearest training image (right), closest first, 4 pairs a row
    pairs = torch.stack([generated[worst], train[nearest_train[worst]]], 1)
    png = grid_png(pairs.reshape(-1, *generated.shape[1:]), nrow=8, min_side=256)
    return report, png


# --- the attacks a model declares ----------------------------------------------------------------

def model_scorers(model: GenerativeModel, size: int | None, seed: int) -> dict[str, Scorer]:
    """Membership attacks from the capabilities the model declares; images are resized to the
    model's side first (a 64x64 DCGAN of 28x28 data) as the training images were."""
    from genlab.data import resize_images

    def at_size(images: torch.Tensor) -> torch.Tensor:
        return resize_images(images, size) if size and images.shape[-1] != size else images

    def labels_kw(labels: torch.Tensor | None) -> dict[str, Any]:
        return {"labels": labels.to(model.device)} if model.num_classes and labels is not None \
            else {}

    def generator() -> torch.Generator:
        return torch.Generator(device=model.device).manual_seed(seed)

    scorers: dict[str, Scorer] = {}
    if isinstance(model, Likelihood):
        def elbo(images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            return -model.example_nll(at_size(images), generator=generator(), **labels_kw(labels))
        scorers["elbo"] = elbo
    if isinstance(model, Encoder):
        @torch.no_grad()
        def reconstruction(images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            out, g = [], generator()
            for s in range(0, images.shape[0], MODEL_BATCH):
                x = at_size(images[s:s + MODEL_BATCH]).to(model.device)
                kw = labels_kw(labels[s:s + MODEL_BATCH] if labels is not None else None)
                target = model.inputs(x, generator=g)
                recon = model.reconstruct(x, generator=g, **kw)
                out.append(-(recon - target).pow(2).flatten(1).mean(1).cpu())
            return torch.cat(out)
        scorers["reconstruction"] = reconstruction
    if isinstance(model, Discriminator):
        def discriminator(images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
            return model.discriminator_score(at_size(images).to(model.device),
                                             **labels_kw(labels))
        scorers["discriminator"] = discriminator
    return scorers


# --- a run, or --fake samples ----------------------------------------------------------------------

def _splits(spec: str, data_dir: str | os.PathLike | None) -> tuple[Any, Any]:
    """Both splits of a dataset as images: `featurenet.subset` reads image datasets as they are
    and audio datasets as the spectrogram images their runs train on."""
    from genlab.featurenet import subset

    train = subset(spec, "train", data_dir=data_dir)
    held = subset(spec, "test", data_dir=data_dir)
    if held.split_sha256 == train.split_sha256:
        raise UserError(f"{spec} has no held-out split apart from its training images (a folder "
                        "has one split); audit a run trained on a dataset with a test split")
    return train, held


def _embedder(dataset: str, feature_net: str | None, shape: tuple[int, ...],
              notes: list[str]) -> tuple[Callable | None, dict[str, Any] | None]:
    from genlab.featurenet import feature_net_for, load_feature_net

    net = load_feature_net(feature_net) if feature_net else feature_net_for(dataset)
    if net is None:
        notes.append(f"no feature net for {dataset}: pixel space only")
        return None, None
    c, s = net.config.channels, net.config.image_size
    if shape != (c, s, s):
        notes.append(f"feature net {net.name} takes {c}x{s}x{s} images, these are "
                     f"{'x'.join(map(str, shape))}: pixel space only")
        return None, None
    return (lambda images: net.embed(images)[0]), {"name": net.name, "sha256": net.sha256}


def _generated(model: GenerativeModel, n: int, seed: int, side: int, notes: list[str]
               ) -> torch.Tensor:
    from genlab.data import resize_images
    from genlab.evaluation import sample_images

    images, _ = sample_images(model, n, seed)
    if images.shape[-1] != side:
        notes.append(f"samples resized {images.shape[-1]} -> {side} (the data's size)")
        images = resize_images(images, side)
    return images


def _checkpoint_sha256(run_dir: Path, which: str) -> str | None:
    import hashlib

    manifest = run_dir / which / "manifest.json"
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else None


def audit_image_run(run_dir: Path, model: GenerativeModel, record: dict[str, Any], *,
                    n: int | None,
                    seed: int, data_dir: str | None, feature_net: str | None, bootstrap: int,
                    members: int | None, log: Log = _log) -> tuple[dict[str, Any], bytes]:
    notes: list[str] = []
    n = n or DEFAULT_N
    spec = record["data"]
    train, held = _splits(spec, data_dir or record.get("data_dir"))
    seen = record.get("data_info", {}).get("sha256")
    if seen and seen != train.sha256:  # of the images (spectrograms for audio), as runs record
        notes.append(f"warning: the training split of {spec} differs from the one the run saw "
                     "(checksum); members may not be the run's training images")
    log(f"sampling {n} images from {run_dir} (seed {seed})")
    generated = _generated(model, n, seed, train.images.shape[-1], notes)
    embed, net_info = _embedder(train.dataset, feature_net, tuple(train.images.shape[1:]), notes)
    labelled = train.labels is not None and held.labels is not None
    if model.num_classes and not labelled:
        notes.append("conditional model without labels in the data: model attacks skipped")
    scorers = model_scorers(model, getattr(model.config, "image_size", None), seed) \
        if labelled or not model.num_classes else {}
    report, png = audit_images(
        train.images, held.images, generated, seed=seed, bootstrap=bootstrap, members=members,
        embed=embed, scorers=scorers, train_labels=train.labels if model.num_classes else None,
        heldout_labels=held.labels if model.num_classes else None, log=log)
    report["feature_net"] = net_info
    report["notes"] = notes + report["notes"]
    report["data"] = {"spec": spec, "train_sha256": train.sha256, "heldout_sha256": held.sha256,
                      "heldout": f"{train.dataset}:test"}
    return report, png


def provenance(run_dir: Path | None, model: GenerativeModel | None, record: dict[str, Any],
               *, seed: int, which: str, command: str | None) -> dict[str, Any]:
    return {"genlab": __version__, "run": str(run_dir) if run_dir else None,
            "which": which if run_dir else None,
            "model": model.name if model is not None else None,
            "step": model.checkpoint_step if model is not None else None,
            "checkpoint_sha256": _checkpoint_sha256(run_dir, which) if run_dir else None,
            "train_seed": record.get("train_config", {}).get("seed"), "seed": seed,
            "command": command}


def _audit_text(*args: Any, **kwargs: Any) -> tuple[dict[str, Any], bytes | None]:
    from genlab.apps.audit_text import audit_text_run

    return audit_text_run(*args, **kwargs), None


# which audit a run gets, by what its modality feeds (a dict lookup, not a name comparison)
AUDITS: dict[str, Callable[..., tuple[dict[str, Any], bytes | None]]] = {
    "image": audit_image_run,
    "text": _audit_text,
}


def audit_run(run_dir: str | os.PathLike, *, n: int | None = None, seed: int = 0,
              data_dir: str | None = None, which: str = "checkpoint", device: str = "cpu",
              feature_net: str | None = None, bootstrap: int = BOOTSTRAP,
              members: int | None = None, command: str | None = None, log: Log = _log
              ) -> dict[str, Any]:
    """Audit a run and save `audit.json` (and `audit_copies.png` for images) in it."""
    from genlab.modalities import get_modality
    from genlab.rundir import load_model, read_run

    run_dir = Path(run_dir)
    record = read_run(run_dir)
    refuse_symlinks(run_dir, [AUDIT_FILE, COPIES_FILE])
    model = load_model(run_dir, which=which, device=device)
    modality = get_modality(model.modality)
    if modality.feeds not in AUDITS:
        raise UserError(f"genlab audit has no audit for {modality.description.split(':')[0]}")
    report, png = AUDITS[modality.feeds](run_dir, model, record, n=n, seed=seed,
                                         data_dir=data_dir, feature_net=feature_net,
                                         bootstrap=bootstrap, members=members, log=log)
    report["provenance"] = provenance(run_dir, model, record, seed=seed, which=which,
                                      command=command)
    if png is not None:
        write_bytes(png, run_dir / COPIES_FILE)
        report["copies_png"] = COPIES_FILE
    atomic_write_text(run_dir / AUDIT_FILE, json.dumps(report, indent=2) + "\n")
    return report


def audit_fake(fake: str | os.PathLike, data: str, *, n: int = DEFAULT_N, seed: int = 0,
               data_dir: str | None = None, feature_net: str | None = None,
               bootstrap: int = BOOTSTRAP, members: int | None = None,
               command: str | None = None, log: Log = _log) -> dict[str, Any]:
    """Audit any tool's samples (npz or PNG folder) against the train split of `data`, with the
    test split as held-out; the distance attacks only (there is no model to ask)."""
    from genlab.evaluation import choose, load_fake

    images, _ = load_fake(fake)
    notes: list[str] = []
    train, held = _splits(data, data_dir)
    images = images[torch.from_numpy(choose(images.shape[0], n, seed))]
    embed, net_info = _embedder(train.dataset, feature_net, tuple(train.images.shape[1:]), notes)
    report, _ = audit_images(train.images, held.images, images, seed=seed, bootstrap=bootstrap,
                             members=members, embed=embed, log=log)
    report.update({"feature_net": net_info, "notes": notes + report["notes"],
                   "data": {"spec": data, "train_sha256": train.sha256,
                            "heldout_sha256": held.sha256, "heldout": f"{train.dataset}:test"}})
    report["provenance"] = {**provenance(None, None, {}, seed=seed, which="", command=command),
                            "fake": str(fake)}
    return report


def format_report(report: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    if "ngram_overlap" in report:
        o = report["ngram_overlap"]
        return (f"{o['n']}-character windows found verbatim in the training text: generated "
                f"{o['generated']:.4f}, held-out {o['heldout']:.4f}")
    c = report["closer_to_train"]
    lines = [f"closer to train than held-out: {c['fraction']:.3f} [{c['ci95'][0]:.3f}, "
             f"{c['ci95'][1]:.3f}] (0.5 = no sign of copying)"]
    if report["near_copies"] is not None:
        nc = report["near_copies"]
        lines.append(f"near-copies: {nc['count']} of {report['n_generated']} "
                     f"({nc['fraction']:.4f}; held-out baseline {nc['baseline_fraction']})")
    def rate(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4f}"

    for name, a in report["attacks"].items():
        lines.append(f"attack {name}: AUC {a['auc']:.3f} [{a['auc_ci95'][0]:.3f}, "
                     f"{a['auc_ci95'][1]:.3f}], TPR@1%FPR {rate(a['tpr_at_1pct_fpr'])}, "
                     f"TPR@0.1%FPR {rate(a['tpr_at_0.1pct_fpr'])}")
    zu = report.get("data_copying") or {}
    if zu.get("zu") is not None:
        lines.append(f"Z_U ({zu['space']}): {zu['zu']:.2f} (negative = copying)")
    lines += [n for n in report.get("notes", []) if n.startswith("warning")]
    return "\n".join(lines)
