"""DoseRecords: plain records, padding, and the steady-state count the solver relies on."""

from __future__ import annotations

import numpy as np
import pytest

from il2treg.errors import InputError
from il2treg.records import DoseRecords, pad_records


def test_plain_records_and_their_padding_are_plain():
    records = pad_records(DoseRecords.plain(3), 2)
    assert records.input.shape == (5,) and records.steady_states == 0
    for field in (records.input, records.duration, records.reset, records.ss, records.ii):
        assert not np.any(np.asarray(field))


def test_padding_keeps_the_details_and_the_steady_state_count():
    records = DoseRecords(input=[[1, 0]], duration=[[0.5, 0.0]], reset=[[False, True]], ss=[[1, 0]], ii=[[0.5, 0.0]], steady_states=1)
    padded = pad_records(records, 3)
    assert padded.ss.shape == (1, 5) and padded.steady_states == 1
    np.testing.assert_array_equal(padded.input[0], [1, 0, 0, 0, 0])
    np.testing.assert_array_equal(padded.reset[0], [False, True, False, False, False])


def test_too_few_steady_state_slots_are_refused():
    """A steady-state dose without its slot would put the state at zero: refused, with the fix."""
    with pytest.raises(InputError, match=r"DoseRecords\(steady_states=0\) but a patient has 2 steady-state doses \(ss > 0\). Fix: pass steady_states=2"):
        DoseRecords(input=[0, 0], duration=[0.0, 0.0], reset=[False, False], ss=[1, 2], ii=[0.5, 0.5])
