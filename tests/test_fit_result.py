"""Specification of fit results: the folder, its exact round trip, atomic writes, ArviZ, the CLI.

One small fit (5 simulated patients, Treg counts, CD25 and SLEDAI; 2 fixed effects, 1 random
effect, 2 estimated residual SDs, 3 iterations) is run once per module, so compilation is paid once.
"""

from __future__ import annotations

import json
import sys
import warnings

import numpy as np
import pandas as pd
import pytest

import il2treg
from il2treg import cli
from il2treg.errors import InputError
from il2treg.fit import result as result_module
from il2treg.fit.estimators import Saem
from il2treg.fit.result import FILES, POSTERIOR_METHOD, FitResult, load_fit, save
from il2treg.fit.run import run_fit

FIT_TOML = """\
model = "il2_treg_sledai"
data = "data.csv"

[parameters.emax_treg]
initial = 4.0
[parameters.treg0]
cv_percent = 40

[error.treg_per_uL]
kind = "proportional"
sigma_prop = 0.12
[error.cd25_treg_rel]
kind = "proportional"
sigma_prop = 0.1
estimate = []
[error.sledai]
kind = "ordinal"
sigma_add = 1.5

[optimiser]
max_iter = 3
"""
N_PATIENTS = 5
TIMES = (0.0, 7.0, 14.0, 28.0, 56.0, 84.0)
SLEDAI_TIMES = (0.0, 28.0, 84.0)


def _write_data(path):
    model = il2treg.load_model()
    params = il2treg.sample_population(model, N_PATIENTS, 3)
    reg = il2treg.regimen.lupil2()
    sim = il2treg.simulate(model, reg, np.asarray(TIMES), params)
    rng = np.random.default_rng(3)
    rows = []
    for i in range(N_PATIENTS):
        rows += [{"ID": i + 1, "TIME": float(t), "EVID": 1, "AMT": float(a), "DVID": None, "DV": None} for t, a in zip(reg.times, reg.amounts)]
        for j, t in enumerate(TIMES):
            for d in ("treg_per_uL", "cd25_treg_rel"):
                rows.append({"ID": i + 1, "TIME": t, "EVID": 0, "AMT": None, "DVID": d, "DV": float(sim[d][i, j]) * float(np.exp(0.1 * rng.normal()))})
            if t in SLEDAI_TIMES:
                score = max(0.0, float(np.round(float(sim["sledai"][i, j]) + 1.5 * rng.normal())))
                rows.append({"ID": i + 1, "TIME": t, "EVID": 0, "AMT": None, "DVID": "sledai", "DV": score})
    pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"], kind="stable").to_csv(path, index=False)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fits") / "tiny"
    folder.mkdir()
    _write_data(folder / "data.csv")
    (folder / "fit.toml").write_text(FIT_TOML)
    events = []
    out = folder / "results"
    result = run_fit(folder / "fit.toml", out, progress=events.append)
    return {"folder": folder, "out": out, "result": result, "events": events}


def test_run_fit_writes_every_file_and_reports_progress(fitted):
    assert sorted(p.name for p in fitted["out"].iterdir()) == sorted([*FILES, "diagnostics.csv", "figures"])
    figures = {p.name for p in (fitted["out"] / "figures").iterdir()}
    fitted_types = set(fitted["result"].predictions.loc[fitted["result"].predictions["USED"], "DVID"])
    assert figures == {f"{kind}_{dvid}.png" for kind in ("individual", "gof", "vpc", "vpc_change", "course") for dvid in fitted_types}
    stages = [e["stage"] for e in fitted["events"]]
    assert stages[0] == "start" and stages[-2:] == ["figures", "writing"]
    iterations = [e for e in fitted["events"] if e["stage"] == "estimation"]
    assert [e["iteration"] for e in iterations] == [1, 2, 3]
    assert all({"ofv", "grad_max", "elapsed_s"} <= e.keys() for e in iterations)
    r = fitted["result"]
    assert r.iterations == 3 and r.n_patients == N_PATIENTS and r.n_observations == N_PATIENTS * (2 * len(TIMES) + len(SLEDAI_TIMES))
    assert r.psi_names == ("emax_treg", "treg0", "omega_treg0", "sigma_prop_treg_per_uL", "sigma_add_sledai")
    assert r.aic == pytest.approx(r.ofv + 2 * 5) and np.isfinite(r.condition_number)


def test_load_fit_reads_the_folder_back_exactly(fitted):
    r, back = fitted["result"], load_fit(fitted["out"])
    assert back.equals(r)
    np.testing.assert_array_equal(back.psi, r.psi)
    np.testing.assert_array_equal(back.covariance, r.covariance)
    np.testing.assert_array_equal(back.posterior, r.posterior)
    np.testing.assert_array_equal(back.history, r.history)
    assert back.ofv == r.ofv and back.timing == r.timing and back.spec_text == FIT_TOML
    for name in ("estimates", "individual", "predictions"):
        pd.testing.assert_frame_equal(getattr(back, name), getattr(r, name), check_exact=True)


def test_equals_notices_a_one_ulp_change(fitted):
    import dataclasses

    r = fitted["result"]
    psi = r.psi.copy()
    psi[0] = np.nextafter(psi[0], np.inf)
    assert not dataclasses.replace(r, psi=psi).equals(r)
    table = r.predictions.copy()
    table.loc[0, "IPRED"] = np.nextafter(table.loc[0, "IPRED"], 0)
    assert not dataclasses.replace(r, predictions=table).equals(r)


def test_summary_json_is_strict_json_with_non_finite_values_as_strings(fitted, tmp_path):
    import dataclasses

    r = dataclasses.replace(fitted["result"], condition_number=float("inf"), covariance=np.full_like(fitted["result"].covariance, np.nan))
    save(r, tmp_path / "nan")
    text = (tmp_path / "nan" / "summary.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert load_fit(tmp_path / "nan").equals(r)


def test_existing_folder_is_not_overwritten_without_force(fitted, tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (out / "keep.txt").write_text("earlier")
    with pytest.raises(InputError, match=r"already exists. Fix: choose another --out or pass --force"):
        save(fitted["result"], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    save(fitted["result"], out, force=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES)
    assert load_fit(out).equals(fitted["result"])


def _fail_midway(monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("interrupted while writing posterior.nc")

    monkeypatch.setattr(result_module, "_write_posterior", boom)


def test_an_interrupted_write_leaves_nothing(fitted, tmp_path, monkeypatch):
    _fail_midway(monkeypatch)
    with pytest.raises(RuntimeError, match="interrupted"):
        save(fitted["result"], tmp_path / "res")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one


def test_an_interrupted_forced_write_keeps_the_old_folder(fitted, tmp_path, monkeypatch):
    out = tmp_path / "res"
    save(fitted["result"], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _fail_midway(monkeypatch)
    with pytest.raises(RuntimeError, match="interrupted"):
        save(fitted["result"], out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["res"]


def test_load_fit_names_a_missing_file(fitted, tmp_path):
    out = tmp_path / "res"
    save(fitted["result"], out)
    (out / "posterior.nc").unlink()
    with pytest.raises(InputError, match=r"has no posterior.nc"):
        load_fit(out)
    with pytest.raises(InputError, match="does not exist"):
        load_fit(tmp_path / "nowhere")


def test_posterior_opens_in_arviz_and_summarises(fitted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az

        idata = az.from_netcdf(fitted["out"] / "posterior.nc")
        summary = az.summary(idata, kind="stats")
    r = fitted["result"]
    assert set(idata.groups()) >= {"posterior", "observed_data", "constant_data"}
    assert idata.posterior.attrs["method"] == POSTERIOR_METHOD
    assert dict(idata.posterior.sizes) == {"chain": 4, "draw": 500}
    assert list(summary.index) == list(r.psi_names)
    estimates = r.estimates.set_index("parameter")
    for name in r.psi_names:  # draws centred on the estimate (natural scale), spread like the SE
        assert summary.loc[name, "mean"] == pytest.approx(estimates.loc[name, "estimate"], rel=0.15)
    assert idata.observed_data["sledai"].size == N_PATIENTS * len(SLEDAI_TIMES)
    np.testing.assert_array_equal(idata.observed_data["treg_per_uL"].values, r.predictions.query("DVID == 'treg_per_uL'")["DV"].values)


def test_predictions_have_pred_ipred_and_residuals(fitted):
    p = fitted["result"].predictions
    assert list(p.columns) == ["ID", "ROW", "TIME", "DVID", "DV", "CENS", "USED", "PRED", "IPRED", "RES", "IRES", "IWRES"]
    assert len(p) == N_PATIENTS * (2 * len(TIMES) + len(SLEDAI_TIMES)) and p["ROW"].is_monotonic_increasing
    np.testing.assert_array_equal(p["RES"], p["DV"] - p["PRED"])
    np.testing.assert_array_equal(p["IRES"], p["DV"] - p["IPRED"])
    sigma = fitted["result"].residual["treg_per_uL"]["sigma_prop"]
    treg = p[p["DVID"] == "treg_per_uL"]
    np.testing.assert_allclose(treg["IWRES"], treg["IRES"] / (sigma * treg["IPRED"]), rtol=1e-12)
    # treg0 carries the only random effect: at day 0 IPRED is the patient's own baseline, PRED the typical one
    day0 = treg[treg["TIME"] == 0.0]
    individual = fitted["result"].individual
    np.testing.assert_allclose(day0["IPRED"].values, individual["treg0"].values, rtol=1e-6)
    assert np.allclose(day0["PRED"].values, day0["PRED"].values[0])


def test_individual_results_include_ebes_and_the_sledai_link(fitted):
    ind = fitted["result"].individual
    assert list(ind.columns) == [
        "ID", "included", "inner_status", "status", "ETA_treg0", "emax_treg", "treg0", "sledai_latent_day0",
        "sledai_latent_day84", "sledai_change_day84", "score_change_day84", "p_sri4_day84",
    ]  # fmt: skip
    assert ind["ID"].tolist() == list(range(1, N_PATIENTS + 1)) and ind["included"].all()
    assert (ind["status"] == "converged").all()
    assert ((ind["p_sri4_day84"] > 0) & (ind["p_sri4_day84"] <= 0.956)).all()
    np.testing.assert_allclose(ind["sledai_change_day84"], ind["sledai_latent_day84"] - ind["sledai_latent_day0"])
    assert (ind["sledai_change_day84"] < 0).all()


def test_report_fits_one_screen(fitted):
    text = (fitted["out"] / "report.md").read_text()
    r = fitted["result"]
    assert f"| {r.ofv:.3f} | {r.aic:.3f} | {r.bic:.3f} |" in text
    assert "| treg0 |" in text and "sigma_add_sledai" in text and "BSV CV%" in text and "shrinkage" in text
    assert f"| {N_PATIENTS} (0) | {r.n_observations} |" in text
    assert len(text.splitlines()) < 40


@pytest.mark.slow
def test_cli_fit_shows_progress_and_where_the_results_are(fitted, monkeypatch, capsys):
    out = fitted["folder"] / "cli_results"
    monkeypatch.setattr(sys, "argv", ["il2treg", "fit", str(fitted["folder"] / "fit.toml"), "--out", str(out)])
    with pytest.raises(SystemExit) as info:
        cli.main()
        raise SystemExit(0)
    stdout, _ = capsys.readouterr()
    assert info.value.code == 0
    assert "iteration 3: OFV" in stdout and "max |gradient|" in stdout
    assert str(out) in stdout and "OFV" in stdout
    assert isinstance(load_fit(out), FitResult)


# ----------------------------------------------------------------------------- identifiability

_FITS = __import__("pathlib").Path(__file__).resolve().parent.parent / "fits"


def test_identifiability_flags_r50_in_the_committed_fit_that_estimates_it():
    """LUPIL-2's three SLEDAI visits do not separate imax, r50 and kd (fits/lupil2_identifiability)."""
    warnings_ = load_fit(_FITS / "lupil2_identifiability" / "results").identifiability()
    assert any(w.startswith("r50: %RSE") for w in warnings_)
    assert load_fit(_FITS / "lupil2_virtual" / "results").identifiability() == []


def test_identifiability_names_strongly_correlated_pairs_and_a_failed_covariance():
    import dataclasses

    base = load_fit(_FITS / "lupil2_virtual" / "results")
    cov = np.array(base.covariance)
    i, j = base.psi_names.index("imax"), base.psi_names.index("pmax")
    cov[i, j] = cov[j, i] = 0.99 * np.sqrt(cov[i, i] * cov[j, j])
    said = dataclasses.replace(base, covariance=cov).identifiability()
    assert any(w.startswith("imax and pmax: correlation +0.990") for w in said)
    failed = dataclasses.replace(base, covariance=np.full_like(cov, np.nan)).identifiability()
    assert len(failed) == 1 and failed[0].startswith("the covariance step failed")


def test_an_saem_trace_and_settings_round_trip_exactly(fitted, tmp_path):
    import dataclasses

    r = fitted["result"]
    trace = np.random.default_rng(0).normal(size=(9, len(r.psi_names)))
    saem = dataclasses.replace(r, estimator=Saem(), trace=trace, settings={**r.settings, "saem_burn_in": 2, "saem_explore": 4, "saem_acceptance_walk": 0.31})
    save(saem, tmp_path / "saem")
    back = load_fit(tmp_path / "saem")
    assert back.equals(saem) and not back.equals(r)
    np.testing.assert_array_equal(back.trace, trace)
    assert back.summary().startswith(f"# Fit {r.name}") and "SAEM population fit" in back.summary()
    assert load_fit(fitted["out"]).trace is None  # FOCE-I: no trace


@pytest.mark.slow
def test_run_fit_with_saem_writes_its_trace_and_settings(fitted, tmp_path):
    """The same small problem by SAEM (1 + 4 + 2 iterations): the FOCE-I objective's compiled
    EBE search, OFV and covariance step are reused; the trace, the [saem] settings and the
    acceptance rates land in the folder and read back exactly."""
    folder = fitted["folder"]
    (folder / "saem.toml").write_text(FIT_TOML + "\n[saem]\nburn_in = 1\nexplore = 4\nsmooth = 2\nprior_draws = 1\nwalk_steps = 1\n")
    events = []
    out = tmp_path / "saem"
    result = run_fit(folder / "saem.toml", out, estimator=Saem(), progress=events.append, figures=False)  # the figure: test_plots
    assert result.method == "saem" and result.iterations == 7 and result.trace.shape == (8, len(result.psi_names))
    assert [e["iteration"] for e in events if e["stage"] == "estimation"] == [2, 3, 4, 5, 6, 7]  # none in the burn-in
    assert result.settings["saem_explore"] == 4 and 0.0 <= result.settings["saem_acceptance_walk"] <= 1.0
    assert np.isfinite(result.ofv) and np.all(np.isfinite(result.covariance))
    assert load_fit(out).equals(result)


@pytest.mark.slow
def test_write_figures_adds_the_vpc_stratified_by_a_covariate_when_asked(armed_diagnostics, tmp_path):
    from il2treg.fit.figures import write_figures

    written = {p.name for p in write_figures(armed_diagnostics, tmp_path, vpc_by="ARM")}
    assert {"vpc_by_ARM_treg_per_uL.png", "vpc_by_ARM_tconv_per_uL.png"} <= written
    assert all((tmp_path / "figures" / name).stat().st_size > 10_000 for name in written if name.endswith(".png"))
    with pytest.raises(InputError, match="'SITE' is not a covariate"):
        write_figures(armed_diagnostics, tmp_path / "other", vpc_by="SITE")
    assert not (tmp_path / "other").exists()
