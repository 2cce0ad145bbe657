"""Specification of il2treg.units: aldesleukin conversions and reading units of parameter tables."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import il2treg  # noqa: F401  (enables float64)
from il2treg import units
from il2treg.errors import InputError, UnitError


def test_derived_aldesleukin_facts_match_literature_section_3_1_to_its_rounding():
    assert round(units.SPECIFIC_ACTIVITY_IU_PER_MG / 1e6, 1) == 16.4  # MIU/mg
    assert round(units.iu_to_ug(1e6), 1) == 61.1  # µg per MIU
    assert round(units.iu_to_nmol(1e6), 2) == 3.99  # nmol per MIU
    assert round(units.iu_per_ml_to_pM(1.0), 1) == 4.0  # pM per IU/mL
    assert round(units.pM_to_pg_per_ml(units.iu_per_ml_to_pM(1.0))) == 61  # pg/mL per IU/mL
    assert round(units.iu_to_ug(1.5e6)) == 92  # µg in 1.5 MIU
    assert round(units.iu_to_nmol(1.5e6), 1) == 6.0  # nmol in 1.5 MIU


def test_proleukin_vial_18_miu_is_1_1_mg():
    assert units.ug_to_iu(1100.0) == pytest.approx(18e6, rel=1e-14)


@pytest.mark.parametrize(
    ("forward", "inverse"),
    [
        (units.iu_to_ug, units.ug_to_iu),
        (units.iu_to_nmol, units.nmol_to_iu),
        (units.iu_per_ml_to_pM, units.pM_to_iu_per_ml),
        (units.pg_per_ml_to_pM, units.pM_to_pg_per_ml),
        (units.hours_to_days, units.days_to_hours),
    ],
)
def test_each_conversion_is_undone_by_its_inverse(forward, inverse):
    values = np.array([0.0, 1e-3, 1.0, 1.5e6, 3.7e9])
    np.testing.assert_allclose(inverse(forward(values)), values, rtol=1e-14)


def test_time_conversions():
    assert units.hours_to_days(36.0) == 1.5
    assert units.days_to_hours(0.25) == 6.0


def test_bsa_mosteller_is_sqrt_height_times_weight_over_3600():
    assert units.bsa_mosteller(180.0, 80.0) == pytest.approx(2.0, rel=1e-15)
    assert units.bsa_mosteller(165.0, 60.0) == pytest.approx(math.sqrt(165 * 60 / 3600), rel=1e-15)


def test_dose_per_m2_scales_with_body_surface_area():
    assert units.miu_per_m2_to_iu(1.0, 1.61) == pytest.approx(1.61e6, rel=1e-15)
    assert units.miu_per_m2_to_iu(0.26, 2.0) == pytest.approx(0.52e6, rel=1e-15)


def test_functions_accept_jax_arrays_under_jit_and_grad_in_float64():
    out = jax.jit(units.iu_per_ml_to_pM)(jnp.ones(3))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, units.PM_PER_IU_PER_ML)
    grad_bsa = jax.grad(units.bsa_mosteller)(180.0, 80.0)
    assert grad_bsa == pytest.approx(0.5 * 80.0 / 3600.0 / 2.0, rel=1e-12)


@pytest.mark.parametrize(
    ("value", "unit", "expected", "internal"),
    [
        (7.2, "L/h", 172.8, "L/day"),
        (120.0, "mL/min", 172.8, "L/day"),
        (3.0, "L/day", 3.0, "L/day"),
        (12.0, "h", 0.5, "day"),
        (30.0, "min", 1.0 / 48.0, "day"),
        (2.0, "week", 14.0, "day"),
        (0.5, "1/h", 12.0, "1/day"),
        (7.0, "1/week", 1.0, "1/day"),
        (0.3, "1/day", 0.3, "1/day"),
        (500.0, "mL", 0.5, "L"),
        (2.0, "nM", 2000.0, "pM"),
        (15.3, "pg/mL", 1.0, "pM"),
        (1.0, "IU/mL", units.PM_PER_IU_PER_ML, "pM"),
        (1.5, "MIU", 1.5e6, "IU"),
        (1.1, "mg", 18e6, "IU"),
        (1.0, "nmol", 1.0 / units.NMOL_PER_IU, "IU"),
        (250.0, "IU", 250.0, "IU"),
        (12.0, "cells/uL", 12.0, "cells/uL"),
        (0.4, "1", 0.4, "1"),
        (5.0, "%", 5.0, "%"),
        (8.0, "points", 8.0, "points"),
    ],
)
def test_to_internal_reads_parameter_table_units(value, unit, expected, internal):
    converted, internal_unit = units.to_internal(value, unit)
    assert internal_unit == internal
    assert converted == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("µg", "ug"),  # micro sign U+00B5
        ("μg", "ug"),  # Greek mu U+03BC
        ("cells/µL", "cells/uL"),
        ("d", "day"),
        ("days", "day"),
        ("hour", "h"),
        ("hours", "h"),
        ("1/d", "1/day"),
        ("1/hours", "1/h"),
        ("L/d", "L/day"),
        ("L / hour", "L/h"),
        ("ml/min", "mL/min"),
    ],
)
def test_alternative_spellings_mean_the_canonical_unit(alias, canonical):
    assert units.to_internal(3.0, alias) == units.to_internal(3.0, canonical)


@pytest.mark.parametrize("unit", units.accepted_units())
def test_every_accepted_unit_round_trips_through_its_internal_unit(unit):
    value, internal = units.to_internal(2.5, unit)
    assert units.convert(value, internal, unit) == pytest.approx(2.5, rel=1e-14)


def test_convert_between_two_non_internal_units():
    assert units.convert(7.2, "L/h", "mL/min") == pytest.approx(120.0, rel=1e-14)
    assert units.convert(1.0, "MIU", "ug") == pytest.approx(61.1, rel=1e-3)
    assert units.convert(1.0, "IU/mL", "pg/mL") == pytest.approx(61.1, rel=1e-3)


def test_unknown_unit_is_rejected_with_the_accepted_list_and_a_fix():
    with pytest.raises(UnitError) as caught:
        units.to_internal(1.0, "furlong/fortnight")
    message = str(caught.value)
    assert "furlong/fortnight" in message
    assert "L/h" in message and "IU/mL" in message and "cells/uL" in message
    assert "Fix:" in message


def test_incompatible_dimensions_are_rejected_naming_both_units():
    with pytest.raises(UnitError) as caught:
        units.convert(1.0, "IU", "pM")
    message = str(caught.value)
    assert "'IU'" in message and "'pM'" in message and "Fix:" in message


def test_unit_error_is_an_input_error():
    assert issubclass(UnitError, InputError) and issubclass(UnitError, ValueError)
