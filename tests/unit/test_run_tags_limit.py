"""Tags per run are bounded (issue 10, item 10): a run event that would pass MAX_TAGS_PER_RUN is
refused with nothing merged, by the run's rules (run_state) and by the writer as a per-request
refusal, while the other requests of the same write are stored."""

import pytest

from runstream.v1 import ingest_pb2
from runstream_services import run_state
from runstream_services.bus.base import Envelope
from runstream_services.errors import InvalidArgument
from runstream_services.run_state import MAX_TAGS_PER_RUN, RunRow


def _update(tags=None, remove=()):
    return ingest_pb2.RunUpdate(project="p", run_id="r", tags=tags or {}, remove_tags=list(remove))


def test_merge_refuses_tags_past_the_per_run_limit_and_changes_nothing():
    row = RunRow(project="p", run_id="r", start_ms=1)
    row.tags = {f"t{i}": "" for i in range(MAX_TAGS_PER_RUN - 1)}
    before = dict(row.tags)
    with pytest.raises(InvalidArgument, match=f"limit is {MAX_TAGS_PER_RUN} per run"):
        run_state.merge_run_update(row, _update({"a": "", "b": ""}), 10)
    assert row.tags == before and row.heartbeat_ms == 0
    # replacing existing keys and removing while adding stay within the limit
    run_state.merge_run_update(row, _update({"t0": "new"}), 10)
    run_state.merge_run_update(row, _update({"a": "", "b": ""}, remove=["t1", "t2"]), 11)
    assert len(row.tags) == MAX_TAGS_PER_RUN - 1


def test_run_start_with_too_many_tags_is_refused():
    msg = ingest_pb2.RunStart(
        project="p", run_id="r", tags={f"t{i}": "" for i in range(MAX_TAGS_PER_RUN + 1)}
    )
    with pytest.raises(InvalidArgument):
        run_state.merge_run_start(None, msg, 1)


def test_writer_refuses_only_the_request_over_the_limit(chdb_dsn, database, tmp_path):
    from runstream_services.artifacts.local import LocalArtifactStore
    from runstream_services.config import ServerSettings
    from runstream_services.storage.clickhouse import connect
    from runstream_services.storage.migrations import migrate
    from runstream_services.writers.store import StoreWriter

    client = connect(chdb_dsn)
    migrate(client, database)
    writer = StoreWriter(client, database, LocalArtifactStore(tmp_path / "artifacts"), ServerSettings())
    try:

        def env(seq, **body):
            return Envelope.from_request(
                ingest_pb2.IngestRequest(client_id="c", seq=seq, **body), received_ms=seq
            )

        start = env(1, run_start=ingest_pb2.RunStart(project="p", run_id="r"))
        full = {f"t{i}": "" for i in range(MAX_TAGS_PER_RUN)}
        fill = env(2, run_update=_update(full))
        over = env(3, run_update=_update({"one-too-many": ""}))
        note = env(4, run_update=ingest_pb2.RunUpdate(project="p", run_id="r", has_notes=True, notes="kept"))
        result = writer.write([start, fill, over, note])
        assert list(result.refused) == [over.idempotency_key]
        assert "limit is" in result.refused[over.idempotency_key]
        assert result.stored == 3
        writer.flush()
        tags, notes = client.query(
            f"SELECT length(mapKeys(tags)), notes FROM {database}.runs FINAL WHERE run_id = 'r'"
        ).result_rows[0]
        assert (tags, notes) == (MAX_TAGS_PER_RUN, "kept")
        assert not writer.is_stored("c", 3) and writer.is_stored("c", 4)
    finally:
        writer.close()
