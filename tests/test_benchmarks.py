"""The benchmarks' scipy baseline (its NumPy copy of the model must stay the model) and the
scaling script behind benchmarks/RESULTS.md.

benchmarks/simulate.py holds a plain-Python right-hand side for scipy's LSODA (used by every
benchmark's scipy column). A change of il2treg's equations that is not carried over makes the
baseline solve another model; these checks catch it in the test suite instead of at benchmark
time.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import il2treg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from simulate import check_rhs, solve_lsoda


def test_numpy_right_hand_side_equals_the_model_at_random_states(model):
    params = il2treg.sample_population(model, 5, seed=0)
    assert check_rhs(model, params) < 1e-12


@pytest.mark.slow
def test_lsoda_baseline_reproduces_il2treg_under_lupil2(model, lupil2, tight):
    params = il2treg.sample_population(model, 2, seed=3)
    times = np.linspace(0.0, 84.0, 85)
    mine = np.asarray(il2treg.simulate(model, lupil2, times, params, options=tight).values)
    for i in range(2):
        theirs, _ = solve_lsoda(np.asarray(params.values[i]), model.parameter_names,
                                np.asarray(lupil2.times), np.asarray(lupil2.amounts), times, rtol=1e-10, atol=1e-12)  # fmt: skip
        assert np.max(np.abs(theirs - mine[i]) / np.abs(mine[i])) < 1e-6


@pytest.mark.slow
def test_scaling_measures_every_n_and_reports_them(tmp_path):
    from scaling import main

    results = tmp_path / "results"
    assert main(["--n", "40", "--batch-size", "16", "--json", str(results / "scaling_cpu.json"),
                 "--report", str(tmp_path / "RESULTS.md"), "--results", str(results)]) == 0  # fmt: skip
    run = json.loads((results / "scaling_cpu.json").read_text())
    (row,) = run["rows"]
    assert (row["n"], row["batch_size"], row["failed"], row["finite"]) == (40, 16, 0, True)
    assert run["complete"] is True
    assert row["run_s"] > 0 and row["compile_s"] > 0
    assert "| 40 | 16 |" in (tmp_path / "RESULTS.md").read_text()


def test_scaling_report_puts_two_devices_side_by_side(tmp_path):
    from scaling import report

    def result(platform, kind, ms):
        machine = {"processor": "x86_64", "cpu_count": 16, "platform": platform, "device_kind": kind, "devices": 1}
        rows = [{"n": 1000, "batch_size": b, "run_s": m, "compile_s": 1.0, "ms_per_patient": m, "run_time_from": "second call", "failed": 0}
                for b, m in ms]  # fmt: skip
        return {"date": "d", "machine": machine, "jax": "j", "diffrax": "d", "rows": rows}

    (tmp_path / "scaling_cpu.json").write_text(json.dumps(result("cpu", "cpu", [(128, 0.4)])))
    (tmp_path / "scaling_gpu.json").write_text(json.dumps(result("gpu", "H100", [(4096, 0.2), (32768, 0.1)])))
    text = report(sorted(str(p) for p in tmp_path.glob("scaling_*.json")))
    # the best batch size per device, and CPU / GPU = 0.4 / 0.1
    assert "| 1,000 | 0.4000 | 0.1000 | 4.0 |" in text
    assert "stopped before its last row" not in text


def test_scaling_keeps_the_rows_of_a_run_stopped_before_its_end(tmp_path):
    import scaling

    kept = []

    class Stop(Exception):
        pass

    def keep(result):
        kept.append(json.loads(json.dumps(result)))  # a copy, as the file on disk would be
        if len(result["rows"]) == 1:
            raise Stop  # stopped (a time limit) after the first of two N

    with pytest.raises(Stop):
        scaling._measure(scaling.argparse.Namespace(batch_size=[8], max_n=1000, n=[8, 16], repeat_below=0.0), keep)
    (partial,) = kept
    assert partial["complete"] is False and [r["n"] for r in partial["rows"]] == [8]
    (tmp_path / "scaling_cpu.json").write_text(json.dumps(partial))
    assert "stopped before its last row" in scaling.report([str(tmp_path / "scaling_cpu.json")])


def test_scaling_without_a_task_or_without_results_fails_with_a_reason(tmp_path, capsys):
    from scaling import main

    with pytest.raises(SystemExit) as stop:
        main([])
    assert stop.value.code == 2
    assert main(["--report", str(tmp_path / "R.md"), "--results", str(tmp_path)]) == 1
    assert "no scaling_*.json" in capsys.readouterr().err
    assert not (tmp_path / "R.md").exists()


def test_scaling_rejects_bad_sizes_and_files_that_are_not_results(tmp_path, capsys):
    from scaling import main

    with pytest.raises(SystemExit) as stop:
        main(["--json", str(tmp_path / "s.json"), "--batch-size", "0"])
    assert stop.value.code == 2
    assert "--batch-size 0" in capsys.readouterr().err
    (tmp_path / "scaling_cpu.json").write_text("{not json")
    assert main(["--report", str(tmp_path / "R.md"), "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "scaling_cpu.json" in err and "Fix:" in err
    assert not (tmp_path / "R.md").exists()
