"""The published study summaries as fittable rows (il2treg.datasets.summaries): each points at its
row of the published-studies table and keeps its number; the imputed standard errors follow the
file's one rule; regimens scale with the body-surface area; leaving a study out."""

from __future__ import annotations

import math

import numpy as np
import pytest

from il2treg.datasets import reference
from il2treg.datasets.summaries import study_summaries
from il2treg.errors import InputError


@pytest.fixture(scope="module")
def data():
    return study_summaries()


def test_each_summary_keeps_the_number_of_its_published_row(data):
    """The value is the row's value, or (DILfrequency's fractions above baseline) 1 + it; DILT1D's
    row is the dose that gives +10%, which becomes the arm's dose and a fold of 1.10."""
    table = reference("published_studies")
    assert len(data.study_names) >= 5
    for s, study, row in zip(data.summaries, data.studies, data.rows, strict=True):
        published = table.iloc[row]
        assert published["study"] == study, (row, study)
        value = float(published["value"])
        if study == "DILfrequency":
            assert s.value == pytest.approx(1.0 + value)
        elif study == "DILT1D":
            assert s.value == pytest.approx(1.10) and float(data.regimens[s.arm].amounts[0]) == pytest.approx(value * 1e6 * data.bsa_m2)
        else:
            assert s.value == pytest.approx(value)
        assert (s.bound == "lower") == (published["qualifier"] == ">")


def test_imputed_standard_errors_follow_the_files_rule(data):
    """Where the paper prints no dispersion: SD = 0.67 x the value (ULD 2014's printed range / 4
    over its mean), SE = SD / sqrt(n) for a mean and 1.2533 SD / sqrt(n) for a median."""
    cv = (31.1 - 1.2) / 4 / 11.1
    assert cv == pytest.approx(0.67, abs=0.005)
    table = reference("published_studies")
    for s, row in zip(data.summaries, data.rows, strict=True):
        if isinstance(table.iloc[row]["dispersion"], str) or table.iloc[row]["study"] == "DILT1D":
            continue  # a printed range or SE: derived from it, not imputed
        factor = 1.2533 if s.statistic == "median" else 1.0
        assert s.se == pytest.approx(factor * 0.67 * s.value / math.sqrt(s.n), abs=0.005), (row, s)


def test_doses_scale_with_the_body_surface_area_and_a_study_can_be_left_out(data):
    small = study_summaries(bsa_m2=0.9)
    for arm, regimen in data.regimens.items():
        np.testing.assert_allclose(np.asarray(small.regimens[arm].amounts) * 2.0, np.asarray(regimen.amounts))
    kept, left = data.without("Koreth 2016"), data.only("Koreth 2016")
    assert "Koreth 2016" not in kept.studies and set(left.studies) == {"Koreth 2016"}
    assert len(kept.summaries) + len(left.summaries) == len(data.summaries)
    assert set(left.regimens) == {"koreth2016_daily"} and "koreth2016_daily" not in kept.regimens
    with pytest.raises(InputError, match=r"no study 'Koreth 2017' among the summaries\. Fix: use one of DILT1D"):
        data.without("Koreth 2017")
    with pytest.raises(InputError, match=r"bsa_m2 must be a body-surface area > 0"):
        study_summaries(bsa_m2=0.0)
