"""The fsdd source on tiny fake copies (an archive like GitHub's tag archive, or its extracted
recordings/), with the recordings checksum patched to theirs; nothing touches the network.
The real archive is checked by benchmarks/audio_representations.py --check-data."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from genlab.data import catalog, data_root, dataset_info, download, load_audio, wav_bytes
from genlab.data.sources import fsdd
from genlab.errors import UserError

SPEAKERS = ("bob", "alice")
INDICES = range(7)  # 0-4 test, 5-6 train


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(catalog, "SYSTEM_DATA_DIRS", [])
    monkeypatch.setattr(download, "URLS", {k: [(tmp_path / "no-mirror").as_uri()]
                                           for k in download.URLS})


def fake_recordings() -> dict[str, bytes]:
    """2 digits x 2 speakers x 7 takes; clip length encodes (digit, speaker, index)."""
    out = {}
    for d in (0, 1):
        for s, speaker in enumerate(SPEAKERS):
            for i in INDICES:
                n = 100 + 40 * d + 10 * s + i
                samples = (np.arange(n) % 50 - 25).astype(np.int16) * (i + 1)
                out[f"{d}_{speaker}_{i}.wav"] = wav_bytes(samples, 8000)
    return out


def pin(monkeypatch, recordings: dict[str, bytes]) -> None:
    monkeypatch.setattr(fsdd, "RECORDINGS_SHA256", fsdd.recordings_sha256(recordings))
    monkeypatch.setattr(fsdd, "NUM_RECORDINGS", len(recordings))


def write_archive(path: Path, recordings: dict[str, bytes], extra: dict[str, bytes] | None = None
                  ) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    members = {f"{fsdd.EXTRACTED}/README.md": b"fsdd", **(extra or {})}
    members.update({f"{fsdd.EXTRACTED}/recordings/{k}": v for k, v in recordings.items()})
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def write_folder(folder: Path, recordings: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in recordings.items():
        (folder / name).write_bytes(data)
    return folder


def check_splits(data_dir: Path) -> None:
    train = load_audio("fsdd", "train", data_dir=data_dir, download=False)
    test = load_audio("fsdd", "test", data_dir=data_dir, download=False)
    assert len(train.clips) == 2 * 2 * 2 and len(test.clips) == 2 * 2 * 5
    assert train.num_classes == 10 and train.class_names == [str(i) for i in range(10)]
    assert train.speaker_names == ["alice", "bob"]
    # sorted by digit, speaker, then take number; lengths say which file each clip came from
    assert train.clip_names[:3] == ["0_alice_5.wav", "0_alice_6.wav", "0_bob_5.wav"]
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert train.speakers.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert [len(c) for c in train.clips[:3]] == [115, 116, 105]
    assert all(c.dtype == torch.int16 for c in train.clips) and train.sample_rate == 8000
    assert set(test.clip_names).isdisjoint(train.clip_names)
    assert train.sha256 != test.sha256 and train.name == "fsdd" and test.split == "test"


def test_archive_is_read_without_extracting(tmp_path, monkeypatch):
    recordings = fake_recordings()
    pin(monkeypatch, recordings)
    archive = write_archive(tmp_path / "d" / fsdd.ARCHIVE, recordings)
    check_splits(tmp_path / "d")
    assert list((tmp_path / "d").iterdir()) == [archive]


@pytest.mark.parametrize("layout", ["fsdd/recordings", f"{fsdd.EXTRACTED}/recordings"])
def test_extracted_recordings_work_too(tmp_path, monkeypatch, layout):
    recordings = fake_recordings()
    pin(monkeypatch, recordings)
    write_folder(tmp_path / "d" / layout, recordings)
    check_splits(tmp_path / "d")
    other = tmp_path / "e"  # the same data however it is stored
    write_archive(other / fsdd.ARCHIVE, recordings)
    assert (load_audio("fsdd", data_dir=other, download=False).sha256
            == load_audio("fsdd", data_dir=tmp_path / "d", download=False).sha256)


def test_data_dir_may_be_the_recordings_folder_itself(tmp_path, monkeypatch):
    recordings = fake_recordings()
    pin(monkeypatch, recordings)
    write_folder(tmp_path / "r", recordings)
    assert len(load_audio("fsdd", "test", data_dir=tmp_path / "r", download=False).clips) == 20


def test_checksum_is_on_the_recordings(tmp_path, monkeypatch):
    recordings = fake_recordings()
    pin(monkeypatch, recordings)
    write_archive(tmp_path / "a" / fsdd.ARCHIVE, recordings, extra={"x/other.txt": b"more"})
    assert load_audio("fsdd", data_dir=tmp_path / "a", download=False).clips  # extra files: fine
    changed = dict(recordings)
    changed["1_bob_6.wav"] = wav_bytes(np.zeros(3, dtype=np.int16), 8000)
    write_archive(tmp_path / "b" / fsdd.ARCHIVE, changed)
    with pytest.raises(UserError, match=r"checksum failed .*recordings sha256") as err:
        load_audio("fsdd", data_dir=tmp_path / "b", download=False)
    assert str(tmp_path / "b" / fsdd.ARCHIVE) in str(err.value)
    missing = dict(recordings)
    del missing["0_bob_3.wav"]
    write_folder(tmp_path / "c" / "recordings", missing)
    with pytest.raises(UserError, match=r"27 recordings where FSDD 1\.0\.10 has 28"):
        load_audio("fsdd", data_dir=tmp_path / "c", download=False)
    rows = {r["name"]: r for r in dataset_info(tmp_path / "b", container=None)}
    assert rows["fsdd"]["present_locally"] is False
    assert rows["fsdd"]["problem"] == f"checksum failed: {tmp_path / 'b' / fsdd.ARCHIVE}"
    rows = {r["name"]: r for r in dataset_info(tmp_path / "a", container=None)}
    assert rows["fsdd"]["present_locally"] is True and rows["fsdd"]["problem"] is None
    assert rows["fsdd"]["where"] == str(tmp_path / "a") and "CC BY-SA 4.0" in rows["fsdd"][
        "licence"]


def test_unsafe_or_broken_archive_is_refused(tmp_path, monkeypatch):
    recordings = fake_recordings()
    pin(monkeypatch, recordings)
    write_archive(tmp_path / "a" / fsdd.ARCHIVE, recordings, extra={"../evil.wav": b"x"})
    with pytest.raises(UserError, match="unsafe member"):
        load_audio("fsdd", data_dir=tmp_path / "a", download=False)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / fsdd.ARCHIVE).write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(UserError, match=r"not a readable tar\.gz"):
        load_audio("fsdd", data_dir=tmp_path / "b", download=False)


def test_offline_error_says_what_to_download_and_where(tmp_path):
    with pytest.raises(UserError) as err:
        load_audio("fsdd", download=False)
    message = str(err.value)
    assert fsdd.ARCHIVE in message and "downloading is off" in message
    assert "archive/refs/tags/v1.0.10.tar.gz" in message
    assert str(data_root() / "fsdd") in message and "--data-dir" in message
    with pytest.raises(UserError, match=r"download failed .*no-mirror"):
        load_audio("fsdd")


def test_download_from_a_mirror_is_verified_and_atomic(tmp_path, monkeypatch):
    recordings = fake_recordings()
    pin(monkeypatch, recordings)
    mirror = tmp_path / "mirror"
    write_archive(mirror / fsdd.REMOTE_ARCHIVE, recordings)  # served under GitHub's name
    bad = tmp_path / "bad"
    write_archive(bad / fsdd.REMOTE_ARCHIVE, {**recordings, "0_bob_0.wav": b"RIFF"})
    monkeypatch.setitem(download.URLS, "fsdd", [bad.as_uri()])
    with pytest.raises(UserError, match=r"download failed.*recordings sha256"):
        load_audio("fsdd")
    assert list((data_root() / "fsdd").iterdir()) == []  # the bad download left nothing
    monkeypatch.setitem(download.URLS, "fsdd", [bad.as_uri(), mirror.as_uri()])
    data = load_audio("fsdd", "test")
    assert [p.name for p in (data_root() / "fsdd").iterdir()] == [fsdd.ARCHIVE]
    monkeypatch.setitem(download.URLS, "fsdd", [])  # now served from the cache
    assert load_audio("fsdd", "test").sha256 == data.sha256
    np.testing.assert_array_equal(data.clips[0].numpy(), load_audio("fsdd", "test").clips[0])


def test_resampled_on_request(tmp_path, monkeypatch):
    recordings = fake_recordings()
    pin(monkeypatch, recordings)
    write_folder(tmp_path / "recordings", recordings)
    data = load_audio("fsdd", "train", data_dir=tmp_path, download=False, sample_rate=16000)
    assert data.sample_rate == 16000 and len(data.clips[0]) == 230  # 115 samples at 8 kHz


def test_featurenet_train_fsdd_on_fake_data(tmp_path, monkeypatch, run_cli):
    from dataclasses import asdict

    from genlab import audio, featurenet

    recordings = fake_recordings()
    pin(monkeypatch, recordings)
    write_folder(tmp_path / "d" / "recordings", recordings)
    out = tmp_path / "fsdd.safetensors"
    code, stdout, err = run_cli("featurenet", "train", "fsdd", "--data-dir", tmp_path / "d",
                                "--epochs", "1", "--out", out)
    assert code == 0 and stdout.strip() == str(out), err
    net = featurenet.load_feature_net(out)
    assert net.meta["spectrogram"] == asdict(audio.DEFAULT)  # how its clips became images
    assert (net.config.channels, net.config.image_size) == (1, audio.DEFAULT.size)
    assert (net.meta["train_data"]["stop"], net.meta["test_data"]["stop"]) == (8, 20)
    train = load_audio("fsdd", data_dir=tmp_path / "d", download=False)
    assert net.meta["train_data"]["split_sha256"] == train.sha256  # of the clips
    assert net.meta["recipe"]["epochs"] == 1 and "sha256" in err


def test_shipped_fsdd_net_matches_the_spectrogram_and_its_pin():
    from dataclasses import asdict

    from genlab import audio, featurenet

    net = featurenet.load_feature_net("fsdd")
    assert net.sha256 == featurenet.PINNED_SHA256["fsdd"] and net.name == "fsdd"
    assert net.meta["test_accuracy"] >= 0.95
    assert net.meta["spectrogram"] == asdict(audio.DEFAULT)  # DEFAULT may not drift from it
    seen, held_out = net.meta["train_data"], net.meta["test_data"]
    assert (seen["split"], seen["stop"], held_out["split"], held_out["stop"]) == (
        "train", 2700, "test", 300)
    assert not featurenet.overlaps(seen, held_out)
    images = audio.waveforms_to_images(torch.zeros(2, audio.DEFAULT.clip_samples))
    assert net.embed(images)[1].shape == (2, 10)
