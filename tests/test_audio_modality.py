"""The audio modality end to end on a tiny fsdd-like WAV folder made here (tones of 4 pitches,
one subfolder per class): dcgan and convvae train on it through the CLI and the API unchanged,
samples are 8 kHz mono 16-bit WAV files, eval reports the image keys, bad input is one line."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

import pytest
import torch

import genlab
from genlab.audio import DEFAULT
from genlab.classifier import Plan, accuracy, fit_classifier
from genlab.errors import UserError
from genlab.featurenet import save_feature_net, subset
from genlab.modalities import MODALITIES, modality_for_data
from genlab.modalities.audio import (
    AudioSamples,
    heard,
    to_spectrograms,
    to_waveforms,
    write_tiny_wavs,
)
from genlab.models import MODELS
from genlab.rundir import load_model
from genlab.runs import TrainRequest, train
from helpers import wav_header

TINY = ("train.log_every=1", "train.sample_every=2", "train.checkpoint_every=0")
DCGAN = ("model.ngf=4", "model.ndf=4", "model.nz=8")
CONVVAE = ("model.nz=4", "model.width=4", "model.hidden=8", "model.pixel_features=4")
CLIP = DEFAULT.clip_samples  # 8001 samples: 1.0 s at 8 kHz


@pytest.fixture(scope="module")
def dcgan_run(tmp_path_factory, wav_spec) -> Path:
    """A conditional dcgan, 4 steps on the tones, through the API."""
    out = tmp_path_factory.mktemp("runs") / "dcgan"
    return train(TrainRequest(model="dcgan", data=wav_spec, steps=4, batch_size=8, out=str(out),
                              device="cpu", conditional=True, overrides=(*TINY, *DCGAN)))


def test_audio_data_goes_to_the_audio_modality(wav_spec):
    assert modality_for_data("fsdd", MODELS["dcgan"]).name == "audio"
    assert modality_for_data(wav_spec, MODELS["convvae"]).name == "audio"
    assert modality_for_data("digits", MODELS["dcgan"]) is not MODALITIES["audio"]
    with pytest.raises(UserError, match="gpt trains on"):
        modality_for_data("fsdd", MODELS["gpt"])


def test_cli_trains_dcgan_and_writes_grids_and_wavs(tmp_path, wav_spec, run_cli):
    out = tmp_path / "run"
    code, _, err = run_cli("train", "dcgan", "--data", wav_spec, "--conditional", "--steps", "2",
                           "--batch-size", "8", "--device", "cpu", "--out", out,
                           *[a for kv in (*TINY, *DCGAN) for a in ("--set", kv)])
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["modality"] == "audio" and record["model_config"]["image_size"] == 64
    assert record["data_info"]["clips"] == 48 and record["data_info"]["sample_rate"] == 8000
    assert (out / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "samples" / "step_0000002.png").is_file()
    for k in range(4):
        assert wav_header((out / f"samples_{k}.wav").read_bytes()) == (1, 2, 8000, CLIP)
        assert (out / "samples" / f"step_0000002_{k}.wav").is_file()


def test_sample_one_wav_several_wavs_and_a_zip(tmp_path, dcgan_run, run_cli):
    code, _, err = run_cli("sample", dcgan_run, "--label", "2", "--n", "1", "--out",
                           tmp_path / "two.wav")
    assert code == 0, err
    one = (tmp_path / "two.wav").read_bytes()
    assert wav_header(one) == (1, 2, 8000, CLIP) and CLIP / 8000 >= 0.5
    assert (tmp_path / "two.png").read_bytes()[:4] == b"\x89PNG"  # the spectrogram beside it

    code, _, err = run_cli("sample", dcgan_run, "--label", "3", "--n", "3", "--out",
                           tmp_path / "threes.wav")
    assert code == 0, err
    gap = int(0.25 * 8000)
    assert wav_header((tmp_path / "threes.wav").read_bytes()) == (1, 2, 8000, 3 * CLIP + 2 * gap)

    code, _, err = run_cli("sample", dcgan_run, "--label", "3", "--n", "3", "--out",
                           tmp_path / "threes.zip")
    assert code == 0, err
    with zipfile.ZipFile(tmp_path / "threes.zip") as z:
        names = z.namelist()
        assert names == [f"sample_{i}_label3.wav" for i in range(3)] + ["spectrograms.png"]
        assert all(wav_header(z.read(n)) == (1, 2, 8000, CLIP) for n in names[:3])
    # seeded: the same request gives the same bytes, another seed other sound
    again = genlab.generate(dcgan_run, n=1, label=2)
    assert again.encode("wav") == one
    assert genlab.generate(dcgan_run, n=1, label=2, seed=5).encode("wav") != one


def test_bad_requests_are_one_line_errors(tmp_path, dcgan_run, run_cli):
    code, _, err = run_cli("sample", dcgan_run, "--n", "2", "--out", tmp_path / "x.mp3")
    assert code == 2 and ".wav" in err and "Traceback" not in err
    code, _, err = run_cli("sample", dcgan_run, "--label", "7", "--out", tmp_path / "x.wav")
    assert code == 2 and "label" in err and not (tmp_path / "x.wav").exists()
    code, _, err = run_cli("sample", dcgan_run, "--n", "2")
    assert code == 2 and "--out is required" in err
    # a wav: run has no shipped feature net: said, with what to do
    code, _, err = run_cli("eval", dcgan_run, "--n", "8")
    assert code == 2 and "--real fsdd" in err and err.count("\n") == 1


def test_bad_wav_files_are_named(tmp_path, run_cli):
    data = write_tiny_wavs(tmp_path / "tones", per_class=3)
    (data / "1" / "broken.wav").write_bytes(b"RIFF....not a wav")
    code, _, err = run_cli("train", "dcgan", "--data", f"wav:{data}", "--steps", "1",
                           "--batch-size", "4", "--out", tmp_path / "run")
    assert code == 2 and "broken.wav" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_convvae_trains_at_a_size_it_takes_and_sounds_at_the_spectrograms(tmp_path, wav_spec):
    run = train(TrainRequest(model="convvae", data=wav_spec, steps=2, batch_size=8,
                             out=str(tmp_path / "vae"), device="cpu", conditional=True,
                             overrides=(*TINY, *CONVVAE)))
    model = load_model(run)
    assert model.config.image_size == 32  # convvae takes 28 or 32; 64 spectrograms are halved
    samples = genlab.generate(run, n=2, label=[0, 3])
    assert isinstance(samples, AudioSamples) and samples.images.shape == (2, 1, 64, 64)
    assert [wav_header(w) for w in samples.wav_files()] == [(1, 2, 8000, CLIP)] * 2


def tiny_feature_net(spec: str, path: Path) -> Path:
    """A feature net of the tones (trained and measured on the same folder: a test fixture,
    not a benchmark), saved like the shipped nets."""
    data = subset(spec, "train")
    net = fit_classifier(data.images, data.labels, seed=0,
                         plan=Plan(epochs=3, flips=False, batch_size=16))
    meta = {"format": 1, "name": spec, "config": dataclasses.asdict(net.config),
            "train_data": data.describe(), "test_data": data.describe(),
            "test_accuracy": accuracy(net, data.images, data.labels),
            "spectrogram": dataclasses.asdict(DEFAULT)}
    save_feature_net(net, path, meta)
    return path


def test_eval_reports_the_image_keys_floor_and_sanity_rows(tmp_path, wav_spec, dcgan_run,
                                                          run_cli):
    net = tiny_feature_net(wav_spec, tmp_path / "tones.safetensors")
    code, out, err = run_cli("eval", dcgan_run, "--n", "24", "--feature-net", net, "--json")
    assert code == 0, err
    report = json.loads(out)
    for key in ("fd", "kid_mean", "kid_std", "precision", "recall", "density", "coverage",
                "class_accuracy", "mode_entropy", "floor", "n", "seed", "feature_net", "real",
                "provenance", "notes"):
        assert key in report
    assert report["n"] == 24 and report["provenance"]["modality"] == "audio"
    assert 0.0 <= report["class_accuracy"] <= 1.0  # conditional run: scored
    assert report["floor"]["fd"] < report["fd"]  # 4 steps of training is far from real
    assert set(report["sanity"]) == {"noise", "silence"}
    assert report["sanity"]["silence"]["fd"] > report["floor"]["fd"]
    code, out, err = run_cli("eval", dcgan_run, "--n", "24", "--feature-net", net)
    assert code == 0 and "sanity, noise" in out and "fd" in out


def test_what_is_scored_is_the_sound():
    """A tone's spectrogram, heard back through Griffin-Lim, stays close to the original image."""
    t = torch.arange(CLIP) / 8000
    tone = 0.3 * torch.sin(2 * torch.pi * 440 * t)[None]
    image = heard(tone)
    again = heard(to_waveforms(to_spectrograms(image), seed=0))
    assert image.shape == again.shape == (1, 1, 64, 64)
    assert (image.float() - again.float()).abs().mean() < 12  # grey levels out of 255
    assert heard(torch.zeros(1, CLIP)).max() == 0  # silence is black
    with pytest.raises(UserError, match="one-channel"):
        to_spectrograms(torch.zeros(1, 3, 64, 64))


def test_audio_is_registered_for_the_contract_battery():
    assert MODALITIES["audio"].feeds == MODELS["dcgan"].modality


def test_eval_every_scores_the_sound_during_training(tmp_path, wav_spec, monkeypatch):
    """--eval-every with a feature net for the data (fsdd's in real runs; the tones' net here):
    fd and kid of generated clips in metrics.jsonl, and best/ kept by fd."""
    from genlab.featurenet import load_feature_net
    from genlab.modalities import audio

    net = tiny_feature_net(wav_spec, tmp_path / "tones.safetensors")
    monkeypatch.setattr(audio, "feature_net_for", lambda dataset: load_feature_net(net))
    run = train(TrainRequest(model="dcgan", data=wav_spec, steps=4, batch_size=8,
                             out=str(tmp_path / "run"), device="cpu", eval_every=2,
                             overrides=(*TINY, *DCGAN, "train.eval_n=16")))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in rows if "eval/fd" in r]
    assert [r["step"] for r in scored] == [2, 4]
    assert all(r["eval/fd"] > 0 and "eval/kid_mean" in r for r in scored)
    assert (run / "best").is_dir()
