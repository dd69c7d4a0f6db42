"""S3ArtifactStore against the real MinIO: content addressing per project, digest checks, direct uploads,
legacy (pre-project) keys read only when asked."""

from __future__ import annotations

import hashlib
import io
import os
import urllib.request
import uuid

import pytest

from runstream_services.artifacts.s3 import S3ArtifactStore, legacy_object_key, object_key
from runstream_services.config import ServerSettings
from runstream_services.errors import InvalidArgument, NotFound


@pytest.fixture
def store(services):
    settings = ServerSettings(
        artifact_store="s3",
        s3_endpoint=services.s3_endpoint,
        s3_access_key=services.s3_access_key,
        s3_secret_key=services.s3_secret_key,
        s3_bucket=f"t-s3-{uuid.uuid4().hex[:10]}",
    )
    store = S3ArtifactStore(settings)
    yield store
    for obj in store.client.list_objects(store.bucket, recursive=True):
        store.client.remove_object(store.bucket, obj.object_name)
    store.client.remove_bucket(store.bucket)


P = "proj-a"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_put_exists_open_round_trip(store):
    data = os.urandom(3 * (1 << 20) + 17)  # several read chunks
    digest = _sha(data)
    assert not store.exists(P, digest)

    uri, already = store.put(P, digest, io.BytesIO(data), len(data))

    assert (uri, already) == (f"s3://{store.bucket}/{P}/sha256/{digest[:2]}/{digest}", False)
    assert store.exists(P, digest)
    assert b"".join(store.open(P, digest, chunk_size=65536)) == data
    stat = store.client.stat_object(store.bucket, object_key(P, digest))
    assert stat.size == len(data)


def test_same_bytes_twice_are_stored_once(store):
    data = b"model weights"
    first = store.put(P, _sha(data), io.BytesIO(data), len(data))
    second = store.put(P, _sha(data), io.BytesIO(data), len(data))
    assert first == (first[0], False)
    assert second == (first[0], True)
    assert [o.object_name for o in store.client.list_objects(store.bucket, recursive=True)] == [
        object_key(P, _sha(data))
    ]


def test_digest_mismatch_is_refused_and_stores_nothing(store):
    claimed = _sha(b"what the client said")
    with pytest.raises(InvalidArgument, match="hash to"):
        store.put(P, claimed, io.BytesIO(b"what actually arrived"), len(b"what actually arrived"))
    assert not store.exists(P, claimed)
    assert list(store.client.list_objects(store.bucket, recursive=True)) == []


def test_size_mismatch_and_malformed_digest_are_refused(store):
    data = b"0123456789"
    with pytest.raises(InvalidArgument, match="declared"):
        store.put(P, _sha(data), io.BytesIO(data), 4)
    with pytest.raises(InvalidArgument, match="declared"):
        store.put(P, _sha(data), io.BytesIO(data), 20)
    with pytest.raises(InvalidArgument, match="64"):
        store.put(P, "../../etc/passwd", io.BytesIO(data), len(data))


def test_open_missing_is_not_found(store):
    with pytest.raises(NotFound):
        b"".join(store.open(P, _sha(b"never stored")))


def test_presigned_upload_is_checked_before_it_becomes_visible(store):
    data = os.urandom(200_000)
    digest = _sha(data)
    url = store.presigned_put_url(P, digest)
    request = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
    assert not store.exists(P, digest)  # still staged

    uri, already = store.finish_upload(P, digest, len(data))

    assert (uri, already) == (store.uri_for(P, digest), False)
    assert b"".join(store.open(P, digest)) == data
    names = [o.object_name for o in store.client.list_objects(store.bucket, recursive=True)]
    assert names == [object_key(P, digest)]


def test_presigned_upload_with_wrong_bytes_is_deleted(store):
    claimed = _sha(b"the real file")
    url = store.presigned_put_url(P, claimed)
    request = urllib.request.Request(url, data=b"tampered bytes", method="PUT")
    with urllib.request.urlopen(request, timeout=30):
        pass
    with pytest.raises(InvalidArgument):
        store.finish_upload(P, claimed, len(b"tampered bytes"))
    assert not store.exists(P, claimed)
    assert list(store.client.list_objects(store.bucket, recursive=True)) == []
    with pytest.raises(NotFound, match="presigned"):
        store.finish_upload(P, claimed, 13)


def test_a_digest_is_visible_only_to_the_project_that_stored_it(store):
    data = b"project a's secret weights"
    digest = _sha(data)
    store.put("proj-a", digest, io.BytesIO(data), len(data))
    assert not store.exists("proj-b", digest)  # no existence oracle
    with pytest.raises(NotFound):
        b"".join(store.open("proj-b", digest))
    uri, already = store.put("proj-b", digest, io.BytesIO(data), len(data))  # b must send the bytes
    assert (uri, already) == (f"s3://{store.bucket}/proj-b/sha256/{digest[:2]}/{digest}", False)


def test_legacy_keys_are_read_only_when_the_caller_allows_it(store):
    data = b"stored before keys were per project"
    digest = _sha(data)
    store.client.put_object(store.bucket, legacy_object_key(digest), io.BytesIO(data), len(data))
    assert not store.exists(P, digest)
    with pytest.raises(NotFound):
        b"".join(store.open(P, digest))
    assert b"".join(store.open(P, digest, legacy=True)) == data
