r"""Published summaries beside individual data in one population fit.

A population fit's objective (FOCE-I, FOCE or Laplace: :mod:`il2treg.fit.population`) gains the
−2 log-likelihood of published summary statistics (:mod:`il2treg.fit.aggregate`), computed from
the same population parameters :math:`\psi`:

.. math::
    \mathrm{OFV}(\psi) = \sum_i \mathrm{OFV}_i(\psi) + \sum_j \ell_j\big(S_j(\psi)\big)
        \;[+ \text{the priors' } -2\log p(\psi)]

The statistic :math:`S_j` of summary :math:`j` is that of :math:`M` virtual patients of its arm,
each with the fit's own parameterisation: :math:`\eta_{am} = L\,z_{am}` with :math:`L` the
Cholesky factor of :math:`\Omega` (its correlations included) and fixed standard-normal draws
:math:`z_{am}` (common random numbers), :math:`\theta_{am} = \theta(\psi)\,e^{\eta_{am}}` on the
parameters with random effects (:func:`il2treg.fit.problem.individual_theta`), the typical values
:math:`\theta(\psi)` those of a patient at the covariates' reference values (below). :math:`\ell_j` is the
summary's term of :mod:`il2treg.fit.aggregate` (squared z-score, one-sided for a bound, binomial
for a proportion); the residual SDs a statistic needs (an SD, a proportion above a threshold) are
given, not estimated (an ``sd`` summary requires one). Published arms and the individual
patients are independent, so the two log-likelihoods add; the summaries then inform the fixed
effects and the omegas, and the covariance step's R (:func:`il2treg.fit.estimate.ofv_hessian`)
holds both sources (the sandwich's S holds the patients' gradients only, so a fit with summaries
refuses ``covariance_matrix = "sandwich"``).

The statistics are those of :math:`M` virtual patients, not of the population: their Monte Carlo
error (about :math:`\mathrm{SD}/\sqrt M` for a mean) is not in the likelihood. Choose
:math:`M` well above each arm's :math:`n`, so that it is small beside the published standard
error :math:`s_j` (the default, 1000, puts it under half of :math:`s_j` for arms of up to 200).

The summary term does not depend on the EBEs, so the FOCE-I gradient of
:mod:`il2treg.fit.population` gains :math:`\sum_j \partial\ell_j/\partial\psi`, here by
forward-mode derivatives through the virtual patients' solves in the directions of the fixed
effects, the log omegas and the omega blocks' correlations (nothing else moves a virtual patient).
A virtual patient whose solve fails makes the term undefined (NaN): the outer line search then
steps back, and at the start :func:`summary_term` names the arm.

Not modelled: inter-occasion variability (an arm has no occasions; a fit with ``iov_cv_percent``
and summaries is refused) and covariate distributions of the arms: their virtual patients have
the covariate effects' reference values, and the model's own covariates the model file's values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.stats import norm
from jaxtyping import Array, Float

from il2treg.errors import SolverError, SpecError
from il2treg.fit.aggregate import Summary, SummaryProgram, check_summaries, failure_message
from il2treg.fit.problem import FitProblem, individual_theta, unpack
from il2treg.likelihood import ResidualModel
from il2treg.regimen import Regimen


class SummaryTerm(eqx.Module):
    r"""The summaries' −2 log-likelihood as a function of a population fit's :math:`\psi` (module docstring).

    Attributes:
        problem: the fit's problem (its parameterisation of :math:`\psi`).
        program: the arms' solves and the summaries' statistics (:class:`~il2treg.fit.aggregate.SummaryProgram`).
        base_residual: the fit's residual model (unpacking :math:`\psi` needs it; the summaries do not use it).
        z: the standard-normal draws, ``[arm, virtual patient, eta]``.
        directions: the entries of :math:`\psi` the term depends on (fixed effects, log omegas, correlations).
    """

    problem: FitProblem = eqx.field(static=True)
    program: SummaryProgram = eqx.field(static=True)
    base_residual: ResidualModel
    z: Float[Array, "arms draws eta"]
    directions: tuple[int, ...] = eqx.field(static=True)

    def thetas(self, psi: Float[Array, " psi"]) -> Float[Array, "arms draws params"]:
        """Every virtual patient's parameters at ``psi`` (internal units)."""
        up = unpack(self.problem, self.problem.split(psi), self.base_residual)
        ne = self.problem.n_eta
        eta = self.z @ up.random_effects.cholesky()[:ne, :ne].T
        return jax.vmap(jax.vmap(lambda e: individual_theta(self.problem, up.theta, e)))(eta)

    @eqx.filter_jit
    def evaluate(self, psi: Float[Array, " psi"]):
        """(the summaries' −2 log-likelihood, NaN where a virtual patient failed to solve; each
        summary's statistic; its −2 log-likelihood term; each arm's count of failed virtual
        patients) at ``psi``: one compiled program for :meth:`neg2ll` and :meth:`predicted`."""
        stats, failed = self.program.statistics(self.thetas(psi))
        value = self.program.ofv(stats)
        return jnp.where(jnp.any(failed > 0), jnp.nan, value), stats[0], self.program.terms(stats), failed

    def neg2ll(self, psi: Float[Array, " psi"]) -> Float[Array, ""]:
        """The summaries' −2 log-likelihood at ``psi`` (NaN where a virtual patient failed to solve)."""
        return self.evaluate(psi)[0]

    def predicted(self, psi: Float[Array, " psi"]) -> tuple[Float[Array, " summaries"], Float[Array, " summaries"], Array]:
        """(each summary's statistic at ``psi``, its −2 log-likelihood term, each arm's count of
        virtual patients whose solve failed)."""
        return self.evaluate(psi)[1:]

    def gradient(self, psi: Float[Array, " psi"]) -> Float[Array, " psi"]:
        r""":math:`\partial(-2\log L)/\partial\psi` (zero outside :attr:`directions`)."""
        return self.linearised(psi)[0]

    def curvature_rows(self, psi: Float[Array, " psi"]) -> Float[Array, "summaries psi"]:
        r"""Rows :math:`r_j` with :math:`\tfrac12\sum_j r_j r_j^\top` the Gauss-Newton
        approximation of the term's Hessian, as the outer optimiser's preconditioner
        (:func:`il2treg.fit.estimate.preconditioner`) takes the patients' gradients:
        :math:`r_j = 2\,\nabla S_j / s_j` for a continuous statistic (whose term is
        :math:`z_j^2`), :math:`r_j = 2\sqrt{\lambda(z + \lambda)}\,\nabla S_j / s_j` for a bound
        (whose term :math:`-2\log\Phi(z)` has that curvature, :math:`\lambda = \phi(z)/\Phi(z)`:
        about 0 well past the bound, as a value's short of it; :math:`z \to -z` for an upper bound),
        :math:`r_j = 2\sqrt{n_j/(S_j(1 - S_j))}\,\nabla S_j` for a
        proportion (the binomial's information)."""
        return self.linearised(psi)[1]

    @eqx.filter_jit
    def linearised(self, psi: Float[Array, " psi"]) -> tuple[Float[Array, " psi"], Float[Array, "summaries psi"]]:
        """(:meth:`gradient`, :meth:`curvature_rows`): one forward-mode pass through the solves."""
        n_summaries = len(self.program.summaries)
        if not self.directions:
            return jnp.zeros_like(psi), jnp.zeros((n_summaries, psi.shape[0]))
        at = jnp.asarray(self.directions, dtype=jnp.int32)

        def statistics(sub):
            stats, failed = self.program.statistics(self.thetas(psi.at[at].set(sub)))
            return stats, (stats, failed)

        jac, (stats, failed) = jax.jacfwd(statistics, has_aux=True)(psi[at])  # each [summaries, directions]
        slopes = jax.grad(self.program.ofv)(stats)
        grad = sum(g @ j for g, j in zip(slopes, jac, strict=True))
        grad = jnp.where(jnp.any(failed > 0) | ~jnp.isfinite(self.program.ofv(stats)), jnp.nan, grad)
        pred, program = stats[0], self.program
        p = jnp.clip(pred, 1e-12, 1.0 - 1e-12)
        # a bound's term -2 log Phi(z) has curvature 2 lam (z + lam) in z, lam = phi(z) / Phi(z): ~0 well past the bound, 2 short of it
        z = jnp.where(program.upper, -1.0, 1.0) * (pred - program.value) / program.se
        lam = jnp.exp(norm.logpdf(z) - norm.logcdf(z))
        bounded = jnp.sqrt(jnp.maximum(lam * (z + lam), 0.0))
        weight = jnp.where(program.binomial, jnp.sqrt(program.n / (p * (1.0 - p))), jnp.where(program.lower | program.upper, bounded, 1.0) / program.se)
        rows = 2.0 * weight[:, None] * jac[0]
        rows = jnp.where(jnp.isfinite(rows), rows, 0.0)
        return jnp.zeros_like(psi).at[at].set(grad), jnp.zeros((n_summaries, psi.shape[0])).at[:, at].set(rows)

def summary_term(
    problem: FitProblem,
    base_residual: ResidualModel,
    regimens: Mapping[str, Regimen],
    summaries: Sequence[Summary],
    psi0: Float[Array, " psi"],
    *,
    sigma_prop: Mapping[str, float] | None = None,
    n_draws: int = 1000,
    seed: int = 0,
) -> SummaryTerm:
    """The summary term of a population fit, checked at its start ``psi0``.

    Arguments:
        problem: the population fit's problem.
        base_residual: its residual model.
        regimens: each arm's regimen, by the arms' names.
        summaries: the published statistics (:class:`~il2treg.fit.aggregate.Summary`).
        psi0: the fit's starting vector.
        sigma_prop: proportional residual SD per observable, for ``sd`` and ``proportion_above`` summaries.
        n_draws: virtual patients per arm (:math:`M`); the draws come from ``seed``.

    Raises:
        SpecError: a malformed summary (:func:`~il2treg.fit.aggregate.check_summaries`), or a fit
            with inter-occasion variability.
        SolverError: a virtual patient fails to solve at ``psi0``, or a statistic is undefined
            there (named by arm or summary).
    """
    sigma_prop = dict(sigma_prop or {})
    check_summaries(problem.model, regimens, summaries, sigma_prop, n_draws, beside_patients=True)
    if problem.iov:
        raise SpecError(f"summaries cannot be fitted beside inter-occasion variability ({', '.join(problem.iov)}): a published arm has no occasions. "
                        "Fix: remove iov_cv_percent, or fit the summaries without it.")  # fmt: skip
    program = SummaryProgram(problem.model, regimens, summaries, (), problem.random, {}, sigma_prop, n_draws, seed, problem.options)
    layout = problem.layout
    directions = tuple(int(k) for k in np.flatnonzero(layout.mask("u", "log_omega", "corr")))
    term = SummaryTerm(problem, program, base_residual, program.draws, directions)
    pred, _, failed = (np.asarray(x) for x in term.predicted(jnp.asarray(psi0, dtype=jnp.float64)))
    if failed.any() or not np.all(np.isfinite(pred)):
        raise SolverError(failure_message(program.arms, failed, n_draws, program.summaries, pred, "at the fit's start"))
    return term

