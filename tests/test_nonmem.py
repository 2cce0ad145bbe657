"""il2treg against NONMEM 7 on NONMEM's phenobarbital example (fits/pheno), and the .ext reader."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from il2treg.errors import InputError
from il2treg.nonmem import compare_file, read_ext

PHENO = Path(__file__).resolve().parents[1] / "fits" / "pheno"


@pytest.fixture(scope="module")
def pheno_fit(tmp_path_factory):
    from il2treg.fit import run_fit

    return run_fit(PHENO / "fit.toml", tmp_path_factory.mktemp("pheno") / "results", figures=False)


def test_pheno_reproduces_nonmem_foce_i(pheno_fit):
    """The issue's criteria: OFV within 0.01 of NONMEM's (both without n log 2 pi), every theta,
    omega^2 and sigma^2 within 0.5%, every SE within 5% of pheno.ext's SE row (the sandwich)."""
    table = compare_file(pheno_fit, PHENO / "nonmem.toml").set_index("parameter")
    assert table.loc["OFV", "nonmem"] == 586.27605628520962
    assert abs(table.loc["OFV", "relative_difference"]) < 0.01
    params = table.drop(index="OFV")
    assert list(params.index) == ["POP_CL", "POP_VC", "COVAPGR", "IIV_CL", "IIV_VC", "SIGMA"]
    assert np.all(np.abs(params["relative_difference"]) < 0.005), params
    assert np.all(np.abs(params["se_relative_difference"]) < 0.05), params
    # il2treg's own OFV carries the constant: 155 observations x log(2 pi) = 284.87094529 (pheno.lst)
    assert pheno_fit.n_observations == 155
    assert pheno_fit.ofv - table.loc["OFV", "il2treg"] == pytest.approx(284.87094529344853, abs=1e-9)


def test_pheno_standard_errors_are_the_sandwich_not_the_hessian(pheno_fit):
    """pheno.ext's SE row is NONMEM's default covariance step, R^-1 S R^-1: the fit file asks for
    the sandwich; the Hessian-based 2 R^-1 differs from that row by more than 5% somewhere."""
    from il2treg.fit.estimate import estimate_covariance
    from il2treg.fit.population import Objective
    from il2treg.fit.problem import problem_patients
    from il2treg.fit.spec import read_fit_spec

    assert 'covariance_matrix = "sandwich"' in pheno_fit.spec_text
    spec = read_fit_spec(PHENO / "fit.toml")
    problem = spec.problem()
    objective = Objective(problem, problem_patients(problem, spec.dataset), spec.residual_model())
    psi = np.asarray(pheno_fit.psi)
    eta = np.asarray(pheno_fit.individual.filter(like="ETA_").to_numpy(), dtype=float)
    include = np.ones(eta.shape[0], dtype=bool)
    inner = objective.inner(psi, eta)
    sandwich = np.asarray(estimate_covariance(objective, psi, inner, include, kind="sandwich"))
    hessian = np.asarray(estimate_covariance(objective, psi, inner, include, kind="hessian"))
    np.testing.assert_allclose(sandwich, np.asarray(pheno_fit.covariance), rtol=1e-6)
    ratio = np.sqrt(np.diag(hessian) / np.diag(sandwich))
    assert np.max(np.abs(ratio - 1.0)) > 0.05, ratio


def test_pheno_results_carry_nonmems_labels(pheno_fit):
    """fit.toml's [labels] name the estimates as pheno.mod does, in parameters.csv and the report."""
    from il2treg.fit.result import report

    labels = pheno_fit.estimates.set_index("parameter")["label"]
    assert labels.to_dict() == {"POP_CL": "POP_CL", "POP_VC": "POP_VC", "COVAPGR": "COVAPGR", "omega_POP_CL": "IIV_CL",
                                "omega_POP_VC": "IIV_VC", "sigma_prop_conc": "SIGMA"}  # fmt: skip
    text = report(pheno_fit)
    assert "| SIGMA (sigma_prop_conc; σ² 0.01325) | 0.1151 |" in text and "| 17.3 (IIV_CL: ω² 0.02938) |" in text
    assert "FOCE-I (NONMEM's: expected curvature)" in text and "the sandwich R^-1 S R^-1" in text


def test_read_ext_reads_the_final_and_se_rows():
    ext = read_ext(PHENO / "pheno.ext")
    assert ext.method == "First Order Conditional Estimation with Interaction"
    assert ext.ofv == 586.27605628520962
    assert ext.estimates["THETA1"] == 4.69555e-03 and ext.estimates["OMEGA(2,2)"] == 2.79060e-02
    assert ext.standard_errors["SIGMA(1,1)"] == 2.27991e-03


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "has no 'TABLE NO.' header"),
        (" ITERATION THETA1 OBJ\n", "expected a 'TABLE NO.' header first"),
        ("TABLE NO. 1: FOCE: x\n ITERATION THETA1 OBJ\n 0 1.0\n", "2 numbers, but the column line names 2 columns"),
        ("TABLE NO. 1: FOCE: x\n ITERATION THETA1 OBJ\n 0 1.0 abc\n", "is not a row of numbers"),
        ("TABLE NO. 1: FOCE: x\n ITERATION THETA1 OBJ\n 0 1.0 5.0\n", "has no row of final estimates"),
    ],
    ids=["empty", "no-header", "short-row", "text-row", "unfinished"],
)
def test_malformed_ext_is_a_clear_error(tmp_path, text, message):
    path = tmp_path / "run.ext"
    path.write_text(text)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_ext(path)
    with pytest.raises(InputError, match="not found"):
        read_ext(tmp_path / "missing.ext")


def test_ext_step_out_of_range_names_the_steps():
    with pytest.raises(InputError, match=r"has 1 estimation step\(s\); there is no step 3"):
        read_ext(PHENO / "pheno.ext", table=3)
    assert math.isfinite(read_ext(PHENO / "pheno.ext", table=0).ofv)


def test_a_correlation_is_compared_with_the_correlation_of_nonmems_omega_block(tmp_path):
    """NONMEM reports OMEGA(2,1) as a covariance: a corr_* estimate is compared with
    OMEGA(2,1) / sqrt(OMEGA(1,1) OMEGA(2,2)), without an SE on NONMEM's side."""
    import types

    import pandas as pd

    from il2treg.nonmem import compare

    ext = tmp_path / "block.ext"
    ext.write_text("TABLE NO. 1: First Order Conditional Estimation with Interaction: Goal Function=MINIMUM VALUE OF OBJECTIVE FUNCTION\n"
                   " ITERATION    OMEGA(1,1)   OMEGA(2,1)   OMEGA(2,2)   OBJ\n"
                   " -1000000000  0.09  0.036  0.04  100.0\n")  # fmt: skip
    estimates = pd.DataFrame({"parameter": ["corr_CL_V"], "estimate": [0.612], "se": [0.05]})
    fit = types.SimpleNamespace(estimates=estimates, ofv=100.0, n_observations=0)
    table = compare(fit, read_ext(ext), {"corr_CL_V": ("CORR", "OMEGA(2,1)")}).set_index("parameter")
    assert table.loc["CORR", "nonmem"] == pytest.approx(0.036 / math.sqrt(0.09 * 0.04), rel=1e-15)  # 0.6
    assert table.loc["CORR", "relative_difference"] == pytest.approx(0.02, rel=1e-12)
    assert math.isnan(table.loc["CORR", "nonmem_se"])
    with pytest.raises(InputError, match=r"'OMEGA\(1,1\)', which is not an off-diagonal OMEGA\(i,j\)"):
        compare(fit, read_ext(ext), {"corr_CL_V": ("CORR", "OMEGA(1,1)")})
