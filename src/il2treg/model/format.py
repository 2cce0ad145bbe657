r"""Model files: a mechanism declared as data (states, parameters, equations, observables, doses).

A model file is TOML with these tables (``models/README.md`` has a worked example):

``[model]``
    ``name``, ``description``; optional ``source``. Time ``t`` is in days.
``[states.<name>]``
    ``unit``, ``initial`` (a number, in the state's unit, or an expression of parameters and
    constants, whose unit is checked), optional
    ``description``. The order of the tables is the order of the state vector.
``[parameters.<name>]``
    as in every model file: ``value``, ``unit``, ``bounds``, ``transform``, ``cv_percent``,
    ``source``, optional ``group``, ``description``, ``prior_sd``, ``prior_source``, ``prior_center``
    (:func:`il2treg.spec.parse_parameter`). Values are held in il2treg's internal units where
    :mod:`il2treg.units` knows the unit (so ``ka`` may be given in 1/h and reads 1/day in the
    equations), and as written otherwise.
``[constants.<name>]``
    fixed numbers with a unit: ``value``, ``unit``, ``source``, optional ``description``.
``[quantities]``
    named intermediate quantities, ``name = "expression"``, usable in equations, observables and
    other quantities (in any order; a circular definition is an error).
``[equations]``
    one right-hand side per state, ``state = "expression"``: :math:`d\,state/dt` in the state's
    unit per day.
``[observables.<name>]``
    ``unit`` and ``expression``; optional ``description``. These are the DVIDs of datasets.
``[doses.<name>]``
    a dosing input: ``state`` (where a dose goes), optional ``unit`` (of the dose amounts in
    regimens and datasets, converted to the state's unit; default the state's unit),
    ``bioavailability`` (dimensionless), ``lag`` (days) and, for a zero-order infusion,
    ``duration`` (days; NONMEM's modelled duration D1), each an expression of parameters. Without a
    ``duration`` a dose is a bolus.

**Variants.** ``[model] base = "other"`` (a model in ``models/`` or a path relative to the file)
makes a file a variant of another: it starts from every table of the base, its own entries
replace or add those of the same name (a parameter, state, quantity, equation, observable or
dose as a whole), and ``[model] remove = ["name", ...]`` deletes declared names (a removed state
loses its equation). The result is checked like any file. ``il2_treg_sledai_no_delay`` is the
reference without its transit compartments. ``load_model(variant, base=other)`` applies a
variant's own entries to another model (:func:`rebased`): a drug variant over a challenger
mechanism, without a file for each pair.

Expressions use ``+ - * / ^ (or **)``, numbers, the declared names, ``t``, and ``exp``, ``log``,
``sqrt``, ``tanh``, ``abs``, ``max``, ``min``, ``Piecewise``. Their units are checked on load
(:mod:`il2treg.model.dimensions`). Every problem raises :class:`il2treg.errors.ModelFileError`,
which names the file, the key and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import keyword
import math
import re
import tokenize
from pathlib import Path

import sympy
from sympy.parsing.sympy_parser import convert_xor, parse_expr, standard_transformations

from il2treg import units
from il2treg.errors import ModelFileError, SpecError, UnitError
from il2treg.model import dimensions
from il2treg.spec import ParamSpec, parse_parameter, read_toml, resolve_model_path

TABLES = ("model", "states", "parameters", "constants", "quantities", "equations", "observables", "doses")
#: The symbol of time (days from the first dose); no declared name may use it.
TIME = "t"
_FUNCTIONS = {
    "exp": sympy.exp, "log": sympy.log, "sqrt": sympy.sqrt, "tanh": sympy.tanh, "abs": sympy.Abs,
    "Abs": sympy.Abs, "max": sympy.Max, "Max": sympy.Max, "min": sympy.Min, "Min": sympy.Min,
    "Piecewise": sympy.Piecewise, "pi": sympy.pi,
}  # fmt: skip
#: Names a file may not declare: the functions of the expressions and the names sympy's parser reads.
_RESERVED = frozenset({*_FUNCTIONS, "Integer", "Float", "Rational", "Symbol", "Function", "True", "False", "E", "I", "oo", "nan"})
_STATE_FIELDS = ("unit", "initial", "description")
_CONSTANT_FIELDS = ("value", "unit", "source", "description")
_OBSERVABLE_FIELDS = ("unit", "expression", "description")
_DOSE_FIELDS = ("state", "unit", "bioavailability", "lag", "duration", "description")


@dataclasses.dataclass(frozen=True)
class State:
    """A state of the ODE: its unit and initial value (an expression of parameters and constants)."""

    name: str
    unit: str
    initial: str
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Constant:
    """A fixed number with a unit and a source (a unit conversion, a molecular weight)."""

    name: str
    value: float
    unit: str
    source: str
    description: str = ""


@dataclasses.dataclass(frozen=True)
class Observable:
    """What can be measured: an expression of states, parameters, quantities and time."""

    name: str
    unit: str
    expression: str
    description: str = ""


@dataclasses.dataclass(frozen=True)
class DoseInput:
    """A dosing input: the state a dose enters, and the expressions of its bioavailability, lag and
    (a zero-order infusion) duration.

    ``scale`` converts a dose amount in ``unit`` to the state's unit (``IU`` into a state in
    ``MIU``: 1e-6).
    """

    name: str
    state: str
    unit: str
    scale: float
    bioavailability: str | None = None
    lag: str | None = None
    description: str = ""
    duration: str | None = None


@dataclasses.dataclass(frozen=True)
class ModelDefinition:
    """A checked model file (hashable, so that ``jax.jit`` can take it as static configuration).

    Every expression has been parsed, every name resolved and every unit checked.
    ``quantities`` are in an order in which each uses only those before it.
    ``equations[k]`` is the right-hand side of ``states[k]``.
    """

    name: str
    description: str
    path: str
    parameters: tuple[ParamSpec, ...]
    constants: tuple[Constant, ...]
    states: tuple[State, ...]
    quantities: tuple[tuple[str, str], ...]
    equations: tuple[str, ...]
    observables: tuple[Observable, ...]
    doses: tuple[DoseInput, ...]

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.states)

    @property
    def observable_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.observables)


def _error(path: str, key: str, problem: str, fix: str) -> ModelFileError:
    return ModelFileError(path, key, problem, fix)


def _parameter_to_internal(value: float, unit: str) -> tuple[float, str]:
    """il2treg's internal unit of the same dimension where :mod:`il2treg.units` knows ``unit``
    (1/h -> 1/day); otherwise ``unit`` itself. Conversions that change the dimension (mg or
    pg/mL to IU or pM through aldesleukin's specific activity) hold for IL-2 only and are not
    made: a model file may be of any drug."""
    try:
        declared = dimensions.parse_unit(unit)
    except dimensions.DimensionError as err:
        raise UnitError(f"{err}. Fix: use a unit such as 1/day, L, pM, nM, MIU, mg/L, cells/uL or 1") from None
    try:
        internal_value, internal_unit = units.to_internal(value, unit)
    except UnitError:
        return _per_day(value, unit, declared)
    if declared.dimensionality != dimensions.parse_unit(internal_unit).dimensionality:
        return value, unit
    return internal_value, internal_unit


_OTHER_TIME = re.compile(r"\b(h|hr|hour|hours|min|minute|minutes|s|sec|second|seconds|week|weeks)\b")


def _per_day(value: float, unit: str, declared) -> tuple[float, str]:
    """A unit :mod:`il2treg.units` does not know, with its time written in days (``L/h/kg`` is
    held in ``L/day/kg``, times 24), since the equations' time is days; otherwise as written."""
    in_days = _OTHER_TIME.sub("day", unit)
    if in_days == unit:
        return value, unit
    factor = (declared / dimensions.parse_unit(in_days)).to("dimensionless").magnitude
    return float(value * factor), in_days


def _fields(path: str, key: str, table, allowed: tuple[str, ...], required: tuple[str, ...]) -> dict:
    if not isinstance(table, dict):
        raise _error(path, key, f"must be a table, got {table!r}", f"write [{key}] with the fields {', '.join(required)}")
    for field in table:
        if field not in allowed:
            raise _error(path, f"{key}.{field}", "unknown field", f"use only {', '.join(allowed)}")
    for field in required:
        if field not in table:
            raise _error(path, f"{key}.{field}", "missing", f"add `{field} = ...` to [{key}]")
    return table


def _unit(path: str, key: str, text) -> str:
    try:
        dimensions.parse_unit(text)
    except dimensions.DimensionError as err:
        raise _error(path, key, str(err), "write a unit such as 1/day, L, pM, MIU, mg/L, cells/uL, points or 1") from None
    return text


def _parse(path: str, key: str, text, symbols: dict[str, sympy.Symbol]) -> sympy.Expr:
    """The sympy expression of ``text``; every name must be one of ``symbols`` or a known function."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise _error(path, key, f"must be an expression in quotes or a number, got {text!r}", 'write e.g. "ka * depot"')
    if not isinstance(text, str):
        return sympy.Float(text) if isinstance(text, float) else sympy.Integer(text)
    _only_arithmetic(path, key, text)
    namespace = {"__builtins__": {}, "Integer": sympy.Integer, "Float": sympy.Float, "Rational": sympy.Rational,
                 "Symbol": sympy.Symbol, "Function": sympy.Function, **_FUNCTIONS}  # fmt: skip
    try:
        expr = parse_expr(text, local_dict=dict(symbols), global_dict=namespace,
                          transformations=(*standard_transformations, convert_xor), evaluate=True)  # fmt: skip
    except (SyntaxError, TypeError, ValueError, AttributeError, NameError, tokenize.TokenError, sympy.SympifyError) as err:
        raise _error(path, key, f"{text!r} is not an expression ({type(err).__name__}: {err})", "correct the expression") from None
    if not isinstance(expr, sympy.Expr):
        raise _error(path, key, f"{text!r} is not an expression", "write an arithmetic expression")
    known = set(symbols.values())
    unknown = sorted(str(s) for s in expr.free_symbols if s not in known)
    calls = sorted(str(f.func) for f in expr.atoms(sympy.core.function.AppliedUndef))
    for name in calls + unknown:
        close = difflib.get_close_matches(name, list(symbols) + list(_FUNCTIONS), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise _error(path, key, f"unknown symbol {name!r} in {text!r}",
                     f"{hint}declare it as a state, parameter, constant or quantity, or use a known function "
                     f"({', '.join(sorted(set(_FUNCTIONS) - {'Abs', 'Max', 'Min'}))})")  # fmt: skip
    return expr


_OPERATORS = frozenset({"+", "-", "*", "/", "^", "**", "(", ")", ",", "<", ">", "<=", ">=", "==", "!=", "&", "|", "~"})


def _only_arithmetic(path: str, key: str, text: str) -> None:
    """Refuse anything but names, numbers and arithmetic before sympy evaluates the text (no
    attribute access, indexing, keywords or statements: a model file is data, never code)."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError) as err:
        raise _error(path, key, f"{text!r} is not an expression ({err})", "correct the expression") from None
    for token in tokens:
        kind, value = token.type, token.string
        bad = (kind == tokenize.NAME and ((keyword.iskeyword(value) and value not in ("True", "False")) or value.startswith("_"))) or \
              (kind == tokenize.OP and value not in _OPERATORS) or \
              kind not in (tokenize.NAME, tokenize.NUMBER, tokenize.OP, tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER)  # fmt: skip
        if bad:
            raise _error(path, key, f"{value!r} is not allowed in an expression ({text!r})",
                         "use names, numbers, + - * / ^, comparisons and the functions exp, log, sqrt, tanh, abs, max, min, Piecewise")  # fmt: skip


def _order_quantities(path: str, exprs: dict[str, sympy.Expr]) -> list[str]:
    """The quantities in an order where each uses only earlier ones; a cycle is an error naming it."""
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = being visited, 2 = done

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = [*trail[trail.index(name) :], name]
            raise _error(path, f"quantities.{name}", f"circular definition {' -> '.join(cycle)}",
                         "define one of these quantities without the others")  # fmt: skip
        state[name] = 1
        for s in sorted(exprs[name].free_symbols, key=str):
            if str(s) in exprs:
                visit(str(s), [*trail, name])
        state[name] = 2
        order.append(name)

    for name in exprs:
        visit(name, [])
    return order


def parse_model(data: dict, *, where: str = "<model>") -> ModelDefinition:
    """Check a parsed model file (a dict from TOML) and return its :class:`ModelDefinition`.

    Raises:
        ModelFileError: naming ``where``, the key and the fix (:class:`il2treg.errors.SpecError`,
            its parent, for a parameter table, naming the parameter and its field).
    """
    path = where
    data = with_base(data, where)
    for key in data:
        if key == "structure":
            raise _error(path, key, "structural switches are no longer a table",
                         'write the variant as a model file with [model] base = "..." (models/README.md, "Variants")')  # fmt: skip
        if key not in TABLES:
            close = difflib.get_close_matches(key, TABLES, n=1)
            raise _error(path, key, "unknown table", f"{'did you mean [' + close[0] + ']? ' if close else ''}use {', '.join(f'[{t}]' for t in TABLES)}")
    meta = _fields(path, "model", data.get("model", {}), ("name", "description", "source", "base", "remove"), ("name",))
    if not isinstance(meta["name"], str) or not meta["name"].strip():
        raise _error(path, "model.name", f"must be a non-empty string, got {meta['name']!r}", 'write name = "my_model"')
    for table in ("states", "parameters", "equations", "observables"):
        if not isinstance(data.get(table), dict) or not data[table]:
            raise _error(path, table, "missing or empty", f"add [{table}] (models/README.md shows the format)")

    # Names: one kind each, never `t`.
    kinds: dict[str, str] = {}
    for table in ("states", "parameters", "constants", "quantities"):
        section = data.get(table, {})
        if not isinstance(section, dict):
            raise _error(path, table, "must be a table", f"write [{table}] with one entry per name")
        for name in section:
            if name == TIME:
                raise _error(path, f"{table}.{name}", f"{TIME!r} is time (days) and cannot be declared", "rename it")
            if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
                raise _error(path, f"{table}.{name}", "is not a valid name",
                             "use letters, digits and _, starting with a letter, and not a Python keyword")  # fmt: skip
            if name in _RESERVED:
                raise _error(path, f"{table}.{name}", f"{name!r} is the name of a function of the expressions", "rename it")
            if name in kinds:
                raise _error(path, f"{table}.{name}", f"duplicate name: already declared in [{kinds[name]}]",
                             "give each state, parameter, constant and quantity its own name")  # fmt: skip
            kinds[name] = table
    symbols = {name: sympy.Symbol(name, real=True) for name in [*kinds, TIME]}

    # Parameters and constants, with their units.
    for name, table in data["parameters"].items():
        if not isinstance(table, dict):
            raise _error(path, f"parameters.{name}", f"must be a table, got {table!r}",
                         f"write [parameters.{name}] with value, unit, bounds, transform, cv_percent and source")  # fmt: skip
    parameters = tuple(parse_parameter(name, table, path, to_internal=_parameter_to_internal) for name, table in data["parameters"].items())
    unit_of: dict[sympy.Symbol, object] = {symbols[TIME]: dimensions.parse_unit("day")}
    for p in parameters:
        unit_of[symbols[p.name]] = dimensions.parse_unit(p.internal_unit)
    constants = []
    for name, table in data.get("constants", {}).items():
        key = f"constants.{name}"
        table = _fields(path, key, table, _CONSTANT_FIELDS, ("value", "unit", "source"))
        value = table["value"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise _error(path, f"{key}.value", f"must be a finite number, got {value!r}", "write a number")
        constants.append(Constant(name, float(value), _unit(path, f"{key}.unit", table["unit"]), str(table["source"]), str(table.get("description", ""))))
        unit_of[symbols[name]] = dimensions.parse_unit(table["unit"])
    fixed = {symbols[n] for n, k in kinds.items() if k in ("parameters", "constants")}

    # States and their initial values (parameters and constants only).
    states = []
    for name, table in data["states"].items():
        key = f"states.{name}"
        table = _fields(path, key, table, _STATE_FIELDS, ("unit", "initial"))
        unit = _unit(path, f"{key}.unit", table["unit"])
        unit_of[symbols[name]] = dimensions.parse_unit(unit)
        initial = _parse(path, f"{key}.initial", table["initial"], {n: s for n, s in symbols.items() if s in fixed})
        bare = not isinstance(table["initial"], str)  # a number: in the state's unit
        states.append((State(name, unit, str(table["initial"]), str(table.get("description", ""))), None if bare else initial))

    # Quantities: parsed, ordered, and their units worked out in that order.
    quantity_table = data.get("quantities", {})
    parsed = {name: _parse(path, f"quantities.{name}", text, symbols) for name, text in quantity_table.items()}
    order = _order_quantities(path, parsed)
    for name in order:
        unit_of[symbols[name]] = _unit_of(path, f"quantities.{name}", parsed[name], unit_of)

    for state, initial in states:
        if initial is not None:
            _check(path, f"states.{state.name}.initial", initial, unit_of, unit_of[symbols[state.name]], state.unit)

    # Equations: one per state, in the state's unit per day.
    equations_table = data["equations"]
    for name in equations_table:
        if kinds.get(name) != "states":
            close = difflib.get_close_matches(name, [s.name for s, _ in states], n=1)
            raise _error(path, f"equations.{name}", "an equation for something that is not a state",
                         f"{'did you mean ' + repr(close[0]) + '? ' if close else ''}declare [states.{name}] or remove the equation")  # fmt: skip
    day = dimensions.parse_unit("day")
    for state, _ in states:
        if state.name not in equations_table:
            raise _error(path, f"equations.{state.name}", f"state {state.name!r} has no equation",
                         f'add {state.name} = "..." to [equations] (0 for a constant state)')  # fmt: skip
        expr = _parse(path, f"equations.{state.name}", equations_table[state.name], symbols)
        expected = unit_of[symbols[state.name]] / day
        _check(path, f"equations.{state.name}", expr, unit_of, expected, f"{state.unit}/day")

    # Observables.
    observables = []
    for name, table in data["observables"].items():
        key = f"observables.{name}"
        if name in kinds and kinds[name] != "states":  # an observable may be named after the state it reads
            raise _error(path, key, f"duplicate name: already declared in [{kinds[name]}]", "give the observable its own name")
        table = _fields(path, key, table, _OBSERVABLE_FIELDS, ("unit", "expression"))
        unit = _unit(path, f"{key}.unit", table["unit"])
        expr = _parse(path, f"{key}.expression", table["expression"], symbols)
        _check(path, f"{key}.expression", expr, unit_of, dimensions.parse_unit(unit), unit)
        observables.append(Observable(name, unit, str(table["expression"]), str(table.get("description", ""))))

    # Dosing inputs.
    doses = []
    fixed_symbols = {n: s for n, s in symbols.items() if s in fixed}
    dose_table = data.get("doses", {})
    if not isinstance(dose_table, dict):
        raise _error(path, "doses", f"must be tables [doses.<name>], got {dose_table!r}", "write [doses.<name>] with state = \"<a state>\"")
    for name, table in dose_table.items():
        key = f"doses.{name}"
        table = _fields(path, key, table, _DOSE_FIELDS, ("state",))
        if not isinstance(table["state"], str) or kinds.get(table["state"]) != "states":
            raise _error(path, f"{key}.state", f"dose into {table['state']!r}, which is not a state",
                         f"use one of {', '.join(s.name for s, _ in states)}")  # fmt: skip
        for field, unit in (("bioavailability", "1"), ("lag", "day"), ("duration", "day")):
            if field in table:
                expr = _parse(path, f"{key}.{field}", table[field], fixed_symbols)
                if isinstance(table[field], str):  # a number is in days (lag, duration) or a fraction
                    _check(path, f"{key}.{field}", expr, unit_of, dimensions.parse_unit(unit), unit)
                if field == "duration" and not isinstance(table[field], str) and not table[field] > 0:
                    raise _error(path, f"{key}.duration", f"must be positive, got {table[field]!r}", "give the infusion a duration > 0 (days), or remove it for a bolus")
        state_unit = next(s.unit for s, _ in states if s.name == table["state"])
        amount_unit = _unit(path, f"{key}.unit", table.get("unit", state_unit))
        ratio = dimensions.parse_unit(amount_unit) / dimensions.parse_unit(state_unit)
        if not ratio.dimensionless:
            raise _error(path, f"{key}.unit", f"doses in [{amount_unit}] cannot enter {table['state']!r}, which is in [{state_unit}]",
                         f"give the doses a unit of the same dimension as {state_unit}")  # fmt: skip
        doses.append(DoseInput(name, table["state"], amount_unit, float(ratio.to("dimensionless").magnitude),
                               _text(table.get("bioavailability")), _text(table.get("lag")), str(table.get("description", "")),
                               _text(table.get("duration"))))  # fmt: skip

    return ModelDefinition(
        name=meta["name"],
        description=str(meta.get("description", "")),
        path=path,
        parameters=parameters,
        constants=tuple(constants),
        states=tuple(s for s, _ in states),
        quantities=tuple((name, str(quantity_table[name])) for name in order),
        equations=tuple(str(equations_table[s.name]) for s, _ in states),
        observables=tuple(observables),
        doses=tuple(doses),
    )


def _text(value) -> str | None:
    return None if value is None else str(value)


def _unit_of(path: str, key: str, expr: sympy.Expr, unit_of: dict):
    try:
        return dimensions.unit_of(expr, unit_of)
    except dimensions.DimensionError as err:
        raise _error(path, key, f"unit mismatch: {err}", "make both sides of each sum, and every exp/log argument, agree in unit") from None


def _check(path: str, key: str, expr: sympy.Expr, unit_of: dict, expected, expected_text: str) -> None:
    found = _unit_of(path, key, expr, unit_of)
    if found is not None and not dimensions.same(found, expected):
        raise _error(path, key, f"unit mismatch: the expression is in [{dimensions.describe(found)}], it should be in [{expected_text}]",
                     "correct the expression or the declared unit (a conversion factor belongs in [constants])")  # fmt: skip


#: The tables whose entries are declared names (a variant replaces, adds or removes them by name).
_NAMED_TABLES = ("states", "parameters", "constants", "quantities", "equations", "observables", "doses")


def with_base(data: dict, where: str, seen: tuple[str, ...] = ()) -> dict:
    """``data`` with its ``[model] base`` resolved (module docstring, "Variants"); ``data``
    itself when it has none. Bases may be variants in turn; a cycle is an error."""
    meta = data.get("model")
    if not isinstance(meta, dict) or "base" not in meta:
        if isinstance(meta, dict) and "remove" in meta:
            raise _error(where, "model.remove", "removes names from a base, but the file has no base", 'add base = "..." or delete remove')
        return data
    base = meta["base"]
    if not isinstance(base, str) or not base:
        raise _error(where, "model.base", f"must be a model name or a path, got {base!r}", 'write base = "il2_treg_sledai"')
    beside = Path(where).parent / base
    try:
        base_path = beside if beside.suffix == ".toml" and beside.is_file() else resolve_model_path(base)
    except SpecError as err:
        raise _error(where, "model.base", str(err).split(" Fix:")[0], "name a model in models/ or a .toml file beside this one") from None
    here = str(Path(where).resolve())
    if str(base_path.resolve()) in (*seen, here):
        raise _error(where, "model.base", f"the bases form a cycle through {str(base_path)!r}", "make the chain of bases end in a file without one")
    merged = with_base(read_toml(base_path), str(base_path), (*seen, here))
    out = {table: dict(merged.get(table, {})) for table in _NAMED_TABLES if table in merged}
    for table, entries in data.items():
        if table == "model":
            continue
        if table in _NAMED_TABLES and isinstance(entries, dict):
            out[table] = {**out.get(table, {}), **entries}
        else:
            out[table] = entries
    remove = meta.get("remove", [])
    if not isinstance(remove, list) or not all(isinstance(n, str) for n in remove):
        raise _error(where, "model.remove", f"must be a list of names, got {remove!r}", 'write remove = ["mtt", "transit_1"]')
    for name in remove:
        found = [table for table in _NAMED_TABLES if name in out.get(table, {})]
        if not found:
            raise _error(where, "model.remove", f"{name!r} is not declared in the base {base!r}", "remove only names the base declares")
        for table in found:
            del out[table][name]
        if "states" in found and name in out.get("equations", {}):
            del out["equations"][name]
    out["model"] = {k: v for k, v in meta.items() if k not in ("base", "remove")}
    return out


def rebased(data: dict, where: str, base: str | Path) -> dict:
    """A variant's ``data`` with its ``[model] base`` replaced by ``base`` and its name by
    ``<name>_on_<base's stem>``: the variant's own entries applied to another model."""
    meta = data.get("model")
    if not isinstance(meta, dict) or "base" not in meta:
        raise _error(where, "model.base", "the file is not a variant, so it has no base to replace",
                     "give base= only for a file with [model] base = \"...\" (models/README.md, \"Variants\")")  # fmt: skip
    return {**data, "model": {**meta, "base": str(base), "name": f"{meta.get('name', Path(where).stem)}_on_{Path(str(base)).stem}"}}


def read_model_file(path: str | Path) -> ModelDefinition:
    """Read and check a model file.

    Raises:
        ModelFileError: the file is missing, not TOML, or fails a check (the message names the key).
    """
    return parse_model(read_toml(path), where=str(path))


def symbols_of(defn: ModelDefinition) -> dict[str, sympy.Symbol]:
    """The sympy symbol of every declared name and of time, as :func:`parse_model` made them."""
    names = [*defn.state_names, *defn.parameter_names, *(c.name for c in defn.constants), *(q for q, _ in defn.quantities), TIME]
    return {n: sympy.Symbol(n, real=True) for n in names}


def expression(defn: ModelDefinition, text: str) -> sympy.Expr:
    """Parse one of ``defn``'s (already checked) expressions."""
    return _parse(defn.path, "expression", text, symbols_of(defn))
