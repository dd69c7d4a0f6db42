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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc

from runstream_services.artifacts.base import ArtifactStore
from runstream_services.auth.keys import ApiKeys, AuthInterceptor
from runstream_services.bus.base import Bus
from runstream_services.config import ServerSettings, load_settings
from runstream_services.errors import ConfigError, RunstreamServiceError
from runstream_services.gc_tuning import tune_gc
from runstream_services.grpc_errors import ErrorInterceptor
from runstream_services.grpc_health import Probe, Readiness, health_handler
from runstream_services.ingest.service import IngestServicer
from runstream_services.metrics_http import Metrics, MetricsHttpServer
from runstream_services.run_state import RunRegistry, RunsTable, RunStateSource
from runstream_services.storage.clickhouse import ClientPool, connect, is_chdb
from runstream_services.storage.migrate_command import require_current
from runstream_services.storage.migrations import migrate
from runstream_services.tls import server_credentials
from runstream_services.workflow_services import WorkflowServices

if TYPE_CHECKING:  # imported where used: a process loads only the parts its settings ask for
    from clickhouse_connect.driver.client import Client

    from runstream_services.bus.kafka import RunDirectory
    from runstream_services.query.service import QueryServicer
    from runstream_services.writers.kafka_consumer import KafkaWriterLoop
    from runstream_services.writers.store import StoreWriter

log = logging.getLogger("runstream.server")


def _listen_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _warn_if_exposed(s: ServerSettings, *, tls: bool) -> None:
    """Says so in the log when a non-loopback port is open without auth or without TLS."""
    if s.host in ("127.0.0.1", "::1", "localhost"):
        return
    if not s.auth_required:
        log.warning(
            "listening on %s with auth_required=false: anyone who reaches it may read and write", s.host
        )
    if not tls:
        log.warning(
            "listening on %s without TLS: API keys and data travel in clear text (see --tls-cert-file)",
            s.host,
        )


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class GenericHandlersOnly:
    """The gRPC server as the generated add_*Servicer_to_server functions see it: they add each
    service twice, as a generic handler and as registered methods; this keeps the generic one.
    grpcio's aio server waits for the next call of every registered method with a future of its
    own, and runs asyncio.wait over all of them (~40 here) for each call it takes: measured ~40 µs
    of a small query's ~0.7 ms of server CPU. A generic handler per service, looked up by the
    service name, costs less and answers the same."""

    def __init__(self, server: grpc.aio.Server):
        self._server = server

    def add_generic_rpc_handlers(self, handlers) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers) -> None:
        """Left out on purpose (see the class)."""


def _grpc_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """Transport limits. A message over max_message_bytes ends its own stream with
    RESOURCE_EXHAUSTED (gRPC refuses it before any handler sees it); other streams go on."""
    s = settings
    options = [
        ("grpc.max_receive_message_length", s.max_message_bytes),
        ("grpc.max_send_message_length", s.max_message_bytes),
        ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        ("grpc.max_concurrent_streams", s.grpc_max_concurrent_streams),
        # a connection with no call for this long is closed (GOAWAY); the client reconnects on use
        ("grpc.max_connection_idle_ms", _ms(s.grpc_max_connection_idle_s)),
        # the server pings a silent client and drops the connection when no answer comes
        ("grpc.keepalive_time_ms", _ms(s.grpc_keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", _ms(s.grpc_keepalive_timeout_s)),
        # the SDK pings every 20 s to notice dead connections; accept that instead of answering
        # GOAWAY "too_many_pings" (gRPC's default tolerates one ping per 5 minutes), but close a
        # connection that pings more often than every 10 s, twice
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 2),
    ]
    if s.grpc_max_connection_age_s > 0:  # spreads long-lived SDK streams over replicas
        options += [
            ("grpc.max_connection_age_ms", _ms(s.grpc_max_connection_age_s)),
            ("grpc.max_connection_age_grace_ms", _ms(s.grpc_max_connection_age_grace_s)),
        ]
    return options


class RunstreamServer:
    """One server process. start() wires the components the settings ask for, in this order:

    1. the store: ClickHouse client (+ migrations) and the artifact store;
    2. the store writer (components has "writer"), the Sink of either bus;
    3. the bus ingest publishes to (components has "ingest"): embedded (straight into the writer)
       or Kafka;
    4. the Kafka writer loop (bus kafka + "writer"): Kafka -> the store writer;
    5. the run registry ingest checks runs against (run_state.RunRegistry);
    6. the gRPC services (ingest, query, health), then the Prometheus endpoint.

    Attributes are None for components this process does not run. `port` / `metrics_port` are
    the bound ports (pass port=0 for an ephemeral one)."""

    def __init__(self, settings: ServerSettings, *, port: int | None = None, metrics_port: int | None = None):
        self.settings = settings
        self.port = settings.port if port is None else port
        self.metrics_port = settings.metrics_port if metrics_port is None else metrics_port
        self.metrics = Metrics()
        self.client: Client | None = None
        self.artifact_store: ArtifactStore | None = None
        self.store_writer: StoreWriter | None = None
        self.bus: Bus | None = None
        self.kafka_writer: KafkaWriterLoop | None = None
        self.run_directory: RunDirectory | None = None
        self.runs: RunRegistry | None = None
        self.ingest: IngestServicer | None = None
        self.query: QueryServicer | None = None
        self.auth = ApiKeys.from_settings(settings)
        self._grpc: grpc.aio.Server | None = None
        self._metrics_http: MetricsHttpServer | None = None
        self._ready: Readiness | None = None
        self._crash_watch: asyncio.Task | None = None
        self.workflow: WorkflowServices | None = None  # run edits and alerts
        self._started = False
        self._stopping = False  # readiness answers NOT_SERVING from the moment stop() begins

    @property
    def components(self) -> tuple[str, ...]:
        return self.settings.components

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        await self._open_store()
        self._build_store_writer()
        if self._needs_store():
            self.workflow = WorkflowServices(
                self.settings, self.auth, self.store_writer, before_read=self._read_barrier()
            )
            self.workflow.start()
        await self._start_bus()
        await self._start_kafka_writer()
        self.runs = self._build_run_registry()
        await self._serve_grpc()
        await self._serve_metrics()
        s = self.settings
        log.info(
            "runstream server listening on %s:%s (components %s, bus %s, store %s, artifacts %s, metrics :%s)",
            s.host, self.port, ",".join(s.components), s.bus, s.resolved_clickhouse_dsn.split("://")[0],
            s.artifact_store, self.metrics_port or "off",
        )  # fmt: skip

    # ---- 1. store -----------------------------------------------------------------------------

    def _needs_store(self) -> bool:
        s = self.settings
        return "writer" in s.components or "query" in s.components or bool(s.clickhouse_dsn)

    async def _open_store(self) -> None:
        s = self.settings
        if is_chdb(s.resolved_clickhouse_dsn) or s.artifact_store == "local":
            s.data_path.mkdir(parents=True, exist_ok=True)
        if self._needs_store():
            self.client = await asyncio.to_thread(connect, s.resolved_clickhouse_dsn)
            if s.migrate_on_start:
                applied = await asyncio.to_thread(migrate, self.client, s.clickhouse_database)
                if applied:
                    log.info("applied migrations %s to %s", applied, s.clickhouse_database)
            else:
                await asyncio.to_thread(require_current, self.client, s.clickhouse_database)
        self.artifact_store = await asyncio.to_thread(self._build_artifact_store)

    def _build_artifact_store(self) -> ArtifactStore:
        s = self.settings
        if s.artifact_store == "s3":
            from runstream_services.artifacts.s3 import S3ArtifactStore

            return S3ArtifactStore(s)
        from runstream_services.artifacts.local import LocalArtifactStore

        return LocalArtifactStore(s.resolved_artifact_dir)

    # ---- 2. store writer ----------------------------------------------------------------------

    def _build_store_writer(self) -> None:
        s = self.settings
        if "writer" not in s.components:
            return
        from runstream_services.writers.store import StoreWriter

        assert self.client is not None and self.artifact_store is not None
        self.store_writer = StoreWriter(
            self.client,
            s.clickhouse_database,
            self.artifact_store,
            s,
            metrics=self.metrics,
            sole_writer=sole_writer(s),
        )
        if s.crash_after_s > 0:
            self._crash_watch = asyncio.create_task(self._watch_crashes(self.store_writer, s.crash_after_s))

    # ---- 3. bus -------------------------------------------------------------------------------

    async def _start_bus(self) -> None:
        s = self.settings
        if "ingest" not in s.components:
            return
        if s.bus == "kafka":
            from runstream_services.bus.kafka import KafkaBus

            kafka = KafkaBus(s)
            self.run_directory = kafka.directory
            self.bus = kafka
        else:
            from runstream_services.bus.embedded import EmbeddedBus

            assert self.store_writer is not None  # settings.validate(): embedded keeps the writer
            self.bus = EmbeddedBus(
                self.store_writer,
                log_dir=s.data_path / "blocks",
                max_block_points=s.writer_max_block_points,
                max_blocks=s.writer_blocks_in_flight,
                gather_s=s.writer_gather_ms / 1000,
                metrics=self.metrics,
            )
        await self.bus.start()

    # ---- 4. Kafka writer ----------------------------------------------------------------------

    async def _start_kafka_writer(self) -> None:
        s = self.settings
        if s.bus != "kafka" or self.store_writer is None:
            return
        from runstream_services.writers.kafka_consumer import KafkaWriterLoop

        self.kafka_writer = KafkaWriterLoop(s, self.store_writer, client=self.client, metrics=self.metrics)
        await self.kafka_writer.start()

    # ---- 5. run registry ----------------------------------------------------------------------

    def _build_run_registry(self) -> RunRegistry | None:
        """Where ingest learns which runs exist: the Kafka run directory (runs published through
        any ingest process), then the store (this process's writer, or a query of the runs
        table when it runs none)."""
        if "ingest" not in self.settings.components:
            return None
        store: RunStateSource | None = self.store_writer
        if store is None and self.client is not None:
            store = RunsTable(self.client, self.settings.clickhouse_database)
        replays = replays_now = None
        if self.store_writer is not None:
            replays, replays_now = self.store_writer.is_stored, self.store_writer.is_stored_now
        elif self.client is not None:
            from runstream_services.writers.client_seqs import StoredSeqsQuery

            replays = StoredSeqsQuery(self.client, self.settings.clickhouse_database)
        return RunRegistry(
            directory=self.run_directory, store=store, replays=replays, replays_now=replays_now
        )

    # ---- 6. gRPC and metrics endpoints --------------------------------------------------------

    async def _serve_grpc(self) -> None:
        s = self.settings
        self._grpc = grpc.aio.server(
            interceptors=[AuthInterceptor(self.auth), ErrorInterceptor()], options=_grpc_options(s)
        )
        creds = server_credentials(s)  # None: plaintext
        _warn_if_exposed(s, tls=creds is not None)
        served = []
        services = GenericHandlersOnly(self._grpc)
        if "ingest" in s.components:
            assert self.bus is not None and self.runs is not None
            self.ingest = IngestServicer(
                self.bus, s, artifact_store=self.artifact_store, runs=self.runs, auth=self.auth,
                metrics=self.metrics,
            )  # fmt: skip
            self.ingest.add_to_server(services)
            served.append("runstream.v1.IngestService")
            if hasattr(self.bus, "open_streams"):  # the embedded bus's idle gather asks it
                self.bus.open_streams = self.ingest.open_streams
        if "query" in s.components:
            self._add_query_service(services)
            served.append("runstream.v1.QueryService")
            self._add_registry_service(services, served)
            if self.workflow is not None:
                self.workflow.add_to_server(services, served)
        self._grpc.add_generic_rpc_handlers((health_handler(tuple(served), self._readiness()),))
        try:
            address = _listen_address(s.host, self.port)
            bound = (
                self._grpc.add_secure_port(address, creds) if creds else self._grpc.add_insecure_port(address)
            )
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

    def _readiness(self) -> Readiness:
        """NOT_SERVING while stopping or draining, or while the store or Kafka does not answer.
        One instance serves grpc.health.v1 and the metrics port's /readyz."""
        if self._ready is not None:
            return self._ready
        probes: dict[str, Probe] = {}
        client = self.client
        if client is not None:

            async def store() -> None:
                await asyncio.to_thread(client.query, "SELECT 1")

            probes["store"] = store
        if self.bus is not None and self.settings.bus == "kafka":
            probes["kafka"] = self.bus.ping
        elif self.kafka_writer is not None:
            probes["kafka"] = self.kafka_writer.ping
        self._ready = Readiness(
            draining=lambda: self._stopping or (self.ingest is not None and self.ingest.draining),
            probes=probes,
        )
        return self._ready

    def _add_query_service(self, server: grpc.aio.Server) -> None:
        from runstream.v1 import query_pb2_grpc
        from runstream_services.query.service import QueryServicer

        s = self.settings
        readers = ClientPool(s.resolved_clickhouse_dsn, before_read=self._read_barrier())
        cache = None
        if self.store_writer is not None and sole_writer(s):
            from runstream_services.query.read_cache import ReadCache

            cache = ReadCache(readers, s.clickhouse_database)
            self.store_writer.subscribe(cache.on_stored)
            self.store_writer.subscribe_staged(cache.on_staged, cache.on_failed, cache.free_now)
            self.store_writer.subscribe_projects(cache.on_new_project)
        self.query = QueryServicer(
            self.client, s.clickhouse_database, self.artifact_store, s, auth=self.auth, readers=readers,
            cache=cache,
        )  # fmt: skip
        query_pb2_grpc.add_QueryServiceServicer_to_server(self.query, server)

    def _read_barrier(self) -> Callable[[], None] | None:
        """What a read waits for first: on the embedded bus, the inserts of the requests acked
        before it (they are acked from the block log); None elsewhere."""
        if self.settings.bus != "embedded" or "ingest" not in self.settings.components:
            return None

        def wait_applied() -> None:
            wait = getattr(self.bus, "wait_applied", None)  # the bus starts after the workflow pools
            if wait is not None:
                wait()

        return wait_applied

    def _add_registry_service(self, server: grpc.aio.Server, served: list[str]) -> None:
        """The model registry (registry/service.py), served wherever the query service is: it
        writes its rare changes straight to the store from this process, on its own clients."""
        from runstream.v1 import registry_pb2_grpc
        from runstream_services.registry.service import RegistryServicer

        s = self.settings
        readers = ClientPool(s.resolved_clickhouse_dsn, size=2, before_read=self._read_barrier())
        registry = RegistryServicer(readers, s.clickhouse_database, self.auth)
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, server)
        served.append("runstream.v1.RegistryService")

    async def _serve_metrics(self) -> None:
        if not self.metrics_port:
            return
        self._metrics_http = MetricsHttpServer(
            self.metrics, self.settings.host, self.metrics_port, readiness=self._readiness()
        )
        try:
            await self._metrics_http.start()
            self.metrics_port = self._metrics_http.port
        except OSError as exc:
            log.warning("Prometheus endpoint disabled: cannot listen on port %s (%s)", self.metrics_port, exc)
            self._metrics_http = None

    # ---- running ------------------------------------------------------------------------------

    async def _watch_crashes(self, writer: StoreWriter, crash_after_s: float) -> None:
        """Marks runs whose process went silent as crashed (see StoreWriter.mark_crashed)."""
        interval_s = min(30.0, crash_after_s / 4)
        while True:
            await asyncio.sleep(interval_s)
            try:
                owns = self.kafka_writer.owns_run if self.kafka_writer is not None else None
                marked = await asyncio.to_thread(writer.mark_crashed, int(crash_after_s * 1000), owns=owns)
            except Exception:
                log.exception("crash detection failed; retrying in %ss", interval_s)
                continue
            for project, run_id in marked:
                log.info(
                    "run %s of project %s went silent for %ss: marked crashed", run_id, project, crash_after_s
                )
            self.metrics.inc("runstream_runs_crashed_total", len(marked))

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stops reading new requests, waits for what is in flight to be durable and acked, then
        stops the gRPC server, the Kafka writer and the bus. Idempotent."""
        if not self._started:
            return
        self._started = False
        self._stopping = True
        if self.settings.shutdown_delay_s > 0 and self.ingest is not None:
            log.info("not ready; draining in %ss", self.settings.shutdown_delay_s)
            await asyncio.sleep(self.settings.shutdown_delay_s)  # still serving meanwhile
        if self._crash_watch is not None:
            self._crash_watch.cancel()
        if self.workflow is not None:
            self.workflow.close()
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
    tune_gc(server.metrics)
    try:
        await stop.wait()
        log.info("shutting down: draining in-flight requests")
    finally:
        await server.stop()
    return 0


def sole_writer(settings: ServerSettings) -> bool:
    """True when a writer in this process is the only writer its database can have, the one case
    where an in-process copy of read projects (query/read_cache.py) stays exact: the embedded bus,
    and the Kafka bus on chDB, whose engine locks its folder to one process (a second one fails
    with CANNOT_OPEN_FILE), so no writer elsewhere reaches it. With a ClickHouse server other
    writers may share the database: reads are SQL only."""
    return settings.bus == "embedded" or is_chdb(settings.resolved_clickhouse_dsn)


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
