"""The ``il2treg`` command's entry point: prepares the process, then runs :func:`il2treg.cli.main`.

It lives outside the ``il2treg`` package because importing the package imports equinox, and
``EQX_ON_ERROR`` must be set before that for the compiled solvers to be cacheable on disk
(:mod:`il2treg.cache`). A value the user set is kept; ``IL2TREG_CACHE=off`` turns the cache off.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    os.environ.setdefault("EQX_ON_ERROR", "nan")  # diffrax's argument checks, compiled without host callbacks

    from il2treg import cli
    from il2treg.cache import CacheError, default_directory, enable_compilation_cache

    directory = default_directory()
    if directory is not None:
        try:
            enable_compilation_cache(directory)
        except CacheError as err:  # a cache is an optimisation: run without it
            print(f"il2treg: warning: {err}", file=sys.stderr)
    cli.main()


if __name__ == "__main__":
    main()
