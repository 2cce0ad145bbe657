"""Shared fixtures: one model and a few regimens per session, so compiled solves are reused."""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")  # figures are rendered, never shown

# ----------------------------------------------------------------------------- one compilation cache per run
# The run's processes (the controller, the xdist workers, the CLI, script and notebook subprocesses)
# share one on-disk XLA cache (il2treg.cache), so that a program is compiled once per run: after
# every module `_release_compiled_code` empties the in-memory caches, and the next module that
# builds the same program (the shared fixtures' solvers, the fit's programs) loads it instead of
# compiling it again. The cache starts empty in every run unless IL2TREG_TEST_XLA_CACHE names a
# folder to keep; the controller deletes the folder it made. The programs must be compiled without
# host callbacks to be cached, hence EQX_ON_ERROR=nan, as the il2treg command runs (il2treg.cache);
# tests of equinox's default mode start their own processes (tests/test_cache.py).
if "IL2TREG_TEST_XLA_CACHE" not in os.environ:
    os.environ["IL2TREG_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="il2treg-test-xla-")
    atexit.register(shutil.rmtree, os.environ["IL2TREG_TEST_XLA_CACHE"], ignore_errors=True)
os.environ.setdefault("EQX_ON_ERROR", "nan")
# Results that more than one xdist worker needs (the misspecified fit), computed once per run in
# a new folder (never one kept from an earlier run, whose code may differ), which the controller
# makes and deletes; its workers inherit the variable.
if os.environ.get("PYTEST_XDIST_WORKER") is None:
    os.environ["IL2TREG_TEST_SHARED"] = tempfile.mkdtemp(prefix="il2treg-test-shared-")
    atexit.register(shutil.rmtree, os.environ["IL2TREG_TEST_SHARED"], ignore_errors=True)
# Every program, in a folder with a size limit (which turns on JAX's file lock). The subprocesses
# read these; this process passes them to il2treg.enable_compilation_cache (pytest_configure).
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["IL2TREG_TEST_XLA_CACHE"]
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 << 30)

import numpy as np
import pytest

import il2treg

# ----------------------------------------------------------------------------- compile-time profile
# How much of the suite's time is JAX building programs (tracing, lowering, XLA): every test's
# setup, call and teardown add what jax.monitoring reports to its user properties (which reach
# the controller from xdist workers and the junit XML), and the run ends with the total.
_JAX_BUILD_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_build_s = [0.0]
_loaded = [0, 0.0]  # programs loaded from the run's cache, and the compile time they saved (s)


def _on_jax_event(name: str, secs: float, **_) -> None:
    if name in _JAX_BUILD_EVENTS:
        _build_s[0] += secs
    elif name == "/jax/compilation_cache/compile_time_saved_sec":
        _loaded[0] += 1
        _loaded[1] += secs


def pytest_configure(config):
    import jax

    from il2treg.cache import callbacks_disabled
    from il2treg.errors import CacheError

    if not callbacks_disabled():
        raise pytest.UsageError("equinox was imported before tests/conftest.py set EQX_ON_ERROR=nan; the run's compilation cache needs it")
    folder = os.environ["JAX_COMPILATION_CACHE_DIR"]
    try:
        il2treg.enable_compilation_cache(folder, float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]), int(os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"]))
    except CacheError as err:
        raise pytest.UsageError(f"IL2TREG_TEST_XLA_CACHE={folder}: {err.__cause__}. Fix: name a writable folder, or unset it for a new temporary one.") from err
    jax.monitoring.register_event_duration_secs_listener(_on_jax_event)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    build, loaded, saved = item.stash.get(_phase_start, (0.0, 0, 0.0))
    outcome = yield
    report = outcome.get_result()
    report.user_properties.append(("jax_build_s", _build_s[0] - build))
    report.user_properties.append(("xla_cache", (_loaded[0] - loaded, _loaded[1] - saved)))
    item.stash[_phase_start] = (_build_s[0], *_loaded)


_phase_start = pytest.StashKey[tuple]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    item.stash[_phase_start] = (_build_s[0], *_loaded)
    yield


# ----------------------------------------------------------------------------- heaviest files first
# xdist (`--dist loadfile --no-loadscope-reorder`, the Makefile) hands the test files to its
# workers in collection order, a file at a time; its default order (most tests first) started
# test_notebooks and test_fit_bayes (few tests, minutes each) late, and the run ended with one
# worker busy. The files in the order of their summed test time in `make test-all` (the run
# prints it, "test time by file"; measured on a fresh clone of 0446877, 2026-12-05), the rest after them as
# collected.
_HEAVY_FIRST = ("test_fit_population", "test_notebooks", "test_simulate", "test_design", "test_model_pk", "test_fit_bayes", "test_cli",
                "test_fit_result", "test_fit_omega", "test_sbml", "test_trial", "test_model_format", "test_fit_saem", "test_fit_aggregate", "test_cache",
                "test_likelihood", "test_diagnostics", "test_fit_profile", "test_nonmem", "test_plots", "test_fit_estimate", "test_sledai",
                "test_regimen", "test_benchmarks", "test_fit_priors", "test_fit_individual")  # fmt: skip


def pytest_collection_modifyitems(session, config, items):
    rank = {name: k for k, name in enumerate(_HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each file's tests keep their order


def pytest_terminal_summary(terminalreporter):
    reports = [r for group in terminalreporter.stats.values() for r in group if hasattr(r, "user_properties") and hasattr(r, "when")]
    build = sum(v for r in reports for k, v in r.user_properties if k == "jax_build_s")
    total = sum(getattr(r, "duration", 0.0) for r in reports)
    if total > 0:
        terminalreporter.write_line(f"JAX tracing, lowering and XLA compilation: {build:.0f} s of the {total:.0f} s the tests took ({100 * build / total:.0f}%)")
        by_file: dict[str, float] = {}
        for r in reports:
            name = Path(r.nodeid.split("::")[0]).stem
            by_file[name] = by_file.get(name, 0.0) + getattr(r, "duration", 0.0)
        heavy = sorted(by_file.items(), key=lambda kv: -kv[1])
        terminalreporter.write_line("test time by file (s): " + ", ".join(f"{name} {secs:.0f}" for name, secs in heavy))
    loads = [v for r in reports for k, v in r.user_properties if k == "xla_cache"]
    if loads:
        n, saved = sum(v[0] for v in loads), sum(v[1] for v in loads)
        terminalreporter.write_line(f"XLA programs loaded from the run's compilation cache: {n}, saving {saved:.0f} s of compilation")


@pytest.fixture(scope="session")
def model():
    return il2treg.load_model()


@pytest.fixture(scope="session")
def model_no_sink():
    return il2treg.load_model("il2_treg_sledai_no_sink")


@pytest.fixture(scope="session")
def lupil2():
    return il2treg.regimen.lupil2()


@pytest.fixture(scope="session")
def tight():
    """Tolerances for reference comparisons (closed forms, finite differences)."""
    return il2treg.SolverOptions(rtol=1e-11, atol=1e-14, max_steps=200_000)


@pytest.fixture(scope="session")
def daily_grid():
    return np.arange(0.0, 84.0 + 1e-9, 0.25)


def simulated_dataset(model, n, seed, *, noise=0.1, days=(0.0, 5.0, 7.0, 14.0, 28.0, 56.0, 84.0),
                      dvids=("treg_per_uL", "tconv_per_uL", "cd25_treg_rel"), params=None, weights=False):  # fmt: skip
    """A small LUPIL-2-dosed dataset with log-normal (≈ proportional) noise, and its true parameters."""
    import pandas as pd

    from il2treg.data import read_dataset

    params = il2treg.sample_population(model, n, seed) if params is None else params
    reg = il2treg.regimen.lupil2()
    t = np.asarray(days)
    sim = il2treg.simulate(model, reg, t, params)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rows += [dict(ID=i + 1, TIME=float(tt), EVID=1, AMT=float(a), DVID=None, DV=None) for tt, a in zip(reg.times, reg.amounts)]
        for j, tt in enumerate(t):
            for d in dvids:
                rows.append(dict(ID=i + 1, TIME=float(tt), EVID=0, AMT=None, DVID=d, DV=float(sim[d][i, j]) * float(np.exp(noise * rng.normal()))))
    frame = pd.DataFrame(rows).sort_values(["ID", "TIME", "EVID"], kind="stable")
    if weights:
        frame["WT"] = frame["ID"].map(dict(enumerate(rng.uniform(50, 95, n).round(1), start=1)))
    return read_dataset(frame), params


FIT_FIXED = ("emax_treg", "kout_treg", "treg0", "tconv0", "emax_cd25")
FIT_RANDOM = ("emax_treg", "treg0", "tconv0")
FIT_SIGMAS = (("treg_per_uL", "prop"), ("tconv_per_uL", "prop"), ("cd25_treg_rel", "prop"))


@pytest.fixture(scope="session")
def fit_case(model):
    """A 24-patient simulated cohort, its FOCE-I objective and a starting point 30% off the truth."""
    import jax.numpy as jnp

    from il2treg.fit import Objective, make_problem, patient_arrays, to_unconstrained
    from il2treg.likelihood import ResidualModel

    data, params = simulated_dataset(model, 24, seed=1)
    problem = make_problem(model, data, fixed=FIT_FIXED, random=FIT_RANDOM, sigmas=FIT_SIGMAS)
    residual = ResidualModel.build(sigmas={d: (0.0, 0.15) for d, _ in FIT_SIGMAS})
    objective = Objective(problem, patient_arrays(data), residual)
    truth = {n: float(model.typical()[n]) for n in FIT_FIXED}
    psi0 = jnp.concatenate([
        to_unconstrained(problem, {n: 1.3 * v for n, v in truth.items()}),
        jnp.log(jnp.full(len(FIT_RANDOM), 0.3)), jnp.log(jnp.full(len(FIT_SIGMAS), 0.15)),
    ])  # fmt: skip
    return dict(data=data, params=params, problem=problem, residual=residual, objective=objective, truth=truth, psi0=psi0)


def run_cli(monkeypatch, capsys, *args):
    """Run the il2treg command in-process: (exit code, stdout, stderr)."""
    import sys

    from il2treg import cli

    monkeypatch.setattr(sys, "argv", ["il2treg", *args])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
    """Free compiled XLA programs after each test module.

    Without this the full suite segfaulted inside XLA compilation late in the run (tests/test_trial.py,
    reproducibly, after the NUTS and profile tests were added), while every module passed alone: the
    process accumulates compiled code. Shared fixtures recompile in the next module if needed.
    """
    yield
    import jax

    jax.clear_caches()


#: Dense early sampling, so that the timing of the Treg rise is seen.
DENSE_DAYS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 10.0, 14.0, 21.0, 28.0)
SMALL_FIT_TOML = """name = "{name}"
model = "il2_treg_sledai"
data = "data.csv"
[parameters.emax_treg]
cv_percent = 40
[parameters.kout_treg]
[parameters.treg0]
cv_percent = 40
[parameters.tconv0]
cv_percent = 30
[error.treg_per_uL]
kind = "proportional"
sigma_prop = 0.1
[error.tconv_per_uL]
kind = "proportional"
sigma_prop = 0.1
"""


def once_per_run(name: str, compute):
    """``compute()`` (a FitResult) once per test run: the first xdist worker to ask computes it and
    saves it to the run's shared folder (atomically), holding a file lock; a worker that asks later
    waits for the lock and loads it. Every worker gets the loaded copy (``load_fit``, equal to the
    computed result: tests/test_fit_result.py), so no test depends on which worker computed it.
    ``compute`` gets a new empty folder for its inputs."""
    import fcntl

    from il2treg.fit.result import load_fit, save

    folder = Path(os.environ["IL2TREG_TEST_SHARED"]) / name
    with open(folder.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not folder.exists():
            save(compute(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=folder.parent))), folder)
        return load_fit(folder)


@pytest.fixture(scope="session")
def misspecified_fit(model):
    """il2treg's model (3-compartment proliferation delay) fitted by FOCE-I to 16 IL-2 patients
    simulated WITHOUT the delay (transit_compartments = 0): Treg and Tconv counts over 4 weeks."""
    from il2treg.fit import compute_fit, read_fit_spec

    def compute(folder):
        data, _ = simulated_dataset(il2treg.load_model("il2_treg_sledai_no_delay"), 16, 7, days=DENSE_DAYS, dvids=("treg_per_uL", "tconv_per_uL"))
        frame = data.to_frame()
        frame[frame["TIME"] <= 28].to_csv(folder / "data.csv", index=False)
        (folder / "fit.toml").write_text(SMALL_FIT_TOML.format(name="no_delay_data"))
        return compute_fit(read_fit_spec(folder / "fit.toml"))

    return once_per_run("misspecified_fit", compute)


@pytest.fixture(scope="session")
def misspecified_diagnostics(misspecified_fit):
    from il2treg.diagnostics import diagnose

    return diagnose(misspecified_fit, n_sim=1000, seed=0)


@pytest.fixture(scope="session")
def armed_diagnostics(misspecified_diagnostics):
    """The misspecified fit's diagnostics with two covariates added to its data: a text ``ARM``
    (patients alternately ``placebo`` and ``IL-2``) and a numeric ``DOSEGRP`` (1 or 2). Every
    patient still had LUPIL-2 dosing: the strata differ only by name, which is all a stratified
    VPC needs to be checked against its strata computed alone."""
    from il2treg.data import read_dataset

    diag = misspecified_diagnostics
    frame = diag.data.to_frame()
    order = {pid: k for k, pid in enumerate(diag.data.ids)}
    frame["ARM"] = frame["ID"].map(lambda pid: "IL-2" if order[pid] % 2 else "placebo")
    frame["DOSEGRP"] = frame["ID"].map(lambda pid: 2.0 if order[pid] % 3 == 0 else 1.0)
    return dataclasses.replace(diag, data=read_dataset(frame))
