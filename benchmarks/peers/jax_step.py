"""Burda et al.'s MNIST model trained with IWAE or DReG in JAX: one jitted step with optax Adam.

The JAX peer of benchmarks/throughput.py, which runs it in its own process (the protocol is
in benchmarks/_peers.py). Run alone, it times its steps on synthetic binary images in rounds
and prints one JSON line:

    python benchmarks/peers/jax_step.py --ks=64 --batch_sizes=20,100 --rounds=3

The model is the library's: encoder 784-200-200-(2 x 50) tanh, q(z|x) = N(mu, diag(sigma^2))
with sigma = softplus(sigma_raw) + 1e-4, prior N(0, I), decoder 50-200-200-784 tanh with
log p(x|z) = sum x l - softplus(l); Glorot-uniform kernels and zero biases. The IWAE loss is
-mean over the batch of (logsumexp_k log w_k - log K), log q from the noise itself. DReG
(Tucker et al., alpha = 0): the decoder's gradient is IWAE's, the encoder's flows through z
alone (log q with its parameters stopped), each sample's weighted by w~_k^2. Both come from
one backward pass: the VJP of log w in (decoder, z) with cotangent w~, whose z part is
multiplied by w~ once more. The step, noise (`jax.random.normal` of the key folded with the
step counter), loss, gradients and `optax.adam(1e-3, eps=1e-4)` update, is one `jax.jit`
with the parameters and optimizer state donated.
"""

from __future__ import annotations

import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import _peers

try:
    import jax
    import jax.numpy as jnp
    import optax
except ImportError as error:
    MISSING: ImportError | None = error
else:
    MISSING = None

LATENT, MIN_SCALE, ENCODER, DECODER = (
    _peers.LATENT,
    _peers.MIN_SCALE,
    _peers.ENCODER,
    _peers.DECODER,
)


def init_params(key) -> dict:
    """Glorot-uniform kernels, zero biases (Keras's Dense defaults)."""

    def dense(key, n_in, n_out):
        limit = math.sqrt(6.0 / (n_in + n_out))
        kernel = jax.random.uniform(key, (n_in, n_out), jnp.float32, -limit, limit)
        return kernel, jnp.zeros([n_out], jnp.float32)

    keys = jax.random.split(key, len(ENCODER) + len(DECODER))
    layers = [dense(k, *shape) for k, shape in zip(keys, ENCODER + DECODER, strict=True)]
    return {"encoder": layers[: len(ENCODER)], "decoder": layers[len(ENCODER) :]}


def mlp(layers, h):
    for i, (kernel, bias) in enumerate(layers):
        h = h @ kernel + bias
        h = jnp.tanh(h) if i < len(layers) - 1 else h
    return h


def encode(encoder, x):
    loc, raw_scale = jnp.split(mlp(encoder, x), 2, axis=-1)
    return loc, jax.nn.softplus(raw_scale) + MIN_SCALE


def log_joint(decoder, x, z):
    """log p(z) + log p(x|z), [K, B], without the 0.5 D log 2 pi of the prior."""
    logits = mlp(decoder, z)
    log_likelihood = jnp.sum(x * logits - jax.nn.softplus(logits), axis=-1)
    return jnp.sum(-0.5 * jnp.square(z), axis=-1) + log_likelihood


def bound(log_w, num_samples: int):
    return jnp.mean(jax.nn.logsumexp(log_w, axis=0) - math.log(num_samples))


def iwae_loss(params, x, eps):
    loc, scale = encode(params["encoder"], x)
    z = loc + scale * eps
    log_q = jnp.sum(-0.5 * jnp.square(eps) - jnp.log(scale), axis=-1)  # its 0.5 D log 2 pi cancels
    return -bound(log_joint(params["decoder"], x, z) - log_q, eps.shape[0])


def dreg_loss_and_gradients(params, x, eps):
    """The IWAE loss, and the DReG gradients from one backward pass (see the docstring)."""
    (loc, scale), encoder_vjp = jax.vjp(lambda e: encode(e, x), params["encoder"])

    def log_weights(decoder, z):  # log q(z) with q's parameters stopped
        log_q = jnp.sum(-0.5 * jnp.square((z - loc) / scale) - jnp.log(scale), axis=-1)
        return log_joint(decoder, x, z) - log_q

    log_w, vjp = jax.vjp(log_weights, params["decoder"], loc + scale * eps)
    w = jax.lax.stop_gradient(jax.nn.softmax(log_w, axis=0))  # [K, B]
    decoder_grads, z_grads = vjp(-w / x.shape[0])  # d/d(decoder, z) of -mean_b sum_k w_k log w_k
    z_grads = z_grads * w[..., None]  # w~_k^2 on the path through z
    (encoder_grads,) = encoder_vjp((jnp.sum(z_grads, 0), jnp.sum(z_grads * eps, 0)))
    loss = -bound(log_w, eps.shape[0])
    return loss, {"encoder": encoder_grads, "decoder": decoder_grads}


def build_step(loss: str, num_samples: int, batch_size: int, mode: str, seed: int):
    """run(n): n training steps of a fresh model on synthetic batches, waited for."""
    assert mode == "jit", mode
    optimizer = optax.adam(1e-3, eps=1e-4)
    gradients = {
        "iwae": jax.value_and_grad(iwae_loss),
        "dreg": dreg_loss_and_gradients,
    }[loss]

    def step(params, opt_state, counter, x, key):
        shape = (num_samples, x.shape[0], LATENT)
        eps = jax.random.normal(jax.random.fold_in(key, counter), shape)
        value, grads = gradients(params, x, eps)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, counter + 1, value

    jitted = jax.jit(step, donate_argnums=(0, 1, 2))
    key, params_key = jax.random.split(jax.random.key(seed))
    params = init_params(params_key)
    state = [params, optimizer.init(params), jnp.zeros([], jnp.uint32)]
    batches = [jnp.asarray(b) for b in _peers.synthetic_batches(batch_size, seed)]

    position = [0]

    def run(n: int) -> None:
        value = None
        for _ in range(n):
            x = batches[position[0] % len(batches)]
            position[0] += 1
            state[0], state[1], state[2], value = jitted(*state, x, key)
        value.block_until_ready()

    return run


def build_matmul(rows: int):
    a = jax.random.normal(jax.random.key(1), (rows, 200), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (200, 784), jnp.float32)
    matmul = jax.jit(jnp.matmul)

    def run(n: int) -> None:
        jax.block_until_ready([matmul(a, b) for _ in range(n)])

    return run


def main() -> None:
    args = _peers.parse_args(__doc__)
    if MISSING is not None:
        _peers.skip("jax", MISSING)
    info = {
        "framework": "jax",
        "versions": {"jax": jax.__version__, "optax": optax.__version__},
        "devices": [str(d) for d in jax.devices()],
        "gradient_kinds": {"jax_iwae": "total", "jax_dreg": "total"},
        "step": "jax.jit of noise, loss, gradients and optax.adam update; state donated",
    }
    _peers.run_peer(
        "jax",
        args,
        ["jit"],
        lambda loss, k, b, mode: build_step(loss, k, b, mode, args.seed),
        build_matmul,
        info,
    )


if __name__ == "__main__":
    main()
