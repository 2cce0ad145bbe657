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

**Threads.** A worker of ``threads_per_worker`` threads gets ``IL2TREG_THREADS`` set to it
(:func:`il2treg.simulate.default_workers`), and XLA's CPU backend runs each computation on one
thread, so that the workers of a machine do not compete for its cores. Each worker process
compiles its programs once; with ``IL2TREG_CACHE`` (:mod:`il2treg.cache`) set, a worker loads
what another compiled.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from il2treg.errors import InputError

#: The environment of a LocalCluster's workers (beside ``IL2TREG_THREADS``): single-threaded
#: XLA computations, and equinox's checks without host callbacks so that the solvers' programs
#: can be cached on disk (:mod:`il2treg.cache`).
WORKER_ENV = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "EQX_ON_ERROR": "nan",
}


def worker_environment(threads_per_worker: int) -> dict[str, str]:
    """The environment variables a LocalCluster's worker gets (:data:`WORKER_ENV`, the caller's
    ``IL2TREG_CACHE`` if set, and ``IL2TREG_THREADS``)."""
    env = {**WORKER_ENV, "IL2TREG_THREADS": str(threads_per_worker)}
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
def connect(scheduler: str | None = None, *, workers: int | None = None, threads_per_worker: int = 1) -> Iterator[Any]:
    """A ``dask.distributed.Client``: of the scheduler at ``scheduler`` (``tcp://host:port``), or
    of a new ``LocalCluster`` of ``workers`` processes (default: one per core) with
    ``threads_per_worker`` threads each, closed on exit.

    Raises:
        InputError: ``workers`` or ``threads_per_worker`` below 1, or no scheduler answers at
            ``scheduler`` (within 30 s).
    """
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="30s")
        except (OSError, TimeoutError) as err:
            raise InputError(f"no Dask scheduler answered at {scheduler!r} ({err}). Fix: start one (dask scheduler, dask-jobqueue, "
                             "dask-kubernetes) and pass its address, or leave --scheduler out to run on this machine.") from err  # fmt: skip
        with client:
            yield client
        return
    n = workers if workers is not None else (os.cpu_count() or 1)
    if n < 1 or threads_per_worker < 1:
        raise InputError(f"a LocalCluster needs at least one worker of at least one thread, got workers={n}, threads_per_worker={threads_per_worker}. "
                         "Fix: pass --workers 1 or more.")  # fmt: skip
    cluster = LocalCluster(n_workers=n, threads_per_worker=threads_per_worker, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR, env=worker_environment(threads_per_worker))  # fmt: skip
    with cluster, Client(cluster) as client:
        yield client


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
        fut = client.submit(task, *args, key=f"il2treg-{key}-{os.getpid()}-{id(jobs)}", pure=False, retries=retries,
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
            result = fut.result()
            if on_done is not None:
                on_done(key, result)
    finally:
        pending = [f for f in futures if not f.done()]
        if pending:
            client.cancel(pending)
    return failed
