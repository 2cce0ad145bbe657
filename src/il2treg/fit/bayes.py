r"""Full Bayesian fits: the hierarchical model sampled with NUTS (blackjax), warm-started from Laplace.

**Model.** With :math:`\psi = (u, \beta, \log\omega, x, \log\omega_{IOV}, \log\sigma)` as in :mod:`il2treg.fit.psi`
and random effects :math:`\eta_i \sim N(0, \Omega)` (:mod:`il2treg.fit.omega`):

.. math::
    \log p(\psi, \eta \mid y) = \sum_i \log p(y_i \mid \theta_i(\psi, \eta_i))
        + \sum_i \log N(\eta_i; 0, \Omega) + \log p(\psi) + \text{const}

with the error models of :mod:`il2treg.likelihood` and the prior of
:func:`il2treg.fit.priors.sampling_priors` (the model file's priors where declared, weakly
informative defaults otherwise). Each :math:`\eta_{ik}` is sampled centred (as
:math:`\log\theta_{ik}`, the log of the individual parameter) where the
patient's data determine it well (Laplace posterior SD below half of :math:`\hat\omega_k`) and
non-centred (:math:`z_{ik} = \eta_{ik}/\omega_k \sim N(0, 1)`) where they do not
(:func:`make_target`): the non-centred form removes the funnel between :math:`\omega` and weakly
informed :math:`\eta`, the centred one the curved ridge between :math:`\omega` and :math:`z` (and the
straight one between a typical value and :math:`\eta`) that strongly informed ones make. The
distribution of :math:`\eta` is the same in both; only the coordinates differ. With correlated
random effects the non-centred coordinates are still :math:`\eta_{ik}/\omega_k` (which carries the
funnel), and the density is :math:`N(\eta_i; 0, \Omega)` times the Jacobian :math:`\omega_k` of
each non-centred coordinate.

**Gradient.** Each patient is solved once per evaluation with forward sensitivities in the
directions of the varied parameters the ODE reads only (:func:`il2treg.fit.problem.expand`);
predictions are the first-order Taylor polynomial of the states about the current point (exact
there, with exact first derivatives), so reverse mode runs through the observation function and
the small algebra, never through the solver.

**Sampler.** blackjax NUTS with Stan's windowed adaptation (step size to ``target_accept``, a
diagonal mass matrix); chains run in parallel threads (one compiled chain, no lock-step between chains). Chains start from :math:`N(\hat\psi, s^2\hat\Sigma)`
with :math:`\hat\psi, \hat\Sigma` the Laplace estimates and their covariance (:math:`s` =
``init_spread``) and the random effects at the EBEs; the mass matrix starts from the Laplace
variances of :math:`\psi` and of the EBEs (:func:`eta_variances`). A proposal whose ODE solve
fails has log density :math:`-\infty`: it is rejected, and counted as a divergence.

blackjax was chosen because its kernels are pure functions: one compiled chain serves every
chain thread and every data set of the same shape (simulation-based calibration reuses it). The
measurement against numpyro's NUTS on the same log density is ``benchmarks/bayes.py
--numpyro-same``; it has not been run yet.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from il2treg.errors import SpecError
from il2treg.fit.individual import laplace_covariance
from il2treg.fit.priors import Prior, PriorDefaults
from il2treg.fit.problem import (
    FitProblem,
    PatientData,
    covariate_theta,
    data_neg2ll,
    expand,
    expanded_predict,
    individual_theta,
    predict,
    unpack,
)
from il2treg.likelihood import ResidualModel, neg2ll_terms, sample_observations
from il2treg.simulate import chunked_map, ordered_map, work_order

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclasses.dataclass(frozen=True)
class NutsSettings:
    """How NUTS is run (``[nuts]`` in a fit file).

    Attributes:
        chains: chains (run in parallel threads).
        warmup: adaptation iterations per chain (discarded).
        samples: kept draws per chain.
        seed: PRNG seed.
        target_accept: step-size adaptation target.
        max_tree_depth: at most :math:`2^{d}` leapfrog steps per iteration.
        init_spread: chain starts from :math:`N(\\hat\\psi, s^2\\hat\\Sigma)`.
        priors: defaults for the entries of psi the model declares no prior for.
    """

    chains: int = 4
    warmup: int = 500
    samples: int = 500
    seed: int = 0
    target_accept: float = 0.8
    max_tree_depth: int = 8
    init_spread: float = 1.0
    priors: PriorDefaults = PriorDefaults()

    def __post_init__(self):
        for name in ("chains", "warmup", "samples", "max_tree_depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"[nuts] {name} must be a whole number >= 1, got {v!r}.")
        if not 0.5 <= self.target_accept < 1.0:
            raise SpecError(f"[nuts] target_accept must be in [0.5, 1), got {self.target_accept!r}.")
        if not self.init_spread >= 0:
            raise SpecError(f"[nuts] init_spread must be >= 0, got {self.init_spread!r}.")


class Target(eqx.Module):
    """The posterior density of a problem and dataset (a pytree: patients and prior are data)."""

    problem: FitProblem = eqx.field(static=True)
    patients: PatientData
    base_residual: ResidualModel
    prior: Prior
    include: Array  # patients whose data enter the likelihood
    centred: Array  # [patients, random effects]: sample log theta_i (True) or z = eta / omega (False; always for kappa)
    batch_size: int = eqx.field(static=True, default=16)  # patients per vmapped solve (see log_density)

    def _typical(self, up) -> Float[Array, "patients params"]:
        """Each patient's typical values (covariate effects applied)."""
        return jax.vmap(lambda cov: covariate_theta(self.problem, up.theta, up.beta, cov))(self.patients.covariates)

    def _log_typical(self, typical) -> Float[Array, "patients eta"]:
        """log typical value of each random effect's parameter (0 for a kappa, always non-centred)."""
        problem = self.problem
        idx = jnp.asarray([problem.model.parameter_names.index(n) for n in problem.random], dtype=jnp.int32)
        # with time-varying covariates the first period's: log theta_i,p = log typical_i,p + eta_i
        log = jnp.log(typical[:, 0, idx] if problem.timed else typical[:, idx])
        return jnp.concatenate([log, jnp.zeros((log.shape[0], problem.n_random - problem.n_eta))], axis=1) if problem.iov else log

    def _unpacked(self, psi, z):
        """(unpacked psi, eta, individual parameters): everything the density needs, computed once."""
        up = unpack(self.problem, self.problem.split(psi), self.base_residual)
        typical = self._typical(up)
        eta = jnp.where(self.centred, z - self._log_typical(typical), up.random_effects.sd * z)
        return up, eta, jax.vmap(lambda th, e, occ: individual_theta(self.problem, th, e, occ))(typical, eta, self.patients.occasion)

    def eta(self, psi, z) -> Float[Array, "patients eta"]:
        """The random effects at the sampler's coordinates ``z``."""
        return self._unpacked(psi, z)[1]

    def to_coordinates(self, psi, eta) -> Float[Array, "patients eta"]:
        """Inverse of :meth:`eta`: the sampler's coordinates of ``eta``."""
        up = unpack(self.problem, self.problem.split(psi), self.base_residual)
        return jnp.where(self.centred, eta + self._log_typical(self._typical(up)), eta / up.random_effects.sd)

    def patient_theta(self, psi, z) -> Float[Array, "patients params"]:
        return self._unpacked(psi, z)[2]

    def log_density(self, position: dict) -> Float[Array, ""]:
        """:math:`\\log p(\\psi, z, y)` up to a constant; :math:`-\\infty` where an ODE solve fails.

        The patients are solved in chunks of ``batch_size`` in :func:`il2treg.simulate.work_order`
        (placebo and treated patients apart), as the population objective does: one vmapped solve
        of all patients would step every placebo patient as often as the stiffest treated one.
        """
        psi, z = position["psi"], position["z"]
        up, eta, theta = self._unpacked(psi, z)
        one = lambda args: _patient_loglik(self.problem, args[0], up.residual, args[1])
        loglik = ordered_map(one, (theta, self.patients), work_order(self.patients.dose_amount), self.batch_size)
        loglik = jnp.sum(jnp.where(self.include, loglik, 0.0))
        return loglik + self._log_random(up.random_effects, eta, z) + self.prior.log_density(psi)

    def _log_random(self, random_effects, eta, z) -> Float[Array, ""]:
        """log density of the sampler's coordinates of every patient's random effects: that of
        log theta_i = log typical + eta (centred) or of z = eta / omega (non-centred)."""
        omega = random_effects.sd
        if random_effects.corr_chol is None:  # independent effects, one by one
            log_random = jnp.where(self.centred, -0.5 * (eta / omega) ** 2 - jnp.log(omega), -0.5 * z**2) - _HALF_LOG_2PI
            return jnp.sum(log_random)
        n, ne = eta.shape
        log_normal = -0.5 * jnp.sum(jax.vmap(random_effects.quad)(eta)) - 0.5 * n * random_effects.log_det() - n * ne * _HALF_LOG_2PI
        return log_normal + jnp.sum(jnp.where(self.centred, 0.0, jnp.log(omega)))  # Jacobians of eta = omega z

    def pointwise(self, psi, z, key) -> tuple[Float[Array, "patients obs"], Float[Array, "patients obs"], Array]:
        """Per observation: log-likelihood, a posterior predictive draw, and the solver status per patient."""
        residual = unpack(self.problem, self.problem.split(psi), self.base_residual).residual

        def one(th, pat, k):
            pred, status = predict(self.problem, th, pat)
            ll = -0.5 * neg2ll_terms(residual, pred, pat.obs_value, pat.obs_dvid, pat.obs_cens, pat.obs_mask)
            rep = sample_observations(residual, pred, pat.obs_dvid, jax.random.normal(k, pred.shape))
            return jnp.where(pat.obs_mask, ll, 0.0), jnp.where(pat.obs_mask, rep, jnp.nan), status

        keys = jax.random.split(key, self.patients.obs_time.shape[0])
        return jax.vmap(one)(self.patient_theta(psi, z), self.patients, keys)


def _patient_loglik(problem: FitProblem, theta_i, residual: ResidualModel, patient: PatientData):
    ex = expand(problem, jax.lax.stop_gradient(theta_i), patient, problem.ode_varied)  # derivatives come from the polynomial
    pred = expanded_predict(problem, ex, theta_i, patient)
    ll = -0.5 * data_neg2ll(residual, pred, patient)
    return jnp.where((ex.status == 0) & jnp.isfinite(ll), ll, -jnp.inf)


class Samples(eqx.Module):
    """NUTS output: draws ``[chain, draw, ...]`` on the estimation scale and per-draw statistics."""

    psi: Float[Array, "chain draw psi"]
    z: Float[Array, "chain draw patients eta"]
    log_density: Float[Array, "chain draw"]
    acceptance_rate: Float[Array, "chain draw"]
    diverging: Array
    tree_depth: Array
    n_steps: Array
    energy: Float[Array, "chain draw"]
    step_size: Float[Array, " chain"]
    inverse_mass_matrix: Float[Array, "chain dim"]
    compile_s: float = eqx.field(static=True, default=0.0)
    sampling_s: float = eqx.field(static=True, default=0.0)

    def eta(self, target: Target) -> Float[Array, "chain draw patients eta"]:
        return jax.vmap(jax.vmap(target.eta))(self.psi, self.z)


def make_target(problem: FitProblem, patients: PatientData, base_residual: ResidualModel, prior: Prior, include, eta_var, omega, *, threshold: float = 0.5) -> Target:
    """The posterior of a problem, each random effect parametrised by how much its patient's data say.

    ``eta_var`` ``[patients, eta]``: Laplace posterior variances of the EBEs (:func:`eta_variances`).
    Where the data determine :math:`\\eta_{ik}` well (posterior SD below ``threshold`` omega) the
    centred form is used, elsewhere the non-centred one: each avoids the other's pathology (a funnel
    for weak data, a curved ridge between omega and z for strong data).
    """
    centred = jnp.sqrt(jnp.asarray(eta_var)) < threshold * jnp.asarray(omega)[None, :]
    centred = centred & (jnp.arange(problem.n_random) < problem.n_eta)[None, :]  # a kappa is always non-centred
    return Target(problem, patients, base_residual, prior, jnp.asarray(include), centred)


def eta_variances(inner, random_effects) -> Float[Array, "patients eta"]:
    """Laplace posterior variances of the EBEs: the diagonal of
    :func:`il2treg.fit.individual.laplace_covariance`."""
    return jnp.diagonal(laplace_covariance(inner, random_effects), axis1=1, axis2=2)


def sample_nuts(target: Target, psi_hat, eta_hat, eta_var, covariance, settings: NutsSettings = NutsSettings()) -> Samples:
    """Run ``settings.chains`` NUTS chains on ``target`` warm-started from a Laplace fit (module docstring).

    Arguments:
        psi_hat: Laplace estimates; ``eta_hat``: EBEs ``[patients, eta]``; ``eta_var``: their
            Laplace variances (:func:`eta_variances`); ``covariance``: of ``psi_hat`` (NaN or not
            positive definite: chains start at ``psi_hat`` with a scale of 0.1).
    """
    starts, imm0, k_run = chain_starts(target, psi_hat, eta_hat, eta_var, covariance, settings)
    keys = jax.random.split(k_run, settings.chains)
    t = time.perf_counter()
    one = jax.tree_util.tree_map(lambda x: x[0], starts)
    run = eqx.filter_jit(lambda tgt, st, imm, k: _chain(tgt, st, imm, k, settings)).lower(target, one, imm0, keys[0]).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    with ThreadPoolExecutor(max(1, min(settings.chains, os.cpu_count() or 1))) as pool:
        per_chain = list(pool.map(
            lambda c: jax.block_until_ready(run(target, jax.tree_util.tree_map(lambda x: x[c], starts), imm0, keys[c])), range(settings.chains)
        ))  # fmt: skip
    stacked = jax.tree_util.tree_map(lambda *x: jnp.stack(x), *per_chain)
    return Samples(*stacked, compile_s=compile_s, sampling_s=time.perf_counter() - t)


def chain_starts(target: Target, psi_hat, eta_hat, eta_var, covariance, settings: NutsSettings):
    """(starts ``{"psi": [chains, psi], "z": [chains, patients, random effects]}``, the initial
    inverse mass matrix's diagonal, the key of the runs) for :func:`sample_nuts`: psi drawn about
    ``psi_hat`` from ``covariance`` (``settings.init_spread`` times), z at the EBEs' coordinates,
    the masses from the Laplace variances (in the sampler's coordinates: divided by the SD of
    each random effect where it is non-centred)."""
    psi_hat = jnp.asarray(psi_hat, dtype=jnp.float64)
    omega = unpack(target.problem, target.problem.split(psi_hat), target.base_residual).random_effects.sd  # of every random effect, kappas too
    z_hat = target.to_coordinates(psi_hat, jnp.asarray(eta_hat))
    z_var = jnp.where(target.centred, jnp.asarray(eta_var), jnp.asarray(eta_var) / omega**2)
    cov = np.asarray(covariance, dtype=np.float64)
    if not (np.all(np.isfinite(cov)) and np.all(np.linalg.eigvalsh(cov) > 0)):
        cov = np.eye(len(psi_hat)) * 0.01
    chol = jnp.asarray(np.linalg.cholesky(cov))
    k_init, k_run = jax.random.split(jax.random.PRNGKey(settings.seed))
    noise = jax.random.normal(k_init, (settings.chains, len(psi_hat)))
    starts = {"psi": psi_hat[None] + settings.init_spread * noise @ chol.T, "z": jnp.broadcast_to(z_hat, (settings.chains, *z_hat.shape))}
    imm0 = jnp.concatenate([jnp.asarray(np.diag(cov)), z_var.ravel()])  # blackjax ravels the position: psi, then z
    return starts, imm0, k_run


def _chain(target: Target, start, imm0, key, settings: NutsSettings):
    """One chain: windowed adaptation, then ``settings.samples`` NUTS draws."""
    import blackjax  # imported here: reading fit files (NutsSettings) should not load the sampler
    from blackjax.adaptation.base import get_filter_adapt_info_fn

    warm_key, sample_key = jax.random.split(key)
    warmup = blackjax.window_adaptation(
        blackjax.nuts, target.log_density, initial_inverse_mass_matrix=imm0,
        target_acceptance_rate=settings.target_accept, adaptation_info_fn=get_filter_adapt_info_fn(),
        max_num_doublings=settings.max_tree_depth,
    )  # fmt: skip
    (state, params), _ = warmup.run(warm_key, start, num_steps=settings.warmup)
    kernel = blackjax.nuts(target.log_density, **params)  # params include max_num_doublings

    def step(state, k):
        state, info = kernel.step(k, state)
        return state, (state.position, state.logdensity, info.acceptance_rate, info.is_divergent,
                       info.num_trajectory_expansions, info.num_integration_steps, info.energy)  # fmt: skip

    _, (pos, lp, acc, div, depth, steps, energy) = jax.lax.scan(step, state, jax.random.split(sample_key, settings.samples))
    return pos["psi"], pos["z"], lp, acc, div, depth, steps, energy, params["step_size"], params["inverse_mass_matrix"]


def pointwise(target: Target, samples: Samples, seed: int = 0, batch_size: int = 64):
    """Per draw and observation: log-likelihood and a posterior predictive draw ``[chain, draw, patients, obs]``,
    and the solver status ``[chain, draw, patients]`` (primal solves only, ``batch_size`` draws at a time)."""
    c, d = samples.psi.shape[:2]
    psi = samples.psi.reshape(c * d, -1)
    z = samples.z.reshape(c * d, *samples.z.shape[2:])
    keys = jax.random.split(jax.random.PRNGKey(seed), c * d)
    fn = eqx.filter_jit(lambda tgt, args: chunked_map(lambda a: tgt.pointwise(*a), args, batch_size))
    ll, rep, status = fn(target, (psi, z, keys))
    shape = lambda x: np.asarray(x).reshape(c, d, *x.shape[1:])
    return shape(ll), shape(rep), shape(status)
