"""runstream.init() settings for tests against a server or a fake: quick flushes and reconnects,
a spool under the test's tmp_path, no system-metrics thread, no package capture."""

from __future__ import annotations

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
