"""The published cell-level numbers of low-dose IL-2 studies as fittable summaries.

:func:`study_summaries` reads ``il2treg/datasets/data/study_summaries.toml``: each study arm's
regimen (SC doses per m² of body-surface area) and each published number as a
:class:`~il2treg.fit.aggregate.Summary` of a model observable, with the row of
``reference("published_studies")`` it comes from (citation, quote, address) and the encoding
choices that made it a statistic at a time (stated there as assumptions). The result feeds
:func:`il2treg.fit.aggregate.fit_summaries`; :meth:`StudySummaries.without` leaves one study out
for a leave-one-study-out check.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from importlib import resources

from il2treg.errors import InputError
from il2treg.fit.aggregate import Summary
from il2treg.regimen import Regimen, every
from il2treg.units import miu_per_m2_to_iu

_FILE = "study_summaries.toml"
_ARM_FIELDS = ("study", "dose_miu_per_m2", "interval_days", "n", "regimen")
_SUMMARY_FIELDS = ("row", "arm", "observable", "time", "statistic", "scale", "value", "n", "se", "bound", "encoding")


@dataclasses.dataclass(frozen=True)
class StudySummaries:
    """Published summaries with their arms' regimens.

    Attributes:
        regimens: each arm's regimen (IU; the amounts for ``bsa_m2``).
        summaries: the statistics, in the file's order.
        studies: each summary's study.
        rows: each summary's row of ``reference("published_studies")``.
        encodings: each summary's encoding choices, in words.
        arm_regimens: each arm's regimen in words.
        bsa_m2: the body-surface area the per-m² doses were scaled by.
    """

    regimens: Mapping[str, Regimen]
    summaries: tuple[Summary, ...]
    studies: tuple[str, ...]
    rows: tuple[int, ...]
    encodings: tuple[str, ...]
    arm_regimens: Mapping[str, str]
    bsa_m2: float

    @property
    def study_names(self) -> tuple[str, ...]:
        """The studies, in the order of their first summary."""
        return tuple(dict.fromkeys(self.studies))

    def _keep(self, keep: list[bool]) -> StudySummaries:
        summaries = tuple(s for s, k in zip(self.summaries, keep, strict=True) if k)
        arms = {s.arm for s in summaries}
        pick = lambda xs: tuple(x for x, k in zip(xs, keep, strict=True) if k)
        return dataclasses.replace(
            self, summaries=summaries, studies=pick(self.studies), rows=pick(self.rows), encodings=pick(self.encodings),
            regimens={a: r for a, r in self.regimens.items() if a in arms}, arm_regimens={a: r for a, r in self.arm_regimens.items() if a in arms},
        )  # fmt: skip

    def without(self, study: str) -> StudySummaries:
        """Every summary but ``study``'s (a leave-one-study-out fit)."""
        self._require(study)
        return self._keep([s != study for s in self.studies])

    def only(self, study: str) -> StudySummaries:
        """``study``'s summaries alone (what a leave-one-study-out fit predicts)."""
        self._require(study)
        return self._keep([s == study for s in self.studies])

    def _require(self, study: str) -> None:
        if study not in self.studies:
            raise InputError(f"no study {study!r} among the summaries. Fix: use one of {', '.join(self.study_names)}.")


def study_summaries(bsa_m2: float | None = None) -> StudySummaries:
    """Read the shipped study summaries (module docstring).

    Arguments:
        bsa_m2: body-surface area for the per-m² doses (default: the file's, 1.8 m²).

    Raises:
        InputError: a malformed entry, naming the file, the entry and the key.
    """
    text = resources.files("il2treg.datasets").joinpath("data", _FILE).read_text(encoding="utf-8")
    data = tomllib.loads(text)
    _require_fields(data, ("bsa_m2", "arms", "summaries"), "the file")
    bsa = float(data["bsa_m2"] if bsa_m2 is None else bsa_m2)
    if not (math.isfinite(bsa) and bsa > 0):
        raise InputError(f"bsa_m2 must be a body-surface area > 0 m², got {bsa!r}. Fix: e.g. bsa_m2=1.8.")
    regimens, words, study_of = {}, {}, {}
    for arm, table in data["arms"].items():
        _require_fields(table, _ARM_FIELDS, f"arms.{arm}")
        dose = float(miu_per_m2_to_iu(float(table["dose_miu_per_m2"]), bsa))
        regimens[arm] = every(dose, float(table["interval_days"]), int(table["n"]))
        words[arm], study_of[arm] = table["regimen"], table["study"]
    summaries, studies, rows, encodings = [], [], [], []
    for k, table in enumerate(data["summaries"]):
        where = f"summaries[{k}]"
        unknown = set(table) - set(_SUMMARY_FIELDS)
        if unknown:
            raise InputError(f"{_FILE}: {where}: unknown key {sorted(unknown)[0]!r}. Fix: use only {', '.join(_SUMMARY_FIELDS)}.")
        _require_fields(table, ("row", "arm", "observable", "time", "statistic", "value", "n", "se", "encoding"), where)
        if table["arm"] not in regimens:
            raise InputError(f"{_FILE}: {where}: arm {table['arm']!r} has no [arms.{table['arm']}] table. Fix: add it, or name one of {', '.join(regimens)}.")
        summaries.append(Summary(
            arm=table["arm"], observable=table["observable"], time=float(table["time"]), statistic=table["statistic"],
            value=float(table["value"]), n=int(table["n"]), se=float(table["se"]), scale=table.get("scale", "value"), bound=table.get("bound"),
        ))  # fmt: skip
        studies.append(study_of[table["arm"]])
        rows.append(int(table["row"]))
        encodings.append(table["encoding"])
    return StudySummaries(regimens, tuple(summaries), tuple(studies), tuple(rows), tuple(encodings), words, bsa)


def _require_fields(table: Mapping, fields: tuple[str, ...], where: str) -> None:
    for field in fields:
        if field not in table:
            raise InputError(f"{_FILE}: {where}: missing {field!r}. Fix: add {field} = ... to the entry.")
