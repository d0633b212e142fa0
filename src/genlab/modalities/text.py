"""The text modality: `text:PATH` tokenized and cached, text samples (streamed or in files),
validation loss and perplexity."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from genlab.config import TrainConfig
from genlab.errors import UserError
from genlab.generation import GenerationRequest, RequestError, check_request
from genlab.images import write_bytes
from genlab.log import get_logger
from genlab.modalities.base import Modality, Prepared, Samples, TrainingEvaluator
from genlab.models.base import GenerativeModel
from genlab.text.data import PREFIX, TextBatcher, check_split, load_text, validation_windows
from genlab.text.sampling import stream_text
from genlab.text.tokenizer import tokenizer_from_dict
from genlab.version import __version__

log = get_logger(__name__)

SAMPLES_N, SAMPLES_TOKENS = 4, 300  # sequences and new tokens per training-time sample file
EVAL_BATCH = 64  # validation windows per forward pass
TINY_TEXT = "the quick brown fox jumps over the lazy dog. pack my box with five dozen jugs!\n"


@dataclass
class TextSamples(Samples):
    """Generated token ids `(N, T)` and their decoded texts."""

    ids: torch.Tensor
    texts: list[str]

    formats: ClassVar[dict[str, str]] = {"txt": ".txt"}

    @property
    def count(self) -> int:
        return len(self.texts)

    def encode(self, fmt: str) -> bytes:
        if fmt != "txt":
            raise UserError(f"unknown text format {fmt!r}; allowed: txt")
        if len(self.texts) == 1:
            text = self.texts[0]
        else:
            text = "\n".join(f"--- sample {i + 1} ---\n{t}\n" for i, t in enumerate(self.texts))
        return (text if text.endswith("\n") else text + "\n").encode()


def _tokenizer(model: GenerativeModel) -> Any:
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UserError("this checkpoint holds no tokenizer, so its text cannot be decoded; "
                        "retrain it with this genlab version")
    return tokenizer


def _prompt_ids(model: GenerativeModel, r: GenerationRequest) -> torch.Tensor:
    try:
        prompt = _tokenizer(model).encode(r.prompt).tolist() if r.prompt else None
    except UserError as e:
        raise RequestError("prompt", f"cannot be encoded: {e}") from None
    return model.prompt_batch(r.n, prompt)


def _sampling_kwargs(r: GenerationRequest, model: GenerativeModel) -> dict[str, Any]:
    return {"max_new_tokens": r.max_new_tokens, "temperature": r.temperature, "top_k": r.top_k,
            "top_p": r.top_p, "use_cache": r.use_cache,
            "generator": torch.Generator(device=model.device).manual_seed(r.seed)}


class TextModality(Modality):
    name = "text"
    feeds = "text"
    description = "UTF-8 text: text:PATH"
    unit = "tok"
    samples_class = TextSamples
    streams = True
    stdout_format = "txt"

    def claims(self, spec: str) -> bool:
        return spec.startswith(PREFIX)

    def prepare(self, spec: str, data_dir: str | None, model_cls: type[GenerativeModel],
                model_config: Any, train: TrainConfig, *, conditional: bool,
                device: torch.device, rank: int = 0, world_size: int = 1,
                init_extras: dict[str, Any] | None = None) -> Prepared:
        """Tokenize `text:PATH` (or read the cache) and build the batcher; the tokenizer goes to
        the model through `Prepared.extras`. A run started `--init-from` another keeps that
        model's tokenizer (`init_extras`): its embeddings only mean anything for those ids."""
        if conditional:
            raise UserError(f"{model_cls.name} has no conditional variant (text has no labels)")
        if train.per_class:
            raise UserError("train.per_class needs labelled images; text has no classes")
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
        if data.note:
            log.warning(data.note)
        model_config = model_cls.config_for_data(model_config, data, conditional=conditional)
        check_split(data.val, model_config.block_size, "validation")  # before any training
        batcher = TextBatcher(data.train, model_config.block_size, train.batch_size, train.seed,
                              device, rank, world_size)
        info = {"name": data.name, "sha256": data.tokens_sha256, "file_sha256": data.file_sha256,
                "tokenizer": data.tokenizer.kind, "tokenizer_vocab": data.tokenizer.vocab_size,
                "train_tokens": len(data.train), "val_tokens": len(data.val)}
        return Prepared(batcher, model_config, info,
                        extras={"tokenizer": data.tokenizer.to_dict()})

    def items_per_example(self, model: GenerativeModel) -> int:
        return model.config.block_size

    # --- generation --------------------------------------------------------------------------------

    def generate(self, model: GenerativeModel, request: GenerationRequest) -> TextSamples:
        r = check_request(model, request, text=True)
        tokenizer = _tokenizer(model)
        ids = model.sample(r.n, prompt_ids=_prompt_ids(model, r), **_sampling_kwargs(r, model))
        ids = ids.cpu()
        return TextSamples(ids, [tokenizer.decode(row) for row in ids])

    def stream(self, model: GenerativeModel, request: GenerationRequest) -> Iterator[str]:
        """The text of one sequence piece by piece: the prompt, then each new token's text, as it
        is generated (the same tokens as `generate` with the same request)."""
        r = check_request(model, request, text=True)
        if r.n != 1:
            raise RequestError("n", f"must be 1 when streaming, got {r.n}")
        tokenizer = _tokenizer(model)
        ids = _prompt_ids(model, r)
        model.eval()
        yield from stream_text(tokenizer.decode, ids[0].tolist(),
                               model.generate(ids, **_sampling_kwargs(r, model)))

    # --- during training ---------------------------------------------------------------------------

    def write_training_samples(self, model: GenerativeModel, run_dir: Path, step: int,
                               seed: int) -> Path:
        """`samples/step_N.txt` and `samples.txt`: a few sequences from a fixed seed."""
        samples = self.generate(model, GenerationRequest(n=SAMPLES_N, seed=seed,
                                                         max_new_tokens=SAMPLES_TOKENS))
        text = "\n".join(f"--- sample {i + 1} (step {step}, seed {seed}) ---\n{t}\n"
                         for i, t in enumerate(samples.texts))
        path = write_bytes(text.encode(), run_dir / "samples" / f"step_{step:07d}.txt")
        write_bytes(text.encode(), run_dir / "samples.txt")
        return path

    def training_evaluator(self, model: GenerativeModel, prepared: Prepared,
                           record: dict[str, Any], data_dir: str | None,
                           device: torch.device) -> TrainingEvaluator:
        """Validation loss over the whole validation split, the same windows every time."""
        windows = _validation_windows(model, record, device)

        def evaluate(step: int) -> dict[str, float]:
            return _validation_metrics(model, windows)

        return evaluate, "val_loss"

    # --- evaluation --------------------------------------------------------------------------------

    def evaluate_run(self, run_dir: Path, model: GenerativeModel, record: dict[str, Any], *,
                     n: int, seed: int, data_dir: str | None, which: str,
                     feature_net: str | None, iwae_k: int, real: str | None,
                     command: str | None, sample_options: dict[str, Any]) -> dict[str, Any]:
        """The validation loss (nats per token), perplexity and, for char models, bits per
        character, over the whole validation split (the last 10% of the text)."""
        if real is not None or feature_net is not None:
            raise UserError("--real and --feature-net apply to image runs; a text run is scored "
                            "on its own validation split")
        t0 = time.perf_counter()
        log.info(f"validation loss of {run_dir} on the last 10% of {record['data']}")
        windows = _validation_windows(model, record, model.device)
        report: dict[str, Any] = {**_validation_metrics(model, windows),
                                  "val_tokens": sum(int(w[:, 1:].numel()) for w in windows),
                                  "data": record["data"], "tokenizer": model.config.tokenizer,
                                  "provenance": {"genlab": __version__,
                                                 "step": model.checkpoint_step, "run": str(run_dir),
                                                 "which": which, "model": model.name,
                                                 "device": str(model.device), "command": command,
                                                 "eval_seconds": 0.0},
                                  "notes": []}
        report["provenance"]["eval_seconds"] = round(time.perf_counter() - t0, 3)
        return report

    def format_report(self, report: dict[str, Any]) -> str:
        lines = [f"validation loss {report['val_loss']:.4f} nats/token, perplexity "
                 f"{report['perplexity']:.3f}"]
        if report.get("val_bpc") is not None:
            lines.append(f"bits per character {report['val_bpc']:.4f}")
        prov = report["provenance"]
        lines.append(f"{report['val_tokens']} validation tokens of {report['data']}; "
                     f"step={prov.get('step')} genlab {prov['genlab']}")
        return "\n".join(lines)

    # --- the test battery ------------------------------------------------------------------------

    def tiny_data(self, folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "tiny.txt"
        path.write_text(TINY_TEXT * 40, encoding="utf-8")
        return f"{PREFIX}{path}"

    def check_samples(self, model: GenerativeModel, samples: torch.Tensor, n: int) -> None:
        assert samples.shape[0] == n and samples.dim() == 2 and not samples.is_floating_point()
        assert samples.min() >= 0 and samples.max() < model.config.vocab_size

    def cheap_sample_kwargs(self) -> dict[str, Any]:
        return {"max_new_tokens": 8}


def _validation_windows(model: GenerativeModel, record: dict[str, Any],
                        device: torch.device) -> list[torch.Tensor]:
    config = model.config
    # a fine-tuned run's text was encoded with its source's tokenizer (see `prepare`)
    fixed = model.tokenizer if record.get("init_from") else None
    val = load_text(record["data"], config.tokenizer, config.vocab_size, fixed=fixed).val  # cached
    return [torch.from_numpy(w).to(device) for w in validation_windows(val, config.block_size)]


def _validation_metrics(model: GenerativeModel, windows: list[torch.Tensor]) -> dict[str, float]:
    loss = validation_loss(model, windows)
    out = {"val_loss": loss, "perplexity": math.exp(min(loss, 700.0))}
    if model.config.tokenizer == "char":
        out["val_bpc"] = loss / math.log(2)
    return out


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
