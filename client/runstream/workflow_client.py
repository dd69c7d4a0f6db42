"""Client calls for editable runs (RunEditService) and alerts (AlertService).

`WorkflowCalls` adds them to a QueryClient (same channel, auth header, deadlines and typed errors,
like registry_client.RegistryCalls); `runstream.Api` includes it:

    api = runstream.Api()
    api.update_run("mnist", run_id, name="baseline", tags_add={"keep": "yes"}, outcome="2% better")
    api.run_edits("mnist", run_id)          # who changed what, when
    rule = api.add_alert_rule("mnist", "loss diverged", "threshold", key="loss", op=">", value=10,
                              webhook_url="https://hooks.example/rs")
    rule.secret                             # the HMAC key of X-Runstream-Signature (shown once)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from runstream.v1 import alerts_pb2, alerts_pb2_grpc, run_edits_pb2, run_edits_pb2_grpc


class WorkflowCalls:
    """RunEditService and AlertService RPCs over a QueryClient's channel (a mixin)."""

    _run_edits: run_edits_pb2_grpc.RunEditServiceStub | None = None
    _alerts: alerts_pb2_grpc.AlertServiceStub | None = None

    def _wcall(self: Any, stub_name: str, method: str, request):
        if stub_name == "edits":
            if self._run_edits is None:
                self._run_edits = run_edits_pb2_grpc.RunEditServiceStub(self._channel)
            stub = self._run_edits
        else:
            if self._alerts is None:
                self._alerts = alerts_pb2_grpc.AlertServiceStub(self._channel)
            stub = self._alerts
        try:
            return getattr(stub, method)(request, timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise self._error(method, exc) from None

    # ------------------------------------------------------------ run edits

    def update_run(
        self,
        project: str,
        run_id: str,
        *,
        name: str | None = None,
        notes: str | None = None,
        tags_add: Mapping[str, str] | None = None,
        tags_remove: Iterable[str] = (),
        hypothesis: str | None = None,
        outcome: str | None = None,
    ) -> run_edits_pb2.UpdateRunResponse:
        """Edits a run (ended or not) as a person: fields left None are unchanged. Needs a key with
        the write role; the run's state is never changed. Every change is kept with who and when
        (`run_edits`). Returns the run's edited fields as they are now and the changes made."""
        request = run_edits_pb2.UpdateRunRequest(
            project=project, run_id=run_id, tags_add=dict(tags_add or {}), tags_remove=list(tags_remove)
        )
        for field, value in (
            ("name", name),
            ("notes", notes),
            ("hypothesis", hypothesis),
            ("outcome", outcome),
        ):
            if value is not None:
                setattr(request, field, value)
        return self._wcall("edits", "UpdateRun", request)

    def run_edits(self, project: str, run_id: str) -> run_edits_pb2.ListRunEditsResponse:
        """The run's edit history (oldest first) and its current hypothesis and outcome."""
        return self._wcall(
            "edits", "ListRunEdits", run_edits_pb2.ListRunEditsRequest(project=project, run_id=run_id)
        )

    # ------------------------------------------------------------ alerts

    def add_alert_rule(
        self,
        project: str,
        name: str,
        kind: str,
        *,
        webhook_url: str,
        key: str = "",
        op: str = "",
        value: float = 0.0,
        last_n: int = 1,
        minutes: float = 0.0,
        secret: str = "",
    ) -> alerts_pb2.AlertRule:
        """Adds an alert rule. kind: "threshold" (key op value, on the mean of the last_n newest
        points), "nonfinite" (a NaN/inf point of key, or of any metric when key is ""),
        "no_points" (a running run logged nothing for `minutes`), "crashed". Each firing is POSTed
        as JSON to webhook_url, signed with HMAC-SHA256 of `secret` (generated when empty; the
        answer carries it, listings never do) in the X-Runstream-Signature header."""
        rule = alerts_pb2.AlertRule(
            project=project, name=name, kind=kind, key=key, op=op, value=value, last_n=last_n, minutes=minutes,
            webhook_url=webhook_url, secret=secret,
        )  # fmt: skip
        return self._wcall("alerts", "CreateAlertRule", alerts_pb2.CreateAlertRuleRequest(rule=rule)).rule

    def alert_rules(self, project: str) -> list[alerts_pb2.AlertRule]:
        return list(
            self._wcall("alerts", "ListAlertRules", alerts_pb2.ListAlertRulesRequest(project=project)).rules
        )

    def delete_alert_rule(self, project: str, rule_id: str) -> None:
        self._wcall(
            "alerts", "DeleteAlertRule", alerts_pb2.DeleteAlertRuleRequest(project=project, rule_id=rule_id)
        )

    def alert_firings(
        self, project: str, rule_id: str = "", limit: int = 100
    ) -> list[alerts_pb2.AlertFiring]:
        """Recent firings, newest first, with their webhook delivery status."""
        request = alerts_pb2.ListAlertFiringsRequest(project=project, rule_id=rule_id, limit=limit)
        return list(self._wcall("alerts", "ListAlertFirings", request).firings)
