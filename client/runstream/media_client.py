"""Reading logged media (QueryService.ListMedia / DownloadMedia), a mixin of runstream.Api on the
query channel (same auth header, deadlines and typed errors):

    api = runstream.Api()
    api.media_keys("mnist", [run_id])                 # [MediaKey(run_id, key, kind, count, min_step, max_step)]
    items = api.media("mnist", run_id, "samples")     # every item of a key, by step
    items[-1].caption, items[-1].step
    pixels = items[-1].load()                         # image: uint8 H x W x C numpy array
    api.media("mnist", [a, b], "preds", steps=(100, 100))   # one step of two runs

`MediaItem.load()` gives: image -> numpy uint8 H x W x C; audio -> (float32 samples (n,
channels), sample rate); table -> pandas DataFrame; histogram -> (counts, bin_edges) numpy arrays,
as numpy.histogram returns them; text -> str. `MediaItem.bytes()` gives the stored PNG / WAV /
Parquet bytes."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from runstream.errors import InvalidValueError, ServerError
from runstream.v1 import query_pb2

MAX_STEP = (1 << 63) - 1


@dataclass(frozen=True)
class MediaKey:
    """One media key of one run: what was logged under it."""

    run_id: str
    key: str
    kind: str  # image, audio, histogram, table, text
    count: int
    min_step: int
    max_step: int


@dataclass(frozen=True)
class MediaItem:
    """One logged media item (without its bytes: bytes() / load() fetch them)."""

    project: str
    run_id: str
    key: str
    step: int
    index: int  # position in a list logged under the key at this step
    rank: int
    kind: str
    caption: str
    sha256: str  # of the stored bytes; "" for histogram and text
    size: int
    format: str  # png, wav, parquet
    time_ms: int
    width: int = 0
    height: int = 0
    channels: int = 0
    sample_rate: int = 0
    duration_s: float = 0.0
    rows: int = 0
    columns: tuple[str, ...] = ()
    bin_edges: tuple[float, ...] = ()
    counts: tuple[float, ...] = ()
    text: str = ""
    _api: Any = field(default=None, repr=False, compare=False)

    def bytes(self) -> bytes:
        """The stored bytes (PNG, WAV or Parquet); InvalidValueError for histograms and text."""
        if not self.sha256:
            raise InvalidValueError(f"a {self.kind} item has no stored bytes: read .load() or its fields")
        return self._api.media_bytes(self.project, self.run_id, self.sha256)

    def load(self) -> Any:
        """The item as Python data (see the module doc for each kind)."""
        from runstream import media

        if self.kind == "text":
            return self.text
        if self.kind == "histogram":
            np = media._numpy("Histogram")
            return np.asarray(self.counts), np.asarray(self.bin_edges)
        data = self.bytes()
        if self.kind == "image":
            return media.decode_png(data)
        if self.kind == "audio":
            return media.decode_wav(data)
        if self.kind == "table":
            import pandas as pd

            return pd.read_parquet(io.BytesIO(data))
        raise InvalidValueError(f"media kind {self.kind!r} is unknown to this SDK version: upgrade runstream")


def _run_ids(run_ids: str | Iterable[str]) -> list[str]:
    return [run_ids] if isinstance(run_ids, str) else list(run_ids)


class MediaCalls:
    """ListMedia / DownloadMedia over a QueryClient's channel (a mixin; expects _call, _stream)."""

    def media_keys(self: Any, project: str, run_ids: str | Iterable[str], *, timeout_s: float | None = None):
        """The media keys of the runs: [MediaKey], ordered by run and key."""
        request = query_pb2.ListMediaRequest(project=project, run_ids=_run_ids(run_ids), keys_only=True)
        return [
            MediaKey(k.run_id, k.key, k.kind, k.count, k.min_step, k.max_step)
            for k in self._call("ListMedia", request, timeout_s).keys
        ]

    def media_page(
        self: Any,
        project: str,
        run_ids: str | Iterable[str],
        key: str | None = None,
        *,
        steps: tuple[int, int] | None = None,
        limit: int = 1000,
        timeout_s: float | None = None,
    ) -> tuple[list[MediaItem], bool]:
        """One ListMedia answer: (items ordered by run, key, step, rank, index; truncated)."""
        request = query_pb2.ListMediaRequest(
            project=project, run_ids=_run_ids(run_ids), key=key or "", limit=limit
        )
        if steps is not None:
            request.has_step_range = True
            request.min_step, request.max_step = int(steps[0]), int(steps[1])
        response = self._call("ListMedia", request, timeout_s)
        items = [
            MediaItem(
                project=m.project,
                run_id=m.run_id,
                key=m.key,
                step=m.step,
                index=m.index,
                rank=m.rank,
                kind=m.kind,
                caption=m.caption,
                sha256=m.sha256,
                size=m.size,
                format=m.format,
                time_ms=m.time_ms,
                width=m.width,
                height=m.height,
                channels=m.channels,
                sample_rate=m.sample_rate,
                duration_s=m.duration_s,
                rows=m.rows,
                columns=tuple(m.columns),
                bin_edges=tuple(m.bin_edges),
                counts=tuple(m.counts),
                text=m.text,
                _api=self,
            )  # fmt: skip
            for m in response.items
        ]
        return items, response.truncated

    def media(
        self: Any,
        project: str,
        run_ids: str | Iterable[str],
        key: str | None = None,
        *,
        steps: tuple[int, int] | None = None,
        limit: int = 10_000,
        timeout_s: float | None = None,
    ) -> list[MediaItem]:
        """Media items of one run (a run id) or several, of one key (None: every key), within
        `steps` (inclusive (first, last)); at most `limit`. One run and one key are read page by
        page (the server bounds each answer's size); otherwise one answer of at most 10,000
        items (see media_page's `truncated`)."""
        runs = _run_ids(run_ids)
        if len(runs) != 1 or not key:
            items, _ = self.media_page(
                project, runs, key, steps=steps, limit=min(limit, 10_000), timeout_s=timeout_s
            )
            return items
        lo, hi = steps if steps is not None else (0, MAX_STEP)
        items: list[MediaItem] = []
        while len(items) < limit:
            page, truncated = self.media_page(
                project, runs, key, steps=(lo, hi), limit=min(limit - len(items), 10_000), timeout_s=timeout_s
            )
            if not truncated or not page:
                return items + page
            last = page[-1].step
            done = [m for m in page if m.step < last]
            if not done:  # one step alone fills an answer: take what came, go on after it
                done, last = page, last + 1
            items += done
            if last > hi:
                break
            lo = last
        return items[:limit]

    def media_bytes(
        self: Any,
        project: str,
        run_id: str,
        sha256: str,
        *,
        max_bytes: int | None = None,
        timeout_s: float | None = None,
    ) -> bytes:
        """The stored bytes of a media item of `run_id` by digest, streamed in chunks."""
        request = query_pb2.DownloadMediaRequest(project=project, run_id=run_id, sha256=sha256)
        chunks, size = [], 0
        with contextlib.closing(self._stream("DownloadMedia", request, timeout_s)) as parts:
            for part in parts:
                size += len(part.chunk)
                if max_bytes is not None and size > max_bytes:
                    message = f"media {sha256[:12]} is over {max_bytes:,} bytes"
                    raise ServerError(message, "RESOURCE_EXHAUSTED", message)
                chunks.append(part.chunk)
        return b"".join(chunks)
