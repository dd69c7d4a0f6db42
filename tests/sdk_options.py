"""runstream.init() settings for tests against a server or a fake: quick flushes and reconnects,
a spool under the test's tmp_path, no system-metrics thread, no package capture; and `wait_for`,
the SDK tests' poll for what the worker does in the background."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def quick_sdk_options(endpoint: str, tmp_path: Path, **overrides) -> dict:
    """Keyword arguments for runstream.init(); `overrides` win."""
    return {
        "endpoint": endpoint,
        "spool_dir": str(tmp_path / "spool"),
        "flush_interval_s": 0.05,
        "system_metrics_interval_s": 0,
        "capture_packages": False,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.5,
        **overrides,
    }


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """Polls `condition` until it holds or `timeout_s` passed; its last answer."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
