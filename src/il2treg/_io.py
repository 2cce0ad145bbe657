"""Writing results safely: never overwrite silently, never leave a half-written folder.

The temporary folder and file are created the way ``mkdir`` and ``open`` create them (modes
``0o777`` and ``0o666``, which the kernel reduces by the process umask, or by a default ACL
of the parent folder), not with :mod:`tempfile`'s private ``0o700``/``0o600``: those are
meant for shared ``/tmp``, and here they would leave a results folder written with ``--out``
unreadable by the group even when the umask allows it. Letting the kernel apply the umask
needs no call to :func:`os.umask`, which changes a process-wide setting and so would race
with other threads creating files.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from contextlib import contextmanager
from pathlib import Path

from il2treg.errors import InputError

_ATTEMPTS = 100  # as tempfile.TMP_MAX: random names that already exist before giving up


def _new_dir(parent: Path, prefix: str) -> Path:
    """A new, empty folder ``parent/<prefix><random>`` with the mode of a plain ``mkdir``."""
    for _ in range(_ATTEMPTS):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free temporary name {prefix}* in {parent}")


def _new_file(parent: Path, prefix: str) -> tuple[int, Path]:
    """A new, empty file ``parent/<prefix><random>`` opened for writing, with the mode of a plain ``open``."""
    for _ in range(_ATTEMPTS):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name {prefix}* in {parent}")


@contextmanager
def atomic_output_dir(out: str | Path, *, force: bool = False):
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    An existing ``out`` is an error unless ``force``; if the body raises, nothing is written.
    The folder gets the mode a plain ``mkdir`` would give (``0o777`` less the umask).
    """
    out = Path(out)
    if out.exists() and not force:
        raise InputError(f"output folder {str(out)!r} already exists. Fix: choose another --out or pass --force to replace it.")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_dir(out.parent, f".{out.name}.")
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        backup = out.with_name(f".{out.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        out.rename(backup)
        tmp.rename(out)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        tmp.rename(out)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and one rename.

    A new file gets the mode a plain ``open`` would give (``0o666`` less the umask); a replaced
    file keeps its mode, as it would when rewritten in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path.parent, f".{path.name}.")
    try:
        with open(fd, "w", encoding="utf-8") as f:
            if path.exists():
                os.fchmod(f.fileno(), stat.S_IMODE(path.stat().st_mode))
            f.write(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
