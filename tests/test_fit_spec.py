"""Specification of fit files: every bad fit.toml is one clear error, raised before any computation."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

import il2treg.fit.estimators
import il2treg.fit.run
from conftest import run_cli
from il2treg.errors import InputError, SpecError
from il2treg.fit.spec import read_fit_spec

DATA = """\
ID,TIME,EVID,AMT,DVID,DV,WT,ARM
1,0,0,,treg_per_uL,30.1,64,IL2
1,0,0,,cd25_treg_rel,1.0,64,IL2
1,0,1,1500000,,,64,IL2
1,7,0,,treg_per_uL,60.5,64,IL2
1,7,0,,cd25_treg_rel,1.3,64,IL2
2,0,0,,treg_per_uL,25.0,80,IL2
2,0,0,,cd25_treg_rel,1.0,80,IL2
2,0,1,1500000,,,80,IL2
2,7,0,,treg_per_uL,41.2,80,IL2
2,7,0,,cd25_treg_rel,1.2,80,IL2
"""

GOOD = """\
model = "il2_treg_sledai"
data = "data.csv"

[parameters.emax_treg]
initial = 4.0
[parameters.treg0]
cv_percent = 40
[parameters.kout_treg]
estimate = false
initial = 0.1

[error.treg_per_uL]
kind = "proportional"
sigma_prop = 0.12
[error.cd25_treg_rel]
kind = "proportional"
estimate = []
"""


@pytest.fixture()
def fit_dir(tmp_path):
    folder = tmp_path / "fits" / "tiny"
    folder.mkdir(parents=True)
    (folder / "data.csv").write_text(DATA)
    return folder


def write(folder, text: str):
    path = folder / "fit.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture(autouse=True)
def no_computation(monkeypatch):
    """Any attempt to start estimating fails the test: validation must come first."""

    def forbidden(*args, **kwargs):
        raise AssertionError("computation started")

    monkeypatch.setattr(il2treg.fit.estimators, "fit_population", forbidden)
    monkeypatch.setattr(il2treg.fit.estimators, "fit_saem", forbidden)
    monkeypatch.setattr(il2treg.fit.spec.FitSpec, "problem", forbidden)  # the first step of compute_fit


def test_a_good_spec_names_what_is_estimated(fit_dir):
    spec = read_fit_spec(write(fit_dir, GOOD))
    assert spec.name == "tiny"  # the folder's name
    assert spec.fixed == ("emax_treg", "treg0")
    assert spec.random == ("treg0",)
    assert spec.sigmas == (("treg_per_uL", "prop"),)
    assert spec.dataset.n_subjects == 2
    typical = spec.model.typical()
    assert float(typical["emax_treg"]) == 4.0
    assert float(typical["kout_treg"]) == pytest.approx(0.1)  # fixed at its `initial`
    assert spec.optimiser.max_iter == 200 and spec.sri4.bilag_pga_keep == 0.956
    residual = spec.residual_model()
    assert float(residual.sigma_prop[2]) == 0.12 and residual.kinds[2] == "proportional"
    assert spec.text == (fit_dir / "fit.toml").read_text()


def test_units_of_initial_values_are_those_of_the_model_file(fit_dir):
    spec = read_fit_spec(write(fit_dir, GOOD + "[parameters.ka]\ninitial = 0.3\n"))
    assert float(spec.model.typical()["ka"]) == pytest.approx(0.3 * 24)  # 1/h in the file, 1/day inside


def test_ignored_observation_types_are_masked_not_fitted(fit_dir):
    text = GOOD.replace('[error.cd25_treg_rel]\nkind = "proportional"\nestimate = []\n', "").replace(
        'data = "data.csv"', 'data = "data.csv"\nignore_dvids = ["cd25_treg_rel"]'
    )
    spec = read_fit_spec(write(fit_dir, text))
    assert spec.dataset.observed_names() == ("treg_per_uL",)
    assert int(spec.dataset.obs_mask.sum()) == 4


def test_covariate_effects_are_read(fit_dir):
    spec = read_fit_spec(write(fit_dir, GOOD + '[[covariates]]\nparameter = "treg0"\ncovariate = "WT"\nmodel = "power"\nreference = 70\n'))
    (entry,) = spec.covariates
    assert entry.effect.name == "beta_treg0_WT" and entry.effect.reference == 70.0 and entry.initial == 0.0


def _replace(old: str, new: str):
    return lambda text: text.replace(old, new)


def _append(extra: str):
    return lambda text: text + extra


BAD = [
    ("unknown-parameter", _append("[parameters.emax_treggs]\n"),
     "{path}: [parameters.emax_treggs]: unknown parameter 'emax_treggs' of model 'il2_treg_sledai'. Fix: use one of {names}."),
    ("unknown-model", _replace('model = "il2_treg_sledai"', 'model = "il2_treg_sledia"'),
     "{path}: unknown model 'il2_treg_sledia'. Fix: use one of {models} or a path to a .toml file."),
    ("missing-model-file", _replace('model = "il2_treg_sledai"', 'model = "models/mine.toml"'),
     "{path}: model file '{folder}/models/mine.toml' does not exist. Fix: give a path relative to the fit file, or a model name."),
    ("missing-data-file", _replace('data = "data.csv"', 'data = "nodata.csv"'),
     "{path}: data file '{folder}/nodata.csv' does not exist. Fix: give a CSV path relative to the fit file, or il2treg:<name> for a packaged dataset."),
    ("unknown-packaged-dataset", _replace('data = "data.csv"', 'data = "il2treg:lupil3"'),
     "{path}: unknown packaged dataset 'il2treg:lupil3'. Fix: use one of il2treg:lupil2_virtual, or a CSV path."),
    ("initial-outside-bounds", _replace("initial = 4.0", "initial = 40.0"),
     ("{path}: [parameters.emax_treg]: initial 40 1 is outside the bounds [0.5, 30] 1 of 'emax_treg'. "
     "Fix: choose an initial value inside the bounds, or widen them in the model file.")),
    ("initial-outside-bounds-in-file-units", _append("[parameters.ka]\ninitial = 2.0\n"),
     ("{path}: [parameters.ka]: initial 2 1/h is outside the bounds [0.05, 1] 1/h of 'ka'. "
     "Fix: choose an initial value inside the bounds, or widen them in the model file.")),
    ("logit-start-on-a-bound", _append("[parameters.F]\ninitial = 1.0\n"),
     ("{path}: [parameters.F]: 'F' is estimated on the logit scale and needs a start strictly inside its bounds, got 1 1. "
     "Fix: set `initial` inside the bounds.")),
    ("random-effect-without-log-transform", _append("[parameters.emax_tconv]\ncv_percent = 30\n"),
     ("{path}: [parameters.emax_tconv]: a random effect is log-normal and needs a parameter with transform \"log\"; 'emax_tconv' has "
     "'identity'. Fix: remove cv_percent, or set transform = \"log\" in the model file.")),
    ("estimated-sigma-without-observations", _append('[error.sledai]\nkind = "ordinal"\nsigma_add = 1.5\n'),
     ("{path}: [error.sledai] estimates sigma_add but the data (data.csv) have no 'sledai' observation. "
     "Fix: set estimate = [] or remove [error.sledai], or add sledai data.")),
    ("disease-parameter-without-sledai", _append("[parameters.imax]\n"),
     ("{path}: [parameters.imax] is estimated but acts only on 'sledai', which the data (data.csv) do not observe. "
     "Fix: add sledai data, or set estimate = false and remove cv_percent (and iov_cv_percent).")),
    ("observed-type-without-error-model", _replace('[error.cd25_treg_rel]\nkind = "proportional"\nestimate = []\n', ""),
     ("{path}: the data (data.csv) observe 'cd25_treg_rel' but the fit has no [error.cd25_treg_rel] table. "
     "Fix: add [error.cd25_treg_rel] with its kind, or list 'cd25_treg_rel' in ignore_dvids.")),
    ("unknown-top-level-key", lambda t: "algorithm = \"saem\"\n" + t,
     "{path}: unknown top-level key 'algorithm'. Fix: use only name, description, model, data, dvids, time_unit, drop, occasion, labels, ignore_dvids, priors, parameters, "
     "omega_block, covariates, error, optimiser, nuts, saem, sri4, summaries."),
    ("unknown-parameter-key", _replace("initial = 4.0", "inital = 4.0"),
     "{path}: [parameters.emax_treg]: unknown key 'inital'. Fix: use only initial, estimate, cv_percent, iov_cv_percent."),
    ("unknown-error-key", _replace("sigma_prop = 0.12", "sigma = 0.12"),
     "{path}: [error.treg_per_uL]: unknown key 'sigma'. Fix: use only kind, sigma_add, sigma_prop, estimate, score_step."),
    ("unknown-optimiser-key", _append("[optimiser]\nmaxiter = 5\n"),
     "{path}: [optimiser]: unknown key 'maxiter'. Fix: use only max_iter, ftol, gtol, covariance, covariance_matrix, curvature, interaction."),
    ("unknown-error-kind", _replace('kind = "proportional"\nsigma_prop = 0.12', 'kind = "poisson"\nsigma_prop = 0.12'),
     "{path}: [error.treg_per_uL]: kind must be one of additive, proportional, combined, log, ordinal, got 'poisson'."),
    ("sigma-the-kind-does-not-use", _replace("sigma_prop = 0.12", "sigma_prop = 0.12\nsigma_add = 1.0"),
     "{path}: [error.treg_per_uL]: kind 'proportional' has no sigma_add. Fix: remove it, or give only sigma_prop."),
    ("unknown-observation-type", _append('[error.il6_pM]\nkind = "log"\n'),
     ("{path}: [error.il6_pM]: unknown observation type 'il6_pM': not an observable of the model. Fix: use one of il2_pM, treg_pct_cd4, treg_per_uL, tconv_per_uL, "
     "nk56bright_per_uL, cd25_treg_rel, sledai.")),
    ("unknown-covariate-column", _append('[[covariates]]\nparameter = "treg0"\ncovariate = "BMI"\nmodel = "power"\nreference = 25\n'),
     "{path}: [[covariates]] #1: the data have no covariate column 'BMI'. Fix: use one of the data's covariates (WT, ARM)."),
    ("text-covariate", _append('[[covariates]]\nparameter = "treg0"\ncovariate = "ARM"\nmodel = "exp"\nreference = 0\n'),
     "{path}: [[covariates]] #1: covariate 'ARM' is text; an effect needs a numeric column. Fix: code it as numbers (e.g. 0/1)."),
    ("negative-max-iter", _append("[optimiser]\nmax_iter = -1\n"),
     "{path}: [optimiser]: max_iter must be an integer >= 0, got -1."),
]


@pytest.mark.parametrize("edit, message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spec_is_one_clear_error_before_any_computation(fit_dir, edit, message):
    path = write(fit_dir, edit(GOOD))
    names = ", ".join(il2treg.load_model().parameter_names)
    with pytest.raises(SpecError) as info:
        read_fit_spec(path)
    models = _known_models(str(info.value))
    assert str(info.value) == message.format(path=path, folder=fit_dir, names=names, models=models)
    assert "\n" not in str(info.value)


def _known_models(message: str) -> str:
    """The list of model names an unknown-model message offers (it grows with models/)."""
    if "unknown model" not in message:
        return ""
    known = message.split("Fix: use one of ", 1)[1].removesuffix(" or a path to a .toml file.")
    assert "il2_treg_sledai" in known.split(", ")
    return known


def test_missing_fit_file_is_named(tmp_path):
    with pytest.raises(SpecError, match=r"fit file '.*nowhere.toml' does not exist\. Fix: check the path"):
        read_fit_spec(tmp_path / "nowhere.toml")


def test_invalid_toml_is_reported_with_its_file(fit_dir):
    path = write(fit_dir, GOOD + "[parameters.ka\n")
    with pytest.raises(SpecError, match=r"fit.toml: not valid TOML .* Fix: correct the syntax\."):
        read_fit_spec(path)


def test_run_fit_refuses_an_existing_folder_before_computing(fit_dir):
    out = fit_dir / "results"
    out.mkdir()
    (out / "keep.txt").write_text("earlier results")
    with pytest.raises(InputError, match=r"already exists. Fix: choose another --out or pass --force"):
        il2treg.fit.run.run_fit(write(fit_dir, GOOD), out)
    assert (out / "keep.txt").read_text() == "earlier results"


def test_run_fit_validates_a_spec_path_before_computing(fit_dir):
    with pytest.raises(SpecError, match="unknown parameter 'nope'"):
        il2treg.fit.run.run_fit(write(fit_dir, GOOD + "[parameters.nope]\n"), fit_dir / "out")
    assert not (fit_dir / "out").exists()


def test_cli_bad_spec_is_one_line_and_exit_2(monkeypatch, capsys, fit_dir):
    path = write(fit_dir, GOOD.replace("initial = 4.0", "initial = 40.0"))
    code, _, err = run_cli(monkeypatch, capsys, "fit", str(path), "--out", str(fit_dir / "out"))
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("il2treg: error: ") and "outside the bounds" in err
    assert not (fit_dir / "out").exists()


def test_cli_existing_results_folder_is_one_line_and_exit_2(monkeypatch, capsys, fit_dir):
    out = fit_dir / "out"
    out.mkdir()
    code, _, err = run_cli(monkeypatch, capsys, "fit", str(write(fit_dir, GOOD)), "--out", str(out))
    assert code == 2
    assert err.count("\n") == 1 and "already exists" in err and "--force" in err


def test_packaged_datasets_are_found_by_name(fit_dir, monkeypatch):
    import il2treg.datasets
    from il2treg.data import read_dataset

    monkeypatch.setattr(il2treg.datasets, "lupil2_virtual", lambda: read_dataset(fit_dir / "data.csv"), raising=False)
    spec = read_fit_spec(write(fit_dir, GOOD.replace('data = "data.csv"', 'data = "il2treg:lupil2_virtual"')))
    assert spec.dataset.n_subjects == 2 and spec.data_source == "il2treg:lupil2_virtual"
    monkeypatch.delattr(il2treg.datasets, "lupil2_virtual")
    with pytest.raises(SpecError, match=r"packaged dataset 'il2treg:lupil2_virtual' is not in this installation of il2treg\. Fix:"):
        read_fit_spec(fit_dir / "fit.toml")


def test_invalid_data_file_names_the_fit_the_file_and_the_row(fit_dir):
    from il2treg.errors import DataError

    (fit_dir / "data.csv").write_text(DATA.replace("1,7,0,,treg_per_uL,60.5", "1,7,0,,treg_per_uL,-"))
    with pytest.raises(DataError) as info:
        read_fit_spec(write(fit_dir, GOOD))
    assert str(info.value).startswith(f"{fit_dir / 'fit.toml'}: data file '{fit_dir / 'data.csv'}': DV must be a finite number; row 4 has '-'.")
    assert info.value.row == 4 and info.value.column == "DV"


def test_nuts_table_is_validated_like_the_others(tmp_path):
    text = Path("fits/lupil2_nuts/fit.toml").read_text().replace("chains = 4", "chains = 0")
    (tmp_path / "fit.toml").write_text(text)
    (tmp_path / "cohort.csv").write_text(Path("fits/lupil2_nuts/cohort.csv").read_text())
    with pytest.raises(SpecError, match=r"\[nuts\] chains must be a whole number >= 1"):
        read_fit_spec(tmp_path / "fit.toml")
    (tmp_path / "fit.toml").write_text(Path("fits/lupil2_nuts/fit.toml").read_text().replace("chains = 4", "chians = 4"))
    with pytest.raises(SpecError, match="chians"):
        read_fit_spec(tmp_path / "fit.toml")


# ----------------------------------------------------------------------------- NONMEM datasets and model covariates

PHENO = Path(__file__).resolve().parents[1] / "fits" / "pheno"


def _pheno_spec(tmp_path, edit=lambda text: text, data: str | None = None):
    import shutil

    for name in ("pheno.toml", "pheno.dta"):
        shutil.copy(PHENO / name, tmp_path / name)
    if data is not None:
        (tmp_path / "pheno.dta").write_text(data)
    path = tmp_path / "fit.toml"
    path.write_text(edit((PHENO / "fit.toml").read_text()))
    return path


def test_pheno_fit_file_reads_hours_and_drops_columns(tmp_path):
    spec = read_fit_spec(_pheno_spec(tmp_path))
    assert spec.dataset.n_subjects == 59 and int(spec.dataset.obs_mask.sum()) == 155
    assert float(spec.dataset.obs_time.max()) == pytest.approx(389.8 / 24)  # pheno.dta's last sample, 389.8 h
    assert list(spec.dataset.covariates) == ["WGT", "APGR"]
    assert (spec.optimiser.curvature, spec.optimiser.covariance_matrix) == ("expected", "sandwich")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('time_unit = "h"', 'time_unit = "hours"'), r"time_unit must be one of 'day', 'h' \(the unit of the data's TIME\), got 'hours'"),
        (lambda t: t.replace('drop = ["FA1", "FA2"]', 'drop = "FA1"'), r"`drop` must be a list of the data's column names"),
        (lambda t: t.replace('drop = ["FA1", "FA2"]', 'drop = ["FA1", "WGT"]'), r"the model reads the covariate 'WGT' per patient .* have no numeric column 'WGT' \(their covariates: APGR, FA2\)"),
        (lambda t: t.replace('curvature = "expected"', 'curvature = "fisher"'), r"\[optimiser\]: curvature must be one of 'observed', 'expected', got 'fisher'"),
        (lambda t: t.replace('covariance_matrix = "sandwich"', 'covariance_matrix = "S"'), r"covariance_matrix must be one of 'hessian', 'sandwich', got 'S'"),
        (lambda t: t + "\n[parameters.WGT]\n", r"\[parameters.WGT\]: 'WGT' is a covariate of the model, read per patient from the data column 'WGT'"),
        (lambda t: t.replace('data = "pheno.dta"', 'data = "il2treg:lupil2_virtual"'), r"time_unit and drop apply to a data file"),
        (lambda t: t.replace('time_unit = "h"', 'time_unit = ["h"]'), r"time_unit must be one of 'day', 'h'"),
        (lambda t: 'priors = "model"\n' + t, r"covariance_matrix = \"sandwich\" with priors = 'model'"),
        (lambda t: t.replace('omega_POP_VC = "IIV_VC"', 'omega_WGT = "IIV_VC"'), r"labels.omega_WGT: the fit has no estimate 'omega_WGT'. Fix: use one of POP_CL, POP_VC"),
        (lambda t: t.replace('omega_POP_VC = "IIV_VC"', 'omega_POP_VC = "IIV_CL"'), r"labels.omega_POP_VC and labels.omega_POP_CL are both 'IIV_CL'"),
        (lambda t: t.replace('curvature = "expected"', 'curvature = "expected"\ninteraction = 1'), r"\[optimiser\]: interaction must be true or false, got 1"),
        (lambda t: t + '\n[[omega_block]]\nparameters = ["POP_CL"]\n', r"\[\[omega_block\]\] #1: parameters must list two or more parameters with a random effect"),
        (lambda t: t + '\n[[omega_block]]\nparameters = ["POP_CL", "COVAPGR"]\n', r"\[\[omega_block\]\] #1: 'COVAPGR' has no random effect. Fix: give it cv_percent in \[parameters.COVAPGR\]"),
        (lambda t: t + '\n[[omega_block]]\nparameters = ["POP_CL", "POP_VC"]\n[[omega_block]]\nparameters = ["POP_VC", "POP_CL"]\n',
         r"\[\[omega_block\]\] #2: 'POP_VC' is already in omega block #1"),
        (lambda t: t + '\n[[omega_block]]\nparameters = ["POP_CL", "POP_VC"]\ncorrelation = 1.0\n', r"correlation 1 does not give a positive definite block of 2. Fix: choose a value in \(-1, 1\)"),
        (lambda t: t + '\n[[omega_block]]\nparameters = ["POP_CL", "POP_VC"]\ncorr = 0.2\n', r"\[\[omega_block\]\] #1: unknown key 'corr'. Fix: use only parameters, correlation"),
        (lambda t: t + '\n[omega_block]\nparameters = ["POP_CL", "POP_VC"]\n', r"`omega_block` must be \[\[omega_block\]\] tables"),
        (lambda t: t.replace('omega_POP_VC = "IIV_VC"', 'omega_POP_VC = "IIV_VC"\ncorr_POP_CL_POP_VC = "CORR"'), r"labels.corr_POP_CL_POP_VC: the fit has no estimate 'corr_POP_CL_POP_VC'"),
        (lambda t: t.replace("cv_percent = 17.7333", "cv_percent = 17.7333\niov_cv_percent = 10"),
         r"inter-occasion variability \(iov_cv_percent\) needs a numeric occasion column, but the data \(pheno.dta\) have no numeric column 'OCC' \(their covariates: WGT, APGR\)"),
        (lambda t: 'occasion = "APGR"\n' + t, r"`occasion` names the occasion column of inter-occasion variability, but no parameter has iov_cv_percent"),
        (lambda t: t.replace("cv_percent = 17.7333", "cv_percent = 17.7333\niov_cv_percent = 0"), r"\[parameters.POP_CL\]: iov_cv_percent must be > 0"),
        (lambda t: t.replace("[parameters.COVAPGR]", "[parameters.COVAPGR]\niov_cv_percent = 10"), r"needs a parameter with transform \"log\"; 'COVAPGR' has 'identity'. Fix: remove iov_cv_percent"),
        (lambda t: t.replace('omega_POP_VC = "IIV_VC"', 'omega_POP_VC = "IIV_VC"\nomega_iov_POP_CL = "IOV_CL"'), r"labels.omega_iov_POP_CL: the fit has no estimate 'omega_iov_POP_CL'"),
    ],
    ids=["time-unit", "drop-not-list", "drop-a-model-covariate", "curvature", "covariance-matrix", "estimated-covariate", "packaged-data", "time-unit-list", "sandwich-priors",
         "label-unknown", "label-twice", "interaction-not-bool", "block-of-one", "block-without-random-effect", "block-twice", "block-correlation", "block-key", "block-not-array",
         "label-correlation-without-block", "iov-without-occasions", "occasion-without-iov", "iov-cv-zero", "iov-on-identity", "label-iov-without-iov"],
)
def test_bad_nonmem_keys_are_one_clear_error(tmp_path, edit, message):
    with pytest.raises(InputError, match=message):
        read_fit_spec(_pheno_spec(tmp_path, edit))


def test_an_omega_block_is_read_with_its_initial_correlation(tmp_path):
    from il2treg.fit.spec import OmegaBlock

    block = '[[omega_block]]\nparameters = ["POP_VC", "POP_CL"]\ncorrelation = 0.3\n\n'
    spec = read_fit_spec(_pheno_spec(tmp_path, lambda t: t.replace("[optimiser]", block + "[optimiser]")))
    assert spec.omega_blocks == (OmegaBlock(("POP_VC", "POP_CL"), 0.3),)
    assert read_fit_spec(_pheno_spec(tmp_path)).omega_blocks == ()


def test_foce_without_interaction_is_an_optimiser_setting(tmp_path):
    spec = read_fit_spec(_pheno_spec(tmp_path, lambda t: t.replace('curvature = "expected"', 'curvature = "expected"\ninteraction = false')))
    assert spec.optimiser.interaction is False
    assert read_fit_spec(_pheno_spec(tmp_path)).optimiser.interaction is True


def test_model_covariates_are_converted_to_internal_units_and_checked_against_bounds(tmp_path):
    """A covariate in weeks is held in days like the model's own value (x7); a value outside
    the model's bounds (weight in grams, say) is refused, naming the subject."""
    from il2treg.fit.problem import make_problem, problem_patients

    model = (PHENO / "pheno.toml").read_text() + (
        '\n[parameters.AGE]\nvalue = 1\nunit = "week"\nbounds = [0, 52]\ntransform = "identity"\n'
        'cv_percent = 0\ngroup = "covariate"\nsource = "covariate: the data"\n'
    )
    lines = (PHENO / "pheno.dta").read_text().splitlines()
    data = "\n".join([lines[0] + " AGE"] + [line + f" {int(line.split()[0]) % 5}" for line in lines[1:]]) + "\n"
    path = _pheno_spec(tmp_path, data=data)
    (tmp_path / "pheno.toml").write_text(model)
    spec = read_fit_spec(path)
    problem = make_problem(spec.model, spec.dataset, fixed=spec.fixed, random=spec.random, sigmas=spec.sigmas)
    assert problem.bound == ("WGT", "APGR", "AGE")
    covariates = np.asarray(problem_patients(problem, spec.dataset).covariates)
    np.testing.assert_array_equal(covariates[:, 2], 7.0 * (np.asarray(spec.dataset.ids) % 5))
    np.testing.assert_array_equal(covariates[:, 0], spec.dataset.covariates["WGT"])
    grams = data.replace(" 1.4 ", " 1400 ", 1)  # subject 1's first row... and all its rows
    grams = "\n".join(line.replace(" 1.4 ", " 1400 ") if line.split()[0] == "1" else line for line in grams.splitlines()) + "\n"
    (tmp_path / "pheno.dta").write_text(grams)
    spec = read_fit_spec(path)
    with pytest.raises(SpecError, match=r"covariate 'WGT' of subject 1 is 1400 kg, outside the model's bounds \[0.1, 10\] kg"):
        make_problem(spec.model, spec.dataset, fixed=spec.fixed, random=spec.random, sigmas=spec.sigmas)


def test_a_missing_model_covariate_is_found_when_the_fit_file_is_read(tmp_path):
    data = (PHENO / "pheno.dta").read_text().replace(" APGR ", " APGAR ", 1)
    with pytest.raises(SpecError, match=r"fit.toml: the model reads the covariate 'APGR' per patient from the data, but the data \(pheno.dta\) have no numeric column 'APGR'"):
        read_fit_spec(_pheno_spec(tmp_path, data=data))


def test_a_nonmem_dataset_with_addl_cmt_and_hours_is_the_same_data_written_out_dose_by_dose_in_days(tmp_path):
    """The issue's dataset criterion, part 1 (ADDL/II, CMT, hours; RATE and SS in the next test):
    pheno.dta folded into ADDL/II rows with a CMT column, in hours, and the same data written out
    one dose per row in days, read through their fit files, give the same arrays, so every fit
    of them is the same fit."""
    import shutil

    from test_data import _compress_doses

    folded = _compress_doses((PHENO / "pheno.dta").read_text())
    lines = folded.splitlines()
    with_cmt = "\n".join([lines[0] + " CMT"] + [line + " 1" for line in lines[1:]]) + "\n"
    a = read_fit_spec(_pheno_spec(tmp_path, data=with_cmt))
    assert "ADDL" in with_cmt.splitlines()[0] and sum(int(line.split()[-3]) > 0 for line in with_cmt.splitlines()[1:]) >= 100
    days = tmp_path / "days"
    days.mkdir()
    shutil.copy(PHENO / "pheno.toml", days / "pheno.toml")
    frame = a.dataset.to_frame()
    frame.to_csv(days / "pheno_days.csv", index=False)
    (days / "fit.toml").write_text((PHENO / "fit.toml").read_text().replace('data = "pheno.dta"', 'data = "pheno_days.csv"')
                                   .replace('time_unit = "h"', 'time_unit = "day"').replace('drop = ["FA1", "FA2"]', "drop = []"))  # fmt: skip
    b = read_fit_spec(days / "fit.toml")
    assert int((b.dataset.dose_row > 0).sum()) == 589  # pheno.dta's 589 doses, one row each
    for field in ("obs_time", "obs_value", "obs_mask", "dose_time", "dose_amount"):
        np.testing.assert_array_equal(getattr(a.dataset, field), getattr(b.dataset, field), err_msg=field)
    np.testing.assert_array_equal(a.dataset.covariates["WGT"], b.dataset.covariates["WGT"])

