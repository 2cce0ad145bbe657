r"""Virtual populations larger than memory: simulated chunk by chunk on Dask, written to Zarr.

:func:`simulate_to_zarr` splits ``n`` patients into chunks of ``chunk`` patients; each chunk is
one Dask task (:mod:`il2treg.cluster`) that draws its patients, simulates them
(:func:`il2treg.simulate`) and writes them into its own region of the store as soon as it
finishes. Memory is bounded by a chunk per worker (10^6 patients at 337 times and 7
observables are 19 GB of float64; a chunk of 5,000 is 94 MB), nothing is gathered in the
caller, and the store is written into a temporary folder beside ``out`` and renamed into place
when every chunk is in (never a half-written store under ``out``).

**The store** opens with ``xarray.open_zarr(out)``: one variable per observable
``[patient, time]`` (float64, with its ``unit``), ``status [patient]`` (0: solved; else the
solver's code, :func:`il2treg.simulate.status_message`; its values NaN), ``parameters [patient,
parameter]`` (each patient's parameters, so that any subset can be simulated again:
:func:`population_of`), coordinates ``patient`` (IDs 1..n), ``time`` (days) and ``parameter``;
attributes ``model``, ``regimen``, ``seed``, ``chunk``, ``simulated`` (these are virtual
patients, never data) and the il2treg version. Chunks along ``patient`` are the simulation's.

**Seeds.** Chunk :math:`c` draws its patients from ``sample_population`` with the seed
``numpy.random.SeedSequence([seed, c]).generate_state(1)[0]`` (:func:`chunk_seed`), so a chunk
depends on ``seed``, ``chunk`` and :math:`c` alone: the same store whatever the number of
workers, and a different draw from an in-memory ``sample_population(model, n, seed)``.

:func:`summarise_zarr` computes summary statistics out of core (one stored chunk of a variable in
memory at a time).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from il2treg.errors import InputError

#: Default patients per chunk: 5,000 patients at 337 times and 7 observables are 94 MB.
CHUNK = 5000


def chunk_seed(seed: int, index: int) -> int:
    """The population seed of chunk ``index`` of a store made with ``seed`` (module docstring)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def chunk_bounds(n: int, chunk: int) -> list[tuple[int, int]]:
    """``[start, stop)`` patient rows of each chunk of ``n`` patients in chunks of ``chunk``."""
    return [(a, min(a + chunk, n)) for a in range(0, n, chunk)]


@functools.lru_cache(maxsize=4)
def _model(name: str):
    from il2treg.model import load_model

    return load_model(name)


def population_of(model, seed: int, index: int, size: int):
    """The :class:`~il2treg.Parameters` of chunk ``index`` (``size`` patients) of a store made
    with ``seed`` (the same draw :func:`simulate_to_zarr` makes)."""
    from il2treg.model import sample_population

    return sample_population(model, size, chunk_seed(seed, index))


def _simulate_chunk(model_name: str, regimen, times: np.ndarray, seed: int, index: int, start: int, stop: int, store: str) -> int:
    """One Dask task: simulate chunk ``index`` and write it into rows ``start:stop`` of ``store``.
    Returns its number of failed solves."""
    import xarray as xr

    from il2treg.cluster import prepare_worker
    from il2treg.simulate import simulate

    prepare_worker()
    model = _model(model_name)
    params = population_of(model, seed, index, stop - start)
    sim = simulate(model, regimen, times, params)
    values = np.asarray(sim.values)
    status = np.asarray(sim.status)
    data = {name: (("patient", "time"), values[..., k]) for k, name in enumerate(sim.names)}
    data["status"] = (("patient",), status.astype(np.int32))
    data["parameters"] = (("patient", "parameter"), np.asarray(params.values))
    xr.Dataset(data).to_zarr(store, region={"patient": slice(start, stop)}, mode="r+")
    return int(np.sum(status != 0))


def _template(model, n: int, times: np.ndarray, chunk: int, attrs: dict):
    """The store's layout as lazy (never computed) dask arrays, for its metadata."""
    import dask.array as da
    import xarray as xr

    mech = model.mechanism
    data = {name: (("patient", "time"), da.zeros((n, times.size), chunks=(chunk, times.size)), {"unit": unit})
            for name, unit in zip(model.observable_names, mech.observable_units)}  # fmt: skip
    data["status"] = (("patient",), da.zeros(n, chunks=chunk, dtype=np.int32), {"meaning": "0: solved; else the solver's code, values NaN"})
    data["parameters"] = (("patient", "parameter"), da.zeros((n, len(model.parameter_names)), chunks=(chunk, -1)), {"unit": "internal units"})
    coords = {"patient": np.arange(1, n + 1), "time": ("time", times, {"unit": "day"}), "parameter": list(model.parameter_names)}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def simulate_to_zarr(model: str, regimen, times: Sequence[float], n: int, out: str | Path, *, seed: int = 0, chunk: int = CHUNK,
                     client=None, scheduler: str | None = None, workers: int | None = None, force: bool = False,
                     on_chunk: Callable[[int, int], None] | None = None) -> Path:
    """Simulate ``n`` virtual patients of ``model`` under ``regimen`` at ``times`` (days) into
    the Zarr store ``out`` (module docstring), one Dask task per chunk of ``chunk`` patients.

    Arguments:
        model: a model name or model file path (loaded by each worker).
        regimen: an :class:`il2treg.Regimen`.
        client: a ``dask.distributed.Client``; without one, :func:`il2treg.cluster.connect`
            starts one with ``scheduler``, or a LocalCluster of ``workers`` processes (default 1)
            whose tasks share this machine's cores. The workers must see ``out``'s folder.
        force: replace an existing ``out`` (only once the new store is complete).
        on_chunk: called in the caller with (patients in the chunk, its failed solves) as each
            chunk is written.

    Returns:
        ``out``.

    Raises:
        InputError: ``out`` exists without ``force``, ``n`` or ``chunk`` below 1 (before any work).
    """
    import il2treg
    from il2treg._io import atomic_output_dir
    from il2treg.cluster import connect, run_jobs

    out = Path(out).resolve()  # the workers write there
    if n < 1 or chunk < 1:
        raise InputError(f"n and chunk must be at least 1, got n={n}, chunk={chunk}. Fix: pass --n 1 or more and --chunk 1 or more.")
    if out.exists() and not force:
        raise InputError(f"output folder {str(out)!r} already exists. Fix: choose another --out or pass --force to replace it.")
    if Path(str(model)).suffix == ".toml" and Path(str(model)).exists():
        model = Path(model).resolve()  # remote workers see the same absolute path on a shared file system
    m = _model(str(model))
    times = np.asarray(times, dtype=np.float64)
    chunk = min(chunk, n)
    attrs = {"model": m.name, "regimen": regimen.name or "", "seed": int(seed), "chunk": int(chunk), "n": int(n),
             "simulated": "virtual patients drawn from the model's between-patient variability, not data", "il2treg_version": il2treg.__version__}  # fmt: skip
    with atomic_output_dir(out, force=force) as tmp:
        store = tmp / "store.zarr"
        _template(m, n, times, chunk, attrs).to_zarr(store, compute=False, mode="w")
        bounds = chunk_bounds(n, chunk)
        jobs = {k: (str(model), regimen, times, int(seed), k, a, b, str(store)) for k, (a, b) in enumerate(bounds)}
        done = (lambda k, failed: on_chunk(bounds[k][1] - bounds[k][0], failed)) if on_chunk else None

        def work(c):
            lost = run_jobs(c, _simulate_chunk, jobs, on_done=done)
            if lost:
                k, err = next(iter(lost.items()))
                raise InputError(f"chunk {k} (patients {bounds[k][0] + 1}..{bounds[k][1]}) failed: {type(err).__name__}: {err}. "
                                 "Fix: see the worker's log; nothing was written to the output folder.")  # fmt: skip

        if client is None:  # a chunk's solves share the worker's cores (il2treg.simulate): one process per machine is enough
            k = workers or 1
            with connect(scheduler, workers=k, solver_threads=max(1, (os.cpu_count() or 1) // k)) as own:
                work(own)
        else:
            work(client)
        # the store itself is the folder's content: move it up so that xarray.open_zarr(out) reads it
        for item in store.iterdir():
            shutil.move(str(item), tmp / item.name)
        store.rmdir()
    return out


def summarise_zarr(path: str | Path, days: Sequence[float] | None = None, quantiles: Sequence[float] = (0.05, 0.5, 0.95)) -> pd.DataFrame:
    """Out-of-core summary of a store from :func:`simulate_to_zarr`: per observable and day (the
    store's times nearest ``days``; default five spread over them), the mean, SD, and
    ``quantiles`` over the solved patients, reading one stored chunk at a time (memory: a chunk,
    and the chosen days' columns of one variable).

    Returns:
        Columns ``observable``, ``time_day``, ``n``, ``mean``, ``sd``, ``q<percent>`` per quantile.

    Raises:
        InputError: ``path`` is not a store of :func:`simulate_to_zarr`.
    """
    import xarray as xr

    try:
        ds = xr.open_zarr(path)
    except (FileNotFoundError, KeyError, ValueError, OSError) as err:
        raise InputError(f"{path}: not a Zarr store of il2treg ({err}). Fix: pass the --out folder of `il2treg simulate --format zarr`.") from err
    if "status" not in ds or "time" not in ds.coords:
        raise InputError(f"{path}: a Zarr store without il2treg's status and time. Fix: pass the --out folder of `il2treg simulate --format zarr`.")
    times = ds["time"].to_numpy()
    if days is None:
        days = sorted({float(times[int(k)]) for k in np.linspace(0, times.size - 1, 5).round()})
    ok = ds["status"].to_numpy() == 0
    columns = [int(np.argmin(np.abs(times - d))) for d in days]
    bounds = np.cumsum([0, *ds.chunks["patient"]])
    rows = []
    for name in [v for v in ds.data_vars if ds[v].dims == ("patient", "time")]:
        at_days = np.empty((ok.size, len(columns)))  # n x days: 40 MB for 10^6 patients and 5 days
        for a, b in itertools.pairwise(bounds):  # one stored chunk in memory at a time
            at_days[a:b] = ds[name].isel(patient=slice(int(a), int(b)), time=columns).to_numpy()
        for j, k in enumerate(columns):
            column = at_days[ok, j]
            row = {"observable": name, "time_day": float(times[k]), "n": int(column.size), "mean": float(column.mean()) if column.size else math.nan,
                   "sd": float(column.std(ddof=1)) if column.size > 1 else math.nan}  # fmt: skip
            qs = np.quantile(column, quantiles) if column.size else np.full(len(quantiles), math.nan)
            row.update({f"q{100 * q:g}": float(v) for q, v in zip(quantiles, qs)})
            rows.append(row)
    return pd.DataFrame(rows)
