"""Virtual trials: SRI-4 logic, analysis sets, the LUPIL-2 calibration, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import il2treg
from il2treg import trial
from il2treg.errors import InputError, RegimenError, SpecError

PUBLISHED = {
    ("itt", "il2"): 0.68,
    ("itt", "placebo"): 0.58,
    ("per_protocol", "il2"): 0.833,
    ("per_protocol", "placebo"): 0.517,
}


@pytest.fixture(scope="module")
def design():
    return trial.load_design("lupil2")


@pytest.fixture(scope="module")
def small(design, model):
    """20 replicate trials, every patient simulated (compiles the solves the other tests reuse)."""
    return trial.simulate_trial(design, 20, seed=3, model=model)


@pytest.fixture(scope="module")
def many(design, model):
    """500 replicate trials, every patient simulated (seed 0: the run quoted in the docs)."""
    return trial.simulate_trial(design, 500, seed=0, model=model)


# ------------------------------------------------------------------ observation model and SRI-4


def test_reported_score_rounds_to_even_points_and_floors_at_zero():
    x = np.array([-3.0, 0.4, 0.9, 1.1, 2.9, 3.2, 9.99, 12.6])
    np.testing.assert_array_equal(trial.reported_score(x, 2), [0, 0, 0, 2, 2, 4, 10, 12])
    np.testing.assert_array_equal(trial.reported_score(x, 1), [0, 0, 1, 1, 3, 3, 10, 13])


def test_sri4_needs_a_fall_of_four_points_and_no_veto():
    baseline = np.array([10, 10, 10, 10, 6, 8, 12])
    week12 = np.array([6, 8, 2, 6, 2, np.nan, 12])
    keep = np.array([True, True, True, False, True, True, True])
    expected = [True, False, True, False, True, False, False]
    np.testing.assert_array_equal(trial.sri4(baseline, week12, keep), expected)


def test_a_fall_of_exactly_four_is_enough_and_three_is_not():
    assert trial.sri4([7.0], [3.0], [True], fall=4.0)[0]
    assert not trial.sri4([7.0], [4.0], [True], fall=4.0)[0]


def test_response_probability_matches_monte_carlo_of_the_score_model(design):
    rng = np.random.default_rng(1)
    l0 = np.array([5.0, 8.0, 11.0, 15.0])
    l12 = np.array([3.0, 4.0, 9.0, 14.0])
    p_entry, p_both = trial.response_probability(l0, l12, design)
    n = 200_000
    sd, h = design.sledai_noise_sd, design.score_step
    y0 = trial.reported_score(l0[:, None] + sd * rng.standard_normal((4, n)), h)
    y12 = trial.reported_score(l12[:, None] + sd * rng.standard_normal((4, n)), h)
    entered = y0 >= design.entry_sledai_min
    np.testing.assert_allclose(p_entry, entered.mean(1), atol=0.005)
    np.testing.assert_allclose(p_both, (entered & (y0 - y12 >= 4)).mean(1), atol=0.005)


@pytest.mark.slow
def test_site_shift_of_pmax_equals_solving_with_the_shifted_pmax(design, model, small):
    """The site effect is added to the solved latent score; it must equal a solve with pmax + b."""
    days = design.visit_days
    params = il2treg.sample_population(model, 3, seed=5)
    shift = np.array([-1.0, 2.0, 7.5])
    base, _, _ = trial._solve_arm(model, design.regimens["il2"], days, params, il2treg.SolverOptions())
    moved = params.replace(pmax=params["pmax"] + shift)
    direct, _, _ = trial._solve_arm(model, design.regimens["il2"], days, moved, il2treg.SolverOptions())
    kpl = np.asarray(params["kpl"])[:, None]
    analytic = base - shift[:, None] * (1.0 - np.exp(-kpl * days[None, :]))
    np.testing.assert_allclose(direct, analytic, atol=1e-6)


# ------------------------------------------------------------------ one batch of replicate trials


def test_result_shapes_follow_the_design(design, small):
    t, p, v = 20, design.n_patients, len(design.visit_weeks)
    assert small.sledai.shape == small.sledai_latent.shape == small.treg_pct_cd4.shape == (t, p, v)
    assert small.responder.shape == small.per_protocol.shape == small.site.shape == (t, p)
    assert small.n.shape == small.responders.shape == (2, t, 2)
    assert small.p_value.shape == (2, t)
    np.testing.assert_array_equal(small.arm, [0] * 50 + [1] * 50)
    assert small.n_failed == 0


def test_reported_sledai_is_even_and_every_baseline_meets_entry(design, small):
    observed = small.sledai[~np.isnan(small.sledai)]
    assert np.all(observed % 2 == 0) and np.all(observed >= 0)
    assert np.all(small.sledai[..., 0] >= design.entry_sledai_min)


def test_itt_holds_every_randomised_patient(small):
    np.testing.assert_array_equal(small.n[0], np.full((20, 2), 50))


def test_per_protocol_excludes_high_response_sites_and_dropouts(design, small):
    high = small.site < design.n_high_response_sites
    np.testing.assert_array_equal(small.per_protocol, ~high & ~small.dropout)
    counted = np.stack([(small.per_protocol & (small.arm == k)).sum(-1) for k in range(2)], axis=-1)
    np.testing.assert_array_equal(small.n[1], counted)


def test_dropouts_are_non_responders_with_missing_assessment(design, small):
    assert small.dropout.any()
    assert not small.responder[small.dropout].any()
    assert np.isnan(small.sledai[..., design.assessment_index][small.dropout]).all()


def test_responders_are_the_sri4_of_the_reported_scores(design, small):
    fell = small.sledai[..., 0] - small.sledai[..., design.assessment_index] >= design.sri4_fall
    assert not (small.responder & ~fell).any()  # every responder fell by 4 points
    vetoed = fell & ~small.responder
    assert 0 < vetoed.sum() < 0.1 * fell.sum()  # about 4.4% of those who fell are vetoed


def test_same_seed_gives_the_same_trials(design, model, small):
    again = trial.simulate_trial(design, 20, seed=3, model=model)
    np.testing.assert_array_equal(again.sledai, small.sledai)
    np.testing.assert_array_equal(again.p_value, small.p_value)


def test_a_link_parameter_drawn_per_replicate_moves_only_the_il2_arm(design, model, small):
    """uncertain=("imax",): each replicate's typical imax from its prior; the patients, sites and
    visits are drawn as without it (the same seed), so the placebo arm is unchanged and the IL-2
    arm's latent SLEDAI at the assessment falls further exactly where the drawn imax is larger."""
    drawn = trial.simulate_trial(design, 20, seed=3, model=model, uncertain=("imax",))
    imax = drawn.drawn["imax"]
    assert imax.shape == (20,) and np.unique(imax).size == 20
    placebo = small.arm == 1
    np.testing.assert_allclose(drawn.sledai_latent[:, placebo], small.sledai_latent[:, placebo], rtol=1e-12)
    assessment = -1
    shift = (drawn.sledai_latent[:, ~placebo, assessment] - small.sledai_latent[:, ~placebo, assessment]).mean(axis=1)
    assert np.all(np.sign(shift) == -np.sign(imax - float(model.typical()["imax"])))
    summary = drawn.summary()
    assert summary["itt"]["difference_p5"] < summary["itt"]["difference"] < summary["itt"]["difference_p95"]
    assert "assurance" in trial.format_summary(summary) and "difference_p5" not in small.summary()["itt"]
    with pytest.raises(InputError, match="pool_size"):
        trial.simulate_trial(design, 2, seed=0, model=model, uncertain=("imax",), pool_size=10)
    with pytest.raises(InputError, match="no prior_sd"):
        trial.simulate_trial(design, 2, seed=0, model=model, uncertain=("ka",))


def test_placebo_in_both_arms_shows_no_difference(design, model):
    result = trial.simulate_trial(design, 300, seed=1, model=model, regimen=il2treg.regimen.placebo(), pool_size=512)
    s = result.summary()
    assert abs(s["itt"]["difference"]) < 0.03
    assert s["itt"]["power"] < 0.08  # about alpha (Fisher is conservative)


def test_p_values_are_fishers_exact_test(small):
    from scipy.stats import fisher_exact

    r, n = small.responders[1, 0], small.n[1, 0]
    expected = fisher_exact([[r[0], n[0] - r[0]], [r[1], n[1] - r[1]]]).pvalue
    assert small.p_value[1, 0] == pytest.approx(expected)


def test_chi2_option_uses_pearsons_test_without_correction(design, model):
    from scipy.stats import chi2_contingency

    result = trial.simulate_trial(design.replace(test="chi2"), 5, seed=3, model=model)
    r, n = result.responders[0, 0], result.n[0, 0]
    expected = chi2_contingency([[r[0], n[0] - r[0]], [r[1], n[1] - r[1]]], correction=False).pvalue
    assert result.p_value[0, 0] == pytest.approx(expected)


def test_to_frame_has_one_row_per_patient_and_visit(small):
    frame = small.to_frame(trial=0)
    assert len(frame) == 100 * 3
    assert set(frame["ARM"]) == {"il2", "placebo"}


# ------------------------------------------------------------------ the LUPIL-2 calibration


@pytest.mark.slow
def test_mean_sri4_rates_are_within_5_points_of_lupil2(many):
    summary = many.summary()
    for (analysis, arm), published in PUBLISHED.items():
        simulated = summary[analysis][arm]
        assert abs(simulated - published) <= 0.05, (analysis, arm, simulated, published)


@pytest.mark.slow
def test_the_multistudy_model_reproduces_the_lupil2_rates_too(design):
    """models/il2_treg_sledai_multistudy.toml (the mechanism of lowest AIC in the multi-study comparison, its
    Treg response stronger than the reference's) has its own link calibrated to the same rates, the
    trial design held: 200 replicates (seed 0) within 5 points of each published rate."""
    summary = trial.simulate_trial(
        design, 200, seed=0, model=il2treg.load_model("il2_treg_sledai_multistudy")
    ).summary()
    for (analysis, arm), published in PUBLISHED.items():
        assert abs(summary[analysis][arm] - published) <= 0.05, (analysis, arm, summary[analysis][arm], published)


@pytest.mark.slow
def test_pooled_patients_give_the_same_mean_rates(design, model, many):
    pooled = trial.simulate_trial(design, 500, seed=1, model=model, pool_size=2048).summary()
    full = many.summary()
    for analysis, arm in PUBLISHED:
        assert pooled[analysis][arm] == pytest.approx(full[analysis][arm], abs=0.03)


@pytest.mark.slow
def test_per_protocol_size_is_about_53(many):
    assert many.n[1].sum(-1).mean() == pytest.approx(53, abs=2)


@pytest.mark.slow
def test_per_protocol_comparison_has_more_power_than_itt(many):
    summary = many.summary()
    assert summary["per_protocol"]["power"] > summary["itt"]["power"]


def test_summary_has_exactly_the_required_keys(small):
    summary = small.summary()
    assert set(summary) == {"itt", "per_protocol", "replicates"}
    for analysis in ("itt", "per_protocol"):
        assert set(summary[analysis]) == {"il2", "placebo", "difference", "power"}
        assert all(isinstance(v, float) and 0 <= abs(v) <= 1 for v in summary[analysis].values())
    assert summary["replicates"] == 20 and isinstance(summary["replicates"], int)


def test_format_summary_is_a_table_of_both_sets(small):
    text = trial.format_summary(small.summary())
    assert "ITT" in text and "per-protocol" in text and "20 replicate" in text


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("n_trials", [0, -3, 2.5, "10"])
def test_n_trials_must_be_a_positive_integer(design, n_trials):
    with pytest.raises(InputError, match=r"n_trials must be a whole number >= 1.*Fix:"):
        trial.simulate_trial(design, n_trials, seed=0)


def test_negative_seed_is_rejected(design):
    with pytest.raises(InputError, match=r"seed must be a whole number >= 0"):
        trial.simulate_trial(design, 1, seed=-1)


def test_unknown_arm_in_the_design_is_named(design):
    with pytest.raises(InputError, match=r"unknown arm 'active' in TrialDesign.n_per_arm.*Fix: name the arms 'il2' and 'placebo'"):
        design.replace(n_per_arm={"active": 50, "placebo": 50})


def test_missing_arm_is_named(design):
    with pytest.raises(InputError, match=r"no entry for arm 'placebo'"):
        design.replace(regimens={"il2": il2treg.regimen.lupil2()})


def test_unknown_arm_or_set_in_a_result_is_named(small):
    with pytest.raises(InputError, match=r"unknown arm 'drug'.*Fix: use one of 'il2', 'placebo'"):
        small.rate("itt", "drug")
    with pytest.raises(InputError, match=r"unknown analysis set 'mITT'"):
        small.rate("mITT", "il2")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dropout": 1.5}, r"dropout = 1.5 is above its allowed range"),
        ({"bilag_pga_keep": -0.1}, r"bilag_pga_keep = -0.1 is below its allowed range"),
        ({"sledai_noise_sd": float("nan")}, r"sledai_noise_sd must be a finite number"),
        ({"n_per_arm": {"il2": 0, "placebo": 50}}, r"n_per_arm\['il2'\] must be a whole number >= 1"),
        ({"n_high_response_sites": 11}, r"n_high_response_sites \(11\) must be fewer than n_sites \(11\)"),
        ({"visit_weeks": (4, 12)}, r"visit_weeks must start with the baseline visit 0"),
        ({"visit_weeks": (0, 12, 8)}, r"visit_weeks must increase strictly"),
        ({"assessment_week": 24}, r"assessment_week 24 is not a post-baseline visit"),
        ({"test": "t-test"}, r"unknown responder test 't-test'"),
        ({"high_site_share": 1.0}, r"high_site_share is 1"),
        ({"colour": "red"}, r"TrialDesign has no field 'colour'"),
    ],
)
def test_bad_design_values_are_rejected_with_a_fix(design, changes, message):
    with pytest.raises(InputError, match=message) as info:
        design.replace(**changes)
    assert "Fix:" in str(info.value)


def test_regimen_override_must_be_a_regimen(design):
    with pytest.raises(RegimenError, match=r"regimen must be an il2treg.Regimen, got str.*Fix:"):
        trial.simulate_trial(design, 1, seed=0, regimen="lupil2")


def test_batched_regimen_override_is_rejected(design):
    batched = il2treg.regimen.stack([il2treg.regimen.lupil2(), il2treg.regimen.lupil2()])
    with pytest.raises(RegimenError, match=r"regimen is batched"):
        trial.simulate_trial(design, 1, seed=0, regimen=batched)


def test_unknown_design_name_lists_the_known_ones():
    with pytest.raises(SpecError, match=r"unknown trial design 'lupil3'.*Fix: use one of lupil2"):
        trial.load_design("lupil3")


def test_design_file_with_a_wrong_unit_is_rejected(tmp_path):
    text = trial.resolve_design_path("lupil2").read_text()
    bad = tmp_path / "bad_trial.toml"
    bad.write_text(text.replace('value = 2.5\nunit = "points"', 'value = 2.5\nunit = "%"', 1))
    with pytest.raises(SpecError, match=r"parameter 'sledai_noise_sd' is in '%'; the design needs 'points'"):
        trial.load_design(bad)


def test_format_summary_rejects_something_else():
    with pytest.raises(InputError, match=r"not a trial summary"):
        trial.format_summary({"itt": {}})
