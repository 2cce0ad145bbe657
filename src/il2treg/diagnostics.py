r"""Goodness-of-fit diagnostics of a population fit: residuals, NPDE, shrinkage, VPC.

:func:`diagnose` evaluates a :class:`~il2treg.fit.FitResult` on its data (or on other data, at the
fit's population parameters, like a NONMEM run with ``MAXEVAL=0``) and returns a
:class:`Diagnostics` with one row per observation:

* **PRED** :math:`f(\theta, \eta=0)`, **IPRED** :math:`f(\theta, \hat\eta_i)` at the empirical Bayes
  estimates, **IWRES** :math:`(y - \mathrm{IPRED})/\mathrm{sd}(\mathrm{IPRED})` on the error model's
  scale (log scale for ``log``; ordinal SLEDAI as continuous with SD :math:`\sigma`).
* **CWRES** (Hooker et al., Pharm Res 2007), the FOCE linearisation about :math:`\hat\eta_i`: with
  :math:`G_i = \partial f/\partial\eta` at :math:`\hat\eta_i` and
  :math:`R_i = \mathrm{diag}\,\mathrm{sd}^2(\mathrm{IPRED})`,

  .. math:: E_i = f(\hat\eta_i) - G_i\hat\eta_i,\quad C_i = G_i\Omega G_i^\top + R_i,\quad
            \mathrm{CWRES}_i = C_i^{-1/2}(y_i - E_i)

  over the patient's fitted, uncensored observations (:math:`C^{-1/2}` the symmetric square root).
* **NPDE** (Brendel et al., Pharm Res 2006; Comets et al. 2008) by simulation: ``n_sim``
  replicates of the data set from the fitted model (:math:`\eta \sim N(0,\Omega)` at each
  patient's covariates, residual error from the error model). Per patient, observations and
  simulations are decorrelated with the simulations' mean and covariance,
  :math:`y^* = V^{-1/2}(y - \bar y)`; :math:`\mathrm{pde}` is the fraction of decorrelated
  simulations below :math:`y^*` (ties broken uniformly at random: SLEDAI is discrete), clipped to
  :math:`[1/(2K), 1 - 1/(2K)]`, and :math:`\mathrm{NPDE} = \Phi^{-1}(\mathrm{pde})`. Censored
  (BLQ) observations get no NPDE.

Checks (:meth:`Diagnostics.flags`), each at level 0.05 with a Bonferroni correction inside its family:

* NPDE per observation type: mean 0 and variance 1. A patient's NPDE are uncorrelated but not
  independent (the random effects are log-normal), so the tests treat patients, not
  observations, as the independent units: a t-test of the per-patient mean NPDE against 0 and of
  the per-patient mean of NPDE² against 1; global p = min(1, 2 min p). (The R package ``npde``
  tests pooled NPDE as if independent, which rejected data simulated from the fitted model
  itself here; Shapiro–Wilk normality of the pooled NPDE is reported, not used as a flag, for
  the same reason.)
* CWRES trend per observation type: in each time bin of :func:`time_bins` the mean CWRES times
  :math:`\sqrt n` is N(0, 1) under the model; a bin with two-sided p < 0.05/bins flags a misfit
  in time (e.g. a missing delay).
* VPC per observation type (:meth:`VPC.test`, level 0.05/2 for its two forms): the observed 5th,
  50th and 95th percentiles against the replicates', plain (``vpc_p``) and as change from each
  patient's baseline (``vpc_change_p``), which removes the baseline's between-patient spread
  and so sees a misplaced time course that the plain VPC averages away.

:func:`vpc` builds a visual predictive check from the same simulations (BLQ-aware; optionally
prediction-corrected; with ``by``, stratified by a covariate). :func:`individual_curves` solves the
fitted model again for chosen patients on a dense time grid: the IPRED and PRED curves of the
individual-fit figures.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import special

from il2treg.data import Dataset, read_dataset
from il2treg.errors import InputError
from il2treg.fit.assemble import make_objective, observation_rows, predict_all
from il2treg.fit.problem import FitProblem, PatientData, problem_patients, unpack
from il2treg.fit.result import FitResult
from il2treg.fit.spec import FitSpec, stored_spec
from il2treg.likelihood import residual_sd, sample_observations
from il2treg.observables import OBSERVABLES
from il2treg.simulate import max_dose_lag, slots_needed

#: Percentiles a VPC summarises (%).
VPC_PERCENTILES = (5.0, 50.0, 95.0)
_BLQ = -1e30  # a censored value in percentile arithmetic: any percentile touching it is below the LLOQ
#: Default step (days) of the dense grid of :func:`individual_curves`: cell counts, CD25 and SLEDAI
#: change over days, so 6 h draws them smoothly; IL-2 (Tmax 2-6 h, t1/2 2-6 h) needs hours.
DENSE_STEP_DAYS = 0.25
_DENSE_STEP_OF = {"il2_pM": 1 / 24}


@dataclasses.dataclass(frozen=True)
class Predictor:
    """What it takes to solve the fitted model again for any patient of the data
    (:func:`individual_curves`): the fit's problem, typical values and covariate coefficients,
    the EBEs and the patients' arrays, exactly as :func:`diagnose` passed them to its compiled
    batch solve, so that a dense grid packed into arrays of the same shapes runs that same
    program instead of compiling another (5-20 s for an ODE solve).

    Attributes:
        problem: the fit's :class:`~il2treg.fit.problem.FitProblem` (static configuration).
        theta: typical values of every model parameter (internal units).
        beta: covariate coefficients.
        eta: ``[patients, random effects]`` the EBEs at which IPRED was computed.
        patients: every patient's doses, observation rows and covariates.
        batch_size: patients solved together.
    """

    problem: FitProblem
    theta: jax.Array
    beta: jax.Array
    eta: np.ndarray
    patients: PatientData
    batch_size: int


@dataclasses.dataclass(frozen=True)
class Diagnostics:
    r"""Residuals, NPDE and simulations of one fit on one data set (:func:`diagnose`).

    Attributes:
        fit: the fit's name.
        table: one row per observation row: ID, ROW, TIME, DVID, DV, CENS, USED, PRED, IPRED,
            IWRES, CWRES, PDE, NPDE (NaN where not defined: unused or censored rows).
        shrinkage: η-shrinkage (%) per random effect, :math:`1 - SD(\hat\eta)/\omega`.
        summary: one row per fitted observation type: counts, mean and SD of IWRES, CWRES and
            NPDE, ε-shrinkage (%) :math:`1 - SD(IWRES)`, the NPDE test p-values and the VPC
            tests' p-values (``vpc_p``, ``vpc_change_p``).
        cwres_bins: per fitted observation type and time bin: n, mean CWRES, p-value.
        simulated: ``[n_sim, rows]`` simulated observations of the table's rows (NaN where the
            simulation failed), and ``simulated_cens`` where they fall below the LLOQ.
        lloq: LLOQ per observation type (from the data's censored rows; absent: none).
        ebe_status: inner-solve status per patient (0 = converged).
        seed: seed of the simulations.
        data: the data set evaluated.
        error_kinds: the error model kind of each observation type.
        predictor: the fitted model, to solve it again on other time grids
            (:func:`individual_curves`); ``None`` when built other than by :func:`diagnose`.
        units: the unit of each observation type (the model's).
    """

    fit: str
    table: pd.DataFrame
    shrinkage: dict
    summary: pd.DataFrame
    cwres_bins: pd.DataFrame
    simulated: np.ndarray
    simulated_cens: np.ndarray
    lloq: dict
    ebe_status: np.ndarray
    seed: int
    data: Dataset
    error_kinds: dict
    predictor: Predictor | None = None
    units: dict = dataclasses.field(default_factory=dict)

    @property
    def n_sim(self) -> int:
        return int(self.simulated.shape[0])

    def simulated_data(self, k: int = 0) -> pd.DataFrame:
        """The data set with every observation replaced by replicate ``k`` of the simulations (a
        value below the LLOQ becomes the LLOQ with ``CENS=1``; a row whose patient failed to solve
        gets ``MDV=1``), in the format of :mod:`il2treg.data`."""
        if not 0 <= k < self.n_sim:
            raise InputError(f"replicate {k} does not exist: there are {self.n_sim}. Fix: 0 <= k < {self.n_sim}.")
        frame = self.data.to_frame(rows=True)
        position = {int(r): k for k, (r, evid) in enumerate(zip(frame["ROW"], frame["EVID"], strict=True)) if evid == 0}  # an observation's row is its own
        at = np.asarray([position[int(r)] for r in self.table["ROW"]], dtype=np.int64)
        frame = frame.drop(columns="ROW")
        lloq = self.table["DVID"].map(self.lloq).to_numpy(dtype=np.float64)
        value, cens = self.simulated[k], self.simulated_cens[k]
        missing = np.isnan(frame["DV"].to_numpy()[at])
        frame.loc[at, "DV"] = np.where(missing, np.nan, np.where(cens, lloq, value))
        frame.loc[at, "CENS"] = np.where(missing, frame["CENS"].to_numpy()[at], cens.astype(int))
        failed = ~missing & np.isnan(value)
        frame.loc[at[failed], "DV"] = np.nan
        frame.loc[at[failed], "MDV"] = 1
        return frame

    def flags(self, alpha: float = 0.05) -> list[str]:
        """The checks that fail at level ``alpha`` (module docstring), as sentences; empty if none."""
        out = []
        for dvid, row in self.summary.iterrows():
            if row["npde_global_p"] < alpha:
                out.append(f"{dvid}: NPDE not N(0, 1) (mean {row['npde_mean']:.2f}, variance {row['npde_sd'] ** 2:.2f}, global p = {row['npde_global_p']:.2g}).")
        for dvid, bins in self.cwres_bins.groupby("DVID", sort=False):
            worst = bins.loc[bins["p"].idxmin()]
            if worst["p"] < alpha / len(bins):
                out.append(f"{dvid}: mean CWRES {worst['mean']:+.2f} (n = {int(worst['n'])}) at day {worst['time']:g} (p = {worst['p']:.2g} < {alpha}/{len(bins)}): a trend in time the model misses.")
        for dvid, row in self.summary.iterrows():
            for column, what in (("vpc_p", "VPC"), ("vpc_change_p", "VPC of the change from baseline")):
                if row.get(column, np.nan) < alpha / 2:
                    out.append(f"{dvid}: {what}: observed percentiles further from the simulated ones than the model's replicates (p = {row[column]:.2g} < {alpha}/2).")
        return out


@dataclasses.dataclass(frozen=True)
class VPC:
    """A visual predictive check of one observation type (:func:`vpc`).

    Attributes:
        dvid: observation type; ``pred_corrected``: prediction-corrected (Bergstrand et al. 2011);
            ``change``: values are changes from each patient's baseline (``"ratio"`` or
            ``"difference"``) or ``None``.
        bins: one row per time bin: ``time`` (median), ``n``, ``observed_p<q>`` the observed
            percentiles, ``sim_p<q>_lo|med|hi`` the simulated interval of each percentile,
            ``z_p<q>`` the observed percentile's z-score among the simulated ones (on the log
            scale for positive quantities), the observed fraction below the LLOQ and its
            simulated interval. A percentile below the LLOQ is NaN.
        observations: the observations (TIME, DV, CENS; DV prediction-corrected when asked).
        interval: the simulated intervals' coverage (0.9: 5th to 95th percentile).
        lloq: the LLOQ (NaN: none).
        simulated_percentiles: ``[n_sim, bins, 3]`` each replicate's 5th, 50th and 95th
            percentiles (NaN below the LLOQ), on the scale of ``z_p<q>``.
        observed_percentiles: ``[bins, 3]`` the observed ones on the same scale.
        stratum: ``"<covariate> = <level>"`` for one stratum of a :class:`StratifiedVPC`, else ``""``.
    """

    dvid: str
    pred_corrected: bool
    change: str | None
    bins: pd.DataFrame
    observations: pd.DataFrame
    interval: float
    lloq: float
    simulated_percentiles: np.ndarray
    observed_percentiles: np.ndarray
    stratum: str = ""
    unit: str = ""

    def coverage(self) -> float:
        """Fraction of (bin, percentile) pairs whose observed value lies in the simulated interval
        (pairs with the observed or simulated percentile below the LLOQ are left out)."""
        inside, total = self._inside()
        return inside / total if total else float("nan")

    def _inside(self) -> tuple[int, int]:
        """(pairs inside their simulated interval, pairs counted) for :meth:`coverage`."""
        inside, total = 0, 0
        for q in VPC_PERCENTILES:
            obs = self.bins[f"observed_p{q:g}"].to_numpy()
            lo, hi = self.bins[f"sim_p{q:g}_lo"].to_numpy(), self.bins[f"sim_p{q:g}_hi"].to_numpy()
            ok = np.isfinite(obs) & np.isfinite(lo) & np.isfinite(hi)
            inside += int(np.sum((obs[ok] >= lo[ok]) & (obs[ok] <= hi[ok])))
            total += int(np.sum(ok))
        return inside, total

    def test(self, percentiles=VPC_PERCENTILES) -> tuple[float, float]:
        r"""A global test of the VPC: ``(S, p)``.

        :math:`S = \sum z^2` over the (bin, percentile) pairs, :math:`z` the observed percentile's
        distance from the mean of the simulated ones in simulated SDs (``z_p<q>`` of
        :attr:`bins`). The bins share patients, so :math:`S` has no textbook law; its law under
        the model is taken from the replicates themselves: each replicate in turn is scored like
        the observations against the others (leave one out), and
        :math:`p = (1 + \#\{S_k \ge S\}) / (1 + K)`. Pairs with a percentile below the LLOQ
        in the observations or in any replicate, or constant over the replicates, are left out. Small ``p``: the observed
        percentiles sit further from the simulated ones than replicates of the model do.
        """
        terms = self._test_terms(percentiles)
        if terms is None:
            return float("nan"), float("nan")
        statistic, null = terms
        return statistic, float((1 + np.sum(null >= statistic)) / (1 + null.size))

    def _test_terms(self, percentiles=VPC_PERCENTILES) -> tuple[float, np.ndarray] | None:
        """(S, the K leave-one-out replicate statistics) of :meth:`test`; ``None`` without a usable pair."""
        cols = [VPC_PERCENTILES.index(float(q)) for q in percentiles]
        sims = self.simulated_percentiles[:, :, cols].reshape(self.simulated_percentiles.shape[0], -1)
        obs = self.observed_percentiles[:, cols].reshape(-1)
        ok = np.isfinite(obs) & np.all(np.isfinite(sims), axis=0) & (np.ptp(sims, axis=0) > 0)  # a constant percentile (e.g. a relative value at baseline) says nothing
        if not ok.any():
            return None
        sims, obs = sims[:, ok], obs[ok]
        k = sims.shape[0]
        mean, var = sims.mean(axis=0), sims.var(axis=0, ddof=1)
        statistic = float(np.sum((obs - mean) ** 2 / var))
        total, squares = sims.sum(axis=0), (sims**2).sum(axis=0)
        loo_mean = (total - sims) / (k - 1)  # replicate k against the other k - 1
        loo_var = np.maximum((squares - sims**2 - (k - 1) * loo_mean**2) / (k - 2), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):  # the others all equal: infinitely far, unless equal too
            ratio = (sims - loo_mean) ** 2 / loo_var
        return statistic, np.sum(np.where(np.isnan(ratio), 0.0, ratio), axis=1)


@dataclasses.dataclass(frozen=True)
class StratifiedVPC:
    r"""A visual predictive check per level of a covariate (:func:`vpc` with ``by``): a mapping
    level -> :class:`VPC`, each with its own bins, prediction correction, :meth:`VPC.coverage`
    and :meth:`VPC.test` (bins per stratum, the default of tidyvpc's ``binning(by.strata = TRUE)``).

    Attributes:
        by: the covariate.
        strata: level -> :class:`VPC`, levels in order of first appearance in the data (a
            numeric level as a float; a missing value as ``None``).
    """

    by: str
    strata: dict

    def __getitem__(self, level) -> VPC:
        return self.strata[level]

    def __iter__(self) -> Iterator:
        return iter(self.strata)

    def __len__(self) -> int:
        return len(self.strata)

    @property
    def dvid(self) -> str:
        return next(iter(self.strata.values())).dvid

    @property
    def bins(self) -> pd.DataFrame:
        """Every stratum's bins (:attr:`VPC.bins`), the level in a first column named ``by``."""
        return pd.concat([v.bins.assign(**{self.by: [level] * len(v.bins)}) for level, v in self.strata.items()], ignore_index=True)[
            [self.by, *next(iter(self.strata.values())).bins.columns]
        ]

    def coverage(self) -> float:
        """:meth:`VPC.coverage` over the (stratum, bin, percentile) triples of every stratum."""
        inside, total = (sum(x) for x in zip(*(v._inside() for v in self.strata.values())))
        return inside / total if total else float("nan")

    def test(self, percentiles=VPC_PERCENTILES) -> tuple[float, float]:
        r"""One global test over the strata, ``(S, p)``: :math:`S = \sum_s S_s` of :meth:`VPC.test`,
        its law under the model again from the replicates, replicate :math:`k`'s statistic being
        the sum over strata of its leave-one-out statistics (the strata share the replicates, so
        their dependence is kept); :math:`p = (1 + \#\{S_k \ge S\}) / (1 + K)`."""
        terms = [t for t in (v._test_terms(percentiles) for v in self.strata.values()) if t is not None]
        if not terms:
            return float("nan"), float("nan")
        statistic, null = sum(t[0] for t in terms), np.sum([t[1] for t in terms], axis=0)
        return statistic, float((1 + np.sum(null >= statistic)) / (1 + null.size))


def diagnose(result: FitResult, *, data=None, spec: FitSpec | None = None, n_sim: int = 1000, seed: int = 0, batch_size: int = 32) -> Diagnostics:
    """Diagnostics of ``result`` (module docstring).

    Arguments:
        result: a population fit (:func:`il2treg.load_fit`, :func:`il2treg.fit.compute_fit`).
        data: evaluate on these data instead of the fit's (a :class:`~il2treg.data.Dataset`, a
            DataFrame or a CSV path in the format of :mod:`il2treg.data`); the EBEs are then
            re-estimated at the fit's population parameters.
        spec: the fit's specification; default: the one stored in ``result``.
        n_sim: replicates for NPDE and VPC. The decorrelation uses the simulations' own
            covariance, which inflates the NPDE variance by about :math:`K/(K-d-1)` for a patient
            with :math:`d` observations: keep :math:`K = ` ``n_sim`` in the hundreds per
            observation (a VPC alone is fine with 200).
        seed: seed of the simulations.
        batch_size: patients solved together.

    Raises:
        InputError: ``n_sim`` too small, or data the fit cannot evaluate (other observation types
        or covariates).
    """
    spec = spec or stored_spec(result)
    if data is not None:
        dataset = data if isinstance(data, Dataset) else read_dataset(data)
        spec = dataclasses.replace(spec, dataset=dataset)
    problem = spec.problem()
    objective = make_objective(dataclasses.replace(spec, summaries=None), problem)  # the EBEs only: no published summaries to solve
    patients = problem_patients(problem, spec.dataset)
    dataset = spec.dataset
    used_per_patient = np.asarray(patients.obs_mask).sum(axis=1)
    if n_sim < 20 or n_sim <= 2 * int(used_per_patient.max(initial=0)):
        raise InputError(f"n_sim = {n_sim} is too small: NPDE needs well over twice as many replicates as any patient's "
                         f"{int(used_per_patient.max(initial=0))} observations (and >= 20). Fix: n_sim=1000.")
    psi = jnp.asarray(result.psi)
    up = unpack(problem, problem.split(psi), spec.residual_model())
    eta0 = _ebes(result, problem, dataset) if data is None else jnp.zeros((dataset.n_subjects, problem.n_random))
    inner = objective.inner(psi, eta0)
    eta, ipred, jac, status = (np.asarray(x) for x in (inner.eta, inner.pred, inner.jac, inner.status))
    pred = np.asarray(predict_all(problem, up.theta, up.beta, jnp.zeros_like(inner.eta), patients, batch_size=batch_size)[0])
    residual = up.residual
    dvid, y = np.asarray(patients.obs_dvid), np.asarray(patients.obs_value, dtype=np.float64)
    cens, mask = np.asarray(patients.obs_cens, dtype=bool), np.asarray(patients.obs_mask, dtype=bool)
    sd = np.asarray(residual_sd(residual, jnp.asarray(ipred), jnp.asarray(dvid)))
    is_log = np.isin(dvid, [k for k, kind in enumerate(residual.kinds) if kind == "log"])
    scale = lambda v: np.where(is_log, np.log(np.maximum(v, 1e-300)), v)  # to the modelling scale ([..., patients, obs])
    y_s, ipred_s = scale(y), scale(ipred)
    fit_rows = mask & ~cens
    ok = status == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iwres = np.where(fit_rows & ok[:, None], (y_s - ipred_s) / sd, np.nan)
    omega = np.asarray(up.omega)
    omega_cov = np.asarray(up.random_effects.covariance())
    cwres = np.full(y.shape, np.nan)
    for i in np.flatnonzero(ok):
        rows = fit_rows[i]
        if not rows.any():
            continue
        g = jac[i][rows] / np.where(is_log[i][rows], ipred[i][rows], 1.0)[:, None]  # on the modelling scale
        expected = ipred_s[i][rows] - g @ eta[i]
        c = g @ omega_cov @ g.T + np.diag(sd[i][rows] ** 2)
        cwres[i, rows] = _inv_sqrt(c) @ (y_s[i][rows] - expected)

    key = jax.random.PRNGKey(seed)
    k_eta, k_eps = jax.random.split(key)
    z_eta = np.asarray(jax.random.normal(k_eta, (n_sim, *eta.shape))) @ np.asarray(up.random_effects.cholesky()).T
    z_eps = jax.random.normal(k_eps, (n_sim, *y.shape))
    def replicate(k: int) -> np.ndarray:
        f, st = predict_all(problem, up.theta, up.beta, jnp.asarray(z_eta[k]), patients, batch_size=batch_size)
        draw = np.asarray(sample_observations(residual, f, jnp.asarray(dvid), z_eps[k]))
        return np.where(np.asarray(st)[:, None] == 0, draw, np.nan)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # one compiled solve, replicates spread over the cores
        sims = np.stack(list(pool.map(replicate, range(n_sim))))
    lloq = _lloq(y, dvid, cens, dataset.dvid_names)
    limit = np.asarray([lloq.get(dataset.dvid_names[d], -np.inf) for d in dvid.ravel()]).reshape(dvid.shape)
    sim_cens = sims < limit[None]
    pde = _pde(y_s, scale(sims), fit_rows & ok[:, None], np.random.default_rng(seed))
    npde = special.ndtri(pde)  # the standard normal quantile (scipy.stats.norm.ppf)

    s, j = observation_rows(dataset)
    dv = np.where(dataset.obs_dv_missing[s, j], np.nan, y[s, j])
    table = pd.DataFrame({
        "ID": [dataset.ids[i] for i in s], "ROW": dataset.obs_row[s, j].astype(np.int64), "TIME": np.asarray(dataset.obs_time)[s, j].astype(np.float64),
        "DVID": [dataset.dvid_names[d] for d in dvid[s, j]], "DV": dv, "CENS": cens[s, j].astype(np.int64), "USED": mask[s, j],
        "PRED": pred[s, j], "IPRED": ipred[s, j], "IWRES": iwres[s, j], "CWRES": cwres[s, j], "PDE": pde[s, j], "NPDE": npde[s, j],
    })  # fmt: skip
    shrink = {name: float(100 * (1 - eta[ok, k].std(ddof=1) / omega[k])) if ok.sum() > 1 else float("nan") for k, name in enumerate(problem.random)}
    diag = Diagnostics(
        fit=result.name, table=table, shrinkage=shrink, summary=_summary(table), cwres_bins=_cwres_bins(table),
        simulated=sims[:, s, j], simulated_cens=sim_cens[:, s, j], lloq=lloq, ebe_status=status, seed=seed, data=dataset,
        error_kinds=dict(zip(residual.names, residual.kinds)),
        units=dict(zip(problem.model.observable_names, problem.model.mechanism.observable_units)),
        predictor=Predictor(problem, up.theta, up.beta, eta, patients, batch_size),
    )  # fmt: skip
    return dataclasses.replace(diag, summary=_with_vpc_tests(diag))


def individual_curves(diag: Diagnostics, ids, *, dvid: str = "treg_per_uL", step: float | None = None) -> pd.DataFrame:
    r"""IPRED (:math:`\eta = \hat\eta_i`) and PRED (:math:`\eta = 0`, the patient's own covariates
    and doses) of patients ``ids`` on a dense time grid, solved from the fitted model.

    The grid of a patient runs every ``step`` days from day 0 (or its first ``dvid``
    observation, if earlier) to its last ``dvid`` observation, together with its ``dvid``
    observation times, so that the curves pass through the IPRED and PRED of :attr:`Diagnostics.table`.
    Default step: :data:`DENSE_STEP_DAYS` (6 h), 1 h for ``il2_pM``; for the observables of other
    models a quarter of the shortest gap between a patient's observation times, between 15 min
    and 6 h. As for the observations, the
    value at a dose time is the pre-dose one.

    The solve is the one :func:`diagnose` compiled: each curve's grid is dealt out, every
    :math:`R`-th time to the same row, over :math:`R` rows of the data's shape (at most as many
    times as the widest patient has observation rows, and as many distinct times between two doses
    as the data's save slots), and the rows are solved in batches of as many as there are patients.
    :math:`R` is the smallest that fits, so the cost is :math:`2R` patient solves per patient shown.

    Arguments:
        diag: diagnostics from :func:`diagnose`.
        ids: patient IDs of ``diag.data``.
        dvid: observation type.
        step: grid step in days.

    Returns:
        One row per patient and grid time: ID, TIME, IPRED, PRED (NaN where the solve failed).

    Raises:
        InputError: diagnostics without a predictor, an unknown observation type or patient, a
        patient without ``dvid`` rows, or a step that is not positive.
    """
    ids, pr = list(ids), diag.predictor
    if pr is None:
        raise InputError("these diagnostics carry no fitted model to solve. Fix: make them with il2treg.diagnostics.diagnose(fit).")
    if dvid not in diag.data.dvid_names:
        raise InputError(f"unknown observation type {dvid!r}. Fix: use one of {', '.join(diag.data.dvid_names)}.")
    t = diag.table[diag.table["DVID"] == dvid]
    if step is None:
        step = _DENSE_STEP_OF.get(dvid, DENSE_STEP_DAYS) if dvid in OBSERVABLES else _dense_step(t)
    step = float(step)
    if not step > 0:
        raise InputError(f"step must be a positive number of days, got {step!r}. Fix: e.g. step=0.25.")
    index = {sid: k for k, sid in enumerate(diag.data.ids)}
    n, width = pr.patients.obs_time.shape
    dose_time = np.asarray(pr.patients.dose_time)
    max_lag = max_dose_lag(pr.problem.model)
    grids, dealt, who, eta, times = [], [], [], [], []
    for sid in ids:
        obs = t.loc[t["ID"] == sid, "TIME"].to_numpy(dtype=np.float64)
        if sid not in index or obs.size == 0:
            raise InputError(f"patient {sid!r} has no {dvid!r} rows in these data. Fix: choose IDs from {list(dict.fromkeys(t['ID']))[:5]}...")
        i = index[sid]
        start, end = min(0.0, obs.min()), obs.max()
        grid = np.union1d(start + step * np.arange(int(np.floor((end - start) / step)) + 1), obs)
        rows = _deal(grid, dose_time[i], width, pr.problem.slots, max_lag)
        grids.append(grid)
        dealt.append(len(rows))
        for e in (pr.eta[i], np.zeros_like(pr.eta[i])):  # IPRED rows, then PRED rows
            who += [i] * len(rows)
            eta += [e] * len(rows)
            times += rows
    calls = -(-len(who) // n)
    pad = calls * n - len(who)  # the last call is filled up with the first row again, its results dropped
    who, eta, times = np.asarray(who + who[:1] * pad), np.stack(eta + eta[:1] * pad), np.stack(times + times[:1] * pad)
    p = pr.patients
    dvids = np.full(times.shape, diag.data.dvid_names.index(dvid), dtype=np.asarray(p.obs_dvid).dtype)
    take = lambda x: np.asarray(x)[who]
    dense = PatientData(
        take(p.dose_time), take(p.dose_amount), times, dvids, np.zeros_like(times, dtype=np.asarray(p.obs_value).dtype),
        np.zeros(times.shape, dtype=np.asarray(p.obs_cens).dtype), np.ones(times.shape, dtype=np.asarray(p.obs_mask).dtype), take(p.covariates),
        jax.tree.map(take, p.records), None if p.periods is None else take(p.periods), None if p.occasion is None else take(p.occasion),
    )  # fmt: skip

    def solve(c: int) -> np.ndarray:
        part = jax.tree.map(lambda x: jnp.asarray(x[c * n : (c + 1) * n]), dense)
        values, status = predict_all(pr.problem, pr.theta, pr.beta, jnp.asarray(eta[c * n : (c + 1) * n]), part, batch_size=pr.batch_size)
        return np.where(np.asarray(status)[:, None] == 0, np.asarray(values, dtype=np.float64), np.nan)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # the calls of diagnose's compiled solve, spread over the cores
        values = np.concatenate(list(pool.map(solve, range(calls))))
    frames, at = [], 0
    for sid, grid, r in zip(ids, grids, dealt):
        curves = np.empty((2, grid.size))
        for c in range(2):  # IPRED, PRED
            for k in range(r):
                curves[c, k::r] = values[at + k, : len(grid[k::r])]
            at += r
        frames.append(pd.DataFrame({"ID": [sid] * grid.size, "TIME": grid, "IPRED": curves[0], "PRED": curves[1]}))
    return pd.concat(frames, ignore_index=True)


def _deal(grid: np.ndarray, dose_time: np.ndarray, width: int, slots: int, max_lag: float) -> list[np.ndarray]:
    r"""``grid`` (sorted) dealt over the fewest rows that each fit one solve of the data's shape:
    at most ``width`` times, and at most ``slots`` distinct times in any inter-dose interval for
    any lag up to ``max_lag`` (:func:`il2treg.simulate.slots_needed`). Row :math:`k` of
    :math:`R` holds ``grid[k::R]``, padded to ``width`` with its last time (a repeat takes no
    save slot). Dealing every :math:`R`-th time spreads each interval's times evenly, so
    :math:`R = \max(\lceil G/w \rceil, \lceil m/s \rceil)` fits, :math:`m` the most grid times
    one interval holds; the check below keeps that a fact, not a hope."""
    r = max(-(-grid.size // width), -(-slots_needed(dose_time, grid[None], max_lag) // slots))
    while True:
        rows = [np.pad(grid[k::r], (0, width - len(grid[k::r])), mode="edge") for k in range(r)]
        if slots_needed(dose_time, np.stack(rows), max_lag) <= slots:
            return rows
        r += 1


def vpc(diag: Diagnostics, dvid: str, *, pred_corrected: bool = False, change_from_baseline: bool = False, bins=None, interval: float = 0.9,
        by: str | None = None) -> VPC | StratifiedVPC:
    r"""Visual predictive check of observation type ``dvid`` from ``diag``'s simulations.

    In each time bin (:func:`time_bins` unless ``bins`` gives edges in days) the 5th, 50th and 95th
    percentiles of the observations are set against the ``interval`` band of the same percentiles
    over the simulated replicates; :meth:`VPC.test` turns the distances into one p-value.
    BLQ-aware: a censored value (observed, or simulated below the LLOQ) counts as below the LLOQ,
    and a percentile that depends on one is reported as NaN (below the LLOQ) instead of being
    invented; the fraction below the LLOQ is checked instead.

    Prediction-corrected (Bergstrand et al., AAPS J 2011): every value is multiplied by
    :math:`\mathrm{PRED}_{bin}/\mathrm{PRED}_{ij}`, the bin's median PRED over the row's PRED;
    for additive and ordinal error models (SLEDAI, near 0) shifted by
    :math:`\mathrm{PRED}_{bin} - \mathrm{PRED}_{ij}` instead.

    Change from baseline (``change_from_baseline``): each observation after a patient's baseline
    is divided by that baseline (minus it for additive and ordinal types), in the data and in
    every replicate alike (each replicate with its own simulated baseline). The baseline is the
    patient's first observation of ``dvid``, taken at or before the first dose; patients without
    one, or whose baseline is censored, are left out. Between-patient variability of the
    baseline then no longer hides the shape of the response: a misplaced time course (e.g. a
    missing proliferation delay) shows here when the plain VPC cannot see it.

    Stratified (``by``, a covariate of the data, numeric or text, e.g. ``"ARM"``; a time-varying
    one by its first value, at the patient's first row): a
    :class:`StratifiedVPC` with one :class:`VPC` per level, each computed from that stratum's
    patients alone (tidyvpc's default, ``binning(by.strata = TRUE)``): its own time bins, its own
    prediction correction (median PRED per bin within the stratum) and its own test; levels
    without ``dvid`` observations are left out.

    Raises:
        InputError: an unknown observation type or covariate, no fitted ``dvid`` observations,
        an interval outside (0, 1), or (change from baseline) no patient with a baseline.
    """
    if dvid not in diag.data.dvid_names:
        raise InputError(f"unknown observation type {dvid!r}. Fix: use one of {', '.join(diag.data.dvid_names)}.")
    if not 0 < interval < 1:
        raise InputError(f"interval must be in (0, 1), got {interval!r}.")
    t = diag.table
    rows = np.flatnonzero((t["DVID"] == dvid).to_numpy() & t["USED"].to_numpy() & np.isfinite(t["DV"].to_numpy()))
    if rows.size == 0:
        raise InputError(f"no fitted {dvid!r} observations to check. Fix: choose one of {', '.join(sorted(set(t.loc[t['USED'], 'DVID'])))}.")
    options = dict(pred_corrected=pred_corrected, change_from_baseline=change_from_baseline, bins=bins, interval=interval)
    if by is None:
        return _vpc(diag, dvid, rows, **options)
    level = _strata(diag, by)[rows]
    out = {}
    for key in dict.fromkeys(level):
        mine = np.fromiter((x is key or x == key for x in level), dtype=bool, count=level.size)
        out[key] = _vpc(diag, dvid, rows[mine], stratum=f"{by} = {_level_text(key)}", **options)
    return StratifiedVPC(by, out)


def _strata(diag: Diagnostics, by: str) -> np.ndarray:
    """The level of covariate ``by`` of each row of ``diag.table`` (object array: a float for a
    numeric covariate, a string for a text one, ``None`` where missing).

    Raises:
        InputError: ``by`` is not a covariate of the data.
    """
    data = diag.data
    if by not in data.covariates:
        raise InputError(f"{by!r} is not a covariate of the data; its covariates are: {', '.join(sorted(data.covariates)) or '(none)'}. "
                         f"Fix: stratify by one of them (a column constant within each patient, e.g. ARM).")  # fmt: skip
    values = data.covariate_values(by)
    per_id = {sid: (None if v == "" or (isinstance(v, float) and math.isnan(v)) else v) for sid, v in zip(data.ids, values.tolist())}
    level = np.empty(len(diag.table), dtype=object)
    level[:] = [per_id[sid] for sid in diag.table["ID"].to_numpy()]
    return level


def _level_text(level) -> str:
    """A stratum's level as written in titles: ``1`` for 1.0, ``missing`` for ``None``."""
    return "missing" if level is None else f"{level:g}" if isinstance(level, float) else str(level)


def _vpc(diag: Diagnostics, dvid: str, rows: np.ndarray, *, pred_corrected: bool, change_from_baseline: bool, bins, interval: float, stratum: str = "") -> VPC:
    """:func:`vpc` of the table's ``rows`` (fitted, finite ``dvid`` observations), stratum label ``stratum``."""
    t = diag.table
    additive = diag.error_kinds.get(dvid) in ("additive", "ordinal")
    obs = np.where(t["CENS"].to_numpy()[rows] == 1, _BLQ, t["DV"].to_numpy()[rows])
    sim = np.where(diag.simulated_cens[:, rows], _BLQ, diag.simulated[:, rows])
    pred = t["PRED"].to_numpy()[rows]
    change = None
    if change_from_baseline:
        change = "difference" if additive else "ratio"
        later, base = _baseline_rows(diag, rows)
        if later.size == 0:
            where = f" in stratum {stratum}" if stratum else ""
            raise InputError(f"no patient{where} has a {dvid!r} baseline (an observation at or before the first dose) with later observations. Fix: use change_from_baseline=False.")
        obs, pred = _from_baseline(obs[later], obs[base], change), _from_baseline(pred[later], pred[base], change)
        sim = _from_baseline(sim[:, later], sim[:, base], change)
        rows = rows[later]
    time = t["TIME"].to_numpy()[rows]
    edges = time_bins(time) if bins is None else np.asarray(bins, dtype=np.float64)
    which = bin_index(edges, time)
    lloq = diag.lloq.get(dvid, float("nan")) if change is None else float("nan")
    obs_blq, sim_blq = obs == _BLQ, sim == _BLQ
    if pred_corrected:
        typical = np.empty_like(pred)
        for b in np.unique(which):
            typical[which == b] = np.median(pred[which == b])
        if additive:  # scores near 0: shift, do not scale
            obs = np.where(obs_blq, _BLQ, obs + (typical - pred))
            sim = np.where(sim_blq, _BLQ, sim + (typical - pred)[None])
        else:
            obs = np.where(obs_blq, _BLQ, obs * typical / pred)
            sim = np.where(sim_blq, _BLQ, sim * (typical / pred)[None])
    to_scale = (lambda v: v) if additive else (lambda v: np.log(np.where(v > 0, v, np.nan)))
    tail = 100 * (1 - interval) / 2
    out, sim_pct, obs_pct = [], [], []
    for b in np.unique(which):
        sel = which == b
        row = {"bin": int(b), "time": float(np.median(time[sel])), "n": int(sel.sum()),
               "observed_blq": float(obs_blq[sel].mean())}  # fmt: skip
        frac = np.nanmean(np.where(np.isnan(sim[:, sel]), np.nan, sim_blq[:, sel]), axis=1)
        row["sim_blq_lo"], row["sim_blq_hi"] = np.nanpercentile(frac, [tail, 100 - tail])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a replicate whose patients all failed
            per_rep = np.nanpercentile(sim[:, sel], VPC_PERCENTILES, axis=1).T  # [n_sim, 3]; failed solves are NaN
        observed = np.asarray([_below_lloq(np.percentile(obs[sel], q)) for q in VPC_PERCENTILES])
        sim_pct.append(to_scale(np.where(per_rep < -1e20, np.nan, per_rep)))
        obs_pct.append(to_scale(observed))
        for k, q in enumerate(VPC_PERCENTILES):
            row[f"observed_p{q:g}"] = observed[k]
            lo, med, hi = np.nanpercentile(per_rep[:, k], [tail, 50, 100 - tail])
            row[f"sim_p{q:g}_lo"], row[f"sim_p{q:g}_med"], row[f"sim_p{q:g}_hi"] = _below_lloq(lo), _below_lloq(med), _below_lloq(hi)
            s = sim_pct[-1][:, k]
            row[f"z_p{q:g}"] = float((obs_pct[-1][k] - s.mean()) / s.std(ddof=1)) if np.isfinite(s).all() and np.ptp(s) > 0 else float("nan")
        out.append(row)
    observations = pd.DataFrame({"TIME": time, "DV": np.where(obs_blq, np.nan, obs), "CENS": obs_blq.astype(np.int64)})
    return VPC(dvid, pred_corrected, change, pd.DataFrame(out), observations, interval, float(lloq),
               np.stack(sim_pct, axis=1), np.stack(obs_pct), stratum, diag.units.get(dvid, ""))  # fmt: skip


def _baseline_rows(diag: Diagnostics, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (into ``rows``) of the observations after a usable baseline, and of their baselines."""
    t = diag.table
    ids, time, cens = t["ID"].to_numpy()[rows], t["TIME"].to_numpy()[rows], t["CENS"].to_numpy()[rows]
    data = diag.data
    first_dose = {}
    for i, sid in enumerate(data.ids):
        given = data.dose_amount[i] > 0
        first_dose[sid] = float(data.dose_time[i][given].min()) if given.any() else np.inf
    keep, base = [], []
    for sid in dict.fromkeys(ids):
        mine = np.flatnonzero(ids == sid)
        b = mine[np.argmin(time[mine])]
        if time[b] > first_dose[sid] or cens[b] == 1:
            continue
        later = mine[mine != b]
        keep.extend(later)
        base.extend([b] * len(later))
    return np.asarray(keep, dtype=np.int64), np.asarray(base, dtype=np.int64)


def _from_baseline(value: np.ndarray, baseline: np.ndarray, change: str) -> np.ndarray:
    """``value`` relative to ``baseline``: a censored value stays censored, a censored baseline
    gives NaN (that replicate's patient is left out)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        out = value / baseline if change == "ratio" else value - baseline
    return np.where(baseline == _BLQ, np.nan, np.where(value == _BLQ, _BLQ, out))


def time_bins(times, max_bins: int = 12) -> np.ndarray:
    """Bin edges (days): one bin per distinct nominal time when there are at most ``max_bins``,
    else ``max_bins`` bins with equal numbers of observations."""
    times = np.asarray(times, dtype=np.float64)
    distinct = np.unique(times)
    if distinct.size <= max_bins:
        mids = (distinct[1:] + distinct[:-1]) / 2
        return np.concatenate([[distinct[0] - 0.5], mids, [distinct[-1] + 0.5]])
    edges = np.unique(np.quantile(times, np.linspace(0, 1, max_bins + 1)))
    edges[-1] += 1e-9
    return edges


def bin_index(edges, values) -> np.ndarray:
    """The bin of each value for bin ``edges`` (values beyond the ends go to the end bins)."""
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


# ----------------------------------------------------------------------------- helpers


def _ebes(result: FitResult, problem, dataset: Dataset) -> jnp.ndarray:
    ind = result.individual
    if len(ind) != dataset.n_subjects:
        raise InputError(f"the fit has {len(ind)} patients but its data now have {dataset.n_subjects}. Fix: pass data=... to re-estimate the EBEs.")
    return jnp.asarray(np.stack([ind[n].to_numpy(dtype=np.float64) for n in problem.random_names], axis=1) if problem.n_random else np.zeros((len(ind), 0)))


def _dense_step(rows: pd.DataFrame) -> float:
    """A quarter of the shortest gap between one patient's distinct observation times, in [15 min, 6 h]."""
    gaps = [np.diff(np.unique(g.to_numpy(dtype=np.float64))) for _, g in rows.groupby("ID")["TIME"]]
    gaps = np.concatenate([g[g > 0] for g in gaps]) if gaps else np.zeros(0)
    return float(np.clip(gaps.min() / 4, 1 / 96, DENSE_STEP_DAYS)) if gaps.size else DENSE_STEP_DAYS


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(c)
    return (v / np.sqrt(np.maximum(w, 1e-300))) @ v.T


def _lloq(y, dvid, cens, names: tuple[str, ...]) -> dict:
    """LLOQ per observation type: the smallest DV of its censored rows."""
    return {names[d]: float(y[(dvid == d) & cens].min()) for d in np.unique(dvid[cens])}


def _pde(y, sims, rows, rng) -> np.ndarray:
    """Decorrelated prediction discrepancies per patient (module docstring), from observations
    ``y`` and simulations ``sims`` on the modelling scale; NaN off ``rows``."""
    k = sims.shape[0]
    pde = np.full(y.shape, np.nan)
    for i in range(y.shape[0]):
        sel = rows[i]
        s = sims[:, i, sel]
        s = s[np.all(np.isfinite(s), axis=1)]
        if not sel.any() or len(s) <= sel.sum():
            continue
        mean = s.mean(axis=0)
        cov = np.cov(s, rowvar=False).reshape(sel.sum(), sel.sum())
        w = _inv_sqrt(cov + np.eye(len(mean)) * 1e-12 * np.trace(cov))
        ys = w @ (y[i, sel] - mean)
        ss = (s - mean) @ w.T
        below = np.sum(ss < ys, axis=0) + rng.uniform(size=ys.shape) * np.sum(ss == ys, axis=0)
        pde[i, sel] = np.clip(below / len(s), 1 / (2 * k), 1 - 1 / (2 * k))
    return pde


def _summary(table: pd.DataFrame) -> pd.DataFrame:
    from scipy import stats  # here, not at the top: scipy.stats takes 0.8 s to import

    out = {}
    for dvid, g in table[table["USED"]].groupby("DVID", sort=False):
        npde = g["NPDE"].dropna().to_numpy()
        n = len(npde)
        row = {"n": len(g), "n_blq": int(g["CENS"].sum())}
        for col in ("IWRES", "CWRES", "NPDE"):
            v = g[col].dropna()
            row[f"{col.lower()}_mean"], row[f"{col.lower()}_sd"] = float(v.mean()), float(v.std(ddof=1))
        row["eps_shrinkage_percent"] = 100 * (1 - row["iwres_sd"])
        per_patient = g.dropna(subset=["NPDE"]).groupby("ID", sort=False)["NPDE"]
        means, squares = per_patient.mean().to_numpy(), per_patient.apply(lambda v: np.mean(v**2)).to_numpy()
        if len(means) >= 3 and n >= 3:
            p_mean = float(stats.ttest_1samp(means, 0.0).pvalue)
            p_var = float(stats.ttest_1samp(squares, 1.0).pvalue)
            p_norm = float(stats.shapiro(npde[:5000]).pvalue)
        else:
            p_mean = p_var = p_norm = float("nan")
        row.update(npde_mean_p=p_mean, npde_variance_p=p_var, npde_normality_p=p_norm, npde_global_p=min(1.0, 2 * min(p_mean, p_var)))
        out[dvid] = row
    return pd.DataFrame.from_dict(out, orient="index").rename_axis("DVID")


def _with_vpc_tests(diag: Diagnostics) -> pd.DataFrame:
    """The summary with the global VPC test (:meth:`VPC.test`) of each type, plain (``vpc_p``) and of
    the change from baseline (``vpc_change_p``; NaN without baselines)."""
    summary = diag.summary.copy()
    for dvid in summary.index:
        summary.loc[dvid, "vpc_p"] = vpc(diag, dvid).test()[1]
        try:
            summary.loc[dvid, "vpc_change_p"] = vpc(diag, dvid, change_from_baseline=True).test()[1]
        except InputError:  # no patient has a baseline of this type
            summary.loc[dvid, "vpc_change_p"] = np.nan
    return summary


def _cwres_bins(table: pd.DataFrame) -> pd.DataFrame:
    out = []
    for dvid, g in table[table["USED"] & table["CWRES"].notna()].groupby("DVID", sort=False):
        time = g["TIME"].to_numpy()
        edges = time_bins(time)
        which = bin_index(edges, time)
        for b in np.unique(which):
            v = g["CWRES"].to_numpy()[which == b]
            z = v.mean() * math.sqrt(len(v))
            out.append({"DVID": dvid, "bin": int(b), "time": float(np.median(time[which == b])), "n": len(v), "mean": float(v.mean()), "p": float(2 * special.ndtr(-abs(z)))})
    return pd.DataFrame(out, columns=["DVID", "bin", "time", "n", "mean", "p"])


def _below_lloq(value: float) -> float:
    return float("nan") if not np.isfinite(value) or value < -1e20 else float(value)  # touched a censored value
