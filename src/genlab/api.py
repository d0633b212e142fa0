"""The Python API: train, load, generate and evaluate, the same operations as the commands.

    import genlab
    run = genlab.train("dcgan", "digits", steps=300, out="runs/mine")
    samples = genlab.generate(run.dir, n=16, seed=0)   # the same bytes as `genlab sample`
    report = genlab.evaluate(run.dir)                    # what `genlab eval --json` prints
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genlab.checkpoint import atomic_write_text
from genlab.devices import sampling_precision
from genlab.generation import GenerationRequest, check_options
from genlab.log import get_logger
from genlab.modalities import Samples, get_modality
from genlab.modalities import generate as generate_samples
from genlab.models import GenerativeModel
from genlab.rundir import METRICS_FILE, load_model, read_metrics, read_run
from genlab.runs import TrainRequest
from genlab.runs import train as run_training

log = get_logger(__name__)


@dataclass
class Run:
    """A trained run folder: `dir`, its `model` (loaded from the latest checkpoint when first
    asked for) and its `metrics` (the rows of metrics.jsonl)."""

    dir: Path
    _model: GenerativeModel | None = None

    @property
    def model(self) -> GenerativeModel:
        if self._model is None:
            self._model = load_model(self.dir)
        return self._model

    @property
    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.dir / METRICS_FILE)

    @property
    def record(self) -> dict[str, Any]:
        """run.json: the configs, data, command, versions."""
        return read_run(self.dir)


def _override_list(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, Mapping):
        return [f"{key}={value}" for key, value in overrides.items()]
    return [str(pair) for pair in overrides]


def train(model: str, data: str, *, steps: int | None = None, batch_size: int | None = None,
          preset: str | None = None, overrides: Mapping[str, Any] | Sequence[str] | None = None,
          seed: int = 0, device: str = "auto", precision: str = "auto",
          out: str | os.PathLike | None = None, conditional: bool = False,
          data_dir: str | os.PathLike | None = None, eval_every: int | None = None) -> Run:
    """Train `model` (a name from `genlab models`) on `data` (a `--data` spec) and return the run.

    `overrides` sets config fields: `{"model.loss": "hinge", "train.lr": 1e-4}` (or
    `["model.loss=hinge"]`). `out` is the run folder (default runs/<model>-<data>-<time>/)."""
    req = TrainRequest(model=model, data=data, steps=steps, batch_size=batch_size, preset=preset,
                       overrides=_override_list(overrides), seed=seed, device=device,
                       precision=precision, out=None if out is None else str(out),
                       conditional=conditional, eval_every=eval_every,
                       data_dir=None if data_dir is None else str(data_dir),
                       command=f"genlab.train({model!r}, {data!r})")
    return Run(run_training(req))


def resume(run_dir: str | os.PathLike, *, steps: int | None = None, device: str = "auto") -> Run:
    """Continue a run to `steps` total steps (default: the total it was started with)."""
    return Run(run_training(TrainRequest(resume=str(run_dir), steps=steps, device=device,
                                         command=f"genlab.resume({str(run_dir)!r})")))


def load(run_dir: str | os.PathLike, *, which: str = "checkpoint",
         device: str = "cpu") -> GenerativeModel:
    """The trained model of a run folder, in eval mode, ready to `sample`.

    `which` is "checkpoint" (the latest) or "best". Hashes are verified before anything is loaded.
    """
    return load_model(run_dir, which=which, device=device)


def generate(source: str | os.PathLike | Run | GenerativeModel, request: GenerationRequest |
             None = None, /, **fields: Any) -> Samples:
    """Samples from a run folder (or a loaded model), for a `GenerationRequest` or its fields:
    `generate("runs/x", n=16, seed=7, labels=3)`, `generate(gpt_run, prompt="ROMEO:",
    max_new_tokens=200)`; a family's own options (`sampler`, ...) go in `options={...}`.
    `samples.save("grid.png")`, `samples.encode("npz")` -> bytes."""
    if request is None:
        request = GenerationRequest(**fields)
    elif fields:
        raise TypeError("pass a GenerationRequest or its fields, not both")
    if isinstance(source, Run):
        model = source.model
    elif isinstance(source, GenerativeModel):
        model = source
    else:
        model = load_model(source)
    return generate_samples(model, request)


def evaluate(run_dir: str | os.PathLike | Run, *, n: int = 10000, seed: int = 0,
             data_dir: str | os.PathLike | None = None, which: str = "checkpoint",
             device: str | torch.device = "auto", feature_net: str | None = None,
             iwae_k: int = 100, real: str | None = None,
             sample_options: dict[str, Any] | None = None, precision: str = "fp32",
             command: str | None = None) -> dict[str, Any]:
    """Score a run (`genlab eval RUN --json`): the report its modality computes, also written to
    `eval.json` (`eval_best.json` for which="best") in the run folder. `real`: compare with this
    DATASET[:split] instead of the run's own data (for runs on idx: or folder: data).
    `sample_options`: the family's sampling options (a diffusion model's sampler, sample_steps,
    guidance; default: its defaults); `precision`: fp32, bf16 (autocast) or auto."""
    run_dir = run_dir.dir if isinstance(run_dir, Run) else Path(run_dir)
    record = read_run(run_dir)
    model = load_model(run_dir, which=which, device=device)
    options = dict(sample_options or {})
    check_options(model, options)
    precision = sampling_precision(model, precision, log.warning)
    data_dir = data_dir if data_dir is not None else record.get("data_dir")
    report = get_modality(model.modality).evaluate_run(
        run_dir, model, record, n=n, seed=seed, data_dir=None if data_dir is None else
        str(data_dir), which=which, feature_net=feature_net, iwae_k=iwae_k, real=real,
        command=command, sample_options=options)
    report["provenance"]["modality"] = model.modality
    report["provenance"]["sampling"] = {**options, "precision": precision}
    name = "eval.json" if which == "checkpoint" else f"eval_{which}.json"
    atomic_write_text(run_dir / name, json.dumps(report, indent=1) + "\n")
    return report
