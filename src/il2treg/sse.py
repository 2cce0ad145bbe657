r"""Stochastic simulation and estimation (SSE): power of a model-based test against Fisher's.

:func:`sse` runs ``replicates`` Dask tasks (:mod:`il2treg.cluster`); each simulates one trial
of a design (:func:`il2treg.trial.simulate_trial`: the mechanistic model's patients, sites, visit
noise, dropouts and SRI-4; replicate :math:`r` with the seed :func:`replicate_seed` of ``seed``
and :math:`r`, so that it does not depend on the number of replicates or the order they run in),
then fits its reported SLEDAI with two fit files, each from two or three starts (:func:`fit_pair`):

- the *full* fit, whose model has a drug effect (``fits/lupil2_sse/fit.toml``: the SLEDAI of
  ``sledai_arm.toml`` falls by a further fraction ``Edrug`` on IL-2), and
- the *null* fit, the same with the drug effect fixed at none (``null.toml``: ``Edrug = 0``).

**Tests.** The likelihood-ratio test rejects where
:math:`\Delta OFV = OFV_{null} - OFV_{full} > \chi^2_{df}(1 - \alpha)`, ``df`` the number of
parameters the null fit fixes, :math:`\alpha` the design's; Fisher's exact test on the SRI-4
responders at the assessment visit (ITT) is the design's own test of SRI-4 (``sri4``: Fisher's
exact test, or Pearson's chi-square where the design says ``test = "chi2"``; :mod:`il2treg.trial`).
A replicate whose fits fail or do not converge is counted and left out of both powers, so that
the two tests are compared on the same trials.

**Power** of each test is the fraction of those replicates that reject, with its Monte Carlo SE
:math:`\sqrt{p(1-p)/n}`. **Bias and RMSE** of the full fit's fixed effects are against a
reference: the full fit (:func:`fit_pair`) to one trial of ``reference_size`` times the design's patients and sites (simulated
with another seed). The fitted model is descriptive, not the one that simulated the data, so
there is no true value to compare with; the large trial's estimates stand for the values it
converges to, and carry their own error (the bias's Monte Carlo SE does not include it).

**The folder** ``out``: ``sse.json`` (settings, with SHA-256 digests of the design and of both
fit and model files; a rerun must match them and resumes), ``data/rNNNNN.csv`` (each replicate's
data, NONMEM-style) and ``replicates/rNNNNN.json`` (both written atomically by the worker),
``reference.json``, ``replicates.csv`` and ``summary.csv``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from il2treg._io import atomic_write_text
from il2treg.errors import InputError, SpecError

SETTINGS, DATA, REPLICATES, TABLE, SUMMARY, REFERENCE = "sse.json", "data", "replicates", "replicates.csv", "summary.csv", "reference.json"


def trial_table(result, trial: int) -> pd.DataFrame:
    """One replicate of a :class:`~il2treg.trial.TrialResult` as a NONMEM-style table: ``ID``,
    ``TIME`` (days), ``EVID`` and ``AMT`` (0: observations), ``DV`` (reported SLEDAI), ``DVID``
    (``sledai``), ``ARM`` (1 on IL-2, 0 on placebo), one row per visit attended (none after a
    dropout). The doses act through ``ARM`` in the descriptive model, so there are no dose rows."""
    sledai = result.sledai[trial]
    n, v = sledai.shape
    table = pd.DataFrame({"ID": np.repeat(np.arange(1, n + 1), v), "TIME": np.tile(result.visit_days, n), "EVID": 0, "AMT": 0.0,
                          "DV": sledai.reshape(-1), "DVID": "sledai", "ARM": np.repeat((result.arm == 0).astype(float), v)})  # fmt: skip
    return table[np.isfinite(table["DV"])].reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class SseResult:
    """What :func:`sse` wrote: ``replicates.csv`` (per replicate: the SRI-4 test's p, the two
    OFVs, ΔOFV, each test's rejection, the full fit's estimates, status) and ``summary.csv`` (per
    test its power and Monte Carlo SE; per estimate its reference, mean, bias, relative bias and
    RMSE); ``lost``: replicates whose task failed for a reason other than their fits (not on
    disk; a rerun runs them)."""

    out: Path
    replicates: pd.DataFrame
    summary: pd.DataFrame
    lost: dict[int, str] = dataclasses.field(default_factory=dict)

    def power(self, test: str) -> tuple[float, float]:
        """(power, Monte Carlo SE) of ``test`` (``"lrt"`` or ``"sri4"``)."""
        row = self.summary[(self.summary["kind"] == "power") & (self.summary["name"] == test)].iloc[0]
        return float(row["value"]), float(row["mc_se"])


@functools.lru_cache(maxsize=4)
def _spec(fit_file: str, digest: str):
    """A fit file read once per worker process (its model then compiles once for every replicate)."""
    from il2treg.fit.spec import read_fit_spec

    return read_fit_spec(fit_file)


def _on_data(spec, table: pd.DataFrame):
    """``spec`` with ``table`` as its data, and its problem: made once per fit file and trial,
    shared by that fit's starts."""
    from il2treg.data import read_dataset

    spec = dataclasses.replace(spec, dataset=read_dataset(table, observables=spec.model.observable_names, doses=spec.model.dosing_inputs))
    return spec, spec.problem()


def _fit(prepared, start: dict | None = None) -> dict:
    """FOCE-I of a fit file on a trial (``prepared``: :func:`_on_data`; no covariance step): OFV,
    status, estimates and ``psi`` (estimation scale, by name). ``start``: ``psi`` by name (another
    fit's) and ``values`` (fixed effects on the natural scale, internal units) that replace the
    fit file's starts where given."""
    import jax

    from il2treg.fit.assemble import initial_psi
    from il2treg.fit.problem import to_unconstrained
    from il2treg.fit.run import refit

    spec, problem = prepared
    psi0 = np.array(initial_psi(spec, problem, spec.residual_model()), dtype=np.float64)  # a writable copy
    names = list(problem.psi_names)
    if start:
        typical = spec.model.typical()
        values = {n: float(start.get("values", {}).get(n, typical[n])) for n in problem.fixed}
        for n, u in zip(problem.fixed, np.asarray(to_unconstrained(problem, values))):
            psi0[names.index(n)] = u
        for n, v in start.get("psi", {}).items():
            if n in names:
                psi0[names.index(n)] = v
    fit, natural = refit(spec, problem, jax.numpy.asarray(psi0))
    ok = math.isfinite(float(fit.ofv)) and bool(np.all(np.isfinite(natural)))
    return {"ofv": float(fit.ofv), "converged": bool(fit.converged) and ok, "failed": not ok, "estimates": dict(zip(fit.psi_names, natural.tolist())),
            "psi": dict(zip(fit.psi_names, np.asarray(fit.psi).tolist()))}  # fmt: skip


def _best(*fits: dict | None) -> dict:
    """The fit of the lowest OFV among those that did not fail (the first where all failed), with
    every start's OFV in ``starts`` (NaN for a start not tried). The lowest OFV wins even where
    its fit stopped before convergence and another converged: the trial is then ``not_converged``."""
    tried = [f for f in fits if f is not None]
    best = min([f for f in tried if not f["failed"]] or [tried[0]], key=lambda f: f["ofv"])
    return {**best, "starts": [math.nan if f is None else f["ofv"] for f in fits]}


def fit_pair(full_spec, null_spec, table: pd.DataFrame) -> tuple[dict, dict]:
    """The full and the null fit of ``table``, each from several starts, keeping the lowest OFV.

    The full fit starts from the fit file's values and from the null fit's estimates with the
    tested parameters at their null values; the null fit from the fit file's values and from the
    full fit's estimates (the tested parameters dropped). Where the null fit's second start finds
    a lower OFV than every full fit, the full fit starts a third time from there. A full fit
    started at a null optimum can only go down from it, so the full OFV never ends above the
    null's. One start each found local minima up to 63 OFV points above the other's optimum on
    simulated LUPIL-2 trials (3 visits; fits/lupil2_sse/README.md)."""
    on_full, on_null = _on_data(full_spec, table), _on_data(null_spec, table)
    full_a, null_a = _fit(on_full), _fit(on_null)
    null_values = {n: float(null_spec.model.typical()[n]) for n in full_spec.fixed if n not in null_spec.fixed}
    full_b = None if null_a["failed"] else _fit(on_full, {"psi": null_a["psi"], "values": null_values})
    null_b = None if full_a["failed"] else _fit(on_null, {"psi": full_a["psi"]})  # the tested parameters are not in the null's psi
    full, null = _best(full_a, full_b), _best(null_a, null_b)
    if null_b is not None and not null_b["failed"] and (null_a["failed"] or null_b["ofv"] < null_a["ofv"]) and null_b["ofv"] < full["ofv"]:
        full = _best(full_a, full_b, _fit(on_full, {"psi": null_b["psi"], "values": null_values}))
    return full, null


def replicate_seed(seed: int, replicate: int) -> int:
    """The seed of replicate ``replicate``'s trial in an SSE made with ``seed``."""
    return int(np.random.SeedSequence([seed, replicate]).generate_state(1)[0])


def run_replicate(design, full: str, null: str, digests: tuple[str, str], seed: int, replicate: int, out: str) -> dict:
    """One Dask task: simulate replicate ``replicate``'s trial, write its data, fit it with the
    full and the null fit file; writes and returns its record (``replicate``, ``sri4_p``,
    ``full`` and ``null``: OFV, convergence, estimates; ``error``; ``elapsed_s``)."""
    from il2treg.cluster import prepare_worker
    from il2treg.trial import simulate_trial

    prepare_worker()
    start = time.perf_counter()
    trial = simulate_trial(design, 1, replicate_seed(seed, replicate))
    table = trial_table(trial, 0)
    atomic_write_text(Path(out) / DATA / f"r{replicate:05d}.csv", table.to_csv(index=False))
    record = {"replicate": replicate, "sri4_p": float(trial.p_value[0][0]), "error": None}  # p_value[0]: the ITT analysis
    try:
        record["full"], record["null"] = fit_pair(_spec(full, digests[0]), _spec(null, digests[1]), table)
    except (ArithmeticError, ValueError, RuntimeError, np.linalg.LinAlgError) as err:
        record.update(full=None, null=None, error=f"{type(err).__name__}: {err}")
    record["elapsed_s"] = time.perf_counter() - start
    atomic_write_text(Path(out) / REPLICATES / f"r{replicate:05d}.json", json.dumps(record, indent=1))
    return record


def run_reference(design, full: str, null: str, digests: tuple[str, str], seed: int, size: int, out: str) -> dict:
    """One Dask task: the full fit to one trial of ``size`` times the design's patients and sites
    (seed ``seed + 1``), written to ``reference.json`` (read back where it exists). A failed fit
    is recorded (``failed``, ``error``), not raised: the powers do not need it."""
    from il2treg.cluster import prepare_worker
    from il2treg.trial import simulate_trial

    prepare_worker()
    path = Path(out) / REFERENCE
    if path.exists():
        return _read_json(path)
    big = design.replace(n_per_arm={arm: n * size for arm, n in design.n_per_arm.items()}, n_sites=design.n_sites * size,
                         n_high_response_sites=design.n_high_response_sites * size)  # fmt: skip
    try:
        record = fit_pair(_spec(full, digests[0]), _spec(null, digests[1]), trial_table(simulate_trial(big, 1, seed + 1), 0))[0]
        record["error"] = None
    except (ArithmeticError, ValueError, RuntimeError, np.linalg.LinAlgError) as err:
        record = {"ofv": math.nan, "converged": False, "failed": True, "estimates": {}, "error": f"{type(err).__name__}: {err}"}
    atomic_write_text(path, json.dumps(record, indent=1))
    return record


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a file of il2treg sse ({err}). Fix: delete it; a rerun computes it again.") from err


def inputs_digest(*paths: Path) -> str:
    """SHA-256 of the files ``paths`` together."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).read_bytes())
    return h.hexdigest()


def design_digest(design) -> str:
    """SHA-256 of what a design's trials depend on: its fields (their repr), its regimens' dose
    times and amounts (as float64 bytes) and the file of the model that simulates them."""
    from il2treg.spec import resolve_model_path

    h = hashlib.sha256(repr(design).encode())
    for arm in sorted(design.regimens):
        reg = design.regimens[arm]
        h.update(np.asarray(reg.times, dtype=np.float64).tobytes() + np.asarray(reg.amounts, dtype=np.float64).tobytes())
    h.update(resolve_model_path(design.model).read_bytes())
    return h.hexdigest()


def _check_fits(full_spec, null_spec, full: Path, null: Path) -> int:
    """The null fit must be the full one with parameters fixed: the same model file, and its
    estimated population parameters (fixed effects, omegas, sigmas, ...) a subset of the full
    fit's. Returns the test's degrees of freedom, the number of those the null fit fixes."""
    if Path(full_spec.model.spec.path).read_bytes() != Path(null_spec.model.spec.path).read_bytes():
        raise SpecError(f"{null}: model {null_spec.model.spec.path}, where {full} has {full_spec.model.spec.path}, and they differ. "
                        "Fix: give the null fit the full fit's model, with the tested parameters fixed.")  # fmt: skip
    full_names, null_names = full_spec.problem().psi_names, null_spec.problem().psi_names
    extra = [n for n in null_names if n not in full_names]
    if extra:
        raise SpecError(f"{null}: estimates {', '.join(extra)}, which {full} does not. Fix: the null fit must fix parameters of the full fit, not add any.")
    dropped = [n for n in full_names if n not in null_names]
    if any(n not in full_spec.fixed for n in dropped):
        raise SpecError(f"{null}: leaves out {', '.join(n for n in dropped if n not in full_spec.fixed)}, which are not fixed effects of {full}. "
                        "Fix: a null fit here fixes fixed effects (the drug effect) and keeps the random effects and the error model.")  # fmt: skip
    if "sledai" not in full_spec.model.observable_names:
        raise SpecError(f"{full}: its model has no observable `sledai`, which the trials report. Fix: fit a model of reported SLEDAI (fits/lupil2_sse/sledai_arm.toml).")
    df = len(dropped)
    if df < 1:
        raise SpecError(f"{null}: fixes no parameter of {full} (both estimate {', '.join(full_names)}). "
                        "Fix: set the tested parameter (e.g. Edrug) to estimate = false with its null value in the null fit's [parameters].")  # fmt: skip
    return df


def summary_table(table: pd.DataFrame, reference: dict, names: list[str]) -> pd.DataFrame:
    """``summary.csv``: per test (``lrt``, ``sri4``) its power over the replicates whose fits both
    converged, and the Monte Carlo SE; per estimate of the full fit over those replicates: the
    reference, mean (with its Monte Carlo SE), bias, relative bias (%) and RMSE (NaN where the
    reference fit failed)."""
    ok = table[table["status"] == "ok"]
    rows = []
    for test in ("lrt", "sri4"):
        judged = ok[f"{test}_reject"].astype(bool)
        p = float(judged.mean()) if len(judged) else math.nan
        rows.append({"kind": "power", "name": test, "n": len(judged), "value": p, "mc_se": math.sqrt(p * (1 - p) / len(judged)) if len(judged) else math.nan})
    for name in names:
        values = ok[name].to_numpy(dtype=float)
        ref = float(reference.get("estimates", {}).get(name, math.nan)) if not reference.get("failed") else math.nan
        bias = float(values.mean() - ref) if values.size else math.nan
        rows.append({"kind": "estimate", "name": name, "n": int(values.size), "reference": ref, "value": float(values.mean()) if values.size else math.nan,
                     "mc_se": float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else math.nan, "bias": bias,
                     "relative_bias_percent": 100 * bias / abs(ref) if ref else math.nan,
                     "rmse": float(np.sqrt(np.mean((values - ref) ** 2))) if values.size else math.nan})  # fmt: skip
    return pd.DataFrame(rows, columns=["kind", "name", "n", "reference", "value", "mc_se", "bias", "relative_bias_percent", "rmse"])


def replicate_table(records: list[dict], names: list[str], critical: float, alpha: float) -> pd.DataFrame:
    """``replicates.csv`` from the records: the LRT rejects where ΔOFV > ``critical``, the SRI-4
    test where its p < ``alpha``; ``status`` is ``ok`` (both fits converged), ``not_converged``
    or ``failed``."""
    rows = []
    for r in records:
        full, null = r.get("full"), r.get("null")
        if full is None or null is None or full["failed"] or null["failed"]:
            status = "failed"
        else:
            status = "ok" if full["converged"] and null["converged"] else "not_converged"
        delta = null["ofv"] - full["ofv"] if status == "ok" else math.nan
        rows.append({"replicate": r["replicate"], "status": status, "sri4_p": r["sri4_p"], "sri4_reject": r["sri4_p"] < alpha,
                     "ofv_full": full["ofv"] if full else math.nan, "ofv_null": null["ofv"] if null else math.nan, "delta_ofv": delta,
                     "lrt_reject": bool(delta > critical) if status == "ok" else False,
                     **{n: (full["estimates"].get(n, math.nan) if full else math.nan) for n in names}, "error": r.get("error") or ""})  # fmt: skip
    columns = ["replicate", "status", "sri4_p", "sri4_reject", "ofv_full", "ofv_null", "delta_ofv", "lrt_reject", *names, "error"]
    return pd.DataFrame(rows, columns=columns)


def sse(design, replicates: int, full: str | Path, null: str | Path, out: str | Path, *, seed: int = 0, reference_size: int = 10,
        client=None, scheduler: str | None = None, workers: int | None = None, on_replicate: Callable[[dict], None] | None = None) -> SseResult:
    """Run (or resume) an SSE of ``design`` (a :class:`~il2treg.trial.TrialDesign` or a design
    name or file, :func:`il2treg.trial.load_design`) with the fit files ``full`` and ``null``
    (module docstring).

    Arguments:
        replicates: trials simulated and fitted.
        seed: seed of the trials (replicate ``r``: ``simulate_trial(design, 1, replicate_seed(seed, r))``);
            the reference trial uses ``seed + 1``.
        reference_size: the reference trial has this many times the design's patients per arm
            and sites.
        client, scheduler, workers: as :func:`il2treg.fit.bootstrap.bootstrap`.
        on_replicate: called with each replicate's record as it finishes, and once with
            ``{"workers": n}`` and ``{"skipped": k}`` (replicates already on disk).

    Raises:
        SpecError: bad fit files, or a null fit that is not the full one with parameters fixed.
        InputError: ``replicates`` < 1, ``reference_size`` < 1, ``out`` made by another SSE or
            not empty; replicates missing after the run (the workers do not share ``out``).
    """
    from scipy.stats import chi2

    from il2treg.cluster import connect, n_workers, open_job_folder, run_jobs
    from il2treg.fit.spec import read_fit_spec
    from il2treg.trial import TrialDesign, load_design

    if replicates < 1 or reference_size < 1:
        raise InputError(f"--replicates and the reference size must be at least 1, got {replicates} and {reference_size}. Fix: ask for 100 replicates or more.")
    full, null, out = Path(full).resolve(), Path(null).resolve(), Path(out).resolve()
    full_spec, null_spec = read_fit_spec(full), read_fit_spec(null)  # errors before any computation
    df = _check_fits(full_spec, null_spec, full, null)
    design = design if isinstance(design, TrialDesign) else load_design(design)
    digests = (inputs_digest(full, full_spec.model.spec.path), inputs_digest(null, null_spec.model.spec.path))
    settings = {"design": design.name, "design_sha256": design_digest(design), "full_sha256": digests[0], "null_sha256": digests[1], "seed": int(seed),
                "reference_size": int(reference_size), "replicates": int(replicates), "alpha": design.alpha, "test": design.test, "df": df}  # fmt: skip
    open_job_folder(out, SETTINGS, settings, ("design_sha256", "full_sha256", "null_sha256", "seed", "reference_size"), "an SSE")
    for folder in (out / DATA, out / REPLICATES):
        folder.mkdir(exist_ok=True)
    emit = on_replicate or (lambda record: None)
    wanted = range(1, replicates + 1)
    done = {int(p.stem[1:]) for p in (out / REPLICATES).glob("r*.json") if re.fullmatch(r"r\d{5,}", p.stem)}

    def work(c):
        emit({"workers": n_workers(c)})
        emit({"skipped": len(done & set(wanted))})
        reference = {}
        jobs = {0: (run_reference, (design, str(full), str(null), digests, int(seed), int(reference_size), str(out)))}  # first: the longest
        jobs.update({r: (run_replicate, (design, str(full), str(null), digests, int(seed), r, str(out))) for r in wanted if r not in done})

        def on_done(k, record):
            if k == 0:
                reference.update(record)
            else:
                emit(record)

        lost = run_jobs(c, _call, jobs, on_done=on_done)
        if 0 in lost:
            reference.update(failed=True, error=f"{type(lost[0]).__name__}: {lost[0]}")
        return reference, {k: f"{type(e).__name__}: {e}" for k, e in lost.items() if k != 0}

    if client is None:
        with connect(scheduler, workers=workers) as own:
            reference, lost = work(own)
    else:
        reference, lost = work(client)
    records = [_read_json(out / REPLICATES / f"r{r:05d}.json") for r in wanted if (out / REPLICATES / f"r{r:05d}.json").exists()]
    missing = sorted(set(wanted) - {r["replicate"] for r in records} - set(lost))
    if missing:
        raise InputError(f"{len(missing)} replicate(s) finished but are not in {out / REPLICATES} (e.g. {missing[0]}). "
                         "Fix: give the workers a folder they share with this machine (--out on a shared file system).")  # fmt: skip
    names = list(full_spec.fixed)
    table = replicate_table(records, names, float(chi2.ppf(1 - design.alpha, df)), design.alpha)
    summary = summary_table(table, reference, names)
    atomic_write_text(out / TABLE, table.to_csv(index=False))
    atomic_write_text(out / SUMMARY, summary.to_csv(index=False))
    return SseResult(out=out, replicates=table, summary=summary, lost=lost)


def _call(fn, args):
    """A task that calls ``fn(*args)`` (run_jobs runs one function per call; the SSE has two)."""
    return fn(*args)
