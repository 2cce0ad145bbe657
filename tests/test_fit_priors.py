"""Priors: declared in models/ with a width and its justification; a penalty on the OFV; proper for NUTS."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from il2treg.errors import SpecError
from il2treg.fit.population import Objective
from il2treg.fit.priors import PriorDefaults, model_priors, sampling_priors
from il2treg.fit.problem import make_problem, patient_arrays
from il2treg.fit.spec import read_fit_spec
from il2treg.spec import parse_spec


def _problem(spec):
    return make_problem(spec.model, spec.dataset, fixed=spec.fixed, random=spec.random, sigmas=spec.sigmas,
                        residual_kinds={e.dvid: e.kind for e in spec.errors}, covariates=spec.effects)  # fmt: skip


@pytest.fixture(scope="module")
def spec():
    return read_fit_spec("fits/lupil2_nuts/fit.toml")


def test_every_fitted_parameter_of_the_reference_fits_has_a_justified_prior(model):
    for name in ("emax_treg", "kout_treg", "treg0", "tconv0", "emax_cd25", "sledai0", "imax", "pmax", "r50", "kd"):
        ps = model.spec[name]
        assert ps.prior_sd is not None and ps.prior_sd > 0, name
        assert len(ps.prior_source) > 20, name
        assert ps.prior_center == ps.value


def test_prior_centre_stays_at_the_declared_value_when_a_fit_starts_elsewhere(model):
    moved = model.with_values(kout_treg=0.2)
    assert moved.spec["kout_treg"].prior_center == pytest.approx(0.12)


def _one_parameter(extra: str, value: float = 1.0, unit: str = "1/day"):
    """A model of one log-transformed parameter k (bounds 0.1-10 in ``unit``), with ``extra`` lines."""
    import tomllib

    lines = "\n".join(line.strip() for line in extra.splitlines())
    doc = tomllib.loads(textwrap.dedent(f"""
        [model]
        name = "m"
        [parameters.k]
        value = {value}
        unit = "{unit}"
        bounds = [0.1, 10.0]
        transform = "log"
        cv_percent = 0
        source = "test"
    """) + lines + "\n")  # fmt: skip
    return parse_spec(doc, where="m.toml")


@pytest.mark.parametrize(
    "extra, message",
    [("prior_sd = -1\nprior_source = 'x'", "prior_sd must be a positive number"),
     ("prior_sd = 0.5", "needs `prior_source`"),
     ("prior_source = 'why'", "prior_source or prior_center without prior_sd"),
     ("prior_center = 2.0", "prior_source or prior_center without prior_sd"),
     ("prior_sd = 0.5\nprior_source = 'x'\nprior_center = 20.0", r"prior_center must be a finite number inside the bounds \[0.1, 10.0\]"),
     ("prior_sd = 0.5\nprior_source = 'x'\nprior_center = '2'", "prior_center must be a finite number"),
     ("prior_sd = 0.5\nprior_source = 'x'\nprior_center = inf", "prior_center must be a finite number")],
)  # fmt: skip
def test_bad_prior_declarations_are_named(extra, message):
    with pytest.raises(SpecError, match=message):
        _one_parameter(extra)


def test_a_declared_prior_center_is_the_centre_in_internal_units():
    """A value estimated from data keeps the literature's centre: prior_center is read in the
    file's unit (1/h here, held in 1/day), apart from the value."""
    (k,) = _one_parameter("prior_sd = 0.5\nprior_source = 'test'\nprior_center = 1.0", value=2.0, unit="1/h").params
    assert k.value == pytest.approx(48.0) and k.prior_center == pytest.approx(24.0)


def test_model_priors_are_lognormal_about_the_declared_value(spec):
    problem = _problem(spec)
    prior = model_priors(problem)
    k = problem.fixed.index("kout_treg")
    assert float(prior.mean[k]) == pytest.approx(math.log(0.12))
    assert float(prior.sd[k]) == 0.18
    assert not prior.declared[~problem.layout.mask("u")].any()  # omegas and sigmas: no model prior


def test_penalty_and_its_gradient(spec):
    problem = _problem(spec)
    prior = model_priors(problem)
    psi = jnp.asarray(prior.mean) + 0.1
    psi = jnp.where(prior.declared, psi, 0.3)
    expected = sum((0.1 / float(s)) ** 2 for s in np.asarray(prior.sd) if np.isfinite(s))
    assert float(prior.neg2log(psi)) == pytest.approx(expected)
    h = 1e-6
    for k in range(problem.layout.size):
        e = jnp.zeros(problem.layout.size).at[k].set(h)
        fd = (prior.neg2log(psi + e) - prior.neg2log(psi - e)) / (2 * h)
        assert float(prior.neg2log_gradient(psi)[k]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9)


def test_sampling_priors_are_proper_everywhere(spec):
    problem = _problem(spec)
    psi0 = jnp.linspace(-1, 1, problem.layout.size)
    prior = sampling_priors(problem, psi0, PriorDefaults(omega_sd=0.7))
    assert prior.declared.all()
    k = problem.psi_names.index("omega_treg0")
    assert float(prior.mean[k]) == pytest.approx(float(psi0[k])) and float(prior.sd[k]) == 0.7


@pytest.mark.slow
def test_objective_with_prior_adds_exactly_the_penalty(spec):
    problem = _problem(spec)
    patients = patient_arrays(spec.dataset, problem.covariates)
    res = spec.residual_model()
    plain = Objective(problem, patients, res)
    penalised = Objective(problem, patients, res, prior=model_priors(problem))
    from il2treg.fit.assemble import initial_psi

    psi = initial_psi(spec, problem, res) + 0.05
    inner = plain.inner(psi, jnp.zeros((patients.obs_time.shape[0], problem.n_eta)))
    include = inner.status == 0
    diff = float(penalised.value(psi, inner, include) - plain.value(psi, inner, include))
    assert diff == pytest.approx(float(model_priors(problem).neg2log(psi)), rel=1e-12)
    gdiff = penalised.gradient(psi, inner.eta, include) - plain.gradient(psi, inner.eta, include)
    np.testing.assert_allclose(np.asarray(gdiff), np.asarray(model_priors(problem).neg2log_gradient(psi)), rtol=1e-9, atol=1e-9)


def test_fit_file_priors_key_is_validated(tmp_path):
    text = Path("fits/lupil2_nuts/fit.toml").read_text().replace('data = "cohort.csv"', 'data = "cohort.csv"\npriors = "literature"')
    (tmp_path / "fit.toml").write_text(text)
    (tmp_path / "cohort.csv").write_text(Path("fits/lupil2_nuts/cohort.csv").read_text())
    with pytest.raises(SpecError, match="priors must be one of"):
        read_fit_spec(tmp_path / "fit.toml")
