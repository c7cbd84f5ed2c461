"""`ImportanceWeightedAutoencoder`: a Keras 3 model trained by any `MCObjective`.

The model is p(z) p(x|z) (or p(z|c) p(x|z, c) given a context c) with an inference
network q(z|x) (or q(z|x, c)). Its encoder, decoder and prior are plain Keras layers
(or, for the prior, a fixed TFP distribution) that return TFP distributions built
from their outputs; `tfp.layers` is written for Keras 2 and is not needed.

Structured latents. The encoder may return any TFP `JointDistribution` (batch shape
[B]), e.g. q(z1|x) q(z2|z1); z then has its structure (a dict, a list, ...), each leaf
[S, B, *event_i]. The prior returns the same structure (p(z2) p(z1|z2)) and the
decoder receives the whole structure and reads the leaves it depends on (the
decoders of `mcobjectives.networks` take `latent`, the key of the one leaf they
read: "z1" in Burda et al.'s two-layer model). Discrete leaves (Bernoulli in int32)
train with the score-function objectives (RWS, VIMCO); the others refuse them.

Priors. A fixed `tfd.Distribution` is p(z). A prior Keras layer is called with the
batch's context, `prior(context)`, for p(z|c); without a context it is called with no
argument, `prior()`, for a learnable unconditional p(z) (give its `call` a context
argument that defaults to None: Keras layers need one argument). A layer whose `call`
requires a context, given a batch without one, is an error. Either way the layer's
variables are model variables.

`model.compile(optimizer)` and `model.fit(dataset)` then train it with the objective:
`train_step` evaluates the objective's single surrogate loss once and sends its
gradient to every variable, which is the objective's model estimator for the decoder
and prior, its inference estimator for the encoder, and Tucker et al.'s unified
estimator for a variable the two share. `make_train_step` builds the same step as a
`tf.function` for a hand-written loop.

Data. A batch is a tensor `x` of shape [B, ...], or a dict with the key "x" and
optionally "context" (c, [B, ...]) and "seed" ([B, 2] int32 per-example seeds; see
`mcobjectives.sampling`). Without per-example seeds, step t draws its samples from
`stateless_fold_in(seed, t)` (and the replica id under a distribution strategy), so a
run is replayed exactly by its seed and its step counter, which the optimizer keeps.
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Callable, Mapping
from typing import Any

import h5py
import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _checks, _serialization, _structures, sampling, saving
from mcobjectives.base import MCObjective, ObjectiveResult
from mcobjectives.evaluation import _estimate_seed, log_marginal_estimate

tfd = tfp.distributions

__all__ = ["ImportanceWeightedAutoencoder", "make_train_step"]

# Folded into the model seed for `test_step` and `call`, away from training steps.
_EVALUATION_STREAM = 2**31 - 1

_serialization.register_objectives()


def _unpack(data) -> tuple[tf.Tensor, tf.Tensor | None, tf.Tensor | None]:
    """(x, context, seed) from a batch: a tensor, a 1-tuple, or a dict with key "x"."""
    if isinstance(data, tuple) and len(data) > 1 and all(d is None for d in data[1:]):
        data = data[:1]  # Keras' train_on_batch(x) hands over (x, None, None)
    if isinstance(data, (tuple, list)) and len(data) == 1:
        data = data[0]
    if isinstance(data, Mapping):
        unknown = set(data) - {"x", "context", "seed"}
        if "x" not in data or unknown:
            raise ValueError(
                "A batch given as a dict needs the key 'x' and may hold only 'context' and "
                f"'seed' besides; got keys {sorted(data)}."
            )
        seed = data.get("seed")
        rank = getattr(getattr(seed, "shape", None), "rank", None)
        if seed is not None and rank is None:
            rank = np.ndim(seed)
        if seed is not None and rank is not None and rank != 2:
            raise ValueError(
                "A batch's 'seed' holds one stateless seed per data point, shape [B, 2]; got "
                f"rank {rank}. Make each example's seed a pair, e.g. "
                "tf.stack([index, tf.fill(tf.shape(index), run_seed)], axis=1)."
            )
        return data["x"], data.get("context"), seed
    if isinstance(data, (tuple, list)):
        raise ValueError(
            f"A batch must be x or a dict {{'x': ..., 'context': ..., 'seed': ...}}; got a "
            f"{type(data).__name__} of {len(data)} elements. An autoencoder has no targets: "
            "pass the images alone (or as {'x': images})."
        )
    return data, None, None


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


def _content_seeds(seed: tf.Tensor, tensors: list[tf.Tensor]) -> tf.Tensor:
    """[B, 2] per-example seeds from `seed` and each example's content (bit-exact hash).

    The hash of an example reads its own bits only (integer sums, which no reduction
    order can change), so a data point draws the same samples in any batch.
    """
    hashed = None
    for t in tensors:
        t = tf.convert_to_tensor(t)
        flat = tf.reshape(t, [tf.shape(t)[0], -1])
        if flat.dtype.is_floating:
            bits = tf.cast(tf.bitcast(tf.cast(flat, tf.float32), tf.int32), tf.int64)
        else:
            bits = tf.cast(flat, tf.int64)
        # Odd multipliers that differ per position: a value and its place both count.
        # int64 products and sums wrap around, exactly and in any order.
        position = tf.range(tf.shape(flat)[1], dtype=tf.int64)
        multipliers = position * 0x9E3779B97F4A7C1 * 2 + 1
        row = tf.reduce_sum((bits + 0x632BE5AB) * multipliers, axis=1)
        hashed = row if hashed is None else hashed * 1000003 + row
    mixed = tf.bitwise.bitwise_xor(hashed, tf.bitwise.right_shift(hashed, 29))
    low = tf.bitwise.bitwise_and(mixed, 0x7FFFFFFF)
    high = tf.bitwise.bitwise_and(tf.bitwise.right_shift(mixed, 32), 0x7FFFFFFF)
    seed = tf.cast(seed, tf.int64)
    xor = tf.bitwise.bitwise_xor
    pair = tf.stack([xor(low, seed[0]), xor(high, seed[1])], axis=1)
    return tf.cast(tf.bitwise.bitwise_and(pair, 0x7FFFFFFF), tf.int32)


def _variable_key(v) -> int:
    """One identity for a Keras variable, the tf.Variable it stores, or a replica's copy."""
    if isinstance(v, keras.Variable):
        v = v.value
    container = getattr(v, "_distributed_container", None)
    if callable(container):
        v = container()
    return id(v)


def _static_shape(t) -> tf.TensorShape | None:
    """The static shape of a tensor, array, spec or KerasTensor; None if it has none."""
    shape = getattr(t, "shape", None)
    if shape is None:
        if not isinstance(t, (list, tuple, int, float)):
            return None
        shape = np.shape(t)
    try:
        return tf.TensorShape(shape)
    except (TypeError, ValueError):
        return None


def _check_features(name: str, shape: tf.TensorShape | None, expected) -> None:
    """Raises naming `name` if a batch's shape [B, ...] is not that of the built model."""
    if shape is None or shape.rank is None or expected is None:
        return
    features = tf.TensorShape(expected[0])
    if shape.rank >= 1 and shape[1:].is_compatible_with(features):
        return
    wanted = tuple([None, *features.as_list()]) if features.rank is not None else "[B, ...]"
    raise ValueError(
        f"`{name}` has shape {tuple(shape.as_list())} but the model was built (or trained) on "
        f"{name} of shape {wanted}: each data point must have the shape "
        f"{tuple(features.as_list())} the model's networks were built for. Give data of "
        f"that shape (e.g. flattened as in training), or build a new model for these data."
    )


@keras.saving.register_keras_serializable(package="mcobjectives")
class ImportanceWeightedAutoencoder(keras.Model):
    """A variational autoencoder whose training objective is any `MCObjective`.

    Example (Burda et al. 2016's one-stochastic-layer MNIST model, trained with DReG):

        model = ImportanceWeightedAutoencoder(
            encoder=mco.networks.GaussianEncoder(latent_size=50),   # x -> q(z|x)
            decoder=mco.networks.BernoulliDecoder(event_size=784),  # z -> p(x|z)
            prior=tfd.Independent(tfd.Normal(tf.zeros(50), tf.ones(50)), 1),
            objective=mco.DReG(64),
            seed=1,
        )
        model.compile(optimizer=keras.optimizers.Adam(1e-3, epsilon=1e-4))
        model.fit(images_dataset, epochs=10)   # logs loss, bound, ess, nonfinite_steps

    Burda et al.'s two stochastic layers: the encoder returns the joint
    q(z1|x) q(z2|z1), the prior layer (called as `prior()`) the joint p(z2) p(z1|z2)
    with a trainable conditional, and the decoder reads z["z1"]:

        model = ImportanceWeightedAutoencoder(
            encoder=mco.networks.TwoLayerGaussianEncoder(),               # (100, 50)
            decoder=mco.networks.BernoulliDecoder(784, latent="z1"),
            prior=mco.networks.TwoLayerGaussianPrior(),
            objective=mco.IWAE(64),
        )

    Networks see plain batches. The encoder is called on x [B, ...]. The decoder and a
    prior layer are called on a flat batch of latents, each leaf [S*B, *event] (row
    s*B + b holds sample s of data point b), with the context tiled to [S*B, ...] to
    match; their log-probabilities are reshaped back to [S, B]. So a network written
    for [N, features] inputs (a `keras.Sequential` of Dense layers, a Dense-Reshape-
    Conv2DTranspose decoder) works unchanged. A fixed prior's `log_prob` gets z as
    [S, B, ...] (its batch shape may be [] or [B]).

    Training. `train_step` differentiates the objective's one surrogate loss with
    respect to every trainable variable of the model: the decoder's, the prior's, any
    layer or weight a subclass adds (the model estimator), the encoder's (the
    inference estimator), and the objective's own (a learnable CIWAE beta, which the
    model adopts as one of its Keras weights, so that optimizers, strategies and saving
    see it). A trainable variable the loss reads that Keras does not track (a tf_keras
    layer, a bare `tf.Variable`) is an error naming it. A step whose loss or gradients
    are not finite is skipped (weights and optimizer untouched) and counted in the
    `nonfinite_steps` log; `max_nonfinite_steps` consecutive ones stop training with
    a FloatingPointError naming the step (checked after each batch, XLA or not).
    Under the "mixed_float16" policy `compile` wraps the optimizer in a
    `LossScaleOptimizer` and the loss is scaled for it; the networks compute in the
    low precision while samples, log-probabilities and the surrogate stay float32.

    Saving. `model.save("m.keras")` / `keras.models.load_model` round-trip the model:
    the networks and prior layers by their Keras configs (custom layers registered as
    usual), the objective by its `get_config`, a fixed TFP prior by its parameters. A
    `.keras` file and `tf.train.Checkpoint(model=..., optimizer=...)` also hold the
    optimizer, whose step counter seeds the steps: a run resumed from them draws what it
    would have drawn. `save_weights` holds the model's weights only (beta and the
    skipped-step counters included), as in Keras: a run resumed from it restarts the
    optimizer and its step counter.

    Damaged files. `mcobjectives.saving.load_model(path)` loads a `.keras` file after
    checking it (a complete zip archive, its members' CRCs, `config.json` of this
    class, readable HDF5 weights without NaN) and raises `saving.ModelFileError`
    naming the file and the likely cause; `keras.models.load_model` opens the file
    before this class can check it, so its errors for an unreadable archive stay
    Keras's. `load_weights` checks the file as well and compares its variables with
    the model's before assigning any: weights of another objective (a learnable
    CIWAE's `beta_logit`) or another network are refused naming the variables, and the
    model keeps its weights. Both loaders (and `keras.models.load_model`, through
    `load_own_variables`) refuse a non-finite objective variable, naming it.

    Shapes. A batch's context must have x's batch size, and once the model is built
    its data must have the shape per data point it was built on (`check_batch_shapes`);
    `fit`, `evaluate`, `predict`, `log_marginal` and the step of `make_train_step`
    check the static shapes before anything is traced.

    Args:
      encoder: a Keras layer mapping x (or x, context) to q(z|x), a TFP distribution
        with batch shape [B] (a single distribution or a `JointDistribution`),
        reparameterized unless the objective is a score-function one (RWS, VIMCO).
      decoder: a Keras layer mapping z (q's structure, leaves [S*B, *event_i]; or z,
        context) to p(x|z), a TFP distribution with batch shape [S*B] and x's shape as
        event. For structured z it picks the leaves it reads.
      prior: p(z), a TFP distribution whose `log_prob(z)` is [S, B] (batch shape [] or
        [B]); or a Keras layer returning one: called as `prior(context)` (the context
        tiled to [S*B, ...]) for a conditional model p(z|c), as `prior()` for a
        learnable unconditional p(z) (e.g. `mco.networks.TwoLayerGaussianPrior()`).
      objective: the `MCObjective` to train with. Create it (and the model) inside a
        distribution strategy's scope if its variables (a learnable CIWAE beta) are to
        be mirrored.
      seed: an int, the stateless seed from which every step's samples are drawn.
      max_nonfinite_steps: the number of consecutive skipped (non-finite) steps after
        which training stops with an error (default 5).
      name, **kwargs: passed to `keras.Model`.
    """

    def __init__(
        self,
        encoder: keras.layers.Layer,
        decoder: keras.layers.Layer,
        prior: tfd.Distribution | keras.layers.Layer,
        objective: MCObjective,
        *,
        seed: int = 0,
        max_nonfinite_steps: int = 5,
        name: str = "importance_weighted_autoencoder",
        **kwargs: Any,
    ):
        super().__init__(name=name, **kwargs)
        for arg, value in (("encoder", encoder), ("decoder", decoder)):
            if not callable(value):
                raise TypeError(
                    f"`{arg}` must be a Keras layer (a callable returning a TFP "
                    f"distribution), got {type(value).__name__}."
                )
        if not isinstance(prior, tfd.Distribution) and not callable(prior):
            raise TypeError(
                "`prior` must be a tfp.distributions.Distribution or a Keras layer returning "
                f"one (of the context, or of nothing), got {type(prior).__name__}."
            )
        if not isinstance(objective, MCObjective):
            raise TypeError(
                f"`objective` must be an mcobjectives.MCObjective such as mco.IWAE(64), got "
                f"{type(objective).__name__}."
            )
        _checks.check_count("seed", seed, minimum=0)
        sampling.stateless_seed(seed)  # its range, checked now rather than at the first step
        _checks.check_count("max_nonfinite_steps", max_nonfinite_steps)
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.objective = objective
        self.seed = seed
        self.max_nonfinite_steps = max_nonfinite_steps
        self._objective_weights = self._adopt_objective_variables()
        # Skipped steps: the current run of consecutive ones and the total. The total is
        # folded into each step's seed so that a skipped step's successor draws afresh.
        counter = dict(
            shape=(),
            dtype="int64",
            initializer="zeros",
            trainable=False,
            aggregation="only_first_replica",
        )
        self.nonfinite_run = self.add_weight(name="nonfinite_run", **counter)
        self.nonfinite_steps = self.add_weight(name="nonfinite_steps", **counter)
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self._bound_tracker = keras.metrics.Mean(name="bound")
        self._ess_tracker = keras.metrics.Mean(name="ess")
        self._batch_spec: tuple | None = None

    def _adopt_objective_variables(self) -> list[keras.Variable]:
        """Keras weights holding the objective's tf.Variables themselves (no copy)."""
        adopted = []
        for value in list(vars(self.objective).values()):
            if isinstance(value, tf.Variable):
                adopted.append(
                    keras.Variable(value, trainable=value.trainable, name=value.name.split(":")[0])
                )
        held = {id(v.value) for v in adopted}
        hidden = [v.name for v in self.objective.variables if id(v) not in held]
        if hidden:
            raise ValueError(
                f"`objective` ({type(self.objective).__name__}) keeps the variables {hidden} "
                "inside containers: keep each tf.Variable as a direct attribute of the "
                "objective so that the model can train and save it."
            )
        return adopted

    # ----------------------------------------------------------------- the model
    def posterior(
        self, x: tf.Tensor, context: tf.Tensor | None = None, training: bool = False
    ) -> tfd.Distribution:
        """q(z|x) (or q(z|x, c)), batch shape [B]: a distribution or a `JointDistribution`.

        `training` reaches the encoder's layers (Dropout, BatchNormalization).
        """
        inputs = (x,) if context is None else (x, context)
        return _call(self.encoder, inputs, training)

    def _check_prior_context(self, context) -> None:
        if isinstance(self.prior, tfd.Distribution):
            if context is not None:
                raise ValueError(
                    "The batch has a 'context' but `prior` is a fixed distribution: pass a "
                    "Keras layer mapping the context to p(z|c) as `prior`."
                )
        elif context is None and not _callable_without_arguments(self.prior):
            raise ValueError(
                "`prior` is a layer of the context (a conditional model): give each batch "
                "as {'x': ..., 'context': ...}. (A prior layer for an unconditional model "
                "is called as prior(): give its `call` a context argument defaulting to "
                "None.)"
            )

    def prior_distribution(
        self, context: tf.Tensor | None = None, training: bool = False
    ) -> tfd.Distribution:
        """p(z) (or p(z|c)): the fixed prior, `prior(context)`, or, without a context, `prior()`."""
        self._check_prior_context(context)
        if isinstance(self.prior, tfd.Distribution):
            return self.prior
        return _call(self.prior, () if context is None else (context,), training)

    def log_joint(
        self, x: tf.Tensor, context: tf.Tensor | None = None, training: bool = False
    ) -> Callable:
        """The function z -> log p(x, z) [S, B] (or log p(x, z | c)), z in q's structure.

        The decoder and a prior layer receive z flattened to leaves [S*B, *event] (and
        the context tiled to [S*B, ...]); a fixed prior's `log_prob` receives z whole.
        `training` reaches their layers.

        Handed to an objective (or `log_marginal_estimate`), the function is first bound
        to q (before anything is traced): x's batch size must be q's, a fixed prior's
        batch shape [] or [B] (a prior layer called as prior(): []), and a joint prior's
        parts are paired with q's by name as in `mcobjectives.make_log_joint` (a prior
        of the context, when it is called), each with q's event shape. The decoder must
        return a distribution of batch shape [S*B] with x's event shape x.shape[1:].
        Each is refused otherwise, naming the piece and both shapes.
        """
        self._check_prior_context(context)
        fixed_prior = self.prior if isinstance(self.prior, tfd.Distribution) else None
        # An unconditional prior layer is the same for every sample: built once.
        shared_prior = (
            _call(self.prior, (), training) if fixed_prior is None and context is None else None
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
            _structures.check_observations(x, q, "x")
            if known_prior is None:
                return (q, None)
            allowed = "[] or [B]" if fixed_prior is not None else "[]"
            _structures.check_prior_batch(known_prior, q, "prior", allowed)
            return (q, _structures.pair_prior(q, known_prior, "prior"))

        def log_joint(z, binding):
            q, pair = (None, None) if binding is None else binding
            static = _structures._leading(tf.nest.flatten(z)[0])[:2]  # [S, B]
            known = static.rank == 2 and None not in static.as_list()
            flat_size = static[0] * static[1] if known else None
            leading = tf.shape(tf.nest.flatten(z)[0])[:2]
            flat_z = tf.nest.map_structure(_flatten_samples, z)
            flat_context = None if context is None else _tile_batch(context, leading[0])
            inputs = (flat_z,) if context is None else (flat_z, flat_context)
            likelihood = _call(self.decoder, inputs, training)
            _structures.check_likelihood(
                likelihood,
                x,
                "decoder",
                tf.TensorShape([flat_size]),
                "[S*B]: the decoder is called on flat latents, one row per sample and data point",
                "tfd.Independent(tfd.Bernoulli(logits=logits), reinterpreted_batch_ndims=1)",
            )
            log_px = self._unflatten(
                likelihood.log_prob(_tile_batch(x, leading[0])), leading, "decoder"
            )
            if fixed_prior is not None:
                log_pz = fixed_prior.log_prob(z if pair is None else pair(z))
                _structures.check_log_prob_shape(log_pz, static, "prior", "log_prob(z)")
                return log_pz + log_px
            prior = shared_prior
            if prior is None:
                prior = _call(self.prior, (flat_context,), training)
                if not isinstance(prior, tfd.Distribution):
                    raise TypeError(
                        "`prior` (a layer of the context) must return p(z|c), a "
                        f"tfp.distributions.Distribution, but returned {type(prior).__name__}."
                    )
                if q is not None:
                    pair = _structures.pair_prior(q, prior, "prior")
                _structures.check_batch_shape(
                    prior,
                    tf.TensorShape([flat_size]),
                    "prior",
                    "[S*B]: a prior layer of the context is called on the context tiled to "
                    "[S*B, ...], one row per sample and data point",
                )
            log_pz = prior.log_prob(flat_z if pair is None else pair(flat_z))
            return self._unflatten(log_pz, leading, "prior") + log_px

        return _structures.BindableLogJoint(log_joint, bind, name="model.log_joint")

    @staticmethod
    def _unflatten(
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

    def objective_result(self, data, seed=None, training: bool = False) -> ObjectiveResult:
        """The objective on one batch: an `ObjectiveResult` (loss, bound, log weights, ESS).

        Args:
          data: a batch (see the module docstring).
          seed: the stateless seed; default: the batch's per-example seeds if it has
            them, else the model's seed folded with the optimizer's step counter.
          training: passed to the networks' layers (True in `train_step`).
        """
        x, context, _ = _unpack(data)
        x = self._checked_batch(x, context)
        if seed is None:
            seed = self._seed_for(data)
        if _takes_training(self.log_joint):
            log_joint = self.log_joint(x, context, training=training)  # checks the context
        else:  # a subclass's log_joint(x, context) of its own
            log_joint = self.log_joint(x, context)
        q = self.posterior(x, context, training)
        result = self.objective(q, log_joint, seed=seed)
        self._remember_batch(x, context)
        return result

    def check_batch_shapes(self, x, context=None) -> None:
        """Raises a ValueError if the static shapes of a batch do not fit together or the model.

        `context` must hold one row per data point of `x` (the same batch size), and once
        the model is built (by a first batch, `build` or a loaded file) each data point
        must have the shape it was built on: `x.shape[1:]` (and `context.shape[1:]`) as
        recorded then. Unknown dimensions (None) pass here; a batch size known only at
        run time is checked by an assertion in the traced step (which XLA compiles away).
        `x` and `context` may be tensors, arrays, `tf.TensorSpec`s or `KerasTensor`s.
        """
        x_shape = _static_shape(x)
        context_shape = None if context is None else _static_shape(context)
        if x_shape is not None and x_shape.rank == 0:
            raise ValueError(
                f"`x` must be a batch [B, ...] of data points, got a scalar of shape {x_shape}."
            )
        if (
            x_shape is not None
            and context_shape is not None
            and x_shape.rank
            and context_shape.rank
            and x_shape[0] is not None
            and context_shape[0] is not None
            and x_shape[0] != context_shape[0]
        ):
            raise ValueError(
                f"`context` has batch size {context_shape[0]} but `x` has batch size "
                f"{x_shape[0]}: a batch's context holds one row per data point (context[b] "
                "conditions x[b]). Give context and x the same first dimension, e.g. batch "
                "them together as one dataset of {'x': ..., 'context': ...}."
            )
        if self._batch_spec is None:
            return
        expected_x, expected_context = self._batch_spec
        _check_features("x", x_shape, expected_x)
        if context is not None and expected_context is not None:
            _check_features("context", context_shape, expected_context)

    def _checked_batch(self, x, context):
        """x, after `check_batch_shapes`; with a run-time check where a batch size is unknown."""
        self.check_batch_shapes(x, context)
        if context is None or tf.executing_eagerly() or _in_symbolic_build():
            return x
        x_shape, context_shape = _static_shape(x), _static_shape(context)
        if x_shape is None or context_shape is None or not x_shape.rank or not context_shape.rank:
            return x
        if x_shape[0] is not None and context_shape[0] is not None:
            return x  # equal: checked above
        x = tf.convert_to_tensor(x)
        context = tf.convert_to_tensor(context)
        same = tf.debugging.assert_equal(
            tf.shape(x)[0],
            tf.shape(context)[0],
            message="`context` must have the batch size of `x` (one row per data point)",
        )
        with tf.control_dependencies([same]):
            return tf.identity(x)

    def _check_input_data(self, data) -> None:
        """`check_batch_shapes` on what `fit`, `evaluate` or `predict` got, before Keras reads it.

        A `tf.data.Dataset` is checked by its element spec, arrays and tensors (or a dict
        of them) by their shapes; anything else (a generator, a `PyDataset`) by the
        traced step.
        """
        if data is None:
            return
        if isinstance(data, tf.data.Dataset):
            data = data.element_spec
        elif not isinstance(data, (Mapping, np.ndarray, tf.Tensor, tf.TensorSpec)):
            return
        try:
            x, context, _ = _unpack(data)
        except ValueError:
            return  # the step itself names the batch's structure
        self.check_batch_shapes(x, context)

    def _remember_batch(self, x, context) -> None:
        """Records the batch's shapes (for `build_from_config`); the model is built."""
        if self._batch_spec is None:

            def spec(t):
                if t is None:
                    return None
                shape = tf.TensorShape(t.shape) if hasattr(t, "shape") else None
                if shape is None:
                    t = tf.convert_to_tensor(t)
                    shape = t.shape
                return (tuple(shape.as_list()[1:]), tf.as_dtype(t.dtype).name)

            self._batch_spec = (spec(x), spec(context))
        self.built = True

    def step_seed(self, stream: tf.Tensor | int | None = None) -> tf.Tensor:
        """The [2] seed of a training step: the model seed folded with `stream`.

        `stream` defaults to the optimizer's step counter plus the number of skipped
        (non-finite) steps; under a distribution strategy the replica id is folded in
        too, so that replicas draw independent samples.
        """
        if stream is None:
            optimizer = getattr(self, "optimizer", None)
            stream = optimizer.iterations if optimizer is not None else 0
            stream = tf.cast(stream, tf.int64) + tf.convert_to_tensor(self.nonfinite_steps)
        seed = tf.random.experimental.stateless_fold_in(
            sampling.stateless_seed(self.seed), tf.cast(stream, tf.int64)
        )
        replica = tf.distribute.get_replica_context()
        if replica is not None and replica.num_replicas_in_sync > 1:
            seed = tf.random.experimental.stateless_fold_in(
                seed, tf.cast(replica.replica_id_in_sync_group, tf.int64)
            )
        # stateless_fold_in gives int64 seeds; their low 32 bits are as good a seed.
        return tf.cast(seed, tf.int32)

    def evaluation_seeds(self, data) -> tf.Tensor:
        """[B, 2] seeds of `call`/`test_step`: the evaluation seed and each example's content.

        A data point's bound then does not depend on the batch it comes in (nor on its
        position there): identical examples draw identical samples.
        """
        x, context, _ = _unpack(data)
        x = self._checked_batch(x, context)  # the hash reads x and context side by side
        seed = self.step_seed(_EVALUATION_STREAM)
        return _content_seeds(seed, [x] if context is None else [x, context])

    def _seed_for(self, data) -> tf.Tensor:
        """The batch's per-example seeds if it has them, else this step's `step_seed()`."""
        _, _, data_seed = _unpack(data)
        return data_seed if data_seed is not None else self.step_seed()

    # ---------------------------------------------------------------- variables
    def _variable_split(self) -> tuple[list, list]:
        encoder_variables = _unique(getattr(self.encoder, "trainable_variables", []))
        encoder_ids = {id(v) for v in encoder_variables}
        model_variables = []
        for layer in self.layers:
            if layer is not self.encoder:
                model_variables += layer.trainable_variables
        in_layers = {id(v) for layer in self.layers for v in layer.trainable_variables}
        # The model's own weights (the objective's, a subclass's add_weight) and those of
        # layers Keras tracks below non-layer attributes.
        model_variables += [
            v
            for v in self.trainable_variables
            if id(v) not in in_layers and id(v) not in encoder_ids
        ]
        model_variables = _unique(model_variables)
        model_ids = {id(v) for v in model_variables}
        return model_variables, [v for v in encoder_variables if id(v) not in model_ids]

    @property
    def model_variables(self) -> list[tf.Variable]:
        """Trainable variables of p and the objective: all but the encoder's own.

        The decoder's, a prior layer's, the objective's (a learnable beta) and those of
        any layer or weight a subclass adds; a variable the encoder shares with any of
        them is here too (its gradient is Tucker et al.'s unified estimator).
        """
        return self._variable_split()[0]

    @property
    def inference_variables(self) -> list[tf.Variable]:
        """Trainable variables of q (the encoder) not already among `model_variables`."""
        return self._variable_split()[1]

    def compute_gradients(
        self, data, seed=None, num_replicas: int | None = None
    ) -> tuple[list, list, ObjectiveResult]:
        """Gradients of the objective's surrogate for one (per-replica) batch.

        The loss is divided by the number of replicas in sync (`num_replicas`, read from
        the replica context by default), so that gradients summed across replicas (as
        optimizers do under a distribution strategy) are those of the mean over the
        global batch.

        Returns:
          (gradients, variables, result): aligned lists of gradients and variables
          (model variables first, then inference variables), and the `ObjectiveResult`.

        The networks run in training mode (`training=True`), as in `train_step`.

        Raises:
          ValueError: if the loss reads a trainable variable the model does not track.
        """
        return self._gradients(data, seed, num_replicas, optimizer=None)

    def _gradients(self, data, seed, num_replicas, optimizer) -> tuple[list, list, ObjectiveResult]:
        with tf.GradientTape() as tape:
            result = self.objective_result(data, seed, training=True)
            if num_replicas is None:
                num_replicas = _num_replicas()
            loss = result.loss / num_replicas
            if optimizer is not None:
                loss = optimizer.scale_loss(loss)  # identity unless loss scaling is on
            scaled = result._replace(loss=loss)
        # Read after the forward pass, which builds the layers on a first call.
        model_variables, inference_variables = self._variable_split()
        self._check_tracked(tape.watched_variables(), model_variables + inference_variables)
        grads = scaled.gradients(tape, model_variables, inference_variables)
        return grads.model + grads.inference, model_variables + inference_variables, result

    def _check_tracked(self, watched, tracked) -> None:
        known = {_variable_key(v) for v in tracked}
        known |= {_variable_key(v) for v in self.non_trainable_variables}
        missing = [v.name for v in watched if v.trainable and _variable_key(v) not in known]
        if missing:
            raise ValueError(
                f"The loss reads the trainable variables {missing}, which the model does not "
                "track, so they would never be trained nor saved. Create them as Keras 3 "
                "weights (keras.layers, add_weight) and assign their layer to an attribute "
                "of the model or of one of its layers; a tf_keras layer (e.g. inside a "
                "TFP bijector) or a bare tf.Variable is not tracked by Keras 3."
            )

    # ------------------------------------------------------------ Keras hooks
    def call(self, inputs, training: bool = False) -> tf.Tensor:
        """The objective's bound per data point, [B], with the evaluation seeds."""
        x, context, _ = _unpack(inputs)
        self.check_batch_shapes(x, context)  # before the seeds hash x and the context
        seed = self._evaluation_seed_for(inputs)
        return self.objective_result(inputs, seed, training=bool(training)).bound

    def _evaluation_seed_for(self, data) -> tf.Tensor:
        _, _, data_seed = _unpack(data)
        if data_seed is not None and _in_symbolic_build():
            # Keras builds the model on placeholders whose dtypes it may not keep (a
            # distributed dataset's seeds come as float32): only shapes matter there.
            return self.step_seed(_EVALUATION_STREAM)
        return data_seed if data_seed is not None else self.evaluation_seeds(data)

    def train_step(self, data):
        optimizer = self.optimizer
        grads, variables, result = self._gradients(data, None, None, optimizer)
        finite = self._apply_if_finite(optimizer, grads, variables, result.loss)
        return self._update_metrics(result, finite)

    def test_step(self, data):
        x, context, _ = _unpack(data)
        self.check_batch_shapes(x, context)  # before the seeds hash x and the context
        result = self.objective_result(data, self._evaluation_seed_for(data))
        return self._update_metrics(result, tf.constant(True))

    def _apply_if_finite(self, optimizer, grads, variables, loss) -> tf.Tensor:
        """Applies the update only if the loss and gradients are finite; counts skipped steps.

        Under loss scaling the `LossScaleOptimizer` itself skips steps whose gradients
        overflow (and lowers the scale); only a non-finite loss is counted then. Every
        replica takes the same decision. Returns whether the step was applied.
        """
        finite = tf.reduce_all(tf.math.is_finite(loss))
        if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            for g in grads:
                if g is not None:
                    finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
        replica = tf.distribute.get_replica_context()
        distributed = tf.distribute.has_strategy() and replica is not None
        if distributed and replica.num_replicas_in_sync > 1:
            bad = replica.all_reduce(
                tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite), tf.float32)
            )
            finite = tf.equal(bad, 0.0)
        if not optimizer.built:
            optimizer.build(self.trainable_variables)
        pairs = [(g, v) for g, v in zip(grads, variables, strict=True) if g is not None]
        updated = [v for _, v in pairs]

        def apply(grads):
            optimizer.apply_gradients(zip(grads, updated, strict=True))
            return tf.constant(True)

        grads = [g for g, _ in pairs]
        if distributed:
            # A cond whose branch synchronizes replicas must run in cross-replica context;
            # each replica's gradients reach it through merge_call's arguments.
            def cross_replica(strategy, finite, grads):
                def apply_on_every_replica():
                    strategy.extended.call_for_each_replica(apply, args=(grads,))
                    return tf.constant(True)

                flag = strategy.experimental_local_results(finite)[0]
                tf.cond(flag, apply_on_every_replica, lambda: tf.constant(False))

            replica.merge_call(cross_replica, args=(finite, grads))
        else:
            tf.cond(finite, lambda: apply(grads), lambda: tf.constant(False))
        run = tf.where(finite, tf.constant(0, tf.int64), self.nonfinite_run + 1)
        self.nonfinite_run.assign(run)
        self.nonfinite_steps.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
        return finite

    def raise_if_stalled(self) -> None:
        """Raises FloatingPointError once `max_nonfinite_steps` consecutive steps were skipped.

        `fit` calls it after every batch (a callback, so that it holds under XLA, which
        compiles assertions away), and so does the step of `make_train_step`.
        """
        run = int(self.nonfinite_run.numpy())
        if run >= self.max_nonfinite_steps:
            iterations = getattr(getattr(self, "optimizer", None), "iterations", 0)
            step = int(iterations) + int(self.nonfinite_steps.numpy())
            raise FloatingPointError(
                f"{run} consecutive training steps, the last being step {step} (counted from "
                "1), had a non-finite loss or gradient and were skipped: the weights and the "
                "optimizer hold the last finite update. Check the data for NaN or infinite "
                "values and lower the learning rate. A loss of +inf is a bound of -inf: "
                "every sample of some data point (or, for VAE and CIWAE, any one sample) "
                "fell outside the support of the prior or the likelihood, a weight of 0; "
                "widen q's support or the model's, or use more samples "
                f"(max_nonfinite_steps={self.max_nonfinite_steps})."
            )

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, stopping with FloatingPointError after `max_nonfinite_steps`
        consecutive non-finite steps (see `raise_if_stalled`)."""
        if isinstance(callbacks, keras.callbacks.Callback):
            callbacks = [callbacks]
        callbacks = [*(callbacks or []), _StopWhenStalled()]
        self._check_input_data(kwargs.get("x", args[0] if args else None))
        self._check_input_data(kwargs.get("validation_data"))
        return super().fit(*args, callbacks=callbacks, **kwargs)

    def evaluate(self, *args, **kwargs):
        """`keras.Model.evaluate`, after `check_batch_shapes` on the data's static shapes."""
        self._check_input_data(kwargs.get("x", args[0] if args else None))
        return super().evaluate(*args, **kwargs)

    def predict(self, *args, **kwargs):
        """`keras.Model.predict` (the bound per data point), after `check_batch_shapes`."""
        self._check_input_data(kwargs.get("x", args[0] if args else None))
        return super().predict(*args, **kwargs)

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self._loss_tracker, self._bound_tracker, self._ess_tracker]

    def _update_metrics(self, result: ObjectiveResult, finite: tf.Tensor) -> dict[str, tf.Tensor]:
        # Means over data points, whatever the batch sizes (a last, smaller batch counts
        # for its size); a skipped step's values are left out (weight 0, no NaN * 0).
        weight = tf.cast(finite, result.loss.dtype)

        def kept(value):
            return tf.where(finite, value, tf.zeros_like(value))

        batch_size = tf.cast(tf.size(result.bound), result.loss.dtype)
        self._loss_tracker.update_state(kept(result.loss), sample_weight=weight * batch_size)
        per_example = tf.broadcast_to(weight, tf.shape(result.bound))
        self._bound_tracker.update_state(kept(result.bound), sample_weight=per_example)
        self._ess_tracker.update_state(kept(result.ess), sample_weight=per_example)
        logs = {m.name: m.result() for m in self.metrics}
        logs["nonfinite_steps"] = tf.convert_to_tensor(self.nonfinite_steps)
        return logs

    # ------------------------------------------------------------- evaluation
    def log_marginal(
        self,
        data,
        seed,
        num_samples: int = 5000,
        chunk_size: int = 500,
        jit_compile: bool | str = "auto",
    ) -> tf.Tensor:
        """log p^(x) per data point ([B]): the IWAE bound with `num_samples`, chunked.

        `mcobjectives.log_marginal_estimate` of q(z|x) and log p(x, z): chunk i draws
        with the i-th seed of the split of `seed`, memory is bounded by one chunk. Works
        for structured and discrete q (no gradient is taken).

        The estimate runs in a `tf.function` kept by the model, traced once per K, chunk
        size, jit mode and batch signature (the batch size is generalized after its
        first change) and reused across batches and seeds, whether called eagerly or
        inside the caller's own `tf.function`. Under XLA each chunk's elementwise work
        (the noise, the log densities of q and of the likelihood over [chunk_size * B,
        *event], the fold) is fused into a few loops where TensorFlow's kernels make
        one pass over memory per operation. XLA compiles run-time assertions away, such
        as `BernoulliDecoder`'s check that the pixels lie in [0, 1] (its uint8 refusal
        is static and remains): pass `jit_compile=False` to keep them. XLA's results
        differ from TensorFlow's kernels' by float rounding.

        Args:
          data: a batch: x, or a dict with "x" and optionally "context" (a "seed" entry
            is not used).
          seed: one stateless seed (an int or a shape-[2] integer tensor).
          num_samples: K >= 1.
          chunk_size: samples per chunk, >= 1.
          jit_compile: True (XLA), False (a `tf.function` without XLA) or "auto": XLA
            for a call of at least 2**17 draws (K * B, or B unknown until run time),
            unless one of the model's layers sets `supports_jit = False` (Keras'
            declaration of ops that XLA cannot compile). Smaller calls run without XLA:
            XLA compiles each batch shape once, in seconds, which a small call, or a
            few of them, would not win back.
        """
        auto = _checked_jit_compile(jit_compile) == "auto"
        num_samples = _checks.check_count("num_samples", num_samples)
        chunk_size = _checks.check_count("chunk_size", chunk_size)
        x, context, _ = _unpack(data)
        seed = _estimate_seed(seed)  # a tensor: a Python int would key a trace per seed
        x = tf.convert_to_tensor(x)
        if context is not None:
            context = tf.convert_to_tensor(context)
        self.check_batch_shapes(x, context)  # before the estimate is traced
        if auto:
            batch_size = x.shape[0] if x.shape.rank else None
            jit_compile = _supports_xla(self) and (
                batch_size is None or num_samples * batch_size >= 2**17
            )
        functions = self.__dict__.get("_log_marginal_functions")
        if functions is None:  # not a Keras-tracked attribute: no weights, not saved
            functions = {}
            object.__setattr__(self, "_log_marginal_functions", functions)
        if jit_compile not in functions:

            def estimate(x, context, seed, num_samples, chunk_size):
                log_joint = self.log_joint(x, context)  # checks the context first
                return log_marginal_estimate(
                    self.posterior(x, context), log_joint, seed, num_samples, chunk_size
                )

            functions[jit_compile] = tf.function(
                estimate, jit_compile=jit_compile, reduce_retracing=True, autograph=False
            )
        return functions[jit_compile](x, context, seed, num_samples, chunk_size)

    # ----------------------------------------------------------------- saving
    def get_config(self) -> dict:
        if isinstance(self.prior, tfd.Distribution):
            prior = {"distribution": _serialization.serialize_distribution(self.prior)}
        else:
            prior = keras.saving.serialize_keras_object(self.prior)
        return {
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "prior": prior,
            "objective": _serialization.serialize_objective(self.objective),
            "seed": self.seed,
            "max_nonfinite_steps": self.max_nonfinite_steps,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> ImportanceWeightedAutoencoder:
        missing = [k for k in ("encoder", "decoder", "prior", "objective") if k not in config]
        if missing:
            raise saving.ModelFileError(
                f"The saved config of an {cls.__name__} lacks {missing} (it holds "
                f"{sorted(config)}): the file's config.json was edited or damaged, or it was "
                "written by another version of the class. Save the model again."
            )
        config = dict(config)
        prior = config.pop("prior")
        if isinstance(prior, dict) and set(prior) == {"distribution"}:
            prior = _serialization.deserialize_distribution(prior["distribution"])
        else:
            prior = keras.saving.deserialize_keras_object(prior, custom_objects=custom_objects)
        return cls(
            encoder=keras.saving.deserialize_keras_object(
                config.pop("encoder"), custom_objects=custom_objects
            ),
            decoder=keras.saving.deserialize_keras_object(
                config.pop("decoder"), custom_objects=custom_objects
            ),
            prior=prior,
            objective=_serialization.deserialize_objective(config.pop("objective")),
            **config,
        )

    def _own_variables(self) -> list:
        """The model's own variables in the order Keras saves them ("vars/0", ... in a file)."""
        return list(self._trainable_variables) + list(self._non_trainable_variables)

    def load_own_variables(self, store) -> None:
        """Keras' hook for the model's own variables (the objective's, the counters).

        Called by `keras.models.load_model` and `load_weights` before the layers'
        variables: a file holding another number of them (weights of a model with
        another objective) or a non-finite objective variable (a NaN `beta_logit`) is
        refused naming them, before anything is assigned.
        """
        variables = self._own_variables()
        keys = list(store.keys())
        if len(keys) != len(variables):
            trainable = [v.name for v in self._trainable_variables]
            error = saving.ModelFileError(
                saving._describe_mismatch(
                    {f"vars/{k}": () for k in keys},
                    {f"vars/{i}": () for i in range(len(variables))},
                    [v.name for v in variables],
                    trainable,
                )
                + "."
            )
            saving._record_error(error)
            raise error
        values = [np.asarray(store[str(i)]) for i in range(len(variables))]
        try:
            saving._check_own_values(values, variables, "The saved weights")
        except saving.ModelFileError as error:
            saving._record_error(error)
            raise
        super().load_own_variables(store)

    def load_weights(self, filepath, skip_mismatch: bool = False, **kwargs) -> None:
        """`keras.Model.load_weights`, after checks that name a damaged or mismatched file.

        Before Keras reads a local `.weights.h5` or `.keras` file, the file is checked
        (`mcobjectives.saving.check_weights_file`, or the archive's weights member) and
        its variables (their paths and shapes) compared with this model's: a damaged
        file, weights of a model with other variables (another objective: a learnable
        CIWAE's `beta_logit`; another network: latent size, hidden units) or a NaN
        weight is refused with a `mcobjectives.saving.ModelFileError` naming the file,
        the variables that differ and the likely cause, and the model keeps its
        weights. With `skip_mismatch=True` the comparison is left to Keras, which skips
        mismatched layers with a warning. Any other error of Keras is re-raised as a
        `ModelFileError` naming the file.
        """
        path = str(filepath)
        where = f"The weights file {path!r}"
        local = "://" not in path  # a remote path (gs://, hf://) is left to Keras
        handle = None
        try:
            if local and path.endswith(".keras"):
                _, data = saving._read_archive(path)
                if data is not None:
                    saving._check_h5_bytes(data, path, f"{path!r}: its weights member")
                    handle = h5py.File(io.BytesIO(data), "r")
            elif local and path.endswith(".weights.h5"):
                saving.check_weights_file(path)
                handle = h5py.File(path, "r")
            if handle is not None and self.built:
                variables = self._own_variables()
                mismatch = None
                if not skip_mismatch:
                    mismatch = saving._describe_mismatch(
                        saving._h5_layout(handle),
                        saving._model_layout(self),
                        [v.name for v in variables],
                        [v.name for v in self._trainable_variables],
                    )
                if mismatch is not None:
                    raise saving.ModelFileError(
                        f"{where} does not fit this model, nothing was loaded: {mismatch}."
                    )
                saving._check_own_values(saving._own_values(handle), variables, where)
        finally:
            if handle is not None:
                handle.close()
        saving._record_error(None)
        try:
            super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        except (ValueError, OSError, KeyError) as error:
            raise saving._wrapped_error(error, where) from error

    def check_finite_weights(self) -> None:
        """Raises a ValueError naming every weight that a sound model cannot hold.

        That is a weight holding NaN, or an objective variable (a learnable CIWAE's
        `beta_logit`) that is NaN or infinite. `fit` never applies a non-finite update,
        so such a weight comes from a damaged file or checkpoint. `load_weights` and
        `mcobjectives.saving.load_model` check the file; call this after restoring
        weights by other means (`tf.train.Checkpoint.restore`, `set_weights`).
        """
        objective = {_variable_key(v) for v in self._objective_weights}
        bad = []
        for weight in self.weights:
            if not np.issubdtype(np.dtype(weight.dtype), np.floating):
                continue
            value = np.asarray(weight.numpy())
            if _variable_key(weight) in objective:
                if not np.isfinite(value).all():
                    bad.append(f"{weight.path} (the objective's, = {value.tolist()})")
            elif np.isnan(value).any():
                bad.append(f"{weight.path} ({int(np.isnan(value).sum())} NaN)")
        if bad:
            raise ValueError(
                f"The model holds weights that are not finite: {', '.join(bad)}. Training "
                "never applies a non-finite update, so they were restored from a damaged "
                "file or checkpoint: restore an earlier one."
            )

    def get_build_config(self) -> dict | None:
        if self._batch_spec is None:
            return None
        x, context = self._batch_spec
        return {
            "x_shape": list(x[0]),
            "x_dtype": x[1],
            "context_shape": None if context is None else list(context[0]),
            "context_dtype": None if context is None else context[1],
        }

    def build_from_config(self, config: dict | None) -> None:
        """Creates every variable by one forward pass on a batch of zeros of the saved shapes."""
        if not config:
            return
        x = tf.zeros([1, *config["x_shape"]], config["x_dtype"])
        batch = {"x": x}
        if config.get("context_shape") is not None:
            batch["context"] = tf.zeros([1, *config["context_shape"]], config["context_dtype"])
        self.objective_result(batch, seed=tf.constant([0, 0], tf.int32))

    def build(self, input_shape=None) -> None:
        """Creates the variables for batches x of `input_shape` ([B, ...]; float32)."""
        if input_shape is None or self.built:
            self.built = True
            return
        context = None
        if (
            isinstance(input_shape, (list, tuple))
            and len(input_shape) == 1
            and isinstance(input_shape[0], (list, tuple, tf.TensorShape))
        ):
            input_shape = input_shape[0]  # Keras' shapes of a call on [x]
        if isinstance(input_shape, Mapping):  # a dict batch's shapes
            input_shape, context = input_shape.get("x"), input_shape.get("context")
        if not isinstance(input_shape, (list, tuple, tf.TensorShape)) or len(input_shape) < 1:
            raise ValueError(
                f"`input_shape` must be the shape of x, e.g. (None, 784); got {input_shape!r}."
            )
        self.build_from_config(
            {
                "x_shape": list(input_shape)[1:],
                "x_dtype": "float32",
                "context_shape": None if context is None else list(context)[1:],
                "context_dtype": "float32",
            }
        )


def _callable_without_arguments(layer) -> bool:
    """Whether a prior layer (its `call`, or the callable itself) takes no required argument."""
    function = layer.call if isinstance(layer, keras.layers.Layer) else layer
    try:
        inspect.signature(function).bind()
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): let the call itself decide
        return True
    return True


def _checked_jit_compile(jit_compile):
    """`jit_compile` if it is True, False or "auto"; else a TypeError."""
    if isinstance(jit_compile, bool) or (isinstance(jit_compile, str) and jit_compile == "auto"):
        return jit_compile
    raise TypeError(f"`jit_compile` must be True, False or 'auto', got {jit_compile!r}.")


def _supports_xla(model: keras.Model) -> bool:
    """Whether no layer of `model` declares `supports_jit = False`, as Keras asks."""
    return all(getattr(layer, "supports_jit", True) for layer in model._flatten_layers())


def _takes_training(method) -> bool:
    try:
        return "training" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _call(network, inputs: tuple, training: bool):
    """network(*inputs), with `training` for a Keras layer (its layers see the mode)."""
    if isinstance(network, keras.layers.Layer):
        return network(*inputs, training=training)
    return network(*inputs)


class _StopWhenStalled(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        del batch, logs
        self.model.raise_if_stalled()


def _in_symbolic_build() -> bool:
    """Whether Keras is tracing the model on placeholders to create its variables."""
    try:
        from keras.src.backend.common.symbolic_scope import in_symbolic_scope
    except ImportError:  # a Keras without it traces with the batch's own dtypes
        return False
    return in_symbolic_scope()


def _num_replicas() -> int:
    replica = tf.distribute.get_replica_context()
    return 1 if replica is None else replica.num_replicas_in_sync


def _unique(variables) -> list:
    seen, out = set(), []
    for v in variables:
        if id(v) not in seen:
            seen.add(id(v))
            out.append(v)
    return out


def make_train_step(
    model: ImportanceWeightedAutoencoder,
    optimizer: keras.optimizers.Optimizer,
    *,
    jit_compile: bool | str = "auto",
    strategy: tf.distribute.Strategy | None = None,
) -> Callable[[Any], dict[str, tf.Tensor]]:
    """A `tf.function` training step for a hand-written loop: the step of `model.fit`.

    The returned `step(batch)` computes the objective's gradients (compiled with XLA if
    `jit_compile`), applies them with `optimizer` and returns the global-batch means
    {"loss", "bound", "ess"} and "finite": False when the step's loss or gradients were
    not finite and the update was skipped (weights and optimizer untouched), as
    `model.fit` skips it; `model.max_nonfinite_steps` consecutive ones raise
    FloatingPointError. Step t
    draws its samples from the model seed and `optimizer.iterations` plus the skipped
    steps (or from the batch's per-example seeds), as `model.fit` does. Under the
    "mixed_float16" policy `optimizer` must be a `LossScaleOptimizer`.

    With a `strategy`, `batch` is a distributed batch (from
    `strategy.experimental_distribute_dataset`); every replica computes its share and
    the optimizer sums the replicas' gradients, which `compute_gradients` has scaled by
    1 / num_replicas, so the update is that of the global batch.

    Args:
      model: the model.
      optimizer: a Keras optimizer (created in the strategy's scope, if any).
      jit_compile: True (XLA), False (a `tf.function` without XLA) or "auto" (the
        default): XLA when every layer of the model supports it, as `model.compile`
        decides. XLA fuses the step's elementwise work around the matmuls, which makes
        it the faster mode for these models (benchmarks/throughput.py measures both).
      strategy: an optional `tf.distribute.Strategy`.
    """
    if not isinstance(model, ImportanceWeightedAutoencoder):
        raise TypeError(f"`model` must be an ImportanceWeightedAutoencoder, got {type(model)}.")
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"`optimizer` must be a keras optimizer, got {type(optimizer).__name__}.")
    if _checked_jit_compile(jit_compile) == "auto":
        jit_compile = _supports_xla(model)

    if keras.mixed_precision.global_policy().name == "mixed_float16" and not isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        raise ValueError(
            "Under the mixed_float16 policy float16 gradients underflow without loss "
            "scaling: pass keras.optimizers.LossScaleOptimizer(optimizer) as `optimizer` "
            "(model.compile wraps it for fit)."
        )
    if strategy is not None and not strategy.extended.variable_created_in_scope(
        optimizer.iterations.value
    ):
        raise ValueError(
            "`optimizer` was created outside `strategy.scope()`: create it (and the model) "
            "inside the scope, so that its variables are mirrored like the model's."
        )
    compiled = getattr(model, "optimizer", None)
    if compiled is None:
        model.optimizer = optimizer
    elif compiled is not optimizer:
        raise ValueError(
            "`optimizer` differs from the optimizer the model was compiled with: the step "
            "counter that seeds each step must be the one that advances."
        )
    if model.built and not optimizer.built:
        # Slots made now, in the strategy's scope; otherwise at the first step's trace.
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            optimizer.build(model.trainable_variables)

    def gradients(batch, seed, num_replicas):
        grads, _, result = model._gradients(batch, seed, num_replicas, optimizer)
        stats = (result.loss, tf.reduce_mean(result.bound), tf.reduce_mean(result.ess))
        return grads, stats

    gradients = tf.function(gradients, jit_compile=jit_compile)

    def replica_step(batch):
        # The seed is read before the update advances the counter, outside XLA.
        seed = model._seed_for(batch)
        grads, (loss, bound, ess) = gradients(batch, seed, _num_replicas())
        variables = model.model_variables + model.inference_variables
        finite = model._apply_if_finite(optimizer, grads, variables, loss)
        return loss, bound, ess, tf.cast(finite, tf.float32)

    @tf.function
    def step(batch):
        if strategy is None:
            loss, bound, ess, finite = replica_step(batch)
        else:
            per_replica = strategy.run(replica_step, args=(batch,))
            loss, bound, ess, finite = (
                strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for value in per_replica
            )
        return {"loss": loss, "bound": bound, "ess": ess, "finite": finite > 0.5}

    return _TrainStep(step, model, check_shapes=strategy is None)


class _TrainStep:
    """The `tf.function` step, then the check for consecutive non-finite steps; the
    function's attributes (e.g. `experimental_get_tracing_count`) are reachable."""

    def __init__(self, step, model: ImportanceWeightedAutoencoder, check_shapes: bool = True):
        self._step, self._model, self._check_shapes = step, model, check_shapes

    def __call__(self, batch) -> dict[str, tf.Tensor]:
        if self._check_shapes:  # before the step is traced (a distributed batch: inside it)
            x, context, _ = _unpack(batch)
            self._model.check_batch_shapes(x, context)
        logs = self._step(batch)
        self._model.raise_if_stalled()
        return logs

    def __getattr__(self, name: str):
        return getattr(self._step, name)
