"""The token cache of text data is verified (issue 11, item 15): a truncated or replaced cache file
is encoded again and said so, never read as it is; a cache file that became a link is named."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.errors import UserError
from genlab.limits import MAX_SEED
from genlab.text.data import TextBatcher, load_text


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch) -> str:
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "cache"))  # a cache of this test's own
    path = tmp_path / "corpus.txt"
    path.write_text("to be or not to be, that is the question.\n" * 30, encoding="utf-8")
    return f"text:{path}"


def _entry(tmp_path: Path) -> Path:
    (folder,) = (tmp_path / "cache" / "text").iterdir()
    return folder


def test_an_intact_cache_is_used_as_it_is(corpus: str, tmp_path: Path) -> None:
    first = load_text(corpus, "char")
    folder = _entry(tmp_path)
    meta = json.loads((folder / "meta.json").read_text())
    assert set(meta["files"]) == {"train.npy", "val.npy", "tokenizer.json"}
    assert meta["files"]["train.npy"]["size"] == (folder / "train.npy").stat().st_size
    inode = (folder / "train.npy").stat().st_ino
    again = load_text(corpus, "char")
    assert again.note is None and first.note is None
    assert (folder / "train.npy").stat().st_ino == inode  # not rewritten
    assert np.array_equal(again.train, first.train) and again.tokens_sha256 == first.tokens_sha256


def test_a_truncated_cache_is_rebuilt_and_named(corpus: str, tmp_path: Path) -> None:
    first = load_text(corpus, "char")
    expected = np.array(first.train)
    train = _entry(tmp_path) / "train.npy"
    data = train.read_bytes()
    train.write_bytes(data[: len(data) // 2])  # a copy cut short
    again = load_text(corpus, "char")
    assert f"the token cache {_entry(tmp_path)} was damaged" in again.note
    assert f"train.npy has {len(data) // 2} bytes, {len(data)} were written" in again.note
    assert np.array_equal(again.train, expected)
    assert train.read_bytes() == data


def test_a_replaced_cache_file_is_not_trained_on(corpus: str, tmp_path: Path) -> None:
    first = load_text(corpus, "char")
    expected = np.array(first.train)
    train = _entry(tmp_path) / "train.npy"
    buf = io.BytesIO()
    np.save(buf, expected[::-1].copy())  # a valid array of the same size: other tokens
    train.write_bytes(buf.getvalue())
    again = load_text(corpus, "char")
    assert "train.npy was changed since it was written" in again.note
    assert np.array_equal(again.train, expected)


def test_a_cache_file_turned_into_a_link_is_named(corpus: str, tmp_path: Path) -> None:
    load_text(corpus, "char")
    train = _entry(tmp_path) / "train.npy"
    outside = tmp_path / "outside.npy"
    outside.write_bytes(train.read_bytes())
    train.unlink()
    train.symlink_to(outside)
    with pytest.raises(UserError, match=r"train\.npy is a symbolic link"):
        load_text(corpus, "char")
    assert outside.read_bytes()[:6] == b"\x93NUMPY"  # the link's target is untouched


def test_windows_for_the_largest_seed_and_unchanged_for_small_ones() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    big = TextBatcher(tokens, 8, 4, MAX_SEED, "cpu")  # seed * 1_000_003 used to overflow
    assert torch.equal(big.batch(3)["tokens"], TextBatcher(tokens, 8, 4, MAX_SEED,
                                                           "cpu").batch(3)["tokens"])
    small = TextBatcher(tokens, 8, 4, 5, "cpu").batch(7)["tokens"]
    g = torch.Generator().manual_seed(5 * 1_000_003 + 7)  # genlab 0.1.0's windows
    starts = torch.randint(1000 - 8, (4,), generator=g)
    assert torch.equal(small[:, 0], starts.to(small.dtype))
