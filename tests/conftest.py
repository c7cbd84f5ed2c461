"""The execution modes of the tests: eager, tf.function and XLA.

As TFP's `test_util.test_all_tf_execution_regimes` runs a test eagerly and in a graph,
a numerical test here takes the `mode` fixture and runs its computation through
`in_mode(fn, mode)`; it then runs three times: eagerly, as a `tf.function`, and as an
XLA-compiled `tf.function` (`jit_compile=True`).

A test that runs in fewer modes, or leaves some of them to the slow run, says so with
`@modes(...)`, whose `reason` is required; a parametrization combining the mode with
other parameters builds its values with `mode_params(...)` beside a comment giving the
reason. `mode == "xla"` is also what a test passes as `jit_compile` to an API that
compiles by itself (`make_train_step`, `model.compile`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

import pytest
import tensorflow as tf

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One of several worker processes on the machine's cores (pyproject's `-n 2`): one
    # thread for each operation's own work, in this process and the scripts it starts, so
    # that the workers do not each spread every matmul over every core and contend. (The
    # inter-op pool keeps its size: collective and data-pipeline ops wait on each other.)
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    tf.config.threading.set_intra_op_parallelism_threads(1)

MODES = ("eager", "function", "xla")
# The modes that trace a graph: the tests comparing a graph with the eager numbers, and
# the tests of tracing itself.
GRAPH_MODES = ("function", "xla")
# Without XLA, which compiles run-time assertions (tf.debugging.assert_*) away.
EAGER_AND_FUNCTION = ("eager", "function")


def in_mode(fn: Callable, mode: str, *, input_signature=None, autograph: bool = True):
    """`fn` itself (eager), `tf.function(fn)` or `tf.function(fn, jit_compile=True)`.

    `input_signature` (graph modes only) traces `fn` for the shapes it gives, for
    example a batch of unknown size. `autograph=False` leaves the traced code as
    written, so that an error raised while tracing keeps its own traceback (autograph
    re-raises it from its converted code).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; the modes are {MODES}")
    if mode == "eager":
        if input_signature is not None:
            raise ValueError("an input_signature needs a graph mode, not 'eager'")
        return fn
    return tf.function(
        fn, input_signature=input_signature, autograph=autograph, jit_compile=mode == "xla"
    )


@pytest.fixture(params=MODES)
def mode(request) -> str:
    """The execution mode of the test: "eager", "function" or "xla"."""
    return request.param


def mode_params(subset: Iterable[str] = MODES, *, slow: Iterable[str] = ()) -> list:
    """`pytest.param`s of the modes in `subset`, those in `slow` marked slow."""
    subset, slow = tuple(subset), tuple(slow)
    unknown = sorted(set(subset + slow) - set(MODES))
    if unknown or not subset or not set(slow) <= set(subset):
        raise ValueError(f"modes {subset} (slow {slow}): each one of {MODES}, slow among them")
    return [pytest.param(m, id=m, marks=[pytest.mark.slow] if m in slow else []) for m in subset]


def modes(*subset: str, reason: str, slow: Iterable[str] = ()):
    """Parametrizes `mode` with `subset` of MODES (those in `slow` marked slow).

    `reason` says why the other modes are left out or left to the slow run; a test
    running in every mode takes the `mode` fixture instead.
    """
    slow = tuple(slow)
    if not reason or not reason.strip():
        raise ValueError("a subset of the modes needs its reason")
    if set(subset) == set(MODES) and not slow:
        raise ValueError("every mode, none slow: take the `mode` fixture instead")
    return pytest.mark.parametrize("mode", mode_params(subset, slow=slow))


def takes_gaussian_q(objective) -> bool:
    """Whether `objective` (an instance or a class) takes the tests' Gaussian q: False for
    an objective declaring `leaf_families` (DisARM: Bernoulli leaves only), which its own
    tests cover (tests/test_disarm.py)."""
    cls = objective if isinstance(objective, type) else type(objective)
    return getattr(cls, "leaf_families", None) is None


def skip_unless_gaussian_q(objective) -> None:
    """Skips a test run on a Gaussian q for an objective that does not take one."""
    if not takes_gaussian_q(objective):
        pytest.skip(
            f"{getattr(objective, '__name__', type(objective).__name__)} takes only "
            "Bernoulli leaves (leaf_families); tests/test_disarm.py covers it"
        )


# Checkpoint bookkeeping that differs between runs that trained the same weights.
NOT_COMPARED = ("_CHECKPOINTABLE_OBJECT_GRAPH", "save_counter")


def latest_checkpoint_tensors(directory) -> dict:
    """The tensors of the latest checkpoint in `directory`, by name (bookkeeping left out)."""
    prefix = tf.train.latest_checkpoint(str(directory))
    assert prefix is not None, f"no checkpoint in {directory}"
    reader = tf.train.load_checkpoint(prefix)
    return {
        name: reader.get_tensor(name)
        for name in reader.get_variable_to_dtype_map()
        if not name.startswith(NOT_COMPARED)
    }
