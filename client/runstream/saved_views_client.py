"""Client calls for the dashboard's saved views (SavedViewService), a mixin of runstream.Api like
workflow_client.WorkflowCalls (same channel, auth header, deadlines and typed errors):

    api = runstream.Api()
    api.save_view("mnist", "lr sweep", {"filter": "params.lr > 0.001", "curves": ["val_loss"]})
    api.saved_views("mnist")               # [SavedView(name, state (a dict), saved_by, saved_ms, ...)]
    api.delete_view("mnist", "lr sweep")
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from runstream.v1 import saved_views_pb2, saved_views_pb2_grpc


@dataclass(frozen=True)
class SavedView:
    """One saved view; `state` is the JSON object the dashboard keeps in its URL, as a dict."""

    project: str
    name: str
    state: dict[str, Any]
    created_by: str
    created_ms: int
    saved_by: str
    saved_ms: int

    @classmethod
    def from_proto(cls, view: saved_views_pb2.SavedView) -> SavedView:
        return cls(
            project=view.project, name=view.name, state=json.loads(view.state_json or "{}"),
            created_by=view.created_by, created_ms=view.created_ms, saved_by=view.saved_by, saved_ms=view.saved_ms,
        )  # fmt: skip


class SavedViewCalls:
    """SavedViewService RPCs over a QueryClient's channel (a mixin)."""

    _saved_views: saved_views_pb2_grpc.SavedViewServiceStub | None = None

    def _vcall(self: Any, method: str, request):
        if self._saved_views is None:
            self._saved_views = saved_views_pb2_grpc.SavedViewServiceStub(self._channel)
        try:
            return getattr(self._saved_views, method)(
                request, timeout=self.timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise self._error(method, exc) from None

    def save_view(self, project: str, name: str, state: Mapping[str, Any]) -> SavedView:
        """Saves `state` (a JSON-able mapping) as the view `name` of `project`, replacing a view of
        that name. Needs the write role."""
        request = saved_views_pb2.SaveViewRequest(
            project=project, name=name, state_json=json.dumps(dict(state))
        )
        return SavedView.from_proto(self._vcall("SaveView", request).view)

    def saved_views(self, project: str) -> list[SavedView]:
        """The project's saved views, by name."""
        answer = self._vcall("ListViews", saved_views_pb2.ListViewsRequest(project=project))
        return [SavedView.from_proto(v) for v in answer.views]

    def delete_view(self, project: str, name: str) -> None:
        """Removes the view; ServerError with code NOT_FOUND when the project has none of that name."""
        self._vcall("DeleteView", saved_views_pb2.DeleteViewRequest(project=project, name=name))
