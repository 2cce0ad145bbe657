"""NUTS: the log density and its gradient, the two parametrisations, a short run written as
ArviZ netCDF that round-trips through load_fit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from il2treg.errors import InputError, SpecError
from il2treg.fit import load_fit
from il2treg.fit.assemble import initial_psi
from il2treg.fit.bayes import NutsSettings, Target, chain_starts, make_target
from il2treg.fit.estimators import Nuts
from il2treg.fit.priors import sampling_priors
from il2treg.fit.problem import make_problem, patient_arrays
from il2treg.fit.result import save
from il2treg.fit.run import compute_fit
from il2treg.fit.spec import read_fit_spec


@pytest.fixture(scope="module")
def spec():
    return read_fit_spec("fits/lupil2_nuts/fit.toml")


@pytest.fixture(scope="module")
def target(spec):
    problem = make_problem(spec.model, spec.dataset, fixed=spec.fixed, random=spec.random, sigmas=spec.sigmas,
                           residual_kinds={e.dvid: e.kind for e in spec.errors})  # fmt: skip
    patients = patient_arrays(spec.dataset)
    res = spec.residual_model()
    psi0 = initial_psi(spec, problem, res)
    n = patients.obs_time.shape[0]
    centred = jnp.zeros((n, problem.n_eta), bool).at[::2, 1].set(True)  # a mix of both forms
    return Target(problem, patients, res, sampling_priors(problem, psi0), jnp.ones(n, bool), centred), psi0


@pytest.mark.slow
def test_log_density_gradient_matches_finite_differences(target):
    tgt, psi0 = target
    n, ne = tgt.centred.shape
    pos = {"psi": psi0 + 0.05, "z": tgt.to_coordinates(psi0 + 0.05, 0.2 * jnp.sin(jnp.arange(n * ne).reshape(n, ne)))}
    flat, unravel = ravel_pytree(pos)
    f = jax.jit(lambda x: tgt.log_density(unravel(x)))
    grad = jax.grad(f)(flat)
    h = 1e-5
    for k in range(flat.size):
        e = jnp.zeros_like(flat).at[k].set(h)
        fd = (f(flat + e) - f(flat - e)) / (2 * h)
        assert float(grad[k]) == pytest.approx(float(fd), rel=1e-5, abs=1e-6), k


@pytest.mark.slow
def test_log_density_does_not_depend_on_the_chunking(target):
    """Patients are solved in work order in chunks and put back: with some patients excluded, a
    wrong inverse permutation would count the wrong ones."""
    from il2treg.fit.bayes import _patient_loglik

    tgt, psi0 = target
    n, ne = tgt.centred.shape
    tgt = dataclasses.replace(tgt, include=jnp.arange(n) % 3 != 1)
    pos = {"psi": psi0 + 0.05, "z": tgt.to_coordinates(psi0 + 0.05, 0.2 * jnp.sin(jnp.arange(n * ne).reshape(n, ne)))}

    @jax.jit
    def direct(tgt, pos):
        up, eta, theta = tgt._unpacked(pos["psi"], pos["z"])
        per_patient = jax.vmap(lambda th, pat: _patient_loglik(tgt.problem, th, up.residual, pat))(theta, tgt.patients)
        log_random = jnp.where(tgt.centred, -0.5 * (eta / up.omega) ** 2 - jnp.log(up.omega), -0.5 * pos["z"] ** 2) - 0.5 * np.log(2 * np.pi)
        return jnp.sum(jnp.where(tgt.include, per_patient, 0.0)) + jnp.sum(log_random) + tgt.prior.log_density(pos["psi"])

    assert 0 < int(jnp.sum(tgt.patients.dose_amount.sum(axis=1) == 0)) < n  # placebo and treated: the order is not the identity
    chunked = jax.jit(lambda tgt, pos: tgt.log_density(pos))(dataclasses.replace(tgt, batch_size=3), pos)  # 3 chunks, the last short
    assert float(chunked) == pytest.approx(float(direct(tgt, pos)), rel=1e-12)


@pytest.mark.slow
def test_centred_and_non_centred_coordinates_describe_the_same_distribution(target):
    tgt, psi0 = target
    n, ne = tgt.centred.shape
    eta = 0.1 * jnp.cos(jnp.arange(n * ne).reshape(n, ne))
    other = dataclasses.replace(tgt, centred=~tgt.centred)
    a = tgt.log_density({"psi": psi0, "z": tgt.to_coordinates(psi0, eta)})
    b = other.log_density({"psi": psi0, "z": other.to_coordinates(psi0, eta)})
    # same distribution of eta: the densities differ by the Jacobian of z = eta / omega only
    from il2treg.fit.problem import unpack

    log_omega = jnp.log(unpack(tgt.problem, tgt.problem.split(psi0), tgt.base_residual).omega)
    jacobian = jnp.sum(jnp.where(other.centred, log_omega, 0.0)) - jnp.sum(jnp.where(tgt.centred, log_omega, 0.0))
    assert float(a - b) == pytest.approx(float(jacobian), rel=1e-9, abs=1e-9)
    np.testing.assert_allclose(np.asarray(tgt.eta(psi0, tgt.to_coordinates(psi0, eta))), np.asarray(eta), atol=1e-14)


@pytest.mark.slow
def test_make_target_centres_the_well_informed_effects(target):
    tgt, _ = target
    omega = jnp.asarray([0.4, 0.3])
    var = jnp.asarray([[0.01, 0.09], [0.1, 0.001]])
    ne = tgt.problem.n_eta
    variances = var[:, :ne] if ne == 2 else jnp.tile(var[:, :1], (1, ne))
    t = make_target(tgt.problem, tgt.patients, tgt.base_residual, tgt.prior, tgt.include, variances, omega[:ne] if ne == 2 else jnp.full(ne, 0.4))
    assert bool(t.centred[0, 0]) and not bool(t.centred[1, 0])


@pytest.mark.parametrize("kw, message", [({"chains": 0}, "chains"), ({"target_accept": 0.3}, "target_accept"), ({"warmup": 1.5}, "warmup")])
def test_bad_nuts_settings_are_named(kw, message):
    with pytest.raises(SpecError, match=message):
        NutsSettings(**kw)


@pytest.fixture(scope="module")
def nuts_result(spec, tmp_path_factory):
    result = compute_fit(spec, estimator=Nuts(NutsSettings(chains=2, warmup=40, samples=40, seed=3)))
    out = tmp_path_factory.mktemp("nuts") / "results"
    save(result, out)
    return result, out


@pytest.mark.slow
def test_nuts_results_round_trip_exactly_through_load_fit(nuts_result):
    result, out = nuts_result
    back = load_fit(out)
    assert back.method == "nuts" and back.estimator == Nuts()
    assert back.equals(result)
    assert set(back.inference.groups()) >= {"posterior", "sample_stats", "log_likelihood", "posterior_predictive", "observed_data", "constant_data"}


@pytest.mark.slow
def test_nuts_posterior_file_has_named_dims_and_works_with_arviz(nuts_result):
    import arviz as az

    result, out = nuts_result
    idata = az.from_netcdf(str(out / "posterior.nc"))
    post = idata.posterior
    assert dict(post.sizes) == {"chain": 2, "draw": 40, "patient": 8, "parameter": 3}
    assert post["eta"].dims == ("chain", "draw", "patient", "parameter")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "patient", "time")
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "patient", "time")
    assert list(post["parameter"].values) == ["emax_treg", "treg0", "tconv0"]
    summary = az.summary(idata, var_names=list(result.psi_names))
    assert list(summary.index) == list(result.psi_names)
    assert np.all(np.isfinite(summary["r_hat"]))
    loo = az.loo(idata)
    assert np.isfinite(loo["elpd_loo"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = az.plot_trace(idata, var_names=["kout_treg", "eta"])
    assert axes.shape == (2, 2)
    plt.close("all")
    # the draws are the FitResult's posterior, natural scale
    np.testing.assert_array_equal(post["kout_treg"].values, result.posterior[..., result.psi_names.index("kout_treg")])
    # padded or unused slots carry no likelihood and no observation
    used = idata.constant_data["obs_used"].values.astype(bool)
    assert np.all(idata.log_likelihood["y"].values[..., ~used] == 0.0)
    assert np.all(np.isnan(idata.observed_data["y"].values[~used]))
    stats = idata.sample_stats
    assert {"diverging", "tree_depth", "acceptance_rate", "energy", "lp", "step_size", "solver_failed"} <= set(stats.data_vars)


@pytest.mark.slow
def test_nuts_report_and_estimates_carry_the_posterior_summary(nuts_result):
    result, _ = nuts_result
    est = result.estimates[result.estimates["estimated"]]
    for col in ("posterior_mean", "posterior_sd", "posterior_q2.5", "posterior_q97.5", "r_hat", "ess_bulk"):
        assert np.all(np.isfinite(est[col])), col
    assert np.all(est["posterior_q2.5"] < est["posterior_q97.5"])
    assert "## NUTS posterior" in result.summary()


def test_an_estimator_that_is_not_one_is_refused_before_computing(spec, tmp_path):
    from il2treg.fit.estimators import estimator_named
    from il2treg.fit.run import run_fit

    with pytest.raises(InputError, match=r"estimator must be an il2treg.fit estimator \(Foce\(\), Saem\(...\), Nuts\(...\)\), got 'mcmc'"):
        run_fit(spec, tmp_path / "x", estimator="mcmc")
    assert not (tmp_path / "x").exists()
    with pytest.raises(InputError, match=r"unknown estimation method 'mcmc'\. Fix: use one of foce, saem, nuts"):
        estimator_named("mcmc")


@pytest.mark.slow
def test_the_posterior_with_inter_occasion_variability_puts_each_kappa_in_its_occasion():
    """The log density at a point against one computed from the FOCE-I objective's individual
    parameters (each occasion with its kappa of CL) and the normal densities of eta (centred
    where the data say much) and of kappa (always non-centred); the coordinates round-trip."""
    from il2treg.fit.bayes import _patient_loglik
    from il2treg.fit.problem import covariate_theta, individual_theta, unpack
    from test_fit_population import iov_data, iov_objective

    objective, psi = iov_objective(iov_data([3, 2, 2, 2]))
    problem, patients, res = objective.problem, objective.patients, objective.base_residual
    up = unpack(problem, problem.split(psi), res)
    sd = up.random_effects.sd
    eta_var = jnp.tile(jnp.asarray([[0.01, 0.5, 0.001, 0.001, 0.001]]), (4, 1)) * sd**2 * 4  # CL well informed, V not; kappas too, yet non-centred
    tgt = make_target(problem, patients, res, sampling_priors(problem, psi), jnp.ones(4, bool), eta_var, sd)
    assert np.asarray(tgt.centred).tolist() == [[True, False, False, False, False]] * 4
    eta = 0.1 * jnp.cos(jnp.arange(20).reshape(4, 5))
    z = tgt.to_coordinates(psi, eta)
    np.testing.assert_allclose(np.asarray(tgt.eta(psi, z)), np.asarray(eta), atol=1e-14)

    @jax.jit
    def direct(psi, z):
        theta = jax.vmap(lambda e, pat: individual_theta(problem, covariate_theta(problem, up.theta, up.beta, pat.covariates), e, pat.occasion))(eta, patients)
        loglik = jax.vmap(lambda th, pat: _patient_loglik(problem, th, up.residual, pat))(theta, patients)
        log_random = jnp.where(tgt.centred, -0.5 * (eta / sd) ** 2 - jnp.log(sd), -0.5 * z**2) - 0.5 * np.log(2 * np.pi)
        return jnp.sum(loglik) + jnp.sum(log_random) + tgt.prior.log_density(psi)

    density = jax.jit(lambda tgt, pos: tgt.log_density(pos))(tgt, {"psi": psi, "z": z})
    assert float(density) == pytest.approx(float(direct(psi, z)), rel=1e-12)
    # the chains start from every random effect's coordinates, their masses from its Laplace variance
    k = len(psi)
    starts, imm0, _ = chain_starts(tgt, psi, eta, eta_var, jnp.full((k, k), jnp.nan), NutsSettings(chains=2))
    np.testing.assert_allclose(np.asarray(starts["z"][1]), np.asarray(z), rtol=1e-14)
    expected = np.where(np.asarray(tgt.centred), np.asarray(eta_var), np.asarray(eta_var) / np.asarray(sd) ** 2)
    np.testing.assert_allclose(np.asarray(imm0[k:]).reshape(4, 5), expected, rtol=1e-14)
