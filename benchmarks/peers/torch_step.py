"""Burda et al.'s MNIST model trained with IWAE or DReG in PyTorch, eager and `torch.compile`.

The PyTorch peer of benchmarks/throughput.py, which runs it in its own process (the protocol
is in benchmarks/_peers.py). Run alone, it times its steps on synthetic binary images in
rounds and prints one JSON line:

    python benchmarks/peers/torch_step.py --ks=64 --batch_sizes=20,100 --rounds=3

The model is the library's: encoder 784-200-200-(2 x 50) tanh (`torch.nn.Sequential` of
`Linear` and `Tanh`), q(z|x) = N(mu, diag(sigma^2)) with sigma = softplus(sigma_raw) + 1e-4,
prior N(0, I), decoder 50-200-200-784 tanh with log p(x|z) = sum x l - softplus(l);
Glorot-uniform weights and zero biases. The IWAE loss is -mean over the batch of
(logsumexp_k log w_k - log K), log q from the noise itself. DReG (Tucker et al., alpha = 0)
takes one backward pass: log q with its parameters detached, the surrogate -mean_b sum_k
w~_k log w_k (w~ detached) whose decoder gradient is IWAE's, and a hook on z that multiplies
each sample's gradient by w~_k once more (w~_k^2 on the path to the encoder). A step is
`zero_grad`, the loss (noise from `torch.randn`), `backward` and `torch.optim.Adam(lr=1e-3,
eps=1e-4)`'s `step`; mode "compile" runs the loss (forward and backward) through
`torch.compile(dynamic=False)`, the optimizer eager.
"""

from __future__ import annotations

import math
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import _peers

try:
    import torch
    import torch.nn.functional as F
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
MODES = ("eager", "compile")


def mlp(shapes) -> torch.nn.Sequential:
    layers = []
    for i, (n_in, n_out) in enumerate(shapes):
        linear = torch.nn.Linear(n_in, n_out)
        torch.nn.init.xavier_uniform_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
        layers += [linear] + ([torch.nn.Tanh()] if i < len(shapes) - 1 else [])
    return torch.nn.Sequential(*layers)


def encode(encoder, x):
    loc, raw_scale = encoder(x).chunk(2, dim=-1)
    return loc, F.softplus(raw_scale) + MIN_SCALE


def log_joint(decoder, x, z):
    """log p(z) + log p(x|z), [K, B], without the 0.5 D log 2 pi of the prior."""
    logits = decoder(z)
    log_likelihood = (x * logits - F.softplus(logits)).sum(-1)
    return (-0.5 * z.square()).sum(-1) + log_likelihood


def iwae_loss(encoder, decoder, x, num_samples: int):
    loc, scale = encode(encoder, x)
    eps = torch.randn(num_samples, x.shape[0], LATENT)
    z = loc + scale * eps
    log_q = (-0.5 * eps.square() - scale.log()).sum(-1)  # its 0.5 D log 2 pi cancels
    log_w = log_joint(decoder, x, z) - log_q
    return -(torch.logsumexp(log_w, 0) - math.log(num_samples)).mean()


def dreg_loss(encoder, decoder, x, num_samples: int):
    """The DReG surrogate (its value is not the bound; see the docstring)."""
    loc, scale = encode(encoder, x)
    z = loc + scale * torch.randn(num_samples, x.shape[0], LATENT)
    loc, scale = loc.detach(), scale.detach()
    log_q = (-0.5 * ((z - loc) / scale).square() - scale.log()).sum(-1)
    log_w = log_joint(decoder, x, z) - log_q
    w = torch.softmax(log_w, 0).detach()
    if z.requires_grad:
        z.register_hook(lambda grad: grad * w.unsqueeze(-1))
    return -(w * log_w).sum(0).mean()


def build_step(loss: str, num_samples: int, batch_size: int, mode: str, seed: int):
    """run(n): n training steps of a fresh model on synthetic batches."""
    torch.manual_seed(seed)
    encoder, decoder = mlp(ENCODER), mlp(DECODER)
    parameters = [*encoder.parameters(), *decoder.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=1e-3, eps=1e-4)
    loss_fn = {"iwae": iwae_loss, "dreg": dreg_loss}[loss]

    def objective(x):
        return loss_fn(encoder, decoder, x, num_samples)

    if mode == "compile":
        objective = torch.compile(objective, dynamic=False)
    elif mode != "eager":
        raise ValueError(f"unknown mode {mode!r}")
    batches = [torch.from_numpy(b) for b in _peers.synthetic_batches(batch_size, seed)]
    position = [0]

    def run(n: int) -> None:
        for _ in range(n):
            x = batches[position[0] % len(batches)]
            position[0] += 1
            optimizer.zero_grad(set_to_none=True)
            objective(x).backward()
            optimizer.step()

    return run


def build_matmul(rows: int):
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(rows, 200, generator=generator)
    b = torch.randn(200, 784, generator=generator)

    def run(n: int) -> None:
        with torch.no_grad():
            for _ in range(n):
                torch.mm(a, b)

    return run


def main() -> None:
    args = _peers.parse_args(__doc__)
    if MISSING is not None:
        _peers.skip("torch", MISSING)
    # One compiled graph per configuration (distinct modules and shapes): allow them all.
    dynamo = torch._dynamo.config
    for limit in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, limit):
            setattr(dynamo, limit, max(getattr(dynamo, limit), 64))
    info = {
        "framework": "torch",
        "versions": {"torch": torch.__version__},
        "threads": torch.get_num_threads(),
        "gradient_kinds": {"torch_iwae": "total", "torch_dreg": "total"},
        "step": "zero_grad, loss, backward, Adam step; compile: the loss (forward and "
        "backward) through torch.compile(dynamic=False)",
    }
    _peers.run_peer(
        "torch",
        args,
        MODES,
        lambda loss, k, b, mode: build_step(loss, k, b, mode, args.seed),
        build_matmul,
        info,
    )


if __name__ == "__main__":
    main()
