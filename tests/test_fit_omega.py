"""Block (correlated) Omega: its parametrisation, its algebra, and the fits that use it."""

from __future__ import annotations

from pathlib import Path

import diffrax as dfx
import jax.numpy as jnp
import numpy as np
import pytest

from il2treg.errors import SpecError
from il2treg.fit.omega import (
    RandomEffects,
    block_correlation,
    block_pairs,
    check_blocks,
    correlation_cholesky,
    partial_correlations,
)
from il2treg.simulate import SolverOptions

ROOT = Path(__file__).resolve().parents[1]


def test_partial_correlations_invert_the_cholesky_construction():
    """A random 4 x 4 correlation matrix (one full block) survives the round trip through the
    unconstrained x, and any x gives a correlation matrix (unit diagonal, positive definite)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 6))
    cov = a @ a.T
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    pairs = block_pairs(("a", "b", "c", "d"), (("a", "b", "c", "d"),))
    assert pairs == ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))
    x = partial_correlations(corr, pairs)
    chol = np.asarray(correlation_cholesky(jnp.asarray(x), pairs, 4))
    np.testing.assert_allclose(chol @ chol.T, corr, atol=1e-12)
    for x in (rng.standard_normal(6) * 3, np.full(6, 25.0)):  # 25: tanh is 1 to rounding; the rows stay unit vectors
        chol = np.asarray(correlation_cholesky(jnp.asarray(x), pairs, 4))
        r = chol @ chol.T
        np.testing.assert_allclose(np.diag(r), 1.0, atol=1e-12)
        assert np.all(np.isfinite(r))


def test_interleaved_blocks_stay_uncorrelated_across_blocks():
    """Blocks {a, c} and {b, d} in the order a, b, c, d: R is zero between the blocks and each
    block's correlation is tanh(x) (a block of two)."""
    random, blocks = ("a", "b", "c", "d"), (("a", "c"), ("d", "b"))
    pairs = block_pairs(random, blocks)
    assert pairs == ((2, 0), (3, 1))
    chol = np.asarray(correlation_cholesky(jnp.asarray([0.4, -1.1]), pairs, 4))
    r = chol @ chol.T
    expected = block_correlation(4, pairs, {(2, 0): np.tanh(0.4), (3, 1): np.tanh(-1.1)})
    np.testing.assert_allclose(r, expected, atol=1e-14)


def test_random_effects_algebra_matches_the_dense_matrices():
    sd = jnp.asarray([0.3, 0.2, 0.5])
    pairs = ((1, 0), (2, 0), (2, 1))
    chol = correlation_cholesky(jnp.asarray([0.7, -0.2, 0.3]), pairs, 3)
    re = RandomEffects(sd, chol)
    omega = np.asarray(re.covariance())
    eta = jnp.asarray([0.1, -0.25, 0.4])
    np.testing.assert_allclose(np.diag(omega), np.asarray(sd) ** 2, rtol=1e-14)
    np.testing.assert_allclose(float(re.quad(eta)), eta @ np.linalg.solve(omega, eta), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(re.precision()), np.linalg.inv(omega), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(re.precision_times(eta)), np.linalg.solve(omega, eta), rtol=1e-10)
    np.testing.assert_allclose(float(re.log_det()), np.linalg.slogdet(omega)[1], rtol=1e-12)
    np.testing.assert_allclose(np.asarray(re.cholesky()) @ np.asarray(re.cholesky()).T, omega, rtol=1e-12)
    diagonal = RandomEffects(sd)  # no block: the diagonal formulas
    assert float(diagonal.quad(eta)) == float(jnp.sum(eta**2 * (1.0 / sd**2)))
    assert float(diagonal.log_det()) == float(2.0 * jnp.sum(jnp.log(sd)))
    np.testing.assert_allclose(np.asarray(diagonal.correlation()), np.eye(3))


def test_blocks_are_checked():
    random = ("CL", "V", "KA")
    check_blocks(random, (("CL", "V"),))
    for blocks, text in (((("CL",),), "two or more"), ((("CL", "Q"),), "'Q', which has no random effect"),
                         ((("CL", "V"), ("V", "KA")), "in two omega blocks")):  # fmt: skip
        with pytest.raises(SpecError, match=text):
            check_blocks(random, blocks)
    with pytest.raises(SpecError, match="positive definite"):
        partial_correlations(np.array([[1.0, 1.2], [1.2, 1.0]]), ((1, 0),))


# ----------------------------------------------------------------------------- fits

TIMES_H = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0)


def _cohort(folder: Path, n: int, rho: float, seed: int, *, block: bool = True, initial: float = 0.0) -> Path:
    """A one-compartment IV cohort (closed form, CL 2 L/h, V 20 L, omegas 0.3 and 0.2, correlation
    ``rho``, 10% proportional error) and a fit file with CL and V in one omega block."""
    rng = np.random.default_rng(seed)
    cov = np.array([[0.09, rho * 0.06], [rho * 0.06, 0.04]])
    eta = rng.multivariate_normal(np.zeros(2), cov, size=n)
    lines = ["ID,TIME,AMT,DV"]
    for i in range(n):
        cl, v = 2.0 * np.exp(eta[i, 0]), 20.0 * np.exp(eta[i, 1])
        lines.append(f"{i + 1},0,100,0")
        lines += [f"{i + 1},{t:g},0,{100 / v * np.exp(-cl * t / v) * (1 + 0.1 * rng.standard_normal()):.8g}" for t in TIMES_H]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    text = f'model = "{(ROOT / "models" / "pk_1cmt_iv.toml").as_posix()}"\ndata = "data.csv"\ntime_unit = "h"\n'
    text += "[parameters.CL]\ncv_percent = 30\n[parameters.V]\ncv_percent = 20\n"
    if block:
        text += f'[[omega_block]]\nparameters = ["CL", "V"]\ncorrelation = {initial}\n'
    text += '[error.conc]\nkind = "proportional"\nsigma_prop = 0.1\n[nuts]\nchains = 2\nwarmup = 150\nsamples = 150\n'
    (folder / "fit.toml").write_text(text)
    return folder / "fit.toml"


def test_the_fit_starts_at_the_block_s_initial_correlation(tmp_path):
    from il2treg.fit.assemble import initial_psi
    from il2treg.fit.estimate import natural_parameters_of
    from il2treg.fit.spec import read_fit_spec

    spec = read_fit_spec(_cohort(tmp_path, 3, 0.6, 0, initial=-0.3))
    problem = spec.problem()
    assert problem.blocks == (("CL", "V"),) and problem.corr_pairs == ((1, 0),)
    psi = initial_psi(spec, problem, spec.residual_model())
    assert float(problem.split(psi).corr[0]) == pytest.approx(np.arctanh(-0.3), rel=1e-12)
    assert float(problem.split(natural_parameters_of(problem, psi, spec.residual_model())[0]).corr[0]) == pytest.approx(-0.3, rel=1e-12)


def test_a_block_of_three_reports_every_correlation_with_an_interval_around_it(tmp_path):
    """ka, CL and V in one block: three correlations, the last (V with CL) a function of two psi
    entries. Each is reported as the correlation itself, with a delta-method interval on
    artanh(r) that contains it, and none gets a %RSE."""
    from il2treg.fit.assemble import initial_psi
    from il2treg.fit.estimate import PopulationFit, natural_estimates
    from il2treg.fit.spec import read_fit_spec

    (tmp_path / "data.csv").write_text("ID,TIME,AMT,DV\n1,0,100,0\n1,1,0,2.0\n1,4,0,3.0\n")
    (tmp_path / "fit.toml").write_text(
        f'model = "{(ROOT / "models" / "pk_1cmt_oral.toml").as_posix()}"\ndata = "data.csv"\ntime_unit = "h"\n'
        "[parameters.ka]\ncv_percent = 30\n[parameters.CL]\ncv_percent = 30\n[parameters.V]\ncv_percent = 20\n"
        '[[omega_block]]\nparameters = ["ka", "CL", "V"]\ncorrelation = 0.4\n[error.conc]\nkind = "proportional"\n'
    )  # fmt: skip
    spec = read_fit_spec(tmp_path / "fit.toml")
    problem = spec.problem()
    assert problem.corr_pairs == ((1, 0), (2, 0), (2, 1))
    psi = initial_psi(spec, problem, spec.residual_model())
    names = problem.psi_names
    fit = PopulationFit(psi=psi, psi_names=names, ofv=0.0, covariance=jnp.eye(len(psi)) * 0.01, eta=jnp.zeros((1, 3)),
                        inner_status=jnp.zeros(1, dtype=int), included=jnp.ones(1, dtype=bool), iterations=0, converged=True,
                        history=(), n_observations=2, elapsed_s=0.0)  # fmt: skip
    est = natural_estimates(problem, fit, spec.residual_model())
    for name in ("corr_ka_CL", "corr_ka_V", "corr_CL_V"):
        row = est[name]
        assert row["estimate"] == pytest.approx(0.4, rel=1e-12)  # every pair starts at the block's correlation
        assert row["se"] > 0 and row["ci_low"] < row["estimate"] < row["ci_high"] and -1 < row["ci_low"] and row["ci_high"] < 1
        assert np.isnan(row["rse_percent"])
    # V with CL hangs on two partial correlations: its SE is larger than that of one alone
    assert est["corr_CL_V"]["se"] != pytest.approx(est["corr_ka_CL"]["se"], rel=1e-3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """100 patients with correlation 0.6, as a block fit file and a diagonal one."""
    folder = tmp_path_factory.mktemp("block")
    return _cohort(folder / "block", 100, 0.6, 7), _cohort(folder / "diagonal", 100, 0.6, 7, block=False)


@pytest.mark.slow
def test_block_objective_is_the_diagonal_one_at_zero_correlation_and_its_gradient_is_exact(cohort):
    from il2treg.fit.assemble import initial_psi
    from il2treg.fit.population import Objective
    from il2treg.fit.problem import problem_patients
    from il2treg.fit.spec import read_fit_spec

    objectives = []
    for path in cohort:
        spec = read_fit_spec(path)
        problem = spec.problem(options=SolverOptions(rtol=1e-10, atol=1e-13, adjoint=dfx.ForwardMode(), max_steps=100_000))
        patients = problem_patients(problem, spec.dataset)
        objective = Objective(problem, patients, spec.residual_model(), inner_tol=1e-16)
        objectives.append((objective, initial_psi(spec, problem, spec.residual_model())))
    (block, psi_b), (diagonal, psi_d) = objectives
    assert block.problem.psi_names == ("CL", "V", "omega_CL", "omega_V", "corr_CL_V", "sigma_prop_conc")
    assert float(psi_b[4]) == 0.0 and np.array_equal(np.delete(np.asarray(psi_b), 4), np.asarray(psi_d))
    include = jnp.ones(100, dtype=bool)
    eta0 = jnp.zeros((100, 2))
    value = lambda obj, p: float(obj.value(p, obj.inner(p, eta0), include))
    # The same objective in other arithmetic (a triangular solve against the identity): the EBEs
    # stop at other points within their tolerance, and log|H| is not stationary in eta (measured
    # difference 7e-8 of an OFV of 528; a missing term would be of order 1).
    assert value(block, psi_b) == pytest.approx(value(diagonal, psi_d), abs=1e-6)
    # The gradient in every direction, the correlation's included, against central differences
    psi = psi_b.at[4].set(0.5)
    inner = block.inner(psi, eta0)
    grad = np.asarray(block.gradient(psi, inner.eta, include))
    for k, name in enumerate(block.problem.psi_names):
        h = 1e-4
        fd = (value(block, psi.at[k].add(h)) - value(block, psi.at[k].add(-h))) / (2 * h)
        assert abs(grad[k] - fd) <= 1e-4 * abs(fd) + 1e-5, (name, grad[k], fd)


@pytest.mark.slow
def test_foce_and_saem_recover_the_correlation(cohort):
    """One cohort of 100 with correlation 0.6 (benchmarks/omega_block.py runs ten): FOCE-I and
    SAEM estimate it within 0.15, and the report shows it."""
    from il2treg.fit.estimators import Foce, Saem
    from il2treg.fit.result import report
    from il2treg.fit.run import compute_fit
    from il2treg.fit.spec import read_fit_spec

    spec = read_fit_spec(cohort[0])
    for estimator in (Foce(), Saem()):
        result = compute_fit(spec, estimator=estimator)
        row = result.estimates.set_index("parameter").loc["corr_CL_V"]
        assert row["type"] == "correlation"
        assert abs(row["estimate"] - 0.6) < 0.15, (estimator, row["estimate"])
        assert row["ci_low"] < row["estimate"] < row["ci_high"]
        assert "| corr_CL_V |" in report(result)


@pytest.mark.slow
def test_nuts_density_of_correlated_random_effects(cohort):
    """The posterior NUTS samples: with the random effects held, moving the correlation changes
    the log density by exactly sum_i log N(eta_i; 0, Omega) and the correlation's prior, whatever
    mix of centred and non-centred coordinates the patients use."""
    from scipy.stats import multivariate_normal

    from il2treg.fit.assemble import initial_psi
    from il2treg.fit.bayes import make_target
    from il2treg.fit.priors import sampling_priors
    from il2treg.fit.problem import problem_patients, unpack
    from il2treg.fit.spec import read_fit_spec

    spec = read_fit_spec(cohort[0])
    problem = spec.problem()
    patients = problem_patients(problem, spec.dataset)
    residual = spec.residual_model()
    psi0 = initial_psi(spec, problem, residual)
    corr_at = int(problem.layout.mask("corr").nonzero()[0][0])  # the one partial correlation
    prior = sampling_priors(problem, psi0, spec.nuts.priors)
    rng = np.random.default_rng(3)
    eta = jnp.asarray(rng.normal(0.0, 0.2, (100, 2)))
    variances = jnp.asarray(rng.uniform(0.001, 0.1, (100, 2)))  # some patients centred, some not, per effect
    target = make_target(problem, patients, residual, prior, jnp.ones(100, dtype=bool), variances, jnp.asarray([0.3, 0.2]))
    centred = np.asarray(target.centred)
    assert centred.any() and (~centred).any()

    def density(x):
        psi = psi0.at[corr_at].set(x)
        return float(target.log_density({"psi": psi, "z": target.to_coordinates(psi, eta)}))

    def log_normal(x):
        cov = np.asarray(unpack(problem, problem.split(psi0.at[corr_at].set(x)), residual).random_effects.covariance())
        return multivariate_normal(np.zeros(2), cov).logpdf(np.asarray(eta)).sum()

    x = 0.8
    expected = log_normal(x) - log_normal(0.0) - 0.5 * x**2 / spec.nuts.priors.corr_sd**2
    assert density(x) - density(0.0) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    # Every patient centred instead: the same distribution of eta in other coordinates, so the
    # densities differ by the Jacobians omega_k of the non-centred coordinates only.
    centred_target = make_target(problem, patients, residual, prior, jnp.ones(100, dtype=bool), variances, jnp.asarray([1e9, 1e9]))
    assert np.asarray(centred_target.centred).all()
    psi = psi0.at[corr_at].set(x)
    all_centred = float(centred_target.log_density({"psi": psi, "z": centred_target.to_coordinates(psi, eta)}))
    omega = np.exp(np.asarray(problem.split(psi0).log_omega))
    assert density(x) - all_centred == pytest.approx(np.sum(np.where(centred, 0.0, np.log(omega)[None, :])), rel=1e-9)
