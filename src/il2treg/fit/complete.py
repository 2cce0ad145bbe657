r"""SAEM's complete-data model: each patient's terms of the objective SAEM minimises.

In the individual parameters :math:`\phi_i = \log\theta_i` of the parameters with random effects
(:mod:`il2treg.fit.saem` has the algorithm), patient :math:`i`'s complete-data objective is

.. math::
    c_i(\psi; \phi_i) = \underbrace{-2\log p(y_i \mid \phi_i, \psi)}_{d_i}
        + (\phi_i - \mu_i(\psi))^\top \Omega^{-1} (\phi_i - \mu_i(\psi)) + \log\det\Omega,

:math:`\mu_i` the log of the patient's typical values (covariate effects applied). With
inter-occasion variability (:mod:`il2treg.fit.problem`), :math:`\phi_i` goes on with the
patient's :math:`\kappa` occasion by occasion, whose :math:`\mu` is 0. The
population objective (:class:`il2treg.fit.population.Objective`) evaluates these per patient
for SAEM, which is why they live apart from the algorithm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from il2treg.fit.problem import (
    FitProblem,
    PatientData,
    covariate_theta,
    data_neg2ll,
    expand,
    expanded_predict,
    individual_theta,
    predict,
    typical_theta,
    unpack,
)
from il2treg.likelihood import ResidualModel, neg2ll_terms


def _random_index(problem: FitProblem):
    names = problem.model.parameter_names
    return jnp.asarray([names.index(n) for n in problem.random], dtype=jnp.int32)


def individual_parameters(problem: FitProblem, psi, phi, patient: PatientData):
    r"""(:math:`\theta_i`, :math:`\mu_i`): every parameter of the patient with the random-effect ones
    at :math:`e^{\phi_i}` (times :math:`e^{\kappa}` of each period's occasion where they have
    inter-occasion variability), and the log typical values :math:`\mu_i` of those (0 for a kappa)."""
    ne, parts = problem.n_eta, problem.split(psi)
    typical = covariate_theta(problem, typical_theta(problem, parts.u), parts.beta, patient.covariates)
    if not problem.n_random:
        return typical, jnp.zeros(0)
    theta, mu = typical, jnp.zeros(0)
    if ne:
        idx = _random_index(problem)
        mu = jnp.log(typical[0, idx] if problem.timed else typical[idx])  # random-effect parameters follow no time-varying covariate (saem refuses it)
        theta = typical.at[..., idx].set(jnp.exp(phi[:ne]))
    if problem.iov:  # the kappas, as the FOCE-I objective applies them (eta 0: the etas are in theta already)
        theta = individual_theta(problem, theta, jnp.concatenate([jnp.zeros(ne), phi[ne:]]), patient.occasion)
        mu = jnp.concatenate([mu, jnp.zeros(problem.n_random - ne)])
    return theta, mu


def data_term(problem: FitProblem, psi, base_residual: ResidualModel, phi, patient: PatientData):
    """:math:`d_i`: −2 log p(y_i | phi_i, psi) by one forward solve (inf if the solve fails), and the solver status."""
    theta, _ = individual_parameters(problem, psi, phi, patient)
    pred, status = predict(problem, theta, patient)
    d = data_neg2ll(unpack(problem, problem.split(psi), base_residual).residual, pred, patient)
    return jnp.where((status == 0) & jnp.isfinite(d), d, jnp.inf), status


def random_effect_term(problem: FitProblem, psi, base_residual: ResidualModel, phi, patient: PatientData):
    r""":math:`(\phi_i - \mu_i)^\top \Omega^{-1} (\phi_i - \mu_i) + \log\det\Omega`."""
    random_effects = unpack(problem, problem.split(psi), base_residual).random_effects
    _, mu = individual_parameters(problem, psi, phi, patient)
    return random_effects.quad(phi - mu) + random_effects.log_det()


def score_directions(problem: FitProblem) -> tuple[int, ...]:
    """Model indices of the parameters in which the data term needs ODE sensitivities: those the
    fit varies and the ODE reads, less those with a random effect between patients (held at
    e^phi, times e^kappa)."""
    names = problem.model.parameter_names
    return tuple(k for k in problem.ode_varied if names[k] not in problem.random)


def complete_score(problem: FitProblem, psi, base_residual: ResidualModel, phi, patient: PatientData):
    r"""One patient's complete-data objective :math:`c_i`, its gradient in :math:`\psi` and the
    information :math:`B_i` (module docstring), from one solve with first-order sensitivities in
    :func:`score_directions`; and whether they are finite (the solve succeeded)."""
    theta0, _ = individual_parameters(problem, psi, phi, patient)
    ex = expand(problem, theta0, patient, score_directions(problem))

    def observation_terms(p):
        theta, _ = individual_parameters(problem, p, phi, patient)
        pred = expanded_predict(problem, ex, theta, patient)
        terms = neg2ll_terms(unpack(problem, problem.split(p), base_residual).residual, pred, patient.obs_value, patient.obs_dvid, patient.obs_cens, patient.obs_mask)
        return terms, terms

    per_obs, terms = jax.jacfwd(observation_terms, has_aux=True)(psi)  # [obs, psi]
    re = lambda p: random_effect_term(problem, p, base_residual, phi, patient)
    value = jnp.sum(terms) + re(psi)
    grad = jnp.sum(per_obs, axis=0) + jax.grad(re)(psi)
    info = 0.5 * per_obs.T @ per_obs + (jax.hessian(re)(psi) if not problem.n_corr else _random_effect_information(problem, psi, base_residual, patient))
    ok = (ex.status == 0) & jnp.isfinite(value) & jnp.all(jnp.isfinite(grad)) & jnp.all(jnp.isfinite(info))
    return value, grad, info, ok


def _random_effect_information(problem: FitProblem, psi, base_residual: ResidualModel, patient: PatientData):
    r"""The expected Hessian of the random-effect term under :math:`\phi_i \sim N(\mu_i, \Omega)`:
    :math:`2 J_\mu^\top \Omega^{-1} J_\mu + [\mathrm{tr}(\Omega^{-1}\Omega_a\Omega^{-1}\Omega_b)]_{ab}`
    (:math:`J_\mu = \partial\mu_i/\partial\psi`, :math:`\Omega_a = \partial\Omega/\partial\psi_a`).

    Used with an omega block: the exact Hessian is not positive definite in the correlations far
    from their optimum, and the Newton step of the M-step then goes astray (measured: estimates
    swinging by a factor 2 in CL while exploring). Without blocks the exact Hessian is kept."""
    mu = lambda p: individual_parameters(problem, p, jnp.zeros(problem.n_random), patient)[1]
    cov = lambda p: unpack(problem, problem.split(p), base_residual).random_effects.covariance()
    j_mu = jax.jacfwd(mu)(psi)  # [eta, psi]
    d_cov = jax.jacfwd(cov)(psi)  # [eta, eta, psi]
    precision = unpack(problem, problem.split(psi), base_residual).random_effects.precision()
    a = jnp.einsum("ij,jkp->ikp", precision, d_cov)  # Omega^-1 Omega_a
    return 2.0 * j_mu.T @ precision @ j_mu + jnp.einsum("ijp,jiq->pq", a, a)


def log_typical(problem: FitProblem, psi, patients: PatientData) -> Float[Array, "patients eta"]:
    """:math:`\\mu_i` of every patient."""
    return jax.vmap(lambda pat: individual_parameters(problem, psi, jnp.zeros(problem.n_random), pat)[1])(patients)
