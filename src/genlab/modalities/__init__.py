"""The modality registry: a dict from name to the object that handles that kind of data.

A new kind of data is one module here (a `Modality` subclass) plus one line in `MODALITIES`. The
core asks the run's modality (`get_modality(model.modality)`, `modality_for_data(spec, model)`)
and never compares a modality's name itself.
"""

from __future__ import annotations

from collections.abc import Iterator

from genlab.errors import UserError
from genlab.generation import GenerationRequest
from genlab.modalities.audio import AudioModality
from genlab.modalities.base import Modality, Prepared, Samples
from genlab.modalities.image import ImageModality
from genlab.modalities.text import TextModality
from genlab.modalities.waveform import WaveformModality
from genlab.models.base import GenerativeModel

MODALITIES: dict[str, Modality] = {
    ImageModality.name: ImageModality(),
    AudioModality.name: AudioModality(),
    WaveformModality.name: WaveformModality(),
    TextModality.name: TextModality(),
}

__all__ = ["MODALITIES", "Modality", "Prepared", "Samples", "generate", "get_modality",
           "modality_for_data", "stream"]


def get_modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise UserError(f"unknown kind of data {name!r} (known: {', '.join(MODALITIES)}); is the "
                        "run from a newer genlab?")
    return MODALITIES[name]


def modality_for_data(spec: str, model_cls: type[GenerativeModel]) -> Modality:
    """The modality of a `--data` spec for a model family: among those that claim the spec, the
    one that feeds the family (fsdd is spectrogram images for dcgan, waveforms for wavegan), else
    the family's own (whose reader then says what is wrong with the spec). A spec of a kind the
    family cannot train on is refused."""
    claimed = [m for m in MODALITIES.values() if m.claims(spec)]
    feeding = [m for m in claimed if m.feeds == model_cls.modality]
    modality = (feeding or claimed or [get_modality(model_cls.modality)])[0]
    if modality.feeds != model_cls.modality:
        kinds = [m for m in MODALITIES.values() if m.feeds == model_cls.modality]
        raise UserError(f"{model_cls.name} trains on {' or '.join(m.description for m in kinds)}; "
                        f"--data {spec} is {modality.description.split(':')[0]}")
    return modality


def generate(model: GenerativeModel, request: GenerationRequest) -> Samples:
    """Samples for a request, by the model's modality (checked first; errors name the field)."""
    return get_modality(model.modality).generate(model, request)


def stream(model: GenerativeModel, request: GenerationRequest) -> Iterator[str]:
    """Text pieces of one sample as they are generated (text models)."""
    return get_modality(model.modality).stream(model, request)
