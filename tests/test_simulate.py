"""Specification of il2treg.simulate: closed forms, dosing features, gradients, batching, calibration."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import il2treg
from handwritten import pk
from il2treg import regimen as rg
from il2treg.errors import InputError, PrecisionError, RegimenError
from il2treg.simulate import chunk_shape, chunked_map, iter_simulations, ordered_map, work_order

DAY_PER_HOUR = 1.0 / 24.0


def _exo_closed_form(model, reg, t):
    p = model.typical()
    return np.asarray(
        pk.closed_form_pM(
            jnp.asarray(t), reg.times, reg.amounts,
            ka=p["ka"], ke=p["CL"] / p["V"], V=p["V"], F=p["F"], tlag=p["tlag"],
        )
    )  # fmt: skip


def _times_around_doses(reg, model, n_grid=1000):
    tau = np.asarray(reg.times) + float(model.typical()["tlag"])
    grid = np.linspace(0.0, 84.0, n_grid)
    near = np.concatenate([tau - 1e-6, tau + 1e-6, np.asarray(reg.times)])
    return np.sort(np.concatenate([grid, near]))


# ----------------------------------------------------------------------------- closed form


def test_il2_matches_closed_form_superposition_for_lupil2(model_no_sink, lupil2, tight):
    t = _times_around_doses(lupil2, model_no_sink)
    assert t.size >= 1000
    sim = il2treg.simulate(model_no_sink, lupil2, t, options=tight)
    expected = _exo_closed_form(model_no_sink, lupil2, t) + float(model_no_sink.typical()["il2_endo"])
    rel = np.abs(np.asarray(sim["il2_pM"]) - expected) / expected
    assert rel.max() < 1e-6


@pytest.mark.slow
def test_receptor_sink_lowers_exposure_as_tregs_expand(model, model_no_sink, lupil2):
    t = np.array([77.0 + 3.5 / 24])  # near the peak of the last weekly dose
    with_sink = float(il2treg.simulate(model, lupil2, t)["il2_pM"][0])
    without = float(il2treg.simulate(model_no_sink, lupil2, t)["il2_pM"][0])
    assert with_sink < without


# ----------------------------------------------------------------------------- dosing scenarios


def test_single_dose_matches_closed_form(model_no_sink, tight):
    reg = rg.Regimen(times=np.array([2.0]), amounts=np.array([1.5e6]))
    t = np.linspace(0.0, 6.0, 301)
    sim = il2treg.simulate(model_no_sink, reg, t, options=tight)
    exo = np.asarray(sim["il2_pM"]) - float(model_no_sink.typical()["il2_endo"])
    np.testing.assert_allclose(exo, _exo_closed_form(model_no_sink, reg, t), rtol=1e-7, atol=1e-9)


def test_dose_at_time_zero_with_no_lag_observed_at_zero_is_baseline(model_no_sink, tight):
    p = model_no_sink.parameters(tlag=0.0)
    reg = rg.Regimen(times=np.array([0.0]), amounts=np.array([1.5e6]))
    sim = il2treg.simulate(model_no_sink, reg, np.array([0.0, 0.1]), p, options=tight)
    assert float(sim["il2_pM"][0]) == pytest.approx(float(p["il2_endo"]), rel=1e-12)
    assert float(sim["il2_pM"][1]) > 10.0


@pytest.mark.slow
def test_two_doses_at_the_same_time_equal_one_dose_of_their_sum(model, tight):
    t = np.linspace(0.0, 20.0, 81)
    two = rg.Regimen(times=np.array([1.0, 1.0]), amounts=np.array([0.5e6, 1.0e6]))
    one = rg.Regimen(times=np.array([1.0]), amounts=np.array([1.5e6]))
    a = il2treg.simulate(model, two, t, options=tight).values
    b = il2treg.simulate(model, one, t, options=tight).values
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_lag_time_shifts_the_concentration_curve(model_no_sink, tight):
    reg = rg.Regimen(times=np.array([1.0]), amounts=np.array([1.5e6]))
    lag_h = 1.5
    t = np.linspace(0.0, 3.0, 121)
    lagged = il2treg.simulate(model_no_sink, reg, t + lag_h / 24, model_no_sink.parameters(tlag=lag_h), options=tight)
    unlagged = il2treg.simulate(model_no_sink, reg, t, model_no_sink.parameters(tlag=0.0), options=tight)
    np.testing.assert_allclose(lagged["il2_pM"], unlagged["il2_pM"], rtol=1e-8)
    before = il2treg.simulate(model_no_sink, reg, np.array([1.0 + 0.9 * lag_h / 24]), model_no_sink.parameters(tlag=lag_h))
    assert float(before["il2_pM"][0]) == pytest.approx(float(model_no_sink.typical()["il2_endo"]), rel=1e-12)


@pytest.mark.slow
def test_exposure_scales_with_bioavailability(model_no_sink, tight):
    reg = rg.Regimen(times=np.array([0.0]), amounts=np.array([1.5e6]))
    t = np.linspace(0.05, 1.0, 20)
    endo = float(model_no_sink.typical()["il2_endo"])
    low = np.asarray(il2treg.simulate(model_no_sink, reg, t, model_no_sink.parameters(F=0.2), options=tight)["il2_pM"]) - endo
    high = np.asarray(il2treg.simulate(model_no_sink, reg, t, model_no_sink.parameters(F=0.6), options=tight)["il2_pM"]) - endo
    np.testing.assert_allclose(high, 3.0 * low, rtol=1e-8)


@pytest.mark.slow
def test_addl_ii_rows_simulate_like_explicit_rows(model):
    compact = pd.DataFrame({"ID": [1, 1], "TIME": [0.0, 7.0], "EVID": [1, 1], "AMT": [1.5e6, 1.5e6], "ADDL": [4, 10], "II": [1.0, 7.0]})
    explicit = pd.DataFrame({"ID": 1, "TIME": [0, 1, 2, 3, 4, *range(7, 78, 7)], "EVID": 1, "AMT": 1.5e6})
    a, b = rg.from_nonmem(compact)[1], rg.from_nonmem(explicit)[1]
    t = np.linspace(0, 84, 169)
    np.testing.assert_array_equal(il2treg.simulate(model, a, t).values, il2treg.simulate(model, b, t).values)


def test_observation_at_a_dose_time_is_the_pre_dose_value(model, tight):
    p = model.parameters(tlag=0.0)
    reg = rg.Regimen(times=np.array([0.0, 2.0]), amounts=np.array([1.5e6, 1.5e6]))
    sim = il2treg.simulate(model, reg, np.array([2.0 - 1e-7, 2.0, 2.0 + 1e-3]), p, options=tight)
    il2 = np.asarray(sim["il2_pM"])
    assert il2[1] == pytest.approx(il2[0], rel=1e-6)
    assert il2[2] > il2[1] + 0.1


@pytest.mark.slow
@pytest.mark.parametrize("reg", [rg.lupil2(), rg.placebo()], ids=["lupil2", "no-dose"])
def test_repeated_observation_times_share_one_save_and_give_the_same_values(model, reg):
    # Several observation types of one sample share a time: the solve saves once per distinct
    # time (fewer save slots), and every row gets exactly the value of its time.
    from il2treg.simulate import slots_needed

    distinct = np.array([0.0, 0.25, 4.0, 7.0, 14.0, 28.0, 84.0])
    rows = np.repeat(distinct, [3, 1, 4, 2, 5, 1, 6])
    once = il2treg.simulate(model, reg, distinct).values
    repeated = il2treg.simulate(model, reg, rows).values
    np.testing.assert_array_equal(np.asarray(repeated), np.asarray(once)[np.searchsorted(distinct, rows)])
    dose_times = np.asarray(reg.times)
    assert slots_needed(dose_times, rows, 0.1) == slots_needed(dose_times, distinct, 0.1)
    assert slots_needed(dose_times, rows, 0.1) == (len(distinct) if reg.times.size == 0 else 2)


@pytest.mark.slow
@pytest.mark.parametrize("reg", [rg.placebo(), rg.Regimen(times=np.array([0.0, 7.0]), amounts=np.zeros(2))], ids=["none", "zero-amounts"])
def test_no_dose_keeps_every_state_at_baseline(model, reg, daily_grid):
    sim = il2treg.simulate(model, reg, daily_grid)
    baseline = il2treg.simulate(model, reg, daily_grid[:1])
    drug_free = np.asarray(sim.values)
    # every observable except SLEDAI (which follows the standard-of-care course) stays at baseline
    idx = [i for i, n in enumerate(sim.names) if n != "sledai"]
    expected = np.broadcast_to(np.asarray(baseline.values)[:, idx], drug_free[:, idx].shape)
    np.testing.assert_allclose(drug_free[:, idx], expected, rtol=1e-9, atol=1e-12)
    p = model.typical()
    soc = float(p["sledai0"]) - float(p["pmax"]) * (1 - np.exp(-float(p["kpl"]) * daily_grid))
    np.testing.assert_allclose(sim["sledai"], soc, rtol=1e-9)


@pytest.mark.parametrize("name", ["il2_treg_sledai", "il2_treg_sledai_no_delay", "il2_treg_sledai_no_sink", "il2_treg_sledai_no_cd25_feedback"])
def test_vector_field_is_exactly_zero_at_baseline(name):
    model = il2treg.load_model(name)
    mechanism = model.mechanism
    for values in (model.typical().values, il2treg.sample_population(model, 3, seed=1).values[2]):
        args = mechanism.prepare(values)
        y0 = mechanism.initial_state(args)
        for t in (0.0, 10.0, 84.0):
            assert np.all(np.asarray(mechanism.vector_field(t, y0, args)) == 0.0)


# ----------------------------------------------------------------------------- gradients


def _objective(model, options):
    t = jnp.array([0.1, 0.3, 2.0, 5.0, 7.0, 20.0, 50.0, 84.0])
    weights = jnp.linspace(1.0, 2.0, len(il2treg.OBSERVABLE_NAMES))

    def f(theta, dose_times, amounts):
        reg = rg.Regimen(times=dose_times, amounts=amounts)
        sim = il2treg.simulate(model, reg, t, il2treg.Parameters(theta, model.parameter_names), options=options)
        return jnp.sum(jnp.log(sim.values) * weights)

    return f


@pytest.mark.slow
def test_gradient_wrt_every_parameter_matches_central_differences(model, lupil2, tight):
    f = _objective(model, tight)
    theta = model.typical().values
    grad = np.asarray(jax.grad(f)(theta, lupil2.times, lupil2.amounts))
    for i, name in enumerate(model.parameter_names):
        h = 1e-4 * max(abs(float(theta[i])), 1e-3)
        fd = (f(theta.at[i].add(h), lupil2.times, lupil2.amounts) - f(theta.at[i].add(-h), lupil2.times, lupil2.amounts)) / (2 * h)
        fd = float(fd)
        assert abs(grad[i] - fd) <= 1e-5 * abs(fd) + 1e-9, (name, grad[i], fd)


@pytest.mark.slow
def test_gradient_wrt_dose_times_and_amounts_matches_central_differences(model, lupil2, tight):
    f = _objective(model, tight)
    theta = model.typical().values
    g_t, g_a = jax.grad(f, argnums=(1, 2))(theta, lupil2.times, lupil2.amounts)
    for k in (0, 4, 5, 15):
        h = 1e-4
        e = jnp.zeros_like(lupil2.times).at[k].set(h)
        fd_t = (f(theta, lupil2.times + e, lupil2.amounts) - f(theta, lupil2.times - e, lupil2.amounts)) / (2 * h)
        assert abs(float(g_t[k]) - float(fd_t)) <= 1e-5 * abs(float(fd_t)) + 1e-9
        ha = 1e-4 * 1.5e6
        ea = jnp.zeros_like(lupil2.amounts).at[k].set(ha)
        fd_a = (f(theta, lupil2.times, lupil2.amounts + ea) - f(theta, lupil2.times, lupil2.amounts - ea)) / (2 * ha)
        assert abs(float(g_a[k]) - float(fd_a)) <= 1e-5 * abs(float(fd_a)) + 1e-15


@pytest.mark.parametrize("mode", ["jacfwd", pytest.param("grad", marks=pytest.mark.slow)])
def test_derivatives_through_a_batch_of_patients_match_central_differences(model, lupil2, tight, mode):
    """jacfwd (forward-mode sensitivities, diffrax.ForwardMode) and grad of a sum over a vmapped
    batch of 3 patients of the 16-state reference model, with respect to a parameter every patient
    shares, as the summary fits take it. Before the fix in model/compile.py the forward mode was a
    shape error."""
    import diffrax as dfx

    options = tight if mode == "grad" else eqx.tree_at(lambda o: o.adjoint, tight, dfx.ForwardMode())
    names = model.parameter_names
    base = jnp.asarray(model.typical().values)
    spread = jnp.asarray([0.8, 1.0, 1.3])[:, None] * jnp.ones((1, len(names)))
    k = names.index("emax_treg")

    def f(log_emax):
        theta = base.at[k].set(jnp.exp(log_emax))[None, :] * spread
        sim = il2treg.simulate(model, lupil2, jnp.asarray([3.0, 7.0, 30.0]), il2treg.Parameters(theta, names), options=options)
        return jnp.sum(jnp.log(sim["treg_per_uL"]))

    x = jnp.log(base[k])
    derivative = float((jax.jacfwd if mode == "jacfwd" else jax.grad)(f)(x))
    h = 1e-5
    fd = float((f(x + h) - f(x - h)) / (2 * h))
    assert derivative == pytest.approx(fd, rel=1e-6), (derivative, fd)


# ----------------------------------------------------------------------------- batches


def test_calls_of_nearby_sizes_share_one_compiled_solve_and_padding_changes_no_value(model, caplog):
    """Concrete inputs are padded to shared sizes (patients, doses, observation times, save
    slots): these four calls build one program, and its values equal, bit for bit, those of the
    unpadded batch that a traced call (under jit, whose shapes are the caller's) solves."""
    options = il2treg.SolverOptions(rtol=1.3e-7)  # a program no other test builds
    six = il2treg.sample_population(model, 6, seed=11)
    five = il2treg.Parameters(six.values[:5], six.names)
    # 4, 0, 1 and 2 doses; 29 and 33 times; 5 and 6 patients; 28 to 32 times after the last dose
    calls = [
        (rg.every(0.5e6, 0.25, 4), np.linspace(0.0, 84.0, 29), five),
        (rg.placebo(), np.linspace(0.0, 84.0, 29), six),
        (rg.daily(1e6, 1), np.linspace(0.0, 84.0, 29), five),
        (rg.every(0.5e6, 0.5, 2), np.linspace(0.0, 84.0, 33), six),
    ]
    with caplog.at_level("WARNING", logger="jax"), jax.log_compiles(True):
        sims = [il2treg.simulate(model, reg, t, p, options=options) for reg, t, p in calls]
    built = [r for r in caplog.records if r.getMessage().startswith("Compiling jit(_simulate_batch)")]
    assert len(built) == 1, [r.getMessage()[:120] for r in built]
    for (_, t, p), sim in zip(calls, sims):
        assert sim.values.shape == (p.values.shape[0], t.size, len(il2treg.OBSERVABLE_NAMES))
    # the most padded call (6 patients, 16 doses, 64 times for 5, 1 and 29), solved unpadded
    reg, t, p = calls[2]
    traced = jax.jit(lambda th: il2treg.simulate(model, reg, t, il2treg.Parameters(th, p.names), options=options).values)
    np.testing.assert_array_equal(sims[2].values, traced(p.values))


@pytest.mark.slow
def test_vmap_batch_equals_a_loop_over_patients(model):
    params = il2treg.sample_population(model, 4, seed=3)
    regs = [rg.lupil2(), rg.placebo(), rg.every(0.5e6, 3.0, 10), rg.lupil2(n_weekly=4)]
    t = np.linspace(0.0, 84.0, 57)
    batch = il2treg.simulate(model, rg.stack(regs), t, params)
    assert batch.values.shape == (4, 57, len(il2treg.OBSERVABLE_NAMES))
    for i, reg in enumerate(regs):
        one = il2treg.simulate(model, reg, t, il2treg.Parameters(params.values[i], params.names))
        np.testing.assert_allclose(batch.values[i], one.values, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_regimens_simulated_together_equal_each_simulated_alone(model):
    """simulate_regimens runs regimens of 16, 0 and 12 doses on grids of 30, 3 and 7 times through
    one program (padded doses and times) and gives what simulate gives for each, bit for bit."""
    params = il2treg.sample_population(model, 3, seed=5)
    regs = {"lupil2": rg.lupil2(), "placebo": rg.placebo(), "weekly": rg.weekly_only()}
    grids = {"lupil2": np.linspace(0.0, 84.0, 30), "placebo": np.array([0.0, 7.0, 84.0]), "weekly": np.array([0.0, 1.0, 2.0, 7.0, 7.5, 7.5, 84.0])}
    together = il2treg.simulate_regimens(model, regs, grids, params)
    assert list(together) == list(regs)
    one_at_a_time = iter_simulations(model, regs, grids, params)
    name, first = next(one_at_a_time)
    assert name == "lupil2" and np.array_equal(first.values, together["lupil2"].values)
    for name, reg in regs.items():
        alone = il2treg.simulate(model, reg, grids[name], params)
        assert together[name].values.shape == (3, len(grids[name]), len(il2treg.OBSERVABLE_NAMES))
        np.testing.assert_array_equal(together[name].times, alone.times)
        np.testing.assert_array_equal(together[name].values, alone.values)
        np.testing.assert_array_equal(together[name].status, alone.status)


@pytest.mark.slow
def test_given_save_slots_are_used_and_too_few_flag_the_patient_instead_of_a_wrong_value(model, lupil2):
    """save_slots = the number needed gives simulate's values (bit for bit; with traced times,
    where simulate would otherwise reserve a slot for every time, to rounding); one slot fewer
    flags the patient (status STATUS_SLOTS_EXCEEDED, NaN values)."""
    from il2treg.simulate import STATUS_SLOTS_EXCEEDED, slots_needed

    t = np.array([0.0, 0.5, 1.0, 1.5, 2.5, 8.0, 9.0, 9.5])
    need = slots_needed(np.asarray(lupil2.times), t, model.spec["tlag"].bounds[1])
    assert need == 3
    default = il2treg.simulate(model, lupil2, t)
    given = il2treg.SolverOptions(save_slots=need)
    np.testing.assert_array_equal(il2treg.simulate(model, lupil2, t, options=given).values, default.values)
    traced = jax.jit(lambda times: il2treg.simulate(model, lupil2, times, options=given).values)(jnp.asarray(t))
    np.testing.assert_allclose(traced, default.values, rtol=1e-13, atol=0)  # another program (outer jit): rounding
    short = il2treg.simulate(model, lupil2, t, options=il2treg.SolverOptions(save_slots=need - 1))
    assert int(short.status) == STATUS_SLOTS_EXCEEDED and np.isnan(np.asarray(short.values)).all()
    assert "save slots" in short.status_message(int(short.status))


def test_simulate_regimens_names_what_is_wrong(model):
    regs = {"a": rg.lupil2(), "b": rg.placebo()}
    with pytest.raises(InputError, match=r"times are given for \['a'\] but the regimens are \['a', 'b'\]"):
        il2treg.simulate_regimens(model, regs, {"a": np.array([0.0, 1.0])})
    with pytest.raises(InputError, match="regimen 'b' is batched"):
        il2treg.simulate_regimens(model, {"a": rg.lupil2(), "b": rg.stack([rg.placebo()])}, np.array([0.0, 1.0]))
    with pytest.raises(InputError, match="times must be sorted"):
        il2treg.simulate_regimens(model, regs, {"a": np.array([0.0, 1.0]), "b": np.array([2.0, 1.0])})
    with pytest.raises(InputError, match="no regimens"):
        il2treg.simulate_regimens(model, {}, np.array([0.0, 1.0]))
    with pytest.raises(InputError, match="times for 'a' are traced"):
        jax.jit(lambda t: il2treg.simulate_regimens(model, regs, t)["a"].values)(jnp.asarray([0.0, 1.0]))


def test_work_order_puts_patients_without_doses_first_then_orders_by_stiffness():
    amounts = jnp.asarray([[1.5e6, 1.5e6], [0.0, 0.0], [1.5e6, 0.0], [1.5e6, 1.5e6], [0.0, 0.0]])
    stiffness = jnp.asarray([3.0, 9.0, 1.0, 2.0, 4.0])
    assert list(np.asarray(work_order(amounts))) == [1, 4, 2, 0, 3]  # stable within a dose count
    assert list(np.asarray(work_order(amounts, stiffness))) == [4, 1, 2, 3, 0]
    xs = (jnp.arange(5.0), jnp.arange(10.0).reshape(5, 2))
    out = ordered_map(lambda x: x[0] + x[1].sum(), xs, work_order(amounts, stiffness), batch_size=2)
    np.testing.assert_array_equal(out, xs[0] + xs[1].sum(axis=1))


@pytest.mark.parametrize(("n", "batch_size", "shape"), [(24, 16, (2, 12)), (100, 16, (7, 15)), (10_000, 128, (79, 127)), (5, 16, (1, 5)), (32, 16, (2, 16))])
def test_chunks_are_equal_and_as_few_as_the_batch_size_allows(n, batch_size, shape):
    chunks, size = chunk_shape(n, batch_size)
    assert (chunks, size) == shape
    assert size <= batch_size and chunks * size >= n and chunks * size - n < chunks
    assert (chunks - 1) * batch_size < n  # no fewer chunks of at most batch_size rows hold n


def test_chunked_map_traces_the_function_once_and_keeps_every_row():
    """lax.map with a batch size that does not divide the rows traces (and compiles) the
    function twice, once for the remainder; equal chunks trace it once."""
    traces = []

    def fn(x):
        traces.append(1)
        return x[0] * 2.0 + x[1].sum()

    xs = (jnp.arange(23.0), jnp.arange(46.0).reshape(23, 2))
    jax.lax.map(fn, xs, batch_size=16)
    assert len(traces) == 2
    traces.clear()
    out = jax.jit(lambda xs: chunked_map(fn, xs, 16))(xs)
    assert len(traces) == 1
    np.testing.assert_array_equal(out, xs[0] * 2.0 + xs[1].sum(axis=1))


@pytest.mark.parametrize(("kwargs", "says"), [({"batch_size": 0}, "batch_size=0"), ({"batch_size": 2.5}, "batch_size=2.5"),
                                            ({"max_steps": -1}, "max_steps=-1"), ({"workers": 0}, "workers=0"),
                                            ({"save_slots": 0}, "save_slots=0"), ({"save_slots": 2.0}, "save_slots=2.0")])  # fmt: skip
def test_bad_solver_options_are_one_clear_error(kwargs, says):
    with pytest.raises(InputError, match="Fix:") as info:
        il2treg.SolverOptions(**kwargs)
    assert says in str(info.value)


@pytest.mark.slow
def test_chunked_mixed_placebo_and_treated_batch_equals_one_vmapped_batch(model):
    regs = [rg.placebo() if i % 3 == 0 else rg.lupil2(n_weekly=2) for i in range(9)]
    params = il2treg.sample_population(model, len(regs), seed=8)
    t = np.linspace(0.0, 28.0, 8)
    whole = il2treg.simulate(model, rg.stack(regs), t, params, options=il2treg.SolverOptions(batch_size=9, workers=1))
    chunks = il2treg.simulate(model, rg.stack(regs), t, params, options=il2treg.SolverOptions(batch_size=2, workers=1))
    np.testing.assert_allclose(chunks.values, whole.values, rtol=1e-12, atol=0)
    assert np.all(np.asarray(chunks.values)[::3, :, 2] == np.asarray(params["treg0"])[::3, None])  # placebo: baseline


@pytest.mark.slow
def test_a_failing_patient_is_flagged_and_the_batch_goes_on(model, lupil2):
    params = il2treg.sample_population(model, 3, seed=1)
    params = params.replace(ka=params["ka"].at[1].set(1e7))  # absurdly fast absorption: very stiff
    options = il2treg.SolverOptions(max_steps=256)
    t = np.linspace(0.0, 84.0, 29)
    sim = il2treg.simulate(model, lupil2, t, params, options=options)
    assert list(np.asarray(sim.ok)) == [True, False, True]
    assert np.all(np.isnan(sim.values[1]))
    alone = il2treg.simulate(model, lupil2, t, il2treg.Parameters(params.values[2], params.names), options=options)
    np.testing.assert_allclose(sim.values[2], alone.values, rtol=1e-10)
    assert "max" in sim.status_message(int(sim.status[1])).lower()


@pytest.mark.slow
def test_results_convert_to_a_long_table_and_to_xarray(model, lupil2):
    params = il2treg.sample_population(model, 2, seed=0)
    sim = il2treg.simulate(model, lupil2, np.array([0.0, 7.0, 84.0]), params)
    frame = sim.to_frame()
    assert list(frame.columns) == ["ID", "TIME", "DVID", "VALUE"]
    assert len(frame) == 2 * 3 * len(il2treg.OBSERVABLE_NAMES)
    row = frame[(frame.ID == 2) & (frame.TIME == 7.0) & (frame.DVID == "treg_per_uL")]
    assert float(row.VALUE.iloc[0]) == pytest.approx(float(sim["treg_per_uL"][1, 1]))
    ds = sim.to_xarray()
    assert ds["treg_pct_cd4"].dims == ("patient", "time")
    assert ds["il2_pM"].attrs["units"] == "pM"


def test_results_are_float64(model, lupil2):
    sim = il2treg.simulate(model, lupil2, np.array([0.0, 1.0]))
    assert sim.values.dtype == jnp.float64


def test_float32_mode_is_refused(model, lupil2):
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(PrecisionError, match="float64"):
            il2treg.simulate(model, lupil2, np.array([0.0, 1.0]))
    finally:
        jax.config.update("jax_enable_x64", True)


# ----------------------------------------------------------------------------- bad input


def test_unsorted_observation_times_are_rejected_with_their_index(model, lupil2):
    with pytest.raises(InputError, match=r"times\[2\] is earlier than times\[1\]"):
        il2treg.simulate(model, lupil2, np.array([0.0, 5.0, 3.0]))


def test_nan_observation_times_are_rejected(model, lupil2):
    with pytest.raises(InputError, match=r"times\[1\] is not finite"):
        il2treg.simulate(model, lupil2, np.array([0.0, np.nan]))


def test_negative_or_nan_doses_are_rejected(model):
    with pytest.raises(RegimenError, match="amounts"):
        rg.Regimen(times=np.array([0.0]), amounts=np.array([-1.0]))
    with pytest.raises(RegimenError, match="times"):
        rg.Regimen(times=np.array([np.nan]), amounts=np.array([1.0]))


def test_batches_of_different_sizes_are_rejected(model):
    params = il2treg.sample_population(model, 3, seed=0)
    regs = rg.stack([rg.lupil2(), rg.placebo()])
    with pytest.raises(InputError, match="number of patients"):
        il2treg.simulate(model, regs, np.array([0.0, 1.0]), params)


# ----------------------------------------------------------------------------- calibration (typical patient)


@pytest.fixture(scope="module")
def single_dose_profile(model):
    reg = rg.Regimen(times=np.array([0.0]), amounts=np.array([1.5e6]))
    t_h = np.linspace(0.0, 24.0, 24 * 60 + 1)
    sim = il2treg.simulate(model, reg, t_h * DAY_PER_HOUR)
    return t_h, np.asarray(sim["il2_pM"]) - float(model.typical()["il2_endo"])


@pytest.mark.slow
def test_il2_peaks_2_to_6_hours_after_a_1_5_miu_dose(single_dose_profile):
    t_h, c = single_dose_profile
    assert 2.0 <= t_h[np.argmax(c)] <= 6.0


def test_il2_falls_with_apparent_half_life_of_2_to_6_hours(single_dose_profile):
    t_h, c = single_dose_profile
    terminal = (t_h >= 8.0) & (t_h <= 16.0)
    slope = np.polyfit(t_h[terminal], np.log(c[terminal]), 1)[0]
    assert 2.0 <= np.log(2) / -slope <= 6.0


@pytest.fixture(scope="module")
def lupil2_typical(model, lupil2):
    t = np.arange(0.0, 120.0 + 1e-9, 0.25)
    return t, il2treg.simulate(model, lupil2, t)


def test_treg_fold_change_is_1_5_to_2_5_on_days_5_to_8_of_induction(model, lupil2_typical):
    t, sim = lupil2_typical
    fold = np.asarray(sim["treg_per_uL"]) / float(model.typical()["treg0"])
    window = (t >= 5.0) & (t <= 8.0)
    assert np.all((fold[window] >= 1.5) & (fold[window] <= 2.5))


def test_nk_rise_less_than_tregs_and_tconv_change_under_5_percent(model, lupil2_typical):
    _, sim = lupil2_typical
    p = model.typical()
    treg = np.asarray(sim["treg_per_uL"]) / float(p["treg0"])
    nk = np.asarray(sim["nk56bright_per_uL"]) / float(p["nk0"])
    tconv = np.asarray(sim["tconv_per_uL"]) / float(p["tconv0"])
    assert nk.max() > 1.0
    assert nk.max() - 1 < treg.max() - 1
    assert np.abs(tconv - 1).max() < 0.05


def test_tregs_return_within_10_percent_four_weeks_after_the_last_dose(model, lupil2, lupil2_typical):
    t, sim = lupil2_typical
    day = float(lupil2.times[-1]) + 28.0
    fold = float(np.asarray(sim["treg_per_uL"])[np.searchsorted(t, day)]) / float(model.typical()["treg0"])
    assert abs(fold - 1.0) < 0.10


@pytest.mark.slow
def test_dilfrequency_regimen_holds_tregs_and_cd25_at_published_steady_state(model):
    dose = float(il2treg.units.miu_per_m2_to_iu(0.26, 1.8))
    reg = rg.every(dose, 3.0, 28)
    t = np.linspace(81.0, 84.0, 61)
    sim = il2treg.simulate(model, reg, t)
    treg = float(np.mean(sim["treg_per_uL"])) / float(model.typical()["treg0"])
    cd25 = float(np.mean(sim["cd25_treg_rel"]))
    assert 1.20 <= treg <= 1.40
    assert 1.15 <= cd25 <= 1.35


@pytest.mark.slow
def test_threads_sharing_a_large_batch_give_the_same_results(model, lupil2):
    params = il2treg.sample_population(model, 150, seed=5)
    t = np.array([0.0, 7.0, 84.0])
    one = il2treg.simulate(model, lupil2, t, params, options=il2treg.SolverOptions(batch_size=32, workers=1))
    two = il2treg.simulate(model, lupil2, t, params, options=il2treg.SolverOptions(batch_size=32, workers=2))
    np.testing.assert_allclose(two.values, one.values, rtol=1e-12)
    np.testing.assert_array_equal(two.status, one.status)


def test_threads_by_default_one_per_core_on_a_cpu_and_one_on_an_accelerator(monkeypatch):
    import os

    from il2treg.simulate import default_workers

    assert jax.default_backend() == "cpu"
    assert default_workers() == (os.cpu_count() or 1)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert default_workers() == 1


_SHARDING_CHECK = """
import os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import jax
import numpy as np
import il2treg
assert len(jax.local_devices()) == 2, jax.local_devices()
model = il2treg.load_model()
params = il2treg.sample_population(model, 3, 0)  # odd, and 3 after simulate's padding: the last shard is padded
times = np.linspace(0, 84, 85)
single = il2treg.SolverOptions(shard=False)
a = il2treg.simulate(model, il2treg.regimen.lupil2(), times, params)
b = il2treg.simulate(model, il2treg.regimen.lupil2(), times, params, options=single)
assert np.array_equal(np.asarray(a.values), np.asarray(b.values)) and np.array_equal(np.asarray(a.status), np.asarray(b.status))
t1 = il2treg.simulate_trial("lupil2", 3, 7, model=model)
t2 = il2treg.simulate_trial("lupil2", 3, 7, model=model, options=single)
assert np.array_equal(t1.sledai_latent, t2.sledai_latent, equal_nan=True)
print("identical")
"""


@pytest.mark.slow
def test_a_batch_sharded_over_two_devices_gives_identical_results():
    """With two forced host devices, simulate() splits the batch over both (jax.shard_map) and
    replicate trials with it; every value equals the single-device solve bit for bit."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _SHARDING_CHECK], check=False, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "identical" in done.stdout


@pytest.mark.slow
def test_steady_state_derivatives_match_finite_differences():
    """The periodic state of an SS record (Newton with a frozen Jacobian, solve_records) carries
    exact first derivatives in reverse and forward mode, against central differences: an oral
    dose with lag and F at steady state every 12 h, then a reset. (Its second derivatives, which
    FOCE-I's gradient differentiates again, are checked end to end in tests/test_fit_population.py:
    the gradient of a steady-state fit equals that of its doses written out.)"""
    import diffrax as dfx

    from il2treg.records import DoseRecords
    from il2treg.simulate import solve_one

    model = il2treg.load_model("pk_1cmt_oral")
    theta = jnp.asarray(model.typical().values)
    times, amounts = jnp.array([0.0, 0.3]), jnp.array([100.0, 0.0])
    records = DoseRecords(input=[0, 0], duration=[0.0, 0.0], reset=[False, True], ss=[1, 0], ii=[0.5, 0.0], steady_states=1)
    obs = jnp.array([0.0, 0.1, 0.25])

    def conc(th, adjoint):
        options = il2treg.SolverOptions(rtol=1e-10, atol=1e-12, adjoint=adjoint)
        values = solve_one(model.mechanism, th, times, amounts, obs, options, 3, records=records)[0][:, 0]
        return values, values

    # two programs: the forward Jacobian with the values (which also give the differences), the reverse one
    forward = jax.jit(jax.jacfwd(lambda th: conc(th, dfx.ForwardMode()), has_aux=True))
    value = lambda th: forward(th)[1]
    step = 1e-5 * theta
    fd = np.stack([(value(theta.at[i].add(step[i])) - value(theta.at[i].add(-step[i]))) / (2 * step[i]) for i in range(theta.size)], axis=-1)
    assert np.all(np.abs(fd[0]) > 1e-3)  # the trough at the record depends on every parameter
    np.testing.assert_allclose(forward(theta)[0], fd, rtol=1e-6, atol=1e-9)
    reverse = jax.jit(jax.jacrev(lambda th: conc(th, dfx.RecursiveCheckpointAdjoint())[0]))(theta)
    np.testing.assert_allclose(reverse, fd, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_a_steady_state_of_the_il2_model_is_periodic(model):
    """SS 1 on the nonlinear IL-2 model (daily 1.5 MIU, then one more dose a day later): the
    trough at the record and the trough a day later, before the next dose, are one state, for 4
    virtual patients including one for whom Newton from the baseline failed before the warm start."""
    from il2treg.records import DoseRecords
    from il2treg.simulate import solve_one

    theta = jnp.asarray(il2treg.sample_population(model, 4, seed=0).values)
    times, amounts = jnp.array([0.0, 1.0]), jnp.array([1.5e6, 1.5e6])
    records = DoseRecords(input=[0, 0], duration=[0.0, 0.0], reset=[False, False], ss=[1, 0], ii=[1.0, 0.0], steady_states=1)
    obs = jnp.array([0.0, 0.5, 1.0])
    one = lambda th: solve_one(model.mechanism, th, times, amounts, obs, il2treg.SolverOptions(), 3, states=True, records=records)
    states, status = jax.jit(jax.vmap(one))(theta)
    assert np.all(np.asarray(status) == 0)
    states = np.asarray(states)  # the states: the SLEDAI observable also reads t (the placebo drift)
    np.testing.assert_allclose(states[:, 2], states[:, 0], rtol=1e-5, atol=1e-9)
    central = model.mechanism.state_names.index("central")
    assert np.all(states[:, 1, central] > 2 * states[:, 0, central])  # 12 h after the dose: not a flat line
