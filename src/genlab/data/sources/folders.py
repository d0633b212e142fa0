"""Your own files in a folder, optionally one subfolder per class: `folder:PATH` of images and
`wav:DIR` of WAV clips. Neither has splits: `split="test"` returns the same data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from genlab.data.base import AudioData
from genlab.data.folder import class_files, load_folder
from genlab.data.sources.base import Clips, Images, SpecKind
from genlab.data.wav import read_wav

WAV_SUFFIXES = (".wav",)
DEFAULT_SAMPLE_RATE = 8000  # Hz; the rate of fsdd


@dataclass
class ImageFolder(SpecKind):
    def read(self, path: Path, split: str, **options: object) -> Images:
        return Images(*load_folder(path))


@dataclass
class WavFolder(SpecKind):
    """WAV files, each converted to mono 16-bit at `sample_rate` (see `genlab.data.wav`)."""

    container: ClassVar[type] = AudioData

    def read(self, path: Path, split: str, *, sample_rate: int = DEFAULT_SAMPLE_RATE,
             **options: object) -> Clips:
        files, labels, class_names = class_files(path, WAV_SUFFIXES, "WAV files", self.prefix)
        clips = [read_wav(f, sample_rate)[0] for f in files]
        names = [str(f.relative_to(path)) for f in files]
        return Clips(clips, sample_rate, labels, class_names, names)


IMAGE_FOLDER = ImageFolder(
    prefix="folder",
    placeholder="PATH",
    description="image files in PATH, optionally one subfolder per class",
)
WAV_FOLDER = WavFolder(
    prefix="wav",
    placeholder="DIR",
    description="WAV files in DIR, optionally one subfolder per class (mono 16-bit at 8 kHz; "
                "others converted)",
)
