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
from il2treg.data import read_dataset
from il2treg.errors import RegimenError
from il2treg.events import DosingInput
from il2treg.records import DoseRecords
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
        ("ID,TIME,EVID,AMT\n1,0,1,1e6\n1,1,1,\n", "AMT", 2),
        ("ID,TIME,AMT\n1,0,1e6\n1,1,-5\n", "AMT", 2),
        ("ID,TIME,EVID,AMT\n1,0,1,1e6\n1,1,1,-5\n", "AMT", 2),
        ("ID,TIME,AMT\n1,0,1e6\n1,1,abc\n", "AMT", 2),
        ("ID,TIME,AMT\n1,0,1e6\n1,.,1e6\n", "TIME", 2),
        ("ID,TIME,AMT\n1,0,1e6\n1,1x,1e6\n", "TIME", 2),
        ("ID,TIME,AMT\n1,0,1e6\n1,5,1e6\n1,2,1e6\n", "TIME", 3),
        ("ID,TIME,EVID,AMT\n1,0,1,1e6\n1,1,7,1e6\n", "EVID", 2),
        ("ID,TIME,EVID,AMT\n1,0,1,1e6\n1,1,3,1e6\n", "AMT", 2),
        ("ID,TIME,AMT,CMT\n1,0,1e6,1\n1,1,1e6,2\n", "CMT", 2),
        ("ID,TIME,AMT,ADDL,II\n1,0,1e6,3,0\n", "II", 1),
        ("ID,TIME,AMT,ADDL,II\n1,0,1e6,0,0\n1,1,1e6,1.5,1\n", "ADDL", 2),
        ("ID,TIME,AMT,ADDL\n1,0,1e6,2\n", "II", 1),
        ("ID,TIME,AMT,RATE\n1,0,1e6,-1\n", "RATE", 1),
        ("ID,TIME,AMT,RATE\n1,0,1e6,-3\n", "RATE", 1),
        ("ID,TIME,AMT,SS,II\n1,0,1e6,1,0\n", "II", 1),
        ("ID,TIME,AMT,SS,II\n1,0,1e6,3,7\n", "SS", 1),
        ("ID,TIME,AMT,RATE,SS,II\n1,0,1e6,1e5,1,7\n", "RATE", 1),
        ("ID,TIME,AMT\n1,0,1e6\nP,1,1e6\n", "ID", 2),
        ("ID,TIME,AMT\n1,0,1e6\n,1,1e6\n", "ID", 2),
        ("ID,TIME,AMT\n1,-1,1e6\n", "TIME", 1),
    ],
)
def test_bad_dosing_rows_are_rejected_naming_column_and_data_row(csv, column, row, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text(csv)
    with pytest.raises(RegimenError) as caught:
        rg.from_nonmem(path)
    message = str(caught.value)
    assert (caught.value.column, caught.value.row) == (column, row), message
    assert str(path) in message and f"row {row}" in message and column in message and "Fix:" in message


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
        (b"\x89PNG\r\n\x1a\n\xff\xfe\x00", "not a text table"),
    ],
)
def test_empty_or_non_table_files_are_rejected(content, match, tmp_path):
    path = tmp_path / "doses.csv"
    path.write_bytes(content)
    with pytest.raises(RegimenError, match=match):
        rg.from_nonmem(path)


def test_missing_file_and_non_table_objects_are_rejected(tmp_path):
    with pytest.raises(RegimenError, match="not found"):
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


# ------------------------------------------------------------------------- NONMEM dose records

RECORD_TABLE = (
    "ID TIME EVID AMT RATE SS II ADDL CMT DV\n"
    "1 0 1 100 0 1 12 3 1 .\n"  # steady state, then three more every 12 h
    "1 2 0 . . . . . . 5.1\n"  # an observation: not a dose
    "1 30 3 . . . . . . .\n"  # reset: cancels the pending dose at 36 h
    "1 40 4 60 30 0 0 0 2 .\n"  # reset and a 2-h infusion into CMT 2
    "1 50 1 20 0 2 8 1 2 .\n"  # SS 2 into CMT 2 and one more 8 h later
    "2 0 0 . . . . . . 3.0\n"  # an ID without doses
)
INPUTS = (DosingInput(1), DosingInput(2))


def test_from_nonmem_reads_dose_records_as_a_dataset_does(tmp_path):
    path = tmp_path / "records.dta"
    path.write_text(RECORD_TABLE)
    regimens = rg.from_nonmem(path, doses=INPUTS, time_unit="h")
    data = read_dataset(path, observables=("conc",), doses=INPUTS, time_unit="h")
    r = regimens[1]
    real = data.dose_row[0] > 0
    np.testing.assert_array_equal(r.times, data.dose_time[0][real])
    np.testing.assert_array_equal(r.amounts, data.dose_amount[0][real])
    for field in ("input", "duration", "reset", "ss", "ii"):
        np.testing.assert_array_equal(getattr(r.records, field), getattr(data.records(), field)[0][real], err_msg=field)
    assert r.records.steady_states == 2
    # what the table says, in days: SS at 0 and its doses at 0.5 and 1 (the one at 1.5 cancelled
    # by the reset at 1.25), the reset-and-infusion at 40 h, SS 2 at 50 h and its dose at 58 h
    np.testing.assert_allclose(r.times, np.array([0, 12, 24, 30, 40, 50, 58]) / 24)
    assert r.records.input.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert r.records.reset.tolist() == [False, False, False, True, True, False, False]
    np.testing.assert_allclose(r.records.duration, [0, 0, 0, 0, 2 / 24, 0, 0])
    assert regimens[2].n_doses == 0 and regimens[2].records is None


def test_plain_nonmem_rows_give_a_regimen_without_records():
    rows = pd.DataFrame({"time": [0.0, 7.0], "amt": [1.5e6, 1.5e6], "cmt": [1, 1], "rate": [0, 0], "ss": [0, 0]})
    r = rg.from_nonmem(rows)[1]
    assert r.records is None and r.times.tolist() == [0.0, 7.0]


def test_a_regimen_with_records_round_trips_through_nonmem_rows(tmp_path):
    path = tmp_path / "records.dta"
    path.write_text(RECORD_TABLE)
    r = rg.from_nonmem(path, doses=INPUTS, time_unit="h")[1]
    rows = rg.to_nonmem(r, doses=INPUTS)
    assert list(rows.columns) == list(rg.NONMEM_COLUMNS)
    assert rows["EVID"].tolist().count(3) == 1 and rows["EVID"].tolist().count(4) == 1
    back = rg.from_nonmem(rows, doses=INPUTS)[1]
    np.testing.assert_array_equal(back.times, r.times)
    np.testing.assert_array_equal(back.amounts, r.amounts)
    for field in ("input", "reset", "ss", "ii"):
        np.testing.assert_array_equal(getattr(back.records, field), getattr(r.records, field), err_msg=field)
    np.testing.assert_allclose(back.records.duration, r.records.duration, rtol=1e-15)
    with pytest.raises(RegimenError, match=r"doses=model\.dosing_inputs"):
        rg.to_nonmem(r)  # CMT 2 cannot be written without the model's inputs


def test_compressed_rows_never_put_a_dose_where_a_later_reset_cancels_it():
    records = DoseRecords.plain(4)
    records = DoseRecords(records.input, records.duration, jnp.array([False, False, False, True]), records.ss, records.ii)
    r = Regimen([0.0, 1.0, 2.0, 2.0], [5.0, 5.0, 5.0, 0.0], records=records)  # the reset comes after the dose at 2
    rows = rg.to_nonmem(r)
    assert rows["ADDL"].tolist() == [1, 0, 0]  # the dose at 2 is a row of its own, before the reset's
    back = rg.from_nonmem(rows)[1]
    np.testing.assert_array_equal(back.times, r.times)
    np.testing.assert_array_equal(back.records.reset, r.records.reset)


def test_a_regimen_with_records_prints_its_dose_table(tmp_path):
    path = tmp_path / "records.dta"
    path.write_text(RECORD_TABLE)
    text = repr(rg.from_nonmem(path, doses=INPUTS, time_unit="h")[1])
    lines = text.splitlines()
    assert lines[1].split() == ["time", "(day)", "amount", "input", "addl", "ii", "(day)", "duration", "(day)", "ss", "reset"]
    assert lines[2].split() == ["0", "100", "0", "2", "0.5", ".", "1", "."]  # the SS row and its two remaining doses
    assert lines[3].split() == ["1.25", "0", "0", "0", ".", ".", ".", "yes"]
    assert lines[4].split() == ["1.66667", "60", "1", "0", ".", "0.0833333", ".", "yes"]


def test_combining_regimens_keeps_their_records(tmp_path):
    path = tmp_path / "records.dta"
    path.write_text(RECORD_TABLE)
    r = rg.from_nonmem(path, doses=INPUTS, time_unit="h")[1]
    plain = rg.daily(1.0, 2, start=0.25)
    joined = r + plain
    assert joined.n_doses == r.n_doses + 2 and joined.records.steady_states == 2
    at = np.flatnonzero(np.asarray(joined.amounts) == 1.0)
    np.testing.assert_array_equal(np.asarray(joined.times)[at], [0.25, 1.25])
    assert not np.asarray(joined.records.reset)[at].any() and not np.asarray(joined.records.ss)[at].any()
    np.testing.assert_array_equal(joined.records.reset, [False, False, False, False, True, False, True, False, False])
    assert r.shift(1.0).records is r.records
    assert plain.then(r, gap=1.0).records.input.tolist() == [0, 0, *r.records.input.tolist()]
    padded = rg.pad(r, 10)
    assert padded.records.input.shape == (10,) and not np.asarray(padded.records.ss)[7:].any()
    batch = rg.stack([r, plain])
    assert batch.records.ss.shape == (2, 7) and batch.records.steady_states == 2
    assert rg.cycles(r, 7.0, 2).records.ss.tolist() == r.records.ss.tolist() * 2
    with pytest.raises(RegimenError, match="records"):
        Regimen([0.0, 1.0], [1.0, 1.0], records=DoseRecords.plain(3))


def test_a_steady_state_infusion_as_long_as_its_interval_round_trips():
    """RATE = AMT / duration read back as AMT / RATE may round above II: not a longer infusion."""
    for amount, duration in ((3.0, 0.7), (7.0, 0.1), (1.5e6, 1 / 3)):
        r = Regimen([0.0], [amount], records=DoseRecords([0], [duration], [False], [1], [duration], steady_states=1))
        back = rg.from_nonmem(rg.to_nonmem(r))[1]
        np.testing.assert_allclose(back.records.duration, [duration], rtol=1e-15)


def test_records_a_solver_cannot_use_and_negative_times_in_nonmem_rows_are_refused():
    with pytest.raises(RegimenError, match=r"records\.duration"):
        Regimen([0.0], [3.0], records=DoseRecords([0], [0.8], [False], [1], [0.7], steady_states=1))
    with pytest.raises(RegimenError, match=r"records\.input"):
        Regimen([0.0], [3.0], records=DoseRecords([-1], [0.0], [False], [0], [0.0]))
    with pytest.raises(RegimenError, match=r"shift\(1\)"):
        rg.to_nonmem(rg.daily(1.0, 3).shift(-1.0))


def test_a_subjects_doses_in_a_dataset_are_the_regimen_of_its_rows(tmp_path):
    path = tmp_path / "records.dta"
    path.write_text(RECORD_TABLE)
    expected = rg.from_nonmem(path, doses=INPUTS, time_unit="h")[1]
    r = read_dataset(path, observables=("conc",), doses=INPUTS, time_unit="h").regimen(1)
    np.testing.assert_array_equal(r.times, expected.times)
    for field in ("input", "duration", "reset", "ss", "ii"):
        np.testing.assert_array_equal(getattr(r.records, field), getattr(expected.records, field), err_msg=field)
    assert repr(r).splitlines()[1:] == repr(expected).splitlines()[1:] and repr(r).startswith("Regimen 'ID 1'")
    plain = read_dataset(path, observables=("conc",), doses=INPUTS, time_unit="h").regimen(2)
    assert plain.n_doses == 0 and plain.records is None
