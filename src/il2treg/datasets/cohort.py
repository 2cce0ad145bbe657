r"""A simulated LUPIL-2-like cohort in the data format of :mod:`il2treg.data`.

**Simulated, not patient data.** Every table made here is drawn from il2treg's own model; it is
not, and does not approximate row by row, the LUPIL-2 patient-level data (which are not public).
Each table says so three times: a ``SIMULATED`` column equal to 1 on every row, the DataFrame's
``attrs["description"]``, and, for the shipped cohort, the metadata file beside it.

:func:`simulate_cohort` draws ``n`` patients as :func:`il2treg.trial.simulate_trial` draws the
patients of one trial, with the trial module's own mechanisms:

- **Arms**: 1:1 (the design's ratio), randomised by permutation; ``ARM`` is ``"ILT-101"`` or
  ``"placebo"``.
- **Patients**: the model's between-patient variability (:func:`il2treg.sample_population`);
  baseline activity ``sledai0`` redrawn by rejection until the *reported* baseline SLEDAI meets
  the entry criterion (:func:`il2treg.trial.draw_entry`).
- **Sites**: :func:`il2treg.trial.draw_sites` (the high-response sites are ``SITE`` 1 and 2,
  flagged by ``HIGH_RESPONSE_SITE``). A site shifts the standard-of-care improvement, so each
  patient is simulated with :math:`P_{max,i} = P_{max} + b_{s(i)}` (the trial module adds the
  same shift to the solved score, which is equal; see ``tests/test_trial.py``).
- **Dropout**: :func:`il2treg.trial.draw_dropout`; a patient who drops out has no rows (neither
  observations nor doses) from the first missed SLEDAI visit on.
- **SLEDAI**: reported scores at the design's visits, :func:`il2treg.trial.report_sledai`.

**Doses** (``EVID=1``, ``AMT`` in IU): each arm's regimen from the design. The placebo arm's
regimen has no doses, but LUPIL-2 was blinded and placebo patients were injected on the same
schedule, so they get dose rows at the ILT-101 times with ``AMT=0`` (a placebo injection, as
:mod:`il2treg.data` defines it); a zero dose changes no simulation.

**Observations** (``EVID=0``; an observation at a dose time is the pre-dose value):

==================  ==========================================  ========  ==========
DVID                days                                        CV (%)    reported to
==================  ==========================================  ========  ==========
treg_pct_cd4        0, 4, 7, 14, 28, 56, 84                     design    0.01
treg_per_uL         0, 4, 7, 14, 28, 56, 84                     design    0.1
tconv_per_uL        0, 4, 7, 14, 28, 56, 84                     10        1
nk56bright_per_uL   0, 4, 7, 14, 28, 56, 84                     15        0.01
cd25_treg_rel       0, 4, 7, 14, 28, 56, 84                     10        0.001
il2_pM              0 (pre-dose), 0 + 2 h, 0 + 6 h, 4 + 4 h     20        0.01
sledai              the design's visits (0, 28, 84)             score     1
==================  ==========================================  ========  ==========

Day 0 is the first dose (day 1 of the induction); day 4 is the fifth and last induction dose,
day 7 the first weekly dose, day 84 the week-12 assessment. "design" is the design's
``treg_assay_cv`` (10% for LUPIL-2). Assay noise is log-normal and independent per sample
(:func:`il2treg.trial.assay_noise`). IL-2 below the LLOQ of 1 pM (:data:`IL2_LLOQ_PM`) is written
as ``DV=1, CENS=1``; the endogenous level (0.12 pM) always is. IL-2 is sampled in both arms
(blinded sampling).

**Covariates**: ``ARM``, ``SITE``, ``HIGH_RESPONSE_SITE``, ``WT`` (kg), ``BSA`` (m², Mosteller
from ``WT`` and a drawn height) and ``SIMULATED``. ``WT`` and ``BSA`` are descriptive: the model
file has no covariate effects, so they do not change the simulated biology.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import numbers
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from il2treg import units
from il2treg.errors import InputError, SolverError, SpecError
from il2treg.model import Model, load_model, sample_population
from il2treg.observables import OBSERVABLE_NAMES
from il2treg.regimen import Regimen, stack
from il2treg.simulate import SolverOptions, simulate
from il2treg.trial import (
    ARMS,
    TrialDesign,
    assay_noise,
    draw_dropout,
    draw_entry,
    draw_sites,
    load_design,
    report_sledai,
)

__all__ = [
    "ARM_LABELS",
    "BIOMARKER_DAYS",
    "IL2_LLOQ_PM",
    "IL2_SAMPLE_DAYS",
    "LUPIL2_VIRTUAL_N",
    "LUPIL2_VIRTUAL_SEED",
    "SIMULATED_NOTE",
    "lupil2_virtual",
    "lupil2_virtual_truth",
    "simulate_cohort",
    "write_cohort",
]

SIMULATED_NOTE = (
    "SIMULATED data, not LUPIL-2 patient data: a virtual LUPIL-2-like cohort drawn from the "
    "il2treg model (models/il2_treg_sledai.toml) and trial design (models/lupil2_trial.toml). "
    "No row describes a real patient; use it to learn and test the package, not as evidence "
    "about IL-2 in lupus."
)

#: Trial arm (:data:`il2treg.trial.ARMS`) -> the ``ARM`` value written in the table.
ARM_LABELS: dict[str, str] = {"il2": "ILT-101", "placebo": "placebo"}

#: Days of the flow-cytometry visits. ASSUMPTION: LUPIL-2's sampling days were not read; these
#: are baseline, the end of the 5-day induction (pre-dose day 5 of treatment), the first weekly
#: dose, then weeks 2, 4, 8 and the week-12 assessment.
BIOMARKER_DAYS: tuple[float, ...] = (0.0, 4.0, 7.0, 14.0, 28.0, 56.0, 84.0)
#: What is measured at each biomarker visit.
BIOMARKERS: tuple[str, ...] = (
    "treg_pct_cd4", "treg_per_uL", "tconv_per_uL", "nk56bright_per_uL", "cd25_treg_rel",
)  # fmt: skip
#: Days of the sparse IL-2 samples: pre-dose baseline, 2 h and 6 h after the first dose, 4 h
#: after the fifth. ASSUMPTION (not read), spanning the absorption phase and the peak; hours are
#: rounded to 1e-6 day so that the table holds exactly the simulated times.
IL2_SAMPLE_DAYS: tuple[float, ...] = (0.0, round(2 / 24, 6), round(6 / 24, 6), round(4 + 4 / 24, 6))
#: Lower limit of quantification of serum IL-2 (pM, about 15 pg/mL). ASSUMPTION: a conventional
#: ELISA (literature.md 3.3 quotes LLOQs of a few pg/mL for high-sensitivity assays).
IL2_LLOQ_PM: float = 1.0
#: Log-normal assay CV (%) of the observations whose CV the design does not give. ASSUMPTION
#: (not read): typical inter-assay CVs of flow-cytometric counts (Tconv 10%, the rarer
#: CD56bright NK 15%), of MFI ratios (CD25 10%) and of cytokine ELISAs (IL-2 20%).
ASSAY_CV_PERCENT: dict[str, float] = {
    "tconv_per_uL": 10.0, "nk56bright_per_uL": 15.0, "cd25_treg_rel": 10.0, "il2_pM": 20.0,
}  # fmt: skip
#: Decimal places each observation is reported to. ASSUMPTION: as laboratory reports round;
#: the steps are far below the assay noise.
DECIMALS: dict[str, int] = {
    "il2_pM": 2, "treg_pct_cd4": 2, "treg_per_uL": 1, "tconv_per_uL": 0,
    "nk56bright_per_uL": 2, "cd25_treg_rel": 3, "sledai": 0,
}  # fmt: skip
#: Body weight (kg): log-normal, median and CV, clipped. ASSUMPTION (not read): an adult,
#: mostly female SLE trial population.
WT_MEDIAN_KG, WT_CV, WT_RANGE_KG = 68.0, 0.20, (40.0, 140.0)
#: Height (cm) for the BSA: normal, mean and SD, clipped. ASSUMPTION (not read), as for WT.
HEIGHT_MEAN_CM, HEIGHT_SD_CM, HEIGHT_RANGE_CM = 165.0, 7.0, (145.0, 195.0)
#: Significant digits of the per-patient parameters; the simulation uses the rounded values, so
#: the truth file holds exactly what generated the data.
PARAMETER_DIGITS = 10

#: Size and seed of the shipped cohort (:func:`lupil2_virtual`).
LUPIL2_VIRTUAL_N = 100
LUPIL2_VIRTUAL_SEED = 20220816  # any fixed number; Humrich et al. appeared online in August 2022

_COLUMNS = ("ID", "TIME", "EVID", "AMT", "DVID", "DV", "CENS", "MDV",
            "ARM", "SITE", "HIGH_RESPONSE_SITE", "WT", "BSA", "SIMULATED")  # fmt: skip
_FILE = "lupil2_virtual"


def simulate_cohort(
    n: int,
    seed: int,
    overrides: Mapping[str, float] | None = None,
    design: TrialDesign | str | None = None,
    *,
    model: Model | None = None,
    options: SolverOptions | None = None,
    return_truth: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, dict]:
    """Simulate a two-arm, multi-site cohort of ``n`` trial patients as a long data table.

    How patients, sites, doses, observations and noise are drawn is described in the module
    docstring; the same arguments give the same table, byte for byte once written with
    :func:`write_cohort`. Independent random streams serve the randomisation, patients, entry,
    sites, covariates, dropout and noise, so an override changes the biology of the same
    patients, not who they are.

    Arguments:
        n: number of patients (>= 2), split between the arms in the design's ratio.
        seed: integer seed (>= 0).
        overrides: typical values replacing the model's, in the units of the model file, e.g.
            ``{"emax_treg": 5.0}``; each must lie within the parameter's bounds.
        design: a :class:`~il2treg.trial.TrialDesign` or a design name; default
            ``load_design("lupil2")``.
        model: the model the patients are drawn from; default the design's model.
        options: ODE solver options (default :class:`il2treg.SolverOptions`).
        return_truth: also return the parameters that generated the table.

    Returns:
        The table (columns ``ID, TIME, EVID, AMT, DVID, DV, CENS, MDV, ARM, SITE,
        HIGH_RESPONSE_SITE, WT, BSA, SIMULATED``), rows sorted by ID, TIME, EVID (observations
        before a dose at the same time) and DVID; valid for :func:`il2treg.data.read_dataset`.
        With ``return_truth``, ``(table, truth)``: ``truth`` is a JSON-ready dict with the seed,
        the typical values, the site effects, the observation settings and every patient's
        parameters in the units of the model file.

    Raises:
        InputError: ``n`` below 2, a bad seed, design or override value.
        SpecError: an override naming an unknown parameter or outside its bounds.
        SolverError: a patient's ODE solve failed.
    """
    n = _whole(n, "n", 2, "at least one patient per arm")
    seed = _whole(seed, "seed", 0, "a non-negative integer")
    design = _design(design)
    doses = _dose_schedules(design)  # before any computing: it refuses a regimen with records
    model = _model(model, design, overrides)
    options = SolverOptions() if options is None else options
    rng_arm, rng_pop, rng_entry, rng_site, rng_cov, rng_drop, rng_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(7)
    )

    arm = _randomise(design, n, rng_arm)
    params = sample_population(model, n, seed=int(rng_pop.integers(2**31 - 1)))
    l0, e0 = draw_entry(model, design, n, rng_entry)
    site, effect = (x[0] for x in draw_sites(design, (1, n), rng_site))
    declared = _patient_parameters(model, params, l0, effect[site])
    params = params.replace(**{
        name: units.to_internal(values, model.spec[name].unit)[0] for name, values in declared.items()
    })  # fmt: skip
    wt, bsa = _body_size(n, rng_cov)
    dropped, first_missed = draw_dropout(design, (n,), rng_drop)
    dropout_day = np.where(dropped, design.visit_days[first_missed], np.inf)

    times = np.unique(np.concatenate([BIOMARKER_DAYS, IL2_SAMPLE_DAYS, design.visit_days]))
    sim = simulate(model, stack([doses[ARMS[k]] for k in arm]), times, params, options=options)
    failed = np.flatnonzero(np.asarray(sim.status) != 0)
    if failed.size:
        raise SolverError(
            f"the ODE solve failed for {failed.size} simulated patient(s) (first: ID {failed[0] + 1}, "
            f"{sim.status_message(int(np.asarray(sim.status)[failed[0]]))}). Fix: keep overrides "
            "well inside the parameter bounds, or raise SolverOptions.max_steps."
        )

    def at(name: str, days) -> np.ndarray:
        return np.asarray(sim[name])[:, np.searchsorted(times, days)]

    sledai = report_sledai(design, at("sledai", design.visit_days), e0, rng_noise)
    observed = {name: (BIOMARKER_DAYS, assay_noise(at(name, BIOMARKER_DAYS), _cv(design, name), rng_noise))
                for name in BIOMARKERS}  # fmt: skip
    il2 = assay_noise(at("il2_pM", IL2_SAMPLE_DAYS), _cv(design, "il2_pM"), rng_noise)
    observed["il2_pM"] = (IL2_SAMPLE_DAYS, np.maximum(il2, IL2_LLOQ_PM))
    observed["sledai"] = (tuple(design.visit_days), sledai)

    covariates = pd.DataFrame({
        "ID": np.arange(1, n + 1),
        "ARM": [ARM_LABELS[ARMS[k]] for k in arm],
        "SITE": site + 1,
        "HIGH_RESPONSE_SITE": (site < design.n_high_response_sites).astype(np.int64),
        "WT": wt,
        "BSA": bsa,
        "SIMULATED": 1,
    })  # fmt: skip
    table = _table(arm, doses, observed, il2 < IL2_LLOQ_PM, dropout_day, covariates)
    table.attrs["description"] = f"{SIMULATED_NOTE} Made by il2treg.datasets.simulate_cohort(n={n}, seed={seed})."
    if not return_truth:
        return table
    truth = _truth(n, seed, model, design, overrides, effect, covariates, dropout_day, declared)
    return table, truth


def write_cohort(table: pd.DataFrame, path: str | Path, truth: Mapping | None = None) -> tuple[Path, ...]:
    """Write a cohort table as CSV (and its truth as JSON beside it) in a stable byte format.

    Numbers are written in their shortest round-trip form (integers without a decimal point),
    missing values as empty cells, lines end in ``\\n``; the JSON file
    ``<stem>_truth.json`` is indented, keys in insertion order. Reading the CSV back with
    :func:`pandas.read_csv` gives the same values.

    Returns:
        The paths written: ``(csv,)`` or ``(csv, json)``.
    """
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(table.columns)
        for row in zip(*(table[c].tolist() for c in table.columns)):
            writer.writerow([_cell(v) for v in row])
    if truth is None:
        return (path,)
    meta = path.with_name(f"{path.stem}_truth.json")
    meta.write_text(json.dumps(truth, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path, meta


def lupil2_virtual() -> pd.DataFrame:
    """The shipped simulated LUPIL-2-like cohort: 100 patients, 50 per arm, 11 sites.

    Made by ``scripts/make_lupil2_virtual.py`` with :func:`simulate_cohort`
    (``n=LUPIL2_VIRTUAL_N``, ``seed=LUPIL2_VIRTUAL_SEED``, the LUPIL-2 design); the parameters
    that generated it are in :func:`lupil2_virtual_truth`. **Simulated, not LUPIL-2 patient
    data.**

    Returns:
        The long table in the format of :mod:`il2treg.data` (see :func:`simulate_cohort`).
    """
    with _data_path(f"{_FILE}.csv").open("r", encoding="utf-8") as handle:
        table = pd.read_csv(handle)
    table.attrs["description"] = (
        f"{SIMULATED_NOTE} Shipped as il2treg/datasets/data/{_FILE}.csv (seed {LUPIL2_VIRTUAL_SEED})."
    )
    return table


def lupil2_virtual_truth() -> dict:
    """The parameters that generated :func:`lupil2_virtual`, as stored beside it (JSON).

    Keys: ``description`` (the simulated-data statement), ``simulated``, ``il2treg_version``,
    ``seed``, ``n``, ``model``, ``design``, ``overrides``, ``typical`` (every parameter's value,
    unit and CV in the units of the model file), ``sites`` (each site's standard-of-care shift),
    ``observation`` (visit days, CVs, LLOQ, decimals) and ``patients`` (per patient: ``ID``,
    ``ARM``, ``SITE``, ``dropout_day``, and ``parameters``, the values of every parameter that
    differs between patients; ``pmax`` includes the site shift).
    """
    with _data_path(f"{_FILE}_truth.json").open("r", encoding="utf-8") as handle:
        return json.load(handle)


# ------------------------------------------------------------------------------------- arguments


def _whole(value, name: str, minimum: int, meaning: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be a whole number >= {minimum} ({meaning}), got {value!r}. "
                         f"Fix: pass an integer >= {minimum}.")
    return int(value)


def _design(design) -> TrialDesign:
    if design is None:
        return load_design("lupil2")
    if isinstance(design, (str, Path)):
        return load_design(design)
    if not isinstance(design, TrialDesign):
        raise InputError(f"design must be a TrialDesign or a design name, got {type(design).__name__}. "
                         "Fix: pass il2treg.trial.load_design('lupil2') or leave it out.")
    return design


def _model(model: Model | None, design: TrialDesign, overrides) -> Model:
    """The model to draw from, with the overrides as its typical values (checked, bounded)."""
    model = load_model(design.model) if model is None else model
    if not isinstance(model, Model):
        raise InputError(f"model must be an il2treg.Model, got {type(model).__name__}. "
                         "Fix: pass il2treg.load_model(...) or leave it out.")
    if overrides is None:
        return model
    if not isinstance(overrides, Mapping):
        raise InputError(f"overrides must be a mapping parameter -> value, got {type(overrides).__name__}. "
                         "Fix: pass e.g. overrides={'emax_treg': 5.0}.")
    for name, value in overrides.items():
        if name not in model.parameter_names:
            close = difflib.get_close_matches(str(name), model.parameter_names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SpecError(f"unknown parameter {name!r} in overrides{hint}: model {model.name!r} has no such "
                            f"parameter. Fix: use one of {', '.join(model.parameter_names)}.")
        if (isinstance(value, bool) or not isinstance(value, numbers.Real)
                or not math.isfinite(value)):  # fmt: skip
            raise InputError(f"override {name!r} must be a finite number in {model.spec[name].unit!r}, "
                             f"got {value!r}. Fix: pass a number in the unit of the model file.")
    return model.with_values(**{name: float(value) for name, value in overrides.items()})


def _cv(design: TrialDesign, name: str) -> float:
    """Assay CV (%) of an observation: the design's Treg CV for Treg readouts, else the constant."""
    return design.treg_assay_cv if name.startswith("treg_") else ASSAY_CV_PERCENT[name]


# ------------------------------------------------------------------------------------- drawing


def _randomise(design: TrialDesign, n: int, rng: np.random.Generator) -> np.ndarray:
    """Arm index (into :data:`ARMS`) of each patient: the design's ratio, randomly permuted."""
    n_first = round(n * design.n_per_arm[ARMS[0]] / design.n_patients)
    n_first = min(max(n_first, 1), n - 1)
    return rng.permutation(np.repeat(np.arange(len(ARMS)), [n_first, n - n_first]))


def _patient_parameters(model: Model, params, l0: np.ndarray, site_shift: np.ndarray) -> dict[str, np.ndarray]:
    """Per-patient values of every parameter that differs between patients, in the units of the
    model file, rounded to :data:`PARAMETER_DIGITS` significant digits."""
    values = {name: np.asarray(params[name]) for name in model.parameter_names if model.spec[name].cv_percent > 0}
    values["sledai0"] = l0
    values["pmax"] = np.asarray(params["pmax"]) + site_shift
    declared = {}
    for name in model.parameter_names:
        if name in values:
            spec = model.spec[name]
            converted = units.convert(values[name], spec.internal_unit, spec.unit)
            declared[name] = np.array([_significant(v) for v in np.asarray(converted, dtype=np.float64)])
    return declared


def _body_size(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Weight (kg, 0.1) and Mosteller BSA (m², 0.01) from weight and height (cm, 1)."""
    log_sd = math.sqrt(math.log1p(WT_CV**2))
    wt = np.clip(WT_MEDIAN_KG * np.exp(log_sd * rng.standard_normal(n)), *WT_RANGE_KG)
    height = np.clip(HEIGHT_MEAN_CM + HEIGHT_SD_CM * rng.standard_normal(n), *HEIGHT_RANGE_CM)
    wt, height = _decimals(wt, 1), _decimals(height, 0)
    return wt, _decimals(np.sqrt(height * wt / 3600.0), 2)


def _dose_schedules(design: TrialDesign) -> dict[str, Regimen]:
    """Each arm's injections: its regimen, or for an arm without doses (placebo) the active arm's
    times with amount 0 (blinded placebo injections)."""
    active = design.regimens[ARMS[0]]
    out = {}
    for arm in ARMS:
        regimen = design.regimens[arm]
        if regimen.records is not None:
            raise InputError(f"the {arm} arm's regimen carries NONMEM records (CMT, RATE, SS or resets), which the cohort's table of plain dose rows "
                             "would not describe. Fix: give the arm a regimen of plain doses (Regimen(times, amounts)).")  # fmt: skip
        if regimen.n_doses == 0:
            regimen = Regimen(active.times, np.zeros(active.n_doses), name=regimen.name)
        out[arm] = regimen
    return out


# ------------------------------------------------------------------------------------- output


def _table(arm: np.ndarray, doses: dict[str, Regimen], observed: dict[str, tuple], il2_blq: np.ndarray,
           dropout_day: np.ndarray, covariates: pd.DataFrame) -> pd.DataFrame:
    """The long table: dose and observation rows, cut at dropout, sorted, with covariates."""
    ids = np.arange(1, arm.size + 1)
    parts = []
    for k, name in enumerate(ARMS):
        who = ids[arm == k]
        times, amounts = np.asarray(doses[name].times), np.asarray(doses[name].amounts)
        parts.append(pd.DataFrame({
            "ID": np.repeat(who, times.size), "TIME": np.tile(times, who.size), "EVID": 1,
            "AMT": np.tile(amounts, who.size), "DVID": np.nan, "DV": np.nan, "CENS": 0, "MDV": 1,
        }))  # fmt: skip
    for name, (days, values) in observed.items():
        censored = il2_blq if name == "il2_pM" else np.zeros(values.shape, dtype=bool)
        parts.append(pd.DataFrame({
            "ID": np.repeat(ids, len(days)), "TIME": np.tile(np.asarray(days, dtype=np.float64), ids.size),
            "EVID": 0, "AMT": np.nan, "DVID": name, "DV": _decimals(values.reshape(-1), DECIMALS[name]),
            "CENS": censored.reshape(-1).astype(np.int64), "MDV": 0,
        }))  # fmt: skip
    rows = pd.concat(parts, ignore_index=True)
    rows = rows[rows["TIME"].to_numpy() < dropout_day[rows["ID"].to_numpy() - 1]]
    order = rows["DVID"].map({name: k for k, name in enumerate(OBSERVABLE_NAMES)}).fillna(-1)
    rows = rows.assign(_order=order).sort_values(["ID", "TIME", "EVID", "_order"], kind="stable")
    table = rows.drop(columns="_order").merge(covariates, on="ID", how="left", validate="many_to_one")
    return table.reset_index(drop=True)[list(_COLUMNS)]


def _truth(n: int, seed: int, model: Model, design: TrialDesign, overrides, effect: np.ndarray,
           covariates: pd.DataFrame, dropout_day: np.ndarray, declared: dict[str, np.ndarray]) -> dict:
    """The JSON-ready record of what generated a cohort."""
    from il2treg.version import __version__

    n_high = design.n_high_response_sites
    patients = []
    for i, row in enumerate(covariates.itertuples(index=False)):
        patients.append({
            "ID": int(row.ID), "ARM": row.ARM, "SITE": int(row.SITE),
            "dropout_day": None if math.isinf(dropout_day[i]) else float(dropout_day[i]),
            "parameters": {name: float(values[i]) for name, values in declared.items()},
        })  # fmt: skip
    return {
        "description": SIMULATED_NOTE,
        "simulated": True,
        "il2treg_version": __version__,
        "generator": "il2treg.datasets.simulate_cohort (scripts/make_lupil2_virtual.py for the shipped cohort)",
        "seed": seed,
        "n": n,
        "model": model.name,
        "design": design.name,
        "overrides": {str(k): float(v) for k, v in (overrides or {}).items()},
        "typical": {
            p.name: {"value": _significant(p.declared_value), "unit": p.unit, "cv_percent": float(p.cv_percent)}
            for p in model.spec.params
        },
        "sites": [
            {"SITE": s + 1, "high_response": s < n_high, "pmax_shift": _significant(b), "unit": "points"}
            for s, b in enumerate(effect.tolist())
        ],
        "observation": {
            "biomarker_days": list(BIOMARKER_DAYS),
            "biomarkers": list(BIOMARKERS),
            "il2_sample_days": list(IL2_SAMPLE_DAYS),
            "sledai_visit_days": [float(d) for d in design.visit_days],
            "assay_cv_percent": {name: _cv(design, name) for name in (*BIOMARKERS, "il2_pM")},
            "il2_lloq_pM": IL2_LLOQ_PM,
            "decimals": dict(DECIMALS),
            "sledai_noise_sd": design.sledai_noise_sd,
            "score_step": design.score_step,
            "entry_sledai_min": design.entry_sledai_min,
        },
        "patients": patients,
    }


def _significant(value: float) -> float:
    return float(f"{float(value):.{PARAMETER_DIGITS}g}")


def _decimals(values: np.ndarray, places: int) -> np.ndarray:
    """Values rounded to ``places`` decimals via their decimal text (exact and platform-stable)."""
    return np.array([float(f"{v:.{places}f}") for v in np.asarray(values, dtype=np.float64)])


def _cell(value) -> str:
    """One CSV cell: empty if missing, integers without a decimal point, floats in shortest form."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)


def _data_path(name: str):
    return resources.files("il2treg.datasets").joinpath("data", name)
