"""The dashboard's only data access: runstream.v1 QueryService calls turned into DataFrames and
small dataclasses. Pages never touch gRPC; they call these loaders, which Streamlit caches by
their arguments (short TTLs, so live runs refresh).

The server is reached at $RUNSTREAM_ENDPOINT (default 127.0.0.1:7777); $RUNSTREAM_API_KEY, when
set, is sent as `authorization: Bearer <key>`."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import pandas as pd
import streamlit as st

from runstream.v1 import query_pb2, query_pb2_grpc, types_pb2

DEFAULT_ENDPOINT = "127.0.0.1:7777"
RPC_TIMEOUT_S = 15.0
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

STATES = {
    types_pb2.RUN_STATE_UNSPECIFIED: "unknown",
    types_pb2.RUN_STATE_RUNNING: "running",
    types_pb2.RUN_STATE_FINISHED: "finished",
    types_pb2.RUN_STATE_FAILED: "failed",
    types_pb2.RUN_STATE_CRASHED: "crashed",
    types_pb2.RUN_STATE_KILLED: "killed",
}
X_AXES = {
    "step": query_pb2.X_AXIS_STEP,
    "time": query_pb2.X_AXIS_TIME,
    "relative": query_pb2.X_AXIS_RELATIVE_TIME,
}
RUN_COLUMNS = [
    "run_id",
    "name",
    "state",
    "group",
    "job_type",
    "user",
    "host",
    "start",
    "end",
    "duration_s",
    "tags",
]


class QueryError(Exception):
    """Raised when the query service refuses a request or cannot be reached. `message` is the
    server's own text (e.g. where a filter is malformed), fit to show next to the input."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def unreachable(self) -> bool:
        return self.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def endpoint() -> str:
    return os.environ.get("RUNSTREAM_ENDPOINT") or DEFAULT_ENDPOINT


@st.cache_resource(show_spinner=False)
def _channel(target: str) -> grpc.Channel:
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ]
    return grpc.insecure_channel(target, options=options)


def _stub() -> query_pb2_grpc.QueryServiceStub:
    return query_pb2_grpc.QueryServiceStub(_channel(endpoint()))


def _metadata() -> list[tuple[str, str]]:
    key = os.environ.get("RUNSTREAM_API_KEY")
    return [("authorization", f"Bearer {key}")] if key else []


def _call(method, request, timeout: float = RPC_TIMEOUT_S):
    try:
        return method(request, timeout=timeout, metadata=_metadata())
    except grpc.RpcError as exc:
        raise _query_error(exc) from None


def _query_error(exc: grpc.RpcError) -> QueryError:
    code = exc.code().name if exc.code() else "UNKNOWN"
    details = exc.details() or str(exc)
    if code == "UNAVAILABLE":
        details = f"cannot reach the Runstream server at {endpoint()} ({details})"
    return QueryError(details, code)


# ---------------------------------------------------------------- value decoding


def value_to_python(value: types_pb2.Value) -> Any:
    """A wire Value as a Python scalar; JSON values stay their JSON text so tables can show them."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    v = getattr(value, kind)
    if kind == "number" and float(v).is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _ms_to_datetime(ms: int) -> pd.Timestamp | None:
    return pd.Timestamp(ms, unit="ms") if ms else None


def decode_f64(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f8")


def _run_row(run: types_pb2.Run) -> dict[str, Any]:
    end_ms = run.end_ms or 0
    last_ms = end_ms or run.heartbeat_ms or 0
    return {
        "run_id": run.run_id,
        "name": run.name or run.run_id,
        "state": STATES.get(run.state, "unknown"),
        "group": run.group,
        "job_type": run.job_type,
        "user": run.user,
        "host": run.host,
        "start": _ms_to_datetime(run.start_ms),
        "end": _ms_to_datetime(end_ms),
        "duration_s": (last_ms - run.start_ms) / 1000 if last_ms and run.start_ms else None,
        "tags": ", ".join(f"{k}={v}" if v else k for k, v in sorted(run.tags.items())),
    }


# ---------------------------------------------------------------- loaders


@st.cache_data(ttl=15, show_spinner=False)
def list_projects() -> pd.DataFrame:
    """Projects with run counts and last activity, newest first."""
    resp = _call(_stub().ListProjects, query_pb2.ListProjectsRequest())
    rows = [
        {"project": p.name, "runs": p.run_count, "last_activity": _ms_to_datetime(p.last_activity_ms)}
        for p in resp.projects
    ]
    df = pd.DataFrame(rows, columns=["project", "runs", "last_activity"])
    return df.sort_values("last_activity", ascending=False, na_position="last").reset_index(drop=True)


@dataclass(frozen=True)
class RunsPage:
    """One page of a run search: a row per run (params as `params.<key>`, metric last values as
    `metrics.<key>`), the token of the next page ("" on the last) and the total match count."""

    runs: pd.DataFrame
    next_page_token: str
    total: int


@st.cache_data(ttl=10, show_spinner=False, max_entries=200)
def search_runs(
    project: str,
    filter_text: str = "",
    order_by: tuple[str, ...] = (),
    page_size: int = 100,
    page_token: str = "",
    param_keys: tuple[str, ...] = (),
    metric_keys: tuple[str, ...] = (),
) -> RunsPage:
    """Filtered, sorted page of runs; filtering, sorting and paging all happen on the server."""
    req = query_pb2.SearchRunsRequest(
        project=project,
        filter=filter_text,
        order_by=list(order_by),
        page_size=page_size,
        page_token=page_token,
        param_keys=list(param_keys),
        metric_keys=list(metric_keys),
        include_config=bool(param_keys),
    )
    resp = _call(_stub().SearchRuns, req)
    rows = []
    for run in resp.runs:
        row = _run_row(run)
        for key in param_keys:
            row[f"params.{key}"] = value_to_python(run.config[key]) if key in run.config else None
        for m in run.metrics:
            if not metric_keys or m.key in metric_keys:
                row[f"metrics.{m.key}"] = m.last
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=RUN_COLUMNS)
    extra = [f"params.{k}" for k in param_keys] + [f"metrics.{k}" for k in metric_keys]
    for col in extra:
        if col not in df.columns:
            df[col] = None
    return RunsPage(df, resp.next_page_token, int(resp.total))


@dataclass(frozen=True)
class Keys:
    """Metric, param, tag and system metric keys of a project (or of some runs)."""

    metric_keys: tuple[str, ...] = ()
    param_keys: tuple[str, ...] = ()
    tag_keys: tuple[str, ...] = ()
    system_metric_keys: tuple[str, ...] = ()


@st.cache_data(ttl=30, show_spinner=False)
def list_keys(project: str, run_ids: tuple[str, ...] = ()) -> Keys:
    resp = _call(_stub().ListKeys, query_pb2.ListKeysRequest(project=project, run_ids=list(run_ids)))
    return Keys(
        tuple(sorted(resp.metric_keys)),
        tuple(sorted(resp.param_keys)),
        tuple(sorted(resp.tag_keys)),
        tuple(sorted(resp.system_metric_keys)),
    )


SERIES_COLUMNS = ["run_id", "key", "rank", "x", "y", "total_points"]


@st.cache_data(ttl=5, show_spinner=False, max_entries=100)
def metric_series(
    project: str,
    run_ids: tuple[str, ...],
    keys: tuple[str, ...],
    x_axis: str = "step",
    max_points: int = 1000,
    system: bool = False,
) -> pd.DataFrame:
    """Long-form series (one row per point) of many runs and keys, downsampled on the server
    (min/max per bucket, so spikes stay visible) to about `max_points` per series."""
    if not run_ids or not keys:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    req = query_pb2.GetMetricSeriesRequest(
        project=project,
        run_ids=list(run_ids),
        keys=list(keys),
        max_points=max_points,
        downsampling=query_pb2.DOWNSAMPLING_MINMAX,
        x_axis=X_AXES[x_axis],
        kind=types_pb2.METRIC_KIND_SYSTEM if system else types_pb2.METRIC_KIND_USER,
    )
    resp = _call(_stub().GetMetricSeries, req, timeout=30)
    frames = []
    for s in resp.series:
        x, y = decode_f64(s.x), decode_f64(s.y)
        n = min(len(x), len(y))
        frames.append(
            pd.DataFrame(
                {
                    "run_id": s.run_id,
                    "key": s.key,
                    "rank": s.rank,
                    "x": x[:n],
                    "y": y[:n],
                    "total_points": s.total_points,
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class RunDetail:
    """Everything the run page shows about one run."""

    info: dict[str, Any]
    config: dict[str, Any]
    summary: dict[str, Any]
    tags: dict[str, str]
    notes: str
    metrics: pd.DataFrame  # key, last, min, max, count, last_step
    context: dict[str, Any]
    datasets: list[dict[str, str]] = field(default_factory=list)
    artifacts: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def running(self) -> bool:
        return self.info.get("state") == "running"


ARTIFACT_COLUMNS = ["name", "path", "type", "version", "size", "sha256", "uri", "created"]


@st.cache_data(ttl=5, show_spinner=False, max_entries=100)
def get_run(project: str, run_id: str) -> RunDetail:
    run = _call(_stub().GetRun, query_pb2.GetRunRequest(project=project, run_id=run_id)).run
    info = _run_row(run)
    info.update(git_commit=run.git_commit, git_dirty=run.git_dirty, project=run.project)
    metrics = pd.DataFrame(
        [
            {
                "key": m.key,
                "last": m.last,
                "min": m.min,
                "max": m.max,
                "count": m.count,
                "last_step": m.last_step,
            }
            for m in run.metrics
        ],
        columns=["key", "last", "min", "max", "count", "last_step"],
    ).sort_values("key")
    ctx = run.context
    context = {
        "git_commit": ctx.git_commit or run.git_commit,
        "git_branch": ctx.git_branch,
        "git_dirty": ctx.git_dirty or run.git_dirty,
        "git_remote": ctx.git_remote,
        "git_diff": ctx.git_diff,
        "python_version": ctx.python_version,
        "packages": dict(sorted(ctx.packages.items())),
        "host": ctx.host or run.host,
        "os": ctx.os,
        "cpu": ctx.cpu,
        "gpus": list(ctx.gpus),
        "command": list(ctx.command),
        "env_name": ctx.env_name,
        "seeds": dict(ctx.seeds),
        "user": ctx.user or run.user,
        "world_size": ctx.world_size,
    }
    artifacts = pd.DataFrame(
        [
            {
                "name": a.name,
                "path": a.path,
                "type": a.type,
                "version": a.version,
                "size": a.size,
                "sha256": a.sha256,
                "uri": a.uri,
                "created": _ms_to_datetime(a.created_ms),
            }
            for a in run.artifacts
        ],
        columns=ARTIFACT_COLUMNS,
    )
    return RunDetail(
        info=info,
        config={k: value_to_python(v) for k, v in sorted(run.config.items())},
        summary={k: value_to_python(v) for k, v in sorted(run.summary.items())},
        tags=dict(sorted(run.tags.items())),
        notes=run.notes,
        metrics=metrics.reset_index(drop=True),
        context=context,
        datasets=[{"name": d.name, "version": d.version, "uri": d.uri} for d in run.datasets],
        artifacts=artifacts,
    )


MAX_ARTIFACT_DOWNLOAD_BYTES = 512 * 1024 * 1024


@st.cache_data(ttl=300, show_spinner=False, max_entries=20)
def download_artifact(project: str, run_id: str, sha256: str) -> bytes:
    """The bytes of one artifact file (DownloadArtifact, streamed in chunks)."""
    req = query_pb2.DownloadArtifactRequest(project=project, run_id=run_id, sha256=sha256)
    chunks, size = [], 0
    try:
        for part in _stub().DownloadArtifact(req, timeout=120, metadata=_metadata()):
            size += len(part.chunk)
            if size > MAX_ARTIFACT_DOWNLOAD_BYTES:
                raise QueryError(
                    f"artifact {sha256[:12]} is over {MAX_ARTIFACT_DOWNLOAD_BYTES >> 20} MiB; "
                    "fetch it with runstream.Api instead",
                    "RESOURCE_EXHAUSTED",
                )
            chunks.append(part.chunk)
    except grpc.RpcError as exc:
        raise _query_error(exc) from None
    return b"".join(chunks)


def flatten_json_value(value: Any) -> str:
    """Display form of a config value (JSON values are already text)."""
    if isinstance(value, str | int | float | bool) or value is None:
        return "" if value is None else str(value)
    return json.dumps(value, sort_keys=True)


def clear_caches() -> None:
    """Drops every cached answer (the Refresh button)."""
    for loader in (list_projects, search_runs, list_keys, metric_series, get_run):
        loader.clear()
