"""The lineage graph `runstream.Api().lineage(...)` returns: nodes (runs, artifact versions, model
versions, datasets) and edges in the direction data flowed, as plain dataclasses; `to_pandas()`
gives two DataFrames (pandas is imported only then).

    g = api.lineage("mnist", "classifier@production")
    g.upstream_runs()             # the runs the production model came from, nearest first
    nodes, edges = g.to_pandas()
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runstream.v1 import registry_pb2

DIRECTIONS = {
    "both": registry_pb2.LINEAGE_DIRECTION_BOTH,
    "upstream": registry_pb2.LINEAGE_DIRECTION_UPSTREAM,
    "downstream": registry_pb2.LINEAGE_DIRECTION_DOWNSTREAM,
}


@dataclass(frozen=True)
class LineageNode:
    """One node. `id` is "run/<id>", "artifact/<name>:<v>", "model_version/<model>:<v>" or
    "dataset/<name>@<version>"; `depth` counts hops from the start (negative: upstream);
    `missing`: referenced but not stored (deleted, never logged, or not written yet)."""

    id: str
    kind: str
    name: str
    version: str
    label: str
    missing: bool
    depth: int
    properties: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LineageEdge:
    """source -> target, the way data flowed: produced, registered_as or input."""

    source: str
    target: str
    relation: str


@dataclass(frozen=True)
class LineageGraph:
    start: str
    nodes: list[LineageNode]
    edges: list[LineageEdge]
    truncated: bool  # the depth or node bound left something out

    @classmethod
    def from_proto(cls, resp: registry_pb2.GetLineageResponse) -> LineageGraph:
        nodes = [
            LineageNode(n.id, n.kind, n.name, n.version, n.label, n.missing, n.depth, dict(n.properties))
            for n in resp.nodes
        ]
        edges = [LineageEdge(e.source, e.target, e.relation) for e in resp.edges]
        return cls(resp.start, nodes, edges, resp.truncated)

    def node(self, node_id: str) -> LineageNode:
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    @property
    def missing(self) -> list[LineageNode]:
        return [n for n in self.nodes if n.missing]

    def upstream_runs(self) -> list[LineageNode]:
        """The runs upstream of the start, nearest first."""
        return sorted((n for n in self.nodes if n.kind == "run" and n.depth < 0), key=lambda n: -n.depth)

    def downstream_runs(self) -> list[LineageNode]:
        """The runs downstream of the start, nearest first."""
        return sorted((n for n in self.nodes if n.kind == "run" and n.depth > 0), key=lambda n: n.depth)

    def to_pandas(self) -> tuple[Any, Any]:
        """(nodes, edges) as DataFrames: nodes with id, kind, name, version, label, missing, depth
        and one column per property; edges with source, target, relation."""
        import pandas as pd

        props = sorted({k for n in self.nodes for k in n.properties})
        nodes = pd.DataFrame(
            [
                {
                    "id": n.id,
                    "kind": n.kind,
                    "name": n.name,
                    "version": n.version,
                    "label": n.label,
                    "missing": n.missing,
                    "depth": n.depth,
                }
                | {k: n.properties.get(k) for k in props}
                for n in self.nodes
            ],  # fmt: skip
            columns=["id", "kind", "name", "version", "label", "missing", "depth", *props],
        )
        edges = pd.DataFrame(
            [{"source": e.source, "target": e.target, "relation": e.relation} for e in self.edges],
            columns=["source", "target", "relation"],
        )
        return nodes, edges


__all__ = ["DIRECTIONS", "LineageEdge", "LineageGraph", "LineageNode"]
