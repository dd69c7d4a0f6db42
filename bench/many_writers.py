"""Many small writers against one server (embedded by default; `--bus kafka`): what a team's day
looks like (issue 11).

    .venv/bin/python bench/many_writers.py                 # all rows, prints JSON
    .venv/bin/python bench/many_writers.py --quick         # small sizes (smoke)
    .venv/bin/python bench/many_writers.py --only ranks    # ranks | floor | packed | runs | fresh
    .venv/bin/python bench/many_writers.py --acks single   # one ack message per request (A/B)

Rows:
- ranks: 1,000 ranks of one run (each its own client_id with its own contiguous seqs, rank r, 10
  metrics per step, one step per request), multiplexed over a few gRPC streams so the 2 cores host
  the load; the offered rate rises step by step until the server falls behind. A step is held when
  the generator sent at least 99 % of what it offered and every request was acked within 2 s
  after the last send (what `finish()` would wait). Reports the highest held step's offered
  requests/s and points/s, and per step the rate sent and the ack latency (send -> ack received)
  p50/p99.
- floor: the ranks row against bench/ingest_floor_server.py, a bare grpc.aio server that decodes
  and acks each request and does nothing else: what gRPC in Python holds on this machine with this
  generator, the ceiling of the ranks row for one message per request.
- packed: the ranks row with what falls due on a stream in one 2 ms tick packed into one message,
  up to 64 requests (IngestRequest.packed), as a relay multiplexing a node's ranks would send it:
  the per-message cost of gRPC is paid per message, not per request.
- runs: 10,000 runs created by 16 concurrent clients (run_start with 20 params, 10 metrics x 10
  steps, run_finish), pipelined as the SDK does; total seconds until all are acked and all 10,000
  are visible as finished to SearchRuns.
- fresh: log -> visible, one point then Api.history until it is there: p50/p99 at idle and at
  50 % of the held ranks load (offered by a child process, so the load's Python does not hold the
  probe's GIL).
- sdk: 1,000 ranks of one run through the real SDK (runstream.init per rank, default settings,
  hosted by 4 processes), one run.log of 10 metrics per step, the step rate rising until acks come
  later than 2 s after the last log: the points/s held (bench/sdk_ranks.py).
- repro: the issue's own measurement through the SDK: 64 ranks (4 processes x 16), 10 metrics at
  5 steps/s for 20 s; there finish() took up to 85 s.

`--bus kafka` runs the rows on a one-process server with the Kafka bus (the broker of
scripts/services.sh, topics of their own, dropped afterwards): there an ack means published to Kafka
and the point is visible once the server's writer has taken it in from Kafka (on chDB, once its
block's intent is written: the server's read cache shows it before the insert), so the fresh row
measures the whole path. `--fresh-load-rps` sets the fresh row's load when no ranks row ran in the same call
(bench/run.py passes the embedded row's half, so both buses are read at the same load).

The generator speaks the raw gRPC contract (no SDK) on grpc.aio, with pre-serialized requests, so
its own CPU stays small (each ranks step reports it: `load_cpu_ms_per_request`); the SDK's
per-call cost is measured by W1/W3 in bench/run.py. Its streams ask for batched acks (metadata
`x-runstream-acks: batched`, as the SDK does) unless `--acks single`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import percentile  # noqa: E402
from runstream.v1 import ingest_pb2 as pb  # noqa: E402
from runstream.v1 import types_pb2  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

OPTIONS = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
PROJECT = "many"
#: the runs row's own project: in PROJECT, its closing SearchRuns first loaded the ranks rows'
#: points (10 M+, one run) into the read cache, which measured that load, not the 10,000 runs
RUNS_PROJECT = "many-runs"
KEYS = [f"m{i}" for i in range(10)]
DRAIN_LIMIT_S = 2.0
PACKED = 64  # the `packed` row: up to this many requests per message (IngestRequest.packed)
BATCHED_ACKS = ("x-runstream-acks", "batched")


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _blocks(server: ServerProcess | None) -> float:
    """Group-commit blocks the embedded server has written so far (its /metrics)."""
    if server is None:
        return float("nan")
    try:
        return server.metrics().get("runstream_writer_blocks_total", float("nan"))
    except OSError:
        return float("nan")


class _FloorServer:
    """bench/ingest_floor_server.py as a child process; ranks_step reads its CPU (it has no blocks)."""

    def __init__(self):
        script = Path(__file__).resolve().parent / "ingest_floor_server.py"
        self.proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # "port N", or "" when it died first
        if not line.startswith("port "):
            self.proc.kill()
            raise RuntimeError(f"the floor server did not start (exit code {self.proc.wait()})")
        self.endpoint = f"127.0.0.1:{int(line.split()[1])}"

    def metrics(self) -> dict:
        return {}


@contextlib.contextmanager
def floor_server():
    server = _FloorServer()
    try:
        yield server
    finally:
        server.proc.kill()
        server.proc.wait()


def _pct(values: list[float], q: float) -> float:
    """common.percentile, NaN for no values (a step may time no ack)."""
    return percentile(values, q) if values else float("nan")


class _Loop:
    """The process's one asyncio loop for the generator's streams, on a thread of its own."""

    _loop: asyncio.AbstractEventLoop | None = None
    _lock = threading.Lock()

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                threading.Thread(target=cls._loop.run_forever, name="generator-loop", daemon=True).start()
            return cls._loop


class Stream:
    """One Ingest stream fed with pre-serialized requests; counts acks (one message may ack many
    requests with batched acks). Requests sent with their seq also time their ack: send times are
    kept per seq, oldest first, since the ranks multiplexed here share seq numbers (a rank's seq k
    goes out, and is acked, close to the other ranks' seq k).

    The calls run on grpc.aio in one loop thread per process: `send` queues the payload and wakes
    the stream's writer at most once per batch of sends. The synchronous stub cost ~2.5 times the
    CPU per message (three threads per stream handing each message on: 0.18 vs 0.07 ms against
    bench/ingest_floor_server.py at 6,000 requests/s), CPU the server on the same 2 cores lacked."""

    def __init__(self, endpoint: str, batched: bool = True):
        self.sent = 0
        self.acked = 0
        self.messages = 0  # response messages received
        self.errors: list[str] = []
        self.changed = threading.Condition()
        self.sent_at: dict[int, deque] = {}
        self.packed_sizes: dict[int, int] = {}  # seq of a packed message -> requests in it
        self._packed_seq = 1 << 40  # packed messages' own seqs: apart from the ranks' seqs
        self.ack_ms: list[float] = []
        self._outbox: deque = deque()  # payloads not yet written; None: done writing
        self._wake = asyncio.Event()  # bound to the loop at its first wait
        self._wake_pending = False
        self._loop = _Loop.get()
        self._done = asyncio.run_coroutine_threadsafe(self._run(endpoint, batched), self._loop)

    async def _run(self, endpoint: str, batched: bool) -> None:
        channel = grpc.aio.insecure_channel(endpoint, options=OPTIONS)
        call = channel.stream_stream(
            "/runstream.v1.IngestService/Ingest",
            request_serializer=lambda b: b,
            response_deserializer=pb.IngestResponse.FromString,
        )(metadata=(BATCHED_ACKS,) if batched else None)
        reader = asyncio.create_task(self._read(call))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._wake_pending = False  # before draining: a later send wakes the writer again
                while self._outbox:
                    payload = self._outbox.popleft()
                    if payload is None:
                        await call.done_writing()
                        await reader
                        return
                    await call.write(payload)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await reader  # the call ended: its reader records why
        finally:
            reader.cancel()
            await channel.close()

    async def _read(self, call) -> None:
        try:
            async for response in call:
                now = time.perf_counter()
                with self.changed:
                    self.messages += 1
                    if self.packed_sizes:
                        sizes = self.packed_sizes
                        seqs = (response.seq, *response.also_ok)
                        self.acked += sum(sizes.pop(q, 1) for q in seqs) - len(response.packed_refused)
                        if not response.ok and len(self.errors) < 20:
                            self.errors.append(f"packed {response.seq}: {response.message}")
                        if self.sent_at:
                            for seq in seqs:
                                times = self.sent_at.get(seq)
                                if times:
                                    self.ack_ms.append((now - times.popleft()) * 1000)
                    elif response.ok:
                        self.acked += 1 + len(response.also_ok)
                        if self.sent_at:
                            for seq in (response.seq, *response.also_ok):
                                times = self.sent_at.get(seq)
                                if times:
                                    self.ack_ms.append((now - times.popleft()) * 1000)
                    elif len(self.errors) < 20:
                        self.errors.append(f"seq {response.seq}: {response.message}")
                    self.changed.notify_all()
        except grpc.aio.AioRpcError as exc:
            self.errors.append(f"stream ended: {exc.code()} {exc.details()}")
            with self.changed:
                self.changed.notify_all()

    def _put(self, payload: bytes | None) -> None:
        self._outbox.append(payload)
        if not self._wake_pending:
            self._wake_pending = True
            self._loop.call_soon_threadsafe(self._wake.set)

    def send(self, payload: bytes, seq: int | None = None) -> None:
        if seq is not None:
            with self.changed:
                self.sent_at.setdefault(seq, deque()).append(time.perf_counter())
        self.sent += 1
        self._put(payload)

    def send_packed(self, payloads: list[bytes], timed: bool = True) -> None:
        """Many requests in one message (IngestRequest.packed), answered once by its own seq."""
        self._packed_seq += 1
        seq = self._packed_seq
        with self.changed:
            self.packed_sizes[seq] = len(payloads)
            if timed:
                self.sent_at.setdefault(seq, deque()).append(time.perf_counter())
        self.sent += len(payloads)
        self._put(pb.IngestRequest(seq=seq, packed=payloads).SerializeToString())

    def wait_acked(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while self.acked + len(self.errors) < self.sent:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def close(self) -> None:
        self._put(None)
        with contextlib.suppress(Exception):
            self._done.result(10)


def _run_start(client_id: str, seq: int, run_id: str, params: int = 0, project: str = PROJECT) -> bytes:
    config = {f"p{j}": types_pb2.Value(number=float(j)) for j in range(params)}
    return pb.IngestRequest(
        seq=seq, client_id=client_id, run_start=pb.RunStart(project=project, run_id=run_id, config=config)
    ).SerializeToString()


class RankRequests:
    """Pre-serialized metric requests of one rank: only seq and the step change per request."""

    def __init__(self, run_id: str, rank: int, steps_per_request: int = 1):
        self.client_id = uuid.uuid4().hex
        self.rank = rank
        self.seq = 0
        self.step = 0
        n = len(KEYS) * steps_per_request
        self.per_request = steps_per_request
        self.template = pb.IngestRequest(
            client_id=self.client_id,
            metrics=pb.MetricBatch(
                project=PROJECT, run_id=run_id, rank=rank, keys=KEYS,
                key_index=(np.arange(n) % len(KEYS)).astype("<u2").tobytes(),
                values=np.random.default_rng(rank).random(n).tobytes(),
                times_ms=np.full(n, int(time.time() * 1000), "<i8").tobytes(),
            ),
        )  # fmt: skip
        self.base_steps = np.repeat(np.arange(steps_per_request), len(KEYS)).astype("<i8")

    def next(self) -> bytes:
        self.seq += 1
        self.template.seq = self.seq
        self.template.metrics.steps = (self.base_steps + self.step).tobytes()
        self.step += self.per_request
        return self.template.SerializeToString()


def ranks_step(
    endpoint: str,
    run_id: str,
    ranks: list[RankRequests],
    streams: list[Stream],
    rate: float,
    seconds: float,
    server: ServerProcess | None = None,
    pack: int = 0,
) -> dict:
    """Offers `rate` requests/s round-robin over the ranks for `seconds`; then waits for the acks.
    With `server`, also its CPU ms per request (from the step's start to its drain: on shared cores
    a steadier figure than the held rate) and requests per group-commit block (fewer, larger
    blocks cost less CPU per request, so the two are read together). Always the CPU ms per request
    of this process, the load generator, which shares the cores with the server. `pack` > 0: what
    falls due on a stream in one tick (2 ms) goes out packed, up to `pack` requests per message,
    as a relay multiplexing its ranks would send it."""
    cpu_before = process_cpu_s(server.proc.pid) if server else float("nan")
    load_cpu_before = time.process_time()
    blocks_before = _blocks(server)
    per_stream = len(ranks) // len(streams) or 1
    sent_before = sum(s.sent for s in streams)
    messages_before = sum(s.messages for s in streams)
    for s in streams:
        s.ack_ms = []
    t0 = time.monotonic()
    sent = 0
    i = 0
    while True:
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        due = int(rate * (now - t0)) - sent
        if pack:
            ticks: dict[int, list[bytes]] = {}
            for _ in range(due):
                rank = ranks[i % len(ranks)]
                ticks.setdefault(min(i % len(ranks) // per_stream, len(streams) - 1), []).append(rank.next())
                i += 1
            for k, payloads in ticks.items():
                for start in range(0, len(payloads), pack):
                    streams[k].send_packed(payloads[start : start + pack])
        else:
            for _ in range(due):
                rank = ranks[i % len(ranks)]
                streams[min(i % len(ranks) // per_stream, len(streams) - 1)].send(rank.next(), rank.seq)
                i += 1
        sent += max(0, due)
        time.sleep(0.002)
    sending_s = time.monotonic() - t0
    t_last = time.monotonic()
    drained = all(s.wait_acked(30) for s in streams)
    drain_s = time.monotonic() - t_last
    errors = [e for s in streams for e in s.errors]
    total_sent = sum(s.sent for s in streams) - sent_before
    ack_ms = [ms for s in streams for ms in s.ack_ms]
    cpu_s = process_cpu_s(server.proc.pid) - cpu_before if server else float("nan")
    load_cpu_s = time.process_time() - load_cpu_before
    blocks = _blocks(server) - blocks_before
    return {
        "offered_rps": rate,
        "sent_rps": round(total_sent / sending_s),
        "drain_s": round(drain_s, 3),
        "ack_p50_ms": round(_pct(ack_ms, 50), 2),
        "ack_p99_ms": round(_pct(ack_ms, 99), 2),
        "server_cpu_ms_per_request": round(cpu_s * 1000 / max(1, total_sent), 3),
        "load_cpu_ms_per_request": round(load_cpu_s * 1000 / max(1, total_sent), 3),
        "requests_per_block": round(total_sent / blocks, 1) if blocks > 0 else None,
        "requests_per_ack_message": round(
            total_sent / max(1, sum(s.messages for s in streams) - messages_before), 1
        ),
        "held": drained and not errors and drain_s <= DRAIN_LIMIT_S and total_sent >= 0.99 * rate * seconds,
        "errors": errors[:3],
    }


def bench_ranks(
    endpoint: str,
    n_ranks: int,
    n_streams: int,
    rates: list[float],
    seconds: float,
    batched: bool = True,
    server: ServerProcess | None = None,
    pack: int = 0,
) -> dict:
    run_id = f"ranks-{uuid.uuid4().hex[:8]}"
    streams = [Stream(endpoint, batched) for _ in range(n_streams)]
    ranks = [RankRequests(run_id, r) for r in range(n_ranks)]
    streams[0].send(_run_start(ranks[0].client_id, 0, run_id))  # seq 0 is free: metrics start at 1
    streams[0].wait_acked(30)
    steps, best = [], None
    for rate in rates:
        step = ranks_step(endpoint, run_id, ranks, streams, rate, seconds, server, pack)
        steps.append(step)
        print(json.dumps({"ranks_step": step}), file=sys.stderr, flush=True)
        if not step["held"]:
            break
        best = step
    for s in streams:
        s.close()
    # the highest held step's offered rate (held: at least 99 % of it went out, every ack within
    # DRAIN_LIMIT_S), as the sdk row reports it; the rate measured over the sending time (a few
    # requests under the offered rate: the last tick's are not due yet) is the step's sent_rps
    held = best["offered_rps"] if best else 0
    return {
        "ranks": n_ranks,
        "streams": n_streams,
        "acks": "batched" if batched else "single",
        "packed": pack,
        "held_requests_per_s": held,
        "held_points_per_s": held * len(KEYS),
        "steps": steps,
    }


def bench_runs(endpoint: str, n_runs: int, clients: int, query, batched: bool = True) -> dict:
    """n_runs created by `clients` concurrent streams: run_start (20 params), one metrics request
    of 10 metrics x 10 steps, run_finish; then until SearchRuns sees all of them finished."""
    prefix = uuid.uuid4().hex[:6]
    streams = [Stream(endpoint, batched) for _ in range(clients)]

    def build(c: int) -> list[bytes]:
        """One client's requests, serialized before the clock starts (the generator shares the
        2 cores with the server: its protobuf building would otherwise be what is measured)."""
        client_id = uuid.uuid4().hex
        seq = 0
        steps = np.repeat(np.arange(10), len(KEYS)).astype("<i8").tobytes()
        index = (np.arange(100) % len(KEYS)).astype("<u2").tobytes()
        times = np.full(100, int(time.time() * 1000), "<i8").tobytes()
        out = []
        for i in range(c, n_runs, clients):
            run_id = f"{prefix}-{i:05d}"
            out.append(_run_start(client_id, seq := seq + 1, run_id, params=20, project=RUNS_PROJECT))
            batch = pb.MetricBatch(
                project=RUNS_PROJECT, run_id=run_id, keys=KEYS, key_index=index, steps=steps,
                values=np.random.default_rng(i).random(100).tobytes(), times_ms=times,
            )  # fmt: skip
            out.append(
                pb.IngestRequest(seq=(seq := seq + 1), client_id=client_id, metrics=batch).SerializeToString()
            )
            finish = pb.RunFinish(project=RUNS_PROJECT, run_id=run_id, state=types_pb2.RUN_STATE_FINISHED)
            out.append(
                pb.IngestRequest(
                    seq=(seq := seq + 1), client_id=client_id, run_finish=finish
                ).SerializeToString()
            )
        return out

    prebuilt = [build(c) for c in range(clients)]

    def one_client(c: int) -> None:
        stream = streams[c]
        for payload in prebuilt[c]:
            while stream.sent - stream.acked > 64:  # the SDK's window (max_inflight_requests)
                with stream.changed:
                    stream.changed.wait(0.05)
            stream.send(payload)
        stream.wait_acked(600)

    t0 = time.monotonic()
    threads = [threading.Thread(target=one_client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acked_s = time.monotonic() - t0
    errors = [e for s in streams for e in s.errors]
    visible = 0
    while time.monotonic() - t0 < acked_s + 120:
        visible = query(f'run_id ~ "{prefix}-" and state = "finished"')
        if visible >= n_runs:
            break
        time.sleep(0.05)
    total_s = time.monotonic() - t0
    for s in streams:
        s.close()
    return {
        "runs": n_runs,
        "clients": clients,
        "acked_s": round(acked_s, 2),
        "visible_s": round(total_s, 2),
        "visible_runs": visible,
        "runs_per_s": round(n_runs / total_s),
        "errors": errors[:3],
    }


def bench_fresh(
    endpoint: str, probes: int, api, wait_ack: bool = True, batched: bool = True, read_every_s: float = 0.0005
) -> dict:
    """log one point, then read until it is visible: ms per probe. With `wait_ack` the probe
    first waits for the point's ack (which costs the server nothing), then reads; without it, it
    reads from the moment it sent (every 0.5 ms embedded): those reads load the server it measures (on 2
    shared cores, that raised the p99 at load); a point may show before its ack (the read cache gets
    a logged block before its insert), and the next probe waits for the ack, untimed, so that it
    never waits for the insert of the one before. Either way the time runs from the send to the
    first read that sees the point, so waiting for the ack can only make it longer, never shorter.
    Reads after the ack repeat every `read_every_s`: on the embedded bus the first one nearly
    always sees the point; on the Kafka bus the writer takes it in a while after the ack, and reads
    every 0.5 ms (each a ClickHouse query there before the read cache served that bus) were a load
    of their own on the server measured."""
    run_id = f"fresh-{uuid.uuid4().hex[:8]}"
    client_id = uuid.uuid4().hex
    stream = Stream(endpoint, batched)
    stream.send(_run_start(client_id, 1, run_id))
    stream.wait_acked(30)
    _wait_run_stored(api, run_id)
    times, acks = [], []
    for i in range(probes):
        batch = pb.MetricBatch(
            project=PROJECT, run_id=run_id, keys=["probe"], steps=np.array([i], "<i8").tobytes(),
            values=np.array([float(i)], "<f8").tobytes(), times_ms=np.array([int(time.time() * 1000)], "<i8").tobytes(),
        )  # fmt: skip
        t0 = time.perf_counter()
        stream.send(pb.IngestRequest(seq=i + 2, client_id=client_id, metrics=batch).SerializeToString())
        if wait_ack:
            stream.wait_acked(30)
            acks.append((time.perf_counter() - t0) * 1000)
        while True:
            hist = api.history(run_id, keys=["probe"], project=PROJECT)
            if len(hist) and float(hist["value"].iloc[-1]) == float(i) and int(hist["step"].iloc[-1]) == i:
                break
            time.sleep(read_every_s)
        times.append((time.perf_counter() - t0) * 1000)
        if not wait_ack:  # the next probe finds no insert of this one in flight (not timed)
            stream.wait_acked(30)
    stream.close()
    return {
        "probes": probes,
        "probe": "ack, then read" if wait_ack else "read from the send",
        "read_every_ms": read_every_s * 1000,
        "p50_ms": round(_pct(times, 50), 2),
        "p99_ms": round(_pct(times, 99), 2),
        # the part of it until the ack (the rest is the reads): which side limits the row
        "ack_p50_ms": round(_pct(acks, 50), 2) if acks else None,
        "ack_p99_ms": round(_pct(acks, 99), 2) if acks else None,
    }


class KafkaSide:
    """One row's Kafka bus: the server's arguments, topics and consumer group of its own."""

    def __init__(self):
        from bench.ingest_kafka import kafka_bootstrap

        self.bootstrap = kafka_bootstrap()
        self.prefix = f"many{uuid.uuid4().hex[:8]}"
        self.args = ["--bus", "kafka", "--kafka-bootstrap", self.bootstrap]
        self.env = {
            "RUNSTREAM_KAFKA_TOPIC_PREFIX": self.prefix,
            "RUNSTREAM_KAFKA_GROUP_ID": f"{self.prefix}-writers",
            "RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED": "1",  # the local single-node broker
        }

    def wait_writer(self, server: ServerProcess, timeout_s: float = 60) -> None:
        """Until the server's writer holds its partitions and knows their lag: before that a
        probe would time the consumer group's first rebalance, not the path."""
        from bench.ingest_kafka import caught_up

        deadline = time.monotonic() + timeout_s
        while not caught_up(server.metrics()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Kafka writer held no partitions within {timeout_s:.0f} s")
            time.sleep(0.2)

    def drop(self) -> None:
        from bench.ingest_kafka import drop_topics

        drop_topics(self.bootstrap, self.prefix)


def _wait_run_stored(api, run_id: str, timeout_s: float = 60) -> None:
    """Until reads know the probe's run (before the probes' clock: on the Kafka bus the run_start's
    ack means published, and a read before the writer stored it answers NOT_FOUND)."""
    from runstream.errors import ServerError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            api.history(run_id, keys=["probe"], project=PROJECT)
            return
        except ServerError as exc:
            if exc.code != "NOT_FOUND" or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def half_load(endpoint: str, rate: float, n_ranks: int, n_streams: int, batched: bool, pack: int) -> None:
    """The load of `--load-child`: ranks at `rate` requests/s until killed."""
    run_id = f"load-{uuid.uuid4().hex[:8]}"
    streams = [Stream(endpoint, batched) for _ in range(n_streams)]
    ranks = [RankRequests(run_id, r) for r in range(n_ranks)]
    streams[0].send(_run_start(ranks[0].client_id, 0, run_id))
    streams[0].wait_acked(30)
    print("loaded", flush=True)
    ranks_step(endpoint, run_id, ranks, streams, rate, 3600.0, pack=pack)


def fresh_under_load(endpoint: str, rate: float, args, api, wait_ack: bool, batched: bool) -> dict:
    """The fresh probe while a child process offers `rate` ranks requests/s. A child, not a
    thread: in this process the load's Python (serializing, reading acks) held the GIL the probe
    needs to see its ack and read, and its waits were counted as the server's."""
    import subprocess

    cmd = [
        sys.executable, __file__, "--load-child", endpoint, "--rates", str(rate), "--ranks", str(args.ranks),
        "--streams", str(args.streams), "--acks", args.acks, "--pack", str(args.pack),
    ]  # fmt: skip
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        if child.stdout is None or child.stdout.readline().strip() != "loaded":
            raise RuntimeError("the load child did not start")
        time.sleep(1.0)
        return {
            **bench_fresh(endpoint, args.probes, api, wait_ack, batched, args.read_every_ms / 1000),
            "load_rps": rate,
        }
    finally:
        child.kill()
        child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument(
        "--only",
        default="ranks,floor,packed,runs,fresh,sdk,repro",
        help=f"comma list of ranks, floor (ranks against a bare gRPC server), packed (ranks with up to "
        f"{PACKED} requests per message), runs, fresh, sdk (ranks through the SDK), repro (the issue's "
        f"64 SDK ranks)",
    )
    parser.add_argument("--ranks", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0, help="per rate step")
    parser.add_argument(
        "--rates",
        default="250,500,1000,1500,2000,3000,4000,6000,8000,9000,10000,11000,12000,14000,16000,20000,25000",
    )
    parser.add_argument("--sdk-processes", type=int, default=4, help="sdk: processes hosting the ranks")
    parser.add_argument(
        "--sdk-rates", default="20,50,100,125,150,200", help="sdk: steps/s per rank, rising until not held"
    )
    parser.add_argument("--sdk-seconds", type=float, default=10.0, help="sdk: seconds of logging per rate")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument(
        "--bus",
        choices=["embedded", "kafka"],
        default="embedded",
        help="the server's bus: embedded (default) or kafka (the broker of scripts/services.sh)",
    )
    parser.add_argument(
        "--read-every-ms",
        type=float,
        help="fresh: how often a probe reads until it sees its point (default 0.5 ms embedded, 5 ms kafka)",
    )
    parser.add_argument(
        "--fresh-load-rps",
        type=float,
        default=0.0,
        help="fresh: the load (ranks requests/s) of its second half; default half the ranks row's held rate",
    )
    parser.add_argument(
        "--fresh-probe",
        choices=["ack", "poll"],
        default="ack",
        help="fresh: wait for the point's ack before reading (ack), or read from the send on (poll); "
        "either way every --read-every-ms",
    )
    parser.add_argument(
        "--acks",
        choices=["batched", "single"],
        default="batched",
        help="ask for batched acks (one message may ack many requests; as the SDK does) or get one "
        "ack message per request (the protocol without the opt-in), to compare",
    )
    parser.add_argument(
        "--pack",
        type=int,
        default=0,
        help="ranks: send what falls due on a stream in one 2 ms tick packed, up to this many requests "
        "per message (IngestRequest.packed, as a relay multiplexing ranks would); 0: one message each",
    )
    parser.add_argument(
        "--server-pid-file", type=Path, help="write the server's pid here once it is up (for py-spy)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--load-child", metavar="ENDPOINT", help=argparse.SUPPRESS)  # fresh's load process
    args = parser.parse_args()
    if args.load_child:
        half_load(
            args.load_child, float(args.rates), args.ranks, args.streams, args.acks == "batched", args.pack
        )
        return 0
    only = set(args.only.split(","))
    if args.read_every_ms is None:
        args.read_every_ms = 5.0 if args.bus == "kafka" else 0.5
    if args.quick:
        args.ranks, args.seconds, args.runs, args.probes = 100, 2.0, 500, 30
        args.rates = "200,500"
        args.sdk_rates, args.sdk_seconds = "5,20", 2.0

    from runstream.api import Api

    out: dict = {}
    batched = args.acks == "batched"
    with tempfile.TemporaryDirectory(prefix="rs-many-") as tmp:

        @contextlib.contextmanager
        def fresh_server(row: str):
            """Each row on a server of its own, as `--only ROW` measures it: on one shared server
            a row paid for the data and background part merges the rows before it left (the
            runs row: 11.8 s after ranks and packed, 10.9 s alone, in one session)."""
            kafka = KafkaSide() if args.bus == "kafka" else None
            server = ServerProcess(
                Path(tmp) / row, extra_args=kafka.args if kafka else None, env=kafka.env if kafka else None
            )
            api = None
            try:
                server.start()  # inside: a server that never came up still has its topics dropped
                if kafka:
                    kafka.wait_writer(server)
                if args.server_pid_file:
                    args.server_pid_file.write_text(str(server.proc.pid))
                api = Api(endpoint=server.endpoint)
                yield server, api
            finally:
                if api is not None:
                    api.close()
                server.kill()
                if kafka:
                    kafka.drop()

        rates = [float(r) for r in args.rates.split(",")]
        if "ranks" in only:
            with fresh_server("ranks") as (server, _):
                out["ranks"] = bench_ranks(
                    server.endpoint, args.ranks, args.streams, rates, args.seconds, batched, server, args.pack
                )
        if "floor" in only:  # the same ranks against a server that only decodes and acks
            with floor_server() as server:
                out["ranks_floor"] = bench_ranks(
                    server.endpoint, args.ranks, args.streams, rates, args.seconds, batched, server
                )
        if "packed" in only:  # the same ranks, their requests packed as a relay would send them
            with fresh_server("packed") as (server, _):
                out["ranks_packed"] = bench_ranks(
                    server.endpoint, args.ranks, args.streams, rates, args.seconds, batched, server, PACKED
                )
        if "runs" in only:
            from runstream.v1 import query_pb2, query_pb2_grpc

            with fresh_server("runs") as (server, _):
                search = query_pb2_grpc.QueryServiceStub(
                    grpc.insecure_channel(server.endpoint, options=OPTIONS)
                )

                def count(flt: str) -> int:
                    """Runs matching `flt` as SearchRuns counts them (its total; one row comes back:
                    listing all 10,000 through Api.runs added ~1.3 s of transfer to each poll)."""
                    request = query_pb2.SearchRunsRequest(project=RUNS_PROJECT, filter=flt, page_size=1)
                    return search.SearchRuns(request, timeout=120).total

                out["runs"] = bench_runs(server.endpoint, args.runs, args.clients, count, batched)
        if "sdk" in only:
            from sdk_ranks import bench_sdk_ranks

            with fresh_server("sdk") as (server, _):
                out["sdk_ranks"] = bench_sdk_ranks(
                    server.endpoint,
                    args.ranks,
                    args.sdk_processes,
                    [float(r) for r in args.sdk_rates.split(",")],
                    args.sdk_seconds,
                    lambda: process_cpu_s(server.proc.pid),
                )
        if "repro" in only:
            from sdk_ranks import bench_repro

            with fresh_server("repro") as (server, _):
                out["sdk_repro"] = bench_repro(server.endpoint, seconds=5.0 if args.quick else 20.0)
        if "fresh" in only:
            wait_ack = args.fresh_probe == "ack"
            with fresh_server("fresh") as (server, api):
                out["fresh_idle"] = bench_fresh(
                    server.endpoint, args.probes, api, wait_ack, batched, args.read_every_ms / 1000
                )
            load = args.fresh_load_rps or out.get("ranks", {}).get("held_requests_per_s", 0) / 2
            if load:
                with fresh_server("fresh-load") as (server, api):
                    out["fresh_half_load"] = fresh_under_load(
                        server.endpoint, load, args, api, wait_ack, batched
                    )
    out["bus"] = args.bus
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
