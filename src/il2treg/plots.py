"""Matplotlib figures. Each function returns a Figure; none calls ``plt.show``.

Simulation: :func:`plot_treg_dynamics`, :func:`plot_regimens`. Fit diagnostics (from
:func:`il2treg.diagnostics.diagnose`): :func:`plot_individual_fits`, :func:`plot_population_course`,
:func:`plot_gof`, :func:`plot_vpc`, :func:`plot_saem_trace`. Uncertainty: :func:`plot_profiles`. Disease link:
:func:`plot_treg_sledai_link`. Axes carry units (the model's, ``il2treg.OBSERVABLES``).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from il2treg.errors import InputError
from il2treg.observables import OBSERVABLES

_PANELS = ("treg_pct_cd4", "il2_pM", "cd25_treg_rel", "sledai")
_DAY = "time since first dose [day]"


def _label(name: str, unit: str | None = None) -> str:
    """``name [unit]``: the unit given, else the IL-2 model's (``il2treg.OBSERVABLES``), else none."""
    unit = (OBSERVABLES[name][0] if name in OBSERVABLES else "") if unit is None else unit
    return f"{name} [{unit}]" if unit else name


def _log_scale(name: str) -> bool:
    return name in ("il2_pM", "treg_per_uL", "tconv_per_uL", "nk56bright_per_uL")


def plot_treg_dynamics(sim, *, doses=None, title: str = "") -> Figure:
    """Median and 90% band over patients of each observable against time.

    For the IL-2 model: Treg % CD4, IL-2, CD25 on Tregs and SLEDAI; for any other model, every
    observable it has, one panel each.

    Arguments:
        sim: a batched :class:`il2treg.Simulation` (patients x times).
        doses: optional dose times (days), marked on every panel.
        title: figure title.
    """
    times = np.asarray(sim.times)
    times = times[0] if times.ndim == 2 else times
    panels = _PANELS if set(_PANELS) <= set(sim.names) else tuple(sim.names)
    columns = 1 if len(panels) == 1 else 2
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.5 * rows), sharex=True, squeeze=False, constrained_layout=True)
    unit_of = dict(zip(sim.names, sim.units))
    for ax, name in zip(axes.flat, panels):
        values = np.atleast_2d(np.asarray(sim[name]))
        values = values[np.all(np.isfinite(values), axis=1)]
        lo, med, hi = np.percentile(values, [5, 50, 95], axis=0)
        ax.fill_between(times, lo, hi, color="C0", alpha=0.25, lw=0, label="90% of patients")
        ax.plot(times, med, color="C0", lw=1.6, label="median")
        description = OBSERVABLES.get(name, (None, name))[1]
        ax.set_ylabel(f"{name} [{unit_of[name]}]")
        ax.set_title(description.split(",")[0].split("(")[0].strip(), fontsize=10)
        if name == "il2_pM":
            ax.set_yscale("log")
        if doses is not None:
            for d in np.asarray(doses):
                ax.axvline(float(d), color="0.6", lw=0.5, alpha=0.6, zorder=0)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("time since first dose [day]")
    axes.flat[0].legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_profiles(profiles, *, title: str = "") -> Figure:
    """One panel per :class:`il2treg.fit.profile.Profile`: ΔOFV against the parameter (estimation
    scale), the 95% threshold (χ²₁ = 3.84), the Hessian's quadratic approximation and both intervals.
    """
    from il2treg.fit.profile import CHI2_95

    profiles = list(profiles)
    fig, axes = plt.subplots(1, len(profiles), figsize=(4.2 * len(profiles), 3.6), squeeze=False, constrained_layout=True)
    for ax, prof in zip(axes[0], profiles):
        ax.plot(prof.values, prof.delta, "o-", color="C0", ms=4, label="profile")
        if np.isfinite(prof.se) and prof.se > 0:
            x = np.linspace(prof.values.min(), prof.values.max(), 200)
            ax.plot(x, ((x - prof.estimate) / prof.se) ** 2, "--", color="C1", lw=1, label="Hessian (quadratic)")
        ax.axhline(CHI2_95, color="0.3", lw=0.8, ls=":", label="95% threshold (3.84)")
        for v in (prof.ci_low, prof.ci_high):
            if np.isfinite(v):
                ax.axvline(v, color="C0", lw=0.8, alpha=0.7)
        ax.set_ylim(bottom=min(-0.2, float(np.nanmin(prof.delta))), top=max(2 * CHI2_95, 1.1 * float(np.nanmax(prof.delta))))
        ax.set_xlabel(f"{prof.name} (estimation scale)")
        ax.set_ylabel("ΔOFV")
        ax.set_title(prof.name + ("" if prof.identifiable else ": not identifiable"), fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper center")
    if title:
        fig.suptitle(title)
    return fig


def plot_saem_trace(fit, *, phases: tuple[int, int] | None = None, ncols: int = 4, title: str = "") -> Figure:
    """One panel per population parameter: its SAEM estimate against the iteration (estimation
    scale: log for log-transformed parameters, omegas and sigmas, the artanh of the partial
    correlation for a ``corr_*`` of an omega block), with the ends of the burn-in
    and of the exploration phase marked. The exploration phase should end on a plateau; if a
    parameter still drifts there, rerun with a longer ``[saem] explore``.

    Arguments:
        fit: a :class:`~il2treg.fit.FitResult` of ``--method saem`` (phases from its settings) or
            a :class:`~il2treg.fit.estimate.PopulationFit` from :func:`il2treg.fit.saem.fit_saem`.
        phases: (burn_in, explore) iterations, for a PopulationFit.

    Raises:
        InputError: the fit has no SAEM trace.
    """
    trace = getattr(fit, "trace", None)
    if trace is None:
        raise InputError("this fit has no SAEM trace (it was not fitted with --method saem). Fix: fit it with method saem.")
    trace = np.asarray(trace)
    settings = getattr(fit, "settings", None) or {}
    if phases is None and "saem_burn_in" in settings:
        phases = (int(settings["saem_burn_in"]), int(settings["saem_explore"]))
    names = list(fit.psi_names)
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.3 * nrows), squeeze=False, constrained_layout=True)
    it = np.arange(trace.shape[0])
    for k, ax in enumerate(axes.flat):
        if k >= len(names):
            ax.set_visible(False)
            continue
        ax.plot(it, trace[:, k], color="C0", lw=0.9)
        if phases is not None:
            for x in (phases[0], phases[0] + phases[1]):
                ax.axvline(x, color="0.4", lw=0.8, ls=":")
        ax.set_title(names[k], fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("SAEM iteration", fontsize=8)
    fig.suptitle(title or "SAEM estimates per iteration (estimation scale; dotted: end of burn-in, end of exploration)", fontsize=10)
    return fig


def plot_regimens(sims: dict, *, observables=("il2_pM", "treg_per_uL", "tconv_per_uL", "nk56bright_per_uL"), fold: bool = True, title: str = "") -> Figure:
    """Regimens side by side: median and 90% band over patients of each observable, one panel each.

    Arguments:
        sims: regimen name -> batched :class:`il2treg.Simulation` (patients x times), all on one
            time grid starting at day 0.
        observables: panels; cell counts are shown as fold change from day 0 when ``fold``.
    """
    if not sims:
        raise InputError("plot_regimens needs at least one simulation. Fix: pass {name: il2treg.simulate(...)}.")
    observables = tuple(observables)
    fig, axes = plt.subplots(1, len(observables), figsize=(4.2 * len(observables), 4.4), squeeze=False, layout="constrained")
    for c, (name, sim) in enumerate(sims.items()):
        times = np.asarray(sim.times)
        times = times[0] if times.ndim == 2 else times
        for ax, obs in zip(axes[0], observables):
            v = np.atleast_2d(np.asarray(sim[obs], dtype=float))
            relative = fold and obs.endswith("_per_uL")
            if relative:
                v = v / v[:, :1]
            v = v[np.all(np.isfinite(v), axis=1)]
            lo, med, hi = np.percentile(v, [5, 50, 95], axis=0)
            ax.fill_between(times, lo, hi, color=f"C{c}", alpha=0.15, lw=0)
            ax.plot(times, med, color=f"C{c}", lw=1.5, label=name)
            ax.set_ylabel(f"{obs}: fold change from day 0" if relative else _label(obs, dict(zip(sim.names, sim.units)).get(obs)))
    for ax, obs in zip(axes[0], observables):
        if obs == "il2_pM":
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel(_DAY)
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(3, len(labels)), fontsize=8, title="median and 90% band over patients", title_fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_individual_fits(diag, *, dvid: str = "treg_per_uL", ids=None, ncols: int = 4, max_patients: int = 16, curves=None) -> Figure:
    """One panel per patient: observations (points; open: below the LLOQ), the IPRED and PRED
    curves of the fitted model on a dense time grid (lines), doses as ticks.

    Arguments:
        diag: :class:`il2treg.diagnostics.Diagnostics`.
        dvid: observation type.
        ids: patients to show (default the first ``max_patients`` with ``dvid`` data).
        curves: the dense curves (ID, TIME, IPRED, PRED) of these patients; default
            :func:`il2treg.diagnostics.individual_curves` (every 6 h to the last observation, hourly
            for IL-2), which solves the fitted model again with the program ``diagnose`` compiled.
    """
    from il2treg.diagnostics import individual_curves

    t = diag.table
    t = t[(t["DVID"] == dvid) & t["USED"]]
    if t.empty:
        raise InputError(f"no fitted {dvid!r} observations to plot. Fix: choose a type in diag.summary.index ({', '.join(diag.summary.index)}).")
    all_ids = list(dict.fromkeys(t["ID"]))
    ids = all_ids[:max_patients] if ids is None else list(ids)
    unknown = [i for i in ids if i not in all_ids]
    if unknown:
        raise InputError(f"patient {unknown[0]!r} has no {dvid!r} observations. Fix: choose IDs from {all_ids[:5]}...")
    if curves is None:
        curves = individual_curves(diag, ids, dvid=dvid)
    nrows = -(-len(ids) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.4 * nrows), sharex=True, squeeze=False, constrained_layout=True)
    data = diag.data
    for ax, pid in zip(axes.flat, ids):
        g = t[t["ID"] == pid].sort_values("TIME")
        ok = g["CENS"] == 0
        ax.plot(g["TIME"][ok], g["DV"][ok], "o", color="k", ms=3.5, label="observed")
        if (~ok).any():
            ax.plot(g["TIME"][~ok], g["DV"][~ok], "o", mfc="none", color="k", ms=3.5, label="< LLOQ")
        c = curves[curves["ID"] == pid]
        ax.plot(c["TIME"], c["IPRED"], "-", color="C0", lw=1.4, label="IPRED")
        ax.plot(c["TIME"], c["PRED"], "--", color="C1", lw=1.1, label="PRED")
        s = data.ids.index(pid)
        doses = np.asarray(data.dose_time[s])[(np.asarray(data.dose_row[s]) > 0) & (np.asarray(data.dose_amount[s]) > 0)]
        ax.plot(doses, np.zeros_like(doses), "|", color="C3", ms=6, transform=ax.get_xaxis_transform(), label="dose")
        ax.set_title(f"ID {pid}", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(ids):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(_label(dvid, diag.units.get(dvid)))
    for ax in axes[-1]:
        ax.set_xlabel("day")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Individual fits: {dvid} (fit {diag.fit})")
    return fig


def plot_population_course(diag, *, dvid: str = "treg_per_uL", by: str | None = None, interval: float = 0.9) -> Figure:
    """Observations over time with the model's median and ``interval`` prediction band of new
    observations (percentiles of the simulated replicates at each nominal time); with ``by`` (a
    covariate of the data, e.g. ``"ARM"``) one panel per level."""
    t = diag.table
    rows = np.flatnonzero((t["DVID"] == dvid).to_numpy() & t["USED"].to_numpy())
    if rows.size == 0:
        raise InputError(f"no fitted {dvid!r} observations to plot. Fix: choose a type in diag.summary.index ({', '.join(diag.summary.index)}).")
    if by is None:
        level = np.full(rows.size, "", dtype=object)
    else:
        per_id = dict(zip(diag.data.ids, diag.data.covariate_values(by)))
        level = np.asarray([per_id[i] for i in t["ID"].to_numpy()[rows]], dtype=object)
    levels = list(dict.fromkeys(level))
    fig, axes = plt.subplots(1, len(levels), figsize=(6.5 * len(levels), 4.2), squeeze=False, sharey=True, constrained_layout=True)
    tail = 100 * (1 - interval) / 2
    for ax, lev in zip(axes[0], levels):
        sel = rows[level == lev]
        time = t["TIME"].to_numpy()[sel]
        grid = np.unique(time)
        sim = np.where(diag.simulated_cens[:, sel], np.nan, diag.simulated[:, sel])
        band = np.asarray([np.nanpercentile(sim[:, time == g], [tail, 50, 100 - tail]) for g in grid])
        ax.fill_between(grid, band[:, 0], band[:, 2], color="C0", alpha=0.25, lw=0, label=f"{interval:.0%} prediction interval")
        ax.plot(grid, band[:, 1], color="C0", lw=1.6, label="simulated median")
        ok = t["CENS"].to_numpy()[sel] == 0
        ax.plot(time[ok], t["DV"].to_numpy()[sel][ok], "o", color="k", ms=3, alpha=0.6, label="observed")
        if _log_scale(dvid):
            ax.set_yscale("log")
        ax.set_xlabel(_DAY)
        ax.set_title(f"{by} = {lev}" if by else dvid, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(_label(dvid, diag.units.get(dvid)))
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Population time course: {dvid} ({diag.n_sim} simulated replicates)", fontsize=11)
    return fig


def plot_gof(diag, *, dvid: str | None = None) -> Figure:
    """Goodness of fit of one observation type, 2 x 2: DV vs PRED, DV vs IPRED (identity line),
    CWRES vs time and vs PRED (zero, ±2 and the binned mean). ``dvid``: default the first fitted."""
    from il2treg.diagnostics import bin_index

    t = diag.table
    t = t[t["USED"] & (t["CENS"] == 0) & t["DV"].notna()]
    if t.empty:
        raise InputError("no fitted observations to plot. Fix: diagnose a fit with at least one fitted, uncensored observation.")
    dvid = dvid or t["DVID"].iloc[0]
    t = t[t["DVID"] == dvid]
    if t.empty:
        raise InputError(f"no fitted {dvid!r} observations to plot. Fix: choose a type in diag.summary.index ({', '.join(diag.summary.index)}).")
    fig, axes = plt.subplots(2, 2, figsize=(9, 8), constrained_layout=True)
    unit = diag.units.get(dvid, OBSERVABLES.get(dvid, ("",))[0])
    for ax, x in ((axes[0, 0], "PRED"), (axes[0, 1], "IPRED")):
        ax.plot(t[x], t["DV"], "o", ms=3, alpha=0.5, color="C0")
        lo, hi = np.nanmin(t[[x, "DV"]].to_numpy()), np.nanmax(t[[x, "DV"]].to_numpy())
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="identity")
        if lo > 0 and _log_scale(dvid):
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(f"{x} [{unit}]")
        ax.set_ylabel(f"DV [{unit}]")
    for ax, x, label in ((axes[1, 0], "TIME", _DAY), (axes[1, 1], "PRED", f"PRED [{unit}]")):
        v = t[x].to_numpy()
        ax.plot(v, t["CWRES"], "o", ms=3, alpha=0.5, color="C0")
        for y in (-2, 0, 2):
            ax.axhline(y, color="0.4", lw=0.8, ls="-" if y == 0 else ":")
        edges = np.unique(np.quantile(v, np.linspace(0, 1, 9)))
        which = bin_index(edges, v)
        means = [(np.median(v[which == b]), np.mean(t["CWRES"].to_numpy()[which == b])) for b in np.unique(which)]
        ax.plot(*zip(*means), "-", color="C3", lw=1.6, label="binned mean")
        ax.set_xlabel(label)
        ax.set_ylabel("CWRES")
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    for ax in axes.flat:
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    fig.suptitle(f"Goodness of fit: {dvid} (fit {diag.fit})")
    return fig


def plot_vpc(v) -> Figure:
    """A visual predictive check (:func:`il2treg.diagnostics.vpc`): observations, their 5th, 50th
    and 95th percentiles per bin (lines), and the simulated interval of each percentile (bands);
    with an LLOQ, a second panel compares the fraction below it. The title gives the coverage and
    the p-value of :meth:`~il2treg.diagnostics.VPC.test`. A stratified VPC
    (:class:`~il2treg.diagnostics.StratifiedVPC`, ``vpc(..., by=...)``) gets one column of panels
    per stratum, the stratum and its own coverage and test in each title, and the test over all
    strata in the figure title."""
    stratified = hasattr(v, "strata")
    panels = list(v.strata.values()) if stratified else [v]
    has_blq = any(np.isfinite(p.lloq) for p in panels)
    n = len(panels)
    fig, axes = plt.subplots(2 if has_blq else 1, n, figsize=(7 if n == 1 else 5.0 * n, 6.5 if has_blq else 4.5), squeeze=False, sharex=True,
                             sharey="row", gridspec_kw={"height_ratios": [3, 1] if has_blq else [1]}, constrained_layout=True)  # fmt: skip
    for k, p in enumerate(panels):
        _draw_vpc(axes[0, k], axes[1, k] if has_blq else None, p, fontsize=9 if stratified else 10)
    first = panels[0]
    if first.change == "ratio":
        quantity = f"{first.dvid}: fold change from baseline"
    elif first.change == "difference":
        quantity = f"{first.dvid}: change from baseline [{first.unit or OBSERVABLES.get(first.dvid, ('',))[0]}]"
    else:
        quantity = _label(first.dvid, first.unit or None)
    axes[0, 0].set_ylabel(("prediction-corrected " if first.pred_corrected else "") + quantity)
    if has_blq:
        axes[1, 0].set_ylabel("fraction < LLOQ")
    for ax in axes[-1]:
        ax.set_xlabel(_DAY)
    axes[0, 0].legend(fontsize=7)
    if stratified:
        fig.suptitle(f"{_vpc_kind(first)} of {first.dvid} by {v.by}\nover the strata: {v.coverage():.0%} of observed percentiles inside their intervals, "
                     f"test p = {v.test()[1]:.2g}", fontsize=10)  # fmt: skip
    return fig


def _vpc_kind(v) -> str:
    return ("pc" if v.pred_corrected else "") + "VPC" + (" of the change from baseline" if v.change else "")


def _draw_vpc(ax, lower, v, fontsize: float) -> None:
    """One VPC (:func:`plot_vpc`) on ``ax``, its fraction below the LLOQ on ``lower`` (``None``: no panel)."""
    from il2treg.diagnostics import VPC_PERCENTILES

    b = v.bins
    ok = v.observations["CENS"] == 0
    ax.plot(v.observations["TIME"][ok], v.observations["DV"][ok], "o", color="0.35", ms=2.5, alpha=0.5, label="observed")
    for q in VPC_PERCENTILES:
        colour = "C3" if q == 50 else "C0"
        ax.fill_between(b["time"], b[f"sim_p{q:g}_lo"], b[f"sim_p{q:g}_hi"], color=colour, alpha=0.2, lw=0,
                        label=f"simulated {v.interval:.0%} CI of the percentile" if q == 50 else None)  # fmt: skip
        ax.plot(b["time"], b[f"observed_p{q:g}"], "-" if q == 50 else "--", color=colour, lw=1.5, label={5.0: "observed 5th, 95th percentiles", 50.0: "observed median"}.get(q))
    if lower is not None and np.isfinite(v.lloq):
        ax.axhline(v.lloq, color="k", lw=0.8, ls=":", label="LLOQ")
        lower.fill_between(b["time"], b["sim_blq_lo"], b["sim_blq_hi"], color="C0", alpha=0.25, lw=0, label="simulated")
        lower.plot(b["time"], b["observed_blq"], "o-", color="k", ms=3, label="observed")
        lower.legend(fontsize=8)
    if lower is not None:
        lower.grid(alpha=0.3)
    if _log_scale(v.dvid):
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(mticker.LogLocator(subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
        ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(mticker.NullFormatter())
    where = f"{v.stratum}: " if v.stratum else ""
    ax.set_title(f"{where}{_vpc_kind(v)}: {v.dvid}\n{v.coverage():.0%} of observed percentiles inside their intervals, test p = {v.test()[1]:.2g}", fontsize=fontsize)
    ax.grid(alpha=0.3)


def plot_treg_sledai_link(treg_fold, sledai_change, p_sri4, *, groups=None, title: str = "") -> Figure:
    """Treg fold change against the change in SLEDAI, each patient coloured by its SRI-4 probability.

    Arguments:
        treg_fold: Treg fold change from day 0 per patient (e.g. time-averaged, or at a visit).
        sledai_change: change in (latent) SLEDAI at the assessment visit [points].
        p_sri4: probability of an SRI-4 response.
        groups: optional label per patient (e.g. arm), drawn with different markers.
    """
    x, y, p = (np.ravel(np.asarray(a, dtype=float)) for a in (treg_fold, sledai_change, p_sri4))
    if not (x.shape == y.shape == p.shape):
        raise InputError(f"treg_fold, sledai_change and p_sri4 need one value per patient, got {x.shape}, {y.shape}, {p.shape}. Fix: pass three arrays of the same length.")
    groups = np.full(x.shape, "", dtype=object) if groups is None else np.ravel(np.asarray(groups, dtype=object))
    fig, ax = plt.subplots(figsize=(6.5, 4.8), constrained_layout=True)
    for k, g in enumerate(dict.fromkeys(groups)):
        sel = groups == g
        sc = ax.scatter(x[sel], y[sel], c=p[sel], cmap="viridis", vmin=0, vmax=1, s=18, marker="osD^v"[k % 5], label=str(g) or None, edgecolors="none")
    ax.axhline(-4, color="0.4", lw=0.8, ls=":", label="4-point fall (SRI-4 SLEDAI part)")
    fig.colorbar(sc, ax=ax, label="P(SRI-4 response)")
    ax.set_xlabel("Treg fold change from day 0")
    ax.set_ylabel("change in SLEDAI [points]")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def plot_regimen_comparison(comparison, *, metrics=None, title: str = "") -> Figure:
    """Regimens side by side (:func:`il2treg.design.compare`): per metric one panel with the median
    (dot) and 90% interval (bar) of each regimen over the virtual patients."""
    table = comparison.table
    metrics = list(dict.fromkeys(table["metric"])) if metrics is None else list(metrics)
    unknown = sorted(set(metrics) - set(table["metric"]))
    if unknown:
        raise InputError(f"unknown metric(s) {unknown}. Fix: use some of {', '.join(dict.fromkeys(table['metric']))}.")
    names = list(comparison.regimens)
    cols = min(4, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 0.32 * len(names) * rows + 1.4 * rows), squeeze=False, layout="constrained", sharey=True)
    y = np.arange(len(names))[::-1]
    for ax, metric in zip(axes.ravel(), metrics):
        m = table[table["metric"] == metric].set_index("regimen").loc[names]
        for k, name in enumerate(names):
            r = m.loc[name]
            ax.errorbar([r["median"]], [y[k]], xerr=[[r["median"] - r["p5"]], [r["p95"] - r["median"]]], fmt="o", color=f"C{k}", ms=4, capsize=2, lw=1.2)
        unit = m["unit"].iloc[0]
        ax.set_xlabel(f"{metric} [{unit}]" if unit != "1" else metric, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        ax.set_yticks(y, names, fontsize=8)
    for ax in axes.ravel()[len(metrics):]:
        ax.set_visible(False)
    fig.suptitle(title or f"Regimens compared: median and 90% interval over {int(table['n'].max())} virtual patients", fontsize=10)
    return fig


def plot_bootstrap(replicates, ci, *, level: float = 0.95, ncols: int = 4, title: str = "") -> Figure:
    """One panel per estimated parameter of a bootstrap (:mod:`il2treg.fit.bootstrap`): the
    converged replicates' estimates (histogram), the original estimate, its covariance-step CI
    (shaded) and the bootstrap percentile CI (dashed).

    Arguments:
        replicates: ``replicates.csv`` (columns ``status`` and one per parameter).
        ci: ``ci.csv`` (:func:`il2treg.fit.bootstrap.interval_table`).
    """
    ok = replicates[replicates["status"] == "ok"]
    n = len(ci)
    if n == 0:
        raise InputError("plot_bootstrap() got no estimated parameters. Fix: pass the ci table of a bootstrap.")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False, constrained_layout=True)
    pct = f"{100 * level:g}%"
    for ax, (_, row) in zip(axes.flat, ci.iterrows()):
        values = ok[row["parameter"]].to_numpy(dtype=float)
        if values.size:
            ax.hist(values, bins=max(5, min(40, values.size // 5)), color="0.75", edgecolor="0.55", lw=0.5)
        if np.isfinite(row["ci_low"]) and np.isfinite(row["ci_high"]):
            ax.axvspan(row["ci_low"], row["ci_high"], color="C0", alpha=0.18, label=f"covariance step {pct} CI")
        for k, v in enumerate((row["pct_low"], row["pct_high"])):
            if np.isfinite(v):
                ax.axvline(v, color="C3", ls="--", lw=1.2, label=f"bootstrap {pct} percentile CI" if k == 0 else None)
        ax.axvline(row["estimate"], color="k", lw=1.2, label="estimate")
        unit = row["unit"] if isinstance(row["unit"], str) and row["unit"] != "1" else ""
        ax.set_xlabel(_label(row["parameter"], unit), fontsize=8)
        ax.set_yticks([])
        ax.tick_params(labelsize=7)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=6, loc="upper right")
    fig.suptitle(title or f"Bootstrap: {ok.shape[0]} converged of {replicates.shape[0]} replicates", fontsize=10)
    return fig
