"""The empirical Bayes estimates (il2treg.fit.individual): each is a minimum of its patient's
objective, the objective is reported at the estimate, and iterations are counted as documented."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from il2treg.fit import batch_inner_solve
from il2treg.fit.individual import STATUS_CONVERGED, STATUS_MAX_ITER
from il2treg.fit.problem import data_neg2ll, individual_theta, predict, unpack

pytestmark = pytest.mark.slow  # `make test-all` and CI run these; `make test` leaves them out


@pytest.fixture(scope="module")
def ebes(fit_case):
    """EBEs of the 24 patients of ``fit_case`` at its starting point, from eta = 0."""
    objective, psi = fit_case["objective"], fit_case["psi0"]
    return objective.inner(psi, jnp.zeros((24, objective.problem.n_eta)))


def _individual_objective(fit_case):
    """g_i(eta) = -2 log L_i + eta' Omega^-1 eta, from a plain forward solve (no sensitivities)."""
    objective, psi = fit_case["objective"], fit_case["psi0"]
    problem = objective.problem
    up = unpack(problem, problem.split(psi), objective.base_residual)

    @jax.jit
    def g(eta, patients):
        def one(e, patient):
            pred, status = predict(problem, individual_theta(problem, up.theta, e), patient)
            value = data_neg2ll(up.residual, pred, patient) + jnp.sum(e**2 / up.omega**2)
            return jnp.where(status == 0, value, jnp.inf)

        return jax.vmap(one)(eta, patients)

    return g


def test_each_ebe_is_a_minimum_of_its_patients_objective(fit_case, ebes):
    """g at the EBE is the reported g, and a step of 1e-3 along any random effect, either way,
    raises it (the EBE solver stopping early, or reporting another point's g, would fail this)."""
    assert np.all(np.asarray(ebes.status) == STATUS_CONVERGED)
    g = _individual_objective(fit_case)
    patients = fit_case["objective"].patients
    n, k = ebes.eta.shape
    h = 1e-3
    shifts = jnp.concatenate([jnp.zeros((1, k)), h * jnp.eye(k), -h * jnp.eye(k)])  # [1 + 2k, k]
    eta = (ebes.eta[None] + shifts[:, None]).reshape(-1, k)  # shift-major
    batch = jax.tree_util.tree_map(lambda x: jnp.tile(x, (1 + 2 * k,) + (1,) * (x.ndim - 1)), patients)
    values = np.asarray(g(eta, batch)).reshape(1 + 2 * k, n)
    at, around = values[0], values[1:]
    np.testing.assert_allclose(at, np.asarray(ebes.g), rtol=1e-9)
    assert np.all(around > at), np.argwhere(around <= at)
    # Central differences: the gradient at the EBE vanishes up to their O(h^2) truncation error.
    fd = (values[1 : 1 + k] - values[1 + k :]) / (2 * h)
    curvature = (values[1 : 1 + k] + values[1 + k :] - 2 * at) / h**2
    assert np.all(np.abs(fd) <= 1e-3 * curvature), np.max(np.abs(fd) / curvature)


def test_a_restart_at_the_ebes_takes_no_iteration_and_changes_nothing(fit_case, ebes):
    """Convergence is tested before a step is proposed, so a converged start costs one solve."""
    again = fit_case["objective"].inner(fit_case["psi0"], ebes.eta)
    assert np.all(np.asarray(again.iterations) == 0)
    assert np.all(np.asarray(again.status) == STATUS_CONVERGED)
    np.testing.assert_array_equal(np.asarray(again.eta), np.asarray(ebes.eta))
    np.testing.assert_array_equal(np.asarray(again.g), np.asarray(ebes.g))


def test_the_iteration_budget_is_kept_and_reported(fit_case, ebes):
    """With max_iter = 2 (trial points after the start), no patient evaluates more; those that
    need more stop at exactly 2 with status 1, those that need fewer end where the full solve does."""
    objective, psi = fit_case["objective"], fit_case["psi0"]
    up = unpack(objective.problem, objective.problem.split(psi), objective.base_residual)
    solve = jax.jit(lambda eta0: batch_inner_solve(objective.problem, up.theta, up.beta, up.random_effects, up.residual,
                                                    objective.patients, eta0, batch_size=objective.batch_size, max_iter=2))  # fmt: skip
    short = solve(jnp.zeros_like(ebes.eta))
    iterations, status = np.asarray(short.iterations), np.asarray(short.status)
    full = np.asarray(ebes.iterations)
    assert np.all(iterations == np.minimum(full, 2))
    assert np.all(status[full > 2] == STATUS_MAX_ITER) and np.any(full > 2)
    done = full <= 2
    assert np.all(status[done] == STATUS_CONVERGED)
    np.testing.assert_array_equal(np.asarray(short.eta)[done], np.asarray(ebes.eta)[done])
