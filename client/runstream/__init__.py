"""Runstream SDK: log runs, metrics and artifacts from training jobs.

import runstream
with runstream.init(project="mnist", config={"lr": 1e-3}) as run:
    for step in range(1000):
        run.log({"loss": loss}, step=step)

Module-level shortcuts (runstream.log, runstream.config, ...) act on the current run: the one the
latest `runstream.init` returned.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if "grpc" not in sys.modules:
    # gRPC core's fork handlers run only when no thread is inside gRPC at fork(), which is never the
    # case while a run's worker thread polls its stream: they are skipped and the child then crashes
    # now and then (SIGABRT/SIGSEGV in ev_epoll1). The SDK's forked children never use gRPC (they
    # spool; the parent uploads), so fork support is turned off unless the program chose otherwise.
    # Read by gRPC at import: without effect when grpc was imported first.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from runstream._internal.lifecycle import current_run
from runstream._internal.start import init, set_seed
from runstream.config import Settings
from runstream.errors import (
    ConfigError,
    FlushTimeoutError,
    InvalidValueError,
    NotInitializedError,
    RefusedWarning,
    RunFinishedError,
    RunstreamError,
    ServerError,
    ServerUnavailableError,
    SpoolError,
)
from runstream.media import Audio, Histogram, Image, Table, Text
from runstream.run import Run

if TYPE_CHECKING:
    from runstream.run import Timestamp

__version__ = "0.1.0"


def _run() -> Run:
    run = current_run()
    if run is None:
        raise NotInitializedError("no active run: call runstream.init(project=...) first")
    return run


def log(data: dict[str, Any], step: int | None = None, *, timestamp: Timestamp | None = None) -> None:
    """run.log on the current run."""
    _run().log(data, step, timestamp=timestamp)


def log_arrays(key_or_dict, steps, values=None, *, timestamp: Timestamp | None = None, times=None) -> None:
    """run.log_arrays on the current run."""
    _run().log_arrays(key_or_dict, steps, values, timestamp=timestamp, times=times)


def log_artifact(path, name: str | None = None, type: str | None = None) -> dict:
    """run.log_artifact on the current run."""
    return _run().log_artifact(path, name=name, type=type)


def use_dataset(name: str, path_or_hash, uri: str | None = None) -> str:
    """run.use_dataset on the current run."""
    return _run().use_dataset(name, path_or_hash, uri)


def finish(
    state: str = "finished", timeout_s: float | None = None, *, end_time: Timestamp | None = None
) -> bool:
    """Finishes the current run (no-op without one)."""
    run = current_run()
    return run.finish(state, timeout_s, end_time=end_time) if run is not None else True


def flush(timeout_s: float = 30.0) -> None:
    """Waits until everything the current run logged is acknowledged; raises FlushTimeoutError
    when that takes longer than timeout_s (the data stays queued / spooled, nothing is lost)."""
    run = current_run()
    if run is not None and not run.flush(timeout_s):
        raise FlushTimeoutError(
            f"run {run.id!r}: not everything was acknowledged within {timeout_s}s "
            f"({run.stats.get('pending', 0)} requests pending; last error: {run.stats.get('last_error') or 'none'})"
        )


class _CurrentDict:
    """`runstream.config` / `runstream.summary`: the current run's config or summary."""

    def __init__(self, attr: str):
        self._attr = attr

    def _target(self):
        return getattr(_run(), self._attr)

    def __getitem__(self, key):
        return self._target()[key]

    def __setitem__(self, key, value):
        self._target()[key] = value

    def __contains__(self, key):
        return key in self._target()

    def __iter__(self):
        return iter(self._target())

    def __len__(self):
        return len(self._target())

    def __getattr__(self, key):
        return getattr(self._target(), key)

    def __repr__(self):
        run = current_run()
        return repr(getattr(run, self._attr)) if run else f"<runstream.{self._attr}: no active run>"


def __getattr__(name: str):
    if name == "Api":  # the read API (pandas optional): imported only when asked for
        from runstream.api import Api

        return Api
    raise AttributeError(f"module 'runstream' has no attribute {name!r}")


# Replaces the `runstream.config` submodule attribute (Settings stays importable from it).
config = _CurrentDict("config")
summary = _CurrentDict("summary")

__all__ = [
    "Api",
    "Audio",
    "ConfigError",
    "FlushTimeoutError",
    "Histogram",
    "Image",
    "InvalidValueError",
    "NotInitializedError",
    "RefusedWarning",
    "Run",
    "RunFinishedError",
    "RunstreamError",
    "ServerError",
    "ServerUnavailableError",
    "Settings",
    "SpoolError",
    "Table",
    "Text",
    "__version__",
    "config",
    "current_run",
    "finish",
    "flush",
    "init",
    "log",
    "log_arrays",
    "log_artifact",
    "set_seed",
    "summary",
    "use_dataset",
]
