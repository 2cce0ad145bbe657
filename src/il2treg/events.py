"""NONMEM event tables: the one reader of their rows, for datasets and for regimens.

A NONMEM dataset and a NONMEM dosing table are the same long table, one row per event. This module
reads what they share, in one fixed order of checks, so that :func:`il2treg.data.read_dataset`
(which goes on to the observations: DVID, DV, CENS, MDV, covariates) and
:func:`il2treg.regimen.from_nonmem` (which keeps the doses) read a row alike:

======  ==================================================================================
column  meaning
======  ==================================================================================
ID      subject identifier; all numbers or all text
TIME    time from the subject's first dose, in the table's unit (days, or hours where the
        reader is told so), ≥ 0 and non-decreasing within an ID
EVID    0 = observation, 1 = dose, 2 = other event, 3 = reset (the state returns to its
        initial value and running infusions stop), 4 = reset and dose. Without the column, a
        row with AMT > 0 is a dose and any other row an observation (NONMEM's reading)
AMT     the dose on dose rows, in the unit of the model's dosing input (≥ 0); empty or 0
        elsewhere
ADDL    ADDL additional doses of the row's amount at ``TIME + j * II``, ``j = 1..ADDL``
II      the interval between them, in TIME's unit (> 0 where ADDL > 0 or SS > 0)
CMT     the compartment (1-based state number) a dose enters: one the model doses into
RATE    0 or empty = the input's own way (a bolus, or the infusion the model declares); > 0 =
        a zero-order infusion of AMT / RATE; -2 = the duration the model declares
SS      1 = the dose is at steady state (the state before it is replaced by the periodic one
        of the dose every II); 2 = that steady state added to the current state; 0 = none
======  ==================================================================================

A steady state (SS 1) and a reset (EVID 3, 4) cancel the additional doses of earlier rows still
to come, as in NONMEM. Every malformed case raises :class:`~il2treg.errors.DataError` naming
the column, the 1-based data row and the fix.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from il2treg.errors import DataError

__all__ = [
    "DoseEvent",
    "DoseRows",
    "DosingInput",
    "csv_cells",
    "derive_evid",
    "dose_rows",
    "expand_doses",
    "frame_cells",
    "id_text",
    "is_missing",
    "number",
    "number_text",
    "numeric",
    "show",
    "subject_ids",
    "subject_rows",
]  # fmt: skip

#: Cells read as missing values.
MISSING_TOKENS = frozenset({"", ".", "NA", "NaN", "nan"})
#: The units TIME may be written in, in days per unit; tables are held in days.
TIME_UNITS: dict[str, float] = {"day": 1.0, "h": 1.0 / 24.0}

Cell = object
SubjectId = int | float | str


class DosingInput(NamedTuple):
    """One of a model's dosing inputs as a dataset sees it: the compartment its doses enter
    (1-based state number, NONMEM's ``CMT``) and whether the model declares an infusion duration
    for it (so that ``RATE = -2`` may ask for it)."""

    cmt: int
    infused: bool = False


def csv_cells(path: Path, where: str, header: str) -> tuple[list[str], list[list[Cell]]]:
    """Header and data rows of a CSV file as strings, after file-level checks (``header``: the
    header an empty file is told to start with)."""
    if not path.is_file():
        raise DataError(f"{where} not found. Fix: check the path.")
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise DataError(
            f"{where} is not a text table (it contains NUL bytes, as binary files do). "
            "Fix: export the data as a comma-separated text (CSV) file."
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{where} is not UTF-8 text. Fix: save it as a UTF-8 CSV file.") from None
    if not text.strip():
        raise DataError(f"{where} is empty. Fix: write a header {header} and one row per event.")
    first = next(line for line in text.splitlines() if line.strip())
    if "," not in first and len(first.split()) > 1:  # whitespace-separated, as NONMEM's .dta files
        lines = [line.split() for line in text.splitlines() if line.strip()]
    else:
        lines = [line for line in csv.reader(io.StringIO(text)) if line]
    return [name.strip() for name in lines[0]], lines[1:]


def frame_cells(frame: pd.DataFrame) -> tuple[list[str], list[list[Cell]]]:
    """Header and rows of a DataFrame as Python values (the index is ignored)."""
    columns = [frame.iloc[:, k].tolist() for k in range(frame.shape[1])]
    return [str(name).strip() for name in frame.columns], [list(row) for row in zip(*columns)]


def check_shape(header: list[str], rows: list[list[Cell]], where: str) -> None:
    """Check that the table ``where`` has data rows, as many fields in each as in its header, and
    a name for each column, each once."""
    if not rows:
        raise DataError(f"{where} has a header but no data rows. Fix: add one row per event.")
    for r, row in enumerate(rows, start=1):
        if len(row) != len(header):
            raise DataError(
                f"row {r} has {len(row)} fields but the header has {len(header)}. Fix: give "
                f"every row {len(header)} fields (in a CSV file, quote values containing commas).",
                row=r,
            )
    for k, name in enumerate(header, start=1):
        if not name:
            raise DataError(
                f"header column {k} has no name. Fix: name every column, or delete the empty "
                "column (often a trailing comma)."
            )
        if name in header[: k - 1]:
            raise DataError(
                f"column {name!r} appears more than once in the header. Fix: keep one column "
                "per name.",
                column=name,
            )


def is_missing(cell: Cell) -> bool:
    if cell is None or cell is pd.NA:
        return True
    if isinstance(cell, float) and math.isnan(cell):
        return True
    return isinstance(cell, str) and cell.strip() in MISSING_TOKENS


def number(cell: Cell) -> float | None:
    """The cell as a float (NaN if missing), or ``None`` if it is not a finite number."""
    if is_missing(cell):
        return math.nan
    if isinstance(cell, bool | np.bool_):
        return None
    if isinstance(cell, int | float | np.integer | np.floating):
        value = float(cell)
    elif isinstance(cell, str):
        try:
            value = float(cell.strip())
        except ValueError:
            return None
    else:
        return None
    return value if math.isfinite(value) else None


def number_text(value: float) -> str:
    """A number for messages: integers without a decimal point, others in shortest form."""
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def show(cell: Cell) -> str:
    """A raw cell for messages: numbers as numbers, text quoted."""
    if is_missing(cell):
        return "an empty cell"
    value = number(cell)
    if value is not None:
        return number_text(value)
    return repr(cell.strip() if isinstance(cell, str) else cell)


def id_text(subject: SubjectId) -> str:
    return repr(subject) if isinstance(subject, str) else number_text(subject)


def numeric(column: str, cells: Sequence[Cell], fix: str) -> np.ndarray:
    """Parse a column as float64 (NaN where missing); raise on the first non-number."""
    values = np.empty(len(cells))
    for r, cell in enumerate(cells, start=1):
        value = number(cell)
        if value is None:
            raise DataError(
                f"{column} must be a finite number; row {r} has {show(cell)}. Fix: {fix}",
                column=column,
                row=r,
            )
        values[r - 1] = value
    return values


def subject_ids(cells: Sequence[Cell]) -> list[SubjectId]:
    """IDs as ints (integral numbers), floats or stripped strings; one kind for the table."""
    parsed: list[SubjectId] = []
    for r, cell in enumerate(cells, start=1):
        if is_missing(cell):
            raise DataError(
                f"ID is missing at row {r}. Fix: give every row its subject's ID.",
                column="ID",
                row=r,
            )
        value = number(cell)
        if value is None:
            parsed.append(cell.strip() if isinstance(cell, str) else str(cell))
        else:
            parsed.append(int(value) if value.is_integer() else value)
    numeric = [not isinstance(subject, str) for subject in parsed]
    for r, is_number in enumerate(numeric, start=1):
        if is_number != numeric[0]:
            kinds = ("numeric", "text") if numeric[0] else ("text", "numeric")
            raise DataError(
                f"ID mixes numbers and text: row 1 has {kinds[0]} ID {show(cells[0])} but row "
                f"{r} has {kinds[1]} ID {show(cells[r - 1])}. Fix: use only numeric IDs or "
                "only text IDs.",
                column="ID",
                row=r,
            )
    return parsed


def _ii_shown(cells: dict[str, list[Cell]], value: float) -> str:
    """How a missing dosing interval reads in a message: the absent column, or the row's II."""
    return "there is no II column" if "II" not in cells else f"II is {number_text(value)}"


def _additional_doses(cells: dict[str, list[Cell]], is_dose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ADDL and II per row (0 where absent), checked: a dose row's ADDL additional doses come
    every II (in TIME's unit) after it, as NONMEM gives them."""
    n_rows = len(is_dose)
    absent = [None] * n_rows
    addl = numeric("ADDL", cells.get("ADDL", absent), "ADDL counts the additional doses of a dose row: 0, 1, 2, ... (empty means 0).")
    ii = numeric("II", cells.get("II", absent), "II is the interval between a dose row's additional doses, in TIME's unit (empty means 0).")
    addl, ii = np.nan_to_num(addl), np.nan_to_num(ii)
    for r in range(1, n_rows + 1):
        dose, a, i = bool(is_dose[r - 1]), addl[r - 1], ii[r - 1]
        if not dose and (a != 0 or i != 0):
            column = "ADDL" if a != 0 else "II"
            raise DataError(
                f"{column} is {number_text(a if a != 0 else i)} on observation row {r}. Fix: ADDL and II belong to dose rows; "
                "leave them empty or 0 on observations.",
                column=column,
                row=r,
            )
        if a < 0 or a != round(a):
            raise DataError(f"ADDL is {number_text(a)} on dose row {r}. Fix: ADDL counts additional doses: a whole number, 0 or more.", column="ADDL", row=r)
        if i < 0:
            raise DataError(f"II is negative ({number_text(i)}) on dose row {r}. Fix: II is the dosing interval, in TIME's unit, 0 or more.", column="II", row=r)
        if a > 0 and i <= 0:
            raise DataError(
                f"dose row {r} has ADDL {number_text(a)} but {_ii_shown(cells, i)}. Fix: give the interval between its additional doses in II "
                "(TIME's unit), or set ADDL 0.",
                column="II",
                row=r,
            )
    return addl.astype(np.int64), ii


def _dose_details(
    cells: dict[str, list[Cell]], is_dose: np.ndarray, amount: np.ndarray, ii: np.ndarray, inputs: tuple[DosingInput, ...] | None, days_per_unit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CMT, RATE and SS of each row, checked: the dosing input index, the CMT, the infusion
    duration in days (``AMT / RATE``; 0 for the input's own way) and SS (0 on rows that are not
    doses)."""
    n_rows = len(is_dose)
    absent = [None] * n_rows
    cmts = [d.cmt for d in inputs] if inputs else [1]
    listed = ", ".join(map(str, cmts))
    cmt = numeric("CMT", cells.get("CMT", absent), f"CMT is the compartment a dose enters ({listed} for this model).")
    rate = numeric("RATE", cells.get("RATE", absent), "RATE is a dose's infusion rate (AMT per TIME unit), 0 for a bolus, or -2 for the model's duration.")
    ss = numeric("SS", cells.get("SS", absent), "SS is 0 (no steady state), 1 or 2.")
    cmt, rate, ss = np.nan_to_num(cmt), np.nan_to_num(rate), np.nan_to_num(ss)
    index = np.zeros(n_rows, dtype=np.int64)
    duration = np.zeros(n_rows)
    for r in range(1, n_rows + 1):
        k = r - 1
        if not is_dose[k]:
            for column, value in (("RATE", rate[k]), ("SS", ss[k])):
                if value != 0:
                    raise DataError(
                        f"{column} is {number_text(value)} on row {r}, which is not a dose. Fix: {column} belongs to dose rows (EVID 1 or 4); "
                        "leave it empty or 0 here.",
                        column=column,
                        row=r,
                    )
            cmt[k] = 0  # an observation's CMT is not read: DVID says what was observed
            continue
        if cmt[k] != 0:
            if cmt[k] not in cmts:
                told = "" if inputs else " (its first dosing input, as no model's compartments are given)"
                raise DataError(
                    f"dose row {r} has CMT {number_text(cmt[k])}, but the model doses into compartment{'s' if len(cmts) > 1 else ''} {listed}{told}. "
                    f"Fix: set CMT to {'one of them' if len(cmts) > 1 else 'it'} (or leave it empty for compartment {cmts[0]})"
                    f"{'' if inputs else ', or pass the model: from_nonmem(..., doses=model.dosing_inputs)'}.",
                    column="CMT",
                    row=r,
                )
            index[k] = cmts.index(int(cmt[k]))
        if rate[k] == -2:
            if inputs is not None and not inputs[index[k]].infused:
                raise DataError(
                    f"RATE -2 on dose row {r} asks for the infusion duration the model declares, but its input (compartment {cmts[index[k]]}) "
                    "declares none. Fix: give the rate in RATE, or declare a duration for the input in the model's [doses] table.",
                    column="RATE",
                    row=r,
                )
        elif rate[k] == -1:
            raise DataError(
                f"RATE -1 on dose row {r} asks for a rate the model computes, which il2treg does not model. Fix: give the rate in RATE, "
                "or declare the input's duration in the model's [doses] table and set RATE -2.",
                column="RATE",
                row=r,
            )
        elif rate[k] < 0:
            raise DataError(
                f"RATE is {number_text(rate[k])} on dose row {r}. Fix: give the infusion rate (AMT per TIME unit, > 0), 0 for a bolus, "
                "or -2 for the duration the model declares.",
                column="RATE",
                row=r,
            )
        elif rate[k] > 0:
            duration[k] = amount[k] / rate[k] * days_per_unit
        if ss[k] not in (0.0, 1.0, 2.0):
            raise DataError(f"SS is {number_text(ss[k])} on dose row {r}. Fix: SS is 0 (none), 1 (steady state) or 2 (steady state added).", column="SS", row=r)
        if ss[k] > 0 and ii[k] <= 0:
            raise DataError(
                f"dose row {r} has SS {number_text(ss[k])} but {_ii_shown(cells, ii[k])}. Fix: give the dosing interval of the steady state in II "
                "(TIME's unit); a steady state of a constant infusion (II 0) is not supported.",
                column="II",
                row=r,
            )
        if ss[k] > 0 and duration[k] > ii[k] * days_per_unit * (1 + 1e-12):  # AMT / RATE of an infusion lasting II rounds either way
            raise DataError(
                f"dose row {r} is a steady-state infusion lasting {number_text(amount[k] / rate[k])} (AMT / RATE), longer than its II "
                f"{number_text(ii[k])}. Fix: check RATE and II; overlapping steady-state infusions are not supported.",
                column="RATE",
                row=r,
            )
    return index, cmt.astype(np.int64), duration, ss.astype(np.int64)


def derive_evid(cells: dict[str, list[Cell]]) -> dict[str, list[Cell]]:
    """The cells with an EVID column: as given, or NONMEM's reading of a table without one (a
    row with an amount > 0 is a dose, any other an observation)."""
    if "EVID" in cells:
        return cells
    amounts = [number(cell) for cell in cells["AMT"]]
    return {**cells, "EVID": [1 if a is not None and a > 0 else 0 for a in amounts]}


class DoseRows(NamedTuple):
    """What :func:`dose_rows` read, one entry per row of the table."""

    subject: list[SubjectId]
    time: np.ndarray  # in TIME's unit
    is_dose: np.ndarray  # EVID 1 or 4
    is_other: np.ndarray  # EVID 2 or 3: no dose, no observation
    is_reset: np.ndarray  # EVID 3 or 4
    amount: np.ndarray  # NaN where missing (not a dose)
    addl: np.ndarray
    ii: np.ndarray  # in TIME's unit
    input: np.ndarray  # index of the dosing input (0 where CMT is empty)
    cmt: np.ndarray  # CMT, 0 where empty or not a dose
    duration: np.ndarray  # infusion duration in days from RATE > 0, else 0
    ss: np.ndarray

    @property
    def is_record(self) -> np.ndarray:
        """Rows that are dose records: doses and resets (a reset is a dose slot of amount 0)."""
        return self.is_dose | self.is_reset


def dose_rows(cells: dict[str, list[Cell]], inputs: tuple[DosingInput, ...] | None, days_per_unit: float = 1.0) -> DoseRows:
    """Read and check ID, TIME, EVID, AMT, ADDL, II, CMT, RATE and SS (in that order; the module
    docstring gives their meaning). ``cells`` maps column names to cells (EVID present: see
    :func:`derive_evid`); ``inputs`` are the model's dosing inputs (None: CMT may only be 1 or
    empty, the first input); TIME is in units of ``days_per_unit`` days. The cells of DVID, DV,
    CENS and the dose columns are cleared on other events and resets (EVID 2, 3), whose rows are
    kept for their time only."""
    n_rows = len(cells["ID"])
    subject = subject_ids(cells["ID"])

    hours = days_per_unit != 1.0
    unit = "hours" if hours else "days"
    fix = f"write TIME in {unit} from the first dose (e.g. {'12 or 1.5' if hours else '7 or 0.125'})."
    time = numeric("TIME", cells["TIME"], fix)
    for r, t in enumerate(time, start=1):
        if math.isnan(t):
            raise DataError(f"TIME is missing at row {r}. Fix: {fix}", column="TIME", row=r)
        if t < 0:
            raise DataError(
                f"TIME is negative ({number_text(t)}) at row {r}. Fix: TIME counts {unit} from "
                "the first dose; record pre-dose baseline samples at TIME 0.",
                column="TIME",
                row=r,
            )

    is_dose = np.zeros(n_rows, dtype=bool)
    is_other = np.zeros(n_rows, dtype=bool)
    is_reset = np.zeros(n_rows, dtype=bool)
    for r, cell in enumerate(cells["EVID"], start=1):
        value = number(cell)
        if value not in (0.0, 1.0, 2.0, 3.0, 4.0):
            raise DataError(
                f"EVID must be 0 (observation), 1 (dose), 2 (other event), 3 (reset) or 4 (reset and dose); row {r} has {show(cell)}. "
                "Fix: use one of 0 to 4.",
                column="EVID",
                row=r,
            )
        is_dose[r - 1] = value in (1.0, 4.0)
        is_other[r - 1] = value in (2.0, 3.0)
        is_reset[r - 1] = value in (3.0, 4.0)
    for r in np.flatnonzero(is_other) + 1:  # NONMEM's other events and resets: no dose, no observation
        a = number(cells["AMT"][r - 1])
        what = "a reset (EVID 3)" if is_reset[r - 1] else "an other event (EVID 2)"
        if a is None or (not math.isnan(a) and a != 0):
            raise DataError(
                f"AMT is {show(cells['AMT'][r - 1])} on row {r}, {what}. Fix: leave AMT empty or 0 there, "
                "or set EVID 1 (or 4, a reset and dose) if the row is a dose.",
                column="AMT",
                row=r,
            )
        for column in ("DVID", "DV", "CENS", "ADDL", "II", "CMT", "RATE", "SS"):
            if column in cells:
                cells[column][r - 1] = None  # not read: the row is kept for its time and covariates only

    amount = numeric("AMT", cells["AMT"], "give doses in the model's dose unit (IU for the IL-2 model: 1500000 for 1.5 MIU).")
    for r, (dose, a) in enumerate(zip(is_dose, amount, strict=True), start=1):
        if dose and math.isnan(a):
            raise DataError(
                f"AMT is missing on dose row {r}. Fix: give the dose in the model's dose unit (IU for "
                "the IL-2 model: 1500000 for 1.5 MIU), or 0 for a placebo injection.",
                column="AMT",
                row=r,
            )
        if dose and a < 0:
            raise DataError(
                f"AMT is negative ({number_text(a)}) on dose row {r}. Fix: give the dose in the "
                "model's dose unit, 0 or more.",
                column="AMT",
                row=r,
            )
        if not dose and not math.isnan(a) and a != 0:
            raise DataError(
                f"AMT is {number_text(a)} on observation row {r} (EVID 0). Fix: leave AMT empty "
                "or 0 on observation rows, or set EVID 1 if the row is a dose.",
                column="AMT",
                row=r,
            )

    addl, ii = _additional_doses(cells, is_dose)
    index, cmt, duration, ss = _dose_details(cells, is_dose, amount, ii, inputs, days_per_unit)
    return DoseRows(subject, time, is_dose, is_other, is_reset, amount, addl, ii, index, cmt, duration, ss)


def subject_rows(table: DoseRows) -> dict[SubjectId, list[int]]:
    """Each subject's row indices (0-based), subjects in order of first appearance (the rows of
    an ID need not be contiguous); raises where TIME decreases within an ID."""
    rows_of: dict[SubjectId, list[int]] = {}
    for k, s in enumerate(table.subject):
        rows_of.setdefault(s, []).append(k)
    time = table.time
    for s, rows in rows_of.items():
        for previous, k in itertools.pairwise(rows):
            if time[k] < time[previous]:
                raise DataError(
                    f"TIME decreases within ID {id_text(s)} at row {k + 1} "
                    f"({number_text(time[k])} after {number_text(time[previous])} at row "
                    f"{previous + 1}). Fix: sort the rows of each ID by TIME.",
                    column="TIME",
                    row=k + 1,
                )
    return rows_of


class DoseEvent(NamedTuple):
    """One dose slot of a subject after :func:`expand_doses`."""

    time: float  # days
    amount: float
    row: int  # 1-based row of the table (an additional dose carries its row's)
    input: int
    cmt: int
    duration: float  # days
    reset: bool
    ss: int
    ii: float  # days, where ss > 0


def expand_doses(table: DoseRows, rows: Sequence[int], days_per_unit: float = 1.0) -> list[DoseEvent]:
    """One subject's dose slots in time order (rows at one time keep their order): each dose
    record of ``rows``, then its ADDL additional doses at ``time + j * ii`` (the sum in TIME's unit,
    then converted to days), each with the row's number, input, CMT and RATE (not its reset or SS),
    unless a later row's reset or steady state (SS 1) comes first: that cancels them, as in
    NONMEM. A reset (EVID 3) is a slot of amount 0."""
    t, ii = table.time, table.ii
    clears = [(t[k], k) for k in rows if table.is_reset[k] or table.ss[k] == 1]
    doses = [
        DoseEvent(
            (t[k] + j * ii[k]) * days_per_unit, float(table.amount[k]) if table.is_dose[k] else 0.0, k + 1, int(table.input[k]), int(table.cmt[k]),
            float(table.duration[k]), bool(table.is_reset[k]) and j == 0, int(table.ss[k]) if j == 0 else 0,
            float(ii[k]) * days_per_unit if j == 0 and table.ss[k] else 0.0,
        )
        for k in rows if table.is_record[k] for j in range(int(table.addl[k]) + 1)
        if j == 0 or not any(r > k and c <= t[k] + j * ii[k] for c, r in clears)
    ]  # fmt: skip
    return sorted(doses, key=lambda d: d.time)
