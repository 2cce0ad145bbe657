r"""The population fit: L-BFGS (optax) on the FOCE-I objective, then standard errors.

Each outer iteration: an L-BFGS direction (``optax.scale_by_lbfgs``) from the exact gradient,
preconditioned by the outer product of the per-patient gradients (:func:`preconditioner`), a
backtracking (Armijo) line search on the objective, where every trial point re-optimises the
empirical Bayes estimates warm-started from the last ones; convergence when the objective
changes by less than ``ftol`` and the largest gradient component is below ``gtol``, or when the
expected decrease of the quasi-Newton step (half of :math:`g^\top d`, the L-BFGS decrement) is
below ``ftol`` while the largest gradient component is below ``100 gtol`` (a small decrement with
a large gradient means a stale scaling: the map is rebuilt at the current point, at most 5
times): the gradient of a 100-patient objective has a noise floor of a few 1e-2 at the solver's
rtol of 1e-6 (measured), so a gradient test alone would not end. The defaults match the noise
floor of the objective at the solver's rtol of 1e-6 (OFV changes of ~1e-6 between iterations
near the optimum were measured on a 30-patient fit).

**Uncertainty.** The covariance of :math:`\hat\psi` is :math:`2 R^{-1}` with :math:`R` the Hessian
of the OFV (= −2LL), obtained by forward differences of the exact gradient (each at the EBEs
predicted from their exact slopes; :func:`ofv_hessian`) and symmetrised; or NONMEM's default, the
sandwich :math:`R^{-1} S R^{-1}` (:func:`estimate_covariance`, ``covariance_matrix``). Standard errors on the natural scale by the delta method; 95% intervals
are computed on the estimation scale and transformed back, so they respect bounds.

**EBEs** are started from several points (:func:`multistart`) when the estimation ends; if a
patient finds a lower minimum there, the fit resumes from it. At the start the other starts are
tried only when a patient would otherwise be left out (its search from :math:`\eta = 0` did not
converge, or it looks like a misfit, below), so that a local minimum cannot exclude a patient;
otherwise the estimation starts at once (the reference fit reached its first iteration 6.8 s
sooner, the same OFV to 3e-13: benchmarks/README.md).

**Patients.** A patient whose ODE fails or whose EBE does not converge at the start is flagged and
left out of the objective. A patient whose data the model cannot fit with any parameters (mean
squared IWRES above ``outlier_iwres2``, i.e. residuals beyond 5 SD on average at the default, and
above 10 times the median patient's) is flagged too, at the start and after convergence, and the
fit goes on without it, so the others are unaffected.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from il2treg.fit.individual import STATUS_CONVERGED, InnerResult
from il2treg.fit.population import Objective
from il2treg.fit.problem import FitProblem, unpack
from il2treg.fit.psi import Psi
from il2treg.likelihood import standardized_residuals


class PopulationFit(eqx.Module):
    """Estimates of a population fit on the estimation scale, with what is needed to report them.

    Attributes:
        psi: estimates, raveled (unconstrained fixed effects, covariate coefficients, log omega,
            the artanh of the partial correlations of omega blocks, log omega_IOV, log sigma;
            ``FitProblem.split`` names the parts, :mod:`il2treg.fit.psi`).
        psi_names: their names.
        ofv: objective function value (−2 log-likelihood, FOCE-I).
        covariance: covariance of ``psi`` (2 R^-1, or the sandwich R^-1 S R^-1:
            :func:`estimate_covariance`); NaN if R was singular.
        eta: empirical Bayes estimates, ``[patients, eta]``.
        inner_status: per patient (0 converged, 1 max iterations, 2 solver failed).
        included: patients that contributed to the objective.
        iterations: outer iterations used.
        converged: whether the outer convergence criteria were met.
        history: objective per outer iteration.
        n_observations: observations used.
        elapsed_s: wall time of the estimation (s), compilation included.
        trace: SAEM only: the estimates before and after each iteration, ``[iterations + 1, psi]``
            (:mod:`il2treg.fit.saem`; the burn-in leaves them unchanged).
        acceptance: SAEM only: the Metropolis-Hastings acceptance rates (population proposals,
            random walk).
    """

    psi: Float[Array, " psi"]
    psi_names: tuple[str, ...] = eqx.field(static=True)
    ofv: float = eqx.field(static=True)
    covariance: Float[Array, "psi psi"] = None
    eta: Float[Array, "patients eta"] = None
    inner_status: Int[Array, " patients"] = None
    included: Array = None
    iterations: int = eqx.field(static=True, default=0)
    converged: bool = eqx.field(static=True, default=False)
    history: tuple[float, ...] = eqx.field(static=True, default=())
    n_observations: int = eqx.field(static=True, default=0)
    elapsed_s: float = eqx.field(static=True, default=0.0)
    trace: Float[Array, "iterations psi"] | None = None
    acceptance: tuple[float, ...] = eqx.field(static=True, default=())

    @property
    def standard_errors(self) -> Float[Array, " psi"]:
        return jnp.sqrt(jnp.diag(self.covariance))

    @property
    def aic(self) -> float:
        return self.ofv + 2 * len(self.psi)

    @property
    def bic(self) -> float:
        return self.ofv + len(self.psi) * float(np.log(max(self.n_observations, 1)))

    @property
    def condition_number(self) -> float:
        cov = np.asarray(self.covariance)
        if not np.all(np.isfinite(cov)):  # the covariance step failed: no condition number
            return float("inf")
        ev = np.linalg.eigvalsh(cov)
        return float(ev.max() / ev.min()) if np.all(np.isfinite(ev)) and ev.min() > 0 else float("inf")


def fit_population(
    objective: Objective,
    psi0: Float[Array, " psi"],
    *,
    max_iter: int = 200,
    ftol: float = 1e-4,
    gtol: float = 1e-2,
    covariance: bool = True,
    outlier_iwres2: float = 25.0,
    callback: Callable[[dict], None] | None = None,
    covariance_matrix: str = "hessian",
) -> PopulationFit:
    """Estimate the population parameters from ``psi0`` (see the module docstring);
    ``covariance_matrix``: :func:`estimate_covariance`'s ``kind``."""
    start = time.time()
    n = objective.patients.obs_time.shape[0]
    psi = jnp.asarray(psi0, dtype=jnp.float64)
    eta0 = jnp.zeros((n, objective.problem.n_random))
    objective.compile_ahead(psi, eta0, jnp.ones(n, dtype=bool))  # traced here, compiled in the background
    inner = objective.inner(psi, eta0)
    include, misfit = _start_checks(objective, psi, inner, outlier_iwres2)
    if not include.all() or misfit.any():  # a patient would be left out: try the other starts first
        inner = multistart(objective, psi, inner)
        include, misfit = _start_checks(objective, psi, inner, outlier_iwres2)
    include = include & ~misfit
    for _ in range(3):  # estimate; drop patients no parameters can fit; move EBEs to better minima; resume
        psi, inner, ofv, it, converged, history = minimise_ofv(objective, psi, inner, include, max_iter, ftol, gtol, callback, start)
        misfit = _misfit(objective, psi, inner, include, outlier_iwres2)
        checked = multistart(objective, psi, inner)  # inner is already converged at psi: no re-solve
        moved = include & (np.asarray(checked.g) < np.asarray(inner.g) - 1e-6)
        if not np.any(misfit & include) and not moved.any():
            break
        include = include & ~misfit
        inner = checked
    else:  # the third round still excluded a patient or moved an EBE: estimate from there once more,
        # so that the reported psi, OFV and EBEs belong together
        psi, inner, ofv, it, converged, history = minimise_ofv(objective, psi, inner, include, max_iter, ftol, gtol, callback, start)
    n_obs = int(np.sum(include[:, None] & np.asarray(objective.patients.obs_mask)))
    cov = estimate_covariance(objective, psi, inner, include, kind=covariance_matrix) if covariance else jnp.full((len(psi), len(psi)), jnp.nan)
    return PopulationFit(
        psi=psi, psi_names=objective.problem.psi_names, ofv=ofv, covariance=cov, eta=inner.eta,
        inner_status=inner.status, included=jnp.asarray(include), iterations=it, converged=converged,
        history=tuple(history), n_observations=n_obs, elapsed_s=time.time() - start,
    )  # fmt: skip


def multistart(objective: Objective, psi, best: InnerResult, spread: float = 1.0) -> InnerResult:
    r"""``best`` (EBEs already solved at ``psi``) against solves from :math:`\pm` ``spread`` SDs
    (omega, and the inter-occasion omegas) on every random effect at once; per patient the converged result with the lowest
    :math:`g` (status 0 preferred).

    The inner problem need not be convex in eta (the predictions are nonlinear in the parameters),
    so one start can end in a local minimum. The starts reuse the one compiled inner solve.
    """
    omega = np.asarray(_sd(objective.problem, psi, objective.base_residual))
    for sign in (1.0, -1.0):  # the starts in NumPy: an eager jnp operation is a program to compile
        trial = objective.inner(psi, jnp.asarray(np.broadcast_to(sign * spread * omega, best.eta.shape)))
        best = _better(trial, best)
    return best


@eqx.filter_jit
def _omega(problem: FitProblem, psi, base_residual):
    return unpack(problem, problem.split(psi), base_residual).omega


@eqx.filter_jit
def _sd(problem: FitProblem, psi, base_residual):
    """The SD of every entry of the random-effect vector (eta, then kappa)."""
    return unpack(problem, problem.split(psi), base_residual).random_effects.sd


@jax.jit
def _better(trial: InnerResult, best: InnerResult) -> InnerResult:
    """Per patient, ``trial`` where it converged to a lower ``g`` (or ``best`` did not converge)."""
    better = (trial.status == STATUS_CONVERGED) & ((best.status != STATUS_CONVERGED) | (trial.g < best.g))
    return jax.tree_util.tree_map(lambda a, b: jnp.where(better.reshape((-1,) + (1,) * (a.ndim - 1)), a, b), trial, best)


def _start_checks(objective: Objective, psi, inner: InnerResult, outlier_iwres2: float) -> tuple[np.ndarray, np.ndarray]:
    """At the start: which patients' EBE searches converged, and which of those are misfits
    (bookkeeping in NumPy: no programs to compile)."""
    converged = np.asarray(inner.status) == STATUS_CONVERGED
    return converged, _misfit(objective, psi, inner, converged, outlier_iwres2)


def _misfit(objective: Objective, psi, inner: InnerResult, include, outlier_iwres2: float):
    """Included patients whose mean squared IWRES exceeds ``outlier_iwres2`` and 10 times the median
    over the included patients (so a poor start, which raises everyone's, flags no one)."""
    iwres2 = np.asarray(_mean_iwres2(objective, psi, inner))
    inc = np.asarray(include)
    median = float(np.median(iwres2[inc])) if inc.any() else 0.0
    return inc & (iwres2 > outlier_iwres2) & (iwres2 > 10.0 * median)


def _mean_iwres2(objective: Objective, psi, inner: InnerResult):
    """Mean squared IWRES per patient at its EBEs."""
    return _mean_iwres2_of(objective.problem, objective.base_residual, objective.patients, psi, inner.pred)


@eqx.filter_jit
def _mean_iwres2_of(problem: FitProblem, base_residual, pats, psi, pred):
    residual = unpack(problem, problem.split(psi), base_residual).residual
    z = jax.vmap(lambda p, pt: standardized_residuals(residual, p, pt.obs_value, pt.obs_dvid))(pred, pats)
    z2 = jnp.where(pats.obs_mask & ~pats.obs_cens, z**2, 0.0)
    return jnp.sum(z2, axis=1) / jnp.maximum(jnp.sum(pats.obs_mask & ~pats.obs_cens, axis=1), 1)


def preconditioner(per_patient: Float[Array, "patients psi"]) -> np.ndarray:
    r"""Whitening map :math:`T` with :math:`T^\top \tilde R\, T = I` for the outer optimiser.

    :math:`\tilde R = \tfrac12 \sum_i g_i g_i^\top + \tfrac{k}{n}\mathrm{diag}(\tfrac12 \sum_i g_i g_i^\top)` from the
    per-patient gradients :math:`g_i` of the OFV (the outer-product, BHHH, approximation of the
    Hessian of −2LL; the rows given may also hold a published summary's Gauss-Newton row,
    :meth:`il2treg.fit.joint.SummaryTerm.curvature_rows`, each counted as a patient),
    shrunk towards its diagonal by the number of parameters :math:`k` over the
    number of patients :math:`n`: with 8 patients and 9 parameters the plain BHHH matrix is
    singular and L-BFGS stalled 4 OFV points above the minimum (fits/lupil2_nuts). Eigenvalues are
    floored at 1e-6 of the largest so that a parameter the data do not inform (or, with fewer
    patients than parameters, a direction no gradient spans) cannot blow up the map. Optimising
    :math:`x` with :math:`\psi = \psi_0 + T x` makes every direction of :math:`\psi` equally curved to first approximation, so L-BFGS starts from a good scaling
    and correlation structure instead of learning it.
    """
    g = np.asarray(per_patient, dtype=np.float64)
    g = np.where(np.isfinite(g).all(axis=1, keepdims=True), g, 0.0)  # a patient without a gradient adds nothing
    r = 0.5 * g.T @ g
    n = int(np.sum(np.any(g != 0, axis=1)))
    r = r + np.diag(np.diag(r)) * (g.shape[1] / max(n, 1))  # shrink towards the diagonal when patients are few
    lam, vec = np.linalg.eigh(r)
    lam = np.maximum(lam, 1e-6 * max(float(lam.max()), 1e-300))
    return vec / np.sqrt(lam)


#: The outer optimiser's direction: optax's L-BFGS, compiled once as two small programs (run
#: eagerly, each of its few dozen array operations was compiled on its own in every process).
_LBFGS = optax.scale_by_lbfgs(memory_size=10)
_lbfgs_init = jax.jit(_LBFGS.init)
_lbfgs_update = jax.jit(_LBFGS.update)


@jax.jit
def _summed(per_patient, penalty_gradient):
    return jnp.sum(per_patient, axis=0) + penalty_gradient


def minimise_ofv(objective, psi, inner, include, max_iter, ftol, gtol, callback, start):
    """Preconditioned L-BFGS with backtracking from ``psi``; returns (psi, inner, ofv, iterations, converged, history).

    The outer loop's own arithmetic is on a few vectors of length ``len(psi)``: it runs in NumPy,
    so that only the objective and the L-BFGS update are compiled programs.
    """

    def value_at(p, warm: InnerResult):
        inn = objective.inner(p, warm.eta)
        v = float(objective.value(p, inn, include))
        return (v if np.isfinite(v) else np.inf), inn

    def total_gradient(psi, per_patient):
        return np.asarray(_summed(per_patient, objective.penalty_gradient(psi)))

    psi = np.asarray(psi, dtype=np.float64)
    ofv = float(objective.value(psi, inner, include))
    per_patient = objective.gradients(psi, inner.eta, include).ofv
    grad = total_gradient(psi, per_patient)

    def restart(per_patient):
        # the published summaries' curvature (il2treg.fit.joint) beside the patients': without it
        # the map ignores the directions they inform most, and L-BFGS crawls (measured on
        # tests/test_fit_joint.py's cohort: 45 iterations, not converged, against 15 and converged)
        rows = np.concatenate([np.asarray(per_patient), np.asarray(objective.curvature_rows(jnp.asarray(psi)))])
        return preconditioner(rows), np.zeros(len(psi)), _lbfgs_init(np.zeros(len(psi)))

    tmap, x, state = restart(per_patient)
    history = [ofv]
    converged = False
    it = 0
    restarts = 0
    for it in range(1, max_iter + 1):
        gx = tmap.T @ grad
        direction, state = _lbfgs_update(gx, state, x)
        direction = np.asarray(direction)
        slope = float(gx @ direction)
        # A small quasi-Newton decrement means no meaningful decrease is left, unless the gradient
        # says otherwise: then the scaling is stale (few patients, a moved optimum) and is rebuilt.
        small = it > 1 and slope > 0 and 0.5 * slope < ftol
        if small and float(np.max(np.abs(grad))) < 100 * gtol:
            converged = True
            break
        if small:
            restarts += 1
            if restarts > 5:
                break
        if small or not slope > 0:  # re-whiten here, restart from steepest descent
            tmap, x, state = restart(per_patient)
            gx = tmap.T @ grad
            direction, slope = gx, float(gx @ gx)
        move = tmap @ direction
        step = min(1.0, 2.0 / max(float(np.max(np.abs(move))), 1e-300))  # at most 2 units of psi
        for _ in range(30):
            trial = psi - step * move
            v, inn = value_at(trial, inner)
            if v <= ofv - 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break  # no decrease along the direction: at a minimum up to numerical noise
        change = ofv - v
        psi, inner, ofv, x = trial, inn, v, x - step * direction
        per_patient = objective.gradients(psi, inner.eta, include).ofv
        grad = total_gradient(psi, per_patient)
        history.append(ofv)
        if not bool(np.all(np.isfinite(grad))):
            break  # no usable gradient here: stop, not converged
        gmax = float(np.max(np.abs(grad)))
        if callback is not None:
            callback({"iteration": it, "ofv": ofv, "grad_max": gmax, "elapsed_s": time.time() - start})
        if change < ftol and gmax < gtol:
            converged = True
            break
    else:
        it = max_iter
    if not converged:
        converged = float(np.max(np.abs(grad))) < gtol
    return jnp.asarray(psi), inner, ofv, it, converged, history


def ofv_hessian(objective: Objective, psi, inner: InnerResult, include, rel_step: float = 1e-4) -> np.ndarray:
    r"""R, the Hessian of the OFV, by forward differences of the exact gradient (k + 1 gradients,
    no EBE search), symmetrised.

    Column :math:`j` is :math:`(\nabla(\psi + h_j e_j) - \nabla(\psi)) / h_j` with
    :math:`h_j = 10^{-4}\max(1, |\psi_j|)`, each gradient at the EBEs of its own :math:`\psi`:
    those at :math:`\psi + h_j e_j` are predicted from the EBEs' slopes,
    :math:`\hat\eta_i + h_j\, d\hat\eta_i/d\psi_j` (:class:`~il2treg.fit.population.PatientGradients`),
    exact to :math:`O(h^2)`, so the column's error is :math:`O(h)` like that of the forward
    difference itself, and an error of the base point's EBEs cancels in the difference. Searching
    the EBEs again at each :math:`\psi + h_j e_j` instead (as before 2026-12-03) cost an EBE search
    per column. Forward rather than central differences halve the cost; with a relative step of
    1e-4 the truncation error of the SEs is of that order, far below their own sampling error.
    """
    return _hessian_and_gradients(objective, psi, inner, include, rel_step)[0]


def _hessian_and_gradients(objective: Objective, psi, inner: InnerResult, include, rel_step: float):
    """:func:`ofv_hessian`'s R and the per-patient gradients at ``psi`` it was built from."""
    k = len(psi)
    psi = np.asarray(psi, dtype=np.float64)  # the arithmetic around the gradients in NumPy: no programs to compile
    base = objective.gradients(psi, inner.eta, include)
    g0 = np.sum(np.asarray(base.ofv), axis=0) + np.asarray(objective.penalty_gradient(psi))
    eta, slope = np.asarray(inner.eta), np.asarray(base.eta)
    slope = np.where(np.isfinite(slope), slope, 0.0)  # a patient with a singular EBE Hessian: not moved
    cols = []
    for j in range(k):
        e = np.zeros(k)
        e[j] = rel_step * max(1.0, abs(float(psi[j])))
        gp = np.asarray(objective.gradient(psi + e, eta + slope[:, :, j] * e[j], include))
        cols.append((gp - g0) / e[j])
    r = np.stack(cols, axis=1)
    return 0.5 * (r + r.T), np.asarray(base.ofv)


#: Covariance matrices of the estimates :func:`estimate_covariance` offers.
COVARIANCE_MATRICES = ("hessian", "sandwich")


def estimate_covariance(objective: Objective, psi, inner: InnerResult, include, rel_step: float = 1e-4, kind: str = "hessian"):
    r"""The covariance of ``psi``; NaN where R is singular or the result is not positive definite.

    ``kind``:

    - ``"hessian"``: :math:`2R^{-1}`, R the Hessian of the OFV (:func:`ofv_hessian`); NONMEM's
      ``$COVARIANCE MATRIX=R``.
    - ``"sandwich"``: :math:`R^{-1} S R^{-1}` with :math:`S = \sum_i \nabla \mathrm{OFV}_i\,
      \nabla \mathrm{OFV}_i^\top` over the included patients (their exact gradients); NONMEM's
      default ``$COVARIANCE``, robust to a misspecified residual or random-effect distribution.
      In −2LL units both equal the usual :math:`A^{-1}` and :math:`A^{-1}BA^{-1}` of the
      log-likelihood (R = 2A, S = 4B).
    """
    if kind not in COVARIANCE_MATRICES:
        raise ValueError(f"unknown covariance matrix {kind!r}. Fix: use one of {', '.join(COVARIANCE_MATRICES)}.")
    k = len(psi)
    r, per_patient = _hessian_and_gradients(objective, psi, inner, include, rel_step)
    try:
        r_inv = np.linalg.inv(r)
    except np.linalg.LinAlgError:  # singular R: report NaN, do not crash a finished fit
        return jnp.full((k, k), jnp.nan)
    if kind == "hessian":
        cov = 2.0 * r_inv
    else:
        per_patient = per_patient[np.asarray(include)]  # the gradients R was built from: no second evaluation
        cov = r_inv @ (per_patient.T @ per_patient) @ r_inv
        cov = 0.5 * (cov + cov.T)
    ok = np.all(np.isfinite(cov)) and np.all(np.linalg.eigvalsh(cov) > 0)
    return jnp.asarray(cov if ok else np.full((k, k), np.nan))


def natural_estimates(problem: FitProblem, fit: PopulationFit, base_residual) -> dict[str, dict[str, float]]:
    """Estimates on the natural scale: value, SE (delta method), %RSE, 95% CI; CV% for omegas.

    Intervals are those of psi transformed, except for correlations of omega blocks (one can
    depend on several psi entries): :math:`\\tanh(\\mathrm{artanh}\\,r \\pm 1.96\\,SE_r/(1 - r^2))`."""
    psi = np.asarray(fit.psi, dtype=np.float64)
    cov = np.asarray(fit.covariance)
    values, jac = (np.asarray(x) for x in _natural_and_jacobian(problem, psi, base_residual))
    se = np.sqrt(np.clip(np.diag(jac @ cov @ jac.T), 0, None)) if np.all(np.isfinite(cov)) else np.full(len(values), np.nan)
    z = 1.959963984540054
    se_psi = np.sqrt(np.clip(np.diag(cov), 0, None))
    lo, hi = np.asarray(natural_parameters_of(problem, np.stack([psi - z * se_psi, psi + z * se_psi]), base_residual))
    out = {}
    for k, name in enumerate(fit.psi_names):
        row = {"estimate": float(values[k]), "se": float(se[k]), "rse_percent": float(100 * se[k] / abs(values[k])) if values[k] else float("nan"),
               "ci_low": float(min(lo[k], hi[k])), "ci_high": float(max(lo[k], hi[k]))}  # fmt: skip
        if name.startswith("omega_"):
            row["cv_percent"] = float(100 * np.sqrt(np.expm1(values[k] ** 2)))
        if name.startswith("corr_"):  # a correlation can hang on several psi entries: delta method on artanh(r), whose range is R
            z_r, se_z = np.arctanh(values[k]), se[k] / (1.0 - values[k] ** 2)
            row["ci_low"], row["ci_high"] = float(np.tanh(z_r - z * se_z)), float(np.tanh(z_r + z * se_z))
            row["rse_percent"] = float("nan")  # a signed quantity near 0: no relative SE
        out[name] = row
    return out


def natural_parameters(problem: FitProblem, psi: Float[Array, " psi"], base_residual) -> Float[Array, " psi"]:
    """``psi`` on the scale :func:`natural_estimates` reports: fixed effects in internal units,
    covariate coefficients, omegas (SDs of eta), correlations of the random effects in omega
    blocks, inter-occasion SDs (of kappa), and sigmas."""
    parts = problem.split(psi)
    u = unpack(problem, parts, base_residual)
    names = problem.model.parameter_names
    fixed = u.theta[jnp.asarray([names.index(n) for n in problem.fixed], dtype=jnp.int32)] if problem.n_fixed else jnp.zeros(0)
    corr = u.random_effects.correlation()
    correlations = jnp.stack([corr[i, j] for i, j in problem.corr_pairs]) if problem.n_corr else jnp.zeros(0)
    # psi's layout on the reporting scale (il2treg.fit.psi): each part holds its parameter itself
    return Psi(u=fixed, beta=u.beta, log_omega=u.omega, corr=correlations, log_omega_iov=u.omega_iov, log_sigma=jnp.exp(parts.log_sigma)).ravel()


@eqx.filter_jit
def natural_parameters_of(problem: FitProblem, psi: Float[Array, "draws psi"], base_residual) -> Float[Array, "draws psi"]:
    """:func:`natural_parameters` of every row of ``psi``, as one compiled program."""
    return jax.vmap(lambda p: natural_parameters(problem, p, base_residual))(jnp.atleast_2d(psi))


@eqx.filter_jit
def _natural_and_jacobian(problem: FitProblem, psi, base_residual):
    natural = lambda p: natural_parameters(problem, p, base_residual)
    return natural(psi), jax.jacfwd(natural)(psi)


def shrinkage(fit: PopulationFit, problem: FitProblem, base_residual) -> dict[str, float]:
    """eta-shrinkage (%) per random effect: 1 − SD(eta_hat) / omega, over included patients."""
    omega = np.asarray(_omega(problem, fit.psi, base_residual))
    eta = np.asarray(fit.eta)[np.asarray(fit.included)]
    return {n: float(100 * (1 - eta[:, k].std(ddof=1) / omega[k])) for k, n in enumerate(problem.random)}
