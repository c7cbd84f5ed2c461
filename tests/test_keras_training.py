"""Tests of mcobjectives.ImportanceWeightedAutoencoder and make_train_step on real MNIST.

The data are the first 500 images of the bundled MNIST subset (package data,
`mcobjectives.experimental.mnist.BUNDLED_PATH`, real MNIST), binarized with a fixed
NumPy seed. Networks are small
(one hidden layer of 64 tanh units, 8 latent dimensions) so that every objective trains
for 150 steps in a few seconds. Tests that train print what they measured; tolerances
and margins are stated where they are asserted.
"""

from __future__ import annotations

import functools
import math
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import sampling
from mcobjectives.networks import (
    BernoulliDecoder,
    GaussianEncoder,
    GaussianPrior,
    SigmoidBeliefEncoder,
    SigmoidBeliefPrior,
    TwoLayerGaussianEncoder,
    TwoLayerGaussianPrior,
)
from tests.conftest import GRAPH_MODES, in_mode, modes

tfd = tfp.distributions

LATENT, HIDDEN, K = 8, (64,), 8
NUM_TRAIN, BATCH, EPOCHS = 500, 20, 6  # 25 steps per epoch, 150 steps
SEED = 1
HALF = 392  # 14 rows of 28 pixels: the top half is the context, the bottom half is x


def _load_binarized():
    path = pathlib.Path(mco.__file__).parent / "experimental/mnist/bundled/mnist_subset.npz"
    with np.load(path) as data:
        train = data["train_images"][:NUM_TRAIN].astype(np.float64) / 255.0
        test = data["test_images"][:8].astype(np.float64) / 255.0
    rng = np.random.default_rng(0)
    return (
        (rng.random(train.shape) < train).astype(np.float32),
        (rng.random(test.shape) < test).astype(np.float32),
    )


TRAIN, TEST = _load_binarized()
MEAN_PIXEL = TRAIN.mean(axis=0)

OBJECTIVES = {
    "IWAE": lambda: mco.IWAE(K),
    "VAE": lambda: mco.VAE(K),
    "MIWAE(2,4)": lambda: mco.MIWAE(2, 4),
    "CIWAE(0.5)": lambda: mco.CIWAE(K, beta=0.5),
    "CIWAE(learnable)": lambda: mco.CIWAE(K, beta=0.5, learnable_beta=True),
    "PIWAE(2,4)": lambda: mco.PIWAE(2, 4),
    "RWS": lambda: mco.RWS(K),
    "STL": lambda: mco.STL(K),
    "DReG(0)": lambda: mco.DReG(K),
    "DReG(0.5)": lambda: mco.DReG(K, alpha=0.5),
    "JVI": lambda: mco.JVI(K),
    "JVI(dreg)": lambda: mco.JVI(K, dreg=True),
}

# Decrease of the mean loss from the first epoch to the last (nats), every objective.
# Measured (6 epochs of 25 steps): 28.5 (JVI) to 35.8 nats (CIWAE learnable); the margin
# is half the smallest.
MIN_LOSS_DROP = 14.0
# The same for the conditional model (392 pixels): measured 21.1 nats.
MIN_CONDITIONAL_DROP = 10.0


def _model(objective, *, seed=SEED, event_size=784, conditional=False):
    """A small model: encoder 784-64-(2 x 8), decoder 8-64-784 (mean-pixel bias); if
    `conditional`, the prior is a layer of the context and x the last `event_size` pixels."""
    encoder = GaussianEncoder(LATENT, HIDDEN)
    decoder = BernoulliDecoder(event_size, HIDDEN, mean_pixel=MEAN_PIXEL[-event_size:])
    prior = (
        GaussianPrior(LATENT, (32,))
        if conditional
        else tfd.MultivariateNormalDiag(tf.zeros(LATENT))
    )
    return mco.ImportanceWeightedAutoencoder(encoder, decoder, prior, objective, seed=seed)


def _built(objective, **kwargs):
    """A model whose layers have been built by one call on a batch."""
    model = _model(objective, **kwargs)
    model(TRAIN[:BATCH])
    return model


def _compile(model, optimizer, batch=None):
    """Compiles `model`, first building its layers (one eager call) and the optimizer's
    slots, so that fit traces its step once rather than twice (fit's first trace would
    otherwise create variables): this halves the cost of each short fit."""
    if not model.built:
        model(TRAIN[:BATCH] if batch is None else batch)
    model.compile(optimizer=optimizer, jit_compile=False)
    optimizer.build(model.model_variables + model.inference_variables)
    return model


def _by_id(variables):
    """Identities of variables; a Keras variable counts as the tf.Variable it stores."""
    return {id(v.value if isinstance(v, keras.Variable) else v) for v in variables}


# --- 1. fit with every objective ---------------------------------------------------------


# fit takes every objective through the same call, objective(q, log_joint, seed); what
# differs is the kind of surrogate and whether the objective has variables of its own. The
# default run fits one objective of each kind (IWAE: TOTAL, DReG: SPLIT, RWS: SCORE) and
# the learnable CIWAE; the slow run every objective. Every objective's gradient is checked
# exactly in tests/test_exact_gradients.py, and fit's update is that gradient (below).
FIT_BY_DEFAULT = ("IWAE", "DReG(0)", "RWS", "CIWAE(learnable)")


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[] if name in FIT_BY_DEFAULT else [pytest.mark.slow])
        for name in OBJECTIVES
    ],
)
def test_fit_lowers_the_loss(name):
    """150 steps of Adam(1e-3) lower the mean epoch loss by MIN_LOSS_DROP nats or more;
    history holds loss, bound and ess with bound == -loss and 1 <= ess <= K."""
    keras.utils.set_random_seed(0)
    model = _compile(_model(OBJECTIVES[name]()), keras.optimizers.Adam(1e-3))
    history = model.fit(TRAIN, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0).history
    assert set(history) == {"loss", "bound", "ess", "nonfinite_steps"}
    loss, bound, ess = (np.array(history[key]) for key in ("loss", "bound", "ess"))
    assert loss.shape == (EPOCHS,)
    assert model.optimizer.iterations.numpy() == EPOCHS * NUM_TRAIN // BATCH
    drop = loss[0] - loss[-1]
    print(f"{name}: loss {loss[0]:.2f} -> {loss[-1]:.2f} (drop {drop:.2f}), ess {ess.round(2)}")
    assert np.all(np.isfinite(loss))
    assert drop > MIN_LOSS_DROP
    np.testing.assert_allclose(bound, -loss, rtol=1e-6)
    assert np.all(ess >= 1.0)
    assert np.all(ess <= K)


# --- 2. routing of variables and gradients ----------------------------------------------


def test_variable_routing_unconditional_learnable_beta():
    objective = mco.CIWAE(K, beta=0.5, learnable_beta=True)
    model = _built(objective)
    model_vars, inference_vars = model.model_variables, model.inference_variables
    assert _by_id(model_vars) == _by_id(model.decoder.trainable_variables) | {
        id(objective.beta_logit)
    }
    assert len(model_vars) == len(_by_id(model_vars))
    assert [id(v) for v in inference_vars] == [id(v) for v in model.encoder.trainable_variables]
    assert not _by_id(model_vars) & _by_id(inference_vars)
    # Every trainable Keras weight is routed, and the beta too.
    assert _by_id(model.trainable_variables) | {id(objective.beta_logit)} == _by_id(
        model_vars + inference_vars
    )


def test_variable_routing_conditional():
    model = _model(mco.IWAE(K), event_size=784 - HALF, conditional=True)
    model({"x": TRAIN[:BATCH, HALF:], "context": TRAIN[:BATCH, :HALF]})
    expected = _by_id(model.decoder.trainable_variables) | _by_id(model.prior.trainable_variables)
    assert model.prior.trainable_variables
    assert _by_id(model.model_variables) == expected
    assert _by_id(model.inference_variables) == _by_id(model.encoder.trainable_variables)


def _hand_gradients(model, x, seed):
    """The objective's gradients computed by hand from model.posterior and model.log_joint."""
    with tf.GradientTape() as tape:
        q = model.posterior(tf.constant(x))
        result = model.objective(q, model.log_joint(tf.constant(x)), seed=seed)
    grads = result.gradients(tape, model.model_variables, model.inference_variables)
    return [g.numpy() for g in grads.model], [g.numpy() for g in grads.inference]


def test_train_step_gradient_is_the_objective_gradient():
    """One fit step with SGD(learning_rate=1) moves every variable by minus the gradient
    that result.gradients(tape, model_variables, inference_variables) gives by hand with
    the step's seed (step_seed() at iterations 0), to 1e-6 + 1e-5 relative. The objective is
    CIWAE with a learnable beta, so the beta's gradient is checked too."""
    model = _compile(
        _model(OBJECTIVES["CIWAE(learnable)"]()), keras.optimizers.SGD(learning_rate=1.0)
    )
    x = TRAIN[:BATCH]
    seed = model.step_seed()
    np.testing.assert_array_equal(seed, model.step_seed(0))
    model_grads, inference_grads = _hand_gradients(model, x, seed)
    variables = model.model_variables + model.inference_variables
    before = [v.numpy() for v in variables]
    model.fit(x, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    assert model.optimizer.iterations.numpy() == 1
    steps = [b - v.numpy() for b, v in zip(before, variables, strict=True)]
    n = len(model_grads)
    assert n == len(model.model_variables)
    for step, grad, var in zip(steps, model_grads + inference_grads, variables, strict=True):
        assert np.any(grad != 0), var.name
        np.testing.assert_allclose(step, grad, rtol=1e-5, atol=1e-6, err_msg=str(var.name))


def test_dreg_and_iwae_share_decoder_gradients_not_encoder_gradients():
    """Same networks, same seed: DReG's model gradient is IWAE's (exactly), its
    encoder gradient (the doubly reparameterized path estimator) is not."""
    iwae = _built(mco.IWAE(K))
    dreg = mco.ImportanceWeightedAutoencoder(
        iwae.encoder, iwae.decoder, iwae.prior, mco.DReG(K), seed=SEED
    )
    seed = tf.constant([5, 6], tf.int32)
    x = TRAIN[:BATCH]
    grads_iwae, vars_iwae, result_iwae = iwae.compute_gradients(x, seed)
    grads_dreg, vars_dreg, result_dreg = dreg.compute_gradients(x, seed)
    assert [id(v) for v in vars_iwae] == [id(v) for v in vars_dreg]
    np.testing.assert_array_equal(result_iwae.log_weights, result_dreg.log_weights)
    np.testing.assert_array_equal(result_iwae.bound, result_dreg.bound)
    n = len(iwae.model_variables)
    # The model gradient is sum_k w~_k d log p(x, z_k) for both, computed identically.
    for g_iwae, g_dreg, var in zip(grads_iwae[:n], grads_dreg[:n], vars_iwae[:n], strict=True):
        np.testing.assert_array_equal(g_dreg, g_iwae, err_msg=var.name)
    differences = []
    for g_iwae, g_dreg in zip(grads_iwae[n:], grads_dreg[n:], strict=True):
        g_iwae, g_dreg = g_iwae.numpy(), g_dreg.numpy()
        differences.append(np.linalg.norm(g_dreg - g_iwae) / np.linalg.norm(g_iwae))
    print("relative |DReG - IWAE| per encoder variable:", np.round(differences, 3))
    # Different estimators of the same expected gradient: far apart on one draw.
    assert min(differences) > 0.05


# --- 3. make_train_step ---------------------------------------------------------------------

NUM_STEPS = 3


def _adam():
    return keras.optimizers.Adam(1e-3, epsilon=1e-4)


@functools.cache
def _fit_reference():
    """(initial weights, weights after 3 fit steps, mean loss) of a DReG model."""
    model = _built(mco.DReG(K))
    initial = model.get_weights()
    _compile(model, _adam())
    history = model.fit(
        TRAIN[: NUM_STEPS * BATCH], batch_size=BATCH, epochs=1, shuffle=False, verbose=0
    )
    assert model.optimizer.iterations.numpy() == NUM_STEPS
    return initial, model.get_weights(), history.history["loss"][0]


# make_train_step always returns a tf.function: its modes are tf.function and XLA.
MAKE_TRAIN_STEP_MODES = modes(*GRAPH_MODES, reason="make_train_step's step is a tf.function")


@MAKE_TRAIN_STEP_MODES
def test_make_train_step_matches_fit(mode):
    """From the same weights, data and seed (iterations 0), make_train_step's 3 updates give
    the weights fit gives, to 1e-5; its losses average to fit's epoch loss."""
    initial, fitted, fit_loss = _fit_reference()
    model = _built(mco.DReG(K))
    model.set_weights(initial)
    optimizer = _adam()
    # Slots built up front, so that the step's first trace creates no variables.
    optimizer.build(model.model_variables + model.inference_variables)
    step = mco.make_train_step(model, optimizer, jit_compile=mode == "xla")
    assert model.optimizer is optimizer
    losses = []
    for i in range(NUM_STEPS):
        logs = step(tf.constant(TRAIN[i * BATCH : (i + 1) * BATCH]))
        assert set(logs) == {"loss", "bound", "ess", "finite"}
        assert bool(logs["finite"])
        np.testing.assert_allclose(logs["bound"], -logs["loss"], rtol=1e-6)
        losses.append(float(logs["loss"]))
    assert optimizer.iterations.numpy() == NUM_STEPS
    for ours, theirs in zip(model.get_weights(), fitted, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.mean(losses), fit_loss, rtol=1e-5)


def test_make_train_step_with_the_compiled_optimizer():
    """A compiled model accepts its own optimizer, and the step updates the weights with it."""
    model = _built(mco.IWAE(2))
    optimizer = _adam()
    model.compile(optimizer=optimizer)
    step = mco.make_train_step(model, optimizer)
    variables = model.model_variables + model.inference_variables
    before = [v.numpy() for v in variables]
    logs = step(tf.constant(TRAIN[:BATCH]))
    assert bool(logs["finite"])
    assert model.optimizer is optimizer and int(optimizer.iterations) == 1
    for value, variable in zip(before, variables, strict=True):
        assert np.any(variable.numpy() != value), variable.name


# --- 4. per-example seeds through the model ----------------------------------------------


def test_per_example_seeds_bound_invariant_to_splitting_the_batch(mode):
    """A batch {"x", "seed"} of 8 images gives the per-example bound of its two halves."""
    model = _built(mco.DReG(K))
    x = tf.constant(TEST)
    seeds = tf.constant(np.random.default_rng(3).integers(0, 2**31 - 1, (8, 2)), tf.int32)

    def fn(x, seeds):
        full = model.objective_result({"x": x, "seed": seeds}).bound
        first = model.objective_result({"x": x[:4], "seed": seeds[:4]}).bound
        second = model.objective_result({"x": x[4:], "seed": seeds[4:]}).bound
        return full, first, second

    full, first, second = (t.numpy() for t in in_mode(fn, mode)(x, seeds))
    assert full.shape == (8,)
    np.testing.assert_allclose(np.concatenate([first, second]), full, rtol=1e-5)
    # Other seeds for one half change only that half's bounds.
    other = model.objective_result({"x": x, "seed": tf.concat([seeds[:4], seeds[4:] + 1], 0)})
    np.testing.assert_allclose(other.bound[:4], full[:4], rtol=1e-5)
    assert np.all(other.bound.numpy()[4:] != full[4:])


def test_per_example_seeds_in_call_and_evaluate():
    """call() and evaluate() use a batch's per-example seeds."""
    model = _built(mco.IWAE(K))
    model.compile(optimizer=_adam())
    seeds = np.arange(16, dtype=np.int32).reshape(8, 2)
    batch = {"x": TEST, "seed": seeds}
    expected = model.objective_result(batch).bound.numpy()
    np.testing.assert_allclose(model(batch), expected, rtol=1e-6)
    logs = model.evaluate(batch, batch_size=8, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["bound"], expected.mean(), rtol=1e-5)


# --- 5. a conditional model ---------------------------------------------------------------


def test_conditional_model_fits():
    """q(z|x, c), p(z|c), p(x|z, c) with x the bottom and c the top half of each digit:
    150 Adam steps lower the loss by MIN_CONDITIONAL_DROP nats and update
    the prior, which is routed to model_variables."""
    keras.utils.set_random_seed(0)
    model = _model(mco.IWAE(K), event_size=784 - HALF, conditional=True)
    data = {"x": TRAIN[:, HALF:], "context": TRAIN[:, :HALF]}
    _compile(model, keras.optimizers.Adam(1e-3), {key: v[:BATCH] for key, v in data.items()})
    prior_before = [v.numpy() for v in model.prior.trainable_variables]
    history = model.fit(data, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0).history
    loss = np.array(history["loss"])
    print(f"conditional: loss {loss.round(2)}, drop {loss[0] - loss[-1]:.2f}")
    assert loss[0] - loss[-1] > MIN_CONDITIONAL_DROP
    assert _by_id(model.prior.trainable_variables) <= _by_id(model.model_variables)
    for before, var in zip(prior_before, model.prior.trainable_variables, strict=True):
        assert np.max(np.abs(var.numpy() - before)) > 1e-4, var.name


# --- 6. errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("objective", [None, "iwae", lambda q, lj, seed: None, mco.IWAE])
def test_objective_not_an_mcobjective_is_type_error(objective):
    with pytest.raises(TypeError, match="`objective`"):
        _model(objective)


def test_batch_with_targets_is_value_error():
    model = _compile(_model(mco.IWAE(2)), _adam())
    x = TRAIN[:BATCH]
    with pytest.raises(ValueError, match="targets"):
        model.objective_result((x, x), seed=1)
    with pytest.raises(ValueError, match="targets"):
        model.fit(x, x, batch_size=BATCH, verbose=0)


@pytest.mark.parametrize(
    "keys", [("x", "y"), ("x", "seeds"), ("images",), ("context",)], ids="-".join
)
def test_dict_batch_with_unknown_or_missing_key_is_value_error(keys):
    model = _built(mco.IWAE(2))
    batch = {key: TRAIN[:4] for key in keys}
    with pytest.raises(ValueError, match="'x'"):
        model.objective_result(batch, seed=1)


def test_context_for_an_unbuilt_unconditional_model_is_value_error():
    """Before the layers are built, the library's own message is reached."""
    model = _model(mco.IWAE(2))
    with pytest.raises(ValueError, match="fixed distribution"):
        model.objective_result({"x": TRAIN[:4], "context": TRAIN[:4, :HALF]}, seed=1)


def test_context_for_a_built_unconditional_model_has_a_clear_message():
    model = _built(mco.IWAE(2))
    with pytest.raises(ValueError, match="fixed distribution"):
        model.objective_result({"x": TRAIN[:4], "context": TRAIN[:4, :HALF]}, seed=1)


def test_missing_context_for_an_unbuilt_conditional_model_is_value_error():
    model = _model(mco.IWAE(2), event_size=784 - HALF, conditional=True)
    with pytest.raises(ValueError, match="'context'"):
        model.objective_result(TRAIN[:4, HALF:], seed=1)


def test_missing_context_for_a_built_conditional_model_has_a_clear_message():
    model = _model(mco.IWAE(2), event_size=784 - HALF, conditional=True)
    model({"x": TRAIN[:4, HALF:], "context": TRAIN[:4, :HALF]})
    with pytest.raises(ValueError, match="'context'"):
        model.objective_result(TRAIN[:4, HALF:], seed=1)


def test_make_train_step_with_another_optimizer_is_value_error():
    model = _built(mco.IWAE(2))
    model.compile(optimizer=_adam())
    with pytest.raises(ValueError, match="compiled"):
        mco.make_train_step(model, _adam())


def test_make_train_step_argument_types():
    model = _built(mco.IWAE(2))
    with pytest.raises(TypeError, match="`model`"):
        mco.make_train_step(object(), _adam())
    with pytest.raises(TypeError, match="`optimizer`"):
        mco.make_train_step(model, "adam")
    with pytest.raises(TypeError, match="`jit_compile`"):
        mco.make_train_step(model, _adam(), jit_compile=1)


@pytest.mark.parametrize("method", ["train_on_batch", "test_on_batch"])
def test_on_batch_with_images_alone(method):
    model = _compile(_model(mco.IWAE(2)), _adam())
    logs = getattr(model, method)(TRAIN[:BATCH], return_dict=True)
    assert set(logs) == {"loss", "bound", "ess", "nonfinite_steps"}


# --- 7. log_marginal ----------------------------------------------------------------------

NUM_SAMPLES, CHUNK = 5000, 500
LOG_MARGINAL_SEED = tf.constant([17, 23], tf.int32)


@functools.cache
def _trained_model():
    """An IWAE model after 50 Adam steps."""
    keras.utils.set_random_seed(0)
    model = _compile(_model(mco.IWAE(K)), keras.optimizers.Adam(1e-3))
    model.fit(TRAIN, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    return model


@functools.cache
def _log_marginal(chunk_size):
    """model.log_marginal of the trained model on 4 test images (cached: tests share it)."""
    x = tf.constant(TEST[:4])
    return _trained_model().log_marginal(x, LOG_MARGINAL_SEED, NUM_SAMPLES, chunk_size).numpy()


@functools.cache
def _replayed(chunk_size):
    """The trained model's replayed log weights for _log_marginal(chunk_size)."""
    x = tf.constant(TEST[:4])
    return _replayed_log_weights(_trained_model(), x, LOG_MARGINAL_SEED, NUM_SAMPLES, chunk_size)


def _replayed_log_weights(model, x, seed, num_samples, chunk_size):
    """log w of every sample log_marginal_estimate draws: chunk i uses the i-th seed of
    stateless_split(stateless_seed(seed), num_chunks), the last chunk holding the rest."""
    full, remainder = divmod(num_samples, chunk_size)
    lengths = [chunk_size] * full + ([remainder] if remainder else [])
    seeds = tf.random.experimental.stateless_split(sampling.stateless_seed(seed), len(lengths))
    q, log_joint = model.posterior(x), model.log_joint(x)
    log_w = []
    for i, n in enumerate(lengths):
        z = sampling.sample(q, n, seeds[i])
        log_w.append((log_joint(z) - q.log_prob(z)).numpy().astype(np.float64))
    log_w = np.concatenate(log_w, axis=0)
    assert log_w.shape == (num_samples, x.shape[0])
    return log_w


def _log_mean_exp(log_w):
    m = log_w.max(axis=0)
    return m + np.log(np.mean(np.exp(log_w - m), axis=0))


@pytest.mark.parametrize("chunk_size", [CHUNK, 700, NUM_SAMPLES])
def test_log_marginal_replays_its_chunks(chunk_size):
    """model.log_marginal equals a NumPy log-mean-exp over the replayed chunks' log weights
    (10 chunks of 500; 7 of 700 and a remainder of 100; one chunk of 5000), to 1e-4."""
    ours = _log_marginal(chunk_size)
    expected = _log_mean_exp(_replayed(chunk_size))
    print(f"chunk {chunk_size}: {ours.round(3)}; max |diff| {np.max(np.abs(ours - expected)):.2g}")
    assert ours.shape == (4,)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


def test_log_marginal_chunked_agrees_with_unchunked():
    """Chunks of 500 and one chunk of 5000 draw different samples; their estimates agree
    within 5 standard errors of the difference, sqrt(2) * sqrt(Var(w) / K) / E[w] (delta
    method, estimated from the draws); both exceed the IWAE(8) bound on average."""
    chunked, unchunked = _log_marginal(CHUNK), _log_marginal(NUM_SAMPLES)
    log_w = _replayed(NUM_SAMPLES)
    w = np.exp(log_w - log_w.max(axis=0))
    standard_error = np.sqrt(w.var(axis=0) / NUM_SAMPLES) / w.mean(axis=0)
    tolerance = 5.0 * math.sqrt(2.0) * standard_error
    print(
        f"chunked {chunked.round(3)}, unchunked {unchunked.round(3)}, "
        f"|diff| {np.abs(chunked - unchunked).round(3)}, tolerance {tolerance.round(3)}"
    )
    assert np.all(np.abs(chunked - unchunked) < tolerance)
    assert np.all(chunked != unchunked)  # different draws
    model = _trained_model()
    iwae_bound = model.objective_result(TEST[:4], seed=LOG_MARGINAL_SEED).bound.numpy()
    assert np.mean(chunked) > np.mean(iwae_bound)


def test_log_marginal_with_a_conditional_model():
    """log_marginal reads x and the context from a dict batch (one chunk, replayed)."""
    model = _model(mco.IWAE(2), event_size=784 - HALF, conditional=True)
    batch = {"x": TEST[:3, HALF:], "context": TEST[:3, :HALF]}
    model(batch)
    ours = model.log_marginal(batch, 3, num_samples=50, chunk_size=50).numpy()
    q = model.posterior(batch["x"], batch["context"])
    log_joint = model.log_joint(batch["x"], batch["context"])
    z = sampling.sample(
        q, 50, tf.random.experimental.stateless_split(sampling.stateless_seed(3), 1)[0]
    )
    expected = _log_mean_exp((log_joint(z) - q.log_prob(z)).numpy().astype(np.float64))
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


# --- 8. active units ----------------------------------------------------------------------


def _means_with_variances(variances, n=1000):
    """[n, D] means whose columns have exactly the given (population) variances."""
    z = np.random.default_rng(4).normal(size=(n, len(variances)))
    z = (z - z.mean(axis=0)) / z.std(axis=0)
    return z * np.sqrt(variances) + 3.0


VARIANCES = [1e-4, 5e-3, 2e-2, 1.0]


def test_active_units_counts_columns_above_threshold(mode):
    means = tf.constant(_means_with_variances(VARIANCES), tf.float32)
    counts = in_mode(
        lambda m: [
            mco.active_units(m),
            mco.active_units(m, threshold=1e-3),
            mco.active_units(m, threshold=1e-5),
            mco.active_units(m, threshold=0.5),
            mco.active_units(m, threshold=2.0),
        ],
        mode,
    )(means)
    assert [int(c) for c in counts] == [2, 3, 4, 1, 0]
    assert counts[0].dtype == tf.int32


def test_active_units_of_a_model():
    """The encoder means of 200 digits under the trained model: at the default threshold
    1e-2 and at a threshold between each two units' activities, the count is NumPy's count
    of the units whose mean varies more (measured after 50 steps: all 8 active at 1e-2,
    variances 0.37 to 1.36)."""
    model = _trained_model()
    means = model.posterior(TRAIN[:200]).mean()
    variances = np.sort(np.var(means.numpy().astype(np.float64), axis=0))
    count = int(mco.active_units(means))
    print(f"active units after 50 steps: {count} of {LATENT}; variances {variances.round(4)}")
    assert count == np.sum(variances > 1e-2)
    for threshold in (variances[1:] + variances[:-1]) / 2:
        expected = np.sum(variances > threshold)
        assert int(mco.active_units(means, threshold=float(threshold))) == expected, threshold


@pytest.mark.parametrize("shape", [(10,), (10, 4, 1), ()], ids=str)
def test_active_units_bad_rank_is_value_error(shape):
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        mco.active_units(np.zeros(shape, np.float32))


@pytest.mark.parametrize("threshold", [0.0, -1e-2, True, "0.01"])
def test_active_units_bad_threshold_is_value_error(threshold):
    with pytest.raises(ValueError, match="threshold"):
        mco.active_units(np.zeros((5, 2), np.float32), threshold=threshold)


# --- 9. structured latents: two stochastic layers, a sigmoid belief net --------------------

# Small two-layer model: z1 of 8 and z2 of 4 units, widths 64 (x <-> z1) and 32 (z1 <-> z2).
TWO_LAYER_LATENTS = (8, 4)
SBN_LATENTS = (32, 16)
# Decrease of the mean loss from the first epoch to the third (25 steps each, Adam 3e-3).
# Measured: two-layer 33.7 (IWAE), 33.0 (DReG); SBN 6.0 (RWS), 5.4 nats (VIMCO). The
# margins are about half the smallest.
MIN_TWO_LAYER_DROP = 15.0
MIN_SBN_DROP = 2.5
STRUCTURED_EPOCHS, STRUCTURED_LEARNING_RATE = 3, 3e-3


def _two_layer_model(objective, *, seed=SEED):
    return mco.ImportanceWeightedAutoencoder(
        encoder=TwoLayerGaussianEncoder(TWO_LAYER_LATENTS, (HIDDEN, (32,))),
        decoder=BernoulliDecoder(784, HIDDEN, mean_pixel=MEAN_PIXEL, latent="z1"),
        prior=TwoLayerGaussianPrior(TWO_LAYER_LATENTS, (32,)),
        objective=objective,
        seed=seed,
    )


def _sbn_model(objective, *, seed=SEED):
    return mco.ImportanceWeightedAutoencoder(
        encoder=SigmoidBeliefEncoder(SBN_LATENTS),
        decoder=BernoulliDecoder(784, (), mean_pixel=MEAN_PIXEL, latent="z1"),
        prior=SigmoidBeliefPrior(SBN_LATENTS),
        objective=objective,
        seed=seed,
    )


def _fit_structured(model, epochs=STRUCTURED_EPOCHS):
    keras.utils.set_random_seed(0)
    _compile(model, keras.optimizers.Adam(STRUCTURED_LEARNING_RATE))
    history = model.fit(TRAIN, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0)
    return {key: np.array(value) for key, value in history.history.items()}


@pytest.mark.parametrize("name", ["IWAE", "DReG(0)"])
def test_two_layer_model_fits(name):
    """q(z1|x) q(z2|z1), p(z2) p(z1|z2), p(x|z1): 75 Adam steps on real digits lower the
    mean epoch loss by MIN_TWO_LAYER_DROP nats and move the prior's conditional."""
    model = _two_layer_model(OBJECTIVES[name]())
    model(TRAIN[:BATCH])
    assert isinstance(model.posterior(TRAIN[:BATCH]), tfd.JointDistributionNamed)
    prior_before = [v.numpy() for v in model.prior.trainable_variables]
    history = _fit_structured(model)
    loss = history["loss"]
    print(f"two-layer {name}: loss {loss.round(2)}, drop {loss[0] - loss[-1]:.2f}")
    assert np.all(np.isfinite(loss))
    assert loss[0] - loss[-1] > MIN_TWO_LAYER_DROP
    np.testing.assert_allclose(history["bound"], -loss, rtol=1e-6)
    assert np.all((history["ess"] >= 1.0) & (history["ess"] <= K))
    for before, var in zip(prior_before, model.prior.trainable_variables, strict=True):
        assert np.max(np.abs(var.numpy() - before)) > 1e-4, var.path


def test_two_layer_variable_routing():
    """The prior layer's variables (p(z1|z2)) are model variables; the encoder's two
    conditionals are the inference variables; together they are every trainable weight."""
    model = _two_layer_model(mco.IWAE(K))
    model(TRAIN[:BATCH])
    prior_ids = _by_id(model.prior.trainable_variables)
    assert len(prior_ids) == 4
    assert _by_id(model.model_variables) == _by_id(model.decoder.trainable_variables) | prior_ids
    assert _by_id(model.inference_variables) == _by_id(model.encoder.trainable_variables)
    assert _by_id(model.trainable_variables) == _by_id(
        model.model_variables + model.inference_variables
    )


@modes(
    *GRAPH_MODES,
    slow=("function",),
    reason="make_train_step's step is a tf.function; the flat model above runs it without "
    "XLA by default (a joint q changes what is traced, not how)",
)
def test_two_layer_make_train_step_matches_fit(mode):
    """make_train_step on a structured q: from the same weights, 3 steps give the weights
    3 fit steps give (to 1e-5), with per-step seeds from the optimizer's counter."""
    reference = _two_layer_model(mco.DReG(K))
    reference(TRAIN[:BATCH])
    initial = reference.get_weights()
    _compile(reference, _adam())
    fit_loss = reference.fit(
        TRAIN[: NUM_STEPS * BATCH], batch_size=BATCH, epochs=1, shuffle=False, verbose=0
    ).history["loss"][0]

    model = _two_layer_model(mco.DReG(K))
    model(TRAIN[:BATCH])
    model.set_weights(initial)
    optimizer = _adam()
    optimizer.build(model.model_variables + model.inference_variables)
    step = mco.make_train_step(model, optimizer, jit_compile=mode == "xla")
    losses = [
        float(step(tf.constant(TRAIN[i * BATCH : (i + 1) * BATCH]))["loss"])
        for i in range(NUM_STEPS)
    ]
    assert optimizer.iterations.numpy() == NUM_STEPS
    for ours, theirs in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.mean(losses), fit_loss, rtol=1e-5)


def test_two_layer_per_example_seeds_bound_invariant_to_splitting_the_batch():
    """Per-example seeds reach every part of a joint q: the halves' bounds are the batch's."""
    model = _two_layer_model(mco.DReG(K))
    model(TRAIN[:BATCH])
    x = tf.constant(TEST)
    seeds = tf.constant(np.random.default_rng(3).integers(0, 2**31 - 1, (8, 2)), tf.int32)
    full = model.objective_result({"x": x, "seed": seeds}).bound.numpy()
    first = model.objective_result({"x": x[:4], "seed": seeds[:4]}).bound.numpy()
    second = model.objective_result({"x": x[4:], "seed": seeds[4:]}).bound.numpy()
    np.testing.assert_allclose(np.concatenate([first, second]), full, rtol=1e-5)


@pytest.mark.parametrize("name", ["RWS", "VIMCO"])
def test_sbn_fits_with_score_function_objectives(name):
    """A sigmoid belief net (int32 q(z1|x) q(z2|z1), learnable p(z2), linear-sigmoid
    p(z1|z2) and p(x|z1)): fit lowers the loss by MIN_SBN_DROP nats in 75 steps and moves
    the prior's top logits."""
    objective = mco.RWS(K) if name == "RWS" else mco.VIMCO(K)
    model = _sbn_model(objective)
    model(TRAIN[:BATCH])
    q = model.posterior(TRAIN[:BATCH])
    assert q.dtype == {"z1": tf.int32, "z2": tf.int32}
    logits_before = model.prior.top_logits.numpy()
    history = _fit_structured(model)
    loss = history["loss"]
    print(f"SBN {name}: loss {loss.round(2)}, drop {loss[0] - loss[-1]:.2f}")
    assert np.all(np.isfinite(loss))
    assert loss[0] - loss[-1] > MIN_SBN_DROP
    assert np.max(np.abs(model.prior.top_logits.numpy() - logits_before)) > 1e-4


def test_sbn_with_dreg_is_refused_naming_the_leaf():
    model = _sbn_model(mco.DReG(K))
    with pytest.raises(ValueError, match=r"leaf 'z1' of `q` is discrete \(int32\)"):
        model.objective_result(TRAIN[:BATCH], seed=1)


@pytest.mark.parametrize("kind", ["two_layer", "sbn"])
def test_log_marginal_with_a_structured_q(kind):
    """log_marginal of a joint q (Gaussian or int32) equals the replayed log-mean-exp."""
    model = _two_layer_model(mco.IWAE(2)) if kind == "two_layer" else _sbn_model(mco.RWS(2))
    x = tf.constant(TEST[:3])
    model(x)
    ours = model.log_marginal(x, 3, num_samples=50, chunk_size=50).numpy()
    q, log_joint = model.posterior(x), model.log_joint(x)
    z = sampling.sample(
        q, 50, tf.random.experimental.stateless_split(sampling.stateless_seed(3), 1)[0]
    )
    expected = _log_mean_exp((log_joint(z) - q.log_prob(z)).numpy().astype(np.float64))
    assert ours.shape == (3,)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-4)


class _CountingPrior(keras.layers.Layer):
    """An unconditional prior layer N(m, I) with a learnable mean; records its calls."""

    def __init__(self):
        super().__init__(name="counting_prior")
        self.calls = []

    def build(self, input_shape=None):
        self.loc = self.add_weight(shape=(LATENT,), initializer="zeros", name="loc")

    def call(self, context=None):
        self.calls.append(context)
        return tfd.Independent(tfd.Normal(tf.convert_to_tensor(self.loc), 1.0), 1)


def test_unconditional_prior_layer_is_called_without_arguments():
    """A prior layer and a batch without context: the model calls prior(), and the layer's
    variables are model variables that the objective's gradient reaches."""
    prior = _CountingPrior()
    model = mco.ImportanceWeightedAutoencoder(
        GaussianEncoder(LATENT, HIDDEN), BernoulliDecoder(784, HIDDEN), prior, mco.IWAE(K)
    )
    grads, variables, _ = model.compute_gradients(TRAIN[:BATCH], seed=1)
    assert prior.calls and all(c is None for c in prior.calls)
    assert _by_id(prior.trainable_variables) <= _by_id(model.model_variables)
    grad = grads[[id(v) for v in variables].index(id(prior.loc))]
    assert np.any(grad.numpy() != 0)
    with pytest.raises(ValueError, match="unconditional"):
        mco.ImportanceWeightedAutoencoder(
            TwoLayerGaussianEncoder(TWO_LAYER_LATENTS, (HIDDEN, (32,))),
            BernoulliDecoder(784 - HALF, HIDDEN, latent="z1"),
            TwoLayerGaussianPrior(TWO_LAYER_LATENTS, (32,)),
            mco.IWAE(K),
        ).objective_result({"x": TRAIN[:4, HALF:], "context": TRAIN[:4, :HALF]}, seed=1)
