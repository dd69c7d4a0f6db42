"""Deliberate faults for the dashboard process, to prove the browser tests can fail.

`RUNSTREAM_E2E_FAULT=<name> pytest tests/e2e/test_dashboard_pages_browser.py` starts Streamlit
through `apply()` (see DashboardProcess), which breaks one behaviour before the app runs; the test
that covers it must then fail. Only pure modules are patched (runstream.Api, the dashboard's
charts), never the views, so the page code under test is the shipped code. Never set in CI."""

from __future__ import annotations

import os
from collections.abc import Callable

ENV = "RUNSTREAM_E2E_FAULT"


def _ema_ignored() -> None:
    """Smoothing slider has no effect: curves are always drawn raw."""
    import numpy as np

    from runstream_dashboard import charts

    charts.ema = lambda values, weight: np.asarray(values, dtype=float)


def _log_y_ignored() -> None:
    """The Log y toggle has no effect."""
    from runstream_dashboard import charts

    real = charts.learning_curves
    charts.learning_curves = lambda *args, **kwargs: real(*args, **{**kwargs, "log_y": False})


def _x_axis_ignored() -> None:
    """The X axis control asks the server for times but draws them as they come (no conversion)."""
    from runstream_dashboard import charts

    charts._x_values = lambda x, x_axis: x


def _sweep_first_run_only() -> None:
    """The parallel-coordinates chart drops every run but the best one."""
    from runstream_dashboard import charts

    real = charts.parallel_coordinates
    charts.parallel_coordinates = lambda runs, *args, **kwargs: real(runs.head(1), *args, **kwargs)


def _compare_configs_equal() -> None:
    """Compare shows the first run's config for every run (so nothing differs)."""
    from runstream_dashboard import charts

    real = charts.config_diff

    def config_diff(configs: dict, only_different: bool = True):
        first = next(iter(configs.values()), {})
        return real(dict.fromkeys(configs, first), only_different)

    charts.config_diff = config_diff


def _series_frozen() -> None:
    """Metric series never refresh: each request is answered with its first answer forever."""
    from runstream import Api

    real = Api.series_arrays
    first: dict = {}

    def series_arrays(self, project, run_ids, keys, *args, **kwargs):
        signature = (project, tuple(run_ids), tuple(keys), args, tuple(sorted(kwargs.items())))
        if signature not in first:
            first[signature] = real(self, project, run_ids, keys, *args, **kwargs)
        return first[signature]

    Api.series_arrays = series_arrays


def _download_corrupt() -> None:
    """Artifact downloads lose their last byte."""
    from runstream import Api

    real = Api.download_artifact
    Api.download_artifact = lambda self, *args, **kwargs: real(self, *args, **kwargs)[:-1]


def _lineage_direction_ignored() -> None:
    """The lineage Direction control has no effect: the graph is always asked for both ways."""
    from runstream import Api

    real = Api.lineage
    Api.lineage = lambda self, *args, **kwargs: real(self, *args, **{**kwargs, "direction": "both"})


def _lineage_downstream_dropped() -> None:
    """The lineage figure leaves out what was made from the start (nodes right of it)."""
    import dataclasses

    from runstream_dashboard import lineage_chart

    real = lineage_chart.lineage_figure

    def lineage_figure(graph, *args, **kwargs):
        kept = [n for n in graph.nodes if n.depth <= 0]
        ids = {n.id for n in kept}
        edges = [e for e in graph.edges if e.source in ids and e.target in ids]
        return real(dataclasses.replace(graph, nodes=kept, edges=edges), *args, **kwargs)

    lineage_chart.lineage_figure = lineage_figure


FAULTS: dict[str, Callable[[], None]] = {
    "ema_ignored": _ema_ignored,
    "log_y_ignored": _log_y_ignored,
    "x_axis_ignored": _x_axis_ignored,
    "sweep_first_run_only": _sweep_first_run_only,
    "compare_configs_equal": _compare_configs_equal,
    "series_frozen": _series_frozen,
    "download_corrupt": _download_corrupt,
    "lineage_direction_ignored": _lineage_direction_ignored,
    "lineage_downstream_dropped": _lineage_downstream_dropped,
}


def apply() -> None:
    """Applies the fault named by RUNSTREAM_E2E_FAULT (an unknown name is an error, not a no-op)."""
    name = os.environ.get(ENV, "")
    if name not in FAULTS:
        raise SystemExit(f"{ENV}={name!r}: expected one of {', '.join(FAULTS)}")
    FAULTS[name]()
