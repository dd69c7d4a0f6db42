"""storage/large_binds.py: bind values too large for a server's URL or form field are written into
the SQL as typed literals (the request body has no limit) and max_query_size grows to fit; small
values stay bound; settings that would make a URL too long are refused. The HTTP round trip is in
tests/integration/test_store_on_server.py (ListKeys naming 10,000 runs on the ClickHouse stand-in)."""

from __future__ import annotations

import pytest
from clickhouse_connect.driver.exceptions import ProgrammingError

from runstream_services.storage.large_binds import (
    DEFAULT_MAX_QUERY_SIZE,
    INLINE_OVER,
    check_settings,
    inline_large,
)

SQL = "SELECT 1 FROM t WHERE project = {p:String} AND run_id IN {runs:Array(String)} OR has({runs:Array(String)}, 'x')"


def test_small_values_stay_bound():
    assert inline_large(SQL, {"p": "proj", "runs": ["a", "b"]}, None) == (
        SQL,
        {"p": "proj", "runs": ["a", "b"]},
        None,
    )


def test_a_large_value_is_written_into_the_sql_with_its_type_and_room_to_parse():
    runs = [f"run-{i:06d}-o'neil" for i in range(20_000)]
    sql, params, settings = inline_large(SQL, {"p": "proj", "runs": runs}, {"x": 1})
    assert params == {"p": "proj"}  # the project stays a bind parameter
    assert sql.count("CAST(['run-000000-o\\'neil', ") == 2 and sql.count(" AS Array(String))") == 2
    assert "{runs:" not in sql and "{p:String}" in sql
    assert len(sql) > 2 * INLINE_OVER
    assert settings["x"] == 1 and settings["max_query_size"] >= len(sql.encode()) > DEFAULT_MAX_QUERY_SIZE


def test_settings_too_long_for_a_url_are_refused_by_name():
    check_settings({"insert_deduplication_token": "k" * 200})
    with pytest.raises(ProgrammingError, match="insert_deduplication_token"):
        check_settings({"insert_deduplication_token": "k" * 70_000})
