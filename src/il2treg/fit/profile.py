r"""Profile likelihood: the OFV with one population parameter held at each value of a grid and
every other one re-optimised.

For an entry :math:`\psi_k` of the estimation vector,

.. math::  \mathrm{OFV}_p(c) = \min_{\psi:\ \psi_k = c} \mathrm{OFV}(\psi), \qquad
           \Delta(c) = \mathrm{OFV}_p(c) - \mathrm{OFV}(\hat\psi)

and the 95% profile-likelihood interval is :math:`\{c : \Delta(c) \le \chi^2_{1,0.95} = 3.841\}`,
its ends found by linear interpolation between grid points. It needs no quadratic approximation
of the likelihood, so it is the interval to trust when the Hessian one is doubtful; where the
likelihood is near-quadratic the two agree.

**Practical non-identifiability** (Raue et al., Bioinformatics 2009): a side of the interval that
does not close within the grid, the grid reaching either the parameter's bounds or ``span``
standard errors (or, without a usable SE, ``fallback`` units of the estimation scale) from the
estimate. A profile flat over the whole grid (:math:`\max\Delta < 3.841`) is non-identifiable on
both sides.

The grid is walked outwards from :math:`\hat\psi_k` in both directions, each point warm-started
from its neighbour (the same preconditioned L-BFGS as the fit, :mod:`il2treg.fit.estimate`).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

from il2treg.errors import SpecError
from il2treg.fit.estimate import PopulationFit, minimise_ofv
from il2treg.fit.individual import InnerResult
from il2treg.fit.population import PatientGradients

#: :math:`\chi^2_1` 95% quantile.
CHI2_95 = 3.841458820694124


@dataclasses.dataclass(frozen=True)
class Profile:
    """A profile of one population parameter (estimation scale).

    Attributes:
        name: the entry of psi.
        values: grid, sorted; ``delta``: OFV_p − OFV at the estimate (0 at the estimate).
        estimate, se: the fit's estimate and its Hessian SE (NaN if none).
        ci_low, ci_high: profile 95% interval ends (NaN where the profile does not cross 3.841).
        converged: whether each grid point's re-optimisation converged.
        others: the re-optimised psi at each grid point ``[grid, psi]``.
    """

    name: str
    values: np.ndarray
    delta: np.ndarray
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    converged: np.ndarray
    others: np.ndarray

    @property
    def identifiable(self) -> bool:
        """Both ends of the 95% interval close within the grid."""
        return bool(np.isfinite(self.ci_low) and np.isfinite(self.ci_high))

    @property
    def hessian_ci(self) -> tuple[float, float]:
        return self.estimate - 1.959963984540054 * self.se, self.estimate + 1.959963984540054 * self.se

    def verdict(self) -> str:
        """One sentence: the interval, or which side is not identified."""
        if self.identifiable:
            return f"{self.name}: profile 95% CI [{self.ci_low:.4g}, {self.ci_high:.4g}] (estimation scale)."
        open_sides = [s for s, v in (("below", self.ci_low), ("above", self.ci_high)) if not np.isfinite(v)]
        flat = f" (flat: max ΔOFV {np.nanmax(self.delta):.2f} < 3.84)" if len(open_sides) == 2 else ""
        return f"{self.name}: practically non-identifiable, the profile does not rise by 3.84 {' or '.join(open_sides)} the estimate within the grid{flat}."


class _Pinned:
    """An objective over psi with entry ``k`` held at ``value`` (the interface minimise_ofv uses)."""

    def __init__(self, objective, k: int, value: float, n: int):
        self.objective, self.k, self.value_k = objective, k, value
        self.keep = np.asarray([j for j in range(n) if j != k])

    def full(self, psi_r):
        return jnp.insert(jnp.asarray(psi_r), self.k, self.value_k)

    def inner(self, psi_r, eta0):
        return self.objective.inner(self.full(psi_r), eta0)

    def value(self, psi_r, inner, include):
        return self.objective.value(self.full(psi_r), inner, include)

    def gradients(self, psi_r, eta, include) -> PatientGradients:
        g = self.objective.gradients(self.full(psi_r), eta, include)
        return PatientGradients(g.ofv[:, self.keep], g.eta[:, :, self.keep])

    def penalty_gradient(self, psi_r):
        return self.objective.penalty_gradient(self.full(psi_r))[self.keep]

    def curvature_rows(self, psi_r):
        return self.objective.curvature_rows(self.full(psi_r))[:, self.keep]


def profile(
    objective,
    fit: PopulationFit,
    name: str,
    *,
    points: int = 6,
    span: float = 4.0,
    fallback: float = 3.0,
    max_iter: int = 100,
    ftol: float = 1e-4,
    gtol: float = 1e-2,
) -> Profile:
    """Profile ``name`` (an entry of ``fit.psi_names``) on ``points`` grid points each side.

    Arguments:
        objective: the fit's :class:`~il2treg.fit.population.Objective` (or threaded one).
        fit: the population fit (its psi, EBEs, included patients and covariance).
        points: grid points on each side of the estimate (equally spaced up to the grid's end).
        span: the grid reaches ``span`` Hessian SEs from the estimate, or the parameter's bounds.
        fallback: reach in estimation-scale units when the SE is not usable (NaN or larger).

    Raises:
        SpecError: an unknown name or fewer than 2 points.
    """
    names = list(fit.psi_names)
    if name not in names:
        raise SpecError(f"cannot profile {name!r}: not a population parameter of this fit. Fix: use one of {', '.join(names)}.")
    if points < 2:
        raise SpecError(f"a profile needs at least 2 points on each side, got {points}.")
    k = names.index(name)
    psi_hat = np.asarray(fit.psi, dtype=np.float64)
    se = float(np.sqrt(np.asarray(fit.covariance)[k, k])) if np.all(np.isfinite(np.asarray(fit.covariance))) else math.nan
    reach = span * se if math.isfinite(se) and span * se < fallback else fallback
    lo, hi = _bounds(objective.problem, k)
    low_end, high_end = max(psi_hat[k] - reach, lo), min(psi_hat[k] + reach, hi)
    ofv_hat = float(fit.ofv)
    include = fit.included
    inner_hat: InnerResult = objective.inner(fit.psi, fit.eta)

    rows = {psi_hat[k]: (0.0, True, psi_hat)}
    for end in (low_end, high_end):
        grid = psi_hat[k] + (end - psi_hat[k]) * np.arange(1, points + 1) / points
        warm_psi, warm_inner = np.delete(psi_hat, k), inner_hat
        for c in grid:
            pinned = _Pinned(objective, k, float(c), len(psi_hat))
            start = jnp.asarray(warm_psi)
            inner = objective.inner(pinned.full(start), warm_inner.eta)
            psi_r, inner, ofv, _, converged, _ = minimise_ofv(pinned, start, inner, include, max_iter, ftol, gtol, None, 0.0)
            rows[float(c)] = (ofv - ofv_hat, converged, np.asarray(pinned.full(psi_r)))
            warm_psi, warm_inner = np.asarray(psi_r), inner
    values = np.asarray(sorted(rows))
    delta = np.asarray([rows[v][0] for v in values])
    low, high = _crossing(values, delta, psi_hat[k], -1), _crossing(values, delta, psi_hat[k], +1)
    return Profile(
        name=name, values=values, delta=delta, estimate=float(psi_hat[k]), se=se, ci_low=low, ci_high=high,
        converged=np.asarray([rows[v][1] for v in values]), others=np.stack([rows[v][2] for v in values]),
    )  # fmt: skip


def _crossing(values: np.ndarray, delta: np.ndarray, centre: float, side: int) -> float:
    """Where the profile first rises through CHI2_95 walking from the centre to one side (NaN: never)."""
    order = np.argsort(side * (values - centre))
    v, d = values[order], delta[order]
    v, d = v[side * (v - centre) >= 0], d[side * (v - centre) >= 0]
    for j in range(1, len(v)):
        if d[j] >= CHI2_95 > d[j - 1]:
            return float(v[j - 1] + (CHI2_95 - d[j - 1]) * (v[j] - v[j - 1]) / (d[j] - d[j - 1]))
    return math.nan


def _bounds(problem, k: int) -> tuple[float, float]:
    """Bounds of psi entry k on the estimation scale (log-transformed parameters: log bounds)."""
    fixed = np.flatnonzero(problem.layout.mask("u")).tolist()
    if k in fixed:
        ps = problem.model.spec[problem.fixed[fixed.index(k)]]
        if ps.transform == "log":
            return math.log(ps.bounds[0]), math.log(ps.bounds[1])
        if ps.transform == "identity":
            return ps.bounds
    return -math.inf, math.inf
