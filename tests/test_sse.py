"""Stochastic simulation and estimation (il2treg.sse): tables, the null model's checks, refusals;
slow: an SSE of LUPIL-2 on a LocalCluster of 2 workers, and its resumption."""

from __future__ import annotations

import json
import math
import os
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from il2treg.errors import InputError, SpecError
from il2treg.sse import SETTINGS, replicate_seed, replicate_table, sse, summary_table, trial_table

SSE = Path(__file__).resolve().parents[1] / "fits" / "lupil2_sse"


def test_a_trial_becomes_a_nonmem_table_without_the_visits_missed():
    sledai = np.array([[[10.0, 6.0, 4.0], [8.0, np.nan, np.nan]], [[12.0, 12.0, 2.0], [6.0, 6.0, 6.0]]])
    trial = types.SimpleNamespace(sledai=sledai, visit_days=np.array([0.0, 28.0, 84.0]), arm=np.array([0, 1]))
    table = trial_table(trial, 0)
    assert list(table.columns) == ["ID", "TIME", "EVID", "AMT", "DV", "DVID", "ARM"]
    assert table["ID"].tolist() == [1, 1, 1, 2] and table["TIME"].tolist() == [0.0, 28.0, 84.0, 0.0]
    assert table["ARM"].tolist() == [1.0, 1.0, 1.0, 0.0]  # arm index 0 is IL-2 (il2treg.trial.ARMS): ARM = 1
    assert trial_table(trial, 1)["DV"].tolist() == [12.0, 12.0, 2.0, 6.0, 6.0, 6.0]


def test_a_replicates_seed_depends_on_the_seed_and_its_number_alone():
    assert replicate_seed(0, 5) == replicate_seed(0, 5)
    assert len({replicate_seed(s, r) for s in range(3) for r in range(1, 40)}) == 117


def _fit(ofv, converged=True, failed=False, e=0.1):
    return {"ofv": ofv, "converged": converged, "failed": failed, "estimates": {"Edrug": e, "P": 0.3}}


RECORDS = [
    {"replicate": 1, "sri4_p": 0.01, "full": _fit(100.0, e=0.2), "null": _fit(110.0), "error": None},  # both reject
    {"replicate": 2, "sri4_p": 0.30, "full": _fit(100.0, e=0.1), "null": _fit(102.0), "error": None},  # neither
    {"replicate": 3, "sri4_p": 0.20, "full": _fit(100.0, e=0.3), "null": _fit(104.0), "error": None},  # LRT only
    {"replicate": 4, "sri4_p": 0.01, "full": _fit(100.0, converged=False), "null": _fit(120.0), "error": None},
    {"replicate": 5, "sri4_p": 0.01, "full": None, "null": None, "error": "RuntimeError: boom"},
]


def test_each_replicate_gets_a_status_and_each_test_its_verdict():
    table = replicate_table(RECORDS, ["P", "Edrug"], critical=3.841458820694124, alpha=0.05)
    assert table["status"].tolist() == ["ok", "ok", "ok", "not_converged", "failed"]
    assert table["lrt_reject"].tolist() == [True, False, True, False, False]
    assert table["sri4_reject"].tolist() == [True, False, False, True, True]
    assert table.loc[0, "delta_ofv"] == 10.0 and math.isnan(table.loc[3, "delta_ofv"])
    assert table.loc[4, "error"] == "RuntimeError: boom" and math.isnan(table.loc[4, "Edrug"])


def test_power_and_bias_are_over_the_trials_whose_fits_converged():
    table = replicate_table(RECORDS, ["P", "Edrug"], critical=3.841458820694124, alpha=0.05)
    summary = summary_table(table, {"estimates": {"Edrug": 0.15, "P": 0.3}, "failed": False}, ["P", "Edrug"]).set_index("name")
    assert summary.loc["lrt", "n"] == 3 and summary.loc["lrt", "value"] == pytest.approx(2 / 3)
    assert summary.loc["lrt", "mc_se"] == pytest.approx(math.sqrt(2 / 3 * 1 / 3 / 3))
    assert summary.loc["sri4", "value"] == pytest.approx(1 / 3)  # on the same three trials
    e = np.array([0.2, 0.1, 0.3])
    assert summary.loc["Edrug", "bias"] == pytest.approx(e.mean() - 0.15)
    assert summary.loc["Edrug", "rmse"] == pytest.approx(np.sqrt(np.mean((e - 0.15) ** 2)))
    assert summary.loc["Edrug", "relative_bias_percent"] == pytest.approx(100 * (e.mean() - 0.15) / 0.15)


def test_without_a_judged_trial_or_a_reference_the_numbers_are_nan_not_an_error():
    table = replicate_table(RECORDS[3:], ["Edrug"], critical=3.84, alpha=0.05)
    summary = summary_table(table, {"failed": True, "estimates": {}}, ["Edrug"]).set_index("name")
    assert summary.loc["lrt", "n"] == 0 and math.isnan(summary.loc["lrt", "value"])
    assert math.isnan(summary.loc["Edrug", "reference"])
    empty = replicate_table([], ["Edrug"], critical=3.84, alpha=0.05)
    assert list(empty.columns)[:3] == ["replicate", "status", "sri4_p"] and summary_table(empty, {}, ["Edrug"]).shape[0] == 3


def _fit_file(tmp_path, name, body, error='kind = "additive"\nsigma_add = 2.0'):
    path = tmp_path / f"{name}.toml"
    path.write_text(f'model = "{(SSE / "sledai_arm.toml").as_posix()}"\ndata = "{(SSE / "trial.csv").as_posix()}"\n{body}\n'
                    f"[error.sledai]\n{error}\n", encoding="utf-8")  # fmt: skip
    return path


def test_a_null_fit_that_fixes_nothing_or_estimates_more_is_refused(tmp_path):
    full = SSE / "fit.toml"
    same = _fit_file(tmp_path, "same", "[parameters.S0]\ncv_percent = 30\n[parameters.P]\n[parameters.Edrug]\n[parameters.k]\ncv_percent = 50\n")
    with pytest.raises(SpecError, match=r"fixes no parameter of .*Fix: set the tested parameter"):
        sse("lupil2", 2, full, same, tmp_path / "out", client=object())
    more = _fit_file(tmp_path, "more", "[parameters.S0]\ncv_percent = 30\n[parameters.P]\n[parameters.Edrug]\n[parameters.k]\ncv_percent = 50\n",
                     error='kind = "combined"\nsigma_add = 2.0\nsigma_prop = 0.1')  # fmt: skip
    with pytest.raises(SpecError, match=r"estimates sigma_prop_sledai, which .* does not"):
        sse("lupil2", 2, full, more, tmp_path / "out", client=object())
    assert not (tmp_path / "out").exists()


def test_a_null_fit_that_drops_a_random_effect_is_refused(tmp_path):
    fewer = _fit_file(tmp_path, "fewer", "[parameters.S0]\ncv_percent = 30\n[parameters.P]\n[parameters.Edrug]\nestimate = false\ninitial = 0\n[parameters.k]\n")
    with pytest.raises(SpecError, match=r"leaves out omega_k, which are not fixed effects"):
        sse("lupil2", 2, SSE / "fit.toml", fewer, tmp_path / "out", client=object())


def test_a_folder_of_another_sse_or_of_something_else_is_refused(tmp_path):
    out = tmp_path / "sse"
    out.mkdir()
    (out / SETTINGS).write_text(json.dumps({"design_sha256": "0" * 64}), encoding="utf-8")
    with pytest.raises(InputError, match=r"holds an SSE with design_sha256 '0000"):
        sse("lupil2", 2, SSE / "fit.toml", SSE / "null.toml", out, client=object())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match=r"not empty and holds no SSE"):
        sse("lupil2", 2, SSE / "fit.toml", SSE / "null.toml", tmp_path / "mine", client=object())


@pytest.mark.slow
def test_an_sse_of_lupil2_reports_both_powers_and_resumes(tmp_path):
    from il2treg.cluster import connect

    before = os.environ.get("IL2TREG_CACHE")
    os.environ["IL2TREG_CACHE"] = os.environ["IL2TREG_TEST_XLA_CACHE"]
    try:
        with connect(workers=2) as client:
            first = sse("lupil2", 3, SSE / "fit.toml", SSE / "null.toml", tmp_path / "sse", reference_size=1, client=client)
            calls = []
            again = sse("lupil2", 3, SSE / "fit.toml", SSE / "null.toml", tmp_path / "sse", reference_size=1, client=client, on_replicate=calls.append)
    finally:
        os.environ.pop("IL2TREG_CACHE") if before is None else os.environ.__setitem__("IL2TREG_CACHE", before)
    assert {"skipped": 3} in calls and not [c for c in calls if "replicate" in c]  # nothing refitted
    pd.testing.assert_frame_equal(first.replicates, again.replicates, check_exact=True)
    table = first.replicates
    assert len(table) == 3 and (table["status"] == "ok").sum() >= 2
    for r in range(1, 4):  # each replicate's data was kept, and it is the trial its p-value came from
        data = pd.read_csv(tmp_path / "sse" / "data" / f"r{r:05d}.csv")
        assert set(data["ARM"]) == {0.0, 1.0} and data["ID"].nunique() == 100
    ok = table[table["status"] == "ok"]
    assert (ok["delta_ofv"] > -1e-3).all()  # nested, and the full fit also starts at the null optimum: it cannot end above it
    power, se = first.power("lrt")
    assert 0 <= power <= 1 and se == pytest.approx(math.sqrt(power * (1 - power) / len(ok)))
    reference = json.loads((tmp_path / "sse" / "reference.json").read_text(encoding="utf-8"))
    assert reference["converged"] and np.isfinite(first.summary.set_index("name").loc["Edrug", "bias"])
