"""The runstream.v1 AlertService: alert rules per project (create, list, delete) and their recent
firings. Rules are rows of alert_rules (alerts/store.py); the evaluator of this process (if it runs
the writer) rereads them at once after a change, evaluators elsewhere within their check interval.
Authorization: write role to create or delete, read to list. The webhook secret is returned once,
by CreateAlertRule; listings leave it out."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

from runstream.v1 import alerts_pb2, alerts_pb2_grpc
from runstream_services.alerts import rules
from runstream_services.alerts.rules import Rule
from runstream_services.alerts.store import AlertStore
from runstream_services.auth.keys import authorized
from runstream_services.errors import InvalidArgument, NotFound
from runstream_services.registry.rules import actor_of


def rule_proto(rule: Rule, with_secret: bool = False) -> alerts_pb2.AlertRule:
    return alerts_pb2.AlertRule(
        project=rule.project, rule_id=rule.rule_id, name=rule.name, kind=rule.kind, key=rule.key, op=rule.op,
        value=rule.value, last_n=rule.last_n, minutes=rule.minutes, webhook_url=rule.webhook_url,
        secret=rule.secret if with_secret else "", creator=rule.creator, created_ms=rule.created_ms,
    )  # fmt: skip


class AlertServicer(alerts_pb2_grpc.AlertServiceServicer):
    """`evaluator`: this process's AlertEvaluator, told to reread the rules after a change (None
    when this process runs no writer)."""

    def __init__(self, store: AlertStore, auth: Any = None, evaluator: Any = None, allowed_hosts=()):
        self.store = store
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts)
        self.auth = auth
        self.evaluator = evaluator

    def _allowed(self, context, project: str, need: str):
        """(project, principal) after checking the caller may `need` the project."""
        return authorized(self.auth, context, project, need)

    async def _changed(self, project: str, actor: str, action: str, rule: Rule) -> None:
        detail = {
            "name": rule.name,
            "kind": rule.kind,
            "condition": rule.describe(),
            "webhook_url": rule.webhook_url,
        }
        row = [int(time.time() * 1000), project, actor, action, rule.rule_id, json.dumps(detail)]
        await asyncio.to_thread(self.store.audit, row)
        if self.evaluator is not None:
            await asyncio.to_thread(self.evaluator.reload_rules)

    async def CreateAlertRule(self, request, context):
        given = request.rule
        project, principal = self._allowed(context, given.project, "write")
        rule = rules.checked(
            Rule(
                project=project,
                rule_id=uuid.uuid4().hex[:12],
                name=given.name.strip(),
                kind=given.kind,
                key=given.key,
                op=given.op,
                value=given.value,
                last_n=given.last_n or 1,
                minutes=given.minutes,
                webhook_url=given.webhook_url,
                secret=given.secret or rules.new_secret(),
                creator=actor_of(principal),
                created_ms=int(time.time() * 1000),
            ),
            self.allowed_hosts,
        )
        existing = await asyncio.to_thread(self.store.rules, project)
        if len(existing) >= rules.MAX_RULES_PER_PROJECT:
            raise InvalidArgument(
                f"project {project!r} has {len(existing)} alert rules, the most allowed: delete some first"
            )
        await asyncio.to_thread(self.store.add_rule, rule)
        await self._changed(project, rule.creator, "alert.created", rule)
        return alerts_pb2.CreateAlertRuleResponse(rule=rule_proto(rule, with_secret=True))

    async def ListAlertRules(self, request, context):
        project, _ = self._allowed(context, request.project, "read")
        found = await asyncio.to_thread(self.store.rules, project)
        return alerts_pb2.ListAlertRulesResponse(rules=[rule_proto(r) for r in found])

    async def DeleteAlertRule(self, request, context):
        project, principal = self._allowed(context, request.project, "write")
        found = [
            r for r in await asyncio.to_thread(self.store.rules, project) if r.rule_id == request.rule_id
        ]
        if not found:
            raise NotFound(
                f"no alert rule {request.rule_id!r} in project {project!r}: `runstream alerts ls {project}` lists them"
            )
        await asyncio.to_thread(self.store.delete_rule, found[0])
        await self._changed(project, actor_of(principal), "alert.deleted", found[0])
        return alerts_pb2.DeleteAlertRuleResponse()

    async def ListAlertFirings(self, request, context):
        project, _ = self._allowed(context, request.project, "read")
        limit = min(request.limit or 100, 1000)
        found = await asyncio.to_thread(self.store.firings, project, request.rule_id, limit)
        names = rules.FIRING_COLUMNS[:-1]
        return alerts_pb2.ListAlertFiringsResponse(
            firings=[alerts_pb2.AlertFiring(**dict(zip(names, row, strict=True))) for row in found]
        )
