"""Runs: from a model name and a dataset to a run folder, and back to a model.

A run folder holds `run.json` (everything needed to reproduce it), `checkpoint/` (latest),
`best/` (when the run evaluates), `metrics.jsonl`, `samples/` and `loss.png`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genlab import __version__
from genlab.checkpoint import (
    atomic_write_text,
    load_optimizers,
    load_weights,
    read_state,
    resolve_checkpoint,
    save_checkpoint,
)
from genlab.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_preset,
    parse_overrides,
)
from genlab.errors import UserError
from genlab.models import GenerativeModel, get_model_class
from genlab.text.modality import make_text_evaluator, prepare_text, write_text_samples
from genlab.train import Hooks, ImageBatcher, Trainer, read_metrics

RUN_FILE = "run.json"


# --- devices ------------------------------------------------------------------------------------

def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise UserError("--device mps: Apple MPS is not available here; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; allowed: auto, cpu, cuda, mps")
    return torch.device(name)


def bf16_supported(device: torch.device) -> bool:
    """bf16 pays off only with hardware support: AVX-512 BF16 / AMX on CPU, Ampere+ on CUDA."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


# --- modalities: how a kind of data is prepared, sampled and evaluated ----------------------------

@dataclass
class Prepared:
    batcher: Any
    model_config: Any
    data_info: dict[str, Any]  # recorded in run.json (name, sha256, sizes)
    # model state that comes from the data (a text tokenizer): given to load_checkpoint_extras
    extras: dict[str, Any] = field(default_factory=dict)


def prepare_images(spec: str, data_dir: str | None, model_cls: type[GenerativeModel],
                   model_config: Any, train: TrainConfig, *, conditional: bool,
                   device: torch.device, rank: int = 0, world_size: int = 1,
                   init_extras: dict[str, Any] | None = None) -> Prepared:
    from genlab.data import load_images, resize_images

    data = load_images(spec, "train", data_dir)
    model_config = model_cls.config_for_data(model_config, data, conditional=conditional)
    images = data.images
    size = getattr(model_config, "image_size", 0)
    if size and size != images.shape[-1]:
        images = resize_images(images, size)  # once, at load (e.g. 28 -> 64 for dcgan64)
    labels = data.labels if getattr(model_config, "num_classes", 0) else None
    batcher = ImageBatcher(images, labels, train.batch_size, train.seed, device, rank, world_size)
    info = {"name": data.name, "split": data.split, "sha256": data.sha256,
            "n": int(images.shape[0]), "shape": list(images.shape[1:]),
            "num_classes": data.num_classes}
    return Prepared(batcher, model_config, info)


def write_image_samples(model: GenerativeModel, run_dir: Path, step: int, seed: int) -> Path:
    """A grid from a fixed seed, so grids over a run show the same latent points improving."""
    from genlab.images import save_grid

    g = torch.Generator(device=model.device).manual_seed(seed)
    n = 64
    labels = None
    k = getattr(model.config, "num_classes", 0)
    if k:
        labels = torch.arange(n, device=model.device) % k  # columns show the classes in order
    images = model.sample(n, generator=g, **({"labels": labels} if labels is not None else {}))
    nrow = k if k and k <= 16 else 8
    path = save_grid(images, run_dir / "samples" / f"step_{step:07d}.png", nrow=nrow)
    save_grid(images, run_dir / "samples.png", nrow=nrow)
    return path


# One entry per modality ("image", "text"). A new modality registers its functions here.
PREPARE: dict[str, Callable[..., Prepared]] = {"image": prepare_images, "text": prepare_text}
WRITE_SAMPLES: dict[str, Callable[[GenerativeModel, Path, int, int], Path]] = {
    "image": write_image_samples,
    "text": write_text_samples,
}
# factory(model, prepared, record, data_dir, device) -> (evaluate(step) -> metrics, best_metric)
# or None when the run has nothing to evaluate; used when train.eval_every > 0. Lower is better.
EvaluatorFactory = Callable[..., tuple[Callable[[int], dict[str, float]], str] | None]


def evaluate_images(*args: Any, **kwargs: Any) -> Any:
    """FD/KID against held-out images in a feature net's space (genlab.evaluate, loaded lazily)."""
    from genlab.evaluate import training_evaluator

    return training_evaluator(*args, **kwargs)


EVALUATORS: dict[str, EvaluatorFactory] = {"image": evaluate_images,
                                             "text": make_text_evaluator}


# --- building configs -----------------------------------------------------------------------------

def build_configs(model_name: str, *, preset: str | None, overrides: Sequence[str],
                  flags: dict[str, Any]) -> tuple[type[GenerativeModel], Any, TrainConfig, str]:
    """defaults < preset (the model's own default preset when none is named) < flags < --set."""
    model_cls = get_model_class(model_name)
    preset = preset or model_cls.default_preset
    model_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    if preset:
        data = load_preset(preset)
        wanted = data.get("model_name")
        if wanted and wanted != model_name:
            raise UserError(f"preset {preset} is for model {wanted}, not {model_name}")
        model_values.update(data.get("model", {}))
        train_values.update(data.get("train", {}))
    train_values.update({k: v for k, v in flags.items() if v is not None})
    parsed = parse_overrides(overrides)
    model_values.update(parsed["model"])
    train_values.update(parsed["train"])
    model_config = config_from_dict(model_cls.config_class, model_values, "model")
    train = config_from_dict(TrainConfig, train_values, "train")
    train.validate()
    return model_cls, model_config, train, preset or ""


def default_run_dir(model: str, data: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in data)[:40].strip("-")
    return Path("runs") / f"{model}-{safe}-{time.strftime('%Y%m%d-%H%M%S')}"


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        if not (root / ".git").exists():
            return None
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    env = {"genlab": __version__, "torch": torch.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "device": str(device), "git_commit": git_commit()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


# --- training -------------------------------------------------------------------------------------

@dataclass
class TrainRequest:
    """What `genlab train` was asked; `None` means "not given"."""

    model: str | None = None
    data: str | None = None
    data_dir: str | None = None
    steps: int | None = None
    epochs: float | None = None
    batch_size: int | None = None
    out: str | None = None
    seed: int | None = None
    device: str = "auto"
    precision: str | None = None
    compile: bool | None = None
    eval_every: int | None = None
    preset: str | None = None
    overrides: Sequence[str] = ()
    conditional: bool = False
    resume: str | None = None
    init_from: str | None = None
    command: str | None = None


def train(req: TrainRequest, *, log: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) training and return the run folder."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    from genlab.distributed import DistContext

    dist = DistContext.from_env()
    if req.resume:
        record, run_dir, start = _resume_record(req)
    else:
        record, run_dir, start = _new_record(req, dist.is_main), None, None
    model_cls = get_model_class(record["model"])
    model_config = config_from_dict(model_cls.config_class, record["model_config"], "model")
    train_cfg = config_from_dict(TrainConfig, record["train_config"], "train")
    device = dist.device(resolve_device(req.device))
    dist.validate(train_cfg)
    torch.manual_seed(train_cfg.seed + dist.rank)
    init_state = None
    if req.init_from and start is None:
        init_state = read_state(Path(req.init_from) / "checkpoint")
        if init_state["model"] != record["model"]:
            raise UserError(f"--init-from: {req.init_from} holds a {init_state['model']} model, "
                            f"not {record['model']}")
    # a fine-tuned run keeps its source's data-derived state (a text tokenizer): from the source
    # checkpoint at first, from its own (which holds the same) on resume
    source = init_state if init_state is not None else start
    init_extras = source.get("extras") if record.get("init_from") and source else None
    with dist.main_first():  # one process per node fills the data caches, the others reuse them
        prepared = PREPARE[model_cls.modality](
            record["data"], req.data_dir if req.data_dir is not None else record.get("data_dir"),
            model_cls, model_config, train_cfg, conditional=record["conditional"], device=device,
            rank=dist.rank, world_size=dist.world_size, init_extras=init_extras)
    if start is not None and prepared.data_info.get("sha256") != record["data_info"].get("sha256"):
        raise UserError(f"--resume: the data {record['data']} differs from the data the run "
                        "started with (checksum changed); resume with the same data")
    model_config = prepared.model_config
    if hasattr(model_config, "validate"):
        model_config.validate()
    model = model_cls(model_config).to(device)
    if device.type == "cuda":
        # shapes are fixed within a run, so cuDNN may time its conv algorithms once and keep the
        # fastest (pytorch/examples dcgan does too); GPU convs are not bit-reproducible anyway
        torch.backends.cudnn.benchmark = True
    model.load_checkpoint_extras(prepared.extras)
    model.validate_train_config(train_cfg)
    if train_cfg.precision == "auto":
        train_cfg.precision = "bf16" if bf16_supported(device) else "fp32"
        if dist.is_main:
            log(f"precision auto: {train_cfg.precision} on {device.type}")
    model.set_precision(train_cfg.precision, device.type)
    optimizers = model.configure_optimizers(train_cfg)
    total = train_cfg.steps or max(1, int(train_cfg.epochs * prepared.batcher.steps_per_epoch))
    if not record["train_config"].get("lr_decay_steps"):
        train_cfg.lr_decay_steps = total  # a resumed run keeps the first launch's schedule
    if req.resume:
        total = req.steps if req.steps is not None else record["train_config"].get("steps") or total
        train_cfg.steps = total
    step, best = 0, None
    if start is not None:
        ckpt = run_dir / "checkpoint"
        load_weights(ckpt, model)
        load_optimizers(ckpt, optimizers, start)
        dist.restore_rng(ckpt, seed=train_cfg.seed, step=start["step"], log=log)
        step, best = start["step"], start.get("best_value")
        if total <= step:
            raise UserError(f"--resume: the run is already at step {step}; pass --steps N with N "
                            f"> {step} (N is the total number of steps)")
        if dist.is_main:
            _trim_metrics(run_dir / "metrics.jsonl", step)
    elif init_state is not None:
        load_weights(Path(req.init_from) / "checkpoint", model)
        model.load_checkpoint_extras(init_state.get("extras", {}))
    record["data_info"] = prepared.data_info
    record["model_config"] = config_to_dict(model_config)
    record["train_config"] = config_to_dict(train_cfg)
    record["environment"] = environment(device)
    run_dir = run_dir or Path(record["run_dir"])
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / RUN_FILE, json.dumps(record, indent=1))
        log(f"run folder: {run_dir}")
    ddp_step = dist.wrap(model, optimizers)
    if train_cfg.compile:
        model.compile_networks(train_cfg.compile_mode)

    def save(name: str, at: int) -> None:
        rng = dist.gather_rng()  # a collective: every rank takes part, rank 0 alone writes
        if not dist.is_main:
            return
        meta = {"model": record["model"], "model_config": record["model_config"],
                "train_config": record["train_config"], "step": at, "data": record["data"],
                "best_value": trainer.best_value, "extras": model.checkpoint_extras()}
        save_checkpoint(run_dir / name, model, meta=meta,
                        optimizers=optimizers if name == "checkpoint" else None, rng=rng)

    writer = WRITE_SAMPLES.get(model_cls.modality)
    hooks = Hooks(save=save,
                  sample=(lambda at: writer(model, run_dir, at, train_cfg.seed)) if writer else None)
    factory = EVALUATORS.get(model_cls.modality)
    if train_cfg.eval_every > 0 and factory is not None:
        made = factory(model, prepared, record, req.data_dir or record.get("data_dir"), device)
        if made is not None:
            hooks.evaluate, hooks.best_metric = made
            hooks.evaluate = dist.evaluate_together(hooks.evaluate, model)
    trainer = Trainer(model, optimizers, prepared.batcher, train_cfg, run_dir, total_steps=total,
                      start_step=step, hooks=hooks, is_main=dist.is_main, best_value=best,
                      step_fn=ddp_step, dist=dist)
    finished = False
    try:
        with dist.failures_reported():
            trainer.fit()
        finished = True
    except KeyboardInterrupt:
        if dist.is_main:
            log(f"interrupted at step {trainer.step}; checkpoint saved. Continue with: "
                f"genlab train --resume {run_dir} --steps {total}")
        raise
    finally:
        if dist.is_main:
            from genlab.images import plot_losses

            plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")
        dist.close(synchronize=finished)
    return run_dir


def _trim_metrics(path: Path, step: int) -> None:
    """Keep the metrics rows up to the checkpoint being resumed: rows logged after it (before a
    crash) describe steps that will be trained again, and a half-written last line is dropped."""
    if path.is_file():
        rows = [row for row in read_metrics(path) if row.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _new_record(req: TrainRequest, is_main: bool) -> dict[str, Any]:
    if not req.model:
        raise UserError("name a model to train (see genlab models), or pass --resume RUN_DIR")
    if not req.data:
        raise UserError("--data is required (see genlab datasets), e.g. --data digits")
    flags = {"steps": req.steps, "epochs": req.epochs, "batch_size": req.batch_size,
             "seed": req.seed, "precision": req.precision, "compile": req.compile,
             "eval_every": req.eval_every}
    _, model_config, train_cfg, preset = build_configs(
        req.model, preset=req.preset, overrides=req.overrides, flags=flags)
    if req.conditional and not get_model_class(req.model).supports_conditional:
        raise UserError(f"model {req.model} has no conditional variant")
    if train_cfg.steps == 0 and train_cfg.epochs == 0:
        raise UserError("say how long to train: --steps N or --epochs E")
    run_dir = Path(req.out) if req.out else default_run_dir(req.model, req.data)
    if is_main and (run_dir / RUN_FILE).exists():
        raise UserError(f"{run_dir} already holds a run; continue it with --resume {run_dir} or "
                        "choose another --out")
    return {"model": req.model, "preset": preset, "data": req.data, "data_dir": req.data_dir,
            "conditional": req.conditional, "model_config": config_to_dict(model_config),
            "train_config": config_to_dict(train_cfg), "command": req.command,
            "init_from": req.init_from, "run_dir": str(run_dir),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _resume_record(req: TrainRequest) -> tuple[dict[str, Any], Path, dict[str, Any]]:
    extra = [name for name in ("model", "data", "batch_size", "seed", "precision", "preset",
                               "init_from", "epochs", "out", "eval_every")
             if getattr(req, name) not in (None, False)]
    if req.overrides or req.conditional or extra:
        given = extra + (["--set"] if req.overrides else []) + (
            ["--conditional"] if req.conditional else [])
        raise UserError(f"--resume continues a run as it was configured; it takes only --steps, "
                        f"--data-dir and --device (got {', '.join(given)})")
    run_dir = Path(req.resume)
    record = read_run(run_dir)
    state = read_state(resolve_checkpoint(run_dir / "checkpoint"))
    record.setdefault("resumed", []).append({"from_step": state["step"], "command": req.command})
    return record, run_dir, state


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise UserError(f"{run_dir} is not a genlab run folder (no {RUN_FILE})")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is corrupt ({e}); the run cannot be read") from None


# --- loading --------------------------------------------------------------------------------------

def load_model(run_dir: str | os.PathLike, *, which: str = "checkpoint",
               device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild a run's model from its checkpoint (verified), in eval mode."""
    run_dir = Path(run_dir)
    if which not in ("checkpoint", "best"):
        raise UserError(f"which must be 'checkpoint' or 'best', got {which!r}")
    # a run folder, or a checkpoint folder itself
    path = run_dir if (run_dir / "manifest.json").exists() else run_dir / which
    state = read_state(path)
    model_cls = get_model_class(state["model"])
    config = config_from_dict(model_cls.config_class, state["model_config"], "model")
    device = resolve_device(str(device)) if isinstance(device, str) else device
    model = model_cls(config).to(device)
    load_weights(path, model)
    model.load_checkpoint_extras(state.get("extras", {}))
    model.checkpoint_step = state["step"]
    return model.eval()


def list_runs(root: str | os.PathLike = "runs") -> list[dict[str, Any]]:
    rows = []
    root = Path(root)
    if not root.is_dir():
        return rows
    for run_file in sorted(root.glob(f"*/{RUN_FILE}")):
        run_dir = run_file.parent
        try:
            record = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError):
            # listed, not hidden: the user should learn that this run's record is damaged
            rows.append({"run": str(run_dir), "model": "?", "data": "?", "step": "?",
                         "losses": {}, "note": f"{RUN_FILE} unreadable"})
            continue
        last: dict[str, Any] = {}
        for row in read_metrics(run_dir / "metrics.jsonl"):
            if "loss" in row:
                last = row
        rows.append({"run": str(run_dir), "model": record.get("model"), "data": record.get("data"),
                     "step": last.get("step", 0),
                     "losses": {k: v for k, v in last.items() if k.endswith("loss")}})
    return rows
