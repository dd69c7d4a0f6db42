"""Fuzzes the QueryService of a real server with requests valid in shape but hostile in value
(garbage filters, huge page sizes and point budgets, unknown enums, runs that do not exist) and
with raw bytes: every call ends with a response or a refusal that names the caller's fault or a
limit, never INTERNAL/UNKNOWN, silence or a dead server."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st

from runstream.v1 import query_pb2 as qpb
from tests.fuzz import strategies as s
from tests.fuzz.fuzz_settings import FUZZ_SETTINGS
from tests.fuzz.harness import NEVER, QUERY_REFUSALS, FuzzTarget

# A real server process and chDB: not what `-m "not integration and not e2e"` (unit) selects.
pytestmark = pytest.mark.integration

ALLOWED = QUERY_REFUSALS | {grpc.StatusCode.OK}


@st.composite
def query_calls(draw) -> tuple[str, object]:
    method = draw(st.sampled_from(sorted(s.QUERY_METHODS)))
    return method, draw(s.QUERY_METHODS[method][0])


def test_valid_shaped_queries(fuzz: FuzzTarget):
    @FUZZ_SETTINGS
    @given(st.lists(query_calls(), min_size=1, max_size=8))
    def some_calls(calls):
        for method, request in calls:
            _, response_type, streaming = s.QUERY_METHODS[method]
            code = fuzz.query_call(method, request.SerializeToString(), streaming, response_type)
            assert code in ALLOWED, f"{method}({request!r:.2000}) answered {code.name}"
        assert fuzz.server.proc.poll() is None, fuzz.server.log_tail()

    some_calls()


def test_raw_query_bytes(fuzz: FuzzTarget):
    @FUZZ_SETTINGS
    @given(st.lists(st.tuples(st.sampled_from(sorted(s.QUERY_METHODS)), st.binary(max_size=128)), min_size=1,
                    max_size=8))  # fmt: skip
    def some_calls(calls):
        for method, raw in calls:
            _, response_type, streaming = s.QUERY_METHODS[method]
            code = fuzz.query_call(method, raw, streaming, response_type)
            try:
                getattr(qpb, f"{method}Request").FromString(raw)
                decodes = True
            except DecodeError:
                decodes = False
            if decodes:
                assert code in ALLOWED, f"{method}({raw!r}) answered {code.name}"
            else:
                assert code not in NEVER, f"{method}({raw!r}) answered {code.name}"
        assert fuzz.server.proc.poll() is None, fuzz.server.log_tail()

    some_calls()
