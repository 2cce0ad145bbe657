r"""Units of model-file expressions: parse unit strings and check every equation.

A model file gives every state, parameter, constant and observable a unit; this module works out
the unit of each expression from the units of its symbols and says where two disagree. It uses
pint (a units library) with a small registry of its own rather than pint's default one, whose
``IU`` (an enzyme unit, mol/min) and ``point`` (a typographic length) mean other things here:

- base dimensions: time (second), length (metre), mass (gram), substance (mole), and three that
  pint lacks: drug activity (``IU``, international units), cell count (``cell``) and score
  (``point``, e.g. SELENA-SLEDAI points);
- derived units: ``min``, ``h``, ``day`` (``d``), ``week``, ``L``, ``M`` (mol/L), ``%``;
- SI prefixes p, n, u (µ), m, c, d, k, M: ``pM``, ``MIU``, ``uL``, ``mg``.

Rules, applied to the expression tree :math:`e`:

- a sum's terms have the same unit (the same dimension *and* the same scale: ``h`` plus ``day``
  is an error, not a silent conversion);
- products and quotients multiply units; a power with a numeric exponent raises the unit;
- a power with a symbolic exponent, and the argument of ``exp``, ``log``, ``sqrt``-free functions
  (exp, log, tanh, ...), must be dimensionless, and so is their value;
- ``Max``, ``Min``, ``Abs`` and ``Piecewise`` keep the unit of their arguments, which must agree;
- a number is dimensionless (so ``1 + emax * z`` is fine, ``C + 0.12`` with ``C`` in pM is not).

An expression's unit is *equal* to a declared one when their ratio is exactly 1 (to 1e-12);
pint's conversion factor is reported when only the dimensions agree.
"""

from __future__ import annotations

import functools
import math

import pint
import sympy

_DEFINITIONS = (
    "pico- = 1e-12 = p-", "nano- = 1e-9 = n-", "micro- = 1e-6 = u- = µ- = μ- = mc-", "milli- = 1e-3 = m-",
    "centi- = 1e-2 = c-", "deci- = 1e-1 = d-", "kilo- = 1e3 = k-", "mega- = 1e6 = M-",
    "second = [time] = s = sec", "minute = 60 * second = min", "hour = 60 * minute = h = hr",
    "day = 24 * hour = d = days", "week = 7 * day = weeks",
    "meter = [length] = m", "liter = decimeter ** 3 = L = l", "gram = [mass] = g",
    "mole = [substance] = mol", "molar = mole / liter = M",
    "international_unit = [activity] = IU", "cell = [cell_count] = cells", "point = [score] = points",
    "percent = 0.01 = %",
)  # fmt: skip


@functools.cache
def registry() -> pint.UnitRegistry:
    """The unit registry of model files (module docstring), built once per process."""
    reg = pint.UnitRegistry(None)
    for line in _DEFINITIONS:
        reg.define(line)
    return reg


class DimensionError(ValueError):
    """An expression whose units do not agree; the message says which part and both units."""


def parse_unit(text: str) -> pint.Quantity:
    """The unit ``text`` (``"1/day"``, ``"cells/uL"``, ``"1"``) as a pint quantity of magnitude 1.

    Raises:
        DimensionError: the text is not a unit of :func:`registry`.
    """
    if not isinstance(text, str) or not text.strip():
        raise DimensionError(f"a unit must be a non-empty string, got {text!r}")
    if text.strip() == "1":
        return registry().Quantity(1.0, "dimensionless")
    try:
        quantity = registry().Quantity(1.0, text.replace("^", "**"))
    except (pint.errors.PintError, ValueError, TypeError, AttributeError, SyntaxError) as err:
        raise DimensionError(f"unknown unit {text!r} ({err})") from None
    if not isinstance(quantity, pint.Quantity):
        raise DimensionError(f"unknown unit {text!r}")
    return quantity


def describe(unit: pint.Quantity) -> str:
    """A short spelling of a unit, ``1`` for a pure number, with its scale if it is not 1."""
    text = "1" if unit.unitless else f"{unit.units:~}"
    scale = float(unit.magnitude)
    return text if math.isclose(scale, 1.0, rel_tol=1e-12) else f"{scale:g} {text}"


def same(a: pint.Quantity, b: pint.Quantity) -> bool:
    """Whether two units are equal: the same dimension and a ratio of exactly 1 (to 1e-12)."""
    if a.dimensionality != b.dimensionality:
        return False
    ratio = (a / b).to("dimensionless").magnitude
    return math.isclose(float(ratio), 1.0, rel_tol=1e-12)


def _dimensionless(unit: pint.Quantity) -> bool:
    return same(unit, registry().Quantity(1.0, "dimensionless"))


def unit_of(expr: sympy.Expr, units: dict[sympy.Symbol, pint.Quantity | None]) -> pint.Quantity | None:
    """The unit of ``expr`` given the unit of each of its symbols (rules in the module docstring).

    Returns ``None`` for an expression that is identically 0, which has every unit (``initial =
    0`` for a state in mg, ``max(0, x)``, a piece of a ``Piecewise`` that is 0).

    Raises:
        DimensionError: naming the sub-expression whose units disagree and the units found.
    """
    one = registry().Quantity(1.0, "dimensionless")
    if expr.is_zero:
        return None
    if isinstance(expr, sympy.Symbol):
        return units[expr]
    if expr.is_Number or expr in (sympy.pi, sympy.E):
        return one
    if isinstance(expr, sympy.Add | sympy.Max | sympy.Min):
        return _common(expr, [(a, unit_of(a, units)) for a in expr.args], "adds" if isinstance(expr, sympy.Add) else "compares")
    if isinstance(expr, sympy.Mul):
        out = one
        for a in expr.args:
            u = unit_of(a, units)
            if u is None:
                return None
            out = out * u
        return out
    if isinstance(expr, sympy.Pow):
        base, exponent = expr.args
        if exponent.is_Number:
            u = unit_of(base, units)
            return None if u is None else u ** float(exponent)
        for part, name in ((exponent, "exponent"), (base, "base of a symbolic power")):
            u = unit_of(part, units)
            if u is not None and not _dimensionless(u):
                raise DimensionError(f"{expr}: the {name} {part} must be dimensionless, it is [{describe(u)}]")
        return one
    if isinstance(expr, sympy.Abs):
        return unit_of(expr.args[0], units)
    if isinstance(expr, sympy.Piecewise):
        for _, condition in expr.args:
            _check_condition(condition, units)
        return _common(expr, [(value, unit_of(value, units)) for value, _ in expr.args], "has pieces")
    if isinstance(expr, sympy.Function):
        for a in expr.args:
            u = unit_of(a, units)
            if u is not None and not _dimensionless(u):
                raise DimensionError(f"{expr}: the argument of {expr.func} must be dimensionless, {a} is [{describe(u)}]")
        return one
    raise DimensionError(f"{expr}: il2treg cannot work out the unit of a {type(expr).__name__}")


def _common(expr, parts: list, verb: str) -> pint.Quantity | None:
    """The one unit of ``parts`` (``(sub-expression, unit)``, zeros left out), or an error naming two that differ."""
    known = [(a, u) for a, u in parts if u is not None]
    for a, u in known[1:]:
        if not same(u, known[0][1]):
            raise DimensionError(f"{expr} {verb} {known[0][0]} [{describe(known[0][1])}] and {a} [{describe(u)}]")
    return known[0][1] if known else None


def _check_condition(condition, units) -> None:
    if condition in (sympy.true, sympy.false):
        return
    if isinstance(condition, sympy.And | sympy.Or | sympy.Not):
        for c in condition.args:
            _check_condition(c, units)
        return
    left, right = unit_of(condition.lhs, units), unit_of(condition.rhs, units)
    if left is not None and right is not None and not same(left, right):
        raise DimensionError(f"{condition} compares [{describe(left)}] with [{describe(right)}]")
