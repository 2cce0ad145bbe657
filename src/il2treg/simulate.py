r"""Simulate one patient or a batch: :func:`simulate`, with doses handled as true discontinuities.

**Doses.** A subcutaneous dose :math:`D_k` at :math:`t_k` adds :math:`F D_k` to the depot at
:math:`\tau_k = t_k + t_{lag}`. The solve is segmented at the dose times: a ``lax.scan`` over the
intervals :math:`[\tau_{k-1}, \tau_k]`, one adaptive ``diffrax.diffeqsolve`` per interval, the
dose added to the state between them. The solver therefore never steps across a jump, and
derivatives with respect to dose times and the lag flow through the interval ends. NONMEM dose
records beyond a bolus into the first input (CMT, RATE, SS, EVID 3/4 of a dataset:
:class:`il2treg.records.DoseRecords`) take :func:`solve_records`, which splits the solve at every
record, dose entry and infusion end, and puts steady states at their periodic state
(:func:`steady_state`).

**Observations.** An observation at time :math:`t` is read from the interval that ends at or after
it, so an observation at a dose time is the pre-dose value. Observations before the first dose are
the baseline (pre-dose steady state).

**Batches.** Parameters, regimens and observation times may each carry a leading patient axis
(regimens padded with zero doses, see :func:`il2treg.regimen.stack`); the batch is a ``vmap`` of the
single-patient solve, so every patient keeps its own adaptive step size. A patient whose solve
fails (e.g. ``max_steps``) gets ``status != 0`` and NaN values; the others are unaffected.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jaxtyping import Array, Float, Int

from il2treg._precision import require_float64
from il2treg.errors import InputError
from il2treg.model import Mechanism, Model, Parameters
from il2treg.observables import OBSERVABLE_NAMES, OBSERVABLES
from il2treg.records import DoseRecords, pad_records
from il2treg.regimen import Regimen, pad

#: Status code of a patient whose infusion duration is not positive (the model's ``duration``
#: expression at its parameters).
STATUS_BAD_DURATION = 101

#: Status code of a patient with more observations in one inter-dose interval than the static
#: number of save slots: ``SolverOptions.save_slots`` set too low, or a tlag beyond the bound the
#: slots were sized for.
STATUS_SLOTS_EXCEEDED = 100

#: Status code of a patient whose steady-state dose (SS 1 or 2) could not be solved: the Newton
#: iteration for the periodic state did not settle, or the dose's lag or infusion duration is
#: longer than its interval II.
STATUS_STEADY_STATE = 102

#: Newton steps for a periodic steady state (:func:`steady_state`): the first lands on the
#: state of a linear model, the next two make its first and second derivatives exact too.
STEADY_STATE_NEWTON_STEPS = 5

#: Periods of plain iteration from the initial state before Newton's method (:func:`steady_state`):
#: on the IL-2 model, Newton from the baseline state stepped to a negative concentration and the
#: solve failed for 2 of 16 virtual patients; from three periods on it settled (benchmarks/README.md).
STEADY_STATE_WARM_PERIODS = 3


def status_message(code: int) -> str:
    """Human-readable meaning of a per-patient status code (0 = successful)."""
    code = int(code)
    if code == 0:
        return "successful"
    if code == STATUS_BAD_DURATION:
        return "an infusion duration that is not positive; keep the model's duration parameter above 0 (a positive lower bound)"
    if code == STATUS_STEADY_STATE:
        return (
            "a steady-state dose (SS 1 or 2) whose periodic state was not found: the Newton iteration did not settle, "
            "or the dose's lag or infusion duration exceeds its interval II; check II and the parameters"
        )
    if code == STATUS_SLOTS_EXCEEDED:
        return (
            "more observations in one inter-dose interval than the solve's save slots; "
            "raise SolverOptions(save_slots=...) or leave it None, and keep tlag within its bounds in the model file"
        )
    messages = dfx.RESULTS._index_to_message  # diffrax's own text for each result code
    return messages[code] if 0 < code < len(messages) else f"solver result code {code}"


class SolverOptions(eqx.Module):
    """How the ODE is solved (a strategy object, as in diffrax).

    Attributes:
        rtol, atol: tolerances of the PI step-size controller; all states are O(1) (amounts in
            MIU, cells as fold-change), so one ``atol`` serves every state.
        max_steps: step budget per inter-dose interval; a patient exceeding it is flagged.
        solver: the diffrax solver (explicit Tsit5 by default: measured faster than implicit
            solvers on this mildly stiff system, see benchmarks/simulate.py).
        adjoint: ``diffrax.RecursiveCheckpointAdjoint()`` for reverse mode (``grad``),
            ``diffrax.ForwardMode()`` for ``jacfwd``, Gauss-Newton and Hessians.
        pcoeff, icoeff: PID controller coefficients (default: integral controller, measured
            ~10% faster than PI (0.3, 0.4) here).
        batch_size: most patients per vmapped chunk. A vmapped solve steps every patient until
            the slowest is done, so a batch is ordered by stiffness and run in equal chunks of at
            most this size (:func:`chunked_map`, one compiled solve); measured 3.8 -> 0.83
            ms/patient at N = 10,000 (benchmarks/).
        workers: threads sharing a concrete batch on one device (default: :func:`default_workers`,
            one per CPU core on a CPU, one on an accelerator).
        shard: with more than one local device (GPUs, or CPU devices forced with
            ``XLA_FLAGS=--xla_force_host_platform_device_count=N``), split a concrete batch over
            all of them (``jax.shard_map`` over a 1-D ``patients`` mesh); results are identical
            to the unsharded solve. ``False`` keeps everything on the default device.
        save_slots: observation times one inter-dose interval can hold (static). ``None``: the
            fewest the call needs (:func:`slots_needed`) where its dose and observation times
            are concrete, every observation time where they are traced (under ``jit`` or
            ``grad``), which can make the solve many times slower. Give a bound when traced
            times are known to stay within one (:func:`il2treg.design.optimise` does). A patient
            with more observations in one interval is flagged (status
            :data:`STATUS_SLOTS_EXCEEDED`, NaN values), never given wrong values.
    """

    rtol: float = 1e-6
    atol: float = 1e-9
    max_steps: int = eqx.field(static=True, default=4096)
    solver: dfx.AbstractSolver = dfx.Tsit5()
    adjoint: dfx.AbstractAdjoint = dfx.RecursiveCheckpointAdjoint()
    pcoeff: float = 0.0
    icoeff: float = 1.0
    batch_size: int = eqx.field(static=True, default=128)
    workers: int | None = eqx.field(static=True, default=None)
    shard: bool = eqx.field(static=True, default=True)
    save_slots: int | None = eqx.field(static=True, default=None)

    def __check_init__(self):
        for name, low in (("max_steps", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise InputError(f"SolverOptions({name}={value!r}): must be an integer >= {low}. Fix: pass e.g. {name}={type(self).__dataclass_fields__[name].default}.")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, numbers.Integral) or self.workers < 1):
            raise InputError(f"SolverOptions(workers={self.workers!r}): must be an integer >= 1 or None. Fix: pass workers=None for one thread per CPU core.")
        if self.save_slots is not None and (isinstance(self.save_slots, bool) or not isinstance(self.save_slots, numbers.Integral) or self.save_slots < 1):
            raise InputError(f"SolverOptions(save_slots={self.save_slots!r}): must be an integer >= 1 or None. Fix: pass save_slots=None to size them from the times.")


class Simulation(eqx.Module):
    """Result of :func:`simulate`.

    Attributes:
        times: observation times (days), ``[..., times]``.
        values: observables, ``[..., times, observables]`` in the order of ``names``.
        status: 0 where the solve succeeded, otherwise the diffrax result code; ``[...]``.
        names: observable names (static): the model's (:attr:`il2treg.Model.observable_names`).
        units: the unit of each observable (static).
    """

    times: Float[Array, "*batch times"]
    values: Float[Array, "*batch times observables"]
    status: Int[Array, "*batch"]
    names: tuple[str, ...] = eqx.field(static=True, default=OBSERVABLE_NAMES)
    units: tuple[str, ...] = eqx.field(static=True, default=tuple(OBSERVABLES[n][0] for n in OBSERVABLE_NAMES))

    def __getitem__(self, name: str) -> Float[Array, "*batch times"]:
        if name not in self.names:
            raise InputError(f"unknown observable {name!r}. Fix: use one of {', '.join(self.names)}.")
        return self.values[..., self.names.index(name)]

    @property
    def ok(self) -> Array:
        """True for each patient whose solve succeeded."""
        return self.status == 0

    def status_message(self, code: int) -> str:
        """Human-readable meaning of a status code."""
        return status_message(code)

    def to_frame(self) -> pd.DataFrame:
        """Long table ``ID, TIME, DVID, VALUE`` (IDs 1..N; one patient gives ID 1)."""
        values = np.asarray(self.values)
        times = np.asarray(self.times)
        if values.ndim == 2:
            values, times = values[None], times[None]
        n, t, k = values.shape
        times = np.broadcast_to(times, (n, t))
        return pd.DataFrame(
            {
                "ID": np.repeat(np.arange(1, n + 1), t * k),
                "TIME": np.repeat(times.reshape(-1), k),
                "DVID": np.tile(np.asarray(self.names, dtype=object), n * t),
                "VALUE": values.reshape(-1),
            }
        )

    def to_xarray(self):
        """An ``xarray.Dataset`` with one variable per observable, dims ``(patient, time)``."""
        import xarray as xr

        values = np.asarray(self.values)
        times = np.asarray(self.times)
        if values.ndim == 2:
            values, times = values[None], times[None]
        shared = bool(np.all(times == times[:1]))
        coords = {"patient": np.arange(1, values.shape[0] + 1)}
        if shared:
            coords["time"] = times[0]
        data = {
            name: (("patient", "time"), values[..., i], {"units": unit, "long_name": OBSERVABLES.get(name, (unit, name))[1]})
            for i, (name, unit) in enumerate(zip(self.names, self.units))
        }
        ds = xr.Dataset(data, coords=coords)
        if not shared:
            ds["obs_time"] = (("patient", "time"), times, {"units": "day"})
        ds["status"] = ("patient", np.asarray(self.status).reshape(-1))
        return ds


def solve_one(
    mechanism: Mechanism,
    theta: Float[Array, " params"] | tuple[Float[Array, ""], ...],
    dose_times: Float[Array, " doses"],
    dose_amounts: Float[Array, " doses"],
    obs_times: Float[Array, " times"],
    options: SolverOptions,
    slots: int,
    states: bool = False,
    records: DoseRecords | None = None,
    periods: Float[Array, " periods"] | None = None,
) -> tuple[Float[Array, "times observables"], Int[Array, ""]]:
    """One patient: segmented solve between effective dose times, observables at ``obs_times``.

    ``mechanism`` (static) gives the equations (:class:`il2treg.model.Mechanism`); the doses enter
    its first dosing input, unless ``records`` (:class:`il2treg.records.DoseRecords`) route them
    to other inputs, infuse them, reset the state or put it at steady state
    (:func:`solve_records`).

    With ``periods`` the parameters change over time: ``theta`` holds one row per period
    (``[periods, params]``, or a tuple of ``[periods]`` arrays) and ``periods`` the times the
    periods start (:func:`solve_records` has the rules).

    With ``states`` (static) the state vectors at ``obs_times`` are returned instead of the
    observables (fits apply the observation function outside the solve).

    ``slots`` (static) is the most distinct observation times any one interval can hold; each
    interval saves only at its own observation times, so the cost grows with the number of
    distinct times, not with their product with the number of doses. Rows sharing a time (several
    observation types of one sample) share one save: the solve runs on the sorted distinct times
    (the rest of the static-size list filled with +inf, which no interval holds) and the rows are
    gathered back (the reference cohort's fit: 3 save slots per interval instead of 27; timings in
    benchmarks/README.md).
    """
    if periods is not None:
        if not mechanism.dose_states:  # no dosing input: the doses change nothing
            dose_times, dose_amounts, records = dose_times[:0], dose_amounts[:0], DoseRecords.plain(0)
        elif records is None:
            records = DoseRecords.plain(dose_times.shape[0])
        return solve_records(mechanism, theta, dose_times, dose_amounts, records, obs_times, options, slots, states, periods)
    if records is not None and mechanism.dose_states:
        return solve_records(mechanism, theta, dose_times, dose_amounts, records, obs_times, options, slots, states)
    args = mechanism.prepare(theta)
    y0 = mechanism.initial_state(args)
    rows = obs_times
    obs_times, row_of = jnp.unique(rows, size=rows.shape[0], fill_value=jnp.inf, return_inverse=True)
    n_obs = obs_times.shape[0]
    infused = bool(mechanism.dose_states) and mechanism.dose_infused[0]
    rates = None  # the infusion rate into the dosed state over each interval (infusions only)
    if dose_times.shape[0] == 0 or not mechanism.dose_states:
        starts, ends = rows[:1], rows[-1:]
        added = jnp.zeros(1)
        target = 0
    else:
        target, scale = mechanism.dose_states[0], mechanism.dose_scale[0]
        tau = dose_times + mechanism.dose_lag(args)[0]
        amounts = mechanism.dose_fraction(args)[0] * dose_amounts * scale  # in the dosed state's unit
        if infused:
            # A zero-order infusion runs from tau_k to tau_k + d: the solve is split at every start
            # and stop, and each interval carries the sum of the rates of the infusions running in it.
            duration = mechanism.dose_duration(args)[0]
            bad_duration = ~(duration > 0)
            duration = jnp.where(bad_duration, 1.0, duration)  # the patient is flagged below; no inf or NaN on the way
            stops = tau + duration
            events = jnp.sort(jnp.concatenate([tau, stops]))
            t_lo = jnp.minimum(rows[0], events[0])
            t_hi = jnp.maximum(rows[-1], events[-1])
            starts = jnp.concatenate([t_lo[None], events])
            ends = jnp.concatenate([events, t_hi[None]])
            running = (tau[None, :] <= starts[:, None]) & (starts[:, None] < stops[None, :])
            rates = jnp.sum(jnp.where(running, amounts / duration, 0.0), axis=1)
            added = jnp.zeros(starts.shape[0])
        else:
            t_lo = jnp.minimum(rows[0], tau[0])
            t_hi = jnp.maximum(rows[-1], tau[-1])
            starts = jnp.concatenate([t_lo[None], tau])
            ends = jnp.concatenate([tau, t_hi[None]])
            # The amount entering the dosed state at the end of each interval (none after the last).
            added = jnp.concatenate([amounts, jnp.zeros(1)])
    # Interval k holds the observations in (start_k, end_k] (the first also those <= its end),
    # so an observation at a dose time is the pre-dose value.
    first = jnp.searchsorted(obs_times, starts, side="right").at[0].set(0)
    last = jnp.searchsorted(obs_times, ends, side="right") - 1
    overflow = jnp.any(last - first + 1 > slots)

    if rates is None:
        term = dfx.ODETerm(mechanism.vector_field)
        observe = mechanism.observables
    else:  # the interval's infusion rate travels with the arguments: (args, rate)
        term = dfx.ODETerm(lambda t, y, a: mechanism.vector_field(t, y, a[0]).at[target].add(a[1]))
        observe = lambda t, y, a: mechanism.observables(t, y, a[0])
    controller = dfx.PIDController(
        rtol=options.rtol, atol=options.atol, pcoeff=options.pcoeff, icoeff=options.icoeff
    )
    offsets = jnp.arange(slots)
    save = (lambda t, y, args: y) if states else observe
    width = y0.shape[0] if states else len(mechanism.observable_names)

    def interval(carry, inputs):
        y, out, code = carry
        t0, t1, lo, hi, dose, *rate = inputs
        index = lo + offsets
        valid = index <= hi
        ts = jnp.where(valid, obs_times[jnp.clip(index, 0, n_obs - 1)], t1)
        ts = jnp.clip(ts, t0, t1)
        sol = dfx.diffeqsolve(
            term,
            options.solver,
            t0,
            t1,
            None,
            y,
            args if rates is None else (args, rate[0]),
            saveat=dfx.SaveAt(subs=[dfx.SubSaveAt(t1=True), dfx.SubSaveAt(ts=ts, fn=save)]),
            stepsize_controller=controller,
            adjoint=options.adjoint,
            max_steps=options.max_steps,
            throw=False,
        )
        y_end, obs = sol.ys[0][-1], sol.ys[1]
        out = out.at[jnp.where(valid, index, n_obs)].set(obs, mode="drop")
        y_next = y_end.at[target].add(dose)
        result = sol.result._value  # diffrax enumeration value: 0 = successful
        code = jnp.where(code == 0, result, code)
        return (y_next, out, code), None

    init = (y0, jnp.zeros((n_obs, width)), jnp.asarray(0, dtype=jnp.int32))
    steps = (starts, ends, first, last, added) if rates is None else (starts, ends, first, last, added, rates)
    (_, out, code), _ = jax.lax.scan(interval, init, steps)
    code = jnp.where(overflow & (code == 0), STATUS_SLOTS_EXCEEDED, code)
    if rates is not None:
        code = jnp.where(bad_duration & (code == 0), STATUS_BAD_DURATION, code)
    out = jnp.where(code == 0, out[row_of.reshape(-1)], jnp.nan)
    return out, code


def _dose_model(mechanism: Mechanism, args, inputs, per_dose: bool = False):
    """Per dose: the model's bioavailability, lag and declared infusion duration of its input
    ``inputs``; ``args`` is one set for all doses or, with ``per_dose``, one per dose along a
    leading axis."""

    def one(a, i):
        duration = mechanism.dose_duration(a)[i] if any(mechanism.dose_infused) else jnp.ones(jnp.shape(i))
        return mechanism.dose_fraction(a)[i], mechanism.dose_lag(a)[i], duration

    return jax.vmap(one)(args, inputs) if per_dose else one(args, inputs)


def _dose_routes(mechanism: Mechanism, model, dose_times, dose_amounts, records: DoseRecords):
    r"""Per dose: the state it enters, the amount in that state's unit, when it enters
    (:math:`t_k + \mathrm{lag}`), whether it is infused, over how long (1.0 where it is a bolus),
    and whether a model-declared duration is not positive. ``model``: the per-dose
    bioavailability, lag and declared duration (:func:`_dose_model`)."""
    inputs = records.input
    fraction, lag, model_duration = model
    target = jnp.asarray(mechanism.dose_states, dtype=jnp.int32)[inputs]
    scale = jnp.asarray(mechanism.dose_scale, dtype=jnp.float64)[inputs]
    amount = fraction * dose_amounts * scale
    tau = dose_times + lag
    given = records.duration > 0
    # a rate given in the data is kept and F scales the duration (NONMEM's reading of F with
    # RATE > 0); a duration the model declares is kept and F scales the rate
    data_duration = jnp.where(given, records.duration * fraction, 1.0)
    if any(mechanism.dose_infused):
        declared = jnp.asarray(mechanism.dose_infused)[inputs]
        infusion = given | declared
        bad = declared & ~given & ~(model_duration > 0)
        duration = jnp.where(given, data_duration, jnp.where(declared & ~bad, model_duration, 1.0))
    else:
        infusion, bad = given, jnp.zeros_like(given)
        duration = data_duration
    return target, amount, tau, infusion, duration, jnp.any(bad)


def _flow(mechanism: Mechanism, options: SolverOptions, adjoint, args, t0, t1, y, rate):
    """The state at ``t1`` from ``y`` at ``t0`` with the constant input ``rate`` (state units per
    day, one entry per state) added to the vector field, and diffrax's result code."""
    term = dfx.ODETerm(lambda t, z, a: mechanism.vector_field(t, z, a[0]) + a[1])
    controller = dfx.PIDController(rtol=options.rtol, atol=options.atol, pcoeff=options.pcoeff, icoeff=options.icoeff)
    sol = dfx.diffeqsolve(
        term, options.solver, t0, t1, None, y, (args, rate), saveat=dfx.SaveAt(t1=True),
        stepsize_controller=controller, adjoint=adjoint, max_steps=options.max_steps, throw=False,
    )  # fmt: skip
    return sol.ys[-1], sol.result._value


def steady_state(mechanism: Mechanism, args, y0, target, amount, phase, infusion, duration, interval, options: SolverOptions, active=True):
    r"""The pre-dose state of a periodic regime: a dose every ``interval`` days entering state
    ``target`` ``phase`` days after the period starts (its lag), as a bolus of ``amount`` or, where
    ``infusion``, at the rate ``amount / duration``. Returns ``(state, ok)``.

    It is the fixed point :math:`y^* = \Phi(y^*)` of the map :math:`\Phi` over one period, found by
    Newton's method from :math:`\Phi^3(y_0)` (:data:`STEADY_STATE_WARM_PERIODS` periods of plain
    iteration from the initial state, held constant for differentiation):

    .. math:: y_{j+1} = y_j + (I - J_j)^{-1} (\Phi(y_j) - y_j), \qquad J_j = \partial\Phi/\partial y\,(y_j)

    with :math:`J_j` computed by forward sensitivities and held constant for differentiation.
    Each step is differentiable through :math:`\Phi` alone, so after a step on the converged
    state the derivative with respect to the parameters is the implicit-function one,
    :math:`(I - J)^{-1} \partial\Phi/\partial\theta`, exactly, and one more step makes the second
    derivative exact (for a linear model: the state after step 1, its first derivatives after
    step 2, its second after step 3; :data:`STEADY_STATE_NEWTON_STEPS` steps are taken). ``ok`` is
    false where the last step moved the state by more than ten times the solver's tolerance,
    where a solve failed, or where the dose does not fit in its period: a lag of ``interval`` or
    more, or a lag and infusion longer than it (the series' last infusion would still run at the
    record's time). Where ``active`` is false (a slot a patient does not use) the Newton steps are
    taken on the identity, so that no singular system reaches a derivative."""
    n = y0.shape[0]
    unit = jax.nn.one_hot(target, n, dtype=jnp.float64)
    dur = jnp.where(infusion, duration, 0.0)
    feasible = (interval > 0) & (phase < interval) & (phase + dur <= interval)
    period = jnp.where(feasible, interval, 1.0)
    start = jnp.where(feasible, phase, 0.0)
    end = jnp.where(feasible, phase + dur, 0.0)
    rate = jnp.where(infusion, amount / duration, 0.0) * unit
    bolus = jnp.where(infusion, 0.0, amount) * unit

    def phi(y, a, start, end, period, rate, bolus, adjoint):
        y1, c1 = _flow(mechanism, options, adjoint, a, 0.0, start, y, jnp.zeros(n))
        y2, c2 = _flow(mechanism, options, adjoint, a, start, end, y1 + bolus, rate)
        y3, c3 = _flow(mechanism, options, adjoint, a, end, period, y2, jnp.zeros(n))
        return y3, jnp.maximum(jnp.maximum(c1, c2), c3)

    fixed = jax.lax.stop_gradient((args, start, end, period, rate, bolus))

    def newton(carry, _):
        y, code, _ = carry
        jacobian = jax.jacfwd(lambda z: phi(z, *fixed, dfx.ForwardMode())[0])(jax.lax.stop_gradient(y))
        mapped, c = phi(y, args, start, end, period, rate, bolus, options.adjoint)
        step = jnp.linalg.solve(jnp.eye(n) - jnp.where(active, jacobian, 0.0), jnp.where(active, mapped - y, 0.0))
        return (y + step, jnp.maximum(code, c), step), None

    def iterate(carry, _):
        y, code = carry
        mapped, c = phi(y, *fixed, options.adjoint)
        return (mapped, jnp.maximum(code, c)), None

    (warm, code), _ = jax.lax.scan(iterate, (jax.lax.stop_gradient(y0), jnp.asarray(0, dtype=jnp.int32)), None, length=STEADY_STATE_WARM_PERIODS)
    init = (jax.lax.stop_gradient(warm), code, jnp.zeros(n))
    (y, code, step), _ = jax.lax.scan(newton, init, None, length=STEADY_STATE_NEWTON_STEPS)
    settled = jnp.all(jnp.abs(step) <= 10.0 * (options.atol + options.rtol * jnp.abs(y)))
    return y, feasible & settled & (code == 0)


def solve_records(
    mechanism: Mechanism,
    theta: Float[Array, " params"] | Float[Array, "periods params"] | tuple[Float[Array, "..."], ...],
    dose_times: Float[Array, " doses"],
    dose_amounts: Float[Array, " doses"],
    records: DoseRecords,
    obs_times: Float[Array, " times"],
    options: SolverOptions,
    slots: int,
    states: bool = False,
    periods: Float[Array, " periods"] | None = None,
) -> tuple[Float[Array, "times observables"], Int[Array, ""]]:
    r""":func:`solve_one` with NONMEM dose records (:class:`il2treg.records.DoseRecords`).

    Each dose :math:`k` puts three events on the time line: its record at :math:`t_k` (a reset
    or a steady state, if it has one), its entry at :math:`\tau_k = t_k + \mathrm{lag}` (a bolus
    added to its input's state, or an infusion starting) and the end of its infusion at
    :math:`\tau_k + d_k` (at :math:`\tau_k` for a bolus). Events at one time act in record order
    (reset and steady state, then the dose). The solve is split at every event, as
    :func:`solve_one` splits it at every dose; between two events the vector field carries the
    sum of the rates of the infusions running, an infusion stopping at its end or at the first
    reset after it started. A steady-state record puts the state at :func:`steady_state` of its
    own dose (SS 1), or adds that state less the initial one (SS 2). An observation at a
    record's time reads the state after the record's reset or steady state and before its dose
    (the trough of a steady state); at the time a dose enters or an infusion ends, the value
    before it.

    **Parameters that change over time** (time-varying covariates, occasions). With ``periods``
    (``[P]``, non-decreasing; the first period also covers any earlier time) ``theta`` has one
    row per period and the parameters of period :math:`p` hold from ``periods[p]`` until the
    next period starts: the value of a record holds from its time on (last value carried
    forward). Each period start is one more event, before the records at the same time: the
    solve is split there, so a change of parameters is never inside a step. A record uses the
    parameters of its time: a dose's bioavailability, lag and declared duration, a reset's
    initial state and a steady state's periodic regime; an infusion keeps the rate it started
    with. An observation at a period start reads the new period's observables. Padding: repeat
    the last start time and row (a zero-length period changes nothing).

    Cost: three intervals per dose (those of a bolus's end have zero length) and one per period
    start, and for each of the ``records.steady_states`` steady-state slots (the most any patient
    of the batch has) :data:`STEADY_STATE_NEWTON_STEPS` Newton steps of three solves over one
    interval and a forward-sensitivity Jacobian.
    """
    timed = periods is not None
    if timed:
        table = jax.vmap(mechanism.prepare)(theta)  # one set of arguments per period
        y0_table = jax.vmap(mechanism.initial_state)(table)
        n_periods = periods.shape[0]

        def period_of(t):  # the period that has started by t (last value carried forward)
            return jnp.clip(jnp.searchsorted(periods, t, side="right") - 1, 0, n_periods - 1)

        def pick(p):
            return jax.tree_util.tree_map(lambda x: x[p], table)

        args, y0 = pick(0), y0_table[0]
        changes = periods[1:]
        n = dose_times.shape[0]
        model = _dose_model(mechanism, pick(period_of(dose_times)), records.input, per_dose=True) if n else (jnp.zeros(0),) * 3
    else:
        args = mechanism.prepare(theta)
        y0 = mechanism.initial_state(args)
        changes = jnp.zeros(0)
        model = _dose_model(mechanism, args, records.input)
    n_states = y0.shape[0]
    rows = obs_times
    obs_times, row_of = jnp.unique(rows, size=rows.shape[0], fill_value=jnp.inf, return_inverse=True)
    n_obs = obs_times.shape[0]
    n_doses = dose_times.shape[0]
    n_changes = changes.shape[0]
    target, amount, tau, infusion, duration, bad_duration = _dose_routes(mechanism, model, dose_times, dose_amounts, records)
    stop = jnp.where(infusion, tau + duration, tau)
    resets = records.reset | (records.ss == 1)

    # events: period starts, then (record, entry, end) of each dose in record order, then stably
    # sorted by time; kind 3 is a period start
    event_time = jnp.concatenate([changes, jnp.stack([dose_times, tau, stop], axis=1).reshape(-1)])
    order = jnp.argsort(event_time, stable=True)
    events = event_time[order]
    kind = jnp.concatenate([jnp.full(n_changes, 3), jnp.tile(jnp.arange(3), n_doses)])[order]
    dose = jnp.concatenate([jnp.zeros(n_changes, dtype=jnp.int32), jnp.repeat(jnp.arange(n_doses, dtype=jnp.int32), 3)])[order]
    t_lo = jnp.min(jnp.concatenate([rows[:1], events]))
    t_hi = jnp.max(jnp.concatenate([rows[-1:], events]))
    starts = jnp.concatenate([t_lo[None], events])
    ends = jnp.concatenate([events, t_hi[None]])

    # what happens at the end of each interval (nothing after the last)
    def at_end(x, fill):
        return jnp.concatenate([x, jnp.full((1, *x.shape[1:]), fill, dtype=x.dtype)])

    record = kind == 0
    reset_at = at_end(record & resets[dose], False)
    ss_at = at_end(jnp.where(record, records.ss[dose], 0), 0)
    units = jax.nn.one_hot(target, n_states, dtype=jnp.float64)
    bolus_at = at_end(jnp.where(((kind == 1) & ~infusion[dose])[:, None], amount[dose, None] * units[dose], 0.0), 0.0)

    # an infusion runs from its entry to its end or to the first reset after its entry
    index = jnp.arange(n_doses)
    later = (dose_times[None, :] > tau[:, None]) | ((dose_times[None, :] == tau[:, None]) & (index[None, :] > index[:, None]))
    next_reset = jnp.min(jnp.where(resets[None, :] & later, dose_times[None, :], jnp.inf), axis=1)
    until = jnp.minimum(stop, next_reset)
    running = infusion[None, :] & (tau[None, :] <= starts[:, None]) & (starts[:, None] < until[None, :])
    rates = (jnp.where(running, amount / duration, 0.0)) @ units  # [intervals, states]

    steady = records.steady_states
    ss_ok = jnp.asarray(True)
    if steady:
        which = jnp.nonzero(records.ss > 0, size=steady, fill_value=0)[0]
        slot_of = jnp.clip(jnp.cumsum(records.ss > 0) - 1, 0, steady - 1)
        phase = tau - dose_times
        used = jnp.arange(steady) < jnp.sum(records.ss > 0)

        def periodic(k, active):
            a, z0 = (pick(period_of(dose_times[k])), y0_table[period_of(dose_times[k])]) if timed else (args, y0)
            return steady_state(mechanism, a, z0, target[k], amount[k], phase[k], infusion[k], duration[k], records.ii[k], options, active)

        solved, ok = jax.vmap(periodic)(which, used)
        ss_ok = jnp.all(ok | ~used)
        slot_at = at_end(slot_of[dose], 0)
    else:
        solved = jnp.zeros((1, n_states))
        slot_at = jnp.zeros(starts.shape[0], dtype=jnp.int32)

    # an interval holds the observations in (start, end], less one at its end where that is a
    # reset, a steady state or a period start (it reads the state after them), plus one at its
    # start where that is
    acts = (record & (resets | (records.ss > 0))[dose]) | (kind == 3)
    starts_record = jnp.concatenate([jnp.zeros(1, dtype=bool), acts])
    ends_record = jnp.concatenate([acts, jnp.zeros(1, dtype=bool)])
    left = lambda x: jnp.searchsorted(obs_times, x, side="left")
    right = lambda x: jnp.searchsorted(obs_times, x, side="right")
    first = jnp.where(starts_record, left(starts), right(starts)).at[0].set(0)
    last = jnp.where(ends_record, left(ends), right(ends)) - 1
    overflow = jnp.any(last - first + 1 > slots)
    term = dfx.ODETerm(lambda t, y, a: mechanism.vector_field(t, y, a[0]) + a[1])
    observe = lambda t, y, a: mechanism.observables(t, y, a[0])
    save = (lambda t, y, a: y) if states else observe
    width = n_states if states else len(mechanism.observable_names)
    controller = dfx.PIDController(rtol=options.rtol, atol=options.atol, pcoeff=options.pcoeff, icoeff=options.icoeff)
    offsets = jnp.arange(slots)

    def interval(carry, inputs):
        y, out, code = carry
        t0, t1, lo, hi, rate, reset, ss, slot, bolus, *period = inputs
        a, z0_next = (args, y0) if not timed else period
        index = lo + offsets
        valid = index <= hi
        ts = jnp.clip(jnp.where(valid, obs_times[jnp.clip(index, 0, n_obs - 1)], t1), t0, t1)
        sol = dfx.diffeqsolve(
            term, options.solver, t0, t1, None, y, (a, rate),
            saveat=dfx.SaveAt(subs=[dfx.SubSaveAt(t1=True), dfx.SubSaveAt(ts=ts, fn=save)]),
            stepsize_controller=controller, adjoint=options.adjoint, max_steps=options.max_steps, throw=False,
        )  # fmt: skip
        y_end, obs = sol.ys[0][-1], sol.ys[1]
        out = out.at[jnp.where(valid, index, n_obs)].set(obs, mode="drop")
        y_next = jnp.where(reset, z0_next, y_end)
        periodic = solved[slot]
        y_next = jnp.where(ss == 1, periodic, jnp.where(ss == 2, y_next + periodic - z0_next, y_next)) + bolus
        code = jnp.where(code == 0, sol.result._value, code)
        return (y_next, out, code), None

    init = (y0, jnp.zeros((n_obs, width)), jnp.asarray(0, dtype=jnp.int32))
    steps = (starts, ends, first, last, rates, reset_at, ss_at, slot_at, bolus_at)
    if timed:  # each interval's arguments, and the initial state a reset at its end returns to
        steps = (*steps, pick(period_of(starts)), y0_table[period_of(ends)])
    (_, out, code), _ = jax.lax.scan(interval, init, steps)
    code = jnp.where(overflow & (code == 0), STATUS_SLOTS_EXCEEDED, code)
    code = jnp.where(bad_duration & (code == 0), STATUS_BAD_DURATION, code)
    code = jnp.where(~ss_ok & (code == 0), STATUS_STEADY_STATE, code)
    out = jnp.where(code == 0, out[row_of.reshape(-1)], jnp.nan)
    return out, code


def slots_needed(dose_times: np.ndarray, obs_times: np.ndarray, max_lag: float) -> int:
    """Most distinct observation times any inter-dose interval can hold for any lag in
    [0, max_lag] days: the save slots (:attr:`SolverOptions.save_slots`) a solve at these dose
    times (``[doses]`` or ``[patients, doses]``) and observation times needs."""
    dose_times = np.atleast_2d(dose_times)
    obs_times = np.atleast_2d(obs_times)
    n = max(dose_times.shape[0], obs_times.shape[0])
    dose_times = np.broadcast_to(dose_times, (n, dose_times.shape[1]))
    obs_times = np.broadcast_to(obs_times, (n, obs_times.shape[1]))
    # Each row's (sorted) times once, repeats moved to the end as +inf, which no interval holds.
    repeat = np.concatenate([np.zeros((n, 1), dtype=bool), obs_times[:, 1:] == obs_times[:, :-1]], axis=1)
    obs_times = np.sort(np.where(repeat, np.inf, obs_times), axis=1)
    if dose_times.shape[1] == 0:
        return int(max(1, np.max(np.sum(~repeat, axis=1))))
    lo = np.concatenate([np.full((n, 1), -np.inf), dose_times], axis=1)
    hi = np.concatenate([dose_times + max_lag, np.full((n, 1), np.finfo(float).max)], axis=1)
    counts = [
        np.searchsorted(o, high, side="right") - np.searchsorted(o, low, side="left")
        for o, low, high in zip(obs_times, lo, hi)
    ]
    return int(max(1, np.max(counts)))


def work_order(dose_amounts: Float[Array, "patients doses"], stiffness: Float[Array, " patients"] | None = None) -> Int[Array, " patients"]:
    """An order of the patients in which those sharing a vmapped chunk need similar step counts.

    A vmapped solve steps every patient of a chunk until the slowest one is done. A patient
    without doses stays exactly at the baseline state (every derivative is zero there), so the
    solver's error estimates vanish and it crosses the whole time span in a few long steps,
    while a treated patient's steps are bounded by the stiffness of the IL-2 elimination
    (:math:`(CL + CLR)/V`) for as long as drug is present. Patients are therefore ordered by
    their number of (non-zero) doses, then by ``stiffness`` where given; placebo and treated
    patients of a 1:1 trial then fill separate chunks (timings in benchmarks/README.md).
    """
    doses = jnp.sum(dose_amounts > 0, axis=-1)
    keys = (doses,) if stiffness is None else (stiffness, doses)  # lexsort: last key first
    return jnp.lexsort(keys)


def chunk_shape(n: int, batch_size: int) -> tuple[int, int]:
    """(chunks, size): the fewest chunks of at most ``batch_size`` rows that hold ``n`` rows,
    made as equal as they can be (``chunks * size - n < chunks`` rows of padding).

    ``jax.lax.map(..., batch_size=b)`` compiles the mapped function twice when ``b`` does not
    divide ``n`` (a scan over the full chunks and a separate vmap of the remainder), and the
    compile of an ODE solve with sensitivities takes tens of seconds; equal chunks compile it
    once. For example 24 rows in chunks of at most 16 are 2 chunks of 12, 100 rows are 7 of 15.
    """
    if n < 1 or batch_size < 1:
        raise ValueError(f"chunk_shape needs n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}")
    chunks = -(-n // batch_size)
    return chunks, -(-n // chunks)


def chunked_map(fn, xs, batch_size: int):
    """``jax.lax.map(fn, xs, batch_size=...)`` in equal chunks of at most ``batch_size`` rows
    (:func:`chunk_shape`), so ``fn`` is compiled once: the rows are padded with repeats of the
    last one, whose results are dropped."""
    n = jax.tree.leaves(xs)[0].shape[0]
    if n <= batch_size:  # one chunk (or none)
        return jax.vmap(fn)(xs)
    chunks, size = chunk_shape(n, batch_size)
    rows = jnp.minimum(jnp.arange(chunks * size), n - 1)
    ys = jax.lax.map(fn, jax.tree.map(lambda x: x[rows], xs), batch_size=size)
    return jax.tree.map(lambda y: y[:n], ys)


def ordered_map(fn, xs, order: Int[Array, " patients"], batch_size: int):
    """:func:`chunked_map` with the leading axis taken in ``order`` (see :func:`work_order`)
    and the results put back in the original order. Each patient's result does not depend on
    its chunk-mates, so only the time changes."""
    ys = chunked_map(fn, jax.tree.map(lambda x: x[order], xs), batch_size)
    inverse = jnp.argsort(order)
    return jax.tree.map(lambda y: y[inverse], ys)


@eqx.filter_jit
def _simulate_batch(model, theta, dose_times, dose_amounts, obs_times, records, options, axes, slots):
    """Solve every patient: in_axes ``axes`` for (theta, dose times, amounts, obs times, dose
    records or None).

    A batch is put in :func:`work_order` (number of doses, then the stiffest rate, elimination
    ``(CL + CLR) / V``), solved chunk by chunk, and put back in order.
    """
    solve = lambda th, dt, da, ot, rc: solve_one(model.mechanism, th, dt, da, ot, options, slots, records=rc)
    inputs = (theta, dose_times, dose_amounts, obs_times, records)
    if not any(a == 0 for a in axes):
        return solve(*inputs)
    n = next(jax.tree.leaves(x)[0].shape[0] for x, a in zip(inputs, axes) if a == 0)
    if n <= options.batch_size:
        return jax.vmap(solve, in_axes=axes)(*inputs)
    stiffness = None
    if axes[0] == 0:
        stiffness = model.mechanism.stiffness(theta)
    amounts = dose_amounts if axes[2] == 0 else jnp.zeros((n, 0))  # shared doses: no dose key
    batched = tuple(x for x, a in zip(inputs, axes) if a == 0)

    def one(row):
        it = iter(row)
        return solve(*(next(it) if a == 0 else x for x, a in zip(inputs, axes)))

    return ordered_map(one, batched, work_order(amounts, stiffness), options.batch_size)


def default_workers() -> int:
    """Threads to share a batch over when none are asked for: one per core where JAX computes on
    the CPU (one XLA computation runs on one core), one where it computes on an accelerator (a
    GPU runs the vmapped chunks of one computation; threads would only split them).

    ``IL2TREG_THREADS``, where set to a positive integer, caps the CPU's count: a Dask worker of
    one thread gets 1 (:mod:`il2treg.cluster`), so that the workers of a machine share its cores.
    """
    if jax.default_backend() != "cpu":
        return 1
    cores = os.cpu_count() or 1
    cap = os.environ.get("IL2TREG_THREADS", "").strip()
    if not cap:
        return cores
    if not cap.isdigit() or int(cap) < 1:
        raise InputError(f"IL2TREG_THREADS={cap!r} is not a positive number of threads. Fix: set it to 1 or more, or unset it.")
    return min(cores, int(cap))


def interleaved_rows(n: int, workers: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Deal ``n`` rows out to ``workers`` in interleaved slices of equal length.

    Returns ``(rows, real)`` per worker: the last slices are padded with a repeat of their last
    row (``real`` False there), so every worker runs one compiled shape; interleaving gives each
    a similar mix of easy and hard patients.
    """
    size = -(-n // workers)
    out = []
    for w in range(workers):
        rows = np.arange(w, n, workers)
        real = np.arange(size) < rows.size
        out.append((np.concatenate([rows, np.full(size - rows.size, rows[-1])]), real))
    return out


def run_on_threads(jitted, calls: list[tuple]) -> list:
    """``jitted(*args)`` for every ``args`` in ``calls`` (all of one shape), one thread each.

    ``jitted`` (an ``eqx.filter_jit`` function) is compiled here, ahead of time, for the first
    call's shapes (``lower().compile()``, which JAX caches: a repeat does not compile again) and
    the threads call the compiled function directly: through ``jit``'s dispatch, the first call
    of a new shape holds up every other thread until it has compiled *and run*, which made a
    one-off call run its parts one after the other (``benchmarks/scaling.py`` records a first
    call's run time beside a second call's).
    """
    compiled = jitted.lower(*calls[0]).compile()
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda args: jax.block_until_ready(compiled(*args)), calls))


def _threaded(model, inputs, options, axes, slots, n, workers):
    """Solve interleaved slices of a concrete batch on ``workers`` threads (one core each).

    Slices are padded to equal length so that every thread reuses one compiled solve
    (:func:`run_on_threads`).
    """
    parts = [(rows, tuple(_rows(x, rows) if a == 0 else x for x, a in zip(inputs, axes))) for rows, _ in interleaved_rows(n, workers)]
    results = run_on_threads(_simulate_batch, [(model, *part, options, axes, slots) for _, part in parts])
    values = np.empty((n, *results[0][0].shape[1:]))
    status = np.empty(n, dtype=np.asarray(results[0][1]).dtype)
    for (rows, _), (v, st) in zip(parts, results):
        keep = np.unique(rows, return_index=True)[1]
        values[rows[keep]] = np.asarray(v)[keep]
        status[rows[keep]] = np.asarray(st)[keep]
    return jnp.asarray(values), jnp.asarray(status)


def _rows(x, rows):
    """Rows ``rows`` of every leaf of ``x`` (an array, or dose records)."""
    return jax.tree.map(lambda leaf: leaf[rows], x)


def _sharded(model, inputs, options, axes, slots, n, devices):
    """Solve a concrete batch split over ``devices`` (a 1-D ``patients`` mesh, ``jax.shard_map``).

    The batch is padded (repeating its last row) to a multiple of the device count; each device
    solves its rows with the single-device code, so a patient's result does not depend on where
    it ran.
    """
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    d = len(devices)
    rows = np.minimum(np.arange(-(-n // d) * d), n - 1)
    mesh = Mesh(np.asarray(devices), ("patients",))
    sharding = NamedSharding(mesh, PartitionSpec("patients"))
    padded = tuple(jax.device_put(_rows(x, rows), sharding) if a == 0 else x for x, a in zip(inputs, axes))
    values, status = _sharded_batch(model, *padded, options, axes, slots, mesh)
    return values[:n], status[:n]


@eqx.filter_jit
def _sharded_batch(model, theta, dose_times, dose_amounts, obs_times, records, options, axes, slots, mesh):
    """:func:`_simulate_batch` on every device's rows (compiled once per shapes and mesh)."""
    from jax.sharding import PartitionSpec

    batched = PartitionSpec("patients")
    specs = tuple(batched if a == 0 else PartitionSpec() for a in axes)
    solve = jax.shard_map(lambda *xs: _simulate_batch(model, *xs, options, axes, slots), mesh=mesh, in_specs=specs,
                          out_specs=(batched, batched), check_vma=False)  # fmt: skip
    return solve(theta, dose_times, dose_amounts, obs_times, records)


def _static_slots(model: Model, theta, dose_times, obs, save_slots: int | None = None) -> int:
    """Save slots per interval: ``save_slots`` if given, else from concrete inputs where
    possible (else every observation)."""
    if save_slots is not None:
        return min(save_slots, int(obs.shape[-1]))  # more than one per time would save nothing more
    if any(isinstance(x, jax.core.Tracer) for x in (dose_times, obs)):
        return int(obs.shape[-1])
    return slots_needed(np.asarray(dose_times), np.asarray(obs), max_dose_lag(model, theta))


def max_dose_lag(model: Model, theta=None) -> float:
    """The longest dose lag (days) save slots are sized for. A lag that is one parameter: its upper
    bound (so that a fit's programs hold for every lag it may try) or the largest value in
    ``theta``, whichever is larger; an expression: its largest value over the concrete patients of
    ``theta`` (infinite, so every observation time, where ``theta`` is traced or not given)."""
    mechanism = model.mechanism
    if not mechanism.dose_states:
        return 0.0
    definition = getattr(mechanism, "definition", None)
    if definition is not None:
        lag = definition.doses[0].lag
        if lag is None:
            return 0.0
    else:
        lag = None  # a mechanism of one's own: evaluate it
    if lag in model.spec.names:
        bound = model.spec[lag].bounds[1]
        if theta is None or isinstance(theta, jax.core.Tracer):
            return bound
        return max(bound, float(np.max(np.asarray(theta)[..., model.parameter_names.index(lag)])))
    if theta is None or isinstance(theta, jax.core.Tracer):
        return np.inf
    rows = jnp.asarray(np.atleast_2d(np.asarray(theta, dtype=np.float64)))
    return float(np.max(np.asarray(jax.vmap(lambda th: mechanism.dose_lag(mechanism.prepare(th))[0])(rows))))


def _check_times(times: np.ndarray) -> None:
    if times.ndim not in (1, 2) or times.shape[-1] == 0:
        raise InputError(f"times must be a non-empty 1-D array (or [patients, times]), got shape {times.shape}.")
    if not np.all(np.isfinite(times)):
        bad = int(np.argwhere(~np.isfinite(times))[0][-1])
        raise InputError(f"times[{bad}] is not finite. Fix: remove NaN/inf observation times.")
    if np.any(np.diff(times, axis=-1) < 0):
        bad = int(np.argwhere(np.diff(times, axis=-1) < 0)[0][-1]) + 1
        raise InputError(f"times must be sorted (non-decreasing); times[{bad}] is earlier than times[{bad - 1}]. Fix: sort them.")


def simulate(
    model: Model,
    regimen: Regimen,
    times: Float[Array, "*batch times"],
    params: Parameters | None = None,
    *,
    options: SolverOptions = SolverOptions(),
) -> Simulation:
    """Simulate the observables of ``model`` under ``regimen`` at ``times``.

    Arguments:
        model: from :func:`il2treg.load_model`.
        regimen: dose times (days) and amounts (IU); ``[doses]`` or ``[patients, doses]``.
        times: observation times in days (sorted), ``[times]`` or ``[patients, times]``.
        params: :class:`Parameters` (internal units), ``[params]`` or ``[patients, params]``;
            defaults to the typical patient.
        options: :class:`SolverOptions`.

    Returns:
        :class:`Simulation` with values ``[(patients,) times, observables]``. Any input with a
        patient axis makes the result batched; the others are shared by every patient.

    A call compiles one program per shape, and concrete inputs are padded to shared shapes first
    (:func:`_canonical`): doses to a multiple of 16, observation times to a multiple of 64,
    patients (to ``batch_size``, then in equal chunks) and save slots (from 4) up the ladder 1,
    2, 3, 4, 6, 8, 12, 16, ... (:func:`ladder`, at most half again their run time). A regimen of
    one dose thus runs 17 intervals, 15 of them of zero length. Calls of nearby sizes then reuse one program (about
    7 s of compilation each on a 2-core CPU). The padding changes no value (tested bit for bit
    against the unpadded batch a traced call solves); a single patient is solved as a batch of
    one, which can differ from an unbatched solve in the last bits (typical patient, LUPIL-2:
    5.7e-13 absolute, 2.6e-15 relative).
    Shared parameters and doses are copied to every padded patient (memory grows with the
    patients times the padded doses). Traced
    inputs (under ``jit`` or ``grad``) are not padded: the caller's program fixes the shapes.
    :func:`simulate_regimens` runs regimens of any sizes through one program.
    """
    inputs, axes, n = _batch_inputs(model, regimen, times, params)
    return _solve_batch(model, inputs, axes, n, _static_slots(model, *inputs[:2], inputs[3], options.save_slots), options)


def simulate_regimens(
    model: Model,
    regimens: Mapping[str, Regimen],
    times: Float[Array, " times"] | Mapping[str, Float[Array, " times"]],
    params: Parameters | None = None,
    *,
    options: SolverOptions = SolverOptions(),
) -> dict[str, Simulation]:
    """:func:`simulate` of each of ``regimens`` on the same patients, through one compiled program.

    Simulated one after the other, regimens with different numbers of doses or observation grids
    compile a program each (about 7 s each for the default model on a 2-core CPU; the LUPIL-2
    regimen has 16 doses, the daily low-dose regimen 56). Here every regimen is padded with zero
    doses at its last dose time to the most doses of any (:func:`il2treg.regimen.pad`), every
    grid is padded to the longest by repeating its last time, and all share the largest number of
    save slots any needs. No value changes: a zero dose adds nothing, a repeated time shares the
    save of the first, and the intervals the padding adds have zero length (a regimen without
    doses is split at its zero doses' effective time, where its state, the baseline, does not
    change). The results equal those of :func:`simulate` bit for bit (``tests/test_simulate.py``).
    The padded work costs run time: a zero-length interval per padded dose.

    Arguments:
        regimens: name -> unbatched :class:`Regimen`.
        times: one sorted grid (days) shared by every regimen, or a mapping name -> grid; concrete
            arrays (not traced).
        params, options: as for :func:`simulate`, shared by every regimen.

    Returns:
        name -> :class:`Simulation`, in the order of ``regimens``, each on its own grid. All are
        held at once; :func:`iter_simulations` gives them one at a time.
    """
    return dict(iter_simulations(model, regimens, times, params, options=options))


def iter_simulations(
    model: Model,
    regimens: Mapping[str, Regimen],
    times: Float[Array, " times"] | Mapping[str, Float[Array, " times"]],
    params: Parameters | None = None,
    *,
    options: SolverOptions = SolverOptions(),
) -> Iterator[tuple[str, Simulation]]:
    """:func:`simulate_regimens` one regimen at a time: ``(name, Simulation)`` pairs, each solved
    when it is asked for, so that a caller can reduce one before the next is solved
    (:func:`il2treg.compare` keeps per-patient metrics, not 1,000 patients' curves per regimen).
    The arguments are checked before the first is solved."""
    regimens = dict(regimens)
    if not regimens:
        raise InputError("simulate_regimens got no regimens. Fix: pass a mapping name -> Regimen.")
    grids = dict(times) if isinstance(times, Mapping) else dict.fromkeys(regimens, times)
    if set(grids) != set(regimens):
        raise InputError(f"times are given for {sorted(grids)} but the regimens are {sorted(regimens)}. Fix: one grid per regimen, or one shared grid.")
    for name, r in regimens.items():
        if np.ndim(r.times) != 1:
            raise InputError(f"regimen {name!r} is batched (times of shape {np.shape(r.times)}). Fix: simulate it alone with simulate().")
        if isinstance(grids[name], jax.core.Tracer):
            raise InputError(f"times for {name!r} are traced (under jit or grad). Fix: pass concrete grids, or call simulate() inside the traced function.")
        if np.ndim(grids[name]) != 1:
            raise InputError(f"times for {name!r} have shape {np.shape(grids[name])}. Fix: give a 1-D grid of days.")
        _check_times(np.asarray(grids[name], dtype=np.float64))
    n_doses = max(r.n_doses for r in regimens.values())
    n_times = max(len(g) for g in grids.values())
    batches = {}
    for name, r in regimens.items():
        grid = np.asarray(grids[name], dtype=np.float64)
        longer = np.concatenate([grid, np.full(n_times - grid.size, grid[-1])])
        batches[name] = _batch_inputs(model, pad(r, n_doses), longer, params)
    slots = max(_static_slots(model, *inputs[:2], inputs[3], options.save_slots) for inputs, _, _ in batches.values())
    return _solve_each(model, batches, {name: len(g) for name, g in grids.items()}, slots, options)


def _solve_each(model: Model, batches: dict, lengths: dict[str, int], slots: int, options: SolverOptions) -> Iterator[tuple[str, Simulation]]:
    for name, (inputs, axes, n) in batches.items():
        sim = _solve_batch(model, inputs, axes, n, slots, options)
        k = lengths[name]
        yield name, Simulation(sim.times[..., :k], sim.values[..., :k, :], sim.status, sim.names, sim.units)


def _batch_inputs(model: Model, regimen: Regimen, times, params: Parameters | None):
    """(theta, dose times, dose amounts, observation times, dose records or None) as float64
    arrays, their patient axes (0 or None) and the number of patients (None for one unbatched
    patient)."""
    require_float64()
    params = model.typical() if params is None else params
    if params.names != model.parameter_names:
        raise InputError("params do not belong to this model (different parameter names). Fix: build them with model.parameters() or sample_population(model, ...).")
    theta = jnp.asarray(params.values, dtype=jnp.float64)
    dose_times = jnp.asarray(regimen.times, dtype=jnp.float64)
    dose_amounts = jnp.asarray(regimen.amounts, dtype=jnp.float64)
    if not model.mechanism.dose_states and not isinstance(regimen.amounts, jax.core.Tracer) and np.any(np.asarray(regimen.amounts) != 0):
        raise InputError(f"model {model.name!r} has no dosing input, but the regimen has doses. Fix: add a [doses.<name>] table to the model file, or simulate il2treg.regimen.placebo().")
    obs = jnp.asarray(times, dtype=jnp.float64)
    if not isinstance(times, jax.core.Tracer):
        _check_times(np.asarray(times, dtype=np.float64))
    records = regimen.records
    if records is not None and not isinstance(records.input, jax.core.Tracer):
        highest, n_inputs = int(np.max(np.asarray(records.input), initial=0)), len(model.mechanism.dose_states)
        if highest >= n_inputs:
            raise InputError(f"the regimen doses into input {highest} but model {model.name!r} has {n_inputs} dosing inputs. "
                             "Fix: read the regimen with from_nonmem(..., doses=model.dosing_inputs) for this model.")  # fmt: skip
    inputs = (theta, dose_times, dose_amounts, obs, records)
    axes = tuple(None if x is None or jnp.ndim(jax.tree.leaves(x)[0]) != 2 else 0 for x in inputs)
    sizes = {jax.tree.leaves(x)[0].shape[0] for x, a in zip(inputs, axes) if a == 0}
    if len(sizes) > 1:
        raise InputError(f"batched inputs disagree on the number of patients: {sorted(sizes)}. Fix: give every batched input the same leading size.")
    return inputs, axes, (sizes.pop() if sizes else None)


def bucket(size: int, step: int) -> int:
    """The next multiple of ``step`` (at least ``step``): the doses and observation times a
    concrete :func:`simulate` is padded to."""
    return max(1, -(-size // step)) * step


def ladder(size: int, smallest: int = 1) -> int:
    """The next size of the ladder 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... (powers of two and 1.5
    times them) from ``smallest``: padding to it costs at most half again the work."""
    size = max(size, smallest, 1)
    power = 1 << (size - 1).bit_length()
    return 3 * power // 4 if power >= 4 and 3 * power // 4 >= size else power


def patient_bucket(n: int, batch_size: int) -> int:
    """Patients a concrete batch of ``n`` is padded to: :func:`ladder` up to ``batch_size`` (one
    vmapped chunk); beyond it the fewest chunks of at most ``batch_size`` (:func:`chunk_shape`),
    each padded to :func:`ladder`."""
    if n <= batch_size:
        return min(ladder(n), batch_size)
    chunks, size = chunk_shape(n, batch_size)
    return chunks * min(ladder(size), batch_size)


#: Steps of :func:`bucket` for a concrete :func:`simulate`: doses and observation times. Padding
#: them costs little run time (a zero-length interval per dose, a gathered row per time); patients
#: and save slots cost run time in proportion and go by :func:`ladder` (1,000 patients on a
#: 337-time grid: 1.6 s with the 32 slots they need, 9.4 s with 384).
DOSE_STEP, TIME_STEP, SMALLEST_SLOTS = 16, 64, 4


def _canonical(inputs, axes, n: int | None, slots: int, options: SolverOptions):
    """Concrete inputs padded to shared shapes (:func:`bucket`, :func:`ladder`), so that calls of nearby sizes
    reuse one compiled solve: parameters and doses given a patient axis, doses padded with zero
    doses at each patient's last dose time (0.0 without doses), observation times with repeats
    of the last, patients with repeats of the last, and the save slots (unless given in
    ``options``) rounded up. Returns the padded inputs, their axes, the padded patient count and
    the slots. None of it changes a value (:func:`simulate_regimens` pads the same way); the
    padded work costs run time (a zero-length interval per padded dose, a solve per padded
    patient)."""
    theta, dose_times, dose_amounts, obs = (np.asarray(x, dtype=np.float64) for x in inputs[:4])
    records = inputs[4]
    rows = 1 if n is None else n
    theta = np.broadcast_to(theta, (rows, theta.shape[-1]))
    dose_times = np.broadcast_to(dose_times, (rows, dose_times.shape[-1]))
    dose_amounts = np.broadcast_to(dose_amounts, (rows, dose_amounts.shape[-1]))
    doses = dose_times.shape[1]
    extra = bucket(doses, DOSE_STEP) - doses
    last = dose_times[:, -1:] if doses else np.zeros((rows, 1))
    dose_times = np.concatenate([dose_times, np.broadcast_to(last, (rows, extra))], axis=1)
    dose_amounts = np.concatenate([dose_amounts, np.zeros((rows, extra))], axis=1)
    width = bucket(obs.shape[-1], TIME_STEP)
    obs = np.concatenate([obs, np.repeat(obs[..., -1:], width - obs.shape[-1], axis=-1)], axis=-1)
    size = patient_bucket(rows, options.batch_size)
    pick = np.minimum(np.arange(size), rows - 1)
    if records is not None:
        records = pad_records(jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (rows, x.shape[-1])), records), extra)
        records = jax.tree.map(lambda x: jnp.asarray(x[pick]), records)
    batched = (theta[pick], dose_times[pick], dose_amounts[pick], obs[pick] if axes[3] == 0 else obs)
    if options.save_slots is None:
        slots = min(ladder(slots, SMALLEST_SLOTS), width)
    return (*(jnp.asarray(x) for x in batched), records), (0, 0, 0, axes[3], None if records is None else 0), size, slots


def _solve_batch(model: Model, inputs, axes, n: int | None, slots: int, options: SolverOptions) -> Simulation:
    """Solve prepared inputs (:func:`_batch_inputs`): concrete ones padded to shared shapes
    (:func:`_canonical`) and split over devices or threads where the batch is large enough, traced
    ones (under ``jit`` or ``grad``, whose shapes the caller's program fixes) in one call."""
    obs = inputs[3]
    batch = n if n is not None else 1
    concrete = not any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(inputs))
    if concrete:
        solved, solved_axes, size, slots = _canonical(inputs, axes, n, slots, options)
        workers = min(options.workers or default_workers(), batch // options.batch_size)
        devices = jax.local_devices()
        if options.shard and len(devices) > 1 and batch >= len(devices):
            values, status = _sharded(model, solved, options, solved_axes, slots, size, devices)
        elif workers > 1:
            values, status = _threaded(model, solved, options, solved_axes, slots, size, workers)
        else:
            values, status = _simulate_batch(model, *solved, options, solved_axes, slots)
        values, status = values[:batch, : obs.shape[-1]], status[:batch]
        if n is None:
            values, status = values[0], status[0]
    else:
        values, status = _simulate_batch(model, *inputs, options, axes, slots)
    if n is not None:
        obs = jnp.broadcast_to(obs, (n, obs.shape[-1]))
    mechanism = model.mechanism
    return Simulation(obs, values, status, tuple(mechanism.observable_names), tuple(mechanism.observable_units))
