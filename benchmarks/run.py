"""il2treg against libroadrunner and scipy in one run: simulation, gradient of the population
objective, compile times; a table of ratios and a JSON file.

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
- **Gradient of the population objective** (FOCE-I, ``il2treg.fit``) for 100 patients of the
  simulated LUPIL-2 cohort at the reference fit's estimates: the exact gradient at converged
  EBEs against the forward simulation of the same 100 patients, and against the objective value
  (EBE search included).

``--quick`` (N = 1,000, fewer baseline patients) finishes in under 3 minutes on 2 cores.
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
from simulate import solve_lsoda, timed  # noqa: E402

import il2treg  # noqa: E402

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
        out[i], _ = solve_lsoda(values[i], model.parameter_names, model.structure, np.asarray(regimen.times), np.asarray(regimen.amounts), TIMES, rtol=rtol, atol=atol)
    return (time.perf_counter() - start) / k, out


def worst_difference(mine, theirs) -> float:
    """Largest relative difference, each value measured against max(|value|, 1e-3 x the largest
    |value| of that observable in that patient): latent SLEDAI can pass through 0, where a plain
    relative difference is meaningless (one patient of 200: 0.00088 points, 5.7e-7 apart)."""
    floor = 1e-3 * np.max(np.abs(mine), axis=-2, keepdims=True)
    return float(np.max(np.abs(theirs - mine) / np.maximum(np.abs(mine), floor)))


def objective_gradient(n_patients: int = 100) -> dict:
    """Times of the forward simulation, the objective (with its EBE search) and its exact gradient."""
    from il2treg.data import read_dataset
    from il2treg.fit import read_fit_spec
    from il2treg.fit.population import Objective
    from il2treg.fit.problem import patient_arrays, unpack
    from il2treg.fit.run import _predict_all

    result = il2treg.load_fit("fits/lupil2_virtual/results")
    spec = read_fit_spec("fits/lupil2_virtual/fit.toml")
    ids = list(spec.dataset.ids)[:n_patients]
    frame = spec.dataset.to_frame()
    spec = dataclasses.replace(spec, dataset=read_dataset(frame[frame["ID"].isin(ids)].reset_index(drop=True)))
    problem = spec.problem()
    patients = patient_arrays(spec.dataset, problem.covariates)
    objective = Objective(problem, patients, spec.residual_model())
    psi = jnp.asarray(result.psi)
    up = unpack(problem, psi, spec.residual_model())
    eta0 = jnp.zeros((spec.dataset.n_subjects, problem.n_eta))
    include = jnp.ones(spec.dataset.n_subjects, dtype=bool)
    forward = lambda: _predict_all(problem, up.theta, up.beta, eta0, patients)[0]
    inner_fn, value_fn, grad_fn = objective.inner, objective.value, objective.gradient  # each an equinox filter_jit
    out = {}
    for label, fn in (("forward", forward), ("inner", lambda: inner_fn(psi, eta0))):
        _, first, comp = timed(fn)
        _, second, _ = timed(fn)
        out[label] = {"compile_s": comp, "first_s": first, "run_s": second}
    inner = inner_fn(psi, eta0)
    _, first, comp = timed(lambda: value_fn(psi, inner, include))
    _, second, _ = timed(lambda: value_fn(psi, inner, include))
    out["value_at_ebes"] = {"compile_s": comp, "first_s": first, "run_s": second}
    _, first, comp = timed(lambda: grad_fn(psi, inner.eta, include))
    _, second, _ = timed(lambda: grad_fn(psi, inner.eta, include))
    out["gradient"] = {"compile_s": comp, "first_s": first, "run_s": second}
    out["n_patients"] = spec.dataset.n_subjects
    out["gradient_over_forward"] = out["gradient"]["run_s"] / out["forward"]["run_s"]
    out["gradient_over_objective"] = out["gradient"]["run_s"] / (out["inner"]["run_s"] + out["value_at_ebes"]["run_s"])
    return out


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
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
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
        sim, first, comp = timed(lambda: il2treg.simulate(model, regimen, TIMES, params, options=options))
        sim, second, _ = timed(lambda: il2treg.simulate(model, regimen, TIMES, params, options=options))
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
    g = objective_gradient(100)
    report["objective_gradient"] = g
    print(f"population objective, {g['n_patients']} patients: forward simulation {g['forward']['run_s']:.3f} s, EBE search {g['inner']['run_s']:.2f} s, "
          f"objective at EBEs {g['value_at_ebes']['run_s']:.3f} s, exact gradient {g['gradient']['run_s']:.3f} s "
          f"(compile {g['gradient']['compile_s']:.1f} s): gradient / forward simulation = {g['gradient_over_forward']:.1f}, "
          f"gradient / objective = {g['gradient_over_objective']:.2f}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
