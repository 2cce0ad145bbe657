"""Dosing regimens as data: dose times and amounts, built from a few words or read from NONMEM rows.

A :class:`Regimen` is a pytree of two float64 arrays, dose times (days from the first dose of the
trial, model time) and amounts (IU as administered, before bioavailability). It is built with
:func:`daily`, :func:`every`, :func:`weekly`, :func:`cycles`, combined with :meth:`Regimen.then`
and :func:`concat` (``+``), taken from the literature with :func:`named`, or read from NONMEM
dose records with :func:`from_nonmem` (the reader datasets use, :mod:`il2treg.events`: CMT, RATE,
SS and resets ride along as :class:`~il2treg.records.DoseRecords`). :func:`stack` pads a list of regimens to one batched
regimen with a leading patient axis, ready for ``jax.vmap``.

Example, the LUPIL-2 schedule (1.5 MIU daily for 5 days, then weekly from day 8)::

    daily(1.5e6, 5).then(weekly(1.5e6, 11), gap=3)   # doses at t = 0, 1, 2, 3, 4, 7, 14, ..., 77
"""

from __future__ import annotations

import inspect
import operator
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float

from il2treg.errors import DataError, RegimenError
from il2treg.events import (
    TIME_UNITS,
    DosingInput,
    check_shape,
    csv_cells,
    derive_evid,
    dose_rows,
    expand_doses,
    frame_cells,
    subject_rows,
)
from il2treg.records import FIELDS, DoseRecords, combine_records, detailed_records, pad_records

#: Routes of administration a regimen may use; every dose enters the subcutaneous depot.
ROUTES: tuple[str, ...] = ("sc",)

#: Assessment day of LUPIL-2 (week 12 after the first dose), model time in days.
LUPIL2_ASSESSMENT_DAY: float = 84.0

#: Columns written by :func:`to_nonmem`, in order (RATE and SS only for a regimen with records).
NONMEM_COLUMNS: tuple[str, ...] = ("ID", "TIME", "EVID", "AMT", "CMT", "ADDL", "II", "RATE", "SS")


def _float64(x: object) -> Float[Array, "..."]:
    return jnp.asarray(x, dtype=jnp.float64)


def _is_traced(*values: object) -> bool:
    return any(isinstance(v, jax.core.Tracer) for v in values)


class Regimen(eqx.Module):
    """A dosing regimen: when each dose is given and how much.

    Doses are bolus injections into the subcutaneous depot. Times are in days of model time
    (0 = first dose of the trial) and must not decrease along the dose axis; two doses may share a
    time (their amounts add). A batched regimen (from :func:`stack`) has leading patient axes;
    padded doses have amount 0 at the patient's last dose time and change nothing.

    A regimen read from NONMEM rows (:func:`from_nonmem`) may say more of each dose: the dosing
    input it enters (CMT), an infusion (RATE), a steady state (SS, II) or a reset (EVID 3, 4). It
    then carries :class:`~il2treg.records.DoseRecords` aligned with its doses, and the solver
    reads them as it reads a dataset's.

    Validation runs when the regimen is built from concrete values and is skipped under ``jit``.

    **Fields:**

    - `times`: dose times in days, float64, shape ``(..., doses)``.
    - `amounts`: dose amounts in IU as administered (before bioavailability), float64, >= 0.
    - `route`: route of administration, one of :data:`ROUTES` (static).
    - `name`: a label for reports, e.g. ``"lupil2"`` (static).
    - `records`: the doses' NONMEM details, or None where each is a plain dose into the model's
      first dosing input.

    **Raises:** :class:`RegimenError` naming the field, the index of the first bad dose and the fix.
    """

    times: Float[Array, "... doses"] = eqx.field(converter=_float64)
    amounts: Float[Array, "... doses"] = eqx.field(converter=_float64)
    route: str = eqx.field(static=True, default="sc")
    name: str = eqx.field(static=True, default="")
    records: DoseRecords | None = None

    def __check_init__(self) -> None:
        if self.route not in ROUTES:
            raise RegimenError(
                f"Regimen field 'route' is {self.route!r}; supported routes: {', '.join(ROUTES)}. "
                "Fix: use route='sc' (the model has a subcutaneous depot only)."
            )
        if _is_traced(self.times, self.amounts):
            return
        times, amounts = np.asarray(self.times), np.asarray(self.amounts)
        if times.shape != amounts.shape:
            raise RegimenError(
                f"Regimen fields 'times' {times.shape} and 'amounts' {amounts.shape} differ in "
                "shape. Fix: give one amount per dose time."
            )
        if times.ndim == 0:
            raise RegimenError(
                "Regimen fields 'times' and 'amounts' are scalars; they need a dose axis. "
                "Fix: pass 1-D arrays, e.g. Regimen(times=[0.0], amounts=[1.5e6])."
            )
        _reject_first(times, ~np.isfinite(times), "times", "is not finite",
                      "give every dose a finite time in days")
        _reject_first(amounts, ~np.isfinite(amounts), "amounts", "is not finite",
                      "give every dose a finite amount in IU")
        _reject_first(amounts, amounts < 0, "amounts", "is negative",
                      "amounts are IU per dose and must be >= 0 (use 0 for a skipped dose)")
        decreasing = np.zeros(times.shape, dtype=bool)
        decreasing[..., 1:] = np.diff(times, axis=-1) < 0
        _reject_first(times, decreasing, "times", "is earlier than the dose before it",
                      "sort the doses by time, or combine regimens with concat() which sorts")
        if self.records is not None:
            shapes = {k: np.shape(getattr(self.records, k)) for k in FIELDS}
            wrong = next((k for k, shape in shapes.items() if shape != times.shape), None)
            if wrong is not None:
                raise RegimenError(
                    f"Regimen field 'records' has {wrong} of shape {shapes[wrong]} but the times are {times.shape}. "
                    "Fix: give one record per dose (DoseRecords.plain(n) for plain doses)."
                )
            duration, ss, ii = (np.asarray(x) for x in (self.records.duration, self.records.ss, self.records.ii))
            _reject_first(duration, ~(np.isfinite(duration) & (duration >= 0)), "records.duration", "is not a duration >= 0",
                          "give an infusion's duration in days, or 0 for the input's own way")
            _reject_first(ss, ~np.isin(ss, [0, 1, 2]), "records.ss", "is not 0, 1 or 2", "SS is 0 (none), 1 or 2")
            _reject_first(ii, (ss > 0) & ~(ii > 0), "records.ii", "is not > 0 on a steady-state dose",
                          "give the steady state's dosing interval in days")
            _reject_first(duration, (ss > 0) & (duration > ii * (1 + 1e-12)), "records.duration", "is longer than the steady state's interval ii",
                          "overlapping steady-state infusions are not supported: shorten the infusion or lengthen ii")
            inputs = np.asarray(self.records.input)
            _reject_first(inputs, inputs < 0, "records.input", "is negative", "give the index of one of the model's dosing inputs, 0 for the first")  # fmt: skip

    @property
    def n_doses(self) -> int:
        """Number of doses per patient (length of the dose axis, padding included)."""
        return self.times.shape[-1]

    @property
    def total_iu(self) -> Float[Array, "..."]:
        """Total amount administered in IU (per patient for a batched regimen)."""
        return self.amounts.sum(axis=-1)

    def table(self) -> pd.DataFrame:
        """The doses as a table, one row per run of equal doses at an equal interval (as
        :func:`to_nonmem` compresses them): ``time`` (day), ``amount`` (the model's dose unit,
        IU for the IL-2 model), ``input`` (the route; with records, the index of the model's
        dosing input the dose enters, 0 = the first), ``addl`` (additional doses) and ``ii``
        (their interval, day). With records also ``duration`` (of an infusion, day; 0 = the
        input's own way), ``ss`` (0, 1, 2: steady state, its interval in ``ii``) and ``reset``.
        An unbatched regimen only."""
        _require_unbatched(self, "table")
        rows = []
        for k, addl, step in _runs(np.asarray(self.times), np.asarray(self.amounts), True, self.records):
            t, a = float(self.times[k]), float(self.amounts[k])
            if self.records is None:
                rows.append((t, a, self.route, int(addl), float(step)))
            else:
                r = self.records
                ii = float(r.ii[k]) if int(r.ss[k]) else float(step)
                rows.append((t, a, int(r.input[k]), int(addl), ii, float(r.duration[k]), int(r.ss[k]), bool(r.reset[k])))
        columns = ["time", "amount", "input", "addl", "ii"] + ([] if self.records is None else ["duration", "ss", "reset"])
        return pd.DataFrame(rows, columns=columns)

    def __repr__(self) -> str:
        """A readable dose table, as mrgsolve prints its event objects::

            Regimen 'lupil2': 16 doses from day 0 to 77, 24000000 in total
             time (day)   amount  input  addl  ii (day)
                      0  1500000     sc     4         1
                      7  1500000     sc    10         7
        """
        if _is_traced(self.times, self.amounts):
            return f"Regimen(traced, times {self.times.shape}, name={self.name!r})"
        label = f"Regimen {self.name!r}" if self.name else "Regimen"
        if self.times.ndim != 1:
            return f"{label}: {self.times.shape[0]} patients (batched, {self.n_doses} dose slots each); print one patient's regimen for its table"
        if self.n_doses == 0:
            return f"{label}: no doses"
        times = np.asarray(self.times)
        head = f"{label}: {self.n_doses} doses from day {_short(times[0])} to {_short(times[-1])}, {_short(float(self.total_iu))} in total"
        table = self.table()
        header = ["time (day)", "amount", "input", "addl", "ii (day)"]
        cells = [[_short(r.time), _short(r.amount), str(r.input), str(r.addl), _short(r.ii) if r.addl or r.ii else "."] for r in table.itertuples()]
        if self.records is not None:
            header += ["duration (day)", "ss", "reset"]
            for row, r in zip(cells, table.itertuples(), strict=True):
                row += [_short(r.duration) if r.duration else ".", str(r.ss) if r.ss else ".", "yes" if r.reset else "."]
        widths = [max(len(h), *(len(c[k]) for c in cells)) for k, h in enumerate(header)]
        lines = [" " + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
        lines += [" " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
        return "\n".join([head, *lines])

    __str__ = __repr__

    def shift(self, days: float) -> Regimen:
        """The same regimen with every dose `days` later (earlier if negative)."""
        return Regimen(self.times + days, self.amounts, route=self.route, name=self.name, records=self.records)

    def then(self, other: Regimen, gap: float) -> Regimen:
        """Follow this regimen by `other`, its first dose `gap` days after this one's last dose.

        `other`'s own spacing is kept; its absolute times are ignored. If either regimen has no
        doses, the other is returned as it is. Both must be unbatched.

        **Example:** ``daily(1.5e6, 5).then(weekly(1.5e6, 11), gap=3)`` doses at 0, 1, 2, 3, 4,
        7, 14, ..., 77.
        """
        _require_unbatched(self, "then")
        _require_unbatched(other, "then")
        _require_same_route((self, other))
        if not _is_traced(gap) and not gap >= 0:
            raise RegimenError(
                f"then(gap={gap!r}): gap is the number of days from the last dose to the next "
                "regimen's first dose and must be >= 0. Fix: pass a non-negative gap in days."
            )
        if self.n_doses == 0 or other.n_doses == 0:
            return self if other.n_doses == 0 else other
        offset = self.times[-1] + gap - other.times[0]
        return Regimen(
            jnp.concatenate([self.times, other.times + offset]),
            jnp.concatenate([self.amounts, other.amounts]),
            route=self.route,
            records=_joined_records((self, other)),
        )

    def __add__(self, other: Regimen) -> Regimen:
        """Merge two regimens on the same (absolute) time axis; see :func:`concat`."""
        return concat(self, other)


def _reject_first(values: np.ndarray, bad: np.ndarray, field: str, problem: str, fix: str) -> None:
    """Raise a :class:`RegimenError` for the first element flagged in ``bad``, if any."""
    if not bad.any():
        return
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    where = f"dose index {index[0]}" if len(index) == 1 else f"index {index} (the last is the dose)"
    raise RegimenError(
        f"Regimen field '{field}' at {where}: value {values[index].item()!r} {problem}. "
        f"Fix: {fix}."
    )


def _records_of(regimen: Regimen) -> DoseRecords:
    """The regimen's records, or plain ones for a regimen without."""
    return regimen.records if regimen.records is not None else DoseRecords.plain(regimen.times.shape[-1])


def _joined_records(regimens: Sequence[Regimen], order: Array | None = None) -> DoseRecords | None:
    """The records of ``regimens`` joined along the dose axis (then taken in ``order``), or None
    where none has any. Steady-state slots add up (an upper bound on any patient's count)."""
    if all(r.records is None for r in regimens):
        return None
    parts = [_records_of(r) for r in regimens]
    joined = combine_records(parts, jnp.concatenate, sum(p.steady_states for p in parts))
    return joined if order is None else jax.tree.map(lambda x: x[order], joined)


def _short(x: float) -> str:
    """A number for the dose table: integers without a decimal point, others to 6 significant digits."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.6g}"


def _require_unbatched(regimen: Regimen, operation: str) -> None:
    if regimen.times.ndim != 1:
        raise RegimenError(
            f"{operation}() needs unbatched regimens (times of shape (doses,)); got shape "
            f"{regimen.times.shape}. Fix: combine per-patient regimens first, then stack() them."
        )


def _require_same_route(regimens: Sequence[Regimen]) -> str:
    routes = sorted({r.route for r in regimens})
    if len(routes) > 1:
        raise RegimenError(
            f"Regimens with different routes {routes} cannot be combined. "
            "Fix: give every regimen the same route."
        )
    return routes[0]


def _count(value: object, argument: str) -> int:
    """``value`` as a non-negative int, or a :class:`RegimenError` naming ``argument``."""
    try:
        count = operator.index(value)
    except TypeError:
        count = -1
    if count < 0:
        raise RegimenError(
            f"{argument}={value!r} must be a whole number >= 0. "
            f"Fix: pass an int, e.g. {argument}=5."
        )
    return count


def concat(*regimens: Regimen) -> Regimen:
    """Merge regimens given on one absolute time axis into one, sorted by time.

    Doses at equal times keep their order (stable sort), so ``concat(a, b)`` lists ``a``'s dose
    first. With no arguments, the regimen without doses. ``a + b`` is ``concat(a, b)``.
    """
    if not regimens:
        return none()
    for r in regimens:
        _require_unbatched(r, "concat")
    route = _require_same_route(regimens)
    times = jnp.concatenate([r.times for r in regimens])
    amounts = jnp.concatenate([r.amounts for r in regimens])
    order = jnp.argsort(times, stable=True)
    return Regimen(times[order], amounts[order], route=route, records=_joined_records(regimens, order))


def every(amount_iu: float, interval_days: float, n: int, start: float = 0.0) -> Regimen:
    """`n` doses of `amount_iu` IU, one every `interval_days` days from day `start`.

    Dose ``k`` (0-based) is at ``start + interval_days * k`` days.
    """
    n = _count(n, "n")
    if not _is_traced(interval_days) and not (np.isfinite(interval_days) and interval_days > 0):
        raise RegimenError(
            f"every(interval_days={interval_days!r}) must be a finite number of days > 0. "
            "Fix: pass the time between doses in days, e.g. 7.0 for weekly."
        )
    return Regimen(start + interval_days * jnp.arange(n, dtype=jnp.float64),
                   jnp.full((n,), amount_iu, dtype=jnp.float64))


def daily(amount_iu: float, n_days: int, start: float = 0.0) -> Regimen:
    """`n_days` daily doses of `amount_iu` IU from day `start`."""
    return every(amount_iu, 1.0, n_days, start)


def weekly(amount_iu: float, n: int, start: float = 0.0) -> Regimen:
    """`n` weekly doses of `amount_iu` IU from day `start`."""
    return every(amount_iu, 7.0, n, start)


def none() -> Regimen:
    """The regimen without doses (zero-length arrays), e.g. for a placebo arm."""
    return Regimen(jnp.zeros((0,)), jnp.zeros((0,)))


def cycles(block: Regimen, period_days: float, n_cycles: int) -> Regimen:
    """`block` repeated `n_cycles` times, cycle ``c`` (0-based) shifted by ``c * period_days`` days.

    The period must exceed the block's span (last minus first dose time), so cycles do not
    overlap.
    """
    _require_unbatched(block, "cycles")
    n_cycles = _count(n_cycles, "n_cycles")
    if not _is_traced(period_days, block.times) and block.n_doses:
        span = float(block.times[-1] - block.times[0])
        if not (np.isfinite(period_days) and period_days > span):
            raise RegimenError(
                f"cycles(period_days={period_days!r}) must exceed the block's span of {span} days, "
                "or cycles would overlap. Fix: pass the time from one cycle's start to the next "
                "in days (e.g. 28.0 for a 4-week cycle)."
            )
    starts = period_days * jnp.arange(n_cycles, dtype=jnp.float64)
    return Regimen((block.times[None, :] + starts[:, None]).reshape(-1),
                   jnp.tile(block.amounts, n_cycles), route=block.route, records=_joined_records([block] * n_cycles))


def lupil2(n_weekly: int = 11, dose_iu: float = 1.5e6) -> Regimen:
    """LUPIL-2 aldesleukin schedule: 1.5 MIU SC once daily on days 1-5, then weekly from day 8.

    In model time (days from the first dose) the doses are at 0, 1, 2, 3, 4, then 7, 14, ...,
    ``7 * n_weekly`` (77 with the default 11 weekly doses, the last before the week-12 assessment
    at :data:`LUPIL2_ASSESSMENT_DAY`).

    Source: Humrich JY et al., Ann Rheum Dis 2022, doi:10.1136/ard-2022-222501.

    **Arguments:**

    - `n_weekly`: number of weekly doses after the daily block.
    - `dose_iu`: IU per injection.
    """
    r = daily(dose_iu, 5).then(weekly(dose_iu, _count(n_weekly, "n_weekly")), gap=3.0)
    return Regimen(r.times, r.amounts, name="lupil2")


def placebo() -> Regimen:
    """No active doses (the placebo arm): :func:`none`, named ``"placebo"``."""
    return Regimen(jnp.zeros((0,)), jnp.zeros((0,)), name="placebo")


#: Median body-surface area (m²) of 40 Chinese SLE patients (He et al., Nat Med 2016, Supplementary
#: Table S1; ../shared/literature.md 2.1, READ): the default for regimens dosed per m².
DEFAULT_BSA_M2: float = 1.61


def _named(r: Regimen, name: str) -> Regimen:
    return Regimen(r.times, r.amounts, route=r.route, name=name)


def charact_cycles(n_cycles: int = 4, dose_iu: float = 1.5e6, period_days: float = 21.0) -> Regimen:
    """Charact-IL-2 (Humrich et al., Lancet Rheumatol 2019): 5-day courses of 1.5 MIU/day SC with
    washouts, up to four courses.

    A course is 5 daily doses; courses start every ``period_days`` (21: 16 days of washout, inside
    the 9-16 days the literature notes give). Source: ../shared/literature.md 2.1 (the regimen is
    UNVERIFIED there; the period is an assumption within the stated washout range).
    """
    return _named(cycles(daily(dose_iu, 5), period_days, n_cycles), "charact_cycles")


def he2020(n_cycles: int = 3, dose_iu: float = 1.0e6) -> Regimen:
    """He et al., Ann Rheum Dis 2020 (RCT in SLE): 1 MIU SC every other day for 2 weeks, then a
    2-week break (4-week cycle), three cycles over 12 weeks: doses on days 0, 2, ..., 12 of each
    cycle. Source: ../shared/literature.md 2.1 (READ)."""
    return _named(cycles(every(dose_iu, 2.0, 7), 28.0, n_cycles), "he2020")


def dilfrequency(dose_iu_per_m2: float = 0.26e6, bsa_m2: float = DEFAULT_BSA_M2, interval_days: float = 3.0, weeks: int = 12) -> Regimen:
    """DILfrequency (Seelig et al., JCI Insight 2018): the optimal regimen 0.26 MIU/m² every 3 days
    (READ, ../shared/literature.md 2.2), for ``bsa_m2`` (default :data:`DEFAULT_BSA_M2`) and
    ``weeks`` of dosing (12: the LUPIL-2 treatment period, an assumption)."""
    if not (np.isfinite(bsa_m2) and bsa_m2 > 0):
        raise RegimenError(f"bsa_m2 must be a body-surface area > 0 m², got {bsa_m2!r}. Fix: e.g. bsa_m2=1.8.")
    n = int(np.floor(7 * _count(weeks, "weeks") / interval_days - 1e-9)) + 1
    return _named(every(dose_iu_per_m2 * bsa_m2, interval_days, n), "dilfrequency")


def transreg(dose_iu: float = 1.0e6, n_fortnightly: int = 11) -> Regimen:
    """TRANSREG (Rosenzwajg et al., Ann Rheum Dis 2019): 1 MIU/day SC for 5 days, then every 2
    weeks from day 14 (``n_fortnightly`` = 11: the last on day 154, inside 24 weeks). Source:
    ../shared/literature.md 2.2 (the regimen is UNVERIFIED there)."""
    return _named(daily(dose_iu, 5) + every(dose_iu, 14.0, _count(n_fortnightly, "n_fortnightly"), start=14.0), "transreg")


def weekly_only(dose_iu: float = 1.5e6, n: int = 12) -> Regimen:
    """LUPIL-2's maintenance dose without its 5-day induction: 1.5 MIU weekly from day 0, 12 doses
    (an assumption: the comparator that isolates the induction course)."""
    return _named(weekly(dose_iu, n), "weekly_only")


def daily_low_dose(dose_iu_per_m2: float = 1.0e6, bsa_m2: float = DEFAULT_BSA_M2, weeks: int = 8) -> Regimen:
    """Daily low-dose IL-2 (Koreth et al., NEJM 2011, chronic GVHD): 1 MIU/m² SC daily (the maximum
    tolerated of 0.3, 1 and 3 MIU/m²) for 8 weeks. Source: ../shared/literature.md 2.2 (READ)."""
    if not (np.isfinite(bsa_m2) and bsa_m2 > 0):
        raise RegimenError(f"bsa_m2 must be a body-surface area > 0 m², got {bsa_m2!r}. Fix: e.g. bsa_m2=1.8.")
    return _named(daily(dose_iu_per_m2 * bsa_m2, 7 * _count(weeks, "weeks")), "daily_low_dose")


#: Regimens from the literature by name; :func:`named` builds one (each builder's docstring gives
#: its source).
NAMED_REGIMENS: dict[str, Callable[..., Regimen]] = {
    "lupil2": lupil2,
    "charact_cycles": charact_cycles,
    "he2020": he2020,
    "dilfrequency": dilfrequency,
    "transreg": transreg,
    "weekly_only": weekly_only,
    "daily_low_dose": daily_low_dose,
    "placebo": placebo,
}


def named(name: str, **kwargs: object) -> Regimen:
    """The literature regimen called `name` (see :data:`NAMED_REGIMENS`), built with `kwargs`.

    **Example:** ``named("lupil2", n_weekly=4)``.

    **Raises:** :class:`RegimenError` for an unknown name or argument.
    """
    factory = NAMED_REGIMENS.get(str(name).strip().lower())
    if factory is None:
        raise RegimenError(
            f"Unknown regimen name {name!r}. Known regimens: {', '.join(NAMED_REGIMENS)}. "
            "Fix: use one of these names, or build the regimen with daily(), weekly(), every()."
        )
    signature = inspect.signature(factory)
    try:
        signature.bind(**kwargs)
    except TypeError as error:
        raise RegimenError(
            f"Regimen {name!r} does not accept {sorted(kwargs)} ({error}). "
            f"Fix: use only its arguments: {', '.join(signature.parameters) or '(none)'}."
        ) from None
    return factory(**kwargs)


def pad(regimen: Regimen, n_doses: int) -> Regimen:
    """``regimen`` with zero doses appended at its last dose time (0.0 if it has none) up to
    ``n_doses`` doses. A zero dose at an existing dose time changes no simulation; regimens padded
    to one length share one compiled solve (:func:`il2treg.simulate.simulate_regimens`).

    **Raises:** :class:`RegimenError` for a batched regimen or ``n_doses`` below its dose count.
    """
    _require_unbatched(regimen, "pad")
    width = _count(n_doses, "n_doses")
    if width < regimen.n_doses:
        raise RegimenError(
            f"pad(n_doses={width}) is fewer than the regimen's {regimen.n_doses} doses. "
            f"Fix: pass n_doses >= {regimen.n_doses}."
        )
    extra = width - regimen.n_doses
    last = regimen.times[-1:] if regimen.n_doses else jnp.zeros((1,))
    records = None if regimen.records is None else pad_records(regimen.records, extra)
    return Regimen(jnp.concatenate([regimen.times, jnp.broadcast_to(last, (extra,))]),
                   jnp.concatenate([regimen.amounts, jnp.zeros((extra,))]), route=regimen.route, name=regimen.name, records=records)  # fmt: skip


def stack(regimens: Sequence[Regimen], n_doses: int | None = None) -> Regimen:
    """Batch unbatched regimens into one with a leading patient axis, for ``jax.vmap``.

    Each patient's doses are padded at the end to `n_doses` (default: the most doses of any
    patient) with amount 0 at that patient's last dose time (0.0 if it has no doses). A zero dose
    at an existing dose time changes no simulation.

    **Returns:** a regimen with times and amounts of shape ``(patients, n_doses)``; its name is the
    patients' common name, or ``""`` if they differ.
    """
    regimens = list(regimens)
    if not regimens:
        raise RegimenError("stack() got no regimens. Fix: pass at least one Regimen.")
    for r in regimens:
        _require_unbatched(r, "stack")
    route = _require_same_route(regimens)
    longest = max(r.n_doses for r in regimens)
    width = longest if n_doses is None else _count(n_doses, "n_doses")
    if width < longest:
        patient = next(i for i, r in enumerate(regimens) if r.n_doses == longest)
        raise RegimenError(
            f"stack(n_doses={width}) is fewer than the {longest} doses of regimen index {patient}. "
            f"Fix: pass n_doses >= {longest}, or leave it out."
        )

    padded = [pad(r, width) for r in regimens]
    names = {r.name for r in regimens}
    records = None
    if any(r.records is not None for r in padded):
        parts = [_records_of(r) for r in padded]
        records = combine_records(parts, jnp.stack, max(p.steady_states for p in parts))
    return Regimen(jnp.stack([r.times for r in padded]), jnp.stack([r.amounts for r in padded]), route=route,
                   name=names.pop() if len(names) == 1 else "", records=records)


# --------------------------------------------------------------------------- NONMEM dosing rows


def from_nonmem(
    frame_or_path: pd.DataFrame | str | os.PathLike, *, doses: Sequence[DosingInput] | None = None, time_unit: str = "day"
) -> dict[int | str, Regimen]:
    """Regimens per patient from NONMEM dose records (a DataFrame or a CSV path), read by the
    reader datasets use (:mod:`il2treg.events`, whose docstring gives the columns).

    Column names are case-insensitive; `TIME` and `AMT` are required, `ID` defaults to 1, and
    without `EVID` a row with AMT > 0 is a dose (NONMEM's reading). `ADDL`/`II`, `CMT`, `RATE`,
    `SS` and `EVID` 3/4 are read as in a dataset; observation rows (EVID 0, 2) and other columns
    (DV, DVID, covariates) are not used. A patient with rows but no dose rows gets the regimen
    without doses.

    **Arguments:**

    - `frame_or_path`: the table.
    - `doses`: the model's dosing inputs (:attr:`il2treg.Model.dosing_inputs`), so that CMT may
      name any of them and RATE -2 is checked; without them CMT may only be 1 or empty (the
      model's first dosing input).
    - `time_unit`: ``"day"`` or ``"h"``; the regimen holds days.

    **Returns:** ``{id: Regimen}`` in order of first appearance; a regimen whose doses say more
    than a time and an amount carries :class:`~il2treg.records.DoseRecords`.

    **Raises:** :class:`RegimenError` naming the file, the column (``.column``) and the 1-based
    data row (``.row``, header excluded) of the first bad value, and how to fix it.
    """
    if isinstance(time_unit, str) and time_unit in TIME_UNITS:
        days_per_unit = TIME_UNITS[time_unit]
    else:
        raise RegimenError(f"time_unit {time_unit!r} is not known. Fix: use one of {', '.join(map(repr, TIME_UNITS))}.")
    if isinstance(frame_or_path, pd.DataFrame):
        source = "dosing table"
    elif isinstance(frame_or_path, (str, os.PathLike)):
        source = f"dosing file {os.fspath(frame_or_path)!r}"
    else:
        raise RegimenError(
            f"Expected a dosing table (pandas DataFrame) or the path of a CSV file, got "
            f"{type(frame_or_path).__name__}. Fix: pass pd.read_csv(path) or the path itself."
        )
    try:
        if isinstance(frame_or_path, pd.DataFrame):
            header, rows = frame_cells(frame_or_path)
        else:
            header, rows = csv_cells(Path(frame_or_path), source, "ID,TIME,EVID,AMT")
        cells = _dose_columns([name.upper() for name in header], rows, "the table")
        table = dose_rows(derive_evid(cells), tuple(doses) if doses else None, days_per_unit)
        rows_of = subject_rows(table)
    except DataError as error:
        raise RegimenError(f"{source}: {error}", column=error.column, row=error.row) from None
    regimens: dict[int | str, Regimen] = {}
    for patient, positions in rows_of.items():
        events = expand_doses(table, positions, days_per_unit)
        times = np.array([e.time for e in events], dtype=np.float64)
        amounts = np.array([e.amount for e in events], dtype=np.float64)
        records = detailed_records(*(np.array([getattr(e, f) for e in events]) for f in FIELDS))
        regimens[patient] = Regimen(times, amounts, records=records)
    return regimens


def _dose_columns(header: list[str], rows: list[list[object]], where: str) -> dict[str, list[object]]:
    """The cells of a dosing table by column (names upper case), its shape checked (the ID column
    added where absent)."""
    check_shape(header, rows, where)
    for name in ("TIME", "AMT"):
        if name not in header:
            raise DataError(
                f"required column {name} is missing (found: {', '.join(header)}). Fix: add TIME (days from the first dose) and AMT "
                "(the dose, IU for the IL-2 model) columns.",
                column=name,
            )
    cells = {name: [row[k] for row in rows] for k, name in enumerate(header)}
    cells.setdefault("ID", [1] * len(rows))
    return cells


def read_regimen_csv(path: str | os.PathLike, *, doses: Sequence[DosingInput] | None = None, time_unit: str = "day") -> Regimen:
    """The regimen of the single patient in a NONMEM dosing CSV (see :func:`from_nonmem`).

    **Raises:** :class:`RegimenError` if the file holds more than one ID.
    """
    regimens = from_nonmem(path, doses=doses, time_unit=time_unit)
    if len(regimens) != 1:
        raise RegimenError(
            f"dosing file {os.fspath(path)!r} holds {len(regimens)} IDs "
            f"({', '.join(map(str, list(regimens)[:5]))}{', ...' if len(regimens) > 5 else ''}); "
            "read_regimen_csv reads one patient. Fix: split the file into one file per ID, or "
            "use from_nonmem() to get a regimen per ID."
        )
    return next(iter(regimens.values()))


def _runs(times: np.ndarray, amounts: np.ndarray, compress: bool, records: DoseRecords | None = None) -> Iterator[tuple[int, int, float]]:
    """``(index, addl, ii)`` rows; with `compress`, runs of equal doses at an equal interval merge.

    A run is merged only if ``time + ii * k`` reproduces every dose time exactly, so
    :func:`from_nonmem` gives back the same float64 times; with records, only plain doses of the
    first one's input and infusion join it (a steady-state dose's interval must be the run's), and
    none at or after a later reset or steady state (SS 1), which would cancel them on reading,
    and none after a reset row.
    """
    n = len(times)
    if records is None:
        key = np.zeros((n, 2))
        plain, clears = np.ones(n, dtype=bool), np.zeros(n, dtype=bool)
        ss, ii = np.zeros(n, dtype=int), np.zeros(n)
        starts = plain
    else:
        key = np.stack([np.asarray(records.input, dtype=float), np.asarray(records.duration)], axis=1)
        ss, ii, reset = np.asarray(records.ss), np.asarray(records.ii), np.asarray(records.reset)
        plain, clears = (ss == 0) & ~reset, reset | (ss == 1)
        starts = ~reset  # a reset row's additional doses: EVID 3 has none
    i = 0
    while i < n:
        addl, step = 0, 0.0
        if compress and starts[i] and i + 1 < n and times[i + 1] > times[i]:
            step = times[i + 1] - times[i]
            later = times[i + 1 :][clears[i + 1 :]]
            limit = later.min() if later.size else np.inf
            j = i + 1
            while (j < n and amounts[j] == amounts[i] and plain[j] and np.array_equal(key[j], key[i]) and times[j] < limit
                   and times[j] == times[i] + step * np.float64(j - i) and (ss[i] == 0 or step == ii[i])):  # fmt: skip
                j += 1
            addl = j - i - 1
        yield i, addl, step if addl else 0.0
        i += addl + 1


def to_nonmem(
    regimen_or_dict: Regimen | Mapping[int | str, Regimen], compress: bool = True, *, doses: Sequence[DosingInput] | None = None
) -> pd.DataFrame:
    """NONMEM dose rows for one regimen or a dict of them: columns ID, TIME, EVID, AMT, CMT, ADDL,
    II, and RATE and SS where a regimen has records (:data:`NONMEM_COLUMNS`).

    A single regimen gets ID 1. Each dose is a row with EVID 1 (3 for a reset without a dose, 4
    for one with) and CMT 1 (with records and `doses`, the CMT of the model's dosing input the
    dose enters; without `doses`, every dose must enter the first input); with `compress`,
    consecutive plain doses of equal amount at an equal interval become one row with ADDL/II.
    An infusion's RATE is AMT / duration per day. A regimen without doses is written as one EVID
    0 row at TIME 0 so its ID is kept. ``from_nonmem(to_nonmem(r))`` gives back r's times and
    amounts exactly and its records (the name is not stored; an infusion's duration to rounding).
    """
    items = ({1: regimen_or_dict} if isinstance(regimen_or_dict, Regimen)
             else dict(regimen_or_dict))
    cmts = [d.cmt for d in doses] if doses else [1]
    detailed = any(r.records is not None for r in items.values())
    rows = []
    for patient, regimen in items.items():
        _require_unbatched(regimen, "to_nonmem")
        times, amounts = np.asarray(regimen.times), np.asarray(regimen.amounts)
        if times.size and times[0] < 0:
            raise RegimenError(
                f"regimen of ID {patient} has a dose at day {_short(times[0])}, but a NONMEM table's TIME counts from the first dose (>= 0). "
                f"Fix: shift the regimen to start at 0 (regimen.shift({_short(-times[0])})) before writing it."
            )
        records = _records_of(regimen)
        if int(np.max(records.input, initial=0)) >= len(cmts):
            raise RegimenError(
                f"regimen of ID {patient} doses into input {int(np.max(records.input))}, but {'no model is given' if not doses else f'the model has {len(cmts)} dosing inputs'}. "
                "Fix: pass to_nonmem(..., doses=model.dosing_inputs)."
            )
        if len(times) == 0:
            rows.append((patient, 0.0, 0, 0.0, cmts[0], 0, 0.0, 0.0, 0))
        for k, addl, step in _runs(times, amounts, compress, regimen.records):
            duration, ss, reset = float(records.duration[k]), int(records.ss[k]), bool(records.reset[k])
            dosing = amounts[k] > 0 or ss or duration > 0 or int(records.input[k]) > 0
            evid = (4 if dosing else 3) if reset else 1
            rate = amounts[k] / duration if duration > 0 else 0.0
            ii = float(records.ii[k]) if ss else float(step)
            rows.append((patient, float(times[k]), evid, float(amounts[k]), cmts[int(records.input[k])], addl, ii, rate, ss))
    frame = pd.DataFrame.from_records(rows, columns=list(NONMEM_COLUMNS)).astype(
        {"TIME": "float64", "EVID": "int64", "AMT": "float64", "CMT": "int64", "ADDL": "int64", "II": "float64", "RATE": "float64", "SS": "int64"})
    return frame if detailed else frame.drop(columns=["RATE", "SS"])
