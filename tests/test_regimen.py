"""Specification of il2treg.regimen: regimens as data, builders, batching and NONMEM dosing rows."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import il2treg  # noqa: F401  (enables float64)
from il2treg import regimen as rg
from il2treg.errors import RegimenError
from il2treg.regimen import Regimen

LUPIL2_TIMES = [0.0, 1.0, 2.0, 3.0, 4.0] + [7.0 * k for k in range(1, 12)]


def superposed_depot(regimen: Regimen, t: jax.Array, k: float = 1.3) -> jax.Array:
    """A one-compartment bolus response, sum_i amount_i exp(-k (t - t_i)) for t >= t_i (IU)."""
    elapsed = t[:, None] - regimen.times[None, :]
    return jnp.sum(jnp.where(elapsed >= 0, regimen.amounts * jnp.exp(-k * elapsed), 0.0), axis=-1)


# ------------------------------------------------------------------------- named regimens


def test_lupil2_doses_daily_on_days_0_to_4_then_weekly_to_day_77():
    r = rg.lupil2()
    assert r.times.tolist() == LUPIL2_TIMES
    assert r.amounts.tolist() == [1.5e6] * 16
    assert r.name == "lupil2" and r.route == "sc"
    assert rg.LUPIL2_ASSESSMENT_DAY == 84.0 > r.times[-1]


def test_lupil2_is_five_daily_doses_then_weekly_after_a_three_day_gap():
    built = rg.daily(1.5e6, 5).then(rg.weekly(1.5e6, 11), gap=3)
    np.testing.assert_array_equal(built.times, rg.lupil2().times)
    np.testing.assert_array_equal(built.amounts, rg.lupil2().amounts)


def test_lupil2_arguments_change_the_number_of_weekly_doses_and_the_dose():
    r = rg.lupil2(n_weekly=2, dose_iu=1e6)
    assert r.times.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 7.0, 14.0]
    assert float(r.total_iu) == 7e6


def test_named_builds_registered_regimens_case_insensitively():
    assert set(rg.NAMED_REGIMENS) >= {"lupil2", "placebo"}
    np.testing.assert_array_equal(rg.named("LUPIL2", n_weekly=3).times, rg.lupil2(3).times)
    assert rg.named("placebo").n_doses == 0


def test_unknown_regimen_name_lists_the_known_names():
    with pytest.raises(RegimenError, match="Known regimens: lupil2, charact_cycles, he2020, dilfrequency, transreg, weekly_only, daily_low_dose, placebo"):
        rg.named("lupil3")


def test_unknown_argument_of_a_named_regimen_is_a_regimen_error():
    with pytest.raises(RegimenError, match="n_weekly"):
        rg.named("lupil2", n_weeks=4)


# ------------------------------------------------------------------------- builders and algebra


def test_builders_place_doses_at_start_plus_interval_times_k():
    assert rg.daily(1e6, 3, start=2.0).times.tolist() == [2.0, 3.0, 4.0]
    assert rg.every(1e6, 2.0, 4).times.tolist() == [0.0, 2.0, 4.0, 6.0]
    assert rg.weekly(2e6, 3, start=1.0).times.tolist() == [1.0, 8.0, 15.0]
    assert rg.weekly(2e6, 3).amounts.tolist() == [2e6] * 3


def test_none_and_placebo_have_no_doses():
    for r in (rg.none(), rg.placebo()):
        assert r.times.shape == r.amounts.shape == (0,)
        assert r.n_doses == 0 and float(r.total_iu) == 0.0


def test_cycles_repeat_a_block_every_period():
    he_2020 = rg.cycles(rg.every(1e6, 2.0, 7), period_days=28.0, n_cycles=3)
    expected = [c * 28.0 + 2.0 * k for c in range(3) for k in range(7)]
    assert he_2020.times.tolist() == expected
    assert float(he_2020.total_iu) == 21e6


def test_cycles_that_would_overlap_are_rejected():
    with pytest.raises(RegimenError, match=r"span of 4.0 days"):
        rg.cycles(rg.daily(1e6, 5), period_days=4.0, n_cycles=2)


def test_shift_moves_every_dose():
    assert rg.daily(1e6, 2).shift(10.0).times.tolist() == [10.0, 11.0]


def test_then_with_a_regimen_without_doses_returns_the_other():
    r = rg.weekly(1e6, 2)
    assert rg.none().then(r, gap=3).times.tolist() == [0.0, 7.0]
    assert r.then(rg.none(), gap=3).times.tolist() == [0.0, 7.0]


def test_then_rejects_a_negative_gap():
    with pytest.raises(RegimenError, match="gap"):
        rg.daily(1e6, 2).then(rg.daily(1e6, 2), gap=-1.0)


def test_concat_merges_absolute_times_sorted_and_stable():
    a = Regimen([0.0, 2.0], [1.0, 2.0])
    b = Regimen([1.0, 2.0], [3.0, 4.0])
    merged = a + b
    assert merged.times.tolist() == [0.0, 1.0, 2.0, 2.0]
    assert merged.amounts.tolist() == [1.0, 3.0, 2.0, 4.0]
    np.testing.assert_array_equal(rg.concat(a, b).amounts, merged.amounts)
    assert rg.concat().n_doses == 0


def test_float64_is_kept_from_float32_and_integer_input():
    r = Regimen(np.array([0, 1], dtype=np.int32), np.array([1.5e6, 1.5e6], dtype=np.float32))
    assert r.times.dtype == r.amounts.dtype == jnp.float64
    assert rg.lupil2().times.dtype == jnp.float64


# ------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("times", "amounts", "field", "where"),
    [
        ([0.0, 1.0, np.nan], [1.0, 1.0, 1.0], "times", "dose index 2"),
        ([0.0, np.inf], [1.0, 1.0], "times", "dose index 1"),
        ([0.0, 1.0], [1.0, np.nan], "amounts", "dose index 1"),
        ([0.0, 1.0, 2.0], [1.0, -5.0, 1.0], "amounts", "dose index 1"),
        ([0.0, 3.0, 2.0], [1.0, 1.0, 1.0], "times", "dose index 2"),
        ([[0.0, 1.0], [2.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]], "times", "index (1, 1)"),
    ],
)
def test_invalid_dose_is_rejected_naming_field_index_and_fix(times, amounts, field, where):
    with pytest.raises(RegimenError) as caught:
        Regimen(times, amounts)
    message = str(caught.value)
    assert f"'{field}'" in message and where in message and "Fix:" in message


def test_times_and_amounts_of_different_shapes_are_rejected():
    with pytest.raises(RegimenError, match="differ in shape"):
        Regimen([0.0, 1.0], [1.0])


def test_scalar_times_are_rejected():
    with pytest.raises(RegimenError, match="dose axis"):
        Regimen(0.0, 1.0)


def test_unknown_route_is_rejected():
    with pytest.raises(RegimenError, match="'route'"):
        Regimen([0.0], [1.0], route="iv")


def test_negative_times_are_allowed_if_sorted():
    assert Regimen([-7.0, 0.0], [1.0, 1.0]).times.tolist() == [-7.0, 0.0]


@pytest.mark.parametrize("bad", [-1, 2.5, "3"])
def test_builder_counts_must_be_whole_numbers(bad):
    with pytest.raises(RegimenError, match="whole number"):
        rg.daily(1e6, bad)


def test_builder_interval_must_be_positive():
    with pytest.raises(RegimenError, match="interval_days"):
        rg.every(1e6, 0.0, 3)


def test_validation_is_skipped_when_traced_under_jit():
    build = jax.jit(lambda t, a: Regimen(t, a).total_iu)
    assert float(build(jnp.array([2.0, 1.0]), jnp.array([1.0, 2.0]))) == 3.0


# ------------------------------------------------------------------------- batching


def test_stack_pads_with_zero_doses_at_each_patients_last_dose_time():
    batch = rg.stack([rg.daily(1e6, 3, start=1.0), rg.placebo(), rg.weekly(2e6, 1, start=5.0)])
    assert batch.times.shape == batch.amounts.shape == (3, 3)
    assert batch.times.tolist() == [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]]
    assert batch.amounts.tolist() == [[1e6, 1e6, 1e6], [0.0, 0.0, 0.0], [2e6, 0.0, 0.0]]
    assert batch.total_iu.tolist() == [3e6, 0.0, 2e6]


def test_stack_to_a_given_number_of_doses_and_keeps_a_common_name():
    batch = rg.stack([rg.lupil2(), rg.lupil2(2)], n_doses=20)
    assert batch.times.shape == (2, 20) and batch.name == "lupil2"
    assert rg.stack([rg.lupil2(), rg.placebo()]).name == ""


def test_stack_rejects_too_few_doses_and_an_empty_list():
    with pytest.raises(RegimenError, match="n_doses >= 16"):
        rg.stack([rg.lupil2()], n_doses=5)
    with pytest.raises(RegimenError, match="no regimens"):
        rg.stack([])


def test_pad_appends_zero_doses_at_the_last_dose_time_and_keeps_name_and_route():
    padded = rg.pad(rg.daily(1e6, 3, start=1.0), 5)
    assert padded.times.tolist() == [1.0, 2.0, 3.0, 3.0, 3.0] and padded.amounts.tolist() == [1e6] * 3 + [0.0] * 2
    assert rg.pad(rg.placebo(), 2).times.tolist() == [0.0, 0.0] and rg.pad(rg.lupil2(), 16).n_doses == 16
    assert rg.pad(rg.lupil2(), 20).name == "lupil2"
    with pytest.raises(RegimenError, match="n_doses >= 16"):
        rg.pad(rg.lupil2(), 15)
    with pytest.raises(RegimenError, match="unbatched"):
        rg.pad(rg.stack([rg.lupil2()]), 20)


def test_padding_does_not_change_a_simulation():
    grid = jnp.linspace(0.0, 90.0, 181)
    regimens = [rg.lupil2(), rg.placebo(), rg.daily(1e6, 5)]
    batch = rg.stack(regimens, n_doses=20)
    for row, r in enumerate(regimens):
        padded = Regimen(batch.times[row], batch.amounts[row])
        np.testing.assert_array_equal(superposed_depot(padded, grid), superposed_depot(r, grid))


def test_vmap_and_jit_over_a_stacked_regimen_equal_a_loop_in_float64():
    grid = jnp.linspace(0.0, 30.0, 31)
    regimens = [rg.lupil2(), rg.daily(1e6, 5), rg.placebo()]
    batch = rg.stack(regimens)
    batched = jax.jit(jax.vmap(lambda r: superposed_depot(r, grid)))(batch)
    assert batched.dtype == jnp.float64 and batched.shape == (3, 31)
    for row, r in enumerate(regimens):
        np.testing.assert_allclose(batched[row], superposed_depot(r, grid), rtol=1e-14)


def test_gradient_with_respect_to_dose_amounts_is_finite():
    grads = eqx.filter_grad(lambda r: superposed_depot(r, jnp.array([10.0])).sum())(rg.lupil2())
    assert grads.amounts.dtype == jnp.float64 and np.all(np.isfinite(grads.amounts))


def test_algebra_on_a_batched_regimen_is_rejected():
    with pytest.raises(RegimenError, match="unbatched"):
        rg.stack([rg.lupil2()]).then(rg.lupil2(), gap=1.0)


# ------------------------------------------------------------------------- NONMEM rows

ROUND_TRIP_REGIMENS = {
    "lupil2": rg.lupil2(),
    "placebo": rg.placebo(),
    "tenth-day interval": rg.every(1e5, 0.1, 12, start=0.3),
    "cycles": rg.cycles(rg.every(1e6, 2.0, 7), 28.0, 3),
    "irregular": Regimen([0.0, 0.5, 0.5, 3.25, 10.0], [1e6, 2e6, 0.0, 1e6, 1e6]),
    "single": Regimen([2.0], [4.5e5]),
}


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("name", list(ROUND_TRIP_REGIMENS))
def test_to_nonmem_then_from_nonmem_reproduces_the_regimen_exactly(name, compress, tmp_path):
    r = ROUND_TRIP_REGIMENS[name]
    rows = rg.to_nonmem(r, compress=compress)
    path = tmp_path / "doses.csv"
    rows.to_csv(path, index=False)
    for back in (rg.from_nonmem(rows)[1], rg.read_regimen_csv(path)):
        assert back.times.dtype == jnp.float64
        np.testing.assert_array_equal(back.times, r.times)
        np.testing.assert_array_equal(back.amounts, r.amounts)


def test_to_nonmem_writes_nonmem_columns_and_compresses_lupil2_to_two_rows():
    rows = rg.to_nonmem(rg.lupil2())
    assert list(rows.columns) == ["ID", "TIME", "EVID", "AMT", "CMT", "ADDL", "II"]
    assert rows[["TIME", "ADDL", "II"]].values.tolist() == [[0.0, 4, 1.0], [7.0, 10, 7.0]]
    assert len(rg.to_nonmem(rg.lupil2(), compress=False)) == 16


def test_a_dict_of_regimens_round_trips_by_id():
    regimens = {101: rg.lupil2(), 102: rg.placebo(), 103: rg.daily(1e6, 5)}
    back = rg.from_nonmem(rg.to_nonmem(regimens))
    assert list(back) == [101, 102, 103]
    for patient, r in regimens.items():
        np.testing.assert_array_equal(back[patient].times, r.times)


def test_addl_ii_expansion_equals_explicit_rows():
    compact = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 7.0], "AMT": [1.5e6, 1.5e6],
                            "ADDL": [4, 10], "II": [1.0, 7.0]})
    explicit = pd.DataFrame({"TIME": LUPIL2_TIMES, "AMT": [1.5e6] * 16})
    expanded, listed = rg.from_nonmem(compact)[1], rg.from_nonmem(explicit)[1]
    np.testing.assert_array_equal(expanded.times, listed.times)
    np.testing.assert_array_equal(expanded.amounts, listed.amounts)
    np.testing.assert_array_equal(expanded.times, LUPIL2_TIMES)


def test_additional_doses_are_merged_in_time_order_with_later_rows():
    rows = pd.DataFrame({"TIME": [0.0, 3.0], "AMT": [1.0, 5.0], "ADDL": [2, 0], "II": [2.0, 0.0]})
    r = rg.from_nonmem(rows)[1]
    assert r.times.tolist() == [0.0, 2.0, 3.0, 4.0]
    assert r.amounts.tolist() == [1.0, 1.0, 5.0, 1.0]


def test_only_evid_1_rows_are_doses_and_ids_without_doses_get_no_doses(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(
        "ID,TIME,EVID,AMT,CMT,DV\n"
        "1,0,1,1500000,1,.\n"
        "1,0.25,0,.,2,12.5\n"
        "1,1,1,1500000,1,.\n"
        "2,0,0,.,2,3.1\n"
    )
    regimens = rg.from_nonmem(path)
    assert regimens[1].times.tolist() == [0.0, 1.0]
    assert regimens[2].n_doses == 0


def test_text_ids_are_kept_as_text():
    rows = pd.DataFrame({"ID": ["P-01", "P-02"], "TIME": [0.0, 0.0], "AMT": [1.0, 2.0]})
    assert list(rg.from_nonmem(rows)) == ["P-01", "P-02"]


def test_read_regimen_csv_refuses_more_than_one_id(tmp_path):
    path = tmp_path / "two.csv"
    rg.to_nonmem({1: rg.lupil2(), 2: rg.placebo()}).to_csv(path, index=False)
    with pytest.raises(RegimenError, match="split the file"):
        rg.read_regimen_csv(path)


@pytest.mark.parametrize(
    ("csv", "column", "row"),
    [
        ("ID,TIME,AMT\n1,0,1e6\n1,1,\n", "AMT", 2),
        ("ID,TIME,AMT\n1,0,1e6\n1,1,-5\n", "AMT", 2),
        ("ID,TIME,AMT\n1,0,1e6\n1,1,abc\n", "AMT", 2),
        ("ID,TIME,AMT\n1,0,1e6\n1,.,1e6\n", "TIME", 2),
        ("ID,TIME,AMT\n1,0,1e6\n1,1x,1e6\n", "TIME", 2),
        ("ID,TIME,AMT\n1,0,1e6\n1,5,1e6\n1,2,1e6\n", "TIME", 3),
        ("ID,TIME,EVID,AMT\n1,0,1,1e6\n1,1,2,1e6\n", "EVID", 2),
        ("ID,TIME,AMT,CMT\n1,0,1e6,1\n1,1,1e6,2\n", "CMT", 2),
        ("ID,TIME,AMT,ADDL,II\n1,0,1e6,3,0\n", "II", 1),
        ("ID,TIME,AMT,ADDL,II\n1,0,1e6,0,0\n1,1,1e6,1.5,1\n", "ADDL", 2),
        ("ID,TIME,AMT,ADDL\n1,0,1e6,2\n", "ADDL", 1),
        ("ID,TIME,AMT,RATE\n1,0,1e6,100\n", "RATE", 1),
        ("ID,TIME,AMT\n1,0,1e6\n2,0,1e6\n1,1,1e6\n", "ID", 3),
        ("ID,TIME,AMT\n1,0,1e6\n,1,1e6\n", "ID", 2),
    ],
)
def test_bad_dosing_rows_are_rejected_naming_column_and_data_row(csv, column, row, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(csv)
    with pytest.raises(RegimenError) as caught:
        rg.from_nonmem(path)
    message = str(caught.value)
    assert f"column {column}" in message and f"data row {row}" in message and "Fix:" in message


@pytest.mark.parametrize("missing", ["TIME", "AMT"])
def test_missing_required_column_is_named(missing):
    rows = pd.DataFrame({"TIME": [0.0], "AMT": [1.0]}).drop(columns=missing)
    with pytest.raises(RegimenError, match=f"required column {missing} is missing"):
        rg.from_nonmem(rows)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "is empty"),
        (b"ID,TIME,AMT\n", "no data rows"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not a readable CSV table"),
    ],
)
def test_empty_or_non_table_files_are_rejected(content, match, tmp_path):
    path = tmp_path / "doses.csv"
    path.write_bytes(content)
    with pytest.raises(RegimenError, match=match):
        rg.from_nonmem(path)


def test_missing_file_and_non_table_objects_are_rejected(tmp_path):
    with pytest.raises(RegimenError, match="does not exist"):
        rg.from_nonmem(tmp_path / "nope.csv")
    with pytest.raises(RegimenError, match="DataFrame"):
        rg.from_nonmem([[0.0, 1.5e6]])


def test_literature_regimens_follow_their_sources():
    """Doses and timing as the builders' docstrings cite them (../shared/literature.md)."""
    he = rg.named("he2020")  # 1 MIU every other day for 2 weeks, 2 weeks off, 3 cycles
    np.testing.assert_allclose(np.asarray(he.times)[:8], [0, 2, 4, 6, 8, 10, 12, 28])
    assert he.n_doses == 21 and float(he.total_iu) == pytest.approx(21e6)
    dil = rg.named("dilfrequency", bsa_m2=2.0)  # 0.26 MIU/m2 every 3 days
    np.testing.assert_allclose(np.asarray(dil.amounts), 0.52e6)
    assert np.all(np.diff(np.asarray(dil.times)) == 3.0) and float(dil.times[-1]) < 84
    charact = rg.named("charact_cycles")  # four 5-day courses of 1.5 MIU/day
    assert charact.n_doses == 20 and set(np.diff(np.asarray(charact.times))) == {1.0, 17.0}
    transreg = rg.named("transreg")  # 1 MIU/day x 5, then every 2 weeks
    np.testing.assert_allclose(np.asarray(transreg.times)[4:7], [4, 14, 28])
    assert rg.named("weekly_only").n_doses == 12 and rg.named("daily_low_dose").n_doses == 56
    for name in rg.NAMED_REGIMENS:
        assert rg.named(name).name == name
    with pytest.raises(RegimenError, match="bsa_m2"):
        rg.named("dilfrequency", bsa_m2=-1.0)


def test_a_regimen_prints_as_a_dose_table():
    """print(regimen) is a table like mrgsolve's event objects, runs folded into ADDL/II."""
    text = str(rg.lupil2())
    assert text.splitlines() == [
        "Regimen 'lupil2': 16 doses from day 0 to 77, 24000000 in total",
        " time (day)   amount  input  addl  ii (day)",
        "          0  1500000     sc     4         1",
        "          7  1500000     sc    10         7",
    ]
    assert repr(rg.lupil2()) == text
    table = rg.lupil2().table()
    assert list(table.columns) == ["time", "amount", "input", "addl", "ii"]
    assert table[["time", "addl", "ii"]].to_numpy().tolist() == [[0.0, 4, 1.0], [7.0, 10, 7.0]]
    odd = rg.Regimen(times=[0.0, 1.0 / 3.0], amounts=[1.0, 2.5])
    assert str(odd).splitlines()[1:] == [" time (day)  amount  input  addl  ii (day)",
                                         "          0       1     sc     0         .",
                                         "   0.333333     2.5     sc     0         ."]  # fmt: skip
    assert str(rg.Regimen(times=[], amounts=[])) == "Regimen: no doses"
    assert "2 patients (batched, 16 dose slots each)" in str(rg.stack([rg.lupil2(), rg.lupil2()]))
    with pytest.raises(RegimenError, match=r"table\(\) needs unbatched regimens"):
        rg.stack([rg.lupil2(), rg.lupil2()]).table()
