r"""Export a model, one patient's parameters and a regimen as SBML Level 3 Version 2.

:func:`export_sbml` writes the equations of :mod:`il2treg.model.system` (PK with receptor sink,
signal, transit delay, cell pools, CD25, SLEDAI effect) for the model's structure as an SBML model
for other engines (tested with libroadrunner and COPASI in ``tests/test_sbml.py``; AMICI reads
the same constructs but is not tested):

* every state is a non-constant global parameter with a ``rateRule`` (no compartments or species:
  the states are amounts in MIU, fold changes and relative levels, not concentrations);
* the baseline signals :math:`S_X(C_{endo})` and the observables of
  :data:`il2treg.observables.OBSERVABLE_NAMES` (``il2_pM``, ``treg_per_uL``, ... ``sledai``) are
  ``assignmentRule`` parameters, so a change of any model parameter stays consistent;
* each dose is an ``event`` triggered at ``time >= dose_time_k + tlag`` that adds
  ``F * dose_k_iu * 1e-6`` MIU to the depot (``dose_time_k``, ``dose_k_iu`` are parameters);
* units: time in days, volume in litres, concentrations in pM, cell counts per µL, as
  ``unitDefinition``\ s on every parameter; each model parameter carries its description and its
  source (from ``models/``) as SBML ``notes``, and an ``sboTerm`` marks the model parameters.

Requires the optional dependency ``python-libsbml`` (``pip install il2treg[sbml]``).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from il2treg.errors import InputError
from il2treg.model import Model, Parameters
from il2treg.observables import OBSERVABLES
from il2treg.regimen import Regimen
from il2treg.units import PM_PER_IU_PER_ML

#: SBML unit definitions: il2treg's internal unit -> (id, [(kind, exponent, scale, multiplier)]).
_UNITS = {
    "day": ("day", [("second", 1, 0, 86400.0)]),
    "1/day": ("per_day", [("second", -1, 0, 86400.0)]),
    "L": ("litre_unit", [("litre", 1, 0, 1.0)]),
    "L/day": ("litre_per_day", [("litre", 1, 0, 1.0), ("second", -1, 0, 86400.0)]),
    "pM": ("picomolar", [("mole", 1, -12, 1.0), ("litre", -1, 0, 1.0)]),
    "cells/uL": ("cells_per_microlitre", [("item", 1, 0, 1.0), ("litre", -1, -6, 1.0)]),
    "1": ("dimensionless_unit", [("dimensionless", 1, 0, 1.0)]),
    "points": ("dimensionless_unit", [("dimensionless", 1, 0, 1.0)]),
    "IU": ("dimensionless_unit", [("dimensionless", 1, 0, 1.0)]),
    "MIU": ("dimensionless_unit", [("dimensionless", 1, 0, 1.0)]),
}
_SBO_PARAMETER = 2  # SBO:0000002 quantitative systems description parameter


def _libsbml():
    try:
        import libsbml
    except ImportError:  # pragma: no cover - depends on the environment
        raise InputError("SBML export needs python-libsbml. Fix: pip install 'il2treg[sbml]' (python-libsbml, libroadrunner).") from None
    return libsbml


def _check(code: int, what: str) -> None:
    libsbml = _libsbml()
    if code != libsbml.LIBSBML_OPERATION_SUCCESS:
        raise RuntimeError(f"libsbml failed to {what}: {libsbml.OperationReturnValue_toString(code)}")


def state_ids(model: Model) -> list[str]:
    """SBML ids of the states, in :func:`il2treg.model.system.state_names` order."""
    from il2treg.model import system

    return list(system.state_names(model.structure))


def export_sbml(model: Model, params: Parameters | None = None, regimen: Regimen | None = None, path: str | Path | None = None) -> str:
    """The SBML Level 3 Version 2 document of ``model`` for one patient under ``regimen``.

    Arguments:
        model: from :func:`il2treg.load_model`.
        params: one patient (``[params]``); default the typical patient.
        regimen: the doses (days, IU); default none.
        path: also write the document there (atomically).

    Returns:
        The SBML document as a string.
    """
    libsbml = _libsbml()
    params = model.typical() if params is None else params
    values = np.asarray(params.values, dtype=np.float64)
    if values.ndim != 1:
        raise InputError(f"export_sbml writes one patient; params have shape {values.shape}. Fix: pass Parameters(values[i], names).")
    if tuple(params.names) != tuple(model.parameter_names):
        raise InputError("params do not belong to this model. Fix: build them with model.parameters() or sample_population.")
    times = np.asarray(regimen.times if regimen is not None else np.zeros(0), dtype=np.float64)
    amounts = np.asarray(regimen.amounts if regimen is not None else np.zeros(0), dtype=np.float64)
    if times.ndim != 1:
        raise InputError("export_sbml needs one regimen, not a batch. Fix: pass one patient's regimen.")
    structure = model.structure
    n = structure.transit_compartments

    doc = libsbml.SBMLDocument(3, 2)
    sbml = doc.createModel()
    sbml.setId(model.name)
    sbml.setName(f"il2treg model {model.name}")
    _check(sbml.setNotes(_notes(f"Exported by il2treg from models/{model.name}.toml. {model.spec.description} Structure: {structure}. "
                                "Time in days; the dose events reproduce il2treg.simulate's dosing.")), "set model notes")  # fmt: skip
    sbml.setTimeUnits("day")
    sbml.setExtentUnits("dimensionless")
    sbml.setSubstanceUnits("dimensionless")
    made = set()
    for uid, parts in _UNITS.values():
        if uid in made:
            continue
        made.add(uid)
        ud = sbml.createUnitDefinition()
        ud.setId(uid)
        for kind, exponent, scale, multiplier in parts:
            u = ud.createUnit()
            u.setKind(libsbml.UnitKind_forName(kind))
            u.setExponent(exponent)
            u.setScale(scale)
            u.setMultiplier(multiplier)

    def parameter(pid: str, value: float | None, unit: str, constant: bool, notes: str = "", sbo: bool = False):
        p = sbml.createParameter()
        _check(p.setId(pid), f"set id {pid}")
        p.setConstant(constant)
        if value is not None:
            p.setValue(float(value))
        p.setUnits(_UNITS[unit][0])
        if notes:
            _check(p.setNotes(_notes(notes)), f"set notes of {pid}")
        if sbo:
            p.setSBOTerm(_SBO_PARAMETER)
        return p

    def rule(kind: str, variable: str, formula: str):
        r = sbml.createRateRule() if kind == "rate" else sbml.createAssignmentRule()
        r.setVariable(variable)
        ast = libsbml.parseL3Formula(formula)
        if ast is None:
            raise RuntimeError(f"libsbml could not parse {formula!r}: {libsbml.getLastParseL3Error()}")
        _check(r.setMath(ast), f"set the math of {variable}")

    for k, spec in enumerate(model.spec.params):
        parameter(spec.name, values[k], spec.internal_unit, True, f"{spec.description} Unit: {spec.internal_unit}. Source: {spec.source}", sbo=True)
    parameter("pM_per_IU_per_mL", PM_PER_IU_PER_ML, "1", True, "pM per IU/mL of aldesleukin (il2treg.units.PM_PER_IU_PER_ML)")

    states = state_ids(model)
    initial = dict.fromkeys(states, 0.0)
    initial.update(treg_fold=1.0, nk_fold=1.0, tconv_fold=1.0, cd25_rel=1.0)
    state_unit = {"depot": "MIU", "central": "MIU"}
    for s in states:
        parameter(s, initial[s], state_unit.get(s, "1"), False, f"state {s} (il2treg.model.system)")
    assigned = {
        "il2_pM": ("pM", "central * 1e6 / (V * 1e3) * pM_per_IU_per_mL + il2_endo"),
        "s0_treg": ("1", "1 / (1 + (ec50_treg / il2_endo)^hill)"),
        "s0_nk": ("1", "1 / (1 + (ec50_nk / il2_endo)^hill)"),
        "s0_tconv": ("1", "1 / (1 + (ec50_tconv / il2_endo)^hill)"),
        "ec50_treg_eff": ("pM", "ec50_treg / cd25_rel^gamma_cd25" if structure.cd25_feedback else "ec50_treg"),
        "u_treg": ("1", "1 / (1 + (ec50_treg_eff / il2_pM)^hill) - s0_treg"),
        "u_nk": ("1", "1 / (1 + (ec50_nk / il2_pM)^hill) - s0_nk"),
        "u_tconv": ("1", "1 / (1 + (ec50_tconv / il2_pM)^hill) - s0_tconv"),
        "treg_excess": ("1", "(treg_fold - 1 + abs(treg_fold - 1)) / 2"),  # max(R - 1, 0); a piecewise here stalls CVODE in libroadrunner
        "treg_per_uL": ("cells/uL", "treg0 * treg_fold"),
        "tconv_per_uL": ("cells/uL", "tconv0 * tconv_fold"),
        "nk56bright_per_uL": ("cells/uL", "nk0 * nk_fold"),
        "treg_pct_cd4": ("1", "100 * treg_per_uL / (treg_per_uL + tconv_per_uL)"),
        "cd25_treg_rel": ("1", "cd25_rel"),
        "sledai": ("points", "sledai0 - pmax * (1 - exp(-kpl * piecewise(time, time > 0, 0))) + imax * sledai0 * sledai_effect"),
    }
    for pid, (unit, formula) in assigned.items():
        parameter(pid, None, unit, False, OBSERVABLES[pid][1] if pid in OBSERVABLES else "")
        rule("assignment", pid, formula)

    sink = "treg_fold * cd25_rel" if structure.receptor_sink else "0"
    rates = {"depot": "-ka * depot", "central": f"ka * depot - (CL + CLR * {sink}) / V * central"}
    for cell in ("treg", "nk", "tconv"):
        upstream = f"u_{cell}"
        for i in range(1, n + 1):
            rates[f"transit_{cell}_{i}"] = f"{n} / mtt * ({upstream} - transit_{cell}_{i})"
            upstream = f"transit_{cell}_{i}"
        rates[f"{cell}_fold"] = f"kout_{cell} * (1 + emax_{cell} * {upstream}) - kout_{cell} * {cell}_fold"
    rates["cd25_rel"] = "kin_cd25 * (1 + emax_cd25 * u_treg) - kin_cd25 * cd25_rel"
    rates["sledai_effect"] = "kd * (-(treg_excess / (r50 + treg_excess)) - sledai_effect)"
    for s in states:
        rule("rate", s, rates[s])

    for k, (t, a) in enumerate(zip(times, amounts)):
        parameter(f"dose_time_{k + 1}", t, "day", True, f"dose {k + 1}: time of injection (day)")
        parameter(f"dose_{k + 1}_iu", a, "IU", True, f"dose {k + 1}: amount injected (IU, before bioavailability)")
        e = sbml.createEvent()
        e.setId(f"dose_{k + 1}")
        e.setUseValuesFromTriggerTime(True)
        trigger = e.createTrigger()
        trigger.setInitialValue(False)
        trigger.setPersistent(True)
        trigger.setMath(libsbml.parseL3Formula(f"time >= dose_time_{k + 1} + tlag"))
        ea = e.createEventAssignment()
        ea.setVariable("depot")
        ea.setMath(libsbml.parseL3Formula(f"depot + F * dose_{k + 1}_iu * 1e-6"))

    errors = doc.checkInternalConsistency()
    if errors:
        raise RuntimeError("the exported SBML is inconsistent: " + doc.getErrorLog().toString())
    text = libsbml.writeSBMLToString(doc)
    if path is not None:
        from il2treg._io import atomic_write_text

        atomic_write_text(Path(path), text)
    return text


def _notes(text: str) -> str:
    return f'<body xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text)}</p></body>'


__all__ = ["export_sbml", "state_ids"]
