"""The contract battery (docs/architecture.md), run against every model in `genlab.models.MODELS`.

Each model is built the way `genlab train` builds it: tiny data in a temp folder, read through
`runs.PREPARE[modality]`, which lets `config_for_data` fill the data fields. A new model passes
this file unchanged once its class has a `tiny_config`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genlab.checkpoint import save_checkpoint
from genlab.config import TrainConfig, config_from_dict, config_to_dict
from genlab.models import MODELS, GenerativeModel
from genlab.runs import PREPARE, Prepared, load_model

# Keyword arguments that keep `sample` cheap, per modality.
SAMPLE_KW: dict[str, dict] = {"image": {}, "text": {"max_new_tokens": 8}}

N = 6  # samples per check


def _prepare(name: str, data_specs: dict[str, str], *, conditional: bool = False) -> Prepared:
    cls = MODELS[name]
    if not cls.tiny_config:
        pytest.fail(f"model {name!r} has no tiny_config; give its class one (config overrides "
                    "that make it tiny)")
    if cls.modality not in PREPARE or cls.modality not in data_specs:
        pytest.fail(f"model {name!r} has modality {cls.modality!r}, which has no runs.PREPARE entry "
                    "or no tiny dataset fixture in tests/conftest.py (data_specs)")
    config = config_from_dict(cls.config_class, cls.tiny_config, "model")
    train = TrainConfig(batch_size=8, seed=0)
    return PREPARE[cls.modality](data_specs[cls.modality], None, cls, config, train,
                                 conditional=conditional, device=torch.device("cpu"))


def _build(name: str, prepared: Prepared) -> GenerativeModel:
    config = prepared.model_config
    if hasattr(config, "validate"):
        config.validate()
    torch.manual_seed(0)
    model = MODELS[name](config)
    model.load_checkpoint_extras(prepared.extras)  # state from the data, e.g. a tokenizer
    return model


def _sample(model: GenerativeModel, seed: int, n: int = N, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.sample(n, generator=g, **SAMPLE_KW.get(model.modality, {}), **kw)


def _check_samples(model: GenerativeModel, x: torch.Tensor, n: int = N) -> None:
    config = model.config
    assert x.shape[0] == n
    if model.modality == "image":
        assert x.shape[1:] == (config.channels, config.image_size, config.image_size)
        assert x.is_floating_point()
        assert x.min() >= 0.0 and x.max() <= 1.0
    else:
        assert x.dim() == 2 and not x.is_floating_point()
        assert x.min() >= 0 and x.max() < config.vocab_size


@pytest.mark.parametrize("name", list(MODELS))
def test_contract(name: str, data_specs: dict[str, str], tmp_path: Path) -> None:
    prepared = _prepare(name, data_specs)
    model = _build(name, prepared)
    assert model.name == name and isinstance(model.description, str)
    batch = prepared.batcher.batch(0)

    # loss: a dict with a finite scalar "loss" that backpropagates into the parameters
    out = model.loss(batch)
    assert out["loss"].dim() == 0 and math.isfinite(out["loss"].item())
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)

    # train_step: every optimizer moves some of its parameters; finite logged scalars
    optimizers = model.configure_optimizers(TrainConfig(lr=1e-3))
    before = {id(p): p.detach().clone() for p in model.parameters()}
    logged = model.train_step(batch, optimizers)
    assert "loss" in logged and all(math.isfinite(float(v)) for v in logged.values())
    for opt_name, opt in optimizers.items():
        params = [p for group in opt.param_groups for p in group["params"]]
        assert any(not torch.equal(before[id(p)], p) for p in params), \
            f"optimizer {opt_name!r} changed no parameter"

    # sample: shape and range; randomness only through `generator`
    model.eval()
    first = _sample(model, seed=1)
    _check_samples(model, first)
    assert torch.equal(first, _sample(model, seed=1))
    assert not torch.equal(first, _sample(model, seed=2))

    # save / load round trip through the real checkpoint path gives the same samples
    meta = {"model": name, "model_config": config_to_dict(model.config), "step": 1,
            "extras": model.checkpoint_extras()}
    save_checkpoint(tmp_path / "checkpoint", model, meta=meta, optimizers=optimizers)
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model) and loaded.checkpoint_step == 1
    assert torch.equal(first, _sample(loaded, seed=1))


@pytest.mark.parametrize("name", [n for n, cls in MODELS.items() if cls.supports_conditional])
def test_conditional_contract(name: str, data_specs: dict[str, str]) -> None:
    prepared = _prepare(name, data_specs, conditional=True)
    assert prepared.model_config.num_classes == 4  # from the tiny dataset's labels
    model = _build(name, prepared).eval()
    assert "labels" in prepared.batcher.batch(0)
    assert math.isfinite(model.loss(prepared.batcher.batch(0))["loss"].item())

    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    x = _sample(model, seed=1, labels=labels)
    _check_samples(model, x)
    _check_samples(model, _sample(model, seed=1, n=3, labels=2), n=3)
    # the label conditions the output: same noise, other classes, other images
    assert not torch.equal(x, _sample(model, seed=1, labels=(labels + 1) % 4))
