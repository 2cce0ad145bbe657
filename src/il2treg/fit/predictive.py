r"""Posterior predictive simulation of new patients under any regimen, from a fit's posterior.

For each of ``n_draws`` posterior draws :math:`(\theta, \beta, \omega, \sigma)^{(d)}` of the population
parameters (the NUTS posterior after ``--method nuts``, else the Laplace normal approximation), draw
``n_patients`` new patients :math:`\eta \sim N(0, \Omega^{(d)})` at the reference
covariates, simulate them under ``regimen``, and report per draw and patient

* every observable at ``times`` (``treg_per_uL``, ``tconv_per_uL``, ...), and the Treg fold change
  :math:`T(t)/T(0)`;
* the latent SLEDAI change at ``day`` and the probability of an SRI-4 response there
  (:func:`il2treg.sledai.score_change_probability` with the fit's SLEDAI error model), times the
  probability that BILAG/PGA does not veto it.

The spread over ``draw`` is parameter uncertainty; the spread over ``patient`` is between-patient
variability.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from il2treg.errors import InputError
from il2treg.fit.assemble import declared_factors, score_sd
from il2treg.fit.omega import block_correlation
from il2treg.fit.problem import individual_theta, to_unconstrained, typical_theta
from il2treg.fit.result import FitResult
from il2treg.fit.spec import FitSpec, stored_spec
from il2treg.likelihood import ResidualModel
from il2treg.model import Parameters
from il2treg.regimen import Regimen
from il2treg.simulate import simulate
from il2treg.sledai import score_change_probability


def posterior_predictive(
    result: FitResult,
    regimen: Regimen,
    times,
    *,
    spec: FitSpec | None = None,
    n_draws: int = 200,
    n_patients: int = 100,
    day: float | None = None,
    seed: int = 0,
) -> xr.Dataset:
    """Simulate new patients from the posterior of ``result`` under ``regimen`` (module docstring).

    Arguments:
        result: a fit (:func:`il2treg.fit.load_fit`).
        regimen: the regimen to simulate (:mod:`il2treg.regimen`).
        times: observation days (sorted, non-negative).
        spec: the fit's specification; default: read from ``result.spec_path``.
        n_draws: posterior draws used (spread evenly over the chains' draws).
        n_patients: new patients per draw.
        day: SLEDAI assessment day; default the fit's ``[sri4] day``.

    Returns:
        ``xarray.Dataset`` with dims ``draw``, ``patient``, ``time``: one variable per observable
        (``[draw, patient, time]``), ``treg_fold``, ``sledai_change`` and ``p_sri4``
        (``[draw, patient]``), and the population parameters used (``[draw]``).

    Raises:
        InputError: a fit without a usable posterior, or bad ``times`` / sizes.
    """
    if n_draws < 1 or n_patients < 1:
        raise InputError(f"n_draws and n_patients must be >= 1, got {n_draws} and {n_patients}.")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times.size == 0 or np.any(np.diff(times) < 0) or np.any(times < 0) or not np.all(np.isfinite(times)):
        raise InputError("times must be a non-empty sorted 1-D array of days >= 0. Fix: e.g. numpy.arange(0, 85, 1.0).")
    spec = spec or stored_spec(result)
    names = spec.model.observable_names
    if not {"sledai", "treg_per_uL"} <= set(names):
        raise InputError(f"model {spec.model.name!r} has no sledai and treg_per_uL observables: the posterior predictive of SRI-4 and the Treg fold needs both. "
                         "Fix: simulate the model's observables with il2treg.simulate and draw_patients().")  # fmt: skip
    sledai = names.index("sledai")
    day = float(spec.sri4.day if day is None else day)
    problem = spec.problem()
    draws, pick, natural, params = _draw(result, spec, n_draws, n_patients, seed)
    grid = np.union1d(times, [0.0, day])
    sim = simulate(spec.model, regimen, jnp.asarray(grid), params)
    values = np.asarray(sim.values, dtype=np.float64).reshape(n_draws, n_patients, len(grid), -1)
    at = np.searchsorted(grid, times)
    residual = _residual(spec, problem, natural)
    l0, l1 = values[:, :, np.searchsorted(grid, 0.0), sledai], values[:, :, np.searchsorted(grid, day), sledai]
    p_sri4 = np.empty((n_draws, n_patients))
    for d in range(n_draws):
        res = residual(d)
        p_fall, _, _ = score_change_probability(l0[d], l1[d], score_sd(res, l0[d]), score_sd(res, l1[d]), spec.sri4.fall, step=res.score_step)
        p_sri4[d] = spec.sri4.bilag_pga_keep * p_fall
    treg = names.index("treg_per_uL")
    out = {name: (("draw", "patient", "time"), values[:, :, at, k]) for k, name in enumerate(names)}
    out["treg_fold"] = (("draw", "patient", "time"), values[:, :, at, treg] / values[:, :, np.searchsorted(grid, 0.0), treg][..., None])
    out["sledai_change"] = (("draw", "patient"), l1 - l0)
    out["p_sri4"] = (("draw", "patient"), p_sri4)
    for j, name in enumerate(result.psi_names):
        out[name] = (("draw",), draws[pick, j])
    attrs = {"fit": result.name, "method": result.method, "day": day, "seed": seed, "regimen_doses": int(np.asarray(regimen.times).shape[-1])}
    return xr.Dataset(out, coords={"draw": pick, "patient": np.arange(n_patients), "time": times}, attrs=attrs)


def draw_patients(result: FitResult, *, n_draws: int, n_patients: int = 1, seed: int = 0, spec: FitSpec | None = None) -> tuple[FitSpec, Parameters]:
    """New patients from the posterior of ``result``: ``n_patients`` per each of ``n_draws``
    population draws (draw-major), at the reference covariates. Returns the fit's specification
    (its ``model`` simulates them) and the :class:`Parameters` ``[n_draws * n_patients, params]``."""
    if n_draws < 1 or n_patients < 1:
        raise InputError(f"n_draws and n_patients must be >= 1, got {n_draws} and {n_patients}.")
    spec = spec or stored_spec(result)
    return spec, _draw(result, spec, n_draws, n_patients, seed)[3]


def _draw(result: FitResult, spec: FitSpec, n_draws: int, n_patients: int, seed: int):
    draws = np.asarray(result.posterior, dtype=np.float64).reshape(-1, len(result.psi_names))
    if not np.all(np.isfinite(draws)):
        raise InputError(f"fit {result.name!r} has no posterior draws (its covariance step failed). Fix: refit, or run --method nuts.")
    problem = spec.problem()
    pick = np.linspace(0, len(draws) - 1, n_draws).round().astype(int)
    natural = draws[pick] / declared_factors(problem)[None, :]  # internal units
    ne = problem.n_eta
    # natural: psi's layout on the reporting scale (fixed effects, beta, omega, correlations, omega_IOV, sigma)
    parts = problem.split(natural)
    u = jnp.stack([to_unconstrained(problem, dict(zip(problem.fixed, row))) for row in parts.u]) if problem.n_fixed else jnp.zeros((n_draws, 0))
    theta = jax.vmap(lambda uu: typical_theta(problem, uu))(u)  # reference covariates: beta does not act
    # the Cholesky factor of each draw's Omega = diag(omega) R diag(omega): eta = z @ chol.T
    chol = np.stack([om[:, None] * np.linalg.cholesky(block_correlation(ne, problem.corr_pairs, dict(zip(problem.corr_pairs, r, strict=True))))
                     for om, r in zip(parts.log_omega, parts.corr)]) if ne else np.zeros((n_draws, 0, 0))  # fmt: skip
    z = jax.random.normal(jax.random.PRNGKey(seed), (n_draws, n_patients, ne))
    between = dataclasses.replace(problem, iov=(), occasion=None, occasions=0)  # a new patient's eta; kappa below
    theta_i = jax.vmap(lambda th, ch, zz: jax.vmap(lambda zi: individual_theta(between, th, ch @ zi))(zz))(theta, jnp.asarray(chol), z)
    if problem.iov:  # one occasion: a kappa of its own on each parameter with inter-occasion variability
        kappa = parts.log_omega_iov[:, None, :] * jax.random.normal(jax.random.PRNGKey(seed + 1), (n_draws, n_patients, problem.n_iov))
        idx = jnp.asarray([problem.model.parameter_names.index(n) for n in problem.iov])
        theta_i = theta_i.at[..., idx].multiply(jnp.exp(kappa))
    params = Parameters(theta_i.reshape(n_draws * n_patients, -1), spec.model.parameter_names)
    return draws, pick, natural, params


def _residual(spec: FitSpec, problem, natural: np.ndarray):
    """The error model of draw d (sigmas from the draw, the rest from the fit file)."""
    base = spec.residual_model()
    sigma = problem.split(natural).log_sigma  # the reporting scale: sigma itself

    def of(d: int) -> ResidualModel:
        sa, sp = np.asarray(base.sigma_add).copy(), np.asarray(base.sigma_prop).copy()
        for k, (dvid, kind) in enumerate(problem.sigmas):
            (sa if kind == "add" else sp)[base.names.index(dvid)] = sigma[d, k]
        return ResidualModel(jnp.asarray(sa), jnp.asarray(sp), base.kinds, base.score_step, base.names)

    return of
