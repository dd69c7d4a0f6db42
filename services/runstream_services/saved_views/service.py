"""The runstream.v1 SavedViewService: a project's named dashboard views (save = insert or
replace, list, delete = tombstone). Authorization: write role to save or delete, read to list.
Every save and delete is also an audit_log row ("view.saved" / "view.deleted")."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from runstream.v1 import saved_views_pb2, saved_views_pb2_grpc
from runstream_services.auth.keys import authorized
from runstream_services.errors import InvalidArgument, NotFound
from runstream_services.registry.rules import Revisions, actor_of
from runstream_services.saved_views import rules
from runstream_services.saved_views.store import SavedViewStore


def _view(row: tuple) -> saved_views_pb2.SavedView:
    project, name, state, created_by, created_ms, saved_by, saved_ms = row
    return saved_views_pb2.SavedView(
        project=project, name=name, state_json=state, created_by=created_by, created_ms=created_ms,
        saved_by=saved_by, saved_ms=saved_ms,
    )  # fmt: skip


class SavedViewServicer(saved_views_pb2_grpc.SavedViewServiceServicer):
    def __init__(self, store: SavedViewStore, auth: Any = None):
        self.store = store
        self.auth = auth
        self._revisions = Revisions()
        self._lock = asyncio.Lock()  # a save reads the view's first save before replacing it

    async def _audit(self, project: str, actor: str, action: str, name: str, detail: dict) -> None:
        row = [int(time.time() * 1000), project, actor, action, name, json.dumps(detail)]
        await asyncio.to_thread(self.store.audit, row)

    async def SaveView(self, request, context):
        project, principal = authorized(self.auth, context, request.project, "write")
        name = rules.view_name(request.name)
        state = rules.view_state(request.state_json)
        actor, now = actor_of(principal), int(time.time() * 1000)
        async with self._lock:
            before = await asyncio.to_thread(self.store.views, project, name)
            if not before:
                count = len(await asyncio.to_thread(self.store.views, project))
                if count >= rules.MAX_VIEWS_PER_PROJECT:
                    raise InvalidArgument(
                        f"project {project!r} has {count} saved views, the most allowed: delete some first"
                    )
            created_by, created_ms = (before[0][3], before[0][4]) if before else (actor, now)
            row = [project, name, state, created_by, created_ms, actor, now, 0, self._revisions.next()]
            await asyncio.to_thread(self.store.write, row)
        await self._audit(project, actor, "view.saved", name, {"replaced": bool(before)})
        return saved_views_pb2.SaveViewResponse(view=_view(tuple(row[:7])), replaced=bool(before))

    async def ListViews(self, request, context):
        project, _ = authorized(self.auth, context, request.project, "read")
        rows = await asyncio.to_thread(self.store.views, project)
        return saved_views_pb2.ListViewsResponse(views=[_view(r) for r in rows])

    async def DeleteView(self, request, context):
        project, principal = authorized(self.auth, context, request.project, "write")
        name = request.name.strip()
        actor = actor_of(principal)
        async with self._lock:
            found = await asyncio.to_thread(self.store.views, project, name)
            if not found:
                raise NotFound(
                    f"no saved view {name!r} in project {project!r}: `runstream views ls {project}` lists them"
                )
            p, n, state, created_by, created_ms, _, _ = found[0]
            now = int(time.time() * 1000)
            row = [p, n, state, created_by, created_ms, actor, now, 1, self._revisions.next()]
            await asyncio.to_thread(self.store.write, row)
        await self._audit(project, actor, "view.deleted", name, {})
        return saved_views_pb2.DeleteViewResponse()
