"""TLS on a real embedded server (`runstream server --tls-cert-file/--tls-key-file[/--tls-client-ca-file]`), with
certificates made at test time: the SDK logs and runstream.Api reads over TLS end to end, a client
trusting the wrong CA or speaking plaintext is refused with an error that says what to check, and
with mTLS a client without a certificate signed by the client CA is refused."""

from __future__ import annotations

import time

import pytest

import runstream
from runstream.errors import ConfigError, ServerUnavailableError
from runstream.tls import Tls
from tests.sdk_options import quick_sdk_options
from tests.tls_certs import TlsFiles, TlsServerProcess, make_tls_files


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def _server_args(certs: TlsFiles, mtls: bool) -> list[str]:
    args = ["--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key)]
    return args + (["--tls-client-ca-file", str(certs.ca)] if mtls else [])


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, certs):
    server = TlsServerProcess(
        tmp_path_factory.mktemp("tls-server"), Tls(True, str(certs.ca)), _server_args(certs, mtls=False)
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory, certs):
    client = Tls(True, str(certs.ca), str(certs.client_cert), str(certs.client_key))
    server = TlsServerProcess(
        tmp_path_factory.mktemp("mtls-server"), client, _server_args(certs, mtls=True)
    ).start()
    yield server
    server.stop()


def test_sdk_logs_and_api_reads_over_tls_end_to_end(tls_server, certs, tmp_path, monkeypatch):
    # the settings as a user gives them: environment variables, read by init() and by Api()
    monkeypatch.setenv("RUNSTREAM_TLS_CA", str(certs.ca))
    run = runstream.init(
        project="tls", name="secure", config={"lr": 0.1}, **quick_sdk_options(tls_server.endpoint, tmp_path)
    )
    for step in range(500):
        run.log({"loss": 1.0 / (step + 1)}, step=step)
    assert run.finish(timeout_s=30)
    assert run.stats["refused"] == 0 and run.stats["acked"] > 0

    with runstream.Api(endpoint=tls_server.endpoint) as api:
        assert api.tls.enabled and api.tls.ca_file == str(certs.ca)
        runs = api.runs("tls")
        assert list(runs["name"]) == ["secure"] and runs["config.lr"].iloc[0] == 0.1
        history = api.history(run.id, project="tls")
        assert len(history) == 500 and history["step"].tolist() == list(range(500))


def test_a_client_trusting_the_wrong_ca_is_refused_with_a_clear_error(tls_server, certs):
    with (
        runstream.Api(endpoint=tls_server.endpoint, timeout_s=5, tls=Tls(True, str(certs.other_ca))) as api,
        pytest.raises(ServerUnavailableError) as info,
    ):
        api.list_projects()
    assert info.value.code == "UNAVAILABLE"
    assert "TLS handshake with the server failed" in str(info.value)
    assert "RUNSTREAM_TLS_CA" in info.value.details


def test_a_plaintext_client_gets_nothing_from_a_tls_server(tls_server):
    with (
        runstream.Api(endpoint=tls_server.endpoint, timeout_s=5, tls=Tls(False)) as api,
        pytest.raises(ServerUnavailableError),
    ):
        api.list_projects()


def test_mtls_refuses_clients_without_a_certificate_from_the_client_ca(mtls_server, certs, tmp_path):
    good = Tls(True, str(certs.ca), str(certs.client_cert), str(certs.client_key))
    with runstream.Api(endpoint=mtls_server.endpoint, timeout_s=10, tls=good) as api:
        assert api.list_projects() == []
    no_cert = Tls(True, str(certs.ca))
    stranger = Tls(True, str(certs.ca), str(certs.other_client_cert), str(certs.other_client_key))
    for tls in (no_cert, stranger):
        with (
            runstream.Api(endpoint=mtls_server.endpoint, timeout_s=5, tls=tls) as api,
            pytest.raises(ServerUnavailableError) as info,
        ):
            api.list_projects()
        assert info.value.code == "UNAVAILABLE"

    # the SDK with its client certificate from RUNSTREAM_TLS_* settings logs over mTLS
    options = quick_sdk_options(mtls_server.endpoint, tmp_path)
    run = runstream.init(
        project="mtls", tls_ca=str(certs.ca), tls_client_cert=str(certs.client_cert),
        tls_client_key=str(certs.client_key), **options,
    )  # fmt: skip
    run.log({"acc": 0.5}, step=1)
    assert run.finish(timeout_s=30)
    with runstream.Api(endpoint=mtls_server.endpoint, tls=good) as api:
        assert api.history(run.id, project="mtls")["value"].tolist() == [0.5]


def test_tls_settings_are_checked_once_with_messages_that_say_what_to_set(certs, tmp_path):
    with pytest.raises(ConfigError, match="RUNSTREAM_TLS_CLIENT_KEY"):
        Tls.resolve(client_cert_file=str(certs.client_cert), env={})
    with pytest.raises(ConfigError, match="cannot read the TLS CA bundle"):
        runstream.init(project="p", tls_ca=str(tmp_path / "missing.pem"), mode="disabled")
    assert Tls.resolve(env={"RUNSTREAM_TLS_CA": str(certs.ca)}).enabled
    assert not Tls.resolve(env={}).enabled
    assert Tls.resolve(env={"RUNSTREAM_TLS": "1"}) == Tls(enabled=True)


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path, certs):
    live = tmp_path / "live"
    live.mkdir()
    (live / "tls.crt").write_bytes(certs.server_cert.read_bytes())
    (live / "tls.key").write_bytes(certs.server_key.read_bytes())
    server = TlsServerProcess(
        tmp_path / "server", Tls(True, str(certs.ca)),
        ["--tls-cert-file", str(live / "tls.crt"), "--tls-key-file", str(live / "tls.key")],
    ).start()  # fmt: skip
    try:
        renewed = make_tls_files(tmp_path / "renewed")  # a new CA and a new server certificate
        with (
            runstream.Api(endpoint=server.endpoint, timeout_s=5, tls=Tls(True, str(renewed.ca))) as api,
            pytest.raises(ServerUnavailableError),
        ):
            api.list_projects()  # not yet: the server still presents the old certificate
        (live / "tls.key").write_bytes(renewed.server_key.read_bytes())
        (live / "tls.crt").write_bytes(renewed.server_cert.read_bytes())
        time.sleep(1.5)  # the server checks the files at most once a second
        with runstream.Api(endpoint=server.endpoint, timeout_s=10, tls=Tls(True, str(renewed.ca))) as api:
            assert api.list_projects() == []
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_an_sdk_trusting_the_wrong_ca_keeps_the_run_and_says_what_to_check(tls_server, certs, tmp_path):
    run = runstream.init(
        project="tls", tls_ca=str(certs.other_ca), **quick_sdk_options(tls_server.endpoint, tmp_path)
    )
    run.log({"loss": 1.0}, step=0)
    with pytest.warns(RuntimeWarning, match="TLS handshake with the server failed") as caught:
        assert not run.finish(timeout_s=3)
    assert any("runstream sync" in str(w.message) for w in caught)  # spooled, not lost
