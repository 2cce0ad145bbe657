"""Model files as data: the reference model written as equations, and malformed files."""

from __future__ import annotations

import copy
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
import tomli_w

import handwritten
import il2treg
from conftest import run_cli
from il2treg import units
from il2treg.errors import ModelFileError, SpecError
from il2treg.model.compile import compile_model
from il2treg.model.format import read_model_file
from il2treg.observables import OBSERVABLE_NAMES
from il2treg.spec import MODELS_DIR

#: Each model file of the reference and its variants, and the hand-written structure it is.
VARIANTS = {
    "il2_treg_sledai": handwritten.Structure(),
    "il2_treg_sledai_no_delay": handwritten.Structure(transit_compartments=0),
    "il2_treg_sledai_no_sink": handwritten.Structure(receptor_sink=False),
    "il2_treg_sledai_no_cd25_feedback": handwritten.Structure(cd25_feedback=False),
}


def _random_points(model, n: int, seed: int):
    """``n`` random (t, state, parameters): parameters log-uniform within a factor 2 of typical, inside the bounds."""
    rng = np.random.default_rng(seed)
    typical = np.asarray(model.typical().values)
    lo, hi = (np.asarray([p.bounds[k] for p in model.spec.params]) for k in (0, 1))
    theta = np.clip(typical * np.exp(rng.uniform(-0.7, 0.7, (n, typical.size))), lo, hi)
    theta = np.where(typical == 0, rng.uniform(0, hi, (n, typical.size)), theta)
    n_states = len(model.state_names)
    y = rng.uniform(0.05, 3.0, (n, n_states))
    y[:, -1] = -rng.uniform(0.0, 1.0, n)  # the SLEDAI drug effect lies in [-1, 0]
    t = rng.uniform(0.0, 84.0, n)
    return t, y, theta


@pytest.mark.parametrize("name", VARIANTS)
def test_model_files_reproduce_the_hand_written_vector_field_and_observables(name):
    """The equations of models/il2_treg_sledai.toml and of each variant are the hand-written
    model of that structure (tests/handwritten/): 1e-13 relative at 200 random points."""
    hand = handwritten.model(VARIANTS[name])
    file = il2treg.load_model(name)
    written = compile_model(file.mechanism.definition)
    assert file.state_names == hand.state_names
    assert file.observable_names == hand.observable_names == OBSERVABLE_NAMES
    assert set(file.parameter_names) <= set(hand.parameter_names)
    keep = [hand.parameter_names.index(n) for n in file.parameter_names]
    names = hand.parameter_names

    def on_hand(t, y, theta):
        args = hand.mechanism.prepare(theta)
        return hand.mechanism.vector_field(t, y, args), hand.mechanism.observables(t, y, args)

    def on_file(t, y, theta):
        args = written.prepare(theta)
        return written.vector_field(t, y, args), written.observables(t, y, args)

    t, y, theta = _random_points(hand, 200, seed=3)
    f_hand, o_hand = jax.jit(jax.vmap(on_hand))(t, y, theta)
    f_file, o_file = jax.jit(jax.vmap(on_file))(t, y, theta[:, keep])
    np.testing.assert_allclose(f_file, f_hand, rtol=1e-13, atol=0)
    sledai = OBSERVABLE_NAMES.index("sledai")
    others = [k for k in range(len(OBSERVABLE_NAMES)) if k != sledai]
    np.testing.assert_allclose(o_file[:, others], o_hand[:, others], rtol=1e-13, atol=0)
    # SLEDAI = sledai0 - (standard of care) + imax*sledai0*E is a difference of terms of size sledai0 and can
    # cancel to near zero at random parameters: its rounding error is relative to sledai0, not to the result.
    sledai0 = theta[:, names.index("sledai0")]
    assert np.all(np.abs(o_file[:, sledai] - o_hand[:, sledai]) <= 1e-13 * sledai0)
    for k in range(theta.shape[0]):
        np.testing.assert_array_equal(written.initial_state(theta[k, keep]), hand.mechanism.initial_state(None))
    # The dose: F of it, converted from IU to the depot's MIU, enters the depot after tlag.
    assert written.dose_states == hand.mechanism.dose_states == (0,)
    assert written.definition.doses[0].scale == pytest.approx(1e-6, rel=1e-15)
    np.testing.assert_array_equal(written.dose_fraction(theta[0, keep]), [theta[0][names.index("F")]])
    np.testing.assert_array_equal(written.dose_lag(theta[0, keep]), [theta[0][names.index("tlag")]])
    const = {c.name: c.value for c in written.definition.constants}
    assert const["pM_per_MIU_per_L"] == pytest.approx(1e3 * units.PM_PER_IU_PER_ML, rel=1e-15)
    # The parameters that enter the ODE, read from the equations, are those the hand-written code's data flow
    # reads (of those the file declares: without the sink, the hand-written code still reads CLR, times 0).
    assert written.ode_parameters == tuple(n for n in hand.mechanism.ode_parameters if n in file.parameter_names)


def test_the_stiffness_a_batch_is_ordered_by_is_the_fastest_rate_at_baseline(model):
    """For the reference it is the elimination (CL + CLR)/V where that is the fastest rate, as the
    hand-written model's; absorption or the transit rate where one of those is faster."""
    params = il2treg.sample_population(model, 200, seed=5)
    got = np.asarray(model.mechanism.stiffness(params.values))
    q = {n: np.asarray(params[n]) for n in ("CL", "CLR", "V", "ka", "mtt")}
    expected = np.maximum.reduce([(q["CL"] + q["CLR"]) / q["V"], q["ka"], 3 / q["mtt"]] + [np.asarray(params[n]) for n in ("kout_treg", "kout_nk", "kout_tconv", "kin_cd25", "kd")])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.mean(got == (q["CL"] + q["CLR"]) / q["V"]) > 0.5


# ----------------------------------------------------------------------------- malformed files
_PARAM = {"bounds": [0.001, 1000.0], "transform": "log", "cv_percent": 0, "source": "ASSUMPTION: a test value"}
_VALID = {
    "model": {"name": "one_compartment_oral"},
    "states": {"depot": {"unit": "mg", "initial": 0}, "central": {"unit": "mg", "initial": 0}},
    "parameters": {
        "ka": {"value": 1.0, "unit": "1/h", **_PARAM},
        "CL": {"value": 5.0, "unit": "L/h", **_PARAM},
        "V": {"value": 50.0, "unit": "L", **_PARAM},
        "F": {"value": 0.8, "unit": "1", **_PARAM, "bounds": [0.0, 1.0], "transform": "logit"},
        "tlag": {"value": 0.5, "unit": "h", **_PARAM, "bounds": [0.0, 5.0], "transform": "identity"},
    },
    "quantities": {"ke": "CL / V"},
    "equations": {"depot": "-ka * depot", "central": "ka * depot - ke * central"},
    "observables": {"conc": {"unit": "mg/L", "expression": "central / V"}},
    "doses": {"oral": {"state": "depot", "bioavailability": "F", "lag": "tlag"}},
}


def _set(doc: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        doc = doc[key]
    if value is _DELETE:
        del doc[last]
    else:
        doc[last] = value


_DELETE = object()

# (case, changes {dotted key: value}, the key the message names, a fragment of the problem)
_MALFORMED = [
    ("unknown symbol", {"equations.central": "ka * depot - kel * central"}, "equations.central", "unknown symbol 'kel'"),
    ("unit mismatch", {"equations.central": "ka * depot - CL * central"}, "equations.central", "unit mismatch"),
    ("sum of different units", {"equations.central": "ka * depot - ke * central + V"}, "equations.central", "adds"),
    ("duplicate state", {"states.V": {"unit": "L", "initial": 1}}, "parameters.V", "duplicate name"),
    ("state without an equation", {"equations.depot": _DELETE}, "equations.depot", "has no equation"),
    ("equation for an unknown state", {"equations.peripheral": "0"}, "equations.peripheral", "not a state"),
    ("missing initial value", {"states.central.initial": _DELETE}, "states.central.initial", "missing"),
    ("initial value from a state", {"states.central.initial": "depot"}, "states.central.initial", "unknown symbol 'depot'"),
    ("circular definitions", {"quantities": {"ke": "CL / Vd", "Vd": "CL / ke"}}, "quantities.", "circular definition"),
    ("dose into an unknown state", {"doses.oral.state": "gut"}, "doses.oral.state", "not a state"),
    ("dose unit of another dimension", {"doses.oral.unit": "L"}, "doses.oral.unit", "cannot enter"),
    ("lag that is not a time", {"doses.oral.lag": "F"}, "doses.oral.lag", "unit mismatch"),
    ("exp of a quantity with a unit", {"equations.depot": "-ka * depot * exp(V)"}, "equations.depot", "must be dimensionless"),
    ("observable in the wrong unit", {"observables.conc.unit": "mg"}, "observables.conc.expression", "unit mismatch"),
    ("unknown unit", {"states.depot.unit": "furlongs"}, "states.depot.unit", "unknown unit"),
    ("not an expression", {"equations.depot": "-ka * (depot"}, "equations.depot", "is not an expression"),
    ("unknown function", {"equations.depot": "-ka * sigmoid(depot)"}, "equations.depot", "unknown symbol 'sigmoid'"),
    ("time declared as a name", {"parameters.t": {"value": 1.0, "unit": "day", **_PARAM}}, "parameters.t", "is time"),
    ("unknown table", {"equation": {}}, "equation", "did you mean [equations]"),
    ("unknown field", {"observables.conc.scale": 2}, "observables.conc.scale", "unknown field"),
    ("no observables", {"observables": {}}, "observables", "missing or empty"),
    ("keyword as a name", {"parameters.lambda": {"value": 1.0, "unit": "1", **_PARAM}}, "parameters.lambda", "not a valid name"),
    ("function name as a name", {"parameters.exp": {"value": 1.0, "unit": "1", **_PARAM}}, "parameters.exp", "name of a function"),
    ("attribute access", {"equations.depot": "-ka * depot.real"}, "equations.depot", "'.' is not allowed"),
    ("parameter that is not a table", {"parameters.ka": 1.0}, "parameters.ka", "must be a table"),
    ("doses that are not tables", {"doses": "depot"}, "doses", "must be tables"),
    ("dose into a list", {"doses.oral.state": ["depot"]}, "doses.oral.state", "not a state"),
    ("non-positive infusion duration", {"doses.oral.duration": 0}, "doses.oral.duration", "must be positive"),
]


@pytest.mark.parametrize(("case", "changes", "key", "problem"), _MALFORMED, ids=[c[0] for c in _MALFORMED])
def test_malformed_model_file_names_the_file_the_key_and_the_fix(request, tmp_path, case, changes, key, problem):
    doc = copy.deepcopy(_VALID)
    for dotted, value in changes.items():
        _set(doc, dotted, value)
    path = tmp_path / "model.toml"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(ModelFileError) as err:
        read_model_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}"), message
    assert problem in message and "Fix: " in message and "\n" not in message, message
    assert err.value.path == str(path) and err.value.key.startswith(key)
    # The same file through the command: one line naming the file, the key and the fix; exit status 2.
    monkeypatch, capsys = request.getfixturevalue("monkeypatch"), request.getfixturevalue("capsys")
    code, _, err = run_cli(monkeypatch, capsys, "simulate", "--model", str(path), "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"il2treg: error: {path}: {key}") and "Fix: " in err, err
    assert not (tmp_path / "o").exists()


def test_a_variant_takes_its_base_and_changes_removes_and_adds_by_name(tmp_path):
    """A user's variant of a user's model beside it: an absorption transit compartment instead of
    the lag. Its tables are the base's with its own entries replacing, removing or adding names."""
    (tmp_path / "oral.toml").write_text(tomli_w.dumps(_VALID))
    variant = {
        "model": {"name": "oral_transit", "base": "oral.toml", "remove": ["tlag"]},
        "states": {"transit": {"unit": "mg", "initial": 0}},
        "parameters": {"ktr": {"value": 2.0, "unit": "1/h", **_PARAM}},
        "equations": {"transit": "ka * depot - ktr * transit", "central": "ktr * transit - ke * central"},
        "doses": {"oral": {"state": "depot", "bioavailability": "F"}},
    }
    (tmp_path / "variant.toml").write_text(tomli_w.dumps(variant))
    base, model = read_model_file(tmp_path / "oral.toml"), read_model_file(tmp_path / "variant.toml")
    assert model.name == "oral_transit" and model.state_names == ("depot", "central", "transit")
    assert model.parameter_names == ("ka", "CL", "V", "F", "ktr")
    assert model.parameters[1] == base.parameters[1]  # CL as the base declares it
    assert model.equations == ("-ka * depot", "ktr * transit - ke * central", "ka * depot - ktr * transit")
    assert model.doses[0].lag is None and model.path == str(tmp_path / "variant.toml")


_BAD_VARIANTS = [
    ("unknown base", {"base": "no_such_model"}, "model.base", "unknown model 'no_such_model'"),
    ("remove an undeclared name", {"base": "oral.toml", "remove": ["kel"]}, "model.remove", "'kel' is not declared in the base"),
    ("remove without a base", {"remove": ["ka"]}, "model.remove", "has no base"),
    ("remove that is not a list", {"base": "oral.toml", "remove": "ka"}, "model.remove", "must be a list of names"),
    ("a base that is itself", {"base": "variant.toml"}, "model.base", "cycle"),
    ("removing what the rest reads", {"base": "oral.toml", "remove": ["ka"]}, "equations.depot", "unknown symbol 'ka'"),
]


@pytest.mark.parametrize(("case", "meta", "key", "problem"), _BAD_VARIANTS, ids=[c[0] for c in _BAD_VARIANTS])
def test_malformed_variant_names_the_file_the_key_and_the_fix(tmp_path, case, meta, key, problem):
    (tmp_path / "oral.toml").write_text(tomli_w.dumps(_VALID))
    path = tmp_path / "variant.toml"
    path.write_text(tomli_w.dumps({"model": {"name": "v", **meta}} if "base" in meta else {**copy.deepcopy(_VALID), "model": {"name": "v", **meta}}))
    with pytest.raises(ModelFileError) as err:
        read_model_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}") and problem in message and "Fix: " in message and "\n" not in message, message


def test_a_structure_table_points_to_variants(tmp_path):
    path = tmp_path / "old.toml"
    path.write_text(tomli_w.dumps({**_VALID, "structure": {"transit_compartments": 0}}))
    with pytest.raises(ModelFileError, match=r"structure: structural switches are no longer a table.*base"):
        read_model_file(path)


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [({"parameters.CL.transform": "logg"}, "unknown transform 'logg'"), ({"parameters.CL.value": 5000.0}, "outside its bounds")],
    ids=["unknown transform", "bounds that exclude the value"],
)
def test_malformed_parameter_table_names_the_parameter_and_the_fix(tmp_path, changes, fragment):
    doc = copy.deepcopy(_VALID)
    for dotted, value in changes.items():
        _set(doc, dotted, value)
    path = tmp_path / "model.toml"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(SpecError, match=fragment) as err:
        read_model_file(path)
    assert str(err.value).startswith(f"{path}: parameter 'CL'") and "Fix: " in str(err.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("[model\nname = 'x'\n", "not valid TOML"), ("[states.a]\nunit = '1'\n[states.a]\ninitial = 0\n", "declared twice")],
    ids=["not TOML", "a table declared twice"],
)
def test_text_that_is_not_toml_is_reported_with_the_file(tmp_path, text, problem):
    path = tmp_path / "model.toml"
    path.write_text(text)
    with pytest.raises(ModelFileError, match=problem) as err:
        read_model_file(path)
    assert str(err.value).startswith(f"{path}: file") and "Fix: " in str(err.value)


def test_a_valid_file_compiles_with_its_units_converted(tmp_path):
    """ka given in 1/h reads 24x larger in 1/day; a dose in mg enters a state in mg unscaled."""
    path = tmp_path / "model.toml"
    path.write_text(tomli_w.dumps(_VALID))
    compiled = compile_model(read_model_file(path))
    defn = compiled.definition
    theta = jnp.asarray([p.value for p in defn.parameters])
    assert defn.parameters[0].value == pytest.approx(24.0) and defn.parameters[0].internal_unit == "1/day"
    y = jnp.asarray([2.0, 3.0])
    ka, ke = 24.0, 5.0 / 50.0 * 24.0
    np.testing.assert_allclose(compiled.vector_field(0.0, y, compiled.prepare(theta)), [-ka * 2.0, ka * 2.0 - ke * 3.0], rtol=1e-15)
    np.testing.assert_allclose(compiled.observables(0.0, y, compiled.prepare(theta)), [3.0 / 50.0], rtol=1e-15)
    assert compiled.ode_parameters == ("ka", "CL", "V", "F", "tlag")
    assert defn.doses[0].scale == 1.0
    assert Path(defn.path) == path


@pytest.mark.slow
def test_reference_model_file_simulates_like_the_hand_written_model(model):
    """100 sampled patients under four regimens, both solved at rtol 1e-12, atol 1e-14: every
    observable agrees to 1e-10 (relative). At the default tolerances a last-bit difference in the
    vector field can change the adaptive step sequence, and the solutions then differ at the level
    of rtol, which would prove nothing."""
    from il2treg import regimen as rg

    written, model = model, handwritten.model()
    params = il2treg.sample_population(model, 100, seed=11)
    regimens = {name: rg.named(name) for name in ("lupil2", "he2020", "dilfrequency", "daily_low_dose")}
    grid = np.linspace(0.0, 84.0, 85) + 0.3  # between dose times and on none of them
    tight = il2treg.SolverOptions(rtol=1e-12, atol=1e-14, max_steps=200_000)
    hand = il2treg.simulate_regimens(model, regimens, grid, params, options=tight)
    file = il2treg.simulate_regimens(written, regimens, grid, il2treg.Parameters(params.values, written.parameter_names), options=tight)
    for name in regimens:
        assert np.all(np.asarray(hand[name].status) == 0) and np.all(np.asarray(file[name].status) == 0), name
        assert file[name].names == hand[name].names
        np.testing.assert_allclose(np.asarray(file[name].values), np.asarray(hand[name].values), rtol=1e-10, atol=0, err_msg=name)


def test_a_model_written_by_the_user_runs_through_simulate(monkeypatch, capsys, tmp_path):
    """A mechanism the package does not ship (oral PK driving an effect compartment and a
    turnover response), written to a temporary folder and simulated by the command."""
    doc = copy.deepcopy(_VALID)
    doc["model"]["name"] = "pk_effect_turnover"
    doc["states"]["effect_site"] = {"unit": "mg/L", "initial": 0}
    doc["states"]["response"] = {"unit": "1", "initial": 1}
    doc["parameters"]["ke0"] = {"value": 0.5, "unit": "1/h", **_PARAM}
    doc["parameters"]["kout"] = {"value": 0.1, "unit": "1/h", **_PARAM}
    doc["parameters"]["ec50"] = {"value": 2.0, "unit": "mg/L", **_PARAM}
    doc["equations"]["effect_site"] = "ke0 * (central / V - effect_site)"
    doc["equations"]["response"] = "kout * (1 + effect_site / (ec50 + effect_site)) - kout * response"
    doc["observables"]["response"] = {"unit": "1", "expression": "response"}
    path = tmp_path / "my_model.toml"
    path.write_text(tomli_w.dumps(doc))
    model = il2treg.load_model(path)
    assert model.observable_names == ("conc", "response") and model.state_names[-1] == "response"
    assert model.mechanism.ode_parameters == model.parameter_names
    doses = tmp_path / "doses.csv"
    doses.write_text("TIME,AMT\n0,100\n1,100\n")
    code, stdout, _ = run_cli(monkeypatch, capsys, "simulate", "--model", str(path), "--regimen", str(doses),
                              "--n", "5", "--days", "3", "--dt", "0.25", "--out", str(tmp_path / "sim"))  # fmt: skip
    assert code == 0, stdout
    frame = pd.read_csv(tmp_path / "sim" / "simulation.csv")
    assert set(frame.DVID) == {"conc", "response"} and sorted(frame.ID.unique()) == [1, 2, 3, 4, 5]
    response = frame[frame.DVID == "response"].pivot(index="ID", columns="TIME", values="VALUE")
    assert np.all(response[0.0] == 1.0) and np.all(response.max(axis=1) > 1.0)  # baseline, then a rise
    assert "response" in stdout and (tmp_path / "sim" / "treg_dynamics.png").stat().st_size > 10_000


def test_the_worked_example_of_models_readme_runs(tmp_path, monkeypatch):
    """models/README.md's model file and Python snippet, as written: the file loads, and the
    snippet simulates a response that rises above baseline after the doses."""
    import re

    text = (MODELS_DIR / "README.md").read_text(encoding="utf-8")
    toml_block = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    python_block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    (tmp_path / "my_model.toml").write_text(toml_block)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(python_block, scope)
    response = np.asarray(scope["sim"]["response"])
    assert scope["model"].observable_names == ("conc", "response")
    assert response.shape == (100, 73) and np.all(response[:, 0] == 1.0) and np.all(response[:, 24] > 1.0)


# ----------------------------------------------------------------------------- covariates and per-hour units

PHENO_MODEL = Path(__file__).resolve().parents[1] / "fits" / "pheno" / "pheno.toml"


def test_a_unit_per_hour_that_units_does_not_list_is_held_per_day():
    """pheno's POP_CL is in L/h/kg: held in L/day/kg (x24) so that the equations' time is days;
    reported back in L/h/kg."""
    model = il2treg.load_model(PHENO_MODEL)
    cl = model.spec["POP_CL"]
    assert (cl.unit, cl.internal_unit) == ("L/h/kg", "L/day/kg")
    assert cl.value == pytest.approx(0.00469307 * 24, rel=1e-15)
    assert cl.to_declared(cl.value) == pytest.approx(0.00469307, rel=1e-15)
    assert model.spec.covariate_names == ("WGT", "APGR")


def test_covariate_parameters_enter_the_equations_like_any_other():
    """One 25 mg bolus into a 1.4 kg neonate with Apgar 7 (V = POP_VC WGT) and one with Apgar 3
    (V larger by 1 + COVAPGR): C(t) = D/V exp(-CL/V t), CL = POP_CL WGT."""
    model = il2treg.load_model(PHENO_MODEL)
    regimen = il2treg.Regimen(times=[0.0], amounts=[25.0])
    t = np.array([0.5, 2.0])
    for apgar, factor in ((7.0, 1.0), (3.0, 1.1)):
        params = model.typical().replace(WGT=1.4, APGR=apgar)
        sim = il2treg.simulate(model, regimen, t, params)
        cl, v = 0.00469307 * 24 * 1.4, 1.00916 * 1.4 * factor
        np.testing.assert_allclose(np.asarray(sim.values)[..., 0].ravel(), 25 / v * np.exp(-cl / v * t), rtol=1e-6)


def test_a_covariate_parameter_has_no_variability(tmp_path):
    import tomllib

    doc = tomllib.loads(PHENO_MODEL.read_text())
    doc["parameters"]["WGT"]["cv_percent"] = 10
    path = tmp_path / "pheno.toml"
    path.write_text(tomli_w.dumps(doc))
    with pytest.raises(SpecError, match=r"parameter 'WGT': a covariate \(group = \"covariate\"\) is read from the data, so it has no variability"):
        il2treg.load_model(path)


def test_the_multistudy_file_is_the_favoured_mechanism_with_its_posterior_modes():
    """models/il2_treg_sledai_multistudy.toml is the mechanism of lowest AIC in
    fits/multistudy/fits.json (the same equations), with that fit's estimates to 4 significant
    digits and each prior where the fit's was; the SLEDAI link's priors stay at the reference's values."""
    import json

    record = json.loads((Path(__file__).resolve().parents[1] / "fits" / "multistudy" / "fits.json").read_text())["fits"]
    best = min(record, key=lambda m: record[m]["aic"])
    multistudy, favoured, reference = (
        il2treg.load_model(n) for n in ("il2_treg_sledai_multistudy", best, "il2_treg_sledai")
    )
    ours, theirs = multistudy.mechanism.definition, favoured.mechanism.definition
    for table in ("states", "constants", "quantities", "equations", "observables", "doses"):
        assert getattr(ours, table) == getattr(theirs, table), table
    assert multistudy.parameter_names == favoured.parameter_names
    for name, value in zip(record[best]["names"], record[best]["estimates"], strict=True):
        spec = multistudy.spec[name]
        assert spec.declared_value == float(f"{value:.4g}"), name
        assert (spec.prior_center, spec.prior_sd) == (favoured.spec[name].prior_center, favoured.spec[name].prior_sd), (
            name
        )
        assert "fits/multistudy" in spec.source, name
    for name in ("pmax", "imax"):  # recalibrated here; the prior stays the reference's
        assert multistudy.spec[name].prior_center == reference.spec[name].value, name
