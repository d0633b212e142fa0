"""What a generation request means, defined once for `genlab sample`, the in-training samples,
the Python API and the HTTP server.

A `GenerationRequest` names what to draw (n, seed, labels, a prompt and the text options, a
family's own sampling options); `check_request` validates it against a model before any work, with
errors that name the request field (`top_k must be >= 1`), which the command line maps to its flags
and the server to a 422. The modality of the model turns a checked request into samples
(`genlab.modalities.generate`), which encode to bytes without touching the file system.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from genlab.errors import UserError
from genlab.limits import MAX_NEW_TOKENS, MAX_SAMPLES, MAX_SEED
from genlab.models.base import GenerativeModel

DEFAULT_IMAGES = 64  # `genlab sample` of an image model without --n
DEFAULT_TEXTS = 1
DEFAULT_NEW_TOKENS = 500
DEFAULT_TEMPERATURE = 1.0
TEXT_FIELDS = ("prompt", "max_new_tokens", "temperature", "top_k", "top_p")


class RequestError(UserError):
    """A request field has a bad value; `field` names it (the CLI maps it to its flag)."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name} {problem}")
        self.field, self.problem = field_name, problem


@dataclass
class GenerationRequest:
    """What to generate. `None` means "the default" (resolved by `check_request`)."""

    n: int | None = None  # samples; default 64 images or 1 text
    seed: int = 0  # the same seed gives the same samples, through every path
    label: int | list[int] | None = None  # one class for all, or n classes; default 0..K-1 in turn
    prompt: str | None = None  # text models: the samples start with it
    max_new_tokens: int | None = None  # text models: tokens after the prompt (default 500)
    temperature: float | None = None  # text models: softmax temperature, 0 = greedy (default 1)
    top_k: int | None = None  # text models: sample among the k likeliest tokens
    top_p: float | None = None  # text models: nucleus sampling
    use_cache: bool = True  # text models: the KV cache (False recomputes the context; slower)
    options: dict[str, Any] = field(default_factory=dict)  # the family's own `sample_options`


def _integer(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise RequestError(name, f"must be in {low}..{high}, got {value}")
    return value


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RequestError(name, f"must be a finite number, got {value!r}")
    return float(value)


def check_request(model: GenerativeModel, request: GenerationRequest, *,
                  text: bool) -> GenerationRequest:
    """The request with its defaults filled in, checked against `model`; `text` says whether the
    model generates text (the modality knows). Raises `RequestError` naming the field."""
    r = replace(request, options=dict(request.options))
    r.n = _integer("n", DEFAULT_TEXTS if text and r.n is None else DEFAULT_IMAGES
                   if r.n is None else r.n, 1, MAX_SAMPLES)
    r.seed = _integer("seed", r.seed, 0, MAX_SEED)
    k = model.num_classes
    if r.label is not None:
        if not k:
            raise RequestError("label", "needs a conditional model (train it with --conditional)")
        labels = r.label if isinstance(r.label, list) else [r.label]
        if len(labels) not in (1, r.n):
            raise RequestError("label", f"must be one class or a list of {r.n}, got {len(labels)}")
        for label in labels:
            if isinstance(label, bool) or not isinstance(label, int):
                raise RequestError("label", f"must be an integer class, got {label!r}")
            if not 0 <= label < k:
                raise RequestError("label", f"{label} is out of range: the model has classes "
                                            f"0..{k - 1}")
    if text:
        if r.label is not None:
            raise RequestError("label", "applies to conditional image models, not text models")
        r.max_new_tokens = _integer("max_new_tokens", DEFAULT_NEW_TOKENS if r.max_new_tokens is None
                                    else r.max_new_tokens, 0, MAX_NEW_TOKENS)
        r.temperature = DEFAULT_TEMPERATURE if r.temperature is None else r.temperature
        if _number("temperature", r.temperature) < 0:
            raise RequestError("temperature", f"must be >= 0 (0 = greedy), got {r.temperature}")
        if r.top_k is not None:
            _integer("top_k", r.top_k, 1, 2**31 - 1)
        if r.top_p is not None and not 0.0 < _number("top_p", r.top_p) <= 1.0:
            raise RequestError("top_p", f"must be in (0, 1], got {r.top_p}")
        if r.prompt is not None and not isinstance(r.prompt, str):
            raise RequestError("prompt", f"must be a string, got {r.prompt!r}")
    else:
        given = [name for name in TEXT_FIELDS if getattr(r, name) is not None]
        if not r.use_cache:
            given.append("use_cache")
        if given:
            raise RequestError(given[0], f"is a text option, and {model.name} makes images")
    check_options(model, r.options)
    return r


def check_options(model: GenerativeModel, options: dict[str, Any]) -> None:
    """Every name in `options` is one of the family's `sample_options`, else `RequestError`."""
    unknown = sorted(set(options) - set(model.sample_options))
    if unknown:
        allowed = ", ".join(model.sample_options) or "none"
        raise RequestError(unknown[0], f"is not a sampling option of {model.name} (it has: "
                                       f"{allowed})")


def balanced_labels(n: int, num_classes: int) -> list[int]:
    """The default labels of a conditional model: classes 0..K-1 in turn (grid columns)."""
    return [i % num_classes for i in range(n)]
