"""The pixel likelihood of `BernoulliDecoder`: Bernoulli pixels with their own gradient.

`PixelBernoulli` is a `tfd.Independent` of a float `tfd.Bernoulli` whose log-probability
is computed from the logits in one softplus per pixel (`bernoulli_log_prob`, with its
gradient x - sigmoid(l) given directly), and whose every log-probability first checks the
pixels: uint8 x (raw intensities) is refused when traced, x's event shape must be the
decoder's, and finite pixels outside [0, 1] fail an assertion (`checked_pixels`).
"""

from __future__ import annotations

import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.core.compiled import compiling_pieces

tfd = tfp.distributions

__all__ = [
    "PixelBernoulli",
    "bernoulli_log_prob",
    "check_event_shape",
    "checked_pixels",
    "refuse_raw_intensities",
]


def check_event_shape(distribution: tfd.Distribution, x) -> None:
    """x's trailing dimensions must be the decoder's event shape (e.g. [784] for MNIST)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        return
    shape, event = tf.TensorShape(shape), distribution.event_shape
    if shape.rank is None or event.rank is None:
        return
    if shape.rank < event.rank or not shape[shape.rank - event.rank :].is_compatible_with(event):
        raise ValueError(
            f"p(x|z) of a BernoulliDecoder has event shape {event} but x has shape {shape}: "
            f"flatten x to [B, {event.num_elements()}] (as the encoder reads it), or use a "
            "decoder whose event shape is x's (e.g. tfd.Independent(..., 3) for images)."
        )


def refuse_raw_intensities(x) -> None:
    """Raises a TypeError if x (a tensor or an array) is uint8, the dtype of raw pixels."""
    try:
        dtype = tf.as_dtype(x.dtype)
    except (AttributeError, TypeError):  # a list, or no TF dtype: converted to float32
        return
    if dtype == tf.uint8:
        raise TypeError(
            "p(x|z) of a BernoulliDecoder: log_prob(x) got pixels x of dtype uint8, raw "
            "intensities (0-255), but Bernoulli pixels must lie in [0, 1]. Pass "
            "tf.cast(x, tf.float32) / 255, or binarize them (e.g. tf.cast(tf.random.uniform("
            "tf.shape(x)) * 255 < tf.cast(x, tf.float32), tf.float32)); uint8 pixels that "
            "are already 0/1 need only tf.cast(x, tf.float32)."
        )


_PIXELS_NEEDED = (
    "p(x|z) of a BernoulliDecoder: log_prob(x) needs pixels x in [0, 1] (binary, or "
    "probabilities), but the pixels of x range over"
)
_PIXELS_FIX = "scale raw intensities to [0, 1] (x / 255) or binarize them."


def _finite_range(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(min, max) of x's finite values (NaN and infinite pixels read as 0)."""
    if not x.dtype.is_floating:
        return tf.reduce_min(x), tf.reduce_max(x)
    finite = tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))
    return tf.reduce_min(finite), tf.reduce_max(finite)


def _in_unit_interval(low: tf.Tensor, high: tf.Tensor) -> tf.Tensor:
    """Whether [low, high] lies inside [0, 1] (a boolean tensor)."""
    return tf.logical_and(low >= 0, high <= 1)


def checked_pixels(x: tf.Tensor) -> tf.Tensor:
    """x, after a check that its finite pixels lie in [0, 1].

    Finite values outside [0, 1] fail a `tf.debugging.Assert`, at once eagerly or
    when the graph runs. NaN and infinite pixels pass: they make the loss non-finite,
    and `ImportanceWeightedAutoencoder` skips such a step (a corrupt pixel in one batch
    should not stop a run that raw intensities must). XLA compiles assertions away:
    under `jit_compile` only the static uint8 refusal remains.

    Cost: one `reduce_min` and one `reduce_max` of x. Only when they leave [0, 1]
    (a NaN, an infinity or a pixel out of range) does a `tf.cond` branch compute the
    range of the finite pixels, which the assertion checks and names.
    """
    refuse_raw_intensities(x)
    if x.dtype == tf.bool:
        return x
    plain = _in_unit_interval(tf.reduce_min(x), tf.reduce_max(x))
    if tf.executing_eagerly():
        if not plain:
            low, high = _finite_range(x)
            if not _in_unit_interval(low, high):
                message = f"{_PIXELS_NEEDED} [{low.numpy()}, {high.numpy()}]: {_PIXELS_FIX}"
                raise tf.errors.InvalidArgumentError(None, None, message)
        return x

    def finite_pixels_in_range():
        low, high = _finite_range(x)
        in_range = _in_unit_interval(low, high)
        data = [_PIXELS_NEEDED, "[min, max] =", low, high, ":", _PIXELS_FIX]
        with tf.control_dependencies([tf.debugging.Assert(in_range, data)]):
            return tf.identity(in_range)

    checked = tf.cond(plain, lambda: plain, finite_pixels_in_range)
    with tf.control_dependencies([checked]):
        return tf.identity(x)


@tf.custom_gradient
def bernoulli_log_prob(x: tf.Tensor, logits: tf.Tensor):
    """log Bernoulli(x; sigmoid(l)) per pixel: x l - softplus(l).

    TFP's x log p + (1 - x) log(1 - p) = -(1 - x) softplus(l) - x softplus(-l), in one
    softplus; the two differ by float rounding, at most a few ulps of softplus(|l|) per
    pixel. The gradient with respect to l is x - sigmoid(l). NaN and infinite pixels
    give a non-finite value, and so does an infinite logit (NaN or -inf, where TFP's
    value for a pixel that the logit makes certain is 0): the decoder's logits, outputs
    of a dense layer, are finite unless its computation overflowed.

    softplus(l) is written max(l, 0) + log(1 + exp(-|l|)), which XLA and TF's kernels
    evaluate faster than their softplus and log1p (for |l| > 17 the log term rounds to
    0 where it is below float32's resolution of softplus(|l|) = |l|), and the gradient
    is given directly, x - sigmoid(l), rather than traced through |l| (whose
    derivative TF takes as 0 at l = 0).
    """
    value = x * logits - tf.nn.relu(logits) - tf.math.log(1.0 + tf.exp(-tf.abs(logits)))

    def gradient(upstream):
        return upstream * logits, upstream * (x - tf.sigmoid(logits))

    return value, gradient


@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _compiled_sum(x: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """sum over the last axis of x l - softplus(l), one XLA computation (no custom gradient)."""
    value = x * logits - tf.nn.relu(logits) - tf.math.log(1.0 + tf.exp(-tf.abs(logits)))
    return tf.reduce_sum(value, axis=-1)


@tf.function(jit_compile=True, autograph=False, reduce_retracing=True)
def _compiled_tiled_sum(x: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """`_compiled_sum(tile(x), logits)` for x [B, n] and logits [S*B, n] (row s*B + b
    reads x[b]), broadcasting x inside the computation rather than tiling it: [S*B]."""
    batch = tf.shape(x)[0]
    tiled_logits = tf.reshape(logits, tf.stack([-1, batch, tf.shape(x)[1]]))
    return tf.reshape(_compiled_sum(x, tiled_logits), [-1])


class PixelBernoulli(tfd.Independent):
    """Independent Bernoulli pixels: log_prob(x) = sum x l - softplus(l), for x in [0, 1].

    A `tfd.Independent` of a float `tfd.Bernoulli(logits=l)`: sampling, the mean, the
    event shape, entropies and the like are TFP's, and `log_prob`, `prob` and
    `unnormalized_log_prob` compute the Bernoulli log-probability of x from the
    logits themselves (`bernoulli_log_prob`: one softplus per pixel, rather than TFP's
    two softplus and two `multiply_no_nan`). TFP's formula takes any real x: raw
    intensities (0-255) give no likelihood at all, and a "bound" that can be positive.
    So before TFP converts x, uint8 x (raw intensities) is refused and x's event shape
    checked, and the range of any other x is checked (`checked_pixels`).
    """

    def log_prob(self, value, name="log_prob", **kwargs):
        """sum_i x_i l_i - softplus(l_i), after the dtype, event-shape and range checks."""
        refuse_raw_intensities(value)
        check_event_shape(self, value)
        return super().log_prob(value, name=name, **kwargs)

    def log_prob_of_tiled(self, x: tf.Tensor, num_samples: tf.Tensor) -> tf.Tensor:
        """log_prob(tile(x, [num_samples, 1])) of x [B, n], these pixels' batch [S*B].

        Row s*B + b of the batch reads x[b], as `keras.log_joint` lays out flat samples.
        Inside `core.compiled.compiled_pieces` (traced in a graph, one event dimension)
        x is broadcast inside the compiled sum rather than tiled S times; else it is
        `log_prob` of the tiled x. The same checks of x either way.
        """
        x = tf.convert_to_tensor(x)
        ndims = tf.get_static_value(self.reinterpreted_batch_ndims)
        if ndims == 1 and x.shape.rank == 2 and compiling_pieces():
            refuse_raw_intensities(x)
            check_event_shape(self, x)
            logits = self.distribution.logits
            if logits is None:
                logits = self.distribution.logits_parameter()
            logits = tf.convert_to_tensor(logits)
            return _compiled_tiled_sum(tf.cast(checked_pixels(x), logits.dtype), logits)
        return self.log_prob(
            tf.tile(x, tf.concat([[num_samples], tf.ones([x.shape.rank - 1], tf.int32)], 0))
        )

    def prob(self, value, name="prob", **kwargs):
        """exp(log_prob(x)), after the same checks of x."""
        refuse_raw_intensities(value)
        check_event_shape(self, value)
        return super().prob(value, name=name, **kwargs)

    def unnormalized_log_prob(self, value, name="unnormalized_log_prob", **kwargs):
        """log_prob(x): a Bernoulli is normalized; the same checks of x."""
        refuse_raw_intensities(value)
        check_event_shape(self, value)
        return super().unnormalized_log_prob(value, name=name, **kwargs)

    def _log_prob(self, x, **kwargs):
        del kwargs  # a Bernoulli's log_prob takes no other arguments
        bernoulli = self.distribution
        logits = bernoulli.logits
        logits = bernoulli.logits_parameter() if logits is None else tf.convert_to_tensor(logits)
        x = tf.cast(checked_pixels(x), logits.dtype)
        ndims = tf.get_static_value(self.reinterpreted_batch_ndims)
        if ndims is None:
            axis = -1 - tf.range(self.reinterpreted_batch_ndims)
        else:
            axis = list(range(-int(ndims), 0))
        if ndims == 1 and compiling_pieces():
            # Evaluation only (`core.compiled.compiled_pieces`): its gradient would be
            # TensorFlow's of the formula, not bernoulli_log_prob's.
            return _compiled_sum(x, logits)
        return tf.reduce_sum(bernoulli_log_prob(x, logits), axis=axis)

    def _unnormalized_log_prob(self, x, **kwargs):
        return self._log_prob(x, **kwargs)  # a Bernoulli is normalized
