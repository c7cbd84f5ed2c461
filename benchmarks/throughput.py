"""Training throughput of Burda et al.'s MNIST model for every objective, against two baselines.

What it measures
----------------
Training steps per second of the one-stochastic-layer MNIST model of Burda et al. (2016)
(encoder 784-200-200-(2 x 50), decoder 50-200-200-784, tanh units, standard normal
prior) at each batch size (default 20 and 100) with K = 64 samples per image, for every
objective of the library (each name of `mco.objective_names()`, built by `mco.make_objective`,
and the variants `ciwae_learnable`, `dreg_rws` = RWS-DReG and `jvi_dreg`), each in
`tf.function` with and without `jit_compile=True`, all side by side in one process. The
library's step is exactly the one users run: `mco.make_train_step(
mco.ImportanceWeightedAutoencoder(...), keras.optimizers.Adam(1e-3, epsilon=1e-4),
jit_compile=...)`. Two baselines run on the same model, optimizer and data:

* `handwritten`: a minimal IWAE step in plain TensorFlow, the no-abstraction floor. It uses
  the same dense weights (read from the library's layers, applied with 2-D `tf.matmul`),
  `tf.random.stateless_normal(..., alg="philox")` noise (the algorithm named: the default
  "auto_select" gives the same draws but is some 30 times slower under XLA on the CPU),
  hand-written Gaussian and Bernoulli log densities (log q from the noise itself),
  `reduce_logsumexp`, one `GradientTape` and the same Adam.
* `tfp_dreg`: TFP's own doubly reparameterized IWAE step,
  `tfp.vi.monte_carlo_variational_loss(..., importance_sample_size=K,
  gradient_estimator=DOUBLY_REPARAMETERIZED)`, with the gradient of its loss applied to
  every variable, as a user of that function would write the step.

Both baselines use the step structure of `make_train_step`: the seed is folded from the
optimizer's step counter outside the gradient function, the gradient function alone is
XLA-compiled when `jit_compile=True`, and Adam is applied in the outer `tf.function`.

Four diagnostic steps show where the library's time goes. Three concern its noise
(`mcobjectives.sampling` makes its own uint32 bits, identical with and without XLA, and
applies a float64 `ndtri`): `iwae_tfnoise` is the library's IWAE step traced with
`sampling.standard_normal` replaced by TensorFlow's normal sampler (Philox named),
`iwae_philoxbits` the same step with it replaced by the recipe of commit d84a7fe with Philox
named (TensorFlow's stateless uint32 bits, float64 ndtri), and `handwritten_libnoise` the
hand-written step with the library's noise. The fourth, `handwritten_tfpbernoulli`, is the
hand-written step with log p(x|z) from TFP's `Bernoulli(logits).log_prob` (as the library's
decoder computes it) instead of x * logits - softplus(logits).

The noise of one step ([K, B, 50]) is also timed alone: the library's, its bits, its ndtri and
cast, the d84a7fe recipe with the algorithm unnamed ("auto_select", as committed then) and
named, TensorFlow's sampler, and two candidate transforms of the bits (float32 `ndtri`,
float64 Box-Muller); `noise_agreement` records the largest difference of the draws between
modes, and between the two algorithms.

How
---
Every configuration (step, batch size, jit mode) gets its warm-up steps first (tracing and
XLA compilation excluded from the timings). Then `--rounds` rounds each run every
configuration for `--steps` steps, in a shuffled order, on a machine that is shared by
whatever else runs: the median steps/s over rounds is reported (with the min and max), and
the ratios are taken between the medians. A ratio is a time ratio: seconds per step of the
configuration divided by those of the reference at the same batch size and jit mode, so 1.05
means 5 % slower. A 2048 x 2048 float32 `tf.matmul` (and a matmul of the decoder's output
layer shape) runs in the same rounds and gives the machine's attainable GFLOP/s.

GFLOP per step are counted analytically from the matmuls (2 m n k each, biases and
elementwise work excluded): the forward pass, the weight gradients, and the activation
gradients autodiff needs (down to z for the decoder, not down to x for the encoder).
Objectives with a path term (`gradient_path = mco.GradientPath.SPLIT`: STL, DReG, PIWAE,
JVI-DReG) run one more backward pass through the decoder, for d log w / dz, which is counted;
SCORE objectives (RWS, VIMCO) differentiate the decoder at fixed z only.

Peak memory: one subprocess per configuration (`--memory`), reading the kernel's peak
resident set size (VmHWM of /proc/self/status). The peak is reset (writing 5 to
/proc/self/clear_refs) right before the first step: `first_call_mb` is the peak over the
resident size before it (it includes tracing and XLA compilation); after that call the peak
is reset again and `step_mb` is the peak of `--memory_steps` more steps over the resident
size at that point, i.e. the working memory of a step beyond what the process keeps.
`tf.config.experimental.get_memory_info` has no statistics for the CPU.

log p^(x): `model.log_marginal` (`mco.log_marginal_estimate`, K = 5000 in chunks of 500) in
a `tf.function` without XLA (as the examples evaluate), on `--eval_images` test images in
batches of 100, timed after a warm-up batch.

TFP check: on a fixed model and batch, the mean over `--check_seeds` seeds of the loss and of
the encoder gradient of `mco.DReG(K)` and of TFP's DReG loss (independent seeds) must agree
within Monte Carlo error: per coordinate z = (mean difference) / (standard error of the
difference); agreement means a mean z^2 near 1 and a max |z| near the maximum of that many
standard normals. The decoder gradients are compared the same way: TFP's DReG surrogate
weights d log p(x, z_k) / d theta by the squared normalized weights, so its decoder gradient is
not the IWAE model gradient, and the check shows by how much. The hand-written step's loss
and gradients are also checked against the library's IWAE on the same noise.

Targets (issue 3): every objective within 1.10x of the hand-written IWAE step at the same
batch size and jit mode; DReG (alpha 0 and 1) and JVI (and JVI-DReG) within 1.15x of the
library's IWAE; the library's DReG no slower than TFP's (and correct).

Run (on 2 quiet cores about 40 minutes: some 10 for the timings, 16 for log p^(x) of 10000
images at about 96 s per 1000, 10 or more for the 56 memory subprocesses; on a busy machine
twice that or more):

    python benchmarks/throughput.py
    python benchmarks/throughput.py --rounds=3 --eval_images=500 --nomemory   # ~10 minutes

Writes `--out_dir`/results.json (every number, the flags, the machine) and prints a summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from absl import app, flags

import mcobjectives as mco
from mcobjectives import sampling

tfd = tfp.distributions
FLAGS = flags.FLAGS
ROOT = pathlib.Path(__file__).resolve().parents[1]

LATENT_SIZE = 50
HIDDEN = 200
PIXELS = 784
LEARNING_RATE = 1e-3
ADAM_EPSILON = 1e-4
LOG_2PI = math.log(2.0 * math.pi)

# The library's objectives timed: every registered name (`mco.objective_names()`, default
# arguments), then the variants below; each label -> (registered name, keyword arguments).
# `make_library_objective` builds them with `mco.make_objective` at a budget of K samples,
# giving `num_outer` (M) to the objectives that split K into M bounds (MIWAE, PIWAE).
SETTINGS: dict[str, tuple[str, dict]] = {
    "ciwae": ("ciwae", {"beta": 0.05}),
    "dreg": ("dreg", {"alpha": 0.0}),
}
VARIANTS: dict[str, tuple[str, dict]] = {
    "ciwae_learnable": ("ciwae", {"beta": 0.05, "learnable_beta": True}),
    "dreg_rws": ("dreg", {"alpha": 1.0}),
    "jvi_dreg": ("jvi", {"dreg": True}),
}


def _library_objectives() -> dict[str, tuple[str, dict]]:
    """label -> (registered name, kwargs): each registered name followed by its variants."""
    objectives = {}
    for name in mco.objective_names():
        objectives[name] = SETTINGS.get(name, (name, {}))
        objectives.update({k: v for k, v in VARIANTS.items() if v[0] == name})
    return objectives


OBJECTIVES = _library_objectives()


def takes_num_outer(label: str) -> bool:
    """Whether the objective splits its K samples into M bounds (`num_outer`)."""
    cls = mco.registry.OBJECTIVES[OBJECTIVES[label][0]]
    return "num_outer" in inspect.signature(cls.__init__).parameters


def make_library_objective(label: str, k: int, m: int) -> mco.MCObjective:
    """The objective `label` with a budget of K samples (M outer groups where it takes them)."""
    name, kwargs = OBJECTIVES[label]
    if takes_num_outer(label):
        kwargs = {**kwargs, "num_outer": m}
    return mco.make_objective(name, k, **kwargs)


HANDWRITTEN, TFP_DREG = "handwritten", "tfp_dreg"
DIAGNOSTIC_STEPS = (
    "iwae_tfnoise",
    "iwae_philoxbits",
    "handwritten_libnoise",
    "handwritten_tfpbernoulli",
)
# Targets: time ratios (seconds per step over the reference's) that must not be exceeded.
TARGET_VS_HANDWRITTEN = 1.10
TARGET_VS_IWAE = 1.15
TARGET_VS_TFP = 1.00
VS_IWAE_TARGETED = ("dreg", "dreg_rws", "jvi", "jvi_dreg")


def define_flags() -> None:
    """The command-line flags (defined only when run as a script, so the module imports cleanly)."""
    flags.DEFINE_list("batch_sizes", ["20", "100"], "Batch sizes to time.")
    flags.DEFINE_integer("num_samples", 64, "K, the sample budget of every objective.")
    flags.DEFINE_integer("num_outer", 8, "M of MIWAE(M, K / M) and PIWAE(M, K / M).")
    flags.DEFINE_list("objectives", list(OBJECTIVES), "Library objectives to time.")
    flags.DEFINE_enum("jit", "both", ["both", "on", "off"], "jit_compile modes to time.")
    flags.DEFINE_integer("steps", 5, "Training steps (noise draws) per configuration per round.")
    flags.DEFINE_integer("rounds", 6, "Timing rounds (the median over rounds is reported).")
    flags.DEFINE_integer("warmup_steps", 2, "Untimed steps per configuration (trace, compile).")
    flags.DEFINE_bool("tfp", True, "Time TFP's DReG step and check it against mco.DReG.")
    flags.DEFINE_bool("diagnostics", True, "Time the noise-swapped steps and the noise alone.")
    flags.DEFINE_integer("check_seeds", 200, "Seeds per estimator in the TFP DReG check.")
    flags.DEFINE_integer("check_batch_size", 4, "Images in the TFP DReG check.")
    flags.DEFINE_integer("matmul_size", 2048, "n of the n x n x n matmul giving the ceiling.")
    flags.DEFINE_integer("eval_images", 10000, "Test images for log p^(x) (0: skip).")
    flags.DEFINE_integer("eval_num_samples", 5000, "K of the log p^(x) estimate.")
    flags.DEFINE_integer("eval_chunk_size", 500, "Samples per chunk of the log p^(x) estimate.")
    flags.DEFINE_integer("eval_batch_size", 100, "Test images per log p^(x) batch.")
    flags.DEFINE_bool("memory", True, "Measure peak memory, one subprocess per configuration.")
    flags.DEFINE_integer("memory_steps", 3, "Steps after the first in each memory subprocess.")
    flags.DEFINE_integer("memory_workers", 2, "Memory subprocesses run at a time.")
    flags.DEFINE_enum(
        "data",
        "synthetic",
        ["synthetic", "mnist"],
        "synthetic: random binary images (pixel on with probability 1/2); mnist: "
        "examples/mnist_data.load_mnist('mnist') (TFDS, else the bundled subset), "
        "binarized once with a fixed seed.",
    )
    flags.DEFINE_integer("seed", 0, "Seed of the weights, data and samples.")
    flags.DEFINE_string(
        "out_dir", str(ROOT / "benchmarks" / "results" / "throughput"), "Where results.json goes."
    )
    flags.DEFINE_string(
        "memory_probe", None, "Internal: name,batch_size,jit of the one configuration to probe."
    )


# ------------------------------------------------------------------------------ the model
def prior() -> tfd.Distribution:
    return tfd.Independent(tfd.Normal(tf.zeros(LATENT_SIZE), tf.ones(LATENT_SIZE)), 1)


def make_networks(example_x: tf.Tensor, seed: int):
    """Burda et al.'s encoder and decoder from `mco.networks`, built (weights seeded)."""
    keras.utils.set_random_seed(seed)
    encoder = mco.networks.GaussianEncoder(latent_size=LATENT_SIZE)
    decoder = mco.networks.BernoulliDecoder(event_size=PIXELS)
    encoder(example_x)
    decoder(tf.zeros([1, 1, LATENT_SIZE]))
    return encoder, decoder


def make_optimizer() -> keras.optimizers.Optimizer:
    return keras.optimizers.Adam(LEARNING_RATE, epsilon=ADAM_EPSILON)


def _dense_weights(mlp) -> list:
    """[(kernel, bias)] of an `mco.networks` MLP's dense layers, input to output."""
    return [(layer.kernel, layer.bias) for layer in [*mlp.hidden, mlp.output_layer]]


def _mlp(h: tf.Tensor, weights: list) -> tf.Tensor:
    for i, (kernel, bias) in enumerate(weights):
        h = tf.matmul(h, kernel) + bias
        if i < len(weights) - 1:
            h = tf.tanh(h)
    return h


def tf_normal(shape, seed, dtype=tf.float32) -> tf.Tensor:
    """TensorFlow's stateless normal sampler, with `sampling.standard_normal`'s signature.

    The algorithm is named (Philox, what "auto_select" picks in TensorFlow's kernels, with the
    same draws there): under XLA on the CPU, "auto_select" is some 30 times slower.
    """
    seed = sampling.stateless_seed(seed)
    return tf.random.stateless_normal(shape, seed=seed, dtype=dtype, alg="philox")


def _bits(shape, seed, alg: str) -> tf.Tensor:
    """uint32 bits from TensorFlow's stateless generator, seeded as `sampling` reads seeds."""
    unsigned = tf.math.floormod(tf.cast(sampling.stateless_seed(seed), tf.int64), 2**32)
    return tf.random.stateless_uniform(
        shape, seed=unsigned, minval=None, maxval=None, dtype=tf.uint32, alg=alg
    )


def _uniform64(shape, seed, alg: str) -> tf.Tensor:
    """24 random bits as a float64 in (0, 1): the float32 recipe of `sampling` before ndtri."""
    mantissa = tf.bitwise.right_shift(_bits(shape, seed, alg), tf.constant(8, tf.uint32))
    return (tf.cast(mantissa, tf.float64) + 0.5) * 2.0**-24


def bits_ndtri_normal(shape, seed, dtype=tf.float32, alg: str = "philox") -> tf.Tensor:
    """Float32 normal noise as `mcobjectives.sampling` made it at commit d84a7fe.

    TensorFlow's stateless uint32 bits (alg "auto_select" then, unnamed), 24 of them per
    number, and a float64 ndtri. With alg="philox" named the bits are the same in every mode
    (see `noise_agreement`) and XLA draws them fast.
    """
    if tf.as_dtype(dtype) != tf.float32:
        raise TypeError("the benchmark's copy of the noise recipe is for float32 only")
    return tf.cast(tf.math.ndtri(_uniform64(shape, seed, alg)), dtype)


def handwritten_iwae_loss(
    encoder, decoder, num_samples: int, noise=tf_normal, tfp_bernoulli: bool = False
) -> Callable:
    """(x, seed) -> -mean IWAE bound, in plain TensorFlow on the library layers' weights.

    With `tfp_bernoulli`, log p(x|z) is TFP's `Bernoulli(logits).log_prob(x)` (a diagnostic).
    """
    encoder_weights = _dense_weights(encoder.net)
    decoder_weights = _dense_weights(decoder.net)
    min_scale = encoder.min_scale

    def loss(x, seed):
        batch = tf.shape(x)[0]
        loc, raw_scale = tf.split(_mlp(x, encoder_weights), 2, axis=-1)
        scale = tf.nn.softplus(raw_scale) + min_scale
        eps = noise(tf.stack([num_samples, batch, LATENT_SIZE]), seed)
        z = loc + scale * eps  # [K, B, D]
        # log q(z|x) from the noise: (z - loc) / scale = eps, whose total derivative is 0.
        log_q = tf.reduce_sum(-0.5 * tf.square(eps) - tf.math.log(scale), axis=-1)
        log_prior = tf.reduce_sum(-0.5 * tf.square(z), axis=-1)
        logits = _mlp(tf.reshape(z, [-1, LATENT_SIZE]), decoder_weights)
        logits = tf.reshape(logits, [num_samples, batch, PIXELS])
        if tfp_bernoulli:
            likelihood = tfd.Independent(tfd.Bernoulli(logits=logits, dtype=logits.dtype), 1)
            log_likelihood = likelihood.log_prob(x)
        else:
            log_likelihood = tf.reduce_sum(x * logits - tf.nn.softplus(logits), axis=-1)
        log_w = log_prior + log_likelihood - log_q  # the 0.5 D log 2 pi terms cancel
        bound = tf.reduce_logsumexp(log_w, axis=0) - math.log(num_samples)
        return -tf.reduce_mean(bound)

    return loss


def tfp_dreg_loss(encoder, decoder, p_z: tfd.Distribution, num_samples: int) -> Callable:
    """(x, seed) -> the mean over the batch of TFP's doubly reparameterized IWAE loss."""

    def loss(x, seed):
        q = encoder(x)  # Independent(Normal), batch shape [B]
        normal = q.distribution
        stopped = tfd.Independent(
            tfd.Normal(tf.stop_gradient(normal.loc), tf.stop_gradient(normal.scale)), 1
        )

        def target_log_prob_fn(z):  # z [K, B, D] -> [K, B]
            return p_z.log_prob(z) + decoder(z).log_prob(x)

        per_example = tfp.vi.monte_carlo_variational_loss(
            target_log_prob_fn,
            q,
            importance_sample_size=num_samples,
            gradient_estimator=tfp.vi.GradientEstimators.DOUBLY_REPARAMETERIZED,
            stopped_surrogate_posterior=stopped,
            seed=seed,
        )
        return tf.reduce_mean(per_example)  # [B] -> scalar

    return loss


@contextlib.contextmanager
def library_noise(replacement: Callable):
    """While active (when a step is traced), the library draws its noise with `replacement`."""
    original = sampling.standard_normal
    sampling.standard_normal = replacement
    try:
        yield
    finally:
        sampling.standard_normal = original


# --------------------------------------------------------------------------- the steps
@dataclasses.dataclass
class Runner:
    """One trained model with its step functions, one per jit mode."""

    name: str
    steps: dict  # jit (bool) -> tf.function step(x)
    gradient_kind: str  # "total", "split" or "score": how many decoder backward passes
    trace_context: Callable = contextlib.nullcontext
    objective: str | None = None  # repr of the library's objective, e.g. "RWS(num_samples=64)"


def library_runner(name, objective, example_x, jit_modes, seed, trace_context=None) -> Runner:
    encoder, decoder = make_networks(example_x, seed)
    model = mco.ImportanceWeightedAutoencoder(encoder, decoder, prior(), objective, seed=seed)
    optimizer = make_optimizer()
    steps = {jit: mco.make_train_step(model, optimizer, jit_compile=jit) for jit in jit_modes}
    # "total", "split" or "score": the objective's declared `mco.GradientPath`.
    kind = objective.gradient_path.value
    return Runner(name, steps, kind, trace_context or contextlib.nullcontext, repr(objective))


def custom_runner(name, make_loss, example_x, jit_modes, seed, num_samples) -> Runner:
    """A step with `make_train_step`'s structure around `make_loss(encoder, decoder, K)`."""
    encoder, decoder = make_networks(example_x, seed)
    variables = decoder.trainable_variables + encoder.trainable_variables
    optimizer = make_optimizer()
    optimizer.build(variables)
    loss_fn = make_loss(encoder, decoder, num_samples)
    base_seed = sampling.stateless_seed(seed)

    # autograph=False here and in every function of this file: none has Python control flow
    # on tensors, and AutoGraph would re-read this file's source when it first traces.
    def make_step(jit):
        @tf.function(jit_compile=jit, autograph=False)
        def gradients(x, step_seed):
            with tf.GradientTape() as tape:
                loss = loss_fn(x, step_seed)
            return tape.gradient(loss, variables), loss

        @tf.function(autograph=False)
        def step(x):
            step_seed = tf.random.experimental.stateless_fold_in(
                base_seed, tf.cast(optimizer.iterations, tf.int64)
            )
            grads, loss = gradients(x, tf.cast(step_seed, tf.int32))
            optimizer.apply_gradients(zip(grads, variables, strict=True))
            return loss

        return step

    return Runner(name, {jit: make_step(jit) for jit in jit_modes}, "total")


def make_runner(name: str, example_x, jit_modes, seed: int, k: int, m: int) -> Runner:
    if name in OBJECTIVES:
        objective = make_library_objective(name, k, m)
        return library_runner(name, objective, example_x, jit_modes, seed)
    if name in ("iwae_tfnoise", "iwae_philoxbits"):
        noise = tf_normal if name == "iwae_tfnoise" else bits_ndtri_normal
        context = lambda: library_noise(noise)  # noqa: E731
        return library_runner(name, mco.IWAE(k), example_x, jit_modes, seed, context)
    if name == HANDWRITTEN:
        return custom_runner(name, handwritten_iwae_loss, example_x, jit_modes, seed, k)
    if name in ("handwritten_libnoise", "handwritten_tfpbernoulli"):
        options = (
            {"noise": sampling.standard_normal}
            if name == "handwritten_libnoise"
            else {"tfp_bernoulli": True}
        )

        def make_loss(encoder, decoder, num_samples):
            return handwritten_iwae_loss(encoder, decoder, num_samples, **options)

        return custom_runner(name, make_loss, example_x, jit_modes, seed, k)
    if name == TFP_DREG:

        def make_loss(encoder, decoder, num_samples):
            return tfp_dreg_loss(encoder, decoder, prior(), num_samples)

        return custom_runner(name, make_loss, example_x, jit_modes, seed, k)
    raise ValueError(f"unknown configuration {name!r}")


def run_step(step, x) -> tf.Tensor:
    out = step(x)
    return out["loss"] if isinstance(out, dict) else out


# ------------------------------------------------------------------------------- FLOPs
# (inputs, outputs) of the dense layers.
ENCODER_LAYERS = ((PIXELS, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 2 * LATENT_SIZE))
DECODER_LAYERS = ((LATENT_SIZE, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, PIXELS))


def _matmul_flop(rows: int, layers) -> float:
    return float(sum(2 * rows * n_in * n_out for n_in, n_out in layers))


def step_gflop(kind: str, batch_size: int, num_samples: int) -> float:
    """Matmul GFLOP of one training step (forward and the backward autodiff runs)."""
    rows = batch_size * num_samples
    encoder_forward = _matmul_flop(batch_size, ENCODER_LAYERS)
    # Weight gradients of every layer; activation gradients above the first (x needs none).
    encoder = encoder_forward + encoder_forward + _matmul_flop(batch_size, ENCODER_LAYERS[1:])
    forward = _matmul_flop(rows, DECODER_LAYERS)
    weights = forward
    activations_to_z = forward
    activations_above_z = _matmul_flop(rows, DECODER_LAYERS[1:])
    if kind == "total":  # one backward pass, down to z
        decoder = forward + weights + activations_to_z
    elif kind == "split":  # inner pass for d log w / dz, outer pass for the weights at fixed z
        decoder = forward + activations_to_z + weights + activations_above_z
    elif kind == "score":  # outer pass only, at fixed z
        decoder = forward + weights + activations_above_z
    else:
        raise ValueError(f"unknown gradient kind {kind!r}")
    return (encoder + decoder) / 1e9


def eval_gflop(num_images: int, num_samples: int) -> float:
    """Matmul GFLOP of log p^(x): the encoder once per image, the decoder once per sample."""
    return (
        _matmul_flop(num_images, ENCODER_LAYERS)
        + _matmul_flop(num_images * num_samples, DECODER_LAYERS)
    ) / 1e9


# -------------------------------------------------------------------------------- data
def load_images(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train, test, description): float32 binary images [N, 784]."""
    rng = np.random.default_rng(seed)
    if kind == "synthetic":
        train = (rng.random((1000, PIXELS)) < 0.5).astype(np.float32)
        test = (rng.random((1000, PIXELS)) < 0.5).astype(np.float32)
        return train, test, "synthetic random binary images (each pixel on with probability 1/2)"
    sys.path.insert(0, str(ROOT / "examples"))
    import mnist_data  # examples/ is not a package

    data = mnist_data.load_mnist("mnist", download=False, log=lambda s: print(s, flush=True))
    train, test = data.train, data.test
    if not data.binarized:
        train = (rng.random(train.shape) < train).astype(np.float32)
        test = (rng.random(test.shape) < test).astype(np.float32)
    return train, test, f"{data.source} (binarized once with seed {seed})"


def batches_of(images: np.ndarray, batch_size: int, count: int = 8) -> list[tf.Tensor]:
    """`count` consecutive batches, wrapping around the images."""
    indices = np.arange(count * batch_size).reshape(count, batch_size) % len(images)
    return [tf.constant(images[i]) for i in indices]


# ------------------------------------------------------------------------------ timing
@dataclasses.dataclass
class Timed:
    """A timed configuration: `run(n)` does n units of work and returns something to fetch."""

    key: str
    run: Callable[[int], object]
    units: int  # units per round
    info: dict
    rates: list = dataclasses.field(default_factory=list)  # units per second, per round


def _fetch(value) -> None:
    for tensor in tf.nest.flatten(value):
        np.asarray(tensor)


def time_rounds(timed: list[Timed], rounds: int, seed: int, log=print) -> None:
    rng = np.random.default_rng(seed)
    for r in range(rounds):
        start_round = time.perf_counter()
        for i in rng.permutation(len(timed)):
            t = timed[i]
            start = time.perf_counter()
            _fetch(t.run(t.units))
            t.rates.append(t.units / (time.perf_counter() - start))
        log(f"  round {r + 1}/{rounds}: {time.perf_counter() - start_round:.1f} s")


def summary(rates: list[float]) -> dict:
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "rounds": rates,
    }


# ---------------------------------------------------------------------------- the noise
def noise_functions(shape) -> dict[str, Callable]:
    """seed -> standard normal noise of one step's [K, B, D], or a part of it.

    `library` is `sampling.standard_normal` as it stands; `library_uint32_bits` its private
    bit generator (when it has one by that name); `ndtri_float64_and_cast` the rest of its
    float32 recipe, on a fixed uniform. `recipe_auto_select` and `recipe_philox` are the
    recipe of commit d84a7fe (TensorFlow's stateless bits, float64 ndtri) with the RNG
    algorithm unnamed and named; then TensorFlow's own normal sampler, and two candidate
    transforms of the Philox bits (float32 ndtri, float64 Box-Muller).
    """
    shape = tf.constant(shape, tf.int32)
    uniform = _uniform64(shape, tf.constant([1, 2], tf.int32), "philox")

    def ndtri32(seed):
        return tf.math.ndtri(tf.cast(_uniform64(shape, seed, "philox"), tf.float32))

    def box_muller64(seed):  # pairs the two halves of the last axis (even size)
        u1, u2 = tf.split(_uniform64(shape, seed, "philox"), 2, axis=-1)
        radius = tf.sqrt(-2.0 * tf.math.log(u1))
        angle = 2.0 * math.pi * u2
        return tf.cast(tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], -1), tf.float32)

    def tf_default(seed):
        return tf.random.stateless_normal(shape, seed=sampling.stateless_seed(seed))

    fns = {"library": lambda seed: sampling.standard_normal(shape, seed)}
    library_bits = getattr(sampling, "_uint32_bits", None)
    if library_bits is not None:
        fns["library_uint32_bits"] = lambda seed: library_bits(shape, sampling.stateless_seed(seed))
    fns.update(
        {
            "ndtri_float64_and_cast": lambda seed: tf.cast(tf.math.ndtri(uniform), tf.float32),
            "recipe_auto_select": lambda seed: bits_ndtri_normal(shape, seed, alg="auto_select"),
            "recipe_philox": lambda seed: bits_ndtri_normal(shape, seed, alg="philox"),
            "auto_select_bits": lambda seed: _bits(shape, seed, "auto_select"),
            "philox_bits": lambda seed: _bits(shape, seed, "philox"),
            "tf_stateless_normal": tf_default,
            "tf_stateless_normal_philox": lambda seed: tf_normal(shape, seed),
            "candidate_ndtri_float32": ndtri32,
            "candidate_box_muller_float64": box_muller64,
        }
    )
    return fns


def noise_agreement(fns: dict[str, Callable], seed) -> dict:
    """max |difference| of draws between tf.function and XLA; Philox vs auto_select bits."""

    def run(name, jit):
        return tf.cast(tf.function(fns[name], jit_compile=jit, autograph=False)(seed), tf.float64)

    def max_abs(a, b):
        return float(tf.reduce_max(tf.abs(a - b)))

    out = {}
    for name in ("library", "recipe_philox", "candidate_ndtri_float32"):
        out[f"{name}_tf_vs_xla"] = max_abs(run(name, False), run(name, True))
    out["candidate_box_muller_float64_tf_vs_xla"] = max_abs(
        run("candidate_box_muller_float64", False), run("candidate_box_muller_float64", True)
    )
    reference = run("recipe_auto_select", False)
    for jit in (False, True):
        mode = "xla" if jit else "tf"
        out[f"recipe_philox_{mode}_vs_recipe_auto_select_tf"] = max_abs(
            run("recipe_philox", jit), reference
        )
    return out


# ------------------------------------------------------------------------------ checks
def _flat(tensors) -> tf.Tensor:
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def handwritten_check(x: tf.Tensor, num_samples: int, seed: int) -> dict:
    """The hand-written loss and gradients vs the library's IWAE, on the same noise."""
    encoder, decoder = make_networks(x, seed)
    p_z = prior()
    variables = decoder.trainable_variables + encoder.trainable_variables
    step_seed = tf.constant([seed, 7], tf.int32)
    hand = handwritten_iwae_loss(encoder, decoder, num_samples, sampling.standard_normal)

    @tf.function(autograph=False)
    def both():
        with tf.GradientTape(persistent=True) as tape:
            log_joint = mco.make_log_joint(p_z, decoder, x)
            library = mco.IWAE(num_samples)(encoder(x), log_joint, seed=step_seed).loss
            handwritten = hand(x, step_seed)
        return (
            library,
            handwritten,
            _flat(tape.gradient(library, variables)),
            _flat(tape.gradient(handwritten, variables)),
        )

    library, handwritten, g_library, g_hand = both()
    scale = float(tf.reduce_max(tf.abs(g_library)))
    return {
        "library_loss": float(library),
        "handwritten_loss": float(handwritten),
        "abs_loss_difference": abs(float(library) - float(handwritten)),
        "max_abs_gradient_difference_over_max_abs_gradient": float(
            tf.reduce_max(tf.abs(g_library - g_hand))
        )
        / scale,
    }


class _Moments:
    """Running sums for the mean and variance of a vector over seeds."""

    def __init__(self):
        self.n, self.total, self.squares = 0, 0.0, 0.0

    def add(self, value) -> None:
        value = np.asarray(value, np.float64)
        self.n += 1
        self.total = self.total + value
        self.squares = self.squares + value**2

    def mean_and_variance_of_mean(self):
        mean = self.total / self.n
        variance = np.maximum(self.squares / self.n - mean**2, 0.0) * self.n / (self.n - 1)
        return mean, variance / self.n


def _agreement(a: _Moments, b: _Moments) -> dict:
    mean_a, var_a = a.mean_and_variance_of_mean()
    mean_b, var_b = b.mean_and_variance_of_mean()
    mean_a, mean_b = np.atleast_1d(mean_a), np.atleast_1d(mean_b)
    se = np.sqrt(np.atleast_1d(var_a + var_b))
    keep = se > 1e-12 * max(1.0, float(np.max(np.abs(mean_a))))
    z = (mean_a - mean_b)[keep] / se[keep]
    n = int(keep.sum())
    return {
        "coordinates": n,
        "mean_z_squared": float(np.mean(z**2)),
        "max_abs_z": float(np.max(np.abs(z))),
        "expected_max_abs_z": math.sqrt(2.0 * math.log(max(2 * n, 2))),
        "fraction_abs_z_above_3": float(np.mean(np.abs(z) > 3.0)),
        "relative_difference_of_means": float(
            np.linalg.norm(mean_a - mean_b) / max(np.linalg.norm(mean_a), 1e-30)
        ),
        "ours_mean_norm": float(np.linalg.norm(mean_a)),
        "other_mean_norm": float(np.linalg.norm(mean_b)),
    }


def tfp_check(x: tf.Tensor, num_samples: int, num_seeds: int, seed: int) -> dict:
    """mco.DReG vs TFP's DReG: loss and gradient means over seeds, within Monte Carlo error."""
    encoder, decoder = make_networks(x, seed)
    p_z = prior()
    encoder_variables, decoder_variables = encoder.trainable_variables, decoder.trainable_variables
    ours_objective = mco.DReG(num_samples)
    theirs_loss = tfp_dreg_loss(encoder, decoder, p_z, num_samples)

    def gradients(loss_fn):
        @tf.function(autograph=False)
        def fn(s):
            with tf.GradientTape() as tape:
                loss = loss_fn(s)
            grads = tape.gradient(loss, encoder_variables + decoder_variables)
            n = len(encoder_variables)
            return loss, _flat(grads[:n]), _flat(grads[n:])

        return fn

    def ours_loss(s):
        log_joint = mco.make_log_joint(p_z, decoder, x)
        return ours_objective(encoder(x), log_joint, seed=s).loss

    ours = gradients(ours_loss)
    theirs = gradients(lambda s: theirs_loss(x, s))
    base = tf.constant([seed, 0xC4EC], tf.int32)
    seeds = tf.random.experimental.stateless_split(base, 2 * num_seeds)
    moments = {who: [_Moments(), _Moments(), _Moments()] for who in ("ours", "tfp")}
    start = time.perf_counter()
    for i in range(num_seeds):
        for who, fn, s in (("ours", ours, seeds[i]), ("tfp", theirs, seeds[num_seeds + i])):
            for m, value in zip(moments[who], fn(tf.cast(s, tf.int32)), strict=True):
                m.add(value.numpy())
    result = {
        "num_seeds": num_seeds,
        "batch_size": int(x.shape[0]),
        "num_samples": num_samples,
        "seconds": time.perf_counter() - start,
    }
    for i, part in enumerate(("loss", "encoder_gradient", "decoder_gradient")):
        result[part] = _agreement(moments["ours"][i], moments["tfp"][i])
    loss_ours, _ = moments["ours"][0].mean_and_variance_of_mean()
    loss_tfp, _ = moments["tfp"][0].mean_and_variance_of_mean()
    result["loss"].update(ours_mean=float(loss_ours), tfp_mean=float(loss_tfp))
    result["note"] = (
        "TFP's DReG surrogate weights d log p(x, z_k) / d theta by the squared normalized "
        "weights, so its decoder gradient is not the IWAE model gradient and is expected to "
        "disagree; the loss and the encoder gradient should agree"
    )
    result["agree"] = {
        part: result[part]["mean_z_squared"] < 1.5
        and result[part]["max_abs_z"] < result[part]["expected_max_abs_z"] + 1.5
        for part in ("loss", "encoder_gradient", "decoder_gradient")
    }
    return result


# -------------------------------------------------------------------------- evaluation
def time_log_marginal(images: np.ndarray, args: dict, seed: int) -> dict:
    x0 = tf.constant(images[:1])
    encoder, decoder = make_networks(x0, seed)
    model = mco.ImportanceWeightedAutoencoder(encoder, decoder, prior(), mco.IWAE(64), seed=seed)

    @tf.function(autograph=False)
    def estimate(x, s):
        return model.log_marginal(
            x, s, num_samples=args["num_samples"], chunk_size=args["chunk_size"]
        )

    size = args["batch_size"]
    batches = [tf.constant(images[i : i + size]) for i in range(0, len(images), size)]
    base = tf.constant([seed, 0x10C], tf.int32)
    seed_of = lambda i: tf.random.experimental.stateless_fold_in(base, i)  # noqa: E731
    estimate(batches[0], seed_of(-1)).numpy()  # trace (a smaller last batch traces again)
    start = time.perf_counter()
    values = np.concatenate([estimate(b, seed_of(i)).numpy() for i, b in enumerate(batches)])
    seconds = time.perf_counter() - start
    return {
        "images": len(images),
        "num_samples": args["num_samples"],
        "chunk_size": args["chunk_size"],
        "batch_size": size,
        "jit_compile": False,
        "seconds": seconds,
        "images_per_second": len(images) / seconds,
        "seconds_per_1000_images": 1000.0 * seconds / len(images),
        "gflop_per_second": eval_gflop(len(images), args["num_samples"]) / seconds,
        "mean_log_px": float(np.mean(values)),
        "all_finite": bool(np.all(np.isfinite(values))),
        "model": "untrained (weights do not change the cost)",
    }


# ------------------------------------------------------------------------------ memory
def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_probe(spec: str) -> dict:
    """Peak memory of one configuration, in this (fresh) process."""
    name, batch_size, jit = spec.split(",")
    batch_size, jit = int(batch_size), jit == "on"
    train, _, _ = load_images(FLAGS.data, FLAGS.seed)
    x = batches_of(train, batch_size, count=1)[0]
    runner = make_runner(name, x, [jit], FLAGS.seed, FLAGS.num_samples, FLAGS.num_outer)
    step = runner.steps[jit]
    reset = _reset_peak()
    rss_before = _status_kb("VmRSS")
    with runner.trace_context():
        run_step(step, x).numpy()
    first_peak = _status_kb("VmHWM")
    reset = _reset_peak() and reset
    rss_steady = _status_kb("VmRSS")
    for _ in range(FLAGS.memory_steps):
        run_step(step, x).numpy()
    step_peak = _status_kb("VmHWM")
    mb = 1.0 / 1024.0
    return {
        "rss_before_first_step_mb": rss_before * mb,
        "first_call_mb": (first_peak - rss_before) * mb,
        "rss_after_first_step_mb": rss_steady * mb,
        "step_mb": (step_peak - rss_steady) * mb,
        "peak_rss_mb": max(first_peak, step_peak) * mb,
        "peak_reset_worked": reset,
    }


def measure_memory(configs: list[tuple[str, int, bool]], log=print) -> dict:
    """Runs `memory_probe` in one subprocess per configuration, `--memory_workers` at a time."""
    passthrough = [
        f"--num_samples={FLAGS.num_samples}",
        f"--num_outer={FLAGS.num_outer}",
        f"--memory_steps={FLAGS.memory_steps}",
        f"--data={FLAGS.data}",
        f"--seed={FLAGS.seed}",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    pending = list(configs)
    running: list[tuple[tuple, subprocess.Popen]] = []
    results = {}
    while pending or running:
        while pending and len(running) < FLAGS.memory_workers:
            name, batch_size, jit = pending.pop(0)
            spec = f"{name},{batch_size},{'on' if jit else 'off'}"
            command = [sys.executable, __file__, f"--memory_probe={spec}", *passthrough]
            process = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
            )
            running.append(((name, batch_size, jit), process))
        config, process = running.pop(0)
        out, err = process.communicate()
        key = config_key(*config)
        lines = [line for line in out.splitlines() if line.startswith("MEMORY ")]
        if process.returncode != 0 or not lines:
            results[key] = {"error": err.strip().splitlines()[-3:]}
            log(f"  memory {key}: failed ({process.returncode})")
        else:
            results[key] = json.loads(lines[-1][len("MEMORY ") :])
            log(
                f"  memory {key}: first call +{results[key]['first_call_mb']:.0f} MB, "
                f"step +{results[key]['step_mb']:.0f} MB"
            )
    return results


# ------------------------------------------------------------------ the configurations
def step_configs(runners: dict, batches: dict, jit_modes, log) -> list[Timed]:
    """Warms up every (step, batch size, jit mode) and returns them as timed configurations."""
    timed = []
    for name, runner in runners.items():
        for batch_size, xs in batches.items():
            for jit in jit_modes:
                step = runner.steps[jit]
                key = config_key(name, batch_size, jit)
                start = time.perf_counter()
                with runner.trace_context():
                    for i in range(FLAGS.warmup_steps):
                        run_step(step, xs[i % len(xs)]).numpy()
                what = f" {runner.objective}" if runner.objective else ""
                log(f"  warm-up {key}{what}: {time.perf_counter() - start:.1f} s")

                def run(n, step=step, xs=xs):
                    loss = None
                    for i in range(n):
                        loss = run_step(step, xs[i % len(xs)])
                    return loss

                info = {"kind": "step", "name": name, "batch_size": batch_size, "jit_compile": jit}
                timed.append(Timed(key, run, FLAGS.steps, info))
    return timed


def matmul_config(key: str, n: int, k: int, m: int, calls: int) -> Timed:
    """An [n, k] x [k, m] float32 matmul in a tf.function: the attainable GFLOP/s."""
    a = tf.random.stateless_normal([n, k], [1, 2])
    b = tf.random.stateless_normal([k, m], [3, 4])
    matmul = tf.function(tf.matmul, autograph=False)
    matmul(a, b).numpy()

    def run(count):
        out = None
        for _ in range(count):
            out = matmul(a, b)
        return out

    return Timed(key, run, calls, {"kind": "matmul", "shape": [n, k, m], "gflop": 2e-9 * n * k * m})


def noise_configs(batch_sizes, jit_modes, k: int, seed: int) -> list[Timed]:
    timed = []
    for batch_size in batch_sizes:
        for fn_name, fn in noise_functions([k, batch_size, LATENT_SIZE]).items():
            for jit in jit_modes:
                compiled = tf.function(fn, jit_compile=jit, autograph=False)
                seed0 = tf.constant([seed, 5], tf.int32)
                compiled(seed0).numpy()

                def run(count, compiled=compiled, seed0=seed0):
                    out = None
                    for i in range(count):
                        out = compiled(seed0 + i)
                    return out

                info = {
                    "kind": "noise",
                    "name": fn_name,
                    "batch_size": batch_size,
                    "jit_compile": jit,
                    "shape": [k, batch_size, LATENT_SIZE],
                }
                key = f"noise/{fn_name}/b{batch_size}/{'xla' if jit else 'tf'}"
                timed.append(Timed(key, run, FLAGS.steps, info))
    return timed


# --------------------------------------------------------------------------- reporting
def config_key(name: str, batch_size: int, jit: bool) -> str:
    return f"{name}/b{batch_size}/{'xla' if jit else 'tf'}"


def throughput_rows(timed: list[Timed], runners: dict, k: int) -> tuple[list[dict], list[str]]:
    """Per step configuration: steps/s, GFLOP/s, the ratios and targets; and the missed targets."""
    rows = []
    for t in timed:
        if t.info["kind"] != "step":
            continue
        name, batch_size = t.info["name"], t.info["batch_size"]
        kind = runners[name].gradient_kind
        steps = summary(t.rates)
        gflop = step_gflop(kind, batch_size, k)
        rows.append(
            {
                "key": t.key,
                "name": name,
                "objective": runners[name].objective,
                "batch_size": batch_size,
                "jit_compile": t.info["jit_compile"],
                "steps_per_second": steps,
                "milliseconds_per_step": 1000.0 / steps["median"],
                "gradient_kind": kind,
                "gflop_per_step": gflop,
                "gflop_per_second": gflop * steps["median"],
            }
        )
    by_key = {r["key"]: r for r in rows}
    targets = {"handwritten": HANDWRITTEN, "iwae": "iwae", "tfp": TFP_DREG}
    misses = []
    for r in rows:
        for which, reference in targets.items():
            ref = by_key.get(config_key(reference, r["batch_size"], r["jit_compile"]))
            r[f"vs_{which}"] = (
                None
                if ref is None
                else ref["steps_per_second"]["median"] / r["steps_per_second"]["median"]
            )
        name = r["name"]
        applies = {
            "handwritten": (name in OBJECTIVES, TARGET_VS_HANDWRITTEN),
            "iwae": (name in VS_IWAE_TARGETED, TARGET_VS_IWAE),
            "tfp": (name == "dreg", TARGET_VS_TFP),
        }
        r["targets_met"] = {}
        for which, (applied, target) in applies.items():
            if applied and r[f"vs_{which}"] is not None:
                r[f"target_vs_{which}"] = target
                met = r[f"vs_{which}"] <= target
                r["targets_met"][f"vs_{which}"] = met
                if not met:
                    misses.append(f"{r['key']} vs {which} {r[f'vs_{which}']:.2f} > {target}")
    return rows, misses


def noise_rows(timed: list[Timed], rows: list[dict]) -> dict:
    by_key = {r["key"]: r for r in rows}
    noise = {}
    for t in timed:
        if t.info["kind"] != "noise":
            continue
        ms = 1000.0 / summary(t.rates)["median"]
        iwae = by_key.get(config_key("iwae", t.info["batch_size"], t.info["jit_compile"]))
        noise[t.key] = {
            **t.info,
            "milliseconds_per_call": ms,
            "milliseconds_per_call_rounds": [1000.0 / r for r in t.rates],
            "fraction_of_library_iwae_step": (
                None if iwae is None else ms / iwae["milliseconds_per_step"]
            ),
        }
    return noise


def machine_info() -> dict:
    cpu_model = None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu_model = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), None)
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    return {
        "tensorflow": tf.__version__,
        "tensorflow_probability": tfp.__version__,
        "keras": keras.__version__,
        "mcobjectives": mco.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "git": commit,
        "mcobjectives_sha256": hashlib.sha256(
            b"".join(path.read_bytes() for path in sorted((ROOT / "mcobjectives").glob("*.py")))
        ).hexdigest()[:16],
        "note": "timings taken on a machine possibly shared with other work",
    }


def _ratio(r: dict, which: str) -> str:
    value = r.get(f"vs_{which}")
    if value is None:
        return "-"
    target = r.get(f"target_vs_{which}")
    return f"{value:.2f}" + ("" if target is None else (" ok" if value <= target else " MISS"))


def print_summary(results: dict, names: list[str], batch_sizes, jit_modes) -> None:
    machine = results["machine"]
    print(
        f"\ndata: {results['data']}; K = {FLAGS.num_samples}; {machine['cpu_model']}, "
        f"{machine['cpus_available']} CPUs (shared machine: timings are noisy)"
    )
    ceiling = results["matmul_ceiling"]
    peak = max(c["gflop_per_second"]["median"] for c in ceiling.values())
    print(
        "\nTraining steps/s: median over rounds [min-max]. Ratios are time ratios to the "
        "reference (>1: slower);\n'ok'/'MISS' mark the targets: objectives vs hand-written "
        f"<= {TARGET_VS_HANDWRITTEN}, DReG/JVI vs our IWAE <= {TARGET_VS_IWAE}, our DReG vs "
        f"TFP DReG <= {TARGET_VS_TFP}.\n%peak: GFLOP/s over the best matmul GFLOP/s ({peak:.1f})."
    )
    header = (
        f"{'config':<26}{'steps/s':>8}{'[min-max]':>14}{'ms/step':>9}{'GFLOP/s':>9}"
        f"{'%peak':>7}{'vs hand':>11}{'vs iwae':>11}{'vs tfp':>11}"
    )
    by_key = {r["key"]: r for r in results["throughput"]}
    for batch_size in batch_sizes:
        for jit in jit_modes:
            print(f"\n-- batch {batch_size}, {'jit_compile=True' if jit else 'tf.function'} --")
            print(header)
            for name in names:
                r = by_key[config_key(name, batch_size, jit)]
                s = r["steps_per_second"]
                spread = f"[{s['min']:.1f}-{s['max']:.1f}]"
                print(
                    f"{name:<26}{s['median']:>8.2f}{spread:>14}{r['milliseconds_per_step']:>9.1f}"
                    f"{r['gflop_per_second']:>9.1f}{100 * r['gflop_per_second'] / peak:>7.1f}"
                    f"{_ratio(r, 'handwritten'):>11}{_ratio(r, 'iwae'):>11}{_ratio(r, 'tfp'):>11}"
                )
    print("\nmatmul ceiling, GFLOP/s median [min-max]:")
    for key, c in ceiling.items():
        g = c["gflop_per_second"]
        print(f"  {key:<28}{c['shape']!s:<20}{g['median']:.1f} [{g['min']:.1f}-{g['max']:.1f}]")
    if results["noise"]:
        print("\nnoise of one step, [K, B, 50]: ms per call (median), share of library IWAE step")
        for key, v in results["noise"].items():
            share = v["fraction_of_library_iwae_step"]
            share = "" if share is None else f"{100 * share:7.1f} %"
            print(f"  {key:<52}{v['milliseconds_per_call']:>9.3f}{share}")
        print("  max |difference| of the draws:")
        for key, value in results["noise_agreement"].items():
            print(f"    {key:<48}{value:.3g}")
    print(f"\nhand-written vs library IWAE on the same noise: {results['handwritten_check']}")
    if "tfp_check" in results:
        c = results["tfp_check"]
        print(f"TFP DReG vs mco.DReG, {c['num_seeds']} seeds each (agree: {c['agree']}):")
        print(f"  ({c['note']})")
        for part in ("loss", "encoder_gradient", "decoder_gradient"):
            a = c[part]
            print(
                f"  {part:<17} mean z^2 {a['mean_z_squared']:8.2f}, max |z| {a['max_abs_z']:7.2f} "
                f"(~{a['expected_max_abs_z']:.2f} if equal), |z| > 3: "
                f"{100 * a['fraction_abs_z_above_3']:.2f} %, relative difference of the means "
                f"{a['relative_difference_of_means']:.3g}"
            )
    if "log_marginal" in results:
        e = results["log_marginal"]
        print(
            f"\nlog p^(x), K = {e['num_samples']}: {e['seconds']:.1f} s for {e['images']} images "
            f"({e['images_per_second']:.2f} images/s, {e['seconds_per_1000_images']:.1f} s per "
            f"1000, {e['gflop_per_second']:.1f} GFLOP/s)"
        )
    if "memory" in results:
        print("\npeak memory, MB over the resident size: first call (trace+compile+step), step")
        for key, v in results["memory"].items():
            if "error" in v:
                print(f"  {key:<34} error: {v['error']}")
            else:
                print(
                    f"  {key:<34}{v['first_call_mb']:>8.0f}{v['step_mb']:>8.0f}"
                    f"   (peak RSS {v['peak_rss_mb']:.0f})"
                )
    if results["retraced_during_timing"]:
        print(f"\nWARNING: retraced during timing: {results['retraced_during_timing']}")
    missed = results["targets"]["missed"]
    print(f"\ntargets: {'all met' if not missed else 'missed: ' + '; '.join(missed)}")


def _json_default(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


# -------------------------------------------------------------------------------- main
FLAG_NAMES = (
    "batch_sizes", "num_samples", "num_outer", "objectives", "jit", "steps", "rounds",
    "warmup_steps", "tfp", "diagnostics", "check_seeds", "check_batch_size", "matmul_size",
    "eval_images", "eval_num_samples", "eval_chunk_size", "eval_batch_size", "memory",
    "memory_steps", "memory_workers", "data", "seed", "out_dir",
)  # fmt: skip


def check_flags() -> tuple[list[int], list[str], list[bool]]:
    batch_sizes = [int(b) for b in FLAGS.batch_sizes]
    names = list(FLAGS.objectives)
    unknown = sorted(set(names) - set(OBJECTIVES))
    if unknown:
        raise app.UsageError(f"unknown --objectives {unknown}; choose from {list(OBJECTIVES)}")
    k, m = FLAGS.num_samples, FLAGS.num_outer
    if k < 2:
        raise app.UsageError("--num_samples must be >= 2")
    for name in names:  # builds each objective once: bad settings fail before any timing
        try:
            make_library_objective(name, k, m)
        except (TypeError, ValueError) as e:
            raise app.UsageError(f"--objectives={name}: {e}") from e
    if min(batch_sizes) < 1 or min(FLAGS.steps, FLAGS.rounds, FLAGS.warmup_steps) < 1:
        raise app.UsageError("batch sizes, --steps, --rounds and --warmup_steps must be >= 1")
    jit_modes = {"both": [False, True], "on": [True], "off": [False]}[FLAGS.jit]
    return batch_sizes, names, jit_modes


def main(argv) -> None:
    del argv
    tf.get_logger().setLevel("ERROR")  # many functions are traced on purpose; retraces are checked
    if FLAGS.memory_probe:
        print("MEMORY " + json.dumps(memory_probe(FLAGS.memory_probe)), flush=True)
        return
    batch_sizes, objective_names, jit_modes = check_flags()
    k, m, seed = FLAGS.num_samples, FLAGS.num_outer, FLAGS.seed
    started = time.perf_counter()
    loadavg_start = os.getloadavg()

    def log(message):
        print(message, flush=True)

    train, test, data_description = load_images(FLAGS.data, seed)
    log(f"data: {data_description}")
    batches = {b: batches_of(train, b) for b in batch_sizes}
    names = [HANDWRITTEN] + ([TFP_DREG] if FLAGS.tfp else []) + objective_names
    if "iwae" not in names:
        names.append("iwae")  # the reference of the DReG and JVI ratios
    if FLAGS.diagnostics:
        names += list(DIAGNOSTIC_STEPS)
    results: dict = {
        "description": __doc__.split("\n\n")[0],
        "config": {name: FLAGS[name].value for name in FLAG_NAMES},
        "data": data_description,
        "machine": machine_info(),
    }

    # Correctness checks (cheap).
    x_check = batches_of(test, FLAGS.check_batch_size, count=1)[0]
    results["handwritten_check"] = handwritten_check(x_check, k, seed)
    log(f"hand-written vs library IWAE, same noise: {results['handwritten_check']}")
    if FLAGS.tfp and FLAGS.check_seeds >= 2:
        results["tfp_check"] = tfp_check(x_check, k, FLAGS.check_seeds, seed)
        log(f"TFP DReG vs mco.DReG: agree = {results['tfp_check']['agree']}")

    # Every configuration, warmed up, then timed in interleaved rounds.
    first_x = batches[batch_sizes[0]][0]
    runners = {name: make_runner(name, first_x, jit_modes, seed, k, m) for name in names}
    timed = step_configs(runners, batches, jit_modes, log)
    traces = {
        (name, jit): runner.steps[jit].experimental_get_tracing_count()
        for name, runner in runners.items()
        for jit in jit_modes
    }
    size, rows = FLAGS.matmul_size, max(batch_sizes) * k
    timed.append(matmul_config(f"matmul/{size}", size, size, size, 3))
    timed.append(
        matmul_config(f"matmul/decoder_output_b{max(batch_sizes)}", rows, HIDDEN, PIXELS, 10)
    )
    agreement = {}
    if FLAGS.diagnostics:
        timed += noise_configs(batch_sizes, jit_modes, k, seed)
        fns = noise_functions([k, batch_sizes[-1], LATENT_SIZE])
        agreement = noise_agreement(fns, tf.constant([seed, 11], tf.int32))
    log(f"timing {len(timed)} configurations in {FLAGS.rounds} rounds")
    time_rounds(timed, FLAGS.rounds, seed, log)

    rows, missed = throughput_rows(timed, runners, k)
    results.update(
        {
            "throughput": rows,
            "targets": {
                "vs_handwritten": TARGET_VS_HANDWRITTEN,
                "vs_iwae": TARGET_VS_IWAE,
                "vs_iwae_applies_to": list(VS_IWAE_TARGETED),
                "vs_tfp": TARGET_VS_TFP,
                "missed": missed,
                "all_met": not missed,
            },
            "ratio_definition": "seconds per step of the configuration over those of the "
            "reference at the same batch size and jit mode (from the median steps/s)",
            "gflop_definition": "analytic matmul FLOPs (2 m n k per matmul) of the forward pass, "
            "the weight gradients and the activation gradients autodiff needs; 'split' "
            "objectives add a backward pass through the decoder for d log w / dz",
            "matmul_ceiling": {
                t.key: {
                    "shape": t.info["shape"],
                    "gflop_per_second": summary([r * t.info["gflop"] for r in t.rates]),
                }
                for t in timed
                if t.info["kind"] == "matmul"
            },
            "noise": noise_rows(timed, rows),
            "noise_agreement": agreement,
            "retraced_during_timing": [
                f"{name}/{'xla' if jit else 'tf'}"
                for (name, jit), count in traces.items()
                if runners[name].steps[jit].experimental_get_tracing_count() != count
            ],
        }
    )

    if FLAGS.eval_images > 0:
        repeats = math.ceil(FLAGS.eval_images / len(test))
        images = np.concatenate([test] * repeats)[: FLAGS.eval_images]
        log(f"log p^(x) of {len(images)} images, K = {FLAGS.eval_num_samples}")
        eval_args = {
            "num_samples": FLAGS.eval_num_samples,
            "chunk_size": FLAGS.eval_chunk_size,
            "batch_size": FLAGS.eval_batch_size,
        }
        results["log_marginal"] = time_log_marginal(images, eval_args, seed)
        results["log_marginal"]["test_images_repeated"] = repeats > 1

    if FLAGS.memory:
        configs = [
            (name, b, jit)
            for name in names
            if name not in DIAGNOSTIC_STEPS
            for b in batch_sizes
            for jit in jit_modes
        ]
        log(f"peak memory: {len(configs)} subprocesses, {FLAGS.memory_workers} at a time")
        results["memory"] = measure_memory(configs, log)
        results["memory_method"] = (
            "one subprocess per configuration; VmHWM (peak resident set) of /proc/self/status, "
            "reset through /proc/self/clear_refs. first_call_mb: peak during the first step "
            "(tracing, XLA compilation, the step) over the resident size before it; step_mb: "
            f"peak during {FLAGS.memory_steps} further steps over the resident size after the "
            "first (the working memory of a step beyond what the process keeps)"
        )

    results["machine"].update(loadavg_start=loadavg_start, loadavg_end=os.getloadavg())
    results["seconds_total"] = time.perf_counter() - started
    out_dir = pathlib.Path(FLAGS.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True, default=_json_default))
    print_summary(results, names, batch_sizes, jit_modes)
    print(f"wrote {path} ({results['seconds_total']:.0f} s)")


if __name__ == "__main__":
    define_flags()
    app.run(main)
