"""Checks a ConsoleBatch (captured stdout / stderr lines of one rank of a run) before ingest
accepts it: every column holds one item per line, streams are stdout or stderr, texts are bounded
(the SDK cuts long lines at console_max_line_chars, 8,192 by default, far below the limit here)."""

from __future__ import annotations

from runstream.v1 import ingest_pb2, types_pb2
from runstream_services.errors import InvalidArgument
from runstream_services.ingest.validation import check_rank

MAX_LINES_PER_BATCH = 100_000
MAX_LINE_CHARS = 64 * 1024
_STREAMS = (types_pb2.CONSOLE_STREAM_STDOUT, types_pb2.CONSOLE_STREAM_STDERR)


def check_console(batch: ingest_pb2.ConsoleBatch) -> int:
    """Validates the batch and returns its number of lines; raises InvalidArgument with the fix."""
    n = len(batch.texts)
    if n == 0:
        raise InvalidArgument("console batch has no lines: send at least one text")
    if n > MAX_LINES_PER_BATCH:
        raise InvalidArgument(
            f"console batch has {n} lines; the limit is {MAX_LINES_PER_BATCH} per batch: split it"
        )
    for column in ("streams", "line_numbers", "times_ms"):
        count = len(getattr(batch, column))
        if count != n:
            raise InvalidArgument(
                f"console batch has {n} texts but {count} {column}: send one of each per line"
            )
    for stream in batch.streams:
        if stream not in _STREAMS:
            raise InvalidArgument(
                f"console batch stream {stream} is not CONSOLE_STREAM_STDOUT (1) or CONSOLE_STREAM_STDERR (2)"
            )
    for time_ms in batch.times_ms:
        if time_ms < 0:
            raise InvalidArgument(f"console line time {time_ms} is negative: send unix time in milliseconds")
    for text in batch.texts:
        if len(text) > MAX_LINE_CHARS:
            raise InvalidArgument(
                f"a console line is {len(text)} characters; the limit is {MAX_LINE_CHARS}: cut it "
                "(the SDK's console_max_line_chars does)"
            )
    check_rank(batch.rank)
    return n
