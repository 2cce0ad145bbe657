r"""Individual fits: empirical Bayes estimates (MAP with the population as prior), vmapped.

For patient :math:`i` with population parameters fixed, minimise

.. math::  g_i(\eta) = -2\log L_i(\theta\,e^{\eta}) + \eta^\top \Omega^{-1} \eta

by a structured quasi-Newton iteration (generalised Gauss-Newton plus a secant correction, as in
NL2SOL) with Levenberg damping and a trust region. With predictions :math:`f(\eta)`, their forward
sensitivities :math:`J = \partial f / \partial \eta` (diffrax ``ForwardMode``, see
:func:`pred_and_jac`), and the first and second derivatives :math:`r_1, r_2` of each
observation's −2 log-likelihood with respect to its prediction:

.. math::
    \nabla g = J^\top r_1 + 2\Omega^{-1}\eta, \qquad
    H = J^\top \mathrm{diag}((r_2)_+) J + 2\Omega^{-1} + S, \qquad
    \Delta\eta = -(H + \lambda\,\mathrm{diag}\,H)^{-1} \nabla g

:math:`S` estimates the term :math:`\sum_t r_{1,t} \nabla^2 f_t` that Gauss-Newton leaves out from
the change of :math:`J^\top r_1` between iterates (:func:`_secant_update`); it is dropped whenever
:math:`H` would not be positive definite. Without it Gauss-Newton converges only linearly where
residuals are large. Steps are
shortened to at most ``max_step`` in any :math:`\eta` (a factor :math:`e` on the parameter).
A step is accepted when :math:`g` does not increase (then :math:`\lambda \leftarrow \lambda/3`),
else rejected (:math:`\lambda \leftarrow 10\lambda`). It stops when the undamped Newton decrement
:math:`\delta = \nabla g^\top H^{-1} \nabla g` falls below ``tol`` (tested before solving for the
next point, so convergence costs no extra ODE solve), or after ``max_iter`` iterations.

It also stops, converged, at the resolution of float64: when a step failed to lower :math:`g` by
more than :math:`r = 16\epsilon|g|` (:math:`\epsilon` the machine epsilon; :math:`g` is a sum of
tens of rounded terms, so its rounding error is several :math:`\epsilon|g|`) and
:math:`\delta < r`, i.e. the decrease the quadratic model still promises (about :math:`\delta/2`)
is within the rounding of :math:`g`. This matters only for a ``tol`` under :math:`r` (about 4e-13
for :math:`g \approx 120`, e.g. the 1e-16 of the gradient test): before it, such a patient kept
taking steps of no effect until ``max_iter`` and was reported as not converged (measured: 60
iterations at decrements of 1.6-4 :math:`\epsilon|g|`, 5.3 s for 6 patients instead of 0.6 s).

Each patient gets a status: 0 converged, 1 not converged within ``max_iter``, 2 the ODE solve
failed at the start (the patient is flagged and left out of a population objective).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from il2treg.fit.omega import RandomEffects
from il2treg.fit.problem import (
    FitProblem,
    PatientData,
    covariate_theta,
    data_neg2ll,
    expand,
    expanded_predict,
    individual_theta,
    predict,
)
from il2treg.likelihood import ResidualModel, neg2ll_terms
from il2treg.simulate import ordered_map, work_order

STATUS_CONVERGED, STATUS_MAX_ITER, STATUS_SOLVER_FAILED = 0, 1, 2
#: Relative rounding of g taken as its resolution: 16 machine epsilons (see the module docstring).
_RESOLUTION = 16.0 * float(jnp.finfo(jnp.float64).eps)


class InnerResult(eqx.Module):
    """Result of the inner optimisation for one patient (stacked for batches)."""

    eta: Float[Array, " eta"]
    g: Float[Array, ""]  # -2LL + eta' Omega^-1 eta at eta
    pred: Float[Array, " obs"]
    jac: Float[Array, "obs eta"]
    curvature: Float[Array, " obs"]  # (r2)_+
    iterations: Int[Array, ""]
    status: Int[Array, ""]
    scale: Float[Array, " obs"]  # where the residual SDs are evaluated: pred (FOCE-I), or the population predictions (FOCE)


def observation_derivatives(residual: ResidualModel, pred, patient: PatientData, scale=None):
    """First and second derivatives of each observation's −2LL with respect to its prediction
    (the residual SDs held at ``scale`` when given: FOCE without interaction)."""
    total = lambda p: jnp.sum(neg2ll_terms(residual, p, patient.obs_value, patient.obs_dvid, patient.obs_cens, patient.obs_mask, scale))
    return jax.jvp(jax.grad(total), (pred,), (jnp.ones_like(pred),))  # the Hessian is diagonal: one jvp gives r1 and r2


def pred_and_jac(problem: FitProblem, theta, eta, patient: PatientData):
    """Predictions, their sensitivities to eta and the solver status.

    The ODE is differentiated (forward mode) only with respect to the random-effect parameters
    it reads (:func:`il2treg.fit.problem.expand`); the rest of the chain rule is exact and cheap.
    """
    ex = expand(problem, individual_theta(problem, theta, eta, patient.occasion), patient, problem.ode_random)
    fwd = lambda e: expanded_predict(problem, ex, individual_theta(problem, theta, e, patient.occasion), patient)
    return fwd(eta), jax.jacfwd(fwd)(eta), ex.status


def inner_solve(
    problem: FitProblem,
    theta: Float[Array, " params"],
    random_effects: RandomEffects,
    residual: ResidualModel,
    patient: PatientData,
    eta0: Float[Array, " eta"],
    *,
    max_iter: int = 60,
    tol: float = 1e-10,
    max_step: float = 1.0,
    scale: Float[Array, " obs"] | None = None,
) -> InnerResult:
    r"""Empirical Bayes estimate of eta for one patient (see the module docstring); the random
    effects follow ``random_effects`` (:math:`N(0, \Omega)`); with ``scale`` the residual SDs are
    held at those predictions (FOCE without interaction)."""

    def evaluate(eta):
        pred, jac, status = pred_and_jac(problem, theta, eta, patient)
        g = data_neg2ll(residual, pred, patient, scale) + random_effects.quad(eta)
        ok = (status == 0) & jnp.isfinite(g)
        return jnp.where(ok, g, jnp.inf), pred, jac

    def gradient(eta, pred, jac):
        r1, r2 = observation_derivatives(residual, pred, patient, scale)
        return jac.T @ r1 + 2.0 * random_effects.precision_times(eta), r1, r2

    def proposal(grad, r2, jac, corr, lam):
        """Damped structured quasi-Newton step from the current point (its gradient ``grad`` and
        observation curvatures ``r2``) and the decrement."""
        gauss_newton = jac.T @ (jnp.maximum(r2, 0.0)[:, None] * jac) + 2.0 * random_effects.precision()
        # GN plus a secant estimate of the residual curvature term while the sum stays positive definite.
        hess = jnp.where(jnp.all(jnp.linalg.eigvalsh(gauss_newton + corr) > 0), gauss_newton + corr, gauss_newton)
        step = jnp.linalg.solve(hess + lam * jnp.diag(jnp.diag(hess)), -grad)
        step = step * jnp.minimum(1.0, max_step / jnp.max(jnp.abs(step), initial=0.0))  # trust region on eta
        return step, grad @ jnp.linalg.solve(hess, grad)  # undamped: damping cannot fake convergence

    # The first pass of the loop evaluates eta0 itself (a zero step from g = +inf, always
    # accepted), so the ODE solve is traced and compiled once, not once more before the loop.
    n = eta0.shape[0]
    m = patient.obs_time.shape[0]

    def cond(state):
        return (~state[-1]) & (state[-2] <= max_iter)

    def body(state):
        eta, g, pred, jac, r2, corr, lam, step, grad, it, _ = state
        g_new, p_new, j_new = evaluate(eta + step)
        accept = g_new <= g
        stalled = g - g_new <= _RESOLUTION * jnp.abs(g)  # no decrease beyond the rounding of g
        grad_new, r1_new, r2_new = gradient(eta + step, p_new, j_new)
        corr_new = _secant_update(corr, step, grad_new - grad, (j_new - jac).T @ r1_new)
        keep = lambda new, old: jnp.where(accept, new, old)
        eta, g, pred, jac = keep(eta + step, eta), keep(g_new, g), keep(p_new, pred), keep(j_new, jac)
        # The gradient and curvatures at the kept point: those just computed, or those carried
        # from when it was accepted (the same values: one evaluation of the likelihood's
        # derivatives per pass, not two).
        grad, r2 = keep(grad_new, grad), keep(r2_new, r2)
        corr = keep(jnp.where(jnp.all(jnp.isfinite(corr_new)), corr_new, corr), corr)
        lam = jnp.where(accept, lam / 3.0, lam * 10.0)
        # The next step is proposed now, so a point that is already converged costs no solve.
        step, decrement = proposal(grad, r2, jac, corr, lam)
        failed = ~jnp.isfinite(g)  # only the first pass can accept g = inf
        at_precision = stalled & (decrement < _RESOLUTION * jnp.abs(g))  # see the module docstring
        done = failed | (decrement < tol) | at_precision | (lam > 1e12)
        # A vmapped loop runs the body for finished patients too (and discards it) while their
        # chunk-mates go on: a zero step keeps that solve at a point already solved, not at a
        # NaN step (a patient with a NaN likelihood made the search of 24 patients take 31 s, not 1 s).
        step = jnp.where(done, 0.0, step)
        return eta, g, pred, jac, r2, corr, lam, step, grad, it + 1, done

    # Damping starts at 3e-3 so that the first (always accepted) pass leaves the usual 1e-3.
    zeros = jnp.zeros(n, dtype=eta0.dtype)
    state = (eta0, jnp.asarray(jnp.inf, eta0.dtype), jnp.zeros(m, eta0.dtype), jnp.zeros((m, n), eta0.dtype), jnp.zeros(m, eta0.dtype),
             jnp.zeros((n, n), eta0.dtype), jnp.asarray(3e-3), zeros, zeros, jnp.asarray(0), jnp.asarray(False))  # fmt: skip
    eta, g, pred, jac, r2, _, lam, _, _, it, done = jax.lax.while_loop(cond, body, state)
    failed = ~jnp.isfinite(g)
    it = it - 1  # iterations after the evaluation at eta0
    status = jnp.where(failed, STATUS_SOLVER_FAILED, jnp.where(done & (lam <= 1e12), STATUS_CONVERGED, STATUS_MAX_ITER))
    return InnerResult(eta, g, pred, jac, jnp.maximum(r2, 0.0), it, status, pred if scale is None else scale)


def laplace_covariance(inner: InnerResult, random_effects: RandomEffects) -> Float[Array, "patients eta eta"]:
    """Laplace covariance of each patient's random effects at its EBE:
    :math:`(\\tfrac12 J^\\top \\mathrm{diag}(r_2)_+ J + \\Omega^{-1})^{-1}` (``inner`` stacked over patients)."""

    def one(jac, curv):
        return jnp.linalg.inv(0.5 * jac.T @ (curv[:, None] * jac) + random_effects.precision())

    return jax.vmap(one)(inner.jac, inner.curvature)


def _secant_update(corr, s, y, y_sharp):
    r"""Dennis-Gay-Welsch update of the residual-curvature estimate :math:`S` (NL2SOL).

    :math:`S_+ = S + \frac{w y^\top + y w^\top}{y^\top s} - \frac{(w^\top s)\, y y^\top}{(y^\top s)^2}`
    with :math:`w = y^\sharp - S s`, :math:`y^\sharp = (J_+ - J)^\top r_{1,+}` (the change of the
    gradient that Gauss-Newton does not explain) and :math:`y` the change of the gradient.
    Skipped (returns ``corr``) when :math:`y^\top s \le 0`.
    """
    ys = y @ s
    w = y_sharp - corr @ s
    update = (jnp.outer(w, y) + jnp.outer(y, w)) / ys - (w @ s) * jnp.outer(y, y) / ys**2
    return jnp.where(ys > 1e-12 * jnp.sqrt((y @ y) * (s @ s)), corr + update, corr)


def batch_inner_solve(problem, theta, beta, random_effects: RandomEffects, residual, patients: PatientData, eta0, *, batch_size: int = 64, **kw) -> InnerResult:
    """:func:`inner_solve` for every patient (chunks of ``batch_size`` vmapped patients, in
    :func:`il2treg.simulate.work_order`).

    ``theta`` holds the typical values at the reference covariates; each patient's covariate
    effects (coefficients ``beta``) are applied first.
    """

    def solve(args):
        patient, eta = args
        typical = covariate_theta(problem, theta, beta, patient.covariates)
        scale = None if problem.interaction else predict(problem, typical, patient)[0]  # FOCE: the SDs at the population predictions
        return inner_solve(problem, typical, random_effects, residual, patient, eta, scale=scale, **kw)

    return ordered_map(solve, (patients, eta0), work_order(patients.dose_amount), batch_size)
