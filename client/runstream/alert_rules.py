"""How an alert rule reads to a person: one wording for the webhook body, the CLI and the
dashboard. `rule` is anything with the rule's fields (the server's alerts.rules.Rule or the
runstream.v1.AlertRule message)."""

from __future__ import annotations


def describe(rule) -> str:
    if rule.kind == "threshold":
        over = f"mean of the last {rule.last_n} points of " if rule.last_n > 1 else ""
        return f"{over}{rule.key} {rule.op} {rule.value:g}"
    if rule.kind == "nonfinite":
        return f"{rule.key or 'a metric'} is NaN or infinite"
    if rule.kind == "no_points":
        return f"no points for {rule.minutes:g} minutes"
    return "run crashed"
