"""MLflow -> Runstream: experiments, runs, params, tags, every metric point, artifacts, and the model
registry (models, versions, aliases).

Three ways to read MLflow, none needing mlflow installed (so the importer runs in Runstream's
environment, whatever MLflow version wrote the data):

- a tracking server (`http://host:5000`): its REST API (/api/2.0/mlflow/...) over urllib, artifacts
  through the server's /get-artifact endpoint;
- a SQLite store (`sqlite:///path/mlflow.db`): its tables, read with sqlite3 (read-only);
- a file store (an `mlruns/` folder, or `file:///.../mlruns`): meta.yaml files (PyYAML), params/,
  tags/ and metrics/ files.

Mapping (chosen so a Runstream filter finds what an MLflow search found):
- an experiment becomes a project (its name, other characters than A-Z a-z 0-9 . _ - turned into
  '-'); with `project=` every experiment goes into that one project and the experiment's name
  becomes each run's group. Deleted experiments and runs are left out.
- a run becomes the run `mlflow-<run id>` (core.run_id_for); run name, start and end time, status
  (FINISHED -> finished, FAILED -> failed, KILLED -> killed, RUNNING/SCHEDULED -> killed until a
  later import finds it ended); params become config (numbers, bools parsed: core.parse_param);
  tags stay tags (mlflow.runName is the name, mlflow.note.content the notes, a nested run's parent
  is also named by its Runstream id in `import.parent_run`); each metric's whole
  history (steps, values, timestamps) becomes the series of the same key.
- artifacts: each top-level entry of the run's artifact folder is one artifact of that name
  (a folder "model" -> artifact "model" with all its files), files hashed with sha256.
- logged models (MLflow 3's mlflow.<flavor>.log_model keeps a model's files apart from the run's
  artifacts): each becomes an artifact of the run that logged it, named after the model (name.<model
  id> when the run logged several of one name). Left out with --no-models.
- registry: each registered model becomes a model of the same name in the project of its first
  version's run; a version whose source is a logged model (models:/m-...) or lies inside its run's
  artifacts becomes a version made from that artifact, tagged `mlflow.version` (which is how a second import knows it); aliases
  point at the matching versions. Versions Runstream cannot represent (no run, a source outside
  the run's artifacts, a run in another project) are reported and left out.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from runstream import states
from runstream.errors import ServerError

from .core import (
    ImportFailed,
    ImportReport,
    RunWriter,
    Series,
    SourceArtifact,
    SourceRun,
    cli_result,
    digest,
    import_runs,
    parse_param,
    project_name,
    run_id_for,
)

STATES = {"FINISHED": states.FINISHED, "FAILED": states.FAILED, "KILLED": states.KILLED}
FILE_STORE_STATUS = {1: "RUNNING", 2: "SCHEDULED", 3: "FINISHED", 4: "FAILED", 5: "KILLED"}
VERSION_TAG = "mlflow.version"
PAGE = 1000


@dataclass
class MlflowRun:
    run_id: str
    experiment: str  # experiment name
    name: str
    status: str  # FINISHED, FAILED, KILLED, RUNNING, SCHEDULED
    start_ms: int | None
    end_ms: int | None
    artifact_uri: str
    params: dict[str, str]
    tags: dict[str, str]
    latest: list  # (key, step, timestamp) of each metric's latest point: part of the fingerprint


@dataclass
class MlflowVersion:
    version: int
    run_id: str
    source: str
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedModel:
    """An MLflow 3 logged model (mlflow.<flavor>.log_model): artifacts of its own, outside the run's."""

    model_id: str
    name: str
    run_id: str  # the run that logged it ("" when none)
    artifact_uri: str


@dataclass
class MlflowModel:
    name: str
    description: str
    aliases: dict[str, int]
    versions: list[MlflowVersion]


class Store(Protocol):
    """What the importer needs from an MLflow store; one implementation per kind of store."""

    def runs(self) -> Iterator[MlflowRun]: ...

    def history(self, run: MlflowRun) -> list[Series]: ...

    def artifacts(self, run: MlflowRun) -> list[SourceArtifact]: ...

    def models(self) -> list[MlflowModel]: ...

    def logged_models(self) -> list[LoggedModel]: ...

    def logged_model_files(self, model: LoggedModel) -> SourceArtifact: ...


def _local_path(uri: str) -> Path:
    """A file:// URI or a plain path -> Path."""
    if uri.startswith("file:"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    return Path(uri)


def _local_artifacts(root: Path) -> list[SourceArtifact]:
    if not root.is_dir():
        return []
    return [SourceArtifact(p.name, lambda _scratch, p=p: p) for p in sorted(root.iterdir())]


def _local_model_files(model: LoggedModel) -> SourceArtifact:
    root = _local_path(model.artifact_uri)
    return SourceArtifact(model.name, lambda _scratch: root, "model")


def _series(rows) -> list[Series]:
    """(key, step, timestamp_ms, value) rows, any order -> one Series per key, by step then time."""
    by_key: dict[str, list] = {}
    for key, step, ts, value in rows:
        by_key.setdefault(key, []).append((int(step), int(ts), float(value)))
    out = []
    for key in sorted(by_key):
        points = sorted(by_key[key])
        out.append(
            Series(key, [p[0] for p in points], [p[2] for p in points], [p[1] / 1000.0 for p in points])
        )
    return out


# ---------------------------------------------------------------- SQLite store


class SqliteStore:
    """An MLflow SQLite backend store, opened read-only."""

    def __init__(self, path: Path):
        if not path.is_file():
            raise ImportFailed(f"no MLflow SQLite store at {path}")
        self.db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)

    def _rows(self, sql: str, *args) -> list:
        return self.db.execute(sql, args).fetchall()

    def runs(self) -> Iterator[MlflowRun]:
        experiments = dict(
            self._rows("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'")
        )
        for run_id, name, status, start, end, uri, exp in self._rows(
            "SELECT run_uuid, name, status, start_time, end_time, artifact_uri, experiment_id FROM runs "
            "WHERE lifecycle_stage = 'active' ORDER BY start_time, run_uuid"
        ):
            if exp not in experiments:
                continue
            yield MlflowRun(
                run_id, experiments[exp], name or "", status, start, end, uri or "",
                dict(self._rows("SELECT key, value FROM params WHERE run_uuid = ?", run_id)),
                dict(self._rows("SELECT key, value FROM tags WHERE run_uuid = ?", run_id)),
                self._rows(
                    "SELECT key, step, timestamp FROM latest_metrics WHERE run_uuid = ? ORDER BY key", run_id
                ),
            )  # fmt: skip

    def history(self, run: MlflowRun) -> list[Series]:
        rows = self._rows(
            "SELECT key, step, timestamp, CASE WHEN is_nan THEN 'NaN' ELSE value END FROM metrics "
            "WHERE run_uuid = ?",
            run.run_id,
        )
        return _series(rows)

    def artifacts(self, run: MlflowRun) -> list[SourceArtifact]:
        return _local_artifacts(_local_path(run.artifact_uri))

    def logged_models(self) -> list[LoggedModel]:
        try:
            rows = self._rows(
                "SELECT model_id, name, source_run_id, artifact_location FROM logged_models "
                "WHERE lifecycle_stage = 'active' ORDER BY creation_timestamp_ms, model_id"
            )
        except sqlite3.OperationalError:  # a store written by MLflow 2: no logged models
            return []
        return [LoggedModel(m, name or m, run or "", uri or "") for m, name, run, uri in rows]

    def logged_model_files(self, model: LoggedModel) -> SourceArtifact:
        return _local_model_files(model)

    def models(self) -> list[MlflowModel]:
        models = []
        for name, description in self._rows("SELECT name, description FROM registered_models ORDER BY name"):
            versions = [
                MlflowVersion(
                    int(v), run_id or "", source or "", desc or "",
                    dict(self._rows(
                        "SELECT key, value FROM model_version_tags WHERE name = ? AND version = ?", name, v
                    )),
                )
                for v, run_id, source, desc in self._rows(
                    "SELECT version, run_id, source, description FROM model_versions "
                    "WHERE name = ? AND current_stage != 'Deleted_Internal' ORDER BY version", name,
                )
            ]  # fmt: skip
            aliases = {
                a: int(v)
                for a, v in self._rows(
                    "SELECT alias, version FROM registered_model_aliases WHERE name = ?", name
                )
            }
            models.append(MlflowModel(name, description or "", aliases, versions))
        return models


# ---------------------------------------------------------------- file store (mlruns/)


def _yaml(path: Path) -> dict:
    try:
        import yaml
    except ImportError:
        raise ImportFailed(
            "reading an MLflow file store (mlruns/) needs PyYAML: pip install 'runstream[importers]'"
        ) from None
    return yaml.safe_load(path.read_text()) or {}


def _files_under(root: Path) -> dict[str, Path]:
    """{key: file} for params/, tags/ and metrics/ folders (a key with '/' is a sub-folder)."""
    if not root.is_dir():
        return {}
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


class FileStore:
    """An MLflow file store: mlruns/<experiment id>/<run id>/{meta.yaml,params,tags,metrics}."""

    def __init__(self, root: Path):
        if not root.is_dir():
            raise ImportFailed(f"no MLflow file store (mlruns/ folder) at {root}")
        self.root = root

    def runs(self) -> Iterator[MlflowRun]:
        for exp_dir in sorted(p for p in self.root.iterdir() if (p / "meta.yaml").is_file()):
            exp = _yaml(exp_dir / "meta.yaml")
            if exp.get("lifecycle_stage", "active") != "active":
                continue
            for run_dir in sorted(p for p in exp_dir.iterdir() if (p / "meta.yaml").is_file()):
                meta = _yaml(run_dir / "meta.yaml")
                if meta.get("lifecycle_stage", "active") != "active":
                    continue
                status = meta.get("status")
                status = FILE_STORE_STATUS.get(status, str(status)) if isinstance(status, int) else status
                metric_files = _files_under(run_dir / "metrics")
                yield MlflowRun(
                    str(meta.get("run_id") or meta.get("run_uuid") or run_dir.name),
                    str(exp.get("name", exp_dir.name)),
                    str(meta.get("run_name") or ""),
                    str(status or "FINISHED"),
                    meta.get("start_time"),
                    meta.get("end_time"),
                    str(meta.get("artifact_uri") or (run_dir / "artifacts")),
                    {k: p.read_text() for k, p in _files_under(run_dir / "params").items()},
                    {k: p.read_text() for k, p in _files_under(run_dir / "tags").items()},
                    [(k, p.stat().st_size, p.stat().st_mtime_ns) for k, p in metric_files.items()],
                )

    def history(self, run: MlflowRun) -> list[Series]:
        run_dir = self._run_dir(run)
        rows = []
        for key, path in _files_under(run_dir / "metrics").items():
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    rows.append((key, int(parts[2]) if len(parts) > 2 else 0, int(parts[0]), float(parts[1])))
        return _series(rows)

    def _run_dir(self, run: MlflowRun) -> Path:
        for exp_dir in self.root.iterdir():
            if (exp_dir / run.run_id / "meta.yaml").is_file():
                return exp_dir / run.run_id
        raise ImportFailed(f"run {run.run_id} vanished from {self.root}")

    def artifacts(self, run: MlflowRun) -> list[SourceArtifact]:
        return _local_artifacts(_local_path(run.artifact_uri))

    def logged_models(self) -> list[LoggedModel]:
        found = []
        for meta_path in sorted(self.root.glob("*/models/*/meta.yaml")):
            meta = _yaml(meta_path)
            if meta.get("lifecycle_stage", "active") != "active" or not meta.get("model_id"):
                continue
            location = meta.get("artifact_location") or str(meta_path.parent / "artifacts")
            found.append(LoggedModel(str(meta["model_id"]), str(meta.get("name") or meta["model_id"]),
                                     str(meta.get("source_run_id") or ""), str(location)))  # fmt: skip
        return found

    def logged_model_files(self, model: LoggedModel) -> SourceArtifact:
        return _local_model_files(model)

    def models(self) -> list[MlflowModel]:
        models = []
        root = self.root / "models"
        for model_dir in (
            sorted(p for p in root.iterdir() if (p / "meta.yaml").is_file()) if root.is_dir() else []
        ):
            meta = _yaml(model_dir / "meta.yaml")
            versions = []
            for vdir in sorted(model_dir.glob("version-*"), key=lambda p: int(p.name.split("-")[1])):
                vm = _yaml(vdir / "meta.yaml")
                if vm.get("current_stage") == "Deleted_Internal":
                    continue
                tags = {k: p.read_text() for k, p in _files_under(vdir / "tags").items()}
                versions.append(
                    MlflowVersion(
                        int(vm["version"]), vm.get("run_id") or "", vm.get("source") or "",
                        vm.get("description") or "", tags,
                    )
                )  # fmt: skip
            aliases = {str(a): int(v) for a, v in (meta.get("aliases") or {}).items()}
            models.append(MlflowModel(str(meta["name"]), meta.get("description") or "", aliases, versions))
        return models


# ---------------------------------------------------------------- tracking server (REST)


class RestStore:
    """An MLflow tracking server, through its REST API (urllib; no mlflow needed)."""

    def __init__(self, uri: str, token: str | None = None, timeout_s: float = 60.0):
        self.base = uri.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json"}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, params: dict | None = None, body: dict | None = None):
        url = f"{self.base}{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params, doseq=True)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, headers=self.headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as resp:
                raw = path.startswith(("/get-artifact", "/ajax-api/2.0/mlflow/logged-models/"))
                return resp.read() if raw else json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode(errors="replace")
            raise ImportFailed(
                f"MLflow server {self.base}: {method} {path} -> HTTP {exc.code}: {detail}"
            ) from None
        except OSError as exc:
            raise ImportFailed(
                f"MLflow server {self.base} not reachable ({exc}): is the URI right?"
            ) from None

    def _pages(self, method: str, path: str, field_name: str, params=None, body=None) -> Iterator[dict]:
        token = None
        while True:
            if body is not None:
                reply = self._call(method, path, body={**body, **({"page_token": token} if token else {})})
            else:
                reply = self._call(
                    method, path, {**(params or {}), **({"page_token": token} if token else {})}
                )
            yield from reply.get(field_name, [])
            token = reply.get("next_page_token")
            if not token:
                return

    def runs(self) -> Iterator[MlflowRun]:
        experiments = {
            e["experiment_id"]: e["name"]
            for e in self._pages(
                "POST", "/api/2.0/mlflow/experiments/search", "experiments",
                body={"max_results": PAGE, "view_type": "ACTIVE_ONLY"},
            )
        }  # fmt: skip
        if not experiments:
            return
        body = {"experiment_ids": sorted(experiments), "max_results": PAGE, "run_view_type": "ACTIVE_ONLY",
                "order_by": ["attributes.start_time ASC"]}  # fmt: skip
        for r in self._pages("POST", "/api/2.0/mlflow/runs/search", "runs", body=body):
            info, data = r["info"], r.get("data", {})
            yield MlflowRun(
                info["run_id"], experiments.get(info["experiment_id"], info["experiment_id"]),
                info.get("run_name", ""), info.get("status", "FINISHED"),
                int(info["start_time"]) if info.get("start_time") else None,
                int(info["end_time"]) if info.get("end_time") else None,
                info.get("artifact_uri", ""),
                {p["key"]: p.get("value", "") for p in data.get("params", [])},
                {t["key"]: t.get("value", "") for t in data.get("tags", [])},
                sorted((m["key"], int(m.get("step", 0)), int(m.get("timestamp", 0))) for m in data.get("metrics", [])),
            )  # fmt: skip

    def history(self, run: MlflowRun) -> list[Series]:
        rows = []
        for key, _, _ in run.latest:
            params = {"run_id": run.run_id, "metric_key": key, "max_results": 25000}
            for m in self._pages("GET", "/api/2.0/mlflow/metrics/get-history", "metrics", params=params):
                rows.append((key, m.get("step", 0), m.get("timestamp", 0), m.get("value", "NaN")))
        return _series(rows)

    def _list(self, run_id: str, path: str = "") -> list[dict]:
        params = {"run_id": run_id, **({"path": path} if path else {})}
        return list(self._pages("GET", "/api/2.0/mlflow/artifacts/list", "files", params=params))

    def _download(self, run_id: str, entry: dict, dest: Path) -> None:
        if entry.get("is_dir"):
            for child in self._list(run_id, entry["path"]):
                self._download(run_id, child, dest)
            return
        target = (dest / entry["path"]).resolve()
        if not target.is_relative_to(dest.resolve()):  # a listing must not write outside the scratch folder
            raise ImportFailed(
                f"MLflow server {self.base}: artifact path {entry['path']!r} leaves the run's folder"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(self._call("GET", "/get-artifact", {"path": entry["path"], "run_uuid": run_id}))

    def artifacts(self, run: MlflowRun) -> list[SourceArtifact]:
        def fetch(entry: dict):
            def path(scratch: Path) -> Path:
                self._download(run.run_id, entry, scratch)
                return scratch / entry["path"]

            return path

        return [SourceArtifact(e["path"], fetch(e)) for e in self._list(run.run_id)]

    def logged_models(self) -> list[LoggedModel]:
        experiments = [
            e["experiment_id"]
            for e in self._pages(
                "POST", "/api/2.0/mlflow/experiments/search", "experiments",
                body={"max_results": PAGE, "view_type": "ACTIVE_ONLY"},
            )
        ]  # fmt: skip
        if not experiments:
            return []
        body = {"experiment_ids": experiments, "max_results": 100}
        found = []
        for m in self._pages("POST", "/api/2.0/mlflow/logged-models/search", "models", body=body):
            info = m.get("info", {})
            found.append(LoggedModel(info["model_id"], info.get("name") or info["model_id"],
                                     info.get("source_run_id", ""), info.get("artifact_uri", "")))  # fmt: skip
        return found

    def _model_download(self, model_id: str, path: str, dest: Path) -> None:
        listing = self._call(
            "GET", f"/api/2.0/mlflow/logged-models/{model_id}/artifacts/directories",
            {"artifact_directory_path": path} if path else None,
        )  # fmt: skip
        for entry in listing.get("files", []):
            rel = (
                f"{path}/{entry['path']}"
                if path and not entry["path"].startswith(path + "/")
                else entry["path"]
            )
            if entry.get("is_dir"):
                self._model_download(model_id, rel, dest)
                continue
            target = (dest / rel).resolve()
            if not target.is_relative_to(dest.resolve()):
                raise ImportFailed(
                    f"MLflow server {self.base}: model file path {rel!r} leaves the model's folder"
                )
            target.parent.mkdir(parents=True, exist_ok=True)
            url = f"/ajax-api/2.0/mlflow/logged-models/{model_id}/artifacts/files"
            target.write_bytes(self._call("GET", url, {"artifact_file_path": rel}))

    def logged_model_files(self, model: LoggedModel) -> SourceArtifact:
        def path(scratch: Path) -> Path:
            root = scratch / "model"
            root.mkdir(parents=True, exist_ok=True)
            self._model_download(model.model_id, "", root)
            return root

        return SourceArtifact(model.name, path, "model")

    def models(self) -> list[MlflowModel]:
        models = []
        for m in self._pages(
            "GET",
            "/api/2.0/mlflow/registered-models/search",
            "registered_models",
            params={"max_results": PAGE},
        ):
            versions = [
                MlflowVersion(
                    int(v["version"]), v.get("run_id", ""), v.get("source", ""), v.get("description", ""),
                    {t["key"]: t.get("value", "") for t in v.get("tags", [])},
                )
                for v in self._pages(
                    "GET", "/api/2.0/mlflow/model-versions/search", "model_versions",
                    params={"filter": f"name='{m['name']}'", "max_results": 200},
                )
            ]  # fmt: skip
            versions.sort(key=lambda v: v.version)
            aliases = {a["alias"]: int(a["version"]) for a in m.get("aliases", [])}
            models.append(MlflowModel(m["name"], m.get("description", ""), aliases, versions))
        return models


def open_store(uri: str, token: str | None = None) -> Store:
    """http(s)://... -> RestStore; sqlite:///path -> SqliteStore; file:///... or a folder ->
    FileStore (a folder holding mlflow.db -> SqliteStore)."""
    if uri.startswith(("http://", "https://")):
        return RestStore(uri, token)
    if uri.startswith("sqlite:"):
        return SqliteStore(Path(uri.split(":///", 1)[1] if ":///" in uri else uri[len("sqlite:") :]))
    path = _local_path(uri).expanduser()
    if path.is_file() and path.suffix == ".db":
        return SqliteStore(path)
    if path.is_dir() and not any(path.glob("*/meta.yaml")) and (path / "mlflow.db").is_file():
        return SqliteStore(path / "mlflow.db")
    return FileStore(path)


# ---------------------------------------------------------------- import


def source_run(
    store: Store, run: MlflowRun, project: str | None, logged: list[LoggedModel] = ()
) -> SourceRun:
    """`logged`: the logged models this run logged; each becomes an artifact of the run, named
    after the model (see model_artifact_names)."""
    tags = dict(run.tags)
    name = tags.pop("mlflow.runName", "") or run.name
    notes = tags.pop("mlflow.note.content", "")
    state = STATES.get(run.status, states.KILLED)
    return SourceRun(
        source="mlflow",
        source_id=run.run_id,
        project=project or project_name(run.experiment),
        group=run.experiment if project else "",
        fingerprint=digest(
            run.status, run.end_ms, run.params, run.tags, run.latest, run.name, [m.model_id for m in logged]
        ),  # fmt: skip
        name=name,
        tags=tags
        | {"mlflow.experiment": run.experiment, "mlflow.status": run.status}
        | (
            {"import.parent_run": run_id_for("mlflow", parent)}
            if (parent := tags.get("mlflow.parentRunId"))
            else {}
        ),
        notes=notes,
        config={k: parse_param(v) for k, v in run.params.items()},
        start_s=run.start_ms / 1000 if run.start_ms else None,
        end_s=run.end_ms / 1000 if run.end_ms else None,
        state=state,
        metrics=lambda: store.history(run),
        artifacts=lambda: (
            store.artifacts(run)
            + [_renamed(store.logged_model_files(m), n) for m, n in model_artifact_names(logged).items()]
        ),  # fmt: skip
    )


def _renamed(artifact: SourceArtifact, name: str) -> SourceArtifact:
    artifact.name = name
    return artifact


def model_artifact_names(logged) -> dict:
    """{logged model: artifact name}: the model's name, or name.<model id> when the run logged
    several models of that name."""
    counts: dict[str, int] = {}
    for m in logged:
        counts[m.name] = counts.get(m.name, 0) + 1
    return {m: m.name if counts[m.name] == 1 else f"{m.name}.{m.model_id}" for m in logged}


def _logged_model_id(version: MlflowVersion) -> str | None:
    """models:/<model id> (MLflow 3: a version made from a logged model) -> the model id."""
    if version.source.startswith("models:/m-"):
        return version.source[len("models:/") :].split("/")[0]
    return None


def _artifact_name(version: MlflowVersion, run: MlflowRun | None, model_names: dict[str, str]) -> str | None:
    """The artifact of the version's run its source is: a logged model's (model_names: model id ->
    artifact name), or the top-level entry of the run's artifacts its source points into; or None."""
    source = version.source
    model_id = _logged_model_id(version)
    if model_id is not None:
        return model_names.get(model_id)
    if source.startswith("runs:/"):
        rest = source[len("runs:/") :].split("/", 1)
        return rest[1].split("/")[0] if len(rest) == 2 and rest[1] else None
    if run is None or not run.artifact_uri:
        return None
    root = run.artifact_uri.rstrip("/") + "/"
    for a, b in ((source, root), (str(_local_path(source)), str(_local_path(root)) + "/")):
        if a.startswith(b) and a[len(b) :]:
            return a[len(b) :].split("/")[0]
    return None


def import_models(
    store: Store,
    runs: dict[str, tuple[MlflowRun, SourceRun]],
    logged: list[LoggedModel],
    writer: RunWriter,
    report: ImportReport,
) -> None:
    """Registered models, versions (in order) and aliases; a second import changes nothing."""
    client = writer.query
    by_id = {m.model_id: m for m in logged}
    model_names = {}  # logged model id -> the artifact name it has in its run
    for run_id in {m.run_id for m in logged}:
        for m, name in model_artifact_names([m for m in logged if m.run_id == run_id]).items():
            model_names[m.model_id] = name
    for model in store.models():
        placed = []
        for v in model.versions:
            source_model = by_id.get(_logged_model_id(v) or "")
            placed.append((v, runs.get(v.run_id or (source_model.run_id if source_model else ""))))
        homes = [pair[1].project for _, pair in placed if pair is not None]
        if not homes:
            report.models.append(f"model {model.name}: no version comes from an imported run; left out")
            continue
        project = homes[0]
        try:  # (Runstream run id, MLflow version) -> Runstream version, from the versions' tags
            have = {
                (v["run_id"], int(v["tags"].get(VERSION_TAG, 0))): v["version"]
                for v in client.model_versions(project, model.name)
            }
        except ServerError as exc:
            if exc.code != "NOT_FOUND":
                raise
            have = {}
        made_for: dict[int, int] = {}  # MLflow version -> Runstream version
        created = 0
        for version, pair in placed:
            key = (pair[1].run_id if pair else "", version.version)
            if key in have:
                made_for[version.version] = have[key]
                continue
            why = None
            if pair is None:
                why = f"its run {version.run_id or '(none)'} was not imported"
            elif pair[1].project != project:
                why = f"its run is in project {pair[1].project}, the model in {project}"
            artifact = _artifact_name(version, pair[0], model_names) if pair else None
            if why is None and artifact is None:
                why = f"its source {version.source!r} is not inside the run's artifacts"
            if why:
                report.models.append(f"model {model.name} version {version.version}: left out: {why}")
                continue
            made = client.create_model_version(
                project, model.name, pair[1].run_id, artifact,
                description=version.description or model.description,
                tags={**version.tags, VERSION_TAG: str(version.version)}, wait_visible_s=30.0,
            )  # fmt: skip
            made_for[version.version] = made.version
            created += 1
        moved = 0
        current = dict(client.get_model(project, model.name).aliases) if made_for else {}
        for alias, version in sorted(model.aliases.items()):
            target = made_for.get(version)
            if target is None:
                report.models.append(
                    f"model {model.name} alias {alias}: version {version} not imported; left out"
                )
            elif current.get(alias) != target:
                client.set_alias(project, model.name, alias, target, reason="imported from MLflow")
                moved += 1
        report.models.append(
            f"model {project}/{model.name}: {created} versions created, "
            f"{len(made_for) - created} already there, {moved} aliases set"
        )


def import_mlflow(
    uri: str,
    *,
    project: str | None = None,
    endpoint: str | None = None,
    api_key: str | None = None,
    token: str | None = None,
    models: bool = True,
    progress: bool = True,
    quiet: bool = False,
) -> ImportReport:
    """Imports every active run of an MLflow store (server URI, sqlite:/// or mlruns/ folder),
    then its registered models (see the module docstring). Idempotent and resumable."""
    store = open_store(uri, token)
    mruns = list(store.runs())
    logged = store.logged_models() if models else []
    pairs = {
        r.run_id: (r, source_run(store, r, project, [m for m in logged if m.run_id == r.run_id]))
        for r in mruns
    }
    for _, src in pairs.values():
        src.run_id = run_id_for(src.source, src.source_id)
    writer = RunWriter(endpoint, api_key)
    try:
        report = import_runs(
            (src for _, src in pairs.values()), total=len(pairs), progress=progress, quiet=quiet,
            label="mlflow import", writer=writer,
        )  # fmt: skip
        done = {r.source_id for r in report.runs if r.status != "failed"}
        if models:
            import_models(store, {k: v for k, v in pairs.items() if k in done}, logged, writer, report)
    finally:
        writer.close()
    return report


def main(args) -> int:
    """`runstream import mlflow URI`."""
    return cli_result(
        "mlflow",
        lambda: import_mlflow(
            args.uri,
            project=args.project,
            endpoint=args.endpoint,
            api_key=args.api_key,
            token=args.mlflow_token,
            models=not args.no_models,
            progress=not args.no_progress,
            quiet=args.quiet,
        ),  # fmt: skip
    )
