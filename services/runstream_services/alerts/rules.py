"""Alert rules: what a rule may say, how a condition is decided, and firing episodes.

Kinds:
- threshold: the mean of `last_n` consecutive finite points (1: each point) of metric `key` of a
  run compared with `value` by `op` (>, >=, <, <=, ==, !=); every window that ends in a stored
  batch is decided, in step order; non-finite points are skipped (the nonfinite kind reports them).
- nonfinite: a point of `key` (any user metric when `key` is empty) is NaN or +-inf.
- no_points: a running run logged no metric point for `minutes` (since its last point, or since
  it started).
- crashed: the server marked a run crashed (it went silent without finishing).

Episodes: a rule fires once per (rule, run) when its condition becomes true, and again only after
the condition was seen false in between (threshold back across, finite points again, points again,
the run revived). `Episodes` keeps that state in memory; a restarted server starts with none, so a
condition still true after a restart fires once more."""

from __future__ import annotations

import math
import operator
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from runstream import alert_rules
from runstream_services.errors import InvalidArgument
from runstream_services.ingest.validation import check_key

KINDS = ("threshold", "nonfinite", "no_points", "crashed")
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}  # fmt: skip
MAX_LAST_N = 10_000
MAX_RULES_PER_PROJECT = 1_000
RULE_COLUMNS = (
    "project", "rule_id", "name", "kind", "key", "op", "value", "last_n", "minutes", "webhook_url", "secret",
    "creator", "created_ms", "deleted", "revision",
)  # fmt: skip
FIRING_COLUMNS = (
    "project", "rule_id", "run_id", "firing_id", "fired_ms", "message", "detail", "status", "attempts", "last_error",
    "revision",
)  # fmt: skip


@dataclass(frozen=True)
class Rule:
    project: str
    rule_id: str
    name: str
    kind: str
    key: str = ""
    op: str = ""
    value: float = 0.0
    last_n: int = 1
    minutes: float = 0.0
    webhook_url: str = ""
    secret: str = ""
    creator: str = ""
    created_ms: int = 0

    def row(self, revision: int, deleted: bool = False) -> list:
        return [
            self.project, self.rule_id, self.name, self.kind, self.key, self.op, self.value, self.last_n,
            self.minutes, self.webhook_url, self.secret, self.creator, self.created_ms, int(deleted), revision,
        ]  # fmt: skip

    def describe(self) -> str:
        return alert_rules.describe(self)


def checked(rule: Rule, allowed_hosts: Sequence[str] = ()) -> Rule:
    """The rule if it is complete and sound; InvalidArgument saying what to fix otherwise.
    `allowed_hosts`: the hosts webhooks may go to (exact, or ".suffix"); empty: any."""
    if rule.kind not in KINDS:
        raise InvalidArgument(f"alert kind {rule.kind!r} is unknown: use one of {', '.join(KINDS)}")
    if not rule.name or len(rule.name) > 256:
        raise InvalidArgument("an alert rule needs a name of 1 to 256 characters")
    url = urlsplit(rule.webhook_url)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise InvalidArgument(f"webhook_url {rule.webhook_url[:200]!r} must be an http:// or https:// URL")
    host = (url.hostname or "").lower()
    if allowed_hosts and not any(
        host == h or (h.startswith(".") and host.endswith(h)) for h in allowed_hosts
    ):
        raise InvalidArgument(
            f"webhook host {host!r} is not allowed on this server: use one of {', '.join(allowed_hosts)} "
            "(server setting alert_webhook_hosts)"
        )
    if rule.kind == "threshold":
        check_key("alert metric", rule.key)
        if rule.op not in OPS:
            raise InvalidArgument(f"op {rule.op!r} is unknown: use one of {' '.join(OPS)}")
        if not math.isfinite(rule.value):
            raise InvalidArgument(
                "a threshold value must be a finite number (use kind nonfinite for NaN/inf)"
            )
        if not 1 <= rule.last_n <= MAX_LAST_N:
            raise InvalidArgument(f"last_n must be 1 to {MAX_LAST_N} points")
    elif rule.kind == "nonfinite":
        if rule.key:
            check_key("alert metric", rule.key)
    elif rule.kind == "no_points" and not (rule.minutes > 0 and math.isfinite(rule.minutes)):
        raise InvalidArgument("a no_points rule needs minutes > 0")
    return rule


def new_secret() -> str:
    return secrets.token_hex(32)


def window_means(previous: Sequence[float], values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean of every window of `n` consecutive finite points that ends among `values` (a
    batch's finite values in step order; `previous`: the newest finite values before them), and
    for each window the index in `values` where it ends. Empty while fewer than n points exist."""
    seq = np.concatenate([np.asarray(previous, dtype=float), values])
    if len(seq) < n:
        return np.empty(0), np.empty(0, dtype=int)
    sums = np.concatenate([[0.0], np.cumsum(seq)])
    means = (sums[n:] - sums[:-n]) / n
    ends = np.arange(n - 1, len(seq)) - len(previous)
    keep = ends >= 0
    return means[keep], ends[keep]


class Episodes:
    """Which (rule, run) conditions are true now; `enter` is True only on a false -> true change."""

    def __init__(self) -> None:
        self._open: set[tuple[str, str, str]] = set()

    def enter(self, project: str, rule_id: str, run_id: str) -> bool:
        key = (project, rule_id, run_id)
        if key in self._open:
            return False
        self._open.add(key)
        return True

    def leave(self, project: str, rule_id: str, run_id: str) -> None:
        self._open.discard((project, rule_id, run_id))

    def is_open(self, project: str, rule_id: str, run_id: str) -> bool:
        return (project, rule_id, run_id) in self._open

    def drop_rule(self, project: str, rule_id: str) -> None:
        self._open = {k for k in self._open if k[:2] != (project, rule_id)}
