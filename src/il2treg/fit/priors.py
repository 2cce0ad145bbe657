r"""Priors on the population parameters, on the estimation scale of :math:`\psi`.

Every prior here is normal on the scale the parameter is estimated on:

.. math::  -2\log p(\psi) = \sum_k \Big(\frac{\psi_k - m_k}{s_k}\Big)^2 + \text{const}

so a fixed effect with ``transform = "log"`` has a log-normal prior with median :math:`e^{m_k}`,
``logit`` a logit-normal one, ``identity`` a normal one; :math:`\log\omega` and :math:`\log\sigma`
get log-normal priors on :math:`\omega` and :math:`\sigma`, the artanh of a partial correlation a
normal prior about 0. An entry with :math:`s_k = \infty` has
no prior (a flat one).

* :func:`model_priors`: the priors declared in the model file (``prior_sd`` about the declared
  value, each with its ``prior_source``) on the estimated fixed effects; nothing else. A population
  fit with ``priors = "model"`` adds them to its OFV as a penalty (a MAP / penalised-likelihood fit).
* :func:`sampling_priors`: a proper prior on every entry of :math:`\psi`, as the Bayesian fit
  needs: the model's priors where declared, else the weakly informative defaults of
  :class:`PriorDefaults` about the fit's initial values.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from il2treg.fit.problem import FitProblem, to_unconstrained


class Prior(eqx.Module):
    """Independent normal priors on :math:`\\psi` (``sd`` = inf: none)."""

    mean: Float[Array, " psi"]
    sd: Float[Array, " psi"]

    def neg2log(self, psi: Float[Array, " psi"]) -> Float[Array, ""]:
        """:math:`\\sum_k ((\\psi_k - m_k)/s_k)^2` over the entries with a prior (no constants)."""
        z = jnp.where(jnp.isfinite(self.sd), (psi - self.mean) / self.sd, 0.0)
        return jnp.sum(z**2)

    def neg2log_gradient(self, psi: Float[Array, " psi"]) -> Float[Array, " psi"]:
        return jnp.where(jnp.isfinite(self.sd), 2.0 * (psi - self.mean) / self.sd**2, 0.0)

    def log_density(self, psi: Float[Array, " psi"]) -> Float[Array, ""]:
        """Normalised log density of the entries with a prior."""
        has = jnp.isfinite(self.sd)
        norm = jnp.where(has, jnp.log(jnp.where(has, self.sd, 1.0)) + 0.5 * math.log(2 * math.pi), 0.0)
        return -0.5 * self.neg2log(psi) - jnp.sum(norm)

    @property
    def declared(self) -> np.ndarray:
        """Which entries have a prior."""
        return np.isfinite(np.asarray(self.sd))


def penalty(prior: Prior | None, psi: Float[Array, " psi"]) -> Float[Array, ""]:
    """The OFV penalty :math:`-2\\log p(\\psi)` (0 without a prior)."""
    return jnp.zeros(()) if prior is None else prior.neg2log(psi)


def penalty_gradient(prior: Prior | None, psi: Float[Array, " psi"]) -> Float[Array, " psi"]:
    return jnp.zeros_like(psi) if prior is None else prior.neg2log_gradient(psi)


@dataclasses.dataclass(frozen=True)
class PriorDefaults:
    """Weakly informative priors for the entries of :math:`\\psi` the model declares none for.

    Attributes:
        fixed_sd: SD of a fixed effect on its estimation scale about its initial value (2: a
            factor :math:`e^2 \\approx 7.4` per SD for a log-transformed parameter).
        beta_sd: SD of a covariate coefficient about 0 (units of the effect: a linear effect is
            in the parameter's unit per covariate unit, a power or exp effect is dimensionless).
        omega_sd: SD of :math:`\\log\\omega` about the initial :math:`\\log\\omega` (1: a factor 2.7),
            between patients and between occasions.
        sigma_sd: SD of :math:`\\log\\sigma` about the initial :math:`\\log\\sigma`.
        corr_sd: SD of the artanh of each partial correlation of an omega block about 0
            (:mod:`il2treg.fit.omega`; 1 puts 68% of the prior mass on :math:`|r| < 0.76`).
    """

    fixed_sd: float = 2.0
    beta_sd: float = 10.0
    omega_sd: float = 1.0
    sigma_sd: float = 1.0
    corr_sd: float = 1.0


def model_priors(problem: FitProblem) -> Prior:
    """The model file's priors on the estimated fixed effects (flat elsewhere)."""
    specs = [problem.model.spec[n] for n in problem.fixed]
    centres = to_unconstrained(problem, {ps.name: ps.value if ps.prior_sd is None else ps.prior_center for ps in specs})
    declared = np.asarray([ps.prior_sd is not None for ps in specs], dtype=bool)
    mean = problem.layout.filled(u=np.where(declared, np.asarray(centres), 0.0))
    sd = np.full(problem.layout.size, np.inf)
    sd[problem.layout.mask("u")] = [np.inf if ps.prior_sd is None else ps.prior_sd for ps in specs]
    return Prior(jnp.asarray(mean), jnp.asarray(sd))


def sampling_priors(problem: FitProblem, psi0: Float[Array, " psi"], defaults: PriorDefaults = PriorDefaults()) -> Prior:
    """A proper prior on every entry of :math:`\\psi`: the model's where declared, else ``defaults``
    about ``psi0`` (about 0 for covariate coefficients and the omega blocks' partial correlations)."""
    declared = model_priors(problem)
    layout = problem.layout
    mean = np.asarray(psi0, dtype=np.float64).copy()
    mean[layout.mask("beta", "corr")] = 0.0  # no covariate effect; partial correlations: about independence
    sd = layout.filled(u=defaults.fixed_sd, beta=defaults.beta_sd, log_omega=defaults.omega_sd, corr=defaults.corr_sd, log_omega_iov=defaults.omega_sd, log_sigma=defaults.sigma_sd)
    has = declared.declared
    mean[has] = np.asarray(declared.mean)[has]
    sd[has] = np.asarray(declared.sd)[has]
    return Prior(jnp.asarray(mean), jnp.asarray(sd))
