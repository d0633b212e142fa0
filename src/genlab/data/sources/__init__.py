"""The registry of data sources: one file per named dataset, one object per kind of spec.

Adding a dataset is one file here (its files, checksums, mirrors, sizes, class names, licence
and reader: a `Source`) plus one line in `SOURCES`; `genlab datasets`, the `--data` help and
`genlab.data.load_images` / `load_audio` pick it up.
"""

from __future__ import annotations

from genlab.data.download import URLS
from genlab.data.sources import cifar10, digits, fashion_mnist, fsdd, mnist
from genlab.data.sources.base import Clips, Images, Source, SpecKind, Status
from genlab.data.sources.folders import IMAGE_FOLDER, WAV_FOLDER
from genlab.data.sources.idx_files import IDX_DIR

SOURCES: dict[str, Source] = {
    source.name: source
    for source in (digits.SOURCE, mnist.SOURCE, fashion_mnist.SOURCE, cifar10.SOURCE,
                   fsdd.SOURCE)
}
SPEC_KINDS: dict[str, SpecKind] = {kind.prefix: kind for kind in (IDX_DIR, IMAGE_FOLDER,
                                                                    WAV_FOLDER)}

for _source in SOURCES.values():  # the mirrors `download.fetch` tries (patchable there)
    URLS.setdefault(_source.name, list(_source.urls))

__all__ = ["SOURCES", "SPEC_KINDS", "Clips", "Images", "Source", "SpecKind", "Status"]
