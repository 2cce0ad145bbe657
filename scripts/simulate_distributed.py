"""Simulate a large virtual population over several hosts with ``jax.distributed`` (a worked example).

Start one process per host (here RANK = 0 .. N-1; host0 runs the coordinator inside process 0):

    .venv/bin/python scripts/simulate_distributed.py run --coordinator host0:12345 \\
        --num-processes N --process-id RANK --n 1000000 --out out/distributed

and, once every process has finished, on any host that sees the output folder:

    .venv/bin/python scripts/simulate_distributed.py gather --out out/distributed

Every process draws the same population (same seed), takes its own contiguous slice of the
patients and simulates it on its own devices: ``il2treg.simulate`` shards a batch over
``jax.local_devices()`` (the GPUs of that host), or shares it over threads on one CPU device.
The processes exchange nothing but the coordinator's handshake, so no collective operation is
needed and a slow host delays nobody. Each writes ``part-RANK-of-N.npz``; ``gather`` checks that
every part is there and writes ``simulation.npz`` (``values [patients, times, observables]``,
``times``, ``names``, ``status``). A patient's solution does not depend on the patients it was
batched with, so the gathered array equals a one-process simulation of the whole population bit
for bit (``tests/test_simulate.py`` runs two processes on one machine and checks it). Nothing is
overwritten: an existing part or result is an error unless ``--force``.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import numpy as np


def _refuse_existing(path: Path, force: bool) -> None:
    """Stop before any work if ``path`` exists and ``--force`` was not given."""
    if path.exists() and not force:
        sys.exit(f"simulate_distributed: error: {path} exists. Fix: choose another --out or pass --force to replace it.")


def _save_npz(path: Path, **arrays) -> None:
    """Write ``arrays`` to ``path`` atomically (a temporary file beside it, then one rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(args: argparse.Namespace) -> None:
    if not 0 <= args.process_id < args.num_processes:
        sys.exit(f"simulate_distributed: error: --process-id {args.process_id} is not in 0..{args.num_processes - 1}. Fix: number the processes from 0.")
    if args.n < args.num_processes:
        sys.exit(f"simulate_distributed: error: --n {args.n} patients cannot be split over {args.num_processes} processes. Fix: use at least one patient per process.")
    part = args.out / f"part-{args.process_id:04d}-of-{args.num_processes:04d}.npz"
    _refuse_existing(part, args.force)  # before the simulation, not after it
    import jax

    jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    import il2treg  # after initialize: JAX's backends must not start before it

    rank, size = jax.process_index(), jax.process_count()
    model = il2treg.load_model(args.model)
    population = il2treg.sample_population(model, args.n, seed=args.seed)  # the same draw on every host
    mine = np.array_split(np.arange(args.n), size)[rank]
    times = np.arange(0.0, args.days + 0.5 * args.dt, args.dt)
    sim = il2treg.simulate(model, il2treg.regimen.named(args.regimen), times, il2treg.Parameters(population.values[mine], population.names))
    args.out.mkdir(parents=True, exist_ok=True)
    _save_npz(part, rows=mine, values=np.asarray(sim.values), status=np.asarray(sim.status), times=times,
              names=np.asarray(sim.names), n=args.n)  # fmt: skip
    print(f"process {rank} of {size}: patients {mine[0]}..{mine[-1]} on {len(jax.local_devices())} local device(s), "
          f"{int(np.sum(np.asarray(sim.status) != 0))} failed; wrote {part}")  # fmt: skip


def gather(args: argparse.Namespace) -> None:
    parts = sorted(p for p in args.out.glob("part-*-of-*.npz") if re.fullmatch(r"part-\d{4}-of-\d{4}", p.stem))
    if not parts:
        sys.exit(f"simulate_distributed: error: no part-RANK-of-N.npz in {args.out}. Fix: run every process first.")
    out = args.out / "simulation.npz"
    _refuse_existing(out, args.force)
    size = int(parts[0].stem.split("-of-")[1])
    expected = [args.out / f"part-{rank:04d}-of-{size:04d}.npz" for rank in range(size)]
    missing = [p.name for p in expected if not p.exists()]
    if missing or len(parts) != size:
        sys.exit(f"simulate_distributed: error: {args.out} has {len(parts)} parts for {size} processes (missing {', '.join(missing) or 'none'}). "
                 "Fix: rerun the missing processes, or clear parts of another run.")
    loaded = [np.load(p) for p in expected]
    n = int(loaded[0]["n"])
    rows = np.concatenate([d["rows"] for d in loaded])
    if not np.array_equal(rows, np.arange(n)):
        sys.exit(f"simulate_distributed: error: the parts in {args.out} do not cover patients 0..{n - 1} once each. Fix: remove parts of other runs.")
    values = np.concatenate([d["values"] for d in loaded])
    status = np.concatenate([d["status"] for d in loaded])
    _save_npz(out, values=values, status=status, times=loaded[0]["times"], names=loaded[0]["names"])
    print(f"{n} patients from {size} processes, {int(np.sum(status != 0))} failed; wrote {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one process: simulate its slice of the population")
    r.add_argument("--coordinator", required=True, help="host:port of process 0")
    r.add_argument("--num-processes", type=int, required=True)
    r.add_argument("--process-id", type=int, required=True)
    r.add_argument("--n", type=int, default=1_000_000, help="virtual patients in all")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--regimen", default="lupil2", help="a named regimen (il2treg.regimen.NAMED_REGIMENS)")
    r.add_argument("--model", default="il2_treg_sledai")
    r.add_argument("--days", type=float, default=84.0)
    r.add_argument("--dt", type=float, default=1.0, help="output step (days)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--force", action="store_true", help="replace an existing part")
    g = sub.add_parser("gather", help="join the parts into simulation.npz")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--force", action="store_true", help="replace an existing simulation.npz")
    args = ap.parse_args(argv)
    run(args) if args.command == "run" else gather(args)


if __name__ == "__main__":
    main()
