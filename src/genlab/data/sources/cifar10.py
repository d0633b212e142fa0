"""CIFAR-10: 60,000 colour photos in 10 classes, 32x32 (Krizhevsky, 2009, "Learning Multiple
Layers of Features from Tiny Images"). The binary format, its archive's name and checksum live
in `genlab.data.cifar`, read at call time so they can be patched in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import genlab.data.cifar as cifar
from genlab.data.download import fetch, mismatch
from genlab.data.sources.base import Images, Source, Status, missing_error
from genlab.errors import UserError


@dataclass
class Cifar10Source(Source):
    def read(self, split: str, dirs: list[Path], cache: Path, download: bool,
             **options: object) -> Images:
        source = cifar.find_local(dirs, split)
        if source is None:
            files = [cifar.TARBALL, f"{cifar.BATCH_DIR}/"]
            if not download:
                raise missing_error(self.name, files, dirs, "downloading is off",
                                    cifar.TARBALL, cache)
            try:
                source = fetch(self.name, cifar.TARBALL, cache, cifar.TARBALL_CHECKSUM)
            except UserError as e:
                raise missing_error(self.name, files, dirs, str(e), cifar.TARBALL,
                                    cache) from None
        if not source.is_dir():
            problem = mismatch(source, cifar.TARBALL_CHECKSUM)
            if problem:
                raise UserError(
                    f"{source}: {problem}; replace it with the official archive or delete it"
                )
        images, labels = cifar.read_split(source, split)  # labels checked against 0..9 there
        return Images(images, labels, list(self.class_names))

    def status(self, dirs: list[Path], cache: Path) -> Status:
        places = [cifar.find_local(dirs, split) for split in ("train", "test")]
        if None in places:
            return Status(False, f"not found; downloads to {cache}")
        for path in dict.fromkeys(p for p in places if p.is_file()):
            problem = mismatch(path, cifar.TARBALL_CHECKSUM)
            if problem:
                return Status(False, f"{path}: {problem}", f"checksum failed: {path}")
        return Status(True, ", ".join(dict.fromkeys(str(p if p.is_dir() else p.parent)
                                                    for p in places)))


SOURCE = Cifar10Source(
    name="cifar10",
    description="CIFAR-10 small colour photos (binary version)",
    train_size=50000,
    test_size=10000,
    shape=(3, 32, 32),
    class_names=cifar.CLASS_NAMES,
    licence="no licence stated; cite Krizhevsky (2009), Learning Multiple Layers of Features",
    urls=("https://www.cs.toronto.edu/~kriz/",),
)
