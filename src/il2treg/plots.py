"""Matplotlib figures. Each function returns a Figure; none calls ``plt.show``."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from il2treg.observables import OBSERVABLES  # noqa: E402

_PANELS = ("treg_pct_cd4", "il2_pM", "cd25_treg_rel", "sledai")


def plot_treg_dynamics(sim, *, doses=None, title: str = "") -> Figure:
    """Median and 90% band over patients of Treg % CD4, IL-2, CD25 on Tregs and SLEDAI vs time.

    Arguments:
        sim: a batched :class:`il2treg.Simulation` (patients x times).
        doses: optional dose times (days), marked on every panel.
        title: figure title.
    """
    times = np.asarray(sim.times)
    times = times[0] if times.ndim == 2 else times
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True, constrained_layout=True)
    for ax, name in zip(axes.flat, _PANELS):
        values = np.atleast_2d(np.asarray(sim[name]))
        values = values[np.all(np.isfinite(values), axis=1)]
        lo, med, hi = np.percentile(values, [5, 50, 95], axis=0)
        ax.fill_between(times, lo, hi, color="C0", alpha=0.25, lw=0, label="90% of patients")
        ax.plot(times, med, color="C0", lw=1.6, label="median")
        unit, description = OBSERVABLES[name]
        ax.set_ylabel(f"{name} [{unit}]")
        ax.set_title(description.split(",")[0].split("(")[0].strip(), fontsize=10)
        if name == "il2_pM":
            ax.set_yscale("log")
        if doses is not None:
            for d in np.asarray(doses):
                ax.axvline(float(d), color="0.6", lw=0.5, alpha=0.6, zorder=0)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time since first dose [day]")
    axes[0, 0].legend(loc="upper right", fontsize=8)
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
