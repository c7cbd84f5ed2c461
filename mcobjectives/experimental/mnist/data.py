"""MNIST's images: loading (with its offline fallback), dynamic binarization, batches.

`load_mnist` reads MNIST (grey levels) or the fixed binarization of Salakhutdinov &
Murray from TensorFlow Datasets, and falls back -- loudly -- to a subset of 5000 training
and 1000 test images of the real MNIST, bundled as package data (`BUNDLED_PATH`), when
TFDS can neither find nor download it. `binarize` draws pixel ~ Bernoulli(intensity) from
a stateless seed; `train_dataset` is the `tf.data` pipeline of the examples, whose every
batch is a function of (seed, step) alone; `test_batches` binarizes the test set once,
with one seed for every run.
"""

from __future__ import annotations

import importlib.resources
import pathlib
import re
import socket
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import tensorflow as tf

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

__all__ = [
    "BUNDLED_PATH",
    "BUNDLED_SOURCE",
    "DATASETS",
    "DATASET_SIZES",
    "NUM_PIXELS",
    "TEST_BINARIZATION_SEED",
    "MnistData",
    "binarize",
    "load_mnist",
    "test_batches",
    "train_dataset",
]

DATASETS = ("mnist", "binarized_mnist")
# (training, test) images of each TFDS dataset (binarized_mnist's validation split unused).
DATASET_SIZES = {"mnist": (60000, 10000), "binarized_mnist": (50000, 10000)}
BUNDLED_SOURCE = "mnist-bundled-subset"
# Package data (mcobjectives/experimental/mnist/bundled/, with its README and license), so
# that the fallback works in any installation of the package, not only in a source checkout.
BUNDLED_PATH = importlib.resources.files(__package__) / "bundled" / "mnist_subset.npz"
NUM_PIXELS = 784
# The seed of the test set's one binarization, the same for every run.
TEST_BINARIZATION_SEED = (0, 0x7E57)

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


def _import_tfds():
    """TensorFlow Datasets, or None where it is not installed (a plain install of the wheel)."""
    try:
        import tensorflow_datasets
    except ImportError:
        return None
    return tensorflow_datasets


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
    tfds = _import_tfds()
    splits = []
    for split in ("train", "test"):
        images = np.asarray(tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))["image"])
        if images.dtype != np.uint8 or images.shape[1:] != (28, 28, 1):
            raise ValueError(
                f"unexpected {dataset} {split} images: shape {images.shape}, dtype {images.dtype}"
            )
        images = images.reshape(images.shape[0], NUM_PIXELS)
        if dataset == "binarized_mnist":
            if np.any(images > 1):
                raise ValueError(f"binarized_mnist {split} images are not all 0 or 1")
            splits.append(images.astype(np.float32))
        else:
            splits.append(images.astype(np.float32) / np.float32(255.0))
    return MnistData(
        train=splits[0], test=splits[1], source=dataset, binarized=dataset == "binarized_mnist"
    )


def _first_line(error: BaseException) -> str:
    """`TypeName: the first line of its message` (at most 300 characters)."""
    message = getattr(error, "message", None) or str(error) or ""
    # TensorFlow's op errors wrap the cause in the names of the function and the op.
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\].*", "", message)
    lines = message.strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")


def _load_bundled(dataset: str, reason: str, log: Callable[[str], None]) -> MnistData:
    """The bundled subset as grey levels in [0, 1], announced with a banner through `log`."""
    if not BUNDLED_PATH.is_file():
        raise FileNotFoundError(
            f"TFDS could not provide {dataset!r} ({reason}) and the bundled fallback "
            f"{BUNDLED_PATH} is missing (it is package data of mcobjectives: reinstall the "
            "package, from a wheel or a source checkout)"
        )
    # Opened through importlib.resources, so that it loads from wherever the package is.
    with BUNDLED_PATH.open("rb") as file, np.load(file, allow_pickle=False) as subset:
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
        installed, not prepared and `download` False, host unreachable, download failed, or
        prepared files that cannot be read -- truncated or corrupted records, garbage
        metadata -- which are treated as absent, not re-downloaded over): the bundled subset
        of real MNIST (5000 train / 1000 test, `BUNDLED_PATH`) as grey levels, with `source`
        "mnist-bundled-subset" and `binarized` False, whichever `dataset` was asked for.

    Raises:
        ValueError: if `dataset` is not one of the two names above.
        FileNotFoundError: if the fallback is needed and the bundled file is missing.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    tfds = _import_tfds()
    if tfds is None:
        reason = (
            'TensorFlow Datasets is not installed (pip install "mcobjectives[examples]", or '
            "tensorflow-datasets, reads the full data)"
        )
        return _load_bundled(dataset, reason, log)
    builder = None
    try:
        builder = tfds.builder(dataset, data_dir=data_dir)
        if builder.is_prepared():
            return _load_prepared(builder, dataset)
    except Exception as error:  # a damaged folder (truncated records, garbage metadata...)
        # The dataset's own folder (never the whole data_dir: it may hold other datasets).
        where = (
            builder.data_dir
            if builder is not None
            else str(pathlib.Path(data_dir or "$TFDS_DATA_DIR") / dataset)
        )
        reason = (
            f"its prepared files in {where} cannot be read ({_first_line(error)}); delete "
            "that folder and run once online to prepare it again"
        )
        return _load_bundled(dataset, reason, log)
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


def binarize(images: tf.Tensor | np.ndarray, seed: tf.Tensor | Sequence[int]) -> tf.Tensor:
    """Dynamic binarization: pixel ~ Bernoulli(intensity), float32, from a stateless seed.

    Args:
      images: intensities in [0, 1], any shape.
      seed: a stateless seed, shape [2] (int32 or int64); the same seed gives the same draws.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    seed = tf.convert_to_tensor(seed)
    return tf.cast(tf.random.stateless_uniform(tf.shape(images), seed) < images, tf.float32)


def train_dataset(
    images: np.ndarray,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    num_steps: int,
    dynamic_binarization: bool = True,
    to_batch: Callable[[tf.Tensor], dict] | None = None,
) -> tf.data.Dataset:
    """Global batches for steps start_step..num_steps-1, each a function of (seed, step) alone.

    Element t is `to_batch(x)` (default `{"x": x}`) plus "seed", one stateless seed per
    image ([batch_size, 2] int32), x the images of step t (binarized if
    `dynamic_binarization`): the t % steps_per_epoch-th batch of epoch
    t // steps_per_epoch's permutation, steps_per_epoch = len(images) // batch_size. A
    run resumed at `start_step` therefore sees the batches an uninterrupted run sees, and
    under a distribution strategy an image draws the same binarization and the same z
    whichever replica gets it. The images stay in memory (as 8-bit values); batches are
    assembled by a parallel `map` and `prefetch`ed.
    """
    if to_batch is None:
        to_batch = _x_only
    num_images = len(images)
    steps_per_epoch = num_images // batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size={batch_size} exceeds the {num_images} images.")
    # Grey levels are multiples of 1/255: keep the 8-bit values (4x less memory).
    pixels = tf.constant(np.round(images * 255.0).astype(np.uint8))
    base = tf.constant([seed, 0x5EED], tf.int32)

    def epoch_batches(epoch):
        order_seed = tf.random.experimental.stateless_fold_in(base, epoch)
        order = tf.argsort(tf.random.stateless_uniform([num_images], order_seed))
        indices = tf.reshape(order[: steps_per_epoch * batch_size], [steps_per_epoch, -1])
        steps = epoch * steps_per_epoch + tf.range(steps_per_epoch, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((steps, indices))

    def make_batch(step, indices):
        step_seed = tf.random.experimental.stateless_fold_in(base, -1 - step)
        binarize_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(step_seed, 2))
        x = tf.cast(tf.gather(pixels, indices), tf.float32) / 255.0
        if dynamic_binarization:
            x = binarize(x, binarize_seed)
        batch = to_batch(x)
        batch["seed"] = tf.random.stateless_uniform(
            [batch_size, 2], noise_seed, minval=None, maxval=None, dtype=tf.int32
        )
        return batch

    first_epoch = start_step // steps_per_epoch
    last_epoch = -(-num_steps // steps_per_epoch)
    return (
        tf.data.Dataset.range(first_epoch, last_epoch)
        .flat_map(epoch_batches)
        .skip(start_step - first_epoch * steps_per_epoch)
        .take(max(num_steps - start_step, 0))
        # Known to Keras's `fit`, which then runs it to its end without a warning.
        .apply(tf.data.experimental.assert_cardinality(max(num_steps - start_step, 0)))
        .map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def _x_only(x: tf.Tensor) -> dict:
    """The default batch of the pipelines: `{"x": x}`."""
    return {"x": x}


def test_batches(
    images: np.ndarray,
    *,
    binarized: bool,
    batch_size: int = 100,
    to_batch: Callable[[tf.Tensor], dict] | None = None,
) -> list[dict]:
    """The test images in evaluation batches, `to_batch(x)` each (default `{"x": x}`).

    Grey levels (`binarized` False) are binarized once, with a seed fixed for all runs
    (`TEST_BINARIZATION_SEED`), so that every run and seed is evaluated on the same
    binary test set and runs compare directly.
    """
    to_batch = _x_only if to_batch is None else to_batch
    x = tf.constant(images, tf.float32)
    if not binarized:
        x = binarize(x, TEST_BINARIZATION_SEED)
    return [to_batch(x[i : i + batch_size]) for i in range(0, len(images), batch_size)]
