"""Typed exceptions of il2treg.

Every error raised on bad input derives from :class:`Il2tregError` and says what was wrong,
where (field, column, row) and how to fix it. The CLI turns any of them into one line and exit
status 2.
"""

from __future__ import annotations


class Il2tregError(Exception):
    """Base class of every error il2treg raises on purpose."""


class InputError(Il2tregError, ValueError):
    """Bad input from the user: a value, a file or an option that cannot be used as given."""


class UnitError(InputError):
    """A unit string that il2treg does not know, or two units that cannot be converted."""


class RegimenError(InputError):
    """A dosing regimen that is invalid: negative or non-finite times or amounts, unknown name,
    a malformed NONMEM dosing table.

    Attributes:
        column: the table's offending column, or ``None`` when the problem is not tied to one.
        row: the 1-based data row of the table (header excluded), or ``None``.
    """

    def __init__(self, message: str, *, column: str | None = None, row: int | None = None):
        super().__init__(message)
        self.column = column
        self.row = row


class SpecError(InputError):
    """A model definition (TOML) or parameter set that is invalid: unknown parameter, out of bounds."""


class ModelFileError(SpecError):
    """A model file (states, equations, observables: :mod:`il2treg.model.format`) that cannot be used.

    Attributes:
        path: the file.
        key: the offending key, e.g. ``equations.central`` or ``states.depot.initial``.
    """

    def __init__(self, path: str, key: str, problem: str, fix: str):
        super().__init__(f"{path}: {key}: {problem}. Fix: {fix}")
        self.path = path
        self.key = key


class DataError(InputError):
    """A biomarker dataset that fails validation.

    Attributes:
        column: the offending column, or ``None`` when the problem is not tied to one.
        row: the 1-based data row (header excluded), or ``None``.
    """

    def __init__(self, message: str, *, column: str | None = None, row: int | None = None):
        super().__init__(message)
        self.column = column
        self.row = row


class PrecisionError(Il2tregError, RuntimeError):
    """float64 is not enabled or a float32 array was passed where float64 is required."""


class SolverError(Il2tregError, RuntimeError):
    """The ODE solver failed for every patient (a single failed patient is flagged, not raised)."""


class CacheError(Il2tregError, OSError):
    """The compilation cache folder cannot be used (:mod:`il2treg.cache`)."""
