"""How close the GAN training benchmark is to this machine's limit, and the best ratio any code could reach.

    .venv/bin/python benchmarks/roofline.py                 # CPU, dcgan64 and dcgan, 1 thread
    .venv/bin/python benchmarks/roofline.py --threads 2

`train_throughput.py` compares genlab's DCGAN loop with the pytorch/examples loop. This script asks
what ratio is possible at all. For one training step of each side it counts the floating-point
work of the convolutions and matrix products, forward and backward (`torch.utils.flop_counter`,
which counts a multiply-add as 2), measures the matrix-multiply peak of this machine in bf16 and in
fp32 (large products, best of several; oneDNN's fp32 convolutions can beat the fp32 matrix
product, so that figure is a reference, not a ceiling), and times both sides' steps (alternating rounds,
medians, as train_throughput.py does). It prints one JSON line per configuration:

- `matmul_bf16_gflops`, `matmul_fp32_gflops`: the measured matrix-multiply peaks;
- `genlab_gflop`, `baseline_gflop`: work per step (the baseline also computes D's weight gradients
  in the G step);
- `genlab_gflops`, `baseline_gflops`: that work over the measured step time;
- `genlab_util`: genlab's rate as a share of the bf16 peak (everything else in the step, batch
  norm, activations, Adam, EMA, counted as time but not as work);
- `ratio`: measured baseline step time over genlab's;
- `ratio_at_peak`: the baseline's step time over the time genlab's work takes at the bf16 peak,
  i.e. the ratio if every multiply-add ran at the peak and nothing else cost anything;
- `util_for_3x`: the share of the bf16 peak genlab's whole step would have to sustain for 3x.

With `--layers` it also prints, per strided convolution of each configuration's networks, the GFLOP/s
of oneDNN's bf16 channels_last kernels for the forward pass, the input gradient and the weight
gradient (batch 64, best of several), as a share of the same bf16 peak, then the time of genlab's
step if only these passes cost anything (each counted as often as the step runs it) and the ratio
to the baseline's measured step that this would give: a bound that no work on the rest of the step
can beat while these kernels stay.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from genlab.data import load_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # the two loops, built exactly as that benchmark builds them


def matmul_peak(dtype: torch.dtype, repeats: int = 5) -> float:
    """Best GFLOP/s of a few large matrix products in `dtype` on the CPU."""
    best = 0.0
    for m, k, n in ((4096, 2048, 512), (2048, 4096, 1024), (8192, 1024, 256)):
        a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
        a @ b  # warm-up: oneDNN builds its kernel
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def step_flops(step) -> float:
    """GFLOP of one call of `step`, counted by the dispatcher (forward and backward)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def layer_rates(model: torch.nn.Module, peak: float) -> list[dict]:
    """GFLOP/s of each strided conv / transposed conv of a DCGAN's networks in bf16, channels_last:
    forward, input gradient and weight gradient, as oneDNN runs them for a batch of 64."""
    shapes: list[tuple[torch.nn.Module, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, tuple(i[0].shape))))
             for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.stride == (2, 2)]
    with torch.no_grad():
        model.discriminator(model.generator(torch.randn(64, model.config.nz)))
    for h in hooks:
        h.remove()
    rows = []
    for m, shape in shapes:
        row = _layer_row(m, shape, peak)
        row["per_step"] = passes_per_step(model, m)
        rows.append(row)
    return rows


def _layer_row(m: torch.nn.Module, shape: tuple[int, ...], peak: float) -> dict:
    cl = torch.channels_last
    x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=cl)
    w = m.weight.detach().to(torch.bfloat16).contiguous(memory_format=cl)
    transposed = isinstance(m, torch.nn.ConvTranspose2d)
    conv = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
    y = conv(x, w, stride=2, padding=1)
    g = torch.randn_like(y).contiguous(memory_format=cl)
    flop = 2 * w.numel() * (x if transposed else y).shape[2:].numel() * shape[0]

    def backward(mask: list[bool]) -> None:
        torch.ops.aten.convolution_backward(g, x, w, None, [2, 2], [1, 1], [1, 1], transposed,
                                            [0, 0], 1, mask)

    row: dict = {"layer": f"{'deconv' if transposed else 'conv'} {tuple(m.weight.shape)} "
                          f"in {tuple(shape[1:])}"}
    for name, fn in (("forward", lambda: conv(x, w, stride=2, padding=1)),
                     ("input_grad", lambda: backward([True, False, False])),
                     ("weight_grad", lambda: backward([False, True, False]))):
        fn()
        best = min(_timed(fn) for _ in range(5))
        row[name] = {"gflops": round(flop / best / 1e9), "share": round(flop / best / 1e9 / peak, 2),
                     "ms": best * 1e3}
    return row


def passes_per_step(model: torch.nn.Module, layer: torch.nn.Module) -> dict[str, int]:
    """How often genlab's GAN step runs each pass of a strided layer: G forward once and backward
    once; D forward three times (real, fake, fake in the G step), weight gradients in the D step
    only (twice), input gradients three times but once for the first layer (its input is data)."""
    if any(layer is m for m in model.generator.modules()):
        return {"forward": 1, "input_grad": 1, "weight_grad": 1}
    first = layer.in_channels == model.config.channels
    return {"forward": 3, "input_grad": 1 if first else 3, "weight_grad": 2}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_times(genlab: tt.GenlabLoop, baseline: tt.ExampleLoop, steps: int, rounds: int,
               batch_size: int, device: torch.device) -> tuple[float, float]:
    """Median seconds per step of each side over alternating rounds (train_throughput's timing)."""
    times: dict[str, list[float]] = {"genlab": [], "baseline": []}
    for r in range(rounds):
        for side in ("genlab", "baseline") if r % 2 == 0 else ("baseline", "genlab"):
            loop = genlab if side == "genlab" else baseline
            images_per_s, _ = tt.measure(loop, 2, steps, batch_size, device)
            times[side].append(batch_size / images_per_s)
    return statistics.median(times["genlab"]), statistics.median(times["baseline"])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=list(tt.CONFIGS), choices=tt.CONFIGS)
    p.add_argument("--data-dir", help="folder holding Fashion-MNIST (default: genlab's search path)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the figures "
                   "then hold on a CPU shared with other jobs)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--layers", action="store_true",
                   help="also time each strided convolution's three passes on their own")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # train_throughput's loops read these options
    loop_args = argparse.Namespace(precision="bf16" if tt.bf16_supported(torch.device("cpu"))
                                   else "fp32", compile_mode=None, data_dir=args.data_dir)
    peak = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    data = load_images(tt.DATASET, "train", args.data_dir)
    device = torch.device("cpu")
    with tempfile.TemporaryDirectory(prefix="genlab-roofline-") as tmp:
        for config in args.configs:
            genlab = tt.GenlabLoop(config, loop_args, device, Path(tmp) / config)
            trainer = genlab.trainer
            dataset = tt.ExampleDataset(data.images[:, 0].numpy(), data.labels.numpy(),
                                        genlab.model_config.image_size)
            baseline = tt.ExampleLoop(dataset, genlab.model_config, trainer.cfg.batch_size,
                                      trainer.cfg.lr, trainer.cfg.beta1, device)
            tt.check_same_networks(baseline, genlab.model_config)
            g_flop = step_flops(functools.partial(trainer.model.train_step, trainer.batcher.batch(0),
                                                  trainer.optimizers))
            b_flop = step_flops(baseline.step)
            steps = tt.DEFAULT_STEPS["cpu"][config] // 3
            g_s, b_s = step_times(genlab, baseline, steps, args.rounds, trainer.cfg.batch_size,
                                  device)
            g_rate = g_flop / g_s
            print(json.dumps({
                "config": config, "threads": args.threads, "precision": trainer.cfg.precision,
                "genlab_gflop": round(g_flop, 2), "baseline_gflop": round(b_flop, 2),
                "matmul_bf16_gflops": round(peak["bf16"]), "matmul_fp32_gflops": round(peak["fp32"]),
                "genlab_ms": round(g_s * 1e3, 1), "baseline_ms": round(b_s * 1e3, 1),
                "genlab_gflops": round(g_rate), "baseline_gflops": round(b_flop / b_s),
                "genlab_util": round(g_rate / peak["bf16"], 2), "ratio": round(b_s / g_s, 2),
                "ratio_at_peak": round(b_s / (g_flop / peak["bf16"]), 2),
                "util_for_3x": round(3 * g_flop / b_s / peak["bf16"], 2),
                "torch": torch.__version__}), flush=True)
            if args.layers:
                rows = layer_rates(trainer.model, peak["bf16"])
                for row in rows:
                    print(json.dumps({"config": config, **row}), flush=True)
                # the step if only its strided convolutions cost time, at these kernels' speed
                conv_s = sum(row[k]["ms"] * n for row in rows for k, n in row["per_step"].items()) / 1e3
                print(json.dumps({"config": config, "strided_conv_ms": round(conv_s * 1e3, 1),
                                  "ratio_if_only_strided_convs": round(b_s / conv_s, 2)}), flush=True)


if __name__ == "__main__":
    main()
