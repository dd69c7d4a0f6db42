"""ListMedia and DownloadMedia, mixed into the QueryServicer (query/service.py): access checks as
the other reads (the caller's key must read the project), request -> sql_media statement ->
MediaEvent protos (without their bytes; DownloadMedia streams those from the artifact store)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from runstream.v1 import ingest_pb2, query_pb2
from runstream_services.errors import InvalidArgument
from runstream_services.query import sql_media

DEFAULT_MEDIA_LIMIT = 1_000
MAX_MEDIA_LIMIT = 10_000
MAX_MEDIA_RUNS = 100


class MediaReads:
    """The media RPCs; expects the servicer's _may_read, _rows, db, artifacts, _max_message_bytes."""

    async def ListMedia(self, request, context) -> query_pb2.ListMediaResponse:
        project = self._may_read(context, request.project)
        run_ids = list(dict.fromkeys(request.run_ids))
        if not run_ids:
            raise InvalidArgument("run_ids is empty: name the runs whose media to list")
        if len(run_ids) > MAX_MEDIA_RUNS:
            raise InvalidArgument(f"{len(run_ids)} runs asked; at most {MAX_MEDIA_RUNS} per ListMedia")
        if request.keys_only:
            rows = await self._rows(sql_media.media_keys(self.db, project, run_ids))
            keys = [
                query_pb2.MediaKeyInfo(
                    run_id=run_id, key=key, kind=kind, count=count, min_step=lo, max_step=hi
                )
                for run_id, key, kind, count, lo, hi in rows
            ]
            return query_pb2.ListMediaResponse(keys=keys)
        limit = request.limit or DEFAULT_MEDIA_LIMIT
        if limit > MAX_MEDIA_LIMIT:
            raise InvalidArgument(f"limit {limit} is over {MAX_MEDIA_LIMIT}: page by step range instead")
        steps = None
        if request.has_step_range:
            if request.min_step > request.max_step:
                raise InvalidArgument(
                    f"min_step {request.min_step} is above max_step {request.max_step}: swap them"
                )
            steps = (request.min_step, request.max_step)
        rows = await self._rows(
            sql_media.media_items(self.db, project, run_ids, request.key, steps, limit + 1)
        )
        # an answer stays within half the message limit (histograms and text are inline): the
        # items that fit, truncated, and the caller asks again from the next step
        budget, used, items = self._max_message_bytes // 2, 0, []
        for row in rows[:limit]:
            item = _item(project, row)
            used += item.ByteSize() + 8
            if used > budget and items:
                break
            items.append(item)
        return query_pb2.ListMediaResponse(items=items, truncated=len(rows) > len(items))

    async def DownloadMedia(self, request, context) -> AsyncIterator[query_pb2.DownloadArtifactResponse]:
        async for answer in self._download(request, context, "media", sql_media.media_digest_count):
            yield answer


def _item(project: str, row: tuple) -> ingest_pb2.MediaEvent:
    (run_id, key, step, rank, idx, kind, caption, sha, size, fmt, time_ms, width, height, channels,
     sample_rate, duration_s, num_rows, columns, bin_edges, counts, text) = row  # fmt: skip
    return ingest_pb2.MediaEvent(
        project=project, run_id=run_id, key=key, step=step, rank=rank, index=idx, kind=kind,
        caption=caption, sha256=sha, size=size, format=fmt, time_ms=time_ms, width=width,
        height=height, channels=channels, sample_rate=sample_rate, duration_s=duration_s,
        rows=num_rows, columns=columns, bin_edges=bin_edges, counts=counts, text=text,
    )  # fmt: skip
