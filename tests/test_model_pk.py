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


# ----------------------------------------------------------------------------- dosing records, as mrgsolve's nmtests
#
# Each scenario is a NONMEM dataset (TIME in hours, doses with ADDL/II) read by il2treg.read_dataset
# and simulated with the patient's doses from it, against the closed form summed over the doses the
# scenario lists (expanded here, independently of the reader). Parameters in the model file's units
# (h, L, mg); those not given stay at the model's values.

HOURS = np.array([0.7, 3.3, 7.9, 12.1, 17.6, 23.9, 30.2, 36.5, 47.3, 55.8, 63.1, 71.9])  # none on a dose time

#: name: (model, dose rows (time h, amount mg, ADDL, II h), parameters)
SCENARIOS = {
    "bolus": ("pk_1cmt_iv", [(0, 100, 0, 0)], {}),
    "bolus-addl": ("pk_1cmt_iv", [(0, 100, 3, 12)], {}),
    "bolus-noninteger-ii": ("pk_1cmt_iv", [(0, 80, 5, 7.5)], {"CL": 3.1}),
    "bolus-two-runs": ("pk_1cmt_iv", [(0, 100, 2, 12), (36, 50, 4, 8)], {}),
    "bolus-same-time": ("pk_1cmt_iv", [(0, 100, 0, 0), (0, 50, 1, 24)], {}),
    "bolus-late-start": ("pk_1cmt_iv", [(5.5, 60, 6, 9.25)], {"V": 12.0}),
    "infusion": ("pk_1cmt_infusion", [(0, 100, 0, 0)], {}),
    "infusion-addl": ("pk_1cmt_infusion", [(0, 100, 5, 12)], {"D": 3.0}),
    "infusion-overlapping": ("pk_1cmt_infusion", [(0, 100, 6, 4)], {"D": 6.0}),
    "infusion-noninteger-ii": ("pk_1cmt_infusion", [(1.5, 40, 7, 6.4)], {"D": 1.25}),
    "oral": ("pk_1cmt_oral", [(0, 100, 0, 0)], {}),
    "oral-addl": ("pk_1cmt_oral", [(0, 100, 5, 12)], {}),
    "oral-bioavailability": ("pk_1cmt_oral", [(0, 100, 5, 12)], {"F": 0.35}),
    "oral-lag-longer-than-ii": ("pk_1cmt_oral", [(0, 100, 6, 6)], {"tlag": 10.0}),
    "oral-no-lag": ("pk_1cmt_oral", [(0, 100, 3, 24)], {"tlag": 0.0}),
    "oral-noninteger-ii": ("pk_1cmt_oral", [(0, 50, 8, 5.5)], {"ka": 0.4}),
    "2cmt-bolus-addl": ("pk_2cmt_iv", [(0, 100, 3, 12)], {}),
    "2cmt-infusion-overlapping": ("pk_2cmt_infusion", [(0, 100, 5, 3)], {"D": 4.5}),
    "2cmt-oral-lag-longer-than-ii": ("pk_2cmt_oral", [(0, 100, 5, 8)], {"tlag": 11.0}),
    "2cmt-oral-noninteger-ii": ("pk_2cmt_oral", [(2, 75, 6, 9.7)], {}),
}
_FAST_DOSING = ("pk_1cmt_iv", "pk_1cmt_infusion", "pk_1cmt_oral")


def _records(doses) -> str:
    """The scenario as a NONMEM dataset (hours; EVID derived from AMT, one observable, so no DVID)."""
    rows = [(t, a, addl, ii) for t, a, addl, ii in doses] + [(t, 0, 0, 0) for t in HOURS]
    rows.sort(key=lambda r: (r[0], r[1] == 0))
    lines = ["ID TIME AMT ADDL II DV"] + [f"1 {t:g} {a:g} {addl} {ii:g} {1.0 if a == 0 else 0}" for t, a, addl, ii in rows]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", [n if SCENARIOS[n][0] in _FAST_DOSING else pytest.param(n, marks=pytest.mark.slow) for n in SCENARIOS])
def test_dosing_records_match_the_closed_form(name, tmp_path):
    model_name, doses, overrides = SCENARIOS[name]
    model = il2treg.load_model(model_name)
    path = tmp_path / "records.dta"
    path.write_text(_records(doses))
    data = il2treg.data.read_dataset(path, observables=model.observable_names, time_unit="h")
    regimen = rg.Regimen(times=data.dose_time[0], amounts=data.dose_amount[0])
    values = np.asarray(model.typical().values).copy()
    for key, declared in overrides.items():  # in the file's units, bounds not applied (a lag beyond them is a scenario)
        values[model.parameter_names.index(key)] = model.spec[key].to_internal(declared)
    sim = il2treg.simulate(model, regimen, data.obs_time[0], il2treg.Parameters(values, model.parameter_names), options=TIGHT)
    assert int(np.asarray(sim.status)) == 0
    expected_doses = sorted((t + j * ii, a) for t, a, addl, ii in doses for j in range(addl + 1))
    listed = rg.Regimen(times=np.array([t for t, _ in expected_doses]) / 24.0, amounts=np.array([a for _, a in expected_doses]))
    assert len(expected_doses) == int(np.sum(data.dose_row[0] > 0))
    p = dict(zip(model.parameter_names, values))
    expected = closed_form(model_name, p, listed, HOURS / 24.0)
    got = np.asarray(sim["conc"]).ravel()
    before = expected == 0.0
    np.testing.assert_array_equal(got[before], 0.0)
    assert (~before).sum() >= 8  # most samples see a dose
    np.testing.assert_allclose(got[~before], expected[~before], rtol=1e-8, atol=0)
