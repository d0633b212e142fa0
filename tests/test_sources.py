"""The registry of data sources: what each declares, the datasets table, label checks."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from genlab.data import (
    SOURCES,
    SPEC_KINDS,
    AudioData,
    ImageData,
    catalog,
    dataset_info,
    download,
    load_images,
    spec_names,
    write_idx,
)
from genlab.data.download import Checksum
from genlab.data.sources import Source
from genlab.errors import UserError

IDX = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
       "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(catalog, "SYSTEM_DATA_DIRS", [])
    monkeypatch.setattr(download, "URLS", {k: [(tmp_path / "no-mirror").as_uri()]
                                           for k in download.URLS})


def write_idx_split(folder: Path, labels: np.ndarray, seed: int = 0) -> None:
    """Both splits, with these labels in each, as raw IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 3, 3), dtype=np.uint8)
    for images_name, labels_name in IDX.values():
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels.astype(np.uint8))


def pass_checksums(monkeypatch, name: str, folder: Path) -> None:
    table = {base: Checksum(raw_md5=hashlib.md5((folder / base).read_bytes()).hexdigest())
             for pair in IDX.values() for base in pair}
    monkeypatch.setitem(catalog.CHECKSUMS, name, table)


def test_every_source_declares_itself():
    assert list(SOURCES) == ["digits", "mnist", "fashion-mnist", "cifar10", "fsdd"]
    for name, source in SOURCES.items():
        assert isinstance(source, Source) and source.name == name
        assert source.licence and source.description and len(source.class_names) == 10
        assert source.train_size > 0 and source.test_size > 0
        assert source.container in (ImageData, AudioData)
        assert name in download.URLS  # its mirrors reach the downloader
    assert SOURCES["fsdd"].container is AudioData and SOURCES["fsdd"].shape is None
    assert spec_names() == [*SOURCES, "idx:DIR", "folder:PATH", "wav:DIR"]
    assert [k.container for k in SPEC_KINDS.values()] == [ImageData, ImageData, AudioData]


def test_unknown_dataset_lists_every_spec():
    with pytest.raises(UserError, match="fsdd, idx:DIR, folder:PATH, wav:DIR") as err:
        load_images("nope")
    assert "\n" not in str(err.value)


def test_dataset_info_by_container(tmp_path):
    images = [r["name"] for r in dataset_info(tmp_path)]
    assert images == ["digits", "mnist", "fashion-mnist", "cifar10", "idx:DIR", "folder:PATH"]
    audio = [r["name"] for r in dataset_info(tmp_path, container=AudioData)]
    assert audio == ["fsdd", "wav:DIR"]
    every = dataset_info(tmp_path, container=None)
    assert [r["name"] for r in every] == [*SOURCES, "idx:DIR", "folder:PATH", "wav:DIR"]
    fsdd = next(r for r in every if r["name"] == "fsdd")
    assert (fsdd["train_size"], fsdd["test_size"], fsdd["num_classes"]) == (2700, 300, 10)
    assert fsdd["present_locally"] is False and fsdd["problem"] is None
    assert not list(tmp_path.glob("cache/*"))  # looking never downloads


def test_checksum_failure_is_reported_not_a_bare_no(tmp_path, run_cli, monkeypatch):
    write_idx_split(tmp_path / "mnist", np.arange(6) % 10)
    rows = {r["name"]: r for r in dataset_info(tmp_path)}
    bad = tmp_path / "mnist" / "train-images-idx3-ubyte"
    assert rows["mnist"]["present_locally"] is False
    assert rows["mnist"]["problem"] == f"checksum failed: {bad}"
    assert rows["fashion-mnist"]["problem"] is None  # absent is not a failure
    code, out, _ = run_cli("datasets", "--data-dir", tmp_path)
    table = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert code == 0 and f"checksum failed: {bad}" in table["mnist"]
    assert " no " in table["fashion-mnist"] and "fsdd" in table and "wav:DIR" in table


def test_checksums_table_reads_and_writes_the_sources(monkeypatch):
    assert set(catalog.CHECKSUMS) == {"mnist", "fashion-mnist"}
    original = catalog.CHECKSUMS["mnist"]
    assert original is SOURCES["mnist"].checksums
    monkeypatch.setitem(catalog.CHECKSUMS, "mnist", {})
    assert SOURCES["mnist"].checksums == {}
    monkeypatch.undo()
    assert SOURCES["mnist"].checksums is original
    with pytest.raises(KeyError):
        catalog.CHECKSUMS["digits"]


def test_stray_label_in_a_named_dataset_is_a_user_error(tmp_path, monkeypatch):
    labels = np.arange(40) % 10
    labels[7] = 255
    write_idx_split(tmp_path / "mnist", labels)
    pass_checksums(monkeypatch, "mnist", tmp_path / "mnist")
    with pytest.raises(UserError, match=r"has label 255 \(1 label\(s\) outside 0..9") as err:
        load_images("mnist", data_dir=tmp_path)
    assert str(tmp_path / "mnist" / "train-labels-idx1-ubyte") in str(err.value)


def test_stray_label_in_idx_dir_is_a_user_error_not_256_classes(tmp_path):
    labels = np.arange(3000) % 10
    labels[123] = 255
    write_idx_split(tmp_path / "d", labels)
    with pytest.raises(UserError, match=r"label 255 \(1 time\(s\)\) but labels 10..254 never") \
            as err:
        load_images(f"idx:{tmp_path / 'd'}")
    assert str(tmp_path / "d" / "train-labels-idx1-ubyte") in str(err.value)
    write_idx_split(tmp_path / "ok", np.arange(3000) % 10)  # every class used: fine
    assert load_images(f"idx:{tmp_path / 'ok'}").num_classes == 10
    write_idx_split(tmp_path / "tiny", np.array([0, 3, 9]))  # too few examples to judge
    assert load_images(f"idx:{tmp_path / 'tiny'}").num_classes == 10
