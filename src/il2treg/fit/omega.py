r"""The between-patient covariance :math:`\Omega` of the random effects, diagonal or in blocks.

The random effects are :math:`\eta_i \sim N(0, \Omega)` with

.. math::
    \Omega = \mathrm{diag}(\omega)\, R\, \mathrm{diag}(\omega),

:math:`\omega` their SDs and :math:`R` their correlation matrix: the identity for a diagonal
:math:`\Omega` (NONMEM's ``$OMEGA DIAGONAL``), block-diagonal for correlated blocks (``$OMEGA
BLOCK(n)``; ``[[omega_block]]`` in a fit file). A fit estimates :math:`\log\omega` and, for each
pair :math:`(i, j)`, :math:`i > j`, of random effects in one block, an unconstrained
:math:`x_{ij} \in \mathbb{R}` whose :math:`\tanh` is a canonical partial correlation
:math:`r_{ij}` (Lewandowski, Kurowicka & Joe, J Multivar Anal 2009): the lower Cholesky factor
:math:`L` of :math:`R` is

.. math::
    L_{ij} = r_{ij} \sqrt{1 - \textstyle\sum_{k<j} L_{ik}^2} \;(j < i), \qquad
    L_{ii} = \sqrt{1 - \textstyle\sum_{k<i} L_{ik}^2},

with :math:`r_{ij} = 0` for pairs in different blocks (which keeps :math:`R` block-diagonal
whatever the order of the random effects). Every :math:`x` gives a valid correlation matrix, so
the optimiser needs no constraint; for a block of two, :math:`r_{21}` is the correlation itself.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from il2treg.errors import SpecError


class RandomEffects(eqx.Module):
    r"""The distribution :math:`N(0, \Omega)` of one patient's random effects.

    **Fields:**

    - `sd`: :math:`\omega`, the SD of each random effect (log-scale, dimensionless).
    - `corr_chol`: the lower Cholesky factor :math:`L` of their correlation matrix :math:`R`;
      ``None`` for a diagonal :math:`\Omega` (then every method below reduces to the diagonal
      formulas, with the same arithmetic).
    """

    sd: Float[Array, " eta"]
    corr_chol: Float[Array, "eta eta"] | None = None

    def quad(self, eta: Float[Array, " eta"]) -> Float[Array, ""]:
        r""":math:`\eta^\top \Omega^{-1} \eta`."""
        if self.corr_chol is None:
            return jnp.sum(eta**2 * (1.0 / self.sd**2))
        w = jax.scipy.linalg.solve_triangular(self.corr_chol, eta / self.sd, lower=True)
        return jnp.sum(w**2)

    def precision_times(self, eta: Float[Array, " eta"]) -> Float[Array, " eta"]:
        r""":math:`\Omega^{-1} \eta` (half the gradient of :meth:`quad`)."""
        if self.corr_chol is None:
            return eta * (1.0 / self.sd**2)
        return self.precision() @ eta

    def precision(self) -> Float[Array, "eta eta"]:
        r""":math:`\Omega^{-1}`."""
        if self.corr_chol is None:
            return jnp.diag(1.0 / self.sd**2)
        inv_l = jax.scipy.linalg.solve_triangular(self.corr_chol, jnp.eye(self.sd.shape[0]), lower=True)
        scaled = inv_l / self.sd[None, :]  # L^{-1} diag(1/omega)
        return scaled.T @ scaled

    def log_det(self) -> Float[Array, ""]:
        r""":math:`\log\det\Omega = 2\sum_k \log\omega_k + 2\sum_k \log L_{kk}`."""
        value = 2.0 * jnp.sum(jnp.log(self.sd))
        if self.corr_chol is not None:
            value = value + 2.0 * jnp.sum(jnp.log(jnp.diagonal(self.corr_chol)))
        return value

    def cholesky(self) -> Float[Array, "eta eta"]:
        r"""The lower Cholesky factor of :math:`\Omega`, :math:`\mathrm{diag}(\omega) L`:
        ``z @ cholesky().T`` turns standard normal draws ``z`` into random effects."""
        if self.corr_chol is None:
            return jnp.diag(self.sd)
        return self.sd[:, None] * self.corr_chol

    def covariance(self) -> Float[Array, "eta eta"]:
        r""":math:`\Omega`."""
        chol = self.cholesky()
        return chol @ chol.T

    def correlation(self) -> Float[Array, "eta eta"]:
        r""":math:`R`."""
        if self.corr_chol is None:
            return jnp.eye(self.sd.shape[0])
        return self.corr_chol @ self.corr_chol.T


def block_pairs(random: tuple[str, ...], blocks: tuple[tuple[str, ...], ...]) -> tuple[tuple[int, int], ...]:
    """The pairs ``(i, j)``, ``i > j``, of indices into ``random`` that share a block, in the
    order of their estimates (by ``i``, then ``j``)."""
    block_of = {name: b for b, block in enumerate(blocks) for name in block}
    pairs = []
    for i, a in enumerate(random):
        for j in range(i):
            if a in block_of and block_of.get(random[j]) == block_of[a]:
                pairs.append((i, j))
    return tuple(pairs)


def check_blocks(random: tuple[str, ...], blocks: tuple[tuple[str, ...], ...]) -> None:
    """Raise :class:`SpecError` unless every block names two or more distinct random effects
    and no random effect is in two blocks."""
    seen: set[str] = set()
    for block in blocks:
        if len(block) < 2:
            raise SpecError(f"an omega block needs two or more parameters, got {list(block)}. Fix: list the correlated random effects together, or drop the block.")
        for name in block:
            if name not in random:
                raise SpecError(f"omega block {list(block)} names {name!r}, which has no random effect. "
                                f"Fix: give it one (cv_percent in its [parameters.{name}] table) or use one of {', '.join(random) or '(none)'}.")  # fmt: skip
            if name in seen:
                raise SpecError(f"{name!r} is in two omega blocks (or twice in one). Fix: put each random effect in one block at most.")
            seen.add(name)


def correlation_cholesky(x: Float[Array, " pairs"], pairs: tuple[tuple[int, int], ...], n: int) -> Float[Array, "n n"]:
    r"""The lower Cholesky factor :math:`L` of the correlation matrix with canonical partial
    correlations :math:`\tanh x` at ``pairs`` (module docstring); differentiable in ``x``.

    The remaining squared norm of each row is carried in logs,
    :math:`\log(1 - r^2) = -2\log\cosh x`, so a correlation near ±1 loses no precision."""
    where = {pair: k for k, pair in enumerate(pairs)}
    rows = []
    for i in range(n):
        row = [jnp.zeros(()) for _ in range(n)]
        log_left = jnp.zeros(())  # log(1 - sum_{k<j} L_ik^2)
        for j in range(i):
            if (i, j) in where:
                xij = x[where[(i, j)]]
                row[j] = jnp.tanh(xij) * jnp.exp(0.5 * log_left)
                log_left = log_left - 2.0 * _log_cosh(xij)
        row[i] = jnp.exp(0.5 * log_left)
        rows.append(jnp.stack(row))
    return jnp.stack(rows)


def _log_cosh(x):
    a = jnp.abs(x)
    return a + jnp.log1p(jnp.exp(-2.0 * a)) - jnp.log(2.0)


def partial_correlations(correlation: np.ndarray, pairs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The inverse of :func:`correlation_cholesky`: the ``x`` (artanh of the canonical partial
    correlations) of a correlation matrix whose nonzero off-diagonal entries are at ``pairs``.

    Raises :class:`SpecError` when the matrix is not positive definite."""
    try:
        chol = np.linalg.cholesky(np.asarray(correlation, dtype=np.float64))
    except np.linalg.LinAlgError:
        raise SpecError("the initial correlations of an omega block do not form a positive definite matrix. "
                        "Fix: use a smaller initial correlation (e.g. correlation = 0.1).") from None  # fmt: skip
    out = []
    for i, j in pairs:
        left = 1.0 - float(np.sum(chol[i, :j] ** 2))
        out.append(float(np.arctanh(np.clip(chol[i, j] / np.sqrt(left), -1 + 1e-12, 1 - 1e-12))))
    return np.asarray(out, dtype=np.float64)


def block_correlation(n: int, pairs: tuple[tuple[int, int], ...], value: dict[tuple[int, int], float]) -> np.ndarray:
    """An ``n`` by ``n`` correlation matrix with ``value[(i, j)]`` at each pair (both triangles)."""
    corr = np.eye(n)
    for i, j in pairs:
        corr[i, j] = corr[j, i] = value[(i, j)]
    return corr
