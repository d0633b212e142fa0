"""Tests for genlab.data, on tiny synthetic files; nothing touches the network."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from genlab.data import (
    ImageData,
    catalog,
    cifar,
    data_root,
    dataset_info,
    download,
    load_images,
    read_idx,
    resize_images,
    write_idx,
)
from genlab.data.download import Checksum
from genlab.errors import UserError

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private data cache, no system data dirs and mirrors that cannot answer."""
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(catalog, "SYSTEM_DATA_DIRS", [])
    nowhere = (tmp_path / "no-mirror").as_uri()
    monkeypatch.setattr(download, "URLS", {k: [nowhere] for k in download.URLS})


def make_idx_files(folder: Path, n: int = 6, suffix: str = ".gz", seed: int = 0) -> dict:
    """Write both splits of a tiny 4x5 IDX dataset; return the arrays by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for images_name, labels_name in IDX_NAMES.values():
        arrays[images_name] = rng.integers(0, 256, (n, 4, 5), dtype=np.uint8)
        arrays[labels_name] = rng.integers(0, 10, n, dtype=np.uint8)
    for name, arr in arrays.items():
        write_idx(folder / f"{name}{suffix}", arr)
    return arrays


def content_checksums(folder: Path) -> dict[str, Checksum]:
    """Checksums that the fake files in `folder` pass (md5 of decompressed content)."""
    return {
        name: Checksum(raw_md5=hashlib.md5(read_idx_bytes(folder, name)).hexdigest())
        for pair in IDX_NAMES.values()
        for name in pair
    }


def read_idx_bytes(folder: Path, name: str) -> bytes:
    return gzip.decompress((folder / f"{name}.gz").read_bytes())


# --- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([0, 7, 255])
    write_idx(tmp_path / f"images{suffix}", images)
    write_idx(tmp_path / f"labels{suffix}", labels)
    assert ((tmp_path / f"images{suffix}").read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")
    np.testing.assert_array_equal(read_idx(tmp_path / f"images{suffix}", ndim=3), images)
    np.testing.assert_array_equal(read_idx(tmp_path / f"labels{suffix}", ndim=1), labels)


def test_write_idx_rejects_values_outside_a_byte(tmp_path):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.array([1, 256]))
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.array([0.5]))


def _bad_magic(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[2] = 0x0D  # float data
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def _extra_byte(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0")


def _truncate_gz(path: Path) -> None:
    path.write_bytes(gzip.compress(path.read_bytes())[:-12])


@pytest.mark.parametrize(
    ("corrupt", "name", "message"),
    [
        (_bad_magic, "images", "bad IDX magic 0x00000d03"),
        (_truncate, "images", "truncated"),
        (_extra_byte, "images", "longer than its header"),
        (_truncate_gz, "images.gz", "truncated or corrupt gzip"),
        (lambda p: None, "images.gz", "not gzip data"),
        (lambda p: p.write_bytes(b"\0\0"), "images", "only 2 bytes"),
    ],
)
def test_corrupt_idx_is_a_user_error_naming_the_file(tmp_path, corrupt, name, message):
    path = tmp_path / name
    write_idx(tmp_path / "images", np.zeros((2, 3, 3), dtype=np.uint8))
    if name.endswith(".gz"):
        (tmp_path / "images").rename(path)
    corrupt(path)
    with pytest.raises(UserError, match=message) as err:
        read_idx(path, ndim=3)
    assert str(path) in str(err.value)


def test_labels_file_where_images_expected_is_rejected(tmp_path):
    write_idx(tmp_path / "labels", np.zeros(4, dtype=np.uint8))
    with pytest.raises(UserError, match=r"0x00000801 \(expected 0x00000803\)"):
        read_idx(tmp_path / "labels", ndim=3)


# --- idx:DIR ---------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_dir_loads_both_splits(tmp_path, suffix):
    arrays = make_idx_files(tmp_path / "d", suffix=suffix)
    for split, (images_name, labels_name) in IDX_NAMES.items():
        data = load_images(f"idx:{tmp_path / 'd'}", split=split)
        assert isinstance(data, ImageData)
        assert data.images.shape == (6, 1, 4, 5) and data.images.dtype == torch.uint8
        assert data.labels.dtype == torch.int64
        np.testing.assert_array_equal(data.images[:, 0].numpy(), arrays[images_name])
        np.testing.assert_array_equal(data.labels.numpy(), arrays[labels_name])
        assert data.num_classes == int(arrays[labels_name].max()) + 1
        assert data.name == f"idx:{(tmp_path / 'd').resolve()}" and data.split == split
        expected = hashlib.sha256(arrays[images_name].tobytes())
        expected.update(arrays[labels_name].astype("<i8").tobytes())
        assert data.sha256 == expected.hexdigest()


def test_idx_dir_without_labels_is_unlabeled(tmp_path):
    make_idx_files(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    data = load_images(f"idx:{tmp_path}")
    assert data.labels is None and data.num_classes == 0 and data.class_names is None


def test_idx_dir_count_mismatch_names_the_files(tmp_path):
    make_idx_files(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    write_idx(labels, np.zeros(5, dtype=np.uint8))
    with pytest.raises(UserError, match=r"has 5 labels but .* has 6 images") as err:
        load_images(f"idx:{tmp_path}")
    assert str(labels) in str(err.value)


def test_idx_dir_missing_images_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="train-images-idx3-ubyte"):
        load_images(f"idx:{tmp_path}")
    with pytest.raises(UserError, match="not a directory"):
        load_images(f"idx:{tmp_path / 'absent'}")


# --- digits ----------------------------------------------------------------------------------


def test_digits_splits():
    train = load_images("digits")
    test = load_images("digits", split="test")
    assert train.images.shape == (1500, 1, 32, 32) and test.images.shape == (297, 1, 32, 32)
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert set(train.labels.tolist()) == set(range(10)) == set(test.labels.tolist())
    assert train.num_classes == 10 and train.class_names == [str(i) for i in range(10)]
    assert train.images.max() == 255  # 16 grey levels scaled to the full byte range

    train_idx, test_idx = catalog.digits_split_indices()
    assert not set(train_idx.tolist()) & set(test_idx.tolist())
    assert sorted(train_idx.tolist() + test_idx.tolist()) == list(range(1797))
    np.testing.assert_array_equal(train_idx, catalog.digits_split_indices()[0])
    assert load_images("digits").sha256 == train.sha256 != test.sha256


# --- named IDX datasets: checksums and downloads ---------------------------------------------


def test_named_dataset_with_wrong_checksum_is_rejected(tmp_path):
    make_idx_files(tmp_path / "d")
    with pytest.raises(UserError, match="checksum mismatch") as err:
        load_images("fashion-mnist", data_dir=tmp_path / "d")
    assert str(tmp_path / "d" / "train-images-idx3-ubyte.gz") in str(err.value)


def test_named_dataset_passes_by_content_md5(tmp_path, monkeypatch):
    make_idx_files(tmp_path / "fashion-mnist")
    monkeypatch.setitem(
        catalog.CHECKSUMS, "fashion-mnist", content_checksums(tmp_path / "fashion-mnist")
    )
    data = load_images("fashion-mnist", split="test", data_dir=tmp_path)  # finds DIR/<name>
    assert data.images.shape == (6, 1, 4, 5) and data.name == "fashion-mnist"
    assert data.num_classes == 10 and data.class_names[0] == "T-shirt/top"


def test_named_dataset_passes_by_gz_md5(tmp_path, monkeypatch):
    make_idx_files(tmp_path)
    table = {
        name: Checksum(gz_md5=hashlib.md5((tmp_path / f"{name}.gz").read_bytes()).hexdigest())
        for pair in IDX_NAMES.values()
        for name in pair
    }
    monkeypatch.setitem(catalog.CHECKSUMS, "mnist", table)
    assert load_images("mnist", data_dir=tmp_path).images.shape == (6, 1, 4, 5)


def test_download_tries_the_next_mirror(tmp_path, monkeypatch):
    arrays = make_idx_files(tmp_path / "mirror")
    monkeypatch.setitem(catalog.CHECKSUMS, "mnist", content_checksums(tmp_path / "mirror"))
    mirrors = [(tmp_path / "missing").as_uri(), (tmp_path / "mirror").as_uri()]
    monkeypatch.setitem(download.URLS, "mnist", mirrors)
    data = load_images("mnist", split="test")
    np.testing.assert_array_equal(data.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    cache = data_root() / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == [
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    ]
    monkeypatch.setitem(download.URLS, "mnist", [])  # now served from the cache
    assert load_images("mnist", split="test").sha256 == data.sha256


def test_download_with_bad_checksum_leaves_nothing(tmp_path, monkeypatch):
    make_idx_files(tmp_path / "mirror")
    monkeypatch.setitem(download.URLS, "fashion-mnist", [(tmp_path / "mirror").as_uri()])
    with pytest.raises(UserError, match=r"download failed.*checksum mismatch"):
        load_images("fashion-mnist")
    assert list((data_root() / "fashion-mnist").iterdir()) == []


def test_missing_dataset_error_says_where_to_put_files(tmp_path):
    with pytest.raises(UserError) as err:
        load_images("fashion-mnist", download=False)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and "downloading is off" in message
    assert str(data_root() / "fashion-mnist") in message and "--data-dir" in message
    with pytest.raises(UserError, match=r"download failed .*no-mirror"):
        load_images("fashion-mnist")
    with pytest.raises(UserError, match="does not exist"):
        load_images("mnist", data_dir=tmp_path / "absent")


def test_unknown_dataset_and_split():
    with pytest.raises(UserError, match="did you mean fashion-mnist"):
        load_images("fashion-mnst")
    with pytest.raises(UserError, match="unknown split"):
        load_images("digits", split="valid")


def test_dataset_info(tmp_path, monkeypatch):
    make_idx_files(tmp_path / "fashion-mnist")
    monkeypatch.setitem(
        catalog.CHECKSUMS, "fashion-mnist", content_checksums(tmp_path / "fashion-mnist")
    )
    rows = {row["name"]: row for row in dataset_info(data_dir=tmp_path)}
    assert {"digits", "mnist", "fashion-mnist", "cifar10", "idx:DIR", "folder:PATH"} == set(rows)
    assert rows["fashion-mnist"]["present_locally"] is True
    assert rows["fashion-mnist"]["where"] == str(tmp_path / "fashion-mnist")
    assert rows["mnist"]["present_locally"] is False
    assert str(data_root() / "mnist") in rows["mnist"]["where"]
    assert rows["cifar10"]["shape"] == (3, 32, 32) and rows["mnist"]["train_size"] == 60000
    assert not list(tmp_path.glob("cache/*"))  # looking never downloads


def test_data_root_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("GENLAB_DATA", str(tmp_path / "x"))
    assert data_root() == tmp_path / "x"
    monkeypatch.delenv("GENLAB_DATA")
    assert data_root() == Path.home() / ".cache" / "genlab"


# --- CIFAR-10 --------------------------------------------------------------------------------


def cifar_batch(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    records = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    return records.tobytes(), images, labels


def write_cifar(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for split, names in cifar.BATCHES.items():
        parts = [cifar_batch(2, seed) for seed, _ in enumerate(names, start=len(expected))]
        for name, (data, _, _) in zip(names, parts):
            (folder / name).write_bytes(data)
        expected[split] = (
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        )
    return expected


def check_cifar(data_dir: Path, expected: dict) -> None:
    for split in ("train", "test"):
        data = load_images("cifar10", split=split, data_dir=data_dir)
        assert data.images.shape == (len(expected[split][0]), 3, 32, 32)
        np.testing.assert_array_equal(data.images.numpy(), expected[split][0])
        np.testing.assert_array_equal(data.labels.numpy(), expected[split][1])
        assert data.class_names[0] == "airplane" and data.num_classes == 10


def test_cifar_bins_directly_or_in_batches_folder(tmp_path):
    check_cifar(tmp_path / "a", write_cifar(tmp_path / "a"))
    check_cifar(tmp_path / "b", write_cifar(tmp_path / "b" / cifar.BATCH_DIR))


def make_tarball(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_cifar_tarball_is_read_without_extracting(tmp_path, monkeypatch):
    expected = write_cifar(tmp_path / "bins")
    tarball = tmp_path / "d" / cifar.TARBALL
    tarball.parent.mkdir()
    make_tarball(
        tarball,
        {f"{cifar.BATCH_DIR}/{p.name}": p.read_bytes() for p in (tmp_path / "bins").iterdir()},
    )
    with pytest.raises(UserError, match="checksum mismatch"):
        load_images("cifar10", data_dir=tarball.parent)
    md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "TARBALL_CHECKSUM", Checksum(gz_md5=md5))
    check_cifar(tarball.parent, expected)
    assert [p.name for p in tarball.parent.iterdir()] == [cifar.TARBALL]


def test_cifar_tarball_with_unsafe_member_is_refused(tmp_path, monkeypatch):
    tarball = tmp_path / cifar.TARBALL
    make_tarball(tarball, {"../evil.bin": b"x"})
    monkeypatch.setattr(
        cifar, "TARBALL_CHECKSUM", Checksum(gz_md5=hashlib.md5(tarball.read_bytes()).hexdigest())
    )
    with pytest.raises(UserError, match="unsafe member"):
        load_images("cifar10", data_dir=tmp_path)


def test_cifar_corrupt_batch_names_the_file(tmp_path):
    write_cifar(tmp_path)
    _truncate(tmp_path / "test_batch.bin")
    with pytest.raises(UserError, match="not a multiple of 3073") as err:
        load_images("cifar10", split="test", data_dir=tmp_path)
    assert str(tmp_path / "test_batch.bin") in str(err.value)


# --- folder:PATH -----------------------------------------------------------------------------


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_folder_with_class_subfolders(tmp_path):
    rgb = np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3)
    grey = np.full((6, 5), 200, dtype=np.uint8)
    save(tmp_path / "dogs" / "b.png", rgb)
    save(tmp_path / "cats" / "x.png", grey)
    save(tmp_path / "cats" / "y.bmp", rgb)
    before = sorted(tmp_path.rglob("*"))
    data = load_images(f"folder:{tmp_path}", split="test")
    assert data.class_names == ["cats", "dogs"] and data.num_classes == 2
    assert data.labels.tolist() == [0, 0, 1]
    assert data.images.shape == (3, 3, 6, 5)  # one colour image makes all of them RGB
    assert (data.images[0] == 200).all()
    np.testing.assert_array_equal(data.images[2].permute(1, 2, 0).numpy(), rgb)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written beside the user's files


def test_folder_of_greyscale_images_is_unlabeled_single_channel(tmp_path):
    for i in range(3):
        save(tmp_path / f"{i}.png", np.full((4, 4), i, dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("ignored")
    data = load_images(f"folder:{tmp_path}")
    assert data.images.shape == (3, 1, 4, 4) and data.labels is None and data.num_classes == 0
    assert data.images[:, 0, 0, 0].tolist() == [0, 1, 2]


def test_folder_with_mixed_sizes_is_rejected(tmp_path):
    save(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    save(tmp_path / "b.png", np.zeros((4, 6), dtype=np.uint8))
    with pytest.raises(UserError, match=r"is 6x4 but .* is 4x4") as err:
        load_images(f"folder:{tmp_path}")
    assert str(tmp_path / "b.png") in str(err.value)


def test_folder_with_unreadable_image_names_it(tmp_path):
    save(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "b.jpg").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image") as err:
        load_images(f"folder:{tmp_path}")
    assert str(tmp_path / "b.jpg") in str(err.value)


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no images"):
        load_images(f"folder:{tmp_path}")


# --- resize ----------------------------------------------------------------------------------


def test_resize_images():
    images = torch.randint(0, 256, (3, 2, 28, 28), dtype=torch.uint8)
    out = resize_images(images, 64)
    assert out.shape == (3, 2, 64, 64) and out.dtype == torch.uint8
    assert resize_images(images, 14).shape == (3, 2, 14, 14)
    assert resize_images(images, 28) is images
    constant = torch.full((2, 1, 28, 28), 137, dtype=torch.uint8)
    assert (resize_images(constant, 64) == 137).all() and (resize_images(constant, 9) == 137).all()
    with pytest.raises(ValueError):
        resize_images(images.float(), 64)
    with pytest.raises(UserError):
        resize_images(images, 0)
