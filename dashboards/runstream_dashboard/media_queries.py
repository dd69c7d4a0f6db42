"""The media loaders (ListMedia, DownloadMedia) through the one runstream.Api of queries.py
(`queries.api()`), cached per viewer like queries.py's loaders (login.per_viewer): item lists
for a few seconds (a live run logs more), bytes for long (they are content-addressed: a digest
never changes its bytes). A failed call raises runstream.errors.ServerError, as in queries.py."""

from __future__ import annotations

import io

import pandas as pd

from runstream.media_client import MediaItem
from runstream_dashboard import login
from runstream_dashboard.queries import api

KEY_COLUMNS = ["run_id", "key", "kind", "count", "min_step", "max_step"]
MAX_ITEMS = 10_000  # items of one key and run loaded for a page


@login.per_viewer(ttl=5, show_spinner=False, max_entries=200)
def media_keys(project: str, run_ids: tuple[str, ...]) -> pd.DataFrame:
    """KEY_COLUMNS: one row per run and media key."""
    keys = api().media_keys(project, list(run_ids))
    return pd.DataFrame(
        [(k.run_id, k.key, k.kind, k.count, k.min_step, k.max_step) for k in keys], columns=KEY_COLUMNS
    )


@login.per_viewer(ttl=5, show_spinner=False, max_entries=200)
def media_items(project: str, run_ids: tuple[str, ...], key: str) -> list[MediaItem]:
    """The items of `key` in the runs (without bytes), ordered by run, step, rank, index: at most
    MAX_ITEMS per run, each run read page by page (Api.media)."""
    client = api()
    return [_detached(m) for run_id in run_ids for m in client.media(project, run_id, key, limit=MAX_ITEMS)]


@login.per_viewer(ttl=3600, show_spinner=False, max_entries=500)
def media_bytes(project: str, run_id: str, sha256: str) -> bytes:
    """The stored bytes of one media item (PNG, WAV or Parquet)."""
    return api().media_bytes(project, run_id, sha256)


@login.per_viewer(ttl=3600, show_spinner=False, max_entries=100)
def media_table(project: str, run_id: str, sha256: str) -> pd.DataFrame:
    """A logged table as a DataFrame."""
    return pd.read_parquet(io.BytesIO(media_bytes(project, run_id, sha256)))


def _detached(item: MediaItem) -> MediaItem:
    """The item without its Api (cached values must pickle; bytes come through media_bytes)."""
    import dataclasses

    return dataclasses.replace(item, _api=None)
