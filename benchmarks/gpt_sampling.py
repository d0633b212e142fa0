"""GPT sampling speed on the CPU with and without the KV cache, for 1,000 new tokens.

    python benchmarks/gpt_sampling.py                               # the shakespeare-char-cpu shape
    python benchmarks/gpt_sampling.py --preset shakespeare-char     # the GPU preset's shape
    python benchmarks/gpt_sampling.py --run runs/my-gpt             # a trained run
    python benchmarks/gpt_sampling.py --threads 1                   # on a shared machine

Both paths draw one sequence from the same seed, so they give the same tokens while the sequence
fits the context (`block_size`); past it they differ by design (see genlab.models.gpt). Prints one
JSON line: tokens per second with and without the cache, their ratio, whether the tokens matched
within the context, and the model's shape. The weights do not change the speed, so without --run
the model is freshly initialised.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from genlab.models.gpt import GPT
from genlab.rundir import load_model
from genlab.runs import build_configs


def timed_sample(model: GPT, tokens: int, use_cache: bool, seed: int) -> tuple[torch.Tensor, float]:
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    ids = model.sample(1, generator=g, prompt_ids=[0], max_new_tokens=tokens, use_cache=use_cache)
    return ids, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="shakespeare-char-cpu")
    parser.add_argument("--run", help="a trained GPT run folder (instead of --preset)")
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--vocab-size", type=int, default=65, help="without --run (65: Shakespeare)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.run:
        model = load_model(args.run, device="cpu")
    else:
        _, config, _, _ = build_configs("gpt", preset=args.preset, overrides=[
            f"model.vocab_size={args.vocab_size}", "model.dropout=0"], flags={})
        torch.manual_seed(args.seed)
        model = GPT(config).eval()
    timed_sample(model, 8, True, args.seed)  # warm-up: first-call allocations
    cached, t_cache = timed_sample(model, args.tokens, True, args.seed)
    plain, t_plain = timed_sample(model, args.tokens, False, args.seed)
    block = model.config.block_size
    print(json.dumps({
        "new_tokens": args.tokens,
        "tokens_per_s_cache": round(args.tokens / t_cache, 1),
        "tokens_per_s_no_cache": round(args.tokens / t_plain, 1),
        "speedup": round(t_plain / t_cache, 2),
        "same_tokens_within_context": bool(torch.equal(cached[:, :block + 1], plain[:, :block + 1])),
        "block_size": block, "n_layer": model.config.n_layer, "n_embd": model.config.n_embd,
        "params": sum(p.numel() for p in model.parameters()),
        "device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
