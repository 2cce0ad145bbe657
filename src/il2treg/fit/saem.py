r"""SAEM: stochastic approximation EM for the population fit (the estimator of Monolix and nlmixr2).

**Model** as in :mod:`il2treg.fit.problem`, written in the individual parameters
:math:`\phi_i = \log\theta_i` of the parameters with random effects (the missing data):
:math:`\phi_i \sim N(\mu_i(\psi), \Omega)` with :math:`\mu_i` the log of patient :math:`i`'s
typical values (covariate effects applied). The complete-data objective is

.. math::
    c(\psi; \phi) = \sum_i \Big[ \underbrace{-2\log p(y_i \mid \phi_i, \psi)}_{d_i}
        + (\phi_i - \mu_i(\psi))^\top \Omega^{-1} (\phi_i - \mu_i(\psi)) + \log\det\Omega \Big].

**Iteration** :math:`k` (Kuhn & Lavielle, Comput Stat Data Anal 2005, with the M-step of Gu &
Kong, PNAS 1998):

1. *Simulation*: Metropolis-Hastings steps on every :math:`\phi_i` targeting
   :math:`p(\phi_i \mid y_i; \psi_k) \propto e^{-c_i/2}`: ``prior_draws`` independent proposals from
   :math:`N(\mu_i, \Omega)` (accepted with probability :math:`\min(1, e^{-(d_i' - d_i)/2})`), then
   ``walk_steps`` random-walk proposals :math:`\phi_i + s_i L_i z`, :math:`z \sim N(0, I)`.
   :math:`L_i L_i^\top` is the Laplace covariance of :math:`\eta_i` given :math:`y_i`,
   :math:`2 H_i^{-1}` with :math:`H_i` the Gauss-Newton Hessian of the EBE search
   (:mod:`il2treg.fit.individual`), so the walk has the shape of each patient's conditional
   distribution (a patient's data may fix its Treg baseline to a few percent and leave its
   Emax almost as uncertain as the population's: a walk scaled by :math:`\omega` alone then
   mixes slowly along Emax). It is recomputed at the EBEs of the current :math:`\psi` every
   ``refresh`` iterations until the smoothing phase starts (the Cholesky factor of :math:`\Omega`
   where a patient's EBE search fails). The scale :math:`s_i` is adapted towards an acceptance of 0.3 until
   then; in the smoothing phase the kernel is fixed. Each step is one forward solve of every
   patient; a proposal whose solve fails is rejected.
2. *Stochastic approximation and maximisation*: the complete-data objective is replaced by a
   quadratic model about :math:`\psi_k`, with the score :math:`s_k = \nabla_\psi c(\psi_k; \phi^{(k)})`
   and the information :math:`B_k` (below); the surrogate
   :math:`Q_k = (1 - \gamma_k) Q_{k-1} + \gamma_k q_k` stays quadratic, its Hessian is
   :math:`H_k = (1 - \gamma_k) H_{k-1} + \gamma_k B_k` and its minimiser is
   :math:`\psi_{k+1} = \psi_k - \gamma_k H_k^{-1} s_k` (stochastic-approximation Newton-Raphson).
   :math:`\gamma_k = 1` for ``burn_in`` iterations (MCMC only, :math:`\psi` not moved) and
   ``explore`` iterations, then :math:`\gamma_k = 1/j` in the ``smooth`` iterations
   :math:`j = 1, 2, \dots`, so the estimates converge (in the smoothing phase they are running
   averages over the conditional distribution of :math:`\phi`, the Fisher identity's
   expectation of the complete-data score).

**Score and information.** With :math:`\phi` held, the data term depends on :math:`\psi` only
through the fixed effects *without* random effects, covariate coefficients and residual SDs, so
the solve carries forward sensitivities only in the directions of the fixed parameters the ODE
reads (for the reference fit before it took in the IL-2 data, 2 of the 3 the FOCE-I gradient
needed, and no second-order ones: 3 ODE copies against 7); the rest is algebra on small arrays. :math:`B_k` is the exact
Hessian of the random-effect term plus the outer-product (BHHH) estimate of the Hessian of the
data term summed over observations, :math:`\tfrac12\sum_t \nabla d_{it} \nabla d_{it}^\top`
(the information equality of each observation's −2 log-likelihood, valid for every error model
here, censored and ordinal included), so no second derivative of the ODE is needed. With an
omega block the random-effect term's Hessian is replaced by its expectation,
:math:`2 J_\mu^\top\Omega^{-1}J_\mu + [\mathrm{tr}(\Omega^{-1}\Omega_a\Omega^{-1}\Omega_b)]`, positive
semi-definite where the exact one is not in the correlations (:mod:`il2treg.fit.complete`).

**Annealing** (as Monolix): during the exploration phase each :math:`\omega_k` and residual SD may
fall by at most a factor :math:`\sqrt{\tau}` per iteration (``annealing`` :math:`= \tau`), which
keeps the chains mixing while the estimates are far from the optimum (correlations of an omega
block are not annealed).

**After the iterations** the EBEs (conditional modes) are found at :math:`\hat\psi` from the last
draws, and the FOCE-I objective is evaluated there (:class:`il2treg.fit.population.Objective`)
and reported as the OFV, so that SAEM and FOCE-I fits of one problem can be compared on one
scale: SAEM maximises the exact likelihood, so its OFV on the FOCE-I scale is at or above the
FOCE-I minimum, and the difference says how much the Laplace approximation matters. A patient
whose solve fails at the start is flagged (status 2) and left out, as in the FOCE-I fit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from il2treg.errors import SpecError
from il2treg.fit.complete import log_typical
from il2treg.fit.estimate import PopulationFit, estimate_covariance, multistart
from il2treg.fit.individual import STATUS_CONVERGED, STATUS_SOLVER_FAILED, laplace_covariance
from il2treg.fit.problem import unpack

#: Random-walk acceptance the step scales are adapted towards.
_TARGET_ACCEPT = 0.3
#: Largest move of any entry of psi in one iteration (a factor e^2 on a log-scale parameter).
_MAX_STEP = 2.0


@dataclasses.dataclass(frozen=True)
class SaemSettings:
    """How SAEM is run (``[saem]`` in a fit file; defaults shown in :mod:`il2treg.fit.spec`).

    Attributes:
        burn_in: iterations of MCMC only, at the starting estimates.
        explore: iterations with step :math:`\\gamma = 1`.
        smooth: iterations with :math:`\\gamma = 1/j` (the estimates average over draws).
        prior_draws: Metropolis-Hastings steps per iteration with proposals from the population.
        walk_steps: random-walk Metropolis-Hastings steps per iteration.
        refresh: iterations between recomputations of the walk's shape (EBEs at the current
            estimates) before the smoothing phase.
        annealing: :math:`\\tau`; an omega or residual SD may fall by at most :math:`\\sqrt\\tau`
            per exploration iteration (1: no annealing).
        seed: seed of the random draws (the fit is reproducible for a given seed).
    """

    burn_in: int = 5
    explore: int = 250
    smooth: int = 100
    prior_draws: int = 2
    walk_steps: int = 2
    refresh: int = 25
    annealing: float = 0.95
    seed: int = 0

    def __post_init__(self):
        for name, least in (("burn_in", 0), ("explore", 1), ("smooth", 1), ("prior_draws", 0), ("walk_steps", 0), ("refresh", 1), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < least:
                raise SpecError(f"[saem] {name} must be a whole number >= {least}, got {v!r}.")
        if self.prior_draws + self.walk_steps < 1:
            raise SpecError("[saem] prior_draws + walk_steps must be at least 1 (no draws, no E-step). Fix: set walk_steps = 2.")
        if not 0.0 < self.annealing <= 1.0:
            raise SpecError(f"[saem] annealing must be in (0, 1], got {self.annealing!r}.")

    @property
    def iterations(self) -> int:
        return self.burn_in + self.explore + self.smooth


# ----------------------------------------------------------------------------- the algorithm


def _newton_step(hess: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """:math:`H^{-1} g` with the eigenvalues of the symmetrised :math:`H` made positive (absolute
    value, floored at 1e-8 of the largest), so an indefinite or singular :math:`H` still gives a
    descent direction."""
    lam, vec = np.linalg.eigh(0.5 * (hess + hess.T))
    lam = np.maximum(np.abs(lam), 1e-8 * max(float(np.abs(lam).max()), 1e-300))
    return vec @ ((vec.T @ grad) / lam)


def walk_shapes(objective, psi, phi, mu) -> np.ndarray:
    """:math:`L_i` (lower Cholesky factors, ``[patients, eta, eta]``) of the Laplace covariance
    :math:`2 H_i^{-1}` of each patient's random effects at its EBE for ``psi`` (searched from
    ``phi - mu``); the Cholesky factor of :math:`\\Omega` where the search fails."""
    inner = objective.inner(psi, jnp.asarray(phi - mu))
    random_effects = unpack(objective.problem, objective.problem.split(psi), objective.base_residual).random_effects
    cov = np.asarray(laplace_covariance(inner, random_effects))
    shapes = np.broadcast_to(np.asarray(random_effects.cholesky()), cov.shape).copy()
    for i in np.flatnonzero((np.asarray(inner.status) == STATUS_CONVERGED) & np.all(np.isfinite(cov), axis=(1, 2))):
        with contextlib.suppress(np.linalg.LinAlgError):  # not positive definite: keep omega
            shapes[i] = np.linalg.cholesky(cov[i])
    return shapes


def _accept(rng: np.random.Generator, new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Metropolis-Hastings decisions for targets :math:`e^{-x/2}` (``x`` = −2 log target): accept
    with probability :math:`\\min(1, e^{-(new - old)/2})`; a failed proposal (inf) never is (nor,
    inf − inf being nan, one of a patient flagged at the start)."""
    with np.errstate(invalid="ignore"):
        return np.log(rng.random(new.shape[0])) < -0.5 * (new - old)


def fit_saem(objective, psi0: Float[Array, " psi"], settings: SaemSettings = SaemSettings(), *, covariance: bool = True,
             callback: Callable[[dict], None] | None = None):  # fmt: skip
    """Estimate the population parameters by SAEM from ``psi0`` (see the module docstring).

    ``objective``: an :class:`~il2treg.fit.population.Objective` (or its threaded or sharded form):
    its ``data_terms`` and ``complete_scores`` drive the iterations, its FOCE-I ``inner`` and
    ``value`` give the EBEs and OFV at the end. Returns a
    :class:`~il2treg.fit.estimate.PopulationFit` whose ``history`` is the complete-data objective
    :math:`c(\\psi_k; \\phi^{(k)})` per iteration after the burn-in and ``trace`` the estimates.
    SAEM runs its fixed number of iterations (there is no stopping test, as in Monolix): its
    ``converged`` says only that the estimates and the OFV are finite; read the trace to judge
    whether the exploration phase reached a stationary state before the smoothing phase.
    """

    start = time.time()
    problem = objective.problem
    patients = objective.patients
    moving = [n for n in problem.random if problem.timed and n in problem.follow_covariates]
    if moving:
        raise SpecError(f"SAEM cannot estimate a random effect on {moving[0]!r}, which follows a time-varying covariate (its individual value changes within a patient). "
                        "Fix: fit with FOCE-I or NUTS, or give the covariate one value per subject.")  # fmt: skip
    n, ne = patients.obs_time.shape[0], problem.n_random  # phi: log theta_i of the eta's parameters, then the kappas
    rng = np.random.default_rng(settings.seed)
    psi = np.asarray(psi0, dtype=np.float64).copy()
    spread = problem.layout.mask("log_omega", "log_omega_iov", "log_sigma")  # annealed
    corr = problem.layout.mask("corr")  # the omega blocks' partial correlations
    penalty_hess = jax.jit(jax.hessian(objective.penalty))
    effects_of = jax.jit(lambda p: unpack(problem, problem.split(p), objective.base_residual).random_effects)

    mu = np.array(log_typical(problem, jnp.asarray(psi), patients))
    phi = np.array(mu)
    d = np.array(objective.data_terms(jnp.asarray(psi), jnp.asarray(phi))[0])
    include = np.isfinite(d)  # a patient whose solve fails at the start is flagged and left out
    fresh = True  # d is the data term at the current psi
    log_scale = np.zeros(n)
    hess = None
    history, trace = [], [psi.copy()]
    accepted = np.zeros(2)
    proposed = np.zeros(2)
    for k in range(settings.iterations):
        adapting = k < settings.burn_in + settings.explore
        random_effects = effects_of(jnp.asarray(psi))
        chol, precision = np.asarray(random_effects.cholesky()), np.asarray(random_effects.precision())
        if not fresh:  # psi moved: the data terms of the current draws change with it
            mu = np.array(log_typical(problem, jnp.asarray(psi), patients))
            d = np.array(objective.data_terms(jnp.asarray(psi), jnp.asarray(phi))[0])
            fresh = True
        for _ in range(settings.prior_draws):
            trial = mu + rng.standard_normal((n, ne)) @ chol.T
            d_new = np.asarray(objective.data_terms(jnp.asarray(psi), jnp.asarray(trial))[0])
            take = _accept(rng, d_new, d)
            phi[take], d[take] = trial[take], d_new[take]
            accepted[0] += take[include].sum()
            proposed[0] += include.sum()
        if adapting and settings.walk_steps and k % settings.refresh == 0:
            shapes = walk_shapes(objective, jnp.asarray(psi), phi, mu)
        for _ in range(settings.walk_steps):
            trial = phi + np.exp(log_scale)[:, None] * np.einsum("nij,nj->ni", shapes, rng.standard_normal((n, ne)))
            d_new = np.asarray(objective.data_terms(jnp.asarray(psi), jnp.asarray(trial))[0])
            prior_old = np.einsum("ni,ij,nj->n", phi - mu, precision, phi - mu)
            prior_new = np.einsum("ni,ij,nj->n", trial - mu, precision, trial - mu)
            take = _accept(rng, d_new + prior_new, d + prior_old)
            phi[take], d[take] = trial[take], d_new[take]
            accepted[1] += take[include].sum()
            proposed[1] += include.sum()
            if adapting:
                log_scale += 0.2 * (take - _TARGET_ACCEPT)
        if k < settings.burn_in:  # MCMC only: psi stays
            trace.append(psi.copy())
            continue
        value, grads, infos, ok = (np.asarray(x) for x in objective.complete_scores(jnp.asarray(psi), jnp.asarray(phi)))
        use = include & ok
        grad = grads[use].sum(axis=0) + np.asarray(objective.penalty_gradient(jnp.asarray(psi)))
        info = infos[use].sum(axis=0) + np.asarray(penalty_hess(jnp.asarray(psi)))
        j = k - settings.burn_in - settings.explore + 1  # smoothing iteration (1, 2, ...), else <= 0
        gamma = 1.0 if j <= 0 else 1.0 / j
        hess = info if hess is None or gamma == 1.0 else (1.0 - gamma) * hess + gamma * info
        step = gamma * _newton_step(hess, grad)
        step *= min(1.0, _MAX_STEP / max(float(np.max(np.abs(step))), 1e-300))
        new = psi - step
        if j <= 0 and settings.annealing < 1.0:  # simulated annealing: spreads fall slowly while exploring
            new[spread] = np.maximum(new[spread], psi[spread] + 0.5 * np.log(settings.annealing))
            # and correlations move as slowly either way: while the typical values are still off,
            # every patient's phi - mu shares their offset, which looks like a correlation near +-1
            # (measured: without this cap, omega-block runs swung between -0.98 and 0.98)
            limit = -0.5 * np.log(settings.annealing)
            new[corr] = np.clip(new[corr], psi[corr] - limit, psi[corr] + limit)
        psi, fresh = new, False
        history.append(float(value[use].sum()))
        trace.append(psi.copy())
        if callback is not None:
            callback({"iteration": k + 1, "ofv": history[-1], "grad_max": float(np.max(np.abs(grad))), "gamma": gamma,
                      "elapsed_s": time.time() - start})  # fmt: skip

    psi_j = jnp.asarray(psi)
    mu = np.asarray(log_typical(problem, psi_j, patients))
    inner = multistart(objective, psi_j, objective.inner(psi_j, jnp.asarray(phi - mu)))
    inner_status = np.where(include, np.asarray(inner.status), STATUS_SOLVER_FAILED)
    included = jnp.asarray(inner_status == STATUS_CONVERGED)
    ofv = float(objective.value(psi_j, inner, included))
    cov = estimate_covariance(objective, psi_j, inner, included) if covariance else jnp.full((len(psi), len(psi)), jnp.nan)
    n_obs = int(jnp.sum(jnp.where(included[:, None], patients.obs_mask, False)))
    return PopulationFit(
        psi=psi_j, psi_names=problem.psi_names, ofv=ofv, covariance=cov, eta=inner.eta, inner_status=jnp.asarray(inner_status),
        included=included, iterations=settings.iterations, converged=bool(np.all(np.isfinite(psi)) and np.isfinite(ofv)),
        history=tuple(history), n_observations=n_obs, elapsed_s=time.time() - start, trace=jnp.asarray(np.stack(trace)),
        acceptance=tuple(float(a / max(p, 1)) for a, p in zip(accepted, proposed)),
    )  # fmt: skip
