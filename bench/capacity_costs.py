"""Per-component costs for docs/capacity.md, measured on this machine with the real code:

1. wire: bytes per metric point of an ingest request as the SDK sends it (a batch of 8 keys x
   250 steps of training-like values), raw and with the Kafka producer's codecs (lz4, zstd);
2. server CPU per million points for large batches (ingest + group commit + chDB insert, the
   embedded server), and per request for small requests (10 points: a rank logging each step);
3. storage: compressed bytes on disk per stored point in ClickHouse (the metrics table, and with
   the rollups and summaries the schema keeps), after the parts are merged.

    .venv/bin/python bench/capacity_costs.py --points 2000000 --small-requests 6000

Training-like values: smooth curves with noise (a loss decaying, an accuracy rising, a learning
rate schedule), float64, consecutive steps, one timestamp per step - what compresses like real
runs, unlike uniform random numbers (also reported, as the worst case).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest_embedded import OPTIONS, process_cpu_s  # noqa: E402
from runstream.v1 import ingest_pb2 as pb  # noqa: E402
from tests.chdb_inspect import query_folder  # noqa: E402
from tests.server_process import ServerProcess  # noqa: E402

KEYS = ["loss", "acc", "lr", "grad_norm", "val_loss", "val_acc", "tokens_per_s", "step_time"]


def training_values(first_step: int, steps: int, rng: np.random.Generator) -> np.ndarray:
    """(steps, len(KEYS)) float64 values shaped like a training run's curves."""
    s = np.arange(first_step, first_step + steps, dtype=np.float64)[:, None]
    base = np.hstack(
        [
            2.5 * np.exp(-s / 20_000) + 0.1,  # loss
            0.95 - 0.85 * np.exp(-s / 15_000),  # acc
            3e-4 * np.minimum(1.0, s / 2_000) * np.cos(np.minimum(s, 100_000) / 100_000 * np.pi / 2),  # lr
            1.0 + 0.5 * np.exp(-s / 5_000),  # grad_norm
            2.6 * np.exp(-s / 20_000) + 0.15,  # val_loss
            0.93 - 0.83 * np.exp(-s / 15_000),  # val_acc
            np.full_like(s, 52_000.0),  # tokens_per_s
            np.full_like(s, 0.21),  # step_time
        ]
    )
    return base * (1 + 0.02 * rng.standard_normal(base.shape))


def metric_request(
    run_id: str, first_step: int, steps: int, rng, *, uniform: bool = False
) -> pb.IngestRequest:
    values = rng.random((steps, len(KEYS))) if uniform else training_values(first_step, steps, rng)
    step_col = np.repeat(np.arange(first_step, first_step + steps, dtype="<i8"), len(KEYS))
    t0 = 1_760_000_000_000 + first_step * 210
    times = np.repeat(t0 + np.arange(steps, dtype="<i8") * 210, len(KEYS))
    return pb.IngestRequest(
        metrics=pb.MetricBatch(
            project="cap",
            run_id=run_id,
            keys=KEYS,
            key_index=np.tile(np.arange(len(KEYS), dtype="<u2"), steps).tobytes(),
            steps=step_col.tobytes(),
            values=values.astype("<f8").ravel().tobytes(),
            times_ms=times.tobytes(),
        )
    )


def wire_costs(rng) -> dict:
    import cramjam

    out = {}
    for label, uniform in (("training", False), ("uniform_random", True)):
        body = metric_request("run-wire", 0, 250, rng, uniform=uniform).SerializeToString()
        points = 250 * len(KEYS)
        out[label] = {
            "raw_bytes_per_point": round(len(body) / points, 2),
            "lz4_bytes_per_point": round(len(bytes(cramjam.lz4.compress_block(body))) / points, 2),
            "zstd_bytes_per_point": round(len(bytes(cramjam.zstd.compress(body))) / points, 2),
        }
    return out


def stream(endpoint: str, requests, window: int = 4) -> tuple[int, list[str]]:
    """Sends the serialized requests on one stream (at most `window` unacked); acked points."""
    channel = grpc.insecure_channel(endpoint, options=OPTIONS)
    call = channel.stream_stream(
        "/runstream.v1.IngestService/Ingest",
        request_serializer=lambda b: b,
        response_deserializer=pb.IngestResponse.FromString,
    )
    gate = threading.Semaphore(window)
    acked, errors = 0, []

    def feed():
        for r in requests:
            gate.acquire()
            yield r

    for answer in call(feed(), timeout=3600):
        gate.release()
        if answer.ok:
            acked += answer.points_accepted
        else:
            errors.append(answer.message)
    channel.close()
    return acked, errors


def framed(client_id: str, seq: int, body: pb.IngestRequest | None = None, run_id: str = "") -> bytes:
    head = pb.IngestRequest(seq=seq, client_id=client_id)
    if body is None:
        head.run_start.project, head.run_start.run_id = "cap", run_id
        return head.SerializeToString()
    return head.SerializeToString() + body.SerializeToString()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--points", type=int, default=2_000_000, help="points in large batches (CPU, storage)"
    )
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument(
        "--small-requests", type=int, default=6_000, help="10-point requests (CPU per request)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    result: dict = {"bench": "capacity_costs", "wire": wire_costs(rng)}

    data_dir = Path(tempfile.mkdtemp(prefix="rs-capacity-"))
    server = ServerProcess(data_dir, extra_args=["--log-level", "WARNING"]).start(timeout_s=120)
    try:
        # large batches: 8 keys x 2,500 steps = 20,000 points per request, one stream per run
        steps_per_req = 2_500
        per_run = args.points // args.runs
        cpu0, t0 = process_cpu_s(server.proc.pid), time.perf_counter()
        threads, acked = [], []
        for r in range(args.runs):
            run_id, cid = f"big-{r}", uuid.uuid4().hex
            reqs = [framed(cid, 1, run_id=run_id)] + [
                framed(cid, 2 + i, metric_request(run_id, i * steps_per_req, steps_per_req, rng))
                for i in range(per_run // (steps_per_req * len(KEYS)))
            ]
            t = threading.Thread(target=lambda reqs=reqs: acked.append(stream(server.endpoint, reqs)))
            threads.append(t)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        big_points = sum(a for a, _ in acked)
        big_cpu, big_s = process_cpu_s(server.proc.pid) - cpu0, time.perf_counter() - t0
        # small requests: 10 points each (one rank logging one step of 10 keys... 8 keys + 2 steps
        # kept simple: 1 step x 8 keys = 8 points, the shape of per-step logging), 16 clients
        clients = 16
        per_client = args.small_requests // clients
        cpu0, t0 = process_cpu_s(server.proc.pid), time.perf_counter()
        threads, acked_small = [], []
        for c in range(clients):
            run_id, cid = f"rank-{c}", uuid.uuid4().hex
            reqs = [framed(cid, 1, run_id=run_id)] + [
                framed(cid, 2 + i, metric_request(run_id, i, 1, rng)) for i in range(per_client)
            ]
            t = threading.Thread(
                target=lambda reqs=reqs: acked_small.append(stream(server.endpoint, reqs, 64))
            )
            threads.append(t)
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        small_cpu, small_s = process_cpu_s(server.proc.pid) - cpu0, time.perf_counter() - t0
        errors = [e for _, errs in acked + acked_small for e in errs]
    finally:
        server.stop(120)

    def q(sql: str):
        return query_folder(data_dir / "chdb", sql)

    q("OPTIMIZE TABLE runstream.metrics FINAL")
    parts = q(
        "SELECT table, sum(rows), sum(data_compressed_bytes), sum(data_uncompressed_bytes), sum(bytes_on_disk) "
        "FROM system.parts WHERE database = 'runstream' AND active GROUP BY table ORDER BY table"
    )
    by_table = {t: {"rows": int(r), "compressed": int(c), "uncompressed": int(u), "on_disk": int(d)}
                for t, r, c, u, d in parts}  # fmt: skip
    stored_points = by_table.get("metrics", {}).get("rows", 0)
    all_disk = sum(v["on_disk"] for v in by_table.values())
    result.update(
        {
            "large_batches": {
                "points": big_points,
                "seconds": round(big_s, 2),
                "points_per_s": round(big_points / big_s),
                "server_cpu_s_per_M_points": round(big_cpu / big_points * 1e6, 3),
            },
            "small_requests": {
                "requests": clients * per_client,
                "points_per_request": len(KEYS),
                "requests_per_s": round(clients * per_client / small_s),
                "server_cpu_ms_per_request": round(small_cpu / (clients * per_client) * 1e3, 3),
            },
            "storage": {
                "stored_points": stored_points,
                "metrics_bytes_on_disk_per_point": round(by_table["metrics"]["on_disk"] / stored_points, 2),
                "metrics_compression_ratio": round(
                    by_table["metrics"]["uncompressed"] / max(by_table["metrics"]["compressed"], 1), 1
                ),
                "all_tables_bytes_on_disk_per_point": round(all_disk / stored_points, 2),
                "tables": by_table,
            },
            "errors": errors[:3],
            "cpus": __import__("os").cpu_count(),
            "loadavg_1m": round(__import__("os").getloadavg()[0], 1),
        }
    )
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0 if not errors and stored_points == big_points + sum(a for a, _ in acked_small) else 1


if __name__ == "__main__":
    sys.exit(main())
