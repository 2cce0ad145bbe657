"""il2treg against libroadrunner and scipy in one run: simulation, individual fits, the population
fit, the gradient of the population objective, compile times; ratios and a JSON file.

    .venv/bin/python benchmarks/run.py [--quick] [--json PATH]      # or: make bench (make bench-quick)

- **Simulation** of N virtual patients (``sample_population(seed=0)``) through LUPIL-2, 337 output
  times over 84 days, the same tolerances everywhere (``--rtol``/``--atol``, default il2treg's 1e-6 / 1e-9):
  il2treg ``simulate`` (Tsit5, vmapped, chunks, both cores; compile reported apart, run time from
  a second call); libroadrunner (CVODE) on the model exported by ``il2treg.export_sbml``, loaded
  once, then per patient: set its parameters, reset, simulate (single process, one core);
  scipy LSODA on the NumPy copy of the right-hand side (``benchmarks/simulate.py``). The
  baselines run a sample of patients, timed per patient; every sampled patient is compared with
  il2treg (largest relative difference over all observables and times, see
  :func:`worst_difference`).
- **Individual fits**: MAP estimates of three random effects (``benchmarks/fit.py``'s problem)
  for N simulated trial patients (``simulate_cohort``; 1,000, quick 200): il2treg's batched EBE
  solver for all of them; ``scipy.optimize.least_squares`` around libroadrunner and around scipy
  LSODA (finite-difference Jacobians) for samples of the patients who received every LUPIL-2
  dose; per-patient times, their ratios and the largest difference of the estimates.
- **Population fit** (FOCE-I): il2treg's fit of ``fits/lupil2_virtual`` (quick:
  ``fits/lupil2_nuts``), compile apart. The baselines evaluate the same objective (il2treg's
  likelihood formulas, the ODE solved by libroadrunner or LSODA) the way a tool without
  automatic differentiation must: EBEs by scipy BFGS, sensitivities and the outer gradient by
  finite differences. One objective evaluation and one gradient are measured on a few patients
  and scaled to the cohort and to il2treg's number of iterations: an **estimate** of their fit
  time, printed as such, with the agreement of the per-patient OFV terms at il2treg's optimum.
- **Gradient of the population objective** (FOCE-I, ``il2treg.fit``) for 100 patients of the
  simulated LUPIL-2 cohort at the reference fit's estimates: the exact gradient at converged
  EBEs against the forward simulation of the same 100 patients (same work order and chunks),
  and against the objective value (EBE search included); the gradient of the Bayesian fit's
  joint log density (psi and every eta) at the same point; the gradient (with the information)
  of SAEM's complete-data objective at the same point (``il2treg.fit.saem``); and (not in ``--quick``) the cost of
  one solve with forward sensitivities against the number of ODE copies it carries, which is
  what bounds the FOCE-I gradient (:func:`sensitivity_copies`).

``--quick`` (N = 1,000, 200 individual fits, the small population fit of ``fits/lupil2_nuts``
whose 8 patients also serve the gradient timing, fewer baseline patients) finishes in under 3
minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from simulate import solve_lsoda, timed

import il2treg

TIMES = np.linspace(0.0, 84.0, 337)


def roadrunner_per_patient(model, params, regimen, k: int, rtol: float = 1e-6, atol: float = 1e-9):
    """(seconds per patient, load seconds, outputs [k, times, observables]) with libroadrunner."""
    import roadrunner

    roadrunner.Logger.setLevel(roadrunner.Logger.LOG_ERROR)
    start = time.perf_counter()
    rr = roadrunner.RoadRunner(il2treg.export_sbml(model, il2treg.Parameters(params.values[0], params.names), regimen))
    load_s = time.perf_counter() - start
    rr.integrator.relative_tolerance = rtol
    rr.integrator.absolute_tolerance = atol
    rr.integrator.maximum_num_steps = 100_000
    names = list(params.names)
    values = np.asarray(params.values)
    out = np.empty((k, len(TIMES), len(il2treg.OBSERVABLE_NAMES)))
    selections = ["time", *il2treg.OBSERVABLE_NAMES]
    start = time.perf_counter()
    for i in range(k):
        for n, v in zip(names, values[i]):
            rr.setValue(n, float(v))
        rr.reset()
        out[i] = np.asarray(rr.simulate(times=list(TIMES), selections=selections))[:, 1:]
    return (time.perf_counter() - start) / k, load_s, out


def scipy_per_patient(model, params, regimen, k: int, rtol: float = 1e-6, atol: float = 1e-9):
    values = np.asarray(params.values)
    out = np.empty((k, len(TIMES), len(il2treg.OBSERVABLE_NAMES)))
    start = time.perf_counter()
    for i in range(k):
        out[i], _ = solve_lsoda(values[i], model.parameter_names, np.asarray(regimen.times), np.asarray(regimen.amounts), TIMES, rtol=rtol, atol=atol)
    return (time.perf_counter() - start) / k, out


def fits_random() -> tuple[str, ...]:
    from fit import RANDOM

    return RANDOM


def worst_difference(mine, theirs) -> float:
    """Largest relative difference, each value measured against max(|value|, 1e-3 x the largest
    |value| of that observable in that patient): latent SLEDAI can pass through 0, where a plain
    relative difference is meaningless (one patient of 200: 0.00088 points, 5.7e-7 apart)."""
    floor = 1e-3 * np.max(np.abs(mine), axis=-2, keepdims=True)
    return float(np.max(np.abs(theirs - mine) / np.maximum(np.abs(mine), floor)))


def best(fn, repeats: int = 5) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn`` (compiled already): single calls of
    0.1-0.3 s varied by up to 1.5x between runs on this 2-core machine."""
    return min(timed(fn)[1] for _ in range(repeats))


def objective_gradient(n_patients: int = 100, fitted=None, copies: bool = True) -> dict:
    """Times of the forward simulation, the objective (with its EBE search) and its exact gradient:
    100 patients of the reference cohort at the reference fit's estimates, or (``fitted``, quick
    mode) the objective and estimates of :func:`population_fit`, whose compiled code it reuses.

    Also, at the same point: the gradient of the joint log density of the Bayesian fit (every
    entry of psi and every patient's eta; first-order sensitivities only), and (``copies``) what
    the exact FOCE-I gradient is made of: the cost of one solve with forward sensitivities as a
    function of the number of ODE copies it carries (:func:`sensitivity_copies`).
    """
    from il2treg.data import read_dataset
    from il2treg.fit import read_fit_spec
    from il2treg.fit.assemble import patient_theta, predict_all
    from il2treg.fit.bayes import eta_variances, make_target
    from il2treg.fit.population import Objective
    from il2treg.fit.priors import sampling_priors
    from il2treg.fit.problem import patient_arrays, predict, unpack

    if fitted is None:
        result = il2treg.load_fit("fits/lupil2_virtual/results")
        spec = read_fit_spec("fits/lupil2_virtual/fit.toml")
        ids = list(spec.dataset.ids)[:n_patients]
        frame = spec.dataset.to_frame()
        spec = dataclasses.replace(spec, dataset=read_dataset(frame[frame["ID"].isin(ids)].reset_index(drop=True)))
        problem = spec.problem()
        objective = Objective(problem, patient_arrays(spec.dataset, problem.covariates), spec.residual_model())
        psi = jnp.asarray(result.psi)
    else:
        spec, objective, psi = fitted
        problem = objective.problem
    patients = objective.patients
    batch = Objective.batch_size  # the objective's chunk of patients
    up = unpack(problem, problem.split(psi), spec.residual_model())
    eta0 = jnp.zeros((spec.dataset.n_subjects, problem.n_eta))
    include = jnp.ones(spec.dataset.n_subjects, dtype=bool)
    inner_fn, value_fn, grad_fn = objective.inner, objective.value, objective.gradient
    out = {}
    inner, first, comp = timed(lambda: inner_fn(psi, eta0))
    second = best(lambda: inner_fn(psi, eta0))
    out["inner"] = {"compile_s": comp, "first_s": first, "run_s": second}
    # The forward simulation of the same patients at the same (individual) parameters as the
    # gradient, in the same work order and chunks as the objective.
    forward = jax.jit(lambda eta: predict_all(problem, up.theta, up.beta, eta, patients, batch_size=batch)[0])
    _, first, comp = timed(lambda: forward(inner.eta))
    second = best(lambda: forward(inner.eta))
    out["forward"] = {"compile_s": comp, "first_s": first, "run_s": second, "batch_size": batch}
    # The same forward simulation chunked in data order (no il2treg.simulate.work_order): what
    # putting placebo and treated patients in separate chunks saves.
    one = lambda args: predict(problem, patient_theta(problem, up.theta, up.beta, args[0], args[1]), args[1])[0]
    data_order = jax.jit(lambda eta: jax.lax.map(one, (eta, patients), batch_size=batch))
    _, first, comp = timed(lambda: data_order(inner.eta))
    second = best(lambda: data_order(inner.eta))
    out["forward_data_order"] = {"compile_s": comp, "first_s": first, "run_s": second}
    _, first, comp = timed(lambda: value_fn(psi, inner, include))
    second = best(lambda: value_fn(psi, inner, include))
    out["value_at_ebes"] = {"compile_s": comp, "first_s": first, "run_s": second}
    _, first, comp = timed(lambda: grad_fn(psi, inner.eta, include))
    second = best(lambda: grad_fn(psi, inner.eta, include))
    out["gradient"] = {"compile_s": comp, "first_s": first, "run_s": second}
    out["n_patients"] = spec.dataset.n_subjects
    out["gradient_over_forward"] = out["gradient"]["run_s"] / out["forward"]["run_s"]
    out["gradient_over_objective"] = out["gradient"]["run_s"] / (out["inner"]["run_s"] + out["value_at_ebes"]["run_s"])
    # The Bayesian fit's target at the same point: log p(psi, eta, y) and its gradient.
    target = make_target(problem, patients, spec.residual_model(), sampling_priors(problem, psi), include,
                         eta_variances(inner, up.random_effects), up.omega, threshold=0.5)  # fmt: skip
    position = {"psi": psi, "z": target.to_coordinates(psi, inner.eta)}
    joint = jax.jit(jax.value_and_grad(lambda pos, tgt: tgt.log_density(pos)))
    _, first, comp = timed(lambda: joint(position, target))
    second = best(lambda: joint(position, target))
    n_joint = psi.size + inner.eta.size
    out["joint_gradient"] = {"compile_s": comp, "first_s": first, "run_s": second, "n_parameters": int(n_joint),
                             "over_forward": second / out["forward"]["run_s"]}  # fmt: skip
    # SAEM's population objective, the complete-data -2 log p(y, phi; psi), at the same point
    # (phi = log individual parameters at the EBEs): its gradient with the information
    # (il2treg.fit.saem.complete_score), and the forward solve of its E-step in the same chunks.
    from il2treg.fit.complete import log_typical

    phi = log_typical(problem, psi, patients) + inner.eta
    _, first, comp = timed(lambda: objective.data_terms(psi, phi))
    second = best(lambda: objective.data_terms(psi, phi))
    out["saem_forward"] = {"compile_s": comp, "first_s": first, "run_s": second}
    _, first, comp = timed(lambda: objective.complete_scores(psi, phi))
    second = best(lambda: objective.complete_scores(psi, phi))
    out["saem_gradient"] = {"compile_s": comp, "first_s": first, "run_s": second, "over_forward": second / out["forward"]["run_s"],
                            "over_saem_forward": second / out["saem_forward"]["run_s"]}  # fmt: skip
    if copies:
        out["copies"] = sensitivity_copies(problem, up, inner.eta, patients, batch)
        out["copies"]["over_forward_at_distinct"] = out["copies"]["cost_at_distinct_s"] / out["forward"]["run_s"]
    return out


def sensitivity_copies(problem, up, eta, patients, batch: int) -> dict:
    r"""Seconds of one solve of every patient (work order, chunks of ``batch``) with forward
    sensitivities in the fit's directions, against the number of ODE copies (primal and tangents)
    it carries: :func:`il2treg.fit.problem.expand` with first-order directions ``F`` (none, the
    random effects the ODE reads, all varied parameters it reads) and second-order ones ``S``
    (none or those random effects), :math:`(1 + |F|)(1 + |S|)` copies. A least-squares line
    gives the cost per copy; the exact FOCE-I gradient needs
    :math:`1 + |F| + |S||F| - |S|(|S|-1)/2` distinct copies (the nested forward mode computes
    :math:`|S|(|S|+1)/2` of them twice)."""
    from il2treg.fit.assemble import patient_theta
    from il2treg.fit.problem import expand
    from il2treg.simulate import ordered_map, work_order

    varied, random = problem.ode_varied, problem.ode_random
    order = work_order(patients.dose_amount)
    rows = []
    for first, second in (((), ()), (random, ()), (varied, ()), (random, random), (varied, random)):
        def one(args, first=first, second=second):
            ex = expand(problem, patient_theta(problem, up.theta, up.beta, args[0], args[1]), args[1], first, second)
            return tuple(x for x in (ex.states, ex.d1, ex.d2) if x.size)  # lax.map cannot batch empty arrays

        solve = jax.jit(lambda eta, one=one: ordered_map(one, (eta, patients), order, batch))
        _, _, comp = timed(lambda solve=solve: solve(eta))
        _, second_s, _ = timed(lambda solve=solve: solve(eta))
        rows.append({"first": len(first), "second": len(second), "copies": (1 + len(first)) * (1 + len(second)), "run_s": second_s, "compile_s": comp})
    n_copies = np.asarray([r["copies"] for r in rows], dtype=float)
    seconds = np.asarray([r["run_s"] for r in rows])
    per_copy, base = np.polyfit(n_copies, seconds, 1)
    f, s = len(varied), len(random)
    distinct = 1 + f + s * f - s * (s - 1) // 2
    return {"solves": rows, "per_copy_s": float(per_copy), "base_s": float(base), "distinct_copies": distinct,
            "computed_copies": (1 + f) * (1 + s), "cost_at_distinct_s": float(base + per_copy * distinct)}  # fmt: skip


def individual_fits(n: int, k_rr: int, k_scipy: int, seed: int = 11) -> dict:
    """MAP estimates of three random effects for ``n`` simulated trial patients: il2treg (all)
    against least_squares around libroadrunner and around scipy LSODA (samples of patients)."""
    from fit import RANDOM, SIGMA, USE, scipy_map
    from scipy.optimize import least_squares

    from il2treg.data import read_dataset
    from il2treg.datasets import simulate_cohort
    from il2treg.fit import Objective, make_problem, patient_arrays
    from il2treg.fit.population import make_parallel
    from il2treg.likelihood import ResidualModel

    model = il2treg.load_model()
    data = read_dataset(simulate_cohort(n, seed))
    problem = make_problem(model, data, fixed=(), random=RANDOM, sigmas=(), residual_kinds=dict.fromkeys(USE, "log"))
    residual = ResidualModel.build(dict.fromkeys(USE, "log"), dict.fromkeys(USE, (SIGMA, 0.0)))
    objective = make_parallel(Objective(problem, patient_arrays(data, use=USE), residual))
    omega = np.array([model.spec[name].omega for name in RANDOM])
    psi, eta0 = jnp.asarray(np.log(omega)), jnp.zeros((n, len(RANDOM)))
    inner, first, comp = timed(lambda: objective.inner(psi, eta0))
    inner, second, _ = timed(lambda: objective.inner(psi, eta0))
    mine = np.asarray(inner.eta)

    # Baselines on patients who received every LUPIL-2 dose (one exported SBML serves them all).
    regimen = il2treg.regimen.lupil2()
    full = [i for i in range(n) if np.array_equal(np.asarray(data.dose_time[i]), np.asarray(regimen.times))
            and np.array_equal(np.asarray(data.dose_amount[i]), np.asarray(regimen.amounts))]  # fmt: skip
    use = np.isin(np.asarray(data.obs_dvid), [il2treg.OBSERVABLE_NAMES.index(d) for d in USE]) & np.asarray(data.obs_mask)
    names = list(model.parameter_names)
    theta0 = np.asarray(model.typical().values)
    idx = [names.index(name) for name in RANDOM]

    import roadrunner

    roadrunner.Logger.setLevel(roadrunner.Logger.LOG_ERROR)
    rr = roadrunner.RoadRunner(il2treg.export_sbml(model, model.typical(), regimen))
    rr.integrator.relative_tolerance, rr.integrator.absolute_tolerance, rr.integrator.maximum_num_steps = 1e-6, 1e-9, 100_000

    def rr_map(i):
        m = use[i]
        times, where = np.unique(np.asarray(data.obs_time[i])[m], return_inverse=True)
        grid = np.concatenate([[0.0], times]) if times[0] > 0 else times
        shift = grid.size - times.size
        dvid, obs = np.asarray(data.obs_dvid[i])[m], np.asarray(data.obs_value[i])[m]
        selections = ["time", *il2treg.OBSERVABLE_NAMES]

        def residuals(eta):
            theta = theta0.copy()
            theta[idx] *= np.exp(eta)
            for name, v in zip(names, theta):
                rr.setValue(name, float(v))
            rr.reset()
            values = np.asarray(rr.simulate(times=list(grid), selections=selections))[shift:, 1:]
            return np.concatenate([(np.log(obs) - np.log(values[where, dvid])) / SIGMA, eta / omega])

        start = time.perf_counter()
        sol = least_squares(residuals, np.zeros(len(RANDOM)), method="trf", diff_step=1e-4, xtol=1e-10, ftol=1e-10)
        return sol.x, time.perf_counter() - start

    rr_runs = [rr_map(i) for i in full[:k_rr]]
    sp_runs = []
    for i in full[:k_scipy]:
        m = use[i]
        eta, secs, _ = scipy_map(model, omega, np.asarray(data.dose_time[i]), np.asarray(data.dose_amount[i]),
                                 np.asarray(data.obs_time[i])[m], np.asarray(data.obs_dvid[i])[m], np.asarray(data.obs_value[i])[m])  # fmt: skip
        sp_runs.append((eta, secs))
    out = {"n_patients": n, "il2treg_ms_per_patient": 1e3 * second / n, "il2treg_compile_s": comp, "il2treg_first_call_s": first,
           "il2treg_converged": int(np.sum(np.asarray(inner.status) == 0)),
           "roadrunner_patients": len(rr_runs), "roadrunner_ms_per_patient": 1e3 * float(np.mean([r[1] for r in rr_runs])),
           "scipy_patients": len(sp_runs), "scipy_ms_per_patient": 1e3 * float(np.mean([r[1] for r in sp_runs])),
           "max_abs_eta_diff_roadrunner": float(max(np.max(np.abs(r[0] - mine[i])) for r, i in zip(rr_runs, full))),
           "max_abs_eta_diff_scipy": float(max(np.max(np.abs(r[0] - mine[i])) for r, i in zip(sp_runs, full)))}  # fmt: skip
    out["ratio_roadrunner"] = out["roadrunner_ms_per_patient"] / out["il2treg_ms_per_patient"]
    out["ratio_scipy"] = out["scipy_ms_per_patient"] / out["il2treg_ms_per_patient"]
    return out


class _Engine:
    """Predictions of one patient's observation rows by libroadrunner or scipy LSODA."""

    def __init__(self, kind: str, model):
        self.kind, self.model, self._rr = kind, model, {}
        self.names = list(model.parameter_names)

    def _runner(self, dose_time, dose_amount):
        import roadrunner

        key = (tuple(dose_time), tuple(dose_amount))
        if key not in self._rr:
            roadrunner.Logger.setLevel(roadrunner.Logger.LOG_ERROR)
            rr = roadrunner.RoadRunner(il2treg.export_sbml(self.model, self.model.typical(), il2treg.Regimen(np.asarray(dose_time), np.asarray(dose_amount))))
            rr.integrator.relative_tolerance, rr.integrator.absolute_tolerance, rr.integrator.maximum_num_steps = 1e-6, 1e-9, 100_000
            self._rr[key] = rr
        return self._rr[key]

    def prepare(self, patient) -> None:
        """Load what a patient needs (libroadrunner compiles a model per regimen): not timed."""
        if self.kind == "roadrunner":
            self._runner(patient["dose_time"], patient["dose_amount"])

    def predict(self, theta, patient) -> np.ndarray:
        times, where, dvid = patient["times"], patient["where"], patient["dvid"]
        if self.kind == "roadrunner":
            rr = self._runner(patient["dose_time"], patient["dose_amount"])
            for name, v in zip(self.names, theta):
                rr.setValue(name, float(v))
            rr.reset()
            grid = np.concatenate([[0.0], times]) if times[0] > 0 else times
            values = np.asarray(rr.simulate(times=list(grid), selections=["time", *il2treg.OBSERVABLE_NAMES]))[grid.size - times.size :, 1:]
        else:
            values, _ = solve_lsoda(theta, self.model.parameter_names, patient["dose_time"], patient["dose_amount"], times)
        return values[where, dvid]


def population_fit(spec_path: str, k_baseline: int) -> dict:
    """A population (FOCE-I) fit with il2treg, timed; the same objective with the ODE solved by
    libroadrunner or scipy LSODA (EBEs by scipy BFGS, sensitivities and the outer gradient by
    finite differences, the standard way without AD): one objective evaluation and one
    finite-difference gradient measured on ``k_baseline`` patients, scaled to the cohort and to
    il2treg's number of iterations (an estimate, said so in the output)."""
    from scipy.optimize import minimize

    from il2treg.fit import read_fit_spec
    from il2treg.fit.assemble import initial_psi, make_objective
    from il2treg.fit.estimate import fit_population
    from il2treg.fit.population import _bracket
    from il2treg.fit.problem import (
        covariate_theta,
        data_neg2ll,
        individual_theta,
        unpack,
    )

    spec = read_fit_spec(spec_path)
    problem = spec.problem()
    res0 = spec.residual_model()
    objective = make_objective(spec, problem)
    psi0 = initial_psi(spec, problem, res0)
    fit, first, comp = timed(lambda: fit_population(objective, psi0, max_iter=spec.optimiser.max_iter, ftol=spec.optimiser.ftol, gtol=spec.optimiser.gtol, covariance=False))
    fit, second, _ = timed(lambda: fit_population(objective, psi0, max_iter=spec.optimiser.max_iter, ftol=spec.optimiser.ftol, gtol=spec.optimiser.gtol, covariance=False))
    n, n_psi = spec.dataset.n_subjects, len(psi0)
    out = {"spec": spec_path, "n_patients": n, "n_psi": n_psi, "il2treg_s": second, "il2treg_compile_s": comp, "il2treg_first_call_s": first,
           "iterations": int(fit.iterations), "ofv": float(fit.ofv), "converged": bool(fit.converged)}  # fmt: skip

    pats = objective.patients
    one = lambda i: jax.tree_util.tree_map(lambda x: x[i], pats)
    @jax.jit
    def L_fn(psi, pred, jac, eta, pat):  # the patient's OFV term (il2treg's formula)
        up = unpack(problem, problem.split(psi), res0)
        return _bracket(up.residual, up.random_effects, pred, jac, eta, pat)[0]

    @jax.jit
    def g_fn(psi, pred, eta, pat):  # the EBE objective
        up = unpack(problem, problem.split(psi), res0)
        return data_neg2ll(up.residual, pred, pat) + jnp.sum(eta**2 / up.omega**2)
    model = problem.model

    def rows(i):
        pat = one(i)
        times, where = np.unique(np.asarray(pat.obs_time), return_inverse=True)
        return {"times": times, "where": where, "dvid": np.asarray(pat.obs_dvid), "pat": pat,
                "dose_time": np.asarray(pat.dose_time), "dose_amount": np.asarray(pat.dose_amount)}  # fmt: skip

    def patient_term(engine, psi, patient, eta_start):
        up = unpack(problem, problem.split(psi), res0)
        base = covariate_theta(problem, up.theta, up.beta, patient["pat"].covariates)
        pred_of = lambda e: engine.predict(np.asarray(individual_theta(problem, base, jnp.asarray(e))), patient)
        g = lambda e: float(g_fn(psi, pred_of(e), jnp.asarray(e), patient["pat"]))
        eta = minimize(g, eta_start, method="BFGS", options={"gtol": 1e-6}).x
        h = 1e-4
        jac = np.stack([(pred_of(eta + h * e) - pred_of(eta - h * e)) / (2 * h) for e in np.eye(len(eta))], axis=1)
        return float(L_fn(psi, jnp.asarray(pred_of(eta)), jnp.asarray(jac), jnp.asarray(eta), patient["pat"])), eta

    eta_hat = np.asarray(fit.eta)
    inner_hat = objective.inner(fit.psi, fit.eta)
    for kind in ("roadrunner", "scipy"):
        engine = _Engine(kind, model)
        sample = [rows(i) for i in range(min(k_baseline, n))]
        for patient in sample:
            engine.prepare(patient)
        start = time.perf_counter()
        terms = [patient_term(engine, fit.psi, p, np.zeros(problem.n_eta)) for p in sample]
        evaluation = (time.perf_counter() - start) / len(sample)
        start = time.perf_counter()
        step = 1e-4
        for k in range(n_psi):
            for i, p in enumerate(sample):
                patient_term(engine, fit.psi.at[k].add(step), p, eta_hat[i])
        gradient = (time.perf_counter() - start) / len(sample)
        mine = [float(L_fn(fit.psi, inner_hat.pred[i], inner_hat.jac[i], inner_hat.eta[i], one(i))) for i in range(len(sample))]
        per_iteration = n * (evaluation + gradient)
        out[kind] = {"patients": len(sample), "objective_s_per_patient": evaluation, "fd_gradient_s_per_patient": gradient,
                     "estimated_fit_s": per_iteration * max(out["iterations"], 1),
                     "max_abs_ofv_term_diff": float(np.max(np.abs(np.asarray([t[0] for t in terms]) - np.asarray(mine))))}  # fmt: skip
        out[kind]["ratio"] = out[kind]["estimated_fit_s"] / second
    return out, (spec, objective, fit.psi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 1,000 only, fewer baseline patients (under 3 minutes)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rtol", type=float, default=1e-6, help="relative tolerance of every engine")
    ap.add_argument("--atol", type=float, default=1e-9, help="absolute tolerance of every engine")
    args = ap.parse_args()
    model = il2treg.load_model()
    options = il2treg.SolverOptions(rtol=args.rtol, atol=args.atol)
    regimen = il2treg.regimen.lupil2()
    sizes = (1000,) if args.quick else (1000, 10_000)
    k_rr, k_scipy = (20, 5) if args.quick else (200, 20)
    report = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform}", "jax": jax.__version__,
              "rtol": args.rtol, "atol": args.atol, "simulation": {}}  # fmt: skip
    population = il2treg.sample_population(model, max(sizes), seed=0)
    rr_s, rr_load, rr_out = roadrunner_per_patient(model, population, regimen, k_rr, args.rtol, args.atol)
    sp_s, sp_out = scipy_per_patient(model, population, regimen, k_scipy, args.rtol, args.atol)
    reference = np.asarray(il2treg.simulate(model, regimen, TIMES, il2treg.Parameters(population.values[:k_rr], population.names),
                                            options=il2treg.SolverOptions(rtol=1e-10, atol=1e-13, max_steps=100_000)).values)  # fmt: skip
    report["error_vs_rtol_1e-10_reference"] = {"roadrunner": worst_difference(reference, rr_out)}
    for n in sizes:
        params = il2treg.Parameters(population.values[:n], population.names)
        run = lambda params=params: il2treg.simulate(model, regimen, TIMES, params, options=options)
        sim, first, comp = timed(run)
        sim, second, _ = timed(run)
        mine = np.asarray(sim.values)
        row = {"il2treg_ms_per_patient": 1e3 * second / n, "il2treg_compile_s": comp, "il2treg_first_call_s": first,
               "roadrunner_ms_per_patient": 1e3 * rr_s, "roadrunner_load_s": rr_load, "roadrunner_patients": k_rr,
               "scipy_ms_per_patient": 1e3 * sp_s, "scipy_patients": k_scipy,
               "max_rel_diff_roadrunner": worst_difference(mine[:k_rr], rr_out), "max_rel_diff_scipy": worst_difference(mine[:k_scipy], sp_out),
               "failed": int((np.asarray(sim.status) != 0).sum())}  # fmt: skip
        row["ratio_roadrunner"] = row["roadrunner_ms_per_patient"] / row["il2treg_ms_per_patient"]
        row["ratio_scipy"] = row["scipy_ms_per_patient"] / row["il2treg_ms_per_patient"]
        report["simulation"][str(n)] = row
        report["error_vs_rtol_1e-10_reference"]["il2treg"] = worst_difference(reference, mine[:k_rr])
        print(f"N = {n:>6}: il2treg {row['il2treg_ms_per_patient']:.3f} ms/patient (compile {comp:.1f} s) | libroadrunner "
              f"{row['roadrunner_ms_per_patient']:.2f} ms/patient, ratio {row['ratio_roadrunner']:.1f} (max rel. diff {row['max_rel_diff_roadrunner']:.1e}) | "
              f"scipy LSODA {row['scipy_ms_per_patient']:.1f} ms/patient, ratio {row['ratio_scipy']:.0f} (max rel. diff {row['max_rel_diff_scipy']:.1e})", flush=True)  # fmt: skip
    err = report["error_vs_rtol_1e-10_reference"]
    print(f"error against an il2treg solve at rtol 1e-10 (first {k_rr} patients): libroadrunner {err['roadrunner']:.1e}, il2treg {err['il2treg']:.1e}")
    fits = individual_fits(200 if args.quick else 1000, 3 if args.quick else 20, 2 if args.quick else 10)
    report["individual_fits"] = fits
    print(f"individual fits (MAP of {', '.join(fits_random())}), {fits['n_patients']} patients: il2treg {fits['il2treg_ms_per_patient']:.2f} ms/patient "
          f"(compile {fits['il2treg_compile_s']:.1f} s, {fits['il2treg_converged']} converged) | libroadrunner + least_squares "
          f"{fits['roadrunner_ms_per_patient']:.0f} ms/patient, ratio {fits['ratio_roadrunner']:.0f} (max |eta diff| {fits['max_abs_eta_diff_roadrunner']:.1e}, "
          f"{fits['roadrunner_patients']} patients) | scipy LSODA + least_squares {fits['scipy_ms_per_patient']:.0f} ms/patient, ratio {fits['ratio_scipy']:.0f} "
          f"(max |eta diff| {fits['max_abs_eta_diff_scipy']:.1e}, {fits['scipy_patients']} patients)", flush=True)  # fmt: skip
    pop, fitted = population_fit("fits/lupil2_nuts/fit.toml" if args.quick else "fits/lupil2_virtual/fit.toml", 1 if args.quick else 3)
    report["population_fit"] = pop
    print(f"population fit (FOCE-I) {pop['spec']}: {pop['n_patients']} patients, {pop['n_psi']} parameters: il2treg {pop['il2treg_s']:.1f} s "
          f"({pop['iterations']} iterations, compile {pop['il2treg_compile_s']:.1f} s)", flush=True)  # fmt: skip
    for kind, label in (("roadrunner", "libroadrunner"), ("scipy", "scipy LSODA")):
        b = pop[kind]
        print(f"  {label} + scipy BFGS EBEs + finite differences: objective {b['objective_s_per_patient']:.2f} s/patient, FD gradient "
              f"{b['fd_gradient_s_per_patient']:.2f} s/patient (measured on {b['patients']}), estimated fit {b['estimated_fit_s']:.0f} s = "
              f"{b['ratio']:.0f}x il2treg; OFV terms agree to {b['max_abs_ofv_term_diff']:.1e}", flush=True)  # fmt: skip
    g = objective_gradient(100, fitted if args.quick else None, copies=not args.quick)
    report["objective_gradient"] = g
    print(f"population objective, {g['n_patients']} patients: forward simulation {g['forward']['run_s']:.3f} s "
          f"({g['forward_data_order']['run_s']:.3f} s in data order), EBE search {g['inner']['run_s']:.2f} s, "
          f"objective at EBEs {g['value_at_ebes']['run_s']:.3f} s, exact gradient {g['gradient']['run_s']:.3f} s "
          f"(compile {g['gradient']['compile_s']:.1f} s): gradient / forward simulation = {g['gradient_over_forward']:.1f}, "
          f"gradient / objective = {g['gradient_over_objective']:.2f}")  # fmt: skip
    j = g["joint_gradient"]
    print(f"  joint log density of the Bayesian fit ({j['n_parameters']} parameters: psi and every eta) with its gradient "
          f"{j['run_s']:.3f} s (compile {j['compile_s']:.1f} s) = {j['over_forward']:.1f}x the forward simulation")  # fmt: skip
    sg = g["saem_gradient"]
    print(f"  SAEM complete-data objective: gradient and information {sg['run_s']:.3f} s (compile {sg['compile_s']:.1f} s) = "
          f"{sg['over_forward']:.1f}x the forward simulation ({sg['over_saem_forward']:.1f}x SAEM's own forward solve, "
          f"{g['saem_forward']['run_s']:.3f} s)")  # fmt: skip
    if "copies" in g:
        c = g["copies"]
        table = ", ".join(f"{r['copies']} copies {r['run_s']:.3f} s" for r in c["solves"])
        print(f"  one solve with forward sensitivities: {table}; line {c['base_s']:.3f} s + {c['per_copy_s']:.4f} s per copy; "
              f"the exact FOCE-I gradient needs {c['distinct_copies']} distinct copies ({c['computed_copies']} computed), "
              f"{c['over_forward_at_distinct']:.1f}x the forward simulation at that cost per copy")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
