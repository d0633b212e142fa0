"""Devices and precision: which device a run uses, and whether bf16 pays off on it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from genlab.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda: no CUDA GPU is visible; use device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise UserError("device mps: Apple MPS is not available here; use device cpu or auto")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; allowed: {', '.join(DEVICE_CHOICES)}")
    return torch.device(name)


def cpu_flags() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def bf16_supported(device: torch.device) -> bool:
    """bf16 pays off only with hardware support: AVX-512 BF16 / AMX on CPU, Ampere+ on CUDA."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    flags = cpu_flags()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> tuple[str, str | None]:
    """The precision a run uses, and a one-line note saying why (None when nothing to say).

    `auto` is bf16 where the hardware runs it fast, else fp32. An explicit `bf16` on a device
    without native bf16 is kept (the user asked) but warned about: on such a CPU bf16 is emulated
    and a DCGAN step ran 13x slower than fp32.
    """
    native = bf16_supported(device)
    where = "CPU" if device.type == "cpu" else device.type.upper()
    if precision == "auto":
        chosen = "bf16" if native else "fp32"
        why = ("has native bf16" if native else
               "has no native bf16 (AVX-512 BF16 or AMX)" if device.type == "cpu" else
               "has no fast bf16")
        return chosen, f"precision auto: {chosen}, because this {where} {why}"
    if precision == "bf16" and not native and device.type != "mps":
        return precision, (f"warning: --precision bf16 on a {where} without native bf16 is "
                           "emulated and can be 10x slower than fp32; use --precision auto")
    return precision, None


def sampling_precision(model: Any, precision: str, warn: Callable[[str], None]) -> str:
    """Set `precision` (fp32, bf16 or auto) on a loaded model for sampling, as `sample`, `eval`
    and `utility` ask for it; a warning (bf16 emulated on this device) goes to `warn`. Returns
    the precision used."""
    chosen, note = resolve_precision(precision, model.device)
    if note and note.startswith("warning"):
        warn(note)
    model.set_precision(chosen, model.device.type)
    return chosen
