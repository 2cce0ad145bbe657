"""The simulated LUPIL-2-like cohort: shipped file, its regeneration, its content, and bad input."""

from __future__ import annotations

import runpy
import time
from importlib import resources
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import il2treg
import il2treg.datasets
from il2treg import trial, units
from il2treg.data import read_dataset
from il2treg.datasets import (
    cohort,
    lupil2_virtual,
    lupil2_virtual_truth,
    simulate_cohort,
)
from il2treg.errors import InputError, SpecError
from il2treg.model import Parameters
from il2treg.regimen import Regimen, stack

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_lupil2_virtual.py"
FILES = ("lupil2_virtual.csv", "lupil2_virtual_truth.json")


@pytest.fixture(scope="module")
def shipped():
    return lupil2_virtual()


@pytest.fixture(scope="module")
def truth():
    return lupil2_virtual_truth()


@pytest.fixture(scope="module")
def design():
    return trial.load_design("lupil2")


def _per_patient(table, column):
    return table.groupby("ID")[column].first()


def _observed(table, dvid, day):
    rows = table[(table["EVID"] == 0) & (table["DVID"] == dvid) & (table["TIME"] == day)]
    return rows.set_index("ID")["DV"]


# ------------------------------------------------------------------ the shipped file


def test_shipped_cohort_loads_and_validates_in_under_a_second():
    start = time.perf_counter()
    table = lupil2_virtual()
    dataset = read_dataset(table)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0
    assert dataset.n_subjects == 100
    assert dataset.excluded == []


def test_shipped_csv_file_validates_with_read_dataset():
    path = resources.files("il2treg.datasets").joinpath("data", "lupil2_virtual.csv")
    with resources.as_file(path) as csv_path:
        assert read_dataset(csv_path).n_subjects == 100


@pytest.mark.slow
def test_script_regenerates_the_shipped_files_byte_for_byte(tmp_path):
    runpy.run_path(str(SCRIPT))["main"](["--out", str(tmp_path)])
    for name in FILES:
        shipped = resources.files("il2treg.datasets").joinpath("data", name).read_bytes()
        assert (tmp_path / name).read_bytes() == shipped, (
            f"{name} differs from its regeneration; if models/ or the package version changed on "
            "purpose, run: python scripts/make_lupil2_virtual.py"
        )


def test_every_output_is_labelled_simulated(shipped, truth):
    assert (shipped["SIMULATED"] == 1).all()
    assert shipped.attrs["description"].startswith("SIMULATED data, not LUPIL-2 patient data")
    assert truth["simulated"] is True
    assert "not LUPIL-2 patient data" in truth["description"]
    assert truth["il2treg_version"] == il2treg.__version__
    assert truth["seed"] == cohort.LUPIL2_VIRTUAL_SEED and truth["n"] == cohort.LUPIL2_VIRTUAL_N


def test_arms_are_one_to_one_as_in_the_design(shipped, design):
    arms = _per_patient(shipped, "ARM").value_counts().to_dict()
    assert arms == {"ILT-101": design.n_per_arm["il2"], "placebo": design.n_per_arm["placebo"]}


def test_both_high_response_sites_are_present_and_flagged(shipped, truth, design):
    site = _per_patient(shipped, "SITE")
    high = _per_patient(shipped, "HIGH_RESPONSE_SITE")
    assert set(site[high == 1]) == {1, 2}
    assert set(site[high == 0]) <= set(range(3, design.n_sites + 1))
    assert [s["SITE"] for s in truth["sites"] if s["high_response"]] == [1, 2]


def test_high_response_sites_raise_the_placebo_sledai_fall(shipped):
    """The site mechanism at work: placebo patients at the two high sites improve more."""
    base, week12 = _observed(shipped, "sledai", 0.0), _observed(shipped, "sledai", 84.0)
    fall = (base - week12).dropna()
    placebo = _per_patient(shipped, "ARM").loc[fall.index] == "placebo"
    high = _per_patient(shipped, "HIGH_RESPONSE_SITE").loc[fall.index] == 1
    assert fall[placebo & high].mean() > fall[placebo & ~high].mean() + 3.0


# ------------------------------------------------------------------ content of the table


def test_doses_follow_each_arm_and_placebo_injections_have_amount_zero(shipped, truth):
    doses = shipped[shipped["EVID"] == 1]
    schedule = np.asarray(il2treg.regimen.lupil2().times)
    for patient in truth["patients"]:
        mine = doses[doses["ID"] == patient["ID"]]
        end = patient["dropout_day"] if patient["dropout_day"] is not None else np.inf
        np.testing.assert_array_equal(mine["TIME"], schedule[schedule < end])
        expected = 1.5e6 if patient["ARM"] == "ILT-101" else 0.0
        assert (mine["AMT"] == expected).all()
    assert doses["DV"].isna().all() and doses["DVID"].isna().all() and (doses["MDV"] == 1).all()


def test_dropouts_have_no_rows_from_their_first_missed_visit(shipped, truth):
    last = shipped.groupby("ID")["TIME"].max()
    dropped = [p for p in truth["patients"] if p["dropout_day"] is not None]
    assert 0 < len(dropped) < len(truth["patients"])
    for patient in truth["patients"]:
        if patient["dropout_day"] is None:
            assert last[patient["ID"]] == 84.0
        else:
            assert last[patient["ID"]] < patient["dropout_day"]


def test_observations_are_at_the_documented_visits(shipped, design):
    obs = shipped[shipped["EVID"] == 0]
    times = obs.groupby("DVID")["TIME"].unique()
    for dvid in cohort.BIOMARKERS:
        assert sorted(times[dvid]) == list(cohort.BIOMARKER_DAYS)
    assert sorted(times["il2_pM"]) == list(cohort.IL2_SAMPLE_DAYS)
    assert sorted(times["sledai"]) == list(design.visit_days)


def test_il2_below_the_lloq_is_censored_at_the_lloq(shipped):
    obs = shipped[shipped["EVID"] == 0]
    censored = obs[obs["CENS"] == 1]
    assert set(censored["DVID"]) == {"il2_pM"}
    assert (censored["DV"] == cohort.IL2_LLOQ_PM).all()
    il2 = obs[obs["DVID"] == "il2_pM"]
    assert (il2[il2["TIME"] == 0.0]["CENS"] == 1).all()  # endogenous IL-2 is below the LLOQ
    post_dose = il2[(il2["TIME"] > 0) & (il2["ID"].map(_per_patient(shipped, "ARM")) == "ILT-101")]
    assert (post_dose["CENS"] == 0).mean() > 0.9
    assert (il2[il2["CENS"] == 0]["DV"] >= cohort.IL2_LLOQ_PM).all()


def test_sledai_is_reported_on_the_score_grid_and_meets_the_entry_criterion(shipped, design):
    sledai = shipped[(shipped["EVID"] == 0) & (shipped["DVID"] == "sledai")]
    assert (sledai["DV"] % design.score_step == 0).all()
    assert (_observed(shipped, "sledai", 0.0) >= design.entry_sledai_min).all()


def test_il2_expands_tregs_and_not_on_placebo(shipped):
    ratio = _observed(shipped, "treg_per_uL", 7.0) / _observed(shipped, "treg_per_uL", 0.0)
    arm = _per_patient(shipped, "ARM")
    assert 1.5 < ratio[arm == "ILT-101"].median() < 2.5
    assert 0.9 < ratio[arm == "placebo"].median() < 1.1


def test_covariates_are_plausible_and_constant_per_patient(shipped):
    assert (shipped.groupby("ID")[["ARM", "SITE", "WT", "BSA"]].nunique() == 1).all().all()
    wt, bsa = _per_patient(shipped, "WT"), _per_patient(shipped, "BSA")
    assert wt.between(40, 140).all() and 55 < wt.median() < 80
    assert bsa.between(1.2, 2.8).all() and 1.6 < bsa.median() < 1.9


def test_truth_parameters_reproduce_the_data_within_assay_noise(shipped, truth, design):
    """Simulating the truth file's patients gives the table's values up to the stated CVs."""
    model = il2treg.load_model(truth["model"])
    patients = truth["patients"]
    n = len(patients)
    params = Parameters(jnp.broadcast_to(model.typical().values, (n, len(model.parameter_names))),
                        model.parameter_names)  # fmt: skip
    params = params.replace(**{
        name: units.to_internal(np.array([p["parameters"][name] for p in patients]), model.spec[name].unit)[0]
        for name in patients[0]["parameters"]
    })  # fmt: skip
    active = il2treg.regimen.lupil2()
    placebo = Regimen(active.times, np.zeros(active.n_doses))
    regimens = stack([active if p["ARM"] == "ILT-101" else placebo for p in patients])
    times = np.unique(np.concatenate([cohort.BIOMARKER_DAYS, cohort.IL2_SAMPLE_DAYS, design.visit_days]))
    sim = il2treg.simulate(model, regimens, times, params)
    obs = shipped[(shipped["EVID"] == 0) & (shipped["CENS"] == 0)]
    for dvid, cv in truth["observation"]["assay_cv_percent"].items():
        rows = obs[obs["DVID"] == dvid]
        predicted = np.asarray(sim[dvid])[rows["ID"] - 1, np.searchsorted(times, rows["TIME"])]
        residual = np.log(rows["DV"].to_numpy() / predicted)
        log_sd = np.sqrt(np.log1p((cv / 100) ** 2))
        assert abs(residual.mean()) < 0.3 * log_sd, dvid
        assert 0.8 * log_sd < residual.std() < 1.2 * log_sd, dvid


# ------------------------------------------------------------------ simulate_cohort


@pytest.mark.slow
def test_higher_emax_treg_gives_higher_day7_tregs_in_the_same_patients(shipped):
    higher = simulate_cohort(cohort.LUPIL2_VIRTUAL_N, cohort.LUPIL2_VIRTUAL_SEED, overrides={"emax_treg": 9.0})
    arm = _per_patient(shipped, "ARM")
    assert (_per_patient(higher, "ARM") == arm).all()
    before, after = _observed(shipped, "treg_per_uL", 7.0), _observed(higher, "treg_per_uL", 7.0)
    il2 = arm[arm == "ILT-101"].index
    assert (after[il2] > before[il2]).all()
    assert after[il2].median() > 1.3 * before[il2].median()
    placebo = arm[arm == "placebo"].index
    np.testing.assert_allclose(after[placebo], before[placebo], rtol=0.01)
    assert (higher["SIMULATED"] == 1).all()
    assert higher.attrs["description"].startswith("SIMULATED")


@pytest.mark.parametrize("n", [1, 0, -3, 2.5, "10", True])
def test_too_few_or_non_integer_patients_are_rejected(n):
    message = r"n must be a whole number >= 2 \(at least one patient per arm\).*Fix: pass an integer >= 2"
    with pytest.raises(InputError, match=message):
        simulate_cohort(n, 0)


def test_negative_seed_is_rejected():
    with pytest.raises(InputError, match=r"seed must be a whole number >= 0.*Fix"):
        simulate_cohort(10, -1)


def test_unknown_override_names_the_parameter_and_the_fix():
    message = r"unknown parameter 'emax_tregs' in overrides \(did you mean 'emax_treg'\?\).*Fix: use one of"
    with pytest.raises(SpecError, match=message):
        simulate_cohort(10, 0, overrides={"emax_tregs": 5.0})


def test_override_outside_its_bounds_is_rejected_with_the_bounds():
    with pytest.raises(SpecError, match=r"parameter 'emax_treg' = 100.0 1 is outside its bounds \[0.5, 30\] 1\. Fix"):
        simulate_cohort(10, 0, overrides={"emax_treg": 100.0})


@pytest.mark.parametrize("value", ["5", float("nan"), None, True])
def test_override_that_is_not_a_finite_number_is_rejected(value):
    with pytest.raises(InputError, match=r"override 'emax_treg' must be a finite number in '1'.*Fix"):
        simulate_cohort(10, 0, overrides={"emax_treg": value})


def test_overrides_that_are_not_a_mapping_are_rejected():
    with pytest.raises(InputError, match=r"overrides must be a mapping parameter -> value, got list\. Fix"):
        simulate_cohort(10, 0, overrides=[("emax_treg", 5.0)])


def test_design_of_the_wrong_type_is_rejected():
    with pytest.raises(InputError, match=r"design must be a TrialDesign or a design name, got int\. Fix"):
        simulate_cohort(10, 0, design=3)


def test_datasets_package_exports_the_cohort_api():
    assert {"lupil2_virtual", "lupil2_virtual_truth", "simulate_cohort", "write_cohort"} <= set(
        il2treg.datasets.__all__
    )


def test_an_arm_regimen_with_dose_records_is_refused_before_computing():
    """The cohort's table writes plain dose rows; a regimen with an infusion would be misdescribed."""
    from il2treg.records import DoseRecords

    infused = Regimen([0.0, 7.0], [1.5e6, 1.5e6], records=DoseRecords([0, 0], [0.5, 0.5], [False, False], [0, 0], [0.0, 0.0]))
    design = trial.load_design("lupil2")
    design = design.replace(regimens={**design.regimens, "il2": infused})
    with pytest.raises(InputError, match="NONMEM records"):
        simulate_cohort(10, 0, design=design)
