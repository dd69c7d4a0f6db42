"""Turns a ConsoleBatch (validated by ingest/console_validation.py) into console_lines rows
(migration 0011). A line's identity includes the client id of the SDK process that captured it, so
two processes of one rank (a resumed run) never collide, while a replay of a request lands on the
rows it stored before."""

from __future__ import annotations

from runstream.v1 import ingest_pb2

CONSOLE_COLUMNS = ("project", "run_id", "time_ms", "rank", "client_id", "line", "stream", "text")


def console_rows(client_id: str, batch: ingest_pb2.ConsoleBatch) -> list[list]:
    """One row per line, columns as CONSOLE_COLUMNS (stream as the Enum8 value 1 / 2)."""
    project, run_id, rank = batch.project, batch.run_id, batch.rank
    return [
        [project, run_id, time_ms, rank, client_id, line, stream, text]
        for time_ms, line, stream, text in zip(
            batch.times_ms, batch.line_numbers, batch.streams, batch.texts, strict=True
        )
    ]
