"""Objectives by name: `make_objective("piwae", num_samples=64, num_outer=8)`.

One spelling per objective, the lower-case class name. Variants are arguments, not
names: RWS-DReG is `make_objective("dreg", K, alpha=1.0)`, JVI-DReG
`make_objective("jvi", K, dreg=True)`.

To register an objective, add one line to `OBJECTIVES` (and export its class from
`mcobjectives.objectives` and `mcobjectives`).
"""

from __future__ import annotations

import inspect
from typing import Any

from mcobjectives.core import checks
from mcobjectives.core.objective import MCObjective
from mcobjectives.objectives.disarm import DisARM
from mcobjectives.objectives.dreg import STL, DReG
from mcobjectives.objectives.iwae import CIWAE, IWAE, MIWAE, PIWAE, VAE
from mcobjectives.objectives.jvi import JVI
from mcobjectives.objectives.ovis import OVIS
from mcobjectives.objectives.rws import RWS
from mcobjectives.objectives.tvo import TVO
from mcobjectives.objectives.vimco import VIMCO
from mcobjectives.objectives.vriwae import VRIWAE

__all__ = ["OBJECTIVES", "make_objective", "objective_names"]

OBJECTIVES: dict[str, type[MCObjective]] = {
    "iwae": IWAE,
    "vae": VAE,
    "miwae": MIWAE,
    "ciwae": CIWAE,
    "piwae": PIWAE,
    "rws": RWS,
    "stl": STL,
    "dreg": DReG,
    "jvi": JVI,
    "vimco": VIMCO,
    "ovis": OVIS,
    "vriwae": VRIWAE,
    "disarm": DisARM,
    "tvo": TVO,
}
"""Every registered objective class by its name, the lower-case class name, in order."""


def objective_names() -> tuple[str, ...]:
    """The registered names, in registration order."""
    return tuple(OBJECTIVES)


def make_objective(name: str, /, num_samples: int, **kwargs: Any) -> MCObjective:
    """The objective registered as `name`, drawing `num_samples` samples per data point.

    `num_samples` is the sample budget S. For objectives that group samples as M
    bounds of L (MIWAE, PIWAE), give `num_outer` = M; then L = S / M, which must be
    an integer. Other keyword arguments go to the constructor (e.g. `beta`, `alpha`,
    `dreg`, `learnable_beta`, and `name`, the module's name: the registry name comes
    first and positionally); an argument the objective does not take raises.

    Examples:
      make_objective("iwae", 64)                      # IWAE(num_samples=64)
      make_objective("piwae", 64, num_outer=8)        # PIWAE(num_outer=8, num_inner=8)
      make_objective("dreg", 64, alpha=1.0)           # RWS-DReG
    """
    if not isinstance(name, str) or name not in OBJECTIVES:
        raise ValueError(
            f"Unknown objective {name!r}; choose one of {', '.join(objective_names())}."
        )
    cls = OBJECTIVES[name]
    num_samples = checks.check_count("num_samples", num_samples, maximum=checks.MAX_DIMENSION)
    parameters = [arg for arg in inspect.signature(cls.__init__).parameters if arg not in ("self",)]
    if "num_samples" in parameters:
        kwargs["num_samples"] = num_samples
    elif "num_outer" in parameters and "num_inner" in parameters:
        if "num_inner" in kwargs:
            raise TypeError(
                f"make_objective({name!r}) derives num_inner = num_samples / num_outer; "
                "give `num_outer` only."
            )
        if "num_outer" not in kwargs:
            raise TypeError(
                f"make_objective({name!r}, num_samples) needs `num_outer` (M): the "
                f"{num_samples} samples are split into M bounds of num_samples / M."
            )
        num_outer = checks.check_count("num_outer", kwargs["num_outer"])
        if num_samples % num_outer:
            raise ValueError(
                f"`num_samples` ({num_samples}) must be a multiple of `num_outer` "
                f"({num_outer}) for {cls.__name__}: each of the M bounds gets "
                "num_samples / M samples."
            )
        kwargs["num_inner"] = num_samples // num_outer
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        accepted = sorted(set(parameters) - {"num_samples", "num_inner"})
        raise TypeError(
            f"{cls.__name__} takes no argument {', '.join(map(repr, unknown))}; it accepts "
            f"num_samples{', ' if accepted else ''}{', '.join(accepted)}."
        )
    return cls(**kwargs)
