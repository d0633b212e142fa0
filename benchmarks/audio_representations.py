"""Which spectrogram image should audio become? Measured on FSDD, for each representation:

- spectral convergence (SC) of real test clips after clip -> image -> Griffin-Lim -> clip,
  and with the true phase (what the image itself loses: mel bands, dB floor, 8-bit levels);
- the test accuracy of a classifier fitted on that representation (`fit_classifier`, the recipe
  of the fsdd feature net), on real clips and on Griffin-Lim round-tripped ones;
- what that classifier says about white noise and silence (the sanity rows);
- the cost: encoding and Griffin-Lim decoding per clip, and the classifier's training time.

    python benchmarks/audio_representations.py --data-dir ../shared/data/fsdd
    python benchmarks/audio_representations.py --data-dir DIR --only mel64 --epochs 5
    python benchmarks/audio_representations.py --data-dir DIR --check-data
    python benchmarks/audio_representations.py --data-dir DIR --shipped 16,32,64,128

`--check-data` is the manual check of the fsdd source against the real archive: both splits,
their sizes, speakers and labels, and the same clips read from the archive and from an
extracted recordings/ folder. Timings are on whatever CPU this runs on; compare rows of one run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from genlab import audio
from genlab.classifier import accuracy, fit_classifier
from genlab.data import load_audio
from genlab.data.sources import fsdd
from genlab.featurenet import PLANS, load_feature_net

C = audio.SpectrogramConfig
REPRESENTATIONS = {
    "mel64": C(size=64, n_fft=512, hop=127),
    "mel64-nfft256": C(size=64, n_fft=256, hop=127),
    "mel128": C(size=128, n_fft=512, hop=63),
    "linear128": C(size=128, n_fft=254, hop=63, mel=False),
    "mel32": C(size=32, n_fft=512, hop=258),
}


def check_data(data_dir: str) -> None:
    t0 = time.perf_counter()
    train = load_audio("fsdd", "train", data_dir=data_dir, download=False)
    test = load_audio("fsdd", "test", data_dir=data_dir, download=False)
    lengths = torch.tensor([len(c) for c in train.clips + test.clips])
    print(f"fsdd from {data_dir}: {len(train.clips)} train + {len(test.clips)} test clips in "
          f"{time.perf_counter() - t0:.1f}s; {train.sample_rate} Hz; speakers "
          f"{', '.join(train.speaker_names)}; lengths {int(lengths.min())}..{int(lengths.max())} "
          f"samples, {int((lengths <= 8000).sum())} of {len(lengths)} at most 1 s")
    print(f"  train per digit {torch.bincount(train.labels).tolist()}, per speaker "
          f"{torch.bincount(train.speakers).tolist()}; test per digit "
          f"{torch.bincount(test.labels).tolist()}")
    assert (len(train.clips), len(test.clips)) == (2700, 300)
    with tempfile.TemporaryDirectory() as tmp:  # the same clips from extracted recordings/
        source = fsdd.find_local([Path(data_dir) / "fsdd", Path(data_dir)])
        folder = Path(tmp) / "recordings"
        folder.mkdir()
        for name, data in fsdd.read_recordings(source).items():
            (folder / name).write_bytes(data)
        again = load_audio("fsdd", "test", data_dir=tmp, download=False)
    same = again.sha256 == test.sha256
    print(f"  test split sha256 {test.sha256[:16]}..., the same from recordings/: {same}")
    assert same


def sanity(net: torch.nn.Module, config: audio.SpectrogramConfig, n: int = 100) -> str:
    """Predictions for white noise (normalized like real clips) and for silence."""
    g = torch.Generator().manual_seed(0)
    noise = audio.normalize(torch.randn(n, config.clip_samples, generator=g) * 0.1, config)
    silence = torch.zeros(n, config.clip_samples)
    parts = []
    for name, waves in (("noise", noise), ("silence", silence)):
        _, logits = net.embed(audio.waveforms_to_images(waves, config))
        probs = logits.softmax(1)
        top = torch.bincount(probs.argmax(1), minlength=10)
        parts.append(f"{name}: -> {int(top.argmax())} x{int(top.max())}/{n}, "
                     f"mean max p {float(probs.max(1).values.mean()):.2f}")
    return "; ".join(parts)


def round_trip(net: torch.nn.Module, config: audio.SpectrogramConfig, test, images: torch.Tensor,
               iters: int) -> str:
    """SC and classifier accuracy of the test clips through Griffin-Lim, and its cost."""
    waves = audio.normalize(audio.clips_to_waveforms(test.clips, config.clip_samples), config)
    t0 = time.perf_counter()
    rebuilt = audio.images_to_waveforms(images, config, iters=iters)
    decode_ms = (time.perf_counter() - t0) * 1000 / len(test.clips)
    true_phase = audio.with_phase_of(images, waves, config)
    sc = float(audio.spectral_convergence(waves, rebuilt).mean())
    sc_true = float(audio.spectral_convergence(waves, true_phase).mean())
    again = audio.waveforms_to_images(audio.normalize(rebuilt, config), config)
    return (f"SC Griffin-Lim {sc:.3f}, SC true phase {sc_true:.3f}; accuracy real "
            f"{accuracy(net, images, test.labels):.4f}, Griffin-Lim "
            f"{accuracy(net, again, test.labels):.4f}; Griffin-Lim {iters} iterations "
            f"{decode_ms:.0f} ms/clip")


def shipped(test, iters: list[int]) -> None:
    """The rows of the shipped fsdd net, for Griffin-Lim with several iteration counts."""
    net = load_feature_net("fsdd")
    config = audio.SpectrogramConfig(**net.meta["spectrogram"])
    images = audio.clips_to_images(test, config).images
    print(f"shipped fsdd net {net.sha256[:16]}..., test accuracy in its file "
          f"{net.meta['test_accuracy']:.4f}", flush=True)
    for n in iters:
        print(f"  {round_trip(net, config, test, images, n)}", flush=True)
    print(f"  sanity: {sanity(net, config)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--only", help="comma-separated representation names")
    parser.add_argument("--epochs", type=int, help="override the fsdd recipe's epochs")
    parser.add_argument("--iters", type=int, default=64, help="Griffin-Lim iterations")
    parser.add_argument("--check-data", action="store_true")
    parser.add_argument("--shipped", metavar="ITERS", help="measure the shipped fsdd net with "
                        "these comma-separated Griffin-Lim iteration counts instead")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.check_data:
        check_data(args.data_dir)
        return
    test = load_audio("fsdd", "test", data_dir=args.data_dir, download=False)
    if args.shipped:
        shipped(test, [int(n) for n in args.shipped.split(",")])
        return
    train = load_audio("fsdd", "train", data_dir=args.data_dir, download=False)
    names = args.only.split(",") if args.only else list(REPRESENTATIONS)
    plan = PLANS["fsdd"]
    print(f"fsdd: {len(train.clips)} train / {len(test.clips)} test clips; classifier "
          f"{plan}, epochs {args.epochs or plan.epochs}", flush=True)
    for name in names:
        config = REPRESENTATIONS[name]
        t0 = time.perf_counter()
        train_images = audio.clips_to_images(train, config).images
        test_images = audio.clips_to_images(test, config).images
        encode_ms = (time.perf_counter() - t0) * 1000 / (len(train.clips) + len(test.clips))
        t0 = time.perf_counter()
        net = fit_classifier(train_images, train.labels, seed=0, plan=plan, epochs=args.epochs,
                             log=lambda _: None)
        train_s = time.perf_counter() - t0
        print(f"{name:14s} {config.size}x{config.size} n_fft {config.n_fft:4d} hop "
              f"{config.hop:3d} {'mel' if config.mel else 'linear'}: "
              f"{round_trip(net, config, test, test_images, args.iters)}; encode "
              f"{encode_ms:.1f} ms/clip, classifier {train_s:.0f} s", flush=True)
        print(f"{'':14s} sanity: {sanity(net, config)}", flush=True)


if __name__ == "__main__":
    main()
