"""TLS for the SDK's channels (ingest, query, registry): one place that turns settings into gRPC
channel credentials, so the SDK, runstream.Api and the dashboard connect the same way.

Settings (argument > environment variable > default):
  RUNSTREAM_TLS              1/true: use TLS (implied by any setting below); with no CA given the
                             system's trusted roots verify the server
  RUNSTREAM_TLS_CA           PEM bundle of the CA(s) that signed the server's certificate
  RUNSTREAM_TLS_CLIENT_CERT  this client's certificate (PEM), for a server that asks for mTLS
  RUNSTREAM_TLS_CLIENT_KEY   its private key (PEM); give both or neither
  RUNSTREAM_TLS_SERVER_NAME  the name to check the server's certificate against, when it differs
                             from the endpoint's host (e.g. connecting by IP address)
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from runstream.errors import ConfigError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Tls:
    """How to secure a channel. `enabled` False: plaintext (the embedded server's default)."""

    enabled: bool = False
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""
    server_name: str = ""

    @classmethod
    def resolve(
        cls,
        *,
        tls: bool | None = None,
        ca_file: str | None = None,
        client_cert_file: str | None = None,
        client_key_file: str | None = None,
        server_name: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Tls:
        """Arguments (None: not given) win over RUNSTREAM_TLS* variables."""
        env = os.environ if env is None else env

        def pick(value: str | None, name: str) -> str:
            return value if value is not None else env.get(name, "")

        ca = pick(ca_file, "RUNSTREAM_TLS_CA")
        cert = pick(client_cert_file, "RUNSTREAM_TLS_CLIENT_CERT")
        key = pick(client_key_file, "RUNSTREAM_TLS_CLIENT_KEY")
        name = pick(server_name, "RUNSTREAM_TLS_SERVER_NAME")
        if tls is None:
            raw = env.get("RUNSTREAM_TLS", "").strip().lower()
            if raw not in _TRUE + _FALSE:
                raise ConfigError(f"RUNSTREAM_TLS={raw!r}: use 1/true or 0/false")
            tls = raw in _TRUE or bool(ca or cert or key)
        out = cls(bool(tls), ca, cert, key, name)
        out.validate()
        return out

    def validate(self) -> None:
        if bool(self.client_cert_file) != bool(self.client_key_file):
            raise ConfigError(
                "mTLS needs both a client certificate and its key: set RUNSTREAM_TLS_CLIENT_CERT and "
                "RUNSTREAM_TLS_CLIENT_KEY (tls_client_cert / tls_client_key), or neither"
            )
        if not self.enabled and (self.ca_file or self.client_cert_file):
            raise ConfigError("TLS files are set but TLS is off (RUNSTREAM_TLS=0): remove one or the other")

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials; the files are read now, so a wrong path fails here."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA bundle (RUNSTREAM_TLS_CA)"),
            private_key=_read(self.client_key_file, "client key (RUNSTREAM_TLS_CLIENT_KEY)"),
            certificate_chain=_read(self.client_cert_file, "client certificate (RUNSTREAM_TLS_CLIENT_CERT)"),
        )

    def options(self) -> list[tuple[str, str]]:
        return (
            [("grpc.ssl_target_name_override", self.server_name)] if self.enabled and self.server_name else []
        )

    def hint(self, details: str) -> str:
        """A sentence saying what to check when a connection failed with `details`, or ""."""
        low = details.lower()
        if self.enabled and ("handshake" in low or "certificate" in low or "ssl" in low or "tls" in low):
            return (
                "TLS handshake with the server failed: check that RUNSTREAM_TLS_CA holds the CA that "
                "signed the server's certificate, that the endpoint's host (or RUNSTREAM_TLS_SERVER_NAME) "
                "is a name in that certificate, and, if the server requires client certificates, that "
                "RUNSTREAM_TLS_CLIENT_CERT / RUNSTREAM_TLS_CLIENT_KEY are set to a certificate its "
                "client CA signed"
            )
        if not self.enabled and ("socket closed" in low or "connection reset" in low or "eof" in low):
            return "if the server uses TLS, set RUNSTREAM_TLS_CA (or RUNSTREAM_TLS=1 for a public CA)"
        return ""


PLAINTEXT = Tls()


def _read(path: str, what: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS {what} {path}: {exc.strerror or exc}") from None


def channel(endpoint: str, tls: Tls, options: list | None = None) -> grpc.Channel:
    """A blocking-API channel to `endpoint`, secured as `tls` says."""
    opts = list(options or []) + tls.options()
    if tls.enabled:
        return grpc.secure_channel(endpoint, tls.credentials(), options=opts)
    return grpc.insecure_channel(endpoint, options=opts)


def aio_channel(endpoint: str, tls: Tls, options: list | None = None) -> grpc.aio.Channel:
    """An asyncio channel to `endpoint`, secured as `tls` says."""
    opts = list(options or []) + tls.options()
    if tls.enabled:
        return grpc.aio.secure_channel(endpoint, tls.credentials(), options=opts)
    return grpc.aio.insecure_channel(endpoint, options=opts)


__all__ = ["PLAINTEXT", "Tls", "aio_channel", "channel"]
