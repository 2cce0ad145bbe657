"""The bootstrap (il2treg.fit.bootstrap) on Dask (il2treg.cluster).

Fast: the resampling, the tables and the refusals. Slow: NONMEM's phenobarbital fit on a
LocalCluster of 2 workers: an interrupted and resumed bootstrap, and one whose worker is killed
mid-run, each equal bit for bit to an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from il2treg.errors import InputError
from il2treg.fit.bootstrap import (
    CI,
    FAILED,
    NOT_CONVERGED,
    OK,
    REPLICATES,
    SETTINGS,
    TABLE,
    bootstrap,
    interval_table,
    read_replicates,
    replicate_table,
    resample_positions,
    stratum_column,
)
from il2treg.fit.spec import read_fit_spec

PHENO = Path(__file__).resolve().parents[1] / "fits" / "pheno" / "fit.toml"


@pytest.fixture(scope="module")
def pheno():
    return read_fit_spec(PHENO)


@pytest.fixture(scope="module")
def armed(pheno):
    """Pheno's data with an ARM covariate: the first 20 patients arm 0, the others arm 1."""
    import equinox as eqx

    ds = pheno.dataset
    arm = (np.arange(ds.n_subjects) >= 20).astype(float)
    return eqx.tree_at(lambda d: d.covariates, ds, {**ds.covariates, "ARM": arm})


def test_a_replicate_draws_the_same_patients_whatever_else_runs(pheno):
    ds = pheno.dataset
    a = resample_positions(ds, 7, 0, None)
    assert np.array_equal(a, resample_positions(ds, 7, 0, None))
    assert not np.array_equal(a, resample_positions(ds, 8, 0, None))
    assert not np.array_equal(a, resample_positions(ds, 7, 1, None))
    assert a.size == ds.n_subjects and a.min() >= 0 and a.max() < ds.n_subjects
    assert np.unique(a).size < ds.n_subjects  # with replacement: 59 draws of 59 repeat some


def test_stratified_resamples_keep_each_arms_size(armed):
    arm = armed.covariates["ARM"]
    assert stratum_column(armed, "auto") == "ARM"
    for r in range(1, 6):
        pos = resample_positions(armed, r, 0, "ARM")
        assert pos.size == armed.n_subjects
        assert np.sum(arm[pos] == 0) == 20 and np.sum(arm[pos] == 1) == armed.n_subjects - 20


def test_strata_auto_without_an_arm_is_none_and_an_unknown_column_is_refused(pheno):
    assert stratum_column(pheno.dataset, "auto") is None
    assert stratum_column(pheno.dataset, "none") is None
    with pytest.raises(InputError, match=r"--strata 'SEX' is not a covariate.*WGT"):
        stratum_column(pheno.dataset, "SEX")


def test_a_resample_renumbers_its_patients_and_keeps_the_datas_shape(pheno):
    ds = pheno.dataset
    pos = np.array([3, 3, 0, 58])
    r = ds.resample(pos)
    assert r.ids == (1, 2, 3, 4)
    assert r.obs_time.shape == (4, ds.obs_time.shape[1]) and r.dose_time.shape == (4, ds.dose_time.shape[1])
    np.testing.assert_array_equal(r.obs_value, ds.obs_value[pos])
    np.testing.assert_array_equal(r.covariates["WGT"], ds.covariates["WGT"][pos])
    for bad, message in (([], "no positions"), ([0, 59], "position 59, outside 0..58"), ([-1], "position -1")):
        with pytest.raises(InputError, match=message):
            ds.resample(bad)


def _records():
    rng = np.random.default_rng(0)
    out = []
    for r in range(1, 41):
        status = OK if r % 10 else (FAILED if r == 10 else NOT_CONVERGED)
        est = None if status == FAILED else {"a": float(rng.normal(1.0, 0.1)), "b": float(rng.lognormal(0, 0.3))}
        out.append({"replicate": r, "status": status, "ofv": float("nan") if est is None else 100.0 + r, "iterations": 5, "estimates": est,
                    "error": "boom" if est is None else None})  # fmt: skip
    return out


def test_the_percentile_interval_is_that_of_the_converged_replicates():
    table = replicate_table(_records(), ["a", "b"])
    original = pd.DataFrame({"parameter": ["a", "b", "c"], "unit": ["1", "L", "1"], "estimated": [True, True, False], "estimate": [1.0, 1.1, 3.0],
                             "se": [0.1, 0.3, np.nan], "ci_low": [0.8, 0.6, np.nan], "ci_high": [1.2, 2.0, np.nan]})  # fmt: skip
    ci = interval_table(original, table, level=0.9)
    assert list(ci["parameter"]) == ["a", "b"]  # estimated parameters only
    ok = table[table["status"] == OK]
    assert len(ok) == 36 and (ci["n"] == 36).all()
    np.testing.assert_array_equal(ci[["pct_low", "pct_high"]].to_numpy()[1], np.percentile(ok["b"], [5, 95]))
    assert ci.loc[0, "bias"] == pytest.approx(ok["a"].mean() - 1.0, rel=1e-12)
    assert ci.loc[0, "boot_se"] == pytest.approx(ok["a"].std(ddof=1), rel=1e-12)
    assert ci.loc[1, "ci_low"] == 0.6 and ci.loc[1, "ci_high"] == 2.0  # the covariance step's, carried over
    assert table.loc[table["replicate"] == 10, "error"].item() == "boom"


def test_a_folder_of_another_bootstrap_is_refused_before_any_work(tmp_path):
    out = tmp_path / "boot"
    out.mkdir()
    (out / SETTINGS).write_text(json.dumps({"inputs_sha256": "0" * 64, "seed": 0, "strata": None}), encoding="utf-8")
    with pytest.raises(InputError, match=r"holds a bootstrap with inputs_sha256 '0000.*Fix: choose another --out"):
        bootstrap(PHENO, 2, out, client=object())  # refused before the client is used
    assert sorted(p.name for p in out.iterdir()) == [SETTINGS]


def test_a_folder_that_is_not_a_bootstrap_is_never_written_into(tmp_path):
    (tmp_path / "results.csv").write_text("mine", encoding="utf-8")
    with pytest.raises(InputError, match=r"not empty and holds no bootstrap"):
        bootstrap(PHENO, 2, tmp_path, client=object())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_a_stratum_of_one_patient_is_refused(pheno):
    with pytest.raises(InputError, match=r"--strata 'WGT' has a stratum of one patient"):
        stratum_column(pheno.dataset, "WGT")  # a continuous column: most weights occur once


def test_the_figure_has_a_panel_per_parameter_with_both_intervals():
    from il2treg.plots import plot_bootstrap

    table = replicate_table(_records(), ["a", "b"])
    original = pd.DataFrame({"parameter": ["a", "b"], "unit": ["1", "L"], "estimated": [True, True], "estimate": [1.0, 1.1],
                             "se": [0.1, 0.3], "ci_low": [0.8, 0.6], "ci_high": [1.2, 2.0]})  # fmt: skip
    fig = plot_bootstrap(table, interval_table(original, table))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and axes[1].get_xlabel() == "b [L]"
    assert sum(len(ax.patches) > 1 for ax in axes) == 2  # histogram bars and the shaded covariance interval
    assert "36 converged of 40" in fig.get_suptitle()
    with pytest.raises(InputError, match="no estimated parameters"):
        plot_bootstrap(table, interval_table(original.iloc[:0], table))


def test_an_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x", encoding="utf-8")
    with pytest.raises(InputError, match=r"is a file"):
        bootstrap(PHENO, 2, tmp_path / "f", client=object())


def test_a_corrupt_replicate_record_names_its_file(tmp_path):
    (tmp_path / REPLICATES).mkdir()
    (tmp_path / REPLICATES / "r00003.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(InputError, match=r"r00003.json: not a replicate record.*Fix: delete the file"):
        read_replicates(tmp_path)


@pytest.mark.parametrize(("args", "message"), [
    (["--replicates", "0"], "--replicates"),
    (["--replicates", "2", "--strata", "SEX"], "--strata 'SEX' is not a covariate"),
])  # fmt: skip
def test_cli_refusals_are_one_line_and_exit_2(monkeypatch, capsys, tmp_path, args, message):
    code, _, err = run_cli(monkeypatch, capsys, "bootstrap", str(PHENO), "--out", str(tmp_path / "b"), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------- on a LocalCluster of 2 workers

N = 6


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """A LocalCluster of 2 single-threaded workers sharing the run's compilation cache."""
    from il2treg.cluster import connect

    before = os.environ.get("IL2TREG_CACHE")
    os.environ["IL2TREG_CACHE"] = os.environ["IL2TREG_TEST_XLA_CACHE"]  # the workers' (il2treg.cluster.worker_environment)
    try:
        with connect(workers=2) as c:
            yield c
    finally:
        if before is None:
            os.environ.pop("IL2TREG_CACHE")
        else:
            os.environ["IL2TREG_CACHE"] = before


@pytest.fixture(scope="module")
def clean(client, tmp_path_factory):
    """An uninterrupted bootstrap of pheno, N replicates."""
    out = tmp_path_factory.mktemp("clean") / "boot"
    return bootstrap(PHENO, N, out, client=client, figure=False)


def _tables(out: Path):
    return pd.read_csv(out / TABLE), pd.read_csv(out / CI)


@pytest.mark.slow
def test_an_uninterrupted_run_writes_every_replicate_and_both_intervals(clean):
    assert clean.counts() == {OK: N, NOT_CONVERGED: 0, FAILED: 0, "lost": 0}
    assert len(list((clean.out / REPLICATES).glob("r*.json"))) == N
    ci = clean.ci.set_index("parameter")
    assert ((ci["pct_low"] <= ci["median"]) & (ci["median"] <= ci["pct_high"]) & (ci["pct_low"] < ci["pct_high"])).all()
    table = clean.replicates
    for _, row in ci.reset_index().iterrows():  # the percentile interval is that of the replicates' own estimates
        assert (row["pct_low"], row["pct_high"]) == tuple(np.percentile(table[row["parameter"]], [2.5, 97.5]))
    # replicates differ from one another (different patients), and each from the original
    assert clean.replicates["POP_CL"].nunique() == N


@pytest.mark.slow
def test_an_interrupted_run_resumes_to_the_same_result_bit_for_bit(client, clean, tmp_path):
    out = tmp_path / "boot"
    seen = []

    def interrupt(record):
        if record.get("replicate", 0) > 0:
            seen.append(record["replicate"])
            if len(seen) == 2:
                raise KeyboardInterrupt  # as Ctrl-C in the caller

    with pytest.raises(KeyboardInterrupt):
        bootstrap(PHENO, N, out, client=client, on_replicate=interrupt, figure=False)
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / REPLICATES).glob("r*.json")}
    assert 2 <= len(done_before) < N and not (out / TABLE).exists()
    calls = []
    result = bootstrap(PHENO, N, out, client=client, on_replicate=calls.append, figure=False)
    # the finished replicates were not refitted (a task running when the caller stopped may have finished since)
    assert next(c["skipped"] for c in calls if "skipped" in c) >= len(done_before)
    assert len([c for c in calls if c.get("replicate", 0) > 0]) <= N - len(done_before)
    assert {p.name: p.stat().st_mtime_ns for p in (out / REPLICATES).glob("r*.json") if p.name in done_before} == done_before
    assert result.counts()[OK] == N
    for a, b in zip(_tables(out), _tables(clean.out)):
        pd.testing.assert_frame_equal(a, b, check_exact=True)
    assert (out / TABLE).read_bytes() == (clean.out / TABLE).read_bytes()


@pytest.mark.slow
def test_a_killed_worker_loses_nothing(client, clean, tmp_path):
    out = tmp_path / "boot"
    killed = []

    def kill_a_busy_worker(record):
        if record.get("replicate", 0) > 0 and not killed:
            busy = [addr for addr, keys in client.processing().items() if keys]
            assert busy, "no worker was running a refit to kill"
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)  # with a refit running on it: the scheduler must run that one again elsewhere
            killed.append(pid)

    result = bootstrap(PHENO, N, out, client=client, on_replicate=kill_a_busy_worker, figure=False)
    assert killed
    client.wait_for_workers(2, timeout=120)  # the nanny starts a new worker in its place
    assert killed[0] not in client.run(os.getpid).values()
    assert result.counts() == {OK: N, NOT_CONVERGED: 0, FAILED: 0, "lost": 0}
    assert (out / TABLE).read_bytes() == (clean.out / TABLE).read_bytes()
    assert (out / CI).read_bytes() == (clean.out / CI).read_bytes()
