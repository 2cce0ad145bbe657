"""Simulation speed of il2treg (vmapped diffrax) against a scipy LSODA baseline, in one run.

    .venv/bin/python benchmarks/simulate.py [--quick] [--n N] [--json PATH]

Both sides solve the same model (models/il2_treg_sledai.toml), the same virtual patients
(``sample_population(seed=0)``), the LUPIL-2 regimen and 337 observation times (0..84 days, every
6 h) at rtol 1e-6, atol 1e-9, with the solve restarted at every dose:

- il2treg: ``il2treg.simulate`` on N patients at once (vmap, default ``SolverOptions()``: Tsit5).
  The first call compiles; compile time is what JAX reports (``jax.monitoring``: trace, lowering
  and XLA compile), cross-checked by first call - second (identical) call; the run time is the
  second call.
- scipy: a NumPy/Python-float copy of the right-hand side (checked against
  the model's vector field below), ``solve_ivp(method="LSODA")`` per patient,
  one patient at a time, on the first few patients of the same population.

The issue's target is LSODA ms/patient / il2treg ms/patient >= 100 at N = 10,000.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import time

import diffrax
import jax
import numpy as np
from scipy.integrate import solve_ivp

import il2treg
from il2treg.units import PM_PER_IU_PER_ML


# --------------------------------------------------------------------------- NumPy model copy
def prepare(theta: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    """Parameters as Python floats plus the baseline signals."""
    q = {n: float(v) for n, v in zip(names, theta)}
    c0 = max(q["il2_endo"], 1e-300)
    q["s0"] = [1.0 / (1.0 + (q[k] / c0) ** q["hill"]) for k in ("ec50_treg", "ec50_nk", "ec50_tconv")]
    return q


@dataclasses.dataclass(frozen=True)
class Structure:
    """The variant of ``il2_treg_sledai`` the NumPy copy computes (the reference: 3 transit
    compartments, CD25 feedback, receptor sink; models/il2_treg_sledai*.toml)."""

    transit_compartments: int = 3
    cd25_feedback: bool = True
    receptor_sink: bool = True


REFERENCE = Structure()


def make_rhs(q: dict[str, float], structure: Structure = REFERENCE) -> callable:
    """dy/dt with the state layout of ``models/il2_treg_sledai.toml`` (depot, central, chains, folds, CD25, effect)."""
    n = structure.transit_compartments
    ka, CL, CLR, V, nh = q["ka"], q["CL"], q["CLR"], q["V"], q["hill"]
    ec50 = [q["ec50_treg"], q["ec50_nk"], q["ec50_tconv"]]
    kout = [q["kout_treg"], q["kout_nk"], q["kout_tconv"]]
    emax = [q["emax_treg"], q["emax_nk"], q["emax_tconv"]]
    s0, ktr = q["s0"], (n / q["mtt"] if n else 0.0)

    def rhs(t, y):
        y = y.tolist()  # Python floats: faster than NumPy ops on 16-element arrays
        a_d, a_c = y[0], y[1]
        folds, cd25, effect = y[2 + 3 * n : 5 + 3 * n], y[5 + 3 * n], y[6 + 3 * n]
        # PK with receptor sink: clearance CL + CLR * R_T * M
        sink = folds[0] * cd25 if structure.receptor_sink else 0.0
        absorption = ka * a_d
        out = [-absorption, absorption - (CL + CLR * sink) / V * a_c]
        # IL-2 signal above baseline per cell type; CD25 lowers the Treg EC50
        c = max(a_c * 1e6 / (V * 1e3) * PM_PER_IU_PER_ML + q["il2_endo"], 1e-300)
        e = [ec50[0] / cd25 ** q["gamma_cd25"] if structure.cd25_feedback else ec50[0], ec50[1], ec50[2]]
        u = [1.0 / (1.0 + (e[i] / c) ** nh) - s0[i] for i in range(3)]
        # transit chains (Treg, NK, Tconv), then indirect-response pools
        drive = u
        if n:
            for i in range(3):
                z = y[2 + i * n : 2 + (i + 1) * n]
                out += [ktr * (up - zj) for up, zj in zip([u[i], *z[:-1]], z)]
            drive = [y[2 + i * n + n - 1] for i in range(3)]
        out += [kout[i] * (1.0 + emax[i] * drive[i]) - kout[i] * folds[i] for i in range(3)]
        out.append(q["kin_cd25"] * (1.0 + q["emax_cd25"] * u[0]) - q["kin_cd25"] * cd25)
        excess = max(folds[0] - 1.0, 0.0)
        out.append(q["kd"] * (-(excess / (q["r50"] + excess)) - effect))  # relative drug effect E on SLEDAI
        return np.array(out)

    return rhs


def observables(t: np.ndarray, y: np.ndarray, q: dict[str, float], n: int) -> np.ndarray:
    """The model's observables for states ``y [states, times]``; returns ``[times, observables]``."""
    treg, nk, tconv = q["treg0"] * y[2 + 3 * n], q["nk0"] * y[3 + 3 * n], q["tconv0"] * y[4 + 3 * n]
    il2 = y[1] * 1e6 / (q["V"] * 1e3) * PM_PER_IU_PER_ML + q["il2_endo"]
    sledai = q["sledai0"] - q["pmax"] * (1.0 - np.exp(-q["kpl"] * np.maximum(t, 0.0))) + q["imax"] * q["sledai0"] * y[6 + 3 * n]
    return np.stack([il2, 100.0 * treg / (treg + tconv), treg, tconv, nk, y[5 + 3 * n], sledai], axis=1)


def solve_lsoda(theta, names, dose_times, dose_amounts, obs_times, rtol=1e-6, atol=1e-9, structure: Structure = REFERENCE):
    """One patient, segmented at effective dose times like ``il2treg.simulate``; (values, nfev)."""
    q = prepare(theta, names)
    rhs, n = make_rhs(q, structure), structure.transit_compartments
    y = np.concatenate([np.zeros(2 + 3 * n), np.ones(4), np.zeros(1)])  # baseline: no drug, folds and CD25 at 1
    tau = dose_times + q["tlag"]  # a dose enters the depot at t_dose + tlag ...
    starts = np.concatenate([[min(obs_times[0], tau[0])], tau])
    ends = np.concatenate([tau, [max(obs_times[-1], tau[-1])]])
    added = np.concatenate([q["F"] * dose_amounts * 1e-6, [0.0]])  # ... as F * amount, in MIU
    # interval k holds the observations in (start_k, end_k]: an observation at a dose time is pre-dose
    first = np.searchsorted(obs_times, starts, side="right")
    first[0] = 0
    last = np.searchsorted(obs_times, ends, side="right")
    values, nfev = np.empty((len(obs_times), 7)), 0
    for t0, t1, lo, hi, dose in zip(starts, ends, first, last, added):
        ts = obs_times[lo:hi]
        if t1 > t0:
            ts_end = ts if ts.size and ts[-1] == t1 else np.append(ts, t1)  # also return the state at t1
            sol = solve_ivp(rhs, (t0, t1), y, method="LSODA", t_eval=ts_end, rtol=rtol, atol=atol)
            assert sol.success, sol.message
            nfev, y = nfev + sol.nfev, sol.y[:, -1].copy()
            values[lo:hi] = observables(ts, sol.y[:, : hi - lo], q, n)
        else:  # zero-length interval (e.g. two doses at one time): observe the current state
            values[lo:hi] = observables(ts, np.repeat(y[:, None], hi - lo, 1), q, n)
        y[0] += dose  # the depot
    return values, nfev


# --------------------------------------------------------------------------- helpers
_compile_s = [0.0]  # seconds JAX spent tracing, lowering and compiling (all jit calls so far)


def _on_jax_event(name: str, secs: float, **_) -> None:
    if name.endswith(("trace_duration", "to_mlir_module_duration", "backend_compile_duration")):
        _compile_s[0] += secs


jax.monitoring.register_event_duration_secs_listener(_on_jax_event)


def timed(fn, *args, **kwargs):
    """(result, wall seconds, of which JAX compile seconds)."""
    start, compile0 = time.perf_counter(), _compile_s[0]
    out = jax.block_until_ready(fn(*args, **kwargs))
    return out, time.perf_counter() - start, _compile_s[0] - compile0


def check_rhs(model, P, n_checks=5, seed=1):
    """Assert the NumPy RHS equals il2treg's vector field at random states (rel. err < 1e-12)."""
    rng, worst = np.random.default_rng(seed), 0.0
    for i in range(n_checks):
        theta = np.asarray(P.values[i])
        y = rng.uniform(0.05, 2.0, len(model.state_names))
        ref = np.asarray(model.mechanism.vector_field(0.0, y, model.mechanism.prepare(theta)))
        mine = make_rhs(prepare(theta, model.parameter_names))(0.0, y)
        worst = max(worst, float(np.max(np.abs(mine - ref) / np.maximum(np.abs(ref), 1e-300))))
    assert worst < 1e-12, f"NumPy RHS differs from the model's vector field: rel. err {worst:.2e}"
    return worst


def subset(P, k):
    return il2treg.Parameters(P.values[:k], P.names)


# --------------------------------------------------------------------------- benchmark
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N = 1,000 and 10 LSODA patients")
    ap.add_argument("--n", type=int, help="il2treg batch size (default 10,000; 1,000 with --quick)")
    ap.add_argument("--n-scipy", type=int, help="LSODA patients (default 20; 10 with --quick)")
    ap.add_argument("--n-implicit", type=int, default=200, help="batch size of the Kvaerno5 run")
    ap.add_argument("--json", help="write the numbers to this JSON file")
    args = ap.parse_args()
    N = args.n or (1_000 if args.quick else 10_000)
    n_scipy = args.n_scipy or (10 if args.quick else 20)

    m = il2treg.load_model()
    P = il2treg.sample_population(m, N, seed=0)
    reg = il2treg.regimen.lupil2()
    t = np.arange(0, 84.0001, 0.25)
    dose_times, dose_amounts = np.asarray(reg.times), np.asarray(reg.amounts)
    rhs_err = check_rhs(m, P)

    # il2treg, default solver (Tsit5): first call = compile + run, second call = run
    _, first, compile_s = timed(il2treg.simulate, m, reg, t, P)
    sim, run, _ = timed(il2treg.simulate, m, reg, t, P)
    failed = int((np.asarray(sim.status) != 0).sum())

    # scipy LSODA, one patient at a time, on the first n_scipy patients of the same population
    start, ref, nfev = time.perf_counter(), [], 0
    for i in range(n_scipy):
        values, f = solve_lsoda(np.asarray(P.values[i]), m.parameter_names, dose_times, dose_amounts, t)
        ref.append(values)
        nfev += f
    lsoda = time.perf_counter() - start
    ref = np.stack(ref)
    mine = np.asarray(sim.values[:n_scipy])
    rel = np.abs(mine - ref) / np.abs(ref)  # every observable is > 0 (IL-2 >= endogenous level, etc.)
    worst_obs = {name: float(rel[..., k].max()) for k, name in enumerate(sim.names)}

    # implicit solver for comparison (own compile), and Tsit5 at the same small N
    Ps = subset(P, min(args.n_implicit, N))
    k5 = il2treg.SolverOptions(solver=diffrax.Kvaerno5())
    _, _, k5_compile = timed(il2treg.simulate, m, reg, t, Ps, options=k5)
    k5_sim, k5_run, _ = timed(il2treg.simulate, m, reg, t, Ps, options=k5)
    timed(il2treg.simulate, m, reg, t, Ps)  # compile Tsit5 for this shape
    _, ts_small, _ = timed(il2treg.simulate, m, reg, t, Ps)
    ns = Ps.values.shape[0]

    r = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()},
        "jax": jax.__version__, "diffrax": diffrax.__version__, "N": N, "n_obs": len(t),
        "il2treg_ms_per_patient": 1e3 * run / N, "il2treg_total_s": run, "il2treg_first_call_s": first,
        "compile_s": compile_s, "first_minus_second_s": first - run, "il2treg_failed": failed,
        "lsoda_patients": n_scipy, "lsoda_ms_per_patient": 1e3 * lsoda / n_scipy, "lsoda_total_s": lsoda,
        "lsoda_nfev_per_patient": nfev / n_scipy, "ratio_lsoda_over_il2treg": (lsoda / n_scipy) / (run / N),
        "rhs_max_rel_err": rhs_err, "max_rel_diff_vs_lsoda": max(worst_obs.values()),
        "max_rel_diff_by_observable": worst_obs,
        "small_N": ns, "tsit5_small_ms_per_patient": 1e3 * ts_small / ns,
        "kvaerno5_ms_per_patient": 1e3 * k5_run / ns, "kvaerno5_compile_s": k5_compile,
        "kvaerno5_failed": int((np.asarray(k5_sim.status) != 0).sum()),
    }
    print(f"\nil2treg simulation benchmark  ({r['date']}, {r['machine']['processor']}, "
          f"{r['machine']['cpu_count']} CPUs, jax {r['jax']}, diffrax {r['diffrax']})")
    print(f"LUPIL-2 regimen ({len(dose_times)} doses), {len(t)} observation times, rtol 1e-6, atol 1e-9\n")
    print(f"{'solver':<36}{'patients':>9}{'ms/patient':>12}{'total s':>10}{'failed':>8}")
    print(f"{'il2treg Tsit5 (vmap)':<36}{N:>9}{r['il2treg_ms_per_patient']:>12.3f}{run:>10.2f}{failed:>8}")
    print(f"{'scipy LSODA (one at a time)':<36}{n_scipy:>9}{r['lsoda_ms_per_patient']:>12.1f}{lsoda:>10.2f}{0:>8}")
    print(f"{'il2treg Tsit5 (vmap)':<36}{ns:>9}{r['tsit5_small_ms_per_patient']:>12.3f}{ts_small:>10.2f}{'':>8}")
    print(f"{'il2treg Kvaerno5 (vmap, implicit)':<36}{ns:>9}{r['kvaerno5_ms_per_patient']:>12.3f}{k5_run:>10.2f}"
          f"{r['kvaerno5_failed']:>8}")
    target = "meets" if r["ratio_lsoda_over_il2treg"] >= 100 else "BELOW"
    print(f"\nratio LSODA / il2treg (ms/patient): {r['ratio_lsoda_over_il2treg']:.1f}  ({target} the target of 100)")
    print(f"compile (JAX trace + lower + XLA compile): Tsit5 {compile_s:.1f} s, Kvaerno5 {k5_compile:.1f} s;"
          f" first - second call (Tsit5, noisier): {first - run:.1f} s")
    print(f"LSODA right-hand-side calls per patient: {r['lsoda_nfev_per_patient']:.0f}")
    print(f"NumPy RHS vs il2treg vector_field: max rel. err {rhs_err:.1e}")
    print(f"il2treg vs LSODA observables, max rel. diff over {n_scipy} patients x {len(t)} times: "
          f"{r['max_rel_diff_vs_lsoda']:.1e}")
    print("  by observable: " + ", ".join(f"{k} {v:.1e}" for k, v in worst_obs.items()))
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
