"""The embedded bus: publish() hands envelopes straight to the in-process sink (the StoreWriter)
and returns once they are inserted. The insert is the durability point in embedded mode."""

from __future__ import annotations

import asyncio
import concurrent.futures

from runstream_services.bus.base import Envelope, Sink, WriteResult
from runstream_services.errors import Unavailable
from runstream_services.metrics_http import Metrics


class EmbeddedBus:
    """Runs Sink.write in a small thread pool (chDB releases the GIL while inserting, so several
    inserts overlap)."""

    kind = "embedded"

    def __init__(self, sink: Sink, *, threads: int = 4, metrics: Metrics | None = None):
        self.sink = sink
        self.threads = threads
        self.metrics = metrics or Metrics()
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.threads, thread_name_prefix="runstream-writer"
            )

    async def publish(self, envelopes: list[Envelope]) -> WriteResult:
        if self._pool is None:
            raise Unavailable(
                "the embedded bus is stopped (server shutting down); retry against a running server"
            )
        self._active += 1
        self._idle.clear()
        self.metrics.set("runstream_writer_queue", self._active)
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, self.sink.write, envelopes)
        finally:
            self._active -= 1
            self.metrics.set("runstream_writer_queue", self._active)
            if not self._active:
                self._idle.set()

    async def ping(self) -> None:
        """In-process: nothing to reach (the store has its own readiness probe)."""

    async def stop(self) -> None:
        """Waits for the writes in progress, then shuts the pool down. Idempotent."""
        await self._idle.wait()
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
