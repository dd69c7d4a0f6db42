"""TLS for the gRPC port: the server's certificate and key, and optionally a client CA, which turns
on mTLS (a client without a certificate signed by that CA is refused during the handshake).

The files are read again when they change (checked at most once a second, on new connections),
so a certificate renewed in place (cert-manager, a mounted Secret) is served without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import grpc

from runstream_services.config import ServerSettings
from runstream_services.errors import ConfigError

log = logging.getLogger(__name__)

RECHECK_S = 1.0


def _read(path: str, what: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN" not in data:
        raise ConfigError(f"the TLS {what} {path} is not PEM (no '-----BEGIN' line)")
    return data


class _Files:
    """The PEM files of one server, re-read when one of their modification times changes."""

    def __init__(self, settings: ServerSettings):
        self.paths = {
            "cert": settings.tls_cert_file,
            "key": settings.tls_key_file,
            "client_ca": settings.tls_client_ca_file,
        }
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp = self._mtimes()
        self.config = self._load()

    def _mtimes(self) -> tuple[float, ...]:
        out = []
        for path in self.paths.values():
            try:
                out.append(os.stat(Path(path).expanduser()).st_mtime if path else 0.0)
            except OSError:
                out.append(-1.0)
        return tuple(out)

    def _load(self) -> grpc.ServerCertificateConfiguration:
        cert = _read(self.paths["cert"], "certificate (tls_cert_file)")
        key = _read(self.paths["key"], "private key (tls_key_file)")
        ca = self.paths["client_ca"]
        return grpc.ssl_server_certificate_configuration(
            [(key, cert)], root_certificates=_read(ca, "client CA (tls_client_ca_file)") if ca else None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """gRPC's fetcher, called on new handshakes: a new configuration when the files changed,
        else None (keep the current one). A half-written renewal keeps the old one."""
        now = time.monotonic()
        with self._lock:
            if now - self._checked < RECHECK_S:
                return None
            self._checked = now
            stamp = self._mtimes()
            if stamp == self._stamp:
                return None
            try:
                self.config = self._load()
            except ConfigError as exc:
                log.warning("TLS files changed but could not be loaded (keeping the old ones): %s", exc)
                return None
            self._stamp = stamp
            log.info("TLS certificate reloaded from %s", self.paths["cert"])
            return self.config


def server_credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    """Credentials for the gRPC port, or None when TLS is off (no tls_cert_file)."""
    if not settings.tls_cert_file:
        return None
    files = _Files(settings)
    return grpc.dynamic_ssl_server_credentials(
        files.config, files.fetch, require_client_authentication=bool(settings.tls_client_ca_file)
    )


__all__ = ["server_credentials"]
