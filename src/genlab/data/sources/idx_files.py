"""Datasets stored as four IDX files with the MNIST names: the named ones (`IdxSource`: mnist,
fashion-mnist) with published checksums and mirrors, and `idx:DIR` for your own."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from genlab.data.download import Checksum, fetch, mismatch
from genlab.data.idx import read_idx
from genlab.data.sources.base import (
    Images,
    Source,
    SpecKind,
    Status,
    check_contiguous_labels,
    check_declared_labels,
    missing_error,
)
from genlab.errors import UserError

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx(base: str, dirs: list[Path]) -> Path | None:
    """The first `base` or `base.gz` in `dirs`."""
    for d in dirs:
        for path in (d / base, d / f"{base}.gz"):
            if path.is_file():
                return path
    return None


def read_idx_pair(images_path: Path, labels_path: Path | None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (N, 1, H, W) and labels (N,) or None, checked to be the same count."""
    images = read_idx(images_path, ndim=3)[:, None]
    labels = None if labels_path is None else read_idx(labels_path, ndim=1)
    if labels is not None and len(labels) != len(images):
        raise UserError(
            f"{labels_path} has {len(labels)} labels but {images_path} has {len(images)} "
            "images; use matching files"
        )
    return images, labels


@dataclass
class IdxSource(Source):
    """A named IDX dataset. A file passes when its .gz md5 or its decompressed md5 matches
    (`checksums`, by file name without .gz): Debian re-compresses the .gz files."""

    checksums: dict[str, Checksum] = field(default_factory=dict)

    def read(self, split: str, dirs: list[Path], cache: Path, download: bool,
             **options: object) -> Images:
        found = {base: find_idx(base, dirs) for base in IDX_FILES[split]}
        for base, path in found.items():
            if path is not None:
                continue
            if not download:
                raise missing_error(self.name, [f"{base}[.gz]"], dirs, "downloading is off",
                                    "the four IDX files", cache)
            try:
                found[base] = fetch(self.name, f"{base}.gz", cache, self.checksums[base])
            except UserError as e:
                raise missing_error(self.name, [f"{base}[.gz]"], dirs, str(e),
                                    "the four IDX files", cache) from None
        for base, path in found.items():
            problem = mismatch(path, self.checksums[base])
            if problem:
                raise UserError(
                    f"{path}: {problem}; it is corrupt or not the official {self.name} file: "
                    "replace it, or delete it so genlab downloads a fresh copy"
                )
        images_path, labels_path = found.values()
        images, labels = read_idx_pair(images_path, labels_path)
        check_declared_labels(labels, self.class_names, labels_path, self.name)
        return Images(images, labels, list(self.class_names))

    def status(self, dirs: list[Path], cache: Path) -> Status:
        bases = [base for pair in IDX_FILES.values() for base in pair]
        places = [find_idx(base, dirs) for base in bases]
        if None in places:
            return Status(False, f"not found; downloads to {cache}")
        for path, base in zip(places, bases):
            problem = mismatch(path, self.checksums[base])
            if problem:
                return Status(False, f"{path}: {problem}", f"checksum failed: {path}")
        return Status(True, ", ".join(dict.fromkeys(str(p.parent) for p in places)))


@dataclass
class IdxDir(SpecKind):
    """`idx:DIR`: IDX files with the MNIST names in DIR, raw or gzipped, labels optional."""

    def read(self, path: Path, split: str, **options: object) -> Images:
        if not path.is_dir():
            raise UserError(f"idx:{path} is not a directory; pass idx:DIR holding the IDX files")
        image_base, label_base = IDX_FILES[split]
        images_path = find_idx(image_base, [path])
        if images_path is None:
            raise UserError(
                f"{path / image_base}[.gz] not found; idx:DIR needs {image_base} "
                f"(and optionally {label_base}), raw or gzipped"
            )
        labels_path = find_idx(label_base, [path])
        images, labels = read_idx_pair(images_path, labels_path)
        if labels is not None:
            check_contiguous_labels(labels, labels_path)
        return Images(images, labels, None)


IDX_DIR = IdxDir(
    prefix="idx",
    placeholder="DIR",
    description="IDX files with the MNIST file names in DIR (raw or .gz; labels optional)",
)
