"""Server settings: flag > environment (`RUNSTREAM_<FIELD>`) > config file (TOML) > default.
Validated once at start; unknown keys are refused so a typo never silently falls back."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from runstream_services.errors import ConfigError

COMPONENTS = ("ingest", "writer", "query")


@dataclass(frozen=True)
class ServerSettings:
    """Everything `runstream server` needs. The defaults are the embedded mode: chDB under
    data_dir, artifacts in a local folder, no Kafka, loopback only."""

    host: str = "127.0.0.1"
    port: int = 7777
    metrics_port: int = 7778  # Prometheus /metrics; 0 disables it
    data_dir: str = "~/.runstream"
    components: tuple[str, ...] = COMPONENTS  # which parts this process runs
    # bus
    bus: str = "embedded"  # embedded | kafka
    kafka_bootstrap: str = ""
    kafka_topic_prefix: str = "runstream"
    kafka_group_id: str = "runstream-writers"
    # topics (set when the bus creates them; existing topics are left as they are): partitions
    # bound how many writers are busy; replication 3 with min ISR 2 survives one broker lost with
    # acks=all. A replication factor below 3 (or a cluster with fewer brokers) is refused unless
    # kafka_allow_under_replicated (a development cluster, the tests' single broker)
    kafka_partitions: int = 6
    kafka_replication_factor: int = 3
    kafka_min_insync_replicas: int = 2
    kafka_allow_under_replicated: bool = False
    kafka_retention_hours: float = 168.0  # how long unconsumed records wait for the writers
    kafka_compression: str = "auto"  # auto (zstd, else lz4) | lz4 | zstd | gzip | none
    # static group membership (KIP-345): a writer that restarts under the same id within the
    # session timeout gets its partitions back without a rebalance of the whole group; the Helm
    # chart's writer StatefulSet sets it to the pod name. "": dynamic membership
    kafka_group_instance_id: str = ""
    # metric store
    clickhouse_dsn: str = ""  # default: chdb://<data_dir>/chdb
    clickhouse_database: str = "runstream"
    # apply missing schema migrations at start (embedded default). With false, a separate
    # `runstream migrate` (the Helm pre-install/upgrade Job) applies them once and the server
    # refuses to start while the schema lacks a migration it needs
    migrate_on_start: bool = True
    # artifact store
    artifact_store: str = "local"  # local | s3
    artifact_dir: str = ""  # default: <data_dir>/artifacts
    s3_endpoint: str = ""  # host:port
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = "runstream-artifacts"
    s3_secure: bool = False
    # auth
    auth_required: bool = False
    api_keys_file: str = ""  # JSON: {"<key>": {"project": "p" or "*", "role": "read|write|admin"}}
    # TLS on the gRPC port (runstream_services/tls.py): certificate chain and key (PEM); a client
    # CA turns on mTLS (clients must present a certificate it signed)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # limits
    max_batch_points: int = 1_000_000
    max_message_bytes: int = 64 * 1024 * 1024
    max_inline_artifact_bytes: int = 1024 * 1024
    max_artifact_bytes: int = 5 << 30  # UploadArtifact refuses larger files (S3's single-PUT limit)
    crash_after_s: float = 300.0  # a running run unheard of this long is marked crashed; 0: never
    writer_flush_interval_s: float = 0.2
    writer_max_block_points: int = 2_000_000
    # embedded bus: group-commit blocks inserted at once; a second one only for large blocks
    # (bus/embedded.py OVERLAP_MIN_POINTS says why)
    writer_blocks_in_flight: int = 2
    # while several ingest streams are open, an idle embedded bus waits this long for more
    # requests before it writes a block (0: never; bus/embedded.py GATHER_S says why)
    writer_gather_ms: float = 1.0
    # requests one Ingest stream may have read and not yet answered (many ranks multiplexed on a
    # few streams need a deep pipeline to fill group-commit blocks), and their bytes. 8192: at
    # 1024, 4 streams of packed ranks capped blocks near 2,000 requests (one in flight, one
    # waiting) and 16,000 requests/s was not held; at 8192 blocks of ~6,000 held 20,000 (issue 11)
    ingest_inflight_requests: int = 8192
    ingest_inflight_bytes: int = 256 * 1024 * 1024
    # a run_start/run_update's config (+ run context) above this is refused per request; kept
    # below the transport limit (see config_limit_bytes) so it is answered, not a dead stream
    max_config_bytes: int = 8 * 1024 * 1024
    # gRPC server limits: open Ingest streams per process (more are refused RESOURCE_EXHAUSTED),
    # HTTP/2 streams per connection, connections without calls, connection lifetime (+ the grace
    # its calls get to finish; an SDK reconnects and resends what was not acked), keepalive pings
    max_ingest_streams: int = 1000
    grpc_max_concurrent_streams: int = 100
    grpc_max_connection_idle_s: float = 300.0
    grpc_max_connection_age_s: float = 3600.0  # 0: unlimited
    grpc_max_connection_age_grace_s: float = 60.0
    grpc_keepalive_time_s: float = 60.0  # the server pings a silent client this often
    grpc_keepalive_timeout_s: float = 20.0  # ... and closes the connection without an answer
    # on SIGTERM, readiness says NOT_SERVING this long before the drain starts (load balancers
    # stop routing new streams here first; traffic is still served meanwhile)
    shutdown_delay_s: float = 0.0
    # alerts (runstream_services/alerts/): how often the no-points rules are checked and the rules
    # reread from the store; webhook delivery attempts per firing, the first retry's delay
    # (doubled per attempt, with jitter) and each POST's timeout
    alerts_check_interval_s: float = 30.0
    alert_webhook_attempts: int = 5
    alert_webhook_backoff_s: float = 1.0
    alert_webhook_timeout_s: float = 5.0
    # hosts alert webhooks may be sent to (exact names or ".example.com" suffixes); empty: any.
    # Set it where keys with the write role must not make the server POST inside your network.
    alert_webhook_hosts: tuple[str, ...] = ()

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def resolved_clickhouse_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{self.data_path / 'chdb'}"

    @property
    def config_limit_bytes(self) -> int:
        """The config limit in force: max_config_bytes, but at most half the transport limit."""
        return min(self.max_config_bytes, self.max_message_bytes // 2)

    @property
    def resolved_artifact_dir(self) -> Path:
        return Path(self.artifact_dir).expanduser() if self.artifact_dir else self.data_path / "artifacts"

    def validate(self) -> ServerSettings:
        if self.bus not in ("embedded", "kafka"):
            raise ConfigError(f"bus must be 'embedded' or 'kafka', not {self.bus!r}")
        if self.bus == "kafka" and not self.kafka_bootstrap:
            raise ConfigError(
                "bus=kafka needs kafka_bootstrap (host:port[,host:port]) / RUNSTREAM_KAFKA_BOOTSTRAP"
            )
        if self.bus == "kafka":
            self._validate_kafka()
        if self.bus == "embedded" and "writer" not in self.components and "ingest" in self.components:
            raise ConfigError(
                "the embedded bus hands batches to an in-process writer: keep 'writer' in components"
            )
        if self.artifact_store not in ("local", "s3"):
            raise ConfigError(f"artifact_store must be 'local' or 's3', not {self.artifact_store!r}")
        if self.artifact_store == "s3" and not self.s3_endpoint:
            raise ConfigError("artifact_store=s3 needs s3_endpoint / RUNSTREAM_S3_ENDPOINT")
        bad = [c for c in self.components if c not in COMPONENTS]
        if bad or not self.components:
            raise ConfigError(f"components must be a non-empty subset of {COMPONENTS}, got {self.components}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is out of range")
        for name in (
            "max_config_bytes",
            "max_ingest_streams",
            "grpc_max_concurrent_streams",
            "writer_blocks_in_flight",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not 0 <= self.writer_gather_ms <= 1000:
            raise ConfigError(f"writer_gather_ms must be between 0 and 1000 ms, not {self.writer_gather_ms}")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError(
                "TLS needs both tls_cert_file and tls_key_file (RUNSTREAM_TLS_CERT_FILE / "
                "RUNSTREAM_TLS_KEY_FILE, --tls-cert-file / --tls-key-file), or neither"
            )
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError(
                "tls_client_ca_file (mTLS) needs the server's own tls_cert_file and tls_key_file"
            )
        if self.auth_required and not self.api_keys_file:
            raise ConfigError("auth_required needs api_keys_file / RUNSTREAM_API_KEYS_FILE")
        return self

    def _validate_kafka(self) -> None:
        if self.kafka_partitions < 1:
            raise ConfigError(f"kafka_partitions must be at least 1, not {self.kafka_partitions}")
        if not 1 <= self.kafka_min_insync_replicas <= self.kafka_replication_factor:
            raise ConfigError(
                f"kafka_min_insync_replicas ({self.kafka_min_insync_replicas}) must be between 1 and "
                f"kafka_replication_factor ({self.kafka_replication_factor})"
            )
        if self.kafka_replication_factor < 3 and not self.kafka_allow_under_replicated:
            raise ConfigError(
                f"kafka_replication_factor {self.kafka_replication_factor} cannot survive the loss of a "
                "broker with acks=all; cluster mode needs 3 (min ISR 2). For a development cluster set "
                "kafka_allow_under_replicated = true (RUNSTREAM_KAFKA_ALLOW_UNDER_REPLICATED=1)"
            )
        if self.kafka_compression not in ("auto", "lz4", "zstd", "gzip", "none"):
            raise ConfigError(
                f"kafka_compression must be auto, lz4, zstd, gzip or none, not {self.kafka_compression!r}"
            )
        if self.kafka_retention_hours <= 0:
            raise ConfigError(f"kafka_retention_hours must be positive, not {self.kafka_retention_hours}")


def _coerce(name: str, typ: Any, raw: Any) -> Any:
    typ = str(typ)
    try:
        if typ == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in ("1", "true", "yes", "on"):
                return True
            if str(raw).lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if typ == "int":
            return int(raw)
        if typ == "float":
            return float(raw)
        if typ.startswith("tuple"):
            items = raw.split(",") if isinstance(raw, str) else list(raw)
            return tuple(i.strip() for i in items if i.strip())
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {name} = {raw!r} is not a valid {typ}") from None


def load_settings(
    overrides: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    config_file: str | os.PathLike[str] | None = None,
) -> ServerSettings:
    """Merges the sources in precedence order. `overrides` are flags (None values ignored);
    `config_file` defaults to $RUNSTREAM_CONFIG when set."""
    env = os.environ if env is None else env
    known = {f.name: f for f in fields(ServerSettings)}
    values: dict[str, Any] = {}
    path = config_file or env.get("RUNSTREAM_CONFIG")
    if path:
        try:
            data = tomllib.loads(Path(path).expanduser().read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        data = data.get("server", data)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown settings in {path}: {', '.join(unknown)}")
        values.update(data)
    for name in known:
        raw = env.get(f"RUNSTREAM_{name.upper()}")
        if raw is not None:
            values[name] = raw
    for name, raw in (overrides or {}).items():
        if name not in known:
            raise ConfigError(f"unknown setting {name!r}")
        if raw is not None:
            values[name] = raw
    coerced = {name: _coerce(name, known[name].type, raw) for name, raw in values.items()}
    return dataclasses.replace(ServerSettings(), **coerced).validate()


__all__ = ["COMPONENTS", "ServerSettings", "load_settings"]
