"""Regimen comparison and design: metrics against closed forms, gradients against finite
differences, the optimiser's result checked by fresh simulations, and bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import il2treg
from conftest import run_cli
from handwritten import pk
from il2treg import regimen as rg
from il2treg.design import (
    METRICS,
    Constraints,
    InfeasibleDesignError,
    _project_amounts,
    compare,
    design_function,
    hours_above,
    optimise,
    parse_objective,
    regimen_metrics,
    virtual_population,
)
from il2treg.errors import InputError, RegimenError

#: The design used by the optimiser tests: LUPIL-2's 16 injections at its times, no more IL-2 in
#: total than LUPIL-2 (24 MIU), NK change and IL-2 peak of the typical patient below these limits.
CONSTRAINTS = Constraints(nk_change_max_pct=30.0, cmax_max_pM=25.0, total_dose_max_iu=24e6, dose_max_iu=3e6)


@pytest.fixture(scope="module")
def designed(model):
    return optimise("lupil2", objective="treg_mean_fold", constraints=CONSTRAINTS, model=model, n_starts=5, steps=100)


@pytest.fixture(scope="module")
def comparison(model):
    _, params = virtual_population(model, 40, seed=3)
    return compare(["lupil2", "he2020", "placebo"], model=model, params=params)


def test_hours_above_integrates_a_piecewise_linear_curve_exactly():
    """A triangle rising from 0 to 1 over [0, 1] day and back over [1, 3]: above 0.5 for
    0.5 + 1 = 1.5 days = 36 h, whatever the (irregular) grid through its corners."""
    t = np.array([0.0, 0.3, 1.0, 1.7, 2.2, 3.0, 4.0])
    c = np.interp(t, [0, 1, 3, 4], [0, 1, 0, 0])
    assert hours_above(t, c[None], np.array([0.5]))[0] == pytest.approx(36.0, rel=1e-12)
    assert hours_above(t, c[None], np.array([2.0]))[0] == 0.0


def test_cmax_matches_the_closed_form_pk_without_the_receptor_sink(model_no_sink):
    """Without the sink the PK is linear: Cmax of LUPIL-2 from the comparison's grid (30 min) lies
    within 0.5% below the closed-form superposition's maximum on a 1-minute grid."""
    p = model_no_sink.typical()
    frame = regimen_metrics(model_no_sink, rg.lupil2(), p)
    q = dict(zip(p.names, np.asarray(p.values)))
    reg = rg.lupil2()
    t = np.arange(0.0, 84.0, 1.0 / 1440.0)
    c = np.asarray(pk.closed_form_pM(jnp.asarray(t), reg.times, reg.amounts, ka=q["ka"], ke=q["CL"] / q["V"], V=q["V"], F=q["F"], tlag=q["tlag"])) + q["il2_endo"]
    assert frame["cmax_pM"].iloc[0] <= c.max() * (1 + 1e-9)
    assert frame["cmax_pM"].iloc[0] == pytest.approx(c.max(), rel=5e-3)


@pytest.mark.slow
def test_comparison_reports_every_metric_for_every_regimen_on_shared_patients(comparison, model):
    table = comparison.table
    weeks = [f"{k}_w{w}" for w in (12, 24) for k in ("sledai_change", "p_sri4")]
    assert set(table["metric"]) == set(METRICS) | set(weeks)
    assert len(table) == 3 * (len(METRICS) + 4) and (table["n"] == 40).all() and (table["failed"] == 0).all()
    assert np.all(table["p5"] <= table["median"]) and np.all(table["median"] <= table["p95"])
    placebo = comparison.per_patient[comparison.per_patient["regimen"] == "placebo"]
    endo = np.asarray(virtual_population(model, 40, seed=3)[1].values)[:, list(model.parameter_names).index("il2_endo")]
    np.testing.assert_allclose(placebo["cmax_pM"], endo, rtol=1e-9)
    np.testing.assert_allclose(placebo[["treg_peak_fold", "treg_mean_fold", "treg_trough_fold"]], 1.0, atol=1e-9)
    assert (placebo["hours_above_nk"] == 0).all()
    wide = comparison.wide()
    assert list(wide.index) == ["lupil2", "he2020", "placebo"]
    med = table.set_index(["regimen", "metric"])["median"]
    assert med["lupil2", "treg_mean_fold"] > 1.1 and med["lupil2", "p_sri4_w12"] > med["placebo", "p_sri4_w12"]


@pytest.mark.slow
def test_one_program_for_all_regimens_gives_the_same_comparison(model):
    _, params = virtual_population(model, 3, seed=4)
    shared = compare(["lupil2", "placebo"], model=model, params=params, one_program=True)
    apart = compare(["lupil2", "placebo"], model=model, params=params, one_program=False)
    pd.testing.assert_frame_equal(shared.per_patient, apart.per_patient, check_exact=True)


def test_a_failed_solve_is_flagged_and_does_not_stop_the_comparison(model):
    tiny = il2treg.SolverOptions(max_steps=4)
    c = compare(["lupil2"], model=model, params=model.typical(), options=tiny)
    assert (c.per_patient["status"] != 0).all() and c.per_patient["treg_mean_fold"].isna().all()
    assert (c.table["failed"] == 1).all() and (c.table["n"] == 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["treg_mean_fold", "p_sri4_w12"])
def test_design_gradients_match_finite_differences(model, tight, objective):
    """d objective / d amount and d objective / d time by reverse mode against central differences
    (relative error < 1e-4), at doses off the grid and at one whose effective time (t + tlag) sits
    1e-6 day after a grid point, so that the finite-difference step moves it across that point.
    Also the constraint metrics (NK change, Cmax) with respect to the amounts."""
    p = model.typical()
    tlag = float(np.asarray(p.values)[list(p.names).index("tlag")])
    f = design_function(model, p, objective, Constraints(nk_change_max_pct=30.0, cmax_max_pM=25.0), options=tight)
    a = jnp.asarray([1.5e6, 1.2e6, 1.5e6, 1.0e6, 2.0e6])
    t = jnp.asarray([0.0, 1.3, 2.25 - tlag + 1e-6, 4.6, 10.1])
    value = lambda a, t: f(a, t)[0]
    ga, gt = jax.jit(jax.grad(value, argnums=(0, 1)))(a, t)
    worst = 0.0
    for k in range(5):
        fd_a = (value(a.at[k].add(1e3), t) - value(a.at[k].add(-1e3), t)) / 2e3
        fd_t = (value(a, t.at[k].add(1e-5)) - value(a, t.at[k].add(-1e-5))) / 2e-5
        assert float(ga[k]) == pytest.approx(float(fd_a), rel=1e-4), ("amount", k)
        assert float(gt[k]) == pytest.approx(float(fd_t), rel=1e-4), ("time", k)
        worst = max(worst, abs(float(ga[k] / fd_a) - 1), abs(float(gt[k] / fd_t) - 1))
    print(f"{objective}: largest relative difference reverse mode vs finite differences {worst:.1e}")
    if objective == "treg_mean_fold":
        for name in ("nk_change_pct", "cmax_pM"):
            metric = lambda a, name=name: f(a, t)[1][name]
            g = jax.grad(metric)(a)
            for k in range(5):
                fd = (metric(a.at[k].add(1e3)) - metric(a.at[k].add(-1e3))) / 2e3
                assert float(g[k]) == pytest.approx(float(fd), rel=1e-4, abs=1e-12), (name, k)


@pytest.mark.slow
def test_the_designed_regimen_beats_lupil2_and_meets_every_constraint(designed, model):
    """Started from LUPIL-2 and 4 random starts: the time-averaged Treg fold change improves, and a
    fresh simulation of the designed regimen (the comparison's code, finer grid) meets every limit."""
    print(f"treg_mean_fold: LUPIL-2 {designed.start_value:.5f} -> designed {designed.value:.5f}; starts {np.round(designed.start_values, 5)}; {designed.run_s:.1f} s")
    print(designed.checks.to_string(index=False))
    assert designed.value > designed.start_value + 1e-3
    assert designed.checks["met"].all() and designed.scaled_back == 1.0
    fresh = regimen_metrics(model, designed.regimen, model.typical(), weeks=(12,))
    assert fresh["nk_change_pct"].iloc[0] <= CONSTRAINTS.nk_change_max_pct
    assert fresh["cmax_pM"].iloc[0] <= CONSTRAINTS.cmax_max_pM
    amounts = np.asarray(designed.regimen.amounts)
    assert amounts.sum() <= CONSTRAINTS.total_dose_max_iu * (1 + 1e-12) and amounts.max() <= CONSTRAINTS.dose_max_iu and amounts.min() >= 0
    np.testing.assert_array_equal(designed.regimen.times, rg.lupil2().times)
    assert fresh["treg_mean_fold"].iloc[0] == pytest.approx(designed.value, rel=1e-5)  # the check's grid is 3x finer after doses


@pytest.mark.slow
def test_the_design_does_not_depend_on_the_start(designed):
    """Stated tolerance: the objective reached from each of the 5 starts is within 0.1% of the best."""
    assert len(designed.start_values) == 5
    assert designed.spread < 1e-3, designed.start_values


@pytest.mark.slow
def test_a_second_design_with_other_limits_and_steps_builds_no_new_program(designed, model, caplog):
    """The optimiser's programs are built for the model, the objective, the template and the number
    of starts; the limits (their values and which are set), the quantile, the bounds, the step
    count and the step length are arguments. After the fixture's design, one with other
    constraints and steps builds none of them again."""
    other = Constraints(tconv_change_max_pct=5.0, total_dose_max_iu=20e6, quantile=0.9)
    with caplog.at_level("WARNING", logger="jax"), jax.log_compiles(True):
        d = optimise("lupil2", objective="treg_mean_fold", constraints=other, model=model, n_starts=5, steps=3, learning_rate=0.3)
    built = [r.getMessage()[:90] for r in caplog.records if r.getMessage().startswith("Compiling jit(_design_")]
    assert not built, built
    assert d.history.shape == (3,) and len(d.start_values) == 5
    assert d.checks["constraint"].iloc[0].startswith("tconv_change_pct (quantile 0.9)")


def test_projection_onto_the_dose_limits_is_the_euclidean_one():
    """The projection p of x onto {0 <= x <= u, sum x <= B} satisfies (x - p).(q - p) <= 0 for
    every feasible q (the variational characterisation of a Euclidean projection)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(1.0, 1.5, 12))
    p = np.asarray(_project_amounts(x, jnp.asarray(2.0), jnp.asarray(6.0)))
    assert p.min() >= 0 and p.max() <= 2.0 and p.sum() <= 6.0 + 1e-9
    for _ in range(200):
        q = rng.uniform(0, 2.0, 12)
        q = q * min(1.0, 6.0 / q.sum())
        assert np.dot(np.asarray(x) - p, q - p) <= 1e-9


@pytest.mark.parametrize(
    ("constraints", "message"),
    [
        (Constraints(tconv_change_max_pct=-1.0), "tconv_change_max_pct = -1% <= 0"),
        (Constraints(cmax_max_pM=0.05), "cmax_max_pM = 0.05 pM is not above the level of il2_pM at day 0"),
        (Constraints(total_dose_min_iu=30e6, total_dose_max_iu=20e6), "exceeds what 16 injections may give"),
        (Constraints(total_dose_min_iu=60e6, dose_max_iu=3e6), "exceeds what 16 injections may give"),
        (Constraints(max_injections=12), "max_injections = 12 but the template has 16"),
    ],
)
def test_constraint_sets_without_any_regimen_are_reported_infeasible(model, constraints, message):
    with pytest.raises(InfeasibleDesignError, match=message):
        optimise("lupil2", constraints=constraints, model=model, steps=1, n_starts=1)


@pytest.mark.slow
def test_constraints_the_optimiser_cannot_meet_are_reported_infeasible_not_best_effort(model):
    """At least 24 MIU in 16 injections with the NK change below 5%: no such regimen (even 24 MIU
    spread evenly raises NK by about 27%), so the design ends in InfeasibleDesignError."""
    c = Constraints(nk_change_max_pct=5.0, total_dose_min_iu=24e6)
    with pytest.raises(InfeasibleDesignError, match=r"nk_change_pct|total_dose_iu"):
        optimise("lupil2", constraints=c, model=model, steps=20, n_starts=1)


def test_bad_requests_are_clear_errors(model):
    with pytest.raises(InputError, match=r"one_program='yes'.*Fix:"):
        compare(["lupil2"], model=model, n=2, one_program="yes")
    with pytest.raises(RegimenError, match="Unknown regimen name 'lupil3'"):
        compare("lupil2,lupil3", model=model, n=2)
    with pytest.raises(RegimenError, match="is negative"):
        rg.Regimen([0.0, 7.0], [1.5e6, -1.0])
    with pytest.raises(RegimenError, match="interval_days"):
        rg.every(1e6, -2.0, 3)
    with pytest.raises(InputError, match="unknown objective 'treg_auc'"):
        optimise("lupil2", objective="treg_auc", model=model)
    with pytest.raises(InputError, match="weeks must be positive"):
        compare(["lupil2"], model=model, n=2, weeks=(0,))
    with pytest.raises(InputError, match="quantile must be in"):
        optimise("lupil2", constraints=Constraints(quantile=1.0), model=model)
    with pytest.raises(InputError, match="no doses"):
        optimise("placebo", model=model)


def test_virtual_population_draws_typical_values_from_the_priors(model):
    _, params = virtual_population(model, 2000, seed=1)
    values = np.asarray(params.values)
    names = list(params.names)
    ec50 = np.log(values[:, names.index("ec50_treg")])
    spec = model.spec["ec50_treg"]
    expected_sd = np.sqrt(spec.prior_sd**2 + spec.omega**2)  # prior on the typical value, then between-patient variability
    assert np.std(ec50) == pytest.approx(expected_sd, rel=0.08)
    ka = values[:, names.index("ka")]
    assert model.spec["ka"].prior_sd is None and np.std(np.log(ka)) == pytest.approx(model.spec["ka"].omega, rel=0.08)


@pytest.mark.slow
def test_a_population_from_a_fit_carries_its_estimates_and_their_uncertainty(misspecified_fit, model):
    """Virtual patients drawn from a fit: the fit's model, typical values near its estimates (the
    median of emax_treg within 10% of the estimate), and a comparison runs on them."""
    fit_model, params = virtual_population(model, 400, seed=2, fit=misspecified_fit)
    emax = np.asarray(params.values)[:, list(params.names).index("emax_treg")]
    estimate = misspecified_fit.estimates.set_index("parameter").loc["emax_treg", "estimate"]
    assert np.median(emax) == pytest.approx(estimate, rel=0.1)
    c = compare(["lupil2"], model=fit_model, params=il2treg.Parameters(params.values[:10], params.names))
    assert (c.table["n"] == 10).all()


LINK = ("imax", "r50", "kd")  # the SLEDAI link: its typical values drawn from the model file's priors


def test_patients_of_one_population_draw_share_its_typical_values(model):
    """draws=K: K draws of the uncertain parameters, each shared by n/K patients (draw-major);
    the between-patient variability still differs patient by patient."""
    _, params = virtual_population(model, 12, seed=5, draws=4, uncertain=LINK)
    values = np.asarray(params.values).reshape(4, 3, -1)
    names = list(params.names)
    for name in LINK:
        col = values[:, :, names.index(name)]
        assert np.all(col == col[:, :1]) and np.unique(col[:, 0]).size == 4
    emax = values[:, :, names.index("emax_treg")]  # cv 40%, no draw of its typical value here
    assert np.unique(emax).size == 12
    typical_emax = float(model.typical()["emax_treg"])
    assert np.std(np.log(emax / typical_emax)) < 1.0


@pytest.mark.parametrize(("n", "draws", "message"), [(10, 4, r"multiple of draws, e.g. n=8"), (6, 4, r"n=8"), (8, 1, "integer >= 2"), (8, True, "integer >= 2")])
def test_population_draws_must_split_the_patients(model, n, draws, message):
    with pytest.raises(InputError, match=message):
        virtual_population(model, n, draws=draws)


def _synthetic_comparison(draws):
    """Two regimens, 3 draws of 2 patients; patient 4 failed under B."""
    from il2treg.design import Comparison

    a = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 7.0])
    b = np.array([0.0, 1.0, 1.0, np.nan, 1.0, 2.0])
    frames = [pd.DataFrame({"regimen": name, "patient": np.arange(1, 7), "draw": np.repeat([1, 2, 3], 2), "m": x,
                            "status": np.where(np.isnan(x), 3, 0)}) for name, x in (("A", a), ("B", b))]  # fmt: skip
    table = pd.DataFrame({"regimen": ["A", "B"], "metric": "m", "unit": "1"})
    return Comparison(pd.concat(frames, ignore_index=True), table, {"A": None, "B": None}, (12,), 0.0, draws)


def test_population_and_difference_are_statistics_of_the_per_draw_means():
    """Per draw the mean over solved patients (B: 0.5, 1.0, 1.5; A - B paired: 1.5, 1.0, 4.5),
    then percentiles over the draws."""
    c = _synthetic_comparison(3)
    pop = c.population(level=0.5).set_index("regimen")
    assert pop.loc["B", "median"] == pytest.approx(1.0) and pop.loc["B", "lo"] == pytest.approx(0.75) and pop.loc["B", "hi"] == pytest.approx(1.25)
    assert pop.loc["A", "median"] == pytest.approx(2.0) and (pop["draws"] == 3).all()
    diff = c.difference("B", level=0.5)
    assert list(diff["regimen"]) == ["A"] and diff["median"].iloc[0] == pytest.approx(1.5)
    assert diff["lo"].iloc[0] == pytest.approx(1.25) and diff["hi"].iloc[0] == pytest.approx(3.0) and diff["p_positive"].iloc[0] == 1.0
    assert c.difference("A")["p_positive"].iloc[0] == 0.0
    with pytest.raises(InputError, match="reference regimen 'C'"):
        c.difference("C")
    with pytest.raises(InputError, match=r"Fix: compare\(\.\.\., draws=K\)"):
        _synthetic_comparison(None).population()


@pytest.mark.slow
def test_a_comparison_states_the_link_uncertainty_of_its_population_effect(model, monkeypatch, capsys, tmp_path):
    """With the SLEDAI link drawn per population draw, IL-2 against placebo raises the Treg mean
    fold and the expected SRI-4 rate in every draw; the CLI writes the same tables."""
    c = compare(["lupil2", "placebo"], model=model, n=16, seed=2, draws=4, uncertain=LINK)
    assert sorted(c.per_patient["draw"].unique()) == [1, 2, 3, 4] and c.draws == 4
    diff = c.difference("placebo").set_index("metric")
    assert diff.loc["treg_mean_fold", "lo"] > 0.1 and diff.loc["p_sri4_w12", "p_positive"] == 1.0
    assert diff.loc["p_sri4_w12", "lo"] < diff.loc["p_sri4_w12", "hi"]
    pop = c.population().set_index(["regimen", "metric"])
    assert pop.loc[("lupil2", "p_sri4_w12"), "median"] > pop.loc[("placebo", "p_sri4_w12"), "median"]
    code, out, _ = run_cli(monkeypatch, capsys, "regimens", "compare", "--regimens", "lupil2,placebo", "--n", "16", "--seed", "2",
                           "--draws", "4", "--uncertain", ",".join(LINK), "--out", str(tmp_path / "c"))  # fmt: skip
    assert code == 0 and "difference.csv" in out
    assert {f.name for f in (tmp_path / "c").iterdir()} == {"table.csv", "per_patient.csv", "population.csv", "difference.csv", "comparison.png"}
    written = pd.read_csv(tmp_path / "c" / "difference.csv").set_index("metric")
    np.testing.assert_allclose(written.loc["p_sri4_w12", ["median", "lo", "hi"]].to_numpy(float), diff.loc["p_sri4_w12", ["median", "lo", "hi"]].to_numpy(float), rtol=1e-9)


@pytest.mark.slow
def test_a_fit_held_parameter_can_carry_its_prior(misspecified_fit, model):
    """uncertain= with a fit: parameters the fit held get a prior draw per population draw; one the
    fit estimated is refused (its posterior already carries it)."""
    _, params = virtual_population(model, 8, seed=1, fit=misspecified_fit, draws=4, uncertain=("r50", "kd"))
    values = np.asarray(params.values).reshape(4, 2, -1)
    r50 = values[:, :, list(params.names).index("r50")]
    assert np.all(r50 == r50[:, :1]) and np.unique(r50).size == 4
    with pytest.raises(InputError, match="estimates emax_treg"):
        virtual_population(model, 8, fit=misspecified_fit, draws=4, uncertain=("emax_treg",))


@pytest.mark.slow
def test_the_comparison_script_runs_on_the_public_api(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "compare_regimens.py"
    args = ["--n", "10", "--draws", "5", "--regimens", "lupil2,placebo", "--out", str(tmp_path / "r")]
    done = subprocess.run([sys.executable, str(script), *args], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "table.csv").is_file() and (tmp_path / "r" / "comparison.png").is_file()
    assert set(pd.read_csv(tmp_path / "r" / "difference.csv")["regimen"]) == {"lupil2", "twice_weekly"}
    assert "twice_weekly" in done.stdout


#: A one-compartment IV bolus (models/pk_1cmt_iv.toml) given twice, a day apart, designed to
#: maximise the mean concentration over 3 days with the concentration never above CP (mg/L).
CP, TAU = 5.0, 1.0


@pytest.mark.slow
def test_a_pk_design_reaches_the_closed_form_optimum(monkeypatch, capsys, tmp_path):
    """Any model: ``regimens optimise --model pk_1cmt_iv --objective mean:conc --peak-max conc=5``.
    Every dose adds to the mean, so both peaks bind: the first dose fills V to CP, the second tops
    up what was eliminated in between, :math:`a_1 = C_P V`, :math:`a_2 = C_P V (1 - e^{-k\\tau})`,
    :math:`k = CL/V`. The penalty lets the design overshoot a little and the final check scales
    every dose back by one factor (0.9967 here), so the second dose is within 0.5%."""
    model = il2treg.load_model("pk_1cmt_iv")
    q = dict(zip(model.parameter_names, np.asarray(model.typical().values), strict=True))
    best = CP * q["V"] * np.array([1.0, 1.0 - np.exp(-q["CL"] / q["V"] * TAU)])
    start = tmp_path / "start.csv"
    rg.to_nonmem(il2treg.Regimen(np.array([0.0, TAU]), np.array([50.0, 50.0]))).to_csv(start, index=False)
    code, out, err = run_cli(monkeypatch, capsys, "regimens", "optimise", "--model", "pk_1cmt_iv", "--start", str(start), "--objective", "mean:conc",
                             "--peak-max", "conc=5", "--horizon", "3", "--starts", "1", "--out", str(tmp_path / "d"))  # fmt: skip
    assert code == 0, err
    assert "peak:conc (quantile 0.5)" in out and "mean:conc: start" in out
    checks = pd.read_csv(tmp_path / "d" / "checks.csv")
    assert checks["constraint"].tolist() == ["peak:conc (quantile 0.5)"] and checks["met"].all()
    assert checks["value"].iloc[0] == pytest.approx(CP, rel=1e-9)  # the bound binds after the scale-back
    amounts = rg.read_regimen_csv(tmp_path / "d" / "regimen.csv").amounts
    print(f"designed {np.round(amounts, 4)} mg against the optimum {np.round(best, 4)} mg")
    np.testing.assert_allclose(amounts, best, rtol=5e-3)
    design = json.loads((tmp_path / "d" / "design.json").read_text())
    assert design["value"] > 1.8 * design["start_value"]


@pytest.mark.parametrize(
    ("model_name", "objective", "constraints", "message"),
    [
        ("pk_1cmt_iv", "treg_mean_fold", Constraints(), "reads observable 'treg_per_uL', which model 'pk_1cmt_iv' does not have"),
        ("pk_1cmt_iv", "auc:conc", Constraints(), "unknown objective 'auc:conc'. Fix: use one of"),
        ("pk_1cmt_iv", "mean:cp", Constraints(), "reads observable 'cp'"),
        ("pk_1cmt_iv", "mean_fold:conc", Constraints(), "'conc' is not positive at day 0"),
        ("pk_1cmt_iv", "mean:conc", Constraints(change_max_pct={"conc": 50.0}), "'conc' is not positive at day 0"),
        ("pk_1cmt_iv", "mean:conc", Constraints(peak_max={"conc": float("nan")}), "peak_max['conc'] = nan is not a finite number"),
        ("pk_1cmt_iv", "mean:conc", Constraints(nk_change_max_pct=30.0), "limit nk_change_max_pct is on observable 'nk56bright_per_uL'"),
        ("pk_1cmt_iv", "mean:conc", Constraints(peak_max={"cp": 5.0}), "limit peak_max['cp'] is on observable 'cp'"),
        ("il2_treg_sledai", "treg_mean_fold", Constraints(cmax_max_pM=25.0, peak_max={"il2_pM": 20.0}),
         "two limits on the peak of 'il2_pM': cmax_max_pM and peak_max['il2_pM']"),
    ],
)  # fmt: skip
def test_objectives_and_limits_a_model_does_not_have_are_clear_errors(model_name, objective, constraints, message):
    with pytest.raises(InputError, match=re.escape(message)):
        optimise(rg.Regimen(np.array([0.0, 1.0]), np.array([50.0, 50.0])), objective=objective, constraints=constraints,
                 model=il2treg.load_model(model_name), steps=1, n_starts=1)  # fmt: skip


def test_the_named_objectives_are_the_generic_ones_of_their_observables(model):
    assert parse_objective(model, "treg_mean_fold") == parse_objective(model, "mean_fold:treg_per_uL") == ("mean_fold", "treg_per_uL")
    assert parse_objective(model, "sledai_fall_w12") == parse_objective(model, "fall:sledai")
    teff = il2treg.load_model(Path(__file__).parent / "models" / "il2_treg_teff.toml")  # another mechanism with a SLEDAI
    assert parse_objective(teff, "p_sri4_w12") == ("p_sri4", "sledai")
    with pytest.raises(InputError, match="reads observable 'sledai', which model 'pk_1cmt_iv' does not have"):
        parse_objective(il2treg.load_model("pk_1cmt_iv"), "p_sri4_w12")


def test_a_template_beyond_the_horizon_and_a_bad_horizon_are_clear_errors():
    pk = il2treg.load_model("pk_1cmt_iv")
    with pytest.raises(InputError, match=re.escape("the template has doses after the horizon (day 7 > 3)")):
        optimise(rg.Regimen(np.array([0.0, 7.0]), np.array([50.0, 50.0])), objective="mean:conc", model=pk, horizon_days=3.0, steps=1, n_starts=1)
    with pytest.raises(InputError, match=re.escape("horizon_days = nan")):
        optimise(rg.Regimen(np.array([0.0, 1.0]), np.array([50.0, 50.0])), objective="mean:conc", model=pk, horizon_days=float("nan"), steps=1, n_starts=1)
