"""Several training steps per call: `compile(steps_per_execution=N)` with `fit`, and
`make_train_step(..., steps_per_call=N)`.

Each claim is checked against the same run with one step per call: the same weights
(bit for bit: the same compiled step runs on the same inputs, in the same order), the
same logs, the same skipped and counted non-finite steps, and the same stall error naming
the same step. Every registered objective is run (score-function objectives on a sigmoid
belief net's Bernoulli q, the others on a Gaussian q), and RWS with its sleep phases.
The data are synthetic binary pixels from a fixed NumPy seed; the networks are tiny so
that each fit takes a fraction of a second.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives.core.surrogate import GradientPath
from mcobjectives.networks import (
    BernoulliDecoder,
    GaussianEncoder,
    SigmoidBeliefEncoder,
    SigmoidBeliefPrior,
)

tfd = tfp.distributions

PIXELS, LATENT, HIDDEN, K, BATCH, NUM_BATCHES = 16, 3, (8,), 4, 4, 7
X = (np.random.default_rng(0).random((BATCH * NUM_BATCHES, PIXELS)) < 0.4).astype(np.float32)


def _objective(name: str, **kwargs) -> mco.MCObjective:
    cls = mco.objectives.OBJECTIVES[name]
    if cls is mco.MIWAE or cls is mco.PIWAE:
        kwargs.setdefault("num_outer", 2)
    return mco.make_objective(name, K, **kwargs)


def _model(objective: mco.MCObjective, **kwargs) -> mco.ImportanceWeightedAutoencoder:
    """A Bernoulli q (a one-layer sigmoid belief net) for score-function objectives, else
    a Gaussian q, both with a Bernoulli decoder."""
    if objective.gradient_path is GradientPath.SCORE:
        encoder, prior = SigmoidBeliefEncoder((LATENT,)), SigmoidBeliefPrior((LATENT,))
        decoder = BernoulliDecoder(PIXELS, HIDDEN, latent="z1")
    else:
        encoder, decoder = GaussianEncoder(LATENT, HIDDEN), BernoulliDecoder(PIXELS, HIDDEN)
        prior = tfd.Independent(tfd.Normal(tf.zeros(LATENT), tf.ones(LATENT)), 1)
    return mco.ImportanceWeightedAutoencoder(encoder, decoder, prior, objective, seed=5, **kwargs)


def _fit(objective_of, steps_per_execution: int, x=X, jit_compile=False, **kwargs):
    keras.utils.set_random_seed(1)  # the same initial weights for every run
    model = _model(objective_of(), **kwargs)
    model.compile(
        keras.optimizers.Adam(1e-2),
        steps_per_execution=steps_per_execution,
        jit_compile=jit_compile,
    )
    history = model.fit(x, batch_size=BATCH, epochs=2, shuffle=False, verbose=0).history
    return model, history


def _same_weights(a, b) -> None:
    assert len(a.weights) == len(b.weights)
    for u, v in zip(a.weights, b.weights, strict=True):
        np.testing.assert_array_equal(u.numpy(), v.numpy(), err_msg=u.path)


def _same_history(a: dict, b: dict) -> None:
    assert set(a) == set(b) == {"loss", "bound", "ess", "nonfinite_steps"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


# One of the total and score gradient paths, DisARM's, and the sleep phase run by default
# (DReG's split path in the make_train_step and XLA checks); the rest in the slow run.
FAST = {"iwae", "vimco", "disarm", "rws-wake_sleep"}


def _objective_params(fast=FAST) -> list:
    cases = [(name, {}) for name in mco.objective_names()] + [
        ("rws", {"inference_update": "sleep"}),
        ("rws", {"inference_update": "wake_sleep"}),
    ]
    params = []
    for name, kwargs in cases:
        case_id = name + "".join(f"-{v}" for v in kwargs.values())
        marks = () if case_id in fast else (pytest.mark.slow,)
        params.append(pytest.param(name, kwargs, id=case_id, marks=marks))
    return params


# --- fit with compile(steps_per_execution=N) --------------------------------------------


@pytest.mark.parametrize(("name", "kwargs"), _objective_params())
def test_fit_with_three_steps_per_execution_gives_the_weights_and_logs_of_one(name, kwargs):
    """7 batches a epoch, blocks of 3, 3 and 1 (a partial block), over two epochs: each
    step draws the seed of its optimizer step, as with one step per execution."""
    one, history_one = _fit(lambda: _objective(name, **kwargs), 1)
    three, history_three = _fit(lambda: _objective(name, **kwargs), 3)
    assert int(three.optimizer.iterations) == int(one.optimizer.iterations) == 2 * NUM_BATCHES
    _same_weights(one, three)
    _same_history(history_one, history_three)


@pytest.mark.parametrize(
    "name", ["dreg", pytest.param("disarm", marks=pytest.mark.slow),
             pytest.param("vimco", marks=pytest.mark.slow)],
)  # fmt: skip
def test_fit_under_xla_with_steps_per_execution_gives_the_weights_of_one_step(name):
    one, history_one = _fit(lambda: _objective(name), 1, jit_compile=True)
    four, history_four = _fit(lambda: _objective(name), 4, jit_compile=True)
    _same_weights(one, four)
    _same_history(history_one, history_four)


def test_a_non_finite_step_inside_a_block_is_skipped_and_counted_as_with_one_step():
    """Batch 2 (inside the first block of 3) holds a NaN pixel."""
    x = X.copy()
    x[BATCH + 1, 3] = np.nan
    one, history_one = _fit(lambda: mco.IWAE(K), 1, x)
    three, history_three = _fit(lambda: mco.IWAE(K), 3, x)
    assert history_three["nonfinite_steps"] == [1, 2]  # once per epoch
    assert int(three.optimizer.iterations) == 2 * (NUM_BATCHES - 1)
    _same_weights(one, three)
    _same_history(history_one, history_three)
    assert all(np.isfinite(w).all() for w in three.get_weights())


@pytest.mark.parametrize("jit_compile", [False, True], ids=["tf.function", "xla"])
def test_a_stall_inside_a_block_stops_fit_naming_its_step_and_the_rest_is_not_taken(
    jit_compile,
):
    """Batches 2 and 3 are NaN (max_nonfinite_steps=2), the block is all 7 batches: the
    run stalls at step 3; steps 4 to 7 of the block are neither applied nor counted, so
    the model is that of one step per execution, stopped after step 3."""
    x = X.copy()
    x[BATCH : 3 * BATCH] = np.nan
    models = []
    for n in (1, NUM_BATCHES):
        keras.utils.set_random_seed(1)
        model = _model(mco.IWAE(K), max_nonfinite_steps=2)
        model.compile(keras.optimizers.Adam(1e-2), steps_per_execution=n, jit_compile=jit_compile)
        with pytest.raises(
            FloatingPointError, match="2 consecutive training steps, the last being step 3 "
        ):
            model.fit(x, batch_size=BATCH, shuffle=False, verbose=0)
        assert int(model.optimizer.iterations) == 1 and int(model.nonfinite_steps) == 2
        models.append(model)
    _same_weights(*models)


def test_after_a_stall_training_resumes_with_a_fresh_count():
    x = X.copy()
    x[: 2 * BATCH] = np.nan
    model = _model(mco.IWAE(K), max_nonfinite_steps=2)
    model.compile(keras.optimizers.Adam(1e-2), steps_per_execution=3)
    with pytest.raises(FloatingPointError, match="the last being step 2 "):
        model.fit(x, batch_size=BATCH, shuffle=False, verbose=0)
    assert int(model.nonfinite_run) == 0
    history = model.fit(X, batch_size=BATCH, shuffle=False, verbose=0).history
    assert int(model.optimizer.iterations) == NUM_BATCHES
    assert history["nonfinite_steps"] == [2]


def test_a_run_already_stalled_when_fit_starts_stops_it_at_the_first_batch():
    """The stall callback reads the counters after a batch that skipped a step and after
    the first batch of every fit: a run stalled before `fit` (here set by hand) takes no
    step and raises there."""
    model = _model(mco.IWAE(K), max_nonfinite_steps=2)
    model.compile(keras.optimizers.Adam(1e-2))
    model(X[:BATCH])
    model.nonfinite_run.assign(2)
    with pytest.raises(FloatingPointError, match="2 consecutive training steps"):
        model.fit(X, batch_size=BATCH, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 0 and int(model.nonfinite_run) == 0


# --- fit and evaluate with one step per execution: the step's own function --------------


@pytest.mark.parametrize(
    "jit_compile",
    [False, pytest.param(True, marks=pytest.mark.slow)],  # XLA: test_fit_under_xla_... above
    ids=["tf.function", "xla"],
)
def test_one_step_per_execution_gives_the_weights_logs_and_evaluation_of_keras_functions(
    jit_compile, monkeypatch
):
    """Without a strategy `fit` and `evaluate` call the step's own `tf.function`
    (`mcobjectives.keras.step_functions`); Keras's functions around the same step, forced
    here, give the same weights, logs and evaluation bit for bit. 6 full batches and a
    last one of 2 (a second batch shape, relaxed by `reduce_retracing`) over two epochs."""
    x = X[:-2]
    runs = []
    for own in (True, False):
        if not own:
            monkeypatch.setattr(mco.keras.step_functions, "one_step_function", lambda *args: None)
        model, history = _fit(lambda: mco.IWAE(K), 1, x, jit_compile=jit_compile)
        evaluation = model.evaluate(x, batch_size=BATCH, verbose=0, return_dict=True)
        runs.append((model, history, evaluation))
    (own, history_own, evaluation_own), (kept, history_kept, evaluation_kept) = runs
    assert int(own.optimizer.iterations) == int(kept.optimizer.iterations) == 2 * NUM_BATCHES
    _same_weights(own, kept)
    _same_history(history_own, history_kept)
    assert evaluation_own == evaluation_kept


def test_the_step_own_function_is_used_only_where_keras_own_adds_nothing():
    """Keras's functions remain for several steps per execution, `run_eagerly` and a
    distribution strategy; the step's own function replaces them elsewhere."""
    from mcobjectives.keras.step_functions import one_step_function

    def compiled(**kwargs):
        model = _model(mco.IWAE(K))
        model.compile(keras.optimizers.Adam(1e-2), **kwargs)
        return model

    assert callable(one_step_function(compiled(), lambda data: data))
    assert one_step_function(compiled(steps_per_execution=2), lambda data: data) is None
    assert one_step_function(compiled(run_eagerly=True), lambda data: data) is None
    with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
        model = compiled()
    assert one_step_function(model, lambda data: data) is None


# --- make_train_step(..., steps_per_call=N) ---------------------------------------------


def _stacked(x: np.ndarray, n: int) -> np.ndarray:
    return x.reshape(-1, n, BATCH, *x.shape[1:])


def _single_and_multi(objective_of, x, n, **kwargs):
    """The logs of single steps over x's batches and of steps of n over the same batches."""
    runs = []
    for steps_per_call in (1, n):
        keras.utils.set_random_seed(1)
        model = _model(objective_of(), **kwargs)
        model(x[:BATCH])
        step = mco.make_train_step(
            model, keras.optimizers.Adam(1e-2), jit_compile=False, steps_per_call=steps_per_call
        )
        if steps_per_call == 1:
            logs = [step(tf.constant(b)) for b in x.reshape(-1, BATCH, *x.shape[1:])]
        else:
            logs = [step(tf.constant(b)) for b in _stacked(x, n)]
        runs.append((model, logs))
    return runs


def _stack_logs(logs: list[dict]) -> dict:
    return {k: np.concatenate([np.reshape(d[k].numpy(), [-1]) for d in logs]) for k in logs[0]}


@pytest.mark.parametrize(
    ("name", "kwargs"), _objective_params({"dreg", "disarm", "rws-wake_sleep"})
)
def test_make_train_step_with_three_steps_per_call_is_three_single_steps(name, kwargs):
    """6 batches as 2 calls of 3 stacked: the same weights and the per-step logs stacked."""
    (one, logs_one), (three, logs_three) = _single_and_multi(
        lambda: _objective(name, **kwargs), X[: 6 * BATCH], 3
    )
    assert all(v.shape == (3,) for v in logs_three[0].values())
    assert int(three.optimizer.iterations) == 6
    _same_weights(one, three)
    single, multi = _stack_logs(logs_one), _stack_logs(logs_three)
    for key in single:
        np.testing.assert_array_equal(single[key], multi[key], err_msg=key)


def test_make_train_step_under_xla_with_steps_per_call_is_single_steps():
    runs = []
    for steps_per_call in (1, 3):
        keras.utils.set_random_seed(1)
        model = _model(mco.IWAE(K))
        model(X[:BATCH])
        step = mco.make_train_step(
            model, keras.optimizers.Adam(1e-2), jit_compile=True, steps_per_call=steps_per_call
        )
        batches = X[: 6 * BATCH].reshape(6 // steps_per_call, steps_per_call, BATCH, PIXELS)
        for b in batches:
            step(tf.constant(b if steps_per_call > 1 else b[0]))
        runs.append(model)
    _same_weights(*runs)


def test_per_example_seeds_stacked_with_the_batches_replay_single_steps():
    """Seeds [N, B, 2] beside x [N, B, PIXELS]: step i draws from seeds[i], as alone."""
    seeds = np.arange(6 * BATCH * 2, dtype=np.int32).reshape(6, BATCH, 2)
    xs = X[: 6 * BATCH].reshape(6, BATCH, PIXELS)
    runs = []
    for n in (1, 3):
        keras.utils.set_random_seed(1)
        model = _model(mco.DReG(K))
        model(X[:BATCH])
        step = mco.make_train_step(model, keras.optimizers.Adam(1e-2), steps_per_call=n)
        for i in range(0, 6, n):
            if n == 1:
                step({"x": tf.constant(xs[i]), "seed": tf.constant(seeds[i])})
            else:
                step({"x": tf.constant(xs[i : i + n]), "seed": tf.constant(seeds[i : i + n])})
        runs.append(model)
    _same_weights(*runs)


def test_a_non_finite_step_inside_a_call_is_skipped_and_counted():
    x = X[: 6 * BATCH].copy()
    x[BATCH + 2, 0] = np.inf  # step 2, inside the first call of 3
    (one, _), (three, logs_three) = _single_and_multi(lambda: mco.IWAE(K), x, 3)
    np.testing.assert_array_equal(logs_three[0]["finite"].numpy(), [True, False, True])
    assert int(three.nonfinite_steps) == 1 and int(three.optimizer.iterations) == 5
    _same_weights(one, three)


def test_a_stall_inside_a_call_raises_naming_its_step_and_takes_no_later_step():
    """Steps 2 and 3 of a call of 5 are NaN (max_nonfinite_steps=2): the run stalls at
    step 3, steps 4 and 5 are neither applied nor counted, and the call raises."""
    x = X[: 5 * BATCH].copy()
    x[BATCH : 3 * BATCH] = np.nan
    models = []
    for n in (1, 5):
        keras.utils.set_random_seed(1)
        model = _model(mco.IWAE(K), max_nonfinite_steps=2)
        model(X[:BATCH])
        step = mco.make_train_step(model, keras.optimizers.Adam(1e-2), steps_per_call=n)
        with pytest.raises(
            FloatingPointError, match="2 consecutive training steps, the last being step 3 "
        ):
            if n == 1:
                for b in x.reshape(5, BATCH, PIXELS):
                    step(tf.constant(b))
            else:
                step(tf.constant(_stacked(x, 5)[0]))
        assert int(model.optimizer.iterations) == 1 and int(model.nonfinite_steps) == 2
        models.append(model)
    _same_weights(*models)


@pytest.mark.parametrize(
    ("steps_per_call", "error"),
    [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError), ("3", TypeError)],
)
def test_a_bad_steps_per_call_is_refused_naming_it(steps_per_call, error):
    model = _model(mco.IWAE(K))
    with pytest.raises(error, match="`steps_per_call`"):
        mco.make_train_step(model, keras.optimizers.Adam(), steps_per_call=steps_per_call)


def test_steps_per_call_with_a_strategy_is_refused_naming_it():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model, optimizer = _model(mco.IWAE(K)), keras.optimizers.Adam()
    with pytest.raises(ValueError, match="`steps_per_call`=2 with a `strategy`"):
        mco.make_train_step(model, optimizer, strategy=strategy, steps_per_call=2)


@pytest.mark.parametrize(
    ("batch", "named"),
    [
        (lambda: tf.constant(X[:BATCH]), "`x` must be 3 batches stacked"),
        (lambda: tf.constant(_stacked(X[: 4 * BATCH], 2)[0]), "`x` must be 3 batches stacked"),
        (
            lambda: {"x": tf.constant(_stacked(X[: 3 * BATCH], 3)[0]),
                     "seed": tf.zeros([2, BATCH, 2], tf.int32)},
            "`seed` must be 3 batches stacked",
        ),
        (lambda: tf.zeros([3, BATCH, PIXELS + 1]), "x"),
    ],
    ids=["one batch", "two stacked", "seeds of two", "a pixel too many"],
)  # fmt: skip
def test_a_batch_that_is_not_n_stacked_batches_is_refused_before_tracing(batch, named):
    model = _model(mco.IWAE(K))
    model(X[:BATCH])
    step = mco.make_train_step(model, keras.optimizers.Adam(), steps_per_call=3)
    with pytest.raises(ValueError, match=named):
        step(batch())
    assert step.experimental_get_tracing_count() == 0


@pytest.mark.slow
def test_the_keras_loop_benchmark_runs_and_prints_its_ratios(tmp_path):
    """A smoke run of benchmarks/keras_loop.py (K = 1, 10 steps, one round)."""
    import json
    import pathlib
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    out = tmp_path / "keras_loop.json"
    command = [sys.executable, str(root / "benchmarks" / "keras_loop.py"), "--ks", "1",
               "--steps", "10", "--rounds", "1", "--blocks", "1,2", "--out", str(out)]  # fmt: skip
    printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert "fit(spe=2) / fit(spe=1)" in printed and "loop(spc=2) / loop(spc=1)" in printed
    assert "fit(spe=1) / data loop(spc=1)" in printed
    ratios = json.loads(out.read_text())["ms_per_step"]["K=1"]["ratios"]
    assert all(value > 0 for value in ratios.values())
