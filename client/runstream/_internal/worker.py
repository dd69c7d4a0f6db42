"""The SDK's one background thread per process: an asyncio loop that owns the gRPC channels and
every run's pipeline. Rebuilt lazily in a forked child (the parent's thread does not exist there)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any

import grpc

from runstream.tls import PLAINTEXT, Tls, aio_channel

from .shared_stream import SharedIngest
from .stream import call_metadata

CHANNEL_OPTIONS = [
    # reconnect quickly once the server is back (gRPC's default backoff grows to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


class Worker:
    """An event loop in a daemon thread. Coroutines are submitted from any thread."""

    _instance: Worker | None = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._channels: dict[tuple[str, Tls], grpc.aio.Channel] = {}
        self._shared: dict[tuple[str, Tls, str], SharedIngest] = {}
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="runstream-worker", daemon=True)
        self.thread.start()
        self._ready.wait()

    @classmethod
    def get(cls) -> Worker:
        inst = cls._instance
        if inst is not None and inst.pid == os.getpid() and inst.thread.is_alive():
            return inst
        with cls._guard:
            inst = cls._instance
            if inst is None or inst.pid != os.getpid() or not inst.thread.is_alive():
                inst = cls._instance = Worker()
            return inst

    @classmethod
    def forget_after_fork(cls) -> None:
        """In a forked child: the parent's loop thread is gone; never touch its objects."""
        cls._instance = None
        cls._guard = threading.Lock()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        self.loop.run_forever()

    def submit(self, coro: Coroutine) -> Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine, timeout: float | None = None) -> Any:
        return self.submit(coro).result(timeout)

    def run_soon(self, fn: Callable[..., Any], *args) -> Future:
        """fn(*args) on the loop thread, its result or error in the Future: for work that never
        awaits, without the Task and the chained futures a coroutine costs (a run's set-up was ~5 %
        of the worker thread in a loop of short runs)."""
        future: Future = Future()

        def call() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as exc:
                future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise

        self.loop.call_soon_threadsafe(call)
        return future

    def call_soon(self, fn, *args) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def channel(self, endpoint: str, tls: Tls = PLAINTEXT) -> grpc.aio.Channel:
        """The shared channel to `endpoint`, secured as `tls` says; call from the loop thread only."""
        ch = self._channels.get((endpoint, tls))
        if ch is None:
            ch = self._channels[(endpoint, tls)] = aio_channel(endpoint, tls, CHANNEL_OPTIONS)
        return ch

    def shared_ingest(self, settings) -> SharedIngest:
        """The Ingest stream the runs of this process share for `settings`' server and key
        (shared_stream.py); call from the loop thread only."""
        tls = settings.tls_config
        key = (settings.endpoint, tls, settings.api_key)
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared[key] = SharedIngest(
                self.channel(settings.endpoint, tls),
                call_metadata(settings.api_key),
                settings.reconnect_initial_s,
                settings.reconnect_max_s,
            )
        return shared
