"""The shipped PK models (NONMEM's ADVAN1-4) against their closed forms: IV bolus, zero-order
infusion (modelled duration), first-order absorption with lag and F; single, multiple and
overlapping doses."""

from __future__ import annotations

import numpy as np
import pytest

import il2treg
from il2treg import regimen as rg

TIGHT = il2treg.SolverOptions(rtol=1e-12, atol=1e-14, max_steps=100_000)
TIMES = np.linspace(0.0, 3.0, 61)[1:] + 0.013  # days; none on a dose time (a dose time reads the pre-dose value)
REGIMENS = {
    "single": rg.Regimen(times=np.array([0.0]), amounts=np.array([100.0])),
    "multiple": rg.Regimen(times=np.array([0.0, 0.5, 1.0, 1.75]), amounts=np.array([100.0, 50.0, 100.0, 25.0])),
    # infusions overlap where one starts before the last has stopped (D up to 2.6 h here)
    "overlapping": rg.Regimen(times=np.array([0.0, 0.05, 1.0]), amounts=np.array([100.0, 50.0, 80.0])),
}


def _one_compartment(p, t):
    """Concentration per unit dose t days after it enters (bolus into the central compartment)."""
    return np.exp(-p["CL"] / p["V"] * t) / p["V"]


def _one_compartment_oral(p, t):
    k, ka = p["CL"] / p["V"], p["ka"]
    return p["F"] * ka / (p["V"] * (ka - k)) * (np.exp(-k * t) - np.exp(-ka * t))


def _rates(p):
    """alpha > beta: the eigenvalues of the two-compartment system (k10, k12, k21)."""
    k10, k12, k21 = p["CL"] / p["V1"], p["Q"] / p["V1"], p["Q"] / p["V2"]
    s, prod = k10 + k12 + k21, k10 * k21
    root = np.sqrt(s * s - 4 * prod)
    return (s + root) / 2, (s - root) / 2, k21


def _two_compartment(p, t):
    alpha, beta, k21 = _rates(p)
    return ((alpha - k21) * np.exp(-alpha * t) + (k21 - beta) * np.exp(-beta * t)) / ((alpha - beta) * p["V1"])


def _two_compartment_oral(p, t):
    alpha, beta, k21 = _rates(p)
    ka = p["ka"]
    terms = ((k21 - alpha) / ((ka - alpha) * (beta - alpha)) * np.exp(-alpha * t)
             + (k21 - beta) / ((ka - beta) * (alpha - beta)) * np.exp(-beta * t)
             + (k21 - ka) / ((alpha - ka) * (beta - ka)) * np.exp(-ka * t))  # fmt: skip
    return p["F"] * ka / p["V1"] * terms


def _infused(rates):
    """The response to a unit infusion rate running from 0 to d, from the unit bolus response
    ``sum_i c_i exp(-lambda_i t)`` (``rates``: its (c_i, lambda_i)): the integral
    ``sum_i c_i / lambda_i (exp(-lambda_i max(t - d, 0)) - exp(-lambda_i t))``."""

    def response(p, t):
        d = p["D"]
        return sum(c / lam * (np.exp(-lam * np.maximum(t - d, 0.0)) - np.exp(-lam * t)) for c, lam in rates(p)) / d

    return response


def _one_compartment_terms(p):
    return [(1.0 / p["V"], p["CL"] / p["V"])]


def _two_compartment_terms(p):
    alpha, beta, k21 = _rates(p)
    return [((alpha - k21) / ((alpha - beta) * p["V1"]), alpha), ((k21 - beta) / ((alpha - beta) * p["V1"]), beta)]


CLOSED_FORMS = {
    "pk_1cmt_iv": (_one_compartment, False),
    "pk_1cmt_infusion": (_infused(_one_compartment_terms), False),
    "pk_2cmt_infusion": (_infused(_two_compartment_terms), False),
    "pk_1cmt_oral": (_one_compartment_oral, True),
    "pk_2cmt_iv": (_two_compartment, False),
    "pk_2cmt_oral": (_two_compartment_oral, True),
}


def closed_form(name: str, p: dict, regimen: rg.Regimen, t: np.ndarray) -> np.ndarray:
    """Superposition over the doses that started strictly before ``t`` (after the lag); the dose
    amount times the response per unit dose (a bolus) or per unit of amount infused over ``D``."""
    unit, lagged = CLOSED_FORMS[name]
    lag = p["tlag"] if lagged else 0.0
    out = np.zeros_like(t)
    for when, amount in zip(regimen.times, regimen.amounts):
        since = t - (when + lag)
        out += np.where(since > 0, amount * unit(p, np.maximum(since, 0.0)), 0.0)
    return out


_FAST = ("pk_1cmt_oral", "pk_1cmt_infusion")  # the others compile a program each: slow tier


@pytest.mark.parametrize("regimen", list(REGIMENS))
@pytest.mark.parametrize("name", [n if n in _FAST else pytest.param(n, marks=pytest.mark.slow) for n in CLOSED_FORMS])
def test_pk_model_matches_its_closed_form(name, regimen):
    model = il2treg.load_model(name)
    assert model.observable_names == ("conc",)
    reg = REGIMENS[regimen]
    # Two patients: the typical one and one with every parameter moved (F and the lag too).
    typical = model.typical()
    moved = {n: v * f for n, v, f in zip(model.parameter_names, np.asarray(typical.values), (0.7, 1.3, 0.9, 1.2, 0.8, 1.1, 0.6))}
    values = np.stack([np.asarray(typical.values), [moved[n] for n in model.parameter_names]])
    sim = il2treg.simulate(model, reg, TIMES, il2treg.Parameters(values, model.parameter_names), options=TIGHT)
    assert np.all(np.asarray(sim.status) == 0)
    for row in range(2):
        p = dict(zip(model.parameter_names, values[row]))
        expected = closed_form(name, p, reg, TIMES)
        got = np.asarray(sim["conc"])[row]
        before = expected == 0.0  # before the first dose enters: exactly nothing
        np.testing.assert_array_equal(got[before], 0.0)
        np.testing.assert_allclose(got[~before], expected[~before], rtol=1e-8, atol=0)


def test_lag_and_bioavailability_act_as_declared():
    """F scales the oral curve exactly; the lag shifts it exactly (pk_1cmt_oral)."""
    model = il2treg.load_model("pk_1cmt_oral")
    reg = REGIMENS["single"]
    base = il2treg.simulate(model, reg, TIMES, model.parameters(F=0.5, tlag=0.0), options=TIGHT)["conc"]
    half = il2treg.simulate(model, reg, TIMES, model.parameters(F=0.25, tlag=0.0), options=TIGHT)["conc"]
    np.testing.assert_allclose(np.asarray(half), 0.5 * np.asarray(base), rtol=1e-12)
    lagged = il2treg.simulate(model, reg, TIMES + 0.25, model.parameters(F=0.5, tlag=6.0), options=TIGHT)["conc"]
    np.testing.assert_allclose(np.asarray(lagged), np.asarray(base), rtol=1e-8)
