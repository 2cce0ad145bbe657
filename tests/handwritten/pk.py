r"""Subcutaneous IL-2 pharmacokinetics: SC depot with lag and bioavailability, one central compartment.

States (amounts in MIU, so that they are O(1) and share one absolute tolerance):

.. math::

    \frac{dA_d}{dt} = -k_a A_d, \qquad
    \frac{dA_c}{dt} = k_a A_d - \frac{CL + CL_R\,R_T\,M}{V} A_c

A dose :math:`D` (IU) given at :math:`t_k` adds :math:`F D` to :math:`A_d` at :math:`t_k + t_{lag}`
(a discontinuity: the simulator stops and restarts the solver there). :math:`R_T` is the Treg
fold-change and :math:`M` the relative CD25 expression on Tregs: the receptor-mediated clearance
:math:`CL_R R_T M` grows as Tregs expand and up-regulate CD25 (switch off with
``receptor_sink = false``). The serum concentration adds a constant endogenous level:

.. math::  C = \frac{10^{6} A_c}{10^{3} V}\,\kappa + C_{endo} \quad [\mathrm{pM}]

with :math:`\kappa` = pM per IU/mL (:data:`il2treg.units.PM_PER_IU_PER_ML`). Units: time in days,
:math:`k_a` in 1/day, :math:`CL, CL_R` in L/day, :math:`V` in L, :math:`C` in pM.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from il2treg import units

IU_PER_STATE_UNIT = 1.0e6  # depot and central amounts are held in MIU


def exogenous_pM(a_central: Float[Array, ""], volume_L: Float[Array, ""]) -> Float[Array, ""]:
    """Drug concentration (pM) from the central amount (MIU) and volume (L)."""
    iu_per_ml = a_central * IU_PER_STATE_UNIT / (volume_L * 1.0e3)
    return iu_per_ml * units.PM_PER_IU_PER_ML


def derivatives(
    a_depot: Float[Array, ""],
    a_central: Float[Array, ""],
    sink_scale: Float[Array, ""],
    p: dict[str, Float[Array, ""]],
) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """Time derivatives (MIU/day) of depot and central amounts; ``sink_scale`` = R_T * M (or 0)."""
    absorption = p["ka"] * a_depot
    elimination = (p["CL"] + p["CLR"] * sink_scale) / p["V"] * a_central
    return -absorption, absorption - elimination


def closed_form_pM(
    t: Float[Array, " times"],
    dose_times: Float[Array, " doses"],
    amounts_iu: Float[Array, " doses"],
    *,
    ka: float,
    ke: float,
    V: float,
    F: float,
    tlag: float,
) -> Float[Array, " times"]:
    r"""Exogenous IL-2 (pM) by superposition of one-compartment first-order absorption with lag.

    .. math::
        C(t) = \sum_k \frac{F D_k k_a}{V (k_a - k_e)}
               \left(e^{-k_e (t - \tau_k)} - e^{-k_a (t - \tau_k)}\right) \mathbf{1}[t > \tau_k],
        \quad \tau_k = t_k + t_{lag}

    valid without the receptor sink (``ke = CL / V``); the reference solution for the tests.
    Units as in the module docstring (``V`` in L, rates in 1/day, ``amounts_iu`` in IU).
    """
    dt = t[:, None] - (dose_times[None, :] + tlag)
    after = dt > 0
    dt = jnp.maximum(dt, 0.0)  # clamp before exp: keeps gradients finite
    shape = (jnp.exp(-ke * dt) - jnp.exp(-ka * dt)) * ka / (ka - ke)
    amount_iu = jnp.sum(jnp.where(after, F * amounts_iu[None, :] * shape, 0.0), axis=1)
    return amount_iu / (V * 1.0e3) * units.PM_PER_IU_PER_ML
