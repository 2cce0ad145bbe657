"""Unit conversions for aldesleukin (recombinant IL-2) dosing, concentrations and parameter tables.

Every model quantity is held in one internal unit per dimension (see :data:`INTERNAL_UNITS`):
time in days, volume in L, clearance in L/day, rate constants in 1/day, concentrations in pM,
drug amounts in IU and cell counts in cells/uL. :func:`to_internal` brings a value given in any
accepted unit (:func:`accepted_units`) to that internal unit; :func:`convert` converts between
two units of the same dimension.

Mass, moles and international units (IU) are linked by two facts about aldesleukin
(literature.md section 3.1):

- a reconstituted Proleukin vial holds 18 MIU in 1.1 mg (Proleukin US label), so the specific
  activity is 18/1.1 ≈ 16.4 MIU/mg;
- the molecular weight is about 15,300 g/mol (Proleukin US label).

Hence 1 MIU ≈ 61.1 µg ≈ 3.99 nmol and 1 IU/mL ≈ 61 pg/mL ≈ 4.0 pM. These derived numbers
are computed from the two facts below, never typed in. Conversions between IU and mass or
moles are specific to aldesleukin; the same factors are used for endogenous IL-2 measured by
mass (pg/mL), whose molecular weight differs by a few percent because of glycosylation.

All functions are pure arithmetic: they accept Python floats, NumPy arrays and JAX arrays (also
under ``jit``, ``vmap`` and ``grad``) and return the same kind.
"""

from __future__ import annotations

from jaxtyping import ArrayLike, Float

from il2treg.errors import UnitError

#: Million international units in one reconstituted Proleukin vial (Proleukin US label).
PROLEUKIN_VIAL_MIU: float = 18.0
#: Milligrams of aldesleukin in that vial (Proleukin US label: 18 MIU = 1.1 mg).
PROLEUKIN_VIAL_MG: float = 1.1
#: Molecular weight of aldesleukin in g/mol (Proleukin US label: about 15,300 Da).
ALDESLEUKIN_MW_G_PER_MOL: float = 15_300.0

#: Specific activity in IU/mg, derived: 18 MIU / 1.1 mg ≈ 1.64e7 IU/mg.
SPECIFIC_ACTIVITY_IU_PER_MG: float = PROLEUKIN_VIAL_MIU * 1e6 / PROLEUKIN_VIAL_MG
#: Micrograms per IU, derived: 1e3 µg/mg / specific activity ≈ 6.11e-5 µg (61.1 pg).
UG_PER_IU: float = 1e3 / SPECIFIC_ACTIVITY_IU_PER_MG
#: Nanomoles per IU, derived: µg/IU * 1e-6 g/µg / MW * 1e9 nmol/mol ≈ 3.99e-6 nmol.
NMOL_PER_IU: float = UG_PER_IU * 1e3 / ALDESLEUKIN_MW_G_PER_MOL
#: pM per pg/mL, derived: (pg/mL * 1e-9 g/L per pg/mL) / MW * 1e12 pmol/mol = 1e3 / MW.
PM_PER_PG_PER_ML: float = 1e3 / ALDESLEUKIN_MW_G_PER_MOL
#: pM per IU/mL, derived: 1 IU/mL = UG_PER_IU * 1e6 pg/mL ≈ 61.1 pg/mL ≈ 3.99 pM.
PM_PER_IU_PER_ML: float = UG_PER_IU * 1e6 * PM_PER_PG_PER_ML

_Values = Float[ArrayLike, "*shape"]


def iu_to_ug(iu: _Values) -> _Values:
    """Aldesleukin amount in IU -> mass in µg (1 MIU ≈ 61.1 µg)."""
    return iu * UG_PER_IU


def ug_to_iu(ug: _Values) -> _Values:
    """Aldesleukin mass in µg -> amount in IU (1 µg ≈ 16,400 IU)."""
    return ug / UG_PER_IU


def iu_to_nmol(iu: _Values) -> _Values:
    """Aldesleukin amount in IU -> nmol (1 MIU ≈ 3.99 nmol)."""
    return iu * NMOL_PER_IU


def nmol_to_iu(nmol: _Values) -> _Values:
    """Aldesleukin amount in nmol -> IU (1 nmol ≈ 0.25 MIU)."""
    return nmol / NMOL_PER_IU


def iu_per_ml_to_pM(iu_per_ml: _Values) -> _Values:
    """Concentration in IU/mL -> pM (1 IU/mL ≈ 4.0 pM)."""
    return iu_per_ml * PM_PER_IU_PER_ML


def pM_to_iu_per_ml(pM: _Values) -> _Values:
    """Concentration in pM -> IU/mL (1 pM ≈ 0.25 IU/mL)."""
    return pM / PM_PER_IU_PER_ML


def pg_per_ml_to_pM(pg_per_ml: _Values) -> _Values:
    """IL-2 mass concentration in pg/mL -> pM (1 pg/mL ≈ 0.065 pM at 15,300 g/mol)."""
    return pg_per_ml * PM_PER_PG_PER_ML


def pM_to_pg_per_ml(pM: _Values) -> _Values:
    """IL-2 concentration in pM -> pg/mL (1 pM ≈ 15.3 pg/mL at 15,300 g/mol)."""
    return pM / PM_PER_PG_PER_ML


def miu_per_m2_to_iu(dose_miu_per_m2: _Values, bsa_m2: _Values) -> _Values:
    """Body-surface-area-scaled dose in MIU/m² -> absolute dose in IU.

    **Arguments:**

    - `dose_miu_per_m2`: dose in million IU per m² of body-surface area.
    - `bsa_m2`: body-surface area in m² (e.g. from :func:`bsa_mosteller`).

    **Returns:** the dose in IU, ``dose_miu_per_m2 * 1e6 * bsa_m2``.
    """
    return dose_miu_per_m2 * 1e6 * bsa_m2


def bsa_mosteller(height_cm: _Values, weight_kg: _Values) -> _Values:
    """Body-surface area in m² by the Mosteller formula, sqrt(height_cm * weight_kg / 3600).

    Source: Mosteller RD, N Engl J Med 1987;317:1098.

    **Arguments:**

    - `height_cm`: height in cm (not m).
    - `weight_kg`: weight in kg.

    **Returns:** body-surface area in m².
    """
    return (height_cm * weight_kg / 3600.0) ** 0.5


def hours_to_days(hours: _Values) -> _Values:
    """Duration or time in hours -> days."""
    return hours / 24.0


def days_to_hours(days: _Values) -> _Values:
    """Duration or time in days -> hours."""
    return days * 24.0


_TIME_PER_DAY: dict[str, float] = {"day": 1.0, "h": 1.0 / 24.0, "min": 1.0 / 1440.0, "week": 7.0}
_VOLUME_PER_L: dict[str, float] = {"L": 1.0, "mL": 1e-3}

#: The internal unit of each dimension; every model parameter and state is held in these.
INTERNAL_UNITS: dict[str, str] = {
    "dimensionless": "1",
    "percent": "%",
    "score": "points",
    "time": "day",
    "rate": "1/day",
    "volume": "L",
    "clearance": "L/day",
    "concentration": "pM",
    "amount": "IU",
    "cell count": "cells/uL",
}

# Canonical spelling -> (dimension, factor): value_in_internal_unit = value * factor.
_UNITS: dict[str, tuple[str, float]] = {
    "1": ("dimensionless", 1.0),
    "%": ("percent", 1.0),
    "points": ("score", 1.0),
    **{t: ("time", f) for t, f in _TIME_PER_DAY.items()},
    **{f"1/{t}": ("rate", 1.0 / f) for t, f in _TIME_PER_DAY.items()},
    **{v: ("volume", f) for v, f in _VOLUME_PER_L.items()},
    **{
        f"{v}/{t}": ("clearance", fv / ft)
        for v, fv in _VOLUME_PER_L.items()
        for t, ft in _TIME_PER_DAY.items()
    },
    "pM": ("concentration", 1.0),
    "nM": ("concentration", 1e3),
    "IU/mL": ("concentration", PM_PER_IU_PER_ML),
    "pg/mL": ("concentration", PM_PER_PG_PER_ML),
    "ng/mL": ("concentration", 1e3 * PM_PER_PG_PER_ML),
    "IU": ("amount", 1.0),
    "MIU": ("amount", 1e6),
    "ug": ("amount", 1.0 / UG_PER_IU),
    "mg": ("amount", 1e3 / UG_PER_IU),
    "nmol": ("amount", 1.0 / NMOL_PER_IU),
    "cells/uL": ("cell count", 1.0),
}

# Other spellings of one part of a unit (either side of "/") -> canonical spelling.
_ALIASES: dict[str, str] = {
    "d": "day",
    "days": "day",
    "hour": "h",
    "hours": "h",
    "hr": "h",
    "minute": "min",
    "minutes": "min",
    "weeks": "week",
    "l": "L",
    "ml": "mL",
    "mcg": "ug",
}


def accepted_units() -> tuple[str, ...]:
    """The canonical spellings :func:`convert` and :func:`to_internal` accept.

    Also accepted: ``µ``/``μ`` for ``u``, ``d``/``days`` for ``day``, ``hour``/``hours``/``hr``
    for ``h``, ``minute(s)`` for ``min``, ``weeks`` for ``week``, ``l``/``ml`` for ``L``/``mL``
    and ``mcg`` for ``ug``, on either side of a ``/``; spaces are ignored.
    """
    return tuple(_UNITS)


def _lookup(unit: str) -> tuple[str, float]:
    """(dimension, factor to the internal unit) of ``unit``, or a :class:`UnitError` naming it."""
    text = str(unit).replace(" ", "").replace("µ", "u").replace("μ", "u")
    spelled = "/".join(_ALIASES.get(part, part) for part in text.split("/"))
    if spelled not in _UNITS:
        raise UnitError(
            f"Unknown unit {unit!r}. Accepted units: {', '.join(_UNITS)} "
            "(also 'µ' for 'u', 'd'/'days' for 'day', 'hour'/'hours' for 'h'). "
            "Fix: write the unit as one of these, e.g. 'L/h' rather than 'litre per hour', "
            "or convert the value by hand to one of them."
        )
    return _UNITS[spelled]


def to_internal(value: _Values, unit: str) -> tuple[_Values, str]:
    """Express ``value`` given in ``unit`` in il2treg's internal unit of the same dimension.

    **Arguments:**

    - `value`: a number or array, in `unit`.
    - `unit`: any spelling listed by :func:`accepted_units`, e.g. ``"L/h"`` or ``"IU/mL"``.

    **Returns:** ``(value_in_internal_unit, internal_unit)``, e.g.
    ``to_internal(7.2, "L/h") == (172.8, "L/day")``.

    **Raises:** :class:`UnitError` if the unit is unknown.
    """
    dimension, factor = _lookup(unit)
    return value * factor, INTERNAL_UNITS[dimension]


def convert(value: _Values, from_unit: str, to_unit: str) -> _Values:
    """Convert ``value`` from ``from_unit`` to ``to_unit`` (same dimension).

    IU, mass (µg, mg) and moles (nmol), and IU/mL, pg/mL and pM, are interconverted with
    aldesleukin's specific activity and molecular weight (module docstring).

    **Raises:** :class:`UnitError` if either unit is unknown or their dimensions differ.
    """
    from_dim, from_factor = _lookup(from_unit)
    to_dim, to_factor = _lookup(to_unit)
    if from_dim != to_dim:
        raise UnitError(
            f"Cannot convert {from_unit!r} ({from_dim}) to {to_unit!r} ({to_dim}): "
            "the dimensions differ. "
            f"Fix: convert to a {from_dim} unit such as {INTERNAL_UNITS[from_dim]!r}, or check "
            "that the value's unit is the one intended."
        )
    return value * (from_factor / to_factor)
