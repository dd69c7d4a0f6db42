"""The lean cluster install (`runstream[server]`, the image in helm/runstream/image) has no chDB:
with chDB blocked in a child interpreter (tests/no_chdb.py), every services module imports and
none asks for chDB. Servers started without it: tests/integration/test_cluster_server_without_chdb.py."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.no_chdb import NoChdb

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
