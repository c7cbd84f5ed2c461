"""GDReG prior gradients (Bauer and Mnih, ICML 2021) through the Keras model.

The model's log joint exposes its prior (`prior`, `prior_value`) as `make_log_joint`'s
does, so `IWAE(K, prior_gradient="gdreg")` (and DReG's) reaches a learned prior layer.
Checked, on small float64 linear-Gaussian networks, against the core path
`objective(q, make_log_joint(prior, likelihood, x), seed)` built from the same layers and
seed (so the same samples; core GDReG itself is checked against NumPy in
tests/test_gdreg.py): for a prior layer called as prior(), one of a context, a joint prior
layer (paired with a joint q by name) and a fixed prior. The encoder's and decoder's
gradients are the standard option's. Then a short `fit`, and the refusal of a prior
layer GDReG cannot reparameterize.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from tests.conftest import in_mode

tfd = tfp.distributions

LATENT, DATA, CONTEXT, BATCH, K = 3, 4, 2, 5, 4
SIGMA = 0.8  # q's scale
TOL = 1e-6  # float64


def _weight(layer, shape, scale, seed):
    value = np.random.default_rng(seed).normal(size=shape) * scale
    return layer.add_weight(shape=shape, initializer=keras.initializers.Constant(value))


class Encoder(keras.layers.Layer):
    """q(z|x) = N(x A + b, SIGMA^2 I); with `joint`, q(z1|x) q(z2|z1) = N(z1 / 2 + b2, ...)."""

    def __init__(self, joint=False, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.joint = joint
        self.A = _weight(self, (DATA, LATENT), 0.4, 1)
        self.b = _weight(self, (LATENT,), 0.2, 2)
        self.b2 = _weight(self, (LATENT,), 0.2, 3) if joint else None

    def call(self, x, context=None):
        q1 = tfd.Independent(tfd.Normal(x @ self.A + self.b, tf.constant(SIGMA, tf.float64)), 1)
        if not self.joint:
            return q1
        return tfd.JointDistributionNamed(
            dict(z1=q1, z2=lambda z1: tfd.Independent(tfd.Normal(0.5 * z1 + self.b2, SIGMA), 1))
        )


class Decoder(keras.layers.Layer):
    """p(x|z) = N(z W + c, I) (z1 W + z2 W2 for joint latents), on any leading axes."""

    def __init__(self, joint=False, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.W = _weight(self, (LATENT, DATA), 0.5, 4)
        self.W2 = _weight(self, (LATENT, DATA), 0.5, 5) if joint else None
        self.c = _weight(self, (DATA,), 0.2, 6)

    def call(self, z, context=None):
        if isinstance(z, dict):
            loc = tf.einsum("...i,ij->...j", z["z1"], self.W)
            loc += tf.einsum("...i,ij->...j", z["z2"], self.W2)
        else:
            loc = tf.einsum("...i,ij->...j", z, self.W)
        loc += self.c
        return tfd.Independent(tfd.Normal(loc, tf.ones_like(loc)), 1)


class NormalPrior(keras.layers.Layer):
    """p(z) = N(loc, exp(log_scale)^2), or p(z|c) = N(c V + loc, ...), loc, log_scale learned."""

    def __init__(self, conditional=False, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.loc = _weight(self, (LATENT,), 0.5, 7)
        self.log_scale = _weight(self, (LATENT,), 0.2, 8)
        self.V = _weight(self, (CONTEXT, LATENT), 0.5, 9) if conditional else None

    def call(self, context=None):
        loc = self.loc if context is None else context @ self.V + self.loc
        return tfd.Independent(tfd.Normal(loc, tf.exp(self.log_scale)), 1)


class JointPrior(keras.layers.Layer):
    """p(z2) p(z1|z2), written in generative order: paired with q's z1, z2 by name."""

    def __init__(self, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.loc = _weight(self, (LATENT,), 0.5, 10)
        self.log_scale = _weight(self, (LATENT,), 0.2, 11)
        self.slope = _weight(self, (LATENT,), 0.5, 12)

    def call(self, context=None):
        scale = tf.exp(self.log_scale)
        return tfd.JointDistributionNamed(
            dict(
                z2=tfd.Independent(tfd.Normal(self.loc, scale), 1),
                z1=lambda z2: tfd.Independent(tfd.Normal(self.slope * z2, scale), 1),
            )
        )


def _fixed_prior():
    loc = tf.constant([0.3, -0.2, 0.1], tf.float64)
    return tfd.Independent(tfd.Normal(loc, tf.constant(1.2, tf.float64)), 1)


PRIORS = {
    "layer": lambda: (NormalPrior(), False, False),
    "conditional_layer": lambda: (NormalPrior(conditional=True), True, False),
    "joint_layer": lambda: (JointPrior(), False, True),
    "fixed": lambda: (_fixed_prior(), False, False),
}

OBJECTIVES = {
    "iwae": lambda g: mco.IWAE(K, prior_gradient=g),
    "dreg": lambda g: mco.DReG(K, prior_gradient=g),
}


def _data(conditional):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, DATA)) * 1.5)
    if not conditional:
        return x, None
    return x, tf.constant(rng.normal(size=(BATCH, CONTEXT)))


def _model(kind, objective):
    prior, conditional, joint = PRIORS[kind]()
    model = mco.ImportanceWeightedAutoencoder(
        Encoder(joint=joint), Decoder(joint=joint), prior, objective, seed=0, dtype="float64"
    )
    return model, conditional


def _core_gradients(model, objective, x, context, seed, trained):
    """The same objective on the same layers through make_log_joint (z [S, B, ...])."""
    with tf.GradientTape() as tape:
        q = model.posterior(x, context, training=True)
        log_joint = mco.make_log_joint(
            model.prior_distribution(context, training=True), model.decoder, x
        )
        loss = objective(q, log_joint, seed=seed).loss
    return tape.gradient(loss, trained)


def _both(model, objective, batch, seed, is_prior):
    """() -> (the model's gradients, the core path's), filling `is_prior` in Python."""
    x, context = (batch, None) if isinstance(batch, tf.Tensor) else (batch["x"], batch["context"])

    def both():
        grads, trained, _ = model.compute_gradients(batch, seed)
        prior = {v.path for v in getattr(model.prior, "trainable_variables", ())}
        is_prior.extend(v.path in prior for v in trained)
        return grads, _core_gradients(model, objective, x, context, seed, trained)

    return both


# Every case in eager by default; the graph modes for IWAE with the priors the log joint
# builds for GDReG itself (a prior of the context, a joint prior), the rest with -m slow.
_GRAPH_BY_DEFAULT = {("iwae", "conditional_layer"), ("iwae", "joint_layer")}
CASES = [
    pytest.param(
        name, kind, mode, id=f"{mode}-{name}-{kind}",
        marks=() if mode == "eager" or (name, kind) in _GRAPH_BY_DEFAULT else pytest.mark.slow,
    )
    for mode in ("eager", "function", "xla")
    for name in OBJECTIVES
    for kind in PRIORS
]  # fmt: skip


@pytest.mark.parametrize(("name", "kind", "mode"), CASES)
def test_the_keras_model_gives_its_prior_the_gdreg_gradient_of_the_core_path(name, kind, mode):
    seed = tf.constant([3, 7], tf.int32)
    keras_grads = {}
    for estimator in ("standard", "gdreg"):
        objective = OBJECTIVES[name](estimator)
        model, conditional = _model(kind, objective)
        x, context = _data(conditional)
        batch = x if context is None else {"x": x, "context": context}
        is_prior = []  # per variable: filled in Python, while tracing in a graph mode

        grads, core = in_mode(_both(model, objective, batch, seed, is_prior), mode)()
        for g, c in zip(grads, core, strict=True):
            np.testing.assert_allclose(g.numpy(), c.numpy(), rtol=TOL, atol=TOL)
        keras_grads[estimator] = [(g.numpy(), p) for g, p in zip(grads, is_prior, strict=True)]
    changed = []
    for (standard, is_prior), (gdreg, _) in zip(*keras_grads.values(), strict=True):
        if is_prior:
            changed.append(float(np.abs(gdreg - standard).max()))
        else:  # the encoder's and decoder's: the standard option's
            np.testing.assert_allclose(gdreg, standard, rtol=TOL, atol=TOL)
    print(f"{name}, {kind}: largest |gdreg - standard| per prior variable {np.round(changed, 4)}")
    assert kind == "fixed" or min(changed) > 1e-3  # the prior's gradient did change


@pytest.mark.parametrize("kind", ["layer", "conditional_layer", "joint_layer"])
def test_fit_with_gdreg_trains_a_learned_prior_layer(kind):
    model, conditional = _model(kind, mco.IWAE(K, prior_gradient="gdreg"))
    x, context = _data(conditional)
    batch = x if context is None else {"x": x, "context": context}
    model.compile(keras.optimizers.Adam(1e-2))
    model.objective_result(batch, seed=0)  # builds the layers
    before = [v.numpy().copy() for v in model.prior.trainable_variables]
    data = tf.data.Dataset.from_tensor_slices(batch).batch(BATCH)  # float64 (fit casts arrays)
    history = model.fit(data, epochs=3, shuffle=False, verbose=0)
    losses = history.history["loss"]
    moved = [
        float(np.abs(v.numpy() - b).max())
        for v, b in zip(model.prior.trainable_variables, before, strict=True)
    ]
    print(f"{kind}: losses {np.round(losses, 3)}; prior variables moved by {np.round(moved, 4)}")
    assert np.all(np.isfinite(losses))
    assert min(moved) > 1e-3


class GammaPrior(keras.layers.Layer):
    """p(z) (or p(z|c), its rate exp(c V + log_rate)) = Gamma: GDReG has no standardization."""

    def __init__(self, conditional=False, **kwargs):
        super().__init__(dtype="float64", **kwargs)
        self.log_rate = _weight(self, (LATENT,), 0.2, 13)
        self.V = _weight(self, (CONTEXT, LATENT), 0.5, 14) if conditional else None

    def call(self, context=None):
        log_rate = self.log_rate if context is None else context @ self.V + self.log_rate
        return tfd.Independent(tfd.Gamma(tf.ones_like(log_rate), tf.exp(log_rate)), 1)


class NeverCalledDecoder(keras.layers.Layer):
    def call(self, z, context=None):
        raise AssertionError("the decoder was called: the check came after the forward pass")


@pytest.mark.parametrize("conditional", [False, True], ids=["prior()", "prior(context)"])
def test_the_keras_model_refuses_gdreg_for_a_prior_layer_it_cannot_reparameterize(conditional):
    model = mco.ImportanceWeightedAutoencoder(
        Encoder(), NeverCalledDecoder(), GammaPrior(conditional),
        mco.IWAE(K, prior_gradient="gdreg"), seed=0, dtype="float64",
    )  # fmt: skip
    x, context = _data(conditional)
    batch = x if context is None else {"x": x, "context": context}
    match = r"prior_gradient='gdreg'.*Gamma has no standardization.*'standard'"
    with pytest.raises(ValueError, match=match):
        model.compute_gradients(batch, seed=1)
    model.compile(keras.optimizers.Adam())
    with pytest.raises(ValueError, match=match):
        model.fit(tf.data.Dataset.from_tensor_slices(batch).batch(BATCH), shuffle=False, verbose=0)
