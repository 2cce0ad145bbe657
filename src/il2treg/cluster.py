"""Many independent jobs on Dask: bootstrap refits, SSE replicates, simulation chunks.

One job is one task (:func:`run_jobs`); it writes its own result file atomically on the worker
as soon as it finishes, so nothing finished is lost when the caller, a worker or the machine
stops, and a rerun skips what is on disk. ``dask.distributed`` runs the tasks: by default on a
``LocalCluster`` of this machine (one process per core, one thread each), or on any scheduler
given by its address, e.g. one started by ``dask-jobqueue`` on SLURM or PBS, or by
``dask-kubernetes`` (README, "Bootstrap, SSE and large simulations")::

    with connect() as client:                       # LocalCluster, one worker per core
        ...
    with connect("tcp://10.0.0.5:8786") as client:  # a running scheduler
        ...

**Worker death.** A worker that dies (killed, out of memory) takes its running task with it; the
scheduler reruns that task on another worker (``distributed.scheduler.allowed-failures``, 3 by
default), and the nanny of a ``LocalCluster`` starts a new worker in its place. An exception
raised *by* a task is retried ``retries`` times, then reported to the caller by job.

**Threads.** A LocalCluster's worker gets ``IL2TREG_THREADS`` (:func:`il2treg.simulate.default_workers`:
the threads a task's solves share), and XLA's CPU backend runs each computation on one thread,
so that the workers of a machine do not compete for its cores. Each worker process
compiles its programs once; with ``IL2TREG_CACHE`` (:mod:`il2treg.cache`) set, a worker loads
what another compiled.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import uuid
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from il2treg._io import atomic_write_text
from il2treg.errors import InputError

#: The environment of a LocalCluster's workers (beside ``IL2TREG_THREADS``): single-threaded
#: XLA computations, and equinox's checks without host callbacks so that the solvers' programs
#: can be cached on disk (:mod:`il2treg.cache`).
WORKER_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false",
    "EQX_ON_ERROR": "nan",
}


def worker_environment(solver_threads: int) -> dict[str, str]:
    """The environment variables a LocalCluster's worker gets (:data:`WORKER_ENV`, the caller's
    ``IL2TREG_CACHE`` if set, and ``IL2TREG_THREADS``: ``solver_threads``)."""
    env = {**WORKER_ENV, "IL2TREG_THREADS": str(solver_threads)}
    if os.environ.get("IL2TREG_CACHE"):
        env["IL2TREG_CACHE"] = os.environ["IL2TREG_CACHE"]
    return env


@functools.cache
def prepare_worker() -> None:
    """Once per worker process, before its first task's computation: keep compiled programs in
    the persistent cache (:func:`il2treg.cache.enable_compilation_cache`, the folder
    ``IL2TREG_CACHE`` names; ``off``: none), so that a worker loads what another compiled. A
    folder that cannot be used is skipped: the cache only saves time."""
    from il2treg.cache import CacheError, default_directory, enable_compilation_cache

    directory = default_directory()
    if directory is not None:
        with suppress(CacheError):
            enable_compilation_cache(directory)


@contextmanager
def connect(scheduler: str | None = None, *, workers: int | None = None, threads_per_worker: int = 1, solver_threads: int | None = None) -> Iterator[Any]:
    """A ``dask.distributed.Client``: of the scheduler at ``scheduler`` (``tcp://host:port``), or
    of a new ``LocalCluster`` of ``workers`` processes (default: one per core) with
    ``threads_per_worker`` threads (tasks at a time) each, closed on exit.

    ``solver_threads`` (default ``threads_per_worker``) is the threads one task's solves may
    share (``IL2TREG_THREADS``): a chunk of a simulation is split over threads by
    :func:`il2treg.simulate.simulate` itself, so one worker process per machine whose task uses
    every core needs the memory of one process (:mod:`il2treg.chunked`), where refits, which use
    one core each, run one worker per core.

    Raises:
        InputError: ``workers`` or ``threads_per_worker`` below 1, or no scheduler answers at
            ``scheduler`` (within 30 s).
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError, ValueError) as err:
            raise InputError(f"no Dask scheduler answered at {scheduler!r} ({err}). Fix: start one (dask scheduler, dask-jobqueue, "
                             "dask-kubernetes) and pass its address, or leave --scheduler out to run on this machine.") from err  # fmt: skip
        with client:
            yield client
        return
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n < 1 or threads_per_worker < 1:
        raise InputError(f"a LocalCluster needs at least one worker of at least one thread, got workers={n}, threads_per_worker={threads_per_worker}. "
                         "Fix: pass --workers 1 or more.")  # fmt: skip
    before = dict(os.environ)  # a nanny sets its pre-spawn variables (OMP_NUM_THREADS, ...) in this process too
    try:
        cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True, dashboard_address=None,
                               silence_logs=logging.ERROR, env=worker_environment(solver_threads or threads_per_worker))  # fmt: skip
        with cluster, Client(cluster) as client:
            yield client
    finally:
        for key in set(os.environ) - set(before):
            del os.environ[key]
        os.environ.update(before)


def n_workers(client: Any) -> int:
    """The number of workers connected to ``client``'s scheduler."""
    return len(client.nthreads())


def run_jobs(client: Any, task: Callable, jobs: Mapping[Hashable, tuple], *, on_done: Callable[[Hashable, Any], None] | None = None,
             retries: int = 1, priority_order: bool = True) -> dict[Hashable, BaseException]:
    """Run ``task(*args)`` for every ``key: args`` of ``jobs`` on ``client``'s workers.

    ``on_done(key, result)`` is called in the caller as each finishes, in the order they finish
    (a progress bar, a running table); an exception it raises (``KeyboardInterrupt`` too)
    cancels the rest and propagates. Jobs are submitted in the order of ``jobs``, earliest first
    where ``priority_order``.

    Returns:
        The jobs whose task raised after ``retries`` retries: key -> exception (the others' results
        went to ``on_done``).
    """
    from distributed import as_completed

    futures = {}
    for rank, (key, args) in enumerate(jobs.items()):
        fut = client.submit(task, *args, key=f"il2treg-{getattr(task, '__name__', 'task')}-{key}-{uuid.uuid4().hex}", pure=False, retries=retries,
                            priority=-rank if priority_order else 0)  # fmt: skip
        futures[fut] = key
    failed: dict[Hashable, BaseException] = {}
    done = as_completed(list(futures), with_results=False)
    try:
        for fut in done:
            key = futures[fut]
            if fut.status == "error":
                failed[key] = fut.exception()
                continue
            if fut.status != "finished":  # cancelled or lost by the scheduler
                failed[key] = RuntimeError(f"the task was {fut.status}")
                continue
            result = fut.result()
            if on_done is not None:
                on_done(key, result)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
    return failed


def open_job_folder(out: Path, settings_file: str, settings: dict, keys: tuple[str, ...], what: str) -> None:
    """Make ``out`` the folder of a run of many jobs, or resume it: refuse a file, a non-empty
    folder without ``settings_file``, or one whose settings differ from ``settings`` in ``keys``
    (its results are another run's); then write ``settings`` (atomically) and create ``out``.

    ``what`` names the run in the messages ("a bootstrap", "an SSE").

    Raises:
        InputError: naming the folder, the setting that differs and the fix.
    """
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {str(out)!r} is a file. Fix: name a folder (new, or {what}'s to resume it).")
    path = out / settings_file
    if path.exists():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{path}: not the settings file of {what} ({err}). Fix: choose another --out.") from err
        for key in keys:
            if before.get(key) != settings[key]:
                raise InputError(f"{out} holds {what} with {key} {before.get(key)!r}, not {settings[key]!r}: its results are not this run's. "
                                 "Fix: choose another --out, or rerun with the same inputs and settings to resume it.")  # fmt: skip
    elif out.exists() and any(out.iterdir()):
        raise InputError(f"{out} is not empty and holds no {what.split(' ', 1)[1]} ({settings_file}). Fix: choose a new --out (or an existing one's, to resume it).")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1))
