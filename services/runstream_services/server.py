"""`runstream server`: builds the components the settings ask for (ingest, writer, query) on the
chosen bus, metric store and artifact store, serves them on one grpc.aio server, exposes
Prometheus metrics, and shuts down gracefully on SIGTERM/SIGINT (stop reading, drain what is in
flight, stop the bus).

Programmatic use (benchmarks, `runstream up`)::

    server = build_from_settings(load_settings({"data_dir": "/tmp/rs"}))
    await server.start()          # server.port is the bound gRPC port
    ...
    await server.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any

import grpc

from runstream_services.auth.keys import ApiKeys, AuthInterceptor
from runstream_services.config import ServerSettings, load_settings
from runstream_services.errors import ConfigError, RunstreamServiceError
from runstream_services.grpc_errors import ErrorInterceptor
from runstream_services.grpc_health import health_handler
from runstream_services.ingest.service import IngestServicer, RunRegistry
from runstream_services.metrics_http import Metrics, MetricsHttpServer
from runstream_services.storage.clickhouse import ClientPool, connect
from runstream_services.storage.migrations import migrate

log = logging.getLogger("runstream.server")


def lookup_run_state(client: Any, database: str):
    """A RunRegistry lookup that asks the runs table (for processes without a store writer)."""

    def lookup(project: str, run_id: str) -> str | None:
        rows = client.query(
            f"SELECT state FROM {database}.runs FINAL WHERE project = %(p)s AND run_id = %(r)s",
            parameters={"p": project, "r": run_id},
        ).result_rows
        return rows[0][0] if rows else None

    return lookup


def _listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class RunstreamServer:
    """One server process. Attributes are filled by start(): client (ClickHouse), store_writer,
    artifact_store, bus, kafka_writer, ingest, query, metrics. `port` / `metrics_port` are the
    bound ports (pass port=0 for an ephemeral one)."""

    def __init__(self, settings: ServerSettings, *, port: int | None = None, metrics_port: int | None = None):
        self.settings = settings
        self.port = settings.port if port is None else port
        self.metrics_port = settings.metrics_port if metrics_port is None else metrics_port
        self.metrics = Metrics()
        self.client: Any = None
        self.store_writer: Any = None
        self.artifact_store: Any = None
        self.bus: Any = None
        self.kafka_writer: Any = None
        self.ingest: IngestServicer | None = None
        self.query: Any = None
        self.auth = ApiKeys.from_settings(settings)
        self._grpc: grpc.aio.Server | None = None
        self._metrics_http: MetricsHttpServer | None = None
        self._crash_watch: asyncio.Task | None = None
        self._started = False

    @property
    def components(self) -> tuple[str, ...]:
        return self.settings.components

    def _build_artifact_store(self):
        s = self.settings
        if s.artifact_store == "s3":
            from runstream_services.artifacts.s3 import S3ArtifactStore

            return S3ArtifactStore(s)
        from runstream_services.artifacts.local import LocalArtifactStore

        return LocalArtifactStore(s.resolved_artifact_dir)

    def _needs_store(self) -> bool:
        s = self.settings
        return "writer" in s.components or "query" in s.components or bool(s.clickhouse_dsn)

    async def start(self) -> None:
        s = self.settings
        if self._started:
            return
        self._started = True
        if s.resolved_clickhouse_dsn.startswith("chdb://") or s.artifact_store == "local":
            s.data_path.mkdir(parents=True, exist_ok=True)
        if self._needs_store():
            self.client = await asyncio.to_thread(connect, s.resolved_clickhouse_dsn)
            applied = await asyncio.to_thread(migrate, self.client, s.clickhouse_database)
            if applied:
                log.info("applied migrations %s to %s", applied, s.clickhouse_database)
        self.artifact_store = await asyncio.to_thread(self._build_artifact_store)
        if "writer" in s.components:
            from runstream_services.writers.store import StoreWriter

            self.store_writer = StoreWriter(
                self.client, s.clickhouse_database, self.artifact_store, s, metrics=self.metrics
            )
            if s.crash_after_s > 0:
                self._crash_watch = asyncio.create_task(self._watch_crashes(s.crash_after_s))
        if "ingest" in s.components:
            if s.bus == "kafka":
                from runstream_services.bus.kafka import KafkaBus

                self.bus = KafkaBus(s)
            else:
                from runstream_services.bus.embedded import EmbeddedBus

                self.bus = EmbeddedBus(self.store_writer, metrics=self.metrics)
            await self.bus.start()
        if s.bus == "kafka" and "writer" in s.components:
            from runstream_services.writers.kafka_consumer import KafkaWriterLoop

            self.kafka_writer = KafkaWriterLoop(s, self.store_writer)
            await self.kafka_writer.start()

        options = [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            # the SDK pings every 20 s to notice dead connections; accept that instead of answering
            # GOAWAY "too_many_pings" (gRPC's default tolerates one ping per 5 minutes)
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ]
        self._grpc = grpc.aio.server(
            interceptors=[AuthInterceptor(self.auth), ErrorInterceptor()], options=options
        )
        if "ingest" in s.components:
            if self.store_writer is not None:
                lookup = self.store_writer.run_state
            elif self.client is not None:
                lookup = lookup_run_state(self.client, s.clickhouse_database)
            else:
                lookup = None
            if s.bus == "kafka":  # runs published through any ingest process (bus/kafka.py)
                from runstream_services.bus.kafka import run_lookup

                lookup = run_lookup(self.bus, lookup)
            self.ingest = IngestServicer(
                self.bus,
                s,
                artifact_store=self.artifact_store,
                runs=RunRegistry(lookup, stored=self.store_writer.is_stored if self.store_writer else None),
                auth=self.auth,
                metrics=self.metrics,
            )
            self.ingest.add_to_server(self._grpc)
        if "query" in s.components:
            self._add_query_service()
        served = [
            name
            for name, on in (
                ("runstream.v1.IngestService", "ingest" in s.components),
                ("runstream.v1.QueryService", "query" in s.components),
            )
            if on
        ]
        self._grpc.add_generic_rpc_handlers((health_handler(tuple(served)),))
        try:
            bound = self._grpc.add_insecure_port(_listen_address(s.host, self.port))
        except RuntimeError as exc:
            bound = 0
            log.debug("bind failed: %s", exc)
        if not bound:
            await self.stop()
            raise ConfigError(
                f"cannot listen on {s.host}:{self.port}: the port is in use or the address is not local; "
                "choose another with --port"
            )
        self.port = bound
        await self._grpc.start()
        if self.metrics_port:
            self._metrics_http = MetricsHttpServer(self.metrics, s.host, self.metrics_port)
            try:
                await self._metrics_http.start()
                self.metrics_port = self._metrics_http.port
            except OSError as exc:
                log.warning(
                    "Prometheus endpoint disabled: cannot listen on port %s (%s)", self.metrics_port, exc
                )
                self._metrics_http = None
        log.info(
            "runstream server listening on %s:%s (components %s, bus %s, store %s, artifacts %s, metrics :%s)",
            s.host, self.port, ",".join(s.components), s.bus, s.resolved_clickhouse_dsn.split("://")[0],
            s.artifact_store, self.metrics_port or "off",
        )  # fmt: skip

    async def _watch_crashes(self, crash_after_s: float) -> None:
        """Marks runs whose process went silent as crashed (see StoreWriter.mark_crashed)."""
        interval_s = min(30.0, crash_after_s / 4)
        while True:
            await asyncio.sleep(interval_s)
            try:
                marked = await asyncio.to_thread(self.store_writer.mark_crashed, int(crash_after_s * 1000))
            except Exception:
                log.exception("crash detection failed; retrying in %ss", interval_s)
                continue
            for project, run_id in marked:
                log.info(
                    "run %s of project %s went silent for %ss: marked crashed", run_id, project, crash_after_s
                )
            self.metrics.inc("runstream_runs_crashed_total", len(marked))

    def _add_query_service(self) -> None:
        from runstream.v1 import query_pb2_grpc
        from runstream_services.query.service import QueryServicer

        s = self.settings
        readers = ClientPool(s.resolved_clickhouse_dsn)
        self.query = QueryServicer(
            self.client, s.clickhouse_database, self.artifact_store, s, auth=self.auth, readers=readers
        )
        query_pb2_grpc.add_QueryServiceServicer_to_server(self.query, self._grpc)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stops reading new requests, waits for what is in flight to be durable and acked, then
        stops the gRPC server, the Kafka writer and the bus. Idempotent."""
        if not self._started:
            return
        self._started = False
        if self._crash_watch is not None:
            self._crash_watch.cancel()
        if self.ingest is not None:
            try:
                await asyncio.wait_for(self.ingest.drain(), grace_s)
            except TimeoutError:
                log.warning(
                    "ingest drain took longer than %ss; unacked requests will be resent by clients", grace_s
                )
        if self._grpc is not None:
            await self._grpc.stop(grace_s)
        for part in (self.kafka_writer, self.bus, self._metrics_http):
            if part is not None:
                try:
                    await part.stop()
                except Exception:
                    log.exception("stopping %s failed", type(part).__name__)
        if self.store_writer is not None:
            self.store_writer.close()
        log.info("runstream server stopped")

    async def wait_for_termination(self) -> None:
        if self._grpc is not None:
            await self._grpc.wait_for_termination()


def build_from_settings(settings: ServerSettings, **kwargs: Any) -> RunstreamServer:
    """A server for these settings, not yet started (kwargs: port, metrics_port overrides)."""
    return RunstreamServer(settings, **kwargs)


async def serve(settings: ServerSettings) -> int:
    """Runs until SIGTERM/SIGINT, then shuts down gracefully."""
    server = build_from_settings(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await server.start()
    try:
        await stop.wait()
        log.info("shutting down: draining in-flight requests")
    finally:
        await server.stop()
    return 0


def main(args: Any, overrides: dict[str, Any]) -> int:
    """Entry point of `runstream server` (cli.py): args.config, args.log_level; overrides are flags."""
    logging.basicConfig(
        level=str(getattr(args, "log_level", "INFO") or "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(overrides, config_file=getattr(args, "config", None))
        return asyncio.run(serve(settings))
    except RunstreamServiceError as exc:
        log.error("%s", exc.message)
        return 2
    except KeyboardInterrupt:
        return 130
