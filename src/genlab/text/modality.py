"""The text modality for `genlab.runs`: prepare `text:PATH`, write text samples, validation loss.

Registered in `runs.PREPARE`, `runs.WRITE_SAMPLES` and `runs.EVALUATORS` under "text".
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from genlab.checkpoint import atomic_write_text
from genlab.config import TrainConfig
from genlab.errors import UserError
from genlab.models.base import GenerativeModel
from genlab.text.data import TextBatcher, check_split, load_text, validation_windows
from genlab.text.tokenizer import tokenizer_from_dict

SAMPLES_N, SAMPLES_TOKENS = 4, 300  # sequences and new tokens per sample file
EVAL_BATCH = 64  # validation windows per forward pass


def prepare_text(spec: str, data_dir: str | None, model_cls: type[GenerativeModel],
                 model_config: Any, train: TrainConfig, *, conditional: bool,
                 device: torch.device, rank: int = 0, world_size: int = 1,
                 init_extras: dict[str, Any] | None = None) -> Any:
    """Tokenize `text:PATH` (or read the cache) and build the batcher; the tokenizer goes to the
    model through `Prepared.extras`. A run started `--init-from` another keeps that model's
    tokenizer (`init_extras`): its embeddings only mean anything for those token ids."""
    from genlab.runs import Prepared  # genlab.runs imports this module

    fixed = None
    if init_extras and "tokenizer" in init_extras:
        fixed = tokenizer_from_dict(init_extras["tokenizer"])
    try:
        data = load_text(spec, model_config.tokenizer, model_config.vocab_size, fixed=fixed)
    except UserError as e:
        if fixed is None:
            raise
        raise UserError(f"--init-from: {spec} must be encoded with the source model's "
                        f"{fixed.kind} tokenizer, and {e}") from None
    model_config = model_cls.config_for_data(model_config, data, conditional=conditional)
    check_split(data.val, model_config.block_size, "validation")  # before any training
    batcher = TextBatcher(data.train, model_config.block_size, train.batch_size, train.seed,
                          device, rank, world_size)
    info = {"name": data.name, "sha256": data.tokens_sha256, "file_sha256": data.file_sha256,
            "tokenizer": data.tokenizer.kind, "tokenizer_vocab": data.tokenizer.vocab_size,
            "train_tokens": len(data.train), "val_tokens": len(data.val)}
    return Prepared(batcher, model_config, info, extras={"tokenizer": data.tokenizer.to_dict()})


def write_text_samples(model: GenerativeModel, run_dir: Path, step: int, seed: int) -> Path:
    """`samples/step_N.txt` and `samples.txt`: a few sequences from a fixed seed."""
    g = torch.Generator(device=model.device).manual_seed(seed)
    ids = model.sample(SAMPLES_N, generator=g, max_new_tokens=SAMPLES_TOKENS)
    parts = [f"--- sample {i + 1} (step {step}, seed {seed}) ---\n{model.tokenizer.decode(row)}\n"
             for i, row in enumerate(ids.cpu())]
    text = "\n".join(parts)
    path = run_dir / "samples" / f"step_{step:07d}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    atomic_write_text(run_dir / "samples.txt", text)
    return path


def make_text_evaluator(model: GenerativeModel, prepared: Any, record: dict[str, Any],
                        data_dir: str | None, device: torch.device) -> tuple[Any, str]:
    """Validation loss over the whole validation split, the same windows every time."""
    config = model.config
    fixed = model.tokenizer if record.get("init_from") else None  # as prepare_text encoded it
    val = load_text(record["data"], config.tokenizer, config.vocab_size, fixed=fixed).val  # cached
    windows = [torch.from_numpy(w).to(device) for w in validation_windows(val, config.block_size)]

    def evaluate(step: int) -> dict[str, float]:
        loss = validation_loss(model, windows)
        out = {"val_loss": loss}
        if config.tokenizer == "char":
            out["val_bpc"] = loss / math.log(2)
        return out

    return evaluate, "val_loss"


@torch.inference_mode()
def validation_loss(model: GenerativeModel, windows: list[torch.Tensor],
                    batch_windows: int = EVAL_BATCH) -> float:
    """Mean next-token loss in nats over every target of `windows` (each (n, T + 1))."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=model.device), 0
    for group in windows:
        for chunk in group.split(batch_windows):
            chunk = chunk.to(model.device)
            with model.autocast():
                logits = model(chunk[:, :-1])  # (B, T, V)
            targets = chunk[:, 1:]
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                   targets.reshape(-1), reduction="sum")
            total += loss.double()
            count += targets.numel()
    return total.item() / count
