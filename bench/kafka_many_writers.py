"""Many small writers on the Kafka bus, writer side (issue 11 item 6): what one writer process does
with small requests (one step of 10 metrics per request, each rank its own client) spread over
every partition.

    .venv/bin/python bench/kafka_many_writers.py --mode live --rate 3000 --seconds 10
    .venv/bin/python bench/kafka_many_writers.py --mode drain --requests 30000
    .venv/bin/python bench/kafka_many_writers.py --tree /tmp/old   # the writer from another source tree

- live: the bench publishes at `--rate` requests/s for `--seconds` (KafkaBus, as ingest does) while
  the writer runs; reports blocks/s (each block = an intent row, one metric insert, one
  client_seqs insert), the writer's CPU seconds per 1,000 requests, and how long after the last
  publish the writer had stored and committed everything.
- drain: the requests are published first, then the writer starts; reports requests/s and
  points/s from the moment it holds its partitions to the moment it stored and committed all, and
  blocks/s.

Afterwards the stored rows are counted (exactly once). `--tree DIR` runs the writer from DIR's
services/ and client/ (PYTHONPATH), for interleaved A/B runs of two versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_kafka import kafka_bootstrap  # noqa: E402
from runstream.v1 import ingest_pb2 as pb  # noqa: E402
from runstream_services.bus.base import Envelope  # noqa: E402
from runstream_services.bus.kafka import KafkaBus, delete_topics  # noqa: E402
from runstream_services.config import ServerSettings  # noqa: E402
from tests.chdb_inspect import query_folder  # noqa: E402
from tests.ingest_client import rank_step_batch  # noqa: E402
from tests.server_process import WriterProcess  # noqa: E402

PROJECT = "kmw"


def requests(runs: int, ranks: int, steps: int) -> list[pb.IngestRequest]:
    out = [
        pb.IngestRequest(seq=1 + r, client_id="starter",
                         run_start=pb.RunStart(project=PROJECT, run_id=f"run-{r}", name=f"run-{r}", start_ms=1))
        for r in range(runs)
    ]  # fmt: skip
    for step in range(steps):
        for r in range(runs):
            for k in range(ranks):
                c = r * ranks + k
                batch = rank_step_batch(PROJECT, f"run-{r}", k, c, step)
                out.append(pb.IngestRequest(seq=1 + step, client_id=f"rank-{c}", metrics=batch))
    return out


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def publish(bus: KafkaBus, envs: list[Envelope], rate: float | None) -> float:
    """Publishes at `rate` requests/s (None: as fast as possible); returns when the last was acked."""
    start, sent, tick = time.monotonic(), 0, 0.01
    chunk = len(envs) if rate is None else max(1, int(rate * tick))
    pending = []
    while sent < len(envs):
        part = envs[sent : sent + chunk]
        pending.append(asyncio.ensure_future(bus.publish(part)))
        sent += len(part)
        if rate is not None:
            await asyncio.sleep(max(0.0, start + sent / rate - time.monotonic()))
    await asyncio.gather(*pending)
    return time.monotonic()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("live", "drain"), default="live")
    p.add_argument("--runs", type=int, default=48)
    p.add_argument("--ranks", type=int, default=20, help="ranks (clients) per run")
    p.add_argument("--rate", type=float, default=3000, help="live: requests/s")
    p.add_argument("--seconds", type=float, default=10, help="live: how long to publish")
    p.add_argument("--requests", type=int, default=30_000, help="drain: how many requests")
    p.add_argument("--partitions", type=int, default=6)
    p.add_argument("--tree", type=Path, default=ROOT, help="source tree of the writer (services/, client/)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()

    total = int(a.rate * a.seconds) if a.mode == "live" else a.requests
    steps = max(1, total // (a.runs * a.ranks))
    reqs = requests(a.runs, a.ranks, steps)
    envs = [Envelope.from_request(r) for r in reqs]
    starts, load = envs[: a.runs], envs[a.runs :]
    prefix = f"kmw{uuid.uuid4().hex[:8]}"
    bootstrap = kafka_bootstrap()
    settings = ServerSettings(bus="kafka", kafka_bootstrap=bootstrap, kafka_topic_prefix=prefix,
                              kafka_group_id=f"{prefix}-writers", kafka_allow_under_replicated=True,
                              kafka_partitions=a.partitions)  # fmt: skip
    env = {
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
        "RUNSTREAM_KAFKA_GROUP_ID": f"{prefix}-writers",
        "RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED": "1",
        "RUNSTREAM_KAFKA_PARTITIONS": str(a.partitions),
        "PYTHONPATH": f"{a.tree / 'services'}:{a.tree / 'client'}",
    }
    data = Path(tempfile.mkdtemp(prefix="kmw-"))
    writer = WriterProcess(data, extra_args=["--bus", "kafka", "--kafka-bootstrap", bootstrap, "--components", "writer"],
                           env=env)  # fmt: skip
    out: dict = {"mode": a.mode, "tree": str(a.tree), "requests": len(load), "points": 10 * len(load)}

    async def run() -> None:
        bus = KafkaBus(settings)
        await bus.start()
        try:
            await publish(bus, starts, None)
            if a.mode == "drain":
                await publish(bus, load, None)
                writer.start()
                first = last = None
                blocks0 = 0
                while True:  # from the moment it holds its partitions (start-up and join excluded)
                    m = writer.metrics()
                    pts = m.get("runstream_kafka_writer_points_total", 0)
                    if first is None and m.get('runstream_kafka_writer_partitions{state="assigned"}', 0) > 0:
                        first, blocks0 = time.monotonic(), m.get("runstream_kafka_writer_blocks_total", 0)
                    if (
                        pts >= 10 * len(load) + a.runs
                        and m.get("runstream_kafka_writer_lag_records_total", 1) == 0
                    ):
                        last = time.monotonic()
                        break
                    await asyncio.sleep(0.02)
                span = max(1e-3, last - first)
                blocks = m.get("runstream_kafka_writer_blocks_total", 0) - blocks0
                out.update(seconds=round(span, 3), requests_per_s=round(len(load) / span),
                           points_per_s=round(10 * len(load) / span), blocks=blocks,
                           blocks_per_s=round(blocks / span, 1))  # fmt: skip
            else:
                writer.start()
                for _ in range(600):  # the run_starts stored: the writer holds its partitions
                    if writer.metrics().get("runstream_kafka_writer_points_total", 0) >= a.runs:
                        break
                    await asyncio.sleep(0.05)
                m0, c0, t0 = writer.metrics(), cpu_s(writer.proc.pid), time.monotonic()
                t_end = await publish(bus, load, a.rate)
                while True:
                    m = writer.metrics()
                    if (
                        m.get("runstream_kafka_writer_points_total", 0) >= 10 * len(load) + a.runs
                        and m.get("runstream_kafka_writer_lag_records_total", 1) == 0
                    ):
                        break
                    await asyncio.sleep(0.02)
                t1, c1 = time.monotonic(), cpu_s(writer.proc.pid)
                blocks = m.get("runstream_kafka_writer_blocks_total", 0) - m0.get(
                    "runstream_kafka_writer_blocks_total", 0
                )
                out.update(offered_rate=a.rate, seconds=round(t1 - t0, 3), blocks=blocks,
                           blocks_per_s=round(blocks / (t1 - t0), 1), requests_per_block=round(len(load) / max(1, blocks), 1),
                           writer_cpu_s_per_1k_requests=round(1000 * (c1 - c0) / len(load), 4),
                           drained_after_last_publish_s=round(t1 - t_end, 3))  # fmt: skip
        finally:
            await bus.stop()

    try:
        asyncio.run(run())
    finally:
        writer.stop()
        asyncio.run(delete_topics(bootstrap, prefix))
    rows = query_folder(
        data / "chdb", "SELECT count(), uniqExact(run_id, rank, key, step) FROM runstream.metrics"
    )
    out["stored_rows"], out["stored_distinct"] = rows[0]
    out["exactly_once"] = rows[0][0] == rows[0][1] == 10 * len(load)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
