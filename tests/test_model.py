"""Specification of the model object: parameters, variants, populations."""

from __future__ import annotations

import numpy as np
import pytest

import il2treg
from il2treg.errors import SpecError


def test_parameters_are_given_in_the_units_of_the_model_file(model):
    p = model.parameters(ka=0.3)  # 1/h in the file
    assert float(p["ka"]) == pytest.approx(0.3 * 24)


def test_parameter_outside_bounds_is_rejected_with_the_bounds(model):
    with pytest.raises(SpecError, match=r"'ka' = 100 1/h is outside its bounds \[0.05, 1\] 1/h"):
        model.parameters(ka=100)


def test_unknown_parameter_is_rejected(model):
    with pytest.raises(SpecError, match="no parameter 'kaa'"):
        model.parameters(kaa=1.0)


def test_population_variability_matches_the_declared_cv(model):
    pop = il2treg.sample_population(model, 20000, seed=0)
    for name in ("CL", "treg0", "emax_treg"):
        spec = model.spec[name]
        log_ratio = np.log(np.asarray(pop[name]) / spec.value)
        assert np.std(log_ratio) == pytest.approx(spec.omega, rel=0.03)
    assert np.all(np.asarray(pop["F"]) == model.spec["F"].value)  # no variability declared


def test_population_is_reproducible_from_its_seed(model):
    a = il2treg.sample_population(model, 5, seed=7).values
    b = il2treg.sample_population(model, 5, seed=7).values
    np.testing.assert_array_equal(a, b)


def test_variant_without_delay_has_neither_transit_states_nor_mtt(model):
    no_delay = il2treg.load_model("il2_treg_sledai_no_delay")
    assert len(no_delay.state_names) == len(model.state_names) - 9
    assert not any(name.startswith("transit_") for name in no_delay.state_names)
    assert no_delay.parameter_names == tuple(n for n in model.parameter_names if n != "mtt")
    assert no_delay.spec["ka"] == model.spec["ka"]  # the base's parameters, as declared there


def test_with_values_changes_the_typical_patient(model):
    variant = model.with_values(emax_treg=2.0)
    assert float(variant.typical()["emax_treg"]) == 2.0
    assert float(model.typical()["emax_treg"]) != 2.0


def test_hill_signal_equals_the_power_formula_over_the_whole_range():
    # hill_log computes C^n / (EC50^n + C^n) from logarithms (cheaper derivatives); it must be the
    # same function, including where a power would under- or overflow.
    import jax.numpy as jnp

    from handwritten import cells

    c = np.geomspace(1e-6, 1e6, 61)
    for ec50, n in ((0.5, 1.0), (3.0, 1.7), (40.0, 0.6)):
        expected = c**n / (ec50**n + c**n)
        got = np.asarray(cells.hill(jnp.asarray(c), ec50, n))
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-300)
    assert float(cells.hill(jnp.asarray(0.0), 1.0, 1.5)) == 0.0
    assert float(cells.hill(jnp.asarray(1e300), 1.0, 1.5)) == 1.0


def test_typical_draws_follow_the_declared_priors_and_leave_the_rest(model):
    """Parameter uncertainty: each named parameter's typical value is log- or logit-normal about
    its value with the declared prior_sd on that scale; the others stay at their values."""
    draws = il2treg.model.draw_typical(model, 20000, seed=1, names=("r50", "imax"))
    typical = np.asarray(model.typical().values)
    values = np.asarray(draws.values)
    r50, imax = (list(model.parameter_names).index(n) for n in ("r50", "imax"))
    z = np.log(values[:, r50] / typical[r50])
    assert np.std(z) == pytest.approx(model.spec["r50"].prior_sd, rel=0.03) and abs(np.mean(z)) < 0.01
    logit = lambda p: np.log(p / (1 - p))
    assert np.std(logit(values[:, imax]) - logit(typical[imax])) == pytest.approx(model.spec["imax"].prior_sd, rel=0.03)
    others = [k for k in range(len(typical)) if k not in (r50, imax)]
    np.testing.assert_array_equal(values[:, others], np.broadcast_to(typical[others], (20000, len(others))))


def test_a_typical_draw_needs_a_declared_prior(model):
    assert model.spec["ka"].prior_sd is None
    with pytest.raises(SpecError, match=r"'ka'.*no prior_sd.*Fix: add prior_sd"):
        il2treg.model.draw_typical(model, 3, names=["ka"])
    with pytest.raises(SpecError, match="no parameter 'r5'"):
        il2treg.model.draw_typical(model, 3, names=["r5"])
