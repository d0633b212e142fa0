"""Shared fixtures: a tiny IDX dataset, a tiny text file, tiny trained runs and an in-process CLI.

Everything is written under pytest's temporary folders; nothing reads the user's data cache or the
network. Session-scoped fixtures are shared read-only: a test that corrupts one copies it first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.data.idx import write_idx

N_TRAIN, N_TEST, SIDE, N_CLASSES = 64, 16, 28, 4

# Small, fast and still exercising every part of the loop (log, sample, checkpoint every step).
TINY_TRAIN = ("train.log_every=1", "train.sample_every=2", "train.checkpoint_every=0")
TINY_MODEL = {"dcgan": ("model.ngf=4", "model.ndf=4", "model.nz=8"),
              "gan": ("model.hidden=8", "model.nz=8")}  # other models: pass `overrides`


def pytest_configure(config: pytest.Config) -> None:
    # Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine the spinning
    # threads made a tiny training run ~10x slower (7 s instead of 0.6 s).
    torch.set_num_threads(1)


def _class_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images whose class decides which quadrant holds a bright square."""
    labels = np.arange(n) % N_CLASSES
    images = rng.integers(0, 60, (n, SIDE, SIDE))
    half = SIDE // 2
    for i, label in enumerate(labels):
        top, left = divmod(int(label), 2)
        images[i, top * half + 3:top * half + 11, left * half + 3:left * half + 11] += 180
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_idx_dataset(folder: Path, seed: int = 0) -> Path:
    """Both splits of a 4-class 28x28 IDX dataset with the standard MNIST file names."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for n, (images_name, labels_name) in ((N_TRAIN, ("train-images-idx3-ubyte",
                                                      "train-labels-idx1-ubyte")),
                                          (N_TEST, ("t10k-images-idx3-ubyte",
                                                    "t10k-labels-idx1-ubyte"))):
        images, labels = _class_images(n, rng)
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels)
    return folder


@pytest.fixture(autouse=True)
def _private_data_cache(tmp_path_factory, monkeypatch):
    """No test reads or fills the user's dataset cache."""
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path_factory.getbasetemp() / "genlab-cache"))


@pytest.fixture(scope="session")
def wav_spec(tmp_path_factory) -> str:
    """`--data wav:DIR` of the tiny tones (`write_tiny_wavs`: 4 classes, one tone each)."""
    from genlab.modalities.audio import write_tiny_wavs

    return f"wav:{write_tiny_wavs(tmp_path_factory.mktemp('tones'))}"


@pytest.fixture(scope="session")
def idx_writer() -> Callable[..., Path]:
    """`write_idx_dataset` for tests that need the tiny IDX set in a folder of their own."""
    return write_idx_dataset


@pytest.fixture(scope="session")
def idx_dir(tmp_path_factory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("idx"))


@pytest.fixture(scope="session")
def idx_spec(idx_dir) -> str:
    """The `--data` value of the tiny IDX dataset."""
    return f"idx:{idx_dir}"


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """A tiny UTF-8 text file for text models (`--data text:PATH`)."""
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    line = "the quick brown fox jumps over the lazy dog. pack my box with five dozen jugs!\n"
    path.write_text(line * 40, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def data_specs(idx_spec, text_file) -> dict[str, str]:
    """One tiny dataset spec per modality, for tests that loop over every registered model."""
    return {"image": idx_spec, "text": f"text:{text_file}"}


@pytest.fixture(scope="session")
def train_tiny(idx_spec) -> Callable[..., Path]:
    """`train_tiny(out, model="dcgan", steps=4, overrides=(), **request)` -> the run folder."""
    from genlab.runs import TrainRequest, train

    def run(out: Path, model: str = "dcgan", steps: int = 4, overrides: Sequence[str] = (),
            **request) -> Path:
        tiny = TINY_MODEL.get(model, ())
        req = TrainRequest(model=model, data=request.pop("data", idx_spec), steps=steps,
                           batch_size=request.pop("batch_size", 8), out=str(out), device="cpu",
                           overrides=(*TINY_TRAIN, *tiny, *overrides), **request)
        return train(req)

    return run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, train_tiny) -> Path:
    """An unconditional DCGAN trained for 4 steps. Read-only: copy it before changing it."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "dcgan")


@pytest.fixture(scope="session")
def tiny_conditional_run(tmp_path_factory, train_tiny) -> Path:
    """A class-conditional DCGAN trained for 4 steps. Read-only: copy it before changing it."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "cdcgan", conditional=True)


@pytest.fixture
def run_cli(capsys) -> Callable[..., tuple[int, str, str]]:
    """`run_cli(*args)` runs `genlab ARGS` in-process -> (exit status, stdout, stderr)."""
    from genlab.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()  # drop what earlier steps of the test printed
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        code = exit_info.value.code
        return (0 if code is None else code), out, err

    return run
