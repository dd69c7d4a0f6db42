"""What run.log records for media values (runstream.media): one MediaEvent per item, built on
the caller's thread. Encoded bytes travel inline up to artifacts.MAX_INLINE_BYTES; larger ones are
uploaded by the worker first (pipeline.Upload, from memory) and the event carries only the digest,
as large artifact files do. Histograms and text have no bytes: their content is in the event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runstream.errors import InvalidValueError
from runstream.media import MAX_ITEMS_PER_KEY, Media
from runstream.v1 import ingest_pb2

from .artifacts import MAX_INLINE_BYTES
from .buffer import Control


def is_media(value: Any) -> bool:
    """True for a Media item or a non-empty list/tuple of them (what run.log stores as media)."""
    if isinstance(value, Media):
        return True
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, Media) for v in value)


def split_media(data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[Media]]]:
    """(numbers, media) of one run.log dict; numbers stay metrics."""
    numbers: dict[str, Any] = {}
    media: dict[str, list[Media]] = {}
    for key, value in data.items():
        if isinstance(value, Media):
            media[key] = [value]
        elif is_media(value):
            if len(value) > MAX_ITEMS_PER_KEY:
                raise InvalidValueError(
                    f"run.log {key!r}: {len(value)} media items at one step; at most {MAX_ITEMS_PER_KEY}"
                )
            media[key] = list(value)
        else:
            numbers[key] = value
    return numbers, media


def media_entries(
    project: str, run_id: str, rank: int, step: int, time_ms: int, media: dict[str, list[Media]]
) -> list[Control]:
    """The buffer entries recording `media` at `step`: inline events, or uploads then events."""
    entries: list[Control] = []
    for key, items in media.items():
        for index, item in enumerate(items):
            meta = item.meta
            event = ingest_pb2.MediaEvent(
                project=project,
                run_id=run_id,
                key=key,
                step=step,
                index=index,
                kind=item.kind,
                caption=item.caption,
                format=item.format,
                time_ms=time_ms,
                rank=rank,
                width=meta.get("width", 0),
                height=meta.get("height", 0),
                channels=meta.get("channels", 0),
                sample_rate=meta.get("sample_rate", 0),
                duration_s=meta.get("duration_s", 0.0),
                rows=meta.get("rows", 0),
                columns=meta.get("columns", ()),
                bin_edges=meta.get("bin_edges", ()),
                counts=meta.get("counts", ()),
                text=meta.get("text", ""),
            )
            data = item.data
            if data is None:
                entries.append(Control("media", event))
                continue
            event.sha256 = item.sha256
            event.size = len(data)
            if len(data) <= MAX_INLINE_BYTES:
                event.inline_data = data
                entries.append(Control("media", event))
            else:
                from .pipeline import Upload  # asyncio and grpc.aio: loaded once a large item is logged

                entries.append(Control("upload", Upload(event, data, field="media")))
    return entries
