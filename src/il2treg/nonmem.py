r"""NONMEM's results beside il2treg's: read a ``.ext`` file and compare a fit with it.

NONMEM 7 writes each estimation step's iterations to ``<run>.ext``: a header line
``TABLE NO. n: <method>: ...``, a line of column names (``ITERATION THETA1 ... SIGMA(1,1) ...
OMEGA(1,1) ... OBJ``), then one row per iteration. Rows with special iteration numbers hold the
results (NONMEM 7 Users Guide, Part VIII, "the .ext file"):

=============  ===============================================================
ITERATION      row
=============  ===============================================================
-1000000000    final estimates (and the final objective in OBJ)
-1000000001    standard errors of the estimates (the covariance step)
-1000000006    1 where the parameter was fixed, 0 where it was estimated
=============  ===============================================================

OMEGA and SIGMA entries are variances and covariances (ω², σ²); the OBJ column is NONMEM's
objective, reported *without* the constant :math:`n_{obs}\log 2\pi`.

:func:`compare` sets a fit's estimates beside NONMEM's on NONMEM's scales: a random effect's
:math:`\omega^2` (il2treg estimates :math:`\omega`, the SD of :math:`\eta`) and a residual
:math:`\sigma^2` (il2treg: the SD), their standard errors by the delta method
(:math:`SE(\omega^2) = 2\omega\,SE(\omega)`), and the OFV without its constant
(il2treg's OFV includes :math:`\log 2\pi` per observation, :mod:`il2treg.likelihood`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from pathlib import Path

import pandas as pd

from il2treg.errors import InputError

__all__ = ["NonmemResults", "compare", "compare_file", "read_ext"]

_FINAL, _SE = -1000000000, -1000000001
_LOG_2PI = math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class NonmemResults:
    r"""The final estimates of one estimation step of a ``.ext`` file.

    Attributes:
        path: the file.
        method: the step's title (``First Order Conditional Estimation with Interaction``).
        estimates: column name (``THETA1``, ``OMEGA(1,1)``, ``SIGMA(1,1)``) -> final estimate.
        standard_errors: the same columns -> SE, or empty when the file has no SE row.
        ofv: the final objective, without the constant :math:`n\log 2\pi`.
    """

    path: str
    method: str
    estimates: dict[str, float]
    standard_errors: dict[str, float]
    ofv: float


def read_ext(path: str | os.PathLike[str], table: int = -1) -> NonmemResults:
    """Read the results of one estimation step (``table``: its index, default the last) of a ``.ext`` file.

    Raises:
        InputError: the file is missing, or is not a ``.ext`` file (naming the line and the fix).
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"NONMEM .ext file '{file}' not found. Fix: check the path.")
    tables: list[tuple[str, list[str], dict[int, list[float]]]] = []
    for number, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if line.startswith("TABLE NO."):
            title = line.split(":", 2)[1].strip() if line.count(":") >= 2 else line
            tables.append((title, [], {}))
            continue
        if not line.strip():
            continue
        if not tables:
            raise InputError(f"'{file}' line {number}: expected a 'TABLE NO.' header first. Fix: give a NONMEM 7 .ext file.")
        fields = line.split()
        if fields[0] == "ITERATION":
            tables[-1][1].extend(fields[1:])
            continue
        names = tables[-1][1]
        try:
            values = [float(v) for v in fields]
        except ValueError:
            raise InputError(f"'{file}' line {number}: {line.strip()[:60]!r} is not a row of numbers. Fix: give a NONMEM 7 .ext file.") from None
        if not names or len(values) != len(names) + 1:
            raise InputError(f"'{file}' line {number}: {len(values)} numbers, but the column line names {len(names)} columns after ITERATION. "
                             "Fix: give an unedited NONMEM 7 .ext file.")  # fmt: skip
        tables[-1][2][int(values[0])] = values[1:]
    if not tables:
        raise InputError(f"'{file}' has no 'TABLE NO.' header: it is not a NONMEM .ext file. Fix: give the run's .ext file.")
    try:
        title, names, rows = tables[table]
    except IndexError:
        raise InputError(f"'{file}' has {len(tables)} estimation step(s); there is no step {table}. Fix: choose one of 0..{len(tables) - 1}.") from None
    if _FINAL not in rows:
        raise InputError(f"'{file}': step {title!r} has no row of final estimates (ITERATION {_FINAL}): the run did not finish. Fix: give a finished run's .ext file.")
    final = dict(zip(names, rows[_FINAL], strict=True))
    ofv = final.pop("OBJ")
    se = {}
    if _SE in rows:
        se = dict(zip(names, rows[_SE], strict=True))
        se.pop("OBJ")
    return NonmemResults(str(file), title, final, se, ofv)


def compare(result, nonmem: NonmemResults, labels: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """One row per parameter and one for the OFV: NONMEM's and the fit's estimate and SE on NONMEM's scale.

    Arguments:
        result: a :class:`il2treg.fit.FitResult` (its ``estimates`` and ``ofv``).
        nonmem: :func:`read_ext`'s results.
        labels: the fit's parameter name -> (label, NONMEM column), e.g.
            ``{"omega_POP_CL": ("IIV_CL", "OMEGA(1,1)")}``. ``omega_*`` and ``sigma_*`` are
            compared as variances; a ``corr_*`` of an omega block with the correlation of
            NONMEM's covariance ``OMEGA(i,j)`` (no NONMEM SE).

    Returns:
        Columns ``parameter`` (the label), ``nonmem``, ``il2treg``, ``relative_difference``,
        ``nonmem_se``, ``il2treg_se``, ``se_relative_difference``; the last row is ``OFV``
        (il2treg's without :math:`n_{obs} \\log 2\\pi`, the difference absolute, no SEs). The
        constant is exact when every observation is continuous and uncensored (as in pheno);
        censored (M3) and ordinal rows carry no :math:`\\log 2\\pi` in either program, so for
        such data add theirs back.
    """
    table = result.estimates.set_index("parameter")
    rows = []
    for name, (label, column) in labels.items():
        if name not in table.index:
            raise InputError(f"the fit has no parameter {name!r} (it has {', '.join(table.index)}). Fix: correct the labels.")
        if column not in nonmem.estimates:
            raise InputError(f"{nonmem.path} has no column {column!r} (it has {', '.join(nonmem.estimates)}). Fix: correct the labels.")
        value, se = float(table.loc[name, "estimate"]), float(table.loc[name, "se"])
        if name.startswith(("omega_", "sigma_")):  # NONMEM's variances
            value, se = value**2, 2.0 * abs(value) * se
        reference, reference_se = nonmem.estimates[column], nonmem.standard_errors.get(column, math.nan)
        if name.startswith("corr_"):  # NONMEM's OMEGA(i,j) is a covariance: its correlation, OMEGA(i,j) / sqrt(OMEGA(i,i) OMEGA(j,j))
            reference, reference_se = _correlation(nonmem, column), math.nan  # the .ext has no SE of the correlation
        rows.append({"parameter": label, "nonmem": reference, "il2treg": value, "relative_difference": _relative(value, reference),
                     "nonmem_se": reference_se, "il2treg_se": se, "se_relative_difference": _relative(se, reference_se)})  # fmt: skip
    ofv = result.ofv - result.n_observations * _LOG_2PI
    rows.append({"parameter": "OFV", "nonmem": nonmem.ofv, "il2treg": ofv, "relative_difference": ofv - nonmem.ofv,
                 "nonmem_se": math.nan, "il2treg_se": math.nan, "se_relative_difference": math.nan})  # fmt: skip
    return pd.DataFrame(rows)


def _correlation(nonmem: NonmemResults, column: str) -> float:
    match = re.fullmatch(r"OMEGA\((\d+),(\d+)\)", column)
    if match is None or match[1] == match[2]:
        raise InputError(f"a correlation of the fit is compared with {column!r}, which is not an off-diagonal OMEGA(i,j). Fix: label it with its OMEGA(i,j) column.")
    i, j = match[1], match[2]
    diagonal = [f"OMEGA({k},{k})" for k in (i, j)]
    missing = [c for c in diagonal if c not in nonmem.estimates]
    if missing:
        raise InputError(f"{nonmem.path} has no column {missing[0]!r}, needed for the correlation of {column!r}. Fix: give the .ext of a run with that OMEGA block.")
    return nonmem.estimates[column] / math.sqrt(nonmem.estimates[diagonal[0]] * nonmem.estimates[diagonal[1]])


def _relative(value: float, reference: float) -> float:
    """value / reference - 1; NaN where the reference is 0 (a fixed 0, an off-diagonal OMEGA) or not a number."""
    return value / reference - 1.0 if reference and math.isfinite(reference) else math.nan


def compare_file(result, path: str | os.PathLike[str]) -> pd.DataFrame:
    """:func:`compare` with the ``.ext`` file and labels of a TOML file (``fits/pheno/nonmem.toml``)::

        ext = "pheno.ext"                          # relative to this file
        [labels]
        POP_CL = ["POP_CL", "THETA1"]              # the fit's name = [label, NONMEM column]
        omega_POP_CL = ["IIV_CL", "OMEGA(1,1)"]
    """
    file = Path(path)
    try:
        doc = tomllib.loads(file.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise InputError(f"'{file}' cannot be read as TOML ({err}). Fix: check the file.") from None
    if not isinstance(doc.get("ext"), str) or not isinstance(doc.get("labels"), dict):
        raise InputError(f"'{file}' needs ext = \"<run>.ext\" and a [labels] table. Fix: add them.")
    labels = {}
    for name, pair in doc["labels"].items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            raise InputError(f"'{file}': labels.{name} must be [label, NONMEM column], got {pair!r}. Fix: e.g. {name} = [\"IIV_CL\", \"OMEGA(1,1)\"].")
        labels[name] = (pair[0], pair[1])
    try:
        return compare(result, read_ext(file.parent / doc["ext"]), labels)
    except InputError as err:
        raise InputError(f"'{file}': {err}") from None
