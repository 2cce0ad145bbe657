r"""IL-2 signal per cell type, the proliferation delay, and the Treg / Tconv / CD56bright NK / CD25 pools.

**Signal.** Each cell type X in {Treg, NK (CD56bright), Tconv} reads the serum IL-2 :math:`C` (pM)
through a Hill function, relative to its baseline signal at the endogenous level :math:`C_{endo}`:

.. math::
    S_X(C) = \frac{C^n}{EC_{50,X}^n + C^n}, \qquad u_X = S_X(C) - S_X(C_{endo})

with :math:`EC_{50,T} \ll EC_{50,NK} < EC_{50,C}` (high- vs intermediate-affinity IL-2 receptor).
For Tregs the EC50 falls as CD25 rises (``cd25_feedback``):
:math:`EC_{50,T}^{eff} = EC_{50,T} / M^{\gamma}`.

**Delay.** :math:`u_X` passes through a chain of :math:`n` transit compartments with rate
:math:`k_{tr} = n / MTT` (1/day), :math:`dz_1/dt = k_{tr}(u_X - z_1)`,
:math:`dz_i/dt = k_{tr}(z_{i-1} - z_i)`, representing signal -> proliferation (pSTAT5 -> Ki67 ->
expansion). With :math:`n = 0` the pools read :math:`u_X` directly.

**Pools** (indirect response, stimulation of production), as fold-change :math:`R_X = X / X_0`:

.. math::  \frac{dR_X}{dt} = k_{out,X}\,(1 + E_{max,X}\, z_{X,n}) - k_{out,X} R_X

so :math:`R_X = 1` at baseline and returns to 1 with rate :math:`k_{out,X}` when dosing stops.

**CD25** on Tregs (relative MFI, :math:`M_0 = 1`) follows the undelayed Treg signal:

.. math::  \frac{dM}{dt} = k_{M}\,(1 + E_{max,M}\, u_T) - k_{M} M
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def hill(c: Float[Array, ""], ec50: Float[Array, "*k"], n: Float[Array, ""]) -> Float[Array, "*k"]:
    """Fractional receptor signal C^n / (EC50^n + C^n); see :func:`hill_log`."""
    return hill_log(log_concentration(c), jnp.log(ec50), n)


def log_concentration(c: Float[Array, ""]) -> Float[Array, ""]:
    """log C, with C floored at 1e-300 pM (the signal is 0 there, and the log stays finite)."""
    return jnp.log(jnp.maximum(c, 1e-300))


def hill_log(log_c: Float[Array, ""], log_ec50: Float[Array, "*k"], n: Float[Array, ""]) -> Float[Array, "*k"]:
    r"""The Hill signal from logarithms: :math:`1 / (1 + e^{n(\log EC_{50} - \log C)})`.

    Stable for any C > 0, and cheap to differentiate: the derivatives reuse the exponential and
    :math:`1/C` (a power :math:`(EC_{50}/C)^n` would need new powers and logarithms in every
    derivative, which forward-mode sensitivities pay at every solver stage).
    """
    return 1.0 / (1.0 + jnp.exp(n * (log_ec50 - log_c)))


def signal_increments(
    c_pM: Float[Array, ""],
    cd25: Float[Array, ""],
    p: dict[str, Float[Array, ""]],
    *,
    cd25_feedback: bool,
) -> Float[Array, "3"]:
    """Signal above baseline for (Treg, NK, Tconv) at concentration ``c_pM`` and CD25 level ``cd25``.

    ``p["s0"]`` holds the baseline signals (Treg, NK, Tconv) at the endogenous level and baseline
    CD25, ``p["log_ec50"]`` the logarithms of their EC50s (both from ``system.prepare``, once per solve).
    """
    log_ec50 = p["log_ec50"]
    if cd25_feedback:  # EC50_treg / cd25^gamma
        log_ec50 = log_ec50.at[0].add(-p["gamma_cd25"] * jnp.log(cd25))
    return hill_log(log_concentration(c_pM), log_ec50, p["hill"]) - p["s0"]


def transit_derivatives(
    z: Float[Array, "3 n"], u: Float[Array, "3"], mtt: Float[Array, ""]
) -> Float[Array, "3 n"]:
    """Derivatives of the three delay chains (rows: Treg, NK, Tconv), inputs ``u``."""
    n = z.shape[1]
    ktr = n / mtt
    upstream = jnp.concatenate([u[:, None], z[:, :-1]], axis=1)
    return ktr * (upstream - z)


def pool_derivatives(
    folds: Float[Array, "3"], drive: Float[Array, "3"], p: dict[str, Float[Array, ""]]
) -> Float[Array, "3"]:
    """Derivatives of the fold-changes (Treg, NK, Tconv) given the delayed signals ``drive``."""
    return p["kout"] * (1.0 + p["emax"] * drive) - p["kout"] * folds


def cd25_derivative(
    cd25: Float[Array, ""], u_treg: Float[Array, ""], p: dict[str, Float[Array, ""]]
) -> Float[Array, ""]:
    """Derivative of relative CD25 on Tregs given the (undelayed) Treg signal increment."""
    return p["kin_cd25"] * (1.0 + p["emax_cd25"] * u_treg) - p["kin_cd25"] * cd25
