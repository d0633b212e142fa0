"""The README's tour of the command line, run as written and in order, with tiny step counts.

Each command of the tour's code block runs in one working folder, so a run name that one command
creates and a later one reads must connect (a tour that trains into a timestamped folder and then
samples `runs/convvae` fails here). What is changed, and only that: `train` gets a few steps, a
tiny model (each family's `tiny_config`), batch 8 and the CPU; `eval`/`sample` get small counts;
`torchrun` runs its command in this process; `serve` runs as a real server on a free port, is
asked for one sample of each model, and is stopped with SIGTERM.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from genlab.data import catalog, wav_bytes
from genlab.data.download import Checksum
from genlab.data.sources import fsdd
from genlab.models import MODELS

README = Path(__file__).resolve().parents[1] / "README.md"
# option -> the tiny value the test uses (the tiny data has 16 training images per class)
SMALL = {"--n": "8", "--max-new-tokens": "8", "--sample-steps": "2", "--real-per-class": "4",
         "--members": "10"}
SETTINGS = {"train.per_class": "4"}  # --set values made tiny the same way
# commands whose defaults are sized for real data: a few samples, steps and resamples
EXTRA = {"audit": ["--n", "16", "--bootstrap", "10"], "utility": ["--steps", "5"]}


def tour_commands() -> list[list[str]]:
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## A tour of the command line\n\n```\n(.*?)```", text, re.S)
    assert block, "README lost its tour block"
    return [shlex.split(line, comments=True) for line in block.group(1).splitlines()
            if line.strip()]


def shrink(argv: list[str], train_index: int) -> list[str]:
    """The tour's command with tiny counts (see the module docstring)."""
    if argv[0] == "torchrun":  # one process here; tests/test_distributed.py runs real ranks
        argv = ["genlab", *argv[argv.index("genlab") + 1:]]
    assert argv[0] == "genlab", argv
    args = list(argv[1:])
    for i, arg in enumerate(args[:-1]):
        if arg in SMALL:  # only ever smaller: `--n 1` stays one sample
            args[i + 1] = str(min(int(args[i + 1]), int(SMALL[arg])))
        key = args[i + 1].split("=")[0]
        if arg == "--set" and key in SETTINGS:
            args[i + 1] = f"{key}={SETTINGS[key]}"
    if args[0] in EXTRA:
        args += EXTRA[args[0]]
    if args[0] == "train":
        steps = str(2 + 2 * train_index)  # increasing, so a resume goes further than its run
        if "--steps" in args:
            args[args.index("--steps") + 1] = steps
        else:
            args += ["--steps", steps]
        if "--resume" not in args:
            tiny = MODELS[args[1]].tiny_config
            args += [f"--set=model.{k}={v}" for k, v in tiny.items()]
            args += ["--batch-size", "8", "--set", "train.sample_every=2"]
        args += ["--device", "cpu"]
    return args


def fake_fashion_mnist(folder: Path, monkeypatch, write_idx_dataset) -> None:
    """A tiny IDX set standing in for fashion-mnist, its checksums the ones the source expects."""
    write_idx_dataset(folder)
    table = {f.name: Checksum(raw_md5=hashlib.md5(f.read_bytes()).hexdigest())
             for f in folder.iterdir()}
    monkeypatch.setitem(catalog.CHECKSUMS, "fashion-mnist", table)


def fake_fsdd(folder: Path, monkeypatch) -> None:
    """Tones named like FSDD's recordings (digit_speaker_index.wav; indices 0-4 are its test
    split), with the recordings checksum the source expects pinned to theirs."""
    rng = np.random.default_rng(0)
    recordings = {}
    for digit in range(10):
        for index in range(7):
            t = np.arange(4000) / 8000
            tone = np.sin(2 * np.pi * (200 + 60 * digit) * t) + 0.05 * rng.standard_normal(4000)
            recordings[f"{digit}_tour_{index}.wav"] = wav_bytes(
                (8000 * tone).astype(np.int16), 8000)
    (folder / "recordings").mkdir(parents=True)
    for name, data in recordings.items():
        (folder / "recordings" / name).write_bytes(data)
    monkeypatch.setattr(fsdd, "RECORDINGS_SHA256", fsdd.recordings_sha256(recordings))
    monkeypatch.setattr(fsdd, "NUM_RECORDINGS", len(recordings))


def serve_once(args: list[str], cwd: Path) -> None:
    """`genlab serve ...` as a user starts it: wait until ready, one request per model, SIGTERM."""
    cmd = [sys.executable, "-m", "genlab", *args, "--port", "0", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(cmd, cwd=cwd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = None
        deadline = time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            assert line or server.poll() is None, f"serve exited {server.returncode}"
            if m := re.search(r"(http://127\.0\.0\.1:\d+)/", line):
                url = m.group(1)
        assert url, "serve never said where it listens"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        with urllib.request.urlopen(f"{url}/v1/models", timeout=30) as r:
            models = {m["id"]: m for m in json.load(r)["data"]}
        assert set(models) == {Path(a).name for a in args[1:]}
        for name, card in models.items():  # one request to each, at the route its card names
            body = ({"prompt": "ROMEO:", "max_tokens": 4} if card["endpoint"].endswith("completions")
                    else {"n": 1, "seed": 0, **({"label": 3} if card["classes"] else {})})
            req = urllib.request.Request(f"{url}{card['endpoint']}", method="POST",
                                         data=json.dumps({"model": name, **body}).encode(),
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                assert r.status == 200, name
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0


def test_the_readme_tour_runs_as_written(run_cli, idx_writer, tmp_path, monkeypatch) -> None:
    pytest.importorskip("fastapi")  # the `serve` extra: `make test` installs it
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(catalog, "SYSTEM_DATA_DIRS", [])
    fake_fashion_mnist(tmp_path / "cache" / "fashion-mnist", monkeypatch, idx_writer)
    fake_fsdd(tmp_path / "cache" / "fsdd", monkeypatch)
    idx_writer(tmp_path / "my_idx_files", seed=1)
    (tmp_path / "input.txt").write_text("ROMEO:\nWhat light through yonder window breaks?\n" * 60)

    trains, timings = 0, []
    for argv in tour_commands():
        args = shrink(argv, trains)
        trains += args[0] == "train"
        if args[0] == "serve":
            serve_once(args, tmp_path)
            continue
        start = time.perf_counter()
        code, _, err = run_cli(*args)
        timings.append(f"{time.perf_counter() - start:6.1f} s  genlab {shlex.join(args)}")
        assert code == 0, f"genlab {shlex.join(args)} exited {code}: {err}"
        for flag in ("--out",):
            if flag in args and args[0] != "train":
                assert (tmp_path / args[args.index(flag) + 1]).exists(), args
    print("\n".join(timings))  # shown with pytest -s: which step of the tour costs what
    assert trains >= 6
    assert {p.name for p in (tmp_path / "runs").iterdir()} >= {
        "dcgan", "cdcgan", "mine", "convvae", "gpt", "dcgan-ddp"}
