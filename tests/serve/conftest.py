"""Fixtures of the `genlab serve` tests: tiny runs to serve (a conditional DCGAN, an unconditional
one, a tiny GPT with a `genlab eval` report) and live servers (serve_support.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_support import Live, live_server

GPT_TINY = ("model.n_layer=2", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
            "train.log_every=1", "train.sample_every=0", "train.checkpoint_every=0",
            "train.warmup_steps=1")


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory, tiny_run, tiny_conditional_run, text_file) -> dict[str, Path]:
    """Run folders named as the server names them: cdcgan (4 classes), dcgan, tinygpt (with an
    eval.json from `genlab eval`). Copies, so the shared fixtures stay untouched."""
    import genlab
    from genlab.runs import TrainRequest, train

    root = tmp_path_factory.mktemp("serve-runs")
    shutil.copytree(tiny_conditional_run, root / "cdcgan")
    shutil.copytree(tiny_run, root / "dcgan")
    train(TrainRequest(model="gpt", data=f"text:{text_file}", steps=3, batch_size=4,
                       out=str(root / "tinygpt"), device="cpu", overrides=GPT_TINY))
    genlab.evaluate(root / "tinygpt", device="cpu")
    return {name: root / name for name in ("cdcgan", "dcgan", "tinygpt")}


@pytest.fixture(scope="module")
def live(serve_runs) -> Iterator[Live]:
    """One server with the three tiny runs and the default settings."""
    with live_server(list(serve_runs.values())) as server:
        yield server


@pytest.fixture
def start_server(serve_runs) -> Callable[..., Any]:
    """`with start_server(names=(...), **settings) as live:` a server of its own."""
    def start(names: tuple[str, ...] = ("cdcgan", "dcgan", "tinygpt"), **settings: Any) -> Any:
        return live_server([serve_runs[n] for n in names], **settings)
    return start
