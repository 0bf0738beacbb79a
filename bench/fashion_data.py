"""Fashion-MNIST from Debian's dataset-fashion-mnist package (IDX, gzipped), as float32 / 255."""
import gzip
import os

import numpy as np

DIR = "/usr/share/datasets/fashion-mnist"


def _idx(name):
    with gzip.open(os.path.join(DIR, name), "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load():
    x = _idx("train-images-idx3-ubyte.gz").astype("float32") / 255.0
    y = _idx("train-labels-idx1-ubyte.gz").astype("int64")
    tx = _idx("t10k-images-idx3-ubyte.gz").astype("float32") / 255.0
    ty = _idx("t10k-labels-idx1-ubyte.gz").astype("int64")
    return x, y, tx, ty
