"""Evaluates alert rules where the points are already at hand: the store writer's process.

The writer hands every stored block to its listeners before it acks (StoreWriter.subscribe); the
evaluator's listener only puts the block on a bounded queue (a full queue drops the block, counted
and logged: alerts never slow ingest down) and one evaluator thread does the rest:

- metric batches: threshold and nonfinite rules of the batch's project and key; the newest
  `last_n` values per (rule, run) are kept in memory. A last_n = 1 rule fires when any point of
  the batch crosses (vectorized), else the condition is decided on the batch's newest points;
- run rows (run events, the crash timer's marks): which runs are running (for no_points) and
  crashed (for crashed rules);
- every `alerts_check_interval_s`: no_points rules against each running run's last point (or its
  start) and a reread of the rules (others may have changed them through another process).

A run's episode of a rule opens when the condition becomes true (that fires: a firing row, then a
webhook delivery) and closes when it is seen false (rules.Episodes). With several Kafka writers
each evaluates the runs of its own partitions."""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable

import numpy as np

from runstream import states
from runstream_services.alerts import rules
from runstream_services.alerts.rules import Episodes, Rule
from runstream_services.alerts.store import AlertStore
from runstream_services.alerts.webhook import Delivery, WebhookSender
from runstream_services.config import ServerSettings

log = logging.getLogger("runstream.alerts")
MAX_QUEUED_BLOCKS = 1_000


def _jsonable(x: float) -> float | str:
    return x if math.isfinite(x) else repr(x)  # "nan", "inf", "-inf": JSON has no NaN


class AlertEvaluator:
    def __init__(
        self, store: AlertStore, settings: ServerSettings, *, clock: Callable[[], float] = time.time
    ):
        """With Kafka, each writer learns the running runs from the blocks it stores (its own
        partitions'), so no two writers judge one run silent; embedded, the runs running at start
        are read from the store too, and firings left pending by the last run are delivered."""
        self.store = store
        self.load_running = settings.bus == "embedded"
        self.interval_s = max(0.05, settings.alerts_check_interval_s)
        self.clock = clock
        self.sender = WebhookSender(
            self._delivered,
            attempts=settings.alert_webhook_attempts,
            backoff_s=settings.alert_webhook_backoff_s,
            timeout_s=settings.alert_webhook_timeout_s,
        )
        self.dropped_blocks = 0
        self.fired = 0
        self._rules: dict[str, list[Rule]] = {}
        self._rules_lock = threading.Lock()
        self._blocks: queue.Queue = queue.Queue(maxsize=MAX_QUEUED_BLOCKS)
        self._episodes = Episodes()
        self._recent: dict[tuple[str, str, str], deque] = {}  # (project, rule_id, run_id) -> values
        self._running: dict[tuple[str, str], int] = {}  # running runs -> last point (or start) ms
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="runstream-alerts", daemon=True)

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        try:
            self.reload_rules()
            for project, run_id, heartbeat_ms in self.store.running_runs() if self.load_running else ():
                self._running[(project, run_id)] = int(heartbeat_ms)
            resent = self.resend_pending() if self.load_running else 0  # Kafka: whose they are is unknown
            if resent:
                log.info("alerts: delivering %d firings left pending by the last run", resent)
        except Exception:
            log.exception(
                "alerts: loading rules, running runs or pending firings failed; rules retried every check"
            )
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        try:
            self._blocks.put_nowait(None)  # wakes the thread now, not at the next check (30 s)
        except queue.Full:
            pass  # a full queue wakes it anyway
        if self._thread.is_alive():
            self._thread.join(5)
        self.sender.close()

    def reload_rules(self) -> None:
        """Rereads every live rule (after a change through the AlertService, and every check)."""
        by_project: dict[str, list[Rule]] = {}
        for rule in self.store.rules():
            by_project.setdefault(rule.project, []).append(rule)
        with self._rules_lock:
            gone = {(r.project, r.rule_id) for rs in self._rules.values() for r in rs} - {
                (r.project, r.rule_id) for rs in by_project.values() for r in rs
            }
            self._rules = by_project
        for project, rule_id in gone:
            self._episodes.drop_rule(project, rule_id)
            for key in [k for k in self._recent if k[:2] == (project, rule_id)]:
                del self._recent[key]

    def _rules_of(self, project: str) -> list[Rule]:
        with self._rules_lock:
            return self._rules.get(project, [])

    # ---- the writer's listener ------------------------------------------------------------------

    def on_stored(self, block) -> None:
        """StoreWriter listener: never blocks the writer."""
        try:
            self._blocks.put_nowait(block)
        except queue.Full:
            self.dropped_blocks += 1
            if self.dropped_blocks % 1000 == 1:
                log.warning("alerts: %d stored blocks not evaluated (evaluator behind)", self.dropped_blocks)

    # ---- the evaluator thread -------------------------------------------------------------------

    def _loop(self) -> None:
        next_check = time.monotonic() + self.interval_s
        while not self._stop.is_set():
            try:
                block = self._blocks.get(timeout=max(0.0, next_check - time.monotonic()))
            except queue.Empty:
                block = None
            try:
                if block is not None:
                    self.evaluate_block(block)
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + self.interval_s
                    self.reload_rules()
                    self.check_silence()
            except Exception:
                log.exception("alerts: evaluation failed; going on with the next block")

    def evaluate_block(self, block) -> None:
        for row in () if block.edited else block.runs:  # an edit changes no state: nothing to judge
            self._run_row(row)
        for env, batch in block.metrics:
            self._running_point(env.project, env.run_id, env.received_ms)
            project_rules = self._rules_of(env.project)
            if project_rules:
                self._batch(env.project, env.run_id, batch, project_rules)

    def _running_point(self, project: str, run_id: str, received_ms: int) -> None:
        key = (project, run_id)
        if key in self._running:
            self._running[key] = max(self._running[key], received_ms)

    def _run_row(self, row) -> None:
        key = (row.project, row.run_id)
        if row.state == states.RUNNING:
            self._running[key] = max(self._running.get(key, 0), row.start_ms, row.heartbeat_ms)
        else:
            self._running.pop(key, None)
            if row.state in states.TERMINAL_STATES:  # its metric rules' memory is no longer needed
                for recent in [k for k in self._recent if k[2] == row.run_id and k[0] == row.project]:
                    del self._recent[recent]
        for rule in self._rules_of(row.project):
            if rule.kind == "crashed":
                if row.state == states.CRASHED:
                    self._enter(rule, row.run_id, "run crashed (no heartbeat)", {"state": row.state,
                                "last_heartbeat_ms": row.heartbeat_ms})  # fmt: skip
                else:
                    self._episodes.leave(rule.project, rule.rule_id, row.run_id)
            elif rule.kind == "no_points" and row.state != states.RUNNING:
                self._episodes.leave(rule.project, rule.rule_id, row.run_id)

    def _batch(self, project: str, run_id: str, batch, project_rules: list[Rule]) -> None:
        if not batch.keys:
            return
        steps = np.frombuffer(batch.steps, "<i8")
        values = np.frombuffer(batch.values, "<f8")
        # one key: the SDK leaves key_index empty (every point is key 0)
        index = np.frombuffer(batch.key_index, "<u2") if batch.key_index else np.zeros(len(values), "<u2")
        positions = {k: i for i, k in enumerate(batch.keys)}
        for rule in project_rules:
            if rule.kind not in ("threshold", "nonfinite"):
                continue
            if rule.key:
                if rule.key not in positions:
                    continue
                mask = index == positions[rule.key]
            else:
                mask = np.ones(len(values), dtype=bool)
            if not mask.any():
                continue
            order = np.argsort(steps[mask], kind="stable")
            v, s = values[mask][order], steps[mask][order]
            if rule.kind == "nonfinite":
                self._nonfinite(rule, run_id, batch, index[mask][order], v, s)
            else:
                self._threshold(rule, run_id, v, s)

    def _nonfinite(self, rule: Rule, run_id: str, batch, keys_idx, v, s) -> None:
        bad = ~np.isfinite(v)
        if not bad.any():
            self._episodes.leave(rule.project, rule.rule_id, run_id)
            return
        i = int(np.argmax(bad))
        key = batch.keys[int(keys_idx[i])]
        self._enter(rule, run_id, f"{key} is {float(v[i])} at step {int(s[i])}",
                    {"key": key, "step": int(s[i]), "value": _jsonable(float(v[i]))})  # fmt: skip

    def _threshold(self, rule: Rule, run_id: str, v, s) -> None:
        """Every window of last_n finite points that ends in this batch is decided, in step
        order: the first window that holds opens an episode (fires), one that does not closes it."""
        key = (rule.project, rule.rule_id, run_id)
        recent = self._recent.setdefault(key, deque(maxlen=rule.last_n))  # newest finite values
        finite = np.isfinite(v)
        fv, fs = v[finite], s[finite]
        means, ends = rules.window_means(list(recent), fv, rule.last_n)
        recent.extend(fv[-rule.last_n :].tolist())
        if not len(means):
            return  # too few finite points yet: undecided
        holds = rules.OPS[rule.op](means, rule.value)
        start = 0
        if self._episodes.is_open(*key):
            ended = np.flatnonzero(~holds)
            if not len(ended):
                return  # the open episode goes on
            self._episodes.leave(*key)
            start = int(ended[0])
        hits = np.flatnonzero(holds[start:])
        if len(hits):
            i = start + int(hits[0])
            self._fire_threshold(rule, run_id, float(means[i]), int(fs[ends[i]]))
            if not holds[-1]:
                self._episodes.leave(*key)

    def _fire_threshold(self, rule: Rule, run_id: str, value: float, step: int) -> None:
        what = f"mean of last {rule.last_n} of {rule.key}" if rule.last_n > 1 else rule.key
        self._enter(rule, run_id, f"{what} = {value:g} {rule.op} {rule.value:g} at step {step}",
                    {"key": rule.key, "value": _jsonable(value), "step": step})  # fmt: skip

    def check_silence(self, now_ms: int | None = None) -> None:
        now_ms = int(self.clock() * 1000) if now_ms is None else now_ms
        for (project, run_id), last_ms in list(self._running.items()):
            for rule in self._rules_of(project):
                if rule.kind != "no_points":
                    continue
                if now_ms - last_ms > rule.minutes * 60_000:
                    self._enter(rule, run_id, f"no points for {(now_ms - last_ms) / 60_000:.1f} minutes",
                                {"last_point_ms": last_ms, "minutes": rule.minutes})  # fmt: skip
                else:
                    self._episodes.leave(project, rule.rule_id, run_id)

    # ---- firing and delivery --------------------------------------------------------------------

    def _enter(self, rule: Rule, run_id: str, message: str, detail: dict) -> None:
        if not self._episodes.enter(rule.project, rule.rule_id, run_id):
            return  # this episode fired already
        fired_ms = int(self.clock() * 1000)
        firing = {
            "project": rule.project, "rule_id": rule.rule_id, "run_id": run_id, "firing_id": uuid.uuid4().hex,
            "fired_ms": fired_ms, "message": message, "detail": json.dumps(detail), "status": "pending",
            "attempts": 0, "last_error": "",
        }  # fmt: skip
        self.fired += 1
        log.info("alert %r fired for run %s of %s: %s", rule.name, run_id, rule.project, message)
        try:
            self.store.record_firing(firing)
        except Exception:
            log.exception("alerts: recording firing %s failed (it is still delivered)", firing["firing_id"])
        self._deliver(rule, firing)

    def _deliver(self, rule: Rule, firing: dict) -> None:
        payload = {
            "firing_id": firing["firing_id"], "project": rule.project, "run_id": firing["run_id"],
            "fired_ms": firing["fired_ms"], "message": firing["message"], "detail": json.loads(firing["detail"]),
            "rule": {"rule_id": rule.rule_id, "name": rule.name, "kind": rule.kind, "condition": rule.describe()},
        }  # fmt: skip
        self.sender.send(Delivery(rule.webhook_url, rule.secret, payload, firing))

    def resend_pending(self, max_age_ms: int = 24 * 3600_000) -> int:
        """Delivers again the firings a stopped server left pending (fired within `max_age_ms`,
        their rule still live); the same firing id, so a receiver can drop a second copy.
        Returns how many."""
        since = int(self.clock() * 1000) - max_age_ms
        with self._rules_lock:
            live = {(r.project, r.rule_id): r for rs in self._rules.values() for r in rs}
        sent = 0
        for firing in self.store.pending_firings(since):
            rule = live.get((firing["project"], firing["rule_id"]))
            if rule is not None:
                self._deliver(rule, firing)
                sent += 1
        return sent

    def _delivered(self, delivery: Delivery, status: str, attempts: int, error: str) -> None:
        firing = dict(delivery.firing, status=status, attempts=attempts, last_error=error)
        self.store.record_firing(firing)
