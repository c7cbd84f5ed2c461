"""Keras layers that return TFP distributions: the encoders, decoders and priors of the papers.

Each layer is a Keras layer whose call returns a TFP distribution made from its dense
layers' outputs (`tfp.layers` is written for Keras 2 and cannot be used in Keras 3
models). The layers build these models:

One stochastic layer (Burda et al. 2016, section 5; Rainforth et al. 2018):
  q(z|x)    784-200-200-(2 x 50), tanh, diagonal Gaussian    `GaussianEncoder(50)`
  p(z)      N(0, I) over 50 latents                          a fixed `tfd` distribution
  p(x|z)    50-200-200-784, tanh, Bernoulli pixels           `BernoulliDecoder(784)`
Tucker et al. (2019) condition the prior and decoder on the top half of a digit
(structured prediction): `GaussianPrior` is p(z|c), and every layer here takes an
optional `context`, concatenated to its input, for q(z|x, c) and p(x|z, c).

Two stochastic layers (Burda et al. 2016, section 5 and appendix C): z1 of 100 units
next to the data and z2 of 50 units above it, two deterministic tanh layers of 200
units between x and z1 and two of 100 units between z1 and z2, in both networks:
  q(z1|x)   784-200-200-(2 x 100)   } `TwoLayerGaussianEncoder()`
  q(z2|z1)  100-100-100-(2 x 50)    }   JointDistributionNamed({"z1": ..., "z2": ...})
  p(z2)     N(0, I) over 50         } `TwoLayerGaussianPrior()`
  p(z1|z2)  50-100-100-(2 x 100)    }   JointDistributionNamed({"z2": ..., "z1": ...})
  p(x|z1)   100-200-200-784         `BernoulliDecoder(784, latent="z1")`

A sigmoid belief net (Neal 1992) with two layers of 200 binary units, the 200-200-784
SBN of Mnih & Gregor (2014) and Mnih & Rezende (2016), whose score-function
estimators (NVIL, VIMCO; RWS, Bornschein & Bengio 2015) train it:
  q(z1|x) q(z2|z1)   784-200, 200-200, Bernoulli (int32)   `SigmoidBeliefEncoder()`
  p(z2) p(z1|z2)     learnable logits, 200-200, Bernoulli  `SigmoidBeliefPrior()`
  p(x|z1)            200-784, Bernoulli pixels             `BernoulliDecoder(784, (),
                                                                latent="z1")`

Structured latents. The two-layer encoders return a `tfd.JointDistributionNamed` with
keys "z1" (next to the data) and "z2", so z is a dict of [S, B, *event] leaves; the
priors return the same structure. A decoder reads one leaf, named by its `latent`
argument. The priors of the two-layer families are unconditional: they take no
context and `ImportanceWeightedAutoencoder` calls them as `prior()`.

Inputs. Every layer takes unbatched inputs ([d]), flat batches ([N, d], e.g. the
S * B latents of a step flattened) and sample-and-batch ones ([S, B, d]); a context
([C], [N, C] or [B, C]) is broadcast over the leading axes of the input it joins.

Saving. Every layer is registered as a Keras serializable ("mcobjectives>" + its class
name): `get_config()` holds all its constructor arguments, so that
`keras.saving.serialize_keras_object` / `deserialize_keras_object` and `.keras` files
rebuild it, and every variable is an attribute path of the layer, so that
`tf.train.Checkpoint` saves and restores all of them.

Mixed precision. Under a "mixed_float16" or "mixed_bfloat16" policy the dense layers
compute in the low precision (the inputs x, z and context are cast to the compute
dtype on entry) while the variables, and the distributions returned, stay in float32:
the locations, scales and logits are cast back before the distribution is made.
Bernoulli latents stay int32.

Modules. `gaussian` (the diagonal Gaussian encoders and priors), `sigmoid_belief` (the
binary layers of a sigmoid belief net) and `decoders` (`BernoulliDecoder`) hold the seven
layers, spelled `mcobjectives.networks.<Layer>`; `blocks` (the dense network, its
distributions and the argument checks) and `bernoulli` (the pixel likelihood, with its
own gradient and its checks of x) are what they are built from.
"""

from mcobjectives.networks.decoders import BernoulliDecoder
from mcobjectives.networks.gaussian import (
    GaussianEncoder,
    GaussianPrior,
    TwoLayerGaussianEncoder,
    TwoLayerGaussianPrior,
)
from mcobjectives.networks.sigmoid_belief import SigmoidBeliefEncoder, SigmoidBeliefPrior

__all__ = [
    "BernoulliDecoder",
    "GaussianEncoder",
    "GaussianPrior",
    "SigmoidBeliefEncoder",
    "SigmoidBeliefPrior",
    "TwoLayerGaussianEncoder",
    "TwoLayerGaussianPrior",
]
