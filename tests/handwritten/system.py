r"""The whole model: state layout, vector field and observables, composed from the parts.

State vector (length ``7 + 3 n``, ``n`` = transit compartments):

======================  =============================================  ==========
index                   state                                          unit
======================  =============================================  ==========
0                       SC depot amount :math:`A_d`                     MIU
1                       central amount :math:`A_c`                      MIU
2 .. 2+3n               delay chains, Treg then NK then Tconv          signal (0-1)
2+3n, 3+3n, 4+3n        fold-changes :math:`R_T, R_{NK}, R_C`           1
5+3n                    CD25 on Tregs :math:`M`                         1 (rel.)
6+3n                    relative drug effect on SLEDAI :math:`E`        1 (-1 to 0)
======================  =============================================  ==========

At baseline every derivative is exactly zero (signals are measured relative to the endogenous
level), so a patient without doses stays at the initial state. Equations: :mod:`.pk`,
:mod:`.cells`, :mod:`.disease` and ``models/README.md``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
from jaxtyping import Array, Float

from handwritten import cells, disease, pk
from il2treg.observables import OBSERVABLE_NAMES, OBSERVABLES


@dataclasses.dataclass(frozen=True)
class Structure:
    """Structural switches of the hand-written model (static: changing one recompiles). In the
    package they are model variants: ``il2_treg_sledai_no_delay``, ``_no_sink``, ``_no_cd25_feedback``.

    Attributes:
        transit_compartments: length of the signal -> proliferation delay chain (0 = none).
        cd25_feedback: whether CD25 on Tregs lowers the Treg EC50.
        receptor_sink: whether IL-2 is cleared by IL-2R-bearing Tregs.
    """

    transit_compartments: int = 3
    cd25_feedback: bool = True
    receptor_sink: bool = True

#: Every parameter the equations read, in the canonical order.
PARAMETER_NAMES: tuple[str, ...] = (
    "ka", "tlag", "F", "CL", "V", "CLR", "il2_endo",
    "hill", "ec50_treg", "ec50_nk", "ec50_tconv", "mtt",
    "kout_treg", "emax_treg", "treg0",
    "kout_tconv", "emax_tconv", "tconv0",
    "kout_nk", "emax_nk", "nk0",
    "kin_cd25", "emax_cd25", "gamma_cd25",
    "sledai0", "pmax", "kpl", "imax", "r50", "kd",
)  # fmt: skip

DEPOT = 0
CENTRAL = 1


def n_states(structure: Structure) -> int:
    return 7 + 3 * structure.transit_compartments


def state_names(structure: Structure) -> tuple[str, ...]:
    n = structure.transit_compartments
    chains = tuple(f"transit_{cell}_{i + 1}" for cell in ("treg", "nk", "tconv") for i in range(n))
    return ("depot", "central", *chains, "treg_fold", "nk_fold", "tconv_fold", "cd25_rel", "sledai_effect")


def initial_state(structure: Structure) -> Float[Array, " states"]:
    """Baseline (pre-dose steady state): no drug, fold-changes and CD25 at 1, no drug effect."""
    n = structure.transit_compartments
    return jnp.concatenate([jnp.zeros(2 + 3 * n), jnp.ones(4), jnp.zeros(1)])


def _split(y: Float[Array, " states"], n: int):
    z = y[2 : 2 + 3 * n].reshape(3, n)
    folds = y[2 + 3 * n : 5 + 3 * n]  # Treg, NK, Tconv
    return y[DEPOT], y[CENTRAL], z, folds, y[5 + 3 * n], y[6 + 3 * n]


def prepare(p: dict, structure: Structure) -> dict:
    """Add the constants the vector field needs to ``p`` (computed once per solve, not per step)."""
    log_ec50 = jnp.log(jnp.stack([p["ec50_treg"], p["ec50_nk"], p["ec50_tconv"]]))
    return {
        **p,
        "log_ec50": log_ec50,
        "s0": cells.hill_log(cells.log_concentration(p["il2_endo"]), log_ec50, p["hill"]),
        "kout": jnp.stack([p["kout_treg"], p["kout_nk"], p["kout_tconv"]]),
        "emax": jnp.stack([p["emax_treg"], p["emax_nk"], p["emax_tconv"]]),
    }


def concentration_pM(y: Float[Array, " states"], p: dict) -> Float[Array, ""]:
    """Serum IL-2 (pM), endogenous plus drug."""
    return pk.exogenous_pM(y[CENTRAL], p["V"]) + p["il2_endo"]


def vector_field(t: Float[Array, ""], y: Float[Array, " states"], args) -> Float[Array, " states"]:
    """dy/dt. ``args = (p, structure)``, ``p`` from :func:`prepare` (internal units)."""
    p, structure = args
    n = structure.transit_compartments
    a_d, a_c, z, folds, cd25, effect = _split(y, n)
    sink = folds[0] * cd25 if structure.receptor_sink else 0.0
    d_depot, d_central = pk.derivatives(a_d, a_c, sink, p)
    u = cells.signal_increments(concentration_pM(y, p), cd25, p, cd25_feedback=structure.cd25_feedback)
    if n > 0:
        dz = cells.transit_derivatives(z, u, p["mtt"])
        drive = z[:, -1]
    else:
        dz = z
        drive = u
    d_folds = cells.pool_derivatives(folds, drive, p)
    d_cd25 = cells.cd25_derivative(cd25, u[0], p)
    d_effect = disease.effect_derivative(effect, folds[0], p)
    return jnp.concatenate(
        [jnp.stack([d_depot, d_central]), dz.reshape(-1), d_folds, jnp.stack([d_cd25, d_effect])]
    )


def observables(t: Float[Array, ""], y: Float[Array, " states"], args) -> Float[Array, " observables"]:
    """The observables of :data:`il2treg.observables.OBSERVABLE_NAMES`, in that order."""
    p, structure = args
    _, _, _, folds, cd25, effect = _split(y, structure.transit_compartments)
    treg = p["treg0"] * folds[0]
    nk = p["nk0"] * folds[1]
    tconv = p["tconv0"] * folds[2]
    out = {
        "il2_pM": concentration_pM(y, p),
        "treg_pct_cd4": 100.0 * treg / (treg + tconv),
        "treg_per_uL": treg,
        "tconv_per_uL": tconv,
        "nk56bright_per_uL": nk,
        "cd25_treg_rel": cd25,
        "sledai": disease.latent_sledai(t, effect, p),
    }
    return jnp.stack([out[name] for name in OBSERVABLE_NAMES])


#: Parameters the dosing reads (effective dose time t + tlag, amount F·dose) besides the vector field.
DOSING_PARAMETERS: tuple[str, ...] = ("tlag", "F")


def ode_parameters(structure: Structure) -> tuple[str, ...]:
    """The parameters the state trajectory depends on, in :data:`PARAMETER_NAMES` order.

    Those the vector field reads (found by following the data flow of its jaxpr, so a change of
    equations cannot leave this list stale) plus :data:`DOSING_PARAMETERS`. The others (baseline
    counts, the standard-of-care course, ``imax``) only scale or shift observables, so a fit needs
    no ODE sensitivities with respect to them.
    """
    import jax

    n = len(PARAMETER_NAMES)

    def field(t, y, values):
        p = prepare(dict(zip(PARAMETER_NAMES, values)), structure)
        return vector_field(t, y, (p, structure))

    closed = jax.make_jaxpr(field)(0.0, initial_state(structure), [1.0] * n)
    sources = [frozenset()] * 2 + [frozenset([k]) for k in range(n)]  # t, y carry no parameter
    read = frozenset().union(*_data_flow(closed.jaxpr, sources))
    return tuple(name for k, name in enumerate(PARAMETER_NAMES) if k in read or name in DOSING_PARAMETERS)


def _data_flow(jaxpr, sources: list[frozenset]) -> list[frozenset]:
    """For each output of ``jaxpr``, the set of input labels it depends on (sub-jaxprs followed)."""
    from jax.extend.core import Literal

    deps = dict(zip(jaxpr.invars, sources))
    for v in jaxpr.constvars:
        deps[v] = frozenset()
    of = lambda v: frozenset() if isinstance(v, Literal) else deps.get(v, frozenset())
    for eqn in jaxpr.eqns:
        ins = [of(v) for v in eqn.invars]
        sub = eqn.params.get("jaxpr")
        sub = getattr(sub, "jaxpr", sub)
        if sub is not None and hasattr(sub, "eqns") and len(sub.invars) == len(ins) and len(sub.outvars) == len(eqn.outvars):
            outs = _data_flow(sub, ins)
        else:  # any other primitive: every output may depend on every input
            outs = [frozenset().union(*ins)] * len(eqn.outvars)
        deps.update(zip(eqn.outvars, outs))
    return [of(v) for v in jaxpr.outvars]


@dataclasses.dataclass(frozen=True)
class HandWritten:
    """This module's equations as a :class:`~il2treg.model.mechanism.Mechanism`, for one ``structure``.

    Doses enter the depot (MIU) from amounts in IU, scaled by ``F`` and delayed by ``tlag``.
    """

    structure: Structure

    parameter_names = PARAMETER_NAMES
    observable_names = OBSERVABLE_NAMES
    observable_units = tuple(OBSERVABLES[name][0] for name in OBSERVABLE_NAMES)
    dose_states = (DEPOT,)
    dose_scale = (1e-6,)
    dose_infused = (False,)

    @property
    def state_names(self) -> tuple[str, ...]:
        return state_names(self.structure)

    @property
    def ode_parameters(self) -> tuple[str, ...]:
        return _ode_parameters(self.structure)

    def prepare(self, theta) -> tuple[dict, Structure]:
        return prepare({n: theta[i] for i, n in enumerate(PARAMETER_NAMES)}, self.structure), self.structure

    def initial_state(self, args) -> Float[Array, " states"]:
        return initial_state(self.structure)

    vector_field = staticmethod(vector_field)
    observables = staticmethod(observables)

    def dose_fraction(self, args) -> Float[Array, " inputs"]:
        return jnp.reshape(args[0]["F"], (1,))

    def dose_lag(self, args) -> Float[Array, " inputs"]:
        return jnp.reshape(args[0]["tlag"], (1,))

    def dose_duration(self, args) -> Float[Array, " inputs"]:
        return jnp.zeros(1)

    def stiffness(self, theta: Float[Array, "patients params"]) -> Float[Array, " patients"]:
        """The elimination rate (CL + CLR) / V (1/day), the stiffest rate while drug is present."""
        k = PARAMETER_NAMES.index
        return (theta[:, k("CL")] + theta[:, k("CLR")]) / theta[:, k("V")]


@functools.cache
def _ode_parameters(structure: Structure) -> tuple[str, ...]:
    return ode_parameters(structure)
