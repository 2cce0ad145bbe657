"""Regimen comparison speed: ``il2treg.design.compare`` of the library's regimens over 1,000 virtual
patients with parameter uncertainty, against a scipy LSODA baseline, in one run.

    .venv/bin/python benchmarks/regimens.py [--n 1000] [--json PATH]      # or: make bench-regimens

- il2treg: ``compare(all named regimens, n)`` twice, on two virtual populations (seeds 0 and 1).
  The first call compiles (one solve per regimen's dose count and grid); JAX's own compile time
  (``jax.monitoring``: trace, lowering, XLA) is reported separately, and the run time is the
  second call's (same shapes, new patients, no compilation).
- scipy: the same simulations (each regimen's exposure grid, the same patients, rtol 1e-6,
  atol 1e-9, solve restarted at every dose) with ``solve_ivp(method="LSODA")`` one patient at a
  time, on the first ``--baseline`` patients of each regimen with doses; ms/patient scaled to N.

The issue's target: >= 6 regimens x 1,000 patients in under a minute after compilation.
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
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from simulate import _compile_s, solve_lsoda  # the NumPy model copy and JAX compile counter

import il2treg
from il2treg.design import compare, exposure_grid, virtual_population
from il2treg.regimen import NAMED_REGIMENS, named


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1000, help="virtual patients")
    ap.add_argument("--baseline", type=int, default=5, help="patients per regimen solved by scipy LSODA")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    model = il2treg.load_model()
    names = list(NAMED_REGIMENS)
    runs = []
    for seed in (0, 1):
        _, params = virtual_population(model, args.n, seed=seed)
        c0, start = _compile_s[0], time.perf_counter()
        result = compare(names, model=model, params=params)
        runs.append({"seed": seed, "wall_s": time.perf_counter() - start, "compile_s": _compile_s[0] - c0, "failed": int((result.per_patient["status"] != 0).sum())})
        print(f"run {seed + 1}: {len(names)} regimens x {args.n} patients: {runs[-1]['wall_s']:.1f} s "
              f"(of which JAX compile {runs[-1]['compile_s']:.1f} s), failed solves {runs[-1]['failed']}", flush=True)
    run_s = runs[1]["wall_s"]

    horizon = 168.0
    theta = np.asarray(params.values)
    scipy_s, n_scipy, worst = 0.0, 0, 0.0
    for name in names:
        reg = named(name)
        if reg.n_doses == 0:  # placebo: nothing to solve (the baseline's solver needs a dose)
            continue
        t = exposure_grid(reg, horizon)
        sim = il2treg.simulate(model, reg, t, il2treg.Parameters(params.values[: args.baseline], params.names))
        mine = np.asarray(sim.values)
        for i in range(args.baseline):
            start = time.perf_counter()
            ref, _ = solve_lsoda(theta[i], model.parameter_names, np.asarray(reg.times), np.asarray(reg.amounts), t)
            scipy_s += time.perf_counter() - start
            n_scipy += 1
            worst = max(worst, float(np.max(np.abs(mine[i] - ref) / np.maximum(np.abs(ref), 1e-3))))
    scipy_ms = 1e3 * scipy_s / n_scipy
    il2treg_ms = 1e3 * run_s / (len(names) * args.n)
    print(f"il2treg: {il2treg_ms:.3f} ms per patient-regimen (metrics included); scipy LSODA: {scipy_ms:.1f} ms per patient-regimen "
          f"(simulation only, {n_scipy} solves); ratio {scipy_ms / il2treg_ms:.0f}; max relative difference {worst:.1e}")
    print(f"target: {len(names)} regimens x {args.n} patients in < 60 s after compilation: {run_s:.1f} s -> {'met' if run_s < 60 else 'NOT met'}")
    if args.json:
        out = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "jax": jax.__version__,
            "regimens": names, "n": args.n, "runs": runs, "run_s": run_s,
            "il2treg_ms_per_patient_regimen": il2treg_ms, "scipy_ms_per_patient_regimen": scipy_ms, "ratio": scipy_ms / il2treg_ms,
            "scipy_solves": n_scipy, "max_relative_difference": worst,
        }  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
