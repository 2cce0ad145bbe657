"""Fitting: individual (empirical Bayes), population (FOCE-I, SAEM) and Bayesian (NUTS) estimation.

:mod:`.problem` says what is estimated, :mod:`.individual` solves each patient's EBE,
:mod:`.population` holds the objective and its exact gradient, :mod:`.estimate` the outer
optimisation and the uncertainty, :mod:`.saem` the SAEM estimator, :mod:`.priors` the priors, :mod:`.bayes` the NUTS posterior,
:mod:`.profile` profile likelihoods, :mod:`.predictive` posterior predictive simulation,
:mod:`.estimators` the estimator objects (``Foce()``, ``Saem(...)``, ``Nuts(...)``) a fit runs,
:mod:`.omega` the between-patient covariance (diagonal or in blocks), :mod:`.psi` the estimation
vector by name, :mod:`.aggregate` fits to published summary statistics instead of patients,
:mod:`.joint` adds them to a population fit beside the patients (a fit file's ``[summaries]``).
:mod:`.spec` reads fit files (``fits/<name>/fit.toml``), :mod:`.run` runs them, :mod:`.result`
holds, saves and loads a :class:`FitResult`.
"""

from il2treg.fit.aggregate import Summary, SummaryFit, fit_summaries, predict_summaries
from il2treg.fit.bayes import NutsSettings, sample_nuts
from il2treg.fit.estimate import PopulationFit, fit_population, natural_estimates, shrinkage
from il2treg.fit.estimators import Estimator, Foce, Nuts, Saem, estimator_named
from il2treg.fit.individual import InnerResult, batch_inner_solve, inner_solve
from il2treg.fit.omega import RandomEffects
from il2treg.fit.population import Objective
from il2treg.fit.predictive import posterior_predictive
from il2treg.fit.priors import Prior, PriorDefaults, model_priors, sampling_priors
from il2treg.fit.problem import FitProblem, make_problem, patient_arrays, problem_patients, to_unconstrained
from il2treg.fit.profile import Profile, profile
from il2treg.fit.result import FitResult, load_fit
from il2treg.fit.result import save as save_fit
from il2treg.fit.run import compute_fit, run_fit
from il2treg.fit.saem import SaemSettings, fit_saem
from il2treg.fit.spec import FitSpec, read_fit_spec

__all__ = [
    "Estimator",
    "FitProblem",
    "FitResult",
    "FitSpec",
    "Foce",
    "InnerResult",
    "Nuts",
    "NutsSettings",
    "Objective",
    "PopulationFit",
    "Prior",
    "PriorDefaults",
    "Profile",
    "RandomEffects",
    "Saem",
    "SaemSettings",
    "Summary",
    "SummaryFit",
    "batch_inner_solve",
    "compute_fit",
    "estimator_named",
    "fit_population",
    "fit_saem",
    "fit_summaries",
    "inner_solve",
    "load_fit",
    "make_problem",
    "model_priors",
    "natural_estimates",
    "patient_arrays",
    "posterior_predictive",
    "predict_summaries",
    "problem_patients",
    "profile",
    "read_fit_spec",
    "run_fit",
    "sample_nuts",
    "sampling_priors",
    "save_fit",
    "shrinkage",
    "to_unconstrained",
]
