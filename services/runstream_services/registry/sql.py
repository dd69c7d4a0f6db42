"""All SQL text of the registry service. Each function returns a Query (SQL with `{name:Type}`
placeholders and their values; query/sql.py) or, for inserts, the table and its column names.
Row layouts are stated on each function; the servicer turns rows into protos."""

from __future__ import annotations

from runstream_services.query.sql import Query

MODEL_COLUMNS = ("project", "name", "description", "protected_aliases", "creator", "created_ms", "revision")
VERSION_COLUMNS = (
    "project", "model", "version", "run_id", "artifact_name", "artifact_version", "artifact_sha256", "files",
    "datasets", "git_commit", "git_dirty", "creator", "created_ms", "description", "metrics",
)  # fmt: skip
EDIT_COLUMNS = ("project", "model", "version", "description", "tags", "actor", "time_ms", "revision")
MOVE_COLUMNS = (
    "project", "model", "alias", "to_version", "from_version", "actor", "reason", "time_ms", "revision",
)  # fmt: skip
AUDIT_COLUMNS = ("time_ms", "project", "actor", "action", "target", "detail")

_VERSION_SELECT = (
    "SELECT version, run_id, artifact_name, artifact_version, artifact_sha256, files, datasets, git_commit, "
    "git_dirty, creator, created_ms, description, metrics"
)


def models(db: str, project: str, name: str | None = None) -> Query:
    """Rows (name, description, protected_aliases, creator, created_ms, latest_version) of the
    project's models (only `name` when given), by name."""
    params: dict[str, object] = {"project": project}
    cond = ""
    if name is not None:
        cond = " AND m.name = {name:String}"
        params["name"] = name
    return Query(
        f"SELECT m.name, m.description, m.protected_aliases, m.creator, m.created_ms, ifNull(v.latest, 0) "
        f"FROM (SELECT * FROM {db}.registered_models FINAL WHERE project = {{project:String}}) AS m "
        f"LEFT JOIN (SELECT model, max(version) AS latest FROM {db}.model_versions "
        f"WHERE project = {{project:String}} GROUP BY model) AS v ON v.model = m.name "
        f"WHERE 1{cond} ORDER BY m.name SETTINGS join_use_nulls = 1",
        params,
    )


def alias_moves(db: str, project: str, model: str | None = None) -> Query:
    """Rows (model, alias, to_version, from_version, actor, reason, time_ms, revision): the alias
    history of the project's models (only `model` when given), oldest first."""
    params: dict[str, object] = {"project": project}
    cond = ""
    if model is not None:
        cond = " AND model = {model:String}"
        params["model"] = model
    return Query(
        f"SELECT model, alias, to_version, from_version, actor, reason, time_ms, revision "
        f"FROM {db}.model_alias_moves WHERE project = {{project:String}}{cond} ORDER BY model, alias, revision",
        params,
    )


def versions(db: str, project: str, model: str, version: int | None = None) -> Query:
    """Rows of `_VERSION_SELECT` (version, run_id, artifact_name, artifact_version, artifact_sha256,
    files, datasets, git_commit, git_dirty, creator, created_ms, description, metrics) of the
    model (only `version` when given), newest first."""
    cond, params = _model_scope(project, model, version)
    return Query(
        f"{_VERSION_SELECT} FROM {db}.model_versions WHERE project = {{project:String}} "
        f"AND model = {{model:String}}{cond} ORDER BY version DESC LIMIT 1 BY version",
        params,
    )


def _model_scope(project: str, model: str, version: int | None) -> tuple[str, dict[str, object]]:
    """The extra condition and the bound values for one model's rows (one version's when given)."""
    params: dict[str, object] = {"project": project, "model": model}
    if version is None:
        return "", params
    params["version"] = version
    return " AND version = {version:UInt32}", params


def latest_version(db: str, project: str, model: str) -> Query:
    """One row (highest version number, 0 when none)."""
    return Query(
        f"SELECT max(version) FROM {db}.model_versions WHERE project = {{project:String}} AND model = {{model:String}}",
        {"project": project, "model": model},
    )


def edits(db: str, project: str, model: str, version: int | None = None) -> Query:
    """Rows (version, description, tags, actor, time_ms, revision): the metadata edits of the
    model's versions (only `version` when given), oldest first."""
    cond, params = _model_scope(project, model, version)
    return Query(
        f"SELECT version, description, tags, actor, time_ms, revision FROM {db}.model_version_edits "
        f"WHERE project = {{project:String}} AND model = {{model:String}}{cond} ORDER BY version, revision",
        params,
    )


# ---------------------------------------------------------------- what a version is made of


def run_row(db: str, project: str, run_id: str) -> Query:
    """One row (git_commit, git_dirty, datasets JSON) of the run; none when it does not exist."""
    return Query(
        f"SELECT git_commit, git_dirty, datasets FROM {db}.runs FINAL "
        f"WHERE project = {{project:String}} AND run_id = {{run:String}}",
        {"project": project, "run": run_id},
    )


def run_artifact_files(db: str, project: str, run_id: str, name: str) -> Query:
    """Rows (name, version, path, sha256, size) of the run's artifact files named `name`."""
    return Query(
        f"SELECT name, version, path, sha256, size FROM {db}.artifacts FINAL "
        f"WHERE project = {{project:String}} AND run_id = {{run:String}} AND name = {{name:String}} "
        f"ORDER BY version, path",
        {"project": project, "run": run_id, "name": name},
    )


def run_metrics(db: str, project: str, run_id: str, keys: list[str]) -> Query:
    """Rows (key, last, min, max, count, last_step) of the run's user metric summaries (only
    `keys` when given), by key; min/max NaN when a series has no finite value."""
    params: dict[str, object] = {"project": project, "run": run_id}
    cond = ""
    if keys:
        cond = " AND key IN {keys:Array(String)}"
        params["keys"] = list(keys)
    return Query(
        f"SELECT toString(key), argMaxMerge(last), ifNull(min(min), nan), ifNull(max(max), nan), "
        f"sum(count), max(last_step) FROM {db}.metric_summaries WHERE project = {{project:String}} "
        f"AND run_id = {{run:String}} AND kind = 'user'{cond} GROUP BY key ORDER BY key",
        params,
    )


#: the audit_log actions the registry writes
ACTIONS = (
    "model.created", "model_version.created", "model_version.updated", "alias.created", "alias.moved",
    "alias.deleted",
)  # fmt: skip


def events(db: str, project: str, model: str, limit: int) -> Query:
    """Rows (time_ms, actor, action, target, detail) of the project's registry audit rows (only
    `model`'s when given: targets `model`, `model:<n>`, `model@<alias>`), newest first."""
    params: dict[str, object] = {"project": project, "actions": list(ACTIONS), "limit": limit}
    cond = ""
    if model:
        cond = (
            " AND (target = {model:String} OR startsWith(target, {version_prefix:String}) "
            "OR startsWith(target, {alias_prefix:String}))"
        )
        params |= {"model": model, "version_prefix": model + ":", "alias_prefix": model + "@"}
    return Query(
        f"SELECT time_ms, actor, action, target, detail FROM {db}.audit_log WHERE project = {{project:String}} "
        f"AND action IN {{actions:Array(String)}}{cond} ORDER BY time_ms DESC LIMIT {{limit:UInt32}}",
        params,
    )
