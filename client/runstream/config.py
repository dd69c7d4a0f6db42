"""SDK settings: argument > environment variable (`RUNSTREAM_<SETTING>`) > default.

Resolved once per `runstream.init` into a frozen `Settings`; nothing here is process-wide mutable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from runstream._internal.environ import ENVIRON
from runstream.errors import ConfigError
from runstream.tls import Tls

DEFAULT_ENDPOINT = "127.0.0.1:7777"
MODES = ("online", "offline", "disabled")
CONSOLE_MODES = ("capture", "off")


@dataclass(frozen=True)
class Settings:
    """Everything the SDK's background machinery needs. Units are in the names."""

    endpoint: str = DEFAULT_ENDPOINT  # host:port of the ingest service
    api_key: str = ""
    mode: str = "online"  # online | offline | disabled
    spool_dir: str = "~/.runstream/spool"  # offline runs and spilled batches
    flush_interval_s: float = 0.2  # the worker sends what it has at least this often; a busy run (100+
    # points per send) up to 2.5x less often, in fewer, larger requests (_internal/pipeline.py)
    max_batch_points: int = 65_536  # points per MetricBatch (key_index is uint16)
    max_memory_bytes: int = 64 * 1024 * 1024  # unacked requests kept in memory; beyond: disk spool
    max_inflight_requests: int = 64  # sent but unacked requests on the stream
    # the runs of this process share one ingest stream (packed messages; _internal/shared_stream.py);
    # False: a stream of its own per run
    shared_stream: bool = True
    finish_timeout_s: float = 60.0  # how long finish() waits for acks before spooling the rest
    system_metrics_interval_s: float = 15.0  # 0 disables the system metrics sampler
    heartbeat_interval_s: float = 30.0
    capture_context: bool = True  # git, packages, host, GPUs at init
    capture_packages: bool = True
    max_git_diff_bytes: int = 256 * 1024
    # console capture (_internal/console.py): tee this process's stdout/stderr into the run
    console: str = "capture"  # capture | off
    console_max_line_chars: int = 8192  # longer lines are cut, with a marker saying how much
    console_max_bytes_per_s: int = 256 * 1024  # beyond: lines dropped and counted (never blocks)
    console_max_total_bytes: int = 64 * 1024 * 1024  # per run and rank; beyond: dropped and counted
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 5.0
    owns_config: bool | None = None  # None: rank 0 sends config/summary, other ranks keep them local
    rank: int | None = None  # None: from the launcher's environment
    world_size: int | None = None
    # TLS (see runstream.tls): None: on when a CA or client certificate is given
    tls: bool | None = None
    tls_ca: str = ""  # PEM CA bundle that signed the server's certificate ("": system roots)
    tls_client_cert: str = ""  # mTLS: this client's certificate and key (PEM)
    tls_client_key: str = ""
    tls_server_name: str = ""  # the name in the server's certificate, when not the endpoint's host

    @property
    def spool_path(self) -> Path:
        return Path(self.spool_dir).expanduser()

    @functools.cached_property  # asked for several times per run; the settings are frozen
    def tls_config(self) -> Tls:
        return Tls.resolve(
            tls=self.tls,
            ca_file=self.tls_ca,
            client_cert_file=self.tls_client_cert,
            client_key_file=self.tls_client_key,
            server_name=self.tls_server_name,
            env={},
        )


def _coerce(name: str, typ: Any, raw: str) -> Any:
    typ = str(typ)
    try:
        if "bool" in typ:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ.startswith("int"):
            return int(raw)
        if typ.startswith("float"):
            return float(raw)
    except ValueError:
        raise ConfigError(f"RUNSTREAM_{name.upper()}={raw!r} is not a valid {typ}") from None
    return raw


#: setting -> (its RUNSTREAM_<NAME> variable, its type), worked out once: resolve runs per init
_FIELDS = {f.name: (f"RUNSTREAM_{f.name.upper()}", f.type) for f in fields(Settings)}


def resolve(**overrides: Any) -> Settings:
    """Settings from keyword overrides (None means 'not given'), then RUNSTREAM_* variables."""
    unknown = overrides.keys() - _FIELDS.keys()
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}; known: {sorted(_FIELDS)}")
    values: dict[str, Any] = {}
    env = ENVIRON.get
    for name, (variable, typ) in _FIELDS.items():
        if overrides.get(name) is not None:
            values[name] = overrides[name]
            continue
        raw = env(variable)
        if raw:
            values[name] = _coerce(name, typ, raw)
    settings = Settings(**values)  # every field has a default
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    if s.mode not in MODES:
        raise ConfigError(f"mode={s.mode!r}: use one of {', '.join(MODES)}")
    host, sep, port = s.endpoint.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"endpoint={s.endpoint!r} is not host:port (e.g. {DEFAULT_ENDPOINT})")
    if not 1 <= s.max_batch_points <= 65_536:
        raise ConfigError(f"max_batch_points={s.max_batch_points}: use 1..65536")
    for name in ("flush_interval_s", "finish_timeout_s", "reconnect_initial_s", "reconnect_max_s"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name}={getattr(s, name)} must be > 0")
    if s.console not in CONSOLE_MODES:
        raise ConfigError(f"console={s.console!r}: use one of {', '.join(CONSOLE_MODES)}")
    for name in ("console_max_line_chars", "console_max_bytes_per_s", "console_max_total_bytes"):
        if getattr(s, name) < 1:
            raise ConfigError(f"{name}={getattr(s, name)} must be >= 1")
    if s.system_metrics_interval_s < 0:
        raise ConfigError("system_metrics_interval_s must be >= 0 (0 disables the sampler)")
    if s.max_memory_bytes < 1024 * 1024:
        raise ConfigError(f"max_memory_bytes={s.max_memory_bytes} is below 1 MiB")
    if s.tls_config.enabled:
        s.tls_config.credentials()  # a missing or unreadable file fails at init, on the caller's thread
