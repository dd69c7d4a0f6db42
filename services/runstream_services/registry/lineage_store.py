"""The lineage graph's edges and node facts, read from the store (the `LineageSource` of
lineage.py) for one project: every statement is scoped to it, so a walk never leaves the project
whose read role the caller holds.

Where each edge comes from:
- run -> artifact (produced): the artifacts table (who logged which version), and each model
  version's own record of its run and artifact (kept even when the artifact rows are gone);
- artifact -> model_version (registered_as): model_versions;
- dataset -> run (input): the run's datasets (run.use_dataset);
- artifact / model_version -> run (input): run_inputs (run.use_artifact)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from runstream_services.query.sql import Query
from runstream_services.registry import lineage as lg
from runstream_services.registry import rules, sql
from runstream_services.registry.lineage import Edge, NodeInfo, Ref

Rows = Callable[[Query], Awaitable[list[tuple]]]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _datasets(raw: str) -> list[tuple[str, str, str]]:
    try:
        items = json.loads(raw or "[]")
    except ValueError:
        return []
    return [(str(d.get("name", "")), str(d.get("version", "")), str(d.get("uri", ""))) for d in items]


def _pairs(refs: list[Ref]) -> tuple[list[str], list[int], set[tuple[str, int]]]:
    wanted = {(r.name, int(r.version)) for r in refs}
    return sorted({n for n, _ in wanted}), sorted({v for _, v in wanted}), wanted


class StoreLineage:
    """A LineageSource over the store, for one project. `rows` runs a Query (the servicer's)."""

    def __init__(
        self, rows: Rows, db: str, project: str, aliases: Callable[[str], Awaitable[dict[str, int]]]
    ):
        self.rows, self.db, self.project = rows, db, project
        self._aliases = aliases
        self._uris: dict[Ref, str] = {}  # dataset -> uri, learned from the runs that recorded it

    # ------------------------------------------------------------ edges

    def _version_edges(self, rows) -> list[Edge]:
        """run -> artifact -> model_version, from model_versions rows (lineage_versions layout)."""
        out = []
        for model, version, run_id, art_name, art_version, *_ in rows:
            art = lg.artifact(art_name, art_version)
            out.append(Edge(art, lg.model_version(model, version), lg.REGISTERED_AS))
            out.append(Edge(lg.run(run_id), art, lg.PRODUCED))
        return out

    def _dataset_edges(self, rows, only: set[Ref] | None = None) -> list[Edge]:
        out = []
        for run_id, raw in rows:
            for name, version, uri in _datasets(raw):
                ref = lg.dataset(name, version)
                if only is not None and ref not in only:
                    continue
                if uri:
                    self._uris.setdefault(ref, uri)
                out.append(Edge(ref, lg.run(run_id), lg.INPUT))
        return out

    async def upstream(self, refs: list[Ref]) -> list[Edge]:
        kinds = lg.by_kind(refs)
        out: list[Edge] = []
        if runs := [r.name for r in kinds[lg.RUN]]:
            out += self._dataset_edges(await self.rows(sql.runs_datasets(self.db, self.project, runs)))
            for run_id, kind, name, version, *_ in await self.rows(
                sql.run_inputs(self.db, self.project, runs)
            ):
                node = lg.artifact(name, version) if kind == "artifact" else lg.model_version(name, version)
                out.append(Edge(node, lg.run(run_id), lg.INPUT))
        if arts := kinds[lg.ARTIFACT]:
            names, versions, wanted = _pairs(arts)
            for name, version, run_id, *_ in await self.rows(
                sql.artifact_versions(self.db, self.project, names, versions)
            ):
                if (name, version) in wanted:
                    out.append(Edge(lg.run(run_id), lg.artifact(name, version), lg.PRODUCED))
        if mvs := kinds[lg.MODEL_VERSION]:
            names, versions, wanted = _pairs(mvs)
            rows = await self.rows(sql.lineage_versions(self.db, self.project, names, versions))
            out += self._version_edges([r for r in rows if (r[0], r[1]) in wanted])
        return out

    async def downstream(self, refs: list[Ref]) -> list[Edge]:
        kinds = lg.by_kind(refs)
        out: list[Edge] = []
        if runs := [r.name for r in kinds[lg.RUN]]:
            for run_id, name, version in await self.rows(
                sql.run_artifact_versions(self.db, self.project, runs)
            ):
                out.append(Edge(lg.run(run_id), lg.artifact(name, version), lg.PRODUCED))
            out += self._version_edges(await self.rows(sql.versions_of_runs(self.db, self.project, runs)))
        if arts := kinds[lg.ARTIFACT]:
            names, versions, wanted = _pairs(arts)
            rows = await self.rows(sql.versions_of_artifacts(self.db, self.project, names, versions))
            out += self._version_edges([r for r in rows if (r[3], r[4]) in wanted])
            for run_id, name, version, _src in await self.rows(
                sql.consumers(self.db, self.project, "artifact", names, versions)
            ):
                if (name, version) in wanted:
                    out.append(Edge(lg.artifact(name, version), lg.run(run_id), lg.INPUT))
        if mvs := kinds[lg.MODEL_VERSION]:
            names, versions, wanted = _pairs(mvs)
            for run_id, name, version, _src in await self.rows(
                sql.consumers(self.db, self.project, "model_version", names, versions)
            ):
                if (name, version) in wanted:
                    out.append(Edge(lg.model_version(name, version), lg.run(run_id), lg.INPUT))
        if sets := kinds[lg.DATASET]:
            rows = await self.rows(sql.dataset_users(self.db, self.project, sorted({d.name for d in sets})))
            out += self._dataset_edges(rows, only=set(sets))
        return out

    # ------------------------------------------------------------ facts

    async def describe(self, refs: list[Ref]) -> dict[Ref, NodeInfo]:
        kinds = lg.by_kind(refs)
        out: dict[Ref, NodeInfo] = {}
        if runs := [r.name for r in kinds[lg.RUN]]:
            for run_id, name, state, commit, start_ms in await self.rows(
                sql.runs_info(self.db, self.project, runs)
            ):
                props = {"state": state, "git_commit": commit, "start_ms": str(start_ms)}
                out[lg.run(run_id)] = NodeInfo(name or run_id, props)
        if arts := kinds[lg.ARTIFACT]:
            names, versions, wanted = _pairs(arts)
            for name, version, run_id, files, size, kind, listing in await self.rows(
                sql.artifact_versions(self.db, self.project, names, versions)
            ):
                if (name, version) not in wanted:
                    continue
                digest = rules.artifact_digest(
                    rules.ArtifactFile(_text(p), _text(s), 0) for p, s in listing
                )  # the digest a model version made from it records
                props = {
                    "run_id": run_id,
                    "files": str(files),
                    "size": str(size),
                    "type": kind,
                    "sha256": digest,
                }
                out[lg.artifact(name, version)] = NodeInfo(f"{name}:{version}", props)
        if mvs := kinds[lg.MODEL_VERSION]:
            names, versions, wanted = _pairs(mvs)
            rows = await self.rows(sql.lineage_versions(self.db, self.project, names, versions))
            aliases = {m: rules.aliases_by_version(await self._aliases(m)) for m in {r[0] for r in rows}}
            for model, version, run_id, art_name, art_version, sha, created_ms, creator in rows:
                if (model, version) not in wanted:
                    continue
                props = {
                    "run_id": run_id, "artifact": f"{art_name}:{art_version}", "sha256": _text(sha),
                    "created_ms": str(created_ms), "creator": creator,
                    "aliases": ",".join(aliases[model].get(version, [])),
                }  # fmt: skip
                out[lg.model_version(model, version)] = NodeInfo(f"{model}:{version}", props)
        for ref in kinds[lg.DATASET]:  # a dataset is what runs recorded of it: it exists if named
            out[ref] = NodeInfo(ref.label, {"uri": self._uris.get(ref, "")})
        return out
