r"""What is estimated, on which scale, and the per-patient prediction.

**Parameters.** A population fit estimates

* fixed effects :math:`\theta` for the parameters named in ``FitProblem.fixed``, each on the
  unconstrained scale of its transform in the model file (``log``: :math:`\theta = e^u`;
  ``logit``: :math:`\theta = lo + (hi - lo)\,\mathrm{sigmoid}(u)`; ``identity``: :math:`\theta = u`);
* a between-patient covariance :math:`\Omega` of log-normal random effects on the parameters in
  ``FitProblem.random``: :math:`\theta_i = \theta\, e^{\eta_i}`, :math:`\eta_i \sim N(0, \Omega)`;
  diagonal, or with correlated blocks (``FitProblem.blocks``, :mod:`il2treg.fit.omega`); estimated
  as :math:`\log \omega` and, per correlated pair, the artanh :math:`x` of a partial correlation;
* residual SDs (``sigma_add``/``sigma_prop`` of the observation types named in
  ``FitProblem.sigmas``), estimated as :math:`\log \sigma`;
* covariate coefficients :math:`\beta` (``FitProblem.covariates``), one per effect of a patient
  covariate :math:`c_i` on a parameter, applied to the typical value before the random effect:

  ======== =========================================================== ======================
  model    individual typical value                                    e.g.
  ======== =========================================================== ======================
  power    :math:`\theta\,(c_i / c_{ref})^{\beta}`                      weight on clearance
  exp      :math:`\theta\, e^{\beta (c_i - c_{ref})}`                    a 0/1 indicator
  linear   :math:`\theta + \beta (c_i - c_{ref})`                       a site shift of pmax
  ======== =========================================================== ======================

A model parameter that is a patient covariate (``group = "covariate"`` in the model file,
``FitProblem.bound``) takes each patient's value from the data column of its name before the
effects above apply; it is not estimated.

**Time-varying covariates.** Where a column the fit reads changes within a patient
(:attr:`il2treg.data.Dataset.covariate_series`), ``FitProblem.timed`` is set: each patient's
parameters have one row per period of constant covariates, :math:`\theta_{i,p} =
\theta(c_{i,p})\,e^{\eta_i}` (the same random effects in every period), and the solver
changes them at each period's start (:func:`il2treg.simulate.solve_records`).

**Inter-occasion variability** (NONMEM's ``$OMEGA BLOCK(1) SAME`` per occasion). The parameters
in ``FitProblem.iov`` have a further random effect :math:`\kappa_{ik} \sim N(0, \omega_{IOV}^2)`
in each occasion :math:`k` of patient :math:`i` (an occasion column of the data, ``OCC``), independent
between occasions: :math:`\theta_{i,p} = \theta\,e^{\eta_i + \kappa_{i,k(p)}}` in a period
:math:`p` of occasion :math:`k(p)`. Each patient's random-effect vector is
:math:`(\eta_i, \kappa_{i1}, \dots, \kappa_{iK})`, the :math:`\kappa` occasion by occasion
(``FitProblem.occasions`` :math:`= K`, the most occasions any patient has, in the order they
appear in its rows); its covariance is block-diagonal, :math:`\Omega` then :math:`K` copies of
:math:`\mathrm{diag}(\omega_{IOV}^2)`. The :math:`\kappa` of an occasion a patient does not have
meet no data: their posterior is their prior, and they add nothing to the FOCE objective
(:math:`\log\det\Omega` and the Laplace :math:`\log\det` cancel in those directions).

They are :math:`\psi = (u, \beta, \log\omega, x, \log\omega_{IOV}, \log\sigma)`, a named
pytree (:class:`il2treg.fit.psi.Psi`) raveled into one vector for the optimisers, which
:meth:`FitProblem.split` names again. Everything not estimated stays at the model file's value.
"""

from __future__ import annotations

import dataclasses

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from il2treg.data import Dataset
from il2treg.errors import SpecError
from il2treg.fit.omega import RandomEffects, block_pairs, check_blocks, correlation_cholesky
from il2treg.fit.psi import Psi, PsiLayout
from il2treg.likelihood import ResidualModel, neg2ll_terms
from il2treg.model import Model
from il2treg.records import DoseRecords
from il2treg.simulate import SolverOptions, max_dose_lag, slots_needed, solve_one

COVARIATE_MODELS = ("power", "exp", "linear")
#: Curvatures of the Laplace Hessian of the objective (:attr:`FitProblem.curvature`).
CURVATURES = ("observed", "expected")


@dataclasses.dataclass(frozen=True)
class CovariateEffect:
    """Effect of a patient covariate on a parameter (see the module docstring)."""

    parameter: str
    covariate: str
    model: str
    reference: float = 0.0

    @property
    def name(self) -> str:
        return f"beta_{self.parameter}_{self.covariate}"


@dataclasses.dataclass(frozen=True)
class FitProblem:
    """The static description of a fit (hashable: jit treats it as configuration).

    Attributes:
        model: the model.
        fixed: names of the estimated fixed effects.
        random: names of the parameters with a log-normal random effect.
        sigmas: ``((dvid, "add" | "prop"), ...)``: estimated residual SDs.
        residual_kinds: error model kind per observation type (order of the model's observables).
        slots: static number of save slots per inter-dose interval (see il2treg.simulate).
        options: solver options (forward-mode adjoint: fits use forward sensitivities).
        covariates: covariate effects, their coefficients estimated.
        curvature: the curvature of each observation's −2LL in the Laplace Hessian of the
            objective (the OFV and its gradient only; the EBE search and the Laplace covariances
            of the EBEs that SAEM and NUTS use keep the observed one): ``"observed"`` (its second
            derivative at the data, floored at 0) or ``"expected"`` (without the terms in the
            residuals: NONMEM's FOCE-I, :func:`il2treg.likelihood.expected_curvature`).
        bound: the model's covariate parameters, each patient's value read from the data column
            of the same name (``PatientData.covariates`` after the effects' columns).
        blocks: groups of random effects with correlations estimated (NONMEM's ``$OMEGA
            BLOCK(n)``); the others are uncorrelated (:mod:`il2treg.fit.omega`).
        interaction: FOCE with interaction (FOCE-I, the default): the residual SDs move with
            the individual predictions. ``False``: NONMEM's FOCE without interaction, the SDs at
            the population predictions (eta = 0) in the EBE search and the objective;
            the same for additive and log error models, not for proportional or combined ones.
        timed: a covariate column the fit reads changes within a patient, or the fit has
            inter-occasion variability: the patients' covariates and parameters have a period
            axis (module docstring).
        iov: names of the parameters with inter-occasion variability (module docstring).
        occasion: the data column that numbers the occasions (``OCC``), with ``iov``.
        varying: the covariate columns the fit reads (effects' and the model's) that change
            within a patient.
        occasions: the most occasions any patient has (the number of kappa per parameter in ``iov``).
    """

    model: Model
    fixed: tuple[str, ...]
    random: tuple[str, ...]
    sigmas: tuple[tuple[str, str], ...]
    residual_kinds: tuple[str, ...]
    slots: int
    options: SolverOptions
    covariates: tuple[CovariateEffect, ...] = ()
    bound: tuple[str, ...] = ()
    curvature: str = "observed"
    blocks: tuple[tuple[str, ...], ...] = ()
    interaction: bool = True
    timed: bool = False
    iov: tuple[str, ...] = ()
    occasion: str | None = None
    occasions: int = 0
    varying: tuple[str, ...] = ()

    @property
    def follow_covariates(self) -> tuple[str, ...]:
        """Names of the parameters whose typical value follows a time-varying covariate (the
        model's covariates and the parameters of covariate effects, whose column is in ``varying``)."""
        return tuple(dict.fromkeys([*(n for n in self.bound if n in self.varying), *(e.parameter for e in self.covariates if e.covariate in self.varying)]))

    @property
    def time_varying(self) -> tuple[str, ...]:
        """Names of the parameters whose value may change between a patient's periods: those
        that follow a covariate, and those with inter-occasion variability."""
        return tuple(dict.fromkeys([*self.follow_covariates, *self.iov]))

    @property
    def n_iov(self) -> int:
        """Number of inter-occasion SDs estimated (one per parameter in ``iov``)."""
        return len(self.iov)

    @property
    def n_random(self) -> int:
        """Length of each patient's random-effect vector: its eta, then its kappa occasion by occasion."""
        return len(self.random) + self.occasions * len(self.iov)

    @property
    def random_names(self) -> tuple[str, ...]:
        """A name per entry of the random-effect vector: ``ETA_<p>``, then ``KAPPA_<p>_<k>``
        (occasion k, counted from 1)."""
        return (*(f"ETA_{n}" for n in self.random), *(f"KAPPA_{n}_{k + 1}" for k in range(self.occasions) for n in self.iov))

    @property
    def n_fixed(self) -> int:
        return len(self.fixed)

    @property
    def n_beta(self) -> int:
        return len(self.covariates)

    @property
    def n_eta(self) -> int:
        return len(self.random)

    @property
    def corr_pairs(self) -> tuple[tuple[int, int], ...]:
        """Pairs ``(i, j)``, ``i > j``, of random effects whose correlation is estimated."""
        return block_pairs(self.random, self.blocks)

    @property
    def n_corr(self) -> int:
        return len(self.corr_pairs)

    @property
    def layout(self) -> PsiLayout:
        """The sizes of psi's parts (:mod:`il2treg.fit.psi`)."""
        return PsiLayout(self.n_fixed, self.n_beta, self.n_eta, self.n_corr, self.n_iov, len(self.sigmas))

    def split(self, psi: Float[Array, "*batch psi"]) -> Psi:
        """The flat ``psi`` (or rows of them) by part."""
        return self.layout.unravel(psi)

    @property
    def ode_varied(self) -> tuple[int, ...]:
        """Model indices of the parameters that the fit varies (fixed, random or with a covariate)
        and the ODE reads (:attr:`il2treg.model.Mechanism.ode_parameters`): the only directions in
        which predictions need ODE sensitivities."""
        varied = {*self.fixed, *self.random, *self.iov, *(c.parameter for c in self.covariates)}
        names = self.model.parameter_names
        return tuple(names.index(n) for n in self.model.mechanism.ode_parameters if n in varied)

    @property
    def ode_random(self) -> tuple[int, ...]:
        """Model indices of the parameters with a random effect (between patients or occasions) that the ODE reads."""
        names = self.model.parameter_names
        return tuple(names.index(n) for n in self.model.mechanism.ode_parameters if n in self.random or n in self.iov)

    @property
    def psi_names(self) -> tuple[str, ...]:
        return (
            *self.fixed,
            *(c.name for c in self.covariates),
            *(f"omega_{n}" for n in self.random),
            *(f"corr_{self.random[j]}_{self.random[i]}" for i, j in self.corr_pairs),
            *(f"omega_iov_{n}" for n in self.iov),
            *(f"sigma_{kind}_{dvid}" for dvid, kind in self.sigmas),
        )


def make_problem(
    model: Model,
    data: Dataset,
    *,
    fixed: tuple[str, ...],
    random: tuple[str, ...],
    sigmas: tuple[tuple[str, str], ...],
    residual_kinds: dict[str, str] | None = None,
    options: SolverOptions | None = None,
    covariates: tuple[CovariateEffect, ...] = (),
    curvature: str = "observed",
    blocks: tuple[tuple[str, ...], ...] = (),
    interaction: bool = True,
    iov: tuple[str, ...] = (),
    occasion: str | None = None,
) -> FitProblem:
    """Validate the choice of estimated quantities against the model and the data."""
    if curvature not in CURVATURES:
        raise SpecError(f"unknown curvature {curvature!r}. Fix: use one of {', '.join(CURVATURES)}.")
    names = model.parameter_names
    for n in (*fixed, *random):
        if n not in names:
            raise SpecError(f"unknown parameter {n!r} in the fit. Fix: use one of {', '.join(names)}.")
    for n in random:
        if model.spec[n].transform != "log":
            raise SpecError(f"random effect on {n!r} needs a log transform (it is {model.spec[n].transform!r}).")
    if len(set(fixed)) != len(fixed) or len(set(random)) != len(random) or len(set(iov)) != len(iov):
        raise SpecError("a parameter is listed twice in the fit. Fix: list each once.")
    occasions = _occasions(model, data, tuple(iov), occasion)
    blocks = tuple(tuple(b) for b in blocks)
    check_blocks(tuple(random), blocks)
    observed = set(data.observed_names())
    for dvid, kind in sigmas:
        if dvid not in model.observable_names or kind not in ("add", "prop"):
            raise SpecError(f"residual SD ({dvid!r}, {kind!r}) is not (observation type, 'add' | 'prop').")
        if dvid not in observed:
            raise SpecError(f"the fit estimates a residual SD of {dvid!r} but the data have no {dvid!r} observation. Fix: remove it or add data.")
    for effect in covariates:
        if effect.parameter not in names:
            raise SpecError(f"covariate effect on unknown parameter {effect.parameter!r}. Fix: use one of {', '.join(names)}.")
        if effect.model not in COVARIATE_MODELS:
            raise SpecError(f"unknown covariate model {effect.model!r}. Fix: use one of {', '.join(COVARIATE_MODELS)}.")
        if effect.covariate not in data.covariates:
            raise SpecError(f"covariate {effect.covariate!r} is not a column of the data. Fix: use one of {', '.join(sorted(data.covariates)) or '(none)'}.")
        if dict(data.covariate_levels).get(effect.covariate) is not None:
            raise SpecError(f"covariate {effect.covariate!r} is text; covariate effects need a numeric column (e.g. a 0/1 indicator).")
        values = data.covariate_periods(effect.covariate).min(axis=1)  # every period's value (NaN if any is)
        if not np.all(np.isfinite(values)):
            raise SpecError(f"covariate {effect.covariate!r} is missing for subject {data.ids[int(np.argmax(~np.isfinite(values)))]!r}. Fix: fill it in or remove the effect.")
        if effect.model == "power" and not (np.all(values > 0) and effect.reference > 0):
            raise SpecError(f"a power effect of {effect.covariate!r} needs positive values and a positive reference.")
    bound = model.spec.covariate_names
    for name in bound:
        if name in (*fixed, *random, *(e.parameter for e in covariates)):
            raise SpecError(f"{name!r} is a covariate of the model (read from the data) and cannot be estimated or carry an effect. "
                            "Fix: remove it from the fit's parameters and covariate effects.")  # fmt: skip
        if name not in data.covariates or dict(data.covariate_levels).get(name) is not None:
            raise SpecError(f"the model reads covariate {name!r} from the data, but the data have no numeric column {name!r}. "
                            f"Fix: add the column (one value per subject), or rename the model's parameter to a column of the data ({', '.join(sorted(data.covariates)) or 'none'}).")  # fmt: skip
        every = data.covariate_periods(name)
        values = every.min(axis=1)
        if not np.all(np.isfinite(values)):
            raise SpecError(f"covariate {name!r}, which the model reads, is missing for subject {data.ids[int(np.argmax(~np.isfinite(values)))]!r}. Fix: fill it in.")
        ps = model.spec[name]
        lo, hi = ps.to_declared(ps.bounds[0]), ps.to_declared(ps.bounds[1])
        outside = np.any((every < lo) | (every > hi), axis=1)
        if outside.any():
            k = int(np.argmax(outside))
            bad = every[k][(every[k] < lo) | (every[k] > hi)][0]
            raise SpecError(f"covariate {name!r} of subject {data.ids[k]!r} is {bad:g} {ps.unit}, outside the model's bounds [{lo:g}, {hi:g}] {ps.unit}. "
                            f"Fix: check the data's unit (the model reads {name} in {ps.unit}) or widen the bounds in the model file.")  # fmt: skip
    if data.dvid_names != model.observable_names:
        raise SpecError(f"the data's observation types ({', '.join(data.dvid_names)}) are not the model's observables ({', '.join(model.observable_names)}). "
                        "Fix: read the data with read_dataset(..., observables=model.observable_names).")  # fmt: skip
    kinds = ResidualModel.build(residual_kinds, names=model.observable_names).kinds
    slots = slots_needed(np.asarray(data.dose_time), np.asarray(data.obs_time), max_dose_lag(model))
    options = options or SolverOptions(adjoint=dfx.ForwardMode())
    varying = tuple(dict.fromkeys(c for c in (*(e.covariate for e in covariates), *bound) if c in data.covariate_series))
    return FitProblem(model, tuple(fixed), tuple(random), tuple(sigmas), kinds, slots, options, tuple(covariates), bound, curvature, blocks, bool(interaction),
                      bool(iov or varying), tuple(iov), occasion if iov else None, occasions, varying)  # fmt: skip


def _occasions(model: Model, data: Dataset, iov: tuple[str, ...], occasion: str | None) -> int:
    """Check the inter-occasion variability against the model and the data; the most occasions
    (distinct values of the occasion column) any patient has, 0 without it."""
    if not iov:
        return 0
    names = model.parameter_names
    for n in iov:
        if n not in names:
            raise SpecError(f"unknown parameter {n!r} with inter-occasion variability. Fix: use one of {', '.join(names)}.")
        if model.spec[n].transform != "log":
            raise SpecError(f"inter-occasion variability on {n!r} needs a log transform (it is {model.spec[n].transform!r}).")
    if occasion is None or occasion not in data.covariates or occasion in dict(data.covariate_levels):
        raise SpecError(f"inter-occasion variability on {', '.join(iov)} needs a numeric occasion column, but the data have no numeric column {occasion or 'OCC'!r}. "
                        f"Fix: add one (e.g. OCC = 1, 2, ... from each occasion's first row on) or name it (occasion = \"...\" in the fit file).")  # fmt: skip
    values = data.covariate_periods(occasion)
    missing = ~np.isfinite(values).all(axis=1)
    if missing.any():
        raise SpecError(f"the occasion column {occasion!r} is empty for all of subject {data.ids[int(np.argmax(missing))]!r}'s rows. Fix: fill it in.")
    return max(len(np.unique(row)) for row in values)


def occasion_slots(values: Float[np.ndarray, "subjects periods"]) -> np.ndarray:
    """Each period's occasion slot: the index of its occasion value among the patient's
    occasions in the order they first appear."""
    out = np.zeros(values.shape, dtype=np.int32)
    for s, row in enumerate(values):
        seen: list[float] = []
        for p, v in enumerate(row):
            if v not in seen:
                seen.append(v)
            out[s, p] = seen.index(v)
    return out


# ----------------------------------------------------------------------------- transforms


def to_unconstrained(problem: FitProblem, values: dict[str, float]) -> Float[Array, " fixed"]:
    """Fixed-effect values (internal units) -> unconstrained vector u."""
    out = []
    for n in problem.fixed:
        ps = problem.model.spec[n]
        v = float(values[n])
        if ps.transform == "log":
            out.append(np.log(v))
        elif ps.transform == "logit":
            lo, hi = ps.bounds
            q = (v - lo) / (hi - lo)
            q = min(max(q, 1e-9), 1 - 1e-9)
            out.append(np.log(q / (1 - q)))
        else:
            out.append(v)
    return jnp.asarray(out, dtype=jnp.float64)


def from_unconstrained(problem: FitProblem, u: Float[Array, " fixed"]) -> Float[Array, " fixed"]:
    """Unconstrained u -> fixed-effect values in internal units (differentiable)."""
    vals = []
    for k, n in enumerate(problem.fixed):
        ps = problem.model.spec[n]
        if ps.transform == "log":
            vals.append(jnp.exp(u[k]))
        elif ps.transform == "logit":
            lo, hi = ps.bounds
            vals.append(lo + (hi - lo) * jax.nn.sigmoid(u[k]))
        else:
            vals.append(u[k])
    return jnp.stack(vals) if vals else jnp.zeros(0)


class Unpacked(eqx.Module):
    """psi on the model's scales: typical values (internal units), covariate coefficients,
    the random effects' distribution, residual model."""

    theta: Float[Array, " params"]  # every model parameter, typical patient (reference covariates)
    beta: Float[Array, " effects"]
    random_effects: RandomEffects  # of the whole random-effect vector: eta, then the kappa of each occasion
    residual: ResidualModel
    omega_iov: Float[Array, " iov"]
    kappas: int = eqx.field(static=True, default=0)

    @property
    def omega(self) -> Float[Array, " eta"]:
        """The SDs of the random effects between patients (eta)."""
        sd = self.random_effects.sd
        return sd[: sd.shape[0] - self.kappas]


def typical_theta(problem: FitProblem, u: Float[Array, " fixed"]) -> Float[Array, " params"]:
    """Every model parameter with the fixed effects set from unconstrained ``u``."""
    names = problem.model.parameter_names
    theta = problem.model.typical().values
    if problem.n_fixed:
        theta = theta.at[jnp.asarray([names.index(n) for n in problem.fixed])].set(from_unconstrained(problem, u))
    return theta


def unpack(problem: FitProblem, psi: Psi, base_residual: ResidualModel) -> Unpacked:
    """``psi`` on the model's scales: typical values, the random effects' distribution (eta,
    then the kappa of every occasion) and the residual model (``base_residual`` with the
    estimated sigmas set)."""
    omega_iov = jnp.exp(psi.log_omega_iov)
    omega = jnp.concatenate([jnp.exp(psi.log_omega), jnp.tile(omega_iov, problem.occasions)])
    corr_chol = correlation_cholesky(psi.corr, problem.corr_pairs, problem.n_random) if problem.n_corr else None
    sa, sp = base_residual.sigma_add, base_residual.sigma_prop
    for k, (dvid, kind) in enumerate(problem.sigmas):
        d = problem.model.observable_names.index(dvid)
        value = jnp.exp(psi.log_sigma[k])
        sa, sp = (sa.at[d].set(value), sp) if kind == "add" else (sa, sp.at[d].set(value))
    residual = ResidualModel(sa, sp, problem.residual_kinds, base_residual.score_step, problem.model.observable_names)
    kappas = problem.n_random - problem.n_eta
    return Unpacked(typical_theta(problem, psi.u), psi.beta, RandomEffects(omega, corr_chol), residual, omega_iov, kappas)


def covariate_theta(problem: FitProblem, theta, beta, covariates: Float[Array, " effects"] | Float[Array, "periods effects"]):
    """The patient's typical values: the model's covariates set to the patient's (``covariates``
    after the effects' columns), then the covariate effects applied to ``theta``; with a period
    axis (``problem.timed``), one row per period."""
    names = problem.model.parameter_names
    if covariates.shape[-1] != len(problem.covariates) + len(problem.bound):
        raise SpecError(f"the patients' covariate arrays have {covariates.shape[-1]} columns but the fit reads {len(problem.covariates) + len(problem.bound)} "
                        "(its covariate effects', then the model's covariates). Fix: build the patients with problem_patients(problem, data).")  # fmt: skip
    if covariates.ndim == 2:
        return jax.vmap(lambda c: covariate_theta(problem, theta, beta, c))(covariates)
    if problem.bound:
        idx = jnp.asarray([names.index(n) for n in problem.bound])
        theta = theta.at[idx].set(covariates[len(problem.covariates) :])
    for k, effect in enumerate(problem.covariates):
        i = names.index(effect.parameter)
        c, b = covariates[k], beta[k]
        if effect.model == "power":
            theta = theta.at[i].set(theta[i] * (c / effect.reference) ** b)
        elif effect.model == "exp":
            theta = theta.at[i].set(theta[i] * jnp.exp(b * (c - effect.reference)))
        else:
            theta = theta.at[i].set(theta[i] + b * (c - effect.reference))
    return theta


# ----------------------------------------------------------------------------- per patient


class PatientData(eqx.Module):
    """One patient's arrays (rows of a :class:`Dataset`); stacked along a leading axis for batches."""

    dose_time: Float[Array, " doses"]
    dose_amount: Float[Array, " doses"]
    obs_time: Float[Array, " obs"]
    obs_dvid: Array
    obs_value: Float[Array, " obs"]
    obs_cens: Array
    obs_mask: Array
    covariates: Float[Array, " effects"] | Float[Array, "periods effects"]
    records: DoseRecords | None = None
    periods: Float[Array, " periods"] | None = None  # start times of the covariates' periods (FitProblem.timed)
    occasion: Array | None = None  # [periods] int: the occasion slot of each period (FitProblem.iov)


def patient_arrays(
    data: Dataset, effects: tuple[CovariateEffect, ...] = (), use: tuple[str, ...] | None = None, bound: tuple[str, ...] = (), occasion: str | None = None
) -> PatientData:
    """All patients of a dataset as one stacked :class:`PatientData` (jnp arrays).

    ``covariates[:, k]`` holds each patient's value of the covariate of ``effects[k]``, then
    its values of the model's covariates ``bound`` (:attr:`FitProblem.bound`); where one of
    them is time-varying (or an ``occasion`` column is given), ``covariates[:, p, k]`` the
    values of period ``p`` starting at ``periods[:, p]`` (:attr:`il2treg.data.Dataset.covariate_time`),
    and ``occasion[:, p]`` its occasion slot (:func:`occasion_slots`). With
    ``use``, only observations of those types enter the likelihood (the others are masked), e.g.
    to fit Treg counts without also fitting the Treg % computed from the same sample.
    """
    mask = np.asarray(data.obs_mask)
    if use is not None:
        unknown = [u for u in use if u not in data.dvid_names]
        if unknown:
            raise SpecError(f"unknown observation type {unknown[0]!r}. Fix: use one of {', '.join(data.dvid_names)}.")
        mask = mask & np.isin(np.asarray(data.obs_dvid), [data.dvid_names.index(u) for u in use])
    columns = [e.covariate for e in effects] + list(bound)
    timed = occasion is not None or any(c in data.covariate_series for c in columns)
    periods = occasions = None
    if timed:  # one row per period of constant covariates (those read here: other columns' changes start none)
        read = [*columns, *([occasion] if occasion is not None else [])]
        periods, values = _read_periods(data.covariate_time, np.stack([data.covariate_periods(c) for c in read], axis=2))
        cov = values[..., : len(columns)]
        occasions = None if occasion is None else jnp.asarray(occasion_slots(values[..., -1]))
        periods = jnp.asarray(periods)
    else:
        cov = np.stack([np.asarray(data.covariates[c], dtype=float) for c in columns], axis=1) if columns else np.zeros((data.n_subjects, 0))
    return PatientData(
        jnp.asarray(data.dose_time), jnp.asarray(data.dose_amount), jnp.asarray(data.obs_time),
        jnp.asarray(data.obs_dvid), jnp.asarray(data.obs_value), jnp.asarray(data.obs_cens), jnp.asarray(mask),
        jnp.asarray(cov), data.records(), periods, occasions,
    )  # fmt: skip


def _read_periods(starts: Float[np.ndarray, "subjects periods"], values: Float[np.ndarray, "subjects periods columns"]):
    """The periods of ``values`` alone: a dataset's periods start wherever any of its time-varying
    columns changes; a period of the columns read here starts only where one of them does. Padded
    by repeating each subject's last period."""
    kept = []
    for s in range(starts.shape[0]):
        same = np.all((values[s, 1:] == values[s, :-1]) | (np.isnan(values[s, 1:]) & np.isnan(values[s, :-1])), axis=1)
        kept.append(np.concatenate([[0], 1 + np.flatnonzero(~same)]))
    width = max(len(k) for k in kept)
    pick = np.stack([np.concatenate([k, np.full(width - len(k), k[-1])]) for k in kept])
    rows = np.arange(starts.shape[0])[:, None]
    return starts[rows, pick], values[rows, pick]


def problem_patients(problem: FitProblem, data: Dataset, use: tuple[str, ...] | None = None) -> PatientData:
    """:func:`patient_arrays` with the covariate columns ``problem`` reads: its effects', then the
    model's covariates, these converted from the unit of the model file (the data's) to the
    internal one (``week`` to days, say), as the model's own values are."""
    patients = patient_arrays(data, problem.covariates, use, problem.bound, problem.occasion)
    if not problem.bound:
        return patients
    scale = np.ones(patients.covariates.shape[-1])
    scale[len(problem.covariates) :] = [problem.model.spec[n].to_internal(1.0) for n in problem.bound]
    return eqx.tree_at(lambda p: p.covariates, patients, patients.covariates * jnp.asarray(scale))


def individual_theta(problem: FitProblem, theta: Float[Array, " params"], eta: Float[Array, " eta"], occasion: Array | None = None) -> Float[Array, " params"]:
    """theta_i = theta * exp(eta) on the parameters with random effects (in every period of a
    ``[periods, params]`` theta); with inter-occasion variability, ``eta`` is the whole
    random-effect vector (:attr:`FitProblem.random_names`) and each period's parameters in
    ``problem.iov`` are further multiplied by exp(kappa) of its occasion slot ``occasion[p]``."""
    names = problem.model.parameter_names
    ne = problem.n_eta
    if ne:
        idx = jnp.asarray([names.index(n) for n in problem.random])
        theta = theta.at[..., idx].set(theta[..., idx] * jnp.exp(eta[:ne]))
    if problem.iov:
        if occasion is None:
            raise SpecError("the fit has inter-occasion variability but the patient has no occasions. Fix: build the patients with problem_patients(problem, data).")
        kappa = eta[ne:].reshape(problem.occasions, problem.n_iov)[occasion]  # [periods, iov]
        idx = jnp.asarray([names.index(n) for n in problem.iov])
        theta = theta.at[:, idx].set(theta[:, idx] * jnp.exp(kappa))
    return theta


def predict(problem: FitProblem, theta_i: Float[Array, " params"], patient: PatientData) -> tuple[Float[Array, " obs"], Array]:
    """Model prediction for each observation row of one patient, and the solver status."""
    values, status = solve_one(
        problem.model.mechanism, theta_i,
        patient.dose_time, patient.dose_amount, patient.obs_time, problem.options, problem.slots, records=patient.records,
        periods=patient.periods,
    )  # fmt: skip
    pred = jnp.take_along_axis(values, patient.obs_dvid[:, None], axis=1)[:, 0]
    return pred, status


def data_neg2ll(residual: ResidualModel, pred: Float[Array, " obs"], patient: PatientData, scale: Float[Array, " obs"] | None = None) -> Float[Array, ""]:
    """−2 log-likelihood of one patient's observations given predictions (residual SDs at
    ``scale`` when given: FOCE without interaction)."""
    return jnp.sum(neg2ll_terms(residual, pred, patient.obs_value, patient.obs_dvid, patient.obs_cens, patient.obs_mask, scale))


# ----------------------------------------------------------------------------- sensitivities


class Expansion(eqx.Module):
    r"""Taylor coefficients of one patient's states at its observation times, about :math:`\theta_i`.

    With :math:`w = \theta_i[\mathrm{first}]` the varied parameters that the ODE reads and
    :math:`Y(w)` the states at the observation times: ``states`` :math:`= Y`, ``d1``
    :math:`= \partial Y/\partial w` and, when ``second`` is not empty, ``d2``
    :math:`= \partial^2 Y / \partial w_{\mathrm{second}}\, \partial w` (forward sensitivities
    through the solver). Parameters the ODE does not read enter the predictions through the
    observation function only, so they need no ODE sensitivities at all.
    """

    w: Float[Array, " first"]
    states: Float[Array, "obs states"]
    d1: Float[Array, "obs states first"]
    d2: Float[Array, "obs states second first"]
    status: Array
    first: tuple[int, ...] = eqx.field(static=True)
    second: tuple[int, ...] = eqx.field(static=True)


def expand(problem: FitProblem, theta_i: Float[Array, " params"], patient: PatientData, first: tuple[int, ...], second: tuple[int, ...] = ()) -> Expansion:
    r"""Solve once and return the :class:`Expansion` of the states in ``first`` (and ``second`` ⊆ ``first``).

    Cost: :math:`(1 + |\mathrm{first}|)(1 + |\mathrm{second}|)` copies of the ODE (primal and
    tangents), whatever the number of fixed and random effects. The parameters reach the solve as
    a tuple of scalars in which only the entries in ``first`` depend on ``w``: the others carry
    no tangent at all (not a tangent of zeros, as one array would), so forward mode skips every
    derivative of the vector field with respect to them. With a period axis (``theta_i``
    ``[periods, params]``, ``problem.timed``) a parameter that follows a time-varying covariate
    (:attr:`FitProblem.time_varying`) is one direction per period, the others one direction
    for all periods (their values are the same in every period).
    """
    base = jax.lax.stop_gradient(theta_i)  # only the entries in `first` are varied below
    shared, varying = _directions(problem, first, base.ndim > 1)
    pos = jnp.asarray(_positions(second, shared, varying, base.shape[0] if base.ndim > 1 else 1), dtype=jnp.int32)

    def solve(w):
        if base.ndim == 1:
            where = {k: j for j, k in enumerate(first)}
            theta = tuple(w[where[k]] if k in where else base[k] for k in range(base.shape[0]))
        else:
            per = w[len(shared) :].reshape(base.shape[0], len(varying))
            theta = tuple(
                jnp.broadcast_to(w[shared.index(k)], base.shape[:1]) if k in shared else per[:, varying.index(k)] if k in varying else base[:, k]
                for k in range(base.shape[1])
            )  # fmt: skip
        values, status = solve_one(
            problem.model.mechanism, theta,
            patient.dose_time, patient.dose_amount, patient.obs_time, problem.options, problem.slots, states=True, records=patient.records,
            periods=patient.periods,
        )  # fmt: skip
        return values, status

    w0 = _flat(theta_i, shared, varying)
    if not first:
        states, status = solve(w0)
        zeros = jnp.zeros((*states.shape, 0))
        return Expansion(w0, states, zeros, jnp.zeros((*states.shape, 0, 0)), status, first, second)
    if not second:
        def fwd(w):
            values, status = solve(w)
            return values, (values, status)

        d1, (states, status) = _jacfwd(fwd, w0)
        return Expansion(w0, states, d1, jnp.zeros((*states.shape, 0, w0.shape[0])), status, first, second)

    def outer(w):
        def inner(ws):
            values, status = solve(w.at[pos].set(ws))
            return values, (values, status)

        d_second, (values, status) = _jacfwd(inner, w[pos])
        return (d_second, values), (values, status)

    (d2, d1), (states, status) = _jacfwd(outer, w0)
    return Expansion(w0, states, d1, d2, status, first, second)


def _directions(problem: FitProblem, first: tuple[int, ...], timed: bool) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(shared, varying): the model indices in ``first`` with one direction for all periods, and
    those with one direction per period (all shared without a period axis)."""
    if not timed:
        return first, ()
    names, moving = problem.model.parameter_names, set(problem.time_varying)
    return tuple(k for k in first if names[k] not in moving), tuple(k for k in first if names[k] in moving)


def _flat(theta_i, shared: tuple[int, ...], varying: tuple[int, ...]) -> Float[Array, " w"]:
    """An expansion's ``w`` at ``theta_i``: the shared directions, then the varying ones period by period."""
    if theta_i.ndim == 1:
        return theta_i[jnp.asarray(shared, dtype=jnp.int32)] if shared else jnp.zeros(0)
    one = theta_i[0, jnp.asarray(shared, dtype=jnp.int32)] if shared else jnp.zeros(0)
    return jnp.concatenate([one, theta_i[:, jnp.asarray(varying, dtype=jnp.int32)].reshape(-1) if varying else jnp.zeros(0)])


def _positions(second: tuple[int, ...], shared: tuple[int, ...], varying: tuple[int, ...], periods: int) -> list[int]:
    """Positions in an expansion's ``w`` (:func:`_flat`) of the ``second`` directions."""
    out = []
    for k in second:
        if k in shared:
            out.append(shared.index(k))
        else:
            out += [len(shared) + p * len(varying) + varying.index(k) for p in range(periods)]
    return out


def _jacfwd(fun, w: Float[Array, " n"]):
    """``jax.jacfwd(fun, has_aux=True)(w)``; for one direction, a plain ``jax.jvp`` (the same
    arithmetic without the ``vmap`` over directions: every transformation re-traces the whole
    solve, which took seconds per layer for the reference fit's programs)."""
    if w.shape[0] != 1:
        return jax.jacfwd(fun, has_aux=True)(w)
    _, tangent, aux = jax.jvp(fun, (w,), (jnp.ones_like(w),), has_aux=True)
    return jax.tree_util.tree_map(lambda t: t[..., None], tangent), aux


def expanded_predict(problem: FitProblem, ex: Expansion, theta_i: Float[Array, " params"], patient: PatientData) -> Float[Array, " obs"]:
    r"""Predictions at ``theta_i`` from the Taylor polynomial of the states in ``ex``.

    Exact (to rounding) at the expansion point together with its first derivatives and, for
    the directions in ``ex.second``, its second derivatives :math:`\partial^2/\partial w_s\,\partial w`:
    the polynomial is :math:`Y + D_1\delta + \delta_s^\top D_2\,\delta - \tfrac12\,\delta_s^\top D_2^{ss}\delta_s`
    with :math:`\delta = w - w_0`, whose mixed second derivatives are :math:`D_2`. Differentiate
    it with ``jax.jacfwd`` for the sensitivities of the predictions to any fit parameter.
    """
    mechanism = problem.model.mechanism
    timed = theta_i.ndim > 1
    shared, varying = _directions(problem, ex.first, timed)
    delta = _flat(theta_i, shared, varying) - ex.w
    states = ex.states + ex.d1 @ delta
    if ex.second:
        pos = jnp.asarray(_positions(ex.second, shared, varying, theta_i.shape[0] if timed else 1), dtype=jnp.int32)
        ds = delta[pos]
        states = states + jnp.einsum("tsev,e,v->ts", ex.d2, ds, delta) - 0.5 * jnp.einsum("tsef,e,f->ts", ex.d2[..., pos], ds, ds)
    if timed:  # each observation with the arguments of its period (last value carried forward), prepared once per period
        period = jnp.clip(jnp.searchsorted(patient.periods, patient.obs_time, side="right") - 1, 0, theta_i.shape[0] - 1)
        args = jax.tree_util.tree_map(lambda x: x[period], jax.vmap(mechanism.prepare)(theta_i))
        values = jax.vmap(mechanism.observables)(patient.obs_time, states, args)
    else:
        args = mechanism.prepare(theta_i)
        values = jax.vmap(lambda t, y: mechanism.observables(t, y, args))(patient.obs_time, states)
    return jnp.take_along_axis(values, patient.obs_dvid[:, None], axis=1)[:, 0]
