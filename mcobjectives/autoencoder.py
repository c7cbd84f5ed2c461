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

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from mcobjectives import _checks, sampling
from mcobjectives.base import MCObjective, ObjectiveResult
from mcobjectives.evaluation import log_marginal_estimate

tfd = tfp.distributions

__all__ = ["ImportanceWeightedAutoencoder", "make_train_step"]

# Folded into the model seed for `test_step` and `call`, away from training steps.
_EVALUATION_STREAM = 2**31 - 1


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
        return data["x"], data.get("context"), data.get("seed")
    if isinstance(data, (tuple, list)):
        raise ValueError(
            f"A batch must be x or a dict {{'x': ..., 'context': ..., 'seed': ...}}; got a "
            f"{type(data).__name__} of {len(data)} elements. An autoencoder has no targets: "
            "pass the images alone (or as {'x': images})."
        )
    return data, None, None


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
        model.fit(images_dataset, epochs=10)   # logs loss, bound and ess

    Burda et al.'s two stochastic layers: the encoder returns the joint
    q(z1|x) q(z2|z1), the prior layer (called as `prior()`) the joint p(z2) p(z1|z2)
    with a trainable conditional, and the decoder reads z["z1"]:

        model = ImportanceWeightedAutoencoder(
            encoder=mco.networks.TwoLayerGaussianEncoder(),               # (100, 50)
            decoder=mco.networks.BernoulliDecoder(784, latent="z1"),
            prior=mco.networks.TwoLayerGaussianPrior(),
            objective=mco.IWAE(64),
        )

    Args:
      encoder: a Keras layer mapping x (or x, context) to q(z|x), a TFP distribution
        with batch shape [B] (a single distribution or a `JointDistribution`),
        reparameterized unless the objective is a score-function one (RWS, VIMCO).
      decoder: a Keras layer mapping z (q's structure, leaves [S, B, *event_i]; or z,
        context) to p(x|z), a TFP distribution with batch shape [S, B] and x's shape as
        event. For structured z it picks the leaves it reads.
      prior: p(z), a TFP distribution whose `log_prob(z)` is [S, B] (batch shape [] or
        [B]); or a Keras layer returning one: called as `prior(context)` for a
        conditional model p(z|c), as `prior()` for a learnable unconditional p(z)
        (e.g. `mco.networks.TwoLayerGaussianPrior()`, p(z2) p(z1|z2)).
      objective: the `MCObjective` to train with. Create it (and the model) inside a
        distribution strategy's scope if its variables (a learnable CIWAE beta) are to
        be mirrored.
      seed: an int, the stateless seed from which every step's samples are drawn.
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
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.objective = objective
        self.seed = seed
        self._loss_tracker = keras.metrics.Mean(name="loss")
        self._bound_tracker = keras.metrics.Mean(name="bound")
        self._ess_tracker = keras.metrics.Mean(name="ess")

    # ----------------------------------------------------------------- the model
    def posterior(self, x: tf.Tensor, context: tf.Tensor | None = None) -> tfd.Distribution:
        """q(z|x) (or q(z|x, c)), batch shape [B]: a distribution or a `JointDistribution`."""
        return self.encoder(x) if context is None else self.encoder(x, context)

    def prior_distribution(self, context: tf.Tensor | None = None) -> tfd.Distribution:
        """p(z) (or p(z|c)): the fixed prior, `prior(context)`, or, without a context, `prior()`."""
        if isinstance(self.prior, tfd.Distribution):
            if context is not None:
                raise ValueError(
                    "The batch has a 'context' but `prior` is a fixed distribution: pass a "
                    "Keras layer mapping the context to p(z|c) as `prior`."
                )
            return self.prior
        if context is not None:
            return self.prior(context)
        if not _callable_without_arguments(self.prior):
            raise ValueError(
                "`prior` is a layer of the context (a conditional model): give each batch "
                "as {'x': ..., 'context': ...}. (A prior layer for an unconditional model "
                "is called as prior(): give its `call` a context argument defaulting to "
                "None.)"
            )
        return self.prior()

    def log_joint(self, x: tf.Tensor, context: tf.Tensor | None = None) -> Callable:
        """The function z -> log p(x, z) [S, B] (or log p(x, z | c)), z in q's structure.

        The prior's `log_prob` and the decoder both receive z whole (a tensor
        [S, B, ...], or the dict or list of leaves of a joint q).
        """
        prior = self.prior_distribution(context)

        def log_joint(z):
            likelihood = self.decoder(z) if context is None else self.decoder(z, context)
            return prior.log_prob(z) + likelihood.log_prob(x)

        return log_joint

    def objective_result(self, data, seed=None) -> ObjectiveResult:
        """The objective on one batch: an `ObjectiveResult` (loss, bound, log weights, ESS).

        Args:
          data: a batch (see the module docstring).
          seed: the stateless seed; default: the batch's per-example seeds if it has
            them, else the model's seed folded with the optimizer's step counter.
        """
        x, context, _ = _unpack(data)
        if seed is None:
            seed = self._seed_for(data)
        log_joint = self.log_joint(x, context)  # checks the context first
        return self.objective(self.posterior(x, context), log_joint, seed=seed)

    def step_seed(self, stream: tf.Tensor | int | None = None) -> tf.Tensor:
        """The [2] seed of a training step: the model seed folded with `stream`.

        `stream` defaults to the optimizer's step counter; under a distribution strategy
        the replica id is folded in too, so that replicas draw independent samples.
        """
        if stream is None:
            optimizer = getattr(self, "optimizer", None)
            stream = optimizer.iterations if optimizer is not None else 0
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

    def _seed_for(self, data, stream: int | None = None) -> tf.Tensor:
        """The batch's per-example seeds if it has them, else `step_seed(stream)`."""
        _, _, data_seed = _unpack(data)
        return data_seed if data_seed is not None else self.step_seed(stream)

    # ---------------------------------------------------------------- variables
    @property
    def model_variables(self) -> list[tf.Variable]:
        """Trainable variables of p: decoder, prior (if a layer) and objective (beta)."""
        variables = list(self.decoder.trainable_variables)
        if not isinstance(self.prior, tfd.Distribution):
            variables += list(self.prior.trainable_variables)
        variables += list(self.objective.trainable_variables)
        return _unique(variables)

    @property
    def inference_variables(self) -> list[tf.Variable]:
        """Trainable variables of q (the encoder) not already among `model_variables`."""
        shared = {id(v) for v in self.model_variables}
        return [v for v in _unique(self.encoder.trainable_variables) if id(v) not in shared]

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
        """
        with tf.GradientTape() as tape:
            result = self.objective_result(data, seed)
            if num_replicas is None:
                num_replicas = _num_replicas()
            scaled = result._replace(loss=result.loss / num_replicas)
        # Read after the forward pass, which builds the layers on a first call.
        model_variables, inference_variables = self.model_variables, self.inference_variables
        grads = scaled.gradients(tape, model_variables, inference_variables)
        return grads.model + grads.inference, model_variables + inference_variables, result

    # ------------------------------------------------------------ Keras hooks
    def call(self, inputs, training: bool = False) -> tf.Tensor:
        """The objective's bound per data point, [B], with the evaluation seed."""
        del training
        return self.objective_result(inputs, self._seed_for(inputs, _EVALUATION_STREAM)).bound

    def train_step(self, data):
        grads, variables, result = self.compute_gradients(data)
        self.optimizer.apply_gradients(zip(grads, variables, strict=True))
        return self._update_metrics(result)

    def test_step(self, data):
        return self._update_metrics(
            self.objective_result(data, self._seed_for(data, _EVALUATION_STREAM))
        )

    @property
    def metrics(self) -> list[keras.metrics.Metric]:
        return [self._loss_tracker, self._bound_tracker, self._ess_tracker]

    def _update_metrics(self, result: ObjectiveResult) -> dict[str, tf.Tensor]:
        self._loss_tracker.update_state(result.loss)
        self._bound_tracker.update_state(tf.reduce_mean(result.bound))
        self._ess_tracker.update_state(tf.reduce_mean(result.ess))
        return {m.name: m.result() for m in self.metrics}

    # ------------------------------------------------------------- evaluation
    def log_marginal(self, data, seed, num_samples: int = 5000, chunk_size: int = 500) -> tf.Tensor:
        """log p^(x) per data point ([B]): the IWAE bound with `num_samples`, chunked.

        See `mcobjectives.log_marginal_estimate`; `seed` is one stateless seed. Works for
        structured and discrete q (no gradient is taken).
        """
        x, context, _ = _unpack(data)
        log_joint = self.log_joint(x, context)  # checks the context first
        return log_marginal_estimate(
            self.posterior(x, context),
            log_joint,
            seed,
            num_samples=num_samples,
            chunk_size=chunk_size,
        )

    def get_config(self) -> dict:
        raise NotImplementedError(
            "ImportanceWeightedAutoencoder holds TFP distributions and an objective and is "
            "not serialized to a Keras config: save its weights (model.save_weights) or use "
            "tf.train.Checkpoint(model=model, optimizer=optimizer)."
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
    jit_compile: bool = False,
    strategy: tf.distribute.Strategy | None = None,
) -> Callable[[Any], dict[str, tf.Tensor]]:
    """A `tf.function` training step for a hand-written loop: the step of `model.fit`.

    The returned `step(batch)` computes the objective's gradients (compiled with XLA if
    `jit_compile`), applies them with `optimizer` and returns the global-batch means
    {"loss", "bound", "ess"}. Step t draws its samples from the model seed and
    `optimizer.iterations` (or from the batch's per-example seeds), as `model.fit` does.

    With a `strategy`, `batch` is a distributed batch (from
    `strategy.experimental_distribute_dataset`); every replica computes its share and
    the optimizer sums the replicas' gradients, which `compute_gradients` has scaled by
    1 / num_replicas, so the update is that of the global batch.

    Args:
      model: the model; its variables must exist (call it on a batch first).
      optimizer: a Keras optimizer (created in the strategy's scope, if any).
      jit_compile: whether to compile the gradient computation with XLA.
      strategy: an optional `tf.distribute.Strategy`.
    """
    if not isinstance(model, ImportanceWeightedAutoencoder):
        raise TypeError(f"`model` must be an ImportanceWeightedAutoencoder, got {type(model)}.")
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(f"`optimizer` must be a keras optimizer, got {type(optimizer).__name__}.")
    if not isinstance(jit_compile, bool):
        raise TypeError(f"`jit_compile` must be a bool, got {jit_compile!r}.")
    compiled = getattr(model, "optimizer", None)
    if compiled is None:
        model.optimizer = optimizer
    elif compiled is not optimizer:
        raise ValueError(
            "`optimizer` differs from the optimizer the model was compiled with: the step "
            "counter that seeds each step must be the one that advances."
        )

    def gradients(batch, seed, num_replicas):
        grads, _, result = model.compute_gradients(batch, seed, num_replicas)
        stats = (result.loss, tf.reduce_mean(result.bound), tf.reduce_mean(result.ess))
        return grads, stats

    gradients = tf.function(gradients, jit_compile=jit_compile)

    def replica_step(batch):
        # The seed is read before the update advances the counter, outside XLA.
        seed = model._seed_for(batch)
        grads, stats = gradients(batch, seed, _num_replicas())
        variables = model.model_variables + model.inference_variables
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return stats

    @tf.function
    def step(batch):
        if strategy is None:
            loss, bound, ess = replica_step(batch)
        else:
            per_replica = strategy.run(replica_step, args=(batch,))
            loss, bound, ess = (
                strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for value in per_replica
            )
        return {"loss": loss, "bound": bound, "ess": ess}

    return step
