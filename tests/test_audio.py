"""Clips <-> spectrogram images (genlab.audio) on synthetic tones; no dataset needed."""

from __future__ import annotations

import math

import pytest
import torch

from genlab import audio
from genlab.data import AudioData
from genlab.errors import UserError

CONFIG = audio.DEFAULT
RATE = CONFIG.sample_rate


def sine(freq: float, n: int = CONFIG.clip_samples, amp: float = 0.3) -> torch.Tensor:
    return amp * torch.sin(2 * math.pi * freq * torch.arange(n) / RATE)


def test_fix_length_centres_pads_and_cuts():
    clip = torch.arange(1, 6, dtype=torch.int16) * 4096  # 5 samples: 1/8 .. 5/8
    padded = audio.fix_length(clip, 8)
    assert padded.dtype == torch.float32 and padded.shape == (8,)
    assert padded.tolist() == [0.0, 0.125, 0.25, 0.375, 0.5, 0.625, 0.0, 0.0]  # left 1, right 2
    assert audio.fix_length(clip, 3).tolist() == [0.25, 0.375, 0.5]  # the middle three
    waves = audio.clips_to_waveforms([clip, clip[:2]], 4)
    assert waves.shape == (2, 4)
    with pytest.raises(UserError, match="no clips"):
        audio.clips_to_waveforms([], 4)


def test_images_shape_silence_and_orientation():
    assert CONFIG.clip_samples == 8001 and abs(CONFIG.seconds - 1.0) < 1e-3
    waves = torch.stack([torch.zeros(CONFIG.clip_samples), sine(200.0), sine(3000.0)])
    images = audio.waveforms_to_images(waves, CONFIG)
    assert images.shape == (3, 1, CONFIG.size, CONFIG.size) and images.dtype == torch.uint8
    assert (images[0] == 0).all()  # silence is black
    low_row = images[1, 0, :, 32].float().argmax()
    high_row = images[2, 0, :, 32].float().argmax()
    assert high_row < low_row  # high frequencies at the top, low at the bottom
    assert (images[1, 0, low_row] > 100).all()  # a steady tone is a bright line across time
    with pytest.raises(UserError, match=r"\(N, 8001\)"):
        audio.waveforms_to_images(torch.zeros(1, 100), CONFIG)


def test_normalize_puts_the_loudest_bin_at_db_max():
    quiet, loud = sine(500.0, amp=0.01), sine(500.0, amp=0.5)
    waves = audio.normalize(torch.stack([quiet, loud, torch.zeros_like(quiet)]), CONFIG)
    assert torch.allclose(waves[0], waves[1], atol=1e-4)  # loudness removed
    assert (waves[2] == 0).all()  # silence stays silent
    images = audio.waveforms_to_images(waves, CONFIG)
    assert images[0].max() == 255 and images[1].max() == 255 and images[2].max() == 0


def test_griffin_lim_round_trip_keeps_a_tone_and_is_seeded():
    waves = audio.normalize(torch.stack([sine(440.0), sine(1000.0) + sine(250.0)]), CONFIG)
    images = audio.waveforms_to_images(waves, CONFIG)
    a = audio.images_to_waveforms(images, CONFIG, iters=16)
    b = audio.images_to_waveforms(images, CONFIG, iters=16)
    c = audio.images_to_waveforms(images, CONFIG, iters=16,
                                  generator=torch.Generator().manual_seed(1))
    assert a.shape == (2, CONFIG.clip_samples) and a.dtype == torch.float32
    assert torch.isfinite(a).all() and a.abs().max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)
    spectrum = torch.fft.rfft(a[0]).abs()
    peak_hz = float(spectrum.argmax()) * RATE / CONFIG.clip_samples
    assert abs(peak_hz - 440.0) < 20.0  # the tone comes back at its pitch
    sc = audio.spectral_convergence(waves, a)
    assert sc.shape == (2,) and (sc < 0.5).all()
    assert audio.spectral_convergence(waves, waves).max() < 1e-6
    true = audio.with_phase_of(images, waves, CONFIG)
    assert (audio.spectral_convergence(waves, true) < sc).all()  # phase is what GL must guess


def test_float_images_in_unit_range_are_accepted():
    images = audio.waveforms_to_images(audio.normalize(sine(700.0)[None], CONFIG), CONFIG)
    as_float = images.float() / 255.0
    assert torch.allclose(audio.images_to_magnitudes(as_float, CONFIG),
                          audio.images_to_magnitudes(images, CONFIG))
    with pytest.raises(UserError, match=r"\(N, 1, 64, 64\)"):
        audio.images_to_magnitudes(torch.zeros(1, 1, 32, 32), CONFIG)


def test_clips_to_images_keeps_labels():
    clips = [(sine(f, n) * 32767).to(torch.int16) for f, n in ((300.0, 4000), (900.0, 9000))]
    labels = torch.tensor([3, 7])
    data = AudioData(clips=clips, sample_rate=RATE, labels=labels, num_classes=10, name="x",
                     split="test", sha256="", class_names=[str(i) for i in range(10)])
    images = audio.clips_to_images(data, CONFIG)
    assert images.images.shape == (2, 1, 64, 64) and images.labels is labels
    assert images.name == "x" and images.split == "test" and images.num_classes == 10
    assert images.sha256 == audio.clips_to_images(data, CONFIG).sha256  # deterministic
    data.sample_rate = 16000
    with pytest.raises(UserError, match="sample_rate=8000"):
        audio.clips_to_images(data, CONFIG)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"hop": 600, "n_fft": 512}, "hop 600 > n_fft 512"),
        ({"mel": False, "n_fft": 512}, "needs n_fft = 126"),
        ({"db_range": 0.0}, "db_range"),
        ({"size": 1}, "positive"),
    ],
)
def test_bad_configs_are_refused(kw, message):
    with pytest.raises(UserError, match=message):
        audio.waveforms_to_images(torch.zeros(1, 8001), audio.SpectrogramConfig(**kw))


def test_linear_spectrogram_round_trip():
    config = audio.SpectrogramConfig(size=64, n_fft=126, hop=63, mel=False)
    waves = audio.normalize(sine(440.0, config.clip_samples)[None], config)
    images = audio.waveforms_to_images(waves, config)
    assert images.shape == (1, 1, 64, 64)
    rebuilt = audio.images_to_waveforms(images, config, iters=16)
    assert rebuilt.shape == (1, config.clip_samples)
    assert float(audio.spectral_convergence(waves, rebuilt)) < 0.5
