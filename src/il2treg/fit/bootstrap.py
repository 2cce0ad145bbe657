r"""The non-parametric bootstrap of a population fit, one Dask task per refit.

:func:`bootstrap` fits the fit file's data once (the *original* fit, with its covariance step),
then refits ``replicates`` resamples of its patients, each drawn with replacement within the
strata (by default the ``ARM`` covariate, so that every resample keeps the arms' sizes). A
patient drawn twice is two patients. Each refit starts at the original estimates and runs the
fit file's FOCE-I estimation without the covariance step.

**Seeds.** Replicate :math:`r` draws its patients with ``numpy.random.default_rng([seed, r])``:
its sample, hence its fit, depends on ``seed`` and :math:`r` alone, not on which worker ran it,
in what order, or how many replicates were asked for. A resample keeps the data's padded shape
(:meth:`il2treg.data.Dataset.resample`), so one worker compiles once for all its refits.

**The folder** ``out``::

    bootstrap.json        what was run (fit file, SHA-256 of fit file, model and data, seed, strata); a rerun must match
    original/             the original fit's results folder (il2treg.fit.result)
    replicates/r00001.json   one per replicate, written atomically by its worker as it finishes
    replicates.csv        one row per replicate: status, OFV, estimates (declared units)
    ci.csv                per parameter: estimate, covariance-step CI, bootstrap median and percentile CI
    bootstrap.png         the replicates' estimates with both intervals

A rerun with the same ``out`` skips the replicates on disk and runs the rest: the tables of an
interrupted and resumed bootstrap equal those of an uninterrupted one bit for bit (JSON keeps a
float64 exactly). A replicate whose fit raises, or whose OFV is not finite, is written with
status ``failed`` and its error; one that stops before convergence with ``not_converged``. The
percentile intervals use the converged replicates; the CLI reports the counts of the others.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from il2treg._io import atomic_write_text
from il2treg.errors import InputError, SpecError

#: Status of a replicate in ``replicates.csv``.
OK, NOT_CONVERGED, FAILED = "ok", "not_converged", "failed"
SETTINGS, REPLICATES, TABLE, CI, FIGURE, ORIGINAL = "bootstrap.json", "replicates", "replicates.csv", "ci.csv", "bootstrap.png", "original"


@dataclasses.dataclass(frozen=True)
class BootstrapResult:
    """What :func:`bootstrap` wrote (the tables of its folder).

    Attributes:
        out: the folder.
        replicates: ``replicates.csv``: ``replicate``, ``status``, ``ofv``, ``iterations``, one
            column per estimated parameter (declared units), ``error``.
        ci: ``ci.csv`` (:func:`interval_table`).
        lost: replicates whose task failed for a reason other than its fit (a worker lost more
            than the scheduler's allowed failures, a full disk): key -> message; not on disk,
            so a rerun runs them again.
    """

    out: Path
    replicates: pd.DataFrame
    ci: pd.DataFrame
    lost: dict[int, str]

    def counts(self) -> dict[str, int]:
        """Replicates per status (``ok``, ``not_converged``, ``failed``), and ``lost``."""
        status = self.replicates["status"]
        return {OK: int((status == OK).sum()), NOT_CONVERGED: int((status == NOT_CONVERGED).sum()),
                FAILED: int((status == FAILED).sum()), "lost": len(self.lost)}  # fmt: skip


def stratum_column(dataset, strata: str | None) -> str | None:
    """The covariate to stratify by: ``strata`` itself (``"none"`` or None: no strata), or for
    ``"auto"`` the covariate ``ARM`` (any case) where the data have one.

    Raises:
        InputError: ``strata`` names no covariate of the data.
    """
    if strata is None or strata.lower() == "none":
        return None
    names = list(dataset.covariates)
    if strata == "auto":
        return next((n for n in names if n.lower() == "arm"), None)
    if strata not in names:
        raise InputError(f"--strata {strata!r} is not a covariate of the data (its covariates: {', '.join(names) or 'none'}). "
                         "Fix: name one of them, or pass --strata none.")  # fmt: skip
    _, sizes = np.unique(np.asarray(dataset.covariates[strata]).astype(str), return_counts=True)
    if sizes.min() < 2:
        raise InputError(f"--strata {strata!r} has a stratum of one patient ({sizes.size} strata for {dataset.n_subjects} patients): resampling "
                         "within it would repeat that patient in every replicate. Fix: stratify by a grouping column (an arm), or pass --strata none.")  # fmt: skip
    return strata


def resample_positions(dataset, replicate: int, seed: int, strata: str | None) -> np.ndarray:
    """Replicate ``replicate``'s patients: positions in ``dataset``, drawn with replacement within
    each stratum of the covariate ``strata`` (each keeps its size; strata in sorted order of
    their values), from ``numpy.random.default_rng([seed, replicate])``."""
    rng = np.random.default_rng([seed, replicate])
    if strata is None:
        return rng.integers(0, dataset.n_subjects, dataset.n_subjects)
    values = np.asarray(dataset.covariates[strata])
    parts = []
    for level in np.unique(values[~pd.isna(values)]) if values.dtype.kind == "f" else np.unique(values):
        members = np.flatnonzero(values == level)
        parts.append(members[rng.integers(0, members.size, members.size)])
    missing = np.flatnonzero(pd.isna(values)) if values.dtype.kind == "f" else np.zeros(0, dtype=int)
    if missing.size:
        parts.append(missing[rng.integers(0, missing.size, missing.size)])
    return np.concatenate(parts)


def input_digest(spec) -> str:
    """SHA-256 of what a refit depends on: the fit file, the model file and the data (as read)."""
    h = hashlib.sha256(Path(spec.path).read_bytes())
    h.update(Path(spec.model.spec.path).read_bytes())
    h.update(spec.dataset.to_frame(rows=True).to_csv(index=False).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=4)
def _prepared(fit_file: str, digest: str):
    """The fit file and its problem, made once per worker process (and per version of the file).

    Every refit of the worker uses this problem, whose static settings (the solver's save slots
    per dosing interval) are those of the whole dataset, enough for any resample of it: then its
    compiled programs serve every refit. A fit's ``[summaries]`` stay as they are while its
    patients are resampled."""
    from il2treg.fit.spec import read_fit_spec

    spec = read_fit_spec(fit_file)
    return spec, spec.problem()


def replicate_path(out: Path, replicate: int) -> Path:
    """The file of replicate ``replicate`` in the folder ``out``."""
    return Path(out) / REPLICATES / f"r{replicate:05d}.json"


def run_replicate(fit_file: str, digest: str, replicate: int, seed: int, strata: str | None, psi0: list[float], out: str) -> dict:
    """Refit replicate ``replicate`` and write its record (one Dask task; also callable alone).

    Returns the record written to :func:`replicate_path`: ``replicate``, ``status``, ``ofv``,
    ``iterations``, ``estimates`` (declared units, by name), ``psi`` (estimation scale),
    ``positions`` (the patients drawn), ``error``; and, for the throughput benchmark, ``worker``
    and ``elapsed_s`` (not in the tables).
    """
    import jax.numpy as jnp

    from il2treg.cluster import prepare_worker
    from il2treg.fit.run import refit

    prepare_worker()
    start = time.perf_counter()
    spec, problem = _prepared(fit_file, digest)
    positions = resample_positions(spec.dataset, replicate, seed, strata)
    record = {"replicate": replicate, "positions": positions.tolist(), "error": None}
    try:
        resampled = dataclasses.replace(spec, dataset=spec.dataset.resample(positions))
        fit, natural = refit(resampled, problem, jnp.asarray(psi0, dtype=jnp.float64))
        ofv = float(fit.ofv)
        status = OK if fit.converged else NOT_CONVERGED
        if not math.isfinite(ofv) or not np.all(np.isfinite(natural)):
            status, record["error"] = FAILED, "the OFV or an estimate is not finite"
        record.update(status=status, ofv=ofv, iterations=int(fit.iterations), psi=np.asarray(fit.psi).tolist(),
                      estimates=dict(zip(fit.psi_names, natural.tolist())))  # fmt: skip
    except (ArithmeticError, ValueError, RuntimeError, FloatingPointError, np.linalg.LinAlgError) as err:
        record.update(status=FAILED, ofv=float("nan"), iterations=0, psi=None, estimates=None, error=f"{type(err).__name__}: {err}")
    record.update(worker=f"{socket.gethostname()}:{os.getpid()}", elapsed_s=time.perf_counter() - start)
    path = replicate_path(Path(out), replicate)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1))
    return record


def run_original(fit_file: str, digest: str, out: str) -> dict:
    """The original fit (with its covariance step), saved as ``out/original`` unless there
    already (one Dask task). Returns its ``psi`` and ``estimates`` table as a dict of lists."""
    from il2treg.cluster import prepare_worker
    from il2treg.fit.result import load_fit
    from il2treg.fit.result import save as save_fit
    from il2treg.fit.run import compute_fit

    prepare_worker()
    folder = Path(out) / ORIGINAL
    if folder.exists():
        result = load_fit(folder)
    else:
        result = compute_fit(_prepared(fit_file, digest)[0])
        save_fit(result, folder)
    return {"psi": np.asarray(result.psi).tolist(), "estimates": result.estimates.to_dict(orient="list"), "converged": bool(result.converged),
            "ofv": float(result.ofv)}  # fmt: skip


def read_replicates(out: Path) -> list[dict]:
    """The replicate records on disk, in replicate order.

    Raises:
        InputError: a record that is not valid JSON (naming the file; delete it to rerun it).
    """
    records = []
    for path in sorted((Path(out) / REPLICATES).glob("r*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: not a replicate record ({err}). Fix: delete the file; a rerun refits that replicate.") from err
    return sorted(records, key=lambda r: r["replicate"])


def replicate_table(records: list[dict], names: list[str]) -> pd.DataFrame:
    """``replicates.csv`` from the records: one row per replicate, estimates of ``names``."""
    rows = []
    for r in records:
        est = r.get("estimates") or {}
        rows.append({"replicate": r["replicate"], "status": r["status"], "ofv": r["ofv"], "iterations": r["iterations"],
                     **{n: est.get(n, float("nan")) for n in names}, "error": r.get("error") or ""})  # fmt: skip
    return pd.DataFrame(rows, columns=["replicate", "status", "ofv", "iterations", *names, "error"])


def interval_table(original: pd.DataFrame, replicates: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """``ci.csv``: per estimated parameter, the original estimate, its covariance-step SE and
    ``level`` CI (``ci_low``, ``ci_high``, from ``parameters.csv``), and over the converged
    replicates their number ``n``, median, SD (the bootstrap SE), bias (mean less the
    estimate) and percentile interval (``pct_low``, ``pct_high``: the (1 ∓ level)/2 quantiles,
    NumPy's default linear interpolation)."""
    ok = replicates[replicates["status"] == OK]
    tail = round(50 * (1 - level), 12)  # 2.5 for 0.95, where 100 * (1 - 0.95) / 2 is 2.5000000000000022
    rows = []
    for _, p in original[original["estimated"].astype(bool)].iterrows():
        values = ok[p["parameter"]].to_numpy(dtype=float) if p["parameter"] in ok else np.zeros(0)
        have = values.size > 0
        lo, hi = np.percentile(values, [tail, 100 - tail]) if have else (np.nan, np.nan)
        rows.append({"parameter": p["parameter"], "unit": p["unit"], "estimate": p["estimate"], "se": p["se"], "ci_low": p["ci_low"],
                     "ci_high": p["ci_high"], "n": int(values.size), "median": float(np.median(values)) if have else np.nan,
                     "boot_se": float(np.std(values, ddof=1)) if values.size > 1 else np.nan,
                     "bias": float(np.mean(values) - p["estimate"]) if have else np.nan, "pct_low": float(lo), "pct_high": float(hi)})  # fmt: skip
    return pd.DataFrame(rows)


def bootstrap(fit_file: str | Path, replicates: int, out: str | Path, *, seed: int = 0, strata: str | None = "auto", level: float = 0.95,
              client=None, scheduler: str | None = None, workers: int | None = None, on_replicate: Callable[[dict], None] | None = None,
              figure: bool = True) -> BootstrapResult:
    """Run (or resume) a non-parametric bootstrap of the fit file ``fit_file`` into ``out``
    (the module docstring lists the folder).

    Arguments:
        fit_file: a fit file (FOCE-I); its data must be visible to the workers at the same path.
        replicates: number of resamples (replicates ``1 .. replicates``).
        out: the folder; an existing one is resumed if it was made with the same fit file,
            seed and strata.
        seed: the resamples' seed.
        strata: covariate to resample within (``"auto"``: ``ARM`` if there is one; ``"none"``).
        level: the intervals' coverage.
        client: a ``dask.distributed.Client`` to run on; without one, :func:`il2treg.cluster.connect`
            starts one (after the checks) with ``scheduler`` and ``workers``.
        scheduler, workers: a scheduler's address, or the LocalCluster's number of workers.
        on_replicate: called with each replicate's record as it finishes (a progress bar); also
            once with ``{"workers": n}`` when the cluster is up, with ``{"replicate": 0, ...}``
            for the original fit, and once with ``{"skipped": k}`` for those already on disk.
        figure: also draw ``bootstrap.png``.

    Raises:
        SpecError: a bad fit file, or one with inter-occasion variability (before any computation).
        InputError: ``replicates`` < 1, ``out`` made by another bootstrap or not empty, a bad
            stratum; the original fit failed; replicates missing after the run (the workers do
            not share ``out``).
    """
    from il2treg.cluster import connect, n_workers, open_job_folder, run_jobs
    from il2treg.fit.spec import read_fit_spec

    if replicates < 1:
        raise InputError(f"--replicates must be at least 1, got {replicates}. Fix: ask for 200 or more for percentile intervals.")
    if not 0 < level < 1:
        raise InputError(f"the intervals' level must lie in (0, 1), got {level}. Fix: use e.g. 0.95.")
    fit_file = Path(fit_file).resolve()
    spec = read_fit_spec(fit_file)  # errors before any computation, in the caller
    if spec.iov:
        raise SpecError(f"{fit_file}: the bootstrap resamples patients; with inter-occasion variability it would need to keep occasions "
                        "together, which it does not yet. Fix: bootstrap the fit without IOV.")  # fmt: skip
    column = stratum_column(spec.dataset, strata)
    out = Path(out).resolve()  # the workers write there: an absolute path means the same folder to all
    digest = input_digest(spec)
    settings = {"fit_file": str(fit_file), "inputs_sha256": digest, "seed": int(seed), "strata": column, "replicates": int(replicates)}
    open_job_folder(out, SETTINGS, settings, ("inputs_sha256", "seed", "strata"), "a bootstrap")
    emit = on_replicate or (lambda record: None)

    def work(client):
        emit({"workers": n_workers(client)})
        original = {}
        lost_original = run_jobs(client, run_original, {0: (str(fit_file), digest, str(out))}, on_done=lambda k, r: original.update(r))
        if lost_original:
            err = lost_original[0]
            raise InputError(f"the original fit of {fit_file} failed ({type(err).__name__}: {err}); no refit was run. "
                             f"Fix: make `il2treg fit {fit_file}` succeed first.")  # fmt: skip
        emit({"replicate": 0, "status": OK if original["converged"] else NOT_CONVERGED, "ofv": original["ofv"]})
        done = {r["replicate"] for r in read_replicates(out)}
        emit({"skipped": len(done & set(range(1, replicates + 1)))})
        jobs = {r: (str(fit_file), digest, r, int(seed), column, original["psi"], str(out)) for r in range(1, replicates + 1) if r not in done}
        lost = run_jobs(client, run_replicate, jobs, on_done=lambda k, record: emit(record))
        return original, {k: f"{type(e).__name__}: {e}" for k, e in lost.items()}

    if client is None:
        with connect(scheduler, workers=workers) as own:
            original, lost = work(own)
    else:
        original, lost = work(client)
    estimates = pd.DataFrame(original["estimates"])
    names = estimates.loc[estimates["estimated"].astype(bool), "parameter"].tolist()
    records = [r for r in read_replicates(out) if 1 <= r["replicate"] <= replicates]
    missing = sorted(set(range(1, replicates + 1)) - {r["replicate"] for r in records} - set(lost))
    if missing:
        raise InputError(f"{len(missing)} replicate(s) finished but are not in {out / REPLICATES} (e.g. {missing[0]}). "
                         "Fix: give the workers a folder they share with this machine (--out on a shared file system).")  # fmt: skip
    table = replicate_table(records, names)
    ci = interval_table(estimates, table, level)
    atomic_write_text(out / TABLE, table.to_csv(index=False))
    atomic_write_text(out / CI, ci.to_csv(index=False))
    if figure:
        import matplotlib.pyplot as plt

        from il2treg.plots import plot_bootstrap

        fig = plot_bootstrap(table, ci, level=level)
        with tempfile.NamedTemporaryFile(dir=out, prefix=f".{FIGURE}.", suffix=".png", delete=False) as handle:
            tmp = Path(handle.name)
        try:
            fig.savefig(tmp, dpi=120)
            os.replace(tmp, out / FIGURE)
        finally:
            plt.close(fig)
            tmp.unlink(missing_ok=True)
    return BootstrapResult(out=out, replicates=table, ci=ci, lost=lost)
