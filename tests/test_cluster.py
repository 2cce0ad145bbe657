"""Dask helpers (il2treg.cluster): the workers' environment, refusals, and run_jobs on a
LocalCluster of 2 workers (a failing job is reported by key, the others' results arrive)."""

from __future__ import annotations

import operator
import os

import pytest

from il2treg.cluster import WORKER_ENV, connect, n_workers, run_jobs, worker_environment
from il2treg.errors import InputError
from il2treg.simulate import default_workers


def test_a_worker_gets_single_threaded_xla_its_thread_count_and_the_callers_cache(monkeypatch):
    monkeypatch.setenv("IL2TREG_CACHE", "/some/cache")
    env = worker_environment(3)
    assert env["IL2TREG_THREADS"] == "3" and env["IL2TREG_CACHE"] == "/some/cache"
    assert env["XLA_FLAGS"] == WORKER_ENV["XLA_FLAGS"] and env["EQX_ON_ERROR"] == "nan"


@pytest.mark.skipif(__import__("jax").default_backend() != "cpu", reason="threads share a batch on the CPU only")
def test_il2treg_threads_caps_the_threads_a_batch_is_shared_over(monkeypatch):
    monkeypatch.setenv("IL2TREG_THREADS", "1")
    assert default_workers() == 1
    monkeypatch.setenv("IL2TREG_THREADS", "64")
    assert default_workers() == (os.cpu_count() or 1)  # never more than the cores
    monkeypatch.setenv("IL2TREG_THREADS", "none")
    with pytest.raises(InputError, match=r"IL2TREG_THREADS='none' is not a positive number"):
        default_workers()


def test_a_cluster_without_workers_is_refused():
    with pytest.raises(InputError, match=r"at least one worker.*Fix: pass --workers 1 or more"), connect(workers=0):
        pass


def test_jobs_run_on_two_workers_and_a_failing_one_is_reported_by_key():
    before = dict(os.environ)
    done = {}
    with connect(workers=2) as client:
        assert n_workers(client) == 2
        jobs = {"a": (6, 3), "b": (1, 0), "c": (9, 3)}
        failed = run_jobs(client, operator.truediv, jobs, on_done=done.__setitem__, retries=0)
    assert done == {"a": 2.0, "c": 3.0}
    assert list(failed) == ["b"] and isinstance(failed["b"], ZeroDivisionError)
    assert dict(os.environ) == before  # the nannies' variables (OMP_NUM_THREADS, ...) do not stay behind
