"""Tests for the GPT text model: tokenizers, the token cache, batches, attention, the KV cache,
validation loss, the CLI and exact resume. Tiny models and tiny text in temporary folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from genlab.config import TrainConfig
from genlab.errors import UserError
from genlab.modalities import MODALITIES
from genlab.models.gpt import GPT, GPTConfig, KVCache
from genlab.runs import TrainRequest, train
from genlab.text import data as text_data
from genlab.text.data import TextBatcher, load_text, validation_windows
from genlab.text.sampling import next_token, stream_text
from genlab.text.tokenizer import BPETokenizer, CharTokenizer, tokenizer_from_dict

TINY = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16}
TINY_SET = tuple(f"model.{k}={v}" for k, v in TINY.items())
TRAIN_SET = ("train.log_every=1", "train.sample_every=0", "train.checkpoint_every=0",
             "train.eval_every=2", "train.warmup_steps=1")
TEXT = "Tiny text, with ünïcödé ✓ and\nnew lines.\n"


@pytest.fixture(autouse=True)
def one_thread():
    """Ops this small run faster on one thread than handed between two (and the cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed: int = 0, **changes) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**TINY, "vocab_size": 11, **changes})).eval()


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


# --- tokenizers -----------------------------------------------------------------------------------

def test_char_tokenizer_round_trip():
    tok = CharTokenizer.train(TEXT)
    assert tok.vocab_size == len(set(TEXT)) and list(tok.chars) == sorted(set(TEXT))
    ids = tok.encode(TEXT)
    assert ids.dtype == np.int64 and len(ids) == len(TEXT)
    assert tok.decode(ids) == TEXT
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert np.array_equal(again.encode(TEXT), ids)
    with pytest.raises(UserError, match="'QZ'"):
        tok.encode("Tiny QZ")


def test_bpe_tokenizer_round_trip():
    tok = BPETokenizer.train(TEXT * 20, vocab_size=300)
    assert 256 < tok.vocab_size <= 300  # bytes plus learned merges
    ids = tok.encode(TEXT)
    assert len(ids) < len(TEXT.encode())  # merges shorten the byte sequence
    assert tok.decode(ids) == TEXT
    unseen = "Ωmega ≠ alpha 🙂"  # any UTF-8 text encodes: the base alphabet is bytes
    assert tok.decode(tok.encode(unseen)) == unseen
    again = tokenizer_from_dict(json.loads(json.dumps(tok.to_dict())))
    assert np.array_equal(again.encode(TEXT), ids)
    with pytest.raises(UserError, match="at least 257"):
        BPETokenizer.train(TEXT, vocab_size=100)


def test_stream_text_never_shows_half_characters():
    tok = BPETokenizer.train("plain ascii words only " * 20, vocab_size=260)
    ids = tok.encode("ab ✓é🙂 cd").tolist()  # multi-byte characters, one byte token each
    pieces = list(stream_text(tok.decode, ids[:1], (torch.tensor([i]) for i in ids[1:])))
    assert "".join(pieces) == "ab ✓é🙂 cd"
    assert not any("\ufffd" in p for p in pieces)


# --- data: the cache, splits, batches, errors -------------------------------------------------------

def test_cache_is_reused_and_keyed_by_content(tmp_path, monkeypatch):
    source = write(tmp_path / "a.txt", TEXT * 30)
    first = load_text(f"text:{source}", "char")
    assert isinstance(first.train, np.memmap) and first.train.dtype == np.uint16
    cut = int(len(TEXT * 30) * 0.9)
    assert first.tokenizer.decode(first.train) == (TEXT * 30)[:cut]
    assert first.tokenizer.decode(first.val) == (TEXT * 30)[cut:]
    folder = Path(text_data.data_root()) / "text" / f"{first.file_sha256[:24]}-char"
    assert (folder / "meta.json").is_file() and (folder / "train.npy").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]  # nothing beside the file

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded again instead of reading the cache")

    monkeypatch.setattr(text_data, "train_tokenizer", no_encoding)
    again = load_text(f"text:{source}", "char")
    assert np.array_equal(again.train, first.train)
    assert again.tokens_sha256 == first.tokens_sha256
    write(source, TEXT * 31)  # new content, new key: encoded afresh
    with pytest.raises(AssertionError, match="encoded again"):
        load_text(f"text:{source}", "char")


def test_bpe_tokens_cached_separately(tmp_path):
    source = write(tmp_path / "a.txt", TEXT * 30)
    char = load_text(f"text:{source}", "char")
    bpe = load_text(f"text:{source}", "bpe", 280)
    assert bpe.tokenizer.kind == "bpe" and len(bpe.train) < len(char.train)
    assert bpe.tokens_sha256 != char.tokens_sha256


def test_batches_are_a_pure_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    a = TextBatcher(tokens, block_size=8, batch_size=4, seed=3, device="cpu")
    b = TextBatcher(tokens, block_size=8, batch_size=4, seed=3, device="cpu")
    batch = a.batch(5)["tokens"]
    assert batch.shape == (4, 9) and batch.dtype == torch.long
    assert torch.equal(batch - batch[:, :1], torch.arange(9).expand(4, 9))  # contiguous windows
    assert torch.equal(b.batch(5)["tokens"], batch)  # another batcher, same (seed, step)
    assert torch.equal(a.batch(5)["tokens"], batch)  # order of calls does not matter
    assert not torch.equal(a.batch(6)["tokens"], batch)
    other = TextBatcher(tokens, block_size=8, batch_size=4, seed=4, device="cpu")
    assert not torch.equal(other.batch(5)["tokens"], batch)
    halves = [TextBatcher(tokens, 8, 4, 3, "cpu", rank=r, world_size=2).batch(5)["tokens"]
              for r in (0, 1)]
    assert torch.equal(torch.cat(halves), batch)


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary"),
    (b"caf\xe9 au lait", r"not UTF-8 text \(invalid byte at offset 3\)"),
    ("x" * 100, r"validation split has 10 tokens, block size is 16"),
    ("ab" * 200 + "Z" * 10, r"training split lacks: 'Z'"),
])
def test_bad_text_files_are_user_errors(tmp_path, content, message):
    source = write(tmp_path / "bad.txt", content)
    config = GPTConfig(**TINY)
    with pytest.raises(UserError, match=message):
        MODALITIES["text"].prepare(f"text:{source}", None, GPT, config, TrainConfig(batch_size=2),
                     conditional=False, device=torch.device("cpu"))


def test_data_spec_errors(tmp_path):
    with pytest.raises(UserError, match="text:PATH"):
        load_text("digits", "char")
    with pytest.raises(UserError, match="does not exist"):
        load_text(f"text:{tmp_path / 'missing.txt'}", "char")


# --- the model ------------------------------------------------------------------------------------

def test_attention_is_scaled_dot_product_per_head():
    model = tiny_model()
    attn, x = model.blocks[0].attn, torch.randn(2, 5, 16)
    q, k, v = attn.qkv(x).split(16, dim=2)
    heads = [t.view(2, 5, 2, 8).transpose(1, 2) for t in (q, k, v)]  # (B, nh, T, d_k = 8)
    scores = heads[0] @ heads[1].transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    manual = (scores.softmax(-1) @ heads[2]).transpose(1, 2).reshape(2, 5, 16)
    torch.testing.assert_close(attn(x), attn.proj(manual), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rotary", [False, True])
def test_causal_mask_hides_future_tokens(rotary):
    model = tiny_model(rotary=rotary)
    ids = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 11
    a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=0, rtol=0)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_init_scales_residual_projections():
    model = GPT(GPTConfig(n_layer=8, n_head=2, n_embd=64, block_size=8, vocab_size=50))
    assert model.lm_head.weight is model.wte.weight  # tied
    proj_std = torch.cat([b.mlp.proj.weight.flatten() for b in model.blocks]).std().item()
    fc_std = torch.cat([b.mlp.fc.weight.flatten() for b in model.blocks]).std().item()
    assert fc_std == pytest.approx(0.02, rel=0.05)
    assert proj_std == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


def test_relu2_activation_is_relu_squared():
    mlp = tiny_model(activation="relu2").blocks[0].mlp
    x = torch.randn(3, 16)
    torch.testing.assert_close(mlp(x), mlp.proj(torch.relu(mlp.fc(x)) ** 2))


@pytest.mark.parametrize("rotary", [False, True])
def test_kv_cache_matches_full_forward(rotary):
    model = tiny_model(rotary=rotary)
    ids = torch.randint(0, 11, (3, 16), generator=torch.Generator().manual_seed(1))
    full = model(ids)
    cache = KVCache(model.config.n_layer, model.config.block_size)
    pieces = [model(ids[:, :5], cache), model(ids[:, 5:9], cache)]  # prefill, then a chunk
    pieces += [model(ids[:, t:t + 1], cache) for t in range(9, 16)]  # then token by token
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("rotary", [False, True])
def test_sampling_with_and_without_cache_gives_the_same_tokens(rotary):
    model = tiny_model(rotary=rotary)
    kw = {"prompt_ids": [1, 2, 3], "max_new_tokens": 14, "temperature": 1.0}  # 3 + 14 - 1 = 16
    cached = model.sample(4, generator=torch.Generator().manual_seed(7), **kw)
    plain = model.sample(4, generator=torch.Generator().manual_seed(7), use_cache=False, **kw)
    assert cached.shape == (4, 17) and torch.equal(cached[:, :3], torch.tensor([[1, 2, 3]] * 4))
    assert torch.equal(cached, plain)
    assert not torch.equal(cached, model.sample(4, generator=torch.Generator().manual_seed(8),
                                                **kw))


def test_cache_slides_past_the_context_as_documented():
    """Past block_size the cache is rebuilt from the last block_size // 2 tokens."""
    model = tiny_model()
    ids = model.sample(1, prompt_ids=[1], max_new_tokens=40, temperature=0)  # greedy
    assert ids.shape == (1, 41)
    plain = model.sample(1, prompt_ids=[1], max_new_tokens=40, temperature=0, use_cache=False)
    assert torch.equal(ids[:, :17], plain[:, :17])  # within the context the paths agree
    # token 17 follows a full window: it is predicted from the last 8 tokens, re-encoded
    assert model(ids[:, 9:17])[0, -1].argmax() == ids[0, 17]
    # the next ones continue that window through the cache
    assert model(ids[:, 9:18])[0, -1].argmax() == ids[0, 18]


def test_long_prompt_is_cropped_with_a_warning(caplog):
    model = tiny_model()
    out = model.sample(2, prompt_ids=list(range(11)) * 3, max_new_tokens=2)
    assert out.shape == (2, 35)
    assert "the prompt has 33 tokens, more than the context of 16" in caplog.text


def test_top_k_and_top_p_keep_only_likely_tokens():
    logits = torch.tensor([[4.0, 3.0, 0.0, -1.0, -2.0]]).expand(200, 5)
    g = torch.Generator().manual_seed(0)
    assert set(next_token(logits, generator=g, top_k=2).tolist()) == {0, 1}
    # p(0) = 0.72, p(0) + p(1) = 0.99: top_p 0.5 keeps token 0 alone, 0.9 keeps tokens 0 and 1
    assert set(next_token(logits, generator=g, top_p=0.5).tolist()) == {0}
    assert set(next_token(logits, generator=g, top_p=0.9).tolist()) == {0, 1}
    assert set(next_token(logits, generator=g, temperature=0).tolist()) == {0}
    with pytest.raises(UserError, match="--top-p"):
        tiny_model().sample(1, top_p=1.5, max_new_tokens=1)


# --- runs: validation loss, CLI, resume -------------------------------------------------------------

def test_validation_loss_covers_the_split_and_is_deterministic(tmp_path):
    source = write(tmp_path / "v.txt", (TEXT * 40)[:1500])
    val = load_text(f"text:{source}", "char").val
    windows = validation_windows(val, 16)
    assert sum(w[:, 1:].size for w in windows) == len(val) - 1  # every target once
    assert np.array_equal(np.concatenate([w[:, 1:].ravel() for w in windows]), val[1:])

    config = GPTConfig(**TINY)
    prepared = MODALITIES["text"].prepare(f"text:{source}", None, GPT, config, TrainConfig(batch_size=4),
                            conditional=False, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = GPT(prepared.model_config)
    record = {"data": f"text:{source}"}
    evaluate, key = MODALITIES["text"].training_evaluator(model, prepared, record, None,
                                                          torch.device("cpu"))
    first, second = evaluate(1), evaluate(2)
    assert key == "val_loss" and first == second
    ids = torch.from_numpy(val.astype(np.int64))[None]
    ends = [(s, min(s + 16, len(val) - 1)) for s in range(0, len(val) - 1, 16)]
    manual = sum(F.cross_entropy(model(ids[:, s:e])[0], ids[0, s + 1:e + 1], reduction="sum").item()
                 for s, e in ends)
    assert first["val_loss"] == pytest.approx(manual / (len(val) - 1), rel=1e-5)
    assert first["val_bpc"] == pytest.approx(first["val_loss"] / math.log(2))


def test_train_then_sample_from_the_cli(tmp_path, run_cli, text_file):
    out = tmp_path / "run"
    code, stdout, err = run_cli("train", "gpt", "--data", f"text:{text_file}", "--steps", "5",
                                "--batch-size", "4", "--out", out, "--device", "cpu",
                                *(x for s in (*TINY_SET, *TRAIN_SET) for x in ("--set", s)))
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) and r["bpc"] == pytest.approx(r["loss"] / math.log(2))
               for r in rows if "loss" in r)
    assert [r["step"] for r in rows if "eval/val_loss" in r] == [2, 4, 5]
    assert (out / "best" / "manifest.json").is_file()
    assert (out / "samples.txt").read_text().startswith("--- sample 1 (step 5, seed 0) ---")
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["extras"]["tokenizer"]["kind"] == "char"

    args = ("sample", out, "--prompt", "the quick", "--max-new-tokens", "30", "--temperature",
            "0.8", "--top-k", "5", "--top-p", "0.95", "--seed", "1")
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    assert stdout.startswith("the quick") and len(stdout) == len("the quick") + 30 + 1
    assert run_cli(*args)[1] == stdout  # same seed, same text
    code, _, _ = run_cli("sample", out, "--n", "3", "--max-new-tokens", "10",
                         "--out", tmp_path / "s.txt")
    assert code == 0 and (tmp_path / "s.txt").read_text().count("--- sample") == 3
    code, _, err = run_cli("sample", out, "--prompt", "QUICK ☃")
    assert code == 2 and "'CIKQU☃'" in err and "Traceback" not in err


def _train_tiny(out: Path, data: str, steps: int, resume: bool = False) -> Path:
    if resume:
        req = TrainRequest(resume=str(out), steps=steps, device="cpu")
    else:
        req = TrainRequest(model="gpt", data=data, steps=steps, batch_size=4, out=str(out),
                           device="cpu", overrides=(*TINY_SET, *TRAIN_SET, "model.dropout=0.1",
                                                    "model.tokenizer=bpe", "model.vocab_size=280",
                                                    "train.lr_decay_steps=4"))
    return train(req)


def test_resume_is_exact(tmp_path, text_file):
    data = f"text:{text_file}"
    straight = _train_tiny(tmp_path / "straight", data, 4)
    halves = _train_tiny(tmp_path / "halves", data, 2)
    _train_tiny(halves, data, 4, resume=True)
    a = load_file(straight / "checkpoint" / "model.safetensors")
    b = load_file(halves / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (straight, halves)]
    assert [r.get("loss") for r in losses[0]] == [r.get("loss") for r in losses[1]]


# --- fine-tuning on another text ------------------------------------------------------------------

def _train_char(out: Path, text: Path, steps: int, overrides: tuple = (), **request) -> Path:
    req = TrainRequest(model="gpt", data=f"text:{text}", steps=steps, batch_size=4, out=str(out),
                       device="cpu", overrides=(*TINY_SET, *TRAIN_SET, *overrides), **request)
    return train(req)


def test_init_from_keeps_the_source_tokenizer(tmp_path):
    source_text = write(tmp_path / "a.txt", "the quick brown fox jumps over the lazy dog.\n" * 20)
    source = _train_char(tmp_path / "src", source_text, 2)
    # a text using fewer characters: its own char vocabulary would be smaller and in another order
    subset = write(tmp_path / "b.txt", "the dog jumps over the fox.\n" * 20)
    tuned = _train_char(tmp_path / "tuned", subset, 3, init_from=str(source),
                        overrides=("train.lr_decay_steps=4",))
    source_tok = json.loads((source / "checkpoint" / "state.json").read_text())["extras"]
    tuned_tok = json.loads((tuned / "checkpoint" / "state.json").read_text())["extras"]
    assert tuned_tok == source_tok
    record = json.loads((tuned / "run.json").read_text())
    assert record["model_config"]["vocab_size"] == len(source_tok["tokenizer"]["chars"])
    # the batches are the new text in the source's ids
    tok = tokenizer_from_dict(source_tok["tokenizer"])
    data = load_text(f"text:{subset}", "char", fixed=tok)
    assert tok.decode(data.train[:28]) == "the dog jumps over the fox.\n"
    # a resumed fine-tuning run still encodes with that tokenizer (same tokens: same checksum)
    train(TrainRequest(resume=str(tuned), steps=4, device="cpu"))
    assert json.loads((tuned / "checkpoint" / "state.json").read_text())["step"] == 4


def test_init_from_with_characters_the_source_lacks(tmp_path):
    source = _train_char(tmp_path / "src", write(tmp_path / "a.txt", "abc abc.\n" * 30), 1)
    other = write(tmp_path / "b.txt", "abc XYZ.\n" * 30)
    with pytest.raises(UserError, match=r"--init-from: .*source model's char tokenizer.*'XYZ'"):
        _train_char(tmp_path / "tuned", other, 1, init_from=str(source))


def test_a_tiny_temperature_samples_the_likeliest_token_instead_of_failing():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, -1.0, 0.25]])
    g = torch.Generator().manual_seed(0)
    for temperature in (1e-87, 1e-30, 1e-3, 5e-324):
        assert next_token(logits, generator=g, temperature=temperature).tolist() == [1, 0]
