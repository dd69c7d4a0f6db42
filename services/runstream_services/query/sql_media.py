"""SQL text of the media reads (ListMedia, DownloadMedia): the `media` table of migration 0010,
read with FINAL so an item written twice (a replay) is one row. Every value is bound."""

from __future__ import annotations

from runstream_services.query.sql import Query

ITEM_COLUMNS = (
    "run_id", "key", "step", "rank", "idx", "kind", "caption", "sha256", "size", "format", "time_ms",
    "width", "height", "channels", "sample_rate", "duration_s", "num_rows", "columns", "bin_edges",
    "counts", "text",
)  # fmt: skip


def media_keys(db: str, project: str, run_ids: list[str]) -> Query:
    """(run_id, key, kind, count, min_step, max_step) per run and media key."""
    return Query(
        f"SELECT run_id, key, any(kind), count(), min(step), max(step) FROM {db}.media FINAL "
        "WHERE project = {project:String} AND run_id IN {runs:Array(String)} "
        "GROUP BY run_id, key ORDER BY run_id, key",
        {"project": project, "runs": run_ids},
    )


def media_items(
    db: str, project: str, run_ids: list[str], key: str, steps: tuple[int, int] | None, limit: int
) -> Query:
    """ITEM_COLUMNS of the matching items, in (run_id, key, step, rank, idx) order, at most `limit`."""
    params: dict[str, object] = {"project": project, "runs": run_ids, "limit": limit}
    where = "project = {project:String} AND run_id IN {runs:Array(String)}"
    if key:
        where += " AND key = {key:String}"
        params["key"] = key
    if steps is not None:
        where += " AND step BETWEEN {lo:Int64} AND {hi:Int64}"
        params["lo"], params["hi"] = steps
    cols = ", ".join(f"`{c}`" for c in ITEM_COLUMNS)
    return Query(
        f"SELECT {cols} FROM {db}.media FINAL WHERE {where} "
        "ORDER BY run_id, key, step, rank, idx LIMIT {limit:UInt32}",
        params,
    )


def media_digest_count(db: str, project: str, run_id: str, sha256: str) -> Query:
    """One row (count,): non-zero when the run logged a media item with these bytes."""
    return Query(
        f"SELECT count() FROM {db}.media WHERE project = {{project:String}} "
        "AND run_id = {run:String} AND sha256 = {sha:String}",
        {"project": project, "run": run_id, "sha": sha256},
    )
