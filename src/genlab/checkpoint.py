"""Self-describing checkpoints: safetensors weights, JSON metadata, a SHA-256 manifest.

A checkpoint is a folder:

    model.safetensors      weights (no pickled code)
    optimizers.safetensors optimizer state tensors (absent in weights-only exports)
    rng.safetensors        torch RNG states of every rank: cpu.rank{r} (and cuda.rank{r}, its GPU)
    state.json             model kind + config, train config, step, genlab version, optimizer layout
    manifest.json          SHA-256 of every file above

The folder is written under a temporary name, fsynced and renamed into place, so a crash leaves either
the old checkpoint or the new one, never a mix. Loading verifies every hash first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from genlab.errors import UserError
from genlab.version import __version__

MANIFEST = "manifest.json"
STATE = "state.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def default_mode(directory: bool = False) -> int:
    """The permissions a plain `open` / `mkdir` would give under the process umask. Temporary
    files and folders are created 0600 / 0700, which would otherwise stay after the rename."""
    umask = os.umask(0o022)  # the only way to read it is to set it; put it back at once
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, fsync, rename. A file
    that is replaced keeps its permissions; a new one gets the umask's."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777
    except OSError:
        mode = default_mode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


# --- optimizer state <-> flat tensors + JSON ------------------------------------------------------

def _flatten_optimizer(name: str, state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {"state": {}, "param_groups": state_dict["param_groups"]}
    for idx, entries in state_dict["state"].items():
        layout["state"][str(idx)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensor_key = f"{name}.{idx}.{key}"
                tensors[tensor_key] = value.detach().contiguous().cpu()
                layout["state"][str(idx)][key] = {"tensor": tensor_key}
            else:
                layout["state"][str(idx)][key] = {"value": value}
    return tensors, layout


def _unflatten_optimizer(layout: dict, tensors: dict[str, torch.Tensor]) -> dict:
    state = {}
    for idx, entries in layout["state"].items():
        state[int(idx)] = {key: tensors[e["tensor"]] if "tensor" in e else e["value"]
                           for key, e in entries.items()}
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
              for g in layout["param_groups"]]
    return {"state": state, "param_groups": groups}


# --- save / load ----------------------------------------------------------------------------------

def save_checkpoint(
    path: str | os.PathLike, model: torch.nn.Module, *, meta: dict[str, Any],
    optimizers: dict[str, torch.optim.Optimizer] | None = None,
    rng: bool | dict[str, torch.Tensor] = True,
) -> Path:
    """Write a checkpoint folder at `path` atomically. `meta` must be JSON-serialisable. `rng`:
    True saves this process's RNG states as rank 0; several ranks pass the states gathered from
    all of them (`DistContext.gather_rng`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        tmp.chmod(default_mode(directory=True))
        save_model(model, str(tmp / "model.safetensors"))
        state = {"genlab_version": __version__, **meta}
        if optimizers:
            tensors, layouts = {}, {}
            for name, opt in optimizers.items():
                t, layouts[name] = _flatten_optimizer(name, opt.state_dict())
                tensors.update(t)
            save_file(tensors, str(tmp / "optimizers.safetensors"))
            state["optimizers"] = layouts
        if rng:
            states = rng if isinstance(rng, dict) else {
                f"{key}.rank0": state for key, state in rng_states().items()}
            save_file(states, str(tmp / "rng.safetensors"))
        (tmp / STATE).write_text(json.dumps(state, indent=1, sort_keys=True))
        manifest = {f.name: sha256_file(f) for f in sorted(tmp.iterdir())}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        # swap in: old -> .old, new -> path, drop old. A reader finding only .old uses it, so
        # a .old left alone by an earlier crash is kept until the new checkpoint is in place.
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint folder itself, or the `.old` copy left by a crash in the middle of a swap."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return path
    old = path.with_name(f".{path.name}.old")
    if (old / MANIFEST).is_file():
        return old
    raise UserError(f"no checkpoint at {path} (missing {MANIFEST}); is this a genlab run folder?")


def verify_checkpoint(path: str | os.PathLike) -> Path:
    """Check every file against the manifest; raise a `UserError` naming the first bad one."""
    path = resolve_checkpoint(path)
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"checkpoint {path}: unreadable {MANIFEST} ({e}); the checkpoint is corrupt") from None
    for name, expected in manifest.items():
        f = path / name
        if not f.is_file():
            raise UserError(f"checkpoint {path}: {name} is missing; the checkpoint is incomplete")
        if sha256_file(f) != expected:
            raise UserError(f"checkpoint {f} is corrupt (SHA-256 does not match the manifest); "
                            "restore it or retrain")
    return path


def read_state(path: str | os.PathLike) -> dict[str, Any]:
    path = verify_checkpoint(path)
    return json.loads((path / STATE).read_text())


def load_weights(path: str | os.PathLike, model: torch.nn.Module, *, strict: bool = True) -> None:
    path = resolve_checkpoint(path)
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False,
                                         device=str(next(model.parameters()).device))
    except (SafetensorError, RuntimeError) as e:
        raise UserError(f"checkpoint {path}: weights do not fit this model ({str(e)[:200]})") from None
    if strict and (missing or unexpected):
        raise UserError(f"checkpoint {path}: weights do not fit this model (missing "
                        f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")


def load_optimizers(path: str | os.PathLike, optimizers: dict[str, torch.optim.Optimizer],
                    state: dict[str, Any]) -> None:
    path = resolve_checkpoint(path)
    tensors = load_file(str(path / "optimizers.safetensors"))
    for name, opt in optimizers.items():
        sd = _unflatten_optimizer(state["optimizers"][name], tensors)
        opt.load_state_dict(sd)
        _match_param_layout(opt)


def _match_param_layout(opt: torch.optim.Optimizer) -> None:
    """Give loaded state tensors (saved contiguous) their parameter's memory layout, e.g. the
    channels_last convs of a DCGAN: fused Adam needs equal strides (on CUDA it refuses others, on
    CPU it silently pairs the wrong elements: torch 2.13)."""
    for param, slots in opt.state.items():
        for key, value in slots.items():
            if torch.is_tensor(value) and value.shape == param.shape \
                    and value.stride() != param.stride():
                slots[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def rng_states() -> dict[str, torch.Tensor]:
    """This process's RNG states: the CPU generator and that of its current GPU, if it used one."""
    states = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def load_rng(path: str | os.PathLike, rank: int = 0, world_size: int = 1) -> bool:
    """Restore rank `rank`'s RNG states. False (nothing restored) when the checkpoint was saved by
    another number of processes."""
    path = resolve_checkpoint(path)
    states = load_file(str(path / "rng.safetensors"))
    if sum(key.startswith("cpu.rank") for key in states) != world_size:
        return False
    torch.set_rng_state(states[f"cpu.rank{rank}"])
    cuda = states.get(f"cuda.rank{rank}")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)  # the current device: this rank's GPU
    return True
