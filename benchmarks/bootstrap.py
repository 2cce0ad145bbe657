"""Throughput of ``il2treg bootstrap`` with 1 and 2 Dask workers (one thread each), in one run.

NONMEM's phenobarbital fit (fits/pheno/fit.toml, 59 neonates) is fitted once; then the same
bootstrap (same seed, so the same resamples) runs on a LocalCluster of 1 worker and on one of 2,
each into its own folder holding a copy of that original fit. Compilation is paid once per worker
(its first refit; the workers share a fresh persistent compilation cache, il2treg.cluster), so the
throughput is counted after it: from the moment the last worker finished its first refit to the
last refit, refits finished in that window / its length. The first refits' times are printed
apart (compilation included). Issue 29 asks for a ratio of at least 1.6.

Usage: python benchmarks/bootstrap.py [--replicates 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

FIT = Path(__file__).resolve().parents[1] / "fits" / "pheno" / "fit.toml"


def measure(workers: int, replicates: int, original: Path, root: Path) -> dict:
    from il2treg.cluster import connect
    from il2treg.fit.bootstrap import bootstrap

    out = root / f"workers{workers}"
    shutil.copytree(original, out / "original")
    finished: list[tuple[float, str, float]] = []  # (time since start, worker, the task's own seconds)
    with connect(workers=workers) as client:
        client.wait_for_workers(workers)
        start = time.perf_counter()

        def record(r):
            if r.get("replicate", 0) > 0:
                finished.append((time.perf_counter() - start, r["worker"], r["elapsed_s"]))

        result = bootstrap(FIT, replicates, out, client=client, on_replicate=record, figure=False)
    first: dict[str, tuple[float, float]] = {}
    for t, w, e in finished:
        first.setdefault(w, (t, e))
    warm_from = max(t for t, _ in first.values())
    after = [t for t, _, _ in finished if t > warm_from]
    window = max(after) - warm_from if after else float("nan")
    return {"workers": workers, "replicates": replicates, "workers_seen": len(first), "wall_s": max(t for t, _, _ in finished),
            "first_refit_s": sorted(e for _, e in first.values()), "warm_from_s": warm_from, "refits_after": len(after), "window_s": window,
            "throughput_per_s": len(after) / window, "counts": result.counts()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    root = Path(tempfile.mkdtemp(prefix="il2treg-bench-bootstrap-"))
    os.environ["IL2TREG_CACHE"] = str(root / "xla")  # fresh: both clusters' workers start without compiled programs on disk
    try:
        from il2treg.fit.result import save as save_fit
        from il2treg.fit.run import compute_fit
        from il2treg.fit.spec import read_fit_spec

        t = time.perf_counter()
        save_fit(compute_fit(read_fit_spec(FIT)), root / "original")
        print(f"original fit: {time.perf_counter() - t:.1f} s (in this process, not timed below)")
        rows = [measure(w, args.replicates, root / "original", root) for w in (1, 2)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\n{args.replicates} refits of {FIT.parent.name}, LocalCluster workers of 1 thread, {os.cpu_count()} cores")
    print("| workers | first refit per worker (s, compile incl.) | warm from (s) | refits after | window (s) | refits/s | wall (s) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {', '.join(f'{x:.1f}' for x in r['first_refit_s'])} | {r['warm_from_s']:.1f} | {r['refits_after']} | "
              f"{r['window_s']:.2f} | {r['throughput_per_s']:.2f} | {r['wall_s']:.1f} |")  # fmt: skip
    ratio = rows[1]["throughput_per_s"] / rows[0]["throughput_per_s"]
    print(f"\nthroughput ratio, 2 workers / 1 worker: {ratio:.2f} (issue 29: >= 1.6)")
    if args.json:
        import jax

        args.json.write_text(json.dumps({"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
                                         "cores": os.cpu_count(), "jax": jax.__version__, "runs": rows, "ratio": ratio}, indent=1), encoding="utf-8")  # fmt: skip


if __name__ == "__main__":
    main()
