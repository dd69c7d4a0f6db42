"""Webhook delivery of alert firings: an HTTP POST of a JSON body, signed, retried with backoff.

The signature is HMAC-SHA256 of the exact body bytes with the rule's secret, sent as
`X-Runstream-Signature: sha256=<hex>` (a receiver recomputes it over the raw body and compares
with hmac.compare_digest). `X-Runstream-Firing` carries the firing id, so a receiver can drop a
delivery retried after a lost answer.

Never on the ingest path: `send` only queues. A timer thread hands due attempts to a few worker
threads; a failed attempt (connection error, timeout, non-2xx answer) is retried after
backoff_s * 2^(attempt-1), +-20% jitter, up to `attempts` tries; `on_done(delivery, status,
attempts, error)` is called once with "delivered" or "failed". At most MAX_QUEUED deliveries wait;
more are reported failed at once (counted, logged), never waited for."""

from __future__ import annotations

import hashlib
import heapq
import hmac
import itertools
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

log = logging.getLogger("runstream.alerts.webhook")
MAX_QUEUED = 10_000
SIGNATURE_HEADER = "X-Runstream-Signature"


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: it could lead a POST to a host alert_webhook_hosts keeps out."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def sign(secret: str, body: bytes) -> str:
    """The signature header's value for `body`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """True when `header` is the signature of `body` with `secret` (for receivers and tests)."""
    return hmac.compare_digest(sign(secret, body), header or "")


@dataclass
class Delivery:
    url: str
    secret: str
    payload: dict
    firing: dict  # the firing row (alerts/store.py), updated with the outcome
    attempts: int = 0
    body: bytes = field(init=False, default=b"")

    def __post_init__(self) -> None:
        self.body = json.dumps(self.payload, sort_keys=True, allow_nan=False).encode()


class WebhookSender:
    def __init__(
        self,
        on_done: Callable[[Delivery, str, int, str], None],
        *,
        attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 5.0,
        workers: int = 4,
    ):
        self.on_done = on_done
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self._heap: list[tuple[float, int, Delivery]] = []
        self._order = itertools.count()
        self._cv = threading.Condition()
        self._stopped = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="runstream-webhook")
        self._timer = threading.Thread(target=self._loop, name="runstream-webhook-timer", daemon=True)
        self._timer.start()

    def send(self, delivery: Delivery) -> None:
        self._schedule(delivery, 0.0)

    def _schedule(self, delivery: Delivery, delay_s: float) -> None:
        with self._cv:
            if len(self._heap) >= MAX_QUEUED or self._stopped:
                full = True
            else:
                full = False
                heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._order), delivery))
                self._cv.notify()
        if full:
            log.warning(
                "webhook queue full or stopped: firing %s not delivered", delivery.firing.get("firing_id")
            )
            self._done(delivery, "failed", "the webhook queue was full (too many undelivered firings)")

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopped and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cv.wait(timeout=(self._heap[0][0] - time.monotonic()) if self._heap else None)
                if self._stopped:
                    return
                _, _, delivery = heapq.heappop(self._heap)
            self._pool.submit(self._attempt, delivery)

    def _attempt(self, delivery: Delivery) -> None:
        delivery.attempts += 1
        request = urllib.request.Request(
            delivery.url,
            data=delivery.body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "runstream-alerts",
                SIGNATURE_HEADER: sign(delivery.secret, delivery.body),
                "X-Runstream-Firing": str(delivery.firing.get("firing_id", "")),
            },
        )
        try:
            with _OPENER.open(request, timeout=self.timeout_s) as answer:
                answer.read(64 * 1024)
            self._done(delivery, "delivered", "")
            return
        except urllib.error.HTTPError as exc:
            error = f"HTTP {exc.code} from {delivery.url}"
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections
            error = f"{type(exc).__name__}: {exc}"
        if delivery.attempts >= self.attempts:
            log.warning("webhook %s failed %d times, giving up: %s", delivery.url, delivery.attempts, error)
            self._done(delivery, "failed", error)
            return
        delivery.firing["last_error"] = error
        delay = self.backoff_s * 2 ** (delivery.attempts - 1) * random.uniform(0.8, 1.2)
        self._schedule(delivery, delay)

    def _done(self, delivery: Delivery, status: str, error: str) -> None:
        try:
            self.on_done(delivery, status, delivery.attempts, error)
        except Exception:
            log.exception("recording the webhook outcome failed")

    def close(self, timeout_s: float = 2.0) -> None:
        with self._cv:
            self._stopped = True
            self._cv.notify_all()
        self._timer.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
