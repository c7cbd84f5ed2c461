"""The test-set evaluation of the papers: IWAE-64, log p^(x), -KL(Q||P), ESS, active units.

`evaluate` (or `make_evaluator`, traced once for the repeated evaluations of a training
run) measures a model on the batches of `test_batches`; `posterior_means` gives the
E_q[z] of every latent leaf whose covariance over the data counts the active units.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives.core import checks

tfd = tfp.distributions

__all__ = ["BOUND_SAMPLES", "MEAN_SAMPLES", "evaluate", "make_evaluator", "posterior_means"]

# Draws of the upstream layers behind the posterior means of a conditional latent leaf.
MEAN_SAMPLES = 32
# K of the evaluation's bound, IWAE-64 (Burda et al.), and so the fewest samples of the
# log p^(x) that -KL(Q||P) = IWAE-64 - log p^(x) compares it with (see `make_evaluator`).
BOUND_SAMPLES = 64


def posterior_means(q: tfd.Distribution, seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """E_q[z] of every latent leaf, [B, D_leaf] (events flattened), by leaf name.

    A single q gives {"z": q.mean()}. For a joint q the means of its root parts are
    exact; a part conditioned on other leaves, such as q(z2|z1), gets the average of its
    conditional means over MEAN_SAMPLES draws of the parts above it,
    E_q(z1|x)[E_q(z2|z1)[z2]], which varies across data points only as much as z2
    does (a plain average of draws would add Var(z2) / MEAN_SAMPLES to every unit's
    activity). A Bernoulli leaf's mean is its probability of 1.
    """
    if not isinstance(q, tfd.JointDistribution):
        return {"z": q.mean()}
    distributions, _ = q.sample_distributions(sample_shape=MEAN_SAMPLES, seed=seed)
    if isinstance(distributions, dict):
        named = sorted(distributions.items())
    elif hasattr(distributions, "_asdict"):  # JointDistributionCoroutine's named tuples
        named = list(distributions._asdict().items())
    else:
        named = [(f"z{i}", d) for i, d in enumerate(distributions)]
    means = {}
    for name, distribution in named:
        mean = tf.cast(distribution.mean(), tf.float32)
        if distribution.batch_shape.rank == 2:  # [S, B]: built from the upstream draws
            mean = tf.reduce_mean(mean, axis=0)
        means[name] = tf.reshape(mean, [tf.shape(mean)[0], -1])
    return means


def make_evaluator(
    model: mco.ImportanceWeightedAutoencoder,
    *,
    seed: int = 0,
    num_samples: int | None = 5000,
    chunk_size: int = 500,
) -> Callable[..., dict[str, Any]]:
    """`evaluate` for one model, traced once: `evaluator(batches, progress=None) -> dict`.

    Call it at every evaluation of a training run: the batches' graph is traced at the
    first call only (and again for a batch of another size).

    `num_samples` (K of log p^(x)) is at least `BOUND_SAMPLES` (64), or None. The
    estimate log p^(x) is itself the IWAE bound of K samples, whose expectation rises
    with K to log p(x) (Burda et al., Theorem 1): with K >= 64, -KL = IWAE-64 -
    log p^(x) is <= 0 in expectation (0 at K = 64, and towards the true -KL as K
    grows; the paper's K = 5000), so <= 0 up to Monte Carlo error, as a -KL must be;
    with K < 64, log p^(x) is a looser bound than the IWAE-64 it is measured against,
    and their difference is positive by construction (with K = 8, by a few nats), not
    a -KL. Such a K is refused rather than reported as one.

    Raises:
      ValueError: naming `num_samples`, if it is below `BOUND_SAMPLES`; TypeError if it
        is not an integer.
    """
    if num_samples is not None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
            raise TypeError(f"num_samples must be an integer or None, got {num_samples!r}")
        if num_samples < BOUND_SAMPLES:
            raise ValueError(
                f"num_samples={num_samples}: log p^(x) needs at least {BOUND_SAMPLES} "
                f"samples, the K of the IWAE-{BOUND_SAMPLES} bound that -KL = "
                f"IWAE-{BOUND_SAMPLES} - log p^(x) compares it with (with fewer, log p^(x) "
                "is the looser bound and -KL comes out positive); e.g. num_samples=5000, "
                "or None to leave log p^(x) and -KL out."
            )
    eval_seed = tf.constant([seed, 0xE7A1], tf.int32)

    @tf.function
    def evaluate_batch(batch, seed):
        x, context = batch["x"], batch.get("context")
        q = model.posterior(x, context)
        # Bound to q as an objective binds it: shapes checked, a joint prior paired by name.
        log_joint = checks.bind_log_joint(model.log_joint(x, context), q)
        bound_seed, _ = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        z = mco.sampling.sample(q, BOUND_SAMPLES, bound_seed)
        log_weights = log_joint(z) - q.log_prob(z)
        outputs = {
            "iwae64": mco.weights.log_mean_exp(log_weights),
            "ess": mco.weights.effective_sample_size(log_weights) / 64.0,
        }
        means_seed = tf.random.experimental.stateless_fold_in(seed, 2)
        return outputs, posterior_means(q, means_seed)

    def evaluator(
        batches: Sequence[dict], progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        if not batches:
            raise ValueError("evaluate needs at least one batch of test images.")
        start = time.perf_counter()
        outputs = []
        for i, batch in enumerate(batches):
            batch_seed = tf.random.experimental.stateless_fold_in(eval_seed, i)
            output, means = evaluate_batch(batch, batch_seed)
            if num_samples is not None:
                # The model's own estimate: compiled with XLA where that is faster.
                _, marginal_seed = tf.unstack(tf.random.experimental.stateless_split(batch_seed, 2))
                output["log_px"] = model.log_marginal(
                    batch, marginal_seed, num_samples=num_samples, chunk_size=chunk_size
                )
            outputs.append((output, means))
            if progress is not None:
                progress(i + 1)
        values = {
            key: np.concatenate([o[0][key].numpy() for o in outputs]) for key in outputs[0][0]
        }
        active = {
            name: int(mco.active_units(np.concatenate([o[1][name].numpy() for o in outputs])))
            for name in outputs[0][1]
        }
        bound = float(np.mean(values["iwae64"]))
        result: dict[str, Any] = {"iwae64": bound}
        if num_samples is not None:
            log_px = float(np.mean(values["log_px"]))
            neg_kl = float(np.mean(values["iwae64"]) - np.mean(values["log_px"]))
            result.update(log_px=log_px, log_px_num_samples=num_samples, neg_kl=neg_kl)
        result.update(
            ess_fraction=float(np.mean(values["ess"])),
            active_units=sum(active.values()),
            active_units_per_latent=active,
            num_test_images=len(values["iwae64"]),
            seconds=round(time.perf_counter() - start, 3),
        )
        return result

    return evaluator


def evaluate(
    model: mco.ImportanceWeightedAutoencoder,
    batches: Sequence[dict],
    *,
    seed: int = 0,
    num_samples: int | None = 5000,
    chunk_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Test-set IWAE-64, log p^(x) (K = num_samples), -KL(Q||P), ESS / 64, active units.

    The metrics of Burda et al. and Rainforth et al., as means over the images of
    `batches` (from `test_batches`): "iwae64", "log_px" (chunks of `chunk_size`
    samples), "neg_kl" = iwae64 - log_px, "ess_fraction" (the mean ESS of 64 samples
    over 64), "active_units" (Cov_x(E_q[z_i]) > 1e-2, summed over the latent leaves, and
    by leaf in "active_units_per_latent"), "num_test_images" and "seconds".
    `num_samples=None` leaves log p^(x) and -KL out, for a quick look at the bound;
    otherwise it is at least `BOUND_SAMPLES` (64), the K of the bound -KL compares
    log p^(x) with (see `make_evaluator`).

    Works for any q the model's encoder returns, structured or discrete: the IWAE-64
    bound and its ESS come from 64 draws of `mco.sampling.sample` (the value of
    `mco.IWAE(64)`, which would refuse a discrete q), and the active units are counted
    per latent leaf (`posterior_means`). Every draw comes from `seed` and the batch's
    index, so an evaluation repeats exactly. `progress(i)` is called after the i-th
    batch. For repeated evaluations of one model, `make_evaluator` traces once.
    """
    evaluator = make_evaluator(model, seed=seed, num_samples=num_samples, chunk_size=chunk_size)
    return evaluator(batches, progress)
