"""Specification of model files: every parameter documented, bad files rejected with the fix."""

from __future__ import annotations

import tomllib

import pytest

import il2treg
from handwritten import PARAMETER_NAMES
from il2treg.errors import SpecError
from il2treg.spec import MODELS_DIR, parse_spec, read_spec, update_values

MODEL_FILE = MODELS_DIR / "il2_treg_sledai.toml"


@pytest.fixture()
def doc():
    return tomllib.loads(MODEL_FILE.read_text())


def test_every_parameter_has_unit_bounds_transform_variability_and_source():
    spec = read_spec("il2_treg_sledai", required=PARAMETER_NAMES)
    assert spec.names == PARAMETER_NAMES
    for p in spec.params:
        assert p.unit and p.source.strip() and p.description
        assert p.bounds[0] <= p.value <= p.bounds[1]
        assert p.transform in ("log", "logit", "identity")
        assert any(tag in p.source for tag in ("READ", "DERIVED", "ASSUMPTION")), p.name


def test_values_are_converted_to_internal_units():
    spec = read_spec("il2_treg_sledai")
    assert spec["ka"].unit == "1/h" and spec["ka"].value == pytest.approx(0.21 * 24)
    assert spec["CL"].internal_unit == "L/day" and spec["CL"].value == pytest.approx(9.0 * 24)
    assert spec["tlag"].value == pytest.approx(0.45 / 24)


def test_unknown_parameter_is_rejected_with_the_fix(doc):
    doc["parameters"]["kaa"] = dict(doc["parameters"]["ka"])
    with pytest.raises(SpecError, match=r"unknown parameter 'kaa'.*Fix: remove it or rename it"):
        parse_spec(doc, where="m.toml", required=PARAMETER_NAMES)


def test_missing_parameter_is_rejected(doc):
    del doc["parameters"]["kd"]
    with pytest.raises(SpecError, match=r"parameter 'kd' is missing"):
        parse_spec(doc, where="m.toml", required=PARAMETER_NAMES)


def test_value_outside_its_bounds_is_rejected(doc):
    doc["parameters"]["ka"]["value"] = 5.0
    with pytest.raises(SpecError, match=r"parameter 'ka': value 5.0 is outside its bounds \[0.05, 1.0\]"):
        parse_spec(doc, where="m.toml")


def test_unknown_unit_is_rejected_naming_the_parameter(doc):
    doc["parameters"]["ka"]["unit"] = "furlongs"
    with pytest.raises(SpecError, match=r"parameter 'ka'.*furlongs"):
        parse_spec(doc, where="m.toml")


def test_missing_source_is_rejected(doc):
    del doc["parameters"]["V"]["source"]
    with pytest.raises(SpecError, match=r"parameter 'V' has no 'source'"):
        parse_spec(doc, where="m.toml")


def test_variability_needs_a_log_transform(doc):
    doc["parameters"]["tlag"]["cv_percent"] = 20
    with pytest.raises(SpecError, match="log-normal"):
        parse_spec(doc, where="m.toml")


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(SpecError, match=r"unknown model 'nope'.*il2_treg_sledai"):
        il2treg.load_model("nope")


def test_invalid_toml_is_reported(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname=")
    with pytest.raises(SpecError, match="not valid TOML"):
        il2treg.load_model(bad)


def test_update_values_changes_only_the_value_lines(tmp_path):
    copy = tmp_path / "m.toml"
    copy.write_text(MODEL_FILE.read_text())
    update_values(copy, {"imax": 0.5})
    before, after = MODEL_FILE.read_text().splitlines(), copy.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and changed == [(changed[0][0], "value = 0.5")]
    assert il2treg.load_model(copy).spec["imax"].value == 0.5


def test_parameter_table_in_models_readme_is_up_to_date():
    import subprocess
    import sys

    from il2treg.spec import MODELS_DIR

    script = MODELS_DIR.parent / "scripts" / "model_table.py"
    result = subprocess.run([sys.executable, str(script), "--check"], check=False, capture_output=True)
    assert result.returncode == 0, "models/README.md is stale: run python scripts/model_table.py"
