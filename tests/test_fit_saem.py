"""SAEM (il2treg.fit.saem): the complete-data score against finite differences, the directions it
needs, the settings, a short fit of the 24-patient case and the fit-file route."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from il2treg.errors import SpecError
from il2treg.fit.complete import log_typical, random_effect_term, score_directions
from il2treg.fit.problem import from_unconstrained
from il2treg.fit.saem import SaemSettings, fit_saem

#: A short run: enough for the estimates to leave a start 30% off and settle, not for a report.
SHORT = SaemSettings(burn_in=2, explore=40, smooth=20, prior_draws=1, walk_steps=2, seed=0)


def assert_score_matches_central_differences(c, grad, psi, names, h: float = 1e-5) -> None:
    """Every patient's score ``grad[:, k]`` against central differences of ``c`` (every patient's
    complete-data objective), within 1e-5 of max(|fd|, 1)."""
    for k, name in enumerate(names):
        fd = (c(psi.at[k].add(h)) - c(psi.at[k].add(-h))) / (2 * h)
        err = np.abs(np.asarray(grad[:, k]) - fd)
        assert np.all(err <= 1e-5 * np.maximum(np.abs(fd), 1.0)), (name, float(err.max()))


@pytest.fixture(scope="module")
def saem_fit(fit_case):
    return fit_saem(fit_case["objective"], fit_case["psi0"], SHORT, covariance=False)


@pytest.mark.slow
def test_complete_score_matches_finite_differences_of_the_complete_data_objective(fit_case):
    """Gradient of c_i(psi; phi) from the first-order Taylor polynomial of the states against
    central differences of full solves, for every patient and every entry of psi: fixed effects
    with and without a random effect, omegas and sigmas (the objective's compiled functions)."""
    objective, psi = fit_case["objective"], fit_case["psi0"]
    problem = objective.problem
    phi = log_typical(problem, psi, objective.patients) + jnp.asarray([0.2, -0.1, 0.15])
    value, grad, info, ok = objective.complete_scores(psi, phi)
    patients = objective.patients

    def c(p):
        re = jax.vmap(lambda f, pat: random_effect_term(problem, p, objective.base_residual, f, pat))(phi, patients)
        return np.asarray(objective.data_terms(p, phi)[0]) + np.asarray(re)

    assert bool(np.all(ok))
    np.testing.assert_allclose(np.asarray(value), c(psi), rtol=1e-12)
    assert_score_matches_central_differences(c, grad, psi, problem.psi_names)
    np.testing.assert_allclose(np.asarray(info), np.swapaxes(np.asarray(info), 1, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_the_score_needs_sensitivities_only_for_fixed_effects_without_random_effects(fit_case):
    """phi held, the data term does not depend on the typical values of the parameters with
    random effects: the solve carries tangents only for kout_treg and emax_cd25 (the FOCE-I
    gradient also needs emax_treg, and second order in it)."""
    problem = fit_case["objective"].problem
    names = problem.model.parameter_names
    assert {names[k] for k in score_directions(problem)} == {"kout_treg", "emax_cd25"}
    assert {names[k] for k in problem.ode_varied} == {"kout_treg", "emax_cd25", "emax_treg"}


@pytest.mark.parametrize("kw, message", [({"explore": 0}, "explore"), ({"smooth": 1.5}, "smooth"), ({"annealing": 1.5}, "annealing"),
                                         ({"prior_draws": 0, "walk_steps": 0}, "walk_steps"), ({"seed": -1}, "seed")])  # fmt: skip
def test_bad_saem_settings_are_named(kw, message):
    with pytest.raises(SpecError, match=message):
        SaemSettings(**kw)


@pytest.mark.slow
def test_saem_moves_every_estimate_from_a_start_30_percent_off_to_the_truth(fit_case, saem_fit):
    """The 24 simulated patients' fixed effects start 30% above the values they were simulated
    with, sigmas 50% above; after 62 iterations every fixed effect is within 12% of its true
    value and every residual SD within 25% of 0.1 (the FOCE-I estimates of these data are 9.8%,
    9.1% and 20.5% from it, measured)."""
    problem = fit_case["objective"].problem
    names = problem.psi_names
    psi = np.asarray(saem_fit.psi)
    values = np.asarray(from_unconstrained(problem, problem.split(saem_fit.psi).u))
    for name, value in zip(problem.fixed, values):
        assert abs(value / fit_case["truth"][name] - 1) < 0.12, (name, value, fit_case["truth"][name])
    sig = np.exp(problem.split(psi).log_sigma)
    np.testing.assert_allclose(sig, 0.1, rtol=0.25)
    assert saem_fit.trace.shape == (SHORT.iterations + 1, len(names))
    np.testing.assert_array_equal(np.asarray(saem_fit.trace[0]), np.asarray(fit_case["psi0"]))
    assert len(saem_fit.history) == SHORT.explore + SHORT.smooth
    assert 0.0 < saem_fit.acceptance[1] < 1.0


@pytest.mark.slow
def test_saem_ends_with_converged_ebes_and_the_foce_objective_there(fit_case, saem_fit):
    objective = fit_case["objective"]
    assert np.all(np.asarray(saem_fit.inner_status) == 0) and bool(np.all(saem_fit.included))
    inner = objective.inner(saem_fit.psi, saem_fit.eta)
    assert int(np.max(np.asarray(inner.iterations))) <= 1  # the reported EBEs are the modes at psi
    assert saem_fit.ofv == pytest.approx(float(objective.value(saem_fit.psi, inner, saem_fit.included)), rel=1e-9)


@pytest.mark.slow
def test_saem_is_reproducible_for_a_seed_and_moves_with_it(fit_case):
    tiny = SaemSettings(burn_in=1, explore=2, smooth=1, prior_draws=1, walk_steps=1, seed=4)
    objective, psi0 = fit_case["objective"], fit_case["psi0"]
    a = fit_saem(objective, psi0, tiny, covariance=False)
    b = fit_saem(objective, psi0, tiny, covariance=False)
    c = fit_saem(objective, psi0, dataclasses.replace(tiny, seed=5), covariance=False)
    np.testing.assert_array_equal(np.asarray(a.trace), np.asarray(b.trace))
    assert not np.array_equal(np.asarray(a.trace), np.asarray(c.trace))


@pytest.mark.slow
def test_a_patient_without_a_finite_likelihood_is_flagged_and_the_fit_goes_on(fit_case):
    """Patient 3 gets a NaN observation, so its data term is not finite at the start: the path a
    failed solve takes (data_term gives inf). A real solver failure (an observation at day 5e5,
    as in test_fit_population) costs the solver's whole step budget at every solve of its chunk
    (153 s for an even shorter fit, measured); the NaN keeps the test fast and the array shapes,
    so the compiled functions are reused."""
    import equinox as eqx

    objective = fit_case["objective"]
    values = np.asarray(objective.patients.obs_value).copy()
    values[3, int(np.flatnonzero(np.asarray(objective.patients.obs_mask[3]))[-1])] = np.nan
    broken = eqx.tree_at(lambda o: o.patients.obs_value, objective, jnp.asarray(values))
    fit = fit_saem(broken, fit_case["psi0"], SaemSettings(burn_in=1, explore=3, smooth=2, prior_draws=1, walk_steps=1), covariance=False)
    status = np.asarray(fit.inner_status)
    assert status[3] == 2 and not bool(fit.included[3])
    assert np.all(np.delete(status, 3) == 0)
    assert np.all(np.isfinite(np.asarray(fit.psi))) and np.isfinite(fit.ofv)


def test_saem_settings_come_from_the_fit_file(tmp_path):
    from pathlib import Path

    from il2treg.fit.spec import read_fit_spec

    text = Path("fits/lupil2_nuts/fit.toml").read_text().replace('data = "cohort.csv"', f'data = "{Path("fits/lupil2_nuts/cohort.csv").resolve()}"')
    path = tmp_path / "fit.toml"
    path.write_text(text + "\n[saem]\nexplore = 7\nseed = 3\n")
    spec = read_fit_spec(path)
    assert spec.saem == SaemSettings(explore=7, seed=3)
    path.write_text(text + "\n[saem]\nexplore = 0\n")
    with pytest.raises(SpecError, match=r"\[saem\] explore"):
        read_fit_spec(path)
    path.write_text(text + "\n[saem]\nexplore = 2.5\n")
    with pytest.raises(SpecError, match="explore must be an integer") as info:
        read_fit_spec(path)
    assert str(info.value).count(str(path)) == 1  # the file named once
    path.write_text(text + "\n[saem]\nsmoothing = 10\n")
    with pytest.raises(SpecError, match="smoothing"):
        read_fit_spec(path)


@pytest.mark.slow
def test_saem_with_inter_occasion_variability_is_the_foce_model():
    """phi = (log CL_i, log V_i, then the kappa of CL in each occasion, mu 0): SAEM's data term is
    the FOCE-I objective's at eta = phi - mu (the same individual parameters, each occasion with
    its kappa), and its complete-data score matches central differences."""
    from il2treg.fit.estimators import Saem
    from il2treg.fit.problem import covariate_theta, data_neg2ll, individual_theta, predict, unpack
    from test_fit_population import iov_data, iov_objective

    objective, psi = iov_objective(iov_data([3, 2, 2, 2]))
    problem, patients = objective.problem, objective.patients
    Saem().check(problem)  # supported: no error
    mu = np.asarray(log_typical(problem, psi, patients))
    assert mu.shape == (4, 5) and np.all(mu[:, 2:] == 0.0)
    phi = jnp.asarray(mu + 0.1 * np.sin(np.arange(20).reshape(4, 5)))
    d, status = objective.data_terms(psi, phi)
    assert np.all(np.asarray(status) == 0)
    up = unpack(problem, problem.split(psi), objective.base_residual)

    @jax.jit
    def foce_data(eta, patient):
        theta = individual_theta(problem, covariate_theta(problem, up.theta, up.beta, patient.covariates), eta, patient.occasion)
        return data_neg2ll(up.residual, predict(problem, theta, patient)[0], patient)

    independent = [float(foce_data(phi[i] - mu[i], jax.tree.map(lambda x, i=i: x[i], patients))) for i in range(4)]
    np.testing.assert_allclose(np.asarray(d), independent, rtol=1e-10)

    value, grad, _, ok = objective.complete_scores(psi, phi)
    assert bool(np.all(ok))

    def c(p):
        re = jax.vmap(lambda f, pat: random_effect_term(problem, p, objective.base_residual, f, pat))(phi, patients)
        return np.asarray(objective.data_terms(p, phi)[0]) + np.asarray(re)

    np.testing.assert_allclose(np.asarray(value), c(psi), rtol=1e-12)
    assert_score_matches_central_differences(c, grad, psi, problem.psi_names)
