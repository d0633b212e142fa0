"""Tests for feature nets, `genlab eval` and in-training evaluation.

The shipped digits net and the bundled digits data keep these fast; feature-net training runs on
the tiny IDX dataset of conftest.py.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genlab
from genlab import featurenet
from genlab.data import load_images
from genlab.errors import UserError
from genlab.evaluation import IMAGE_KEYS

REPORT_KEYS = {*IMAGE_KEYS, "floor", "n", "seed", "feature_net", "provenance"}
DIGITS_TEST = 297


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory, train_tiny) -> Path:
    """A tiny DCGAN trained 2 steps on digits (so the shipped digits net applies). Read-only."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "digits", data="digits", steps=2)


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory) -> Path:
    """100 real digits training images, saved as a user's `images` array (N, H, W)."""
    images = load_images("digits", "train").images[:100, 0].numpy()
    path = tmp_path_factory.mktemp("fake") / "real.npz"
    np.savez(path, images=images)
    return path


def _json(out: str) -> dict:
    report = json.loads(out)  # fails on anything but exactly one JSON document
    assert isinstance(report, dict)
    return report


# --- feature nets -------------------------------------------------------------------------------

def test_shipped_nets_load_with_their_pinned_hash():
    for name in ("digits", "fashion-mnist", "mnist"):
        net = featurenet.load_feature_net(name)
        assert net.sha256 == featurenet.PINNED_SHA256[name]
        assert net.meta["name"] == name
        assert 0.9 < net.meta["test_accuracy"] <= 1.0
        assert not featurenet.overlaps(net.meta["train_data"], net.meta["test_data"])


def test_flipped_byte_in_shipped_net_is_refused(tmp_path, monkeypatch):
    shutil.copy(featurenet.WEIGHTS_DIR / "digits.safetensors", tmp_path / "digits.safetensors")
    monkeypatch.setattr(featurenet, "WEIGHTS_DIR", tmp_path)
    featurenet.load_feature_net("digits")  # the intact copy loads
    path = tmp_path / "digits.safetensors"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt or replaced"):
        featurenet.load_feature_net("digits")


def test_feature_net_rejects_wrong_image_shape():
    net = featurenet.load_feature_net("digits")
    with pytest.raises(UserError, match=r"\(N, 1, 32, 32\)"):
        net.embed(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    with pytest.raises(UserError, match="uint8"):
        net.embed(torch.zeros(2, 1, 32, 32))


def test_featurenet_train_same_seed_same_file(tmp_path, idx_spec, run_cli):
    outs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, out, err = run_cli("featurenet", "train", idx_spec, "--epochs", "1", "--seed",
                                 str(seed), "--out", tmp_path / f"{name}.safetensors")
        assert code == 0, err
        outs[name] = Path(out.strip()).read_bytes()
    assert outs["a"] == outs["b"]
    assert outs["a"] != outs["c"]
    net = featurenet.load_feature_net(tmp_path / "a.safetensors")
    assert net.meta["train_data"]["split"] == "train"
    assert net.meta["test_data"]["split"] == "test"
    assert net.meta["recipe"]["seed"] == 3


def test_mnist_without_train_split_trains_on_first_8k_of_test(monkeypatch):
    def fake_subset(dataset, split, start=0, stop=None, **kw):
        if split == "train":
            raise UserError("missing")
        stop = 10000 if stop is None else stop
        return featurenet.Subset(dataset, split, start, stop, torch.zeros(0), None, "x")

    monkeypatch.setattr(featurenet, "subset", fake_subset)
    train, test = featurenet.training_data("mnist", None, lambda _: None)
    assert (train.split, train.start, train.stop) == ("test", 0, 8000)
    assert (test.split, test.start, test.stop) == ("test", 8000, 10000)


def test_augment_shifts_and_flips_keep_pixels():
    images = torch.arange(2 * 5 * 5, dtype=torch.uint8).reshape(2, 1, 5, 5)
    g = torch.Generator().manual_seed(0)
    same = featurenet.augment(images, g, shift=0, flips=False)
    assert torch.equal(same, images)
    moved = featurenet.augment(images, g, shift=1, flips=True)
    assert moved.shape == images.shape
    # every output row is a (possibly flipped) shifted row of the input, padded with zeros
    assert set(moved.unique().tolist()) <= set(images.unique().tolist()) | {0}


# --- genlab eval RUN ------------------------------------------------------------------------------

def test_eval_run_json_has_every_key_and_matches_eval_json(digits_run, tmp_path, run_cli):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    code, out, err = run_cli("eval", run, "--n", "60", "--seed", "1", "--json")
    assert code == 0, err
    report = _json(out)
    assert set(report) >= REPORT_KEYS
    assert report["n"] == 60 and report["seed"] == 1
    assert report["class_accuracy"] is None  # unconditional run
    assert set(IMAGE_KEYS) <= set(report["floor"])
    assert report["floor"]["n"] == 60 and report["floor"]["source"].startswith("digits:train")
    net = report["feature_net"]
    assert net["name"] == "digits" and net["sha256"] == featurenet.PINNED_SHA256["digits"]
    assert 0.95 <= net["test_accuracy"] <= 1.0
    assert report["provenance"]["step"] == 2 and report["provenance"]["genlab"]
    assert report["real"]["split"] == "test"
    # an untrained generator is far from real digits; real training digits are close
    assert report["fd"] > 3 * report["floor"]["fd"]
    assert json.loads((run / "eval.json").read_text()) == report
    # same seed, same numbers
    code, out2, _ = run_cli("eval", run, "--n", "60", "--seed", "1", "--json")
    assert _json(out2)["fd"] == report["fd"]


def test_eval_run_table_and_n_capped_at_reference(digits_run, tmp_path, run_cli):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    code, out, err = run_cli("eval", run, "--n", "100000")
    assert code == 0, err
    assert "capped at 297" in err
    assert "fd" in out and "floor" in out and "FD is not FID" in out
    report = json.loads((run / "eval.json").read_text())
    assert report["n"] == DIGITS_TEST and report["n_requested"] == 100000


def test_eval_json_is_written_atomically(digits_run, tmp_path, run_cli, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    (run / "eval.json").write_text('{"old": 1}\n')

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        genlab.evaluate(run, n=20)
    assert (run / "eval.json").read_text() == '{"old": 1}\n'
    assert sorted(p.name for p in run.iterdir() if "eval" in p.name) == ["eval.json"]


def test_eval_conditional_run_scores_class_accuracy(tmp_path, train_tiny, run_cli):
    run = train_tiny(tmp_path / "cond", data="digits", steps=2, conditional=True)
    code, out, err = run_cli("eval", run, "--n", "40", "--json")
    assert code == 0, err
    report = _json(out)
    assert 0.0 <= report["class_accuracy"] <= 1.0
    assert report["floor"]["class_accuracy"] >= 0.9  # real images of the requested class


def test_eval_run_without_feature_net_says_what_works(tiny_run, tmp_path, run_cli):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    code, out, err = run_cli("eval", run, "--json")
    assert code == 2 and out == "" and "no feature net for idx:" in err
    assert "--real fashion-mnist" in err and "--feature-net" in err
    assert not (run / "eval.json").exists()


# --- genlab eval --fake ---------------------------------------------------------------------------

def test_eval_fake_npz_real_images_beat_noise(digits_npz, tmp_path, run_cli):
    code, out, err = run_cli("eval", "--fake", digits_npz, "--real", "digits", "--json")
    assert code == 0, err
    real_as_fake = _json(out)
    assert set(real_as_fake) >= REPORT_KEYS
    assert real_as_fake["n"] == 100  # capped at the 100 fakes
    noise = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 1), dtype=np.uint8)
    np.savez(tmp_path / "noise.npz", images=noise)
    code, out, err = run_cli("eval", "--fake", tmp_path / "noise.npz", "--real", "digits",
                             "--json")
    assert code == 0, err
    noise_report = _json(out)
    assert noise_report["fd"] > 10 * real_as_fake["fd"]
    assert noise_report["precision"] < real_as_fake["precision"]
    assert real_as_fake["precision"] > 0.5


def test_eval_fake_png_folder(tmp_path, run_cli):
    images = load_images("digits", "test").images[:12, 0].numpy()
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    code, out, err = run_cli("eval", "--fake", folder, "--real", "digits:train", "--n", "50")
    assert code == 0, err
    assert "n=12" in out  # all 12 fakes used
    assert "overlaps the images the feature net digits was trained on" in err


def test_eval_fake_labels_give_class_accuracy(tmp_path, run_cli):
    data = load_images("digits", "train")
    np.savez(tmp_path / "l.npz", images=data.images[:50, 0].numpy(),
             labels=data.labels[:50].numpy())
    code, out, err = run_cli("eval", "--fake", tmp_path / "l.npz", "--real", "digits", "--json")
    assert code == 0, err
    assert _json(out)["class_accuracy"] >= 0.9


@pytest.mark.parametrize("arrays, message", [
    ({"images": np.zeros((10, 32, 32), dtype=np.float32)}, "must be uint8"),
    ({"pixels": np.zeros((10, 32, 32), dtype=np.uint8)}, "no `images` array"),
    ({"images": np.zeros((10, 28, 28), dtype=np.uint8)}, "(N, 1, 32, 32)"),
    ({"images": np.zeros((10, 32, 32, 3), dtype=np.uint8)}, "(N, 1, 32, 32)"),
])
def test_eval_fake_bad_inputs_exit_2(tmp_path, run_cli, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    code, out, err = run_cli("eval", "--fake", tmp_path / "bad.npz", "--real", "digits")
    assert code == 2 and out == ""
    assert err.startswith("genlab: error:") and len(err.strip().splitlines()) == 1
    assert any(m in err for m in message.split("|"))


def test_eval_argument_errors(tmp_path, digits_npz, run_cli):
    code, _, err = run_cli("eval", "--fake", digits_npz, "--real", "cifar10")
    assert code == 2 and "no feature net for 'cifar10'" in err
    code, _, err = run_cli("eval", "--fake", digits_npz)
    assert code == 2 and "--real" in err
    code, _, err = run_cli("eval")
    assert code == 2 and "RUN_DIR" in err
    code, _, err = run_cli("eval", "--fake", digits_npz, "--real", "mnist", "--feature-net",
                           "digits")
    assert code == 2 and "is for digits" in err
    code, _, err = run_cli("eval", "--fake", digits_npz, "--real", "digits:val")
    assert code == 2 and "unknown split 'val' in 'digits:val'; use digits:train or digits:test" in err


def test_reference_features_are_cached_under_data_root(digits_npz, run_cli, tmp_path,
                                                       monkeypatch):
    from safetensors.torch import load_file

    from genlab.data import data_root

    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "cache"))  # empty: count what is computed

    code, _, err = run_cli("eval", "--fake", digits_npz, "--real", "digits")
    assert code == 0, err
    cached = sorted(p.name for p in (data_root() / "features").iterdir())
    assert any(name.startswith("digits-test-0-297-") for name in cached)
    train_cache = next(p for p in (data_root() / "features").iterdir()
                       if p.name.startswith("digits-train-0-1500-"))
    # only the 100 floor images drawn from the 1500 were embedded
    assert int(load_file(train_cache)["done"].sum()) == 100
    assert not list(digits_npz.parent.glob("*.safetensors"))  # nothing beside user files


# --- during training ------------------------------------------------------------------------------

def test_eval_every_logs_fd_and_keeps_best(tmp_path, train_tiny):
    run = train_tiny(tmp_path / "ev", data="digits", steps=4, eval_every=2,
                     overrides=("train.eval_n=64",))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/fd" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert all(r["eval/fd"] > 0 and "eval/kid_mean" in r for r in evals)
    assert (run / "best" / "manifest.json").is_file()
    best = json.loads((run / "best" / "state.json").read_text())
    assert best["best_value"] == min(r["eval/fd"] for r in evals)


def test_eval_every_without_feature_net_trains_without_eval(tmp_path, train_tiny):
    run = train_tiny(tmp_path / "ev", steps=2, eval_every=1)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("eval/fd" in r for r in rows)


# --- VAEs: the likelihood joins the report ---------------------------------------------------------

@pytest.mark.parametrize("data", ["digits", "idx"])
def test_eval_vae_run_merges_likelihood(tmp_path, train_tiny, run_cli, idx_spec, data):
    run = train_tiny(tmp_path / "vae", model="vae", steps=2,
                     data=idx_spec if data == "idx" else data)
    code, out, err = run_cli("eval", run, "--n", "12", "--iwae-k", "4", "--json")
    assert code == 0, err
    report = _json(out)
    assert report["iwae_k"] == 4 and report["n_test"] == 12
    assert report["iwae_nll_nats"] <= report["neg_elbo_nats"]
    if data == "digits":
        assert report["fd"] is not None and report["feature_net"]["name"] == "digits"
    else:  # no feature net for the user's own data: only the likelihood
        assert report["fd"] is None and "no feature net" in err


def test_eval_every_vae_without_feature_net_tracks_val_neg_elbo(tmp_path, train_tiny):
    run = train_tiny(tmp_path / "vae", model="vae", steps=2, eval_every=1,
                     overrides=("train.eval_n=8",))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    values = [r["eval/val_neg_elbo"] for r in rows if "eval/val_neg_elbo" in r]
    assert len(values) == 2 and all(v > 0 for v in values)
    best = json.loads((run / "best" / "state.json").read_text())
    assert best["best_value"] == min(values)


def test_fewer_samples_than_feature_dimensions_are_marked(digits_run, tmp_path, run_cli):
    run = tmp_path / "run"
    shutil.copytree(digits_run, run)
    code, out, err = run_cli("eval", run, "--n", "20", "--json")
    assert code == 0, err
    report = _json(out)
    assert report["small_sample"] is True and "warning: only 20 images per side" in err
    assert any("unreliable" in note for note in report["notes"])
    code, out, err = run_cli("eval", run, "--n", "200", "--json")
    assert code == 0 and _json(out)["small_sample"] is False and "unreliable" not in err
