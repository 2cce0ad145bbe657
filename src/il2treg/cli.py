"""The ``il2treg`` command: simulate regimens and trials, fit population models, check data files.

Every error the package raises on purpose is printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Low-dose IL-2 in SLE: simulate, fit, trial.")
data_app = typer.Typer(no_args_is_help=True, help="Biomarker data files.")
app.add_typer(data_app, name="data")
regimens_app = typer.Typer(no_args_is_help=True, help="Dosing regimens: the library, comparison, design.")
app.add_typer(regimens_app, name="regimens")
console = Console() if sys.stdout.isatty() else Console(width=140)

_SUMMARY_DAYS = (0.0, 7.0, 14.0, 28.0, 84.0)
_SUMMARY_OBS = ("treg_pct_cd4", "treg_per_uL", "nk56bright_per_uL", "tconv_per_uL", "cd25_treg_rel", "sledai")
_CHUNK = 1000
CHUNK = 5000  # simulate --format zarr: patients per chunk (il2treg.chunked.CHUNK, not imported here: the command starts without Dask)


def _regimen(spec: str, model=None):
    """A named regimen, or the one patient's doses in a CSV of NONMEM dose rows (its CMTs those
    of ``model``'s dosing inputs where given)."""
    from il2treg import regimen as rg

    if spec.lower().endswith(".csv") or Path(spec).is_file():
        return rg.read_regimen_csv(spec, doses=None if model is None else model.dosing_inputs)
    return rg.named(spec)


def _simulate_chunked(model, reg, times, params, show_progress: bool):
    """Simulate a large population in equal chunks (one compiled shape), with a progress bar."""
    import il2treg

    n = params.values.shape[0]
    size = min(_CHUNK, n)
    values, status = [], []
    with Progress(console=console, transient=True, disable=not show_progress) as progress:
        task = progress.add_task("simulating", total=n)
        for start in range(0, n, size):
            rows = np.arange(start, start + size).clip(max=n - 1)  # pad the last chunk
            chunk = il2treg.Parameters(params.values[rows], params.names)
            sim = il2treg.simulate(model, reg, times, chunk)
            keep = min(size, n - start)
            values.append(np.asarray(sim.values)[:keep])
            status.append(np.asarray(sim.status)[:keep])
            progress.advance(task, keep)
    return il2treg.Simulation(
        np.broadcast_to(times, (n, times.size)), np.concatenate(values), np.concatenate(status), sim.names, sim.units
    )


def _simulate_zarr(model: str, reg, times, n: int, seed: int, out: Path, chunk: int, scheduler: str, workers: int, force: bool) -> None:
    """``simulate --format zarr``: :func:`il2treg.chunked.simulate_to_zarr` with a progress bar, then its out-of-core summary."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from il2treg.chunked import simulate_to_zarr, summarise_zarr

    failed = [0]
    columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task("simulating", total=n)

        def on_chunk(size: int, bad: int) -> None:
            failed[0] += bad
            progress.advance(task, size)

        simulate_to_zarr(model, reg, times, n, out, seed=seed, chunk=chunk, scheduler=scheduler or None, workers=workers or None, force=force, on_chunk=on_chunk)
    summary = summarise_zarr(out, days=[d for d in _SUMMARY_DAYS if d <= times[-1]] or None)
    table = Table(title=f"{reg.name or 'regimen'}: median [5%-95%] over {n:,} patient(s), computed out of core")
    table.add_column("observable", no_wrap=True)
    day_values = sorted(summary["time_day"].unique())
    for d in day_values:
        table.add_column(f"day {d:g}", justify="right")
    for name, rows in summary.groupby("observable", sort=False):
        cells = {r.time_day: f"{r.q50:.3g} [{r.q5:.3g}-{r.q95:.3g}]" for r in rows.itertuples()}
        table.add_row(name, *(cells[d] for d in day_values))
    console.print(table)
    if failed[0]:
        console.print(f"[yellow]{failed[0]} patient(s) failed (NaN in the store; their status is the solver's code)[/]")
    console.print(f"wrote {out} (Zarr: xarray.open_zarr({str(out)!r}); one variable per observable \\[patient, time], status, parameters)", highlight=False)


def _summary_table(sim, title: str) -> Table:
    times = np.asarray(sim.times)[0]
    table = Table(title=title)
    table.add_column("observable", no_wrap=True)
    days = [d for d in _SUMMARY_DAYS if np.any(np.isclose(times, d))]
    if len(days) < 3:  # a grid shorter than the trial's: five times spread over it
        days = sorted({float(times[int(k)]) for k in np.linspace(0, times.size - 1, 5).round()})
    for d in days:
        table.add_column(f"day {d:g}", justify="right")
    ok = np.asarray(sim.ok)
    for name in _SUMMARY_OBS if set(_SUMMARY_OBS) <= set(sim.names) else sim.names:
        values = np.asarray(sim[name])[ok]
        cells = []
        for d in days:
            col = values[:, int(np.argmin(np.abs(times - d)))]
            lo, med, hi = np.percentile(col, [5, 50, 95])
            cells.append(f"{med:.3g}" if lo == hi else f"{med:.3g} [{lo:.3g}-{hi:.3g}]")
        table.add_row(name, *cells)
    return table


@app.command()
def simulate(
    regimen: str = typer.Option("lupil2", help="named regimen (e.g. lupil2, placebo) or a CSV of NONMEM dose rows (TIME days, AMT IU; optional ID, EVID, CMT, ADDL, II, RATE, SS)"),
    n: int = typer.Option(1000, min=1, help="number of virtual patients"),
    seed: int = typer.Option(0, help="random seed of the population"),
    out: Path = typer.Option(..., help="output folder (must not exist unless --force)"),
    dt: float = typer.Option(0.25, min=1e-3, help="output time step (days)"),
    days: float = typer.Option(84.0, min=0.0, help="simulate up to this day"),
    typical: bool = typer.Option(False, help="simulate the typical patient only (no variability, one ID)"),
    model: str = typer.Option("il2_treg_sledai", help="model name in models/ or path to a TOML file"),
    force: bool = typer.Option(False, help="replace an existing output folder"),
    format: str = typer.Option("csv", "--format", help="csv (simulation.csv and a figure, in memory) or zarr (a Zarr store written chunk by chunk on Dask workers: populations larger than memory)"),
    chunk: int = typer.Option(CHUNK, min=1, help="zarr: patients per chunk (one Dask task; memory per worker grows with it)"),
    scheduler: str = typer.Option("", help="zarr: address of a running Dask scheduler (tcp://host:port); default: a LocalCluster on this machine"),
    workers: int = typer.Option(0, min=0, help="zarr: LocalCluster worker processes (default 1, its chunks' solves shared over every core)"),
) -> None:
    """Simulate a virtual population under a regimen: simulation.csv, treg_dynamics.png, summary (or a Zarr store: --format zarr)."""
    import il2treg
    from il2treg._io import atomic_output_dir
    from il2treg.plots import plot_treg_dynamics

    if format not in ("csv", "zarr"):
        raise il2treg.errors.InputError(f"unknown --format {format!r}. Fix: use csv or zarr.")
    if out.exists() and not force:  # fail before computing
        raise il2treg.errors.InputError(f"output folder {str(out)!r} already exists. Fix: choose another --out or pass --force to replace it.")
    m = il2treg.load_model(model)
    reg = _regimen(regimen, m)
    times = np.round(np.arange(0.0, days + dt / 2, dt), 10)
    if format == "zarr":
        if typical:
            raise il2treg.errors.InputError("--typical simulates one patient; --format zarr is for large populations. Fix: leave one of them out.")
        _simulate_zarr(model, reg, times, n, seed, out, chunk, scheduler, workers, force)
        return
    if typical:
        params = il2treg.Parameters(m.typical().values[None, :], m.parameter_names)
    else:
        params = il2treg.sample_population(m, n, seed)
    sim = _simulate_chunked(m, reg, times, params, show_progress=params.values.shape[0] > _CHUNK)
    failed = int((~np.asarray(sim.ok)).sum())
    label = reg.name or regimen
    with atomic_output_dir(out, force=force) as tmp:
        sim.to_frame().to_csv(tmp / "simulation.csv", index=False)
        fig = plot_treg_dynamics(sim, doses=np.asarray(reg.times), title=f"{label}: {params.values.shape[0]} virtual patient(s)")
        fig.savefig(tmp / "treg_dynamics.png", dpi=120)
    console.print(_summary_table(sim, f"{label}: median [5%-95%] over {params.values.shape[0]} patient(s)"))
    if failed:
        first = int(np.argmax(~np.asarray(sim.ok)))
        console.print(f"[yellow]{failed} patient(s) failed (NaN in the output), e.g. ID {first + 1}: {sim.status_message(int(sim.status[first]))}[/]")
    console.print(f"wrote {out / 'simulation.csv'} and {out / 'treg_dynamics.png'}")


@app.command()
def trial(
    design: str = typer.Option("lupil2", help="design name in models/ (e.g. lupil2) or path to a design TOML"),
    replicates: int = typer.Option(500, min=1, help="number of replicate trials"),
    seed: int = typer.Option(0, min=0, help="random seed"),
    regimen: str = typer.Option(None, help="replace the IL-2 arm's regimen: a named regimen or a CSV of NONMEM dose rows"),
    model: str = typer.Option(None, help="replace the design's model: a name in models/ or a path to a TOML file with a sledai observable"),
    uncertain: str = typer.Option("", help="comma-separated parameters drawn from their priors once per replicate (e.g. imax,r50,kd: the SLEDAI link); the power becomes an assurance"),
    json_out: bool = typer.Option(False, "--json", help="print exactly one JSON object and nothing else"),
) -> None:
    """Simulate replicate virtual trials: SRI-4 by arm in ITT and per-protocol sets, difference, power."""
    import json

    import il2treg
    from il2treg.trial import format_summary, load_design, simulate_trial

    d = load_design(design)
    m = il2treg.load_model(model or d.model)
    reg = _regimen(regimen, m) if regimen else None
    names = [u.strip() for u in uncertain.split(",") if u.strip()] or None
    result = simulate_trial(d, replicates, seed, regimen=reg, model=m, uncertain=names)
    summary = result.summary()
    if json_out:
        print(json.dumps(summary))
    else:
        console.print(format_summary(summary), highlight=False)


def _describe(info: dict) -> str:
    """One line of fit progress from a :func:`il2treg.fit.run.run_fit` progress event."""
    stage = info["stage"]
    if stage == "estimation" and "gamma" in info:  # SAEM: its objective is the complete-data one, not the OFV
        return f"SAEM iteration {info['iteration']}: complete-data objective {info['ofv']:.2f}, step {info['gamma']:.3g}"
    if stage == "estimation":
        return f"iteration {info['iteration']}: OFV {info['ofv']:.4f}, max |gradient| {info['grad_max']:.3g}"
    return {
        "start": "compiling and solving the initial EBEs (the first iteration includes compilation)",
        "covariance": "covariance step (R: differences of the exact gradient; S for the sandwich: the patients' gradients)",
        "predictions": "predictions, individual parameters and the SLEDAI link",
        "figures": "diagnostics and figures (simulated replicates for the VPC and NPDE)",
        "writing": "writing the results folder",
        "nuts": "NUTS: compiling, warm-up and sampling (then pointwise log-likelihood and predictive draws)",
    }.get(stage, stage)


@app.command()
def fit(
    spec: Path = typer.Argument(..., help="fit file, e.g. fits/lupil2_virtual/fit.toml"),
    out: Path = typer.Option(..., help="results folder (must not exist unless --force)"),
    force: bool = typer.Option(False, help="replace an existing results folder"),
    method: str = typer.Option("foce", help="foce (FOCE-I / Laplace), saem (stochastic approximation EM; settings in \\[saem]) or nuts (Laplace, then NUTS from it; settings in \\[nuts])"),
    figures: bool = typer.Option(True, help="also write diagnostics.csv and figures/ (individual fits, GOF, VPC, time course)"),
    n_sim: int = typer.Option(500, help="simulated replicates for the VPC and NPDE of the figures"),
) -> None:
    """Population fit as a fit file says: report, tables, predictions and posterior in --out."""
    import time

    from rich.markdown import Markdown
    from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

    from il2treg.errors import InputError
    from il2treg.fit.estimators import ESTIMATORS, estimator_named
    from il2treg.fit.result import FILES, SUMMARIES
    from il2treg.fit.run import run_fit
    from il2treg.fit.spec import read_fit_spec

    if method not in ESTIMATORS:
        raise InputError(f"unknown --method {method!r}. Fix: use one of {', '.join(ESTIMATORS)}.")
    estimator = estimator_named(method)  # the fit file's [optimiser], [saem] or [nuts] settings
    fit_spec = read_fit_spec(spec)  # validates everything before any computation
    if out.exists() and not force:
        raise InputError(f"output folder {str(out)!r} already exists. Fix: choose another --out or pass --force to replace it.")
    console.print(f"fitting {fit_spec.name}: model {fit_spec.model.name}, data {fit_spec.data_source}, "
                  f"{fit_spec.dataset.n_subjects} patients" + (f" and {len(fit_spec.summaries.data.summaries)} published summaries" if fit_spec.summaries else "")
                  + f"; estimating {', '.join(fit_spec.fixed) or 'no fixed effect'}")  # fmt: skip
    start = time.perf_counter()
    if console.is_terminal:
        columns = (SpinnerColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task(_describe({"stage": "start"}), total=None)
            result = run_fit(fit_spec, out, force=force, estimator=estimator, figures=figures, n_sim=n_sim,
                             progress=lambda info: progress.update(task, description=_describe(info)))
    else:
        show = lambda info: console.print(f"[{time.perf_counter() - start:7.1f} s] {_describe(info)}", highlight=False)
        result = run_fit(fit_spec, out, force=force, estimator=estimator, figures=figures, n_sim=n_sim, progress=show)
    console.print(Markdown(result.summary()))
    written = [*FILES, *([SUMMARIES] if result.summaries is not None else []), *(["diagnostics.csv", "figures/"] if figures else [])]
    console.print(f"wrote {out}/ ({', '.join(written)}); read it with il2treg.fit.load_fit({str(out)!r})", highlight=False)


@app.command()
def bootstrap(
    spec: Path = typer.Argument(..., help="fit file (FOCE-I), e.g. fits/pheno/fit.toml"),
    replicates: int = typer.Option(..., min=1, help="number of resampled refits"),
    out: Path = typer.Option(..., help="bootstrap folder; an existing one of the same fit file, seed and strata is resumed"),
    seed: int = typer.Option(0, help="seed of the resamples (replicate r draws from default_rng([seed, r]))"),
    strata: str = typer.Option("auto", help="covariate to resample within: auto (ARM if the data have it), none, or a column"),
    scheduler: str = typer.Option("", help="address of a running Dask scheduler (tcp://host:port); default: a LocalCluster on this machine"),
    workers: int = typer.Option(0, min=0, help="LocalCluster workers (one thread each; default: one per core)"),
    level: float = typer.Option(0.95, min=0.5, max=0.999, help="coverage of the intervals"),
) -> None:
    """Non-parametric bootstrap: refit resamples of the patients as Dask tasks; percentile and covariance-step CIs."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from il2treg.fit.bootstrap import FAILED, NOT_CONVERGED, OK
    from il2treg.fit.bootstrap import bootstrap as run_bootstrap

    tally = {OK: 0, NOT_CONVERGED: 0, FAILED: 0}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=console.is_terminal) as progress:
        task = progress.add_task("original fit", total=replicates)

        def on_replicate(record: dict) -> None:
            if "workers" in record:
                console.print(f"bootstrap of {spec}: {replicates} replicates on {record['workers']} Dask worker(s)"
                              + (f" at {scheduler}" if scheduler else " (LocalCluster)"), highlight=False)  # fmt: skip
                return
            if "skipped" in record:
                progress.update(task, advance=record["skipped"], description="refits")
                if record["skipped"]:
                    console.print(f"resuming {out}: {record['skipped']} replicate(s) already done")
                return
            if record["replicate"] == 0:
                console.print(f"original fit: OFV {record['ofv']:.4f} ({record['status']})", highlight=False)
                return
            tally[record["status"]] += 1
            progress.update(task, advance=1, description=f"refits ({tally[FAILED]} failed, {tally[NOT_CONVERGED]} not converged)")

        result = run_bootstrap(spec, replicates, out, seed=seed, strata=strata, level=level, scheduler=scheduler or None, workers=workers or None,
                               on_replicate=on_replicate)  # fmt: skip
    table = Table(title=f"{100 * level:g}% intervals: covariance step vs bootstrap percentile ({result.counts()[OK]} converged replicates)")
    for col in ("parameter", "estimate", "covariance CI", "bootstrap median", "percentile CI"):
        table.add_column(col, justify="left" if col == "parameter" else "right")
    for _, r in result.ci.iterrows():
        table.add_row(r["parameter"], f"{r['estimate']:.4g}", f"{r['ci_low']:.4g} - {r['ci_high']:.4g}", f"{r['median']:.4g}",
                      f"{r['pct_low']:.4g} - {r['pct_high']:.4g}")  # fmt: skip
    console.print(table)
    counts = result.counts()
    console.print(f"replicates: {counts[OK]} converged, {counts[NOT_CONVERGED]} not converged, {counts[FAILED]} failed"
                  + (f", {counts['lost']} lost (rerun the command to run them again)" if counts["lost"] else ""), highlight=False)  # fmt: skip
    console.print(f"wrote {out}/ (replicates.csv, ci.csv, bootstrap.png, original/, replicates/)", highlight=False)
    if counts["lost"]:
        raise typer.Exit(1)


@app.command()
def sse(
    design: str = typer.Argument(..., help="trial design: a name (lupil2) or a design TOML file"),
    replicates: int = typer.Option(..., min=1, help="number of simulated trials, each fitted with both fit files"),
    fit: Path = typer.Option(..., "--fit", help="the full fit file, with the drug effect (e.g. fits/lupil2_sse/fit.toml)"),
    null: Path = typer.Option(..., "--null", help="the null fit file: the full one with the drug effect fixed (e.g. fits/lupil2_sse/null.toml)"),
    out: Path = typer.Option(..., help="SSE folder; an existing one of the same settings is resumed"),
    seed: int = typer.Option(0, help="seed of the simulated trials"),
    reference_size: int = typer.Option(10, min=1, help="the reference trial for bias and RMSE has this many times the design's patients"),
    scheduler: str = typer.Option("", help="address of a running Dask scheduler (tcp://host:port); default: a LocalCluster on this machine"),
    workers: int = typer.Option(0, min=0, help="LocalCluster workers (one thread each; default: one per core)"),
) -> None:
    """Stochastic simulation and estimation: power of the likelihood-ratio test on the drug effect against Fisher's test, bias and RMSE."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from il2treg.sse import sse as run_sse

    columns = (TextColumn("fits"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=console.is_terminal) as progress:
        task = progress.add_task("fits", total=replicates)

        def on_replicate(record: dict) -> None:
            if "workers" in record:
                console.print(f"SSE of {design}: {replicates} trials on {record['workers']} Dask worker(s)", highlight=False)
            elif "skipped" in record:
                progress.update(task, advance=record["skipped"])
            else:
                progress.advance(task)

        result = run_sse(design, replicates, fit, null, out, seed=seed, reference_size=reference_size, scheduler=scheduler or None,
                         workers=workers or None, on_replicate=on_replicate)  # fmt: skip
    table = Table(title=f"SSE of {design}: {replicates} trials")
    for col in ("test", "power", "MC SE", "trials judged"):
        table.add_column(col, justify="left" if col == "test" else "right")
    names = {"lrt": "likelihood ratio on the drug effect", "sri4": "SRI-4 responders (ITT), the design's test"}
    for r in result.summary[result.summary["kind"] == "power"].itertuples():
        table.add_row(names[r.name], f"{r.value:.3f}", f"{r.mc_se:.3f}", str(r.n))
    console.print(table)
    est = Table(title="estimates of the full fit (converged trials) against the reference trial's")
    for col in ("parameter", "reference", "mean", "bias", "bias %", "RMSE"):
        est.add_column(col, justify="left" if col == "parameter" else "right")
    for r in result.summary[result.summary["kind"] == "estimate"].itertuples():
        est.add_row(r.name, f"{r.reference:.4g}", f"{r.value:.4g}", f"{r.bias:.3g}", f"{r.relative_bias_percent:.1f}", f"{r.rmse:.3g}")
    console.print(est)
    counts = result.replicates["status"].value_counts().to_dict()
    console.print(f"trials: {counts.get('ok', 0)} fitted, {counts.get('not_converged', 0)} not converged, {counts.get('failed', 0)} failed"
                  + (f", {len(result.lost)} lost (rerun the command to run them again)" if result.lost else "")
                  + f"; wrote {out}/ (summary.csv, replicates.csv, data/, replicates/)", highlight=False)  # fmt: skip
    if result.lost:
        raise typer.Exit(1)


@app.command()
def profile(
    spec: Path = typer.Argument(..., help="fit file, e.g. fits/lupil2_identifiability/fit.toml"),
    parameter: list[str] = typer.Option(..., help="population parameter to profile (repeat the option for more)"),
    out: Path = typer.Option(..., help="folder for profiles.csv and profiles.png (must not exist unless --force)"),
    points: int = typer.Option(6, help="grid points on each side of the estimate"),
    force: bool = typer.Option(False, help="replace an existing folder"),
) -> None:
    """Profile likelihood of chosen parameters (the others re-optimised): intervals and which are not identifiable."""
    import pandas as pd

    from il2treg._io import atomic_output_dir
    from il2treg.errors import InputError
    from il2treg.fit.assemble import initial_psi, make_objective
    from il2treg.fit.estimate import fit_population
    from il2treg.fit.profile import profile as profile_of
    from il2treg.fit.spec import read_fit_spec
    from il2treg.plots import plot_profiles

    fit_spec = read_fit_spec(spec)
    if out.exists() and not force:
        raise InputError(f"output folder {str(out)!r} already exists. Fix: choose another --out or pass --force to replace it.")
    problem = fit_spec.problem()
    unknown = [p for p in parameter if p not in problem.psi_names]
    if unknown:
        raise InputError(f"cannot profile {unknown[0]!r}: not a population parameter of this fit. Fix: use one of {', '.join(problem.psi_names)}.")
    objective = make_objective(fit_spec, problem)
    console.print(f"fitting {fit_spec.name}, then profiling {', '.join(parameter)}")
    fit = fit_population(objective, initial_psi(fit_spec, problem, fit_spec.residual_model()))
    profiles = [profile_of(objective, fit, p, points=points) for p in parameter]
    rows = [{"parameter": p.name, "value": v, "delta_ofv": d, "converged": bool(c), "estimate": p.estimate, "se": p.se,
             "ci_low": p.ci_low, "ci_high": p.ci_high, "identifiable": p.identifiable}
            for p in profiles for v, d, c in zip(p.values, p.delta, p.converged)]  # fmt: skip
    with atomic_output_dir(out, force=force) as tmp:
        pd.DataFrame(rows).to_csv(tmp / "profiles.csv", index=False)
        plot_profiles(profiles, title=f"{fit_spec.name}: profile likelihood").savefig(tmp / "profiles.png", dpi=120)
    for p in profiles:
        console.print(p.verdict(), highlight=False)
    console.print(f"wrote {out}/ (profiles.csv, profiles.png)", highlight=False)


@app.command()
def diagnose(
    results: Path = typer.Argument(..., help="results folder of `il2treg fit`, e.g. fits/lupil2_virtual/results"),
    out: Path = typer.Option(..., help="folder for diagnostics.csv, summary.csv and figures/ (must not exist unless --force)"),
    n_sim: int = typer.Option(1000, help="simulated replicates for NPDE and the VPC"),
    seed: int = typer.Option(0, help="seed of the simulations"),
    force: bool = typer.Option(False, help="replace an existing folder"),
    vpc_by: str | None = typer.Option(None, help="also draw the VPC stratified by this covariate of the data (e.g. ARM): figures/vpc_by_<COLUMN>_<dvid>.png"),
) -> None:
    """Diagnostics of a saved fit: CWRES, NPDE, shrinkage, the checks that fail, and the standard figures."""
    from il2treg._io import atomic_output_dir
    from il2treg.diagnostics import diagnose as diagnose_fit
    from il2treg.errors import InputError
    from il2treg.fit.figures import write_figures
    from il2treg.fit.result import load_fit
    from il2treg.fit.spec import stored_spec

    if out.exists() and not force:
        raise InputError(f"output folder {str(out)!r} already exists. Fix: choose another --out or pass --force to replace it.")
    fit = load_fit(results)
    spec = stored_spec(fit)
    covariates = spec.dataset.covariates
    if vpc_by is not None and vpc_by not in covariates:  # before the simulations, not after
        raise InputError(f"--vpc-by {vpc_by}: not a covariate of the fit's data; its covariates are: {', '.join(sorted(covariates)) or '(none)'}. Fix: choose one of them, or leave --vpc-by out.")
    diag = diagnose_fit(fit, spec=spec, n_sim=n_sim, seed=seed)
    with atomic_output_dir(out, force=force) as tmp:
        write_figures(diag, tmp, vpc_by=vpc_by)
        diag.summary.to_csv(tmp / "summary.csv")
    console.print(diag.summary[["n", "cwres_mean", "cwres_sd", "npde_mean", "npde_sd", "npde_global_p"]].round(3).to_string(), highlight=False)
    console.print("eta-shrinkage %: " + ", ".join(f"{k} {v:.1f}" for k, v in diag.shrinkage.items()), highlight=False)
    for line in diag.flags() or ["no check fails (NPDE tests, CWRES time trend; il2treg.diagnostics)"]:
        console.print(line, highlight=False)
    console.print(f"wrote {out}/ (diagnostics.csv, summary.csv, figures/)", highlight=False)


@data_app.command("check")
def data_check(
    file: Path = typer.Argument(..., help="CSV in il2treg's data format"),
    model: str = typer.Option("il2_treg_sledai", help="model name in models/ or path to a TOML file: its observables are the DVIDs"),
    time_unit: str = typer.Option("day", help="the unit of the file's TIME: day or h"),
    drop: list[str] = typer.Option([], help="a column to leave out (NONMEM's $INPUT NAME=DROP); repeat for more"),
) -> None:
    """Validate a biomarker data file for a model and print a one-screen summary."""
    import il2treg
    from il2treg.data import check_file

    loaded = il2treg.load_model(model)
    summary = check_file(file, observables=loaded.observable_names, time_unit=time_unit, drop=tuple(drop), doses=loaded.dosing_inputs)
    console.print(summary, highlight=False)


@regimens_app.command("list")
def regimens_list() -> None:
    """The named regimens of the library, with their doses and sources."""
    import inspect

    from il2treg import regimen as rg

    table = Table(title="named regimens (il2treg.regimen.named)")
    for col in ("name", "injections", "total MIU", "last dose day", "description and source (see the builder)"):
        table.add_column(col)
    for name, factory in rg.NAMED_REGIMENS.items():
        r = factory()
        doc = " ".join((inspect.getdoc(factory) or "").split())
        table.add_row(name, str(r.n_doses), f"{float(r.total_iu) / 1e6:.3g}", f"{float(r.times[-1]):g}" if r.n_doses else "-", doc.split(". ")[0])
    console.print(table)


def _regimens(spec: str, model=None) -> dict:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    return {Path(n).stem if n.lower().endswith(".csv") else n: _regimen(n, model) for n in names}


@regimens_app.command("compare")
def regimens_compare(
    regimens: str = typer.Option(..., help="comma-separated names (il2treg regimens list) or regimen CSV files"),
    out: Path = typer.Option(..., help="folder for table.csv, per_patient.csv, comparison.png, and with --draws population.csv, difference.csv (must not exist unless --force)"),
    n: int = typer.Option(1000, help="virtual patients (each with its own draw of the population parameters)"),
    seed: int = typer.Option(0, help="seed of the virtual population"),
    fit: Path | None = typer.Option(None, help="results folder of a fit: draw the population from its posterior (default: the model's priors)"),
    model: str = typer.Option("il2_treg_sledai", help="model name in models/ or path to a TOML file (ignored with --fit: the fit's model)"),
    weeks: str = typer.Option("12,24", help="assessment weeks, comma-separated (SLEDAI and SRI-4; for other models the weeks each observable is read at)"),
    draws: int | None = typer.Option(None, help="population draws, each shared by n/draws patients: adds population.csv and difference.csv (mean effects with intervals from parameter uncertainty)"),
    uncertain: str = typer.Option("", help="comma-separated parameters whose typical value is drawn from its prior in the model file (with --fit: ones the fit held, e.g. r50,kd)"),
    reference: str | None = typer.Option(None, help="with --draws: the regimen the others are compared with in difference.csv (default placebo if compared, else the first)"),
    force: bool = typer.Option(False, help="replace an existing folder"),
) -> None:
    """Compare regimens over one virtual population with parameter uncertainty."""
    import matplotlib.pyplot as plt

    from il2treg import plots
    from il2treg._io import atomic_output_dir
    from il2treg.design import compare
    from il2treg.errors import InputError

    if out.exists() and not force:
        raise InputError(f"output folder {str(out)!r} already exists. Fix: choose another --out or pass --force to replace it.")
    result = None
    if fit is not None:
        from il2treg.fit.result import load_fit

        result = load_fit(fit)
    import il2treg

    try:
        assessment = tuple(float(w) for w in weeks.split(","))
    except ValueError:
        raise InputError(f"--weeks {weeks!r}: not comma-separated numbers. Fix: e.g. --weeks 12,24.") from None
    m = il2treg.load_model(model)
    names = [u.strip() for u in uncertain.split(",") if u.strip()] or None
    regs = _regimens(regimens, m)
    if reference is not None and draws is None:
        raise InputError("--reference applies to difference.csv, which only --draws writes. Fix: add --draws K, or drop --reference.")
    if reference is not None and len(regs) < 2:
        raise InputError("--reference needs another regimen to compare with it. Fix: name two or more in --regimens.")
    if reference is not None and reference not in regs:
        raise InputError(f"--reference {reference!r} is not among --regimens. Fix: use one of {', '.join(regs)}.")
    comparison = compare(regs, model=m, n=n, seed=seed, fit=result, weeks=assessment, draws=draws, uncertain=names)
    written = ["table.csv", "per_patient.csv", "comparison.png"]
    with atomic_output_dir(out, force=force) as tmp:
        comparison.table.to_csv(tmp / "table.csv", index=False)
        comparison.per_patient.to_csv(tmp / "per_patient.csv", index=False)
        if draws is not None:
            ref = reference or ("placebo" if "placebo" in regs else next(iter(regs)))
            comparison.population().to_csv(tmp / "population.csv", index=False)
            if len(regs) > 1:
                comparison.difference(ref).to_csv(tmp / "difference.csv", index=False)
            written[2:2] = ["population.csv", *(["difference.csv"] if len(regs) > 1 else [])]
        fig = plots.plot_regimen_comparison(comparison)
        fig.savefig(tmp / "comparison.png", dpi=120)
        plt.close(fig)
    console.print(comparison.wide().T.to_string(), highlight=False)
    failed = int((comparison.per_patient["status"] != 0).sum())
    console.print(f"{n} virtual patients x {len(comparison.regimens)} regimens in {comparison.run_s:.1f} s; failed solves: {failed}", highlight=False)
    console.print(f"wrote {out}/ ({', '.join(written)})", highlight=False)


@regimens_app.command("optimise")
def regimens_optimise(
    out: Path = typer.Option(..., help="folder for regimen.csv, checks.csv, design.json, design.png (must not exist unless --force)"),
    start: str = typer.Option("lupil2", help="template regimen: a name or a regimen CSV (its number of injections; its times unless --optimise-times)"),
    model_name: str = typer.Option("il2_treg_sledai", "--model", help="packaged model name or path to a model file"),
    objective: str = typer.Option("treg_mean_fold", help="treg_mean_fold, sledai_fall_w12, p_sri4_w12, or KIND:OBSERVABLE with KIND mean, mean_fold or fall (maximised)"),
    peak_max: list[str] = typer.Option([], help="OBSERVABLE=LIMIT: its largest value over the horizon, in its unit (repeat for more)"),
    change_max: list[str] = typer.Option([], help="OBSERVABLE=PERCENT: its largest change from day 0 over the horizon (repeat for more)"),
    horizon: float = typer.Option(84.0, help="the objective and the limits are read over days 0 to this \\[day]"),
    tconv_max: float | None = typer.Option(None, help="IL-2 model: largest Tconv change over the horizon \\[%]"),
    nk_max: float | None = typer.Option(None, help="IL-2 model: largest CD56bright NK change over the horizon \\[%]"),
    cmax_max: float | None = typer.Option(None, help="IL-2 model: largest serum IL-2 peak \\[pM]"),
    quantile: float = typer.Option(0.5, help="population quantile at which the limits on observables hold"),
    dose_max: float | None = typer.Option(None, help="largest dose \\[IU] (another model: in its dose unit)"),
    total_dose_max: float | None = typer.Option(None, help="largest total dose \\[IU] (another model: in its dose unit)"),
    total_dose_min: float | None = typer.Option(None, help="smallest total dose \\[IU] (another model: in its dose unit)"),
    max_injections: int | None = typer.Option(None, help="most injections (the template's number must not exceed it)"),
    optimise_times: bool = typer.Option(False, help="also move the injections (first stays at day 0)"),
    min_interval: float = typer.Option(1.0, help="smallest time between injections with --optimise-times \\[day]"),
    n: int = typer.Option(1, help="design population: 1 = the typical patient, else virtual patients from the model's priors"),
    starts: int = typer.Option(5, help="starts (the template plus random ones)"),
    steps: int = typer.Option(150, help="gradient steps"),
    seed: int = typer.Option(0, help="seed of the random starts and of the design population"),
    force: bool = typer.Option(False, help="replace an existing folder"),
) -> None:
    """Design a regimen by gradient ascent through the model, under stated constraints."""
    import json

    import matplotlib.pyplot as plt

    import il2treg
    from il2treg import plots
    from il2treg._io import atomic_output_dir
    from il2treg.design import Constraints, is_il2, optimise, virtual_population
    from il2treg.errors import InputError
    from il2treg.regimen import to_nonmem

    if out.exists() and not force:
        raise InputError(f"output folder {str(out)!r} already exists. Fix: choose another --out or pass --force to replace it.")
    model = il2treg.load_model(model_name)
    params = model.typical() if n == 1 else virtual_population(model, n, seed=seed)[1]
    constraints = Constraints(tconv_change_max_pct=tconv_max, nk_change_max_pct=nk_max, cmax_max_pM=cmax_max, quantile=quantile,
                              dose_max_iu=dose_max, total_dose_max_iu=total_dose_max, total_dose_min_iu=total_dose_min, min_interval_days=min_interval,
                              max_injections=max_injections, peak_max=_limits(peak_max, "--peak-max"), change_max_pct=_limits(change_max, "--change-max"))  # fmt: skip
    design = optimise(_regimen(start, model), objective=objective, constraints=constraints, model=model, params=params,
                      optimise_times=optimise_times, n_starts=starts, steps=steps, seed=seed, horizon_days=horizon)  # fmt: skip
    days = np.arange(0.0, horizon + 1e-9, min(0.25, horizon / 200))
    sims = {"start": il2treg.simulate(model, design.start, days, params), "designed": il2treg.simulate(model, design.regimen, days, params)}
    with atomic_output_dir(out, force=force) as tmp:
        to_nonmem(design.regimen).to_csv(tmp / "regimen.csv", index=False)
        design.checks.to_csv(tmp / "checks.csv", index=False)
        summary = {"objective": design.objective, "value": design.value, "start_value": design.start_value, "start_values": design.start_values.tolist(),
                   "spread": design.spread, "scaled_back": design.scaled_back, "run_s": design.run_s, "horizon_days": design.horizon_days,
                   "times_day": np.asarray(design.regimen.times).tolist(), "amounts_iu": np.asarray(design.regimen.amounts).tolist()}  # fmt: skip
        (tmp / "design.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        panels = {} if is_il2(model) else {"observables": model.observable_names[:6]}  # the IL-2 model: IL-2, Treg, Tconv, NK
        fig = plots.plot_regimens(sims, title=f"{design.objective}: {design.start_value:.4g} -> {design.value:.4g}", **panels)
        fig.savefig(tmp / "design.png", dpi=120)
        plt.close(fig)
    console.print(design.checks.to_string(index=False), highlight=False)
    console.print(f"{design.objective}: start {design.start_value:.5g} -> designed {design.value:.5g}; "
                  f"{len(design.start_values)} starts within {100 * design.spread:.3g}% of each other; {design.run_s:.1f} s", highlight=False)
    console.print(f"wrote {out}/ (regimen.csv, checks.csv, design.json, design.png)", highlight=False)


def _limits(items: list[str], option: str) -> dict[str, float]:
    """``["OBS=VALUE", ...]`` of a repeated option as ``{OBS: VALUE}``."""
    from il2treg.errors import InputError

    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            eq = ""
        if not eq or not name.strip():
            raise InputError(f"{option} {item!r}: not OBSERVABLE=NUMBER. Fix: e.g. {option} il2_pM=25.")
    return out


def main() -> None:
    """Entry point: run the app; package errors become one line on stderr and exit status 2."""
    import matplotlib

    from il2treg.errors import Il2tregError

    matplotlib.use("Agg")  # the CLI only writes image files
    try:
        app(standalone_mode=False)
    except Il2tregError as err:
        print(f"il2treg: error: {err}", file=sys.stderr)
        sys.exit(2)
    except (typer.Exit, SystemExit) as err:
        sys.exit(getattr(err, "exit_code", getattr(err, "code", 0)))
    except Exception as err:
        if hasattr(err, "format_message"):  # usage errors of typer's (vendored) click
            print(f"il2treg: error: {err.format_message()}", file=sys.stderr)
            sys.exit(2)
        if type(err).__name__ == "Abort":
            sys.exit(130)
        raise


if __name__ == "__main__":
    main()
