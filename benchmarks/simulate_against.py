"""Simulating the reference model for a population, this checkout against an earlier commit.

    .venv/bin/python benchmarks/simulate_against.py --against REV [--n 10000] [--repeats 2] [--json PATH]

Runs the same script (below: the public API only, ``load_model``, ``sample_population``,
``simulate``) with this checkout's ``src/`` and with the ``src/`` of ``--against`` (a temporary git
worktree, see ``cold_fit.py``), in the same ``.venv``, alternating, each in a fresh process with
``IL2TREG_CACHE=off``: ``--n`` patients of ``il2_treg_sledai`` under LUPIL-2, 85 daily times.
For each run: the first call (compilation and one solve), the best of two warm calls, and their
difference, the compile time. Reports the best of ``--repeats`` for each, the ratios new / old,
and the largest relative difference between the two checkouts' results (the same model: it
should be at the level of the solver's tolerance or below). The issue's criterion for the
model-file engine: warm time <= 1.10 of before, compile time no longer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from cold_fit import ROOT, earlier_tree

SCRIPT = r"""
import sys, time
import numpy as np
import il2treg
from il2treg import regimen as rg

n, out = int(sys.argv[1]), sys.argv[2]
start = time.perf_counter()
model = il2treg.load_model()
params = il2treg.sample_population(model, n, seed=0)
times = np.linspace(0.0, 84.0, 85)
setup = time.perf_counter() - start
seconds = []
for _ in range(3):
    start = time.perf_counter()
    sim = il2treg.simulate(model, rg.lupil2(), times, params)
    sim.values.block_until_ready()
    seconds.append(time.perf_counter() - start)
np.save(out, np.asarray(sim.values))
print(f"{setup} {seconds[0]} {min(seconds[1:])} {type(model.mechanism).__name__}")
"""


def run(src: Path, n: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix="il2treg-sim-")) / "values.npy"
    env = {**os.environ, "IL2TREG_CACHE": "off", "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(n), str(out)], cwd=src.parent, env=env,
                          capture_output=True, text=True, encoding="utf-8")  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"the simulation failed with {src}:\n{proc.stderr[-2000:]}")
    setup, first, warm, engine = proc.stdout.split()[-4:]
    setup, first, warm = float(setup), float(first), float(warm)
    return {
        "setup_s": setup,
        "first_s": first,
        "warm_s": warm,
        "compile_s": first - warm,
        "engine": engine,
        "values": str(out),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", required=True, help="git revision to compare with (e.g. the commit before a change)")
    ap.add_argument("--n", type=int, default=10_000, help="patients (default 10,000)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", help="write the numbers to this JSON file")
    args = ap.parse_args()
    import numpy as np

    with earlier_tree(args.against) as base:
        runs = {"old": [], "new": []}
        for _ in range(args.repeats):
            runs["old"].append(run(base / "src", args.n))
            runs["new"].append(run(ROOT / "src", args.n))
    metrics = ("setup_s", "compile_s", "warm_s", "first_s")
    best = {k: {m: min(r[m] for r in v) for m in metrics} for k, v in runs.items()}
    print(
        f"{args.n:,} patients of il2_treg_sledai under LUPIL-2, 85 times; best of {args.repeats}, {args.against} -> this checkout\n"
    )
    print("| | engine | setup s | compile s | warm call s | first call s |")
    print("|---|---|---:|---:|---:|---:|")
    for k, label in (("old", args.against), ("new", "this checkout")):
        b = best[k]
        print(
            f"| {label} | {runs[k][0]['engine']} | {b['setup_s']:.2f} | {b['compile_s']:.2f} | {b['warm_s']:.2f} | {b['first_s']:.2f} |"
        )
    ratio = {m: best["new"][m] / best["old"][m] for m in metrics}
    print(
        f"| new / old | | {ratio['setup_s']:.2f} | {ratio['compile_s']:.2f} | {ratio['warm_s']:.2f} | {ratio['first_s']:.2f} |"
    )
    old, new = (np.load(runs[k][0]["values"]) for k in ("old", "new"))
    scale = np.nanmax(np.abs(old), axis=(0, 1), keepdims=True)  # per observable
    print(f"\nlargest difference between the two checkouts' values, relative to each observable's largest value: "
          f"{float(np.nanmax(np.abs(new - old) / scale)):.1e}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(
            json.dumps({"against": args.against, "n": args.n, "runs": runs, "ratios": ratio}, indent=2)
        )


if __name__ == "__main__":
    main()
