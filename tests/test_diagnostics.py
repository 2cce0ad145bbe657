"""Diagnostics: residuals against independent computations, NPDE and VPC calibration on data from
the fitted model itself, and detection of a deliberately wrong model (tests/conftest.py)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from il2treg.data import read_dataset
from il2treg.diagnostics import VPC_PERCENTILES, StratifiedVPC, diagnose, individual_curves, time_bins, vpc
from il2treg.errors import InputError
from il2treg.fit.assemble import predict_all
from il2treg.fit.problem import patient_arrays, unpack
from il2treg.fit.spec import stored_spec

pytestmark = pytest.mark.slow  # `make test-all` and CI run these; `make test` leaves them out


@pytest.fixture(scope="module")
def self_simulated(misspecified_fit, misspecified_diagnostics):
    """Diagnostics of data simulated from the fitted model itself (replicate 1), EBEs re-estimated."""
    return diagnose(misspecified_fit, data=misspecified_diagnostics.simulated_data(1), n_sim=1000, seed=11)


def test_pred_and_ipred_reproduce_the_fit(misspecified_fit, misspecified_diagnostics):
    mine, theirs = misspecified_diagnostics.table, misspecified_fit.predictions
    assert list(mine["ROW"]) == list(theirs["ROW"])
    np.testing.assert_allclose(mine["PRED"], theirs["PRED"], rtol=1e-8)
    np.testing.assert_allclose(mine["IPRED"], theirs["IPRED"], rtol=1e-6)
    np.testing.assert_allclose(mine["IWRES"], theirs["IWRES"], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_cwres_matches_a_finite_difference_linearisation(misspecified_fit, misspecified_diagnostics):
    """CWRES of one patient recomputed from G by central differences of the predictions."""
    spec = stored_spec(misspecified_fit)
    problem = spec.problem()
    patients = patient_arrays(spec.dataset, problem.covariates)
    up = unpack(problem, problem.split(jnp.asarray(misspecified_fit.psi)), spec.residual_model())
    eta = np.stack([misspecified_fit.individual[f"ETA_{n}"].to_numpy() for n in problem.random], axis=1)
    i, h = 3, 1e-5
    f = lambda e: np.asarray(predict_all(problem, up.theta, up.beta, jnp.asarray(e), patients)[0])[i]
    g = np.empty((patients.obs_time.shape[1], problem.n_eta))
    for k in range(problem.n_eta):
        step = np.zeros_like(eta)
        step[i, k] = h
        g[:, k] = (f(eta + step) - f(eta - step)) / (2 * h)
    ipred, y = f(eta), np.asarray(patients.obs_value[i])
    rows = np.asarray(patients.obs_mask[i]) & ~np.asarray(patients.obs_cens[i])
    sd = np.asarray(up.residual.sigma_prop)[np.asarray(patients.obs_dvid[i])] * ipred
    g, ipred, y, sd = g[rows], ipred[rows], y[rows], sd[rows]
    c = (g * np.asarray(up.omega) ** 2) @ g.T + np.diag(sd**2)
    w, v = np.linalg.eigh(c)
    expected = (v / np.sqrt(w)) @ v.T @ (y - ipred + g @ eta[i])
    table = misspecified_diagnostics.table
    mine = table.loc[table["ID"] == spec.dataset.ids[i], "CWRES"].to_numpy()
    np.testing.assert_allclose(mine[np.isfinite(mine)], expected, rtol=1e-4, atol=1e-6)


def test_shrinkage_matches_the_fit_report(misspecified_fit, misspecified_diagnostics):
    est = misspecified_fit.estimates.set_index("parameter")
    for name, value in misspecified_diagnostics.shrinkage.items():
        assert value == pytest.approx(float(est.loc[f"omega_{name}", "shrinkage_percent"]), abs=1e-6)


def test_data_from_the_fitted_model_pass_npde_and_cwres_checks(self_simulated):
    """NPDE per observation type, patients as the independent units: t-tests of the per-patient
    mean NPDE against 0 and of the per-patient mean NPDE^2 against 1, global p = min(1, 2 min p)
    >= 0.05; and no time bin with a mean CWRES beyond the Bonferroni bound 0.05/bins."""
    summary = self_simulated.summary
    print(summary[["npde_mean", "npde_sd", "npde_mean_p", "npde_variance_p", "npde_global_p", "cwres_mean"]].to_string())
    assert self_simulated.flags() == []
    assert set(summary.index) == {"treg_per_uL", "tconv_per_uL"}
    assert np.all(summary["npde_global_p"] >= 0.05)
    assert np.all(np.abs(summary["npde_mean"]) < 0.15)
    assert np.all(np.abs(summary["cwres_mean"]) < 0.15)


def test_vpc_of_data_from_the_fitted_model_covers_its_intervals(misspecified_diagnostics):
    """Each of 20 simulated replicates in turn plays the observations against the other 999: the
    observed percentiles lie inside the simulated 90% intervals in 90% of (bin, percentile) pairs
    on average (mean over replicates >= 0.9 - 2 SE), plain and as change from baseline, and the
    VPC test rejects at 0.05 no more often than chance allows (at most 4 of 20; P(>= 5) = 0.016
    for a uniform p)."""
    diag = misspecified_diagnostics
    for dvid in ("treg_per_uL", "tconv_per_uL"):
        for change in (False, True):
            coverage, p = [], []
            for k in range(20):
                table = diag.table.assign(DV=diag.simulated[k], CENS=diag.simulated_cens[k].astype(int))
                others = np.delete(np.arange(diag.n_sim), k)
                held_out = dataclasses.replace(diag, table=table, simulated=diag.simulated[others], simulated_cens=diag.simulated_cens[others])
                v = vpc(held_out, dvid, change_from_baseline=change)
                coverage.append(v.coverage())
                p.append(v.test()[1])
            coverage, p = np.asarray(coverage), np.asarray(p)
            what = "change from baseline" if change else "plain"
            print(f"{dvid} ({what}): VPC coverage {coverage.mean():.3f} (SD {coverage.std(ddof=1):.3f}), test p < 0.05 in {np.sum(p < 0.05)} of {len(p)}, mean p {p.mean():.2f}")
            assert coverage.mean() >= 0.9 - 2 * coverage.std(ddof=1) / np.sqrt(len(coverage)), (dvid, change, coverage)
            assert np.sum(p < 0.05) <= 4, (dvid, change, p)


def test_a_model_without_the_proliferation_delay_is_flagged(misspecified_diagnostics):
    """Data made without the delay, fitted with it: the CWRES time trend test flags Tregs."""
    flags = misspecified_diagnostics.flags()
    print(flags)
    assert any(f.startswith("treg_per_uL: mean CWRES") for f in flags), flags
    bins = misspecified_diagnostics.cwres_bins
    treg = bins[bins["DVID"] == "treg_per_uL"]
    assert treg["p"].min() < 0.05 / len(treg)


def test_the_vpc_of_the_change_from_baseline_shows_the_missing_delay(misspecified_diagnostics):
    """Same misfit: the VPC of the Treg change from baseline puts the observed percentiles outside
    their simulated intervals and its test rejects (p < 0.05/2, the level of the flag); Tconv,
    which barely responds and so is not misspecified, passes. The plain VPC is printed for
    comparison: the spread of baselines between patients hides the misfit there."""
    diag = misspecified_diagnostics
    treg = vpc(diag, "treg_per_uL", change_from_baseline=True)
    tconv = vpc(diag, "tconv_per_uL", change_from_baseline=True)
    plain = vpc(diag, "treg_per_uL")
    print(f"Treg change from baseline: coverage {treg.coverage():.2f}, S = {treg.test()[0]:.1f}, p = {treg.test()[1]:.4f}; "
          f"median z by day {dict(zip(treg.bins['time'], treg.bins['z_p50'].round(1)))}")  # fmt: skip
    print(f"Tconv change from baseline: coverage {tconv.coverage():.2f}, p = {tconv.test()[1]:.3f}; plain Treg VPC: coverage {plain.coverage():.2f}, p = {plain.test()[1]:.3f}")
    assert treg.test()[1] < 0.025 and treg.coverage() < 0.9
    assert tconv.test()[1] >= 0.025
    assert diag.summary.loc["treg_per_uL", "vpc_change_p"] == pytest.approx(treg.test()[1])
    assert any(f.startswith("treg_per_uL: VPC of the change from baseline") for f in diag.flags())


def test_change_from_baseline_divides_by_each_patients_first_observation(misspecified_diagnostics):
    diag = misspecified_diagnostics
    t = diag.table[diag.table["DVID"] == "treg_per_uL"]
    base = t[t["TIME"] == 0.0].set_index("ID")["DV"]
    day7 = t[t["TIME"] == 7.0]
    ratio = day7["DV"].to_numpy() / base.loc[day7["ID"]].to_numpy()
    v = vpc(diag, "treg_per_uL", change_from_baseline=True)
    row = v.bins.set_index("time").loc[7.0]
    assert v.change == "ratio" and 0.0 not in v.bins["time"].to_numpy()
    assert row["observed_p50"] == pytest.approx(np.percentile(ratio, 50), rel=1e-12)
    additive = dataclasses.replace(diag, error_kinds={**diag.error_kinds, "treg_per_uL": "additive"})
    shifted = vpc(additive, "treg_per_uL", change_from_baseline=True).bins.set_index("time")
    assert shifted.loc[7.0, "observed_p50"] == pytest.approx(np.percentile(day7["DV"].to_numpy() - base.loc[day7["ID"]].to_numpy(), 50), rel=1e-12)


def test_vpc_test_is_a_leave_one_out_monte_carlo_test(misspecified_diagnostics):
    """Observed percentiles far from every replicate give the smallest p, 1/(K+1); observed at the
    replicates' mean gives p near 1; S is the sum of the squared z-scores in the bins table."""
    v = vpc(misspecified_diagnostics, "treg_per_uL")
    k = v.simulated_percentiles.shape[0]
    z = v.bins[[f"z_p{q:g}" for q in VPC_PERCENTILES]].to_numpy()
    assert v.test()[0] == pytest.approx(np.sum(z**2), rel=1e-9)
    far = dataclasses.replace(v, observed_percentiles=v.observed_percentiles + 10.0)
    assert far.test()[1] == pytest.approx(1 / (k + 1))
    central = dataclasses.replace(v, observed_percentiles=v.simulated_percentiles.mean(axis=0))
    assert central.test()[1] > 0.99


def test_simulated_data_are_a_valid_dataset(misspecified_diagnostics):
    frame = misspecified_diagnostics.simulated_data(2)
    data = read_dataset(frame)
    assert data.n_subjects == misspecified_diagnostics.data.n_subjects
    dv = frame.loc[frame["EVID"] == 0, "DV"].to_numpy()
    np.testing.assert_allclose(dv, misspecified_diagnostics.simulated[2])
    with pytest.raises(InputError, match="replicate 1000 does not exist"):
        misspecified_diagnostics.simulated_data(1000)


def test_vpc_treats_values_below_the_lloq_as_censored(misspecified_diagnostics):
    """With an LLOQ at the median, the 5th percentiles are below it (NaN), the 95th are not, and
    the observed and simulated fractions below it are reported."""
    diag = misspecified_diagnostics
    table = diag.table
    lloq = float(np.median(table.loc[table["DVID"] == "treg_per_uL", "DV"]))
    is_treg = (table["DVID"] == "treg_per_uL").to_numpy()
    cens = is_treg & (table["DV"].to_numpy() < lloq)
    censored = dataclasses.replace(
        diag, table=table.assign(CENS=cens.astype(int), DV=np.where(cens, lloq, table["DV"])),
        simulated_cens=diag.simulated_cens | (is_treg[None] & (diag.simulated < lloq)), lloq={"treg_per_uL": lloq},
    )  # fmt: skip
    v = vpc(censored, "treg_per_uL")
    assert v.lloq == lloq
    assert v.bins["observed_p5"].isna().all() and v.bins["sim_p5_hi"].isna().all()
    assert v.bins["observed_p95"].notna().all()
    assert 0.2 < v.bins["observed_blq"].mean() < 0.8
    assert np.all(v.bins["sim_blq_lo"] <= v.bins["sim_blq_hi"])


def test_prediction_correction_rescales_by_the_bin_median_pred(misspecified_diagnostics):
    """No covariates: every patient's PRED at a nominal time is the same, so pcVPC = VPC."""
    plain = vpc(misspecified_diagnostics, "treg_per_uL")
    corrected = vpc(misspecified_diagnostics, "treg_per_uL", pred_corrected=True)
    for q in VPC_PERCENTILES:
        np.testing.assert_allclose(corrected.bins[f"observed_p{q:g}"], plain.bins[f"observed_p{q:g}"], rtol=1e-10)
    assert corrected.pred_corrected and not plain.pred_corrected


def test_time_bins_follow_nominal_times():
    edges = time_bins([0, 0, 4, 7, 7, 14])
    assert np.all(np.diff(np.searchsorted(edges, [0, 4, 7, 14])) == 1)
    assert len(time_bins(np.linspace(0, 84, 200), max_bins=8)) == 9


def test_bad_requests_are_clear_errors(misspecified_fit, misspecified_diagnostics):
    with pytest.raises(InputError, match="n_sim = 30 is too small"):
        diagnose(misspecified_fit, n_sim=30)
    with pytest.raises(InputError, match="unknown observation type"):
        vpc(misspecified_diagnostics, "tregs")
    with pytest.raises(InputError, match="no fitted 'il2_pM' observations"):
        vpc(misspecified_diagnostics, "il2_pM")
    with pytest.raises(InputError, match="interval must be in"):
        vpc(misspecified_diagnostics, "treg_per_uL", interval=1.5)


def test_prediction_correction_scales_proportional_types_and_shifts_additive_ones(misspecified_diagnostics):
    diag = misspecified_diagnostics
    t = diag.table
    pred = t["PRED"].to_numpy() * np.random.default_rng(0).uniform(0.5, 1.5, len(t))  # PRED now differs between patients
    varied = dataclasses.replace(diag, table=t.assign(PRED=pred))
    rows = (t["DVID"] == "treg_per_uL").to_numpy() & (t["TIME"] == 7.0).to_numpy()
    dv, p = t["DV"].to_numpy()[rows], pred[rows]
    scaled = vpc(varied, "treg_per_uL", pred_corrected=True).bins.set_index("time")
    assert scaled.loc[7.0, "observed_p50"] == pytest.approx(np.percentile(dv * np.median(p) / p, 50), rel=1e-12)
    additive = dataclasses.replace(varied, error_kinds={**diag.error_kinds, "treg_per_uL": "additive"})
    shifted = vpc(additive, "treg_per_uL", pred_corrected=True).bins.set_index("time")
    assert shifted.loc[7.0, "observed_p50"] == pytest.approx(np.percentile(dv + np.median(p) - p, 50), rel=1e-12)


def _stratum_alone(diag, ids):
    """``diag`` with only the rows (and simulated columns) of patients ``ids``."""
    keep = diag.table["ID"].isin(ids).to_numpy()
    return dataclasses.replace(diag, table=diag.table[keep].reset_index(drop=True), simulated=diag.simulated[:, keep], simulated_cens=diag.simulated_cens[:, keep])


@pytest.mark.parametrize(("by", "levels", "titles"), [("ARM", ["placebo", "IL-2"], ["ARM = placebo", "ARM = IL-2"]), ("DOSEGRP", [2.0, 1.0], ["DOSEGRP = 2", "DOSEGRP = 1"])])
@pytest.mark.parametrize("pred_corrected", [False, True])
def test_a_stratified_vpc_is_the_vpc_of_each_strata_rows_alone(armed_diagnostics, by, levels, titles, pred_corrected):
    """One stratum per level (text or numeric), in order of first appearance; each stratum's bins,
    prediction correction and test are those of its own patients' rows alone (PRED made to differ
    between patients, so that a correction pooled over strata would show)."""
    diag = armed_diagnostics
    pred = diag.table["PRED"].to_numpy() * np.random.default_rng(3).uniform(0.7, 1.3, len(diag.table))
    diag = dataclasses.replace(diag, table=diag.table.assign(PRED=pred))
    sv = vpc(diag, "treg_per_uL", by=by, pred_corrected=pred_corrected)
    assert isinstance(sv, StratifiedVPC) and sv.by == by and list(sv) == levels and len(sv) == 2
    per_patient = dict(zip(diag.data.ids, diag.data.covariate_values(by)))
    total = 0.0
    for level, title in zip(levels, titles):
        alone = vpc(_stratum_alone(diag, [i for i, v in per_patient.items() if v == level]), "treg_per_uL", pred_corrected=pred_corrected)
        mine = sv[level]
        assert mine.stratum == title
        pd.testing.assert_frame_equal(mine.bins, alone.bins)
        pd.testing.assert_frame_equal(mine.observations, alone.observations)
        assert mine.test() == alone.test() and mine.coverage() == alone.coverage()
        total += mine.test()[0]
    # and independently of vpc(): the observed median at day 7 from the stratum's rows
    t = diag.table
    first = levels[0]
    rows = t[(t["DVID"] == "treg_per_uL") & (t["TIME"] == 7.0) & t["ID"].map(per_patient).eq(first)]
    dv = rows["DV"].to_numpy()
    if pred_corrected:
        dv = dv * np.median(rows["PRED"]) / rows["PRED"].to_numpy()
    assert sv[first].bins.set_index("time").loc[7.0, "observed_p50"] == pytest.approx(np.percentile(dv, 50), rel=1e-12)
    assert sv.test()[0] == pytest.approx(total, rel=1e-12) and 0 < sv.test()[1] <= 1
    assert list(sv.bins[by].unique()) == levels


def test_a_vpc_by_a_column_that_is_not_a_covariate_names_it_and_the_available_ones(armed_diagnostics):
    with pytest.raises(InputError, match=r"'SITE' is not a covariate of the data; its covariates are: ARM, DOSEGRP\. Fix: "):
        vpc(armed_diagnostics, "treg_per_uL", by="SITE")


def test_dense_curves_reuse_the_solve_that_diagnose_compiled(misspecified_diagnostics):
    """individual_curves packs its grids into arrays of the data's shape, so the batch solve that
    diagnose compiled runs them: no program is compiled (a fresh jit shows the listener works)."""
    import time

    diag = misspecified_diagnostics
    pr = diag.predictor
    jax.block_until_ready(predict_all(pr.problem, pr.theta, pr.beta, jnp.zeros_like(jnp.asarray(pr.eta)), pr.patients, batch_size=pr.batch_size))  # as diagnose's PRED
    compiled, ones = [], jnp.ones(7)

    def listen(event, duration, **info):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append((info.get("fun_name"), duration))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        jax.jit(lambda x: 3.0 * x + 1.0)(ones)
        start = time.perf_counter()
        curves = individual_curves(diag, diag.data.ids, dvid="treg_per_uL")
        elapsed = time.perf_counter() - start
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    print(f"dense IPRED and PRED of {diag.data.n_subjects} patients ({len(curves)} times): {elapsed:.2f} s; compiled: {compiled}")
    assert [name for name, _ in compiled] == ["jit(<lambda>)"]
    assert curves["ID"].nunique() == diag.data.n_subjects and np.isfinite(curves[["IPRED", "PRED"]].to_numpy()).all()
