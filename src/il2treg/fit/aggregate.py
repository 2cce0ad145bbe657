r"""Fitting a model to published summary statistics (aggregate data) instead of patients.

A study arm is published as statistics of its patients: the mean, geometric mean, median or SD
of an observable at a time, with a standard error, or the proportion of patients above a
threshold. :func:`fit_summaries` estimates population parameters from such :class:`Summary`
rows by simulation.

**Model population.** Each arm :math:`a` is represented by :math:`M` virtual patients with
fixed standard-normal draws :math:`z_{am}` (common random numbers, so the objective is a smooth
function of the parameters): :math:`\theta_{am} = \theta\,e^{\omega \odot z_{am}}` for the
parameters with between-patient variability (``random``), :math:`\theta` otherwise. Their
predictions :math:`f_{am}(t)` under the arm's regimen give the model's statistic
:math:`S_j(\theta, \omega)` of summary :math:`j`:

========================= ==============================================================
statistic                 :math:`S_j`
========================= ==============================================================
``mean``                  :math:`\bar f = \frac1M\sum_m f_m` (a zero-mean residual leaves it)
``geomean``               :math:`\exp(\frac1M\sum_m \log f_m)`
``median``                the kernel-smoothed median :math:`q` of :math:`g_m = \log f_m` (of
                          :math:`f_m` for a ``change``, which may be <= 0), back-transformed:
                          :math:`\frac1M\sum_m \Phi\big((q - g_m)/h\big) = \tfrac12` with
                          Silverman's bandwidth :math:`h = 1.06\,\mathrm{SD}_m(g_m)\,M^{-1/5}`
``sd``                    :math:`\sqrt{\mathrm{var}_m f_m + \sigma^2\,\overline{f^2}}` (proportional
                          residual :math:`y = f(1 + \sigma\epsilon)`, whose variance adds to the
                          patients')
``proportion_above``      :math:`\frac1M\sum_m \Phi\big((f_m - c)/(\sigma f_m)\big)`: the share of
                          patients whose observation exceeds the threshold :math:`c`
========================= ==============================================================

A summary's ``scale`` says what is summarised: the observable itself (``value``), each patient's
ratio to their own baseline :math:`f(t)/f(0)` (``fold``), or their difference from it
:math:`f(t) - f(0)` (``change``), as papers print a "median fold change" or a "mean change from
baseline"; a prediction at a dose time is the value before the dose.

The sample median of :math:`M` draws is :math:`(f_{(M/2)} + f_{(M/2+1)})/2`, whose derivative jumps
wherever two virtual patients swap ranks; a quasi-Newton search then stalls on "precision loss"
short of the minimum. The kernel-smoothed median estimates the same population median and is an
infinitely differentiable function of the predictions; on the log scale its bias for a lognormal
population is nil (the kernel is symmetric); for a skewed population it is of order :math:`h^2`
(Silverman's :math:`h` is about 0.46 SD at :math:`M = 64`), and it tends to the sample median
as :math:`M` grows. Its value is found by bisection and its derivative by the implicit function
theorem (one Newton step from the root).

The geometric mean and the median are those of the predictions: the residual error shifts them
by terms of order :math:`\sigma^2`, which are left out. A geometric mean, a proportion, or the median of a value or a fold needs
every prediction positive; a virtual patient whose solve fails, or a prediction <= 0 there, makes
the objective undefined: at the start that is an error naming the arm or summary, during the
search the line search steps back, and :attr:`SummaryFit.failed` reports the count at the
estimates. Parameters are not held to the model file's bounds.

A paper may print only a bound, "a median above 8-fold": ``bound = "lower"`` (or ``"upper"``)
makes the value a bound on the statistic, with the one-sided likelihood
:math:`-2\log\Phi((S_j - v_j)/s_j)` (:math:`-2\log\Phi((v_j - S_j)/s_j)` for an upper bound):
no penalty well past the bound, the normal's tail short of it.

The summaries are taken as independent, as a paper's table presents them; statistics of the same
patients at several times are correlated, so the standard errors are if anything too small.

**Likelihood.** A continuous statistic with standard error :math:`s_j` contributes
:math:`((v_j - S_j)/s_j)^2`; a proportion :math:`p_j` of :math:`n_j` patients the binomial
:math:`-2[k\log S_j + (n_j - k)\log(1 - S_j)]` with :math:`k = p_j n_j`. The objective is their
sum (−2 log-likelihood without the terms that do not depend on the parameters). The Monte Carlo
error of :math:`S_j` is of order :math:`\mathrm{SD}/\sqrt M`: choose :math:`M` well above the
arms' :math:`n` so that it is small beside :math:`s_j`.

Standard errors from what papers print (normal approximations): the mean's
:math:`\mathrm{SD}/\sqrt n` (:func:`se_of_mean`); the median's :math:`1.2533\,(\mathrm{IQR}/1.349)/\sqrt n`
(:func:`se_of_median`); the SD's :math:`\mathrm{SD}/\sqrt{2(n - 1)}` (:func:`se_of_sd`).

The estimates are :math:`\log\theta` of the parameters in ``fixed`` and :math:`\log\omega` of
those in ``random``, found by BFGS (scipy) on the exact gradient (forward-mode derivatives through
the ODE solves: a handful of parameters); their covariance is :math:`2 H^{-1}` with :math:`H` the
Hessian of the objective by central differences of that gradient. The value, the gradient and
the statistics are one compiled program. :func:`predict_summaries` gives the statistics at a
fit's estimates and at draws from their covariance (prediction bands, leave-one-study-out checks).

With ``priors=True`` the objective adds the model file's prior on each estimated typical value
that declares one (``prior_sd`` about ``prior_center``, on the parameter's estimation scale:
:math:`((\log\theta - \log c)/s)^2` for a log-transformed parameter, :math:`((\theta - c)/s)^2` for
an identity one): the estimates are then posterior modes, literature and summaries combined, and
:attr:`SummaryFit.prior` is that term at the estimates.

Parameters are estimated on the log scale: log-transformed ones, and identity-transformed ones
whose lower bound is >= 0 (an Emax), which the log keeps positive.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp
from jax.scipy.stats import norm
from jaxtyping import Array, Float
from scipy.optimize import minimize

from il2treg.errors import SolverError, SpecError
from il2treg.model import Model, Parameters
from il2treg.regimen import Regimen
from il2treg.simulate import SolverOptions, simulate

#: The statistics a :class:`Summary` may hold.
STATISTICS = ("mean", "geomean", "median", "sd", "proportion_above")
#: What a statistic summarises: the observable, its ratio to each patient's baseline, or its difference.
SCALES = ("value", "fold", "change")
#: A value that is a bound on the statistic: the paper's "> v" (lower) or "< v" (upper).
BOUNDS = ("lower", "upper")
#: Statistics of a fold or a change that the module does not model, and why.
_UNDEFINED = {
    ("fold", "sd"): "the proportional residual is that of the observable, not of a ratio of two observations",
    ("change", "sd"): "the proportional residual is that of the observable, not of a difference of two observations",
    ("fold", "proportion_above"): "the proportional residual is that of the observable, not of a ratio of two observations",
    ("change", "proportion_above"): "a change may be negative, and its residual is not proportional",
    ("change", "geomean"): "a change may be zero or negative",
}


def se_of_mean(sd: float, n: int) -> float:
    """SE of a sample mean: SD / sqrt(n)."""
    return sd / math.sqrt(n)


def se_of_median(iqr: float, n: int) -> float:
    """SE of a sample median from the interquartile range (normal approximation):
    1.2533 (IQR / 1.349) / sqrt(n)."""
    return 1.2533 * (iqr / 1.349) / math.sqrt(n)


def se_of_sd(sd: float, n: int) -> float:
    """SE of a sample SD (normal approximation): SD / sqrt(2 (n - 1))."""
    return sd / math.sqrt(2 * (n - 1))


@dataclasses.dataclass(frozen=True)
class Summary:
    """One published statistic of one study arm.

    Attributes:
        arm: the arm's name, a key of the regimens given to :func:`fit_summaries`.
        observable: the model observable it summarises (its unit).
        time: days, on the clock of the arm's regimen (its dose times).
        statistic: one of :data:`STATISTICS`.
        value: the published value (a proportion for ``proportion_above``, 0.3 not 30%).
        n: patients behind it.
        se: its standard error (not for ``proportion_above``, whose error is binomial).
        threshold: ``proportion_above`` only: the observable's value patients exceed.
        scale: one of :data:`SCALES`: the observable (``value``), each patient's fold of their
            baseline (time 0) or change from it.
        bound: None, or one of :data:`BOUNDS`: the value is a bound on the statistic (not for a
            proportion).
    """

    arm: str
    observable: str
    time: float
    statistic: str
    value: float
    n: int
    se: float | None = None
    threshold: float | None = None
    scale: str = "value"
    bound: str | None = None


class SummaryFit(eqx.Module):
    """Estimates from summary statistics.

    Attributes:
        names: the estimated quantities: each parameter in ``fixed``, then ``omega_<p>`` for each in ``random``.
        fixed, random: the parameters whose typical value, and whose omega, were estimated.
        held: the omegas held fixed, by parameter.
        estimates: their values (parameters in internal units; omegas as SDs of log p).
        cov_log: the covariance :math:`2H^{-1}` of their logarithms (NaN where H is singular).
        se_log: SEs of their logarithms (relative SEs), the root of its diagonal.
        ofv: the objective at the estimates (with ``priors``, the prior term included).
        prior: the prior term at the estimates (0 without ``priors``): ``ofv - prior`` is the data's.
        converged: whether BFGS met its tolerance.
        message: scipy's word on how BFGS stopped.
        predicted: the model's statistic for each summary, in the order given.
        failed: ``(arm, count)`` of the virtual patients whose solve failed at the estimates (0
            each in a converged fit: the line search refuses a step into failures).
    """

    names: tuple[str, ...] = eqx.field(static=True)
    fixed: tuple[str, ...] = eqx.field(static=True)
    random: tuple[str, ...] = eqx.field(static=True)
    held: tuple[tuple[str, float], ...] = eqx.field(static=True)
    estimates: np.ndarray
    cov_log: np.ndarray
    se_log: np.ndarray
    ofv: float
    prior: float
    converged: bool
    message: str = eqx.field(static=True)
    predicted: np.ndarray
    failed: tuple[tuple[str, int], ...] = eqx.field(static=True)

    def estimate(self, name: str) -> float:
        return float(self.estimates[self.names.index(name)])


def _check(model: Model, regimens: Mapping[str, Regimen], summaries: Sequence[Summary], fixed, random, held, sigma_prop, n_draws) -> None:
    names = model.parameter_names
    if not fixed and not random:
        raise SpecError("nothing to estimate. Fix: name parameters in fixed or random.")
    for group, label in ((fixed, "fixed"), (random, "random")):
        if len(set(group)) < len(group):
            raise SpecError(f"a parameter is named twice in {label}: {', '.join(group)}. Fix: name each once.")
    for p, w in held.items():
        if p not in names:
            raise SpecError(f"unknown parameter {p!r} in omega. Fix: use one of {', '.join(names)}.")
        if not (math.isfinite(w) and w >= 0):
            raise SpecError(f"omega[{p!r}] must be a finite SD >= 0, got {w}. Fix: give the SD of log {p} (0.3 for a CV of about 30%).")
    for p in (*fixed, *random, *held):
        if p not in names:
            raise SpecError(f"unknown parameter {p!r}. Fix: use one of {', '.join(names)}.")
        ps = model.spec[p]
        if not (ps.transform == "log" or (ps.transform == "identity" and ps.bounds[0] >= 0 and ps.value > 0)):
            raise SpecError(f"{p!r} is estimated on the log scale from summaries, but its transform is {ps.transform!r} "
                            f"and its bounds [{ps.bounds[0]:g}, {ps.bounds[1]:g}] let it leave (0, inf). Fix: estimate log-transformed "
                            "parameters, or identity ones whose lower bound is >= 0 and value > 0.")  # fmt: skip
    check_summaries(model, regimens, summaries, sigma_prop, n_draws)


def check_summaries(model: Model, regimens: Mapping[str, Regimen], summaries: Sequence[Summary], sigma_prop: Mapping[str, float], n_draws: int,
                    beside_patients: bool = False) -> None:  # fmt: skip
    """Refuse summaries the likelihood cannot take (an unknown arm or observable, a statistic
    without what it needs), each named by its position, arm, observable and day;
    ``beside_patients`` (a population fit, :mod:`il2treg.fit.joint`): an SD also needs its residual SD.

    Raises:
        SpecError: the first such summary, with the fix.
    """
    if n_draws < 2:
        raise SpecError(f"n_draws must be >= 2 virtual patients per arm, got {n_draws}. Fix: use well above the arms' n (1000, say).")
    if not summaries:
        raise SpecError("no summaries to fit. Fix: give at least one Summary.")
    for k, s in enumerate(summaries):
        where = f"summary {k} ({s.arm}, {s.observable}, day {s.time:g})"
        if s.arm not in regimens:
            raise SpecError(f"{where}: no regimen for arm {s.arm!r}. Fix: add it to the regimens ({', '.join(regimens)}).")
        if s.observable not in model.observable_names:
            raise SpecError(f"{where}: unknown observable {s.observable!r}. Fix: use one of {', '.join(model.observable_names)}.")
        if s.statistic not in STATISTICS:
            raise SpecError(f"{where}: unknown statistic {s.statistic!r}. Fix: use one of {', '.join(STATISTICS)}.")
        if not (math.isfinite(s.time) and s.time >= 0):
            raise SpecError(f"{where}: the time must be >= 0 days. Fix: give days on the regimen's clock.")
        if not math.isfinite(s.value):
            raise SpecError(f"{where}: the value must be a finite number, got {s.value}. Fix: drop the summary or give its value.")
        if s.n < 1:
            raise SpecError(f"{where}: n must be >= 1, got {s.n}. Fix: give the patients behind the statistic.")
        if s.scale not in SCALES:
            raise SpecError(f"{where}: unknown scale {s.scale!r}. Fix: use one of {', '.join(SCALES)}.")
        if (s.scale, s.statistic) in _UNDEFINED:
            raise SpecError(f"{where}: a {s.statistic} of each patient's {s.scale} is not modelled here ({_UNDEFINED[(s.scale, s.statistic)]}). "
                            "Fix: use its mean or median, or the statistic of the observable itself (scale='value').")  # fmt: skip
        if s.bound is not None and (s.bound not in BOUNDS or s.statistic == "proportion_above"):
            raise SpecError(f"{where}: bound must be None or one of {', '.join(BOUNDS)}, and not on a proportion, got {s.bound!r}. "
                            "Fix: give bound='lower' for a printed '> v', 'upper' for '< v'.")  # fmt: skip
        if s.statistic == "proportion_above":
            if s.threshold is None or not 0.0 <= s.value <= 1.0:
                raise SpecError(f"{where}: a proportion needs a threshold and a value in [0, 1] (a proportion, not a percentage). Fix: give threshold=, and 0.3 for 30%.")
            if sigma_prop.get(s.observable, 0.0) <= 0:
                raise SpecError(f"{where}: a proportion above a threshold needs the residual SD of {s.observable!r}. Fix: give sigma_prop[{s.observable!r}] > 0.")
        elif s.se is None or not s.se > 0:
            raise SpecError(f"{where}: a {s.statistic} needs its standard error se > 0. Fix: give se= (se_of_mean, se_of_median, se_of_sd convert a printed SD or IQR).")
        if beside_patients and s.statistic == "sd" and sigma_prop.get(s.observable, 0.0) <= 0:
            raise SpecError(f"{where} is an SD, which needs the residual SD of {s.observable!r} beside patients (without it the residual spread would be put on omega). "
                            f"Fix: give sigma_prop {s.observable} > 0 (the fit's estimate of it, say).")  # fmt: skip


@functools.partial(jax.jit, static_argnames="log")  # one program per shape, also when called outside a jit
def smooth_median(f: Float[Array, " m"], log: bool = True) -> Float[Array, ""]:
    r"""The kernel-smoothed median of ``f`` (module docstring): :math:`q` with
    :math:`\frac1M\sum_m \Phi((q - g_m)/h) = \tfrac12`, :math:`g = \log f` (``log``; then
    :math:`e^q` is returned, and NaN where an :math:`f \le 0`) or :math:`g = f`, and
    :math:`h = 1.06\,\mathrm{SD}(g)\,M^{-1/5}`. The scale is the caller's fixed choice, not the
    data's, so that the statistic does not jump where a prediction crosses 0. Differentiable to
    first order (forward and reverse mode): the root comes from 64 bisections, its derivative from
    one Newton step, :math:`\partial q = -\partial E / E'(q)` with :math:`E` the left side minus
    one half (second derivatives through it are not exact: take a Hessian by differences of the
    gradient, as :func:`fit_summaries` does)."""
    positive = jnp.all(f > 0)
    g = jnp.log(jnp.where(f > 0, f, 1.0)) if log else f
    m = g.shape[0]
    var = jnp.var(g)
    sd = jnp.where(var > 0, jnp.sqrt(jnp.where(var > 0, var, 1.0)), 0.0)  # no NaN derivative at var = 0
    # a floor on h where every prediction is the same (no variability): then q is that value
    h = jnp.maximum(1.06 * sd * m ** -0.2, 1e-12 * (1.0 + jnp.max(jnp.abs(g))))

    def excess(q, g, h):
        return jnp.mean(norm.cdf((q - g) / h)) - 0.5

    g0, h0 = jax.lax.stop_gradient(g), jax.lax.stop_gradient(h)

    def bisect(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = excess(mid, g0, h0) > 0
        return jnp.where(above, lo, mid), jnp.where(above, mid, hi)

    # excess < 0 at min(g) - h (at most Phi(-1) - 1/2) and > 0 at max(g) + h
    lo, hi = jax.lax.fori_loop(0, 64, bisect, (jnp.min(g0) - h0, jnp.max(g0) + h0))
    q0 = 0.5 * (lo + hi)
    slope = jnp.mean(norm.pdf((q0 - g) / h)) / h
    q = q0 - excess(q0, g, h) / slope
    if not log:
        return q
    return jnp.where(positive, jnp.exp(jnp.where(positive, q, 0.0)), jnp.nan)


def _statistic(kind: str, f, sigma: float, threshold, scale: str = "value"):
    """(the statistic of the predictions ``f`` of M patients, and for a proportion its log and
    the log of its complement, from log-CDFs so that neither underflows to a flat 0); NaN where
    a geometric mean, a median of a value or fold, or a proportion meets a prediction <= 0
    (outside their model). A median is smoothed on the log scale, that of a change (which may
    be <= 0) on its own."""
    zero = jnp.zeros(())
    if kind == "mean":
        return jnp.mean(f), zero, zero
    if kind == "median":
        return smooth_median(f, log=scale != "change"), zero, zero
    if kind == "sd":
        return jnp.sqrt(jnp.var(f) + sigma**2 * jnp.mean(f**2)), zero, zero
    positive = jnp.all(f > 0)
    safe = jnp.where(f > 0, f, 1.0)
    if kind == "geomean":
        return jnp.where(positive, jnp.exp(jnp.mean(jnp.log(safe))), jnp.nan), zero, zero
    z = (safe - threshold) / (sigma * safe)
    log_m = jnp.log(f.shape[0])
    log_p, log_q = logsumexp(norm.logcdf(z)) - log_m, logsumexp(norm.logcdf(-z)) - log_m
    return jnp.where(positive, jnp.exp(log_p), jnp.nan), log_p, log_q


def fit_summaries(
    model: Model,
    regimens: Mapping[str, Regimen],
    summaries: Sequence[Summary],
    *,
    fixed: Sequence[str],
    random: Sequence[str] = (),
    omega: Mapping[str, float] | None = None,
    sigma_prop: Mapping[str, float] | None = None,
    n_draws: int = 1000,
    seed: int = 0,
    options: SolverOptions | None = None,
    max_steps: int = 200,
    gtol: float = 1e-4,
    start: Mapping[str, float] | None = None,
    priors: bool = False,
) -> SummaryFit:
    """Estimate the typical values of ``fixed`` and the omegas of ``random`` from published
    summaries (the module docstring has the equations).

    Arguments:
        model: the model; parameters not estimated stay at its values.
        regimens: each arm's regimen, by the arms' names.
        summaries: the published statistics.
        fixed: parameters whose typical value is estimated (log-transformed ones, or identity
            ones bounded below by 0).
        random: parameters whose between-patient SD (of log p) is estimated; started at the
            model's ``cv_percent`` (or 0.3 where it has none).
        omega: SDs of log p held fixed for other parameters with variability (none by default).
        sigma_prop: proportional residual SD per observable (for ``sd`` and ``proportion_above``).
        n_draws: virtual patients per arm (:math:`M`).
        seed: of their standard-normal draws.
        options: solver options (forward-mode sensitivities by default: few parameters).
        max_steps: BFGS iterations at most; ``gtol``: BFGS stops where the gradient's largest
            entry is below it.
        start: starting values (internal units) of some of ``fixed``, and ``omega_<p>`` of some
            of ``random``, instead of the model's (another fit's estimates: a leave-one-out refit).
        priors: add the model file's priors on the estimated typical values (module docstring).

    Raises:
        SpecError: an unknown parameter, arm or observable, or a summary without what its
            statistic needs (named by its position, arm, observable and day).
    """
    fixed, random = tuple(fixed), tuple(random)
    options = options or SolverOptions(adjoint=dfx.ForwardMode())
    sigma_prop = dict(sigma_prop or {})
    held = dict(omega or {})
    _check(model, regimens, summaries, fixed, random, held, sigma_prop, n_draws)
    given = dict(start or {})
    unknown = set(given) - set(fixed) - {f"omega_{p}" for p in random}
    if unknown:
        raise SpecError(f"start names {sorted(unknown)[0]!r}, which is not estimated. Fix: give starts only for fixed and omega_<random>.")
    if not all(math.isfinite(v) and v > 0 for v in given.values()):
        raise SpecError(f"every start must be a finite value > 0 (estimated on the log scale), got {given}. Fix: give positive values.")
    program = SummaryProgram(model, regimens, summaries, fixed, random, held, sigma_prop, n_draws, seed, options, priors=priors)
    evaluate = jax.jit(program.evaluate)
    start = [math.log(given.get(p, float(program.typical[model.parameter_names.index(p)]))) for p in fixed]
    start += [math.log(given.get(f"omega_{p}", model.spec[p].omega if model.spec[p].omega > 0 else 0.3)) for p in random]
    calls = {}

    def at(x):
        key = tuple(np.asarray(x, dtype=np.float64))
        if key not in calls:
            calls[key] = tuple(np.asarray(v, dtype=np.float64) for v in evaluate(jnp.asarray(x, dtype=jnp.float64)))
        return calls[key]

    def fun(x):
        """The objective for scipy: +inf where a solve failed or a statistic is undefined, so
        that the line search steps back."""
        v, g, _, failed = at(x)
        if failed.any() or not np.isfinite(v) or not np.all(np.isfinite(g)):
            return math.inf, np.zeros_like(g)
        return float(v), g

    x0 = np.asarray(start)
    _, _, pred0, failed0 = at(x0)
    if failed0.any() or not np.all(np.isfinite(pred0)):
        raise SolverError(failure_message(program.arms, failed0, n_draws, summaries, pred0, "at the start"))
    solution = minimize(fun, x0, jac=True, method="BFGS", options={"gtol": gtol, "maxiter": max_steps})
    x = np.asarray(solution.x, dtype=np.float64)
    ofv, _, pred, failed = at(x)
    # the Hessian by central differences of the exact gradient (step 1e-4 in log p)
    step = 1e-4
    hessian = np.stack([(at(x + step * e)[1] - at(x - step * e)[1]) / (2 * step) for e in np.eye(len(x))], axis=1)
    hessian = 0.5 * (hessian + hessian.T)
    try:
        cov = 2.0 * np.linalg.inv(hessian)
    except np.linalg.LinAlgError:
        cov = np.full((len(x), len(x)), np.nan)
    se_log = np.sqrt(np.where(np.diag(cov) > 0, np.diag(cov), np.nan))
    return SummaryFit(
        names=(*fixed, *(f"omega_{p}" for p in random)), fixed=fixed, random=random, held=tuple(held.items()),
        estimates=np.exp(np.asarray(x)), cov_log=cov, se_log=se_log, ofv=float(ofv), prior=float(program.prior(jnp.asarray(x))),
        converged=bool(solution.success) and not failed.any() and bool(np.isfinite(ofv)), message=str(solution.message), predicted=pred,
        failed=tuple(zip(program.arms, failed.astype(int).tolist(), strict=True)),
    )  # fmt: skip


def predict_summaries(
    fit: SummaryFit,
    model: Model,
    regimens: Mapping[str, Regimen],
    summaries: Sequence[Summary],
    *,
    sigma_prop: Mapping[str, float] | None = None,
    n_draws: int = 1000,
    seed: int = 0,
    options: SolverOptions | None = None,
    samples: int = 0,
    sample_seed: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """The model's statistic of each summary at a fit's estimates, and at ``samples`` draws of the
    estimates from their covariance (log scale, normal): a prediction with its uncertainty, for
    summaries the fit may not have seen (a left-out study's). The summaries' values are not used.

    Arguments:
        fit: from :func:`fit_summaries` with the same ``model``.
        model, regimens, summaries, sigma_prop, n_draws, seed, options: as for :func:`fit_summaries`.
        samples: draws from the covariance (0: none; needs ``fit.cov_log`` positive definite).
        sample_seed: their seed.

    Returns:
        ``(at the estimates [summaries], at the draws [samples, summaries])``; NaN where a draw's
        virtual patient failed to solve or its statistic is undefined.

    Raises:
        SpecError: as :func:`fit_summaries`, or samples asked of a fit without a covariance.
    """
    options = options or SolverOptions(adjoint=dfx.ForwardMode())
    sigma_prop = dict(sigma_prop or {})
    held = dict(fit.held)
    _check(model, regimens, summaries, fit.fixed, fit.random, held, sigma_prop, n_draws)
    if samples:
        if not np.all(np.isfinite(fit.cov_log)):
            raise SpecError("the fit has no covariance (its Hessian could not be inverted), so its estimates cannot be drawn. "
                            "Fix: use samples=0, or refit with fewer parameters.")  # fmt: skip
        try:
            np.linalg.cholesky(fit.cov_log)
        except np.linalg.LinAlgError:
            raise SpecError("the fit's covariance is not positive definite (the fit stopped short of a minimum, or the data do not "
                            "determine a parameter), so its estimates cannot be drawn. Fix: use samples=0, or refit with fewer parameters.") from None  # fmt: skip
    program = SummaryProgram(model, regimens, summaries, fit.fixed, fit.random, held, sigma_prop, n_draws, seed, options)

    @jax.jit
    def statistics(x):
        (pred, _, _), failed = program.predicted(x)
        return jnp.where(jnp.any(failed > 0), jnp.nan, pred)

    x = np.log(np.asarray(fit.estimates, dtype=np.float64))
    draws = np.random.default_rng(sample_seed).multivariate_normal(x, fit.cov_log, size=samples) if samples else np.zeros((0, x.size))
    return np.asarray(statistics(jnp.asarray(x))), np.asarray([np.asarray(statistics(jnp.asarray(d))) for d in draws]).reshape(samples, len(summaries))


class SummaryProgram:
    """The arms' virtual patients and the summaries' statistics and objective as functions of
    x = (log theta of ``fixed``, log omega of ``random``), traced by :func:`fit_summaries` and
    :func:`predict_summaries`; or of every virtual patient's parameters (:meth:`statistics`), as
    a population fit gives them (:mod:`il2treg.fit.joint`)."""

    def __init__(self, model, regimens, summaries, fixed, random, held, sigma_prop, n_draws, seed, options, priors=False):
        names = model.parameter_names
        declared = [p for p in fixed if priors and model.spec[p].prior_sd is not None]
        self.prior_at = jnp.asarray([fixed.index(p) for p in declared], dtype=jnp.int32)
        self.prior_log = jnp.asarray([model.spec[p].transform == "log" for p in declared], dtype=bool)
        self.prior_centre = jnp.asarray([model.spec[p].prior_center for p in declared], dtype=jnp.float64)
        self.prior_sd = jnp.asarray([model.spec[p].prior_sd for p in declared], dtype=jnp.float64)
        self.model, self.regimens, self.summaries, self.options = model, regimens, summaries, options
        self.fixed, self.sigma_prop, self.n_draws, self.names = fixed, sigma_prop, n_draws, names
        self.typical = model.typical().values
        self.varied = (*random, *(p for p in held if p not in random))
        self.fixed_idx = jnp.asarray([names.index(p) for p in fixed], dtype=jnp.int32)
        self.varied_idx = jnp.asarray([names.index(p) for p in self.varied], dtype=jnp.int32)
        self.held_omega = jnp.asarray([held[p] for p in self.varied[len(random) :]], dtype=jnp.float64)
        self.arms = tuple(dict.fromkeys(s.arm for s in summaries))
        self.draws = jax.random.normal(jax.random.PRNGKey(seed), (len(self.arms), n_draws, len(self.varied)), dtype=jnp.float64)
        self.times = {a: np.unique([0.0, *(s.time for s in summaries if s.arm == a)]) for a in self.arms}
        self.where = [(self.arms.index(s.arm), int(np.searchsorted(self.times[s.arm], s.time)), model.observable_names.index(s.observable))
                      for s in summaries]  # fmt: skip
        self.value = jnp.asarray([s.value for s in summaries], dtype=jnp.float64)
        self.se = jnp.asarray([s.se if s.se is not None else 1.0 for s in summaries], dtype=jnp.float64)
        self.binomial = jnp.asarray([s.statistic == "proportion_above" for s in summaries])
        self.lower = jnp.asarray([s.bound == "lower" for s in summaries])
        self.upper = jnp.asarray([s.bound == "upper" for s in summaries])
        self.n = jnp.asarray([s.n for s in summaries], dtype=jnp.float64)

    def predicted(self, x):
        """(each summary's statistic, with the logs of a proportion and of its complement; each
        arm's count of virtual patients whose solve failed) at x."""
        nf = len(self.fixed)
        theta = self.typical.at[self.fixed_idx].set(jnp.exp(x[:nf])) if nf else self.typical
        omega_v = jnp.concatenate([jnp.exp(x[nf:]), self.held_omega])
        factor = jnp.ones((len(self.arms), self.n_draws, len(self.names)))
        if self.varied:
            factor = factor.at[:, :, self.varied_idx].set(jnp.exp(self.draws * omega_v))
        return self.statistics(theta * factor)

    def statistics(self, thetas: Float[Array, "arms draws params"]):
        """:meth:`predicted` from every virtual patient's parameters (``[arm, patient, parameter]``,
        the arms in the order of :attr:`arms`; internal units): how a population fit's
        random effects enter (:mod:`il2treg.fit.joint`)."""
        values, failed = [], []
        for a, arm in enumerate(self.arms):
            sim = simulate(self.model, self.regimens[arm], jnp.asarray(self.times[arm]), Parameters(thetas[a], self.names), options=self.options)
            values.append(sim.values)
            failed.append(jnp.sum(sim.status != 0))
        stats = []
        for s, (a, t, k) in zip(self.summaries, self.where, strict=True):
            f = values[a][:, t, k]
            if s.scale == "fold":
                f = f / values[a][:, 0, k]
            elif s.scale == "change":
                f = f - values[a][:, 0, k]
            stats.append(_statistic(s.statistic, f, self.sigma_prop.get(s.observable, 0.0), s.threshold, s.scale))
        return tuple(jnp.stack(column) for column in zip(*stats, strict=True)), jnp.stack(failed)

    def terms(self, stats):
        """Each summary's -2 log-likelihood given the model's statistics (module docstring)."""
        pred, log_p, log_q = stats
        k = self.value * self.n
        z = (pred - self.value) / self.se
        continuous = jnp.where(self.lower, -2.0 * norm.logcdf(z), jnp.where(self.upper, -2.0 * norm.logcdf(-z), z**2))
        return jnp.where(self.binomial, -2.0 * (k * log_p + (self.n - k) * log_q), continuous)

    def ofv(self, stats):
        """-2 log-likelihood of the summaries given the model's statistics: the sum of :meth:`terms`."""
        return jnp.where(jnp.all(jnp.isfinite(stats[0])), jnp.sum(self.terms(stats)), jnp.nan)  # undefined where any statistic is

    def prior(self, x):
        """The priors' -2 log density (without constants) of the estimated typical values."""
        if self.prior_at.size == 0:
            return jnp.zeros(())
        v = x[self.prior_at]
        z = jnp.where(self.prior_log, v - jnp.log(self.prior_centre), jnp.exp(v) - self.prior_centre) / self.prior_sd
        return jnp.sum(z**2)

    def evaluate(self, x):
        """(objective, its gradient, the model's statistics, failed solves per arm): the solves
        run once, the value riding along as auxiliary output of the forward-mode gradient."""

        def with_statistics(y):
            stats, failed = self.predicted(y)
            ofv = self.ofv(stats) + self.prior(y)
            return ofv, (ofv, stats[0], failed)

        gradient, (ofv, pred, failed) = jax.jacfwd(with_statistics, has_aux=True)(x)
        return ofv, gradient, pred, failed


def failure_message(arms, failed, n_draws, summaries, pred, when: str) -> str:
    """The one-line cause of a summary objective that cannot be evaluated: the arm with the most
    failed virtual patients, else the first undefined statistic."""
    if failed.any():
        a = int(np.argmax(failed))
        return (f"{int(failed[a])} of {n_draws} virtual patients of arm {arms[a]!r} failed to solve {when}. "
                "Fix: start nearer plausible values (the model file's), loosen the solver's max_steps, or check the regimen.")  # fmt: skip
    j = int(np.argmax(~np.isfinite(pred)))
    s = summaries[j]
    return (f"summary {j} ({s.arm}, {s.observable}, day {s.time:g}): its {s.statistic} is undefined {when}, a virtual patient's "
            f"prediction being <= 0. Fix: use the mean there, the median of a change (scale='change'), or a time after the observable has risen.")  # fmt: skip
