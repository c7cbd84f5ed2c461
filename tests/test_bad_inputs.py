"""A battery of bad API inputs: each is refused by a check of ours, naming the argument.

Every case calls the public API (the registered objectives, `sampling.sample`,
`stateless_seed`, `standard_normal`, `log_marginal_estimate`, the diagnostics) with one
bad argument and asserts that

* the error is the case's ValueError or TypeError, whose message names the argument
  (and, where there is one, the fix);
* it was raised by mcobjectives itself (the traceback's last frame is in the package),
  not deep inside TensorFlow, TFP or NumPy, and is not a TensorFlow run-time error;
* it was raised before `log_joint` (or a gradient estimator) ran, unless the check
  needs its output.

Cases whose mistake is visible only at run time (a batch of dynamic size) are
`dynamic`: they must fail with a `tf.errors.InvalidArgumentError` carrying our message
(a `tf.debugging` assertion), where today they return NaN or broadcast silently.

`CASES` is a plain dict so that a script can classify the same cases against any
version of the code (clear / late / deep / silent).
"""

from __future__ import annotations

import math
import pathlib
import re
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import mcobjectives as mco
from mcobjectives import diagnostics, sampling
from tests.conftest import GRAPH_MODES, in_mode, modes, skip_unless_gaussian_q

tfd = tfp.distributions

B, D, K = 4, 3, 4
SEED = tf.constant([3, 4], tf.int32)
PACKAGE = pathlib.Path(mco.__file__).resolve().parent


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


class Spy:
    """A callable that records whether it was called (a log_joint or an estimator)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


class Case(NamedTuple):
    """One bad call: `call()` must raise `error` with every one of `words` in its message."""

    call: Callable[[], object]
    error: type
    words: tuple[str, ...]
    spy: Spy | None = None  # must not have run when the error is raised
    dynamic: bool = False  # a run-time assertion (the mistake has no static shape)


def _all_of(*words) -> str:
    """A regex matching a message that contains every one of `words`, in any order."""
    return "(?s)" + "".join(f"(?=.*{re.escape(word)})" for word in words)


def _objective(name: str) -> mco.MCObjective:
    cls = mco.objectives.OBJECTIVES[name]
    if name in ("miwae", "piwae"):
        return mco.make_objective(name, K, num_outer=2)
    return cls(K) if name != "vae" else mco.VAE(K)


def _q(dtype=tf.float32, batch=B):
    return tfd.Independent(tfd.Normal(tf.zeros([batch, D], dtype), tf.ones([], dtype)), 1)


def _log_joint(z):
    """A valid log p(x, z), [S, B], in z's dtype."""
    return -0.5 * tf.reduce_sum(z**2, axis=-1)


def _float32_model(z):
    """A model built in float32: it fails on float64 samples (inside TensorFlow)."""
    prior = tfd.Independent(tfd.Normal(tf.zeros([D]), 1.0), 1)
    return prior.log_prob(z)


NAMES = mco.objective_names()
_CYCLE = iter(range(10**6))


def _next_name() -> str:
    """The registered objectives in turn, so that every objective meets many cases."""
    return NAMES[next(_CYCLE) % len(NAMES)]


CASES: dict[str, Case] = {}


def _add(key: str, call, error, *words, spy=None, dynamic=False) -> None:
    assert key not in CASES, key
    CASES[key] = Case(call, error, tuple(words), spy, dynamic)


def _add_objective_call(
    key, error, *words, q=_q, log_joint=_log_joint, seed=SEED, name=None, needs_output=False
):
    """A bad call of a registered objective; log_joint must not run unless `needs_output`."""
    name = name or _next_name()
    spy = Spy(log_joint) if callable(log_joint) else None

    def call():
        return _objective(name)(q(), spy if spy is not None else log_joint, seed=seed)

    _add(f"{name}:{key}", call, error, *words, spy=None if needs_output else spy)


# --------------------------------------------------------------------------------------
# Seeds: objectives and sampling.sample
# --------------------------------------------------------------------------------------

# key -> (seed, error, words)
BAD_SEEDS = {
    "float": (1.5, TypeError, ("`seed`", "float")),
    "float-list": ([1.0, 2.0], TypeError, ("`seed`", "integer")),
    "float-mixed-list": ([1.5, 2], TypeError, ("`seed`", "integer")),
    "numpy-float32": (np.array([1, 2], np.float32), TypeError, ("`seed`", "float32")),
    "tensor-float": (tf.constant([1.0, 2.0]), TypeError, ("`seed`", "float32")),
    "variable-float": (tf.Variable([1.0, 2.0]), TypeError, ("`seed`", "float32")),
    "complex": (1 + 2j, TypeError, ("`seed`",)),
    "str": ("7", TypeError, ("`seed`", "str")),
    "bytes": (b"7", TypeError, ("`seed`",)),
    "str-tensor": (tf.constant("7"), TypeError, ("`seed`", "string")),
    "bool": (True, TypeError, ("`seed`", "bool")),
    "numpy-bool": (np.bool_(False), TypeError, ("`seed`", "bool")),
    "bool-list": ([True, False], TypeError, ("`seed`", "bool")),
    "none-inside": ([1, None], TypeError, ("`seed`",)),
    "object": (object(), TypeError, ("`seed`", "object")),
    "dict": ({"a": 1}, TypeError, ("`seed`", "dict")),
    "ragged": ([[1, 2], [3]], ValueError, ("`seed`",)),
    "shape-[3]": ([1, 2, 3], ValueError, ("`seed`", "[2]", "(3,)")),
    "shape-[1]": ([5], ValueError, ("`seed`", "[2]", "(1,)")),
    "shape-[0]": ([], ValueError, ("`seed`", "[2]", "(0,)")),
    "shape-[2,2,1]": (np.zeros([2, 2, 1], np.int32), ValueError, ("`seed`", "[2]")),
    "int-too-large": (2**62, ValueError, ("`seed`", "2**62")),
    "int-negative": (-1, ValueError, ("`seed`", "-1")),
    "numpy-uint64-too-large": (np.uint64(2**63), ValueError, ("`seed`", "2**62")),
    "component-beyond-int64": ([2**64, 3], ValueError, ("`seed`", "int64")),
    "component-below-int64": ([-(2**63) - 1, 3], ValueError, ("`seed`", "int64")),
    "numpy-uint64-component": (np.array([2**63, 1], np.uint64), ValueError, ("`seed`", "int64")),
    "per-example-B+1": (np.zeros([B + 1, 2], np.int32), ValueError, ("`seed`", "[B, 2]", "5")),
    "per-example-B=1": (np.zeros([1, 2], np.int32), ValueError, ("`seed`", "[B, 2]", "(1, 2)")),
    "per-example-[B,3]": (np.zeros([B, 3], np.int32), ValueError, ("`seed`", "[B, 2]")),
    "per-example-float": (np.zeros([B, 2], np.float64), TypeError, ("`seed`", "float64")),
    "per-example-bool": (np.zeros([B, 2], bool), TypeError, ("`seed`", "bool")),
}

for _key, (_seed, _error, _words) in BAD_SEEDS.items():
    _add_objective_call(f"seed-{_key}", _error, *_words, seed=_seed)
    _add(
        f"sample:seed-{_key}",
        lambda s=_seed: sampling.sample(_q(), K, s),
        _error,
        *_words,
    )

_add_objective_call("seed-None", TypeError, "`seed`", "required", seed=None)
_add("sample:seed-None", lambda: sampling.sample(_q(), K, None), TypeError, "`seed`", "required")


# A tensor of unknown rank or batch size exists only in a traced graph: the cases of
# dynamic shapes run in "function" mode (XLA would compile the run-time assertions of
# the dynamic checks away), without autograph, whose re-raised errors would hide the
# frame `raised_in_package` looks for.


def _dynamic_rank_seed():
    def draw(seed):
        return sampling.sample(_q(), K, seed)

    signature = [tf.TensorSpec(None, tf.int32)]
    return in_mode(draw, "function", input_signature=signature, autograph=False)(SEED)


_add("sample:seed-unknown-rank", _dynamic_rank_seed, ValueError, "`seed`", "rank")


def _joint_q(loc):
    return tfd.JointDistributionNamed(
        {
            "z1": tfd.Independent(tfd.Normal(loc, 1.0), 1),
            "z2": lambda z1: tfd.Independent(tfd.Normal(z1, 1.0), 1),
        }
    )


def _joint_log_joint(z):
    return _log_joint(z["z1"]) + _log_joint(z["z2"])


def _seed_batch_differs_dynamically(num_seeds: int, objective: bool, joint: bool = False):
    """Per-example seeds [num_seeds, 2] for a q of dynamic batch size B (!= num_seeds)."""
    spec = [tf.TensorSpec([None, D], tf.float32), tf.TensorSpec([None, 2], tf.int32)]

    def run(loc, seeds):
        q = _joint_q(loc) if joint else tfd.Independent(tfd.Normal(loc, 1.0), 1)
        if objective:
            return mco.IWAE(K)(q, _joint_log_joint if joint else _log_joint, seed=seeds).loss
        return sampling.sample(q, K, seeds)

    run = in_mode(run, "function", input_signature=spec, autograph=False)
    return run(tf.zeros([B, D]), tf.zeros([num_seeds, 2], tf.int32))


for _num in (1, B + 1):
    _add(
        f"sample:joint-q-seed-per-example-dynamic-{_num}-for-{B}",
        lambda n=_num: _seed_batch_differs_dynamically(n, objective=False, joint=True),
        tf.errors.InvalidArgumentError,
        "`seed`",
        "[B, 2]",
        dynamic=True,
    )
    _add(
        f"iwae:joint-q-seed-per-example-dynamic-{_num}-for-{B}",
        lambda n=_num: _seed_batch_differs_dynamically(n, objective=True, joint=True),
        tf.errors.InvalidArgumentError,
        "`seed`",
        "[B, 2]",
        dynamic=True,
    )
    _add(
        f"sample:seed-per-example-dynamic-{_num}-for-{B}",
        lambda n=_num: _seed_batch_differs_dynamically(n, objective=False),
        tf.errors.InvalidArgumentError,
        "`seed`",
        "[B, 2]",
        dynamic=True,
    )
    _add(
        f"iwae:seed-per-example-dynamic-{_num}-for-{B}",
        lambda n=_num: _seed_batch_differs_dynamically(n, objective=True),
        tf.errors.InvalidArgumentError,
        "`seed`",
        "[B, 2]",
        dynamic=True,
    )

# stateless_seed and standard_normal take one seed only.
for _key in ("float", "str", "bool", "ragged", "shape-[3]", "component-beyond-int64"):
    _seed, _error, _words = BAD_SEEDS[_key]
    _add(f"stateless_seed:{_key}", lambda s=_seed: sampling.stateless_seed(s), _error, *_words)
_add(
    "stateless_seed:per-example",
    lambda: sampling.stateless_seed(np.zeros([B, 2], np.int32)),
    ValueError,
    "`seed`",
    "[2]",
)
_add(
    "standard_normal:seed-float",
    lambda: sampling.standard_normal([3], 1.5),
    TypeError,
    "`seed`",
)

# --------------------------------------------------------------------------------------
# Sample counts, shapes and dtypes of sampling
# --------------------------------------------------------------------------------------

# key -> (num_samples, error, words)
BAD_COUNTS = {
    "zero": (0, ValueError, ("`num_samples`", ">= 1", "0")),
    "negative": (-3, ValueError, ("`num_samples`", "-3")),
    "float": (64.0, TypeError, ("`num_samples`", "float")),
    "numpy-float": (np.float64(8.0), TypeError, ("`num_samples`", "float64")),
    "fraction": (2.5, TypeError, ("`num_samples`", "float")),
    "bool": (True, TypeError, ("`num_samples`", "bool")),
    "str": ("8", TypeError, ("`num_samples`", "str")),
    "None": (None, TypeError, ("`num_samples`", "NoneType")),
    "tensor": (tf.constant(8), TypeError, ("`num_samples`", "Tensor")),
    "2**31": (2**31, ValueError, ("`num_samples`", "2**31")),
}

for _key, (_count, _error, _words) in BAD_COUNTS.items():
    _name = _next_name()
    if _name in ("miwae", "piwae"):
        _name = "iwae"
    _add(
        f"make_objective:{_name}-num_samples-{_key}",
        lambda n=_count, name=_name: mco.make_objective(name, n),
        _error,
        *_words,
    )
    _add(
        f"sample:num_samples-{_key}",
        lambda n=_count: sampling.sample(_q(), n, SEED),
        _error,
        *_words,
    )

_add(
    "standard_normal:negative-dimension",
    lambda: sampling.standard_normal([-1, 3], SEED),
    ValueError,
    "`shape`",
    "-1",
)
_add(
    "standard_normal:float-shape",
    lambda: sampling.standard_normal([2.5], SEED),
    TypeError,
    "`shape`",
    "float",
)
_add(
    "standard_normal:str-shape",
    lambda: sampling.standard_normal("abc", SEED),
    TypeError,
    "`shape`",
)
_add(
    "standard_normal:float16",
    lambda: sampling.standard_normal([3], SEED, tf.float16),
    TypeError,
    "`dtype`",
    "float16",
)
_add(
    "sample:q-tensor",
    lambda: sampling.sample(tf.zeros([B, D]), K, SEED),
    TypeError,
    "`q`",
    "Distribution",
)
_add("sample:q-None", lambda: sampling.sample(None, K, SEED), TypeError, "`q`", "NoneType")
_add(
    "sample:q-float16",
    lambda: sampling.sample(_q(tf.float16), K, SEED),
    TypeError,
    "`q`",
    "float16",
    "float32",
)

# --------------------------------------------------------------------------------------
# Objective construction: counts and hyperparameters (through make_objective)
# --------------------------------------------------------------------------------------

BAD_CONSTRUCTIONS = {
    "vimco-1-sample": (lambda: mco.make_objective("vimco", 1), ValueError, ("`num_samples`", "2")),
    "jvi-1-sample": (lambda: mco.make_objective("jvi", 1), ValueError, ("`num_samples`", "2")),
    "iwae-2**40-samples": (
        lambda: mco.make_objective("iwae", 2**40),
        ValueError,
        ("`num_samples`", "2**31"),
    ),
    "miwae-product-2**40": (
        lambda: mco.MIWAE(2**20, 2**20),
        ValueError,
        ("`num_samples`", "2**31"),
    ),
    "miwae-not-a-multiple": (
        lambda: mco.make_objective("miwae", 6, num_outer=4),
        ValueError,
        ("`num_samples`", "`num_outer`", "multiple"),
    ),
    "piwae-no-num_outer": (
        lambda: mco.make_objective("piwae", 6),
        TypeError,
        ("`num_outer`",),
    ),
    "piwae-num_outer-0": (
        lambda: mco.make_objective("piwae", 6, num_outer=0),
        ValueError,
        ("`num_outer`", "0"),
    ),
    "miwae-num_outer-float": (
        lambda: mco.make_objective("miwae", 6, num_outer=2.0),
        TypeError,
        ("`num_outer`", "float"),
    ),
    "piwae-num_inner-given": (
        lambda: mco.make_objective("piwae", 6, num_outer=2, num_inner=3),
        TypeError,
        ("num_inner", "`num_outer` only"),
    ),
    "miwae-num_inner-negative": (lambda: mco.MIWAE(2, -1), ValueError, ("`num_inner`", "-1")),
    "ciwae-beta-1.5": (
        lambda: mco.make_objective("ciwae", K, beta=1.5),
        ValueError,
        ("`beta`", "[0, 1]", "1.5"),
    ),
    "ciwae-beta-negative": (
        lambda: mco.make_objective("ciwae", K, beta=-0.1),
        ValueError,
        ("`beta`", "-0.1"),
    ),
    "ciwae-beta-nan": (
        lambda: mco.make_objective("ciwae", K, beta=math.nan),
        ValueError,
        ("`beta`", "nan"),
    ),
    "ciwae-beta-str": (
        lambda: mco.make_objective("ciwae", K, beta="0.5"),
        TypeError,
        ("`beta`", "str"),
    ),
    "ciwae-beta-tensor": (
        lambda: mco.make_objective("ciwae", K, beta=tf.constant(0.5)),
        TypeError,
        ("`beta`",),
    ),
    "ciwae-learnable-beta-0": (
        lambda: mco.make_objective("ciwae", K, beta=0.0, learnable_beta=True),
        ValueError,
        ("`beta`", "(0, 1)"),
    ),
    "ciwae-learnable-beta-str": (
        lambda: mco.make_objective("ciwae", K, learnable_beta="no"),
        TypeError,
        ("`learnable_beta`", "bool"),
    ),
    "dreg-alpha-2": (
        lambda: mco.make_objective("dreg", K, alpha=2.0),
        ValueError,
        ("`alpha`", "2.0"),
    ),
    "dreg-alpha-None": (
        lambda: mco.make_objective("dreg", K, alpha=None),
        TypeError,
        ("`alpha`", "NoneType"),
    ),
    "vriwae-alpha-1": (
        lambda: mco.make_objective("vriwae", K, alpha=1.0),
        ValueError,
        ("`alpha`", "VAE"),
    ),
    "vriwae-alpha-inf": (
        lambda: mco.make_objective("vriwae", K, alpha=math.inf),
        ValueError,
        ("`alpha`", "inf"),
    ),
    "vriwae-dreg-str": (
        lambda: mco.make_objective("vriwae", K, dreg="yes"),
        TypeError,
        ("`dreg`", "bool"),
    ),
    "jvi-dreg-int": (lambda: mco.make_objective("jvi", K, dreg=1), TypeError, ("`dreg`", "bool")),
    "iwae-unknown-argument": (
        lambda: mco.make_objective("iwae", K, alpha=0.5),
        TypeError,
        ("'alpha'", "IWAE"),
    ),
    "unknown-name": (
        lambda: mco.make_objective("iwea", K),
        ValueError,
        ("'iwea'", "iwae"),
    ),
    "name-not-str": (lambda: mco.make_objective(3, K), ValueError, ("Unknown objective", "iwae")),
}

for _key, (_call, _error, _words) in BAD_CONSTRUCTIONS.items():
    _add(f"construct:{_key}", _call, _error, *_words)

# --------------------------------------------------------------------------------------
# q: not a distribution, wrong batch, empty batch, unsupported dtype
# --------------------------------------------------------------------------------------

_add_objective_call("q-tensor", TypeError, "`q`", "Distribution", q=lambda: tf.zeros([B, D]))
_add_objective_call("q-None", TypeError, "`q`", "NoneType", q=lambda: None)
_add_objective_call("q-class", TypeError, "`q`", "type", q=lambda: tfd.Normal)
_add_objective_call("q-list", TypeError, "`q`", "list", q=lambda: [_q(), _q()])
_add_objective_call(
    "q-batch-[B,D]",
    ValueError,
    "`q`",
    "batch shape [B]",
    "tfd.Independent",
    q=lambda: tfd.Normal(tf.zeros([B, D]), 1.0),
)
_add_objective_call(
    "q-batch-[]", ValueError, "`q`", "batch shape [B]", q=lambda: tfd.Normal(0.0, 1.0)
)
for _ in range(3):
    _add_objective_call(
        "q-empty-batch",
        ValueError,
        "`q`",
        "batch size 0",
        q=lambda: _q(batch=0),
    )
for _dtype in (tf.float16, tf.bfloat16):
    for _ in range(2):
        _add_objective_call(
            f"q-{_dtype.name}",
            TypeError,
            "`q`",
            _dtype.name,
            "float32",
            "mixed precision",
            q=lambda d=_dtype: _q(d),
        )


def _dynamic_empty_batch(name: str):
    def loss(loc):
        q = tfd.Independent(tfd.Normal(loc, 1.0), 1)
        return _objective(name)(q, _log_joint, seed=SEED).loss

    signature = [tf.TensorSpec([None, D], tf.float32)]
    return in_mode(loss, "function", input_signature=signature, autograph=False)(tf.zeros([0, D]))


for _name in ("iwae", "dreg", "rws", "vimco"):
    _add(
        f"{_name}:q-empty-batch-dynamic",
        lambda n=_name: _dynamic_empty_batch(n),
        tf.errors.InvalidArgumentError,
        "`q`",
        "batch size 0",
        dynamic=True,
    )

# --------------------------------------------------------------------------------------
# log_joint: not callable, wrong output, a model in another dtype
# --------------------------------------------------------------------------------------

_add_objective_call("log_joint-float", TypeError, "`log_joint`", "float", log_joint=1.0)
_add_objective_call("log_joint-None", TypeError, "`log_joint`", "NoneType", log_joint=None)
_add_objective_call(
    "log_joint-tensor", TypeError, "`log_joint`", "EagerTensor", log_joint=tf.zeros([K, B])
)

# key -> (log_joint, error, words)
BAD_OUTPUTS = {
    "scalar": (lambda z: tf.reduce_sum(_log_joint(z)), ValueError, ("`log_joint`", "shape")),
    "[S]": (lambda z: tf.reduce_sum(_log_joint(z), 1), ValueError, ("`log_joint`", "shape")),
    "[B]": (lambda z: _log_joint(z)[0], ValueError, ("`log_joint`", "shape")),
    "[S,B,D]": (lambda z: -0.5 * z**2, ValueError, ("`log_joint`", "shape", "sum")),
    "[B+1,S]": (lambda z: tf.zeros([B + 1, K]), ValueError, ("`log_joint`", "shape")),
    "python-float": (lambda z: 0.0, TypeError, ("`log_joint`", "float")),
    "list": (lambda z: [[0.0] * B] * K, TypeError, ("`log_joint`", "list")),
    "str": (lambda z: "0", TypeError, ("`log_joint`", "str")),
    "None": (lambda z: None, TypeError, ("`log_joint`", "NoneType")),
    "tuple": (lambda z: (_log_joint(z), 0.0), TypeError, ("`log_joint`", "tuple")),
    "distribution": (
        lambda z: tfd.Normal(z, 1.0),
        TypeError,
        ("`log_joint`", "Normal", "log_prob"),
    ),
    "int32": (
        lambda z: tf.zeros([K, B], tf.int32),
        TypeError,
        ("`log_joint`", "int32", "float32"),
    ),
    "bool": (lambda z: tf.zeros([K, B], tf.bool), TypeError, ("`log_joint`", "bool", "float32")),
    "float64": (
        lambda z: tf.zeros([K, B], tf.float64),
        TypeError,
        ("`log_joint`", "float64", "float32"),
    ),
    "numpy-float64": (
        lambda z: np.zeros([K, B]),
        TypeError,
        ("`log_joint`", "float64", "float32"),
    ),
    "complex64": (
        lambda z: tf.zeros([K, B], tf.complex64),
        TypeError,
        ("`log_joint`", "complex64", "float32"),
    ),
}

for _key, (_fn, _error, _words) in BAD_OUTPUTS.items():
    _add_objective_call(
        f"log_joint-returns-{_key}", _error, *_words, log_joint=_fn, needs_output=True
    )

for _ in range(3):
    _add_objective_call(
        "q-float64-model-float32",
        TypeError,
        "`log_joint`",
        "float64",
        "float32",
        "same dtype",
        q=lambda: _q(tf.float64),
        log_joint=_float32_model,
        needs_output=True,
    )
    _add_objective_call(
        "q-float32-log_joint-float64",
        TypeError,
        "`log_joint`",
        "float64",
        "float32",
        "same dtype",
        log_joint=lambda z: tf.cast(_log_joint(z), tf.float64),
        needs_output=True,
    )


def _dynamic_wrong_output(name: str):
    """log_joint [S, 1] for a q of dynamic batch size B: it would broadcast silently."""

    def loss(loc):
        q = tfd.Independent(tfd.Normal(loc, 1.0), 1)
        return _objective(name)(q, lambda z: _log_joint(z)[:, :1], seed=SEED).loss

    signature = [tf.TensorSpec([None, D], tf.float32)]
    return in_mode(loss, "function", input_signature=signature, autograph=False)(tf.zeros([B, D]))


for _name in ("iwae", "stl", "rws"):
    _add(
        f"{_name}:log_joint-returns-[S,1]-dynamic",
        lambda n=_name: _dynamic_wrong_output(n),
        tf.errors.InvalidArgumentError,
        "`log_joint`",
        "[num_samples, batch]",
        dynamic=True,
    )

# --------------------------------------------------------------------------------------
# log_marginal_estimate
# --------------------------------------------------------------------------------------


def _estimate(q=_q, log_joint=None, seed=SEED, **kwargs):
    spy = Spy(log_joint or _log_joint)

    def call():
        return mco.log_marginal_estimate(q(), spy, seed, **kwargs)

    return call, spy


# key -> (kwargs, error, words, needs_output)
BAD_ESTIMATES = {
    "num_samples-0": ({"num_samples": 0}, ValueError, ("`num_samples`",), False),
    "num_samples-2.5": ({"num_samples": 2.5}, TypeError, ("`num_samples`",), False),
    "num_samples-None": ({"num_samples": None}, TypeError, ("`num_samples`",), False),
    "chunk_size-0": ({"num_samples": 10, "chunk_size": 0}, ValueError, ("`chunk_size`",), False),
    "chunk_size-str": (
        {"num_samples": 10, "chunk_size": "5"},
        TypeError,
        ("`chunk_size`",),
        False,
    ),
    "chunk_size-64.0": (
        {"num_samples": 10, "chunk_size": 64.0},
        TypeError,
        ("`chunk_size`",),
        False,
    ),
    "chunk_size-bool": (
        {"num_samples": 10, "chunk_size": True},
        TypeError,
        ("`chunk_size`",),
        False,
    ),
    "seed-per-example": (
        {"seed": np.zeros([B, 2], np.int32), "num_samples": 10},
        ValueError,
        ("`seed`", "per-example"),
        False,
    ),
    "seed-float": ({"seed": 0.5, "num_samples": 10}, TypeError, ("`seed`",), False),
    "seed-None": ({"seed": None, "num_samples": 10}, TypeError, ("`seed`",), False),
    "q-tensor": (
        {"q": lambda: tf.zeros([B, D]), "num_samples": 10},
        TypeError,
        ("`q`",),
        False,
    ),
    "q-float16": (
        {"q": lambda: _q(tf.float16), "num_samples": 10},
        TypeError,
        ("`q`", "float16"),
        False,
    ),
    "log_joint-[S]": (
        {"log_joint": lambda z: tf.reduce_sum(_log_joint(z), 1), "num_samples": 10},
        ValueError,
        ("`log_joint`", "shape"),
        True,
    ),
    "q-float64-model-float32": (
        {"q": lambda: _q(tf.float64), "log_joint": _float32_model, "num_samples": 10},
        TypeError,
        ("`log_joint`", "float64", "float32"),
        True,
    ),
}

for _key, (_kwargs, _error, _words, _needs_output) in BAD_ESTIMATES.items():
    _call, _spy = _estimate(**_kwargs)
    _add(
        f"log_marginal_estimate:{_key}",
        _call,
        _error,
        *_words,
        spy=None if _needs_output else _spy,
    )

# --------------------------------------------------------------------------------------
# diagnostics
# --------------------------------------------------------------------------------------


def _statistics(**kwargs):
    spy = Spy(lambda seed: [tf.zeros([2])])
    arguments = {"estimator": spy, "num_estimates": 4, "seed": SEED, **kwargs}

    def call():
        return diagnostics.gradient_statistics(**arguments)

    return call, spy


BAD_STATISTICS = {
    "estimator-not-callable": ({"estimator": 3}, TypeError, ("`estimator`",)),
    "reference-not-callable": ({"reference": "iwae"}, TypeError, ("`reference`",)),
    "num_estimates-1": ({"num_estimates": 1}, ValueError, ("`num_estimates`", "2")),
    "num_estimates-float": ({"num_estimates": 100.0}, TypeError, ("`num_estimates`",)),
    "chunk_size-0": ({"chunk_size": 0}, ValueError, ("`chunk_size`",)),
    "max_stored_elements-negative": (
        {"max_stored_elements": -1},
        ValueError,
        ("`max_stored_elements`",),
    ),
    "seed-None": ({"seed": None}, TypeError, ("`seed`",)),
    "seed-float": ({"seed": 1.5}, TypeError, ("`seed`",)),
    "seed-per-example": ({"seed": np.zeros([B, 2], np.int32)}, ValueError, ("`seed`",)),
    "keep_estimates-str": ({"keep_estimates": "yes"}, TypeError, ("`keep_estimates`",)),
    "jit_compile-int": ({"jit_compile": 1}, TypeError, ("`jit_compile`",)),
    "dsnr_direction-str": ({"dsnr_direction": "means"}, ValueError, ("`dsnr_direction`",)),
}

for _key, (_kwargs, _error, _words) in BAD_STATISTICS.items():
    _call, _spy = _statistics(**_kwargs)
    _add(f"gradient_statistics:{_key}", _call, _error, *_words, spy=_spy)

_add(
    "gradient_estimates:num_estimates-0",
    lambda: diagnostics.gradient_estimates(lambda s: [tf.zeros([2])], 0, SEED),
    ValueError,
    "`num_estimates`",
)
_add(
    "make_gradient_estimator:loss_fn-not-callable",
    lambda: diagnostics.make_gradient_estimator(3, [tf.Variable(1.0)]),
    TypeError,
    "`loss_fn`",
)
_add(
    "make_gradient_estimator:no-variables",
    lambda: diagnostics.make_gradient_estimator(lambda s: 0.0, []),
    ValueError,
    "`variables`",
)
_add(
    "make_gradient_estimator:tensor-not-variable",
    lambda: diagnostics.make_gradient_estimator(lambda s: 0.0, [tf.constant(1.0)]),
    TypeError,
    "`variables`",
)
_add(
    "random_direction_dsnr:dim-2",
    lambda: diagnostics.random_direction_dsnr(2),
    ValueError,
    "`dim`",
)
_add(
    "random_direction_dsnr:dim-float",
    lambda: diagnostics.random_direction_dsnr(10.0),
    TypeError,
    "`dim`",
)
_add(
    "log_log_slope:one-point",
    lambda: diagnostics.log_log_slope([1.0], [1.0]),
    ValueError,
    "`x`",
    "`y`",
)
_add(
    "log_log_slope:lengths-differ",
    lambda: diagnostics.log_log_slope([1.0, 2.0, 3.0], [1.0, 2.0]),
    ValueError,
    "`x`",
    "`y`",
)
_add(
    "log_log_slope:nonpositive",
    lambda: diagnostics.log_log_slope([1.0, 2.0], [0.0, 1.0]),
    ValueError,
    "`y`",
    "positive",
)
_add(
    "log_log_slope:str",
    lambda: diagnostics.log_log_slope(["a", "b"], [1.0, 2.0]),
    TypeError,
    "`x`",
)
_add(
    "active_units:rank-1",
    lambda: mco.active_units(tf.zeros([5])),
    ValueError,
    "`posterior_means`",
    "[N, D]",
)
_add(
    "active_units:threshold-0",
    lambda: mco.active_units(tf.zeros([5, 2]), threshold=0.0),
    ValueError,
    "`threshold`",
)
_add(
    "active_units:threshold-str",
    lambda: mco.active_units(tf.zeros([5, 2]), threshold="0.01"),
    ValueError,
    "`threshold`",
)
_add(
    "active_units:threshold-bool",
    lambda: mco.active_units(tf.zeros([5, 2]), threshold=True),
    ValueError,
    "`threshold`",
)
_add(
    "active_units:empty-structure",
    lambda: mco.active_units({}),
    ValueError,
    "`posterior_means`",
)
_add(
    "active_units:one-data-point",
    lambda: mco.active_units(tf.zeros([1, 2])),
    ValueError,
    "`posterior_means`",
    "2",
)
_add(
    "active_units:no-data-points",
    lambda: mco.active_units(np.zeros([0, 2])),
    ValueError,
    "`posterior_means`",
    "2",
)
_add(
    "active_units:strings",
    lambda: mco.active_units(tf.constant([["a", "b"], ["c", "d"]])),
    TypeError,
    "`posterior_means`",
    "string",
)


# --------------------------------------------------------------------------------------
# The battery
# --------------------------------------------------------------------------------------


def raised_in_package(info: pytest.ExceptionInfo) -> bool:
    """Whether the error's innermost traceback frame is in mcobjectives' own source."""
    tb = info.tb
    while tb.tb_next is not None:
        tb = tb.tb_next
    return PACKAGE in pathlib.Path(tb.tb_frame.f_code.co_filename).resolve().parents


def test_the_battery_is_large():
    assert len(CASES) >= 100, len(CASES)


@pytest.mark.parametrize("key", CASES)
def test_bad_input_is_refused_by_our_check(key):
    """The case's error type, a message naming the argument, raised by mcobjectives (by a
    run-time assertion of ours for a dynamic shape), before log_joint ran."""
    if key.split(":")[0] in mco.objectives.OBJECTIVES:  # the cases run on a Gaussian q
        skip_unless_gaussian_q(mco.objectives.OBJECTIVES[key.split(":")[0]])
    case = CASES[key]
    with pytest.raises(case.error, match=_all_of(*case.words)) as info:
        case.call()
    print(info.value)
    if case.dynamic:
        assert isinstance(info.value, tf.errors.InvalidArgumentError)
    else:
        assert not isinstance(info.value, tf.errors.OpError)
        assert raised_in_package(info), "raised outside mcobjectives"
    if case.spy is not None:
        assert case.spy.calls == 0, "the check ran after log_joint (or the estimator)"


# --------------------------------------------------------------------------------------
# What the checks let through
# --------------------------------------------------------------------------------------

GOOD_SEEDS = {
    "int": 3,
    "numpy-int64": np.int64(3),
    "int64-scalar-tensor": tf.constant(3, tf.int64),
    "list": [1, 2],
    "numpy-uint8": np.array([1, 2], np.uint8),
    "int64-tensor": tf.constant([1, 2], tf.int64),
    "int64-beyond-int32": tf.constant([2**40, 2], tf.int64),
    "list-beyond-int32": [2**40, 2],
    "int32-variable": tf.Variable([1, 2]),
    "per-example-int64": np.arange(2 * B, dtype=np.int64).reshape(B, 2),
}


@pytest.mark.parametrize("seed", GOOD_SEEDS.values(), ids=GOOD_SEEDS)
def test_good_seeds_are_accepted(seed):
    result = mco.IWAE(K)(_q(), _log_joint, seed=seed)
    assert np.all(np.isfinite(result.bound.numpy()))


@pytest.mark.parametrize("count", [np.int64(3), np.int32(3), np.uint8(3), 3])
def test_numpy_integer_sample_counts_are_accepted(count):
    assert sampling.sample(_q(), count, SEED).shape == [3, B, D]
    assert mco.make_objective("iwae", count).num_samples == 3


def test_a_variable_seed_reads_its_current_value():
    seed = tf.Variable([5, 6])
    first = mco.IWAE(K)(_q(), _log_joint, seed=seed).log_weights
    np.testing.assert_array_equal(first, mco.IWAE(K)(_q(), _log_joint, seed=[5, 6]).log_weights)
    seed.assign([5, 7])
    second = mco.IWAE(K)(_q(), _log_joint, seed=seed).log_weights
    assert not np.array_equal(first, second)


def test_an_empty_batch_is_fine_where_nothing_is_averaged():
    """sample and log_marginal_estimate return empty results for a batch of size 0."""
    assert sampling.sample(_q(batch=0), K, SEED).shape == [K, 0, D]
    estimate = mco.log_marginal_estimate(_q(batch=0), _log_joint, SEED, num_samples=10)
    assert estimate.shape == [0]


@modes(*GRAPH_MODES, reason="a batch of dynamic size exists only in a traced graph")
def test_a_dynamic_batch_of_data_points_passes_the_run_time_checks(mode):
    """Per-example seeds, a log_joint and a batch of dynamic size B > 0 that agree: the
    loss is the eager loss of the same batch of static size (1e-6)."""
    spec = [tf.TensorSpec([None, D], tf.float32), tf.TensorSpec([None, 2], tf.int32)]
    loc = tf.reshape(tf.range(B * D, dtype=tf.float32), [B, D]) / 10.0
    seeds = tf.reshape(tf.range(2 * B), [B, 2])

    def loss(loc, seeds):
        q = tfd.Independent(tfd.Normal(loc, 1.0), 1)
        return mco.DReG(K)(q, _log_joint, seed=seeds).loss

    def joint_loss(loc, seeds):
        return mco.DReG(K)(_joint_q(loc), _joint_log_joint, seed=seeds).loss

    for fn in (loss, joint_loss):
        value = in_mode(fn, mode, input_signature=spec)(loc, seeds)
        np.testing.assert_allclose(value.numpy(), fn(loc, seeds).numpy(), rtol=1e-6)


def test_an_error_of_log_joint_itself_is_not_rewritten():
    """Only a model computing in another dtype than q gets our message; any other error
    inside log_joint reaches the caller unchanged."""

    def broken(z):
        raise ValueError("a bug of the user's (float32 everywhere)")

    with pytest.raises(ValueError, match="a bug of the user's") as info:
        mco.IWAE(K)(_q(), broken, seed=SEED)
    assert info.value.__cause__ is None


def test_a_model_in_another_dtype_is_reported_with_the_original_error_chained():
    with pytest.raises(TypeError, match=_all_of("float64", "float32", "same dtype")) as info:
        mco.IWAE(K)(_q(tf.float64), _float32_model, seed=SEED)
    assert info.value.__cause__ is not None
    print(info.value)
