"""Tests of `mcobjectives.experimental.mnist.load_mnist` and of the bundled MNIST subset it
falls back to, and of its binarization."""

from __future__ import annotations

import os
import pathlib
import socket
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from mcobjectives.experimental.mnist import data as mnist_data

tfds = pytest.importorskip("tensorflow_datasets")

# In the package, as package data (not beside the examples): the wheel installs it.
SUBSET_PATH = (
    pathlib.Path(__file__).resolve().parents[1]
    / "mcobjectives"
    / "experimental"
    / "mnist"
    / "bundled"
    / "mnist_subset.npz"
)
N_TRAIN, N_TEST = 5000, 1000


def _prepared(name: str) -> bool:
    """Whether `name` is prepared in the TFDS_DATA_DIR given to the tests."""
    data_dir = os.environ.get("TFDS_DATA_DIR")
    return bool(data_dir) and tfds.builder(name, data_dir=data_dir).is_prepared()


def _require(name: str) -> None:
    if not _prepared(name):
        pytest.skip(f"TFDS_DATA_DIR not set or {name} not prepared there")


@pytest.fixture(scope="module")
def full_mnist() -> mnist_data.MnistData:
    _require("mnist")
    return mnist_data.load_mnist("mnist", log=pytest.fail)


@pytest.fixture(scope="module")
def full_binarized() -> mnist_data.MnistData:
    _require("binarized_mnist")
    return mnist_data.load_mnist("binarized_mnist", log=pytest.fail)


def test_bundled_subset_file():
    assert SUBSET_PATH.is_file()
    assert SUBSET_PATH.stat().st_size < 1.5e6
    with np.load(SUBSET_PATH, allow_pickle=False) as subset:
        arrays = {key: subset[key] for key in subset.files}
    assert arrays["train_images"].shape == (N_TRAIN, 784)
    assert arrays["test_images"].shape == (N_TEST, 784)
    assert arrays["train_labels"].shape == (N_TRAIN,)
    assert arrays["test_labels"].shape == (N_TEST,)
    for key in ("train_images", "test_images", "train_labels", "test_labels"):
        assert arrays[key].dtype == np.uint8, key
    assert "CC BY-SA 3.0" in str(arrays["source"])
    # Real digits: the full grey range, mostly background, and all ten classes.
    for key in ("train_images", "test_images"):
        assert arrays[key].min() == 0 and arrays[key].max() == 255
        assert 0.7 < np.mean(arrays[key] == 0) < 0.9
    assert set(np.unique(arrays["train_labels"])) == set(range(10))
    assert set(np.unique(arrays["test_labels"])) == set(range(10))


def test_bundled_subset_is_the_first_tfds_images():
    _require("mnist")
    count = 200
    with np.load(SUBSET_PATH, allow_pickle=False) as subset:
        for split, prefix in (("test", "test"), ("train", "train")):
            reference = tfds.as_numpy(
                tfds.load(
                    "mnist",
                    split=f"{split}[:{count}]",
                    batch_size=-1,
                    data_dir=os.environ["TFDS_DATA_DIR"],
                )
            )
            np.testing.assert_array_equal(
                subset[f"{prefix}_images"][:count], reference["image"].reshape(count, 784)
            )
            np.testing.assert_array_equal(subset[f"{prefix}_labels"][:count], reference["label"])


def test_full_mnist(full_mnist):
    assert full_mnist.source == "mnist"
    assert full_mnist.binarized is False
    assert full_mnist.train.shape == (60000, 784)
    assert full_mnist.test.shape == (10000, 784)
    for images in (full_mnist.train, full_mnist.test):
        assert images.dtype == np.float32
        assert images.min() == 0.0 and images.max() == 1.0
    # The same encoding as the bundled subset, whose images come first in TFDS order.
    with np.load(SUBSET_PATH, allow_pickle=False) as subset:
        np.testing.assert_array_equal(
            full_mnist.test[:N_TEST], subset["test_images"].astype(np.float32) / np.float32(255)
        )


def test_full_binarized_mnist(full_binarized):
    assert full_binarized.source == "binarized_mnist"
    assert full_binarized.binarized is True
    assert full_binarized.train.shape == (50000, 784)
    assert full_binarized.test.shape == (10000, 784)
    for images in (full_binarized.train, full_binarized.test):
        assert images.dtype == np.float32
        assert set(np.unique(images)) == {0.0, 1.0}


def _assert_fallback(data: mnist_data.MnistData, logged: list[str], dataset: str) -> None:
    assert data.source == "mnist-bundled-subset"
    assert data.binarized is False
    assert data.train.shape == (N_TRAIN, 784) and data.train.dtype == np.float32
    assert data.test.shape == (N_TEST, 784) and data.test.dtype == np.float32
    assert 0.0 <= data.train.min() and data.train.max() <= 1.0
    assert len(np.unique(data.train)) > 2  # grey levels
    text = "\n".join(logged)
    assert "bundled" in text.lower()
    assert "CC BY-SA 3.0" in text
    assert "NOT comparable" in text
    assert "TFDS_DATA_DIR" in text
    assert f"{N_TRAIN} train" in text and f"{N_TEST} test" in text
    assert dataset in text


def _no_probe(*args, **kwargs):
    raise AssertionError("the network probe must not run")


@pytest.mark.parametrize("dataset", ["mnist", "binarized_mnist"])
def test_fallback_without_download(tmp_path, monkeypatch, dataset):
    monkeypatch.setattr(mnist_data, "_download_host_reachable", _no_probe)
    logged: list[str] = []
    data = mnist_data.load_mnist(dataset, data_dir=str(tmp_path), download=False, log=logged.append)
    _assert_fallback(data, logged, dataset)
    assert "download=False" in "\n".join(logged)
    if dataset == "binarized_mnist":
        assert "binarized dynamically" in "\n".join(logged)


def test_fallback_when_offline(tmp_path, monkeypatch):
    probes: list[float] = []

    def unreachable(timeout, *args, **kwargs):
        probes.append(timeout)
        return False

    monkeypatch.setattr(mnist_data, "_download_host_reachable", unreachable)
    logged: list[str] = []
    data = mnist_data.load_mnist(
        "mnist", data_dir=str(tmp_path), download=True, log=logged.append, probe_timeout=0.01
    )
    assert probes == [0.01]
    _assert_fallback(data, logged, "mnist")
    assert "unreachable" in "\n".join(logged)


def test_fallback_when_download_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_data, "_download_host_reachable", lambda *args, **kwargs: True)
    real_builder = tfds.builder
    attempts: list[str] = []

    def builder(name, **kwargs):
        built = real_builder(name, **kwargs)

        def failing_download(*args, **kwargs):
            attempts.append(name)
            raise ConnectionError("simulated download failure")

        built.download_and_prepare = failing_download
        return built

    monkeypatch.setattr(tfds, "builder", builder)
    logged: list[str] = []
    data = mnist_data.load_mnist("mnist", data_dir=str(tmp_path), log=logged.append)
    assert attempts == ["mnist"]
    _assert_fallback(data, logged, "mnist")
    assert "simulated download failure" in "\n".join(logged)


def test_probe_failures_are_unreachable(monkeypatch):
    # No real network access: socket.create_connection is replaced.
    def dns_failure(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(mnist_data.socket, "create_connection", dns_failure)
    assert mnist_data._download_host_reachable(1.0) is False

    def hang(*args, **kwargs):  # e.g. a DNS lookup that never answers
        time.sleep(2.0)
        raise TimeoutError

    monkeypatch.setattr(mnist_data.socket, "create_connection", hang)
    start = time.monotonic()
    assert mnist_data._download_host_reachable(0.1) is False
    assert time.monotonic() - start < 1.0

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(mnist_data.socket, "create_connection", lambda *a, **k: Connection())
    assert mnist_data._download_host_reachable(1.0) is True


@pytest.mark.parametrize("bad", ["MNIST", "fashion_mnist", ""])
def test_bad_dataset_name(monkeypatch, bad):
    monkeypatch.setattr(tfds, "builder", _no_probe)
    with pytest.raises(ValueError, match="dataset"):
        mnist_data.load_mnist(bad)


def test_without_tensorflow_datasets_the_bundled_subset_loads_and_the_banner_names_the_extra(
    monkeypatch,
):
    """TFDS is imported by load_mnist alone; without it (a plain install of the wheel) the
    bundled subset loads, loudly, and the banner says what to install for the full data."""
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # `import` now fails
    banners = []
    data = mnist_data.load_mnist("mnist", log=banners.append)
    assert data.source == mnist_data.BUNDLED_SOURCE
    assert data.train.shape == (5000, 784) and data.test.shape == (1000, 784)
    assert len(banners) == 1
    assert "TensorFlow Datasets is not installed" in banners[0]
    assert "mcobjectives[examples]" in banners[0]


def test_the_bundled_path_is_the_subset_file():
    assert mnist_data.BUNDLED_PATH == SUBSET_PATH


def test_binarize_is_a_function_of_its_seed():
    """Bernoulli(intensity) pixels, the same for the same seed, whatever the seed's dtype."""
    images = np.random.default_rng(0).random((200, 784)).astype(np.float32)
    first = mnist_data.binarize(images, [3, 4]).numpy()
    assert first.dtype == np.float32 and set(np.unique(first)) == {0.0, 1.0}
    np.testing.assert_array_equal(first, mnist_data.binarize(images, tf.constant([3, 4], tf.int64)))
    assert not np.array_equal(first, mnist_data.binarize(images, [3, 5]).numpy())
    assert abs(first.mean() - images.mean()) < 0.01
    np.testing.assert_array_equal(mnist_data.binarize(np.ones((2, 3)), [0, 0]), np.ones((2, 3)))
    np.testing.assert_array_equal(mnist_data.binarize(np.zeros((2, 3)), [0, 0]), np.zeros((2, 3)))
