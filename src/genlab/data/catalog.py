"""Dataset specs -> ImageData / AudioData: a named source (`digits`, `fsdd`, ...) or a kind of
spec for your own files (`idx:DIR`, `folder:PATH`, `wav:DIR`), all from the registry in
`genlab.data.sources`. The lookup order is decided here, once, for every named dataset."""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import torch

from genlab.data.base import (
    SPLITS,
    AudioData,
    ImageData,
    audio_sha256,
    content_sha256,
    data_root,
    to_tensors,
)
from genlab.data.download import Checksum
from genlab.data.sources import SOURCES, SPEC_KINDS, Clips, Images, Source, SpecKind
from genlab.data.sources.digits import digits_split_indices
from genlab.data.sources.idx_files import IdxSource
from genlab.errors import UserError

# Where OS packages put datasets (Debian's dataset-fashion-mnist, for one); tests replace it.
SYSTEM_DATA_DIRS: list[Path] = [Path("/usr/share/datasets")]

DATASETS = SOURCES  # the named datasets, by name (older name of the registry)

__all__ = ["CHECKSUMS", "DATASETS", "SYSTEM_DATA_DIRS", "container_of", "dataset_info",
           "digits_split_indices", "load_audio", "load_images", "search_dirs", "spec_names"]


class _IdxChecksums(MutableMapping):
    """`CHECKSUMS[name]`: the checksum table of each named IDX source, read and replaced on the
    source itself, so a patched table (tests, a private copy of a dataset) is the one used."""

    def __getitem__(self, name: str) -> dict[str, Checksum]:
        return self._source(name).checksums

    def __setitem__(self, name: str, table: dict[str, Checksum]) -> None:
        self._source(name).checksums = table

    def __delitem__(self, name: str) -> None:
        raise TypeError("a named dataset's checksum table can be replaced, not removed")

    def __iter__(self) -> Iterator[str]:
        return (name for name, s in SOURCES.items() if isinstance(s, IdxSource))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @staticmethod
    def _source(name: str) -> IdxSource:
        source = SOURCES.get(name)
        if not isinstance(source, IdxSource):
            raise KeyError(name)
        return source


CHECKSUMS: MutableMapping[str, dict[str, Checksum]] = _IdxChecksums()


def search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Directories searched for dataset `name`, in order."""
    dirs = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise UserError(f"data directory {root} does not exist; create it or fix --data-dir")
        dirs += [root / name, root]
    dirs.append(data_root() / name)
    dirs += [base / name for base in SYSTEM_DATA_DIRS]
    return dirs


def spec_names() -> list[str]:
    """Every `--data` value genlab.data reads: the named datasets, then `idx:DIR` and the like."""
    return [*SOURCES, *(kind.spec for kind in SPEC_KINDS.values())]


def resolve(spec: str) -> tuple[Source | SpecKind, str, Path | None]:
    """`spec` -> (its source or spec kind, the data's name, the path of a PREFIX:PATH spec)."""
    prefix, colon, rest = spec.partition(":")
    if colon and prefix in SPEC_KINDS:
        path = Path(rest).expanduser().resolve()
        return SPEC_KINDS[prefix], f"{prefix}:{path}", path
    name = spec.lower().replace("_", "-")
    if name not in SOURCES:
        close = difflib.get_close_matches(name, SOURCES, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(
            f"unknown dataset {spec!r}{hint}; use one of {', '.join(spec_names())}"
        )
    return SOURCES[name], name, None


def container_of(spec: str) -> type:
    """What `spec` loads into: ImageData (load_images) or AudioData (load_audio)."""
    return resolve(spec)[0].container


def _read(spec: str, split: str, data_dir: str | os.PathLike | None, download: bool,
          container: type, **options: object) -> tuple[Images | Clips, str]:
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    source, name, path = resolve(spec)
    if source.container is not container:
        raise UserError(
            f"{name} holds {_what(source.container)}, not {_what(container)}; "
            f"pick a dataset of {_what(container)} ({', '.join(_specs_of(container))})"
        )
    if path is not None:
        return source.read(path, split, **options), name
    dirs = search_dirs(name, data_dir)
    return source.read(split, dirs, data_root() / name, download, **options), name


def load_images(
    spec: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> ImageData:
    """Load a whole split into memory.

    `spec` is a dataset name (see `dataset_info`), `idx:DIR` (IDX files with the standard
    MNIST names, labels optional, no checksum) or `folder:PATH` (image files, optionally one
    subfolder per class). A folder has no split: `split="test"` returns the same images.
    Named datasets are looked up in `data_dir/<name>`, `data_dir`, `data_root()/<name>` and
    `/usr/share/datasets/<name>`, then downloaded into `data_root()/<name>` when `download`.
    Nothing is ever written beside the user's files.
    """
    raw, name = _read(spec, split, data_dir, download, ImageData)
    if len(raw.images) == 0:
        raise UserError(f"{name} ({split}) contains no images; use a non-empty dataset")
    image_t, label_t = to_tensors(raw.images, raw.labels)
    return ImageData(
        images=image_t,
        labels=label_t,
        num_classes=_num_classes(label_t, raw.class_names),
        name=name,
        split=split,
        sha256=content_sha256(image_t, label_t),
        class_names=raw.class_names,
    )


def load_audio(
    spec: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    *,
    sample_rate: int = 8000,
) -> AudioData:
    """Load a whole split of audio clips into memory, mono int16 at `sample_rate`.

    `spec` is `fsdd` or `wav:DIR` (WAV files, optionally one subfolder per class; no split).
    The lookup order and download rules are those of `load_images`. Clips at another rate are
    resampled, stereo is averaged to mono, 8/24/32-bit PCM becomes 16-bit (`genlab.data.wav`).
    """
    if sample_rate < 1:
        raise UserError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    raw, name = _read(spec, split, data_dir, download, AudioData, sample_rate=sample_rate)
    if not raw.clips:
        raise UserError(f"{name} ({split}) contains no clips; use a non-empty dataset")
    clips = [torch.from_numpy(c.astype("int16", copy=True)) for c in raw.clips]
    labels = None if raw.labels is None else torch.from_numpy(raw.labels.astype("int64"))
    speakers = None if raw.speakers is None else torch.from_numpy(raw.speakers.astype("int64"))
    return AudioData(
        clips=clips,
        sample_rate=raw.sample_rate,
        labels=labels,
        num_classes=_num_classes(labels, raw.class_names),
        name=name,
        split=split,
        sha256=audio_sha256(clips, labels),
        class_names=raw.class_names,
        speakers=speakers,
        speaker_names=raw.speaker_names,
        clip_names=raw.names,
    )


def dataset_info(data_dir: str | os.PathLike | None = None, *,
                 container: type | None = ImageData) -> list[dict]:
    """One row per named dataset, then per kind of spec, for `genlab datasets`; looks and
    verifies, never downloads.

    `container`: only the sources that load into it (ImageData by default, AudioData), or None
    for all. Keys: name, description, train_size, test_size, shape (C, H, W) or None for audio,
    num_classes, present_locally, where, problem ("checksum failed: PATH" when files are there
    but do not verify, else None), licence. The spec rows (idx:DIR, ...) have None for what
    depends on the user's files.
    """
    rows = []
    for name, source in SOURCES.items():
        if container is not None and source.container is not container:
            continue
        status = source.status(search_dirs(name, data_dir), data_root() / name)
        rows.append(
            {
                "name": name,
                "description": source.description,
                "train_size": source.train_size,
                "test_size": source.test_size,
                "shape": source.shape,
                "num_classes": len(source.class_names),
                "present_locally": status.present,
                "where": status.where,
                "problem": status.problem,
                "licence": source.licence,
            }
        )
    for kind in SPEC_KINDS.values():
        if container is not None and kind.container is not container:
            continue
        rows.append(
            {
                "name": kind.spec,
                "description": kind.description,
                "train_size": None,
                "test_size": None,
                "shape": None,
                "num_classes": None,
                "present_locally": None,
                "where": "your files",
                "problem": None,
                "licence": None,
            }
        )
    return rows


def _num_classes(labels: torch.Tensor | None, class_names: list[str] | None) -> int:
    if labels is None:
        return 0
    return len(class_names) if class_names else int(labels.max()) + 1


def _what(container: type) -> str:
    return "audio clips" if container is AudioData else "images"


def _specs_of(container: type) -> list[str]:
    return [*(n for n, s in SOURCES.items() if s.container is container),
            *(k.spec for k in SPEC_KINDS.values() if k.container is container)]
