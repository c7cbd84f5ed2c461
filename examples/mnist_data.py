"""MNIST for the examples: TensorFlow Datasets when available, else a small bundled subset.

`load_mnist` returns the full MNIST (or the fixed binarization of Salakhutdinov & Murray) from
TensorFlow Datasets when it is prepared in the TFDS data directory, or when it can be downloaded.
Without either, it falls back -- loudly -- to `data/mnist_subset.npz` next to this file: the
first 5000 train and 1000 test images of the real MNIST (CC BY-SA 3.0, Y. LeCun and C. Cortes).
Results on that subset are a smoke test, not comparable with full-MNIST numbers.

Example scripts in this folder use it as::

    import mnist_data

    data = mnist_data.load_mnist("mnist")
"""

from __future__ import annotations

import pathlib
import socket
import threading
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow_datasets as tfds

__all__ = ["MnistData", "load_mnist"]

DATASETS = ("mnist", "binarized_mnist")
BUNDLED_SOURCE = "mnist-bundled-subset"
BUNDLED_PATH = pathlib.Path(__file__).resolve().parent / "data" / "mnist_subset.npz"

# TFDS downloads MNIST (and its prepared datasets, tried first) from Google Cloud Storage.
_DOWNLOAD_HOST = "storage.googleapis.com"
_DOWNLOAD_PORT = 443


class MnistData(NamedTuple):
    """Flattened MNIST images, without labels.

    Attributes:
        train: float32 [N, 784] pixel intensities in [0, 1]; exactly 0 or 1 when `binarized`.
        test: float32 [N_test, 784], same encoding as `train`.
        source: "mnist", "binarized_mnist" (both from TFDS) or "mnist-bundled-subset".
        binarized: True for the fixed binarization of "binarized_mnist", which needs no dynamic
            binarization; False for grey levels (including the bundled subset).
    """

    train: np.ndarray
    test: np.ndarray
    source: str
    binarized: bool


def _download_host_reachable(
    timeout: float, host: str = _DOWNLOAD_HOST, port: int = _DOWNLOAD_PORT
) -> bool:
    """Whether a TCP connection to `host:port` opens within `timeout` seconds.

    Name resolution runs in the same bounded wait (a background thread), so a hanging or failing
    DNS lookup counts as unreachable too. This avoids TFDS's own downloader, which retries for
    minutes when offline.
    """
    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:  # DNS failure (socket.gaierror), refused, timed out, no route...
            result.append(False)

    thread = threading.Thread(target=attempt, name="mnist-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result) and result[0]


def _load_prepared(builder: tfds.core.DatasetBuilder, dataset: str) -> MnistData:
    """The "train" and "test" splits of a prepared TFDS builder, flattened to float32 [N, 784]."""
    splits = []
    for split in ("train", "test"):
        images = np.asarray(tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))["image"])
        if images.dtype != np.uint8 or images.shape[1:] != (28, 28, 1):
            raise ValueError(
                f"unexpected {dataset} {split} images: shape {images.shape}, dtype {images.dtype}"
            )
        images = images.reshape(images.shape[0], 784)
        if dataset == "binarized_mnist":
            if np.any(images > 1):
                raise ValueError(f"binarized_mnist {split} images are not all 0 or 1")
            splits.append(images.astype(np.float32))
        else:
            splits.append(images.astype(np.float32) / np.float32(255.0))
    return MnistData(
        train=splits[0],
        test=splits[1],
        source=dataset,
        binarized=dataset == "binarized_mnist",
    )


def _load_bundled(dataset: str, reason: str, log: Callable[[str], None]) -> MnistData:
    """The bundled subset as grey levels in [0, 1], announced with a banner through `log`."""
    if not BUNDLED_PATH.is_file():
        raise FileNotFoundError(
            f"TFDS could not provide {dataset!r} ({reason}) and the bundled fallback "
            f"{BUNDLED_PATH} is missing"
        )
    with np.load(BUNDLED_PATH, allow_pickle=False) as subset:
        train = subset["train_images"].astype(np.float32) / np.float32(255.0)
        test = subset["test_images"].astype(np.float32) / np.float32(255.0)
    rule = "!" * 78
    lines = [
        rule,
        f"!! TensorFlow Datasets could not find or download {dataset!r}: {reason}.",
        f"!! This run uses a small BUNDLED SUBSET of real MNIST: {train.shape[0]} train and "
        f"{test.shape[0]} test digits",
        "!! (MNIST by Yann LeCun and Corinna Cortes, CC BY-SA 3.0; the subset is a derivative",
        "!!  under the same license).",
        "!! Results are NOT comparable with numbers reported on the full MNIST.",
    ]
    if dataset == "binarized_mnist":
        lines.append(
            "!! binarized_mnist was requested: the subset holds grey levels (binarized=False),"
        )
        lines.append("!! so it is binarized dynamically instead of the fixed binarization.")
    lines += [
        "!! For the full data: run once online so TFDS downloads and prepares it, or set",
        "!! TFDS_DATA_DIR (or pass data_dir) to a folder where it is prepared.",
        rule,
    ]
    log("\n".join(lines))
    return MnistData(train=train, test=test, source=BUNDLED_SOURCE, binarized=False)


def load_mnist(
    dataset: str = "mnist",
    *,
    data_dir: str | None = None,
    download: bool = True,
    log: Callable[[str], None] = print,
    probe_timeout: float = 3.0,
) -> MnistData:
    """Train and test images of MNIST, from TFDS or, failing that, the bundled subset.

    Args:
        dataset: "mnist" (grey levels, 60000 train / 10000 test) or "binarized_mnist" (the fixed
            binarization of Salakhutdinov & Murray, 50000 train / 10000 test; its 10000-image
            "validation" split is not used).
        data_dir: TFDS data directory; None uses TFDS's default (the TFDS_DATA_DIR environment
            variable as read when TFDS is imported, else ~/tensorflow_datasets).
        download: if the dataset is not prepared, whether to let TFDS download and prepare it.
            A quick connection probe to the download host comes first, since TFDS's downloader
            retries for minutes when offline.
        log: receives the banner announcing the fallback to the bundled subset.
        probe_timeout: seconds allowed to the connection probe, name resolution included.

    Returns:
        An `MnistData` of float32 [N, 784] images in [0, 1]. From TFDS: `source` is `dataset` and
        `binarized` is True for "binarized_mnist". When TFDS cannot provide the data (not
        prepared and `download` False, host unreachable, or download failed): the bundled subset
        of real MNIST (5000 train / 1000 test) as grey levels, with `source`
        "mnist-bundled-subset" and `binarized` False, whichever `dataset` was asked for.

    Raises:
        ValueError: if `dataset` is not one of the two names above.
        FileNotFoundError: if the fallback is needed and the bundled file is missing.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    builder = tfds.builder(dataset, data_dir=data_dir)
    if builder.is_prepared():
        return _load_prepared(builder, dataset)
    where = f"data_dir {builder.data_dir_root}"
    if not download:
        return _load_bundled(dataset, f"not prepared in {where} and download=False", log)
    if not _download_host_reachable(probe_timeout):
        reason = (
            f"not prepared in {where}, and {_DOWNLOAD_HOST}:{_DOWNLOAD_PORT} is unreachable "
            f"(offline?; probe timeout {probe_timeout:g} s)"
        )
        return _load_bundled(dataset, reason, log)
    try:
        builder.download_and_prepare()
    except Exception as error:  # any download or preparation failure means: fall back
        reason = f"not prepared in {where}, and the download failed: {error!r}"
        return _load_bundled(dataset, reason, log)
    return _load_prepared(builder, dataset)
