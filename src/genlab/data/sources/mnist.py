"""MNIST: 70,000 handwritten digits, 28x28 grey (LeCun, Cortes and Burges)."""

from genlab.data.download import Checksum
from genlab.data.sources.base import DIGIT_NAMES
from genlab.data.sources.idx_files import IdxSource

SOURCE = IdxSource(
    name="mnist",
    description="MNIST handwritten digits",
    train_size=60000,
    test_size=10000,
    shape=(1, 28, 28),
    class_names=DIGIT_NAMES,
    licence="CC BY-SA 3.0; Yann LeCun, Corinna Cortes and Christopher J.C. Burges",
    urls=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    # Published md5s: (.gz as distributed, decompressed content)
    checksums={
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
)
