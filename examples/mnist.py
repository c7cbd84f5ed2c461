"""Train a VAE on MNIST with any objective, as in Burda et al. (2016) and Rainforth et al. (2018).

    python examples/mnist.py                                   # the paper's full setup
    python examples/mnist.py --objective=piwae --num_outer=8 --max_steps=3000 \\
        --eval_size=1000 --eval_num_samples=1000 --out_dir=runs/piwae
    python examples/mnist.py --architecture=two_layer --objective=dreg --max_steps=3000
    python examples/mnist.py --architecture=sbn --objective=vimco --max_steps=3000

`--architecture` picks the model:

* `one_layer` (default): Burda et al.'s one stochastic layer, a 784-200-200-(2 x 50)
  tanh encoder giving a diagonal Gaussian q(z|x), a N(0, I) prior over 50 latents and a
  50-200-200-784 tanh decoder of Bernoulli pixels (`--latent_size`, `--hidden_units`).
* `two_layer`: Burda et al.'s two stochastic layers, z1 of 100 and z2 of 50 units,
  q(z1|x) q(z2|z1) with 784-200-200-(2 x 100) and 100-100-100-(2 x 50) tanh networks,
  p(z2) = N(0, I), a trainable p(z1|z2) (50-100-100-(2 x 100)), and p(x|z1)
  (100-200-200-784). Any objective trains it.
* `sbn`: a sigmoid belief net with two layers of 200 binary units (Mnih & Gregor 2014,
  Mnih & Rezende 2016): linear-sigmoid q(z1|x) q(z2|z1), p(z2) with learnable logits,
  p(z1|z2) and p(x|z1). Its latents are discrete, so only the score-function objectives
  (vimco, rws) train it; any other --objective stops the run at startup.

The decoders' output bias starts at the logit of the mean training image. Training
follows Burda et al.: dynamically binarized MNIST, batch 20, Adam (beta1 0.9, beta2
0.999, eps 1e-4), and 8 stages of 3^i epochs at learning rate 1e-3 * 10^(-i/7), 3280
epochs in all (`--epochs` or `--max_steps` cut the run short). The gradients of the
training step are compiled with XLA, faster on these models than a plain tf.function
(`--nojit_compile`); every architecture, the SBN's discrete latents included, trains under
it. Evaluation runs without XLA.

At the end of each stage and of the run, the test set is evaluated: IWAE-64, log p^(x)
with K = 5000 samples, -KL(Q||P) = IWAE-64 - log p^(x), the mean effective sample size
of 64 samples over 64, and the number of active latent units (per latent layer for the
two-layer models). Results go to <out_dir>/metrics.json, TensorBoard summaries to
<out_dir>/tensorboard, and checkpoints to <out_dir>/checkpoints: run the same command
again to resume.

Data come from TensorFlow Datasets (`TFDS_DATA_DIR` or TFDS's default folder, or a
download). Offline and without prepared data, the run falls back to a small bundled
subset of real MNIST digits, says so, and records "mnist-bundled-subset" as the dataset.

Every flag is checked at startup, before any data are loaded: invalid flags stop the
run with exit status 2 and one line per problem, naming the flag and what to give
instead. So is the memory a run would need: a training step of --num_samples x
--batch_size samples, or a chunk of log p^(x) (--eval_chunk_size x --eval_batch_size),
whose sample tensors would exceed `mcobjectives.limits.sample_memory_limit()` (a tenth
of the machine's memory; MCOBJECTIVES_SAMPLE_MEMORY_LIMIT=64GiB raises it), and an
evaluation of more than 2^31 - 1 draws (--eval_num_samples x the test images), which
would run for hours. --eval_num_samples is at least 64, the K of the IWAE-64 bound that
-KL = IWAE-64 - log p^(x) compares log p^(x) with: with fewer, log p^(x) is the looser
bound and the "-KL" comes out positive. `python examples/mnist.py --help` lists the
flags (--helpfull also TensorFlow's) and exits with 0.

A damaged TFDS folder (truncated or garbage records, a garbage dataset_info.json) is
treated like a missing one: the run falls back to the bundled subset, with the banner
saying why.

Resuming. The first start stores the run's configuration in <out_dir>/config.json. A
rerun resumes only if it agrees with it on every flag that defines the run (data,
model, objective, learning rate, seed, ...); it may change how long the run trains
(--epochs, --max_steps), how it evaluates, logs and checkpoints (--eval_*, --log_every,
--checkpoint_every) and where it runs (--strategy, --num_cpu_devices, --jit_compile);
otherwise it is refused, naming the flags that differ (exit status 1). An out_dir is
locked by the run using it (<out_dir>/.lock, removed when the run ends): a second run
there is refused. A damaged latest checkpoint (say, from a full disk) is moved to
checkpoints/corrupt/ and the run resumes from the previous one; a damaged metrics.json
is renamed to metrics.json.corrupt with a warning, and its evaluations are rebuilt from
the TensorBoard summaries. A disk that fills while a checkpoint or the metrics are
written stops the run (exit status 1) with a message naming --out_dir and the space a
checkpoint takes; the previous checkpoint stays the latest, and rerunning the same
command once there is space resumes from it. A step whose loss or gradients are not finite stops the
run (exit status 1) before anything is saved from it, suggesting a lower
--learning_rate.

Several machines. `--strategy=multi_worker` trains under
`tf.distribute.MultiWorkerMirroredStrategy`, each worker on an equal share of every
global batch (--batch_size must be a multiple of the number of workers), and ends with
the parameters one machine would reach, up to the order of floating-point sums. Start
the same command on every machine, each with the cluster's addresses and its own task
in the TF_CONFIG environment variable (worker 0 is the chief):

    # on host1                                         # on host2: "index": 1
    export TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                       "task": {"type": "worker", "index": 0}}'
    python examples/mnist.py --strategy=multi_worker --out_dir=/shared/runs/iwae

Only the chief writes metrics, summaries and checkpoints to --out_dir; the others save
to a temporary folder, as TensorFlow requires, and delete it at exit. To resume, every
worker restores the chief's latest checkpoint, so --out_dir must be on a filesystem all
machines share (without one, a multi-worker run can start but not resume).
"""

from __future__ import annotations

import os

# TensorFlow's C++ start-up messages (CPU features, missing CUDA) are not this run's
# news; TF_CPP_MIN_LOG_LEVEL=0 in the environment brings them back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
from absl import flags

import mcobjectives as mco
from mcobjectives.experimental import mnist as experimental_mnist

import cli
from config import Config

ARCHITECTURES = tuple(experimental_mnist.ARCHITECTURES)  # one_layer, two_layer, sbn
flags.DEFINE_enum(
    "architecture",
    "one_layer",
    ARCHITECTURES,
    "one_layer (Burda et al.'s 50 Gaussian latents), two_layer (their 100 + 50 Gaussian "
    "latents) or sbn (a sigmoid belief net of 200 + 200 binary latents; vimco, rws, ovis, "
    "disarm or tvo).",
)

FLAGS = flags.FLAGS
# --help lists the flags of cli.py with this script's own.
flags.adopt_module_key_flags(cli)


def build_model(
    config: Config, objective: mco.MCObjective, train_images: np.ndarray
) -> mco.ImportanceWeightedAutoencoder:
    """The model of --architecture (from `mcobjectives.experimental.mnist`), trained with
    `objective`; --latent_size and --hidden_units size the one_layer model."""
    architecture = config.model_architecture
    sizes = {}
    if architecture == "one_layer":
        sizes = {"latent_size": config.latent_size, "hidden_units": config.hidden_units}
    return experimental_mnist.build_model(
        architecture, objective, train_images.mean(axis=0), seed=config.seed, **sizes
    )


def to_batch(images: tf.Tensor) -> dict:
    """A batch of the unconditional model: the images are x."""
    return {"x": images}


def _gradient_path(name: str) -> mco.GradientPath | None:
    """The gradient path of objective `name` as the flags build it (its defaults).

    A class attribute, or for an objective whose path depends on its arguments (a
    property: JVI, VRIWAE, TVO) the path of an instance with the default arguments.
    """
    path = getattr(mco.objectives.OBJECTIVES[name], "gradient_path", None)
    if isinstance(path, mco.GradientPath):
        return path
    return mco.make_objective(name, 2).gradient_path


def score_function_objectives() -> list[str]:
    """The registered objectives whose inference gradient needs only log q (RWS, VIMCO)."""
    return [
        name for name in mco.objectives.OBJECTIVES if _gradient_path(name) is mco.GradientPath.SCORE
    ]


def architecture_problems(config: Config) -> list[str]:
    """What the chosen architecture cannot take: sizes it ignores, an objective it refuses."""
    architecture, problems = config.model_architecture, []
    if architecture != "one_layer":
        for flag in ("latent_size", "hidden_units"):
            if flag in config.given:
                problems.append(
                    f"--{flag} sizes --architecture=one_layer only; --architecture="
                    f"{architecture} has the sizes of its papers (see examples/mnist.py): "
                    f"leave --{flag} unset."
                )
    cls = mco.objectives.OBJECTIVES[config.objective]
    if architecture == "sbn" and _gradient_path(config.objective) is not mco.GradientPath.SCORE:
        choices = " or ".join(f"--objective={name}" for name in score_function_objectives())
        problems.append(
            f"--architecture=sbn has discrete (binary) latents, which --objective="
            f"{config.objective} cannot train: {cls.__name__} differentiates through the "
            f"samples z. Use a score-function objective: {choices}."
        )
    return problems


def main(argv):
    # The one place that reads the flags: everything after takes the Config.
    config = cli.config_from_flags(FLAGS, task="mnist", architecture=FLAGS.architecture)
    cli.main(
        argv,
        config,
        build_model=build_model,
        to_batch=to_batch,
        extra_problems=architecture_problems,
    )


if __name__ == "__main__":
    cli.run_app(main)  # app.run(main), with --help exiting 0
