"""StoreWriter against the in-process chDB engine: rows per table, exactly-once by idempotency key
and by dedup token, metric summaries from the materialized view, artifact versions."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import threading
import time

import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.bus.base import Envelope
from runstream_services.config import ServerSettings
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
from runstream_services.writers.store import StoreWriter


@pytest.fixture
def writer(chdb_dsn, database, tmp_path):
    client = connect(chdb_dsn)
    migrate(client, database)
    writer = StoreWriter(client, database, LocalArtifactStore(tmp_path / "artifacts"), ServerSettings())
    yield writer
    writer.close()


def envelope(seq: int, client_id: str = "client-a", **body) -> Envelope:
    """As ingest builds it (parsed request attached); received_ms is now: ingested_requests keeps
    rows 30 days (TTL)."""
    return Envelope.from_request(pb.IngestRequest(seq=seq, client_id=client_id, **body))


def from_kafka(env: Envelope) -> Envelope:
    """The same envelope as the Kafka writer reads it back: no parsed request."""
    return dataclasses.replace(env, request=None)


def metrics(
    n: int, start: int = 0, keys=("loss", "acc"), run_id="run-1", kind=types_pb2.METRIC_KIND_USER, values=None
):
    steps = np.arange(start, start + n, dtype="<i8") // len(keys)
    vals = np.arange(start, start + n, dtype="<f8") if values is None else np.asarray(values, "<f8")
    return pb.MetricBatch(
        project="proj",
        run_id=run_id,
        keys=list(keys),
        key_index=(np.arange(start, start + n) % len(keys)).astype("<u2").tobytes(),
        steps=steps.tobytes(),
        values=vals.tobytes(),
        times_ms=np.full(n, 1_700_000_000_000, "<i8").tobytes(),
        kind=kind,
    )


def start(run_id="run-1", **kw):
    return pb.RunStart(project="proj", run_id=run_id, name="first", **kw)


def q(writer: StoreWriter, sql: str):
    return writer.client.query(sql.replace("DB", writer.db)).result_rows


def test_run_lifecycle_params_and_audit(writer):
    config = {"lr": types_pb2.Value(number=0.001), "opt": types_pb2.Value(text="adam"),
              "amp": types_pb2.Value(flag=True), "layers": types_pb2.Value(json="[1, 2]")}  # fmt: skip
    ctx = types_pb2.RunContext(git_commit="abc", git_dirty=True, host="node1", user="ann")
    writer.write([envelope(1, run_start=start(config=config, tags={"team": "x"}, context=ctx))])
    update = pb.RunUpdate(project="proj", run_id="run-1", summary={"best": types_pb2.Value(number=0.9)},
                          tags={"stage": "b"}, remove_tags=["team"], has_notes=True, notes="hello")  # fmt: skip
    writer.write([envelope(2, run_update=update)])
    finish = pb.RunFinish(project="proj", run_id="run-1", state=types_pb2.RUN_STATE_FAILED, end_ms=5)
    writer.write([envelope(3, run_finish=finish)])

    rows = q(
        writer,
        "SELECT name, state, end_ms, tags, notes, git_commit, git_dirty, host, user FROM DB.runs FINAL",
    )
    assert rows == [("first", "failed", 5, {"stage": "b"}, "hello", "abc", 1, "node1", "ann")]
    params = q(writer, "SELECT scope, key, kind, num, str FROM DB.params FINAL ORDER BY scope, key")
    assert [(s, k, kind, s2) for s, k, kind, _, s2 in params] == [
        ("config", "amp", "flag", "true"),
        ("config", "layers", "json", "[1, 2]"),
        ("config", "lr", "number", "0.001"),
        ("config", "opt", "text", "adam"),
        ("summary", "best", "number", "0.9"),
    ]
    assert params[2][3] == 0.001 and math.isnan(params[3][3])
    writer.flush()  # audit rows are written in the background
    actions = q(writer, "SELECT action FROM DB.audit_log ORDER BY action")
    assert actions == [("run.created",), ("run.finished",)]
    assert writer.run_state("proj", "run-1") == "failed"
    assert writer.run_state("proj", "nope") is None


def test_metrics_summaries_and_exactly_once(writer):
    writer.write([envelope(1, run_start=start())])
    values = [1.0, 5.0, math.nan, -2.0, math.inf, 3.0]
    assert writer._arrow.mode == "chdb-python"  # the fast path is the one under test here
    first = envelope(2, metrics=metrics(6, keys=["loss"], values=values))
    assert writer.write([first]).points == 6
    again = writer.write([first, first])  # same call, and a replay
    assert (again.stored, again.duplicates, again.points) == (0, 2, 0)
    # A fresh writer (e.g. after a restart) finds the key in client_seqs.
    writer.flush()
    fresh = StoreWriter(writer.client, writer.db, writer.artifact_store, writer.settings)
    assert fresh.write([first]).duplicates == 1
    assert q(writer, "SELECT count() FROM DB.metrics") == [(6,)]
    summary = q(writer, "SELECT argMaxMerge(last), min(min), max(max), sum(count), max(last_step) "
                        "FROM DB.metric_summaries WHERE key = 'loss'")  # fmt: skip
    assert summary == [(3.0, -2.0, 5.0, 6, 5)]
    stored = [v for (v,) in q(writer, "SELECT value FROM DB.metrics ORDER BY step")]
    assert stored[:2] == [1.0, 5.0] and math.isnan(stored[2]) and stored[4] == math.inf


def test_same_token_after_a_lost_ack_is_stored_once(writer):
    """A crash between the metric insert and the ingested record: the replay's insert carries the
    same dedup token, so neither the points nor the summaries are counted twice."""
    writer.write([envelope(1, run_start=start())])
    env = envelope(2, metrics=metrics(100))
    writer._insert_metrics([(env, env.request.metrics)], None)  # the lost attempt
    assert writer.write([env]).stored == 1
    assert q(writer, "SELECT count() FROM DB.metrics") == [(100,)]
    assert q(writer, "SELECT sum(count) FROM DB.metric_summaries") == [(100,)]


def test_caller_token_groups_envelopes_into_one_block(writer):
    writer.write([envelope(1, run_start=start())])
    envs = [envelope(10 + i, metrics=metrics(50, start=50 * i)) for i in range(4)]
    assert writer.write(envs, token="topic:0:10-13").points == 200
    writer.flush()
    fresh = StoreWriter(writer.client, writer.db, writer.artifact_store, writer.settings)
    fresh.client.command(f"TRUNCATE TABLE {writer.db}.client_seqs")  # as if the record was lost
    assert fresh.write(envs, token="topic:0:10-13").stored == 4
    assert q(writer, "SELECT count(), uniqExact(key, step) FROM DB.metrics") == [(200, 200)]
    assert q(writer, "SELECT sum(count) FROM DB.metric_summaries") == [(200,)]


def test_system_metrics_and_ranks(writer):
    writer.write([envelope(1, run_start=start())])
    writer.write([envelope(2, metrics=metrics(4, keys=["cpu"], kind=types_pb2.METRIC_KIND_SYSTEM))])
    batch = metrics(4, keys=["loss"])
    batch.rank = 3
    writer.write([envelope(3, metrics=batch)])
    rows = q(writer, "SELECT kind, key, rank, count() FROM DB.metrics GROUP BY kind, key, rank ORDER BY kind")
    assert rows == [("user", "loss", 3, 4), ("system", "cpu", 0, 4)]


def test_concurrent_writes_of_the_same_request_store_it_once(writer):
    writer.write([envelope(1, run_start=start())])
    env = envelope(2, metrics=metrics(1000))
    results = []
    threads = [threading.Thread(target=lambda: results.append(writer.write([env]))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.stored for r in results) == 1 and sum(r.duplicates for r in results) == 3
    assert q(writer, "SELECT count() FROM DB.metrics") == [(1000,)]


def test_artifact_versions_per_tag_and_inline_bytes(writer):
    writer.write([envelope(1, run_start=start())])

    def event(path, data, tag):
        return pb.ArtifactEvent(project="proj", run_id="run-1", name="model", type="model", path=path,
                                sha256=hashlib.sha256(data).hexdigest(), size=len(data), inline_data=data,
                                version_tag=tag)  # fmt: skip

    writer.write(
        [
            envelope(2, artifact=event("a.bin", b"one", "t1")),
            envelope(3, artifact=event("b.bin", b"two", "t1")),
        ]
    )
    writer.write([envelope(4, artifact=event("a.bin", b"three", "t2"))])
    rows = q(writer, "SELECT path, version, size FROM DB.artifacts FINAL ORDER BY version, path")
    assert rows == [("a.bin", 1, 3), ("b.bin", 1, 3), ("a.bin", 2, 5)]
    assert b"".join(writer.artifact_store.open("proj", hashlib.sha256(b"three").hexdigest())) == b"three"


def test_undecodable_payload_is_refused_not_stored(writer):
    bad = Envelope("client-a", 9, "metrics", "proj", "run-1", b"\xff\xff\xff", 1)
    result = writer.write([bad])
    assert result.stored == 0 and "client-a:9" in result.refused
    mislabeled = dataclasses.replace(from_kafka(envelope(10, run_start=start())), kind="metrics")
    result = writer.write([mislabeled])
    assert result.stored == 0 and "not the metrics body" in result.refused["client-a:10"]
    assert q(writer, "SELECT count() FROM DB.client_seqs") == [(0,)]


def test_envelopes_read_back_from_kafka_are_parsed_by_the_writer(writer):
    """Without ingest's parse attached (the Kafka path) the writer parses the payload itself and
    stores the same rows."""
    assert writer.write([from_kafka(envelope(1, run_start=start()))]).stored == 1
    assert writer.write([from_kafka(envelope(2, metrics=metrics(10)))]).points == 10
    finish = pb.RunFinish(project="proj", run_id="run-1", state=types_pb2.RUN_STATE_FINISHED)
    writer.write([from_kafka(envelope(3, run_finish=finish))])
    assert writer.run_state("proj", "run-1") == "finished"
    assert q(writer, "SELECT count() FROM DB.metrics") == [(10,)]


def test_clients_dropped_from_the_cache_are_reloaded_from_the_table(writer, monkeypatch):
    import runstream_services.writers.store as store_module

    monkeypatch.setattr(store_module, "MAX_CACHED_CLIENTS", 2)
    writer.write([envelope(1, run_start=start())])
    batches = {c: envelope(5, client_id=c, metrics=metrics(10, start=10 * i)) for i, c in enumerate("xyz")}
    for env in batches.values():
        assert writer.write([env]).stored == 1
    assert len(writer._done) == 2 and "x" not in writer._done
    assert writer.write([batches["x"]]).duplicates == 1
    assert q(writer, "SELECT count() FROM DB.metrics") == [(30,)]


def test_metrics_table_dictionaries_are_unique_across_runs_and_projects():
    from runstream_services.writers.rows import metrics_table

    def batch(project, run_id, key):
        return pb.MetricBatch(
            project=project,
            run_id=run_id,
            keys=[key],
            steps=np.arange(3, dtype="<i8").tobytes(),
            values=np.ones(3, "<f8").tobytes(),
        )

    pairs = [(batch("p", "a", "loss"), 1, 1), (batch("p", "b", "loss"), 1, 2), (batch("q", "a", "acc"), 1, 3)]
    table = metrics_table(pairs)
    assert table.column("project").chunk(0).dictionary.to_pylist() == ["p", "q"]
    assert table.column("run_id").chunk(0).dictionary.to_pylist() == ["a", "b"]
    assert table.column("project").to_pylist() == ["p"] * 6 + ["q"] * 3
    assert table.column("run_id").to_pylist() == ["a"] * 3 + ["b"] * 3 + ["a"] * 3
    assert table.column("key").to_pylist() == ["loss"] * 6 + ["acc"] * 3


def test_silent_runs_are_marked_crashed_and_revived_by_a_heartbeat(writer):
    writer.write([envelope(1, run_start=start("quiet")), envelope(2, run_start=start("talking"))])
    now_ms = int(time.time() * 1000)
    assert writer.mark_crashed(stale_after_ms=60_000, now_ms=now_ms) == []  # both heard from just now
    writer.write(
        [envelope(3, run_update=pb.RunUpdate(project="proj", run_id="talking", heartbeat_ms=now_ms + 50_000))]
    )
    marked = writer.mark_crashed(stale_after_ms=30_000, now_ms=now_ms + 60_000)
    assert marked == [("proj", "quiet")]
    assert writer.run_state("proj", "quiet") == "crashed" and writer.run_state("proj", "talking") == "running"
    assert q(writer, "SELECT state FROM DB.runs FINAL WHERE run_id = 'quiet'") == [("crashed",)]
    writer.flush()
    assert q(writer, "SELECT action, target FROM DB.audit_log WHERE action = 'run.crashed'") == [
        ("run.crashed", "quiet")
    ]
    writer.write([envelope(4, run_update=pb.RunUpdate(project="proj", run_id="quiet", heartbeat_ms=now_ms))])
    assert writer.run_state("proj", "quiet") == "running"
    assert q(writer, "SELECT state, end_ms FROM DB.runs FINAL WHERE run_id = 'quiet'") == [("running", 0)]
    finish = pb.RunFinish(project="proj", run_id="talking", state=types_pb2.RUN_STATE_FINISHED)
    writer.write([envelope(5, run_finish=finish)])
    assert writer.mark_crashed(stale_after_ms=0, now_ms=now_ms + 10**9) == [
        ("proj", "quiet")
    ]  # finished stays


def test_bookkeeping_rows_follow_in_the_background_and_count_before_they_land(writer):
    """The stored record is written after the ack; until then the writer still knows the key.
    One row per client and run holds its stored seqs as ranges, not one row per request."""
    writer.write([envelope(1, run_start=start())])
    env = envelope(2, metrics=metrics(10))
    writer.write([env])
    fresh = StoreWriter(writer.client, writer.db, writer.artifact_store, writer.settings)
    fresh._bookkeeping.add("client_seqs", writer._bookkeeping.pending("client_seqs"))
    assert fresh.write([env]).duplicates == 1  # known from rows not yet written
    deadline = time.monotonic() + 10
    final = "SELECT client_id, run_id, ranges FROM DB.client_seqs FINAL"
    audit = "SELECT action FROM DB.audit_log"

    def landed() -> bool:  # one flush inserts client_seqs, then audit_log: wait for both
        return q(writer, final) == [("client-a", "run-1", [(1, 2)])] and q(writer, audit) == [
            ("run.created",)
        ]

    while not landed() and time.monotonic() < deadline:
        time.sleep(0.05)  # the background thread writes them within its interval
    assert q(writer, final) == [("client-a", "run-1", [(1, 2)])]
    assert q(writer, audit) == [("run.created",)]


def test_stored_seqs_are_ranges_per_client_and_run_and_never_expire(writer):
    """The dedup horizon is the database's life: a spool synced months later is still a replay.
    Requests stored before migration 0005 (one ingested_requests row each) still count."""
    writer.write([envelope(1, run_start=start())])
    writer.write(
        [envelope(s, metrics=metrics(2, start=2 * s)) for s in range(2, 40)]
        + [envelope(45, metrics=metrics(2, start=90))]
    )
    writer.flush()
    assert q(writer, "SELECT ranges FROM DB.client_seqs FINAL") == [([(1, 39), (45, 45)],)]
    old_ms = int(time.time() * 1000) - 400 * 86_400_000  # the row as if written 400 days ago
    [(client_id, run_id, ranges)] = q(writer, "SELECT client_id, run_id, ranges FROM DB.client_seqs FINAL")
    writer.client.command(f"TRUNCATE TABLE {writer.db}.client_seqs")
    writer.client.insert(f"{writer.db}.client_seqs", [[client_id, run_id, ranges, old_ms]],
                         column_names=["client_id", "run_id", "ranges", "updated_ms"])  # fmt: skip
    writer.client.command(f"OPTIMIZE TABLE {writer.db}.client_seqs FINAL")  # merges run: nothing expires
    now_ms = int(time.time() * 1000)  # (that table's rows expire after 30 days: its TTL)
    writer.client.insert(f"{writer.db}.ingested_requests", [["old-client", 7, "run-1", now_ms]],
                         column_names=["client_id", "seq", "run_id", "time_ms"])  # fmt: skip
    fresh = StoreWriter(writer.client, writer.db, writer.artifact_store, writer.settings)
    late = fresh.write(
        [envelope(20, metrics=metrics(2, start=40)), envelope(7, client_id="old-client", metrics=metrics(2))]
    )
    assert (late.stored, late.duplicates) == (0, 2)
    assert fresh.write([envelope(40, metrics=metrics(2, start=80))]).stored == 1  # a gap is not a replay
    fresh.close()


def test_one_client_logging_several_runs_keeps_a_record_per_run(writer):
    """The pending record is replaced per (client, run), never per client alone: a process that
    logs many runs (a sweep in one process) must keep every run's row."""
    for i, run_id in enumerate(("run-a", "run-b", "run-c")):
        writer.write([envelope(1 + 2 * i, run_start=start(run_id=run_id))])
        writer.write([envelope(2 + 2 * i, metrics=metrics(4, run_id=run_id))])
    writer.flush()
    rows = q(writer, "SELECT run_id, ranges FROM DB.client_seqs FINAL ORDER BY run_id")
    assert rows == [("run-a", [(1, 2)]), ("run-b", [(3, 4)]), ("run-c", [(5, 6)])]
    fresh = StoreWriter(writer.client, writer.db, writer.artifact_store, writer.settings)
    assert (
        fresh.write([envelope(s, metrics=metrics(4, run_id="run-a")) for s in (1, 2, 3, 4, 5, 6)]).duplicates
        == 6
    )
    fresh.close()
