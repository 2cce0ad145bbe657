r"""What NONMEM dose records cost the solver: the plain solve against the records solve, in one run.

    .venv/bin/python benchmarks/dose_records.py [--n 64] [--json PATH]

The IL-2 model (``models/il2_treg_sledai.toml``), ``--n`` virtual patients
(``sample_population(seed=0)``), the LUPIL-2 regimen (16 doses) and 85 daily observation times,
solved three ways with ``jax.vmap`` of :func:`il2treg.simulate.solve_one`:

- ``plain``: the solve every fit of a plain dataset takes (one interval per dose; the baseline);
- ``records``: the same doses as :class:`il2treg.records.DoseRecords` (a dataset with a CMT, RATE
  or reset anywhere takes this path: three events per dose);
- ``steady state``: the first dose as SS 1 with II 1 day (the patient at the steady state of
  daily 1.5 MIU before the trial), which adds a Newton solve of the periodic state.

Compile time (first call less second) is reported apart from run time (the mean of ``--repeats``
calls after it), with each path's ratio to the plain one. ``records`` must give the plain solve's
values to the solver's tolerance (printed: the largest relative difference; the records solve
also splits at each dose's record time, 27 min before the dose enters with the model's lag, so
its adaptive steps differ; the run fails above 1e-4, a hundred times ``rtol``). A patient whose
steady state was not found is flagged (status 102 or a solver code) and counted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import il2treg
from il2treg import regimen as rg
from il2treg.records import DoseRecords
from il2treg.simulate import solve_one


def timed(fn, *args, repeats: int) -> tuple[float, float, np.ndarray, np.ndarray]:
    """(compile s, run s, values, status): the first call less the mean of the next ``repeats``."""
    t = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs.append(time.perf_counter() - t)
    run = float(np.mean(runs))
    return first - run, run, np.asarray(out[0]), np.asarray(out[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="virtual patients")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after the first")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    model = il2treg.load_model("il2_treg_sledai")
    theta = jnp.asarray(il2treg.sample_population(model, args.n, seed=0).values)
    regimen = rg.lupil2()
    times, amounts = jnp.asarray(regimen.times), jnp.asarray(regimen.amounts)
    obs = jnp.linspace(0.0, 84.0, 85)
    options = il2treg.SolverOptions()
    slots = 8
    plain = DoseRecords.plain(regimen.n_doses)
    ss = np.zeros(regimen.n_doses, dtype=np.int32)
    ss[0] = 1
    ii = np.zeros(regimen.n_doses)
    ii[0] = 1.0
    steady = DoseRecords(plain.input, plain.duration, plain.reset, ss, ii, steady_states=1)

    def batch(records):
        one = lambda th: solve_one(model.mechanism, th, times, amounts, obs, options, slots, records=records)
        return jax.jit(jax.vmap(one))

    rows = {}
    for name, records in (("plain", None), ("records", plain), ("steady state", steady)):
        compile_s, run_s, values, status = timed(batch(records), theta, repeats=args.repeats)
        rows[name] = {"compile_s": compile_s, "run_s": run_s, "values": values, "flagged": int(np.sum(status != 0))}
    base = rows["plain"]
    print(f"IL-2 model, LUPIL-2 regimen (16 doses), {args.n} patients, 85 times; {jax.devices()[0].device_kind}")
    print(f"{'path':<14}{'compile s':>10}{'ratio':>8}{'run s':>9}{'ms/patient':>12}{'ratio':>8}{'flagged':>9}")
    for name, row in rows.items():
        print(f"{name:<14}{row['compile_s']:>10.1f}{row['compile_s'] / base['compile_s']:>8.2f}{row['run_s']:>9.3f}"
              f"{1e3 * row['run_s'] / args.n:>12.2f}{row['run_s'] / base['run_s']:>8.2f}{row['flagged']:>9}")  # fmt: skip
    scale = np.maximum(np.abs(base["values"]), 1e-12 * np.max(np.abs(base["values"]), axis=(0, 1)))  # per observable
    same = float(np.max(np.abs(rows["records"]["values"] - base["values"]) / scale))
    print(f"records vs plain, largest relative difference: {same:.1e}")
    if args.json:
        result = {
            "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"processor": platform.processor(), "device_kind": jax.devices()[0].device_kind},
            "n": args.n,
            "rows": {name: {k: v for k, v in row.items() if k != "values"} for name, row in rows.items()},
            "records_vs_plain_max_rel": same,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return 0 if same < 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
