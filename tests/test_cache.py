"""The persistent compilation cache (il2treg.cache) and the command that turns it on (il2treg_cli)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from il2treg.cache import default_directory, enable_compilation_cache
from il2treg.errors import CacheError

# One process: a simulation of the typical patient through the LUPIL-2 regimen with the cache
# on, printing the solution and how many programs JAX loaded from the cache.
_SIMULATE = """
import json, logging, sys
hits = []
class Count(logging.Handler):
    def emit(self, record):
        if "cache hit" in record.getMessage():
            hits.append(record.getMessage())
logger = logging.getLogger("jax._src.compiler")
logger.setLevel(logging.DEBUG)
logger.addHandler(Count())
import numpy as np
import il2treg
from il2treg.cache import callbacks_disabled
(il2treg.load_model().typical().values * 2.0).block_until_ready()  # a first compilation, before the cache is chosen
il2treg.enable_compilation_cache(sys.argv[1])
sim = il2treg.simulate(il2treg.load_model(), il2treg.regimen.lupil2(), np.linspace(0.0, 84.0, 43))
print(json.dumps({"values": np.asarray(sim.values).tolist(), "hits": len(hits), "callbacks_disabled": callbacks_disabled()}))
"""


def _own_environment() -> dict[str, str]:
    """This process's environment without EQX_ON_ERROR and JAX's cache settings (the test run's
    own cache, tests/conftest.py), so that a subprocess starts as a user's would."""
    return {k: v for k, v in os.environ.items() if k != "EQX_ON_ERROR" and not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}


def _simulate(cache: Path, eqx_on_error: str | None, **extra: str) -> dict:
    env = {**_own_environment(), **extra}
    if eqx_on_error is not None:
        env["EQX_ON_ERROR"] = eqx_on_error
    done = subprocess.run([sys.executable, "-c", _SIMULATE, str(cache)], env=env, capture_output=True, encoding="utf-8", timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_the_solver_from_the_cache_and_gets_the_same_values(tmp_path):
    """With EQX_ON_ERROR=nan the first process writes the solver's programs, the second loads
    them (JAX logs a cache hit) and computes the same values bit for bit."""
    cache = tmp_path / "xla"
    first = _simulate(cache, "nan")
    written = sorted(p.name for p in cache.iterdir())
    assert first["callbacks_disabled"] and written, "the first process wrote nothing to the cache"
    second = _simulate(cache, "nan")
    assert second["hits"] >= 1
    assert second["values"] == first["values"]


def test_the_folder_given_is_used_even_after_jax_opened_another(tmp_path):
    """JAX opens its cache once per process, at the first compilation; a folder passed to
    enable_compilation_cache later (after JAX_COMPILATION_CACHE_DIR named another) still receives
    the programs compiled after the call."""
    first = _simulate(tmp_path / "xla", "nan", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "other"))
    assert first["callbacks_disabled"]
    assert any(p.name.startswith("jit__simulate_batch") for p in (tmp_path / "xla").iterdir())
    assert not any(p.name.startswith("jit__simulate_batch") for p in (tmp_path / "other").iterdir())


@pytest.mark.slow
def test_with_equinox_raising_errors_the_solver_is_not_cached(tmp_path):
    """Why il2treg_cli sets EQX_ON_ERROR=nan (il2treg.cache): in equinox's default mode diffrax's
    run-time checks are host callbacks, and JAX writes no program holding one. If this starts to
    fail, JAX caches such programs and the variable is no longer needed."""
    cache = tmp_path / "xla"
    first = _simulate(cache, None)
    assert not first["callbacks_disabled"]
    second = _simulate(cache, None)
    assert second["hits"] == 0
    assert second["values"] == first["values"]


def test_the_cache_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("IL2TREG_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_directory() == tmp_path / "xdg" / "il2treg" / "xla"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_directory() == Path.home() / ".cache" / "il2treg" / "xla"
    monkeypatch.setenv("IL2TREG_CACHE", str(tmp_path / "mine"))
    assert default_directory() == tmp_path / "mine"
    monkeypatch.setenv("IL2TREG_CACHE", "OFF")
    assert default_directory() is None


def test_an_unusable_cache_folder_is_a_clear_error(monkeypatch, tmp_path):
    import jax

    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setenv("IL2TREG_CACHE", "off")
    with pytest.raises(CacheError, match="IL2TREG_CACHE=off"):
        enable_compilation_cache()
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(CacheError, match=r"cannot create the compilation cache folder.*Fix"):
        enable_compilation_cache(blocker / "xla")
    assert jax.config.jax_compilation_cache_dir == before  # nothing changed


@pytest.mark.slow
def test_the_command_turns_the_cache_on_and_runs_without_one_it_cannot_create(tmp_path):
    """`il2treg` (il2treg_cli.main) sets EQX_ON_ERROR=nan and caches in IL2TREG_CACHE; a folder it
    cannot create gives a one-line warning and the command still succeeds."""
    command = [sys.executable, "-c", "import il2treg_cli; il2treg_cli.main()", "simulate", "--typical", "--days", "7"]
    env = _own_environment()
    done = subprocess.run([*command, "--out", str(tmp_path / "a")], env={**env, "IL2TREG_CACHE": str(tmp_path / "xla")},
                          capture_output=True, encoding="utf-8", timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert any((tmp_path / "xla").iterdir())
    (tmp_path / "a_file").write_text("")
    done = subprocess.run([*command, "--out", str(tmp_path / "b")], env={**env, "IL2TREG_CACHE": str(tmp_path / "a_file" / "xla")},
                          capture_output=True, encoding="utf-8", timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if line.startswith("il2treg: warning:")]
    assert len(warnings) == 1 and "cannot create the compilation cache folder" in warnings[0]
    assert (tmp_path / "b").is_dir()
