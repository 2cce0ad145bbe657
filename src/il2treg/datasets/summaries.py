"""The published cell-level numbers of low-dose IL-2 studies as fittable summaries.

:func:`study_summaries` reads ``il2treg/datasets/data/study_summaries.toml``: each study arm's
regimen (SC doses per m² of body-surface area) and each published number as a
:class:`~il2treg.fit.aggregate.Summary` of a model observable, with the row of
``reference("published_studies")`` it comes from (citation, quote, address) and the encoding
choices that made it a statistic at a time (stated there as assumptions). The result feeds
:func:`il2treg.fit.aggregate.fit_summaries`; :meth:`StudySummaries.without` leaves one study out
for a leave-one-study-out check. :func:`read_summaries` reads a user's file in the same format
(doses in the model's unit or per m², provenance optional), as a fit file's ``[summaries]`` does
(:mod:`il2treg.fit.joint`).
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

from il2treg.errors import InputError
from il2treg.fit.aggregate import Summary
from il2treg.regimen import Regimen, every
from il2treg.units import miu_per_m2_to_iu

_FILE = "study_summaries.toml"
_ARM_FIELDS = ("study", "dose_miu_per_m2", "interval_days", "n", "regimen")
_SUMMARY_FIELDS = ("row", "arm", "observable", "time", "statistic", "scale", "value", "n", "se", "threshold", "bound", "encoding")


@dataclasses.dataclass(frozen=True)
class StudySummaries:
    """Published summaries with their arms' regimens.

    Attributes:
        regimens: each arm's regimen (IU; the amounts for ``bsa_m2``).
        summaries: the statistics, in the file's order.
        studies: each summary's study.
        rows: each summary's row of ``reference("published_studies")`` (None where a user's file gives none).
        encodings: each summary's encoding choices, in words.
        arm_regimens: each arm's regimen in words.
        bsa_m2: the body-surface area the per-m² doses were scaled by (None: a file without one).
    """

    regimens: Mapping[str, Regimen]
    summaries: tuple[Summary, ...]
    studies: tuple[str, ...]
    rows: tuple[int | None, ...]
    encodings: tuple[str, ...]
    arm_regimens: Mapping[str, str]
    bsa_m2: float | None

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

    def select(self, studies: tuple[str, ...] | list[str]) -> StudySummaries:
        """The summaries of ``studies`` only."""
        for study in studies:
            self._require(study)
        return self._keep([s in studies for s in self.studies])

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
    return _parse(tomllib.loads(text), _FILE, bsa_m2, shipped=True)


def read_summaries(path: str | Path, bsa_m2: float | None = None) -> StudySummaries:
    """Read a file of published summaries in the format of the shipped one (module docstring):

    - ``[arms.<name>]``: ``dose`` (each dose, in the model's dose unit) or ``dose_miu_per_m2``
      (with ``bsa_m2``, at the top of the file or given here), ``interval_days`` and ``n``
      (doses, from day 0); optional ``study`` (default: the arm's name) and ``regimen`` (words).
    - ``[[summaries]]``: ``arm``, ``observable``, ``time`` (days on the arm's clock),
      ``statistic``, ``value``, ``n`` and ``se`` (not for a ``proportion_above``, which needs
      ``threshold``); optional ``scale``, ``bound``, and ``row`` and ``encoding`` (provenance,
      required in the shipped file only).

    Raises:
        InputError: a missing or malformed file or entry, naming the file, the entry and the key.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"summaries file {str(path)!r} does not exist. Fix: check the path (relative to the fit file).")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"{path}: not valid TOML ({err}). Fix: correct the syntax.") from err
    return _parse(data, str(path), bsa_m2, shipped=False)


def _parse(data: Mapping, file: str, bsa_m2: float | None, shipped: bool) -> StudySummaries:
    _require_fields(data, ("bsa_m2", "arms", "summaries") if shipped else ("arms", "summaries"), "the file", file)
    bsa = data.get("bsa_m2") if bsa_m2 is None else bsa_m2
    if bsa is not None and not (isinstance(bsa, int | float) and not isinstance(bsa, bool) and math.isfinite(bsa) and bsa > 0):
        raise InputError(f"{file}: bsa_m2 must be a body-surface area > 0 m², got {bsa!r}. Fix: e.g. bsa_m2 = 1.8.")
    if not isinstance(data["arms"], Mapping) or not isinstance(data["summaries"], list):
        raise InputError(f"{file}: `arms` must be tables [arms.<name>] and `summaries` a list [[summaries]]. Fix: follow the format of il2treg's study_summaries.toml.")
    regimens, words, study_of = {}, {}, {}
    for arm, table in data["arms"].items():
        where = f"arms.{arm}"
        _known(table, (*_ARM_FIELDS, "dose"), where, file)
        _require_fields(table, _ARM_FIELDS if shipped else ("interval_days", "n"), where, file)
        if ("dose" in table) == ("dose_miu_per_m2" in table):
            raise InputError(f"{file}: {where}: give one of `dose` (in the model's dose unit) or `dose_miu_per_m2`. Fix: add exactly one of them.")
        if "dose_miu_per_m2" in table:
            if bsa is None:
                raise InputError(f"{file}: {where}: a dose per m² needs the body-surface area. Fix: add bsa_m2 = 1.8 (m²) at the top of the file.")
            dose = float(miu_per_m2_to_iu(_positive(table, "dose_miu_per_m2", where, file), float(bsa)))
        else:
            dose = _positive(table, "dose", where, file)
        n = table["n"]
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise InputError(f"{file}: {where}: n must be a whole number of doses >= 1, got {n!r}. Fix: e.g. n = 5.")
        regimens[arm] = every(dose, _positive(table, "interval_days", where, file), n)
        words[arm], study_of[arm] = str(table.get("regimen", "")), str(table.get("study", arm))
    summaries, studies, rows, encodings = [], [], [], []
    for k, table in enumerate(data["summaries"]):
        where = f"summaries[{k}]"
        _known(table, _SUMMARY_FIELDS, where, file)
        required = ("row", "arm", "observable", "time", "statistic", "value", "n", "se", "encoding") if shipped else ("arm", "observable", "time", "statistic", "value", "n")
        _require_fields(table, required, where, file)
        if table["arm"] not in regimens:
            raise InputError(f"{file}: {where}: arm {table['arm']!r} has no [arms.{table['arm']}] table. Fix: add it, or name one of {', '.join(regimens)}.")
        if not (isinstance(table["n"], int) and not isinstance(table["n"], bool)):
            raise InputError(f"{file}: {where}: n must be a whole number of patients, got {table['n']!r}. Fix: e.g. n = 39.")
        proportion = table["statistic"] == "proportion_above"
        for key, unused in (("threshold", not proportion), ("se", proportion)):
            if key in table and unused:
                raise InputError(f"{file}: {where}: {key} is given but a {table['statistic']} does not use it "
                                 "(a proportion's error is binomial; only a proportion has a threshold). Fix: remove it, or check the statistic.")  # fmt: skip
        try:
            row = int(table["row"]) if "row" in table else None
            summaries.append(Summary(
                arm=table["arm"], observable=str(table["observable"]), time=float(table["time"]), statistic=str(table["statistic"]),
                value=float(table["value"]), n=int(table["n"]), se=None if "se" not in table else float(table["se"]),
                threshold=None if "threshold" not in table else float(table["threshold"]), scale=table.get("scale", "value"), bound=table.get("bound"),
            ))  # fmt: skip
        except (TypeError, ValueError) as err:
            raise InputError(f"{file}: {where}: a row, time, value, se or threshold is not a number ({err}). Fix: give numbers.") from None
        studies.append(study_of[table["arm"]])
        rows.append(row)
        encodings.append(str(table.get("encoding", "")))
    return StudySummaries(regimens, tuple(summaries), tuple(studies), tuple(rows), tuple(encodings), words, None if bsa is None else float(bsa))


def _positive(table: Mapping, key: str, where: str, file: str) -> float:
    value = table[key]
    if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise InputError(f"{file}: {where}: {key} must be a number > 0, got {value!r}. Fix: give it in the unit the format names.")
    return float(value)


def _known(table: Mapping, fields: tuple[str, ...], where: str, file: str) -> None:
    if not isinstance(table, Mapping):
        raise InputError(f"{file}: {where} must be a table. Fix: follow the format of il2treg's study_summaries.toml.")
    unknown = set(table) - set(fields)
    if unknown:
        raise InputError(f"{file}: {where}: unknown key {sorted(unknown)[0]!r}. Fix: use only {', '.join(fields)}.")


def _require_fields(table: Mapping, fields: tuple[str, ...], where: str, file: str) -> None:
    for field in fields:
        if field not in table:
            raise InputError(f"{file}: {where}: missing {field!r}. Fix: add {field} = ... to the entry.")
