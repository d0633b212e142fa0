"""Datasets as in-memory tensors: named datasets (a registry of sources), IDX folders, image
folders and WAV folders; WAV I/O."""

from genlab.data.base import AudioData, ImageData, data_root, resize_images
from genlab.data.catalog import dataset_info, load_audio, load_images, spec_names
from genlab.data.idx import read_idx, write_idx
from genlab.data.sources import SOURCES, SPEC_KINDS
from genlab.data.wav import read_wav, wav_bytes, write_wav

__all__ = [
    "SOURCES",
    "SPEC_KINDS",
    "AudioData",
    "ImageData",
    "data_root",
    "dataset_info",
    "load_audio",
    "load_images",
    "read_idx",
    "read_wav",
    "resize_images",
    "spec_names",
    "wav_bytes",
    "write_idx",
    "write_wav",
]
