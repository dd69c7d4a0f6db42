"""rows.param_rows, the writer's one-loop builder of a config/summary map's params rows, gives the
rows param_row gives value by value, for every kind of value, in the map's order; the remembered
number texts equal the formatted ones."""

from __future__ import annotations

import gc
import math

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from runstream_services.writers import rows

VALUES = {
    "int": types_pb2.Value(number=3.0),
    "neg": types_pb2.Value(number=-42.0),
    "zero": types_pb2.Value(number=0.0),
    "negzero": types_pb2.Value(number=-0.0),
    "frac": types_pb2.Value(number=0.001),
    "big": types_pb2.Value(number=1e20),
    "limit": types_pb2.Value(number=9999999999999998.0),
    "nan": types_pb2.Value(number=math.nan),
    "inf": types_pb2.Value(number=math.inf),
    "ninf": types_pb2.Value(number=-math.inf),
    "on": types_pb2.Value(flag=True),
    "off": types_pb2.Value(flag=False),
    "text": types_pb2.Value(text="adam"),
    "empty_text": types_pb2.Value(text=""),
    "json": types_pb2.Value(json='{"a": [1, 2]}'),
    "unset": types_pb2.Value(),
}


def _same(a, b) -> bool:
    """Row equality where NaN equals NaN (the num column of text and json values is NaN)."""
    return len(a) == len(b) and all(
        x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        for x, y in zip(a, b, strict=True)
    )


def test_param_rows_equal_param_row_per_value_for_every_kind():
    config = pb.RunStart(project="p", run_id="r", config=VALUES).config
    built = rows.param_rows("p", "r", "config", config, 7)
    expected = [rows.param_row("p", "r", "config", key, value, 7) for key, value in config.items()]
    assert len(built) == len(VALUES)
    assert [r[3] for r in built] == [r[3] for r in expected]  # the map's order
    for got, want in zip(built, expected, strict=True):
        assert len(got) == len(rows.PARAM_COLUMNS)
        assert _same(got, want), (got, want)
    by_key = {r[3]: r for r in built}
    assert by_key["int"][4:7] == ("number", 3.0, "3")
    assert by_key["negzero"][6] == "0" and by_key["zero"][6] == "0"
    assert by_key["frac"][6] == "0.001" and by_key["big"][6] == "1e+20"
    assert by_key["nan"][6] == "nan" and by_key["inf"][6] == "inf" and by_key["ninf"][6] == "-inf"
    assert by_key["on"][4:7] == ("flag", 1.0, "true") and by_key["off"][4:7] == ("flag", 0.0, "false")
    assert by_key["text"][4] == "text" and by_key["text"][6] == "adam" and math.isnan(by_key["text"][5])
    assert by_key["json"][4] == "json" and by_key["json"][6] == '{"a": [1, 2]}'
    assert by_key["unset"][4] == "json" and by_key["unset"][6] == ""


def test_remembered_number_texts_equal_formatted_ones_also_past_the_bound():
    numbers = [float(i) / 8 for i in range(-50, 50)] + [1e16, 1e15, -0.0, 0.0, math.nan, math.inf]
    for _ in range(2):  # the second pass reads the remembered texts
        for x in numbers:
            assert rows._number_text(x) == rows._format_number(x)
    for i in range(rows._NUMBER_TEXT_MAX + 10):  # the memory is cleared, never grows past its bound
        assert rows._number_text(i + 0.5) == rows._format_number(i + 0.5)
    assert len(rows._NUMBER_TEXT) <= rows._NUMBER_TEXT_MAX
    assert rows._number_text(-0.0) == "0" and rows._number_text(0.0) == "0"


def test_param_rows_leave_the_garbage_collectors_tracking():
    """Why they are tuples: a block's thousands of rows are not traversed by every collection."""
    config = pb.RunStart(project="p", run_id="r", config=VALUES).config
    built = rows.param_rows("p", "r", "summary", config, 1)
    gc.collect()
    assert not any(gc.is_tracked(r) for r in built)
