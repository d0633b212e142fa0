"""Tokenizers for text models: `char` (one token per character) and `bpe` (byte-level BPE).

Both are built from the training split only and travel with the checkpoint as JSON (`to_dict` /
`tokenizer_from_dict`), so sampling never needs the training file.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from genlab.errors import UserError

DEFAULT_BPE_VOCAB = 1024  # model.vocab_size=0 with model.tokenizer=bpe


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...

    def encode(self, text: str) -> np.ndarray: ...

    def decode(self, ids: Any) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """Token i is the i-th character of the sorted training vocabulary."""

    kind = "char"

    def __init__(self, chars: str) -> None:
        if not chars:
            raise UserError("a character vocabulary needs at least one character")
        self.chars = chars
        # code points sorted ascending: encoding is one vectorised `searchsorted`
        self._codes = np.frombuffer(chars.encode("utf-32-le"), dtype="<u4")

    @classmethod
    def train(cls, text: str) -> CharTokenizer:
        return cls("".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> np.ndarray:
        """int64 ids; characters outside the vocabulary are a `UserError` naming them."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
        ids = np.searchsorted(self._codes, codes)
        ids = np.minimum(ids, len(self._codes) - 1)
        unknown = self._codes[ids] != codes
        if unknown.any():
            shown = "".join(sorted(set(chr(c) for c in codes[unknown])))[:20]
            raise UserError(f"characters not in the model's vocabulary: {shown!r}; use only "
                            "characters of the training text")
        return ids.astype(np.int64)

    def decode(self, ids: Any) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids, dtype=np.int64).tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "chars": self.chars}


class BPETokenizer:
    """Byte-level BPE (GPT-2 style, https://arxiv.org/abs/1508.07909) from Hugging Face `tokenizers`.

    Any UTF-8 text encodes (bytes are the base alphabet), and decoding gives the text back exactly.
    """

    kind = "bpe"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, text: str, vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < 257:
            raise UserError(f"model.vocab_size={vocab_size} is too small for byte-level BPE; it "
                            "needs at least 257 (256 bytes plus merges)")
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator([text], trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self.tokenizer.encode(text).ids, dtype=np.int64)

    def decode(self, ids: Any) -> str:
        return self.tokenizer.decode(np.asarray(ids, dtype=np.int64).tolist())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "json": self.tokenizer.to_str()}


def train_tokenizer(kind: str, text: str, vocab_size: int) -> Tokenizer:
    """Build the `kind` tokenizer from `text`; `vocab_size` is BPE's target (0 = default)."""
    if kind == "char":
        return CharTokenizer.train(text)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size or DEFAULT_BPE_VOCAB)
    raise UserError(f"unknown tokenizer {kind!r}; allowed: char, bpe")


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    if data.get("kind") == "char":
        return CharTokenizer(data["chars"])
    if data.get("kind") == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(data["json"]))
    raise UserError(f"unknown tokenizer {data.get('kind')!r} in the checkpoint; is it from a newer "
                    "genlab?")
