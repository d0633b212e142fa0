"""scikit-learn's 8x8 handwritten digits (a copy of the UCI Optical Recognition of Handwritten
Digits test set), upscaled to 32x32: 1,797 images, bundled, so always available offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genlab.data.base import resize_images
from genlab.data.sources.base import DIGIT_NAMES, Images, Source, Status

TRAIN_SIZE = 1500
TOTAL = 1797


def digits_split_indices() -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/test indices into scikit-learn's 1797 digits (seeded permutation)."""
    perm = np.random.default_rng(0).permutation(TOTAL)
    return perm[:TRAIN_SIZE], perm[TRAIN_SIZE:]


@dataclass
class DigitsSource(Source):
    def read(self, split: str, dirs: list[Path], cache: Path, download: bool,
             **options: object) -> Images:
        from sklearn.datasets import load_digits  # deferred: importing sklearn takes ~1 s

        digits = load_digits()
        pixels = np.rint(digits.images * (255 / 16)).astype(np.uint8)[:, None]  # 17 levels
        images = resize_images(torch.from_numpy(pixels), 32).numpy()
        train, test = digits_split_indices()
        index = train if split == "train" else test
        return Images(images[index], digits.target[index], list(self.class_names))

    def status(self, dirs: list[Path], cache: Path) -> Status:
        return Status(True, "bundled with scikit-learn")


SOURCE = DigitsSource(
    name="digits",
    description="scikit-learn 8x8 handwritten digits upscaled to 32x32; offline default",
    train_size=TRAIN_SIZE,
    test_size=TOTAL - TRAIN_SIZE,
    shape=(1, 32, 32),
    class_names=DIGIT_NAMES,
    licence="CC BY 4.0; E. Alpaydin and C. Kaynak, UCI Machine Learning Repository",
)
