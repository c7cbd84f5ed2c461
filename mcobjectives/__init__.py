"""Monte Carlo variational objectives for TensorFlow Probability.

Every objective turns q(z|x) (a TFP distribution) and log p(x, z) into a surrogate
loss whose value is the negative bound and whose gradients are the objective's
estimators for the model and inference networks.
"""

from mcobjectives import diagnostics, keras, limits, networks, objectives, sampling, weights
from mcobjectives._version import __version__ as __version__  # kept in _version.py alone
from mcobjectives.core.log_joint import make_log_joint
from mcobjectives.core.objective import (
    Coefficients,
    GradientPath,
    Gradients,
    LogJoint,
    MCObjective,
    ObjectiveResult,
)
from mcobjectives.estimation.activity import active_units
from mcobjectives.estimation.log_marginal import log_marginal_estimate
from mcobjectives.keras.model import ImportanceWeightedAutoencoder
from mcobjectives.keras.saving import load_model
from mcobjectives.keras.train_step import make_train_step
from mcobjectives.objectives.disarm import DisARM
from mcobjectives.objectives.dreg import STL, DReG
from mcobjectives.objectives.iwae import CIWAE, IWAE, MIWAE, PIWAE, VAE
from mcobjectives.objectives.jvi import JVI
from mcobjectives.objectives.ovis import OVIS
from mcobjectives.objectives.registry import make_objective, objective_names
from mcobjectives.objectives.rws import RWS
from mcobjectives.objectives.tvo import TVO
from mcobjectives.objectives.vimco import VIMCO
from mcobjectives.objectives.vriwae import VRIWAE

__all__ = [
    "CIWAE",
    "IWAE",
    "JVI",
    "MIWAE",
    "OVIS",
    "PIWAE",
    "RWS",
    "STL",
    "TVO",
    "VAE",
    "VIMCO",
    "VRIWAE",
    "Coefficients",
    "DReG",
    "DisARM",
    "GradientPath",
    "Gradients",
    "ImportanceWeightedAutoencoder",
    "LogJoint",
    "MCObjective",
    "ObjectiveResult",
    "active_units",
    "diagnostics",
    "keras",
    "limits",
    "load_model",
    "log_marginal_estimate",
    "make_log_joint",
    "make_objective",
    "make_train_step",
    "networks",
    "objective_names",
    "objectives",
    "sampling",
    "weights",
]
