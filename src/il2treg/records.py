r"""What a NONMEM dose record says beyond its time and amount: :class:`DoseRecords`.

A dose of a :class:`~il2treg.regimen.Regimen` or a dataset is a time and an amount given as a
bolus into the model's first dosing input (or infused over the duration the model declares for
it). A NONMEM record says more, and :class:`DoseRecords` carries it, one entry per dose, beside
the times and amounts:

- ``input``: the dosing input the dose enters (the dataset's ``CMT``, mapped to the model's
  ``[doses.<name>]`` tables in their order);
- ``duration``: a zero-order infusion over this many days (the dataset's ``AMT / RATE``); 0 means
  the input's own way: a bolus, or an infusion over the duration the model declares
  (``RATE = -2`` in NONMEM's terms);
- ``reset``: the state returns to its initial value at the record's time, before its dose
  (``EVID`` 3 and 4); running infusions stop;
- ``ss`` and ``ii``: a steady-state dose (``SS`` 1 or 2, interval ``II`` in days). With ``SS = 1``
  the state at the record's time is replaced by the pre-dose state of the periodic regime of
  this dose repeated every ``ii`` (everything before is forgotten, as after a reset); with
  ``SS = 2`` that periodic state, less the initial state, is added to the current state (NONMEM's
  superposition, exact for linear models only). The record's own dose then enters as usual.

The solver (:func:`il2treg.simulate.solve_one`) reads them; without records every dose is a
bolus (or the model's infusion) into the first input, and the solve is the lighter one the
IL-2 model has always used.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from il2treg.errors import InputError

__all__ = ["FIELDS", "DoseRecords", "combine_records", "detailed_records", "pad_records"]

#: The per-dose fields of :class:`DoseRecords`, in the order its constructor takes them.
FIELDS: tuple[str, ...] = ("input", "duration", "reset", "ss", "ii")


class DoseRecords(eqx.Module):
    """Per-dose details of NONMEM dose records (module docstring), aligned with the dose times.

    **Fields** (shape ``(..., doses)``, a leading patient axis in a batch):

    - `input`: int, index of the model's dosing input.
    - `duration`: float64 days, > 0 for an infusion given in the data, 0 for the input's own way.
    - `reset`: bool, reset the state before this dose.
    - `ss`: int, 0 (none), 1 (steady state replacing the state) or 2 (added to it).
    - `ii`: float64 days, the steady state's dosing interval (> 0 where ``ss`` > 0).
    - `steady_states`: (static) the most steady-state records of any one patient: the solver
      computes that many periodic states per patient (0 skips the machinery).
    """

    input: Int[Array, "... doses"] = eqx.field(converter=lambda x: jnp.asarray(x, dtype=jnp.int32))
    duration: Float[Array, "... doses"] = eqx.field(converter=lambda x: jnp.asarray(x, dtype=jnp.float64))
    reset: Bool[Array, "... doses"] = eqx.field(converter=lambda x: jnp.asarray(x, dtype=bool))
    ss: Int[Array, "... doses"] = eqx.field(converter=lambda x: jnp.asarray(x, dtype=jnp.int32))
    ii: Float[Array, "... doses"] = eqx.field(converter=lambda x: jnp.asarray(x, dtype=jnp.float64))
    steady_states: int = eqx.field(static=True, default=0)

    def __check_init__(self) -> None:
        ss = self.ss
        if isinstance(ss, jax.core.Tracer):
            return
        most = int(np.max(np.sum(np.asarray(ss) > 0, axis=-1), initial=0))
        if self.steady_states < most:
            raise InputError(
                f"DoseRecords(steady_states={self.steady_states}) but a patient has {most} steady-state doses (ss > 0). "
                f"Fix: pass steady_states={most} or more (Dataset.records() sets it)."
            )

    @classmethod
    def plain(cls, n_doses: int) -> DoseRecords:
        """Records of ``n_doses`` plain doses: the input's own way into input 0, no reset, no SS."""
        zeros = np.zeros(n_doses)
        return cls(zeros.astype(np.int32), zeros, zeros.astype(bool), zeros.astype(np.int32), zeros)


def pad_records(records: DoseRecords, extra: int) -> DoseRecords:
    """``records`` with ``extra`` plain doses appended on the last axis (the padding of zero
    doses a batch adds: no reset, no steady state, so they change nothing)."""
    if extra <= 0:
        return records

    def grow(x):
        return jnp.concatenate([x, jnp.zeros((*x.shape[:-1], extra), dtype=x.dtype)], axis=-1)

    return DoseRecords(*(grow(getattr(records, f)) for f in FIELDS), steady_states=records.steady_states)


def combine_records(parts, join, steady_states: int) -> DoseRecords:
    """The records whose every field is ``join`` (``jnp.concatenate`` along the doses, ``jnp.stack``
    into a batch) of that field of ``parts``, with ``steady_states`` slots."""
    return DoseRecords(*(join([getattr(p, f) for p in parts]) for f in FIELDS), steady_states=steady_states)


def detailed_records(input, duration, reset, ss, ii) -> DoseRecords | None:
    """:class:`DoseRecords` of per-dose details (``[..., doses]``; steady-state slots: the most SS
    doses of any patient), or None where every dose is plain (the input's own way into the first
    input, no reset, no SS), so that the solver takes its lighter path."""
    if not (np.any(input) or np.any(duration) or np.any(reset) or np.any(ss)):
        return None
    steady = int(np.max(np.sum(np.asarray(ss) > 0, axis=-1), initial=0))
    return DoseRecords(input, duration, reset, ss, ii, steady_states=steady)
