"""The `cluster` schema variant (storage/cluster_schema.py) renders from the migrations, every
statement parses (chDB's real parser, EXPLAIN AST), and the SQL the query and registry services
generate passes the Distributed lint (storage/distributed_lint.py), which refuses IN/JOIN
subqueries a Distributed table cannot run unless GLOBAL or co-sharded.

Rendered and parsed only: no ClickHouse cluster runs here. chDB with Debian's ZooKeeper 3.8 was
tried: chDB reads <zookeeper> and <macros> from a config file and connects (ZooKeeperSession = 1;
CREATE TABLE ... ReplicatedMergeTree writes the table's nodes into ZooKeeper), but the replica
never activates (is_readonly = 1, active_replicas = 0, BackgroundSchedulePoolTask = 0 after
35 s and after SYSTEM RESTART REPLICA), so every INSERT fails with TABLE_IS_READ_ONLY (242)."""

from __future__ import annotations

import importlib
import inspect
import re

import pytest

from runstream_services.query.filter import parse_filter, parse_order_by
from runstream_services.storage import cluster_schema
from runstream_services.storage.cluster_schema import RUN_SHARDING_KEY, ClusterSchema
from runstream_services.storage.distributed_lint import problems

DB = "rs"

FILTERS = [
    'params.optimizer = "adam" and config.lr > 0.1',
    "params.`model.depth` = 24 and not params.batch_size = 64",
    "metrics.loss.min < 3 and metrics.val_f1 > 0.85",
    "metrics.loss.count = 200 or summary.best_acc >= 0.9",
    'tags.dataset != "v2.1" and state in ("failed", "killed") and name ~ "x"',
    'run_id not in ("r00", "r01") and params.lr <= 0.003',
]
ORDERS = [["-params.lr", "metrics.val_f1", "summary.best_acc", "tags.team", "name"], []]
GENERATORS = (
    "runstream_services.query.sql_runs",
    "runstream_services.query.sql_series",
    "runstream_services.registry.sql",
)


@pytest.fixture(scope="module")
def schema() -> ClusterSchema:
    s = ClusterSchema(DB, "c1")
    s.rendered = s.render()
    return s


def _statements(schema) -> list[str]:
    return [stmt for _, _, stmts in schema.rendered for stmt in stmts]


def test_every_migration_renders_to_replicated_on_cluster_ddl(schema):
    stmts = _statements(schema)
    assert [v for v, _, _ in schema.rendered][1:] == [v for v, _, _ in cluster_schema.available()]
    for stmt in stmts:
        assert stmt.startswith("INSERT") or "ON CLUSTER 'c1'" in stmt, stmt[:80]
        assert "non_replicated_deduplication_window" not in stmt
        assert not re.search(r"ENGINE = (?!Replicated|Distributed)\w+", stmt), stmt[:120]
    creates = [s for s in stmts if "ENGINE = Replicated" in s]
    assert all("'{replica}'" in s and ("/{shard}/" in s or "/all/" in s) for s in creates)
    # backfills go through the Distributed tables and wait for the shards
    assert all("distributed_foreground_insert = 1" in s for s in stmts if s.startswith("INSERT"))


def test_final_tables_are_local_replicated_plus_distributed_sharded_by_run(schema):
    final = schema.sharding
    for table in (
        "runs",
        "params",
        "metrics",
        "metric_summaries",
        "metric_rollups",
        "artifacts",
        "run_inputs",
    ):
        assert final[table] == RUN_SHARDING_KEY, table
    assert final["client_seqs"] == final["ingested_requests"] == "cityHash64(client_id)"
    assert final["writer_intents"] is None and final["model_version_claims"] is None  # GLOBAL
    assert not any(t.endswith(("_v3", "_v4")) for t in final)  # the 0004 swap leaves no leftovers
    stmts = _statements(schema)
    last_metrics = [s for s in stmts if s.startswith(f"CREATE TABLE IF NOT EXISTS {DB}.metrics ON CLUSTER")][
        -1
    ]
    assert "AS rs.metrics_local" in last_metrics and "cityHash64(project, run_id)" in last_metrics
    # the 0004 swap re-creates the Distributed table after the local one became the new table
    assert max(i for i, s in enumerate(stmts) if s == last_metrics) > max(
        i for i, s in enumerate(stmts) if s.startswith("RENAME TABLE rs.metrics_local")
    )


def test_materialized_views_read_and_write_local_tables(schema):
    views = [s for s in _statements(schema) if s.startswith("CREATE MATERIALIZED VIEW")]
    assert len(views) == 4  # 0001 and 0003, re-created by 0004
    for view in views:
        assert re.search(r"TO rs\.\w+_local AS", view) and "FROM rs.metrics_local" in view
    assert cluster_schema.WRITER_SETTINGS["deduplicate_blocks_in_dependent_materialized_views"] == 1
    assert "deduplicate_blocks_in_dependent_materialized_views = 1" in cluster_schema.writer_profile("c1")
    assert "distributed_product_mode = 'local'" in cluster_schema.reader_profile("c1")


def test_rendered_ddl_parses(schema, chdb_dsn):
    chdb = pytest.importorskip("chdb")
    conn = chdb.connect(chdb_dsn.removeprefix("chdb://"))  # the process's one chDB folder
    try:
        for stmt in [
            *_statements(schema),
            cluster_schema.writer_profile("c1"),
            cluster_schema.reader_profile("c1"),
        ]:
            conn.query(f"EXPLAIN AST {stmt}", "TabSeparated")  # raises SYNTAX_ERROR if it does not parse
    finally:
        conn.close()


def test_a_statement_the_renderer_does_not_know_is_refused():
    with pytest.raises(Exception, match="teach"):
        ClusterSchema(DB, "c1").render_statement("OPTIMIZE TABLE rs.metrics FINAL")


# ------------------------------------------------------------------ the lint


def _value_for(name: str, annotation: str):
    by_name = {"db": DB, "project": "proj", "after": ("loss", 0, 10), "before": (5, 1), "axis": "step",
               "kind": "user", "source": "rollup", "db_table": f"{DB}.metrics FINAL", "node": None,
               "order_by": [], "rank": None, "version": 3}  # fmt: skip
    if name in by_name:
        return by_name[name]
    if "list[int]" in annotation:
        return [1, 2]
    if "list[float]" in annotation:
        return [1.0, 2.0]
    if "list" in annotation or "Sequence" in annotation:
        return ["a", "b"]
    if "bool" in annotation:
        return True
    if "int" in annotation:
        return 7
    if "dict" in annotation:
        return {}
    return "x"


def generated_sql() -> list[tuple[str, str]]:
    """(name, SQL) of every statement the query and registry services generate, with search_runs
    and count_runs over every filter and sort kind."""
    from runstream_services.query import sql_runs

    out = []
    for modname in GENERATORS:
        mod = importlib.import_module(modname)
        for name, fn in inspect.getmembers(mod, inspect.isfunction):
            if (
                fn.__module__ != modname
                or name.startswith("_")
                or name in ("series_id", "claim_token", "points_params")
            ):
                continue
            sig = inspect.signature(fn)
            args = {p: _value_for(p, str(a.annotation)) for p, a in sig.parameters.items()}
            result = fn(**args)
            sql = result if isinstance(result, str) else result.sql
            if sql.lstrip().upper().startswith(("SELECT", "WITH")) or " FROM " in sql:
                out.append((f"{modname.rsplit('.', 1)[-1]}.{name}", sql))
    for flt in FILTERS:
        for order in ORDERS:
            node, fields = parse_filter(flt), parse_order_by(order)
            out.append(
                (f"search_runs[{flt} | {order}]", sql_runs.search_runs(DB, "proj", node, fields, 50, 0).sql)
            )
        out.append((f"count_runs[{flt}]", sql_runs.count_runs(DB, "proj", parse_filter(flt)).sql))
    return out


def test_the_services_generated_sql_passes_the_distributed_lint(schema):
    statements = generated_sql()
    assert len(statements) > 60
    failures = {
        name: found for name, sql in statements if (found := problems(sql, schema.sharding, RUN_SHARDING_KEY))
    }
    assert failures == {}


def test_the_filter_subqueries_are_checked_and_found_co_sharded(schema):
    """The filters' `run_id IN (SELECT run_id FROM params|metric_summaries WHERE project = ...)`
    are the Distributed-sensitive ones: co-sharded (same project, matched on run_id)."""
    from runstream_services.query import sql_runs

    sql = sql_runs.count_runs(DB, "proj", parse_filter(FILTERS[2])).sql
    assert "run_id IN (SELECT run_id FROM rs.metric_summaries" in sql
    assert problems(sql, schema.sharding, RUN_SHARDING_KEY) == []
    # the same query, sharded another way, is refused
    other = {**schema.sharding, "metric_summaries": "cityHash64(key)"}
    assert problems(sql, other, RUN_SHARDING_KEY)


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("SELECT run_id FROM rs.runs WHERE run_id IN (SELECT run_id FROM rs.params WHERE key = 'lr')", True),
        ("SELECT run_id FROM rs.runs WHERE run_id GLOBAL IN (SELECT run_id FROM rs.params WHERE key = 'lr')", False),
        ("SELECT run_id FROM rs.runs WHERE project = {p:String} AND run_id IN "
         "(SELECT run_id FROM rs.params WHERE project = {p:String} AND key = 'lr')", False),
        ("SELECT run_id FROM rs.runs WHERE project = {p:String} AND run_id IN "
         "(SELECT run_id FROM rs.params WHERE project = {q:String})", True),  # another project: not co-sharded
        ("SELECT run_id FROM rs.runs WHERE project = {p:String} AND name IN "
         "(SELECT key FROM rs.params WHERE project = {p:String})", True),  # not matched on run_id
        ("SELECT r.run_id FROM rs.runs AS r LEFT JOIN rs.params AS p ON p.run_id = r.run_id", True),
        ("SELECT r.run_id FROM rs.runs AS r GLOBAL LEFT JOIN rs.params AS p ON p.run_id = r.run_id", False),
        ("SELECT r.run_id FROM rs.runs AS r LEFT JOIN (SELECT run_id, num FROM rs.params "
         "WHERE project = {p:String}) AS s ON s.run_id = r.run_id WHERE r.project = {p:String}", False),
        ("SELECT client_id FROM rs.client_seqs WHERE client_id IN (SELECT client_id FROM rs.ingested_requests)", True),
        ("SELECT name FROM rs.model_versions WHERE run_id IN (SELECT run_id FROM rs.runs)", False),  # GLOBAL table outside
        ("SELECT * FROM (SELECT run_id FROM rs.runs) AS r LEFT JOIN (SELECT run_id FROM rs.params) AS p "
         "ON p.run_id = r.run_id", False),  # joined on the initiator
    ],
)  # fmt: skip
def test_the_lint_refuses_distributed_unsafe_subqueries(schema, sql, refused):
    assert bool(problems(sql, schema.sharding, RUN_SHARDING_KEY)) is refused, problems(
        sql, schema.sharding, RUN_SHARDING_KEY
    )


class RecordingClient:
    """STAND-IN for a ClickHouse cluster node (no cluster can run here, see the module doc): it
    records the statements `migrate` sends and keeps schema_migrations' rows, nothing else."""

    uri = "http://node-1:8123"

    def __init__(self):
        self.sent: list[str] = []
        self.versions: list[int] = []

    def command(self, stmt, *args, **kwargs):
        self.sent.append(stmt)

    def query(self, sql, *args, **kwargs):
        class Rows:
            result_rows = [(v,) for v in self.versions] if "schema_migrations" in sql else []

        return Rows()

    def insert(self, table, rows, column_names=None, **kwargs):
        if table.endswith(".schema_migrations"):
            self.versions += [r[0] for r in rows]


def test_migrate_with_a_cluster_sends_the_rendered_statements_once():
    from runstream_services.storage.migrations import migrate

    node = RecordingClient()
    applied = migrate(node, DB, cluster="c1")
    rendered = ClusterSchema(DB, "c1").render()
    assert applied == [v for v, _, _ in rendered[1:]] == node.versions
    ddl = [s for s in node.sent if "schema_migrations_lock" not in s]
    assert ddl == [s for _, _, stmts in rendered for s in stmts]  # in order, each once
    assert node.sent[-1] == f"DROP TABLE IF EXISTS {DB}.schema_migrations_lock"  # the lock was held
    node.sent.clear()
    assert migrate(node, DB, cluster="c1") == []  # a second Job: nothing but the idempotent head
    assert node.sent == [s for s in rendered[0][2]]
