"""Specification of the shipped reference tables: every number carries its source."""

from __future__ import annotations

import pandas as pd
import pytest

import il2treg.datasets
from il2treg.datasets import reference, reference_names
from il2treg.errors import InputError

NAMES = (
    "lupil2_sri4",
    "pooled_placebo_sri4",
    "sri4_given_sledai_fall",
    "dilfrequency_targets",
    "pk_anchors",
    "baseline_sledai",
    "treg_turnover",
    "published_studies",
)


def test_package_exports_only_the_reference_and_cohort_api():
    assert il2treg.datasets.__all__ == [
        "StudySummaries", "lupil2_virtual", "lupil2_virtual_truth", "read_summaries", "reference", "reference_names", "simulate_cohort",
        "study_summaries", "write_cohort",
    ]  # fmt: skip


def test_reference_names_are_the_documented_tables():
    assert reference_names() == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_row_carries_tag_citation_and_address(name):
    table = reference(name)
    assert isinstance(table, pd.DataFrame)
    assert len(table) > 0
    assert {"tag", "citation", "where"} <= set(table.columns)
    assert set(table["tag"]) <= {"READ", "DERIVED"}
    assert table["citation"].str.len().min() > 10
    assert table["where"].str.startswith("http").all()


def test_reference_returns_a_fresh_copy():
    table = reference("lupil2_sri4")
    table.loc[0, "rate"] = 0.0
    assert reference("lupil2_sri4").loc[0, "rate"] == 0.68


def test_unknown_table_lists_the_names():
    with pytest.raises(InputError) as info:
        reference("lupil2")
    assert str(info.value) == (
        "unknown reference table 'lupil2'. Fix: use one of: lupil2_sri4, pooled_placebo_sri4, "
        "sri4_given_sledai_fall, dilfrequency_targets, pk_anchors, baseline_sledai, treg_turnover, published_studies."
    )


def test_lupil2_rates_are_the_published_ones():
    table = reference("lupil2_sri4").set_index(["analysis", "arm"])
    assert table.loc[("ITT", "ILT-101"), "rate"] == 0.68
    assert table.loc[("ITT", "placebo"), "rate"] == 0.58
    assert table.loc[("PP", "ILT-101"), "rate"] == 0.833
    assert table.loc[("PP", "placebo"), "rate"] == 0.517
    assert table.loc[("ITT", "ILT-101"), "p_value"] == 0.3439
    assert table.loc[("PP", "placebo"), "p_value"] == 0.0168
    assert table.loc[("bulgarian_sites", "placebo"), "rate"] == 1.0


def test_lupil2_counts_are_flagged_derived_and_consistent():
    table = reference("lupil2_sri4")
    counted = table[table["analysis"].isin(["ITT", "PP"])]
    assert (counted["counts_tag"] == "DERIVED").all()
    assert (counted["tag"] == "READ").all()
    assert (abs(counted["responders"] / counted["n"] - counted["rate"]) < 5e-4).all()
    pp = counted[counted["analysis"] == "PP"]
    assert pp["n"].sum() == 53


def test_sri4_given_sledai_fall_is_derived_from_bliss_counts():
    row = reference("sri4_given_sledai_fall").iloc[0]
    assert row["tag"] == "DERIVED"
    assert row["numerator"] == 761
    assert row["denominator"] == row["responders"] + row["nonresponders_with_fall"] == 796
    assert round(row["numerator"] / row["denominator"], 3) == row["probability"] == 0.956


def test_pooled_placebo_rows_match_their_counts():
    table = reference("pooled_placebo_sri4").set_index(["study", "week"], drop=False)
    studies = {"Tselios pooled placebo", "BLISS-52", "BLISS-76", "TULIP-1+2 pooled"}
    assert set(table["study"]) == studies
    tulip = table[table["study"] == "TULIP-1+2 pooled"].iloc[0]
    # The source prints 40.1% for 147/366 (0.4016): rates are kept as printed, not recomputed.
    assert abs(tulip["placebo_responders"] / tulip["placebo_n"] - tulip["placebo_rate"]) < 1e-3
    assert abs(tulip["active_responders"] / tulip["active_n"] - tulip["active_rate"]) < 1e-3
    assert table[table["study"] == "BLISS-76"]["week"].tolist() == [52, 76]


def test_dilfrequency_targets_are_thirty_and_twentyfive_percent():
    table = reference("dilfrequency_targets")
    assert table["change"].tolist() == [0.30, 0.25]
    assert (table["dose_IU_per_m2"] == 260_000).all()
    assert (table["interval_days"] == 3).all()


def test_pk_anchors_hold_the_label_tmax_range():
    table = reference("pk_anchors")
    label = table[(table["source"] == "Proleukin label") & (table["quantity"] == "Tmax")].iloc[0]
    assert (label["low"], label["high"], label["unit"]) == (2, 6, "h")
    piscitelli = table[table["source"] == "Piscitelli 1996"].set_index("quantity")
    assert piscitelli.loc["Tmax", "value"] == 4.4
    sources = {"Konrad 1990", "Piscitelli 1996", "Kirchner 1998", "Proleukin label"}
    assert set(table["source"]) == sources
    has_number = table["value"].notna() | table["low"].notna()
    assert has_number.all()


def test_baseline_sledai_ranges_are_ordered():
    table = reference("baseline_sledai")
    assert (table["low"] <= table["high"]).all()
    sd = table.dropna(subset=["sd_low"])
    assert (sd["sd_low"] <= sd["sd_high"]).all()


def test_treg_turnover_doubling_times():
    table = reference("treg_turnover")
    assert table["doubling_time_days"].tolist() == [8, 24, 199]


def test_published_studies_has_eight_or_more_studies_each_number_with_its_reading():
    """The cross-study table: at least 8 studies; every row one number with its unit, where in the
    source it stands, how it was read and the words it was read from; a derived row shows its
    arithmetic, and that arithmetic gives the value."""
    table = reference("published_studies")
    assert table["study"].nunique() >= 8
    assert pd.api.types.is_float_dtype(table["value"]) and table["value"].notna().all()
    for column in ("citation", "population", "regimen", "arm", "observable", "time", "statistic", "unit", "location", "quote", "where"):
        assert table[column].notna().all() and (table[column].str.len() > 0).all(), column
    assert set(table["how_read"]) <= {"text", "table", "figure, digitised"}
    assert set(table["source_kind"]) <= {"primary", "conference abstract", "review"}
    assert set(table["qualifier"].dropna()) <= {">", "<"}
    assert table["where"].str.startswith("http").all()
    derived = table[table["tag"] == "DERIVED"]
    assert len(derived) and derived["derivation"].notna().all()
    for _, row in derived.iterrows():  # "a/b" counts
        a, b = (float(x) for x in row["derivation"].split("/"))
        assert row["value"] == pytest.approx(a / b, abs=5e-4), row["study"]
    rates = table[table["statistic"] == "proportion"]
    assert rates["value"].between(0, 1).all()  # proportions, not percentages
    days = table["time_day"].dropna()
    assert (days >= 0).all() and (days == days.round()).all()
    # the LUPIL-2 rows agree with the LUPIL-2 table
    sri4 = reference("lupil2_sri4")
    assert sorted(table.loc[table["study"] == "LUPIL-2", "value"]) == pytest.approx(sorted(sri4.loc[sri4["analysis"].isin(["ITT", "PP"]), "rate"]))
