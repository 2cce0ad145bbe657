"""Biomarker datasets: the long event table, its validation, and padded arrays for batching.

Format
------
A dataset is a long, NONMEM-like table (a CSV file or a pandas DataFrame) with one row per
event:

======  ==================================================================================
column  meaning
======  ==================================================================================
ID      subject identifier; all numbers or all text
TIME    days from the subject's first dose (≥ 0, non-decreasing within an ID)
EVID    0 = observation, 1 = dose, 2 = other event (kept for its time and covariates; its
        DVID, DV and CENS are not read), 3 = reset (the state returns to its initial value and
        running infusions stop), 4 = reset and dose
AMT     dose on dose rows, in the unit of the model's dosing input (IU for the IL-2 model; ≥ 0,
        0 is a placebo injection); empty or 0 on observations
DVID    what was observed: one of the model's observables (:attr:`il2treg.Model.observable_names`; the
        IL-2 model's are :data:`il2treg.observables.OBSERVABLE_NAMES`); empty on doses
DV      observed value in the DVID's unit (:data:`il2treg.observables.OBSERVABLES`); empty on
        doses
CENS    optional, default 0: 1 = below the lower limit of quantification (LLOQ), DV holds the
        LLOQ
MDV     optional, default 0: 1 = missing DV; the row is kept and reported but not fitted
ADDL    optional, default 0, dose rows only: additional doses of the row's amount, at
        ``TIME + j * II`` for ``j = 1..ADDL`` exactly (NONMEM's additional doses)
II      the interval between them, in TIME's unit (> 0 where ADDL > 0 or SS > 0)
CMT     optional, dose rows: the compartment (1-based state number) the dose enters, one the
        model doses into (read only when the model's dosing compartments are given: a fit
        gives them); empty = the first dosing input; not read on other rows
RATE    optional, dose rows: 0 or empty = the input's own way (a bolus, or the infusion the
        model declares); > 0 = a zero-order infusion at this rate (AMT per TIME unit), over
        ``AMT / RATE``; -2 = the duration the model declares (NONMEM's modelled duration)
SS      optional, dose rows: 1 = the dose is at steady state, every II before it (the state
        before it is replaced by the periodic one); 2 = that steady state added to the current
        state (superposition: exact for linear models); 0 or empty = none
other   covariates (``ARM``, ``SITE``, ``WT``, ``BSA``, ...); a column whose values are all
        numbers is numeric, any other is categorical (text). A text covariate is constant
        within an ID. A numeric one may change: it is then time-varying, each value holding
        from its row's time until a later row changes it (last value carried forward); an
        empty cell carries the last value forward (before the first value: that value)
======  ==================================================================================

For example, one subject on ILT-101 with a baseline Treg sample, the first dose, an IL-2 level
below the LLOQ of 1 pM and a Treg sample whose value was lost::

    ID,TIME,EVID,AMT,DVID,DV,CENS,MDV,ARM,WT
    1,0,0,,treg_pct_cd4,5.1,0,0,ILT-101,64
    1,0,1,1500000,,,,,ILT-101,64
    1,0.25,0,,il2_pM,1,1,0,ILT-101,64
    1,7,0,,treg_pct_cd4,,0,1,ILT-101,64

**NONMEM conventions.** ``EVID`` may be left out: a row with ``AMT > 0`` is then a dose and any
other row an observation, as NONMEM reads a dataset without EVID. ``DVID`` may be left out when
the model has one observable, which every observation then is. A ``DV`` of 0 on a dose row is
ignored (NONMEM writes 0 there); any other DV on a dose row is an error. A file may be
whitespace-separated, as NONMEM's ``.dta`` files are (a header line without commas). A dose row
may combine them: ``SS=1, II=12, ADDL=6, CMT=2`` is a steady-state dose into compartment 2
followed by six more every 12 TIME units (:class:`il2treg.records.DoseRecords`); with ``RATE=50``
each is an infusion at 50 per TIME unit (NONMEM refuses ADDL on a steady-state infusion; il2treg
gives the additional ones as plain infusions).
A steady state (SS 1) and a reset (EVID 3, 4) cancel the additional doses of earlier rows still to
come, as in NONMEM.

**Time-varying covariates.** A numeric covariate that changes within an ID splits the subject's
time into periods (:attr:`Dataset.covariate_time`, :attr:`Dataset.covariate_series`); a fit
sets the model's parameters from each period's values, and the solver starts a new period at
its time (:func:`il2treg.simulate.solve_records`): the values of a row hold from its time on
(last value carried forward). NONMEM's PREDPP instead advances the state to a record with that
record's values (next observation carried backward): to reproduce it, give each change on the
row before, at the time the new value should start. An ``EVID 2`` row may carry a change at a
time without a dose or an observation. An occasion column (``OCC``: 1, 2, ... from each
occasion's first row on) is such a covariate; a fit with inter-occasion variability reads it
(:mod:`il2treg.fit.problem`).
``read_dataset(..., time_unit="h")`` reads TIME in hours and holds it in days (the model's time;
a table read in days that spans more than three years gets a warning that TIME may be in hours);
``drop=("FA1", ...)`` leaves columns out, as NONMEM's ``$INPUT FA1=DROP`` does.

Empty cells, ``.``, ``NA``, ``NaN`` and ``nan`` are missing values. Rows are numbered from 1 at
the first data row after the header, in the table's order (blank lines in a CSV file are
skipped and not counted). The rows of one ID need not be contiguous. ``CMT`` is refused unless the
model's dosing compartments are known (``read_dataset(..., doses=...)``, which a fit passes),
rather than ignored, because ignoring it would silently change where the doses go.

Validation
----------
:func:`read_dataset` runs its checks in a fixed order and raises :class:`~il2treg.errors.DataError`
for the first that fails, naming the column, the row (the first offending one) and the fix.
No valid row is dropped: observation rows with ``MDV=1`` stay in the arrays with
``obs_mask=False`` and are listed in :attr:`Dataset.excluded`.
"""

from __future__ import annotations

import difflib
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import equinox as eqx
import numpy as np
import pandas as pd
from jaxtyping import Bool, Float, Int

from il2treg.errors import DataError, InputError
from il2treg.events import (
    TIME_UNITS,
    Cell,
    DoseRows,
    DosingInput,
    SubjectId,
    check_shape,
    csv_cells,
    derive_evid,
    dose_rows,
    expand_doses,
    frame_cells,
    id_text,
    is_missing,
    number,
    number_text,
    numeric,
    show,
    subject_rows,
)  # fmt: skip
from il2treg.observables import OBSERVABLE_NAMES
from il2treg.records import DoseRecords, detailed_records
from il2treg.regimen import Regimen

__all__ = ["OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "Dataset", "DosingInput", "check_file", "read_dataset"]

#: Columns every dataset must have (EVID and DVID may be derived: module docstring).
REQUIRED_COLUMNS: tuple[str, ...] = ("ID", "TIME", "EVID", "AMT", "DVID", "DV")
#: Columns with a default (0) when absent.
OPTIONAL_COLUMNS: tuple[str, ...] = ("CENS", "MDV", "ADDL", "II", "CMT", "RATE", "SS")

_EVENT_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
_SHOWN_EXCLUDED = 10


class Dataset(eqx.Module):
    """A validated biomarker dataset as padded per-subject arrays, ready for ``jax.vmap``.

    Build one with :func:`read_dataset`. Arrays are NumPy (``jit`` and ``vmap`` accept them);
    the first axis is the subject, in order of first appearance in the table. Padding sits at
    the end of each row and is never used: ``obs_mask`` is ``False`` there and dose padding
    has amount 0.

    Attributes:
        ids: original subject IDs (``int``, ``float`` or ``str``), static.
        covariates: name -> ``[subjects]`` array: float64 for numeric covariates (NaN where
            missing), int64 codes into ``covariate_levels`` for categorical ones.
        covariate_levels: ``((name, (level, ...)), ...)`` for categorical covariates, levels
            sorted; a missing value is the level ``""``. Static.
        covariate_time: ``[subjects, periods]``: the days at which each subject's periods of
            constant covariates start (module docstring); the first is the subject's first
            row's time, and padding repeats the last start. One column without time-varying
            covariates.
        covariate_series: time-varying covariate name -> ``[subjects, periods]`` float64 values
            of each period (padding repeats the last); ``covariates[name]`` holds the first.
        obs_time: observation times in days; padding repeats the subject's last observation
            time, so a solver never integrates past the data.
        obs_dvid: index into ``dvid_names``; 0 on padding.
        obs_value: observed value in the DVID's unit (the LLOQ where ``obs_cens``); 0.0 on
            padding and where an ``MDV=1`` row has no DV, so the array is always finite.
        obs_cens: ``True`` where the value is below the LLOQ (``CENS=1``).
        obs_mask: ``True`` where the observation is used: ``False`` on padding and ``MDV=1``.
        obs_dv_missing: ``True`` where an ``MDV=1`` row has no DV (kept so that
            :meth:`to_frame` writes it back empty).
        obs_row: 1-based row of the source table; 0 on padding.
        dose_time: dose times in days; padding repeats the subject's last dose time (0.0 for
            a subject without doses).
        dose_amount: doses in the unit of the model's dosing input (IU for the IL-2 model); 0.0 on padding. At least one column, so a dataset without
            doses still has width-1 dose arrays.
        dose_row: 1-based row of the source table (the additional doses of a row with ADDL
            carry its number); 0 on padding.
        dose_input: index of the dosing input each dose enters (from ``CMT``; 0 without it).
        dose_cmt: the row's ``CMT`` (0 where empty), kept for :meth:`to_frame`.
        dose_duration: infusion duration in days from ``RATE`` (``AMT / RATE``), 0 for the
            input's own way.
        dose_reset: ``True`` on a reset (``EVID`` 3, with amount 0, or 4).
        dose_ss: the row's ``SS`` (0, 1 or 2; additional doses have 0).
        dose_ii: the steady state's interval in days where ``dose_ss`` > 0, else 0.
        dvid_names: the observation types a DVID may name: the model's observables (static).
    """

    ids: tuple[SubjectId, ...] = eqx.field(static=True)
    covariates: dict[str, Float[np.ndarray, " subjects"] | Int[np.ndarray, " subjects"]]
    covariate_levels: tuple[tuple[str, tuple[str, ...]], ...] = eqx.field(static=True)
    covariate_time: Float[np.ndarray, "subjects periods"]
    covariate_series: dict[str, Float[np.ndarray, "subjects periods"]]
    obs_time: Float[np.ndarray, "subjects obs"]
    obs_dvid: Int[np.ndarray, "subjects obs"]
    obs_value: Float[np.ndarray, "subjects obs"]
    obs_cens: Bool[np.ndarray, "subjects obs"]
    obs_mask: Bool[np.ndarray, "subjects obs"]
    obs_dv_missing: Bool[np.ndarray, "subjects obs"]
    obs_row: Int[np.ndarray, "subjects obs"]
    dose_time: Float[np.ndarray, "subjects doses"]
    dose_amount: Float[np.ndarray, "subjects doses"]
    dose_row: Int[np.ndarray, "subjects doses"]
    dose_input: Int[np.ndarray, "subjects doses"]
    dose_cmt: Int[np.ndarray, "subjects doses"]
    dose_duration: Float[np.ndarray, "subjects doses"]
    dose_reset: Bool[np.ndarray, "subjects doses"]
    dose_ss: Int[np.ndarray, "subjects doses"]
    dose_ii: Float[np.ndarray, "subjects doses"]
    dvid_names: tuple[str, ...] = eqx.field(static=True, default=OBSERVABLE_NAMES)

    def records(self) -> DoseRecords | None:
        """The doses' NONMEM details as :class:`~il2treg.records.DoseRecords` (``[subjects,
        doses]``), or None where every dose is a plain one into the first input (no CMT beyond it,
        RATE, reset or SS): the solver then takes its lighter path."""
        return detailed_records(self.dose_input, self.dose_duration, self.dose_reset, self.dose_ss, self.dose_ii)

    @property
    def n_subjects(self) -> int:
        """Number of subjects."""
        return len(self.ids)

    @property
    def excluded(self) -> list[tuple[int, str]]:
        """Observation rows kept but not used (``MDV=1``), as ``(row, reason)`` sorted by row."""
        real = (self.obs_row > 0) & ~self.obs_mask
        found = [
            (
                int(self.obs_row[s, j]),
                f"MDV=1: {self.dvid_names[self.obs_dvid[s, j]]} at TIME "
                f"{number_text(self.obs_time[s, j])} for ID {id_text(self.ids[s])} not used",
            )
            for s, j in zip(*np.nonzero(real), strict=True)
        ]
        return sorted(found)

    def covariate_periods(self, name: str) -> Float[np.ndarray, "subjects periods"]:
        """A numeric covariate's value in each period of :attr:`covariate_time` (a constant one
        repeated)."""
        if name in self.covariate_series:
            return self.covariate_series[name]
        values = np.asarray(self.covariate_values(name), dtype=float)
        return np.repeat(values[:, None], self.covariate_time.shape[1], axis=1)

    def covariate_values(self, name: str) -> np.ndarray:
        """One covariate's per-subject values (a time-varying one's first): float64, or object
        strings if categorical."""
        if name not in self.covariates:
            known = ", ".join(self.covariates) or "none"
            raise InputError(
                f"unknown covariate {name!r}. Fix: use one of the dataset's covariates: {known}."
            )
        levels = dict(self.covariate_levels)
        if name in levels:
            return np.array(levels[name], dtype=object)[self.covariates[name]]
        return self.covariates[name]

    def observed_names(self) -> tuple[str, ...]:
        """DVIDs with at least one used observation, in the order of ``dvid_names``."""
        present = set(self.obs_dvid[self.obs_mask].tolist())
        return tuple(name for k, name in enumerate(self.dvid_names) if k in present)

    def subset(self, ids: Iterable[SubjectId]) -> Dataset:
        """The subjects ``ids``, in that order, with padding trimmed to the widest of them.

        Row numbers (``obs_row``, ``dose_row``, :attr:`excluded`) still refer to the source
        table. Raises :class:`~il2treg.errors.InputError` on an unknown, repeated or empty ID
        list.
        """
        wanted = list(ids)
        position = {subject: k for k, subject in enumerate(self.ids)}
        if not wanted:
            raise InputError("subset() got no IDs. Fix: pass at least one subject ID.")
        for subject in wanted:
            if subject not in position:
                shown = ", ".join(id_text(i) for i in self.ids[:_SHOWN_EXCLUDED])
                more = ", ..." if self.n_subjects > _SHOWN_EXCLUDED else ""
                raise InputError(
                    f"unknown subject ID {subject!r}. Fix: use IDs of the dataset "
                    f"({self.n_subjects} subjects: {shown}{more})."
                )
        repeated = next((s for k, s in enumerate(wanted) if s in wanted[:k]), None)
        if repeated is not None:
            raise InputError(
                f"subject ID {repeated!r} is repeated in subset(). Fix: name each ID once."
            )
        pick = np.array([position[s] for s in wanted])
        n_obs = int((self.obs_row[pick] > 0).sum(axis=1).max())
        n_dose = max(1, int((self.dose_row[pick] > 0).sum(axis=1).max()))
        return self._take(pick, tuple(self.ids[k] for k in pick), n_obs, n_dose)

    def resample(self, positions: Sequence[int]) -> Dataset:
        """The subjects at ``positions`` (0-based, repeats allowed: a bootstrap sample), as new
        subjects numbered 1, 2, ... in that order.

        A subject drawn twice becomes two subjects with their own random effects. The padding
        keeps this dataset's widths, so every resample of it has one shape and a fit's compiled
        programs serve them all (:mod:`il2treg.fit.bootstrap`). Row numbers still refer to the
        source table. Raises :class:`~il2treg.errors.InputError` on an empty list or a position
        outside ``0 .. n_subjects - 1``.
        """
        pick = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pick.size == 0:
            raise InputError("resample() got no positions. Fix: pass at least one subject position.")
        if pick.min() < 0 or pick.max() >= self.n_subjects:
            bad = int(pick[(pick < 0) | (pick >= self.n_subjects)][0])
            raise InputError(f"resample() got position {bad}, outside 0..{self.n_subjects - 1}. Fix: draw positions of the dataset's subjects.")
        return self._take(pick, tuple(range(1, pick.size + 1)), self.obs_time.shape[1], self.dose_time.shape[1])

    def _take(self, pick: np.ndarray, ids: tuple[SubjectId, ...], n_obs: int, n_dose: int) -> Dataset:
        """Rows ``pick`` of every per-subject array, named ``ids``, padding cut to the widths given."""
        return Dataset(
            ids=ids,
            covariates={name: values[pick] for name, values in self.covariates.items()},
            covariate_levels=self.covariate_levels,
            covariate_time=self.covariate_time[pick],
            covariate_series={name: values[pick] for name, values in self.covariate_series.items()},
            obs_time=self.obs_time[pick, :n_obs],
            obs_dvid=self.obs_dvid[pick, :n_obs],
            obs_value=self.obs_value[pick, :n_obs],
            obs_cens=self.obs_cens[pick, :n_obs],
            obs_mask=self.obs_mask[pick, :n_obs],
            obs_dv_missing=self.obs_dv_missing[pick, :n_obs],
            obs_row=self.obs_row[pick, :n_obs],
            dose_time=self.dose_time[pick, :n_dose],
            dose_amount=self.dose_amount[pick, :n_dose],
            dose_row=self.dose_row[pick, :n_dose],
            dose_input=self.dose_input[pick, :n_dose],
            dose_cmt=self.dose_cmt[pick, :n_dose],
            dose_duration=self.dose_duration[pick, :n_dose],
            dose_reset=self.dose_reset[pick, :n_dose],
            dose_ss=self.dose_ss[pick, :n_dose],
            dose_ii=self.dose_ii[pick, :n_dose],
            dvid_names=self.dvid_names,
        )

    def to_frame(self, rows: bool = False) -> pd.DataFrame:
        """The long event table again, rows in source order; ``read_dataset`` round-trips it.

        Observation rows get ``AMT`` 0; dose rows get empty ``DVID`` and ``DV``, ``CENS`` 0
        and ``MDV`` 1 (the NONMEM convention for dose records). Where a dose has more than a time
        and an amount, the table gets ``CMT``, ``RATE`` (per day), ``SS`` and ``II`` (days), and
        resets ``EVID`` 3 (no amount) or 4. A change of a time-varying covariate without a row of
        its own gets an ``EVID 2`` row. With ``rows``, a column ``ROW`` holds each row's number in
        the source table (the additional doses of an ADDL row share its number; 0 on an added
        ``EVID 2`` row).
        """
        add_rows = rows
        obs_s, obs_j = np.nonzero(self.obs_row > 0)
        dose_s, dose_j = np.nonzero(self.dose_row > 0)
        obs_value = self.obs_value[obs_s, obs_j].copy()
        obs_value[self.obs_dv_missing[obs_s, obs_j]] = np.nan
        subject = np.concatenate([obs_s, dose_s])
        names = np.array(self.dvid_names, dtype=object)
        frame = pd.DataFrame(
            {
                "ID": [self.ids[s] for s in subject],
                "TIME": np.concatenate(
                    [self.obs_time[obs_s, obs_j], self.dose_time[dose_s, dose_j]]
                ),
                "EVID": np.concatenate([np.zeros(obs_s.size, dtype=int), self._dose_evid(dose_s, dose_j)]),
                "AMT": np.concatenate([np.zeros(obs_s.size), self.dose_amount[dose_s, dose_j]]),
                "DVID": np.concatenate(
                    [names[self.obs_dvid[obs_s, obs_j]], np.full(dose_s.size, None, dtype=object)]
                ),
                "DV": np.concatenate([obs_value, np.full(dose_s.size, np.nan)]),
                "CENS": np.concatenate(
                    [self.obs_cens[obs_s, obs_j].astype(int), np.zeros(dose_s.size, dtype=int)]
                ),
                "MDV": np.concatenate(
                    [(~self.obs_mask[obs_s, obs_j]).astype(int), np.ones(dose_s.size, dtype=int)]
                ),
            }
        )
        if self.records() is not None:
            amounts, durations = self.dose_amount[dose_s, dose_j], self.dose_duration[dose_s, dose_j]
            infused = durations > 0
            rate = np.where(infused, amounts / np.where(infused, durations, 1.0), 0.0)
            dose_columns = {"CMT": self.dose_cmt, "RATE": None, "SS": self.dose_ss, "II": self.dose_ii}
            if not np.any(self.dose_cmt):
                del dose_columns["CMT"]  # none was given: the table is read without the model's compartments
            for name, values in dose_columns.items():
                on_doses = rate if values is None else values[dose_s, dose_j]
                frame[name] = np.concatenate([np.zeros(obs_s.size, dtype=on_doses.dtype), on_doses])
        rows = np.concatenate([self.obs_row[obs_s, obs_j], self.dose_row[dose_s, dose_j]])
        source = rows
        if self.covariate_series:  # a period start without a row of its own gets an EVID 2 row
            times = frame["TIME"].to_numpy()
            extra = [(s, t) for s in range(self.n_subjects) for t in np.unique(self.covariate_time[s]) if not np.any((subject == s) & (times == t))]
            if extra:
                other = pd.DataFrame({"ID": [self.ids[s] for s, _ in extra], "TIME": [t for _, t in extra], "EVID": 2, "AMT": 0.0,
                                      "DVID": None, "DV": np.nan, "CENS": 0, "MDV": 1})  # fmt: skip
                frame = pd.concat([frame, other.reindex(columns=frame.columns, fill_value=0)], ignore_index=True)
                # numbered as the subject's first row: the time sort below puts them in place
                rows = np.concatenate([rows, [int(np.min(rows[subject == s])) for s, _ in extra]])
                source = np.concatenate([source, np.zeros(len(extra), dtype=source.dtype)])
                subject = np.concatenate([subject, [s for s, _ in extra]]).astype(int)
        times = frame["TIME"].to_numpy()
        for name in self.covariates:
            if name in self.covariate_series:
                period = [np.searchsorted(self.covariate_time[s], t, side="right") - 1 for s, t in zip(subject, times, strict=True)]
                values = self.covariate_series[name][subject, np.maximum(period, 0)]
            else:
                values = self.covariate_values(name)[subject]
            if name in dict(self.covariate_levels):
                values = np.where(values == "", None, values)
            frame[name] = values
        order = np.argsort(rows, kind="stable")
        # The additional doses of an ADDL row share its row number: within each subject the rows
        # are put in time order (a no-op for a table without ADDL, which is in time order already).
        by_subject = subject[order]
        times = frame["TIME"].to_numpy()[order]
        for s in np.unique(by_subject):
            slots = np.flatnonzero(by_subject == s)
            order[slots] = order[slots[np.argsort(times[slots], kind="stable")]]
        if add_rows:
            frame["ROW"] = source
        return frame.iloc[order].reset_index(drop=True)

    def _dose_evid(self, s: np.ndarray, j: np.ndarray) -> np.ndarray:
        """EVID of dose slots: 1, or 3 for a reset without anything of a dose and 4 for one with."""
        reset = self.dose_reset[s, j]
        dosing = (self.dose_amount[s, j] > 0) | (self.dose_ss[s, j] > 0) | (self.dose_cmt[s, j] != 0) | (self.dose_duration[s, j] > 0)
        return np.where(reset, np.where(dosing, 4, 3), 1)

    def events(self, subject: SubjectId) -> pd.DataFrame:
        """One subject's rows of :meth:`to_frame` (doses and observations in time order, times in
        days, each additional dose of an ADDL row on a row of its own): print it to read a
        patient's events.

        Raises:
            DataError: ``subject`` is not an ID of the data (the message lists a few).
        """
        self._require_subject(subject)
        return self.subset([subject]).to_frame()

    def regimen(self, subject: SubjectId) -> Regimen:
        """One subject's doses as a :class:`~il2treg.regimen.Regimen` (days; with its dose records
        where a dose has more than a time and an amount): print it for the subject's dose table,
        additional doses folded back into ADDL/II, or simulate it
        (``il2treg.simulate(model, data.regimen(id), times)``).

        Raises:
            DataError: ``subject`` is not an ID of the data (the message lists a few).
        """
        s = self._require_subject(subject)
        real = self.dose_row[s] > 0
        records = detailed_records(*(x[s][real] for x in (self.dose_input, self.dose_duration, self.dose_reset, self.dose_ss, self.dose_ii)))
        return Regimen(self.dose_time[s][real], self.dose_amount[s][real], name=f"ID {id_text(subject)}", records=records)

    def _require_subject(self, subject: SubjectId) -> int:
        """The index of ``subject``, or a :class:`DataError` listing a few of the data's IDs."""
        if subject not in self.ids:
            shown = ", ".join(id_text(s) for s in self.ids[:5]) + (", ..." if len(self.ids) > 5 else "")
            raise DataError(f"no subject with ID {id_text(subject)} in the data (IDs: {shown}). Fix: use one of the data's IDs.", column="ID")
        return self.ids.index(subject)

    def summary(self) -> str:
        """One screen of text: subjects, arms, sites, observations per DVID, doses, exclusions."""
        real_obs = self.obs_row > 0
        real_dose = self.dose_row > 0
        excluded = self.excluded
        lines = [
            f"Subjects: {self.n_subjects}; rows: {int(real_obs.sum() + real_dose.sum())} "
            f"({int(real_obs.sum())} observations, {int(real_dose.sum())} doses)"
        ]
        for column, label in (("ARM", "Arms"), ("SITE", "Sites")):
            if column in self.covariates:
                lines.append(f"{label} (subjects): {_tally(self.covariate_values(column))}")
        if self.covariates:
            kinds = dict(self.covariate_levels)
            def kind(n: str) -> str:
                if n in kinds:
                    return "text"
                if n in self.covariate_series:
                    series = self.covariate_series[n]
                    most = max(1 + int(np.sum(row[1:] != row[:-1])) for row in series)
                    return f"number, time-varying: up to {most} values per subject"
                return "number"

            described = [f"{n} ({kind(n)})" for n in self.covariates]
            lines.append(f"Covariates: {', '.join(described)}")
        times = np.concatenate([self.obs_time[real_obs], self.dose_time[real_dose]])
        lines.append(f"Time: {number_text(times.min())} to {number_text(times.max())} days")
        per_subject = real_dose.sum(axis=1)
        dose_line = (
            f"Doses: {int(real_dose.sum())} rows, {int(per_subject.min())} to "
            f"{int(per_subject.max())} per subject"
        )
        if real_dose.any():
            amounts = self.dose_amount[real_dose]
            dose_line += (
                f", {number_text(amounts.min())} to {number_text(amounts.max())} per dose (IU for the IL-2 model)"
            )
        lines.append(dose_line)
        if self.records() is not None:
            real = real_dose
            parts = [
                (int((self.dose_duration[real] > 0).sum()), "infusions (RATE)"),
                (int((self.dose_ss[real] > 0).sum()), "steady states (SS)"),
                (int(self.dose_reset[real].sum()), "resets (EVID 3, 4)"),
                (int((self.dose_input[real] > 0).sum()), "doses into another input (CMT)"),
            ]
            lines.append("Dose records: " + ", ".join(f"{n} {what}" for n, what in parts if n))
        lines.append("Observations (used, of which below LLOQ):")
        for k, name in enumerate(self.dvid_names):
            used = self.obs_mask & (self.obs_dvid == k)
            if used.any():
                blq = int((used & self.obs_cens).sum())
                lines.append(f"  {name:<18} {int(used.sum()):>6}   BLQ {blq}")
        lines.append(f"Excluded rows (MDV=1, kept but not used): {len(excluded)}")
        lines.extend(f"  row {row}: {reason}" for row, reason in excluded[:_SHOWN_EXCLUDED])
        if len(excluded) > _SHOWN_EXCLUDED:
            lines.append(f"  ... and {len(excluded) - _SHOWN_EXCLUDED} more")
        return "\n".join(lines)


def read_dataset(
    source: str | os.PathLike[str] | pd.DataFrame,
    *,
    observables: Sequence[str] = OBSERVABLE_NAMES,
    aliases: Mapping[str, str] | None = None,
    time_unit: str = "day",
    drop: Sequence[str] = (),
    doses: Sequence[DosingInput] | None = None,
) -> Dataset:
    """Read, validate and pad a biomarker dataset (format in the module docstring).

    Arguments:
        source: path of a UTF-8 CSV (or whitespace-separated) file, or a DataFrame with the
            same columns.
        observables: the names a DVID may take: the model's observables
            (:attr:`il2treg.Model.observable_names`; default the IL-2 model's).
        aliases: the data's own DVID names mapped to ``observables`` (``{"CP": "conc"}``).
        time_unit: the unit of TIME in the table, ``"day"`` or ``"h"``; the dataset holds days.
        drop: columns to leave out (NONMEM's ``$INPUT NAME=DROP``).
        doses: the model's dosing inputs (:class:`DosingInput`, in the order of its
            ``[doses.<name>]`` tables); with them a ``CMT`` column is read: a dose row's CMT must
            be one of their compartments (empty: the first), an observation row's is not used
            (DVID says what was observed), and ``RATE = -2`` is checked against the inputs that
            declare a duration. Without them a CMT column is refused.

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: the first failed check, with ``.column``, ``.row`` (1-based data row) and a
            message giving cause, place and fix.
    """
    if not isinstance(time_unit, str) or time_unit not in TIME_UNITS:
        raise InputError(f"time_unit {time_unit!r} is not known. Fix: use one of {', '.join(map(repr, TIME_UNITS))}.")
    if isinstance(source, pd.DataFrame):
        where = "the table"
        header, rows = frame_cells(source)
    else:
        where = f"file '{source}'"
        header, rows = csv_cells(Path(source), where, ",".join(REQUIRED_COLUMNS))
    names = tuple(observables)
    cells = _nonmem_defaults(_columns(header, rows, where, tuple(drop), names), names)
    if "CMT" in cells and not doses:
        raise DataError(
            "column 'CMT' needs the model's dosing compartments, which are not given (or the model has no dosing input). Fix: read the data through a fit file "
            "(it knows the model), pass read_dataset(..., doses=...), or drop the column.",
            column="CMT",
        )
    return _build(cells, names, dict(aliases or {}), TIME_UNITS[time_unit], tuple(doses) if doses else None)


def check_file(
    path: str | os.PathLike[str],
    *,
    observables: Sequence[str] = OBSERVABLE_NAMES,
    aliases: Mapping[str, str] | None = None,
    time_unit: str = "day",
    drop: Sequence[str] = (),
    doses: Sequence[DosingInput] | None = None,
) -> str:
    """Validate the dataset file ``path`` for a model with ``observables`` (``aliases``,
    ``time_unit``, ``drop`` and ``doses`` as in :func:`read_dataset`) and return its :meth:`Dataset.summary` text.

    Raises :class:`~il2treg.errors.DataError` as :func:`read_dataset` does.
    """
    data = read_dataset(path, observables=observables, aliases=aliases, time_unit=time_unit, drop=drop, doses=doses)
    read = "" if time_unit == "day" else f"; TIME read in {time_unit}, held in days"
    return f"File: {path} (valid{read})\n{data.summary()}"


# ----------------------------------------------------------------------------------------------
# Reading raw cells


def _columns(header: list[str], rows: list[list[Cell]], where: str, drop: tuple[str, ...] = (), observables: tuple[str, ...] = OBSERVABLE_NAMES) -> dict[str, list[Cell]]:
    """Check the table's shape and header; return column name -> cells, without ``drop``."""
    if not header:
        raise DataError(
            f"{where} is empty. Fix: write a header {','.join(REQUIRED_COLUMNS)} "
            "and one row per event."
        )
    if len(header) == 1:
        raise DataError(
            f"{where} is not a comma-separated table: the header has a single column "
            f"{header[0]!r}. Fix: separate columns with commas, or with spaces as NONMEM's files do (not semicolons), "
            f"starting with the header {','.join(REQUIRED_COLUMNS)}."
        )
    check_shape(header, rows, where)
    for name in drop:
        if name not in header:
            raise DataError(
                f"column {name!r} is to be dropped but the table has no such column (found: {', '.join(header)}). "
                "Fix: correct the name or remove it from the columns to drop.",
                column=name,
            )
    derived = {"EVID"} | ({"DVID"} if len(observables) == 1 else set())
    for name in REQUIRED_COLUMNS:
        if name not in header and name not in derived:
            if name == "DVID":
                raise DataError(
                    f"missing column 'DVID': the model has {len(observables)} observables, so each observation row "
                    f"must say which it is. Fix: add a DVID column naming one of {', '.join(observables)}.",
                    column=name,
                )
            raise DataError(
                f"missing required column {name!r} (found: {', '.join(header)}). Fix: add it; "
                f"required are {', '.join(REQUIRED_COLUMNS)}; CENS and MDV are optional.",
                column=name,
            )
    return {name: [row[k] for row in rows] for k, name in enumerate(header) if name not in drop}


def _nonmem_defaults(cells: dict[str, list[Cell]], observables: tuple[str, ...]) -> dict[str, list[Cell]]:
    """NONMEM's readings of a table without EVID or DVID, and of a DV of 0 on a dose row."""
    cells = derive_evid(dict(cells))
    is_dose = [number(cell) in (1.0, 4.0) for cell in cells["EVID"]]
    if "DVID" not in cells:  # one observable: every observation is it
        cells["DVID"] = [None if number(evid) != 0.0 else observables[0] for evid in cells["EVID"]]
    cells["DV"] = [None if dose and number(cell) == 0.0 else cell for dose, cell in zip(is_dose, cells["DV"], strict=True)]
    return cells


# ----------------------------------------------------------------------------------------------
# Cells -> values


def _flag(column: str, cells: Sequence[Cell], fix: str) -> np.ndarray:
    """Parse an optional 0/1 column (missing = 0) as bool."""
    flags = np.zeros(len(cells), dtype=bool)
    for r, cell in enumerate(cells, start=1):
        value = number(cell)
        if value is not None and math.isnan(value):
            continue
        if value not in (0.0, 1.0):
            raise DataError(
                f"{column} must be 0 or 1; row {r} has {show(cell)}. Fix: {fix}",
                column=column,
                row=r,
            )
        flags[r - 1] = value == 1.0
    return flags


def _covariate(cells: Sequence[Cell]) -> tuple[list[object], bool]:
    """Per-row canonical values of a covariate and whether it is numeric."""
    numbers = [number(cell) for cell in cells]
    if all(value is not None for value in numbers):
        return numbers, True
    return ["" if is_missing(c) else str(c).strip() for c in cells], False


# ----------------------------------------------------------------------------------------------
# Validation and packing


_DV_FIX = (
    "write a number in the DVID's unit; below the LLOQ write the LLOQ and set CENS=1; "
    "for a missing value leave DV empty and set MDV=1."
)


def _build(cells: dict[str, list[Cell]], names: tuple[str, ...], aliases: dict[str, str], days_per_unit: float = 1.0,
           inputs: tuple[DosingInput, ...] | None = None) -> Dataset:
    """Validate the columns (fixed order of checks) and pack them into a :class:`Dataset` whose
    DVIDs are ``names`` (a DVID in ``aliases`` is read as the name it maps to), whose times
    are TIME times ``days_per_unit`` and whose CMTs are those of ``inputs``."""
    index = {name: k for k, name in enumerate(names)}
    index.update({alias: index[target] for alias, target in aliases.items() if target in index})
    table = dose_rows(cells, inputs, days_per_unit)
    n_rows = len(table.subject)
    subject, time, is_dose, is_other, amount = table.subject, table.time, table.is_dose, table.is_other, table.amount

    dvid = np.zeros(n_rows, dtype=np.int64)
    for r, (dose, cell) in enumerate(zip(is_dose, cells["DVID"], strict=True), start=1):
        if dose and not is_missing(cell):
            raise DataError(
                f"dose row {r} (EVID 1) has DVID {show(cell)}. Fix: leave DVID empty on dose "
                "rows.",
                column="DVID",
                row=r,
            )
        if dose or is_other[r - 1]:
            continue
        if is_missing(cell):
            raise DataError(
                f"DVID is missing on observation row {r}. Fix: name what was observed, one of: "
                f"{', '.join(names)}.",
                column="DVID",
                row=r,
            )
        name = cell.strip() if isinstance(cell, str) else cell
        if name not in index:
            close = difflib.get_close_matches(str(name), names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise DataError(
                f"unknown DVID {show(cell)} at row {r}{hint}. Fix: use one of: "
                f"{', '.join(names)}.",
                column="DVID",
                row=r,
            )
        dvid[r - 1] = index[name]

    value = numeric("DV", cells["DV"], _DV_FIX)
    for r, (dose, v) in enumerate(zip(is_dose, value, strict=True), start=1):
        if dose and not math.isnan(v):
            raise DataError(
                f"dose row {r} (EVID 1) carries a DV ({number_text(v)}). Fix: leave DV empty on "
                "dose rows; put the measurement on its own observation row (EVID 0).",
                column="DV",
                row=r,
            )

    no_flags = [None] * n_rows
    cens = _flag(
        "CENS",
        cells.get("CENS", no_flags),
        "1 marks a value below the LLOQ (DV holds the LLOQ), 0 otherwise; empty means 0.",
    )
    for r, (dose, c, v) in enumerate(zip(is_dose, cens, value, strict=True), start=1):
        if c and dose:
            raise DataError(
                f"dose row {r} (EVID 1) has CENS=1. Fix: leave CENS empty or 0 on dose rows.",
                column="CENS",
                row=r,
            )
        if c and math.isnan(v):
            raise DataError(
                f"CENS=1 at row {r} but DV is empty. Fix: write the LLOQ in DV (CENS=1 means the "
                "value is below the LLOQ held in DV).",
                column="CENS",
                row=r,
            )
    mdv = _flag(
        "MDV",
        cells.get("MDV", no_flags),
        "1 keeps the row without using its DV, 0 otherwise; empty means 0.",
    )
    for r, (dose, m, v, k) in enumerate(zip(is_dose | is_other, mdv, value, dvid, strict=True), start=1):
        if not dose and not m and math.isnan(v):
            raise DataError(
                f"DV is missing on observation row {r} ({names[k]}). Fix: fill in the "
                "value, or set MDV=1 to keep the row without using it.",
                column="DV",
                row=r,
            )

    covariate_names = [name for name in cells if name not in _EVENT_COLUMNS]
    covariates = {name: _covariate(cells[name]) for name in covariate_names}

    seen: dict[tuple[object, ...], int] = {}
    for r in range(1, n_rows + 1):
        key = (
            subject[r - 1],
            time[r - 1],
            amount[r - 1] if is_dose[r - 1] else None,
            None if math.isnan(value[r - 1]) else value[r - 1],
            bool(is_dose[r - 1]),
            int(dvid[r - 1]),
            bool(cens[r - 1]),
            bool(mdv[r - 1]) and not is_dose[r - 1],
            *(_key(values[r - 1]) for values, _ in covariates.values()),
        )
        if key in seen:
            raise DataError(
                f"row {r} duplicates row {seen[key]} exactly. Fix: delete one of the two rows.",
                row=r,
            )
        seen[key] = r

    rows_of = subject_rows(table)
    for s, rows in rows_of.items():
        if all(is_dose[k] or is_other[k] for k in rows):
            raise DataError(
                f"ID {id_text(s)} has no observation rows (EVID 0). Fix: add its observations "
                "or remove its rows.",
                column="ID",
                row=rows[0] + 1,
            )
    for name, (values, is_numeric) in covariates.items():
        for s, rows in rows_of.items():
            if is_numeric:
                _carry_forward(values, rows)
                continue
            first = rows[0]
            for k in rows[1:]:
                if _key(values[k]) != _key(values[first]):
                    raise DataError(
                        f"text covariate {name!r} is not constant within ID {id_text(s)}: "
                        f"{show(cells[name][first])} at row {first + 1} but "
                        f"{show(cells[name][k])} at row {k + 1}. Fix: give one value per subject, "
                        "or code a time-varying covariate as numbers.",
                        column=name,
                        row=k + 1,
                    )

    _check_time_span(time, days_per_unit)
    return _pack(rows_of, covariates, table, dvid, value, cens, mdv, names, days_per_unit)


#: Longest plausible span of one dataset in days: beyond it, TIME in days is probably in hours.
PLAUSIBLE_SPAN_DAYS = 3 * 365.0


def _check_time_span(time: np.ndarray, days_per_unit: float) -> None:
    """Warn (:class:`UserWarning`) where TIME read in days spans more than
    :data:`PLAUSIBLE_SPAN_DAYS`: hours read as days stretch every interval 24-fold."""
    span = float(np.max(time) - np.min(time)) * days_per_unit
    if days_per_unit == 1.0 and span > PLAUSIBLE_SPAN_DAYS:
        warnings.warn(
            f"TIME spans {number_text(round(span, 1))} days (over {PLAUSIBLE_SPAN_DAYS / 365:.0f} years), read as days. "
            "Fix: if TIME is in hours, read it with time_unit = \"h\" (fit file) or read_dataset(..., time_unit=\"h\").",
            UserWarning,
            stacklevel=4,
        )


def _carry_forward(values: list[object], rows: list[int]) -> None:
    """Fill the empty (NaN) cells of one subject's ``rows`` of a numeric covariate in place with
    the last value before them (those before the first value: that value)."""
    known = [values[k] for k in rows if not math.isnan(values[k])]
    if not known:
        return
    last = known[0]
    for k in rows:
        if math.isnan(values[k]):
            values[k] = last
        else:
            last = values[k]


def _periods(rows_of: dict[SubjectId, list[int]], time: np.ndarray, series: dict[str, list[object]]) -> list[list[tuple[float, tuple[float, ...]]]]:
    """Per subject, its periods of constant time-varying covariates: ``(start, values)`` where
    ``values`` are those of ``series`` in its order. A period starts at the first row and at each
    row whose values differ from the row before; of several rows at one time the last one's hold."""
    out = []
    for rows in rows_of.values():
        periods: list[tuple[float, tuple[float, ...]]] = []
        for k in rows:
            values = tuple(float(v[k]) for v in series.values())
            if periods and periods[-1][0] == time[k]:
                periods.pop()  # the last row at a time holds from it
            if not periods or not _same(periods[-1][1], values):
                periods.append((float(time[k]), values))
        out.append(periods)
    return out


def _same(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """Whether two rows' covariate values are equal (missing equal to missing)."""
    return [_key(x) for x in a] == [_key(x) for x in b]


def _key(value: object) -> object:
    """A covariate value made comparable: NaN -> None."""
    return None if isinstance(value, float) and math.isnan(value) else value


def _pack(
    rows_of: dict[SubjectId, list[int]],
    covariates: dict[str, tuple[list[object], bool]],
    table: DoseRows,
    dvid: np.ndarray,
    value: np.ndarray,
    cens: np.ndarray,
    mdv: np.ndarray,
    dvid_names: tuple[str, ...],
    days_per_unit: float = 1.0,
) -> Dataset:
    """Padded per-subject arrays from validated row-wise columns, times in TIME's unit converted
    to days (``days_per_unit``), doses as :func:`il2treg.events.expand_doses` gives them."""
    time = table.time
    obs_of = [[k for k in rows if not (table.is_dose[k] or table.is_other[k])] for rows in rows_of.values()]
    dose_of = [expand_doses(table, rows, days_per_unit) for rows in rows_of.values()]
    n_sub = len(rows_of)
    n_obs = max(len(rows) for rows in obs_of)
    n_dose = max(1, max(len(doses) for doses in dose_of))

    obs_index = np.zeros((n_sub, n_obs), dtype=np.int64)
    obs_real = np.zeros((n_sub, n_obs), dtype=bool)
    dose_time = np.zeros((n_sub, n_dose))
    dose_amount = np.zeros((n_sub, n_dose))
    dose_row = np.zeros((n_sub, n_dose), dtype=np.int64)
    extra = {
        "input": np.zeros((n_sub, n_dose), dtype=np.int64), "cmt": np.zeros((n_sub, n_dose), dtype=np.int64),
        "duration": np.zeros((n_sub, n_dose)), "reset": np.zeros((n_sub, n_dose), dtype=bool),
        "ss": np.zeros((n_sub, n_dose), dtype=np.int64), "ii": np.zeros((n_sub, n_dose)),
    }  # fmt: skip
    for s, (obs, doses) in enumerate(zip(obs_of, dose_of, strict=True)):
        # Padding points at the subject's last row, so padded times repeat the last real one.
        obs_index[s] = obs + [obs[-1]] * (n_obs - len(obs))
        obs_real[s, : len(obs)] = True
        if doses:
            t, a, r, *more = (np.asarray(c) for c in zip(*doses, strict=True))
            dose_time[s] = np.concatenate([t, np.full(n_dose - len(t), t[-1])])
            dose_amount[s, : len(a)] = a
            dose_row[s, : len(r)] = r
            for values, column in zip(more, extra.values(), strict=True):
                column[s, : len(values)] = values

    dv_missing = np.isnan(value[obs_index]) & obs_real
    first_rows = [rows[0] for rows in rows_of.values()]
    varying = {
        name: values for name, (values, is_numeric) in covariates.items()
        if is_numeric and any(_key(values[k]) != _key(values[rows[0]]) for rows in rows_of.values() for k in rows)
    }  # fmt: skip
    periods = _periods(rows_of, time, varying) if varying else [[(float(time[rows[0]]), ())] for rows in rows_of.values()]
    n_periods = max(len(p) for p in periods)
    padded = [p + [p[-1]] * (n_periods - len(p)) for p in periods]
    covariate_time = np.array([[start for start, _ in p] for p in padded]) * days_per_unit
    series = {name: np.array([[values[j] for _, values in p] for p in padded]) for j, name in enumerate(varying)}
    numeric = {}
    levels = []
    for name, (values, is_numeric) in covariates.items():
        per_subject = [values[k] for k in first_rows]
        if name in series:  # the first period's (the last of several rows at the first time)
            numeric[name] = series[name][:, 0].copy()
        elif is_numeric:
            numeric[name] = np.array(per_subject, dtype=np.float64)
        else:
            names = tuple(sorted(set(per_subject)))
            levels.append((name, names))
            numeric[name] = np.array([names.index(v) for v in per_subject], dtype=np.int64)
    return Dataset(
        ids=tuple(rows_of),
        covariates=numeric,
        covariate_levels=tuple(levels),
        covariate_time=covariate_time,
        covariate_series=series,
        obs_time=time[obs_index] * days_per_unit,
        obs_dvid=np.where(obs_real, dvid[obs_index], 0),
        obs_value=np.where(obs_real & ~dv_missing, value[obs_index], 0.0),
        obs_cens=cens[obs_index] & obs_real,
        obs_mask=~mdv[obs_index] & obs_real,
        obs_dv_missing=dv_missing,
        obs_row=np.where(obs_real, obs_index + 1, 0),
        dose_time=dose_time,
        dose_amount=dose_amount,
        dose_row=dose_row,
        dose_input=extra["input"],
        dose_cmt=extra["cmt"],
        dose_duration=extra["duration"],
        dose_reset=extra["reset"],
        dose_ss=extra["ss"],
        dose_ii=extra["ii"],
        dvid_names=dvid_names,
    )


def _tally(values: np.ndarray) -> str:
    """``'A 3, B 2'``: each distinct value (sorted) with its number of subjects."""
    shown = [v if isinstance(v, str) else number_text(v) for v in values.tolist()]
    distinct, counts = np.unique(np.array(shown, dtype=str), return_counts=True)
    return ", ".join(
        f"{v or '(missing)'} {n}" for v, n in zip(distinct.tolist(), counts.tolist(), strict=True)
    )
