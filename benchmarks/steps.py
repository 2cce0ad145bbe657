"""Solver steps per patient of the reference cohort, by arm: why chunks are put in work order.

    .venv/bin/python benchmarks/steps.py

Solves each patient of the simulated LUPIL-2 cohort (``fits/lupil2_virtual``, at the reference
fit's typical values) as ``il2treg.simulate`` does (Tsit5, integral controller, rtol 1e-6, atol
1e-9, restarted at every effective dose time, placebo records included) and counts the steps
(accepted and rejected). A vmapped chunk steps until its slowest patient is done
(``il2treg.simulate.work_order``). It also counts one treated patient's steps at looser
tolerances, and prints that patient's elimination rate (CL + CLR)/V: steps that barely fall with
the tolerance are bounded by stability (that rate), not accuracy. Last, that patient's steps at
rtol 1e-6 with other diffrax solvers under the same controller: an integrator that needs far
fewer steps would change what a solve (and each of its sensitivity copies) costs.
"""

from __future__ import annotations

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import il2treg
from il2treg.fit import read_fit_spec
from il2treg.fit.assemble import patient_theta
from il2treg.fit.problem import patient_arrays, unpack


def steps(mechanism, theta, dose_time, dose_amount, t_end, rtol=1e-6, atol=1e-9, solver=None) -> int:
    p = mechanism.prepare(jnp.asarray(theta))
    controller = dfx.PIDController(rtol=rtol, atol=atol, pcoeff=0.0, icoeff=1.0)
    y = mechanism.initial_state(p)
    lag, fraction = float(mechanism.dose_lag(p)[0]), float(mechanism.dose_fraction(p)[0]) * mechanism.dose_scale[0]
    doses = [(t + lag, fraction * a) for t, a in zip(dose_time, dose_amount)]
    edges = [0.0] + [t for t, _ in doses] + [t_end]
    total = 0
    for k in range(len(edges) - 1):
        if edges[k + 1] > edges[k]:
            sol = _solve(edges[k], edges[k + 1], y, p, mechanism, controller, solver or dfx.Tsit5())
            y = sol.ys[-1]
            total += int(sol.stats["num_steps"])
        if k < len(doses):
            y = y.at[mechanism.dose_states[0]].add(doses[k][1])
    return total


@eqx.filter_jit
def _solve(t0, t1, y, p, mechanism, controller, solver):
    return dfx.diffeqsolve(dfx.ODETerm(mechanism.vector_field), solver, t0, t1, None, y, p,
                           saveat=dfx.SaveAt(t1=True), stepsize_controller=controller, max_steps=100_000)  # fmt: skip


def main() -> None:
    result = il2treg.load_fit("fits/lupil2_virtual/results")
    spec = read_fit_spec("fits/lupil2_virtual/fit.toml")
    problem = spec.problem()
    patients = patient_arrays(spec.dataset, problem.covariates)
    up = unpack(problem, problem.split(result.psi), spec.residual_model())
    mechanism = problem.model.mechanism
    t_end = float(np.max(patients.obs_time))
    counts = {"placebo": [], "IL-2": []}
    treated = None
    for i in range(spec.dataset.n_subjects):
        patient = jax.tree.map(lambda x, i=i: x[i], patients)
        theta = np.asarray(patient_theta(problem, up.theta, up.beta, np.zeros(problem.n_eta), patient))
        dt, da = np.asarray(patient.dose_time), np.asarray(patient.dose_amount)
        arm = "IL-2" if np.any(da > 0) else "placebo"
        counts[arm].append(steps(mechanism, theta, dt, da, t_end))
        if arm == "IL-2" and treated is None:
            treated = (theta, dt, da)
    for arm, c in counts.items():
        print(f"{arm:>8}: {len(c)} patients, Tsit5 steps over {t_end:.0f} days: min {min(c)}, median {int(np.median(c))}, max {max(c)}")
    theta = dict(zip(problem.model.parameter_names, treated[0]))
    print(f"first IL-2 patient: elimination rate (CL + CLR)/V = {(theta['CL'] + theta['CLR']) / theta['V']:.1f} per day")
    for rtol, atol in ((1e-6, 1e-9), (1e-4, 1e-7), (1e-3, 1e-6)):
        print(f"first IL-2 patient at rtol {rtol:g}, atol {atol:g}: {steps(mechanism, *treated, t_end, rtol, atol)} steps")
    for solver in (dfx.Dopri8(), dfx.Kvaerno5(), dfx.Kvaerno3()):
        n = steps(mechanism, *treated, t_end, solver=solver)
        print(f"first IL-2 patient, {type(solver).__name__} ({'implicit' if isinstance(solver, dfx.AbstractImplicitSolver) else 'explicit'}), rtol 1e-6: {n} steps")


if __name__ == "__main__":
    main()
