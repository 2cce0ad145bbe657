r"""What is estimated, on which scale, and the per-patient prediction.

**Parameters.** A population fit estimates

* fixed effects :math:`\theta` for the parameters named in ``FitProblem.fixed``, each on the
  unconstrained scale of its transform in the model file (``log``: :math:`\theta = e^u`;
  ``logit``: :math:`\theta = lo + (hi - lo)\,\mathrm{sigmoid}(u)`; ``identity``: :math:`\theta = u`);
* a diagonal between-patient covariance :math:`\Omega = \mathrm{diag}(\omega^2)` of log-normal
  random effects on the parameters in ``FitProblem.random``:
  :math:`\theta_i = \theta\, e^{\eta_i}`, :math:`\eta_i \sim N(0, \Omega)`; estimated as
  :math:`\log \omega`;
* residual SDs (``sigma_add``/``sigma_prop`` of the observation types named in
  ``FitProblem.sigmas``), estimated as :math:`\log \sigma`.

They are packed into one vector :math:`\psi = (u, \log\omega, \log\sigma)` for the optimiser.
Everything not estimated stays at the model file's value.
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
from il2treg.likelihood import ResidualModel, neg2ll_terms
from il2treg.model import Model
from il2treg.observables import OBSERVABLE_NAMES
from il2treg.simulate import SolverOptions, _slots_needed, _solve_one


@dataclasses.dataclass(frozen=True)
class FitProblem:
    """The static description of a fit (hashable: jit treats it as configuration).

    Attributes:
        model: the model.
        fixed: names of the estimated fixed effects.
        random: names of the parameters with a log-normal random effect (diagonal Omega).
        sigmas: ``((dvid, "add" | "prop"), ...)``: estimated residual SDs.
        residual_kinds: error model kind per observation type (order of OBSERVABLE_NAMES).
        slots: static number of save slots per inter-dose interval (see il2treg.simulate).
        options: solver options (forward-mode adjoint: fits use forward sensitivities).
    """

    model: Model
    fixed: tuple[str, ...]
    random: tuple[str, ...]
    sigmas: tuple[tuple[str, str], ...]
    residual_kinds: tuple[str, ...]
    slots: int
    options: SolverOptions

    @property
    def n_fixed(self) -> int:
        return len(self.fixed)

    @property
    def n_eta(self) -> int:
        return len(self.random)

    @property
    def n_psi(self) -> int:
        return len(self.fixed) + len(self.random) + len(self.sigmas)

    @property
    def psi_names(self) -> tuple[str, ...]:
        return (
            *self.fixed,
            *(f"omega_{n}" for n in self.random),
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
) -> FitProblem:
    """Validate the choice of estimated quantities against the model and the data."""
    names = model.parameter_names
    for n in (*fixed, *random):
        if n not in names:
            raise SpecError(f"unknown parameter {n!r} in the fit. Fix: use one of {', '.join(names)}.")
    for n in random:
        if model.spec[n].transform != "log":
            raise SpecError(f"random effect on {n!r} needs a log transform (it is {model.spec[n].transform!r}).")
    if len(set(fixed)) != len(fixed) or len(set(random)) != len(random):
        raise SpecError("a parameter is listed twice in the fit. Fix: list each once.")
    observed = set(data.observed_names())
    for dvid, kind in sigmas:
        if dvid not in OBSERVABLE_NAMES or kind not in ("add", "prop"):
            raise SpecError(f"residual SD ({dvid!r}, {kind!r}) is not (observation type, 'add' | 'prop').")
        if dvid not in observed:
            raise SpecError(f"the fit estimates a residual SD of {dvid!r} but the data have no {dvid!r} observation. Fix: remove it or add data.")
    kinds = ResidualModel.build(residual_kinds).kinds
    slots = _slots_needed(np.asarray(data.dose_time), np.asarray(data.obs_time), model.spec["tlag"].bounds[1])
    options = options or SolverOptions(adjoint=dfx.ForwardMode())
    return FitProblem(model, tuple(fixed), tuple(random), tuple(sigmas), kinds, slots, options)


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
    """psi split into its parts: fixed values (internal units), omega (SDs), residual model."""

    theta: Float[Array, " params"]  # every model parameter, typical patient
    omega: Float[Array, " eta"]
    residual: ResidualModel


def unpack(problem: FitProblem, psi: Float[Array, " psi"], base_residual: ResidualModel) -> Unpacked:
    nf, ne = problem.n_fixed, problem.n_eta
    names = problem.model.parameter_names
    theta = problem.model.typical().values
    if nf:
        theta = theta.at[jnp.asarray([names.index(n) for n in problem.fixed])].set(from_unconstrained(problem, psi[:nf]))
    omega = jnp.exp(psi[nf : nf + ne])
    sa, sp = base_residual.sigma_add, base_residual.sigma_prop
    for k, (dvid, kind) in enumerate(problem.sigmas):
        d = OBSERVABLE_NAMES.index(dvid)
        value = jnp.exp(psi[nf + ne + k])
        sa, sp = (sa.at[d].set(value), sp) if kind == "add" else (sa, sp.at[d].set(value))
    return Unpacked(theta, omega, ResidualModel(sa, sp, problem.residual_kinds))


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


def patient_arrays(data: Dataset) -> PatientData:
    """All patients of a dataset as one stacked :class:`PatientData` (jnp arrays)."""
    return PatientData(
        jnp.asarray(data.dose_time), jnp.asarray(data.dose_amount), jnp.asarray(data.obs_time),
        jnp.asarray(data.obs_dvid), jnp.asarray(data.obs_value), jnp.asarray(data.obs_cens), jnp.asarray(data.obs_mask),
    )  # fmt: skip


def individual_theta(problem: FitProblem, theta: Float[Array, " params"], eta: Float[Array, " eta"]) -> Float[Array, " params"]:
    """theta_i = theta * exp(eta) on the parameters with random effects."""
    if not problem.n_eta:
        return theta
    names = problem.model.parameter_names
    idx = jnp.asarray([names.index(n) for n in problem.random])
    return theta.at[idx].set(theta[idx] * jnp.exp(eta))


def predict(problem: FitProblem, theta_i: Float[Array, " params"], patient: PatientData) -> tuple[Float[Array, " obs"], Array]:
    """Model prediction for each observation row of one patient, and the solver status."""
    values, status = _solve_one(
        problem.model.structure, problem.model.parameter_names, theta_i,
        patient.dose_time, patient.dose_amount, patient.obs_time, problem.options, problem.slots,
    )  # fmt: skip
    pred = jnp.take_along_axis(values, patient.obs_dvid[:, None], axis=1)[:, 0]
    return pred, status


def data_neg2ll(residual: ResidualModel, pred: Float[Array, " obs"], patient: PatientData) -> Float[Array, ""]:
    """−2 log-likelihood of one patient's observations given predictions."""
    return jnp.sum(neg2ll_terms(residual, pred, patient.obs_value, patient.obs_dvid, patient.obs_cens, patient.obs_mask))
