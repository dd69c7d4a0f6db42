"""Bind parameters too large for a URL or a form field travel in the query text, on a server.

clickhouse-connect sends a `{name:Type}` value as a URL parameter or, past 4 KiB, as a multipart
form field. A ClickHouse server refuses a form field over http_max_field_value_size (128 KiB) and a
URL over http_max_uri_size (1 MiB); a page of 10,000 run ids, or the series ids of 1,000 runs x
100 keys, is larger. The request body has no such limit: a value over INLINE_OVER is written into
the SQL as a typed literal, `CAST(<literal> AS <Type>)` (the same type the placeholder declared),
and max_query_size is raised for that one query so the parser takes it. Settings stay in the URL:
they are a few short names and numbers. chDB takes parameters in-process, so this applies only
to server clients (storage.clickhouse.connect wraps them)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from clickhouse_connect.driver.binding import format_query_value
from clickhouse_connect.driver.exceptions import ProgrammingError
from clickhouse_connect.driver.httpclient import HttpClient

INLINE_OVER = 16 * 1024
"""Characters of one value's literal above which it is inlined (well below the 128 KiB field)."""

DEFAULT_MAX_QUERY_SIZE = 262_144  # ClickHouse's max_query_size default

_PLACEHOLDER = re.compile(r"\{(\w+):([^{}]+)\}")


MAX_URL_SETTINGS = 64 * 1024
"""Bytes of URL-encoded settings a request may carry; the store's are a few short names, numbers
and dedup tokens (bounded by the 128-character client_id), so more is a bug, refused here."""


def check_settings(settings: dict | None) -> None:
    if settings and len(urlencode({k: str(v) for k, v in settings.items()})) > MAX_URL_SETTINGS:
        longest = max(settings, key=lambda k: len(str(settings[k])))
        raise ProgrammingError(
            f"settings of {len(urlencode(settings))} bytes would go in the request URL (longest: "
            f"{longest!r}); a ClickHouse server refuses URLs over 1 MiB: keep settings short"
        )


def inline_large(sql: Any, parameters: Any, settings: dict | None, server_tz=None):
    """(sql, parameters, settings) with every bound value over INLINE_OVER written into `sql`."""
    check_settings(settings)
    if not isinstance(sql, str) or not isinstance(parameters, dict) or not parameters:
        return sql, parameters, settings
    literals = {}
    for name, value in parameters.items():
        if isinstance(value, (list, tuple, dict, str, bytes)):
            literal = format_query_value(value, server_tz) if server_tz else format_query_value(value)
            if len(literal) > INLINE_OVER:
                literals[name] = literal
    if not literals:
        return sql, parameters, settings

    def put(m: re.Match) -> str:
        name, type_ = m.group(1), m.group(2)
        if name not in literals:
            return m.group(0)
        return f"CAST({literals[name]} AS {type_})"

    sql = _PLACEHOLDER.sub(put, sql)
    rest = {k: v for k, v in parameters.items() if k not in literals}
    size = len(sql.encode()) + 4096
    settings = dict(settings or {})
    if size > int(settings.get("max_query_size", DEFAULT_MAX_QUERY_SIZE)):
        settings["max_query_size"] = size
    return sql, rest, settings


class ServerClient(HttpClient):
    """clickhouse-connect's HTTP client, with large bind values moved into the SQL text."""

    def create_query_context(self, query=None, parameters=None, settings=None, *args, **kwargs):
        query, parameters, settings = inline_large(query, parameters, settings, self.server_tz)
        return super().create_query_context(query, parameters, settings, *args, **kwargs)

    def raw_query(self, query, parameters=None, settings=None, *args, **kwargs):
        query, parameters, settings = inline_large(query, parameters, settings, self.server_tz)
        return super().raw_query(query, parameters, settings, *args, **kwargs)

    def command(self, cmd, parameters=None, data=None, settings=None, *args, **kwargs):
        cmd, parameters, settings = inline_large(cmd, parameters, settings, self.server_tz)
        return super().command(cmd, parameters, data, settings, *args, **kwargs)

    def raw_insert(self, table, column_names=None, insert_block=None, settings=None, *args, **kwargs):
        check_settings(settings)
        return super().raw_insert(table, column_names, insert_block, settings, *args, **kwargs)

    def insert(self, *args, **kwargs):
        check_settings(kwargs.get("settings"))
        return super().insert(*args, **kwargs)
