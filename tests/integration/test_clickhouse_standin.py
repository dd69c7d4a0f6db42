"""The ClickHouse STAND-IN itself (tests/clickhouse_standin.py: real chDB behind ClickHouse's HTTP
interface, not a ClickHouse server) answers as a server does where the store's server path
depends on it, and the store's own server-side checks: the minimum server version, settings and
parameters kept out of a URL that could pass the 1 MiB URI limit."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest

from runstream_services.errors import ConfigError
from runstream_services.storage.clickhouse import connect
from tests.clickhouse_standin import MAX_URI_SIZE, StandinProcess

pytest.importorskip("chdb")


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> StandinProcess:
    """The ClickHouse STAND-IN, one per module."""
    process = StandinProcess(tmp_path_factory.mktemp("standin")).start()
    yield process
    process.stop()


def _get(standin: StandinProcess, **params) -> tuple[int, dict, bytes]:
    url = f"http://127.0.0.1:{standin.port}/?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_errors_carry_the_exception_code_header_and_clickhouse_body(standin):
    status, headers, body = _get(standin, query="SELECT * FROM no_such_db.t")
    assert status == 404  # UNKNOWN_TABLE / UNKNOWN_DATABASE map to 404 as on a server
    assert headers["X-ClickHouse-Exception-Code"] in ("60", "81")
    assert body.startswith(b"Code: ") and b"DB::Exception:" in body and b"(version " in body
    status, headers, body = _get(standin, query="SELEC 1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "62")  # SYNTAX_ERROR


def test_a_url_over_1_mib_is_refused_with_414_and_just_under_is_served(standin):
    pad = "x" * (MAX_URI_SIZE + 10)
    assert _get(standin, query="SELECT 1", param_pad=pad)[0] == 414
    status, _, body = _get(standin, query="SELECT length({pad:String})", param_pad="x" * 900_000)
    assert (status, body) == (200, b"900000\n")


def test_settings_apply_to_their_request_only_and_unknown_ones_fail(standin):
    sql = "SELECT value FROM system.settings WHERE name = 'max_threads'"
    assert _get(standin, query=sql, max_threads="3")[2] == b"3\n"
    assert _get(standin, query=sql)[2] != b"3\n"
    token = "SELECT getSetting('insert_deduplication_token')"
    assert (
        _get(standin, query=token, insert_deduplication_token="123")[2] == b"123\n"
    )  # text, as a server parses it
    status, headers, _ = _get(standin, query="SELECT 1", no_such_setting="1")
    assert (status, headers["X-ClickHouse-Exception-Code"]) == (400, "115")


def test_sessions_keep_their_state_between_requests(standin):
    sid = uuid.uuid4().hex
    assert _get(standin, query="CREATE TEMPORARY TABLE tmp (x UInt8)", session_id=sid)[0] == 200
    assert _get(standin, query="INSERT INTO tmp VALUES (7)", session_id=sid)[0] == 200
    assert _get(standin, query="SELECT x FROM tmp", session_id=sid)[2] == b"7\n"
    assert _get(standin, query="SELECT x FROM tmp")[0] == 404  # not outside the session


def test_clickhouse_connect_round_trips_native_arrow_compressed_and_form_encoded(standin):
    """Compressed Native inserts (lz4 and zstd bodies), compressed responses, Arrow out, and bind
    parameters far over the URL budget (clickhouse-connect moves them into a multipart form)."""
    db = f"rt_{uuid.uuid4().hex[:8]}"
    for compress in ("lz4", "zstd"):
        client = standin.client(compress=compress)
        client.command(f"CREATE DATABASE IF NOT EXISTS {db}")
        client.command(
            f"CREATE TABLE IF NOT EXISTS {db}.t (k String, v Float64) ENGINE = MergeTree ORDER BY k"
        )
        client.insert(f"{db}.t", [[f"{compress}{i}", float(i)] for i in range(5000)], column_names=["k", "v"])
        assert client.query(f"SELECT count() FROM {db}.t WHERE k LIKE '{compress}%'").result_rows == [(5000,)]
    keys = [f"lz4{i}" for i in range(0, 5000, 2)] * 4  # ~100 KiB: over the URL budget, in a form
    assert 90_000 < len(json.dumps(keys)) < 128 * 1024
    sql = f"SELECT count() FROM {db}.t WHERE has({{keys:Array(String)}}, k)"
    assert client.query(sql, parameters={"keys": keys}).result_rows == [(2500,)]
    # A form field over http_max_field_value_size (128 KiB) is refused, as a server refuses it.
    with pytest.raises(Exception, match="field value too long"):
        client.query(sql, parameters={"keys": keys * 2})
    table = client.query_arrow(f"SELECT k, v FROM {db}.t ORDER BY v DESC LIMIT 2")
    assert table.column("v").to_pylist() == [4999.0, 4999.0]


def test_a_server_older_than_the_minimum_is_refused_with_the_version_needed(tmp_path):
    old = StandinProcess(tmp_path / "old", report_version="23.8.2.7").start()
    try:
        with pytest.raises(ConfigError, match=r"version 23\.8\.2\.7; Runstream needs 24\.8 or newer") as exc:
            connect(old.dsn.replace("default:", "default:secret"))
        assert "secret" not in str(exc.value)
        out = subprocess.run(
            [sys.executable, "-m", "runstream_services.cli", "migrate", "--clickhouse-dsn", old.dsn],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2 and "needs 24.8 or newer" in out.stderr
    finally:
        old.stop()


def test_responses_are_compressed_when_asked_as_a_server_does(standin):
    url = f"http://127.0.0.1:{standin.port}/?" + urllib.parse.urlencode(
        {"query": "SELECT number FROM numbers(1000)", "enable_http_compression": "1"}
    )
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(resp.read()).splitlines()[-1] == b"999"
    assert "Content-Encoding" not in _get(standin, query="SELECT 1")[1]  # not asked: plain
