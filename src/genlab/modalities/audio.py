"""The audio modality: `fsdd` and `wav:DIR` as spectrogram images, so that the image families
(dcgan, convvae, diffusion) train on sound unchanged; WAV samples, and FD/KID/P/R/D/C and class
accuracy of the *sound* in the fsdd feature net's space.

A clip is cut or zero-padded around its centre to `genlab.audio.DEFAULT.clip_samples` (8,001
samples: 1.0 s at 8 kHz), loudness-normalized and turned into a 64x64 log-mel image
(`genlab.audio`). Generated images go back to sound by fast Griffin-Lim. Evaluation scores
what a user hears: each generated image becomes a 16-bit WAV clip, which is then read like a
real clip (spectrogram of the waveform), so a spectrogram that no waveform has is not rewarded.
The waveform modality (`genlab.modalities.waveform`, for wavegan) is this one with waveforms in
place of spectrograms: the same samples, files, training-time outputs and evaluation.
See docs/audio.md.
"""

from __future__ import annotations

import dataclasses
import io
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from genlab import evaluation
from genlab.audio import DEFAULT as SPECTROGRAM
from genlab.audio import (
    SpectrogramConfig,
    clips_to_images,
    images_to_waveforms,
    normalize,
    waveforms_to_images,
)
from genlab.config import TrainConfig
from genlab.data import AudioData, load_audio, resize_images, wav_bytes
from genlab.data.catalog import SOURCES, container_of
from genlab.errors import UserError
from genlab.featurenet import feature_net_for, load_feature_net, shipped_names, subset
from genlab.generation import GenerationRequest
from genlab.images import grid_png, npz_bytes, to_uint8, write_bytes
from genlab.limits import derive_seed
from genlab.log import get_logger
from genlab.metrics import frechet_distance_from_stats, gaussian_stats, kid
from genlab.modalities.base import Modality, Prepared, Samples, TrainingEvaluator
from genlab.modalities.image import image_call, prepare_image_data
from genlab.models.base import GenerativeModel, Likelihood

_log = get_logger(__name__).info

PREFIX = "wav:"
GRID_SAMPLES = 64  # spectrograms in each training-time grid
TRAINING_WAVS = 4  # WAV files written beside each training-time grid
GAP_SECONDS = 0.25  # silence between the clips of a several-sample .wav
NOISE_LEVEL = 0.1  # standard deviation of the noise sanity row's white noise (full scale 1)
MIN_SIDE = 8  # smallest image side tried for a family that cannot take the spectrogram's size


# --- samples --------------------------------------------------------------------------------------

@dataclass
class AudioSamples(Samples):
    """Generated spectrograms (uint8 `(N, 1, S, S)` at the spectrogram's size), their labels,
    and the waveforms Griffin-Lim makes of them, computed once when first needed (seeded).
    A waveform model's samples (`from_waveforms`) hold their waveforms from the start and the
    spectrograms of them as heard (`heard`), so both routes write the same files.

    Formats by suffix: `.wav` one clip (N = 1) or all clips one after the other with 0.25 s
    of silence between them (N > 1); `.zip` one WAV per sample plus the grid; `.png` the grid
    of spectrograms; `.npz` the spectrogram images (for `genlab eval --fake`). `save` of a
    `.wav` also writes the grid beside it (same name, `.png`).
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    nrow: int | None = None
    seed: int = 0
    config: SpectrogramConfig = SPECTROGRAM
    _waves: torch.Tensor | None = field(default=None, repr=False)

    formats: ClassVar[dict[str, str]] = {"wav": ".wav", "zip": ".zip", "png_grid": ".png",
                                         "npz": ".npz"}

    @property
    def count(self) -> int:
        return self.images.shape[0]

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @classmethod
    def from_waveforms(cls, waves: torch.Tensor, labels: torch.Tensor | None = None,
                       nrow: int | None = None, seed: int = 0,
                       config: SpectrogramConfig = SPECTROGRAM) -> AudioSamples:
        """Samples of a waveform model: float `(N, clip_samples)` in [-1, 1], with the
        spectrograms of them as the feature net hears them (16-bit, normalized)."""
        waves = waves.detach().float().cpu().clamp(-1.0, 1.0)
        return cls(heard(waves, config), labels, nrow, seed=seed, config=config, _waves=waves)

    @property
    def waves(self) -> torch.Tensor:
        """float32 `(N, clip_samples)` in [-1, 1]."""
        if self._waves is None:
            self._waves = to_waveforms(self.images, self.seed, self.config)
        return self._waves

    def head(self, k: int) -> AudioSamples:
        """The first `k` samples; Griffin-Lim (if any) runs for those only."""
        return dataclasses.replace(
            self, images=self.images[:k],
            labels=None if self.labels is None else self.labels[:k],
            _waves=None if self._waves is None else self._waves[:k])

    def wav_files(self) -> list[bytes]:
        """One 16-bit PCM mono WAV file per sample."""
        return [wav_bytes(w, self.sample_rate) for w in self.waves]

    def encode(self, fmt: str) -> bytes:
        if fmt == "wav":
            if self.count == 1:
                return wav_bytes(self.waves[0], self.sample_rate)
            gap = torch.zeros(self.count, int(GAP_SECONDS * self.sample_rate))
            return wav_bytes(torch.cat([self.waves, gap], dim=1).flatten()[:-gap.shape[1]],
                             self.sample_rate)
        if fmt == "zip":
            return self._zip()
        if fmt == "png_grid":
            return grid_png(self.images, self.nrow)
        if fmt == "npz":
            return npz_bytes(self.images, self.labels)
        raise UserError(f"unknown audio format {fmt!r}; allowed: {', '.join(self.formats)}")

    def save(self, path: str | Path) -> Path:
        fmt = self.format_for(path)
        out = write_bytes(self.encode(fmt), path)
        if fmt == "wav":  # the spectrograms, to look at what was heard
            write_bytes(self.encode("png_grid"), Path(path).with_suffix(".png"))
        return out

    def _zip(self) -> bytes:
        buf = io.BytesIO()
        width = len(str(self.count - 1))
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            entries = [(f"sample_{i:0{width}d}"
                        f"{'' if self.labels is None else f'_label{int(self.labels[i])}'}.wav", w)
                       for i, w in enumerate(self.wav_files())]
            entries.append(("spectrograms.png", self.encode("png_grid")))
            for name, data in entries:
                # a fixed timestamp: equal samples give equal bytes
                z.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data,
                           zipfile.ZIP_DEFLATED)
        return buf.getvalue()


def to_spectrograms(images: torch.Tensor, config: SpectrogramConfig = SPECTROGRAM
                    ) -> torch.Tensor:
    """A model's images (uint8 or [0, 1] floats, `(N, 1, s, s)`) -> uint8 spectrogram images
    at the spectrogram's size (a family trained at a smaller size is resized back up)."""
    if images.dim() != 4 or images.shape[1] != 1:
        raise UserError(f"audio models make one-channel spectrogram images, got "
                        f"{tuple(images.shape)}")
    x = images if images.dtype == torch.uint8 else to_uint8(images)
    return resize_images(x.cpu(), config.size)


def to_waveforms(spectrograms: torch.Tensor, seed: int,
                 config: SpectrogramConfig = SPECTROGRAM) -> torch.Tensor:
    """uint8 spectrograms -> float32 waveforms (N, clip_samples) by Griffin-Lim, its random
    initial phases drawn from `seed`."""
    generator = torch.Generator().manual_seed(derive_seed(seed, 1))
    return images_to_waveforms(spectrograms, config, generator=generator)


def heard(waves: torch.Tensor, config: SpectrogramConfig = SPECTROGRAM) -> torch.Tensor:
    """Waveforms as the feature net hears them: quantized to 16-bit as in a WAV file, then
    normalized and turned into spectrogram images exactly like a real clip."""
    pcm = (waves.clamp(-1.0, 1.0) * 32767.0).round() / 32768.0
    return waveforms_to_images(normalize(pcm, config), config)


def generate_audio(model: GenerativeModel, request: GenerationRequest) -> AudioSamples:
    """Spectrograms for a request through `sample_many` (as image runs do), as `AudioSamples`."""
    r, call, nrow = image_call(model, request)
    (images,) = model.sample_many([call])
    labels = call.options.get("labels")
    return AudioSamples(to_spectrograms(images), labels.cpu() if labels is not None else None,
                        nrow, seed=r.seed)


# --- data -----------------------------------------------------------------------------------------

def load_spectrograms(spec: str, split: str, data_dir: str | None) -> tuple[Any, AudioData]:
    """A split of `fsdd` or `wav:DIR` as spectrogram images (an `ImageData`) and its clips."""
    clips = load_audio(spec, split, data_dir, sample_rate=SPECTROGRAM.sample_rate)
    return clips_to_images(clips, SPECTROGRAM), clips


def fit_image_size(model_cls: type[GenerativeModel], model_config: Any, data: Any, *,
                   conditional: bool) -> Any:
    """The config with the image side the family takes: the spectrogram's own size, or when the
    family refuses it (convvae takes 28 or 32) and the user set none, the largest half, quarter...
    that it accepts; the images are then resized once at load, and samples back up."""
    if not dataclasses.is_dataclass(model_config) or getattr(model_config, "image_size", 1) != 0:
        return model_config
    side, first = data.images.shape[-1], None
    while side >= MIN_SIDE:
        candidate = dataclasses.replace(model_config, image_size=side)
        try:
            model_cls.config_for_data(candidate, data, conditional=conditional).validate()
            if side != data.images.shape[-1]:
                _log(f"note: {model_cls.name} does not take {data.images.shape[-1]}x"
                     f"{data.images.shape[-1]} images; spectrograms are resized to {side}x{side}"
                     " for it (and samples back up)")
            return candidate
        except UserError as e:
            first = first or e
        side //= 2
    raise first


# --- the modality ---------------------------------------------------------------------------------

class AudioModality(Modality):
    name = "audio"
    feeds = "image"  # as 64x64 spectrogram images
    description = "audio: fsdd, wav:DIR (as 64x64 log-mel spectrograms)"
    unit = "clip"
    samples_class = AudioSamples
    to_sound: ClassVar[str] = "Griffin-Lim back to sound"  # how samples become sound (eval log)

    def claims(self, spec: str) -> bool:
        if spec.startswith(PREFIX):
            return True
        name = spec.lower().replace("_", "-")
        return name in SOURCES and container_of(name) is AudioData

    def prepare(self, spec: str, data_dir: str | None, model_cls: type[GenerativeModel],
                model_config: Any, train: TrainConfig, *, conditional: bool,
                device: torch.device, rank: int = 0, world_size: int = 1,
                init_extras: dict[str, Any] | None = None) -> Prepared:
        data, clips = load_spectrograms(spec, "train", data_dir)
        model_config = fit_image_size(model_cls, model_config, data, conditional=conditional)
        info = {"clips": len(clips.clips), "clips_sha256": clips.sha256,
                "sample_rate": clips.sample_rate, "spectrogram": dataclasses.asdict(SPECTROGRAM)}
        return prepare_image_data(data, model_cls, model_config, train, conditional=conditional,
                                  device=device, rank=rank, world_size=world_size, info=info)

    def generate(self, model: GenerativeModel, request: GenerationRequest) -> AudioSamples:
        return generate_audio(model, request)

    def sample_waves(self, model: GenerativeModel, n: int, seed: int,
                     options: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`n` generated clips, float `(N, clip_samples)`, and their labels (balanced classes
        for a conditional model): what evaluation scores; `options` go to `model.sample`. Here:
        spectrograms, then Griffin-Lim from phases drawn from `seed`."""
        images, labels = evaluation.sample_images(model, n, seed, options=options)
        return to_waveforms(to_spectrograms(images), seed), labels

    def write_training_samples(self, model: GenerativeModel, run_dir: Path, step: int,
                               seed: int) -> Path:
        """A grid of spectrograms from a fixed seed (`samples/step_N.png`, `samples.png`) and
        the first few of them as WAV files (`samples/step_N_K.wav`, `samples_K.wav`)."""
        samples = self.generate(model, GenerationRequest(n=GRID_SAMPLES, seed=seed))
        png = samples.encode("png_grid")
        path = write_bytes(png, run_dir / "samples" / f"step_{step:07d}.png")
        write_bytes(png, run_dir / "samples.png")
        for k, wav in enumerate(samples.head(TRAINING_WAVS).wav_files()):
            write_bytes(wav, run_dir / "samples" / f"step_{step:07d}_{k}.wav")
            write_bytes(wav, run_dir / f"samples_{k}.wav")
        return path

    def training_evaluator(self, model: GenerativeModel, prepared: Prepared,
                           record: dict[str, Any], data_dir: str | None,
                           device: torch.device) -> TrainingEvaluator | None:
        """FD and KID of `train.eval_n` generated clips (same latent points and phases each
        time) against as many held-out clips; None without a feature net for the data."""
        n, seed = record["train_config"]["eval_n"], record["train_config"]["seed"]
        dataset = prepared.data_info["name"]
        net = feature_net_for(dataset)
        if net is None:
            return None
        net = net.to(device)
        reference = evaluation.reference_subset(net, dataset, None, data_dir, [], _log)
        real = evaluation.subset_features(net, reference,
                                          evaluation.choose(len(reference.images), n, seed))
        stats = gaussian_stats(real.features)

        def evaluate(step: int) -> dict[str, float]:
            model.eval()
            waves, _ = self.sample_waves(model, len(real), seed)
            feats, _ = net.embed(heard(waves))
            out = {"fd": frechet_distance_from_stats(*stats, *gaussian_stats(feats))}
            out["kid_mean"], out["kid_std"] = kid(real.features, feats, seed=seed)
            return out

        return evaluate, "fd"

    def evaluate_run(self, run_dir: Path, model: GenerativeModel, record: dict[str, Any], *,
                     n: int, seed: int, data_dir: str | None, which: str,
                     feature_net: str | None, iwae_k: int, real: str | None,
                     command: str | None, sample_options: dict[str, Any]) -> dict[str, Any]:
        """The image report's keys (docs/evaluation.md) for the generated *sound*, against the
        held-out clips of the feature net's data; plus `sanity` rows (white noise and silence
        scored the same way) and, for models with a likelihood, that of test spectrograms."""
        log = _log
        dataset = record.get("data_info", {}).get("name") or record["data"]
        report = evaluation.empty_report(n, seed, command)
        notes = report["notes"]
        report["provenance"].update({"step": model.checkpoint_step, "run": str(run_dir),
                                     "which": which, "model": model.name,
                                     "device": str(model.device),
                                     "spectrogram": dataclasses.asdict(SPECTROGRAM)})
        split = None
        reference_name = dataset
        if real is not None:
            reference_name, split = evaluation.parse_real(real)
            notes.append(f"note: scored against {real}, not the run's own data {dataset}")
        net = load_feature_net(feature_net) if feature_net else feature_net_for(reference_name)
        if net is None:
            audio_nets = [s for s in shipped_names() if s in SOURCES
                          and container_of(s) is AudioData]
            raise UserError(f"no feature net for {dataset}; score the clips against a dataset "
                            f"that has one (genlab eval {run_dir} --real "
                            f"{(audio_nets or ['fsdd'])[0]}) or pass --feature-net FILE")
        if "spectrogram" not in net.meta:
            raise UserError(f"feature net {net.name} was trained on images, not on spectrograms "
                            "of sound; use an audio net (fsdd)")
        reference = evaluation.reference_subset(net, reference_name, split, data_dir, notes, log)
        report["n"] = n = evaluation._cap(n, len(reference.images), reference.label(), report,
                                          log)
        t0 = time.perf_counter()
        log(f"sampling {n} clips from {run_dir} (seed {seed}), {self.to_sound}")
        waves, labels = self.sample_waves(model, n, seed, sample_options)
        fake = heard(waves)
        report["provenance"]["sample_seconds"] = round(time.perf_counter() - t0, 3)
        evaluation.compare(net, fake, labels, reference, n=n, seed=seed, data_dir=data_dir,
                           report=report, log=log)
        report["sanity"] = sanity_rows(net, reference, n, seed, labels)
        if isinstance(model, Likelihood):
            report.update(likelihood_of_test(model, dataset, data_dir, n, seed, iwae_k, log))
        return report

    def format_report(self, report: dict[str, Any]) -> str:
        lines = [evaluation.format_report(report)]
        for name, row in (report.get("sanity") or {}).items():
            shown = ", ".join(f"{k} {evaluation._fmt(row.get(k))}"
                              for k in ("fd", "kid_mean", "class_accuracy") if k in row)
            lines.append(f"sanity, {name}: {shown}")
        return "\n".join(lines)

    # --- the test battery ------------------------------------------------------------------------

    def tiny_data(self, folder: Path) -> str:
        write_tiny_wavs(folder)
        return f"{PREFIX}{folder}"

    def check_samples(self, model: GenerativeModel, samples: torch.Tensor, n: int) -> None:
        config = model.config
        assert samples.shape == (n, 1, config.image_size, config.image_size)
        assert samples.is_floating_point()
        assert samples.min() >= 0.0 and samples.max() <= 1.0


# --- evaluation helpers ---------------------------------------------------------------------------

def sanity_rows(net: Any, reference: Any, n: int, seed: int,
                labels: torch.Tensor | None) -> dict[str, dict[str, Any]]:
    """White noise and silence, scored like generated clips against the same real clips: what a
    useless model gets (a model near these has learnt nothing; near the floor, a lot)."""
    real = evaluation.subset_features(net, reference,
                                      evaluation.choose(len(reference.images), n, seed))
    g = torch.Generator().manual_seed(derive_seed(seed, 2))
    length = SPECTROGRAM.clip_samples
    rows = {}
    for name, waves in (("noise", NOISE_LEVEL * torch.randn(n, length, generator=g)),
                        ("silence", torch.zeros(n, length))):
        feats, logits = net.embed(heard(waves))
        fake = evaluation.Features(feats, logits, labels, name)
        rows[name] = evaluation.image_metrics(real, fake, net.config.num_classes, seed)
    return rows


def likelihood_of_test(model: Any, dataset: str, data_dir: str | None, n: int, seed: int,
                    iwae_k: int, log: Any) -> dict[str, Any]:
    """The model's likelihood of up to `n` test spectrograms (at the model's size)."""
    test = subset(dataset, "test", data_dir=data_dir)
    index = torch.from_numpy(evaluation.choose(len(test.images), n, seed))
    images = test.images[index]
    size = model.config.image_size
    if size != images.shape[-1]:
        images = resize_images(images, size)  # as the training spectrograms were
    labels = test.labels[index] if model.num_classes and test.labels is not None else None
    log(f"likelihood on {len(images)} {dataset} test spectrograms (IWAE K={iwae_k})")
    generator = torch.Generator(device=model.device).manual_seed(seed)
    return dict(model.likelihood_report(images, labels=labels, iwae_k=iwae_k,
                                        generator=generator))


# --- tiny data ------------------------------------------------------------------------------------

TINY_CLASSES, TINY_PER_CLASS = 4, 12
TINY_FREQS = (300.0, 700.0, 1300.0, 2500.0)  # Hz, one tone per class


def tiny_clips(rng: np.random.Generator, label: int, n: int,
               sample_rate: int = 8000) -> list[np.ndarray]:
    """`n` int16 clips of class `label`: a tone of the class's frequency, 0.3-0.9 s long, with a
    little noise and a random loudness, so lengths vary as in fsdd."""
    clips = []
    for _ in range(n):
        length = int(rng.integers(int(0.3 * sample_rate), int(0.9 * sample_rate)))
        t = np.arange(length) / sample_rate
        tone = np.sin(2 * np.pi * TINY_FREQS[label] * t) * np.hanning(length)
        x = rng.uniform(0.1, 0.6) * tone + 0.01 * rng.standard_normal(length)
        clips.append(np.rint(np.clip(x, -1, 1) * 32767).astype(np.int16))
    return clips


def write_tiny_wavs(folder: Path, seed: int = 0, per_class: int = TINY_PER_CLASS) -> Path:
    """A `wav:DIR` dataset: one subfolder per class (`0`..`3`) of short 8 kHz tones."""
    rng = np.random.default_rng(seed)
    for label in range(TINY_CLASSES):
        for i, clip in enumerate(tiny_clips(rng, label, per_class)):
            write_bytes(wav_bytes(clip, 8000), folder / str(label) / f"{label}_{i:02d}.wav")
    return folder
