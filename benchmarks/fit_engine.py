"""A fit's ODE work with the reference model file's equations against the hand-written code.

    .venv/bin/python benchmarks/fit_engine.py [--patients 16] [--repeats 8] [--json PATH]

The unit of work of a FOCE-I fit of ``fits/lupil2_virtual``: one solve of each patient with its
first- and second-order forward sensitivities (:func:`il2treg.fit.problem.expand` with the fit's
varied ODE parameters and random effects), for ``--patients`` patients of the simulated cohort at
the typical parameters, batched by ``vmap`` and jitted. The same program is built twice in one
process: with the equations compiled from ``models/il2_treg_sledai.toml`` (what the package runs)
and with the hand-written JAX code in ``tests/handwritten`` (what it ran before models were
data). Reports each one's compile time (best of two, alternated), the XLA kernels (fusions) and instructions of its
compiled program, and the best of ``--repeats`` calls, alternated; then the ratios file / hand
and the largest relative difference between their results (rounding level: the same equations).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import handwritten  # noqa: E402
from il2treg.fit.problem import expand, patient_arrays  # noqa: E402
from il2treg.fit.spec import read_fit_spec  # noqa: E402


def program(problem, theta, patients):
    """The jitted, compiled batch of expansions, its compile time (s) and its HLO op counts."""
    fn = jax.jit(jax.vmap(lambda th, p: expand(problem, th, p, problem.ode_varied, problem.ode_random)))
    start = time.perf_counter()
    compiled = fn.lower(theta, patients).compile()
    seconds = time.perf_counter() - start
    ops = collections.Counter(re.findall(r"= \S+ (\w[\w-]*)\(", compiled.as_text()))
    return compiled, seconds, ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--patients", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--json", help="write the numbers to this JSON file")
    args = ap.parse_args()
    spec = read_fit_spec(ROOT / "fits/lupil2_virtual/fit.toml")
    problems = {"file": spec.problem()}
    problems["hand"] = dataclasses.replace(problems["file"], model=handwritten.model())
    patients = jax.tree_util.tree_map(lambda a: a[: args.patients], patient_arrays(spec.dataset))
    typical = problems["file"].model.typical().values
    theta = jnp.broadcast_to(typical, (args.patients, typical.shape[0]))
    built = {}
    for _ in range(2):  # compiled twice, alternately, the faster kept: the first compile of a process pays one-time costs
        for k in ("hand", "file"):
            again = program(problems[k], theta, patients)
            built[k] = again if k not in built or again[1] < built[k][1] else built[k]
    seconds: dict[str, list[float]] = {k: [] for k in built}
    out = {}
    for _ in range(args.repeats):
        for k, (compiled, _, _) in built.items():
            start = time.perf_counter()
            out[k] = jax.block_until_ready(compiled(theta, patients))
            seconds[k].append(time.perf_counter() - start)
    print(f"{args.patients} patients of fits/lupil2_virtual, first- and second-order sensitivities in "
          f"{len(problems['file'].ode_varied)} and {len(problems['file'].ode_random)} directions; best of {args.repeats}\n")
    print("| equations | compile s | kernels (fusions) | instructions | run s |")
    print("|---|---:|---:|---:|---:|")
    for k, label in (("hand", "hand-written (tests/handwritten)"), ("file", "model file (models/il2_treg_sledai.toml)")):
        _, compile_s, ops = built[k]
        print(f"| {label} | {compile_s:.2f} | {ops['fusion']} | {sum(ops.values())} | {min(seconds[k]):.4f} |")
    ratio_run = min(seconds["file"]) / min(seconds["hand"])
    ratio_compile = built["file"][1] / built["hand"][1]
    print(f"| file / hand | {ratio_compile:.2f} | | | {ratio_run:.2f} |")
    leaves = zip(jax.tree_util.tree_leaves(out["file"]), jax.tree_util.tree_leaves(out["hand"]))
    worst = max(float(np.max(np.abs(np.asarray(a, float) - np.asarray(b, float))) / max(float(np.max(np.abs(np.asarray(b, float)))), 1e-300))
                for a, b in leaves if np.size(b))
    print(f"\nlargest difference file / hand, relative to each output's largest value: {worst:.1e}")
    if args.json:
        Path(args.json).write_text(json.dumps({"patients": args.patients, "seconds": seconds, "ratio_run": ratio_run,
                                               "compile_s": {k: v[1] for k, v in built.items()},
                                               "fusions": {k: v[2]["fusion"] for k, v in built.items()}}, indent=2))


if __name__ == "__main__":
    main()
