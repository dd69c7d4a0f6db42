"""The lean cluster install (`runstream[server]`, the image in helm/runstream/image) has no chDB.
With chDB blocked in a child interpreter (tests/no_chdb.py): every services module imports, a
server pointed at a ClickHouse server never asks for chDB, and the default embedded store (a
chdb:// DSN) stops start-up with a ConfigError that names the extra to install. The serving
cluster path, against real Kafka, is tests/integration/test_cluster_server_without_chdb.py."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.no_chdb import NoChdb
from tests.server_process import free_port

IMPORT_ALL = """
import importlib, json, pkgutil
import runstream_services
failed = {}
for module in pkgutil.walk_packages(runstream_services.__path__, "runstream_services."):
    try:
        importlib.import_module(module.name)
    except Exception as exc:
        failed[module.name] = repr(exc)
print(json.dumps({"failed": failed, "count": len(list(pkgutil.walk_packages(runstream_services.__path__)))}))
"""


def _server(blocker: NoChdb, tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "runstream_services.cli", "server", "--port", str(free_port()),
           "--metrics-port", "0", "--data-dir", str(tmp_path / "data"), *args]  # fmt: skip
    env = {k: v for k, v in blocker.env().items() if not k.startswith("RUNSTREAM_")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)


def test_every_services_module_imports_without_chdb(tmp_path):
    blocker = NoChdb(tmp_path / "block")
    out = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, timeout=120, env=blocker.env()
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["count"] > 10  # the walk found the package, not an empty path
    assert result["failed"] == {}
    assert len(blocker.loaded()) == 1 and blocker.refused() == []


def test_the_default_embedded_store_without_chdb_says_what_to_install(tmp_path):
    blocker = NoChdb(tmp_path / "block")
    out = _server(blocker, tmp_path)  # no --clickhouse-dsn: chdb://<data-dir>/chdb
    assert out.returncode == 2, out.stdout + out.stderr
    assert "chDB is not installed" in out.stderr and "pip install 'runstream[embedded]'" in out.stderr
    assert "--clickhouse-dsn" in out.stderr
    assert "Traceback" not in out.stderr
    assert blocker.refused() and blocker.refused()[0] == "chdb"  # the blocker is what stopped it


def test_a_server_on_a_clickhouse_server_dsn_never_asks_for_chdb(tmp_path):
    """Nothing listens on the DSN's port: start-up stops at the store with `cannot reach
    ClickHouse` (no ClickHouse server runs on this machine); up to there chDB was not asked for.
    The Kafka address is never dialled: the store is opened first."""
    blocker = NoChdb(tmp_path / "block")
    dsn = f"http://default:@127.0.0.1:{free_port()}"
    out = _server(
        blocker, tmp_path, "--bus", "kafka", "--kafka-bootstrap", "127.0.0.1:1", "--clickhouse-dsn", dsn
    )
    assert out.returncode == 2, out.stdout + out.stderr
    assert "cannot reach ClickHouse" in out.stderr
    assert "Traceback" not in out.stderr
    assert len(blocker.loaded()) == 1 and blocker.refused() == []
