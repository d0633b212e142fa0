"""Training throughput (images/s) of genlab's DCGAN against the pytorch/examples DCGAN loop.

    .venv/bin/python benchmarks/train_throughput.py                     # CPU: dcgan64 and dcgan
    .venv/bin/python benchmarks/train_throughput.py --configs dcgan --steps 200
    .venv/bin/python benchmarks/train_throughput.py --device cuda --compile reduce-overhead

The baseline is the training loop of pytorch/examples `dcgan/main.py`
(https://github.com/pytorch/examples/blob/main/dcgan/main.py) written again without torchvision:
a DataLoader with 2 workers over a Dataset doing per-sample PIL Resize + ToTensor + Normalize, fp32,
Sigmoid at the end of D + BCELoss, two D backwards, `.item()` every step for the progress line.
It trains the same networks (checked parameter by parameter), batch size and Adam settings on the same
Fashion-MNIST images. genlab's side is its own training code: the preset (`dcgan64`, `dcgan`),
`ImageModality.prepare` (the in-memory uint8 batcher), `models.gan.DCGAN` with the run's precision
and `train.Trainer.fit`, which syncs with the device only at its log steps and at the end.

Both run in this process, in alternating rounds (genlab first in even rounds, the baseline first in
odd ones) after a warm-up; each side's figure is its median over the rounds, so load from other
processes hits both alike. Besides wall-clock images/s, each side reports images per CPU-second
(this process's threads plus the DataLoader workers), which other processes disturb much less.
One JSON line per configuration goes to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from genlab.data import ImageData, load_images
from genlab.devices import bf16_supported, resolve_device
from genlab.modalities import MODALITIES
from genlab.models.gan import DCGAN, DCGANConfig, dcgan_layout
from genlab.runs import build_configs
from genlab.trainer import Trainer

DATASET = "fashion-mnist"
CONFIGS = ("dcgan64", "dcgan")  # genlab presets: 64x64 (the example's size) and 28x28 (native)
# timed steps per round: about 5-15 s of genlab training per round on a 2-core CPU
DEFAULT_STEPS = {"cpu": {"dcgan64": 30, "dcgan": 150}, "cuda": {"dcgan64": 500, "dcgan": 500}}
DEFAULT_WARMUP = {"cpu": 5, "cuda": 50}  # cuda: cudnn autotuning and allocator warm-up


# --- the baseline: pytorch/examples dcgan/main.py, without torchvision --------------------------

def resize(img: Image.Image, size: int) -> Image.Image:
    """torchvision `Resize(size)` on a PIL image: the shorter side becomes `size`, bilinear
    (PIL's bilinear filter antialiases when it shrinks)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    return img.resize((new_w, new_h), Image.BILINEAR)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """torchvision `ToTensor()`: uint8 HWC -> float CHW in [0, 1]."""
    arr = torch.from_numpy(np.array(img, np.uint8, copy=True))
    arr = arr.view(img.size[1], img.size[0], len(img.getbands()))  # (H, W, C)
    return arr.permute(2, 0, 1).contiguous().float().div(255)


def normalize(x: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """torchvision `Normalize((mean,), (std,))` for one channel."""
    return (x - mean) / std


class ExampleDataset(torch.utils.data.Dataset):
    """torchvision's MNIST dataset with the example's transform: raw uint8 images in memory, one PIL
    image per `__getitem__`, then Resize + ToTensor + Normalize((0.5,), (0.5,))."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int) -> None:
        self.images, self.labels, self.size = images, labels, size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i])  # mode "L"
        return normalize(to_tensor(resize(img, self.size)), 0.5, 0.5), int(self.labels[i])


def example_generator(nz: int, ngf: int, nc: int, size: int) -> nn.Sequential:
    """The example's `Generator`; for 64x64 it is that network layer for layer, other sizes start
    from genlab's base side (7 for 28x28) as `dcgan` does."""
    base, n_up = dcgan_layout(size)
    ch = ngf * 2 ** (n_up - 1)
    layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ch, base, 1, 0, bias=False),
                               nn.BatchNorm2d(ch), nn.ReLU(True)]
    for _ in range(n_up - 1):
        layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2),
                   nn.ReLU(True)]
        ch //= 2
    return nn.Sequential(*layers, nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh())


class ExampleDiscriminator(nn.Module):
    """The example's `Discriminator`: conv stack, then Sigmoid, output `(B,)` probabilities."""

    def __init__(self, ndf: int, nc: int, size: int) -> None:
        super().__init__()
        base, n_up = dcgan_layout(size)
        ch = ndf
        layers: list[nn.Module] = [nn.Conv2d(nc, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(n_up - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2),
                       nn.LeakyReLU(0.2, True)]
            ch *= 2
        self.main = nn.Sequential(*layers, nn.Conv2d(ch, 1, base, 1, 0, bias=False), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1, 1).squeeze(1)


def weights_init(m: nn.Module) -> None:
    """The example's init: N(0, 0.02) convs, N(1, 0.02) batch-norm scales."""
    classname = m.__class__.__name__
    if classname.find("Conv") != -1:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif classname.find("BatchNorm") != -1:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class ExampleLoop:
    """The example's training loop, one step at a time, with a DataLoader iterator kept across
    rounds (a new epoch restarts the workers, as the example's `for` loop does)."""

    def __init__(self, dataset: ExampleDataset, model_cfg: DCGANConfig, batch_size: int, lr: float,
                 beta1: float, device: torch.device) -> None:
        size, nz = dataset.size, model_cfg.nz
        self.device, self.nz = device, nz
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True,
                                                  num_workers=2)
        self.net_g = example_generator(nz, model_cfg.ngf, 1, size).to(device)
        self.net_g.apply(weights_init)
        self.net_d = ExampleDiscriminator(model_cfg.ndf, 1, size).to(device)
        self.net_d.apply(weights_init)
        self.criterion = nn.BCELoss()
        self.opt_d = torch.optim.Adam(self.net_d.parameters(), lr=lr, betas=(beta1, 0.999))
        self.opt_g = torch.optim.Adam(self.net_g.parameters(), lr=lr, betas=(beta1, 0.999))
        self.batches: Iterator = iter(())
        self.last: tuple[float, ...] = ()

    def next_batch(self) -> torch.Tensor:
        try:
            return next(self.batches)[0]
        except StopIteration:
            self.batches = iter(self.loader)
            return next(self.batches)[0]

    def step(self) -> None:
        real_label, fake_label = 1, 0
        # (1) Update D network: maximize log(D(x)) + log(1 - D(G(z)))
        self.net_d.zero_grad()
        real_cpu = self.next_batch().to(self.device)
        batch_size = real_cpu.size(0)
        label = torch.full((batch_size,), real_label, dtype=real_cpu.dtype, device=self.device)
        output = self.net_d(real_cpu)
        err_d_real = self.criterion(output, label)
        err_d_real.backward()
        d_x = output.mean().item()
        noise = torch.randn(batch_size, self.nz, 1, 1, device=self.device)
        fake = self.net_g(noise)
        label.fill_(fake_label)
        output = self.net_d(fake.detach())
        err_d_fake = self.criterion(output, label)
        err_d_fake.backward()
        d_g_z1 = output.mean().item()
        err_d = err_d_real + err_d_fake
        self.opt_d.step()
        # (2) Update G network: maximize log(D(G(z)))
        self.net_g.zero_grad()
        label.fill_(real_label)
        output = self.net_d(fake)
        err_g = self.criterion(output, label)
        err_g.backward()
        d_g_z2 = output.mean().item()
        self.opt_g.step()
        # the example prints these every step; kept (not printed) so the same syncs happen
        self.last = (err_d.item(), err_g.item(), d_x, d_g_z1, d_g_z2)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()
        sync(self.device)
        if not all(np.isfinite(self.last)):
            raise RuntimeError(f"baseline losses are not finite: {self.last}")


def check_same_networks(loop: ExampleLoop, model_cfg: DCGANConfig) -> None:
    """The comparison is about the loop, so both sides must train identical architectures."""
    genlab_model = DCGAN(model_cfg)
    for ours, theirs, what in ((genlab_model.generator, loop.net_g, "generator"),
                               (genlab_model.discriminator, loop.net_d, "discriminator")):
        shapes = [tuple(p.shape) for p in ours.parameters()]
        if shapes != [tuple(p.shape) for p in theirs.parameters()]:
            raise RuntimeError(f"baseline {what} differs from genlab's: {shapes}")


# --- genlab's side --------------------------------------------------------------------------------

class GenlabLoop:
    """genlab's training path as `runs.train` builds it, kept alive across rounds."""

    def __init__(self, config: str, args: argparse.Namespace, device: torch.device,
                 run_dir: Path) -> None:
        flags = {"precision": args.precision, "compile": bool(args.compile_mode) or None}
        overrides = [f"train.compile_mode={args.compile_mode}"] if args.compile_mode else []
        model_cls, model_cfg, train_cfg, _ = build_configs("dcgan", preset=config,
                                                          overrides=overrides, flags=flags)
        prepared = MODALITIES["image"].prepare(DATASET, args.data_dir, model_cls, model_cfg,
                                               train_cfg, conditional=False, device=device)
        model = model_cls(prepared.model_config).to(device)
        model.set_precision(train_cfg.precision, device.type)
        optimizers = model.configure_optimizers(train_cfg)
        if train_cfg.compile:
            model.compile_networks(train_cfg.compile_mode)
        run_dir.mkdir(parents=True)
        self.model_config = prepared.model_config
        self.trainer = Trainer(model, optimizers, prepared.batcher, train_cfg, run_dir,
                               total_steps=0)

    def run(self, steps: int) -> None:
        """`steps` more steps of `Trainer.fit`; it ends with a log step, which syncs the device."""
        self.trainer.total_steps += steps
        with contextlib.redirect_stderr(io.StringIO()):  # the trainer's progress lines
            self.trainer.fit()


# --- driver ----------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its children, live ones (DataLoader workers,
    read from /proc on Linux) and exited ones."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = time.process_time() + children.ru_utime + children.ru_stime
    me, tick = os.getpid(), os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
        except OSError:
            continue  # exited while we looked
        if int(fields[1]) == me:  # ppid; utime and stime follow at 11 and 12
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def measure(loop: GenlabLoop | ExampleLoop, warmup: int, steps: int, batch_size: int,
            device: torch.device) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second) over `steps` after `warmup`."""
    loop.run(warmup)
    sync(device)
    wall, cpu = time.perf_counter(), cpu_seconds()
    loop.run(steps)
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    return steps * batch_size / wall, steps * batch_size / cpu


def bench_config(config: str, args: argparse.Namespace, data: ImageData, tmp: Path) -> dict:
    device = resolve_device(args.device)
    genlab = GenlabLoop(config, args, device, tmp / config)
    train_cfg = genlab.trainer.cfg
    dataset = ExampleDataset(data.images[:, 0].numpy(), data.labels.numpy(),
                             genlab.model_config.image_size)
    baseline = ExampleLoop(dataset, genlab.model_config, train_cfg.batch_size, train_cfg.lr,
                           train_cfg.beta1, device)
    check_same_networks(baseline, genlab.model_config)
    warmup = args.warmup or DEFAULT_WARMUP[device.type]
    steps = args.steps or DEFAULT_STEPS[device.type][config]
    rates: dict[str, list[tuple[float, float]]] = {"genlab": [], "baseline": []}
    for r in range(args.rounds):
        for side in ("genlab", "baseline") if r % 2 == 0 else ("baseline", "genlab"):
            loop = genlab if side == "genlab" else baseline
            rates[side].append(measure(loop, warmup, steps, train_cfg.batch_size, device))
        print(f"{config} round {r}: " + ", ".join(
            f"{side} {v[-1][0]:.1f} img/s ({v[-1][1]:.1f} img/cpu-s)" for side, v in rates.items()),
            file=sys.stderr, flush=True)
    wall = {side: statistics.median(r[0] for r in v) for side, v in rates.items()}
    cpu = {side: statistics.median(r[1] for r in v) for side, v in rates.items()}
    return {"config": config, "device": device.type, "precision": train_cfg.precision,
            "genlab_img_s": round(wall["genlab"], 1), "baseline_img_s": round(wall["baseline"], 1),
            "ratio": round(wall["genlab"] / wall["baseline"], 2),
            "genlab_img_per_cpu_s": round(cpu["genlab"], 1),
            "baseline_img_per_cpu_s": round(cpu["baseline"], 1),
            "cpu_ratio": round(cpu["genlab"] / cpu["baseline"], 2),
            "rounds_img_s": {side: [round(r[0], 1) for r in v] for side, v in rates.items()},
            "steps": steps, "warmup": warmup, "threads": torch.get_num_threads(),
            "compile": train_cfg.compile and train_cfg.compile_mode, "torch": torch.__version__}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--data-dir", help="folder holding Fashion-MNIST (default: genlab's search path)")
    p.add_argument("--steps", type=int, help="timed steps per round (default: per config/device)")
    p.add_argument("--warmup", type=int, help="untimed steps before each round")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per side")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--precision", choices=["fp32", "bf16"],
                   help="genlab's precision (default: bf16 where the hardware has it)")
    p.add_argument("--compile", dest="compile_mode", nargs="?", const="default",
                   choices=["default", "reduce-overhead", "max-autotune",
                            "max-autotune-no-cudagraphs"],
                   help="torch.compile genlab's networks, in this mode (default: default)")
    p.add_argument("--threads", type=int,
                   help="torch threads for both sides (default: torch's, the physical cores)")
    args = p.parse_args(argv)
    if args.precision is None:
        args.precision = "bf16" if bf16_supported(resolve_device(args.device)) else "fp32"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True  # both sides: the example sets it, so does genlab
    data = load_images(DATASET, "train", args.data_dir)
    with tempfile.TemporaryDirectory(prefix="genlab-bench-") as tmp:
        for config in args.configs:
            print(json.dumps(bench_config(config, args, data, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
