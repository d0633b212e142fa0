"""WAV I/O (genlab.data.wav) and wav:DIR, on tiny files written here with the `wave` module."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.data import load_audio, load_images, read_wav, wav_bytes, write_wav
from genlab.data.wav import decode_wav, resample, to_pcm16
from genlab.errors import UserError


def raw_wav(path: Path, frames: bytes, *, channels: int = 1, width: int = 2,
            rate: int = 8000) -> Path:
    """A WAV file with exactly these PCM frame bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


def tone(n: int, rate: int = 8000, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(n) / rate
    return np.rint(amp * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


# --- writing and reading --------------------------------------------------------------------------

def test_round_trip_int16_is_exact(tmp_path):
    samples = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
    path = write_wav(tmp_path / "a.wav", samples, 8000)
    got, rate = read_wav(path)
    assert rate == 8000 and got.dtype == np.int16
    np.testing.assert_array_equal(got, samples)
    with wave.open(str(path)) as w:  # what other tools see: 16-bit PCM mono
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (
            1, 2, 8000, 6)
    assert list(tmp_path.iterdir()) == [path]  # atomic write leaves no temp file


def test_wav_bytes_equal_inputs_equal_bytes_and_floats_are_scaled():
    floats = torch.tensor([0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -3.0])
    data = wav_bytes(floats, 8000)
    assert data == wav_bytes(floats.clone(), 8000)
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    got, _ = decode_wav(data, "mem")
    assert got.tolist() == [0, 16384, -16384, 32767, -32767, 32767, -32767]  # clipped to [-1, 1]
    assert to_pcm16(np.array([0.25], dtype=np.float32)).tolist() == [8192]


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.array([1, 2]), np.array([np.nan])])
def test_wav_bytes_rejects_bad_samples(bad):
    with pytest.raises(ValueError):
        wav_bytes(bad, 8000)


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = tone(50), -tone(50) // 2
    frames = np.stack([left, right], axis=1).astype("<i2").tobytes()  # interleaved L R
    got, rate = read_wav(raw_wav(tmp_path / "s.wav", frames, channels=2))
    expected = np.rint((left.astype(float) + right) / 2).astype(np.int16)
    np.testing.assert_array_equal(got, expected)
    assert rate == 8000


def test_8_bit_and_24_bit_become_16_bit(tmp_path):
    u8 = np.array([0, 128, 255, 64], dtype=np.uint8)
    got, _ = read_wav(raw_wav(tmp_path / "u8.wav", u8.tobytes(), width=1))
    assert got.tolist() == [-32768, 0, 32512, -16384]
    values = np.array([0, 256, -256, 8388607, -8388608, 383], dtype=np.int64)  # 24-bit samples
    b24 = b"".join(int(v).to_bytes(3, "little", signed=True) for v in values)
    got, _ = read_wav(raw_wav(tmp_path / "s24.wav", b24, width=3))
    assert got.tolist() == [0, 1, -1, 32767, -32768, 1]  # top 16 bits, rounded (383/256 -> 1)
    b32 = b"".join(int(v << 8).to_bytes(4, "little", signed=True) for v in values)
    got32, _ = read_wav(raw_wav(tmp_path / "s32.wav", b32, width=4))
    assert got32.tolist() == got.tolist()


def test_another_rate_is_resampled_when_asked(tmp_path):
    path = raw_wav(tmp_path / "a.wav", tone(1600, rate=16000).astype("<i2").tobytes(),
                   rate=16000)
    native, rate = read_wav(path)
    assert rate == 16000 and len(native) == 1600
    got, rate = read_wav(path, sample_rate=8000)
    assert rate == 8000 and len(got) == 800 and got.dtype == np.int16
    # a 440 Hz tone stays a 440 Hz tone of the same amplitude
    np.testing.assert_allclose(got[100:700], tone(800)[100:700], atol=400)
    assert len(resample(tone(441, rate=44100), 44100, 8000)) == 80


def _float_wav(path: Path) -> None:
    """IEEE float WAV (format 3): a valid WAV that is not PCM."""
    data = np.zeros(4, dtype="<f4").tobytes()
    fmt = (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + (8000).to_bytes(4, "little")
    fmt += (32000).to_bytes(4, "little") + (4).to_bytes(2, "little") + (32).to_bytes(2, "little")
    body = b"WAVE" + b"fmt " + len(fmt).to_bytes(4, "little") + fmt
    body += b"data" + len(data).to_bytes(4, "little") + data
    path.write_bytes(b"RIFF" + len(body).to_bytes(4, "little") + body)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b"not a wav file at all"), "not a readable PCM WAV"),
        (lambda p: p.write_bytes(b""), "not a readable PCM WAV"),
        (lambda p: raw_wav(p, b""), "holds no samples"),
        (lambda p: p.write_bytes(raw_wav(p, tone(100).tobytes()).read_bytes()[:-50]),
         "truncated: 75 of 100 samples"),
        (_float_wav, "not a readable PCM WAV"),
    ],
)
def test_bad_files_are_user_errors_naming_the_file(tmp_path, make, message):
    path = tmp_path / "bad.wav"
    make(path)
    with pytest.raises(UserError, match=message) as err:
        read_wav(path)
    assert str(path) in str(err.value)


# --- wav:DIR --------------------------------------------------------------------------------------

def test_wav_dir_with_class_subfolders(tmp_path):
    write_wav(tmp_path / "yes" / "a.wav", tone(300), 8000)
    write_wav(tmp_path / "yes" / "deeper" / "b.wav", tone(200, freq=300), 8000)
    raw_wav(tmp_path / "no" / "c.wav", tone(1000, rate=16000).tobytes(), rate=16000)
    (tmp_path / "no" / "notes.txt").write_text("ignored")
    before = sorted(tmp_path.rglob("*"))
    data = load_audio(f"wav:{tmp_path}", split="test")
    assert data.class_names == ["no", "yes"] and data.num_classes == 2
    assert data.labels.tolist() == [0, 1, 1] and data.labels.dtype == torch.int64
    assert [len(c) for c in data.clips] == [500, 300, 200]  # the 16 kHz clip resampled
    assert all(c.dtype == torch.int16 for c in data.clips) and data.sample_rate == 8000
    assert data.clip_names == ["no/c.wav", "yes/a.wav", "yes/deeper/b.wav"]
    assert data.name == f"wav:{tmp_path.resolve()}" and data.split == "test"
    assert load_audio(f"wav:{tmp_path}").sha256 == data.sha256  # no split: the same clips
    assert sorted(tmp_path.rglob("*")) == before  # nothing written beside the user's files
    assert len(load_audio(f"wav:{tmp_path}", sample_rate=16000).clips[0]) == 1000


def test_wav_dir_unlabeled_and_errors(tmp_path):
    write_wav(tmp_path / "flat" / "a.wav", tone(10), 8000)
    data = load_audio(f"wav:{tmp_path / 'flat'}")
    assert data.labels is None and data.num_classes == 0 and len(data.clips) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no WAV files"):
        load_audio(f"wav:{tmp_path / 'empty'}")
    with pytest.raises(UserError, match="is not a directory"):
        load_audio(f"wav:{tmp_path / 'absent'}")
    write_wav(tmp_path / "flat" / "cls" / "b.wav", tone(10), 8000)
    with pytest.raises(UserError, match="both at the top level"):
        load_audio(f"wav:{tmp_path / 'flat'}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.wav").write_bytes(b"RIFF")
    with pytest.raises(UserError, match=r"x\.wav"):
        load_audio(f"wav:{tmp_path / 'broken'}")


def test_audio_and_image_specs_are_not_mixed_up(tmp_path):
    write_wav(tmp_path / "a.wav", tone(10), 8000)
    with pytest.raises(UserError, match="holds audio clips, not images"):
        load_images(f"wav:{tmp_path}")
    with pytest.raises(UserError, match="holds audio clips, not images"):
        load_images("fsdd")
    with pytest.raises(UserError, match="holds images, not audio clips"):
        load_audio("digits")
    with pytest.raises(UserError, match="sample_rate"):
        load_audio(f"wav:{tmp_path}", sample_rate=0)
