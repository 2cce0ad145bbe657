r"""Export a model, one patient's parameters and a regimen as SBML Level 3 Version 2.

:func:`export_sbml` writes a model file's equations (:class:`il2treg.model.Equations`) as an SBML
model for other engines (tested with libroadrunner for every shipped model, and COPASI, in
``tests/test_sbml.py``; AMICI reads the same constructs but is not tested):

* states are non-constant global parameters with ``rateRule``\ s (no compartments or species:
  states are amounts, fold changes and relative levels as the file declares them, not
  concentrations); initial values that are expressions are ``initialAssignment``\ s;
* quantities and observables are ``assignmentRule`` parameters, so a change of any model
  parameter stays consistent; constants are constant parameters;
* each dose is an ``event``: a bolus adds ``F * amount * scale`` to its state at
  ``time >= t_k + lag``; an infusion adds its rate to a ``dose_rate`` parameter, which the dosed
  state's rate rule adds, at ``t_k + lag`` and takes it away at ``t_k + lag + duration``;
* units are SBML unit definitions made from each parameter's (pint) unit; each model parameter
  carries its description and its source as SBML ``notes``, and an ``sboTerm`` marks them.

``max(a, b)`` and ``min(a, b)`` are written ``(a + b ± abs(a - b)) / 2``, which CVODE integrates
without the event handling a ``piecewise`` costs it.

Requires the optional dependency ``python-libsbml`` (``pip install il2treg[sbml]``).
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from il2treg.errors import InputError
from il2treg.model import Model, Parameters
from il2treg.regimen import Regimen

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
    """SBML ids of the states, in the order of the model's state vector."""
    return list(model.state_names)


def observable_ids(model: Model) -> list[str]:
    """SBML ids of the observables, in the model's order: each its own name, or
    ``<name>_observed`` where a state has that name."""
    return [n if n not in model.state_names else f"{n}_observed" for n in model.observable_names]


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
    if regimen is not None and regimen.records is not None:
        raise InputError("export_sbml writes bolus doses into the model's first dosing input, but the regimen carries NONMEM records (CMT, RATE, SS or resets), "
                         "which SBML events here do not express. Fix: export a regimen of plain doses (Regimen(times, amounts)).")  # fmt: skip
    times = np.asarray(regimen.times if regimen is not None else np.zeros(0), dtype=np.float64)
    amounts = np.asarray(regimen.amounts if regimen is not None else np.zeros(0), dtype=np.float64)
    if times.ndim != 1:
        raise InputError("export_sbml needs one regimen, not a batch. Fix: pass one patient's regimen.")
    definition = getattr(model.mechanism, "definition", None)
    if definition is None:
        raise InputError(f"model {model.name!r} is a Python mechanism of its own; SBML export needs equations. Fix: write it as a model file.")
    text = _export_equations(libsbml, model, definition, values, times, amounts)
    if path is not None:
        from il2treg._io import atomic_write_text

        atomic_write_text(Path(path), text)
    return text


def _export_equations(libsbml, model: Model, definition, values: np.ndarray, times: np.ndarray, amounts: np.ndarray) -> str:
    """The SBML document of a model file's equations (module docstring)."""
    import sympy

    from il2treg.model.format import TIME, expression

    doc = libsbml.SBMLDocument(3, 2)
    sbml = doc.createModel()
    sbml.setId(definition.name)
    sbml.setName(f"il2treg model {definition.name}")
    _check(sbml.setNotes(_notes(f"Exported by il2treg from {definition.path}. {definition.description} Time in days; "
                                "the dose events reproduce il2treg.simulate's dosing.")), "set model notes")  # fmt: skip
    sbml.setTimeUnits("day")
    units: dict[str, str] = {}

    def unit_id(text: str) -> str:
        if text not in units:
            units[text] = _unit_definition(libsbml, sbml, text, f"unit_{len(units) + 1}")
        return units[text]

    unit_id("day")
    sbml.setTimeUnits(units["day"])
    printer = _l3_printer()
    to_text = lambda source: printer.doprint(expression(definition, source).xreplace({sympy.Symbol(TIME, real=True): sympy.Symbol("time")}))

    def parameter(pid: str, value: float | None, unit: str | None, constant: bool, notes: str = "", sbo: bool = False):
        p = sbml.createParameter()
        _check(p.setId(pid), f"set id {pid}")
        p.setConstant(constant)
        if value is not None:
            p.setValue(float(value))
        if unit is not None:
            p.setUnits(unit_id(unit))
        if notes:
            _check(p.setNotes(_notes(notes)), f"set notes of {pid}")
        if sbo:
            p.setSBOTerm(_SBO_PARAMETER)
        return p

    def math(formula: str):
        ast = libsbml.parseL3Formula(formula)
        if ast is None:
            raise RuntimeError(f"libsbml could not parse {formula!r}: {libsbml.getLastParseL3Error()}")
        return ast

    def rule(kind: str, variable: str, formula: str):
        r = sbml.createRateRule() if kind == "rate" else sbml.createAssignmentRule()
        r.setVariable(variable)
        _check(r.setMath(math(formula)), f"set the math of {variable}")

    for k, spec in enumerate(definition.parameters):
        parameter(spec.name, values[k], spec.internal_unit, True, f"{spec.description} Unit: {spec.internal_unit}. Source: {spec.source}", sbo=True)
    for c in definition.constants:
        parameter(c.name, c.value, c.unit, True, f"{c.description} Source: {c.source}")
    infused = bool(definition.doses) and definition.doses[0].duration is not None
    for st in definition.states:
        parameter(st.name, None, st.unit, False, st.description or f"state {st.name}")
        initial = sbml.createInitialAssignment()
        initial.setSymbol(st.name)
        _check(initial.setMath(math(to_text(st.initial))), f"set the initial value of {st.name}")
    for name, source in definition.quantities:
        parameter(name, None, None, False, f"quantity {name} = {source}")
        rule("assignment", name, to_text(source))
    for o in definition.observables:
        pid = observable_ids(model)[definition.observable_names.index(o.name)]
        parameter(pid, None, o.unit, False, o.description or f"observable {o.name}")
        rule("assignment", pid, to_text(o.expression))
    dosed = definition.doses[0].state if definition.doses else None
    if infused:
        parameter("dose_rate", 0.0, None, False, f"the rate of the running infusions into {dosed} (state unit per day)")
    for st, source in zip(definition.states, definition.equations):
        rule("rate", st.name, to_text(source) + (" + dose_rate" if infused and st.name == dosed else ""))

    if dosed is not None and times.size:
        dose = definition.doses[0]
        fraction = "1" if dose.bioavailability is None else f"({to_text(dose.bioavailability)})"
        lag = "0" if dose.lag is None else f"({to_text(dose.lag)})"
        for k, (t, a) in enumerate(zip(times, amounts)):
            parameter(f"dose_time_{k + 1}", t, "day", True, f"dose {k + 1}: time (day)")
            parameter(f"dose_{k + 1}_amount", a, dose.unit, True, f"dose {k + 1}: amount ({dose.unit}, before bioavailability)")
            amount = f"{fraction} * dose_{k + 1}_amount * {dose.scale!r}"
            if not infused:
                _event(libsbml, sbml, f"dose_{k + 1}", f"time >= dose_time_{k + 1} + {lag}", dosed, f"{dosed} + {amount}")
                continue
            duration = f"({to_text(dose.duration)})"
            _event(libsbml, sbml, f"dose_{k + 1}_start", f"time >= dose_time_{k + 1} + {lag}", "dose_rate", f"dose_rate + {amount} / {duration}")
            _event(libsbml, sbml, f"dose_{k + 1}_stop", f"time >= dose_time_{k + 1} + {lag} + {duration}", "dose_rate", f"dose_rate - {amount} / {duration}")
    if doc.checkInternalConsistency():
        raise RuntimeError("the exported SBML is inconsistent: " + doc.getErrorLog().toString())
    return libsbml.writeSBMLToString(doc)


def _event(libsbml, sbml, eid: str, trigger: str, variable: str, formula: str) -> None:
    e = sbml.createEvent()
    e.setId(eid)
    e.setUseValuesFromTriggerTime(True)
    t = e.createTrigger()
    t.setInitialValue(False)
    t.setPersistent(True)
    t.setMath(libsbml.parseL3Formula(trigger))
    ea = e.createEventAssignment()
    ea.setVariable(variable)
    ea.setMath(libsbml.parseL3Formula(formula))


def _unit_definition(libsbml, sbml, text: str, uid: str) -> str:
    """An SBML unit definition of the unit ``text`` (from its pint base units: metre, second,
    gram, mole; cells as items; IU and score points dimensionless), returned by id."""
    from il2treg.model import dimensions

    base = dimensions.parse_unit(text).to_base_units()
    kinds = {"meter": "metre", "second": "second", "gram": "gram", "kilogram": "kilogram", "mole": "mole", "cell": "item"}
    ud = sbml.createUnitDefinition()
    ud.setId(uid)
    parts = [(kinds.get(str(name), "dimensionless"), exponent) for name, exponent in base.unit_items()] or [("dimensionless", 1)]
    for k, (kind, exponent) in enumerate(parts):
        u = ud.createUnit()
        u.setKind(libsbml.UnitKind_forName(kind))
        u.setExponent(float(exponent))
        u.setScale(0)
        u.setMultiplier(float(base.magnitude) ** (1.0 / exponent) if k == 0 else 1.0)
    return uid


def _l3_printer():
    import sympy
    from sympy.printing.str import StrPrinter

    class Printer(StrPrinter):
        """sympy expressions as libsbml's L3 infix formulas (``^``, ``ln``, ``piecewise``)."""

        def _print_Pow(self, expr):
            if expr.exp == sympy.Rational(1, 2):
                return f"sqrt({self._print(expr.base)})"
            return f"({self._print(expr.base)})^({self._print(expr.exp)})"

        def _print_log(self, expr):
            return f"ln({self._print(expr.args[0])})"

        def _print_Abs(self, expr):
            return f"abs({self._print(expr.args[0])})"

        def _extreme(self, expr, sign: str) -> str:
            """max (sign +) or min (sign -) of the arguments, pairwise: (a + b ± |a - b|) / 2."""
            out = self._print(expr.args[0])
            for a in expr.args[1:]:
                b = self._print(a)
                out = f"(({out}) + ({b}) {sign} abs(({out}) - ({b}))) / 2"
            return out

        def _print_Max(self, expr):
            return self._extreme(expr, "+")

        def _print_Min(self, expr):
            return self._extreme(expr, "-")

        def _print_Piecewise(self, expr):
            parts = []
            for value, condition in expr.args:
                if condition is sympy.true:
                    parts.append(self._print(value))
                else:
                    parts += [self._print(value), self._print(condition)]
            return f"piecewise({', '.join(parts)})"

        def _print_Float(self, expr):
            return repr(float(expr))

    return Printer()


def _notes(text: str) -> str:
    return f'<body xmlns="http://www.w3.org/1999/xhtml"><p>{html.escape(text)}</p></body>'


__all__ = ["export_sbml", "observable_ids", "state_ids"]
