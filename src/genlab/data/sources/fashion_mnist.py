"""Fashion-MNIST: 70,000 Zalando article images in 10 classes, 28x28 grey (Xiao, Rasul and
Vollgraf, 2017, https://arxiv.org/abs/1708.07747)."""

from genlab.data.download import Checksum
from genlab.data.sources.idx_files import IdxSource

SOURCE = IdxSource(
    name="fashion-mnist",
    description="Zalando Fashion-MNIST clothing images",
    train_size=60000,
    test_size=10000,
    shape=(1, 28, 28),
    class_names=(
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
    ),
    licence="MIT; Zalando SE",
    urls=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
    # md5s of the decompressed files, so any compression of them passes
    checksums={
        "train-images-idx3-ubyte": Checksum(raw_md5="f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        "train-labels-idx1-ubyte": Checksum(raw_md5="9018921c3c673c538a1fc5bad174d6f9"),
        "t10k-images-idx3-ubyte": Checksum(raw_md5="8181f5470baa50b63fa0f6fddb340f0a"),
        "t10k-labels-idx1-ubyte": Checksum(raw_md5="15d484375f8d13e6eb1aabb0c3f46965"),
    },
)
