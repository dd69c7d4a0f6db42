"""The handlers of `runstream alerts ...` (flags in runstream.cli_alerts): thin wrappers on
runstream.Api's alert calls that print what a person needs and return an exit code."""

from __future__ import annotations

import sys
import time

from runstream.alert_rules import describe
from runstream.api import Api
from runstream.errors import RunstreamError, ServerError


def _fail(exc: Exception) -> int:
    message = exc.details if isinstance(exc, ServerError) else str(exc)
    print(f"error: {message}", file=sys.stderr)
    return 2


def ls(args) -> int:
    try:
        with Api(endpoint=args.endpoint, api_key=args.api_key) as api:
            rules = api.alert_rules(args.project)
    except RunstreamError as exc:
        return _fail(exc)
    if not rules:
        print(f"no alert rules in {args.project!r}: add one with `runstream alerts add {args.project} ...`")
        return 0
    for r in rules:
        print(f"{r.rule_id}  {r.name!r}  {r.kind}: {describe(r)}  -> {r.webhook_url}  (by {r.creator})")
    return 0


def add(args) -> int:
    try:
        with Api(endpoint=args.endpoint, api_key=args.api_key) as api:
            rule = api.add_alert_rule(
                args.project, args.name, args.kind, webhook_url=args.webhook, key=args.key, op=args.op,
                value=args.value, last_n=args.last_n, minutes=args.minutes, secret=args.secret,
            )  # fmt: skip
    except RunstreamError as exc:
        return _fail(exc)
    print(f"added {rule.rule_id}: {rule.kind}: {describe(rule)} -> {rule.webhook_url}")
    if not args.secret:
        print(f"webhook secret (shown once): {rule.secret}")
    return 0


def rm(args) -> int:
    try:
        with Api(endpoint=args.endpoint, api_key=args.api_key) as api:
            api.delete_alert_rule(args.project, args.rule_id)
    except RunstreamError as exc:
        return _fail(exc)
    print(f"removed {args.rule_id}")
    return 0


def firings(args) -> int:
    try:
        with Api(endpoint=args.endpoint, api_key=args.api_key) as api:
            found = api.alert_firings(args.project, args.rule, args.limit)
    except RunstreamError as exc:
        return _fail(exc)
    if not found:
        print(f"no alert firings in {args.project!r}")
    for f in found:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(f.fired_ms / 1000))
        print(f"{when}Z  {f.rule_id}  run {f.run_id}: {f.message}  [{f.status}, {f.attempts} attempts]")
    return 0
