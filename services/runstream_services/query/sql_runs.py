"""The query service's statements about projects, runs and their params, metric summaries and
artifacts. Each function returns a Query (SQL text and the values of its placeholders); the
servicer runs it and turns the rows into protos. Row layouts are stated on each function."""

from __future__ import annotations

from runstream_services.query.filter import Field, Node
from runstream_services.query.sql import Binder, Query, compile_filter, sort_plan

#: the display columns of a run, in the order run rows carry them
RUN_COLUMNS = (
    "run_id",
    "name",
    "`group`",
    "job_type",
    "toString(state)",
    "start_ms",
    "end_ms",
    "heartbeat_ms",
    "user",
    "host",
    "git_commit",
    "git_dirty",
    "notes",
    "tags",
)


# ---------------------------------------------------------------- projects and keys


def projects(db: str) -> Query:
    """Rows (project, run count, newest start_ms), by project name."""
    return Query(
        f"SELECT project, count(), max(start_ms) FROM {db}.runs FINAL GROUP BY project ORDER BY project", {}
    )


def _project_runs(project: str, run_ids: list[str]) -> tuple[str, dict[str, object]]:
    """The condition on run_id (empty: every run) and the parameters of a project's key lists."""
    params: dict[str, object] = {"project": project}
    if not run_ids:
        return "", params
    params["runs"] = list(run_ids)
    return " AND run_id IN {runs:Array(String)}", params


def metric_keys(db: str, project: str, run_ids: list[str]) -> Query:
    """Rows (kind, key) of the metrics logged in the project (or in `run_ids` of it), by key."""
    run_cond, params = _project_runs(project, run_ids)
    return Query(
        f"SELECT DISTINCT toString(kind), toString(key) FROM {db}.metric_summaries "
        f"WHERE project = {{project:String}}{run_cond} ORDER BY 2",
        params,
    )


def config_keys(db: str, project: str, run_ids: list[str]) -> Query:
    """Rows (key,) of the config params in the project (or in `run_ids` of it), sorted."""
    run_cond, params = _project_runs(project, run_ids)
    return Query(
        f"SELECT DISTINCT key FROM {db}.params WHERE project = {{project:String}} "
        f"AND scope = 'config'{run_cond} ORDER BY key",
        params,
    )


def tag_keys(db: str, project: str, run_ids: list[str]) -> Query:
    """Rows (key,) of the tag keys in the project (or in `run_ids` of it), sorted."""
    run_cond, params = _project_runs(project, run_ids)
    return Query(
        f"SELECT DISTINCT arrayJoin(mapKeys(tags)) AS k FROM {db}.runs FINAL "
        f"WHERE project = {{project:String}}{run_cond} ORDER BY k",
        params,
    )


# ---------------------------------------------------------------- run search


def _runs_where(db: str, project: str, node: Node | None, binder: Binder) -> tuple[str, str]:
    """The condition over `<db>.runs` for the project and filter, and the project's placeholder."""
    project_ph = binder.bind(project, "String")
    where = f"project = {project_ph}"
    if node is not None:
        where += " AND " + compile_filter(node, binder, db, project_ph)
    return where, project_ph


def search_runs(
    db: str, project: str, node: Node | None, order_by: list[tuple[Field, bool]], limit: int, offset: int
) -> Query:
    """The page of matching runs and the total match count in one query: rows are RUN_COLUMNS,
    the datasets (JSON text), then the total (the same on every row)."""
    binder = Binder()
    where, project_ph = _runs_where(db, project, node, binder)
    plan = sort_plan(order_by, binder, db, project_ph)
    limit_ph, offset_ph = binder.bind(limit, "UInt64"), binder.bind(offset, "UInt64")
    inner_cols = ", ".join(RUN_COLUMNS).replace("toString(state)", "state") + ", datasets"
    outer_cols = ", ".join("toString(r.state)" if c == "toString(state)" else f"r.{c}" for c in RUN_COLUMNS)
    outer_cols += ", r.datasets"
    sql = (
        f"SELECT {outer_cols}, count() OVER () AS total "
        f"FROM (SELECT {inner_cols} FROM {db}.runs FINAL WHERE {where}) AS r "
        + " ".join(plan.joins)
        + f" ORDER BY {', '.join(plan.order)} LIMIT {limit_ph} OFFSET {offset_ph} "
        "SETTINGS join_use_nulls = 1"
    )
    return Query(sql, binder.params)


def count_runs(db: str, project: str, node: Node | None) -> Query:
    """One row (count,) of the runs matching the filter (for a page past the last match)."""
    binder = Binder()
    where, _ = _runs_where(db, project, node, binder)
    return Query(f"SELECT count() FROM {db}.runs FINAL WHERE {where}", binder.params)


# ---------------------------------------------------------------- one run and its details


def run(db: str, project: str, run_id: str) -> Query:
    """The run's row: RUN_COLUMNS, then context and datasets (JSON text); no row if unknown."""
    return Query(
        f"SELECT {', '.join(RUN_COLUMNS)}, context, datasets FROM {db}.runs FINAL "
        f"WHERE project = {{project:String}} AND run_id = {{run:String}}",
        {"project": project, "run": run_id},
    )


def run_artifacts(db: str, project: str, run_id: str) -> Query:
    """Rows (run_id, name, path, type, version, sha256, size, uri, created_ms) of the run's
    artifacts, by name, version and path."""
    return Query(
        f"SELECT run_id, name, path, type, version, sha256, size, uri, created_ms FROM {db}.artifacts FINAL "
        f"WHERE project = {{project:String}} AND run_id = {{run:String}} ORDER BY name, version, path",
        {"project": project, "run": run_id},
    )


def run_params(
    db: str, project: str, run_ids: list[str], param_keys: list[str], include_config: bool
) -> Query:
    """Rows (run_id, scope, key, kind, num, str): the newest value of each summary param of the
    runs, and of each config param when include_config (only `param_keys` when given)."""
    params: dict[str, object] = {"project": project, "runs": list(run_ids)}
    scopes = "('config', 'summary')" if include_config else "('summary')"
    key_cond = ""
    if param_keys:
        key_cond = " AND (scope = 'summary' OR key IN {pkeys:Array(String)})"
        params["pkeys"] = list(param_keys)
    return Query(
        f"SELECT run_id, toString(scope), key, toString(argMax(kind, version)), argMax(num, version), "
        f"argMax(str, version) FROM {db}.params WHERE project = {{project:String}} "
        f"AND scope IN {scopes} AND run_id IN {{runs:Array(String)}}{key_cond} GROUP BY run_id, scope, key",
        params,
    )


def run_metric_summaries(db: str, project: str, run_ids: list[str], keys: list[str]) -> Query:
    """Rows (run_id, key, last, min, max, count, last_step) of the runs' user metrics (only
    `keys` when given), by run and key. min/max are NaN when a series has no finite value."""
    params: dict[str, object] = {"project": project, "runs": list(run_ids)}
    key_cond = ""
    if keys:
        key_cond = " AND key IN {mkeys:Array(String)}"
        params["mkeys"] = list(keys)
    return Query(
        f"SELECT run_id, toString(key), argMaxMerge(last), ifNull(min(min), nan), ifNull(max(max), nan), "
        f"sum(count), max(last_step) "
        f"FROM {db}.metric_summaries WHERE project = {{project:String}} AND kind = 'user' "
        f"AND run_id IN {{runs:Array(String)}}{key_cond} GROUP BY run_id, key ORDER BY run_id, key",
        params,
    )


# ---------------------------------------------------------------- existence checks


def run_count(db: str, project: str, run_id: str) -> Query:
    """One row (count,): non-zero when the run exists in the project."""
    return Query(
        f"SELECT count() FROM {db}.runs WHERE project = {{project:String}} AND run_id = {{run:String}}",
        {"project": project, "run": run_id},
    )


def projects_of_run(db: str, run_id: str) -> Query:
    """Rows (project,) of every project holding a run with this id."""
    return Query(f"SELECT DISTINCT project FROM {db}.runs WHERE run_id = {{run:String}}", {"run": run_id})


def artifact_count(db: str, project: str, run_id: str, sha256: str) -> Query:
    """One row (count,): non-zero when the run has an artifact with this content digest."""
    return Query(
        f"SELECT count() FROM {db}.artifacts WHERE project = {{project:String}} "
        f"AND run_id = {{run:String}} AND sha256 = {{sha:String}}",
        {"project": project, "run": run_id, "sha": sha256},
    )
