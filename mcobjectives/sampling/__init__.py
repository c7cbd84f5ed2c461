"""Reproducible reparameterized sampling: the same seed gives the same draws in every mode.

TensorFlow's stateless normal sampler produces one stream when run by TensorFlow's
kernels (eagerly or in `tf.function`) and another under XLA (`jit_compile=True`), and
on CPU its XLA lowering is about 200x slower per number than the kernel. This package
therefore makes its own random bits, with the counter-based SplitMix64 generator [1]
written in uint64 integer arithmetic, which every mode computes exactly and XLA fuses
into one cheap loop (`bits`). It turns them into standard normal noise (via the inverse
normal CDF: `ndtri` in float64, AS 241's quantile in float32; `noise`) and pushes the
noise through the distribution's own reparameterization (`reparameterization`). Draws
then agree across eager, `tf.function` and XLA execution up to the last bits of the
quantile (about 1e-12 relative in float64, 1e-10 in the far tails; within 8 ulps,
1e-6 relative, in float32).

`sample(q, n, seed)` recognises these families and their compositions:

* `tfd.Normal`: `loc + scale * eps`;
* `tfd.Independent` and `tfd.Sample` of a recognised family;
* `tfd.TransformedDistribution` (including every `tfd.MultivariateNormal*` built on
  a linear operator, `tfd.LogNormal`, ...) of a recognised base whose batch shape
  equals its own: `bijector.forward(base_sample)`;
* `tfd.Bernoulli` (logistic noise below the logits), `tfd.Categorical` and
  `tfd.OneHotCategorical` (Gumbel-max), in the distribution's own dtype (int32 by
  default): exact draws, not relaxations, so no gradient flows through them;
* a `tfd.JointDistribution` (Sequential, Named, Coroutine, and the AutoBatched forms
  with `batch_ndims=1`), part by part, each part as above.

Any other distribution is sampled by its own `q.sample(n, seed=seed)`: still
deterministic given the seed, but its XLA stream differs from its non-XLA stream.

Per-example seeds. `sample` also takes a `[B, 2]` tensor of seeds, one per data point
of a q with batch shape `[B]`: data point b's draws then come from its own seed alone,
so they do not depend on which other data points share the batch. A global batch split
across replicas (`tf.distribute`), or a data set cut into batches of another size,
then draws exactly the same z for every data point. Recognised families only
(`seeds` says what a seed may be).

References:
  [1] Steele, Lea, Flood. Fast Splittable Pseudorandom Number Generators. OOPSLA 2014.
"""

from mcobjectives.sampling.antithetic import antithetic_logistic, antithetic_sample
from mcobjectives.sampling.noise import standard_normal
from mcobjectives.sampling.reparameterization import sample, supports_stable_sampling
from mcobjectives.sampling.seeds import is_per_example_seed, stateless_seed

__all__ = [
    "antithetic_logistic",
    "antithetic_sample",
    "is_per_example_seed",
    "sample",
    "standard_normal",
    "stateless_seed",
    "supports_stable_sampling",
]
