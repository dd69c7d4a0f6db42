"""The read API: runs, histories and series from the query service, as pandas DataFrames.

    api = runstream.Api()                      # $RUNSTREAM_ENDPOINT, else 127.0.0.1:7777
    df = api.runs("mnist", filter="params.lr > 0.01 and metrics.val_acc > 0.9", order_by="-metrics.val_acc")
    hist = api.history(df.run_id[0], keys=["loss"], project="mnist")

pandas is optional for the bare SDK install; it is imported when a DataFrame is built.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from typing import Any

import grpc

from runstream.errors import RunstreamError, ServerError, ServerUnavailableError
from runstream.v1 import query_pb2, query_pb2_grpc, types_pb2

DEFAULT_ENDPOINT = "127.0.0.1:7777"
_RETRIABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_STATES = {v: k.removeprefix("RUN_STATE_").lower() for k, v in types_pb2.RunState.items()}
_DOWNSAMPLING = {
    "minmax": query_pb2.DOWNSAMPLING_MINMAX,
    "lttb": query_pb2.DOWNSAMPLING_LTTB,
    "none": query_pb2.DOWNSAMPLING_NONE,
}
_X_AXES = {
    "step": query_pb2.X_AXIS_STEP,
    "time": query_pb2.X_AXIS_TIME,
    "relative_time": query_pb2.X_AXIS_RELATIVE_TIME,
}
_KINDS = {"user": types_pb2.METRIC_KIND_USER, "system": types_pb2.METRIC_KIND_SYSTEM}


def _pandas():
    try:
        import pandas
    except ImportError:
        raise RunstreamError(
            "runstream.Api returns pandas DataFrames: pip install pandas (or runstream[sdk-extras])"
        ) from None
    return pandas


def _numpy():
    try:
        import numpy
    except ImportError:
        raise RunstreamError("runstream.Api needs numpy: pip install numpy pandas") from None
    return numpy


def value_of(value: types_pb2.Value) -> Any:
    """A config/summary Value as a Python value (JSON values decoded)."""
    kind = value.WhichOneof("kind")
    if kind == "json":
        try:
            return json.loads(value.json)
        except ValueError:
            return value.json
    return getattr(value, kind) if kind else None


class Api:
    """A connection to the query service. Use as a context manager or call close()."""

    def __init__(self, endpoint: str | None = None, api_key: str | None = None, timeout_s: float = 60.0):
        self.endpoint = endpoint or os.environ.get("RUNSTREAM_ENDPOINT") or DEFAULT_ENDPOINT
        key = api_key if api_key is not None else os.environ.get("RUNSTREAM_API_KEY")
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(
            self.endpoint,
            options=[("grpc.max_receive_message_length", 256 * 1024 * 1024)],
        )
        self._stub = query_pb2_grpc.QueryServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, request, stream: bool = False):
        try:
            result = getattr(self._stub, method)(request, timeout=self.timeout_s, metadata=self._metadata)
            return list(result) if stream else result
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            if code in _RETRIABLE:
                raise ServerUnavailableError(
                    f"query service at {self.endpoint} unavailable ({code.name}): {details}", code.name
                ) from None
            raise ServerError(f"{method} failed ({code.name}): {details}", code.name) from None

    # ------------------------------------------------------------ projects and runs

    def projects(self):
        """DataFrame(name, run_count, last_activity)."""
        pd = _pandas()
        resp = self._call("ListProjects", query_pb2.ListProjectsRequest())
        return pd.DataFrame(
            {
                "name": [p.name for p in resp.projects],
                "run_count": [p.run_count for p in resp.projects],
                "last_activity": pd.to_datetime(
                    [p.last_activity_ms for p in resp.projects], unit="ms", utc=True
                ),
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
        order = [order_by] if isinstance(order_by, str) else list(order_by or [])
        token, seen = "", 0
        while True:
            size = per_page if limit is None else max(1, min(per_page, limit - seen))
            resp = self._call(
                "SearchRuns",
                query_pb2.SearchRunsRequest(
                    project=project, filter=filter or "", order_by=order, page_size=size,
                    page_token=token, include_config=include_config,
                ),
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
        notes, config.<key>, summary.<key>, metrics.<key> (last value), tags.<key>.
        `filter` uses the filter language (`params.lr > 0.01 and tags.dataset = "v2"`); `order_by`
        is a field or list of fields, "-" for descending (default: newest first)."""
        pd = _pandas()
        rows = [run_record(run) for run in self.iter_runs(project, filter, order_by, per_page, limit)]
        base = [
            "run_id",
            "name",
            "state",
            "group",
            "job_type",
            "user",
            "host",
            "start",
            "end",
            "git_commit",
            "notes",
        ]
        df = pd.DataFrame.from_records(rows, columns=None if rows else base)
        if rows:
            extra = sorted(c for c in df.columns if c not in base)
            df = df[base + [c for c in extra if c not in base]]
            for col in ("start", "end"):
                df[col] = pd.to_datetime(df[col], unit="ms", utc=True)
        return df

    def run(self, project: str, run_id: str) -> dict[str, Any]:
        """Everything about one run as a dict: the columns, config, summary, tags, metric
        summaries ({key: {last, min, max, count, last_step}}), context, datasets, artifacts."""
        run = self._call("GetRun", query_pb2.GetRunRequest(project=project, run_id=run_id)).run
        from google.protobuf import json_format

        return {
            "run_id": run.run_id,
            "project": run.project,
            "name": run.name,
            "group": run.group,
            "job_type": run.job_type,
            "state": _STATES.get(run.state, "unspecified"),
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

    # ------------------------------------------------------------ points

    def history(
        self, run_id: str, keys: Iterable[str] | None = None, project: str | None = None, kind: str = "user"
    ):
        """Every point of a run: DataFrame(step, key, value, rank, time) with time in UTC.
        `project` may be left out when the run id is unique on the server."""
        pd = _pandas()
        np = _numpy()
        request = query_pb2.GetHistoryRequest(
            project=project or "", run_id=run_id, keys=list(keys or []), kind=_kind(kind)
        )
        parts = self._call("GetHistory", request, stream=True)
        columns: dict[str, list] = {"step": [], "key": [], "value": [], "rank": [], "time": []}
        for part in parts:
            index = np.frombuffer(part.key_index, "<u2")
            columns["key"].append(np.asarray(part.keys, dtype=object)[index])
            columns["step"].append(np.frombuffer(part.steps, "<i8"))
            columns["value"].append(np.frombuffer(part.values, "<f8"))
            columns["rank"].append(np.frombuffer(part.ranks, "<u2"))
            columns["time"].append(np.frombuffer(part.times_ms, "<i8"))
        empty = {"step": "<i8", "key": object, "value": "<f8", "rank": "<u2", "time": "<i8"}
        data = {c: (np.concatenate(v) if v else np.empty(0, dtype=empty[c])) for c, v in columns.items()}
        df = pd.DataFrame(data)
        df["time"] = pd.to_datetime(df["time"], unit="ms", utc=True)
        return df

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
        """Downsampled series of many runs and keys: DataFrame(run_id, key, rank, x, y), long format.
        downsampling: minmax | lttb | none; x_axis: step | time | relative_time (ms)."""
        pd = _pandas()
        np = _numpy()
        if downsampling not in _DOWNSAMPLING:
            raise RunstreamError(f"downsampling must be one of {sorted(_DOWNSAMPLING)}, not {downsampling!r}")
        if x_axis not in _X_AXES:
            raise RunstreamError(f"x_axis must be one of {sorted(_X_AXES)}, not {x_axis!r}")
        request = query_pb2.GetMetricSeriesRequest(
            project=project, run_ids=list(run_ids), keys=list(keys), max_points=max_points,
            downsampling=_DOWNSAMPLING[downsampling], x_axis=_X_AXES[x_axis], kind=_kind(kind),
            all_ranks=all_ranks, rank=rank,
        )  # fmt: skip
        if x_range is not None:
            request.has_range = True
            request.x_min, request.x_max = float(x_range[0]), float(x_range[1])
        resp = self._call("GetMetricSeries", request)
        frames = []
        for s in resp.series:
            x = np.frombuffer(s.x, "<f8")
            frames.append(
                pd.DataFrame(
                    {"run_id": s.run_id, "key": s.key, "rank": s.rank, "x": x, "y": np.frombuffer(s.y, "<f8")}
                )
            )
        if not frames:
            return pd.DataFrame({"run_id": [], "key": [], "rank": [], "x": [], "y": []})
        return pd.concat(frames, ignore_index=True)

    def keys(self, project: str, run_ids: Iterable[str] | None = None) -> dict[str, list[str]]:
        """{"metrics": [...], "params": [...], "tags": [...], "system_metrics": [...]}."""
        resp = self._call("ListKeys", query_pb2.ListKeysRequest(project=project, run_ids=list(run_ids or [])))
        return {
            "metrics": list(resp.metric_keys),
            "params": list(resp.param_keys),
            "tags": list(resp.tag_keys),
            "system_metrics": list(resp.system_metric_keys),
        }


def _kind(kind: str) -> int:
    if kind not in _KINDS:
        raise RunstreamError(f"kind must be 'user' or 'system', not {kind!r}")
    return _KINDS[kind]


def run_record(run: types_pb2.Run) -> dict[str, Any]:
    """A flat dict for one DataFrame row."""
    row: dict[str, Any] = {
        "run_id": run.run_id,
        "name": run.name,
        "state": _STATES.get(run.state, "unspecified"),
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
    return row


__all__ = ["Api"]
