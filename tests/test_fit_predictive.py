"""Posterior predictive simulation of new patients under any regimen, from a committed fit."""

from __future__ import annotations

import numpy as np
import pytest

import il2treg
from il2treg.errors import InputError
from il2treg.fit import load_fit
from il2treg.fit.predictive import posterior_predictive

pytestmark = pytest.mark.slow  # `make test-all` and CI run these; `make test` leaves them out


@pytest.fixture(scope="module")
def result():
    return load_fit("fits/lupil2_virtual/results")


@pytest.fixture(scope="module")
def both(result):
    times = np.asarray([0.0, 7.0, 28.0, 84.0])
    il2 = posterior_predictive(result, il2treg.regimen.lupil2(), times, n_draws=6, n_patients=5, seed=1)
    placebo = posterior_predictive(result, il2treg.regimen.placebo(), times, n_draws=6, n_patients=5, seed=1)
    return il2, placebo


def test_dims_and_variables(both):
    il2, _ = both
    assert dict(il2.sizes) == {"draw": 6, "patient": 5, "time": 4}
    assert il2["treg_per_uL"].dims == ("draw", "patient", "time")
    assert il2["p_sri4"].dims == ("draw", "patient")
    assert np.all((il2["p_sri4"] >= 0) & (il2["p_sri4"] <= 1))
    np.testing.assert_allclose(il2["treg_fold"].values[..., 0], 1.0)


def test_draws_carry_parameter_uncertainty_and_patients_variability(both, result):
    il2, _ = both
    assert np.unique(il2["emax_treg"].values).size == 6  # different posterior draws
    assert np.all(il2["emax_treg"].values > 0)
    treg0 = il2["treg_per_uL"].values[:, :, 0]
    assert np.all(np.std(treg0, axis=1) > 0)  # patients differ within a draw


def test_il2_expands_tregs_and_raises_sri4_against_placebo(both):
    il2, placebo = both
    np.testing.assert_allclose(placebo["treg_fold"].values, 1.0, rtol=1e-6)
    assert float(il2["treg_fold"].sel(time=7.0).median()) > 1.3
    assert float(il2["p_sri4"].mean()) > float(placebo["p_sri4"].mean())


def test_bad_times_are_refused(result):
    with pytest.raises(InputError, match="sorted"):
        posterior_predictive(result, il2treg.regimen.lupil2(), [7.0, 0.0])
