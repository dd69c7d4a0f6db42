"""Checks a MediaEvent (an image, audio clip, histogram, table or text sample logged at a step).
Each refusal says what is wrong and how to fix it. The limits are the server's side of the SDK's
(runstream/media.py states them for users; docs/media.md lists both)."""

from __future__ import annotations

import hashlib
import math

from runstream.v1 import ingest_pb2
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument
from runstream_services.ingest.validation import check_key, check_rank, check_sha256, check_time_ms

#: kinds whose content is encoded bytes in the artifact store, and the format each must have
BYTE_FORMATS = {"image": "png", "audio": "wav", "table": "parquet"}
#: kinds whose content travels in the event itself
INLINE_KINDS = frozenset({"histogram", "text"})
MEDIA_KINDS = frozenset(BYTE_FORMATS) | INLINE_KINDS
MAX_STEP = (1 << 63) - 1  # steps are int64, as the SDK checks them
MAX_INDEX = 1_000  # items under one key at one step
MAX_CAPTION_CHARS = 4_096
MAX_MEDIA_TEXT_CHARS = 64 * 1024
MAX_HISTOGRAM_BINS = 10_000
MAX_TABLE_COLUMNS = 1_000
MAX_COLUMN_NAME_CHARS = 256


def check_media(event: ingest_pb2.MediaEvent, settings: ServerSettings) -> None:
    """Raises InvalidArgument unless `event` is a well-formed media item within the limits."""
    check_key("media", event.key)
    kind = event.kind
    if kind not in MEDIA_KINDS:
        raise InvalidArgument(
            f"media {event.key!r} has kind {kind[:40]!r}; use one of {', '.join(sorted(MEDIA_KINDS))}"
        )
    if not 0 <= event.step <= MAX_STEP:
        raise InvalidArgument(f"media {event.key!r}: step {event.step} is out of range 0..{MAX_STEP}")
    if event.index >= MAX_INDEX:
        raise InvalidArgument(
            f"media {event.key!r}: index {event.index}; at most {MAX_INDEX} items per key and step"
        )
    if len(event.caption) > MAX_CAPTION_CHARS:
        raise InvalidArgument(
            f"media {event.key!r}: caption of {len(event.caption)} characters; the limit is {MAX_CAPTION_CHARS}"
        )
    check_rank(event.rank)
    check_time_ms("media time_ms", event.time_ms)
    if kind in BYTE_FORMATS:
        _check_bytes(event, BYTE_FORMATS[kind], settings)
    elif event.sha256 or event.inline_data or event.size:
        raise InvalidArgument(f"media {event.key!r}: a {kind} carries no bytes; leave sha256/size empty")
    if kind == "histogram":
        _check_histogram(event)
    elif event.bin_edges or event.counts:
        raise InvalidArgument(f"media {event.key!r}: bin_edges/counts belong to histograms only")
    if kind == "text":
        if len(event.text) > MAX_MEDIA_TEXT_CHARS:
            raise InvalidArgument(
                f"media {event.key!r}: text of {len(event.text)} characters; the limit is "
                f"{MAX_MEDIA_TEXT_CHARS} (log longer text as an artifact)"
            )
    elif event.text:
        raise InvalidArgument(f"media {event.key!r}: `text` belongs to text samples only")
    if len(event.columns) > MAX_TABLE_COLUMNS:
        raise InvalidArgument(
            f"media {event.key!r}: {len(event.columns)} table columns; the limit is {MAX_TABLE_COLUMNS}"
        )
    for name in event.columns:
        if len(name) > MAX_COLUMN_NAME_CHARS:
            raise InvalidArgument(
                f"media {event.key!r}: a column name of {len(name)} characters; the limit is {MAX_COLUMN_NAME_CHARS}"
            )


def _check_bytes(event: ingest_pb2.MediaEvent, fmt: str, settings: ServerSettings) -> None:
    if event.format != fmt:
        raise InvalidArgument(
            f"media {event.key!r}: a {event.kind} is stored as {fmt}, not {event.format[:20]!r}"
        )
    check_sha256(event.sha256)
    if event.size == 0:
        raise InvalidArgument(f"media {event.key!r}: a {event.kind} has bytes; size is 0")
    if event.size > settings.max_artifact_bytes:
        raise InvalidArgument(
            f"media {event.key!r}: {event.size} bytes is over this server's max_artifact_bytes"
        )
    if len(event.inline_data) > settings.max_inline_artifact_bytes:
        raise InvalidArgument(
            f"media {event.key!r}: {len(event.inline_data)} inline bytes; the limit is "
            f"{settings.max_inline_artifact_bytes}: upload them with UploadArtifact and send only the digest"
        )
    if event.inline_data:
        if len(event.inline_data) != event.size:
            raise InvalidArgument(
                f"media {event.key!r} says size {event.size} but carries {len(event.inline_data)} bytes"
            )
        digest = hashlib.sha256(event.inline_data).hexdigest()
        if digest != event.sha256.lower():
            raise InvalidArgument(
                f"media {event.key!r}: the inline bytes hash to sha256 {digest}, not the declared {event.sha256}"
            )


def _check_histogram(event: ingest_pb2.MediaEvent) -> None:
    counts, edges = event.counts, event.bin_edges
    if not counts:
        raise InvalidArgument(f"histogram {event.key!r} has no bins")
    if len(counts) > MAX_HISTOGRAM_BINS:
        raise InvalidArgument(
            f"histogram {event.key!r} has {len(counts)} bins; the limit is {MAX_HISTOGRAM_BINS}"
        )
    if len(edges) != len(counts) + 1:
        raise InvalidArgument(
            f"histogram {event.key!r}: {len(edges)} bin edges for {len(counts)} counts; give len(counts) + 1"
        )
    if not all(math.isfinite(e) for e in edges) or any(
        b <= a for a, b in zip(edges, edges[1:], strict=False)
    ):
        raise InvalidArgument(f"histogram {event.key!r}: bin edges must be finite and strictly ascending")
    if not all(math.isfinite(c) and c >= 0 for c in counts):
        raise InvalidArgument(f"histogram {event.key!r}: counts must be finite and non-negative")
