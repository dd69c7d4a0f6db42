"""The run-state vocabulary: enumerated once here, derived from the proto everywhere else."""

import pytest

from runstream import states
from runstream.v1 import types_pb2

EXPECTED = ("unspecified", "running", "finished", "failed", "crashed", "killed")


def test_state_names_enumerated_once():
    assert tuple(states.STATE_NAMES.values()) == EXPECTED
    assert set(states.STATE_NAMES) == set(types_pb2.RunState.values())


def test_terminal_and_finish_states():
    assert {"finished", "failed", "crashed", "killed"} == states.TERMINAL_STATES
    assert states.TERMINAL_STATES - {"crashed"} == states.FINISH_STATES
    assert states.RUNNING not in states.TERMINAL_STATES


def test_round_trip_and_unknown_numbers():
    for number, name in states.STATE_NAMES.items():
        assert states.state_number(name) == number
        assert states.state_number(name.upper()) == number
        assert states.state_name(number) == name
    assert states.state_name(99) == "unspecified"
    with pytest.raises(ValueError, match="use one of unspecified, running"):
        states.state_number("done")
