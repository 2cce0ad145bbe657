r"""The SLEDAI observation model: one reported score from a latent disease activity.

A visit reports SELENA-SLEDAI on a grid of step :math:`h` (1 for integer scores; 2 when every
descriptor weighs an even number of points) from the model's latent score :math:`L` and a visit
error :math:`\varepsilon \sim N(0, s^2)`:

.. math::
    Y = \max\big(0,\; h\,\mathrm{round}((L + \varepsilon)/h)\big),

so :math:`Y = b > 0` when :math:`L + \varepsilon \in [b - h/2, b + h/2)` and :math:`Y = 0` collects
everything below :math:`h/2`:

.. math::
    P(Y = b) = \Phi\Big(\frac{b + h/2 - L}{s}\Big) - [b > 0]\,\Phi\Big(\frac{b - h/2 - L}{s}\Big),
    \qquad P(Y \le c) = \Phi\Big(\frac{c + h/2 - L}{s}\Big)\ (c \ge 0).

The likelihood of an observed score (the ``ordinal`` error model, :mod:`il2treg.likelihood`), the
fit's predicted probability of an SRI-4 SLEDAI fall (:mod:`il2treg.fit.assemble`) and the trial
simulator's scores and exact response probabilities (:mod:`il2treg.trial`) all use these
functions, so the three cannot disagree. Functions taking ``xp`` work with ``numpy`` or
``jax.numpy`` (differentiable).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr
from jax.scipy.special import ndtr as jax_ndtr
from scipy import special


def reported(x, step: float, xp=np):
    r"""The reported score of a latent score plus its visit error, :math:`\max(0, h\,\mathrm{round}(x/h))` (points)."""
    return xp.maximum(step * xp.round(x / step), 0.0)


def grid(top: float, step: float) -> np.ndarray:
    """The score grid ``0, h, 2h, ...`` up to the first point at or above ``top`` (points), and one more."""
    return step * np.arange(max(int(np.ceil(top / step)), 0) + 2, dtype=np.float64)


def probabilities(scores, latent, sd, step: float, xp=np):
    r""":math:`P(Y = b)` for each score ``b`` of ``scores`` (the grid's points, a leading axis) and
    each latent score of ``latent`` (1-D) with visit SD ``sd`` (a scalar or one per latent score):
    ``[scores, latent]``."""
    ndtr = jax_ndtr if xp is jnp else special.ndtr
    b, sd = np.asarray(scores)[:, None], xp.asarray(sd)[None]
    upper = ndtr((b + step / 2 - latent[None]) / sd)
    lower = xp.where(b == 0, 0.0, ndtr((b - step / 2 - latent[None]) / sd))
    return upper - lower


def at_most(limit, latent, sd, step: float, xp=np):
    r""":math:`P(Y \le c)` for each grid value ``c`` of ``limit`` (a leading axis; 0 where
    :math:`c < 0`) and each latent score of ``latent`` with visit SD ``sd``: ``[limit, latent]``."""
    ndtr = jax_ndtr if xp is jnp else special.ndtr
    c, sd = np.asarray(limit)[:, None], xp.asarray(sd)[None]
    return xp.where(c >= 0, ndtr((c + step / 2 - latent[None]) / sd), 0.0)


def score_change_probability(l0, l1, sd0, sd1, fall: float = 4.0, *, step: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""P(Y_0 − Y_1 ≥ fall) and E[Y_0], E[Y_1] for the reported scores of latent scores ``l0``,
    ``l1`` with visit SDs ``sd0``, ``sd1`` (one per patient).

    Exact sums over the score grid, :math:`\sum_b P(Y_0 = b)\,P(Y_1 \le c(b))` with :math:`c(b)`
    the largest grid score :math:`\le b - \mathrm{fall}` (:func:`fall_limit`); vectorised over
    patients. NaN where a latent score or SD is not usable.
    """
    l0, l1, sd0, sd1 = (np.atleast_1d(np.asarray(x, dtype=np.float64)) for x in (l0, l1, sd0, sd1))
    ok = np.isfinite(l0) & np.isfinite(l1) & (sd0 > 0) & (sd1 > 0)
    safe = lambda x, fill: np.where(ok, x, fill)
    l0, l1, sd0, sd1 = safe(l0, 0.0), safe(l1, 0.0), safe(sd0, 1.0), safe(sd1, 1.0)
    h = float(step)
    scores = grid(float(np.max(np.maximum(l0 + 12 * sd0, l1 + 12 * sd1))), h)
    p0, p1 = probabilities(scores, l0, sd0, h), probabilities(scores, l1, sd1, h)  # [scores, patients]
    p_fall = np.sum(p0 * at_most(fall_limit(scores, fall, h), l1, sd1, h), axis=0)
    e0, e1 = np.sum(scores[:, None] * p0, axis=0), np.sum(scores[:, None] * p1, axis=0)
    return np.where(ok, p_fall, np.nan), np.where(ok, e0, np.nan), np.where(ok, e1, np.nan)


def fall_limit(scores, fall: float, step: float) -> np.ndarray:
    """For each baseline score ``b`` on the grid, the largest grid score ``c <= b - fall``: a fall
    of at least ``fall`` points is :math:`Y_1 \\le c`."""
    return step * np.floor((np.asarray(scores) - fall) / step + 1e-9)


def log_probability(y, latent, sd, step: float):
    r""":math:`\log P(Y = y)` of observed scores ``y`` (rounded to the grid), stable in both tails
    (JAX; the ``ordinal`` error model's likelihood)."""
    k = step * jnp.round(y / step)
    upper = (k + 0.5 * step - latent) / sd
    lower = (k - 0.5 * step - latent) / sd
    return jnp.where(k <= 0, log_ndtr(upper), _log_diff_ndtr(jnp.where(k <= 0, upper - 1.0, lower), upper))


def _log_diff_ndtr(a, b):
    """log(Φ(b) − Φ(a)) for a < b, stable in both tails."""
    # In the upper tail use the symmetry Φ(b) − Φ(a) = Φ(−a) − Φ(−b).
    upper = a > 0
    hi = jnp.where(upper, -a, b)
    lo = jnp.where(upper, -b, a)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + jnp.log1p(-jnp.exp(jnp.minimum(log_lo - log_hi, -1e-16)))
