"""il2treg: differentiable models of low-dose IL-2 therapy in SLE.

One entry point per job: :func:`load_model` reads a model definition, :func:`simulate` solves it
for one patient or a batch under a :class:`Regimen`, :func:`sample_population` draws patients,
:func:`simulate_trial` runs replicate virtual trials of a :class:`TrialDesign`; :mod:`il2treg.design`
compares regimens (:func:`compare`) and designs them by gradients (:func:`optimise`).
"""

from il2treg import _precision  # noqa: F401  (enables float64 first)

# isort: split
from il2treg import design, errors, regimen, units
from il2treg.cache import enable_compilation_cache
from il2treg.design import Constraints, compare, optimise
from il2treg.fit.result import load_fit
from il2treg.model import Model, Parameters, load_model, sample_population
from il2treg.observables import OBSERVABLE_NAMES, OBSERVABLES
from il2treg.regimen import Regimen
from il2treg.sbml import export_sbml
from il2treg.simulate import Simulation, SolverOptions, simulate, simulate_regimens
from il2treg.trial import TrialDesign, TrialResult, load_design, simulate_trial
from il2treg.version import __version__ as __version__

__all__ = [
    "OBSERVABLES",
    "OBSERVABLE_NAMES",
    "Constraints",
    "Model",
    "Parameters",
    "Regimen",
    "Simulation",
    "SolverOptions",
    "TrialDesign",
    "TrialResult",
    "compare",
    "design",
    "enable_compilation_cache",
    "errors",
    "export_sbml",
    "load_design",
    "load_fit",
    "load_model",
    "optimise",
    "regimen",
    "sample_population",
    "simulate",
    "simulate_regimens",
    "simulate_trial",
    "units",
]
