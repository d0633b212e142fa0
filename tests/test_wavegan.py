"""wavegan and the waveform modality on the tiny tones of `write_tiny_wavs` (4 classes, one
frequency each): clip length and range, phase shuffle, the modality chosen by the family, a
conditional model that learns the tones, the files `genlab sample` writes, the eval keys, exact
resume, serving at /v1/audio/generations, and one-line errors."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import genlab
from genlab.audio import DEFAULT
from genlab.checkpoint import read_state
from genlab.config import TrainConfig
from genlab.errors import UserError
from genlab.modalities import MODALITIES, modality_for_data
from genlab.modalities.audio import TINY_FREQS, AudioSamples, heard
from genlab.models import MODELS
from genlab.models.wavegan import PhaseShuffle, WaveGAN, WaveGANConfig
from genlab.rundir import load_model
from genlab.runs import TrainRequest, train
from helpers import wav_header

CLIP = DEFAULT.clip_samples  # 8001
TINY = ("train.log_every=1", "train.sample_every=2", "train.checkpoint_every=0",
        "model.d=2", "model.nz=8")


@pytest.fixture(scope="module")
def run(tmp_path_factory, wav_spec) -> Path:
    """A conditional wavegan, 4 steps on the tones, through the API."""
    out = tmp_path_factory.mktemp("runs") / "wavegan"
    return train(TrainRequest(model="wavegan", data=wav_spec, steps=4, batch_size=8,
                              out=str(out), device="cpu", conditional=True, overrides=TINY))


def dominant_hz(waves: torch.Tensor) -> torch.Tensor:
    """The frequency of the largest |rfft| bin of each clip `(N, L)`."""
    return torch.fft.rfft(waves.double()).abs().argmax(1).double() * 8000 / waves.shape[-1]


# --- the networks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("length", [CLIP, 1000, 4096])
def test_clips_have_the_configured_length_and_are_in_range(length: int) -> None:
    torch.manual_seed(0)
    model = WaveGAN(WaveGANConfig(length=length, num_classes=3, d=2, nz=8)).eval()
    x = model.sample(5, generator=torch.Generator().manual_seed(0), labels=torch.arange(5) % 3)
    assert x.shape == (5, 1, length) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0
    # the discriminator takes clips of that length and gives one logit each
    assert model.discriminator(x, torch.arange(5) % 3).shape == (5,)
    assert model.config.internal_length >= length and model.config.internal_length % 1024 == 0


def test_phase_shuffle_is_seeded_and_shape_preserving() -> None:
    x = torch.randn(8, 3, 40)
    shuffle = PhaseShuffle(2).train()
    a = shuffle(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape
    assert torch.equal(a, shuffle(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, shuffle(x, torch.Generator().manual_seed(2)))
    torch.manual_seed(5)  # without a generator: the global RNG, which runs seed and checkpoint
    b = shuffle(x)
    torch.manual_seed(5)
    assert torch.equal(b, shuffle(x))
    # every example is its input shifted by some k in [-2, 2], the edge filled by reflection
    padded = torch.nn.functional.pad(x, (2, 2), mode="reflect")
    shifts = [next(k for k in range(-2, 3) if torch.equal(a[i], padded[i, :, 2 - k:42 - k]))
              for i in range(8)]
    assert len(set(shifts)) > 1
    assert torch.equal(shuffle.eval()(x), x)  # not at evaluation
    assert torch.equal(PhaseShuffle(0).train()(x), x)


def test_config_errors_are_one_line() -> None:
    for bad, match in (({"d": 0}, "model.d"), ({"phase_shuffle": -1}, "phase_shuffle"),
                       ({"loss": "wgan-gp", "d_norm": "batch"}, "d_norm"),
                       ({"length": -5}, "model.length")):
        with pytest.raises(UserError, match=match) as e:
            WaveGANConfig(**{"length": CLIP, **bad}).validate()
        assert "\n" not in str(e.value)
    WaveGANConfig().validate(partial=True)  # the length comes from the data
    with pytest.raises(UserError, match="from the data"):
        WaveGANConfig().validate()


# --- the modality ---------------------------------------------------------------------------------

def test_the_family_chooses_the_modality(wav_spec) -> None:
    assert modality_for_data("fsdd", MODELS["wavegan"]).name == "waveform"
    assert modality_for_data(wav_spec, MODELS["wavegan"]).name == "waveform"
    assert modality_for_data("fsdd", MODELS["dcgan"]).name == "audio"  # unchanged
    assert modality_for_data(wav_spec, MODELS["convvae"]).name == "audio"
    with pytest.raises(UserError, match="wavegan trains on audio") as e:
        modality_for_data("digits", MODELS["wavegan"])
    assert "--data digits is images" in str(e.value)
    with pytest.raises(UserError, match=r"gpt trains on.*is audio"):
        modality_for_data("fsdd", MODELS["gpt"])
    assert MODALITIES["waveform"].feeds == WaveGAN.modality  # the contract battery's pair


def test_training_data_is_normalized_waveforms(wav_spec) -> None:
    modality = MODALITIES["waveform"]
    cls = MODELS["wavegan"]
    prepared = modality.prepare(wav_spec, None, cls, WaveGANConfig(d=2, nz=8),
                                TrainConfig(batch_size=8, seed=0),
                                conditional=True, device=torch.device("cpu"))
    batch = prepared.batcher.batch(0)
    assert batch["waves"].shape == (8, 1, CLIP) and batch["labels"].shape == (8,)
    assert batch["waves"].abs().max() <= 1.0
    assert prepared.model_config.length == CLIP and prepared.model_config.num_classes == 4
    # loudness as the spectrogram route's: the loudest bin of every clip at db_max (255)
    assert (heard(batch["waves"][:, 0]).flatten(1).amax(1) == 255).all()
    assert prepared.data_info["clips"] == 48 and prepared.data_info["sample_rate"] == 8000


def test_a_trained_conditional_wavegan_makes_each_class_s_tone(tmp_path, wav_spec) -> None:
    """500 steps on the tones (cut to their middle 2,048 samples for speed): the dominant
    frequency of most clips is their class's; an untrained generator's is not (its is the
    2 kHz of the stride-4 upsampling)."""
    out = train(TrainRequest(model="wavegan", data=wav_spec, steps=500, batch_size=16,
                             out=str(tmp_path / "tones"), device="cpu", conditional=True,
                             precision="fp32",  # the same on every CPU (auto: bf16 on some)
                             overrides=("train.log_every=100", "train.sample_every=0",
                                        "train.checkpoint_every=0", "model.d=8", "model.nz=16",
                                        "model.length=2048", "train.lr=5e-4")))
    trained = load_model(out)
    labels = torch.arange(64) % 4
    target = torch.tensor(TINY_FREQS, dtype=torch.float64)[labels]

    def hits(model: WaveGAN) -> float:
        x = model.sample(64, generator=torch.Generator().manual_seed(0), labels=labels)
        assert x.shape == (64, 1, 2048)
        return ((dominant_hz(x[:, 0]) - target).abs() < 50).double().mean().item()

    torch.manual_seed(0)
    untrained = WaveGAN(trained.config).eval()
    assert hits(trained) >= 0.75
    assert hits(untrained) <= 0.25
    # through the modality: padded back to the clip length around the centre
    clips = genlab.generate(out, n=4, label=[0, 1, 2, 3])
    assert clips.waves.shape == (4, CLIP)


# --- runs, files, eval ----------------------------------------------------------------------------

def test_cli_trains_and_writes_grids_and_wavs(tmp_path, wav_spec, run_cli) -> None:
    out = tmp_path / "run"
    code, _, err = run_cli("train", "wavegan", "--data", wav_spec, "--conditional", "--steps",
                           "2", "--batch-size", "8", "--device", "cpu", "--out", out,
                           *[a for kv in TINY for a in ("--set", kv)])
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["modality"] == "waveform" and record["model_config"]["length"] == CLIP
    assert record["model_config"]["num_classes"] == 4 and record["data_info"]["clips"] == 48
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for k in range(4):
        assert wav_header((out / f"samples_{k}.wav").read_bytes()) == (1, 2, 8000, CLIP)
        assert (out / "samples" / f"step_0000002_{k}.wav").is_file()


def test_sample_writes_8khz_mono_16bit_wavs_like_the_spectrogram_route(tmp_path, run,
                                                                       run_cli) -> None:
    code, _, err = run_cli("sample", run, "--label", "2", "--n", "1", "--out",
                           tmp_path / "two.wav")
    assert code == 0, err
    one = (tmp_path / "two.wav").read_bytes()
    assert wav_header(one) == (1, 2, 8000, CLIP)
    assert (tmp_path / "two.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli("sample", run, "--label", "3", "--n", "3", "--out",
                           tmp_path / "threes.wav")
    assert code == 0, err
    assert wav_header((tmp_path / "threes.wav").read_bytes()) == (1, 2, 8000, 3 * CLIP + 2 * 2000)
    code, _, err = run_cli("sample", run, "--n", "3", "--out", tmp_path / "x.zip")
    assert code == 0, err
    with zipfile.ZipFile(tmp_path / "x.zip") as z:
        assert z.namelist() == [f"sample_{i}_label{i}.wav" for i in range(3)] + \
            ["spectrograms.png"]
    code, _, err = run_cli("sample", run, "--n", "8", "--out", tmp_path / "x.npz")
    assert code == 0, err
    assert np.load(tmp_path / "x.npz")["images"].shape == (8, 64, 64)  # grey, as images
    # the WAV holds the generated waveform itself, 16-bit; seeded like every path
    samples = genlab.generate(run, n=1, label=2)
    assert isinstance(samples, AudioSamples) and samples.encode("wav") == one
    pcm = np.frombuffer(one[44:], dtype="<i2").astype(np.float64) / 32767
    model = load_model(run)
    direct = model.sample(1, generator=torch.Generator().manual_seed(0), labels=2)[0, 0]
    assert np.abs(pcm - direct.double().numpy()).max() < 1e-4
    assert genlab.generate(run, n=1, label=2, seed=5).encode("wav") != one


def test_eval_reports_the_spectrogram_route_s_keys(tmp_path, wav_spec, run, run_cli) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_audio_modality import tiny_feature_net

    net = tiny_feature_net(wav_spec, tmp_path / "tones.safetensors")
    code, out, err = run_cli("eval", run, "--n", "24", "--feature-net", net, "--json")
    assert code == 0, err
    report = json.loads(out)
    for key in ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
                "class_accuracy", "mode_entropy", "floor", "n", "seed", "feature_net", "real",
                "provenance", "notes", "sanity"):
        assert key in report
    assert report["provenance"]["modality"] == "waveform"
    assert set(report["sanity"]) == {"noise", "silence"}
    assert report["floor"]["fd"] < report["fd"]
    code, out, err = run_cli("eval", run, "--n", "24", "--feature-net", net)
    assert code == 0 and "sanity, noise" in out
    code, _, err = run_cli("eval", run, "--n", "8")  # a wav: run has no feature net of its own
    assert code == 2 and "--real fsdd" in err and err.count("\n") == 1


def test_resume_equals_uninterrupted(tmp_path, wav_spec) -> None:
    """Phase shuffle and the noise draw from the global RNG, which the checkpoint saves."""
    def request(out: Path, steps: int) -> TrainRequest:
        return TrainRequest(model="wavegan", data=wav_spec, steps=steps, batch_size=8,
                            out=str(out), device="cpu", conditional=True, overrides=TINY)

    full = train(request(tmp_path / "full", 6))
    part = train(request(tmp_path / "part", 3))
    assert read_state(part / "checkpoint")["step"] == 3
    train(TrainRequest(resume=str(part), steps=6, device="cpu"))
    for name in ("model.safetensors", "optimizers.safetensors"):
        assert (part / "checkpoint" / name).read_bytes() == \
            (full / "checkpoint" / name).read_bytes(), name


def test_served_at_the_audio_route(run) -> None:
    sys.path.insert(0, str(Path(__file__).parent / "serve"))
    import base64

    from serve_support import live_server

    with live_server([run]) as live:
        status, listing = live.json("GET", "/v1/models")
        assert status == 200
        (card,) = listing["data"]
        assert card["modality"] == "waveform" and card["endpoint"] == "/v1/audio/generations"
        status, body = live.json("POST", "/v1/audio/generations",
                                 {"model": run.name, "n": 2, "seed": 3, "label": [1, 2]})
        assert status == 200, body
        wavs = [base64.b64decode(d["b64_wav"]) for d in body["data"]]
        assert [wav_header(w) for w in wavs] == [(1, 2, 8000, CLIP)] * 2
        assert wavs == genlab.generate(run, n=2, seed=3, label=[1, 2]).wav_files()
        status, err = live.json("POST", "/v1/images/generations", {"model": run.name})
        assert status == 422 and "/v1/audio/generations" in err["error"]["message"]


def test_bad_input_is_one_line(tmp_path, run, run_cli) -> None:
    code, _, err = run_cli("sample", run, "--n", "2", "--out", tmp_path / "x.mp3")
    assert code == 2 and ".wav" in err and "Traceback" not in err
    code, _, err = run_cli("sample", run, "--label", "7", "--out", tmp_path / "x.wav")
    assert code == 2 and "label" in err and not (tmp_path / "x.wav").exists()
    code, _, err = run_cli("train", "wavegan", "--data", "digits", "--steps", "1", "--out",
                           tmp_path / "r1")
    assert code == 2 and "wavegan trains on audio" in err and err.count("\n") == 1
    code, _, err = run_cli("train", "wavegan", "--data", "fsdd", "--steps", "1", "--set",
                           "model.d=0", "--out", tmp_path / "r2")
    assert code == 2 and "model.d" in err and err.count("\n") == 1
    code, _, err = run_cli("train", "wavegan", "--data", "fsdd", "--steps", "1", "--set",
                           "train.grad_accum=2", "--out", tmp_path / "r3")
    assert code == 2 and "grad_accum" in err and err.count("\n") == 1
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2" / "checkpoint").exists()
