"""The configuration of an example run: one frozen `Config`, built once and passed down.

`cli.config_from_flags` builds it from the command line in the script's `main`; a test
or a notebook builds it directly (`Config(objective="dreg", max_steps=100, ...)`). Every
function of the examples takes the `Config` it needs as an argument: none reads a flag.

A run is a pure function of its configuration: every random number (the order of the
data, the dynamic binarization, the samples of the objective) is drawn from a stateless
seed derived from `seed` and the global step.
"""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
from typing import Any

from absl import logging

import mcobjectives as mco

OBJECTIVES = mco.objective_names()  # every objective registered in mcobjectives.objectives
# The settings that are keyword arguments of `mco.make_objective`, each given to the
# objectives whose constructor takes it (and is not None): flag name -> argument name.
OBJECTIVE_FLAGS = {
    "num_outer": "num_outer",
    "beta": "beta",
    "learnable_beta": "learnable_beta",
    "alpha": "alpha",
    "jvi_dreg": "dreg",
    "inference_update": "inference_update",
}
# Burda et al. (2016): stage i = 0..7 runs 3^i epochs at learning rate 1e-3 * 10^(-i/7).
NUM_STAGES = 8
PAPER_EPOCHS = sum(3**i for i in range(NUM_STAGES))  # 3280
MAX_SEED = 2**31 - 1  # seeds are int32 tensors
# The settings a rerun may change and still resume the run in its out_dir: how long it
# trains, how and how often it evaluates, logs and checkpoints, and on which devices.
# Every other one (the data, the model, the objective, the optimizer, the seed) defines
# the run, and a rerun that changes one is refused.
RESUMABLE_FLAGS = frozenset(
    {
        "epochs",
        "max_steps",
        "eval_every_epochs",
        "eval_size",
        "eval_num_samples",
        "eval_chunk_size",
        "eval_batch_size",
        "checkpoint_every",
        "log_every",
        "jit_compile",
        "strategy",
        "num_cpu_devices",
        "download",
        "out_dir",
    }
)


class FlagError(ValueError):
    """Settings (or TF_CONFIG) that cannot make a run: one sentence per problem, each naming
    its flag and what to do instead."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return self.problems[0]
        lines = [f"{len(self.problems)} problems with the flags:"]
        return "\n".join(lines + [f"  {problem}" for problem in self.problems])


class RunError(RuntimeError):
    """A run that cannot start or go on (its out_dir in use or holding another run, no
    intact checkpoint, non-finite training); the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run. The fields up to `log_every` are the command-line flags of
    the same names (`cli.py` defines them, with these defaults and their help).

    `task` names the script ("mnist", "structured_mnist"); `architecture` is mnist.py's
    --architecture (None for a script without that flag: its own model); `given` holds
    the names of the flags given on the command line (a setting given to an objective
    that ignores it is reported); `default_learning_rate` is the script's default, which
    the advice after a diverged run quotes.
    """

    dataset: str = "mnist"
    download: bool = True
    objective: str = "iwae"
    num_samples: int = 64
    num_outer: int = 8
    beta: float = 0.05
    learnable_beta: bool = False
    alpha: float | None = None
    jvi_dreg: bool = False
    inference_update: str = "wake"
    batch_size: int = 20
    learning_rate: float = 1e-3
    epochs: int | None = None
    max_steps: int | None = None
    train_size: int | None = None
    latent_size: int = 50
    hidden_units: int = 200
    jit_compile: bool = True
    seed: int = 0
    out_dir: str | None = None
    strategy: str = "default"
    num_cpu_devices: int = 0
    eval_every_epochs: int = 0
    eval_size: int | None = None
    eval_num_samples: int = 5000
    eval_chunk_size: int = 500
    eval_batch_size: int = 100
    checkpoint_every: int = 2000
    log_every: int = 100
    # Not flags: what the script is, and how its command line was given.
    task: str = "mnist"
    architecture: str | None = None
    given: frozenset[str] = frozenset()
    default_learning_rate: float = 1e-3

    @property
    def model_architecture(self) -> str:
        """The architecture recorded in the metrics: --architecture, else "one_layer"."""
        return self.architecture or "one_layer"

    def flag_values(self) -> dict[str, Any]:
        """The run's flags by name, as config.json and metrics.json record them."""
        values = {name: getattr(self, name) for name in FLAG_NAMES}
        if self.architecture is not None:
            values["architecture"] = self.architecture
        return dict(sorted(values.items()))

    def default_out_dir(self) -> pathlib.Path:
        if self.model_architecture != "one_layer":
            return pathlib.Path(f"runs/{self.task}_{self.model_architecture}_{self.objective}")
        return pathlib.Path(f"runs/{self.task}_{self.objective}")

    def out_path(self) -> pathlib.Path:
        """out_dir (a leading ~ expanded: the shell leaves --out_dir=~/... alone), else
        runs/<task>[_<architecture>]_<objective>."""
        if self.out_dir:
            return pathlib.Path(self.out_dir).expanduser()
        return self.default_out_dir()


_NOT_FLAGS = {"task", "architecture", "given", "default_learning_rate"}
# The command-line flags every script shares, in the order of `Config`'s fields.
FLAG_NAMES = tuple(f.name for f in dataclasses.fields(Config) if f.name not in _NOT_FLAGS)
DEFAULTS = Config()


# -------------------------------------------------------------------------- the objective
def objective_parameters(objective: str) -> list[str]:
    """The names of the constructor arguments of registered objective `objective`."""
    return list(inspect.signature(mco.objectives.OBJECTIVES[objective].__init__).parameters)


def objective_kwargs(config: Config, *, warn: bool = True) -> dict[str, Any]:
    """The keyword arguments of `mco.make_objective` that the objective settings give.

    A setting given on the command line to an objective that does not take it is
    reported (if `warn`) and ignored.
    """
    accepted = objective_parameters(config.objective)
    kwargs, ignored = {}, []
    for flag, argument in OBJECTIVE_FLAGS.items():
        if argument in accepted:
            if getattr(config, flag) is not None:
                kwargs[argument] = getattr(config, flag)
        elif flag in config.given:
            ignored.append(f"--{flag}")
    if ignored and warn:
        logging.warning("--objective=%s ignores %s.", config.objective, ", ".join(ignored))
    return kwargs


def flags_named(message: str) -> str:
    """A library message with its argument names spelled as the flags that give them."""
    names = {argument: flag for flag, argument in OBJECTIVE_FLAGS.items()}
    names["num_samples"] = "num_samples"
    for argument, flag in names.items():
        message = message.replace(f"`{argument}`", f"--{flag}")
    return message


def num_outer_problem(config: Config, kwargs: dict[str, Any]) -> str | None:
    """Why --num_outer cannot split --num_samples (None if it can, or is not used)."""
    if "num_outer" in kwargs:
        m, k = kwargs["num_outer"], config.num_samples
        if m >= 1 and k % m:
            return (
                f"--num_outer={m} must divide --num_samples={k} for {config.objective}: the "
                "budget is M outer times K / M inner samples."
            )
    return None


def make_objective(config: Config) -> mco.MCObjective:
    """The objective of the run: `mco.make_objective(objective, num_samples, ...)`.

    The other objective settings (`OBJECTIVE_FLAGS`) become keyword arguments of the
    objectives whose constructor takes them; one given on the command line to an
    objective that does not take it is reported and ignored.
    """
    kwargs = objective_kwargs(config)
    problem = num_outer_problem(config, kwargs)
    if problem:
        raise ValueError(problem)
    return mco.make_objective(config.objective, config.num_samples, **kwargs)
