"""Loaders and actions for the run page's edit section and the Alerts page: the run-edit and alert
calls of the one runstream.Api of queries.py (`queries.api()`), shaped into DataFrames, cached per
viewer (login.per_viewer) with short TTLs. A failed call raises runstream.errors.ServerError."""

from __future__ import annotations

import json

import pandas as pd

from runstream.alert_rules import describe
from runstream_dashboard import login
from runstream_dashboard import queries as q

EDIT_COLUMNS = ["time", "field", "from", "to", "actor", "role"]
RULE_COLUMNS = ["rule_id", "name", "kind", "condition", "webhook_url", "creator", "created"]
FIRING_COLUMNS = ["fired", "rule", "run_id", "message", "status", "attempts", "last_error"]


def _shown(value_json: str, after: bool) -> str:
    """A field's value before or `after` an edit as shown; for tags (only the changed keys, None
    meaning absent), a tag absent before is left out and one removed is shown as "−key"."""
    value = json.loads(value_json)
    if isinstance(value, dict):
        shown = [
            f"{k}={v}" if v is not None else f"−{k}"
            for k, v in sorted(value.items())
            if v is not None or after
        ]
        return ", ".join(shown) or "—"
    return value if value else "—"


@login.per_viewer(ttl=2, show_spinner=False, max_entries=100)
def run_edits(project: str, run_id: str) -> tuple[pd.DataFrame, str, str]:
    """(history, hypothesis, outcome): the run's edits, newest first."""
    answer = q.api().run_edits(project, run_id)
    rows = [
        {
            "time": pd.Timestamp(e.time_ms, unit="ms"),
            "field": e.field,
            "from": _shown(e.old_value, False),
            "to": _shown(e.new_value, True),
            "actor": e.actor,
            "role": e.role,
        }  # fmt: skip
        for e in reversed(answer.edits)
    ]
    return pd.DataFrame(rows, columns=EDIT_COLUMNS), answer.hypothesis, answer.outcome


def update_run(project: str, run_id: str, **changes) -> int:
    """Edits the run; returns how many fields changed. Clears the run's cached answers."""
    answer = q.api().update_run(project, run_id, **changes)
    run_edits.clear()
    q.get_run.clear()
    q.search_runs.clear()
    return len(answer.edits)


@login.per_viewer(ttl=3, show_spinner=False)
def alert_rules(project: str) -> pd.DataFrame:
    rows = [
        {
            "rule_id": r.rule_id,
            "name": r.name,
            "kind": r.kind,
            "condition": describe(r),
            "webhook_url": r.webhook_url,
            "creator": r.creator,
            "created": pd.Timestamp(r.created_ms, unit="ms"),
        }  # fmt: skip
        for r in q.api().alert_rules(project)
    ]
    return pd.DataFrame(rows, columns=RULE_COLUMNS)


@login.per_viewer(ttl=3, show_spinner=False)
def alert_firings(project: str, limit: int = 200) -> pd.DataFrame:
    names = dict(zip(*(alert_rules(project)[c] for c in ("rule_id", "name")), strict=True))
    rows = [
        {
            "fired": pd.Timestamp(f.fired_ms, unit="ms"),
            "rule": names.get(f.rule_id, f.rule_id),
            "run_id": f.run_id,
            "message": f.message,
            "status": f.status,
            "attempts": f.attempts,
            "last_error": f.last_error,
        }  # fmt: skip
        for f in q.api().alert_firings(project, limit=limit)
    ]
    return pd.DataFrame(rows, columns=FIRING_COLUMNS)


def add_alert_rule(project: str, name: str, kind: str, **fields) -> str:
    """Adds a rule; returns its webhook secret (shown once)."""
    rule = q.api().add_alert_rule(project, name, kind, **fields)
    alert_rules.clear()
    return rule.secret


def delete_alert_rule(project: str, rule_id: str) -> None:
    q.api().delete_alert_rule(project, rule_id)
    alert_rules.clear()
