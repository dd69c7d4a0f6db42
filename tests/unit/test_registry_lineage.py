"""The lineage walk (registry/lineage.py) over an in-memory graph — a stand-in for the store,
since the walk's rules (once per node and side, depth and node bounds, missing nodes) are what is
tested here; tests/integration/test_registry_lineage.py walks the real store — and the version
claim of registry/service.py: two RegistryServicers (as two processes serving one database would
be: separate locks) creating versions of one model at once on real in-process chDB."""

from __future__ import annotations

import asyncio
import json

import pytest

from runstream.v1 import registry_pb2
from runstream_services.errors import AlreadyExists, InvalidArgument
from runstream_services.registry import lineage as lg
from runstream_services.registry import rules
from runstream_services.registry.lineage import Edge, NodeInfo
from runstream_services.registry.service import RegistryServicer
from runstream_services.storage import migrations
from runstream_services.storage.clickhouse import ClientPool, connect


class MemoryLineage:
    """Edges held in a list (stand-in for StoreLineage); counts the lookups it answers."""

    def __init__(self, edges: list[Edge], existing: set[lg.Ref]):
        self.edges, self.existing = edges, existing
        self.calls = 0

    async def upstream(self, refs):
        self.calls += 1
        return [e for e in self.edges if e.target in refs]

    async def downstream(self, refs):
        self.calls += 1
        return [e for e in self.edges if e.source in refs]

    async def describe(self, refs):
        return {r: NodeInfo(r.label) for r in refs if r in self.existing}


def _chain(n: int) -> tuple[list[Edge], list[lg.Ref]]:
    runs = [lg.run(f"r{i}") for i in range(n)]
    edges = []
    for i in range(n - 1):
        art = lg.artifact(f"a{i}", 1)
        edges += [Edge(runs[i], art, lg.PRODUCED), Edge(art, runs[i + 1], lg.INPUT)]
    return edges, runs


def walk(source, start, direction=lg.BOTH, depth=10, nodes=500):
    return asyncio.run(lg.walk(source, start, direction, depth, nodes))


def test_a_chain_is_walked_both_ways_with_signed_depths():
    edges, runs = _chain(4)
    source = MemoryLineage(edges, set(runs) | {e.target for e in edges})
    g = walk(source, runs[2])
    assert g.depth[runs[0]] == -4 and g.depth[runs[1]] == -2 and g.depth[runs[3]] == 2
    assert set(g.edges) == set(edges) and not g.truncated and not g.missing()
    up = walk(source, runs[2], lg.UPSTREAM)
    assert runs[3] not in up.depth and runs[0] in up.depth


def test_a_cycle_ends_and_every_node_is_expanded_once_per_side():
    x, y = lg.run("x"), lg.run("y")
    ax, ay = lg.artifact("ax", 1), lg.artifact("ay", 1)
    z = lg.model_version("z", 1)
    edges = [Edge(x, ax, lg.PRODUCED), Edge(ax, y, lg.INPUT), Edge(y, ay, lg.PRODUCED), Edge(ay, x, lg.INPUT)]
    edges.append(Edge(ay, z, lg.REGISTERED_AS))  # downstream of y's output, reached also from x
    source = MemoryLineage(edges, {x, y, ax, ay, z})
    g = walk(source, x, depth=50)
    assert set(g.depth) == {x, y, ax, ay, z} and set(g.edges) == set(edges)
    # upstream x <- ay <- y <- ax <- x: ay is found upstream first, and is still expanded downstream
    assert g.depth[ay] == -1 and g.depth[z] == 4
    assert source.calls <= 2 * 5 + 2


def test_depth_and_node_bounds_truncate_and_missing_nodes_are_kept():
    edges, runs = _chain(6)
    source = MemoryLineage(edges, set(runs[:-1]) | {e.target for e in edges if e.target.kind == lg.ARTIFACT})
    g = walk(source, runs[0], lg.DOWNSTREAM, depth=3)
    assert g.truncated and max(g.depth.values()) == 3
    g = walk(source, runs[0], lg.DOWNSTREAM, depth=50, nodes=4)
    assert g.truncated and len(g.depth) == 4
    assert all(e.source in g.depth and e.target in g.depth for e in g.edges)
    g = walk(source, runs[0], lg.DOWNSTREAM, depth=50)
    assert not g.truncated and g.missing() == [runs[-1]]
    lonely = walk(MemoryLineage([], set()), lg.model_version("m", 9))
    assert lonely.missing() == [lg.model_version("m", 9)] and not lonely.edges


def test_refs_tokens_and_limits():
    assert rules.parse_ref("clf") == ("clf", 0, "")
    assert rules.parse_ref("clf:3") == ("clf", 3, "")
    assert rules.parse_ref("a:b") == ("a:b", 0, "")
    assert rules.parse_ref("clf@prod") == ("clf", 0, "prod")
    for bad in ("", "@prod", "clf@3x", "clf:0"):
        with pytest.raises(InvalidArgument):
            rules.parse_ref(bad)
    token = rules.page_token("events", [5, 7])
    assert rules.read_page_token("events", token) == [5, 7] and rules.read_page_token("events", "") is None
    for bad in ("garbage", rules.page_token("models", "x")):
        with pytest.raises(InvalidArgument):
            rules.read_page_token("events", bad)
    assert rules.page_size(0) == rules.DEFAULT_PAGE
    with pytest.raises(InvalidArgument):
        rules.page_size(rules.MAX_PAGE + 1)
    assert lg.limits(0, 0) == (lg.DEFAULT_DEPTH, lg.DEFAULT_NODES) and lg.limits(999, 10**6) == (50, 5000)
    assert lg.dataset("d", "v1").id == "dataset/d@v1" and lg.model_version("m", 2).id == "model_version/m:2"


def test_two_registry_processes_never_hand_out_one_version_number_twice(chdb_dsn, database):
    """Two servicers share the store but not their per-model locks, like two query replicas: the
    deduplicated claim gives each version number to one of them. (Rows of the run and its
    artifact are inserted straight into the tables: a stand-in for the ingest path.)"""
    client = connect(chdb_dsn)
    migrations.migrate(client, database)
    client.insert(
        f"{database}.runs",
        [["p", "r1", "", 0, "[]", 1]],
        column_names=["project", "run_id", "git_commit", "git_dirty", "datasets", "version"],
    )
    client.insert(
        f"{database}.artifacts",
        [["p", "r1", "model", "model.bin", 1, "t1", "a" * 64, 3]],
        column_names=["project", "run_id", "name", "path", "version", "version_tag", "sha256", "size"],
    )
    pool = ClientPool(chdb_dsn, size=4)
    replicas = [RegistryServicer(pool, database), RegistryServicer(pool, database)]
    request = registry_pb2.CreateModelVersionRequest(
        project="p", model="m", run_id="r1", artifact_name="model", create_model=True
    )

    async def create_many() -> list[int]:
        # the model does not exist yet: every call may create it (create_model), one does
        done = await asyncio.gather(*(replicas[i % 2].CreateModelVersion(request, None) for i in range(16)))
        return [r.version.version for r in done]

    versions = asyncio.run(create_many())
    assert sorted(versions) == list(range(1, 17))
    stored = client.query(
        f"SELECT version, count() FROM {database}.model_versions GROUP BY version"
    ).result_rows
    assert sorted(stored) == [(v, 1) for v in range(1, 17)]
    created = client.query(
        f"SELECT count() FROM {database}.audit_log WHERE action = 'model.created'"
    ).result_rows
    assert created == [(1,)]


def test_alias_moves_from_two_registry_processes_form_one_chain(chdb_dsn, database):
    """Two servicers (separate locks, like two query replicas) move one alias at the same time:
    the moves are claimed one after another, so sorted by revision every move starts where the
    previous one ended, the audit log says the same, and the alias ends where the last move put it.
    (Run and artifact rows inserted straight into the tables: a stand-in for the ingest path.)"""
    client = connect(chdb_dsn)
    migrations.migrate(client, database)
    client.insert(
        f"{database}.runs",
        [["p", "r1", "", 0, "[]", 1]],
        column_names=["project", "run_id", "git_commit", "git_dirty", "datasets", "version"],
    )
    client.insert(
        f"{database}.artifacts",
        [["p", "r1", "model", "model.bin", 1, "t1", "a" * 64, 3]],
        column_names=["project", "run_id", "name", "path", "version", "version_tag", "sha256", "size"],
    )
    pool = ClientPool(chdb_dsn, size=4)
    replicas = [RegistryServicer(pool, database), RegistryServicer(pool, database)]
    create = registry_pb2.CreateModelVersionRequest(
        project="p", model="m", run_id="r1", artifact_name="model", create_model=True
    )

    async def moves() -> list[registry_pb2.SetAliasResponse]:
        for _ in range(3):
            await replicas[0].CreateModelVersion(create, None)
        requests = [
            registry_pb2.SetAliasRequest(project="p", model="m", alias="staging", version=1 + i % 3)
            for i in range(12)
        ]
        return await asyncio.gather(*(replicas[i % 2].SetAlias(r, None) for i, r in enumerate(requests)))

    answers = asyncio.run(moves())
    rows = client.query(
        f"SELECT from_version, to_version, revision FROM {database}.model_alias_moves ORDER BY revision"
    ).result_rows
    assert len({r[2] for r in rows}) == len(rows)
    chain = [(int(f), int(t)) for f, t, _ in rows]
    assert chain[0][0] == 0 and all(chain[i][0] == chain[i - 1][1] for i in range(1, len(chain))), chain
    assert all(f != t for f, t in chain)
    # every call's answer is the move it made (or, for a move to the current target, that target)
    made = sorted((a.previous_version, a.version) for a in answers if a.previous_version != a.version)
    assert made == sorted(chain)
    audit = client.query(
        f"SELECT detail FROM {database}.audit_log WHERE action LIKE 'alias.%' ORDER BY time_ms"
    ).result_rows
    assert sorted((json.loads(d)["from"], json.loads(d)["to"]) for (d,) in audit) == sorted(chain)
    current = asyncio.run(replicas[1].GetModel(registry_pb2.GetModelRequest(project="p", name="m"), None))
    assert current.model.aliases["staging"] == chain[-1][1]


def test_metadata_edits_from_two_registry_processes_lose_nothing(chdb_dsn, database):
    """Ten concurrent tag edits of one version and of its model, split over two servicers: each
    edit starts from the one before it, so every tag is kept and the history has one row per edit.
    (Run and artifact rows inserted straight into the tables: a stand-in for the ingest path.)"""
    client = connect(chdb_dsn)
    migrations.migrate(client, database)
    client.insert(
        f"{database}.runs",
        [["p", "r1", "", 0, "[]", 1]],
        column_names=["project", "run_id", "git_commit", "git_dirty", "datasets", "version"],
    )
    client.insert(
        f"{database}.artifacts",
        [["p", "r1", "model", "model.bin", 1, "t1", "a" * 64, 3]],
        column_names=["project", "run_id", "name", "path", "version", "version_tag", "sha256", "size"],
    )
    pool = ClientPool(chdb_dsn, size=4)
    replicas = [RegistryServicer(pool, database), RegistryServicer(pool, database)]

    async def edit():
        create = registry_pb2.CreateModelVersionRequest(
            project="p", model="m", run_id="r1", artifact_name="model", create_model=True
        )
        await replicas[0].CreateModelVersion(create, None)
        await asyncio.gather(
            *(
                replicas[i % 2].UpdateModelVersion(
                    registry_pb2.UpdateModelVersionRequest(
                        project="p", model="m", version=1, set_tags={f"k{i}": "x"}
                    ),
                    None,
                )
                for i in range(10)
            ),
            *(
                replicas[i % 2].UpdateRegisteredModel(
                    registry_pb2.UpdateRegisteredModelRequest(project="p", name="m", set_tags={f"t{i}": "y"}),
                    None,
                )
                for i in range(10)
            ),
        )
        version = await replicas[1].GetModelVersion(
            registry_pb2.GetModelVersionRequest(project="p", model="m", version=1), None
        )
        model = await replicas[0].GetModel(registry_pb2.GetModelRequest(project="p", name="m"), None)
        return version.version, model.model

    version, model = asyncio.run(edit())
    assert dict(version.tags) == {f"k{i}": "x" for i in range(10)} and len(version.history) == 11
    assert dict(model.tags) == {f"t{i}": "y" for i in range(10)} and len(model.history) == 11


def test_one_model_name_is_created_once_by_two_registry_processes(chdb_dsn, database):
    migrations.migrate(connect(chdb_dsn), database)
    pool = ClientPool(chdb_dsn, size=4)
    replicas = [RegistryServicer(pool, database), RegistryServicer(pool, database)]
    request = registry_pb2.CreateRegisteredModelRequest(project="p", name="same")

    async def create() -> list:
        return await asyncio.gather(
            *(replicas[i % 2].CreateRegisteredModel(request, None) for i in range(6)), return_exceptions=True
        )

    results = asyncio.run(create())
    created = [r for r in results if isinstance(r, registry_pb2.CreateRegisteredModelResponse)]
    refused = [r for r in results if isinstance(r, AlreadyExists)]
    assert len(created) == 1 and len(refused) == 5
