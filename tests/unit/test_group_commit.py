"""The embedded bus's group commit (bus/embedded.py) and block log (bus/block_log.py): requests of
many clients share blocks, one client's order is kept across blocks, a refused run_start takes
the requests queued behind it along, and a block logged before a crash is re-formed under its
own name at the next start, so nothing it inserted is inserted twice.

Most tests run the real StoreWriter on the in-process chDB engine. The ordering tests use a
recording stand-in sink instead (labelled below): they are about which envelopes the bus puts in
which block and when, which a real insert would only make slower to observe."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from runstream.v1 import ingest_pb2 as pb
from runstream.v1 import types_pb2
from runstream_services.bus.base import Envelope, WriteResult
from runstream_services.bus.block_log import BlockLog
from runstream_services.bus.embedded import EmbeddedBus
from runstream_services.config import ServerSettings
from runstream_services.metrics_http import Metrics
from runstream_services.run_state import MAX_TAGS_PER_RUN
from runstream_services.writers.store import StoreWriter

PROJECT = "proj"


@pytest.fixture
def writer(sole_writer):
    return sole_writer


def q(writer: StoreWriter, sql: str):
    return writer.client.query(sql.replace("DB", writer.db)).result_rows


def start(client_id: str, seq: int, run_id: str, **fields) -> Envelope:
    return Envelope.from_request(
        pb.IngestRequest(
            seq=seq, client_id=client_id, run_start=pb.RunStart(project=PROJECT, run_id=run_id, **fields)
        )
    )


def finish(client_id: str, seq: int, run_id: str) -> Envelope:
    body = pb.RunFinish(project=PROJECT, run_id=run_id, state=types_pb2.RUN_STATE_FINISHED)
    return Envelope.from_request(pb.IngestRequest(seq=seq, client_id=client_id, run_finish=body))


def points(client_id: str, seq: int, run_id: str, step: int, rank: int = 0) -> Envelope:
    batch = pb.MetricBatch(
        project=PROJECT, run_id=run_id, rank=rank, keys=["loss", "acc"],
        key_index=np.array([0, 1], "<u2").tobytes(), steps=np.array([step, step], "<i8").tobytes(),
        values=np.array([step, -step], "<f8").tobytes(), times_ms=np.full(2, 1_700_000_000_000, "<i8").tobytes(),
    )  # fmt: skip
    return Envelope.from_request(pb.IngestRequest(seq=seq, client_id=client_id, metrics=batch))


async def publish_all(bus: EmbeddedBus, envelopes: list[Envelope]) -> list[WriteResult]:
    """Publishes each envelope on its own, all at once (as many ingest streams do)."""
    return await asyncio.gather(*(bus.publish([env]) for env in envelopes))


def test_many_clients_share_blocks_and_every_request_is_stored_once(writer, tmp_path):
    metrics = Metrics()

    async def main():
        bus = EmbeddedBus(writer, log_dir=tmp_path / "blocks", metrics=metrics)
        await bus.start()
        await bus.publish([start("c0", 1, "run-1")])
        envs = [points(f"rank-{r}", s, "run-1", step=s, rank=r) for r in range(50) for s in range(1, 5)]
        results = await publish_all(bus, envs + envs[:20])  # 20 sent twice, as after a reconnect
        await bus.stop()
        return results

    results = asyncio.run(main())
    assert all(not r.refused for r in results)
    assert q(writer, "SELECT count() FROM DB.metrics FINAL") == [(400,)]
    assert q(writer, "SELECT count() FROM DB.metrics") == [(400,)]  # no request stored twice
    blocks = metrics.get("runstream_writer_blocks_total")
    assert 2 <= blocks < 20, blocks  # 221 publishes, a handful of blocks
    assert not list((tmp_path / "blocks").iterdir()), "recorded blocks leave no file behind"


class RecordingSink:
    """Stand-in sink (not storage): records each block with when it began and ended."""

    def __init__(self, delay_s: float = 0.02, refuse: dict[str, str] | None = None):
        self.delay_s = delay_s
        self.refuse = refuse or {}
        self.blocks: list[tuple[float, float, list[Envelope]]] = []
        self._lock = threading.Lock()

    def write(self, envelopes, token=None, replay=False, logged=False):
        began = time.monotonic()
        time.sleep(self.delay_s)
        with self._lock:
            self.blocks.append((began, time.monotonic(), list(envelopes)))
        refused = {
            e.idempotency_key: self.refuse[e.idempotency_key]
            for e in envelopes
            if e.idempotency_key in self.refuse
        }
        return WriteResult(stored=len(envelopes) - len(refused), refused=refused)

    def flush(self):
        return True

    def forget(self, *, clients=None, runs=None):
        pass


def test_one_clients_run_events_never_overlap_its_other_requests_in_flight():
    sink = RecordingSink()

    async def main():
        bus = EmbeddedBus(sink, max_blocks=2)
        await bus.start()
        tasks = []
        for c in range(8):  # each client: start, 5 points, finish, start of a second run, points
            cid = f"client-{c}"
            envs = [start(cid, 1, f"r{c}a")] + [points(cid, 1 + s, f"r{c}a", s) for s in range(1, 6)]
            envs += [finish(cid, 7, f"r{c}a"), start(cid, 8, f"r{c}b"), points(cid, 9, f"r{c}b", 1)]
            for env in envs:
                tasks.append(asyncio.ensure_future(bus.publish([env])))
                await asyncio.sleep(0.003)  # published one by one while blocks are in flight
        await asyncio.gather(*tasks)
        await bus.stop()

    asyncio.run(main())
    assert len(sink.blocks) > 3
    spans: dict[str, list[tuple[int, bool, float, float]]] = {}
    for began, ended, envs in sink.blocks:
        for env in envs:
            spans.setdefault(env.client_id, []).append((env.seq, env.kind != "metrics", began, ended))
    for client, items in spans.items():
        assert sorted(s for s, *_ in items) == list(range(1, 10)), client
        for seq, barrier, began, ended in items:
            for other, _, o_began, o_ended in items:
                if other == seq or not barrier:
                    continue
                if other < seq:  # everything before a run event was written before it began...
                    assert o_ended <= began or o_began == began, (client, other, seq)
                else:  # ...and nothing after it began before it ended
                    assert o_began >= ended or o_began == began, (client, other, seq)


def test_a_publish_of_many_requests_counts_each_of_them_against_the_block_limit():
    """Ingest publishes a packed message's metrics as one list: a block's request limit counts
    its envelopes, not its publishes."""
    sink = RecordingSink(delay_s=0.05)

    async def main():
        bus = EmbeddedBus(sink, max_block_requests=10)
        await bus.start()
        first = asyncio.ensure_future(bus.publish([points("warm", 1, "r", 1)]))
        await asyncio.sleep(0.01)  # that block is in flight: the lists below wait together
        lists = [[points(f"c{k}-{i}", 1, "r", 1) for i in range(4)] for k in range(3)]
        results = await asyncio.gather(first, *(bus.publish(envs) for envs in lists))
        await bus.stop()
        return results

    results = asyncio.run(main())
    assert [r.stored for r in results] == [1, 4, 4, 4]
    sizes = [len(envs) for _, _, envs in sink.blocks]
    assert sum(sizes) == 13 and max(sizes) <= 10, sizes


def _behind_a_refused_start(publish_behind) -> tuple[RecordingSink, list[WriteResult]]:
    """Publishes client c1's run_start (the stand-in sink refuses it), then, while its block is in
    flight, whatever `publish_behind(bus)` publishes (a list of awaitables). Returns the sink and
    the results: the run_start's first, then those in order."""
    sink = RecordingSink(delay_s=0.05, refuse={"c1:1": "too many tags"})

    async def main():
        bus = EmbeddedBus(sink)
        await bus.start()
        first = asyncio.ensure_future(bus.publish([start("c1", 1, "bad")]))
        await asyncio.sleep(0.01)  # the run_start's block is in flight
        results = await asyncio.gather(first, *publish_behind(bus))
        await bus.stop()
        return results

    return sink, asyncio.run(main())


def test_requests_queued_behind_a_refused_run_start_are_refused_with_it():
    sink, (refused_start, *behind, other) = _behind_a_refused_start(
        lambda bus: [
            *(asyncio.ensure_future(bus.publish([points("c1", s, "bad", s)])) for s in (2, 3)),
            asyncio.ensure_future(bus.publish([points("c2", 1, "fine", 1)])),
        ]
    )
    assert refused_start.refused == {"c1:1": "too many tags"}
    for result, seq in zip(behind, (2, 3), strict=True):
        assert (
            result.refused[f"c1:{seq}"]
            == f"request {seq} was not stored: its run_start 1 was refused: too many tags"
        )
    assert not other.refused
    written = {e.idempotency_key for _, _, envs in sink.blocks for e in envs}
    assert "c1:2" not in written and "c2:1" in written


def test_a_refused_run_start_takes_only_its_own_requests_out_of_a_list_published_together():
    """A packed message's metrics are published as one list; a run_start refused ahead of them
    refuses that client's requests in the list, and the other clients' are stored."""
    together = [points("c1", 2, "bad", 2), points("c2", 1, "fine", 1), points("c3", 1, "fine", 1)]
    sink, (refused_start, shared) = _behind_a_refused_start(lambda bus: [bus.publish(together)])
    assert refused_start.refused == {"c1:1": "too many tags"}
    assert shared.refused == {"c1:2": "request 2 was not stored: its run_start 1 was refused: too many tags"}
    assert shared.stored == 2 and shared.points == 4
    written = {e.idempotency_key for _, _, envs in sink.blocks for e in envs}
    assert "c1:2" not in written and {"c2:1", "c3:1"} <= written


def test_a_run_start_the_writer_refuses_takes_its_block_mates_of_that_run_along(writer):
    tags = {f"t{i}": "x" for i in range(MAX_TAGS_PER_RUN + 1)}
    result = writer.write(
        [start("c1", 1, "tagged", tags=tags), points("c1", 2, "tagged", 1), points("c2", 1, "tagged", 1)],
        token="blk:test:1",
    )
    assert "c1:1" in result.refused
    assert result.refused["c1:2"] == "request 2 was not stored: its run_start 1 was refused"
    assert "c2:1" not in result.refused  # another client's request is judged on its own
    assert q(writer, "SELECT count() FROM DB.runs") == [(0,)]


def test_a_block_logged_before_a_crash_is_re_formed_under_its_name(writer, tmp_path):
    """kill -9 after a block's inserts and before its record: the SDKs resend, in other blocks.
    The next start writes the logged block again first: its inserts are dropped by their tokens,
    and the record it writes makes the resends duplicates."""
    envs = [start("c1", 1, "run-9")] + [points("c1", s, "run-9", s) for s in range(2, 6)]
    log = BlockLog(tmp_path / "blocks")
    log.write("blk:before-crash:1", envs)
    writer.write(envs, token="blk:before-crash:1")  # the inserts landed...
    writer._bookkeeping._pending["client_seqs"].clear()  # ...the record did not (the crash)
    writer.client.command(f"TRUNCATE TABLE {writer.db}.client_seqs")
    fresh = StoreWriter(writer.client, writer.db, writer.artifact_store, ServerSettings(), sole_writer=True)

    async def restart_and_resend():
        bus = EmbeddedBus(fresh, log_dir=tmp_path / "blocks")
        await bus.start()  # re-forms the logged block before anything else
        results = await publish_all(bus, [points("c1", s, "run-9", s) for s in range(2, 6)])
        await bus.stop()
        return results

    results = asyncio.run(restart_and_resend())
    fresh.close()
    assert all(not r.refused for r in results)
    assert q(writer, "SELECT count() FROM DB.metrics") == [(8,)]  # raw rows: nothing inserted twice
    assert q(writer, "SELECT count() FROM DB.runs") == [(1,)]
    assert q(writer, "SELECT ranges FROM DB.client_seqs FINAL WHERE client_id = 'c1'") == [([(1, 5)],)]
    assert not list((tmp_path / "blocks").iterdir())


def test_a_re_formed_block_leaves_summaries_equal_to_history_whatever_the_crash_left(writer, tmp_path):
    """kill -9 inside a block's insert can leave the materialized views' targets out of step with
    `metrics` (seen once in ~10 kill -9 runs of test_exactly_once: metrics exact, the summaries
    holding one 27-request block twice). The state is made by hand here: the block's summary rows
    twice, its rollup rows gone (so the stored-ranges check sees no overlap). Re-forming the block
    recomputes the summaries of every series it touches from `metrics FINAL`."""
    envs = [start("c1", 1, "run-8")] + [points("c1", s, "run-8", s) for s in range(2, 6)]
    log = BlockLog(tmp_path / "blocks")
    log.write("blk:before-crash:1", envs)
    writer.write(envs, token="blk:before-crash:1")
    writer._bookkeeping._pending["client_seqs"].clear()
    writer.client.command(f"TRUNCATE TABLE {writer.db}.client_seqs")
    writer.client.command(
        f"INSERT INTO {writer.db}.metric_summaries SELECT * FROM {writer.db}.metric_summaries",
        settings={"insert_deduplicate": 0},
    )
    writer.client.command(f"TRUNCATE TABLE {writer.db}.metric_rollups")
    assert q(writer, "SELECT key, sum(count) FROM DB.metric_summaries GROUP BY key ORDER BY key") == [
        ("acc", 8), ("loss", 8),
    ]  # fmt: skip
    fresh = StoreWriter(writer.client, writer.db, writer.artifact_store, ServerSettings(), sole_writer=True)

    async def restart():
        bus = EmbeddedBus(fresh, log_dir=tmp_path / "blocks")
        await bus.start()
        await bus.stop()

    asyncio.run(restart())
    fresh.close()
    summaries = "SELECT key, sum(count), max(last_step), argMaxMerge(last) FROM DB.metric_summaries GROUP BY key ORDER BY key"
    assert q(writer, summaries) == [
        ("acc", 4, 5, -5.0), ("loss", 4, 5, 5.0),
    ]  # fmt: skip
    assert q(writer, "SELECT count() FROM DB.metrics") == [(8,)]


def test_block_log_round_trip_and_numbers_rise_across_restarts(tmp_path):
    log = BlockLog(tmp_path)
    envs = [start("c", 1, "r"), points("c", 2, "r", 1)]
    number = log.write("blk:x:1", envs)
    (tmp_path / "000000000099.tmp").write_bytes(b"half a block (the older format's cut write)")
    [(found, name, back)] = list(log.pending())
    assert (found, name) == (number, "blk:x:1")
    assert back == envs  # every field, the receive times included (a re-formed block is the same block)
    assert [e.request for e in back] == [e.request for e in envs]  # parsed back from the payloads
    assert not list(tmp_path.glob("*.tmp"))
    again = BlockLog(tmp_path)
    assert [n for n, _, _ in again.pending()] == [number]
    assert again.write("blk:x:2", envs) > number  # numbers rise across restarts


def test_block_log_records_are_appended_and_a_segment_goes_once_all_its_blocks_are_recorded(tmp_path):
    """Blocks and groups are records appended to one segment file (not a file each); removing
    them notes them done; the segment is deleted once nothing in it is live, and a restart
    re-forms only what was not noted done."""
    log = BlockLog(tmp_path)
    envs = [start("c", 1, "r"), points("c", 2, "r", 1)]
    first, second, third = (log.write(f"blk:x:{i}", envs) for i in (1, 2, 3))
    group = log.write_group("grp:x:1-2", [first, second])
    assert len(list(tmp_path.iterdir())) == 1, "one segment file"
    log.remove([group, first])
    assert [name for _, name, _ in BlockLog(tmp_path).pending()] == ["blk:x:2", "blk:x:3"]
    assert [(token, members) for _, token, members in BlockLog(tmp_path).groups()] == []
    log.remove([second, third])
    log.close()
    assert not list(tmp_path.iterdir()), "everything recorded: the segment is gone"


def test_block_log_segments_rotate_and_each_is_deleted_when_done(tmp_path, monkeypatch):
    from runstream_services.bus import block_log

    monkeypatch.setattr(block_log, "SEGMENT_BYTES", 1)  # every record fills its segment
    log = BlockLog(tmp_path)
    envs = [start("c", 1, "r")]
    numbers = [log.write(f"blk:x:{i}", envs) for i in range(3)]
    assert len(list(tmp_path.glob("*.seg"))) == 3
    log.remove([numbers[1]])  # a newer segment goes before an older one that is still live
    assert len(list(tmp_path.glob("*.seg"))) == 2
    assert [n for n, _, _ in BlockLog(tmp_path).pending()] == [numbers[0], numbers[2]]


def test_a_record_cut_short_by_a_crash_is_dropped_and_a_damaged_segment_is_kept_as_bad(tmp_path, caplog):
    log = BlockLog(tmp_path)
    envs = [start("c", 1, "r"), points("c", 2, "r", 1)]
    kept = log.write("blk:x:1", envs)
    log.write("blk:x:2", envs)
    log.close()
    [segment] = tmp_path.glob("*.seg")
    whole = segment.read_bytes()
    segment.write_bytes(whole[:-7])  # the second record's write was cut short (kill -9)
    assert [(n, name) for n, name, _ in BlockLog(tmp_path).pending()] == [(kept, "blk:x:1")]
    assert len(segment.read_bytes()) < len(whole) - 7, "the cut record is cut off the file"
    assert not list(tmp_path.glob("*.bad"))

    damaged = bytearray(segment.read_bytes())
    damaged[40] ^= 0xFF  # inside the first record's body, with more after it: not a cut write
    segment.write_bytes(bytes(damaged) + whole[len(damaged) :])
    with caplog.at_level("ERROR", logger="runstream.bus"):
        assert list(BlockLog(tmp_path).pending()) == []
    assert "damaged" in caplog.text and list(tmp_path.glob("*.bad")), "reported, a copy kept"


def test_a_full_disk_while_noting_blocks_done_keeps_them_logged_until_it_works(tmp_path, monkeypatch):
    """The 'done' note is a write (a file deletion was not): when it fails, the blocks stay logged
    and the next record round notes them, instead of the recorder stopping for good."""
    import errno

    bus = EmbeddedBus(RecordingSink(delay_s=0.0), log_dir=tmp_path)
    first = bus._log.write("blk:x:1", [start("c", 1, "r")])
    real_remove, failures = bus._log.remove, [1]

    def remove(entries):
        if failures:
            failures.pop()
            raise OSError(errno.ENOSPC, "No space left on device")
        real_remove(entries)

    monkeypatch.setattr(bus._log, "remove", remove)
    bus._logged = [first]
    bus._record()
    assert bus._logged == [first] and [n for n, _, _ in bus._log.pending()] == [first]
    bus._record()
    assert bus._logged == [] and list(bus._log.pending()) == []


def test_a_logged_block_that_passes_its_crc_but_does_not_parse_is_kept_aside(tmp_path, caplog):
    from runstream_services.bus import block_log

    log = BlockLog(tmp_path)
    number = log._append(
        block_log._BLOCK, b"v3 blk:x:1\n\x01\x00\x00\x00"
    )  # one request announced, none there
    good = log.write("blk:x:2", [start("c", 1, "r")])
    log.close()
    with caplog.at_level("ERROR", logger="runstream.bus"):
        assert [n for n, _, _ in BlockLog(tmp_path).pending()] == [good]
    assert (tmp_path / f"{number:012d}.bad").exists() and "cannot be read" in caplog.text
    assert [n for n, _, _ in BlockLog(tmp_path).pending()] == [good], "noted done: not reported again"


def _envelopes_of_both_kinds() -> list[Envelope]:
    """Headers the older formats wrote out (their payloads were never parsed back)."""
    return [
        Envelope("c1", 1, "run_start", "p", "r1", b"\x00payload-one\n", 1_700_000_000_000, 0),
        Envelope("c2", 7, "metrics", "p", "r1", b"", 1_700_000_000_001, 20),
        Envelope("c\u00e9", 2**63, "metrics", "p", "r\n2", bytes(range(256)) * 3, 5, 3),
    ]


def test_block_log_reads_back_what_it_wrote_and_the_older_formats_too(tmp_path):
    import json
    import struct

    from runstream_services.bus.block_log import _write_v2, block_bytes

    folder = tmp_path / "blocks"
    log = BlockLog(folder)
    now = [
        start("c\u00e9", 1, "r1", name="caf\u00e9"),
        points("c2", 2**63, "r1", 5, rank=3),
        finish("c1", 9, "r1"),
    ]
    now = [Envelope.from_request(e.request, e.payload, 1_700_000_000_000 + i) for i, e in enumerate(now)]
    log.write("blk:new:1", now)
    (folder / "000000000098.blk").write_bytes(block_bytes("blk:v3:4", now))  # a file per block (v3)
    old = _envelopes_of_both_kinds()
    # a file of the first format, as an older server wrote it: a JSON header before each payload
    parts = [b"blk:old:2\n"]
    for e in old:
        header = json.dumps(
            [e.client_id, e.seq, e.kind, e.project, e.run_id, e.received_ms, e.points]
        ).encode()
        parts += [struct.pack("<I", len(header)), header, struct.pack("<I", len(e.payload)), e.payload]
    (folder / "000000000099.blk").write_bytes(b"".join(parts))
    (folder / "000000000100.blk").write_bytes(_write_v2("blk:v2:3", old))
    # a file cut short, and one whose request does not parse: kept as .bad, never half-replayed
    whole = (folder / "000000000098.blk").read_bytes()
    (folder / "000000000101.blk").write_bytes(whole[:-5])
    (folder / "000000000102.blk").write_bytes(whole[:-3] + b"\xff\xff\xff")

    pending = [(name, got) for _, name, got in BlockLog(folder).pending()]
    assert pending == [("blk:new:1", now), ("blk:v3:4", now), ("blk:old:2", old), ("blk:v2:3", old)]
    assert sorted(p.name for p in folder.glob("*.bad")) == ["000000000101.bad", "000000000102.bad"]


def blocks_of_two_publishes_20_ms_apart(gather_s: float, streams: int | None = None) -> list[int]:
    """The sizes of the blocks an idle bus forms from two publishes 20 ms apart (the stand-in
    sink above: this is about block forming)."""
    sink = RecordingSink(delay_s=0.0)

    async def main():
        bus = EmbeddedBus(sink, gather_s=gather_s)
        if streams is not None:
            bus.open_streams = lambda: streams
        await bus.start()
        first = asyncio.ensure_future(bus.publish([start("c", 1, "r")]))
        await asyncio.sleep(0.02)
        second = asyncio.ensure_future(bus.publish([start("d", 1, "s")]))
        await asyncio.gather(first, second)
        await bus.stop()

    asyncio.run(main())
    return [len(envs) for _, _, envs in sink.blocks]


@pytest.mark.parametrize(("streams", "blocks"), [(1, [1, 1]), (2, [2])])
def test_the_idle_gather_waits_only_while_other_streams_are_open(streams, blocks):
    """With one ingest stream open (one SDK process: its requests come packed), an idle bus takes
    a request at once; with several it gathers for what the others send meanwhile."""
    assert blocks_of_two_publishes_20_ms_apart(0.2, streams) == blocks


@pytest.mark.parametrize("gather_s", [0.0, 0.2])
def test_an_idle_bus_gathers_for_writer_gather_ms_and_not_when_it_is_0(gather_s):
    """writer_gather_ms: an idle bus waits that long for more publishes, so two 20 ms apart share
    a block with a 200 ms window; with 0 the first is written before the second arrives. (The
    default, 1 ms, keeps 1,000 ranks' blocks large: without it they held 4.0k requests/s, not 9.0k.)"""
    assert blocks_of_two_publishes_20_ms_apart(gather_s) == ([2] if gather_s else [1, 1])
