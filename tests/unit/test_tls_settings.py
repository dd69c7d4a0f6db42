"""TLS settings on both sides, checked once with messages naming what to set: the server's
tls_* settings (flag > RUNSTREAM_TLS_* > TOML) and its credentials from PEM files, and the warning a
server exposed beyond loopback without TLS or auth writes to its log."""

from __future__ import annotations

import logging

import pytest

from runstream_services.config import load_settings
from runstream_services.errors import ConfigError
from runstream_services.server import _warn_if_exposed
from runstream_services.tls import server_credentials
from tests.tls_certs import make_tls_files


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_server_tls_settings_come_from_flags_or_environment_and_need_cert_and_key(certs):
    env = {"RUNSTREAM_TLS_CERT_FILE": str(certs.server_cert), "RUNSTREAM_TLS_KEY_FILE": str(certs.server_key)}
    s = load_settings(env=env)
    assert (s.tls_cert_file, s.tls_key_file, s.tls_client_ca_file) == (
        str(certs.server_cert), str(certs.server_key), "",
    )  # fmt: skip
    assert server_credentials(s) is not None
    assert server_credentials(load_settings(env={})) is None  # plaintext by default
    with pytest.raises(ConfigError, match="--tls-key-file"):
        load_settings(env={"RUNSTREAM_TLS_CERT_FILE": str(certs.server_cert)})
    with pytest.raises(ConfigError, match="needs the server's own tls_cert_file"):
        load_settings({"tls_client_ca_file": str(certs.ca)}, env={})
    mtls = load_settings({"tls_client_ca_file": str(certs.ca)}, env=env)
    assert server_credentials(mtls) is not None


def test_unreadable_or_non_pem_files_are_refused_at_start(certs, tmp_path):
    not_pem = tmp_path / "cert.der"
    not_pem.write_bytes(b"\x30\x82\x01\x00")
    with pytest.raises(ConfigError, match="is not PEM"):
        server_credentials(
            load_settings({"tls_cert_file": str(not_pem), "tls_key_file": str(certs.server_key)}, env={})
        )
    with pytest.raises(ConfigError, match="cannot read the TLS private key"):
        server_credentials(
            load_settings(
                {"tls_cert_file": str(certs.server_cert), "tls_key_file": str(tmp_path / "nope")}, env={}
            )
        )


def test_a_server_open_beyond_loopback_without_tls_or_auth_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="runstream.server"):
        _warn_if_exposed(load_settings({"host": "127.0.0.1"}, env={}), tls=False)
        assert caplog.text == ""
        _warn_if_exposed(load_settings({"host": "0.0.0.0"}, env={}), tls=False)
    assert "without TLS" in caplog.text and "auth_required=false" in caplog.text
