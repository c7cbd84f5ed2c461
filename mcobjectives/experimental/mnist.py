"""MNIST experiments with the library: data, binarization, Burda et al.'s models, evaluation.

    from mcobjectives.experimental import mnist

    data = mnist.load_mnist("mnist")
    model = mnist.one_layer(mco.IWAE(64), data.train.mean(axis=0), seed=0)
    batches = mnist.test_batches(data.test[:1000], binarized=data.binarized)
    metrics = mnist.evaluate(model, batches, num_samples=5000)

Why here. `examples/mnist.py`, `examples/structured_mnist.py`, the MNIST benchmarks
(`benchmarks/mnist_objectives.py`, `benchmarks/mnist_snr.py`, `benchmarks/throughput*.py`)
and a researcher's notebook all need the same four things: the data, their dynamic
binarization, Burda et al.'s models and the test-set evaluation of the papers. Built in
this one module of the installed package, each of them imports the same code, with no
`sys.path` manipulation and no copy that could drift. The module is *experimental*: its
API follows the needs of the examples and benchmarks and may change between versions,
which is why `import mcobjectives` does not import it.

* Data: `load_mnist` reads MNIST (grey levels) or the fixed binarization of
  Salakhutdinov & Murray from TensorFlow Datasets, and falls back -- loudly -- to a
  bundled subset of 5000 training and 1000 test images of the real MNIST when TFDS can
  neither find nor download it. TensorFlow Datasets is imported by `load_mnist` only
  (`pip install "mcobjectives[examples]"`).
* Binarization: `binarize` (pixel ~ Bernoulli(intensity), from a stateless seed) and
  `train_dataset`, the `tf.data` pipeline of the examples, whose every batch is a
  function of (seed, step) alone.
* Models: `one_layer`, `two_layer` and `sbn` (`ARCHITECTURES`), Burda et al.'s one and
  two stochastic layer VAEs and a sigmoid belief net, from `mcobjectives.networks`.
* Evaluation: `test_batches` (the test set binarized once, with one seed for every run)
  and `evaluate` (IWAE-64, log p^(x), -KL(Q||P), ESS / 64 and the active units).
"""

from __future__ import annotations

import pathlib
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import _checks

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

tfd = tfp.distributions

__all__ = [
    "ARCHITECTURES",
    "BOUND_SAMPLES",
    "BUNDLED_PATH",
    "BUNDLED_SOURCE",
    "DATASETS",
    "DATASET_SIZES",
    "MnistData",
    "adam",
    "binarize",
    "build_model",
    "evaluate",
    "load_mnist",
    "make_evaluator",
    "one_layer",
    "one_layer_networks",
    "posterior_means",
    "sbn",
    "standard_normal_prior",
    "test_batches",
    "train_dataset",
    "two_layer",
]

DATASETS = ("mnist", "binarized_mnist")
# (training, test) images of each TFDS dataset (binarized_mnist's validation split unused).
DATASET_SIZES = {"mnist": (60000, 10000), "binarized_mnist": (50000, 10000)}
BUNDLED_SOURCE = "mnist-bundled-subset"
# In a source checkout of the project (the subset is not part of the installed package).
BUNDLED_PATH = (
    pathlib.Path(__file__).resolve().parents[2] / "examples" / "data" / "mnist_subset.npz"
)
NUM_PIXELS = 784
# Draws of the upstream layers behind the posterior means of a conditional latent leaf.
MEAN_SAMPLES = 32
# The seed of the test set's one binarization, the same for every run.
TEST_BINARIZATION_SEED = (0, 0x7E57)
# K of the evaluation's bound, IWAE-64 (Burda et al.), and so the fewest samples of the
# log p^(x) that -KL(Q||P) = IWAE-64 - log p^(x) compares it with (see `make_evaluator`).
BOUND_SAMPLES = 64

# TFDS downloads MNIST (and its prepared datasets, tried first) from Google Cloud Storage.
_DOWNLOAD_HOST = "storage.googleapis.com"
_DOWNLOAD_PORT = 443


# --------------------------------------------------------------------------------- data
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
    try:
        import tensorflow_datasets
    except ImportError as error:
        raise ImportError(
            "mcobjectives.experimental.mnist.load_mnist reads MNIST with TensorFlow Datasets, "
            'which is not installed: pip install "mcobjectives[examples]" (or '
            f"tensorflow-datasets). ({error})"
        ) from error
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
            f"{BUNDLED_PATH} is missing (it ships with a source checkout of the project)"
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
        prepared and `download` False, host unreachable, download failed, or prepared files
        that cannot be read -- truncated or corrupted records, garbage metadata -- which are
        treated as absent, not re-downloaded over): the bundled subset
        of real MNIST (5000 train / 1000 test, `BUNDLED_PATH`) as grey levels, with `source`
        "mnist-bundled-subset" and `binarized` False, whichever `dataset` was asked for.

    Raises:
        ValueError: if `dataset` is not one of the two names above.
        ImportError: if TensorFlow Datasets is not installed.
        FileNotFoundError: if the fallback is needed and the bundled file is missing.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")
    tfds = _import_tfds()
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


# ------------------------------------------------------------------------- binarization
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
    return {"x": x}


# ------------------------------------------------------------------------------- models
def standard_normal_prior(latent_size: int = 50) -> tfd.Distribution:
    """p(z) = N(0, I) in `latent_size` dimensions (float32)."""
    return tfd.Independent(tfd.Normal(tf.zeros(latent_size), tf.ones(latent_size)), 1)


def adam(
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
) -> keras.optimizers.Optimizer:
    """The optimizer of Burda et al. and Tucker et al.: Adam, beta 0.9 / 0.999, epsilon 1e-4."""
    return keras.optimizers.Adam(learning_rate, beta_1=0.9, beta_2=0.999, epsilon=1e-4)


def _pixels(mean_pixel: np.ndarray | None, num_pixels: int) -> int:
    return num_pixels if mean_pixel is None else int(np.shape(mean_pixel)[-1])


def one_layer_networks(
    mean_pixel: np.ndarray | None = None,
    *,
    num_pixels: int = NUM_PIXELS,
    latent_size: int = 50,
    hidden_units: int = 200,
) -> tuple[mco.networks.GaussianEncoder, mco.networks.BernoulliDecoder]:
    """Burda et al.'s encoder 784-200-200-(2 x 50) and decoder 50-200-200-784, tanh units.

    Unbuilt. The decoder's output bias starts at the logit of `mean_pixel` (the mean
    training image, whose size sets the number of pixels), if given. The weights come
    from Keras's global seed: call `keras.utils.set_random_seed` first to fix them.
    """
    hidden = (hidden_units, hidden_units)
    encoder = mco.networks.GaussianEncoder(latent_size, hidden)
    decoder = mco.networks.BernoulliDecoder(
        _pixels(mean_pixel, num_pixels), hidden, mean_pixel=mean_pixel
    )
    return encoder, decoder


def one_layer(
    objective: mco.MCObjective,
    mean_pixel: np.ndarray | None = None,
    *,
    seed: int = 0,
    num_pixels: int = NUM_PIXELS,
    latent_size: int = 50,
    hidden_units: int = 200,
) -> mco.ImportanceWeightedAutoencoder:
    """Burda et al.'s one-stochastic-layer model, trained with `objective` (unbuilt).

    q(z|x) a diagonal Gaussian from a 784-200-200-(2 x 50) tanh network, p(z) = N(0, I)
    over 50 latents, p(x|z) Bernoulli pixels from a 50-200-200-784 tanh network whose
    output bias starts at the logit of `mean_pixel`. `seed` seeds the model's samples;
    the initial weights come from Keras's global seed (`keras.utils.set_random_seed`).
    """
    encoder, decoder = one_layer_networks(
        mean_pixel, num_pixels=num_pixels, latent_size=latent_size, hidden_units=hidden_units
    )
    return mco.ImportanceWeightedAutoencoder(
        encoder=encoder,
        decoder=decoder,
        prior=standard_normal_prior(latent_size),
        objective=objective,
        seed=seed,
    )


def two_layer(
    objective: mco.MCObjective,
    mean_pixel: np.ndarray | None = None,
    *,
    seed: int = 0,
    num_pixels: int = NUM_PIXELS,
) -> mco.ImportanceWeightedAutoencoder:
    """Burda et al.'s two-stochastic-layer model (z1: 100, z2: 50); the decoder reads z1.

    q(z1|x) q(z2|z1) from 784-200-200-(2 x 100) and 100-100-100-(2 x 50) tanh networks,
    p(z2) = N(0, I), a trainable p(z1|z2) (50-100-100-(2 x 100)) and p(x|z1)
    (100-200-200-784). Arguments as for `one_layer`.
    """
    return mco.ImportanceWeightedAutoencoder(
        encoder=mco.networks.TwoLayerGaussianEncoder(latent_sizes=(100, 50)),
        decoder=mco.networks.BernoulliDecoder(
            _pixels(mean_pixel, num_pixels), (200, 200), mean_pixel=mean_pixel, latent="z1"
        ),
        prior=mco.networks.TwoLayerGaussianPrior(latent_sizes=(100, 50)),
        objective=objective,
        seed=seed,
    )


def sbn(
    objective: mco.MCObjective,
    mean_pixel: np.ndarray | None = None,
    *,
    seed: int = 0,
    num_pixels: int = NUM_PIXELS,
) -> mco.ImportanceWeightedAutoencoder:
    """A 200-200-784 sigmoid belief net with a mirrored linear-sigmoid inference network.

    Two layers of 200 binary (int32 Bernoulli) latents, as in Mnih & Rezende (2016):
    linear-sigmoid q(z1|x) q(z2|z1), p(z2) with learnable logits, p(z1|z2) and p(x|z1).
    Only the score-function objectives (`mco.VIMCO`, `mco.RWS`) train it. Arguments as
    for `one_layer`.
    """
    return mco.ImportanceWeightedAutoencoder(
        encoder=mco.networks.SigmoidBeliefEncoder(latent_sizes=(200, 200)),
        decoder=mco.networks.BernoulliDecoder(
            _pixels(mean_pixel, num_pixels), (), mean_pixel=mean_pixel, latent="z1"
        ),
        prior=mco.networks.SigmoidBeliefPrior(latent_sizes=(200, 200)),
        objective=objective,
        seed=seed,
    )


ARCHITECTURES: dict[str, Callable[..., mco.ImportanceWeightedAutoencoder]] = {
    "one_layer": one_layer,
    "two_layer": two_layer,
    "sbn": sbn,
}


def build_model(
    architecture: str,
    objective: mco.MCObjective,
    mean_pixel: np.ndarray | None = None,
    *,
    seed: int = 0,
    **sizes: int,
) -> mco.ImportanceWeightedAutoencoder:
    """`ARCHITECTURES[architecture](objective, mean_pixel, seed=seed, **sizes)`, unbuilt.

    `sizes` (`latent_size`, `hidden_units`) apply to "one_layer" only.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}"
        )
    if sizes and architecture != "one_layer":
        raise ValueError(
            f"{sorted(sizes)} size the one_layer architecture only, not {architecture}."
        )
    return ARCHITECTURES[architecture](objective, mean_pixel, seed=seed, **sizes)


# --------------------------------------------------------------------------- evaluation
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


def posterior_means(q: tfd.Distribution, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """E_q[z] of every latent leaf, [B, D_leaf] (events flattened), by leaf name.

    A single q gives {"z": q.mean()}. For a joint q the means of its root parts are
    exact; a part conditioned on other leaves, such as q(z2|z1), gets the average of its
    conditional means over MEAN_SAMPLES draws of the parts above it,
    E_q(z1|x)[E_q(z2|z1)[z2]], which varies across data points only as much as z2
    does (a plain average of draws would add Var(z2) / MEAN_SAMPLES to every unit's
    activity). A Bernoulli leaf's mean is its probability of 1.
    """
    if not isinstance(q, tfd.JointDistribution):
        return {"z": q.mean()}
    distributions, _ = q.sample_distributions(sample_shape=MEAN_SAMPLES, seed=seed)
    if isinstance(distributions, dict):
        named = sorted(distributions.items())
    elif hasattr(distributions, "_asdict"):  # JointDistributionCoroutine's named tuples
        named = list(distributions._asdict().items())
    else:
        named = [(f"z{i}", d) for i, d in enumerate(distributions)]
    means = {}
    for name, distribution in named:
        mean = tf.cast(distribution.mean(), tf.float32)
        if distribution.batch_shape.rank == 2:  # [S, B]: built from the upstream draws
            mean = tf.reduce_mean(mean, axis=0)
        means[name] = tf.reshape(mean, [tf.shape(mean)[0], -1])
    return means


def make_evaluator(
    model: mco.ImportanceWeightedAutoencoder,
    *,
    seed: int = 0,
    num_samples: int | None = 5000,
    chunk_size: int = 500,
) -> Callable[..., dict[str, Any]]:
    """`evaluate` for one model, traced once: `evaluator(batches, progress=None) -> dict`.

    Call it at every evaluation of a training run: the batches' graph is traced at the
    first call only (and again for a batch of another size).

    `num_samples` (K of log p^(x)) is at least `BOUND_SAMPLES` (64), or None. The
    estimate log p^(x) is itself the IWAE bound of K samples, whose expectation rises
    with K to log p(x) (Burda et al., Theorem 1): with K >= 64, -KL = IWAE-64 -
    log p^(x) is <= 0 in expectation (0 at K = 64, and towards the true -KL as K
    grows; the paper's K = 5000), so <= 0 up to Monte Carlo error, as a -KL must be;
    with K < 64, log p^(x) is a looser bound than the IWAE-64 it is measured against,
    and their difference is positive by construction (with K = 8, by a few nats), not
    a -KL. Such a K is refused rather than reported as one.

    Raises:
      ValueError: naming `num_samples`, if it is below `BOUND_SAMPLES`; TypeError if it
        is not an integer.
    """
    if num_samples is not None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
            raise TypeError(f"num_samples must be an integer or None, got {num_samples!r}")
        if num_samples < BOUND_SAMPLES:
            raise ValueError(
                f"num_samples={num_samples}: log p^(x) needs at least {BOUND_SAMPLES} "
                f"samples, the K of the IWAE-{BOUND_SAMPLES} bound that -KL = "
                f"IWAE-{BOUND_SAMPLES} - log p^(x) compares it with (with fewer, log p^(x) "
                "is the looser bound and -KL comes out positive); e.g. num_samples=5000, "
                "or None to leave log p^(x) and -KL out."
            )
    eval_seed = tf.constant([seed, 0xE7A1], tf.int32)

    @tf.function
    def evaluate_batch(batch, seed):
        x, context = batch["x"], batch.get("context")
        q = model.posterior(x, context)
        # Bound to q as an objective binds it: shapes checked, a joint prior paired by name.
        log_joint = _checks.bind_log_joint(model.log_joint(x, context), q)
        bound_seed, _ = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        z = mco.sampling.sample(q, BOUND_SAMPLES, bound_seed)
        log_weights = log_joint(z) - q.log_prob(z)
        outputs = {
            "iwae64": mco.log_mean_exp(log_weights),
            "ess": mco.effective_sample_size(log_weights) / 64.0,
        }
        means_seed = tf.random.experimental.stateless_fold_in(seed, 2)
        return outputs, posterior_means(q, means_seed)

    def evaluator(
        batches: Sequence[dict], progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        if not batches:
            raise ValueError("evaluate needs at least one batch of test images.")
        start = time.perf_counter()
        outputs = []
        for i, batch in enumerate(batches):
            batch_seed = tf.random.experimental.stateless_fold_in(eval_seed, i)
            output, means = evaluate_batch(batch, batch_seed)
            if num_samples is not None:
                # The model's own estimate: compiled with XLA where that is faster.
                _, marginal_seed = tf.unstack(tf.random.experimental.stateless_split(batch_seed, 2))
                output["log_px"] = model.log_marginal(
                    batch, marginal_seed, num_samples=num_samples, chunk_size=chunk_size
                )
            outputs.append((output, means))
            if progress is not None:
                progress(i + 1)
        values = {
            key: np.concatenate([o[0][key].numpy() for o in outputs]) for key in outputs[0][0]
        }
        active = {
            name: int(mco.active_units(np.concatenate([o[1][name].numpy() for o in outputs])))
            for name in outputs[0][1]
        }
        bound = float(np.mean(values["iwae64"]))
        result: dict[str, Any] = {"iwae64": bound}
        if num_samples is not None:
            log_px = float(np.mean(values["log_px"]))
            neg_kl = float(np.mean(values["iwae64"]) - np.mean(values["log_px"]))
            result.update(log_px=log_px, log_px_num_samples=num_samples, neg_kl=neg_kl)
        result.update(
            ess_fraction=float(np.mean(values["ess"])),
            active_units=sum(active.values()),
            active_units_per_latent=active,
            num_test_images=len(values["iwae64"]),
            seconds=round(time.perf_counter() - start, 3),
        )
        return result

    return evaluator


def evaluate(
    model: mco.ImportanceWeightedAutoencoder,
    batches: Sequence[dict],
    *,
    seed: int = 0,
    num_samples: int | None = 5000,
    chunk_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Test-set IWAE-64, log p^(x) (K = num_samples), -KL(Q||P), ESS / 64, active units.

    The metrics of Burda et al. and Rainforth et al., as means over the images of
    `batches` (from `test_batches`): "iwae64", "log_px" (chunks of `chunk_size`
    samples), "neg_kl" = iwae64 - log_px, "ess_fraction" (the mean ESS of 64 samples
    over 64), "active_units" (Cov_x(E_q[z_i]) > 1e-2, summed over the latent leaves, and
    by leaf in "active_units_per_latent"), "num_test_images" and "seconds".
    `num_samples=None` leaves log p^(x) and -KL out, for a quick look at the bound;
    otherwise it is at least `BOUND_SAMPLES` (64), the K of the bound -KL compares
    log p^(x) with (see `make_evaluator`).

    Works for any q the model's encoder returns, structured or discrete: the IWAE-64
    bound and its ESS come from 64 draws of `mco.sampling.sample` (the value of
    `mco.IWAE(64)`, which would refuse a discrete q), and the active units are counted
    per latent leaf (`posterior_means`). Every draw comes from `seed` and the batch's
    index, so an evaluation repeats exactly. `progress(i)` is called after the i-th
    batch. For repeated evaluations of one model, `make_evaluator` traces once.
    """
    evaluator = make_evaluator(model, seed=seed, num_samples=num_samples, chunk_size=chunk_size)
    return evaluator(batches, progress)
