"""Certificates made at test time (the `cryptography` package): a CA, a server certificate for
127.0.0.1 / localhost signed by it, a client certificate for mTLS, and an unrelated CA to prove
that a client trusting the wrong CA is refused. Nothing is read from or written to the repo.
TlsServerProcess: a `runstream server` child process whose health wait speaks TLS."""

from __future__ import annotations

import datetime as dt
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runstream.tls import Tls, channel
from runstream.v1 import ingest_pb2, ingest_pb2_grpc
from tests.server_process import ServerProcess


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


def _ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _leaf(
    cn: str, ca: x509.Certificate, ca_key, *, server: bool
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


@dataclass(frozen=True)
class TlsFiles:
    """Paths of the PEM files made by make_tls_files."""

    ca: Path  # the CA that signed server and client
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here
    other_client_cert: Path  # a client certificate signed by other_ca
    other_client_key: Path


def make_tls_files(folder: Path) -> TlsFiles:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = _ca("runstream test CA")
    _write(folder / "ca", ca)
    server, server_key = _leaf("localhost", ca, ca_key, server=True)
    _write(folder / "server", server, server_key)
    client, client_key = _leaf("test client", ca, ca_key, server=False)
    _write(folder / "client", client, client_key)
    other, other_key = _ca("some other CA")
    _write(folder / "other-ca", other)
    stranger, stranger_key = _leaf("stranger", other, other_key, server=False)
    _write(folder / "stranger", stranger, stranger_key)
    return TlsFiles(
        ca=folder / "ca.crt",
        server_cert=folder / "server.crt",
        server_key=folder / "server.key",
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
        other_ca=folder / "other-ca.crt",
        other_client_cert=folder / "stranger.crt",
        other_client_key=folder / "stranger.key",
    )


class TlsServerProcess(ServerProcess):
    """A ServerProcess whose health wait connects with TLS (and a client certificate for mTLS)."""

    def __init__(self, data_dir, tls: Tls, extra_args):
        super().__init__(data_dir, extra_args)
        self.tls = tls

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with channel(self.endpoint, self.tls) as ch:
                    ingest_pb2_grpc.IngestServiceStub(ch).Health(ingest_pb2.HealthRequest(), timeout=2)
                    return
            except grpc.RpcError as exc:
                last = exc
                time.sleep(0.2)
        raise TimeoutError(f"TLS server not healthy after {timeout_s}s ({last}):\n{self.log_tail()}")
