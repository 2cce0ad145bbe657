"""Specification of the il2treg command: outputs, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli


def test_simulate_writes_the_long_table_and_the_figure(monkeypatch, capsys, tmp_path):
    out = tmp_path / "sim"
    code, stdout, _ = run_cli(monkeypatch, capsys, "simulate", "--regimen", "lupil2", "--n", "3", "--seed", "0", "--out", str(out), "--days", "14", "--dt", "0.5")
    assert code == 0
    frame = pd.read_csv(out / "simulation.csv")
    assert list(frame.columns) == ["ID", "TIME", "DVID", "VALUE"]
    assert sorted(frame.ID.unique()) == [1, 2, 3]
    assert frame.TIME.max() == 14.0 and sorted(frame.TIME.unique())[:3] == [0.0, 0.5, 1.0]
    assert set(frame.DVID) >= {"treg_pct_cd4", "il2_pM", "sledai"}
    assert (out / "treg_dynamics.png").stat().st_size > 10_000
    assert "treg_pct_cd4" in stdout


@pytest.mark.slow
def test_simulate_typical_gives_one_id_from_a_regimen_csv(monkeypatch, capsys, tmp_path):
    rows = tmp_path / "doses.csv"
    # the weekly doses infused over half a day (RATE, IU per day): the records ride along to the solver
    pd.DataFrame({"TIME": [0.0, 7.0], "AMT": [1e6, 1e6], "ADDL": [0, 3], "II": [0, 7], "RATE": [0, 2e6]}).to_csv(rows, index=False)
    out = tmp_path / "sim"
    code, _, _ = run_cli(monkeypatch, capsys, "simulate", "--regimen", str(rows), "--typical", "--out", str(out), "--days", "9")
    assert code == 0
    frame = pd.read_csv(out / "simulation.csv")
    assert frame.ID.unique().tolist() == [1] and np.isfinite(frame["VALUE"]).all()


def test_help_shows_every_bracketed_unit_and_table_name(monkeypatch, capsys):
    """Rich reads "[pM]" in a help text as markup and drops it; every option's brackets reach --help."""
    import re

    import typer

    from il2treg.cli import app

    def commands(group, path: tuple[str, ...] = ()):
        for name, command in group.commands.items():
            if hasattr(command, "commands"):  # a group of commands
                yield from commands(command, (*path, name))
            else:
                yield (*path, name), command

    checked = 0
    for path, command in commands(typer.main.get_command(app)):
        wanted = {m for p in command.params for m in re.findall(r"\[[^\]\s]+\]", (getattr(p, "help", None) or "").replace("\\[", "["))}
        if wanted:
            code, stdout, _ = run_cli(monkeypatch, capsys, *path, "--help")
            assert code == 0
            assert not [w for w in wanted if w not in stdout], (path, [w for w in wanted if w not in stdout])
            checked += len(wanted)
    assert checked >= 6  # fit's [saem] and [nuts]; regimens optimise's [%], [pM], [IU], [day]


def test_existing_output_is_never_overwritten_without_force(monkeypatch, capsys, tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    (out / "keep.txt").write_text("user results")
    code, _, err = run_cli(monkeypatch, capsys, "simulate", "--typical", "--out", str(out), "--days", "1")
    assert code == 2
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err
    assert (out / "keep.txt").read_text() == "user results"


@pytest.mark.parametrize(
    "content, message",
    [("TIME\n0\n", "AMT"), ("TIME,AMT\n0,-5\n", "AMT"), ("TIME,AMT\n3,1\n1,1\n", "TIME"), ("TIME,AMT,CMT\n0,1,3\n", "CMT 3"),
     ("TIME,AMT,RATE\n0,1,-1\n", "RATE -1")],
    ids=["missing-column", "negative-amount", "unsorted", "unknown-compartment", "modelled-rate"],
)
def test_bad_regimen_csv_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    code, _, err = run_cli(monkeypatch, capsys, "simulate", "--regimen", str(path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert err.startswith("il2treg: error:") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_unknown_regimen_name_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "simulate", "--regimen", "lupil3", "--out", str(tmp_path / "o"))
    assert code == 2 and "lupil3" in err and "lupil2" in err and err.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (("--regimens", "lupil2,placebo", "--reference", "placebo"), "only --draws writes"),
    (("--regimens", "lupil2", "--draws", "2", "--reference", "lupil2"), "needs another regimen"),
    (("--regimens", "lupil2,placebo", "--draws", "2", "--reference", "he2020"), "not among --regimens"),
])  # fmt: skip
def test_a_reference_regimen_the_comparison_cannot_use_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path, args, message):
    code, _, err = run_cli(monkeypatch, capsys, "regimens", "compare", *args, "--n", "4", "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_invalid_option_value_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "simulate", "--n", "0", "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "--n" in err


def test_data_check_summarises_a_valid_file(monkeypatch, capsys, tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame(
        {"ID": [1, 1, 1], "TIME": [0.0, 0.0, 7.0], "EVID": [1, 0, 0], "AMT": [1.5e6, None, None],
         "DVID": [None, "treg_pct_cd4", "treg_pct_cd4"], "DV": [None, 5.0, 8.0]}
    ).to_csv(path, index=False)  # fmt: skip
    code, stdout, _ = run_cli(monkeypatch, capsys, "data", "check", str(path))
    assert code == 0 and "treg_pct_cd4" in stdout


def test_data_check_reads_the_dvids_of_the_model_given(monkeypatch, capsys, tmp_path):
    path = tmp_path / "pk.csv"
    pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 0.5], "EVID": [1, 0], "AMT": [100.0, None], "DVID": [None, "conc"], "DV": [None, 3.2]}).to_csv(path, index=False)
    code, stdout, _ = run_cli(monkeypatch, capsys, "data", "check", str(path), "--model", "pk_1cmt_iv")
    assert code == 0 and "conc" in stdout
    code, _, err = run_cli(monkeypatch, capsys, "data", "check", str(path))  # the IL-2 model has no 'conc'
    assert code == 2 and err.count("\n") == 1 and "'conc'" in err, err


def test_data_check_reports_a_bad_file_in_one_line(monkeypatch, capsys, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("ID,TIME,EVID,AMT,DVID,DV\n1,0,0,,treg_pct_cd4,5\n1,-1,0,,treg_pct_cd4,6\n")
    code, _, err = run_cli(monkeypatch, capsys, "data", "check", str(path))
    assert code == 2 and err.count("\n") == 1 and "TIME" in err


@pytest.mark.slow
def test_trial_json_prints_exactly_one_object_with_the_documented_keys(monkeypatch, capsys):
    import json

    code, stdout, _ = run_cli(monkeypatch, capsys, "trial", "--design", "lupil2", "--replicates", "20", "--seed", "0", "--json")
    assert code == 0
    summary = json.loads(stdout)  # the whole output is one JSON object
    assert set(summary) == {"itt", "per_protocol", "replicates"} and summary["replicates"] == 20
    for analysis in ("itt", "per_protocol"):
        assert set(summary[analysis]) == {"il2", "placebo", "difference", "power"}
        assert 0.0 <= summary[analysis]["il2"] <= 1.0
        assert summary[analysis]["difference"] == pytest.approx(summary[analysis]["il2"] - summary[analysis]["placebo"])


def test_trial_with_a_placebo_regimen_in_the_active_arm_shows_no_effect(monkeypatch, capsys, tmp_path):
    import json

    rows = tmp_path / "none.csv"
    pd.DataFrame({"TIME": [0.0], "AMT": [0.0]}).to_csv(rows, index=False)
    code, stdout, _ = run_cli(monkeypatch, capsys, "trial", "--replicates", "20", "--seed", "0", "--regimen", str(rows), "--json")
    assert code == 0
    itt = json.loads(stdout)["itt"]
    assert abs(itt["difference"]) < 0.05


def test_unknown_trial_design_is_one_line_and_exit_2(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "trial", "--design", "nope")
    assert code == 2 and err.count("\n") == 1 and "nope" in err


def test_fit_with_an_unknown_method_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "fit", "fits/lupil2_nuts/fit.toml", "--method", "mcmc", "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "mcmc" in err and "nuts" in err
    assert not (tmp_path / "o").exists()


def test_profile_of_an_unknown_parameter_is_one_line_and_exit_2(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "profile", "fits/lupil2_nuts/fit.toml", "--parameter", "ka", "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and "'ka'" in err and "kout_treg" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_diagnose_writes_tables_and_figures_and_names_the_failed_check(monkeypatch, capsys, tmp_path, misspecified_fit):
    from il2treg.fit import save_fit

    save_fit(misspecified_fit, tmp_path / "fit")
    code, out, _ = run_cli(monkeypatch, capsys, "diagnose", str(tmp_path / "fit"), "--out", str(tmp_path / "diag"), "--n-sim", "200")
    assert code == 0
    assert "treg_per_uL: mean CWRES" in out
    written = {p.name for p in (tmp_path / "diag" / "figures").iterdir()}
    assert written == {f"{kind}_{dvid}.png" for kind in ("individual", "gof", "vpc", "vpc_change", "course") for dvid in ("treg_per_uL", "tconv_per_uL")}
    assert (tmp_path / "diag" / "diagnostics.csv").is_file() and (tmp_path / "diag" / "summary.csv").is_file()
    code, _, err = run_cli(monkeypatch, capsys, "diagnose", str(tmp_path / "fit"), "--out", str(tmp_path / "diag"))
    assert code == 2 and "already exists" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_diagnose_by_a_column_that_is_not_a_covariate_is_one_line_before_any_simulation(monkeypatch, capsys, tmp_path, misspecified_fit):
    from il2treg.fit import save_fit

    save_fit(misspecified_fit, tmp_path / "fit")
    code, _, err = run_cli(monkeypatch, capsys, "diagnose", str(tmp_path / "fit"), "--out", str(tmp_path / "diag"), "--vpc-by", "ARM")
    assert code == 2 and err.count("\n") == 1 and "--vpc-by ARM" in err and "(none)" in err and "Fix:" in err
    assert not (tmp_path / "diag").exists()


@pytest.mark.slow
def test_regimens_compare_writes_the_table_and_figure(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(monkeypatch, capsys, "regimens", "compare", "--regimens", "lupil2,weekly_only", "--n", "20", "--out", str(tmp_path / "c"))
    assert code == 0 and "treg_mean_fold" in out and "failed solves: 0" in out
    assert {p.name for p in (tmp_path / "c").iterdir()} == {"table.csv", "per_patient.csv", "comparison.png"}
    table = pd.read_csv(tmp_path / "c" / "table.csv")
    assert set(table["regimen"]) == {"lupil2", "weekly_only"}
    code, _, err = run_cli(monkeypatch, capsys, "regimens", "compare", "--regimens", "lupil2,nope", "--out", str(tmp_path / "d"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'nope'" in err and not (tmp_path / "d").exists()


def test_regimens_optimise_reports_an_infeasible_set_in_one_line(monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(monkeypatch, capsys, "regimens", "optimise", "--out", str(tmp_path / "o"), "--nk-max", "-5")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "infeasible" in err and not (tmp_path / "o").exists()


def test_regimens_list_names_every_library_regimen(monkeypatch, capsys):
    from il2treg.regimen import NAMED_REGIMENS

    code, out, _ = run_cli(monkeypatch, capsys, "regimens", "list")
    assert code == 0 and all(name in out for name in NAMED_REGIMENS)


@pytest.mark.slow
def test_a_model_file_of_ones_own_runs_through_every_command(monkeypatch, capsys, tmp_path):
    """A mechanism the package does not ship (tests/models/il2_treg_teff.toml: IL-2 drives Tregs,
    Tregs suppress effector T cells, a latent SLEDAI), written to a temporary folder: simulate,
    fit (to data simulated from it), diagnose, regimens compare and trial, each reading the
    model's own observables and parameters."""
    import il2treg
    from il2treg import regimen as rg

    model_file = tmp_path / "il2_treg_teff.toml"
    shutil.copy(Path(__file__).parent / "models" / "il2_treg_teff.toml", model_file)
    model = il2treg.load_model(model_file)
    assert model.observable_names == ("treg_per_uL", "teff_per_uL", "sledai")

    code, stdout, _ = run_cli(monkeypatch, capsys, "simulate", "--model", str(model_file), "--n", "4", "--days", "28", "--dt", "1", "--out", str(tmp_path / "sim"))
    assert code == 0 and "teff_per_uL" in stdout
    assert set(pd.read_csv(tmp_path / "sim" / "simulation.csv").DVID) == {"treg_per_uL", "teff_per_uL", "sledai"}

    # Data simulated from the model itself, its own DVID name for Teff mapped in the fit file.
    n, times, reg = 12, np.array([0.0, 1, 4, 7, 14, 28, 56, 84]), rg.lupil2()
    truth = {"emax_treg": 5.0, "kout_treg": 0.12, "treg0": 30.0}
    sim = il2treg.simulate(model, reg, times, il2treg.sample_population(model, n, seed=1))
    rng = np.random.default_rng(2)
    rows = []
    for i in range(n):
        rows += [{"ID": i + 1, "TIME": float(t), "EVID": 1, "AMT": 1.5e6, "DVID": "", "DV": np.nan} for t in reg.times]
        rows += [{"ID": i + 1, "TIME": t, "EVID": 0, "AMT": np.nan, "DVID": {"treg_per_uL": "TREG", "teff_per_uL": "TEFF"}[name],
                  "DV": float(sim[name][i, k]) * np.exp(0.1 * rng.normal())}
                 for k, t in enumerate(times) for name in ("treg_per_uL", "teff_per_uL")]  # fmt: skip
    pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"], kind="stable").to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "fit.toml").write_text(
        'model = "il2_treg_teff.toml"\ndata = "data.csv"\ndvids = { TREG = "treg_per_uL", TEFF = "teff_per_uL" }\n'
        "[parameters.emax_treg]\ncv_percent = 30\n[parameters.kout_treg]\n[parameters.treg0]\ncv_percent = 20\n"
        '[error.treg_per_uL]\nkind = "proportional"\nsigma_prop = 0.2\n'
        '[error.teff_per_uL]\nkind = "proportional"\nsigma_prop = 0.1\nestimate = []\n'
    )
    code, stdout, _ = run_cli(monkeypatch, capsys, "fit", str(tmp_path / "fit.toml"), "--out", str(tmp_path / "res"), "--no-figures")
    assert code == 0, stdout
    estimates = pd.read_csv(tmp_path / "res" / "parameters.csv").set_index("parameter")
    for name, value in truth.items():  # the 95% interval holds the value the data were simulated with
        assert estimates.loc[name, "ci_low"] < value < estimates.loc[name, "ci_high"], (name, estimates.loc[name].to_dict())
    predictions = pd.read_csv(tmp_path / "res" / "predictions.csv")
    assert set(predictions.DVID) == {"treg_per_uL", "teff_per_uL"}

    code, stdout, err = run_cli(monkeypatch, capsys, "diagnose", str(tmp_path / "res"), "--out", str(tmp_path / "diag"), "--n-sim", "50")
    assert code == 0, err
    assert {"vpc_treg_per_uL.png", "individual_teff_per_uL.png"} <= {p.name for p in (tmp_path / "diag" / "figures").iterdir()}

    code, stdout, _ = run_cli(monkeypatch, capsys, "regimens", "compare", "--model", str(model_file), "--regimens", "lupil2,weekly_only",
                              "--n", "10", "--out", str(tmp_path / "cmp"))  # fmt: skip
    assert code == 0, stdout
    table = pd.read_csv(tmp_path / "cmp" / "table.csv")
    assert {"treg_per_uL_max", "teff_per_uL_mean", "sledai_w12"} <= set(table.metric)
    peak = table[table.metric == "treg_per_uL_max"].set_index("regimen")["median"]
    assert peak["lupil2"] > peak["weekly_only"]  # the five daily induction doses raise the Treg peak

    code, stdout, _ = run_cli(monkeypatch, capsys, "trial", "--model", str(model_file), "--replicates", "2", "--json")
    assert code == 0, stdout
    summary = json.loads(stdout)
    assert summary["replicates"] == 2 and 0.0 <= summary["itt"]["il2"] <= 1.0


def test_trial_of_a_model_without_sledai_is_one_line_and_exit_2(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "trial", "--model", "pk_1cmt_oral", "--replicates", "2")
    assert code == 2 and err.count("\n") == 1 and "'pk_1cmt_oral' has no sledai observable" in err and ". Fix: add them" in err, err
