"""Specification of the error models and the −2 log-likelihood."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from il2treg.errors import SpecError
from il2treg.likelihood import ResidualModel, neg2ll_terms, residual_sd
from il2treg.observables import OBSERVABLE_NAMES

TREG = OBSERVABLE_NAMES.index("treg_pct_cd4")
SLEDAI = OBSERVABLE_NAMES.index("sledai")


def terms(kind, y, f, cens=False, sa=0.5, sp=0.2, d=TREG):
    res = ResidualModel.build({OBSERVABLE_NAMES[d]: kind}, {OBSERVABLE_NAMES[d]: (sa, sp)})
    y, f = jnp.atleast_1d(jnp.asarray(y, float)), jnp.atleast_1d(jnp.asarray(f, float))
    n = y.shape[0]
    return np.asarray(neg2ll_terms(res, f, y, jnp.full(n, d), jnp.full(n, cens), jnp.ones(n, bool)))


@pytest.mark.parametrize(
    "kind, sd",
    [("additive", lambda f: 0.5), ("proportional", lambda f: 0.2 * f), ("combined", lambda f: np.hypot(0.5, 0.2 * f))],
)
def test_gaussian_kinds_match_scipy(kind, sd):
    y, f = np.array([4.0, 6.5, 9.0]), np.array([5.0, 6.0, 7.0])
    expected = -2 * stats.norm.logpdf(y, f, sd(f))
    np.testing.assert_allclose(terms(kind, y, f), expected, rtol=1e-12)


def test_log_error_model_is_gaussian_on_the_log_scale():
    y, f = np.array([2.0, 30.0]), np.array([3.0, 20.0])
    np.testing.assert_allclose(terms("log", y, f), -2 * stats.norm.logpdf(np.log(y), np.log(f), 0.5), rtol=1e-12)


def test_censored_observations_use_m3():
    lloq, f = 1.0, np.array([0.5, 2.0])
    np.testing.assert_allclose(terms("additive", [lloq, lloq], f, cens=True), -2 * stats.norm.logcdf(lloq, f, 0.5), rtol=1e-12)
    np.testing.assert_allclose(terms("log", [lloq, lloq], f, cens=True), -2 * stats.norm.logcdf(np.log(lloq), np.log(f), 0.5), rtol=1e-12)


def test_ordinal_sledai_probabilities_sum_to_one_over_scores():
    for latent in (0.3, 4.0, 11.7):
        k = np.arange(0, 80)
        p = np.exp(-0.5 * terms("ordinal", k, np.full(k.shape, latent), sa=2.5, d=SLEDAI))
        assert p.sum() == pytest.approx(1.0, abs=1e-12)
        direct = stats.norm.cdf(k + 0.5, latent, 2.5) - stats.norm.cdf(k - 0.5, latent, 2.5)
        direct[0] = stats.norm.cdf(0.5, latent, 2.5)
        np.testing.assert_allclose(p, direct, rtol=1e-9, atol=1e-14)  # scipy differences cancel in the tails


def test_ordinal_is_finite_with_finite_gradients_far_in_the_tails():
    res = ResidualModel.build()
    f = jnp.array([60.0, -30.0, 11.0])
    y = jnp.array([0.0, 40.0, 11.0])
    fun = lambda f: jnp.sum(neg2ll_terms(res, f, y, jnp.full(3, SLEDAI), jnp.zeros(3, bool), jnp.ones(3, bool)))
    assert np.isfinite(float(fun(f)))
    assert np.all(np.isfinite(np.asarray(jax.grad(fun)(f))))


def test_masked_observations_contribute_nothing():
    res = ResidualModel.build()
    out = neg2ll_terms(res, jnp.array([5.0, 5.0]), jnp.array([4.0, 4.0]), jnp.array([TREG, TREG]), jnp.zeros(2, bool), jnp.array([True, False]))
    assert float(out[1]) == 0.0 and float(out[0]) > 0.0


def test_residual_sd_follows_the_kind():
    res = ResidualModel.build({"treg_pct_cd4": "combined"}, {"treg_pct_cd4": (0.5, 0.2)})
    assert float(residual_sd(res, jnp.array([10.0]), jnp.array([TREG]))[0]) == pytest.approx(np.hypot(0.5, 2.0))


def test_unknown_kind_or_observation_is_rejected():
    with pytest.raises(SpecError, match="unknown error model 'poisson'"):
        ResidualModel.build({"sledai": "poisson"})
    with pytest.raises(SpecError, match="unknown observation type 'tregs'"):
        ResidualModel.build({"tregs": "additive"})


def test_ordinal_scores_on_an_even_grid_sum_to_one():
    res = ResidualModel.build({"sledai": "ordinal"}, {"sledai": (2.5, 0.0)}, score_step=2.0)
    k = np.arange(0, 80, 2.0)
    p = np.exp(-0.5 * np.asarray(neg2ll_terms(res, jnp.full(k.shape, 7.3), jnp.asarray(k), jnp.full(k.shape, SLEDAI), jnp.zeros(k.shape, bool), jnp.ones(k.shape, bool))))
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert p[3] == pytest.approx(stats.norm.cdf(7.0, 7.3, 2.5) - stats.norm.cdf(5.0, 7.3, 2.5), rel=1e-9)


@pytest.mark.slow
def test_expected_curvature_is_the_mean_of_the_observed_one():
    """NONMEM's FOCE-I curvature is the expectation of the observed second derivative of each
    observation's -2LL over y ~ N(f, V(f)): 2/V + (V'/V)^2 in closed form (proportional:
    2/(s f)^2 + 4/f^2), and the Monte Carlo mean of the observed one agrees with it."""
    from il2treg.likelihood import expected_curvature

    names = ("a", "p", "c", "l", "o")
    res = ResidualModel(jnp.array([0.5, 0.0, 0.3, 0.2, 1.0]), jnp.array([0.0, 0.2, 0.1, 0.0, 0.0]),
                        ("additive", "proportional", "combined", "log", "ordinal"), names=names)  # fmt: skip
    f = jnp.array([2.0, 3.0, 4.0, 5.0, 6.0])
    dvid = jnp.arange(5)
    no = jnp.zeros(5, dtype=bool)
    expected = expected_curvature(res, f, dvid, no, jnp.full(5, -7.0))
    var_c = 0.3**2 + (0.1 * 4.0) ** 2
    closed = [2 / 0.25, 2 / (0.2 * 3.0) ** 2 + 4 / 3.0**2, 2 / var_c + (2 * 0.1**2 * 4.0 / var_c) ** 2, 2 / (0.2**2 * 5.0**2), -7.0]
    np.testing.assert_allclose(expected, closed, rtol=1e-12)  # the ordinal row keeps the observed value given
    # Monte Carlo: the observed curvature at y drawn from the model, averaged
    z = jax.random.normal(jax.random.PRNGKey(0), (20_000, 4), dtype=jnp.float64)
    sd = residual_sd(res, f, dvid)[:4]
    y = jnp.concatenate([f[:3] + sd[:3] * z[:, :3], (f[3] * jnp.exp(0.2 * z[:, 3]))[:, None]], axis=1)

    def observed(yk):
        total = lambda p: jnp.sum(neg2ll_terms(res, jnp.concatenate([p, f[4:]]), jnp.concatenate([yk, f[4:]]), dvid, no, jnp.ones(5, dtype=bool)))
        return jax.jvp(jax.grad(total), (f[:4],), (jnp.ones(4),))[1]

    draws = jax.vmap(observed)(y)
    mean, se = jnp.mean(draws, axis=0), jnp.std(draws, axis=0) / np.sqrt(draws.shape[0])
    assert np.all(np.abs(mean - expected[:4]) <= 4 * se + 1e-12), (mean, expected[:4], se)  # additive: exact, se 0
    assert np.all(se < 0.01 * expected[:4])  # the check has power: 4 SE is under 4% of the value
    # censored rows keep the observed curvature
    cens = expected_curvature(res, f, dvid, jnp.ones(5, dtype=bool), jnp.full(5, 3.0))
    np.testing.assert_array_equal(cens, 3.0)
