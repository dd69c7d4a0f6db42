"""The dashboard's only data access: runstream.Api calls turned into DataFrames and small
dataclasses for the pages. Pages never touch gRPC or protobuf; they call these loaders, which
Streamlit caches by their arguments (short TTLs, so live runs refresh).

TTLs are short because a read that misses the cache is cheap next to drawing its answer: on the
embedded server the query service answers from its read cache (bench/dashboard_clicks.py, 10,000
runs: the Runs page's loader ~16 ms, a 50-run series loader ~18 ms, against 0.3-2.5 s from click
to drawn page), so the cache only spares reruns that follow each other closely, and live pages
(refreshed every 5 s) get data at most 2 s old.

Every call goes through the session's runstream.Api (`api()`): one per distinct key in an
st.cache_resource, the key being the signed-in viewer's (login.py), never a process-wide one, and
loaders cache per viewer (`login.per_viewer`). The endpoint and TLS come from $RUNSTREAM_ENDPOINT
and $RUNSTREAM_TLS_* as for the SDK. A failed call raises
runstream.errors.ServerError (ServerUnavailableError when the server is not reached): pages show
its `details`, and its `code` next to a refused filter."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from runstream.api import Api, value_of
from runstream.errors import ServerError
from runstream.states import state_name
from runstream.v1 import types_pb2
from runstream_dashboard import login

RPC_TIMEOUT_S = 15.0
SERIES_TIMEOUT_S = 30.0
DOWNLOAD_TIMEOUT_S = 120.0
MAX_ARTIFACT_DOWNLOAD_BYTES = 512 * 1024 * 1024
X_AXES = {"step": "step", "time": "time", "relative": "relative_time"}  # the pages' names -> Api's
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


@st.cache_resource(show_spinner=False, max_entries=256)
def _api(viewer: str, _key: str) -> Api:
    """One connection per key, shared by the sessions signed in with it (`_key` is left out of
    Streamlit's cache key; `viewer` is its hash)."""
    return Api(api_key=_key, timeout_s=RPC_TIMEOUT_S)


def api_for(key: str) -> Api:
    return _api(login.fingerprint(key), key)


def api() -> Api:
    """This session's connection to the query service: with the viewer's own key."""
    return api_for(login.viewer_key())


api.clear = _api.clear  # type: ignore[attr-defined]  # drops every connection (as before: a cached resource)


@st.cache_data(ttl=30, show_spinner=False)
def server_wants_a_key() -> bool:
    """Whether the server refuses a call without a key (asked without one; unreachable: no)."""
    try:
        api_for("").list_projects(timeout_s=5)
    except ServerError as exc:
        return exc.code == "UNAUTHENTICATED"
    return False


def key_problem(key: str) -> str | None:
    """None when the server accepts `key`, else what to tell the person signing in."""
    try:
        api_for(key).list_projects(timeout_s=10)
    except ServerError as exc:
        if exc.code == "UNAUTHENTICATED":
            return "This API key is not valid on this server. Check it, or ask an admin for one."
        return f"Could not check the key: {exc.details}"
    return None


def endpoint() -> str:
    return api().endpoint


# ---------------------------------------------------------------- shaping


def cell_value(value: types_pb2.Value) -> Any:
    """A config/summary value as a table cell shows it: JSON as the text it was logged as, whole
    numbers as ints (32, not 32.0)."""
    v = value_of(value, json_as_text=True)
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def _ms_to_datetime(ms: int) -> pd.Timestamp | None:
    return pd.Timestamp(ms, unit="ms") if ms else None


def run_row(run: types_pb2.Run) -> dict[str, Any]:
    """The columns every run table shows, as the pages name and format them."""
    end_ms = run.end_ms or 0
    last_ms = end_ms or run.heartbeat_ms or 0
    return {
        "run_id": run.run_id,
        "name": run.name or run.run_id,
        "state": state_name(run.state),
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


@login.per_viewer(ttl=5, show_spinner=False)
def list_projects() -> pd.DataFrame:
    """Projects with run counts and last activity, newest first."""
    rows = [
        {"project": p.name, "runs": p.run_count, "last_activity": _ms_to_datetime(p.last_activity_ms)}
        for p in api().list_projects()
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


@login.per_viewer(ttl=3, show_spinner=False, max_entries=200)
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
    resp = api().search_runs(
        project,
        filter=filter_text,
        order_by=order_by,
        page_size=page_size,
        page_token=page_token,
        param_keys=param_keys,
        metric_keys=metric_keys,
        include_config=bool(param_keys),
    )
    rows = []
    for run in resp.runs:
        row = run_row(run)
        for key in param_keys:
            row[f"params.{key}"] = cell_value(run.config[key]) if key in run.config else None
        for m in run.metrics:
            if not metric_keys or m.key in metric_keys:
                row[f"metrics.{m.key}"] = m.last
        datasets: dict[str, list[str]] = {}
        for d in run.datasets:  # in use order; a dataset used twice shows both versions
            versions = datasets.setdefault(d.name, [])
            if d.version not in versions:
                versions.append(d.version)
        row["datasets"] = ", ".join(f"{name}@{'/'.join(v)}" for name, v in datasets.items()) or None
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        df = pd.DataFrame(columns=[*RUN_COLUMNS, "datasets"])
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


@login.per_viewer(ttl=10, show_spinner=False)
def list_keys(project: str, run_ids: tuple[str, ...] = ()) -> Keys:
    keys = api().keys(project, run_ids)
    return Keys(
        tuple(sorted(keys["metrics"])),
        tuple(sorted(keys["params"])),
        tuple(sorted(keys["tags"])),
        tuple(sorted(keys["system_metrics"])),
    )


SERIES_COLUMNS = ["run_id", "key", "rank", "x", "y", "total_points"]


@login.per_viewer(ttl=2, show_spinner=False, max_entries=100)
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
    series = api().series_arrays(
        project,
        run_ids,
        keys,
        max_points,
        downsampling="minmax",
        x_axis=X_AXES[x_axis],
        kind="system" if system else "user",
        timeout_s=SERIES_TIMEOUT_S,
    )
    if not series:
        return pd.DataFrame(columns=SERIES_COLUMNS)
    # one frame from concatenated columns (one frame per series and pd.concat cost ~0.2 ms each:
    # ~20 ms for a 50-run overlay of two metrics); the same frame, dtypes included
    sizes = [len(s.x) for s in series]
    return pd.DataFrame(
        {
            # dtype "str": what a text scalar column gets, even with no rows
            "run_id": pd.Series(
                np.repeat(np.array([s.run_id for s in series], dtype=object), sizes), dtype="str"
            ),
            "key": pd.Series(np.repeat(np.array([s.key for s in series], dtype=object), sizes), dtype="str"),
            "rank": np.repeat(np.array([s.rank for s in series], dtype=np.int64), sizes),
            "x": np.concatenate([s.x for s in series]),
            "y": np.concatenate([s.y for s in series]),
            "total_points": np.repeat(np.array([s.total_points for s in series], dtype=np.int64), sizes),
        }
    )


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


@login.per_viewer(ttl=2, show_spinner=False, max_entries=100)
def get_run(project: str, run_id: str) -> RunDetail:
    run = api().get_run(project, run_id)
    info = run_row(run)
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
        config={k: cell_value(v) for k, v in sorted(run.config.items())},
        summary={k: cell_value(v) for k, v in sorted(run.summary.items())},
        tags=dict(sorted(run.tags.items())),
        notes=run.notes,
        metrics=metrics.reset_index(drop=True),
        context=context,
        datasets=[{"name": d.name, "version": d.version, "uri": d.uri} for d in run.datasets],
        artifacts=artifacts,
    )


@login.per_viewer(ttl=300, show_spinner=False, max_entries=20)
def download_artifact(project: str, run_id: str, sha256: str) -> bytes:
    """The bytes of one artifact file (DownloadArtifact, streamed in chunks)."""
    return artifact_loader(project, run_id, sha256)()


def artifact_loader(project: str, run_id: str, sha256: str) -> Callable[[], bytes]:
    """download_artifact, deferred: a download button's `data`. Streamlit calls it in a worker
    thread outside the page's script run, where the session (the viewer's key) cannot be read, so
    the viewer's connection is taken now, in the script run."""
    client = api()
    return lambda: client.download_artifact(
        project, run_id, sha256, max_bytes=MAX_ARTIFACT_DOWNLOAD_BYTES, timeout_s=DOWNLOAD_TIMEOUT_S
    )


def clear_caches() -> None:
    """Drops every cached answer (the Refresh button)."""
    for loader in (list_projects, search_runs, list_keys, metric_series, get_run):
        loader.clear()
