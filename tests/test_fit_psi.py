"""ψ by name: the layout that ravels it for the optimisers (no computation: numbers only)."""

from __future__ import annotations

import doctest
from pathlib import Path

import numpy as np
import pytest

import il2treg.fit.psi
from il2treg.fit.problem import CovariateEffect, make_problem
from il2treg.fit.psi import PARTS, PsiLayout
from il2treg.model import load_model


def test_module_examples_hold():
    assert doctest.testmod(il2treg.fit.psi, raise_on_error=False).failed == 0


@pytest.fixture(scope="module")
def every_part():
    """A problem with each part of psi: fixed effects, a covariate coefficient, an omega block,
    inter-occasion variability and a sigma."""
    from test_fit_population import iov_data

    model = load_model(Path(__file__).resolve().parents[1] / "models" / "pk_1cmt_iv.toml")
    return make_problem(model, iov_data([2, 3], weight=True), fixed=("CL", "V"), random=("CL", "V"), sigmas=(("conc", "prop"),),
                        residual_kinds={"conc": "proportional"}, blocks=(("CL", "V"),), iov=("CL",), occasion="OCC",
                        covariates=(CovariateEffect("CL", "WT", "power", 70.0),))  # fmt: skip


def test_layout_names_each_part_in_the_order_of_psi_names(every_part):
    """Each part's entries carry the names of that part, in psi_names' order; the parts tile the vector."""
    problem = every_part
    layout = problem.layout
    assert layout.sizes == (2, 1, 2, 1, 1, 1) and layout.size == len(problem.psi_names) and layout.structural == 3
    names = np.asarray(problem.psi_names)
    assert list(names[layout.mask("u")]) == ["CL", "V"]
    assert list(names[layout.mask("beta")]) == ["beta_CL_WT"]
    assert list(names[layout.mask("log_omega")]) == ["omega_CL", "omega_V"]
    assert list(names[layout.mask("corr")]) == ["corr_CL_V"]
    assert list(names[layout.mask("log_omega_iov")]) == ["omega_iov_CL"]
    assert list(names[layout.mask("log_sigma")]) == ["sigma_prop_conc"]
    np.testing.assert_array_equal(sum(layout.mask(p).astype(int) for p in PARTS), np.ones(layout.size))


def test_split_and_ravel_are_inverse_with_batch_axes(every_part):
    problem = every_part
    flat = np.arange(3 * 8.0).reshape(3, 8)
    parts = problem.split(flat)
    np.testing.assert_array_equal(parts.corr, flat[:, 5:6])
    np.testing.assert_array_equal(parts.structural, flat[:, :3])
    np.testing.assert_array_equal(np.asarray(parts.ravel()), flat)
    structural, variance = problem.layout.divide(flat[0])
    np.testing.assert_array_equal(np.asarray(problem.layout.join(structural, variance).ravel()), flat[0])


def test_layout_refuses_a_vector_of_another_length_and_an_unknown_part():
    layout = PsiLayout(fixed=1, beta=0, omega=1, corr=0, omega_iov=0, sigma=1)
    with pytest.raises(ValueError, match="psi has 4 entries, the layout 3"):
        layout.unravel(np.zeros(4))
    with pytest.raises(ValueError, match=r"no part \['omega'\]"):
        layout.filled(omega=1.0)
