"""Shared fixtures: one model and a few regimens per session, so compiled solves are reused."""

from __future__ import annotations

import numpy as np
import pytest

import il2treg


@pytest.fixture(scope="session")
def model():
    return il2treg.load_model()


@pytest.fixture(scope="session")
def model_no_sink(model):
    return model.with_structure(receptor_sink=False)


@pytest.fixture(scope="session")
def lupil2():
    return il2treg.regimen.lupil2()


@pytest.fixture(scope="session")
def tight():
    """Tolerances for reference comparisons (closed forms, finite differences)."""
    return il2treg.SolverOptions(rtol=1e-11, atol=1e-14, max_steps=200_000)


@pytest.fixture(scope="session")
def daily_grid():
    return np.arange(0.0, 84.0 + 1e-9, 0.25)
