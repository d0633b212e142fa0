"""Dataset specs -> ImageData: the named datasets, idx:DIR and folder:PATH."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.data import cifar
from genlab.data.base import SPLITS, ImageData, content_sha256, data_root, resize_images, to_tensors
from genlab.data.download import Checksum, fetch, mismatch
from genlab.data.folder import load_folder
from genlab.data.idx import read_idx
from genlab.errors import UserError


@dataclass(frozen=True)
class _Dataset:
    description: str
    train_size: int
    test_size: int
    shape: tuple[int, int, int]
    class_names: tuple[str, ...]


_DIGIT_NAMES = tuple(str(i) for i in range(10))
_FASHION_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

DATASETS = {
    "digits": _Dataset(
        description="scikit-learn 8x8 handwritten digits upscaled to 32x32; offline default",
        train_size=1500,
        test_size=297,
        shape=(1, 32, 32),
        class_names=_DIGIT_NAMES,
    ),
    "mnist": _Dataset(
        description="MNIST handwritten digits",
        train_size=60000,
        test_size=10000,
        shape=(1, 28, 28),
        class_names=_DIGIT_NAMES,
    ),
    "fashion-mnist": _Dataset(
        description="Zalando Fashion-MNIST clothing images",
        train_size=60000,
        test_size=10000,
        shape=(1, 28, 28),
        class_names=_FASHION_NAMES,
    ),
    "cifar10": _Dataset(
        description="CIFAR-10 small colour photos (binary version)",
        train_size=50000,
        test_size=10000,
        shape=(3, 32, 32),
        class_names=cifar.CLASS_NAMES,
    ),
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Published md5s, checked on every named-dataset file. Debian re-compresses the .gz files, so a
# file passes when either its .gz md5 or its decompressed md5 matches.
CHECKSUMS: dict[str, dict[str, Checksum]] = {
    "mnist": {
        "train-images-idx3-ubyte": Checksum(
            "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"
        ),
        "train-labels-idx1-ubyte": Checksum(
            "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"
        ),
        "t10k-images-idx3-ubyte": Checksum(
            "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"
        ),
        "t10k-labels-idx1-ubyte": Checksum(
            "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637"
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": Checksum(raw_md5="f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        "train-labels-idx1-ubyte": Checksum(raw_md5="9018921c3c673c538a1fc5bad174d6f9"),
        "t10k-images-idx3-ubyte": Checksum(raw_md5="8181f5470baa50b63fa0f6fddb340f0a"),
        "t10k-labels-idx1-ubyte": Checksum(raw_md5="15d484375f8d13e6eb1aabb0c3f46965"),
    },
}

# Where OS packages put datasets (Debian's dataset-fashion-mnist, for one); tests replace it.
SYSTEM_DATA_DIRS: list[Path] = [Path("/usr/share/datasets")]

_DIGITS_TRAIN = 1500


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


def _find_idx(base: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for path in (d / base, d / f"{base}.gz"):
            if path.is_file():
                return path
    return None


def _missing_error(name: str, files: list[str], dirs: list[Path], reason: str) -> UserError:
    where = ", ".join(str(d) for d in dict.fromkeys(dirs))
    what = "the four IDX files" if name in CHECKSUMS else cifar.TARBALL
    return UserError(
        f"{name}: {', '.join(files)} not found in {where} and {reason}; "
        f"put {what} in {data_root() / name} or pass --data-dir DIR"
    )


def digits_split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/test indices into scikit-learn's 1797 digits (seeded permutation)."""
    perm = np.random.default_rng(0).permutation(1797)
    return perm[:_DIGITS_TRAIN], perm[_DIGITS_TRAIN:]


def _load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # deferred: importing sklearn takes ~1 s

    digits = load_digits()
    pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]
    images = resize_images(torch.from_numpy(pixels), 32).numpy()
    train, test = digits_split_indices()
    index = train if split == "train" else test
    return images[index], digits.target[index]


def _read_idx_pair(
    images_path: Path, labels_path: Path | None
) -> tuple[np.ndarray, np.ndarray | None]:
    images = read_idx(images_path, ndim=3)[:, None]
    labels = None if labels_path is None else read_idx(labels_path, ndim=1)
    if labels is not None and len(labels) != len(images):
        raise UserError(
            f"{labels_path} has {len(labels)} labels but {images_path} has {len(images)} "
            "images; use matching files"
        )
    return images, labels


def _load_named_idx(
    name: str, split: str, data_dir: str | os.PathLike | None, allow_download: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    dirs = search_dirs(name, data_dir)
    found = {base: _find_idx(base, dirs) for base in IDX_FILES[split]}
    cache = data_root() / name
    for base, path in found.items():
        if path is not None:
            continue
        if not allow_download:
            raise _missing_error(name, [f"{base}[.gz]"], dirs, "downloading is off")
        try:
            found[base] = fetch(name, f"{base}.gz", cache, CHECKSUMS[name][base])
        except UserError as e:
            raise _missing_error(name, [f"{base}[.gz]"], dirs, str(e)) from None
    for base, path in found.items():
        problem = mismatch(path, CHECKSUMS[name][base])
        if problem:
            raise UserError(
                f"{path}: {problem}; it is corrupt or not the official {name} file: "
                "replace it, or delete it so genlab downloads a fresh copy"
            )
    return _read_idx_pair(*found.values())


def _load_cifar10(
    split: str, data_dir: str | os.PathLike | None, allow_download: bool
) -> tuple[np.ndarray, np.ndarray]:
    dirs = search_dirs("cifar10", data_dir)
    source = cifar.find_local(dirs, split)
    if source is None:
        files = [cifar.TARBALL, f"{cifar.BATCH_DIR}/"]
        if not allow_download:
            raise _missing_error("cifar10", files, dirs, "downloading is off")
        try:
            source = fetch(
                "cifar10", cifar.TARBALL, data_root() / "cifar10", cifar.TARBALL_CHECKSUM
            )
        except UserError as e:
            raise _missing_error("cifar10", files, dirs, str(e)) from None
    if not source.is_dir():
        problem = mismatch(source, cifar.TARBALL_CHECKSUM)
        if problem:
            raise UserError(
                f"{source}: {problem}; replace it with the official archive or delete it"
            )
    return cifar.read_split(source, split)


def _load_idx_dir(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    if not folder.is_dir():
        raise UserError(f"idx:{folder} is not a directory; pass idx:DIR holding the IDX files")
    image_base, label_base = IDX_FILES[split]
    images_path = _find_idx(image_base, [folder])
    if images_path is None:
        raise UserError(
            f"{folder / image_base}[.gz] not found; idx:DIR needs {image_base} "
            f"(and optionally {label_base}), raw or gzipped"
        )
    return _read_idx_pair(images_path, _find_idx(label_base, [folder]))


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
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    class_names: list[str] | None = None
    if spec.startswith("idx:"):
        folder = Path(spec[4:]).expanduser().resolve()
        name = f"idx:{folder}"
        images, labels = _load_idx_dir(folder, split)
    elif spec.startswith("folder:"):
        folder = Path(spec[7:]).expanduser().resolve()
        name = f"folder:{folder}"
        images, labels, class_names = load_folder(folder)
    else:
        name = spec.lower().replace("_", "-")
        if name not in DATASETS:
            close = difflib.get_close_matches(name, DATASETS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UserError(
                f"unknown dataset {spec!r}{hint}; use one of {', '.join(DATASETS)}, "
                "idx:DIR or folder:PATH"
            )
        if name == "digits":
            images, labels = _load_digits(split)
        elif name == "cifar10":
            images, labels = _load_cifar10(split, data_dir, download)
        else:
            images, labels = _load_named_idx(name, split, data_dir, download)
        class_names = list(DATASETS[name].class_names)
    if len(images) == 0:
        raise UserError(f"{name} ({split}) contains no images; use a non-empty dataset")
    image_t, label_t = to_tensors(images, labels)
    if label_t is None:
        num_classes = 0
    else:
        num_classes = len(class_names) if class_names else int(label_t.max()) + 1
    return ImageData(
        images=image_t,
        labels=label_t,
        num_classes=num_classes,
        name=name,
        split=split,
        sha256=content_sha256(image_t, label_t),
        class_names=class_names,
    )


def _local_status(name: str, data_dir: str | os.PathLike | None) -> tuple[bool, str]:
    """Whether dataset `name` is complete and verified on disk, and where (or why not)."""
    dirs = search_dirs(name, data_dir)
    if name == "cifar10":
        places = [cifar.find_local(dirs, split) for split in SPLITS]
        checks = [(p, cifar.TARBALL_CHECKSUM) for p in places if p is not None and p.is_file()]
    else:
        bases = [base for pair in IDX_FILES.values() for base in pair]
        places = [_find_idx(base, dirs) for base in bases]
        checks = [(p, CHECKSUMS[name][b]) for p, b in zip(places, bases) if p is not None]
    if None in places:
        return False, f"not found; downloads to {data_root() / name}"
    for path, checksum in checks:
        problem = mismatch(path, checksum)
        if problem:
            return False, f"{path}: {problem}"
    return True, ", ".join(dict.fromkeys(str(p if p.is_dir() else p.parent) for p in places))


def dataset_info(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """One row per named dataset for `genlab datasets`; looks and verifies, never downloads.

    Keys: name, description, train_size, test_size, shape (C, H, W), num_classes,
    present_locally, where. The idx:DIR and folder:PATH rows have None for what depends on
    the user's files.
    """
    rows = []
    for name, info in DATASETS.items():
        if name == "digits":
            present, where = True, "bundled with scikit-learn"
        else:
            present, where = _local_status(name, data_dir)
        rows.append(
            {
                "name": name,
                "description": info.description,
                "train_size": info.train_size,
                "test_size": info.test_size,
                "shape": info.shape,
                "num_classes": len(info.class_names),
                "present_locally": present,
                "where": where,
            }
        )
    for name, description in (
        ("idx:DIR", "IDX files with the MNIST file names in DIR (raw or .gz; labels optional)"),
        ("folder:PATH", "image files in PATH, optionally one subfolder per class"),
    ):
        rows.append(
            {
                "name": name,
                "description": description,
                "train_size": None,
                "test_size": None,
                "shape": None,
                "num_classes": None,
                "present_locally": None,
                "where": "your files",
            }
        )
    return rows
