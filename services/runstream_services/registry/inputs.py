"""The registry RPCs about what runs consumed and what came from what: UseArtifact (record a
run's input), ListRunInputs and GetLineage. A mixin of RegistryServicer (service.py), whose
access checks, statements, audit and alias helpers it uses.

UseArtifact is an RPC, not an ingest request, because the reference has to be resolved against
the registry when the run asks ("clf@production" means the version production points at now)
and the caller gets the answer (which version, which run made it, its digest); the input row is
inserted before the call returns, so a run that crashes a moment later still has it. The same
input recorded twice is one row (run_inputs is keyed by run, kind, name and version)."""

from __future__ import annotations

import time

from runstream.v1 import registry_pb2
from runstream_services.errors import InvalidArgument, NotFound
from runstream_services.registry import lineage as lg
from runstream_services.registry import rules, sql
from runstream_services.registry.lineage_store import StoreLineage

MAX_RUN_ID = 256
KINDS = {"": "", "artifact": "artifact", "model": "model_version", "model_version": "model_version"}


def _run_id(value: str) -> str:
    if not value or len(value) > MAX_RUN_ID:
        raise InvalidArgument(f"run_id is required, at most {MAX_RUN_ID} characters")
    return value


def _input_proto(row: tuple) -> registry_pb2.RunInput:
    run_id, kind, name, version, ref, alias, source, sha, actor, t = row
    return registry_pb2.RunInput(
        run_id=run_id, kind=kind, name=name, version=version, ref=ref, alias=alias, source_run_id=source,
        sha256=sha, actor=actor, time_ms=t,
    )  # fmt: skip


class InputCalls:
    """UseArtifact, ListRunInputs, GetLineage (mixed into RegistryServicer)."""

    # ------------------------------------------------------------ resolving references

    async def _newest_version(self, project: str, model: str) -> int:
        row = await self._model_row(project, model)
        if row is None:
            raise NotFound(f"no registered model {model!r} in project {project!r}")
        if not row[5]:
            raise NotFound(f"model {model!r} has no version yet")
        return int(row[5])

    async def _model_input(self, project: str, name: str, version: int, alias: str) -> tuple:
        """(kind, name, version, alias, source run, sha256) of a model version reference."""
        name = rules.model_name(name)
        if not version:
            version = (
                await self._resolve(project, name, 0, alias)
                if alias
                else await self._newest_version(project, name)
            )
        row = await self._version_row(project, name, version)
        sha = row[4].decode() if isinstance(row[4], bytes) else row[4]
        return ("model_version", name, version, alias, row[1], sha)

    async def _artifact_version(self, project: str, name: str, version: int) -> tuple[int, str, str]:
        """(version, producing run, digest) of an artifact version of the project (0: the newest)."""
        name = rules.artifact_name(name)
        if not version:
            version = int((await self._rows(sql.newest_artifact_version(self.db, project, name)))[0][0] or 0)
            if not version:
                raise NotFound(
                    f"project {project!r} has no artifact named {name!r}; log it with run.log_artifact "
                    "(and run.flush()) first, or pass kind='model' for a registered model"
                )
        rows = await self._rows(sql.artifact_versions(self.db, project, [name], [version]))
        rows = [r for r in rows if r[0] == name and int(r[1]) == version]
        if not rows:
            raise NotFound(f"artifact {name!r} of project {project!r} has no version {version}")
        _, _, run_id, _, _, _, listing = rows[0]
        files = [rules.ArtifactFile(_text(p), _text(s), 0) for p, s in listing]
        return version, run_id, rules.artifact_digest(files)

    # ------------------------------------------------------------ RPCs

    async def UseArtifact(self, request, context):
        project, principal = self._allowed(context, request.project, "write")
        run_id = _run_id(request.run_id)
        if request.kind not in KINDS:
            raise InvalidArgument(f"kind {request.kind[:40]!r}: use 'artifact', 'model' or leave it empty")
        kind = KINDS[request.kind]
        name, version, alias = rules.parse_ref(request.ref)
        if alias and kind == "artifact":
            raise InvalidArgument(
                f"{request.ref[:80]!r}: artifacts have versions, not aliases (name:version)"
            )
        if not kind:  # name@alias: a model; else a registered model of that name if any, else an artifact
            is_model = bool(alias) or (
                _valid_model_name(name) and await self._model_row(project, name) is not None
            )
            kind = "model_version" if is_model else "artifact"
        if kind == "model_version":
            _, name, version, alias, source, sha = await self._model_input(project, name, version, alias)
        else:
            version, source, sha = await self._artifact_version(project, name, version)
        actor = rules.actor_of(principal)
        now = int(time.time() * 1000)
        row = [project, run_id, kind, name, version, request.ref, alias, source, sha, actor, now]
        await self._insert("run_inputs", sql.INPUT_COLUMNS, [row])
        target = f"{name}:{version}" if kind == "model_version" else f"artifact {name}:{version}"
        await self._audit(
            project, actor, "input.recorded", target,
            {"run_id": run_id, "ref": request.ref, "kind": kind, "source_run_id": source},
        )  # fmt: skip
        return registry_pb2.UseArtifactResponse(input=_input_proto(tuple(row[1:])))

    async def ListRunInputs(self, request, context):
        project, _ = self._allowed(context, request.project, "read")
        run_id = _run_id(request.run_id)
        rows = await self._rows(sql.run_inputs(self.db, project, [run_id]))
        return registry_pb2.ListRunInputsResponse(inputs=[_input_proto(r) for r in rows])

    async def _lineage_start(self, project: str, request) -> lg.Ref:
        given = [request.run_id, request.model, request.artifact_name, request.dataset_name]
        if sum(bool(g) for g in given) != 1:
            raise InvalidArgument(
                "give exactly one of run_id, model, artifact_name or dataset_name to start the lineage from"
            )
        if request.run_id:
            return lg.run(_run_id(request.run_id))
        if request.model:
            model = rules.model_name(request.model)
            version = request.model_version
            if not version:
                alias = rules.alias_name(request.model_alias) if request.model_alias else ""
                version = (
                    await self._resolve(project, model, 0, alias)
                    if alias
                    else await self._newest_version(project, model)
                )
            return lg.model_version(model, version)
        if request.dataset_name:
            if not request.dataset_version:
                raise InvalidArgument(
                    "dataset_version is required with dataset_name, as run.use_dataset recorded it"
                )
            version = rules.text("dataset_version", request.dataset_version)
            return lg.dataset(rules.artifact_name(request.dataset_name), version)
        name = rules.artifact_name(request.artifact_name)
        version = request.artifact_version or (await self._artifact_version(project, name, 0))[0]
        return lg.artifact(name, version)

    async def GetLineage(self, request, context):
        project, _ = self._allowed(context, request.project, "read")
        if request.direction not in (lg.BOTH, lg.UPSTREAM, lg.DOWNSTREAM):
            raise InvalidArgument(f"direction {request.direction} is not a LineageDirection")
        depth, nodes = lg.limits(request.max_depth, request.max_nodes)
        start = await self._lineage_start(project, request)

        async def aliases(model: str) -> dict[str, int]:
            return await self._aliases(project, model)

        source = StoreLineage(self._rows, self.db, project, aliases)
        graph = await lg.walk(source, start, request.direction, depth, nodes)
        out = registry_pb2.GetLineageResponse(start=start.id, truncated=graph.truncated)
        for ref, d in graph.depth.items():
            info = graph.infos.get(ref)
            out.nodes.add(
                id=ref.id, kind=ref.kind, name=ref.name, version=ref.version,
                label=info.label if info else ref.label, missing=info is None, depth=d,
                properties=info.properties if info else {},
            )  # fmt: skip
        for e in graph.edges:
            out.edges.add(source=e.source.id, target=e.target.id, relation=e.relation)
        return out


def _valid_model_name(name: str) -> bool:
    try:
        rules.model_name(name)
    except InvalidArgument:
        return False
    return True


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
