"""genlab utility and train.per_class on tiny data: a 4-class 16x16 set hard enough that accuracy
grows with the number of real images (about 58% at 4 per class, 79% at 40), and a small classifier
plan, so each test trains a few dozen tiny classifiers in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.apps.utility import (
    UtilityRequest,
    copy_fraction,
    parse_arms,
    run_utility,
    t975,
    t_interval,
)
from genlab.classifier import Plan
from genlab.data import load_images, write_idx
from genlab.data.subset import per_class_indices, subset_sha256
from genlab.errors import UserError

SIDE, K = 16, 4
PLAN = Plan(epochs=1, flips=False, batch_size=32, shift=1)
STEPS = 60


def _hard_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class = one of 4 fixed smooth patterns, faint under strong pixel noise."""
    rng = np.random.default_rng(1234)  # the same patterns for every split
    patterns = rng.normal(0, 1, (K, SIDE + 4, SIDE + 4))
    kernel = np.ones(5) / 5  # a box blur makes them smooth
    patterns = np.apply_along_axis(np.convolve, 1, patterns, kernel, "valid")
    patterns = np.apply_along_axis(np.convolve, 2, patterns, kernel, "valid")
    patterns /= patterns.std(axis=(1, 2), keepdims=True)
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % K
    images = 128 + 20 * patterns[labels] + rng.normal(0, 110, (n, SIDE, SIDE))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="module")
def hard_spec(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("hard")
    for n, seed, (images_name, labels_name) in (
            (400, 1, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
            (400, 99, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))):
        images, labels = _hard_images(n, seed)
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels)
    return f"idx:{folder}"


def _npz(path: Path, images: np.ndarray, labels: np.ndarray | None = None) -> str:
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(path, **arrays)
    return str(path)


def _run(spec: str, fake: str, per_class: int, arms: tuple[str, ...], seeds: int = 5
         ) -> dict:
    return run_utility(UtilityRequest(fake=fake, data=spec, real_per_class=per_class,
                                      seeds=seeds, arms=arms, steps=STEPS, plan=PLAN))


# --- statistics and parts -------------------------------------------------------------------------

def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 4, 9, 30, 31, 60, 200):
        assert t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=2e-4)
    lo, hi = t_interval([0.5, 0.6, 0.7])
    assert (lo + hi) / 2 == pytest.approx(0.6)
    assert hi - 0.6 == pytest.approx(stats.t.ppf(0.975, 2) * 0.1 / 3**0.5, abs=1e-3)
    assert t_interval([0.5]) == [None, None]


def test_arm_names_are_checked():
    assert parse_arms(["S", "R+S:k=9"]) == ("R", "S", "R+S:k=9")
    for bad in ("R+S:k=0", "T", "R+S:k=x"):
        with pytest.raises(UserError):
            parse_arms([bad])


def test_copy_fraction_finds_copies_only():
    real = torch.randint(0, 256, (50, 1, 16, 16), dtype=torch.uint8)
    other = torch.randint(0, 256, (50, 1, 16, 16), dtype=torch.uint8)
    assert copy_fraction(real[:20], real) == 1.0
    assert copy_fraction(other, real) == 0.0


# --- train.per_class ------------------------------------------------------------------------------

def test_per_class_subset_is_seeded_balanced_and_recorded(tmp_path, train_tiny, idx_spec):
    data = load_images(idx_spec, "train")
    a = per_class_indices(data.labels, 8, 0)
    assert torch.equal(a, per_class_indices(data.labels, 8, 0))
    assert not torch.equal(a, per_class_indices(data.labels, 8, 1))
    assert torch.bincount(data.labels[a]).tolist() == [8] * 4
    run = train_tiny(tmp_path / "sub", steps=2, conditional=True,
                     overrides=("train.per_class=8",))
    info = json.loads((run / "run.json").read_text())["data_info"]
    assert info["n"] == 32 and info["subset"]["per_class"] == 8
    assert info["subset"]["sha256"] == subset_sha256(a, data.sha256, "train")
    assert info["sha256"] == data.sha256  # the whole split's, as the resume check expects
    from genlab.runs import TrainRequest, train

    train(TrainRequest(resume=str(run), steps=3, device="cpu"))  # the same subset on resume
    assert json.loads((run / "run.json").read_text())["data_info"]["subset"] == info["subset"]


def test_per_class_bad_values_exit_2(tmp_path, run_cli, idx_spec):
    code, _, err = run_cli("train", "dcgan", "--data", idx_spec, "--steps", "1", "--out",
                           tmp_path / "a", "--set", "train.per_class=-1")
    assert code == 2 and "train.per_class" in err
    code, _, err = run_cli("train", "dcgan", "--data", idx_spec, "--steps", "1", "--out",
                           tmp_path / "b", "--set", "train.per_class=999")
    assert code == 2 and "class 0 has only 16" in err
    assert not (tmp_path / "b").exists()


# --- the protocol on known answers ----------------------------------------------------------------

def test_heldout_real_as_synthetic_falls_within_R(tmp_path, hard_spec):
    images, labels = _hard_images(400, 7)  # the same distribution, not the training split
    report = _run(hard_spec, _npz(tmp_path / "real.npz", images, labels), 40, ("S",))
    lo, hi = report["arms"]["R"]["ci95"]
    s = report["arms"]["S"]["accuracy"]
    assert report["arms"]["R"]["accuracy"] > 0.6
    assert lo <= s <= hi, (s, lo, hi)
    assert not report["paired_vs_R"]["S"]["helps"]


def test_noise_and_shuffled_labels_score_near_chance(tmp_path, hard_spec):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (160, SIDE, SIDE), dtype=np.uint8)
    report = _run(hard_spec, _npz(tmp_path / "noise.npz", noise, np.arange(160) % K), 40,
                  ("S",), seeds=2)
    assert report["arms"]["S"]["accuracy"] < 0.4  # chance is 0.25
    images, labels = _hard_images(400, 7)
    shuffled = _npz(tmp_path / "shuffled.npz", images, rng.permutation(labels))
    report = _run(hard_spec, shuffled, 40, ("S",), seeds=2)
    assert report["arms"]["S"]["accuracy"] < 0.4
    assert report["arms"]["R"]["accuracy"] > 0.6


def test_copies_of_R_score_high_and_point_to_audit(tmp_path, hard_spec):
    real = load_images(hard_spec, "train")
    idx = per_class_indices(real.labels, 40, 0)
    copies = _npz(tmp_path / "copies.npz", real.images[idx, 0].numpy(),
                  real.labels[idx].numpy())
    report = _run(hard_spec, copies, 40, ("S",), seeds=2)
    assert report["arms"]["S"]["accuracy"] > 0.6
    assert report["copies_of_R"] == 1.0
    assert any("genlab audit" in note for note in report["notes"])


def test_paired_interval_excludes_0_for_more_real_data_only(tmp_path, hard_spec):
    images, labels = _hard_images(400, 7)  # 9 x R of held-out real images: 10x the real data
    report = _run(hard_spec, _npz(tmp_path / "real.npz", images, labels), 4,
                  ("R+S:k=9", "R-duplicated"))
    better = report["paired_vs_R"]["R+S:k=9"]
    assert better["ci95"][0] > 0 and better["helps"], better
    duplicated = report["paired_vs_R"]["R-duplicated"]
    assert duplicated["ci95"][0] <= 0 <= duplicated["ci95"][1], duplicated
    assert not duplicated["helps"]
    assert report["leakage"]["status"] == "not checked"


# --- the command ----------------------------------------------------------------------------------

def test_fake_without_labels_exits_2(tmp_path, run_cli, idx_spec):
    fake = _npz(tmp_path / "x.npz", np.zeros((8, 28, 28), np.uint8))
    code, out, err = run_cli("utility", "--fake", fake, "--data", idx_spec, "--fast")
    assert code == 2 and "labels" in err and "Traceback" not in err and out == ""


def test_leakage_mismatch_exits_2_unless_allowed(tmp_path, run_cli, tiny_conditional_run):
    # the generator saw all 64 training images; R is 8 per class
    args = ("utility", tiny_conditional_run, "--real-per-class", "8", "--arms", "S",
            "--seeds", "1", "--steps", "2", "--out", tmp_path)
    code, _, err = run_cli(*args)
    assert code == 2 and "leakage check" in err and "--allow-leak" in err
    assert not (tmp_path / "utility.json").exists()
    code, out, _ = run_cli(*args, "--allow-leak", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["leakage"]["status"] == "mismatch (allowed by --allow-leak)"
    assert any(note.startswith("LEAK") for note in report["notes"])


def test_json_is_one_object_with_the_keys(tmp_path, run_cli, train_tiny):
    run = train_tiny(tmp_path / "cdcgan", steps=2, conditional=True,
                     overrides=("train.per_class=8",))
    code, out, _ = run_cli("utility", run, "--fast", "--steps", "2", "--json")
    assert code == 0
    report = json.loads(out)  # exactly one object: anything else on stdout fails to parse
    for key in ("arms", "paired_vs_R", "real_per_class", "seeds", "test_error", "provenance"):
        assert key in report
    assert set(report["arms"]) == {"R", "S", "R+S:k=1"}
    for arm in report["arms"].values():
        assert set(arm) >= {"accuracy", "ci95", "per_seed"} and 0 <= arm["accuracy"] <= 1
    assert set(report["paired_vs_R"]["S"]) >= {"delta", "ci95", "helps"}
    assert report["real_per_class"] == 8 and report["seeds"] == 1
    assert report["leakage"]["status"] == "ok"
    prov = report["provenance"]
    assert len(prov["generator"]["checkpoint_sha256"]) == 64
    assert len(prov["subset_sha256"]) == 64 and len(prov["recipe_sha256"]) == 64
    assert prov["genlab"] and prov["seeds"]["classifier"]
    assert json.loads((run / "utility.json").read_text()) == report
    assert "| R |" in (run / "utility.md").read_text()


def test_generator_seeds_pair_each_classifier_seed_with_a_run(tmp_path, run_cli, train_tiny):
    runs = [train_tiny(tmp_path / f"g{seed}", steps=2, conditional=True, seed=seed,
                       overrides=("train.per_class=8",)) for seed in (0, 1)]
    code, out, err = run_cli("utility", runs[0], "--generator-seeds", runs[1], "--arms", "S",
                             "--seeds", "2", "--steps", "2", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["leakage"]["status"] == "ok"
    gens = report["provenance"]["generators"]
    assert [g["run"] for g in gens] == [str(r) for r in runs]
    assert gens[0]["subset_sha256"] != gens[1]["subset_sha256"]  # each its own seed's subset
    assert report["provenance"]["seeds"]["subset"] == [0, 1]
    code, _, err = run_cli("utility", runs[0], "--generator-seeds", runs[1], "--seeds", "1")
    assert code == 2 and "--seeds 2" in err


def test_unconditional_generator_and_bad_flags_exit_2(run_cli, tiny_run):
    code, _, err = run_cli("utility", tiny_run, "--fast", "--steps", "2")
    assert code == 2 and "conditional" in err
    code, _, err = run_cli("utility", tiny_run, "--arms", "R,Q")
    assert code == 2 and "unknown arm 'Q'" in err
    code, _, err = run_cli("utility", tiny_run, "--real-per-class", "x")
    assert code == 2 and "--real-per-class" in err
    code, _, err = run_cli("utility")
    assert code == 2 and "--fake" in err


def test_fake_reads_channels_first_and_channels_last_alike(tmp_path):
    from types import SimpleNamespace

    from genlab.apps.utility import load_fake

    real = SimpleNamespace(images=torch.zeros(2, 3, 8, 6, dtype=torch.uint8), num_classes=10)
    nchw = np.random.default_rng(0).integers(0, 256, (5, 3, 8, 6), dtype=np.uint8)
    labels = np.arange(5)
    first = load_fake(_npz(tmp_path / "first.npz", nchw, labels), real)[0]
    # colour as `genlab sample` saves it: N x H x W x C
    last = load_fake(_npz(tmp_path / "last.npz", nchw.transpose(0, 2, 3, 1), labels), real)[0]
    assert torch.equal(first, torch.from_numpy(nchw)) and torch.equal(last, first)
    with pytest.raises(UserError, match="same size"):
        load_fake(_npz(tmp_path / "small.npz", nchw[:, :, :4], labels), real)


def test_diffusion_sampling_options_reach_the_generator(tmp_path, run_cli, train_tiny):
    from genlab.apps.utility import generator_source
    from genlab.rundir import load_model
    from helpers import TINY

    run = train_tiny(tmp_path / "cdiff", "diffusion", steps=2, conditional=True,
                     overrides=(*TINY, "train.per_class=8"))
    real = load_images(json.loads((run / "run.json").read_text())["data"], "train")
    model = load_model(run, device="cpu")
    off, on = ({"sample_steps": 3, "guidance": w} for w in (0.0, 4.0))
    images = {w: generator_source(model, real, o)(8, 1)[0] for w, o in ((0, off), (4, on))}
    plain = generator_source(model, real, {"sample_steps": 3})(8, 1)[0]
    assert torch.equal(images[0], plain) and not torch.equal(images[4], plain)
    code, out, err = run_cli("utility", run, "--arms", "S", "--seeds", "1", "--steps", "2",
                             "--sample-steps", "3", "--guidance", "4", "--sampler", "heun",
                             "--precision", "bf16", "--json")
    assert code == 0, err
    sampling = json.loads(out)["provenance"]["generator"]["sampling"]
    assert sampling == {"sampler": "heun", "sample_steps": 3, "guidance": 4.0, "precision": "bf16"}
    code, _, err = run_cli("utility", run, "--sampler", "fast", "--out", tmp_path / "none")
    assert code == 2 and "fast" in err and not (tmp_path / "none" / "utility.json").exists()


def test_sampling_flags_are_checked_before_any_training(tmp_path, run_cli, tiny_conditional_run,
                                                        idx_spec):
    code, _, err = run_cli("utility", tiny_conditional_run, "--allow-leak", "--guidance", "1")
    assert code == 2 and "--guidance is not a sampling option of dcgan" in err
    fake = _npz(tmp_path / "f.npz", np.zeros((4, 16, 16), np.uint8), np.arange(4))
    code, _, err = run_cli("utility", "--fake", fake, "--data", idx_spec, "--sample-steps", "3")
    assert code == 2 and "--sample-steps sets how a generator run samples" in err
