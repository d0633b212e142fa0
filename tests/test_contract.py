"""The contract battery (docs/architecture.md), run against every model in `genlab.models.MODELS`
with every modality in `genlab.modalities.MODALITIES` that feeds it.

Each model is built the way `genlab train` builds it: the modality's tiny dataset, written to a temp
folder and read through `modality.prepare`, which lets `config_for_data` fill the data fields. A new
model passes this file unchanged once its class has a `tiny_config`; a new modality once it
implements `tiny_data` and `check_samples`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genlab.checkpoint import save_checkpoint
from genlab.config import TrainConfig, config_from_dict, config_to_dict
from genlab.modalities import MODALITIES, Modality, Prepared
from genlab.models import MODELS, GenerativeModel
from genlab.rundir import load_model

N = 6  # samples per check
PAIRS = [(name, modality) for name, cls in MODELS.items() for modality, m in MODALITIES.items()
         if m.feeds == cls.modality]


@pytest.fixture(scope="session")
def tiny_specs(tmp_path_factory) -> dict[str, str]:
    """Each modality's tiny dataset, written once."""
    return {name: m.tiny_data(tmp_path_factory.mktemp(f"tiny-{name}"))
            for name, m in MODALITIES.items()}


def _prepare(name: str, modality: Modality, spec: str, *, conditional: bool = False) -> Prepared:
    cls = MODELS[name]
    if not cls.tiny_config:
        pytest.fail(f"model {name!r} has no tiny_config; give its class one (config overrides "
                    "that make it tiny)")
    config = config_from_dict(cls.config_class, cls.tiny_config, "model")
    config.validate(partial=True)
    train = TrainConfig(batch_size=8, seed=0)
    return modality.prepare(spec, None, cls, config, train, conditional=conditional,
                            device=torch.device("cpu"))


def _build(name: str, modality: Modality, prepared: Prepared) -> GenerativeModel:
    config = prepared.model_config
    config.validate()
    torch.manual_seed(0)
    model = MODELS[name](config)
    model.modality = modality.name
    model.load_checkpoint_extras(prepared.extras)  # state from the data, e.g. a tokenizer
    return model


def _sample(model: GenerativeModel, modality: Modality, seed: int, n: int = N,
            **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return model.sample(n, generator=g, **modality.cheap_sample_kwargs(), **kw)


@pytest.mark.parametrize(("name", "modality_name"), PAIRS)
def test_contract(name: str, modality_name: str, tiny_specs: dict[str, str],
                  tmp_path: Path) -> None:
    modality = MODALITIES[modality_name]
    prepared = _prepare(name, modality, tiny_specs[modality_name])
    model = _build(name, modality, prepared)
    assert model.name == name and isinstance(model.description, str)
    batch = prepared.batcher.batch(0)

    # loss: a dict with a finite scalar "loss" that backpropagates into the parameters
    out = model.loss(batch)
    assert out["loss"].dim() == 0 and math.isfinite(out["loss"].item())
    assert set(model.progress_keys) <= set(out)
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)

    # train_step: every optimizer moves some of its parameters; finite logged scalars
    optimizers = model.configure_optimizers(TrainConfig(lr=1e-3))
    before = {id(p): p.detach().clone() for p in model.parameters()}
    logged = model.train_step(batch, optimizers)
    assert set(model.progress_keys) <= set(logged)
    assert "loss" in logged and all(math.isfinite(float(v)) for v in logged.values())
    for opt_name, opt in optimizers.items():
        params = [p for group in opt.param_groups for p in group["params"]]
        assert any(not torch.equal(before[id(p)], p) for p in params), \
            f"optimizer {opt_name!r} changed no parameter"

    # sample: shape and range; randomness only through `generator`
    model.eval()
    first = _sample(model, modality, seed=1)
    modality.check_samples(model, first, N)
    assert torch.equal(first, _sample(model, modality, seed=1))
    assert not torch.equal(first, _sample(model, modality, seed=2))

    # save / load round trip through the real checkpoint path gives the same samples and the
    # same modality
    meta = {"model": name, "model_config": config_to_dict(model.config), "step": 1,
            "modality": modality.name, "extras": model.checkpoint_extras()}
    save_checkpoint(tmp_path / "checkpoint", model, meta=meta, optimizers=optimizers)
    loaded = load_model(tmp_path)
    assert type(loaded) is type(model) and loaded.checkpoint_step == 1
    assert loaded.modality == modality.name
    assert torch.equal(first, _sample(loaded, modality, seed=1))


@pytest.mark.parametrize(("name", "modality_name"),
                         [(n, m) for n, m in PAIRS if MODELS[n].supports_conditional])
def test_conditional_contract(name: str, modality_name: str, tiny_specs: dict[str, str]) -> None:
    modality = MODALITIES[modality_name]
    prepared = _prepare(name, modality, tiny_specs[modality_name], conditional=True)
    k = prepared.model_config.num_classes
    assert k >= 2  # from the tiny dataset's labels
    model = _build(name, modality, prepared).eval()
    assert model.num_classes == k
    assert "labels" in prepared.batcher.batch(0)
    assert math.isfinite(model.loss(prepared.batcher.batch(0))["loss"].item())

    labels = torch.arange(N) % k
    x = _sample(model, modality, seed=1, labels=labels)
    modality.check_samples(model, x, N)
    modality.check_samples(model, _sample(model, modality, seed=1, n=3, labels=1), 3)
    # the label conditions the output: same noise, other classes, other samples
    assert not torch.equal(x, _sample(model, modality, seed=1, labels=(labels + 1) % k))
