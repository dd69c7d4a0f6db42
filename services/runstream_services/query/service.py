"""The runstream.v1 QueryService for grpc.aio: maps each request to statements (sql_runs,
sql_series) or a series plan (series.py) and the rows back to protos. ClickHouse calls are
blocking, so each runs in a worker thread (asyncio.to_thread) on a client of the read pool; errors
are raised as domain errors (errors.py) and the server's ErrorInterceptor turns them into statuses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from google.protobuf import json_format

from runstream.states import STATE_NUMBERS
from runstream.v1 import query_pb2, query_pb2_grpc, types_pb2
from runstream_services.errors import InvalidArgument, NotFound, ResourceExhausted
from runstream_services.query import cached_reads, series, sql_runs, sql_series
from runstream_services.query.console_reads import ConsoleReads
from runstream_services.query.filter import parse_filter, parse_order_by
from runstream_services.query.media_reads import MediaReads
from runstream_services.query.read_cache import Project, ReadCache
from runstream_services.query.request_fields import (
    decode_page_token,
    encode_page_token,
    metric_kind,
    project_name,
    search_fingerprint,
)
from runstream_services.query.sql import Query, checked_db
from runstream_services.storage.clickhouse import ClientPool

log = logging.getLogger("runstream.query")

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 10_000
DEFAULT_HISTORY_PAGE = 100_000
MAX_HISTORY_PAGE = 1_000_000
MAX_HISTORY_KEYS = 65_535  # key indexes travel as uint16
_MODES = {
    query_pb2.DOWNSAMPLING_UNSPECIFIED: "minmax",
    query_pb2.DOWNSAMPLING_MINMAX: "minmax",
    query_pb2.DOWNSAMPLING_LTTB: "lttb",
    query_pb2.DOWNSAMPLING_NONE: "none",
}
_AXES = {
    query_pb2.X_AXIS_UNSPECIFIED: "step",
    query_pb2.X_AXIS_STEP: "step",
    query_pb2.X_AXIS_TIME: "time",
    query_pb2.X_AXIS_RELATIVE_TIME: "relative",
}


def _f64(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


class QueryServicer(MediaReads, ConsoleReads, query_pb2_grpc.QueryServiceServicer):
    """Reads runs, params, metric summaries, metric points and artifacts of one database."""

    def __init__(
        self,
        client: Any,
        database: str,
        artifact_store: Any = None,
        settings: Any = None,
        auth: Any = None,
        readers: ClientPool | None = None,
        cache: ReadCache | None = None,
    ):
        self.client = client
        self.readers = readers  # concurrent read clients; None: every read goes through `client`
        # the held copy of read projects, kept current by this process's writer (read_cache.py);
        # None where other writers exist: every read is SQL
        self.cache = cache
        self.db = checked_db(database)
        self.artifacts = artifact_store
        self.settings = settings
        self.auth = auth  # auth.keys.ApiKeys; None: every call may read every project
        # the largest answer the server may send (its gRPC max_send_message_length)
        self._max_message_bytes = getattr(settings, "max_message_bytes", series.DEFAULT_MAX_MESSAGE_BYTES)

    def _may_read(self, context, project: str) -> str:
        """The project, after checking the caller's key may read it (PermissionDenied otherwise)."""
        project = project_name(project)
        if self.auth is not None:
            self.auth.check_context(context, project, "read")
        return project

    # ------------------------------------------------------------ running statements

    async def _rows(self, query: Query) -> list[tuple]:
        def run() -> list[tuple]:
            with self._reader() as client:
                return client.query(query.sql, parameters=query.params).result_rows

        return await asyncio.to_thread(run)

    def _reader(self):
        return self.readers.client() if self.readers is not None else contextlib.nullcontext(self.client)

    async def _np(self, query: Query) -> list[np.ndarray]:
        """Columns of a numeric result as numpy arrays."""

        def run() -> list[np.ndarray]:
            with self._reader() as client:
                table = client.query_arrow(query.sql, parameters=query.params)
            return [table.column(i).to_numpy() for i in range(table.num_columns)]

        return await asyncio.to_thread(run)

    async def _require_run(self, project: str, run_id: str) -> None:
        rows = await self._rows(sql_runs.run_count(self.db, project, run_id))
        if not rows or rows[0][0] == 0:
            raise NotFound(f"run {run_id!r} not found in project {project!r}")

    async def _held(self, project: str) -> Project | None:
        """The project's held copy (loaded on first use); None: answer from SQL."""
        if self.cache is None:
            return None
        p = self.cache.ready(project)
        if p is not None:
            return p
        try:
            return await asyncio.to_thread(self.cache.project, project)
        except Exception:
            log.exception("read cache: loading project %s failed; reading SQL", project)
            return None

    async def _add_sql_summaries(
        self, project: str, runs: list[types_pb2.Run], run_ids: list[str], metric_keys: list[str]
    ) -> None:
        """Metric summaries of `run_ids` (runs with a series too long to hold) from SQL."""
        by_id = {r.run_id: r for r in runs}
        rows = await self._rows(sql_runs.run_metric_summaries(self.db, project, run_ids, metric_keys))
        for run_id, key, last, lo, hi, count, last_step in rows:
            by_id[run_id].metrics.add(key=key, last=last, min=lo, max=hi, count=count, last_step=last_step)

    # ------------------------------------------------------------ projects and keys

    async def ListProjects(self, request, context):
        rows = await self._rows(sql_runs.projects(self.db))
        readable = set(self._readable([r[0] for r in rows], context))
        rows = [r for r in rows if r[0] in readable]
        return query_pb2.ListProjectsResponse(
            projects=[query_pb2.ProjectInfo(name=p, run_count=n, last_activity_ms=t) for p, n, t in rows]
        )

    async def ListKeys(self, request, context):
        project = self._may_read(context, request.project)
        run_ids = list(request.run_ids)
        p = await self._held(project)
        if p is not None:
            with self.cache.lock:
                user, system, config, tags = cached_reads.list_keys(p, run_ids)
            return query_pb2.ListKeysResponse(
                metric_keys=user, system_metric_keys=system, param_keys=config, tag_keys=tags
            )
        metrics, param_rows, tags = await asyncio.gather(
            self._rows(sql_runs.metric_keys(self.db, project, run_ids)),
            self._rows(sql_runs.config_keys(self.db, project, run_ids)),
            self._rows(sql_runs.tag_keys(self.db, project, run_ids)),
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
        sort_fields = parse_order_by(order_by)
        fingerprint = search_fingerprint(project, request.filter, order_by)
        offset = decode_page_token(request.page_token, fingerprint)
        node = parse_filter(request.filter)
        p = await self._held(project)
        if p is not None:
            try:
                return await self._search_held(p, request, node, sort_fields, page_size, offset, fingerprint)
            except cached_reads.Unsupported as why:
                log.debug("SearchRuns from SQL: %s", why)
        rows = await self._rows(sql_runs.search_runs(self.db, project, node, sort_fields, page_size, offset))
        # past the last match the window count has no row to ride on: count apart
        total = rows[0][-1] if rows else (await self._rows(sql_runs.count_runs(self.db, project, node)))[0][0]
        runs = [_run_from_row(project, row) for row in rows]
        for run, row in zip(runs, rows, strict=True):
            cached_reads.add_datasets(run, row[len(sql_runs.RUN_COLUMNS)])
        await self._fill_details(
            project,
            runs,
            list(request.param_keys),
            list(request.metric_keys),
            include_config=request.include_config or bool(request.param_keys),
        )
        next_offset = offset + len(rows)
        token = encode_page_token(next_offset, fingerprint) if rows and next_offset < total else ""
        return query_pb2.SearchRunsResponse(runs=runs, next_page_token=token, total=total)

    async def _search_held(self, p: Project, request, node, sort_fields, page_size, offset, fingerprint):
        include_config = request.include_config or bool(request.param_keys)
        if request.columnar and not request.param_keys and not request.metric_keys:
            with self.cache.lock:
                t, page, total = cached_reads.search_rows(p, node, sort_fields, page_size, offset)
                table = cached_reads.runs_table(p, t, page, include_config)
            if table is not None:
                next_offset = offset + len(page)
                token = (
                    encode_page_token(next_offset, fingerprint) if len(page) and next_offset < total else ""
                )
                return query_pb2.SearchRunsResponse(next_page_token=token, total=total, table=table)
        with self.cache.lock:
            entries, total = cached_reads.search(p, node, sort_fields, page_size, offset)
            wires = None
            if not request.param_keys and not request.metric_keys:
                wires = [cached_reads.run_wire(p, e, include_config) for e in entries]
        if wires is not None and None not in wires:  # each run serialized once, until it changes
            next_offset = offset + len(wires)
            token = encode_page_token(next_offset, fingerprint) if wires and next_offset < total else ""
            response = query_pb2.SearchRunsResponse(next_page_token=token, total=total)
            response.MergeFromString(cached_reads.runs_field(wires))
            return response
        with self.cache.lock:  # the same page, built field by field (key lists, or SQL summaries)
            runs = [cached_reads.run_proto(p.name, e) for e in entries]
            needs_sql = cached_reads.fill_details(
                runs, entries, list(request.param_keys), list(request.metric_keys), include_config
            )
        if needs_sql:
            await self._add_sql_summaries(p.name, runs, needs_sql, list(request.metric_keys))
        next_offset = offset + len(runs)
        token = encode_page_token(next_offset, fingerprint) if runs and next_offset < total else ""
        return query_pb2.SearchRunsResponse(runs=runs, next_page_token=token, total=total)

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
        run_ids = list(by_id)
        param_rows, metric_rows = await asyncio.gather(
            self._rows(sql_runs.run_params(self.db, project, run_ids, param_keys, include_config)),
            self._rows(sql_runs.run_metric_summaries(self.db, project, run_ids, metric_keys)),
        )
        for run_id, scope, key, kind, num, text in param_rows:
            target = by_id[run_id].config if scope == "config" else by_id[run_id].summary
            target[key].CopyFrom(cached_reads.value_proto(kind, num, text))
        for run_id, key, last, lo, hi, count, last_step in metric_rows:
            by_id[run_id].metrics.add(key=key, last=last, min=lo, max=hi, count=count, last_step=last_step)

    async def GetRun(self, request, context):
        project = self._may_read(context, request.project)
        if not request.run_id:
            raise InvalidArgument("run_id is required")
        p = await self._held(project)
        if p is not None:
            with self.cache.lock:
                got = cached_reads.get_run(p, request.run_id)
            if got is None:
                raise NotFound(f"run {request.run_id!r} not found in project {project!r}")
            run, needs_sql = got
            if needs_sql:
                await self._add_sql_summaries(project, [run], [request.run_id], [])
            return query_pb2.GetRunResponse(run=run)
        rows, artifacts = await asyncio.gather(
            self._rows(sql_runs.run(self.db, project, request.run_id)),
            self._rows(sql_runs.run_artifacts(self.db, project, request.run_id)),
        )
        if not rows:
            raise NotFound(f"run {request.run_id!r} not found in project {project!r}")
        run = _run_from_row(project, rows[0])
        context_json, datasets_json = rows[0][14], rows[0][15]
        if context_json:
            try:
                json_format.Parse(context_json, run.context, ignore_unknown_fields=True)
            except (json_format.ParseError, ValueError) as exc:
                log.warning("run %s has an unreadable context: %s", request.run_id, exc)
        cached_reads.add_datasets(run, datasets_json)
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
        spec = series.series_spec(
            run_ids=request.run_ids,
            keys=request.keys,
            rank=None if request.all_ranks else max(request.rank, 0),
            max_points=request.max_points,
            mode=_MODES.get(request.downsampling),
            axis=_AXES.get(request.x_axis),
            x_range=(request.x_min, request.x_max) if request.has_range else None,
        )
        kind = metric_kind(request.kind)
        results = None
        p = await self._held(project)
        if p is not None:  # every requested series held: no query (and no wait for inserts)
            with self.cache.lock:
                rows = cached_reads.series_bounds(p, kind, spec.run_ids, spec.keys, spec.rank)
                if rows is not None:  # rollup reads too: their rows are formed from the held points
                    plan = series.plan_series(spec, rows, max_message_bytes=self._max_message_bytes)
                    results = cached_reads.series_points(p, kind, plan)
        if results is None:
            bounds = sql_series.series_bounds(self.db, project, kind, spec.run_ids, spec.keys, spec.rank)
            plan = series.plan_series(
                spec, await self._rows(bounds), max_message_bytes=self._max_message_bytes
            )
            if plan.series:
                results = await asyncio.gather(*(self._np(q) for q in plan.queries(self.db, bounds.params)))
        if not plan.series:
            return query_pb2.GetMetricSeriesResponse()
        # keep `curves` referenced until the response is built: letting the arrays go first measured
        # ~1 ms slower per 100-series call (an allocator effect)
        curves = plan.assemble(results)
        return query_pb2.GetMetricSeriesResponse(
            series=[
                query_pb2.Series(
                    run_id=s.run_id, key=s.key, rank=s.rank, x=_f64(x), y=_f64(y), total_points=s.points
                )
                for s, (x, y) in zip(plan.series, curves, strict=True)
            ]
        )

    # ------------------------------------------------------------ history and artifacts

    async def GetHistory(self, request, context) -> AsyncIterator[query_pb2.GetHistoryResponse]:
        after = None
        while True:
            page, after = await self._read_history_page(context, request, after)
            if page is not None:
                yield page
            if after is None:
                return

    async def GetHistoryPage(self, request, context) -> query_pb2.GetHistoryPageResponse:
        cursor = request.after
        # ranks are uint16: a cursor rank above 65,535 sorts after every rank, as 65,536 does
        after = (cursor.key, min(cursor.rank, 65_536), cursor.step) if request.HasField("after") else None
        page, after = await self._read_history_page(context, request.query, after)
        return query_pb2.GetHistoryPageResponse(
            page=page,
            next=query_pb2.HistoryCursor(key=after[0], rank=after[1], step=after[2]) if after else None,
        )

    async def _read_history_page(
        self, context, request, after: tuple[str, int, int] | None
    ) -> tuple[query_pb2.GetHistoryResponse | None, tuple[str, int, int] | None]:
        """A page of the run's points after the (key, rank, step) `after` (None: from the first),
        None when there are none; with the cursor of the next page (None: this was the last).
        GetHistory's stream is these pages one after the other, each read when it is sent."""
        page = request.page_size or DEFAULT_HISTORY_PAGE
        if page > MAX_HISTORY_PAGE:
            raise InvalidArgument(f"page_size {page} is over the limit of {MAX_HISTORY_PAGE}")
        kind = metric_kind(request.kind)
        wanted = list(dict.fromkeys(request.keys))
        held: Project | None = None
        if self.cache is not None and request.run_id:
            if request.project:
                project = self._may_read(context, request.project)
            else:
                project = await self._project_of_run(context, request.run_id)
            held = await self._held(project)
        if held is not None:
            with self.cache.lock:
                entry = held.runs.get(request.run_id)
                if entry is None or entry.row is None:
                    raise NotFound(f"run {request.run_id!r} not found in project {project!r}")
                keys = cached_reads.history_keys(entry, kind, wanted)
                if keys is not None and len(keys) <= MAX_HISTORY_KEYS:
                    columns, more = cached_reads.history_slice(entry, kind, keys, after, page)
            if keys is not None:  # else a series too long to hold: its points are read below
                if len(keys) > MAX_HISTORY_KEYS:
                    raise ResourceExhausted("run has more than 65,535 keys; ask for some keys")
                if columns is None:
                    return None, None
                return _history_page(keys, *columns), _cursor(keys, columns) if more else None
        else:
            project = await self._history_project(context, request.project, request.run_id)
        key_rows = await self._rows(sql_series.history_keys(self.db, project, request.run_id, kind, wanted))
        keys = [r[0] for r in key_rows]
        if len(keys) > MAX_HISTORY_KEYS:
            raise ResourceExhausted("run has more than 65,535 keys; ask for some keys")
        if not keys:
            return None, None
        columns = await self._np(  # one point more than the page: whether another page follows
            sql_series.history_page(
                self.db, project, request.run_id, kind, keys, after or ("", -1, -(2**63)), page + 1
            )
        )
        if len(columns[0]) == 0:
            return None, None
        more = len(columns[0]) > page
        columns = [c[:page] for c in columns]
        return _history_page(keys, *columns), _cursor(keys, columns) if more else None

    async def _history_project(self, context, project: str, run_id: str) -> str:
        """The run's project; found from the run id when the request leaves it empty and the id is
        unique among the projects the caller may read. Projects it may not read are not looked at:
        a run there is answered NOT_FOUND exactly as a run that does not exist, so a key never
        learns which runs other projects hold."""
        if not run_id:
            raise InvalidArgument("run_id is required")
        if project:
            project = self._may_read(context, project)
            await self._require_run(project, run_id)
            return project
        rows = await self._rows(sql_runs.projects_of_run(self.db, run_id))
        readable = self._readable([r[0] for r in rows], context)
        if not readable:
            raise NotFound(f"run {run_id!r} not found")
        if len(readable) > 1:
            raise InvalidArgument(f"run id {run_id!r} exists in several projects; give the project")
        return readable[0]

    async def _project_of_run(self, context, run_id: str) -> str:
        """_history_project for a request without project, from the cache's run index when kept."""
        try:
            projects = self.cache.indexed_projects(run_id)
            if projects is None:
                projects = await asyncio.to_thread(self.cache.projects_of_run, run_id)
        except Exception:
            log.exception("read cache: the run index failed; reading SQL")
            projects = None
        if projects is None:
            return await self._history_project(context, "", run_id)
        readable = self._readable(projects, context)
        if not readable:
            raise NotFound(f"run {run_id!r} not found")
        if len(readable) > 1:
            raise InvalidArgument(f"run id {run_id!r} exists in several projects; give the project")
        return readable[0]

    def _readable(self, projects: list[str], context) -> list[str]:
        """The projects among `projects` the caller's key may read (all of them without auth)."""
        if self.auth is None or not self.auth.required:
            return projects
        principal = self.auth.authenticate(context.invocation_metadata())
        return [p for p in projects if principal is not None and principal.may(p, "read")]

    async def DownloadArtifact(self, request, context):
        # the project's manifest names the digest: bytes stored before keys were per project may
        # be read from their old key
        async for answer in self._download(
            request, context, "artifact", sql_runs.artifact_count, legacy=True
        ):
            yield answer

    async def _download(self, request, context, what: str, count_sql, legacy: bool = False):
        """The bytes of a digest that `count_sql(db, project, run_id, sha)` finds in the run, in
        chunks (artifacts and media items)."""
        project = self._may_read(context, request.project)
        sha = request.sha256.lower()
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise InvalidArgument("sha256 must be 64 hex digits")
        if not request.run_id:
            raise InvalidArgument("run_id is required")
        rows = await self._rows(count_sql(self.db, project, request.run_id, sha))
        if not rows or rows[0][0] == 0:
            raise NotFound(f"no {what} with sha256 {sha} in run {request.run_id!r} of project {project!r}")
        if self.artifacts is None:
            raise NotFound("this server has no artifact store")
        opened = (
            (lambda: self.artifacts.open(project, sha, legacy=True))
            if legacy
            else (lambda: self.artifacts.open(project, sha))
        )
        chunks = await asyncio.to_thread(lambda: iter(opened()))
        while True:
            chunk = await asyncio.to_thread(next, chunks, None)
            if chunk is None:
                return
            yield query_pb2.DownloadArtifactResponse(chunk=chunk)


def _cursor(keys: list[str], columns) -> tuple[str, int, int]:
    """The (key, rank, step) of a page's last point: where the next page starts."""
    ki, rank, step = columns[0], columns[1], columns[2]
    return keys[int(ki[-1])], int(rank[-1]), int(step[-1])


def _history_page(keys, ki, rank, step, value, time_ms) -> query_pb2.GetHistoryResponse:
    return query_pb2.GetHistoryResponse(
        keys=keys,
        key_index=np.ascontiguousarray(ki, dtype="<u2").tobytes(),
        steps=np.ascontiguousarray(step, dtype="<i8").tobytes(),
        values=_f64(value),
        times_ms=np.ascontiguousarray(time_ms, dtype="<i8").tobytes(),
        ranks=np.ascontiguousarray(rank, dtype="<u2").tobytes(),
    )


def _run_from_row(project: str, row: tuple) -> types_pb2.Run:
    """A Run from the first len(sql_runs.RUN_COLUMNS) columns of a run row."""
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
        state=STATE_NUMBERS.get(state, types_pb2.RUN_STATE_UNSPECIFIED),
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
