"""The shipped PK models (NONMEM's ADVAN1-4) against their closed forms: IV bolus, zero-order
infusion (modelled duration), first-order absorption with lag and F; single, multiple and
overlapping doses."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
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


# ----------------------------------------------------------------------------- dose records: RATE, SS, EVID 3/4, CMT
#
# Each scenario is a NONMEM table (TIME in hours) read by read_dataset with the model's dosing
# inputs and solved with its DoseRecords; the expected concentration sums, independently of the
# reader and the solver, the one-compartment unit responses of the doses the records describe: a
# steady state (SS 1) is its dose repeated every II back to 2,000 intervals before (the series'
# tail is below 1e-100 here), with everything before it forgotten; SS 2 adds that series; a
# reset (EVID 3, 4) forgets every dose before it and stops running infusions; both cancel the
# additional doses (ADDL) of earlier rows still to come. F scales the duration of an infusion at a
# rate the data give (the amount F AMT at RATE).

REC_HOURS = np.array([0.0, 0.7, 3.3, 6.0, 7.9, 12.1, 17.6, 24.0, 25.5, 30.2, 36.5, 47.3, 55.8, 71.9])
SERIES = 2000

#: name: (model, rows "TIME AMT RATE SS II ADDL CMT EVID", parameters)
RECORD_SCENARIOS = {
    "ss-bolus": ("pk_1cmt_iv", ["0 100 0 1 12 3 1 1"], {}),
    "ss-bolus-forgets-earlier-doses": ("pk_1cmt_iv", ["0 100 0 0 0 0 1 1", "24 50 0 1 8 2 1 1"], {}),
    "ss2-bolus-adds-to-earlier-doses": ("pk_1cmt_iv", ["0 100 0 0 0 0 1 1", "24 50 0 2 8 2 1 1"], {}),
    "ss-bolus-noninteger-ii": ("pk_1cmt_iv", ["6 80 0 1 7.5 4 1 1"], {"CL": 3.1}),
    "rate-infusion": ("pk_1cmt_iv", ["0 100 25 0 0 0 1 1"], {}),
    "rate-infusion-overlapping-next-dose": ("pk_1cmt_iv", ["0 100 10 0 6 3 1 1"], {"CL": 0.9}),
    "ss-infusion": ("pk_1cmt_iv", ["0 120 40 1 12 2 1 1"], {}),
    "rate-overrides-model-duration": ("pk_1cmt_infusion", ["0 100 50 0 12 2 1 1"], {}),
    "rate-minus-2-is-model-duration": ("pk_1cmt_infusion", ["0 100 -2 0 12 2 1 1"], {"D": 3.0}),
    "ss-model-duration": ("pk_1cmt_infusion", ["0 100 -2 1 12 0 1 1"], {"D": 5.0}),
    "reset": ("pk_1cmt_iv", ["0 100 0 0 12 2 1 1", "30 0 0 0 0 0 1 3", "36.5 40 0 0 0 0 1 1"], {}),
    "reset-and-dose": ("pk_1cmt_iv", ["0 100 0 0 12 3 1 1", "40 60 0 0 0 0 1 4"], {}),
    "reset-stops-an-infusion": ("pk_1cmt_iv", ["0 100 4 0 0 0 1 1", "12.1 0 0 0 0 0 1 3", "24 50 5 0 12 2 1 1"], {}),
    "oral-ss-with-lag": ("pk_1cmt_oral", ["0 100 0 1 12 2 1 1"], {"tlag": 2.0}),
    "oral-ss-lag-near-ii": ("pk_1cmt_oral", ["0 100 0 1 6 5 1 1"], {"tlag": 4.5, "ka": 0.5}),
    "cmt-2-is-the-central-compartment": ("pk_1cmt_oral", ["0 100 0 0 0 0 1 1", "6 50 0 0 12 2 2 1"], {}),
    "cmt-2-ss-beside-oral": ("pk_1cmt_oral", ["0 40 0 1 8 3 2 1", "10 100 0 0 0 0 1 1"], {"F": 0.5}),
    "oral-rate-f-scales-the-duration": ("pk_1cmt_oral", ["0 100 20 0 12 2 1 1"], {"F": 0.5}),
    "ss-cancels-pending-addl": ("pk_1cmt_iv", ["0 100 0 0 12 10 1 1", "30 50 0 1 8 1 1 1"], {}),
    "reset-cancels-pending-addl": ("pk_1cmt_iv", ["0 100 0 0 12 10 1 1", "30 0 0 0 0 0 1 3", "40 60 0 0 0 0 1 1"], {}),
}
_FAST_RECORDS = ("ss-bolus", "rate-infusion", "reset", "cmt-2-is-the-central-compartment")


def _record_table(rows: list[str]) -> str:
    lines = [tuple(float(x) for x in r.split()) for r in rows] + [(t, 0, 0, 0, 0, 0, 0, 0) for t in REC_HOURS]
    lines.sort(key=lambda r: (r[0], r[7] == 0))  # observations after the records at their time
    text = ["ID TIME AMT RATE SS II ADDL CMT EVID DV"]
    for t, a, rate, ss, ii, addl, cmt, evid in lines:
        text.append(f"1 {t:g} {a:g} {rate:g} {ss:g} {ii:g} {addl:g} {cmt:g} {evid:g} {1 if evid == 0 else 0}")
    return "\n".join(text) + "\n"


def _pieces(rows: list[str], p: dict, model_duration: float | None):
    """Every dose the rows describe as (origin, entry, amount, route, duration) in hours: origin
    is its record's time (a steady state's series has its record's time too, and is seen from
    then on), entry the time it enters (after the lag); and the times of resets (EVID 3, 4, SS 1)."""
    pieces, resets = [], []
    parsed = [tuple(float(x) for x in row.split()) for row in rows]
    clears = [(i, r[0]) for i, r in enumerate(parsed) if r[7] in (3, 4) or r[3] == 1]
    for i, (t, a, rate, ss, ii, addl, cmt, evid) in enumerate(parsed):
        if evid in (3, 4) or ss == 1:
            resets.append(t)
        if evid == 3:
            continue
        oral = cmt == 1 and "ka" in p
        lag, f = (p["tlag"] * 24, p["F"]) if oral else (0.0, 1.0)
        duration = f * a / rate if rate > 0 else (model_duration if model_duration is not None else 0.0)
        route = "depot" if oral else "central"
        given = [t + j * ii for j in range(int(addl) + 1) if j == 0 or not any(r > i and u <= t + j * ii for r, u in clears)]
        series = [t - m * ii for m in range(SERIES, 0, -1)] if ss else []
        pieces += [(t if s in series else s, s + lag, f * a, route, duration) for s in series + given]
    return pieces, resets


def _expected(p: dict, pieces, resets, hours: np.ndarray) -> np.ndarray:
    """The sum of the unit responses of the pieces seen at each time: those whose origin is at or
    before it and after the last reset at or before it (a dose at a reset's own record comes
    after the reset)."""
    k, v = p["CL"] / p["V"] / 24, p["V"]  # 1/h, L
    ka = p.get("ka", 0.0) / 24
    out = np.zeros_like(hours)
    for i, t in enumerate(hours):
        last = max([r for r in resets if r <= t], default=-np.inf)
        for origin, entry, amount, route, duration in pieces:
            s = t - entry
            if origin > t or origin < last or s <= 0:
                continue
            if route == "depot" and duration > 0:
                m = min(s, duration)
                out[i] += amount / duration * ka / (v * (ka - k)) * (
                    (np.exp(-k * (s - m)) - np.exp(-k * s)) / k - (np.exp(-ka * (s - m)) - np.exp(-ka * s)) / ka
                )
            elif route == "depot":
                out[i] += amount * ka / (v * (ka - k)) * (np.exp(-k * s) - np.exp(-ka * s))
            elif duration > 0:
                out[i] += amount / duration / (v * k) * (np.exp(-k * max(s - duration, 0.0)) - np.exp(-k * s))
            else:
                out[i] += amount / v * np.exp(-k * s)
    return out


_RECORD_SOLVES: dict = {}


def _record_solve(model):
    """One compiled solve per model, shared by the scenarios (doses padded to 12 plain ones, one
    steady-state slot)."""
    key = model.name
    if key not in _RECORD_SOLVES:
        from il2treg.simulate import solve_one

        slots = len(REC_HOURS)
        _RECORD_SOLVES[key] = jax.jit(lambda theta, dt, da, rec, obs: solve_one(model.mechanism, theta, dt, da, obs, TIGHT, slots, records=rec))
    return _RECORD_SOLVES[key]


@pytest.mark.parametrize("name", [n if n in _FAST_RECORDS else pytest.param(n, marks=pytest.mark.slow) for n in RECORD_SCENARIOS])
def test_dose_records_match_the_closed_form(name, tmp_path):
    from il2treg.records import DoseRecords, pad_records

    model_name, rows, overrides = RECORD_SCENARIOS[name]
    model = il2treg.load_model(model_name)
    path = tmp_path / "records.dta"
    path.write_text(_record_table(rows))
    data = il2treg.data.read_dataset(path, observables=model.observable_names, time_unit="h", doses=model.dosing_inputs)
    values = np.asarray(model.typical().values).copy()
    for key, declared in overrides.items():
        values[model.parameter_names.index(key)] = model.spec[key].to_internal(declared)
    records = data.records()  # none where RATE -2 is the input's own way: plain records then
    one = DoseRecords.plain(data.dose_time.shape[1]) if records is None else jax.tree.map(lambda x: x[0], records)
    # every scenario with one steady-state slot (unused where it has no SS): one compiled solve per model
    one = DoseRecords(one.input, one.duration, one.reset, one.ss, one.ii, steady_states=1)
    extra = 12 - data.dose_time.shape[1]
    dt = np.concatenate([data.dose_time[0], np.full(extra, data.dose_time[0, -1])])
    da = np.concatenate([data.dose_amount[0], np.zeros(extra)])
    got, status = _record_solve(model)(jnp.asarray(values), dt, da, pad_records(one, extra), jnp.asarray(data.obs_time[0]))
    assert int(status) == 0
    p = dict(zip(model.parameter_names, values))
    infused = model.mechanism.dose_infused[0]
    pieces, resets = _pieces(rows, p, p["D"] * 24 if infused else None)
    expected = _expected(p, pieces, resets, REC_HOURS)
    assert np.count_nonzero(expected) >= 8
    np.testing.assert_allclose(np.asarray(got).ravel(), expected, rtol=1e-7, atol=1e-12 * expected.max())


def _simulated_records(name: str, tmp_path, traced: bool = False):
    """Scenario ``name`` read as a regimen (``read_regimen_csv``, the dataset's reader) and
    simulated by :func:`il2treg.simulate` beside a patient of plain doses (``traced``: under
    ``jit``, where simulate solves the records as given, unpadded); the values and the closed form."""
    model_name, rows, overrides = RECORD_SCENARIOS[name]
    model = il2treg.load_model(model_name)
    path = tmp_path / "records.dta"
    path.write_text(_record_table(rows))
    regimen = rg.read_regimen_csv(path, doses=model.dosing_inputs, time_unit="h")
    assert regimen.records is not None
    values = np.asarray(model.typical().values).copy()
    for key, declared in overrides.items():
        values[model.parameter_names.index(key)] = model.spec[key].to_internal(declared)
    params = il2treg.Parameters(values, model.parameter_names)
    batch = rg.stack([regimen, rg.Regimen([0.0], [0.0])])
    run = lambda r: il2treg.simulate(model, r, REC_HOURS / 24.0, params, options=TIGHT)
    sim = eqx.filter_jit(run)(batch) if traced else run(batch)
    assert np.asarray(sim.status).tolist() == [0, 0]
    p = dict(zip(model.parameter_names, values))
    pieces, resets = _pieces(rows, p, None)
    return np.asarray(sim["conc"]), _expected(p, pieces, resets, REC_HOURS)


def test_simulate_takes_a_regimen_of_dose_records_read_by_the_dataset_reader(tmp_path):
    """An SS 1 infusion (RATE) and its ADDL doses through simulate()'s batched, padded path."""
    got, expected = _simulated_records("ss-infusion", tmp_path)
    np.testing.assert_allclose(got[0], expected, rtol=1e-7, atol=1e-12 * expected.max())
    np.testing.assert_array_equal(got[1], 0.0)


@pytest.mark.slow
def test_simulate_takes_traced_dose_records_into_a_second_input(tmp_path):
    """Under jit (records traced): an SS dose into CMT 2 beside oral doses into CMT 1."""
    got, expected = _simulated_records("cmt-2-ss-beside-oral", tmp_path, traced=True)
    np.testing.assert_allclose(got[0], expected, rtol=1e-7, atol=1e-12 * expected.max())
    np.testing.assert_array_equal(got[1], 0.0)


def _oral_periods(values: np.ndarray, starts: np.ndarray, doses: list[tuple[float, float]], times: np.ndarray) -> np.ndarray:
    """Concentrations of the one-compartment oral model whose parameters change at ``starts``
    (``values[p]``: ka, tlag, F, CL, V of period p in days and litres), stepped exactly from
    event to event: each dose's F and lag those of its record's period (last value carried
    forward), the depot and central amounts decaying in closed form between events, the
    concentration read with the V of the observation's period."""
    period = lambda t: int(np.searchsorted(starts, t, side="right") - 1)
    entries = [(t + values[period(t)][1], values[period(t)][2] * amount) for t, amount in doses]

    def advance(state, t0, t1):
        ka, _, _, cl, v = values[period(t0)]
        k, dt = cl / v, t1 - t0
        depot, central = state
        return (depot * np.exp(-ka * dt), central * np.exp(-k * dt) + depot * ka / (ka - k) * (np.exp(-k * dt) - np.exp(-ka * dt)))

    out = []
    for t in times:
        cuts = sorted({0.0, *[s for s in starts[1:] if s < t], *[e for e, _ in entries if e < t]})
        state = (0.0, 0.0)
        for a, b in zip(cuts, [*cuts[1:], t]):
            state = (state[0] + sum(f for e, f in entries if e == a), state[1])
            state = advance(state, a, b)
        out.append(state[1] / values[period(t)][4])
    return np.asarray(out)


def test_parameters_that_change_over_time_follow_the_last_value_carried_forward():
    """Three periods of pk_1cmt_oral (CL, V and ka change at day 0.8; F, the lag and CL at 1.5,
    where a dose is given: it takes the new F and lag) against the exact event-stepped solution,
    through the plain doses' and the dose records' paths. An observation at a period start reads
    the new V; a padded period (the last start and row repeated) changes nothing."""
    from il2treg.records import DoseRecords
    from il2treg.simulate import solve_one

    model = il2treg.load_model("pk_1cmt_oral")
    base = np.asarray(model.typical().values)  # ka 24/d, tlag 0.0208 d, F 0.8, CL 48 L/d, V 20 L
    rows = np.stack([base, base * [1.5, 1.0, 1.0, 0.5, 1.25], base * [1.5, 3.0, 0.5, 1.5, 1.25], base * [1.5, 3.0, 0.5, 1.5, 1.25]])
    starts = np.array([0.0, 0.8, 1.5, 1.5])
    doses = [(0.0, 100.0), (1.0, 50.0), (1.5, 80.0), (2.2, 60.0)]
    times = np.array([0.3, 0.8, 0.8, 1.2, 1.5, 1.55, 1.7, 2.0, 2.2, 2.5, 3.0])
    expected = _oral_periods(rows, starts, doses, times)
    dt, da = (jnp.asarray(x) for x in zip(*doses))
    solve = lambda records: solve_one(model.mechanism, jnp.asarray(rows), dt, da, jnp.asarray(times), TIGHT, 4, records=records, periods=jnp.asarray(starts))
    for records in (None, DoseRecords(np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4), np.zeros(4))):
        got, status = jax.jit(solve)(records)
        assert int(status) == 0
        np.testing.assert_allclose(np.asarray(got)[:, 0], expected, rtol=1e-8)
    # the change at 0.8 moves V: the concentration jumps there (read after the change)
    before = _oral_periods(rows[:1], starts[:1], doses, np.array([0.8]))
    assert abs(expected[1] - before[0]) > 0.1 * before[0]
