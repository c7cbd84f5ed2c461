"""The command line of the examples: the flags they share, the `Config` built from them
once in the script's `main`, and the exit statuses of a run.

Exit statuses: 0 for a run that ends, and for --help (and --helpshort, --helpfull,
--helpxml), which absl's own parser would end with 1; `EXIT_FLAGS` (2) for flags or
TF_CONFIG that cannot make a run, `EXIT_FAILURE` (1) for a run refused (out_dir in use,
a resume that would change the run, no intact checkpoint, a full disk) or stopped
(non-finite or diverging training, a peer worker gone under --strategy=multi_worker),
`EXIT_INTERRUPTED` (130) for Ctrl-C; the message goes to stderr as
"<script>: error: ...".
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import tensorflow as tf
from absl import app, flags

import train
from config import (
    DEFAULTS,
    FLAG_NAMES,
    MAX_SEED,
    OBJECTIVES,
    PAPER_EPOCHS,
    Config,
    FlagError,
    RunError,
)

EXIT_FLAGS = 2  # invalid flags or environment (a usage error)
EXIT_FAILURE = 1  # a refused or stopped run (out_dir in use, resume mismatch, divergence)
EXIT_INTERRUPTED = 130  # Ctrl-C

flags.DEFINE_enum(
    "dataset",
    DEFAULTS.dataset,
    ["mnist", "binarized_mnist"],
    "mnist (dynamically binarized) or binarized_mnist (Larochelle's fixed binarization).",
)
flags.DEFINE_bool(
    "download",
    DEFAULTS.download,
    "Let TFDS download the dataset if it is not prepared (else use the bundled subset).",
)
flags.DEFINE_enum(
    "objective",
    DEFAULTS.objective,
    OBJECTIVES,
    "The training objective (a name of mco.make_objective).",
)
flags.DEFINE_integer(
    "num_samples",
    DEFAULTS.num_samples,
    "Samples per data point (>= 1; >= 2 for vimco and jvi): K, or the budget M * K for "
    "miwae and piwae.",
)
flags.DEFINE_integer(
    "num_outer",
    DEFAULTS.num_outer,
    "M, the number of outer averages, for miwae and piwae (>= 1, dividing --num_samples).",
)
flags.DEFINE_float(
    "beta", DEFAULTS.beta, "CIWAE's weight of the ELBO term, in [0, 1] (in (0, 1) if learnable)."
)
flags.DEFINE_bool(
    "learnable_beta", DEFAULTS.learnable_beta, "CIWAE: learn beta (initialised at --beta)."
)
flags.DEFINE_float(
    "alpha",
    DEFAULTS.alpha,
    "DReG's alpha in [0, 1] (default 0: IWAE-DReG; 1 is RWS-DReG); VR-IWAE's Renyi alpha "
    "in [0, 1) (default 0.5).",
)
flags.DEFINE_bool(
    "jvi_dreg",
    DEFAULTS.jvi_dreg,
    "JVI (and VR-IWAE): use the doubly reparameterized estimator (`dreg`).",
)
flags.DEFINE_enum(
    "inference_update",
    DEFAULTS.inference_update,
    ["wake", "sleep", "wake_sleep"],
    "RWS: q's update, the wake phase (default), the sleep phase on model samples, or "
    "their average.",
)
flags.DEFINE_integer(
    "batch_size",
    DEFAULTS.batch_size,
    "The global batch size (>= 1, at most the training images; a multiple of the replicas "
    "under a distribution strategy).",
)
flags.DEFINE_float("learning_rate", DEFAULTS.learning_rate, "The learning rate of stage 0 (> 0).")
flags.DEFINE_integer(
    "epochs", DEFAULTS.epochs, f"Epochs to train (>= 1; default: the paper's {PAPER_EPOCHS})."
)
flags.DEFINE_integer(
    "max_steps", DEFAULTS.max_steps, "Stop after this many steps (>= 1; a budget for short runs)."
)
flags.DEFINE_integer(
    "train_size", DEFAULTS.train_size, "Use only the first N training images (>= 1; default: all)."
)
flags.DEFINE_integer("latent_size", DEFAULTS.latent_size, "The dimension of z (>= 1).")
flags.DEFINE_integer(
    "hidden_units", DEFAULTS.hidden_units, "Units of each of the two hidden layers (>= 1)."
)
flags.DEFINE_bool(
    "jit_compile",
    DEFAULTS.jit_compile,
    "Compile the training step's gradient computation with XLA (faster on this model; "
    "--nojit_compile for a plain tf.function). log p^(x) picks its own mode: XLA for "
    "large evaluations (ImportanceWeightedAutoencoder.log_marginal).",
)
flags.DEFINE_integer(
    "seed", DEFAULTS.seed, f"The seed of every random number of the run, in [0, {MAX_SEED}]."
)
flags.DEFINE_string(
    "out_dir",
    DEFAULTS.out_dir,
    "Where metrics, checkpoints and summaries go (default runs/<task>_<objective>); rerun "
    "the same command to resume the run there.",
)
flags.DEFINE_enum(
    "strategy",
    DEFAULTS.strategy,
    ["default", "mirrored", "multi_worker"],
    "Distribution strategy: default (one device), mirrored (the local GPUs, or "
    "--num_cpu_devices CPUs) or multi_worker (MultiWorkerMirroredStrategy over the "
    "machines of the TF_CONFIG environment variable).",
)
flags.DEFINE_integer(
    "num_cpu_devices",
    DEFAULTS.num_cpu_devices,
    "Split the CPU into this many logical devices (>= 0; 0: leave it alone), for "
    "--strategy=mirrored.",
)
flags.DEFINE_integer(
    "eval_every_epochs",
    DEFAULTS.eval_every_epochs,
    "Also evaluate every N epochs (>= 0; 0: stage ends only).",
)
flags.DEFINE_integer(
    "eval_size", DEFAULTS.eval_size, "Evaluate on the first N test images (>= 1; default: all)."
)
flags.DEFINE_integer(
    "eval_num_samples",
    DEFAULTS.eval_num_samples,
    "K of the log p^(x) estimate (>= 64, the K of the IWAE-64 bound that -KL compares it "
    "with; at most 2^31 - 1 draws per evaluation with the test images).",
)
flags.DEFINE_integer(
    "eval_chunk_size",
    DEFAULTS.eval_chunk_size,
    "Samples per chunk of the log p^(x) estimate (>= 1; a memory bound: a chunk larger "
    "than --eval_num_samples draws them all at once).",
)
flags.DEFINE_integer(
    "eval_batch_size", DEFAULTS.eval_batch_size, "Test images per evaluation batch (>= 1)."
)
flags.DEFINE_integer(
    "checkpoint_every", DEFAULTS.checkpoint_every, "Steps between checkpoints (>= 1)."
)
flags.DEFINE_integer(
    "log_every", DEFAULTS.log_every, "Steps between progress and TensorBoard updates (>= 1)."
)


def config_from_flags(
    flag_values: flags.FlagValues, *, task: str, architecture: str | None = None
) -> Config:
    """The run's `Config`, from the parsed flags `flag_values` (`absl.flags.FLAGS`).

    Call it once, in the script's `main`; everything after takes the `Config`.
    `architecture` is the script's --architecture, if it has one.
    """
    names = [*FLAG_NAMES, *(["architecture"] if architecture is not None else [])]
    return Config(
        **{name: flag_values[name].value for name in FLAG_NAMES},
        task=task,
        architecture=architecture,
        given=frozenset(name for name in names if flag_values[name].present),
        default_learning_rate=flag_values["learning_rate"].default,
    )


def main(
    argv: list[str],
    config: Config,
    *,
    build_model: train.ModelBuilder,
    to_batch: train.BatchMaker,
    extra_problems: Callable[[Config], list[str]] | None = None,
) -> dict | None:
    """An example's `main`: `train.run(config, ...)`, its refusals as one message and a
    status (see the module's docstring)."""
    program = os.path.basename(argv[0]) if argv else "train"
    try:
        if len(argv) > 1:
            raise FlagError(
                [
                    f"unexpected argument {arg!r}: give flags as --name=value (--help lists them)."
                    for arg in argv[1:]
                ]
            )
        return train.run(
            config, build_model=build_model, to_batch=to_batch, extra_problems=extra_problems
        )
    except FlagError as error:
        _exit(program, error, EXIT_FLAGS)
    except RunError as error:
        _exit(program, error, EXIT_FAILURE)
    except (tf.errors.UnavailableError, tf.errors.CancelledError) as error:
        if config.strategy != "multi_worker":
            raise
        first = (error.message or str(error)).strip().splitlines()[0][:300]
        message = (
            "a worker of the TF_CONFIG cluster stopped or cannot be reached, so this one "
            f"stops too (see the other workers' output): {first}"
        )
        _exit(program, message, EXIT_FAILURE)
    except KeyboardInterrupt:
        message = "interrupted; rerun the same command to resume from the last checkpoint."
        _exit(program, message, EXIT_INTERRUPTED)
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing of the command line, but --help and its kin exit with 0: the user
    asked for the help, and got it.

    absl's help flags print the usage and exit with 1 from inside the parsing (before
    `main`); every other way out of it is a parse error, which absl reports and exits
    with 1 as before.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error:
        flags.FLAGS.unparse_flags()
        return app.parse_flags_with_usage(argv)  # reports the error and exits with 1
    except SystemExit as exit:
        if exit.code == 1:  # a help flag: its usage is printed
            sys.stdout.flush()
            raise SystemExit(0) from None
        raise


def run_app(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)` with --help exiting 0 (`_parse_flags`): the scripts' entry."""
    app.run(main, flags_parser=_parse_flags)


def _exit(program: str, error: Exception | str, status: int) -> None:
    sys.stdout.flush()
    if sys.stdout.isatty():
        print()  # off a progress bar's line
    print(f"{program}: error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(status)
