"""Reading run folders: `run.json`, `metrics.jsonl`, the model in a checkpoint, the list of runs.

A run folder holds `run.json` (everything needed to reproduce it), `checkpoint/` (latest), `best/`
(when the run evaluates), `metrics.jsonl`, `samples/` and `loss.png`. This module only reads them;
writing a run is the training orchestrator's job (`genlab.runs`).
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import json
import os
from pathlib import Path
from typing import Any

import torch

from genlab.checkpoint import MANIFEST, load_weights, read_state
from genlab.config import config_from_dict
from genlab.devices import resolve_device
from genlab.errors import UserError
from genlab.models import GenerativeModel, get_model_class
from genlab.runlock import LOCK_FILE

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = ("checkpoint", "best")

# What genlab writes in a run folder, by name. `--overwrite` and `genlab demo` remove these and
# nothing else: a user's notes or exported files beside them stay. A folder is only named here
# with the patterns of the files genlab writes inside it; anything else in it is the user's.
CHECKPOINT_FILES = ("model.safetensors", "optimizers.safetensors", "rng.safetensors",
                    "state.json", "manifest.json")
OUTPUT_FILES = (RUN_FILE, METRICS_FILE, "samples.png", "samples.txt", "samples.wav", "loss.png",
                "eval.json", "eval_best.json", "audit.json", "audit_copies.png", "utility.json",
                "utility.md", LOCK_FILE)
OUTPUT_DIRS = {"samples": ("step_*",), "tensorboard": ("events.out.tfevents.*",),
               **{name: CHECKPOINT_FILES for name in CHECKPOINTS}}
# kept older checkpoints and the temporaries of interrupted writes
OUTPUT_PATTERNS = ("checkpoint.prev-*", "best.prev-*", "checkpoint.corrupt-*", ".*.tmp-*",
                   ".*.tmp", ".checkpoint.old", ".best.old")


def missing_run(run_dir: str | os.PathLike, root: str | os.PathLike = "runs") -> UserError:
    """'no run at PATH', with the closest run folders under `root` (or beside PATH) as hints."""
    run_dir = Path(run_dir)
    places = {Path(root), run_dir.parent}
    known = [str(p.parent) for base in places if base.is_dir()
             for p in sorted(base.glob(f"*/{RUN_FILE}"))]
    close = difflib.get_close_matches(str(run_dir), known, n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(close)}?" if close else "; see genlab runs"
    return UserError(f"no run at {run_dir}{hint}")


def read_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The run's `run.json` as a dict."""
    run_dir = Path(run_dir)
    path = run_dir / RUN_FILE
    if not run_dir.exists():
        raise missing_run(run_dir)
    if not path.is_file():
        raise UserError(f"{run_dir} is not a genlab run folder (it has no {RUN_FILE})")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is corrupt ({e}); the run cannot be read") from None
    if not isinstance(record, dict):
        raise UserError(f"{path} is corrupt (not a JSON object); the run cannot be read")
    return record


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl. A line that does not parse (the half-written last line of a
    killed run) is skipped, so `genlab runs` and loss.png still work."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            row = json.loads(line)
            if isinstance(row, dict):
                rows.append(row)
    return rows


def checkpoint_path(run_dir: str | os.PathLike, which: str = "checkpoint") -> Path:
    """The checkpoint folder `which` of a run folder; a checkpoint folder given directly is
    returned as it is."""
    run_dir = Path(run_dir)
    if which not in CHECKPOINTS:
        raise UserError(f"which must be one of {', '.join(CHECKPOINTS)}, got {which!r}")
    if (run_dir / MANIFEST).exists():
        return run_dir
    if not run_dir.exists():
        raise missing_run(run_dir)
    return run_dir / which


def load_model(run_dir: str | os.PathLike, *, which: str = "checkpoint",
               device: str | torch.device = "cpu") -> GenerativeModel:
    """Rebuild a run's model from its checkpoint (hashes verified first), in eval mode.

    `model.checkpoint_step` is the checkpoint's step and `model.modality` the kind of data the run
    trained on (an image model trained on audio spectrograms says "audio")."""
    path = checkpoint_path(run_dir, which)
    if not path.exists() and which == "best":
        raise UserError(f"{run_dir} has no best/ checkpoint (a run keeps one only when it "
                        "evaluates during training: --eval-every N); use --which checkpoint")
    state = read_state(path)
    model_cls = get_model_class(state["model"])
    config = config_from_dict(model_cls.config_class, state["model_config"], "model")
    device = resolve_device(str(device)) if isinstance(device, str) else device
    model = model_cls(config).to(device)
    load_weights(path, model)
    model.load_checkpoint_extras(state.get("extras", {}))
    model.checkpoint_step = state["step"]
    model.modality = state.get("modality") or model_cls.modality
    return model.eval()


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _is_output(entry: Path) -> bool:
    """Whether a top-level entry of a run folder is, by its name, something genlab writes."""
    name = entry.name
    if entry.is_symlink():
        return False  # genlab never writes links; a link is the user's
    if name in OUTPUT_FILES:
        return entry.is_file()
    return name in OUTPUT_DIRS or _matches(name, OUTPUT_PATTERNS)


def foreign_entries(run_dir: str | os.PathLike) -> list[Path]:
    """What in a folder genlab did not write: other top-level names, links, and files inside
    genlab's folders that are not of genlab's patterns. Sorted."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    foreign = []
    for entry in sorted(run_dir.iterdir()):
        if not _is_output(entry):
            foreign.append(entry)
        elif entry.name in OUTPUT_DIRS and entry.is_dir():
            foreign += [f for f in sorted(entry.iterdir())
                        if f.is_symlink() or not f.is_file()
                        or not _matches(f.name, OUTPUT_DIRS[entry.name])]
    return foreign


def remove_outputs(run_dir: str | os.PathLike) -> list[Path]:
    """Remove what genlab wrote in `run_dir` (see `OUTPUT_FILES`), never following a link and
    never touching anything else; a folder of genlab's is removed once empty. Returns what was
    removed."""
    run_dir = Path(run_dir)
    removed = []
    for entry in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        if not _is_output(entry) or entry.name == LOCK_FILE:  # the lock of the caller: it stays
            continue
        if entry.is_dir():
            patterns = OUTPUT_DIRS.get(entry.name, ("*",))  # kept checkpoints, temporaries
            for f in sorted(entry.iterdir()):
                if f.is_file() and not f.is_symlink() and _matches(f.name, patterns):
                    f.unlink()
                    removed.append(f)
            with contextlib.suppress(OSError):  # not empty: it holds the user's files
                entry.rmdir()
                removed.append(entry)
        else:
            entry.unlink()
            removed.append(entry)
    return removed


def list_runs(root: str | os.PathLike = "runs") -> list[dict[str, Any]]:
    """One row per run folder under `root`: run, model, data, step, the last logged losses and
    the last evaluation figures (`eval/...` rows of metrics.jsonl, else eval.json)."""
    rows = []
    root = Path(root)
    if not root.is_dir():
        return rows
    for run_file in sorted(root.glob(f"*/{RUN_FILE}")):
        run_dir = run_file.parent
        try:
            record = json.loads(run_file.read_text())
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except (OSError, UnicodeDecodeError, ValueError):
            # listed, not hidden: the user should learn that this run's record is damaged
            rows.append({"run": str(run_dir), "model": "?", "data": "?", "step": "?",
                         "losses": {}, "eval": {}, "note": f"{RUN_FILE} unreadable"})
            continue
        last: dict[str, Any] = {}
        evaluated: dict[str, Any] = {}
        for row in read_metrics(run_dir / METRICS_FILE):
            if "loss" in row:
                last = row
            if any(k.startswith("eval/") for k in row):
                evaluated = {k[5:]: v for k, v in row.items() if k.startswith("eval/")}
        if not evaluated:
            evaluated = _eval_file_summary(run_dir / "eval.json")
        rows.append({"run": str(run_dir), "model": record.get("model"), "data": record.get("data"),
                     "step": last.get("step", 0),
                     "losses": {k: v for k, v in last.items() if k.endswith("loss")},
                     "eval": {k: v for k, v in evaluated.items()
                              if k in ("fd", "val_loss", "perplexity", "val_neg_elbo")
                              and isinstance(v, int | float)},
                     # a private run (--dp): the epsilon spent by its last logged step
                     "epsilon": last.get("epsilon")})
    return rows


def _eval_file_summary(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return report if isinstance(report, dict) else {}
