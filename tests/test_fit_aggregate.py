"""Fitting to published summary statistics (il2treg.fit.aggregate): the model's statistics, the
recovery of a simulated cohort's parameters from its summaries, and bad input."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import brentq
from scipy.stats import norm

import il2treg
from il2treg.errors import SpecError
from il2treg.fit.aggregate import (
    Summary,
    fit_summaries,
    predict_summaries,
    se_of_mean,
    se_of_median,
    se_of_sd,
    smooth_median,
)
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


def _kernel_median(f: np.ndarray, log: bool = True) -> float:
    """The kernel-smoothed median solved by Brent's method, independently of the module's bisection."""
    g = np.log(f) if log else f
    h = 1.06 * g.std() * len(g) ** -0.2
    q = brentq(lambda q: norm.cdf((q - g) / h).mean() - 0.5, g.min() - h, g.max() + h, xtol=1e-14)
    return float(np.exp(q) if log else q)


def test_the_smooth_median_estimates_the_median_and_has_a_continuous_derivative():
    """Of 20,000 lognormal draws it is within 1% of the population median e^mu (the sample median
    too); its derivative matches central differences; along a path on which 64 patients swap ranks
    its derivative moves by < 1e-3 between neighbouring points of a 2,001-point grid, where the
    sample median's jumps by more than 0.1. On its own scale (a change) it takes predictions <= 0;
    on the log scale they make it NaN. Where every patient predicts the same it is that value,
    with a finite derivative in both modes."""
    import jax

    rng = np.random.default_rng(0)
    f = np.exp(0.3 + 0.5 * rng.normal(size=20_000))
    assert float(smooth_median(jnp.asarray(f))) == pytest.approx(np.exp(0.3), rel=0.01)
    a, b = rng.normal(size=64), rng.normal(size=64)
    grid = jnp.linspace(0.0, 1.0, 2001)
    smooth = np.asarray(jax.vmap(jax.grad(lambda s: smooth_median(jnp.exp(a + s * b))))(grid))
    sample = np.asarray(jax.vmap(jax.grad(lambda s: jnp.median(jnp.exp(a + s * b))))(grid))
    assert np.abs(np.diff(smooth)).max() < 1e-3 and np.abs(np.diff(sample)).max() > 0.1
    s, e = 0.37, 1e-6
    fd = (float(smooth_median(jnp.exp(a + (s + e) * b))) - float(smooth_median(jnp.exp(a + (s - e) * b)))) / (2 * e)
    assert float(jax.jacfwd(lambda s: smooth_median(jnp.exp(a + s * b)))(s)) == pytest.approx(fd, rel=1e-6)
    assert float(smooth_median(jnp.exp(a + s * b))) == pytest.approx(_kernel_median(np.exp(a + s * b)), rel=1e-12)
    signed = a - 0.5
    assert float(smooth_median(jnp.asarray(signed), log=False)) == pytest.approx(
        _kernel_median(signed, log=False), rel=1e-12
    )
    assert np.isnan(float(smooth_median(jnp.asarray(signed))))
    same = lambda s: smooth_median(jnp.full(8, 2.0) * jnp.exp(s))
    assert float(same(0.3)) == pytest.approx(2.0 * np.exp(0.3), rel=1e-12)
    # the bandwidth is then its floor, 1e-12 relative, which the bisection resolves to ~1e-4 of
    # itself: the Newton step's derivative is exact to ~1e-8
    assert float(jax.grad(same)(0.3)) == pytest.approx(2.0 * np.exp(0.3), rel=1e-7)
    assert float(jax.jacfwd(same)(0.3)) == pytest.approx(2.0 * np.exp(0.3), rel=1e-7)


def test_each_statistic_of_varied_patients_is_numpys_of_the_same_patients(model):
    """With CL varying (the file's 30% CV, the fit's start), each statistic equals NumPy's over the
    same 64 virtual patients (their draws rebuilt from the seed): the mean, geometric mean and
    (kernel-smoothed) median of f, the SD with the residual's variance added, the proportion above a threshold; the
    objective is the sum of the standardised squares and the binomial term."""
    import jax

    regimen = Regimen(jnp.asarray([0.0]), jnp.asarray([100.0]))
    t, sigma, m, seed = 6.0 / 24, 0.15, 64, 3
    names = model.parameter_names
    omega = model.spec["CL"].omega
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (1, m, 1), dtype=jnp.float64))[0, :, 0]
    theta = np.tile(np.asarray(model.typical().values), (m, 1))
    theta[:, names.index("CL")] *= np.exp(omega * z)
    f = np.asarray(il2treg.simulate(model, regimen, jnp.asarray([t]), Parameters(jnp.asarray(theta), names))["conc"])[:, 0]
    threshold = float(np.median(f))
    rows = [Summary("a", "conc", t, kind, 1.0, 50, se=0.5) for kind in ("mean", "geomean", "median", "sd")]
    rows.append(Summary("a", "conc", t, "proportion_above", 0.4, 50, threshold=threshold))
    fit = fit_summaries(model, {"a": regimen}, rows, fixed=("V",), random=("CL",), sigma_prop={"conc": sigma}, n_draws=m, seed=seed, max_steps=0)
    expected = [f.mean(), np.exp(np.log(f).mean()), _kernel_median(f), np.sqrt(f.var() + sigma**2 * np.mean(f**2)), norm.cdf((f - threshold) / (sigma * f)).mean()]
    np.testing.assert_allclose(fit.predicted, expected, rtol=1e-9)
    assert len(set(np.round(fit.predicted[:3], 12))) == 3  # the three locations differ here
    p = expected[-1]
    assert fit.ofv == pytest.approx(sum(((1.0 - e) / 0.5) ** 2 for e in expected[:4]) - 2 * (20 * np.log(p) + 30 * np.log1p(-p)), rel=1e-9)
    assert fit.estimate("V") == pytest.approx(float(model.typical()["V"]), rel=1e-12)  # no iteration: the start
    assert fit.failed == (("a", 0),)


_TURNOVER = """
[model]
name = "turnover"
[states.depot]
unit = "mg"
initial = 0
[states.central]
unit = "mg"
initial = 0
[states.R]
unit = "1"
initial = "r0"
[parameters]
ka = { value = 2.0, unit = "1/day", bounds = [0.01, 50.0], transform = "log", cv_percent = 0, source = "ASSUMPTION: test" }
CL = { value = 2.0, unit = "L/day", bounds = [0.01, 100.0], transform = "log", cv_percent = 30, source = "ASSUMPTION: test" }
V = { value = 20.0, unit = "L", bounds = [0.1, 1000.0], transform = "log", cv_percent = 0, source = "ASSUMPTION: test" }
kout = { value = 0.5, unit = "1/day", bounds = [0.001, 10.0], transform = "log", cv_percent = 0, source = "ASSUMPTION: test", prior_sd = 0.2, prior_source = "test" }
emax = { value = 2.0, unit = "L/mg", bounds = [0.0, 100.0], transform = "identity", cv_percent = 0, source = "ASSUMPTION: test", prior_sd = 0.5, prior_source = "test" }
r0 = { value = 10.0, unit = "1", bounds = [0.1, 100.0], transform = "log", cv_percent = 40, source = "ASSUMPTION: test" }
[equations]
depot = "-ka * depot"
central = "ka * depot - CL / V * central"
R = "kout * r0 * (1 + emax * central / V) - kout * R"
[observables.response]
unit = "1"
expression = "R"
[doses.oral]
state = "depot"
unit = "mg"
"""


def test_folds_changes_and_bounds_are_numpys_of_the_same_patients_and_predictions_repeat_the_fit(tmp_path):
    """A turnover response whose baseline r0 varies 40% between patients (so a fold and a change
    are not the value over the typical baseline): the mean fold, the (kernel-smoothed) median change and the
    geometric-mean fold equal NumPy's over the same virtual patients; a lower and an upper bound
    contribute -2 log Phi of the standardised distance on their side. predict_summaries repeats the
    fit's statistics at its estimates (an identity-transformed Emax among them) and draws around them."""
    import jax

    path = tmp_path / "turnover.toml"
    path.write_text(_TURNOVER)
    model = il2treg.load_model(path)
    regimen = Regimen(jnp.asarray([0.0, 1.0]), jnp.asarray([40.0, 40.0]))
    names, m, seed, t = model.parameter_names, 48, 5, 2.0
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (1, m, 2), dtype=jnp.float64))[0]
    theta = np.tile(np.asarray(model.typical().values), (m, 1))
    for j, p in enumerate(("CL", "r0")):
        theta[:, names.index(p)] *= np.exp(model.spec[p].omega * z[:, j])
    f = np.asarray(il2treg.simulate(model, regimen, jnp.asarray([0.0, t]), Parameters(jnp.asarray(theta), names))["response"])
    fold, change = f[:, 1] / f[:, 0], f[:, 1] - f[:, 0]
    rows = [Summary("a", "response", t, "mean", 1.5, 30, se=0.2, scale="fold"),
            Summary("a", "response", t, "median", 4.0, 30, se=1.0, scale="change"),
            Summary("a", "response", t, "geomean", 3.0, 30, se=0.5, scale="fold", bound="lower"),
            Summary("a", "response", t, "mean", 2.0, 30, se=0.5, bound="upper")]  # fmt: skip
    fit = fit_summaries(model, {"a": regimen}, rows, fixed=("emax",), random=("CL", "r0"), n_draws=m, seed=seed, max_steps=0)
    expected = [fold.mean(), _kernel_median(change, log=False), np.exp(np.log(fold).mean()), f[:, 1].mean()]
    np.testing.assert_allclose(fit.predicted, expected, rtol=1e-9)
    assert expected[0] != pytest.approx(expected[3] / 10.0, rel=1e-3)  # a fold is not the mean over the typical baseline
    ofv = ((1.5 - expected[0]) / 0.2) ** 2 + ((4.0 - expected[1]) / 1.0) ** 2
    ofv += -2 * norm.logcdf((expected[2] - 3.0) / 0.5) - 2 * norm.logcdf((2.0 - expected[3]) / 0.5)
    assert fit.ofv == pytest.approx(ofv, rel=1e-9)
    # the response's SD (of the simulated patients) pins r0's omega, which a median change alone leaves loose
    spread = Summary("a", "response", t, "sd", float(f[:, 1].std()), 30, se=se_of_sd(float(f[:, 1].std()), 30))
    fit = fit_summaries(model, {"a": regimen}, [*rows[:2], spread], fixed=("emax",), random=("r0",), n_draws=m, seed=seed)
    assert fit.converged
    at, drawn = predict_summaries(fit, model, {"a": regimen}, rows, n_draws=m, seed=seed, samples=20)
    np.testing.assert_allclose(at[:2], fit.predicted[:2], rtol=1e-12)
    assert drawn.shape == (20, 4) and np.all(np.isfinite(drawn)) and np.all(np.std(drawn, axis=0) > 0)
    assert fit.cov_log.shape == (2, 2) and np.allclose(np.sqrt(np.diag(fit.cov_log)), fit.se_log)


def test_priors_add_their_term_starts_are_used_and_a_covariance_that_cannot_be_drawn_is_refused(tmp_path):
    """priors=True adds ((log kout - log 0.5)/0.2)^2 (a log-transformed parameter) and
    ((emax - 2)/0.5)^2 (an identity one) to the data's objective, at the given starts; a NaN or
    indefinite covariance is refused by predict_summaries with its fix."""
    import equinox as eqx

    path = tmp_path / "turnover.toml"
    path.write_text(_TURNOVER)
    model = il2treg.load_model(path)
    regimen = {"a": Regimen(jnp.asarray([0.0]), jnp.asarray([40.0]))}
    rows = [Summary("a", "response", 2.0, "mean", 1.5, 30, se=0.2, scale="fold")]
    args = dict(fixed=("kout", "emax"), n_draws=16, max_steps=0, start={"kout": 0.6, "emax": 3.0})
    plain, with_prior = fit_summaries(model, regimen, rows, **args), fit_summaries(model, regimen, rows, priors=True, **args)
    assert plain.estimate("kout") == pytest.approx(0.6, rel=1e-12) and plain.estimate("emax") == pytest.approx(3.0, rel=1e-12)
    expected = (np.log(0.6 / 0.5) / 0.2) ** 2 + ((3.0 - 2.0) / 0.5) ** 2
    assert plain.prior == 0.0 and with_prior.prior == pytest.approx(expected, rel=1e-12)
    assert with_prior.ofv == pytest.approx(plain.ofv + expected, rel=1e-12)
    for cov in (np.full((2, 2), np.nan), np.array([[1.0, 0.0], [0.0, -1.0]])):
        broken = eqx.tree_at(lambda f: f.cov_log, plain, cov)
        with pytest.raises(SpecError, match=r"(no covariance|not positive definite).*Fix: use samples=0"):
            predict_summaries(broken, model, regimen, rows, n_draws=16, samples=5)


@pytest.mark.slow
def test_a_start_where_solves_fail_or_a_statistic_is_undefined_is_an_error_naming_it(model):
    """Every virtual patient failing (a step budget of 1) is a SolverError naming the arm; a
    geometric mean at the dose's time, where the oral model's concentration is 0, names the summary."""
    import diffrax as dfx

    from il2treg.errors import SolverError

    regimen = Regimen(jnp.asarray([0.0]), jnp.asarray([100.0]))
    rows = [Summary("a", "conc", 0.25, "mean", 1.0, 20, se=0.1)]
    starved = il2treg.SolverOptions(max_steps=1, adjoint=dfx.ForwardMode())
    with pytest.raises(SolverError, match=r"8 of 8 virtual patients of arm 'a' failed to solve at the start.*Fix: "):
        fit_summaries(model, {"a": regimen}, rows, fixed=("CL",), n_draws=8, options=starved)
    rows = [Summary("a", "conc", 0.0, "geomean", 1.0, 20, se=0.1)]
    with pytest.raises(SolverError, match=r"summary 0 \(a, conc, day 0\): its geomean is undefined at the start.*Fix: use the mean there"):
        fit_summaries(model, {"a": regimen}, rows, fixed=("CL",), n_draws=8)


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
    assert fit.failed == (("single", 0), ("daily", 0))


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
    ({}, {"fixed": ("F",)}, r"'F' is estimated on the log scale from summaries, but its transform is 'logit' and its bounds \[0.01, 1\]"),
    (dict(scale="ratio"), {}, r"unknown scale 'ratio'\. Fix: use one of value, fold, change"),
    (dict(bound="above"), {}, r"bound must be None or one of lower, upper"),
    (dict(statistic="proportion_above", value=0.3, threshold=1.0, se=None, bound="lower"), {"sigma_prop": {"conc": 0.1}}, r"and not on a proportion, got 'lower'"),
    (dict(value=float("nan")), {}, r"the value must be a finite number, got nan"),
    (dict(scale="fold", statistic="sd"), {}, r"a sd of each patient's fold is not modelled here \(the proportional residual"),
    (dict(scale="change", statistic="geomean"), {}, r"a geomean of each patient's change is not modelled here \(a change may be zero"),
    ({}, {"start": {"V": 1.0}}, r"start names 'V', which is not estimated"),
    ({}, {"start": {"CL": -1.0}}, r"every start must be a finite value > 0"),
    ({}, {"fixed": ()}, r"nothing to estimate\. Fix: name parameters in fixed or random"),
    ({}, {"fixed": ("CL", "CL")}, r"a parameter is named twice in fixed: CL, CL"),
    ({}, {"n_draws": 1}, r"n_draws must be >= 2 virtual patients per arm, got 1"),
    ({}, {"omega": {"clearance": 0.3}}, r"unknown parameter 'clearance' in omega\. Fix: use one of"),
    ({}, {"omega": {"V": -0.1}}, r"omega\['V'\] must be a finite SD >= 0, got -0.1"),
], ids=["observable", "arm", "statistic", "se", "n", "time", "percentage", "sigma", "parameter", "transform", "scale", "bound", "bound-proportion", "nan", "fold-sd", "change-geomean",
        "start-name", "start-value", "nothing", "twice", "draws",
        "omega-name", "omega-negative"])  # fmt: skip
def test_bad_summaries_are_named_before_any_computation(model, change, kw, message):
    import dataclasses

    row = dataclasses.replace(Summary("a", "conc", 0.5, "mean", 1.0, 20, se=0.1), **change)
    args = {"fixed": ("CL",), **kw}
    with pytest.raises(SpecError, match=message) as info:
        fit_summaries(model, {"a": Regimen(jnp.asarray([0.0]), jnp.asarray([100.0]))}, [row], **args)
    assert ". Fix: " in str(info.value) and "\n" not in str(info.value)  # one line, with its fix
