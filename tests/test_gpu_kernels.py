"""GPU readiness, checked on a CPU: every op of the library's graphs has a GPU kernel.

The test traces the concrete graphs a GPU run would execute without XLA: the training
step of `mco.make_train_step`, with and without per-example seeds; the model's Keras
`train_step` (what `model.fit` runs per batch); `mco.log_marginal_estimate` (a
`tf.while_loop` over chunks); and one chunk of `mco.diagnostics.gradient_statistics`
(a `tf.vectorized_map` of gradient estimates). It does so for the one-stochastic-layer
Gaussian model trained by IWAE and for the sigmoid belief net trained by VIMCO
(Bernoulli latents: the logistic noise, int32 samples). It walks every node of each
graph and of every function in its library (the bodies of function calls, of `If`
branches and `While` loops, gradient functions), collects each (op type, type
attributes) pair, and asks `get_registered_kernels_for_op` whether a kernel for the
device "GPU" (or "DEFAULT", TensorFlow's registration for every device, which serves
its int32 kernels in host memory) admits those types.

A TensorFlow built with CUDA (the Linux pip package) registers its GPU kernels whether
or not a GPU is present. On a CPU-only build (no GPU kernel for MatMul) the tests skip,
saying so.

Allowed without a GPU kernel (`ALLOWED`): string constants, the messages of assertions,
which feed the host-memory input "data" of Assert only; a tf.function places softly, so
they stay on the CPU beside a GPU graph.

Not covered: under `jit_compile=True` XLA compiles through its own op registrations
(tf2xla), which `get_registered_kernels_for_op` does not list.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow.core.framework import types_pb2
from tensorflow.python.framework import kernels, op_def_registry

import mcobjectives as mco
from mcobjectives import diagnostics, networks
from mcobjectives.diagnostics import gradients as diagnostics_gradients

tfd = tfp.distributions

GPU_DEVICES = ("GPU", "DEFAULT")


def _build_has_gpu_kernels() -> bool:
    registered = kernels.get_registered_kernels_for_op("MatMul").kernel
    return any(k.device_type == "GPU" for k in registered)


pytestmark = pytest.mark.skipif(
    not _build_has_gpu_kernels(),
    reason="this TensorFlow build registers no GPU kernels (a CPU-only build), so the "
    "graphs cannot be checked against them",
)

# (op type, {type attribute: dtype}) pairs that need no GPU kernel, with the reason.
ALLOWED = {
    ("Const", (("dtype", "DT_STRING"),)): "assertion messages, host memory",
}

# --- reading graphs --------------------------------------------------------------------


def _type_attrs(node, op_def) -> tuple:
    """The node's type and type-list attributes, defaults filled in from the op's def."""
    values = {a.name: a.default_value for a in op_def.attr if a.HasField("default_value")}
    values.update(node.attr)
    attrs = []
    for name, value in sorted(values.items()):
        if value.HasField("type"):
            attrs.append((name, types_pb2.DataType.Name(value.type)))
        elif value.HasField("list") and value.list.type:
            attrs.append((name, tuple(types_pb2.DataType.Name(t) for t in value.list.type)))
    return tuple(attrs)


def graph_ops(graph_def) -> set[tuple[str, tuple]]:
    """Every (op type, type attributes) of a GraphDef and of all the functions it holds."""
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes += list(function.node_def)
    ops = set()
    for node in nodes:
        op_def = op_def_registry.get(node.op)
        if op_def is None:  # a call of a library function by its name
            ops.add((node.op, ()))
        else:
            ops.add((node.op, _type_attrs(node, op_def)))
    return ops


def _admits(kernel, attrs: dict) -> bool:
    for constraint in kernel.constraint:
        value = attrs.get(constraint.name)
        if value is None:
            continue
        allowed = {types_pb2.DataType.Name(t) for t in constraint.allowed_values.list.type}
        if not set(value if isinstance(value, tuple) else (value,)) <= allowed:
            return False
    return True


def has_gpu_kernel(op: str, attrs: tuple) -> bool:
    registered = kernels.get_registered_kernels_for_op(op).kernel
    return any(k.device_type in GPU_DEVICES and _admits(k, dict(attrs)) for k in registered)


def lacking_gpu_kernels(graph_def, function_names=frozenset()) -> list[tuple[str, tuple]]:
    """The (op, type attributes) of the graph without a GPU kernel, ALLOWED excepted.

    A node calling a library function by name (`function_names`) runs the function's
    body, whose nodes are checked themselves.
    """
    return sorted(
        (op, attrs)
        for op, attrs in graph_ops(graph_def)
        if op not in function_names and (op, attrs) not in ALLOWED and not has_gpu_kernel(op, attrs)
    )


def _describe(ops) -> str:
    return "\n".join(f"  {op} {dict(attrs)}" for op, attrs in sorted(ops))


# --- the graphs ------------------------------------------------------------------------

B, PIXELS, K = 4, 12, 6


def _model(kind: str):
    keras.utils.set_random_seed(0)
    if kind == "gaussian":
        encoder = networks.GaussianEncoder(3, hidden_units=(5,))
        decoder = networks.BernoulliDecoder(PIXELS, hidden_units=(5,))
        prior = tfd.Independent(tfd.Normal(tf.zeros(3), tf.ones(3)), 1)
        objective = mco.IWAE(K)
    else:
        encoder = networks.SigmoidBeliefEncoder((4, 3))
        decoder = networks.BernoulliDecoder(PIXELS, (), latent="z1")
        prior = networks.SigmoidBeliefPrior((4, 3))
        objective = mco.VIMCO(K)
    model = mco.ImportanceWeightedAutoencoder(encoder, decoder, prior, objective, seed=1)
    x = tf.constant((np.random.default_rng(0).random([B, PIXELS]) < 0.5).astype(np.float32))
    model(x)
    return model, x


@functools.cache
def traced_graphs(kind: str) -> dict:
    """name -> the GraphDef of one concrete function a training run or an analysis runs."""
    model, x = _model(kind)
    optimizer = keras.optimizers.Adam()
    model.compile(optimizer=optimizer)
    step = mco.make_train_step(model, optimizer)
    seeds = tf.constant(np.arange(2 * B).reshape(B, 2), tf.int32)

    def log_marginal(x, seed):  # three chunks: a while loop and a remainder
        q, log_joint = model.posterior(x), model.log_joint(x)
        return mco.log_marginal_estimate(q, log_joint, seed, num_samples=2 * K + 1, chunk_size=K)

    estimator = diagnostics.make_gradient_estimator(
        lambda s: model.objective_result(x, seed=s), model.trainable_variables
    )
    chunk = diagnostics_gradients._sampler(estimator, None, jit_compile=False)._draw
    concrete = {
        "train_step": step.get_concrete_function(x),
        "keras_train_step": tf.function(model.train_step).get_concrete_function(x),
        "train_step_with_seeds": step.get_concrete_function({"x": x, "seed": seeds}),
        "log_marginal_estimate": tf.function(log_marginal).get_concrete_function(
            x, tf.TensorSpec([2], tf.int32)
        ),
        "diagnostics_chunk": chunk.get_concrete_function(tf.TensorSpec([3, 2], tf.int32)),
    }
    return {name: c.graph.as_graph_def() for name, c in concrete.items()}


def _function_names(graph_def) -> frozenset:
    return frozenset(f.signature.name for f in graph_def.library.function)


# --- the tests -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gaussian", "sigmoid_belief_net"])
def test_every_op_of_the_library_graphs_has_a_gpu_kernel(kind):
    graphs = traced_graphs(kind)
    every = set()
    lacking = {}
    for name, graph_def in graphs.items():
        ops = graph_ops(graph_def)
        every |= ops
        # The walk reaches into nested bodies: what the model computes is there.
        op_types = {op for op, _ in ops}
        assert {"MatMul", "Softplus", "BitwiseXor", "Mul"} <= op_types, name
        if name == "log_marginal_estimate":
            assert "While" in op_types
        missing = lacking_gpu_kernels(graph_def, _function_names(graph_def))
        if missing:
            lacking[name] = missing
    print(f"\n{kind}: {len(every)} (op, dtype) pairs in {len(graphs)} graphs:\n{_describe(every)}")
    assert not lacking, "ops without a GPU kernel:\n" + "\n".join(
        f"{name}:\n{_describe(ops)}" for name, ops in lacking.items()
    )


def test_the_noise_is_drawn_in_the_graphs_in_uint64():
    """The SplitMix64 noise: its uint64 multiply, add, shift and xor are among the ops
    checked above (TensorFlow registers GPU kernels for them)."""
    ops = set().union(*(graph_ops(g) for g in traced_graphs("gaussian").values()))
    for op in ("Mul", "AddV2", "RightShift", "BitwiseXor"):
        assert (op, (("T", "DT_UINT64"),)) in ops
        assert has_gpu_kernel(op, (("T", "DT_UINT64"),))


def test_the_check_finds_ops_without_a_gpu_kernel():
    """The checker flags a string op (CPU only) and a dtype a GPU kernel does not take
    (ndtri in float16), and passes the same op in a dtype that it does take."""

    @tf.function
    def no_gpu(s, h, d):
        return tf.strings.join([s, s]), tf.math.ndtri(h), tf.math.ndtri(d)

    graph_def = no_gpu.get_concrete_function(
        tf.TensorSpec([], tf.string), tf.TensorSpec([2], tf.float16), tf.TensorSpec([2], tf.float64)
    ).graph.as_graph_def()
    lacking = lacking_gpu_kernels(graph_def)
    assert "StringJoin" in [op for op, _ in lacking]
    assert ("Ndtri", (("T", "DT_HALF"),)) in lacking
    assert ("Ndtri", (("T", "DT_DOUBLE"),)) not in lacking
