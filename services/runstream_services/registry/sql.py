"""All SQL text of the registry service. Each function returns a Query (SQL with `{name:Type}`
placeholders and their values; query/sql.py) or, for inserts, the table and its column names.
Row layouts are stated on each function; the servicer turns rows into protos."""

from __future__ import annotations

import json

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


def models(db: str, project: str, name: str | None = None, after: str = "", limit: int = 0) -> Query:
    """Rows (name, description, protected_aliases, creator, created_ms, latest_version) of the
    project's models (only `name` when given; names after `after`; at most `limit`), by name."""
    params: dict[str, object] = {"project": project}
    cond = ""
    if name is not None:
        cond = " AND m.name = {name:String}"
        params["name"] = name
    if after:
        cond += " AND m.name > {after:String}"
        params["after"] = after
    tail = ""
    if limit:
        tail = " LIMIT {limit:UInt32}"
        params["limit"] = limit
    return Query(
        f"SELECT m.name, m.description, m.protected_aliases, m.creator, m.created_ms, ifNull(v.latest, 0) "
        f"FROM (SELECT * FROM {db}.registered_models FINAL WHERE project = {{project:String}}) AS m "
        f"LEFT JOIN (SELECT model, max(version) AS latest FROM {db}.model_versions "
        f"WHERE project = {{project:String}} GROUP BY model) AS v ON v.model = m.name "
        f"WHERE 1{cond} ORDER BY m.name{tail} SETTINGS join_use_nulls = 1",
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


def versions(
    db: str, project: str, model: str, version: int | None = None, below: int = 0, limit: int = 0
) -> Query:
    """Rows of `_VERSION_SELECT` (version, run_id, artifact_name, artifact_version, artifact_sha256,
    files, datasets, git_commit, git_dirty, creator, created_ms, description, metrics) of the
    model (only `version` when given; numbers under `below`; at most `limit`), newest first."""
    cond, params = _model_scope(project, model, version)
    if below:
        cond += " AND version < {below:UInt32}"
        params["below"] = below
    tail = ""
    if limit:
        tail = " LIMIT {limit:UInt32}"
        params["limit"] = limit
    return Query(
        f"{_VERSION_SELECT} FROM {db}.model_versions WHERE project = {{project:String}} "
        f"AND model = {{model:String}}{cond} ORDER BY version DESC LIMIT 1 BY version{tail}",
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
    "model.created", "model.updated", "model_version.created", "model_version.updated", "alias.created",
    "alias.moved", "alias.deleted", "input.recorded",
)  # fmt: skip


def events(db: str, project: str, model: str, limit: int, before: tuple[int, int] | None = None) -> Query:
    """Rows (time_ms, actor, action, target, detail, row hash) of the project's registry audit rows
    (only `model`'s when given: targets `model`, `model:<n>`, `model@<alias>`), newest first, then
    by row hash; `before` (time_ms, row hash of the last row of the previous page) continues a
    listing. Two rows alike in every column have one hash and one of them may be skipped at a
    page edge: they tell the same thing."""
    params: dict[str, object] = {"project": project, "actions": list(ACTIONS), "limit": limit}
    cond = ""
    if before is not None:
        cond = " AND (time_ms, sipHash64(actor, action, target, detail)) < ({bt:Int64}, {bh:UInt64})"
        params |= {"bt": before[0], "bh": before[1]}
    if model:
        cond += (
            " AND (target = {model:String} OR startsWith(target, {version_prefix:String}) "
            "OR startsWith(target, {alias_prefix:String}))"
        )
        params |= {"model": model, "version_prefix": model + ":", "alias_prefix": model + "@"}
    return Query(
        f"SELECT time_ms, actor, action, target, detail, sipHash64(actor, action, target, detail) AS h "
        f"FROM {db}.audit_log WHERE project = {{project:String}} AND action IN {{actions:Array(String)}}{cond} "
        f"ORDER BY time_ms DESC, h DESC LIMIT {{limit:UInt32}}",
        params,
    )


# ---------------------------------------------------------------- 0007: inputs, model edits, claims

INPUT_COLUMNS = (
    "project", "run_id", "kind", "name", "version", "ref", "alias", "source_run_id", "sha256", "actor", "time_ms",
)  # fmt: skip
MODEL_EDIT_COLUMNS = ("project", "name", "description", "tags", "actor", "time_ms", "revision")
CLAIM_COLUMNS = ("project", "model", "version", "claim", "time_ms")
_INPUT_SELECT = "SELECT run_id, kind, name, version, ref, alias, source_run_id, sha256, actor, time_ms"


def run_inputs(db: str, project: str, run_ids: list[str]) -> Query:
    """Rows (run_id, kind, name, version, ref, alias, source_run_id, sha256, actor, time_ms) of the
    runs' recorded inputs, oldest first."""
    return Query(
        f"{_INPUT_SELECT} FROM {db}.run_inputs FINAL WHERE project = {{project:String}} "
        f"AND run_id IN {{runs:Array(String)}} ORDER BY time_ms, kind, name, version",
        {"project": project, "runs": list(run_ids)},
    )


def consumers(db: str, project: str, kind: str, names: list[str], versions: list[int]) -> Query:
    """Rows (run_id, name, version, source_run_id) of inputs of `kind` ('artifact' or
    'model_version') naming one of `names` at one of `versions` (a superset of the wanted pairs:
    the caller keeps the pairs it asked for)."""
    return Query(
        f"SELECT run_id, name, version, source_run_id FROM {db}.run_inputs FINAL "
        f"WHERE project = {{project:String}} AND kind = {{kind:String}} AND name IN {{names:Array(String)}} "
        f"AND version IN {{versions:Array(UInt32)}}",
        {"project": project, "kind": kind, "names": list(names), "versions": list(versions)},
    )


def model_edits(db: str, project: str, name: str) -> Query:
    """Rows (description, tags, actor, time_ms, revision) of a model's metadata edits, oldest first."""
    return Query(
        f"SELECT description, tags, actor, time_ms, revision FROM {db}.registered_model_edits "
        f"WHERE project = {{project:String}} AND name = {{name:String}} ORDER BY revision",
        {"project": project, "name": name},
    )


def current_model_tags(db: str, project: str) -> Query:
    """Rows (name, description, tags) of each edited model's newest edit in the project."""
    return Query(
        f"SELECT name, argMax(description, revision), argMax(tags, revision) FROM {db}.registered_model_edits "
        f"WHERE project = {{project:String}} GROUP BY name",
        {"project": project},
    )


def next_version_floor(db: str, project: str, model: str) -> Query:
    """One row: the highest version number written or claimed for the model (0: none)."""
    params = {"project": project, "model": model}
    return Query(
        f"SELECT greatest("
        f"(SELECT max(version) FROM {db}.model_versions WHERE project = {{project:String}} AND model = {{model:String}}), "
        f"(SELECT max(version) FROM {db}.model_version_claims WHERE project = {{project:String}} "
        f"AND model = {{model:String}}))",
        params,
    )


def claim_holder(db: str, project: str, model: str, version: int) -> Query:
    """One row (claim) of whoever holds version `version` of the model: the one claim the store
    kept (later claims with the same deduplication token were dropped); should the store keep two
    (a token past the deduplication window), the earliest, then the smallest id, holds it."""
    return Query(
        f"SELECT claim FROM {db}.model_version_claims WHERE project = {{project:String}} "
        f"AND model = {{model:String}} AND version = {{version:UInt32}} ORDER BY time_ms, claim LIMIT 1",
        {"project": project, "model": model, "version": version},
    )


def claims_of(db: str, project: str, subject: str) -> Query:
    """Rows (number, claim, time_ms) of every claim of `subject` (a model, or "model@alias")."""
    return Query(
        f"SELECT version, claim, time_ms FROM {db}.model_version_claims WHERE project = {{project:String}} "
        f"AND model = {{subject:String}} ORDER BY version",
        {"project": project, "subject": subject},
    )


def claim_token(project: str, model: str, version: int) -> str:
    """The deduplication token of a claim: one per (project, model, version)."""
    return "model-version-claim\n" + json.dumps([project, model, version])


# ---------------------------------------------------------------- lineage (registry/lineage_store.py)


def runs_datasets(db: str, project: str, run_ids: list[str]) -> Query:
    """Rows (run_id, datasets JSON) of the runs."""
    return Query(
        f"SELECT run_id, datasets FROM {db}.runs FINAL WHERE project = {{project:String}} "
        f"AND run_id IN {{runs:Array(String)}}",
        {"project": project, "runs": list(run_ids)},
    )


def dataset_users(db: str, project: str, names: list[str]) -> Query:
    """Rows (run_id, datasets JSON) of the project's runs that recorded a dataset named in `names`."""
    return Query(
        f"SELECT run_id, datasets FROM {db}.runs FINAL WHERE project = {{project:String}} "
        f"AND arrayExists(d -> JSONExtractString(d, 'name') IN {{names:Array(String)}}, JSONExtractArrayRaw(datasets))",
        {"project": project, "names": list(names)},
    )


def artifact_versions(db: str, project: str, names: list[str], versions: list[int]) -> Query:
    """Rows (name, version, run_id, files, bytes, type, digest listing) per artifact version named
    in `names` at one of `versions` (a superset: the caller keeps the pairs it asked for)."""
    return Query(
        f"SELECT name, version, any(run_id), count(), sum(size), any(type), "
        f"groupArray((path, sha256)) FROM {db}.artifacts FINAL WHERE project = {{project:String}} "
        f"AND name IN {{names:Array(String)}} AND version IN {{versions:Array(UInt32)}} GROUP BY name, version",
        {"project": project, "names": list(names), "versions": list(versions)},
    )


def newest_artifact_version(db: str, project: str, name: str) -> Query:
    """One row (highest version of the artifact name in the project; 0: none)."""
    return Query(
        f"SELECT max(version) FROM {db}.artifacts WHERE project = {{project:String}} AND name = {{name:String}}",
        {"project": project, "name": name},
    )


def run_artifact_versions(db: str, project: str, run_ids: list[str]) -> Query:
    """Rows (run_id, name, version): the artifact versions the runs logged."""
    return Query(
        f"SELECT DISTINCT run_id, name, version FROM {db}.artifacts WHERE project = {{project:String}} "
        f"AND run_id IN {{runs:Array(String)}}",
        {"project": project, "runs": list(run_ids)},
    )


_LINEAGE_VERSION = (
    "SELECT model, version, run_id, artifact_name, artifact_version, artifact_sha256, created_ms, creator"
)


def lineage_versions(db: str, project: str, models: list[str], versions: list[int]) -> Query:
    """Rows (model, version, run_id, artifact_name, artifact_version, artifact_sha256, created_ms,
    creator) of model versions named by `models` x `versions` (a superset)."""
    return Query(
        f"{_LINEAGE_VERSION} FROM {db}.model_versions WHERE project = {{project:String}} "
        f"AND model IN {{models:Array(String)}} AND version IN {{versions:Array(UInt32)}} LIMIT 1 BY model, version",
        {"project": project, "models": list(models), "versions": list(versions)},
    )


def versions_of_runs(db: str, project: str, run_ids: list[str]) -> Query:
    """Rows as lineage_versions of the versions registered from the runs."""
    return Query(
        f"{_LINEAGE_VERSION} FROM {db}.model_versions WHERE project = {{project:String}} "
        f"AND run_id IN {{runs:Array(String)}} LIMIT 1 BY model, version",
        {"project": project, "runs": list(run_ids)},
    )


def versions_of_artifacts(db: str, project: str, names: list[str], versions: list[int]) -> Query:
    """Rows as lineage_versions of the versions made from artifacts `names` x `versions` (a superset)."""
    return Query(
        f"{_LINEAGE_VERSION} FROM {db}.model_versions WHERE project = {{project:String}} "
        f"AND artifact_name IN {{names:Array(String)}} AND artifact_version IN {{versions:Array(UInt32)}} "
        f"LIMIT 1 BY model, version",
        {"project": project, "names": list(names), "versions": list(versions)},
    )


def runs_info(db: str, project: str, run_ids: list[str]) -> Query:
    """Rows (run_id, name, state, git_commit, start_ms) of the runs that exist."""
    return Query(
        f"SELECT run_id, name, toString(state), git_commit, start_ms FROM {db}.runs FINAL "
        f"WHERE project = {{project:String}} AND run_id IN {{runs:Array(String)}}",
        {"project": project, "runs": list(run_ids)},
    )
