"""The replicate loop that the recovery benchmarks share (omega_block.py, iov.py): simulate a
cohort, write it with its fit file into a scratch folder, fit it, and keep one row per replicate.
Not a benchmark of its own."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from il2treg.fit.estimators import estimator_named
from il2treg.fit.run import compute_fit
from il2treg.fit.spec import read_fit_spec


def fit_replicates(replicates: int, seed0: int, method: str, cohort: Callable[[int], str], fit_file: str,
                   row: Callable[[pd.DataFrame], dict], describe: Callable[[dict], str]) -> list[dict]:  # fmt: skip
    """Fit ``replicates`` cohorts (seeds ``seed0``, ``seed0 + 1``, ...): ``cohort(seed)`` is the
    data file's text, ``fit_file`` the fit file's (its ``data`` is ``data.csv``), ``method`` an
    estimator's name. Each row holds the seed, convergence, OFV, wall time (s) and what ``row``
    reads from the estimates table (indexed by parameter); ``describe(row)`` is printed per replicate."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(replicates):
            seed = seed0 + r
            folder = Path(tmp) / f"replicate_{seed}"
            folder.mkdir()
            (folder / "data.csv").write_text(cohort(seed), encoding="utf-8")
            (folder / "fit.toml").write_text(fit_file, encoding="utf-8")
            t = time.perf_counter()
            result = compute_fit(read_fit_spec(folder / "fit.toml"), estimator=estimator_named(method))
            wall = time.perf_counter() - t
            out = {"seed": seed, "converged": bool(result.converged), "ofv": float(result.ofv), "wall_s": wall, **row(result.estimates.set_index("parameter"))}
            rows.append(out)
            print(f"replicate {r + 1}/{replicates} (seed {seed}): {describe(out)}, converged {out['converged']}, {wall:.1f} s", flush=True)
    return rows
