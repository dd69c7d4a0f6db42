"""Console lines on the server without a server process: ingest's ConsoleBatch checks, the store
writer's console_lines rows on in-process chDB (stored once after a replay, a crash between the
insert and the record, or as read back from Kafka), and GetConsole's statements (filters, search
as a bound value, tail, cursor) run on that table."""

from __future__ import annotations

import dataclasses

import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import query_pb2, types_pb2
from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.bus.base import Envelope
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument
from runstream_services.ingest.validation import validate_request
from runstream_services.query import sql_console
from runstream_services.query.console_reads import console_filter
from runstream_services.storage.clickhouse import connect
from runstream_services.storage.migrations import migrate
from runstream_services.writers.store import StoreWriter

OUT, ERR = types_pb2.CONSOLE_STREAM_STDOUT, types_pb2.CONSOLE_STREAM_STDERR


def batch(texts, rank=0, first=0, streams=None, t0=1_700_000_000_000, run_id="run-1") -> pb.ConsoleBatch:
    n = len(texts)
    return pb.ConsoleBatch(
        project="proj", run_id=run_id, rank=rank, texts=list(texts), streams=streams or [OUT] * n,
        line_numbers=list(range(first, first + n)), times_ms=[t0 + first + i for i in range(n)],
    )  # fmt: skip


def request(body: pb.ConsoleBatch, seq: int = 2, client_id: str = "client-a") -> pb.IngestRequest:
    return pb.IngestRequest(seq=seq, client_id=client_id, console=body)


# ---- ingest's checks ----------------------------------------------------------------------------


def test_a_valid_batch_is_accepted_as_console():
    accepted = validate_request(request(batch(["a", "b"])), ServerSettings())
    assert (accepted.kind, accepted.project, accepted.run_id) == ("console", "proj", "run-1")


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda b: b.ClearField("texts") or b.ClearField("streams") or b.ClearField("line_numbers")
         or b.ClearField("times_ms"), "no lines"),
        (lambda b: b.line_numbers.pop(), "2 texts but 1 line_numbers"),
        (lambda b: b.streams.__setitem__(0, 7), "stream 7 is not CONSOLE_STREAM_STDOUT"),
        (lambda b: b.times_ms.__setitem__(1, -5), "time -5 is negative"),
        (lambda b: b.texts.__setitem__(0, "x" * 70_000), "70000 characters; the limit is 65536"),
        (lambda b: setattr(b, "rank", 70_000), "rank 70000 is out of range"),
        (lambda b: setattr(b, "run_id", "bad run"), "run_id 'bad run' is not allowed"),
    ],
    ids=["empty", "columns", "stream", "time", "long", "rank", "run_id"],
)  # fmt: skip
def test_bad_batches_are_refused_with_the_fix(spoil, message):
    body = batch(["a", "b"])
    spoil(body)
    with pytest.raises(InvalidArgument, match=message):
        validate_request(request(body), ServerSettings())


# ---- the store writer -----------------------------------------------------------------------------


@pytest.fixture
def writer(chdb_dsn, database, tmp_path):
    client = connect(chdb_dsn)
    migrate(client, database)
    writer = StoreWriter(client, database, LocalArtifactStore(tmp_path / "artifacts"), ServerSettings())
    writer.write([Envelope.from_request(pb.IngestRequest(seq=1, client_id="client-a", run_start=pb.RunStart(
        project="proj", run_id="run-1", name="r")))])  # fmt: skip
    yield writer
    writer.close()


def rows(writer: StoreWriter, sql: str) -> list[tuple]:
    return writer.client.query(sql.replace("DB", writer.db)).result_rows


def test_lines_are_stored_once_after_a_replay_a_lost_record_and_from_kafka(writer):
    env = Envelope.from_request(request(batch(["epoch 1", "epoch 2"], streams=[OUT, ERR])))
    assert writer.write([env]).stored == 1
    assert writer.write([env]).duplicates == 1  # a resend: the writer knows it
    assert writer.flush()  # the record of stored seqs is written in the background
    fresh = StoreWriter(writer.client, writer.db, writer.artifact_store, ServerSettings())  # a restart
    assert fresh.write([dataclasses.replace(env, request=None)]).duplicates == 1  # as read from Kafka
    fresh.close()
    # a crash between the insert and the record: the same dedup token drops the second insert
    lost = Envelope.from_request(request(batch(["epoch 3"], first=2), seq=3))
    writer._insert_rows("console_lines", ("project", "run_id", "time_ms", "rank", "client_id", "line", "stream",
                        "text"), [["proj", "run-1", 1_700_000_000_002, 0, "client-a", 2, 1, "epoch 3"]],
                        f"{lost.idempotency_key}:console")  # fmt: skip
    assert writer.write([lost]).stored == 1
    assert rows(
        writer, "SELECT toString(stream), line, text, client_id FROM DB.console_lines ORDER BY line"
    ) == [
        ("stdout", 0, "epoch 1", "client-a"),
        ("stderr", 1, "epoch 2", "client-a"),
        ("stdout", 2, "epoch 3", "client-a"),
    ]


def read(writer: StoreWriter, limit: int = 100, **fields) -> list[tuple]:
    f = console_filter(query_pb2.GetConsoleRequest(project="proj", run_id="run-1", **fields), "proj")
    q = sql_console.console_lines(writer.db, f, limit)
    return writer.client.query(q.sql, parameters=q.params).result_rows


def test_reads_filter_search_tail_and_page_on_the_table(writer):
    writer.write([
        Envelope.from_request(request(batch(["r0 start", "r0 loss NaN", "r0 100%_done"], streams=[OUT, ERR, OUT]))),
        Envelope.from_request(request(batch(["r1 start", "r1 Loss nan"], rank=1), seq=3, client_id="client-b")),
    ])  # fmt: skip
    texts = lambda got: [r[4] for r in got]  # noqa: E731
    assert texts(read(writer)) == ["r0 start", "r1 start", "r0 loss NaN", "r1 Loss nan", "r0 100%_done"]
    assert texts(read(writer, search="LOSS NAN")) == ["r0 loss NaN", "r1 Loss nan"]
    assert texts(read(writer, search="%_")) == ["r0 100%_done"]  # literal text, not a pattern
    assert texts(read(writer, search="%")) == ["r0 100%_done"]
    assert texts(read(writer, ranks=[1])) == ["r1 start", "r1 Loss nan"]
    assert texts(read(writer, stream=ERR)) == ["r0 loss NaN"]
    assert texts(read(writer, tail=True, limit=2)) == ["r0 100%_done", "r1 Loss nan"]  # newest first
    first = read(writer, limit=2)
    rank, _, line, time_ms, _ = first[-1]
    after = read(writer, has_after=True, after_time_ms=time_ms, after_rank=rank, after_line=line)
    assert texts(first) + texts(after) == texts(read(writer))
    q = sql_console.console_lines(writer.db, console_filter(
        query_pb2.GetConsoleRequest(project="proj", run_id="run-1", search="'; DROP TABLE x --"), "proj"), 5)  # fmt: skip
    assert "DROP" not in q.sql and q.params["search"] == "'; DROP TABLE x --"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"run_id": ""}, "run_id is empty"),
        ({"stream": 9}, "stream 9 is unknown"),
        ({"search": "x" * 2_000}, "search is 2000 characters"),
        ({"ranks": [70_000]}, "ranks go from 0 to 65535"),
        ({"tail": True, "has_after": True}, "not both"),
    ],
)
def test_bad_console_reads_are_refused_with_the_fix(fields, message):
    request = query_pb2.GetConsoleRequest(project="proj", **{"run_id": "run-1", **fields})
    with pytest.raises(InvalidArgument, match=message):
        console_filter(request, "proj")
