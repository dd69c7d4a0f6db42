"""The runstream.v1 RegistryService for grpc.aio: registered models, immutable model versions
made from a run's artifact, version metadata edits with history, and aliases.

Writes go straight to the store from the process serving the RPC, not through the ingest bus:
registry changes are rare (a person or a CI job promoting a model), each needs an answer that
says what it did (the new version number, the alias's previous target), and none of them is on
a training job's path. Changes to one model are serialized in this process (a lock per model).
Version numbers are also safe across processes serving one database: a version number is
claimed with an insert whose deduplication token is (project, model, number), the store keeps
only the first such claim, and only the claimant that reads its own claim back writes the
version, and the moves of one alias and the metadata edits of one model or version are claimed
the same way, in order, whichever process makes them (claims.py): a move's "from" is the
previous move's "to", and an edit starts from the previous edit (none is lost).

Run inputs and lineage (UseArtifact, ListRunInputs, GetLineage) are in inputs.py, mixed in here.

Every create, edit, alias move and delete also writes an audit_log row (who: the key's id; when;
from -> to; the caller's reason) right after the change itself. The alias and edit histories are
complete on their own (model_alias_moves, model_version_edits); the audit log is the one place
that lists every registry action of a project beside the runs' own.

Authorization: reads need the read role on the project, writes the write role, and moving or
deleting a protected alias (RegisteredModel.protected_aliases, default ["production"]) admin.
A key never learns anything of a project it may not read: the project check comes first."""

from __future__ import annotations

import asyncio
import json
import logging
import operator
import time
from typing import Any

from runstream.v1 import registry_pb2, registry_pb2_grpc
from runstream_services.auth.keys import authorized
from runstream_services.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from runstream_services.query.sql import Query, checked_db
from runstream_services.registry import claims, rules, sql
from runstream_services.registry.inputs import InputCalls
from runstream_services.storage.clickhouse import ClientPool

log = logging.getLogger("runstream.registry")


def _now_ms() -> int:
    return int(time.time() * 1000)


class RegistryServicer(InputCalls, registry_pb2_grpc.RegistryServiceServicer):
    """The registry of one database. `readers` runs every statement (reads and the registry's
    own inserts); `auth` is the server's ApiKeys (None: every call may do everything)."""

    def __init__(self, readers: ClientPool, database: str, auth: Any = None):
        self.readers = readers
        self.db = checked_db(database)
        self.auth = auth
        self._revisions = rules.Revisions()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # ------------------------------------------------------------ access and statements

    def _allowed(self, context, project: str, need: str):
        """(project, principal) after checking the caller may `need` the project."""
        return authorized(self.auth, context, project, need)

    def _require(self, principal, project: str, need: str) -> None:
        if self.auth is not None:
            self.auth.check(principal, project, need)

    async def _rows(self, query: Query) -> list[tuple]:
        def run() -> list[tuple]:
            with self.readers.client() as client:
                return client.query(query.sql, parameters=query.params).result_rows

        return await asyncio.to_thread(run)

    async def _insert(self, table: str, columns: tuple[str, ...], rows: list[list], token: str = "") -> None:
        def run() -> None:
            with self.readers.client() as client:
                settings = {"insert_deduplication_token": token} if token else None
                client.insert(f"{self.db}.{table}", rows, column_names=list(columns), settings=settings)

        await asyncio.to_thread(run)

    async def _audit(self, project: str, actor: str, action: str, target: str, detail: dict) -> None:
        await self._insert(
            "audit_log", sql.AUDIT_COLUMNS, [[_now_ms(), project, actor, action, target, json.dumps(detail)]]
        )

    def _lock(self, project: str, model: str) -> asyncio.Lock:
        return self._locks.setdefault((project, model), asyncio.Lock())

    # ------------------------------------------------------------ loading

    async def _model_row(self, project: str, name: str) -> tuple | None:
        rows = await self._rows(sql.models(self.db, project, name))
        return rows[0] if rows else None

    async def _model_created_elsewhere(self, project: str, name: str, wait_s: float = 5.0) -> tuple:
        """The model another process has claimed and is writing (its row appears a moment later)."""
        deadline = time.monotonic() + wait_s
        while (row := await self._model_row(project, name)) is None:
            if time.monotonic() > deadline:
                raise Unavailable(f"model {name!r} is being created by another registry process; try again")
            await asyncio.sleep(0.05)
        return row

    async def _require_model(self, project: str, name: str) -> tuple:
        row = await self._model_row(project, name)
        if row is None:
            raise NotFound(f"no registered model {name!r} in project {project!r}; create it first")
        return row

    async def _moves(self, project: str, model: str | None) -> dict[str, list[rules.AliasMove]]:
        out: dict[str, list[rules.AliasMove]] = {}
        for m, alias, to, frm, actor, reason, t, rev in await self._rows(
            sql.alias_moves(self.db, project, model)
        ):
            out.setdefault(m, []).append(rules.AliasMove(alias, to, frm, actor, reason, t, rev))
        return out

    async def _aliases(self, project: str, model: str) -> dict[str, int]:
        return rules.current_aliases((await self._moves(project, model)).get(model, []))

    async def _edits(self, project: str, model: str, version: int | None) -> dict[int, list[tuple]]:
        out: dict[int, list[tuple]] = {}
        for v, desc, tags, actor, t, _rev in await self._rows(sql.edits(self.db, project, model, version)):
            out.setdefault(v, []).append((desc, dict(tags), actor, t))
        return out

    async def _version_row(self, project: str, model: str, version: int) -> tuple:
        rows = await self._rows(sql.versions(self.db, project, model, version))
        if not rows:
            raise NotFound(f"model {model!r} of project {project!r} has no version {version}")
        return rows[0]

    # ------------------------------------------------------------ protos

    def _model_proto(
        self,
        project: str,
        row: tuple,
        aliases: dict[str, int],
        current: tuple[str, dict] | None = None,
        edits: list[tuple] | None = None,
    ) -> registry_pb2.RegisteredModel:
        """`current`: (description, tags) of the newest edit; `edits`: the history rows
        (description, tags, actor, time_ms, revision), when the answer carries the history."""
        name, description, protected, creator, created_ms, latest = row
        tags: dict[str, str] = {}
        if current is not None:
            description, tags = current
        out = registry_pb2.RegisteredModel(
            project=project, name=name, description=description, protected_aliases=list(protected),
            creator=creator, created_ms=created_ms, latest_version=int(latest), aliases=aliases, tags=tags,
        )  # fmt: skip
        if edits is not None:
            out.history.add(description=row[1], actor=creator, time_ms=created_ms)  # as created
            for desc, etags, actor, t, _rev in edits:
                out.history.add(description=desc, tags=dict(etags), actor=actor, time_ms=t)
        return out

    async def _model_edits(self, project: str, name: str) -> list[tuple]:
        return await self._rows(sql.model_edits(self.db, project, name))

    def _version_proto(
        self,
        project: str,
        model: str,
        row: tuple,
        edits: list[tuple],
        aliases: list[str],
        history: bool = False,
    ) -> registry_pb2.ModelVersion:
        (version, run_id, art_name, art_version, art_sha, files, datasets, commit, dirty, creator, created_ms,
         description, metrics) = row  # fmt: skip
        tags: dict[str, str] = {}
        if edits:
            description, tags = edits[-1][0], edits[-1][1]
        out = registry_pb2.ModelVersion(
            project=project, model=model, version=version, run_id=run_id, artifact_name=art_name,
            artifact_version=art_version, artifact_sha256=art_sha.decode() if isinstance(art_sha, bytes) else art_sha,
            git_commit=commit, git_dirty=bool(dirty), creator=creator, created_ms=created_ms,
            description=description, tags=tags, aliases=aliases,
        )  # fmt: skip
        for f in json.loads(files or "[]"):
            out.files.add(path=f["path"], sha256=f["sha256"], size=int(f["size"]))
        for d in json.loads(datasets or "[]"):
            out.datasets.add(
                name=str(d.get("name", "")), version=str(d.get("version", "")), uri=str(d.get("uri", ""))
            )
        for m in rules.metrics_from_json(metrics):
            out.metrics.add(**m)
        if history:
            for desc, etags, actor, t in edits:
                out.history.add(description=desc, tags=etags, actor=actor, time_ms=t)
        return out

    # ------------------------------------------------------------ models

    async def CreateRegisteredModel(self, request, context):
        project, principal = self._allowed(context, request.project, "write")
        name = rules.model_name(request.name)
        protected = rules.protected_aliases(request.protected_aliases, request.no_protected_aliases)
        description = rules.text("description", request.description)
        actor = rules.actor_of(principal)
        async with self._lock(project, name):
            row = await self._create_model(project, name, description, protected, actor)
        return registry_pb2.CreateRegisteredModelResponse(model=self._model_proto(project, row, {}))

    async def _create_model(self, project, name, description, protected, actor) -> tuple:
        """Inserts the model (caller holds its lock); AlreadyExists when the name is taken."""
        taken = AlreadyExists(f"model {name!r} already exists in project {project!r}")
        if await self._model_row(project, name) is not None:
            raise taken
        if not await claims.first(self._rows, self._insert, self.db, project, claims.model_subject(name)):
            raise taken  # another process created it a moment ago
        created = _now_ms()
        row = [project, name, description, protected, actor, created, self._revisions.next()]
        await self._insert("registered_models", sql.MODEL_COLUMNS, [row])
        await self._audit(project, actor, "model.created", name, {"protected_aliases": protected})
        return (name, description, protected, actor, created, 0)

    async def GetModel(self, request, context):
        project, _ = self._allowed(context, request.project, "read")
        name = rules.model_name(request.name)
        row, aliases, edits = await asyncio.gather(
            self._require_model(project, name), self._aliases(project, name), self._model_edits(project, name)
        )
        current = (edits[-1][0], dict(edits[-1][1])) if edits else None
        return registry_pb2.GetModelResponse(model=self._model_proto(project, row, aliases, current, edits))

    async def ListModels(self, request, context):
        project, _ = self._allowed(context, request.project, "read")
        limit = rules.page_size(request.limit)
        after = rules.read_page_token("models", request.page_token) or ""
        rows, moves, edited = await asyncio.gather(
            self._rows(sql.models(self.db, project, after=str(after), limit=limit + 1)),
            self._moves(project, None),
            self._rows(sql.current_model_tags(self.db, project)),
        )
        current = {name: (desc, dict(tags)) for name, desc, tags in edited}
        more = len(rows) > limit
        rows = rows[:limit]
        return registry_pb2.ListModelsResponse(
            models=[
                self._model_proto(project, r, rules.current_aliases(moves.get(r[0], [])), current.get(r[0]))
                for r in rows
            ],
            next_page_token=rules.page_token("models", rows[-1][0]) if more else "",
        )

    async def UpdateRegisteredModel(self, request, context):
        project, principal = self._allowed(context, request.project, "write")
        name = rules.model_name(request.name)
        reason = rules.text("reason", request.reason)
        actor = rules.actor_of(principal)
        description = rules.text("description", request.description) if request.set_description else None
        async with self._lock(project, name):
            row = await self._require_model(project, name)

            def change(edits: list[tuple]) -> tuple[tuple, tuple]:
                old = (edits[-1][0], dict(edits[-1][1])) if edits else (row[1], {})
                tags = rules.edited_tags(old[1], dict(request.set_tags), request.remove_tags)
                return old, (old[0] if description is None else description, tags)

            async def load() -> tuple[list[tuple], set[int]]:
                edits = await self._model_edits(project, name)
                return edits, {int(e[4]) for e in edits}

            turn = await claims.turn(
                self._rows, self._insert, self.db, project, claims.edits_subject(name), load,
                lambda edits: operator.ne(*change(edits)), self._revisions,
            )  # fmt: skip
            edits = turn.state
            if turn.revision:
                (old_desc, old_tags), (new_desc, new_tags) = change(turn.state)
                turn.check_in_time()
                edit = [project, name, new_desc, new_tags, actor, _now_ms(), turn.revision]
                await self._insert("registered_model_edits", sql.MODEL_EDIT_COLUMNS, [edit])
                await self._audit(
                    project, actor, "model.updated", name,
                    {"from": {"description": old_desc, "tags": old_tags},
                     "to": {"description": new_desc, "tags": new_tags}, "reason": reason},
                )  # fmt: skip
                edits = await self._model_edits(project, name)
            aliases = await self._aliases(project, name)
        current = (edits[-1][0], dict(edits[-1][1])) if edits else None
        proto = self._model_proto(project, row, aliases, current, edits)
        return registry_pb2.UpdateRegisteredModelResponse(model=proto)

    # ------------------------------------------------------------ versions

    async def CreateModelVersion(self, request, context):
        project, principal = self._allowed(context, request.project, "write")
        model = rules.model_name(request.model)
        if not request.run_id:
            raise InvalidArgument("run_id is required: the run that logged the artifact")
        if not request.artifact_name:
            raise InvalidArgument("artifact_name is required: the name given to run.log_artifact")
        description = rules.text("description", request.description)
        reason = rules.text("reason", request.reason)
        tags = rules.edited_tags({}, dict(request.tags), ())
        aliases = list(dict.fromkeys(rules.alias_name(a) for a in request.aliases))
        if len(aliases) > rules.MAX_ALIASES_PER_VERSION:
            raise InvalidArgument(f"at most {rules.MAX_ALIASES_PER_VERSION} aliases per call")
        actor = rules.actor_of(principal)
        async with self._lock(project, model):
            model_row = await self._model_row(project, model)
            if model_row is None and not request.create_model:
                raise NotFound(
                    f"no registered model {model!r} in project {project!r}; create it first (or pass create_model)"
                )
            protected = model_row[2] if model_row else list(rules.DEFAULT_PROTECTED_ALIASES)
            for alias in aliases:  # refuse before anything is written
                self._require(principal, project, rules.role_for_alias(alias, protected))
            run_rows, files, metric_rows = await asyncio.gather(
                self._rows(sql.run_row(self.db, project, request.run_id)),
                self._rows(sql.run_artifact_files(self.db, project, request.run_id, request.artifact_name)),
                self._rows(sql.run_metrics(self.db, project, request.run_id, list(request.metric_keys))),
            )
            if not run_rows:
                raise NotFound(f"run {request.run_id!r} not found in project {project!r}")
            chosen = rules.choose_artifact(
                files, project, request.run_id, request.artifact_name, request.artifact_version
            )
            missing = set(request.metric_keys) - {r[0] for r in metric_rows}
            if missing:
                raise NotFound(f"run {request.run_id!r} has no metric {sorted(missing)[0]!r} to snapshot")
            if model_row is None:
                try:
                    await self._create_model(project, model, "", protected, actor)
                except AlreadyExists:  # another process created it a moment ago: use that one
                    model_row = await self._model_created_elsewhere(project, model)
                    for alias in aliases:
                        self._require(principal, project, rules.role_for_alias(alias, model_row[2]))
            commit, dirty, datasets = run_rows[0]
            version = await claims.version_number(self._rows, self._insert, self.db, project, model)
            row = [
                project, model, version, request.run_id, chosen.name, chosen.version, chosen.sha256,
                chosen.files_json(), datasets or "[]", commit, dirty, actor, _now_ms(), description,
                rules.metrics_json(metric_rows),
            ]  # fmt: skip
            await self._insert("model_versions", sql.VERSION_COLUMNS, [row])
            # the first entry of the version's metadata history: as created
            edit = [project, model, version, description, tags, actor, row[12], self._revisions.next()]
            await self._insert("model_version_edits", sql.EDIT_COLUMNS, [edit])
            await self._audit(
                project, actor, "model_version.created", f"{model}:{version}",
                {"run_id": request.run_id, "artifact": f"{chosen.name}:{chosen.version}",
                 "sha256": chosen.sha256, "reason": reason},
            )  # fmt: skip
            for alias in aliases:
                await self._move(project, model, alias, version, actor, reason)
            edits = await self._edits(project, model, version)
            stored = await self._version_row(project, model, version)
        proto = self._version_proto(project, model, stored, edits.get(version, []), sorted(aliases))
        return registry_pb2.CreateModelVersionResponse(version=proto)

    async def _resolve(self, project: str, model: str, version: int, alias: str) -> int:
        if version:
            return version
        if not alias:
            raise InvalidArgument("give a version number or an alias")
        alias = rules.alias_name(alias)
        target = (await self._aliases(project, model)).get(alias)
        if target is None:
            await self._require_model(project, model)
            raise NotFound(f"model {model!r} has no alias {alias!r}")
        return target

    async def GetModelVersion(self, request, context):
        project, _ = self._allowed(context, request.project, "read")
        model = rules.model_name(request.model)
        version = await self._resolve(project, model, request.version, request.alias)
        row, edits, aliases = await asyncio.gather(
            self._version_row(project, model, version),
            self._edits(project, model, version),
            self._aliases(project, model),
        )
        names = rules.aliases_by_version(aliases).get(version, [])
        proto = self._version_proto(project, model, row, edits.get(version, []), names, history=True)
        return registry_pb2.GetModelVersionResponse(version=proto)

    async def ListModelVersions(self, request, context):
        project, _ = self._allowed(context, request.project, "read")
        model = rules.model_name(request.model)
        limit = rules.page_size(request.limit)
        below = rules.read_page_token("versions", request.page_token) or 0
        _, rows, edits, aliases = await asyncio.gather(
            self._require_model(project, model),
            self._rows(sql.versions(self.db, project, model, below=int(below), limit=limit + 1)),
            self._edits(project, model, None),
            self._aliases(project, model),
        )
        more = len(rows) > limit
        rows = rows[:limit]
        by_version = rules.aliases_by_version(aliases)
        return registry_pb2.ListModelVersionsResponse(
            versions=[
                self._version_proto(project, model, r, edits.get(r[0], []), by_version.get(r[0], []))
                for r in rows
            ],
            next_page_token=rules.page_token("versions", int(rows[-1][0])) if more else "",
        )

    async def UpdateModelVersion(self, request, context):
        project, principal = self._allowed(context, request.project, "write")
        model = rules.model_name(request.model)
        if not request.version:
            raise InvalidArgument("version is required")
        reason = rules.text("reason", request.reason)
        actor = rules.actor_of(principal)
        description = rules.text("description", request.description) if request.set_description else None
        async with self._lock(project, model):
            row = await self._version_row(project, model, request.version)

            def change(edits: list[tuple]) -> tuple[tuple, tuple]:
                old = (edits[-1][1], dict(edits[-1][2])) if edits else (row[11], {})
                tags = rules.edited_tags(old[1], dict(request.set_tags), request.remove_tags)
                return old, (old[0] if description is None else description, tags)

            async def load() -> tuple[list[tuple], set[int]]:
                edits = await self._rows(sql.edits(self.db, project, model, request.version))
                return edits, {int(e[5]) for e in edits}

            turn = await claims.turn(
                self._rows, self._insert, self.db, project, claims.edits_subject(model, request.version), load,
                lambda edits: operator.ne(*change(edits)), self._revisions,
            )  # fmt: skip
            if turn.revision:
                (old_desc, old_tags), (new_desc, new_tags) = change(turn.state)
                turn.check_in_time()
                t = _now_ms()
                edit = [project, model, request.version, new_desc, new_tags, actor, t, turn.revision]
                await self._insert("model_version_edits", sql.EDIT_COLUMNS, [edit])
                await self._audit(
                    project, actor, "model_version.updated", f"{model}:{request.version}",
                    {"from": {"description": old_desc, "tags": old_tags},
                     "to": {"description": new_desc, "tags": new_tags}, "reason": reason},
                )  # fmt: skip
            edits = (await self._edits(project, model, request.version)).get(request.version, [])
            aliases = rules.aliases_by_version(await self._aliases(project, model)).get(request.version, [])
        proto = self._version_proto(project, model, row, edits, aliases, history=True)
        return registry_pb2.UpdateModelVersionResponse(version=proto)

    # ------------------------------------------------------------ aliases

    async def SetAlias(self, request, context):
        project, principal = self._allowed(context, request.project, "write")
        model = rules.model_name(request.model)
        alias = rules.alias_name(request.alias)
        reason = rules.text("reason", request.reason)
        if not request.version:
            raise InvalidArgument("version is required: the version the alias should point at")
        async with self._lock(project, model):
            model_row = await self._require_model(project, model)
            self._require(principal, project, rules.role_for_alias(alias, model_row[2]))
            await self._version_row(project, model, request.version)
            previous = await self._move(
                project, model, alias, request.version, rules.actor_of(principal), reason
            )
        return registry_pb2.SetAliasResponse(previous_version=previous, version=request.version)

    async def DeleteAlias(self, request, context):
        project, principal = self._allowed(context, request.project, "write")
        model = rules.model_name(request.model)
        alias = rules.alias_name(request.alias)
        reason = rules.text("reason", request.reason)
        async with self._lock(project, model):
            model_row = await self._require_model(project, model)
            self._require(principal, project, rules.role_for_alias(alias, model_row[2]))
            if alias not in await self._aliases(project, model):
                raise NotFound(f"model {model!r} has no alias {alias!r}")
            previous = await self._move(project, model, alias, 0, rules.actor_of(principal), reason)
        return registry_pb2.DeleteAliasResponse(previous_version=previous)

    async def ListRegistryEvents(self, request, context):
        project, _ = self._allowed(context, request.project, "read")
        model = rules.model_name(request.model) if request.model else ""
        limit = rules.page_size(request.limit)
        before = rules.read_page_token("events", request.page_token)
        if before is not None and not (isinstance(before, list) and len(before) == 2):
            raise InvalidArgument("page_token is not one this listing handed out; start again without it")
        rows = await self._rows(
            sql.events(self.db, project, model, limit + 1, tuple(before) if before is not None else None)
        )
        more = len(rows) > limit
        rows = rows[:limit]
        return registry_pb2.ListRegistryEventsResponse(
            events=[
                registry_pb2.RegistryEvent(time_ms=t, actor=a, action=act, target=tg, detail=d)
                for t, a, act, tg, d, _h in rows
            ],
            next_page_token=rules.page_token("events", [rows[-1][0], int(rows[-1][5])]) if more else "",
        )  # fmt: skip

    async def _move(self, project: str, model: str, alias: str, to: int, actor: str, reason: str) -> int:
        """Points `alias` at version `to` (0: deletes it) with one row, and audits the move. The
        caller holds the model's lock and has checked the role; claims.turn orders the move after
        every other process's moves of the alias. Returns the previous target; a move to the
        current target writes nothing."""

        async def load() -> tuple[list[rules.AliasMove], set[int]]:
            moves = [m for m in (await self._moves(project, model)).get(model, []) if m.alias == alias]
            return moves, {m.revision for m in moves}

        turn = await claims.turn(
            self._rows, self._insert, self.db, project, claims.alias_subject(model, alias), load,
            lambda moves: rules.current_aliases(moves).get(alias, 0) != to, self._revisions,
        )  # fmt: skip
        previous = rules.current_aliases(turn.state).get(alias, 0)
        if not turn.revision:
            return previous
        turn.check_in_time()
        row = [project, model, alias, to, previous, actor, reason, _now_ms(), turn.revision]
        await self._insert("model_alias_moves", sql.MOVE_COLUMNS, [row])
        action = "alias.deleted" if to == 0 else ("alias.created" if previous == 0 else "alias.moved")
        await self._audit(
            project, actor, action, f"{model}@{alias}", {"from": previous, "to": to, "reason": reason}
        )
        return previous


__all__ = ["RegistryServicer"]
