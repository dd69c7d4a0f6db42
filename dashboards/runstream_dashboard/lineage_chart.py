"""The lineage graph as a Plotly figure (pure: a LineageGraph in, a Figure out). Layered by depth:
upstream nodes to the left of the start, downstream ones to the right, one column per hop; edges
are arrows the way data flowed. One trace per node kind (the legend names them) and one for
missing nodes (referenced but not stored), so each reads at a glance. Every label passes through
safe_text.plotly_text: run names and artifact names are anyone's text."""

from __future__ import annotations

from collections import defaultdict

import plotly.graph_objects as go

from runstream.lineage import LineageGraph, LineageNode
from runstream_dashboard.safe_text import plotly_text

KIND_STYLE = {  # kind -> (legend name, marker symbol, color)
    "dataset": ("dataset", "triangle-up", "#2ca02c"),
    "run": ("run", "circle", "#1f77b4"),
    "artifact": ("artifact", "square", "#ff7f0e"),
    "model_version": ("model version", "diamond", "#9467bd"),
}
MISSING_COLOR = "#9e9e9e"
MAX_ARROWS = 300  # beyond this, edges are drawn as lines only (annotations are slow to draw)


def positions(graph: LineageGraph) -> dict[str, tuple[float, float]]:
    """node id -> (x, y): x is the depth; the nodes of one depth are spread evenly around y = 0,
    ordered by kind then label so a redraw puts them in the same places."""
    order = {k: i for i, k in enumerate(KIND_STYLE)}
    layers: dict[int, list[LineageNode]] = defaultdict(list)
    for n in graph.nodes:
        layers[n.depth].append(n)
    out = {}
    for depth, nodes in layers.items():
        nodes.sort(key=lambda n: (order.get(n.kind, 99), n.label, n.id))
        for i, n in enumerate(nodes):
            out[n.id] = (float(depth), (len(nodes) - 1) / 2 - i)
    return out


def _hover(n: LineageNode) -> str:
    lines = [f"<b>{plotly_text(n.label)}</b>", plotly_text(n.kind.replace("_", " "))]
    if n.missing:
        lines.append("missing: referenced but not stored")
    for k, v in sorted(n.properties.items()):
        if v:
            lines.append(f"{plotly_text(k)}: {plotly_text(v[:80])}")
    return "<br>".join(lines)


def lineage_figure(graph: LineageGraph, height: int = 520) -> go.Figure:
    pos = positions(graph)
    fig = go.Figure()
    xs: list[float | None] = []
    ys: list[float | None] = []
    for e in graph.edges:
        if e.source in pos and e.target in pos:
            (x0, y0), (x1, y1) = pos[e.source], pos[e.target]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
    fig.add_trace(
        go.Scatter(x=xs, y=ys, mode="lines", line={"color": "#b0b0b0", "width": 1.2}, hoverinfo="skip", name="edges",
                   showlegend=False)
    )  # fmt: skip
    if len(graph.edges) <= MAX_ARROWS:
        for e in graph.edges:
            if e.source in pos and e.target in pos:
                (x0, y0), (x1, y1) = pos[e.source], pos[e.target]
                fig.add_annotation(
                    x=x1, y=y1, ax=x0, ay=y0, xref="x", yref="y", axref="x", ayref="y", text="",
                    showarrow=True, arrowhead=2, arrowsize=1.2, arrowwidth=1.2, arrowcolor="#8c8c8c",
                    standoff=9, startstandoff=9,
                )  # fmt: skip
    groups: dict[str, list[LineageNode]] = defaultdict(list)
    for n in graph.nodes:
        groups["missing" if n.missing else n.kind].append(n)
    for kind in [*KIND_STYLE, "missing"]:
        nodes = groups.get(kind)
        if not nodes:
            continue
        name, symbol, color = KIND_STYLE.get(kind, ("missing", "x-open", MISSING_COLOR))
        fig.add_trace(
            go.Scatter(
                x=[pos[n.id][0] for n in nodes],
                y=[pos[n.id][1] for n in nodes],
                mode="markers+text",
                name=name,
                text=[plotly_text(n.label if len(n.label) <= 28 else n.label[:27] + "…") for n in nodes],
                textposition="top center",
                customdata=[n.id for n in nodes],
                hovertext=[_hover(n) for n in nodes],
                hoverinfo="text",
                marker={
                    "symbol": symbol,
                    "color": color,
                    "size": [22 if n.id == graph.start else 15 for n in nodes],
                    "line": {"width": [3 if n.id == graph.start else 1 for n in nodes], "color": "#222"},
                },
            )  # fmt: skip
        )
    depths = sorted({n.depth for n in graph.nodes}) or [0]
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        legend={"orientation": "h", "y": 1.06},
        xaxis={
            "tickmode": "array", "tickvals": depths, "zeroline": False, "showgrid": False,
            "ticktext": ["start" if d == 0 else (f"{-d} up" if d < 0 else f"{d} down") for d in depths],
            "range": [depths[0] - 0.6, depths[-1] + 0.6],
        },
        yaxis={"visible": False},
        hovermode="closest",
    )  # fmt: skip
    return fig
