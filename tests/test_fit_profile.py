"""Profile likelihood: an informed parameter's interval matches the Hessian one; one the design
does not inform is flat and reported as non-identifiable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from il2treg.errors import SpecError
from il2treg.fit.assemble import initial_psi
from il2treg.fit.estimate import fit_population
from il2treg.fit.population import Objective
from il2treg.fit.problem import make_problem, patient_arrays
from il2treg.fit.profile import CHI2_95, profile
from il2treg.fit.spec import read_fit_spec

pytestmark = pytest.mark.slow  # `make test-all` and CI run these; `make test` leaves them out


def _fit(spec):
    res = spec.residual_model()
    problem = make_problem(spec.model, spec.dataset, fixed=spec.fixed, random=spec.random, sigmas=spec.sigmas,
                           residual_kinds={e.dvid: e.kind for e in spec.errors})  # fmt: skip
    objective = Objective(problem, patient_arrays(spec.dataset), res)
    fit = fit_population(objective, initial_psi(spec, problem, res))
    return objective, fit


@pytest.fixture(scope="module")
def informed():
    """The small NUTS cohort (8 patients, 9 population parameters, all informed)."""
    return _fit(read_fit_spec("fits/lupil2_nuts/fit.toml"))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """The same, also estimating ec50_nk: NK cells are not fitted, so nothing informs it."""
    folder = tmp_path_factory.mktemp("profile")
    (folder / "fit.toml").write_text(Path("fits/lupil2_nuts/fit.toml").read_text() + "\n[parameters.ec50_nk]\n")
    (folder / "cohort.csv").write_text(Path("fits/lupil2_nuts/cohort.csv").read_text())
    return _fit(read_fit_spec(folder / "fit.toml"))


def test_informed_parameter_profile_ci_matches_the_hessian_ci(informed):
    objective, fit = informed
    prof = profile(objective, fit, "kout_treg", points=4, span=3.0)
    assert prof.identifiable, prof.verdict()
    assert np.all(prof.delta >= -1e-2)  # the fit is a minimum along the profile
    lo, hi = prof.hessian_ci
    width = hi - lo
    assert abs(prof.ci_low - lo) < 0.2 * width and abs(prof.ci_high - hi) < 0.2 * width, (prof.ci_low, prof.ci_high, lo, hi)


def test_uninformed_parameter_profile_is_flat_and_called_non_identifiable(fitted):
    objective, fit = fitted
    prof = profile(objective, fit, "ec50_nk", points=3)
    assert np.nanmax(np.abs(prof.delta)) < 0.05 * CHI2_95
    assert not prof.identifiable
    assert "non-identifiable" in prof.verdict() and "flat" in prof.verdict()
    assert not np.isfinite(prof.se)  # the Hessian is singular too: the covariance step failed


def test_unknown_parameter_is_named(fitted):
    objective, fit = fitted
    with pytest.raises(SpecError, match="cannot profile 'ka'"):
        profile(objective, fit, "ka")


def test_profile_figure_has_one_panel_per_parameter_and_the_threshold(fitted):
    from il2treg.fit.profile import Profile
    from il2treg.plots import plot_profiles

    values = np.linspace(-1, 1, 5)
    a = Profile("a", values, 9 * values**2, 0.0, 1 / 3, -0.65, 0.65, np.ones(5, bool), np.zeros((5, 2)))
    b = Profile("b", values, 0 * values, 0.0, float("nan"), float("nan"), float("nan"), np.ones(5, bool), np.zeros((5, 2)))
    fig = plot_profiles([a, b])
    axes = fig.axes
    assert len(axes) == 2
    assert any(np.allclose(line.get_ydata(), CHI2_95) for line in axes[0].get_lines())
    assert "not identifiable" in axes[1].get_title()
    np.testing.assert_allclose(axes[0].get_lines()[0].get_ydata(), 9 * values**2)
