"""Writes accepted envelopes into ClickHouse, exactly once.

Exactly-once, in three layers:
1. envelopes whose (client_id, seq) is in `ingested_requests` are skipped (cached per client);
2. every insert carries an `insert_deduplication_token` derived from the caller's token or the
   envelope's idempotency key plus a per-table suffix, so re-inserting the same block after a
   crash is dropped by ClickHouse (the metric-summary view is deduplicated with it);
3. the ingested keys are recorded LAST, after every other insert succeeded — in the background,
   a moment after the ack (writers/bookkeeping.py says why that loses nothing).
Without a caller token, metric points are inserted one envelope per block, so a replay after a
crash re-forms exactly the same blocks. With a token, the caller guarantees that a replay of that
token carries the same envelopes (the Kafka writer records its block boundaries for that).
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError

from runstream.v1 import ingest_pb2
from runstream_services.artifacts.base import ArtifactStore
from runstream_services.bus.base import Envelope
from runstream_services.config import ServerSettings
from runstream_services.metrics_http import Metrics
from runstream_services.writers import rows
from runstream_services.writers.arrow_insert import ArrowInserter
from runstream_services.writers.bookkeeping import BackgroundRows
from runstream_services.writers.rows import TERMINAL_STATES, RunRow

log = logging.getLogger("runstream.writer")

HEARTBEAT_EVERY_MS = 30_000
MAX_CACHED_CLIENTS = 4096  # SDK processes whose stored seqs are kept in memory
INGESTED_COLUMNS = ("client_id", "seq", "run_id", "time_ms")
AUDIT_COLUMNS = ("time_ms", "project", "actor", "action", "target", "detail")


@dataclass
class WriteResult:
    """Outcome of one write() call."""

    stored: int = 0  # envelopes written by this call
    duplicates: int = 0  # envelopes skipped: already stored before
    points: int = 0  # metric points inserted
    refused: dict[str, str] = field(default_factory=dict)  # idempotency key -> why (undecodable payload)


@dataclass
class _Pending:
    """Rows collected from the envelopes of one write call, inserted together."""

    runs: dict[tuple[str, str], RunRow] = field(default_factory=dict)
    params: list[list] = field(default_factory=list)
    artifacts: list[list] = field(default_factory=list)
    audit: list[list] = field(default_factory=list)
    metrics: list[tuple[Envelope, ingest_pb2.MetricBatch]] = field(default_factory=list)


def artifact_uri(store: ArtifactStore, sha256: str) -> str:
    uri_for = getattr(store, "uri_for", None)
    return uri_for(sha256) if uri_for else f"{store.kind}:sha256/{sha256}"


class StoreWriter:
    """Thread-safe: several threads may call write() at once (metric inserts run in parallel;
    run rows are read-modify-written under a lock)."""

    def __init__(
        self,
        client: Any,
        database: str,
        artifact_store: ArtifactStore,
        settings: ServerSettings,
        *,
        metrics: Metrics | None = None,
        insert_handles: int = 2,
    ):
        self.client = client
        self.db = database
        self.artifact_store = artifact_store
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._lock = threading.Lock()  # idempotency state
        # client_id -> seqs known stored; least recently seen clients are dropped past
        # MAX_CACHED_CLIENTS and reloaded from ingested_requests when they come back.
        self._done: OrderedDict[str, set[int]] = OrderedDict()
        self._claimed: dict[str, threading.Event] = {}  # idempotency key -> set when its writer ends
        self._meta_lock = threading.Lock()  # run rows and artifact versions (read-modify-write)
        self._runs: dict[tuple[str, str], RunRow] = {}
        self._artifact_versions: dict[tuple[str, str], dict[str, int]] = {}
        self._last_version = 0
        self._arrow = ArrowInserter(client, handles=insert_handles)
        self._bookkeeping = BackgroundRows(
            lambda table, columns, data: self._insert_rows(table, columns, data, None),
            {"ingested_requests": INGESTED_COLUMNS, "audit_log": AUDIT_COLUMNS},
        )

    # ---- public -------------------------------------------------------------------------------

    def write(self, envelopes: list[Envelope], token: str | None = None) -> WriteResult:
        """Stores the envelopes (those not stored before) and returns once every insert is done.
        Raises on a storage failure; nothing of this call is then recorded as ingested."""
        result = WriteResult()
        pending = list(envelopes)
        round_no = 0
        while pending:
            mine, waits, duplicates = self._claim(pending)
            result.duplicates += duplicates
            if mine:
                round_token = token if token is None or round_no == 0 else f"{token}#r{round_no}"
                try:
                    self._store(mine, round_token, result)
                finally:
                    self._release(mine)
            for event in {id(e): e for _, e in waits}.values():
                event.wait()
            pending = [env for env, _ in waits]
            round_no += 1
        self.metrics.inc("runstream_writer_envelopes_total", result.stored, outcome="stored")
        self.metrics.inc("runstream_writer_envelopes_total", result.duplicates, outcome="duplicate")
        return result

    def flush(self) -> None:
        """Writes the pending ingested_requests and audit_log rows now."""
        self._bookkeeping.flush()

    def close(self) -> None:
        """Writes the pending bookkeeping rows and releases the writer's own connection handles
        (the shared client stays open)."""
        self._bookkeeping.close()
        self._arrow.close()

    def run_state(self, project: str, run_id: str) -> str | None:
        """'running', 'finished', ... for a known run; None when no such run is stored."""
        row = self._get_run(project, run_id)
        return row.state if row else None

    def mark_crashed(self, stale_after_ms: int, now_ms: int | None = None) -> list[tuple[str, str]]:
        """Marks 'running' runs whose last heartbeat is older than `stale_after_ms` as crashed: their
        process died without finishing. A later heartbeat or resume makes them running again.
        Returns the (project, run_id) pairs marked."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        cutoff = now_ms - stale_after_ms
        stale = self.client.query(
            f"SELECT project, run_id FROM {self.db}.runs FINAL WHERE state = 'running' AND heartbeat_ms < %(t)s",
            parameters={"t": cutoff},
        ).result_rows
        pending, marked = _Pending(), []
        with self._meta_lock:
            for project, run_id in stale:
                row = self._get_run_locked(project, run_id)
                if row is None or row.state != "running" or row.heartbeat_ms >= cutoff:
                    continue  # heard from since the query
                row.state, row.end_ms = "crashed", row.heartbeat_ms
                self._stage_run(row, pending)
                detail = json.dumps({"last_heartbeat_ms": row.heartbeat_ms})
                pending.audit.append([now_ms, project, "server", "run.crashed", run_id, detail])
                marked.append((project, run_id))
        if marked:
            self._insert_rows("runs", rows.RUN_COLUMNS, [r.values() for r in pending.runs.values()], None)
            self._bookkeeping.add("audit_log", pending.audit)
        return marked

    def is_stored(self, client_id: str, seq: int) -> bool:
        """True when the request (client_id, seq) was stored before: a replay."""
        return seq in self._seen_seqs(client_id)

    # ---- idempotency --------------------------------------------------------------------------

    def _seen_seqs(self, client_id: str) -> set[int]:
        with self._lock:
            seqs = self._done.get(client_id)
            if seqs is not None:
                self._done.move_to_end(client_id)
                return seqs
        rows_ = self.client.query(
            f"SELECT seq FROM {self.db}.ingested_requests WHERE client_id = %(c)s",
            parameters={"c": client_id},
        ).result_rows
        not_yet_written = [r[1] for r in self._bookkeeping.pending("ingested_requests") if r[0] == client_id]
        with self._lock:
            seqs = self._done.setdefault(client_id, set())
            seqs.update(r[0] for r in rows_)
            seqs.update(not_yet_written)
            while len(self._done) > MAX_CACHED_CLIENTS:
                self._done.popitem(last=False)
            return seqs

    def _claim(self, envelopes: list[Envelope]):
        seen = {client_id: self._seen_seqs(client_id) for client_id in {e.client_id for e in envelopes}}
        mine: list[Envelope] = []
        waits: list[tuple[Envelope, threading.Event]] = []
        duplicates = 0
        with self._lock:
            for env in envelopes:
                key = env.idempotency_key
                if env.seq in seen[env.client_id]:
                    duplicates += 1
                elif key in self._claimed:
                    if any(m.idempotency_key == key for m in mine):
                        duplicates += 1  # the same request twice in one call
                    else:
                        waits.append((env, self._claimed[key]))
                else:
                    self._claimed[key] = threading.Event()
                    mine.append(env)
        return mine, waits, duplicates

    def _release(self, envelopes: list[Envelope]) -> None:
        with self._lock:
            for env in envelopes:
                event = self._claimed.pop(env.idempotency_key, None)
                if event is not None:
                    event.set()

    # ---- storing ------------------------------------------------------------------------------

    def _store(self, envelopes: list[Envelope], token: str | None, result: WriteResult) -> None:
        decoded: list[tuple[Envelope, ingest_pb2.IngestRequest]] = []
        for env in envelopes:
            try:
                decoded.append((env, ingest_pb2.IngestRequest.FromString(env.payload)))
            except DecodeError as exc:
                result.refused[env.idempotency_key] = f"payload is not a runstream.v1.IngestRequest: {exc}"
                log.error("envelope %s refused: undecodable payload", env.idempotency_key)
        if not decoded:
            return
        base = token or decoded[0][0].idempotency_key + (f"+{len(decoded)}" if len(decoded) > 1 else "")
        pending = _Pending()
        touched = self._collect(decoded, pending)
        try:
            self._insert_rows("params", rows.PARAM_COLUMNS, pending.params, f"{base}:params")
            self._insert_rows("artifacts", rows.ARTIFACT_COLUMNS, pending.artifacts, f"{base}:artifacts")
            run_rows = [r.values() for r in pending.runs.values()]
            self._insert_rows("runs", rows.RUN_COLUMNS, run_rows, f"{base}:runs")
            result.points += self._insert_metrics(pending.metrics, token)
            self._bookkeeping.add("audit_log", pending.audit)
            self._bookkeeping.add(
                "ingested_requests", [[e.client_id, e.seq, e.run_id, e.received_ms] for e, _ in decoded]
            )
        except BaseException:
            with self._meta_lock:  # the cache may now be ahead of the table: reload on next use
                for key in touched:
                    self._runs.pop(key, None)
                for project, name in {(a[0], a[2]) for a in pending.artifacts}:
                    self._artifact_versions.pop((project, name), None)
            raise
        with self._lock:
            for env, _ in decoded:
                seqs = self._done.get(env.client_id)
                if seqs is not None:  # else evicted: reloaded from the table next time
                    seqs.add(env.seq)
        result.stored += len(decoded)
        now_ms = time.time() * 1000
        self.metrics.set(
            "runstream_writer_lag_seconds", max(0.0, (now_ms - decoded[-1][0].received_ms) / 1000)
        )

    def _insert_rows(self, table: str, columns, data: list[list], token: str | None) -> None:
        if not data:
            return
        started = time.perf_counter()
        self.client.insert(
            f"{self.db}.{table}",
            data,
            column_names=list(columns),
            settings={"insert_deduplication_token": token} if token else None,
        )
        self.metrics.inc("runstream_writer_insert_seconds_total", time.perf_counter() - started, table=table)

    def _insert_metrics(self, items: list[tuple[Envelope, ingest_pb2.MetricBatch]], token: str | None) -> int:
        if not items:
            return 0
        if token is None:  # one block per envelope: a replay re-forms the same blocks
            groups = [([item], f"{item[0].idempotency_key}:metrics") for item in items]
        else:
            groups, group, size = [], [], 0
            for item in items:
                group.append(item)
                size += len(item[1].steps) // 8
                if size >= self.settings.writer_max_block_points:
                    groups.append((group, f"{token}:metrics:{len(groups)}"))
                    group, size = [], 0
            if group:
                groups.append((group, f"{token}:metrics:{len(groups)}" if groups else f"{token}:metrics"))
        points = 0
        for group, group_token in groups:
            table = rows.metrics_table([(batch, env.received_ms) for env, batch in group])
            started = time.perf_counter()
            self._arrow.insert(f"{self.db}.metrics", table, group_token)
            elapsed = time.perf_counter() - started
            self.metrics.inc("runstream_writer_insert_seconds_total", elapsed, table="metrics")
            points += table.num_rows
        self.metrics.inc("runstream_writer_points_total", points)
        return points

    # ---- turning requests into rows -----------------------------------------------------------

    def _collect(self, decoded, pending: _Pending) -> set[tuple[str, str]]:
        touched: set[tuple[str, str]] = set()
        with self._meta_lock:
            for env, req in decoded:
                body = req.WhichOneof("body")
                msg = getattr(req, body)
                key = (msg.project, msg.run_id)
                if body == "metrics":
                    pending.metrics.append((env, msg))
                    row = self._get_run_locked(*key)
                    if row is not None and env.received_ms - row.heartbeat_ms > HEARTBEAT_EVERY_MS:
                        row.heartbeat_ms = env.received_ms
                        self._stage_run(row, pending)
                        touched.add(key)
                elif body == "artifact":
                    pending.artifacts.append(self._artifact_row(env, msg))
                else:
                    getattr(self, f"_apply_{body}")(env, msg, pending)
                    touched.add(key)
        return touched

    def _version(self) -> int:
        self._last_version = max(time.time_ns(), self._last_version + 1)
        return self._last_version

    def _get_run(self, project: str, run_id: str) -> RunRow | None:
        with self._meta_lock:
            return self._get_run_locked(project, run_id)

    def _get_run_locked(self, project: str, run_id: str) -> RunRow | None:
        row = self._runs.get((project, run_id))
        if row is None:
            cols = ", ".join(f"`{c}`" for c in rows.RUN_COLUMNS)
            found = self.client.query(
                f"SELECT {cols} FROM {self.db}.runs FINAL WHERE project = %(p)s AND run_id = %(r)s",
                parameters={"p": project, "r": run_id},
            ).result_rows
            if found:
                row = self._runs[(project, run_id)] = RunRow.from_db(found[0])
        return row

    def _stage_run(self, row: RunRow, pending: _Pending) -> None:
        row.version = self._version()
        pending.runs[(row.project, row.run_id)] = row

    def _stage_params(self, row: RunRow, scope: str, values, pending: _Pending) -> None:
        for key, value in values.items():
            pending.params.append(rows.param_row(row.project, row.run_id, scope, key, value, self._version()))

    def _audit(self, env: Envelope, row: RunRow, action: str, detail: dict, pending: _Pending) -> None:
        actor = f"client:{env.client_id}"
        pending.audit.append([env.received_ms, row.project, actor, action, row.run_id, json.dumps(detail)])

    def _apply_run_start(self, env: Envelope, msg: ingest_pb2.RunStart, pending: _Pending) -> None:
        row = self._get_run_locked(msg.project, msg.run_id)
        ctx = msg.context
        created = row is None
        if created:
            row = self._runs[(msg.project, msg.run_id)] = RunRow(
                project=msg.project, run_id=msg.run_id, start_ms=msg.start_ms or env.received_ms
            )
        lead = created or msg.rank == 0  # rank 0 describes the run; other ranks only fill gaps
        for attr, value in (
            ("name", msg.name), ("group", msg.group), ("job_type", msg.job_type), ("notes", msg.notes),
            ("user", ctx.user), ("host", ctx.host), ("git_commit", ctx.git_commit),
        ):  # fmt: skip
            if value and (lead or not getattr(row, attr)):
                setattr(row, attr, value)
        if ctx.ByteSize() and (lead or row.context in ("", "{}")):
            row.context = rows.context_json(ctx)
            row.git_dirty = int(ctx.git_dirty)
        if msg.start_ms and (not row.start_ms or msg.start_ms < row.start_ms):
            row.start_ms = msg.start_ms
        row.tags.update(msg.tags)
        row.heartbeat_ms = max(row.heartbeat_ms, env.received_ms)
        if msg.resume and row.state in TERMINAL_STATES:
            row.state, row.end_ms = "running", 0
            self._audit(env, row, "run.resumed", {"rank": msg.rank}, pending)
        if created:
            self._audit(env, row, "run.created", {"name": row.name, "rank": msg.rank}, pending)
        self._stage_params(row, "config", msg.config, pending)
        self._stage_run(row, pending)

    def _apply_run_update(self, env: Envelope, msg: ingest_pb2.RunUpdate, pending: _Pending) -> None:
        row = self._get_run_locked(msg.project, msg.run_id)
        if row is None:  # out of order across processes: keep what we know
            row = self._runs[(msg.project, msg.run_id)] = RunRow(
                project=msg.project, run_id=msg.run_id, start_ms=env.received_ms
            )
        row.tags.update(msg.tags)
        for tag in msg.remove_tags:
            row.tags.pop(tag, None)
        if msg.has_notes:
            row.notes = msg.notes
        if msg.name:
            row.name = msg.name
        if msg.datasets:
            row.datasets = rows.append_datasets(row.datasets, msg.datasets)
        row.heartbeat_ms = max(row.heartbeat_ms, msg.heartbeat_ms, env.received_ms)
        if row.state == "crashed":  # declared dead too early: the process is still talking
            row.state, row.end_ms = "running", 0
            self._audit(env, row, "run.revived", {}, pending)
        self._stage_params(row, "config", msg.config, pending)
        self._stage_params(row, "summary", msg.summary, pending)
        self._stage_run(row, pending)

    def _apply_run_finish(self, env: Envelope, msg: ingest_pb2.RunFinish, pending: _Pending) -> None:
        row = self._get_run_locked(msg.project, msg.run_id)
        if row is None:
            row = self._runs[(msg.project, msg.run_id)] = RunRow(
                project=msg.project, run_id=msg.run_id, start_ms=env.received_ms
            )
        row.heartbeat_ms = max(row.heartbeat_ms, env.received_ms)
        if msg.rank == 0:  # a run is finished when rank 0 finishes it
            row.state = rows.STATE_NAMES[msg.state]
            row.end_ms = msg.end_ms or env.received_ms
            self._audit(env, row, "run.finished", {"state": row.state}, pending)
        self._stage_run(row, pending)

    def _artifact_row(self, env: Envelope, msg: ingest_pb2.ArtifactEvent) -> list:
        sha = msg.sha256.lower()
        if msg.inline_data or msg.size == 0:
            uri, present = self.artifact_store.put(sha, io.BytesIO(msg.inline_data), msg.size)
            if not present:
                self.metrics.inc("runstream_artifact_bytes_total", msg.size)
        else:
            uri = artifact_uri(self.artifact_store, sha)
        tag = msg.version_tag or env.idempotency_key  # untagged: each event is its own version
        versions = self._artifact_versions.get((msg.project, msg.name))
        if versions is None:
            found = self.client.query(
                f"SELECT version_tag, max(version) FROM {self.db}.artifacts "
                "WHERE project = %(p)s AND name = %(n)s GROUP BY version_tag",
                parameters={"p": msg.project, "n": msg.name},
            ).result_rows
            versions = self._artifact_versions[(msg.project, msg.name)] = {t: int(v) for t, v in found}
        if tag not in versions:
            versions[tag] = max(versions.values(), default=0) + 1
        return [
            msg.project, msg.run_id, msg.name, msg.path, msg.type, versions[tag], tag, sha, msg.size, uri,
            env.received_ms,
        ]  # fmt: skip
