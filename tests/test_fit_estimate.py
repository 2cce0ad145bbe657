"""Specification of the outer optimisation: preconditioning, and a patient no parameters can fit."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from il2treg.fit.estimate import fit_population, preconditioner


def test_preconditioner_whitens_the_outer_product_shrunk_towards_its_diagonal():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(40, 5)) @ np.diag([10.0, 1.0, 1e-1, 5.0, 0.3])  # curvatures within the 1e6 floor
    t = preconditioner(g)
    r = 0.5 * g.T @ g
    r_shrunk = r + np.diag(np.diag(r)) * 5 / 40  # k parameters / n patients
    np.testing.assert_allclose(t.T @ r_shrunk @ t, np.eye(5), atol=1e-10)


def test_preconditioner_is_full_rank_with_fewer_patients_than_parameters():
    g = np.random.default_rng(2).normal(size=(3, 6))  # 3 patients, 6 parameters: BHHH has rank 3
    t = preconditioner(g)
    assert np.linalg.matrix_rank(t) == 6
    s = np.linalg.svd(t, compute_uv=False)
    assert s.max() / s.min() < 1e3  # no near-null direction blown up


def test_preconditioner_survives_a_parameter_without_information():
    g = np.zeros((10, 3))
    g[:, :2] = np.random.default_rng(1).normal(size=(10, 2))
    t = preconditioner(g)  # third column all zero: R is singular
    assert np.all(np.isfinite(t))


@pytest.mark.slow
def test_unfittable_patient_is_flagged_and_the_others_fit_as_without_it(fit_case):
    """One patient's observations alternately x10 and /10: no parameters fit them.

    The fit flags that patient (mean squared IWRES > 25), resumes without it, and ends where a
    fit of the same cohort with that patient's observations removed ends. Before excluding it, the
    fit tries the other EBE starts; the fit without it, where no patient is left out, does not.
    """
    objective, psi0 = fit_case["objective"], fit_case["psi0"]
    patients = objective.patients
    bad = 5
    factor = jnp.where(jnp.arange(patients.obs_value.shape[1]) % 2 == 0, 10.0, 0.1)
    corrupted = eqx.tree_at(lambda o: o.patients.obs_value, objective, patients.obs_value.at[bad].multiply(factor))
    without = eqx.tree_at(lambda o: o.patients.obs_mask, objective, patients.obs_mask.at[bad].set(False))

    flagged_calls, reference_calls = Recording(corrupted), Recording(without)
    flagged = fit_population(flagged_calls, psi0, covariance=False)
    reference = fit_population(reference_calls, psi0, covariance=False)

    # The EBE restarts at the start run only when a patient would be left out (here the misfit):
    # one EBE search then two restarts before the first gradient, against one search alone.
    assert flagged_calls.before_first_gradient() == ["inner"] * 3
    assert reference_calls.before_first_gradient() == ["inner"]

    included = np.asarray(flagged.included)
    assert not included[bad]
    assert np.all(np.delete(included, bad))
    assert flagged.converged and reference.converged
    assert abs(flagged.ofv - reference.ofv) < 1e-2
    np.testing.assert_allclose(flagged.psi, reference.psi, atol=2e-2)
    np.testing.assert_allclose(np.delete(np.asarray(flagged.eta), bad, 0), np.delete(np.asarray(reference.eta), bad, 0), atol=2e-2)


class Recording:
    """An objective that records which of its EBE searches and gradients were called, in order."""

    def __init__(self, objective):
        self._objective, self.calls = objective, []

    def __getattr__(self, name):
        attr = getattr(self._objective, name)
        if name not in ("inner", "gradients"):
            return attr

        def recorded(*args, **kwargs):
            self.calls.append(name)
            return attr(*args, **kwargs)

        return recorded

    def before_first_gradient(self) -> list[str]:
        return self.calls[: self.calls.index("gradients")]
