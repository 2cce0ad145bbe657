r"""The result of a population fit as data: :class:`FitResult`, its folder, and its report.

A results folder holds

=================  ==========================================================================
file               content
=================  ==========================================================================
``summary.json``   OFV, AIC, BIC, condition numbers, convergence, timing, the estimates on the
                   estimation scale with their covariance, the final error models, the fit
                   file's text (everything that is not a table)
``parameters.csv`` one row per population parameter on the natural scale (units of the model
                   file): estimate, SE, %RSE, 95% CI; CV% and shrinkage for random effects
``individual.csv`` one row per patient: inclusion, EBE status, EBEs, individual parameters,
                   predicted SLEDAI change and SRI-4 probability
``predictions.csv``one row per observation row: DV, PRED, IPRED, RES, IRES, IWRES
``posterior.nc``   ArviZ InferenceData (netCDF): ``posterior`` draws of the population
                   parameters from the asymptotic normal approximation, ``observed_data``;
                   after ``--method nuts`` the NUTS posterior (population parameters and
                   ``eta`` [patient, parameter]), ``sample_stats``, ``log_likelihood``,
                   ``posterior_predictive``, ``observed_data`` and ``constant_data`` on a
                   [patient, time] grid of observation slots
``report.md``      the one-screen summary (:func:`report`)
``summaries.csv``  only for a fit with ``[summaries]``: each published summary, the model's
                   statistic and its −2 log-likelihood term
                   (:func:`il2treg.fit.assemble.summary_rows`)
=================  ==========================================================================

:func:`save` writes it atomically (a temporary folder renamed into place; an existing folder is
replaced only with ``force``); :func:`load_fit` reads it back bit for bit: floats are written
with their shortest round-trip representation (non-finite ones as the JSON strings ``"NaN"``,
``"Infinity"``, ``"-Infinity"``), the posterior as float64 netCDF.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from il2treg._io import atomic_output_dir
from il2treg.errors import InputError
from il2treg.fit.estimators import Estimator, Foce, Nuts, Saem, estimator_named

SUMMARY, PARAMETERS, INDIVIDUAL, PREDICTIONS, POSTERIOR, REPORT, SUMMARIES = (
    "summary.json", "parameters.csv", "individual.csv", "predictions.csv", "posterior.nc", "report.md", "summaries.csv",
)  # fmt: skip
#: Files of a results folder, in the order they are written.
FILES: tuple[str, ...] = (SUMMARY, PARAMETERS, INDIVIDUAL, PREDICTIONS, POSTERIOR, REPORT)
#: How the posterior draws are made (netCDF attribute ``method``).
POSTERIOR_METHOD = "laplace_normal_approximation"
_FORMAT = 1


@dataclasses.dataclass(frozen=True, eq=False)
class FitResult:
    """Everything a population fit produced (compare two with :meth:`equals`).

    Attributes:
        name: the fit's name.
        spec_text: the fit file's text; ``spec_path`` where it was read.
        model: model name; ``data``: the data as named in the fit file.
        psi_names: population parameters: fixed effects, ``beta_<p>_<covariate>``, ``omega_<p>``
            (SD of the random effect on log p), ``corr_<p>_<q>`` (correlation of two random
            effects of an omega block), ``omega_iov_<p>`` (SD between occasions),
            ``sigma_<add|prop>_<dvid>``.
        psi: their estimates on the estimation scale, raveled (unconstrained fixed effects, beta,
            log omega, the artanh of partial correlations (il2treg.fit.omega), log omega_IOV,
            log sigma; il2treg.fit.psi).
        covariance: covariance of ``psi`` (NaN when it could not be computed).
        ofv, aic, bic: −2 log-likelihood (FOCE-I) and the information criteria.
        condition_number: of the covariance; ``condition_number_cor``: of the correlation.
        converged, iterations: outer convergence; ``history``: OFV per iteration (``saem``: the
            complete-data objective per iteration after the burn-in, :mod:`il2treg.fit.saem`);
            ``trace`` (``saem`` only, else None): ``psi`` before and after each iteration,
            ``[iterations + 1, psi]`` (:func:`il2treg.plots.plot_saem_trace`).
        n_patients, n_observations: patients in the data; observations used.
        estimates: ``parameters.csv`` (natural scale).
        individual: ``individual.csv``.
        predictions: ``predictions.csv``.
        posterior: draws ``[chain, draw, psi]`` on the natural scale (``estimates`` units).
        posterior_seed: seed of the draws.
        residual: final error model per observation type fitted: kind, sigma_add, sigma_prop.
        settings: optimiser and SRI-4 settings used.
        timing: seconds per stage (``estimation_s`` includes compilation).
        version: il2treg version that made it.
        estimator: the kind of estimator that made it (:mod:`il2treg.fit.estimators`), without
            its settings: those it ran with are in ``settings`` (``saem_*``, ``nuts_*``); after
            :class:`~il2treg.fit.estimators.Nuts`, ``posterior`` holds the NUTS draws. Saved as
            ``summary.json``'s ``method``, its name.
        inference: the NUTS posterior as ArviZ InferenceData (None for the other estimators).
        summaries: ``summaries.csv`` for a fit with published summaries beside its data (else
            None); the OFV includes their −2 log-likelihood, the ``neg2ll`` column's sum.
    """

    name: str
    spec_text: str
    spec_path: str
    model: str
    data: str
    psi_names: tuple[str, ...]
    psi: np.ndarray
    covariance: np.ndarray
    ofv: float
    aic: float
    bic: float
    condition_number: float
    condition_number_cor: float
    converged: bool
    iterations: int
    history: np.ndarray
    n_patients: int
    n_observations: int
    estimates: pd.DataFrame
    individual: pd.DataFrame
    predictions: pd.DataFrame
    posterior: np.ndarray
    posterior_seed: int
    residual: dict
    settings: dict
    timing: dict
    version: str
    estimator: Estimator = Foce()
    inference: object = None
    trace: np.ndarray | None = None
    summaries: pd.DataFrame | None = None

    @property
    def method(self) -> str:
        """The name of the estimator that made it (``foce``, ``saem`` or ``nuts``)."""
        return self.estimator.name

    @property
    def flagged(self) -> list:
        """IDs of the patients left out of the objective (ODE failure or no EBE at the start)."""
        return self.individual.loc[~self.individual["included"], "ID"].tolist()

    @property
    def standard_errors(self) -> np.ndarray:
        """SEs of ``psi`` (estimation scale)."""
        return np.sqrt(np.diag(self.covariance))

    def equals(self, other: FitResult) -> bool:
        """Exact equality of every field (NaN equals NaN; tables by value, columns and dtypes)."""
        return isinstance(other, FitResult) and all(
            _same(getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
        )

    def summary(self) -> str:
        """The one-screen report (Markdown)."""
        return report(self)

    def identifiability(self, *, max_rse: float = 50.0, max_correlation: float = 0.95, min_eigenvalue: float = 1e-3) -> list[str]:
        """What the data do not determine, as sentences (empty when nothing is flagged).

        From the covariance of the estimates (``2 R^-1``): a covariance step that failed (R
        singular or not positive definite: some direction of the parameters is not informed at
        all); parameters with %RSE above ``max_rse``; pairs whose estimates correlate beyond
        ``max_correlation``; and each eigenvector of the correlation matrix with an eigenvalue
        below ``min_eigenvalue``, named by the parameters that load on it. A flagged parameter
        should be fixed (at a literature value) or informed by more data, e.g. another visit.
        """
        names = list(self.psi_names)
        cov = np.asarray(self.covariance)
        if not self.settings.get("covariance", True):
            return ["the covariance step was skipped ([optimiser] covariance = false): identifiability was not assessed."]
        if not np.all(np.isfinite(cov)):
            return ["the covariance step failed (the Hessian of the objective is singular or not positive definite): "
                    "at least one parameter is not identifiable from these data; fix the parameters with the least "
                    "information or fit them with more data."]  # fmt: skip
        out = []
        est = self.estimates.set_index("parameter")
        for name in names:
            rse = est.loc[name, "rse_percent"] if name in est.index else float("nan")
            if np.isfinite(rse) and rse > max_rse:
                out.append(f"{name}: %RSE {rse:.0f} > {max_rse:g}: poorly determined by these data.")
        sd = np.sqrt(np.diag(cov))
        cor = cov / np.outer(sd, sd)
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                if abs(cor[i, j]) > max_correlation:
                    out.append(f"{names[i]} and {names[j]}: correlation {cor[i, j]:+.3f}: the data inform only a combination of the two.")
        lam, vec = np.linalg.eigh(cor)
        for k in np.flatnonzero(lam < min_eigenvalue):
            load = np.abs(vec[:, k])
            involved = [names[i] for i in np.argsort(load)[::-1] if load[i] > 0.3]
            out.append(f"correlation eigenvalue {lam[k]:.1e} < {min_eigenvalue:g}: near-redundant direction in {', '.join(involved)}.")
        return out


# ----------------------------------------------------------------------------- save / load


def save(result: FitResult, out_dir: str | Path, *, force: bool = False, extra=None) -> Path:
    """Write ``result`` as a results folder (see the module docstring), atomically.

    ``extra``: optional ``callable(folder)`` writing more files (figures) into the folder before it
    is moved into place, so that they are part of the same atomic write.

    Raises:
        InputError: ``out_dir`` exists and ``force`` is False (nothing is written).
    """
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, force=force) as tmp:
        _write_summary(result, tmp / SUMMARY)
        result.estimates.to_csv(tmp / PARAMETERS, index=False)
        result.individual.to_csv(tmp / INDIVIDUAL, index=False)
        result.predictions.to_csv(tmp / PREDICTIONS, index=False)
        _write_posterior(result, tmp / POSTERIOR)
        (tmp / REPORT).write_text(report(result), encoding="utf-8")
        if result.summaries is not None:
            result.summaries.to_csv(tmp / SUMMARIES, index=False)
        if extra is not None:
            extra(tmp)
    return out_dir


def load_fit(path: str | Path) -> FitResult:
    """Read a results folder written by :func:`save` (bit for bit).

    Raises:
        InputError: the folder or one of its files is missing.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"results folder {str(path)!r} does not exist. Fix: give the --out folder of `il2treg fit`.")
    for name in FILES:
        if not (path / name).is_file():
            raise InputError(f"results folder {str(path)!r} has no {name}. Fix: run the fit again to write a complete folder.")
    s = json.loads((path / SUMMARY).read_text(encoding="utf-8"))
    if s.get("format") != _FORMAT:
        raise InputError(f"{path / SUMMARY}: unknown results format {s.get('format')!r}. Fix: read it with the il2treg version that wrote it ({s.get('version')}).")
    id_type = s["id_type"]
    psi_names = tuple(s["psi_names"])
    try:
        estimator = estimator_named(s.get("method", "foce"))
    except InputError as err:
        raise InputError(f"{path / SUMMARY}: {err}") from None
    return FitResult(
        name=s["name"], spec_text=s["spec_text"], spec_path=s["spec_path"], model=s["model"], data=s["data"],
        psi_names=psi_names, psi=_array(s["psi"]), covariance=_array(s["covariance"]).reshape(len(psi_names), len(psi_names)),
        ofv=float(s["ofv"]), aic=float(s["aic"]), bic=float(s["bic"]),
        condition_number=float(s["condition_number"]), condition_number_cor=float(s["condition_number_cor"]),
        converged=bool(s["converged"]), iterations=int(s["iterations"]), history=_array(s["history"]),
        n_patients=int(s["n_patients"]), n_observations=int(s["n_observations"]),
        estimates=_read_csv(path / PARAMETERS), individual=_read_csv(path / INDIVIDUAL, id_type),
        predictions=_read_csv(path / PREDICTIONS, id_type), posterior=_read_posterior(path / POSTERIOR, psi_names),
        posterior_seed=int(s["posterior_seed"]), residual=_decode(s["residual"]), settings=_decode(s["settings"]),
        timing=_decode(s["timing"]), version=s["version"], estimator=estimator,
        inference=_read_inference(path / POSTERIOR) if isinstance(estimator, Nuts) else None,
        trace=_array(s["trace"]).reshape(-1, len(psi_names)) if "trace" in s else None,
        summaries=_read_summaries(path) if s.get("summaries", False) else None,
    )  # fmt: skip


def _read_summaries(path: Path) -> pd.DataFrame:
    """``summaries.csv``, required where summary.json says the fit had summaries (their −2LL is in its OFV)."""
    if not (path / SUMMARIES).is_file():
        raise InputError(f"results folder {str(path)!r} has no {SUMMARIES}, but its fit had published summaries. Fix: run the fit again to write a complete folder.")
    text = {"study": str, "arm": str, "observable": str, "statistic": str, "scale": str, "bound": str}
    return pd.read_csv(path / SUMMARIES, dtype=text, keep_default_na=False, na_values={c: ["NaN", "nan"] for c in ("time_day", "n", "observed", "se", "predicted", "z", "neg2ll")})


def _write_summary(result: FitResult, file: Path) -> None:
    ids = result.individual["ID"]
    id_type = "int" if pd.api.types.is_integer_dtype(ids) else "float" if pd.api.types.is_float_dtype(ids) else "str"
    summary = {
        "format": _FORMAT, "version": result.version, "name": result.name, "model": result.model, "data": result.data,
        "ofv": result.ofv, "aic": result.aic, "bic": result.bic,
        "condition_number": result.condition_number, "condition_number_cor": result.condition_number_cor,
        "converged": result.converged, "iterations": result.iterations,
        "n_patients": result.n_patients, "n_observations": result.n_observations, "flagged": result.flagged,
        "psi_names": list(result.psi_names), "psi": result.psi, "covariance": result.covariance, "history": result.history,
        "residual": result.residual, "settings": result.settings, "timing": result.timing,
        "posterior_seed": result.posterior_seed, "id_type": id_type, "method": result.estimator.name,
        "posterior_method": POSTERIOR_METHOD if result.inference is None else Nuts.name,
        "spec_path": result.spec_path, "spec_text": result.spec_text, "summaries": result.summaries is not None,
        **({"trace": result.trace} if result.trace is not None else {}),
    }  # fmt: skip
    file.write_text(json.dumps(_encode(summary), indent=1, allow_nan=False) + "\n", encoding="utf-8")


def _encode(x):
    """JSON-ready: arrays to lists, numpy scalars to Python, non-finite floats to strings."""
    if isinstance(x, dict):
        return {str(k): _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode(v) for v in x]
    if isinstance(x, np.ndarray):
        return _encode(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else ("NaN" if math.isnan(x) else "Infinity" if x > 0 else "-Infinity")
    return x


def _decode(x):
    """Inverse of :func:`_encode` for dicts of scalars (non-finite strings back to floats)."""
    if isinstance(x, dict):
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return float(x) if x in ("NaN", "Infinity", "-Infinity") else x


def _array(x) -> np.ndarray:
    return np.asarray(np.asarray(x, dtype=object).astype(np.float64), dtype=np.float64)


def _read_csv(file: Path, id_type: str | None = None) -> pd.DataFrame:
    kwargs = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    if id_type == "str":
        kwargs["dtype"] = {"ID": str}
    frame = pd.read_csv(file, **kwargs)
    if id_type == "float":
        frame["ID"] = frame["ID"].astype(np.float64)
    return frame


def _write_posterior(result: FitResult, file: Path) -> None:
    import arviz as az

    if result.inference is not None:
        result.inference.to_netcdf(str(file))
        return
    draws = result.posterior
    posterior = {n: draws[..., k] for k, n in enumerate(result.psi_names)}
    observed, constant, dims = {}, {}, {}
    used = result.predictions[result.predictions["USED"]]
    patient_index = {i: k for k, i in enumerate(result.individual["ID"].tolist())}
    for dvid, rows in used.groupby("DVID", sort=False):
        dim = [f"obs_{dvid}"]
        observed[dvid] = rows["DV"].to_numpy(np.float64)
        constant[f"time_{dvid}"] = rows["TIME"].to_numpy(np.float64)
        constant[f"patient_{dvid}"] = np.asarray([patient_index[i] for i in rows["ID"]], dtype=np.int64)
        constant[f"cens_{dvid}"] = rows["CENS"].to_numpy(np.int64)
        dims.update({dvid: dim, f"time_{dvid}": dim, f"patient_{dvid}": dim, f"cens_{dvid}": dim})
    attrs = {
        "method": POSTERIOR_METHOD,
        "description": "draws of the population parameters from N(psi_hat, covariance) on the estimation scale "
        "(unconstrained fixed effects, log omega, log sigma), transformed to the natural scale (units of parameters.csv)",
        "covariance_available": int(bool(np.all(np.isfinite(result.covariance)))),
        "seed": result.posterior_seed,
        "fit": result.name,
        "ofv": result.ofv,
        "inference_library": "il2treg",
        "inference_library_version": result.version,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        idata = az.from_dict(posterior=posterior, observed_data=observed, constant_data=constant, dims=dims, attrs=attrs)
        idata.posterior.attrs.update(attrs)  # from_dict puts attrs on the root and observed_data only
        idata.to_netcdf(str(file))


def _read_posterior(file: Path, psi_names: tuple[str, ...]) -> np.ndarray:
    import xarray as xr

    with xr.open_dataset(file, group="posterior", engine="h5netcdf") as post:
        return np.stack([post[n].to_numpy() for n in psi_names], axis=-1).astype(np.float64)


def _read_inference(file: Path):
    import arviz as az

    idata = az.from_netcdf(str(file), engine="h5netcdf")
    for group in idata.groups():
        idata[group].load()
    return idata


def _same(a, b) -> bool:
    if hasattr(a, "groups") and hasattr(b, "groups"):  # InferenceData: every group identical (values, dims, attrs)
        return a.groups() == b.groups() and all(a[g].identical(b[g]) for g in a.groups())
    if isinstance(a, pd.DataFrame):
        return isinstance(b, pd.DataFrame) and list(a.columns) == list(b.columns) and a.dtypes.equals(b.dtypes) and a.equals(b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# ----------------------------------------------------------------------------- report


def _named(row) -> str:
    """An estimate's name, with the fit file's label where it has one: ``IIV_CL (omega_POP_CL)``."""
    label = row.get("label", row["parameter"])
    if not isinstance(label, str) or label == row["parameter"]:
        return row["parameter"]
    variance = f"; σ² {_g(row['estimate'] ** 2)}" if row["type"] == "sigma" else ""  # a label from NONMEM names a variance
    return f"{label} ({row['parameter']}{variance})"


def _foce(settings: dict) -> str:
    """FOCE-I, or FOCE for a fit without interaction ([optimiser] interaction = false)."""
    return "FOCE-I" if settings.get("interaction", True) else "FOCE"


def _curvature_text(settings: dict) -> str:
    """How the objective's Laplace Hessian was formed ([optimiser] curvature; older results:
    observed), and whether without interaction ([optimiser] interaction)."""
    text = "NONMEM's: expected curvature" if settings.get("curvature") == "expected" else "Laplace, observed curvature"
    return text if settings.get("interaction", True) else text + "; no interaction: residual SDs at the population predictions"


def _covariance_text(settings: dict, covariance: np.ndarray) -> str:
    """Which covariance the standard errors come from ([optimiser] covariance_matrix; older results: the Hessian)."""
    if not np.all(np.isfinite(covariance)):
        return "No standard errors (the covariance step was skipped or failed)."
    if settings.get("covariance_matrix") == "sandwich":
        return "Standard errors: the sandwich R^-1 S R^-1 (NONMEM's default)."
    return "Standard errors: 2 R^-1 (the Hessian of the OFV)."


def report(result: FitResult) -> str:
    """The one-screen summary, like nlmixr2's: objective, estimates with %RSE and CIs, BSV, sigmas."""
    est = result.estimates
    ind = result.individual
    t = result.timing
    status = "converged" if result.converged else "NOT converged"
    lines = [
        f"# Fit {result.name}: model {result.model}, data {result.data}",
        "",
        (f"SAEM population fit: {result.iterations} iterations (OFV, %RSE and shrinkage: {_foce(result.settings)} at the SAEM estimates); "
         if isinstance(result.estimator, Saem) else f"{_foce(result.settings)} ({_curvature_text(result.settings)}) population fit, L-BFGS: {status} after {result.iterations} iterations; ")
        + f"estimation {t.get('estimation_s', float('nan')):.1f} s (compilation included), total {t.get('total_s', float('nan')):.1f} s. "
        + _covariance_text(result.settings, result.covariance),
        "",
        "| OFV | AIC | BIC | condition number (cov / cor) | patients (flagged) | observations |",
        "|---|---|---|---|---|---|",
        f"| {result.ofv:.3f} | {result.aic:.3f} | {result.bic:.3f} | {_g(result.condition_number)} / {_g(result.condition_number_cor)} "
        f"| {result.n_patients} ({len(result.flagged)}) | {result.n_observations} |",
        "",
        "## Population parameters",
        "",
        "| parameter | estimate | unit | %RSE | 95% CI | BSV CV% | shrinkage % |",
        "|---|---|---|---|---|---|---|",
    ]
    omegas = est[est["type"] == "omega"].set_index("parameter")
    for _, row in est[est["type"].isin(["fixed", "covariate"])].iterrows():
        om = omegas.loc[f"omega_{row['parameter']}"] if f"omega_{row['parameter']}" in omegas.index else None
        bsv = "-" if om is None else f"{om['cv_percent']:.1f}" + (" (fixed)" if not om["estimated"] else "")
        if om is not None and isinstance(om.get("label"), str) and om["label"] != om.name:
            bsv += f" ({om['label']}: ω² {_g(om['estimate'] ** 2)})"
        shrink = "-" if om is None else _g(om["shrinkage_percent"], ".1f")
        value = _g(row["estimate"]) + ("" if row["estimated"] else " (fixed)")
        lines.append(f"| {_named(row)} | {value} | {row['unit']} | {_g(row['rse_percent'], '.1f')} | {_ci(row)} | {bsv} | {shrink} |")
    correlations = est[est["type"] == "correlation"]
    if len(correlations):
        lines += ["", "## Correlations of the random effects (omega blocks)", "", "| parameter | estimate | SE | 95% CI |", "|---|---|---|---|"]
        for _, row in correlations.iterrows():
            lines.append(f"| {_named(row)} | {_g(row['estimate'])} | {_g(row['se'])} | {_ci(row)} |")
    iov = est[est["type"] == "omega_iov"]
    if len(iov):
        lines += ["", "## Inter-occasion variability (the SD of kappa, one per occasion)", "", "| parameter | estimate | %RSE | 95% CI | IOV CV% |", "|---|---|---|---|---|"]
        for _, row in iov.iterrows():
            lines.append(f"| {_named(row)} | {_g(row['estimate'])} | {_g(row['rse_percent'], '.1f')} | {_ci(row)} | {_g(row['cv_percent'], '.1f')} |")
    lines += ["", "## Residual error", "", "| parameter | estimate | unit | %RSE | 95% CI |", "|---|---|---|---|---|"]
    for _, row in est[est["type"] == "sigma"].iterrows():
        value = _g(row["estimate"]) + ("" if row["estimated"] else " (fixed)")
        lines.append(f"| {_named(row)} | {value} | {row['unit']} | {_g(row['rse_percent'], '.1f')} | {_ci(row)} |")
    day = result.settings.get("sri4_day", 84.0)
    change = [c for c in ind.columns if c.startswith("sledai_change_day")]
    p_sri4 = [c for c in ind.columns if c.startswith("p_sri4_day")]
    included = ind[ind["included"]]
    if change and p_sri4 and len(included):
        lines += [
            "",
            f"## SLEDAI link (day {day:g}, included patients)",
            "",
            f"Predicted latent SLEDAI change: median {np.nanmedian(included[change[0]]):.2f} points "
            f"(range {np.nanmin(included[change[0]]):.2f} to {np.nanmax(included[change[0]]):.2f}); "
            f"mean P(SRI-4) {np.nanmean(included[p_sri4[0]]):.3f}.",
        ]
        if "sledai" not in result.residual:
            lines.append("SLEDAI was not fitted: the link uses the model file's disease parameters and the default score SD.")
    if result.summaries is not None:
        lines += _summaries_report(result.summaries)
    if result.flagged:
        lines += ["", "## Flagged patients (left out of the objective)", ""]
        for _, row in ind[~ind["included"]].iterrows():
            lines.append(f"- ID {row['ID']}: {row['status']}")
    if result.inference is not None:
        lines += _nuts_report(result)
    warnings = result.identifiability()
    if warnings:
        lines += ["", "## Identifiability", ""] + [f"- {w}" for w in warnings]
    return "\n".join(lines) + "\n"


def _summaries_report(table: pd.DataFrame) -> list[str]:
    """The published summaries fitted beside the data, observed against predicted."""
    lines = ["", f"## Published summaries (their −2LL, {table['neg2ll'].sum():.3f}, is part of the OFV; BIC counts the patients' observations only)", "",
             "| study | arm | observable | day | statistic | observed | SE | predicted | z | −2LL |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for _, r in table.iterrows():
        what = r["statistic"] + ("" if r["scale"] == "value" else f" of {r['scale']}")
        observed = {"lower": "> ", "upper": "< "}.get(r["bound"] if isinstance(r["bound"], str) else "", "") + _g(r["observed"])
        lines.append(f"| {r['study']} | {r['arm']} | {r['observable']} | {_g(r['time_day'])} | {what} | {observed} | {_g(r['se'])} | {_g(r['predicted'])} "
                     f"| {_g(r['z'], '.2f')} | {_g(r['neg2ll'], '.3f')} |")  # fmt: skip
    failed = table.groupby("arm")["failed_in_arm"].first()
    if failed.any():
        lines.append(f"Virtual patients whose solve failed at the estimates: {', '.join(f'{a} {int(n)}' for a, n in failed.items() if n)}.")
    return lines


def _nuts_report(result: FitResult) -> list[str]:
    est = result.estimates[result.estimates["estimated"]]
    stats = result.inference.sample_stats
    t = result.timing
    n_div = int(stats["diverging"].sum())
    worst_rhat, least_ess = float(est["r_hat"].max()), float(est["ess_bulk"].min())
    lines = [
        "", "## NUTS posterior (warm-started from the fit above)", "",
        f"{stats.sizes['chain']} chains x {stats.sizes['draw']} draws; {n_div} divergences after warm-up; "
        f"largest R-hat {worst_rhat:.4f}, smallest bulk ESS {least_ess:.0f}; compilation {t.get('nuts_compile_s', float('nan')):.1f} s, "
        f"sampling {t.get('nuts_sampling_s', float('nan')):.1f} s (smallest bulk ESS per second of sampling: {least_ess / t.get('nuts_sampling_s', float('nan')):.2f}).",
        "", "| parameter | posterior mean | SD | 95% interval | R-hat | bulk ESS | Laplace estimate |", "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for _, row in est.iterrows():
        lines.append(
            f"| {row['parameter']} | {_g(row['posterior_mean'])} | {_g(row['posterior_sd'])} | {_g(row['posterior_q2.5'])} - {_g(row['posterior_q97.5'])} "
            f"| {row['r_hat']:.4f} | {row['ess_bulk']:.0f} | {_g(row['estimate'])} |"
        )
    return lines


def _g(x, fmt: str = ".4g") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _ci(row) -> str:
    if math.isnan(row["ci_low"]) or math.isnan(row["ci_high"]):
        return "-"
    return f"{row['ci_low']:.4g} – {row['ci_high']:.4g}"
