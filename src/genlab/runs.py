"""Training runs: from a model name and a dataset to a run folder (or on from a run folder).

`train(TrainRequest(...))` resolves the configs (defaults < preset < flags < `--set`), checks every
rule that needs no data, asks the data's modality to prepare the batcher, builds the model, resumes
or fine-tunes it, writes `run.json`, and runs the `Trainer`. Reading a run folder back is
`genlab.rundir`'s job.
"""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genlab import _threads
from genlab.checkpoint import (
    KEEP,
    check_against_record,
    check_model_kind,
    load_optimizers,
    load_weights,
    newest_valid_checkpoint,
    read_state,
    save_checkpoint,
    sweep_orphans,
    version_warnings,
)
from genlab.config import (
    SAFE_ON_RESUME,
    TrainConfig,
    apply_resume_overrides,
    check_resume_overrides,
    check_resume_schedule,
    config_from_dict,
    config_to_dict,
    load_preset,
    load_preset_file,
    parse_overrides,
    preset_names,
)
from genlab.devices import resolve_device, resolve_precision
from genlab.distributed import DistContext
from genlab.errors import NonFiniteLossError, UserError
from genlab.files import atomic_write_text, refuse_symlinks
from genlab.images import plot_losses
from genlab.limits import check_path
from genlab.log import get_logger
from genlab.modalities import Modality, get_modality, modality_for_data
from genlab.models import GenerativeModel, get_model_class
from genlab.models.base import FitsData
from genlab.privacy_dp import check_model, check_train_config, private_config
from genlab.rundir import (
    METRICS_FILE,
    RUN_FILE,
    foreign_entries,
    read_metrics,
    read_run,
    remove_outputs,
)
from genlab.runlock import LOCK_FILE, RunLock
from genlab.trainer import Hooks, Trainer
from genlab.version import __version__

log = get_logger(__name__)


# --- building configs -----------------------------------------------------------------------------

def build_configs(model_name: str, *, preset: str | None, overrides: Sequence[str],
                  flags: dict[str, Any], preset_file: str | None = None
                  ) -> tuple[type[GenerativeModel], Any, TrainConfig, str]:
    """defaults < preset (the model's own default preset when none is named) < flags < --set.
    Every rule that does not need the data is checked here, before any data is read."""
    model_cls = get_model_class(model_name)
    if preset and preset_file:
        raise UserError("give --preset NAME or --preset-file PATH, not both")
    preset = preset or (None if preset_file else model_cls.default_preset)
    model_values: dict[str, Any] = {}
    train_values: dict[str, Any] = {}
    if preset or preset_file:
        data = load_preset(preset) if preset else load_preset_file(preset_file)
        preset = preset or str(preset_file)
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
    check_train_config(train)  # the dp fields' cross-field rules (config cannot import them)
    model_config.validate(partial=True)
    model_cls.validate_train_config(model_config, train)
    check_model(model_cls, model_config, train)
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
           "device": str(device), "threads": torch.get_num_threads(), "git_commit": git_commit()}
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
    overwrite: bool = False  # start again in a folder that holds a run (removes genlab's files)
    preset_file: str | None = None  # a preset TOML file of the user's, instead of --preset
    command: str | None = None
    dp: bool = False  # differentially private training (train.dp)


def train(req: TrainRequest) -> Path:
    """Run (or resume) training and return the run folder.

    Rank 0 holds the run folder's lock from before the first write to the end, so a second
    process on the same folder is refused. A new run that fails before its first checkpoint
    leaves nothing behind: genlab removes what it wrote (and the folder, if it made it)."""
    dist = DistContext.from_env()
    for name in ("out", "resume", "init_from", "data_dir"):
        if getattr(req, name) is not None:
            check_path(getattr(req, name), f"--{name.replace('_', '-')}")
    if req.resume:
        run_dir, record = Path(req.resume), read_run(req.resume)
        _check_resume_flags(req)
        made = False
    else:
        record = _new_record(req, dist.is_main)
        run_dir = Path(record["run_dir"])
        made = not run_dir.exists()
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
    lock = RunLock(run_dir, command=req.command, enabled=dist.is_main)
    removed: list[Path] | None = None  # what a failed new run removed again
    try:
        with lock:
            if lock.note:
                log.warning(lock.note)
            if dist.is_main:
                refuse_symlinks(run_dir, RUN_SLOTS)
                for path in sweep_orphans(run_dir):
                    log.info(f"removed {path}, left by an interrupted write")
                if not req.resume:
                    check_new_run_dir(run_dir, overwrite=req.overwrite)  # again, under the lock
            try:
                return _train(req, dist, run_dir, record)
            except BaseException:
                if dist.is_main and not req.resume and not (run_dir / "checkpoint").exists():
                    removed = remove_outputs(run_dir)  # still under the lock
                raise
    except BaseException as e:
        if removed is not None:
            _said_removed(run_dir, made, removed, e)
        raise


def _same_threads_as(record: dict[str, Any]) -> None:
    """Resume with the CPU threads the run trained with (the float results depend on them),
    unless the user set OMP_NUM_THREADS."""
    trained = (record.get("environment") or {}).get("threads")
    if (isinstance(trained, int) and trained > 0 and trained != torch.get_num_threads()
            and not _threads.user_set_threads()):
        log.info(f"threads: {trained}, as the run trained (not {torch.get_num_threads()}): the "
                 "results depend on the thread count; OMP_NUM_THREADS chooses another")
        torch.set_num_threads(trained)


def _train(req: TrainRequest, dist: DistContext, run_dir: Path, record: dict[str, Any]) -> Path:
    start = found = None
    changes: dict[str, list[Any]] = {}
    if req.resume:
        found = newest_valid_checkpoint(run_dir, set_aside=dist.is_main)
        if found.note and dist.is_main:
            log.warning(found.note)
        start = found.state
        for note in check_against_record(record, start, found.path):
            log.info(note)
        for warning in version_warnings(start):
            log.warning(warning)
        # the configs training uses are the verified checkpoint's, not run.json's
        record["model_config"], record["train_config"] = start["model_config"], start[
            "train_config"]
        _same_threads_as(record)
    elif "OMP_NUM_THREADS" in _threads.CHOSEN and dist.is_main:
        log.info(f"threads: {torch.get_num_threads()} (other programs keep cores of this CPU "
                 "busy); results depend on the thread count: OMP_NUM_THREADS sets it")
    model_cls = get_model_class(record["model"])
    modality = _run_modality(record, model_cls)
    model_config = config_from_dict(model_cls.config_class, record["model_config"], "model")
    train_cfg = config_from_dict(TrainConfig, record["train_config"], "train")
    if req.resume:
        train_cfg, changes = apply_resume_overrides(train_cfg, parse_overrides(req.overrides))
    device = dist.device(resolve_device(req.device))
    if dist.is_main:
        _warn_gpu_preset(record, device)
    dist.validate(train_cfg)
    torch.manual_seed(train_cfg.seed + dist.rank)
    init_state = None
    if req.init_from and start is None:
        init_state = read_state(Path(req.init_from) / "checkpoint")
        check_model_kind(init_state, record["model"], Path(req.init_from) / "checkpoint")
    # a fine-tuned run keeps its source's data-derived state (a text tokenizer): from the source
    # checkpoint at first, from its own (which holds the same) on resume
    source = init_state if init_state is not None else start
    init_extras = source.get("extras") if record.get("init_from") and source else None
    data_dir = req.data_dir if req.data_dir is not None else record.get("data_dir")
    with dist.main_first():  # one process per node fills the data caches, the others reuse them
        prepared = modality.prepare(
            record["data"], data_dir, model_cls, model_config, train_cfg,
            conditional=record["conditional"], device=device, rank=dist.rank,
            world_size=dist.world_size, init_extras=init_extras)
    if start is not None and prepared.data_info.get("sha256") != record["data_info"].get("sha256"):
        raise UserError(f"--resume: the data {record['data']} differs from the data the run "
                        "started with (checksum changed); resume with the same data")
    model_config = private_config(model_cls, prepared.model_config, train_cfg)
    model_config.validate()
    model = model_cls(model_config).to(device)
    if train_cfg.dp:
        from genlab.privacy_dp import prepare_network, private_network

        prepare_network(private_network(model))
    model.modality = modality.name
    if device.type == "cuda":
        # shapes are fixed within a run, so cuDNN may time its conv algorithms once and keep the
        # fastest (pytorch/examples dcgan does too); GPU convs are not bit-reproducible anyway
        torch.backends.cudnn.benchmark = True
    model.load_checkpoint_extras(prepared.extras)
    train_cfg.precision, note = resolve_precision(train_cfg.precision, device)
    if note and dist.is_main:
        log.info(note)
    if train_cfg.dp and train_cfg.precision == "bf16":
        train_cfg.precision = "fp32"
        log.info("--dp trains in fp32 (precision auto chose bf16)")
    model.set_precision(train_cfg.precision, device.type)
    optimizers = model.configure_optimizers(train_cfg)
    total = train_cfg.steps or max(1, int(train_cfg.epochs * prepared.batcher.steps_per_epoch))
    if not train_cfg.lr_decay_steps:
        train_cfg.lr_decay_steps = total  # fixed at the first launch: a resume keeps it
    step, best = 0, None
    if found is not None:
        total = req.steps if req.steps is not None else total
        train_cfg.steps = total
        if total <= start["step"]:
            raise UserError(f"--resume: the run is already at step {start['step']}; pass --steps "
                            f"N with N > {start['step']} (N is the total number of steps)")
        check_resume_schedule(train_cfg, total)
        load_weights(found.path, model)
        load_optimizers(found.path, optimizers, start)
        dist.restore_rng(found.path, seed=train_cfg.seed, step=start["step"])
        step, best = start["step"], start.get("best_value")
        record.setdefault("resumed", []).append(
            {"from_step": step, "checkpoint": found.path.name, "command": req.command,
             **({"changed": changes} if changes else {})})
        if dist.is_main:
            _trim_metrics(run_dir / METRICS_FILE, step)
    elif init_state is not None:
        load_weights(Path(req.init_from) / "checkpoint", model)
        model.load_checkpoint_extras(init_state.get("extras", {}))
    record["modality"] = modality.name
    record["data_info"] = prepared.data_info
    record["model_config"] = config_to_dict(model_config)
    record["train_config"] = config_to_dict(train_cfg)
    record["environment"] = environment(device)
    if dist.is_main:
        if start is None and req.overwrite and (run_dir / RUN_FILE).is_file():
            removed = remove_outputs(run_dir)
            log.info(f"--overwrite: removed the {len(removed)} files and folders of the run "
                     f"that was in {run_dir}")
        atomic_write_text(run_dir / RUN_FILE, json.dumps(record, indent=1))
        log.info(f"run folder: {run_dir}")
    ddp_step = dist.wrap(model, optimizers)
    batcher, private = prepared.batcher, None
    if train_cfg.dp:
        from genlab.privacy_dp import attach

        private, batcher = attach(model, train_cfg, batcher, total_steps=total,
                                  state=start.get("dp") if start else None,
                                  world_size=dist.world_size)
        ddp_step = private.wrap(ddp_step or model.train_step)
    if isinstance(model, FitsData):
        batcher = fit_data_once(model, batcher, private, new=found is None)
    if train_cfg.compile:
        if dist.is_main:
            log.info("compiling the networks (torch.compile): the first steps take longer")
        model.compile_networks(train_cfg.compile_mode)

    def save(name: str, at: int) -> None:
        rng = dist.gather_rng()  # a collective: every rank takes part, rank 0 alone writes
        if not dist.is_main:
            return
        meta = {"model": record["model"], "model_config": record["model_config"],
                "train_config": record["train_config"], "step": at, "data": record["data"],
                "modality": modality.name, "best_value": trainer.best_value,
                "extras": model.checkpoint_extras(),
                **({"dp": private.state()} if private else {})}
        save_checkpoint(run_dir / name, model, meta=meta,
                        optimizers=optimizers if name == "checkpoint" else None, rng=rng,
                        keep=KEEP if name == "checkpoint" else 1)

    hooks = Hooks(save=save, log_extras=(lambda: {"epsilon": private.epsilon()}) if private
                  else None,
                  sample=lambda at: modality.write_training_samples(model, run_dir, at,
                                                                    train_cfg.seed))
    if train_cfg.eval_every > 0:
        # building the evaluator (a feature net's initial weights) must not move the random
        # streams training depends on, restored from the checkpoint above
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            made = modality.training_evaluator(model, prepared, record, data_dir, device)
        if made is not None:
            hooks.evaluate, hooks.best_metric = made
            hooks.evaluate = dist.evaluate_together(hooks.evaluate, model)
    trainer = Trainer(model, optimizers, batcher, train_cfg, run_dir, total_steps=total,
                      start_step=step, hooks=hooks, is_main=dist.is_main, best_value=best,
                      step_fn=ddp_step, dist=dist,
                      unit=(modality.unit, modality.items_per_example(model)))
    finished = False
    try:
        with dist.failures_reported():
            trainer.fit()
        finished = True
    except KeyboardInterrupt:
        if dist.is_main:
            log.info(_stopped_message(trainer, run_dir, total))
        raise
    except NonFiniteLossError as e:
        if trainer.saved_step is not None or step:
            kept = trainer.saved_step if trainer.saved_step is not None else step
            e.args = (f"{e}; the last good checkpoint (step {kept}) is kept: resume it with a "
                      f"lower learning rate, e.g. genlab train --resume {run_dir} --set "
                      f"train.lr={train_cfg.lr / 2:g}, or use --precision fp32",)
        raise
    finally:
        if dist.is_main and (run_dir / METRICS_FILE).is_file():
            plot_losses(read_metrics(run_dir / METRICS_FILE), run_dir / "loss.png",
                        keys=model.progress_keys)
        dist.close(synchronize=finished)
    return run_dir


class DataFreeBatcher:
    """What a `FitsData` model trains with after its one pass over the data: empty batches
    (the trainer's step count and schedule stay as with data; no example is ever handed out)."""

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        return {}


def fit_data_once(model: FitsData, batcher: Any, private: Any, *, new: bool) -> DataFreeBatcher:
    """A new run of a `FitsData` model: its statistic of the whole training set, released
    through `private` under --dp (one Gaussian release), kept by the model. A resume does not
    read the data for it: the checkpoint holds the statistic (and no noise is drawn again).
    Either way training then gets a batcher that holds no data."""
    if new:
        if not hasattr(batcher, "images"):
            raise UserError(f"{model.name} needs an in-memory image dataset")
        images, labels = batcher.images, getattr(batcher, "labels", None)
        t0 = time.perf_counter()
        statistic = model.data_statistic(images, labels)
        if private is not None:
            statistic = private.release(statistic)
        model.fit_data(statistic, int(images.shape[0]))
        log.info(f"{model.name}: read the {images.shape[0]} training examples once "
                 f"({time.perf_counter() - t0:.1f} s)"
                 + ("; released with Gaussian noise" if private is not None else "")
                 + "; training reads that statistic only")
    return DataFreeBatcher(getattr(batcher, "steps_per_epoch", 1))


RUN_SLOTS = ("checkpoint", "checkpoint.prev-1", "best", METRICS_FILE, RUN_FILE, "samples",
             "samples.png", "samples.txt", "loss.png", "tensorboard")  # never written through links


def _stopped_message(trainer: Trainer, run_dir: Path, total: int) -> str:
    """What is true after a stop: the checkpoint of this step, or the last one before it."""
    if trainer.saved_step == trainer.step:
        return (f"stopped at step {trainer.step}; checkpoint saved. Continue with: genlab train "
                f"--resume {run_dir} --steps {total}")
    if (run_dir / "checkpoint").exists():
        at = f" (step {trainer.saved_step})" if trainer.saved_step is not None else ""
        return (f"stopped at step {trainer.step} while saving: that checkpoint was not written; "
                f"the previous one{at} is kept. Continue with: genlab train --resume {run_dir} "
                f"--steps {total}")
    return f"stopped at step {trainer.step} before any checkpoint was saved"


def _said_removed(run_dir: Path, made: bool, removed: list[Path], error: BaseException) -> None:
    """A new run that ended before its first checkpoint had nothing to resume, so what it wrote
    was removed (never anything else); now the folder too, when this command made it (the lock
    is released: the folder is empty), and the error says so."""
    gone = False
    if made:
        with contextlib.suppress(OSError):
            run_dir.rmdir()
            gone = True
    if not removed and not gone:
        return
    said = f"no checkpoint was saved, so genlab removed {'the run folder ' if gone else ''}"
    said += f"{run_dir}" if gone else f"what it wrote in {run_dir}"
    if isinstance(error, UserError) and error.args:
        error.args = (f"{error.args[0]}; {said}",)
    else:
        log.info(said)


def _warn_gpu_preset(record: dict[str, Any], device: torch.device) -> None:
    """A preset sized for a GPU on a CPU trains for hours with no sign of life: say so first."""
    name = record.get("preset")
    if name not in preset_names() or load_preset(name).get("device") != "cuda" \
            or device.type == "cuda":
        return
    others = [n for n in preset_names() if n != name
              and load_preset(n).get("model_name") == record["model"]
              and load_preset(n).get("device") != "cuda"]
    hint = f"; for a CPU use --preset {others[0]}" if others else ""
    log.warning(f"preset {name} is sized for a GPU and this run is on the {device.type}: each "
                f"step will take a long time{hint}")


def _run_modality(record: dict[str, Any], model_cls: type[GenerativeModel]) -> Modality:
    """The modality of a run: recorded in run.json, or (a new run, or one from before modalities
    were recorded) the one of its data."""
    if record.get("modality"):
        return get_modality(record["modality"])
    return modality_for_data(record["data"], model_cls)


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
             "eval_every": req.eval_every, "dp": req.dp or None}
    model_cls, model_config, train_cfg, preset = build_configs(
        req.model, preset=req.preset, overrides=req.overrides, flags=flags,
        preset_file=req.preset_file)
    if req.conditional and not model_cls.supports_conditional:
        raise UserError(f"model {req.model} has no conditional variant")
    modality = modality_for_data(req.data, model_cls)  # before any data is read
    if train_cfg.steps == 0 and train_cfg.epochs == 0:
        raise UserError("say how long to train: --steps N or --epochs E")
    run_dir = Path(req.out) if req.out else default_run_dir(req.model, req.data)
    if is_main:
        check_new_run_dir(run_dir, overwrite=req.overwrite)
    return {"model": req.model, "preset": preset, "data": req.data, "data_dir": req.data_dir,
            "modality": modality.name,
            "conditional": req.conditional, "model_config": config_to_dict(model_config),
            "train_config": config_to_dict(train_cfg), "command": req.command,
            "init_from": req.init_from, "run_dir": str(run_dir),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def check_new_run_dir(run_dir: Path, *, overwrite: bool) -> None:
    """A new run goes into a folder that does not exist or is empty. A folder holding a genlab
    run is refused unless `overwrite` (then only genlab's files go, see `rundir.remove_outputs`,
    when training starts); a folder of other files is refused unless `overwrite`, and even then
    when one of them has a name genlab would write over."""
    if "\0" in str(run_dir):
        raise UserError("the run folder's path contains a NUL byte; choose another --out")
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        raise UserError(f"{run_dir} exists and is not a folder; choose another --out")
    entries = [p for p in run_dir.iterdir() if p.name != LOCK_FILE] if run_dir.exists() else []
    if not entries:
        return
    others = foreign_entries(run_dir)
    shown = ", ".join(p.name for p in others[:3]) + (", ..." if len(others) > 3 else "")
    if (run_dir / RUN_FILE).is_file():
        if not overwrite:
            raise UserError(f"{run_dir} already holds a run; continue it with --resume "
                            f"{run_dir}, choose another --out, or pass --overwrite to start it "
                            "again (genlab then removes only the files it wrote"
                            + (f"; your {shown} stay)" if others else ")"))
        return
    clash = [p.name for p in entries if p not in others]
    if clash:
        raise UserError(f"{run_dir} holds {', '.join(sorted(clash)[:3])}, which genlab did not "
                        "write and a run would replace; move them or choose another --out")
    if not overwrite:
        raise UserError(f"{run_dir} is not empty (it holds {shown}) and is not a genlab run; "
                        "choose another --out, or pass --overwrite to train there beside those "
                        "files (genlab never removes them)")


def _check_resume_flags(req: TrainRequest) -> None:
    """`--resume` takes --steps, --data-dir, --device and `--set` of the settings that may change
    (config.SAFE_ON_RESUME); everything else is the run's own."""
    extra = [name for name in ("model", "data", "batch_size", "seed", "precision", "preset",
                               "preset_file", "init_from", "epochs", "out", "eval_every",
                               "compile", "dp")
             if getattr(req, name) not in (None, False)]
    if req.conditional or req.overwrite or extra:
        given = [f"--{name.replace('_', '-')}" for name in extra] + (
            ["--conditional"] if req.conditional else []) + (
            ["--overwrite"] if req.overwrite else [])
        raise UserError(f"--resume continues a run as it was configured; it takes --steps, "
                        f"--data-dir, --device and --set of {', '.join(sorted(SAFE_ON_RESUME))} "
                        f"(got {', '.join(given)})")
    check_resume_overrides(parse_overrides(req.overrides))
