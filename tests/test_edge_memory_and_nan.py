"""Issue 17, items 5 and 2 (diagnostics): memory refused before it is allocated; NaN refused.

Memory: a call whose sample tensors would exceed `mcobjectives.limits`' sample-memory
limit is refused with a ValueError naming the argument (`num_samples`, `chunk_size`), the
bytes it would need, the limit and the fix, before anything is allocated or traced. Before
this work each of these 10^9-sample calls ended in TensorFlow's ResourceExhaustedError
(an int64 range of 3.2e10 counters) after the allocation was tried. The limit's own
override (function, context manager, environment variable) is tested with small limits,
so nothing here allocates much.

NaN: `gradient_statistics`, `directional_snr`, `t_statistic_summary` and `active_units`
refuse NaN and inf estimates, naming how many (before: NaN mean and SNR, a NaN unit
silently left out of the count).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import diagnostics, limits, sampling
from tests.conftest import in_mode, modes

tfd = tfp.distributions

B, D = 4, 8
HUGE = 10**9
# 10^9 draws of a [4, 8] float32 q: 10^9 * 32 * 4 bytes.
HUGE_BYTES = HUGE * B * D * 4


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch):
    """Every test starts from the default limit, with the environment variable unset, and
    leaves it so (a test that changes the limit cannot leak it into the others)."""
    monkeypatch.delenv(limits.ENVIRONMENT_VARIABLE, raising=False)
    limits.set_sample_memory_limit(None)
    yield
    monkeypatch.delenv(limits.ENVIRONMENT_VARIABLE, raising=False)
    limits.set_sample_memory_limit(None)


def _q(dtype=tf.float32, batch=B, dim=D):
    return tfd.Independent(
        tfd.Normal(tf.zeros([batch, dim], dtype), tf.ones([batch, dim], dtype)), 1
    )


def _log_joint(z):
    return tf.reduce_sum(-0.5 * z**2, axis=-1)


def _joint(big_dim=2):
    return tfd.JointDistributionNamed(
        dict(
            a=tfd.Independent(tfd.Normal(tf.zeros([B, D]), 1.0), 1),
            b=tfd.Independent(tfd.Normal(tf.zeros([B, big_dim]), 1.0), 1),
        )
    )


def _joint_log_joint(z):
    return _log_joint(z["a"]) + _log_joint(z["b"])


def _limit_text() -> str:
    return f"limit of {limits.sample_memory_limit()} bytes"


# --- memory: 10^9 samples, refused naming the argument, the bytes, the limit, the fix ------


@pytest.mark.parametrize("objective", [mco.IWAE, mco.VIMCO, mco.DReG], ids=lambda o: o.__name__)
def test_ten_to_the_nine_samples_in_an_objective_are_refused_naming_num_samples(objective):
    with pytest.raises(ValueError, match=rf"`num_samples` = {HUGE} would need {HUGE_BYTES} bytes"):
        objective(HUGE)(_q(), _log_joint, seed=0)


def test_the_message_gives_the_limit_and_the_largest_num_samples_that_fits():
    per_sample = B * D * 4
    fits = limits.sample_memory_limit() // per_sample
    with pytest.raises(ValueError) as info:
        mco.IWAE(HUGE)(_q(), _log_joint, seed=0)
    message = str(info.value)
    assert _limit_text() in message
    assert f"use `num_samples` <= {fits} ({per_sample} bytes per sample)" in message
    assert "set_sample_memory_limit" in message and limits.ENVIRONMENT_VARIABLE in message
    assert "log_marginal_estimate" in message  # the chunked estimate, for log p(x)


def test_ten_to_the_nine_samples_of_a_joint_q_in_an_objective_name_every_leaf():
    bytes_needed = HUGE * B * (D + 2) * 4
    with pytest.raises(
        ValueError, match=rf"`num_samples` = {HUGE} would need {bytes_needed}"
    ) as info:
        mco.IWAE(HUGE)(_joint(), _joint_log_joint, seed=0)
    message = str(info.value)
    assert f"'a': [{HUGE}, {B}, {D}] float32" in message
    assert f"'b': [{HUGE}, {B}, 2] float32" in message
    assert f"the largest leaf, 'a', {HUGE * B * D * 4} bytes" in message


def test_sampling_sample_of_ten_to_the_nine_is_refused_naming_num_samples():
    with pytest.raises(ValueError, match=rf"`num_samples` = {HUGE} would need {HUGE_BYTES} bytes"):
        sampling.sample(_q(), HUGE, seed=0)


def test_sampling_sample_with_per_example_seeds_is_refused_before_the_seeds_are_read():
    seeds = tf.zeros([B, 2], tf.int32)
    with pytest.raises(ValueError, match=rf"`num_samples` = {HUGE} would need {HUGE_BYTES} bytes"):
        sampling.sample(_q(), HUGE, seeds)


def test_log_marginal_estimate_with_a_chunk_of_ten_to_the_nine_is_refused():
    """One chunk is what is held at once: a chunk of 10^9 is refused naming `chunk_size`."""
    with pytest.raises(ValueError, match=rf"`chunk_size` = {HUGE} would need {HUGE_BYTES}"):
        mco.log_marginal_estimate(_q(), _log_joint, seed=0, num_samples=HUGE, chunk_size=HUGE)


def test_the_keras_models_log_marginal_with_a_chunk_of_ten_to_the_nine_is_refused():
    """`model.log_marginal` goes through `log_marginal_estimate`: refused while tracing, with
    the bytes of 10^9 draws of the model's 2 latents for each of the 3 images."""
    from mcobjectives.networks import BernoulliDecoder, GaussianEncoder

    prior = tfd.Independent(tfd.Normal(tf.zeros(2), tf.ones(2)), 1)
    model = mco.ImportanceWeightedAutoencoder(
        GaussianEncoder(2, [8]), BernoulliDecoder(6, [8]), prior, mco.IWAE(2), seed=0
    )
    x = np.zeros([3, 6], np.float32)
    model(x)
    needed = HUGE * 3 * 2 * 4
    with pytest.raises(ValueError, match=rf"`chunk_size` = {HUGE} would need {needed}"):
        model.log_marginal(x, 0, num_samples=HUGE, chunk_size=HUGE, jit_compile=False)


def test_a_structured_q_whose_one_leaf_is_huge_names_that_leaf():
    q = _joint(big_dim=100_000)
    big = 10**6 * B * 100_000 * 4
    with pytest.raises(ValueError, match=f"the largest leaf, 'b', {big} bytes") as info:
        sampling.sample(q, 10**6, seed=0)
    assert str(info.value).index("'b': [1000000, 4, 100000]") < str(info.value).index("'a'")


def test_float64_samples_need_twice_the_bytes_of_float32():
    assert limits.check_sample_memory(_q(tf.float64), 1000) == 2 * limits.check_sample_memory(
        _q(tf.float32), 1000
    )
    with pytest.raises(ValueError, match=rf"would need {2 * HUGE_BYTES} bytes .* float64"):
        sampling.sample(_q(tf.float64), HUGE, seed=0)


def test_discrete_leaves_count_their_own_dtype_and_a_one_hot_its_categories():
    bernoulli = tfd.Independent(tfd.Bernoulli(logits=tf.zeros([B, D])), 1)
    one_hot = tfd.OneHotCategorical(logits=tf.zeros([B, 5]), dtype=tf.float32)
    assert limits.check_sample_memory(bernoulli, 10) == 10 * B * D * 4  # int32
    assert limits.check_sample_memory(one_hot, 10) == 10 * B * 5 * 4
    with pytest.raises(
        ValueError, match=rf"`num_samples` = {HUGE} would need {HUGE_BYTES} .*int32"
    ):
        sampling.sample(bernoulli, HUGE, seed=0)


def test_an_element_count_beyond_int64_is_refused_even_without_a_limit():
    q = tfd.Sample(tfd.Normal(0.0, 1.0), [2**31 - 1, 2**31 - 1])
    with limits.sample_memory_limit_scope(math.inf):
        with pytest.raises(
            ValueError, match=r"`num_samples` = 2147483647 would draw \d+ numbers.*int64"
        ):
            sampling.sample(q, 2**31 - 1, seed=0)


@modes("function", "xla", reason="the refusal happens while tracing, before anything runs")
def test_an_objective_in_a_graph_is_refused_while_tracing(mode):
    step = in_mode(lambda: mco.IWAE(HUGE)(_q(), _log_joint, seed=0).loss, mode)
    with pytest.raises(ValueError, match=rf"`num_samples` = {HUGE} would need {HUGE_BYTES}"):
        step()


def test_the_check_runs_inside_an_autograph_converted_function():
    """A `tf.function` of a `def` (converted by autograph) runs the check as written: the
    draws equal the eager ones under the limit, and over it the call is refused."""

    def draw():
        return sampling.sample(_q(), 100, seed=7)

    np.testing.assert_array_equal(tf.function(draw)().numpy(), draw().numpy())
    with limits.sample_memory_limit_scope(12799):
        with pytest.raises(ValueError, match=r"`num_samples` = 100 would need 12800 bytes"):
            tf.function(draw)()


def test_a_dynamic_batch_is_checked_per_data_point():
    """Traced for a batch of any size, the check counts B as 1: 10^9 * 8 * 4 bytes."""

    def draw(loc):
        return sampling.sample(tfd.Independent(tfd.Normal(loc, 1.0), 1), HUGE, seed=0)

    traced = tf.function(draw, input_signature=[tf.TensorSpec([None, D])], autograph=False)
    with pytest.raises(ValueError, match=rf"would need {HUGE * D * 4} bytes .*counted as 1"):
        traced.get_concrete_function()


# --- the limit: overridden lower and higher, by function, scope and environment ------------


def test_a_limit_set_lower_refuses_a_small_call_naming_it():
    needed = 100 * B * D * 4  # 12800 bytes
    limits.set_sample_memory_limit(needed - 1)
    with pytest.raises(
        ValueError,
        match=rf"`num_samples` = 100 would need {needed} bytes .*limit of {needed - 1} bytes",
    ):
        sampling.sample(_q(), 100, seed=0)
    with pytest.raises(ValueError, match=r"`num_samples` = 100 would need"):
        mco.IWAE(100)(_q(), _log_joint, seed=0)


def test_a_limit_raised_in_a_scope_allows_the_call_and_is_restored_after_it():
    limits.set_sample_memory_limit(1000)
    with limits.sample_memory_limit_scope("1MiB") as inside:
        assert inside == 2**20
        draws = sampling.sample(_q(), 100, seed=3)
    assert limits.sample_memory_limit() == 1000
    with limits.sample_memory_limit_scope(math.inf):
        unlimited = sampling.sample(_q(), 100, seed=3)
    np.testing.assert_array_equal(draws.numpy(), unlimited.numpy())
    with pytest.raises(ValueError, match="limit of 1000 bytes"):
        sampling.sample(_q(), 100, seed=3)


def test_the_scope_restores_the_limit_when_the_call_inside_it_fails():
    before = limits.sample_memory_limit()
    with pytest.raises(ValueError, match="limit of 10 bytes"):
        with limits.sample_memory_limit_scope(10):
            sampling.sample(_q(), 1, seed=0)
    assert limits.sample_memory_limit() == before


def test_exactly_at_the_limit_passes_with_unlimited_draws_and_one_byte_less_is_refused():
    needed = 37 * B * D * 4
    with limits.sample_memory_limit_scope(math.inf):
        unlimited = sampling.sample(_q(), 37, seed=[5, 6])
        bound = mco.IWAE(37)(_q(), _log_joint, seed=[5, 6]).bound
    with limits.sample_memory_limit_scope(needed):
        at_limit = sampling.sample(_q(), 37, seed=[5, 6])
        at_limit_bound = mco.IWAE(37)(_q(), _log_joint, seed=[5, 6]).bound
    np.testing.assert_array_equal(at_limit.numpy(), unlimited.numpy())
    np.testing.assert_array_equal(at_limit_bound.numpy(), bound.numpy())
    with limits.sample_memory_limit_scope(needed - 1):
        with pytest.raises(ValueError, match=rf"would need {needed} bytes .*limit of {needed - 1}"):
            sampling.sample(_q(), 37, seed=[5, 6])


def test_the_environment_variable_sets_the_limit_when_the_default_is_restored(monkeypatch):
    monkeypatch.setenv(limits.ENVIRONMENT_VARIABLE, "2KiB")
    limits.set_sample_memory_limit(None)
    assert limits.sample_memory_limit() == 2048
    with pytest.raises(
        ValueError, match=r"`num_samples` = 100 would need 12800 bytes .*limit of 2048"
    ) as info:
        sampling.sample(_q(), 100, seed=0)
    assert f"({limits.ENVIRONMENT_VARIABLE}='2KiB')" in str(info.value)
    monkeypatch.setenv(limits.ENVIRONMENT_VARIABLE, "12.8kB")
    limits.set_sample_memory_limit(None)
    assert int(sampling.sample(_q(), 100, seed=0).shape[0]) == 100  # 12800 bytes: at the limit


@pytest.mark.slow  # a fresh Python process importing TensorFlow: about 15 s here
def test_the_environment_variable_is_read_by_a_fresh_process():
    """Read once, when the limit is first needed: a new process sees the variable."""
    code = (
        "import mcobjectives as m, tensorflow as tf, tensorflow_probability as p\n"
        "q = p.distributions.Normal(tf.zeros([4]), 1.0)\n"
        "try:\n    m.sampling.sample(q, 1000, 0)\nexcept ValueError as e:\n    print(e)\n"
    )
    env = dict(os.environ, **{limits.ENVIRONMENT_VARIABLE: "1000", "TF_CPP_MIN_LOG_LEVEL": "3"})
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "`num_samples` = 1000 would need 16000 bytes" in out and "limit of 1000 bytes" in out


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("lots", ValueError, "must be a number of bytes"),
        ("0", ValueError, "must be positive"),
        ("150%", ValueError, r"must be a percentage in \(0%, 100%\]"),
    ],
)
def test_a_bad_environment_variable_is_refused_naming_it(monkeypatch, value, error, match):
    monkeypatch.setenv(limits.ENVIRONMENT_VARIABLE, value)
    with pytest.raises(error, match=rf"{limits.ENVIRONMENT_VARIABLE} {match}"):
        limits.set_sample_memory_limit(None)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        (0, ValueError, "positive int"),
        (-5, ValueError, "positive int"),
        (1.5e9, ValueError, "a float: give the bytes as an int"),
        (True, TypeError, "number of bytes"),
        ([1], TypeError, "number of bytes"),
    ],
    ids=str,
)
def test_a_bad_limit_is_refused_naming_it(value, error, match):
    before = limits.sample_memory_limit()
    with pytest.raises(error, match=rf"`limit` .*{match}"):
        limits.set_sample_memory_limit(value)
    assert limits.sample_memory_limit() == before


def test_limit_strings_read_decimal_and_binary_units_and_fractions_of_memory():
    for text, expected in (
        ("8GB", 8 * 10**9),
        ("8 GiB", 8 * 2**30),
        ("512mib", 512 * 2**20),
        ("700", 700),
    ):
        limits.set_sample_memory_limit(text)
        assert limits.sample_memory_limit() == expected, text
    limits.set_sample_memory_limit("inf")
    assert limits.sample_memory_limit() == math.inf
    limits.set_sample_memory_limit("50%")
    assert limits.sample_memory_limit() == int(limits.physical_memory() * 0.5)


def test_the_default_limit_is_a_tenth_of_physical_memory():
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert limits.physical_memory() <= total
    assert limits.sample_memory_limit() == int(limits.physical_memory() * limits.DEFAULT_FRACTION)


def test_check_memory_names_a_flag_for_callers_without_a_q():
    with limits.sample_memory_limit_scope(10**6):
        with pytest.raises(
            ValueError,
            match=r"`--batch_size` = 60000 would need 2000000 bytes .* for the images.*"
            r"limit of 1000000 bytes.*To fix: use a smaller `--batch_size`",
        ):
            limits.check_memory(2 * 10**6, argument="--batch_size", value=60000, what="the images")
        limits.check_memory(10**6, argument="--batch_size", value=30000)  # at the limit: passes


# --- NaN and inf estimates: refused, naming how many ---------------------------------------


def _noisy(seed):
    return mco.sampling.standard_normal([3], seed, tf.float64)


def _bad_when(condition_value, value):
    """An estimator whose estimate is `value` in component 0 where noise[0] > threshold."""

    def estimator(seed):
        noise = _noisy(seed)
        first = tf.where(noise[0] > condition_value, tf.constant(value, tf.float64), noise[0])
        return {"g": tf.concat([[first], noise[1:]], axis=0), "h": noise[:2]}

    return estimator


def _expected_bad(threshold, num_estimates, seed=0):
    """The indices r whose estimate `_bad_when(threshold, ...)` makes non-finite."""
    seeds = tf.cast(
        tf.random.experimental.stateless_split(sampling.stateless_seed(seed), num_estimates),
        tf.int32,
    )
    firsts = np.array([float(_noisy(s)[0]) for s in seeds])
    return np.flatnonzero(firsts > threshold)


def test_gradient_statistics_refuses_nan_estimates_naming_how_many():
    bad = _expected_bad(0.5, 20)
    assert 0 < len(bad) < 20
    with pytest.raises(ValueError) as info:
        diagnostics.gradient_statistics(_bad_when(0.5, np.nan), 20, seed=0)
    message = str(info.value)
    assert f"`estimator` returned non-finite gradient estimates: {len(bad)} of the 20" in message
    assert f"leaf 'g': {len(bad)} estimates, {len(bad)} NaN and 0 inf" in message
    assert "leaf 'h'" not in message
    assert f"The first is estimate {bad[0]}" in message


def test_gradient_statistics_refuses_inf_estimates_naming_how_many():
    bad = _expected_bad(0.5, 20)
    with pytest.raises(
        ValueError, match=rf"leaf 'g': {len(bad)} estimates, 0 NaN and {len(bad)} inf"
    ):
        diagnostics.gradient_statistics(_bad_when(0.5, np.inf), 20, seed=0)


def test_gradient_statistics_names_every_leaf_of_a_mix_of_nan_and_inf():
    def estimator(seed):
        noise = _noisy(seed)
        return {
            "a": noise,
            "b": tf.where(noise > 1.0, tf.constant(np.inf, tf.float64), noise),
            "c": tf.math.log(noise[:1]),  # NaN wherever noise[0] < 0
        }

    seeds = tf.cast(
        tf.random.experimental.stateless_split(sampling.stateless_seed(0), 16), tf.int32
    )
    noise = np.stack([_noisy(s).numpy() for s in seeds])
    b_rows, b_infs = int((noise > 1).any(axis=1).sum()), int((noise > 1).sum())
    c_rows = int((noise[:, 0] < 0).sum())
    either = int(((noise > 1).any(axis=1) | (noise[:, 0] < 0)).sum())
    with pytest.raises(ValueError) as info:
        diagnostics.gradient_statistics(estimator, 16, seed=0)
    message = str(info.value)
    assert f"{either} of the 16 estimates" in message
    assert f"leaf 'b': {b_rows} estimates, 0 NaN and {b_infs} inf" in message
    assert f"leaf 'c': {c_rows} estimates, {c_rows} NaN and 0 inf" in message
    assert "leaf 'a'" not in message


def test_a_nan_in_a_later_chunk_names_that_chunk_and_the_estimate_whose_seed_replays_it():
    bad = _expected_bad(1.2, 40)
    first = int(bad[0])
    start = first // 4 * 4
    assert first >= 4, "the seed gives a first bad estimate in a later chunk"
    with pytest.raises(
        ValueError,
        match=rf"estimates {start} to {start + 3} \(of num_estimates = 40\).*"
        rf"The first is estimate {first}",
    ):
        diagnostics.gradient_statistics(_bad_when(1.2, np.nan), 40, seed=0, chunk_size=4)
    seed = tf.random.experimental.stateless_split(sampling.stateless_seed(0), 40)[first]
    assert np.isnan(_bad_when(1.2, np.nan)(tf.cast(seed, tf.int32))["g"][0])


def test_a_nan_reference_estimator_is_refused_naming_reference():
    with pytest.raises(ValueError, match=r"`reference` returned non-finite gradient estimates"):
        diagnostics.gradient_statistics(
            _bad_when(9.0, 0.0), 20, seed=0, reference=_bad_when(0.5, np.nan)
        )


@pytest.mark.parametrize("keyword", ["keep_estimates", "dsnr_direction"])
def test_nan_estimates_are_refused_also_when_kept_or_for_the_own_mean_dsnr(keyword):
    extra = {"keep_estimates": True} if keyword == "keep_estimates" else {"dsnr_direction": "mean"}
    with pytest.raises(ValueError, match="non-finite gradient estimates"):
        diagnostics.gradient_statistics(_bad_when(0.5, np.nan), 20, seed=0, **extra)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("true_gradient", {"g": np.array([np.nan, 0.0, 0.0]), "h": np.zeros(2)}),
        ("dsnr_direction", {"g": np.array([1.0, np.inf, 0.0]), "h": np.ones(2)}),
    ],
)
def test_a_non_finite_true_gradient_or_direction_is_refused_naming_it(keyword, value):
    with pytest.raises(
        ValueError,
        match=rf"`{keyword}` \(leaf 'g'\) holds (1 NaN and 0|0 NaN and 1) inf of its 3 entries",
    ):
        diagnostics.gradient_statistics(_bad_when(9.0, 0.0), 8, seed=0, **{keyword: value})


def test_an_objective_whose_log_joint_is_nan_for_some_z_is_refused_not_averaged():
    """A realistic source: log p = log z is NaN for the draws z < 0."""
    loc = tf.Variable([0.5, 0.5])

    def loss(seed):
        q = tfd.Independent(tfd.Normal(loc[None], 1.0), 1)
        return mco.IWAE(4)(q, lambda z: tf.reduce_sum(tf.math.log(z), -1), seed=seed)

    estimator = diagnostics.make_gradient_estimator(loss, [loc])
    with pytest.raises(
        ValueError,
        match=r"`estimator` returned non-finite gradient estimates: \d+ of the 16 .*leaf '0'",
    ):
        diagnostics.gradient_statistics(estimator, 16, seed=1)


def test_finite_estimates_give_the_statistics_unchanged():
    """The check only reads the estimates: mean and variance are NumPy's of the draws."""
    stats = diagnostics.gradient_statistics(
        _bad_when(99.0, np.nan), 12, seed=2, keep_estimates=True
    )
    kept = stats.estimates["g"]
    np.testing.assert_array_equal(stats.mean["g"], kept.mean(axis=0))
    np.testing.assert_allclose(stats.variance["g"], kept.var(axis=0, ddof=1), rtol=1e-12)


def test_directional_snr_refuses_nan_estimates_naming_how_many():
    estimates = np.ones((5, 3))
    estimates[1, 2] = np.nan
    estimates[3] = [np.inf, np.nan, 0.0]
    with pytest.raises(
        ValueError,
        match=r"`estimates` holds non-finite estimates: 2 of the 5 \(the first is estimate 1\), "
        r"with 2 NaN and 1 inf",
    ):
        diagnostics.directional_snr(estimates, [1.0, 0.0, 0.0])


def test_directional_snr_refuses_a_nan_direction_naming_it():
    with pytest.raises(ValueError, match=r"`direction` holds 1 NaN and 0 inf of its 3 entries"):
        diagnostics.directional_snr(np.ones((5, 3)), [1.0, np.nan, 0.0])


def test_t_statistic_summary_names_how_many_t_statistics_are_nan():
    with pytest.raises(
        ValueError, match=r"`t` holds NaN in 2 of its 4 entries \(the first at flat index 1\)"
    ):
        diagnostics.t_statistic_summary([1.0, np.nan, np.inf, np.nan])


# --- active_units: NaN and inf posterior means refused -------------------------------------


def _means(n=20, d=5):
    return np.random.default_rng(0).normal(size=(n, d))


def test_active_units_refuses_a_nan_unit_naming_how_many_entries_and_which_unit():
    means = _means()
    means[3, 2] = np.nan
    with pytest.raises(
        ValueError,
        match=r"`posterior_means` holds 1 NaN and 0 inf entries, in 1 of its 5 units \(columns 2\) "
        r"and 1 of its 20 data points \(rows 3\)",
    ):
        mco.active_units(means)


def test_active_units_refuses_an_all_nan_column():
    means = _means()
    means[:, 4] = np.nan
    with pytest.raises(
        ValueError,
        match=r"holds 20 NaN and 0 inf entries, in 1 of its 5 units \(columns 4\) "
        r"and 20 of its 20 data points",
    ):
        mco.active_units(tf.constant(means, tf.float32))


def test_active_units_refuses_an_inf_mean():
    means = _means()
    means[0, 0], means[7, 3] = np.inf, -np.inf
    with pytest.raises(
        ValueError, match=r"holds 0 NaN and 2 inf entries, in 2 of its 5 units \(columns 0, 3\)"
    ):
        mco.active_units(means)


def test_active_units_of_a_structure_names_the_leaf_with_nan():
    z2 = _means(d=3)
    z2[5, 1] = np.nan
    with pytest.raises(ValueError, match=r"Leaf 'z2' of `posterior_means` holds 1 NaN"):
        mco.active_units({"z1": tf.constant(_means()), "z2": tf.constant(z2)})


@modes("function", reason="a graph's means are checked at run time; XLA compiles assertions away")
def test_active_units_in_a_graph_asserts_at_run_time_with_the_counts(mode):
    means = _means()
    means[2, 1] = means[9, 1] = np.nan
    count = in_mode(mco.active_units, mode, input_signature=[tf.TensorSpec([None, 5], tf.float64)])
    with pytest.raises(
        tf.errors.InvalidArgumentError, match=r"holds NaN or inf entries.*\[2\] \[1\]"
    ):
        count(tf.constant(means))
    assert int(count(tf.constant(_means()))) == int(mco.active_units(_means()))
