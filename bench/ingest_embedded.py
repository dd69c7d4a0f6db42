"""Sustained ingest into the embedded server (chDB), end to end: a `runstream server` child
process, several gRPC ingest streams pushing large pre-built columnar batches, points/s counted
from durable acks. Afterwards the stored count is checked against the acked points.

    .venv/bin/python bench/ingest_embedded.py --seconds 20 --streams 4 --batch-points 200000

The client pre-serializes its requests (protobuf field concatenation: header + metric batch) and
sends raw bytes, so client CPU goes to gRPC, not to protobuf.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runstream.v1 import ingest_pb2 as pb  # noqa: E402
from tests.chdb_inspect import query_folder  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

OPTIONS = [("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)]
KEYS = ["loss", "acc", "lr", "grad_norm", "val_loss", "val_acc", "tokens_per_s", "step_time"]


def metric_body(run_id: str, start: int, n: int) -> bytes:
    idx = np.arange(start, start + n)
    batch = pb.MetricBatch(
        project="bench",
        run_id=run_id,
        keys=KEYS,
        key_index=(idx % len(KEYS)).astype("<u2").tobytes(),
        steps=(idx // len(KEYS)).astype("<i8").tobytes(),
        values=np.random.default_rng(start).random(n).tobytes(),
        times_ms=np.full(n, int(time.time() * 1000), "<i8").tobytes(),
    )
    return pb.IngestRequest(metrics=batch).SerializeToString()


class BodyMaker:
    """Distinct points for every request (stored counts stay exact), with little client CPU:
    only the steps column is rebuilt per request."""

    def __init__(self, run_id: str, n: int):
        self.n = n
        self.template = pb.IngestRequest.FromString(metric_body(run_id, 0, n))
        self.base_steps = np.frombuffer(self.template.metrics.steps, "<i8").copy()

    def body(self, i: int) -> bytes:
        self.template.metrics.steps = (self.base_steps + i * (self.n // len(KEYS) + 1)).tobytes()
        return self.template.SerializeToString()


class Stream(threading.Thread):
    """One ingest stream: run_start, then metric batches until told to stop; counts acked points."""

    def __init__(self, channel, run_id: str, batch_points: int, window: int):
        super().__init__(daemon=True)
        self.call = channel.stream_stream(
            "/runstream.v1.IngestService/Ingest",
            request_serializer=lambda b: b,
            response_deserializer=pb.IngestResponse.FromString,
        )
        self.run_id = run_id
        self.client_id = uuid.uuid4().hex
        self.bodies = BodyMaker(run_id, batch_points)
        self.window = threading.Semaphore(window)  # requests in flight on this stream
        self.stop = threading.Event()
        self.acked_points = 0
        self.acks: list[tuple[float, int]] = []
        self.errors: list[str] = []

    def requests(self):
        header = pb.IngestRequest(seq=1, client_id=self.client_id)
        header.run_start.project, header.run_start.run_id = "bench", self.run_id
        yield header.SerializeToString()
        seq = 2
        while not self.stop.is_set():
            while not self.window.acquire(timeout=0.2):
                if self.stop.is_set():
                    return
            yield (
                pb.IngestRequest(seq=seq, client_id=self.client_id).SerializeToString()
                + self.bodies.body(seq)
            )
            seq += 1

    def run(self) -> None:
        try:
            for answer in self.call(self.requests(), timeout=3600):
                if answer.seq == 1:
                    continue
                self.window.release()
                if not answer.ok:
                    self.errors.append(answer.message)
                    continue
                self.acked_points += answer.points_accepted
                self.acks.append((time.perf_counter(), answer.points_accepted))
        except grpc.RpcError as exc:
            if not self.stop.is_set():
                self.errors.append(str(exc))


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measured time after warm-up")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--batch-points", type=int, default=200_000)
    parser.add_argument("--window", type=int, default=4, help="unacked requests per stream")
    parser.add_argument("--data-dir", help="server data folder (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args()

    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="rs-bench-"))
    server = ServerProcess(data_dir, extra_args=["--log-level", "WARNING"])
    server.start()
    streams = []
    try:
        channel_sets = [grpc.insecure_channel(server.endpoint, options=OPTIONS) for _ in range(args.streams)]
        streams = [
            Stream(ch, f"bench-{i}", args.batch_points, args.window) for i, ch in enumerate(channel_sets)
        ]
        cpu0 = os.times()
        for s in streams:
            s.start()
        time.sleep(args.warmup)
        t0, server_cpu0 = time.perf_counter(), process_cpu_s(server.proc.pid)
        load0 = os.getloadavg()[0]
        time.sleep(args.seconds)
        t1, server_cpu1 = time.perf_counter(), process_cpu_s(server.proc.pid)
        load1 = os.getloadavg()[0]
        for s in streams:
            s.stop.set()
        for s in streams:
            s.join(120)
        cpu1 = os.times()
    finally:
        rc = server.stop(120)
    measured = sum(p for s in streams for t, p in s.acks if t0 <= t < t1)
    acked = sum(s.acked_points for s in streams)
    stored = query_folder(data_dir / "chdb", "SELECT count() FROM runstream.metrics")[0][0]
    summary = query_folder(data_dir / "chdb", "SELECT sum(count) FROM runstream.metric_summaries")[0][0]
    errors = [e for s in streams for e in s.errors]
    result = {
        "bench": "ingest_embedded",
        "points_per_s": round(measured / (t1 - t0)),
        "seconds": round(t1 - t0, 2),
        "streams": args.streams,
        "batch_points": args.batch_points,
        "window": args.window,
        "acked_points": acked,
        "stored_points": stored,
        "summary_count": summary,
        "server_cpu_s_per_M_points": round((server_cpu1 - server_cpu0) / max(measured, 1) * 1e6, 3),
        "server_cpu_cores_busy": round((server_cpu1 - server_cpu0) / (t1 - t0), 2),
        "client_cpu_s": round((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system), 1),
        "loadavg_1m": [round(load0, 1), round(load1, 1)],
        "server_exit": rc,
        "errors": errors[:3],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0 if not errors and stored == acked == summary else 1


if __name__ == "__main__":
    sys.exit(main())
