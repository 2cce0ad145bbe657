"""Fitting: individual (empirical Bayes) and population (FOCE-I) estimation.

:mod:`.problem` says what is estimated, :mod:`.individual` solves each patient's EBE,
:mod:`.population` holds the objective and its exact gradient, :mod:`.estimate` the outer
optimisation and the uncertainty.
"""

from il2treg.fit.estimate import PopulationFit, fit_population, natural_estimates, shrinkage
from il2treg.fit.individual import InnerResult, batch_inner_solve, inner_solve
from il2treg.fit.population import Objective
from il2treg.fit.problem import FitProblem, make_problem, patient_arrays, to_unconstrained

__all__ = [
    "FitProblem",
    "InnerResult",
    "Objective",
    "PopulationFit",
    "batch_inner_solve",
    "fit_population",
    "inner_solve",
    "make_problem",
    "natural_estimates",
    "patient_arrays",
    "shrinkage",
    "to_unconstrained",
]
