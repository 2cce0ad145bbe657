"""The reference model solved from its file's equations against the hand-written code (one engine a process).

    IL2TREG_CACHE=off .venv/bin/python benchmarks/equations_engine.py hand
    IL2TREG_CACHE=off .venv/bin/python benchmarks/equations_engine.py equations

2,000 patients, LUPIL-2, 85 times: the first call (compilation included) and two warm calls, and
the mean of every value (the engines agree; tests/test_model_format.py checks them to 1e-10).
"""

from __future__ import annotations

import sys
import time

import numpy as np

import il2treg
from il2treg import regimen as rg


def main(which: str) -> None:
    model = il2treg.load_model()
    if which == "equations":
        model = model.with_equations()
    params = il2treg.sample_population(model, 2000, seed=0)
    times = np.linspace(0.0, 84.0, 85)
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        sim = il2treg.simulate(model, rg.lupil2(), times, params)
        sim.values.block_until_ready()
        seconds.append(time.perf_counter() - start)
    print(f"{which}: first {seconds[0]:.2f} s, second {seconds[1]:.2f} s, third {seconds[2]:.2f} s; "
          f"mean value {float(np.nanmean(np.asarray(sim.values))):.12g}")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "hand")
