"""The mechanistic model: parameters and equations, and the :class:`Model` that joins them.

A model is a file in ``models/`` (or anywhere): its parameters (values, units, bounds,
variability, sources) and its mechanism as equations (:mod:`.format`, checked for units by
:mod:`.dimensions`, made into JAX code by :mod:`.compile`). The engine sees the equations through
the :class:`Mechanism` protocol (:mod:`.mechanism`), which a Python class may also implement.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from il2treg.errors import SpecError
from il2treg.events import DosingInput
from il2treg.model.mechanism import Equations, Mechanism
from il2treg.spec import ModelSpec, read_toml, resolve_model_path


class Parameters(eqx.Module):
    """Parameter values in internal units (days, L, pM, cells/uL), one row per patient if batched.

    Attributes:
        values: ``[..., n_params]`` float64 array, columns in the order of ``names``.
        names: parameter names (static).
    """

    values: Float[Array, "*batch params"]
    names: tuple[str, ...] = eqx.field(static=True)

    def __getitem__(self, name: str) -> Float[Array, "*batch"]:
        return self.values[..., self._index(name)]

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise SpecError(f"unknown parameter {name!r}. Fix: use one of {', '.join(self.names)}.") from None

    @property
    def batch_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[:-1])

    def as_dict(self) -> dict[str, Float[Array, "*batch"]]:
        return {n: self.values[..., i] for i, n in enumerate(self.names)}

    def replace(self, **values_internal) -> Parameters:
        """A copy with some parameters set (internal units; scalars broadcast over the batch)."""
        out = self.values
        for name, v in values_internal.items():
            out = out.at[..., self._index(name)].set(v)
        return Parameters(out, self.names)


class Model(eqx.Module):
    """A model: its parameters (validated, static) and its equations (a :class:`Mechanism`).

    Build with :func:`load_model`. A ``Model`` is a pytree with no array leaves, so it passes
    through ``jax.jit`` as static configuration.

    Attributes:
        spec: the parameters as declared in the model file.
        mechanism: the equations the engine solves: a model file's :class:`Equations`, or a
            class of one's own implementing :class:`Mechanism` (the escape hatch for what
            expressions cannot say).
    """

    spec: ModelSpec = eqx.field(static=True)
    mechanism: Mechanism = eqx.field(static=True)

    def __check_init__(self):
        if tuple(self.mechanism.parameter_names) != self.spec.names:
            raise SpecError(
                f"model {self.spec.name!r}: its equations read the parameters {', '.join(self.mechanism.parameter_names)} "
                f"but the model declares {', '.join(self.spec.names)}. Fix: declare the same parameters, in the same order."
            )

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return self.spec.names

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.mechanism.state_names)

    @property
    def observable_names(self) -> tuple[str, ...]:
        """The observables the model predicts: the DVIDs its data may use."""
        return tuple(self.mechanism.observable_names)

    @property
    def dosing_inputs(self) -> tuple[DosingInput, ...]:
        """The model's dosing inputs as a NONMEM table's CMT and RATE see them, in the order of its
        ``[doses.<name>]`` tables: the 1-based state number (CMT) each doses into, and whether it
        declares an infusion duration (so that ``RATE = -2`` may ask for it)."""
        mechanism = self.mechanism
        return tuple(DosingInput(int(s) + 1, bool(i)) for s, i in zip(mechanism.dose_states, mechanism.dose_infused, strict=True))

    def typical(self) -> Parameters:
        """The typical patient: every parameter at its declared value."""
        return Parameters(jnp.asarray([p.value for p in self.spec.params], dtype=jnp.float64), self.spec.names)

    def parameters(self, **overrides) -> Parameters:
        """Typical parameters with some values replaced, given in the units of the model file.

        ``model.parameters(ka=0.3)`` sets ka to 0.3 1/h when the file declares ka in 1/h.
        A value outside the declared bounds raises :class:`SpecError`.
        """
        values = [p.value for p in self.spec.params]
        for name, declared in overrides.items():
            ps = self.spec[name]
            internal = ps.to_internal(float(declared))
            if not ps.bounds[0] <= internal <= ps.bounds[1]:
                lo, hi = ps.to_declared(ps.bounds[0]), ps.to_declared(ps.bounds[1])
                raise SpecError(
                    f"parameter {name!r} = {declared} {ps.unit} is outside its bounds [{lo:g}, {hi:g}] {ps.unit}. "
                    "Fix: choose a value inside the bounds or edit them in the model file."
                )
            values[self.spec.names.index(name)] = internal
        return Parameters(jnp.asarray(values, dtype=jnp.float64), self.spec.names)

    def with_values(self, **overrides) -> Model:
        """A variant whose typical values are replaced (units of the model file)."""
        typical = self.parameters(**overrides)
        params = tuple(
            dataclasses.replace(ps, value=float(v), declared_value=ps.to_declared(float(v)))
            for ps, v in zip(self.spec.params, np.asarray(typical.values))
        )
        return Model(dataclasses.replace(self.spec, params=params), self.mechanism)


def load_model(name_or_path: str | Path = "il2_treg_sledai", *, base: str | Path | None = None) -> Model:
    """Load a model by name (a file in ``models/``) or from a path to a TOML file.

    The file declares its parameters and its mechanism in ``[states]``, ``[equations]``,
    ``[observables]`` and ``[doses]``, or is a variant of another (``[model] base``):
    :mod:`il2treg.model.format`, models/README.md. It is checked here and compiled to JAX code
    where first solved.

    Arguments:
        name_or_path: the model.
        base: for a variant only: apply its own entries to this model instead of the base its
            file names, e.g. a drug variant (``peg_il2_treg_sledai``) to a challenger mechanism
            (``il2_treg_sledai_receptor``). The result is named ``<variant>_on_<base>``.

    Raises:
        SpecError: a malformed parameter table; :class:`~il2treg.errors.ModelFileError` (a
            ``SpecError``) names the file, the key and the fix for anything else, including a
            ``base`` given for a file that is not a variant.
    """
    path = resolve_model_path(name_or_path)
    from il2treg.model.format import parse_model, rebased  # sympy and pint, imported where a model is loaded

    data = read_toml(path)
    if base is not None:
        data = rebased(data, str(path), base)
    definition = parse_model(data, where=str(path))
    spec = ModelSpec(name=definition.name, description=definition.description, params=definition.parameters, path=str(path))
    return Model(spec, Equations(definition))


def sample_population(
    model: Model, n: int, seed: int = 0, *, typical: Parameters | None = None
) -> Parameters:
    r"""Draw ``n`` virtual patients with the model's between-patient variability.

    Each parameter with ``cv_percent > 0`` is log-normal around its typical value:
    :math:`\theta_i = \theta\, e^{\eta_i}`, :math:`\eta_i \sim N(0, \omega^2)`,
    :math:`\omega^2 = \ln(1 + CV^2)`; the others are fixed at the typical value.
    Draws falling outside a parameter's bounds are clipped to them.

    Returns:
        :class:`Parameters` with ``values`` of shape ``[n, n_params]``.
    """
    if n < 1:
        raise SpecError(f"n must be a positive number of patients, got {n}.")
    base = model.typical() if typical is None else typical
    omega = jnp.asarray([p.omega for p in model.spec.params])
    eta = jax.random.normal(jax.random.PRNGKey(seed), (n, len(omega)), dtype=jnp.float64) * omega
    lo = jnp.asarray([p.bounds[0] for p in model.spec.params])
    hi = jnp.asarray([p.bounds[1] for p in model.spec.params])
    values = jnp.clip(base.values * jnp.exp(eta), lo, hi)
    return Parameters(values, base.names)


def draw_typical(
    model: Model, n: int, seed: int | np.random.Generator = 0, *, names=None, typical=None
) -> Parameters:
    r"""``n`` draws of the typical (population) parameters from the priors in the model file:
    parameter uncertainty, as opposed to the between-patient variability of
    :func:`sample_population`.

    A parameter with ``prior_sd`` :math:`s` and value :math:`v` is drawn on its estimation scale,
    :math:`z \sim N(0, s^2)`: ``log`` :math:`v e^{z}`, ``logit``
    :math:`\mathrm{expit}(\mathrm{logit}\,v + z)`, ``identity`` :math:`v + z`; then clipped to its
    bounds. The others keep :math:`v`. The draws are about the value, the model's current
    estimate, also where the file centres the prior elsewhere (``prior_center``: a value estimated
    from data, whose prior stays the literature's).

    Arguments:
        names: the parameters to draw (default: every one with a ``prior_sd``); each must have one.
        typical: values to draw about, ``[n_params]`` or ``[n, n_params]`` (default the model's).
        seed: an integer, or a numpy ``Generator`` to draw from.

    Returns:
        :class:`Parameters` ``[n, n_params]``.
    """
    if int(n) < 1:
        raise SpecError(f"n must be a positive number of draws, got {n}.")
    params = model.spec.params
    by_name = {p.name: k for k, p in enumerate(params)}
    if names is None:
        names = [p.name for p in params if p.prior_sd is not None]
    names = list(dict.fromkeys([names] if isinstance(names, str) else names))  # a name twice is drawn once
    for name in names:
        if name not in by_name:
            raise SpecError(f"model {model.name!r} has no parameter {name!r} to draw from its prior. Fix: use some of {', '.join(by_name)}.")
        if params[by_name[name]].prior_sd is None:
            raise SpecError(f"parameter {name!r} of model {model.name!r} declares no prior_sd, so its uncertainty is unknown. "
                            f"Fix: add prior_sd (and prior_source) to [parameters.{name}] in the model file, or leave it out.")  # fmt: skip
    base = np.asarray(model.typical().values if typical is None else typical, dtype=np.float64)
    values = np.array(np.broadcast_to(base, (int(n), len(params))))
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    for name in names:
        k = by_name[name]
        p = params[k]
        z = p.prior_sd * rng.standard_normal(int(n))
        v = values[:, k]
        if p.transform == "log":
            v = v * np.exp(z)
        elif p.transform == "logit":
            v = 1.0 / (1.0 + np.exp(-(np.log(v / (1 - v)) + z)))
        else:
            v = v + z
        values[:, k] = np.clip(v, *p.bounds)
    return Parameters(jnp.asarray(values), model.parameter_names)


__all__ = ["Equations", "Mechanism", "Model", "Parameters", "draw_typical", "load_model", "sample_population"]
