"""What a data source is: a named dataset (`Source`) or a kind of spec for your own files
(`SpecKind`, e.g. `folder:PATH`).

A source knows its files, checksums, mirrors, sizes, class names and licence, and reads a split
into numpy arrays. Where to look is decided once, by the catalog (`--data-dir`, `$GENLAB_DATA`,
the OS dataset folders): a source receives the directories to search (`dirs`), the cache it may
download into (`cache`) and whether it may download.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from genlab.data.base import ImageData
from genlab.errors import UserError

DIGIT_NAMES = tuple(str(i) for i in range(10))


@dataclass(frozen=True)
class Status:
    """Whether a named dataset is complete and verified on disk, for `genlab datasets`."""

    present: bool
    where: str  # the folders holding it, or why it is not usable
    problem: str | None = None  # e.g. "checksum failed: PATH": files there but not usable


@dataclass
class Images:
    """A split as read from disk: uint8 (N, C, H, W), integer labels or None, class names."""

    images: np.ndarray
    labels: np.ndarray | None
    class_names: list[str] | None


@dataclass
class Clips:
    """A split of audio as read from disk: mono int16 clips at `sample_rate`, with metadata."""

    clips: list[np.ndarray]
    sample_rate: int
    labels: np.ndarray | None
    class_names: list[str] | None
    names: list[str]  # file names, for messages
    speakers: np.ndarray | None = None
    speaker_names: list[str] | None = None


@dataclass
class Source:
    """A named dataset. Subclasses implement `read` and `status` for their file layout."""

    name: str
    description: str
    train_size: int
    test_size: int
    shape: tuple[int, ...] | None  # (C, H, W) of images; None for clips of varying length
    class_names: tuple[str, ...]
    licence: str  # one line: the licence and whom to credit
    urls: tuple[str, ...] = ()  # mirrors (base URLs), tried in order; copied to download.URLS
    container: ClassVar[type] = ImageData  # what genlab.data builds from it

    def read(self, split: str, dirs: list[Path], cache: Path, download: bool,
             **options: object) -> Images | Clips:
        raise NotImplementedError

    def status(self, dirs: list[Path], cache: Path) -> Status:
        raise NotImplementedError


@dataclass
class SpecKind:
    """A spec of the form `PREFIX:PATH` naming the user's own files (no checksum, no split:
    `split="test"` gives the same data unless the layout has splits, as IDX files do)."""

    prefix: str  # "folder"
    placeholder: str  # "PATH", shown as folder:PATH
    description: str
    container: ClassVar[type] = ImageData

    @property
    def spec(self) -> str:
        return f"{self.prefix}:{self.placeholder}"

    def read(self, path: Path, split: str, **options: object) -> Images | Clips:
        raise NotImplementedError


def missing_error(name: str, files: list[str], dirs: list[Path], reason: str, what: str,
                  cache: Path) -> UserError:
    """The one-line error for a named dataset that is neither on disk nor downloadable."""
    where = ", ".join(str(d) for d in dict.fromkeys(dirs))
    return UserError(
        f"{name}: {', '.join(files)} not found in {where} and {reason}; "
        f"put {what} in {cache} or pass --data-dir DIR"
    )


def check_declared_labels(labels: np.ndarray, class_names: tuple[str, ...] | list[str],
                          source: str | Path, dataset: str) -> None:
    """A label outside the declared classes means a corrupt file, never a bigger model."""
    if len(labels) and int(labels.max()) >= len(class_names):
        bad = int(labels.max())
        count = int((labels >= len(class_names)).sum())
        raise UserError(
            f"{source} has label {bad} ({count} label(s) outside 0..{len(class_names) - 1}, the "
            f"classes of {dataset}); the file is corrupt: replace it"
        )


def check_contiguous_labels(labels: np.ndarray, source: str | Path) -> None:
    """Labels of the user's own files must be the class ids 0..K-1.

    Unused ids are fine while there are few examples per id (a tiny test set); with at least
    ten per id on average, an id that never occurs means stray labels (one byte 255 among
    digits would otherwise make a 256-class model).
    """
    if not len(labels):
        return
    k = int(labels.max()) + 1
    used = np.unique(labels)
    if len(used) < k and len(labels) >= 10 * k:
        unused = sorted(set(range(k)) - set(used.tolist()))
        rare = int(labels.max())
        raise UserError(
            f"{source} has label {rare} ({int((labels == rare).sum())} time(s)) but labels "
            f"{_ranges(unused)} never occur; class ids must run 0..K-1: fix the stray labels "
            "or renumber the classes"
        )


def _ranges(ids: list[int]) -> str:
    """[3, 4, 5, 9] -> '3..5, 9'."""
    parts, start = [], ids[0]
    for prev, cur in zip(ids, [*ids[1:], None]):
        if cur is None or cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}..{prev}")
            start = cur
    return ", ".join(parts)
