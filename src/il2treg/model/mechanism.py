r"""What the engine needs of a model's equations: the :class:`Mechanism` protocol and its two kinds.

The solver (:func:`il2treg.simulate.solve_one`), the fits and the diagnostics see a model's
equations only through this protocol:

.. math::

    a = \mathrm{prepare}(\theta), \quad y(0) = y_0(a), \quad \dot y = f(t, y, a), \quad o = g(t, y, a)

and a dose :math:`D` of the regimen enters state ``dose_states[0]`` as
:math:`\mathrm{scale}\cdot F(a)\, D` at :math:`t_d + \mathrm{lag}(a)`: at once (a bolus), or at the
constant rate :math:`\mathrm{scale}\cdot F(a)\, D / d(a)` over the duration :math:`d(a)` (a
zero-order infusion, where ``dose_infused[0]``). ``prepare`` runs once per
solve (constants of the vector field are computed there, not at every step); ``theta`` is the
parameter vector in the order of ``parameter_names``, or a tuple of scalars (the fits pass one so
that forward-mode sensitivities skip the parameters that are not varied).

- :class:`Equations`: a model file's equations (:mod:`il2treg.model.format`), made into JAX code
  by :func:`il2treg.model.compile.compile_model`.
- a class of one's own (below). ``tests/handwritten/`` is one: the IL-2 -> Treg -> SLEDAI model
  as the Python code the engine ran before models were data, against which the model files
  ``il2_treg_sledai*.toml`` are tested.

**The escape hatch.** What expressions cannot say (a lookup table, an inner solve, a loop) can be
written as a class with the attributes and methods of :class:`Mechanism`, frozen and hashable
(``jax.jit`` takes it as static configuration), and given to ``il2treg.Model(spec, mechanism)``.
Its functions must be pure and traceable by JAX.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

if TYPE_CHECKING:  # sympy and pint are imported only where a model file is read
    from il2treg.model.format import ModelDefinition


@runtime_checkable
class Mechanism(Protocol):
    """The equations of a model as the engine calls them (module docstring).

    Attributes:
        state_names: the state vector's entries, in order.
        observable_names: the observables ``observables`` returns, in order (the DVIDs of data).
        observable_units: the unit of each observable.
        parameter_names: the entries of ``theta``, in order.
        ode_parameters: the parameters the state trajectory depends on (vector field, initial
            state, bioavailability, lag and infusion duration), in ``parameter_names`` order; a fit needs ODE
            sensitivities for these only.
        dose_states: for each dosing input, the index of the state its doses enter.
        dose_scale: for each dosing input, the factor from the dose unit to the state's unit.
        dose_infused: for each dosing input, whether its doses are zero-order infusions.
    """

    state_names: tuple[str, ...]
    observable_names: tuple[str, ...]
    observable_units: tuple[str, ...]
    parameter_names: tuple[str, ...]
    ode_parameters: tuple[str, ...]
    dose_states: tuple[int, ...]
    dose_scale: tuple[float, ...]
    dose_infused: tuple[bool, ...]

    def prepare(self, theta) -> Any:
        """The arguments of the functions below, from the parameters (internal units)."""

    def initial_state(self, args) -> Float[Array, " states"]:
        """The state at the start of the solve."""

    def vector_field(self, t, y, args) -> Float[Array, " states"]:
        """dy/dt (state units per day) at time ``t`` (days)."""

    def observables(self, t, y, args) -> Float[Array, " observables"]:
        """The observables at ``(t, y)``."""

    def dose_fraction(self, args) -> Float[Array, " inputs"]:
        """The bioavailable fraction of each dosing input."""

    def dose_lag(self, args) -> Float[Array, " inputs"]:
        """The lag (days) of each dosing input."""

    def dose_duration(self, args) -> Float[Array, " inputs"]:
        """The infusion duration (days) of each dosing input (read where ``dose_infused``)."""

    def stiffness(self, theta: Float[Array, "patients params"]) -> Float[Array, " patients"] | None:
        """A per-patient measure of the fastest rate (1/day) to order a batch by, or None."""


@dataclasses.dataclass(frozen=True)
class Equations:
    """The :class:`Mechanism` of a model file's equations. Hashable: equal files give equal objects."""

    definition: ModelDefinition

    @functools.cached_property
    def _compiled(self):
        from il2treg.model.compile import compile_model  # sympy is imported only where a model file is compiled

        return compile_model(self.definition)

    @property
    def state_names(self) -> tuple[str, ...]:
        return self.definition.state_names

    @property
    def observable_names(self) -> tuple[str, ...]:
        return self.definition.observable_names

    @property
    def observable_units(self) -> tuple[str, ...]:
        return tuple(o.unit for o in self.definition.observables)

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return self.definition.parameter_names

    @property
    def ode_parameters(self) -> tuple[str, ...]:
        return self._compiled.ode_parameters

    @property
    def dose_states(self) -> tuple[int, ...]:
        return self._compiled.dose_states

    @property
    def dose_scale(self) -> tuple[float, ...]:
        return tuple(d.scale for d in self.definition.doses)

    @property
    def dose_infused(self) -> tuple[bool, ...]:
        return tuple(d.duration is not None for d in self.definition.doses)

    def prepare(self, theta):
        return self._compiled.prepare(theta)

    def initial_state(self, args):
        return self._compiled.initial_state(args[0])

    def vector_field(self, t, y, args):
        return self._compiled.vector_field(t, y, args)

    def observables(self, t, y, args):
        return self._compiled.observables(t, y, args)

    def dose_fraction(self, args):
        return self._compiled.dose_fraction(args[0])

    def dose_lag(self, args):
        return self._compiled.dose_lag(args[0])

    def dose_duration(self, args):
        return self._compiled.dose_duration(args[0])

    def stiffness(self, theta: Float[Array, "patients params"]) -> Float[Array, " patients"]:
        r"""The fastest first-order rate at the initial state, :math:`\max_i |\partial f_i / \partial y_i|`
        (1/day; 0 where it is not finite). For a PK model it is the fastest of absorption and
        elimination; for the IL-2 model, the elimination :math:`(CL + CLR)/V` in 95.5% of 2,000
        sampled patients (absorption or the transit rate in the others). The solver orders a batch
        by it (:func:`il2treg.simulate.work_order`)."""

        def one(values):
            args = self.prepare(values)
            jacobian = jax.jacfwd(lambda y: self.vector_field(0.0, y, args))(self.initial_state(args))
            return jnp.max(jnp.abs(jnp.diagonal(jacobian)))

        return jnp.nan_to_num(jax.vmap(one)(theta), nan=0.0, posinf=0.0)

    def __hash__(self) -> int:
        return hash(self.definition)

    def __eq__(self, other) -> bool:
        return isinstance(other, Equations) and other.definition == self.definition
