"""The standard figures of a fit, written into its results folder."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from il2treg import plots
from il2treg.diagnostics import vpc
from il2treg.fit.result import FitResult


def write_figures(diag, folder: str | Path, *, trace_of: FitResult | None = None, vpc_by: str | None = None) -> list[Path]:
    """The standard diagnostics of a fit: ``diagnostics.csv`` (the per-observation table of
    :func:`il2treg.diagnostics.diagnose`) and, in ``figures/``, per fitted observation type the
    individual fits, goodness of fit, VPC (and VPC of the change from baseline where patients have a
    baseline) and population time course (PNG, 120 dpi); with ``trace_of`` an SAEM fit, also
    ``saem_trace.png`` (:func:`il2treg.plots.plot_saem_trace`). Data with an
    ``ARM`` covariate get the time course per arm and a prediction-corrected VPC (arms on different
    regimens share visits). With ``vpc_by`` (a covariate of the data), also the VPC stratified by it,
    ``vpc_by_<covariate>_<dvid>.png`` (:func:`il2treg.diagnostics.vpc` with ``by``); a bad
    covariate raises :class:`~il2treg.errors.InputError` before anything is written."""
    folder = Path(folder)
    strata = {dvid: vpc(diag, dvid, by=vpc_by) for dvid in diag.summary.index} if vpc_by is not None else {}
    (folder / "figures").mkdir(exist_ok=True)
    diag.table.to_csv(folder / "diagnostics.csv", index=False)
    written = [folder / "diagnostics.csv"]
    by = "ARM" if "ARM" in diag.data.covariates else None  # arms differ by design: split the course, prediction-correct the VPC
    for dvid in diag.summary.index:
        for kind, fig in (("individual", plots.plot_individual_fits(diag, dvid=dvid)), ("gof", plots.plot_gof(diag, dvid=dvid)),
                          ("vpc", plots.plot_vpc(vpc(diag, dvid, pred_corrected=by is not None))),
                          ("course", plots.plot_population_course(diag, dvid=dvid, by=by))):  # fmt: skip
            path = folder / "figures" / f"{kind}_{dvid}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
        if np.isfinite(diag.summary.loc[dvid, "vpc_change_p"]):  # patients with a baseline: the VPC that sees the shape of the response
            fig = plots.plot_vpc(vpc(diag, dvid, change_from_baseline=True, pred_corrected=by is not None))
            path = folder / "figures" / f"vpc_change_{dvid}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
        if dvid in strata:
            fig = plots.plot_vpc(strata[dvid])
            path = folder / "figures" / f"vpc_by_{vpc_by}_{dvid}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            written.append(path)
    if trace_of is not None and trace_of.trace is not None:
        fig = plots.plot_saem_trace(trace_of)
        path = folder / "figures" / "saem_trace.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written
