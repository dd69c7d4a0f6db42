"""The runstream.v1 QueryService for grpc.aio. ClickHouse calls are blocking, so each runs in a
worker thread (asyncio.to_thread); errors are raised as domain errors (errors.py) and the server's
ErrorInterceptor turns them into statuses."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from google.protobuf import json_format

from runstream.v1 import query_pb2, query_pb2_grpc, types_pb2
from runstream_services.errors import InvalidArgument, NotFound, ResourceExhausted
from runstream_services.query import sql as q
from runstream_services.query.downsample import lttb_many, minmax_series
from runstream_services.query.filter import parse_filter, parse_sort_field
from runstream_services.storage.clickhouse import ClientPool

log = logging.getLogger("runstream.query")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 10_000
MAX_SERIES_RUNS = 1_000
MAX_SERIES_KEYS = 100
DEFAULT_MAX_POINTS = 1_000
MAX_POINTS_PER_SERIES = 100_000
MAX_RAW_POINTS_TOTAL = 5_000_000
DEFAULT_HISTORY_PAGE = 100_000
MAX_HISTORY_PAGE = 1_000_000
_STATE_BY_NAME = {
    "unspecified": types_pb2.RUN_STATE_UNSPECIFIED,
    "running": types_pb2.RUN_STATE_RUNNING,
    "finished": types_pb2.RUN_STATE_FINISHED,
    "failed": types_pb2.RUN_STATE_FAILED,
    "crashed": types_pb2.RUN_STATE_CRASHED,
    "killed": types_pb2.RUN_STATE_KILLED,
}
_AXES = {
    query_pb2.X_AXIS_UNSPECIFIED: "step",
    query_pb2.X_AXIS_STEP: "step",
    query_pb2.X_AXIS_TIME: "time",
    query_pb2.X_AXIS_RELATIVE_TIME: "relative",
}


def _kind(kind: int) -> str:
    if kind in (types_pb2.METRIC_KIND_UNSPECIFIED, types_pb2.METRIC_KIND_USER):
        return "user"
    if kind == types_pb2.METRIC_KIND_SYSTEM:
        return "system"
    raise InvalidArgument(f"unknown metric kind {kind}; use USER or SYSTEM")


def _project(project: str) -> str:
    if not project:
        raise InvalidArgument("project is required")
    if len(project) > 256:
        raise InvalidArgument("project name is longer than 256 characters")
    return project


def _value(kind: str, num: float, text: str) -> types_pb2.Value:
    if kind == "number":
        return types_pb2.Value(number=num)
    if kind == "flag":
        return types_pb2.Value(flag=bool(num))
    if kind == "json":
        return types_pb2.Value(json=text)
    return types_pb2.Value(text=text)


def _f64(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    """Reads runs, params, metric summaries, metric points and artifacts of one database."""

    def __init__(
        self,
        client: Any,
        database: str,
        artifact_store: Any = None,
        settings: Any = None,
        auth: Any = None,
        readers: ClientPool | None = None,
    ):
        self.client = client
        self.readers = readers  # concurrent read clients; None: every read goes through `client`
        self.db = q.checked_db(database)
        self.artifacts = artifact_store
        self.settings = settings
        self.auth = auth  # auth.keys.ApiKeys; None: every call may read every project

    def _may_read(self, context, project: str) -> str:
        """The project, after checking the caller's key may read it (PermissionDenied otherwise)."""
        project = _project(project)
        if self.auth is not None:
            self.auth.check_context(context, project, "read")
        return project

    # ------------------------------------------------------------ helpers

    async def _rows(self, sql: str, params: dict | None = None) -> list[tuple]:
        def run() -> list[tuple]:
            with self._reader() as client:
                return client.query(sql, parameters=params or {}).result_rows

        return await asyncio.to_thread(run)

    def _reader(self):
        return self.readers.client() if self.readers is not None else contextlib.nullcontext(self.client)

    async def _np(self, sql: str, params: dict) -> list[np.ndarray]:
        """Columns of a numeric result as numpy arrays."""

        def run() -> list[np.ndarray]:
            with self._reader() as client:
                table = client.query_arrow(sql, parameters=params)
            return [table.column(i).to_numpy() for i in range(table.num_columns)]

        return await asyncio.to_thread(run)

    async def _require_run(self, project: str, run_id: str) -> None:
        rows = await self._rows(
            f"SELECT count() FROM {self.db}.runs WHERE project = {{project:String}} AND run_id = {{run:String}}",
            {"project": project, "run": run_id},
        )
        if not rows or rows[0][0] == 0:
            raise NotFound(f"run {run_id!r} not found in project {project!r}")

    # ------------------------------------------------------------ projects and keys

    async def ListProjects(self, request, context):
        rows = await self._rows(
            f"SELECT project, count(), max(start_ms) FROM {self.db}.runs FINAL GROUP BY project ORDER BY project"
        )
        if self.auth is not None and self.auth.required:
            principal = self.auth.authenticate(context.invocation_metadata())
            rows = [r for r in rows if principal is not None and principal.may(r[0], "read")]
        return query_pb2.ListProjectsResponse(
            projects=[query_pb2.ProjectInfo(name=p, run_count=n, last_activity_ms=t) for p, n, t in rows]
        )

    async def ListKeys(self, request, context):
        project = self._may_read(context, request.project)
        params: dict[str, Any] = {"project": project}
        run_cond = ""
        if request.run_ids:
            run_cond = " AND run_id IN {runs:Array(String)}"
            params["runs"] = list(request.run_ids)
        metric_sql = (
            f"SELECT DISTINCT toString(kind), toString(key) FROM {self.db}.metric_summaries "
            f"WHERE project = {{project:String}}{run_cond} ORDER BY 2"
        )
        param_sql = (
            f"SELECT DISTINCT key FROM {self.db}.params WHERE project = {{project:String}} "
            f"AND scope = 'config'{run_cond} ORDER BY key"
        )
        tag_sql = (
            f"SELECT DISTINCT arrayJoin(mapKeys(tags)) AS k FROM {self.db}.runs FINAL "
            f"WHERE project = {{project:String}}{run_cond} ORDER BY k"
        )
        metrics, param_rows, tags = await asyncio.gather(
            self._rows(metric_sql, params), self._rows(param_sql, params), self._rows(tag_sql, params)
        )
        return query_pb2.ListKeysResponse(
            metric_keys=[k for kind, k in metrics if kind == "user"],
            system_metric_keys=[k for kind, k in metrics if kind == "system"],
            param_keys=[r[0] for r in param_rows],
            tag_keys=[r[0] for r in tags],
        )

    # ------------------------------------------------------------ runs

    async def SearchRuns(self, request, context):
        project = self._may_read(context, request.project)
        page_size = request.page_size or DEFAULT_PAGE_SIZE
        if page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size {page_size} is over the limit of {MAX_PAGE_SIZE}")
        order_by = list(request.order_by) or ["-start"]
        fingerprint = hashlib.sha256(json.dumps([project, request.filter, order_by]).encode()).hexdigest()[
            :16
        ]
        offset = _decode_page_token(request.page_token, fingerprint)

        binder = q.Binder()
        project_ph = binder.bind(project, "String")
        node = parse_filter(request.filter)
        where = f"project = {project_ph}"
        if node is not None:
            where += " AND " + q.compile_filter(node, binder, self.db, project_ph)
        plan = q.sort_plan([parse_sort_field(s) for s in order_by], binder, self.db, project_ph)
        sql = q.search_sql(
            self.db, where, plan, binder.bind(page_size, "UInt64"), binder.bind(offset, "UInt64")
        )
        rows = await self._rows(sql, binder.params)
        if rows:
            total = rows[0][-1]
        else:
            count_binder = q.Binder()
            ph = count_binder.bind(project, "String")
            count_where = f"project = {ph}"
            if node is not None:
                count_where += " AND " + q.compile_filter(node, count_binder, self.db, ph)
            total = (
                await self._rows(
                    f"SELECT count() FROM {self.db}.runs FINAL WHERE {count_where}", count_binder.params
                )
            )[0][0]
        runs = [self._run_from_row(project, row) for row in rows]
        await self._fill_details(
            project,
            runs,
            list(request.param_keys),
            list(request.metric_keys),
            include_config=request.include_config or bool(request.param_keys),
        )
        next_offset = offset + len(rows)
        token = _encode_page_token(next_offset, fingerprint) if rows and next_offset < total else ""
        return query_pb2.SearchRunsResponse(runs=runs, next_page_token=token, total=total)

    def _run_from_row(self, project: str, row: tuple) -> types_pb2.Run:
        (
            run_id,
            name,
            group,
            job_type,
            state,
            start,
            end,
            heartbeat,
            user,
            host,
            commit,
            dirty,
            notes,
            tags,
        ) = row[:14]
        return types_pb2.Run(
            run_id=run_id,
            project=project,
            name=name,
            group=group,
            job_type=job_type,
            state=_STATE_BY_NAME.get(state, types_pb2.RUN_STATE_UNSPECIFIED),
            start_ms=start,
            end_ms=end,
            heartbeat_ms=heartbeat,
            user=user,
            host=host,
            git_commit=commit,
            git_dirty=bool(dirty),
            notes=notes,
            tags=tags,
        )

    async def _fill_details(
        self,
        project: str,
        runs: list[types_pb2.Run],
        param_keys: list[str],
        metric_keys: list[str],
        include_config: bool,
    ) -> None:
        """Adds config/summary values and metric summaries to the page's runs (only those runs)."""
        if not runs:
            return
        by_id = {r.run_id: r for r in runs}
        params: dict[str, Any] = {"project": project, "runs": list(by_id)}
        scopes = "('config', 'summary')" if include_config else "('summary')"
        key_cond = ""
        if param_keys:
            key_cond = " AND (scope = 'summary' OR key IN {pkeys:Array(String)})"
            params["pkeys"] = param_keys
        param_sql = (
            f"SELECT run_id, toString(scope), key, toString(argMax(kind, version)), argMax(num, version), "
            f"argMax(str, version) FROM {self.db}.params WHERE project = {{project:String}} "
            f"AND scope IN {scopes} AND run_id IN {{runs:Array(String)}}{key_cond} GROUP BY run_id, scope, key"
        )
        metric_cond = ""
        if metric_keys:
            metric_cond = " AND key IN {mkeys:Array(String)}"
            params["mkeys"] = metric_keys
        metric_sql = (
            f"SELECT run_id, toString(key), argMaxMerge(last), min(min), max(max), sum(count), max(last_step) "
            f"FROM {self.db}.metric_summaries WHERE project = {{project:String}} AND kind = 'user' "
            f"AND run_id IN {{runs:Array(String)}}{metric_cond} GROUP BY run_id, key ORDER BY run_id, key"
        )
        param_rows, metric_rows = await asyncio.gather(
            self._rows(param_sql, params), self._rows(metric_sql, params)
        )
        for run_id, scope, key, kind, num, text in param_rows:
            target = by_id[run_id].config if scope == "config" else by_id[run_id].summary
            target[key].CopyFrom(_value(kind, num, text))
        for run_id, key, last, lo, hi, count, last_step in metric_rows:
            by_id[run_id].metrics.add(key=key, last=last, min=lo, max=hi, count=count, last_step=last_step)

    async def GetRun(self, request, context):
        project = self._may_read(context, request.project)
        if not request.run_id:
            raise InvalidArgument("run_id is required")
        params = {"project": project, "run": request.run_id}
        cols = ", ".join(q.RUN_COLUMNS)
        run_sql = (
            f"SELECT {cols}, context, datasets FROM {self.db}.runs FINAL "
            f"WHERE project = {{project:String}} AND run_id = {{run:String}}"
        )
        artifact_sql = (
            f"SELECT run_id, name, path, type, version, sha256, size, uri, created_ms FROM {self.db}.artifacts FINAL "
            f"WHERE project = {{project:String}} AND run_id = {{run:String}} ORDER BY name, version, path"
        )
        rows, artifacts = await asyncio.gather(self._rows(run_sql, params), self._rows(artifact_sql, params))
        if not rows:
            raise NotFound(f"run {request.run_id!r} not found in project {project!r}")
        run = self._run_from_row(project, rows[0])
        context_json, datasets_json = rows[0][14], rows[0][15]
        if context_json:
            try:
                json_format.Parse(context_json, run.context, ignore_unknown_fields=True)
            except (json_format.ParseError, ValueError) as exc:
                log.warning("run %s has an unreadable context: %s", request.run_id, exc)
        if datasets_json:
            try:
                for item in json.loads(datasets_json):
                    run.datasets.add(
                        name=str(item.get("name", "")),
                        version=str(item.get("version", "")),
                        uri=str(item.get("uri", "")),
                    )
            except (ValueError, AttributeError, TypeError) as exc:
                log.warning("run %s has unreadable datasets: %s", request.run_id, exc)
        for run_id, name, path, typ, version, sha, size, uri, created in artifacts:
            run.artifacts.add(
                run_id=run_id, name=name, path=path, type=typ, version=version,
                sha256=sha.decode() if isinstance(sha, bytes) else sha, size=size, uri=uri, created_ms=created,
            )  # fmt: skip
        await self._fill_details(project, [run], [], [], include_config=True)
        return query_pb2.GetRunResponse(run=run)

    # ------------------------------------------------------------ metric series

    async def GetMetricSeries(self, request, context):
        project = self._may_read(context, request.project)
        run_ids = list(dict.fromkeys(request.run_ids))
        keys = list(dict.fromkeys(request.keys))
        if not run_ids or not keys:
            raise InvalidArgument("run_ids and keys are required")
        if len(run_ids) > MAX_SERIES_RUNS:
            raise InvalidArgument(f"{len(run_ids)} run_ids is over the limit of {MAX_SERIES_RUNS} per call")
        if len(keys) > MAX_SERIES_KEYS:
            raise InvalidArgument(f"{len(keys)} keys is over the limit of {MAX_SERIES_KEYS} per call")
        max_points = request.max_points or DEFAULT_MAX_POINTS
        if max_points > MAX_POINTS_PER_SERIES:
            raise InvalidArgument(f"max_points {max_points} is over the limit of {MAX_POINTS_PER_SERIES}")
        if max_points < 2:
            raise InvalidArgument("max_points must be at least 2")
        mode = {
            query_pb2.DOWNSAMPLING_UNSPECIFIED: "minmax",
            query_pb2.DOWNSAMPLING_MINMAX: "minmax",
            query_pb2.DOWNSAMPLING_LTTB: "lttb",
            query_pb2.DOWNSAMPLING_NONE: "none",
        }.get(request.downsampling)
        axis = _AXES.get(request.x_axis)
        if mode is None or axis is None:
            raise InvalidArgument("unknown downsampling or x_axis value")
        zoom = request.has_range
        if zoom and not (
            math.isfinite(request.x_min) and math.isfinite(request.x_max) and request.x_min <= request.x_max
        ):
            raise InvalidArgument("x_min and x_max must be finite numbers with x_min <= x_max")
        base: dict[str, Any] = {
            "project": project,
            "kind": _kind(request.kind),
            "runs": run_ids,
            "keys": keys,
        }
        all_ranks = request.all_ranks
        if not all_ranks:
            base["rank"] = max(request.rank, 0)

        bounds = await self._rows(q.bounds_sql(self.db, all_ranks), base)
        run_pos = {r: i for i, r in enumerate(run_ids)}
        key_pos = {k: i for i, k in enumerate(keys)}
        bounds.sort(key=lambda r: (run_pos[r[0]], key_pos[r[1]], r[2]))
        if not bounds:
            return query_pb2.GetMetricSeriesResponse()
        # per run: the first point's time over the requested series (relative-time origin)
        run_t0: dict[str, int] = {}
        for run_id, _, _, _, _, t0, _, _ in bounds:
            run_t0[run_id] = min(run_t0.get(run_id, t0), t0)

        raw, minmax, rollup = [], [], []  # (series number, x0, bucket width)
        for i, (run_id, _, _, s0, s1, t0, t1, n) in enumerate(bounds):
            full = {
                "step": (s0, s1),
                "time": (t0, t1),
                "relative": (t0 - run_t0[run_id], t1 - run_t0[run_id]),
            }[axis]
            lo, hi = full
            fraction = 1.0
            if zoom:
                lo, hi = max(lo, request.x_min), min(hi, request.x_max)
                fraction = max(hi - lo, 0) / max(full[1] - full[0], 1)
                n = int(n * fraction) + 1
            if mode == "none" or n <= max_points:
                raw.append((i, lo, 1.0))
                continue
            # LTTB picks from a MINMAX pre-aggregation of ~2 candidates per output point
            buckets = max_points // 2 if mode == "minmax" else max_points
            width = max((hi - lo + 1) / buckets, 1e-9)
            # a rollup row covers 32 steps: use them while each bucket still spans a few rows
            rollup_rows = min(n, (s1 - s0 + 1) * fraction / q.ROLLUP_WIDTH)
            needed = 2 * buckets if mode == "minmax" else buckets
            (rollup if rollup_rows >= needed else minmax).append((i, lo, width))
        if mode == "none":
            estimated = sum(b[7] for b in bounds)
            if estimated > MAX_RAW_POINTS_TOTAL:
                raise ResourceExhausted(
                    f"{estimated} points requested without downsampling (limit {MAX_RAW_POINTS_TOTAL}); "
                    "use MINMAX or LTTB downsampling, a zoom range, or GetHistory"
                )

        sids = [q.series_id(r[0], r[1], r[2]) for r in bounds]
        offs = [run_t0[r[0]] for r in bounds] if axis == "relative" else None

        def params_for(group: list[tuple[int, float, float]]) -> dict[str, Any]:
            x0s = [0.0] * len(bounds)
            ws = [1.0] * len(bounds)
            for i, lo, w in group:
                x0s[i], ws[i] = float(lo), float(w)
            chosen = {i for i, _, _ in group}
            p = dict(base)
            p["runs"] = sorted({bounds[i][0] for i in chosen})
            p["keys"] = sorted({bounds[i][1] for i in chosen})
            p.update(
                sids=[s if j in chosen else "" for j, s in enumerate(sids)],
                idx=list(range(1, len(bounds) + 1)),
                x0s=x0s,
                ws=ws,
            )
            if offs is not None:
                p["offs"] = offs
            if zoom:
                p["x_min"], p["x_max"] = float(request.x_min), float(request.x_max)
            return p

        jobs = []
        if raw:
            jobs.append(("raw", self._np(q.raw_points_sql(self.db, axis, all_ranks, zoom), params_for(raw))))
        if minmax:
            jobs.append(
                ("mm", self._np(q.minmax_sql(self.db, axis, False, all_ranks, zoom), params_for(minmax)))
            )
        if rollup:
            jobs.append(
                ("mm", self._np(q.minmax_sql(self.db, axis, True, all_ranks, zoom), params_for(rollup)))
            )
        results = await asyncio.gather(*(job for _, job in jobs))

        n = len(bounds)
        xs: list[np.ndarray] = [np.empty(0)] * n
        ys: list[np.ndarray] = [np.empty(0)] * n
        for (what, _), cols in zip(jobs, results, strict=True):
            if what == "raw":
                si, x, y = cols
                order = np.argsort(si, kind="stable")
                si, x, y = si[order], x[order], y[order]
                cuts = np.searchsorted(si, np.arange(1, n + 2))
                for j in range(n):
                    if cuts[j + 1] > cuts[j]:
                        xs[j], ys[j] = x[cuts[j] : cuts[j + 1]], y[cuts[j] : cuts[j + 1]]
            else:
                si, b, xl, yl, xh, yh = cols
                for j, (sx, sy) in enumerate(minmax_series(si.astype(np.int64) - 1, b, xl, yl, xh, yh, n)):
                    if len(sx):
                        xs[j], ys[j] = sx, sy
        if mode == "lttb":
            reduced = lttb_many(list(zip(xs, ys, strict=True)), max(max_points, 3))
            xs = [r[0] for r in reduced]
            ys = [r[1] for r in reduced]
        series = [
            query_pb2.Series(
                run_id=r[0], key=r[1], rank=r[2], x=_f64(xs[j]), y=_f64(ys[j]), total_points=r[7]
            )
            for j, r in enumerate(bounds)
        ]
        return query_pb2.GetMetricSeriesResponse(series=series)

    # ------------------------------------------------------------ history and artifacts

    async def GetHistory(self, request, context) -> AsyncIterator[query_pb2.GetHistoryResponse]:
        project = await self._history_project(context, request.project, request.run_id)
        page = request.page_size or DEFAULT_HISTORY_PAGE
        if page > MAX_HISTORY_PAGE:
            raise InvalidArgument(f"page_size {page} is over the limit of {MAX_HISTORY_PAGE}")
        params: dict[str, Any] = {"project": project, "run": request.run_id, "kind": _kind(request.kind)}
        key_cond = ""
        if request.keys:
            key_cond = " AND key IN {keys:Array(String)}"
            params["keys"] = list(dict.fromkeys(request.keys))
        key_rows = await self._rows(
            f"SELECT DISTINCT toString(key) AS k FROM {self.db}.metric_summaries WHERE project = {{project:String}} "
            f"AND run_id = {{run:String}} AND kind = {{kind:String}}{key_cond} ORDER BY k",
            params,
        )
        keys = [r[0] for r in key_rows]
        if len(keys) > 65_535:
            raise ResourceExhausted("run has more than 65,535 keys; ask for some keys")
        if not keys:
            return
        sql = (
            f"SELECT toUInt16(indexOf({{keys:Array(String)}}, key) - 1) AS ki, rank, step, value, time_ms "
            f"FROM {self.db}.metrics FINAL WHERE project = {{project:String}} AND run_id = {{run:String}} "
            f"AND kind = {{kind:String}} AND key IN {{keys:Array(String)}} "
            f"AND (key, rank, step) > ({{after_key:String}}, {{after_rank:Int32}}, {{after_step:Int64}}) "
            f"ORDER BY key, rank, step LIMIT {{page:UInt64}}"
        )
        after = ("", -1, -(2**63))
        while True:
            p = dict(
                params, keys=keys, after_key=after[0], after_rank=after[1], after_step=after[2], page=page
            )
            ki, rank, step, value, time_ms = await self._np(sql, p)
            if len(ki) == 0:
                return
            yield query_pb2.GetHistoryResponse(
                keys=keys,
                key_index=np.ascontiguousarray(ki, dtype="<u2").tobytes(),
                steps=np.ascontiguousarray(step, dtype="<i8").tobytes(),
                values=_f64(value),
                times_ms=np.ascontiguousarray(time_ms, dtype="<i8").tobytes(),
                ranks=np.ascontiguousarray(rank, dtype="<u2").tobytes(),
            )
            if len(ki) < page:
                return
            after = (keys[int(ki[-1])], int(rank[-1]), int(step[-1]))

    async def _history_project(self, context, project: str, run_id: str) -> str:
        """The run's project; found from the run id when the request leaves it empty and the id is
        unique across projects."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        if project:
            project = self._may_read(context, project)
            await self._require_run(project, run_id)
            return project
        rows = await self._rows(
            f"SELECT DISTINCT project FROM {self.db}.runs WHERE run_id = {{run:String}}", {"run": run_id}
        )
        if not rows:
            raise NotFound(f"run {run_id!r} not found")
        if len(rows) > 1:
            raise InvalidArgument(f"run id {run_id!r} exists in several projects; give the project")
        return self._may_read(context, rows[0][0])

    async def DownloadArtifact(self, request, context):
        project = self._may_read(context, request.project)
        sha = request.sha256.lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise InvalidArgument("sha256 must be 64 hex digits")
        if not request.run_id:
            raise InvalidArgument("run_id is required")
        rows = await self._rows(
            f"SELECT count() FROM {self.db}.artifacts WHERE project = {{project:String}} "
            f"AND run_id = {{run:String}} AND sha256 = {{sha:String}}",
            {"project": project, "run": request.run_id, "sha": sha},
        )
        if not rows or rows[0][0] == 0:
            raise NotFound(f"no artifact with sha256 {sha} in run {request.run_id!r} of project {project!r}")
        if self.artifacts is None:
            raise NotFound("this server has no artifact store")
        chunks = await asyncio.to_thread(lambda: iter(self.artifacts.open(sha)))
        while True:
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                return
            yield query_pb2.DownloadArtifactResponse(chunk=chunk)


def _encode_page_token(offset: int, fingerprint: str) -> str:
    raw = json.dumps({"o": offset, "f": fingerprint}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_page_token(token: str, fingerprint: str) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        offset = int(data["o"])
        same = data["f"] == fingerprint
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument("page_token is not one this server issued; start without it") from None
    if not same:
        raise InvalidArgument(
            "page_token belongs to a different project, filter or order_by; start without it"
        )
    if offset < 0 or offset > 10_000_000:
        raise InvalidArgument("page_token is out of range; start without it")
    return offset


def add_to_server(servicer: QueryServicer, server: Any) -> None:
    query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server)
