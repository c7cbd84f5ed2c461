"""log p^(x) of the Keras model, in `tf.function`s the model keeps (one per jit mode)."""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from mcobjectives import _compat
from mcobjectives.core.checks import check_count
from mcobjectives.core.compiled import compiled_pieces
from mcobjectives.estimation.log_marginal import estimate_seed, log_marginal_estimate
from mcobjectives.keras import batches

__all__ = ["LogMarginal", "checked_jit_compile", "supports_xla"]


def checked_jit_compile(jit_compile):
    """`jit_compile` if it is True, False or "auto"; else a TypeError."""
    if isinstance(jit_compile, bool) or (isinstance(jit_compile, str) and jit_compile == "auto"):
        return jit_compile
    raise TypeError(f"`jit_compile` must be True, False or 'auto', got {jit_compile!r}.")


def supports_xla(model: keras.Model) -> bool:
    """Whether no layer of `model` declares `supports_jit = False`, as Keras asks."""
    return all(getattr(layer, "supports_jit", True) for layer in _compat.flatten_layers(model))


class LogMarginal:
    """`ImportanceWeightedAutoencoder.log_marginal`: the estimate and its traced functions.

    Not a Keras-tracked object (no weights, nothing saved): the model holds it as a
    plain attribute, and it holds one `tf.function` per jit mode, each traced once per
    K, chunk size and batch signature (the batch size generalized after its first
    change) and reused across batches and seeds.
    """

    def __init__(self, model):
        self._model = model
        self._functions: dict = {}

    def __call__(self, data, seed, num_samples: int, chunk_size: int, jit_compile) -> tf.Tensor:
        """log p^(x) per data point ([B]); the arguments as for the model's `log_marginal`."""
        model = self._model
        auto = checked_jit_compile(jit_compile) == "auto"
        num_samples = check_count("num_samples", num_samples)
        chunk_size = check_count("chunk_size", chunk_size)
        x, context, _ = batches.unpack(data)
        seed = estimate_seed(seed)  # a tensor: a Python int would key a trace per seed
        x = tf.convert_to_tensor(x)
        if context is not None:
            context = tf.convert_to_tensor(context)
        model.check_batch_shapes(x, context)  # before the estimate is traced
        if auto:
            batch_size = x.shape[0] if x.shape.rank else None
            jit_compile = supports_xla(model) and (
                batch_size is None or num_samples * batch_size >= 2**17
            )
        if jit_compile not in self._functions:
            # Outside XLA, TensorFlow's matmul kernels (on a CPU faster than XLA's) run
            # the networks, and XLA the sampler's noise and the Bernoulli pixels' sum,
            # which TensorFlow's kernels would run one operation at a time (`core.compiled`).
            sums = contextlib.nullcontext if jit_compile else compiled_pieces

            def estimate(x, context, seed, num_samples, chunk_size):
                with sums():
                    log_joint = model.log_joint(x, context)  # checks the context first
                    return log_marginal_estimate(
                        model.posterior(x, context), log_joint, seed, num_samples, chunk_size
                    )

            self._functions[jit_compile] = tf.function(
                estimate, jit_compile=jit_compile, reduce_retracing=True, autograph=False
            )
        return self._functions[jit_compile](x, context, seed, num_samples, chunk_size)
