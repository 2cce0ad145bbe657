r"""Individual fits: empirical Bayes estimates (MAP with the population as prior), vmapped.

For patient :math:`i` with population parameters fixed, minimise

.. math::  g_i(\eta) = -2\log L_i(\theta\,e^{\eta}) + \eta^\top \Omega^{-1} \eta

by a generalised Gauss-Newton iteration with Levenberg damping. With predictions :math:`f(\eta)`,
their forward sensitivities :math:`J = \partial f / \partial \eta` (diffrax ``ForwardMode``),
and the first and second derivatives :math:`r_1, r_2` of each observation's −2 log-likelihood
with respect to its prediction:

.. math::
    \nabla g = J^\top r_1 + 2\Omega^{-1}\eta, \qquad
    H = J^\top \mathrm{diag}((r_2)_+) J + 2\Omega^{-1}, \qquad
    \Delta\eta = -(H + \lambda\,\mathrm{diag}\,H)^{-1} \nabla g

A step is accepted when :math:`g` does not increase (then :math:`\lambda \leftarrow \lambda/3`),
else rejected (:math:`\lambda \leftarrow 3\lambda`). It stops when the Newton decrement
:math:`-\nabla g^\top \Delta\eta` falls below ``tol`` or after ``max_iter`` iterations.

Each patient gets a status: 0 converged, 1 not converged within ``max_iter``, 2 the ODE solve
failed at the start (the patient is flagged and left out of a population objective).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from il2treg.fit.problem import FitProblem, PatientData, covariate_theta, data_neg2ll, individual_theta, predict
from il2treg.likelihood import ResidualModel, neg2ll_terms

STATUS_CONVERGED, STATUS_MAX_ITER, STATUS_SOLVER_FAILED = 0, 1, 2


class InnerResult(eqx.Module):
    """Result of the inner optimisation for one patient (stacked for batches)."""

    eta: Float[Array, " eta"]
    g: Float[Array, ""]  # -2LL + eta' Omega^-1 eta at eta
    pred: Float[Array, " obs"]
    jac: Float[Array, "obs eta"]
    curvature: Float[Array, " obs"]  # (r2)_+
    iterations: Int[Array, ""]
    status: Int[Array, ""]


def observation_derivatives(residual: ResidualModel, pred, patient: PatientData):
    """First and second derivatives of each observation's −2LL with respect to its prediction."""
    total = lambda p: jnp.sum(neg2ll_terms(residual, p, patient.obs_value, patient.obs_dvid, patient.obs_cens, patient.obs_mask))
    r1 = jax.grad(total)(pred)
    r2 = jax.jvp(jax.grad(total), (pred,), (jnp.ones_like(pred),))[1]  # Hessian is diagonal
    return r1, r2


def pred_and_jac(problem: FitProblem, theta, eta, patient: PatientData):
    """Predictions, their sensitivities to eta (forward mode) and the solver status."""

    def fwd(e):
        p, status = predict(problem, individual_theta(problem, theta, e), patient)
        return p, (p, status)

    jac, (pred, status) = jax.jacfwd(fwd, has_aux=True)(eta)
    return pred, jac, status


def inner_solve(
    problem: FitProblem,
    theta: Float[Array, " params"],
    omega: Float[Array, " eta"],
    residual: ResidualModel,
    patient: PatientData,
    eta0: Float[Array, " eta"],
    *,
    max_iter: int = 60,
    tol: float = 1e-10,
) -> InnerResult:
    """Empirical Bayes estimate of eta for one patient (see the module docstring)."""
    inv = 1.0 / omega**2

    def evaluate(eta):
        pred, jac, status = pred_and_jac(problem, theta, eta, patient)
        g = data_neg2ll(residual, pred, patient) + jnp.sum(eta**2 * inv)
        ok = (status == 0) & jnp.isfinite(g)
        return jnp.where(ok, g, jnp.inf), pred, jac

    g0, p0, j0 = evaluate(eta0)
    failed = ~jnp.isfinite(g0)

    def cond(state):
        _, _, _, _, _, it, done = state
        return (~done) & (it < max_iter)

    def body(state):
        eta, g, pred, jac, lam, it, _ = state
        r1, r2 = observation_derivatives(residual, pred, patient)
        grad = jac.T @ r1 + 2.0 * eta * inv
        hess = jac.T @ (jnp.maximum(r2, 0.0)[:, None] * jac) + jnp.diag(2.0 * inv)
        step = jnp.linalg.solve(hess + lam * jnp.diag(jnp.diag(hess)), -grad)
        decrement = -grad @ step
        g_new, p_new, j_new = evaluate(eta + step)
        accept = g_new <= g
        converged = decrement < tol
        eta = jnp.where(accept, eta + step, eta)
        return (
            eta,
            jnp.where(accept, g_new, g),
            jnp.where(accept, p_new, pred),
            jnp.where(accept, j_new, jac),
            jnp.where(accept, lam / 3.0, lam * 3.0),
            it + 1,
            converged | (lam > 1e12),
        )

    state = (eta0, g0, p0, j0, jnp.asarray(1e-3), jnp.asarray(0), failed)
    eta, g, pred, jac, lam, it, done = jax.lax.while_loop(cond, body, state)
    _, r2 = observation_derivatives(residual, pred, patient)
    status = jnp.where(failed, STATUS_SOLVER_FAILED, jnp.where(done & (lam <= 1e12), STATUS_CONVERGED, STATUS_MAX_ITER))
    return InnerResult(eta, g, pred, jac, jnp.maximum(r2, 0.0), it, status)


def batch_inner_solve(problem, theta, beta, omega, residual, patients: PatientData, eta0, *, batch_size: int = 64, **kw) -> InnerResult:
    """:func:`inner_solve` for every patient (chunks of ``batch_size`` vmapped patients).

    ``theta`` holds the typical values at the reference covariates; each patient's covariate
    effects (coefficients ``beta``) are applied first.
    """

    def solve(args):
        patient, eta = args
        return inner_solve(problem, covariate_theta(problem, theta, beta, patient.covariates), omega, residual, patient, eta, **kw)

    return jax.lax.map(solve, (patients, eta0), batch_size=batch_size)
