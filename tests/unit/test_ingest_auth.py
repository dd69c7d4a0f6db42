"""API keys and the local artifact store: the two guards on what a caller may reach."""

from __future__ import annotations

import hashlib
import io
import json

import pytest

from runstream_services.artifacts.local import LocalArtifactStore
from runstream_services.auth.keys import ApiKeys
from runstream_services.config import ServerSettings
from runstream_services.errors import (
    ConfigError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from runstream_services.metrics_http import Metrics


def keys_file(tmp_path, data) -> ServerSettings:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(data))
    return ServerSettings(auth_required=True, api_keys_file=str(path))


def bearer(key: str):
    return (("authorization", f"Bearer {key}"),)


def test_keys_reach_only_their_project_and_role(tmp_path):
    keys = ApiKeys.from_settings(keys_file(tmp_path, {
        "w-a": {"project": "a", "role": "write"},
        "r-a": {"project": "a", "role": "read"},
        "admin": {"project": "*", "role": "admin"},
    }))  # fmt: skip
    writer = keys.authenticate(bearer("w-a"))
    keys.check(writer, "a", "write")
    keys.check(writer, "a", "read")
    with pytest.raises(PermissionDenied, match="project 'b'"):
        keys.check(writer, "b", "read")
    with pytest.raises(PermissionDenied):
        keys.check(keys.authenticate(bearer("r-a")), "a", "write")
    keys.check(keys.authenticate(bearer("admin")), "anything", "admin")
    with pytest.raises(Unauthenticated, match="unknown API key"):
        keys.authenticate(bearer("nope"))
    with pytest.raises(Unauthenticated, match="Bearer"):
        keys.authenticate(())


def test_auth_off_allows_everything():
    keys = ApiKeys.from_settings(ServerSettings())
    assert keys.authenticate(()) is None
    keys.check(None, "any", "admin")


@pytest.mark.parametrize("data", [[1, 2], {"k": {"project": "a", "role": "owner"}}, {"k": {"role": "read"}}])
def test_malformed_keys_file_is_a_config_error(tmp_path, data):
    with pytest.raises(ConfigError):
        ApiKeys.from_settings(keys_file(tmp_path, data))


def test_local_store_is_content_addressed_and_checks_digests(tmp_path):
    store = LocalArtifactStore(tmp_path / "art")
    data = b"weights" * 1000
    sha = hashlib.sha256(data).hexdigest()
    uri, present = store.put("p", sha, io.BytesIO(data), len(data))
    assert not present and uri == store.uri_for("p", sha) and str(tmp_path) not in uri
    assert (tmp_path / "art" / "p" / "sha256" / sha[:2] / sha).resolve().is_file()
    assert store.put("p", sha, io.BytesIO(data), len(data)) == (uri, True)
    assert b"".join(store.open("p", sha, chunk_size=100)) == data and store.exists("p", sha)
    assert not store.exists("other", sha)  # content-addressed per project
    with pytest.raises(InvalidArgument, match="hash to"):
        store.put("p", "0" * 64, io.BytesIO(data), len(data))
    with pytest.raises(InvalidArgument, match="declared 3 bytes"):
        store.put("p", hashlib.sha256(b"abc").hexdigest(), io.BytesIO(b"abcd"), 3)
    with pytest.raises(InvalidArgument, match="64 hex"):
        store.put("p", "../../etc/passwd", io.BytesIO(b""), 0)
    with pytest.raises(NotFound):
        list(store.open("p", "1" * 64))
    assert not list((tmp_path / "art" / ".tmp").iterdir()), "failed writes leave no temp files"


def test_metrics_render_prometheus_text():
    metrics = Metrics()
    metrics.inc("runstream_ingest_points_total", 5)
    metrics.inc("runstream_ingest_requests_total", status="OK")
    metrics.add_collector(lambda: [("runstream_writer_lag_seconds", {"partition": "0"}, 1.5)])
    text = metrics.render()
    assert "# TYPE runstream_ingest_points_total counter\nrunstream_ingest_points_total 5\n" in text
    assert 'runstream_ingest_requests_total{status="OK"} 1' in text
    assert 'runstream_writer_lag_seconds{partition="0"} 1.5' in text
