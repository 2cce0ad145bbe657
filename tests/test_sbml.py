"""SBML export: a valid SBML L3V2 document with units and sources, and the same trajectories in
libroadrunner, COPASI and AMICI as in il2treg (the cross-engine checks of the issue)."""

from __future__ import annotations

import numpy as np
import pytest

import il2treg
from il2treg.errors import InputError

libsbml = pytest.importorskip("libsbml", reason="python-libsbml is not installed (pip install 'il2treg[sbml]'); CI installs it")
roadrunner = pytest.importorskip("roadrunner", reason="libroadrunner is not installed (pip install 'il2treg[sbml]'); CI installs it")
roadrunner.Logger.setLevel(roadrunner.Logger.LOG_ERROR)

from il2treg.sbml import export_sbml  # noqa: E402 - after the importorskips, with what it needs

TIMES = np.linspace(0.0, 84.0, 337)


def roadrunner_run(text: str, times=TIMES, rtol: float = 1e-6, atol: float = 1e-9) -> np.ndarray:
    rr = roadrunner.RoadRunner(text)
    rr.integrator.relative_tolerance = rtol
    rr.integrator.absolute_tolerance = atol
    rr.integrator.maximum_num_steps = 100_000
    return np.asarray(rr.simulate(times=list(times), selections=["time", *il2treg.OBSERVABLE_NAMES]))[:, 1:]


def _si(m, uid: str) -> tuple[dict[str, int], float]:
    """The base units (kind: exponent) of an SBML unit definition and its factor to them."""
    kinds, factor = {}, 1.0
    for u in m.getUnitDefinition(uid).getListOfUnits():
        kinds[libsbml.UnitKind_toString(u.getKind())] = u.getExponent()
        factor *= (u.getMultiplier() * 10.0 ** u.getScale()) ** u.getExponent()
    return kinds, factor


def test_the_export_is_valid_sbml_with_units_and_sources(model, lupil2, tmp_path):
    text = export_sbml(model, regimen=lupil2, path=tmp_path / "m.xml")
    assert (tmp_path / "m.xml").read_text() == text
    doc = libsbml.readSBMLFromString(text)
    assert (doc.getLevel(), doc.getVersion()) == (3, 2)
    doc.checkConsistency()  # identifiers, MathML, units, ...: warnings only (literal numbers carry no units)
    assert doc.getNumErrors(libsbml.LIBSBML_SEV_ERROR) + doc.getNumErrors(libsbml.LIBSBML_SEV_FATAL) == 0, doc.getErrorLog().toString()
    m = doc.getModel()
    assert m.getNumEvents() == lupil2.n_doses
    assert _si(m, m.getTimeUnits()) == ({"second": 1}, pytest.approx(86400.0, rel=1e-15))
    ka = m.getParameter("ka")
    assert _si(m, ka.getUnits()) == ({"second": -1}, pytest.approx(1 / 86400.0, rel=1e-15)) and "Piscitelli" in ka.getNotesString()
    assert _si(m, m.getParameter("il2_pM").getUnits()) == ({"mole": 1, "metre": -3}, pytest.approx(1e-9, rel=1e-12))  # pM in mol/m^3
    assert _si(m, m.getParameter("CL").getUnits()) == ({"metre": 3, "second": -1}, pytest.approx(1e-3 / 86400.0, rel=1e-12))  # L/day
    for name in il2treg.OBSERVABLE_NAMES:
        assert m.getAssignmentRuleByVariable(name) is not None


def test_roadrunner_reproduces_il2treg_for_20_virtual_patients(model, lupil2):
    """Every observable of 20 patients under LUPIL-2, 0-84 days every 6 h: il2treg (default
    SolverOptions: Tsit5, rtol 1e-6, atol 1e-9) against libroadrunner (CVODE, same tolerances) on
    the exported model: maximum relative difference < 1e-4."""
    params = il2treg.sample_population(model, 20, seed=4)
    mine = np.asarray(il2treg.simulate(model, lupil2, TIMES, params).values)
    worst = np.zeros(len(il2treg.OBSERVABLE_NAMES))
    for i in range(20):
        theirs = roadrunner_run(export_sbml(model, il2treg.Parameters(params.values[i], params.names), lupil2))
        worst = np.maximum(worst, np.max(np.abs(theirs - mine[i]) / np.abs(mine[i]), axis=0))
    print(dict(zip(il2treg.OBSERVABLE_NAMES, np.round(worst * 1e6, 2))), "(x 1e-6)")
    assert worst.max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ["il2_treg_sledai_no_delay", "il2_treg_sledai_no_sink", "il2_treg_sledai_no_cd25_feedback"])
def test_every_variant_exports_the_same_equations(name, lupil2, tight):
    """The reference's variants (no delay, no sink, no CD25 feedback): the typical patient agrees
    to 1e-7 at tight tolerances on both sides."""
    other = il2treg.load_model(name)
    mine = np.asarray(il2treg.simulate(other, lupil2, TIMES, options=tight).values)
    theirs = roadrunner_run(export_sbml(other, regimen=lupil2), rtol=1e-11, atol=1e-14)
    assert np.max(np.abs(theirs - mine) / np.abs(mine)) < 1e-7


def test_without_doses_the_exported_model_stays_at_baseline(model):
    out = roadrunner_run(export_sbml(model, regimen=il2treg.regimen.placebo()))
    base = np.asarray(il2treg.simulate(model, il2treg.regimen.placebo(), TIMES).values)
    np.testing.assert_allclose(out, base, rtol=1e-9)


def test_bad_requests_are_clear_errors(model, lupil2):
    params = il2treg.sample_population(model, 2, seed=0)
    with pytest.raises(InputError, match="writes one patient"):
        export_sbml(model, params, lupil2)
    batched = il2treg.regimen.stack([lupil2, lupil2])
    with pytest.raises(InputError, match="one regimen"):
        export_sbml(model, regimen=batched)
    from il2treg.records import DoseRecords

    infused = il2treg.Regimen([0.0], [1.5e6], records=DoseRecords([0], [0.5], [False], [0], [0.0]))
    with pytest.raises(InputError, match="NONMEM records"):
        export_sbml(model, regimen=infused)


def copasi_run(text: str, times=TIMES, rtol: float = 1e-10, atol: float = 1e-13) -> np.ndarray:
    """Time course of the observables in COPASI (deterministic LSODA) on an exported model."""
    copasi = pytest.importorskip("COPASI", reason="python-copasi is not installed (pip install 'il2treg[sbml]'); CI installs it")
    dm = copasi.CRootContainer.addDatamodel()
    try:
        assert dm.importSBMLFromString(text), "COPASI could not import the SBML"
        task = dm.getTask("Time-Course")
        task.setMethodType(copasi.CTaskEnum.Method_deterministic)
        problem = task.getProblem()
        problem.setStepNumber(len(times) - 1)
        problem.setDuration(float(times[-1]))
        problem.setTimeSeriesRequested(True)
        method = task.getMethod()
        method.getParameter("Relative Tolerance").setDblValue(rtol)
        method.getParameter("Absolute Tolerance").setDblValue(atol)
        method.getParameter("Max Internal Steps").setIntValue(1_000_000)
        assert task.processWithOutputFlags(True, copasi.CCopasiTask.ONLY_TIME_SERIES)
        series = task.getTimeSeries()
        titles = [series.getTitle(i) for i in range(series.getNumVariables())]
        cols = [0] + [titles.index(f"Values[{name}]") for name in il2treg.OBSERVABLE_NAMES]
        out = np.array([[series.getData(k, c) for c in cols] for k in range(series.getRecordedSteps())])
    finally:
        copasi.CRootContainer.removeDatamodel(dm)
    np.testing.assert_allclose(out[:, 0], times, rtol=0, atol=1e-9)
    return out[:, 1:]


@pytest.mark.slow
def test_copasi_reproduces_il2treg_for_5_virtual_patients(model, lupil2, tight):
    """COPASI imports the exported model (events, assignment rules, units) and its time course of
    every observable for 5 patients under LUPIL-2 matches il2treg's to 1e-7 at tight tolerances
    on both sides (measured: 4.5e-10)."""
    params = il2treg.sample_population(model, 5, seed=1)
    mine = np.asarray(il2treg.simulate(model, lupil2, TIMES, params, options=tight).values)
    worst = 0.0
    for i in range(5):
        theirs = copasi_run(export_sbml(model, il2treg.Parameters(params.values[i], params.names), lupil2))
        worst = max(worst, float(np.max(np.abs(theirs - mine[i]) / np.abs(mine[i]))))
    print(f"COPASI vs il2treg, largest relative difference: {worst:.1e}")
    assert worst < 1e-7


def test_amici_reproduces_il2treg_for_20_virtual_patients(model, lupil2, tight, tmp_path):
    """AMICI imports and compiles the exported model once, then simulates 20 patients under
    LUPIL-2 (each patient's parameter values read from that patient's exported file) at the
    default and at tight tolerances; every observable against il2treg: < 1e-4 and < 1e-7."""
    pytest.importorskip(
        "amici",
        reason="AMICI is not installed: PyPI has no wheel for it, and its source build needs a C++ "
        "compiler, CMake, SWIG and CBLAS (recipe in benchmarks/README.md, 'AMICI'); CI does not build it",
    )
    import amici.sim.sundials as amici_sim
    from amici.importers.sbml import SbmlImporter

    (tmp_path / "m.xml").write_text(export_sbml(model, regimen=lupil2))
    compiled = SbmlImporter(str(tmp_path / "m.xml")).sbml2amici("il2treg_lupil2_test", str(tmp_path / "build"), verbose=False)
    compiled.set_timepoints(TIMES)
    columns = [compiled.get_observable_ids().index("y" + name) for name in il2treg.OBSERVABLE_NAMES]
    free = set(compiled.get_free_parameter_ids())
    params = il2treg.sample_population(model, 20, seed=4)
    for options, limit in ((il2treg.SolverOptions(), 1e-4), (tight, 1e-7)):
        mine = np.asarray(il2treg.simulate(model, lupil2, TIMES, params, options=options).values)
        solver = compiled.create_solver()
        solver.set_relative_tolerance(options.rtol)
        solver.set_absolute_tolerance(options.atol)
        solver.set_max_steps(100_000)
        worst = 0.0
        for i in range(20):
            exported = libsbml.readSBMLFromString(export_sbml(model, il2treg.Parameters(params.values[i], params.names), lupil2))
            for p in exported.getModel().getListOfParameters():
                if p.getId() in free:
                    compiled.set_free_parameter_by_id(p.getId(), p.getValue())
            result = amici_sim.run_simulation(compiled, solver)
            assert result.status == 0, f"AMICI failed on patient {i}: status {result.status}"
            theirs = np.asarray(result.y)[:, columns]
            worst = max(worst, float(np.max(np.abs(theirs - mine[i]) / np.abs(mine[i]))))
        print(f"AMICI vs il2treg at rtol {options.rtol:g}, atol {options.atol:g}: largest relative difference {worst:.1e}")
        assert worst < limit


_SHIPPED = ("pk_1cmt_iv", "pk_1cmt_infusion", "pk_1cmt_oral", "pk_2cmt_iv", "pk_2cmt_infusion", "pk_2cmt_oral",
            "il2_treg_sledai", "il2_treg_sledai_no_delay", "il2_treg_sledai_no_sink", "il2_treg_sledai_no_cd25_feedback",
            "il2_treg_sledai_receptor", "il2_treg_sledai_multistudy", "peg_il2_treg_sledai")  # fmt: skip


def test_the_shipped_list_is_every_model_file():
    from il2treg.spec import MODELS_DIR

    assert set(_SHIPPED) == {p.stem for p in MODELS_DIR.glob("*.toml") if "[design]" not in p.read_text(encoding="utf-8")}


@pytest.mark.parametrize("name", [n if n == "pk_1cmt_oral" else pytest.param(n, marks=pytest.mark.slow) for n in _SHIPPED])
def test_every_shipped_model_file_exports_what_il2treg_solves(name, lupil2):
    """Each shipped model's equations exported and solved by libroadrunner (CVODE, rtol 1e-6, atol 1e-9) against il2treg (Tsit5, the
    same tolerances), 20 patients under the LUPIL-2 schedule (100 mg per dose for the PK models),
    every 6 h to day 84, 0.01 day after each grid time (so that none falls on a dose, where il2treg
    reports the value before it and an event solver the value after): every observable within
    1e-4 of its peak, and within 1e-4 (relative) wherever it is above 1e-3 of its peak (elimination
    takes a one-compartment concentration down to 1e-30 between weekly doses, where no relative
    difference means anything)."""
    from il2treg.sbml import observable_ids

    model = il2treg.load_model(name)
    regimen = lupil2 if name.startswith("il2_treg_sledai") else il2treg.regimen.Regimen(times=lupil2.times, amounts=np.full(lupil2.n_doses, 100.0))
    times = TIMES + 0.01
    params = il2treg.sample_population(model, 20, seed=4)
    mine = np.asarray(il2treg.simulate(model, regimen, times, params).values)
    worst_peak, worst_rel = 0.0, 0.0
    for i in range(20):
        rr = roadrunner.RoadRunner(export_sbml(model, il2treg.Parameters(params.values[i], params.names), regimen))
        rr.integrator.relative_tolerance, rr.integrator.absolute_tolerance = 1e-6, 1e-9
        rr.integrator.maximum_num_steps = 100_000
        theirs = np.asarray(rr.simulate(times=[0.0, *times], selections=["time", *observable_ids(model)]))[1:, 1:]
        peak = np.max(np.abs(mine[i]), axis=0)
        worst_peak = max(worst_peak, float(np.max(np.abs(theirs - mine[i]) / peak)))
        above = np.abs(mine[i]) > 1e-3 * peak
        worst_rel = max(worst_rel, float(np.max(np.abs(theirs - mine[i])[above] / np.abs(mine[i])[above])))
    print(f"{name}: largest difference {worst_peak:.1e} of the peak, {worst_rel:.1e} relative above 1e-3 of it")
    assert worst_peak < 1e-4 and worst_rel < 1e-4
