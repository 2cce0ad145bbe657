"""Peak memory of ``il2treg simulate --format zarr`` on a large population, and its correctness.

Runs the command in a subprocess (its default LocalCluster: one worker process whose chunks' solves share the cores) and samples
the resident memory of the whole process tree (the command, the Dask scheduler inside it, the nannies
and the workers) every 0.25 s; the peak of that sum is the memory the simulation needs. Then it
checks the store: it opens with ``xarray.open_zarr``, has every patient, and a subset (one chunk's
patients, re-drawn by ``il2treg.chunked.population_of`` and simulated in memory) equals the stored
values bit for bit. Issue 29 asks for 10^6 patients within 2 GB.

Usage: python benchmarks/zarr_memory.py [--n 1000000] [--chunk 5000] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and all its descendants (0 for those gone meanwhile)."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=5000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="il2treg-bench-zarr-"))
    out = root / "store"
    cmd = [str(Path(sys.executable).with_name("il2treg")), "simulate", "--regimen", "lupil2", "--n", str(args.n), "--format", "zarr",
           "--chunk", str(args.chunk), "--out", str(out)]  # fmt: skip
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watched = psutil.Process(proc.pid)
        peak, samples = 0, 0
        while proc.poll() is None:
            peak = max(peak, tree_rss(watched))
            samples += 1
            time.sleep(0.25)
        wall = time.perf_counter() - start
        output = proc.stdout.read()
        if proc.returncode != 0:
            sys.exit(f"the command failed (exit {proc.returncode}):\n{output}")
        print(output)
        disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())

        import numpy as np
        import xarray as xr

        import il2treg
        from il2treg.chunked import population_of

        ds = xr.open_zarr(out)
        k = len(ds.chunks["patient"]) // 2  # a chunk from the middle
        a = int(np.sum(ds.chunks["patient"][:k]))
        size = ds.chunks["patient"][k]
        model = il2treg.load_model(ds.attrs["model"])
        params = population_of(model, ds.attrs["seed"], k, size)
        sim = il2treg.simulate(model, il2treg.regimen.named(ds.attrs["regimen"]), ds["time"].to_numpy(), params)
        stored = np.stack([ds[name].isel(patient=slice(a, a + size)).to_numpy() for name in sim.names], axis=-1)
        equal = bool(np.array_equal(stored, np.asarray(sim.values), equal_nan=True))
        same_params = bool(np.array_equal(ds["parameters"].isel(patient=slice(a, a + size)).to_numpy(), np.asarray(params.values)))
        n_stored = int(ds.sizes["patient"])
        failed = int((ds["status"].to_numpy() != 0).sum())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    row = {"n": args.n, "chunk": args.chunk, "times": int(ds.sizes["time"]), "observables": len(sim.names), "wall_s": wall, "peak_rss_bytes": peak,
           "samples": samples, "store_bytes": disk, "raw_bytes": args.n * int(ds.sizes["time"]) * len(sim.names) * 8, "patients_stored": n_stored,
           "failed": failed, "subset_equal": equal, "subset_parameters_equal": same_params, "subset": [a + 1, a + size]}  # fmt: skip
    print(f"{args.n:,} patients x {row['times']} times x {row['observables']} observables ({row['raw_bytes'] / 1e9:.1f} GB of float64) in "
          f"{wall:.0f} s; peak memory of the process tree {peak / 2**30:.2f} GiB (sampled {samples} times); store {disk / 1e9:.2f} GB on disk; "
          f"{n_stored:,} patients stored, {failed} failed; patients {a + 1}..{a + size} equal an in-memory simulation: {equal}")  # fmt: skip
    if args.json:
        row.update(date=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), machine=platform.machine(), cores=os.cpu_count())
        args.json.write_text(json.dumps(row, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
