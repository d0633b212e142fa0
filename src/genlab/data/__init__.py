"""Image datasets as in-memory uint8 tensors: named datasets, IDX folders and image folders."""

from genlab.data.base import ImageData, data_root, resize_images
from genlab.data.catalog import dataset_info, load_images
from genlab.data.idx import read_idx, write_idx

__all__ = [
    "ImageData",
    "data_root",
    "dataset_info",
    "load_images",
    "read_idx",
    "resize_images",
    "write_idx",
]
