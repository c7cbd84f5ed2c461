"""The Keras model's log p(x, z): its decoder and prior called on flat batches of latents.

The decoder and a prior layer receive z flattened to leaves [S*B, *event] (row s*B + b
holds sample s of data point b) and the context tiled to [S*B, ...], so a network written
for [N, features] inputs works unchanged; their log-probabilities are reshaped back to
[S, B]. x is tiled S times to sit beside the flat latents: a distribution of batch shape
[S*B] cannot broadcast it (and calling the networks on [S, B, ...] instead was measured
no faster on the MNIST-size model, and differs by float rounding).

The log joint also exposes its prior, as `make_log_joint`'s does (`prior`, and
`prior_value(z)`: z in q's structure paired with a joint prior's parts), for GDReG
(core/gdreg.py), which scores and reparameterizes the prior on z [S, B, ...]: a fixed
prior or one built by prior() is itself; a prior of the context is the layer called once
more, on the batch's own context [B] (batch shape [B], as `make_log_joint`'s conditional
prior), only where GDReG asks for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives.core import structures
from mcobjectives.networks.bernoulli import PixelBernoulli

tfd = tfp.distributions

__all__ = ["call_network", "check_prior_context", "model_log_joint"]


def call_network(network, inputs: tuple, training: bool):
    """network(*inputs), with `training` for a Keras layer (its layers see the mode)."""
    if isinstance(network, keras.layers.Layer):
        return network(*inputs, training=training)
    return network(*inputs)


def callable_without_arguments(layer) -> bool:
    """Whether a prior layer (its `call`, or the callable itself) takes no required argument."""
    function = layer.call if isinstance(layer, keras.layers.Layer) else layer
    try:
        inspect.signature(function).bind()
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): let the call itself decide
        return True
    return True


def check_prior_context(prior, context) -> None:
    """Raises a ValueError if the batch's context (or its absence) does not suit `prior`."""
    if isinstance(prior, tfd.Distribution):
        if context is not None:
            raise ValueError(
                "The batch has a 'context' but `prior` is a fixed distribution: pass a "
                "Keras layer mapping the context to p(z|c) as `prior`."
            )
    elif context is None and not callable_without_arguments(prior):
        raise ValueError(
            "`prior` is a layer of the context (a conditional model): give each batch "
            "as {'x': ..., 'context': ...}. (A prior layer for an unconditional model "
            "is called as prior(): give its `call` a context argument defaulting to "
            "None.)"
        )


def _flatten_samples(t: tf.Tensor) -> tf.Tensor:
    """[S, B, *event] -> [S*B, *event] (sample-major: row s*B + b)."""
    t = tf.convert_to_tensor(t)
    event = t.shape[2:]
    if event.is_fully_defined():
        return tf.reshape(t, [-1, *event.as_list()])
    return tf.reshape(t, tf.concat([[-1], tf.shape(t)[2:]], axis=0))


def _tile_batch(t: tf.Tensor, num_samples: tf.Tensor) -> tf.Tensor:
    """[B, *e] -> [S*B, *e], row s*B + b holding t[b], to sit beside flattened samples."""
    t = tf.convert_to_tensor(t)
    if t.shape.rank is None:
        raise ValueError("The batch's tensors need a known rank.")
    multiples = tf.concat([[num_samples], tf.ones([t.shape.rank - 1], tf.int32)], axis=0)
    return tf.tile(t, multiples)


def unflatten(
    log_prob: tf.Tensor, leading: tf.Tensor, piece: str = "decoder and prior layers"
) -> tf.Tensor:
    """A log-probability of flat latents, [S*B], reshaped to [S, B] (`leading`)."""
    if log_prob.shape.rank not in (None, 1):
        what = {"decoder": "x's", "prior": "z's"}.get(piece, "x's (or z's)")
        raise ValueError(
            f"The {piece} (`{piece}`) is called on flat batches of latents [S*B, ...] "
            f"and its log_prob must be [S*B]; got shape {log_prob.shape}. Give the "
            f"distribution {what} shape as its event shape (e.g. "
            "tfd.Independent(..., reinterpreted_batch_ndims=...))."
        )
    return tf.reshape(log_prob, leading)


def model_log_joint(decoder, prior, x, context, training: bool) -> Callable:
    """The bindable z -> log p(x, z) [S, B] of `ImportanceWeightedAutoencoder.log_joint`."""
    check_prior_context(prior, context)
    fixed_prior = prior if isinstance(prior, tfd.Distribution) else None
    # An unconditional prior layer is the same for every sample: built once.
    shared_prior = (
        call_network(prior, (), training) if fixed_prior is None and context is None else None
    )
    if shared_prior is not None and not isinstance(shared_prior, tfd.Distribution):
        raise TypeError(
            "`prior` (a layer called as prior()) must return p(z), a "
            f"tfp.distributions.Distribution, but returned {type(shared_prior).__name__}."
        )
    # Checked against q, and a joint prior paired with q by name, when an objective
    # binds this log joint to q (before anything is traced); a conditional prior
    # layer's distribution is only known when called, and is paired then.
    known_prior = fixed_prior if fixed_prior is not None else shared_prior

    def bind(q):
        structures.check_observations(x, q, "x")
        if known_prior is None:
            return (q, None)
        allowed = "[] or [B]" if fixed_prior is not None else "[]"
        structures.check_prior_batch(known_prior, q, "prior", allowed)
        return (q, structures.pair_prior(q, known_prior, "prior"))

    def log_joint(z, binding):
        q, pair = (None, None) if binding is None else binding
        static = structures.static_shape(tf.nest.flatten(z)[0])[:2]  # [S, B]
        known = static.rank == 2 and None not in static.as_list()
        flat_size = static[0] * static[1] if known else None
        leading = tf.shape(tf.nest.flatten(z)[0])[:2]
        flat_z = tf.nest.map_structure(_flatten_samples, z)
        flat_context = None if context is None else _tile_batch(context, leading[0])
        inputs = (flat_z,) if context is None else (flat_z, flat_context)
        likelihood = call_network(decoder, inputs, training)
        structures.check_likelihood(
            likelihood,
            x,
            "decoder",
            tf.TensorShape([flat_size]),
            "[S*B]: the decoder is called on flat latents, one row per sample and data point",
            "tfd.Independent(tfd.Bernoulli(logits=logits), reinterpreted_batch_ndims=1)",
        )
        if isinstance(likelihood, PixelBernoulli):  # x broadcast where it can be (evaluation)
            flat_log_px = likelihood.log_prob_of_tiled(x, leading[0])
        else:
            flat_log_px = likelihood.log_prob(_tile_batch(x, leading[0]))
        log_px = unflatten(flat_log_px, leading, "decoder")
        if fixed_prior is not None:
            log_pz = fixed_prior.log_prob(z if pair is None else pair(z))
            structures.check_log_prob_shape(log_pz, static, "prior", "log_prob(z)")
            return log_pz + log_px
        layer_prior = shared_prior
        if layer_prior is None:
            layer_prior = call_network(prior, (flat_context,), training)
            if not isinstance(layer_prior, tfd.Distribution):
                raise TypeError(
                    "`prior` (a layer of the context) must return p(z|c), a "
                    f"tfp.distributions.Distribution, but returned {type(layer_prior).__name__}."
                )
            if q is not None:
                pair = structures.pair_prior(q, layer_prior, "prior")
            structures.check_batch_shape(
                layer_prior,
                tf.TensorShape([flat_size]),
                "prior",
                "[S*B]: a prior layer of the context is called on the context tiled to "
                "[S*B, ...], one row per sample and data point",
            )
        log_pz = layer_prior.log_prob(flat_z if pair is None else pair(flat_z))
        return unflatten(log_pz, leading, "prior") + log_px

    def prior_of(binding):
        """(p(z) or p(z|c) for z [S, B, ...], the pairing of q's z with it): see above."""
        q, pair = (None, None) if binding is None else binding
        if known_prior is not None:
            return known_prior, pair
        conditional = call_network(prior, (context,), training)
        if not isinstance(conditional, tfd.Distribution):
            raise TypeError(
                "`prior` (a layer of the context) must return p(z|c), a "
                f"tfp.distributions.Distribution, but returned {type(conditional).__name__}."
            )
        if q is None:
            return conditional, None
        structures.check_prior_batch(conditional, q, "prior")
        return conditional, structures.pair_prior(q, conditional, "prior")

    return _ModelLogJoint(log_joint, bind, prior_of)


class _ModelLogJoint(structures.BindableLogJoint):
    """The model's bindable log joint, with `prior` and `prior_value` (for GDReG).

    `prior_of(binding)` gives (the prior, q's z -> its value, or None); built once per
    bound log joint, on first use (a prior of the context calls its layer then).
    """

    def __init__(self, compute, bind, prior_of, binding=None):
        super().__init__(compute, bind, binding, name="model.log_joint")
        self._parts = (compute, bind, prior_of, binding)
        self._prior = None

    def _bind_to(self, q) -> _ModelLogJoint:
        compute, bind, prior_of, _ = self._parts
        return type(self)(compute, bind, prior_of, bind(q))

    def _prior_and_pair(self):
        if self._prior is None:
            prior_of, binding = self._parts[2:]
            self._prior = prior_of(binding)
        return self._prior

    @property
    def prior(self) -> tfd.Distribution:
        """p(z) (or p(z|c)), scored on z [S, B, *event] in `prior_value`'s structure."""
        return self._prior_and_pair()[0]

    def prior_value(self, z):
        """z (q's structure) as the value the prior scores: a joint prior's parts paired."""
        pair = self._prior_and_pair()[1]
        return z if pair is None else pair(z)
