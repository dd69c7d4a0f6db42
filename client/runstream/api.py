"""The read API: projects, runs, histories and series from the query service, as pandas
DataFrames and plain dicts.

    api = runstream.Api()                      # $RUNSTREAM_ENDPOINT, else 127.0.0.1:7777
    df = api.runs("mnist", filter="params.lr > 0.01 and metrics.val_acc > 0.9", order_by="metrics.val_acc DESC")
    hist = api.history(df.run_id[0], keys=["loss"], project="mnist")
    api.export_runs("mnist", "runs.parquet", filter='datasets.mnist = "v2"')   # or .csv

Api is the QueryClient (query_client.py: the connection and one method per RPC, returning wire
messages: list_projects, search_runs, get_run, keys, series_arrays, history_pages,
download_artifact) plus the DataFrame methods here, each a thin wrapper on those calls.

pandas is optional for the bare SDK install; it is imported when a DataFrame is built.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from typing import Any

from runstream.console_client import ConsoleCalls
from runstream.errors import RunstreamError
from runstream.media_client import MediaCalls
from runstream.query_client import QueryClient, SeriesArrays, require_numpy, value_of
from runstream.registry_client import RegistryCalls
from runstream.saved_views_client import SavedViewCalls
from runstream.states import state_name
from runstream.v1 import types_pb2
from runstream.workflow_client import WorkflowCalls


def _pandas():
    try:
        import pandas
    except ImportError:
        raise RunstreamError(
            "runstream.Api returns pandas DataFrames: pip install pandas (or runstream[sdk-extras])"
        ) from None
    return pandas


class Api(MediaCalls, ConsoleCalls, SavedViewCalls, WorkflowCalls, RegistryCalls, QueryClient):
    """A connection to the query service (see QueryClient for the arguments and the calls) that
    also answers in DataFrames. Use as a context manager or call close()."""

    def projects(self):
        """DataFrame(name, run_count, last_activity)."""
        pd = _pandas()
        projects = self.list_projects()
        return pd.DataFrame(
            {
                "name": [p.name for p in projects],
                "run_count": [p.run_count for p in projects],
                "last_activity": pd.to_datetime([p.last_activity_ms for p in projects], unit="ms", utc=True),
            }
        )

    def iter_runs(
        self,
        project: str,
        filter: str | None = None,
        order_by: str | Iterable[str] | None = None,
        per_page: int = 1000,
        limit: int | None = None,
        include_config: bool = True,
    ) -> Iterator[types_pb2.Run]:
        """Run messages page by page (see `runs` for the arguments)."""
        token, seen = "", 0
        while True:
            size = per_page if limit is None else max(1, min(per_page, limit - seen))
            resp = self.search_runs(
                project, filter=filter, order_by=order_by, page_size=size, page_token=token,
                include_config=include_config,
            )  # fmt: skip
            for run in resp.runs:
                yield run
                seen += 1
                if limit is not None and seen >= limit:
                    return
            token = resp.next_page_token
            if not token:
                return

    def runs(
        self,
        project: str,
        filter: str | None = None,
        order_by: str | Iterable[str] | None = None,
        per_page: int = 1000,
        limit: int | None = None,
    ):
        """One row per run: run_id, name, state, group, job_type, user, host, start, end, git_commit,
        notes; MLflow's names for the same values: status (the state in capitals: FINISHED, ...),
        start_time, end_time, params.<key> (= config.<key>); then config.<key>, datasets.<name>
        (the version the run used), metrics.<key> (last value), summary.<key>, tags.<key>.
        `filter` uses the filter language (`params.lr > 0.01 and tags.dataset = "v2"`; MLflow's
        spellings such as `attributes.status = 'FINISHED'` work too); `order_by` is a field or a
        list of fields, each "-field" or "field DESC"/"field ASC", several may be comma-separated
        (default: newest first)."""
        pd = _pandas()
        np = require_numpy()
        pages = _PagedColumns(np)
        token = ""
        while True:
            size = per_page if limit is None else max(1, min(per_page, limit - pages.n))
            resp = self.search_runs(
                project, filter=filter, order_by=order_by, page_size=size, page_token=token,
                include_config=True, columnar=True,
            )  # fmt: skip
            if resp.HasField("table"):  # the server's columns (query.proto RunsTable)
                pages.add_table(resp.table)
            else:  # an older server, or runs whose summaries the server read from SQL
                pages.add_runs(resp.runs)
            token = resp.next_page_token
            if not token or (limit is not None and pages.n >= limit):
                return pages.frame(pd)

    def export_runs(
        self,
        project: str,
        path: str | os.PathLike,
        format: str | None = None,
        filter: str | None = None,
        order_by: str | Iterable[str] | None = None,
        limit: int | None = None,
        per_page: int = 1000,
    ) -> int:
        """Writes the runs table (the frame `runs` returns, same arguments) to a Parquet or CSV
        file and returns the number of runs written. `format` is "parquet" or "csv", by default
        from the file's suffix (.parquet, .pq, .csv). Parquet needs pyarrow (runstream[parquet]);
        a column mixing kinds of values (numbers and text, lists) is written as JSON text."""
        from runstream import runs_export

        fmt = runs_export.export_format(path, format)
        frame = self.runs(project, filter=filter, order_by=order_by, per_page=per_page, limit=limit)
        runs_export.write(frame, path, fmt)
        return len(frame)

    def run(self, project: str, run_id: str) -> dict[str, Any]:
        """Everything about one run as a dict: the columns, config, summary, tags, metric
        summaries ({key: {last, min, max, count, last_step}}), context, datasets, artifacts."""
        from google.protobuf import json_format

        run = self.get_run(project, run_id)
        return {
            "run_id": run.run_id,
            "project": run.project,
            "name": run.name,
            "group": run.group,
            "job_type": run.job_type,
            "state": state_name(run.state),
            "start_ms": run.start_ms,
            "end_ms": run.end_ms,
            "heartbeat_ms": run.heartbeat_ms,
            "user": run.user,
            "host": run.host,
            "git_commit": run.git_commit,
            "git_dirty": run.git_dirty,
            "notes": run.notes,
            "tags": dict(run.tags),
            "config": {k: value_of(v) for k, v in run.config.items()},
            "summary": {k: value_of(v) for k, v in run.summary.items()},
            "metrics": {
                m.key: {
                    "last": m.last,
                    "min": m.min,
                    "max": m.max,
                    "count": m.count,
                    "last_step": m.last_step,
                }
                for m in run.metrics
            },
            "context": json_format.MessageToDict(run.context, preserving_proto_field_name=True),
            "datasets": [{"name": d.name, "version": d.version, "uri": d.uri} for d in run.datasets],
            "artifacts": [
                json_format.MessageToDict(
                    a, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
                )
                for a in run.artifacts
            ],
        }

    def history(
        self, run_id: str, keys: Iterable[str] | None = None, project: str | None = None, kind: str = "user"
    ):
        """Every point of a run: DataFrame(step, key, value, rank, time) with time in UTC.
        `project` may be left out when the run id is unique on the server."""
        pd = _pandas()
        np = require_numpy()
        pages = list(self.history_pages(run_id, keys, project, kind))
        if len(pages) == 1:  # the usual case: no concatenation
            part = pages[0]
            key = np.asarray(part.keys, dtype=object)[np.frombuffer(part.key_index, "<u2")]
            step, value = np.frombuffer(part.steps, "<i8"), np.frombuffer(part.values, "<f8")
            rank, time_ms = np.frombuffer(part.ranks, "<u2"), np.frombuffer(part.times_ms, "<i8")
        else:
            cat = np.concatenate
            key = cat(
                [np.asarray(p.keys, dtype=object)[np.frombuffer(p.key_index, "<u2")] for p in pages]
                or [np.empty(0, object)]
            )
            step = cat([np.frombuffer(p.steps, "<i8") for p in pages] or [np.empty(0, "<i8")])
            value = cat([np.frombuffer(p.values, "<f8") for p in pages] or [np.empty(0, "<f8")])
            rank = cat([np.frombuffer(p.ranks, "<u2") for p in pages] or [np.empty(0, "<u2")])
            time_ms = cat([np.frombuffer(p.times_ms, "<i8") for p in pages] or [np.empty(0, "<i8")])
        time = _utc_index(pd, time_ms)  # an Index: a column as is, no alignment
        return _frame(pd, {"step": step, "key": key, "value": value, "rank": rank, "time": time})

    def series(
        self,
        project: str,
        run_ids: Iterable[str],
        keys: Iterable[str],
        max_points: int = 1000,
        downsampling: str = "minmax",
        x_axis: str = "step",
        kind: str = "user",
        all_ranks: bool = False,
        rank: int = 0,
        x_range: tuple[float, float] | None = None,
    ):
        """Downsampled series of many runs and keys: DataFrame(run_id, key, rank, x, y), long format
        (the arguments are those of `series_arrays`)."""
        pd = _pandas()
        arrays = self.series_arrays(
            project, run_ids, keys, max_points, downsampling, x_axis, kind, all_ranks, rank, x_range
        )
        if not arrays:
            return pd.DataFrame({"run_id": [], "key": [], "rank": [], "x": [], "y": []})
        np = require_numpy()
        # one frame from concatenated columns: the frame of one frame per series joined by
        # pd.concat (dtypes included: text columns get the dtype "str" as a text scalar does)
        sizes = [len(s.x) for s in arrays]
        return pd.DataFrame(
            {
                "run_id": pd.Series(
                    np.repeat(np.array([s.run_id for s in arrays], dtype=object), sizes), dtype="str"
                ),
                "key": pd.Series(
                    np.repeat(np.array([s.key for s in arrays], dtype=object), sizes), dtype="str"
                ),
                "rank": np.repeat(np.array([s.rank for s in arrays], dtype=np.int64), sizes),
                "x": np.concatenate([s.x for s in arrays]),
                "y": np.concatenate([s.y for s in arrays]),
            }
        )


def _frame(pd, columns: dict):
    """pd.DataFrame(columns) at about 60 % of its cost, the same frame (dtypes, inference, copies):
    both end in pandas' arrays_to_mgr; DataFrame._from_arrays skips the dict handling on the way.
    It is private, so a pandas without it gets the public constructor. For the small frames of a
    history loop, where the constructor measured ~0.5 ms of a ~1.5 ms Api.history call."""
    from_arrays = getattr(pd.DataFrame, "_from_arrays", None)
    if from_arrays is None:
        return pd.DataFrame(columns)
    names = tuple(columns)
    labels = _LABELS.get(names)
    if labels is None:  # an Index of the names, built once (its labels' dtype inference costs too)
        labels = _LABELS[names] = pd.Index(list(names))
    n = len(columns[names[0]])
    return from_arrays(list(columns.values()), columns=labels, index=pd.RangeIndex(n))


_LABELS: dict[tuple[str, ...], object] = {}


_TIME_UNITS: dict[str, int] = {"s": 1, "ms": 1, "us": 1_000, "ns": 1_000_000}
_INT64_MAX = 2**63 - 1
_time_unit: str | None = None


def _utc_index(pd, time_ms):
    """pd.to_datetime(time_ms, unit="ms", utc=True), same dtype, at a quarter of the cost: a view of
    the int64 array as datetime64 plus a UTC label (to_datetime's unit parsing and checks cost
    ~100 us per call, a twentieth of a whole Api.history call, the W5 loop's unit of work)."""
    global _time_unit
    if _time_unit is None:  # the resolution this pandas gives unit="ms" input (us on 3.x, ns on 2.x)
        _time_unit = pd.to_datetime([0], unit="ms", utc=True).dtype.unit
        if _time_unit not in _TIME_UNITS or _time_unit == "s":
            _time_unit = "ms"
    factor = _TIME_UNITS[_time_unit]
    if factor != 1 and len(time_ms):
        bound = _INT64_MAX // factor
        if time_ms.max() > bound or time_ms.min() < -bound:  # would wrap around in this unit:
            return pd.to_datetime(time_ms, unit="ms", utc=True)  # pandas' own answer (OutOfBounds)
        time_ms = time_ms * factor
    return pd.DatetimeIndex(time_ms.view(f"M8[{_time_unit}]")).tz_localize("UTC")


_BASE_COLUMNS = (
    "run_id", "name", "state", "group", "job_type", "user", "host", "start", "end", "git_commit", "notes",
)  # fmt: skip


class _RunColumns:
    """The runs table built column by column (one list per column, no dict per row): the same
    frame as DataFrame.from_records([run_record(run), ...]) with the base columns first and the
    others sorted, at a fraction of the cost for thousands of runs (the loops are inlined: this
    is the client's hot path for a large runs table)."""

    def __init__(self):
        self.n = 0
        self.base: dict[str, list] = {c: [] for c in _BASE_COLUMNS}
        self.extra: dict[str, list] = {}  # column name -> values
        # per prefix: key -> its column (the same list as in `extra`)
        self._by_prefix: dict[str, dict[str, list]] = {
            p: {} for p in ("config.", "summary.", "metrics.", "tags.", "datasets.")
        }

    def _column(self, prefix: str, key: str) -> list:
        col = self.extra[prefix + key] = []
        self._by_prefix[prefix][key] = col
        return col

    def add(self, run: types_pb2.Run) -> None:
        n = self.n
        b = self.base
        b["run_id"].append(run.run_id)
        b["name"].append(run.name)
        b["state"].append(state_name(run.state))
        b["group"].append(run.group)
        b["job_type"].append(run.job_type)
        b["user"].append(run.user)
        b["host"].append(run.host)
        b["start"].append(run.start_ms)
        b["end"].append(run.end_ms or None)
        b["git_commit"].append(run.git_commit)
        b["notes"].append(run.notes)
        nan = math.nan
        for prefix, values in (("config.", run.config), ("summary.", run.summary)):
            cols = self._by_prefix[prefix]
            for k in values:
                v = values[k]
                kind = v.WhichOneof("kind")
                if kind == "number":
                    value = v.number
                elif kind == "json" or not kind:
                    value = value_of(v)
                else:
                    value = getattr(v, kind)
                col = cols.get(k) or self._column(prefix, k)
                if len(col) != n:
                    col.extend([nan] * (n - len(col)))  # rows without this field: NaN, as from_records
                col.append(value)
        cols = self._by_prefix["metrics."]
        for m in run.metrics:
            k = m.key
            col = cols.get(k) or self._column("metrics.", k)
            if len(col) != n:
                col.extend([nan] * (n - len(col)))
            col.append(m.last)
        tags = run.tags
        if tags:
            cols = self._by_prefix["tags."]
            for k in tags:
                col = cols.get(k) or self._column("tags.", k)
                if len(col) != n:
                    col.extend([nan] * (n - len(col)))
                col.append(tags[k])
        if run.datasets:  # datasets.<name>: the version of the run's first reference to it
            cols = self._by_prefix["datasets."]
            for d in run.datasets:
                k = d.name
                col = cols.get(k) if k else None
                if col is None and k:
                    col = self._column("datasets.", k)
                if col is None or len(col) > n:
                    continue  # nameless, or this run's later reference to the dataset
                if len(col) != n:
                    col.extend([nan] * (n - len(col)))
                col.append(d.version)
        self.n = n + 1

    def frame(self, pd):
        if not self.n:
            return _runs_frame(pd, None)
        data: dict[str, Any] = dict(self.base)
        data["start"] = pd.to_datetime(pd.Series(data["start"]), unit="ms", utc=True)
        data["end"] = pd.to_datetime(pd.Series(data["end"], dtype="float64"), unit="ms", utc=True)
        for name in sorted(self.extra):
            col = self.extra[name]
            if len(col) < self.n:
                col.extend([math.nan] * (self.n - len(col)))
            data[name] = col
        return _runs_frame(pd, data)


class _PagedColumns:
    """The runs table from pages that come as columns (a RunsTable reply) or as Run messages
    (turned into columns by _RunColumns), joined in `frame` into the frame _RunColumns builds for
    the same runs: numeric columns as float64 arrays (what pandas makes of a list of floats and
    NaN), every other column as the list of Python values the row-wise path gives pandas, so both
    infer the same dtypes. tests/integration/test_query_cache.py compares the two."""

    def __init__(self, np):
        self.np = np
        self.n = 0
        self.base: dict[str, list] = {c: [] for c in _BASE_COLUMNS}  # column -> pieces, in row order
        self.extra: dict[str, list[tuple[int, Any]]] = {}  # column -> (first row, float64 array or list)

    def add_runs(self, runs) -> None:
        page = _RunColumns()
        for run in runs:
            page.add(run)
        if not page.n:
            return
        for name, values in page.base.items():
            self.base[name].append(values)
        for name, values in page.extra.items():
            values.extend([math.nan] * (page.n - len(values)))
            self.extra.setdefault(name, []).append((self.n, values))
        self.n += page.n

    def add_table(self, table) -> None:
        np, n = self.np, table.count
        if not n:
            return
        b = self.base
        for column, field in _TABLE_TEXT:
            b[column].append(list(getattr(table, field)))
        b["state"].append(_state_table(np)[np.frombuffer(table.states, np.uint8)].tolist())
        b["start"].append(np.frombuffer(table.start_ms, "<i8"))
        end = np.frombuffer(table.end_ms, "<i8")
        b["end"].append(np.where(end == 0, np.nan, end.astype(np.float64)))
        for col in table.values:
            self.extra.setdefault(col.name, []).append((self.n, _cells(np, col)))
        for key, last in zip(table.metric_keys, table.metric_last, strict=True):
            self.extra.setdefault("metrics." + key, []).append((self.n, np.frombuffer(last, "<f8")))
        self.n += n

    def frame(self, pd):
        np, n = self.np, self.n
        if not n:
            return _runs_frame(pd, None)
        data: dict[str, Any] = {}
        for name, pieces in self.base.items():
            if name in ("start", "end"):
                values = np.concatenate([np.asarray(p, dtype=np.int64 if name == "start" else np.float64)
                                         for p in pieces])  # fmt: skip
                data[name] = pd.to_datetime(pd.Series(values), unit="ms", utc=True)
            else:
                data[name] = pieces[0] if len(pieces) == 1 else [v for p in pieces for v in p]
        for name in sorted(self.extra):
            pieces = self.extra[name]
            if all(isinstance(v, np.ndarray) for _, v in pieces):
                if len(pieces) == 1 and len(pieces[0][1]) == n:
                    column = pieces[0][1]
                else:
                    column = np.full(n, np.nan)
                    for at, v in pieces:
                        column[at : at + len(v)] = v
            else:
                column = [math.nan] * n
                for at, v in pieces:
                    column[at : at + len(v)] = v.tolist() if isinstance(v, np.ndarray) else v
            data[name] = column
        return _runs_frame(pd, data)


_MLFLOW_COLUMNS = ("status", "start_time", "end_time")


def _runs_frame(pd, data: dict[str, Any] | None):
    """The runs table from its columns (the base ones, then the others sorted by name; None: no
    runs), with MLflow's names added for the same values: status, start_time, end_time after the
    base columns, params.<key> beside config.<key>. One DataFrame built from the columns in their
    final order (the aliases are the same column objects), not a frame widened and reordered."""
    if data is None:
        return pd.DataFrame.from_records([], columns=[*_BASE_COLUMNS, *_MLFLOW_COLUMNS])
    columns: dict[str, Any] = {c: data[c] for c in _BASE_COLUMNS}
    columns["status"] = [s.upper() for s in data["state"]]
    columns["start_time"] = data["start"]
    columns["end_time"] = data["end"]
    rest = {c: v for c, v in data.items() if c not in columns}
    rest.update({"params." + c[len("config.") :]: v for c, v in rest.items() if c.startswith("config.")})
    for c in sorted(rest):
        columns[c] = rest[c]
    return pd.DataFrame(columns)


_TABLE_TEXT = (
    ("run_id", "run_ids"), ("name", "names"), ("group", "groups"), ("job_type", "job_types"),
    ("user", "users"), ("host", "hosts"), ("git_commit", "git_commits"), ("notes", "notes"),
)  # fmt: skip
_state_names: list = []


def _state_table(np):
    """state_name of every uint8 as an object array (index it with the states column)."""
    if not _state_names:
        _state_names.append(np.array([state_name(i) for i in range(256)], dtype=object))
    return _state_names[0]


def _cells(np, col):
    """A ValueColumn's cells as _RunColumns gives them: a float64 array when every cell is a
    number or absent (NaN), else the list of values (number, bool, text, decoded JSON, NaN)."""
    kinds = np.frombuffer(col.kinds, np.uint8)
    if not (kinds > 1).any():
        return np.frombuffer(col.numbers, "<f8")
    if (kinds == 3).all():
        return list(col.texts)
    texts = iter(col.texts)
    out = []
    nan = math.nan
    numbers = np.frombuffer(col.numbers, "<f8").tolist() if col.numbers else [nan] * len(kinds)
    for kind, number in zip(kinds.tolist(), numbers, strict=True):
        if kind == 1:
            out.append(number)
        elif kind == 0:
            out.append(nan)
        elif kind == 2:
            out.append(bool(number))
        elif kind == 3:
            out.append(next(texts))
        else:
            out.append(value_of(types_pb2.Value(json=next(texts))))
    return out


def run_record(run: types_pb2.Run) -> dict[str, Any]:
    """A flat dict for one DataFrame row."""
    row: dict[str, Any] = {
        "run_id": run.run_id,
        "name": run.name,
        "state": state_name(run.state),
        "group": run.group,
        "job_type": run.job_type,
        "user": run.user,
        "host": run.host,
        "start": run.start_ms,
        "end": run.end_ms or None,
        "git_commit": run.git_commit,
        "notes": run.notes,
    }
    for k, v in run.config.items():
        row[f"config.{k}"] = value_of(v)
    for k, v in run.summary.items():
        row[f"summary.{k}"] = value_of(v)
    for m in run.metrics:
        row[f"metrics.{m.key}"] = m.last
    for k, v in run.tags.items():
        row[f"tags.{k}"] = v
    for d in run.datasets:
        row.setdefault(f"datasets.{d.name}", d.version)
    return row


__all__ = ["Api", "SeriesArrays", "value_of"]
