"""The client of the model registry (RegistryService) and artifact downloads.

`RegistryCalls` adds the registry's calls to a QueryClient (query_client.py): the same channel,
auth header, deadlines and typed errors (ServerError with the gRPC `code`), one method per RPC.
`runstream.Api` includes it, so `api.models(...)`, `api.set_alias(...)` and
`api.download_artifact(...)` sit beside the run queries; `RegistryClient` is the two together
for code that wants only a client (the CLI, Run.register_model).

    api = runstream.Api()
    v = api.model_version("mnist", "classifier", alias="production")
    api.download_artifact("mnist", "classifier@production", "model", "./model")

Model references: "name" (newest version), "name:3" (version 3) or "name@alias".
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import grpc

from runstream.errors import RunstreamError, ServerError
from runstream.lineage import DIRECTIONS, LineageGraph
from runstream.query_client import QueryClient
from runstream.v1 import query_pb2, registry_pb2, registry_pb2_grpc


class ChecksumError(RunstreamError):
    """Raised when downloaded bytes do not have the sha256 the manifest names (the file is removed)."""


def parse_model_ref(ref: str) -> tuple[str, int, str]:
    """A model reference as (name, version, alias): "clf" -> ("clf", 0, ""), "clf:3" -> ("clf", 3, ""),
    "clf@prod" -> ("clf", 0, "prod")."""
    if "@" in ref:
        name, _, alias = ref.rpartition("@")
        if not name or not alias:
            raise RunstreamError(f"model reference {ref!r}: use name, name:version or name@alias")
        return name, 0, alias
    name, sep, version = ref.rpartition(":")
    if sep and version.isdigit() and name:
        return name, int(version), ""
    return ref, 0, ""


class _ByteProgress:
    """Download progress: a tqdm bar in bytes when tqdm is installed, else a line a second
    (the same choice as `runstream sync`'s bar, counted in bytes)."""

    def __init__(self, label: str, total: int, enabled: bool, out=None):
        self.enabled, self.label, self.total = enabled, label, total
        self.out = out or sys.stderr
        self._bar = None
        self._done = 0
        self._last = 0.0
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(
                    total=total, desc=label, unit="B", unit_scale=True, file=self.out, leave=False
                )
            except ImportError:
                pass

    def add(self, n: int) -> None:
        self._done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
        elif self._done >= self.total or time.monotonic() - self._last > 1.0:
            self._last = time.monotonic()
            print(f"{self.label}: {self._done:,}/{self.total:,} bytes", file=self.out, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class RegistryCalls:
    """The registry's RPCs over a QueryClient's channel (mixed into QueryClient subclasses)."""

    _registry: registry_pb2_grpc.RegistryServiceStub | None = None

    def _rcall(self: Any, method: str, request, timeout_s: float | None = None):
        if self._registry is None:
            self._registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        try:
            return getattr(self._registry, method)(
                request, timeout=self.timeout_s if timeout_s is None else timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise self._error(method, exc) from None

    # ------------------------------------------------------------ models

    def create_model(
        self,
        project: str,
        name: str,
        description: str = "",
        protected_aliases: Iterable[str] | None = None,
    ) -> registry_pb2.RegisteredModel:
        """Registers a model name. protected_aliases: aliases only an admin key may move (None:
        the server's default, ["production"]; [] : none)."""
        given = None if protected_aliases is None else list(protected_aliases)
        request = registry_pb2.CreateRegisteredModelRequest(
            project=project, name=name, description=description, protected_aliases=given or [],
            no_protected_aliases=given == [],
        )  # fmt: skip
        return self._rcall("CreateRegisteredModel", request).model

    def get_model(self, project: str, name: str) -> registry_pb2.RegisteredModel:
        return self._rcall("GetModel", registry_pb2.GetModelRequest(project=project, name=name)).model

    def list_models(self, project: str) -> list[registry_pb2.RegisteredModel]:
        """Every model of the project, by name (page after page)."""
        out: list[registry_pb2.RegisteredModel] = []
        token = ""
        while True:
            page = self.models_page(project, token)
            out.extend(page.models)
            token = page.next_page_token
            if not token:
                return out

    def models_page(
        self, project: str, page_token: str = "", limit: int = 0
    ) -> registry_pb2.ListModelsResponse:
        """One page of the project's models (limit 0: the server's 1,000); its next_page_token
        continues the listing ("" on the last page)."""
        request = registry_pb2.ListModelsRequest(project=project, page_token=page_token, limit=limit)
        return self._rcall("ListModels", request)

    def update_model(
        self,
        project: str,
        name: str,
        *,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        remove_tags: Iterable[str] = (),
        reason: str = "",
    ) -> dict[str, Any]:
        """Edits a model's description / tags (the old values stay in its history, audited);
        returns the model as a dict with its history."""
        request = registry_pb2.UpdateRegisteredModelRequest(
            project=project, name=name, set_description=description is not None, description=description or "",
            set_tags=dict(set_tags or {}), remove_tags=list(remove_tags), reason=reason,
        )  # fmt: skip
        return model_record(self._rcall("UpdateRegisteredModel", request).model)

    def models(self, project: str) -> list[dict[str, Any]]:
        """The project's registered models as dicts (name, description, latest_version, aliases,
        protected_aliases, creator, created_ms), by name."""
        return [model_record(m) for m in self.list_models(project)]

    # ------------------------------------------------------------ versions

    def create_model_version(
        self,
        project: str,
        model: str,
        run_id: str,
        artifact_name: str,
        *,
        artifact_version: int = 0,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        metric_keys: Iterable[str] = (),
        aliases: Iterable[str] = (),
        create_model: bool = True,
        reason: str = "",
        wait_visible_s: float = 0.0,
    ) -> registry_pb2.ModelVersion:
        """The next version of `model`, made from the run's artifact (artifact_version 0: the
        newest the run logged). The server snapshots the run's datasets, commit and metrics
        (metric_keys, or all) into the version; `aliases` are pointed at it.
        wait_visible_s: how long a run or artifact the server does not know yet is asked for again
        (on the Kafka bus an acknowledged artifact is stored a moment later, by the writer)."""
        request = registry_pb2.CreateModelVersionRequest(
            project=project, model=model, run_id=run_id, artifact_name=artifact_name,
            artifact_version=artifact_version, description=description, tags=dict(tags or {}),
            metric_keys=list(metric_keys), aliases=list(aliases), create_model=create_model, reason=reason,
        )  # fmt: skip
        deadline = time.monotonic() + wait_visible_s
        while True:
            try:
                return self._rcall("CreateModelVersion", request).version
            except ServerError as exc:
                if exc.code != "NOT_FOUND" or time.monotonic() + 0.2 > deadline:
                    raise
            time.sleep(0.2)

    def get_model_version(
        self, project: str, model: str, version: int = 0, alias: str = ""
    ) -> registry_pb2.ModelVersion:
        """One version by number, or by alias; with neither, the newest version."""
        if not version and not alias:
            version = self.get_model(project, model).latest_version
            if not version:
                raise ServerError(f"model {model!r} has no version yet", "NOT_FOUND")
        request = registry_pb2.GetModelVersionRequest(
            project=project, model=model, version=version, alias=alias
        )
        return self._rcall("GetModelVersion", request).version

    def model_versions(self, project: str, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The versions of the model as dicts (see model_version), newest first: all of them, or
        the newest `limit`."""
        out: list[dict[str, Any]] = []
        token = ""
        while limit is None or len(out) < limit:
            page = self.model_versions_page(
                project, name, token, min(limit - len(out), 10_000) if limit else 0
            )
            out.extend(version_record(v) for v in page.versions)
            token = page.next_page_token
            if not token:
                break
        return out

    def model_versions_page(
        self, project: str, name: str, page_token: str = "", limit: int = 0
    ) -> registry_pb2.ListModelVersionsResponse:
        """One page of the model's versions, newest first (limit 0: the server's 1,000)."""
        request = registry_pb2.ListModelVersionsRequest(
            project=project, model=name, page_token=page_token, limit=limit
        )
        return self._rcall("ListModelVersions", request)

    def model_version(self, project: str, name: str, version: int | None = None, alias: str | None = None):
        """One version as a dict: version, run_id, artifact_name/_version/_sha256, files, datasets,
        git_commit, creator, created_ms, metrics {key: {last, min, max, count, last_step}},
        description, tags, aliases, history. `name` may be a reference ("clf:3", "clf@prod")."""
        name, ref_version, ref_alias = parse_model_ref(name)
        v = self.get_model_version(project, name, version or ref_version, alias or ref_alias)
        return version_record(v)

    def update_model_version(
        self,
        project: str,
        model: str,
        version: int,
        *,
        description: str | None = None,
        set_tags: Mapping[str, str] | None = None,
        remove_tags: Iterable[str] = (),
        reason: str = "",
    ) -> registry_pb2.ModelVersion:
        """Edits description / tags (the old values stay in the version's history)."""
        request = registry_pb2.UpdateModelVersionRequest(
            project=project, model=model, version=version, set_description=description is not None,
            description=description or "", set_tags=dict(set_tags or {}), remove_tags=list(remove_tags),
            reason=reason,
        )  # fmt: skip
        return self._rcall("UpdateModelVersion", request).version

    # ------------------------------------------------------------ aliases

    def set_alias(self, project: str, model: str, alias: str, version: int, reason: str = "") -> int:
        """Points `alias` at `version` in one step; returns the version it pointed at (0: new).
        A protected alias (e.g. "production") needs an admin key."""
        request = registry_pb2.SetAliasRequest(
            project=project, model=model, alias=alias, version=version, reason=reason
        )
        return self._rcall("SetAlias", request).previous_version

    def delete_alias(self, project: str, model: str, alias: str, reason: str = "") -> int:
        """Removes `alias`; returns the version it pointed at."""
        request = registry_pb2.DeleteAliasRequest(project=project, model=model, alias=alias, reason=reason)
        return self._rcall("DeleteAlias", request).previous_version

    def registry_events(self, project: str, model: str = "", limit: int = 1000) -> list[dict[str, Any]]:
        """The registry's audit log of the project (or one model), newest first, at most `limit`
        events (page after page): dicts with time_ms, actor, action (model.created/.updated,
        model_version.created/.updated, alias.created/.moved/.deleted, input.recorded), target
        and detail (decoded JSON: from/to, run and artifact, reason)."""
        out: list[dict[str, Any]] = []
        token = ""
        while len(out) < limit:
            events, token = self.registry_events_page(project, model, min(limit - len(out), 10_000), token)
            out.extend(events)
            if not token:
                break
        return out

    def registry_events_page(
        self, project: str, model: str = "", limit: int = 0, page_token: str = ""
    ) -> tuple[list[dict[str, Any]], str]:
        """One page of registry events (see registry_events) and the token of the next ("" at the end)."""
        request = registry_pb2.ListRegistryEventsRequest(
            project=project, model=model, limit=limit, page_token=page_token
        )
        resp = self._rcall("ListRegistryEvents", request)
        events = [
            {"time_ms": e.time_ms, "actor": e.actor, "action": e.action, "target": e.target,
             "detail": json.loads(e.detail or "{}")}
            for e in resp.events
        ]  # fmt: skip
        return events, resp.next_page_token

    # ------------------------------------------------------------ inputs and lineage

    def use_artifact(
        self, project: str, run_id: str, ref: str, *, kind: str = "", wait_visible_s: float = 0.0
    ) -> dict[str, Any]:
        """Records that run `run_id` consumed `ref`: an artifact version of the project ("name",
        "name:3") or a registered model version ("clf", "clf:3", "clf@production"); kind
        "artifact" / "model" settles a name that is both. Resolved and stored before this returns;
        returns the input as a dict (see input_record). wait_visible_s: how long a reference the
        server does not know yet is asked for again (on the Kafka bus an artifact logged a moment
        ago is stored a moment after its ack)."""
        request = registry_pb2.UseArtifactRequest(project=project, run_id=run_id, ref=ref, kind=kind)
        deadline = time.monotonic() + wait_visible_s
        while True:
            try:
                return input_record(self._rcall("UseArtifact", request).input)
            except ServerError as exc:
                if exc.code != "NOT_FOUND" or time.monotonic() + 0.2 > deadline:
                    raise
            time.sleep(0.2)

    def run_inputs(self, project: str, run_id: str) -> list[dict[str, Any]]:
        """What the run consumed (artifact and model versions recorded by use_artifact), oldest first."""
        request = registry_pb2.ListRunInputsRequest(project=project, run_id=run_id)
        return [input_record(i) for i in self._rcall("ListRunInputs", request).inputs]

    def lineage(
        self,
        project: str,
        ref: str | None = None,
        *,
        run_id: str | None = None,
        artifact: str | None = None,
        dataset: str | None = None,
        direction: str = "both",
        max_depth: int = 0,
        max_nodes: int = 0,
    ) -> LineageGraph:
        """The lineage graph around a model version (`ref`: "clf", "clf:3", "clf@production"), a
        run (`run_id=`), an artifact version (`artifact="name"` or "name:3") or a dataset as runs
        recorded it (`dataset="name@version"`): upstream, what it was made from (run, datasets, consumed artifacts and models, the runs that made those, ...),
        and downstream, what was made from it (artifacts, model versions, runs that consumed them).
        direction: "both", "upstream" or "downstream"; max_depth (default 10) and max_nodes
        (default 500) bound the walk (graph.truncated says when they did)."""
        if sum(x is not None for x in (ref, run_id, artifact, dataset)) != 1:
            raise RunstreamError(
                "lineage: give one of ref (a model reference), run_id=, artifact= or dataset="
            )
        if direction not in DIRECTIONS:
            raise RunstreamError(f"lineage: direction must be one of {sorted(DIRECTIONS)}, not {direction!r}")
        request = registry_pb2.GetLineageRequest(
            project=project, direction=DIRECTIONS[direction], max_depth=max_depth, max_nodes=max_nodes
        )
        if ref is not None:
            request.model, request.model_version, request.model_alias = parse_model_ref(ref)
        elif run_id is not None:
            request.run_id = run_id
        elif dataset is not None:
            name, sep, version = dataset.rpartition("@")
            if not sep or not name:
                raise RunstreamError(
                    f"lineage: dataset={dataset!r}: use name@version, as run.use_dataset recorded it"
                )
            request.dataset_name, request.dataset_version = name, version
        else:
            name, _, version = str(artifact).rpartition(":")
            if name and version.isdigit():
                request.artifact_name, request.artifact_version = name, int(version)
            else:
                request.artifact_name = str(artifact)
        return LineageGraph.from_proto(self._rcall("GetLineage", request))

    # ------------------------------------------------------------ downloads

    def download_artifact(
        self: Any,
        project: str,
        source: str,
        name: str | None = None,
        dest: str | os.PathLike | None = None,
        *,
        progress: bool = True,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Downloads an artifact's files under `dest` and checks each file's sha256; returns the
        paths written. Without `dest` this is QueryClient.download_artifact(project, run_id,
        sha256): the bytes of one file, in memory (the older form, kept for its callers). `source` is a run id, or a model reference ("clf", "clf:3", "clf@prod")
        when it holds ":" or "@" or `name` is None: then the version's own files are fetched (its
        artifact name, from the version's run). For a run, `name` picks the artifact (its newest
        version). A file whose bytes do not match raises ChecksumError and is removed."""
        if dest is None:
            if not name:
                raise RunstreamError(
                    "download_artifact: give dest (a folder) to download an artifact's files"
                )
            return super().download_artifact(project, source, name, max_bytes=max_bytes, timeout_s=timeout_s)
        files, run_id = self._artifact_files(project, source, name)
        dest = Path(dest).expanduser()
        total = sum(size for _, _, size in files)
        bar = _ByteProgress(f"{source}/{name or ''}".rstrip("/"), total, progress)
        written = []
        try:
            for rel, sha, _size in files:
                target = _safe_join(dest, rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                written.append(self._fetch_file(project, run_id, sha, target, bar, timeout_s))
        finally:
            bar.close()
        return written

    def _artifact_files(self: Any, project: str, source: str, name: str | None) -> tuple[list[tuple], str]:
        if name is None or ":" in source or "@" in source:
            model, version, alias = parse_model_ref(source)
            v = self.get_model_version(project, model, version, alias)
            if name is not None and name != v.artifact_name:
                raise RunstreamError(
                    f"model version {model}:{v.version} holds artifact {v.artifact_name!r}, not {name!r}"
                )
            return [(f.path, f.sha256, f.size) for f in v.files], v.run_id
        run = self.get_run(project, source)
        mine = [a for a in run.artifacts if a.name == name]
        if not mine:
            logged = sorted({a.name for a in run.artifacts})
            raise ServerError(f"run {source!r} has no artifact {name!r} (it has {logged})", "NOT_FOUND")
        newest = max(a.version for a in mine)
        return [(a.path, a.sha256, a.size) for a in mine if a.version == newest], source

    def _fetch_file(self: Any, project, run_id, sha, target: Path, bar: _ByteProgress, timeout_s) -> Path:
        request = query_pb2.DownloadArtifactRequest(project=project, run_id=run_id, sha256=sha)
        digest = hashlib.sha256()
        partial = target.with_name(target.name + ".part")
        try:
            with open(partial, "wb") as out:
                for part in self._stream("DownloadArtifact", request, timeout_s):
                    out.write(part.chunk)
                    digest.update(part.chunk)
                    bar.add(len(part.chunk))
            if digest.hexdigest() != sha:
                raise ChecksumError(
                    f"{target.name}: downloaded bytes have sha256 {digest.hexdigest()}, the manifest says {sha}; "
                    "nothing was kept, download again"
                )
            partial.replace(target)
        finally:
            partial.unlink(missing_ok=True)
        return target


def _safe_join(dest: Path, rel: str) -> Path:
    """dest/rel, refusing a manifest path that would leave dest (absolute, or with '..')."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
        raise RunstreamError(f"artifact path {rel!r} would leave the destination folder; not written")
    return dest.joinpath(*parts)


class RegistryClient(RegistryCalls, QueryClient):
    """A QueryClient with the registry's calls (see QueryClient for endpoint, api_key, timeout_s)."""


def model_record(m: registry_pb2.RegisteredModel) -> dict[str, Any]:
    return {
        "name": m.name,
        "description": m.description,
        "tags": dict(sorted(m.tags.items())),
        "latest_version": m.latest_version,
        "aliases": dict(sorted(m.aliases.items())),
        "protected_aliases": list(m.protected_aliases),
        "creator": m.creator,
        "created_ms": m.created_ms,
        "history": [
            {"description": h.description, "tags": dict(h.tags), "actor": h.actor, "time_ms": h.time_ms}
            for h in m.history
        ],
    }


def input_record(i: registry_pb2.RunInput) -> dict[str, Any]:
    """A run input as a dict: run_id (the consumer), kind ("artifact" / "model_version"), name,
    version, ref (as given), alias, source_run_id (who made it), sha256, actor, time_ms."""
    return {
        "run_id": i.run_id,
        "kind": i.kind,
        "name": i.name,
        "version": i.version,
        "ref": i.ref,
        "alias": i.alias,
        "source_run_id": i.source_run_id,
        "sha256": i.sha256,
        "actor": i.actor,
        "time_ms": i.time_ms,
    }


def version_record(v: registry_pb2.ModelVersion) -> dict[str, Any]:
    return {
        "model": v.model,
        "version": v.version,
        "run_id": v.run_id,
        "artifact_name": v.artifact_name,
        "artifact_version": v.artifact_version,
        "artifact_sha256": v.artifact_sha256,
        "files": [{"path": f.path, "sha256": f.sha256, "size": f.size} for f in v.files],
        "datasets": [{"name": d.name, "version": d.version, "uri": d.uri} for d in v.datasets],
        "git_commit": v.git_commit,
        "git_dirty": v.git_dirty,
        "creator": v.creator,
        "created_ms": v.created_ms,
        "metrics": {
            m.key: {"last": m.last, "min": m.min, "max": m.max, "count": m.count, "last_step": m.last_step}
            for m in v.metrics
        },
        "description": v.description,
        "tags": dict(v.tags),
        "aliases": list(v.aliases),
        "history": [
            {"description": h.description, "tags": dict(h.tags), "actor": h.actor, "time_ms": h.time_ms}
            for h in v.history
        ],
    }


__all__ = [
    "ChecksumError",
    "LineageGraph",
    "RegistryCalls",
    "RegistryClient",
    "input_record",
    "model_record",
    "parse_model_ref",
    "version_record",
]
