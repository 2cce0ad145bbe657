"""Regimen design: what a second :func:`il2treg.optimise` with other constraints costs, this checkout
against an earlier commit, one right after the other.

    .venv/bin/python benchmarks/design.py --against 2735ef7 [--steps 20]

Each side runs in its own fresh process (``IL2TREG_CACHE=off``: nothing loaded from disk), with
its own ``src/`` (the earlier one from a temporary git worktree) and the same ``.venv``: two
designs of LUPIL-2's 16 doses for the typical patient, 5 starts, ``--steps`` steps each; the
first with the limits of ``tests/test_design.py``, the second with other limits (a Tconv limit
instead of NK and Cmax, a smaller total, the 90% quantile) and other step lengths. Reported per
design: wall seconds and, of them, JAX's trace + lowering + XLA compile seconds
(``jax.monitoring``), and the highest objective reached over the starts, which must not change.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from cold_fit import earlier_tree  # noqa: E402  (a temporary worktree of the earlier commit)

#: Run in the measured process (its own src/ first on the path).
CHILD = """
import json, sys, time
import jax
compile_s = [0.0]
def on_event(name, secs, **_):
    if name.endswith(("trace_duration", "to_mlir_module_duration", "backend_compile_duration")):
        compile_s[0] += secs
jax.monitoring.register_event_duration_secs_listener(on_event)
import il2treg
from il2treg.design import Constraints, optimise
steps = int(sys.argv[1])
model = il2treg.load_model()
designs = {
    "first": dict(constraints=Constraints(nk_change_max_pct=30.0, cmax_max_pM=25.0, total_dose_max_iu=24e6, dose_max_iu=3e6)),
    "second": dict(constraints=Constraints(tconv_change_max_pct=5.0, total_dose_max_iu=20e6, quantile=0.9), learning_rate=0.3),
}
out = {}
for name, kw in designs.items():
    c0, t0 = compile_s[0], time.perf_counter()
    d = optimise("lupil2", objective="treg_mean_fold", model=model, n_starts=5, steps=steps, **kw)
    out[name] = {"wall_s": time.perf_counter() - t0, "compile_s": compile_s[0] - c0, "value": float(d.start_values.max())}
print(json.dumps(out))
"""


def run(src: Path, steps: int) -> dict:
    env = {**os.environ, "IL2TREG_CACHE": "off", "PYTHONPATH": str(src)}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(steps)], cwd=ROOT, env=env, capture_output=True, text=True, encoding="utf-8")
    if proc.returncode != 0:
        raise SystemExit(f"the design run failed with {src}:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--against", required=True, help="git revision to compare with (e.g. the commit before a change)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", help="write the numbers to this JSON file")
    args = ap.parse_args()
    with earlier_tree(args.against) as base:
        runs = {args.against: run(base / "src", args.steps), "this checkout": run(ROOT / "src", args.steps)}
    print(f"two designs in one process, 5 starts x {args.steps} steps each (wall s / of which JAX build s / highest objective over the starts)\n")
    print("| code | first design | second design (other limits) |\n|---|---:|---:|")
    for label, r in runs.items():
        cells = [f"{r[k]['wall_s']:.1f} / {r[k]['compile_s']:.1f} / {r[k]['value']:.12f}" for k in ("first", "second")]
        print(f"| {label} | {cells[0]} | {cells[1]} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"against": args.against, "steps": args.steps, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
