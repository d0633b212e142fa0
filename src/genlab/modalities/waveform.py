"""The waveform modality: `fsdd` and `wav:DIR` as raw waveforms, for waveform families (wavegan).

The audio modality (`genlab.modalities.audio`) with waveforms in place of spectrogram images:
the same specs, clips cut or padded around their centre to `genlab.audio.DEFAULT.clip_samples`
and loudness-normalized the same way (`genlab.audio.normalize`), but handed to the model as
float `(N, 1, L)` in [-1, 1]. Everything after sampling is the audio modality's: `AudioSamples`
(WAV / zip / png / npz, built from the waveforms with the spectrograms of them as heard), the
training-time grid and WAVs, `genlab eval`'s keys and sanity rows, scoring the sound exactly as
the spectrogram route does (`heard(waves)` -> the fsdd feature net). See docs/audio.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from genlab import evaluation
from genlab.audio import DEFAULT as SPECTROGRAM
from genlab.audio import clips_to_waveforms, normalize
from genlab.config import TrainConfig
from genlab.data import load_audio
from genlab.data.subset import per_class_indices, subset_sha256
from genlab.errors import UserError
from genlab.generation import GenerationRequest
from genlab.modalities.audio import AudioModality, AudioSamples
from genlab.modalities.base import Prepared
from genlab.modalities.image import ImageBatcher, image_call
from genlab.models.base import GenerativeModel

NORMALIZE_BATCH = 500  # clips per STFT when normalizing (memory)


@dataclass
class WaveData:
    """A split as fixed-length waveforms: what `config_for_data` of a waveform family sees."""

    waves: torch.Tensor  # (N, 1, L) float32 in [-1, 1]
    labels: torch.Tensor | None
    num_classes: int
    name: str
    split: str
    sha256: str  # of the clips (genlab.data.AudioData)


class WaveBatcher(ImageBatcher):
    """`ImageBatcher`'s seeded epochs over waveforms: batches are `{"waves", "labels"}`."""

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        out = super().batch(step)
        out["waves"] = out.pop("images")
        return out


def load_waveforms(spec: str, split: str, data_dir: str | None) -> WaveData:
    """A split of `fsdd` or `wav:DIR` as normalized waveforms `(N, 1, clip_samples)`."""
    clips = load_audio(spec, split, data_dir, sample_rate=SPECTROGRAM.sample_rate)
    chunks = []
    for start in range(0, len(clips.clips), NORMALIZE_BATCH):
        waves = clips_to_waveforms(clips.clips[start:start + NORMALIZE_BATCH],
                                   SPECTROGRAM.clip_samples)
        # the same loudness as the spectrogram route's images; a sample that normalizing
        # pushes past full scale is clipped, as a WAV file would
        chunks.append(normalize(waves, SPECTROGRAM).clamp_(-1.0, 1.0))
    return WaveData(torch.cat(chunks)[:, None], clips.labels, clips.num_classes, clips.name,
                    clips.split, clips.sha256)


def fit_length(waves: torch.Tensor, length: int) -> torch.Tensor:
    """`(..., L)` -> `(..., length)`: cut or zero-padded around the centre (odd sample at the
    end), as `genlab.audio.fix_length` does to a real clip."""
    extra = waves.shape[-1] - length
    if extra >= 0:
        return waves[..., extra // 2:extra // 2 + length]
    return torch.nn.functional.pad(waves, (-extra // 2, -extra - (-extra // 2)))


class WaveformModality(AudioModality):
    name = "waveform"
    feeds = "waveform"  # float (N, 1, L) clips
    description = "audio: fsdd, wav:DIR (as waveforms)"
    to_sound = "already sound"

    def prepare(self, spec: str, data_dir: str | None, model_cls: type[GenerativeModel],
                model_config: Any, train: TrainConfig, *, conditional: bool,
                device: torch.device, rank: int = 0, world_size: int = 1,
                init_extras: dict[str, Any] | None = None) -> Prepared:
        data = load_waveforms(spec, "train", data_dir)
        subset = None
        if train.per_class:
            idx = per_class_indices(data.labels, train.per_class, train.seed)
            subset = {"per_class": train.per_class, "seed": train.seed, "split": data.split,
                      "n": len(idx), "sha256": subset_sha256(idx, data.sha256, data.split)}
            data = dataclasses.replace(data, waves=data.waves[idx], labels=data.labels[idx])
        model_config = model_cls.config_for_data(model_config, data, conditional=conditional)
        length = getattr(model_config, "length", 0)
        waves = fit_length(data.waves, length) if length else data.waves  # --set model.length
        labels = data.labels if getattr(model_config, "num_classes", 0) else None
        batcher = WaveBatcher(waves, labels, train.batch_size, train.seed, device, rank,
                              world_size)
        info = {"name": data.name, "split": data.split, "sha256": data.sha256,
                "n": int(waves.shape[0]), "shape": list(waves.shape[1:]),
                "num_classes": data.num_classes, "clips": int(waves.shape[0]),
                "clips_sha256": data.sha256, "sample_rate": SPECTROGRAM.sample_rate,
                "spectrogram": dataclasses.asdict(SPECTROGRAM),
                **({"subset": subset} if subset else {})}
        return Prepared(batcher, model_config, info)

    def generate(self, model: GenerativeModel, request: GenerationRequest) -> AudioSamples:
        """Clips for a request through `sample_many`, as every other path samples."""
        r, call, nrow = image_call(model, request)
        (waves,) = model.sample_many([call])
        labels = call.options.get("labels")
        return AudioSamples.from_waveforms(self._clips(waves),
                                           labels.cpu() if labels is not None else None, nrow,
                                           seed=r.seed)

    def sample_waves(self, model: GenerativeModel, n: int, seed: int,
                     options: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`n` clips and their labels, drawn as `evaluation.sample_images` draws images."""
        return evaluation.sample_images(model, n, seed, convert=self._clips, options=options)

    @staticmethod
    def _clips(waves: torch.Tensor) -> torch.Tensor:
        """A model's `(N, 1, L)` output -> float `(N, clip_samples)` on the CPU."""
        if waves.dim() != 3 or waves.shape[1] != 1:
            raise UserError(f"waveform models make mono clips (N, 1, L), got "
                            f"{tuple(waves.shape)}")
        return fit_length(waves[:, 0].float().cpu(), SPECTROGRAM.clip_samples)

    def check_samples(self, model: GenerativeModel, samples: torch.Tensor, n: int) -> None:
        assert samples.shape == (n, 1, model.config.length)
        assert samples.is_floating_point()
        assert samples.min() >= -1.0 and samples.max() <= 1.0
