"""Runstream's own CPU per ingest request, without gRPC: the many_writers `ranks` shape (1,000 ranks
of one run, one step of 10 metrics per request) fed straight into an in-process embedded server's
ingest streams, as its gRPC reader would hand them over (one decoded message per loop turn), and
acked through the same path (validation, admission, the embedded bus's group commit, block log,
staging, the store writer's chDB inserts, the read cache).

Not a product part: the `ranks` row of bench/many_writers.py pays gRPC's per-message cost on both
ends as well (bench/ingest_floor_server.py measures that alone); this measures the rest, in one
process, so a change to the ingest path can be compared in seconds with little noise.

    .venv/bin/python bench/ingest_own_cost.py                      # 100,000 requests, 3 runs
    .venv/bin/python bench/ingest_own_cost.py --requests 20000 --runs 1 --json out.json

Prints, per run, the process's CPU per request (every thread: the writer's inserts too) and the
rate the requests were acked at; then the median CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "client"), str(ROOT / "services"), str(ROOT)]

from bench.many_writers import RankRequests, _run_start  # noqa: E402
from runstream_services.config import ServerSettings  # noqa: E402
from runstream_services.ingest.service import _decode_request, _IngestStream  # noqa: E402
from runstream_services.server import RunstreamServer  # noqa: E402


async def _fed(payloads: list[bytes]):
    """The requests as gRPC's reader yields them: decoded, one per turn of the loop."""
    for raw in payloads:
        yield _decode_request(raw)
        await asyncio.sleep(0)


async def _acks(stream: _IngestStream) -> int:
    acked = 0
    while (item := await stream.responses.get()) is not None:
        if type(item) is not tuple:  # a refusal: an IngestResponse
            raise RuntimeError(f"request {item.seq} was refused: {item.message}")
        acked += 1
    return acked


async def one_run(n_requests: int, n_ranks: int, n_streams: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="rs-own-cost-") as tmp:
        server = RunstreamServer(ServerSettings(data_dir=tmp), port=0, metrics_port=0)
        await server.start()
        try:
            run_id = f"own-{uuid.uuid4().hex[:8]}"
            ranks = [RankRequests(run_id, r) for r in range(n_ranks)]
            payloads = [ranks[i % n_ranks].next() for i in range(n_requests)]
            start = _IngestStream(server.ingest, None)
            acks = asyncio.create_task(_acks(start))
            await start.read(_fed([_run_start(ranks[0].client_id, 0, run_id)]))
            await acks
            streams = [_IngestStream(server.ingest, None) for _ in range(n_streams)]
            acking = [asyncio.create_task(_acks(s)) for s in streams]
            cpu0, t0 = time.process_time(), time.perf_counter()
            await asyncio.gather(*(s.read(_fed(payloads[k::n_streams])) for k, s in enumerate(streams)))
            acked = sum(await asyncio.gather(*acking))
            cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - t0
        finally:
            await server.stop()
    if acked != n_requests:
        raise RuntimeError(f"{acked} of {n_requests} requests acked")
    return {
        "requests": n_requests,
        "cpu_us_per_request": round(cpu_s * 1e6 / n_requests, 1),
        "requests_per_s": round(n_requests / wall_s),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests per run")
    parser.add_argument("--ranks", type=int, default=1000)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3, help="runs, each on a fresh server")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # one run, in this process
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(one_run(args.requests, args.ranks, args.streams))))
        return 0
    runs = []
    for _ in range(args.runs):  # each in a process of its own: chDB opens one folder per process
        child = [sys.executable, __file__, "--child", "--requests", str(args.requests)]
        child += ["--ranks", str(args.ranks), "--streams", str(args.streams)]
        done = subprocess.run(child, check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(result), flush=True)
        runs.append(result)
    out = {
        "cpu_us_per_request_median": statistics.median(r["cpu_us_per_request"] for r in runs),
        "runs": runs,
    }
    print(json.dumps({"median": out["cpu_us_per_request_median"]}))
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
