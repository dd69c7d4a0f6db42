"""`runstream sync [PATH ...]`: uploads spooled runs (offline runs, or what an online run could not
deliver) with the (client_id, seq) they were recorded with, so a second sync stores nothing twice.
Synced files get a `<client_id>.synced` marker; files a live process still writes are skipped."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from runstream.config import resolve
from runstream.errors import RunstreamError


class _Progress:
    """tqdm when installed, plain lines otherwise."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.label, self.total, self.enabled = label, total, enabled
        self._bar = None
        self._last_print = 0.0
        self._done = 0
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, desc=label, unit="req", leave=True)
            except ImportError:
                pass

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            if self._bar.total != total:
                self._bar.total = total
            self._bar.update(done - self._done)
        elif done == total or time.monotonic() - self._last_print > 1.0:
            self._last_print = time.monotonic()
            print(f"{self.label}: {done}/{total} requests", flush=True)
        self._done = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def sync_paths(
    paths: list[str | Path],
    endpoint: str | None = None,
    api_key: str | None = None,
    progress: bool = True,
    timeout_s: float = 600.0,
    out=sys.stdout,
) -> dict:
    """Uploads every unsynced spool file under `paths`. Returns counts (files, requests, points,
    refused, skipped, incomplete)."""
    from runstream._internal.replay import replay_file, replayable_files
    from runstream._internal.worker import Worker

    settings = resolve(endpoint=endpoint, api_key=api_key)
    roots = [Path(p).expanduser() for p in paths] or [settings.spool_path]
    files = replayable_files(roots)
    totals = {"files": 0, "requests": 0, "points": 0, "refused": 0, "skipped": 0, "incomplete": 0}
    if not files:
        print(f"runstream sync: nothing to upload under {', '.join(map(str, roots))}", file=out)
        return totals
    worker = Worker.get()
    for path in files:
        label = f"{path.parent.name}/{path.stem[:8]}"
        bar = _Progress(label, 0, progress)
        try:
            result = worker.call(replay_file(worker, settings, path, timeout_s, progress=bar), timeout_s + 60)
        finally:
            bar.close()
        if result is None:
            totals["skipped"] += 1
            print(f"{label}: skipped, a running process is still writing it", file=out)
            continue
        totals["files"] += 1
        totals["requests"] += result.requests
        totals["points"] += result.points
        totals["refused"] += result.refused
        if not result.complete:
            totals["incomplete"] += 1
            print(
                f"{label}: not all requests were acknowledged by {settings.endpoint}; run sync again",
                file=out,
            )
        for message in result.messages:
            print(f"{label}: refused by the server: {message}", file=out)
    print(
        f"runstream sync: {totals['files']} file(s), {totals['requests']} requests, {totals['points']} points "
        f"uploaded to {settings.endpoint}; {totals['refused']} refused, {totals['skipped']} skipped, "
        f"{totals['incomplete']} incomplete",
        file=out,
    )
    return totals


def main(args: argparse.Namespace) -> int:
    try:
        totals = sync_paths(
            list(args.paths or []),
            endpoint=getattr(args, "endpoint", None),
            api_key=getattr(args, "api_key", None),
            progress=not getattr(args, "no_progress", False),
        )
    except RunstreamError as exc:
        print(f"runstream sync: {exc}", file=sys.stderr)
        return 2
    return 1 if totals["incomplete"] or totals["refused"] else 0
