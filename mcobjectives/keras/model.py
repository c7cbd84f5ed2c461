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

Burda et al.'s two stochastic layers: the encoder returns the joint q(z1|x)
q(z2|z1), the prior layer (called as `prior()`) the joint p(z2) p(z1|z2) with a
trainable conditional, and the decoder reads z["z1"]:

    model = ImportanceWeightedAutoencoder(
        encoder=mco.networks.TwoLayerGaussianEncoder(),               # (100, 50)
        decoder=mco.networks.BernoulliDecoder(784, latent="z1"),
        prior=mco.networks.TwoLayerGaussianPrior(),
        objective=mco.IWAE(64),
    )

Priors. A fixed `tfd.Distribution` is p(z). A prior Keras layer is called with the
batch's context, `prior(context)`, for p(z|c); without a context it is called with no
argument, `prior()`, for a learnable unconditional p(z) (give its `call` a context
argument that defaults to None: Keras layers need one argument). A layer whose `call`
requires a context, given a batch without one, is an error. Either way the layer's
variables are model variables.

Networks see plain batches. The encoder is called on x [B, ...]. The decoder and a
prior layer are called on a flat batch of latents, each leaf [S*B, *event] (row
s*B + b holds sample s of data point b), with the context tiled to [S*B, ...] to
match; their log-probabilities are reshaped back to [S, B]. So a network written for
[N, features] inputs (a `keras.Sequential` of Dense layers, a Dense-Reshape-
Conv2DTranspose decoder) works unchanged. A fixed prior's `log_prob` gets z as
[S, B, ...] (its batch shape may be [] or [B]).

Samples of p(x, z) and reconstructions: `model.sample(num, seed)` and
`model.reconstruct(x, seed)` (`mcobjectives.keras.generation`, the `Generation` mixin);
`mco.RWS(K, inference_update="sleep" | "wake_sleep")` adds the sleep phase to the step.

Training, data, seeds, saving, damaged files and shapes: see `mcobjectives.keras`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import sampling
from mcobjectives.core.checks import check_count
from mcobjectives.core.objective import MCObjective, ObjectiveResult
from mcobjectives.keras import batches, gradients, seeds, serialization, step_guard, variables
from mcobjectives.keras.generation import Generation
from mcobjectives.keras.log_joint import call_network, check_prior_context, model_log_joint
from mcobjectives.keras.log_marginal import LogMarginal
from mcobjectives.keras.model_saving import ModelSaving
from mcobjectives.keras.step_functions import OneStepFunctions

tfd = tfp.distributions

__all__ = ["ImportanceWeightedAutoencoder"]

serialization.register_objectives()


def _takes_training(method) -> bool:
    try:
        return "training" in inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False


def _check_arguments(encoder, decoder, prior, objective, seed, max_nonfinite_steps) -> None:
    """Raises a TypeError or ValueError naming a constructor argument the model cannot take."""
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
    check_count("seed", seed, minimum=0)
    sampling.stateless_seed(seed)  # its range, checked now rather than at the first step
    check_count("max_nonfinite_steps", max_nonfinite_steps)


@keras.saving.register_keras_serializable(package="mcobjectives")
class ImportanceWeightedAutoencoder(ModelSaving, Generation, OneStepFunctions, keras.Model):
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

    Structured latents (Burda et al.'s two stochastic layers): see the module.

    Training, data, seeds, saving, damaged files and shapes: see `mcobjectives.keras`.

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
      name: the model's name.
      **kwargs: passed to `keras.Model`.
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
        _check_arguments(encoder, decoder, prior, objective, seed, max_nonfinite_steps)
        self.encoder, self.decoder, self.prior, self.objective = encoder, decoder, prior, objective
        self.seed = seed
        self.max_nonfinite_steps = max_nonfinite_steps
        self._objective_weights = variables.adopt_objective_variables(objective)
        # Skipped steps: the current run of consecutive ones and the total. The total is
        # folded into each step's seed so that a skipped step's successor draws afresh.
        counter = dict(
            shape=(), dtype="int64", initializer="zeros", trainable=False,
            aggregation="only_first_replica",
        )  # fmt: skip
        self.nonfinite_run = self.add_weight(name="nonfinite_run", **counter)
        self.nonfinite_steps = self.add_weight(name="nonfinite_steps", **counter)
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self._bound_tracker = keras.metrics.Mean(name="bound")
        self._ess_tracker = keras.metrics.Mean(name="ess")
        self._batch_spec: tuple | None = None
        self._log_marginal = LogMarginal(self)  # untracked: no weights, not saved

    # ----------------------------------------------------------------- the model
    def posterior(
        self, x: tf.Tensor, context: tf.Tensor | None = None, training: bool = False
    ) -> tfd.Distribution:
        """q(z|x) (or q(z|x, c)), batch shape [B]: a distribution or a `JointDistribution`.

        `training` reaches the encoder's layers (Dropout, BatchNormalization).
        """
        return call_network(self.encoder, (x,) if context is None else (x, context), training)

    def prior_distribution(
        self, context: tf.Tensor | None = None, training: bool = False
    ) -> tfd.Distribution:
        """p(z) (or p(z|c)): the fixed prior, `prior(context)`, or, without a context, `prior()`."""
        check_prior_context(self.prior, context)
        if isinstance(self.prior, tfd.Distribution):
            return self.prior
        return call_network(self.prior, () if context is None else (context,), training)

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
        return model_log_joint(self.decoder, self.prior, x, context, training)

    def objective_result(
        self, data: Any, seed: Any = None, training: bool = False
    ) -> ObjectiveResult:
        """The objective on one batch: an `ObjectiveResult` (loss, bound, log weights, ESS).

        Args:
          data: a batch (see the module docstring).
          seed: the stateless seed; default: the batch's per-example seeds if it has
            them, else the model's seed folded with the optimizer's step counter.
          training: passed to the networks' layers (True in `train_step`).
        """
        return self._objective_result(self._checked(data), seed, training)

    def _objective_result(self, batch: batches.Batch, seed, training: bool) -> ObjectiveResult:
        x, context, data_seed = batch
        if seed is None:
            seed = data_seed if data_seed is not None else self.step_seed()
        if _takes_training(self.log_joint):
            log_joint = self.log_joint(x, context, training=training)  # checks the context
        else:  # a subclass's log_joint(x, context) of its own
            log_joint = self.log_joint(x, context)
        result = self.objective(self.posterior(x, context, training), log_joint, seed=seed)
        if self._batch_spec is None:  # recorded for `build_from_config`
            self._batch_spec = batches.batch_spec(x, context)
        self.built = True
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
        batches.check_shapes(x, context, self._batch_spec)

    def _checked(self, data) -> batches.Batch:
        """The batch unpacked and its shapes checked, once (x with a run-time check if needed)."""
        return batches.checked(data, self._batch_spec)

    def _check_input_data(self, data) -> None:
        if (batch := batches.input_batch(data)) is not None:
            self.check_batch_shapes(batch.x, batch.context)

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
        return seeds.step_seed(self.seed, stream)

    def evaluation_seeds(self, data) -> tf.Tensor:
        """[B, 2] seeds of `call`/`test_step`: the evaluation seed and each example's content.

        A data point's bound then does not depend on the batch it comes in (nor on its
        position there): identical examples draw identical samples.
        """
        return seeds.evaluation_seeds(self, self._checked(data))

    # ---------------------------------------------------------------- variables
    @property
    def model_variables(self) -> list[tf.Variable]:
        """Trainable variables of p and the objective: all but the encoder's own.

        The decoder's, a prior layer's, the objective's (a learnable beta) and those of
        any layer or weight a subclass adds; a variable the encoder shares with any of
        them is here too (its gradient is Tucker et al.'s unified estimator).
        """
        return variables.split(self, self.encoder)[0]

    @property
    def inference_variables(self) -> list[tf.Variable]:
        """Trainable variables of q (the encoder) not already among `model_variables`."""
        return variables.split(self, self.encoder)[1]

    def compute_gradients(
        self, data, seed=None, num_replicas: int | None = None
    ) -> tuple[list, list, ObjectiveResult]:
        """Gradients of the objective's surrogate for one (per-replica) batch.

        The loss is divided by the number of replicas in sync (`num_replicas`, read from
        the replica context by default), so that gradients summed across replicas (as
        optimizers do under a distribution strategy) are those of the mean over the
        global batch. The networks run in training mode (`training=True`), as in
        `train_step`.

        Returns:
          (gradients, variables, result): aligned lists of gradients and variables
          (model variables first, then inference variables), and the `ObjectiveResult`.

        Raises:
          ValueError: if the loss reads a trainable variable the model does not track.
        """
        return gradients.compute(self, data, seed, num_replicas, None)

    # ------------------------------------------------------------ Keras hooks
    def call(self, inputs, training: bool = False) -> tf.Tensor:
        """The objective's bound per data point, [B], with the evaluation seeds."""
        batch = self._checked(inputs)  # before the seeds hash x and the context
        seed = seeds.evaluation_seed_for(self, batch)
        return self._objective_result(batch, seed, bool(training)).bound

    def train_step(self, data):
        """One step of `fit`: gradients of one batch, applied if finite, and the metrics."""
        optimizer = self.optimizer
        grads, trained, result = gradients.compute(self, data, None, None, optimizer)
        finite = step_guard.apply_if_finite(self, optimizer, grads, trained, result.loss)
        return self._update_metrics(result, finite)

    def test_step(self, data):
        """One step of `evaluate`: the objective with the evaluation seeds, and the metrics."""
        batch = self._checked(data)  # before the seeds hash x and the context
        result = self._objective_result(batch, seeds.evaluation_seed_for(self, batch), False)
        return self._update_metrics(result, tf.constant(True))

    def raise_if_stalled(self) -> None:
        """Raises FloatingPointError once `max_nonfinite_steps` consecutive steps were skipped.

        `fit` calls it after its first batch and each batch that skipped a step (a callback,
        so that it holds under XLA, which compiles assertions away); `make_train_step`, always.
        """
        if (error := step_guard.stalled_error(self)) is not None:
            self.nonfinite_run.assign(0)  # training may resume: see `step_guard`
            raise error

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, stopping with FloatingPointError after `max_nonfinite_steps`
        consecutive non-finite steps (see `raise_if_stalled`)."""
        if isinstance(callbacks, keras.callbacks.Callback):
            callbacks = [callbacks]
        callbacks = [*(callbacks or []), step_guard.StopWhenStalled()]
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
        """The means of the loss, the bound and the ESS over the epoch's data points."""
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
        self, data: Any, seed: Any, num_samples: int = 5000, chunk_size: int = 500,
        jit_compile: bool | str = "auto",
    ) -> tf.Tensor:  # fmt: skip
        """log p^(x) per data point ([B]): the IWAE bound with `num_samples`, chunked.

        `mcobjectives.log_marginal_estimate` of q(z|x) and log p(x, z), chunk i drawn
        with the i-th seed of the split of `seed` (memory bounded by one chunk), for any
        q (no gradient is taken); in a `tf.function` the model keeps, traced once per K,
        chunk size, jit mode and batch signature. XLA compiles run-time assertions away
        (`BernoulliDecoder`'s pixel range; its uint8 refusal is static and remains), and
        its results differ from TensorFlow's kernels' by float rounding.

        Args:
          data: x, or a dict with "x" and optionally "context" ("seed" is not used).
          seed: one stateless seed (an int or a shape-[2] integer tensor).
          num_samples: K >= 1.
          chunk_size: samples per chunk, >= 1.
          jit_compile: True (XLA), False or "auto": XLA for at least 2**17 draws (K * B,
            or B unknown until run time) unless a layer sets `supports_jit = False`;
            smaller calls would not win back XLA's compilation per batch shape.
        """
        return self._log_marginal(data, seed, num_samples, chunk_size, jit_compile)
