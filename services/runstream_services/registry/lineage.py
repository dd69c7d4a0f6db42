"""The lineage walk, free of gRPC and SQL: from one node (a run, an artifact version, a model
version) breadth-first upstream (what it was made from) and/or downstream (what was made from it),
one batched lookup per level and side.

The graph's nodes are runs, artifact versions (artifact versions are numbered per project and
name), model versions and datasets (name + version, as runs recorded them). Edges always point the
way data flowed: run -> artifact (produced), artifact -> model_version (registered_as), and
dataset / artifact / model_version -> run (input). Where the edges come from is a `LineageSource`
(lineage_store.py reads them from the store); this module only decides what to ask and when to
stop:

- every node is expanded at most once per side, so a cycle (a run consuming a model made from
  its own artifact) ends the walk instead of looping;
- `max_depth` bounds the hops from the start on each side and `max_nodes` the graph; when either
  leaves something out, `truncated` says so;
- a node that an edge names but that is not stored (a deleted run, a version whose artifact rows
  are gone, an input that was never logged) is kept and marked missing: `describe` returns facts
  only for what exists."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

RUN, ARTIFACT, MODEL_VERSION, DATASET = "run", "artifact", "model_version", "dataset"
KINDS = (RUN, ARTIFACT, MODEL_VERSION, DATASET)
PRODUCED, REGISTERED_AS, INPUT = "produced", "registered_as", "input"
BOTH, UPSTREAM, DOWNSTREAM = 0, 1, 2  # LineageDirection values

DEFAULT_DEPTH = 10
MAX_DEPTH = 50
DEFAULT_NODES = 500
MAX_NODES = 5_000


@dataclass(frozen=True, order=True)
class Ref:
    """A node's identity: its kind, name (the run id for a run) and version ("" for a run)."""

    kind: str
    name: str
    version: str = ""

    @property
    def id(self) -> str:
        if self.kind == RUN:
            return f"run/{self.name}"
        if self.kind == DATASET:
            return f"dataset/{self.name}@{self.version}"
        return f"{self.kind}/{self.name}:{self.version}"

    @property
    def label(self) -> str:
        if self.kind == RUN:
            return self.name
        return f"{self.name}@{self.version}" if self.kind == DATASET else f"{self.name}:{self.version}"


def run(run_id: str) -> Ref:
    return Ref(RUN, run_id)


def artifact(name: str, version: int) -> Ref:
    return Ref(ARTIFACT, name, str(int(version)))


def model_version(model: str, version: int) -> Ref:
    return Ref(MODEL_VERSION, model, str(int(version)))


def dataset(name: str, version: str) -> Ref:
    return Ref(DATASET, name, version)


@dataclass(frozen=True, order=True)
class Edge:
    source: Ref
    target: Ref
    relation: str


@dataclass(frozen=True)
class NodeInfo:
    """What the store holds about a node that exists: a label to show and display facts."""

    label: str
    properties: dict[str, str] = field(default_factory=dict)


class LineageSource(Protocol):
    """Where edges and node facts come from. Each call gets one level's nodes at once."""

    async def upstream(self, refs: list[Ref]) -> list[Edge]:
        """Edges whose target is one of `refs`."""
        ...

    async def downstream(self, refs: list[Ref]) -> list[Edge]:
        """Edges whose source is one of `refs`."""
        ...

    async def describe(self, refs: list[Ref]) -> dict[Ref, NodeInfo]:
        """Facts of those of `refs` that exist; the others are missing."""
        ...


@dataclass
class Graph:
    start: Ref
    depth: dict[Ref, int]  # node -> hops from the start (negative upstream), in discovery order
    edges: list[Edge]
    infos: dict[Ref, NodeInfo]
    truncated: bool

    def missing(self) -> list[Ref]:
        return [r for r in self.depth if r not in self.infos]


def limits(max_depth: int, max_nodes: int) -> tuple[int, int]:
    """The depth and node bounds a request asked for (0: the defaults), capped."""
    return min(max_depth or DEFAULT_DEPTH, MAX_DEPTH), min(max_nodes or DEFAULT_NODES, MAX_NODES)


async def walk(source: LineageSource, start: Ref, direction: int, max_depth: int, max_nodes: int) -> Graph:
    """The lineage graph around `start` (see the module docstring)."""
    depth: dict[Ref, int] = {start: 0}
    edges: dict[Edge, None] = {}
    truncated = False
    sides = {BOTH: (UPSTREAM, DOWNSTREAM), UPSTREAM: (UPSTREAM,), DOWNSTREAM: (DOWNSTREAM,)}[direction]
    for side in sides:
        up = side == UPSTREAM
        expanded: set[Ref] = set()
        frontier = [start]
        level = 0
        while frontier:
            expanded.update(frontier)
            found = await (source.upstream(frontier) if up else source.downstream(frontier))
            near = set(frontier)
            following: list[Ref] = []
            for edge in sorted(set(found)):
                here, other = (edge.target, edge.source) if up else (edge.source, edge.target)
                if here not in near:
                    continue  # not asked for: a source may return more than it was asked
                if other not in depth:
                    if level >= max_depth or len(depth) >= max_nodes:
                        truncated = True
                        continue
                    depth[other] = -(level + 1) if up else level + 1
                edges.setdefault(edge)
                if other not in expanded and other not in following:
                    following.append(other)
            frontier = following
            level += 1
    infos = await source.describe(list(depth))
    return Graph(start, depth, list(edges), infos, truncated)


def by_kind(refs: Iterable[Ref]) -> dict[str, list[Ref]]:
    out: dict[str, list[Ref]] = {k: [] for k in KINDS}
    for r in refs:
        out[r.kind].append(r)
    return out
