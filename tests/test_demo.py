"""`genlab demo`: a class-conditional DCGAN at 16x16 on the bundled digits, a grid column per digit."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from genlab.config import load_preset


def test_demo_preset_is_the_small_16x16_dcgan() -> None:
    preset = load_preset("demo")
    assert preset["model_name"] == "dcgan"
    assert preset["model"]["image_size"] == 16
    assert preset["train"]["steps"] == 2000


def test_demo_trains_a_conditional_model_and_draws_every_digit(run_cli, tmp_path) -> None:
    out = tmp_path / "demo"
    code, _, err = run_cli("demo", "--out", out, "--steps", "3", "--device", "cpu")
    assert code == 0, err
    record = json.loads((out / "run.json").read_text())
    assert record["conditional"] is True and record["preset"] == "demo"
    assert record["model_config"]["num_classes"] == 10
    assert record["model_config"]["image_size"] == 16
    assert record["data_info"]["shape"] == [1, 16, 16]  # resized once at load
    # 64 samples in 10 columns (one per digit), upscaled so 16-pixel digits stay visible
    grid = np.asarray(Image.open(out / "samples.png"))
    assert grid.shape[1] >= 256 and grid.shape[1] > grid.shape[0]
    code, _, err = run_cli("sample", out, "--n", "10", "--label", "7", "--out",
                                tmp_path / "sevens.npz")
    assert code == 0, err
    with np.load(tmp_path / "sevens.npz") as npz:
        assert npz["images"].shape == (10, 16, 16) and set(npz["labels"].tolist()) == {7}
