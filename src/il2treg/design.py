r"""Regimen comparison and gradient-based regimen design.

**Comparison** (:func:`compare`). Each regimen is simulated over one virtual population
(:func:`virtual_population`: every virtual patient carries its own draw of the population
parameters, so the spread is the predictive distribution of a new patient, between-patient
variability and parameter uncertainty together; all regimens share the same patients). Per
patient (:data:`METRICS`, each with its unit):

* IL-2 exposure over the whole horizon: :math:`C_{max}` and the time above the Tconv and the
  CD56bright NK signalling thresholds, the patient's ``ec50_tconv`` and ``ec50_nk`` (hours, linear
  interpolation between grid points; the grid has 30-minute steps for 36 h after every dose);
* Treg fold change :math:`R_T(t) = T(t)/T(0)` over the treatment period (weeks 0-12): peak,
  trough (the lowest value from day 7 to week 12: how well the regimen keeps Tregs up between
  doses) and time average :math:`\frac1{84}\int_0^{84} R_T\,dt`;
* Tconv and NK: largest change from baseline (%), and the peak relative CD25 on Tregs, over the
  horizon;
* latent SELENA-SLEDAI change from day 0 and the probability of an SRI-4 response at each
  assessment week (12 and 24): the exact probability of :func:`il2treg.trial.response_probability`
  under the LUPIL-2 design's scoring (visit noise, 2-point grid, entry SLEDAI >= 6), conditional on
  entry, times the BILAG/PGA keep probability.

The table gives the median and the 90% interval of each metric per regimen. A patient whose solve
fails is flagged (``status``) and left out of the table's statistics; it does not stop the run.

**Design** (:func:`optimise`). Dose amounts (and, with ``optimise_times``, dose times) of a
template regimen are chosen to maximise an objective (:data:`OBJECTIVES`; the mean over the
design population) under :class:`Constraints`, by projected gradient ascent through the ODE solve
(steps of decaying length along the normalised gradient, from every start at once).
Any model: the objective is read from one of its observables (its time average, the time average
of its fold change from day 0, or its fall; for the IL-2 model also the SRI-4 probability), and
the limits on its observables' peaks and largest changes from day 0 hold at a stated quantile of
the population (for the IL-2 model: Tconv, NK and :math:`C_{max}`). Bounds on each dose and on
the total dose are kept by Euclidean projection after every step; the observables' limits by a
quadratic penalty. At the end every constraint is checked by a fresh simulation on a finer grid with the
comparison's code; if one is exceeded, the doses are scaled back (all constraints but the minimum
total dose grow with dose) until all hold. A constraint set that no regimen of the template's form
can meet is an :class:`InfeasibleDesignError`, never a silent best effort.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from il2treg.errors import InputError
from il2treg.model import Model, Parameters, draw_typical, load_model, sample_population
from il2treg.observables import OBSERVABLE_NAMES
from il2treg.regimen import Regimen, named
from il2treg.simulate import SolverOptions, iter_simulations, max_dose_lag, simulate, slots_needed
from il2treg.trial import TrialDesign, entry_and_fall, load_design, response_probability


class InfeasibleDesignError(InputError):
    """No regimen of the requested form meets the constraints."""


#: Per-patient metrics of :func:`compare` -> unit.
METRICS: dict[str, str] = {
    "cmax_pM": "pM",
    "hours_above_tconv": "h",
    "hours_above_nk": "h",
    "treg_peak_fold": "1",
    "treg_trough_fold": "1",
    "treg_mean_fold": "1",
    "tconv_change_pct": "%",
    "nk_change_pct": "%",
    "cd25_peak_rel": "1",
}
#: Treatment period (days) over which the Treg fold-change metrics and design objectives are taken.
TREATMENT_DAYS: float = 84.0
#: Trough window start (day): from here to :data:`TREATMENT_DAYS`.
TROUGH_FROM_DAY: float = 7.0
_WINDOW_DAYS, _WINDOW_STEP = 1.5, 1.0 / 48.0  # IL-2 exposure grid after each dose (36 h, 30 min)
_IDX = {name: k for k, name in enumerate(OBSERVABLE_NAMES)}
#: An observation at a dose time reads the state before the dose (:mod:`il2treg.simulate`); the
#: metrics also read it this long after each dose (days; 86 ms), where a bolus without lag peaks.
JUST_AFTER: float = 1e-6


def virtual_population(model: Model, n: int, *, seed: int = 0, fit=None, uncertainty: bool = True, draws: int | None = None,
                       uncertain=None) -> tuple[Model, Parameters]:  # fmt: skip
    r"""``n`` virtual patients, with parameter uncertainty and between-patient variability.

    * ``fit`` (a :class:`~il2treg.fit.FitResult`): population parameters drawn from the fit's
      posterior (NUTS draws, or the Laplace normal approximation), random effects from its
      :math:`\omega` (:func:`il2treg.fit.predictive.draw_patients`); the fit's model is returned.
      ``uncertain`` names parameters the fit held (not estimated, no random effect) whose typical
      value is drawn from its prior in the model file instead, e.g. ``("r50", "kd")``: a fit that
      held them at assumed values otherwise understates the uncertainty of what they drive.
    * otherwise ``model``'s defaults: the typical value of each parameter with a declared prior
      (``prior_sd`` in ``models/``; only those in ``uncertain`` if given) is drawn from that prior
      (:func:`il2treg.model.draw_typical`; not with ``uncertainty=False``), then the
      between-patient variability of :func:`il2treg.sample_population`. Draws are clipped to the
      parameter's bounds.

    ``draws``: ``None``, every patient has its own draw of the population parameters (the spread
    is the predictive distribution of one new patient). An integer K: K draws of the population
    parameters, each shared by ``n / K`` patients (draw-major rows; ``n`` a multiple of K), so that
    a statistic of the population (a mean response, a responder rate) has one value per draw and
    an interval from parameter uncertainty (:meth:`Comparison.population`).

    Returns:
        ``(model, params)`` with ``params.values`` of shape ``[n, n_params]``.
    """
    n = int(n)
    if n < 1:
        raise InputError(f"n must be a positive number of virtual patients, got {n!r}.")
    k_draws, per_draw = _draw_layout(n, draws)
    if fit is not None:
        from il2treg.fit.predictive import draw_patients

        spec, params = draw_patients(fit, n_draws=k_draws, n_patients=per_draw, seed=seed)
        if uncertain:
            params = _held_from_priors(spec, params, uncertain, k_draws, seed)
        return spec.model, params
    if not uncertainty:
        if uncertain or draws is not None:
            raise InputError("virtual_population(uncertainty=False) with uncertain= or draws=: without parameter uncertainty there is "
                             "nothing to draw. Fix: drop uncertainty=False, or uncertain= and draws=.")  # fmt: skip
        return model, sample_population(model, n, seed)
    rng = np.random.default_rng(seed)
    typical = np.repeat(np.asarray(draw_typical(model, k_draws, rng, names=uncertain).values), per_draw, axis=0)
    return model, sample_population(model, n, seed, typical=Parameters(jnp.asarray(typical), model.parameter_names))


def _draw_layout(n: int, draws: int | None) -> tuple[int, int]:
    """(population draws, patients per draw) of ``n`` patients."""
    if draws is None:
        return n, 1
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 2:
        raise InputError(f"draws={draws!r}: must be an integer >= 2 (population draws), or None for one per patient. Fix: e.g. draws=100.")
    k = int(draws)
    if n % k or n // k < 2:
        raise InputError(f"n={n} patients do not split into draws={k} groups of two or more. "
                         f"Fix: make n a multiple of draws, e.g. n={max(2, n // k) * k}.")
    return int(draws), n // int(draws)


def _held_from_priors(spec, params: Parameters, uncertain, k_draws: int, seed: int) -> Parameters:
    """Replace each named held parameter of a fit's patients by a draw from its prior (one per
    population draw, about the value the fit held)."""
    names = [uncertain] if isinstance(uncertain, str) else list(uncertain)
    problem = spec.problem()
    estimated = {*problem.fixed, *problem.random, *problem.iov, *(e.parameter for e in problem.covariates)}
    clash = [m for m in names if m in estimated]
    if clash:
        raise InputError(f"fit {spec.name!r} estimates {', '.join(clash)} (or their variability): its posterior carries their uncertainty. "
                         "Fix: name in uncertain= only parameters the fit held.")  # fmt: skip
    values = np.array(params.values, dtype=np.float64).reshape(k_draws, -1, len(params.names))
    drawn = np.asarray(draw_typical(spec.model, k_draws, np.random.default_rng([seed, 1]), names=names, typical=values[:, 0, :]).values)
    cols = [params.names.index(m) for m in names]
    values[:, :, cols] = drawn[:, None, cols]
    return Parameters(jnp.asarray(values.reshape(-1, len(params.names))), params.names)


# ------------------------------------------------------------------------------------ comparison


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Result of :func:`compare`.

    Attributes:
        per_patient: one row per (regimen, patient): ``patient``, its population ``draw`` (equal to
            ``patient`` unless ``draws`` was given), the :data:`METRICS`, ``sledai_change_w<k>``
            (points) and ``p_sri4_w<k>`` for each assessment week, and the solver ``status``
            (0 = solved; failed patients have NaN metrics).
        table: one row per (regimen, metric): ``median``, ``p5``, ``p95`` over the solved
            patients, ``unit``, ``n`` solved and ``failed``.
        regimens: the regimens compared, by name.
        weeks: the assessment weeks.
        run_s: wall time of the simulations and metrics (s), compilation included on a first call.
        draws: the number of population draws the patients share (``per_patient["draw"]`` says
            which), or ``None`` where every patient has its own (:func:`virtual_population`).
    """

    per_patient: pd.DataFrame
    table: pd.DataFrame
    regimens: dict
    weeks: tuple
    run_s: float
    draws: int | None = None

    def population(self, level: float = 0.9) -> pd.DataFrame:
        r"""What the regimen does to the population, with its uncertainty: per regimen and metric,
        the mean over the patients of each population draw (over the solved ones), then the
        median and the central ``level`` interval of those means over the draws.

        The mean of ``p_sri4_w<k>`` is the expected SRI-4 rate among the patients who enter (entry
        SLEDAI >= 6). Needs ``compare(..., draws=K)``.

        Returns:
            One row per (regimen, metric): ``unit``, ``median``, ``lo``, ``hi``, ``draws``.
        """
        return self._draw_means(None, level)

    def difference(self, reference: str, level: float = 0.9) -> pd.DataFrame:
        r"""Each regimen against ``reference`` in the same patients: per population draw the mean
        over patients of the paired difference (regimen minus reference, over patients solved in
        both), then its median and central ``level`` interval over the draws, and ``p_positive``,
        the fraction of draws in which it is above 0. Needs ``compare(..., draws=K)``.

        Returns:
            One row per (regimen other than ``reference``, metric): ``unit``, ``median``, ``lo``,
            ``hi``, ``p_positive``, ``draws``.
        """
        if reference not in self.regimens:
            raise InputError(f"reference regimen {reference!r} is not in this comparison. Fix: use one of {', '.join(self.regimens)}.")
        return self._draw_means(reference, level)

    def _draw_means(self, reference: str | None, level: float) -> pd.DataFrame:
        if self.draws is None:
            raise InputError("this comparison gave every patient its own population draw, so a population statistic has no "
                             "per-draw value. Fix: compare(..., draws=K), e.g. K = 100 with n = 2000.")  # fmt: skip
        if not 0.0 < level < 1.0:
            raise InputError(f"level={level!r}: must be between 0 and 1. Fix: e.g. level=0.9.")
        units = dict(zip(self.table["metric"], self.table["unit"]))
        pp = self.per_patient
        q = 50.0 * (1.0 - level), 50.0 * (1.0 + level)
        rows = []
        base = None if reference is None else pp[pp["regimen"] == reference].set_index("patient")
        for name in self.regimens:
            if name == reference:
                continue
            g = pp[pp["regimen"] == name].set_index("patient")
            for metric, unit in units.items():
                x = g[metric].where(g["status"] == 0)
                if base is not None:
                    x = x - base[metric].where(base["status"] == 0)
                per_draw = x.groupby(g["draw"]).mean()  # NaN (a failed solve) left out
                v = per_draw.to_numpy()
                v = v[np.isfinite(v)]
                lo, med, hi = np.percentile(v, [q[0], 50.0, q[1]]) if v.size else (np.nan,) * 3
                row = {"regimen": name, "metric": metric, "unit": unit, "median": med, "lo": lo, "hi": hi}
                if base is not None:
                    row["p_positive"] = float(np.mean(v > 0)) if v.size else np.nan
                rows.append({**row, "draws": int(v.size)})
        return pd.DataFrame(rows)

    def wide(self) -> pd.DataFrame:
        """Regimens as rows, metrics as columns, each ``median [p5, p95]``."""
        t = self.table
        text = t.apply(lambda r: f"{r['median']:.3g} [{r['p5']:.3g}, {r['p95']:.3g}]", axis=1)
        return pd.DataFrame({"regimen": t["regimen"], "metric": t["metric"], "value": text}).pivot(index="regimen", columns="metric", values="value").loc[list(self.regimens)]


def resolve_regimens(regimens) -> dict[str, Regimen]:
    """Names (:data:`il2treg.regimen.NAMED_REGIMENS`), a comma-separated string, or a mapping
    name -> :class:`Regimen` -> an ordered dict of regimens."""
    if isinstance(regimens, str):
        regimens = [r.strip() for r in regimens.split(",") if r.strip()]
    if isinstance(regimens, dict):
        out = dict(regimens)
    else:
        out = {}
        for r in regimens:
            if isinstance(r, Regimen):
                out[r.name or f"regimen_{len(out) + 1}"] = r
            else:
                out[str(r)] = named(str(r))
    if not out:
        raise InputError("no regimens to compare. Fix: name at least one, e.g. 'lupil2,he2020'.")
    for name, r in out.items():
        if not isinstance(r, Regimen):
            raise InputError(f"regimen {name!r} is a {type(r).__name__}, not a Regimen. Fix: build it with il2treg.regimen.")
        if np.asarray(r.times).ndim != 1:
            raise InputError(f"regimen {name!r} is batched; compare needs one regimen shared by all patients.")
    return out


def exposure_grid(regimen: Regimen, horizon_days: float, *, coarse_step: float = 0.5, window_step: float = _WINDOW_STEP) -> np.ndarray:
    """Observation days: every ``coarse_step`` over the horizon and its end, plus ``window_step`` steps for 36 h
    after every dose (where IL-2 is above baseline), and the instant after each dose (:data:`JUST_AFTER`)."""
    coarse = np.union1d(np.arange(0.0, horizon_days + 1e-9, coarse_step), [horizon_days])
    doses = np.asarray(regimen.times, dtype=np.float64)
    offsets = np.concatenate([[0.0, JUST_AFTER], np.arange(window_step, _WINDOW_DAYS + 1e-9, window_step)])
    fine = (doses[:, None] + offsets[None, :]).ravel() if doses.size else np.zeros(0)
    return np.union1d(coarse, fine[fine <= horizon_days])


def hours_above(t: np.ndarray, c: np.ndarray, threshold: np.ndarray) -> np.ndarray:
    r"""Hours with ``c > threshold`` (per row), ``c`` linear between the days ``t``:
    :math:`24\sum_j \Delta t_j\,\phi_j`, :math:`\phi_j` the fraction of interval :math:`j` above."""
    a, b = c[:, :-1] - threshold[:, None], c[:, 1:] - threshold[:, None]
    dt = np.diff(t)[None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        cross = np.where(a > 0, a / (a - b), b / (b - a))  # fraction above when the sign changes
    frac = np.where((a > 0) & (b > 0), 1.0, np.where((a > 0) != (b > 0), cross, 0.0))
    return 24.0 * np.sum(frac * dt, axis=1)


def regimen_metrics(model: Model, regimen: Regimen, params: Parameters, *, weeks=(12, 24), design: TrialDesign | None = None,
                    options: SolverOptions = SolverOptions(), window_step: float = _WINDOW_STEP) -> pd.DataFrame:  # fmt: skip
    """Per-patient metrics of one regimen (module docstring); one row per patient of ``params``.
    The IL-2 model's metrics: for another model, :func:`compare` gives :func:`generic_metrics`."""
    require_il2(model, "regimen_metrics")
    weeks = tuple(float(w) for w in weeks)
    t = exposure_grid(regimen, _horizon(weeks), window_step=window_step)
    theta = np.atleast_2d(np.asarray(params.values))
    sim = simulate(model, regimen, jnp.asarray(t), Parameters(jnp.asarray(theta), params.names), options=options)
    return _metrics(sim, theta, params.names, weeks, design or load_design("lupil2"))


#: Parameters the IL-2 metrics read besides the observables (the signalling thresholds).
_IL2_PARAMETERS = ("ec50_tconv", "ec50_nk")


def is_il2(model: Model) -> bool:
    """Whether ``model`` has the IL-2 model's observables, in its order, and the parameters
    :data:`METRICS` read: the models the IL-2 metrics and the regimen design apply to."""
    return tuple(model.observable_names) == OBSERVABLE_NAMES and all(p in model.parameter_names for p in _IL2_PARAMETERS)


def require_il2(model: Model, what: str) -> None:
    if not is_il2(model):
        raise InputError(f"{what} computes the IL-2 model's metrics (Treg fold, hours above the Tconv and NK thresholds, "
                         f"SLEDAI), which model {model.name!r} does not have. Fix: use il2treg.design.compare, which gives any "
                         "model's observables' peaks, averages and values by week.")  # fmt: skip


def generic_metrics(sim, weeks: tuple[float, ...]) -> tuple[pd.DataFrame, dict[str, str]]:
    r"""Per-patient metrics of any model's observables from a batched simulation over
    :math:`[0, T]` (:math:`T`: the last assessment week): for each observable :math:`y`, its peak ``<y>_max``, its time average
    ``<y>_mean`` :math:`= \frac1T\int_0^T y\,dt` (trapezoids on the grid) and its value at each
    assessment week ``<y>_w<k>``. Returns the table (``patient``, the metrics, ``status``) and each
    metric's unit."""
    t = np.asarray(sim.times, dtype=np.float64).reshape(-1, sim.times.shape[-1])[0]
    v = np.asarray(sim.values, dtype=np.float64).reshape(-1, len(t), len(sim.names))
    out: dict[str, np.ndarray] = {"patient": np.arange(1, v.shape[0] + 1)}
    units: dict[str, str] = {}
    span = t[-1] - t[0]
    for k, (name, unit) in enumerate(zip(sim.names, sim.units)):
        y = v[:, :, k]
        out[f"{name}_max"], units[f"{name}_max"] = y.max(axis=1), unit
        if span > 0:
            out[f"{name}_mean"] = np.sum(0.5 * (y[:, 1:] + y[:, :-1]) * np.diff(t), axis=1) / span
            units[f"{name}_mean"] = unit
        for w in weeks:
            out[f"{name}_w{w:g}"], units[f"{name}_w{w:g}"] = y[:, int(np.argmin(np.abs(t - 7.0 * w)))], unit
    out["status"] = np.asarray(sim.status).reshape(-1)
    return pd.DataFrame(out), units


def _horizon(weeks: tuple[float, ...]) -> float:
    """The last day the metrics read: the latest assessment week, or the end of treatment."""
    return max(7.0 * max(weeks), TREATMENT_DAYS)


def _metrics(sim, theta: np.ndarray, names, weeks: tuple[float, ...], design: TrialDesign) -> pd.DataFrame:
    """The metrics of :func:`regimen_metrics` from a batched simulation on an exposure grid."""
    t = np.asarray(sim.times, dtype=np.float64).reshape(-1, sim.times.shape[-1])[0]
    v = np.asarray(sim.values, dtype=np.float64).reshape(theta.shape[0], len(t), -1)
    status = np.asarray(sim.status).reshape(-1)
    names = list(names)
    c = v[:, :, _IDX["il2_pM"]]
    fold = lambda name: v[:, :, _IDX[name]] / v[:, :1, _IDX[name]]
    treg = fold("treg_per_uL")
    treat = t <= TREATMENT_DAYS + 1e-9
    trough = (t >= TROUGH_FROM_DAY) & treat
    out = {
        "patient": np.arange(1, theta.shape[0] + 1),
        "cmax_pM": c.max(axis=1),
        "hours_above_tconv": hours_above(t, c, theta[:, names.index("ec50_tconv")]),
        "hours_above_nk": hours_above(t, c, theta[:, names.index("ec50_nk")]),
        "treg_peak_fold": treg[:, treat].max(axis=1),
        "treg_trough_fold": treg[:, trough].min(axis=1),
        "treg_mean_fold": np.trapezoid(treg[:, treat], t[treat], axis=1) / TREATMENT_DAYS,
        "tconv_change_pct": 100.0 * (fold("tconv_per_uL").max(axis=1) - 1.0),
        "nk_change_pct": 100.0 * (fold("nk56bright_per_uL").max(axis=1) - 1.0),
        "cd25_peak_rel": v[:, :, _IDX["cd25_treg_rel"]].max(axis=1),
    }
    l0 = v[:, 0, _IDX["sledai"]]
    solved = status == 0
    for w in weeks:
        lw = v[:, int(np.searchsorted(t, 7.0 * w)), _IDX["sledai"]]
        entry, both = np.full(l0.shape, np.nan), np.full(l0.shape, np.nan)
        if solved.any():
            entry[solved], both[solved] = response_probability(l0[solved], lw[solved], design)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"sledai_change_w{w:g}"] = lw - l0
            out[f"p_sri4_w{w:g}"] = np.where(entry > 1e-12, both / entry, np.nan) * design.bilag_pga_keep
    frame = pd.DataFrame(out)
    frame.loc[status != 0, frame.columns[1:]] = np.nan
    frame["status"] = status
    return frame


def compare(regimens, *, model: Model | None = None, params: Parameters | None = None, n: int = 1000, seed: int = 0, fit=None,
            weeks=(12, 24), options: SolverOptions = SolverOptions(), one_program: bool | None = None,
            draws: int | None = None, uncertain=None) -> Comparison:  # fmt: skip
    """Compare regimens over one virtual population (module docstring).

    Arguments:
        regimens: names, a comma-separated string or a mapping name -> :class:`Regimen`.
        model: default :func:`il2treg.load_model`; ignored with ``fit`` (the fit's model is used).
        params: the virtual patients; default :func:`virtual_population` with ``n``, ``seed``,
            ``fit``, ``draws`` and ``uncertain``.
        draws: K population draws shared by ``n / K`` patients each (draw-major; with ``params``,
            the layout of its rows): :meth:`Comparison.population` and
            :meth:`Comparison.difference` then give each regimen's effect on the population with
            an interval from parameter uncertainty, e.g. the expected SRI-4 rate against placebo.
        uncertain: parameters whose typical value is drawn from its prior in the model file
            (:func:`virtual_population`): with ``fit``, parameters the fit held, such as the
            SLEDAI link's ``r50`` and ``kd``; without, a subset of the priors (default all).
        weeks: assessment weeks for SLEDAI and SRI-4 (for a model other than the IL-2 model, the
            weeks at which :func:`generic_metrics` reads each observable).
        one_program: solve every regimen through one compiled program, padded to common shapes
            (:func:`il2treg.simulate.iter_simulations`; the same values), instead of one program
            per regimen. That saves compilation and costs run time: the eight library regimens,
            this 2-core machine, 20 patients 59.1 s -> 13.4 s; 200 patients 97.1 s -> 75.4 s on
            the first call but 38.7 s -> 62.2 s on a repeat (measured at 4bcdf67, before
            :func:`~il2treg.simulate.simulate` padded its inputs to shared sizes). Default
            (``None``): one program up to 256 patients.
    """
    regs = resolve_regimens(regimens)
    weeks = tuple(weeks)
    if not weeks or min(weeks) <= 0:
        raise InputError(f"weeks must be positive assessment weeks, got {weeks!r}. Fix: e.g. weeks=(12, 24).")
    model = model or load_model()
    if params is None:
        model, params = virtual_population(model, n, seed=seed, fit=fit, draws=draws, uncertain=uncertain)
    elif uncertain:
        raise InputError("compare(params=..., uncertain=...): uncertain applies to the patients compare draws itself. Fix: drop params, or draw them with virtual_population(..., uncertain=...).")
    per_draw = _draw_layout(int(np.atleast_2d(np.asarray(params.values)).shape[0]), draws)[1]
    start = time.perf_counter()
    design = load_design("lupil2")
    weeks_f = tuple(float(w) for w in weeks)
    theta = np.atleast_2d(np.asarray(params.values))
    il2 = is_il2(model)
    horizon = _horizon(weeks_f) if il2 else 7.0 * max(weeks_f)  # another model: to the last assessment
    grids = {name: exposure_grid(r, horizon) for name, r in regs.items()}
    patients = Parameters(jnp.asarray(theta), params.names)
    if one_program is not None and not isinstance(one_program, bool):
        raise InputError(f"compare(one_program={one_program!r}): must be True, False or None. Fix: pass one_program=None to choose by the number of patients.")
    if one_program is None:
        one_program = theta.shape[0] <= 256  # beyond that the padded run time costs more than compiling saves
    if one_program:
        # each reduced to its metrics before the next is solved
        sims = iter_simulations(model, regs, grids, patients, options=options)
    else:
        sims = ((name, simulate(model, regs[name], jnp.asarray(grids[name]), patients, options=options)) for name in regs)
    if il2:
        frames = [_metrics(sim, theta, params.names, weeks_f, design).assign(regimen=name) for name, sim in sims]
        units = {**METRICS, **{f"sledai_change_w{w:g}": "points" for w in weeks}, **{f"p_sri4_w{w:g}": "1" for w in weeks}}
    else:
        frames = []
        for name, sim in sims:
            frame, units = generic_metrics(sim, weeks_f)
            frames.append(frame.assign(regimen=name))
    run_s = time.perf_counter() - start
    per_patient = pd.concat(frames, ignore_index=True)
    per_patient["draw"] = (per_patient["patient"] - 1) // per_draw + 1
    per_patient = per_patient[["regimen", "patient", "draw", *[c for c in per_patient.columns if c not in ("regimen", "patient", "draw")]]]
    rows = []
    for name, g in per_patient.groupby("regimen", sort=False):
        ok = g["status"] == 0
        for metric, unit in units.items():
            x = g.loc[ok, metric].to_numpy()
            x = x[np.isfinite(x)]
            lo, med, hi = np.percentile(x, [5, 50, 95]) if x.size else (np.nan,) * 3
            rows.append({"regimen": name, "metric": metric, "unit": unit, "median": med, "p5": lo, "p95": hi, "n": int(x.size), "failed": int((~ok).sum())})
    return Comparison(per_patient, pd.DataFrame(rows), regs, weeks, run_s, None if draws is None else int(draws))


# ---------------------------------------------------------------------------------------- design

#: Design objectives by name (maximised; the mean over the design population). Any model also
#: has ``mean:<observable>`` (time average over the horizon), ``mean_fold:<observable>`` (time
#: average of the fold change from day 0) and ``fall:<observable>`` (day-0 value minus the value at
#: the end of the horizon), one for each of its observables; the named ones are these for the
#: IL-2 model, and an SRI-4 probability for a model with a ``sledai`` observable.
OBJECTIVES: dict[str, str] = {
    "treg_mean_fold": "time-averaged Treg fold change over weeks 0-12 (mean_fold:treg_per_uL)",
    "sledai_fall_w12": "fall of the latent SLEDAI from day 0 to week 12 (points; fall:sledai)",
    "p_sri4_w12": "probability of an SRI-4 response at week 12 (LUPIL-2 scoring; a model with a sledai observable and a sledai0 parameter)",
}
#: The objectives any model has, one per observable: kind -> what it is.
OBJECTIVE_KINDS: dict[str, str] = {
    "mean": "time average over the horizon, (1/H) int_0^H y dt (the observable's unit)",
    "mean_fold": "time average of the fold change y(t)/y(0) over the horizon (1; needs y(0) != 0)",
    "fall": "y(0) - y(H): the fall from day 0 to the end of the horizon (the observable's unit)",
}
_NAMED = {"treg_mean_fold": ("mean_fold", "treg_per_uL"), "sledai_fall_w12": ("fall", "sledai"), "p_sri4_w12": ("p_sri4", "sledai")}
#: The IL-2 model's named limits (:class:`Constraints` fields) -> (kind, observable).
_NAMED_LIMITS = {"tconv_change_pct": ("change_pct", "tconv_per_uL"), "nk_change_pct": ("change_pct", "nk56bright_per_uL"), "cmax_pM": ("peak", "il2_pM")}
#: The :class:`Constraints` field behind each limit's label (what an error message names).
_FIELDS = {"tconv_change_pct": "tconv_change_max_pct", "nk_change_pct": "nk_change_max_pct", "cmax_pM": "cmax_max_pM",
           "peak": "peak_max", "change_pct": "change_max_pct"}


def _field(label: str) -> str:
    kind, _, observable = label.partition(":")
    return _FIELDS[label] if label in _FIELDS else f"{_FIELDS[kind]}[{observable!r}]"
_LIMIT_KINDS = ("peak", "change_pct")


def parse_objective(model: Model, objective: str) -> tuple[str, str]:
    """``(kind, observable)`` of a design objective: a name of :data:`OBJECTIVES` or
    ``<kind>:<observable>`` with a kind of :data:`OBJECTIVE_KINDS`."""
    names = model.observable_names
    kind, _, observable = objective.partition(":")
    if objective in _NAMED:
        kind, observable = _NAMED[objective]
    elif kind not in OBJECTIVE_KINDS or not observable:
        raise InputError(f"unknown objective {objective!r}. Fix: use one of {', '.join(OBJECTIVES)}, or <kind>:<observable> with a kind of "
                         f"{', '.join(OBJECTIVE_KINDS)} and an observable of model {model.name!r} ({', '.join(names)}), e.g. mean_fold:{names[0]}.")  # fmt: skip
    if observable not in names:
        raise InputError(f"objective {objective!r} reads observable {observable!r}, which model {model.name!r} does not have. "
                         f"Fix: use one of its observables ({', '.join(names)}).")  # fmt: skip
    if kind == "p_sri4" and "sledai0" not in model.parameter_names:
        raise InputError(f"objective {objective!r} scores SRI-4 from the entry SLEDAI, parameter 'sledai0', which model {model.name!r} does not have. "
                         "Fix: choose another objective.")  # fmt: skip
    return kind, observable


@dataclasses.dataclass(frozen=True)
class Constraints:
    """Limits a designed regimen must meet (``None`` or absent: no limit).

    Attributes:
        peak_max: ``{observable: limit}``: the largest value of the observable over the horizon
            (its unit), at ``quantile`` of the population. Any model.
        change_max_pct: ``{observable: limit}``: its largest change from day 0 over the horizon
            (%), at ``quantile``. Any model whose observable is not 0 at day 0.
        tconv_change_max_pct, nk_change_max_pct, cmax_max_pM: the IL-2 model's: ``change_max_pct``
            of ``tconv_per_uL`` and ``nk56bright_per_uL``, ``peak_max`` of ``il2_pM``.
        quantile: the population quantile at which those limits are checked (0.5: the median
            patient; 0.9: nine patients in ten).
        dose_max_iu: largest single dose (IU for the IL-2 model; the model's dose unit).
        total_dose_max_iu, total_dose_min_iu: total dose over the regimen (the same unit).
        min_interval_days: smallest time between doses when times are optimised (days).
        max_injections: most doses; the design keeps the template's number, which must not
            exceed it (start from a template with fewer, e.g. ``il2treg.regimen.every``).
    """

    tconv_change_max_pct: float | None = None
    nk_change_max_pct: float | None = None
    cmax_max_pM: float | None = None
    quantile: float = 0.5
    dose_max_iu: float | None = None
    total_dose_max_iu: float | None = None
    total_dose_min_iu: float | None = None
    min_interval_days: float = 1.0
    max_injections: int | None = None
    peak_max: dict[str, float] = dataclasses.field(default_factory=dict)
    change_max_pct: dict[str, float] = dataclasses.field(default_factory=dict)

    def limits(self) -> dict[str, tuple[str, str, float]]:
        """The population-quantile limits: ``{label: (kind, observable, limit)}``, kind ``peak``
        or ``change_pct``; labelled by the IL-2 field's metric name (``nk_change_pct``) or
        ``<kind>:<observable>``."""
        out: dict[str, tuple[str, str, float]] = {}
        named = (self.tconv_change_max_pct, self.nk_change_max_pct, self.cmax_max_pM)
        for (label, (kind, observable)), v in zip(_NAMED_LIMITS.items(), named, strict=True):
            if v is not None:
                out[label] = (kind, observable, float(v))
        for kind, table in (("peak", self.peak_max), ("change_pct", self.change_max_pct)):
            for observable, v in dict(table).items():
                label = f"{kind}:{observable}"
                clash = [other for other, (k, o, _) in out.items() if k == kind and o == observable]
                if clash:
                    raise InputError(f"two limits on the {kind} of {observable!r}: {_field(clash[0])} and {_field(label)}. Fix: give one.")
                out[label] = (kind, str(observable), float(v))
        for label, (_, _, v) in out.items():
            if not np.isfinite(v):
                raise InputError(f"{_field(label)} = {v!r} is not a finite number. Fix: give a number, or no limit.")
        return out


@dataclasses.dataclass(frozen=True)
class Design:
    """Result of :func:`optimise`.

    Attributes:
        regimen: the designed regimen; ``start``: the template it was started from.
        objective: the objective's name; ``value`` / ``start_value``: its value for the designed and
            the starting regimen (fresh simulations).
        checks: one row per constraint: ``value`` (fresh simulation, finer grid), ``limit``, ``met``.
        start_values: the objective reached from each start (before the final check), in order
            (the first from ``start``); ``spread``: their range relative to the best.
        scaled_back: factor applied to all doses at the end to meet the constraints (1: none).
        history: penalised objective per step of the best start.
        horizon_days: the horizon the objective and the limits are read over (days).
        run_s: wall time (s), compilation included.
    """

    regimen: Regimen
    start: Regimen
    objective: str
    value: float
    start_value: float
    checks: pd.DataFrame
    start_values: np.ndarray
    spread: float
    scaled_back: float
    history: np.ndarray
    run_s: float
    horizon_days: float = TREATMENT_DAYS


def design_function(model: Model, params: Parameters, objective: str, constraints: Constraints, *,
                    options: SolverOptions = SolverOptions(), grid_step: float = 0.25, horizon_days: float = TREATMENT_DAYS):  # fmt: skip
    """``f(amounts, times) -> (objective, {limit label: quantile value})``, differentiable in both.

    The objective and the changes from day 0 are read on a fixed grid (every ``grid_step`` days
    over the horizon) and the peaks also on hourly points over the 24 h after each dose, which
    move with the doses. All points go through one solve (sorted, then put back in order), so the
    gradient with respect to a dose time is exact also when the dose moves across grid points.
    """
    setup = _setup(model, params, objective, options, grid_step, horizon_days)
    theta = jnp.atleast_2d(jnp.asarray(params.values))
    quantile = jnp.asarray(float(constraints.quantile))
    limits = constraints.limits()
    _check_observables(model, limits)
    use = jnp.asarray([any(o == name for _, o, _ in limits.values()) for name in model.observable_names])

    def f(amounts, times):
        value, peak, change = _design_values(setup, theta, quantile, use, amounts, times)
        index = model.observable_names.index
        return value, {label: (peak if kind == "peak" else change)[index(obs)] for label, (kind, obs, _) in limits.items()}

    return f


@dataclasses.dataclass(frozen=True)
class _Setup:
    """What the design's compiled programs are built for (hashable: static under ``jit``), with
    the shapes of their arguments (the number of patients, of starts and of doses). The numbers a
    user varies between calls (the population's parameter values, the quantile, the limits, with
    ``inf`` for none, the bounds, the penalty, the steps and their length) are arguments, so a
    second :func:`optimise` with other constraints reuses the programs of the first (the same
    model, objective, template, population size and number of starts; ``options.save_slots``
    follows the template's dose times)."""

    model: Model
    names: tuple[str, ...]
    objective: str
    kind: str
    observable: int
    options: SolverOptions
    grid_step: float
    horizon: float
    top: float  # the population's largest sledai0: bounds the SRI-4 score grid (entry_and_fall)


def _check_horizon(objective: str, horizon: float, grid_step: float) -> None:
    if not (np.isfinite(horizon) and horizon > 0 and np.isfinite(grid_step) and 0 < grid_step <= horizon):
        raise InputError(f"horizon_days = {horizon!r} and grid_step = {grid_step!r}: need 0 < grid_step <= horizon_days. Fix: e.g. horizon_days=84, grid_step=0.25.")
    if objective in ("sledai_fall_w12", "p_sri4_w12") and horizon != TREATMENT_DAYS:
        raise InputError(f"objective {objective!r} is read at week 12, but the horizon is {horizon:g} days. Fix: use horizon_days={TREATMENT_DAYS:g} or fall:sledai.")


def _setup(model, params, objective, options, grid_step, horizon) -> _Setup:
    kind, observable = parse_objective(model, objective)
    _check_horizon(objective, horizon, grid_step)
    names = tuple(params.names)
    # only the SRI-4 objective reads it: the other objectives' programs do not depend on the population
    top = float(np.max(np.atleast_2d(np.asarray(params.values))[:, names.index("sledai0")])) if kind == "p_sri4" else 0.0
    return _Setup(model, names, objective, kind, model.observable_names.index(observable), options, float(grid_step), float(horizon), top)


@functools.cache
def _lupil2_design() -> TrialDesign:
    """LUPIL-2's scoring of SRI-4 (the design file read once per process)."""
    return load_design("lupil2")


def _objective_values(kind: str, t, v, at_end, horizon: float, top: float, xp):
    """Per-patient objective from values ``v`` (``[patients, points]``) of its observable at the
    days ``t`` (sorted, from day 0; points after the horizon do not count) and its values
    ``at_end`` at the horizon, with ``xp`` numpy or jax.numpy. Time averages are trapezoids."""
    span = xp.minimum(t, horizon)  # intervals after the horizon have no width
    if kind == "mean":
        return xp.trapezoid(v, span, axis=1) / horizon
    if kind == "mean_fold":
        return xp.trapezoid(v / v[:, :1], span, axis=1) / horizon
    if kind == "fall":
        return v[:, 0] - at_end
    design = _lupil2_design()
    entry, both = entry_and_fall(v[:, 0], at_end, design, top, xp=xp)
    if xp is np:  # a patient who cannot enter has no response probability (left out of the mean)
        return np.where(entry > 1e-12, both / np.where(entry > 1e-12, entry, 1.0), np.nan) * design.bilag_pga_keep
    return both / entry * design.bilag_pga_keep


def _limit_values(t, v, horizon: float, use, xp):
    """Per-patient peak and largest rise from day 0 (%) of the observables (``v``: ``[patients,
    points, observables]`` at days ``t``, day 0 first) up to the horizon. Only the observables
    in ``use`` (those with a limit) are read: the others, and a change from a day-0 value that
    is not positive (refused before, :func:`_check_feasible`), are computed from 1 (no NaN from
    an observable nobody limited, in the value or the gradient)."""
    base = v[:, :1, :]
    v = xp.where((t <= horizon + 1e-9)[None, :, None], v, base)
    on = xp.asarray(use)[None, None, :]
    v = xp.where(on, v, 1.0)
    base = xp.where(on & (base > 0), base, 1.0)
    return xp.max(v, axis=1), 100.0 * (xp.max(v / base, axis=1) - 1.0)


def _design_values(setup: _Setup, theta, quantile, use, amounts, times):
    """:func:`design_function`'s ``f`` for the population ``theta`` (``[patients, params]``):
    the mean objective and the ``quantile`` of the peak and change of the observables in ``use``."""
    fixed_np, offsets_np = _design_points(setup.grid_step, setup.horizon)
    fixed, offsets = jnp.asarray(fixed_np), jnp.asarray(offsets_np)
    window = (times[:, None] + offsets[None, :]).ravel()
    every = jnp.concatenate([fixed, window])
    order = jnp.argsort(every)
    sim = simulate(setup.model, Regimen(times, amounts), every[order], Parameters(theta, setup.names), options=setup.options)
    ordered = jnp.reshape(sim.values, (theta.shape[0], every.shape[0], -1))
    # The objective on the fixed grid (the horizon its last point): nodes that moved with the
    # doses would make the quadrature's own error a function of the dose times, and its
    # derivative spoil the gradient (measured: d/d(first dose time) of treg_mean_fold 0.0017
    # against -0.0035 by central differences). The peaks read every point.
    y = ordered[:, jnp.argsort(order)[: fixed.shape[0]], setup.observable]
    value = _objective_values(setup.kind, fixed, y, y[:, -1], setup.horizon, setup.top, jnp)
    peak, change = _limit_values(every[order], ordered, setup.horizon, use, jnp)
    return jnp.mean(value), jnp.quantile(peak, quantile, axis=0), jnp.quantile(change, quantile, axis=0)


def design_slots(model: Model, regimen: Regimen, params: Parameters, *, grid_step: float = 0.25, horizon_days: float = TREATMENT_DAYS) -> int:
    """The save slots (:attr:`~il2treg.simulate.SolverOptions.save_slots`) the solve of
    :func:`design_function` (with the same ``grid_step`` and ``horizon_days``) needs for doses at ``regimen``'s times."""
    max_lag = max_dose_lag(model, np.asarray(params.values))
    times = np.asarray(regimen.times, dtype=np.float64)
    fixed, offsets = _design_points(grid_step, horizon_days)
    return slots_needed(times, np.sort(np.concatenate([fixed, (times[:, None] + offsets[None, :]).ravel()])), max_lag)


def _design_points(grid_step: float, horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """The fixed grid over the horizon (days, ending at it) and the hourly offsets over the day after a dose
    at which :func:`design_function` reads the solve (the first just after the dose: the peak of a
    bolus without lag)."""
    grid = np.union1d(np.arange(0.0, horizon + 1e-9, grid_step), [horizon])  # the horizon is the last point
    return grid, np.concatenate([[JUST_AFTER], np.arange(1.0, 24.0 + 1e-9) / 24.0])


def _project_amounts(x: jnp.ndarray, upper: float, total_max: float) -> jnp.ndarray:
    """Euclidean projection of ``x`` onto ``{0 <= x <= upper, sum(x) <= total_max}`` (bisection on
    the multiplier of the sum constraint)."""
    clipped = jnp.clip(x, 0.0, upper)

    def over(lam):
        return jnp.sum(jnp.clip(x - lam, 0.0, upper)) - total_max

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        return jnp.where(over(mid) > 0, mid, lo), jnp.where(over(mid) > 0, hi, mid)

    _, hi = jax.lax.fori_loop(0, 60, body, (jnp.asarray(0.0), jnp.max(jnp.abs(x)) + upper))
    return jnp.where(jnp.sum(clipped) <= total_max, clipped, jnp.clip(x - hi, 0.0, upper))


def _order_times(t: jnp.ndarray, gap: float, horizon: float) -> jnp.ndarray:
    """First dose at day 0, the others sorted and at least ``gap`` apart, none after ``horizon``."""
    t = jnp.sort(t).at[0].set(0.0)
    k = jnp.arange(t.shape[0])
    t = jax.lax.cummax(t - gap * k) + gap * k  # at least ``gap`` after the previous dose
    return jnp.minimum(t, horizon - gap * (t.shape[0] - 1 - k))


def _check_observables(model: Model, limits: dict) -> None:
    for label, (_, observable, _) in limits.items():
        if observable not in model.observable_names:
            raise InputError(f"limit {_field(label)} is on observable {observable!r}, which model {model.name!r} does not have. "
                             f"Fix: use one of its observables ({', '.join(model.observable_names)}).")  # fmt: skip


def baseline_observables(model: Model, params: Parameters) -> np.ndarray:
    """Every patient's observables at day 0, before any dose (``[patients, observables]``): what
    every regimen starts from (read from the initial state, no solve)."""
    mechanism = model.mechanism

    def one(theta):
        args = mechanism.prepare(theta)
        return mechanism.observables(0.0, mechanism.initial_state(args), args)

    return np.asarray(jax.vmap(one)(jnp.atleast_2d(jnp.asarray(params.values))))


def _check_feasible(model: Model, template: Regimen, constraints: Constraints, params: Parameters, optimise_times: bool,
                    kind: str, observable: str, horizon: float) -> None:  # fmt: skip
    c = constraints
    n = template.n_doses
    if n == 0:
        raise InputError("the template regimen has no doses. Fix: start from a regimen with injections, e.g. lupil2.")
    if not 0 < c.quantile < 1:
        raise InputError(f"quantile must be in (0, 1), got {c.quantile!r}.")
    for name, v in (("dose_max_iu", c.dose_max_iu), ("total_dose_max_iu", c.total_dose_max_iu), ("total_dose_min_iu", c.total_dose_min_iu)):
        if v is not None and not (np.isfinite(v) and v >= 0):
            raise InputError(f"{name} must be a dose >= 0, got {v!r}.")
    limits = c.limits()
    _check_observables(model, limits)
    base = baseline_observables(model, params)
    names, units = model.observable_names, model.mechanism.observable_units
    for k in {names.index(o) for kd, o, _ in limits.values() if kd == "change_pct"} | ({names.index(observable)} if kind == "mean_fold" else set()):
        if not np.all(np.isfinite(base[:, k]) & (base[:, k] > 0)):
            raise InputError(f"{names[k]!r} is not positive at day 0 for some patients, so its change from day 0 (a fold change or a % change) is undefined. "
                             f"Fix: limit its peak (peak_max) or maximise mean:{names[k]} instead.")  # fmt: skip
    late = np.asarray(template.times, dtype=np.float64) > horizon + 1e-9
    if late.any():
        raise InputError(f"the template has doses after the horizon (day {float(np.asarray(template.times)[late][0]):g} > {horizon:g}), which the design "
                         "would neither read nor check. Fix: a longer horizon_days (--horizon), or a template that ends within it.")  # fmt: skip
    why = []
    for label, (kd, o, v) in limits.items():
        k = names.index(o)
        start = float(np.quantile(base[:, k], c.quantile))
        if kd == "change_pct" and v <= 0:
            why.append(f"{_field(label)} = {v:g}% <= 0, but the largest change includes day 0, where it is 0, and any dose raises it")
        if kd == "peak" and v <= start:
            why.append(f"{_field(label)} = {v:g} {units[k]} is not above the level of {o} at day 0 ({start:.3g} {units[k]}, before any dose) that every regimen starts from")
    dose_cap = n * (c.dose_max_iu if c.dose_max_iu is not None else np.inf)
    total_cap = min(dose_cap, c.total_dose_max_iu if c.total_dose_max_iu is not None else np.inf)
    if c.total_dose_min_iu is not None and c.total_dose_min_iu > total_cap:
        why.append(f"total_dose_min_iu = {c.total_dose_min_iu:g} exceeds what {n} injections may give ({total_cap:g})")
    if c.max_injections is not None and n > c.max_injections:
        why.append(f"max_injections = {c.max_injections} but the template has {n} (start from a template with at most {c.max_injections})")
    if optimise_times and c.min_interval_days * (n - 1) > horizon:
        why.append(f"{n} injections at least {c.min_interval_days:g} days apart do not fit in {horizon:g} days")
    if why:
        raise InfeasibleDesignError("infeasible constraints: " + "; ".join(why) + ". Fix: relax these limits.")


def _dose_unit(template: Regimen) -> float:
    """The unit the optimiser moves doses in: the power of ten nearest the template's mean dose
    (1e6, MIU, for LUPIL-2's 1.5 MIU injections)."""
    amounts = np.asarray(template.amounts, dtype=np.float64)
    mean = float(np.mean(amounts[amounts > 0])) if np.any(amounts > 0) else 1.0
    return float(10.0 ** np.round(np.log10(mean)))


def optimise(start: Regimen | str = "lupil2", *, objective: str = "treg_mean_fold", constraints: Constraints = Constraints(),
             model: Model | None = None, params: Parameters | None = None, optimise_times: bool = False, n_starts: int = 5,
             steps: int = 150, learning_rate: float = 0.5, penalty: float = 1e3, seed: int = 0, horizon_days: float = TREATMENT_DAYS,
             grid_step: float = 0.25, options: SolverOptions = SolverOptions()) -> Design:  # fmt: skip
    """Design a regimen by gradient ascent from ``start`` (module docstring). Any model: the
    objective and the limits are read from its observables.

    Arguments:
        start: the template (its number of doses, and its times unless ``optimise_times``).
        objective: a name of :data:`OBJECTIVES`, or ``<kind>:<observable>`` with a kind of
            :data:`OBJECTIVE_KINDS` (e.g. ``mean_fold:treg_per_uL``, ``mean:central_conc``).
        constraints: :class:`Constraints`.
        params: the design population (default: the typical patient).
        n_starts: ``start`` plus ``n_starts - 1`` random starts (amounts uniform, scaled to the
            start's total dose; times jittered), run together; the best feasible result is kept
            and :attr:`Design.spread` says how far the others ended from it.
        steps, learning_rate: gradient steps, and the length of the first (in the dose unit of
            :func:`_dose_unit`, MIU for LUPIL-2, and days for times), decaying to 1% of it.
        penalty: weight of the squared relative excess over a peak or change limit.
        horizon_days: the objective and the limits are read over ``[0, horizon_days]``, and
            optimised dose times stay in it (default: 84, weeks 0-12).
        grid_step: the steps (days) of the grid the objective is integrated on while optimising
            (the final check integrates a finer one); a model with kinetics of hours needs a
            finer grid than the IL-2 model's 0.25 day.

    Raises:
        InfeasibleDesignError: the constraints exclude every regimen of this form.
        InputError: unknown objective or observable, bad limits, a template without doses.
    """
    begin = time.perf_counter()
    model = model or load_model()
    template = named(start) if isinstance(start, str) else start
    if template.records is not None:
        raise InputError("optimise() designs bolus doses into the model's first dosing input, but the start regimen carries NONMEM records "
                         "(CMT, RATE, SS or resets). Fix: start from a regimen of plain doses (Regimen(times, amounts)).")  # fmt: skip
    params = params if params is not None else model.typical()
    params = Parameters(jnp.atleast_2d(jnp.asarray(params.values)), params.names)
    kind, observable = parse_objective(model, objective)
    _check_horizon(objective, float(horizon_days), float(grid_step))
    if n_starts < 1 or steps < 1:
        raise InputError(f"n_starts and steps must be >= 1, got {n_starts} and {steps}.")
    _check_feasible(model, template, constraints, params, optimise_times, kind, observable, float(horizon_days))
    c = constraints
    steps_options = options
    if not optimise_times and options.save_slots is None:
        # Fixed dose times: the solve's save slots are those of the template (under jit the times
        # are traced, and simulate would otherwise reserve one per grid point in every interval:
        # 737 instead of 51 for LUPIL-2: 100 steps of 5 starts took 99.6 s instead of 54.8 s).
        steps_options = dataclasses.replace(options, save_slots=design_slots(model, template, params, grid_step=float(grid_step), horizon_days=float(horizon_days)))
    unit = _dose_unit(template)
    limits = c.limits()
    bound = np.full((len(_LIMIT_KINDS), len(model.observable_names)), np.inf)
    for kd, o, v in limits.values():
        bound[_LIMIT_KINDS.index(kd), model.observable_names.index(o)] = v
    upper = (c.dose_max_iu if c.dose_max_iu is not None else np.inf) / unit
    total_max = (c.total_dose_max_iu if c.total_dose_max_iu is not None else np.inf) / unit
    total_min = (c.total_dose_min_iu or 0.0) / unit
    knobs = {
        "theta": params.values, "quantile": jnp.asarray(float(c.quantile)), "limits": jnp.asarray(bound), "unit": jnp.asarray(unit),
        "penalty": jnp.asarray(float(penalty)), "upper": jnp.asarray(min(upper, 1e6)), "total_max": jnp.asarray(min(total_max, 1e9)),
        "total_min": jnp.asarray(total_min), "gap": jnp.asarray(float(c.min_interval_days)),
        "learning_rate": jnp.asarray(float(learning_rate)), "steps": jnp.asarray(float(steps)),
    }  # fmt: skip
    setup = _setup(model, params, objective, steps_options, float(grid_step), float(horizon_days))

    n = template.n_doses
    rng = np.random.default_rng(seed)
    a0 = np.asarray(template.amounts, dtype=np.float64) / unit
    t0 = np.asarray(template.times, dtype=np.float64)
    starts_a, starts_t = [a0], [t0]
    for _ in range(n_starts - 1):
        a = rng.uniform(0.2, 1.0, n)
        starts_a.append(a / a.sum() * a0.sum())
        starts_t.append(np.sort(t0 + (rng.uniform(-0.5, 0.5, n) if optimise_times else 0.0)))
    x = _design_starts({"a": jnp.asarray(np.stack(starts_a)), "t": jnp.asarray(np.stack(starts_t))}, knobs, setup.horizon, optimise_times)
    history = []
    for k in range(steps):
        x, penalised = _design_step(x, jnp.asarray(k), knobs, setup, optimise_times)
        history.append(np.asarray(penalised))
    history = np.asarray(history)
    final_loss, final_values = _design_losses(x, knobs, setup)
    final_loss, final_values = np.asarray(final_loss), np.asarray(final_values)
    best = int(np.argmin(final_loss))
    regimen = Regimen(np.asarray(x["t"][best]), np.asarray(x["a"][best]) * unit, name=f"designed_{objective}")
    regimen, scaled, checks, fresh = _verify_and_restore(setup, regimen, params, c, total_min * unit, options)
    value = float(np.nanmean(fresh[0]))
    start_value = float(np.nanmean(_fresh(setup, template, params, options)[0]))
    spread = float((final_values.max() - final_values.min()) / abs(final_values[best])) if final_values[best] else float("nan")
    return Design(regimen, template, objective, value, start_value, checks, final_values, spread, scaled, history[:, best],
                  time.perf_counter() - begin, setup.horizon)  # fmt: skip


# The optimiser's programs, compiled once per :class:`_Setup` (model, objective, solver options,
# grid) and shape (patients, starts, doses): projected gradient steps of fixed length along the
# normalised gradient, the length decaying (cosine) from ``learning_rate`` to 1% of it at
# ``steps``. Per-coordinate scaling (Adam) would erase the differences between doses that the
# projection onto a total-dose budget acts on.


def _design_loss(x, knobs, setup: _Setup):
    """Penalised loss (to minimise) and objective value of one design ``x`` (``a`` in the dose unit, ``t`` in days)."""
    use = jnp.any(jnp.isfinite(knobs["limits"]), axis=0)  # the observables with a limit
    value, peak, change = _design_values(setup, knobs["theta"], knobs["quantile"], use, x["a"] * knobs["unit"], x["t"])
    excess = jnp.sum(_excess(jnp.stack([peak, change]), knobs["limits"]))
    short = jnp.maximum(knobs["total_min"] - jnp.sum(x["a"]), 0.0) ** 2
    return -value + knobs["penalty"] * (excess + short), value


def _excess(metric, limit):
    r"""Squared relative excess of ``metric`` over ``limit``, :math:`(\max(m - l, 0)/|l|)^2`
    (elementwise; over 1 for a limit of 0); exactly 0, with a zero gradient, for no limit
    (``inf``), whatever the metric's value (the metric is not read then: no NaN from a
    non-finite metric the user did not limit, in the value or in the gradient)."""
    on = jnp.isfinite(limit)
    scale = jnp.where(on & (limit != 0), jnp.abs(limit), 1.0)
    over = (jnp.where(on, metric, 0.0) - jnp.where(on, limit, 0.0)) / scale
    return jnp.where(on, jnp.maximum(over, 0.0) ** 2, 0.0)


def _project(x, knobs, horizon: float, optimise_times: bool):
    a = _project_amounts(x["a"], knobs["upper"], knobs["total_max"])
    t = _order_times(x["t"], knobs["gap"], horizon) if optimise_times else x["t"]
    return {"a": a, "t": t}


@functools.partial(jax.jit, static_argnames=("horizon", "optimise_times"))
def _design_starts(x, knobs, horizon: float, optimise_times: bool):
    return jax.vmap(lambda one: _project(one, knobs, horizon, optimise_times))(x)


#: The last step's length as a fraction of the first (the cosine decay's floor).
_FINAL_STEP_FRACTION = 0.01


@functools.partial(jax.jit, static_argnames=("setup", "optimise_times"))
def _design_step(x, k, knobs, setup: _Setup, optimise_times: bool):
    """Step ``k`` from every start in ``x`` at once; returns the new starts and their penalised losses."""
    (penalised, _), g = jax.vmap(jax.value_and_grad(lambda one: _design_loss(one, knobs, setup), has_aux=True))(x)
    if not optimise_times:
        g = {"a": g["a"], "t": jnp.zeros_like(g["t"])}
    norm = jnp.sqrt(jnp.sum(g["a"] ** 2, axis=1) + jnp.sum(g["t"] ** 2, axis=1))[:, None]
    g = jax.tree_util.tree_map(lambda v: v / jnp.maximum(norm, 1e-30), g)
    cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.minimum(k, knobs["steps"]) / knobs["steps"]))
    length = knobs["learning_rate"] * ((1.0 - _FINAL_STEP_FRACTION) * cosine + _FINAL_STEP_FRACTION)
    x = jax.tree_util.tree_map(lambda v, d: v + (-length) * d, x, g)
    return jax.vmap(lambda one: _project(one, knobs, setup.horizon, optimise_times))(x), penalised


@functools.partial(jax.jit, static_argnames=("setup",))
def _design_losses(x, knobs, setup: _Setup):
    return jax.vmap(lambda one: _design_loss(one, knobs, setup))(x)


#: The fresh check's steps after each dose (days): 10 minutes, 3x finer than the comparison's.
_CHECK_STEP = 1.0 / 144.0


def _fresh(setup: _Setup, regimen: Regimen, params: Parameters, options: SolverOptions):
    """A fresh simulation of ``regimen`` on a finer grid than the design's (every 12 h over the
    horizon and every 10 minutes for 36 h after each dose): each patient's objective, and every
    observable's peak and largest change from day 0 (``[patients, observables]``)."""
    t = exposure_grid(regimen, setup.horizon, window_step=_CHECK_STEP)
    sim = simulate(setup.model, regimen, jnp.asarray(t), params, options=options)
    if np.any(np.asarray(sim.status) != 0):
        raise InfeasibleDesignError("the designed regimen fails to solve for some patients of the design population. Fix: tighten the dose limits.")
    v = np.asarray(sim.values, dtype=np.float64).reshape(-1, len(t), len(setup.model.observable_names))
    end = int(np.searchsorted(t, setup.horizon - 1e-9))  # exposure_grid ends at the horizon
    y = v[:, :, setup.observable]
    with np.errstate(invalid="ignore", divide="ignore"):  # entry_and_fall of a patient who cannot enter
        value = _objective_values(setup.kind, t, y, y[:, end], setup.horizon, setup.top, np)
    peak, change = _limit_values(t, v, setup.horizon, np.ones(v.shape[2], bool), np)
    return value, peak, change


def _constraint_checks(setup: _Setup, fresh, regimen: Regimen, c: Constraints, total_min: float) -> pd.DataFrame:
    _, peak, change = fresh
    rows = []
    for label, (kind, observable, limit) in c.limits().items():
        values = (peak if kind == "peak" else change)[:, setup.model.observable_names.index(observable)]
        rows.append({"constraint": f"{label} (quantile {c.quantile:g})", "value": float(np.quantile(values, c.quantile)), "limit": limit, "kind": "max"})
    total = float(np.sum(np.asarray(regimen.amounts)))
    biggest = float(np.max(np.asarray(regimen.amounts)))
    if c.total_dose_max_iu is not None:
        rows.append({"constraint": "total_dose_iu", "value": total, "limit": c.total_dose_max_iu, "kind": "max"})
    if total_min > 0:
        rows.append({"constraint": "total_dose_iu (min)", "value": total, "limit": total_min, "kind": "min"})
    if c.dose_max_iu is not None:
        rows.append({"constraint": "dose_iu", "value": biggest, "limit": c.dose_max_iu, "kind": "max"})
    if c.max_injections is not None:
        rows.append({"constraint": "injections", "value": float(regimen.n_doses), "limit": float(c.max_injections), "kind": "max"})
    out = pd.DataFrame(rows, columns=["constraint", "value", "limit", "kind"])
    slack = 1e-9 * np.maximum(np.abs(out["limit"].astype(float)), 1.0)
    out["met"] = np.where(out["kind"] == "max", out["value"] <= out["limit"] + slack, out["value"] >= out["limit"] - slack)
    return out


def _verify_and_restore(setup: _Setup, regimen, params, c: Constraints, total_min: float, options):
    """Check every constraint by a fresh simulation; scale the doses back if needed (bisection).
    Returns the regimen, the scale, the checks and the fresh simulation's :func:`_fresh` values."""
    def checks_at(scale):
        r = Regimen(regimen.times, np.asarray(regimen.amounts) * scale, name=regimen.name)
        fresh = _fresh(setup, r, params, options)
        return r, _constraint_checks(setup, fresh, r, c, total_min), fresh

    r, checks, fresh = checks_at(1.0)
    if checks["met"].all():
        return r, 1.0, checks, fresh
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if checks_at(mid)[1]["met"].all():
            lo = mid
        else:
            hi = mid
    r, checks, fresh = checks_at(lo)
    if not checks["met"].all():
        bad = checks.loc[~checks["met"]]
        raise InfeasibleDesignError("infeasible constraints: no regimen of this form was found that meets " + "; ".join(
            f"{row.constraint} {'<=' if row.kind == 'max' else '>='} {row.limit:g} (closest {row.value:.4g})" for row in bad.itertuples()) + ". Fix: relax these limits.")
    return r, lo, checks, fresh


__all__ = [
    "METRICS",
    "OBJECTIVES",
    "OBJECTIVE_KINDS",
    "Comparison",
    "Constraints",
    "Design",
    "InfeasibleDesignError",
    "baseline_observables",
    "compare",
    "design_function",
    "design_slots",
    "exposure_grid",
    "hours_above",
    "optimise",
    "parse_objective",
    "regimen_metrics",
    "resolve_regimens",
    "virtual_population",
]  # fmt: skip
