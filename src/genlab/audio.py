"""Audio clips <-> spectrogram images, so that image models train on sound unchanged.

A clip is cut or zero-padded to a fixed length around its centre (FSDD's clips are trimmed
words; 2,980 of its 3,000 are at most 1 s), turned into a magnitude spectrogram (STFT, then a
mel filterbank), put on a decibel scale and quantized: a uint8 image (N, 1, S, S) with time
running left to right and low frequencies at the bottom, silence black. Back to sound, the
magnitudes are mapped back to linear frequency (least squares, clamped at 0) and the phase,
which the image does not hold, is recovered by the fast Griffin-Lim algorithm:

- D. Griffin and J. Lim, "Signal estimation from modified short-time Fourier transform", 1984.
- N. Perraudin, P. Balazs and P. Sondergaard, "A fast Griffin-Lim algorithm", 2013,
  https://ieeexplore.ieee.org/document/6701851 (the momentum term).

`DEFAULT` was chosen by `benchmarks/audio_representations.py` (see benchmarks/README.md).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from genlab.data.base import AudioData, ImageData, content_sha256
from genlab.errors import UserError


@dataclass(frozen=True)
class SpectrogramConfig:
    """How clips become (1, size, size) images. Frames are `hop` samples apart and the STFT is
    centred, so a clip of `clip_samples = hop * (size - 1)` samples gives exactly `size` frames."""

    sample_rate: int = 8000  # Hz
    size: int = 64  # image side: `size` frequency rows by `size` frames
    n_fft: int = 512  # STFT window (Hann) and FFT length, in samples
    hop: int = 127  # samples between frames
    mel: bool = True  # `size` mel bands; False: the n_fft // 2 + 1 linear bins, n_fft = 2 (size - 1)
    db_max: float = -6.0  # level mapped to 255, in dB relative to a full-scale sine
    db_range: float = 80.0  # dB below db_max mapped to 1; anything quieter is 0 (black)
    normalize: bool = True  # scale each clip so its loudest bin is at db_max (see `normalize`)
    griffin_lim_iters: int = 64
    momentum: float = 0.99  # fast Griffin-Lim; 0 is the original algorithm

    @property
    def clip_samples(self) -> int:
        return self.hop * (self.size - 1)

    @property
    def seconds(self) -> float:
        return self.clip_samples / self.sample_rate

    def validate(self) -> None:
        if self.size < 2 or self.hop < 1 or self.n_fft < 2 or self.sample_rate < 1:
            raise UserError(f"spectrogram: size, hop, n_fft and sample_rate must be positive, "
                            f"got {self}")
        if self.hop > self.n_fft:
            raise UserError(f"spectrogram: hop {self.hop} > n_fft {self.n_fft} leaves samples "
                            "out of every frame; use hop <= n_fft (n_fft / 4 suits Griffin-Lim)")
        if not self.mel and self.n_fft // 2 + 1 != self.size:
            raise UserError(f"spectrogram: a linear spectrogram of {self.size} rows needs "
                            f"n_fft = {2 * (self.size - 1)}, got {self.n_fft}")
        if self.db_range <= 0:
            raise UserError(f"spectrogram: db_range must be > 0, got {self.db_range}")


DEFAULT = SpectrogramConfig()


# --- fixed-length waveforms -----------------------------------------------------------------------

def fix_length(clip: Tensor, length: int) -> Tensor:
    """int16 (L,) -> float32 (length,) in [-1, 1): centred, zero-padded or cut equally on both
    sides (the odd sample goes to the end)."""
    x = clip.float() / 32768.0
    if len(x) >= length:
        start = (len(x) - length) // 2
        return x[start:start + length]
    left = (length - len(x)) // 2
    return torch.nn.functional.pad(x, (left, length - len(x) - left))


def clips_to_waveforms(clips: list[Tensor], length: int) -> Tensor:
    """A list of int16 clips -> float32 (N, length), see `fix_length`."""
    if not clips:
        raise UserError("no clips given")
    return torch.stack([fix_length(c, length) for c in clips])


def normalize(waves: Tensor, config: SpectrogramConfig = DEFAULT) -> Tensor:
    """Scale each waveform so that the loudest bin of its spectrogram is at `db_max`.

    FSDD's clips peak anywhere from -41 to -5 dB: without this, quiet speakers would be dim
    images and a model would spend its capacity on loudness. Silent clips (no bin above -120
    dB) are left as they are, so silence stays black.
    """
    peak_db = 20.0 * torch.log10(_magnitudes(waves.float(), config).amax(dim=(1, 2))
                                 .clamp_min(1e-10))  # (N,)
    gain = torch.where(peak_db > -120.0, 10.0 ** ((config.db_max - peak_db) / 20.0),
                       torch.ones_like(peak_db))
    return waves * gain[:, None]


# --- waveform <-> spectrogram image ---------------------------------------------------------------

def waveforms_to_images(waves: Tensor, config: SpectrogramConfig = DEFAULT) -> Tensor:
    """float (N, clip_samples) in [-1, 1] -> uint8 (N, 1, size, size)."""
    config.validate()
    if waves.dim() != 2 or waves.shape[1] != config.clip_samples:
        raise UserError(f"waveforms must be (N, {config.clip_samples}) for this spectrogram, got "
                        f"{tuple(waves.shape)}; cut or pad them with clips_to_waveforms")
    db = 20.0 * torch.log10(_magnitudes(waves.float(), config).clamp_min(1e-10))
    level = (db - (config.db_max - config.db_range)) / config.db_range  # 0..1 over the range
    pixels = (level.clamp(0.0, 1.0) * 255.0).round_().to(torch.uint8)
    return pixels.flip(1)[:, None]  # (N, 1, size, size), low frequencies at the bottom


def images_to_magnitudes(images: Tensor, config: SpectrogramConfig = DEFAULT) -> Tensor:
    """uint8 (or float in [0, 1]) (N, 1, size, size) -> linear STFT magnitudes (N, F, size).

    Black pixels are silence (magnitude 0), not the floor of the dB range.
    """
    config.validate()
    s = config.size
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, s, s):
        raise UserError(f"spectrogram images must be (N, 1, {s}, {s}), got "
                        f"{tuple(images.shape)}")
    level = images.float() / 255.0 if images.dtype == torch.uint8 else images.float().clamp(0, 1)
    level = level[:, 0].flip(1)  # (N, size, T), row 0 the lowest frequency again
    db = level * config.db_range + (config.db_max - config.db_range)
    magnitude = torch.where(level > 0, 10.0 ** (db / 20.0), torch.zeros_like(db))
    if config.mel:
        magnitude = (_mel_pinv(config, images.device) @ magnitude).clamp_min(0.0)
    return magnitude * _full_scale(config)


def images_to_waveforms(images: Tensor, config: SpectrogramConfig = DEFAULT, *,
                        generator: torch.Generator | None = None,
                        iters: int | None = None) -> Tensor:
    """Spectrogram images -> float32 (N, clip_samples) in [-1, 1], by fast Griffin-Lim.

    The initial phases are drawn from `generator` (default: seed 0), so equal inputs give equal
    sound.
    """
    magnitude = images_to_magnitudes(images, config)
    if generator is None:
        generator = torch.Generator(device=magnitude.device).manual_seed(0)
    waves = griffin_lim(magnitude, config, generator=generator,
                        iters=config.griffin_lim_iters if iters is None else iters)
    return waves.clamp(-1.0, 1.0)


def griffin_lim(magnitude: Tensor, config: SpectrogramConfig, *, generator: torch.Generator,
                iters: int) -> Tensor:
    """Linear STFT magnitudes (N, F, T) -> waveforms (N, clip_samples) whose STFT magnitudes
    approach them, with the momentum of Perraudin et al. (2013)."""
    phase = torch.rand(magnitude.shape, generator=generator, device=magnitude.device)
    angles = torch.polar(torch.ones_like(magnitude), 2 * math.pi * phase)
    previous = torch.zeros_like(angles)
    alpha = config.momentum / (1.0 + config.momentum)
    for _ in range(iters):
        rebuilt = _stft(_istft(magnitude * angles, config), config)
        angles = rebuilt - alpha * previous
        angles = angles / angles.abs().clamp_min(1e-16)
        previous = rebuilt
    return _istft(magnitude * angles, config)


def with_phase_of(images: Tensor, waves: Tensor, config: SpectrogramConfig = DEFAULT) -> Tensor:
    """Waveforms with the images' magnitudes and the true phase of `waves` (N, clip_samples):
    what the image alone loses (mel bands, dB floor, 8-bit levels), the best any phase
    recovery could do. For measuring representations."""
    spectrum = _stft(waves.float(), config)
    phase = spectrum / spectrum.abs().clamp_min(1e-16)
    return _istft(images_to_magnitudes(images, config) * phase, config)


def spectral_convergence(reference: Tensor, estimate: Tensor, n_fft: int = 256,
                         hop: int = 64) -> Tensor:
    """|| |STFT(ref)| - |STFT(est)| ||_F / || |STFT(ref)| ||_F per clip, (N,): 0 is perfect.

    A fixed STFT (not the representation's own) so that representations compare fairly.
    """
    window = torch.hann_window(n_fft, device=reference.device)
    ref = torch.stft(reference, n_fft, hop, window=window, return_complex=True).abs()
    est = torch.stft(estimate, n_fft, hop, window=window, return_complex=True).abs()
    return (ref - est).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1).clamp_min(1e-12)


# --- datasets -------------------------------------------------------------------------------------

def clips_to_images(data: AudioData, config: SpectrogramConfig = DEFAULT,
                    batch: int = 500) -> ImageData:
    """An audio split as spectrogram images, labels and class names kept: what the image
    models and the audio feature net train on."""
    if data.sample_rate != config.sample_rate:
        raise UserError(f"{data.name} is at {data.sample_rate} Hz but the spectrogram expects "
                        f"{config.sample_rate} Hz; load it with sample_rate="
                        f"{config.sample_rate}")
    chunks = []
    for start in range(0, len(data.clips), batch):
        waves = clips_to_waveforms(data.clips[start:start + batch], config.clip_samples)
        if config.normalize:
            waves = normalize(waves, config)
        chunks.append(waveforms_to_images(waves, config))
    images = torch.cat(chunks)
    return ImageData(images=images, labels=data.labels, num_classes=data.num_classes,
                     name=data.name, split=data.split,
                     sha256=content_sha256(images, data.labels), class_names=data.class_names)


# --- helpers --------------------------------------------------------------------------------------

def _magnitudes(waves: Tensor, config: SpectrogramConfig) -> Tensor:
    """(N, clip_samples) -> the image's magnitudes before the dB scale, (N, size, size);
    1 is a full-scale sine."""
    magnitude = _stft(waves, config).abs() / _full_scale(config)  # (N, n_fft // 2 + 1, size)
    if config.mel:
        magnitude = _mel_filters(config, waves.device) @ magnitude  # (N, size, size)
    return magnitude


def _stft(waves: Tensor, config: SpectrogramConfig) -> Tensor:
    window = torch.hann_window(config.n_fft, device=waves.device)
    return torch.stft(waves, config.n_fft, config.hop, window=window, center=True,
                      return_complex=True)  # (N, n_fft // 2 + 1, size)


def _istft(spectrum: Tensor, config: SpectrogramConfig) -> Tensor:
    window = torch.hann_window(config.n_fft, device=spectrum.device)
    return torch.istft(spectrum, config.n_fft, config.hop, window=window, center=True,
                       length=config.clip_samples)


def _full_scale(config: SpectrogramConfig) -> float:
    """The STFT magnitude of a full-scale sine at a bin's centre: half the window's sum."""
    return float(torch.hann_window(config.n_fft).sum()) / 2.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)  # O'Shaughnessy's mel scale, as in HTK


def _mel_filters(config: SpectrogramConfig, device: torch.device | str = "cpu") -> Tensor:
    """(size, n_fft // 2 + 1) triangular filters, peak 1, centres evenly spaced in mel from
    0 Hz to the Nyquist frequency; each band spans at least one FFT bin, so none is empty."""
    return _mel_filters_cpu(config.sample_rate, config.n_fft, config.size).to(device)


@functools.lru_cache(maxsize=8)
def _mel_filters_cpu(sample_rate: int, n_fft: int, size: int) -> Tensor:
    bins = n_fft // 2 + 1
    freqs = np.linspace(0.0, sample_rate / 2, bins)
    top = _hz_to_mel(np.array(sample_rate / 2))
    centres_mel = np.linspace(0.0, float(top), size + 2)
    centres = 700.0 * (10.0 ** (centres_mel / 2595.0) - 1.0)
    spacing = freqs[1]
    filters = np.zeros((size, bins))
    for m in range(size):
        lo, mid, hi = centres[m], centres[m + 1], centres[m + 2]
        lo, hi = min(lo, mid - spacing), max(hi, mid + spacing)  # never narrower than a bin
        rise = (freqs - lo) / (mid - lo)
        fall = (hi - freqs) / (hi - mid)
        filters[m] = np.clip(np.minimum(rise, fall), 0.0, None)
    return torch.tensor(filters, dtype=torch.float32)


def _mel_pinv(config: SpectrogramConfig, device: torch.device | str = "cpu") -> Tensor:
    """(n_fft // 2 + 1, size): the least-squares inverse of the mel filterbank."""
    return _mel_pinv_cpu(config.sample_rate, config.n_fft, config.size).to(device)


@functools.lru_cache(maxsize=8)
def _mel_pinv_cpu(sample_rate: int, n_fft: int, size: int) -> Tensor:
    return torch.linalg.pinv(_mel_filters_cpu(sample_rate, n_fft, size).double()).float()
