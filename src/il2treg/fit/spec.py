r"""Fit specifications: ``fits/<name>/fit.toml`` says what to fit, to which data, and how.

A fit file has a few top-level keys and four kinds of tables::

    name = "lupil2_virtual"              # optional, default: the name of the file's folder
    description = "Treg dynamics and the SLEDAI link on the virtual LUPIL-2 cohort"
    model = "il2_treg_sledai"            # a model in models/, or a .toml path relative to this file
    data = "il2treg:lupil2_virtual"      # a packaged dataset, or a CSV path relative to this file
    ignore_dvids = ["il2_pM"]            # optional: observation types present but not fitted
    labels = { omega_POP_CL = "IIV_CL" } # optional: labels of estimates in the results (NONMEM's, say)
    dvids = { IL2 = "il2_pM" }           # optional: the data's own DVID names -> the model's observables
    time_unit = "day"                    # optional: the unit of the data's TIME, "day" or "h"
    drop = ["FA1", "FA2"]                # optional: data columns left out (NONMEM's $INPUT FA1=DROP)
    occasion = "OCC"                     # optional: the data column numbering occasions (default OCC)

    [parameters.emax_treg]               # one table per parameter that is not simply the model's
    initial = 4.0                        # start (units of the model file); default: the model's value
    cv_percent = 40                      # a log-normal random effect, initial CV%; omit for none
    iov_cv_percent = 15                  # optional: inter-occasion variability, initial CV%
    [parameters.kout_treg]               # an empty table: estimated from the model's value
    [parameters.treg0]
    estimate = false                     # typical value fixed (at `initial`), random effect only
    cv_percent = 40

    [[omega_block]]                      # optional: correlated random effects, as $OMEGA BLOCK(n)
    parameters = ["emax_treg", "treg0"]  # two or more parameters with cv_percent
    correlation = 0.1                    # initial correlation of every pair in the block (default 0.1)

    [[covariates]]                       # optional, one per effect of a covariate column
    parameter = "tconv0"
    covariate = "WT"                     # a numeric column of the data (may change over time)
    model = "power"                      # power, exp or linear (il2treg.fit.problem)
    reference = 70                       # the covariate value of the typical patient
    initial = 0.0                        # start of the coefficient (default 0: no effect)

    [error.treg_per_uL]                  # one table per fitted observation type
    kind = "proportional"                # additive, proportional, combined, log or ordinal
    sigma_prop = 0.15                    # initial SDs; default: il2treg.likelihood's default
    estimate = ["sigma_prop"]            # which SDs are estimated; default: all the kind uses

    [error.sledai]
    kind = "ordinal"
    sigma_add = 1.5
    score_step = 1                       # ordinal only: grid of the scores (2 = even scores)

    [optimiser]                          # optional; defaults shown
    max_iter = 200
    ftol = 1e-4
    gtol = 1e-2
    covariance = true
    covariance_matrix = "hessian"        # 2 R^-1; "sandwich": R^-1 S R^-1, NONMEM's default $COV
    curvature = "observed"               # the Laplace Hessian's: "expected" is NONMEM's FOCE-I
    interaction = true                   # false: FOCE without interaction (residual SDs at eta = 0)

    priors = "none"                      # optional: "model" adds the model file's priors on the
                                         # estimated fixed effects to the OFV (penalised fit)

    [nuts]                               # optional: `il2treg fit --method nuts` settings
    chains = 4                           # (il2treg.fit.bayes.NutsSettings; defaults shown)
    warmup = 500
    samples = 500
    seed = 0
    target_accept = 0.8
    max_tree_depth = 8
    init_spread = 1.0
    fixed_sd = 2.0                       # default priors where the model declares none
    beta_sd = 10.0                       # (il2treg.fit.priors.PriorDefaults)
    omega_sd = 1.0
    sigma_sd = 1.0
    corr_sd = 1.0                        # artanh of an omega block's partial correlations

    [saem]                               # optional: `il2treg fit --method saem` settings
    burn_in = 5                          # (il2treg.fit.saem.SaemSettings; defaults shown)
    explore = 250
    smooth = 100
    prior_draws = 2
    walk_steps = 2
    annealing = 0.95
    seed = 0

    [summaries]                          # optional: published summaries beside the data (il2treg.fit.joint)
    file = "summaries.toml"              # their file (il2treg.datasets.read_summaries' format), relative
                                         # to this file, or "il2treg:study_summaries" (the shipped studies)
    studies = ["DILT1D", "DILfrequency"] # optional: only these studies' summaries (default: all)
    n_draws = 1000                       # virtual patients per arm (default 1000: well above the arms' n)
    seed = 0                             # of their draws
    bsa_m2 = 1.8                         # optional: for doses per m² (default: the file's)
    sigma_prop = { treg_per_uL = 0.1 }   # optional: residual SDs for "sd" and "proportion_above" summaries

    [sri4]                               # optional: the SLEDAI link reported per patient
    day = 84                             # assessment day
    fall = 4                             # SLEDAI points
    bilag_pga_keep = 0.956               # probability a SLEDAI responder is not vetoed

A parameter is estimated (a fixed effect) when it has a table and ``estimate`` is not false.
Every observation type the data contain must have an ``[error.<dvid>]`` table or be listed in
``ignore_dvids``; kinds use ``sigma_add`` (additive, log, ordinal), ``sigma_prop``
(proportional) or both (combined).

:func:`read_fit_spec` checks everything (the model, the data file and its observation types,
parameter names, bounds, transforms, error models, settings and every key's spelling) before
anything is computed, and raises :class:`il2treg.errors.SpecError` with one line naming the
file, what is wrong and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

import equinox as eqx
import numpy as np

from il2treg.data import TIME_UNITS, Dataset, read_dataset
from il2treg.datasets.summaries import StudySummaries, read_summaries, study_summaries
from il2treg.errors import DataError, InputError, SpecError
from il2treg.events import DosingInput
from il2treg.fit.aggregate import check_summaries
from il2treg.fit.bayes import NutsSettings
from il2treg.fit.estimate import COVARIANCE_MATRICES
from il2treg.fit.omega import block_pairs
from il2treg.fit.priors import PriorDefaults
from il2treg.fit.problem import COVARIATE_MODELS, CURVATURES, CovariateEffect, FitProblem, make_problem
from il2treg.fit.saem import SaemSettings
from il2treg.likelihood import KINDS, ResidualModel
from il2treg.model import Model, load_model
from il2treg.observables import OBSERVABLE_NAMES

#: Prefix of a packaged dataset in ``data = "il2treg:<name>"``.
PACKAGED_PREFIX = "il2treg:"
#: Packaged datasets, each a function of :mod:`il2treg.datasets` returning a Dataset or a table.
PACKAGED_DATASETS: tuple[str, ...] = ("lupil2_virtual",)

#: The SDs each error-model kind uses.
SIGMAS_OF_KIND: dict[str, tuple[str, ...]] = {
    "additive": ("sigma_add",),
    "proportional": ("sigma_prop",),
    "combined": ("sigma_add", "sigma_prop"),
    "log": ("sigma_add",),
    "ordinal": ("sigma_add",),
}

#: Parameter groups whose parameters act on one observation type only (nothing feeds back).
_ACTS_ONLY_ON = {"disease": "sledai"}

_TOP_KEYS = ("name", "description", "model", "data", "dvids", "time_unit", "drop", "occasion", "labels", "ignore_dvids", "priors", "parameters", "omega_block", "covariates", "error",
             "optimiser", "nuts", "saem", "sri4", "summaries")  # fmt: skip
PRIOR_CHOICES = ("none", "model")
_NUTS_DEFAULTS = {"chains": 4, "warmup": 500, "samples": 500, "seed": 0, "target_accept": 0.8, "max_tree_depth": 8, "init_spread": 1.0,
                  "fixed_sd": 2.0, "beta_sd": 10.0, "omega_sd": 1.0, "sigma_sd": 1.0, "corr_sd": 1.0}  # fmt: skip
_SAEM_DEFAULTS = {"burn_in": 5, "explore": 250, "smooth": 100, "prior_draws": 2, "walk_steps": 2, "annealing": 0.95, "seed": 0}
_PARAM_KEYS = ("initial", "estimate", "cv_percent", "iov_cv_percent")
_COVARIATE_KEYS = ("parameter", "covariate", "model", "reference", "initial")
_BLOCK_KEYS = ("parameters", "correlation")
_ERROR_KEYS = ("kind", "sigma_add", "sigma_prop", "estimate", "score_step")
_CHOICES = {"curvature": CURVATURES, "covariance_matrix": COVARIANCE_MATRICES}
_OPTIMISER_DEFAULTS = {"max_iter": 200, "ftol": 1e-4, "gtol": 1e-2, "covariance": True, "covariance_matrix": "hessian", "curvature": "observed", "interaction": True}
_SRI4_DEFAULTS = {"day": 84.0, "fall": 4.0, "bilag_pga_keep": 0.956}
_SUMMARY_KEYS = ("file", "studies", "n_draws", "seed", "bsa_m2", "sigma_prop")
#: The shipped summaries, as a fit file's ``[summaries] file`` names them.
SHIPPED_SUMMARIES = "il2treg:study_summaries"


@dataclasses.dataclass(frozen=True)
class ParameterEntry:
    """One ``[parameters.<name>]`` table.

    Attributes:
        name: model parameter.
        estimate: whether its typical value is a fixed effect.
        initial: start (or fixed value) in the model file's unit; ``None`` = the model's value.
        cv_percent: initial CV% of its log-normal random effect; ``None`` = no random effect.
        iov_cv_percent: initial CV% of its inter-occasion variability (a log-normal random
            effect per occasion, :mod:`il2treg.fit.problem`); ``None`` = none.
    """

    name: str
    estimate: bool
    initial: float | None
    cv_percent: float | None
    iov_cv_percent: float | None = None


@dataclasses.dataclass(frozen=True)
class ErrorEntry:
    """One ``[error.<dvid>]`` table, with defaults filled in.

    Attributes:
        dvid: observation type.
        kind: error model (:data:`il2treg.likelihood.KINDS`).
        sigma_add: initial additive SD (observation unit; log units for ``log``).
        sigma_prop: initial proportional SD (fraction).
        estimate: the SDs estimated, ``("sigma_add", "sigma_prop")`` or a part of it.
    """

    dvid: str
    kind: str
    sigma_add: float
    sigma_prop: float
    estimate: tuple[str, ...]
    score_step: float = 1.0


@dataclasses.dataclass(frozen=True)
class CovariateEntry:
    """One ``[[covariates]]`` table: an effect (its coefficient estimated) and its start."""

    effect: CovariateEffect
    initial: float = 0.0


@dataclasses.dataclass(frozen=True)
class OmegaBlock:
    """One ``[[omega_block]]`` table: random effects whose correlations are estimated.

    Attributes:
        parameters: the parameters (each with a random effect) in the block.
        correlation: the initial correlation of every pair in the block.
    """

    parameters: tuple[str, ...]
    correlation: float = 0.1


@dataclasses.dataclass(frozen=True)
class OptimiserSettings:
    """Outer optimiser settings (see :func:`il2treg.fit.estimate.fit_population`)."""

    max_iter: int = 200
    ftol: float = 1e-4
    gtol: float = 1e-2
    covariance: bool = True
    covariance_matrix: str = "hessian"
    curvature: str = "observed"
    interaction: bool = True


@dataclasses.dataclass(frozen=True)
class Sri4Settings:
    """How the SLEDAI link is reported: SRI-4 at ``day`` needs a fall of ``fall`` points and no veto."""

    day: float = 84.0
    fall: float = 4.0
    bilag_pga_keep: float = 0.956


@dataclasses.dataclass(frozen=True, eq=False)
class SummarySettings:
    """A fit file's ``[summaries]``: the published summaries fitted beside the data.

    Attributes:
        source: ``file`` as written.
        data: the summaries with their arms' regimens (only the ``studies`` asked for).
        n_draws: virtual patients per arm; ``seed``: of their draws.
        sigma_prop: residual SDs per observable for ``sd`` and ``proportion_above`` summaries.
    """

    source: str
    data: StudySummaries
    n_draws: int = 1000
    seed: int = 0
    sigma_prop: tuple[tuple[str, float], ...] = ()


@dataclasses.dataclass(frozen=True, eq=False)
class FitSpec:
    """A validated fit specification, with its model and data loaded.

    Attributes:
        path: the fit file.
        text: its text, as read (saved with the results).
        name: the fit's name.
        description: free text.
        model_source: ``model`` as written.
        data_source: ``data`` as written.
        model: the model with every ``initial`` value set (so fixed parameters sit at theirs).
        dataset: the data; observations of ``ignore_dvids`` have ``obs_mask`` False.
        parameters: the parameter tables, in file order.
        omega_blocks: the correlated blocks of random effects (``[[omega_block]]``).
        covariates: the covariate effects, in file order.
        errors: the error-model tables, in the order of the model's observables.
        ignore_dvids: observation types not fitted.
        optimiser: outer optimiser settings.
        sri4: the SLEDAI-link settings.
        priors: ``"none"`` or ``"model"`` (the model's priors as a penalty on the OFV).
        nuts: NUTS settings (:class:`il2treg.fit.bayes.NutsSettings`).
        saem: SAEM settings (:class:`il2treg.fit.saem.SaemSettings`).
        time_unit: the unit of the data file's TIME (``"day"`` or ``"h"``); the dataset holds days.
        drop: the data file's columns left out.
        labels: ``((estimate, label), ...)``: labels shown for estimates in the results (the
            ``label`` column of ``parameters.csv`` and the report), e.g. NONMEM's IIV_CL for
            ``omega_POP_CL``.
        summaries: published summaries fitted beside the data (``[summaries]``), or None.
    """

    path: Path
    text: str
    name: str
    description: str
    model_source: str
    data_source: str
    model: Model
    dataset: Dataset
    parameters: tuple[ParameterEntry, ...]
    covariates: tuple[CovariateEntry, ...]
    errors: tuple[ErrorEntry, ...]
    ignore_dvids: tuple[str, ...]
    optimiser: OptimiserSettings
    sri4: Sri4Settings
    priors: str = "none"
    nuts: NutsSettings = NutsSettings()
    saem: SaemSettings = SaemSettings()
    time_unit: str = "day"
    drop: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    omega_blocks: tuple[OmegaBlock, ...] = ()
    occasion: str = "OCC"
    summaries: SummarySettings | None = None

    @property
    def iov(self) -> tuple[str, ...]:
        """Parameters with inter-occasion variability."""
        return tuple(p.name for p in self.parameters if p.iov_cv_percent is not None)

    @property
    def fixed(self) -> tuple[str, ...]:
        """Parameters whose typical value is estimated."""
        return tuple(p.name for p in self.parameters if p.estimate)

    @property
    def random(self) -> tuple[str, ...]:
        """Parameters with a random effect."""
        return tuple(p.name for p in self.parameters if p.cv_percent is not None)

    @property
    def effects(self) -> tuple[CovariateEffect, ...]:
        """Covariate effects (the engine's form)."""
        return tuple(c.effect for c in self.covariates)

    @property
    def sigmas(self) -> tuple[tuple[str, str], ...]:
        """Estimated residual SDs as ``((dvid, "add" | "prop"), ...)`` (the engine's form)."""
        return tuple((e.dvid, s.removeprefix("sigma_")) for e in self.errors for s in e.estimate)

    def problem(self, options=None) -> FitProblem:
        """What this file estimates, as the engine's :class:`~il2treg.fit.problem.FitProblem`."""
        return make_problem(
            self.model, self.dataset, fixed=self.fixed, random=self.random, sigmas=self.sigmas,
            residual_kinds={e.dvid: e.kind for e in self.errors}, covariates=self.effects, options=options,
            curvature=self.optimiser.curvature, blocks=tuple(b.parameters for b in self.omega_blocks), interaction=self.optimiser.interaction,
            iov=self.iov, occasion=self.occasion if self.iov else None,
        )  # fmt: skip

    def residual_model(self) -> ResidualModel:
        """Error models with the initial SDs (defaults for observation types not fitted)."""
        return ResidualModel.build(
            kinds={e.dvid: e.kind for e in self.errors},
            sigmas={e.dvid: (e.sigma_add, e.sigma_prop) for e in self.errors},
            score_step=next((e.score_step for e in self.errors if e.kind == "ordinal"), 1.0),
            names=self.model.observable_names,
        )


def read_fit_spec(path: str | Path) -> FitSpec:
    """Read and validate a fit file (format in the module docstring).

    Raises:
        SpecError: the first problem found, as one line with the fix; nothing is computed.
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"fit file {str(path)!r} does not exist. Fix: check the path (a fits/<name>/fit.toml).")
    text = path.read_text(encoding="utf-8")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML ({err}). Fix: correct the syntax.") from err
    return parse_fit_spec(doc, path=path, text=text)


def parse_fit_spec(doc: dict, *, path: Path, text: str = "") -> FitSpec:
    """Validate a parsed fit file; ``path`` locates relative model and data paths."""
    where = str(path)
    _known_keys(doc, _TOP_KEYS, where, "top-level key")
    for key in ("model", "data"):
        if key not in doc:
            raise SpecError(f"{where}: no `{key}`. Fix: add `{key} = \"...\"` at the top of the file.")
        if not isinstance(doc[key], str) or not doc[key].strip():
            raise SpecError(f"{where}: `{key}` must be a non-empty string, got {doc[key]!r}.")
    name = _string(doc.get("name", path.resolve().parent.name), where, "name")
    description = _string(doc.get("description", ""), where, "description")
    base = _model(doc["model"], path)
    names = base.observable_names
    aliases = doc.get("dvids", {})
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise SpecError(f'{where}: `dvids` must be a table of the data\'s DVID names and the model\'s observables, e.g. dvids = {{ CP = "{names[0]}" }}, got {aliases!r}.')
    for alias, target in aliases.items():
        _known_dvid(target, where, f"dvids.{alias}", names)
    time_unit = doc.get("time_unit", "day")
    if not isinstance(time_unit, str) or time_unit not in TIME_UNITS:
        raise SpecError(f"{where}: time_unit must be one of {', '.join(map(repr, TIME_UNITS))} (the unit of the data's TIME), got {time_unit!r}.")
    drop = doc.get("drop", [])
    if not isinstance(drop, list) or not all(isinstance(c, str) for c in drop):
        raise SpecError(f'{where}: `drop` must be a list of the data\'s column names, e.g. drop = ["FA1"], got {drop!r}.')
    if (time_unit != "day" or drop) and doc["data"].startswith(PACKAGED_PREFIX):
        raise SpecError(f"{where}: time_unit and drop apply to a data file; the packaged dataset {doc['data']!r} is in days with its own columns. Fix: remove them.")
    dataset = _data(doc["data"], path, names, aliases, time_unit, tuple(drop), base.dosing_inputs)

    ignore = doc.get("ignore_dvids", [])
    if not isinstance(ignore, list) or not all(isinstance(d, str) for d in ignore):
        raise SpecError(f"{where}: `ignore_dvids` must be a list of observation types, got {ignore!r}.")
    for d in ignore:
        _known_dvid(d, where, "ignore_dvids", names)
    parameters = _parameters(doc.get("parameters", {}), base, where)
    omega_blocks = _omega_blocks(doc.get("omega_block", []), parameters, where)
    covariates = _covariates(doc.get("covariates", []), base, dataset, where)
    errors = _errors(doc.get("error", {}), where, names)
    optimiser = OptimiserSettings(**_settings(doc.get("optimiser", {}), _OPTIMISER_DEFAULTS, where, "optimiser"))
    sri4 = Sri4Settings(**_settings(doc.get("sri4", {}), _SRI4_DEFAULTS, where, "sri4"))
    priors = doc.get("priors", "none")
    if priors not in PRIOR_CHOICES:
        raise SpecError(f"{where}: priors must be one of {', '.join(repr(c) for c in PRIOR_CHOICES)}, got {priors!r}.")
    nuts_table = _settings(doc.get("nuts", {}), _NUTS_DEFAULTS, where, "nuts")
    prior_keys = ("fixed_sd", "beta_sd", "omega_sd", "sigma_sd", "corr_sd")
    try:
        nuts = NutsSettings(**{k: v for k, v in nuts_table.items() if k not in prior_keys},
                            priors=PriorDefaults(**{k: float(nuts_table[k]) for k in prior_keys}))  # fmt: skip
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None
    saem_table = _settings(doc.get("saem", {}), _SAEM_DEFAULTS, where, "saem")
    try:
        saem = SaemSettings(**saem_table)
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None
    if optimiser.covariance_matrix == "sandwich" and "summaries" in doc:
        raise SpecError(f"{where}: covariance_matrix = \"sandwich\" with [summaries]: the sandwich's S holds the patients' gradients only, so the directions the summaries "
                        "inform would get too small SEs. Fix: use covariance_matrix = \"hessian\" with summaries.")  # fmt: skip
    if optimiser.covariance_matrix == "sandwich" and priors != "none":
        raise SpecError(f"{where}: covariance_matrix = \"sandwich\" with priors = {priors!r}: the sandwich's S holds the data's gradients only, not the priors'. "
                        "Fix: use covariance_matrix = \"hessian\" with priors, or priors = \"none\".")  # fmt: skip
    if not 0.0 <= sri4.bilag_pga_keep <= 1.0:
        raise SpecError(f"{where}: [sri4] bilag_pga_keep must be a probability in [0, 1], got {sri4.bilag_pga_keep!r}.")

    occasion = _string(doc.get("occasion", "OCC"), where, "occasion")
    if "occasion" in doc and not any(p.iov_cv_percent is not None for p in parameters):
        raise SpecError(f"{where}: `occasion` names the occasion column of inter-occasion variability, but no parameter has iov_cv_percent. "
                        "Fix: give a parameter iov_cv_percent, or remove `occasion`.")  # fmt: skip
    if any(p.iov_cv_percent is not None for p in parameters) and (occasion not in dataset.covariates or occasion in dict(dataset.covariate_levels)):
        raise SpecError(f"{where}: inter-occasion variability (iov_cv_percent) needs a numeric occasion column, but the data ({doc['data']}) have no numeric column {occasion!r} "
                        f"(their covariates: {', '.join(dataset.covariates) or 'none'}). "
                        "Fix: add it (OCC = 1, 2, ... from each occasion's first row on), or name yours with occasion = \"...\".")  # fmt: skip

    dataset = _mask_ignored(dataset, ignore)
    _check_against_data(dataset, parameters, errors, ignore, base, where, doc["data"])
    if not any(p.estimate or p.cv_percent is not None or p.iov_cv_percent is not None for p in parameters) and not covariates and not any(e.estimate for e in errors):
        raise SpecError(f"{where}: nothing is estimated. Fix: add a [parameters.<name>] table or estimate a residual SD.")

    initial = {p.name: p.initial for p in parameters if p.initial is not None}
    try:
        model = base.with_values(**initial) if initial else base
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None
    summaries = _summaries(doc["summaries"], path, model, parameters) if "summaries" in doc else None
    return FitSpec(
        path=path, text=text, name=name, description=description, model_source=doc["model"], data_source=doc["data"],
        model=model, dataset=dataset, parameters=parameters, covariates=covariates, errors=errors, ignore_dvids=tuple(ignore),
        optimiser=optimiser, sri4=sri4, priors=priors, nuts=nuts, saem=saem, time_unit=time_unit, drop=tuple(drop),
        labels=_labels(doc.get("labels", {}), parameters, covariates, errors, where, omega_blocks), omega_blocks=omega_blocks, occasion=occasion,
        summaries=summaries,
    )  # fmt: skip


# ----------------------------------------------------------------------------- model and data


def _model(source: str, path: Path) -> Model:
    where = str(path)
    target = source
    if source.endswith(".toml") or "/" in source:
        target = Path(source) if Path(source).is_absolute() else path.parent / source
        if not Path(target).is_file():
            raise SpecError(f"{where}: model file {str(target)!r} does not exist. Fix: give a path relative to the fit file, or a model name.")
    try:
        return load_model(target)
    except SpecError as err:
        raise SpecError(f"{where}: {err}") from None


def load_packaged_dataset(name: str, observables: tuple[str, ...] = OBSERVABLE_NAMES) -> Dataset:
    """A dataset shipped with il2treg by name (``data = "il2treg:<name>"``), its DVIDs read as ``observables``."""
    import il2treg.datasets

    known = ", ".join(PACKAGED_PREFIX + n for n in PACKAGED_DATASETS)
    if name not in PACKAGED_DATASETS:
        raise SpecError(f"unknown packaged dataset {PACKAGED_PREFIX + name!r}. Fix: use one of {known}, or a CSV path.")
    loader = getattr(il2treg.datasets, name, None)
    if loader is None:
        raise SpecError(f"packaged dataset {PACKAGED_PREFIX + name!r} is not in this installation of il2treg. Fix: update il2treg or give a CSV path.")
    data = loader()
    if isinstance(data, Dataset):
        return data if data.dvid_names == tuple(observables) else read_dataset(data.to_frame(), observables=observables)
    return read_dataset(data, observables=observables)


def _data(source: str, path: Path, names: tuple[str, ...], aliases: dict[str, str], time_unit: str = "day", drop: tuple[str, ...] = (),
          doses: tuple[DosingInput, ...] = ()) -> Dataset:
    where = str(path)
    if source.startswith(PACKAGED_PREFIX):
        try:
            return load_packaged_dataset(source[len(PACKAGED_PREFIX) :], names)
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None
    file = Path(source) if Path(source).is_absolute() else path.parent / source
    if not file.is_file():
        raise SpecError(
            f"{where}: data file {str(file)!r} does not exist. "
            f"Fix: give a CSV path relative to the fit file, or {PACKAGED_PREFIX}<name> for a packaged dataset."
        )
    try:
        return read_dataset(file, observables=names, aliases=aliases, time_unit=time_unit, drop=drop, doses=doses)
    except DataError as err:
        raise DataError(f"{where}: data file {str(file)!r}: {err}", column=err.column, row=err.row) from None


def _mask_ignored(dataset: Dataset, ignore: list[str]) -> Dataset:
    if not ignore:
        return dataset
    ignored = np.isin(dataset.obs_dvid, [dataset.dvid_names.index(d) for d in ignore])
    return eqx.tree_at(lambda d: d.obs_mask, dataset, dataset.obs_mask & ~ignored)


# ----------------------------------------------------------------------------- tables


def _parameters(table, model: Model, where: str) -> tuple[ParameterEntry, ...]:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: `parameters` must be tables [parameters.<name>].")
    names = model.parameter_names
    out = []
    for name, entry in table.items():
        here = f"{where}: [parameters.{name}]"
        if name not in names:
            raise SpecError(f"{here}: unknown parameter {name!r} of model {model.name!r}. Fix: use one of {', '.join(names)}.")
        if not isinstance(entry, dict):
            raise SpecError(f"{here} must be a table. Fix: write [parameters.{name}] with initial / estimate / cv_percent.")
        _known_keys(entry, _PARAM_KEYS, here, "key")
        ps = model.spec[name]
        if name in model.spec.covariate_names:
            raise SpecError(f"{here}: {name!r} is a covariate of the model, read per patient from the data column {name!r}; it is not estimated. "
                            f"Fix: remove [parameters.{name}].")  # fmt: skip
        estimate = entry.get("estimate", True)
        if not isinstance(estimate, bool):
            raise SpecError(f"{here}: estimate must be true or false, got {estimate!r}.")
        initial = entry.get("initial")
        if initial is not None:
            initial = _number(initial, here, "initial")
            lo, hi = ps.to_declared(ps.bounds[0]), ps.to_declared(ps.bounds[1])
            if not _within(initial, lo, hi):
                raise SpecError(
                    f"{here}: initial {initial:g} {ps.unit} is outside the bounds [{lo:g}, {hi:g}] {ps.unit} of {name!r}. "
                    "Fix: choose an initial value inside the bounds, or widen them in the model file."
                )
        value = ps.value if initial is None else ps.to_internal(initial)
        if estimate and ps.transform == "logit" and not ps.bounds[0] < value < ps.bounds[1]:
            shown = ps.to_declared(value)
            raise SpecError(
                f"{here}: {name!r} is estimated on the logit scale and needs a start strictly inside its bounds, "
                f"got {shown:g} {ps.unit}. Fix: set `initial` inside the bounds."
            )
        cvs = []
        for key in ("cv_percent", "iov_cv_percent"):
            cv = entry.get(key)
            if cv is not None:
                cv = _number(cv, here, key)
                if not cv > 0:
                    raise SpecError(f"{here}: {key} must be > 0 (the initial CV% of the random effect), got {cv:g}. Fix: omit it for no random effect.")
                if ps.transform != "log":
                    raise SpecError(
                        f"{here}: a random effect is log-normal and needs a parameter with transform \"log\"; "
                        f"{name!r} has {ps.transform!r}. Fix: remove {key}, or set transform = \"log\" in the model file."
                    )
            cvs.append(cv)
        out.append(ParameterEntry(name, estimate, initial, *cvs))
    return tuple(out)


def _omega_blocks(table, parameters: tuple[ParameterEntry, ...], where: str) -> tuple[OmegaBlock, ...]:
    if not isinstance(table, list) or not all(isinstance(t, dict) for t in table):
        raise SpecError(f'{where}: `omega_block` must be [[omega_block]] tables, e.g. parameters = ["CL", "V"].')
    random = [p.name for p in parameters if p.cv_percent is not None]
    out, seen = [], {}
    for k, entry in enumerate(table, start=1):
        here = f"{where}: [[omega_block]] #{k}"
        _known_keys(entry, _BLOCK_KEYS, here, "key")
        names = entry.get("parameters")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(names) < 2:
            raise SpecError(f'{here}: parameters must list two or more parameters with a random effect, e.g. parameters = ["CL", "V"], got {names!r}.')
        if len(set(names)) != len(names):
            raise SpecError(f"{here}: parameters lists {next(n for n in names if names.count(n) > 1)!r} twice. Fix: list each random effect once.")
        for name in names:
            if name not in random:
                raise SpecError(f"{here}: {name!r} has no random effect. Fix: give it cv_percent in [parameters.{name}], or use one of {', '.join(random) or '(none)'}.")
            if name in seen:
                raise SpecError(f"{here}: {name!r} is already in omega block #{seen[name]}. Fix: put each random effect in one block.")
            seen[name] = k
        correlation = _number(entry.get("correlation", 0.1), here, "correlation")
        if not -1.0 / (len(names) - 1) < correlation < 1.0:
            raise SpecError(f"{here}: correlation {correlation:g} does not give a positive definite block of {len(names)}. "
                            f"Fix: choose a value in ({-1.0 / (len(names) - 1):g}, 1), e.g. 0.1.")  # fmt: skip
        out.append(OmegaBlock(tuple(names), correlation))
    return tuple(out)


def _errors(table, where: str, names: tuple[str, ...]) -> tuple[ErrorEntry, ...]:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: `error` must be tables [error.<observation type>].")
    entries = {}
    for dvid, entry in table.items():
        here = f"{where}: [error.{dvid}]"
        _known_dvid(dvid, where, f"[error.{dvid}]", names)
        if not isinstance(entry, dict):
            raise SpecError(f"{here} must be a table with kind, sigma_add / sigma_prop and estimate.")
        _known_keys(entry, _ERROR_KEYS, here, "key")
        kind = entry.get("kind")
        if kind not in KINDS:
            raise SpecError(f"{here}: kind must be one of {', '.join(KINDS)}, got {kind!r}.")
        used = SIGMAS_OF_KIND[kind]
        default = ResidualModel.build(kinds={dvid: kind}, names=names)
        d = names.index(dvid)
        sd = {"sigma_add": float(default.sigma_add[d]) if "sigma_add" in used else 0.0,
              "sigma_prop": float(default.sigma_prop[d]) if "sigma_prop" in used else 0.0}  # fmt: skip
        for key in ("sigma_add", "sigma_prop"):
            if key in entry:
                if key not in used:
                    raise SpecError(f"{here}: kind {kind!r} has no {key}. Fix: remove it, or give only {', '.join(used)}.")
                sd[key] = _number(entry[key], here, key)
                if sd[key] < 0:
                    raise SpecError(f"{here}: {key} must be >= 0, got {sd[key]:g}.")
        estimate = entry.get("estimate", list(used))
        if not isinstance(estimate, list) or not all(isinstance(s, str) for s in estimate):
            raise SpecError(f"{here}: estimate must be a list such as {list(used)!r}, got {estimate!r}.")
        for s in estimate:
            if s not in used:
                raise SpecError(f"{here}: cannot estimate {s!r}: kind {kind!r} uses {', '.join(used)}. Fix: estimate = {list(used)!r} or a part of it.")
            if not sd[s] > 0:
                raise SpecError(f"{here}: an estimated {s} needs an initial value > 0, got {sd[s]:g}. Fix: set {s} = <initial SD>.")
        if len(set(estimate)) != len(estimate):
            raise SpecError(f"{here}: estimate lists an SD twice. Fix: list each once.")
        step = entry.get("score_step", 1.0)
        if "score_step" in entry:
            if kind != "ordinal":
                raise SpecError(f"{here}: score_step applies to kind \"ordinal\" only. Fix: remove it.")
            step = _number(step, here, "score_step")
            if not step > 0:
                raise SpecError(f"{here}: score_step must be > 0 (1 for integer scores, 2 for even scores), got {step:g}.")
        entries[dvid] = ErrorEntry(dvid, kind, sd["sigma_add"], sd["sigma_prop"], tuple(s for s in used if s in estimate), float(step))
    steps = {e.score_step for e in entries.values() if e.kind == "ordinal"}
    if len(steps) > 1:
        raise SpecError(f"{where}: ordinal error models with different score_step ({', '.join(f'{x:g}' for x in sorted(steps))}). Fix: use one score_step.")
    return tuple(entries[n] for n in names if n in entries)


def _covariates(table, model: Model, dataset: Dataset, where: str) -> tuple[CovariateEntry, ...]:
    if not isinstance(table, list) or not all(isinstance(t, dict) for t in table):
        raise SpecError(f"{where}: `covariates` must be [[covariates]] tables (parameter, covariate, model, reference).")
    out = []
    names = model.parameter_names
    for k, entry in enumerate(table, start=1):
        here = f"{where}: [[covariates]] #{k}"
        _known_keys(entry, _COVARIATE_KEYS, here, "key")
        for key in ("parameter", "covariate", "model", "reference"):
            if key not in entry:
                raise SpecError(f"{here} has no {key!r}. Fix: add `{key} = ...`.")
        parameter, covariate, form = entry["parameter"], entry["covariate"], entry["model"]
        if parameter not in names:
            raise SpecError(f"{here}: unknown parameter {parameter!r} of model {model.name!r}. Fix: use one of {', '.join(names)}.")
        if form not in COVARIATE_MODELS:
            raise SpecError(f"{here}: unknown covariate model {form!r}. Fix: use one of {', '.join(COVARIATE_MODELS)}.")
        if covariate not in dataset.covariates:
            known = ", ".join(dataset.covariates) or "none"
            raise SpecError(f"{here}: the data have no covariate column {covariate!r}. Fix: use one of the data's covariates ({known}).")
        if covariate in dict(dataset.covariate_levels):
            raise SpecError(f"{here}: covariate {covariate!r} is text; an effect needs a numeric column. Fix: code it as numbers (e.g. 0/1).")
        reference = _number(entry["reference"], here, "reference")
        values = np.asarray(dataset.covariates[covariate], dtype=float)
        if not np.all(np.isfinite(values)):
            missing = dataset.ids[int(np.argmax(~np.isfinite(values)))]
            raise SpecError(f"{here}: covariate {covariate!r} is missing for ID {missing!r}. Fix: fill it in or remove the effect.")
        if form == "power" and not (np.all(values > 0) and reference > 0):
            raise SpecError(f"{here}: a power effect needs positive values of {covariate!r} and a positive reference. Fix: use model = \"exp\" or \"linear\".")
        if any(c.effect.parameter == parameter and c.effect.covariate == covariate for c in out):
            raise SpecError(f"{here}: a second effect of {covariate!r} on {parameter!r}. Fix: keep one.")
        out.append(CovariateEntry(CovariateEffect(parameter, covariate, form, reference), _number(entry.get("initial", 0.0), here, "initial")))
    return tuple(out)


def _summaries(table, path: Path, model: Model, parameters: tuple[ParameterEntry, ...]) -> SummarySettings:
    """The ``[summaries]`` table, its file read and its summaries checked against the model."""
    here = f"{path}: [summaries]"
    if not isinstance(table, dict):
        raise SpecError(f"{here} must be a table. Fix: write [summaries] with file = \"...\".")
    _known_keys(table, _SUMMARY_KEYS, here, "key")
    if not isinstance(table.get("file"), str) or not table["file"].strip():
        raise SpecError(f"{here}: no `file`. Fix: add file = \"summaries.toml\" (relative to the fit file) or file = \"{SHIPPED_SUMMARIES}\".")
    source = table["file"]
    n_draws, seed = table.get("n_draws", 1000), table.get("seed", 0)
    for key, value, least in (("n_draws", n_draws, 2), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise SpecError(f"{here}: {key} must be an integer >= {least}, got {value!r}.")
    bsa = table.get("bsa_m2")
    if bsa is not None:
        bsa = _number(bsa, here, "bsa_m2")
    sigma = table.get("sigma_prop", {})
    if not isinstance(sigma, dict) or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in sigma.values()):
        raise SpecError(f"{here}: sigma_prop must be a table of observables and residual SDs > 0, e.g. sigma_prop = {{ {model.observable_names[0]} = 0.1 }}, got {sigma!r}.")
    for dvid in sigma:
        _known_dvid(dvid, here, "sigma_prop", model.observable_names)
    try:
        data = study_summaries(bsa) if source == SHIPPED_SUMMARIES else read_summaries(path.parent / source, bsa)
    except InputError as err:
        raise SpecError(f"{here}: {err}") from None
    studies = table.get("studies")
    if studies is not None:
        if not isinstance(studies, list) or not studies or not all(isinstance(x, str) for x in studies):
            raise SpecError(f"{here}: studies must be a non-empty list of study names, got {studies!r}. Fix: e.g. studies = [\"{data.study_names[0]}\"].")
        for study in studies:
            if study not in data.study_names:
                raise SpecError(f"{here}: no study {study!r} in {source}. Fix: use some of {', '.join(data.study_names)}.")
        data = data.select(studies)
    if any(p.iov_cv_percent is not None for p in parameters):
        raise SpecError(f"{here}: summaries cannot be fitted beside inter-occasion variability (iov_cv_percent): a published arm has no occasions. "
                        "Fix: remove iov_cv_percent, or the [summaries] table.")  # fmt: skip
    try:
        check_summaries(model, data.regimens, data.summaries, sigma, n_draws, beside_patients=True)
    except SpecError as err:
        raise SpecError(f"{here}: {source}: {err}") from None
    return SummarySettings(source, data, n_draws, seed, tuple((k, float(v)) for k, v in sigma.items()))


def _settings(table, defaults: dict, where: str, section: str) -> dict:
    here = f"{where}: [{section}]"
    if not isinstance(table, dict):
        raise SpecError(f"{here} must be a table.")
    _known_keys(table, tuple(defaults), here, "key")
    out = dict(defaults)
    for key, value in table.items():
        default = defaults[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise SpecError(f"{here}: {key} must be true or false, got {value!r}.")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SpecError(f"{here}: {key} must be an integer >= 0, got {value!r}.")
        elif isinstance(default, str):
            choices = _CHOICES[key]
            if value not in choices:
                raise SpecError(f"{here}: {key} must be one of {', '.join(map(repr, choices))}, got {value!r}.")
        else:
            value = _number(value, here, key)
            if not value > 0:
                raise SpecError(f"{here}: {key} must be > 0, got {value:g}.")
        out[key] = value
    return out


def _check_against_data(dataset: Dataset, parameters, errors, ignore, model: Model, where: str, source: str) -> None:
    observed = set(dataset.observed_names())
    described = {e.dvid for e in errors}
    if not observed:
        raise SpecError(f"{where}: the data ({source}) have no observation to fit. Fix: use data with observations, or fit fewer ignore_dvids.")
    for d in ignore:
        if d in described:
            raise SpecError(f"{where}: {d!r} is both in ignore_dvids and has an [error.{d}] table. Fix: keep one of them.")
    for d in dataset.dvid_names:
        if d in observed and d not in described:
            raise SpecError(
                f"{where}: the data ({source}) observe {d!r} but the fit has no [error.{d}] table. "
                f"Fix: add [error.{d}] with its kind, or list {d!r} in ignore_dvids."
            )
    for e in errors:
        if e.estimate and e.dvid not in observed:
            raise SpecError(
                f"{where}: [error.{e.dvid}] estimates {', '.join(e.estimate)} but the data ({source}) have no {e.dvid!r} observation. "
                f"Fix: set estimate = [] or remove [error.{e.dvid}], or add {e.dvid} data."
            )
    for name in model.spec.covariate_names:
        if name not in dataset.covariates or name in dict(dataset.covariate_levels):
            raise SpecError(
                f"{where}: the model reads the covariate {name!r} per patient from the data, but the data ({source}) have no numeric column {name!r} "
                f"(their covariates: {', '.join(dataset.covariates) or 'none'}). Fix: add the column, one value per subject."
            )
    for p in parameters:
        target = _ACTS_ONLY_ON.get(model.spec[p.name].group)
        if (p.estimate or p.cv_percent is not None or p.iov_cv_percent is not None) and target and target not in observed:
            raise SpecError(
                f"{where}: [parameters.{p.name}] is estimated but acts only on {target!r}, which the data ({source}) do not observe. "
                f"Fix: add {target} data, or set estimate = false and remove cv_percent (and iov_cv_percent)."
            )


def _labels(table, parameters, covariates, errors, where: str, omega_blocks: tuple[OmegaBlock, ...] = ()) -> tuple[tuple[str, str], ...]:
    """The ``labels`` table checked against the names of the fit's estimates."""
    if not isinstance(table, dict):
        raise SpecError(f'{where}: `labels` must be a table of estimate names and labels, e.g. labels = {{ omega_CL = "IIV_CL" }}, got {table!r}.')
    names = [p.name for p in parameters if p.estimate] + [c.effect.name for c in covariates]
    random = tuple(p.name for p in parameters if p.cv_percent is not None)
    names += [f"omega_{n}" for n in random]
    names += [f"corr_{random[j]}_{random[i]}" for i, j in block_pairs(random, tuple(b.parameters for b in omega_blocks))]
    names += [f"omega_iov_{p.name}" for p in parameters if p.iov_cv_percent is not None]
    names += [f"sigma_{s.removeprefix('sigma_')}_{e.dvid}" for e in errors for s in SIGMAS_OF_KIND[e.kind]]
    for name, label in table.items():
        if name not in names:
            raise SpecError(f"{where}: labels.{name}: the fit has no estimate {name!r}. Fix: use one of {', '.join(names)}.")
        if not isinstance(label, str) or not label.strip():
            raise SpecError(f"{where}: labels.{name} must be a non-empty string, got {label!r}.")
    seen = {}
    for name, label in table.items():
        if label in seen:
            raise SpecError(f"{where}: labels.{name} and labels.{seen[label]} are both {label!r}. Fix: give each estimate its own label.")
        seen[label] = name
    return tuple(table.items())


# ----------------------------------------------------------------------------- small checks


def _known_keys(table: dict, known: tuple[str, ...], here: str, what: str) -> None:
    for key in table:
        if key not in known:
            raise SpecError(f"{here}: unknown {what} {key!r}. Fix: use only {', '.join(known)}.")


def _known_dvid(dvid: str, where: str, field: str, names: tuple[str, ...]) -> None:
    if dvid not in names:
        raise SpecError(f"{where}: {field}: unknown observation type {dvid!r}: not an observable of the model. Fix: use one of {', '.join(names)}.")


def _number(value, here: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{here}: {key} must be a finite number, got {value!r}.")
    return float(value)


def _string(value, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"{where}: `{key}` must be a string, got {value!r}.")
    return value


def _within(value: float, lo: float, hi: float) -> bool:
    """lo <= value <= hi, forgiving the rounding of a unit conversion at the bounds."""
    tol = 1e-12 * max(abs(lo), abs(hi), 1.0)
    return lo - tol <= value <= hi + tol


def stored_spec(result) -> FitSpec:
    """The fit specification stored in a :class:`~il2treg.fit.FitResult` (its text, parsed again;
    the data are read again from where the file points)."""
    return parse_fit_spec(tomllib.loads(result.spec_text), path=Path(result.spec_path), text=result.spec_text)
