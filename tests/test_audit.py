"""`genlab audit` and `genlab report`: the metric functions, the controls that show the audit works
(a memorizer is caught, held-out images posing as a generator are not, noise has no copies), tiny
real runs through the command line, and the report card."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from genlab.apps.audit import audit_images
from genlab.apps.audit_text import ngram_overlap, window_hashes
from genlab.metrics.neighbours import nearest
from genlab.metrics.privacy import (
    attack_report,
    binomial_ci,
    calibrated_ratio,
    closer_to_train,
    near_copies,
    roc_auc,
    tpr_at_fpr,
    zu_test,
)

# --- metric functions ------------------------------------------------------------------------------


def test_nearest_matches_cdist_and_finds_exact_copies() -> None:
    g = torch.Generator().manual_seed(0)
    q, r = torch.rand(70, 30, generator=g), torch.rand(500, 30, generator=g)
    d, i = nearest(q, r, 6, query_block=16, reference_block=64)  # many blocks on purpose
    full = torch.cdist(q.double(), r.double())
    want_d, want_i = full.topk(6, largest=False)
    assert torch.allclose(d.double(), want_d, atol=1e-5)
    assert torch.equal(i, want_i)
    d0, i0 = nearest(r[:5], r, 1)
    assert torch.equal(d0[:, 0], torch.zeros(5)) and torch.equal(i0[:, 0], torch.arange(5))


def test_auc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(1)
    m, n = rng.normal(0.4, 1, 300).round(1), rng.normal(0, 1, 200).round(1)
    want = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[m, n])
    assert roc_auc(m, n) == pytest.approx(want, abs=1e-12)
    assert roc_auc([1, 2], [1, 2]) == 0.5


def test_tpr_at_fpr_and_when_it_cannot_be_measured() -> None:
    nonmembers, members = np.arange(100.0), np.arange(50.0, 150.0)
    # 1 false positive allowed of 100: threshold 98, members 99..149 are above it
    assert tpr_at_fpr(members, nonmembers, 0.01) == pytest.approx(0.51)
    assert tpr_at_fpr(members, nonmembers, 0.001) is None  # needs 1000 non-members
    many = np.arange(1000.0)
    # one false positive allowed: the threshold is the second highest non-member, 998
    assert tpr_at_fpr(np.full(10, 998.5), many, 0.001) == 1.0
    assert tpr_at_fpr(np.full(10, 997.5), many, 0.001) == 0.0


def test_wilson_interval() -> None:
    assert binomial_ci(5, 10) == pytest.approx([0.236593, 0.763407], abs=1e-6)
    assert binomial_ci(0, 100) == [0.0, pytest.approx(0.036993, abs=1e-6)]
    assert binomial_ci(100, 100)[1] == 1.0


def test_attack_report_is_seeded_and_brackets_the_auc() -> None:
    rng = np.random.default_rng(2)
    m, n = rng.normal(1, 1, 200), rng.normal(0, 1, 200)
    a, b = attack_report(m, n, seed=3, bootstrap=100), attack_report(m, n, seed=3, bootstrap=100)
    assert a == b
    assert a["auc_ci95"][0] < a["auc"] < a["auc_ci95"][1]
    assert a["tpr_at_0.1pct_fpr"] is None and 0 < a["tpr_at_1pct_fpr"] < 1


def test_calibrated_ratio_and_near_copies() -> None:
    d = np.array([[0.0, 1, 1, 1, 1, 1], [1.0, 1, 1, 1, 1, 1], [0.0, 0, 0, 0, 0, 0]])
    assert calibrated_ratio(d).tolist() == [0.0, 1.0, 0.0]
    out = near_copies(np.array([0.0, 0.5, 0.95]), np.linspace(0.9, 1.0, 1000))
    assert out["count"] == 2 and out["threshold"] == pytest.approx(0.9, abs=1e-3)


def test_closer_to_train_counts_ties_as_half() -> None:
    out = closer_to_train(np.array([0.0, 1.0, 2.0, 1.0]), np.array([1.0, 1.0, 1.0, 3.0]))
    assert out["fraction"] == pytest.approx(2.5 / 4)


# --- the controls ----------------------------------------------------------------------------------

def _real(n: int, seed: int, side: int = 14) -> torch.Tensor:
    """Images of one distribution: a bright square in one of four quadrants, on noise."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 80, (n, 1, side, side))
    half = side // 2
    for i in range(n):
        top, left = divmod(i % 4, 2)
        images[i, 0, top * half + 1:top * half + 6, left * half + 1:left * half + 6] += 170
    return torch.from_numpy(images.astype(np.uint8))


@pytest.fixture(scope="module")
def real_sets() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training images, held-out images and more real images (never seen), disjoint."""
    return _real(600, 0), _real(300, 1), _real(300, 2)


def test_memorizer_is_caught(real_sets) -> None:
    train, held, _ = real_sets
    copies = train[torch.randperm(600, generator=torch.Generator().manual_seed(0))]
    report, png = audit_images(train, held, copies, seed=0, bootstrap=100, log=lambda _: None)
    assert report["near_copies"]["fraction"] >= 0.99
    attack = report["attacks"]["nearest_generated"]
    assert attack["auc"] >= 0.99 and attack["auc_ci95"][0] > 0.95
    assert attack["tpr_at_1pct_fpr"] >= 0.99
    # closer-to-train compares with the 300 members only: copies of the other 300 training
    # images tie at 0.5, so the fraction is about 0.5 + 0.5 * 300 / 600
    assert report["closer_to_train"]["ci95"][0] > 0.6
    assert report["data_copying"]["zu"] < -3  # Meehan et al.: negative under copying
    assert png.startswith(b"\x89PNG")


def test_heldout_posing_as_generator_is_not_flagged(real_sets) -> None:
    train, held, fresh = real_sets
    report, _ = audit_images(train, held, fresh, seed=0, bootstrap=200, log=lambda _: None)
    low, high = report["closer_to_train"]["ci95"]
    assert low <= 0.5 <= high
    low, high = report["attacks"]["nearest_generated"]["auc_ci95"]
    assert low <= 0.5 <= high
    assert report["near_copies"]["fraction"] <= 0.02  # the baseline is 0.1%
    assert abs(report["data_copying"]["zu"]) < 3


def test_uniform_noise_has_no_near_copies(real_sets) -> None:
    train, held, _ = real_sets
    noise = torch.randint(0, 256, (300, 1, 14, 14), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    report, _ = audit_images(train, held, noise, seed=0, bootstrap=50, log=lambda _: None)
    assert report["near_copies"]["count"] == 0


def test_feature_space_and_model_attacks_are_reported(real_sets) -> None:
    train, held, _ = real_sets
    copies = train[:300]

    def embed(images: torch.Tensor) -> torch.Tensor:  # a fixed "feature net": 2x2 average pool
        return torch.nn.functional.avg_pool2d(images.float(), 2).flatten(1)

    def scorer(images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return images.float().mean((1, 2, 3))  # uninformative: one distribution

    report, _ = audit_images(train, held, copies, seed=0, bootstrap=50, embed=embed,
                             scorers={"mean": scorer}, members=300, log=lambda _: None)
    assert report["spaces"]["features"]["near_copies"]["fraction"] >= 0.99
    assert report["data_copying"]["space"] == "features"
    assert set(report["attacks"]) == {"nearest_generated", "nearest_generated_features", "mean"}
    assert report["attacks"]["mean"]["auc_ci95"][0] < 0.5 < report["attacks"]["mean"]["auc_ci95"][1]
    assert report["n_train"] == report["n_heldout"] == 300


def test_zu_is_near_zero_for_the_same_distribution(real_sets) -> None:
    train, held, fresh = real_sets
    flat = [x.flatten(1).float() / 255 for x in (train[:300], held, fresh)]
    assert abs(zu_test(*flat, seed=0)["zu"]) < 3


# --- text ------------------------------------------------------------------------------------------

def test_window_hashes_match_equal_windows() -> None:
    h = window_hashes("abcabcabc", 3)
    assert len(h) == 7 and h[0] == h[3] == h[6] and len(set(h.tolist())) == 3
    assert len(window_hashes("short", 50)) == 0


def test_ngram_overlap_of_copied_and_fresh_text() -> None:
    rng = np.random.default_rng(0)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz "))
    train = "".join(rng.choice(letters, 20000))
    held = "".join(rng.choice(letters, 5000))
    copied = [train[i:i + 300] for i in (0, 5000, 12000)]
    out = ngram_overlap(copied, train, held, seed=0)
    assert out["generated"] == 1.0 and out["heldout"] == 0.0 and out["n"] == 50
    fresh = ["".join(rng.choice(letters, 300)) for _ in range(3)]
    assert ngram_overlap(fresh, train, held, seed=0)["generated"] == 0.0


# --- real runs through the command line --------------------------------------------------------

KEYS = {"closer_to_train", "near_copies", "attacks", "n_train", "n_heldout", "n_generated",
        "provenance"}


@pytest.mark.parametrize("model", ["dcgan", "vae"])
def test_audit_of_a_tiny_run_through_the_cli(model: str, tmp_path: Path, train_tiny,
                                             run_cli) -> None:
    overrides = () if model == "dcgan" else ("model.nz=4", "model.hidden=16",
                                             "model.pixel_features=2")
    run = train_tiny(tmp_path / model, model=model, steps=3, overrides=overrides)
    code, out, err = run_cli("audit", run, "--n", 40, "--bootstrap", 20, "--json")
    assert code == 0, err
    report = json.loads(out)  # exactly one JSON object
    assert set(report) >= KEYS
    assert set(report["closer_to_train"]) >= {"fraction", "ci95"}
    assert set(report["near_copies"]) >= {"count", "fraction", "threshold"}
    expected = {"discriminator"} if model == "dcgan" else {"elbo", "reconstruction"}
    assert set(report["attacks"]) == {"nearest_generated"} | expected
    for attack in report["attacks"].values():
        assert set(attack) >= {"auc", "auc_ci95", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"}
        assert attack["tpr_at_0.1pct_fpr"] is None  # 16 held-out images cannot measure it
    assert report["n_train"] == report["n_heldout"] == 16 and report["n_generated"] == 40
    assert report["provenance"]["checkpoint_sha256"]
    assert json.loads((run / "audit.json").read_text()) == report
    assert (run / "audit_copies.png").read_bytes().startswith(b"\x89PNG")


def test_audit_errors_are_one_line(tmp_path: Path, run_cli, tiny_run) -> None:
    code, _, err = run_cli("audit")
    assert code == 2 and "RUN_DIR or --fake" in err and "Traceback" not in err
    code, _, err = run_cli("audit", "--fake", tiny_run / "samples.png", "--data", "mnist")
    assert code == 2 and err.count("\n") == 1
    code, _, err = run_cli("audit", tmp_path / "nope")
    assert code == 2 and "no run at" in err


def test_audit_of_fake_samples(tmp_path: Path, idx_dir: Path, run_cli) -> None:
    from genlab.data import load_images
    from genlab.images import save_npz

    train = load_images(f"idx:{idx_dir}", "train").images
    save_npz(train[:32], tmp_path / "copies.npz")
    code, out, err = run_cli("audit", "--fake", tmp_path / "copies.npz", "--data",
                             f"idx:{idx_dir}", "--bootstrap", 20, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["near_copies"]["fraction"] == 1.0 and report["n_generated"] == 32
    assert report["provenance"]["fake"].endswith("copies.npz")


def test_audit_of_a_text_run(tmp_path: Path, train_tiny, text_file: Path, run_cli) -> None:
    run = train_tiny(tmp_path / "gpt", model="gpt", steps=2, data=f"text:{text_file}",
                     overrides=("model.n_layer=1", "model.n_head=2", "model.n_embd=16",
                                "model.block_size=16"))
    code, out, err = run_cli("audit", run, "--n", 2, "--json")
    assert code == 0, err
    report = json.loads(out)
    overlap = report["ngram_overlap"]
    assert overlap["n"] == 50 and 0 <= overlap["generated"] <= 1
    # the tiny text is one line repeated: every held-out window is in the training text
    assert overlap["heldout"] == 1.0
    assert report["n_generated"] == 2 and report["provenance"]["model"] == "gpt"


# --- the report card -----------------------------------------------------------------------------

def test_report_is_self_contained_and_shows_audit_and_utility(tmp_path: Path, tiny_run: Path,
                                                              run_cli) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    code, _, err = run_cli("audit", run, "--n", 32, "--bootstrap", 20)
    assert code == 0, err
    (run / "utility.json").write_text(json.dumps(
        {"arms": {"R": {"accuracy": 0.91, "ci95": [0.89, 0.93]}},
         "paired_vs_R": {"S": {"difference": -0.2, "ci95": [-0.25, -0.15]}}}))
    out = tmp_path / "report.html"
    code, stdout, err = run_cli("report", run, tiny_run, "--out", out)
    assert code == 0, err
    assert stdout.strip() == str(out)
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", page)  # nothing to fetch
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 5  # 2 grids, 2 loss curves, the near-copies PNG
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert not re.search(r'src="(?!data:)', page)
    assert "paired_vs_R" in page and "[-0.250, -0.150]" in page
    assert "discriminator" in page and "closer to train" in page
    code, _, err = run_cli("report", tmp_path / "nope", "--out", out)
    assert code == 2 and "no run at" in err


def test_audit_of_a_conditional_run_scores_with_labels(tmp_path: Path, tiny_conditional_run: Path,
                                                       run_cli) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_conditional_run, run)
    code, out, err = run_cli("audit", run, "--n", 24, "--bootstrap", 20, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert set(report["attacks"]) == {"nearest_generated", "discriminator"}
    assert 0 <= report["attacks"]["discriminator"]["auc"] <= 1


def test_an_attack_with_non_finite_scores_is_skipped_with_a_note(real_sets) -> None:
    train, held, fresh = real_sets

    def diverged(images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return torch.full((images.shape[0],), float("nan"))

    report, _ = audit_images(train, held, fresh, seed=0, bootstrap=20,
                             scorers={"elbo": diverged}, log=lambda _: None)
    assert "elbo" not in report["attacks"] and "non-finite" in report["notes"][0]


def test_an_audio_run_without_a_test_split_is_one_clear_error(tmp_path: Path, train_tiny,
                                                              run_cli) -> None:
    from genlab.modalities import MODALITIES

    audio = [m for m in MODALITIES.values() if m.unit == "clip"]
    if not audio:
        pytest.skip("no audio modality registered")
    spec = audio[0].tiny_data(tmp_path / "wavs")  # wav:DIR: one split only
    run = train_tiny(tmp_path / "run", model="dcgan", steps=1, data=spec)
    code, _, err = run_cli("audit", run, "--n", 16)
    assert code == 2 and "no held-out split" in err and err.count("\n") == 1


def test_a_collapsed_generator_gets_a_warning(real_sets) -> None:
    train, held, fresh = real_sets
    collapsed = fresh[:1].expand(300, -1, -1, -1).clone()
    report, _ = audit_images(train, held, collapsed, seed=0, bootstrap=20, log=lambda _: None)
    assert any("nearly alike" in n for n in report["notes"])
    report, _ = audit_images(train, held, fresh, seed=0, bootstrap=20, log=lambda _: None)
    assert not report["notes"]
