"""Choosing the next token from logits: temperature, top-k, nucleus (top-p); and streaming text."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from genlab.limits import MAX_NEW_TOKENS, MAX_TEMPERATURE, MAX_VOCAB, Range


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None,
                        max_new_tokens: int) -> None:
    """Each option in its range (NaN and inf never are): a `UserError` names the first outside."""
    Range(0, MAX_TEMPERATURE).check("--temperature (0 = greedy)", temperature)
    if top_k is not None:
        Range(1, MAX_VOCAB, integer=True).check("--top-k", top_k)
    if top_p is not None:
        Range(0, 1, low_open=True).check("--top-p", top_p)
    Range(0, MAX_NEW_TOKENS, integer=True).check("--max-new-tokens", max_new_tokens)


def next_token(logits: Tensor, *, generator: torch.Generator | None, temperature: float = 1.0,
               top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Draw one token per row of `logits` (N, V) -> (N,). Temperature 0 takes the argmax."""
    logits = logits.float()
    if temperature == 0:
        return logits.argmax(dim=-1)
    if temperature < torch.finfo(logits.dtype).tiny:  # it would divide by 0: the greedy limit
        return logits.argmax(dim=-1)
    if temperature < 1e-2:
        # the largest logit shifted to 0 first, so a tiny temperature (1e-87) sends the others
        # to -inf instead of every logit to +-inf, whose softmax is NaN (same maths)
        logits = logits - logits.max(dim=-1, keepdim=True).values
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        logits = _nucleus(logits, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


def _nucleus(logits: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of tokens whose probability reaches `top_p` (Holtzman et al. 2019,
    https://arxiv.org/abs/1904.09751); the most likely token always stays."""
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    # drop a token when the tokens before it already reach top_p
    drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def stream_text(decode: Callable[[list[int]], str], prompt_ids: list[int],
                tokens: Iterator[Tensor]) -> Iterator[str]:
    """Yield the text of one sequence piece by piece: the prompt, then each new token's text.

    The whole sequence is decoded each time and only the new suffix is yielded, so a character
    split over several byte-level tokens appears once it is complete (never a half character).
    """
    ids = list(prompt_ids)
    text = shown = decode(ids)
    yield shown
    for column in tokens:
        ids.append(int(column[0]))
        text = decode(ids)
        if not text.endswith("\ufffd"):  # else an unfinished UTF-8 sequence: wait for its bytes
            yield text[len(shown):]
            shown = text
    if text != shown:  # the sequence ended inside a character
        yield text[len(shown):]
