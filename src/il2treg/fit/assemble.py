r"""Assembling a fit's results: its objective and start, predictions, per-patient results and the SLEDAI link.

:func:`make_objective` and :func:`initial_psi` set a fit file's estimation up; after the
estimation (:func:`il2treg.fit.run.compute_fit`) :func:`assemble_result` turns the estimates into
a :class:`~il2treg.fit.result.FitResult`: the tables below, the estimates on the natural scale
and the posterior draws (NUTS: :func:`il2treg.fit.bayes.sample_nuts`).

**Predictions** for every observation row: PRED with :math:`\eta = 0`, IPRED with
:math:`\eta = \hat\eta_i` (the EBEs), RES = DV − PRED, IRES = DV − IPRED, and
IWRES = IRES / sd on the error model's scale (:func:`il2treg.likelihood.residual_sd` at IPRED;
for kind ``log`` IWRES = (log DV − log IPRED) / σ). Residuals are NaN on censored rows (DV is
the LLOQ), and IWRES also on rows not fitted.

**SLEDAI link.** For each patient, the latent SLEDAI :math:`L` at day 0 and at the assessment
day (``[sri4] day``, 84 by default) under its individual parameters, and the SLEDAI observation
model (:mod:`il2treg.sledai`, also the ``ordinal`` likelihood and the trial simulator's):
:math:`Y = \max(0, h\,\mathrm{round}((L + \epsilon)/h))` on the score grid of step :math:`h`
(``score_step``, 1 = integer scores), :math:`\epsilon \sim N(0, \sigma^2)` independent at the two
visits, σ the fitted SLEDAI SD. Then

.. math::
    P(\text{SRI-4}) = k \sum_{b} P(Y_0 = b)\, P(Y_{84} \le c(b)), \qquad
    P(Y \le c) = \Phi\Big(\frac{c + h/2 - L}{\sigma}\Big)\ (c \ge 0)

over the grid values :math:`b`, with :math:`c(b)` the largest grid value :math:`\le b - f`
(none, probability 0, when :math:`b < f`)
with the fall :math:`f` = 4 points and :math:`k` = 0.956 the probability that BILAG/PGA does not
veto a SLEDAI responder; the sum runs over the whole support up to 12 σ beyond the larger
latent score (the rest is below 1e-32). The expected reported change
:math:`E[Y_{84}] - E[Y_0]` is given beside the latent change :math:`L_{84} - L_0`.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from il2treg.fit.bayes import NutsSettings, eta_variances, make_target, pointwise, sample_nuts
from il2treg.fit.estimate import (
    PopulationFit,
    natural_estimates,
    natural_parameters_of,
    shrinkage,
)
from il2treg.fit.estimators import Estimator, Nuts, Saem, estimator_named
from il2treg.fit.individual import STATUS_CONVERGED, STATUS_MAX_ITER, STATUS_SOLVER_FAILED
from il2treg.fit.joint import SummaryTerm, summary_term
from il2treg.fit.omega import block_correlation, partial_correlations
from il2treg.fit.population import Objective, ShardedObjective, ThreadedObjective, make_parallel
from il2treg.fit.priors import model_priors, sampling_priors
from il2treg.fit.problem import (
    FitProblem,
    PatientData,
    covariate_theta,
    individual_theta,
    predict,
    problem_patients,
    to_unconstrained,
    unpack,
)  # fmt: skip
from il2treg.fit.psi import Psi
from il2treg.fit.result import FitResult
from il2treg.fit.spec import SIGMAS_OF_KIND, FitSpec
from il2treg.likelihood import ResidualModel, residual_sd
from il2treg.simulate import max_dose_lag, ordered_map, slots_needed, work_order
from il2treg.sledai import score_change_probability

#: Inner (EBE) status codes as words.
STATUS_TEXT = {STATUS_CONVERGED: "converged", STATUS_MAX_ITER: "EBE not converged", STATUS_SOLVER_FAILED: "ODE solve failed"}
_POSTERIOR_CHAINS, _POSTERIOR_DRAWS, _POSTERIOR_SEED = 4, 500, 0

def make_objective(spec: FitSpec, problem: FitProblem, psi0=None) -> ShardedObjective | ThreadedObjective:
    """The population objective of a fit file: its data, error models, (``priors = "model"``)
    penalty and (``[summaries]``) published summaries (checked at the start ``psi0``), its
    patients spread over all local devices (several GPUs, or forced CPU devices) or, on one
    device, over threads (:func:`il2treg.fit.population.make_parallel`)."""
    prior = model_priors(problem) if spec.priors == "model" else None
    residual = spec.residual_model()
    summaries = None
    if spec.summaries is not None:
        s = spec.summaries
        psi0 = initial_psi(spec, problem, residual) if psi0 is None else psi0
        summaries = summary_term(problem, residual, s.data.regimens, s.data.summaries, psi0, sigma_prop=dict(s.sigma_prop), n_draws=s.n_draws, seed=s.seed)
    return make_parallel(Objective(problem, problem_patients(problem, spec.dataset), residual, prior=prior, summaries=summaries))


def initial_psi(spec: FitSpec, problem: FitProblem, residual0: ResidualModel) -> jax.Array:
    """The starting vector: fixed effects at the model's (initial) values, covariate coefficients,
    omegas from CV%, the correlations of omega blocks, inter-occasion omegas, sigmas (the order
    of ``problem.psi_names``)."""
    typical = spec.model.typical()
    u = to_unconstrained(problem, {n: float(typical[n]) for n in problem.fixed})
    beta = [c.initial for c in spec.covariates]
    cv = {p.name: p.cv_percent for p in spec.parameters if p.cv_percent is not None}
    log_omega = [0.5 * math.log(math.log1p((cv[n] / 100.0) ** 2)) for n in problem.random]
    initial_corr = {(i, j): b.correlation for b in spec.omega_blocks for i, j in problem.corr_pairs if problem.random[i] in b.parameters}
    corr = partial_correlations(block_correlation(problem.n_eta, problem.corr_pairs, initial_corr), problem.corr_pairs) if problem.n_corr else []
    iov_cv = {p.name: p.iov_cv_percent for p in spec.parameters if p.iov_cv_percent is not None}
    log_omega_iov = [0.5 * math.log(math.log1p((iov_cv[n] / 100.0) ** 2)) for n in problem.iov]
    log_sigma = []
    for dvid, kind in problem.sigmas:
        d = problem.model.observable_names.index(dvid)
        log_sigma.append(math.log(float((residual0.sigma_add if kind == "add" else residual0.sigma_prop)[d])))
    parts = {"beta": beta, "log_omega": log_omega, "corr": corr, "log_omega_iov": log_omega_iov, "log_sigma": log_sigma}
    return Psi(u=u, **{k: jnp.asarray(v, dtype=jnp.float64) for k, v in parts.items()}).ravel()


# ----------------------------------------------------------------------------- predictions


def patient_theta(problem: FitProblem, theta, beta, eta, patient: PatientData):
    """One patient's parameters: covariate effects on the typical values, then its random effects."""
    return individual_theta(problem, covariate_theta(problem, theta, beta, patient.covariates), eta, patient.occasion)


#: A thread for the predictions' program, built while the estimation runs.
_BACKGROUND = ThreadPoolExecutor(1, thread_name_prefix="il2treg-predictions")

#: The results tables' few array computations, each one compiled program (run eagerly, every
#: jax.numpy operation in them was a program of its own, compiled in every process).
_unpack = eqx.filter_jit(unpack)
_residual_sd = eqx.filter_jit(residual_sd)


@eqx.filter_jit
def _allpatient_theta(problem: FitProblem, theta, beta, eta, patients: PatientData):
    return jax.vmap(lambda e, p: patient_theta(problem, theta, beta, e, p))(eta, patients)


@eqx.filter_jit
def predict_all(problem: FitProblem, theta, beta, eta, patients: PatientData, batch_size: int = 32):
    """Predictions and solver status of every patient at its ``eta``."""
    one = lambda args: predict(problem, patient_theta(problem, theta, beta, args[0], args[1]), args[1])
    return ordered_map(one, (eta, patients), work_order(patients.dose_amount), batch_size)


class PredictionRows(eqx.Module):
    """Every observation row plus, for a model with a ``sledai`` observable, latent SLEDAI at day 0
    and the SRI-4 day, in one sorted solve."""

    problem: FitProblem = eqx.field(static=True)
    patients: PatientData
    inverse: np.ndarray  # [patients, obs + extra]: sorted position of each row (data rows, then day 0, day)
    extra: int = eqx.field(static=True)


def _rows(problem: FitProblem, patients: PatientData, day: float) -> PredictionRows:
    n = patients.obs_time.shape[0]
    names = problem.model.observable_names
    extra = np.broadcast_to(np.asarray([0.0, day]), (n, 2)) if "sledai" in names else np.zeros((n, 0))
    times = np.concatenate([np.asarray(patients.obs_time), extra], axis=1)
    dvid = np.concatenate([np.asarray(patients.obs_dvid), np.full(extra.shape, names.index("sledai") if extra.size else 0)], axis=1)
    order = np.argsort(times, axis=1, kind="stable")
    times, dvid = np.take_along_axis(times, order, 1), np.take_along_axis(dvid, order, 1)
    slots = slots_needed(np.asarray(patients.dose_time), times, max_dose_lag(problem.model))
    at = PatientData(
        patients.dose_time, patients.dose_amount, jnp.asarray(times), jnp.asarray(dvid), jnp.zeros(times.shape),
        jnp.zeros(times.shape, dtype=bool), jnp.ones(times.shape, dtype=bool), patients.covariates, patients.records, patients.periods, patients.occasion,
    )  # fmt: skip
    return PredictionRows(dataclasses.replace(problem, slots=slots), at, np.argsort(order, axis=1), extra.shape[1])


def _solve_rows(rows: PredictionRows, theta, beta, eta) -> tuple[np.ndarray, np.ndarray | None]:
    """(predictions ``[patients, obs]``, latent SLEDAI ``[patients, 2]`` at day 0 and the SRI-4 day,
    None for a model without a ``sledai`` observable)."""
    values, _ = predict_all(rows.problem, theta, beta, jnp.asarray(eta), rows.patients)
    values = np.take_along_axis(np.asarray(values, dtype=np.float64), rows.inverse, 1)
    if not rows.extra:
        return values, None
    return values[:, : -rows.extra], values[:, -rows.extra :]


def _predictions(spec: FitSpec, fit: PopulationFit, residual: ResidualModel, pred, ipred) -> pd.DataFrame:
    data = spec.dataset
    sd = np.asarray(_residual_sd(residual, ipred, data.obs_dvid), dtype=np.float64)
    s, j = observation_rows(data)
    pred, ipred, sd = pred[s, j], ipred[s, j], sd[s, j]
    dvid = data.obs_dvid[s, j]
    dv = np.where(data.obs_dv_missing[s, j], np.nan, data.obs_value[s, j]).astype(np.float64)
    cens = data.obs_cens[s, j]
    used = data.obs_mask[s, j]
    log_kind = np.asarray([residual.kinds[d] == "log" for d in dvid], dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(log_kind, np.log(dv) - np.log(ipred), dv - ipred)
        iwres = np.where(used & ~cens, scaled / sd, np.nan)
    censored = np.where(cens, np.nan, 1.0)
    return pd.DataFrame({
        "ID": _ids(data, s), "ROW": data.obs_row[s, j].astype(np.int64), "TIME": data.obs_time[s, j].astype(np.float64),
        "DVID": [data.dvid_names[d] for d in dvid], "DV": dv, "CENS": cens.astype(np.int64), "USED": used.astype(bool),
        "PRED": pred, "IPRED": ipred, "RES": (dv - pred) * censored, "IRES": (dv - ipred) * censored, "IWRES": iwres,
    })  # fmt: skip


def observation_rows(data) -> tuple[np.ndarray, np.ndarray]:
    """(patient, slot) of every observation row of ``data``, in the order of the source file."""
    s, j = np.nonzero(data.obs_row > 0)
    order = np.argsort(data.obs_row[s, j], kind="stable")
    return s[order], j[order]


def _individual(spec: FitSpec, problem, fit: PopulationFit, theta, beta, residual: ResidualModel, patients: PatientData, latent) -> pd.DataFrame:
    data = spec.dataset
    n = data.n_subjects
    eta = np.asarray(fit.eta, dtype=np.float64)
    status = np.asarray(fit.inner_status)
    included = np.asarray(fit.included, dtype=bool)
    columns: dict[str, object] = {
        "ID": _ids(data, np.arange(n)), "included": included, "inner_status": status.astype(np.int64),
        "status": [_status_text(int(c), bool(ok)) for c, ok in zip(status, included)],
    }  # fmt: skip
    for k, name in enumerate(problem.random_names):  # ETA_<p>, then KAPPA_<p>_<occasion>
        columns[name] = eta[:, k]
    theta_i = np.asarray(_allpatient_theta(problem, theta, beta, jnp.asarray(eta), patients))
    if problem.timed:  # time-varying covariates or occasions: the first period's (at the subject's first row)
        theta_i = theta_i[:, 0]
    names = problem.model.parameter_names
    for p in spec.parameters:
        columns[p.name] = theta_i[:, names.index(p.name)] * problem.model.spec[p.name].to_declared(1.0)
    if latent is None:  # no sledai observable: no SRI-4
        return pd.DataFrame(columns)
    day = spec.sri4.day
    l0, l1 = latent[:, 0], latent[:, 1]
    sd0, sd1 = score_sd(residual, l0), score_sd(residual, l1)
    p_fall, e0, e1 = score_change_probability(l0, l1, sd0, sd1, spec.sri4.fall, step=residual.score_step)
    columns["sledai_latent_day0"] = l0
    columns[f"sledai_latent_day{day:g}"] = l1
    columns[f"sledai_change_day{day:g}"] = l1 - l0
    columns[f"score_change_day{day:g}"] = e1 - e0
    columns[f"p_sri4_day{day:g}"] = spec.sri4.bilag_pga_keep * p_fall
    return pd.DataFrame(columns)


def score_sd(residual: ResidualModel, latent: np.ndarray) -> np.ndarray:
    """SD of the visit error on the score scale (σ·L for a log error model, by the delta method)."""
    k = residual.names.index("sledai")
    sd = np.asarray(_residual_sd(residual, latent, np.full(latent.shape, k)), dtype=np.float64)
    return sd * latent if residual.kinds[k] == "log" else sd



# ----------------------------------------------------------------------------- estimates


def declared_factors(problem: FitProblem) -> np.ndarray:
    """Per psi entry: factor from internal to the model file's unit (1 for omegas, correlations and sigmas)."""
    spec = problem.model.spec
    factors = np.ones(problem.layout.size)
    factors[problem.layout.mask("u")] = [spec[n].to_declared(1.0) for n in problem.fixed]
    factors[problem.layout.mask("beta")] = [spec[c.parameter].to_declared(1.0) if c.model == "linear" else 1.0 for c in problem.covariates]
    return factors


def _estimates(spec: FitSpec, problem: FitProblem, fit: PopulationFit, residual0: ResidualModel) -> pd.DataFrame:
    est = natural_estimates(problem, fit, residual0)
    shrink = shrinkage(fit, problem, residual0) if int(np.sum(np.asarray(fit.included))) > 1 else {}
    factor = dict(zip(fit.psi_names, declared_factors(problem)))
    initial = dict(zip(fit.psi_names, np.asarray(natural_parameters_of(problem, initial_psi(spec, problem, residual0), residual0))[0]))
    typical = spec.model.typical()
    units_of = dict(zip(spec.model.observable_names, spec.model.mechanism.observable_units))
    rows = []
    nan = float("nan")

    def row(name, kind, unit, estimated, values=None, init=nan, cv=nan, shrinkage_percent=nan):
        v = values or {}
        f = factor.get(name, 1.0)
        rows.append({
            "parameter": name, "type": kind, "unit": unit, "estimated": estimated,
            "estimate": v.get("estimate", nan) * f, "se": v.get("se", nan) * f, "rse_percent": v.get("rse_percent", nan),
            "ci_low": v.get("ci_low", nan) * f, "ci_high": v.get("ci_high", nan) * f,
            "cv_percent": v.get("cv_percent", cv), "shrinkage_percent": shrinkage_percent, "initial": init * f,
        })  # fmt: skip

    for p in spec.parameters:
        ps = spec.model.spec[p.name]
        if p.estimate:
            row(p.name, "fixed", ps.unit, True, est[p.name], initial[p.name])
        else:
            value = ps.to_declared(float(typical[p.name]))
            rows.append({**_empty_row(p.name, "fixed", ps.unit), "estimate": value, "initial": value})
    for c in spec.covariates:
        e = c.effect
        unit = f"{spec.model.spec[e.parameter].unit} per unit of {e.covariate}" if e.model == "linear" else \
            ("1" if e.model == "power" else f"1 per unit of {e.covariate}")
        row(e.name, "covariate", unit, True, est[e.name], initial[e.name])
    for p in spec.parameters:
        if p.cv_percent is not None:
            name = f"omega_{p.name}"
            row(name, "omega", "1", True, est[name], initial[name], shrinkage_percent=shrink.get(p.name, nan))
    for i, j in problem.corr_pairs:
        name = f"corr_{problem.random[j]}_{problem.random[i]}"
        row(name, "correlation", "1", True, est[name], initial[name])
    for n in problem.iov:
        name = f"omega_iov_{n}"
        row(name, "omega_iov", "1", True, est[name], initial[name])
    for e in spec.errors:
        for sigma in ("sigma_add", "sigma_prop"):
            if sigma not in SIGMAS_OF_KIND[e.kind]:
                continue
            name = f"sigma_{sigma.removeprefix('sigma_')}_{e.dvid}"
            unit = "1" if sigma == "sigma_prop" else ("log" if e.kind == "log" else units_of[e.dvid])
            if sigma in e.estimate:
                row(name, "sigma", unit, True, est[name], initial[name])
            else:
                value = float(getattr(e, sigma))
                rows.append({**_empty_row(name, "sigma", unit), "estimate": value, "initial": value})
    table = pd.DataFrame(rows, columns=list(_empty_row("", "", "")))
    if spec.labels:  # the fit file's labels (NONMEM's, say), beside il2treg's names
        labels = dict(spec.labels)
        table.insert(1, "label", [labels.get(n, n) for n in table["parameter"]])
    return table


def _empty_row(name: str, kind: str, unit: str) -> dict:
    nan = float("nan")
    return {"parameter": name, "type": kind, "unit": unit, "estimated": False, "estimate": nan, "se": nan, "rse_percent": nan,
            "ci_low": nan, "ci_high": nan, "cv_percent": nan, "shrinkage_percent": nan, "initial": nan}  # fmt: skip


def _posterior(problem: FitProblem, fit: PopulationFit, residual0: ResidualModel, factors: np.ndarray) -> np.ndarray:
    """Draws [chain, draw, psi] of the natural-scale parameters from N(psi_hat, cov) (estimation scale)."""
    k = len(fit.psi)
    cov = np.asarray(fit.covariance, dtype=np.float64)
    shape = (_POSTERIOR_CHAINS, _POSTERIOR_DRAWS, k)
    try:
        chol = np.linalg.cholesky(cov) if np.all(np.isfinite(cov)) else None
    except np.linalg.LinAlgError:
        chol = None
    if chol is None:
        return np.full(shape, np.nan)
    z = np.random.default_rng(_POSTERIOR_SEED).standard_normal((shape[0] * shape[1], k))
    psi = np.asarray(fit.psi, dtype=np.float64)[None, :] + z @ chol.T
    natural = np.asarray(natural_parameters_of(problem, psi, residual0), dtype=np.float64)
    return (natural * factors[None, :]).reshape(shape)


def _condition_cor(cov: np.ndarray) -> float:
    if not np.all(np.isfinite(cov)):
        return float("inf")
    se = np.sqrt(np.diag(cov))
    ev = np.linalg.eigvalsh(cov / np.outer(se, se))
    return float(ev.max() / ev.min()) if ev.min() > 0 else float("inf")


def _status_text(code: int, included: bool) -> str:
    text = STATUS_TEXT.get(code, f"status {code}")
    if included:
        return text
    return "left out: EBE not converged at the start" if code == STATUS_CONVERGED else f"left out: {text}"


def _ids(data, rows: np.ndarray) -> list:
    return [data.ids[int(s)] for s in rows]


def _version() -> str:
    from il2treg.version import __version__

    return __version__


def _plain(v):
    return v if isinstance(v, (bool, int, str)) else float(v)


def _nuts_settings(settings: NutsSettings) -> dict:
    """The NUTS settings a fit ran with, as ``nuts_<key>`` (the default priors' SDs among them)."""
    flat = {k: v for k, v in dataclasses.asdict(settings).items() if k != "priors"} | dataclasses.asdict(settings.priors)
    return {f"nuts_{k}": _plain(v) for k, v in flat.items()}


# ----------------------------------------------------------------------------- NUTS


def _nuts(spec: FitSpec, problem: FitProblem, fit: PopulationFit, residual0: ResidualModel, objective: ShardedObjective | ThreadedObjective, estimates: pd.DataFrame, timing: dict,
          settings: NutsSettings):  # fmt: skip
    """NUTS from the Laplace fit: (natural-scale draws [chain, draw, psi], InferenceData, estimates with posterior columns)."""
    import arviz as az

    prior = sampling_priors(problem, initial_psi(spec, problem, residual0), settings.priors)
    patients = objective.patients
    inner = objective.inner(fit.psi, fit.eta)  # converged there: no iterations, the compiled solve is reused
    random_effects = _unpack(problem, problem.split(fit.psi), residual0).random_effects
    eta_var = eta_variances(inner, random_effects)
    target = make_target(problem, patients, residual0, prior, fit.included, eta_var, random_effects.sd)
    samples = sample_nuts(target, fit.psi, fit.eta, eta_var, fit.covariance, settings)
    timing["nuts_compile_s"], timing["nuts_sampling_s"] = samples.compile_s, samples.sampling_s
    t = time.perf_counter()
    loglik, replicate, status = pointwise(target, samples, seed=settings.seed + 1)
    timing["nuts_pointwise_s"] = time.perf_counter() - t
    c, d, k = samples.psi.shape
    factors = declared_factors(problem)
    natural = natural_parameters_of(problem, samples.psi.reshape(c * d, k), residual0)
    draws = (np.asarray(natural, dtype=np.float64) * factors[None, :]).reshape(c, d, k)
    data = spec.dataset
    ids = _ids(data, np.arange(data.n_subjects))
    mask = np.asarray(patients.obs_mask)
    obs = np.where(mask, np.asarray(patients.obs_value, dtype=np.float64), np.nan)
    eta = np.asarray(samples.eta(target), dtype=np.float64)
    posterior = {n: draws[..., j] for j, n in enumerate(problem.psi_names)}
    posterior["eta"] = eta
    stats = {
        "lp": np.asarray(samples.log_density), "acceptance_rate": np.asarray(samples.acceptance_rate),
        "diverging": np.asarray(samples.diverging, dtype=bool), "tree_depth": np.asarray(samples.tree_depth, dtype=np.int64),
        "n_steps": np.asarray(samples.n_steps, dtype=np.int64), "energy": np.asarray(samples.energy),
        "step_size": np.broadcast_to(np.asarray(samples.step_size)[:, None], (c, d)).copy(),
        "solver_failed": np.asarray(status != 0).sum(axis=-1).astype(np.int64),
    }  # fmt: skip
    dims = {"eta": ["patient", "parameter"], "y": ["patient", "time"], "obs_time": ["patient", "time"],
            "obs_dvid": ["patient", "time"], "obs_used": ["patient", "time"]}  # fmt: skip
    coords = {"patient": [str(i) for i in ids], "time": np.arange(obs.shape[1]), "parameter": [n.removeprefix("ETA_") for n in problem.random_names]}
    attrs = {
        "method": Nuts.name, "inference_library": "blackjax", "fit": spec.name, "seed": settings.seed,
        "chains": settings.chains, "warmup": settings.warmup, "samples": settings.samples,
        "centred": int(np.asarray(target.centred).sum()),
        "target_accept": settings.target_accept, "max_tree_depth": settings.max_tree_depth,
        "description": "NUTS posterior of the population parameters (units of parameters.csv) and of the random "
        "effects eta [patient, parameter]; observations on a [patient, time] grid of observation slots "
        "(constant_data obs_time in days, obs_dvid names in the attribute dvid_names; slots not used are NaN "
        "in observed_data and 0 in log_likelihood)",
        "dvid_names": list(problem.model.observable_names),
        "compile_s": samples.compile_s, "sampling_s": samples.sampling_s,
    }  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        inference = az.from_dict(
            posterior=posterior, sample_stats=stats, log_likelihood={"y": loglik}, posterior_predictive={"y": replicate},
            observed_data={"y": obs},
            constant_data={"obs_time": np.asarray(patients.obs_time, dtype=np.float64), "obs_dvid": np.asarray(patients.obs_dvid, dtype=np.int64),
                           "obs_used": mask.astype(np.int64)},
            coords=coords, dims=dims, attrs=attrs,
        )  # fmt: skip
    for group in inference.groups():
        inference[group].attrs.update(attrs)
    summary = az.summary(inference, var_names=list(problem.psi_names), stat_focus="mean", round_to="none")
    estimates = estimates.copy()
    for col, src in (("posterior_mean", "mean"), ("posterior_sd", "sd"), ("r_hat", "r_hat"), ("ess_bulk", "ess_bulk"), ("ess_tail", "ess_tail")):
        estimates[col] = [float(summary.loc[n, src]) if n in summary.index else float("nan") for n in estimates["parameter"]]
    q = {n: np.quantile(draws[..., j], [0.025, 0.975]) for j, n in enumerate(problem.psi_names)}
    estimates["posterior_q2.5"] = [float(q[n][0]) if n in q else float("nan") for n in estimates["parameter"]]
    estimates["posterior_q97.5"] = [float(q[n][1]) if n in q else float("nan") for n in estimates["parameter"]]
    return draws, inference, estimates


# ----------------------------------------------------------------------------- the result


def prediction_rows(problem: FitProblem, patients: PatientData, day: float) -> PredictionRows:
    """The rows every prediction table needs (:class:`PredictionRows`), SRI-4 ``day`` included."""
    return _rows(problem, patients, day)


def compile_predictions(rows: PredictionRows, psi, residual0: ResidualModel) -> Future:
    """Build the predictions' program on a background thread (while the estimation runs)."""
    up0 = _unpack(rows.problem, rows.problem.split(psi), residual0)
    eta0 = np.zeros((rows.inverse.shape[0], rows.problem.n_random))
    return _BACKGROUND.submit(lambda: predict_all.lower(rows.problem, up0.theta, up0.beta, eta0, rows.patients).compile())


def assemble_result(spec: FitSpec, problem: FitProblem, objective: ShardedObjective | ThreadedObjective, fit: PopulationFit, *,
                    estimator: Estimator, rows: PredictionRows, timing: dict, emit: Callable[[dict], None], start: float,
                    programs: Sequence[Future] = ()) -> FitResult:
    """The :class:`FitResult` of an estimation: predictions, per-patient results, estimates and the
    posterior (for a :class:`~il2treg.fit.estimators.Nuts` estimator, NUTS from the fit); ``timing`` gains ``results_s`` (and the
    NUTS stages) and ``total_s`` (since ``start``, a ``time.perf_counter()``). ``programs``: the
    predictions' programs being built (:func:`compile_predictions`), waited for first."""
    data = spec.dataset
    residual0 = spec.residual_model()
    t = time.perf_counter()
    up = _unpack(problem, problem.split(fit.psi), residual0)
    for program in programs:
        program.result()  # the predictions' program, compiled in the background: wait for it
    pred, _ = _solve_rows(rows, up.theta, up.beta, jnp.zeros_like(fit.eta))
    ipred, latent = _solve_rows(rows, up.theta, up.beta, fit.eta)
    predictions = _predictions(spec, fit, up.residual, pred, ipred)
    individual = _individual(spec, problem, fit, up.theta, up.beta, up.residual, objective.patients, latent)
    estimates = _estimates(spec, problem, fit, residual0)
    posterior = _posterior(problem, fit, residual0, declared_factors(problem))
    summaries = None if objective.summaries is None else summary_rows(spec, objective.summaries, fit.psi)
    timing["results_s"] = time.perf_counter() - t
    inference = None
    if isinstance(estimator, Nuts):
        emit({"stage": "nuts", "elapsed_s": time.perf_counter() - start})
        posterior, inference, estimates = _nuts(spec, problem, fit, residual0, objective, estimates, timing, estimator.settings_for(spec))
    timing["total_s"] = time.perf_counter() - start
    cov = np.asarray(fit.covariance, dtype=np.float64)
    return FitResult(
        name=spec.name, spec_text=spec.text, spec_path=str(spec.path), model=spec.model.name, data=spec.data_source,
        psi_names=tuple(fit.psi_names), psi=np.asarray(fit.psi, dtype=np.float64), covariance=cov,
        ofv=float(fit.ofv), aic=float(fit.aic), bic=float(fit.bic),
        condition_number=float(fit.condition_number), condition_number_cor=_condition_cor(cov),
        converged=bool(fit.converged), iterations=int(fit.iterations), history=np.asarray(fit.history, dtype=np.float64),
        n_patients=int(data.n_subjects), n_observations=int(fit.n_observations),
        estimates=estimates, individual=individual, predictions=predictions,
        posterior=posterior, posterior_seed=_POSTERIOR_SEED,
        residual={e.dvid: {"kind": e.kind, "sigma_add": float(up.residual.sigma_add[up.residual.names.index(e.dvid)]),
                           "sigma_prop": float(up.residual.sigma_prop[up.residual.names.index(e.dvid)]),
                           "score_step": float(up.residual.score_step)} for e in spec.errors},
        settings={**{k: _plain(v) for k, v in dataclasses.asdict(spec.optimiser).items()},
                  **{f"sri4_{k}": float(v) for k, v in dataclasses.asdict(spec.sri4).items()},
                  **({f"saem_{k}": _plain(v) for k, v in dataclasses.asdict(estimator.settings_for(spec)).items()} if isinstance(estimator, Saem) else {}),
                  **({f"saem_acceptance_{k}": float(a) for k, a in zip(("population", "walk"), fit.acceptance)} if isinstance(estimator, Saem) else {}),
                  **(_nuts_settings(estimator.settings_for(spec)) if isinstance(estimator, Nuts) else {})},
        timing={k: float(v) for k, v in timing.items()}, version=_version(), estimator=estimator_named(estimator.name), inference=inference,
        trace=None if fit.trace is None else np.asarray(fit.trace, dtype=np.float64), summaries=summaries,
    )  # fmt: skip


def summary_rows(spec: FitSpec, term: SummaryTerm, psi) -> pd.DataFrame:
    """``summaries.csv``: each published summary of the fit file's ``[summaries]`` beside the
    model's statistic at ``psi`` (over the arm's virtual patients), its −2 log-likelihood term
    (their sum is the summaries' part of the OFV) and, for a continuous statistic, its z-score
    (predicted − observed) / SE; ``failed_in_arm`` counts the arm's virtual patients whose solve failed."""
    data = spec.summaries.data
    pred, terms, failed = (np.asarray(x) for x in term.predicted(jnp.asarray(psi)))
    failed_of = dict(zip(term.program.arms, failed.tolist(), strict=True))
    rows = []
    for k, s in enumerate(data.summaries):
        z = (pred[k] - s.value) / s.se if s.se is not None and s.statistic != "proportion_above" else float("nan")
        rows.append({"study": data.studies[k], "arm": s.arm, "observable": s.observable, "time_day": s.time, "statistic": s.statistic,
                     "scale": s.scale, "bound": s.bound or "none", "n": s.n, "observed": s.value, "se": float("nan") if s.se is None else s.se,
                     "predicted": float(pred[k]), "z": float(z), "neg2ll": float(terms[k]), "failed_in_arm": int(failed_of[s.arm])})  # fmt: skip
    return pd.DataFrame(rows)
