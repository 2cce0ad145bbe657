"""The reference fit from a cold start, this checkout against an earlier commit, one right after the other.

    .venv/bin/python benchmarks/cold_fit.py --against ae5768c [--repeats 1] [--json PATH]

Runs ``IL2TREG_CACHE=off il2treg fit fits/lupil2_virtual/fit.toml --no-figures`` (what a user
meets the first time: every program compiled in the process, none loaded from disk) with this
checkout's ``src/`` and then with the ``src/`` of ``--against`` (a temporary git worktree), in the
same ``.venv``, alternating when ``--repeats`` > 1. Both read this checkout's fit file, so that
they solve the same problem after the reference fit file changes (it gained the IL-2 data and
the PK random effects at 2026-12-05); the earlier commit's code must read it. Reports, for each: the seconds to the first
L-BFGS iteration and the whole command's wall time (process start to exit), the stage times the
fit records, the OFV and the iterations; then the ratios new / old, and the largest relative
difference between the two runs' standard errors of psi. The issue's criterion: first
iteration <= 45% and the whole command <= 55% of before on this machine, the OFV equal to 1e-6.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["fit", "fits/lupil2_virtual/fit.toml", "--no-figures"]


def run(src: Path, cwd: Path) -> dict:
    out = Path(tempfile.mkdtemp(prefix="il2treg-cold-")) / "results"
    env = {**os.environ, "IL2TREG_CACHE": "off", "PYTHONPATH": str(src)}
    start = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).with_name("il2treg")), *COMMAND, "--out", str(out)], cwd=cwd, env=env,
                          capture_output=True, text=True, encoding="utf-8")
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"il2treg fit failed with {src}:\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    variances = [row[k] for k, row in enumerate(summary["covariance"])]  # NaN is stored as null
    se = [v**0.5 if v is not None and v >= 0 else float("nan") for v in variances]
    return {"wall_s": wall, "ofv": summary["ofv"], "iterations": summary["iterations"], "se_psi": se, **summary["timing"]}


@contextlib.contextmanager
def earlier_tree(revision: str):
    """A temporary git worktree of ``revision`` (its folder), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="il2treg-base-") as tmp:
        base = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), revision], cwd=ROOT, check=True, capture_output=True)
        try:
            yield base
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", required=True, help="git revision to compare with (e.g. the commit before a change)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="write the numbers to this JSON file")
    args = ap.parse_args()
    with earlier_tree(args.against) as base:
        runs = {"old": [], "new": []}
        for _ in range(args.repeats):
            runs["old"].append(run(base / "src", ROOT))  # this checkout's fit file for both: the same problem
            runs["new"].append(run(ROOT / "src", ROOT))
    best = {k: {m: min(r[m] for r in v) for m in ("first_iteration_s", "wall_s", "estimation_s", "covariance_s", "results_s")} for k, v in runs.items()}
    print(f"cold reference fit (IL2TREG_CACHE=off il2treg {' '.join(COMMAND)}), best of {args.repeats}, {args.against} -> this checkout\n")
    print("| | first iteration s | whole command s | estimation s | covariance s | results s | OFV | iterations |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for k, label in (("old", args.against), ("new", "this checkout")):
        r = runs[k][0]
        b = best[k]
        print(f"| {label} | {b['first_iteration_s']:.1f} | {b['wall_s']:.1f} | {b['estimation_s']:.1f} | {b['covariance_s']:.1f} | {b['results_s']:.1f} | {r['ofv']:.9f} | {r['iterations']} |")
    ratio = {m: best["new"][m] / best["old"][m] for m in best["new"]}
    print(f"| new / old | {ratio['first_iteration_s']:.2f} | {ratio['wall_s']:.2f} | {ratio['estimation_s']:.2f} | {ratio['covariance_s']:.2f} | {ratio['results_s']:.2f} | "
          f"{abs(runs['new'][0]['ofv'] - runs['old'][0]['ofv']) / abs(runs['old'][0]['ofv']):.1e} (relative) | |")
    se_new, se_old = (runs[k][0]["se_psi"] for k in ("new", "old"))
    print(f"\nstandard errors of psi (the covariance step): largest relative difference new / old "
          f"{max(abs(a - b) / abs(b) for a, b in zip(se_new, se_old)):.1e} over {len(se_old)} parameters")
    if args.json:
        Path(args.json).write_text(json.dumps({"against": args.against, "runs": runs, "ratios": ratio}, indent=2))


if __name__ == "__main__":
    main()
