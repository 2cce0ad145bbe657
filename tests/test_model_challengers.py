"""The challenger model files (issue "The IL-2 model across studies", part 3): the receptor-occupancy
mechanism and the PEGylated IL-2 drug variant, each over the mechanism it names and over the other.

What is checked: each sits at its baseline without a dose; the committed calibrated values are
the optimum of the scripts that made them; the receptor mechanism's CD25 raises the Treg signal's
maximum where the reference's cannot; the PEG conjugate decays with the published half-life it
cites; its selectivity is what its source reports."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

import il2treg
from il2treg import regimen as rg
from il2treg.errors import ModelFileError
from il2treg.units import miu_per_m2_to_iu

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def receptor():
    return il2treg.load_model("il2_treg_sledai_receptor")


@pytest.fixture(scope="module")
def peg():
    return il2treg.load_model("peg_il2_treg_sledai")


@pytest.mark.parametrize(("name", "base"), [("il2_treg_sledai_receptor", None), ("peg_il2_treg_sledai", None), ("peg_il2_treg_sledai", "il2_treg_sledai_receptor")])
def test_without_a_dose_every_observable_but_sledai_stays_at_its_baseline(name, base):
    model = il2treg.load_model(name, base=base)
    p = model.typical()
    sim = il2treg.simulate(model, rg.placebo(), np.array([0.0, 30.0, 90.0]), p)
    cells = [k for k, name in enumerate(sim.names) if name != "sledai"]  # SLEDAI follows standard of care
    values = np.asarray(sim.values)[:, cells]
    np.testing.assert_allclose(values, np.broadcast_to(values[0], values.shape), rtol=1e-12, atol=1e-12)
    assert sim["treg_per_uL"][0] == pytest.approx(float(p["treg0"]), rel=1e-12)


def test_a_drug_variant_applied_to_another_mechanism_takes_that_mechanism_and_its_own_drug():
    combined = il2treg.load_model("peg_il2_treg_sledai", base="il2_treg_sledai_receptor")
    receptor, peg = il2treg.load_model("il2_treg_sledai_receptor"), il2treg.load_model("peg_il2_treg_sledai")
    assert combined.name == "peg_il2_treg_sledai_on_il2_treg_sledai_receptor"
    assert "hill" not in combined.parameter_names and "CLR" not in combined.parameter_names
    for drug in ("ka", "CL", "V", "ec50_treg"):
        assert combined.spec[drug] == peg.spec[drug]
    for cell in ("emax_treg", "emax_cd25", "kout_treg"):
        assert combined.spec[cell] == receptor.spec[cell]


def test_base_is_refused_for_a_file_that_is_not_a_variant():
    with pytest.raises(ModelFileError, match=r"il2_treg_sledai\.toml: model\.base: the file is not a variant.*Fix: give base= only"):
        il2treg.load_model("il2_treg_sledai", base="il2_treg_sledai_receptor")


@pytest.mark.slow
def test_the_receptor_mechanism_values_are_the_optimum_of_its_calibration(receptor):
    """emax_treg and emax_cd25 are what scripts/calibrate_pd.py --model il2_treg_sledai_receptor
    wrote: the least-squares misfit to the three targets rises when either moves by 1%."""
    calibrate = _script("calibrate_pd")
    targets = np.log([calibrate.TREG_FOLD_DAY7, calibrate.DILFREQ_TREG, calibrate.DILFREQ_CD25])
    e_treg, e_cd25 = receptor.spec["emax_treg"].declared_value, receptor.spec["emax_cd25"].declared_value

    def misfit(a, b):
        return float(np.sum((np.log(calibrate.outcomes(receptor, a, b)) - targets) ** 2))

    best = misfit(e_treg, e_cd25)
    for a, b in ((1.01 * e_treg, e_cd25), (0.99 * e_treg, e_cd25), (e_treg, 1.01 * e_cd25), (e_treg, 0.99 * e_cd25)):
        assert misfit(a, b) > best


def test_cd25_raises_the_receptor_mechanisms_treg_plateau_above_one_plus_emax(receptor, model):
    """3 MIU/m2 daily for 12 weeks: in the reference CD25 only lowers the EC50, so the plateau stays
    below 1 + emax_treg; in the receptor mechanism it adds receptors to occupy, and the plateau
    passes 1 + emax_treg."""
    dose = rg.every(float(miu_per_m2_to_iu(3.0, 1.8)), 1.0, 84)
    t = np.array([83.5])
    for m, above in ((model, False), (receptor, True)):
        p = m.typical()
        fold = float(il2treg.simulate(m, dose, t, p)["treg_per_uL"][0] / p["treg0"])
        assert (fold > 1.0 + float(p["emax_treg"])) is above, (m.name, fold, float(p["emax_treg"]))


def test_the_conjugate_decays_with_the_published_half_life(peg):
    """After absorption (ka 0.5/day, 7 times the elimination rate) the conjugate's concentration
    halves every sqrt(7.4 x 12.9) = 9.77 days, the geometric middle of Fanton et al.'s 7.4-12.9."""
    p = peg.typical()
    sim = il2treg.simulate(peg, rg.every(1960.0, 14.0, 1), np.array([40.0, 70.0]), p)
    drug = np.asarray(sim["il2_pM"]) - float(p["il2_endo"])
    half_life = 30.0 * math.log(2.0) / math.log(drug[0] / drug[1])
    assert half_life == pytest.approx(math.sqrt(7.4 * 12.9), rel=1e-6)


@pytest.mark.slow
def test_the_conjugates_treg_ec50_is_the_optimum_of_its_calibration(peg):
    """scripts/calibrate_peg.py: after a single 28 ug/kg dose (70 kg) the Treg fold stays above 2
    for 25 days; the committed EC50 gives that to 0.01 days."""
    calibrate = _script("calibrate_peg")
    fold = calibrate.treg_fold(peg, peg.spec["ec50_treg"].declared_value)
    assert calibrate.days_above(fold) == pytest.approx(calibrate.SUSTAINED_DAYS, abs=0.01)


def test_the_conjugate_expands_tregs_more_than_nk_cells_and_leaves_tconv_alone(peg):
    """Fanton et al. 2022 (qualitative, READ): Tregs rose, NK cells 'at a low level', conventional
    CD4+ T cells did not change significantly."""
    p = peg.typical()
    sim = il2treg.simulate(peg, rg.every(1960.0, 14.0, 1), np.linspace(0.0, 60.0, 121), p)
    treg = np.max(sim["treg_per_uL"]) / float(p["treg0"]) - 1.0
    nk = np.max(sim["nk56bright_per_uL"]) / float(p["nk0"]) - 1.0
    tconv = np.max(np.abs(sim["tconv_per_uL"] / float(p["tconv0"]) - 1.0))
    assert nk < treg / 5 and tconv < 0.01, (treg, nk, tconv)
