"""What the core asks of a kind of data (a modality), in one small interface.

The trainer, `genlab sample`, `genlab eval`, the server and the contract tests ask the run's
modality instead of branching on a name: how a `--data` spec is prepared into a batcher, how a
request becomes samples and how samples become bytes (by output suffix), what is written during
training, how a run is evaluated, and, for the test battery, a tiny dataset and the checks on
samples. A modality *feeds* model families of one kind: the image and audio modalities both feed
image models (audio as spectrogram images), the text modality feeds text models.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from genlab.config import TrainConfig
from genlab.errors import UserError
from genlab.generation import GenerationRequest, RequestError
from genlab.images import write_bytes
from genlab.models.base import GenerativeModel

# evaluate(step) -> metrics, and the key whose lowest value marks the best checkpoint
TrainingEvaluator = tuple[Callable[[int], dict[str, float]], str]


@dataclass
class Prepared:
    """A modality's training data, ready for the loop."""

    batcher: Any  # .batch(step) -> dict of tensors, .steps_per_epoch
    model_config: Any  # the config with the data-derived fields filled in
    data_info: dict[str, Any]  # recorded in run.json (name, sha256, sizes)
    # model state that comes from the data (a text tokenizer): given to load_checkpoint_extras
    extras: dict[str, Any] = field(default_factory=dict)


class Samples(abc.ABC):
    """Generated samples that encode to bytes; `formats` maps each format to its file suffix."""

    formats: ClassVar[dict[str, str]]

    def __len__(self) -> int:
        return self.count

    @property
    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def encode(self, fmt: str) -> bytes:
        """The samples in format `fmt` (a key of `formats`), as bytes."""

    @classmethod
    def format_for(cls, path: str | Path) -> str:
        """The format a file name asks for by its suffix; a `RequestError` for any other."""
        suffix = Path(path).suffix.lower()
        for fmt, fmt_suffix in cls.formats.items():
            if fmt_suffix == suffix:
                return fmt
        allowed = " or ".join(dict.fromkeys(cls.formats.values()))
        raise RequestError("out", f"must end in {allowed}, got {str(path)!r}")

    def save(self, path: str | Path) -> Path:
        """Write the samples in the format the suffix of `path` names (atomically)."""
        return write_bytes(self.encode(self.format_for(path)), path)


class Modality(abc.ABC):
    name: ClassVar[str]
    feeds: ClassVar[str]  # the `modality` of the model families it trains ("image", "text")
    description: ClassVar[str]
    unit: ClassVar[str] = "img"  # what the progress line counts
    samples_class: ClassVar[type[Samples]]  # what `generate` returns
    streams: ClassVar[bool] = False  # `stream` yields a sample piece by piece (text)
    # the format `genlab sample` prints on stdout without --out; None: --out is required
    stdout_format: ClassVar[str | None] = None

    # --- data --------------------------------------------------------------------------------------

    @abc.abstractmethod
    def claims(self, spec: str) -> bool:
        """Whether a `--data` spec is data of this kind."""

    @abc.abstractmethod
    def prepare(self, spec: str, data_dir: str | None, model_cls: type[GenerativeModel],
                model_config: Any, train: TrainConfig, *, conditional: bool,
                device: torch.device, rank: int = 0, world_size: int = 1,
                init_extras: dict[str, Any] | None = None) -> Prepared:
        """Read the training split of `spec`, fill the config's data fields, build the batcher."""

    def items_per_example(self, model: GenerativeModel) -> int:
        """How many `unit`s one training example holds (a text window holds block_size tokens)."""
        return 1

    # --- generation --------------------------------------------------------------------------------

    @abc.abstractmethod
    def generate(self, model: GenerativeModel, request: GenerationRequest) -> Samples:
        """Samples for a request (checked with `generation.check_request` first)."""

    def stream(self, model: GenerativeModel, request: GenerationRequest) -> Iterator[str]:
        raise UserError(f"streaming is for text models; {model.name} makes {self.name} samples")

    # --- during training ---------------------------------------------------------------------------

    @abc.abstractmethod
    def write_training_samples(self, model: GenerativeModel, run_dir: Path, step: int,
                               seed: int) -> Path:
        """Samples from a fixed seed into `run_dir/samples/` (and the latest beside them)."""

    def training_evaluator(self, model: GenerativeModel, prepared: Prepared,
                           record: dict[str, Any], data_dir: str | None,
                           device: torch.device) -> TrainingEvaluator | None:
        """For `--eval-every`: the metrics function and its best-is-lowest key, or None."""
        return None

    # --- evaluation --------------------------------------------------------------------------------

    @abc.abstractmethod
    def evaluate_run(self, run_dir: Path, model: GenerativeModel, record: dict[str, Any], *,
                     n: int, seed: int, data_dir: str | None, which: str,
                     feature_net: str | None, iwae_k: int, real: str | None,
                     command: str | None, sample_options: dict[str, Any]) -> dict[str, Any]:
        """`genlab eval RUN`: the report (the keys of docs/evaluation.md for this modality);
        `real` names other data to compare with (DATASET[:split]) where the modality has that;
        `sample_options` (names already checked against the family's) go to `model.sample`."""

    @abc.abstractmethod
    def format_report(self, report: dict[str, Any]) -> str:
        """The report as a small text table for the terminal."""

    # --- the test battery ------------------------------------------------------------------------

    @abc.abstractmethod
    def tiny_data(self, folder: Path) -> str:
        """Write a tiny labelled dataset of this kind into `folder` and return its `--data`."""

    @abc.abstractmethod
    def check_samples(self, model: GenerativeModel, samples: torch.Tensor, n: int) -> None:
        """Assert that `model.sample(n, ...)` output has this modality's shape and range."""

    def cheap_sample_kwargs(self) -> dict[str, Any]:
        """Keyword arguments that keep `model.sample` fast in tests."""
        return {}
