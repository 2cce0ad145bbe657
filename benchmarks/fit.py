"""Individual fits (empirical Bayes / MAP): il2treg against scipy least_squares + solve_ivp.

Both solve the same problem for each patient of the simulated LUPIL-2 cohort: the MAP estimate of
the random effects (emax_treg, treg0, tconv0) with the population parameters at the model file's
values, from Treg and Tconv counts and CD25 with an additive error on the log scale (so the MAP
objective is a sum of squares, which is what least_squares minimises):

    r(eta) = [ (log y - log f(eta)) / sigma ,  eta / omega ]

il2treg: vmapped structured Gauss-Newton with forward sensitivities in the ODE directions only
(il2treg.fit.individual), all 100 patients, chunked and shared over the CPU threads. scipy: least_squares (trf, diff_step 1e-4, see GOTCHAS)
around solve_ivp(LSODA) with the NumPy right-hand side of benchmarks/simulate.py, for a sample of
patients. Same tolerances (rtol 1e-6, atol 1e-9). Prints per-patient times, their ratio (target:
il2treg >= 30x faster), compile time separately, and the agreement of the estimates.

Usage: python benchmarks/fit.py [--quick] [--n-scipy K] [--json PATH]
"""

from __future__ import annotations

import argparse
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
from scipy.optimize import least_squares

sys.path.insert(0, str(Path(__file__).parent))
from simulate import solve_lsoda  # benchmarks/simulate.py: the checked NumPy RHS

import il2treg
from il2treg.data import read_dataset
from il2treg.datasets import lupil2_virtual
from il2treg.fit import Objective, make_problem, patient_arrays
from il2treg.fit.population import ThreadedObjective
from il2treg.likelihood import ResidualModel
from il2treg.observables import OBSERVABLE_NAMES

RANDOM = ("emax_treg", "treg0", "tconv0")
USE = ("treg_per_uL", "tconv_per_uL", "cd25_treg_rel")
SIGMA = 0.1  # log-scale SD, the cohort's assay CVs (about 10%)


def scipy_map(model, omega, dose_time, dose_amount, obs_time, obs_dvid, obs_value):
    """MAP of eta for one patient with least_squares around LSODA; (eta, seconds, nfev)."""
    names = model.parameter_names
    theta0 = np.asarray(model.typical().values)
    idx = [names.index(n) for n in RANDOM]
    times, where = np.unique(obs_time, return_inverse=True)

    def residuals(eta):
        theta = theta0.copy()
        theta[idx] *= np.exp(eta)
        values, _ = solve_lsoda(theta, names, dose_time, dose_amount, times)
        f = values[where, obs_dvid]
        return np.concatenate([(np.log(obs_value) - np.log(f)) / SIGMA, eta / omega])

    start = time.perf_counter()
    sol = least_squares(residuals, np.zeros(len(RANDOM)), method="trf", diff_step=1e-4, xtol=1e-10, ftol=1e-10)
    # nfev counts residual calls outside the finite-difference Jacobian; each Jacobian costs len(x) more
    return sol.x, time.perf_counter() - start, sol.nfev + sol.njev * len(sol.x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer scipy patients")
    parser.add_argument("--n-scipy", type=int, default=None, help="patients fitted with scipy (default 10, quick 4)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args()
    n_scipy = args.n_scipy or (4 if args.quick else 10)

    model = il2treg.load_model()
    data = read_dataset(lupil2_virtual())
    problem = make_problem(model, data, fixed=(), random=RANDOM, sigmas=(), residual_kinds=dict.fromkeys(USE, "log"))
    residual = ResidualModel.build(dict.fromkeys(USE, "log"), dict.fromkeys(USE, (SIGMA, 0.0)))
    objective = ThreadedObjective(Objective(problem, patient_arrays(data, use=USE), residual))
    omega = np.array([model.spec[n].omega for n in RANDOM])
    psi = jnp.asarray(np.log(omega))
    n = data.n_subjects
    eta0 = jnp.zeros((n, len(RANDOM)))

    first = time.perf_counter()
    inner = jax.block_until_ready(objective.inner(psi, eta0))
    first = time.perf_counter() - first
    start = time.perf_counter()
    inner = jax.block_until_ready(objective.inner(psi, eta0))
    run = time.perf_counter() - start
    status = np.asarray(inner.status)

    use = np.isin(np.asarray(data.obs_dvid), [OBSERVABLE_NAMES.index(d) for d in USE]) & np.asarray(data.obs_mask)
    rows, times, diffs = [], [], []
    for i in range(n_scipy):
        m = use[i]
        eta, secs, nfev = scipy_map(
            model, omega, np.asarray(data.dose_time[i]), np.asarray(data.dose_amount[i]),
            np.asarray(data.obs_time[i])[m], np.asarray(data.obs_dvid[i])[m], np.asarray(data.obs_value[i])[m],
        )  # fmt: skip
        times.append(secs)
        diffs.append(float(np.max(np.abs(eta - np.asarray(inner.eta[i])))))
        rows.append(nfev)

    ours = 1e3 * run / n
    theirs = 1e3 * float(np.mean(times))
    print(f"il2treg individual-fit benchmark ({datetime.datetime.now().isoformat(timespec='seconds')}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__})")  # fmt: skip
    print(f"MAP of eta ({', '.join(RANDOM)}) from {', '.join(USE)}; simulated LUPIL-2 cohort, {n} patients")
    print()
    print(f"{'method':44s}{'patients':>9s}{'ms/patient':>12s}{'total s':>9s}")
    print(f"{'il2treg Gauss-Newton+secant (vmap, threads)':44s}{n:9d}{ours:12.1f}{run:9.2f}")
    print(f"{'scipy least_squares + solve_ivp(LSODA)':44s}{n_scipy:9d}{theirs:12.1f}{sum(times):9.2f}")
    print()
    print(f"ratio scipy / il2treg (ms/patient): {theirs / ours:.1f}  (target >= 30)")
    print(f"compile + first run: {first:.1f} s; run: {run:.2f} s")
    print(f"il2treg patients converged: {int(np.sum(status == 0))}/{n}; GN iterations median {int(np.median(np.asarray(inner.iterations)))}")
    print(f"scipy residual evaluations per patient (Jacobians included): median {int(np.median(rows))}")
    print(f"agreement of eta (max |difference| over {n_scipy} patients): {max(diffs):.2e}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "jax": jax.__version__, "patients": n, "il2treg_ms_per_patient": ours,
            "scipy_patients": n_scipy, "scipy_ms_per_patient": theirs, "ratio": theirs / ours,
            "compile_plus_first_s": first, "eta_max_abs_diff": max(diffs),
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
