"""GPT: a decoder-only transformer over tokens (model `gpt`), with a KV cache for sampling.

GPT-2 (Radford et al. 2019) laid out as in nanoGPT: token embeddings plus learned positions (or
rotary positions, Su et al. 2021, https://arxiv.org/abs/2104.09864), pre-norm blocks of causal
self-attention and an MLP, a final layer norm, and an output layer tied to the token embedding (Press
& Wolf 2017, https://arxiv.org/abs/1608.05859). Attention is softmax(Q Kᵀ / √d_k) V, d_k the width of
one head, computed by `F.scaled_dot_product_attention` (flash attention on a GPU).

The KV cache: every layer keeps the keys and values of the tokens fed so far, so each new token is
one pass of that token against the cache, O(T), instead of a pass over the whole context, O(T²).
Within `block_size` tokens the cached path computes what the full pass computes. Past it the window
must slide, and cached keys cannot slide with it: positions, and through them every layer's keys,
depend on where the window starts. So when the cache is full it is rebuilt from the last
`block_size // 2` tokens in one pass and then fills again: the model sees between half and all of
`block_size` tokens, at O(T) per token amortised. Without the cache (`use_cache=False`) the model
always sees the last `block_size` tokens, so the two paths agree up to `block_size` tokens only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlab.config import check_at_most, check_finite_fields
from genlab.errors import UserError
from genlab.limits import MAX_CONTEXT, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH
from genlab.log import get_logger
from genlab.models.base import GenerativeModel
from genlab.text.sampling import check_sampling_args, next_token
from genlab.text.tokenizer import DEFAULT_BPE_VOCAB, Tokenizer, tokenizer_from_dict

log = get_logger(__name__)


@dataclass
class GPTConfig:
    n_layer: int = 6  # transformer blocks
    n_head: int = 6  # attention heads; n_embd must be divisible by it
    n_embd: int = 384  # width of the residual stream
    block_size: int = 256  # context length in tokens
    dropout: float = 0.0  # on embeddings, attention weights and residual branches
    bias: bool = False  # biases in linear layers and layer norms
    rotary: bool = False  # rotary position embeddings instead of learned ones
    activation: Literal["gelu", "relu2"] = "gelu"  # of the MLP; relu2 = ReLU squared (Primer)
    tokenizer: Literal["char", "bpe"] = "char"  # built from the training split
    vocab_size: int = 0  # char: 0 = the training text's characters; bpe: tokens to learn (0 = 1024)

    def validate(self, *, partial: bool = False) -> None:
        """Every rule; `partial`: only those that do not need the data (the vocabulary size)."""
        check_finite_fields(self, "model")
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if partial and name == "vocab_size" and self.vocab_size == 0:
                continue
            if getattr(self, name) <= 0:
                hint = " (set from the data)" if name == "vocab_size" else ""
                raise UserError(f"model.{name} must be > 0{hint}, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise UserError(f"model.n_embd ({self.n_embd}) must be divisible by model.n_head "
                            f"({self.n_head})")
        if self.rotary and (self.n_embd // self.n_head) % 2:
            raise UserError(f"model.rotary needs an even head width, got n_embd / n_head = "
                            f"{self.n_embd // self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"model.dropout must be in [0, 1), got {self.dropout}")
        check_at_most(self, "model", {"n_layer": MAX_LAYERS, "n_embd": MAX_WIDTH,
                                      "block_size": MAX_CONTEXT, "vocab_size": MAX_VOCAB})


class KVCache:
    """Keys and values of each layer for the first `length` positions of a `capacity` window."""

    def __init__(self, n_layer: int, capacity: int) -> None:
        self.capacity, self.length = capacity, 0
        self.keys: list[Tensor | None] = [None] * n_layer
        self.values: list[Tensor | None] = [None] * n_layer

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store `k`, `v` (B, nh, T_new, hd) after the cached positions; return all so far."""
        if self.keys[layer] is None:  # allocated once, in the dtype autocast gives the keys
            shape = (*k.shape[:2], self.capacity, k.shape[3])
            self.keys[layer], self.values[layer] = k.new_empty(shape), v.new_empty(shape)
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: {end} positions, capacity {self.capacity}")
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]


def rotary_tables(head_dim: int, length: int, base: float = 10000.0) -> tuple[Tensor, Tensor]:
    """cos and sin (length, head_dim / 2) of each position's rotation angles."""
    freqs = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), freqs)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of each head's channels (B, nh, T, hd) by position (T, hd / 2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
              dropout: float) -> Tensor:
    """softmax(Q Kᵀ / √d_k) V through `F.scaled_dot_product_attention` (flash on a GPU)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        # PyTorch's CPU flash-attention backward is ~4x slower in bf16 than in fp32 (torch 2.13,
        # AVX-512), so on a CPU only the matmuls around attention run in bf16
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask,
                                                  is_causal=causal, dropout_p=dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                          dropout_p=dropout)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = config.n_head, config.dropout
        self.qkv = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        B, T, C = x.shape
        start = cache.length if cache is not None else 0
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for t in (q, k, v))  # (B, nh, T, hd)
        if rope is not None:
            cos, sin = rope[0][start:start + T], rope[1][start:start + T]
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.extend(layer, k, v)  # (B, nh, start + T, hd)
        # query i sits at position start + i and sees keys 0 .. start + i
        mask, causal = None, T > 1 and start == 0
        if T > 1 and start > 0:
            mask = (torch.arange(T, device=x.device)[:, None] + start
                    >= torch.arange(start + T, device=x.device))
        y = attention(q, k, v, mask, causal, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.proj(y))


class MLP(nn.Module):
    """Two layers, 4x wide inside. GELU (tanh form, as GPT-2) or ReLU squared, which is cheaper and
    trains faster at small scale (Primer, So et al. 2021, https://arxiv.org/abs/2109.08668)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.relu2 = config.activation == "relu2"

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        h = F.relu(h).square() if self.relu2 else F.gelu(h, approximate="tanh")
        return self.dropout(self.proj(h))


class Block(nn.Module):
    """Pre-norm: x + attn(ln(x)), then x + mlp(ln(x)) (GPT-2)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None = None,
                cache: KVCache | None = None, layer: int = 0) -> Tensor:
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(GenerativeModel):
    name = "gpt"
    description = "decoder-only transformer for text (GPT-2 style), char or byte-level BPE tokens"
    config_class = GPTConfig
    modality = "text"
    default_preset = "shakespeare-char"
    tiny_config = {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16}

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        config.validate()
        c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = None if c.rotary else nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        if c.rotary:  # not saved: rebuilt from the config
            cos, sin = rotary_tables(c.n_embd // c.n_head, c.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(_init_weights)
        # GPT-2: residual projections scaled by 1/sqrt(2 n_layer), one per residual branch
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.proj):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * c.n_layer))
        self.tokenizer: Tokenizer | None = None  # from the data, or the checkpoint's extras
        self._train_forward = self.forward

    # --- configuration -----------------------------------------------------------------------------

    @classmethod
    def config_for_data(cls, config: GPTConfig, data: Any, *, conditional: bool) -> GPTConfig:
        """The vocabulary size from the tokenizer built on `data` (a `TextData`)."""
        learned = data.tokenizer.vocab_size
        if config.tokenizer == "bpe":
            return type(config)(**{**config.__dict__,
                                   "vocab_size": config.vocab_size or DEFAULT_BPE_VOCAB})
        if config.vocab_size and config.vocab_size < learned:
            raise UserError(f"model.vocab_size={config.vocab_size} is smaller than the "
                            f"{learned} characters of the training text; leave it at 0")
        return type(config)(**{**config.__dict__, "vocab_size": config.vocab_size or learned})

    def compile_networks(self, mode: str = "default") -> None:
        # the training forward only: sampling's growing KV cache would recompile at every length
        self._train_forward = torch.compile(self.forward, mode=mode)

    # --- forward and loss --------------------------------------------------------------------------

    def forward(self, idx: Tensor, cache: KVCache | None = None, *,
                last_only: bool = False) -> Tensor:
        """Logits (B, T, V) for token ids (B, T); with `cache`, positions continue after it."""
        T = idx.shape[1]
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"{start + T} positions exceed block_size {self.config.block_size}")
        x = self.wte(idx)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + T, device=idx.device))
        else:
            rope = (self.rope_cos, self.rope_sin)
        x = self.drop(x)
        for layer, block in enumerate(self.blocks):
            x = block(x, rope, cache, layer)
        if cache is not None:
            cache.length += T
        x = self.ln_f(x[:, -1:] if last_only else x)
        return self.lm_head(x)  # (B, T or 1, V)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Mean next-token cross-entropy in nats; `bpc` (bits per character) for char models."""
        tokens = batch["tokens"]  # (B, T + 1)
        inputs, targets = tokens[:, :-1], tokens[:, 1:]
        logits = self._train_forward(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))
        out = {"loss": loss}
        if self.config.tokenizer == "char":
            out["bpc"] = loss / math.log(2)
        return out

    # --- generation --------------------------------------------------------------------------------

    @torch.no_grad()  # not inference_mode: samples may feed later autograd work
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               prompt_ids: Sequence[int] | Tensor | None = None, max_new_tokens: int = 256,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               use_cache: bool = True) -> Tensor:
        """Token ids (n, P + max_new_tokens): the prompt, then the new tokens.

        Without a prompt, every sequence starts from a newline (token 0 if there is none).
        """
        ids = self.prompt_batch(n, prompt_ids)
        was_training = self.training
        self.eval()  # no dropout while sampling
        try:
            new = list(self.generate(ids, max_new_tokens=max_new_tokens, generator=generator,
                                     temperature=temperature, top_k=top_k, top_p=top_p,
                                     use_cache=use_cache))
        finally:
            self.train(was_training)
        return torch.cat([ids, torch.stack(new, dim=1)], dim=1) if new else ids

    def prompt_batch(self, n: int, prompt_ids: Sequence[int] | Tensor | None = None) -> Tensor:
        """The prompt repeated for `n` sequences, (n, P) on the model's device."""
        if prompt_ids is None:
            prompt_ids = self._start_ids()
        ids = torch.as_tensor(prompt_ids, dtype=torch.long, device=self.device)
        if ids.dim() == 1:
            ids = ids[None].expand(n, -1)
        if ids.shape[0] != n or ids.shape[1] == 0:
            raise UserError(f"the prompt must hold at least one token for each of the {n} "
                            f"sequences, got shape {tuple(ids.shape)}")
        if ids.min() < 0 or ids.max() >= self.config.vocab_size:
            raise UserError(f"prompt token ids must be in [0, {self.config.vocab_size})")
        return ids

    def _start_ids(self) -> list[int]:
        if self.tokenizer is not None:
            try:
                return self.tokenizer.encode("\n").tolist()
            except UserError:  # a vocabulary without newlines
                pass
        return [0]

    @torch.no_grad()  # not inference_mode: samples may feed later autograd work
    def generate(self, ids: Tensor, *, max_new_tokens: int, generator: torch.Generator | None = None,
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 use_cache: bool = True) -> Iterator[Tensor]:
        """Yield the next token of every sequence (N,), `max_new_tokens` times, after `ids` (N, P)."""
        check_sampling_args(temperature, top_k, top_p, max_new_tokens)
        block = self.config.block_size
        if ids.shape[1] > block:
            log.warning(f"the prompt has {ids.shape[1]} tokens, more than the context of "
                        f"{block}; the model sees the last {block}")
        cache = None
        for _ in range(max_new_tokens):
            with self.autocast():
                if not use_cache:
                    logits = self(ids[:, -block:], last_only=True)
                elif cache is None or cache.length == block:
                    # first pass, or a full window: encode the recent tokens afresh (module doc)
                    context = ids[:, -block:] if cache is None else ids[:, -max(1, block // 2):]
                    cache = KVCache(self.config.n_layer, block)
                    logits = self(context, cache, last_only=True)
                else:
                    logits = self(ids[:, -1:], cache, last_only=True)
            token = next_token(logits[:, -1], generator=generator, temperature=temperature,
                               top_k=top_k, top_p=top_p)
            ids = torch.cat([ids, token[:, None]], dim=1)
            yield token

    # --- the tokenizer travels with the checkpoint ---------------------------------------------------

    def checkpoint_extras(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer.to_dict()} if self.tokenizer is not None else {}

    def load_checkpoint_extras(self, extras: dict[str, Any]) -> None:
        if "tokenizer" not in extras:
            return
        tokenizer = tokenizer_from_dict(extras["tokenizer"])
        if tokenizer.vocab_size > self.config.vocab_size:
            raise UserError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model only "
                            f"{self.config.vocab_size}; the checkpoint is inconsistent")
        self.tokenizer = tokenizer


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
