"""The Keras 3 adapter: `ImportanceWeightedAutoencoder`, its train step, saving and loading.

Every import of Keras in the library is in this package, but for the layers of
`mcobjectives.networks`, the model builders of `mcobjectives.experimental.mnist`, and the
private Keras names of `mcobjectives._compat`. Its public names are spelled at the top level,
`mcobjectives.ImportanceWeightedAutoencoder`, `mcobjectives.make_train_step` and
`mcobjectives.load_model`, and the checks of saved files here, in
`mcobjectives.keras.saving` (`ModelFileError`, `check_weights_file`,
`check_model_file`). The modules: `model` (the model: its structure, train and test
steps, metrics), `batches` (a batch unpacked once, its shapes checked), `log_joint`
(log p(x, z) of the networks), `seeds`, `variables` (model and inference variables),
`gradients` (one batch's gradients, in one list), `step_guard` (the non-finite step
guard), `step_functions` (the functions `fit` and `evaluate` call per batch),
`train_step` (`make_train_step`), `log_marginal`, `model_saving` (the model's
saving hooks), `saving` (the checked loaders) and `serialization` (configs of
objectives and fixed priors).

Training. `model.compile(optimizer)` and `model.fit(dataset)` train the model:
`train_step` differentiates the objective's one surrogate loss once with respect to
every trainable variable of the model: the decoder's, the prior's, any layer or weight
a subclass adds (the model estimator), the encoder's (the inference estimator), the
objective's own (a learnable CIWAE beta, which the model adopts as one of its Keras
weights, so that optimizers, strategies and saving see it), and Tucker et al.'s
unified estimator for a variable the encoder shares. A trainable variable the loss
reads that Keras does not track (a tf_keras layer, a bare `tf.Variable`) is an error
naming it. A step whose loss or gradients are not finite is skipped (weights and
optimizer untouched) and counted in the `nonfinite_steps` log;
`max_nonfinite_steps` consecutive ones stop training with a FloatingPointError
naming the step (checked after each batch, XLA or not). Under the "mixed_float16"
policy `compile` wraps the optimizer in a `LossScaleOptimizer` and the loss is
scaled for it; the networks compute in the low precision while samples,
log-probabilities and the surrogate stay float32. `make_train_step` builds the same
step as a `tf.function` for a hand-written loop.

Data. A batch is a tensor `x` of shape [B, ...], or a dict with the key "x" and
optionally "context" (c, [B, ...]) and "seed" ([B, 2] int32 per-example seeds; see
`mcobjectives.sampling`). Without per-example seeds, step t draws its samples from
`stateless_fold_in(seed, t)` (and the replica id under a distribution strategy), so a
run is replayed exactly by its seed and its step counter, which the optimizer keeps.

Saving. `model.save("m.keras")` / `keras.models.load_model` round-trip the model:
the networks and prior layers by their Keras configs (custom layers registered as
usual), the objective by its `get_config`, a fixed TFP prior by its parameters. A
`.keras` file and `tf.train.Checkpoint(model=..., optimizer=...)` also hold the
optimizer, whose step counter seeds the steps: a run resumed from them draws what it
would have drawn. `save_weights` holds the model's weights only (beta and the
skipped-step counters included), as in Keras: a run resumed from it restarts the
optimizer and its step counter.

Damaged files. `mcobjectives.load_model(path)` loads a `.keras` file after checking it
(a complete zip archive, its members' CRCs, `config.json` of this class, readable
HDF5 weights without NaN) and raises `mcobjectives.keras.saving.ModelFileError`
naming the file and the likely cause; `keras.models.load_model` opens the file
before this class can check it, so its errors for an unreadable archive stay
Keras's. `load_weights` checks the file as well and compares its variables with the
model's before assigning any: weights of another objective (a learnable CIWAE's
`beta_logit`) or another network are refused naming the variables, and the model
keeps its weights. Both loaders (and `keras.models.load_model`, through
`load_own_variables`) refuse a non-finite objective variable, naming it.

Shapes. A batch's context must have x's batch size, and once the model is built its
data must have the shape per data point it was built on (`check_batch_shapes`);
`fit`, `evaluate`, `predict`, `log_marginal` and the step of `make_train_step` check
the static shapes before anything is traced.
"""

from mcobjectives.keras import saving

__all__ = ["saving"]
