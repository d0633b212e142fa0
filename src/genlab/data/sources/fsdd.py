"""The Free Spoken Digit Dataset (FSDD) v1.0.10: 3,000 recordings of the digits 0-9 spoken by 6
speakers, 50 of each digit each, 8 kHz mono 16-bit WAV, trimmed of silence.

Zohar Jackson and contributors, https://github.com/Jakobovski/free-spoken-digit-dataset,
licensed CC BY-SA 4.0. Files are named `{digit}_{speaker}_{index}.wav`; the dataset's own split
puts indices 0-4 in test (300 clips) and 5-49 in train (2,700).

A data folder may hold the project's tag archive as downloaded or its extracted `recordings/`.
The archive is read in memory, never extracted. GitHub builds tag archives on request, so their
compressed bytes are not guaranteed stable: the checksum is on the recordings, the SHA-256 of
the listing that `sha256sum` prints for the 3,000 files in sorted name order.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import ClassVar

import numpy as np

from genlab.data.base import AudioData
from genlab.data.download import fetch
from genlab.data.sources.base import DIGIT_NAMES, Clips, Source, Status, missing_error
from genlab.data.wav import decode_wav
from genlab.errors import UserError

VERSION = "1.0.10"
ARCHIVE = f"free-spoken-digit-dataset-{VERSION}.tar.gz"
REMOTE_ARCHIVE = f"v{VERSION}.tar.gz"  # the name under GitHub's archive/refs/tags/
EXTRACTED = f"free-spoken-digit-dataset-{VERSION}"  # the archive's top folder
RECORDINGS = "recordings"
RECORDINGS_SHA256 = "1801eae019c063377d98f831d3f93574f259475df7332bb0e3d1b080fb5e6959"
NUM_RECORDINGS = 3000
SAMPLE_RATE = 8000
TEST_INDICES = range(5)  # recordings 0-4 of each digit and speaker; 5-49 are train
NAME = re.compile(r"(\d)_([a-z]+)_(\d+)\.wav")


def recordings_sha256(recordings: dict[str, bytes]) -> str:
    """SHA-256 of `sha256sum`'s output over the recordings in sorted name order."""
    listing = "".join(f"{hashlib.sha256(recordings[name]).hexdigest()}  {name}\n"
                      for name in sorted(recordings))
    return hashlib.sha256(listing.encode()).hexdigest()


def find_local(dirs: list[Path]) -> Path | None:
    """The first recordings folder (as extracted, or a folder of the .wav files) or archive."""
    for d in dirs:
        for folder in (d / RECORDINGS, d / EXTRACTED / RECORDINGS):
            if folder.is_dir():
                return folder
        if d.is_dir() and any(d.glob("[0-9]_*_*.wav")):  # DIR is the recordings folder itself
            return d
        if (d / ARCHIVE).is_file():
            return d / ARCHIVE
    return None


def read_recordings(source: Path) -> dict[str, bytes]:
    """name -> bytes of every .wav in a recordings folder, or in the archive's recordings/."""
    if source.is_dir():
        try:
            return {p.name: p.read_bytes() for p in sorted(source.glob("*.wav")) if p.is_file()}
        except OSError as e:
            raise UserError(f"cannot read the recordings in {source}: {e.strerror or e}") from None
    return _read_archive(source)


def _read_archive(archive: Path) -> dict[str, bytes]:
    # Members are read into memory, never extracted, so the archive can write nowhere;
    # a suspicious member name still rejects the whole archive (as for CIFAR-10).
    found: dict[str, bytes] = {}
    try:
        # gunzip once, then read the tar from memory: ~10x faster than tarfile's gzip stream
        data = gzip.decompress(archive.read_bytes())
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                parts = PurePosixPath(member.name).parts
                if member.name.startswith("/") or ".." in parts:
                    raise UserError(f"{archive} has unsafe member path {member.name!r}; "
                                    f"refusing it, use the official {ARCHIVE}")
                # recordings/NAME.wav, under at most one top folder (the tag archive's)
                if (member.isfile() and len(parts) in (2, 3) and parts[-2] == RECORDINGS
                        and parts[-1].endswith(".wav")):
                    found[parts[-1]] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise UserError(f"{archive} is not a readable tar.gz ({e}); delete or replace it") from None
    if not found:
        raise UserError(f"{archive} holds no {RECORDINGS}/*.wav; use the official {ARCHIVE}")
    return found


def mismatch(recordings: dict[str, bytes], source: Path) -> str | None:
    """None when the recordings are exactly FSDD v1.0.10's, else what differs."""
    if len(recordings) != NUM_RECORDINGS:
        return f"{len(recordings)} recordings where FSDD {VERSION} has {NUM_RECORDINGS}"
    digest = recordings_sha256(recordings)
    if digest != RECORDINGS_SHA256:
        return f"recordings sha256 {digest[:16]}..., expected {RECORDINGS_SHA256[:16]}..."
    return None


def _check_download(path: Path) -> str | None:
    try:
        return mismatch(_read_archive(path), path)
    except UserError as e:
        return str(e)


@dataclass
class FsddSource(Source):
    container: ClassVar[type] = AudioData

    def locate(self, dirs: list[Path], cache: Path, download: bool) -> Path:
        source = find_local(dirs)
        if source is not None:
            return source
        files = [ARCHIVE, f"{RECORDINGS}/"]
        what = f"{ARCHIVE} (from {self.urls[0].rstrip('/')}/{REMOTE_ARCHIVE}) or its {RECORDINGS}/"
        if not download:
            raise missing_error(self.name, files, dirs, "downloading is off", what, cache)
        try:
            return fetch(self.name, ARCHIVE, cache, _check_download, remote_name=REMOTE_ARCHIVE)
        except UserError as e:
            raise missing_error(self.name, files, dirs, str(e), what, cache) from None

    def read(self, split: str, dirs: list[Path], cache: Path, download: bool, *,
             sample_rate: int = SAMPLE_RATE, **options: object) -> Clips:
        source = self.locate(dirs, cache, download)
        recordings = read_recordings(source)
        problem = mismatch(recordings, source)
        if problem:
            raise UserError(f"{source}: checksum failed ({problem}); it is not FSDD {VERSION}: "
                            "replace it, or delete it so genlab downloads a fresh copy")
        odd = [name for name in recordings if not NAME.fullmatch(name)]
        if odd:
            raise UserError(f"{source}: {odd[0]} is not named DIGIT_SPEAKER_INDEX.wav; "
                            f"use the official FSDD {VERSION} files")
        parsed = sorted((int(d), speaker, int(i), name) for name in recordings
                        for d, speaker, i in [NAME.fullmatch(name).groups()])
        speaker_names = sorted({speaker for _, speaker, _, _ in parsed})
        wanted = [(d, s, i, name) for d, s, i, name in parsed
                  if (i in TEST_INDICES) == (split == "test")]
        clips = [decode_wav(recordings[name], f"{source}:{name}", sample_rate)[0]
                 for *_, name in wanted]
        return Clips(
            clips=clips,
            sample_rate=sample_rate,
            labels=np.array([d for d, *_ in wanted], dtype=np.int64),
            class_names=list(self.class_names),
            names=[name for *_, name in wanted],
            speakers=np.array([speaker_names.index(s) for _, s, _, _ in wanted], dtype=np.int64),
            speaker_names=speaker_names,
        )

    def status(self, dirs: list[Path], cache: Path) -> Status:
        source = find_local(dirs)
        if source is None:
            return Status(False, f"not found; downloads to {cache}")
        try:
            problem = mismatch(read_recordings(source), source)
        except UserError as e:
            problem = str(e)
        if problem:
            return Status(False, f"{source}: {problem}", f"checksum failed: {source}")
        return Status(True, str(source if source.is_dir() else source.parent))


SOURCE = FsddSource(
    name="fsdd",
    description="Free Spoken Digit Dataset 1.0.10: spoken digits, 8 kHz mono WAV, 0.14-2.3 s",
    train_size=2700,
    test_size=300,
    shape=None,
    class_names=DIGIT_NAMES,
    licence="CC BY-SA 4.0; Zohar Jackson and contributors (Jakobovski/free-spoken-digit-dataset)",
    urls=("https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/",),
)
