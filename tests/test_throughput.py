"""The speed path of GAN training (channels_last, optimizer-state layout on resume, compile mode) and
the pytorch/examples baseline of benchmarks/train_throughput.py. Speed itself is measured by the
benchmark, not here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.checkpoint import load_optimizers, load_weights, read_state, save_checkpoint
from genlab.config import TrainConfig, config_from_dict
from genlab.errors import UserError
from genlab.models.gan import DCGAN, DCGANConfig, FullKernelConv2d, LatentConvTranspose2d

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "train_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_throughput"] = module
    spec.loader.exec_module(module)
    return module


def tiny_dcgan(size: int = 16) -> DCGAN:
    torch.manual_seed(0)
    return DCGAN(DCGANConfig(channels=3, image_size=size, nz=8, ngf=4, ndf=4))


def test_dcgan_convs_are_channels_last_and_samples_contiguous():
    model = tiny_dcgan()
    convs = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not convs[0].weight.is_contiguous()  # 3 input channels: NHWC really differs from NCHW
    images = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert images.shape == (5, 3, 16, 16) and images.is_contiguous()
    images.view(5, -1)  # what NHWC strides would refuse


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_matmul_layers_equal_the_convs_they_replace(fmt):
    torch.manual_seed(0)
    latent = LatentConvTranspose2d(10, 6, 4, 1, 0, bias=False).to(memory_format=fmt)
    head = FullKernelConv2d(6, 2, 4, 1, 0, bias=False).to(memory_format=fmt)
    z = torch.randn(3, 10, 1, 1, requires_grad=True)
    x = torch.randn(3, 6, 4, 4).contiguous(memory_format=fmt).requires_grad_()
    for layer, base, inp in ((latent, torch.nn.ConvTranspose2d, z), (head, torch.nn.Conv2d, x)):
        fast, slow = layer(inp), base.forward(layer, inp)
        assert fast.shape == slow.shape
        torch.testing.assert_close(fast, slow)
        g = torch.randn_like(slow)
        grads = torch.autograd.grad(fast, (inp, layer.weight), g)
        torch.testing.assert_close(grads, torch.autograd.grad(slow, (inp, layer.weight), g))
    bigger = torch.randn(3, 10, 2, 2)  # not 1x1: the ordinary conv
    assert torch.equal(latent(bigger), torch.nn.ConvTranspose2d.forward(latent, bigger))


def test_resume_with_channels_last_continues_exactly(tmp_path):
    model = tiny_dcgan()
    optimizers = model.configure_optimizers(TrainConfig())
    batch = {"images": torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)}
    model.train_step(batch, optimizers)
    save_checkpoint(tmp_path / "ckpt", model, meta={"model": "dcgan", "model_config": {}, "step": 1},
                    optimizers=optimizers)
    resumed = tiny_dcgan()
    resumed_opts = resumed.configure_optimizers(TrainConfig())
    load_weights(tmp_path / "ckpt", resumed)
    load_optimizers(tmp_path / "ckpt", resumed_opts, read_state(tmp_path / "ckpt"))
    for opt in resumed_opts.values():
        for param, slots in opt.state.items():
            assert slots["exp_avg"].stride() == param.stride()
    for m, opts in ((model, optimizers), (resumed, resumed_opts)):
        torch.manual_seed(1)  # the same noise for both
        m.train_step(batch, opts)
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_compile_mode_is_checked_and_reaches_torch_compile(monkeypatch):
    with pytest.raises(UserError, match="compile_mode"):
        config_from_dict(TrainConfig, {"compile_mode": "fast"}, "train")
    modes = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: modes.append(kw["mode"]))
    tiny_dcgan().compile_networks("reduce-overhead")
    assert modes == ["reduce-overhead"] * 3  # generator, discriminator, EMA generator


@pytest.mark.parametrize("size", [28, 64])
def test_baseline_networks_match_genlab(bench, size):
    config = DCGANConfig(channels=1, image_size=size, nz=100, ngf=8, ndf=8)
    dataset = bench.ExampleDataset(np.zeros((2, 28, 28), np.uint8), np.zeros(2), size)
    loop = bench.ExampleLoop(dataset, config, 2, 2e-4, 0.5, torch.device("cpu"))
    bench.check_same_networks(loop, config)  # raises when an architecture differs
    probs = loop.net_d(loop.net_g(torch.randn(2, 100, 1, 1)))
    assert probs.shape == (2,) and bool(((probs > 0) & (probs < 1)).all())


def test_baseline_transforms_follow_torchvision(bench):
    pixels = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    img = Image.fromarray(pixels)
    assert bench.resize(img, 64).size == (64, 64)
    assert bench.resize(Image.new("L", (40, 20)), 10).size == (20, 10)  # shorter side -> 10
    x = bench.to_tensor(img)
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[0], torch.from_numpy(pixels).float() / 255)
    y = bench.normalize(x, 0.5, 0.5)
    assert y.min() >= -1 and y.max() <= 1 and torch.allclose(y, x * 2 - 1)
    image, label = bench.ExampleDataset(pixels[None], np.array([3]), 64)[0]
    assert image.shape == (1, 64, 64) and label == 3
