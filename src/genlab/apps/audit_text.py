"""The text audit of `genlab audit`: how much of what a GPT run writes is its training text, verbatim.

The figure is the fraction of the generated 50-character windows that occur somewhere in the
training text, next to the same fraction for held-out text (the validation split, the part of the
file the run never trained on) of the same length: real text shares phrases with its training
text too ("my lord", whole repeated lines in a play), so the held-out figure is the baseline a
model is judged against, not zero.

Windows are matched by 64-bit polynomial hashes of their code points (one vectorised pass per
character of the window, a sorted array of the training text's hashes): a megabyte of text is a
megabyte of windows, far too many for a set of Python strings to be quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from genlab.log import get_logger

WINDOW = 50  # characters
TEXT_N, TEXT_TOKENS = 16, 500  # samples and new tokens per sample by default
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplication by it is a bijection mod 2^64

_log = get_logger(__name__).info


def window_hashes(text: str, n: int = WINDOW) -> np.ndarray:
    """Hashes (uint64) of every `n`-character window of `text` (none when it is shorter)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    count = len(codes) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):  # h = sum_j c[i + j] * B^(n - 1 - j), mod 2^64
            h = h * _BASE + codes[j:j + count]
    return h


def verbatim_fraction(queries: list[str], reference: np.ndarray, n: int = WINDOW
                      ) -> tuple[float | None, int]:
    """Fraction of the `n`-character windows of `queries` found in `reference` (sorted window
    hashes), and how many windows there were."""
    hashes = [window_hashes(q, n) for q in queries]
    allq = np.concatenate(hashes) if hashes else np.zeros(0, dtype=np.uint64)
    if len(allq) == 0:
        return None, 0
    pos = np.searchsorted(reference, allq).clip(max=len(reference) - 1)
    return float((reference[pos] == allq).mean()), len(allq)


def ngram_overlap(generated: list[str], train_text: str, heldout_text: str, *, seed: int = 0,
                  n: int = WINDOW) -> dict[str, Any]:
    """`{generated, heldout, n}`: the verbatim fractions of the generated texts and of held-out
    pieces of the same lengths (cut from a seeded offset of `heldout_text`, cycling through it
    when it is shorter than all the samples together)."""
    reference = np.unique(window_hashes(train_text, n))
    gen_fraction, gen_windows = verbatim_fraction(generated, reference, n)
    rng = np.random.default_rng(seed)
    pieces, offset = [], int(rng.integers(0, max(1, len(heldout_text))))
    for text in generated:  # held-out pieces as long as the samples
        need = len(text)
        piece = ""
        while len(piece) < need and heldout_text:
            take = heldout_text[offset:offset + need - len(piece)]
            piece += take
            offset = (offset + len(take)) % len(heldout_text)
        pieces.append(piece)
    held_fraction, held_windows = verbatim_fraction(pieces, reference, n)
    return {"generated": gen_fraction, "heldout": held_fraction, "n": n,
            "generated_windows": gen_windows, "heldout_windows": held_windows}


def audit_text_run(run_dir: Path, model: Any, record: dict[str, Any], *, n: int | None,
                   seed: int, max_new_tokens: int = TEXT_TOKENS, log: Any = _log,
                   **_: Any) -> dict[str, Any]:
    """Sample `n` texts from a text run and measure their verbatim overlap with its training
    split, against held-out text. The other keyword arguments of the image audit are ignored."""
    from genlab.generation import GenerationRequest
    from genlab.modalities import generate
    from genlab.text.data import load_text

    config = model.config
    fixed = model.tokenizer if record.get("init_from") else None
    data = load_text(record["data"], config.tokenizer, config.vocab_size, fixed=fixed)  # cached
    train_text = data.tokenizer.decode(np.asarray(data.train))
    heldout_text = data.tokenizer.decode(np.asarray(data.val))
    count = n or TEXT_N
    log(f"sampling {count} texts of {max_new_tokens} tokens from {run_dir} (seed {seed})")
    samples = generate(model, GenerationRequest(n=count, seed=seed, max_new_tokens=max_new_tokens))
    overlap = ngram_overlap(samples.texts, train_text, heldout_text, seed=seed)
    return {"ngram_overlap": overlap, "n_train": len(train_text), "n_heldout": len(heldout_text),
            "n_generated": count, "notes": []}
