"""The parameters of model files: read and validate ``[model]`` and ``[parameters.*]``.

Every model file (``models/*.toml``; its mechanism's tables are read by
:mod:`il2treg.model.format`) has, and a parameters-only file for a Python mechanism
(:func:`read_spec`) consists of:

``[model]``
    ``name`` and ``description``.
``[parameters.<name>]``
    one table per parameter with ``value``, ``unit``, ``bounds = [lower, upper]`` (same unit as
    ``value``), ``transform`` (``log``, ``logit`` or ``identity``: the scale on which it is
    estimated), ``cv_percent`` (between-patient variability, log-normal; 0 = none), ``group``,
    ``description`` and ``source`` (a citation, or "ASSUMPTION ..." with what it was calibrated to).
    Optionally a prior: ``prior_sd`` (SD on the estimation scale of ``transform``, centred on
    ``value``: a log-normal prior with median ``value`` for ``log``, a logit-normal one for
    ``logit``, a normal one for ``identity``) and ``prior_source`` (why that width).

A parameter with ``group = "covariate"`` is a patient characteristic (body weight, an Apgar
score): its ``value`` is the typical patient's, a simulation uses it unless told otherwise, and
a fit reads each patient's value from the data column of the same name (it is never estimated
and has no variability). Equations use it like any parameter: ``CL = POP_CL * WGT``.

On load, values and bounds are converted to il2treg's internal units (days, L, pM, cells/uL;
see :mod:`il2treg.units`). Problems raise :class:`il2treg.errors.SpecError` naming the parameter,
the field and the fix.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path

from il2treg import units
from il2treg._io import atomic_write_text
from il2treg.errors import ModelFileError, SpecError, UnitError

#: Where ``load_model("name")`` looks for ``name.toml``: the repository's ``models/`` folder.
MODELS_DIR = Path(__file__).resolve().parents[2] / "models"

TRANSFORMS = ("log", "logit", "identity")
#: The group of a parameter that is a patient covariate, read per patient from the data.
COVARIATE_GROUP = "covariate"
_REQUIRED_FIELDS = ("value", "unit", "bounds", "transform", "cv_percent", "source")
_OPTIONAL_FIELDS = ("group", "description", "prior_sd", "prior_source", "prior_center")
# The tables of the model-file format (il2treg.model.format) that this reader leaves to it.
_EQUATION_TABLES = ("states", "constants", "quantities", "equations", "observables", "doses")


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One parameter as declared in a model file, with its value in internal units.

    Attributes:
        name: parameter name.
        value: typical value in internal units (``internal_unit``).
        unit: the unit the file states ``value`` and ``bounds`` in.
        internal_unit: the unit ``value`` and ``bounds`` are held in.
        bounds: (lower, upper) in internal units.
        transform: estimation scale: ``log``, ``logit`` or ``identity``.
        cv_percent: between-patient variability (log-normal CV, %); 0 = none.
        group: ``pk``, ``signal``, ``cells`` or ``disease``.
        description: what it is.
        source: citation or assumption.
        declared_value: the value as written in the file (in ``unit``).
        prior_sd: SD of the prior on the estimation scale; None = no prior.
        prior_center: its centre in internal units: the file's ``prior_center`` where it gives
            one (a value estimated from data keeps the literature's prior), else the declared
            value (kept when a fit changes ``value`` to start elsewhere).
        prior_source: the justification of that width.
        scale: internal units per declared unit (``L/h`` held in ``L/day``: 24), set by
            :func:`parse_parameter` wherever the two differ, also for units
            :mod:`il2treg.units` does not list (a model file's ``L/h/kg``); None: convert with
            :func:`il2treg.units.convert`.
    """

    name: str
    value: float
    unit: str
    internal_unit: str
    bounds: tuple[float, float]
    transform: str
    cv_percent: float
    group: str
    description: str
    source: str
    declared_value: float
    prior_sd: float | None = None
    prior_center: float | None = None
    prior_source: str = ""
    scale: float | None = None

    @property
    def omega(self) -> float:
        """SD of the log-normal random effect: sqrt(ln(1 + CV^2))."""
        return math.sqrt(math.log1p((self.cv_percent / 100.0) ** 2))

    def to_internal(self, declared_value: float) -> float:
        """Convert a value in the unit of the file to the unit it is held in (the inverse of :meth:`to_declared`)."""
        if self.unit == self.internal_unit:
            return float(declared_value)
        if self.scale is not None:
            return float(declared_value) * self.scale
        return float(units.convert(declared_value, self.unit, self.internal_unit))

    def to_declared(self, internal_value: float) -> float:
        """Convert a value in internal units back to the unit of the file."""
        if self.unit == self.internal_unit:
            return float(internal_value)
        if self.scale is not None:
            return float(internal_value) / self.scale
        return float(units.convert(internal_value, self.internal_unit, self.unit))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model's parameters as declared in its file (hashable, so jit treats it as static)."""

    name: str
    description: str
    params: tuple[ParamSpec, ...]
    path: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def covariate_names(self) -> tuple[str, ...]:
        """The parameters that are patient covariates (``group = "covariate"``), read from the data in fits."""
        return tuple(p.name for p in self.params if p.group == COVARIATE_GROUP)

    def __getitem__(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise SpecError(
            f"model {self.name!r} has no parameter {name!r}. Fix: use one of {', '.join(self.names)}."
        )


def parse_parameter(name: str, table: dict, where: str, *, to_internal=units.to_internal) -> ParamSpec:
    """Validate one ``[parameters.<name>]`` table and return its :class:`ParamSpec`.

    Arguments:
        name: the parameter's name.
        table: its fields (module docstring).
        where: a label for error messages (the file path).
        to_internal: ``(value, unit) -> (value in the internal unit, internal unit)``; raises
            :class:`UnitError` on a unit it does not know. Default: :func:`il2treg.units.to_internal`.
    """
    here = f"{where}: parameter {name!r}"
    for key in _REQUIRED_FIELDS:
        if key not in table:
            raise SpecError(f"{here} has no {key!r}. Fix: add `{key} = ...` to [parameters.{name}].")
    for key in table:
        if key not in _REQUIRED_FIELDS + _OPTIONAL_FIELDS:
            raise SpecError(
                f"{here}: unknown field {key!r}. Fix: use only "
                f"{', '.join(_REQUIRED_FIELDS + _OPTIONAL_FIELDS)}."
            )
    value = table["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{here}: value must be a finite number, got {value!r}.")
    bounds = table["bounds"]
    if (
        not isinstance(bounds, list)
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        or not bounds[0] < bounds[1]
    ):
        raise SpecError(f"{here}: bounds must be [lower, upper] with lower < upper, got {bounds!r}.")
    if not bounds[0] <= value <= bounds[1]:
        raise SpecError(
            f"{here}: value {value} is outside its bounds [{bounds[0]}, {bounds[1]}]. "
            "Fix: change the value or widen the bounds."
        )
    transform = table["transform"]
    if transform not in TRANSFORMS:
        raise SpecError(f"{here}: unknown transform {transform!r}. Fix: use one of {', '.join(TRANSFORMS)}.")
    if transform == "log" and bounds[0] <= 0:
        raise SpecError(f"{here}: a log transform needs a positive lower bound, got {bounds[0]}.")
    if transform == "logit" and not (0 <= bounds[0] and bounds[1] <= 1):
        raise SpecError(f"{here}: a logit transform needs bounds within [0, 1], got {bounds!r}.")
    cv = table["cv_percent"]
    if isinstance(cv, bool) or not isinstance(cv, (int, float)) or cv < 0:
        raise SpecError(f"{here}: cv_percent must be a number >= 0, got {cv!r}.")
    if table.get("group") == COVARIATE_GROUP and (cv > 0 or table.get("prior_sd") is not None):
        raise SpecError(
            f"{here}: a covariate (group = \"{COVARIATE_GROUP}\") is read from the data, so it has no "
            "variability and no prior. Fix: set cv_percent = 0 and remove prior_sd."
        )
    if cv > 0 and transform != "log":
        raise SpecError(
            f"{here}: between-patient variability is log-normal and needs transform = \"log\" "
            f"(got {transform!r}). Fix: set cv_percent = 0 or transform = \"log\"."
        )
    source = table["source"]
    if not isinstance(source, str) or not source.strip():
        raise SpecError(f"{here}: source must name a citation or an assumption.")
    prior_sd = table.get("prior_sd")
    prior_source = table.get("prior_source", "")
    centre = table.get("prior_center", value)
    if prior_sd is not None:
        if isinstance(prior_sd, bool) or not isinstance(prior_sd, (int, float)) or not (math.isfinite(prior_sd) and prior_sd > 0):
            raise SpecError(f"{here}: prior_sd must be a positive number (SD on the {transform} scale), got {prior_sd!r}.")
        if not isinstance(prior_source, str) or not prior_source.strip():
            raise SpecError(f"{here}: a prior needs `prior_source`: why its width. Fix: add prior_source = \"...\".")
        if (
            isinstance(centre, bool)
            or not isinstance(centre, (int, float))
            or not math.isfinite(centre)
            or not bounds[0] <= centre <= bounds[1]
        ):
            raise SpecError(
                f"{here}: prior_center must be a finite number inside the bounds [{bounds[0]}, {bounds[1]}] "
                f"(in the file's unit {table.get('unit')!r}), got {centre!r}. Fix: give the literature value the prior is centred on."
            )
        if transform == "logit" and not (bounds[0] < value < bounds[1] and bounds[0] < centre < bounds[1]):
            raise SpecError(
                f"{here}: a logit prior needs the value ({value}) and the prior's centre ({centre}) strictly inside "
                f"the bounds {bounds!r}. Fix: move them off the bounds."
            )
    elif "prior_source" in table or "prior_center" in table:
        raise SpecError(f"{here}: prior_source or prior_center without prior_sd. Fix: add prior_sd or remove them.")
    unit = table["unit"]
    try:
        internal, internal_unit = to_internal(float(value), unit)
        centre_internal, _ = to_internal(float(centre), unit)
        lo, _ = to_internal(float(bounds[0]), unit)
        hi, _ = to_internal(float(bounds[1]), unit)
        scale, _ = to_internal(1.0, unit)  # every unit here is a multiple of another (no offsets)
    except UnitError as err:
        raise SpecError(f"{here}: {err}") from err
    return ParamSpec(
        name=name,
        value=float(internal),
        unit=unit,
        internal_unit=internal_unit,
        bounds=(float(lo), float(hi)),
        transform=transform,
        cv_percent=float(cv),
        group=str(table.get("group", "")),
        description=str(table.get("description", "")),
        source=source,
        declared_value=float(value),
        prior_sd=None if prior_sd is None else float(prior_sd),
        prior_center=None if prior_sd is None else float(centre_internal),
        prior_source=str(prior_source),
        scale=None if internal_unit == unit else float(scale),
    )


def parse_spec(data: dict, *, where: str = "<model>", required: tuple[str, ...] = ()) -> ModelSpec:
    """Validate a parsed TOML document and return its :class:`ModelSpec`.

    Arguments:
        data: the TOML document as a dict.
        where: a label for error messages (the file path).
        required: parameter names the model's equations need; missing or extra ones are errors.
    """
    for key in data:
        if key not in ("model", "parameters", *_EQUATION_TABLES):
            raise SpecError(f"{where}: unknown table [{key}]. Fix: use [model] and [parameters.*].")
    meta = data.get("model", {})
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"{where}: [model] needs a `name`.")
    params_table = data.get("parameters")
    if not isinstance(params_table, dict) or not params_table:
        raise SpecError(f"{where}: no [parameters.*] tables.")
    params = tuple(parse_parameter(k, v, where) for k, v in params_table.items())
    if required:
        declared = {p.name for p in params}
        unknown = sorted(declared - set(required))
        if unknown:
            raise SpecError(
                f"{where}: unknown parameter {unknown[0]!r}: the model's equations do not use it. "
                f"Fix: remove it or rename it to one of {', '.join(required)}."
            )
        missing = [r for r in required if r not in declared]
        if missing:
            raise SpecError(f"{where}: parameter {missing[0]!r} is missing. Fix: add [parameters.{missing[0]}].")
        order = {n: i for i, n in enumerate(required)}
        params = tuple(sorted(params, key=lambda p: order[p.name]))
    return ModelSpec(
        name=name,
        description=str(meta.get("description", "")),
        params=params,
        path=where,
    )


def resolve_model_path(name_or_path: str | Path) -> Path:
    """Map a model name (``il2_treg_sledai``) or a path to an existing TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise SpecError(f"model file {str(path)!r} does not exist. Fix: check the path.")
        return path
    candidate = MODELS_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        known = sorted(p.stem for p in MODELS_DIR.glob("*.toml") if "[model]" in p.read_text(encoding="utf-8") and "[design]" not in p.read_text(encoding="utf-8"))
        raise SpecError(
            f"unknown model {str(name_or_path)!r}. Fix: use one of {', '.join(known)} or a path to a .toml file."
        )
    return candidate


def read_toml(path: str | Path) -> dict:
    """The TOML document of a model file.

    Raises:
        ModelFileError: the file cannot be read or is not TOML.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ModelFileError(str(path), "file", f"cannot be read ({err.strerror})", "check the path") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        problem = "a key is declared twice" if "twice" in str(err) or "overwrite" in str(err).lower() else "not valid TOML"
        raise ModelFileError(str(path), "file", f"{problem} ({err})", "correct the TOML syntax (https://toml.io)") from None


def read_spec(name_or_path: str | Path, *, required: tuple[str, ...] = ()) -> ModelSpec:
    """Read and validate a model TOML file (by name in ``models/`` or by path)."""
    path = resolve_model_path(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise SpecError(f"{path}: not valid TOML ({err}). Fix: correct the syntax.") from err
    return parse_spec(data, where=str(path), required=required)


def update_values(path: str | Path, values: dict[str, float]) -> None:
    """Rewrite the ``value = ...`` line of some parameters in a model file, leaving all else as is.

    Used by the calibration scripts so that what ``models/`` holds is exactly their output.
    Values are given in the file's declared units. The file is replaced atomically.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    pending = dict(values)
    current = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("[parameters.") and stripped.endswith("]"):
            current = stripped[len("[parameters.") : -1]
        elif stripped.startswith("[") and stripped.endswith("]"):
            current = None
        elif current in pending and stripped.startswith("value"):
            lines[i] = f"value = {float(pending.pop(current))!r}\n"
    if pending:
        raise SpecError(f"{path}: no [parameters.{next(iter(pending))}] table with a value line to update.")
    atomic_write_text(path, "".join(lines))


def markdown_table(spec: ModelSpec) -> str:
    """The parameter table of a model as Markdown (name, value, unit, bounds, transform, CV%, prior, source)."""
    rows = [
        "| parameter | value | unit | bounds | transform | BSV CV% | prior SD (transform scale) | description | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in spec.params:
        lo, hi = p.to_declared(p.bounds[0]), p.to_declared(p.bounds[1])
        cv = f"{p.cv_percent:g}" if p.cv_percent else "-"
        prior = "-" if p.prior_sd is None else f"{p.prior_sd:g}: {p.prior_source}"
        if p.prior_sd is not None and p.prior_center != p.value:
            prior = f"{p.prior_sd:g} about {p.to_declared(p.prior_center):.4g}: {p.prior_source}"
        rows.append(
            f"| `{p.name}` | {p.declared_value:g} | {p.unit} | {lo:g}-{hi:g} | {p.transform} | {cv} "
            f"| {prior} | {p.description} | {p.source} |"
        )
    return "\n".join(rows) + "\n"
