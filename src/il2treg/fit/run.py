"""Running a fit specification: the estimation, then the results folder.

:func:`run_fit` reads (or takes) a validated :class:`~il2treg.fit.spec.FitSpec`, refuses an
existing results folder before computing anything, runs :func:`compute_fit` (the FOCE-I
population fit, :func:`il2treg.fit.estimate.fit_population`, or SAEM or NUTS; the covariance
step), assembles the results (:mod:`il2treg.fit.assemble`: predictions, per-patient results, the
SLEDAI link), diagnoses the fit and draws its figures (:mod:`il2treg.diagnostics`,
:mod:`il2treg.fit.figures`) and saves a :class:`~il2treg.fit.result.FitResult` folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import equinox as eqx
import numpy as np

from il2treg.errors import InputError
from il2treg.fit.assemble import (
    assemble_result,
    compile_predictions,
    declared_factors,
    initial_psi,
    make_objective,
    prediction_rows,
)
from il2treg.fit.estimate import PopulationFit, estimate_covariance, natural_parameters
from il2treg.fit.estimators import ESTIMATORS, Estimator, Foce
from il2treg.fit.result import FitResult, save
from il2treg.fit.spec import FitSpec, read_fit_spec

Progress = Callable[[dict], None]


def run_fit(spec: FitSpec | str | Path, out_dir: str | Path, *, force: bool = False, estimator: Estimator = Foce(), progress: Progress | None = None,
            figures: bool = True, n_sim: int = 500) -> FitResult:
    """Validate, fit, and write the results folder ``out_dir``.

    Arguments:
        spec: a :class:`FitSpec` or the path of a fit file.
        out_dir: results folder; it must not exist unless ``force``.
        force: replace an existing results folder.
        estimator: :class:`~il2treg.fit.estimators.Foce` (the default),
            :class:`~il2treg.fit.estimators.Saem` or :class:`~il2treg.fit.estimators.Nuts`
            (:func:`compute_fit`).
        progress: called with a dict at each stage (``stage``: ``start``, ``estimation``,
            ``covariance``, ``predictions``, ``writing``; ``elapsed_s``) and after each outer
            iteration (``stage`` ``estimation`` with ``iteration``, ``ofv``, ``grad_max``).
        figures: also write ``figures/`` (:func:`il2treg.fit.figures.write_figures`, ``n_sim`` simulated replicates)
            and ``diagnostics.csv`` (stage ``figures``).

    Raises:
        SpecError: a bad fit file (before any computation).
        InputError: ``out_dir`` exists and ``force`` is False (before any computation).
    """
    spec = spec if isinstance(spec, FitSpec) else read_fit_spec(spec)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise InputError(f"output folder {str(out_dir)!r} already exists. Fix: choose another --out or pass --force to replace it.")
    start = time.perf_counter()
    result = compute_fit(spec, estimator=estimator, progress=progress)
    extra = None
    if figures:
        if progress is not None:
            progress({"stage": "figures", "elapsed_s": time.perf_counter() - start})
        from il2treg.diagnostics import diagnose  # matplotlib and the figures: imported where drawn
        from il2treg.fit.figures import write_figures

        diag = diagnose(result, spec=spec, n_sim=n_sim)
        extra = lambda folder: write_figures(diag, folder, trace_of=result)
    if progress is not None:
        progress({"stage": "writing", "elapsed_s": time.perf_counter() - start})
    save(result, out_dir, force=force, extra=extra)
    return result


def compute_fit(spec: FitSpec, *, estimator: Estimator = Foce(), progress: Progress | None = None) -> FitResult:
    """Run the fit described by ``spec`` with ``estimator`` and return its :class:`FitResult`
    (nothing is written).

    ``estimator`` (:mod:`il2treg.fit.estimators`): ``Foce()`` (FOCE-I / Laplace; the posterior
    file holds draws from the normal approximation), ``Saem(...)`` (the OFV, the covariance and
    the posterior file are those of the FOCE-I objective at the SAEM estimates) or ``Nuts(...)``
    (the Laplace fit, then NUTS warm-started from it; the posterior file holds the NUTS
    posterior with its sample statistics, pointwise log-likelihood and posterior predictive draws).
    """
    if not isinstance(estimator, tuple(ESTIMATORS.values())):
        raise InputError(f"estimator must be an il2treg.fit estimator (Foce(), Saem(...), Nuts(...)), got {estimator!r}. "
                         "Fix: pass one of them, e.g. estimator=Foce().")  # fmt: skip
    start = time.perf_counter()
    emit = progress or (lambda info: None)
    timing: dict[str, float] = {}
    residual0 = spec.residual_model()
    problem = spec.problem()
    estimator.check(problem, summaries=spec.summaries is not None)
    psi0 = initial_psi(spec, problem, residual0)
    objective = make_objective(spec, problem, psi0)
    emit({"stage": "start", "elapsed_s": time.perf_counter() - start})

    first: list[float] = []
    rows = prediction_rows(problem, objective.patients, spec.sri4.day)
    built: list[Future] = []

    def on_iteration(info: dict) -> None:
        if not first:
            first.append(time.perf_counter() - start)
            # The predictions' program is built on a background thread while the estimation runs
            # (after the first iteration: beside the fit's own first programs it slowed them).
            built.append(compile_predictions(rows, psi0, residual0))
        emit({"stage": "estimation", **info})

    t = time.perf_counter()
    opt = spec.optimiser
    fit = estimator.estimate(spec, objective, psi0, on_iteration)
    timing["estimation_s"] = time.perf_counter() - t
    timing["first_iteration_s"] = first[0] if first else float("nan")
    if opt.covariance or estimator.needs_covariance:
        emit({"stage": "covariance", "elapsed_s": time.perf_counter() - start})
        t = time.perf_counter()
        inner = objective.inner(fit.psi, fit.eta)
        fit = eqx.tree_at(lambda f: f.covariance, fit, estimate_covariance(objective, fit.psi, inner, fit.included, kind=opt.covariance_matrix))
        timing["covariance_s"] = time.perf_counter() - t

    emit({"stage": "predictions", "elapsed_s": time.perf_counter() - start})
    return assemble_result(spec, problem, objective, fit, estimator=estimator, rows=rows, timing=timing, emit=emit, start=start, programs=built)


def refit(spec: FitSpec, problem, psi0) -> tuple[PopulationFit, np.ndarray]:
    """FOCE-I estimation of ``spec``'s data from ``psi0``, without the covariance step or the
    results tables: one of many refits (:mod:`il2treg.fit.bootstrap`, :mod:`il2treg.sse`).

    ``problem`` is passed, not built from ``spec``, so that refits of data of one shape share its
    static settings and so its compiled programs. Returns the fit and its estimates on the scale
    and in the units of ``parameters.csv`` (the model file's), in the order of ``fit.psi_names``.
    """
    fit = Foce().estimate(spec, make_objective(spec, problem, psi0), psi0, lambda info: None)
    natural = np.asarray(natural_parameters(problem, fit.psi, spec.residual_model())) * declared_factors(problem)
    return fit, natural
