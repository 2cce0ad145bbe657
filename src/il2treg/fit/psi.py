r"""The population parameters as a named pytree, and the one place that knows their flat layout.

A fit estimates :math:`\psi = (u, \beta, \log\omega, x, \log\omega_{IOV}, \log\sigma)`
(:mod:`il2treg.fit.problem`): the fixed effects on their unconstrained scale, the covariate
coefficients, the log SDs of the random effects between patients, the artanh of the partial
correlations of the omega blocks, the log SDs between occasions and the log residual SDs.
:class:`Psi` holds them by name. The optimisers (L-BFGS, SAEM's Newton step, NUTS) and what they
return (gradients, Hessians, covariance matrices, chains) see one vector in that order, the order
of ``FitProblem.psi_names``. :meth:`Psi.ravel` and :class:`PsiLayout` turn one into the other,
and nothing else computes an offset into the vector.

The same layout holds ψ on the reporting scale (:func:`il2treg.fit.estimate.natural_parameters`:
fixed effects in internal units, β, ω, correlations, ω_IOV, σ), so :meth:`PsiLayout.unravel`
names the parts of either, with any leading batch axes (posterior draws): on that scale ``u`` holds
the fixed effects, ``log_omega`` the omegas, ``corr`` the correlations, ``log_omega_iov`` the
inter-occasion omegas and ``log_sigma`` the sigmas themselves.

>>> layout = PsiLayout(fixed=2, beta=1, omega=2, corr=1, omega_iov=0, sigma=1)
>>> psi = layout.unravel(np.arange(7.0))
>>> psi.log_omega, psi.log_sigma
(array([3., 4.]), array([6.]))
>>> layout.mask("log_omega", "log_sigma").nonzero()[0]
array([3, 4, 6])
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

#: The parts of ψ, in the order of the flat vector (the structural ones, which predictions read, first).
PARTS = ("u", "beta", "log_omega", "corr", "log_omega_iov", "log_sigma")


class Psi(eqx.Module):
    """ψ by name (each part with any leading batch axes; the last axis runs over its entries).

    Attributes:
        u: the estimated fixed effects on their transform's unconstrained scale
            (``FitProblem.fixed``; internal units after the transform).
        beta: covariate coefficients (``FitProblem.covariates``).
        log_omega: log SDs of the random effects between patients (``FitProblem.random``).
        corr: artanh of the partial correlations of the omega blocks (``FitProblem.corr_pairs``).
        log_omega_iov: log SDs of the random effects between occasions (``FitProblem.iov``).
        log_sigma: log residual SDs (``FitProblem.sigmas``).
    """

    u: Float[Array, "*batch fixed"]
    beta: Float[Array, "*batch effects"]
    log_omega: Float[Array, "*batch eta"]
    corr: Float[Array, "*batch corr"]
    log_omega_iov: Float[Array, "*batch iov"]
    log_sigma: Float[Array, "*batch sigmas"]

    @property
    def structural(self) -> Float[Array, "*batch structural"]:
        """``(u, beta)`` as one vector: the entries of ψ that the predictions read."""
        return jnp.concatenate([self.u, self.beta], axis=-1)

    def ravel(self) -> Float[Array, "*batch psi"]:
        """The flat vector the optimisers see (the order of :data:`PARTS`)."""
        return jnp.concatenate([jnp.asarray(getattr(self, p), dtype=jnp.float64) for p in PARTS], axis=-1)


@dataclasses.dataclass(frozen=True)
class PsiLayout:
    """How many entries each part of ψ has (hashable: static configuration under jit)."""

    fixed: int
    beta: int
    omega: int
    corr: int
    omega_iov: int
    sigma: int

    @property
    def sizes(self) -> tuple[int, ...]:
        """Entries per part, in the order of :data:`PARTS`."""
        return (self.fixed, self.beta, self.omega, self.corr, self.omega_iov, self.sigma)

    @property
    def size(self) -> int:
        """Length of the flat vector."""
        return sum(self.sizes)

    @property
    def structural(self) -> int:
        """Length of :attr:`Psi.structural` (the leading ``u`` and ``beta`` of the flat vector)."""
        return self.fixed + self.beta

    def _bounds(self) -> dict[str, tuple[int, int]]:
        ends = np.cumsum(self.sizes)
        return {p: (int(e - n), int(e)) for p, n, e in zip(PARTS, self.sizes, ends, strict=True)}

    def unravel(self, flat: Float[Array, "*batch psi"]) -> Psi:
        """The flat vector (or rows of them) by part; NumPy in, NumPy parts out."""
        if flat.shape[-1] != self.size:
            raise ValueError(f"psi has {flat.shape[-1]} entries, the layout {self.size} ({dict(zip(PARTS, self.sizes))}).")
        return Psi(**{p: flat[..., a:b] for p, (a, b) in self._bounds().items()})

    def divide(self, psi: Float[Array, " psi"]) -> tuple[Float[Array, " structural"], Float[Array, " variance"]]:
        """The flat ``psi`` as (its structural entries ``(u, beta)``, which the predictions read;
        the rest, which the random effects' and residuals' distributions read): the two blocks of
        the exact gradient (:func:`il2treg.fit.population.patient_gradient`)."""
        return psi[..., : self.structural], psi[..., self.structural :]

    def join(self, structural: Float[Array, " structural"], variance: Float[Array, " variance"]) -> Psi:
        """The inverse of :meth:`divide`, by part."""
        return self.unravel(jnp.concatenate([structural, variance], axis=-1))

    def filled(self, **parts: float | Float[np.ndarray, " n"]) -> np.ndarray:
        """A flat NumPy vector with each named part set (a scalar fills it), the others 0."""
        unknown = set(parts) - set(PARTS)
        if unknown:
            raise ValueError(f"no part {sorted(unknown)} of psi; the parts are {PARTS}.")
        out = np.zeros(self.size)
        for p, (a, b) in self._bounds().items():
            if p in parts:
                out[a:b] = parts[p]
        return out

    def mask(self, *parts: str) -> np.ndarray:
        """A boolean flat vector, True on the entries of the named parts."""
        return self.filled(**dict.fromkeys(parts, 1.0)).astype(bool)
