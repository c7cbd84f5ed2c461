"""The steps `throughput.py` times besides the library's, their FLOPs, and its checks.

* `handwritten_iwae_loss`: a minimal IWAE loss in plain TensorFlow on the library layers'
  weights, the no-abstraction floor; `tfp_dreg_loss`: TFP's doubly reparameterized IWAE loss.
* `noise_functions`, `library_noise`: the noise of one step, its parts and alternatives,
  and a context in which the library draws its noise with one of them; `noise_configs` and
  `matmul_config`: the noise and a matmul ceiling as timed configurations.
* `step_gflop`, `eval_gflop`: matmul FLOPs of a training step and of log p^(x).
* `handwritten_check`, `tfp_check`, `time_log_marginal`: the hand-written loss against the
  library's IWAE on the same noise; TFP's DReG against `mco.DReG` within Monte Carlo error;
  the cost of `model.log_marginal`.
"""

from __future__ import annotations

import contextlib
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


# ---------------------------------------------------------------------------- the noise
def tf_normal(shape, seed, dtype=tf.float32) -> tf.Tensor:
    """TensorFlow's stateless normal sampler with `sampling.standard_normal`'s signature,
    the algorithm named (Philox; "auto_select" gives the same draws, slower under XLA)."""
    return tf.random.stateless_normal(
        shape, seed=sampling.stateless_seed(seed), dtype=dtype, alg="philox"
    )


def _bits(shape, seed, alg: str) -> tf.Tensor:
    """uint32 bits from TensorFlow's stateless generator, seeded as `sampling` reads seeds."""
    unsigned = tf.math.floormod(tf.cast(sampling.stateless_seed(seed), tf.int64), 2**32)
    return tf.random.stateless_uniform(
        shape, seed=unsigned, minval=None, maxval=None, dtype=tf.uint32, alg=alg
    )


def _uniform64(shape, seed, alg: str) -> tf.Tensor:
    """24 random bits as a float64 in (0, 1)."""
    mantissa = tf.bitwise.right_shift(_bits(shape, seed, alg), tf.constant(8, tf.uint32))
    return (tf.cast(mantissa, tf.float64) + 0.5) * 2.0**-24


def bits_ndtri_normal(shape, seed, dtype=tf.float32, alg: str = "philox") -> tf.Tensor:
    """Float32 normal noise as the library's earlier recipe: TensorFlow's stateless uint32
    bits (24 per number) and a float64 ndtri; that recipe left the algorithm unnamed."""
    if tf.as_dtype(dtype) != tf.float32:
        raise TypeError("this noise recipe is for float32 only")
    return tf.cast(tf.math.ndtri(_uniform64(shape, seed, alg)), dtype)


@contextlib.contextmanager
def library_noise(replacement: Callable):
    """While active (when a step is traced), the library draws its noise with `replacement`."""
    original = sampling.standard_normal
    sampling.standard_normal = replacement
    try:
        yield
    finally:
        sampling.standard_normal = original


def noise_functions(shape) -> dict[str, Callable]:
    """seed -> the standard normal noise of one step ([K, B, D]), a part of it, or another way.

    `library` is `sampling.standard_normal`, `library_uint32_bits` its bit generator (where
    it has one by that name), `ndtri_float64_and_cast` the rest of a float32 recipe on a fixed
    uniform; `recipe_*` the earlier recipe with the algorithm unnamed and named, then
    TensorFlow's own sampler and two candidate transforms of Philox bits.
    """
    shape = tf.constant(shape, tf.int32)
    uniform = _uniform64(shape, tf.constant([1, 2], tf.int32), "philox")

    def ndtri32(seed):
        return tf.math.ndtri(tf.cast(_uniform64(shape, seed, "philox"), tf.float32))

    def box_muller64(seed):  # pairs the two halves of the last axis (even size)
        u1, u2 = tf.split(_uniform64(shape, seed, "philox"), 2, axis=-1)
        radius, angle = tf.sqrt(-2.0 * tf.math.log(u1)), 2.0 * math.pi * u2
        return tf.cast(tf.concat([radius * tf.cos(angle), radius * tf.sin(angle)], -1), tf.float32)

    fns = {"library": lambda seed: sampling.standard_normal(shape, seed)}
    library_bits = getattr(sampling, "_uint32_bits", None)
    if library_bits is not None:
        fns["library_uint32_bits"] = lambda seed: library_bits(shape, sampling.stateless_seed(seed))
    return fns | {
        "ndtri_float64_and_cast": lambda seed: tf.cast(tf.math.ndtri(uniform), tf.float32),
        "recipe_auto_select": lambda seed: bits_ndtri_normal(shape, seed, alg="auto_select"),
        "recipe_philox": lambda seed: bits_ndtri_normal(shape, seed, alg="philox"),
        "auto_select_bits": lambda seed: _bits(shape, seed, "auto_select"),
        "philox_bits": lambda seed: _bits(shape, seed, "philox"),
        "tf_stateless_normal": lambda seed: tf.random.stateless_normal(
            shape, sampling.stateless_seed(seed)
        ),
        "tf_stateless_normal_philox": lambda seed: tf_normal(shape, seed),
        "candidate_ndtri_float32": ndtri32,
        "candidate_box_muller_float64": box_muller64,
    }


def noise_agreement(fns: dict[str, Callable], seed) -> dict:
    """max |difference| of draws between tf.function and XLA; Philox vs auto_select bits."""

    def run(name, jit):
        return tf.cast(tf.function(fns[name], jit_compile=jit, autograph=False)(seed), tf.float64)

    def max_abs(a, b):
        return float(tf.reduce_max(tf.abs(a - b)))

    names = ("library", "recipe_philox", "candidate_ndtri_float32", "candidate_box_muller_float64")
    out = {f"{name}_tf_vs_xla": max_abs(run(name, False), run(name, True)) for name in names}
    reference = run("recipe_auto_select", False)
    for jit, mode in ((False, "tf"), (True, "xla")):
        out[f"recipe_philox_{mode}_vs_recipe_auto_select_tf"] = max_abs(
            run("recipe_philox", jit), reference
        )
    return out


def matmul_config(key: str, n: int, k: int, m: int, calls: int) -> Timed:
    """An [n, k] x [k, m] float32 matmul in a tf.function: the attainable GFLOP/s."""
    a, b = tf.random.stateless_normal([n, k], [1, 2]), tf.random.stateless_normal([k, m], [3, 4])
    matmul = tf.function(tf.matmul, autograph=False)
    matmul(a, b).numpy()
    info = {"kind": "matmul", "shape": [n, k, m], "gflop": 2e-9 * n * k * m}
    return Timed(key, lambda count: [matmul(a, b) for _ in range(count)][-1], calls, info)


def noise_configs(batch_sizes, jit_modes, k: int, seed: int, calls: int) -> list[Timed]:
    """Each of `noise_functions` per batch size and jit mode, `calls` draws per round."""
    timed = []
    for batch_size in batch_sizes:
        for fn_name, fn in noise_functions([k, batch_size, LATENT_SIZE]).items():
            for jit in jit_modes:
                compiled = tf.function(fn, jit_compile=jit, autograph=False)
                seed0 = tf.constant([seed, 5], tf.int32)
                compiled(seed0).numpy()

                def run(count, compiled=compiled, seed0=seed0):
                    return [compiled(seed0 + i) for i in range(count)][-1]

                shape = [k, batch_size, LATENT_SIZE]
                info = {
                    "kind": "noise",
                    "name": fn_name,
                    "batch_size": batch_size,
                    "jit_compile": jit,
                }
                key = f"noise/{fn_name}/b{batch_size}/{'xla' if jit else 'tf'}"
                timed.append(Timed(key, run, calls, {**info, "shape": shape}))
    return timed


# ---------------------------------------------------------------------------- the losses
def _dense_weights(mlp) -> list:
    """[(kernel, bias)] of an `mco.networks` MLP's dense layers, input to output."""
    return [(layer.kernel, layer.bias) for layer in [*mlp.hidden, mlp.output_layer]]


def _mlp(h: tf.Tensor, weights: list) -> tf.Tensor:
    for i, (kernel, bias) in enumerate(weights):
        h = tf.matmul(h, kernel) + bias
        h = tf.tanh(h) if i < len(weights) - 1 else h
    return h


def handwritten_iwae_loss(encoder, decoder, num_samples: int, noise=tf_normal, tfp_bernoulli=False):
    """(x, seed) -> -mean IWAE bound, in plain TensorFlow on the library layers' weights.

    log q from the noise itself, hand-written Gaussian and Bernoulli log densities (with
    `tfp_bernoulli`, log p(x|z) is TFP's `Bernoulli(logits).log_prob(x)`: a diagnostic).
    """
    encoder_weights, decoder_weights = _dense_weights(encoder.net), _dense_weights(decoder.net)

    def loss(x, seed):
        batch = tf.shape(x)[0]
        loc, raw_scale = tf.split(_mlp(x, encoder_weights), 2, axis=-1)
        scale = tf.nn.softplus(raw_scale) + encoder.min_scale
        eps = noise(tf.stack([num_samples, batch, LATENT_SIZE]), seed)
        z = loc + scale * eps  # [K, B, D]; (z - loc) / scale = eps, of total derivative 0
        log_q = tf.reduce_sum(-0.5 * tf.square(eps) - tf.math.log(scale), axis=-1)
        log_prior = tf.reduce_sum(-0.5 * tf.square(z), axis=-1)
        logits = _mlp(tf.reshape(z, [-1, LATENT_SIZE]), decoder_weights)
        logits = tf.reshape(logits, [num_samples, batch, PIXELS])
        if tfp_bernoulli:
            log_likelihood = tfd.Independent(
                tfd.Bernoulli(logits=logits, dtype=logits.dtype), 1
            ).log_prob(x)
        else:
            log_likelihood = tf.reduce_sum(x * logits - tf.nn.softplus(logits), axis=-1)
        log_w = log_prior + log_likelihood - log_q  # the 0.5 D log 2 pi terms cancel
        return -tf.reduce_mean(tf.reduce_logsumexp(log_w, axis=0) - math.log(num_samples))

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


def time_log_marginal(images: np.ndarray, args: dict, seed: int) -> dict:
    """Seconds of `model.log_marginal` (a tf.function without XLA) over `images`, in batches."""
    model = _harness.burda_model(mco.IWAE(64), tf.constant(images[:1]), seed)

    @tf.function(autograph=False)
    def estimate(x, s):
        return model.log_marginal(
            x, s, num_samples=args["num_samples"], chunk_size=args["chunk_size"]
        )

    size = args["batch_size"]
    batches = [tf.constant(images[i : i + size]) for i in range(0, len(images), size)]
    base = tf.constant([seed, 0x10C], tf.int32)
    estimate(batches[0], tf.random.experimental.stateless_fold_in(base, -1)).numpy()  # trace
    start = time.perf_counter()
    values = np.concatenate(
        [
            estimate(b, tf.random.experimental.stateless_fold_in(base, i)).numpy()
            for i, b in enumerate(batches)
        ]
    )
    seconds = time.perf_counter() - start
    return {
        **args,
        "images": len(images),
        "jit_compile": False,
        "seconds": seconds,
        "images_per_second": len(images) / seconds,
        "seconds_per_1000_images": 1000.0 * seconds / len(images),
        "gflop_per_second": eval_gflop(len(images), args["num_samples"]) / seconds,
        "mean_log_px": float(np.mean(values)),
        "all_finite": bool(np.all(np.isfinite(values))),
        "model": "untrained (weights do not change the cost)",
    }
