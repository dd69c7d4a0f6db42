"""Prometheus metrics: a small thread-safe registry of counters and gauges, and an asyncio HTTP
endpoint that serves it as text on GET /metrics."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger("runstream.metrics")

# name -> (type, help); every metric the services report is declared here.
DECLARED = {
    "runstream_ingest_requests_total": ("counter", "Ingest requests answered, by status (grpc code name)"),
    "runstream_ingest_points_total": ("counter", "Metric points accepted and durable"),
    "runstream_ingest_batches_total": ("counter", "Metric batches accepted and durable"),
    "runstream_ingest_inflight": ("gauge", "Ingest requests published but not yet durable"),
    "runstream_ingest_streams": ("gauge", "Open ingest streams"),
    "runstream_writer_envelopes_total": ("counter", "Envelopes handled by the store writer, by outcome"),
    "runstream_writer_points_total": ("counter", "Metric points inserted by the store writer"),
    "runstream_writer_insert_seconds_total": ("counter", "Time spent in store inserts, by table"),
    "runstream_writer_inserts_total": ("counter", "Store inserts, by table"),
    "runstream_writer_queue": ("gauge", "Write calls waiting for or running in the writer pool"),
    "runstream_writer_lag_seconds": ("gauge", "Age of the last stored envelope when it was stored"),
    "runstream_errors_total": ("counter", "Unexpected errors, by component"),
    "runstream_artifact_bytes_total": ("counter", "Artifact bytes stored"),
    "runstream_gc_collections_total": ("counter", "Cyclic garbage collections, by generation"),
    "runstream_gc_pause_seconds_total": ("counter", "Time the process spent in them, by generation"),
}

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Counters and gauges keyed by (name, labels). Components get one instance from the server;
    extra sources (e.g. the Kafka writer's lag) can register a collector."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, Labels], float] = {}
        self._collectors: list[Callable[[], Iterable[tuple[str, dict[str, str], float]]]] = []

    def inc(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = self.key(name, **labels) if labels else (name, ())
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + value

    @staticmethod
    def key(name: str, **labels: str) -> tuple[str, Labels]:
        """A metric's key for inc_many, computed once by a caller on a hot path."""
        return (name, tuple(sorted(labels.items())))

    def inc_many(self, updates: Iterable[tuple[tuple[str, Labels], float]]) -> None:
        """Adds to several counters (keys from Metrics.key) under one lock acquisition."""
        values = self._values
        with self._lock:
            for key, value in updates:
                values[key] = values.get(key, 0.0) + value

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = float(value)

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0.0)

    def add_collector(self, collect: Callable[[], Iterable[tuple[str, dict[str, str], float]]]) -> None:
        """`collect()` yields (name, labels, value) at scrape time."""
        self._collectors.append(collect)

    def render(self) -> str:
        with self._lock:
            items = list(self._values.items())
        for collect in self._collectors:
            try:
                items += [((n, tuple(sorted(lab.items()))), v) for n, lab, v in collect()]
            except Exception:
                log.exception("metrics collector failed")
        by_name: dict[str, list[tuple[Labels, float]]] = {}
        for (name, labels), value in items:
            by_name.setdefault(name, []).append((labels, value))
        lines = []
        for name in sorted(by_name):
            kind, help_text = DECLARED.get(name, ("untyped", name))
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in sorted(by_name[name]):
                label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                lines.append(f"{name}{{{label_text}}} {value:.17g}" if labels else f"{name} {value:.17g}")
        return "\n".join(lines) + "\n"


class MetricsHttpServer:
    """Serves GET /metrics in the Prometheus text format, and the HTTP health checks: /livez (200
    while the process answers) and /readyz (200, or 503 with the reason while the store or Kafka
    is unreachable or the server drains: the same answer as grpc.health.v1 `readiness`). HTTP
    probes are what the kubelet can use when the gRPC port speaks TLS, and on writers, which
    serve no gRPC. Anything else is 404."""

    def __init__(self, metrics: Metrics, host: str, port: int, readiness=None):
        self.metrics = metrics
        self.host = host
        self.port = port
        self.readiness = readiness  # grpc_health.Readiness, or None: always ready
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while await asyncio.wait_for(reader.readline(), 5) not in (b"\r\n", b"\n", b""):
                pass
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 and parts[0] == "GET" else None
            ctype = "text/plain"
            if path == "/metrics":
                status, body, ctype = "200 OK", self.metrics.render().encode(), "text/plain; version=0.0.4"
            elif path == "/livez":
                status, body = "200 OK", b"alive\n"
            elif path == "/readyz":
                why = await self.readiness.reason() if self.readiness is not None else None
                status, body = (
                    ("200 OK", b"ready\n")
                    if why is None
                    else ("503 Service Unavailable", f"{why}\n".encode())
                )
            else:
                status, body = "404 Not Found", b"GET /metrics, /readyz or /livez\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
