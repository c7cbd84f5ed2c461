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
this one package of the installed library, each of them imports the same code, with no
`sys.path` manipulation and no copy that could drift. The package is *experimental*: its
API follows the needs of the examples and benchmarks and may change between versions,
which is why `import mcobjectives` does not import it.

* Data (`data`): `load_mnist` reads MNIST (grey levels) or the fixed binarization of
  Salakhutdinov & Murray from TensorFlow Datasets, and falls back -- loudly -- to a
  subset of 5000 training and 1000 test images of the real MNIST, package data of the
  library (`BUNDLED_PATH`), when TFDS can neither find nor download it. TensorFlow
  Datasets is imported by `load_mnist` only (`pip install "mcobjectives[examples]"`).
* Binarization: `binarize` (pixel ~ Bernoulli(intensity), from a stateless seed) and
  `train_dataset`, the `tf.data` pipeline of the examples, whose every batch is a
  function of (seed, step) alone.
* Models (`models`): `one_layer`, `two_layer` and `sbn` (`ARCHITECTURES`), Burda et al.'s one and
  two stochastic layer VAEs and a sigmoid belief net, from `mcobjectives.networks`.
* Evaluation (`evaluation`): `test_batches` (the test set binarized once, with one seed
  for every run) and `evaluate` (IWAE-64, log p^(x), -KL(Q||P), ESS / 64 and the active units).
"""

from mcobjectives.experimental.mnist.data import (
    BUNDLED_PATH,
    BUNDLED_SOURCE,
    DATASET_SIZES,
    DATASETS,
    NUM_PIXELS,
    TEST_BINARIZATION_SEED,
    MnistData,
    binarize,
    load_mnist,
    test_batches,
    train_dataset,
)
from mcobjectives.experimental.mnist.evaluation import (
    BOUND_SAMPLES,
    MEAN_SAMPLES,
    evaluate,
    make_evaluator,
    posterior_means,
)
from mcobjectives.experimental.mnist.models import (
    ARCHITECTURES,
    adam,
    build_model,
    one_layer,
    one_layer_networks,
    sbn,
    standard_normal_prior,
    two_layer,
)

__all__ = [
    "ARCHITECTURES",
    "BOUND_SAMPLES",
    "BUNDLED_PATH",
    "BUNDLED_SOURCE",
    "DATASETS",
    "DATASET_SIZES",
    "MEAN_SAMPLES",
    "NUM_PIXELS",
    "TEST_BINARIZATION_SEED",
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
