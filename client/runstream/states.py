"""Run states: the one spelling of a run's lifecycle, shared by the SDK, runstream.Api, the
dashboard and the services (which build their transition rules on it, see
runstream_services/run_state.py).

The names are derived from the wire enum runstream.v1.RunState (RUN_STATE_FINISHED -> "finished"),
so a state added to the proto is named here without another edit."""

from __future__ import annotations

from runstream.v1 import types_pb2

#: wire number -> name, for every state of runstream.v1.RunState
STATE_NAMES: dict[int, str] = {
    number: name.removeprefix("RUN_STATE_").lower() for name, number in types_pb2.RunState.items()
}
#: name -> wire number
STATE_NUMBERS: dict[str, int] = {name: number for number, name in STATE_NAMES.items()}

UNSPECIFIED = STATE_NAMES[types_pb2.RUN_STATE_UNSPECIFIED]
RUNNING = STATE_NAMES[types_pb2.RUN_STATE_RUNNING]
FINISHED = STATE_NAMES[types_pb2.RUN_STATE_FINISHED]
FAILED = STATE_NAMES[types_pb2.RUN_STATE_FAILED]
CRASHED = STATE_NAMES[types_pb2.RUN_STATE_CRASHED]
KILLED = STATE_NAMES[types_pb2.RUN_STATE_KILLED]

#: a run in one of these has ended; only a resume (run_start with resume=True) reopens it
TERMINAL_STATES = frozenset({FINISHED, FAILED, CRASHED, KILLED})
#: the states a client may finish a run with (crashed is the server's verdict, never sent)
FINISH_STATES = frozenset({FINISHED, FAILED, KILLED})


def state_name(number: int) -> str:
    """The name of a wire state; an unknown number (a newer server) reads as "unspecified"."""
    return STATE_NAMES.get(number, UNSPECIFIED)


def state_number(name: str) -> int:
    """The wire number of a state name (case-insensitive); raises ValueError naming the choices."""
    try:
        return STATE_NUMBERS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(
            f"unknown run state {name!r}: use one of {', '.join(STATE_NAMES.values())}"
        ) from None
