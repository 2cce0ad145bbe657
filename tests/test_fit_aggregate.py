"""Fitting to published summary statistics (il2treg.fit.aggregate): the model's statistics, the
recovery of a simulated cohort's parameters from its summaries, and bad input."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

import il2treg
from il2treg.errors import SpecError
from il2treg.fit.aggregate import Summary, fit_summaries, se_of_mean, se_of_median, se_of_sd
from il2treg.model import Parameters
from il2treg.regimen import Regimen, every

MODEL = Path(__file__).resolve().parents[1] / "models" / "pk_1cmt_oral.toml"


@pytest.fixture(scope="module")
def model():
    return il2treg.load_model(MODEL)


def test_standard_errors_from_printed_dispersions():
    assert se_of_mean(2.0, 16) == 0.5
    assert se_of_sd(3.0, 9) == pytest.approx(0.75)
    assert se_of_median(1.349, 4) == pytest.approx(1.2533 / 2)


def test_each_statistic_of_identical_patients_is_the_closed_form(model):
    """Without variability every virtual patient is the typical one: the mean, geometric mean and
    median are its prediction f, the SD is sigma f (the residual's alone), and the proportion above
    c is Phi((f - c) / (sigma f)); the objective is their sum of squared standardised errors."""
    regimen = Regimen(jnp.asarray([0.0]), jnp.asarray([100.0]))
    t = 4.0 / 24
    f = float(il2treg.simulate(model, regimen, jnp.asarray([t]))["conc"][0])
    sigma = 0.2
    rows = [Summary("a", "conc", t, kind, 1.0, 50, se=0.5) for kind in ("mean", "geomean", "median", "sd")]
    rows.append(Summary("a", "conc", t, "proportion_above", 0.4, 50, threshold=0.9 * f))
    fit = fit_summaries(model, {"a": regimen}, rows, fixed=("CL",), sigma_prop={"conc": sigma}, n_draws=4, max_steps=0)
    expected = [f, f, f, sigma * f, norm.cdf(0.1 / sigma)]
    np.testing.assert_allclose(fit.predicted, expected, rtol=1e-10)
    p = expected[-1]
    ofv = sum(((1.0 - e) / 0.5) ** 2 for e in expected[:4]) - 2 * (20 * np.log(p) + 30 * np.log1p(-p))
    assert fit.ofv == pytest.approx(ofv, rel=1e-10)
    assert fit.estimate("CL") == pytest.approx(float(model.typical()["CL"]), rel=1e-12)  # no iteration: the start


@pytest.mark.slow
def test_the_parameters_of_a_simulated_cohort_are_recovered_from_its_summaries(model):
    """Issue 28's criterion: two arms of 100 simulated patients (one dose of 100 mg; three daily
    doses) of the oral one-compartment model, with ka, CL and V off the file's values by +25%,
    +30% and -20%, between-patient SDs of log CL and log V of 0.3 and 0.2 and a 10% proportional
    error; the mean and SD of the observed concentrations at six times per arm, with their
    standard errors. Fitted from the file's values with 300 virtual patients per arm (other
    draws than the cohort's), every estimate is within 15% of the truth."""
    names = model.parameter_names
    typical = model.typical()
    truth = {"ka": 1.25 * float(typical["ka"]), "CL": 1.3 * float(typical["CL"]), "V": 0.8 * float(typical["V"])}
    omega, sigma, n = {"CL": 0.3, "V": 0.2}, 0.1, 100
    regimens = {"single": Regimen(jnp.asarray([0.0]), jnp.asarray([100.0])), "daily": every(100.0, 1.0, 3)}
    hours = {"single": [1, 2, 4, 8, 12, 24], "daily": [49, 50, 52, 56, 60, 72]}
    rng = np.random.default_rng(1)
    rows = []
    for arm, regimen in regimens.items():
        theta = np.tile(np.asarray(typical.values), (n, 1))
        for p, v in truth.items():
            theta[:, names.index(p)] = v
        for p, w in omega.items():
            theta[:, names.index(p)] *= np.exp(w * rng.standard_normal(n))
        times = np.asarray(hours[arm]) / 24.0
        f = np.asarray(il2treg.simulate(model, regimen, times, Parameters(jnp.asarray(theta), names))["conc"])
        y = f * (1 + sigma * rng.standard_normal(f.shape))
        for j, t in enumerate(times):
            mean, sd = float(y[:, j].mean()), float(y[:, j].std(ddof=1))
            rows += [Summary(arm, "conc", float(t), "mean", mean, n, se=se_of_mean(sd, n)), Summary(arm, "conc", float(t), "sd", sd, n, se=se_of_sd(sd, n))]
    fit = fit_summaries(model, regimens, rows, fixed=("ka", "CL", "V"), random=("CL", "V"), sigma_prop={"conc": sigma}, n_draws=300, seed=5)
    assert fit.converged
    for name, value in {**truth, **{f"omega_{p}": w for p, w in omega.items()}}.items():
        assert fit.estimate(name) == pytest.approx(value, rel=0.15), (name, fit.estimate(name), value)
    assert np.all(np.isfinite(fit.se_log)) and np.all(fit.se_log < 0.1)
    # the fit describes its data: standardised residuals of the 24 statistics
    z = (np.asarray([r.value for r in rows]) - fit.predicted) / np.asarray([r.se for r in rows])
    assert np.max(np.abs(z)) < 3.5


@pytest.mark.parametrize("change, kw, message", [
    (dict(observable="treg"), {}, r"summary 0 \(a, treg, day 0.5\): unknown observable 'treg'\. Fix: use one of"),
    (dict(arm="b"), {}, r"summary 0 \(b, conc, day 0.5\): no regimen for arm 'b'\. Fix: add it"),
    (dict(statistic="mode"), {}, r"unknown statistic 'mode'\. Fix: use one of mean, geomean, median, sd, proportion_above"),
    (dict(se=None), {}, r"a mean needs its standard error se > 0"),
    (dict(n=0), {}, r"n must be >= 1, got 0"),
    (dict(time=-1.0), {}, r"the time must be >= 0 days"),
    (dict(statistic="proportion_above", value=30.0, threshold=1.0, se=None), {"sigma_prop": {"conc": 0.1}}, r"a value in \[0, 1\] \(a proportion, not a percentage\)"),
    (dict(statistic="proportion_above", value=0.3, threshold=1.0, se=None), {}, r"needs the residual SD of 'conc'\. Fix: give sigma_prop\['conc'\] > 0"),
    ({}, {"fixed": ("clearance",)}, r"unknown parameter 'clearance'\. Fix: use one of"),
    ({}, {"fixed": ("tlag",)}, r"'tlag' is estimated on the log scale from summaries, but its transform is 'identity'"),
], ids=["observable", "arm", "statistic", "se", "n", "time", "percentage", "sigma", "parameter", "transform"])  # fmt: skip
def test_bad_summaries_are_named_before_any_computation(model, change, kw, message):
    import dataclasses

    row = dataclasses.replace(Summary("a", "conc", 0.5, "mean", 1.0, 20, se=0.1), **change)
    args = {"fixed": ("CL",), **kw}
    with pytest.raises(SpecError, match=message):
        fit_summaries(model, {"a": Regimen(jnp.asarray([0.0]), jnp.asarray([100.0]))}, [row], **args)
