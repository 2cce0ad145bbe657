"""The SLEDAI observation model: one model for the likelihood, the fit's SRI-4 prediction and the trial."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from il2treg import sledai, trial
from il2treg.likelihood import ResidualModel, neg2ll_terms, sample_observations
from il2treg.sledai import score_change_probability


def test_reported_score_is_the_same_in_numpy_and_jax():
    """(The grid and the floor themselves: tests/test_trial.py.)"""
    x = np.random.default_rng(0).normal(3.0, 4.0, 1000)
    for step in (1.0, 2.0):
        np.testing.assert_array_equal(np.asarray(sledai.reported(jnp.asarray(x), step, jnp)), sledai.reported(x, step))


@pytest.mark.parametrize("step", [1.0, 2.0])
def test_probabilities_likelihood_and_draws_are_one_distribution(step):
    """P(Y = b) sums to 1 over the grid; P(Y <= c) is its running sum; the ordinal likelihood is
    -2 log P(Y = y) of the same distribution (also far in the tails), and draws from the ordinal
    error model follow it."""
    latent, sd = np.array([0.3, 4.0, 11.5, 25.0]), np.array([1.5, 0.7, 2.0, 3.0])
    scores = sledai.grid(float(np.max(latent + 12 * sd)), step)
    p = sledai.probabilities(scores, latent, sd, step)
    np.testing.assert_allclose(p.sum(axis=0), 1.0, rtol=1e-12)
    np.testing.assert_allclose(sledai.at_most(scores, latent, sd, step), np.cumsum(p, axis=0), atol=1e-13)
    assert np.all(sledai.at_most(np.array([-step]), latent, sd, step) == 0.0)
    residual = ResidualModel.build(kinds={"sledai": "ordinal"}, sigmas={"sledai": (1.0, 0.0)}, score_step=step)
    d = residual.names.index("sledai")
    for i in range(len(latent)):
        residual_i = ResidualModel(residual.sigma_add.at[d].set(sd[i]), residual.sigma_prop, residual.kinds, step, residual.names)
        y = jnp.asarray(scores)
        ones = jnp.ones_like(y, dtype=bool)
        terms = neg2ll_terms(residual_i, jnp.full(y.shape, latent[i]), y, jnp.full(y.shape, d), ~ones, ones)
        # Where P is a difference of two normal CDFs near 1 it loses digits (the likelihood's log
        # form does not): compare where P > 1e-8, i.e. to 1e-8 relative at worst.
        keep = p[:, i] > 1e-8
        np.testing.assert_allclose(np.asarray(terms)[keep], -2 * np.log(p[keep, i]), rtol=1e-9, atol=1e-7)
        assert np.all(np.isfinite(np.asarray(terms)))  # the tails stay finite where P underflows
        z = jax.random.normal(jax.random.PRNGKey(i), (200_000,))
        draws = np.asarray(sample_observations(residual_i, jnp.full(z.shape, latent[i]), jnp.full(z.shape, d), z))
        freq = np.array([np.mean(draws == b) for b in scores])
        np.testing.assert_allclose(freq, p[:, i], atol=4 * np.sqrt(0.25 / 200_000))


def test_the_trial_s_response_probability_is_the_fit_s_score_change_probability():
    """Without an entry criterion, the trial's P(entry and fall) is the fit's P(SRI-4 fall): the
    two sum over grids of their own extent (10 and 12 SDs beyond the latent scores), and the
    trial's has the entry criterion's factor; with it at 0 they must agree."""
    design = trial.load_design("lupil2").replace(entry_sledai_min=0.0)
    l0, l1 = np.array([4.0, 8.0, 12.0]), np.array([1.0, 7.5, 5.0])
    sd = np.full(3, design.sledai_noise_sd)
    _, both = trial.response_probability(l0, l1, design)
    fall, _, _ = score_change_probability(l0, l1, sd, sd, design.sri4_fall, step=design.score_step)
    np.testing.assert_allclose(both, fall, rtol=1e-10)


def test_score_change_probability_is_the_exact_sum_of_the_score_model():
    """Against a Monte Carlo of the score model (round, floor at 0), for steps 1 and 2."""
    rng = np.random.default_rng(0)
    l0, l1, sd = np.array([11.0, 6.0, 2.5]), np.array([4.5, 5.0, 0.3]), np.array([1.5, 2.0, 1.0])
    for step in (1.0, 2.0):
        p, e0, e1 = score_change_probability(l0, l1, sd, sd, 4.0, step=step)
        x0 = l0[:, None] + sd[:, None] * rng.standard_normal((3, 400_000))
        x1 = l1[:, None] + sd[:, None] * rng.standard_normal((3, 400_000))
        y0 = np.maximum(step * np.round(x0 / step), 0.0)
        y1 = np.maximum(step * np.round(x1 / step), 0.0)
        mc = np.mean(y0 - y1 >= 4.0, axis=1)
        np.testing.assert_allclose(p, mc, atol=4 * np.sqrt(0.25 / 400_000))
        np.testing.assert_allclose(e0, y0.mean(axis=1), atol=0.02)
        np.testing.assert_allclose(e1, y1.mean(axis=1), atol=0.02)
    assert np.isnan(score_change_probability([np.nan], [1.0], [1.0], [1.0])[0][0])
