r"""A checked model file turned into JAX functions: vector field, observables, initial state, doses.

Each expression of the file (:mod:`il2treg.model.format`) becomes a sympy expression; the named
quantities and the constants are substituted into the equations, observables and dose
expressions, and ``sympy.lambdify`` writes one ``jax.numpy`` function per group with common
subexpressions computed once (``cse=True``). The functions take the parameter vector in the
order of ``definition.parameters`` (internal units) and the state vector in the order of
``definition.states``:

.. math::

    \dot y = f(t, y, \theta), \qquad y(0) = y_0(\theta), \qquad o = g(t, y, \theta)

and a dose :math:`D` into input :math:`k` at time :math:`t_d` adds :math:`F_k(\theta) D` to state
``dose_states[k]`` at :math:`t_d + \mathrm{lag}_k(\theta)`, or, for an infusion, enters it at the
constant rate :math:`F_k D / d_k(\theta)` from then for the duration :math:`d_k`.

The parameters the state trajectory depends on (``ode_parameters``) are the free symbols of
:math:`f`, :math:`y_0`, :math:`F`, lag and infusion duration, read from the equations.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import sympy
from jaxtyping import Array, Float
from sympy.printing.numpy import JaxPrinter

from il2treg.model.format import TIME, ModelDefinition, expression, symbols_of


@dataclasses.dataclass(frozen=True)
class CompiledModel:
    """The JAX functions of one :class:`~il2treg.model.format.ModelDefinition` (built by :func:`compile_model`).

    Attributes:
        definition: the model file, checked.
        prepare: ``theta -> args``: the parameters and the values of the parameter-only parts of
            the vector field and the observables (:func:`hoist`), computed once per solve.
        vector_field: ``(t, y, args) -> dy/dt``, ``[states]`` (state unit per day).
        observables: ``(t, y, args) -> o``, ``[observables]`` in the declared units.
        initial_state: ``theta -> y0``, ``[states]``.
        dose_fraction: ``theta -> F``, ``[dose inputs]`` (1 where none is declared).
        dose_lag: ``theta -> lag``, ``[dose inputs]`` in days (0 where none is declared).
        dose_duration: ``theta -> duration``, ``[dose inputs]`` in days (0: a bolus).
        dose_states: for each dose input, the index of the state its doses enter.
        ode_parameters: the parameters the trajectory depends on, in parameter order.
    """

    definition: ModelDefinition
    prepare: Callable
    vector_field: Callable
    observables: Callable
    initial_state: Callable
    dose_fraction: Callable
    dose_lag: Callable
    dose_duration: Callable
    dose_states: tuple[int, ...]
    ode_parameters: tuple[str, ...]


class _Printer(JaxPrinter):
    """sympy's JAX printer with exact reciprocals: it prints :math:`x^{-n}` as ``x**(-n.0)``, a
    float power (``lax.pow``, an exponential and a logarithm, and more of them in derivatives);
    this prints ``1/x**n``, a division and an integer power."""

    def _print_Pow(self, expr, rational=False):
        if expr.exp.is_Integer and expr.exp.is_negative:
            inverse = expr.base if expr.exp == -1 else sympy.Pow(expr.base, -expr.exp, evaluate=False)
            return f"1/({self._print(inverse)})"
        return super()._print_Pow(expr, rational=rational)


#: The settings lambdify gives its own printer (names unqualified, resolved in its jax namespace).
_PRINTER = _Printer({"fully_qualified_modules": False, "inline": True, "allow_unknown_functions": True})


#: The most scalars one stack is given in a derivative (:func:`_as_vector`).
_FAN_IN = 8


def _stacked_in_groups(values) -> Float[Array, " n"]:
    groups = [jnp.stack(values[i : i + _FAN_IN]) for i in range(0, len(values), _FAN_IN)]
    return groups[0] if len(groups) == 1 else jnp.concatenate(groups)


@jax.custom_jvp
def _joined(*values: Float[Array, ""]) -> Float[Array, " n"]:
    return jnp.stack(values)


@_joined.defjvp
def _joined_jvp(primals, tangents):
    # The primal output is built exactly as _joined builds it: vmapped, jnp.stack and a
    # concatenation of stacks put the batch axis in different places, and a rule whose primal
    # output differs from its function's in that way made jacfwd or grad of a vmapped solve
    # (a batch of patients) fail with a shape error for models of more than _FAN_IN states.
    return jnp.stack(primals), _stacked_in_groups(tangents)


def _as_vector(values) -> Float[Array, " n"]:
    """The scalars ``values`` as one vector: stacked in one go, and in groups of at most
    :data:`_FAN_IN` where derivatives are taken (the same numbers, laid out for XLA).

    XLA's CPU compiler fuses a stack of up to 8 scalars into the loop that computes them but
    leaves a longer one unfused, each piece then a kernel of its own. Under forward-mode
    derivatives (a fit's sensitivities), one stack of the reference model's 16 derivatives took
    50 kernels per evaluation of the vector field with its tangents (the hand-written code,
    whose derivatives come in 4 pieces, 18), and a fit's sensitivity solves ran 1.15-1.19x as
    long as the hand-written code's; in groups of 8, 15 kernels and 0.90-1.00x. Without
    derivatives (a simulation) the one stack fuses whole, and groups ran 1.1-1.4x as long for
    2,000 patients (jax 0.10.2; ``benchmarks/fit_engine.py``, ``benchmarks/simulate_against.py``).
    """
    return _joined(*(jnp.asarray(v, dtype=jnp.float64) for v in values))


def _as_scalars(values) -> tuple[Float[Array, ""], ...]:
    return tuple(jnp.asarray(v, dtype=jnp.float64) for v in values)


def hoist(
    exprs: list[sympy.Expr], fixed: set[sympy.Symbol]
) -> tuple[list[sympy.Expr], list[tuple[sympy.Symbol, sympy.Expr]]]:
    """Move every part of ``exprs`` that reads only ``fixed`` symbols (parameters) out into named
    values computed once per solve, not at every step of the solver.

    The largest such subexpressions are taken, and within a sum or a product all the terms or
    factors that read only parameters are taken together (``CL / V`` of ``-CL / V * central``).
    Returns the rewritten expressions and the ``(symbol, expression)`` of each hoisted value.
    """
    table: dict[sympy.Expr, sympy.Symbol] = {}

    def name(e: sympy.Expr) -> sympy.Symbol:
        if e not in table:
            table[e] = sympy.Symbol(f"_hoisted_{len(table)}", real=True)
        return table[e]

    def only_fixed(e) -> bool:
        return bool(e.free_symbols) and e.free_symbols <= fixed

    def visit(e):
        if e.is_Atom or isinstance(e, sympy.logic.boolalg.BooleanAtom):
            return e
        if only_fixed(e):
            return name(e)
        if isinstance(e, sympy.Add | sympy.Mul):
            constant = [a for a in e.args if only_fixed(a) or a.is_Number]
            rest = [visit(a) for a in e.args if not (only_fixed(a) or a.is_Number)]
            if any(not a.is_Number for a in constant) and (len(constant) > 1 or not constant[0].is_Atom):
                constant = [name(e.func(*constant))]
            return e.func(*constant, *rest)
        return e.func(*[visit(a) for a in e.args])

    return [visit(e) for e in exprs], [(symbol, e) for e, symbol in table.items()]


@functools.cache
def compile_model(defn: ModelDefinition) -> CompiledModel:
    """The JAX functions of ``defn`` (cached: one build per model definition and process)."""
    symbols = symbols_of(defn)
    states = [symbols[s] for s in defn.state_names]
    theta = [symbols[p] for p in defn.parameter_names]
    t = symbols[TIME]
    known: dict[sympy.Symbol, sympy.Expr] = {symbols[c.name]: sympy.Float(c.value) for c in defn.constants}
    for name, text in defn.quantities:  # in dependence order: each uses only those before it
        known[symbols[name]] = expression(defn, text).xreplace(known)

    def resolved(text: str | None, default: float) -> sympy.Expr:
        return sympy.Float(default) if text is None else expression(defn, text).xreplace(known)

    field = [resolved(text, 0.0) for text in defn.equations]
    observed = [resolved(o.expression, 0.0) for o in defn.observables]
    initial = [resolved(s.initial, 0.0) for s in defn.states]
    fraction = [resolved(d.bioavailability, 1.0) for d in defn.doses]
    lag = [resolved(d.lag, 0.0) for d in defn.doses]
    duration = [resolved(d.duration, 0.0) for d in defn.doses]

    def build(exprs: list[sympy.Expr], *groups: list[sympy.Symbol], scalars: bool = False) -> Callable:
        """``(*vectors) -> [len(exprs)]``, one vector (or tuple of scalars) per group of symbols;
        only the entries the expressions read are taken out (a smaller program to trace and
        compile). With ``scalars`` the result is a tuple of scalars, not one array."""
        if not exprs:
            return lambda *_: () if scalars else jnp.zeros(0)
        read = set().union(*(e.free_symbols for e in exprs))
        taken = [[k for k, symbol in enumerate(group) if symbol in read] for group in groups]
        args = [group[k] for group, ks in zip(groups, taken) for k in ks]
        fn = sympy.lambdify(args, exprs, modules="jax", printer=_PRINTER, cse=True, docstring_limit=0)
        pack = _as_scalars if scalars else _as_vector
        return lambda *vectors: pack(fn(*(v[k] for v, ks in zip(vectors, taken) for k in ks)))

    # Parameter-only parts of the vector field and the observables are computed once per solve.
    rewritten, hoisted = hoist(field + observed, set(theta))
    field_h, observed_h = rewritten[: len(field)], rewritten[len(field) :]
    pre = [symbol for symbol, _ in hoisted]
    # A tuple, not one array: forward-mode sensitivities (the fits) then carry tangents only in
    # the values that depend on a varied parameter (stacking would give every value a tangent).
    prepared = build([e for _, e in hoisted], theta, scalars=True)
    f = build(field_h, [t], states, theta, pre)
    g = build(observed_h, [t], states, theta, pre)
    y0 = build(initial, theta)
    fr = build(fraction, theta)
    lg = build(lag, theta)
    du = build(duration, theta)

    read = set().union(*(e.free_symbols for e in field + initial + fraction + lag + duration))
    return CompiledModel(
        definition=defn,
        prepare=lambda values: (values, prepared(values)),
        vector_field=lambda time, y, args: f((time,), y, *args),
        observables=lambda time, y, args: g((time,), y, *args),
        initial_state=y0,
        dose_fraction=fr,
        dose_lag=lg,
        dose_duration=du,
        dose_states=tuple(defn.state_names.index(d.state) for d in defn.doses),
        ode_parameters=tuple(p for p in defn.parameter_names if symbols[p] in read),
    )
