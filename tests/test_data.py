"""Specification of the biomarker data format: validation messages, padding, round trips."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from il2treg.data import Dataset, DosingInput, check_file, read_dataset
from il2treg.errors import DataError, InputError
from il2treg.observables import OBSERVABLE_NAMES

HEADER = "ID,TIME,EVID,AMT,DVID,DV,CENS,MDV,ARM,WT"
ROWS = [
    "1,0,0,,treg_pct_cd4,5.1,0,0,ILT-101,64",
    "1,0,1,1500000,,,,,ILT-101,64",
    "1,0.25,0,,il2_pM,1,1,0,ILT-101,64",
    "1,1,1,1500000,,,,,ILT-101,64",
    "1,7,0,,treg_pct_cd4,,0,1,ILT-101,64",
    "1,7,0,,treg_pct_cd4,7.5,0,0,ILT-101,64",
    "2,0,0,,treg_pct_cd4,4.8,0,0,Placebo,70",
    "2,0,1,0,,,,,Placebo,70",
    "2,7,0,,sledai,8,0,0,Placebo,70",
]
VALID_NAMES = ", ".join(OBSERVABLE_NAMES)


def table(*replace: tuple[int, str], header: str = HEADER, rows: list[str] = ROWS) -> str:
    """The valid table as CSV text, with data row ``r`` (1-based) replaced by ``line``."""
    lines = list(rows)
    for r, line in replace:
        lines[r - 1] = line
    return "\n".join([header, *lines]) + "\n"


def write(tmp_path, text: str | bytes, name: str = "data.csv"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def assert_data_error(source, message: str, *, column: str | None, row: int | None) -> None:
    with pytest.raises(DataError) as info:
        read_dataset(source)
    assert str(info.value) == message
    assert info.value.column == column
    assert info.value.row == row


def assert_same(a: Dataset, b: Dataset) -> None:
    assert a.ids == b.ids
    assert a.covariate_levels == b.covariate_levels
    assert a.covariates.keys() == b.covariates.keys()
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for x, y in zip(leaves_a, leaves_b, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


@pytest.fixture
def dataset(tmp_path) -> Dataset:
    return read_dataset(write(tmp_path, table()))


# ----------------------------------------------------------------------------------------------
# File-level problems


def test_empty_file_is_rejected(tmp_path):
    path = write(tmp_path, "")
    assert_data_error(
        path,
        f"file '{path}' is empty. Fix: write a header ID,TIME,EVID,AMT,DVID,DV and one row "
        "per event.",
        column=None,
        row=None,
    )


def test_whitespace_only_file_is_empty(tmp_path):
    path = write(tmp_path, "\n  \n")
    with pytest.raises(DataError, match="is empty"):
        read_dataset(path)


def test_missing_file_is_reported(tmp_path):
    path = tmp_path / "nope.csv"
    assert_data_error(path, f"file '{path}' not found. Fix: check the path.", column=None, row=None)


def test_binary_file_is_not_a_table(tmp_path):
    path = write(tmp_path, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", name="plot.png")
    assert_data_error(
        path,
        f"file '{path}' is not a text table (it contains NUL bytes, as binary files do). "
        "Fix: export the data as a comma-separated text (CSV) file.",
        column=None,
        row=None,
    )


def test_non_utf8_file_is_rejected(tmp_path):
    path = write(tmp_path, table().replace("Placebo", "Plac\xe9bo").encode("latin-1"))
    assert_data_error(
        path,
        f"file '{path}' is not UTF-8 text. Fix: save it as a UTF-8 CSV file.",
        column=None,
        row=None,
    )


def test_single_column_file_is_not_a_table(tmp_path):
    path = write(tmp_path, table().replace(",", ";"))
    assert_data_error(
        path,
        f"file '{path}' is not a comma-separated table: the header has a single column "
        "'ID;TIME;EVID;AMT;DVID;DV;CENS;MDV;ARM;WT'. Fix: separate columns with commas, or with "
        "spaces as NONMEM's files do (not semicolons), starting with the header ID,TIME,EVID,AMT,DVID,DV.",
        column=None,
        row=None,
    )


def test_header_without_rows_is_rejected(tmp_path):
    path = write(tmp_path, HEADER + "\n")
    assert_data_error(
        path,
        f"file '{path}' has a header but no data rows. Fix: add one row per event.",
        column=None,
        row=None,
    )


def test_ragged_row_is_rejected_with_row_number(tmp_path):
    path = write(tmp_path, table((3, "1,0.25,0,,il2_pM,1,1,0,ILT-101,64,extra")))
    assert_data_error(
        path,
        "row 3 has 11 fields but the header has 10. Fix: give every row 10 fields (in a CSV file, "
        "quote values containing commas).",
        column=None,
        row=3,
    )


def test_blank_lines_are_not_counted_as_rows(tmp_path):
    text = table((4, "1,1,1,-5,,,,,ILT-101,64")).replace("\n1,0.25", "\n\n1,0.25")
    with pytest.raises(DataError) as info:
        read_dataset(write(tmp_path, text))
    assert info.value.row == 4


def test_repeated_column_name_is_rejected(tmp_path):
    path = write(tmp_path, table(header="ID,TIME,EVID,AMT,DVID,DV,CENS,MDV,ARM,ARM"))
    assert_data_error(
        path,
        "column 'ARM' appears more than once in the header. Fix: keep one column per name.",
        column="ARM",
        row=None,
    )


def test_missing_required_column_is_named(tmp_path):
    rows = [",".join(r.split(",")[:4] + r.split(",")[5:]) for r in ROWS]
    path = write(tmp_path, table(header="ID,TIME,EVID,AMT,DV,CENS,MDV,ARM,WT", rows=rows))
    assert_data_error(
        path,
        "missing column 'DVID': the model has 7 observables, so each observation row must say which it is. "
        f"Fix: add a DVID column naming one of {VALID_NAMES}.",
        column="DVID",
        row=None,
    )
    rows = [",".join(r.split(",")[:5] + r.split(",")[6:]) for r in ROWS]
    path = write(tmp_path, table(header="ID,TIME,EVID,AMT,DVID,CENS,MDV,ARM,WT", rows=rows))
    assert_data_error(
        path,
        "missing required column 'DV' (found: ID, TIME, EVID, AMT, DVID, CENS, MDV, ARM, WT). "
        "Fix: add it; required are ID, TIME, EVID, AMT, DVID, DV; CENS and MDV are optional.",
        column="DV",
        row=None,
    )


def test_cmt_without_the_models_compartments_is_refused_not_ignored(tmp_path):
    rows = [r + ",1" for r in ROWS]
    assert_data_error(
        write(tmp_path, table(header=HEADER + ",CMT", rows=rows)),
        "column 'CMT' needs the model's dosing compartments, which are not given (or the model has no dosing input). Fix: read the data through a fit file "
        "(it knows the model), pass read_dataset(..., doses=...), or drop the column.",
        column="CMT",
        row=None,
    )


# ----------------------------------------------------------------------------------------------
# Cell-level problems


def test_missing_id_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((2, ",0,1,1500000,,,,,ILT-101,64"))),
        "ID is missing at row 2. Fix: give every row its subject's ID.",
        column="ID",
        row=2,
    )


def test_mixed_id_types_are_rejected(tmp_path):
    text = table(*((r, "P2" + ROWS[r - 1][1:]) for r in (7, 8, 9)))
    assert_data_error(
        write(tmp_path, text),
        "ID mixes numbers and text: row 1 has numeric ID 1 but row 7 has text ID 'P2'. Fix: use "
        "only numeric IDs or only text IDs.",
        column="ID",
        row=7,
    )


def test_mixed_id_types_in_a_dataframe_are_rejected(tmp_path):
    frame = pd.read_csv(write(tmp_path, table()), dtype={"ID": object})
    frame.loc[0:5, "ID"] = "A"
    assert_data_error(
        frame,
        "ID mixes numbers and text: row 1 has text ID 'A' but row 7 has numeric ID 2. Fix: use "
        "only numeric IDs or only text IDs.",
        column="ID",
        row=7,
    )


def test_non_numeric_time_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((3, "1,6h,0,,il2_pM,1,1,0,ILT-101,64"))),
        "TIME must be a finite number; row 3 has '6h'. Fix: write TIME in days from the first "
        "dose (e.g. 7 or 0.125).",
        column="TIME",
        row=3,
    )


def test_missing_time_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((3, "1,,0,,il2_pM,1,1,0,ILT-101,64"))),
        "TIME is missing at row 3. Fix: write TIME in days from the first dose (e.g. 7 or 0.125).",
        column="TIME",
        row=3,
    )


def test_nan_time_in_a_dataframe_is_rejected(tmp_path):
    frame = pd.read_csv(write(tmp_path, table()))
    frame.loc[4, "TIME"] = np.nan
    assert_data_error(
        frame,
        "TIME is missing at row 5. Fix: write TIME in days from the first dose (e.g. 7 or 0.125).",
        column="TIME",
        row=5,
    )


def test_negative_time_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((1, "1,-7,0,,treg_pct_cd4,5.1,0,0,ILT-101,64"))),
        "TIME is negative (-7) at row 1. Fix: TIME counts days from the first dose; record "
        "pre-dose baseline samples at TIME 0.",
        column="TIME",
        row=1,
    )


def test_unsorted_times_are_rejected_with_row_number(tmp_path):
    text = table((3, "1,7.5,0,,il2_pM,1,1,0,ILT-101,64"))
    assert_data_error(
        write(tmp_path, text),
        "TIME decreases within ID 1 at row 4 (1 after 7.5 at row 3). Fix: sort the rows of each "
        "ID by TIME.",
        column="TIME",
        row=4,
    )


def test_evid_outside_zero_to_four_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((4, "1,1,5,1500000,,,,,ILT-101,64"))),
        "EVID must be 0 (observation), 1 (dose), 2 (other event), 3 (reset) or 4 (reset and dose); row 4 has 5. Fix: use one of 0 to 4.",
        column="EVID",
        row=4,
    )
    assert_data_error(
        write(tmp_path, table((4, "1,1,3,1500000,,,,,ILT-101,64"))),
        "AMT is 1500000 on row 4, a reset (EVID 3). Fix: leave AMT empty or 0 there, or set EVID 1 (or 4, a reset and dose) if the row is a dose.",
        column="AMT",
        row=4,
    )


def test_resets_are_dose_slots_that_round_trip(tmp_path):
    data = read_dataset(write(tmp_path, table((4, "1,1,4,1500000,,,,,ILT-101,64"), (5, "1,7,3,,,,,,ILT-101,64"))))
    np.testing.assert_array_equal(data.dose_time[0], [0, 1, 7])
    np.testing.assert_array_equal(data.dose_amount[0], [1500000, 1500000, 0])
    np.testing.assert_array_equal(data.dose_reset[0], [False, True, True])
    records = data.records()
    assert records is not None and records.steady_states == 0
    frame = data.to_frame()
    assert frame["EVID"].tolist()[:5] == [0, 1, 0, 4, 3]
    assert_same(read_dataset(frame), data)


def test_text_evid_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((4, "1,1,dose,1500000,,,,,ILT-101,64"))),
        "EVID must be 0 (observation), 1 (dose), 2 (other event), 3 (reset) or 4 (reset and dose); row 4 has 'dose'. Fix: use one of 0 to 4.",
        column="EVID",
        row=4,
    )


def test_other_events_are_kept_out_of_doses_and_observations(tmp_path):
    """EVID 2 rows (NONMEM's other events) neither dose nor observe; their DV is not read, but
    an amount on one is an error (it would be a dose that never happens)."""
    base = read_dataset(write(tmp_path, table()))
    other = read_dataset(write(tmp_path, table(header=HEADER, rows=[*ROWS, "1,8,2,,,,,1,ILT-101,64", "2,9,2,.,sledai,99,0,,Placebo,70"])))
    for field in ("obs_time", "obs_value", "obs_dvid", "dose_time", "dose_amount"):
        np.testing.assert_array_equal(getattr(base, field), getattr(other, field), err_msg=field)
    assert_data_error(
        write(tmp_path, table(header=HEADER, rows=[*ROWS, "1,8,2,100,,,,1,ILT-101,64"])),
        "AMT is 100 on row 10, an other event (EVID 2). Fix: leave AMT empty or 0 there, or set EVID 1 (or 4, a reset and dose) if the row is a dose.",
        column="AMT",
        row=10,
    )


def test_non_numeric_amount_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((4, "1,1,1,1.5 MIU,,,,,ILT-101,64"))),
        "AMT must be a finite number; row 4 has '1.5 MIU'. Fix: give doses in the model's dose unit (IU for the IL-2 model: 1500000 "
        "for 1.5 MIU).",
        column="AMT",
        row=4,
    )


def test_negative_dose_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((4, "1,1,1,-1500000,,,,,ILT-101,64"))),
        "AMT is negative (-1500000) on dose row 4. Fix: give the dose in the model's dose unit, 0 or more.",
        column="AMT",
        row=4,
    )


def test_missing_dose_amount_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((4, "1,1,1,,,,,,ILT-101,64"))),
        "AMT is missing on dose row 4. Fix: give the dose in the model's dose unit (IU for the IL-2 model: 1500000 for 1.5 MIU), or "
        "0 for a placebo injection.",
        column="AMT",
        row=4,
    )


def test_amount_on_observation_row_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((3, "1,0.25,0,1500000,il2_pM,1,1,0,ILT-101,64"))),
        "AMT is 1500000 on observation row 3 (EVID 0). Fix: leave AMT empty or 0 on observation "
        "rows, or set EVID 1 if the row is a dose.",
        column="AMT",
        row=3,
    )


def test_dose_row_with_dvid_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((2, "1,0,1,1500000,il2_pM,,,,ILT-101,64"))),
        "dose row 2 (EVID 1) has DVID 'il2_pM'. Fix: leave DVID empty on dose rows.",
        column="DVID",
        row=2,
    )


def test_missing_dvid_on_observation_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((3, "1,0.25,0,,,1,1,0,ILT-101,64"))),
        f"DVID is missing on observation row 3. Fix: name what was observed, one of: "
        f"{VALID_NAMES}.",
        column="DVID",
        row=3,
    )


def test_unknown_dvid_lists_valid_names(tmp_path):
    assert_data_error(
        write(tmp_path, table((3, "1,0.25,0,,CRP,1,1,0,ILT-101,64"))),
        f"unknown DVID 'CRP' at row 3. Fix: use one of: {VALID_NAMES}.",
        column="DVID",
        row=3,
    )


def test_misspelt_dvid_suggests_the_close_name(tmp_path):
    assert_data_error(
        write(tmp_path, table((1, "1,0,0,,Treg_pct_CD4,5.1,0,0,ILT-101,64"))),
        f"unknown DVID 'Treg_pct_CD4' at row 1 (did you mean 'treg_pct_cd4'?). Fix: use one of: "
        f"{VALID_NAMES}.",
        column="DVID",
        row=1,
    )


def test_non_numeric_dv_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((3, "1,0.25,0,,il2_pM,<1,0,0,ILT-101,64"))),
        "DV must be a finite number; row 3 has '<1'. Fix: write a number in the DVID's unit; "
        "below the LLOQ write the LLOQ and set CENS=1; for a missing value leave DV empty and "
        "set MDV=1.",
        column="DV",
        row=3,
    )


def test_dose_row_with_dv_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((2, "1,0,1,1500000,,3.2,,,ILT-101,64"))),
        "dose row 2 (EVID 1) carries a DV (3.2). Fix: leave DV empty on dose rows; put the "
        "measurement on its own observation row (EVID 0).",
        column="DV",
        row=2,
    )


def test_cens_other_than_zero_one_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((3, "1,0.25,0,,il2_pM,1,BLQ,0,ILT-101,64"))),
        "CENS must be 0 or 1; row 3 has 'BLQ'. Fix: 1 marks a value below the LLOQ (DV holds "
        "the LLOQ), 0 otherwise; empty means 0.",
        column="CENS",
        row=3,
    )


def test_censored_row_without_lloq_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((3, "1,0.25,0,,il2_pM,,1,0,ILT-101,64"))),
        "CENS=1 at row 3 but DV is empty. Fix: write the LLOQ in DV (CENS=1 means the value is "
        "below the LLOQ held in DV).",
        column="CENS",
        row=3,
    )


def test_censored_dose_row_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((2, "1,0,1,1500000,,,1,,ILT-101,64"))),
        "dose row 2 (EVID 1) has CENS=1. Fix: leave CENS empty or 0 on dose rows.",
        column="CENS",
        row=2,
    )


def test_mdv_other_than_zero_one_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((5, "1,7,0,,treg_pct_cd4,,0,2,ILT-101,64"))),
        "MDV must be 0 or 1; row 5 has 2. Fix: 1 keeps the row without using its DV, 0 "
        "otherwise; empty means 0.",
        column="MDV",
        row=5,
    )


def test_missing_dv_without_mdv_is_rejected(tmp_path):
    assert_data_error(
        write(tmp_path, table((5, "1,7,0,,treg_pct_cd4,,0,0,ILT-101,64"))),
        "DV is missing on observation row 5 (treg_pct_cd4). Fix: fill in the value, or set "
        "MDV=1 to keep the row without using it.",
        column="DV",
        row=5,
    )


def test_exact_duplicate_rows_are_rejected(tmp_path):
    rows = [*ROWS[:3], ROWS[2], *ROWS[3:]]
    assert_data_error(
        write(tmp_path, table(rows=rows)),
        "row 4 duplicates row 3 exactly. Fix: delete one of the two rows.",
        column=None,
        row=4,
    )


def test_duplicates_are_found_after_parsing_numbers(tmp_path):
    rows = [*ROWS[:3], "1,0.250,0,0,il2_pM,1.0,1,0,ILT-101,64.0", *ROWS[3:]]
    with pytest.raises(DataError, match="row 4 duplicates row 3 exactly"):
        read_dataset(write(tmp_path, table(rows=rows)))


def test_subject_without_observations_is_named(tmp_path):
    rows = [*ROWS, "3,0,1,0,,,,,Placebo,58"]
    assert_data_error(
        write(tmp_path, table(rows=rows)),
        "ID 3 has no observation rows (EVID 0). Fix: add its observations or remove its rows.",
        column="ID",
        row=10,
    )


def test_a_text_covariate_that_changes_within_an_id_is_refused(tmp_path):
    assert_data_error(
        write(tmp_path, table((9, "2,7,0,,sledai,8,0,0,ILT-101,70"))),
        "text covariate 'ARM' is not constant within ID 2: 'Placebo' at row 7 but 'ILT-101' at row 9. "
        "Fix: give one value per subject, or code a time-varying covariate as numbers.",
        column="ARM",
        row=9,
    )


TIME_VARYING = """ID,TIME,EVID,AMT,DVID,DV,WT,CRCL
1,0,1,100,,,,60
1,1,0,,conc,5,3.0,60
1,2,2,,,,3.5,
1,3,0,,conc,4,,
1,3,0,,conc,4.1,4.0,
1,5,0,,conc,3,4.0,55
2,0,1,100,,,2.0,80
2,2,0,,conc,3,2.0,80
"""


def test_a_numeric_covariate_that_changes_is_time_varying(tmp_path):
    """Each value holds from its row's time (an EVID 2 row's too); an empty cell carries the last
    value forward (before the first: that value); of two rows at one time the last holds; a
    subject without changes has one period, padded by repeating it."""
    data = read_dataset(write(tmp_path, TIME_VARYING), observables=("conc",))
    np.testing.assert_array_equal(data.covariate_time, [[0, 2, 3, 5], [0, 0, 0, 0]])
    np.testing.assert_array_equal(data.covariate_series["WT"], [[3.0, 3.5, 4.0, 4.0], [2.0] * 4])
    np.testing.assert_array_equal(data.covariate_series["CRCL"], [[60, 60, 60, 55], [80] * 4])
    np.testing.assert_array_equal(data.covariates["WT"], [3.0, 2.0])  # the first period's
    np.testing.assert_array_equal(data.covariate_periods("CRCL"), data.covariate_series["CRCL"])
    assert "WT (number, time-varying: up to 3 values per subject), CRCL (number, time-varying: up to 2 values per subject)" in data.summary()
    frame = data.to_frame()  # each row at its time's values; the change at day 2 on an EVID 2 row
    assert frame["EVID"].tolist() == [1, 0, 2, 0, 0, 0, 1, 0]
    assert frame["WT"].tolist() == [3.0, 3.0, 3.5, 4.0, 4.0, 4.0, 2.0, 2.0]
    assert_same(read_dataset(frame, observables=("conc",)), data)
    assert data.to_frame(rows=True)["ROW"].tolist() == [1, 2, 0, 4, 5, 6, 7, 8]  # the source rows; 0 on the EVID 2 row written anew
    second = data.subset([2])
    np.testing.assert_array_equal(second.covariate_series["WT"], [[2.0] * 4])
    constant = read_dataset(write(tmp_path, table()))
    assert constant.covariate_series == {} and constant.covariate_time.shape == (2, 1)
    np.testing.assert_array_equal(constant.covariate_periods("WT"), [[64.0], [70.0]])


# ----------------------------------------------------------------------------------------------
# Valid data: arrays, padding, masks


def test_arrays_are_padded_per_subject(dataset):
    assert dataset.ids == (1, 2)
    assert dataset.n_subjects == 2
    assert dataset.obs_time.shape == (2, 4)
    assert dataset.dose_time.shape == (2, 2)
    for name in ("obs_time", "obs_value", "dose_time", "dose_amount"):
        assert getattr(dataset, name).dtype == np.float64
    np.testing.assert_array_equal(dataset.obs_time, [[0, 0.25, 7, 7], [0, 7, 7, 7]])
    np.testing.assert_array_equal(dataset.obs_row, [[1, 3, 5, 6], [7, 9, 0, 0]])
    np.testing.assert_array_equal(dataset.dose_time, [[0, 1], [0, 0]])
    np.testing.assert_array_equal(dataset.dose_amount, [[1.5e6, 1.5e6], [0, 0]])
    np.testing.assert_array_equal(dataset.dose_row, [[2, 4], [8, 0]])


def test_mask_excludes_padding_and_mdv_rows(dataset):
    np.testing.assert_array_equal(
        dataset.obs_mask, [[True, True, False, True], [True, True, False, False]]
    )
    np.testing.assert_array_equal(dataset.obs_cens[0], [False, True, False, False])
    np.testing.assert_array_equal(dataset.obs_dv_missing[0], [False, False, True, False])
    np.testing.assert_array_equal(dataset.obs_value, [[5.1, 1, 0, 7.5], [4.8, 8, 0, 0]])
    assert np.isfinite(dataset.obs_value).all()
    treg, il2, sledai = (OBSERVABLE_NAMES.index(n) for n in ("treg_pct_cd4", "il2_pM", "sledai"))
    np.testing.assert_array_equal(dataset.obs_dvid[:, :2], [[treg, il2], [treg, sledai]])


def test_mdv_rows_are_reported_not_dropped(dataset):
    assert dataset.excluded == [(5, "MDV=1: treg_pct_cd4 at TIME 7 for ID 1 not used")]


def test_covariates_are_per_subject_arrays(dataset):
    np.testing.assert_array_equal(dataset.covariates["WT"], [64.0, 70.0])
    assert dataset.covariate_levels == (("ARM", ("ILT-101", "Placebo")),)
    np.testing.assert_array_equal(dataset.covariates["ARM"], [0, 1])
    assert dataset.covariate_values("ARM").tolist() == ["ILT-101", "Placebo"]
    with pytest.raises(InputError, match="unknown covariate 'SEX'"):
        dataset.covariate_values("SEX")


def test_observed_names_follow_observable_order(dataset):
    assert dataset.observed_names() == ("il2_pM", "treg_pct_cd4", "sledai")


def test_optional_columns_default_to_zero(tmp_path):
    rows = [",".join(r.split(",")[:6]) for r in ROWS if r.split(",")[7] != "1"]
    ds = read_dataset(write(tmp_path, table(header="ID,TIME,EVID,AMT,DVID,DV", rows=rows)))
    assert not ds.obs_cens.any()
    assert ds.excluded == []
    assert ds.covariates == {}


def test_dataset_without_doses_has_width_one_dose_arrays():
    frame = pd.DataFrame(
        {"ID": ["a", "b"], "TIME": [0.0, 3.0], "EVID": [0, 0], "AMT": [np.nan, np.nan],
         "DVID": ["sledai", "sledai"], "DV": [10.0, 12.0]}
    )
    ds = read_dataset(frame)
    assert ds.ids == ("a", "b")
    np.testing.assert_array_equal(ds.dose_amount, [[0.0], [0.0]])
    np.testing.assert_array_equal(ds.dose_time, [[0.0], [0.0]])
    np.testing.assert_array_equal(ds.dose_row, [[0], [0]])


def test_rows_of_an_id_need_not_be_contiguous(tmp_path):
    rows = [ROWS[0], ROWS[6], *ROWS[1:6], *ROWS[7:]]
    ds = read_dataset(write(tmp_path, table(rows=rows)))
    assert ds.ids == (1, 2)
    np.testing.assert_array_equal(ds.obs_row[1, :2], [2, 9])


def test_dataset_batches_under_jit_and_vmap(dataset):
    @jax.jit
    def weighted_sum(ds: Dataset) -> jax.Array:
        per_subject = jax.vmap(lambda v, m: jnp.sum(jnp.where(m, v, 0.0)))(
            ds.obs_value, ds.obs_mask
        )
        return per_subject

    np.testing.assert_allclose(weighted_sum(dataset), [5.1 + 1 + 7.5, 4.8 + 8])


# ----------------------------------------------------------------------------------------------
# Round trips, subsets, summary


def test_frame_round_trip_is_exact(dataset):
    frame = dataset.to_frame()
    assert ",".join(frame.columns) == HEADER
    assert_same(read_dataset(frame), dataset)
    assert read_dataset(frame).excluded == dataset.excluded


def test_csv_round_trip_is_exact(dataset, tmp_path):
    path = tmp_path / "again.csv"
    dataset.to_frame().to_csv(path, index=False)
    assert_same(read_dataset(path), dataset)


def test_to_frame_keeps_source_row_order(dataset, tmp_path):
    frame = dataset.to_frame()
    original = pd.read_csv(write(tmp_path, table()))
    np.testing.assert_array_equal(frame["TIME"], original["TIME"])
    np.testing.assert_array_equal(frame["EVID"], original["EVID"])
    assert pd.isna(frame.loc[4, "DV"])
    assert frame.loc[4, "MDV"] == 1


def test_subset_keeps_order_and_trims_padding(dataset):
    sub = dataset.subset([2])
    assert sub.ids == (2,)
    assert sub.obs_time.shape == (1, 2)
    assert sub.dose_time.shape == (1, 1)
    np.testing.assert_array_equal(sub.covariates["ARM"], [1])
    assert sub.excluded == []
    swapped = dataset.subset([2, 1])
    assert swapped.ids == (2, 1)
    np.testing.assert_array_equal(swapped.obs_row[1], dataset.obs_row[0])


def test_subset_rejects_unknown_and_repeated_ids(dataset):
    with pytest.raises(InputError) as info:
        dataset.subset([3])
    assert str(info.value) == (
        "unknown subject ID 3. Fix: use IDs of the dataset (2 subjects: 1, 2)."
    )
    with pytest.raises(InputError, match="subject ID 1 is repeated"):
        dataset.subset([1, 1])
    with pytest.raises(InputError, match="got no IDs"):
        dataset.subset([])


def test_summary_lists_arms_observations_doses_and_exclusions(dataset):
    text = dataset.summary()
    assert text.splitlines() == [
        "Subjects: 2; rows: 9 (6 observations, 3 doses)",
        "Arms (subjects): ILT-101 1, Placebo 1",
        "Covariates: ARM (text), WT (number)",
        "Time: 0 to 7 days",
        "Doses: 3 rows, 1 to 2 per subject, 0 to 1500000 per dose (IU for the IL-2 model)",
        "Observations (used, of which below LLOQ):",
        "  il2_pM                  1   BLQ 1",
        "  treg_pct_cd4            3   BLQ 0",
        "  sledai                  1   BLQ 0",
        "Excluded rows (MDV=1, kept but not used): 1",
        "  row 5: MDV=1: treg_pct_cd4 at TIME 7 for ID 1 not used",
    ]


def test_summary_shows_sites_when_present(tmp_path):
    rows = [r + ("," + ("BG01" if r.startswith("1,") else "FR02")) for r in ROWS]
    ds = read_dataset(write(tmp_path, table(header=HEADER + ",SITE", rows=rows)))
    assert "Sites (subjects): BG01 1, FR02 1" in ds.summary().splitlines()


def test_check_file_returns_the_summary(tmp_path):
    path = write(tmp_path, table())
    text = check_file(path)
    assert text.splitlines()[0] == f"File: {path} (valid)"
    assert text.endswith(read_dataset(path).summary())


# ----------------------------------------------------------------------------------------------
# NONMEM conventions: no EVID or DVID, whitespace-separated, hours, dropped columns


NONMEM_DTA = """ID TIME AMT WGT APGR DV FA1 FA2
 1    0.   25.0   1.4   7    0    1 1
 1    2.0   0     1.4   7   17.3  0 0
 1   12.5   3.5   1.4   7    0    1 1
 1  112.5   0     1.4   7   31.0  0 0
 2    0.   15.0   1.5   9    0    1 1
 2    2.0   0     1.5   9    9.7  0 0
"""


def test_a_nonmem_dta_file_reads_as_the_same_data_written_out_in_days(tmp_path):
    """pheno.dta's conventions: whitespace, no EVID (AMT > 0 is a dose), no DVID (one
    observable), DV 0 on dose rows, TIME in hours, FA1/FA2 dropped."""
    nonmem = read_dataset(write(tmp_path, NONMEM_DTA, "run.dta"), observables=("conc",), time_unit="h", drop=("FA1", "FA2"))
    explicit = read_dataset(
        write(tmp_path, "ID,TIME,EVID,AMT,DVID,DV,WGT,APGR\n"
              "1,0,1,25,,,1.4,7\n1,0.08333333333333333,0,,conc,17.3,1.4,7\n1,0.5208333333333334,1,3.5,,,1.4,7\n"
              "1,4.6875,0,,conc,31,1.4,7\n2,0,1,15,,,1.5,9\n2,0.08333333333333333,0,,conc,9.7,1.5,9\n"),
        observables=("conc",),
    )  # fmt: skip
    np.testing.assert_allclose(nonmem.obs_time, explicit.obs_time, rtol=1e-15)
    np.testing.assert_allclose(nonmem.dose_time, explicit.dose_time, rtol=1e-15)
    np.testing.assert_array_equal(nonmem.dose_amount, explicit.dose_amount)
    np.testing.assert_array_equal(nonmem.obs_value, explicit.obs_value)
    assert list(nonmem.covariates) == ["WGT", "APGR"]
    np.testing.assert_array_equal(nonmem.covariates["WGT"], [1.4, 1.5])


def test_nonmem_conventions_keep_their_errors(tmp_path):
    path = write(tmp_path, NONMEM_DTA, "run.dta")
    kept = read_dataset(path, observables=("conc",), time_unit="h")  # FA1 not dropped: 1 on doses, 0 on samples
    np.testing.assert_array_equal(kept.covariate_series["FA1"][0], [1, 0, 1, 0])
    with pytest.raises(DataError, match=r"column 'FA3' is to be dropped but the table has no such column") as info:
        read_dataset(path, observables=("conc",), drop=("FA3",))
    assert info.value.column == "FA3"
    with pytest.raises(InputError, match=r"time_unit 'hours' is not known. Fix: use one of 'day', 'h'"):
        read_dataset(path, observables=("conc",), time_unit="hours")
    with pytest.raises(DataError, match=r"missing column 'DVID': the model has 2 observables") as info:
        read_dataset(path, observables=("conc", "metabolite"), drop=("FA1", "FA2"))
    assert info.value.column == "DVID"
    # a DV of 0 on a dose row is NONMEM's filler; any other value there is still refused
    bad = NONMEM_DTA.replace(" 1   12.5   3.5   1.4   7    0 ", " 1   12.5   3.5   1.4   7    4 ")
    with pytest.raises(DataError, match=r"dose row 3 \(EVID 1\) carries a DV \(4\)") as info:
        read_dataset(write(tmp_path, bad, "bad.dta"), observables=("conc",), drop=("FA1", "FA2"))
    assert (info.value.column, info.value.row) == ("DV", 3)
    # without EVID, a row with AMT 0 is an observation: it needs a DV
    missing = NONMEM_DTA.replace("17.3", " .  ")
    with pytest.raises(DataError, match=r"DV is missing on observation row 2 \(conc\)"):
        read_dataset(write(tmp_path, missing, "missing.dta"), observables=("conc",), drop=("FA1", "FA2"))


# ----------------------------------------------------------------------------------------------
# ADDL / II: additional doses


def _compress_doses(text: str) -> str:
    """pheno.dta with each run of equal doses at equal intervals (hours) written as one row with ADDL/II."""
    lines = text.splitlines()
    out = [lines[0] + " ADDL II"]
    rows = [line.split() for line in lines[1:]]
    k = 0
    while k < len(rows):
        row = rows[k]
        if float(row[2]) == 0:  # an observation
            out.append(" ".join(row) + " 0 0")
            k += 1
            continue
        run = [k]  # doses of this ID, consecutive among the dose rows, same amount and interval
        doses = [j for j in range(k + 1, len(rows)) if rows[j][0] == row[0] and float(rows[j][2]) > 0]
        for j in doses:
            if float(rows[j][2]) != float(row[2]):
                break
            if len(run) > 1 and float(rows[j][1]) - float(rows[run[-1]][1]) != float(rows[run[1]][1]) - float(rows[run[0]][1]):
                break
            run.append(j)
        if len(run) > 1:
            ii = float(rows[run[1]][1]) - float(rows[run[0]][1])
            out.append(" ".join(row) + f" {len(run) - 1} {ii:g}")
        else:
            out.append(" ".join(row) + " 0 0")
        skip = set(run[1:])
        rows = [r for j, r in enumerate(rows) if j not in skip]
        k += 1
    return "\n".join(out) + "\n"


def test_addl_ii_in_hours_read_as_the_doses_written_out_one_by_one(tmp_path):
    """pheno.dta with its regular dose runs folded into ADDL/II rows (hours) gives the same
    arrays as pheno.dta itself, and its to_frame() (days, one row per dose) reads back the same."""
    from pathlib import Path

    pheno = (Path(__file__).resolve().parents[1] / "fits" / "pheno" / "pheno.dta").read_text()
    compressed = _compress_doses(pheno)
    n_addl = sum(int(line.split()[-2]) > 0 for line in compressed.splitlines()[1:])
    assert n_addl >= 20 and len(compressed.splitlines()) < len(pheno.splitlines()) - 100  # the folding is real
    kw = {"observables": ("conc",), "time_unit": "h", "drop": ("FA1", "FA2")}
    a = read_dataset(write(tmp_path, pheno, "pheno.dta"), **kw)
    b = read_dataset(write(tmp_path, compressed, "addl.dta"), **kw)
    for field in ("obs_time", "obs_value", "dose_amount"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    # t0 + j * II in binary is not always the decimal time written: equal to rounding (1e-15 relative)
    np.testing.assert_allclose(a.dose_time, b.dose_time, rtol=1e-15, atol=0)
    c = read_dataset(b.to_frame(), observables=("conc",))
    for field in ("obs_time", "obs_value", "dose_time", "dose_amount"):
        np.testing.assert_array_equal(getattr(b, field), getattr(c, field), err_msg=field)


ADDL_HEADER = "ID,TIME,EVID,AMT,DVID,DV,ADDL,II"


@pytest.mark.parametrize(
    "row, message, column",
    [
        ("1,0,1,100,,,-1,24", "ADDL is -1 on dose row 1. Fix: ADDL counts additional doses: a whole number, 0 or more.", "ADDL"),
        ("1,0,1,100,,,1.5,24", "ADDL is 1.5 on dose row 1. Fix: ADDL counts additional doses: a whole number, 0 or more.", "ADDL"),
        ("1,0,1,100,,,2,-12", "II is negative (-12) on dose row 1. Fix: II is the dosing interval, in TIME's unit, 0 or more.", "II"),
        ("1,0,1,100,,,2,0", "dose row 1 has ADDL 2 but II is 0. Fix: give the interval between its additional doses in II (TIME's unit), or set ADDL 0.", "II"),
        ("1,0,1,100,,,2,", "dose row 1 has ADDL 2 but II is 0. Fix: give the interval between its additional doses in II (TIME's unit), or set ADDL 0.", "II"),
        ("1,0,1,100,,,x,24", "ADDL must be a finite number; row 1 has 'x'. Fix: ADDL counts the additional doses of a dose row: 0, 1, 2, ... (empty means 0).", "ADDL"),
        ("1,0,1,100,,,2,y", "II must be a finite number; row 1 has 'y'. Fix: II is the interval between a dose row's additional doses, in TIME's unit (empty means 0).", "II"),
        ("1,0,0,,conc,5,2,24", "ADDL is 2 on observation row 1. Fix: ADDL and II belong to dose rows; leave them empty or 0 on observations.", "ADDL"),
        ("1,0,0,,conc,5,0,24", "II is 24 on observation row 1. Fix: ADDL and II belong to dose rows; leave them empty or 0 on observations.", "II"),
    ],
    ids=["negative", "fraction", "negative-ii", "zero-ii", "empty-ii", "text-addl", "text-ii", "addl-on-observation", "ii-on-observation"],
)
def test_bad_addl_ii_is_one_clear_error(tmp_path, row, message, column):
    path = write(tmp_path, f"{ADDL_HEADER}\n{row}\n1,1,0,,conc,4,0,0\n")
    with pytest.raises(DataError) as info:
        read_dataset(path, observables=("conc",))
    assert (str(info.value), info.value.column, info.value.row) == (message, column, 1)


def test_addl_without_an_ii_column_is_named(tmp_path):
    path = write(tmp_path, "ID,TIME,EVID,AMT,DVID,DV,ADDL\n1,0,1,100,,,3\n1,1,0,,conc,4,0\n")
    with pytest.raises(DataError, match=r"dose row 1 has ADDL 3 but there is no II column"):
        read_dataset(path, observables=("conc",))


def test_additional_doses_interleave_with_later_rows_in_time(tmp_path):
    """Doses every 12 h from 0 (ADDL 3) and a dose of 50 at 18 h: doses at 0, 12, 18, 24, 36 h."""
    path = write(tmp_path, f"{ADDL_HEADER}\n1,0,1,100,,,3,12\n1,6,0,,conc,4,,\n1,18,1,50,,,0,0\n1,40,0,,conc,2,,\n")
    data = read_dataset(path, observables=("conc",), time_unit="h")
    np.testing.assert_array_equal(data.dose_time[0] * 24, [0, 12, 18, 24, 36])
    np.testing.assert_array_equal(data.dose_amount[0], [100, 100, 50, 100, 100])
    np.testing.assert_array_equal(data.dose_row[0], [1, 1, 3, 1, 1])


def test_a_subjects_events_read_as_a_table(tmp_path):
    path = write(tmp_path, f"{ADDL_HEADER}\n1,0,1,100,,,2,12\n1,6,0,,conc,4,,\n2,0,1,50,,,0,0\n2,3,0,,conc,1,,\n")
    data = read_dataset(path, observables=("conc",), time_unit="h")
    events = data.events(1)
    assert events[["TIME", "EVID", "AMT"]].to_numpy().tolist() == [[0.0, 1, 100.0], [0.25, 0, 0.0], [0.5, 1, 100.0], [1.0, 1, 100.0]]
    with pytest.raises(DataError, match=r"no subject with ID 3 in the data \(IDs: 1, 2\)"):
        data.events(3)


def test_cmt_is_read_where_the_models_dosing_compartments_are_known(tmp_path):
    rows = "ID,TIME,EVID,AMT,CMT,DVID,DV\n1,0,1,100,1,,\n1,2,0,,2,conc,4\n1,12,1,100,,,\n1,13,1,20,2,,\n1,14,0,,,conc,3\n"
    data = read_dataset(write(tmp_path, rows), observables=("conc",), doses=[DosingInput(1), DosingInput(2)])
    np.testing.assert_array_equal(data.dose_amount[0], [100, 100, 20])
    np.testing.assert_array_equal(data.dose_input[0], [0, 0, 1])
    assert "CMT" not in data.covariates  # set aside, not a covariate
    assert_same(read_dataset(data.to_frame(), observables=("conc",), doses=[DosingInput(1), DosingInput(2)]), data)
    with pytest.raises(DataError) as info:
        read_dataset(write(tmp_path, rows), observables=("conc",), doses=[DosingInput(1)])
    assert str(info.value) == "dose row 4 has CMT 2, but the model doses into compartment 1. Fix: set CMT to it (or leave it empty for compartment 1)."
    assert (info.value.column, info.value.row) == ("CMT", 4)


RECORD_HEADER = "ID,TIME,EVID,AMT,DV,RATE,SS,II,ADDL"


@pytest.mark.parametrize(
    ("row", "message", "column"),
    [
        ("1,0,1,100,,-1,0,0,0", "RATE -1 on dose row 1 asks for a rate the model computes, which il2treg does not model. Fix: give the rate in RATE, "
         "or declare the input's duration in the model's [doses] table and set RATE -2.", "RATE"),
        ("1,0,1,100,,-3,0,0,0", "RATE is -3 on dose row 1. Fix: give the infusion rate (AMT per TIME unit, > 0), 0 for a bolus, or -2 for the "
         "duration the model declares.", "RATE"),
        ("1,0,1,100,,-2,0,0,0", "RATE -2 on dose row 1 asks for the infusion duration the model declares, but its input (compartment 1) declares none. "
         "Fix: give the rate in RATE, or declare a duration for the input in the model's [doses] table.", "RATE"),
        ("1,0,1,100,,x,0,0,0", "RATE must be a finite number; row 1 has 'x'. Fix: RATE is a dose's infusion rate (AMT per TIME unit), 0 for a bolus, "
         "or -2 for the model's duration.", "RATE"),
        ("1,0,1,100,,0,3,12,0", "SS is 3 on dose row 1. Fix: SS is 0 (none), 1 (steady state) or 2 (steady state added).", "SS"),
        ("1,0,1,100,,0,1,0,0", "dose row 1 has SS 1 but II is 0. Fix: give the dosing interval of the steady state in II (TIME's unit); "
         "a steady state of a constant infusion (II 0) is not supported.", "II"),
        ("1,0,1,100,,5,1,12,0", "dose row 1 is a steady-state infusion lasting 20 (AMT / RATE), longer than its II 12. Fix: check RATE and II; "
         "overlapping steady-state infusions are not supported.", "RATE"),
        ("1,0,1,100,,0,0,0,2", "dose row 1 has ADDL 2 but II is 0. Fix: give the interval between its additional doses in II (TIME's unit), "
         "or set ADDL 0.", "II"),
        ("1,0,0,,,10,0,0,0", "RATE is 10 on row 1, which is not a dose. Fix: RATE belongs to dose rows (EVID 1 or 4); leave it empty or 0 here.", "RATE"),
        ("1,0,2,,,0,1,0,0", None, None),  # an other event's SS is not read
        ("1,0,0,,,0,2,0,0", "SS is 2 on row 1, which is not a dose. Fix: SS belongs to dose rows (EVID 1 or 4); leave it empty or 0 here.", "SS"),
        ("1,0,3,,,0,0,0,0", None, None),  # a reset alone at time 0
    ],
)
def test_malformed_dose_records_name_column_row_and_fix(tmp_path, row, message, column):
    """Each malformed NONMEM dose record (one bad row, then a valid observation) gives one typed
    error naming its column, its row and the fix; the two rows without a message are valid."""
    path = write(tmp_path, f"{RECORD_HEADER}\n{row}\n1,2,0,,4,,,,\n")
    if message is None:
        assert read_dataset(path, observables=("conc",), doses=[DosingInput(1)]).n_subjects == 1
        return
    with pytest.raises(DataError) as info:
        read_dataset(path, observables=("conc",), doses=[DosingInput(1)])
    assert str(info.value) == message
    assert (info.value.column, info.value.row) == (column, 1)


def test_rate_ss_and_ii_are_read_in_the_tables_time_unit(tmp_path):
    """RATE 25 mg/h of 100 mg is a 4-h infusion; SS=1 with II=12 h and ADDL 2: the record is a
    steady state, its two additional doses are plain ones 12 h apart, with the same rate."""
    path = write(tmp_path, f"{RECORD_HEADER}\n1,6,1,100,,25,1,12,2\n1,40,0,,4,,,,\n")
    data = read_dataset(path, observables=("conc",), time_unit="h", doses=[DosingInput(1)])
    np.testing.assert_allclose(data.dose_time[0] * 24, [6, 18, 30])
    np.testing.assert_allclose(data.dose_duration[0] * 24, [4, 4, 4])
    np.testing.assert_array_equal(data.dose_ss[0], [1, 0, 0])
    np.testing.assert_allclose(data.dose_ii[0] * 24, [12, 0, 0])
    records = data.records()
    assert records is not None and records.steady_states == 1
    again = read_dataset(data.to_frame(), observables=("conc",), doses=[DosingInput(1)])  # days, ADDL written out
    for field in ("dose_time", "dose_amount", "dose_duration", "dose_ss", "dose_ii", "dose_reset", "dose_input"):
        np.testing.assert_allclose(getattr(again, field), getattr(data, field), rtol=1e-15, err_msg=field)
    assert "Dose records: 3 infusions (RATE), 1 steady states (SS)" in data.summary()
    plain = read_dataset(write(tmp_path, f"{RECORD_HEADER}\n1,6,1,100,,0,0,12,2\n1,40,0,,4,,,,\n"), observables=("conc",), time_unit="h")
    assert plain.records() is None  # plain doses take the solver's lighter path
    assert "Dose records" not in plain.summary()


def test_hours_read_as_days_are_flagged(tmp_path):
    """pheno.dta's TIME reaches 389.8 h; its hours read as days would be a 16-month study, which
    passes, but a study of 40 days written in hours (960 h) read as days spans 2.6 years and one
    of 60 days (1,440 h) crosses the three-year line: a warning names the fix."""
    import warnings

    rows = "ID,TIME,EVID,AMT,DV\n1,0,1,100,\n1,1440,0,,3\n"
    with pytest.warns(UserWarning, match=r'TIME spans 1440 days \(over 3 years\), read as days. Fix: if TIME is in hours, read it with time_unit = "h"'):
        read_dataset(write(tmp_path, rows), observables=("conc",))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = read_dataset(write(tmp_path, rows), observables=("conc",), time_unit="h")
    assert float(data.obs_time[0, 0]) == 60.0


def test_time_messages_name_the_unit_the_time_is_read_in(tmp_path):
    path = write(tmp_path, "ID,TIME,EVID,AMT,DV\n1,-2,1,100,\n1,3,0,,3\n")
    with pytest.raises(DataError, match=r"TIME is negative \(-2\) at row 1. Fix: TIME counts hours from the first dose"):
        read_dataset(path, observables=("conc",), time_unit="h")
    with pytest.raises(DataError, match=r"TIME counts days from the first dose"):
        read_dataset(path, observables=("conc",))


def test_a_fit_starts_periods_only_where_the_columns_it_reads_change(tmp_path):
    """TIME_VARYING's WT and CRCL change at different times: a fit reading CRCL alone has periods
    where CRCL changes, and only the parameter of its effect follows a time-varying covariate."""
    import il2treg
    from il2treg.fit.problem import CovariateEffect, make_problem, problem_patients

    data = read_dataset(write(tmp_path, TIME_VARYING), observables=("conc",))
    model = il2treg.load_model("pk_1cmt_iv")
    problem = make_problem(model, data, fixed=("CL", "V"), random=("V",), sigmas=(), covariates=(CovariateEffect("CL", "CRCL", "power", 60.0),))
    assert problem.timed and problem.varying == ("CRCL",) and problem.follow_covariates == ("CL",)
    patients = problem_patients(problem, data)
    np.testing.assert_array_equal(np.asarray(patients.periods), [[0, 5], [0, 0]])
    np.testing.assert_array_equal(np.asarray(patients.covariates)[..., 0], [[60, 55], [80, 80]])
