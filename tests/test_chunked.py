"""Large simulations to Zarr (il2treg.chunked): chunks, seeds, the out-of-core summary, refusals;
slow: a store written by a LocalCluster of 2 workers equals in-memory simulations chunk by chunk."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
import xarray as xr

import il2treg
from conftest import run_cli
from il2treg.chunked import chunk_bounds, chunk_seed, population_of, simulate_to_zarr, summarise_zarr
from il2treg.errors import InputError


def test_chunks_cover_the_patients_once_in_order():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(3, 5) == [(0, 3)]
    b = chunk_bounds(1_000_000, 5000)
    assert len(b) == 200 and b[0][0] == 0 and b[-1][1] == 1_000_000 and all(x[1] == y[0] for x, y in itertools.pairwise(b))


def test_the_commands_default_chunk_is_the_modules():
    from il2treg import chunked, cli

    assert cli.CHUNK == chunked.CHUNK


def test_a_chunks_seed_depends_on_the_seed_and_its_index_alone():
    assert chunk_seed(0, 3) == chunk_seed(0, 3)
    assert len({chunk_seed(s, k) for s in range(3) for k in range(50)}) == 150


def test_population_of_a_chunk_is_reproducible(model):
    a = population_of(model, 0, 2, 100)
    b = population_of(model, 0, 2, 100)
    c = population_of(model, 0, 3, 100)
    assert np.array_equal(a.values, b.values) and not np.array_equal(a.values, c.values)


def test_an_existing_output_or_no_patient_is_refused_before_any_work(tmp_path):
    reg = il2treg.regimen.named("lupil2")
    (tmp_path / "store").mkdir()
    with pytest.raises(InputError, match=r"already exists.*--force"):
        simulate_to_zarr("il2_treg_sledai", reg, [0.0, 1.0], 10, tmp_path / "store", client=object())
    with pytest.raises(InputError, match="n and chunk must be at least 1"):
        simulate_to_zarr("il2_treg_sledai", reg, [0.0, 1.0], 0, tmp_path / "new", client=object())
    assert not (tmp_path / "new").exists()


def _store(path, n=50, chunk=20):
    """A small store of the layout simulate_to_zarr writes, with known values."""
    rng = np.random.default_rng(1)
    times = np.array([0.0, 7.0, 14.0])
    values = rng.lognormal(size=(n, times.size))
    status = np.zeros(n, dtype=np.int32)
    status[[3, 17]] = 5
    ds = xr.Dataset({"treg_per_uL": (("patient", "time"), values), "status": (("patient",), status),
                     "parameters": (("patient", "parameter"), rng.normal(size=(n, 2)))},
                    coords={"patient": np.arange(1, n + 1), "time": times, "parameter": ["a", "b"]})  # fmt: skip
    ds.chunk({"patient": chunk}).to_zarr(path, mode="w")
    return values, status


def test_the_out_of_core_summary_equals_numpy_on_the_solved_patients(tmp_path):
    values, status = _store(tmp_path / "s")
    table = summarise_zarr(tmp_path / "s", days=[7.0, 13.0])
    ok = values[status == 0]
    assert list(table["time_day"]) == [7.0, 14.0]  # the store's times nearest those asked
    row = table.iloc[1]
    assert row["n"] == 48
    assert row["mean"] == pytest.approx(ok[:, 2].mean(), rel=1e-14)
    assert row["sd"] == pytest.approx(ok[:, 2].std(ddof=1), rel=1e-14)
    assert row["q50"] == np.quantile(ok[:, 2], 0.5) and row["q95"] == np.quantile(ok[:, 2], 0.95)


def test_a_folder_that_is_not_a_store_is_one_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a Zarr store of il2treg"):
        summarise_zarr(tmp_path / "nothing")
    xr.Dataset({"x": ("t", [1.0])}).to_zarr(tmp_path / "other")
    with pytest.raises(InputError, match="without il2treg's status"):
        summarise_zarr(tmp_path / "other")


@pytest.mark.parametrize(("args", "message"), [
    (["--format", "parquet"], "unknown --format 'parquet'"),
    (["--format", "zarr", "--typical"], "--typical simulates one patient"),
])  # fmt: skip
def test_cli_refusals_are_one_line_and_exit_2(monkeypatch, capsys, tmp_path, args, message):
    code, _, err = run_cli(monkeypatch, capsys, "simulate", "--out", str(tmp_path / "o"), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_a_store_written_by_two_workers_equals_in_memory_simulations(model, tmp_path):
    from il2treg.cluster import connect

    reg = il2treg.regimen.named("lupil2")
    times = np.round(np.arange(0.0, 28.0 + 0.125, 0.25), 10)
    before = os.environ.get("IL2TREG_CACHE")
    os.environ["IL2TREG_CACHE"] = os.environ["IL2TREG_TEST_XLA_CACHE"]
    try:
        with connect(workers=2) as client:
            written = []
            simulate_to_zarr("il2_treg_sledai", reg, times, 700, tmp_path / "store", chunk=300, client=client, on_chunk=lambda n, bad: written.append(n))
    finally:
        os.environ.pop("IL2TREG_CACHE") if before is None else os.environ.__setitem__("IL2TREG_CACHE", before)
    assert sorted(written) == [100, 300, 300]
    ds = xr.open_zarr(tmp_path / "store")
    assert ds.sizes == {"patient": 700, "time": times.size, "parameter": len(model.parameter_names)}
    assert ds.chunks["patient"] == (300, 300, 100)
    assert "not data" in ds.attrs["simulated"] and ds.attrs["seed"] == 0 and ds.attrs["regimen"] == "lupil2"
    np.testing.assert_array_equal(ds["time"].to_numpy(), times)
    for k, (a, b) in enumerate(chunk_bounds(700, 300)):
        params = population_of(model, 0, k, b - a)
        sim = il2treg.simulate(model, reg, times, params)
        np.testing.assert_array_equal(ds["parameters"].isel(patient=slice(a, b)).to_numpy(), np.asarray(params.values))
        stored = np.stack([ds[name].isel(patient=slice(a, b)).to_numpy() for name in sim.names], axis=-1)
        np.testing.assert_array_equal(stored, np.asarray(sim.values))  # bit for bit
        np.testing.assert_array_equal(ds["status"].isel(patient=slice(a, b)).to_numpy(), np.asarray(sim.status))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
