"""Turns decoded ingest messages into ClickHouse rows: an Arrow table for metric points (no
per-point Python work: numpy views over the wire bytes, dictionary-encoded strings), plain row
lists for params and artifacts. Run rows are run_state.RunRow (their merge rules live there)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa

from runstream.v1 import ingest_pb2, types_pb2

METRIC_COLUMNS = ("project", "run_id", "kind", "key", "rank", "step", "time_ms", "value")
#: the two parts of a point's version (EPHEMERAL columns: the table stores only `version`)
METRIC_VERSION_COLUMNS = ("received_ms", "send_order")
#: bits of `send_order` that hold the point's position in its batch (max_batch_points < 2**20)
POSITION_BITS = 20
PARAM_COLUMNS = ("project", "run_id", "scope", "key", "kind", "num", "str", "version")
ARTIFACT_COLUMNS = (
    "project", "run_id", "name", "path", "type", "version", "version_tag", "sha256", "size", "uri", "created_ms",
)  # fmt: skip


MEDIA_COLUMNS = (
    "project", "run_id", "key", "step", "rank", "idx", "kind", "caption", "sha256", "size", "format",
    "time_ms", "width", "height", "channels", "sample_rate", "duration_s", "num_rows", "columns",
    "bin_edges", "counts", "text", "version",
)  # fmt: skip


def media_row(msg: ingest_pb2.MediaEvent, received_ms: int, seq: int) -> list:
    """A media table row (migration 0010); version = (receive time, client seq): the newest wins."""
    return [
        msg.project, msg.run_id, msg.key, msg.step, msg.rank, msg.index, msg.kind, msg.caption,
        msg.sha256.lower(), msg.size, msg.format, msg.time_ms or received_ms, msg.width, msg.height,
        msg.channels, msg.sample_rate, msg.duration_s, msg.rows, list(msg.columns), list(msg.bin_edges),
        list(msg.counts), msg.text, (received_ms << 64) | (seq & ((1 << 64) - 1)),
    ]  # fmt: skip


def _dictionary(indices: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(
        pa.array(indices, type=pa.int32()), pa.array(values, type=pa.string())
    )


_SEQ_MASK = (1 << (64 - POSITION_BITS)) - 1


def send_order(seq: int, n: int) -> np.ndarray:
    """The `send_order` of a batch's n points: the client's seq, then the position in the batch."""
    return np.arange(n, dtype=np.uint64) + np.uint64((seq & _SEQ_MASK) << POSITION_BITS)


def metrics_table(batches: list[tuple[ingest_pb2.MetricBatch, int, int]]) -> pa.Table:
    """One Arrow table for (batch, received_ms, seq) triples. Batches are assumed validated.
    Each point carries its version parts (received_ms, send_order): writers/store.py says why.
    One Python pass over the batches gathers what differs per batch (dictionary ids, the wire
    bytes); the per-point columns are then built for the whole block at once (np.repeat of the
    per-batch values): 23 -> 4.3 us per 10-point request in a block of 1,000 (issue 11)."""
    # Arrow dictionaries must hold unique values: one per project, one per run id, one per key.
    key_ids: dict[str, int] = {}
    project_ids: dict[str, int] = {}
    run_ids: dict[str, int] = {}
    count = len(batches)
    counts = np.empty(count, np.int64)
    projects, runs, kinds = np.empty(count, np.int32), np.empty(count, np.int32), np.empty(count, np.int32)
    ranks, received = np.empty(count, np.uint16), np.empty(count, np.int64)
    seq_parts = np.empty(count, np.uint64)
    key_offsets = np.empty(count, np.int64)  # where each batch's keys start in `batch_keys`
    batch_keys: list[int] = []  # every batch's keys as dictionary ids, batch after batch
    steps, values, times, key_index = [], [], [], []
    system = types_pb2.METRIC_KIND_SYSTEM
    for i, (batch, received_ms, seq) in enumerate(batches):
        n = len(batch.steps) >> 3
        counts[i] = n
        projects[i] = project_ids.setdefault(batch.project, len(project_ids))
        runs[i] = run_ids.setdefault(batch.run_id, len(run_ids))
        kinds[i] = 1 if batch.kind == system else 0
        ranks[i] = batch.rank
        received[i] = received_ms
        seq_parts[i] = (seq & _SEQ_MASK) << POSITION_BITS
        key_offsets[i] = len(batch_keys)
        batch_keys.extend([key_ids.setdefault(k, len(key_ids)) for k in batch.keys])
        key_index.append(batch.key_index or bytes(2 * n))  # no index: every point has key 0
        steps.append(batch.steps)
        values.append(batch.values)
        times.append(batch.times_ms or np.full(n, received_ms, "<i8").tobytes())
    total = int(counts.sum())
    index = np.frombuffer(b"".join(key_index), "<u2").astype(np.int64) + np.repeat(key_offsets, counts)
    starts = np.repeat((np.cumsum(counts) - counts).astype(np.uint64), counts)
    positions = np.arange(total, dtype=np.uint64) - starts  # each point's place in its batch
    return pa.table(
        {
            "project": _dictionary(np.repeat(projects, counts), list(project_ids)),
            "run_id": _dictionary(np.repeat(runs, counts), list(run_ids)),
            "kind": _dictionary(np.repeat(kinds, counts), ["user", "system"]),
            "key": _dictionary(np.array(batch_keys, np.int32)[index], list(key_ids)),
            "rank": pa.array(np.repeat(ranks, counts)),
            "step": pa.array(np.frombuffer(b"".join(steps), "<i8")),
            "time_ms": pa.array(np.frombuffer(b"".join(times), "<i8")),
            "value": pa.array(np.frombuffer(b"".join(values), "<f8")),
            "received_ms": pa.array(np.repeat(received, counts)),
            "send_order": pa.array(positions + np.repeat(seq_parts, counts)),
        }
    )


def _format_number(x: float) -> str:
    if x.is_integer() and abs(x) < 1e16:  # False for NaN and inf
        return str(int(x))
    return repr(x)


#: display text of numbers seen lately: the runs of a sweep repeat most of their config values
_NUMBER_TEXT: dict[float, str] = {}
_NUMBER_TEXT_MAX = 4096


def _number_text(x: float) -> str:
    """_format_number(x), remembered. Equal floats share one text (0.0 and -0.0 are both "0");
    a NaN never matches its entry, so it is formatted each time."""
    text = _NUMBER_TEXT.get(x)
    if text is None:
        text = _format_number(x)
        if len(_NUMBER_TEXT) >= _NUMBER_TEXT_MAX:
            _NUMBER_TEXT.clear()
        _NUMBER_TEXT[x] = text
    return text


def param_row(project: str, run_id: str, scope: str, key: str, value: types_pb2.Value, version: int) -> tuple:
    """A params table row (PARAM_COLUMNS) of one config or summary value."""
    kind = value.WhichOneof("kind")
    if kind == "number":
        return (project, run_id, scope, key, "number", value.number, _format_number(value.number), version)
    if kind == "flag":
        return (
            project,
            run_id,
            scope,
            key,
            "flag",
            float(value.flag),
            "true" if value.flag else "false",
            version,
        )
    if kind == "text":
        return (project, run_id, scope, key, "text", math.nan, value.text, version)
    return (project, run_id, scope, key, "json", math.nan, value.json, version)


def param_rows(project: str, run_id: str, scope: str, values, version: int) -> list[tuple]:
    """param_row of every value of a config or summary map (key -> types_pb2.Value), in the map's
    order, in one loop: the writer stages 20 per run_start (issue 11). Rows are tuples: tuples of
    strings and numbers leave the garbage collector's tracking, and the writer keeps a block's
    rows through several collections."""
    out = []
    append, nan, known_text, text_of = out.append, math.nan, _NUMBER_TEXT.get, _number_text
    for key in values:  # (the map's items() is a pure-Python view, twice as slow to iterate)
        value = values[key]
        kind = value.WhichOneof("kind")
        if kind == "number":
            num = value.number
            text = known_text(num)
            append((project, run_id, scope, key, "number", num, text or text_of(num), version))
        elif kind == "flag":
            flag = value.flag
            append((project, run_id, scope, key, "flag", float(flag), "true" if flag else "false", version))
        elif kind == "text":
            append((project, run_id, scope, key, "text", nan, value.text, version))
        else:
            append((project, run_id, scope, key, "json", nan, value.json, version))
    return out
