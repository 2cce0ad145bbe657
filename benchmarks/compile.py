"""Where the first run of a fit or a simulation spends its time: tracing, lowering, XLA, running.

    .venv/bin/python benchmarks/compile.py [--json PATH] [--n-sim 200] [--simulate-n 1000]
    .venv/bin/python benchmarks/compile.py --programs     # the fit's two large programs only, one after the other

One cold process (no persistent compilation cache), in the order a user meets them:

1. the reference population fit (``fits/lupil2_virtual/fit.toml``, FOCE-I, as ``il2treg fit
   --no-figures`` runs it: :func:`il2treg.fit.compute_fit`), with the time of each stage;
2. its diagnostics (:func:`il2treg.diagnostics.diagnose`: the predictions at the EBEs and
   ``--n-sim`` simulated replicates for NPDE and VPC);
3. ``il2treg.simulate`` of ``--simulate-n`` virtual patients under LUPIL-2.

Every compilation is recorded through ``jax.monitoring`` (the events JAX emits for tracing the
Python function to a jaxpr, lowering the jaxpr to StableHLO, and XLA's compilation of it), keyed
by the program's name, and every lowered module is written to a temporary folder
(``jax_dump_ir_to``) to measure its size (operations and kB of StableHLO text). Programs that take
more than a second to build are listed one by one with their run time (a second call, best of
three, where the benchmark can call it again through the public API); the many small op-by-op
programs that eager JAX code compiles are summed in one row. Times are wall seconds on this
machine; the ratios between rows are what to compare across machines.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path

os.environ.setdefault("EQX_ON_ERROR", "nan")  # as the il2treg command runs (il2treg.cache)

import jax

_DUMP = tempfile.mkdtemp(prefix="il2treg-ir-")
jax.config.update("jax_dump_ir_to", _DUMP)

import numpy as np  # noqa: E402 - after the IR dump is configured

import il2treg  # noqa: E402
from il2treg.diagnostics import diagnose  # noqa: E402
from il2treg.fit import compute_fit, read_fit_spec  # noqa: E402
from il2treg.fit.assemble import initial_psi, make_objective  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace_s",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
    "/jax/core/compile/backend_compile_duration": "compile_s",
}
_log: list[dict] = []  # one entry per event: phase, program, kind, seconds
_phase = ["import"]


def _on_event(name: str, secs: float, fun_name: str | None = None, **_) -> None:
    kind = _EVENTS.get(name)
    if kind is not None:
        _log.append({"phase": _phase[0], "program": _program(fun_name or "?"), "kind": kind, "s": secs})


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _program(fun_name: str) -> str:
    """``jit(inner)`` and ``inner`` are one program."""
    match = re.fullmatch(r"\w+\((.*)\)", fun_name)
    return match.group(1) if match else fun_name


def _sizes() -> dict[str, tuple[int, float]]:
    """Largest dumped StableHLO module per program: (operations, kB)."""
    out: dict[str, tuple[int, float]] = {}
    for path in Path(_DUMP).glob("*.mlir"):
        match = re.match(r"jax_ir\d+_jit_(.+?)(?:\.\d+)?_(?:before|after|compile).*\.mlir$", path.name) or re.match(r"jax_ir\d+_jit_(.+)\.mlir$", path.name)
        if match is None:
            continue
        text = path.read_text()
        ops = sum(1 for line in text.splitlines() if " = " in line and ("stablehlo." in line or "func.call" in line or "chlo." in line))
        name = match.group(1)
        if ops > out.get(name, (0, 0.0))[0]:
            out[name] = (ops, len(text) / 1e3)
    return out


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def programs() -> None:
    """``--programs``: trace+lower and XLA compile of the reference fit's EBE search and exact
    gradient (all 100 patients in one ``Objective``), one after the other, nothing else running."""
    from il2treg.fit import Objective, patient_arrays

    spec = read_fit_spec(ROOT / "fits/lupil2_virtual/fit.toml")
    problem = spec.problem()
    objective = Objective(problem, patient_arrays(spec.dataset, problem.covariates), spec.residual_model())
    psi = initial_psi(spec, problem, spec.residual_model())
    n = spec.dataset.n_subjects
    eta = jax.numpy.zeros((n, problem.n_eta))
    calls = {"inner": (objective, psi, eta), "gradients": (objective, psi, eta, jax.numpy.ones(n, dtype=bool))}
    print("| program | trace + lower s | XLA compile s | StableHLO lines |\n|---|---:|---:|---:|")
    for name, call in calls.items():
        start = time.perf_counter()
        lowered = getattr(Objective, name).lower(*call)
        built = time.perf_counter()
        lowered.compile()
        done = time.perf_counter()
        print(f"| {name} | {built - start:.2f} | {done - built:.2f} | {lowered.as_text().count(chr(10))} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the numbers to this JSON file")
    ap.add_argument("--n-sim", type=int, default=200, help="replicates for the diagnostics (NPDE, VPC)")
    ap.add_argument("--simulate-n", type=int, default=1000, help="virtual patients for simulate")
    ap.add_argument("--programs", action="store_true", help="only the fit's two large programs, built one after the other")
    args = ap.parse_args()
    if args.programs:
        programs()
        return
    start = time.perf_counter()

    # 1. the reference fit, stage by stage
    _phase[0] = "fit: setup"
    spec = read_fit_spec(ROOT / "fits/lupil2_virtual/fit.toml")
    stages: dict[str, float] = {}

    def progress(info: dict) -> None:
        now = time.perf_counter() - t_fit
        if info.get("stage") == "start":
            stages["setup (data, problem)"] = now
            _phase[0] = "fit: to iteration 1"
        elif info.get("stage") == "estimation" and info.get("iteration") == 1:
            stages["to iteration 1"] = now
            _phase[0] = "fit: estimation"
        elif info.get("stage") in ("covariance", "predictions"):
            stages[f"to {info['stage']}"] = now
            _phase[0] = f"fit: {info['stage']}"

    t_fit = time.perf_counter()
    result = compute_fit(spec, progress=progress)
    stages["fit (compute_fit)"] = time.perf_counter() - t_fit
    print(f"reference fit: OFV {result.ofv:.6f}, {result.iterations} iterations, {stages['fit (compute_fit)']:.1f} s")

    # run times of the fit's programs, called again through the public objective
    problem = spec.problem()
    objective = make_objective(spec, problem)
    psi = jax.numpy.asarray(result.psi)
    eta = jax.numpy.asarray(result.individual[[f"ETA_{n}" for n in problem.random]].to_numpy())
    _phase[0] = "run-time calls"
    inner = objective.inner(psi, eta)
    include = np.ones(result.n_patients, dtype=bool)
    run_s = {
        "inner": best_of(lambda: objective.inner(psi, inner.eta)),
        "terms": best_of(lambda: objective.value(psi, inner, include)),
        "gradients": best_of(lambda: objective.gradients(psi, inner.eta, include)),
    }

    # 2. diagnostics
    _phase[0] = "diagnostics"
    t = time.perf_counter()
    diagnose(result, spec=spec, n_sim=args.n_sim)
    stages[f"diagnose (n_sim={args.n_sim})"] = time.perf_counter() - t

    # 3. simulate
    _phase[0] = "simulate"
    model = il2treg.load_model()
    params = il2treg.sample_population(model, args.simulate_n, seed=0)
    times = np.arange(0.0, 84.0 + 1e-9, 7.0)
    t = time.perf_counter()
    jax.block_until_ready(il2treg.simulate(model, il2treg.regimen.lupil2(), times, params).values)
    stages[f"simulate N={args.simulate_n} (first call)"] = time.perf_counter() - t
    run_s["_simulate_batch"] = best_of(lambda: il2treg.simulate(model, il2treg.regimen.lupil2(), times, params).values, 2)
    total = time.perf_counter() - start

    # tables
    per = collections.defaultdict(lambda: {"trace_s": 0.0, "lower_s": 0.0, "compile_s": 0.0, "count": 0, "phase": ""})
    for e in _log:
        row = per[e["program"]]
        row[e["kind"]] += e["s"]
        row["count"] += e["kind"] == "compile_s"
        row["phase"] = row["phase"] or e["phase"]
    sizes = _sizes()
    big = {k: v for k, v in per.items() if v["trace_s"] + v["lower_s"] + v["compile_s"] > 1.0}
    small = [v for k, v in per.items() if k not in big]
    print(f"\n{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC\n")
    print("| program | first built in | compiles | trace s | lower s | XLA s | StableHLO ops | kB | run s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for name, v in sorted(big.items(), key=lambda kv: -(kv[1]["trace_s"] + kv[1]["lower_s"] + kv[1]["compile_s"])):
        ops, kb = sizes.get(name, (0, 0.0))
        run = run_s.get(name)
        rows.append({"program": name, **v, "ops": ops, "kB": kb, "run_s": run})
        print(f"| {name} | {v['phase']} | {v['count']} | {v['trace_s']:.2f} | {v['lower_s']:.2f} | {v['compile_s']:.2f} | {ops} | {kb:.0f} | "
              f"{'' if run is None else f'{run:.3f}'} |")
    s = {k: sum(v[k] for v in small) for k in ("trace_s", "lower_s", "compile_s", "count")}
    print(f"| {len(small)} small programs | | {s['count']} | {s['trace_s']:.2f} | {s['lower_s']:.2f} | {s['compile_s']:.2f} | | | |")
    by_phase = collections.defaultdict(float)
    for e in _log:
        by_phase[e["phase"]] += e["s"]
    print("\n| stage | wall s (from the fit's start) |\n|---|---:|")
    for k, v in stages.items():
        print(f"| {k} | {v:.1f} |")
    print("\n| phase | of which tracing + lowering + XLA, s |\n|---|---:|")
    for k, v in by_phase.items():
        print(f"| {k} | {v:.1f} |")
    print(f"\nwhole benchmark: {total:.1f} s")
    if args.json:
        out = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "machine": platform.machine(), "cpus": os.cpu_count(),
               "jax": jax.__version__, "ofv": result.ofv, "iterations": result.iterations, "stages_s": stages, "programs": rows,
               "small_programs": {**s, "programs": len(small)}, "compile_by_phase_s": dict(by_phase), "total_s": total}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
