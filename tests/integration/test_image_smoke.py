"""The cluster image, run without a container engine: `bash scripts/build_image.sh smoke` unpacks
the OCI image that `build` left in the cache (umoci) and, chrooted as the image's user with its env,
with the root read-only and a tmpfs on /tmp as the chart runs it, runs its entrypoint + cmd
(`runstream server --help`), shows chDB is absent and `pip check` clean,
then serves the cluster from the image against the real Kafka: a `writer,query` process whose
`--clickhouse-dsn http://...` is tests/clickhouse_standin.py (a STAND-IN for a ClickHouse server:
chDB behind ClickHouse's HTTP interface, run from the test environment, not the image) and an
`ingest` process, each until grpc.health.v1 answers SERVING; a run logged through ingest with the
image's SDK is read back from query; `runstream dashboard` serves until Streamlit's health answers;
all stop on SIGTERM with exit 0.

Building the image takes minutes (debootstrap, ~250 MB of wheels), so the test only runs the image
already in the cache and is skipped, with the command to build it, when there is none (as in CI)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import ROOT
from tests.clickhouse_standin import StandinProcess
from tests.deployments import drop_topics, new_prefix
from tests.server_process import free_port

CACHE = Path(os.environ.get("RUNSTREAM_IMAGE_CACHE", Path.home() / ".cache" / "runstream" / "image"))


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (chroot, mount namespaces)"
    if shutil.which("umoci") is None or shutil.which("unshare") is None:
        return "needs umoci and unshare: apt-get install -y umoci util-linux"
    if not (CACHE / "oci" / "index.json").is_file():
        return f"no image in {CACHE / 'oci'}: build it with `bash scripts/build_image.sh build` (minutes)"
    return None


@pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))
def test_the_built_image_serves_the_cluster_and_answers_health(services, tmp_path):
    pytest.importorskip("chdb")  # the stand-in ClickHouse server runs on chDB (outside the image)
    prefix = new_prefix()
    standin = StandinProcess(tmp_path / "standin").start()
    env = {
        **os.environ,
        "RUNSTREAM_TEST_KAFKA": services.kafka_bootstrap,
        "SMOKE_CLICKHOUSE_DSN": standin.dsn,
        "SMOKE_PORT": str(free_port()),
        "SMOKE_QUERY_PORT": str(free_port()),
        "SMOKE_DASHBOARD_PORT": str(free_port()),
        "SMOKE_TOPIC_PREFIX": prefix,
    }
    env.pop("SMOKE_KEEP", None)
    try:
        out = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build_image.sh"), "smoke"],
            capture_output=True, text=True, timeout=600, env=env,
        )  # fmt: skip
    finally:
        standin.stop()
        drop_topics(services.kafka_bootstrap, prefix)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "== image config: user 10001:10001, args runstream server --help" in text
    assert "usage: runstream server" in text
    assert "== uid: 10001" in text
    assert "No module named 'chdb'" in text
    assert "== pip check: No broken requirements found." in text
    assert "== read-only root: touch: cannot touch '/opt/runstream/x': Read-only file system" in text
    assert "(server) SERVING, runstream.v1.QueryService SERVING" in text
    assert "(server) SERVING, runstream.v1.IngestService SERVING" in text
    assert "20 points logged through ingest, stored by the writer, read back from query" in text
    assert "/_stcore/health: ok" in text
    for process in ("writer", "ingest", "dashboard"):
        assert f"== {process} stopped on SIGTERM: exit 0" in text
