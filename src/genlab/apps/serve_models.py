"""The models `genlab serve` serves: run folders named on the command line (and/or every run under
`--runs-dir`), each named by its folder name, loaded with its checkpoint hashes verified, warmed,
and described for GET /v1/models.

A request names a model; the name is looked up among these, never joined to a path.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genlab.apps.serve_batch import ModelQueue
from genlab.apps.serve_schemas import MODEL_NAME
from genlab.checkpoint import MANIFEST
from genlab.errors import UserError
from genlab.generation import GenerationRequest
from genlab.modalities import Modality, get_modality
from genlab.modalities.audio import AudioSamples
from genlab.modalities.image import ImageSamples
from genlab.models.base import GenerativeModel
from genlab.rundir import RUN_FILE, checkpoint_path, load_model, missing_run, read_run

# kind of route -> its path. A kind of samples is served by the route of its kind (`route_kind`);
# an audio route is one more entry here and in `route_kind`, a request schema and a handler
ROUTES = {"images": "/v1/images/generations", "completions": "/v1/completions",
          "audio": "/v1/audio/generations"}
EVAL_KEYS = ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
             "class_accuracy", "mode_entropy", "val_loss", "perplexity", "val_bpc",
             "neg_elbo_bpd", "iwae_nll_bpd", "n")


@dataclass
class RunSpec:
    name: str
    path: Path


@dataclass
class ServedModel:
    name: str
    path: Path
    model: GenerativeModel
    modality: Modality
    kind: str  # a key of ROUTES
    sha256: str
    card: dict[str, Any]
    queue: ModelQueue | None = None  # set by the app once the event loop runs
    extra: dict[str, Any] = field(default_factory=dict)


def route_kind(modality: Modality) -> str:
    """Which route serves a modality's samples."""
    if issubclass(modality.samples_class, ImageSamples):
        return "images"
    if issubclass(modality.samples_class, AudioSamples):
        return "audio"
    if modality.streams:
        return "completions"
    raise UserError(f"genlab serve has no route for {modality.name} models yet")


def find_runs(runs: list[str], runs_dir: str | None) -> list[RunSpec]:
    """The run folders to serve, named by folder name; every problem is a `UserError` before
    the server starts (a missing run, a name that is not a plain name, two runs of one name)."""
    paths = [Path(r) for r in runs]
    if runs_dir is not None:
        root = Path(runs_dir)
        if not root.is_dir():
            raise UserError(f"--runs-dir {runs_dir} is not a folder")
        found = sorted(p.parent for p in root.glob(f"*/{RUN_FILE}"))
        if not found:
            raise UserError(f"--runs-dir {runs_dir} holds no run folders (none has a {RUN_FILE})")
        paths += found
    if not paths:
        raise UserError("name the run folders to serve (genlab serve runs/NAME ...) or "
                        "--runs-dir DIR")
    specs: dict[str, RunSpec] = {}
    for path in paths:
        if not path.exists():
            raise missing_run(path)
        read_run(path)  # a folder that is not a run says so now
        name = path.resolve().name
        if not re.match(MODEL_NAME, name):
            raise UserError(f"{path}: a served model is named by its folder, and {name!r} is not "
                            "a plain name (letters, digits, '.', '_', '-'); rename the folder")
        if name in specs and specs[name].path.resolve() != path.resolve():
            raise UserError(f"two runs are named {name!r} ({specs[name].path} and {path}); "
                            "serve one of them, or rename a folder")
        specs[name] = RunSpec(name, path)
    return list(specs.values())


def load_served(spec: RunSpec, *, device: str, which: str) -> ServedModel:
    """Load a run's model (its checkpoint hashes verified), warm it, and describe it."""
    model = load_model(spec.path, which=which, device=device)
    modality = get_modality(model.modality)
    kind = route_kind(modality)
    ckpt = checkpoint_path(spec.path, which)
    sha256 = json.loads((ckpt / MANIFEST).read_text())["model.safetensors"]
    warm(model, modality)
    k = model.num_classes
    card = {"id": spec.name, "object": "model", "created": int(ckpt.stat().st_mtime),
            "owned_by": "genlab", "name": spec.name, "family": model.name,
            "modality": model.modality, "endpoint": ROUTES[kind], "classes": k or None,
            "step": model.checkpoint_step, "sha256": sha256,
            "options": list(model.sample_options), "eval": eval_summary(spec.path, which)}
    return ServedModel(spec.name, spec.path, model, modality, kind, sha256, card)


def warm(model: GenerativeModel, modality: Modality) -> None:
    """One small generation, so the first request does not pay for lazy initialisation."""
    if modality.streams:
        for _ in modality.stream(model, GenerationRequest(n=1, max_new_tokens=2)):
            pass
    else:
        modality.generate(model, GenerationRequest(n=1))


def eval_summary(run_dir: Path, which: str) -> dict[str, Any] | None:
    """The figures of the run's last `genlab eval` (eval.json, or eval_best.json for best/), or
    None; numbers only, with the step it scored and when."""
    path = run_dir / ("eval.json" if which == "checkpoint" else "eval_best.json")
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(report, dict):
        return None
    out: dict[str, Any] = {k: report[k] for k in EVAL_KEYS
                           if isinstance(report.get(k), int | float)
                           and not isinstance(report.get(k), bool) and math.isfinite(report[k])}
    provenance = report.get("provenance")
    if isinstance(provenance, dict) and isinstance(provenance.get("step"), int):
        out["step"] = provenance["step"]
    out["evaluated"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(path.stat().st_mtime))
    return out
