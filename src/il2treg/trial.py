r"""Virtual randomised trials with SRI-4: many replicates of a LUPIL-2-like trial at once.

A :class:`TrialDesign` (read with :func:`load_design` from ``models/lupil2_trial.toml``) says who is
randomised, where, when they are seen and how the end point is scored; :func:`simulate_trial`
runs ``n_trials`` replicates and returns a :class:`TrialResult` with per-patient scores and, per
replicate, SRI-4 rates, their difference and a p-value in the ITT and per-protocol sets.

**Patients.** Every patient of every replicate is a draw of the model's between-patient
variability (:func:`il2treg.sample_population`). The baseline latent activity
:math:`L_0` (``sledai0``) is redrawn by rejection: a patient enters only if the *reported*
baseline score is at least ``entry_sledai_min`` (6 in LUPIL-2), so the selection acts on the noisy
score, as at a real screening visit, and the placebo arm shows the regression to the mean that
comes with it. All patients of all replicates are solved as one batch per arm (in fixed-size
chunks, so that one compiled solve serves any number of replicates).

**Sites.** Each patient is enrolled at one of ``n_sites`` sites at random (the high-response sites
take ``high_site_share`` of the patients between them, the others share the rest equally). A site
shifts the standard-of-care improvement of all its patients, whatever their arm:

.. math::
    P_{max,i} = P_{max} + b_{s(i)}, \qquad b_s \sim N(0, \omega_{site}^2) \;(+\, \Delta_{high}
    \text{ at a high-response site}).

A site effect on the standard of care (background therapy, its intensification, the way raters
score) is the conventional way to express site-level placebo response; it leaves the blind
intact (both arms move) and, with :math:`\Delta_{high}` large, reproduces LUPIL-2's two
Bulgarian sites where every placebo patient responded. Because the standard-of-care term of the
model, :math:`-P_{max}(1 - e^{-k_{pl} \max(t, 0)})` (the ``sledai`` observable of
``models/il2_treg_sledai.toml``), is closed-form and linear in :math:`P_{max}`, the shift is added to the solved latent
score, :math:`L_i(t) \mathrel{+}= -b_{s(i)}(1 - e^{-k_{pl} t})`, without solving again.

**SLEDAI as reported.** At visit :math:`j` the score is
:math:`Y_{ij} = \max(0,\; h\,\mathrm{round}((L_i(t_j) + \varepsilon_{ij}) / h))`,
:math:`\varepsilon_{ij} \sim N(0, \sigma^2)` independent between visits, with grid
:math:`h` = ``score_step`` = 2: 21 of the 24 SELENA-SLEDAI descriptors weigh 2, 4 or 8 points, so
real scores move mostly in even steps, and a 4-point fall then needs what it needs clinically
(one 4-point item or two 2-point items to resolve). This is :mod:`il2treg.sledai`, the observation
model that the fit's ``ordinal`` likelihood and its SRI-4 prediction use too.

**SRI-4** at the assessment visit: :math:`Y_{i0} - Y_{i,wk12} \ge 4`, and no BILAG/PGA veto, a
Bernoulli draw kept with probability ``bilag_pga_keep`` (0.956, literature.md 5.2). A patient
drops out with probability ``dropout`` at a post-baseline visit drawn uniformly; from that visit on
nothing is observed, and a dropout is a non-responder.

**Analysis sets.** ITT: every randomised patient. Per-protocol: patients who completed, outside
the high-response sites (LUPIL-2's post hoc population without the two Bulgarian sites, n=53).

**Test.** Per replicate and set, the responders are compared between arms with a two-sided
Fisher's exact test (``scipy.stats.fisher_exact``; ``test = "chi2"`` in the design file gives
Pearson's chi-square without continuity correction instead). The test used in LUPIL-2 was not
read; on the published counts (34/50 vs 29/50; 20/24 vs 15/29) Fisher gives p = 0.41 and 0.021,
chi-square 0.30 and 0.016, the paper 0.34 and 0.017. Fisher is exact at these sizes and the more
conservative, so the power reported with it is a lower estimate.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import tomllib
import types
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pandas as pd

from il2treg import sledai
from il2treg.errors import InputError, RegimenError, SpecError
from il2treg.model import Model, Parameters, draw_typical, load_model, sample_population
from il2treg.regimen import Regimen, lupil2, named, placebo
from il2treg.simulate import SolverOptions, simulate
from il2treg.spec import MODELS_DIR

#: The two arms of a design, in the order used by every per-arm array.
ARMS: tuple[str, ...] = ("il2", "placebo")
#: The two analysis sets, in the order used by every per-set array.
ANALYSES: tuple[str, ...] = ("itt", "per_protocol")
#: Responder comparison tests a design may name.
TESTS: tuple[str, ...] = ("fisher", "chi2")

#: Design parameter -> the unit the design file must state it in.
DESIGN_UNITS: dict[str, str] = {
    "n_il2": "patients",
    "n_placebo": "patients",
    "n_sites": "sites",
    "n_high_response_sites": "sites",
    "high_site_share": "1",
    "high_site_pmax": "points",
    "site_pmax_sd": "points",
    "entry_sledai_min": "points",
    "visit_weeks": "week",
    "assessment_week": "week",
    "sledai_noise_sd": "points",
    "score_step": "points",
    "sri4_fall": "points",
    "bilag_pga_keep": "1",
    "dropout": "1",
    "treg_assay_cv": "%",
    "alpha": "1",
}

#: Patients per compiled solve; runs are padded to a multiple, so any number of replicates reuses
#: one compilation. Small chunks also bound the lock-step cost of a vmapped solve (every patient
#: of a chunk steps until the slowest is done): on 2 cores, 4096 LUPIL-2 patients took 1.65
#: ms/patient in chunks of 512, 0.95 in chunks of 256 and 128, and about 0.5 with two chunks at once.
CHUNK = 128
#: Chunks solved at once (threads; each solve releases the GIL).
WORKERS = os.cpu_count() or 1


def _fix(problem: str, fix: str) -> InputError:
    return InputError(f"{problem} Fix: {fix}.")


@dataclasses.dataclass(frozen=True, eq=False)
class TrialDesign:
    """A two-arm parallel trial with sites, visits, an SLEDAI score model and SRI-4.

    Build it with :func:`load_design` (the LUPIL-2 design) and change fields with
    :meth:`replace`. Every field is validated on construction.

    Attributes:
        n_per_arm: patients randomised per arm, ``{"il2": 50, "placebo": 50}``.
        n_sites: number of sites, the high-response ones included.
        n_high_response_sites: sites with a high standard-of-care response; they are excluded
            from the per-protocol set.
        high_site_share: fraction of patients enrolled at the high-response sites (0-1).
        high_site_pmax: extra standard-of-care improvement at those sites (SLEDAI points).
        site_pmax_sd: between-site SD of the standard-of-care improvement (points).
        entry_sledai_min: lowest reported baseline SLEDAI admitted (points).
        visit_weeks: visit times in weeks from the first dose; the first must be 0 (baseline).
        assessment_week: the visit at which SRI-4 is assessed (one of ``visit_weeks``).
        sledai_noise_sd: SD of the visit noise on the SLEDAI score (points).
        score_step: grid of the reported score (points; 2 = even scores, 1 = integers).
        sri4_fall: SLEDAI reduction needed for SRI-4 (points).
        bilag_pga_keep: probability that a SLEDAI responder is not vetoed by BILAG/PGA.
        dropout: probability of dropping out before the assessment (non-responder in ITT).
        treg_assay_cv: CV of the Treg % of CD4 assay (%).
        alpha: two-sided significance level; power is the fraction of replicates with p < alpha.
        test: ``"fisher"`` (two-sided Fisher's exact test) or ``"chi2"`` (Pearson, uncorrected).
        regimens: dosing per arm, ``{"il2": lupil2(), "placebo": placebo()}``.
        model: name or path of the model file whose patients are simulated.
        name: a label for reports.
    """

    n_per_arm: Mapping[str, int]
    n_sites: int
    n_high_response_sites: int
    high_site_share: float
    high_site_pmax: float
    site_pmax_sd: float
    entry_sledai_min: float
    visit_weeks: tuple[float, ...]
    assessment_week: float
    sledai_noise_sd: float
    score_step: float
    sri4_fall: float
    bilag_pga_keep: float
    dropout: float
    treg_assay_cv: float
    alpha: float = 0.05
    test: str = "fisher"
    regimens: Mapping[str, Regimen] = dataclasses.field(
        default_factory=lambda: {"il2": lupil2(), "placebo": placebo()}
    )
    model: str = "il2_treg_sledai"
    name: str = "custom"

    def __post_init__(self) -> None:
        for field in ("n_per_arm", "regimens"):
            object.__setattr__(self, field, _per_arm(getattr(self, field), field))
        for arm in ARMS:
            _require_int(self.n_per_arm[arm], f"n_per_arm[{arm!r}]", 1)
            _require_regimen(self.regimens[arm], f"regimens[{arm!r}]")
        _set = functools.partial(object.__setattr__, self)
        _set("n_sites", _require_int(self.n_sites, "n_sites", 1))
        _set("n_high_response_sites", _require_int(self.n_high_response_sites, "n_high_response_sites", 0))
        for field, (low, high, open_low) in _RANGES.items():
            _set(field, _require_number(getattr(self, field), field, low, high, open_low=open_low))
        if self.n_high_response_sites >= self.n_sites:
            raise _fix(f"n_high_response_sites ({self.n_high_response_sites}) must be fewer than n_sites "
                       f"({self.n_sites}): the per-protocol set needs at least one ordinary site.",
                       "lower n_high_response_sites or raise n_sites")
        if self.n_high_response_sites == 0 and self.high_site_share > 0:
            raise _fix("high_site_share > 0 but there are no high-response sites.",
                       "set high_site_share = 0 or n_high_response_sites >= 1")
        if self.high_site_share == 1.0:
            raise _fix("high_site_share is 1: every patient would be at a high-response site and the "
                       "per-protocol set empty.", "choose a share below 1")
        _set("visit_weeks", _visits(self.visit_weeks))
        if self.assessment_week not in self.visit_weeks[1:]:
            shown = ", ".join(f"{w:g}" for w in self.visit_weeks)
            raise _fix(f"assessment_week {self.assessment_week:g} is not a post-baseline visit of "
                       f"visit_weeks [{shown}].", "add it to visit_weeks or choose one of the visits")
        if self.test not in TESTS:
            raise _fix(f"unknown responder test {self.test!r}.", f"use one of {', '.join(map(repr, TESTS))}")

    @property
    def n_patients(self) -> int:
        """Patients per replicate trial (both arms)."""
        return sum(self.n_per_arm.values())

    @property
    def visit_days(self) -> np.ndarray:
        """Visit times in days of model time."""
        return 7.0 * np.asarray(self.visit_weeks, dtype=np.float64)

    @property
    def assessment_index(self) -> int:
        """Index of the assessment visit in :attr:`visit_weeks`."""
        return self.visit_weeks.index(float(self.assessment_week))

    def replace(self, **changes) -> TrialDesign:
        """A copy with some fields changed (validated again)."""
        unknown = [k for k in changes if k not in {f.name for f in dataclasses.fields(self)}]
        if unknown:
            raise _fix(f"TrialDesign has no field {unknown[0]!r}.",
                       f"use one of {', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)


#: Numeric design fields -> (lowest, highest, lowest excluded); None = unbounded.
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "high_site_share": (0.0, 1.0, False),
    "high_site_pmax": (None, None, False),
    "site_pmax_sd": (0.0, None, False),
    "entry_sledai_min": (None, None, False),
    "assessment_week": (0.0, None, True),
    "sledai_noise_sd": (0.0, None, False),
    "score_step": (0.0, None, True),
    "sri4_fall": (None, None, False),
    "bilag_pga_keep": (0.0, 1.0, False),
    "dropout": (0.0, 1.0, False),
    "treg_assay_cv": (0.0, None, False),
    "alpha": (0.0, 1.0, True),
}


def _per_arm(value, field: str) -> Mapping:
    """A read-only ``{arm: value}`` with exactly the arms of :data:`ARMS`."""
    if not isinstance(value, Mapping):
        raise _fix(f"TrialDesign.{field} must be a mapping arm -> value, got {type(value).__name__}.",
                   f"pass e.g. {field}={{'il2': ..., 'placebo': ...}}")
    unknown = [a for a in value if a not in ARMS]
    if unknown:
        raise _fix(f"unknown arm {unknown[0]!r} in TrialDesign.{field}.",
                   f"name the arms {' and '.join(map(repr, ARMS))}")
    missing = [a for a in ARMS if a not in value]
    if missing:
        raise _fix(f"TrialDesign.{field} has no entry for arm {missing[0]!r}.",
                   f"give a value for each of {', '.join(map(repr, ARMS))}")
    return types.MappingProxyType({a: value[a] for a in ARMS})


def _visits(weeks) -> tuple[float, ...]:
    if isinstance(weeks, (str, bytes)) or not hasattr(weeks, "__iter__"):
        raise _fix(f"visit_weeks must be a sequence of weeks, got {weeks!r}.", "pass e.g. visit_weeks=(0, 4, 12)")
    weeks = tuple(_require_number(w, "each of visit_weeks") for w in weeks)
    shown = ", ".join(f"{w:g}" for w in weeks)
    if len(weeks) < 2 or weeks[0] != 0.0:
        raise _fix(f"visit_weeks must start with the baseline visit 0 and have a later visit, got [{shown}].",
                   "pass e.g. visit_weeks=(0, 4, 12)")
    if any(b <= a for a, b in itertools.pairwise(weeks)):
        raise _fix(f"visit_weeks must increase strictly, got [{shown}].", "sort them and drop repeats")
    return weeks


def _require_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise _fix(f"{name} must be a whole number >= {minimum}, got {value!r}.", f"pass an integer >= {minimum}")
    return int(value)


def _require_number(value, name: str, low: float | None = None, high: float | None = None, *,
                    open_low: bool = False) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating))
            or not math.isfinite(value)):
        raise _fix(f"{name} must be a finite number, got {value!r}.", "pass a number")
    if low is not None and (value < low or (open_low and value == low)):
        bound = f"{'>' if open_low else '>='} {low:g}"
        raise _fix(f"{name} = {value:g} is below its allowed range ({bound}).", f"choose {name} {bound}")
    if high is not None and value > high:
        raise _fix(f"{name} = {value:g} is above its allowed range (<= {high:g}).", f"choose {name} <= {high:g}")
    return float(value)


def _require_regimen(regimen, name: str) -> Regimen:
    if not isinstance(regimen, Regimen):
        raise RegimenError(f"{name} must be an il2treg.Regimen, got {type(regimen).__name__}. "
                           "Fix: build one with il2treg.regimen (e.g. regimen.lupil2()) or read_regimen_csv(path).")
    if regimen.times.ndim != 1:
        raise RegimenError(f"{name} is batched (times of shape {tuple(regimen.times.shape)}); an arm has one "
                           "regimen. "
                           "Fix: pass an unbatched regimen.")
    return regimen


# ------------------------------------------------------------------------------------------------ file


def resolve_design_path(name_or_path: str | Path) -> Path:
    """Map a design name (``lupil2`` or ``lupil2_trial``) or a path to an existing TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SpecError(f"design file {str(path)!r} does not exist. Fix: check the path.")
        return path
    stem = str(name_or_path)
    candidate = MODELS_DIR / f"{stem if stem.endswith('_trial') else stem + '_trial'}.toml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem.removesuffix("_trial") for p in MODELS_DIR.glob("*_trial.toml"))
    raise SpecError(f"unknown trial design {str(name_or_path)!r}. Fix: use one of {', '.join(known)} "
                    "or a path to a design .toml file.")


def load_design(name_or_path: str | Path = "lupil2") -> TrialDesign:
    """Read a trial design from ``models/<name>_trial.toml`` (or a path).

    The file has a ``[design]`` table (``name``, ``description``, ``model``, ``test``), one
    ``[arms.<arm>]`` table per arm (``regimen``: a name known to :func:`il2treg.regimen.named`) and
    one ``[parameters.<name>]`` table per field of :class:`TrialDesign` with ``value``, ``unit``
    (the one in :data:`DESIGN_UNITS`), ``description`` and ``source``.

    **Raises:** :class:`SpecError` naming the table and field, or :class:`InputError` from the
    design's own validation.
    """
    path = resolve_design_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML ({err}). Fix: correct the syntax.") from err
    where = str(path)
    for key in data:
        if key not in ("design", "arms", "parameters"):
            raise SpecError(f"{where}: unknown table [{key}]. Fix: use [design], [arms.*] and [parameters.*].")
    meta = data.get("design", {})
    arms = data.get("arms", {})
    for arm in arms:
        if arm not in ARMS:
            raise SpecError(f"{where}: unknown arm [arms.{arm}]. Fix: name the arms {' and '.join(ARMS)}.")
    regimens = {}
    for arm in ARMS:
        if arm not in arms or "regimen" not in arms[arm]:
            raise SpecError(f"{where}: [arms.{arm}] needs a `regimen` (e.g. \"lupil2\" or \"placebo\").")
        regimens[arm] = named(arms[arm]["regimen"])
    params = data.get("parameters", {})
    values = {}
    for name, table in params.items():
        if name not in DESIGN_UNITS:
            raise SpecError(f"{where}: unknown design parameter {name!r}. Fix: use one of {', '.join(DESIGN_UNITS)}.")
        for key in ("value", "unit", "source"):
            if key not in table:
                raise SpecError(f"{where}: parameter {name!r} has no {key!r}. "
                                f"Fix: add `{key} = ...` to [parameters.{name}].")
        if table["unit"] != DESIGN_UNITS[name]:
            raise SpecError(f"{where}: parameter {name!r} is in {table['unit']!r}; the design needs "
                            f"{DESIGN_UNITS[name]!r}. "
                            f"Fix: state it in {DESIGN_UNITS[name]!r}.")
        values[name] = table["value"]
    missing = [n for n in DESIGN_UNITS if n not in values and n != "alpha"]
    if missing:
        raise SpecError(f"{where}: design parameter {missing[0]!r} is missing. Fix: add [parameters.{missing[0]}].")
    n_per_arm = {"il2": values.pop("n_il2"), "placebo": values.pop("n_placebo")}
    return TrialDesign(
        n_per_arm=n_per_arm,
        regimens=regimens,
        model=str(meta.get("model", "il2_treg_sledai")),
        test=str(meta.get("test", "fisher")),
        name=str(meta.get("name", path.stem)),
        **values,
    )


# ------------------------------------------------------------------------------------ observation model


def reported_score(latent_plus_noise, step: float) -> np.ndarray:
    """The reported SLEDAI: ``max(0, step * round(x / step))`` (points; :func:`il2treg.sledai.reported`)."""
    return sledai.reported(np.asarray(latent_plus_noise, dtype=np.float64), step)


def sri4(baseline, assessment, keep, fall: float = 4.0) -> np.ndarray:
    """SRI-4 responder: a reported SLEDAI fall >= ``fall`` and no BILAG/PGA veto (``keep``).

    A missing assessment (NaN, e.g. after dropout) is a non-responder.
    """
    baseline = np.asarray(baseline, dtype=np.float64)
    assessment = np.asarray(assessment, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        fell = (baseline - assessment) >= fall
    return fell & ~np.isnan(assessment) & np.asarray(keep, dtype=bool)


def response_probability(l0, l_assess, design: TrialDesign) -> tuple[np.ndarray, np.ndarray]:
    r"""Exact probabilities of entry and of (entry and SLEDAI fall), given latent scores.

    For a patient with latent baseline ``l0`` and latent score ``l_assess`` at the assessment,
    under the reported-score model of :func:`reported_score` with visit noise ``sledai_noise_sd``:

    .. math::
        P(\text{entry}) = \sum_{b \ge e} P(Y_0 = b), \qquad
        P(\text{entry}, \text{fall}) = \sum_{b \ge e} P(Y_0 = b)\, P(Y_{12} \le b - 4)

    over the score grid ``b``. Smooth in the latent scores, so usable in calibration; multiply
    by ``bilag_pga_keep`` for SRI-4.

    Returns:
        ``(p_entry, p_entry_and_fall)`` with the broadcast shape of the inputs.
    """
    l0 = np.asarray(l0, dtype=np.float64)
    l_assess = np.asarray(l_assess, dtype=np.float64)
    if float(design.sledai_noise_sd) == 0.0:
        raise _fix("response_probability needs sledai_noise_sd > 0 (the scores are otherwise not random).",
                   "simulate with simulate_trial instead")
    p_entry, p_both = entry_and_fall(l0.reshape(-1), np.broadcast_to(l_assess, l0.shape).reshape(-1), design, float(np.nanmax(l0)))
    return p_entry.reshape(l0.shape), p_both.reshape(l0.shape)


def entry_and_fall(l0, l_assess, design: TrialDesign, top: float, xp=np):
    """The sums of :func:`response_probability` for 1-D ``l0``, ``l_assess`` (no checks), with the
    score grid up to ``top + 10 sd``; ``top`` bounds ``l0`` and is static. ``xp``: ``numpy``, or
    ``jax.numpy`` for a differentiable version (:func:`il2treg.design.design_function`)."""
    h, sd = float(design.score_step), float(design.sledai_noise_sd)
    scores = sledai.grid(top + 10.0 * sd, h)
    p_b = sledai.probabilities(scores, l0, sd, h, xp) * (scores >= design.entry_sledai_min - 1e-9)[:, None]
    p_fall = sledai.at_most(sledai.fall_limit(scores, design.sri4_fall, h), l_assess, sd, h, xp)
    return p_b.sum(axis=0), (p_b * p_fall).sum(axis=0)


# ------------------------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True, eq=False)
class TrialResult:
    """Replicate trials from :func:`simulate_trial`. Patients are ordered IL-2 arm first.

    Attributes:
        design: the design simulated.
        seed: the seed used.
        visit_days: visit times (days), ``[visits]``.
        arm: arm index per patient (0 = il2, 1 = placebo; see :data:`ARMS`), ``[patients]``.
        site: site per patient (0 .. n_sites-1; the first ``n_high_response_sites`` are the
            high-response sites), ``[trials, patients]``.
        sledai: reported SLEDAI (points; NaN after dropout), ``[trials, patients, visits]``.
        sledai_latent: latent SLEDAI L(t) with the site effect (points), same shape.
        treg_pct_cd4: reported Treg % of CD4 (assay noise; NaN after dropout), same shape (NaN throughout for a model without that observable).
        dropout: whether the patient dropped out before the assessment, ``[trials, patients]``.
        responder: SRI-4 responder at the assessment, ``[trials, patients]``.
        per_protocol: member of the per-protocol set, ``[trials, patients]``.
        n: patients per set and arm, ``[analyses, trials, arms]``.
        responders: SRI-4 responders per set and arm, same shape.
        p_value: two-sided p of the responder comparison, ``[analyses, trials]``.
        n_failed: patients whose ODE solve failed (counted as dropouts; 0 normally).
        drawn: with ``simulate_trial(..., uncertain=...)``, each uncertain parameter's typical
            value per replicate, ``{name: [trials]}`` (empty otherwise).
    """

    design: TrialDesign
    seed: int
    visit_days: np.ndarray
    arm: np.ndarray
    site: np.ndarray
    sledai: np.ndarray
    sledai_latent: np.ndarray
    treg_pct_cd4: np.ndarray
    dropout: np.ndarray
    responder: np.ndarray
    per_protocol: np.ndarray
    n: np.ndarray
    responders: np.ndarray
    p_value: np.ndarray
    n_failed: int
    drawn: dict = dataclasses.field(default_factory=dict)

    @property
    def n_trials(self) -> int:
        return int(self.site.shape[0])

    def rate(self, analysis: str = "itt", arm: str = "il2") -> np.ndarray:
        """SRI-4 rate per replicate (fraction; NaN where the set has no patient of that arm)."""
        a, k = _analysis_index(analysis), _arm_index(arm)
        n = self.n[a, :, k]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, self.responders[a, :, k] / np.maximum(n, 1), np.nan)

    def difference(self, analysis: str = "itt") -> np.ndarray:
        """IL-2 minus placebo SRI-4 rate per replicate."""
        return self.rate(analysis, "il2") - self.rate(analysis, "placebo")

    def summary(self) -> dict:
        """``{"itt": {"il2", "placebo", "difference", "power"}, "per_protocol": {...}, "replicates"}``.

        Rates and differences are means over replicates (fractions); power is the fraction of
        replicates with p < ``design.alpha``. With ``uncertain`` parameters drawn per replicate,
        that fraction is the assurance (power averaged over their uncertainty), and
        ``difference_p5``/``difference_p95`` (the 5th and 95th percentiles of the replicates'
        differences) hold sampling and parameter uncertainty together.
        """
        out: dict = {}
        for analysis in ANALYSES:
            a = _analysis_index(analysis)
            out[analysis] = {
                "il2": float(np.nanmean(self.rate(analysis, "il2"))),
                "placebo": float(np.nanmean(self.rate(analysis, "placebo"))),
                "difference": float(np.nanmean(self.difference(analysis))),
                "power": float(np.mean(self.p_value[a] < self.design.alpha)),
            }
            if self.drawn:
                d = self.difference(analysis)
                lo, hi = np.nanpercentile(d, [5.0, 95.0])
                out[analysis].update(difference_p5=float(lo), difference_p95=float(hi))
        out["replicates"] = self.n_trials
        return out

    def to_frame(self, trial: int | None = None) -> pd.DataFrame:
        """Long table, one row per patient and visit: ``TRIAL, ID, ARM, SITE, PP, WEEK, SLEDAI,
        SLEDAI_LATENT, TREG_PCT, DROPOUT, SRI4`` (all replicates, or one)."""
        trials = range(self.n_trials) if trial is None else [_require_int(trial, "trial", 0)]
        if trial is not None and trial >= self.n_trials:
            raise _fix(f"trial {trial} does not exist ({self.n_trials} replicates).", f"use 0 .. {self.n_trials - 1}")
        idx = np.asarray(list(trials))
        t, p, v = len(idx), self.arm.shape[0], self.visit_days.shape[0]
        shape = (t, p, v)

        def per_patient(x):
            return np.broadcast_to(x[idx][:, :, None], shape).reshape(-1)

        return pd.DataFrame({
            "TRIAL": np.broadcast_to(idx[:, None, None], shape).reshape(-1),
            "ID": np.broadcast_to(np.arange(1, p + 1)[None, :, None], shape).reshape(-1),
            "ARM": np.broadcast_to(np.asarray(ARMS, dtype=object)[self.arm][None, :, None], shape).reshape(-1),
            "SITE": per_patient(self.site) + 1,
            "PP": per_patient(self.per_protocol),
            "WEEK": np.broadcast_to(self.visit_days[None, None, :] / 7.0, shape).reshape(-1),
            "SLEDAI": self.sledai[idx].reshape(-1),
            "SLEDAI_LATENT": self.sledai_latent[idx].reshape(-1),
            "TREG_PCT": self.treg_pct_cd4[idx].reshape(-1),
            "DROPOUT": per_patient(self.dropout),
            "SRI4": per_patient(self.responder),
        })


def _arm_index(arm: str) -> int:
    if arm not in ARMS:
        raise _fix(f"unknown arm {arm!r}.", f"use one of {', '.join(map(repr, ARMS))}")
    return ARMS.index(arm)


def _analysis_index(analysis: str) -> int:
    if analysis not in ANALYSES:
        raise _fix(f"unknown analysis set {analysis!r}.", f"use one of {', '.join(map(repr, ANALYSES))}")
    return ANALYSES.index(analysis)


def format_summary(summary: dict) -> str:
    """A human table of :meth:`TrialResult.summary`."""
    try:
        rows = [(label, summary[key]) for key, label in (("itt", "ITT"), ("per_protocol", "per-protocol"))]
        header = f"SRI-4 at the assessment visit, mean over {int(summary['replicates'])} replicate trials"
        lines = [header, f"{'':<14}{'IL-2':>8}{'placebo':>10}{'difference':>13}{'power':>8}"]
        for label, r in rows:
            lines.append(f"{label:<14}{100 * r['il2']:>7.1f}%{100 * r['placebo']:>9.1f}%"
                         f"{100 * r['difference']:>+9.1f} pp{100 * r['power']:>7.1f}%")
    except (KeyError, TypeError) as err:
        raise _fix(f"not a trial summary (missing or malformed {err}).", "pass TrialResult.summary()") from None
    lines.append("power: fraction of replicates with p < alpha (two-sided)")
    if all("difference_p5" in r for _, r in rows):
        for label, r in rows:
            lines.append(f"{label} difference, 5th-95th percentile over replicates: {100 * r['difference_p5']:+.1f} to {100 * r['difference_p95']:+.1f} pp")
        lines.append("parameters drawn from their priors per replicate: the percentiles carry that uncertainty, and power is an assurance")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- simulation


def draw_entry(model: Model, design: TrialDesign, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(sledai0, baseline noise) of ``n`` patients admitted by the entry criterion (rejection).

    ``sledai0`` (points) follows the model's own law (log-normal around its value with its CV,
    clipped to its bounds), as :func:`il2treg.sample_population` draws it; the baseline visit
    noise (points) is the one the patient was admitted with, to be passed to :func:`report_sledai`.
    """
    spec = model.spec["sledai0"]
    lo, hi = spec.bounds
    l0_out, e0_out, have, drawn = [], [], 0, 0
    while have < n:
        m = max(2 * (n - have), 64)
        l0 = np.clip(spec.value * np.exp(spec.omega * rng.standard_normal(m)), lo, hi)
        e0 = design.sledai_noise_sd * rng.standard_normal(m)
        ok = reported_score(l0 + e0, design.score_step) >= design.entry_sledai_min - 1e-9
        l0_out.append(l0[ok])
        e0_out.append(e0[ok])
        have += int(ok.sum())
        drawn += m
        if drawn > 1000 * n and have < n:
            raise _fix(f"the entry criterion SLEDAI >= {design.entry_sledai_min:g} admits fewer than 1 in 1000 "
                       f"patients of model {model.name!r}.",
                       "lower entry_sledai_min or check sledai0 in the model file")
    return np.concatenate(l0_out)[:n], np.concatenate(e0_out)[:n]


#: What a trial reads of a model besides its ``sledai`` observable: the baseline latent SLEDAI it
#: redraws by the entry criterion and the standard-of-care course it shifts by site.
TRIAL_PARAMETERS: tuple[str, ...] = ("sledai0", "pmax", "kpl")


def _solve_arm(model: Model, regimen: Regimen, days: np.ndarray, params: Parameters,
               options: SolverOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Latent SLEDAI and Treg % of CD4 at ``days`` and solver status, in chunks of :data:`CHUNK`.

    Patients are ordered by their fastest rate (the model's ``stiffness``: for the IL-2 model the
    elimination (CL + CLR) / V) before chunking, so
    that the patients of a chunk need similar numbers of steps (as :func:`il2treg.simulate` does
    within a large batch; 25,000 LUPIL-2 patients: 24 s unordered, 18 s ordered on 2 cores).
    Chunks run on a thread pool (JAX releases the GIL while a solve runs), one per CPU core.
    """
    stiffness = model.mechanism.stiffness(params.values)
    order = np.arange(params.values.shape[0]) if stiffness is None else np.argsort(np.asarray(stiffness), kind="stable")
    values = params.values[order]
    n = values.shape[0]
    times = jnp.asarray(days)

    def solve(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block = values[start:start + CHUNK]
        real = block.shape[0]
        if real < CHUNK:  # pad with copies of the last patient: one compiled shape for every run
            block = jnp.concatenate([block, jnp.broadcast_to(block[-1:], (CHUNK - real, block.shape[1]))])
        sim = simulate(model, regimen, times, Parameters(block, params.names), options=options)
        treg = np.asarray(sim["treg_pct_cd4"])[:real] if "treg_pct_cd4" in sim.names else np.full((real, len(days)), np.nan)
        return (np.asarray(sim["sledai"])[:real], treg,
                np.asarray(sim.status)[:real])

    starts = range(0, n, CHUNK)
    if len(starts) == 1:
        parts = [solve(0)]
    else:
        with ThreadPoolExecutor(max_workers=min(WORKERS, len(starts))) as pool:
            parts = list(pool.map(solve, starts))
    inverse = np.argsort(order)
    return tuple(np.concatenate(x)[inverse] for x in zip(*parts))


_P_CACHE: dict[tuple, float] = {}


def _p_value(test: str, a: int, n1: int, b: int, n2: int) -> float:
    """Two-sided p of responders a/n1 vs b/n2 (cached: replicates repeat the same tables)."""
    from scipy import stats  # here, not at the top: scipy.stats takes 0.8 s to import, and only trials test

    key = (test, a, n1, b, n2)
    if key not in _P_CACHE:
        if n1 == 0 or n2 == 0:
            p = 1.0
        elif test == "fisher":
            p = float(stats.fisher_exact([[a, n1 - a], [b, n2 - b]]).pvalue)
        else:
            table = np.array([[a, n1 - a], [b, n2 - b]])
            if (table.sum(axis=0) == 0).any():
                p = 1.0  # all or none responded in both arms: no evidence of a difference
            else:
                p = float(stats.chi2_contingency(table, correction=False).pvalue)
        _P_CACHE[key] = p
    return _P_CACHE[key]


def simulate_trial(
    design: TrialDesign | str,
    n_trials: int,
    seed: int,
    *,
    model: Model | None = None,
    regimen: Regimen | None = None,
    pool_size: int | None = None,
    options: SolverOptions | None = None,
    uncertain=None,
) -> TrialResult:
    """Simulate ``n_trials`` replicates of a two-arm trial and analyse each.

    Arguments:
        design: a :class:`TrialDesign`, or a design name for :func:`load_design` (``"lupil2"``).
        n_trials: number of replicate trials (>= 1).
        seed: integer seed; the same seed gives the same result.
        model: the model whose patients are simulated (default: ``load_model(design.model)``).
        regimen: replaces the IL-2 arm's regimen (e.g. from :func:`il2treg.regimen.read_regimen_csv`).
        pool_size: if given, simulate this many patients per arm once and draw every replicate's
            patients from them with replacement (a bootstrap of the virtual population); sites,
            visit noise, dropout and vetoes are still drawn per replicate. Much faster for many
            replicates; mean rates are unchanged, the spread between replicates is slightly
            smaller unless ``pool_size`` is much larger than the arm size. Default: every patient
            of every replicate is simulated (one batch per arm).
        options: ODE solver options (default :class:`il2treg.SolverOptions`).
        uncertain: parameters whose typical value is drawn from its prior in the model file once
            per replicate, shared by both arms (:func:`il2treg.model.draw_typical`), e.g.
            ``("imax", "r50", "kd")`` for the SLEDAI link. The spread of the replicates then
            carries that uncertainty, and the power is an assurance. Not with ``pool_size``.

    Returns:
        :class:`TrialResult`.

    Raises:
        InputError (or a subclass) for bad arguments, naming the cause and the fix.
    """
    if isinstance(design, (str, Path)):
        design = load_design(design)
    if not isinstance(design, TrialDesign):
        raise _fix(f"design must be a TrialDesign or a design name, got {type(design).__name__}.",
                   "pass il2treg.trial.load_design('lupil2')")
    n_trials = _require_int(n_trials, "n_trials", 1)
    seed = _require_int(seed, "seed", 0)
    if pool_size is not None:
        pool_size = _require_int(pool_size, "pool_size", 1)
    if regimen is not None:
        design = design.replace(regimens={**design.regimens, "il2": _require_regimen(regimen, "regimen")})
    if model is None:
        model = load_model(design.model)
    if not isinstance(model, Model):
        raise _fix(f"model must be an il2treg.Model, got {type(model).__name__}.", "pass il2treg.load_model(...)")
    missing = [n for n in TRIAL_PARAMETERS if n not in model.parameter_names]
    if "sledai" not in model.observable_names or missing:
        what = "sledai observable" if "sledai" not in model.observable_names else f"parameter(s) {', '.join(missing)}"
        raise _fix(f"model {model.name!r} has no {what}: a trial needs the latent SLEDAI (observable sledai, points) and its "
                   f"standard-of-care course ({', '.join(TRIAL_PARAMETERS)}, as in il2_treg_sledai).",
                   "add them to the model file, as models/il2_treg_sledai.toml declares them")  # fmt: skip
    options = SolverOptions() if options is None else options
    uncertain = tuple(dict.fromkeys([uncertain] if isinstance(uncertain, str) else uncertain or ()))
    if uncertain and pool_size is not None:
        raise _fix("uncertain= draws parameters per replicate, which a shared pool of patients (pool_size=) cannot carry.",
                   "drop pool_size, or uncertain")  # fmt: skip

    # one stream per arm, one for enrolment and visits, one for the uncertain parameters (spawned
    # children depend on their index only: a trial without uncertain= draws as before)
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(ARMS) + 2)]
    typical = None
    if "sledai0" in uncertain:
        raise _fix("uncertain= names sledai0, but a trial draws each patient's entry SLEDAI from the entry criterion, not from the typical value.",
                   "leave sledai0 out; change the entry law in the model file")  # fmt: skip
    if uncertain:
        typical = np.asarray(draw_typical(model, n_trials, streams[len(ARMS) + 1], names=uncertain).values)
    per_arm = [_arm_patients(model, design, arm, n_trials, pool_size, options, rng, typical)
               for arm, rng in zip(ARMS, streams)]
    latent, treg, failed, e0, kpl = (np.concatenate(x, axis=1) for x in zip(*per_arm))
    rng = streams[len(ARMS)]
    site, latent = _enrol(design, latent, kpl, rng)
    sledai, treg_obs, dropout, responder = _observe(design, latent, treg, e0, failed, rng)
    pp = ~dropout & (site >= design.n_high_response_sites)
    arm_index = np.repeat(np.arange(len(ARMS)), [design.n_per_arm[a] for a in ARMS])
    n, r, p = _analyse(design, arm_index, responder, pp)
    n_failed = int(failed.sum())
    if n_failed:
        warnings.warn(f"{n_failed} simulated patients had a failed ODE solve and count as dropouts. "
                      "Fix: check the model's parameter bounds or raise SolverOptions.max_steps.",
                      RuntimeWarning, stacklevel=2)
    return TrialResult(design=design, seed=seed, visit_days=design.visit_days, arm=arm_index, site=site,
                       sledai=sledai, sledai_latent=latent, treg_pct_cd4=treg_obs, dropout=dropout,
                       responder=responder, per_protocol=pp, n=n, responders=r, p_value=p, n_failed=n_failed,
                       drawn={name: typical[:, model.parameter_names.index(name)] for name in uncertain})


def _arm_patients(model: Model, design: TrialDesign, arm: str, n_trials: int, pool_size: int | None,
                  options: SolverOptions, rng: np.random.Generator, typical: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """One arm's patients of every replicate, ``[trials, n_arm, ...]``: latent SLEDAI and Treg %
    at the visits, solve failure, baseline visit noise and kpl (for the site effect). ``typical``:
    the replicates' typical parameters ``[trials, params]`` (default the model's)."""
    n_arm = design.n_per_arm[arm]
    n_draw = pool_size if pool_size is not None else n_trials * n_arm
    centre = None if typical is None else Parameters(jnp.asarray(np.repeat(typical, n_arm, axis=0)), model.parameter_names)
    params = sample_population(model, n_draw, seed=int(rng.integers(2**31 - 1)), typical=centre)
    l0, e0 = draw_entry(model, design, n_draw, rng)
    params = params.replace(sledai0=jnp.asarray(l0))
    latent, treg, status = _solve_arm(model, design.regimens[arm], design.visit_days, params, options)
    if pool_size is None:
        pick = np.arange(n_draw).reshape(n_trials, n_arm)
    else:
        pick = rng.integers(0, n_draw, size=(n_trials, n_arm))
    return latent[pick], treg[pick], status[pick] != 0, e0[pick], np.asarray(params["kpl"])[pick]


def _enrol(design: TrialDesign, latent: np.ndarray, kpl: np.ndarray,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    r"""Site of every patient and the latent SLEDAI with its site's standard-of-care shift.

    The shift b of Pmax enters through the model's closed-form, pmax-linear standard-of-care term,
    :math:`-b\,(1 - e^{-k_{pl} \max(t, 0)})` (module docstring).
    """
    site, effect = draw_sites(design, latent.shape[:2], rng)
    shift = np.take_along_axis(effect, site, axis=1)
    days = np.maximum(np.asarray(design.visit_days, dtype=np.float64), 0.0)[None, None, :]
    soc = -shift[..., None] * (1.0 - np.exp(-np.asarray(kpl)[..., None] * days))
    return site, latent + soc


def draw_sites(design: TrialDesign, shape: tuple[int, int],
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sites of ``[trials, patients]`` patients and every site's standard-of-care shift.

    Sites are numbered 0 .. ``n_sites - 1``, the high-response ones first; they take
    ``high_site_share`` of the patients between them and the others share the rest equally.

    Returns:
        ``(site, effect)``: the site of each patient, ``shape``, and the shift :math:`b_s` of
        :math:`P_{max}` (points) of each site, ``[trials, n_sites]``.
    """
    n_trials, n_pat = shape
    n_high = design.n_high_response_sites
    weights = np.empty(design.n_sites)
    weights[:n_high] = design.high_site_share / n_high if n_high else 0.0
    weights[n_high:] = (1.0 - design.high_site_share) / (design.n_sites - n_high)
    site = rng.choice(design.n_sites, size=(n_trials, n_pat), p=weights / weights.sum())
    effect = design.site_pmax_sd * rng.standard_normal((n_trials, design.n_sites))
    effect[:, :n_high] += design.high_site_pmax
    return site, effect


def report_sledai(design: TrialDesign, latent: np.ndarray, e0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Reported SLEDAI at the design's visits (last axis) from the latent score (points).

    Visit noise is drawn independently at every visit, except at the baseline visit (index 0),
    which keeps the noise ``e0`` the patient was admitted with (from :func:`draw_entry`).
    """
    noise = design.sledai_noise_sd * rng.standard_normal(latent.shape)
    noise[..., 0] = e0
    return reported_score(latent + noise, design.score_step)


def assay_noise(values: np.ndarray, cv_percent: float, rng: np.random.Generator) -> np.ndarray:
    """``values`` with independent log-normal assay noise of the given CV (%)."""
    log_sd = math.sqrt(math.log1p((cv_percent / 100.0) ** 2))
    return values * np.exp(log_sd * rng.standard_normal(np.shape(values)))


def draw_dropout(design: TrialDesign, shape: tuple[int, ...],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Who drops out (probability ``dropout``) and the first visit each would miss.

    Returns:
        ``(dropped, first_missed)``, both of ``shape``: dropout flags, and the index into
        ``visit_weeks`` (uniform over the post-baseline visits) from which nothing is observed.
    """
    dropped = rng.random(shape) < design.dropout
    first_missed = rng.integers(1, len(design.visit_weeks), size=shape)
    return dropped, first_missed


def _observe(design: TrialDesign, latent: np.ndarray, treg: np.ndarray, e0: np.ndarray, failed: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Reported SLEDAI and Treg %, dropout (missing at the assessment) and SRI-4 responders."""
    n_trials, n_pat, n_visits = latent.shape
    sledai = report_sledai(design, latent, e0, rng)
    treg_obs = assay_noise(treg, design.treg_assay_cv, rng)
    dropped, first_missed = draw_dropout(design, (n_trials, n_pat), rng)
    missing = (dropped[..., None] & (np.arange(n_visits) >= first_missed[..., None])) | failed[..., None]
    sledai = np.where(missing, np.nan, sledai)
    treg_obs = np.where(missing, np.nan, treg_obs)
    keep = rng.random((n_trials, n_pat)) < design.bilag_pga_keep
    responder = sri4(sledai[..., 0], sledai[..., design.assessment_index], keep, design.sri4_fall)
    return sledai, treg_obs, missing[..., design.assessment_index], responder


def _analyse(design: TrialDesign, arm_index: np.ndarray, responder: np.ndarray,
             pp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patients and responders ``[analyses, trials, arms]`` and p-values ``[analyses, trials]``."""
    sets = np.stack([np.ones_like(pp), pp])  # ITT, per-protocol: [analyses, trials, patients]
    in_arm = [arm_index == k for k in range(len(ARMS))]
    n = np.stack([(sets & a).sum(-1) for a in in_arm], axis=-1)
    r = np.stack([(sets & a & responder).sum(-1) for a in in_arm], axis=-1)
    p = np.array([[_p_value(design.test, int(r[a, t, 0]), int(n[a, t, 0]), int(r[a, t, 1]), int(n[a, t, 1]))
                   for t in range(n.shape[1])] for a in range(len(ANALYSES))])
    return n, r, p


__all__ = [
    "ANALYSES",
    "ARMS",
    "TrialDesign",
    "TrialResult",
    "assay_noise",
    "draw_dropout",
    "draw_entry",
    "draw_sites",
    "format_summary",
    "load_design",
    "report_sledai",
    "reported_score",
    "response_probability",
    "simulate_trial",
    "sri4",
]
