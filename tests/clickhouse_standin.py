"""A STAND-IN for a ClickHouse server, for tests only: the subset of ClickHouse's HTTP interface that
clickhouse-connect's HTTP client uses, served by the real chDB engine in a process of its own.

It is not ClickHouse server. No ClickHouse server can be installed on the test machines, and a
mock would answer what the test author expects; this one runs every statement on chDB (the same
engine, 26.x), so the store code meets real SQL, real parts, real insert dedup. What it adds is the
HTTP layer, as a server does it:

- `GET /ping` and `GET /` answer `Ok.`;
- the query comes in the `query` URL parameter, the request body, or both (then the body follows
  the URL part; for `INSERT ... FORMAT F` the body is the data), or in a multipart form field
  `query` (clickhouse-connect moves long bind parameters there); `param_<name>` bind parameters in
  the URL or form; `database`; `default_format` (TabSeparated if absent); `session_id` keeps a
  connection (and its SET / temporary tables) between requests;
- every other URL parameter is a setting, applied to that request only (an unknown one fails as
  on a server, code 115);
- INSERT bodies in Arrow/ArrowStream (read in place through chDB's Python() table function) or any
  other format chDB reads (Native, RowBinary, ...: through a file in the data folder), with
  `Content-Encoding` gzip, deflate, zstd, lz4 (frame) or br; `decompress=1` (ClickHouse's block
  compression) is refused, clickhouse-connect does not send it;
- responses compressed when `enable_http_compression=1` and `Accept-Encoding` names a codec it
  has; `X-ClickHouse-Query-Id`, `-Format`, `-Timezone`, `-Summary` headers;
- errors as a server sends them: a status (400 syntax, 404 unknown table/database, 500 other),
  the `X-ClickHouse-Exception-Code` header and a `Code: N. DB::Exception: ... (version V)` body;
- limits: a request line over `max_uri_size` (1 MiB, ClickHouse's http_max_uri_size default) is
  refused with 414, a form field over 128 KiB (http_max_field_value_size) with code 1001-like
  BAD_ARGUMENTS - so a client that puts settings or parameters in a URL that can grow is caught.

One process, one chDB engine on `--data-dir`, and every statement runs under one lock (serialized,
as the task asked: it measures the client path, not server concurrency). `--version` makes
`SELECT version()` report another version, for the minimum-version check.

Run: `python -m tests.clickhouse_standin --data-dir DIR --port PORT` (see `StandinProcess`).
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
import zlib
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

MAX_URI_SIZE = 1024 * 1024  # ClickHouse http_max_uri_size default
MAX_FIELD_VALUE_SIZE = 128 * 1024  # ClickHouse http_max_field_value_size default

#: URL parameters the HTTP interface consumes itself; any other parameter is a setting.
TRANSPORT_PARAMS = {
    "query", "database", "default_format", "session_id", "session_timeout", "session_check",
    "query_id", "quota_key", "compress", "decompress", "buffer_size", "wait_end_of_query", "user",
    "password", "role", "client_protocol_version", "enable_http_compression",
}  # fmt: skip

_INSERT_FORMAT = re.compile(r"^\s*INSERT\s+INTO\s+(?P<target>.+?)\s+FORMAT\s+(?P<fmt>\w+)\s*$", re.I | re.S)
_INSERT_HEAD = re.compile(rb"^(\s*INSERT\s+INTO\s+.+?\s+FORMAT\s+\w+)[ \t]*\r?\n", re.I | re.S)
_FORMAT_CLAUSE = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.I)
_CODE = re.compile(r"Code:\s*(\d+)")
_NAME = re.compile(r"\(([A-Z_]{3,})\)\s*$")
_STATUS_BY_CODE = {62: 400, 27: 400, 36: 400, 46: 404, 60: 404, 81: 404, 115: 400, 516: 401}


class HttpError(Exception):
    """A refusal of the HTTP layer itself, with ClickHouse's code for it."""

    def __init__(self, status: int, code: int, name: str, message: str):
        super().__init__(message)
        self.status, self.code, self.name = status, code, name


class Engine:
    """chDB on one folder: one connection per request (settings apply to that request only), or
    per session_id, all statements under one lock."""

    def __init__(self, data_dir: Path, report_version: str | None = None):
        import chdb

        self._chdb = chdb
        self.data_dir = Path(data_dir)
        self.path = str(self.data_dir / "chdb")
        self.spool = self.data_dir / "insert_spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self._main = chdb.connect(self.path)  # keeps the engine open between requests
        version, tz = (
            self._main.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split()
        )
        self.version = report_version or version
        self._real_version = version
        self.timezone = tz
        self._sessions: dict[str, tuple[object, float]] = {}
        self.counts = {"requests": 0, "inserts": 0}

    def _connection(self, session_id: str | None, timeout_s: float):
        if not session_id:
            return self._chdb.connect(self.path), True
        conn, _ = self._sessions.get(session_id, (None, 0.0))
        if conn is None:
            conn = self._chdb.connect(self.path)
        self._sessions[session_id] = (conn, time.monotonic() + timeout_s)
        return conn, False

    def _expire_sessions(self) -> None:
        now = time.monotonic()
        for sid, (conn, until) in list(self._sessions.items()):
            if until < now:
                del self._sessions[sid]
                conn.close()

    def execute(self, *, sql: str, data: bytes | None, database: str | None, settings: dict[str, str],
                params: dict[str, str], default_format: str, session_id: str | None,
                session_timeout_s: float) -> tuple[bytes, str, dict]:  # fmt: skip
        """Runs one request's statement; returns (body, format, summary)."""
        with self.lock:
            self.counts["requests"] += 1
            self._expire_sessions()
            conn, temporary = self._connection(session_id, session_timeout_s)
            try:
                if database:
                    conn.query(f"USE {_identifier(database)}", "TabSeparated")
                for name, value in settings.items():
                    conn.query(f"SET {_identifier(name)} = {_literal(value)}", "TabSeparated")
                try:
                    return self._run(conn, sql, data, params, default_format)
                finally:
                    if not temporary:
                        for name in settings:  # a session keeps its own SETs only
                            conn.query(f"SET {_identifier(name)} = DEFAULT", "TabSeparated")
            finally:
                if temporary:
                    conn.close()

    def _run(self, conn, sql: str, data: bytes | None, params: dict[str, str], default_format: str):
        if data is not None:
            return self._insert(conn, sql, data), "TabSeparated", {}
        if self.version != self._real_version:
            sql = re.sub(r"\bversion\(\)", f"'{self.version}'", sql)
        m = _FORMAT_CLAUSE.search(sql)
        fmt = m.group(1) if m else default_format
        result = conn.query(sql, default_format, params=params or None)
        summary = {"read_rows": str(result.rows_read()), "read_bytes": str(result.bytes_read()),
                   "written_rows": str(result.rows_written()), "written_bytes": str(result.bytes_written())}  # fmt: skip
        return result.bytes(), fmt, summary

    def _insert(self, conn, sql: str, data: bytes) -> bytes:
        m = _INSERT_FORMAT.match(sql)
        if not m:
            raise HttpError(
                400, 62, "SYNTAX_ERROR", "the stand-in takes a body with `INSERT INTO t [(cols)] FORMAT F`"
            )
        target, fmt = m.group("target"), m.group("fmt")
        self.counts["inserts"] += 1
        if fmt.lower() in ("arrow", "arrowstream"):
            import pyarrow as pa

            reader = pa.ipc.open_file if fmt.lower() == "arrow" else pa.ipc.open_stream
            body = reader(pa.BufferReader(data)).read_all()  # noqa: F841 - read by name in Python(body)
            conn.query(f"INSERT INTO {target} SELECT * FROM Python(body)", "TabSeparated")
            return b""
        path = self.spool / f"{uuid.uuid4().hex}.{fmt.lower()}"
        path.write_bytes(data)
        try:
            conn.query(
                f"INSERT INTO {target} SELECT * FROM file({_literal(str(path))}, {fmt})", "TabSeparated"
            )
        finally:
            path.unlink(missing_ok=True)
        return b""

    def close(self) -> None:
        for conn, _ in self._sessions.values():
            conn.close()
        self._main.close()


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise HttpError(400, 36, "BAD_ARGUMENTS", f"bad name {name!r}")
    return name


def _literal(value: str) -> str:
    """A string literal: a server parses every setting from its text (SET x = '3' sets a number;
    SET token = 123 would not set a String setting)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _decompress(data: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    if encoding == "zstd":
        from backports import zstd

        return zstd.decompress(data)
    if encoding == "lz4":
        import lz4.frame

        return lz4.frame.decompress(data)
    if encoding == "br":
        import brotli

        return brotli.decompress(data)
    raise HttpError(400, 36, "BAD_ARGUMENTS", f"unknown Content-Encoding {encoding!r}")


def _compress(data: bytes, accept: str) -> tuple[bytes, str | None]:
    for enc in (e.split(";")[0].strip().lower() for e in accept.split(",")):
        if enc == "zstd":
            from backports import zstd

            return zstd.compress(data), enc
        if enc == "lz4":
            import lz4.frame

            return lz4.frame.compress(data), enc
        if enc == "gzip":
            return gzip.compress(data, 1), enc
        if enc == "deflate":
            return zlib.compress(data, 1), enc
    return data, None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ClickHouse-standin"
    engine: Engine  # set on the class by serve()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def handle_one_request(self) -> None:
        """As the base class, with ClickHouse's URI limit (1 MiB) instead of http.server's 64 KiB."""
        try:
            self.raw_requestline = self.rfile.readline(MAX_URI_SIZE + 64)
            if len(self.raw_requestline) > MAX_URI_SIZE + 32:
                self.requestline, self.request_version, self.command = "", "HTTP/1.1", ""
                self.close_connection = True
                self._send(414, b"URI Too Long\n", {"Connection": "close"})
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            handler = getattr(self, "do_" + self.command, None)
            if handler is None:
                self.send_error(HTTPStatus.NOT_IMPLEMENTED)
                return
            handler()
            self.wfile.flush()
        except TimeoutError:
            self.close_connection = True

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._serve(b"")

    def do_POST(self) -> None:  # noqa: N802
        self._serve(self._read_body())

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = io.BytesIO()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return out.getvalue()
                out.write(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self, body: bytes) -> None:
        query_id = ""
        try:
            url = urlsplit(self.path)
            if url.path.rstrip("/") == "/ping":
                self._send(200, b"Ok.\n")
                return
            args = dict(parse_qsl(url.query, keep_blank_values=True))
            query_id = args.get("query_id") or str(uuid.uuid4())
            if args.get("decompress") == "1":
                raise HttpError(
                    400,
                    36,
                    "BAD_ARGUMENTS",
                    "decompress=1 (ClickHouse block compression) is not served by the stand-in",
                )
            body = _decompress(body, self.headers.get("Content-Encoding", ""))
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("multipart/form-data"):
                args.update(self._form_fields(ctype, body))
                body = b""
            sql, data = self._statement(args.get("query", ""), body)
            if not sql.strip():
                self._send(200, b"Ok.\n")
                return
            params = {k[len("param_") :]: v for k, v in args.items() if k.startswith("param_")}
            settings = {
                k: v for k, v in args.items() if k not in TRANSPORT_PARAMS and not k.startswith("param_")
            }
            out, fmt, summary = self.engine.execute(
                sql=sql, data=data, database=args.get("database"), settings=settings, params=params,
                default_format=args.get("default_format", "TabSeparated"), session_id=args.get("session_id"),
                session_timeout_s=float(args.get("session_timeout", 60)),
            )  # fmt: skip
            headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Format": fmt,
                       "X-ClickHouse-Timezone": self.engine.timezone, "X-ClickHouse-Summary": json.dumps(summary)}  # fmt: skip
            if args.get("enable_http_compression") == "1" and out:
                out, enc = _compress(out, self.headers.get("Accept-Encoding", ""))
                if enc:
                    headers["Content-Encoding"] = enc
            self._send(200, out, headers)
        except HttpError as exc:
            self._error(exc.status, exc.code, exc.name, str(exc), query_id)
        except Exception as exc:  # chDB's errors carry ClickHouse's code and name
            text = str(exc).strip()
            m = _CODE.search(text)
            code = int(m.group(1)) if m else 1001
            name = _NAME.search(text)
            message = re.sub(r"^Code:\s*\d+\.\s*(DB::Exception:\s*)?", "", text)
            if name:
                message = message[: name.start()].rstrip()
            self._error(
                _STATUS_BY_CODE.get(code, 500),
                code,
                name.group(1) if name else "STD_EXCEPTION",
                message,
                query_id,
            )

    def _statement(self, url_query: str, body: bytes) -> tuple[str, bytes | None]:
        """(sql, insert data or None), joining the URL's query and the body as a server does."""
        if url_query and body:
            if _INSERT_FORMAT.match(url_query):
                return url_query, body
            return url_query + "\n" + body.decode(), None
        if url_query:
            return url_query, None
        head = _INSERT_HEAD.match(body[:65536])
        if head:  # `INSERT ... FORMAT F` and a newline, then the data (binary or text)
            return head.group(1).decode(), body[head.end() :]
        return body.decode(), None

    def _form_fields(self, ctype: str, body: bytes) -> dict[str, str]:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode() + body
        )
        fields = {}
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            value = part.get_payload(decode=True) or b""
            if part.get_filename():
                raise HttpError(
                    400, 36, "BAD_ARGUMENTS", "external data tables are not served by the stand-in"
                )
            if len(value) > MAX_FIELD_VALUE_SIZE + 1:
                raise HttpError(400, 36, "BAD_ARGUMENTS",
                                f"field value too long: {name} (http_max_field_value_size {MAX_FIELD_VALUE_SIZE})")  # fmt: skip
            fields[name] = value.decode()
        return fields

    def _error(self, status: int, code: int, name: str, message: str, query_id: str) -> None:
        text = f"Code: {code}. DB::Exception: {message}. ({name}) (version {self.engine.version})\n"
        self._send(
            status,
            text.encode(),
            {"X-ClickHouse-Exception-Code": str(code), "X-ClickHouse-Query-Id": query_id},
        )

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-ClickHouse-Server-Display-Name", "clickhouse-standin")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


def serve(data_dir: Path, port: int, host: str = "127.0.0.1", report_version: str | None = None) -> None:
    engine = Engine(data_dir, report_version)
    handler = type("BoundHandler", (Handler,), {"engine": engine})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print(
        f"clickhouse stand-in (chDB {engine._real_version}) on http://{host}:{server.server_port}", flush=True
    )
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        engine.close()


class StandinProcess:
    """The stand-in in a child process (chDB holds one folder per process): start, DSN, stop."""

    def __init__(self, data_dir: Path, report_version: str | None = None):
        from tests.server_process import free_port

        self.data_dir = Path(data_dir)
        self.port = free_port()
        self.report_version = report_version
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir / "standin.log"

    @property
    def dsn(self) -> str:
        return f"http://default:@127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> StandinProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "tests.clickhouse_standin",
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
        ]
        if self.report_version:
            cmd += ["--version", self.report_version]
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"stand-in exited with {self.proc.returncode}:\n{self.log_path.read_text()}"
                )
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{self.port}/ping", timeout=2).read() == b"Ok.\n":
                    return self
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"stand-in not up after {timeout_s}s:\n{self.log_path.read_text()}")

    def client(self, **kw):
        """A clickhouse-connect HTTP client on the stand-in."""
        import clickhouse_connect

        return clickhouse_connect.get_client(dsn=self.dsn, autogenerate_session_id=False, **kw)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def server_deployment(tmp_path: Path, standin: StandinProcess, mode: str = "embedded", services=None):
    """A Runstream deployment whose store is the stand-in over HTTP, in a database of its own:
    `runstream migrate` applies the schema first and the store's processes run with
    migrate_on_start = false, as a cluster's pods do. mode "embedded": one `runstream server`;
    "kafka": ingest + a writer process on the real Kafka (`services`), the writer on the stand-in.
    A BusServer whose `stored` reads the stand-in over HTTP (the store outlives the processes)."""
    from tests import deployments
    from tests.chdb_inspect import stored_counts
    from tests.server_process import ServerProcess

    database = f"rs_{uuid.uuid4().hex[:10]}"
    env = {"RUNSTREAM_CLICKHOUSE_DATABASE": database, "RUNSTREAM_MIGRATE_ON_START": "false"}
    migrated = subprocess.run(
        [sys.executable, "-m", "runstream_services.cli", "migrate", "--clickhouse-dsn", standin.dsn],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env},
    )  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr
    store_args = ["--clickhouse-dsn", standin.dsn]

    def stored(self, sql: str) -> list[list]:
        client = standin.client()
        try:
            return [list(r) for r in client.query(sql.replace("DB.", f"{database}.")).result_rows]
        finally:
            client.close()

    def counts(self):
        return stored_counts(self, query=lambda _server, sql: self.stored(sql))

    if mode == "kafka":
        base = deployments.kafka_split(tmp_path, services, writer_args=store_args, writer_env=env)
    else:
        server = ServerProcess(tmp_path / "server", extra_args=store_args, env=env).start()
        base = deployments.BusServer("embedded", ingest=server, writer=server)
    base.__class__ = type("OnServer", (deployments.BusServer,), {"stored": stored, "stored_counts": counts})
    return base


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="ClickHouse HTTP stand-in for tests: chDB behind ClickHouse's HTTP interface"
    )
    p.add_argument("--data-dir", required=True, help="folder for the chDB data (and insert spool files)")
    p.add_argument("--port", type=int, default=8123, help="port to listen on (default 8123)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument(
        "--version",
        dest="report_version",
        help="version for SELECT version() to report (tests of the minimum-version check)",
    )
    args = p.parse_args(argv)
    serve(Path(args.data_dir), args.port, args.host, args.report_version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
