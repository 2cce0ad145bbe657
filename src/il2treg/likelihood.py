r"""Residual error models and the objective: −2 log-likelihood, as NONMEM reports it (OFV).

Each observation type (DVID) has one error model. With prediction :math:`f`, observation :math:`y`:

=============  ==========================================================  ==================
kind           model                                                       parameters
=============  ==========================================================  ==================
additive       :math:`y = f + \epsilon,\ \epsilon \sim N(0, \sigma_a^2)`   ``sigma_add``
proportional   :math:`y = f(1 + \epsilon),\ sd = \sigma_p |f|`             ``sigma_prop``
combined       :math:`sd = \sqrt{\sigma_a^2 + \sigma_p^2 f^2}`             both
log            :math:`\log y = \log f + \epsilon,\ sd = \sigma_a`          ``sigma_add``
               (log-transform-both-sides; the log-likelihood is the one
               of :math:`\log y`, as NONMEM's LTBS reports it)
ordinal        score on a grid :math:`y \in \{0, h, 2h, \dots\}`: latent     ``sigma_add``
               :math:`f + \epsilon` rounded to the nearest multiple of the
               step :math:`h` and floored at 0:
               :math:`P(y=k) = \Phi(\frac{k+h/2-f}{\sigma})
               - \Phi(\frac{k-h/2-f}{\sigma})`, :math:`P(y=0) =
               \Phi(\frac{h/2-f}{\sigma})`; :math:`h` = ``score_step``
               (1 for integer scores, 2 for SLEDAI reported in even steps)
=============  ==========================================================  ==================

``ordinal`` is the default for SLEDAI: it is a non-negative integer score, so a Gaussian on the
raw score would put mass on negative and fractional values; the discretised normal is the
likelihood of exactly the observation process used to simulate scores (round, floor at 0): one
model, :mod:`il2treg.sledai`, for the likelihood, the fit's SRI-4 prediction and the trial.

**BLQ (M3).** An observation with ``CENS = 1`` carries the LLOQ in ``y``; its likelihood is
:math:`P(Y < LLOQ) = \Phi((LLOQ - f)/sd)` (in log space for ``log``).

**Objective.** :math:`-2\log L = \sum_j [\log(2\pi) + 2 \log sd_j + ((y_j - f_j)/sd_j)^2]` for
uncensored continuous observations, :math:`-2 \log P` for censored and ordinal ones.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jax.scipy.special import log_ndtr
from jaxtyping import Array, Bool, Float, Int

from il2treg import sledai
from il2treg.errors import SpecError
from il2treg.observables import OBSERVABLE_NAMES

KINDS = ("additive", "proportional", "combined", "log", "ordinal")
_LOG_2PI = float(jnp.log(2 * jnp.pi))
_FLOOR = 1e-12  # smallest prediction/sd used inside logs: keeps gradients finite

#: Error model per observation type unless a fit says otherwise.
DEFAULT_KINDS: dict[str, str] = {
    "il2_pM": "log",
    "treg_pct_cd4": "proportional",
    "treg_per_uL": "proportional",
    "tconv_per_uL": "proportional",
    "nk56bright_per_uL": "proportional",
    "cd25_treg_rel": "proportional",
    "sledai": "ordinal",
}


class ResidualModel(eqx.Module):
    """Error models for every observation type: kinds (static) and their SD parameters.

    Attributes:
        kinds: one kind per name in ``names``.
        sigma_add: additive SD (unit of the observation; log units for ``log``; points for
            ``ordinal``), one per observation type.
        sigma_prop: proportional SD (fraction), one per observation type.
        score_step: grid of ``ordinal`` scores (1 = integers, 2 = even scores).
        names: the observation types, in order: the model's observables (default the IL-2 model's).
    """

    sigma_add: Float[Array, " observables"]
    sigma_prop: Float[Array, " observables"]
    kinds: tuple[str, ...] = eqx.field(static=True, default=tuple(DEFAULT_KINDS[n] for n in OBSERVABLE_NAMES))
    score_step: float = eqx.field(static=True, default=1.0)
    names: tuple[str, ...] = eqx.field(static=True, default=OBSERVABLE_NAMES)

    def __check_init__(self):
        if len(self.kinds) != len(self.names):
            raise SpecError(f"ResidualModel needs one kind per observable ({len(self.names)}), got {len(self.kinds)}.")
        if not self.score_step > 0:
            raise SpecError(f"score_step must be positive, got {self.score_step}.")
        for name, kind in zip(self.names, self.kinds):
            if kind not in KINDS:
                raise SpecError(f"unknown error model {kind!r} for {name!r}. Fix: use one of {', '.join(KINDS)}.")

    @staticmethod
    def build(
        kinds: dict[str, str] | None = None,
        sigmas: dict[str, tuple[float, float]] | None = None,
        *,
        score_step: float = 1.0,
        names: tuple[str, ...] = OBSERVABLE_NAMES,
    ) -> ResidualModel:
        """Build from ``{dvid: kind}`` and ``{dvid: (sigma_add, sigma_prop)}`` for the observation
        types ``names``; missing ones get defaults (:data:`DEFAULT_KINDS`, else proportional)."""
        names = tuple(names)
        kinds = {**{n: DEFAULT_KINDS.get(n, "proportional") for n in names}, **(kinds or {})}
        for name, kind in kinds.items():
            if name not in names:
                raise SpecError(f"unknown observation type {name!r}. Fix: use one of {', '.join(names)}.")
            if kind not in KINDS:
                raise SpecError(f"unknown error model {kind!r} for {name!r}. Fix: use one of {', '.join(KINDS)}.")
        default_sd = {"additive": (1.0, 0.0), "proportional": (0.0, 0.15), "combined": (0.1, 0.15), "log": (0.3, 0.0), "ordinal": (2.0, 0.0)}
        sigmas = sigmas or {}
        sd = [sigmas.get(n, default_sd[kinds[n]]) for n in names]
        return ResidualModel(
            sigma_add=jnp.asarray([s[0] for s in sd], dtype=jnp.float64),
            sigma_prop=jnp.asarray([s[1] for s in sd], dtype=jnp.float64),
            kinds=tuple(kinds[n] for n in names),
            score_step=float(score_step),
            names=names,
        )


def _neg2ll_kind(kind: str, y, f, cens, sigma_add, sigma_prop, step: float = 1.0, scale=None):
    """Per-observation −2 log-likelihood of one error-model kind (vectorised over observations);
    the SDs of the proportional and combined kinds are those at ``scale`` (default ``f``)."""
    if kind == "ordinal":
        return -2.0 * sledai.log_probability(y, f, jnp.maximum(sigma_add, _FLOOR), step)
    if kind == "log":
        y_t, f_t = jnp.log(jnp.maximum(y, _FLOOR)), jnp.log(jnp.maximum(f, _FLOOR))
        sd = jnp.maximum(sigma_add, _FLOOR) * jnp.ones_like(f)
    else:
        y_t, f_t = y, f
        s = f if scale is None else scale
        var = {"additive": sigma_add**2 * jnp.ones_like(f), "proportional": (sigma_prop * s) ** 2, "combined": sigma_add**2 + (sigma_prop * s) ** 2}[kind]
        sd = jnp.sqrt(jnp.maximum(var, _FLOOR**2))
    z = (y_t - f_t) / sd
    gaussian = _LOG_2PI + 2.0 * jnp.log(sd) + z**2
    censored = -2.0 * log_ndtr(z)  # M3: P(Y < LLOQ)
    return jnp.where(cens, censored, gaussian)


def neg2ll_terms(
    residual: ResidualModel,
    pred: Float[Array, " obs"],
    y: Float[Array, " obs"],
    dvid: Int[Array, " obs"],
    cens: Bool[Array, " obs"],
    mask: Bool[Array, " obs"],
    scale: Float[Array, " obs"] | None = None,
) -> Float[Array, " obs"]:
    """−2 log-likelihood of each observation (0 where ``mask`` is False).

    The residual SDs are evaluated at ``pred`` or, given ``scale``, at ``scale``: FOCE without
    interaction evaluates them at the population predictions (:attr:`il2treg.fit.problem.FitProblem.interaction`).

    Each distinct error-model kind is evaluated once, with every row's own SDs: not once per
    observation type, which repeated the normal CDFs of the censored (M3) and ordinal terms, and
    their derivatives in a fit, for every type that shares a kind (the reference fit's EBE search
    compiled 7 copies where 3 do). Rows of other kinds enter a kind's formula as 1 (observation,
    prediction and SDs), so that their unused terms stay finite: another row's SD can be 0 for
    this kind (an ordinal SD on a proportional row), and a where-masked infinite derivative
    would still turn a reverse-mode gradient into NaN.
    """
    total = jnp.zeros_like(pred)
    kind_of = jnp.asarray([KINDS.index(k) for k in residual.kinds])[dvid]
    sigma_add, sigma_prop = residual.sigma_add[dvid], residual.sigma_prop[dvid]
    for kind in dict.fromkeys(residual.kinds):
        sel = kind_of == KINDS.index(kind)
        own = lambda x, sel=sel: jnp.where(sel, x, 1.0)
        term = _neg2ll_kind(kind, own(y), own(pred), cens & sel, own(sigma_add), own(sigma_prop), residual.score_step, None if scale is None else own(scale))
        total = jnp.where(sel, term, total)
    return jnp.where(mask, total, 0.0)


def expected_curvature(
    residual: ResidualModel,
    pred: Float[Array, " obs"],
    dvid: Int[Array, " obs"],
    cens: Bool[Array, " obs"],
    observed: Float[Array, " obs"],
    scale: Float[Array, " obs"] | None = None,
) -> Float[Array, " obs"]:
    r"""Expected second derivative of each observation's −2LL with respect to its prediction.

    For a normal observation with mean :math:`f` and variance :math:`V(f)` this is twice the Fisher
    information, :math:`2/V + (V'/V)^2`: the observed second derivative without the terms in the
    residual :math:`y - f`, whose expectation is zero. It is the curvature of NONMEM's FOCE-I
    (Beal & Sheiner; Almquist et al., J Pharmacokinet Pharmacodyn 2015, the FOCEI approximation of
    the Hessian), in which the variance's dependence on :math:`\eta` (the interaction) enters
    through :math:`V'`. On the log scale (``log``) it is :math:`2/(\sigma^2 f^2)`. Censored (M3)
    and ordinal rows keep their ``observed`` curvature. With the variance evaluated at ``scale``
    (FOCE without interaction) it does not move with :math:`f`: :math:`2/V`.
    """
    kinds = jnp.asarray([KINDS.index(k) for k in residual.kinds])[dvid]
    sa, sp = residual.sigma_add[dvid], residual.sigma_prop[dvid]
    f = jnp.where(jnp.abs(pred) > _FLOOR, pred, _FLOOR)
    is_prop = kinds == KINDS.index("proportional")
    is_comb = kinds == KINDS.index("combined")
    v = f if scale is None else scale
    var = jnp.maximum(jnp.select([is_prop, is_comb], [(sp * v) ** 2, sa**2 + (sp * v) ** 2], sa**2), _FLOOR**2)
    dvar = jnp.where(is_prop | is_comb, 2.0 * sp**2 * f, 0.0) if scale is None else jnp.zeros_like(f)
    gaussian = 2.0 / var + (dvar / var) ** 2
    log_scale = 2.0 / (jnp.maximum(sa, _FLOOR) ** 2 * f**2)
    expected = jnp.where(kinds == KINDS.index("log"), log_scale, gaussian)
    return jnp.where(cens | (kinds == KINDS.index("ordinal")), observed, expected)


def residual_sd(residual: ResidualModel, pred: Float[Array, " obs"], dvid: Int[Array, " obs"]) -> Float[Array, " obs"]:
    """SD of each observation on its modelling scale (log scale for ``log``)."""
    sa, sp = residual.sigma_add[dvid], residual.sigma_prop[dvid]
    kinds = jnp.asarray([KINDS.index(k) for k in residual.kinds])[dvid]
    var = jnp.select(
        [kinds == KINDS.index("proportional"), kinds == KINDS.index("combined")],
        [(sp * pred) ** 2, sa**2 + (sp * pred) ** 2],
        sa**2,
    )
    return jnp.sqrt(jnp.maximum(var, _FLOOR**2))


def standardized_residuals(
    residual: ResidualModel, pred: Float[Array, " obs"], y: Float[Array, " obs"], dvid: Int[Array, " obs"]
) -> Float[Array, " obs"]:
    """(y − f) / sd on each observation's modelling scale (log scale for ``log``): IWRES at the EBEs."""
    kinds = jnp.asarray([KINDS.index(k) for k in residual.kinds])[dvid]
    is_log = kinds == KINDS.index("log")
    y_t = jnp.where(is_log, jnp.log(jnp.maximum(y, _FLOOR)), y)
    f_t = jnp.where(is_log, jnp.log(jnp.maximum(pred, _FLOOR)), pred)
    return (y_t - f_t) / residual_sd(residual, pred, dvid)


def sample_observations(
    residual: ResidualModel, pred: Float[Array, " obs"], dvid: Int[Array, " obs"], z: Float[Array, " obs"]
) -> Float[Array, " obs"]:
    r"""Observations drawn from each row's error model given standard normal draws ``z``.

    additive/proportional/combined: :math:`f + sd\,z`; log: :math:`f e^{\sigma z}`; ordinal:
    :math:`\max(0, h\,\mathrm{round}((f + \sigma z)/h))`. Censoring is not applied (a draw below an
    LLOQ is returned as drawn).
    """
    kinds = jnp.asarray([KINDS.index(k) for k in residual.kinds])[dvid]
    sd = residual_sd(residual, pred, dvid)
    h = residual.score_step
    ordinal = sledai.reported(pred + sd * z, h, jnp)
    return jnp.select(
        [kinds == KINDS.index("log"), kinds == KINDS.index("ordinal")],
        [jnp.maximum(pred, _FLOOR) * jnp.exp(sd * z), ordinal],
        pred + sd * z,
    )
