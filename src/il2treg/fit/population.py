r"""Population (mixed-effects) fits: FOCE-I / Laplace objective with an exact gradient.

**Objective** (NONMEM's OFV, −2 log-likelihood of the data with random effects integrated out
by the Laplace approximation at the empirical Bayes estimates :math:`\hat\eta_i`):

.. math::
    \mathrm{OFV}(\psi) = \sum_i \Big[ g_i(\hat\eta_i) + \log|\Omega|
        + \log\big|\tfrac12 H_i(\hat\eta_i)\big| \Big], \qquad
    H_i = J_i^\top \mathrm{diag}((r_{2,i})_+) J_i + 2\Omega^{-1}

with :math:`g_i` and the Gauss-Newton (first-order, interaction) Hessian :math:`H_i` of
:mod:`il2treg.fit.individual` evaluated at :math:`\hat\eta_i` (FOCE with interaction). Terms that
do not depend on the EBEs are added to it: the priors' :math:`-2\log p(\psi)` (``prior``,
:mod:`il2treg.fit.priors`) and the −2 log-likelihood of published summaries (``summaries``,
:mod:`il2treg.fit.joint`), with their gradients (:meth:`Objective.penalty`).

**Exact gradient.** Write :math:`L_i(\psi, \eta)` for the bracket and
:math:`G_i = \partial g_i / \partial \eta`, zero at :math:`\hat\eta_i`. By the implicit function
theorem :math:`d\hat\eta_i/d\psi = -(\partial G_i/\partial\eta)^{-1}\,\partial G_i/\partial\psi`, so

.. math::
    \frac{d\,\mathrm{OFV}}{d\psi} = \sum_i \frac{\partial L_i}{\partial \psi}
        - \Big(\frac{\partial L_i}{\partial \eta}\Big)^\top
          \Big(\frac{\partial G_i}{\partial \eta}\Big)^{-1} \frac{\partial G_i}{\partial \psi}.

:math:`L_i` and :math:`G_i` depend on the ODE only through the predictions :math:`f_i` and their
sensitivities :math:`J_i`; their derivatives with respect to the structural parameters and
:math:`\eta` (second-order sensitivities) come from nested forward-mode differentiation through
the ODE solve, taken only in the directions of the varied parameters that the ODE reads
(:func:`il2treg.fit.problem.expand`); the rest is the chain rule on small arrays. The gradient is exact up to the
convergence of :math:`\hat\eta_i` (tested against finite differences of the objective).
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import Future, ThreadPoolExecutor

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from il2treg.fit.complete import complete_score, data_term
from il2treg.fit.individual import (
    InnerResult,
    batch_inner_solve,
    observation_derivatives,
)
from il2treg.fit.joint import SummaryTerm
from il2treg.fit.omega import RandomEffects
from il2treg.fit.priors import Prior, penalty, penalty_gradient
from il2treg.fit.problem import (
    FitProblem,
    PatientData,
    covariate_theta,
    data_neg2ll,
    expand,
    expanded_predict,
    individual_theta,
    typical_theta,
    unpack,
)
from il2treg.likelihood import ResidualModel, expected_curvature
from il2treg.simulate import (
    default_workers,
    interleaved_rows,
    ordered_map,
    run_on_threads,
    work_order,
)


def _bracket(residual: ResidualModel, random_effects: RandomEffects, pred, jac, eta, patient: PatientData, curvature: str = "observed", scale=None):
    """L_i and G_i from predictions and sensitivities (the cheap part of the objective); the
    residual SDs at ``scale`` when given (FOCE without interaction)."""
    r1, r2 = observation_derivatives(residual, pred, patient, scale)
    if curvature == "expected":  # NONMEM's FOCE-I: no terms in the residuals (il2treg.likelihood.expected_curvature)
        r2 = expected_curvature(residual, pred, patient.obs_dvid, patient.obs_cens, r2, scale)
    g = data_neg2ll(residual, pred, patient, scale) + random_effects.quad(eta)
    half_h = 0.5 * jac.T @ (jnp.where(patient.obs_mask, jnp.maximum(r2, 0.0), 0.0)[:, None] * jac) + random_effects.precision()
    L = g + random_effects.log_det() + jnp.linalg.slogdet(half_h)[1]
    G = jac.T @ r1 + 2.0 * random_effects.precision_times(eta)
    return L, G


def patient_terms(problem: FitProblem, psi, base_residual, inner: InnerResult, patient: PatientData):
    """OFV contribution of one patient at its (converged) inner result."""
    up = unpack(problem, problem.split(psi), base_residual)
    L, _ = _bracket(up.residual, up.random_effects, inner.pred, inner.jac, inner.eta, patient, problem.curvature, None if problem.interaction else inner.scale)
    return L


class PatientGradients(eqx.Module):
    r"""Each patient's exact gradient of its OFV term and the slope of its EBE, at converged EBEs.

    ``ofv`` is :math:`dL_i/d\psi` (the implicit dependence of :math:`\hat\eta_i` included) and
    ``eta`` is :math:`d\hat\eta_i/d\psi = -(\partial G_i/\partial\eta)^{-1}\,\partial G_i/\partial\psi`
    (see the module docstring); both are zero for an excluded patient. The slope predicts the EBEs
    at a nearby ``psi`` to second order (the covariance step, :func:`il2treg.fit.estimate.ofv_hessian`).
    """

    ofv: Float[Array, "*patients psi"]
    eta: Float[Array, "*patients eta psi"]


def patient_gradient(problem: FitProblem, psi, base_residual, eta, patient: PatientData) -> PatientGradients:
    """d L_i / d psi including the implicit dependence of eta_hat on psi (see module docstring),
    and d eta_hat / d psi (the same factorisation's other use)."""
    # The derivatives run over z = (psi's structural entries (u, beta), eta): what the predictions read.
    layout, ne = problem.layout, problem.n_random
    ns = layout.structural
    structural, rest = layout.divide(psi)  # rest: the variance parameters (log omega, correlations, log omega_IOV, log sigma)

    def theta_of(z):
        s = layout.join(z[:ns], rest)
        return individual_theta(problem, covariate_theta(problem, typical_theta(problem, s.u), s.beta, patient.covariates), z[ns:], patient.occasion)

    z0 = jnp.concatenate([structural, eta])
    # One solve with second-order sensitivities in the few ODE directions that vary, then the
    # chain rule through the exact Taylor polynomial (see il2treg.fit.problem.expand).
    ex = expand(problem, theta_of(z0), patient, problem.ode_varied, problem.ode_random)

    def pred_jac(z):
        def fwd(e):
            pred = expanded_predict(problem, ex, theta_of(jnp.concatenate([z[:ns], e])), patient)
            return pred, pred

        jac, pred = jax.jacfwd(fwd, has_aux=True)(z[ns:])
        return (pred, jac), (pred, jac)

    (dpred, djac), (pred, jac) = jax.jacfwd(pred_jac, has_aux=True)(z0)  # [T, nz], [T, ne, nz]

    def bracket_of(pred, jac, eta_, rest, scale=None):
        up = unpack(problem, layout.join(structural, rest), base_residual)
        return _bracket(up.residual, up.random_effects, pred, jac, eta_, patient, problem.curvature, scale)

    if problem.interaction:
        # L and G together: one reverse pass over the bracket (and the likelihood's derivatives in it).
        (Lp, Lj, Le, Lr), (Gp, Gj, Ge, Gr) = jax.jacrev(bracket_of, argnums=(0, 1, 2, 3))(pred, jac, eta, rest)
        dL_dz = Lp @ dpred + jnp.einsum("te,tez->z", Lj, djac) + jnp.concatenate([jnp.zeros(ns), Le])
        dG_dz = Gp @ dpred + jnp.einsum("ate,tez->az", Gj, djac) + jnp.concatenate([jnp.zeros((ne, ns)), Ge], axis=1)
    else:
        # FOCE: the residual SDs sit at the population predictions, which move with the fixed
        # effects (not with eta): one more solve, at eta = 0, with first-order sensitivities.
        ex0 = expand(problem, theta_of(jnp.concatenate([structural, jnp.zeros(ne)])), patient, problem.ode_varied)

        def population(zs):
            scale = expanded_predict(problem, ex0, theta_of(jnp.concatenate([zs, jnp.zeros(ne)])), patient)
            return scale, scale

        dscale, scale = jax.jacfwd(population, has_aux=True)(structural)  # [T, ns]
        (Lp, Lj, Le, Lr, Ls), (Gp, Gj, Ge, Gr, Gs) = jax.jacrev(bracket_of, argnums=(0, 1, 2, 3, 4))(pred, jac, eta, rest, scale)
        dL_dz = Lp @ dpred + jnp.einsum("te,tez->z", Lj, djac) + jnp.concatenate([Ls @ dscale, Le])
        dG_dz = Gp @ dpred + jnp.einsum("ate,tez->az", Gj, djac) + jnp.concatenate([Gs @ dscale, Ge], axis=1)
    hess = dG_dz[:, ns:]  # exact d^2 g / d eta^2
    lam = jnp.linalg.solve(hess.T, dL_dz[ns:])
    grad_u = dL_dz[:ns] - lam @ dG_dz[:, :ns]
    grad_rest = Lr - lam @ Gr
    slope = -jnp.linalg.solve(hess, jnp.concatenate([dG_dz[:, :ns], Gr], axis=1))
    return PatientGradients(jnp.concatenate([grad_u, grad_rest]), slope)


class Objective(eqx.Module):
    """The population objective of one problem and dataset: value, exact gradient, EBEs."""

    problem: FitProblem = eqx.field(static=True)
    patients: PatientData
    base_residual: ResidualModel
    batch_size: int = eqx.field(static=True, default=16)
    inner_tol: float = eqx.field(static=True, default=1e-10)
    prior: Prior | None = None  # a penalty -2 log p(psi) added to the OFV (il2treg.fit.priors)
    summaries: SummaryTerm | None = None  # published summaries' -2LL added to the OFV (il2treg.fit.joint)

    @eqx.filter_jit
    def inner(self, psi, eta0) -> InnerResult:
        up = unpack(self.problem, self.problem.split(psi), self.base_residual)
        return batch_inner_solve(
            self.problem, up.theta, up.beta, up.random_effects, up.residual, self.patients, eta0, batch_size=self.batch_size, tol=self.inner_tol
        )  # fmt: skip

    @eqx.filter_jit
    def terms(self, psi, inner: InnerResult, include) -> Float[Array, " patients"]:
        """Each patient's OFV term at the given inner results (0 if excluded)."""
        terms = jax.vmap(lambda inn, pat: patient_terms(self.problem, psi, self.base_residual, inn, pat))(inner, self.patients)
        return jnp.where(include, terms, 0.0)

    @eqx.filter_jit
    def value(self, psi, inner: InnerResult, include) -> Float[Array, ""]:
        """OFV at the given inner results, summed over the included patients."""
        return jnp.sum(self.terms(psi, inner, include)) + self.penalty(psi)

    def penalty(self, psi) -> Float[Array, ""]:
        """The terms of the OFV that do not depend on the patients' EBEs: −2 log prior of
        ``psi`` and the published summaries' −2 log-likelihood (0 without them)."""
        return _terms(self.prior, self.summaries, psi)

    def penalty_gradient(self, psi) -> Float[Array, " psi"]:
        return _terms_gradient(self.prior, self.summaries, psi)

    def curvature_rows(self, psi) -> Float[Array, "rows psi"]:
        """Rows for the outer optimiser's preconditioner beside the patients' gradients: the
        published summaries' (:meth:`il2treg.fit.joint.SummaryTerm.curvature_rows`); none without them."""
        return _curvature_rows(self.summaries, psi)

    @eqx.filter_jit
    def gradients(self, psi, eta, include) -> PatientGradients:
        """Each patient's exact gradient of its OFV term, and the slope of its EBE, at converged
        EBEs ``eta`` (0 if excluded)."""
        grad = lambda args: patient_gradient(self.problem, psi, self.base_residual, args[0], args[1])
        per_patient = ordered_map(grad, (eta, self.patients), work_order(self.patients.dose_amount), self.batch_size)
        return jax.tree.map(lambda x: jnp.where(include.reshape(-1, *(1,) * (x.ndim - 1)), x, 0.0), per_patient)

    def gradient(self, psi, eta, include) -> Float[Array, " psi"]:
        """Exact gradient of the OFV (with the priors' and summaries' terms) at converged EBEs ``eta``, over the
        included patients; :meth:`gradients` holds the data terms only, per patient."""
        return jnp.sum(self.gradients(psi, eta, include).ofv, axis=0) + self.penalty_gradient(psi)

    def compile_ahead(self, psi, eta, include) -> None:
        """Nothing: a single objective compiles each program at its first call (see
        :meth:`ThreadedObjective.compile_ahead`)."""

    @eqx.filter_jit
    def data_terms(self, psi, phi) -> tuple[Float[Array, " patients"], Array]:
        """SAEM: each patient's −2 log p(y_i | phi_i, psi) (inf where the solve fails) and solver
        status, at log individual parameters ``phi`` (:func:`il2treg.fit.complete.data_term`)."""
        term = lambda args: data_term(self.problem, psi, self.base_residual, args[0], args[1])
        return ordered_map(term, (phi, self.patients), work_order(self.patients.dose_amount), self.batch_size)

    @eqx.filter_jit
    def complete_scores(self, psi, phi):
        """SAEM: each patient's complete-data objective, its gradient in psi, its information and
        whether they are finite (:func:`il2treg.fit.complete.complete_score`)."""
        score = lambda args: complete_score(self.problem, psi, self.base_residual, args[0], args[1])
        return ordered_map(score, (phi, self.patients), work_order(self.patients.dose_amount), self.batch_size)


def _terms(prior: Prior | None, summaries: SummaryTerm | None, psi):
    """The OFV's terms outside the patients: the priors' penalty and the summaries' −2LL."""
    value = penalty(prior, psi)
    return value if summaries is None else value + summaries.neg2ll(psi)


def _terms_gradient(prior: Prior | None, summaries: SummaryTerm | None, psi):
    value = penalty_gradient(prior, psi)
    return value if summaries is None else value + summaries.gradient(psi)


def _curvature_rows(summaries: SummaryTerm | None, psi):
    return jnp.zeros((0, psi.shape[0])) if summaries is None else summaries.curvature_rows(psi)


class _SplitObjective:
    """What the split objectives share: the priors' and summaries' terms (added once, not per part) and the
    total gradient from the per-patient ones."""

    prior: Prior | None
    summaries: SummaryTerm | None

    def penalty(self, psi):
        return _terms(self.prior, self.summaries, psi)

    def penalty_gradient(self, psi):
        return _terms_gradient(self.prior, self.summaries, psi)

    def curvature_rows(self, psi):
        return _curvature_rows(self.summaries, psi)

    def gradient(self, psi, eta, include):
        return jnp.asarray(np.sum(np.asarray(self.gradients(psi, eta, include).ofv), axis=0) + np.asarray(self.penalty_gradient(psi)))


class ThreadedObjective(_SplitObjective):
    """An :class:`Objective` whose patients are split over threads (one XLA computation each).

    A jitted objective runs on one core; the patients are dealt out in interleaved slices of
    equal length (the last padded with a repeat that never counts), so every thread reuses one
    compiled function, and the results are put back in patient order. Same interface as
    :class:`Objective`.
    """

    def __init__(self, objective: Objective, workers: int | None = None):
        self.problem = objective.problem
        self.base_residual = objective.base_residual
        self.patients = objective.patients
        self.prior, self.summaries = objective.prior, objective.summaries
        objective = dataclasses.replace(objective, prior=None, summaries=None)  # the parts hold data terms; the rest is added once
        n = objective.patients.obs_time.shape[0]
        workers = max(1, min(workers or default_workers(), n // 8))
        self._rows, self._real, self._parts = [], [], []
        for rows, real in interleaved_rows(n, workers):
            self._rows.append(rows)
            self._real.append(real)
            self._parts.append(eqx.tree_at(lambda o: o.patients, objective, _take(objective.patients, rows)))
        self._n = n
        self._ahead: dict[str, Future] = {}

    def compile_ahead(self, psi, eta, include) -> None:
        """Build a fit's three large programs for these shapes: trace here, compile in the background.

        The EBE search, the OFV terms and the exact gradient are traced and lowered one after the
        other on this thread, and each is handed to XLA on a background thread as soon as it is
        lowered, so that XLA builds one program while Python traces the next. The EBE search comes
        first because a fit needs it first: the initial EBEs and their restarts run while the
        gradient is still being built (the gradient first: the reference fit's first iteration at
        62.6 s, against 59.2 s this way, one run each on one machine).
        Tracing holds Python's lock: the gradient traced on a thread beside the EBE search took
        34 s of wall time where the two took 13.5 s one after the other. The first call of each
        method waits for its program; the result is the program that call would have compiled
        (``benchmarks/README.md`` has the before and after of the reference fit).
        """
        part, eta, include = self._parts[0], np.asarray(eta)[self._rows[0]], self._include(0, include)
        self._ahead["inner"] = _BACKGROUND.submit(Objective.inner.lower(part, psi, eta).compile)
        inner = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), eqx.filter_eval_shape(Objective.inner, part, psi, eta))
        self._ahead["terms"] = _BACKGROUND.submit(Objective.terms.lower(part, psi, inner, include).compile)
        self._ahead["gradients"] = _BACKGROUND.submit(Objective.gradients.lower(part, psi, eta, include).compile)

    def _map(self, method: str, args):
        """``Objective.<method>(part, *args(k))`` for every part ``k``, one thread each
        (:func:`il2treg.simulate.run_on_threads`: compiled once, ahead of time)."""
        pending = self._ahead.pop(method, None)
        if pending is not None:
            pending.result()  # compiled in the background (compile_ahead): wait for it, do not compile twice
        return run_on_threads(getattr(Objective, method), [(part, *args(k)) for k, part in enumerate(self._parts)])

    def _gather(self, parts):
        """Per-part results (a pytree with a leading patient axis) back in patient order."""

        def one(*leaves):
            out = np.empty((self._n, *leaves[0].shape[1:]), dtype=leaves[0].dtype)
            for rows, real, leaf in zip(self._rows, self._real, leaves):
                out[rows[real]] = np.asarray(leaf)[real]
            return jnp.asarray(out)

        return jax.tree_util.tree_map(one, *parts)

    def _include(self, k, include):
        return jnp.asarray(np.asarray(include)[self._rows[k]] & self._real[k])

    def inner(self, psi, eta0) -> InnerResult:
        return self._gather(self._map("inner", lambda k: (psi, np.asarray(eta0)[self._rows[k]])))

    def value(self, psi, inner: InnerResult, include):
        terms = self._gather(self._map("terms", lambda k: (psi, _take(inner, self._rows[k]), self._include(k, include))))
        return jnp.asarray(np.sum(np.asarray(terms)) + np.asarray(self.penalty(psi)))

    def gradients(self, psi, eta, include):
        return self._gather(self._map("gradients", lambda k: (psi, np.asarray(eta)[self._rows[k]], self._include(k, include))))

    def data_terms(self, psi, phi):
        return self._gather(self._map("data_terms", lambda k: (psi, np.asarray(phi)[self._rows[k]])))

    def complete_scores(self, psi, phi):
        return self._gather(self._map("complete_scores", lambda k: (psi, np.asarray(phi)[self._rows[k]])))


#: Threads for programs compiled ahead of their first call (ThreadedObjective.compile_ahead): one
#: per program, so that XLA builds them side by side on the cores the tracing leaves free.
_BACKGROUND = ThreadPoolExecutor(3, thread_name_prefix="il2treg-compile")


class ShardedObjective(_SplitObjective):
    """An :class:`Objective` whose patients are split over several devices (``jax.shard_map``).

    The patients are padded (repeating the last one, which never counts) to a multiple of the
    number of devices and laid out along a 1-D ``patients`` mesh; every device runs the
    single-device code on its rows, so each patient's EBE, OFV term and gradient are identical to
    :class:`Objective`'s, and the sum is taken on the host in patient order. Used by
    :func:`make_parallel` when more than one local device exists (GPUs, or CPU devices forced
    with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``). Same interface as
    :class:`Objective`.
    """

    def __init__(self, objective: Objective, devices=None):
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        devices = list(devices or jax.local_devices())
        self.problem = objective.problem
        self.base_residual = objective.base_residual
        self.patients = objective.patients
        self.prior, self.summaries = objective.prior, objective.summaries
        n = objective.patients.obs_time.shape[0]
        d = len(devices)
        self._n = n
        self._rows = np.minimum(np.arange(-(-n // d) * d), n - 1)
        self._real = np.arange(self._rows.size) < n
        self._mesh = Mesh(np.asarray(devices), ("patients",))
        self._sharding = NamedSharding(self._mesh, PartitionSpec("patients"))
        patients = jax.device_put(_take(objective.patients, self._rows), self._sharding)
        self._objective = eqx.tree_at(lambda o: o.patients, dataclasses.replace(objective, prior=None, summaries=None), patients)

    def compile_ahead(self, psi, eta, include) -> None:
        """Nothing: each device's program compiles at its first call."""

    def _shard(self, x):
        return jax.device_put(jnp.asarray(x)[self._rows], self._sharding)

    def _include(self, include):
        return jax.device_put(np.asarray(include, dtype=bool)[self._rows] & self._real, self._sharding)

    def inner(self, psi, eta0) -> InnerResult:
        out = _sharded_call(self._objective, "inner", self._mesh, psi, self._shard(eta0))
        return jax.tree_util.tree_map(lambda x: x[: self._n], out)

    def value(self, psi, inner: InnerResult, include):
        inner = jax.tree_util.tree_map(self._shard, inner)
        terms = _sharded_call(self._objective, "terms", self._mesh, psi, inner, self._include(include))
        return jnp.sum(terms[: self._n]) + self.penalty(psi)

    def gradients(self, psi, eta, include):
        out = _sharded_call(self._objective, "gradients", self._mesh, psi, self._shard(eta), self._include(include))
        return jax.tree_util.tree_map(lambda x: x[: self._n], out)

    def data_terms(self, psi, phi):
        out = _sharded_call(self._objective, "data_terms", self._mesh, psi, self._shard(phi))
        return jax.tree_util.tree_map(lambda x: x[: self._n], out)

    def complete_scores(self, psi, phi):
        out = _sharded_call(self._objective, "complete_scores", self._mesh, psi, self._shard(phi))
        return jax.tree_util.tree_map(lambda x: x[: self._n], out)


@eqx.filter_jit
def _sharded_call(objective: Objective, method: str, mesh, psi, *batched):
    """``objective.<method>(psi, *batched)`` with the patients and ``batched`` split over ``mesh``."""
    from jax.sharding import PartitionSpec

    rows = PartitionSpec("patients")

    def local(patients, *xs):
        return getattr(eqx.tree_at(lambda o: o.patients, objective, patients), method)(psi, *xs)

    specs = (rows,) * (1 + len(batched))
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=rows, check_vma=False)(objective.patients, *batched)


def make_parallel(objective: Objective, *, shard: bool = True, workers: int | None = None) -> ShardedObjective | ThreadedObjective:
    """``objective`` spread over the machine: over all local devices when there are several
    (and ``shard``), else over threads on the one device."""
    n = objective.patients.obs_time.shape[0]
    devices = jax.local_devices()
    if shard and len(devices) > 1 and n >= len(devices):
        return ShardedObjective(objective, devices)
    return ThreadedObjective(objective, workers)


def _take(tree, rows):
    """The rows of every leaf, taken in NumPy (an eager jax.numpy gather is a program to compile)."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x)[rows]), tree)

