"""A folder of image files (or, through `class_files`, any files), optionally one subfolder per
class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from genlab.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _is_file(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.suffix.lower() in suffixes and path.is_file()


def _files_under(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if _is_file(p, suffixes)
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def class_files(root: Path, suffixes: tuple[str, ...], what: str, prefix: str
                ) -> tuple[list[Path], np.ndarray | None, list[str] | None]:
    """The files of a `folder:`-style layout: (files, labels or None, class names or None).

    With subfolders, each subfolder holding such files (at any depth) is a class, sorted by
    name; otherwise the files directly in `root` are unlabeled. Hidden entries are skipped.
    `what` ("images") and `prefix` ("folder", of the spec folder:PATH) word the errors.
    """
    if not root.is_dir():
        raise UserError(f"{prefix}:{root} is not a directory; pass {prefix}:PATH of your {what}")
    loose = sorted(p for p in root.iterdir() if _is_file(p, suffixes))
    classes = {
        d.name: files
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".") and (files := _files_under(d, suffixes))
    }
    if classes and loose:
        raise UserError(
            f"{root} has {what} both at the top level (e.g. {loose[0].name}) and in class "
            f"subfolders; move the top-level {what} into a class subfolder"
        )
    if not classes and not loose:
        raise UserError(f"no {what} ({', '.join(suffixes)}) found in {root}")
    if not classes:
        return loose, None, None
    files = [f for group in classes.values() for f in group]
    labels = np.repeat(np.arange(len(classes)), [len(g) for g in classes.values()])
    return files, labels, list(classes)


def load_folder(root: Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Images (N, C, H, W) uint8, labels (or None), class names (or None) from `root`.

    With subfolders, each subfolder holding images is a class (sorted by name); otherwise the
    images directly in `root` are unlabeled. C is 1 when every image is greyscale, else 3.
    """
    files, labels, class_names = class_files(root, IMAGE_SUFFIXES, "images", "folder")

    arrays = []
    for path in files:
        arr = _read_image(path)
        if arrays and arr.shape[:2] != arrays[0].shape[:2]:
            (h, w), (h0, w0) = arr.shape[:2], arrays[0].shape[:2]
            raise UserError(
                f"{path} is {w}x{h} but {files[0]} is {w0}x{h0}; "
                "all images must share one size: resize them first"
            )
        arrays.append(arr)
    if any(arr.ndim == 3 for arr in arrays):
        arrays = [np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a for a in arrays]
    else:
        arrays = [a[..., None] for a in arrays]
    images = np.stack(arrays).transpose(0, 3, 1, 2)
    return images, labels, class_names


def _read_image(path: Path) -> np.ndarray:
    """(H, W) for greyscale files, else (H, W, 3) RGB."""
    try:
        with Image.open(path) as im:
            grey = im.mode in ("L", "1")
            return np.asarray(im.convert("L" if grey else "RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path} ({e}); fix or remove it") from None
