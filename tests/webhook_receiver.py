"""A tiny local webhook receiver for alert tests: an http.server on 127.0.0.1 in a thread that
keeps every POST (headers, raw body) and can answer the first `fail_first` requests with 500."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(self, fail_first: int = 0):
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.fail_first = fail_first
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.requests += 1
                    fail = receiver.requests <= receiver.fail_first
                    if not fail:
                        receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if fail else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def payloads(self) -> list[dict]:
        with self._lock:
            return [json.loads(body) for _, body in self.received]

    def wait_for(self, predicate, timeout_s: float = 60.0) -> list[dict]:
        """The payloads once `predicate(payloads)` holds; AssertionError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.payloads()
            if predicate(got):
                return got
            time.sleep(0.1)
        raise AssertionError(f"webhook payloads never matched; got {self.payloads()}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
