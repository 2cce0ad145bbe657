r"""A persistent XLA compilation cache: compile each program once per machine, not once per process.

Most of the time of a first fit or simulation is XLA compiling the solver. JAX can keep
compiled programs on disk and load them in later processes (``jax_compilation_cache_dir``);
the cache key holds the program, the compiler options, the JAX version and the device, so a
change of model, data shape, settings or installation compiles afresh, never reuses a stale
program.

**Why an environment variable as well.** JAX does not write a program that calls back into
Python to the cache. diffrax checks its ``SaveAt(ts)`` arguments at run time with
``equinox.error_if``, which (in equinox's default ``EQX_ON_ERROR=raise`` mode) is such a
callback, so every solve would still compile in every process. With ``EQX_ON_ERROR=nan`` the
check returns NaN instead of raising and the programs can be cached. il2treg's save times are
sorted and clipped to each interval by construction (:func:`il2treg.simulate.solve_one`), so
the check never fires on its calls; a failed solve is reported by its status code either way.
The variable must be set before equinox is imported and applies to the whole process, so
il2treg never sets it on import: the ``il2treg`` command does (:mod:`il2treg_cli`), and a
script or notebook can do the same::

    import os
    os.environ.setdefault("EQX_ON_ERROR", "nan")  # before importing jax, equinox or il2treg
    import il2treg
    il2treg.enable_compilation_cache()

Measured with ``il2treg fit fits/lupil2_virtual/fit.toml`` twice in a row on a 2-core machine
(README, Fitting): first iteration at 105.0 s with an empty cache, 40.2 s with the 3.7 MB the
first run left; the whole command 205 s and 117 s; the same OFV, estimates and covariance bit for
bit.

``IL2TREG_CACHE`` chooses the folder (default ``$XDG_CACHE_HOME/il2treg/xla``, else
``~/.cache/il2treg/xla``); ``IL2TREG_CACHE=off`` turns the cache off. Delete the folder to
reclaim its space; nothing else is kept there.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
from jax.experimental.compilation_cache.compilation_cache import reset_cache

from il2treg.errors import CacheError

#: Environment variable naming the cache folder, or ``off``.
ENV = "IL2TREG_CACHE"


def default_directory() -> Path | None:
    """The folder ``IL2TREG_CACHE`` names (``None`` for ``off``), else the user cache folder."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() == "off":
        return None
    if value:
        return Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "il2treg" / "xla"


def callbacks_disabled() -> bool:
    """Whether equinox's run-time checks are compiled without host callbacks (``EQX_ON_ERROR``
    other than ``raise``), so that the solvers' programs can be cached."""
    import equinox._config  # the value equinox read when it was imported

    return equinox._config.EQX_ON_ERROR != "raise"


def enable_compilation_cache(directory: str | Path | None = None, min_compile_seconds: float = 0.5, max_bytes: int = 1 << 30) -> Path:
    """Keep compiled XLA programs in ``directory`` (default :func:`default_directory`) and load
    them in later processes.

    Args:
        directory: the cache folder; created if missing.
        min_compile_seconds: programs that compile faster than this are not written.
        max_bytes: the folder's size limit; the least recently used programs are deleted beyond it
            (the reference fit writes about 4 MB).

    Returns:
        The folder used.

    Raises:
        CacheError: ``IL2TREG_CACHE=off`` and no folder given, or the folder cannot be created.
    """
    path = Path(directory).expanduser() if directory is not None else default_directory()
    if path is None:
        raise CacheError(f"{ENV}=off turns the compilation cache off. Fix: unset {ENV} or pass a folder.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheError(f"cannot create the compilation cache folder {path}: {err.strerror}. Fix: set {ENV} to a writable folder, or to off.") from err
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    jax.config.update("jax_compilation_cache_max_size", int(max_bytes))
    # JAX opens its cache at the first compilation and keeps that folder for the process; start
    # afresh so that this folder is used even if something compiled before (with another one).
    reset_cache()
    return path
