"""The TensorFlow steps `throughput.py` times besides the library's, their FLOPs, its checks.

* `handwritten_iwae_loss`: a minimal IWAE loss in plain TensorFlow on the library layers'
  weights, the no-abstraction floor; `tfp_dreg_loss`: TFP's doubly reparameterized IWAE loss;
  `custom_runner`: either as a training step with `mco.make_train_step`'s structure.
* `load_images`, `batches_of`: the data of the steps (synthetic, or MNIST).
* `matmul_config`, `log_marginal_config`: the matmul ceiling at a size, and
  `mco.log_marginal_estimate` (through `model.log_marginal`), as timed configurations.
* `step_gflop`, `matmul_gflop`, `eval_gflop`: matmul FLOPs of a training step, of the
  ceiling's matmul and of log p^(x).
* `handwritten_check`, `tfp_check`: the hand-written loss against the library's IWAE on the
  same noise; TFP's DReG against `mco.DReG` within Monte Carlo error.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import diagnostics, sampling

# isort: split
# The benchmarks' own modules, beside this script.
import _harness
from _harness import LATENT_SIZE, PIXELS, Timed

tfd = tfp.distributions
HIDDEN = 200
ENCODER_LAYERS = ((PIXELS, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 2 * LATENT_SIZE))  # (in, out)
DECODER_LAYERS = ((LATENT_SIZE, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, PIXELS))


# ---------------------------------------------------------------------------- the steps
def tf_normal(shape, seed, dtype=tf.float32) -> tf.Tensor:
    """TensorFlow's stateless normal sampler with `sampling.standard_normal`'s signature,
    the algorithm named (Philox; "auto_select" gives the same draws, slower under XLA)."""
    return tf.random.stateless_normal(
        shape, seed=sampling.stateless_seed(seed), dtype=dtype, alg="philox"
    )


def matmul_config(key: str, rows: int, units: int) -> Timed:
    """The [rows, 200] x [200, 784] float32 matmul in a tf.function: the ceiling at that size."""
    a = tf.random.stateless_normal([rows, HIDDEN], [1, 2])
    b = tf.random.stateless_normal([HIDDEN, PIXELS], [3, 4])
    matmul = tf.function(tf.matmul, autograph=False)
    matmul(a, b).numpy()
    info = {"kind": "matmul", "rows": rows, "gflop": matmul_gflop(rows), "framework": "tensorflow"}
    return Timed(key, lambda count: [matmul(a, b) for _ in range(count)][-1], units, info)


def log_marginal_config(key: str, images: np.ndarray, args: dict, seed: int, jit: bool) -> Timed:
    """`model.log_marginal` (`mco.log_marginal_estimate`) of one batch of images per call.

    The model is untrained: its weights do not change the cost. The warm-up call's values
    are kept in the info (mean log p^(x), all finite).
    """
    x = tf.constant(images)
    model = _harness.burda_model(mco.IWAE(64), x[:1], seed)

    @tf.function(jit_compile=jit, autograph=False)
    def estimate(s):
        return model.log_marginal(x, s, args["num_samples"], args["chunk_size"])

    base = tf.constant([seed, 0x10C], tf.int32)
    values = estimate(base).numpy()

    def run(count):
        return [estimate(base + i) for i in range(count)][-1]

    info = {
        **args,
        "kind": "log_marginal",
        "jit_compile": jit,
        "images": len(images),
        "gflop": eval_gflop(len(images), args["num_samples"]),
        "mean_log_px": float(np.mean(values)),
        "all_finite": bool(np.all(np.isfinite(values))),
    }
    return Timed(key, run, 1, info)


@dataclasses.dataclass
class Runner:
    """One model with its step functions, one per jit mode."""

    name: str
    steps: dict  # jit (bool) -> step(x)
    framework: str  # "mcobjectives", "tensorflow" (hand-written) or "tfp"
    gradient_kind: str  # "total", "split" or "score": the objective's `mco.GradientPath`
    objective: str | None = None  # repr of the library's objective


def custom_runner(name, loss_fn_of, example_x, jit_modes, seed, num_samples) -> Runner:
    """A step with `make_train_step`'s structure around `loss_fn_of(encoder, decoder, K)`: the
    seed folded from the step counter, the gradients alone under XLA, Adam outside."""
    encoder, decoder = _harness.burda_networks(example_x, seed)
    variables = decoder.trainable_variables + encoder.trainable_variables
    optimizer = _harness.adam()
    optimizer.build(variables)
    loss_fn = loss_fn_of(encoder, decoder, num_samples)
    base_seed = sampling.stateless_seed(seed)

    def make_step(jit):  # autograph=False: no Python control flow on tensors here
        @tf.function(jit_compile=jit, autograph=False)
        def gradients(x, step_seed):
            with tf.GradientTape() as tape:
                loss = loss_fn(x, step_seed)
            return tape.gradient(loss, variables), loss

        @tf.function(autograph=False)
        def step(x):
            counter = tf.cast(optimizer.iterations, tf.int64)
            step_seed = tf.random.experimental.stateless_fold_in(base_seed, counter)
            grads, loss = gradients(x, tf.cast(step_seed, tf.int32))
            optimizer.apply_gradients(zip(grads, variables, strict=True))
            return loss

        return step

    framework = "tfp" if name == "tfp_dreg" else "tensorflow"
    return Runner(name, {jit: make_step(jit) for jit in jit_modes}, framework, "total")


def load_images(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(train, test, description): float32 binary images [N, 784]."""
    rng = np.random.default_rng(seed)
    if kind == "synthetic":
        half = np.full((1000, 784), 0.5, np.float32)
        train, test = _harness.binarize(half, rng), _harness.binarize(half, rng)
        return train, test, "synthetic random binary images (each pixel on with probability 1/2)"
    data = _harness.load_mnist("mnist", log=lambda s: print(s, flush=True))
    if data.binarized:
        return data.train, data.test, data.source
    train, test = (_harness.binarize(images, rng) for images in (data.train, data.test))
    return train, test, f"{data.source} (binarized once with seed {seed})"


def batches_of(images: np.ndarray, batch_size: int, count: int = 8) -> list[tf.Tensor]:
    """`count` consecutive batches, wrapping around the images."""
    indices = np.arange(count * batch_size).reshape(count, batch_size) % len(images)
    return [tf.constant(images[i]) for i in indices]


# ---------------------------------------------------------------------------- the losses
def _dense_weights(mlp) -> list:
    """[(kernel, bias)] of an `mco.networks` MLP's dense layers, input to output."""
    return [(layer.kernel, layer.bias) for layer in [*mlp.hidden, mlp.output_layer]]


def _mlp(h: tf.Tensor, weights: list) -> tf.Tensor:
    for i, (kernel, bias) in enumerate(weights):
        h = tf.matmul(h, kernel) + bias
        h = tf.tanh(h) if i < len(weights) - 1 else h
    return h


def iwae_loss_of_noise(encoder_weights, decoder_weights, min_scale, x, eps) -> tf.Tensor:
    """-mean IWAE bound of the MLPs' [(kernel, bias)] at noise eps [K, B, D], plain TF.

    log q from the noise itself, hand-written Gaussian and Bernoulli log densities; K must
    be static (eps.shape[0]).
    """
    num_samples, batch = eps.shape[0], tf.shape(x)[0]
    loc, raw_scale = tf.split(_mlp(x, encoder_weights), 2, axis=-1)
    scale = tf.nn.softplus(raw_scale) + min_scale
    z = loc + scale * eps  # [K, B, D]; (z - loc) / scale = eps, of total derivative 0
    log_q = tf.reduce_sum(-0.5 * tf.square(eps) - tf.math.log(scale), axis=-1)
    log_prior = tf.reduce_sum(-0.5 * tf.square(z), axis=-1)
    logits = _mlp(tf.reshape(z, [-1, LATENT_SIZE]), decoder_weights)  # a 2-D matmul
    logits = tf.reshape(logits, [num_samples, batch, PIXELS])
    log_likelihood = tf.reduce_sum(x * logits - tf.nn.softplus(logits), axis=-1)
    log_w = log_prior + log_likelihood - log_q  # the 0.5 D log 2 pi terms cancel
    return -tf.reduce_mean(tf.reduce_logsumexp(log_w, axis=0) - math.log(num_samples))


def handwritten_iwae_loss(encoder, decoder, num_samples: int, noise=tf_normal) -> Callable:
    """(x, seed) -> -mean IWAE bound, in plain TensorFlow on the library layers' weights
    (`iwae_loss_of_noise` at the noise of `seed`)."""
    encoder_weights, decoder_weights = _dense_weights(encoder.net), _dense_weights(decoder.net)

    def loss(x, seed):
        eps = noise(tf.stack([num_samples, tf.shape(x)[0], LATENT_SIZE]), seed)
        eps = tf.ensure_shape(eps, [num_samples, None, LATENT_SIZE])
        return iwae_loss_of_noise(encoder_weights, decoder_weights, encoder.min_scale, x, eps)

    return loss


def tfp_dreg_loss(encoder, decoder, p_z: tfd.Distribution, num_samples: int) -> Callable:
    """(x, seed) -> the batch mean of TFP's doubly reparameterized IWAE loss."""

    def loss(x, seed):
        q = encoder(x)  # Independent(Normal), batch shape [B]
        stopped = tfd.Independent(
            tfd.Normal(
                tf.stop_gradient(q.distribution.loc), tf.stop_gradient(q.distribution.scale)
            ),
            1,
        )
        per_example = tfp.vi.monte_carlo_variational_loss(
            lambda z: p_z.log_prob(z) + decoder(z).log_prob(x),  # z [K, B, D] -> [K, B]
            q,
            importance_sample_size=num_samples,
            gradient_estimator=tfp.vi.GradientEstimators.DOUBLY_REPARAMETERIZED,
            stopped_surrogate_posterior=stopped,
            seed=seed,
        )
        return tf.reduce_mean(per_example)

    return loss


# ------------------------------------------------------------------------------- FLOPs
def _matmul_flop(rows: int, layers) -> float:
    return float(sum(2 * rows * n_in * n_out for n_in, n_out in layers))


def step_gflop(kind: str, batch_size: int, num_samples: int) -> float:
    """Matmul GFLOP of one training step: the forward pass, the weight gradients, and the
    activation gradients autodiff needs (down to z for the decoder, not down to x)."""
    rows = batch_size * num_samples
    encoder_forward = _matmul_flop(batch_size, ENCODER_LAYERS)
    encoder = 2 * encoder_forward + _matmul_flop(batch_size, ENCODER_LAYERS[1:])
    forward = _matmul_flop(rows, DECODER_LAYERS)  # = the weight gradients' = down to z's
    above_z = _matmul_flop(rows, DECODER_LAYERS[1:])
    decoder = {
        "total": 3 * forward,  # one backward pass, down to z
        "split": 3 * forward + above_z,  # d log w / dz, then the weights at fixed z
        "score": 2 * forward + above_z,  # the weights at fixed z only
    }
    if kind not in decoder:
        raise ValueError(f"unknown gradient kind {kind!r}")
    return (encoder + decoder[kind]) / 1e9


def matmul_gflop(rows: int) -> float:
    return 2e-9 * rows * HIDDEN * PIXELS


def eval_gflop(num_images: int, num_samples: int) -> float:
    """Matmul GFLOP of log p^(x): the encoder once per image, the decoder once per sample."""
    decoder = _matmul_flop(num_images * num_samples, DECODER_LAYERS)
    return (_matmul_flop(num_images, ENCODER_LAYERS) + decoder) / 1e9


# ------------------------------------------------------------------------------ checks
def _flat(tensors) -> tf.Tensor:
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def handwritten_check(x: tf.Tensor, num_samples: int, seed: int) -> dict:
    """The hand-written loss and gradients vs the library's IWAE, on the same noise."""
    encoder, decoder = _harness.burda_networks(x, seed)
    variables = decoder.trainable_variables + encoder.trainable_variables
    step_seed = tf.constant([seed, 7], tf.int32)
    hand = handwritten_iwae_loss(encoder, decoder, num_samples, sampling.standard_normal)

    @tf.function(autograph=False)
    def both():
        with tf.GradientTape(persistent=True) as tape:
            log_joint = mco.make_log_joint(_harness.prior(), decoder, x)
            library = mco.IWAE(num_samples)(encoder(x), log_joint, seed=step_seed).loss
            handwritten = hand(x, step_seed)
        gradients = [_flat(tape.gradient(loss, variables)) for loss in (library, handwritten)]
        return library, handwritten, *gradients

    library, handwritten, g_library, g_hand = both()
    return {
        "library_loss": float(library),
        "handwritten_loss": float(handwritten),
        "abs_loss_difference": abs(float(library) - float(handwritten)),
        "max_abs_gradient_difference_over_max_abs_gradient": float(
            tf.reduce_max(tf.abs(g_library - g_hand)) / tf.reduce_max(tf.abs(g_library))
        ),
    }


def tfp_check(x: tf.Tensor, num_samples: int, num_seeds: int, seed: int) -> dict:
    """mco.DReG vs TFP's DReG: loss and gradient means over seeds, within Monte Carlo error.

    `diagnostics.gradient_statistics` draws both on the same seeds; the two samplers make
    unrelated draws from a seed, so the paired t statistic of a coordinate is the two-sample
    z = (difference of the means) / (its standard error).
    """
    encoder, decoder = _harness.burda_networks(x, seed)
    p_z = _harness.prior()
    encoder_variables, decoder_variables = encoder.trainable_variables, decoder.trainable_variables
    theirs = tfp_dreg_loss(encoder, decoder, p_z, num_samples)

    def ours(s):
        return mco.DReG(num_samples)(encoder(x), mco.make_log_joint(p_z, decoder, x), seed=s).loss

    def estimator(loss_fn):
        def estimate(s):
            with tf.GradientTape() as tape:
                loss = loss_fn(s)
            grads = tape.gradient(loss, encoder_variables + decoder_variables)
            n = len(encoder_variables)
            return {
                "loss": loss,
                "encoder_gradient": _flat(grads[:n]),
                "decoder_gradient": _flat(grads[n:]),
            }

        return estimate

    start = time.perf_counter()
    stats = diagnostics.gradient_statistics(
        estimator(ours),
        num_seeds,
        tf.constant([seed, 0xC4EC], tf.int32),
        chunk_size=25,
        reference=estimator(lambda s: theirs(x, s)),
    )
    result = {"num_seeds": num_seeds, "batch_size": int(x.shape[0]), "num_samples": num_samples}
    result["seconds"] = time.perf_counter() - start
    for part in ("loss", "encoder_gradient", "decoder_gradient"):
        mine, other = np.atleast_1d(stats.mean[part]), np.atleast_1d(stats.reference_mean[part])
        result[part] = {
            **diagnostics.t_statistic_summary(stats.bias_t_statistic[part]),
            "relative_difference_of_means": float(
                np.linalg.norm(mine - other) / max(np.linalg.norm(mine), 1e-30)
            ),
            "ours_mean_norm": float(np.linalg.norm(mine)),
            "other_mean_norm": float(np.linalg.norm(other)),
        }
    result["loss"].update(
        ours_mean=float(stats.mean["loss"]), tfp_mean=float(stats.reference_mean["loss"])
    )
    result["note"] = (
        "TFP's DReG surrogate weights d log p(x, z_k) / d theta by the squared normalized "
        "weights, so its decoder gradient is not the IWAE model gradient and is expected to "
        "disagree; the loss and the encoder gradient should agree"
    )
    result["agree"] = {
        part: result[part]["mean_t_squared"] < 1.5
        and result[part]["max_abs_t"] < result[part]["expected_max_abs_t"] + 1.5
        for part in ("loss", "encoder_gradient", "decoder_gradient")
    }
    return result
