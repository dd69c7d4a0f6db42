"""The lineage figure (dashboards/runstream_dashboard/lineage_chart.py, pure Plotly): layers by
depth, one trace per node kind plus one for missing nodes, the start drawn larger, every edge drawn,
and logged text escaped (a run name is anyone's text)."""

from __future__ import annotations

from runstream.lineage import LineageEdge, LineageGraph, LineageNode
from runstream_dashboard.lineage_chart import lineage_figure, positions


def _graph() -> LineageGraph:
    nodes = [
        LineageNode("model_version/clf:1", "model_version", "clf", "1", "clf:1", False, 0),
        LineageNode("artifact/model:1", "artifact", "model", "1", "model:1", False, -1),
        LineageNode("run/r1", "run", "r1", "", '<a href="https://evil">train</a>', False, -2),
        LineageNode("dataset/raw@v1", "dataset", "raw", "v1", "raw@v1", False, -3),
        LineageNode("dataset/extra@v2", "dataset", "extra", "v2", "extra@v2", False, -3),
        LineageNode("run/gone", "run", "gone", "", "gone", True, 1),
    ]
    edges = [
        LineageEdge("artifact/model:1", "model_version/clf:1", "registered_as"),
        LineageEdge("run/r1", "artifact/model:1", "produced"),
        LineageEdge("dataset/raw@v1", "run/r1", "input"),
        LineageEdge("dataset/extra@v2", "run/r1", "input"),
        LineageEdge("model_version/clf:1", "run/gone", "input"),
    ]
    return LineageGraph("model_version/clf:1", nodes, edges, False)


def test_layers_follow_depth_and_spread_within_a_layer():
    pos = positions(_graph())
    assert pos["run/r1"][0] == -2 and pos["model_version/clf:1"] == (0.0, 0.0)
    assert {pos["dataset/raw@v1"][1], pos["dataset/extra@v2"][1]} == {0.5, -0.5}
    assert pos == positions(_graph())  # the same places on every redraw


def test_one_trace_per_kind_missing_apart_start_larger_and_text_escaped():
    fig = lineage_figure(_graph())
    traces = {t.name: t for t in fig.data if t.customdata is not None}
    assert set(traces) == {"dataset", "run", "artifact", "model version", "missing"}
    assert list(traces["missing"].customdata) == ["run/gone"] and list(traces["run"].customdata) == ["run/r1"]
    assert list(traces["model version"].marker.size) == [22] and list(traces["run"].marker.size) == [15]
    run_text = traces["run"].text[0] + traces["run"].hovertext[0]
    assert "<a" not in run_text and "&lt;a" in run_text
    assert len(fig.layout.annotations) == 5  # one arrow per edge
    lines = next(t for t in fig.data if t.name == "edges")
    assert sum(x is None for x in lines.x) == 5
