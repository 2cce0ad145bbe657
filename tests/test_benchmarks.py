"""The benchmarks' scipy baseline: its NumPy copy of the model must stay the model.

benchmarks/simulate.py holds a plain-Python right-hand side for scipy's LSODA (used by every
benchmark's scipy column). A change of il2treg's equations that is not carried over makes the
baseline solve another model; these checks catch it in the test suite instead of at benchmark
time.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import il2treg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from simulate import check_rhs, solve_lsoda


def test_numpy_right_hand_side_equals_the_model_at_random_states(model):
    params = il2treg.sample_population(model, 5, seed=0)
    assert check_rhs(model, params) < 1e-12


def test_lsoda_baseline_reproduces_il2treg_under_lupil2(model, lupil2, tight):
    params = il2treg.sample_population(model, 2, seed=3)
    times = np.linspace(0.0, 84.0, 85)
    mine = np.asarray(il2treg.simulate(model, lupil2, times, params, options=tight).values)
    for i in range(2):
        theirs, _ = solve_lsoda(np.asarray(params.values[i]), model.parameter_names, model.structure,
                                np.asarray(lupil2.times), np.asarray(lupil2.amounts), times, rtol=1e-10, atol=1e-12)  # fmt: skip
        assert np.max(np.abs(theirs - mine[i]) / np.abs(mine[i])) < 1e-6
