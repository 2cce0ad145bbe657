"""Published summary numbers that il2treg calibrates against, as small citable tables.

Every table is a CSV file in ``il2treg/datasets/data/``; every row carries its full
``citation``, a ``tag`` and ``where`` (the address the number was read from). ``tag`` is
``READ`` (read in public text) or ``DERIVED`` (arithmetic on read numbers, shown in a
``derivation`` column); where a row mixes both, the extra tag column says which numbers it
covers (``counts_tag`` in ``lupil2_sri4``). Rates and fractions are proportions (0.68, not 68%).
Empty cells are values the source does not give; no number here is estimated or recalled.

Tables (:func:`reference_names`):

- ``lupil2_sri4``: LUPIL-2 week-12 SRI-4 by analysis (ITT, post hoc per-protocol without
  the two Bulgarian sites, and the Bulgarian placebo rate) and arm: ``rate``, ``p_value``
  (READ); ``n`` and ``responders`` (DERIVED from the percentages, ``counts_derivation``).
- ``pooled_placebo_sri4``: SRI-4 placebo (and active) rates of other SLE programmes:
  Tselios pooled placebo arms, BLISS-52, BLISS-76 (weeks 52 and 76), TULIP-1+2 pooled.
- ``sri4_given_sledai_fall``: P(SRI-4 | SELENA-SLEDAI fall >= 4) = 761/796 = 0.956 from
  pooled BLISS week-52 data (DERIVED), with the counts it is computed from.
- ``dilfrequency_targets``: steady-state +30% Treg and +25% CD25 on Tregs with aldesleukin
  0.26e6 IU/m2 every 3 days (DILfrequency); ``change`` is a fraction of baseline.
- ``pk_anchors``: aldesleukin PK numbers (Konrad 1990, Piscitelli 1996, Kirchner 1998,
  Proleukin label), one quantity per row: ``value`` or ``low``/``high``, ``plus_minus`` (the
  ± figure as printed), ``unit``, ``route``, ``dose``.
- ``baseline_sledai``: baseline SLEDAI in moderate-to-severe SLE trials: ``statistic``
  (mean or median) between ``low`` and ``high`` (equal for a single value), SD between
  ``sd_low`` and ``sd_high``.
- ``treg_turnover``: in vivo doubling times of human Treg, memory and naive CD4+ T cells
  (Vukmanovic-Stejic 2006), in days.
- ``published_studies``: the low-dose IL-2 studies side by side (SLE, type 1 diabetes, HCV
  vasculitis, chronic GVHD and its prophylaxis), one number per row: ``study``, ``population``, ``regimen``, ``arm``,
  ``n`` (empty where the source does not state it), ``observable``, ``time`` as stated and
  ``time_day`` (days from the first dose, empty where not stated), ``statistic``, ``qualifier``
  (``>`` where the source gives a lower bound), ``value`` with its ``dispersion`` and ``unit``,
  ``location`` in the source (abstract, Table 2, ...), ``how_read`` (``text`` or ``table``; none
  is digitised from a figure), ``source_kind`` (``primary``, ``conference abstract`` or
  ``review``), ``quote`` (the sentence or table cells the number was read from, abridged with
  ``...``) and ``derivation`` for DERIVED rows. The pages read were abstracts, conference
  abstracts and single table pages: the Treg time courses of LUPIL-2, He 2016/2020, TRANSREG and
  von Spee-Mayer 2016 and low-dose SC IL-2 plasma concentrations are not in it (not found in
  public text), nor Charact-IL-2's conference abstract (its page could not be read again to
  check it).
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

from il2treg.errors import InputError

_TABLES: tuple[str, ...] = (
    "lupil2_sri4",
    "pooled_placebo_sri4",
    "sri4_given_sledai_fall",
    "dilfrequency_targets",
    "pk_anchors",
    "baseline_sledai",
    "treg_turnover",
    "published_studies",
)


def reference_names() -> tuple[str, ...]:
    """Names of the shipped reference tables (see the module docstring for their contents)."""
    return _TABLES


def reference(name: str) -> pd.DataFrame:
    """One reference table as a new DataFrame.

    Arguments:
        name: one of :func:`reference_names`.

    Returns:
        The table, one row per published number (or group of numbers from one source), with
        the columns ``tag``, ``citation`` and ``where``.

    Raises:
        InputError: ``name`` is not a reference table.
    """
    if name not in _TABLES:
        raise InputError(
            f"unknown reference table {name!r}. Fix: use one of: {', '.join(_TABLES)}."
        )
    path = resources.files("il2treg.datasets").joinpath("data", f"{name}.csv")
    with path.open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle)
