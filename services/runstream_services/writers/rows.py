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


def send_order(seq: int, n: int) -> np.ndarray:
    """The `send_order` of a batch's n points: the client's seq, then the position in the batch."""
    return np.arange(n, dtype=np.uint64) + np.uint64(
        (seq & ((1 << (64 - POSITION_BITS)) - 1)) << POSITION_BITS
    )


def metrics_table(batches: list[tuple[ingest_pb2.MetricBatch, int, int]]) -> pa.Table:
    """One Arrow table for (batch, received_ms, seq) triples. Batches are assumed validated.
    Each point carries its version parts (received_ms, send_order): writers/store.py says why."""
    # Arrow dictionaries must hold unique values: one per project, one per run id, one per key.
    key_ids: dict[str, int] = {}
    project_ids: dict[str, int] = {}
    run_ids: dict[str, int] = {}
    key_parts, project_parts, run_parts, kinds, ranks, steps, times, values = [], [], [], [], [], [], [], []
    received, orders = [], []
    for batch, received_ms, seq in batches:
        n = len(batch.steps) // 8
        remap = np.array([key_ids.setdefault(k, len(key_ids)) for k in batch.keys], dtype=np.int32)
        if batch.key_index:
            key_parts.append(remap[np.frombuffer(batch.key_index, "<u2")])
        else:
            key_parts.append(np.full(n, remap[0], np.int32))
        project_parts.append(np.full(n, project_ids.setdefault(batch.project, len(project_ids)), np.int32))
        run_parts.append(np.full(n, run_ids.setdefault(batch.run_id, len(run_ids)), np.int32))
        kinds.append(np.full(n, 1 if batch.kind == types_pb2.METRIC_KIND_SYSTEM else 0, np.int32))
        ranks.append(np.full(n, batch.rank, np.uint16))
        steps.append(np.frombuffer(batch.steps, "<i8"))
        values.append(np.frombuffer(batch.values, "<f8"))
        times.append(
            np.frombuffer(batch.times_ms, "<i8") if batch.times_ms else np.full(n, received_ms, np.int64)
        )
        received.append(np.full(n, received_ms, np.int64))
        orders.append(send_order(seq, n))

    def cat(parts):
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    return pa.table(
        {
            "project": _dictionary(cat(project_parts), list(project_ids)),
            "run_id": _dictionary(cat(run_parts), list(run_ids)),
            "kind": _dictionary(cat(kinds), ["user", "system"]),
            "key": _dictionary(cat(key_parts), list(key_ids)),
            "rank": pa.array(cat(ranks)),
            "step": pa.array(cat(steps)),
            "time_ms": pa.array(cat(times)),
            "value": pa.array(cat(values)),
            "received_ms": pa.array(cat(received)),
            "send_order": pa.array(cat(orders)),
        }
    )


def _format_number(x: float) -> str:
    if x.is_integer() and abs(x) < 1e16:  # False for NaN and inf
        return str(int(x))
    return repr(x)


def param_row(project: str, run_id: str, scope: str, key: str, value: types_pb2.Value, version: int) -> list:
    kind = value.WhichOneof("kind")
    if kind == "number":
        return [project, run_id, scope, key, "number", value.number, _format_number(value.number), version]
    if kind == "flag":
        return [
            project,
            run_id,
            scope,
            key,
            "flag",
            float(value.flag),
            "true" if value.flag else "false",
            version,
        ]
    if kind == "text":
        return [project, run_id, scope, key, "text", math.nan, value.text, version]
    return [project, run_id, scope, key, "json", math.nan, value.json, version]
