"""`GenerativeModel.sample_many`: several sample calls at once (the server's micro-batches).

For every registered model, a call's output must not depend on the calls beside it or on its place
among them; the image families that share forward passes must draw each call's randomness exactly
as `sample` does. Tiny models built as in tests/test_contract.py.
"""

from __future__ import annotations

import pytest
import torch

from genlab.config import TrainConfig, config_from_dict
from genlab.generation import GenerationRequest
from genlab.modalities import MODALITIES, generate
from genlab.modalities.image import ImageSamples, image_call, image_samples
from genlab.models import MODELS, GenerativeModel
from genlab.models.base import SampleCall, forward_in_passes

PAIRS = [(name, modality) for name, cls in MODELS.items() for modality, m in MODALITIES.items()
         if m.feeds == cls.modality]


@pytest.fixture(scope="module")
def tiny_specs(tmp_path_factory) -> dict[str, str]:
    return {name: m.tiny_data(tmp_path_factory.mktemp(f"many-{name}"))
            for name, m in MODALITIES.items()}


def build(name: str, modality_name: str, spec: str, *, conditional: bool = False
          ) -> GenerativeModel:
    cls, modality = MODELS[name], MODALITIES[modality_name]
    config = config_from_dict(cls.config_class, cls.tiny_config, "model")
    prepared = modality.prepare(spec, None, cls, config, TrainConfig(batch_size=8, seed=0),
                                conditional=conditional, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = cls(prepared.model_config)
    model.modality = modality_name
    model.load_checkpoint_extras(prepared.extras)
    return model.eval()


def calls(model: GenerativeModel, modality_name: str, sizes: list[int], seeds: list[int]
          ) -> list[SampleCall]:
    options = MODALITIES[modality_name].cheap_sample_kwargs()
    return [SampleCall(n, torch.Generator().manual_seed(seed), dict(options))
            for n, seed in zip(sizes, seeds)]


@pytest.mark.parametrize(("name", "modality_name"), PAIRS)
def test_a_call_does_not_depend_on_its_batch_mates(name, modality_name, tiny_specs):
    model = build(name, modality_name, tiny_specs[modality_name])
    sizes, seeds = [3, 1, 40, 5], [7, 8, 9, 10]  # 49 rows: two passes, the second padded
    together = model.sample_many(calls(model, modality_name, sizes, seeds))
    alone = [model.sample_many(calls(model, modality_name, [n], [s]))[0]
             for n, s in zip(sizes, seeds)]
    reversed_order = model.sample_many(calls(model, modality_name, sizes[::-1], seeds[::-1]))
    assert [t.shape[0] for t in together] == sizes
    for a, b, c in zip(together, alone, reversed_order[::-1]):
        assert torch.equal(a, b) and torch.equal(a, c)
    # other batch-mates, the same first call
    others = model.sample_many(calls(model, modality_name, [3, 17, 2], [7, 99, 100]))
    assert torch.equal(others[0], together[0])


@pytest.mark.parametrize("name", [n for n, m in PAIRS
                                  if issubclass(MODALITIES[m].samples_class, ImageSamples)])
def test_shared_passes_draw_the_randomness_of_sample(name, tiny_specs):
    """The same labels and (up to float rounding at another batch size) the same images as
    `sample`: the noise of each call comes from its own generator in sample's order."""
    model = build(name, "image", tiny_specs["image"], conditional=MODELS[name].supports_conditional)
    assert model.num_classes == 4
    for n in (1, 5, 33):
        (many,) = model.sample_many([SampleCall(n, torch.Generator().manual_seed(3))])
        one = model.sample(n, generator=torch.Generator().manual_seed(3))
        assert many.shape == one.shape and many.dtype == one.dtype
        torch.testing.assert_close(many, one, rtol=0, atol=1e-5)
    # random labels are drawn from the call's generator first, as sample draws them
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    (many,) = model.sample_many([SampleCall(6, g1)])
    torch.testing.assert_close(many, model.sample(6, generator=g2), rtol=0, atol=1e-5)
    assert torch.equal(g1.get_state(), g2.get_state())  # the same number of draws


def test_labels_and_unknown_options(tiny_specs):
    model = build("dcgan", "image", tiny_specs["image"], conditional=True)
    labels = torch.tensor([0, 1, 2, 3, 3])
    (a,) = model.sample_many([SampleCall(5, torch.Generator().manual_seed(1), {"labels": labels})])
    (b,) = model.sample_many([SampleCall(5, torch.Generator().manual_seed(1), {"labels": 3})])
    assert a.shape == b.shape == (5, 1, 28, 28) and torch.equal(a[3:], b[3:])
    assert not torch.equal(a[:3], b[:3])  # another class, the same noise
    with pytest.raises(TypeError, match="temperature"):
        model.sample_many([SampleCall(2, None, {"temperature": 1.0})])


def test_forward_in_passes_pads_the_last_pass():
    seen = []

    def forward(x, y):
        seen.append(x.shape[0])
        assert y is None
        return x * 2

    x = torch.arange(10.0)[:, None]
    out = forward_in_passes(forward, 4, x, None)
    assert seen == [4, 4, 4] and torch.equal(out, x * 2)


def test_generate_goes_through_sample_many(tiny_specs):
    """`genlab sample`'s path (modalities.generate) equals a batched call of the same request."""
    model = build("dcgan", "image", tiny_specs["image"], conditional=True)
    request = GenerationRequest(n=6, seed=11, label=[0, 1, 2, 3, 0, 1])
    images = generate(model, request).images
    _, call, _ = image_call(model, request)
    _, mate, _ = image_call(model, GenerationRequest(n=30, seed=12))
    batched = model.sample_many([mate, call])[1]
    assert torch.equal(images, image_samples(call, batched, None).images)
