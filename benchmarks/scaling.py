"""How simulation time grows with the number of virtual patients, on the device JAX picks.

    .venv/bin/python benchmarks/scaling.py --json benchmarks/results/scaling_cpu.json     # measure
    .venv/bin/python benchmarks/scaling.py --platform cpu --json ...                      # force the CPU
    .venv/bin/python benchmarks/scaling.py --report benchmarks/RESULTS.md                 # the table

**Measure.** ``il2treg.simulate`` of N virtual patients (``sample_population(seed=0)``, all on the
LUPIL-2 regimen, default ``SolverOptions``: Tsit5, rtol 1e-6, atol 1e-9) for N = 1,000 up to
``--max-n`` (default 10^6) in powers of ten, at the weekly visits (days 0, 7, ..., 84: 13 times,
so that the 10^6 x 13 x 7 outputs fit in memory) and for each ``--batch-size`` (patients per
vmapped chunk; default 128 on a CPU, 4,096 and 32,768 on an accelerator, where a chunk must
fill the device). The device is the one JAX picks by its usual rules (a GPU where one is
installed and visible, else the CPU, whose cores the solve shares out as threads); the code
never asks for a GPU. Each N is a new shape, so each first call compiles: compile time
(tracing, lowering, XLA, from ``jax.monitoring``) is reported apart. Where that first call took
under ``--repeat-below`` seconds, the run time is that of a second call; above it (the largest N),
the first call's time less its compile time. Results go to ``--json`` (required: nothing is
overwritten without that path being named).

**Report.** ``--report PATH`` (re)writes PATH from every ``benchmarks/results/scaling_*.json``: one
table per machine and device, then ms/patient side by side with the ratio where two devices
measured the same N.
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VISITS = [7.0 * k for k in range(13)]


def _measure(args, keep) -> dict:
    """Measure every (batch size, N); ``keep(result)`` is called after each row and at the end."""
    import diffrax
    import jax
    import numpy as np

    sys.path.insert(0, str(HERE))
    from simulate import timed

    import il2treg

    model = il2treg.load_model()
    regimen = il2treg.regimen.lupil2()
    device = jax.devices()[0]
    accelerator = device.platform != "cpu"
    sizes = args.batch_size or ([4096, 32768] if accelerator else [128])
    ns = [n for n in (10**k for k in range(3, 10)) if n <= args.max_n] or [args.max_n]
    if args.n:
        ns = args.n
    times = np.asarray(VISITS)
    rows = []
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "platform": device.platform, "device_kind": device.device_kind, "devices": len(jax.devices())},
        "jax": jax.__version__, "diffrax": diffrax.__version__, "regimen": "lupil2", "n_obs": len(VISITS),
        "rtol": 1e-6, "atol": 1e-9, "rows": rows, "complete": False,
    }  # fmt: skip
    for batch_size in sizes:
        options = il2treg.SolverOptions(batch_size=batch_size)
        for n in ns:
            params = il2treg.sample_population(model, n, seed=0)
            sim, first, compile_s = timed(il2treg.simulate, model, regimen, times, params, options=options)
            if first < args.repeat_below:
                sim, run, _ = timed(il2treg.simulate, model, regimen, times, params, options=options)
                how = "second call"
            else:
                run, how = first - compile_s, "first call less compile"
            failed = int(np.sum(np.asarray(sim.status) != 0))
            finite = bool(np.all(np.isfinite(np.asarray(sim.values)[np.asarray(sim.status) == 0])))
            row = {"n": n, "batch_size": batch_size, "run_s": run, "compile_s": compile_s, "first_call_s": first,
                   "ms_per_patient": 1e3 * run / n, "run_time_from": how, "failed": failed, "finite": finite}  # fmt: skip
            rows.append(row)
            keep(result)  # a run stopped later keeps the rows measured so far
            print(f"N = {n:>9,}  batch {batch_size:>6}  run {run:9.2f} s  ({row['ms_per_patient']:.4f} ms/patient, {how})  "
                  f"compile {compile_s:6.1f} s  failed {failed}", flush=True)  # fmt: skip
            del sim, params
    result["complete"] = True
    keep(result)
    return result


def _label(run: dict) -> str:
    m = run["machine"]
    if m["platform"] == "cpu":
        return f"CPU ({m['processor']}, {m['cpu_count']} cores)"
    return f"{m['device_kind']} (x{m['devices']}; host {m['cpu_count']} cores)"


def report(paths: list[str]) -> str:
    """Markdown: one table per result file, then the best ms/patient per N for each device."""
    runs = []
    for p in sorted(paths):
        try:
            runs.append(json.loads(Path(p).read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not JSON ({e})") from None
    out = [
        "# Scaling of `il2treg.simulate` with the number of virtual patients",
        "",
        "Written by `benchmarks/scaling.py --report` from `benchmarks/results/scaling_*.json`; each table",
        "was measured by `benchmarks/scaling.py` on the machine and date it names (LUPIL-2 regimen,",
        "13 weekly visits, Tsit5 at rtol 1e-6 / atol 1e-9; compile time apart).",
        "",
    ]
    best: dict[str, dict[int, float]] = {}
    for run, path in zip(runs, sorted(paths)):
        label = _label(run)
        stopped = "" if run.get("complete", True) else " (stopped before its last row: the rows measured are kept)"
        out += [f"## {label}, {run['date']}", "", f"`{Path(path).name}`, jax {run['jax']}, diffrax {run['diffrax']}{stopped}", "",
                "| N | batch size | run s | ms/patient | compile s | run time from | failed |",
                "|---:|---:|---:|---:|---:|---|---:|"]  # fmt: skip
        for r in run["rows"]:
            out.append(f"| {r['n']:,} | {r['batch_size']:,} | {r['run_s']:.2f} | {r['ms_per_patient']:.4f} | {r['compile_s']:.1f} | "
                       f"{r['run_time_from']} | {r['failed']} |")  # fmt: skip
            by_n = best.setdefault(label, {})
            by_n[r["n"]] = min(by_n.get(r["n"], float("inf")), r["ms_per_patient"])
        out.append("")
    labels = list(best)
    if all(run["machine"]["platform"] == "cpu" for run in runs):
        out += ["No accelerator measured yet. On a GPU machine: `make bench-scaling` (the GPU, chunks of 4,096 and",
                "32,768), `benchmarks/scaling.py --platform cpu --json benchmarks/results/scaling_cpu_<cores>.json`",
                "(that host's CPU), then `benchmarks/scaling.py --report benchmarks/RESULTS.md`.", ""]  # fmt: skip
    if len(labels) > 1:
        # reference column: the CPU run with the most cores (else the first run)
        cpus = [(run["machine"]["cpu_count"], _label(run)) for run in runs if run["machine"]["platform"] == "cpu"]
        ref = max(cpus)[1] if cpus else labels[0]
        others = [k for k in labels if k != ref]
        ns = sorted({n for b in best.values() for n in b})
        out += ["## Side by side (best batch size per N, ms/patient; speed-up over the first column)", "",
                "| N | " + " | ".join([ref, *others]) + " | " + " | ".join(f"{ref} / {k}" for k in others) + " |",
                "|---:|" + "---:|" * (1 + 2 * len(others))]  # fmt: skip
        for n in ns:
            cells = [f"{best[k][n]:.4f}" if n in best[k] else "" for k in [ref, *others]]
            ratios = [f"{best[ref][n] / best[k][n]:.1f}" if n in best[ref] and n in best[k] else "" for k in others]
            out.append(f"| {n:,} | " + " | ".join(cells + ratios) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write the measurements to this JSON file (benchmarks/results/scaling_<device>.json)")
    ap.add_argument("--report", help="write the markdown report of every benchmarks/results/scaling_*.json to this path")
    ap.add_argument("--results", default=str(HERE / "results"), help="folder of the scaling_*.json files for --report")
    ap.add_argument("--max-n", type=int, default=1_000_000, help="largest N (powers of ten from 1,000)")
    ap.add_argument("--n", type=int, nargs="+", help="these N instead of powers of ten")
    ap.add_argument("--batch-size", type=int, nargs="+", help="patients per vmapped chunk (default 128 on CPU; 4,096 and 32,768 on an accelerator)")
    ap.add_argument("--repeat-below", type=float, default=60.0, help="time a second call where the first took less (s)")
    ap.add_argument("--platform", choices=["cpu"], help="force the CPU even where an accelerator is visible")
    args = ap.parse_args(argv)
    if not args.json and not args.report:
        ap.error("nothing to do: give --json PATH to measure, --report PATH to write the table, or both")
    for flag, values in (("--max-n", [args.max_n]), ("--n", args.n or []), ("--batch-size", args.batch_size or [])):
        bad = [v for v in values if v < 1]
        if bad:
            ap.error(f"{flag} {bad[0]}: patients and chunk sizes must be positive integers")
    if args.json:
        if args.platform:
            os.environ["JAX_PLATFORMS"] = args.platform
        start = time.perf_counter()
        from il2treg._io import atomic_write_text

        replacing = " (replacing the previous file)" if Path(args.json).exists() else ""

        def keep(result: dict) -> None:
            atomic_write_text(args.json, json.dumps(result, indent=2) + "\n")

        _measure(args, keep)
        print(f"wrote {args.json}{replacing} ({time.perf_counter() - start:.0f} s)")
    if args.report:
        from il2treg._io import atomic_write_text

        paths = glob.glob(os.path.join(args.results, "scaling_*.json"))
        if not paths:
            print(f"error: no scaling_*.json in {args.results}. Fix: measure first (--json {args.results}/scaling_cpu.json).", file=sys.stderr)
            return 1
        try:
            text = report(paths)
        except (ValueError, KeyError, TypeError) as e:
            print(f"error: a file in {args.results} is not a scaling result ({type(e).__name__}: {e}). "
                  "Fix: remove it or measure again with --json.", file=sys.stderr)  # fmt: skip
            return 1
        atomic_write_text(args.report, text + "\n")
        print(f"wrote {args.report} from {len(paths)} result file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
