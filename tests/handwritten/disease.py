r"""Latent SELENA-SLEDAI activity: standard-of-care course plus a Treg-driven drug effect.

.. math::
    L(t) = L_0 - P_{max}\,(1 - e^{-k_{pl} t}) + I_{max} L_0\, E(t)

    \frac{dE}{dt} = k_D\,\left(-G(R_T) - E\right), \qquad
    G(R) = \frac{(R - 1)_+}{R_{50} + (R - 1)_+}

:math:`L_0` is the baseline score (points), the second term the standard-of-care (placebo) course,
and :math:`\Delta = I_{max} L_0 E \le 0` the drug effect (points), with :math:`E \in [-1, 0]` its
fraction of the maximum, which follows the Treg fold-change :math:`R_T` with rate :math:`k_D`
(1/day). Keeping :math:`I_{max} L_0` out of the ODE (it only scales the observation) means fits need
no ODE sensitivities with respect to :math:`I_{max}` or :math:`L_0`. The link from Treg expansion to SLEDAI is a hypothesis (no published
quantitative model exists); its parameters are calibrated to the LUPIL-2 response rates.
:math:`L` is the expected (continuous) score; the observed integer score and SRI-4 are
observation models built on it.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def standard_of_care(t: Float[Array, ""], p: dict[str, Float[Array, ""]]) -> Float[Array, ""]:
    """Placebo / standard-of-care change in SLEDAI (points, <= 0) at time ``t`` (days)."""
    return -p["pmax"] * (1.0 - jnp.exp(-p["kpl"] * jnp.maximum(t, 0.0)))


def treg_effect(r_treg: Float[Array, ""], r50: Float[Array, ""]) -> Float[Array, ""]:
    """Saturating effect G(R) of a Treg fold-change R, 0 at or below baseline."""
    excess = jnp.maximum(r_treg - 1.0, 0.0)
    return excess / (r50 + excess)


def effect_derivative(
    effect: Float[Array, ""], r_treg: Float[Array, ""], p: dict[str, Float[Array, ""]]
) -> Float[Array, ""]:
    """Derivative (1/day) of the relative drug effect :math:`E` on SLEDAI."""
    return p["kd"] * (-treg_effect(r_treg, p["r50"]) - effect)


def latent_sledai(
    t: Float[Array, ""], effect: Float[Array, ""], p: dict[str, Float[Array, ""]]
) -> Float[Array, ""]:
    """Expected SLEDAI (points) at time ``t`` given the relative drug effect ``effect`` (E)."""
    return p["sledai0"] + standard_of_care(t, p) + p["imax"] * p["sledai0"] * effect
