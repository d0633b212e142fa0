"""Text data: a UTF-8 file -> token ids cached on disk -> random training windows.

`--data text:PATH`: the first 90% of the characters train, the last 10% validate. The tokenizer is
built from the training split. Encoded ids are cached under `data_root()/text/` (never beside the
user's file), keyed by the file's SHA-256 and the tokenizer, as flat `.npy` arrays (uint16 when the
vocabulary fits) that later runs memory-map instead of encoding again. `meta.json` records the size
and SHA-256 of every cache file; a cache that no longer matches (truncated, replaced) is encoded
again, and `TextData.note` says so.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.checkpoint import sha256_file
from genlab.data import data_root
from genlab.errors import UserError
from genlab.files import atomic_write_bytes, atomic_write_text
from genlab.limits import derive_seed
from genlab.text.tokenizer import (
    DEFAULT_BPE_VOCAB,
    Tokenizer,
    tokenizer_from_dict,
    train_tokenizer,
)

PREFIX = "text:"
TRAIN_FRACTION = 0.9
CACHE_VERSION = 2  # bump when the cache layout changes; 2: meta.json holds each file's hash
CACHE_FILES = ("train.npy", "val.npy", "tokenizer.json")


@dataclass
class TextData:
    train: np.ndarray  # flat token ids of the training split, memory-mapped
    val: np.ndarray  # flat token ids of the validation split, memory-mapped
    tokenizer: Tokenizer
    name: str  # the file as given
    file_sha256: str
    tokens_sha256: str  # of both splits' ids: equal hashes mean the model saw the same tokens
    note: str | None = None  # set when a damaged cache was rebuilt: show it to the user


def text_path(spec: str) -> Path:
    """`text:PATH` -> PATH, checked to be a file."""
    if not spec.startswith(PREFIX) or len(spec) == len(PREFIX):
        raise UserError(f"text models need --data text:PATH (a UTF-8 text file), got {spec!r}")
    path = Path(spec[len(PREFIX):]).expanduser()
    if not path.is_file():
        why = "is not a file" if path.exists() else "does not exist"
        raise UserError(f"--data {spec}: {path} {why}; give a UTF-8 text file")
    return path


def read_text(path: Path, raw: bytes) -> str:
    """Decode `raw` as UTF-8 text, with a clear error for empty or binary files."""
    if not raw:
        raise UserError(f"{path} is empty; --data text: needs a UTF-8 text file")
    if b"\x00" in raw:
        raise UserError(f"{path} looks binary (it contains NUL bytes); --data text: needs a UTF-8 "
                        "text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (invalid byte at offset {e.start}); convert it "
                        "to UTF-8") from None


def load_text(spec: str, tokenizer: str, vocab_size: int = 0, *,
              fixed: Tokenizer | None = None) -> TextData:
    """Read `text:PATH`, split it, and return both splits' ids (from the cache when present).
    The tokenizer is trained on the training split, or is `fixed` (a fine-tuned model's own)."""
    path = text_path(spec)
    raw = path.read_bytes()
    file_sha = hashlib.sha256(raw).hexdigest()
    if fixed is not None:
        spec_json = json.dumps(fixed.to_dict(), sort_keys=True).encode()
        key = f"{fixed.kind}-fixed-{hashlib.sha256(spec_json).hexdigest()[:16]}"
    else:
        key = "char" if tokenizer == "char" else f"{tokenizer}{vocab_size or DEFAULT_BPE_VOCAB}"
    folder = data_root() / "text" / f"{file_sha[:24]}-{key}"
    meta = _read_meta(folder)
    note = None
    if meta is not None and meta.get("source_sha256") == file_sha:
        damage = cache_damage(folder, meta)
        if damage:
            note = f"the token cache {folder} was damaged ({damage}); encoded {path} again"
            meta = None
    if meta is None or meta.get("source_sha256") != file_sha:
        meta = _encode_to_cache(path, read_text(path, raw), tokenizer, vocab_size, folder, file_sha,
                                fixed)
    try:
        tok = tokenizer_from_dict(json.loads((folder / "tokenizer.json").read_text()))
        train, val = (np.load(folder / f"{split}.npy", mmap_mode="r") for split in ("train", "val"))
    except (OSError, ValueError, KeyError) as e:  # changed since it was verified a moment ago
        raise UserError(f"the token cache {folder} cannot be read ({e}); delete the folder and "
                        "run again") from None
    return TextData(train=train, val=val, tokenizer=tok, name=spec[len(PREFIX):],
                    file_sha256=file_sha, tokens_sha256=meta["tokens_sha256"], note=note)


def _read_meta(folder: Path) -> dict | None:
    """The cache entry's metadata, or None when it is missing, incomplete or from another layout."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("version") == CACHE_VERSION else None


def cache_damage(folder: Path, meta: dict) -> str | None:
    """What is wrong with a cache entry's files against its meta.json, or None when each has the
    recorded size and SHA-256."""
    recorded = meta.get("files")
    if not isinstance(recorded, dict):
        return "meta.json lists no files"
    for name in CACHE_FILES:
        entry, path = recorded.get(name), folder / name
        if not isinstance(entry, dict) or path.is_symlink() or not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry.get("size"):
            return f"{name} has {size} bytes, {entry.get('size')} were written"
        if sha256_file(path) != entry.get("sha256"):
            return f"{name} was changed since it was written (SHA-256 differs)"
    return None


def _encode_to_cache(path: Path, text: str, tokenizer: str, vocab_size: int, folder: Path,
                     file_sha: str, fixed: Tokenizer | None = None) -> dict:
    cut = int(len(text) * TRAIN_FRACTION)
    train_text, val_text = text[:cut], text[cut:]
    tok = fixed or train_tokenizer(tokenizer, train_text, vocab_size)
    if fixed is None and tokenizer == "char":
        unseen = sorted(set(val_text) - set(tok.chars))
        if unseen:
            raise UserError(f"the validation split (last 10% of {path}) has characters the "
                            f"training split lacks: {''.join(unseen)[:20]!r}; a char model cannot "
                            "score them; use --set model.tokenizer=bpe")
    dtype = np.uint16 if tok.vocab_size < 65536 else np.uint32
    splits = {"train": tok.encode(train_text).astype(dtype),
              "val": tok.encode(val_text).astype(dtype)}
    digest = hashlib.sha256()
    folder.mkdir(parents=True, exist_ok=True)
    contents = {}
    for name, ids in splits.items():
        digest.update(ids.tobytes())
        buf = io.BytesIO()
        np.save(buf, ids)
        contents[f"{name}.npy"] = buf.getvalue()
    contents["tokenizer.json"] = json.dumps(tok.to_dict()).encode()
    for name, data in contents.items():
        atomic_write_bytes(folder / name, data)
    meta = {"version": CACHE_VERSION, "source": str(path), "source_sha256": file_sha,
            "tokenizer": tok.kind, "vocab_size": tok.vocab_size, "dtype": np.dtype(dtype).name,
            "train_tokens": len(splits["train"]), "val_tokens": len(splits["val"]),
            "tokens_sha256": digest.hexdigest(),
            "files": {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                      for name, data in contents.items()}}
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1))  # last: marks it complete
    return meta


class TextBatcher:
    """Random windows of `block_size + 1` tokens (inputs and their next-token targets).

    The window starts of step s come from a generator seeded by (seed, s) alone, so a batch is a
    pure function of (seed, step) and a resumed run sees exactly the batches it would have seen.
    With several ranks, each takes its contiguous share of the global batch.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 device: torch.device | str, rank: int = 0, world_size: int = 1) -> None:
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.device = seed, torch.device(device)
        check_split(tokens, block_size, "training")
        self.n_starts = len(tokens) - block_size  # a window holds block_size + 1 tokens
        self.steps_per_epoch = max(1, len(tokens) // (batch_size * block_size))
        self.local = batch_size // world_size
        self.offset = rank * self.local
        self._window = np.arange(block_size + 1)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, step))
        starts = torch.randint(self.n_starts, (self.batch_size,), generator=g).numpy()
        starts = starts[self.offset:self.offset + self.local]
        ids = self.tokens[starts[:, None] + self._window].astype(np.int64)  # (B, block_size + 1)
        tokens = torch.from_numpy(ids)
        if self.device.type == "cuda":
            tokens = tokens.pin_memory().to(self.device, non_blocking=True)
        else:
            tokens = tokens.to(self.device)
        return {"tokens": tokens}


def validation_windows(tokens: np.ndarray, block_size: int) -> list[np.ndarray]:
    """Non-overlapping windows covering the split: every token after the first is a target once.

    Full windows hold `block_size + 1` tokens (stacked into one array); a shorter last window holds
    the remainder, so nothing is left out.
    """
    check_split(tokens, block_size, "validation")
    n_targets = len(tokens) - 1
    full = n_targets // block_size
    starts = np.arange(full) * block_size
    windows = [np.asarray(tokens[starts[:, None] + np.arange(block_size + 1)], dtype=np.int64)]
    if full * block_size < n_targets:
        windows.append(np.asarray(tokens[full * block_size:], dtype=np.int64)[None])
    return windows


def check_split(tokens: np.ndarray, block_size: int, split: str) -> None:
    """A split must hold at least one window of `block_size + 1` tokens."""
    if len(tokens) < block_size + 1:
        raise UserError(f"{split} split has {len(tokens)} tokens, block size is {block_size}; "
                        "use a longer file or a smaller model.block_size")
