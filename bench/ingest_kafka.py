"""Sustained ingest on the Kafka bus, end to end: gRPC ingest streams -> ingest (KafkaBus,
acks=all) -> Kafka -> KafkaWriterLoop -> chDB. Points/s are counted three ways:

- ingest: points acked (durable in Kafka) per second while the streams send;
- writer: points the writer stored per second (Prometheus `runstream_writer_points_total`);
- end to end: all acked points / (first send -> the writer has stored and committed everything).

Afterwards the stored count is checked against the acked points (exactly once).

    .venv/bin/python bench/ingest_kafka.py --seconds 20 --streams 4 --batch-points 200000
    .venv/bin/python bench/ingest_kafka.py --split     # ingest and writer in two processes

Kafka comes from `scripts/services.sh env` (RUNSTREAM_TEST_KAFKA); each run uses its own topic
prefix and deletes its topics afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka.partitioner import murmur2  # noqa: E402

from bench.ingest_embedded import OPTIONS, Stream  # noqa: E402
from runstream_services.bus.kafka import DEFAULT_PARTITIONS, delete_topics  # noqa: E402
from tests.chdb_inspect import query_folder  # noqa: E402
from tests.server_process import ServerProcess, WriterProcess  # noqa: E402
from tests.server_process import scrape_metrics as scrape  # noqa: E402


def kafka_bootstrap() -> str:
    if os.environ.get("RUNSTREAM_TEST_KAFKA"):
        return os.environ["RUNSTREAM_TEST_KAFKA"]
    out = subprocess.run(
        ["bash", str(ROOT / "scripts/services.sh"), "env"], check=True, capture_output=True, text=True
    ).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return env["RUNSTREAM_TEST_KAFKA"]


def run_ids(count: int, partitions: int = DEFAULT_PARTITIONS) -> list[str]:
    """Run ids that land in distinct partitions (while count <= partitions), so each stream's
    blocks hold one run. Workaround: writers/rows.metrics_table builds the `project` dictionary
    with one entry per run, which ClickHouse refuses ("Arrow dictionary contains duplicate
    values") when a block holds two runs of one project."""
    out, used, i = [], set(), 0
    while len(out) < count:
        name = f"bench-{len(out)}-{i}"
        part = (murmur2(name.encode()) & 0x7FFFFFFF) % partitions
        if part not in used or len(used) >= partitions:
            used.add(part)
            out.append(name)
        i += 1
    return out


def caught_up(metrics: dict[str, float]) -> bool:
    assigned = metrics.get('runstream_kafka_writer_partitions{state="assigned"}', 0)
    known = metrics.get('runstream_kafka_writer_partitions{state="lag_known"}', -1)
    return assigned > 0 and known == assigned and metrics.get("runstream_kafka_writer_lag_records_total") == 0


def drop_topics(bootstrap: str, prefix: str) -> None:
    try:
        asyncio.run(delete_topics(bootstrap, prefix))
    except Exception as exc:  # a leftover topic is harmless
        print(f"could not delete topics {prefix}.*: {exc}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the streams send")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--batch-points", type=int, default=200_000)
    parser.add_argument("--window", type=int, default=4, help="unacked requests per stream")
    parser.add_argument("--split", action="store_true", help="ingest and writer in separate processes")
    parser.add_argument("--block-points", type=int, help="writer_max_block_points (default: the server's)")
    parser.add_argument("--data-dir", help="server data folder (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args()

    bootstrap = kafka_bootstrap()
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = {
        "RUNSTREAM_KAFKA_TOPIC_PREFIX": prefix,
        "RUNSTREAM_KAFKA_GROUP_ID": f"{prefix}-writers",
        "RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED": "1",  # the local single-node broker
    }
    if args.block_points:
        env["RUNSTREAM_WRITER_MAX_BLOCK_POINTS"] = str(args.block_points)
    data_dir = Path(args.data_dir or tempfile.mkdtemp(prefix="rs-bench-kafka-"))
    common = ["--bus", "kafka", "--kafka-bootstrap", bootstrap, "--log-level", "WARNING"]
    if args.split:
        writer = WriterProcess(
            data_dir / "writer", extra_args=[*common, "--components", "writer,query"], env=env
        )
        ingest = ServerProcess(data_dir / "ingest", extra_args=[*common, "--components", "ingest"], env=env)
        processes = [writer.start(), ingest.start()]
    else:
        writer = ingest = ServerProcess(data_dir / "server", extra_args=common, env=env).start()
        processes = [writer]

    streams: list[Stream] = []
    samples: list[tuple[float, float]] = []  # (time, writer points stored)
    rc = []
    try:
        channels = [grpc.insecure_channel(ingest.endpoint, options=OPTIONS) for _ in range(args.streams)]
        names = run_ids(args.streams)
        streams = [Stream(ch, names[i], args.batch_points, args.window) for i, ch in enumerate(channels)]
        t_start = time.perf_counter()
        for s in streams:
            s.start()
        while time.perf_counter() - t_start < args.seconds:
            time.sleep(0.5)
            samples.append(
                (time.perf_counter(), scrape(writer.metrics_port).get("runstream_writer_points_total", 0))
            )
        for s in streams:
            s.stop.set()
        for s in streams:
            s.join(120)
        t_sent = time.perf_counter()
        t_stored = None
        for _ in range(2400):  # bounded: at most ~10 min of catching up
            metrics = scrape(writer.metrics_port)
            now = time.perf_counter()
            samples.append((now, metrics.get("runstream_writer_points_total", 0)))
            if caught_up(metrics):
                t_stored = t_stored or now
                if now - t_stored > 1.0:  # confirmed by later fetches
                    break
            else:
                t_stored = None
            time.sleep(0.25)
    finally:
        for proc in reversed(processes):
            rc.append(proc.stop(120))
        drop_topics(bootstrap, prefix)

    acked = sum(s.acked_points for s in streams)
    acked_while_sending = sum(p for s in streams for t, p in s.acks if t <= t_sent)
    folder = writer.data_dir / "chdb"
    stored = query_folder(folder, "SELECT count() FROM runstream.metrics")[0][0]
    summary = query_folder(folder, "SELECT sum(count) FROM runstream.metric_summaries")[0][0]
    errors = [e for s in streams for e in s.errors]
    # the writer's steady rate: the best 5 s window of stored points
    writer_rate = 0.0
    for i, (t0, p0) in enumerate(samples):
        for t1, p1 in samples[i + 1 :]:
            if t1 - t0 >= 5.0:
                writer_rate = max(writer_rate, (p1 - p0) / (t1 - t0))
                break
    result = {
        "bench": "ingest_kafka",
        "mode": "split" if args.split else "one process",
        "points_per_s_end_to_end": round(acked / (t_stored - t_start)) if t_stored else None,
        "points_per_s_ingest": round(acked_while_sending / (t_sent - t_start)),
        "points_per_s_writer_best_5s": round(writer_rate),
        "catch_up_after_send_s": round(t_stored - t_sent, 2) if t_stored else None,
        "send_seconds": round(t_sent - t_start, 2),
        "streams": args.streams,
        "batch_points": args.batch_points,
        "acked_points": acked,
        "stored_points": stored,
        "summary_count": summary,
        "server_exit": rc,
        "errors": errors[:3],
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0 if not errors and t_stored and stored == acked == summary else 1


if __name__ == "__main__":
    sys.exit(main())
