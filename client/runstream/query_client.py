"""The one gRPC client of the query service: channel, auth metadata, deadlines and typed
errors, with one method per RPC that returns the wire messages or small dataclasses.

runstream.Api (api.py) adds pandas DataFrames on top; the dashboard (runstream_dashboard.queries)
calls these methods through an Api and shapes the answers for its pages. Nothing else in the
repository opens a channel to the query service for reading.

Every failed call raises runstream.errors.ServerError with the gRPC `code`, or its subclass
ServerUnavailableError when the server was not reached in time. Only grpcio and protobuf are
needed, plus numpy for series_arrays.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import grpc.experimental

from runstream.config import DEFAULT_ENDPOINT
from runstream.errors import UNREACHABLE_CODES, RunstreamError, ServerError, ServerUnavailableError
from runstream.tls import Tls, channel
from runstream.v1 import query_pb2, query_pb2_grpc, types_pb2

if TYPE_CHECKING:
    import numpy as np

MAX_RECEIVE_BYTES = 256 * 1024 * 1024  # a page of 10,000 runs with their config fits
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


def require_numpy():
    """numpy, or a RunstreamError saying how to install it (the bare SDK has none)."""
    try:
        import numpy
    except ImportError:
        raise RunstreamError("runstream.Api needs numpy: pip install numpy pandas") from None
    return numpy


def value_of(value: types_pb2.Value, *, json_as_text: bool = False) -> Any:
    """A config/summary Value as a Python value: a float, str or bool, or the decoded JSON value
    (lists, dicts, None). With `json_as_text`, JSON values stay the text they were logged as,
    which is what a table cell shows."""
    kind = value.WhichOneof("kind")
    if kind == "json" and not json_as_text:
        try:
            return json.loads(value.json)
        except ValueError:
            return value.json
    return getattr(value, kind) if kind else None


@dataclass(frozen=True)
class SeriesArrays:
    """One downsampled series of GetMetricSeries: x and y as float64 arrays of equal length."""

    run_id: str
    key: str
    rank: int
    x: np.ndarray
    y: np.ndarray
    total_points: int  # points logged before downsampling


class QueryClient:
    """A connection to the query service: one channel, one RPC per method. Use as a context
    manager or call close().

    endpoint and api_key: argument, else $RUNSTREAM_ENDPOINT / $RUNSTREAM_API_KEY, else
    127.0.0.1:7777 and no key. timeout_s: the deadline of each call that does not pass its own.
    max_receive_bytes: the largest answer accepted (gRPC's max_receive_message_length).
    tls: how to secure the channel (runstream.tls.Tls), else from $RUNSTREAM_TLS* (plaintext
    when none is set)."""

    def __init__(
        self,
        endpoint: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        *,
        max_receive_bytes: int = MAX_RECEIVE_BYTES,
        tls: Tls | None = None,
    ):
        self.endpoint = endpoint or os.environ.get("RUNSTREAM_ENDPOINT") or DEFAULT_ENDPOINT
        key = api_key if api_key is not None else os.environ.get("RUNSTREAM_API_KEY")
        self._metadata = (("authorization", f"Bearer {key}"),) if key else ()
        self.timeout_s = timeout_s
        self.tls = Tls.resolve() if tls is None else tls
        self._channel = channel(
            self.endpoint,
            self.tls,
            options=[
                ("grpc.max_receive_message_length", max_receive_bytes),
                # streaming reads (history, artifact downloads) run on the caller's thread: without
                # this, grpc starts a thread for each one (~1-2 ms of a small history read)
                (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
            ],
        )
        self._stub = query_pb2_grpc.QueryServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> QueryClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, request, timeout_s: float | None = None):
        try:
            return getattr(self._stub, method)(
                request, timeout=self.timeout_s if timeout_s is None else timeout_s, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise self._error(method, exc) from None

    def _stream(self, method: str, request, timeout_s: float | None = None) -> Iterator:
        """The messages of a server-streaming call as they arrive; a failure mid-stream is typed
        too, and a consumer that stops early cancels the call."""
        responses = getattr(self._stub, method)(
            request, timeout=self.timeout_s if timeout_s is None else timeout_s, metadata=self._metadata
        )
        try:
            yield from responses
        except grpc.RpcError as exc:
            raise self._error(method, exc) from None
        finally:
            responses.cancel()

    def _error(self, method: str, exc: grpc.RpcError) -> ServerError:
        status = exc.code() if hasattr(exc, "code") else None
        code = status.name if status else "UNKNOWN"
        details = (exc.details() if hasattr(exc, "details") else "") or str(exc)
        hint = self.tls.hint(details) if code == "UNAVAILABLE" else ""
        if hint:
            details = f"{details}. {hint}"
        if code in UNREACHABLE_CODES:
            shown = f"cannot reach the Runstream server at {self.endpoint} ({details})"
            return ServerUnavailableError(
                f"query service at {self.endpoint} unavailable ({code}): {details}",
                code,
                shown if code == "UNAVAILABLE" else details,
            )
        return ServerError(f"{method} failed ({code}): {details}", code, details)

    # ------------------------------------------------------------ calls: one RPC each

    def list_projects(self, *, timeout_s: float | None = None) -> list[query_pb2.ProjectInfo]:
        """Projects that hold runs: name, run_count, last_activity_ms (newest run start)."""
        return list(self._call("ListProjects", query_pb2.ListProjectsRequest(), timeout_s).projects)

    def search_runs(
        self,
        project: str,
        *,
        filter: str | None = None,
        order_by: str | Iterable[str] | None = None,
        page_size: int = 100,
        page_token: str = "",
        param_keys: Iterable[str] = (),
        metric_keys: Iterable[str] = (),
        include_config: bool = False,
        columnar: bool = False,
        timeout_s: float | None = None,
    ) -> query_pb2.SearchRunsResponse:
        """One page of runs: `.runs`, `.next_page_token` ("" on the last page) and `.total` (runs
        matching the filter). Filtering, sorting and paging happen on the server (see `runs`).
        param_keys / metric_keys pick the config keys and metric summaries each run carries
        (empty: all metrics, and config only with include_config). columnar: the server may
        answer with the page as columns in `.table` (RunsTable) and `.runs` empty; when
        `.HasField("table")` is false the page is in `.runs` as usual."""
        order = [order_by] if isinstance(order_by, str) else list(order_by or [])
        request = query_pb2.SearchRunsRequest(
            project=project, filter=filter or "", order_by=order, page_size=page_size, page_token=page_token,
            param_keys=list(param_keys), metric_keys=list(metric_keys), include_config=include_config,
            columnar=columnar,
        )  # fmt: skip
        return self._call("SearchRuns", request, timeout_s)

    def get_run(self, project: str, run_id: str, *, timeout_s: float | None = None) -> types_pb2.Run:
        """One run with its config, summary, metric summaries, context, datasets and artifacts;
        a run that does not exist raises ServerError with code NOT_FOUND."""
        return self._call("GetRun", query_pb2.GetRunRequest(project=project, run_id=run_id), timeout_s).run

    def series_arrays(
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
        *,
        timeout_s: float | None = None,
    ) -> list[SeriesArrays]:
        """Downsampled series of many runs and keys in one call, one SeriesArrays per (run, key,
        rank) that has points. downsampling: minmax | lttb | none; x_axis: step | time |
        relative_time (ms); kind: user | system; all_ranks: one series per rank, else `rank` only;
        x_range: a zoom window on the x axis."""
        np = require_numpy()
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
        out = []
        for s in self._call("GetMetricSeries", request, timeout_s).series:
            x, y = np.frombuffer(s.x, "<f8"), np.frombuffer(s.y, "<f8")
            n = min(len(x), len(y))
            out.append(SeriesArrays(s.run_id, s.key, s.rank, x[:n], y[:n], s.total_points))
        return out

    def download_artifact(
        self,
        project: str,
        run_id: str,
        sha256: str,
        *,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
    ) -> bytes:
        """The bytes of one artifact file of a run (its sha256 is in get_run(...).artifacts),
        streamed in chunks. A file over `max_bytes` stops the download and raises ServerError
        with code RESOURCE_EXHAUSTED, as gRPC does for an answer over max_receive_bytes."""
        request = query_pb2.DownloadArtifactRequest(project=project, run_id=run_id, sha256=sha256)
        chunks, size = [], 0
        with contextlib.closing(self._stream("DownloadArtifact", request, timeout_s)) as parts:
            for part in parts:
                size += len(part.chunk)
                if max_bytes is not None and size > max_bytes:
                    message = f"artifact {sha256[:12]} is over {max_bytes:,} bytes"
                    raise ServerError(message, "RESOURCE_EXHAUSTED", message)
                chunks.append(part.chunk)
        return b"".join(chunks)

    def history_pages(
        self,
        run_id: str,
        keys: Iterable[str] | None = None,
        project: str | None = None,
        kind: str = "user",
        *,
        timeout_s: float | None = None,
    ) -> Iterator[query_pb2.GetHistoryResponse]:
        """Every point of a run, page by page: columnar pages (keys + key_index, steps, values,
        times_ms, ranks as little-endian arrays), ordered by key, rank, step. `project` may be
        left out when the run id is unique on the server. Each page is one unary GetHistoryPage
        call after the last page's cursor (a history of one page is one round trip); a server
        without that call is read through the GetHistory stream."""
        query = query_pb2.GetHistoryRequest(
            project=project or "", run_id=run_id, keys=list(keys or []), kind=_kind(kind)
        )
        after = None
        while True:
            request = query_pb2.GetHistoryPageRequest(query=query, after=after)
            try:
                answer = self._call("GetHistoryPage", request, timeout_s)
            except ServerError as exc:
                if after is None and exc.code == "UNIMPLEMENTED":  # a server older than the call
                    yield from self._stream("GetHistory", query, timeout_s)
                    return
                raise
            if answer.page.steps:
                yield answer.page
            if not answer.HasField("next"):
                return
            after = answer.next

    def keys(
        self, project: str, run_ids: Iterable[str] | None = None, *, timeout_s: float | None = None
    ) -> dict[str, list[str]]:
        """{"metrics": [...], "params": [...], "tags": [...], "system_metrics": [...]}."""
        request = query_pb2.ListKeysRequest(project=project, run_ids=list(run_ids or []))
        resp = self._call("ListKeys", request, timeout_s)
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


__all__ = ["MAX_RECEIVE_BYTES", "QueryClient", "SeriesArrays", "require_numpy", "value_of"]
