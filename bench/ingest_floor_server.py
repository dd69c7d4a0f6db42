"""The floor of the many_writers `ranks` row: a bare grpc.aio server with Runstream's Ingest contract
that decodes each request and acks it, and stores, checks and logs nothing.

Not a product part: bench/many_writers.py (`--only floor`) offers it the same ranks load as the real
server, so the report shows how much of a request's cost is gRPC's own in Python on this machine
(receive, decode, answer), and how much is Runstream's (validation, admission, group commit, store).
Acks go out as Runstream's batched acks do (one IngestResponse: seq + also_ok), for what arrived in
each 2 ms tick: one message per request would make the floor cost more than the real server.

    .venv/bin/python bench/ingest_floor_server.py     # prints "port N" once it listens
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "client"))

from runstream.v1 import ingest_pb2 as pb  # noqa: E402

ACK_TICK_S = 0.002


async def ingest(request_iterator, context):
    seqs: list[int] = []
    ended = asyncio.Event()

    async def read() -> None:
        async for request in request_iterator:
            seqs.append(request.seq)
        ended.set()

    reader = asyncio.create_task(read())
    try:
        while not (ended.is_set() and not seqs):
            await asyncio.sleep(ACK_TICK_S)
            if seqs:
                batch, seqs[:] = list(seqs), []
                yield pb.IngestResponse(seq=batch[0], ok=True, also_ok=batch[1:])
    finally:
        reader.cancel()


async def main() -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20)])
    handler = grpc.stream_stream_rpc_method_handler(
        ingest,
        request_deserializer=pb.IngestRequest.FromString,
        response_serializer=pb.IngestResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("runstream.v1.IngestService", {"Ingest": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"port {port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
