"""Every figure renders from a small fit and shows what it says: panels, axes with units, the data."""

from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pytest

import il2treg
from il2treg import plots
from il2treg.diagnostics import vpc


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _points(ax) -> int:
    return sum(len(line.get_xdata()) for line in ax.get_lines() if line.get_linestyle() in ("None", "") and line.get_marker() == "o")


@pytest.mark.slow
def test_individual_fits_show_each_patients_data_ipred_pred_and_doses(misspecified_diagnostics):
    diag = misspecified_diagnostics
    fig = plots.plot_individual_fits(diag, max_patients=6, ncols=3)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 6
    first = visible[0]
    assert first.get_title() == f"ID {diag.data.ids[0]}"
    labels = [line.get_label() for line in first.get_lines()]
    assert {"observed", "IPRED", "PRED", "dose"} <= set(labels)
    n_obs = int(((diag.table["ID"] == diag.data.ids[0]) & (diag.table["DVID"] == "treg_per_uL")).sum())
    assert _points(first) == n_obs
    dose_line = first.get_lines()[labels.index("dose")]
    assert len(dose_line.get_xdata()) == int((np.asarray(diag.data.dose_amount[0]) > 0).sum())
    assert "cells/uL" in first.get_ylabel()
    with pytest.raises(ValueError, match="no 'treg_per_uL' observations"):
        plots.plot_individual_fits(diag, ids=["nobody"])


@pytest.mark.slow
def test_individual_fit_curves_are_the_model_solved_on_a_dense_grid(misspecified_diagnostics):
    """IPRED and PRED are lines through a point every 6 h, many more than the observations; at the
    observation times (on the grid) they equal the fit's IPRED and PRED; between them they are not
    the straight lines joining those values (the Treg rise after dosing is curved)."""
    diag = misspecified_diagnostics
    fig = plots.plot_individual_fits(diag, ids=diag.data.ids[:3], ncols=3)
    table = diag.table[diag.table["DVID"] == "treg_per_uL"]
    for ax, pid in zip(fig.axes, diag.data.ids[:3]):
        lines = {line.get_label(): line for line in ax.get_lines()}
        rows = table[table["ID"] == pid].sort_values("TIME")
        obs_t = rows["TIME"].to_numpy()
        for name in ("IPRED", "PRED"):
            x, y = (np.asarray(v, dtype=float) for v in lines[name].get_data())
            assert len(x) >= 4 * (obs_t.max() - min(0.0, obs_t.min())) and len(x) > 5 * len(obs_t), (name, len(x), len(obs_t))
            assert np.all(np.diff(x) > 0) and np.all(np.diff(x) <= 0.25 + 1e-12)
            at = np.searchsorted(x, obs_t)
            np.testing.assert_array_equal(x[at], obs_t)
            np.testing.assert_allclose(y[at], rows[name].to_numpy(), rtol=1e-5)
            joined = np.interp(x, obs_t, rows[name].to_numpy())
            assert np.max(np.abs(y / joined - 1)) > 1e-3, name


@pytest.mark.slow
def test_population_course_has_band_median_and_every_observation(misspecified_diagnostics):
    fig = plots.plot_population_course(misspecified_diagnostics, dvid="tconv_per_uL")
    (ax,) = fig.axes
    assert len(ax.collections) == 1  # the prediction band
    n = int(((misspecified_diagnostics.table["DVID"] == "tconv_per_uL")).sum())
    assert _points(ax) == n
    assert ax.get_yscale() == "log" and "[cells/uL]" in ax.get_ylabel() and "[day]" in ax.get_xlabel()


@pytest.mark.slow
def test_population_course_by_a_covariate_has_a_panel_per_level(misspecified_diagnostics):
    diag = misspecified_diagnostics
    half = {pid: ("A" if k % 2 else "B") for k, pid in enumerate(diag.data.ids)}
    frame = diag.data.to_frame()
    frame["GROUP"] = frame["ID"].map(half)
    from il2treg.data import read_dataset

    grouped = __import__("dataclasses").replace(diag, data=read_dataset(frame))
    fig = plots.plot_population_course(grouped, dvid="treg_per_uL", by="GROUP")
    assert [ax.get_title() for ax in fig.axes] == ["GROUP = B", "GROUP = A"]
    assert sum(_points(ax) for ax in fig.axes) == int((diag.table["DVID"] == "treg_per_uL").sum())


def test_treg_dynamics_has_four_panels_with_units_and_dose_marks(model):
    params = il2treg.sample_population(model, 5, 0)
    reg = il2treg.regimen.lupil2(2)
    sim = il2treg.simulate(model, reg, np.linspace(0, 21, 43), params)
    fig = plots.plot_treg_dynamics(sim, doses=np.asarray(reg.times), title="t")
    assert len(fig.axes) == 4
    assert [ax.get_ylabel().split(" ")[0] for ax in fig.axes] == ["treg_pct_cd4", "il2_pM", "cd25_treg_rel", "sledai"]
    assert fig.axes[1].get_yscale() == "log"
    n_doses = len(np.asarray(reg.times))
    assert all(sum(line.get_xdata()[0] == line.get_xdata()[-1] for line in ax.get_lines()) >= n_doses for ax in fig.axes)


@pytest.mark.slow
def test_gof_has_four_panels_with_identity_and_cwres_references(misspecified_diagnostics):
    fig = plots.plot_gof(misspecified_diagnostics, dvid="treg_per_uL")
    assert len(fig.axes) == 4
    (pred, ipred), (vs_time, vs_pred) = np.asarray(fig.axes).reshape(2, 2)
    assert pred.get_xlabel() == "PRED [cells/uL]" and ipred.get_xlabel() == "IPRED [cells/uL]"
    assert vs_time.get_ylabel() == "CWRES" and "[day]" in vs_time.get_xlabel()
    assert vs_pred.get_ylabel() == "CWRES" and vs_pred.get_xlabel() != vs_time.get_xlabel()
    n = int((misspecified_diagnostics.table["DVID"] == "treg_per_uL").sum())
    assert _points(pred) == n and _points(vs_time) == n and _points(vs_pred) == n
    assert [line.get_label() for line in vs_time.get_lines()][-1] == "binned mean"
    assert "treg_per_uL" in fig._suptitle.get_text()


@pytest.mark.slow
def test_vpc_draws_three_percentile_bands_and_the_blq_panel_only_with_an_lloq(misspecified_diagnostics):
    v = vpc(misspecified_diagnostics, "treg_per_uL")
    fig = plots.plot_vpc(v)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.collections) == 3  # 5th, 50th and 95th percentile intervals
    assert _points(ax) == len(v.observations)
    assert f"{v.coverage():.0%}" in ax.get_title() and f"p = {v.test()[1]:.2g}" in ax.get_title()
    with_lloq = dataclasses.replace(v, lloq=20.0)
    assert len(plots.plot_vpc(with_lloq).axes) == 2
    change = vpc(misspecified_diagnostics, "treg_per_uL", change_from_baseline=True)
    ax = plots.plot_vpc(change).axes[0]
    assert "fold change from baseline" in ax.get_ylabel() and "change from baseline" in ax.get_title()
    assert _points(ax) == len(change.observations) == len(v.observations) - v.bins.loc[v.bins["time"] == 0, "n"].sum()


@pytest.mark.slow
def test_a_stratified_vpc_has_one_panel_per_stratum_titled_with_it(armed_diagnostics):
    sv = vpc(armed_diagnostics, "treg_per_uL", by="ARM")
    fig = plots.plot_vpc(sv)
    assert len(fig.axes) == 2
    for ax, (level, v) in zip(fig.axes, sv.strata.items()):
        assert ax.get_title().startswith(f"ARM = {level}: VPC: treg_per_uL")
        assert f"{v.coverage():.0%}" in ax.get_title() and f"p = {v.test()[1]:.2g}" in ax.get_title()
        assert len(ax.collections) == 3 and _points(ax) == len(v.observations)
    assert sum(_points(ax) for ax in fig.axes) == len(vpc(armed_diagnostics, "treg_per_uL").observations)
    assert "by ARM" in fig._suptitle.get_text() and f"p = {sv.test()[1]:.2g}" in fig._suptitle.get_text()


def test_treg_sledai_link_colours_patients_by_sri4_probability():
    rng = np.random.default_rng(0)
    fold = rng.uniform(1, 3, 40)
    change = -2 * fold + rng.normal(0, 1, 40)
    p = 1 / (1 + np.exp(change + 4))
    fig = plots.plot_treg_sledai_link(fold, change, p, groups=["IL-2"] * 20 + ["placebo"] * 20)
    ax = fig.axes[0]
    assert len(ax.collections) == 2
    np.testing.assert_allclose(ax.collections[0].get_array(), p[:20])
    assert fig.axes[1].get_ylabel() == "P(SRI-4 response)"
    with pytest.raises(ValueError, match="one value per patient"):
        plots.plot_treg_sledai_link(fold, change[:3], p)


@pytest.mark.slow
def test_regimen_comparison_has_a_median_line_per_regimen_in_every_panel(model):
    times = np.linspace(0, 28, 57)
    params = il2treg.sample_population(model, 6, 0)
    sims = {"LUPIL-2": il2treg.simulate(model, il2treg.regimen.lupil2(3), times, params),
            "weekly": il2treg.simulate(model, il2treg.regimen.weekly(1.5e6, 4), times, params)}  # fmt: skip
    fig = plots.plot_regimens(sims, observables=("il2_pM", "treg_per_uL"))
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert [line.get_label() for line in ax.get_lines()] == ["LUPIL-2", "weekly"]
    assert fig.axes[1].get_ylabel() == "treg_per_uL: fold change from day 0"
    np.testing.assert_allclose(fig.axes[1].get_lines()[0].get_ydata()[0], 1.0)


@pytest.mark.slow
def test_regimen_comparison_has_one_panel_per_metric_and_one_bar_per_regimen(model):
    from il2treg.design import compare, virtual_population

    _, params = virtual_population(model, 12, seed=0)
    c = compare(["lupil2", "placebo"], model=model, params=params)
    fig = plots.plot_regimen_comparison(c, metrics=["treg_mean_fold", "nk_change_pct", "p_sri4_w12"])
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3
    assert visible[1].get_xlabel() == "nk_change_pct [%]"
    assert [t.get_text() for t in visible[0].get_yticklabels()] == ["lupil2", "placebo"]
    assert len(visible[0].containers) == 2  # one median and interval per regimen
    medians = c.table.set_index(["regimen", "metric"])["median"]
    assert visible[0].containers[0][0].get_xdata()[0] == pytest.approx(medians["lupil2", "treg_mean_fold"])
    with pytest.raises(il2treg.errors.InputError, match="unknown metric"):
        plots.plot_regimen_comparison(c, metrics=["treg_auc"])


def test_saem_trace_has_a_panel_per_parameter_and_marks_the_phases():
    from types import SimpleNamespace

    from il2treg.errors import InputError

    names = ("emax_treg", "kout_treg", "omega_emax_treg", "sigma_prop_treg_per_uL", "sigma_add_sledai")
    trace = np.cumsum(np.random.default_rng(1).normal(size=(31, len(names))), axis=0)
    fig = plots.plot_saem_trace(SimpleNamespace(trace=trace, psi_names=names, settings={"saem_burn_in": 3, "saem_explore": 20}), ncols=3)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == list(names)
    for k, ax in enumerate(panels):
        line, *marks = ax.get_lines()
        np.testing.assert_array_equal(line.get_ydata(), trace[:, k])
        assert sorted(m.get_xdata()[0] for m in marks) == [3, 23]
    with pytest.raises(InputError, match="no SAEM trace"):
        plots.plot_saem_trace(SimpleNamespace(trace=None, psi_names=names))
